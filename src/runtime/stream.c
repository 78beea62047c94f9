/*
 * DOC: Streams
 *
 * Fixed-size items between the CPU and a device through N slots of
 * host-visible memory (Apple's triple buffering, F705). What this file owns:
 *
 *  - the slots: each has an input and an output buffer (shared storage) and
 *    is FREE, ACQUIRED by a producer, QUEUED (submitted, not committed),
 *    in FLIGHT, FINISHED (the device is done; waiting for its turn),
 *    DELIVERING (the callback runs), READY (pull mode, waiting to be
 *    pulled) or HELD (pulled, not yet released). A slot is FREE again only
 *    after the device finished with it and its result was delivered, so
 *    memory is bounded by the slots and acquire is the backpressure;
 *  - submission: the sequence number, the timeline value and the commit
 *    are taken under one lock (submit_mu), so commit order is sequence
 *    order and the timeline only moves forward. Each item is one command
 *    buffer: the chain of passes (replayed from the slot's command list,
 *    recorded once per slot and binding), then a signal of the stream's
 *    timeline event to the item's value;
 *  - completion: the stream's own thread sleeps on the timeline event for
 *    the oldest item's value (F692), then reads the command buffer's
 *    status; never on a flag the kernel sets: MSL atomics are relaxed-only
 *    and shared-memory coherency is unspecified (F703, F153, F154); the
 *    command-buffer boundary is what orders the device's writes before the
 *    CPU's reads (F705). A failed command buffer never signals: when a wait
 *    runs out (2 ms, doubling while the item runs on) the status is read
 *    anyway, so failures cost the items that succeed nothing (no callback
 *    and no thread hop per item). Results go out in sequence order, to the
 *    callback on this thread (never a producer's, F143, F680) or to the
 *    pull list;
 *  - recovery (F681, F687, F695): drain the queue; the first item that
 *    failed is the culprit (it is charged a failure), the ones behind it are
 *    victims; items that completed keep their results. Recreate the queue,
 *    or after a device loss tear the binding down, reopen a device of the
 *    same kind and index, call setup again and give every slot new buffers
 *    (the input moves across when the item is resubmitted, or when its
 *    producer submits it). Then resubmit every item not yet finished, in
 *    order, from the input still in its slot. A culprit past max_retries,
 *    or with an error no retry mends, is delivered with its error. When the
 *    device cannot be rebuilt the stream dies: what is left is delivered
 *    with the error, and acquire and submit return it. With
 *    MC_STREAM_NO_REOPEN a lost device kills the stream at once (its
 *    process is replaced: isolate_stream.c).
 *
 * An isolated stream is a different object behind the same handle type:
 * each public call hands it to isolate_stream.c.
 */
#include "runtime/runtime.h"
#include "runtime/isolate.h"
#include "engine/trace.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define STREAM_TAG 0x6d635354u /* "mcST" */

#define DEFAULT_SLOTS 3u
#define DEFAULT_RETRIES 3u
/* Recoveries in a row that make no progress (no culprit charged, the
 * device not rebuilt) before the stream gives up. */
#define MAX_FRUITLESS 8u
/* The stream's thread looks at the status of its oldest item when a wait
 * on the timeline runs this long (doubling while the item runs on). */
#define MIN_SLICE_NS 2000000ull
#define MAX_SLICE_NS 100000000ull
/* acquire and pull look again for this long before they sleep: a slot or
 * a result that comes within microseconds costs no sleep and wake-up on
 * either side (the backends wait the same way). */
#define SPIN_NS 20000ull
#define BACKOFF_INITIAL_MS 100.0
#define BACKOFF_MAX_MS 5000.0

typedef enum slot_state {
    SLOT_FREE = 0,
    SLOT_ACQUIRED,
    SLOT_QUEUED,
    SLOT_FLIGHT,
    SLOT_FINISHED,
    SLOT_DELIVERING,
    SLOT_READY,
    SLOT_HELD
} slot_state;

typedef struct slot {
    slot_state state;
    mc_buffer *in, *out;           /* what the slot's item uses */
    mc_buffer *next_in, *next_out; /* made on a reopened device; swapped in at acquire or commit */
    void *in_host, *out_host;
    uint64_t seq, tag;
    uint64_t value;                /* timeline value of its command buffer in flight */
    mc_cmdbuf *cb;                 /* in flight: our reference */
    uint32_t lane;                 /* of cb (and value) */
    mc_cmdlist *list;              /* the chain recorded for in/out below (see slot_list) */
    const mc_buffer *list_in, *list_out;
    uint32_t list_epoch;           /* the binding it was recorded from */
    uint32_t attempts;             /* command buffers committed for the item */
    uint32_t failures;             /* failures it caused itself (not as a victim) */
    mc_status status;
    char message[256];
} slot;

/* A FIFO of slot indices, at most one entry per slot. */
typedef struct ring {
    uint32_t *v;
    uint32_t head, count, cap;
} ring;

/* A queue and its timeline. Items go to lane (sequence - 1) % nlanes; each
 * lane's values only move forward, as each lane runs in commit order. */
typedef struct lane {
    mc_queue *queue;
    mc_event *timeline;
    uint64_t next_value;
} lane;

typedef struct pending_fault {
    mc_status kind;
    uint64_t nth;
} pending_fault;

struct mc_stream {
    uint32_t tag;
    mc_stream_desc desc; /* defaults resolved */
    char *label;
    uint32_t nslots;
    slot *slots;

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
    pending_fault faults[MC__MAX_FAULTS]; /* injected faults carried to a reopened device */
    size_t nfaults;
    uint64_t next_seq;
    mc_status commit_error; /* a device error that refused a commit */
    uint32_t fruitless;     /* recoveries in a row without progress */

    pthread_mutex_t submit_mu; /* taken before mu */
    pthread_mutex_t mu;        /* everything below, and every slot's state */
    pthread_cond_t free_cv;    /* a slot became free; close */
    pthread_cond_t work_cv;    /* for the stream's thread: an item, close, quit */
    pthread_cond_t ready_cv;   /* pull: a result is ready; close */
    pthread_cond_t idle_cv;    /* every submitted item delivered */
    ring free_slots, order, ready;
    _Atomic uint32_t nfree, nready; /* the rings' counts, for spinning without mu */
    _Atomic uint32_t nflight;       /* in_flight, for the stream's thread to spin on */
    _Atomic int stop_spin;          /* closed or dead: stop spinning */
    bool broken;     /* a commit failed: commit nothing until recovered */
    bool delivering; /* the callback runs */
    bool closed, cancel, quit, dead;
    mc_status dead_status;
    char dead_message[256];
    uint32_t in_flight;
    mc_stream_stats st;

