/*
 * DOC: Command buffers: their life, commit and completion
 *
 * A command buffer is created on a queue, recorded (recorder.c), committed
 * once, and completes exactly once. This file owns the state machine
 * (F687), the pool that reuses finished command buffers' memory, fault
 * injection at commit, the one completion path every backend reports to,
 * completion callbacks (run on the device's notifier thread), waiting,
 * and what a finished command buffer reports: status, pass states, GPU
 * times.
 */
#include "engine/engine.h"
#include "engine/trace.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ---- command buffers: creation and the pool ----------------------------- */

const char *mc_cmdbuf_state_name(mc_cmdbuf_state s)
{
    static const char *const names[] = {"not-enqueued", "enqueued", "committed", "scheduled", "completed", "error"};
    return (unsigned)s < MC__ARRAY_LEN(names) ? names[s] : "unknown";
}

const char *mc_pass_state_name(mc_pass_state s)
{
    static const char *const names[] = {"unknown", "completed", "affected", "pending", "faulted"};
    return (unsigned)s < MC__ARRAY_LEN(names) ? names[s] : "unknown";
}

mc_status mc_cmdbuf_create(mc_queue *q, const mc_cmdbuf_desc *desc, mc_cmdbuf **out)
{
    MC__CHECK_HANDLE(q, MC__TAG_QUEUE, "queue");
    if (!out) return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_cmdbuf_create: out is NULL");
    *out = NULL;
    uint32_t flags = desc ? desc->flags : 0;
    if (flags & ~(MC_CMDBUF_TIMESTAMPS | MC_CMDBUF_PASS_TIMESTAMPS | MC_CMDBUF_UNRETAINED_REFERENCES))
        return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_cmdbuf_create: unknown flags 0x%x", flags);
    pthread_mutex_lock(&q->lock);
    mc_cmdbuf *cb = q->pool;
    if (cb) {
        q->pool = cb->pool_next;
        q->npool--;
    }
    pthread_mutex_unlock(&q->lock);
    mc__recorder keep;
    memset(&keep, 0, sizeof keep);
    mc_pass_state *ps = NULL;
    uint32_t ps_cap = 0;
    if (cb) {
        /* from the pool: empty, with its arrays' memory */
        keep = cb->rec;
        ps = cb->pass_state_mem;
        ps_cap = cb->pass_state_cap;
        memset(cb, 0, sizeof *cb);
    } else {
        cb = mc__calloc(1, sizeof *cb);
        if (!cb) return mc__fail(MC_ERR_NO_MEMORY, "mc_cmdbuf_create: out of memory");
    }
    mc__object_init(&cb->base, MC__TAG_CMDBUF, q->base.device, desc && desc->label ? desc->label : "cmdbuf");
    cb->queue = q;
    cb->flags = flags;
    mc__recorder_init(&cb->rec, &cb->base, false, (flags & MC_CMDBUF_UNRETAINED_REFERENCES) != 0, 0);
    cb->rec.cmds = keep.cmds;
    cb->rec.cmd_cap = keep.cmd_cap;
    cb->rec.bytes = keep.bytes;
    cb->rec.bytes_cap = keep.bytes_cap;
    cb->rec.passes = keep.passes;
    cb->rec.pass_cap = keep.pass_cap;
    cb->rec.refs = keep.refs;
    cb->rec.ref_cap = keep.ref_cap;
    cb->rec.unretained_bufs = keep.unretained_bufs;
    cb->rec.unretained_cap = keep.unretained_cap;
    cb->pass_state_mem = ps;
    cb->pass_state_cap = ps_cap;
    cb->pass.rec = &cb->rec;
    atomic_init(&cb->state, MC_CMDBUF_NOT_ENQUEUED);
    pthread_mutex_init(&cb->lock, NULL);
    mc__cond_init_monotonic(&cb->done_cond);
    mc__object_retain(&q->base);
    *out = cb;
    return MC_OK;
}

