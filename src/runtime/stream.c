/*
 * DOC: Streams: the front end
 *
 * Fixed-size items between the CPU and a device through N slots of
 * host-visible memory (Apple's triple buffering, F705). This file is the
 * one front end of mc_stream, whatever runs the items (runtime/stream_ops.h:
 * stream_local.c on a device of this process, stream_isolated.c in a
 * worker process). What it owns:
 *
 *  - the descriptor's checks and defaults;
 *  - the slot book: a slot is FREE, ACQUIRED by a producer, QUEUED
 *    (submitted, not with the device), in FLIGHT (with the device),
 *    FINISHED (the device is done with it; waiting for its turn),
 *    DELIVERING (the callback runs), READY (pull mode) or HELD (pulled, not
 *    yet released). A slot is FREE again only after the device finished
 *    with it and its result was delivered, so memory is bounded by the
 *    slots and acquire is the backpressure;
 *  - ordering: the sequence number is taken under submit_mu, the lock the
 *    back end gives items to the device under, so the device gets them in
 *    sequence order;
 *  - delivery, exactly once and in sequence order, on the stream's thread:
 *    to the callback (never a producer's thread, F143, F680) or to the pull
 *    list;
 *  - close, cancel and the stream's death; the statistics.
 *
 * Cancel (mc_stream_close(s, false)) is defined here, once for both back
 * ends. Items QUEUED are finished at once with MC_ERR_CANCELLED: they never
 * reach the device again. Items in FLIGHT are waited for until the device
 * is done with them (the local back end: their command buffers finished;
 * the isolated one: its worker ended), so a slot is never reused early.
 * Every item handed over after the cancel is delivered with
 * MC_ERR_CANCELLED unless it failed with an error of its own, whether or
 * not it ran: only results handed over before the cancel (the callback
 * running, or ready to pull) keep MC_OK. Nothing is delivered twice or
 * lost; delivery stays in sequence order.
 *
 * The stream's thread: deliver the oldest item when it is finished; after
 * a cancel, cancel what is queued; else let the back end step (wait for
 * the device, recover, supervise its worker).
 */
#include "runtime/stream_ops.h"
#include "engine/trace.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define STREAM_TAG 0x6d635354u /* "mcST" */

#define DEFAULT_SLOTS 3u
#define DEFAULT_RETRIES 3u

/* ---- for the back ends ----------------------------------------------------- */

static bool stream_ok(const mc_stream *s)
{
    return s && s->tag == STREAM_TAG;
}

void *mc__stream_backend(const mc_stream *s, const mc__stream_ops *ops)
{
    return stream_ok(s) && s->ops == ops ? s->be : NULL;
}

bool mc__stream_on_thread(const mc_stream *s)
{
    return s->thread_started && pthread_equal(s->thread, pthread_self());
}

void mc__stream_set_message(mc__slot *sl, mc_status st, const char *msg)
{
    sl->status = st;
    snprintf(sl->message, sizeof sl->message, "%.255s", msg && *msg ? msg : st == MC_OK ? "" : mc_status_text(st));
}

void mc__stream_spin_for(const mc_stream *s, _Atomic uint32_t *count, uint64_t deadline)
{
    uint64_t until = MC__MIN(deadline, mc__now_ns() + MC__STREAM_SPIN_NS);
    for (uint32_t i = 1; !atomic_load_explicit(count, memory_order_relaxed); i++) {
        if ((i & 31) == 0 && (mc__now_ns() >= until || atomic_load_explicit(&s->stop_spin, memory_order_relaxed)))
            return;
        mc__spin_step(i);
    }
}

/* Every QUEUED item ends with st and why. */
static void finish_queued(mc_stream *s, mc_status st, const char *why)
{
    for (uint32_t i = 0; i < s->order.count; i++) {
        mc__slot *sl = &s->slots[mc__ring_at(&s->order, i)];
        if (sl->state != MC__SLOT_QUEUED) continue;
        sl->state = MC__SLOT_FINISHED;
        mc__stream_set_message(sl, st, why);
    }
}

