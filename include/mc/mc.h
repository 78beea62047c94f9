/*
 * metal-compute: GPU compute that survives long-running work.
 *
 * This header is the API reference. Conventions that hold for every call:
 *
 *  - Every function returns an mc_status (MC_OK on success) unless its
 *    comment names a sentinel. Arguments are checked; a bad one returns
 *    MC_ERR_INVALID_ARGUMENT and mc_last_error() says which and why.
 *  - Handles are opaque and reference counted. The creator owns the first
 *    reference; mc_*_retain / mc_*_release change it. Releasing NULL is a
 *    no-op; every release returns nothing. Three handles are not counted:
 *    mc_runner, mc_stream and mc_pipeline_future have one owner, no
 *    retain, and their release destroys them (each runs or waits on a
 *    thread of its own, whose end a shared reference would blur). A
 *    committed command buffer holds its own references to every buffer,
 *    pipeline and event it uses, so callers may release those right after
 *    commit.
 *  - Descriptor structs: all-zero means "defaults"; use the MC_*_DESC_INIT
 *    macros. Enum value 0 always means "unset / default".
 *  - Getters: one that fills an out-parameter and returns a status is
 *    mc_OBJECT_get_WHAT (mc_device_get_info, mc_event_get_value); one that
 *    returns a plain value and cannot fail is mc_OBJECT_WHAT (mc_buffer_size).
 *  - Thread safety: devices, buffers, libraries, pipelines, queues and events
 *    may be used from any thread. A command buffer is recorded by one thread
 *    at a time; after commit, wait/state/error queries are thread-safe.
 *  - Callbacks run on a runtime thread, never inside the call that registered
 *    them. If registering fails the callback never runs; otherwise it runs
 *    exactly once.
 */
#ifndef MC_MC_H
#define MC_MC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(MC_BUILDING_LIBRARY) && defined(__GNUC__)
#define MC_API __attribute__((visibility("default")))
#else
#define MC_API
#endif

/* The MC_*_INIT macros: designated initializers that name the fields whose
 * zero is a default worth seeing; every field not named is zero, and zero
 * means "default" everywhere. In C++ (no designated initializers before
 * C++20, and warnings for the unnamed fields after) `{}` gives the same
 * all-zero value. */
#ifdef __cplusplus
#define MC__DESC_INIT(...) \
    {                      \
    }
#else
#define MC__DESC_INIT(...) \
    {                      \
        __VA_ARGS__        \
    }
#endif

/* MC_VERSION_MAJOR, _MINOR, _PATCH and _STRING: the version these headers
 * came with (generated from the build's project version). */
#include <mc/mc_version.h>

/* The library's version at run time, "MAJOR.MINOR.PATCH": it can differ
 * from MC_VERSION_STRING when a program runs against another build of the
 * shared library. Never NULL; a static string. */
MC_API const char *mc_version(void);