    pthread_t thread;
    bool thread_started;
};

/* ---- small helpers ------------------------------------------------------ */

static bool stream_ok(const mc_stream *s)
{
    return s && s->tag == STREAM_TAG;
}

static void ring_push(ring *r, uint32_t x)
{
    r->v[(r->head + r->count) % r->cap] = x;
    r->count++;
}

static uint32_t ring_pop(ring *r)
{
    uint32_t x = r->v[r->head];
    r->head = (r->head + 1) % r->cap;
    r->count--;
    return x;
}

static uint32_t ring_at(const ring *r, uint32_t i)
{
    return r->v[(r->head + i) % r->cap];
}

static bool on_stream_thread(const mc_stream *s)
{
    return s->thread_started && pthread_equal(s->thread, pthread_self());
}

static bool recoverable(mc_status st)
{
    /* Refused work or a broken resource fails the same way every time. */
    return mc_status_is_device_error(st) && st != MC_ERR_NOT_PERMITTED && st != MC_ERR_INVALID_RESOURCE;
}

/* Under mu. */
static void free_slot(mc_stream *s, slot *sl)
{
    sl->state = SLOT_FREE;
    ring_push(&s->free_slots, (uint32_t)(sl - s->slots));
    atomic_store_explicit(&s->nfree, s->free_slots.count, memory_order_relaxed);
    pthread_cond_signal(&s->free_cv);
}

/* Spins up to SPIN_NS (not past deadline) until *count is non-zero or the
 * stream stops; mu is not held. */
static void spin_for(const mc_stream *s, _Atomic uint32_t *count, uint64_t deadline)
{
    uint64_t until = MC__MIN(deadline, mc__now_ns() + SPIN_NS);
    for (uint32_t i = 1; !atomic_load_explicit(count, memory_order_relaxed); i++) {
        if ((i & 31) == 0 && (mc__now_ns() >= until || atomic_load_explicit(&s->stop_spin, memory_order_relaxed)))
            return;
        mc__spin_step(i);
    }
}

/* Under mu: buffers made on a reopened device replace the slot's. With
 * copy, the input written on the old device moves across. */
static void migrate(mc_stream *s, slot *sl, bool copy)
{
    if (sl->next_in) {
        void *host = mc_buffer_contents(sl->next_in);
        if (copy && sl->in_host) memcpy(host, sl->in_host, s->desc.item_size);
        mc_buffer_release(sl->in);
        sl->in = sl->next_in;
        sl->in_host = host;
        sl->next_in = NULL;
    }
    if (sl->next_out) {
        mc_buffer_release(sl->out);
        sl->out = sl->next_out;
        sl->out_host = mc_buffer_contents(sl->out);
        sl->next_out = NULL;
    }
}

static void set_message(slot *sl, mc_status st, const char *msg)
{
    sl->status = st;
    snprintf(sl->message, sizeof sl->message, "%s", msg && *msg ? msg : st == MC_OK ? "" : mc_status_text(st));
}

/* ---- the binding -------------------------------------------------------- */

static mc_status check_binding(mc_stream *s)
{
    const mc_stream_binding *b = &s->bind;
    const char *l = s->label;
    if (b->pass_count < 1 || b->pass_count > MC_STREAM_MAX_PASSES)
        return mc__fail(MC_ERR_INVALID_ARGUMENT, "stream '%s': setup made %u passes; 1 to %d", l, b->pass_count,
                        MC_STREAM_MAX_PASSES);
    for (uint32_t p = 0; p < b->pass_count; p++) {
        const mc_stream_pass *ps = &b->passes[p];
        if (!mc__object_check(ps->pipeline, MC__TAG_PIPELINE) || ps->pipeline->base.device != s->dev)
            return mc__fail(MC_ERR_INVALID_ARGUMENT, "stream '%s': pass %u has no pipeline of this device", l, p);
        mc_size3 g = ps->threadgroups, t = ps->threads_per_threadgroup;
        if (!g.x || !g.y || !g.z)
            return mc__fail(MC_ERR_INVALID_ARGUMENT, "stream '%s': pass %u: threadgroups (%u,%u,%u) has a zero dimension",
                            l, p, g.x, g.y, g.z);
        uint64_t threads = (uint64_t)t.x * t.y * t.z;
        uint32_t max = ps->pipeline->info.max_total_threads_per_threadgroup;
        if (!threads || (max && threads > max))
            return mc__fail(MC_ERR_INVALID_ARGUMENT,
                            "stream '%s': pass %u: threads_per_threadgroup (%u,%u,%u); the pipeline allows 1 to %u", l, p,
                            t.x, t.y, t.z, max);
        for (uint32_t i = 0; i < MC_MAX_BUFFER_ARGS; i++) {
            const mc_stream_arg *a = &ps->args[i];
            switch (a->kind) {
            case MC_STREAM_ARG_NONE:
            case MC_STREAM_ARG_SEQUENCE:
                break;
            case MC_STREAM_ARG_INPUT:
                if (a->offset >= s->desc.item_size)
                    return mc__fail(MC_ERR_INVALID_ARGUMENT,
                                    "stream '%s': pass %u slot %u: input offset %zu is past the item's %zu bytes", l, p,
                                    i, a->offset, s->desc.item_size);
                break;
            case MC_STREAM_ARG_OUTPUT:
                if (!s->desc.result_size)
                    return mc__fail(MC_ERR_INVALID_ARGUMENT,
                                    "stream '%s': pass %u slot %u binds the output, but result_size is 0", l, p, i);
                if (a->offset >= s->desc.result_size)
                    return mc__fail(MC_ERR_INVALID_ARGUMENT,
                                    "stream '%s': pass %u slot %u: output offset %zu is past the result's %zu bytes", l,
                                    p, i, a->offset, s->desc.result_size);
                break;
            case MC_STREAM_ARG_BUFFER:
                if (!mc__object_check(a->buffer, MC__TAG_BUFFER) || a->buffer->base.device != s->dev)
                    return mc__fail(MC_ERR_INVALID_ARGUMENT, "stream '%s': pass %u slot %u is not a buffer of this device",
                                    l, p, i);
                if (a->offset > a->buffer->size)
                    return mc__fail(MC_ERR_INVALID_ARGUMENT,
                                    "stream '%s': pass %u slot %u: offset %zu past the buffer's %zu bytes", l, p, i,
                                    a->offset, a->buffer->size);
                break;
            case MC_STREAM_ARG_BYTES:
                if (!a->bytes || a->len == 0 || a->len > MC_MAX_BYTES_ARG)
                    return mc__fail(MC_ERR_INVALID_ARGUMENT,
                                    "stream '%s': pass %u slot %u: bytes need a pointer and 1 to %d bytes", l, p, i,
                                    MC_MAX_BYTES_ARG);
                break;
            default:
                return mc__fail(MC_ERR_INVALID_ARGUMENT, "stream '%s': pass %u slot %u has unknown kind %d", l, p, i,
                                (int)a->kind);
            }
        }
        for (uint32_t i = 0; i < MC_MAX_THREADGROUP_MEMORY_ARGS; i++)
            if (ps->threadgroup_memory[i] > s->info.threadgroup_memory_size)
                return mc__fail(MC_ERR_INVALID_ARGUMENT,
                                "stream '%s': pass %u: threadgroup memory slot %u: %zu bytes, the device has %llu", l, p,
                                i, ps->threadgroup_memory[i], (unsigned long long)s->info.threadgroup_memory_size);
    }
    return MC_OK;
}

