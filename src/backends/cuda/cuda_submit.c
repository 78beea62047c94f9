/*
 * DOC: CUDA submission: a command buffer becomes work on the queue's stream
 *
 * submit() turns a command buffer into work on the queue's non-blocking
 * stream: kernel launches, copies, fills and stream memory operations, in
 * order (a pass barrier is free: one stream runs in order). Then it
 * enqueues a write of the queue's next marker value into mapped host memory
 * and appends a record to the queue's FIFO. Nothing waits in submit()
 * (except the indirect-dispatch fallback, below).
 *
 * Kernel arguments: slot i is kernel parameter i; bytes shorter than the
 * parameter and unbound parameters are padded with zeros, so the driver
 * never reads past them. A command buffer that fails here still runs the
 * passes before the failing one (cuda_queue.c says how it completes).
 * Indirect dispatch and its fallback are in cuda_indirect.c; repeated
 * command buffers replayed as graphs in cuda_replay.c; timing events in
 * cuda_timing.c.
 */
#include "backends/cuda/cuda_be.h"

#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { ARG_NONE = 0, ARG_PTR = 1, ARG_BYTES = 2 };

/* Zeros for parameters no slot binds (only ever read). */
static uint64_t zero_params[512];

/* ---- small helpers --------------------------------------------------------- */

mc_status mc__cuda_refuse(mc__cuda_rec *r, mc_status s, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->msg, sizeof r->msg, fmt, ap);
    va_end(ap);
    return s;
}

/* A CUDA call made while encoding failed. */
static mc_status enc_fail(mc__cuda_device *dev, mc__cuda_rec *r, CUresult res, const char *what, const mc__pass *ps)
{
    char t[120];
    snprintf(r->msg, sizeof r->msg, "%s in pass '%s': %s", what, ps->label, mc__cuda_text(res, t, sizeof t));
    if (mc__cuda_is_sticky(res)) mc__cuda_set_dead(dev, res, what);
    return mc__cuda_status(res);
}

mc_status mc__cuda_enc_fail(mc__cuda_device *dev, mc__cuda_rec *r, CUresult res, const char *what, const mc__pass *ps)
{
    return enc_fail(dev, r, res, what, ps);
}

/* Writes value to the queue's marker when the stream gets there. */
static CUresult write_marker(mc__cuda_device *dev, mc__cuda_queue *q, uint64_t value)
{
    CUdeviceptr addr = q->block_dptr;
    if (dev->write64) return dev->write64(q->stream, addr, value, CU_STREAM_WRITE_VALUE_DEFAULT);
    void *args[2] = {&addr, &value};
    return dev->cu->LaunchKernel(dev->k_signal, 1, 1, 1, 1, 1, 1, 0, q->stream, args, NULL);
}

/* ---- kernel arguments ----------------------------------------------------- */

static void args_reset(mc__cuda_queue *q)
{
    q->bound = 0;
    memset(q->tg, 0, sizeof q->tg);
}

static size_t tg_total(const mc__cuda_queue *q)
{
    size_t t = 0;
    for (uint32_t i = 0; i < MC__CUDA_MAX_TG; i++) t += (q->tg[i] + 15u) & ~(size_t)15u;
    return t;
}

/* Bytes bound to slot i of an MSL pointer parameter: copied into the
 * queue's poke area by mc_poke launches on the stream, before the kernel
 * that reads them and after every earlier one (stream order), and
 * q->poke_ptr[i] points there. Collected like any launch while the
 * command buffer is gathered for graph replay. */
