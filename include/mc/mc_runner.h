/*
 * metal-compute: the runner. Included by mc/mc.h; see docs/RUNNER.md.
 *
 * A long computation described as a step kernel applied many times to some
 * state buffers. The runner cuts it into command buffers ("chunks") that
 * each hold as much work as fits a time budget measured on the device, so
 * no command buffer comes near the device's execution-time limit (F145,
 * F146, F696); keeps several chunks queued so the device never idles
 * between them (F135, F152); wakes the CPU only through a timeline event
 * (F692); copies the state into a checkpoint every few seconds; and after a
 * command-buffer error recreates what the error broke (the queue, or the
 * whole device after a loss), restores the last checkpoint and replays
 * (F681, F687, F695). With a deterministic kernel the result after any
 * number of recoveries is bit-identical to an undisturbed run.
 *
 * The kernel, per dispatch:
 *  - slot iteration_arg (when not 0) receives bytes mc_runner_iteration: the
 *    first iteration of the dispatch and how many to run (at most
 *    iterations_per_dispatch; fewer only in the last dispatch of the run).
 *    Ping-pong state picks its source by the parity of the iteration.
 *  - slot control_arg (when not 0) receives the runner's control buffer
 *    (mc_runner_control), from which every dispatch then reads its grid
 *    (indirect dispatch, F148). The kernel stops the run by setting
 *    groups[0] = 0, stopped = 1 and stop_iteration = the first iteration it
 *    did not run. Dispatches already queued then run an empty grid: stopping
 *    costs no device time. Without a control slot the grid is fixed and the
 *    run ends at total_iterations.
 *  - every other slot is what setup put in the binding.
 * The kernel must be deterministic (the state after iteration i depends only
 * on the state before it and on i) for replays to be exact, keep a single
 * dispatch well under 40 ms (F688), and never spin waiting for anything:
 * there is no forward-progress guarantee (F151) and the compiler may delete
 * the loop (F691).
 *
 * Device loss means reopening the device and rebuilding every object on it,
 * so the caller supplies setup and teardown: the runner calls setup once in
 * mc_runner_create and again on each reopened device; teardown before it
 * lets go of a device and in mc_runner_release.
 */
#ifndef MC_MC_RUNNER_H
#define MC_MC_RUNNER_H

#include "mc.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct mc_runner mc_runner;

/* What slot iteration_arg holds for each dispatch (16 bytes). */
typedef struct mc_runner_iteration {
    uint64_t first_iteration;
    uint32_t count;
    uint32_t pad;
} mc_runner_iteration;

/* The control buffer at slot control_arg (24 bytes, host-visible). The
 * runner sets groups to desc.threadgroups and the rest to 0 before the run
 * and after every restore. */
typedef struct mc_runner_control {
    uint32_t groups[3];      /* the grid every dispatch reads; the kernel writes groups[0] = 0 to stop */
    uint32_t stopped;        /* the kernel writes 1 when it stops */
    uint64_t stop_iteration; /* the first iteration not run (= iterations done) */
} mc_runner_control;

/* How a slot of the step kernel is bound. */
typedef enum mc_runner_arg_kind {
    MC_RUNNER_ARG_NONE = 0, /* unbound (or bound by the runner: iteration_arg, control_arg) */
    MC_RUNNER_ARG_BUFFER = 1,
    MC_RUNNER_ARG_BYTES = 2
} mc_runner_arg_kind;

typedef struct mc_runner_arg {
    mc_runner_arg_kind kind;
    mc_buffer *buffer; /* BUFFER: on the device setup was given */
    size_t offset;     /* BUFFER */
    const void *bytes; /* BYTES: copied by the runner when setup returns */
    size_t len;        /* BYTES: 1 .. MC_MAX_BYTES_ARG */
} mc_runner_arg;

#define MC_RUNNER_MAX_STATE 16

/* What setup fills in. The runner only borrows these handles: setup creates
 * them, teardown releases them. The binding is zeroed before setup runs. */
