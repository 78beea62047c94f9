/*
 * DOC: The CPU device, private header
 *
 * The embedded default device: a pool of worker threads that executes
 * command buffers with the error semantics of an Apple GPU (an
 * execution-time limit per command buffer, queue victims, access revoked
 * after repeated timeouts, sticky device loss), so code that survives here
 * is not killed on a Mac.
 *
 * Files:
 *   cpu_device.c   devices, buffers, events and the HAL table
 *   cpu_exec.c     the worker pool, queues, command execution, command lists
 *   cpu_compile.c  running the compilers (C, MSL, MSL to PTX), compiler identity
 *   cpu_loader.c   loading kernel objects (memfd + dlopen, under loader_lock)
 *   cpu_library.c  libraries, pipelines, the archive
 *   cpu_msl*.c     the MSL front end (its parts: cpu_msl.h)
 *
 * Configuration (environment, read at device open):
 *   MC_TIME_LIMIT_MS       execution-time limit when the descriptor leaves
 *                          it at 0 (default 5000; 0 or less: none)
 *   MC_CPU_SPIN_US         how long idle workers and waiters spin before
 *                          sleeping (default 50; 0: sleep at once)
 *   MC_CPU_SPINNERS        idle workers that spin at once (default: all of
 *                          up to two workers, else half of them)
 *   MC_REVOKE_AFTER        timeouts that revoke access (default 3; 0: never)
 *   MC_REVOKE_WINDOW_MS    ... when they fall within this window (10000)
 *   MC_REVOKE_COOLDOWN_MS  how long access stays revoked (1000)
 *   CC, TMPDIR             the kernel compiler and where it works
 *   MC_MSL_CXX             the MSL kernel compiler (default clang++)
 *
 * Locking: one mutex per device (dev->lock) guards the ready list, the
 * published dispatches, every queue's list and the fault state. Each event
 * has its own mutex; the only nesting is dev->lock -> event lock (when the
 * device is lost and parked work is released).
 */
#ifndef MC_BACKENDS_CPU_CPU_H
#define MC_BACKENDS_CPU_CPU_H

#include "backends/hal.h"
#include "core/core.h"
#include "mc/mc_cpu_kernel.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>

/* Limits reported in mc_device_info: an Apple GPU's (32 KiB of threadgroup
 * memory, SIMD groups of 32), so code tuned and validated here fits a Mac.
 * MSL kernels exchange values across 32 lanes for real (see cpu_msl.c). */
#define MC__CPU_MAX_THREADS 1024u
#define MC__CPU_TGMEM_SIZE (32u * 1024u)
#define MC__CPU_SIMD_WIDTH 32u
#define MC__CPU_DEFAULT_LIMIT_MS 5000
#define MC__CPU_MAX_WORKERS 1024u
#define MC__CPU_MAX_REVOKE_AFTER 64

/* The generated copy of include/mc/mc_cpu_kernel.h, written beside every
 * run-time compiled kernel. */
extern const char mc__cpu_kernel_header[];
/* The generated copy of src/msl/mc_msl_cpu.h: the Metal standard library's
 * compute subset that MSL kernels are compiled against. */
extern const char mc__msl_cpu_header[];

typedef struct mc__cpu_device mc__cpu_device;
typedef struct mc__cpu_job mc__cpu_job;
typedef struct mc__cpu_event mc__cpu_event;

typedef struct mc__cpu_buffer {
    void *data; /* 64-byte aligned, zero-filled; a wrapped buffer's: the caller's memory */
    void *raw;  /* what to free; NULL for a wrapped buffer */
    size_t size;
    mc_storage storage;
} mc__cpu_buffer;

/* Libraries are shared by the pipelines made from them: the engine may
 * destroy a library before its pipelines, so the code stays mapped until
 * the last user lets go. */
typedef struct mc__cpu_library {
    atomic_uint refs;
    void *dl; /* dlopen handle; NULL for built-in libraries */
    int fd;   /* the memfd it was loaded from, or -1 */
    void *so; /* the shared object's bytes, for pipeline_export */
    size_t so_len;
    size_t nbuiltin; /* built-in libraries: functions linked into the program */
    char **names;
    mc_cpu_kernel_fn *fns;
    int32_t *argc;
} mc__cpu_library;

/* Runs `count` threadgroups from ctx->group_id along x, row by row across
 * all of them (an MSL plain-loop kernel's NAME__mc_rows, cpu_msl.c). */
typedef void (*mc__cpu_rows_fn)(const mc_cpu_ctx *ctx, uint32_t count);

typedef struct mc__cpu_pipeline {
    mc__cpu_library *lib;
    mc_cpu_kernel_fn fn;
    mc__cpu_rows_fn rows; /* NAME__mc_rows of an MSL plain-loop kernel, else NULL (cpu_exec.c) */
    uint32_t max_threads; /* per threadgroup */
    int32_t argc;
    const mc_cpu_constants *constants; /* MSL function constants; NULL: none */
    /* One threadgroup's time on one worker in the last dispatch (0: not
     * known yet); a dispatch predicted to be tiny runs unshared. */
    atomic_uint_least64_t group_ns;
} mc__cpu_pipeline;

