/*
 * DOC: Queues and command buffers
 *
 * A command buffer is recorded into a flat command list (mc__cmd) grouped
 * in passes; at commit the whole list goes to the backend in one call, so
 * many dispatches cost one submission (F136, F163). This file owns the
 * state machine (F687), the checks that refuse bad work before it runs,
 * fault injection, and the one completion path every backend reports to.
 */
#include "engine/engine.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

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
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&q->idle, &ca);
    pthread_condattr_destroy(&ca);
    mc__object_retain(&d->base);
    *out = q;
    return MC_OK;
}

void mc__queue_destroy(mc_queue *q)
{
    mc_device *d = q->base.device;
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

static bool wait_cond(pthread_cond_t *c, pthread_mutex_t *m, uint64_t deadline)
{
    if (deadline == UINT64_MAX) {
        pthread_cond_wait(c, m);
        return true;
    }
    if (mc__now_ns() >= deadline) return false;
    struct timespec ts;
    mc__timespec_from_ns(deadline, &ts);
    pthread_cond_timedwait(c, m, &ts);
    return true;
}

mc_status mc_queue_wait_idle(mc_queue *q, uint64_t timeout_ns)
{
    MC__CHECK_HANDLE(q, MC__TAG_QUEUE, "queue");
    uint64_t deadline = mc__deadline(timeout_ns);
    pthread_mutex_lock(&q->lock);
    while (q->in_flight) {
        if (!wait_cond(&q->idle, &q->lock, deadline)) {
            uint64_t n = q->in_flight;
            pthread_mutex_unlock(&q->lock);
            return mc__fail(MC_ERR_WAIT_TIMEOUT, "queue '%s' still has %llu command buffers in flight",
                            q->base.label, (unsigned long long)n);
        }
    }
    pthread_mutex_unlock(&q->lock);
    return MC_OK;
}

/* ---- command buffers: creation and recording ----------------------------- */

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
    mc_cmdbuf *cb = mc__calloc(1, sizeof *cb);
    if (!cb) return mc__fail(MC_ERR_NO_MEMORY, "mc_cmdbuf_create: out of memory");
    mc__object_init(&cb->base, MC__TAG_CMDBUF, q->base.device, desc && desc->label ? desc->label : "cmdbuf");
    cb->queue = q;
    cb->flags = flags;
    cb->pass.cb = cb;
    atomic_init(&cb->state, MC_CMDBUF_NOT_ENQUEUED);
    pthread_mutex_init(&cb->lock, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&cb->done_cond, &ca);
    pthread_condattr_destroy(&ca);
    mc__object_retain(&q->base);
    *out = cb;
    return MC_OK;
}