void mc__stream_die_locked(mc_stream *s, mc_status st, const char *why)
{
    s->dead = true;
    atomic_store(&s->stop_spin, 1);
    s->dead_status = st;
    snprintf(s->dead_message, sizeof s->dead_message, "stream '%s' gave up: %s", s->label, why);
    finish_queued(s, st, s->dead_message);
    pthread_cond_broadcast(&s->free_cv);
    pthread_cond_broadcast(&s->ready_cv);
    mc__log(MC_LOG_ERROR, "stream.dead", "%s", s->dead_message);
}

/* ---- the book (under mu) ----------------------------------------------------- */

static void free_slot(mc_stream *s, mc__slot *sl)
{
    sl->state = MC__SLOT_FREE;
    mc__ring_push(&s->free_slots, (uint32_t)(sl - s->slots));
    atomic_store_explicit(&s->nfree, s->free_slots.count, memory_order_relaxed);
    pthread_cond_signal(&s->free_cv);
}

static bool idle(const mc_stream *s)
{
    return s->order.count == 0 && !s->delivering;
}

static void fill_result(const mc_stream *s, const mc__slot *sl, mc_stream_result *r)
{
    memset(r, 0, sizeof *r);
    r->sequence = sl->seq;
    r->tag = sl->tag;
    r->status = sl->status;
    r->message = sl->message;
    r->output = s->desc.result_size ? sl->out_host : NULL;
    r->output_size = s->desc.result_size;
    r->input = sl->in_host;
    r->attempts = sl->attempts;
    r->slot = (uint32_t)(sl - s->slots);
}

/* Hands the oldest item over (it is FINISHED). Under mu, released around
 * the callback. */
static void deliver_head(mc_stream *s)
{
    uint32_t idx = mc__ring_pop(&s->order);
    mc__slot *sl = &s->slots[idx];
    if (s->cancel && sl->status == MC_OK) mc__stream_set_message(sl, MC_ERR_CANCELLED, "cancelled by mc_stream_close");
    s->st.delivered++;
    if (MC__TRACING())
        mc__trace_instant("stream", s->label, "stream", "item", 0, mc_status_name(sl->status),
                          MC__TARGS({"sequence", sl->seq}, {"tag", sl->tag}, {"attempts", sl->attempts}));
    if (sl->status == MC_ERR_CANCELLED) s->st.cancelled++;
    else if (sl->status != MC_OK) s->st.failed++;
    if (s->desc.on_result) {
        sl->state = MC__SLOT_DELIVERING;
        s->delivering = true;
        mc_stream_result r;
        fill_result(s, sl, &r);
        pthread_mutex_unlock(&s->mu);
        s->desc.on_result(s->desc.result_user, &r);
        pthread_mutex_lock(&s->mu);
        s->delivering = false;
        free_slot(s, sl);
    } else {
        sl->state = MC__SLOT_READY;
        mc__ring_push(&s->ready, idx);
        atomic_store_explicit(&s->nready, s->ready.count, memory_order_relaxed);
        pthread_cond_signal(&s->ready_cv);
    }
    if (idle(s)) {
        pthread_cond_broadcast(&s->idle_cv);
        if (s->closed) pthread_cond_broadcast(&s->ready_cv); /* pullers: the end */
    }
}

static bool any_queued(const mc_stream *s)
{
    for (uint32_t i = 0; i < s->order.count; i++)
        if (s->slots[mc__ring_at(&s->order, i)].state == MC__SLOT_QUEUED) return true;
    return false;
}

/* After a cancel: nothing QUEUED goes to the device any more. submit_mu
 * first, so no producer is between taking its item's number and giving it
 * to the device. Under mu (let go of meanwhile). */
