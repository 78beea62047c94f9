/*
 * DOC: The isolated runner
 *
 * The runner's isolated back end (runner.c is the front end): an mc_runner
 * whose device work runs in a worker process (docs/ISOLATION.md).
 * The caller's process holds the supervisor: it never opens a device. What
 * this file owns:
 *
 *  - the worker (runner_worker, in the launcher's child): opens the device,
 *    makes an ordinary runner with the caller's setup and teardown and
 *    MC_RUNNER_NO_REOPEN (a lost device is the supervisor's business),
 *    reports READY with the state's sizes, waits for GO, restores the last
 *    checkpoint from shared memory (mc_runner_restore), arms the injected
 *    faults and runs. Progress goes to the supervisor every few
 *    milliseconds while iterations advance and at least every deadline/4:
 *    those messages are the heartbeat, sent by the thread that does the
 *    work, so a worker stuck in a driver call or a wait that never returns
 *    stops them; a heartbeat thread would keep beating. Every checkpoint
 *    (on_checkpoint) is mirrored into the shared state area, the final
 *    state too;
 *  - the shared memory: a small header (an anonymous shared mapping made
 *    before the launcher is forked: the commit count of the whole run and
 *    which of two state copies is the last good one) and the state area
 *    (an unnamed shared-memory file made when the first worker has told
 *    the sizes, passed to each worker with GO). The copy being written is
 *    never the one published, so a worker killed in the middle leaves the
 *    last good one intact;
 *  - the supervisor (mc_runner_run on the caller's thread): waits with
 *    poll() for messages, the deadline and cancel; replaces a worker that
 *    reports a device error its recovery could not mend, dies or hangs;
 *    counts restarts in a row without a checkpoint past the restored one
 *    and gives up past the bound; calls the caller's progress callback with
 *    iterations that continue across restarts; measures each restart from
 *    the fault to the new worker's first progress.
 */
#include "runtime/isolate.h"
#include "runtime/runner_ops.h"
#include "engine/trace.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define WORKER_PROGRESS_MS 5.0 /* how often the worker's runner reports: the resolution of the restart cost */
#define STATE_ALIGN 64u

typedef struct runner_shared {
    mc__iso_shared base;
    _Atomic uint32_t ckpt;     /* 0: none yet; k + 1: copy k is the last good state */
    _Atomic uint64_t furthest; /* the furthest iteration any worker reported, set at each restart */
    _Atomic uint32_t restarts; /* workers replaced so far */
    uint32_t pad;
    uint64_t ckpt_iter[2];
} runner_shared;

/* The state area: two copies, state buffer i at offs[i] in each. Both
 * sides compute it from the sizes alone. */
typedef struct layout {
    uint32_t nstate;
    size_t sizes[MC_RUNNER_MAX_STATE], offs[MC_RUNNER_MAX_STATE];
    size_t copy_size, area_size;
} layout;

static void make_layout(layout *l, uint32_t n, const uint64_t *sizes)
{
    size_t off = 0;
    for (uint32_t i = 0; i < n; i++) {
        l->sizes[i] = (size_t)sizes[i];
        l->offs[i] = off;
        off += (l->sizes[i] + STATE_ALIGN - 1) / STATE_ALIGN * STATE_ALIGN;
    }
    l->nstate = n;
    l->copy_size = off;
    l->area_size = 2 * off;
}

typedef struct iso_runner {
    struct mc_runner b; /* the front end's part; b.desc is the caller's, passed to each worker */
    mc__iso_policy pol;
    mc__iso_launcher launcher;
    runner_shared *sh;

    /* made after the launcher was forked: workers learn it from GO */
    layout lay;
    int area_fd;
    uint8_t *area;

    /* the current worker */
    pid_t pid;
    int sock;
    bool go_sent;
    uint64_t last_msg_ns;

    /* the run: the supervisor's thread only, published under mu */
    int wake[2]; /* cancel writes a byte */
    bool cancel_sent;
    uint64_t high, restored_iter, final_iter;
    uint32_t in_a_row;         /* restarts since an iteration past fail_high was reached */
    uint64_t fail_high;        /* the furthest iteration at the last restart */
    mc_runner_stats base, cur; /* finished workers' sums; the current worker's last report */
    mc_isolate_stats ist;
    mc__iso_clock clock;
    uint64_t progress_ns; /* the last time iterations advanced */
    uint64_t worker_iter; /* the current worker's last report */
    bool have_final;
    bool stopped_early, cancelled;
    mc_status last_failure;
    bool trace_at_create; /* the launcher's copy tells its workers to relay from their start */
} iso_runner;

/* ---- the worker ----------------------------------------------------------- */