void mc__cmdbuf_destroy(mc_cmdbuf *cb)
{
    for (uint32_t i = 0; i < cb->nrefs; i++) mc__object_release(cb->refs[i]);
    for (uint32_t i = 0; i < cb->npass; i++) free((char *)cb->passes[i].label);
    free(cb->refs);
    free(cb->unretained);
    free(cb->cmds);
    free(cb->bytes);
    free(cb->passes);
    free(cb->sub.pass_state);
    free(cb->sub.pass_time);
    pthread_mutex_destroy(&cb->lock);
    pthread_cond_destroy(&cb->done_cond);
    mc_queue *q = cb->queue;
    cb->base.tag = MC__TAG_DEAD;
    free(cb->base.label);
    free(cb);
    mc__object_release(&q->base);
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

static mc_status grow(void **p, uint32_t *cap, uint32_t need, size_t elem)
{
    if (need <= *cap) return MC_OK;
    uint32_t n = *cap ? *cap : 8;
    while (n < need) n *= 2;
    void *q = mc__realloc(*p, (size_t)n * elem);
    if (!q) return mc__fail(MC_ERR_NO_MEMORY, "out of memory recording a command buffer");
    *p = q;
    *cap = n;
    return MC_OK;
}

static mc_status recordable(const mc_cmdbuf *cb, const char *fn)
{
    int st = atomic_load_explicit(&((mc_cmdbuf *)cb)->state, memory_order_relaxed);
    if (st > MC_CMDBUF_ENQUEUED)
        return mc__fail(MC_ERR_INVALID_STATE, "%s: command buffer '%s' was already committed", fn, cb->base.label);
    return MC_OK;
}

static mc_status add_ref(mc_cmdbuf *cb, mc__object *o)
{
    if (cb->nrefs && cb->refs[cb->nrefs - 1] == o) return MC_OK;
    mc_status s = grow((void **)&cb->refs, &cb->ref_cap, cb->nrefs + 1, sizeof *cb->refs);
    if (s != MC_OK) return s;
    cb->refs[cb->nrefs++] = o;
    mc__object_retain(o);
    return MC_OK;
}

/* A buffer the command buffer uses: retained, or with unretained references
 * (F676) remembered so validation can refuse freeing it while in use. */
static mc_status use_buffer(mc_cmdbuf *cb, mc_buffer *b)
{
    if (!(cb->flags & MC_CMDBUF_UNRETAINED_REFERENCES)) return add_ref(cb, &b->base);
    if (!mc_validation_enabled() || (cb->nunretained && cb->unretained[cb->nunretained - 1] == b)) return MC_OK;
    mc_status s = grow((void **)&cb->unretained, &cb->unretained_cap, cb->nunretained + 1, sizeof *cb->unretained);
    if (s == MC_OK) cb->unretained[cb->nunretained++] = b;
    return s;
}

static mc_status push_cmd(mc_cmdbuf *cb, const mc__cmd *c)
{
    mc_status s = grow((void **)&cb->cmds, &cb->cmd_cap, cb->ncmd + 1, sizeof *cb->cmds);
    if (s != MC_OK) return s;
    cb->cmds[cb->ncmd++] = *c;
    cb->passes[cb->npass - 1].count++;
    return MC_OK;
}

static mc_status push_pass(mc_cmdbuf *cb, uint32_t kind, const char *label, const char *dflt)
{
    mc_status s = grow((void **)&cb->passes, &cb->pass_cap, cb->npass + 1, sizeof *cb->passes);
    if (s != MC_OK) return s;
    char *l = mc__strdup(label ? label : dflt);
    if (!l) return mc__fail(MC_ERR_NO_MEMORY, "out of memory recording a command buffer");
    mc__pass *p = &cb->passes[cb->npass++];
    p->label = l;
    p->kind = kind;
    p->first = cb->ncmd;
    p->count = 0;
    return MC_OK;
}

mc_status mc_cmdbuf_begin_pass(mc_cmdbuf *cb, const char *label, mc_pass **out)
{
    MC__CHECK_HANDLE(cb, MC__TAG_CMDBUF, "command buffer");
    if (!out) return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_cmdbuf_begin_pass: out is NULL");
    *out = NULL;
    mc_status s = recordable(cb, __func__);
    if (s != MC_OK) return s;
    if (cb->pass_open)
        return mc__fail(MC_ERR_INVALID_STATE, "command buffer '%s': end pass '%s' before beginning another",
                        cb->base.label, cb->passes[cb->npass - 1].label);
    if ((s = push_pass(cb, MC__PASS_COMPUTE, label, "compute")) != MC_OK) return s;
    cb->pass_open = true;
    cb->cur_pipeline = NULL;
    cb->bound = 0;
    *out = &cb->pass;
    return MC_OK;
}

static mc_status open_pass(mc_pass *p, const char *fn, mc_cmdbuf **cbp)
{
    if (!p || !mc__object_check(p->cb, MC__TAG_CMDBUF))
        return mc__fail(MC_ERR_INVALID_ARGUMENT, "%s: pass is NULL or not valid", fn);
    mc_cmdbuf *cb = p->cb;
    mc_status s = recordable(cb, fn);
    if (s != MC_OK) return s;
    if (!cb->pass_open) return mc__fail(MC_ERR_INVALID_STATE, "%s: the pass has ended", fn);
    *cbp = cb;
    return MC_OK;
}

mc_status mc_pass_set_pipeline(mc_pass *p, mc_pipeline *pl)
{
    mc_cmdbuf *cb;
    mc_status s = open_pass(p, __func__, &cb);
    if (s != MC_OK) return s;
    MC__CHECK_HANDLE(pl, MC__TAG_PIPELINE, "pipeline");
    if (pl->base.device != cb->base.device)
        return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_pass_set_pipeline: the pipeline belongs to another device");
    if ((s = add_ref(cb, &pl->base)) != MC_OK) return s;
    mc__cmd c = {.op = MC__OP_SET_PIPELINE};
    c.u.pipeline = pl->hp;
    if ((s = push_cmd(cb, &c)) != MC_OK) return s;
    cb->cur_pipeline = pl;
    return MC_OK;
}

mc_status mc_pass_set_buffer(mc_pass *p, uint32_t index, mc_buffer *b, size_t offset)
{
    mc_cmdbuf *cb;
    mc_status s = open_pass(p, __func__, &cb);
    if (s != MC_OK) return s;
    MC__CHECK_HANDLE(b, MC__TAG_BUFFER, "buffer");
    if (index >= MC_MAX_BUFFER_ARGS)
        return mc__fail(MC_ERR_INVALID_ARGUMENT, "argument index %u is over the limit of %d", index,
                        MC_MAX_BUFFER_ARGS - 1);
    if (b->base.device != cb->base.device)
        return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_pass_set_buffer: the buffer belongs to another device");
    if (offset > b->size || (mc_validation_enabled() && offset == b->size))
        return mc__fail(mc_validation_enabled() ? MC_ERR_VALIDATION : MC_ERR_INVALID_ARGUMENT,
                        "argument %u: offset %zu is past the end of buffer '%s' (%zu bytes)", index, offset,
                        b->base.label ? b->base.label : "(unlabelled)", b->size);
    if ((s = use_buffer(cb, b)) != MC_OK) return s;
    mc__cmd c = {.op = MC__OP_SET_BUFFER, .index = index};
    c.u.buf.buffer = b->hb;
    c.u.buf.offset = offset;
    c.u.buf.size = b->size - offset;
    c.u.buf.host = b->host ? (char *)b->host + offset : NULL;
    if ((s = push_cmd(cb, &c)) != MC_OK) return s;
    cb->bound |= 1u << index;
    return MC_OK;
}

mc_status mc_pass_set_bytes(mc_pass *p, uint32_t index, const void *data, size_t len)
{
    mc_cmdbuf *cb;
    mc_status s = open_pass(p, __func__, &cb);
    if (s != MC_OK) return s;
    if (index >= MC_MAX_BUFFER_ARGS)
        return mc__fail(MC_ERR_INVALID_ARGUMENT, "argument index %u is over the limit of %d", index,
                        MC_MAX_BUFFER_ARGS - 1);
    if (!data || len == 0 || len > MC_MAX_BYTES_ARG)
        return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_pass_set_bytes: need 1..%d bytes of data, got %zu%s",
                        MC_MAX_BYTES_ARG, len, data ? "" : " (data is NULL)");
    uint32_t off = (cb->nbytes + 15u) & ~15u; /* kernels may read any scalar type */
    if ((s = grow((void **)&cb->bytes, &cb->bytes_cap, off + (uint32_t)len, 1)) != MC_OK) return s;
    memcpy(cb->bytes + off, data, len);
    cb->nbytes = off + (uint32_t)len;
    mc__cmd c = {.op = MC__OP_SET_BYTES, .index = index};
    c.u.bytes.offset = off;
    c.u.bytes.len = (uint32_t)len;
    if ((s = push_cmd(cb, &c)) != MC_OK) return s;
    cb->bound |= 1u << index;
    return MC_OK;
}