static mc_status poke_bytes(mc__cuda_queue *q, mc__cuda_rec *r, uint32_t i)
{
    mc__cuda_device *dev = q->dev;
    const uint8_t *bytes = q->arg_bytes[i];
    size_t len = q->arg_len[i];
    if (!dev->poke)
        return mc__cuda_refuse(r, MC_ERR_UNSUPPORTED,
                               "slot %u: bytes bound to a pointer parameter need the built-in copy kernel, which did "
                               "not load on this device; bind a buffer",
                               i);
    if (len > MC__CUDA_POKE_SLOT)
        return mc__cuda_refuse(r, MC_ERR_INVALID_RESOURCE, "slot %u: %zu bytes bound; at most %u", i, len,
                               MC__CUDA_POKE_SLOT);
    if (!q->poke_area) {
        CUresult res = dev->cu->MemAlloc(&q->poke_area, (size_t)MC__CUDA_MAX_SLOTS * MC__CUDA_POKE_SLOT);
        if (res != CUDA_SUCCESS) {
            q->poke_area = 0;
            return mc__cuda_refuse(r, MC_ERR_NO_MEMORY, "device memory for bytes bound to pointer parameters");
        }
    }
    q->poke_ptr[i] = q->poke_area + (CUdeviceptr)i * MC__CUDA_POKE_SLOT;
    _Alignas(16) uint8_t blob[MC__CUDA_POKE_CHUNK];
    for (size_t off = 0; off < len; off += MC__CUDA_POKE_CHUNK) {
        size_t n = MC__MIN(len - off, (size_t)MC__CUDA_POKE_CHUNK);
        uint32_t words = (uint32_t)((n + 3u) / 4u);
        CUdeviceptr dst = q->poke_ptr[i] + off;
        memset(blob, 0, sizeof blob);
        if (n) memcpy(blob, bytes + off, n);
        void *args[3] = {&dst, &words, blob};
        if (q->collecting) {
            mc__cuda_replay_collect(q, dev->poke, (mc_size3){1, 1, 1}, (mc_size3){words, 1, 1}, 0, args, q->cur_pass);
            continue;
        }
        CUresult res = dev->cu->LaunchKernel(dev->poke->fn, 1, 1, 1, words, 1, 1, 0, q->stream, args, NULL);
        if (res != CUDA_SUCCESS) return mc__cuda_refuse(r, MC_ERR_INTERNAL, "copying the bytes of slot %u", i);
    }
    return MC_OK;
}

/* The kernelParams array: for parameter i, a pointer to its value. Bound
 * values shorter than the parameter, unbound parameters and MSL reference
 * slots ({pointer, value}) are laid out in the staging area, zero-padded
 * so the driver never reads past them. */
static mc_status build_params(mc__cuda_queue *q, mc__cuda_rec *r, const mc__cuda_pipeline *pl, void ***out)
{
    uint32_t nb = q->bound ? 32u - (uint32_t)__builtin_clz(q->bound) : 0;
    uint32_t n = pl->nparams >= 0 ? MC__MAX((uint32_t)pl->nparams, nb) : nb;
    if (n > q->params_cap) {
        uint32_t ncap = MC__MAX(n, 2 * q->params_cap);
        void **np = mc__realloc(q->params, ncap * sizeof *np);
        if (!np) return mc__cuda_refuse(r, MC_ERR_NO_MEMORY, "out of host memory building kernel parameters");
        q->params = np;
        q->params_cap = ncap;
    }
    size_t used = 0;
    uint32_t tg_sizes[MC__CUDA_MAX_TG];
    bool pass_tg_sizes = mc__cuda_takes_tg_sizes(pl) && !((q->bound >> MC__CUDA_TG_SIZES_PARAM) & 1u);
    if (pass_tg_sizes) mc__cuda_tg_sizes(q->tg, tg_sizes);
    for (uint32_t i = 0; i < n; i++) {
        size_t need = (pl->param_size && (int32_t)i < pl->nparams) ? pl->param_size[i] : 0;
        bool bound = i < MC__CUDA_MAX_SLOTS && ((q->bound >> i) & 1u);
        uint32_t kind = i < MC__CUDA_MAX_SLOTS ? pl->slot[i] & 0xffu : 0;
        const CUdeviceptr *ptr = bound && q->arg_kind[i] == ARG_PTR ? &q->arg_ptr[i] : NULL;
        const void *src = bound && !ptr ? q->arg_bytes[i] : NULL;
        size_t have = ptr ? sizeof *ptr : bound ? q->arg_len[i] : 0;
        if (pass_tg_sizes && i == MC__CUDA_TG_SIZES_PARAM) {
            src = tg_sizes; /* on the stack: copied into the staging area below */
            have = sizeof tg_sizes;
        } else if (bound && !ptr && kind == MC__CUDA_SLOT_PTR) {
            mc_status s = poke_bytes(q, r, i);
            if (s != MC_OK) return s;
            q->params[i] = &q->poke_ptr[i];
            continue;
        } else if (bound && kind != MC__CUDA_SLOT_REF && have >= need) {
            q->params[i] = ptr ? (void *)ptr : (void *)src; /* only read by the driver */
            continue;
        }
        if (!bound && !src && need <= sizeof zero_params) {
            q->params[i] = zero_params;
            continue;
        }
        size_t at = (used + 15u) & ~(size_t)15u;
        if (at + need > MC__CUDA_MAX_PARAM_BYTES)
            return mc__cuda_refuse(r, MC_ERR_INVALID_RESOURCE, "kernel parameters exceed %u bytes",
                                   MC__CUDA_MAX_PARAM_BYTES);
        mc__cuda_place_arg(pl, i, ptr, src, have, q->staging + at, need);
        q->params[i] = q->staging + at;
        used = at + need;
    }
    *out = q->params;
    return MC_OK;
}