typedef struct worker {
    iso_runner *ir; /* this process's copy, as it was when the launcher was forked */
    layout lay;
    int sock;
    mc_device *dev;
    mc_runner *r;
    pthread_mutex_t r_mu;    /* r, for the reader thread's cancel */
    pthread_mutex_t send_mu; /* one message at a time: trace events may leave from any committing thread */
    uint8_t *area;
    uint64_t heartbeat_ns, last_sent_ns, last_iter;
    uint64_t checkpoint_past; /* after a restart: the next forced checkpoint, past the last failure; 0: none */
    bool tracing;             /* the supervisor traces: this worker relays its events */
    mc__iso_armed arm;
} worker;

static bool w_send(worker *w, mc__iso_msg *m)
{
    pthread_mutex_lock(&w->send_mu);
    m->t_ns = mc__now_ns();
    w->last_sent_ns = m->t_ns;
    bool ok = mc__iso_send(w->sock, m, -1);
    pthread_mutex_unlock(&w->send_mu);
    return ok;
}

/* The events recorded since the last call go to the supervisor, which
 * puts them in its trace under this worker's pid. On the run's thread,
 * with every other message, so they arrive before the message that ends
 * the worker; a worker killed loses only what it recorded since. */
static void w_ship_trace(worker *w)
{
    while (w->tracing) {
        mc__iso_msg m;
        mc__iso_msg_init(&m, MC__ISO_TRACE);
        uint64_t dropped = 0;
        size_t n = mc__trace_relay_take(m.text, sizeof m.text, &dropped);
        if (!n && !dropped) return;
        m.a = dropped;
        if (!w_send(w, &m) || !n) return;
    }
}

static void w_ship_trace_hook(void *ctx)
{
    w_ship_trace(ctx);
}

static int w_error(worker *w, mc_status s, const char *what)
{
    mc__iso_msg m;
    mc__iso_msg_init(&m, MC__ISO_ERROR);
    m.status = s;
    snprintf(m.text, sizeof m.text, "%s%s", what, mc_last_error());
    if (w->r) mc_runner_get_stats(w->r, &m.u.rstats);
    w_ship_trace(w);
    w_send(w, &m);
    return 0;
}

/* Copies the state into the copy that is not the last good one, then
 * publishes it. from_device: read the runner's state buffers (the initial
 * or the final state); else state[] (a checkpoint). */
static mc_status w_mirror(worker *w, uint64_t iteration, const void *const *state)
{
    iso_runner *ir = w->ir;
    const layout *l = &w->lay;
    uint32_t cur = atomic_load_explicit(&ir->sh->ckpt, memory_order_acquire);
    uint32_t k = cur == 1 ? 1 : 0;
    uint8_t *dst = w->area + (size_t)k * l->copy_size;
    for (uint32_t i = 0; i < l->nstate; i++) {
        if (state) {
            memcpy(dst + l->offs[i], state[i], l->sizes[i]);
        } else {
            mc_status s = mc_runner_state_read(w->r, i, dst + l->offs[i], l->sizes[i]);
            if (s != MC_OK) return s;
        }
    }
    ir->sh->ckpt_iter[k] = iteration;
    atomic_store_explicit(&ir->sh->ckpt, k + 1, memory_order_release);
    return MC_OK;
}

static void w_progress(void *user, const mc_runner_progress *p)
{
    worker *w = user;
    w_ship_trace(w);
    uint64_t now = mc__now_ns();
    if (!p->done && p->iterations == w->last_iter && now - w->last_sent_ns < w->heartbeat_ns) return;
    w->last_iter = p->iterations;
    mc__iso_msg m;
    mc__iso_msg_init(&m, MC__ISO_PROGRESS);
    m.a = p->iterations;
    mc_runner_get_stats(w->r, &m.u.rstats);
    w_send(w, &m);
}

static void w_checkpoint(void *user, uint64_t iteration, const void *const *state, const size_t *sizes, uint32_t n)
{
    worker *w = user;
    (void)sizes;
    (void)n;
    w_mirror(w, iteration, state);
    /* (on the run's thread: the runner takes it with the next chunk) */
    if (w->checkpoint_past > iteration) mc__runner_checkpoint_past(w->r, w->checkpoint_past);
    w->checkpoint_past = 0;
    mc__iso_msg m;
    mc__iso_msg_init(&m, MC__ISO_CHECKPOINT);
    m.a = iteration;
    w_send(w, &m);
    w_ship_trace(w);
}

/* Reads what the supervisor sends while the run goes on: cancel. The end of
 * the channel means the supervisor is gone: nobody wants the work. */
static void *w_reader(void *arg)
{
    worker *w = arg;
    mc__iso_msg m;
    while (mc__iso_recv(w->sock, &m, NULL)) {
        if (m.type != MC__ISO_CANCEL && m.type != MC__ISO_QUIT) continue;
        pthread_mutex_lock(&w->r_mu);
        if (w->r) mc_runner_cancel(w->r);
        pthread_mutex_unlock(&w->r_mu);
    }
    _exit(3);
    return NULL;
}