mc_status mc_pass_set_threadgroup_memory(mc_pass *p, uint32_t index, size_t len)
{
    mc_cmdbuf *cb;
    mc_status s = open_pass(p, __func__, &cb);
    if (s != MC_OK) return s;
    if (index >= MC_MAX_THREADGROUP_MEMORY_ARGS)
        return mc__fail(MC_ERR_INVALID_ARGUMENT, "threadgroup memory index %u is over the limit of %d", index,
                        MC_MAX_THREADGROUP_MEMORY_ARGS - 1);
    const mc_device_info *info = &cb->base.device->info;
    if (len > info->threadgroup_memory_size)
        return mc__fail(MC_ERR_INVALID_ARGUMENT, "threadgroup memory of %zu bytes is over the device's %llu", len,
                        (unsigned long long)info->threadgroup_memory_size);
    mc__cmd c = {.op = MC__OP_SET_TGMEM, .index = index};
    c.u.tgmem.len = len;
    return push_cmd(cb, &c);
}

static mc_status check_threads(mc_cmdbuf *cb, mc_size3 t)
{
    mc_pipeline *pl = cb->cur_pipeline;
    if (!pl) return mc__fail(MC_ERR_INVALID_STATE, "dispatch in pass '%s' before a pipeline was set",
                             cb->passes[cb->npass - 1].label);
    uint64_t total = (uint64_t)t.x * t.y * t.z;
    if (total == 0)
        return mc__fail(mc_validation_enabled() ? MC_ERR_VALIDATION : MC_ERR_INVALID_ARGUMENT,
                        "threads per threadgroup (%u,%u,%u) has a zero dimension", t.x, t.y, t.z);
    if (total > pl->info.max_total_threads_per_threadgroup)
        return mc__fail(mc_validation_enabled() ? MC_ERR_VALIDATION : MC_ERR_INVALID_ARGUMENT,
                        "threadgroup of %llu threads is over the limit of %u for pipeline '%s'",
                        (unsigned long long)total, pl->info.max_total_threads_per_threadgroup, pl->base.label);
    if (pl->simd_multiple && pl->info.simd_width > 1 && t.x % pl->info.simd_width)
        return mc__fail(MC_ERR_INVALID_ARGUMENT,
                        "pipeline '%s' promised threadgroups that are a multiple of the SIMD width %u, got %u (F158)",
                        pl->base.label, pl->info.simd_width, t.x);
    if (mc_validation_enabled()) {
        int32_t argc = pl->info.argument_count;
        uint32_t need = argc >= 0 ? (argc >= 32 ? 0xffffffffu : (1u << argc) - 1u)
                                  : (cb->bound ? (1u << (32 - __builtin_clz(cb->bound))) - 1u : 0);
        uint32_t missing = need & ~cb->bound;
        if (missing)
            return mc__fail(MC_ERR_VALIDATION, "pipeline '%s': argument slot %d is not bound", pl->base.label,
                            __builtin_ctz(missing));
    }
    return MC_OK;
}