/* ------------------------------------------------------------------------ */
/* Status: one taxonomy for device and API errors.                           */
/*                                                                           */
/* Device-side codes keep the numbers of MTLCommandBufferError (F685) so a   */
/* Metal error maps one to one; API errors start at 100.                     */
/* ------------------------------------------------------------------------ */
#define MC_STATUS_MAP(X)                                                            \
    X(OK, 0, "success")                                                             \
    X(ERR_INTERNAL, 1, "internal error in the device or its driver")                \
    X(ERR_TIMEOUT, 2, "command buffer exceeded the device's execution-time limit")  \
    X(ERR_PAGE_FAULT, 3, "page fault: a kernel touched memory it does not own")     \
    X(ERR_ACCESS_REVOKED, 4, "device access revoked after repeated errors")         \
    X(ERR_NOT_PERMITTED, 7, "not permitted to use the device")                      \
    X(ERR_OUT_OF_MEMORY, 8, "out of device memory")                                 \
    X(ERR_INVALID_RESOURCE, 9, "invalid resource used by a command")                \
    X(ERR_DEVICE_LOST, 11, "device lost: reopen it (or restart the process)")       \
    X(ERR_PRIOR_ERROR, 20, "not executed: victim of an earlier error on the queue") \
    X(ERR_INVALID_ARGUMENT, 100, "invalid argument")                                \
    X(ERR_UNSUPPORTED, 101, "not supported by this device")                         \
    X(ERR_COMPILE, 102, "kernel compilation failed")                                \
    X(ERR_CACHE_MISS, 103, "pipeline not in the cache and compiling is disabled")   \
    X(ERR_IO, 104, "input/output error")                                            \
    X(ERR_NOT_FOUND, 105, "not found")                                              \
    X(ERR_INVALID_STATE, 106, "call not allowed in the object's current state")     \
    X(ERR_VALIDATION, 107, "refused by validation")                                 \
    X(ERR_WAIT_TIMEOUT, 108, "wait timed out")                                      \
    X(ERR_CANCELLED, 109, "cancelled")                                              \
    X(ERR_NO_MEMORY, 110, "out of host memory")                                     \
    X(ERR_WORKER_LOST, 111, "the worker process died or stopped answering, past the restart bound")

typedef enum mc_status {
#define MC__STATUS_ENUM(name, value, text) MC_##name = value,
    MC_STATUS_MAP(MC__STATUS_ENUM)
#undef MC__STATUS_ENUM
} mc_status;

/* "MC_ERR_TIMEOUT"; "MC_UNKNOWN" for a value outside the list. */
MC_API const char *mc_status_name(mc_status s);
/* A sentence describing the code; never NULL. */
MC_API const char *mc_status_text(mc_status s);
/* Parses a fault-kind word as used by --inject-faults ("timeout",
 * "page-fault", "access-revoked", "device-lost", "internal", ...). */
MC_API mc_status mc_status_from_word(const char *word, mc_status *out);
/* The detail of the last failing call on this thread ("" if none). The
 * string stays valid until the next failing call on the same thread. */
MC_API const char *mc_last_error(void);

/* True for codes after which the runner must restore state and replay. */
MC_API bool mc_status_is_device_error(mc_status s);

/* ------------------------------------------------------------------------ */
/* Logging. Detail goes to a callback, with stable message identifiers.      */
/* Default: warnings and errors to stderr; MC_LOG=debug|info|warn|error|off. */
/* ------------------------------------------------------------------------ */
typedef enum mc_log_level {
    MC_LOG_DEBUG = 1,
    MC_LOG_INFO = 2,
    MC_LOG_WARN = 3,
    MC_LOG_ERROR = 4,
    MC_LOG_OFF = 5
} mc_log_level;

/* id: a stable dotted identifier such as "cache.entry_corrupt". May be
 * called from any runtime thread; must be thread-safe. */
typedef void (*mc_log_fn)(void *user, mc_log_level level, const char *id, const char *message);
/* Replaces the logger (NULL restores the default). Thread-safe. */
MC_API void mc_log_set_callback(mc_log_fn fn, void *user, mc_log_level min_level);

/* Memory the library allocated for the caller (compile logs). */
MC_API void mc_free(void *p);

/* ------------------------------------------------------------------------ */
/* Devices                                                                   */
/* ------------------------------------------------------------------------ */
typedef struct mc_device mc_device;
typedef struct mc_buffer mc_buffer;
typedef struct mc_library mc_library;
typedef struct mc_pipeline mc_pipeline;
typedef struct mc_queue mc_queue;
typedef struct mc_cmdbuf mc_cmdbuf;
typedef struct mc_pass mc_pass;
typedef struct mc_event mc_event;

typedef enum mc_device_kind {
    MC_DEVICE_ANY = 0,
    MC_DEVICE_CPU = 1,
    MC_DEVICE_CUDA = 2,
    MC_DEVICE_METAL = 3
} mc_device_kind;

MC_API const char *mc_device_kind_name(mc_device_kind k); /* "cpu", "cuda", "metal", "any" */