/* Command buffers are one-shot, their memory need not be: a queue keeps up
 * to CMDBUF_POOL finished ones with their arrays, so a steady flow of
 * command buffers (a stream's items, a runner's chunks) allocates next to
 * nothing per command buffer, and never frees on one thread what another
 * allocated. A pooled one is dead to the API (its tag says so) and holds
 * no references; the queue frees the pool when it goes. */
#define CMDBUF_POOL 8u

void mc__cmdbuf_free(mc_cmdbuf *cb)
{
    mc__recorder_free(&cb->rec);
    free(cb->pass_state_mem);
    free(cb);
}

void mc__cmdbuf_destroy(mc_cmdbuf *cb)
{
    mc__recorder_clear(&cb->rec);
    free(cb->sub.pass_time);
    cb->sub.pass_time = NULL;
    pthread_mutex_destroy(&cb->lock);
    pthread_cond_destroy(&cb->done_cond);
    mc_queue *q = cb->queue;
    cb->base.tag = MC__TAG_DEAD;
    free(cb->base.label);
    cb->base.label = NULL;
    pthread_mutex_lock(&q->lock);
    bool pooled = q->npool < CMDBUF_POOL;
    if (pooled) {
        cb->pool_next = q->pool;
        q->pool = cb;
        q->npool++;
    }
    pthread_mutex_unlock(&q->lock);
    if (!pooled) mc__cmdbuf_free(cb);
    mc__object_release(&q->base); /* last: it may free the pool, cb with it */
}

void mc_cmdbuf_retain(mc_cmdbuf *cb)
{
    if (mc__object_check(cb, MC__TAG_CMDBUF)) mc__object_retain(&cb->base);
}

void mc_cmdbuf_release(mc_cmdbuf *cb)
{
    if (mc__object_check(cb, MC__TAG_CMDBUF)) mc__object_release(&cb->base);
}

const char *mc_cmdbuf_label(const mc_cmdbuf *cb)
{
    return mc__object_check(cb, MC__TAG_CMDBUF) ? cb->base.label : NULL;
}

mc_status mc_cmdbuf_on_completed(mc_cmdbuf *cb, mc_cmdbuf_fn fn, void *user)
{
    MC__CHECK_HANDLE(cb, MC__TAG_CMDBUF, "command buffer");
    if (!fn) return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_cmdbuf_on_completed: fn is NULL");
    mc_status s = mc__cmdbuf_recordable(cb, __func__);
    if (s != MC_OK) return s;
    cb->on_complete = fn;
    cb->on_complete_user = user;
    return MC_OK;
}

/* ---- commit and completion ---------------------------------------------- */

static void run_callback(mc__job *job)
{
    mc_cmdbuf *cb = (mc_cmdbuf *)((char *)job - offsetof(mc_cmdbuf, job));
    cb->on_complete(cb->on_complete_user, cb);
    mc__object_release(&cb->base); /* the in-flight reference */
}