/* The slots' lists hold the binding's pipelines and buffers: they go
 * before teardown, so a lost device is let go of whole. A command buffer in
 * flight keeps its own reference to the list it executes. */
static void drop_lists(mc_stream *s)
{
    for (uint32_t i = 0; s->slots && i < s->nslots; i++) {
        mc_cmdlist_release(s->slots[i].list);
        s->slots[i].list = NULL;
        s->slots[i].list_in = s->slots[i].list_out = NULL;
    }
}

static void unbind(mc_stream *s)
{
    drop_lists(s);
    if (s->bound) s->desc.teardown(s->desc.user, &s->bind);
    s->bound = false;
    memset(&s->bind, 0, sizeof s->bind);
    for (uint32_t p = 0; p < MC_STREAM_MAX_PASSES; p++) {
        free(s->pass_label[p]);
        s->pass_label[p] = NULL;
        for (uint32_t i = 0; i < MC_MAX_BUFFER_ARGS; i++) {
            free(s->bytes[p][i]);
            s->bytes[p][i] = NULL;
        }
    }
}

/* Calls setup on s->dev, checks what it made and copies its bytes and
 * labels. */
static mc_status bind(mc_stream *s)
{
    memset(&s->bind, 0, sizeof s->bind);
    mc__clear_error(); /* what setup says, not what failed before it */
    mc_status st = s->desc.setup(s->desc.user, s->dev, &s->bind);
    char why[256];
    if (st != MC_OK) {
        snprintf(why, sizeof why, "%s", mc_last_error());
        memset(&s->bind, 0, sizeof s->bind);
        return mc__fail(st, "stream '%s': setup failed: %s", s->label, why[0] ? why : mc_status_text(st));
    }
    s->bound = true;
    if ((st = check_binding(s)) != MC_OK) {
        snprintf(why, sizeof why, "%s", mc_last_error());
        unbind(s);
        return mc__fail(st, "%s", why);
    }
    for (uint32_t p = 0; p < s->bind.pass_count; p++) {
        const mc_stream_pass *ps = &s->bind.passes[p];
        s->pass_label[p] = ps->label ? mc__strdup(ps->label) : mc__asprintf("%s pass %u", s->label, p);
        bool ok = s->pass_label[p] != NULL;
        for (uint32_t i = 0; i < MC_MAX_BUFFER_ARGS && ok; i++) {
            const mc_stream_arg *a = &ps->args[i];
            if (a->kind != MC_STREAM_ARG_BYTES) continue;
            s->bytes[p][i] = mc__malloc(a->len);
            if (!s->bytes[p][i]) ok = false;
            else memcpy(s->bytes[p][i], a->bytes, a->len);
        }
        if (!ok) {
            unbind(s);
            return mc__fail(MC_ERR_NO_MEMORY, "stream '%s': out of host memory", s->label);
        }
    }
    s->bind_epoch++;
    s->lists = !(s->desc.flags & MC_STREAM_RECORD_EACH);
    for (uint32_t p = 0; p < s->bind.pass_count; p++)
        for (uint32_t i = 0; i < MC_MAX_BUFFER_ARGS; i++)
            if (s->bind.passes[p].args[i].kind == MC_STREAM_ARG_SEQUENCE) s->lists = false;
    return MC_OK;
}

/* ---- objects on the device ---------------------------------------------- */

static mc_status make_buffer(mc_stream *s, size_t size, const char *what, mc_buffer **out)
{
    mc_buffer_desc bd = MC_BUFFER_DESC_INIT;
    bd.size = size;
    bd.storage = MC_STORAGE_SHARED;
    bd.label = what;
    return mc_buffer_create(s->dev, &bd, out);
}

static void drop_lanes(mc_stream *s)
{
    for (uint32_t i = 0; i < s->nlanes; i++) {
        mc_queue_release(s->lanes[i].queue);
        mc_event_release(s->lanes[i].timeline);
        memset(&s->lanes[i], 0, sizeof s->lanes[i]);
    }
}

static void wait_lanes_idle(mc_stream *s)
{
    for (uint32_t i = 0; i < s->nlanes; i++)
        if (s->lanes[i].queue) mc_queue_wait_idle(s->lanes[i].queue, MC_WAIT_FOREVER);
}

/* The queues and fresh timeline events (each recovery starts new ones, so
 * a late wake-up from a command buffer of an old queue cannot reach them). */
static mc_status make_queue(mc_stream *s)
{
    drop_lanes(s);
    mc_queue_desc qd = {s->label};
    mc_status st = MC_OK;
    for (uint32_t i = 0; i < s->nlanes && st == MC_OK; i++) {
        st = mc_queue_create(s->dev, &qd, &s->lanes[i].queue);
        if (st == MC_OK) st = mc_event_create(s->dev, 0, &s->lanes[i].timeline);
    }
    return st;
}

/* New buffers for every slot on s->dev: taken at once by the slots in no
 * one's hands (called before the stream's thread runs), else when the slot
 * is next acquired or its item (re)submitted. */
static mc_status make_slot_buffers(mc_stream *s, bool initial)
{
    for (uint32_t i = 0; i < s->nslots; i++) {
        mc_buffer *in = NULL, *out = NULL;
        mc_status st = make_buffer(s, s->desc.item_size, "stream input", &in);
        if (st == MC_OK && s->desc.result_size) st = make_buffer(s, s->desc.result_size, "stream output", &out);
        if (st != MC_OK) {
            mc_buffer_release(in);
            mc_buffer_release(out);
            return st;
        }
        pthread_mutex_lock(&s->mu);
        slot *sl = &s->slots[i];
        mc_buffer_release(sl->next_in);
        mc_buffer_release(sl->next_out);
        sl->next_in = in;
        sl->next_out = out;
        if (initial) migrate(s, sl, false);
        pthread_mutex_unlock(&s->mu);
    }
    return MC_OK;
}