static void w_cleanup(worker *w)
{
    pthread_mutex_lock(&w->r_mu);
    mc_runner *r = w->r;
    w->r = NULL;
    pthread_mutex_unlock(&w->r_mu);
    mc_runner_release(r);
    if (w->dev) {
        /* The supervisor reports the run's unfired faults, counted over
         * every worker; this device saw only its share. */
        mc__device_forget_faults(w->dev);
    }
    mc__cache_save_stats(w->dev); /* the process ends by _exit, maybe before the device is destroyed */
    mc_device_release(w->dev);
    w->dev = NULL;
}

static int runner_worker(void *ctx, int sock)
{
    iso_runner *ir = ctx;
    worker w;
    memset(&w, 0, sizeof w);
    w.ir = ir;
    w.sock = sock;
    w.heartbeat_ns = ir->pol.deadline_ns / 4;
    pthread_mutex_init(&w.r_mu, NULL);
    pthread_mutex_init(&w.send_mu, NULL);
    if (ir->trace_at_create) {
        /* Recorded from here; handed out once the run starts (GO). */
        mc__trace_relay_start();
        w.tracing = true;
    }

    mc_status s = mc__iso_open_device(ir->pol.device, ir->pol.time_limit_ms, ir->pol.threads, &w.dev);
    if (s != MC_OK) return w_error(&w, s, "opening the device: ");
    mc_runner_desc d = ir->b.desc;
    d.device = w.dev;
    d.isolate = NULL;
    d.flags |= MC_RUNNER_NO_REOPEN;
    d.flags &= ~MC_RUNNER_RESUME; /* the supervisor resumed into the shared state (resume_from_disk) */
    d.progress = w_progress;
    d.progress_user = &w;
    d.progress_interval_ms = WORKER_PROGRESS_MS;
    d.on_checkpoint = w_checkpoint;
    d.checkpoint_user = &w;
    /* Waits after access was revoked stay inside the deadline. */
    double half = (double)ir->pol.deadline_ns / 2e6;
    if (!d.backoff_max_ms || d.backoff_max_ms > half) d.backoff_max_ms = half;
    if (d.backoff_initial_ms > d.backoff_max_ms) d.backoff_initial_ms = d.backoff_max_ms;
    mc_runner *r;
    if ((s = mc_runner_create(&d, &r)) != MC_OK) {
        w_error(&w, s, "");
        w_cleanup(&w);
        return 0;
    }
    w.r = r;

    mc__iso_msg m;
    mc__iso_msg_init(&m, MC__ISO_READY);
    mc_device_get_info(w.dev, &m.u.info);
    m.nstate = 0;
    while (m.nstate < MC_RUNNER_MAX_STATE && mc_runner_state_size(r, m.nstate)) {
        m.sizes[m.nstate] = mc_runner_state_size(r, m.nstate);
        m.nstate++;
    }
    make_layout(&w.lay, m.nstate, m.sizes);
    int fd = -1;
    if (!w_send(&w, &m) || !mc__iso_recv(sock, &m, &fd) || m.type != MC__ISO_GO || fd < 0) {
        if (fd >= 0) close(fd);
        w_cleanup(&w); /* not wanted after all (QUIT, or the supervisor is gone) */
        return 0;
    }
    if (m.b && !w.tracing) {
        mc__trace_relay_start();
        w.tracing = true;
    } else if (!m.b && w.tracing) {
        mc_trace_stop(); /* the supervisor stopped its trace: a relay's stop discards */
        w.tracing = false;
    }
    w.area = mc__shm_map_fd(fd, w.lay.area_size);
    close(fd);
    if (!w.area) {
        mc__fail(MC_ERR_NO_MEMORY, "cannot map the state area (%zu bytes): %s", w.lay.area_size, strerror(errno));
        w_error(&w, MC_ERR_NO_MEMORY, "");
        w_cleanup(&w);
        return 0;
    }
    uint32_t ck = atomic_load_explicit(&ir->sh->ckpt, memory_order_acquire);
    if (ck) {
        const void *state[MC_RUNNER_MAX_STATE];
        for (uint32_t i = 0; i < w.lay.nstate; i++)
            state[i] = w.area + (size_t)(ck - 1) * w.lay.copy_size + w.lay.offs[i];
        s = mc_runner_restore(r, ir->sh->ckpt_iter[ck - 1], state, w.lay.nstate);
    } else {
        s = w_mirror(&w, 0, NULL); /* the initial state: there is always a last good one */
    }
    if (s != MC_OK) {
        w_error(&w, s, "restoring the checkpoint: ");
        w_cleanup(&w);
        return 0;
    }
    /* After a restart, work is kept at once: the first chunk checkpoints
     * (the last worker may have got further than it could report, and a
     * fault may come again before the interval), then the first chunk past
     * where the last one failed, as the in-process runner does. The next
     * fault then costs only what came after, and the supervisor sees
     * progress. */
    uint64_t furthest = atomic_load(&ir->sh->furthest), restored = ck ? ir->sh->ckpt_iter[ck - 1] : 0;
    if (atomic_load(&ir->sh->restarts)) {
        mc__runner_checkpoint_past(r, restored);
        w.checkpoint_past = furthest > restored ? furthest : 0;
    }
    if (w.tracing) {
        /* The events so far leave at every commit: a worker killed there
         * (by a fault or for real) loses only the command buffer that
         * killed it. */
        w.arm.before = w_ship_trace_hook;
        w.arm.before_ctx = &w;
    }
    mc__iso_arm_faults(&w.arm, w.dev, &ir->sh->base, &ir->pol.faults);
    pthread_t reader;
    if (pthread_create(&reader, NULL, w_reader, &w) != 0) {
        w_error(&w, mc__fail(MC_ERR_INTERNAL, "cannot start the worker's reader thread"), "");
        w_cleanup(&w);
        return 0;
    }
    pthread_detach(reader);

    s = mc_runner_run(r);
    mc_runner_stats st;
    mc_runner_get_stats(r, &st);
    if (s == MC_OK || s == MC_ERR_CANCELLED) {
        char why[256];
        snprintf(why, sizeof why, "%s", s == MC_OK ? "" : mc_last_error());
        mc_status ms = w_mirror(&w, st.iterations, NULL);
        if (ms != MC_OK) {
            w_error(&w, ms, "copying the final state: ");
        } else {
            mc__iso_msg_init(&m, MC__ISO_FINISHED);
            m.status = s;
            m.a = st.iterations;
            m.u.rstats = st;
            snprintf(m.text, sizeof m.text, "%s", why);
            w_ship_trace(&w);
            w_send(&w, &m);
        }
    } else {
        w_error(&w, s, "");
        /* A device the worker could not mend: the supervisor ends this
         * process now; its teardown could only wait on a broken driver. */
        if (mc__iso_restartable(s)) {
            mc__cache_save_stats(w.dev);
            return 0;
        }
    }
    w_cleanup(&w);
    mc__shm_unmap(w.area, w.lay.area_size);
    return 0;
}

