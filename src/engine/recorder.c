/*
 * DOC: Recording: command buffers and command lists
 *
 * A command buffer is recorded into a flat command list (mc__cmd) grouped
 * in passes; at commit the whole list goes to the backend in one call, so
 * many dispatches cost one submission (F136, F163). This file owns the
 * recorder that command buffers and command lists share (each list
 * dispatch written with the state it needs, see cmdlist.c), the mc_pass
 * calls, the commands that are passes of their own (copy, fill, event
 * signal and wait, executing a command list), and the checks that refuse
 * bad work before it runs. Commit and completion are in cmdbuf.c.
 */
#include "engine/engine.h"

#include <stdlib.h>
#include <string.h>

/* ---- the recorder ---------------------------------------------------------
 *
 * Command buffers and command lists record through the same mc_pass calls
 * and the same checks. A command buffer writes each call as a command in
 * its open pass. A command list (rec->snapshot) keeps the bindings aside
 * and writes each dispatch as a self-contained group: barrier, pipeline,
 * every bound argument and threadgroup memory slot, the dispatch (hal.h,
 * "command lists"), so any range of its commands runs on its own.
 */

void mc__recorder_init(mc__recorder *rec, mc__object *owner, bool snapshot, bool unretained, uint32_t max_dispatches)
{
    memset(rec, 0, sizeof *rec);
    rec->owner = owner;
    rec->snapshot = snapshot;
    rec->unretained = unretained;
    rec->max_dispatches = max_dispatches;
}

void mc__recorder_clear(mc__recorder *rec)
{
    for (uint32_t i = 0; i < rec->nrefs; i++) mc__object_release(rec->refs[i]);
    for (uint32_t i = 0; i < rec->npass; i++) free((char *)rec->passes[i].label);
    rec->nrefs = rec->nunretained = rec->ncmd = rec->nbytes = rec->npass = 0;
}

