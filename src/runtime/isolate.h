/*
 * DOC: Isolation internals
 *
 * Shared by isolate.c (launcher, channel, shared memory, faults, the
 * supervisor's waits and bookkeeping), runner_isolated.c and stream_isolated.c (the
 * runner's and the stream's back ends meet their front ends in runner_ops.h
 * and stream_ops.h).
 */
#ifndef MC_ENGINE_ISOLATE_H
#define MC_ENGINE_ISOLATE_H

#include "runtime/runtime.h"

#include <sys/types.h>

/* ---- the channel: fixed-size messages over a local stream socket --------- */

enum {
    /* worker -> supervisor */
    MC__ISO_READY = 1,      /* device open, setup done: info, nstate, sizes */
    MC__ISO_PROGRESS = 2,   /* runner: a, the iterations done; rstats */
    MC__ISO_CHECKPOINT = 3, /* runner: a checkpoint of iteration a is in shared memory */
    MC__ISO_FINISHED = 4,   /* runner: the run ended well (or was cancelled); the final state is in shared memory */
    MC__ISO_ERROR = 5,      /* status, text: the worker gives up */
    MC__ISO_RESULT = 6,     /* stream: slot, a = sequence, status, attempts, text; sstats */
    MC__ISO_TRACE = 7,      /* trace events as text lines (engine/trace.h), a = events dropped */
    /* supervisor -> worker */
    MC__ISO_GO = 16, /* runner: start (the state area's descriptor attached), b = 1: relay trace events */
    MC__ISO_CANCEL = 17,
    MC__ISO_ITEM = 18, /* stream: slot, a = sequence, b = tag */
    MC__ISO_QUIT = 19, /* finish up and exit */
    /* supervisor <-> launcher */
    MC__ISO_SPAWN = 32, /* -> SPAWNED, a = pid, the supervisor's end of the worker's socket attached */
    MC__ISO_SPAWNED = 33,
    MC__ISO_REAP = 34,   /* a = pid, b = grace in ms (then SIGKILL), status = kill at once -> REAPED */
    MC__ISO_REAPED = 35, /* a = pid, status = wait status */
    MC__ISO_STOP = 36    /* the launcher ends its worker, if any, and exits */
};

#define MC__ISO_MAGIC 0x6d63494du /* "mcIM" */

/* A message's text: room for a whole error detail (mc_last_error), so a
 * worker's error is never cut mid-sentence on its way to the caller. */
#define MC__ISO_TEXT_MAX 1024

/* The text after "KIND 'LABEL': " when it begins so: a worker's error
 * already names the runner or stream the supervisor names again. */
const char *mc__iso_unprefixed(const char *text, const char *kind, const char *label);
/* Copies src into dst[cap]; a text that does not fit ends in "..." rather
 * than stopping mid-word unmarked. */
void mc__iso_copy_text(char *dst, size_t cap, const char *src);

typedef struct mc__iso_msg {
    uint32_t magic, type;
    int32_t status;
    uint32_t slot;
    uint64_t a, b;
    uint64_t t_ns; /* the sender's monotonic clock (one clock for every process) */
    uint32_t attempts, nstate;
    uint64_t sizes[MC_RUNNER_MAX_STATE];
    union {
        mc_device_info info;
        mc_runner_stats rstats;
        mc_stream_stats sstats;
    } u;
    char text[MC__ISO_TEXT_MAX];
} mc__iso_msg;

void mc__iso_msg_init(mc__iso_msg *m, uint32_t type);
/* Sends one message (with fd_to_pass >= 0: that descriptor too). Blocks
 * until it is written; false when the peer is gone. Never raises SIGPIPE. */
bool mc__iso_send(int sock, const mc__iso_msg *m, int fd_to_pass);
/* Blocks for one whole message; *fd (may be NULL) receives a descriptor
 * that came with it, else -1. false at the end of the stream or an error. */
bool mc__iso_recv(int sock, mc__iso_msg *m, int *fd);

/* ---- the launcher -------------------------------------------------------- */