/* Threads per group and threadgroup memory against the pipeline's limits;
 * opts the function in to more than 48 KB of dynamic shared memory. */
static mc_status check_launch(mc__cuda_device *dev, mc__cuda_rec *r, mc__cuda_pipeline *pl, mc_size3 t, size_t smem,
                              const mc__pass *ps)
{
    if (!pl) return mc__cuda_refuse(r, MC_ERR_INVALID_RESOURCE, "dispatch in pass '%s' without a pipeline", ps->label);
    uint64_t threads = (uint64_t)t.x * t.y * t.z;
    if (threads == 0 || threads > pl->max_threads)
        return mc__cuda_refuse(r, MC_ERR_INVALID_RESOURCE,
                               "pass '%s': threadgroup of %llu threads for kernel '%s' (limit %u)", ps->label,
                               (unsigned long long)threads, pl->name, pl->max_threads);
    if (smem + pl->static_smem > (size_t)dev->smem_optin)
        return mc__cuda_refuse(
            r, MC_ERR_INVALID_RESOURCE,
            "pass '%s': %zu bytes of threadgroup memory plus %u static for kernel '%s' exceed the device's "
            "%d",
            ps->label, smem, pl->static_smem, pl->name, dev->smem_optin);
    if ((int)smem > atomic_load(&pl->dyn_smem)) {
        pthread_mutex_lock(&dev->init_mu);
        CUresult res = CUDA_SUCCESS;
        if ((int)smem > atomic_load(&pl->dyn_smem)) {
            res = dev->cu->FuncSetAttribute(pl->fn, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, (int)smem);
            if (res == CUDA_SUCCESS) atomic_store(&pl->dyn_smem, (int)smem);
        }
        pthread_mutex_unlock(&dev->init_mu);
        if (res != CUDA_SUCCESS) return enc_fail(dev, r, res, "opting in to dynamic shared memory", ps);
    }
    return MC_OK;
}

static mc_status launch(mc__cuda_device *dev, mc__cuda_queue *q, mc__cuda_rec *r, mc__cuda_pipeline *pl, mc_size3 g,
                        mc_size3 t, const mc__pass *ps)
{
    size_t smem = tg_total(q);
    mc_status s = check_launch(dev, r, pl, t, smem, ps);
    if (s != MC_OK) return s;
    if (!g.x || !g.y || !g.z) return MC_OK; /* nothing to run */
    void **params;
    if ((s = build_params(q, r, pl, &params)) != MC_OK) return s;
    if (q->collecting) { /* replayed as a graph, maybe (cuda_replay.c) */
        mc__cuda_replay_collect(q, pl, g, t, (unsigned)smem, params, q->cur_pass);
        return MC_OK;
    }
    CUresult res = dev->cu->LaunchKernel(pl->fn, g.x, g.y, g.z, t.x, t.y, t.z, (unsigned)smem, q->stream, params, NULL);
    if (res != CUDA_SUCCESS) {
        char what[160];
        snprintf(what, sizeof what, "launching '%s' with (%u,%u,%u) x (%u,%u,%u) threads", pl->name, g.x, g.y, g.z, t.x,
                 t.y, t.z);
        return enc_fail(dev, r, res, what, ps);
    }
    return MC_OK;
}

/* ---- indirect dispatch: the GPU path or the fallback ---------------------- */

