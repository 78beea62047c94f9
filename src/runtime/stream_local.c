/*
 * DOC: The local stream
 *
 * The back end of mc_stream (runtime/stream_ops.h) that runs items on a device
 * of this process. The front end (stream.c) keeps the book, the order and
 * the delivery; what this file owns:
 *
 *  - the slots' memory: an input and an output buffer per slot (shared
 *    storage), replaced by new ones after a device loss;
 *  - the binding: setup's passes, checked, their bytes and labels copied;
 *  - submission: each item is one command buffer, under submit_mu (so
 *    commit order is sequence order and the timeline only moves forward):
 *    the chain of passes (replayed from the slot's command list, recorded
 *    once per slot and binding), then a signal of its lane's timeline
 *    event to the item's value;
 *  - completion: the stream's thread sleeps on the timeline event for the
 *    oldest item's value (F692), then reads the command buffer's status;
 *    never on a flag the kernel sets: MSL atomics are relaxed-only and
 *    shared-memory coherency is unspecified (F703, F153, F154); the
 *    command-buffer boundary is what orders the device's writes before the
 *    CPU's reads (F705). A failed command buffer never signals: when a wait
 *    runs out (2 ms, doubling while the item runs on) the status is read
 *    anyway, so failures cost the items that succeed nothing (no callback
 *    and no thread hop per item);
 *  - recovery (F681, F687, F695): drain the queues; the first item that
 *    failed is the culprit (it is charged a failure), the ones behind it are
 *    victims; items that completed keep their results. Recreate the queues,
 *    or after a device loss tear the binding down, reopen a device like the
 *    lost one, call setup again and give every slot new buffers (the input
 *    moves across when the item is resubmitted, or when its producer
 *    submits it). Then resubmit every item not yet finished, in order, from
 *    the input still in its slot. A culprit past max_retries, or with an
 *    error no retry mends, is finished with its error. When the device
 *    cannot be rebuilt the stream dies. With MC_STREAM_NO_REOPEN a lost
 *    device kills the stream at once (its process is replaced:
 *    stream_isolated.c).
 */
#include "runtime/stream_ops.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Recoveries in a row that make no progress (no culprit charged, the
 * device not rebuilt) before the stream gives up. */
#define MAX_FRUITLESS 8u
/* The stream's thread looks at the status of its oldest item when a wait
 * on the timeline runs this long (doubling while the item runs on). */
#define MIN_SLICE_NS 2000000ull
#define MAX_SLICE_NS 100000000ull
#define BACKOFF_INITIAL_MS 100.0
#define BACKOFF_MAX_MS 5000.0

/* A queue and its timeline. Items go to lane (sequence - 1) % nlanes; each
 * lane's values only move forward, as each lane runs in commit order. */
typedef struct lane {
    mc_queue *queue;
    mc_event *timeline;
    uint64_t next_value;
} lane;

typedef struct local_slot {
    mc_buffer *in, *out;           /* what the slot's item uses */
    mc_buffer *next_in, *next_out; /* made on a reopened device; swapped in at acquire or commit */
    uint64_t value;                /* timeline value of its command buffer in flight */
    mc_cmdbuf *cb;                 /* in flight: our reference */
    uint32_t lane;                 /* of cb (and value) */
    mc_cmdlist *list;              /* the chain recorded for in/out below (see slot_list) */
    const mc_buffer *list_in, *list_out;
    uint32_t list_epoch; /* the binding it was recorded from */
    uint32_t failures;   /* failures it caused itself (not as a victim) */
} local_slot;

typedef struct local {
    local_slot *slots;
    /* The device and what lives on it. Changed only by the stream's thread
     * while it holds submit_mu; producers use them under submit_mu. */
    mc_device *dev;
    mc_device_info info;
    lane lanes[MC_STREAM_MAX_LANES];
    uint32_t nlanes;
    mc_stream_binding bind;
    bool bound;
    bool lists;          /* replay a per-slot command list (MC_STREAM_RECORD_EACH clears it) */
    uint32_t bind_epoch; /* counts binds: a slot's list from an older one is stale */
    char *pass_label[MC_STREAM_MAX_PASSES];
    uint8_t *bytes[MC_STREAM_MAX_PASSES][MC_MAX_BUFFER_ARGS];
    mc__device_like like; /* how to reopen the device, its pending faults carried (after the first loss) */
    bool have_like;

    /* Under the stream's mu. */
    bool broken;            /* a commit failed: commit nothing until recovered */
    mc_status commit_error; /* the device error that refused it */
    uint32_t fruitless;     /* recoveries in a row without progress */
    uint32_t in_flight;
    _Atomic uint32_t nflight; /* in_flight, for the stream's thread to spin on */

    /* The stream's thread only: how long the oldest item's next wait is. */
    uint64_t slice, slice_value;
} local;

static local *local_of(const mc_stream *s)
{
    return s->be;
}

static bool recoverable(mc_status st)
{
    /* Refused work or a broken resource fails the same way every time. */
    return mc_status_is_device_error(st) && st != MC_ERR_NOT_PERMITTED && st != MC_ERR_INVALID_RESOURCE;
}

/* Under mu: buffers made on a reopened device replace the slot's. With
 * copy, the input written on the old device moves across. */