void mc__recorder_free(mc__recorder *rec)
{
    mc__recorder_clear(rec);
    free(rec->refs);
    free(rec->unretained_bufs);
    free(rec->cmds);
    free(rec->bytes);
    free(rec->passes);
    rec->refs = NULL;
    rec->unretained_bufs = NULL;
    rec->cmds = NULL;
    rec->bytes = NULL;
    rec->passes = NULL;
    rec->nrefs = rec->nunretained = rec->ncmd = rec->nbytes = rec->npass = 0;
    rec->ref_cap = rec->unretained_cap = rec->cmd_cap = rec->bytes_cap = rec->pass_cap = 0;
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

mc_status mc__cmdbuf_recordable(const mc_cmdbuf *cb, const char *fn)
{
    int st = atomic_load_explicit(&((mc_cmdbuf *)cb)->state, memory_order_relaxed);
    if (st > MC_CMDBUF_ENQUEUED)
        return mc__fail(MC_ERR_INVALID_STATE, "%s: command buffer '%s' was already committed", fn, cb->base.label);
    return MC_OK;
}

mc_status mc__recorder_add_ref(mc__recorder *rec, mc__object *o)
{
    if (rec->nrefs && rec->refs[rec->nrefs - 1] == o) return MC_OK;
    mc_status s = grow((void **)&rec->refs, &rec->ref_cap, rec->nrefs + 1, sizeof *rec->refs);
    if (s != MC_OK) return s;
    rec->refs[rec->nrefs++] = o;
    mc__object_retain(o);
    return MC_OK;
}

/* A buffer the recording uses: retained, or with unretained references
 * (F676) remembered so validation can refuse freeing it while in use. */
static mc_status use_buffer(mc__recorder *rec, mc_buffer *b)
{
    if (!rec->unretained) return mc__recorder_add_ref(rec, &b->base);
    if (!mc_validation_enabled() || (rec->nunretained && rec->unretained_bufs[rec->nunretained - 1] == b)) return MC_OK;
    mc_status s =
        grow((void **)&rec->unretained_bufs, &rec->unretained_cap, rec->nunretained + 1, sizeof *rec->unretained_bufs);
    if (s == MC_OK) rec->unretained_bufs[rec->nunretained++] = b;
    return s;
}

static mc_status push_cmd(mc__recorder *rec, const mc__cmd *c)
{
    mc_status s = grow((void **)&rec->cmds, &rec->cmd_cap, rec->ncmd + 1, sizeof *rec->cmds);
    if (s != MC_OK) return s;
    rec->cmds[rec->ncmd++] = *c;
    if (rec->npass) rec->passes[rec->npass - 1].count++;
    return MC_OK;
}

static mc_status push_pass(mc__recorder *rec, uint32_t kind, const char *label, const char *dflt)
{
    mc_status s = grow((void **)&rec->passes, &rec->pass_cap, rec->npass + 1, sizeof *rec->passes);
    if (s != MC_OK) return s;
    char *l = mc__strdup(label ? label : dflt);
    if (!l) return mc__fail(MC_ERR_NO_MEMORY, "out of memory recording a command buffer");
    mc__pass *p = &rec->passes[rec->npass++];
    p->label = l;
    p->kind = kind;
    p->first = rec->ncmd;
    p->count = 0;
    return MC_OK;
}

/* Copies len bytes into the arena, 16-byte aligned (kernels may read any
 * scalar type); *off receives where. */
static mc_status push_bytes(mc__recorder *rec, const void *data, size_t len, uint32_t *off)
{
    *off = 0; /* set on every path: gcc 12 -O3 cannot see mc__fail never returns MC_OK */
    uint32_t at = (rec->nbytes + 15u) & ~15u;
    if (len > UINT32_MAX - at) return mc__fail(MC_ERR_NO_MEMORY, "too many bytes arguments in one recording");
    mc_status s = grow((void **)&rec->bytes, &rec->bytes_cap, at + (uint32_t)len, 1);
    if (s != MC_OK) return s;
    memcpy(rec->bytes + at, data, len);
    rec->nbytes = at + (uint32_t)len;
    *off = at;
    return MC_OK;
}

/* The name of what is being recorded into, for messages. */
const char *mc__recorder_pass_label(const mc__recorder *rec)
{
    if (rec->snapshot) return rec->owner->label ? rec->owner->label : "cmdlist";
    return rec->npass ? rec->passes[rec->npass - 1].label : "?";
}

mc_status mc_cmdbuf_begin_pass(mc_cmdbuf *cb, const char *label, mc_pass **out)
{
    MC__CHECK_HANDLE(cb, MC__TAG_CMDBUF, "command buffer");
    if (!out) return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_cmdbuf_begin_pass: out is NULL");
    *out = NULL;
    mc_status s = mc__cmdbuf_recordable(cb, __func__);
    if (s != MC_OK) return s;
    mc__recorder *rec = &cb->rec;
    if (rec->pass_open)
        return mc__fail(MC_ERR_INVALID_STATE, "command buffer '%s': end pass '%s' before beginning another",
                        cb->base.label, mc__recorder_pass_label(rec));
    if ((s = push_pass(rec, MC__PASS_COMPUTE, label, "compute")) != MC_OK) return s;
    rec->pass_open = true;
    rec->cur_pipeline = NULL;
    rec->bound = 0;
    *out = &cb->pass;
    return MC_OK;
}

/* The recorder behind an open pass of a command buffer or a recording list. */
static mc_status open_pass(mc_pass *p, const char *fn, mc__recorder **recp)
{
    *recp = NULL; /* set on every path: gcc 12 -O3 cannot see mc__fail never returns MC_OK */
    if (!p || !p->rec) return mc__fail(MC_ERR_INVALID_ARGUMENT, "%s: pass is NULL or not valid", fn);
    mc__recorder *rec = p->rec;
    if (mc__object_check(rec->owner, MC__TAG_CMDBUF)) {
        mc_status s = mc__cmdbuf_recordable((mc_cmdbuf *)rec->owner, fn);
        if (s != MC_OK) return s;
    } else if (mc__object_check(rec->owner, MC__TAG_CMDLIST)) {
        if (((mc_cmdlist *)rec->owner)->state != MC__LIST_RECORDING)
            return mc__fail(MC_ERR_INVALID_STATE, "%s: command list '%s' is not recording", fn, rec->owner->label);
    } else {
        return mc__fail(MC_ERR_INVALID_ARGUMENT, "%s: pass is NULL or not valid", fn);
    }
    if (!rec->pass_open) return mc__fail(MC_ERR_INVALID_STATE, "%s: the pass has ended", fn);
    *recp = rec;
    return MC_OK;
}

mc_status mc_pass_set_pipeline(mc_pass *p, mc_pipeline *pl)
{
    mc__recorder *rec;
    mc_status s = open_pass(p, __func__, &rec);
    if (s != MC_OK) return s;
    MC__CHECK_HANDLE(pl, MC__TAG_PIPELINE, "pipeline");
    if (pl->base.device != rec->owner->device)
        return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_pass_set_pipeline: the pipeline belongs to another device");
    if ((s = mc__recorder_add_ref(rec, &pl->base)) != MC_OK) return s;
    if (!rec->snapshot) {
        mc__cmd c = {.op = MC__OP_SET_PIPELINE};
        c.u.pipeline = pl->hp;
        if ((s = push_cmd(rec, &c)) != MC_OK) return s;
    }
    rec->cur_pipeline = pl;
    return MC_OK;
}

/* An argument binding: written now (command buffer) or kept for the next
 * dispatch (command list). */
static mc_status bind_arg(mc__recorder *rec, const mc__cmd *c)
{
    if (rec->snapshot) {
        rec->arg[c->index] = *c;
    } else {
        mc_status s = push_cmd(rec, c);
        if (s != MC_OK) return s;
    }
    rec->bound |= 1u << c->index;
    return MC_OK;
}

mc_status mc_pass_set_buffer(mc_pass *p, uint32_t index, mc_buffer *b, size_t offset)
{
    mc__recorder *rec;
    mc_status s = open_pass(p, __func__, &rec);
    if (s != MC_OK) return s;
    MC__CHECK_HANDLE(b, MC__TAG_BUFFER, "buffer");
    if (index >= MC_MAX_BUFFER_ARGS)
        return mc__fail(MC_ERR_INVALID_ARGUMENT, "argument index %u is over the limit of %d", index,
                        MC_MAX_BUFFER_ARGS - 1);
    if (b->base.device != rec->owner->device)
        return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_pass_set_buffer: the buffer belongs to another device");
    if (offset > b->size || (mc_validation_enabled() && offset == b->size))
        return mc__fail(mc_validation_enabled() ? MC_ERR_VALIDATION : MC_ERR_INVALID_ARGUMENT,
                        "argument %u: offset %zu is past the end of buffer '%s' (%zu bytes)", index, offset,
                        b->base.label ? b->base.label : "(unlabelled)", b->size);
    if ((s = use_buffer(rec, b)) != MC_OK) return s;
    mc__cmd c = {.op = MC__OP_SET_BUFFER, .index = index};
    c.u.buf.buffer = b->hb;
    c.u.buf.offset = offset;
    c.u.buf.size = b->size - offset;
    c.u.buf.host = b->host ? (char *)b->host + offset : NULL;
    return bind_arg(rec, &c);
}

mc_status mc_pass_set_bytes(mc_pass *p, uint32_t index, const void *data, size_t len)
{
    mc__recorder *rec;
    mc_status s = open_pass(p, __func__, &rec);
    if (s != MC_OK) return s;
    if (index >= MC_MAX_BUFFER_ARGS)
        return mc__fail(MC_ERR_INVALID_ARGUMENT, "argument index %u is over the limit of %d", index,
                        MC_MAX_BUFFER_ARGS - 1);
    if (!data || len == 0 || len > MC_MAX_BYTES_ARG)
        return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_pass_set_bytes: need 1..%d bytes of data, got %zu%s",
                        MC_MAX_BYTES_ARG, len, data ? "" : " (data is NULL)");
    uint32_t off;
    if ((s = push_bytes(rec, data, len, &off)) != MC_OK) return s;
    mc__cmd c = {.op = MC__OP_SET_BYTES, .index = index};
    c.u.bytes.offset = off;
    c.u.bytes.len = (uint32_t)len;
    return bind_arg(rec, &c);
}

