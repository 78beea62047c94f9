/*
 * DOC: The local runner
 *
 * Turns one long computation (a step kernel applied many times to some
 * state buffers) into a stream of command buffers ("chunks") that never
 * come near the device's execution-time limit, and survives the errors a
 * GPU reports. Metal has no persistent kernels and no way to raise its
 * watchdog (F145, F151, F696): the only way is bounded chunks re-dispatched
 * from the CPU (F152). This is the runner's local back end (runner.c is
 * the front end; runner_device.c makes what it keeps on the device). What
 * this file owns:
 *
 *  - sizing: a chunk holds D dispatches, D from the measured device time
 *    per dispatch (an EMA that follows increases at once): start at 1,
 *    at most double per measured chunk, never above budget / time nor above
 *    the hard cap / time; halved after a timeout or a fault;
 *  - feeding: in_flight chunks are queued at once so the device never idles
 *    or powers down between them (F135); each ends by signalling the
 *    runner's timeline event with its own value, and the CPU sleeps on that
 *    event for the oldest value (F692), never on each command buffer. A
 *    failed chunk never signals, so its completion callback signals its
 *    value from the CPU instead; cancel raises the event past every value;
 *  - stopping on the device: with a control slot every dispatch reads its
 *    grid from the runner's control buffer (F148), which the kernel zeroes
 *    to stop; queued dispatches then run empty grids. Each chunk copies the
 *    control block into its own snapshot slot, which the CPU reads once the
 *    chunk signalled, so it never reads memory the device may be writing;
 *  - checkpoints: every checkpoint_ms a chunk also copies the state buffers
 *    into one of two host-visible slots (A/B, so a checkpoint in flight
 *    never overwrites one not yet read); when that chunk completes the slot
 *    is copied into host memory, which survives losing the device;
 *  - recovery (F681, F687, F695): drain the queue, find the first real
 *    failure (later ones are its victims), recreate the queue, or for a lost
 *    device tear the binding down, reopen the device of the same kind and
 *    index and call setup again; restore the last checkpoint and replay.
 *    Access revoked waits first, with a bounded exponential back-off (F146,
 *    F685). Failures in a row that get no checkpoint past the point of the
 *    previous failure are counted; past max_recoveries the run stops with
 *    the cause and the last good iteration. With MC_RUNNER_NO_REOPEN a
 *    lost device ends the run instead (its process is replaced);
 *  - resuming: restore puts a saved state and iteration back before the
 *    run; every checkpoint taken goes to the front end, which hands it to
 *    on_checkpoint and writes checkpoint_dir's files. With those the
 *    isolated back end (runner_isolated.c) keeps a run alive across worker
 *    processes, each of which runs a local runner.
 */
#include "runtime/runner_local.h"
#include "engine/trace.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Defaults; docs/RUNNER.md explains each number. */
#define DEFAULT_BUDGET_MS 25.0
#define DEFAULT_CAP_MS 500.0
#define DEFAULT_IN_FLIGHT 3u
#define DEFAULT_CHECKPOINT_MS 1000.0
#define DEFAULT_MAX_RECOVERIES 8u
#define DEFAULT_BACKOFF_MS 100.0
#define DEFAULT_BACKOFF_MAX_MS 5000.0
#define DEFAULT_PROGRESS_MS 100.0
/* Dispatches per chunk at most: bounds the memory one chunk records. */
#define MAX_DISPATCHES 16384u
/* The CPU re-checks its chunks at least this often, in case a device
 * cannot deliver the wake-up of a failed chunk. */
#define WAIT_SLICE_NS 100000000ull
/* A single dispatch longer than this holds the GPU past the firmware's
 * preemption window (40-50 ms, F688, F696): worth a warning. */
#define LONG_DISPATCH_NS 40000000.0
/* ---- small helpers ------------------------------------------------------ */

static local_runner *as_local(const mc_runner *r)
{
    return (local_runner *)(uintptr_t)r;
}

static double ms(uint64_t ns)
{
    return (double)ns / 1e6;
}

static void publish(local_runner *r)
{
    r->st.chunk_ms_mean = r->st.chunks ? r->chunk_ns_sum / 1e6 / (double)r->st.chunks : 0;
    r->st.gap_us_mean = r->ngaps ? r->gap_ns_sum / 1e3 / (double)r->ngaps : 0;
    mc__runner_publish(&r->b, &r->st, NULL);
}

/* ---- checkpoints -------------------------------------------------------- */

static mc_status read_state_into_host(local_runner *r, uint64_t iteration)
{
    int spare = 1 - r->host_cur;
    for (uint32_t i = 0; i < r->b.nstate; i++) {
        mc_status s = mc_buffer_read(r->bind.state[i], 0, r->host[spare][i], r->b.state_size[i]);
        if (s != MC_OK) return s;
    }
    r->host_cur = spare;
    r->host_iter = iteration;
    return MC_OK;
}