/* Feature bits in mc_device_info.features. */
#define MC_FEATURE_PRIVATE_STORAGE 0x1u /* buffers the CPU cannot map */
#define MC_FEATURE_GPU_EVENT_WAIT 0x2u  /* events waited on inside a command buffer without a CPU hop */
#define MC_FEATURE_INDIRECT_DISPATCH 0x4u
#define MC_FEATURE_WATCHDOG 0x8u /* an execution-time limit is enforced */
/* Optional Metal features, absent where the GPU or OS lacks them (hosted
 * macOS runners' paravirtual GPU, older macOS): */
#define MC_FEATURE_NATIVE_COMMAND_LISTS 0x10u /* command lists replayed as indirect command buffers */
#define MC_FEATURE_BINARY_ARCHIVE 0x20u       /* pipelines exported and imported as binary archives */
#define MC_FEATURE_RESIDENCY_SET 0x40u        /* buffers kept resident by a residency set */
#define MC_FEATURE_TIMED_EVENT_WAIT 0x80u     /* CPU event waits with a timeout in the driver */

#define MC_NAME_MAX 128

typedef struct mc_device_info {
    mc_device_kind kind;
    int index;                  /* within its kind */
    char name[MC_NAME_MAX];     /* human readable */
    char identity[MC_NAME_MAX]; /* model/architecture: keys the pipeline cache */
    uint32_t max_threads_per_threadgroup;
    uint64_t threadgroup_memory_size; /* bytes per threadgroup */
    uint32_t simd_width;
    uint32_t compute_units;
    bool unified_memory;
    uint64_t execution_time_limit_ns; /* watchdog in force; 0 = none */
    uint64_t max_buffer_size;
    uint32_t features; /* MC_FEATURE_* */
} mc_device_info;

#define MC_TIME_LIMIT_NONE (-1)

typedef struct mc_device_desc {
    mc_device_kind kind; /* ANY: $MC_DEVICE if set, else the best present */
    int index;           /* within the kind */
    /* Execution-time limit per command buffer on devices that emulate one
     * (the CPU device): 0 = default ($MC_TIME_LIMIT_MS, else 5000 ms),
     * MC_TIME_LIMIT_NONE = no limit, >0 = milliseconds. */
    int64_t time_limit_ms;
    uint32_t threads; /* CPU device workers; 0 = number of cores */
} mc_device_desc;
#define MC_DEVICE_DESC_INIT MC__DESC_INIT(.kind = MC_DEVICE_ANY, .index = 0, .time_limit_ms = 0, .threads = 0)

/* Lists the devices of every compiled-in backend whose driver is present.
 * Writes up to cap entries; *count receives the number present. */
MC_API mc_status mc_device_list(mc_device_info *out, size_t cap, size_t *count);
/* desc may be NULL (defaults). */
MC_API mc_status mc_device_open(const mc_device_desc *desc, mc_device **out);
/* "cpu", "cuda", "metal", "cuda:1", or NULL/"" for $MC_DEVICE or the best. */
MC_API mc_status mc_device_open_name(const char *spec, mc_device **out);
/* Sets desc->kind and desc->index from a name as above (other fields are
 * left alone), so a caller can add options before one mc_device_open. */
MC_API mc_status mc_device_desc_from_name(const char *spec, mc_device_desc *desc);
MC_API void mc_device_retain(mc_device *d);
MC_API void mc_device_release(mc_device *d);
MC_API mc_status mc_device_get_info(const mc_device *d, mc_device_info *out);
/* MC_ERR_DEVICE_LOST once the device is lost (sticky), else MC_OK. */
MC_API mc_status mc_device_check(const mc_device *d);

/* Fault injection: the nth command buffer committed on this device from
 * now (1 = the next one) fails with kind. The passes before its middle pass
 * complete, the middle one is faulted, the rest pending, so partial writes
 * happen as on a real fault. Also from the environment:
 * MC_INJECT_FAULTS="timeout@3,device-lost@10" (counted from device open). */