struct mc__cpu_event {
    mc__cpu_device *dev;
    pthread_mutex_t lock;
    pthread_cond_t cv; /* CPU waiters */
    atomic_uint_least64_t value;
    mc__cpu_job *parked; /* submissions waiting in a WAIT command */
    uint32_t cpu_waiters;
    mc__cpu_event *dev_prev, *dev_next; /* dev->events, under dev->lock */
};

/* One dispatch offered to the pool. Each worker owns one record for the
 * dispatches it leads; it lives as long as the device, so a helper may
 * still read leader_sleeping after its last threadgroup (see cpu_exec.c). */
typedef struct mc__cpu_dispatch {
    struct mc__cpu_dispatch *prev, *next; /* dev->dispatches, under dev->lock */
    bool listed;
    mc_cpu_kernel_fn fn;
    mc__cpu_rows_fn rows;
    const mc_cpu_constants *constants;
    const mc_cpu_arg *args;
    size_t tg_offset[MC_CPU_MAX_TG_MEM];
    size_t tg_len[MC_CPU_MAX_TG_MEM];
    uint32_t groups[3];
    uint32_t threads[3];
    uint64_t total;       /* threadgroups */
    uint64_t chunk;       /* threadgroups taken per grab */
    uint64_t deadline_ns; /* UINT64_MAX: no limit */
    atomic_uint_least64_t next_group;
    atomic_uint helpers; /* workers other than the leader inside */
    atomic_bool abort;   /* the deadline passed */
    atomic_bool leader_sleeping;
} mc__cpu_dispatch;

typedef struct mc__cpu_worker {
    mc__cpu_device *dev;
    uint32_t index;
    pthread_t thread;
    bool started;
    void *tgmem; /* MC__CPU_TGMEM_SIZE bytes, 64-byte aligned */
    void *tgmem_raw;
    mc__cpu_dispatch dispatch;
} mc__cpu_worker;

typedef struct mc__cpu_queue {
    mc__cpu_device *dev;
    /* Submissions not yet completed, oldest first; the head is the one
     * running, ready or parked. Under dev->lock. */
    mc__cpu_job *head, *tail;
    uint64_t next_seq;
    /* Sequence number of the last submission whose complete() returned:
     * submissions of a queue complete in order, so one counter serves every
     * waiter and no per-submission record has to outlive completion. */
    atomic_uint_least64_t done_seq;
    mc_status error; /* sticky once a submission failed; under dev->lock */
    uint32_t waiters;
    pthread_cond_t done_cv; /* with dev->lock */
} mc__cpu_queue;

/* A command list: the engine's recording (valid until cmdlist_destroy) and
 * where each command's group starts. */
typedef struct mc__cpu_list {
    const mc__cmd *cmds;
    uint32_t ncmd;
    const uint8_t *bytes;
    uint32_t *group; /* ncommands entries */
    uint32_t ncommands;
    char *label;
} mc__cpu_list;

/* A submission in flight, from submit to complete. */
struct mc__cpu_job {
    mc__cpu_job *next;       /* in its queue */
    mc__cpu_job *ready_next; /* in dev->ready or an event's parked list */
    mc__cpu_queue *queue;
    mc__submission *sub;
    uint64_t seq;
    /* progress, touched only by the worker leading it */
    bool started;
    bool in_pass;    /* pass `pass` has begun (a WAIT parked inside it) */
    uint32_t pass;   /* the pass to run next */
    uint32_t cmd;    /* the command to run next within it */
    uint64_t run_ns; /* executed so far, parked time excluded */
    uint64_t seg_start_ns;
    uint64_t wait_value;
    /* bindings of the current compute pass */
    const mc__cpu_pipeline *pipeline;
    mc_cpu_arg args[MC_CPU_MAX_ARGS];
    size_t tg_len[MC_CPU_MAX_TG_MEM];
};

struct mc__cpu_device {
    mc_device_info info;
    uint64_t limit_ns;     /* 0 = none */
    uint64_t spin_ns;      /* idle spinning before sleeping */
    uint32_t max_spinners; /* idle workers that spin at once; the rest sleep */
    uint32_t revoke_after; /* 0 = never */
    uint64_t revoke_window_ns, revoke_cooldown_ns;

    pthread_mutex_t lock;
    pthread_cond_t wake;        /* idle workers */
    pthread_cond_t dispatch_cv; /* leaders waiting for helpers */
    atomic_bool stopping;
    uint32_t nsleep;   /* workers asleep on wake */
    atomic_uint nspin; /* idle workers spinning */
    /* ready jobs + listed dispatches; read without the lock by spinners */
    atomic_uint work;
    mc__cpu_job *ready_head, *ready_tail;
    mc__cpu_dispatch *dispatches;
    mc__cpu_event *events;

    /* fault state, under lock (lost is also read without it) */
    atomic_bool lost;
    char lost_msg[256];
    uint64_t timeouts[MC__CPU_MAX_REVOKE_AFTER]; /* recent timeouts, ring */
    uint32_t ntimeouts;
    uint64_t revoked_until_ns;
    uint32_t revocations;

