/*
 * metal-compute: isolated runs. Included by mc/mc.h; see docs/ISOLATION.md.
 *
 * Some device faults cannot be survived inside the process that caused
 * them. On an H100 an illegal-address fault poisons the process for good:
 * resetting the primary context and creating a new one both fail with the
 * same error, and only a new process recovers. On Metal, repeated faults
 * make the system ignore the process's submissions (access revoked, F146,
 * F685) and recreating the queue in the same process may not help. An
 * isolated runner or stream keeps going through such faults: its device
 * work runs in a worker process that the library starts and supervises,
 * and the caller's process never touches the device.
 *
 *  - Use: fill an mc_isolate_desc and point mc_runner_desc.isolate (or
 *    mc_stream_desc.isolate) at it, with desc.device NULL. Everything else
 *    is the ordinary runner or stream API on the handle that
 *    mc_runner_create or mc_stream_create returns.
 *  - The worker: mc_runner_create (mc_stream_create) forks a small
 *    launcher process from the calling thread, and the launcher forks each
 *    worker; no program is executed, so the caller's code and data, setup
 *    and teardown and their user pointer included, are there in the worker
 *    as they were when create was called. The worker opens the device
 *    named by `device`, calls setup, and runs an ordinary runner (stream)
 *    on it. Progress (results) come back to the caller's process.
 *  - Shared memory: the state's checkpoints (the stream's slots) live in
 *    memory mapped by both processes (anonymous mappings and an unnamed
 *    memory file: nothing in /dev/shm, nothing to clean up), so a
 *    checkpoint survives the worker.
 *  - Restarts: when the worker reports a device error that its own
 *    recovery could not mend (device lost, access revoked, ...), dies (a
 *    signal, an exit without a report) or sends nothing for deadline_ms
 *    while it has work, the supervisor ends it, starts a new one, which
 *    reopens the device, rebuilds its pipelines (from the pipeline cache's
 *    archive when setup uses it: fast), restores the last checkpoint (the
 *    stream resubmits every item without a result) and continues. Progress
 *    and results continue in the caller's process as if nothing happened.
 *    Up to max_restarts restarts in a row without progress are tried; then
 *    the run ends with the cause (MC_ERR_WORKER_LOST for a worker that died
 *    or hung) and mc_last_error() names it and the last good iteration.
 *  - Errors that a new process cannot mend end the run at once: setup's
 *    error, MC_ERR_INVALID_ARGUMENT, MC_ERR_NOT_PERMITTED,
 *    MC_ERR_INVALID_RESOURCE, MC_ERR_COMPILE, ...
 *
 * Rules for the caller:
 *  - Create isolated runners and streams before this process opens a
 *    device of a backend that is not fork-safe (cuda, metal) or lists its
 *    devices: their drivers keep process-wide state that a forked child
 *    cannot use (CUDA must not be initialised before fork). create then
 *    fails with MC_ERR_INVALID_STATE. The CPU device is fork-safe. After
 *    the isolated run the process may open any device.
 *  - Fork copies only the calling thread: create from a thread when no
 *    other thread holds a lock that setup needs (the library's own are
 *    taken care of), ideally before the program starts threads. Restarts
 *    fork from the launcher, which never runs threads.
 *  - setup and teardown may use only the device they are given and memory
 *    of their own; changes made in the worker are not seen by the caller.
 *    State that must survive a worker belongs in the runner's state
 *    buffers, or in memory the caller maps MAP_SHARED before create.
 *  - The worker closes none of the caller's other file descriptors. create
 *    flushes every stdio stream first, so nothing buffered is written twice.
 *
 * Threads: the runner's supervisor runs on the thread in mc_runner_run
 * (progress is called there, as usual); the stream's on the stream's
 * thread in the caller's process (on_result is called there, as usual).
 */
#ifndef MC_MC_ISOLATE_H
#define MC_MC_ISOLATE_H

#include "mc.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Declared here too (C11 allows the repeat) so that this header compiles
 * when mc.h includes it from inside mc_runner.h or mc_stream.h, before
 * those have declared their handle. */