/* The one completion path: every backend lands here exactly once. */
static void on_complete(mc__submission *sub)
{
    mc_cmdbuf *cb = sub->owner;
    mc_device *d = cb->base.device;
    mc_queue *q = cb->queue;
    mc__in_completion++;

    cb->status = sub->status;
    memcpy(cb->message, sub->message, sizeof cb->message);
    cb->message[sizeof cb->message - 1] = '\0';
    if (MC__TRACING() && cb->trace_commit_ns) mc__trace_cmdbuf(cb, sub, cb->trace_commit_ns);
    if (sub->status != MC_OK) {
        int ok = MC_OK;
        atomic_compare_exchange_strong(&q->error, &ok, (int)sub->status);
        if (sub->status == MC_ERR_DEVICE_LOST && !atomic_exchange(&d->lost, 1))
            mc__log(MC_LOG_ERROR, "device.lost", "%s device lost in command buffer '%s': %s", d->hal->name,
                    cb->base.label, cb->message);
    }
    for (uint32_t i = 0; i < cb->rec.nrefs; i++) {
        mc__object *o = cb->rec.refs[i];
        if (o->tag == MC__TAG_EVENT) mc__events_changed(d, (mc_event *)o);
        else if (o->tag == MC__TAG_CMDLIST) atomic_fetch_sub(&((mc_cmdlist *)o)->gpu_uses, 1);
    }
    for (uint32_t i = 0; i < cb->rec.nunretained; i++) atomic_fetch_sub(&cb->rec.unretained_bufs[i]->gpu_uses, 1);
    atomic_store(&cb->state, sub->status == MC_OK ? MC_CMDBUF_COMPLETED : MC_CMDBUF_ERROR);
    pthread_mutex_lock(&cb->lock);
    atomic_store(&cb->done, 1);
    pthread_cond_broadcast(&cb->done_cond);
    pthread_mutex_unlock(&cb->lock);

    pthread_mutex_lock(&q->lock);
    if (--q->in_flight == 0) pthread_cond_broadcast(&q->idle);
    pthread_mutex_unlock(&q->lock);

    if (cb->on_complete) {
        cb->job.run = run_callback;
        if (mc__notifier_post(d, &cb->job) != MC_OK) run_callback(&cb->job);
    } else {
        mc__object_release(&cb->base);
    }
    mc__in_completion--;
}

static void on_scheduled(mc__submission *sub)
{
    mc_cmdbuf *cb = sub->owner;
    int committed = MC_CMDBUF_COMMITTED;
    atomic_compare_exchange_strong(&cb->state, &committed, MC_CMDBUF_SCHEDULED);
}

mc_status mc_cmdbuf_enqueue(mc_cmdbuf *cb)
{
    MC__CHECK_HANDLE(cb, MC__TAG_CMDBUF, "command buffer");
    int expect = MC_CMDBUF_NOT_ENQUEUED;
    if (!atomic_compare_exchange_strong(&cb->state, &expect, MC_CMDBUF_ENQUEUED))
        return mc__fail(MC_ERR_INVALID_STATE, "command buffer '%s' is %s, not new", cb->base.label,
                        mc_cmdbuf_state_name((mc_cmdbuf_state)expect));
    return MC_OK;
}

static void fail_commit(mc_cmdbuf *cb, mc_status s)
{
    cb->status = s;
    snprintf(cb->message, sizeof cb->message, "%s", mc_last_error());
    atomic_store(&cb->state, MC_CMDBUF_ERROR);
    atomic_store(&cb->done, 1);
}