typedef struct mc_runner_binding {
    mc_pipeline *pipeline;                                     /* the step kernel */
    mc_buffer *state[MC_RUNNER_MAX_STATE];                     /* checkpointed and restored; also bind them in args */
    uint32_t state_count;                                      /* 1 .. MC_RUNNER_MAX_STATE */
    mc_runner_arg args[MC_MAX_BUFFER_ARGS];                    /* indexed by slot */
    size_t threadgroup_memory[MC_MAX_THREADGROUP_MEMORY_ARGS]; /* bytes per threadgroup, by slot; 0 = none */
    void *user_data;                                           /* free for setup/teardown */
} mc_runner_binding;

/* Called with a fresh binding on dev (the runner holds a reference to dev
 * for as long as it uses the binding). Creates the pipeline, the state
 * buffers with their initial contents and every other argument. On failure
 * it releases what it made and returns the error; mc_runner_create (or the
 * recovery) then fails with it. Runs on the thread calling mc_runner_create
 * or mc_runner_run. */
typedef mc_status (*mc_runner_setup_fn)(void *user, mc_device *dev, mc_runner_binding *bind);
/* Releases what setup made. The device may be lost: only releases then. */
typedef void (*mc_runner_teardown_fn)(void *user, mc_runner_binding *bind);

typedef struct mc_runner_progress {
    uint64_t iterations;       /* done so far; never decreases (replays after a recovery do not count twice) */
    uint64_t total_iterations; /* desc.total_iterations (0: until the stop condition) */
    double rate;               /* iterations per second since the run began */
    double eta_s;              /* estimated seconds left; < 0 when unknown */
    double elapsed_s;
    uint64_t chunks; /* command buffers completed */
    uint32_t recoveries;
    bool done;                /* the last call of the run */
    uint32_t worker_restarts; /* isolated runs: worker processes restarted so far (mc/mc_isolate.h) */
} mc_runner_progress;

/* Called on the thread running mc_runner_run, between chunks, at most every
 * progress_interval_ms and once more at the end (done = true). Keep it
 * short: the device is fed from this thread. */
typedef void (*mc_runner_progress_fn)(void *user, const mc_runner_progress *p);

/* Called on the thread running mc_runner_run each time a checkpoint has
 * been copied into host memory: state[i] holds sizes[i] bytes of state
 * buffer i after `iteration` iterations; the pointers are valid until it
 * returns. Not called for the checkpoint of iteration 0 that
 * mc_runner_create takes, nor for a checkpoint taken where the kernel
 * stopped (it is not used). For keeping checkpoints outside the runner: the
 * isolation layer mirrors them into memory its supervisor shares. Keep it
 * short: the device is fed from this thread. */
typedef void (*mc_runner_checkpoint_fn)(void *user, uint64_t iteration, const void *const *state, const size_t *sizes,
                                        uint32_t count);

/* mc_runner_desc.flags */
/* After MC_ERR_DEVICE_LOST do not reopen the device: mc_runner_run returns
 * MC_ERR_DEVICE_LOST at once, with the last good state in host memory
 * (mc_runner_state_read). For a process that cannot reopen its device (a
 * CUDA context poisoned by a kernel fault) and is replaced instead: the
 * isolation layer sets it in its worker. */
#define MC_RUNNER_NO_REOPEN 0x1u
/* With checkpoint_dir: mc_runner_create starts the run from the newest
 * checkpoint file in the folder that passes every check (its checksum,
 * its sizes, run_params byte for byte); a refused one is logged
 * ("runner.checkpoint_refused") with the reason and the older one is
 * tried. A folder without checkpoints starts from the beginning; one whose
 * every checkpoint is refused fails mc_runner_create with
 * MC_ERR_INVALID_STATE naming each file and why. */
#define MC_RUNNER_RESUME 0x2u

struct mc_isolate_desc; /* mc/mc_isolate.h */

