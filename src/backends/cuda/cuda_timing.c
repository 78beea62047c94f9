/*
 * DOC: CUDA queue events: timing and completion events, and GPU times
 *
 * GPU timing (MC_CMDBUF_TIMESTAMPS / PASS_TIMESTAMPS only, so the fast path
 * records no events): CUDA events from a per-queue pool, turned into
 * nanoseconds relative to an anchor event whose host time is known. The
 * anchor moves to the last completed timing event, so a start is measured
 * from the previous timed command buffer rather than from the queue's
 * creation, and durations from the command buffer's own start: cuda's float
 * milliseconds keep their resolution however long the queue lives.
 *
 * Completion events (MC_CUDA_DONE=event) record no time and have a pool
 * of their own.
 */
#include "backends/cuda/cuda_be.h"

#include <stdlib.h>

static CUevent ev_take(mc__cuda_device *dev, mc__cuda_queue *q)
{
    CUevent e = NULL;
    pthread_mutex_lock(&q->mu);
    if (q->nevpool) e = q->evpool[--q->nevpool];
    pthread_mutex_unlock(&q->mu);
    if (!e && dev->cu->EventCreate(&e, CU_EVENT_DEFAULT) != CUDA_SUCCESS) e = NULL;
    return e;
}

/* The context must be current (an event that cannot be pooled is destroyed). */
void mc__cuda_ev_give(mc__cuda_device *dev, mc__cuda_queue *q, CUevent e)
{
    if (!e) return;
    pthread_mutex_lock(&q->mu);
    if (q->nevpool == q->evpool_cap) {
        uint32_t ncap = q->evpool_cap ? q->evpool_cap * 2 : 16;
        CUevent *n = mc__realloc(q->evpool, ncap * sizeof *n);
        if (n) {
            q->evpool = n;
            q->evpool_cap = ncap;
        }
    }
    if (q->nevpool < q->evpool_cap) {
        q->evpool[q->nevpool++] = e;
        e = NULL;
    }
    pthread_mutex_unlock(&q->mu);
    if (e) (void)dev->cu->EventDestroy(e);
}

/* Completion events (MC_CUDA_DONE=event): no timing, pooled per queue. */
CUevent mc__cuda_done_take(mc__cuda_device *dev, mc__cuda_queue *q)
{
    CUevent e = NULL;
    pthread_mutex_lock(&q->mu);
    if (q->ndonepool) e = q->donepool[--q->ndonepool];
    pthread_mutex_unlock(&q->mu);
    if (!e && dev->cu->EventCreate(&e, CU_EVENT_DISABLE_TIMING) != CUDA_SUCCESS) e = NULL;
    return e;
}

/* q->mu held. Never destroys (no context needed); an event that cannot be
 * pooled is left to the context's teardown. */
void mc__cuda_done_give_locked(mc__cuda_queue *q, CUevent e)
{
    if (q->ndonepool == q->donepool_cap) {
        uint32_t ncap = q->donepool_cap ? q->donepool_cap * 2 : 16;
        CUevent *n = mc__realloc(q->donepool, ncap * sizeof *n);
        if (!n) return;
        q->donepool = n;
        q->donepool_cap = ncap;
    }
    q->donepool[q->ndonepool++] = e;
}

/* Records a timing event on the stream into r; false if that failed. */
bool mc__cuda_ev_record(mc__cuda_device *dev, mc__cuda_queue *q, mc__cuda_rec *r)
{
    if (r->nev == r->ev_cap) {
        uint32_t ncap = r->ev_cap ? r->ev_cap * 2 : 4;
        CUevent *n = mc__realloc(r->ev, ncap * sizeof *n);
        if (!n) return false;
        r->ev = n;
        r->ev_cap = ncap;
    }
    CUevent e = ev_take(dev, q);
    if (!e) return false;
    if (dev->cu->EventRecord(e, q->stream) != CUDA_SUCCESS) {
        mc__cuda_ev_give(dev, q, e);
        return false;
    }
    r->ev[r->nev++] = e;
    return true;
}

static uint64_t ms_to_ns(float ms)
{
    return ms > 0.0f ? (uint64_t)((double)ms * 1e6) : 0;
}

/* GPU times of a finished record (context current, reaping thread only). */
void mc__cuda_compute_times(mc__cuda_device *dev, mc__cuda_queue *q, mc__cuda_rec *r, mc__submission *sub)
{
    const mc__cuda_api *cu = dev->cu;
    float ms = 0;
    if (r->nev < 2 || !q->anchor || cu->EventElapsedTime(&ms, q->anchor, r->ev[0]) != CUDA_SUCCESS) return;
    /* The anchor is the previous timed command buffer's end: this one starts
     * after it, never on it (touching spans read as nested in a trace). */
    uint64_t start = q->anchor_ns + MC__MAX(ms_to_ns(ms), (uint64_t)1);
    uint64_t prev = start;
    uint64_t t_end = start;
    for (uint32_t i = 0; i < r->nev; i++) {
        uint64_t t = start;
        if (i > 0) {
            if (cu->EventElapsedTime(&ms, r->ev[0], r->ev[i]) != CUDA_SUCCESS) return;
            t = MC__MAX(start + ms_to_ns(ms), prev);
        }
        prev = t;
        if (r->pass_events && sub->pass_time && i < sub->npass) sub->pass_time[2 * i] = t;
        if (r->pass_events && sub->pass_time && i > 0 && i - 1 < sub->npass && i - 1 < r->nran)
            /* one event ends pass i-1 and starts pass i: the end is put 1 ns
             * before, so the spans do not touch (a trace reads touching
             * spans as overlapping) */
            sub->pass_time[2 * (i - 1) + 1] = MC__MAX(t - 1, sub->pass_time[2 * (i - 1)]);
        t_end = t;
    }
    /* a pass that started but did not finish has no end */
    if (r->pass_events && sub->pass_time)
        for (uint32_t p = r->nran; p < sub->npass; p++) sub->pass_time[2 * p] = sub->pass_time[2 * p + 1] = 0;
    sub->gpu_start_ns = start;
    sub->gpu_end_ns = t_end;
    /* The newest completed event becomes the anchor. */
    CUevent old = q->anchor;
    q->anchor = r->ev[r->nev - 1];
    q->anchor_ns = t_end;
    r->ev[r->nev - 1] = old;
}