mc_status mc_cmdbuf_commit(mc_cmdbuf *cb)
{
    MC__CHECK_HANDLE(cb, MC__TAG_CMDBUF, "command buffer");
    mc_status s = mc__cmdbuf_recordable(cb, __func__);
    if (s != MC_OK) return s;
    mc__recorder *rec = &cb->rec;
    if (rec->pass_open)
        return mc__fail(mc_validation_enabled() ? MC_ERR_VALIDATION : MC_ERR_INVALID_STATE,
                        "command buffer '%s': pass '%s' was not ended before commit", cb->base.label,
                        mc__recorder_pass_label(rec));
    mc_queue *q = cb->queue;
    mc_device *d = cb->base.device;
    if ((s = mc_device_check(d)) != MC_OK || (s = mc_queue_check(q)) != MC_OK) {
        fail_commit(cb, s);
        return s;
    }
    mc__submission *sub = &cb->sub;
    if (MC__TRACING()) { /* a trace shows the device's times of every command buffer and pass */
        cb->trace_commit_ns = mc__now_ns();
        cb->flags |= MC_CMDBUF_TIMESTAMPS | MC_CMDBUF_PASS_TIMESTAMPS;
    }
    uint32_t nstate = rec->npass ? rec->npass : 1;
    if (nstate > cb->pass_state_cap) {
        mc_pass_state *m = mc__realloc(cb->pass_state_mem, (size_t)nstate * sizeof *m);
        if (m) {
            cb->pass_state_mem = m;
            cb->pass_state_cap = nstate;
        }
    }
    sub->pass_state = nstate <= cb->pass_state_cap ? cb->pass_state_mem : NULL;
    if (cb->flags & MC_CMDBUF_PASS_TIMESTAMPS)
        sub->pass_time = mc__calloc((size_t)(rec->npass ? rec->npass : 1) * 2, sizeof *sub->pass_time);
    if (!sub->pass_state || ((cb->flags & MC_CMDBUF_PASS_TIMESTAMPS) && !sub->pass_time))
        return mc__fail(MC_ERR_NO_MEMORY, "mc_cmdbuf_commit: out of memory");
    for (uint32_t i = 0; i < rec->npass; i++) sub->pass_state[i] = MC_PASS_PENDING;
    sub->cmds = rec->cmds;
    sub->ncmd = rec->ncmd;
    sub->bytes = rec->bytes;
    sub->passes = rec->passes;
    sub->npass = rec->npass;
    sub->flags = cb->flags | (mc_validation_enabled() ? MC__SUBMIT_VALIDATION : 0u);
    sub->label = cb->base.label;
    sub->status = MC_OK;
    sub->message[0] = '\0';
    sub->scheduled = on_scheduled;
    sub->complete = on_complete;
    sub->owner = cb;

    uint64_t n = atomic_fetch_add(&d->committed, 1) + 1;
    sub->inject = mc__device_take_fault(d, n);
    sub->inject_pass = rec->npass / 2;
    if (sub->inject != MC_OK)
        mc__log(MC_LOG_INFO, "fault.injected", "injecting %s into command buffer #%llu '%s'",
                mc_status_name(sub->inject), (unsigned long long)n, cb->base.label);

    for (uint32_t i = 0; i < rec->nunretained; i++) atomic_fetch_add(&rec->unretained_bufs[i]->gpu_uses, 1);
    for (uint32_t i = 0; i < rec->nrefs; i++)
        if (rec->refs[i]->tag == MC__TAG_CMDLIST) atomic_fetch_add(&((mc_cmdlist *)rec->refs[i])->gpu_uses, 1);

    mc__object_retain(&cb->base); /* in flight until completion */
    pthread_mutex_lock(&q->lock);
    q->in_flight++;
    pthread_mutex_unlock(&q->lock);
    atomic_store(&cb->state, MC_CMDBUF_COMMITTED);
    s = d->hal->submit(d->hd, q->hq, sub);
    if (s != MC_OK) {
        for (uint32_t i = 0; i < rec->nunretained; i++) atomic_fetch_sub(&rec->unretained_bufs[i]->gpu_uses, 1);
        for (uint32_t i = 0; i < rec->nrefs; i++)
            if (rec->refs[i]->tag == MC__TAG_CMDLIST) atomic_fetch_sub(&((mc_cmdlist *)rec->refs[i])->gpu_uses, 1);
        pthread_mutex_lock(&q->lock);
        if (--q->in_flight == 0) pthread_cond_broadcast(&q->idle);
        pthread_mutex_unlock(&q->lock);
        fail_commit(cb, s);
        mc__object_release(&cb->base);
        return s;
    }
    return MC_OK;
}