mc_status mc_pass_set_threadgroup_memory(mc_pass *p, uint32_t index, size_t len)
{
    mc__recorder *rec;
    mc_status s = open_pass(p, __func__, &rec);
    if (s != MC_OK) return s;
    if (index >= MC_MAX_THREADGROUP_MEMORY_ARGS)
        return mc__fail(MC_ERR_INVALID_ARGUMENT, "threadgroup memory index %u is over the limit of %d", index,
                        MC_MAX_THREADGROUP_MEMORY_ARGS - 1);
    const mc_device_info *info = &rec->owner->device->info;
    if (len > info->threadgroup_memory_size)
        return mc__fail(MC_ERR_INVALID_ARGUMENT, "threadgroup memory of %zu bytes is over the device's %llu", len,
                        (unsigned long long)info->threadgroup_memory_size);
    if (rec->snapshot) {
        rec->tgmem[index] = len;
        rec->tg_set |= 1u << index;
        return MC_OK;
    }
    mc__cmd c = {.op = MC__OP_SET_TGMEM, .index = index};
    c.u.tgmem.len = len;
    return push_cmd(rec, &c);
}

static mc_status check_threads(mc__recorder *rec, mc_size3 t)
{
    mc_pipeline *pl = rec->cur_pipeline;
    if (!pl)
        return mc__fail(MC_ERR_INVALID_STATE, "dispatch in pass '%s' before a pipeline was set",
                        mc__recorder_pass_label(rec));
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
                                  : (rec->bound ? (1u << (32 - __builtin_clz(rec->bound))) - 1u : 0);
        uint32_t missing = need & ~rec->bound;
        if (missing)
            return mc__fail(MC_ERR_VALIDATION, "pipeline '%s': argument slot %d is not bound", pl->base.label,
                            __builtin_ctz(missing));
    }
    if (rec->snapshot && rec->ndispatch >= rec->max_dispatches)
        return mc__fail(MC_ERR_INVALID_ARGUMENT, "command list '%s' is full: it holds at most %u commands",
                        mc__recorder_pass_label(rec), rec->max_dispatches);
    return MC_OK;
}