/* What a worker runs, in the launcher's child; sock is its end of the
 * channel. Returns the exit code. */
typedef int (*mc__iso_worker_fn)(void *ctx, int sock);

typedef struct mc__iso_launcher {
    pid_t pid;
    int sock;
} mc__iso_launcher;

/* Refuses (MC_ERR_INVALID_STATE) when a backend that is not fork-safe was
 * used in this process; what names the caller ("mc_runner_create"). */
mc_status mc__iso_fork_allowed(const char *what);
/* Forks the launcher from the calling thread. The worker function and ctx
 * are what every worker it starts will run. */
mc_status mc__iso_launcher_start(mc__iso_launcher *l, mc__iso_worker_fn fn, void *ctx);
/* A new worker: its pid and the supervisor's end of its channel. */
mc_status mc__iso_launcher_spawn(mc__iso_launcher *l, pid_t *pid, int *sock);
/* Waits up to grace_ms for the worker to exit, then (or at once with
 * kill_now) kills it with SIGKILL, and reaps it: *wstatus (may be NULL)
 * gets its wait status. */
mc_status mc__iso_launcher_reap(mc__iso_launcher *l, pid_t pid, bool kill_now, double grace_ms, int *wstatus);
/* Ends the launcher (and a worker it still has) and reaps it. */
void mc__iso_launcher_stop(mc__iso_launcher *l);

/* ---- shared memory (the primitives are in core/os_posix.c) ---------------- */

/* What every run's shared header begins with. */
typedef struct mc__iso_shared {
    uint32_t magic;
    uint32_t pad;
    _Atomic uint64_t commits; /* command buffers committed by every worker of the run */
} mc__iso_shared;

/* ---- faults ----------------------------------------------------------------- */

#define MC__ISO_FAULT_KILL MC__FAULT_KILL
#define MC__ISO_FAULT_HANG MC__FAULT_HANG

/* kind: an mc_status device error, MC__ISO_FAULT_KILL or MC__ISO_FAULT_HANG;
 * at: the Nth command buffer of the run. */
typedef mc__fault_item mc__iso_fault;

typedef struct mc__iso_faults {
    mc__iso_fault f[MC__MAX_FAULTS];
    size_t n;
} mc__iso_faults;

/* Parses "KIND@N,..." (NULL or "": none). */
mc_status mc__iso_parse_faults(const char *spec, mc__iso_faults *out);

/* In a worker: counts dev's commits into shared->commits from now on and
 * schedules the faults not yet reached (the device kinds on dev, the
 * worker's own through the commit hook). The hook state lives in *arm,
 * which must outlive dev's commits. */
typedef struct mc__iso_armed {
    mc__iso_shared *shared;
    mc__iso_faults faults; /* kill and hang only */
    /* Called on every commit first, on the committing thread (may be
     * NULL): what the worker must hand out before a fault can end it. */
    void (*before)(void *ctx);
    void *before_ctx;
} mc__iso_armed;
void mc__iso_arm_faults(mc__iso_armed *arm, mc_device *dev, mc__iso_shared *shared, const mc__iso_faults *faults);

/* ---- the worker's device ------------------------------------------------------ */

/* Opens what the isolate desc names (in a worker). */
mc_status mc__iso_open_device(const char *spec, int64_t time_limit_ms, uint32_t threads, mc_device **out);

/* ---- the supervisor's bookkeeping ---------------------------------------------- */

typedef struct mc__iso_policy {
    char *device;
    int64_t time_limit_ms;
    uint32_t threads;
    uint64_t deadline_ns, start_timeout_ns;
    uint32_t max_restarts;
    mc__iso_faults faults;
} mc__iso_policy;

/* Copies and checks an mc_isolate_desc (defaults resolved). */
mc_status mc__iso_policy_init(mc__iso_policy *p, const mc_isolate_desc *d, const char *what);
void mc__iso_policy_free(mc__iso_policy *p);

/* Why a worker is being replaced. */
typedef enum mc__iso_cause {
    MC__ISO_CAUSE_ERROR = 1, /* it reported a device error */
    MC__ISO_CAUSE_DIED = 2,
    MC__ISO_CAUSE_HUNG = 3
} mc__iso_cause;