/* Puts the last good state back on the device and resumes from it. */
static mc_status restore(local_runner *r)
{
    for (uint32_t i = 0; i < r->b.nstate; i++) {
        mc_status s = mc_buffer_write(r->bind.state[i], 0, r->host[r->host_cur][i], r->b.state_size[i]);
        if (s != MC_OK) return s;
    }
    mc_status s = mc__lr_reset_control(r);
    if (s != MC_OK) return s;
    r->next_iter = r->host_iter;
    r->stopped = false;
    r->have_prev = false;
    r->ckpt_busy[0] = r->ckpt_busy[1] = false;
    return MC_OK;
}

/* ---- chunks ------------------------------------------------------------ */

static void wake_runner(void *user, mc_cmdbuf *cb)
{
    wake_note *n = user;
    if (mc_cmdbuf_status(cb, NULL) != MC_OK) {
        /* A failed chunk never reaches its signal: wake the runner with
         * the value it waits for. Values only move forward; a value
         * already passed (cancel) is left alone. */
        uint64_t cur = 0;
        if (mc_event_get_value(n->event, &cur) == MC_OK && cur < n->value) mc_event_signal(n->event, n->value);
    }
    mc_event_release(n->event);
    free(n);
}

static uint32_t unretired(const local_runner *r)
{
    uint32_t n = 0;
    for (uint32_t i = 0; i < r->nlist; i++) n += !r->list[i].retired;
    return n;
}

static bool all_submitted(const local_runner *r)
{
    return r->stopped || (r->b.desc.total_iterations && r->next_iter >= r->b.desc.total_iterations);
}

static mc_status record_chunk(local_runner *r, chunk *c, mc_cmdbuf *cb)
{
    const mc_runner_desc *d = &r->b.desc;
    const mc_runner_binding *b = &r->bind;
    char label[160];
    snprintf(label, sizeof label, "%s step", r->b.label);
    mc_pass *p;
    mc_status s = mc_cmdbuf_begin_pass(cb, label, &p);
    if (s == MC_OK) s = mc_pass_set_pipeline(p, b->pipeline);
    for (uint32_t i = 0; i < MC_MAX_BUFFER_ARGS && s == MC_OK; i++) {
        const mc_runner_arg *a = &b->args[i];
        if (a->kind == MC_RUNNER_ARG_BUFFER) s = mc_pass_set_buffer(p, i, a->buffer, a->offset);
        else if (a->kind == MC_RUNNER_ARG_BYTES) s = mc_pass_set_bytes(p, i, r->bytes[i], a->len);
    }
    for (uint32_t i = 0; i < MC_MAX_THREADGROUP_MEMORY_ARGS && s == MC_OK; i++)
        if (b->threadgroup_memory[i]) s = mc_pass_set_threadgroup_memory(p, i, b->threadgroup_memory[i]);
    if (s == MC_OK && d->control_arg >= 0) s = mc_pass_set_buffer(p, (uint32_t)d->control_arg, r->control, 0);
    uint64_t it = c->first, end = c->first + c->iters;
    for (uint32_t j = 0; j < c->dispatches && s == MC_OK; j++) {
        mc_runner_iteration arg = {it, (uint32_t)MC__MIN((uint64_t)d->iterations_per_dispatch, end - it), 0};
        /* Each step sees the whole result of the one before. */
        if (j) s = mc_pass_barrier(p);
        if (s == MC_OK && d->iteration_arg >= 0) s = mc_pass_set_bytes(p, (uint32_t)d->iteration_arg, &arg, sizeof arg);
        if (s != MC_OK) break;
        if (r->control) s = mc_pass_dispatch_indirect(p, r->control, 0, d->threads_per_threadgroup);
        else s = mc_pass_dispatch(p, d->threadgroups, d->threads_per_threadgroup);
        it += arg.count;
    }
    if (s == MC_OK) s = mc_pass_end(p);
    if (s == MC_OK && r->control)
        s = mc_cmdbuf_copy_buffer(cb, r->control, 0, r->snaps, (size_t)c->snap * SNAP_STRIDE,
                                  sizeof(mc_runner_control));
    for (uint32_t i = 0; i < r->b.nstate && s == MC_OK && c->ckpt_slot >= 0; i++)
        s = mc_cmdbuf_copy_buffer(cb, b->state[i], 0, r->ckpt[c->ckpt_slot][i], 0, r->b.state_size[i]);
    if (s == MC_OK) s = mc_cmdbuf_signal_event(cb, r->timeline, c->value);
    return s;
}

/* Records and commits the next chunk. A commit refused because the queue
 * or device already failed returns that error (the failure is handled when
 * the chunk in front of it is looked at). */