mc_status mc_cmdbuf_wait(mc_cmdbuf *cb, uint64_t timeout_ns)
{
    MC__CHECK_HANDLE(cb, MC__TAG_CMDBUF, "command buffer");
    if (atomic_load(&cb->done)) return MC_OK;
    int st = atomic_load(&cb->state);
    if (st < MC_CMDBUF_COMMITTED)
        return mc__fail(MC_ERR_INVALID_STATE, "command buffer '%s' was never committed", cb->base.label);
    mc_device *d = cb->base.device;
    if (d->hal->submission_wait) {
        mc_status s = d->hal->submission_wait(d->hd, cb->queue->hq, &cb->sub, timeout_ns);
        if (s == MC_ERR_WAIT_TIMEOUT && !atomic_load(&cb->done))
            return mc__fail(s, "command buffer '%s' did not finish in time", cb->base.label);
        if (s != MC_OK && s != MC_ERR_WAIT_TIMEOUT) return s;
    }
    uint64_t deadline = mc__deadline(timeout_ns);
    pthread_mutex_lock(&cb->lock);
    while (!atomic_load(&cb->done)) {
        if (!mc__cond_wait_until(&cb->done_cond, &cb->lock, deadline)) {
            pthread_mutex_unlock(&cb->lock);
            return mc__fail(MC_ERR_WAIT_TIMEOUT, "command buffer '%s' did not finish in time", cb->base.label);
        }
    }
    pthread_mutex_unlock(&cb->lock);
    return MC_OK;
}

/* The outcome is written before the final state is stored, so a command
 * buffer whose state says finished has its status, times and pass states. */
static bool finished(const mc_cmdbuf *cb)
{
    return atomic_load(&((mc_cmdbuf *)cb)->state) >= MC_CMDBUF_COMPLETED;
}

mc_cmdbuf_state mc_cmdbuf_get_state(const mc_cmdbuf *cb)
{
    if (!mc__object_check(cb, MC__TAG_CMDBUF)) return MC_CMDBUF_ERROR;
    return (mc_cmdbuf_state)atomic_load(&((mc_cmdbuf *)cb)->state);
}

mc_status mc_cmdbuf_status(const mc_cmdbuf *cb, const char **message)
{
    MC__CHECK_HANDLE(cb, MC__TAG_CMDBUF, "command buffer");
    if (message) *message = "";
    if (!finished(cb)) return mc__fail(MC_ERR_INVALID_STATE, "command buffer '%s' has not finished", cb->base.label);
    if (message) *message = cb->message;
    return cb->status;
}

size_t mc_cmdbuf_pass_count(const mc_cmdbuf *cb)
{
    return mc__object_check(cb, MC__TAG_CMDBUF) ? cb->rec.npass : 0;
}

mc_status mc_cmdbuf_get_pass_info(const mc_cmdbuf *cb, size_t index, mc_pass_info *out)
{
    MC__CHECK_HANDLE(cb, MC__TAG_CMDBUF, "command buffer");
    if (!out) return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_cmdbuf_get_pass_info: out is NULL");
    if (index >= cb->rec.npass)
        return mc__fail(MC_ERR_INVALID_ARGUMENT, "pass %zu of %u does not exist", index, cb->rec.npass);
    out->label = cb->rec.passes[index].label;
    bool done = finished(cb) && cb->sub.pass_state;
    out->state = done ? cb->sub.pass_state[index] : MC_PASS_UNKNOWN;
    out->gpu_start_ns = done && cb->sub.pass_time ? cb->sub.pass_time[2 * index] : 0;
    out->gpu_end_ns = done && cb->sub.pass_time ? cb->sub.pass_time[2 * index + 1] : 0;
    return MC_OK;
}

mc_status mc_cmdbuf_get_gpu_time(const mc_cmdbuf *cb, uint64_t *start_ns, uint64_t *end_ns)
{
    MC__CHECK_HANDLE(cb, MC__TAG_CMDBUF, "command buffer");
    if (!start_ns || !end_ns) return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_cmdbuf_get_gpu_time: NULL output");
    if (!finished(cb)) return mc__fail(MC_ERR_INVALID_STATE, "command buffer '%s' has not finished", cb->base.label);
    *start_ns = cb->sub.gpu_start_ns;
    *end_ns = cb->sub.gpu_end_ns;
    return MC_OK;
}