/* Lets go of a (lost) device. Injected faults scheduled on it but not yet
 * reached move to the next one, so "the Nth command buffer from now" keeps
 * its meaning across a reopen (as the runner does). */
static void drop_device(mc_stream *s)
{
    unbind(s);
    drop_lanes(s);
    if (!s->dev) return;
    pthread_mutex_lock(&s->dev->lock);
    uint64_t done = atomic_load(&s->dev->committed);
    for (size_t i = 0; i < s->dev->nfaults && s->nfaults < MC__MAX_FAULTS; i++) {
        if (s->dev->faults[i].at <= done) continue;
        s->faults[s->nfaults].kind = s->dev->faults[i].kind;
        s->faults[s->nfaults].nth = s->dev->faults[i].at - done;
        s->nfaults++;
    }
    pthread_mutex_unlock(&s->dev->lock);
    mc_device_release(s->dev);
    s->dev = NULL;
}

/* Opens a device like the one lost: same kind, index, time limit. */
static mc_status open_device(mc_stream *s)
{
    mc_device_desc dd = MC_DEVICE_DESC_INIT;
    dd.kind = s->info.kind;
    dd.index = s->info.index;
    uint64_t lim = s->info.execution_time_limit_ns;
    dd.time_limit_ms = lim ? (int64_t)((lim + 999999u) / 1000000u) : MC_TIME_LIMIT_NONE;
    if (s->info.kind == MC_DEVICE_CPU) dd.threads = s->info.compute_units;
    mc_device *d;
    mc_status st = mc_device_open(&dd, &d);
    if (st != MC_OK) return st;
    s->dev = d;
    mc_device_get_info(d, &s->info);
    for (size_t i = 0; i < s->nfaults; i++) mc_device_inject_fault(d, s->faults[i].kind, s->faults[i].nth);
    s->nfaults = 0;
    pthread_mutex_lock(&s->mu);
    s->st.device_reopens++;
    pthread_mutex_unlock(&s->mu);
    mc__log(MC_LOG_INFO, "stream.device_reopened", "stream '%s': reopened %s:%d", s->label,
            mc_device_kind_name(s->info.kind), s->info.index);
    return MC_OK;
}

/* ---- submission ------------------------------------------------------- */

/* Binds and dispatches pass p of the chain for sl's buffers on pass, which
 * is a command buffer's compute pass or a command list's recording. */
static mc_status record_pass(mc_stream *s, const slot *sl, uint32_t p, mc_pass *pass)
{
    const mc_stream_pass *ps = &s->bind.passes[p];
    mc_status st = mc_pass_set_pipeline(pass, ps->pipeline);
    for (uint32_t i = 0; i < MC_MAX_BUFFER_ARGS && st == MC_OK; i++) {
        const mc_stream_arg *a = &ps->args[i];
        switch (a->kind) {
        case MC_STREAM_ARG_INPUT: st = mc_pass_set_buffer(pass, i, sl->in, a->offset); break;
        case MC_STREAM_ARG_OUTPUT: st = mc_pass_set_buffer(pass, i, sl->out, a->offset); break;
        case MC_STREAM_ARG_BUFFER: st = mc_pass_set_buffer(pass, i, a->buffer, a->offset); break;
        case MC_STREAM_ARG_BYTES: st = mc_pass_set_bytes(pass, i, s->bytes[p][i], a->len); break;
        case MC_STREAM_ARG_SEQUENCE: st = mc_pass_set_bytes(pass, i, &sl->seq, sizeof sl->seq); break;
        default: break;
        }
    }
    for (uint32_t i = 0; i < MC_MAX_THREADGROUP_MEMORY_ARGS && st == MC_OK; i++)
        if (ps->threadgroup_memory[i]) st = mc_pass_set_threadgroup_memory(pass, i, ps->threadgroup_memory[i]);
    if (st == MC_OK) st = mc_pass_dispatch(pass, ps->threadgroups, ps->threads_per_threadgroup);
    return st;
}

/* The slot's chain as a command list for its current buffers, recorded
 * when the slot first needs it and again after a rebind or when the slot's
 * buffers were replaced (a reopened device). Under submit_mu. NULL with
 * *st MC_OK: this binding is recorded per item. */
static mc_cmdlist *slot_list(mc_stream *s, slot *sl, mc_status *st)
{
    *st = MC_OK;
    if (!s->lists) return NULL;
    if (sl->list && sl->list_epoch == s->bind_epoch && sl->list_in == sl->in && sl->list_out == sl->out)
        return sl->list;
    mc_cmdlist_release(sl->list);
    sl->list = NULL;
    mc_cmdlist_desc ld = MC_CMDLIST_DESC_INIT;
    ld.label = s->label;
    ld.max_commands = s->bind.pass_count;
    mc_cmdlist *l;
    mc_pass *pass;
    *st = mc_cmdlist_create(s->dev, &ld, &l);
    if (*st != MC_OK) return NULL;
    *st = mc_cmdlist_begin(l, &pass);
    for (uint32_t p = 0; p < s->bind.pass_count && *st == MC_OK; p++) {
        /* passes run in order, each seeing what the one before wrote */
        if (p) *st = mc_pass_barrier(pass);
        if (*st == MC_OK) *st = record_pass(s, sl, p, pass);
    }
    if (*st == MC_OK) *st = mc_cmdlist_end(l);
    if (*st != MC_OK) {
        mc_cmdlist_release(l);
        return NULL;
    }
    sl->list = l;
    sl->list_in = sl->in;
    sl->list_out = sl->out;
    sl->list_epoch = s->bind_epoch;
    return l;
}

static mc_status record_item(mc_stream *s, slot *sl, mc_cmdbuf *cb, mc_event *timeline, uint64_t value,
                             bool *used_list)
{
    mc_status st = MC_OK;
    mc_cmdlist *list = slot_list(s, sl, &st);
    *used_list = list != NULL;
    if (list) {
        st = mc_cmdbuf_execute_cmdlist(cb, list, 0, MC_CMDLIST_ALL);
    } else if (st == MC_OK || !mc_status_is_device_error(st)) {
        /* No list for this binding, or the device cannot make one (it says
         * why once): record the passes. */
        if (st != MC_OK) {
            mc__log(MC_LOG_WARN, "stream.no_list", "stream '%s': recording each item: %s", s->label, mc_last_error());
            s->lists = false;
        }
        st = MC_OK;
        for (uint32_t p = 0; p < s->bind.pass_count && st == MC_OK; p++) {
            mc_pass *pass;
            st = mc_cmdbuf_begin_pass(cb, s->pass_label[p], &pass);
            if (st == MC_OK) st = record_pass(s, sl, p, pass);
            if (st == MC_OK) st = mc_pass_end(pass);
        }
    }
    /* Last: when the event reaches value, the device is done with the slot. */
    if (st == MC_OK) st = mc_cmdbuf_signal_event(cb, timeline, value);
    return st;
}