/* ---- the supervisor ------------------------------------------------------------ */

static iso_runner *as_iso(const mc_runner *r)
{
    return (iso_runner *)(uintptr_t)r;
}

/* Adds a worker's figures to the run's. */
static void add_stats(mc_runner_stats *t, const mc_runner_stats *c)
{
    uint64_t chunks = t->chunks + c->chunks;
    t->chunk_ms_mean =
        chunks ? (t->chunk_ms_mean * (double)t->chunks + c->chunk_ms_mean * (double)c->chunks) / (double)chunks : 0;
    t->gap_us_mean =
        chunks ? (t->gap_us_mean * (double)t->chunks + c->gap_us_mean * (double)c->chunks) / (double)chunks : 0;
    t->chunks = chunks;
    t->chunks_submitted += c->chunks_submitted;
    t->chunks_after_stop += c->chunks_after_stop;
    t->dispatches += c->dispatches;
    t->chunk_ms_max = MC__MAX(t->chunk_ms_max, c->chunk_ms_max);
    t->gap_us_max = MC__MAX(t->gap_us_max, c->gap_us_max);
    t->checkpoints += c->checkpoints;
    t->checkpoints_written += c->checkpoints_written;
    t->recoveries += c->recoveries;
    t->timeouts += c->timeouts;
    t->page_faults += c->page_faults;
    t->access_revoked += c->access_revoked;
    t->devices_lost += c->devices_lost;
    t->internal_errors += c->internal_errors;
    t->victims += c->victims;
    t->other_errors += c->other_errors;
    t->device_reopens += c->device_reopens;
    t->backoff_ms += c->backoff_ms;
    if (c->last_failure != MC_OK) t->last_failure = c->last_failure;
}

static void publish(iso_runner *ir)
{
    mc_runner_stats t = ir->base;
    add_stats(&t, &ir->cur);
    uint32_t ck = ir->sh ? atomic_load(&ir->sh->ckpt) : 0;
    t.checkpoint_iteration = ck ? ir->sh->ckpt_iter[ck - 1] : 0;
    t.iterations = ir->have_final ? ir->final_iter : ir->high;
    if (ir->last_failure != MC_OK) t.last_failure = ir->last_failure;
    t.stopped_early = ir->stopped_early;
    t.cancelled = ir->cancelled;
    t.worker_restarts = ir->ist.restarts;
    ir->ist.worker_pid = ir->pid;
    mc__runner_publish(&ir->b, &t, &ir->ist);
}

/* Ends the current worker: at once (kill) or after grace_ms. */
static void end_worker(iso_runner *ir, bool kill_now, double grace_ms, int *wstatus)
{
    if (wstatus) *wstatus = 0;
    if (ir->pid > 0) mc__iso_launcher_reap(&ir->launcher, ir->pid, kill_now, grace_ms, wstatus);
    if (ir->sock >= 0) close(ir->sock);
    ir->sock = -1;
    ir->pid = 0;
    ir->go_sent = false;
    ir->cancel_sent = false;
}