MC_API mc_status mc_device_inject_fault(mc_device *d, mc_status kind, uint64_t nth);
/* Parses "KIND@N[,KIND@N...]" (KIND as for mc_status_from_word, N >= 1,
 * counted from now) and schedules each fault. Nothing is scheduled when the
 * spec has an error. */
MC_API mc_status mc_device_inject_faults(mc_device *d, const char *spec);
/* Command buffers committed on the device so far. */
MC_API uint64_t mc_device_committed_count(const mc_device *d);

/* Validation mode (the MTL_DEBUG_LAYER idea, F683): on when MC_VALIDATION=1
 * or set here before devices are opened. */
MC_API void mc_validation_set(bool on);
MC_API bool mc_validation_enabled(void);

/* ------------------------------------------------------------------------ */
/* Buffers                                                                   */
/* ------------------------------------------------------------------------ */
typedef enum mc_storage {
    MC_STORAGE_SHARED = 0, /* host-visible; contents() is valid */
    MC_STORAGE_PRIVATE = 1 /* device-only where the device has it */
} mc_storage;

typedef struct mc_buffer_desc {
    size_t size; /* bytes, > 0 */
    mc_storage storage;
    const char *label;
    const void *initial_data; /* optional: size bytes copied in */
} mc_buffer_desc;
#define MC_BUFFER_DESC_INIT MC__DESC_INIT(.size = 0, .storage = MC_STORAGE_SHARED)

MC_API mc_status mc_buffer_create(mc_device *d, const mc_buffer_desc *desc, mc_buffer **out);
MC_API void mc_buffer_retain(mc_buffer *b);
/* In validation mode, releasing the last reference the caller holds while a
 * committed, unfinished command buffer uses the buffer is refused: the
 * reference is kept, and mc_last_error() and the log (message id
 * "validation.buffer_in_use") say so. Returns nothing, like every release. */
MC_API void mc_buffer_release(mc_buffer *b);
MC_API size_t mc_buffer_size(const mc_buffer *b); /* 0 for NULL */
MC_API void *mc_buffer_contents(mc_buffer *b);    /* NULL if not host-visible */
/* Synchronous transfers for any storage; do not order against queued work. */
MC_API mc_status mc_buffer_write(mc_buffer *b, size_t offset, const void *src, size_t len);
MC_API mc_status mc_buffer_read(mc_buffer *b, size_t offset, void *dst, size_t len);

/* A buffer over memory the caller already has (a NumPy array, a file
 * mapping): no allocation and no copy. The buffer has shared storage and
 * mc_buffer_contents() returns pointer itself.
 *
 * Ownership: the memory stays the caller's; the library never frees it.
 * It must stay valid and must not move until `release` runs. `release`
 * (optional) runs exactly once, when the buffer is destroyed: after the
 * last reference went and no command buffer uses it any more, on the
 * thread that dropped that reference (mc_buffer_release, or the release of
 * a command buffer that held it) or on the device's notifier thread when
 * the reference went as a command buffer completed. It must not wait for
 * work on the device. If the call fails, `release` never runs and the
 * memory is the caller's at once.
 *
 * Rules, checked before anything is made (MC_ERR_INVALID_ARGUMENT names
 * the rule broken):
 *  - every device: pointer not NULL, size > 0, pointer a multiple of
 *    MC_HOST_BUFFER_ALIGNMENT (kernels load up to 16-byte vectors such as
 *    float4), size at most the device's max_buffer_size;
 *  - cpu: nothing more; the kernels use the memory directly;
 *  - cuda: the pages are pinned and mapped into the device
 *    (cuMemHostRegister + cuMemHostGetDevicePointer); memory already pinned
 *    (another wrapped range on the same pages, cuMemHostAlloc memory) is
 *    refused;
 *  - metal: pointer and size must both be multiples of the page size
 *    (getpagesize(), 16 KiB on Apple silicon), as
 *    newBufferWithBytesNoCopy:length: requires. There is no silent copy
 *    fallback: copy with mc_buffer_create's initial_data instead.
 * MC_ERR_UNSUPPORTED where a backend cannot wrap host memory. Thread-safe. */
