/*
 * DOC: CUDA queues: how submissions complete and report their outcome
 *
 * A queue is a non-blocking stream, a pinned page the GPU writes its
 * completion marker into, and a FIFO of records, one per submission
 * (cuda_submit.c enqueues the work and appends the record).
 *
 * Completion: a record is done when the marker the GPU wrote reaches the
 * record's. Whoever polls first completes the records at the head of the
 * FIFO, in order, exactly once: the thread in submission_wait() (no thread
 * hop for a waiter) or the device's completion thread (spins briefly after
 * work arrives, then sleeps with a growing interval; blocks when nothing is
 * in flight). Completion callbacks run with no lock held.
 *
 * Errors (F685-F687):
 *  - refused or failed at submit (bad launch configuration, out of memory,
 *    an injected fault): the passes before the failing one still run; the
 *    record completes after them with the error, the failing pass FAULTED
 *    and the rest PENDING; later submissions on the queue complete with
 *    MC_ERR_PRIOR_ERROR without running;
 *  - a sticky error (a kernel faulted): the context is dead for the process
 *    (on the H100 even a reset or a new context fails the same way), so the
 *    device is lost for good. A dead context never writes the marker again;
 *    every poller checks the stream with cuStreamQuery when the marker has
 *    not moved for a while, which returns the sticky error. Records already
 *    reached complete normally, the one in flight gets MC_ERR_DEVICE_LOST
 *    (pass states from the per-pass markers when MC_CUDA_PASS_MARKERS=1,
 *    else AFFECTED for the passes that may have run), and everything later
 *    MC_ERR_DEVICE_LOST with PENDING passes;
 *  - a device-lost injection loses the device the same way, except that
 *    the GPU is fine: work submitted before it still completes normally.
 */
#include "backends/cuda/cuda_be.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* how often a poller asks the driver whether a silent stream failed */
#define CHECK_NS 1000000ull
/* completion thread and waiters: longest sleep between polls */
#define THREAD_MAX_SLEEP_NS 1000000ull
#define WAITER_MAX_SLEEP_NS 100000ull

enum { V_WAIT = 0, V_DONE = 1, V_LOST_PENDING = 2, V_LOST = 3 };

/* ---- completion ----------------------------------------------------------- */

static int verdict(mc__cuda_device *dev, const mc__cuda_queue *q, const mc__cuda_rec *r)
{
    int lost = atomic_load(&dev->lost);
    if (mc__cuda_load_done(q) >= r->last_marker) {
        if (lost != MC__CUDA_ALIVE && r->ordinal > atomic_load(&dev->lost_ordinal)) return V_LOST_PENDING;
        return V_DONE;
    }
    return lost == MC__CUDA_LOST_DEAD ? V_LOST : V_WAIT;
}

static void fill_states(mc__submission *sub, uint32_t done_before, uint32_t fault, mc_pass_state rest)
{
    if (!sub->pass_state) return;
    for (uint32_t i = 0; i < sub->npass; i++)
        sub->pass_state[i] = i < done_before ? MC_PASS_COMPLETED : i == fault ? MC_PASS_FAULTED : rest;
}

