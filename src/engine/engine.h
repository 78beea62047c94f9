/*
 * DOC: Engine objects
 *
 * What every handle is inside. Each object starts with mc__object (type
 * tag, reference count, owning device, label; Mesa's vk_object_base). The
 * engine talks to devices only through the mc__hal table.
 */
#ifndef MC_ENGINE_ENGINE_H
#define MC_ENGINE_ENGINE_H

#include "backends/hal.h"
#include "core/core.h"
#include "runtime/runtime.h" /* what the engine offers the runtime layer: implemented here */

#include <pthread.h>
#include <stdatomic.h>

/* Work the device's notifier thread runs: user callbacks (never on the
 * caller's hot path, F143/F680) and destruction that must not happen inside
 * a backend's completion context. */
typedef struct mc__job mc__job;
struct mc__job {
    mc__job *next;
    void (*run)(mc__job *job);
};

typedef struct mc__object {
    uint32_t tag;
    _Atomic int refs;
    struct mc_device *device;
    char *label;
    mc__job deferred; /* destruction handed to the notifier thread */
} mc__object;

typedef struct mc__notifier mc__notifier;

typedef struct mc__fault {
    uint64_t at;  /* device commit number */
    uint64_t nth; /* N as the user wrote it, for messages */
    mc_status kind;
} mc__fault;

struct mc_device {
    mc__object base;
    const mc__hal *hal;
    void *hd;
    mc_device_info info;
    mc_device_desc opened; /* as opened, kind and index resolved (mc__device_take_like) */
    _Atomic int lost;
    _Atomic uint64_t committed;
    pthread_mutex_t lock; /* faults, notifier start, pending notifications */
    mc__fault faults[MC__MAX_FAULTS];
    size_t nfaults;
    _Atomic size_t pending_faults; /* fast check on the commit path */
    mc__notifier *notifier;
    struct mc__cache *cache; /* the pipeline cache (runtime/cache.c), lazily */
    /* Called on the committing thread with each commit number, before the
     * backend sees the command buffer (isolate.c counts commits over a run
     * and fires worker faults there). Set before any commit. */
    void (*commit_hook)(void *user, uint64_t n);
    void *commit_hook_user;
};

struct mc_buffer {
    mc__object base;
    void *hb;
    void *host;
    size_t size;
    mc_storage storage;
    _Atomic int gpu_uses; /* unretained command buffers in flight (validation) */
    /* mc_buffer_create_from_host: the caller's release, run once after the
     * backend let go of the memory (NULL for buffers the device allocated). */
    mc_host_release_fn host_release;
    void *host_user;
};

struct mc_library {
    mc__object base;
    void *hl; /* NULL while deferred */
    mc_language language;
    /* Deferred (read from a file with the pipeline cache on): the source is
     * compiled, or found compiled, per pipeline through the cache. */
    char *source;
    size_t source_len;
    char *options;
};

struct mc_pipeline {
    mc__object base;
    void *hp;
    mc_library *library; /* retained; NULL when the pipeline owns hl itself */
    void *own_hl;        /* library made for this pipeline alone (from the archive) */
    mc_pipeline_info info;
    bool simd_multiple; /* threadgroup_size_is_multiple_of_simd_width (F158) */
    char *function;
};

struct mc_queue {
    mc__object base;
    void *hq;
    _Atomic int error; /* mc_status that stopped the queue */
    pthread_mutex_t lock;
    pthread_cond_t idle;
    uint64_t in_flight;
    mc_cmdbuf *pool; /* finished command buffers kept for reuse (cmdbuf.c), under lock */
    uint32_t npool;
};

/* The recording shared by command buffers and command lists (recorder.c):
 * the command stream, the bytes arena, the passes, the references, and the
 * state of the open pass that the mc_pass_* checks use. */
typedef struct mc__recorder {
    mc__object *owner; /* the command buffer or command list: device, label, state */
    /* Command lists: every dispatch is written as a self-contained group
     * carrying the bindings it uses (hal.h, "command lists"). */
    bool snapshot;
    bool unretained;         /* MC_CMDBUF_UNRETAINED_REFERENCES */
    uint32_t max_dispatches; /* snapshot: the list's capacity */
    mc__cmd *cmds;
    uint32_t ncmd, cmd_cap;
    uint8_t *bytes;
    uint32_t nbytes, bytes_cap;
    mc__pass *passes; /* command buffers only */
    uint32_t npass, pass_cap;
    mc__object **refs; /* retained for the recording's lifetime */
    uint32_t nrefs, ref_cap;
    mc_buffer **unretained_bufs; /* buffers used without a reference (validation only) */
    uint32_t nunretained, unretained_cap;
    bool pass_open;
    mc_pipeline *cur_pipeline;
    uint32_t bound; /* argument slots bound in the open pass */
    /* snapshot state: what the next dispatch carries */
    mc__cmd arg[MC_MAX_BUFFER_ARGS]; /* op 0: unbound */
    size_t tgmem[MC_MAX_THREADGROUP_MEMORY_ARGS];
    uint32_t tg_set;
    bool barrier; /* a barrier since the last dispatch */
    uint32_t ndispatch;
    bool has_indirect;
} mc__recorder;