#define MC_HOST_BUFFER_ALIGNMENT 16
typedef void (*mc_host_release_fn)(void *user, void *pointer);
typedef struct mc_host_buffer_desc {
    void *pointer; /* size bytes, readable and writable */
    size_t size;
    const char *label;
    mc_host_release_fn release; /* optional: see above */
    void *user;                 /* passed to release */
} mc_host_buffer_desc;
#define MC_HOST_BUFFER_DESC_INIT MC__DESC_INIT(.pointer = NULL, .size = 0, .release = NULL)
MC_API mc_status mc_buffer_create_from_host(mc_device *d, const mc_host_buffer_desc *desc, mc_buffer **out);

/* The address kernels on the device use for the buffer's first byte, for
 * handing device memory to other libraries (DLPack's kDLCUDA): the
 * CUdeviceptr on cuda (private and shared storage alike), the host address
 * on the cpu device (private storage too: the CPU has only host memory).
 * MC_ERR_UNSUPPORTED where the device does not expose one (metal). Valid
 * while the buffer lives; no ordering against queued work. Thread-safe. */
MC_API mc_status mc_buffer_get_device_address(mc_buffer *b, uint64_t *out);

/* ------------------------------------------------------------------------ */
/* Libraries and pipelines                                                   */
/* ------------------------------------------------------------------------ */
typedef enum mc_language {
    MC_LANG_UNSET = 0,
    MC_LANG_C = 1,    /* CPU device: see mc/mc_cpu_kernel.h */
    MC_LANG_CUDA = 2, /* CUDA C through NVRTC */
    MC_LANG_MSL = 3   /* Metal Shading Language */
} mc_language;

MC_API const char *mc_language_name(mc_language l); /* "c", "cuda", "msl" */

typedef struct mc_library_desc {
    mc_language language;
    const char *source;
    size_t source_len;   /* 0 = strlen(source) */
    const char *options; /* compiler options, space separated; may be NULL */
    const char *label;
} mc_library_desc;
#define MC_LIBRARY_DESC_INIT MC__DESC_INIT(.language = MC_LANG_UNSET, .source = NULL, .source_len = 0)

/* Compiles source for the device. On MC_ERR_COMPILE, *log (if log != NULL)
 * receives the compiler's full output; free it with mc_free. *log is set to
 * NULL when there is nothing to report. */
MC_API mc_status mc_library_create(mc_device *d, const mc_library_desc *desc, mc_library **out, char **log);
/* Reads the source from a file. language MC_LANG_UNSET picks it from the
 * extension: .c -> C, .cu -> CUDA, .metal -> MSL. With the pipeline cache
 * on (the default; MC_CACHE=off turns it off, mc/mc_cache.h) nothing is
 * compiled here: each mc_pipeline_create from the library goes through the
 * cache, so a second run loads the compiled code instead of compiling, and
 * a compile error comes from mc_pipeline_create (MC_ERR_COMPILE, the
 * compiler's output in mc_last_error()). Function constants are part of
 * the cache's key: each set of values is cached like any pipeline. */
MC_API mc_status mc_library_create_from_file(mc_device *d, const char *path, mc_language language, const char *options,
                                             mc_library **out, char **log);
/* The extension of device kind k's native kernel language: ".c", ".cu", ".metal".
 * Every device also runs MSL (".metal"), the language of the project's kernels. */
MC_API const char *mc_device_kernel_extension(mc_device_kind k);
MC_API void mc_library_retain(mc_library *l);
MC_API void mc_library_release(mc_library *l);

/* One MSL function constant ([[function_constant(index)]]): a scalar of
 * 1 to 8 bytes (bool, int, uint, float, half, ...), copied at creation. */