/* True for a device error a new process may mend. */
bool mc__iso_restartable(mc_status s);
/* "killed by signal 9 (Killed)", "exited with code 3" */
void mc__iso_describe_exit(int wstatus, char *out, size_t cap);

/* ---- the supervisor's waits: one loop for the runner and the stream -------- */

/* A supervisor sleeps in poll() on its worker's channel and on a pipe that
 * another thread writes a byte to (cancel, close, new work). */
mc_status mc__iso_wake_open(int wake[2], const char *what);
void mc__iso_wake_signal(const int wake[2]);
void mc__iso_wake_close(int wake[2]);

/* How a supervisor waits for its worker. */
typedef struct mc__iso_waiter {
    int wake_fd; /* the read end of the wake-up pipe */
    /* Woken: whether that ends the wait (2); else it goes on. NULL: every
     * wake-up ends it. */
    bool (*stop)(void *ctx);
    /* Ends the worker being started: at once (kill_now) or after grace_ms;
     * *wstatus (may be NULL) gets its wait status. */
    void (*end_worker)(void *ctx, bool kill_now, double grace_ms, int *wstatus);
    void *ctx;
} mc__iso_waiter;

/* Waits up to timeout_ns (UINT64_MAX: for ever) for a whole message on
 * sock (negative: no worker, only the wake-up): 1 a message in *m, 0 the
 * time ran out, -1 the channel ended, 2 woken (and stop said so). */
int mc__iso_wait(const mc__iso_waiter *w, int sock, mc__iso_msg *m, uint64_t timeout_ns);

/* Waits until the worker just spawned on sock reports READY (then MC_OK,
 * the message in *ready), at most timeout_ns from t0. Otherwise the worker
 * is ended (w->end_worker) and the result says why, with *cause and text:
 * MC_ERR_CANCELLED (woken and stop), MC_ERR_WORKER_LOST (it hung, or it
 * died: *wstatus), or the error the worker reported. */
mc_status mc__iso_await_ready(const mc__iso_waiter *w, int sock, uint64_t t0, uint64_t timeout_ns, mc__iso_msg *ready,
                              mc__iso_cause *cause, int *wstatus, char *text, size_t cap);

/* A worker is being replaced: counts the cause in st (deaths, hangs,
 * device errors, the last signal, cause and its text) and writes into
 * what[cap] the sentence the restart is logged with. text: what the worker
 * reported (ERROR), hung_while: said after the deadline of a hang. The
 * status the run records: MC_ERR_WORKER_LOST for a death or a hang. */
mc_status mc__iso_note_cause(mc_isolate_stats *st, mc__iso_cause cause, mc_status status, int wstatus,
                             uint64_t deadline_ns, const char *hung_while, const char *text, char *what, size_t cap);

/* The stats' restart figures, the same for runner and stream: the cost of
 * a restart from the fault to the new worker's first progress, in parts
 * (reap, start, resume), and the whole time without progress. The
 * supervisor's thread only. */
typedef struct mc__iso_clock {
    bool measuring;               /* a restart happened, its cost not yet counted */
    uint64_t stall_ns;            /* work last advanced (before the first of the faults in a row) */
    uint64_t fault_ns;            /* the fault became known */
    uint64_t reaped_ns, ready_ns; /* the old worker reaped; the new one ready (set by the caller) */
    double sum_ms;
    uint32_t n;
} mc__iso_clock;
/* A worker was replaced: the fault became known at fault_ns, it was reaped
 * at reaped_ns; work last advanced at last_progress_ns. */
void mc__iso_clock_fault(mc__iso_clock *c, uint64_t last_progress_ns, uint64_t fault_ns, uint64_t reaped_ns);
/* Work advanced at now_ns: if a restart is being measured, its figures go
 * to st (and the log). */
void mc__iso_clock_progress(mc__iso_clock *c, mc_isolate_stats *st, uint64_t now_ns);

#endif