struct mc_pass {
    mc__recorder *rec;
};

struct mc_cmdbuf {
    mc__object base;
    mc_queue *queue;
    uint32_t flags;
    _Atomic int state; /* mc_cmdbuf_state */

    /* recording */
    mc__recorder rec;
    struct mc_pass pass;

    /* execution */
    mc__submission sub;
    pthread_mutex_t lock;
    pthread_cond_t done_cond;
    _Atomic int done;
    mc_cmdbuf_fn on_complete;
    void *on_complete_user;
    mc__job job;
    mc_status status;
    char message[256];
    /* kept across reuse from the queue's pool: sub.pass_state's memory */
    mc_pass_state *pass_state_mem;
    uint32_t pass_state_cap;
    mc_cmdbuf *pool_next;
    uint64_t trace_commit_ns; /* 0: not traced (engine/trace.h) */
};

struct mc_event {
    mc__object base;
    void *he;
};

/* One frozen recording of a command list (cmdlist.c): what command buffers
 * execute. Immutable; held by the list until reset and by every command
 * buffer that executes it until that one is destroyed, so a reset never
 * pulls a recording from under recorded or running work. */
typedef struct mc__listrec {
    mc__object base;
    void *hl;      /* the backend's list, or NULL: executions are copied in */
    uint32_t caps; /* MC__LIST_* */
    mc__cmd *cmds;
    uint32_t ncmd;
    uint8_t *bytes;
    uint32_t nbytes;
    uint32_t *group; /* ncommands entries: each command's first mc__cmd */
    uint32_t ncommands;
    bool has_indirect;
    mc__object **refs;
    uint32_t nrefs;
} mc__listrec;

enum { MC__LIST_EMPTY = 0, MC__LIST_RECORDING = 1, MC__LIST_READY = 2 };

struct mc_cmdlist {
    mc__object base;
    uint32_t max_commands;
    pthread_mutex_t lock; /* state and cur, against executions on other threads */
    int state;            /* MC__LIST_* */
    mc__recorder rec;     /* while recording */
    struct mc_pass pass;
    mc__listrec *cur;     /* READY: the recording */
    _Atomic int gpu_uses; /* executions in committed, unfinished command buffers */
};

/* object.c */
void mc__object_init(mc__object *o, uint32_t tag, mc_device *d, const char *label);
bool mc__object_check(const void *o, uint32_t tag);
void mc__object_retain(mc__object *o);
void mc__object_release(mc__object *o);
/* The current thread is completing work for a backend: destruction that
 * would call back into the backend is deferred to the notifier thread. */
extern _Thread_local int mc__in_completion;

/* notifier.c */
mc_status mc__notifier_create(mc_device *d); /* at device open */
mc_status mc__notifier_post(mc_device *d, mc__job *job);
void mc__notifier_shutdown(mc_device *d);
void mc__events_changed(mc_device *d, mc_event *e); /* fires reached notifications */
void mc__events_forget(mc_device *d, mc_event *e);  /* event is going away */

/* device.c */
void mc__device_destroy(mc_device *d);
void mc__buffer_destroy(mc_buffer *b);
void mc__library_destroy(mc_library *l);
void mc__pipeline_destroy(mc_pipeline *p);
void mc__queue_destroy(mc_queue *q);
void mc__cmdbuf_destroy(mc_cmdbuf *cb);
void mc__event_destroy(mc_event *e);
void mc__cmdlist_destroy(mc_cmdlist *l);
void mc__listrec_destroy(mc__listrec *r);
/* Takes the fault scheduled for commit number n, if any. */
mc_status mc__device_take_fault(mc_device *d, uint64_t n);
mc_status mc__buffer_check_range(const mc_buffer *b, size_t offset, size_t len, const char *what);

/* cmdbuf.c */
/* Frees a command buffer taken from its queue's pool (queue.c). */
void mc__cmdbuf_free(mc_cmdbuf *cb);

/* recorder.c: the recorder (command buffers and command lists) */
/* MC_OK while cb can still be recorded into; else an error naming fn. */
mc_status mc__cmdbuf_recordable(const mc_cmdbuf *cb, const char *fn);
/* The name of what is being recorded into, for messages. */
const char *mc__recorder_pass_label(const mc__recorder *rec);
void mc__recorder_init(mc__recorder *rec, mc__object *owner, bool snapshot, bool unretained, uint32_t max_dispatches);
/* Releases what the recording holds and frees its arrays. */
void mc__recorder_clear(mc__recorder *rec); /* empty, keeping the arrays' memory */
void mc__recorder_free(mc__recorder *rec);
mc_status mc__recorder_add_ref(mc__recorder *rec, mc__object *o);

/* cmdlist.c */
/* Takes the list's recording for cb (retained; NULL and an error when the
 * list is not ready). */
mc_status mc__cmdlist_take(mc_cmdlist *l, mc__listrec **out);
/* Tests: pretend the backend has no command lists, so executions are
 * copied into the command buffer (lists ended from now on). */
void mc__cmdlist_test_copy_in(bool on);

#endif