static mc_status submit_chunk(local_runner *r)
{
    const mc_runner_desc *d = &r->b.desc;
    uint64_t ipd = d->iterations_per_dispatch;
    uint64_t left = d->total_iterations ? d->total_iterations - r->next_iter : UINT64_MAX;
    uint64_t need = left == UINT64_MAX ? UINT64_MAX : (left + ipd - 1) / ipd;
    chunk c;
    memset(&c, 0, sizeof c);
    c.dispatches = (uint32_t)MC__MIN((uint64_t)r->cur_d, need);
    c.first = r->next_iter;
    c.iters = MC__MIN((uint64_t)c.dispatches * ipd, left);
    c.value = r->next_value;
    c.number = r->next_number;
    c.snap = (uint32_t)(c.value % (d->in_flight + 1));
    c.ckpt_slot = -1;
    uint64_t now = mc__now_ns();
    bool due =
        (double)(now - r->last_ckpt_ns) >= r->checkpoint_ns || (r->force_ckpt && c.first + c.iters > r->fail_point);
    if (due) {
        int slot = !r->ckpt_busy[0] ? 0 : !r->ckpt_busy[1] ? 1 : -1;
        if (slot >= 0) {
            c.ckpt_slot = slot;
            r->ckpt_busy[slot] = true;
            r->last_ckpt_ns = now;
            r->force_ckpt = false;
        }
    }

    char label[160];
    snprintf(label, sizeof label, "%s chunk %llu", r->b.label, (unsigned long long)c.number);
    mc_cmdbuf_desc cd = {label, MC_CMDBUF_TIMESTAMPS};
    mc_cmdbuf *cb;
    mc_status s = mc_cmdbuf_create(r->queue, &cd, &cb);
    if (s != MC_OK) goto undo;
    s = record_chunk(r, &c, cb);
    wake_note *n = s == MC_OK ? mc__malloc(sizeof *n) : NULL;
    if (n) {
        n->event = r->timeline;
        n->value = c.value;
        mc_event_retain(n->event);
        if (mc_cmdbuf_on_completed(cb, wake_runner, n) != MC_OK) {
            mc_event_release(n->event);
            free(n);
            n = NULL;
        }
    }
    if (s == MC_OK) s = mc_cmdbuf_commit(cb);
    if (s != MC_OK) {
        /* never committed, or refused at commit: the callback never runs */
        if (n) {
            mc_event_release(n->event);
            free(n);
        }
        mc_cmdbuf_release(cb);
        goto undo;
    }
    if (r->nlist == r->list_cap) {
        uint32_t cap = r->list_cap ? r->list_cap * 2 : 16;
        chunk *l = mc__realloc(r->list, cap * sizeof *l);
        if (!l) {
            /* keep it anyway: wait for it now rather than lose track of it */
            mc_cmdbuf_wait(cb, MC_WAIT_FOREVER);
            mc_cmdbuf_release(cb);
            return mc__fail(MC_ERR_NO_MEMORY, "runner '%s': out of host memory", r->b.label);
        }
        r->list = l;
        r->list_cap = cap;
    }
    c.cb = cb;
    r->list[r->nlist++] = c;
    r->next_value++;
    r->next_number++;
    r->next_iter += c.iters;
    r->st.chunks_submitted++;
    return MC_OK;
undo:
    if (c.ckpt_slot >= 0) {
        r->ckpt_busy[c.ckpt_slot] = false;
        r->force_ckpt = true; /* take it in the next chunk */
    }
    return s;
}

/* True once cb's outcome is final (*status). The state turns COMPLETED a
 * moment before the outcome and the timestamps can be read. */
static bool finished(const mc_cmdbuf *cb, mc_status *status)
{
    mc_cmdbuf_state st = mc_cmdbuf_get_state(cb);
    if (st != MC_CMDBUF_COMPLETED && st != MC_CMDBUF_ERROR) return false;
    const char *msg;
    *status = mc_cmdbuf_status(cb, &msg);
    return *status != MC_ERR_INVALID_STATE;
}

/* The chunk's work is done: count it, and see whether the kernel stopped. */
static void retire(local_runner *r, uint32_t idx)
{
    chunk *c = &r->list[idx];
    if (c->retired) return;
    c->retired = true;
    uint64_t end = c->first + c->iters;
    if (r->snaps) {
        mc_runner_control ctl;
        if (mc_buffer_read(r->snaps, (size_t)c->snap * SNAP_STRIDE, &ctl, sizeof ctl) == MC_OK &&
            (ctl.stopped || ctl.groups[0] == 0)) {
            c->stopped = true;
            c->stop_iteration = MC__MIN(ctl.stop_iteration, end);
            end = c->stop_iteration;
            if (!r->stopped) {
                r->stopped = true;
                r->stop_iteration = c->stop_iteration;
                r->st.stopped_early = true;
                r->st.chunks_after_stop += r->nlist - idx - 1;
            }
        }
    }
    if (end > r->high) r->high = end;
}

/* A checkpoint chunk completed: its slot becomes the last good state. A
 * checkpoint past the point of the last failure is progress. */