static void cancel_queued(mc_stream *s)
{
    pthread_mutex_unlock(&s->mu);
    pthread_mutex_lock(&s->submit_mu);
    pthread_mutex_lock(&s->mu);
    finish_queued(s, MC_ERR_CANCELLED, "cancelled by mc_stream_close before it ran");
    pthread_mutex_unlock(&s->submit_mu);
}

static void *stream_main(void *arg)
{
    mc_stream *s = arg;
    pthread_mutex_lock(&s->mu);
    while (!s->quit) {
        if (s->order.count && s->slots[mc__ring_at(&s->order, 0)].state == MC__SLOT_FINISHED) deliver_head(s);
        else if (s->cancel && any_queued(s)) cancel_queued(s);
        else s->ops->step(s);
    }
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

/* ---- create and release ------------------------------------------------------- */

static mc_status check_desc(const mc_stream_desc *d, const mc_device_info *info)
{
    if (!d->setup || !d->teardown)
        return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_stream_create: setup and teardown are required");
    if (d->item_size == 0)
        return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_stream_create: item_size is 0; each item needs bytes");
    if (info->max_buffer_size && (d->item_size > info->max_buffer_size || d->result_size > info->max_buffer_size))
        return mc__fail(
            MC_ERR_INVALID_ARGUMENT,
            "mc_stream_create: item_size %zu / result_size %zu; the device's buffers hold at most %llu bytes",
            d->item_size, d->result_size, (unsigned long long)info->max_buffer_size);
    if (d->slots > MC_STREAM_MAX_SLOTS)
        return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_stream_create: slots is %u; 1 to %d (0 = 3)", d->slots,
                        MC_STREAM_MAX_SLOTS);
    uint32_t slots = d->slots ? d->slots : DEFAULT_SLOTS;
    if (d->lanes > MC_STREAM_MAX_LANES || d->lanes > slots)
        return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_stream_create: lanes is %u; 1 to %u with %u slots (0 = 1)",
                        d->lanes, MC__MIN(slots, MC_STREAM_MAX_LANES), slots);
    const uint32_t known = MC_STREAM_NO_REOPEN | MC_STREAM_RECORD_EACH;
    if (d->flags & ~known)
        return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_stream_create: unknown flags 0x%x", d->flags & ~known);
    return MC_OK;
}

/* Frees s after its thread ended (or never started). */
static void destroy(mc_stream *s)
{
    if (s->ops) s->ops->destroy(s);
    free(s->slots);
    free(s->free_slots.v);
    free(s->order.v);
    free(s->ready.v);
    free(s->label);
    pthread_mutex_destroy(&s->submit_mu);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->free_cv);
    pthread_cond_destroy(&s->work_cv);
    pthread_cond_destroy(&s->ready_cv);
    pthread_cond_destroy(&s->idle_cv);
    s->tag = 0;
    free(s);
}