mc_status mc_pass_dispatch(mc_pass *p, mc_size3 groups, mc_size3 threads)
{
    mc_cmdbuf *cb;
    mc_status s = open_pass(p, __func__, &cb);
    if (s != MC_OK) return s;
    if ((s = check_threads(cb, threads)) != MC_OK) return s;
    if ((uint64_t)groups.x * groups.y * groups.z == 0) {
        if (mc_validation_enabled())
            return mc__fail(MC_ERR_VALIDATION, "dispatch of (%u,%u,%u) threadgroups has a zero dimension", groups.x,
                            groups.y, groups.z);
        return MC_OK; /* nothing to run */
    }
    mc__cmd c = {.op = MC__OP_DISPATCH};
    c.u.dispatch.groups = groups;
    c.u.dispatch.threads = threads;
    return push_cmd(cb, &c);
}

mc_status mc_pass_dispatch_indirect(mc_pass *p, mc_buffer *b, size_t offset, mc_size3 threads)
{
    mc_cmdbuf *cb;
    mc_status s = open_pass(p, __func__, &cb);
    if (s != MC_OK) return s;
    MC__CHECK_HANDLE(b, MC__TAG_BUFFER, "indirect buffer");
    if (b->base.device != cb->base.device)
        return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_pass_dispatch_indirect: the buffer belongs to another device");
    if (offset % 4 || offset > b->size || b->size - offset < 12)
        return mc__fail(MC_ERR_INVALID_ARGUMENT,
                        "indirect arguments at offset %zu: need 12 bytes, 4-byte aligned, inside '%s' (%zu bytes)",
                        offset, b->base.label ? b->base.label : "(unlabelled)", b->size);
    if ((s = check_threads(cb, threads)) != MC_OK) return s;
    if ((s = use_buffer(cb, b)) != MC_OK) return s;
    mc__cmd c = {.op = MC__OP_DISPATCH_INDIRECT};
    c.u.indirect.buffer = b->hb;
    c.u.indirect.offset = offset;
    c.u.indirect.host = b->host ? (char *)b->host + offset : NULL;
    c.u.indirect.threads = threads;
    return push_cmd(cb, &c);
}