static void take_checkpoint(local_runner *r, const chunk *c)
{
    int spare = 1 - r->host_cur;
    for (uint32_t i = 0; i < r->b.nstate; i++)
        if (mc_buffer_read(r->ckpt[c->ckpt_slot][i], 0, r->host[spare][i], r->b.state_size[i]) != MC_OK) return;
    r->host_cur = spare;
    r->host_iter = c->first + c->iters;
    r->st.checkpoints++;
    r->st.checkpoint_iteration = r->host_iter;
    if (MC__TRACING())
        mc__trace_instant("runner", r->b.label, "runner", "checkpoint", 0, NULL,
                          MC__TARGS({"iteration", r->host_iter}));
    if (r->host_iter > r->fail_point) r->in_a_row = 0;
    if (mc__runner_checkpoint_taken(&r->b, r->host_iter, (const void *const *)r->host[r->host_cur]))
        r->st.checkpoints_written++;
}

/* Figures of a completed chunk, the next chunk's size, its checkpoint. */
static void harvest(local_runner *r, chunk *c)
{
    uint64_t t0 = 0, t1 = 0;
    bool timed = mc_cmdbuf_get_gpu_time(c->cb, &t0, &t1) == MC_OK && t0 && t1 >= t0;
    double t = timed ? (double)(t1 - t0) : 0;
    if (MC__TRACING())
        mc__trace_span("runner", r->b.label, "runner", "chunk", 0, t0, t1, mc_status_name(MC_OK),
                       MC__TARGS({"chunk", c->number}, {"first", c->first}, {"iters", c->iters},
                                 {"dispatches", c->dispatches}, {"stopped", c->stopped}));
    r->st.chunks++;
    r->st.dispatches += c->dispatches;
    r->chunk_ns_sum += t;
    if (t / 1e6 > r->st.chunk_ms_max) r->st.chunk_ms_max = t / 1e6;
    if (timed && r->have_prev && t0 >= r->prev_end_ns) {
        double gap = (double)(t0 - r->prev_end_ns);
        r->gap_ns_sum += gap;
        r->ngaps++;
        if (gap / 1e3 > r->st.gap_us_max) r->st.gap_us_max = gap / 1e3;
    }
    if (mc__log_enabled(MC_LOG_DEBUG))
        mc__log(MC_LOG_DEBUG, "runner.chunk", "runner '%s': chunk %llu: %u dispatches, %.3f ms, idle before %.1f us",
                r->b.label, (unsigned long long)c->number, c->dispatches, t / 1e6,
                r->have_prev && t0 >= r->prev_end_ns ? (double)(t0 - r->prev_end_ns) / 1e3 : 0.0);
    r->prev_end_ns = t1;
    r->have_prev = timed;
    r->revoked_in_a_row = 0;

    /* Sizing: an EMA of the time per dispatch that follows increases at
     * once; the next chunk at most doubles this one and stays inside the
     * budget and the hard cap. Chunks after a stop ran empty: no sample. */
    if (c->dispatches && t > 0 && !c->stopped) {
        double per = t / c->dispatches;
        if (per > LONG_DISPATCH_NS && !r->warned_long) {
            r->warned_long = true;
            mc__log(MC_LOG_WARN, "runner.long_dispatch",
                    "runner '%s': one dispatch takes %.1f ms; a GPU preempts within 40-50 ms, keep dispatches shorter",
                    r->b.label, per / 1e6);
        }
        r->est_ns = r->est_ns <= 0 || per > r->est_ns ? per : 0.75 * r->est_ns + 0.25 * per;
        double fit = r->budget_ns / r->est_ns;
        double next = MC__MIN(2.0 * c->dispatches, fit);
        next = MC__MIN(next, (double)MAX_DISPATCHES);
        r->cur_d = next < 1 ? 1 : (uint32_t)next;
    }
    if (c->ckpt_slot >= 0) {
        if (!c->stopped) take_checkpoint(r, c);
        r->ckpt_busy[c->ckpt_slot] = false;
    }
    mc_cmdbuf_release(c->cb);
    c->cb = NULL;
}

static void pop_front(local_runner *r)
{
    memmove(r->list, r->list + 1, (size_t)(r->nlist - 1) * sizeof *r->list);
    r->nlist--;
}

/* Waits for every chunk in flight and settles each: the ones that
 * completed count (and may checkpoint); the first failure is returned with
 * its chunk; the rest are its victims. */
typedef struct failure {
    mc_status status;
    char message[256];
    uint64_t number, first, iters;
    uint32_t dispatches;
    double gpu_ns;
} failure;