static void migrate(mc_stream *s, uint32_t i, bool copy)
{
    mc__slot *sl = &s->slots[i];
    local_slot *ls = &local_of(s)->slots[i];
    if (ls->next_in) {
        void *host = mc_buffer_contents(ls->next_in);
        if (copy && sl->in_host) memcpy(host, sl->in_host, s->desc.item_size);
        mc_buffer_release(ls->in);
        ls->in = ls->next_in;
        sl->in_host = host;
        ls->next_in = NULL;
    }
    if (ls->next_out) {
        mc_buffer_release(ls->out);
        ls->out = ls->next_out;
        sl->out_host = mc_buffer_contents(ls->out);
        ls->next_out = NULL;
    }
}

/* ---- the binding -------------------------------------------------------- */

static mc_status check_binding(mc_stream *s)
{
    local *l = local_of(s);
    const mc_stream_binding *b = &l->bind;
    const char *lb = s->label;
    if (b->pass_count < 1 || b->pass_count > MC_STREAM_MAX_PASSES)
        return mc__fail(MC_ERR_INVALID_ARGUMENT, "stream '%s': setup made %u passes; 1 to %d", lb, b->pass_count,
                        MC_STREAM_MAX_PASSES);
    for (uint32_t p = 0; p < b->pass_count; p++) {
        const mc_stream_pass *ps = &b->passes[p];
        mc_pipeline_info pi;
        if (!mc__object_check(ps->pipeline, MC__TAG_PIPELINE) || mc__object_device(ps->pipeline) != l->dev ||
            mc_pipeline_get_info(ps->pipeline, &pi) != MC_OK)
            return mc__fail(MC_ERR_INVALID_ARGUMENT, "stream '%s': pass %u has no pipeline of this device", lb, p);
        mc_size3 g = ps->threadgroups, t = ps->threads_per_threadgroup;
        if (!g.x || !g.y || !g.z)
            return mc__fail(MC_ERR_INVALID_ARGUMENT,
                            "stream '%s': pass %u: threadgroups (%u,%u,%u) has a zero dimension", lb, p, g.x, g.y, g.z);
        uint64_t threads = (uint64_t)t.x * t.y * t.z;
        uint32_t max = pi.max_total_threads_per_threadgroup;
        if (!threads || (max && threads > max))
            return mc__fail(MC_ERR_INVALID_ARGUMENT,
                            "stream '%s': pass %u: threads_per_threadgroup (%u,%u,%u); the pipeline allows 1 to %u", lb,
                            p, t.x, t.y, t.z, max);
        for (uint32_t i = 0; i < MC_MAX_BUFFER_ARGS; i++) {
            const mc_stream_arg *a = &ps->args[i];
            switch (a->kind) {
            case MC_STREAM_ARG_NONE:
            case MC_STREAM_ARG_SEQUENCE: break;
            case MC_STREAM_ARG_INPUT:
                if (a->offset >= s->desc.item_size)
                    return mc__fail(MC_ERR_INVALID_ARGUMENT,
                                    "stream '%s': pass %u slot %u: input offset %zu is past the item's %zu bytes", lb,
                                    p, i, a->offset, s->desc.item_size);
                break;
            case MC_STREAM_ARG_OUTPUT:
                if (!s->desc.result_size)
                    return mc__fail(MC_ERR_INVALID_ARGUMENT,
                                    "stream '%s': pass %u slot %u binds the output, but result_size is 0", lb, p, i);
                if (a->offset >= s->desc.result_size)
                    return mc__fail(MC_ERR_INVALID_ARGUMENT,
                                    "stream '%s': pass %u slot %u: output offset %zu is past the result's %zu bytes",
                                    lb, p, i, a->offset, s->desc.result_size);
                break;
            case MC_STREAM_ARG_BUFFER:
                if (!mc__object_check(a->buffer, MC__TAG_BUFFER) || mc__object_device(a->buffer) != l->dev)
                    return mc__fail(MC_ERR_INVALID_ARGUMENT,
                                    "stream '%s': pass %u slot %u is not a buffer of this device", lb, p, i);
                if (a->offset > mc_buffer_size(a->buffer))
                    return mc__fail(MC_ERR_INVALID_ARGUMENT,
                                    "stream '%s': pass %u slot %u: offset %zu past the buffer's %zu bytes", lb, p, i,
                                    a->offset, mc_buffer_size(a->buffer));
                break;
            case MC_STREAM_ARG_BYTES:
                if (!a->bytes || a->len == 0 || a->len > MC_MAX_BYTES_ARG)
                    return mc__fail(MC_ERR_INVALID_ARGUMENT,
                                    "stream '%s': pass %u slot %u: bytes need a pointer and 1 to %d bytes", lb, p, i,
                                    MC_MAX_BYTES_ARG);
                break;
            default:
                return mc__fail(MC_ERR_INVALID_ARGUMENT, "stream '%s': pass %u slot %u has unknown kind %d", lb, p, i,
                                (int)a->kind);
            }
        }
        for (uint32_t i = 0; i < MC_MAX_THREADGROUP_MEMORY_ARGS; i++)
            if (ps->threadgroup_memory[i] > l->info.threadgroup_memory_size)
                return mc__fail(MC_ERR_INVALID_ARGUMENT,
                                "stream '%s': pass %u: threadgroup memory slot %u: %zu bytes, the device has %llu", lb,
                                p, i, ps->threadgroup_memory[i], (unsigned long long)l->info.threadgroup_memory_size);
    }
    return MC_OK;
}