/* A dispatch command: on its own in a command buffer; in a command list
 * with the barrier, pipeline and bindings it carries. */
static mc_status push_dispatch(mc__recorder *rec, const mc__cmd *d)
{
    if (!rec->snapshot) return push_cmd(rec, d);
    uint32_t need = 3 + (uint32_t)__builtin_popcount(rec->bound) + (uint32_t)__builtin_popcount(rec->tg_set);
    mc_status s = grow((void **)&rec->cmds, &rec->cmd_cap, rec->ncmd + need, sizeof *rec->cmds);
    if (s != MC_OK) return s;
    if (rec->barrier) rec->cmds[rec->ncmd++] = (mc__cmd){.op = MC__OP_BARRIER};
    mc__cmd c = {.op = MC__OP_SET_PIPELINE};
    c.u.pipeline = rec->cur_pipeline->hp;
    rec->cmds[rec->ncmd++] = c;
    for (uint32_t i = 0; i < MC_MAX_BUFFER_ARGS; i++)
        if (rec->bound >> i & 1u) rec->cmds[rec->ncmd++] = rec->arg[i];
    for (uint32_t i = 0; i < MC_MAX_THREADGROUP_MEMORY_ARGS; i++) {
        if (!(rec->tg_set >> i & 1u)) continue;
        mc__cmd t = {.op = MC__OP_SET_TGMEM, .index = i};
        t.u.tgmem.len = rec->tgmem[i];
        rec->cmds[rec->ncmd++] = t;
    }
    rec->cmds[rec->ncmd++] = *d;
    rec->barrier = false;
    rec->ndispatch++;
    if (d->op == MC__OP_DISPATCH_INDIRECT) rec->has_indirect = true;
    return MC_OK;
}

mc_status mc_pass_dispatch(mc_pass *p, mc_size3 groups, mc_size3 threads)
{
    mc__recorder *rec;
    mc_status s = open_pass(p, __func__, &rec);
    if (s != MC_OK) return s;
    if ((s = check_threads(rec, threads)) != MC_OK) return s;
    if ((uint64_t)groups.x * groups.y * groups.z == 0) {
        if (mc_validation_enabled())
            return mc__fail(MC_ERR_VALIDATION, "dispatch of (%u,%u,%u) threadgroups has a zero dimension", groups.x,
                            groups.y, groups.z);
        /* Nothing to run; a list still counts the command, so the indices
         * of the commands after it stay where the program put them. */
        if (!rec->snapshot) return MC_OK;
    }
    mc__cmd c = {.op = MC__OP_DISPATCH};
    c.u.dispatch.groups = groups;
    c.u.dispatch.threads = threads;
    return push_dispatch(rec, &c);
}