typedef struct mc_runner_desc {
    mc_device *device;              /* required; the runner keeps its own reference (replaced after a loss) */
    mc_runner_setup_fn setup;       /* required */
    mc_runner_teardown_fn teardown; /* required */
    void *user;                     /* passed to setup and teardown */
    mc_size3 threadgroups;          /* the grid of one dispatch */
    mc_size3 threads_per_threadgroup;
    uint32_t iterations_per_dispatch; /* 0 = 1 */
    uint64_t total_iterations;        /* 0 = until the stop condition (needs control_arg) */
    int32_t iteration_arg;            /* slot (1 ..) for mc_runner_iteration bytes; 0 (or -1) = none */
    int32_t control_arg;              /* slot (1 ..) for the control buffer; 0 (or -1) = no stop condition */
    double budget_ms;                 /* device time per chunk; 0 = 25 ms (docs/RUNNER.md says why) */
    double max_chunk_ms;              /* hard cap per chunk; 0 = min(limit / 10, 500 ms) */
    uint32_t in_flight;               /* chunks queued at once; 0 = 3 */
    double checkpoint_ms;             /* checkpoint interval (wall clock); 0 = 1000 ms */
    uint32_t max_recoveries;          /* failures in a row without progress before giving up; 0 = 8 */
    double backoff_initial_ms;        /* access revoked: first wait; 0 = 100 ms, doubling */
    double backoff_max_ms;            /* longest wait; 0 = 5000 ms */
    mc_runner_progress_fn progress;   /* optional */
    void *progress_user;
    double progress_interval_ms;           /* 0 = 100 ms */
    const char *label;                     /* names the command buffers ("LABEL chunk N") */
    mc_runner_checkpoint_fn on_checkpoint; /* optional */
    void *checkpoint_user;
    uint32_t flags; /* MC_RUNNER_* */
    /* Not NULL: an isolated run (mc/mc_isolate.h, docs/ISOLATION.md). The
     * device work runs in a worker process the library starts and
     * supervises; device must then be NULL (the worker opens
     * isolate->device), setup and teardown run in the worker, progress in
     * the caller's process. */
    const struct mc_isolate_desc *isolate;
    /* Not NULL: durable checkpoints (docs/RUNNER.md). Every checkpoint is
     * also written to a file in this folder (made if missing): through a
     * temporary file, fsync and rename, with a checksum and run_params;
     * the last two are kept. Written by the thread running the runner
     * (in an isolated run, the worker). With MC_RUNNER_RESUME the run
     * starts from the newest valid one. */
    const char *checkpoint_dir;
    const void *run_params; /* what identifies the run; stored in each file, compared on resume (copied) */
    size_t run_params_len;
} mc_runner_desc;
#define MC_RUNNER_DESC_INIT                                                                                           \
    MC__DESC_INIT(.device = NULL, .iterations_per_dispatch = 0, .iteration_arg = 0, .control_arg = 0, .budget_ms = 0, \
                  .in_flight = 0, .checkpoint_ms = 0, .max_recoveries = 0)

typedef struct mc_runner_stats {
    uint64_t iterations;                /* done (the stop iteration after an early stop) */
    uint64_t chunks;                    /* command buffers that completed */
    uint64_t chunks_submitted;          /* committed, including failed, replayed and empty ones */
    uint64_t chunks_after_stop;         /* queued behind the stop: they ran empty grids */
    uint64_t dispatches;                /* in completed chunks */
    double chunk_ms_mean, chunk_ms_max; /* device time per completed chunk */
    double gap_us_mean, gap_us_max;     /* device idle between consecutive chunks (end to next start) */
    uint64_t checkpoints;               /* taken (copied to host memory) */
    uint64_t checkpoint_iteration;      /* iteration of the last checkpoint */
    uint32_t recoveries;                /* failures recovered from (every kind) */
    uint32_t timeouts, page_faults, access_revoked, devices_lost, internal_errors, victims, other_errors;
    uint32_t device_reopens;
    double backoff_ms;      /* time spent waiting after access revoked */
    double elapsed_ms;      /* wall clock of mc_runner_run */
    mc_status last_failure; /* MC_OK if none */
    bool stopped_early;     /* the kernel set the stop condition */
    bool cancelled;
    uint32_t worker_restarts;     /* isolated runs: worker processes restarted (details: mc_runner_get_isolate_stats) */
    uint64_t checkpoints_written; /* files written to checkpoint_dir (in this process) */
    uint64_t resumed_iteration;   /* MC_RUNNER_RESUME: the iteration the run started from (0: the beginning) */
} mc_runner_stats;