/* The slots' lists hold the binding's pipelines and buffers: they go
 * before teardown, so a lost device is let go of whole. A command buffer in
 * flight keeps its own reference to the list it executes. */
static void drop_lists(mc_stream *s)
{
    local *l = local_of(s);
    for (uint32_t i = 0; l->slots && i < s->nslots; i++) {
        mc_cmdlist_release(l->slots[i].list);
        l->slots[i].list = NULL;
        l->slots[i].list_in = l->slots[i].list_out = NULL;
    }
}

static void unbind(mc_stream *s)
{
    local *l = local_of(s);
    drop_lists(s);
    if (l->bound) s->desc.teardown(s->desc.user, &l->bind);
    l->bound = false;
    memset(&l->bind, 0, sizeof l->bind);
    for (uint32_t p = 0; p < MC_STREAM_MAX_PASSES; p++) {
        free(l->pass_label[p]);
        l->pass_label[p] = NULL;
        for (uint32_t i = 0; i < MC_MAX_BUFFER_ARGS; i++) {
            free(l->bytes[p][i]);
            l->bytes[p][i] = NULL;
        }
    }
}

/* Calls setup on the device, checks what it made and copies its bytes and
 * labels. */
static mc_status bind(mc_stream *s)
{
    local *l = local_of(s);
    memset(&l->bind, 0, sizeof l->bind);
    mc__clear_error(); /* what setup says, not what failed before it */
    mc_status st = s->desc.setup(s->desc.user, l->dev, &l->bind);
    char why[256];
    if (st != MC_OK) {
        snprintf(why, sizeof why, "%s", mc_last_error());
        memset(&l->bind, 0, sizeof l->bind);
        return mc__fail(st, "stream '%s': setup failed: %s", s->label, why[0] ? why : mc_status_text(st));
    }
    l->bound = true;
    if ((st = check_binding(s)) != MC_OK) {
        snprintf(why, sizeof why, "%s", mc_last_error());
        unbind(s);
        return mc__fail(st, "%s", why);
    }
    for (uint32_t p = 0; p < l->bind.pass_count; p++) {
        const mc_stream_pass *ps = &l->bind.passes[p];
        l->pass_label[p] = ps->label ? mc__strdup(ps->label) : mc__asprintf("%s pass %u", s->label, p);
        bool ok = l->pass_label[p] != NULL;
        for (uint32_t i = 0; i < MC_MAX_BUFFER_ARGS && ok; i++) {
            const mc_stream_arg *a = &ps->args[i];
            if (a->kind != MC_STREAM_ARG_BYTES) continue;
            l->bytes[p][i] = mc__malloc(a->len);
            if (!l->bytes[p][i]) ok = false;
            else memcpy(l->bytes[p][i], a->bytes, a->len);
        }
        if (!ok) {
            unbind(s);
            return mc__fail(MC_ERR_NO_MEMORY, "stream '%s': out of host memory", s->label);
        }
    }
    l->bind_epoch++;
    l->lists = !(s->desc.flags & MC_STREAM_RECORD_EACH);
    for (uint32_t p = 0; p < l->bind.pass_count; p++)
        for (uint32_t i = 0; i < MC_MAX_BUFFER_ARGS; i++)
            if (l->bind.passes[p].args[i].kind == MC_STREAM_ARG_SEQUENCE) l->lists = false;
    return MC_OK;
}

/* ---- objects on the device ---------------------------------------------- */

static mc_status make_buffer(local *l, size_t size, const char *what, mc_buffer **out)
{
    mc_buffer_desc bd = MC_BUFFER_DESC_INIT;
    bd.size = size;
    bd.storage = MC_STORAGE_SHARED;
    bd.label = what;
    return mc_buffer_create(l->dev, &bd, out);
}

static void drop_lanes(local *l)
{
    for (uint32_t i = 0; i < l->nlanes; i++) {
        mc_queue_release(l->lanes[i].queue);
        mc_event_release(l->lanes[i].timeline);
        memset(&l->lanes[i], 0, sizeof l->lanes[i]);
    }
}

static void wait_lanes_idle(local *l)
{
    for (uint32_t i = 0; i < l->nlanes; i++)
        if (l->lanes[i].queue) mc_queue_wait_idle(l->lanes[i].queue, MC_WAIT_FOREVER);
}

/* The queues and fresh timeline events (each recovery starts new ones, so
 * a late wake-up from a command buffer of an old queue cannot reach them). */
static mc_status make_queue(mc_stream *s)
{
    local *l = local_of(s);
    drop_lanes(l);
    mc_queue_desc qd = {s->label};
    mc_status st = MC_OK;
    for (uint32_t i = 0; i < l->nlanes && st == MC_OK; i++) {
        st = mc_queue_create(l->dev, &qd, &l->lanes[i].queue);
        if (st == MC_OK) st = mc_event_create(l->dev, 0, &l->lanes[i].timeline);
    }
    return st;
}