mc_status mc_pass_dispatch_indirect(mc_pass *p, mc_buffer *b, size_t offset, mc_size3 threads)
{
    mc__recorder *rec;
    mc_status s = open_pass(p, __func__, &rec);
    if (s != MC_OK) return s;
    MC__CHECK_HANDLE(b, MC__TAG_BUFFER, "indirect buffer");
    if (b->base.device != rec->owner->device)
        return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_pass_dispatch_indirect: the buffer belongs to another device");
    if (offset % 4 || offset > b->size || b->size - offset < 12)
        return mc__fail(MC_ERR_INVALID_ARGUMENT,
                        "indirect arguments at offset %zu: need 12 bytes, 4-byte aligned, inside '%s' (%zu bytes)",
                        offset, b->base.label ? b->base.label : "(unlabelled)", b->size);
    if ((s = check_threads(rec, threads)) != MC_OK) return s;
    if ((s = use_buffer(rec, b)) != MC_OK) return s;
    mc__cmd c = {.op = MC__OP_DISPATCH_INDIRECT};
    c.u.indirect.buffer = b->hb;
    c.u.indirect.offset = offset;
    c.u.indirect.host = b->host ? (char *)b->host + offset : NULL;
    c.u.indirect.threads = threads;
    return push_dispatch(rec, &c);
}

mc_status mc_pass_barrier(mc_pass *p)
{
    mc__recorder *rec;
    mc_status s = open_pass(p, __func__, &rec);
    if (s != MC_OK) return s;
    if (rec->snapshot) {
        rec->barrier = rec->ndispatch > 0; /* nothing to wait for before the first command */
        return MC_OK;
    }
    mc__cmd c = {.op = MC__OP_BARRIER};
    return push_cmd(rec, &c);
}

mc_status mc_pass_end(mc_pass *p)
{
    mc__recorder *rec;
    mc_status s = open_pass(p, __func__, &rec);
    if (s != MC_OK) return s;
    if (rec->snapshot) return mc_cmdlist_end((mc_cmdlist *)rec->owner);
    rec->pass_open = false;
    return MC_OK;
}