/* Sizes the state area from the first worker's report; later workers must
 * report the same. */
static mc_status take_sizes(iso_runner *ir, const mc__iso_msg *m)
{
    if (m->nstate < 1 || m->nstate > MC_RUNNER_MAX_STATE)
        return mc__fail(MC_ERR_INVALID_STATE, "runner '%s': the worker reported %u state buffers", ir->b.label,
                        m->nstate);
    if (ir->area) {
        bool same = m->nstate == ir->lay.nstate;
        for (uint32_t i = 0; same && i < m->nstate; i++) same = m->sizes[i] == ir->lay.sizes[i];
        if (!same)
            return mc__fail(MC_ERR_INVALID_STATE,
                            "runner '%s': setup made other state buffers in a new worker than in the first",
                            ir->b.label);
        return MC_OK;
    }
    make_layout(&ir->lay, m->nstate, m->sizes);
    ir->b.nstate = m->nstate;
    for (uint32_t i = 0; i < m->nstate; i++) ir->b.state_size[i] = ir->lay.sizes[i];
    ir->area_fd = mc__shm_create_fd(ir->lay.area_size);
    if (ir->area_fd < 0)
        return mc__fail(MC_ERR_NO_MEMORY, "runner '%s': no shared memory for two copies of the state (%zu bytes): %s",
                        ir->b.label, ir->lay.area_size, strerror(errno));
    ir->area = mc__shm_map_fd(ir->area_fd, ir->lay.area_size);
    if (!ir->area)
        return mc__fail(MC_ERR_NO_MEMORY, "runner '%s': cannot map the state area (%zu bytes): %s", ir->b.label,
                        ir->lay.area_size, strerror(errno));
    return MC_OK;
}

/* Woken: cancel that the worker has not been told of yet ends a wait. */
static bool cancel_pending(void *ctx)
{
    iso_runner *ir = ctx;
    return atomic_load(&ir->b.cancel) && !ir->cancel_sent;
}

static void end_worker_cb(void *ctx, bool kill_now, double grace_ms, int *wstatus)
{
    end_worker(ctx, kill_now, grace_ms, wstatus);
}

static mc__iso_waiter waiter(iso_runner *ir)
{
    return (mc__iso_waiter){.wake_fd = ir->wake[0], .stop = cancel_pending, .end_worker = end_worker_cb, .ctx = ir};
}

/* Waits for the worker's channel or cancel: 1 a message in *m, 0 the time
 * ran out, -1 the channel ended, 2 cancel. */
static int wait_event(iso_runner *ir, mc__iso_msg *m, uint64_t timeout_ns)
{
    mc__iso_waiter w = waiter(ir);
    return mc__iso_wait(&w, ir->sock, m, timeout_ns);
}

/* Starts a worker and waits until it is ready (or fails). *cause and
 * text say why it failed. */
static mc_status start_worker(iso_runner *ir, mc__iso_cause *cause, char *text, size_t cap)
{
    *cause = MC__ISO_CAUSE_ERROR;
    text[0] = '\0';
    uint64_t t0 = mc__now_ns();
    mc_status s = mc__iso_launcher_spawn(&ir->launcher, &ir->pid, &ir->sock);
    if (s != MC_OK) {
        snprintf(text, cap, "%s", mc_last_error());
        return s;
    }
    ir->ist.workers++;
    mc__iso_waiter w = waiter(ir);
    mc__iso_msg m;
    int ws = 0;
    s = mc__iso_await_ready(&w, ir->sock, t0, ir->pol.start_timeout_ns, &m, cause, &ws, text, cap);
    if (*cause == MC__ISO_CAUSE_DIED && WIFSIGNALED(ws)) ir->ist.last_signal = WTERMSIG(ws);
    if (s != MC_OK) return s;
    uint64_t ready_ns = ir->clock.ready_ns = mc__now_ns();
    if (MC__TRACING())
        mc__trace_instant("runner", ir->b.label, "isolate", "worker ready", ready_ns, NULL,
                          MC__TARGS({"worker", ir->ist.workers}, {"pid", ir->pid}));
    if (ir->ist.workers == 1) ir->ist.start_ms = (double)(ready_ns - t0) / 1e6;
    ir->ist.device = m.u.info;
    if ((s = take_sizes(ir, &m)) != MC_OK) {
        end_worker(ir, true, 0, NULL);
        snprintf(text, cap, "%s", mc_last_error());
        return s;
    }
    ir->last_msg_ns = ready_ns;
    return MC_OK;
}

/* Before the run (MC_RUNNER_RESUME): the state becomes the last good one
 * in shared memory, which every worker restores at GO. */
