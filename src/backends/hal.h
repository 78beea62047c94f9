/*
 * DOC: The backend interface (HAL)
 *
 * One table of functions that every device implements, shaped after Metal:
 * the engine records a command buffer into a flat list of commands grouped
 * in passes and hands the whole list to the backend at commit. The backend
 * executes it in order and reports the outcome once, through
 * sub->complete(). Backends know nothing of the engine's objects; the engine
 * never asks which backend it talks to.
 *
 * Backend objects are opaque pointers (void *) owned by the backend. Every
 * function gets the backend device it belongs to. Optional entries may be
 * NULL; the engine then supplies the default or reports MC_ERR_UNSUPPORTED.
 * New entries are appended; `version` says how many there are.
 *
 * Threads: every entry may be called from any thread; the backend locks what
 * it shares. complete() may be called from any thread, including from inside
 * submit() (for work that fails before it starts).
 */
#ifndef MC_BACKENDS_HAL_H
#define MC_BACKENDS_HAL_H

#include "mc/mc.h"

#define MC__HAL_VERSION \
    4 /* 2: command lists, MC__OP_EXECUTE_LIST, MC__SUBMIT_VALIDATION; 3: default_language,
                            * kernel_extension, fork_safe; 4: buffer_wrap, buffer_device_address,
                            * queues_overlap */

/* ---- the command stream ------------------------------------------------ */

typedef enum mc__op {
    MC__OP_SET_PIPELINE = 1,      /* u.pipeline */
    MC__OP_SET_BUFFER = 2,        /* index, u.buf */
    MC__OP_SET_BYTES = 3,         /* index, u.bytes: into mc__submission.bytes */
    MC__OP_SET_TGMEM = 4,         /* index, u.tgmem */
    MC__OP_DISPATCH = 5,          /* u.dispatch */
    MC__OP_DISPATCH_INDIRECT = 6, /* u.indirect: three uint32 counts at buffer+offset */
    MC__OP_BARRIER = 7,
    MC__OP_COPY = 8,         /* u.copy (alone in a copy pass) */
    MC__OP_FILL = 9,         /* u.fill (alone in a copy pass) */
    MC__OP_SIGNAL = 10,      /* u.event (alone in a sync pass) */
    MC__OP_WAIT = 11,        /* u.event (alone in a sync pass) */
    MC__OP_EXECUTE_LIST = 12 /* u.exec (alone in a compute pass; HAL version 2) */
} mc__op;

typedef struct mc__cmd {
    uint32_t op;    /* mc__op */
    uint32_t index; /* argument slot for SET_* */
    union {
        void *pipeline;
        struct {
            void *buffer;
            size_t offset;
            size_t size;
            void *host;
        } buf; /* size: bytes from offset to end; host: CPU address of buffer+offset or NULL */
        struct {
            uint32_t offset, len;
        } bytes;
        struct {
            size_t len;
        } tgmem;
        struct {
            mc_size3 groups, threads;
        } dispatch;
        struct {
            void *buffer;
            size_t offset;
            void *host;
            mc_size3 threads;
        } indirect;
        struct {
            void *src;
            size_t src_offset;
            void *dst;
            size_t dst_offset;
            size_t len;
        } copy;
        struct {
            void *buffer;
            size_t offset;
            size_t len;
            uint8_t value;
        } fill;
        struct {
            void *event;
            uint64_t value;
        } event;
        /* Commands [first, first+count) of a backend command list (count
         * already clamped to it); with range_buffer, {first, count} are
         * instead two uint32 read on the device at range_buffer +
         * range_offset when the pass starts, and clamped to the list's
         * command count there (range_host: their CPU address, or NULL). */
        struct {
            void *list;
            uint32_t first, count;
            void *range_buffer;
            size_t range_offset;
            void *range_host;
        } exec;
    } u;
} mc__cmd;

typedef enum mc__pass_kind {
    MC__PASS_COMPUTE = 1,
    MC__PASS_COPY = 2, /* one COPY or FILL */
    MC__PASS_SYNC = 3  /* one SIGNAL or WAIT */
} mc__pass_kind;

typedef struct mc__pass {
    const char *label; /* never NULL */
    uint32_t kind;     /* mc__pass_kind */
    uint32_t first;    /* index of its first command */
    uint32_t count;    /* number of commands */
} mc__pass;

/* One committed command buffer, as the backend sees it. The engine owns it;
 * the backend may read the inputs until it calls complete(), after which it
 * must not touch the submission again. */
typedef struct mc__submission mc__submission;
struct mc__submission {
    /* inputs */
    const mc__cmd *cmds;
    uint32_t ncmd;
    const uint8_t *bytes; /* arena for SET_BYTES */
    const mc__pass *passes;
    uint32_t npass;
    uint32_t flags; /* MC_CMDBUF_* and MC__SUBMIT_* */
    const char *label;
    /* Fault injection: when inject != MC_OK the backend runs passes
     * [0, inject_pass), then fails with `inject` as if pass inject_pass had
     * faulted (later passes pending). Handled like a real error of that kind
     * (a device-lost injection loses the device). */
    mc_status inject;
    uint32_t inject_pass;

