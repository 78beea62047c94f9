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

#include <pthread.h>
#include <stdatomic.h>

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
    uint64_t at; /* device commit number */
    uint64_t nth; /* N as the user wrote it, for messages */
    mc_status kind;
} mc__fault;

#define MC__MAX_FAULTS 64

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
/* Parses a whole list before anything is scheduled: refuses unknown words,
 * N that is not a whole number from 1 to MC__FAULT_MAX_AT (signs, "-1",
 * overflow), two faults on one command buffer, more than MC__MAX_FAULTS,
 * and kill/hang unless worker_faults. what names the source in messages
 * ("MC_INJECT_FAULTS"). NULL or "": no faults. */
const char *mc__status_word(mc_status s); /* status.c: "timeout", NULL for no fault word */
mc_status mc__fault_list_parse(const char *what, const char *spec, bool worker_faults, mc__fault_item *out,
                               size_t *n);

struct mc_device {
    mc__object base;
    const mc__hal *hal;
    void *hd;
    mc_device_info info;
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
    void *hl;            /* NULL while deferred */
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

/* The recording shared by command buffers and command lists (cmdbuf.c):
 * the command stream, the bytes arena, the passes, the references, and the
 * state of the open pass that the mc_pass_* checks use. */
typedef struct mc__recorder {
    mc__object *owner; /* the command buffer or command list: device, label, state */
    /* Command lists: every dispatch is written as a self-contained group
     * carrying the bindings it uses (hal.h, "command lists"). */
    bool snapshot;
    bool unretained;        /* MC_CMDBUF_UNRETAINED_REFERENCES */
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
/* "cpu", "cuda:1", "any" -> kind and index (mc_device_open_name's form). */
mc_status mc__device_parse_spec(const char *spec, mc_device_kind *kind, int *index);
/* Installs the commit hook (above); before the device's first commit. */
void mc__device_set_commit_hook(mc_device *d, void (*fn)(void *user, uint64_t n), void *user);
/* A backend that is not fork-safe (hal.h, mc__hal_fork_safe) was asked for
 * its devices in this process: its driver may hold process-wide state, so
 * a forked child could not use it. Names it in why (may be NULL). */
bool mc__fork_unsafe_backend_used(char *why, size_t cap);
/* Tests: behave as if backend `name` had been used (NULL: forget). */
void mc__fork_unsafe_simulate(const char *name);
mc_status mc__buffer_check_range(const mc_buffer *b, size_t offset, size_t len, const char *what);

/* cmdbuf.c: the recorder (command buffers and command lists) */
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

/* ckpt_file.c (durable checkpoints) */
mc_status mc__ckpt_prepare_dir(const char *dir);
mc_status mc__ckpt_write(const char *dir, const void *params, size_t params_len, uint64_t iteration,
                         const void *const *state, const size_t *sizes, uint32_t count);
/* The newest checkpoint in dir that matches: *found false when dir holds
 * none at all; an error naming each file and why when none is usable. */
mc_status mc__ckpt_load(const char *dir, const char *label, const void *params, size_t params_len,
                        const size_t *sizes, uint32_t count, void *const *state, uint64_t *iteration, bool *found);

/* cache.c (the pipeline cache) */
void mc__cache_destroy(struct mc__cache *c);

/* ==== pipeline cache section (runtime/cache.c; docs/CACHE.md) ============ */
/* Internal entry points shared with the tests, the fuzzer and the CLI. */

#define MC__CACHE_FORMAT_VERSION 1u
#define MC__CACHE_MAGIC "MCPCACHE" /* 8 bytes, no terminator on disk */
#define MC__CACHE_HEADER_SIZE 96u
#define MC__CACHE_KEY_SIZE 32u     /* SHA-256 */
#define MC__CACHE_NAME_LEN 64u     /* an entry's file name: the key in lowercase hex */
#define MC__CACHE_STATS_FILE "stats"

/* SHA-256 from a well-kept library loaded at run time (libcrypto, or
 * CommonCrypto on macOS). NULL when none can be loaded; *why says why. */
typedef struct mc__hash mc__hash;
mc__hash *mc__hash_open(char *why, size_t why_cap);
void mc__hash_close(mc__hash *h);
bool mc__hash_sha256(const mc__hash *h, const void *data, size_t len, uint8_t out[32]);
/* Tests: pretend no hash library can be loaded (caches created later). */
void mc__cache_test_no_hash(bool on);

/* A parsed entry; pointers point into the bytes given to the parser. */
typedef struct mc__cache_entry {
    uint32_t version;
    uint8_t key[MC__CACHE_KEY_SIZE];
    const uint8_t *material; /* the canonical key material */
    uint64_t material_len;
    const uint8_t *payload;  /* what the backend imports */
    uint64_t payload_len;
    uint8_t payload_sum[32];
} mc__cache_entry;

/* Checks an entry's bytes: size, magic, format version, lengths; the key
 * against want_key (the file's name; NULL: not checked); with h, the key
 * against the hash of the material and the payload against its checksum.
 * NULL when every check passes, else the reason (a static string).
 * Never reads outside data[0..len). */
const char *mc__cache_parse_entry(const uint8_t *data, size_t len, const mc__hash *h, const uint8_t *want_key,
                                  mc__cache_entry *out);

/* The key material decoded (strings are not NUL-terminated). */
typedef struct mc__cache_str {
    const char *p;
    size_t len;
} mc__cache_str;
typedef struct mc__cache_material {
    uint32_t version;
    mc__cache_str runtime, backend, identity, compiler, source, options, function;
    uint32_t language; /* mc_language */
    uint32_t max_total_threads_per_threadgroup;
    uint32_t simd_multiple;
} mc__cache_material;
/* NULL on success, else the reason. Never reads outside m[0..len). */
const char *mc__cache_parse_material(const uint8_t *m, size_t len, mc__cache_material *out);

/* Hex name of a key (out: MC__CACHE_NAME_LEN + 1 bytes); and the reverse,
 * false when name is not exactly an entry's name. */
void mc__cache_key_name(const uint8_t key[MC__CACHE_KEY_SIZE], char *out);
bool mc__cache_name_key(const char *name, uint8_t key[MC__CACHE_KEY_SIZE]);
/* The folder name of a device identity: "<backend>-<identity>" with every
 * byte outside [A-Za-z0-9._-] replaced by '_'. */
void mc__cache_folder_name(const char *backend, const char *identity, char *out, size_t cap);
/* The root folder from the environment (no I/O). */
mc_status mc__cache_root(char *out, size_t cap);

/* Counters persisted in each folder's stats file across processes. */
typedef struct mc__cache_totals {
    uint64_t hits_memory, hits_disk, misses, compiles, compile_ns, load_ns, writes, rejected, evictions;
} mc__cache_totals;
/* Adds the device's counters not yet saved to its folder's stats file now
 * (also done when the device closes): before a process ends by _exit. */
void mc__cache_save_stats(mc_device *d);
/* Reads folder_fd's stats file; zeros when it is missing or unreadable. */
void mc__cache_read_totals(int folder_fd, mc__cache_totals *out);

/* The cache's own layout, so tools touch only what the cache wrote.
 * MC__CACHE_TAG_FILE marks the root (the Cache Directory Tagging format,
 * which backup tools also honour). */
#define MC__CACHE_TAG_FILE "CACHEDIR.TAG"
struct stat;
/* A device folder's name: "<cpu|cuda|metal>-<identity>". */
bool mc__cache_is_device_folder_name(const char *name);
/* A temporary file of the cache's: ".tmp-<pid>-<n>-<hex>". */
bool mc__cache_is_tmp_name(const char *name);
/* A folder the cache trusts (as a load does): a directory of the current
 * user that group and others cannot write. NULL, or the reason. */
const char *mc__cache_untrusted_dir(const struct stat *st, char *why, size_t cap);
/* Opens root (into *fd) only when it is the cache's: trusted, and tagged
 * or holding a trusted device folder. MC_ERR_NOT_FOUND when it does not
 * exist; MC_ERR_INVALID_ARGUMENT, with the cause, when it is not a
 * cache (a user's own folder named by MC_CACHE_DIR). */
mc_status mc__cache_open_root(const char *root, int *fd);
/* ==== end of the pipeline cache section ================================ */

#define MC__CHECK_HANDLE(h, tag, what)                                                   \
    do {                                                                                 \
        if (!mc__object_check((h), (tag)))                                               \
            return mc__fail(MC_ERR_INVALID_ARGUMENT, "%s: %s is NULL or not a valid handle", \
                            __func__, what);                                             \
    } while (0)

#endif