typedef struct mc_function_constant {
    uint32_t index; /* below 128 */
    uint32_t size;
    const void *value;
} mc_function_constant;

typedef struct mc_pipeline_desc {
    mc_library *library;
    const char *function;
    /* Occupancy hints (F157, F158): 0 = device default. */
    uint32_t max_total_threads_per_threadgroup;
    bool threadgroup_size_is_multiple_of_simd_width;
    const char *label;
    /* MSL function constants the pipeline specialises; those not given
     * read as undefined (is_function_constant_defined is false). */
    const mc_function_constant *constants;
    uint32_t constant_count;
} mc_pipeline_desc;
#define MC_PIPELINE_DESC_INIT MC__DESC_INIT(.library = NULL, .function = NULL, .max_total_threads_per_threadgroup = 0)

typedef struct mc_pipeline_info {
    uint32_t max_total_threads_per_threadgroup; /* what the device allows for it */
    uint32_t simd_width;
    uint64_t static_threadgroup_memory;
    int32_t argument_count; /* -1 when the device cannot tell */
} mc_pipeline_info;

MC_API mc_status mc_pipeline_create(mc_device *d, const mc_pipeline_desc *desc, mc_pipeline **out);
MC_API void mc_pipeline_retain(mc_pipeline *p);
MC_API void mc_pipeline_release(mc_pipeline *p);
MC_API mc_status mc_pipeline_get_info(const mc_pipeline *p, mc_pipeline_info *out);

/* CPU device only: a kernel linked into the program, registered by name
 * (see mc/mc_cpu_kernel.h for the signature). MC_ERR_UNSUPPORTED elsewhere.
 * argument_count may be -1 when unknown. */
typedef struct mc_cpu_ctx mc_cpu_ctx;
typedef void (*mc_cpu_kernel_fn)(const mc_cpu_ctx *ctx);
MC_API mc_status mc_library_create_builtin(mc_device *d, const char *const *names, const mc_cpu_kernel_fn *fns,
                                           const int32_t *argument_counts, size_t n, mc_library **out);

/* ------------------------------------------------------------------------ */
/* Queues, command buffers, passes                                           */
/* ------------------------------------------------------------------------ */
typedef struct mc_size3 {
    uint32_t x, y, z;
} mc_size3;

typedef struct mc_queue_desc {
    const char *label;
} mc_queue_desc;
#define MC_QUEUE_DESC_INIT MC__DESC_INIT(.label = NULL)

/* Command buffers on one queue execute one after another in commit order.
 * After a command buffer fails, the queue accepts no more work (commit
 * returns the error) until it is released and a new one created (F687). */
MC_API mc_status mc_queue_create(mc_device *d, const mc_queue_desc *desc, mc_queue **out);
MC_API void mc_queue_retain(mc_queue *q);
MC_API void mc_queue_release(mc_queue *q);
/* MC_OK, or the error that stopped the queue. */
MC_API mc_status mc_queue_check(const mc_queue *q);
/* Blocks until every committed command buffer of the queue has finished. */
MC_API mc_status mc_queue_wait_idle(mc_queue *q, uint64_t timeout_ns);

typedef enum mc_cmdbuf_state {
    MC_CMDBUF_NOT_ENQUEUED = 0,
    MC_CMDBUF_ENQUEUED = 1,
    MC_CMDBUF_COMMITTED = 2,
    MC_CMDBUF_SCHEDULED = 3,
    MC_CMDBUF_COMPLETED = 4,
    MC_CMDBUF_ERROR = 5
} mc_cmdbuf_state;
MC_API const char *mc_cmdbuf_state_name(mc_cmdbuf_state s);

/* Per-pass state after an error (MTLCommandEncoderErrorState, F686). */
typedef enum mc_pass_state {
    MC_PASS_UNKNOWN = 0,
    MC_PASS_COMPLETED = 1,
    MC_PASS_AFFECTED = 2,
    MC_PASS_PENDING = 3,
    MC_PASS_FAULTED = 4
} mc_pass_state;
MC_API const char *mc_pass_state_name(mc_pass_state s);