    /* outputs, filled by the backend before complete() */
    mc_status status;
    char message[256];
    mc_pass_state *pass_state; /* npass entries, preset to MC_PASS_PENDING */
    uint64_t *pass_time;       /* 2*npass entries (start, end) or NULL if not asked */
    uint64_t gpu_start_ns, gpu_end_ns;

    /* engine callbacks */
    void (*scheduled)(mc__submission *sub); /* optional: work began on the device */
    void (*complete)(mc__submission *sub);  /* exactly once */
    void *owner;
};

/* mc__submission.flags beyond the public MC_CMDBUF_* bits. */
/* Validation mode was on at commit: threadgroup counts an indirect dispatch
 * reads on the device that exceed MC_INDIRECT_MAX_GROUPS_X / _YZ fail its
 * pass with MC_ERR_VALIDATION and a message naming the pass, and the
 * dispatch does not run. */
#define MC__SUBMIT_VALIDATION (1u << 16)

/* ---- command lists (HAL version 2) --------------------------------------
 *
 * What the engine hands cmdlist_create: a recording frozen by
 * mc_cmdlist_end, as self-contained groups, one per command (dispatch):
 *
 *     [BARRIER] SET_PIPELINE {SET_BUFFER | SET_BYTES} {SET_TGMEM} DISPATCH | DISPATCH_INDIRECT
 *
 * A group carries every binding its dispatch uses (a backend starts each
 * group from empty bindings); SET_BYTES offsets point into `bytes`. A
 * BARRIER opens a group that must start after every earlier group has
 * finished; groups with no barrier between them may overlap. A dispatch of
 * zero threadgroups is a command that does nothing. The arrays are the
 * engine's and stay valid and unchanged until cmdlist_destroy. */
typedef struct mc__list_desc {
    const mc__cmd *cmds;
    uint32_t ncmd;
    const uint8_t *bytes;
    uint32_t nbytes;
    uint32_t ncommands; /* groups (DISPATCH and DISPATCH_INDIRECT commands) */
    bool has_indirect;  /* some group ends in DISPATCH_INDIRECT */
    const char *label;  /* never NULL */
} mc__list_desc;

/* cmdlist_create's *caps */
#define MC__LIST_GPU_RANGE 0x1u /* EXECUTE_LIST may read its range on the device (range_buffer) */

/* What the pipeline cache needs to rebuild a pipeline from an archived
 * payload (Metal needs the source again; CPU and CUDA only the binary). */
typedef struct mc__pipeline_src {
    mc_language language;
    const char *source;
    size_t source_len;
    const char *options; /* never NULL */
    const char *function;
    uint32_t max_total_threads_per_threadgroup;
    bool threadgroup_size_is_multiple_of_simd_width;
    const char *label; /* may be NULL */
    /* MSL function constants the pipeline specialises (none: NULL, 0); part
     * of what an archive holds, so export and import pass them alike. */
    const mc_function_constant *constants;
    uint32_t constant_count;
} mc__pipeline_src;

/* ---- the table --------------------------------------------------------- */

