/*
 * DOC: The runtime layer's view of the engine
 *
 * src/runtime (the pipeline cache, the runner and its checkpoint files,
 * streams, isolated workers) is built mostly on the public API. What it
 * needs beyond that is declared here, and only here: handle checks, device
 * loss, "reopen a device like this one and carry its pending faults",
 * fault lists, the commit hook and fork safety for isolated runs. The
 * engine implements these (src/engine/device.c, object.c) and includes
 * this header itself, so the two never disagree.
 *
 * Nothing here shows a struct's inside: a runtime file that needs more
 * than this asks for a function here, not for engine.h. The one exception
 * is the pipeline cache (cache.h), which extends pipeline creation and
 * builds engine objects itself.
 */
#ifndef MC_RUNTIME_RUNTIME_H
#define MC_RUNTIME_RUNTIME_H

#include "core/core.h"
#include "mc/mc.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ---- handles ------------------------------------------------------------ */

/* The first word of every object (engine.h, mc__object): what it is. */
enum mc__tag {
    MC__TAG_DEVICE = 0x6d634456,
    MC__TAG_BUFFER = 0x6d634246,
    MC__TAG_LIBRARY = 0x6d634c42,
    MC__TAG_PIPELINE = 0x6d63504c,
    MC__TAG_QUEUE = 0x6d635155,
    MC__TAG_CMDBUF = 0x6d634342,
    MC__TAG_EVENT = 0x6d634556,
    MC__TAG_CMDLIST = 0x6d63434c,
    MC__TAG_LISTREC = 0x6d634c52, /* a frozen recording of a command list (internal) */
    MC__TAG_DEAD = 0x64656164
};

/* h is a live object of that kind (false for NULL). */
bool mc__object_check(const void *h, uint32_t tag);
/* The device that owns a live object (a device owns itself); NULL when h
 * is not an object. */
mc_device *mc__object_device(const void *h);

#define MC__CHECK_HANDLE(h, tag, what)                                                                        \
    do {                                                                                                      \
        if (!mc__object_check((h), (tag)))                                                                    \
            return mc__fail(MC_ERR_INVALID_ARGUMENT, "%s: %s is NULL or not a valid handle", __func__, what); \
    } while (0)

/* ---- device loss and reopening ------------------------------------------ */

/* The device was lost (sticky). false for a handle that is not a device. */
bool mc__device_is_lost(const mc_device *d);
/* Whether separate queues of d run small work concurrently (the backend
 * table's queues_overlap): a stream's default lane count follows it. */
bool mc__device_queues_overlap(const mc_device *d);
/* The language of a kernel source that names none, on d's kind of device
 * (its backend says, hal.h); MC_LANG_UNSET for a bad handle. */
mc_language mc__device_default_language(const mc_device *d);

#define MC__MAX_FAULTS 64

/* What it takes to open a device like another one: the parameters it was
 * opened with, and the injected faults scheduled on it but not reached,
 * each as "the Nth command buffer from now". Filled by
 * mc__device_take_like, used by mc__device_reopen_like. */
typedef struct mc__pending_fault {
    mc_status kind;
    uint64_t nth;
} mc__pending_fault;
typedef struct mc__device_like {
    mc_device_desc desc; /* kind and index resolved: never MC_DEVICE_ANY */
    mc__pending_fault faults[MC__MAX_FAULTS];
    size_t nfaults;
} mc__device_like;

/* Records how d was opened and moves its pending faults into *out: d no
 * longer fires them nor warns of them at close, so "the Nth command
 * buffer of the run" keeps its meaning on the next device. d stays the
 * caller's (release it as usual). MC_ERR_INVALID_ARGUMENT for a bad
 * handle or out NULL. */
mc_status mc__device_take_like(mc_device *d, mc__device_like *out);
/* Opens a device with like's parameters (same kind, index, time limit,
 * worker count) and schedules the carried faults on it, counted from its
 * open; like->nfaults is 0 afterwards. On failure nothing is opened and
 * the faults stay in like, for the next try. */
mc_status mc__device_reopen_like(mc__device_like *like, mc_device **out);
/* Drops d's pending injected faults without warning of them (a worker
 * process that ends its run early hands the rest to its supervisor). */
void mc__device_forget_faults(mc_device *d);

/* ---- fault lists, commit hook, fork safety ------------------------------ */

/* One item of a fault list ("timeout@3,kill@5"): kind is a device error
 * (an mc_status) or MC__FAULT_KILL / MC__FAULT_HANG (faults of a worker
 * process, isolated runs only); at is N as written. */
typedef struct mc__fault_item {
    int kind;
    uint64_t at;
} mc__fault_item;
#define MC__FAULT_KILL (-1)
#define MC__FAULT_HANG (-2)
/* The largest N a list may name: far past any run, far below where the
 * counters could wrap. */
#define MC__FAULT_MAX_AT 1000000000000000ull
/* status.c: "timeout", NULL for no fault word */
const char *mc__status_word(mc_status s);
/* Parses a whole list before anything is scheduled: refuses unknown words,
 * N that is not a whole number from 1 to MC__FAULT_MAX_AT (signs, "-1",
 * overflow), two faults on one command buffer, more than MC__MAX_FAULTS,
 * and kill/hang unless worker_faults. what names the source in messages
 * ("MC_INJECT_FAULTS"). NULL or "": no faults. */
mc_status mc__fault_list_parse(const char *what, const char *spec, bool worker_faults, mc__fault_item *out, size_t *n);

/* "cpu", "cuda:1", "any" -> kind and index (mc_device_open_name's form). */
mc_status mc__device_parse_spec(const char *spec, mc_device_kind *kind, int *index);
/* Called on the committing thread with each commit number, before the
 * backend sees the command buffer (isolate.c counts commits over a run
 * and fires worker faults there). Set before the device's first commit. */
void mc__device_set_commit_hook(mc_device *d, void (*fn)(void *user, uint64_t n), void *user);
/* A backend that is not fork-safe (hal.h) was asked for its devices in
 * this process: its driver may hold process-wide state, so a forked child
 * could not use it. Names it in why (may be NULL). */
bool mc__fork_unsafe_backend_used(char *why, size_t cap);
/* Tests: behave as if backend `name` had been used (NULL: forget). */
void mc__fork_unsafe_simulate(const char *name);

/* ---- the runtime's own, called from elsewhere --------------------------- */

/* ckpt_file.c (durable checkpoints) */
mc_status mc__ckpt_prepare_dir(const char *dir);
mc_status mc__ckpt_write(const char *dir, const void *params, size_t params_len, uint64_t iteration,
                         const void *const *state, const size_t *sizes, uint32_t count);
/* The newest checkpoint in dir that matches: *found false when dir holds
 * none at all; an error naming each file and why when none is usable. */
mc_status mc__ckpt_load(const char *dir, const char *label, const void *params, size_t params_len, const size_t *sizes,
                        uint32_t count, void *const *state, uint64_t *iteration, bool *found);

/* The pipeline cache (docs/CACHE.md): a device's cache goes with it. */
struct mc__cache;
void mc__cache_destroy(struct mc__cache *c);
/* Adds the device's counters not yet saved to its folder's stats file now
 * (also done when the device closes): before a process ends by _exit. */
void mc__cache_save_stats(mc_device *d);

#endif