/* Records and commits the item in sl. Under submit_mu, not mu. */
static mc_status commit_item(mc_stream *s, slot *sl)
{
    uint32_t li = (uint32_t)((sl->seq - 1) % s->nlanes);
    lane *ln = &s->lanes[li];
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
    st = record_item(s, sl, cb, ln->timeline, value, &used_list);
    if (st == MC_OK) st = mc_cmdbuf_commit(cb);
    if (st != MC_OK) {
        mc_cmdbuf_release(cb);
        return st;
    }
    ln->next_value = value;
    pthread_mutex_lock(&s->mu);
    sl->cb = cb;
    sl->lane = li;
    sl->value = value;
    sl->attempts++;
    sl->state = SLOT_FLIGHT;
    s->st.commits++;
    if (used_list) s->st.list_commits++;
    if (sl->attempts > 1) s->st.replays++;
    if (++s->in_flight > s->st.max_in_flight) s->st.max_in_flight = s->in_flight;
    atomic_store_explicit(&s->nflight, s->in_flight, memory_order_relaxed);
    pthread_cond_signal(&s->work_cv);
    pthread_mutex_unlock(&s->mu);
    return MC_OK;
}

/* A commit failed. A device error stops commits until the stream's thread
 * recovers; anything else (the binding cannot be recorded) fails only this
 * item, with the reason. Under submit_mu. */
static void commit_failed(mc_stream *s, slot *sl, mc_status st)
{
    char why[256];
    snprintf(why, sizeof why, "%s", mc_last_error());
    pthread_mutex_lock(&s->mu);
    if (mc_status_is_device_error(st)) {
        s->broken = true;
        s->commit_error = st;
    } else {
        sl->state = SLOT_FINISHED;
        set_message(sl, st, why);
    }
    pthread_cond_signal(&s->work_cv);
    pthread_mutex_unlock(&s->mu);
}

/* ---- delivery ----------------------------------------------------------- */

static void fill_result(const mc_stream *s, const slot *sl, mc_stream_result *r)
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

static bool idle(const mc_stream *s)
{
    return s->order.count == 0 && !s->delivering;
}