typedef struct mc__hal {
    uint32_t version;
    mc_device_kind kind;
    const char *name; /* "cpu", "cuda", "metal" */

    /* Devices. count() must be safe and cheap when the driver is absent (0). */
    int (*device_count)(void);
    mc_status (*device_info)(int index, mc_device_info *out);
    mc_status (*device_open)(int index, const mc_device_desc *desc, void **dev, mc_device_info *info);
    void (*device_close)(void *dev); /* all objects already destroyed */

    /* Buffers. *host receives the CPU address for host-visible storage, else
     * NULL. write/read are synchronous and work for every storage. */
    mc_status (*buffer_create)(void *dev, size_t size, mc_storage storage, const char *label, void **buf, void **host);
    void (*buffer_destroy)(void *dev, void *buf);
    mc_status (*buffer_write)(void *dev, void *buf, size_t offset, const void *src, size_t len);
    mc_status (*buffer_read)(void *dev, void *buf, size_t offset, void *dst, size_t len);

    /* Libraries. On MC_ERR_COMPILE *log gets the compiler output (malloc'd,
     * engine frees) or NULL. */
    mc_status (*library_create)(void *dev, mc_language lang, const char *source, size_t len, const char *options,
                                void **lib, char **log);
    /* optional (CPU): functions linked into the program */
    mc_status (*library_create_builtin)(void *dev, const char *const *names, const mc_cpu_kernel_fn *fns,
                                        const int32_t *argc, size_t n, void **lib);
    void (*library_destroy)(void *dev, void *lib);

    mc_status (*pipeline_create)(void *dev, void *lib, const mc_pipeline_desc *desc, void **pipeline,
                                 mc_pipeline_info *info);
    void (*pipeline_destroy)(void *dev, void *pipeline);

    /* Pipeline archive (optional: NULL = the device cannot archive).
     * compiler_identity names the compiler and its version for lang (e.g.
     * "gcc 12.2.0", "nvrtc 13.0 sm_90", "macOS 15.1 24B83").
     * pipeline_export produces what the device loads fastest (malloc'd).
     * pipeline_import builds library+pipeline from it; when fail_on_miss,
     * it must not compile (Metal's failOnBinaryArchiveMiss, F700). */
    mc_status (*compiler_identity)(void *dev, mc_language lang, char *out, size_t cap);
    mc_status (*pipeline_export)(void *dev, const mc__pipeline_src *src, void *lib, void *pipeline, void **bytes,
                                 size_t *len);
    mc_status (*pipeline_import)(void *dev, const mc__pipeline_src *src, const void *bytes, size_t len,
                                 bool fail_on_miss, void **lib, void **pipeline, mc_pipeline_info *info);

    /* Queues. queue_destroy is called only when every submission on it has
     * completed. */
    mc_status (*queue_create)(void *dev, const char *label, void **queue);
    void (*queue_destroy)(void *dev, void *queue);
    /* Executes sub after everything submitted earlier on the queue.
     * Rules every backend follows:
     *  - after a submission on a queue fails, the submissions behind it on
     *    that queue complete with MC_ERR_PRIOR_ERROR without running;
     *  - after MC_ERR_DEVICE_LOST every later submission on the device
     *    completes with MC_ERR_DEVICE_LOST;
     *  - pass_state: COMPLETED for passes that ran, FAULTED for the one that
     *    failed, AFFECTED for ones that ran but may have been corrupted,
     *    PENDING for those that never ran.
     * Returns MC_OK when sub was accepted (complete() will be called), else
     * an error and complete() is not called. */
    mc_status (*submit)(void *dev, void *queue, mc__submission *sub);
    /* optional: waits for sub on the calling thread (spin, then sleep), so a
     * waiter sees completion without a thread hop. Returns MC_OK once
     * sub->complete has returned, or MC_ERR_WAIT_TIMEOUT. NULL: the engine
     * waits on its own condition variable. */
    mc_status (*submission_wait)(void *dev, void *queue, mc__submission *sub, uint64_t timeout_ns);

    /* Timeline events: a 64-bit counter that only moves forward. */
    mc_status (*event_create)(void *dev, uint64_t initial, void **event);
    void (*event_destroy)(void *dev, void *event);
    uint64_t (*event_value)(void *dev, void *event);
    mc_status (*event_signal)(void *dev, void *event, uint64_t value);
    mc_status (*event_wait)(void *dev, void *event, uint64_t value, uint64_t timeout_ns);

    /* ---- version 2 ---- */
    /* Command lists (optional: both NULL when the backend has none; the
     * engine then copies a static range's groups into the submission and
     * refuses ranges read on the device with MC_ERR_UNSUPPORTED). Builds
     * the backend's form of a recording; *caps gets MC__LIST_* bits.
     * cmdlist_destroy is called once no submission that executes the list
     * is in flight. */
    mc_status (*cmdlist_create)(void *dev, const mc__list_desc *desc, void **list, uint32_t *caps);
    void (*cmdlist_destroy)(void *dev, void *list);

    /* ---- version 3: what the engine would otherwise learn by asking
     * which device it talks to ---- */
    /* The language of a source whose descriptor names none. */
    mc_language default_language;
    /* The file name ending of the project's kernels for this device
     * (mc_device_kernel_extension: ".c", ".cu", ".metal"). */
    const char *kernel_extension;
    /* Keeps no process-wide driver state: a process that used it may fork
     * a child that opens it afresh (isolated runs fork their workers,
     * docs/ISOLATION.md). The CUDA driver (cuInit) and Metal (the
     * Objective-C runtime) are not. */
    bool fork_safe;
    /* ---- version 4 ---- */
    /* A shared buffer over the caller's memory (mc_buffer_create_from_host),
     * optional: NULL = MC_ERR_UNSUPPORTED. The engine has checked host !=
     * NULL, size > 0 and MC_HOST_BUFFER_ALIGNMENT; the backend checks its
     * own rules and names the one broken. The memory is not the backend's:
     * buffer_destroy lets go of it (unpins, unmaps) and never frees it. */
    mc_status (*buffer_wrap)(void *dev, void *host, size_t size, const char *label, void **buf);
    /* The buffer's address on the device (mc_buffer_get_device_address),
     * optional: NULL = MC_ERR_UNSUPPORTED. */
    mc_status (*buffer_device_address)(void *dev, void *buf, uint64_t *addr);
    /* Small work on separate queues of one device runs concurrently (CUDA
     * streams): a stream then gives each slot its own queue by default. */
    bool queues_overlap;
} mc__hal;

/* The compiled-in backends, best first (metal, cuda, cpu); NULL-terminated. */
extern const mc__hal *const mc__hal_registry[];

#endif