/* New buffers for every slot on the device: taken at once by the slots in
 * no one's hands (called before the stream's thread runs), else when the
 * slot is next acquired or its item (re)submitted. */
static mc_status make_slot_buffers(mc_stream *s, bool initial)
{
    local *l = local_of(s);
    for (uint32_t i = 0; i < s->nslots; i++) {
        mc_buffer *in = NULL, *out = NULL;
        mc_status st = make_buffer(l, s->desc.item_size, "stream input", &in);
        if (st == MC_OK && s->desc.result_size) st = make_buffer(l, s->desc.result_size, "stream output", &out);
        if (st != MC_OK) {
            mc_buffer_release(in);
            mc_buffer_release(out);
            return st;
        }
        pthread_mutex_lock(&s->mu);
        local_slot *ls = &l->slots[i];
        mc_buffer_release(ls->next_in);
        mc_buffer_release(ls->next_out);
        ls->next_in = in;
        ls->next_out = out;
        if (initial) migrate(s, i, false);
        pthread_mutex_unlock(&s->mu);
    }
    return MC_OK;
}

/* Lets go of a (lost) device, keeping how to open one like it. Injected
 * faults scheduled on it but not yet reached move to the next one, so "the
 * Nth command buffer from now" keeps its meaning across a reopen (as the
 * runner does). */
static void drop_device(mc_stream *s)
{
    local *l = local_of(s);
    unbind(s);
    drop_lanes(l);
    if (!l->dev) return;
    l->have_like = mc__device_take_like(l->dev, &l->like) == MC_OK;
    mc_device_release(l->dev);
    l->dev = NULL;
}

/* Opens a device like the one lost: same kind, index, time limit, workers. */
static mc_status open_device(mc_stream *s)
{
    local *l = local_of(s);
    if (!l->have_like) return mc__fail(MC_ERR_DEVICE_LOST, "stream '%s': no device to reopen", s->label);
    mc_device *d;
    mc_status st = mc__device_reopen_like(&l->like, &d);
    if (st != MC_OK) return st;
    l->dev = d;
    mc_device_get_info(d, &l->info);
    pthread_mutex_lock(&s->mu);
    s->st.device_reopens++;
    pthread_mutex_unlock(&s->mu);
    mc__log(MC_LOG_INFO, "stream.device_reopened", "stream '%s': reopened %s:%d", s->label,
            mc_device_kind_name(l->info.kind), l->info.index);
    return MC_OK;
}

/* ---- submission ------------------------------------------------------- */

/* Binds and dispatches pass p of the chain for slot i's buffers on pass,
 * which is a command buffer's compute pass or a command list's recording. */
static mc_status record_pass(mc_stream *s, uint32_t i, uint32_t p, mc_pass *pass)
{
    local *l = local_of(s);
    const local_slot *ls = &l->slots[i];
    const mc_stream_pass *ps = &l->bind.passes[p];
    mc_status st = mc_pass_set_pipeline(pass, ps->pipeline);
    for (uint32_t k = 0; k < MC_MAX_BUFFER_ARGS && st == MC_OK; k++) {
        const mc_stream_arg *a = &ps->args[k];
        switch (a->kind) {
        case MC_STREAM_ARG_INPUT: st = mc_pass_set_buffer(pass, k, ls->in, a->offset); break;
        case MC_STREAM_ARG_OUTPUT: st = mc_pass_set_buffer(pass, k, ls->out, a->offset); break;
        case MC_STREAM_ARG_BUFFER: st = mc_pass_set_buffer(pass, k, a->buffer, a->offset); break;
        case MC_STREAM_ARG_BYTES: st = mc_pass_set_bytes(pass, k, l->bytes[p][k], a->len); break;
        case MC_STREAM_ARG_SEQUENCE: st = mc_pass_set_bytes(pass, k, &s->slots[i].seq, sizeof s->slots[i].seq); break;
        default: break;
        }
    }
    for (uint32_t k = 0; k < MC_MAX_THREADGROUP_MEMORY_ARGS && st == MC_OK; k++)
        if (ps->threadgroup_memory[k]) st = mc_pass_set_threadgroup_memory(pass, k, ps->threadgroup_memory[k]);
    if (st == MC_OK) st = mc_pass_dispatch(pass, ps->threadgroups, ps->threads_per_threadgroup);
    return st;
}

/* Slot i's chain as a command list for its current buffers, recorded when
 * the slot first needs it and again after a rebind or when the slot's
 * buffers were replaced (a reopened device). Under submit_mu. NULL with
 * *st MC_OK: this binding is recorded per item. */