typedef struct mc_runner mc_runner;
typedef struct mc_stream mc_stream;

/* Read (and its strings copied) by mc_runner_create / mc_stream_create. */
typedef struct mc_isolate_desc {
    /* The device the worker opens: "cpu", "cuda", "metal", "cuda:1"; NULL
     * or "" = $MC_DEVICE, else the best present, chosen in the worker (the
     * caller never lists devices). */
    const char *device;
    int64_t time_limit_ms; /* as mc_device_desc.time_limit_ms */
    uint32_t threads;      /* as mc_device_desc.threads (CPU device workers) */
    /* A worker with work to do that sends nothing for this long is hung:
     * it is killed and replaced. It reports at least every 100 ms while it
     * works; keep the deadline above the device's execution-time limit.
     * 0 = 10000 ms; at least 250 ms. */
    double deadline_ms;
    /* From starting a worker until it has opened the device and run setup
     * (compiling kernels included). 0 = 120000 ms. */
    double start_timeout_ms;
    /* Restarts in a row without progress before giving up: a runner's
     * progress is a checkpoint past the one it restored, a stream's a
     * result. 0 = 5. */
    uint32_t max_restarts;
    /* Faults to inject, "KIND@N[,KIND@N...]": N counts the command buffers
     * committed over the whole run, across workers, so each fires once.
     * KIND is a device fault (timeout, page-fault, device-lost, ...: see
     * mc_device_inject_faults), injected into the worker's device, or a
     * fault of the worker itself: kill (it dies by SIGKILL at its Nth
     * command buffer) or hang (it stops there and answers nothing more).
     * NULL = none. */
    const char *inject_faults;
} mc_isolate_desc;
#define MC_ISOLATE_DESC_INIT MC__DESC_INIT(.device = NULL, .deadline_ms = 0, .start_timeout_ms = 0, .max_restarts = 0)

/* What the supervisor saw; all times in milliseconds on its clock. */
typedef struct mc_isolate_stats {
    uint32_t workers;       /* worker processes started */
    uint32_t restarts;      /* of them, replacements */
    uint32_t device_errors; /* restarts because the worker reported a device error (device lost, ...) */
    uint32_t deaths;        /* restarts because the worker died (a signal, an exit without a report) */
    uint32_t hangs;         /* restarts because the worker sent nothing for deadline_ms */
    int last_signal;        /* the signal that ended the last worker that died by one; 0 if none */
    mc_status last_cause;   /* of the last restart: the device error, or MC_ERR_WORKER_LOST; MC_OK if none */
    char last_cause_text[256];
    double start_ms; /* the first worker: from its start until it was ready (device open, setup) */
    /* A restart's cost: from the moment the fault was known (the worker's
     * report, its death seen, or the deadline passed) until the new worker
     * reported progress again (the runner: its first chunk after the
     * restore; the stream: the first result). */
    double restart_ms_last, restart_ms_mean, restart_ms_max;
    /* The last restart in parts: ending and reaping the old worker,
     * starting the new one until it was ready (device open, setup,
     * pipelines), and from ready to progress (the restore, the first
     * chunk or result). */
    double reap_ms_last, ready_ms_last, resume_ms_last;
    /* The stall a watcher saw in the last restart: from the old worker's
     * last progress (the runner: iterations advanced; the stream: a result)
     * to the new one's first, so the time the fault took to be noticed
     * (the device's error reporting, the deadline) is included. */
    double outage_ms_last;
    uint64_t restored_iteration; /* runner: where the last worker started (its checkpoint) */
    mc_device_info device;       /* the device the workers opened (valid once one was ready) */
    int worker_pid;              /* the current worker, 0 when none */
} mc_isolate_stats;

/* The figures of an isolated runner or stream (created with .isolate).
 * Thread-safe, any time. MC_ERR_INVALID_ARGUMENT for a handle that is not
 * an isolated one. */
MC_API mc_status mc_runner_get_isolate_stats(const mc_runner *r, mc_isolate_stats *out);
MC_API mc_status mc_stream_get_isolate_stats(const mc_stream *s, mc_isolate_stats *out);

#ifdef __cplusplus
}
#endif

#endif