mc_status mc_stream_create(const mc_stream_desc *desc, mc_stream **out)
{
    if (!out) return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_stream_create: out is NULL");
    *out = NULL;
    if (!desc) return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_stream_create: desc is NULL");
    const mc__stream_ops *ops = desc->isolate ? &mc__stream_isolated_ops : &mc__stream_local_ops;
    mc_device_info info;
    memset(&info, 0, sizeof info);
    mc_status st = ops->check(desc, &info);
    if (st == MC_OK) st = check_desc(desc, &info);
    if (st != MC_OK) return st;

    mc_stream *s = mc__calloc(1, sizeof *s);
    if (!s) return mc__fail(MC_ERR_NO_MEMORY, "mc_stream_create: out of host memory");
    s->tag = STREAM_TAG;
    s->desc = *desc;
    s->desc.slots = desc->slots ? desc->slots : DEFAULT_SLOTS;
    s->desc.max_retries = desc->max_retries ? desc->max_retries : DEFAULT_RETRIES;
    s->desc.lanes = desc->lanes; /* 0: the device's default, which the back end picks */
    s->desc.isolate = NULL;      /* the caller's; the back end reads it in open */
    s->nslots = s->desc.slots;
    s->label = mc__strdup(desc->label ? desc->label : "stream");
    s->desc.label = s->label;
    pthread_mutex_init(&s->submit_mu, NULL);
    pthread_mutex_init(&s->mu, NULL);
    mc__cond_init_monotonic(&s->free_cv);
    mc__cond_init_monotonic(&s->work_cv);
    mc__cond_init_monotonic(&s->ready_cv);
    mc__cond_init_monotonic(&s->idle_cv);
    s->slots = mc__calloc(s->nslots, sizeof *s->slots);
    s->free_slots.v = mc__calloc(s->nslots, sizeof(uint32_t));
    s->order.v = mc__calloc(s->nslots, sizeof(uint32_t));
    s->ready.v = mc__calloc(s->nslots, sizeof(uint32_t));
    s->free_slots.cap = s->order.cap = s->ready.cap = s->nslots;
    if (!s->label || !s->slots || !s->free_slots.v || !s->order.v || !s->ready.v) {
        destroy(s);
        return mc__fail(MC_ERR_NO_MEMORY, "mc_stream_create: out of host memory");
    }
    for (uint32_t i = 0; i < s->nslots; i++) mc__ring_push(&s->free_slots, i);
    atomic_store(&s->nfree, s->nslots);
    s->st.slots = s->nslots;

    s->ops = ops;
    if ((st = ops->open(s, desc)) == MC_OK) {
        if (pthread_create(&s->thread, NULL, stream_main, s) != 0)
            st = mc__fail(MC_ERR_INTERNAL, "stream '%s': cannot start its thread", s->label);
        else s->thread_started = true;
    }
    if (st != MC_OK) {
        char why[1024];
        snprintf(why, sizeof why, "%s", mc_last_error());
        destroy(s);
        return mc__fail(st, "%s", why);
    }
    *out = s;
    return MC_OK;
}

void mc_stream_release(mc_stream *s)
{
    if (!stream_ok(s)) return;
    if (mc__stream_on_thread(s)) {
        mc__log(MC_LOG_ERROR, "stream.release_from_callback",
                "mc_stream_release: not from the result callback of stream '%s'; not released", s->label);
        return;
    }
    pthread_mutex_lock(&s->mu);
    bool drained = s->closed && !s->cancel;
    pthread_mutex_unlock(&s->mu);
    /* A drained stream has nothing left to cancel: its device side ends in
     * order (an isolated worker quits rather than being killed). */
    if (!drained) mc_stream_close(s, false);
    pthread_mutex_lock(&s->mu);
    s->quit = true;
    pthread_cond_broadcast(&s->work_cv);
    if (s->ops->wake) s->ops->wake(s);
    pthread_mutex_unlock(&s->mu);
    if (s->thread_started) pthread_join(s->thread, NULL);
    destroy(s);
}

/* ---- the API ------------------------------------------------------------------ */

static mc_status refused(const mc_stream *s, const char *fn)
{
    if (s->closed) return mc__fail(MC_ERR_INVALID_STATE, "%s: stream '%s' is closed", fn, s->label);
    return mc__fail(s->dead_status, "%s: %s", fn, s->dead_message);
}

mc_status mc_stream_acquire(mc_stream *s, uint64_t timeout_ns, mc_stream_slot *out)
{
    if (!stream_ok(s)) return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_stream_acquire: s is NULL or not a stream");
    if (!out) return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_stream_acquire: out is NULL");
    memset(out, 0, sizeof *out);
    /* Only a callback's return frees a slot: never wait on that thread. */
    if (mc__stream_on_thread(s)) timeout_ns = 0;
    uint64_t deadline = mc__deadline(timeout_ns);
    if (timeout_ns) mc__stream_spin_for(s, &s->nfree, deadline);
    pthread_mutex_lock(&s->mu);
    for (;;) {
        if (s->closed || s->dead) {
            mc_status st = refused(s, __func__);
            pthread_mutex_unlock(&s->mu);
            return st;
        }
        if (s->free_slots.count) break;
        if (!mc__cond_wait_until(&s->free_cv, &s->mu, deadline)) {
            pthread_mutex_unlock(&s->mu);
            return mc__fail(MC_ERR_WAIT_TIMEOUT, "stream '%s': all %u slots stayed busy", s->label, s->nslots);
        }
    }
    uint32_t idx = mc__ring_pop(&s->free_slots);
    atomic_store_explicit(&s->nfree, s->free_slots.count, memory_order_relaxed);
    mc__slot *sl = &s->slots[idx];
    sl->state = MC__SLOT_ACQUIRED;
    if (s->ops->acquired) s->ops->acquired(s, idx);
    out->index = idx;
    out->input = sl->in_host;
    out->size = s->desc.item_size;
    pthread_mutex_unlock(&s->mu);
    return MC_OK;
}