/* Fills the outputs of r's submission and completes it (no lock held). */
static void finish(mc__cuda_device *dev, mc__cuda_queue *q, mc__cuda_rec *r, int v)
{
    mc__submission *sub = r->sub;
    mc_status st = MC_OK;
    const char *msg = "";
    char buf[256];
    if (v == V_DONE) {
        uint64_t failed = atomic_load(&q->fail_seq);
        uint64_t e =
            r->indirect ? __atomic_load_n((uint64_t *)((char *)q->block + MC__CUDA_BLOCK_ERR), __ATOMIC_ACQUIRE) : 0;
        if (r->preset != MC_OK) {
            st = r->preset;
            msg = r->msg;
            fill_states(sub, r->nran, r->fault_pass, MC_PASS_PENDING);
        } else if (failed && failed < r->sub_seq) {
            /* an earlier submission failed on the GPU after this one was queued */
            st = MC_ERR_PRIOR_ERROR;
            snprintf(buf, sizeof buf,
                     "command buffer #%llu on this queue failed while this one was queued; its passes ran but may "
                     "have used bad data",
                     (unsigned long long)failed);
            msg = buf;
            fill_states(sub, 0, MC__CUDA_NO_PASS, MC_PASS_AFFECTED);
        } else if (e && (e >> MC__CUDA_TAG_SHIFT) == (r->sub_seq & MC__CUDA_TAG_SEQ_MASK)) {
            uint32_t p = (uint32_t)(e & MC__CUDA_TAG_PASS_MASK);
            st = (sub->flags & MC__SUBMIT_VALIDATION) ? MC_ERR_VALIDATION : MC_ERR_INVALID_RESOURCE;
            snprintf(buf, sizeof buf,
                     "indirect dispatch in pass %u '%s': threadgroup counts exceed the limits (x <= %u, y and z <= "
                     "%u); it did not run",
                     p, p < sub->npass ? sub->passes[p].label : "?", MC_INDIRECT_MAX_GROUPS_X,
                     MC_INDIRECT_MAX_GROUPS_YZ);
            msg = buf;
            fill_states(sub, p, p, MC_PASS_AFFECTED);
            __atomic_store_n((uint64_t *)((char *)q->block + MC__CUDA_BLOCK_ERR), 0, __ATOMIC_RELEASE);
            mc__cuda_mark_failed(q, r);
        } else {
            fill_states(sub, sub->npass, MC__CUDA_NO_PASS, MC_PASS_COMPLETED);
        }
        if (r->nev >= 2) mc__cuda_compute_times(dev, q, r, sub);
    } else if (v == V_LOST_PENDING) {
        st = MC_ERR_DEVICE_LOST;
        msg = dev->lost_msg;
        fill_states(sub, 0, MC__CUDA_NO_PASS, MC_PASS_PENDING);
    } else { /* V_LOST: the context died before this one finished */
        st = MC_ERR_DEVICE_LOST;
        msg = dev->lost_msg;
        if (r->ran && !q->lost_head_seen) {
            /* In flight when the context died: passes behind a reached
             * marker are done; with markers the next one faulted (later
             * ones never started: the stream runs in order), without them
             * any pass that may have run is AFFECTED. */
            q->lost_head_seen = true;
            uint64_t done = mc__cuda_load_done(q);
            uint32_t k = 0;
            while (k < r->nmarkers && done >= r->first_marker + k) k++;
            bool exact = r->nmarkers > 0 || r->nran == 1;
            uint32_t limit = MC__MAX(r->nran, r->fault_pass == MC__CUDA_NO_PASS ? 0 : r->fault_pass + 1);
            for (uint32_t i = 0; i < sub->npass && sub->pass_state; i++) {
                mc_pass_state s;
                if (i < k) s = MC_PASS_COMPLETED;
                else if (i >= limit) s = MC_PASS_PENDING;
                else if (exact) s = i == k ? MC_PASS_FAULTED : MC_PASS_PENDING;
                else s = MC_PASS_AFFECTED;
                sub->pass_state[i] = s;
            }
        } else {
            fill_states(sub, 0, MC__CUDA_NO_PASS, MC_PASS_PENDING);
        }
    }
    sub->status = st;
    snprintf(sub->message, sizeof sub->message, "%s", msg);
    for (uint32_t i = 0; i < r->nev; i++) mc__cuda_ev_give(dev, q, r->ev[i]);
    r->nev = 0;
    if (r->ran && !r->scheduled && sub->scheduled) sub->scheduled(sub);
    r->scheduled = true;
    sub->complete(sub);
}

/* Completes the finished records at the head of q, in order; one thread at
 * a time (the others return at once). True if any completed. */
static bool reap(mc__cuda_device *dev, mc__cuda_queue *q)
{
    bool progress = false, entered = false;
    pthread_mutex_lock(&q->mu);
    if (q->reaping) {
        pthread_mutex_unlock(&q->mu);
        return false;
    }
    q->reaping = true;
    for (;;) {
        mc__cuda_rec *r = q->head;
        if (!r) break;
        pthread_mutex_unlock(&q->mu);
        int v = verdict(dev, q, r);
        if (v == V_WAIT) {
            /* at the head of the queue: its work is what the GPU runs now */
            if (r->ran && !r->scheduled) {
                r->scheduled = true;
                if (r->sub->scheduled) r->sub->scheduled(r->sub);
            }
            pthread_mutex_lock(&q->mu);
            break;
        }
        if (!entered && r->nev) entered = mc__cuda_enter(dev) == MC_OK;
        if (!entered && r->nev) {
            /* no context: the times are lost, the events stay with the record */
            r->nev = 0;
        }
        uint64_t seq = r->sub_seq;
        finish(dev, q, r, v);
        atomic_store(&q->completed_seq, seq);
        pthread_mutex_lock(&q->mu);
        q->head = r->next;
        if (!q->head) q->tail = NULL;
        atomic_store(&q->head_marker, q->head ? q->head->last_marker : UINT64_MAX);
        r->sub = NULL;
        if (r->done_ev) mc__cuda_done_give_locked(q, r->done_ev);
        r->done_ev = NULL;
        r->next = q->free_recs;
        q->free_recs = r;
        atomic_fetch_sub(&q->nrec, 1);
        atomic_fetch_sub(&dev->inflight, 1);
        progress = true;
    }
    q->reaping = false;
    pthread_mutex_unlock(&q->mu);
    if (entered) mc__cuda_leave(dev);
    return progress;
}