static mc_cmdlist *slot_list(mc_stream *s, uint32_t i, mc_status *st)
{
    local *l = local_of(s);
    local_slot *ls = &l->slots[i];
    *st = MC_OK;
    if (!l->lists) return NULL;
    if (ls->list && ls->list_epoch == l->bind_epoch && ls->list_in == ls->in && ls->list_out == ls->out)
        return ls->list;
    mc_cmdlist_release(ls->list);
    ls->list = NULL;
    mc_cmdlist_desc ld = MC_CMDLIST_DESC_INIT;
    ld.label = s->label;
    ld.max_commands = l->bind.pass_count;
    mc_cmdlist *list;
    mc_pass *pass;
    *st = mc_cmdlist_create(l->dev, &ld, &list);
    if (*st != MC_OK) return NULL;
    *st = mc_cmdlist_begin(list, &pass);
    for (uint32_t p = 0; p < l->bind.pass_count && *st == MC_OK; p++) {
        /* passes run in order, each seeing what the one before wrote */
        if (p) *st = mc_pass_barrier(pass);
        if (*st == MC_OK) *st = record_pass(s, i, p, pass);
    }
    if (*st == MC_OK) *st = mc_cmdlist_end(list);
    if (*st != MC_OK) {
        mc_cmdlist_release(list);
        return NULL;
    }
    ls->list = list;
    ls->list_in = ls->in;
    ls->list_out = ls->out;
    ls->list_epoch = l->bind_epoch;
    return list;
}

static mc_status record_item(mc_stream *s, uint32_t i, mc_cmdbuf *cb, mc_event *timeline, uint64_t value,
                             bool *used_list)
{
    local *l = local_of(s);
    mc_status st = MC_OK;
    mc_cmdlist *list = slot_list(s, i, &st);
    *used_list = list != NULL;
    if (list) {
        st = mc_cmdbuf_execute_cmdlist(cb, list, 0, MC_CMDLIST_ALL);
    } else if (st == MC_OK || !mc_status_is_device_error(st)) {
        /* No list for this binding, or the device cannot make one (it says
         * why once): record the passes. */
        if (st != MC_OK) {
            mc__log(MC_LOG_WARN, "stream.no_list", "stream '%s': recording each item: %s", s->label, mc_last_error());
            l->lists = false;
        }
        st = MC_OK;
        for (uint32_t p = 0; p < l->bind.pass_count && st == MC_OK; p++) {
            mc_pass *pass;
            st = mc_cmdbuf_begin_pass(cb, l->pass_label[p], &pass);
            if (st == MC_OK) st = record_pass(s, i, p, pass);
            if (st == MC_OK) st = mc_pass_end(pass);
        }
    }
    /* Last: when the event reaches value, the device is done with the slot. */
    if (st == MC_OK) st = mc_cmdbuf_signal_event(cb, timeline, value);
    return st;
}

/* Records and commits the item in slot i. Under submit_mu, not mu. */
static mc_status commit_item(mc_stream *s, uint32_t i)
{
    local *l = local_of(s);
    mc__slot *sl = &s->slots[i];
    local_slot *ls = &l->slots[i];
    uint32_t li = (uint32_t)((sl->seq - 1) % l->nlanes);
    lane *ln = &l->lanes[li];
    if (!ln->queue || !ln->timeline) return mc__fail(MC_ERR_DEVICE_LOST, "stream '%s' has no queue", s->label);
    uint64_t value = ln->next_value + 1;
    char label[192];
    snprintf(label, sizeof label, "%s item %llu", s->label, (unsigned long long)sl->seq);
    mc_cmdbuf_desc cd = MC_CMDBUF_DESC_INIT;
    cd.label = label;
    /* The stream keeps the slot's buffers until the item is finished and
     * the binding's until the queue is idle: no reference per use (F676). */
    cd.flags = MC_CMDBUF_UNRETAINED_REFERENCES;
    mc_cmdbuf *cb;
    mc_status st = mc_cmdbuf_create(ln->queue, &cd, &cb);
    if (st != MC_OK) return st;
    bool used_list;
    st = record_item(s, i, cb, ln->timeline, value, &used_list);
    if (st == MC_OK) st = mc_cmdbuf_commit(cb);
    if (st != MC_OK) {
        mc_cmdbuf_release(cb);
        return st;
    }
    ln->next_value = value;
    pthread_mutex_lock(&s->mu);
    ls->cb = cb;
    ls->lane = li;
    ls->value = value;
    sl->attempts++;
    sl->state = MC__SLOT_FLIGHT;
    s->st.commits++;
    if (used_list) s->st.list_commits++;
    if (sl->attempts > 1) s->st.replays++;
    if (++l->in_flight > s->st.max_in_flight) s->st.max_in_flight = l->in_flight;
    atomic_store_explicit(&l->nflight, l->in_flight, memory_order_relaxed);
    pthread_cond_signal(&s->work_cv);
    pthread_mutex_unlock(&s->mu);
    return MC_OK;
}

/* A commit failed. A device error stops commits until the stream's thread
 * recovers; anything else (the binding cannot be recorded) fails only this
 * item, with the reason. Under submit_mu. */
static void commit_failed(mc_stream *s, uint32_t i, mc_status st)
{
    local *l = local_of(s);
    char why[256];
    snprintf(why, sizeof why, "%s", mc_last_error());
    pthread_mutex_lock(&s->mu);
    if (mc_status_is_device_error(st)) {
        l->broken = true;
        l->commit_error = st;
    } else {
        s->slots[i].state = MC__SLOT_FINISHED;
        mc__stream_set_message(&s->slots[i], st, why);
    }
    pthread_cond_signal(&s->work_cv);
    pthread_mutex_unlock(&s->mu);
}

/* ---- recovery ----------------------------------------------------------- */