static void settle_all(local_runner *r, failure *f)
{
    if (r->queue) mc_queue_wait_idle(r->queue, MC_WAIT_FOREVER);
    for (uint32_t i = 0; i < r->nlist; i++) {
        chunk *c = &r->list[i];
        const char *msg = NULL;
        mc_status s = mc_cmdbuf_status(c->cb, &msg);
        if (s == MC_OK && f->status == MC_OK) {
            retire(r, i);
            harvest(r, c);
            continue;
        }
        if (f->status == MC_OK && s != MC_OK) {
            f->status = s;
            snprintf(f->message, sizeof f->message, "%s", msg ? msg : "");
            f->number = c->number;
            f->first = c->first;
            f->iters = c->iters;
            f->dispatches = c->dispatches;
            uint64_t t0 = 0, t1 = 0;
            mc_cmdbuf_get_gpu_time(c->cb, &t0, &t1);
            f->gpu_ns = t1 > t0 ? (double)(t1 - t0) : 0;
        }
        if (MC__TRACING()) {
            uint64_t t0 = 0, t1 = 0;
            mc_cmdbuf_get_gpu_time(c->cb, &t0, &t1);
            mc__trace_span("runner", r->b.label, "runner", "chunk", 0, t0, t1, mc_status_name(s),
                           MC__TARGS({"chunk", c->number}, {"first", c->first}, {"iters", c->iters},
                                     {"dispatches", c->dispatches}, {"replayed", 1}));
        }
        if (c->ckpt_slot >= 0) r->ckpt_busy[c->ckpt_slot] = false;
        mc_cmdbuf_release(c->cb);
    }
    r->nlist = 0;
}

/* ---- recovery ----------------------------------------------------------- */

static bool recoverable(mc_status s)
{
    /* Refused work or a broken resource fails the same way every time. */
    return mc_status_is_device_error(s) && s != MC_ERR_NOT_PERMITTED && s != MC_ERR_INVALID_RESOURCE;
}

static void count_kind(local_runner *r, mc_status s)
{
    switch (s) {
    case MC_ERR_TIMEOUT: r->st.timeouts++; break;
    case MC_ERR_PAGE_FAULT: r->st.page_faults++; break;
    case MC_ERR_ACCESS_REVOKED: r->st.access_revoked++; break;
    case MC_ERR_DEVICE_LOST: r->st.devices_lost++; break;
    case MC_ERR_INTERNAL: r->st.internal_errors++; break;
    case MC_ERR_PRIOR_ERROR: r->st.victims++; break;
    default: r->st.other_errors++; break;
    }
}

/* Sleeps up to ms, or less if cancelled. */
static void backoff(local_runner *r, double delay_ms)
{
    uint64_t t0 = mc__now_ns();
    uint64_t until = t0 + (uint64_t)(delay_ms * 1e6);
    pthread_mutex_lock(&r->mu);
    while (!atomic_load(&r->b.cancel) && mc__cond_wait_until(&r->cv, &r->mu, until)) {
    }
    pthread_mutex_unlock(&r->mu);
    r->st.backoff_ms += ms(mc__now_ns() - t0);
}

static double backoff_delay(const local_runner *r, uint32_t n)
{
    double d = r->b.desc.backoff_initial_ms;
    for (uint32_t i = 1; i < n && d < r->b.desc.backoff_max_ms; i++) d *= 2;
    return MC__MIN(d, r->b.desc.backoff_max_ms);
}

/* Recreates what the failure broke and puts the last good state back. */
static mc_status rebuild(local_runner *r, bool device_lost)
{
    if (device_lost || !r->dev) {
        mc__lr_drop_device(r);
    } else {
        mc_queue_release(r->queue); /* the only recovery for a queue (F687) */
        r->queue = NULL;
    }
    mc_status s = MC_OK;
    if (!r->dev) s = mc__lr_open_device(r);
    if (s == MC_OK && !r->bound) s = mc__lr_bind(r);
    if (s == MC_OK) s = mc__lr_make_objects(r);
    if (s == MC_OK) s = restore(r);
    return s;
}

static mc_status cancelled(local_runner *r)
{
    r->st.cancelled = true;
    r->st.iterations = r->high;
    return mc__fail(MC_ERR_CANCELLED, "runner '%s': cancelled at iteration %llu", r->b.label,
                    (unsigned long long)r->high);
}

static mc_status give_up(local_runner *r, const failure *f, const char *why)
{
    if (MC__TRACING())
        mc__trace_instant("runner", r->b.label, "runner", "gave up", 0, mc_status_name(f->status),
                          MC__TARGS({"chunk", f->number}, {"checkpoint", r->host_iter}));
    /* Leave the last good state on the device, if there is one. */
    if (!mc__lr_lost(r) && r->bound && r->queue) restore(r);
    r->st.iterations = r->host_iter;
    return mc__fail(f->status,
                    "runner '%s': %s; the last: %s in chunk %llu (iterations %llu to %llu): %s; last good iteration "
                    "%llu (checkpoint), furthest reached %llu",
                    r->b.label, why, mc_status_name(f->status), (unsigned long long)f->number,
                    (unsigned long long)f->first, (unsigned long long)(f->first + f->iters),
                    f->message[0] ? f->message : mc_status_text(f->status), (unsigned long long)r->host_iter,
                    (unsigned long long)r->high);
}

/* A chunk failed (or a commit was refused with f->status): settle every
 * chunk, decide, rebuild and restore. MC_OK to go on from the checkpoint. */