mc_status mc_pass_barrier(mc_pass *p)
{
    mc_cmdbuf *cb;
    mc_status s = open_pass(p, __func__, &cb);
    if (s != MC_OK) return s;
    mc__cmd c = {.op = MC__OP_BARRIER};
    return push_cmd(cb, &c);
}

mc_status mc_pass_end(mc_pass *p)
{
    mc_cmdbuf *cb;
    mc_status s = open_pass(p, __func__, &cb);
    if (s != MC_OK) return s;
    cb->pass_open = false;
    return MC_OK;
}

static mc_status single_cmd_pass(mc_cmdbuf *cb, const char *fn, uint32_t kind, const char *dflt, mc__cmd *c,
                                 mc__object *ref)
{
    mc_status s = recordable(cb, fn);
    if (s != MC_OK) return s;
    if (cb->pass_open)
        return mc__fail(MC_ERR_INVALID_STATE, "%s: end pass '%s' first", fn, cb->passes[cb->npass - 1].label);
    s = ref->tag == MC__TAG_BUFFER ? use_buffer(cb, (mc_buffer *)ref) : add_ref(cb, ref);
    if (s != MC_OK) return s;
    if ((s = push_pass(cb, kind, NULL, dflt)) != MC_OK) return s;
    return push_cmd(cb, c);
}

mc_status mc_cmdbuf_copy_buffer(mc_cmdbuf *cb, mc_buffer *src, size_t src_offset, mc_buffer *dst, size_t dst_offset,
                                size_t len)
{
    MC__CHECK_HANDLE(cb, MC__TAG_CMDBUF, "command buffer");
    MC__CHECK_HANDLE(src, MC__TAG_BUFFER, "src");
    MC__CHECK_HANDLE(dst, MC__TAG_BUFFER, "dst");
    if (src->base.device != cb->base.device || dst->base.device != cb->base.device)
        return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_cmdbuf_copy_buffer: a buffer belongs to another device");
    mc_status s = mc__buffer_check_range(src, src_offset, len, "copy source");
    if (s == MC_OK) s = mc__buffer_check_range(dst, dst_offset, len, "copy destination");
    if (s != MC_OK) return s;
    if (len == 0) return MC_OK;
    if (src == dst && src_offset < dst_offset + len && dst_offset < src_offset + len)
        return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_cmdbuf_copy_buffer: source and destination ranges overlap");
    mc__cmd c = {.op = MC__OP_COPY};
    c.u.copy.src = src->hb;
    c.u.copy.src_offset = src_offset;
    c.u.copy.dst = dst->hb;
    c.u.copy.dst_offset = dst_offset;
    c.u.copy.len = len;
    /* The destination too must live until completion. */
    if ((s = use_buffer(cb, dst)) != MC_OK) return s;
    return single_cmd_pass(cb, __func__, MC__PASS_COPY, "copy", &c, &src->base);
}