mc_status mc_stream_submit(mc_stream *s, uint32_t index, uint64_t tag)
{
    if (!stream_ok(s)) return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_stream_submit: s is NULL or not a stream");
    if (index >= s->nslots)
        return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_stream_submit: slot %u of %u does not exist", index, s->nslots);
    pthread_mutex_lock(&s->submit_mu);
    pthread_mutex_lock(&s->mu);
    mc__slot *sl = &s->slots[index];
    if (sl->state != MC__SLOT_ACQUIRED) {
        pthread_mutex_unlock(&s->mu);
        pthread_mutex_unlock(&s->submit_mu);
        return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_stream_submit: slot %u is not acquired", index);
    }
    if (s->closed || s->dead) {
        mc_status st = refused(s, __func__);
        free_slot(s, sl);
        pthread_mutex_unlock(&s->mu);
        pthread_mutex_unlock(&s->submit_mu);
        return st;
    }
    sl->seq = ++s->next_seq;
    sl->tag = tag;
    sl->attempts = 0;
    mc__stream_set_message(sl, MC_OK, NULL);
    sl->state = MC__SLOT_QUEUED;
    mc__ring_push(&s->order, index);
    s->st.submitted++;
    pthread_mutex_unlock(&s->mu);
    s->ops->submit(s, index);
    pthread_mutex_unlock(&s->submit_mu);
    mc__clear_error();
    return MC_OK;
}

mc_status mc_stream_discard(mc_stream *s, uint32_t index)
{
    if (!stream_ok(s)) return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_stream_discard: s is NULL or not a stream");
    if (index >= s->nslots)
        return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_stream_discard: slot %u of %u does not exist", index, s->nslots);
    pthread_mutex_lock(&s->mu);
    mc__slot *sl = &s->slots[index];
    if (sl->state != MC__SLOT_ACQUIRED) {
        pthread_mutex_unlock(&s->mu);
        return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_stream_discard: slot %u is not acquired", index);
    }
    free_slot(s, sl);
    pthread_mutex_unlock(&s->mu);
    return MC_OK;
}

mc_status mc_stream_pull(mc_stream *s, uint64_t timeout_ns, mc_stream_result *out)
{
    if (!stream_ok(s)) return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_stream_pull: s is NULL or not a stream");
    if (!out) return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_stream_pull: out is NULL");
    memset(out, 0, sizeof *out);
    if (s->desc.on_result)
        return mc__fail(MC_ERR_INVALID_STATE, "mc_stream_pull: stream '%s' delivers its results to a callback",
                        s->label);
    uint64_t deadline = mc__deadline(timeout_ns);
    if (timeout_ns) mc__stream_spin_for(s, &s->nready, deadline);
    pthread_mutex_lock(&s->mu);
    while (!s->ready.count) {
        if (s->closed && idle(s)) {
            pthread_mutex_unlock(&s->mu);
            return mc__fail(MC_ERR_INVALID_STATE, "mc_stream_pull: stream '%s' is closed and every result was pulled",
                            s->label);
        }
        if (!mc__cond_wait_until(&s->ready_cv, &s->mu, deadline)) {
            pthread_mutex_unlock(&s->mu);
            return mc__fail(MC_ERR_WAIT_TIMEOUT, "stream '%s': no result came in time", s->label);
        }
    }
    uint32_t idx = mc__ring_pop(&s->ready);
    atomic_store_explicit(&s->nready, s->ready.count, memory_order_relaxed);
    mc__slot *sl = &s->slots[idx];
    sl->state = MC__SLOT_HELD;
    fill_result(s, sl, out);
    pthread_mutex_unlock(&s->mu);
    return MC_OK;
}

