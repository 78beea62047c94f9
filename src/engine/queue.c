/*
 * DOC: Queues
 *
 * A queue orders the command buffers committed to it and stops taking
 * work after one fails, until the program creates a new one (F687). It
 * counts what is in flight (mc_queue_wait_idle) and keeps a small pool of
 * finished command buffers for reuse (cmdbuf.c owns the pool's rules).
 */
#include "engine/engine.h"

#include <stdlib.h>

/* ---- queues ------------------------------------------------------------ */

mc_status mc_queue_create(mc_device *d, const mc_queue_desc *desc, mc_queue **out)
{
    MC__CHECK_HANDLE(d, MC__TAG_DEVICE, "device");
    if (!out) return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_queue_create: out is NULL");
    *out = NULL;
    mc_status s = mc_device_check(d);
    if (s != MC_OK) return s;
    const char *label = desc && desc->label ? desc->label : "queue";
    mc_queue *q = mc__calloc(1, sizeof *q);
    if (!q) return mc__fail(MC_ERR_NO_MEMORY, "mc_queue_create: out of memory");
    s = d->hal->queue_create(d->hd, label, &q->hq);
    if (s != MC_OK) {
        free(q);
        return s;
    }
    mc__object_init(&q->base, MC__TAG_QUEUE, d, label);
    pthread_mutex_init(&q->lock, NULL);
    mc__cond_init_monotonic(&q->idle);
    mc__object_retain(&d->base);
    *out = q;
    return MC_OK;
}

void mc__queue_destroy(mc_queue *q)
{
    mc_device *d = q->base.device;
    while (q->pool) {
        mc_cmdbuf *cb = q->pool;
        q->pool = cb->pool_next;
        mc__cmdbuf_free(cb);
    }
    d->hal->queue_destroy(d->hd, q->hq);
    pthread_mutex_destroy(&q->lock);
    pthread_cond_destroy(&q->idle);
    q->base.tag = MC__TAG_DEAD;
    free(q->base.label);
    free(q);
    mc__object_release(&d->base);
}

void mc_queue_retain(mc_queue *q)
{
    if (mc__object_check(q, MC__TAG_QUEUE)) mc__object_retain(&q->base);
}

void mc_queue_release(mc_queue *q)
{
    if (mc__object_check(q, MC__TAG_QUEUE)) mc__object_release(&q->base);
}

mc_status mc_queue_check(const mc_queue *q)
{
    MC__CHECK_HANDLE(q, MC__TAG_QUEUE, "queue");
    mc_status s = (mc_status)atomic_load(&((mc_queue *)q)->error);
    if (s != MC_OK)
        return mc__fail(s, "queue '%s' stopped after an error (%s); create a new queue", q->base.label,
                        mc_status_name(s));
    return MC_OK;
}

mc_status mc_queue_wait_idle(mc_queue *q, uint64_t timeout_ns)
{
    MC__CHECK_HANDLE(q, MC__TAG_QUEUE, "queue");
    uint64_t deadline = mc__deadline(timeout_ns);
    pthread_mutex_lock(&q->lock);
    while (q->in_flight) {
        if (!mc__cond_wait_until(&q->idle, &q->lock, deadline)) {
            uint64_t n = q->in_flight;
            pthread_mutex_unlock(&q->lock);
            return mc__fail(MC_ERR_WAIT_TIMEOUT, "queue '%s' still has %llu command buffers in flight", q->base.label,
                            (unsigned long long)n);
        }
    }
    pthread_mutex_unlock(&q->lock);
    return MC_OK;
}