mc_status mc_cmdbuf_fill_buffer(mc_cmdbuf *cb, mc_buffer *b, size_t offset, size_t len, uint8_t value)
{
    MC__CHECK_HANDLE(cb, MC__TAG_CMDBUF, "command buffer");
    MC__CHECK_HANDLE(b, MC__TAG_BUFFER, "buffer");
    if (b->base.device != cb->base.device)
        return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_cmdbuf_fill_buffer: the buffer belongs to another device");
    mc_status s = mc__buffer_check_range(b, offset, len, "fill");
    if (s != MC_OK || len == 0) return s;
    mc__cmd c = {.op = MC__OP_FILL};
    c.u.fill.buffer = b->hb;
    c.u.fill.offset = offset;
    c.u.fill.len = len;
    c.u.fill.value = value;
    return single_cmd_pass(cb, __func__, MC__PASS_COPY, "fill", &c, &b->base);
}

static mc_status event_cmd(mc_cmdbuf *cb, mc_event *e, uint64_t value, uint32_t op, const char *fn)
{
    MC__CHECK_HANDLE(cb, MC__TAG_CMDBUF, "command buffer");
    MC__CHECK_HANDLE(e, MC__TAG_EVENT, "event");
    if (e->base.device != cb->base.device)
        return mc__fail(MC_ERR_INVALID_ARGUMENT, "%s: the event belongs to another device", fn);
    mc__cmd c = {.op = op};
    c.u.event.event = e->he;
    c.u.event.value = value;
    return single_cmd_pass(cb, fn, MC__PASS_SYNC, op == MC__OP_SIGNAL ? "signal" : "wait", &c, &e->base);
}

mc_status mc_cmdbuf_signal_event(mc_cmdbuf *cb, mc_event *e, uint64_t value)
{
    return event_cmd(cb, e, value, MC__OP_SIGNAL, __func__);
}

mc_status mc_cmdbuf_wait_event(mc_cmdbuf *cb, mc_event *e, uint64_t value)
{
    return event_cmd(cb, e, value, MC__OP_WAIT, __func__);
}