#define MC_CMDBUF_TIMESTAMPS 0x1u /* record GPU start/end (always on for cpu/metal) */
#define MC_CMDBUF_PASS_TIMESTAMPS 0x2u
/* Do not retain the resources the command buffer uses (F676): the caller
 * keeps them alive until completion. Validation mode refuses releasing a
 * buffer such a command buffer still uses. */
#define MC_CMDBUF_UNRETAINED_REFERENCES 0x4u

typedef struct mc_cmdbuf_desc {
    const char *label;
    uint32_t flags; /* MC_CMDBUF_* */
} mc_cmdbuf_desc;
#define MC_CMDBUF_DESC_INIT MC__DESC_INIT(.label = NULL, .flags = 0)

MC_API mc_status mc_cmdbuf_create(mc_queue *q, const mc_cmdbuf_desc *desc, mc_cmdbuf **out);
MC_API void mc_cmdbuf_retain(mc_cmdbuf *cb);
MC_API void mc_cmdbuf_release(mc_cmdbuf *cb);

/* Compute passes (Metal compute encoders). The pass handle belongs to the
 * command buffer and is valid until mc_pass_end. Only one pass is open at a
 * time. Bindings persist across dispatches within a pass. The same calls
 * record a command list (mc_cmdlist_begin, mc/mc_cmdlist.h). */
MC_API mc_status mc_cmdbuf_begin_pass(mc_cmdbuf *cb, const char *label, mc_pass **out);
MC_API mc_status mc_pass_set_pipeline(mc_pass *p, mc_pipeline *pl);
MC_API mc_status mc_pass_set_buffer(mc_pass *p, uint32_t index, mc_buffer *b, size_t offset);
/* Copies len bytes (at most MC_MAX_BYTES_ARG) into the command buffer. */
#define MC_MAX_BYTES_ARG 4096
MC_API mc_status mc_pass_set_bytes(mc_pass *p, uint32_t index, const void *data, size_t len);
/* Threadgroup memory slot index gets len bytes per threadgroup. */
MC_API mc_status mc_pass_set_threadgroup_memory(mc_pass *p, uint32_t index, size_t len);
MC_API mc_status mc_pass_dispatch(mc_pass *p, mc_size3 threadgroups, mc_size3 threads_per_threadgroup);
/* The threadgroup grid is read at execution time from three uint32 at
 * b+offset (F148), so a kernel earlier in the same command buffer may write
 * it. A zero count does nothing. In validation mode a count over
 * MC_INDIRECT_MAX_GROUPS_* (mc/mc_cmdlist.h) fails the pass with
 * MC_ERR_VALIDATION instead of running. */
MC_API mc_status mc_pass_dispatch_indirect(mc_pass *p, mc_buffer *b, size_t offset, mc_size3 threads_per_threadgroup);
/* Orders the dispatches before it against those after it within the pass. */
MC_API mc_status mc_pass_barrier(mc_pass *p);
MC_API mc_status mc_pass_end(mc_pass *p);

#define MC_MAX_BUFFER_ARGS 31
#define MC_MAX_THREADGROUP_MEMORY_ARGS 8

/* Copy and fill passes on the device timeline. */
MC_API mc_status mc_cmdbuf_copy_buffer(mc_cmdbuf *cb, mc_buffer *src, size_t src_offset, mc_buffer *dst,
                                       size_t dst_offset, size_t len);
MC_API mc_status mc_cmdbuf_fill_buffer(mc_cmdbuf *cb, mc_buffer *b, size_t offset, size_t len, uint8_t value);

/* Timeline events inside a command buffer (between passes). */
MC_API mc_status mc_cmdbuf_signal_event(mc_cmdbuf *cb, mc_event *e, uint64_t value);
MC_API mc_status mc_cmdbuf_wait_event(mc_cmdbuf *cb, mc_event *e, uint64_t value);