/* The fallback: wait for the stream, read the counts, launch. */
static mc_status indirect_sync(mc__cuda_device *dev, mc__cuda_queue *q, mc__cuda_rec *r, mc__cuda_pipeline *pl,
                               const mc__cmd *c, CUdeviceptr counts, mc_size3 t, const mc__pass *ps)
{
    uint32_t n[3];
    mc_status s = mc__cuda_read_sync(dev, q, r, c->u.indirect.host, counts, n, 3, ps);
    if (s != MC_OK) return s;
    if (!n[0] || !n[1] || !n[2]) return MC_OK;
    if ((s = mc__cuda_check_counts(r, n, ps)) != MC_OK) return s;
    mc_size3 g = {n[0], n[1], n[2]};
    return launch(dev, q, r, pl, g, t, ps);
}

static mc_status launch_indirect(mc__cuda_device *dev, mc__cuda_queue *q, mc__cuda_rec *r, mc__cuda_pipeline *pl,
                                 const mc__cmd *c, uint32_t pass_index, const mc__pass *ps)
{
    mc_size3 t = c->u.indirect.threads;
    size_t smem = tg_total(q);
    mc_status s = check_launch(dev, r, pl, t, smem, ps);
    if (s != MC_OK) return s;
    const mc__cuda_buffer *b = c->u.indirect.buffer;
    CUdeviceptr counts = b->dptr + c->u.indirect.offset;
    if (mc__cuda_indirect_mode(dev) == MC__CUDA_IND_GRAPH) {
        void **params;
        if ((s = build_params(q, r, pl, &params)) != MC_OK) return s;
        s = mc__cuda_indirect_graph(dev, q, r, pl, counts, t, (unsigned)smem, params, pass_index, ps);
        if (s != MC_ERR_UNSUPPORTED) return s;
        atomic_store(&dev->indirect, MC__CUDA_IND_SYNC);
    }
    return indirect_sync(dev, q, r, pl, c, counts, t, ps);
}

/* ---- encoding ---------------------------------------------------------------- */

static mc_status encode_pass(mc__cuda_device *dev, mc__cuda_queue *q, mc__cuda_rec *r, const mc__submission *sub,
                             uint32_t p)
{
    const mc__cuda_api *cu = dev->cu;
    const mc__pass *ps = &sub->passes[p];
    if (ps->first > sub->ncmd || ps->count > sub->ncmd - ps->first)
        return mc__cuda_refuse(r, MC_ERR_INTERNAL, "pass %u '%s' lists commands outside the command buffer", p,
                               ps->label);
    args_reset(q); /* bindings last for one pass, as with a Metal encoder */
    mc__cuda_pipeline *pl = NULL;
    for (uint32_t i = ps->first; i < ps->first + ps->count; i++) {
        const mc__cmd *c = &sub->cmds[i];
        mc_status s = MC_OK;
        CUresult res = CUDA_SUCCESS;
        switch (c->op) {
        case MC__OP_SET_PIPELINE: pl = c->u.pipeline; break;
        case MC__OP_SET_BUFFER:
        case MC__OP_SET_BYTES:
            if (c->index >= MC__CUDA_MAX_SLOTS)
                return mc__cuda_refuse(r, MC_ERR_INVALID_RESOURCE,
                                       "pass '%s': argument slot %u is over the limit of %u", ps->label, c->index,
                                       MC__CUDA_MAX_SLOTS - 1);
            if (c->op == MC__OP_SET_BUFFER) {
                const mc__cuda_buffer *b = c->u.buf.buffer;
                q->arg_kind[c->index] = ARG_PTR;
                q->arg_ptr[c->index] = b->dptr + c->u.buf.offset;
            } else {
                q->arg_kind[c->index] = ARG_BYTES;
                q->arg_bytes[c->index] = sub->bytes + c->u.bytes.offset;
                q->arg_len[c->index] = c->u.bytes.len;
            }
            q->bound |= 1u << c->index;
            break;
        case MC__OP_SET_TGMEM:
            if (c->index >= MC__CUDA_MAX_TG)
                return mc__cuda_refuse(r, MC_ERR_INVALID_RESOURCE,
                                       "pass '%s': threadgroup memory slot %u is over the limit", ps->label, c->index);
            q->tg[c->index] = c->u.tgmem.len;
            break;
        case MC__OP_DISPATCH: s = launch(dev, q, r, pl, c->u.dispatch.groups, c->u.dispatch.threads, ps); break;
        case MC__OP_DISPATCH_INDIRECT: s = launch_indirect(dev, q, r, pl, c, p, ps); break;
        case MC__OP_EXECUTE_LIST: s = mc__cuda_list_execute(dev, q, r, c, p, ps); break;
        case MC__OP_BARRIER: break; /* the stream runs in order */
        case MC__OP_COPY: {
            const mc__cuda_buffer *src = c->u.copy.src, *dst = c->u.copy.dst;
            if (c->u.copy.len)
                res = cu->MemcpyAsync(dst->dptr + c->u.copy.dst_offset, src->dptr + c->u.copy.src_offset, c->u.copy.len,
                                      q->stream);
            if (res != CUDA_SUCCESS) s = enc_fail(dev, r, res, "copy", ps);
            break;
        }
        case MC__OP_FILL: {
            const mc__cuda_buffer *b = c->u.fill.buffer;
            if (c->u.fill.len)
                res = cu->MemsetD8Async(b->dptr + c->u.fill.offset, c->u.fill.value, c->u.fill.len, q->stream);
            if (res != CUDA_SUCCESS) s = enc_fail(dev, r, res, "fill", ps);
            break;
        }
        case MC__OP_SIGNAL:
        case MC__OP_WAIT: {
            mc__cuda_event *e = c->u.event.event;
            CUdeviceptr addr = e->dptr;
            uint64_t value = c->u.event.value;
            void *args[2] = {&addr, &value};
            if (c->op == MC__OP_SIGNAL) {
                res = dev->write64 ? dev->write64(q->stream, addr, value, CU_STREAM_WRITE_VALUE_DEFAULT)
                                   : cu->LaunchKernel(dev->k_signal, 1, 1, 1, 1, 1, 1, 0, q->stream, args, NULL);
            } else if (dev->wait64) {
                res = dev->wait64(q->stream, addr, value, CU_STREAM_WAIT_VALUE_GEQ);
            } else if (dev->k_wait) {
                /* occupies one SM slot until the value arrives */
                res = cu->LaunchKernel(dev->k_wait, 1, 1, 1, 1, 1, 1, 0, q->stream, args, NULL);
            } else {
                return mc__cuda_refuse(r, MC_ERR_UNSUPPORTED, "pass '%s': the device cannot wait for events",
                                       ps->label);
            }
            if (res != CUDA_SUCCESS)
                s = enc_fail(dev, r, res, c->op == MC__OP_SIGNAL ? "event signal" : "event wait", ps);
            break;
        }
        default: return mc__cuda_refuse(r, MC_ERR_INTERNAL, "pass '%s': unknown command %u", ps->label, c->op);
        }
        if (s != MC_OK) return s;
    }
    return MC_OK;
}