static mc_status recover(local_runner *r, failure *commit_error)
{
    failure f;
    memset(&f, 0, sizeof f);
    settle_all(r, &f);
    if (f.status == MC_OK) {
        f = *commit_error; /* no chunk failed: the refused commit is the failure */
        f.first = r->next_iter;
    }
    bool device_lost = f.status == MC_ERR_DEVICE_LOST || mc__lr_lost(r);
    if (f.status == MC_OK) return MC_OK;          /* nothing failed after all */
    if (r->stopped && !device_lost) return MC_OK; /* behind the stop: the final state is intact */

    r->st.last_failure = f.status;
    r->st.recoveries++;
    if (MC__TRACING())
        mc__trace_instant(
            "runner", r->b.label, "runner", "fault", 0, mc_status_name(f.status),
            MC__TARGS({"chunk", f.number}, {"first", f.first}, {"iters", f.iters}, {"checkpoint", r->host_iter}));
    count_kind(r, f.status);
    r->in_a_row++;
    r->fail_point = f.first;
    r->force_ckpt = true; /* progress shows as soon as a checkpoint passes the failure */
    if (!recoverable(f.status)) return give_up(r, &f, "the failure is not recoverable");
    if (device_lost && (r->b.desc.flags & MC_RUNNER_NO_REOPEN))
        return give_up(r, &f, "the device was lost and MC_RUNNER_NO_REOPEN is set");
    if (r->in_a_row > r->b.desc.max_recoveries) {
        char why[96];
        snprintf(why, sizeof why, "gave up after %u failures in a row without progress", r->in_a_row);
        return give_up(r, &f, why);
    }
    mc__log(MC_LOG_WARN, "runner.recovering",
            "runner '%s': %s in chunk %llu (iterations %llu to %llu): %s; replaying from iteration %llu", r->b.label,
            mc_status_name(f.status), (unsigned long long)f.number, (unsigned long long)f.first,
            (unsigned long long)(f.first + f.iters), f.message, (unsigned long long)r->host_iter);

    if (f.status == MC_ERR_ACCESS_REVOKED) {
        /* The system keeps us off the device for a while (F146, F685). */
        backoff(r, backoff_delay(r, ++r->revoked_in_a_row));
    } else if (f.dispatches) {
        /* Shorter chunks: a timeout says the chunk was too long; after a
         * fault, less work is lost if it comes again. */
        r->cur_d = MC__MAX(1u, f.dispatches / 2);
        if (f.status == MC_ERR_TIMEOUT && f.gpu_ns > 0 && f.gpu_ns / f.dispatches > r->est_ns)
            r->est_ns = f.gpu_ns / f.dispatches;
    }
    for (;;) {
        if (atomic_load(&r->b.cancel)) return cancelled(r);
        mc_status s = rebuild(r, device_lost);
        if (s == MC_OK && MC__TRACING())
            mc__trace_instant("runner", r->b.label, "runner", "recovery", 0, mc_status_name(f.status),
                              MC__TARGS({"chunk", f.number}, {"from", r->host_iter}, {"in_a_row", r->in_a_row},
                                        {"device_reopened", device_lost}));
        if (s == MC_OK) return MC_OK;
        /* Could not rebuild (the device is not back yet, setup failed):
         * that is one more failure; wait and try again. */
        f.status = s;
        snprintf(f.message, sizeof f.message, "rebuilding: %s", mc_last_error());
        r->in_a_row++;
        r->st.last_failure = s;
        if (r->in_a_row > r->b.desc.max_recoveries || (!mc_status_is_device_error(s) && s != MC_ERR_NOT_FOUND))
            return give_up(r, &f, "could not rebuild after the failure");
        device_lost = mc__lr_lost(r) || s == MC_ERR_DEVICE_LOST;
        if (device_lost && (r->b.desc.flags & MC_RUNNER_NO_REOPEN))
            return give_up(r, &f, "the device was lost while rebuilding and MC_RUNNER_NO_REOPEN is set");
        backoff(r, backoff_delay(r, r->in_a_row));
    }
}

/* ---- the run ------------------------------------------------------------ */

/* Settles what is in flight (stops, cancel, fatal errors). */
static void drain(local_runner *r)
{
    failure f;
    memset(&f, 0, sizeof f);
    settle_all(r, &f);
}

static chunk *oldest_unretired(local_runner *r)
{
    for (uint32_t i = 0; i < r->nlist; i++)
        if (!r->list[i].retired) return &r->list[i];
    return NULL;
}