/* The marker has not moved for a while: ask the driver about the stream.
 * True if that changed something (the device is lost, or the marker was
 * moved by hand). */
static bool stall_check(mc__cuda_device *dev, mc__cuda_queue *q)
{
    uint64_t issued = atomic_load(&q->marker);
    if (mc__cuda_enter(dev) != MC_OK) return false;
    CUresult res = dev->cu->StreamQuery(q->stream);
    mc__cuda_leave(dev);
    if (res == CUDA_ERROR_NOT_READY) return false;
    if (res == CUDA_SUCCESS) {
        /* Everything enqueued before the query ran, markers included. */
        uint64_t cur = mc__cuda_load_done(q);
        if (cur >= issued) return false;
        if (!dev->done_events) /* with completion events nothing writes the marker: not a loss */
            mc__log(MC_LOG_WARN, "cuda.marker_lost", "cuda:%d: queue idle at marker %llu of %llu; moving it",
                    dev->index, (unsigned long long)cur, (unsigned long long)issued);
        while (cur < issued &&
               !__atomic_compare_exchange_n(q->done, &cur, issued, false, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
        }
        return true;
    }
    if (mc__cuda_is_sticky(res)) {
        mc__cuda_set_dead(dev, res, "a command on the device failed");
        return true;
    }
    return false;
}

/* MC_CUDA_DONE=event: the head record's completion event has fired; moves
 * the marker to the record's, as the GPU would have. True if it moved (or
 * the device was found dead). */
static bool done_by_event(mc__cuda_device *dev, mc__cuda_queue *q)
{
    if (mc__cuda_enter(dev) != MC_OK) return false;
    pthread_mutex_lock(&q->mu); /* the head record is not recycled meanwhile */
    mc__cuda_rec *r = q->head;
    uint64_t m = r ? r->last_marker : 0;
    CUresult res = r && r->done_ev ? dev->cu->EventQuery(r->done_ev) : CUDA_ERROR_NOT_READY;
    pthread_mutex_unlock(&q->mu);
    mc__cuda_leave(dev);
    if (res == CUDA_SUCCESS) {
        uint64_t cur = mc__cuda_load_done(q);
        while (cur < m && !__atomic_compare_exchange_n(q->done, &cur, m, false, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
        }
        return true;
    }
    if (res != CUDA_ERROR_NOT_READY && mc__cuda_is_sticky(res)) {
        mc__cuda_set_dead(dev, res, "a command on the device failed");
        return true;
    }
    return false;
}

/* Reaps q when its head is finished (checked without locks, so spinning
 * pollers do not contend with submitters) and, when it is stuck, checks
 * now and then whether the context died. True if anything completed. */
static bool queue_poll(mc__cuda_device *dev, mc__cuda_queue *q)
{
    if (atomic_load(&q->nrec) == 0) return false;
    if (mc__cuda_load_done(q) >= atomic_load(&q->head_marker) || atomic_load(&dev->lost) != MC__CUDA_ALIVE)
        return reap(dev, q);
    if (dev->done_events && done_by_event(dev, q)) return reap(dev, q);
    uint64_t now = mc__now_ns(), last = atomic_load(&q->last_check_ns);
    if (now - last >= CHECK_NS && atomic_compare_exchange_strong(&q->last_check_ns, &last, now) && stall_check(dev, q))
        return reap(dev, q);
    return false;
}

/* ---- queues ---------------------------------------------------------------- */

static void queue_free(mc__cuda_queue *q)
{
    mc__cuda_device *dev = q->dev;
    const mc__cuda_api *cu = dev->cu;
    bool ctx = mc__cuda_enter(dev) == MC_OK;
    if (ctx) mc__cuda_replay_free(q);
    mc__cuda_slots_free(q, ctx);
    if (ctx) {
        for (uint32_t i = 0; i < q->nevpool; i++) (void)cu->EventDestroy(q->evpool[i]);
        for (uint32_t i = 0; i < q->ndonepool; i++) (void)cu->EventDestroy(q->donepool[i]);
        if (q->anchor) (void)cu->EventDestroy(q->anchor);
        if (q->stream) (void)cu->StreamDestroy(q->stream);
        if (q->block) (void)cu->MemFreeHost(q->block);
        if (q->poke_area) (void)cu->MemFree(q->poke_area);
        mc__cuda_leave(dev);
    }
    while (q->free_recs) {
        mc__cuda_rec *r = q->free_recs;
        q->free_recs = r->next;
        free(r->ev);
        free(r);
    }
    free(q->evpool);
    free(q->donepool);
    free(q->params);
    free(q->staging);
    free(q->used);
    pthread_mutex_destroy(&q->submit_mu);
    pthread_mutex_destroy(&q->mu);
    free(q);
}

mc_status mc__cuda_queue_create(void *devp, const char *label, void **out)
{
    mc__cuda_device *dev = devp;
    const mc__cuda_api *cu = dev->cu;
    (void)label;
    *out = NULL;
    mc__cuda_queue *q = mc__calloc(1, sizeof *q);
    if (!q) return mc__fail(MC_ERR_NO_MEMORY, "cuda: out of memory");
    q->dev = dev;
    pthread_mutex_init(&q->submit_mu, NULL);
    pthread_mutex_init(&q->mu, NULL);
    q->staging = mc__malloc(MC__CUDA_MAX_PARAM_BYTES + 64);
    if (!q->staging) {
        queue_free(q);
        return mc__fail(MC_ERR_NO_MEMORY, "cuda: out of memory");
    }
    mc_status s = mc__cuda_enter(dev);
    if (s != MC_OK) {
        queue_free(q);
        return s;
    }
    CUresult r = cu->StreamCreate(&q->stream, CU_STREAM_NON_BLOCKING);
    if (r != CUDA_SUCCESS) {
        q->stream = NULL;
        s = mc__cuda_fail(dev, r, "cuStreamCreate");
    }
    if (s == MC_OK) {
        r = cu->MemHostAlloc(&q->block, MC__CUDA_BLOCK_BYTES, CU_MEMHOSTALLOC_DEVICEMAP | CU_MEMHOSTALLOC_PORTABLE);
        if (r != CUDA_SUCCESS) {
            q->block = NULL;
            s = mc__cuda_fail(dev, r, "cuMemHostAlloc (queue marker)");
        } else if ((r = cu->MemHostGetDevicePointer(&q->block_dptr, q->block, 0)) != CUDA_SUCCESS) {
            s = mc__cuda_fail(dev, r, "cuMemHostGetDevicePointer (queue marker)");
        }
    }
    if (s == MC_OK) {
        memset(q->block, 0, MC__CUDA_BLOCK_BYTES);
        q->done = (volatile uint64_t *)q->block;
        /* The timing anchor: an event whose host time is known. */
        if (cu->EventCreate(&q->anchor, CU_EVENT_DEFAULT) != CUDA_SUCCESS) q->anchor = NULL;
        if (q->anchor && cu->EventRecord(q->anchor, q->stream) != CUDA_SUCCESS) {
            (void)cu->EventDestroy(q->anchor);
            q->anchor = NULL;
        }
        q->anchor_ns = mc__now_ns();
        q->timing = q->anchor != NULL;
    }
    mc__cuda_leave(dev);
    if (s != MC_OK) {
        queue_free(q);
        return s;
    }
    atomic_store(&q->head_marker, UINT64_MAX);
    pthread_mutex_lock(&dev->mu);
    q->next = dev->queues;
    dev->queues = q;
    atomic_fetch_add(&dev->queues_gen, 1);
    pthread_mutex_unlock(&dev->mu);
    *out = q;
    return MC_OK;
}

/* Under dev->mu. True if the caller must free q (after unlocking). */
static bool unpin_locked(mc__cuda_queue *q)
{
    return --q->pins == 0 && q->destroyed;
}

void mc__cuda_queue_destroy(void *devp, void *qp)
{
    mc__cuda_device *dev = devp;
    mc__cuda_queue *q = qp;
    if (!q) return;
    pthread_mutex_lock(&dev->mu);
    for (mc__cuda_queue **pp = &dev->queues; *pp; pp = &(*pp)->next) {
        if (*pp == q) {
            *pp = q->next;
            break;
        }
    }
    q->destroyed = true;
    atomic_fetch_add(&dev->queues_gen, 1); /* the completion thread lets go of it */
    bool now = q->pins == 0;               /* else the last thread polling it frees it */
    pthread_mutex_unlock(&dev->mu);
    if (now) queue_free(q);
}

mc_status mc__cuda_submission_wait(void *devp, void *qp, mc__submission *sub, uint64_t timeout_ns)
{
    mc__cuda_device *dev = devp;
    mc__cuda_queue *q = qp;
    uint64_t target = 0;
    pthread_mutex_lock(&q->mu);
    for (mc__cuda_rec *r = q->head; r; r = r->next) {
        if (r->sub == sub) {
            target = r->sub_seq;
            break;
        }
    }
    pthread_mutex_unlock(&q->mu);
    if (!target) return MC_OK; /* completed already */

    pthread_mutex_lock(&dev->mu);
    q->pins++;
    pthread_mutex_unlock(&dev->mu);
    uint64_t deadline = mc__deadline(timeout_ns);
    mc__cuda_backoff b;
    mc__cuda_backoff_init(&b);
    b.yield_ns = dev->yield_ns;
    mc_status s = MC_OK;
    atomic_fetch_add(&q->waiters, 1);
    for (;;) {
        if (atomic_load(&q->completed_seq) >= target) break;
        queue_poll(dev, q);
        if (atomic_load(&q->completed_seq) >= target) break;
        if (mc__now_ns() >= deadline) {
            s = MC_ERR_WAIT_TIMEOUT;
            break;
        }
        mc__cuda_backoff_step(&b, dev->spin_ns, WAITER_MAX_SLEEP_NS, deadline);
    }
    atomic_fetch_sub(&q->waiters, 1);
    pthread_mutex_lock(&dev->mu);
    bool free_it = unpin_locked(q);
    pthread_mutex_unlock(&dev->mu);
    if (free_it) queue_free(q);
    return s;
}

/* ---- the completion thread -------------------------------------------------- */

void *mc__cuda_completion_main(void *arg)
{
    mc__cuda_device *dev = arg;
    (void)dev->cu->CtxSetCurrent(dev->ctx); /* our own thread */
    mc__cuda_backoff b;
    pthread_mutex_lock(&dev->mu);
    while (!atomic_load(&dev->stop)) {
        if (atomic_load(&dev->inflight) == 0) {
            /* Spin a little before blocking, so back-to-back submissions do
             * not pay for a wake-up. */
            pthread_mutex_unlock(&dev->mu);
            uint64_t t0 = mc__now_ns();
            while (atomic_load(&dev->inflight) == 0 && !atomic_load(&dev->stop) && mc__now_ns() - t0 < dev->spin_ns)
                for (int i = 0; i < 32; i++) mc__cpu_relax();
            pthread_mutex_lock(&dev->mu);
            while (!atomic_load(&dev->stop) && atomic_load(&dev->inflight) == 0) pthread_cond_wait(&dev->cv, &dev->mu);
            continue;
        }
        /* Pin every queue, then poll without dev->mu until the device is
         * idle or the set of queues changes. */
        size_t n = 0;
        for (mc__cuda_queue *q = dev->queues; q; q = q->next) n++;
        if (n > dev->poll_cap) {
            mc__cuda_queue **np = mc__realloc(dev->poll, n * sizeof *np);
            if (np) {
                dev->poll = np;
                dev->poll_cap = n;
            }
        }
        n = 0;
        for (mc__cuda_queue *q = dev->queues; q && n < dev->poll_cap; q = q->next) {
            q->pins++;
            dev->poll[n++] = q;
        }
        uint64_t gen = atomic_load(&dev->queues_gen);
        pthread_mutex_unlock(&dev->mu);
        mc__cuda_backoff_init(&b);
        while (atomic_load(&dev->inflight) != 0 && atomic_load(&dev->queues_gen) == gen && !atomic_load(&dev->stop)) {
            bool progress = false;
            for (size_t i = 0; i < n; i++)
                if (!dev->defer_to_waiters || atomic_load(&dev->poll[i]->waiters) == 0)
                    progress |= queue_poll(dev, dev->poll[i]);
            if (progress) mc__cuda_backoff_init(&b);
            else mc__cuda_backoff_step(&b, dev->spin_ns, THREAD_MAX_SLEEP_NS, UINT64_MAX);
        }
        pthread_mutex_lock(&dev->mu);
        for (size_t i = 0; i < n; i++) {
            if (unpin_locked(dev->poll[i])) {
                pthread_mutex_unlock(&dev->mu);
                queue_free(dev->poll[i]);
                pthread_mutex_lock(&dev->mu);
            }
        }
    }
    pthread_mutex_unlock(&dev->mu);
    return NULL;
}