/* Sleeps up to ms, or less if the stream is cancelled or released. */
static void backoff(mc_stream *s, double ms)
{
    uint64_t until = mc__now_ns() + (uint64_t)(ms * 1e6);
    pthread_mutex_lock(&s->mu);
    while (!s->cancel && !s->quit && mc__cond_wait_until(&s->work_cv, &s->mu, until)) {
    }
    pthread_mutex_unlock(&s->mu);
}

static bool stopping(mc_stream *s)
{
    pthread_mutex_lock(&s->mu);
    bool stop = s->cancel || s->quit;
    pthread_mutex_unlock(&s->mu);
    return stop;
}

static double backoff_delay(uint32_t n)
{
    double d = BACKOFF_INITIAL_MS;
    for (uint32_t i = 1; i < n && d < BACKOFF_MAX_MS; i++) d *= 2;
    return MC__MIN(d, BACKOFF_MAX_MS);
}

/* The device cannot be had back. Under submit_mu, not mu. */
static void die(mc_stream *s, mc_status st, const char *why)
{
    pthread_mutex_lock(&s->mu);
    mc__stream_die_locked(s, st, why);
    pthread_mutex_unlock(&s->mu);
}

static bool device_lost(const local *l)
{
    return !l->dev || mc__device_is_lost(l->dev);
}

/* Recreates what the failure broke. */
static mc_status rebuild(mc_stream *s, bool lost)
{
    local *l = local_of(s);
    mc_status st = MC_OK;
    if (lost || !l->dev) {
        drop_device(s);
        st = open_device(s);
        if (st == MC_OK) st = bind(s);
        if (st == MC_OK) st = make_slot_buffers(s, false);
    }
    /* The only recovery for a queue (F687). */
    if (st == MC_OK) st = make_queue(s);
    return st;
}

/* Settles every item in flight once the queues are idle: those that
 * completed are FINISHED, the failed ones QUEUED again. The first failed one
 * is the culprit (*culprit_seq; 0: a commit was refused), charged one
 * failure. Returns the cause (*lost: the device with it). Under submit_mu,
 * not mu. */
static mc_status settle(mc_stream *s, char *why, size_t cap, bool *lost, uint32_t *fruitless, uint64_t *culprit_seq)
{
    local *l = local_of(s);
    wait_lanes_idle(l);
    pthread_mutex_lock(&s->mu);
    mc__slot *culprit = NULL;
    mc_status cause = MC_OK;
    bool progress = false;
    why[0] = '\0';
    for (uint32_t k = 0; k < s->order.count; k++) {
        uint32_t i = mc__ring_at(&s->order, k);
        mc__slot *sl = &s->slots[i];
        local_slot *ls = &l->slots[i];
        if (sl->state != MC__SLOT_FLIGHT) continue;
        mc_cmdbuf_wait(ls->cb, MC_WAIT_FOREVER); /* the queue is idle: at once */
        const char *msg = NULL;
        mc_status st = mc_cmdbuf_status(ls->cb, &msg);
        mc__stream_set_message(sl, st, msg);
        mc_cmdbuf_release(ls->cb);
        ls->cb = NULL;
        l->in_flight--;
        atomic_store_explicit(&l->nflight, l->in_flight, memory_order_relaxed);
        if (st == MC_OK) {
            sl->state = MC__SLOT_FINISHED; /* ran before or beside the failure: its result stands */
            progress = true;
            continue;
        }
        sl->state = MC__SLOT_QUEUED;
        if (!culprit) {
            culprit = sl;
            cause = st;
            snprintf(why, cap, "%s", sl->message);
        }
    }
    if (!culprit) {
        cause = l->commit_error != MC_OK ? l->commit_error : MC_ERR_INTERNAL;
        snprintf(why, cap, "a commit was refused: %s", mc_status_text(cause));
    }
    uint32_t *failures = culprit ? &l->slots[culprit - s->slots].failures : NULL;
    if (culprit && cause != MC_ERR_ACCESS_REVOKED) {
        (*failures)++; /* progress: the item fails for good after max_retries */
        l->fruitless = 0;
    } else {
        l->fruitless++; /* the system's doing (F146, F685), not the item's */
    }
    l->commit_error = MC_OK;
    l->broken = true;
    s->st.recoveries++;
    s->st.last_failure = cause;
    *lost = cause == MC_ERR_DEVICE_LOST || device_lost(l);
    if (culprit && (!recoverable(cause) || *failures > s->desc.max_retries)) {
        /* finished with its error; the others go on */
        culprit->state = MC__SLOT_FINISHED;
        mc__log(MC_LOG_WARN, "stream.item_failed", "stream '%s': item %llu failed %u time%s: %s: %s", s->label,
                (unsigned long long)culprit->seq, *failures, *failures == 1 ? "" : "s", mc_status_name(cause), why);
    }
    *fruitless = l->fruitless;
    if (progress) l->fruitless = 0; /* items delivered: the next failure starts a new count */
    *culprit_seq = culprit ? culprit->seq : 0;
    pthread_mutex_unlock(&s->mu);
    return cause;
}