static mc_status iso_restore(mc_runner *base, uint64_t iteration, const void *const *state)
{
    iso_runner *ir = as_iso(base);
    for (uint32_t i = 0; i < ir->lay.nstate; i++) memcpy(ir->area + ir->lay.offs[i], state[i], ir->lay.sizes[i]);
    ir->sh->ckpt_iter[0] = iteration;
    atomic_store_explicit(&ir->sh->ckpt, 1u, memory_order_release);
    ir->high = ir->restored_iter = iteration;
    return MC_OK;
}

static mc_status iso_init(mc_runner *base, const mc_device_info *info)
{
    (void)info; /* none: the device is the worker's */
    iso_runner *ir = as_iso(base);
    ir->area_fd = ir->sock = ir->wake[0] = ir->wake[1] = -1;
    ir->launcher.sock = -1;
    mc_status s = mc__iso_fork_allowed("mc_runner_create");
    if (s != MC_OK) return s;
    if ((s = mc__iso_policy_init(&ir->pol, ir->b.desc.isolate, "mc_runner_create")) != MC_OK) return s;
    ir->b.desc.isolate = NULL; /* the worker's runner is a local one */
    ir->sh = mc__shm_map_anon(sizeof *ir->sh);
    if (!ir->sh) return mc__fail(MC_ERR_NO_MEMORY, "mc_runner_create: no shared memory: %s", strerror(errno));
    ir->sh->base.magic = MC__ISO_MAGIC;
    /* A worker's setup (compiles, cache hits) is in the trace too when
     * the trace was on before the launcher was forked. */
    ir->trace_at_create = mc_trace_active();
    /* The launcher is forked before anything else of ours is open. */
    if ((s = mc__iso_launcher_start(&ir->launcher, runner_worker, ir)) != MC_OK) return s;
    if ((s = mc__iso_wake_open(ir->wake, "mc_runner_create")) != MC_OK) return s;
    /* The first worker: setup's errors come back from here, as from an
     * ordinary mc_runner_create. */
    mc__iso_cause cause;
    char text[MC__ISO_TEXT_MAX];
    if ((s = start_worker(ir, &cause, text, sizeof text)) != MC_OK)
        return mc__fail(s, "runner '%s': %s", ir->b.label, mc__iso_unprefixed(text, "runner", ir->b.label));
    publish(ir);
    return MC_OK;
}

/* Replaces the worker after a fault (or gives up): MC_OK to go on. */
static mc_status restart(iso_runner *ir, mc__iso_cause cause, mc_status status, const char *text, uint64_t fault_ns)
{
    int ws = 0;
    pid_t old = ir->pid;
    end_worker(ir, true, 0, &ws);
    uint64_t reaped = mc__now_ns();
    char what[MC__ISO_TEXT_MAX + 64];
    status = mc__iso_note_cause(&ir->ist, cause, status, ws, ir->pol.deadline_ns, "",
                                mc__iso_unprefixed(text, "runner", ir->b.label), what, sizeof what);
    /* The dead worker's figures join the sums. */
    add_stats(&ir->base, &ir->cur);
    memset(&ir->cur, 0, sizeof ir->cur);
    ir->last_failure = status;
    ir->in_a_row++;
    atomic_store(&ir->sh->furthest, ir->high);
    atomic_fetch_add(&ir->sh->restarts, 1);
    ir->fail_high = ir->high;
    uint32_t ck = atomic_load(&ir->sh->ckpt);
    uint64_t good = ck ? ir->sh->ckpt_iter[ck - 1] : 0;
    if (ir->in_a_row > ir->pol.max_restarts) {
        publish(ir);
        return mc__fail(status,
                        "runner '%s': gave up after %u worker restarts in a row without progress; the last: %s; last "
                        "good iteration %llu (checkpoint), furthest reached %llu",
                        ir->b.label, ir->in_a_row - 1, what, (unsigned long long)good, (unsigned long long)ir->high);
    }
    ir->ist.restarts++;
    if (MC__TRACING())
        mc__trace_instant(
            "runner", ir->b.label, "isolate", "worker restart", 0, mc_status_name(status),
            MC__TARGS({"worker", ir->ist.workers + 1}, {"from", good}, {"in_a_row", ir->in_a_row}, {"old_pid", old}));
    mc__log(MC_LOG_WARN, "isolate.restart", "runner '%s': %s; starting worker %u from iteration %llu", ir->b.label,
            what, ir->ist.workers + 1, (unsigned long long)good);
    mc__iso_clock_fault(&ir->clock, ir->progress_ns ? ir->progress_ns : ir->b.start_ns, fault_ns, reaped);
    publish(ir);
    return MC_OK;
}