static mc_status single_cmd_pass(mc_cmdbuf *cb, const char *fn, uint32_t kind, const char *dflt, mc__cmd *c,
                                 mc__object *ref)
{
    mc_status s = mc__cmdbuf_recordable(cb, fn);
    if (s != MC_OK) return s;
    mc__recorder *rec = &cb->rec;
    if (rec->pass_open)
        return mc__fail(MC_ERR_INVALID_STATE, "%s: end pass '%s' first", fn, mc__recorder_pass_label(rec));
    s = ref->tag == MC__TAG_BUFFER ? use_buffer(rec, (mc_buffer *)ref) : mc__recorder_add_ref(rec, ref);
    if (s != MC_OK) return s;
    if ((s = push_pass(rec, kind, NULL, dflt)) != MC_OK) return s;
    return push_cmd(rec, c);
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
    if ((s = use_buffer(&cb->rec, dst)) != MC_OK) return s;
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

/* ---- executing command lists ------------------------------------------------ */

/* The command buffer can take an execution of l; *recp receives the list's
 * recording (a reference the caller releases). */
static mc_status execution_checks(mc_cmdbuf *cb, mc_cmdlist *l, const char *fn, mc__listrec **recp)
{
    MC__CHECK_HANDLE(cb, MC__TAG_CMDBUF, "command buffer");
    MC__CHECK_HANDLE(l, MC__TAG_CMDLIST, "command list");
    if (l->base.device != cb->base.device)
        return mc__fail(MC_ERR_INVALID_ARGUMENT, "%s: the command list belongs to another device", fn);
    mc_status s = mc__cmdbuf_recordable(cb, fn);
    if (s != MC_OK) return s;
    if (cb->rec.pass_open)
        return mc__fail(MC_ERR_INVALID_STATE, "%s: end pass '%s' first", fn, mc__recorder_pass_label(&cb->rec));
    return mc__cmdlist_take(l, recp);
}

/* The execution's own pass. The list (whose in-flight count refuses
 * resets) and the recording (what runs) stay with the command buffer,
 * whatever its reference flags. */
static mc_status execution_pass(mc_cmdbuf *cb, mc_cmdlist *l, mc__listrec *r)
{
    mc_status s = mc__recorder_add_ref(&cb->rec, &l->base);
    if (s == MC_OK) s = mc__recorder_add_ref(&cb->rec, &r->base);
    if (s == MC_OK) s = push_pass(&cb->rec, MC__PASS_COMPUTE, l->base.label, "cmdlist");
    return s;
}

/* Without a backend list: the groups of [first, first+count) copied into the
 * pass, their bytes into the command buffer's arena. */
static mc_status copy_in(mc__recorder *rec, const mc__listrec *r, uint32_t first, uint32_t count)
{
    for (uint32_t k = first; k < first + count; k++) {
        uint32_t end = k + 1 < r->ncommands ? r->group[k + 1] : r->ncmd;
        for (uint32_t i = r->group[k]; i < end; i++) {
            mc__cmd c = r->cmds[i];
            mc_status s;
            if (c.op == MC__OP_SET_BYTES &&
                (s = push_bytes(rec, r->bytes + c.u.bytes.offset, c.u.bytes.len, &c.u.bytes.offset)) != MC_OK)
                return s;
            if ((s = push_cmd(rec, &c)) != MC_OK) return s;
        }
    }
    return MC_OK;
}

mc_status mc_cmdbuf_execute_cmdlist(mc_cmdbuf *cb, mc_cmdlist *l, uint32_t first, uint32_t count)
{
    mc__listrec *r;
    mc_status s = execution_checks(cb, l, __func__, &r);
    if (s != MC_OK) return s;
    if (first > r->ncommands) {
        s = mc__fail(MC_ERR_INVALID_ARGUMENT, "%s: first command %u is past the end of list '%s' (%u commands)",
                     __func__, first, l->base.label, r->ncommands);
    } else {
        count = MC__MIN(count, r->ncommands - first);
        s = execution_pass(cb, l, r);
    }
    if (s == MC_OK && !r->hl) {
        s = copy_in(&cb->rec, r, first, count);
    } else if (s == MC_OK) {
        mc__cmd c = {.op = MC__OP_EXECUTE_LIST};
        c.u.exec.list = r->hl;
        c.u.exec.first = first;
        c.u.exec.count = count;
        s = push_cmd(&cb->rec, &c);
    }
    mc__object_release(&r->base); /* the command buffer holds its own */
    return s;
}

mc_status mc_cmdbuf_execute_cmdlist_indirect(mc_cmdbuf *cb, mc_cmdlist *l, mc_buffer *range, size_t offset)
{
    mc__listrec *r;
    mc_status s = execution_checks(cb, l, __func__, &r);
    if (s != MC_OK) return s;
    if (!mc__object_check(range, MC__TAG_BUFFER)) {
        s = mc__fail(MC_ERR_INVALID_ARGUMENT, "%s: range buffer is NULL or not a valid handle", __func__);
    } else if (range->base.device != cb->base.device) {
        s = mc__fail(MC_ERR_INVALID_ARGUMENT, "%s: the range buffer belongs to another device", __func__);
    } else if (offset % 4 || offset > range->size || range->size - offset < 8) {
        s = mc__fail(MC_ERR_INVALID_ARGUMENT,
                     "%s: the range at offset %zu needs 8 bytes, 4-byte aligned, inside '%s' (%zu bytes)", __func__,
                     offset, range->base.label ? range->base.label : "(unlabelled)", range->size);
    } else if (!r->hl || !(r->caps & MC__LIST_GPU_RANGE)) {
        s = mc__fail(MC_ERR_UNSUPPORTED, "%s: the %s device cannot read the range of list '%s' on the device%s",
                     __func__, cb->base.device->hal->name, l->base.label,
                     r->has_indirect ? " (the list holds indirect dispatches)" : "");
    } else {
        s = execution_pass(cb, l, r);
    }
    if (s == MC_OK) s = use_buffer(&cb->rec, range);
    if (s == MC_OK) {
        mc__cmd c = {.op = MC__OP_EXECUTE_LIST};
        c.u.exec.list = r->hl;
        c.u.exec.first = 0;
        c.u.exec.count = r->ncommands;
        c.u.exec.range_buffer = range->hb;
        c.u.exec.range_offset = offset;
        c.u.exec.range_host = range->host ? (char *)range->host + offset : NULL;
        s = push_cmd(&cb->rec, &c);
    }
    mc__object_release(&r->base);
    return s;
}