/* Resubmits, in order, what is not finished. Under submit_mu, not mu. */
static void resubmit(mc_stream *s)
{
    local *l = local_of(s);
    uint32_t todo[MC_STREAM_MAX_SLOTS], ntodo = 0;
    pthread_mutex_lock(&s->mu);
    if (s->cancel || s->quit) {
        pthread_mutex_unlock(&s->mu);
        return;
    }
    l->broken = false;
    for (uint32_t k = 0; k < s->order.count; k++) {
        uint32_t i = mc__ring_at(&s->order, k);
        if (s->slots[i].state == MC__SLOT_QUEUED) todo[ntodo++] = i;
    }
    pthread_mutex_unlock(&s->mu);
    for (uint32_t k = 0; k < ntodo; k++) {
        pthread_mutex_lock(&s->mu);
        migrate(s, todo[k], true);
        pthread_mutex_unlock(&s->mu);
        mc_status st = commit_item(s, todo[k]);
        if (st == MC_OK) continue;
        commit_failed(s, todo[k], st);
        pthread_mutex_lock(&s->mu);
        bool broken = l->broken;
        pthread_mutex_unlock(&s->mu);
        if (broken) break; /* the rest waits for the next recovery */
    }
}

/* The oldest item failed, or a commit was refused: settle every item in
 * flight, decide, rebuild and resubmit. On the stream's thread, without mu. */
static void recover(mc_stream *s)
{
    local *l = local_of(s);
    pthread_mutex_lock(&s->submit_mu);
    char why[256];
    bool lost;
    uint32_t fruitless;
    uint64_t culprit;
    mc_status cause = settle(s, why, sizeof why, &lost, &fruitless, &culprit);
    bool no_reopen = s->desc.flags & MC_STREAM_NO_REOPEN;
    if ((lost && no_reopen) || fruitless > MAX_FRUITLESS) {
        die(s, lost && no_reopen ? MC_ERR_DEVICE_LOST : cause, why);
        pthread_mutex_unlock(&s->submit_mu);
        return;
    }
    mc__log(MC_LOG_WARN, "stream.recovering", "stream '%s': %s%s in item %llu: %s; %s and resubmitting", s->label,
            mc_status_name(cause), culprit ? "" : " at commit", (unsigned long long)culprit, why,
            lost ? "reopening the device" : "recreating the queue");
    if (cause == MC_ERR_ACCESS_REVOKED) backoff(s, backoff_delay(fruitless)); /* F146, F685 */
    for (uint32_t tries = 1;; tries++) {
        if (stopping(s)) break; /* nothing more goes to the device: the rest is cancelled */
        mc_status st = rebuild(s, lost);
        if (st == MC_OK) {
            resubmit(s);
            break;
        }
        char reason[256];
        snprintf(reason, sizeof reason, "rebuilding after %s: %s", mc_status_name(cause), mc_last_error());
        if (tries > MAX_FRUITLESS || (!mc_status_is_device_error(st) && st != MC_ERR_NOT_FOUND)) {
            die(s, st, reason);
            break;
        }
        lost = lost || st == MC_ERR_DEVICE_LOST || device_lost(l);
        if (lost && no_reopen) {
            die(s, MC_ERR_DEVICE_LOST, reason);
            break;
        }
        backoff(s, backoff_delay(tries));
    }
    pthread_mutex_unlock(&s->submit_mu);
}

/* ---- the stream's thread -------------------------------------------------- */

/* Waits for the command buffer in flight: on the timeline event (F692),
 * which its last command signals. A failed command buffer never signals:
 * when a wait of *slice runs out, its status says whether it finished, and
 * the next wait is twice as long (up to MAX_SLICE_NS), so a failure is seen
 * within MIN_SLICE_NS, or half the time the item has run, at no cost to
 * the items that succeed. False when it is still running. */
static bool wait_done(mc_event *ev, uint64_t value, mc_cmdbuf *cb, uint64_t *slice)
{
    mc_status ws = mc_event_wait(ev, value, *slice);
    if (ws == MC_OK) return mc_cmdbuf_wait(cb, MC_WAIT_FOREVER) == MC_OK;
    /* Timed out: look once. The device cannot wait (lost): wait on the
     * command buffer itself. */
    if (mc_cmdbuf_wait(cb, ws == MC_ERR_WAIT_TIMEOUT ? 0 : *slice) == MC_OK) return true;
    *slice = MC__MIN(*slice * 2, MAX_SLICE_NS);
    return false;
}