/* Enqueues sub on the stream (submit_mu held) and fills r. */
static void encode(mc__cuda_device *dev, mc__cuda_queue *q, mc__cuda_rec *r, mc__submission *sub)
{
    const mc__cuda_api *cu = dev->cu;
    mc_status s = mc__cuda_enter(dev);
    if (s != MC_OK) {
        r->preset = s;
        snprintf(r->msg, sizeof r->msg, "%s", mc_last_error());
        mc__cuda_mark_failed(q, r);
        return;
    }
    uint32_t np = sub->npass, nrun = np, fault = MC__CUDA_NO_PASS;
    if (sub->inject != MC_OK) {
        fault = np ? MC__MIN(sub->inject_pass, np - 1) : MC__CUDA_NO_PASS;
        nrun = np ? fault : 0;
    }
    bool timing = (sub->flags & (MC_CMDBUF_TIMESTAMPS | MC_CMDBUF_PASS_TIMESTAMPS)) && q->timing && nrun > 0;
    r->pass_events = timing && (sub->flags & MC_CMDBUF_PASS_TIMESTAMPS) && sub->pass_time;
    if (timing && !r->pass_events && !mc__cuda_ev_record(dev, q, r)) timing = false;
    r->ran = nrun > 0;
    /* A closing event signal (a pass of that one command, as a stream's
     * items end) goes out with the completion marker below, in one batch. */
    const mc__cmd *fold = NULL;
    if (dev->batch64 && nrun == np && np > 0 && !timing) {
        const mc__pass *last = &sub->passes[np - 1];
        if (last->count == 1 && last->first < sub->ncmd && sub->cmds[last->first].op == MC__OP_SIGNAL) {
            fold = &sub->cmds[last->first];
            nrun--;
        }
    }
    uint32_t nmarkers = 0;
    /* A command buffer of plain dispatches is collected first: seen before,
     * it goes out as one graph launch (cuda_replay.c). */
    bool collect = dev->replay && !r->pass_events && !dev->pass_markers && sub->inject == MC_OK &&
                   mc__cuda_replay_eligible(sub, nrun) && mc__cuda_replay_begin(dev, q) == MC_OK;
again:
    for (uint32_t p = 0; p < nrun && s == MC_OK; p++) {
        if (r->pass_events && timing && !mc__cuda_ev_record(dev, q, r)) timing = r->pass_events = false;
        q->cur_pass = p;
        s = encode_pass(dev, q, r, sub, p);
        if (s != MC_OK) {
            /* a sticky error here is an earlier command's fault, not p's */
            fault = s == MC_ERR_DEVICE_LOST ? MC__CUDA_NO_PASS : p;
            break;
        }
        r->nran = p + 1;
        if (dev->pass_markers && p + 1 < nrun) {
            uint64_t m = atomic_load(&q->marker) + 1;
            CUresult res = write_marker(dev, q, m);
            if (res != CUDA_SUCCESS) {
                s = enc_fail(dev, r, res, "writing a pass marker", &sub->passes[p]);
                fault = MC__CUDA_NO_PASS; /* pass p ran; the rest did not */
                break;
            }
            atomic_store(&q->marker, m);
            if (nmarkers++ == 0) r->first_marker = m;
        }
    }
    if (collect) {
        collect = false;
        mc_status rs = mc__cuda_replay_end(dev, q, r, sub, s, &fault);
        if (rs == MC_ERR_UNSUPPORTED) { /* nothing went out: the plain way */
            s = MC_OK;
            fault = MC__CUDA_NO_PASS;
            r->nran = 0;
            goto again;
        }
        s = rs;
    }
    if (timing && !mc__cuda_ev_record(dev, q, r)) timing = false;
    if (!timing) {
        for (uint32_t i = 0; i < r->nev; i++) mc__cuda_ev_give(dev, q, r->ev[i]);
        r->nev = 0;
        r->pass_events = false;
    }
    r->nmarkers = nmarkers;

    /* The marker that says this submission is done. */
    uint64_t m = atomic_load(&q->marker) + 1;
    CUresult res;
    mc__cuda_event *folded = NULL;
    if (fold && s == MC_OK) {
        folded = fold->u.event.event;
        CUstreamBatchMemOpParams ops[2];
        memset(ops, 0, sizeof ops);
        ops[0].writeValue.operation = CU_STREAM_MEM_OP_WRITE_VALUE_64;
        ops[0].writeValue.address = folded->dptr;
        ops[0].writeValue.value64 = fold->u.event.value;
        ops[1].writeValue.operation = CU_STREAM_MEM_OP_WRITE_VALUE_64;
        ops[1].writeValue.address = q->block_dptr;
        ops[1].writeValue.value64 = m;
        res = dev->batch64(q->stream, 2, ops, 0); /* enqueued in this order */
        if (res == CUDA_SUCCESS) r->nran = np;
    } else {
        /* without fold, or a pass failed: the signal never ran */
        r->done_ev = dev->done_events ? mc__cuda_done_take(dev, q) : NULL;
        res = r->done_ev ? cu->EventRecord(r->done_ev, q->stream) : CUDA_ERROR_NOT_SUPPORTED;
        if (res != CUDA_SUCCESS && r->done_ev) {
            pthread_mutex_lock(&q->mu);
            mc__cuda_done_give_locked(q, r->done_ev);
            pthread_mutex_unlock(&q->mu);
            r->done_ev = NULL;
        }
        if (!r->done_ev) res = write_marker(dev, q, m);
    }
    if (res != CUDA_SUCCESS) {
        char t[120];
        if (s == MC_OK) {
            s = mc__cuda_status(res);
            snprintf(r->msg, sizeof r->msg, "writing the completion marker: %s", mc__cuda_text(res, t, sizeof t));
        }
        if (mc__cuda_is_sticky(res)) {
            mc__cuda_set_dead(dev, res, "writing the completion marker");
        } else {
            /* Observe completion the slow way, then move the marker by hand
             * (nothing else is in flight on the stream). */
            (void)cu->StreamSynchronize(q->stream);
            uint64_t cur = mc__cuda_load_done(q);
            while (cur < m &&
                   !__atomic_compare_exchange_n(q->done, &cur, m, false, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
            }
            /* the folded signal went nowhere either: nothing after it ran,
             * and a waiter must not be left short of its value */
            if (folded) mc__cuda_event_raise(folded, fold->u.event.value);
        }
    }
    atomic_store(&q->marker, m);

    if (s != MC_OK) {
        r->preset = s;
        r->fault_pass = fault;
        mc__cuda_mark_failed(q, r);
    } else if (sub->inject != MC_OK) {
        r->preset = sub->inject;
        r->fault_pass = fault;
        if (fault != MC__CUDA_NO_PASS)
            snprintf(r->msg, sizeof r->msg, "injected fault: %s in pass %u '%s'", mc_status_name(sub->inject), fault,
                     sub->passes[fault].label);
        else snprintf(r->msg, sizeof r->msg, "injected fault: %s", mc_status_name(sub->inject));
        mc__cuda_mark_failed(q, r);
        if (sub->inject == MC_ERR_DEVICE_LOST) mc__cuda_set_lost(dev, MC__CUDA_LOST_INJECTED, r->ordinal, r->msg);
    }
    mc__cuda_leave(dev);
}

/* A record from the queue's pool; *idle: nothing was queued before it. */
static mc__cuda_rec *rec_get(mc__cuda_queue *q, bool *idle)
{
    pthread_mutex_lock(&q->mu);
    mc__cuda_rec *r = q->free_recs;
    if (r) q->free_recs = r->next;
    *idle = q->head == NULL;
    pthread_mutex_unlock(&q->mu);
    if (!r) r = mc__calloc(1, sizeof *r);
    if (!r) return NULL;
    CUevent *ev = r->ev;
    uint32_t cap = r->ev_cap;
    memset(r, 0, sizeof *r);
    r->ev = ev;
    r->ev_cap = cap;
    r->fault_pass = MC__CUDA_NO_PASS;
    r->preset = MC_OK;
    return r;
}

mc_status mc__cuda_submit(void *devp, void *qp, mc__submission *sub)
{
    mc__cuda_device *dev = devp;
    mc__cuda_queue *q = qp;
    pthread_mutex_lock(&q->submit_mu);
    bool idle;
    mc__cuda_rec *r = rec_get(q, &idle);
    if (!r) {
        pthread_mutex_unlock(&q->submit_mu);
        return mc__fail(MC_ERR_NO_MEMORY, "cuda: out of memory submitting '%s'", sub->label);
    }
    r->sub = sub;
    r->sub_seq = ++q->sub_seq;
    r->ordinal = atomic_fetch_add(&dev->ordinal, 1) + 1;
    sub->gpu_start_ns = sub->gpu_end_ns = 0;

    uint64_t failed = atomic_load(&q->fail_seq);
    if (atomic_load(&dev->lost) != MC__CUDA_ALIVE) {
        r->preset = MC_ERR_DEVICE_LOST;
        snprintf(r->msg, sizeof r->msg, "%s", dev->lost_msg);
    } else if (failed) {
        r->preset = MC_ERR_PRIOR_ERROR;
        snprintf(r->msg, sizeof r->msg, "not executed: command buffer #%llu on this queue failed before it",
                 (unsigned long long)failed);
    } else {
        encode(dev, q, r, sub);
        mc__cuda_slots_settle(q);
    }
    r->last_marker = atomic_load(&q->marker);

    /* Work on an idle queue starts now. (Only here, before the record is
     * visible, is sub certainly alive; reapers tell later heads.) */
    if (idle && r->ran && r->preset == MC_OK && sub->scheduled) {
        r->scheduled = true;
        sub->scheduled(sub);
    }

    pthread_mutex_lock(&q->mu);
    r->next = NULL;
    if (q->tail) {
        q->tail->next = r;
    } else {
        q->head = r;
        atomic_store(&q->head_marker, r->last_marker);
    }
    q->tail = r;
    atomic_fetch_add(&q->nrec, 1);
    pthread_mutex_unlock(&q->mu);
    bool was_idle = atomic_fetch_add(&dev->inflight, 1) == 0;
    pthread_mutex_unlock(&q->submit_mu);
    if (was_idle) mc__cuda_wake(dev);
    return MC_OK;
}