typedef void (*mc_cmdbuf_fn)(void *user, mc_cmdbuf *cb);
/* Runs once, on a runtime thread, when the command buffer completes or fails
 * (also when it never runs because the queue or device failed after commit).
 * Only before commit. */
MC_API mc_status mc_cmdbuf_on_completed(mc_cmdbuf *cb, mc_cmdbuf_fn fn, void *user);

/* Reserves the command buffer's place in the queue order (F152). */
MC_API mc_status mc_cmdbuf_enqueue(mc_cmdbuf *cb);
/* Submits. Fails (and the completion callback never runs) if a pass is still
 * open, the command buffer was committed already, or the queue or device has
 * failed: then the queue's or device's error is returned. */
MC_API mc_status mc_cmdbuf_commit(mc_cmdbuf *cb);
/* Waits until the command buffer completed or failed. Returns MC_OK when it
 * finished (check mc_cmdbuf_status for the outcome) or MC_ERR_WAIT_TIMEOUT.
 * timeout_ns UINT64_MAX waits for ever. */
#define MC_WAIT_FOREVER UINT64_MAX
MC_API mc_status mc_cmdbuf_wait(mc_cmdbuf *cb, uint64_t timeout_ns);
MC_API mc_cmdbuf_state mc_cmdbuf_get_state(const mc_cmdbuf *cb);
/* MC_OK after success; the error code after failure; MC_ERR_INVALID_STATE
 * while not finished. message (may be NULL) receives the detail, valid while
 * the command buffer lives. */
MC_API mc_status mc_cmdbuf_status(const mc_cmdbuf *cb, const char **message);
MC_API size_t mc_cmdbuf_pass_count(const mc_cmdbuf *cb);
typedef struct mc_pass_info {
    const char *label; /* valid while the command buffer lives */
    mc_pass_state state;
    uint64_t gpu_start_ns, gpu_end_ns; /* with MC_CMDBUF_PASS_TIMESTAMPS, else 0 */
} mc_pass_info;
MC_API mc_status mc_cmdbuf_get_pass_info(const mc_cmdbuf *cb, size_t index, mc_pass_info *out);
/* GPU start and end of a finished command buffer on the device's clock, in
 * nanoseconds; only the difference is portable. */
MC_API mc_status mc_cmdbuf_get_gpu_time(const mc_cmdbuf *cb, uint64_t *start_ns, uint64_t *end_ns);
MC_API const char *mc_cmdbuf_label(const mc_cmdbuf *cb);

/* ------------------------------------------------------------------------ */
/* Timeline events (MTLSharedEvent model, F678)                              */
/* ------------------------------------------------------------------------ */
MC_API mc_status mc_event_create(mc_device *d, uint64_t initial_value, mc_event **out);
MC_API void mc_event_retain(mc_event *e);
MC_API void mc_event_release(mc_event *e);
MC_API mc_status mc_event_get_value(const mc_event *e, uint64_t *out);
/* CPU signal. Values only move forward: a smaller value is refused. */
MC_API mc_status mc_event_signal(mc_event *e, uint64_t value);
/* MC_OK once value >= target, else MC_ERR_WAIT_TIMEOUT. */
MC_API mc_status mc_event_wait(mc_event *e, uint64_t target, uint64_t timeout_ns);
typedef void (*mc_event_fn)(void *user, mc_event *e, uint64_t value);
/* Runs fn once on the device's notifier thread when the value reaches
 * target (F143, F680): never on the signalling thread. If the device is
 * released first, fn runs with the value then current. */
MC_API mc_status mc_event_notify(mc_event *e, uint64_t target, mc_event_fn fn, void *user);

#ifdef __cplusplus
}
#endif

#include "mc_cache.h"

#include "mc_runner.h"

#include "mc_stream.h"

#include "mc_isolate.h"

#include "mc_cmdlist.h"

#include "mc_trace.h"

#endif