/* Faults listed past the end of the run tested nothing: say so. */
static void warn_unfired(iso_runner *ir)
{
    uint64_t done = atomic_load(&ir->sh->base.commits);
    for (size_t i = 0; i < ir->pol.faults.n; i++) {
        const mc__iso_fault *f = &ir->pol.faults.f[i];
        if (f->at <= done) continue;
        const char *word = f->kind == MC__ISO_FAULT_KILL   ? "kill"
                           : f->kind == MC__ISO_FAULT_HANG ? "hang"
                                                           : mc__status_word((mc_status)f->kind);
        mc__log(MC_LOG_WARN, "isolate.fault_never_fired",
                "runner '%s': injected fault %s@%llu never fired: the run committed %llu command buffer%s", ir->b.label,
                word ? word : "?", (unsigned long long)f->at, (unsigned long long)done, done == 1 ? "" : "s");
    }
}

static mc_status iso_run(mc_runner *base)
{
    iso_runner *ir = as_iso(base);
    uint64_t progress_ns =
        (uint64_t)((ir->b.desc.progress_interval_ms ? ir->b.desc.progress_interval_ms : 100.0) * 1e6);
    uint64_t next_report = ir->b.start_ns + progress_ns;
    mc_status result = MC_OK;
    char final_text[MC__ISO_TEXT_MAX] = "";
    for (;;) {
        if (atomic_load(&ir->b.cancel) && (ir->pid <= 0 || !ir->go_sent)) {
            end_worker(ir, true, 0, NULL);
            ir->cancelled = true;
            uint32_t ck = atomic_load(&ir->sh->ckpt);
            ir->final_iter = ck ? ir->sh->ckpt_iter[ck - 1] : 0;
            ir->have_final = ck != 0;
            result = mc__fail(MC_ERR_CANCELLED, "runner '%s': cancelled at iteration %llu", ir->b.label,
                              (unsigned long long)ir->final_iter);
            break;
        }
        if (ir->pid <= 0) {
            mc__iso_cause cause;
            char text[MC__ISO_TEXT_MAX];
            uint64_t t = mc__now_ns();
            mc_status s = start_worker(ir, &cause, text, sizeof text);
            if (s == MC_ERR_CANCELLED) continue;
            if (s != MC_OK) {
                if (cause == MC__ISO_CAUSE_ERROR && !mc__iso_restartable(s)) {
                    result = mc__fail(s, "runner '%s': a new worker failed: %s", ir->b.label,
                                      mc__iso_unprefixed(text, "runner", ir->b.label));
                    break;
                }
                if ((result = restart(ir, cause, s, text, t)) != MC_OK) break;
                continue;
            }
        }
        if (!ir->go_sent) {
            mc__iso_msg m;
            mc__iso_msg_init(&m, MC__ISO_GO);
            m.b = mc_trace_active();
            uint32_t ck = atomic_load(&ir->sh->ckpt);
            ir->restored_iter = ck ? ir->sh->ckpt_iter[ck - 1] : 0;
            ir->ist.restored_iteration = ir->restored_iter;
            ir->worker_iter = ir->restored_iter;
            if (ir->restored_iter > ir->high) ir->high = ir->restored_iter;
            ir->go_sent = true;
            ir->last_msg_ns = mc__now_ns();
            if (!mc__iso_send(ir->sock, &m, ir->area_fd)) {
                if ((result = restart(ir, MC__ISO_CAUSE_DIED, MC_OK, "", mc__now_ns())) != MC_OK) break;
                continue;
            }
            publish(ir);
        }
        uint64_t now = mc__now_ns();
        uint64_t dl = ir->last_msg_ns + ir->pol.deadline_ns;
        uint64_t until = ir->b.desc.progress ? MC__MIN(dl, next_report) : dl;
        mc__iso_msg m;
        int e = wait_event(ir, &m, until > now ? until - now : 0);
        now = mc__now_ns();
        if (e == 2) {
            mc__iso_msg c;
            mc__iso_msg_init(&c, MC__ISO_CANCEL);
            mc__iso_send(ir->sock, &c, -1);
            ir->cancel_sent = true;
            ir->last_msg_ns = now;
        } else if (e < 0) {
            if ((result = restart(ir, MC__ISO_CAUSE_DIED, MC_OK, "", now)) != MC_OK) break;
        } else if (e == 0) {
            if (now >= dl && (result = restart(ir, MC__ISO_CAUSE_HUNG, MC_OK, "", now)) != MC_OK) break;
        } else {
            ir->last_msg_ns = now;
            if (m.type == MC__ISO_PROGRESS) {
                ir->cur = m.u.rstats;
                if (m.a > ir->high) ir->high = m.a;
                /* Progress is a new iteration reached, not a new checkpoint. */
                if (m.a > ir->fail_high) ir->in_a_row = 0;
                if (m.a > ir->worker_iter) ir->progress_ns = now;
                if (m.a > ir->worker_iter) ir->worker_iter = m.a;
                if (m.a > ir->restored_iter) mc__iso_clock_progress(&ir->clock, &ir->ist, now);
            } else if (m.type == MC__ISO_TRACE) {
                mc__trace_import((int)ir->pid, m.text, m.a);
            } else if (m.type == MC__ISO_CHECKPOINT) {
                if (m.a > ir->restored_iter) ir->in_a_row = 0;
                if (m.a > ir->high) ir->high = m.a;
            } else if (m.type == MC__ISO_FINISHED) {
                ir->cur = m.u.rstats;
                ir->final_iter = m.a;
                ir->have_final = true;
                if (m.a > ir->high) ir->high = m.a;
                ir->stopped_early = m.u.rstats.stopped_early;
                ir->cancelled = m.status == MC_ERR_CANCELLED;
                result = (mc_status)m.status;
                snprintf(final_text, sizeof final_text, "%s", m.text);
                /* It tears down and exits; a little patience, then the end. */
                end_worker(ir, false, (double)ir->pol.deadline_ns / 1e6, NULL);
                break;
            } else if (m.type == MC__ISO_ERROR) {
                ir->cur = m.u.rstats;
                mc_status st = (mc_status)m.status;
                if (!mc__iso_restartable(st)) {
                    end_worker(ir, false, (double)ir->pol.deadline_ns / 1e6, NULL);
                    ir->last_failure = st;
                    uint32_t ck = atomic_load(&ir->sh->ckpt);
                    ir->final_iter = ck ? ir->sh->ckpt_iter[ck - 1] : 0;
                    ir->have_final = true;
                    result = mc__fail(st, "runner '%s' (in its worker): %s", ir->b.label,
                                      mc__iso_unprefixed(m.text, "runner", ir->b.label));
                    break;
                }
                if ((result = restart(ir, MC__ISO_CAUSE_ERROR, st, m.text, m.t_ns)) != MC_OK) break;
            }
        }
        if (ir->b.desc.progress && mc__now_ns() >= next_report) {
            publish(ir);
            mc__runner_report(&ir->b, ir->high, false);
            next_report = mc__now_ns() + progress_ns;
        }
    }
    if (result != MC_OK && !ir->have_final) {
        uint32_t ck = atomic_load(&ir->sh->ckpt);
        ir->final_iter = ck ? ir->sh->ckpt_iter[ck - 1] : 0;
        ir->have_final = true;
    }
    if (result == MC_OK) warn_unfired(ir);
    char why[MC__ISO_TEXT_MAX + 128];
    snprintf(why, sizeof why, "%s", result == MC_ERR_CANCELLED && final_text[0] ? final_text : mc_last_error());
    publish(ir);
    mc__runner_report(&ir->b, ir->high, true);
    if (result == MC_OK) mc__clear_error();
    else mc__fail(result, "%s", why);
    return result;
}