mc_status mc_cmdbuf_on_completed(mc_cmdbuf *cb, mc_cmdbuf_fn fn, void *user)
{
    MC__CHECK_HANDLE(cb, MC__TAG_CMDBUF, "command buffer");
    if (!fn) return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_cmdbuf_on_completed: fn is NULL");
    mc_status s = recordable(cb, __func__);
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
    if (sub->status != MC_OK) {
        int ok = MC_OK;
        atomic_compare_exchange_strong(&q->error, &ok, (int)sub->status);
        if (sub->status == MC_ERR_DEVICE_LOST && !atomic_exchange(&d->lost, 1))
            mc__log(MC_LOG_ERROR, "device.lost", "%s device lost in command buffer '%s': %s", d->hal->name,
                    cb->base.label, cb->message);
    }
    for (uint32_t i = 0; i < cb->nrefs; i++)
        if (cb->refs[i]->tag == MC__TAG_EVENT) mc__events_changed(d, (mc_event *)cb->refs[i]);
    for (uint32_t i = 0; i < cb->nunretained; i++) atomic_fetch_sub(&cb->unretained[i]->gpu_uses, 1);
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
    mc_status s = recordable(cb, __func__);
    if (s != MC_OK) return s;
    if (cb->pass_open)
        return mc__fail(mc_validation_enabled() ? MC_ERR_VALIDATION : MC_ERR_INVALID_STATE,
                        "command buffer '%s': pass '%s' was not ended before commit", cb->base.label,
                        cb->passes[cb->npass - 1].label);
    mc_queue *q = cb->queue;
    mc_device *d = cb->base.device;
    if ((s = mc_device_check(d)) != MC_OK || (s = mc_queue_check(q)) != MC_OK) {
        fail_commit(cb, s);
        return s;
    }
    mc__submission *sub = &cb->sub;
    sub->pass_state = mc__malloc((size_t)(cb->npass ? cb->npass : 1) * sizeof *sub->pass_state);
    if (cb->flags & MC_CMDBUF_PASS_TIMESTAMPS)
        sub->pass_time = mc__calloc((size_t)(cb->npass ? cb->npass : 1) * 2, sizeof *sub->pass_time);
    if (!sub->pass_state || ((cb->flags & MC_CMDBUF_PASS_TIMESTAMPS) && !sub->pass_time))
        return mc__fail(MC_ERR_NO_MEMORY, "mc_cmdbuf_commit: out of memory");
    for (uint32_t i = 0; i < cb->npass; i++) sub->pass_state[i] = MC_PASS_PENDING;
    sub->cmds = cb->cmds;
    sub->ncmd = cb->ncmd;
    sub->bytes = cb->bytes;
    sub->passes = cb->passes;
    sub->npass = cb->npass;
    sub->flags = cb->flags;
    sub->label = cb->base.label;
    sub->status = MC_OK;
    sub->message[0] = '\0';
    sub->scheduled = on_scheduled;
    sub->complete = on_complete;
    sub->owner = cb;

    uint64_t n = atomic_fetch_add(&d->committed, 1) + 1;
    sub->inject = mc__device_take_fault(d, n);
    sub->inject_pass = cb->npass / 2;
    if (sub->inject != MC_OK)
        mc__log(MC_LOG_INFO, "fault.injected", "injecting %s into command buffer #%llu '%s'",
                mc_status_name(sub->inject), (unsigned long long)n, cb->base.label);

    for (uint32_t i = 0; i < cb->nunretained; i++) atomic_fetch_add(&cb->unretained[i]->gpu_uses, 1);

    mc__object_retain(&cb->base); /* in flight until completion */
    pthread_mutex_lock(&q->lock);
    q->in_flight++;
    pthread_mutex_unlock(&q->lock);
    atomic_store(&cb->state, MC_CMDBUF_COMMITTED);
    s = d->hal->submit(d->hd, q->hq, sub);
    if (s != MC_OK) {
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
        if (!wait_cond(&cb->done_cond, &cb->lock, deadline)) {
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
    return mc__object_check(cb, MC__TAG_CMDBUF) ? cb->npass : 0;
}

mc_status mc_cmdbuf_pass_info(const mc_cmdbuf *cb, size_t index, mc_pass_info *out)
{
    MC__CHECK_HANDLE(cb, MC__TAG_CMDBUF, "command buffer");
    if (!out) return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_cmdbuf_pass_info: out is NULL");
    if (index >= cb->npass)
        return mc__fail(MC_ERR_INVALID_ARGUMENT, "pass %zu of %u does not exist", index, cb->npass);
    out->label = cb->passes[index].label;
    bool done = finished(cb) && cb->sub.pass_state;
    out->state = done ? cb->sub.pass_state[index] : MC_PASS_UNKNOWN;
    out->gpu_start_ns = done && cb->sub.pass_time ? cb->sub.pass_time[2 * index] : 0;
    out->gpu_end_ns = done && cb->sub.pass_time ? cb->sub.pass_time[2 * index + 1] : 0;
    return MC_OK;
}

mc_status mc_cmdbuf_gpu_time(const mc_cmdbuf *cb, uint64_t *start_ns, uint64_t *end_ns)
{
    MC__CHECK_HANDLE(cb, MC__TAG_CMDBUF, "command buffer");
    if (!start_ns || !end_ns) return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_cmdbuf_gpu_time: NULL output");
    if (!finished(cb)) return mc__fail(MC_ERR_INVALID_STATE, "command buffer '%s' has not finished", cb->base.label);
    *start_ns = cb->sub.gpu_start_ns;
    *end_ns = cb->sub.gpu_end_ns;
    return MC_OK;
}