/* Validates desc, opens nothing new: uses desc->device, creates the queue,
 * the timeline event and the runner's buffers, calls setup, and copies the
 * state setup made into host memory: the checkpoint of iteration 0 (so the
 * state must be complete when setup returns). Errors:
 * MC_ERR_INVALID_ARGUMENT (with the field named), setup's error, device
 * errors. With desc->isolate (device NULL) it starts the launcher and the
 * first worker process and waits until that worker has opened the device
 * and run setup, so the same errors come back; MC_ERR_INVALID_STATE when a
 * device that is not fork-safe was used in this process first
 * (mc/mc_isolate.h). */
MC_API mc_status mc_runner_create(const mc_runner_desc *desc, mc_runner **out);
/* Before mc_runner_run: start the run at `iteration` from the given state
 * instead of the state setup made. state[i] points to
 * mc_runner_state_size(r, i) bytes for each of the count state buffers;
 * they are written to the device and become the last good checkpoint, so a
 * fault replays from there. For resuming work saved from an earlier run
 * (the isolation layer restores its shared checkpoint this way). Progress
 * and the stop condition continue from iteration; total_iterations still
 * ends the run. Errors: MC_ERR_INVALID_ARGUMENT (count, NULL state,
 * iteration past total_iterations), MC_ERR_INVALID_STATE (after the run
 * began), device errors. */
MC_API mc_status mc_runner_restore(mc_runner *r, uint64_t iteration, const void *const *state, uint32_t count);
/* Runs to the end: total_iterations, or the kernel's stop condition.
 * Blocks the calling thread. Returns MC_OK; MC_ERR_CANCELLED after
 * mc_runner_cancel; or the error that exhausted the recoveries, with
 * mc_last_error() naming its cause and the last good iteration. One run per
 * runner: a second call returns MC_ERR_INVALID_STATE. */
MC_API mc_status mc_runner_run(mc_runner *r);
/* Thread-safe, from any thread, also before mc_runner_run: the run stops
 * queueing work, waits for the chunks in flight (each within the budget)
 * and returns MC_ERR_CANCELLED. */
MC_API mc_status mc_runner_cancel(mc_runner *r);
/* Thread-safe; during a run gives the figures so far. */
MC_API mc_status mc_runner_get_stats(const mc_runner *r, mc_runner_stats *out);
/* Copies len bytes from the start of state buffer index (any storage).
 * After a run, the final state; not during a run. An isolated runner reads
 * it from shared memory after its run (the last good checkpoint when the
 * run failed) and returns MC_ERR_INVALID_STATE before. */
MC_API mc_status mc_runner_state_read(mc_runner *r, uint32_t index, void *dst, size_t len);
/* Size of state buffer index; 0 for a bad runner or index. */
MC_API size_t mc_runner_state_size(const mc_runner *r, uint32_t index);
/* The device the runner uses now (borrowed: a loss replaces it). NULL for
 * an isolated runner: its device is in its worker process. */
MC_API mc_device *mc_runner_device(const mc_runner *r);
/* Calls teardown, releases everything the runner made and its device
 * reference. Not while mc_runner_run runs. NULL is a no-op. A runner is not
 * reference counted (mc/mc.h): this destroys it; there is no retain. */
MC_API void mc_runner_release(mc_runner *r);

#ifdef __cplusplus
}
#endif

#endif
