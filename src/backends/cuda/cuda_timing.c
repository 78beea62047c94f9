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
 * The arithmetic (the rules that keep traced spans apart) is in
 * cuda_clock.c, free of CUDA, so it is tested without a GPU.
 *
 * Completion events (MC_CUDA_DONE=event) record no time and have a pool
 * of their own.
 */
#include "backends/cuda/cuda_be.h"
#include "backends/cuda/cuda_clock.h"

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

/* GPU times of a finished record (context current, reaping thread only):
 * the differences between its events from CUDA, their host times from
 * cuda_clock.c. */
void mc__cuda_compute_times(mc__cuda_device *dev, mc__cuda_queue *q, mc__cuda_rec *r, mc__submission *sub)
{
    const mc__cuda_api *cu = dev->cu;
    float ms = 0;
    if (r->nev < 2 || !q->anchor || cu->EventElapsedTime(&ms, q->anchor, r->ev[0]) != CUDA_SUCCESS) return;
    uint64_t local[32];
    uint64_t *from_first = r->nev <= MC__ARRAY_LEN(local) ? local : mc__malloc(r->nev * sizeof *from_first);
    if (!from_first) return;
    mc__cuda_clock_in in = {.anchor_ns = q->anchor_ns,
                            .to_first_ns = mc__cuda_ms_to_ns(ms),
                            .from_first_ns = from_first,
                            .nev = r->nev,
                            .pass_events = r->pass_events,
                            .npass = sub->npass,
                            .nran = r->nran};
    bool ok = true;
    from_first[0] = 0;
    for (uint32_t i = 1; i < r->nev && ok; i++) {
        ok = cu->EventElapsedTime(&ms, r->ev[0], r->ev[i]) == CUDA_SUCCESS;
        from_first[i] = mc__cuda_ms_to_ns(ms);
    }
    ok = ok && mc__cuda_clock_times(&in, sub->pass_time, &sub->gpu_start_ns, &sub->gpu_end_ns);
    if (from_first != local) free(from_first);
    if (!ok) return;
    /* The newest completed event becomes the anchor. */
    CUevent old = q->anchor;
    q->anchor = r->ev[r->nev - 1];
    q->anchor_ns = sub->gpu_end_ns;
    r->ev[r->nev - 1] = old;
}