static mc_status local_run(mc_runner *base)
{
    local_runner *r = as_local(base);
    mc_status s = MC_OK;
    if (atomic_load(&r->b.cancel)) {
        s = cancelled(r);
        goto out;
    }
    if (!r->dev || !r->bound) {
        s = mc__fail(MC_ERR_DEVICE_LOST, "runner '%s': no device", r->b.label);
        goto out;
    }
    if ((s = mc__lr_reset_control(r)) != MC_OK) goto out;
    r->next_iter = r->high = r->b.resume_iter;
    r->cur_d = 1;
    r->next_value = 1;
    r->next_number = 1;
    r->last_ckpt_ns = r->b.start_ns;
    uint64_t progress_ns = (uint64_t)(r->b.desc.progress_interval_ms * 1e6);
    uint64_t next_report = r->b.start_ns + progress_ns;

    for (;;) {
        failure fail;
        memset(&fail, 0, sizeof fail);
        bool failed = false;
        if (atomic_load(&r->b.cancel)) {
            drain(r);
            s = cancelled(r);
            break;
        }
        /* Chunks at the front that completed: figures, checkpoints. */
        while (r->nlist && r->list[0].retired) {
            mc_status cs;
            if (!finished(r->list[0].cb, &cs)) break;
            if (cs != MC_OK) {
                failed = true;
                break;
            }
            harvest(r, &r->list[0]);
            pop_front(r);
        }
        /* Keep in_flight chunks queued. */
        while (!failed && !all_submitted(r) && unretired(r) < r->b.desc.in_flight) {
            mc_status cs = submit_chunk(r);
            if (cs == MC_OK) continue;
            if (!mc_status_is_device_error(cs)) {
                char why[256];
                snprintf(why, sizeof why, "%s", mc_last_error());
                drain(r);
                s = mc__fail(cs, "runner '%s': cannot record chunk %llu: %s", r->b.label,
                             (unsigned long long)r->next_number, why);
                goto out;
            }
            failed = true;
            fail.status = cs;
            snprintf(fail.message, sizeof fail.message, "%s", mc_last_error());
        }
        if (!failed && !r->nlist) break; /* everything done */

        if (!failed) {
            /* Sleep until the oldest chunk signals (F692), a failed one's
             * callback signals for it, or cancel. */
            chunk *c = oldest_unretired(r);
            uint64_t timeout = WAIT_SLICE_NS, now = mc__now_ns();
            if (r->b.desc.progress) timeout = MC__MIN(timeout, next_report > now ? next_report - now : 0);
            if (c) mc_event_wait(r->timeline, c->value, timeout);
            else mc_cmdbuf_wait(r->list[0].cb, timeout); /* signalled, completing now */
            uint64_t v = 0;
            mc_event_get_value(r->timeline, &v);
            if (v >= r->next_value || atomic_load(&r->b.cancel)) continue; /* only cancel goes that far */
            for (uint32_t i = 0; i < r->nlist; i++) {
                chunk *k = &r->list[i];
                if (k->retired) continue;
                mc_cmdbuf_state cs = mc_cmdbuf_get_state(k->cb);
                if (cs == MC_CMDBUF_ERROR) {
                    failed = true;
                    break;
                }
                if (v < k->value && cs != MC_CMDBUF_COMPLETED) break;
                retire(r, i);
            }
        }
        if (failed && (s = recover(r, &fail)) != MC_OK) break;
        publish(r);
        if (r->b.desc.progress && mc__now_ns() >= next_report) {
            mc__runner_report(&r->b, r->high, false);
            next_report = mc__now_ns() + progress_ns;
        }
    }
    if (s == MC_OK) r->st.iterations = r->stopped ? r->stop_iteration : r->b.desc.total_iterations;
out:
    if (MC__TRACING())
        mc__trace_span("runner", r->b.label, "runner", "run", 0, r->b.start_ns, mc__now_ns(), mc_status_name(s),
                       MC__TARGS({"first", r->b.resume_iter}, {"iterations", r->st.iterations},
                                 {"chunks", r->st.chunks}, {"recoveries", r->st.recoveries}));
    publish(r);
    mc__runner_report(&r->b, r->high, true);
    return s;
}

/* ---- the back end's entries ---------------------------------------------- */