mc_status mc_stream_release_result(mc_stream *s, const mc_stream_result *r)
{
    if (!stream_ok(s)) return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_stream_release_result: s is NULL or not a stream");
    if (!r) return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_stream_release_result: r is NULL");
    if (r->slot >= s->nslots)
        return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_stream_release_result: slot %u of %u does not exist", r->slot,
                        s->nslots);
    pthread_mutex_lock(&s->mu);
    mc__slot *sl = &s->slots[r->slot];
    if (sl->state != MC__SLOT_HELD || sl->seq != r->sequence) {
        pthread_mutex_unlock(&s->mu);
        return mc__fail(MC_ERR_INVALID_ARGUMENT,
                        "mc_stream_release_result: item %llu in slot %u is not a result pulled and not yet released",
                        (unsigned long long)r->sequence, r->slot);
    }
    free_slot(s, sl);
    pthread_mutex_unlock(&s->mu);
    return MC_OK;
}

mc_status mc_stream_close(mc_stream *s, bool drain)
{
    if (!stream_ok(s)) return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_stream_close: s is NULL or not a stream");
    if (mc__stream_on_thread(s))
        return mc__fail(MC_ERR_INVALID_STATE, "mc_stream_close: not from the result callback of stream '%s'", s->label);
    pthread_mutex_lock(&s->mu);
    s->closed = true;
    atomic_store(&s->stop_spin, 1);
    if (!drain) s->cancel = true;
    pthread_cond_broadcast(&s->free_cv);
    pthread_cond_broadcast(&s->work_cv);
    pthread_cond_broadcast(&s->ready_cv);
    if (s->ops->wake) s->ops->wake(s);
    while (!idle(s)) pthread_cond_wait(&s->idle_cv, &s->mu);
    pthread_cond_broadcast(&s->ready_cv);
    pthread_mutex_unlock(&s->mu);
    return MC_OK;
}

mc_status mc_stream_get_stats(const mc_stream *s, mc_stream_stats *out)
{
    if (!stream_ok(s)) return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_stream_get_stats: s is NULL or not a stream");
    if (!out) return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_stream_get_stats: out is NULL");
    mc_stream *m = (mc_stream *)s;
    pthread_mutex_lock(&m->mu);
    *out = m->st;
    if (m->ops->stats) m->ops->stats(m, out);
    out->slots_in_use = m->nslots - m->free_slots.count;
    pthread_mutex_unlock(&m->mu);
    return MC_OK;
}

mc_device *mc_stream_device(const mc_stream *s)
{
    return stream_ok(s) ? s->ops->device(s) : NULL;
}

/* ---- for the isolated stream's worker ------------------------------------------ */

mc_status mc__stream_set_sequence(mc_stream *s, uint64_t next)
{
    if (!stream_ok(s) || next == 0) return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc__stream_set_sequence: bad argument");
    pthread_mutex_lock(&s->submit_mu);
    s->next_seq = next - 1;
    pthread_mutex_unlock(&s->submit_mu);
    return MC_OK;
}

bool mc__stream_dead(mc_stream *s, mc_status *status, char *why, size_t cap)
{
    if (!stream_ok(s)) return false;
    pthread_mutex_lock(&s->mu);
    bool dead = s->dead;
    if (dead) {
        if (status) *status = s->dead_status;
        if (why && cap) snprintf(why, cap, "%s", s->dead_message);
    }
    pthread_mutex_unlock(&s->mu);
    return dead;
}