/* Hands the oldest item over. Under mu (released around the callback). */
static void deliver_head(mc_stream *s)
{
    uint32_t idx = ring_pop(&s->order);
    slot *sl = &s->slots[idx];
    if (s->cancel && sl->status == MC_OK) set_message(sl, MC_ERR_CANCELLED, "cancelled by mc_stream_close");
    s->st.delivered++;
    if (MC__TRACING())
        mc__trace_instant("stream", s->label, "stream", "item", 0, mc_status_name(sl->status),
                          MC__TARGS({"sequence", sl->seq}, {"tag", sl->tag}, {"attempts", sl->attempts}));
    if (sl->status == MC_ERR_CANCELLED) s->st.cancelled++;
    else if (sl->status != MC_OK) s->st.failed++;
    else s->fruitless = 0;
    if (s->desc.on_result) {
        sl->state = SLOT_DELIVERING;
        s->delivering = true;
        mc_stream_result r;
        fill_result(s, sl, &r);
        pthread_mutex_unlock(&s->mu);
        s->desc.on_result(s->desc.result_user, &r);
        pthread_mutex_lock(&s->mu);
        s->delivering = false;
        free_slot(s, sl);
    } else {
        sl->state = SLOT_READY;
        ring_push(&s->ready, idx);
        atomic_store_explicit(&s->nready, s->ready.count, memory_order_relaxed);
        pthread_cond_signal(&s->ready_cv);
    }
    if (idle(s)) {
        pthread_cond_broadcast(&s->idle_cv);
        if (s->closed) pthread_cond_broadcast(&s->ready_cv); /* pullers: the end */
    }
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

/* The device cannot be had back: everything not yet finished is
 * delivered with the error, and the stream takes no more items. */
static void die(mc_stream *s, mc_status st, const char *why)
{
    pthread_mutex_lock(&s->mu);
    s->dead = true;
    atomic_store(&s->stop_spin, 1);
    s->dead_status = st;
    snprintf(s->dead_message, sizeof s->dead_message, "stream '%s' gave up: %s", s->label, why);
    for (uint32_t i = 0; i < s->order.count; i++) {
        slot *sl = &s->slots[ring_at(&s->order, i)];
        if (sl->state == SLOT_QUEUED) {
            sl->state = SLOT_FINISHED;
            set_message(sl, st, s->dead_message);
        }
    }
    pthread_cond_broadcast(&s->free_cv);
    pthread_cond_broadcast(&s->ready_cv);
    pthread_mutex_unlock(&s->mu);
    mc__log(MC_LOG_ERROR, "stream.dead", "%s", s->dead_message);
}

/* Recreates what the failure broke. */
static mc_status rebuild(mc_stream *s, bool lost)
{
    mc_status st = MC_OK;
    if (lost || !s->dev) {
        drop_device(s);
        st = open_device(s);
        if (st == MC_OK) st = bind(s);
        if (st == MC_OK) st = make_slot_buffers(s, false);
    }
    /* The only recovery for a queue (F687). */
    if (st == MC_OK) st = make_queue(s);
    return st;
}

/* The oldest item failed, or a commit was refused: settle every item in
 * flight, decide, rebuild and resubmit. On the stream's thread, without mu. */
static void recover(mc_stream *s)
{
    pthread_mutex_lock(&s->submit_mu);
    wait_lanes_idle(s);

    pthread_mutex_lock(&s->mu);
    slot *culprit = NULL;
    mc_status cause = MC_OK;
    char why[256] = "";
    for (uint32_t i = 0; i < s->order.count; i++) {
        slot *sl = &s->slots[ring_at(&s->order, i)];
        if (sl->state != SLOT_FLIGHT) continue;
        mc_cmdbuf_wait(sl->cb, MC_WAIT_FOREVER); /* the queue is idle: at once */
        const char *msg = NULL;
        mc_status st = mc_cmdbuf_status(sl->cb, &msg);
        set_message(sl, st, msg);
        mc_cmdbuf_release(sl->cb);
        sl->cb = NULL;
        s->in_flight--;
        atomic_store_explicit(&s->nflight, s->in_flight, memory_order_relaxed);
        if (st == MC_OK) {
            sl->state = SLOT_FINISHED; /* ran before or beside the failure: its result stands */
            continue;
        }
        sl->state = SLOT_QUEUED;
        if (!culprit) {
            culprit = sl;
            cause = st;
            snprintf(why, sizeof why, "%s", sl->message);
        }
    }
    if (!culprit) {
        cause = s->commit_error != MC_OK ? s->commit_error : MC_ERR_INTERNAL;
        snprintf(why, sizeof why, "a commit was refused: %s", mc_status_text(cause));
    }
    if (culprit && cause != MC_ERR_ACCESS_REVOKED) {
        culprit->failures++; /* progress: the item fails for good after max_retries */
        s->fruitless = 0;
    } else {
        s->fruitless++; /* the system's doing (F146, F685), not the item's */
    }
    s->commit_error = MC_OK;
    s->broken = true;
    s->st.recoveries++;
    s->st.last_failure = cause;
    bool lost = cause == MC_ERR_DEVICE_LOST || !s->dev || atomic_load(&s->dev->lost);
    if (culprit && (!recoverable(cause) || culprit->failures > s->desc.max_retries)) {
        /* delivered with its error; the others go on */
        culprit->state = SLOT_FINISHED;
        mc__log(MC_LOG_WARN, "stream.item_failed", "stream '%s': item %llu failed %u time%s: %s: %s", s->label,
                (unsigned long long)culprit->seq, culprit->failures, culprit->failures == 1 ? "" : "s",
                mc_status_name(cause), why);
    }
    uint32_t fruitless = s->fruitless;
    pthread_mutex_unlock(&s->mu);

    if (lost && (s->desc.flags & MC_STREAM_NO_REOPEN)) {
        die(s, MC_ERR_DEVICE_LOST, why);
        pthread_mutex_unlock(&s->submit_mu);
        return;
    }
    if (fruitless > MAX_FRUITLESS) {
        die(s, cause, why);
        pthread_mutex_unlock(&s->submit_mu);
        return;
    }
    mc__log(MC_LOG_WARN, "stream.recovering", "stream '%s': %s%s in item %llu: %s; %s and resubmitting", s->label,
            mc_status_name(cause), culprit ? "" : " at commit", culprit ? (unsigned long long)culprit->seq : 0ull,
            why, lost ? "reopening the device" : "recreating the queue");

    if (cause == MC_ERR_ACCESS_REVOKED) backoff(s, backoff_delay(fruitless)); /* F146, F685 */
    for (uint32_t tries = 1;; tries++) {
        if (stopping(s)) {
            /* Nothing more goes to the device: the rest is cancelled. */
            pthread_mutex_unlock(&s->submit_mu);
            return;
        }
        mc_status st = rebuild(s, lost);
        if (st == MC_OK) break;
        char reason[256];
        snprintf(reason, sizeof reason, "rebuilding after %s: %s", mc_status_name(cause), mc_last_error());
        if (tries > MAX_FRUITLESS || (!mc_status_is_device_error(st) && st != MC_ERR_NOT_FOUND)) {
            die(s, st, reason);
            pthread_mutex_unlock(&s->submit_mu);
            return;
        }
        lost = lost || st == MC_ERR_DEVICE_LOST || !s->dev || atomic_load(&s->dev->lost);
        if (lost && (s->desc.flags & MC_STREAM_NO_REOPEN)) {
            die(s, MC_ERR_DEVICE_LOST, reason);
            pthread_mutex_unlock(&s->submit_mu);
            return;
        }
        backoff(s, backoff_delay(tries));
    }

    /* Resubmit, in order, what is not finished. */
    uint32_t todo[MC_STREAM_MAX_SLOTS], ntodo = 0;
    pthread_mutex_lock(&s->mu);
    if (s->cancel || s->quit) {
        pthread_mutex_unlock(&s->mu);
        pthread_mutex_unlock(&s->submit_mu);
        return;
    }
    s->broken = false;
    for (uint32_t i = 0; i < s->order.count; i++) {
        uint32_t idx = ring_at(&s->order, i);
        if (s->slots[idx].state == SLOT_QUEUED) todo[ntodo++] = idx;
    }
    pthread_mutex_unlock(&s->mu);
    for (uint32_t i = 0; i < ntodo; i++) {
        slot *sl = &s->slots[todo[i]];
        pthread_mutex_lock(&s->mu);
        migrate(s, sl, true);
        pthread_mutex_unlock(&s->mu);
        mc_status st = commit_item(s, sl);
        if (st == MC_OK) continue;
        commit_failed(s, sl, st);
        pthread_mutex_lock(&s->mu);
        bool broken = s->broken;
        pthread_mutex_unlock(&s->mu);
        if (broken) break; /* the rest waits for the next recovery */
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

static void *stream_main(void *arg)
{
    mc_stream *s = arg;
    uint64_t slice = MIN_SLICE_NS, slice_value = 0;
    pthread_mutex_lock(&s->mu);
    while (!s->quit) {
        if (!s->order.count) {
            /* Idle: the next item usually comes within microseconds (one
             * slot, or a producer just behind): look for its commit before
             * sleeping, so the producer does not pay for a wake-up. */
            pthread_mutex_unlock(&s->mu);
            spin_for(s, &s->nflight, mc__deadline(SPIN_NS));
            pthread_mutex_lock(&s->mu);
            if (!s->order.count && !s->quit) pthread_cond_wait(&s->work_cv, &s->mu);
            continue;
        }
        slot *h = &s->slots[ring_at(&s->order, 0)];
        if (h->state == SLOT_FINISHED) {
            deliver_head(s);
            continue;
        }
        if (h->state == SLOT_QUEUED) {
            if (s->cancel) {
                set_message(h, MC_ERR_CANCELLED, "cancelled by mc_stream_close before it ran");
                h->state = SLOT_FINISHED;
            } else if (s->dead) {
                set_message(h, s->dead_status, s->dead_message);
                h->state = SLOT_FINISHED;
            } else if (!s->broken) {
                pthread_cond_wait(&s->work_cv, &s->mu); /* its producer is committing it */
            } else {
                pthread_mutex_unlock(&s->mu);
                recover(s);
                pthread_mutex_lock(&s->mu);
            }
            continue;
        }
        /* SLOT_FLIGHT: the event and the queue are those of the current
         * epoch, which only this thread replaces. */
        mc_event *ev = s->lanes[h->lane].timeline;
        uint64_t value = h->value;
        mc_cmdbuf *cb = h->cb;
        pthread_mutex_unlock(&s->mu);
        if (value != slice_value) {
            slice = MIN_SLICE_NS;
            slice_value = value;
        }
        bool done = wait_done(ev, value, cb, &slice);
        mc_status st = done ? mc_cmdbuf_status(cb, NULL) : MC_OK;
        pthread_mutex_lock(&s->mu);
        if (!done) continue;
        if (st != MC_OK) {
            pthread_mutex_unlock(&s->mu);
            recover(s);
            pthread_mutex_lock(&s->mu);
            continue;
        }
        h->cb = NULL;
        s->in_flight--;
        atomic_store_explicit(&s->nflight, s->in_flight, memory_order_relaxed);
        h->state = SLOT_FINISHED;
        set_message(h, MC_OK, NULL);
        mc_cmdbuf_release(cb);
        deliver_head(s);
    }
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

/* ---- the API -------------------------------------------------------------- */

static mc_status check_desc(const mc_stream_desc *d, const mc_device_info *info)
{
    if (!d->setup || !d->teardown)
        return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_stream_create: setup and teardown are required");
    if (d->item_size == 0)
        return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_stream_create: item_size is 0; each item needs bytes");
    if (info->max_buffer_size && (d->item_size > info->max_buffer_size || d->result_size > info->max_buffer_size))
        return mc__fail(MC_ERR_INVALID_ARGUMENT,
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

mc_status mc__stream_check_desc(const mc_stream_desc *d)
{
    mc_device_info none;
    memset(&none, 0, sizeof none);
    return check_desc(d, &none);
}

static void destroy(mc_stream *s)
{
    wait_lanes_idle(s);
    for (uint32_t i = 0; s->slots && i < s->nslots; i++) {
        slot *sl = &s->slots[i];
        if (sl->cb) mc_cmdbuf_release(sl->cb);
        mc_buffer_release(sl->in);
        mc_buffer_release(sl->out);
        mc_buffer_release(sl->next_in);
        mc_buffer_release(sl->next_out);
    }
    unbind(s);
    drop_lanes(s);
    mc_device_release(s->dev);
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
    if (desc->isolate) return mc__iso_stream_create(desc, out);
    MC__CHECK_HANDLE(desc->device, MC__TAG_DEVICE, "desc->device");
    mc_status st = mc_device_check(desc->device);
    if (st != MC_OK) return st;
    mc_device_info info;
    mc_device_get_info(desc->device, &info);
    if ((st = check_desc(desc, &info)) != MC_OK) return st;

    mc_stream *s = mc__calloc(1, sizeof *s);
    if (!s) return mc__fail(MC_ERR_NO_MEMORY, "mc_stream_create: out of host memory");
    s->tag = STREAM_TAG;
    s->desc = *desc;
    s->desc.slots = desc->slots ? desc->slots : DEFAULT_SLOTS;
    s->desc.max_retries = desc->max_retries ? desc->max_retries : DEFAULT_RETRIES;
    s->nslots = s->desc.slots;
    /* 0: the device's default. On a CUDA GPU one lane per slot: small items
     * overlap there (2.23x against 1.78x the naive loop with 3 slots, H100,
     * docs/PERFORMANCE.md); elsewhere one queue. */
    s->desc.lanes = desc->lanes                      ? desc->lanes
                    : info.kind == MC_DEVICE_CUDA ? MC__MIN(s->desc.slots, MC_STREAM_MAX_LANES)
                                                  : 1;
    s->nlanes = s->desc.lanes;
    s->label = mc__strdup(desc->label ? desc->label : "stream");
    s->desc.label = s->label;
    pthread_mutex_init(&s->submit_mu, NULL);
    pthread_mutex_init(&s->mu, NULL);
    mc__cond_init_monotonic(&s->free_cv);
    mc__cond_init_monotonic(&s->work_cv);
    mc__cond_init_monotonic(&s->ready_cv);
    mc__cond_init_monotonic(&s->idle_cv);
    s->dev = desc->device;
    mc_device_retain(s->dev);
    s->info = info;
    s->slots = mc__calloc(s->nslots, sizeof *s->slots);
    s->free_slots.v = mc__calloc(s->nslots, sizeof(uint32_t));
    s->order.v = mc__calloc(s->nslots, sizeof(uint32_t));
    s->ready.v = mc__calloc(s->nslots, sizeof(uint32_t));
    s->free_slots.cap = s->order.cap = s->ready.cap = s->nslots;
    if (!s->label || !s->slots || !s->free_slots.v || !s->order.v || !s->ready.v) {
        destroy(s);
        return mc__fail(MC_ERR_NO_MEMORY, "mc_stream_create: out of host memory");
    }
    for (uint32_t i = 0; i < s->nslots; i++) ring_push(&s->free_slots, i);
    atomic_store(&s->nfree, s->nslots);

    if ((st = bind(s)) == MC_OK && (st = make_slot_buffers(s, true)) == MC_OK && (st = make_queue(s)) == MC_OK) {
        if (pthread_create(&s->thread, NULL, stream_main, s) != 0)
            st = mc__fail(MC_ERR_INTERNAL, "stream '%s': cannot start its thread", s->label);
        else s->thread_started = true;
    }
    if (st != MC_OK) {
        char why[256];
        snprintf(why, sizeof why, "%s", mc_last_error());
        destroy(s);
        return mc__fail(st, "%s", why);
    }
    s->st.slots = s->nslots;
    *out = s;
    return MC_OK;
}

static mc_status refused(const mc_stream *s, const char *fn)
{
    if (s->closed) return mc__fail(MC_ERR_INVALID_STATE, "%s: stream '%s' is closed", fn, s->label);
    return mc__fail(s->dead_status, "%s: %s", fn, s->dead_message);
}

mc_status mc_stream_acquire(mc_stream *s, uint64_t timeout_ns, mc_stream_slot *out)
{
    if (mc__iso_is_stream(s)) return mc__iso_stream_acquire(s, timeout_ns, out);
    if (!stream_ok(s)) return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_stream_acquire: s is NULL or not a stream");
    if (!out) return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_stream_acquire: out is NULL");
    memset(out, 0, sizeof *out);
    /* Only a callback's return frees a slot: never wait on that thread. */
    if (on_stream_thread(s)) timeout_ns = 0;
    uint64_t deadline = mc__deadline(timeout_ns);
    if (timeout_ns) spin_for(s, &s->nfree, deadline);
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
    uint32_t idx = ring_pop(&s->free_slots);
    atomic_store_explicit(&s->nfree, s->free_slots.count, memory_order_relaxed);
    slot *sl = &s->slots[idx];
    sl->state = SLOT_ACQUIRED;
    migrate(s, sl, false);
    out->index = idx;
    out->input = sl->in_host;
    out->size = s->desc.item_size;
    pthread_mutex_unlock(&s->mu);
    return MC_OK;
}

mc_status mc_stream_submit(mc_stream *s, uint32_t index, uint64_t tag)
{
    if (mc__iso_is_stream(s)) return mc__iso_stream_submit(s, index, tag);
    if (!stream_ok(s)) return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_stream_submit: s is NULL or not a stream");
    if (index >= s->nslots)
        return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_stream_submit: slot %u of %u does not exist", index, s->nslots);
    pthread_mutex_lock(&s->submit_mu);
    pthread_mutex_lock(&s->mu);
    slot *sl = &s->slots[index];
    if (sl->state != SLOT_ACQUIRED) {
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
    sl->attempts = sl->failures = 0;
    set_message(sl, MC_OK, NULL);
    sl->state = SLOT_QUEUED;
    migrate(s, sl, true);
    ring_push(&s->order, index);
    s->st.submitted++;
    bool now = !s->broken;
    /* Committed at once, the commit wakes the stream's thread; a broken
     * stream's thread must hear of the item now (it recovers, then
     * resubmits it). */
    if (!now) pthread_cond_signal(&s->work_cv);
    pthread_mutex_unlock(&s->mu);
    if (now) {
        mc_status st = commit_item(s, sl);
        if (st != MC_OK) commit_failed(s, sl, st);
    }
    pthread_mutex_unlock(&s->submit_mu);
    mc__clear_error();
    return MC_OK;
}

mc_status mc_stream_discard(mc_stream *s, uint32_t index)
{
    if (mc__iso_is_stream(s)) return mc__iso_stream_discard(s, index);
    if (!stream_ok(s)) return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_stream_discard: s is NULL or not a stream");
    if (index >= s->nslots)
        return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_stream_discard: slot %u of %u does not exist", index, s->nslots);
    pthread_mutex_lock(&s->mu);
    slot *sl = &s->slots[index];
    if (sl->state != SLOT_ACQUIRED) {
        pthread_mutex_unlock(&s->mu);
        return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_stream_discard: slot %u is not acquired", index);
    }
    free_slot(s, sl);
    pthread_mutex_unlock(&s->mu);
    return MC_OK;
}

mc_status mc_stream_pull(mc_stream *s, uint64_t timeout_ns, mc_stream_result *out)
{
    if (mc__iso_is_stream(s)) return mc__iso_stream_pull(s, timeout_ns, out);
    if (!stream_ok(s)) return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_stream_pull: s is NULL or not a stream");
    if (!out) return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_stream_pull: out is NULL");
    memset(out, 0, sizeof *out);
    if (s->desc.on_result)
        return mc__fail(MC_ERR_INVALID_STATE, "mc_stream_pull: stream '%s' delivers its results to a callback",
                        s->label);
    uint64_t deadline = mc__deadline(timeout_ns);
    if (timeout_ns) spin_for(s, &s->nready, deadline);
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
    uint32_t idx = ring_pop(&s->ready);
    atomic_store_explicit(&s->nready, s->ready.count, memory_order_relaxed);
    slot *sl = &s->slots[idx];
    sl->state = SLOT_HELD;
    fill_result(s, sl, out);
    pthread_mutex_unlock(&s->mu);
    return MC_OK;
}

mc_status mc_stream_release_result(mc_stream *s, const mc_stream_result *r)
{
    if (mc__iso_is_stream(s)) return mc__iso_stream_release_result(s, r);
    if (!stream_ok(s)) return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_stream_release_result: s is NULL or not a stream");
    if (!r) return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_stream_release_result: r is NULL");
    if (r->slot >= s->nslots)
        return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_stream_release_result: slot %u of %u does not exist", r->slot,
                        s->nslots);
    pthread_mutex_lock(&s->mu);
    slot *sl = &s->slots[r->slot];
    if (sl->state != SLOT_HELD || sl->seq != r->sequence) {
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
    if (mc__iso_is_stream(s)) return mc__iso_stream_close(s, drain);
    if (!stream_ok(s)) return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_stream_close: s is NULL or not a stream");
    if (on_stream_thread(s))
        return mc__fail(MC_ERR_INVALID_STATE, "mc_stream_close: not from the result callback of stream '%s'",
                        s->label);
    pthread_mutex_lock(&s->mu);
    s->closed = true;
    atomic_store(&s->stop_spin, 1);
    if (!drain) s->cancel = true;
    pthread_cond_broadcast(&s->free_cv);
    pthread_cond_broadcast(&s->work_cv);
    pthread_cond_broadcast(&s->ready_cv);
    while (!idle(s)) pthread_cond_wait(&s->idle_cv, &s->mu);
    pthread_cond_broadcast(&s->ready_cv);
    pthread_mutex_unlock(&s->mu);
    return MC_OK;
}

mc_status mc_stream_get_stats(const mc_stream *s, mc_stream_stats *out)
{
    if (mc__iso_is_stream(s)) return mc__iso_stream_get_stats(s, out);
    if (!stream_ok(s)) return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_stream_get_stats: s is NULL or not a stream");
    if (!out) return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_stream_get_stats: out is NULL");
    mc_stream *m = (mc_stream *)s;
    pthread_mutex_lock(&m->mu);
    *out = m->st;
    out->slots_in_use = m->nslots - m->free_slots.count;
    pthread_mutex_unlock(&m->mu);
    return MC_OK;
}

mc_device *mc_stream_device(const mc_stream *s)
{
    if (!stream_ok(s)) return NULL;
    mc_stream *m = (mc_stream *)s;
    pthread_mutex_lock(&m->submit_mu);
    mc_device *d = m->dev;
    pthread_mutex_unlock(&m->submit_mu);
    return d;
}

void mc_stream_release(mc_stream *s)
{
    if (mc__iso_is_stream(s)) {
        mc__iso_stream_release(s);
        return;
    }
    if (!stream_ok(s)) return;
    if (on_stream_thread(s)) {
        mc__log(MC_LOG_ERROR, "stream.release_from_callback",
                "mc_stream_release: not from the result callback of stream '%s'; not released", s->label);
        return;
    }
    mc_stream_close(s, false);
    pthread_mutex_lock(&s->mu);
    s->quit = true;
    pthread_cond_broadcast(&s->work_cv);
    pthread_mutex_unlock(&s->mu);
    if (s->thread_started) pthread_join(s->thread, NULL);
    destroy(s);
}

/* ---- for the isolation layer's worker (isolate_stream.c) ----------------- */

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