static mc_status local_init(mc_runner *base, const mc_device_info *info)
{
    local_runner *r = as_local(base);
    pthread_mutex_init(&r->mu, NULL);
    mc__cond_init_monotonic(&r->cv);
    r->dev = r->b.desc.device;
    mc_device_retain(r->dev);
    r->info = *info;

    /* Defaults (docs/RUNNER.md). */
    mc_runner_desc *d = &r->b.desc;
    if (!d->iterations_per_dispatch) d->iterations_per_dispatch = 1;
    if (d->iteration_arg <= 0) d->iteration_arg = -1; /* none: from here on, slots are >= 0 */
    if (d->control_arg <= 0) d->control_arg = -1;
    if (!d->in_flight) d->in_flight = DEFAULT_IN_FLIGHT;
    if (!d->checkpoint_ms) d->checkpoint_ms = DEFAULT_CHECKPOINT_MS;
    if (!d->max_recoveries) d->max_recoveries = DEFAULT_MAX_RECOVERIES;
    if (!d->backoff_initial_ms) d->backoff_initial_ms = DEFAULT_BACKOFF_MS;
    if (!d->backoff_max_ms) d->backoff_max_ms = DEFAULT_BACKOFF_MAX_MS;
    if (d->backoff_max_ms < d->backoff_initial_ms) d->backoff_max_ms = d->backoff_initial_ms;
    if (!d->progress_interval_ms) d->progress_interval_ms = DEFAULT_PROGRESS_MS;
    double limit_ms = ms(info->execution_time_limit_ns);
    if (!d->max_chunk_ms) d->max_chunk_ms = limit_ms > 0 ? MC__MIN(limit_ms / 10, DEFAULT_CAP_MS) : DEFAULT_CAP_MS;
    if (limit_ms > 0 && d->max_chunk_ms > limit_ms / 2) {
        /* The cap is a promise to stay far below the limit. */
        mc__log(MC_LOG_INFO, "runner.cap_clamped", "runner '%s': max_chunk_ms %.1f lowered to half the limit, %.1f",
                r->b.label, d->max_chunk_ms, limit_ms / 2);
        d->max_chunk_ms = limit_ms / 2;
    }
    if (!d->budget_ms) d->budget_ms = DEFAULT_BUDGET_MS;
    d->budget_ms = MC__MIN(d->budget_ms, d->max_chunk_ms);
    r->budget_ns = d->budget_ms * 1e6;
    r->cap_ns = d->max_chunk_ms * 1e6;
    r->checkpoint_ns = d->checkpoint_ms * 1e6;
    r->cur_d = 1;

    mc_status s = mc__lr_bind(r);
    if (s != MC_OK) return s;
    for (int k = 0; k < 2; k++)
        for (uint32_t i = 0; i < r->b.nstate; i++)
            if (!(r->host[k][i] = mc__malloc(r->b.state_size[i])))
                return mc__fail(MC_ERR_NO_MEMORY, "runner '%s': no host memory for a checkpoint of %zu bytes",
                                r->b.label, r->b.state_size[i]);
    if ((s = mc__lr_make_objects(r)) != MC_OK) return s;
    /* The state setup made is the checkpoint of iteration 0. Taken here,
     * with setup's own uploads, rather than on the run's clock; the other
     * host copy is touched now so the first checkpoint does not fault its
     * pages in while chunks wait. */
    if ((s = read_state_into_host(r, 0)) != MC_OK) return s;
    for (uint32_t i = 0; i < r->b.nstate; i++) memset(r->host[1 - r->host_cur][i], 0, r->b.state_size[i]);
    return MC_OK;
}

static mc_status local_restore(mc_runner *base, uint64_t iteration, const void *const *state)
{
    local_runner *r = as_local(base);
    if (!r->bound || mc__lr_lost(r)) return mc__fail(MC_ERR_DEVICE_LOST, "runner '%s': no device", r->b.label);
    for (uint32_t i = 0; i < r->b.nstate; i++) memcpy(r->host[r->host_cur][i], state[i], r->b.state_size[i]);
    r->host_iter = iteration;
    mc_status s = restore(r);
    if (s != MC_OK) return s;
    r->st.checkpoint_iteration = iteration;
    publish(r); /* before the run too, get_stats shows where it starts */
    return MC_OK;
}

static void local_wake(mc_runner *base)
{
    local_runner *r = as_local(base);
    pthread_mutex_lock(&r->mu);
    /* Past every value a chunk signals: the runner wakes at once. */
    if (r->timeline) mc_event_signal(r->timeline, UINT64_MAX);
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
}

static mc_status local_state_read(mc_runner *base, uint32_t index, void *dst, size_t len)
{
    local_runner *r = as_local(base);
    /* Without a device (it was lost and did not come back), the last
     * checkpoint is the state. */
    if (!r->bound || mc__lr_lost(r)) {
        memcpy(dst, r->host[r->host_cur][index], len);
        return MC_OK;
    }
    return mc_buffer_read(r->bind.state[index], 0, dst, len);
}

static mc_device *local_device(const mc_runner *base)
{
    return as_local(base)->dev;
}

static void local_destroy(mc_runner *base)
{
    local_runner *r = as_local(base);
    drain(r);
    mc__lr_unbind(r);
    mc__lr_drop_objects(r);
    mc_device_release(r->dev);
    for (int k = 0; k < 2; k++)
        for (uint32_t i = 0; i < MC_RUNNER_MAX_STATE; i++) free(r->host[k][i]);
    free(r->list);
    pthread_mutex_destroy(&r->mu);
    pthread_cond_destroy(&r->cv);
}

void mc__runner_checkpoint_past(mc_runner *base, uint64_t iteration)
{
    /* A new isolated worker: the run failed past `iteration` last time, so
     * the first chunk beyond it checkpoints, as recover() does in process. */
    local_runner *r = as_local(base);
    r->fail_point = iteration;
    r->force_ckpt = true;
}

const mc__runner_ops mc__runner_local_ops = {
    .kind = "local",
    .size = sizeof(local_runner),
    .init = local_init,
    .run = local_run,
    .wake = local_wake,
    .restore = local_restore,
    .state_read = local_state_read,
    .device = local_device,
    .destroy = local_destroy,
    .isolated = false,
};