    uint32_t nworkers;
    mc__cpu_worker *workers;

    pthread_mutex_t cc_lock; /* compiler identity, asked once */
    char cc_identity[512];
    bool cc_known;
    char msl_identity[512]; /* the MSL compiler's, under cc_lock too */
    bool msl_known;
};

/* cpu_device.c */
void *mc__cpu_alloc_aligned(size_t size, void **raw);
mc_status mc__cpu_cond_init(pthread_cond_t *cv);
/* Absolute monotonic deadline -> pthread_cond_timedwait; false on timeout. */
bool mc__cpu_cond_wait_until(pthread_cond_t *cv, pthread_mutex_t *m, uint64_t deadline_ns);
/* Sets ev to max(value, v) and returns the parked jobs it releases. */
mc__cpu_job *mc__cpu_event_raise(mc__cpu_event *ev, uint64_t v);

/* cpu_msl.c: MSL source -> C++ for clang against mc_msl_cpu.h, or
 * MC_ERR_COMPILE naming what is outside the compute subset and its line
 * (also in *log). */
mc_status mc__cpu_msl_translate(const char *source, size_t len, char **cpp, size_t *cpp_len, char **log);
/* MSL kernels may run as region loops (cpu_msl_regions.c): MC_MSL_REGIONS is not 0 or off */
bool mc__cpu_msl_regions_on(void);

/* cpu_compile.c: a C or MSL source -> the bytes of a shared object
 * (*so, malloc'd), or MC_ERR_COMPILE with the compiler's output in *log. */
mc_status mc__cpu_compile_object(mc_language lang, const char *source, size_t len, const char *options, void **so,
                                 size_t *so_len, char **log);

/* cpu_loader.c: dlopens the shared object in bytes (checked first); *keep_fd
 * stays open while it is loaded (-1: none); *why (malloc'd) on failure. */
mc_status mc__cpu_load_object(const void *bytes, size_t len, void **dl, int *keep_fd, char **why);
void mc__cpu_loader_close(void *dl);

/* cpu_exec.c */
mc_status mc__cpu_pool_start(mc__cpu_device *dev);
void mc__cpu_pool_stop(mc__cpu_device *dev);
void mc__cpu_make_ready(mc__cpu_device *dev, mc__cpu_job *list);

/* HAL entries, by file */
int mc__cpu_device_count(void);
mc_status mc__cpu_device_info(int index, mc_device_info *out);
mc_status mc__cpu_device_open(int index, const mc_device_desc *desc, void **dev, mc_device_info *info);
void mc__cpu_device_close(void *dev);
mc_status mc__cpu_buffer_create(void *dev, size_t size, mc_storage storage, const char *label, void **buf, void **host);
void mc__cpu_buffer_destroy(void *dev, void *buf);
mc_status mc__cpu_buffer_write(void *dev, void *buf, size_t offset, const void *src, size_t len);
mc_status mc__cpu_buffer_read(void *dev, void *buf, size_t offset, void *dst, size_t len);
mc_status mc__cpu_event_create(void *dev, uint64_t initial, void **event);
void mc__cpu_event_destroy(void *dev, void *event);
uint64_t mc__cpu_event_value(void *dev, void *event);
mc_status mc__cpu_event_signal(void *dev, void *event, uint64_t value);
mc_status mc__cpu_event_wait(void *dev, void *event, uint64_t value, uint64_t timeout_ns);

mc_status mc__cpu_library_create(void *dev, mc_language lang, const char *source, size_t len, const char *options,
                                 void **lib, char **log);
mc_status mc__cpu_library_create_builtin(void *dev, const char *const *names, const mc_cpu_kernel_fn *fns,
                                         const int32_t *argc, size_t n, void **lib);
void mc__cpu_library_destroy(void *dev, void *lib);
mc_status mc__cpu_pipeline_create(void *dev, void *lib, const mc_pipeline_desc *desc, void **pipeline,
                                  mc_pipeline_info *info);
void mc__cpu_pipeline_destroy(void *dev, void *pipeline);
mc_status mc__cpu_compiler_identity(void *dev, mc_language lang, char *out, size_t cap);
mc_status mc__cpu_pipeline_export(void *dev, const mc__pipeline_src *src, void *lib, void *pipeline, void **bytes,
                                  size_t *len);
mc_status mc__cpu_pipeline_import(void *dev, const mc__pipeline_src *src, const void *bytes, size_t len,
                                  bool fail_on_miss, void **lib, void **pipeline, mc_pipeline_info *info);

mc_status mc__cpu_queue_create(void *dev, const char *label, void **queue);
void mc__cpu_queue_destroy(void *dev, void *queue);
mc_status mc__cpu_submit(void *dev, void *queue, mc__submission *sub);
mc_status mc__cpu_submission_wait(void *dev, void *queue, mc__submission *sub, uint64_t timeout_ns);
mc_status mc__cpu_cmdlist_create(void *dev, const mc__list_desc *desc, void **list, uint32_t *caps);
void mc__cpu_cmdlist_destroy(void *dev, void *list);

#endif