static void iso_wake(mc_runner *base)
{
    mc__iso_wake_signal(as_iso(base)->wake);
}

static mc_status iso_state_read(mc_runner *base, uint32_t index, void *dst, size_t len)
{
    iso_runner *ir = as_iso(base);
    const layout *l = &ir->lay;
    uint32_t ck = atomic_load(&ir->sh->ckpt);
    if (!atomic_load(&ir->b.ran) || ir->pid > 0 || !ck)
        return mc__fail(MC_ERR_INVALID_STATE,
                        "mc_runner_state_read: the state of isolated runner '%s' is in its worker until the run ends",
                        ir->b.label);
    memcpy(dst, ir->area + (size_t)(ck - 1) * l->copy_size + l->offs[index], len);
    return MC_OK;
}

static mc_device *iso_device(const mc_runner *base)
{
    (void)base;
    return NULL; /* this process has none */
}

static void iso_destroy(mc_runner *base)
{
    iso_runner *ir = as_iso(base);
    if (ir->pid > 0) {
        /* A worker waiting for GO goes quietly; one that runs is ended. */
        if (!ir->go_sent) {
            mc__iso_msg m;
            mc__iso_msg_init(&m, MC__ISO_QUIT);
            mc__iso_send(ir->sock, &m, -1);
            end_worker(ir, false, (double)ir->pol.deadline_ns / 1e6, NULL);
        } else {
            end_worker(ir, true, 0, NULL);
        }
    }
    mc__iso_launcher_stop(&ir->launcher);
    if (ir->area_fd >= 0) close(ir->area_fd);
    mc__shm_unmap(ir->area, ir->lay.area_size);
    mc__shm_unmap(ir->sh, sizeof *ir->sh);
    mc__iso_wake_close(ir->wake);
    mc__iso_policy_free(&ir->pol);
}

const mc__runner_ops mc__runner_isolated_ops = {
    .kind = "isolated",
    .size = sizeof(iso_runner),
    .init = iso_init,
    .run = iso_run,
    .wake = iso_wake,
    .restore = iso_restore,
    .state_read = iso_state_read,
    .device = iso_device,
    .destroy = iso_destroy,
    .isolated = true,
};