static void local_step(mc_stream *s)
{
    local *l = local_of(s);
    if (!s->order.count) {
        /* Idle: the next item usually comes within microseconds (one slot,
         * or a producer just behind): look for its commit before sleeping,
         * so the producer does not pay for a wake-up. */
        pthread_mutex_unlock(&s->mu);
        mc__stream_spin_for(s, &l->nflight, mc__deadline(MC__STREAM_SPIN_NS));
        pthread_mutex_lock(&s->mu);
        if (!s->order.count && !s->quit) pthread_cond_wait(&s->work_cv, &s->mu);
        return;
    }
    uint32_t head = mc__ring_at(&s->order, 0);
    mc__slot *h = &s->slots[head];
    local_slot *lh = &l->slots[head];
    if (h->state == MC__SLOT_QUEUED) {
        if (s->dead) {
            h->state = MC__SLOT_FINISHED;
            mc__stream_set_message(h, s->dead_status, s->dead_message);
        } else if (!l->broken) {
            pthread_cond_wait(&s->work_cv, &s->mu); /* its producer is committing it */
        } else {
            pthread_mutex_unlock(&s->mu);
            recover(s);
            pthread_mutex_lock(&s->mu);
        }
        return;
    }
    /* FLIGHT: the event and the queue are those of the current epoch,
     * which only this thread replaces. */
    mc_event *ev = l->lanes[lh->lane].timeline;
    uint64_t value = lh->value;
    mc_cmdbuf *cb = lh->cb;
    pthread_mutex_unlock(&s->mu);
    if (value != l->slice_value) {
        l->slice = MIN_SLICE_NS;
        l->slice_value = value;
    }
    bool done = wait_done(ev, value, cb, &l->slice);
    mc_status st = done ? mc_cmdbuf_status(cb, NULL) : MC_OK;
    if (done && st != MC_OK) {
        recover(s);
        pthread_mutex_lock(&s->mu);
        return;
    }
    pthread_mutex_lock(&s->mu);
    if (!done) return;
    lh->cb = NULL;
    l->in_flight--;
    atomic_store_explicit(&l->nflight, l->in_flight, memory_order_relaxed);
    h->state = MC__SLOT_FINISHED;
    mc__stream_set_message(h, MC_OK, NULL);
    l->fruitless = 0;
    mc_cmdbuf_release(cb);
}

/* ---- the operations ------------------------------------------------------- */

static mc_status local_check(const mc_stream_desc *d, mc_device_info *info)
{
    if (!mc__object_check(d->device, MC__TAG_DEVICE))
        return mc__fail(MC_ERR_INVALID_ARGUMENT,
                        "mc_stream_create: desc->device is NULL or not a valid handle (an isolated stream sets "
                        "desc->isolate instead)");
    mc_status st = mc_device_check(d->device);
    if (st == MC_OK) mc_device_get_info(d->device, info);
    return st;
}

static mc_status local_open(mc_stream *s, const mc_stream_desc *desc)
{
    local *l = mc__calloc(1, sizeof *l);
    if (!l) return mc__fail(MC_ERR_NO_MEMORY, "mc_stream_create: out of host memory");
    s->be = l;
    l->slots = mc__calloc(s->nslots, sizeof *l->slots);
    if (!l->slots) return mc__fail(MC_ERR_NO_MEMORY, "mc_stream_create: out of host memory");
    /* 0 lanes: the device's default. Where queues overlap (a CUDA GPU), one
     * lane per slot: small items overlap there (2.23x against 1.78x the naive
     * loop with 3 slots, H100, docs/PERFORMANCE.md); elsewhere one queue. */
    l->nlanes = s->desc.lanes                             ? s->desc.lanes
                : mc__device_queues_overlap(desc->device) ? MC__MIN(s->nslots, MC_STREAM_MAX_LANES)
                                                          : 1;
    l->dev = desc->device;
    mc_device_retain(l->dev);
    mc_device_get_info(l->dev, &l->info);
    mc_status st = bind(s);
    if (st == MC_OK) st = make_slot_buffers(s, true);
    if (st == MC_OK) st = make_queue(s);
    return st;
}

static void local_submit(mc_stream *s, uint32_t i)
{
    local *l = local_of(s);
    pthread_mutex_lock(&s->mu);
    l->slots[i].failures = 0;
    migrate(s, i, true);
    bool now = !l->broken;
    /* Committed at once, the commit wakes the stream's thread; a broken
     * stream's thread must hear of the item now (it recovers, then
     * resubmits it). */
    if (!now) pthread_cond_signal(&s->work_cv);
    pthread_mutex_unlock(&s->mu);
    if (now) {
        mc_status st = commit_item(s, i);
        if (st != MC_OK) commit_failed(s, i, st);
    }
}

static void local_acquired(mc_stream *s, uint32_t i)
{
    migrate(s, i, false);
}

static mc_device *local_device(const mc_stream *s)
{
    mc_stream *m = (mc_stream *)s;
    pthread_mutex_lock(&m->submit_mu);
    mc_device *d = local_of(s)->dev;
    pthread_mutex_unlock(&m->submit_mu);
    return d;
}

static void local_destroy(mc_stream *s)
{
    local *l = local_of(s);
    if (!l) return;
    wait_lanes_idle(l);
    for (uint32_t i = 0; l->slots && i < s->nslots; i++) {
        local_slot *ls = &l->slots[i];
        if (ls->cb) mc_cmdbuf_release(ls->cb);
        mc_buffer_release(ls->in);
        mc_buffer_release(ls->out);
        mc_buffer_release(ls->next_in);
        mc_buffer_release(ls->next_out);
    }
    unbind(s);
    drop_lanes(l);
    mc_device_release(l->dev);
    free(l->slots);
    free(l);
    s->be = NULL;
}

const mc__stream_ops mc__stream_local_ops = {
    .name = "local",
    .check = local_check,
    .open = local_open,
    .submit = local_submit,
    .step = local_step,
    .acquired = local_acquired,
    .device = local_device,
    .destroy = local_destroy,
};
