/*
 * DOC: Metal device: queues, submissions and errors
 *
 * One MTLCommandQueue per HAL queue; a submission becomes one
 * MTLCommandBuffer, made from a descriptor that asks for per-encoder
 * execution status (F686) and, when the command buffer was recorded with
 * MC_CMDBUF_UNRETAINED_REFERENCES, unretained references (F676). Each
 * compute pass is one labelled compute encoder; copy and fill passes are
 * blit encoders (or the internal byte kernels when the range is not a
 * multiple of 4); SIGNAL and WAIT are encodeSignalEvent / encodeWaitForEvent
 * on the command buffer between encoders (F693). Encoding and commit happen
 * under the queue's lock, so commit order is submit order.
 *
 * The outcome arrives in the completed handler, on a Metal thread: the
 * command buffer's status and error (MTLCommandBufferError, F685, F687) map
 * to the taxonomy, the error's encoder infos to pass states (F686),
 * GPUStartTime / GPUEndTime give the timing. Then the HAL's rules:
 *  - after a failure the queue is sticky: submissions already committed
 *    behind it report MC_ERR_PRIOR_ERROR (their passes AFFECTED if Metal ran
 *    them anyway), later ones complete at once without reaching Metal; the
 *    broken MTLCommandQueue is released and replaced as soon as it is idle,
 *    the only documented recovery (F687);
 *  - MTLCommandBufferErrorDeviceRemoved (or an injected device loss) loses
 *    the device for good;
 *  - validation mode (MC__SUBMIT_VALIDATION): an indirect dispatch's counts
 *    pass through mc_check_grid first, which zeroes counts over
 *    MC_INDIRECT_MAX_GROUPS_* and raises a flag in the submission's scratch
 *    buffer; the completed handler turns a raised flag into
 *    MC_ERR_VALIDATION for that pass (the dispatch did not run);
 *  - MTLCommandBufferErrorAccessRevoked, the OS's answer to repeated GPU
 *    faults (F146, F685), is reported as MC_ERR_ACCESS_REVOKED with the
 *    process's failure count.
 */
#include "backends/metal/metal.h"

#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* One committed command buffer, shared by its handler blocks. */
typedef struct inflight {
    mc__mtl_queue *q;
    mc__submission *sub;
    uint64_t seq;
    uint32_t nrun;      /* passes encoded: all, or those before an injected fault */
    uint32_t nenc;      /* encoders, in order */
    uint32_t *enc_pass; /* the pass of each encoder */
    atomic_int refs;    /* completed handler + scheduled handler */
    atomic_int sched;   /* FSCHED_* */
    /* 16-byte slots the internal kernels write (a clamped list range, a
     * checked grid and its flag), or NULL when the submission needs none */
    mc__mtl_buffer *scratch;
    uint32_t nslots, used_slots;
    uint32_t *check_pass; /* nslots entries: the pass of a grid check, UINT32_MAX: not a check */
} inflight;

#define SLOT_BYTES 16u

enum { FSCHED_IDLE, FSCHED_RUNNING, FSCHED_DONE, FSCHED_SKIPPED };

static void inflight_unref(inflight *f)
{
    if (atomic_fetch_sub(&f->refs, 1) != 1) return;
    free(f->enc_pass);
    free(f->check_pass);
    free(f);
}

/* ---- queues ---------------------------------------------------------------- */

/* A new MTLCommandQueue (+1), labelled, with the device's residency set.
 * Pool held. */
static id new_mtl_queue(mc__mtl_queue *q)
{
    id mq = msg_newCommandQueue(q->dev->device);
    if (!mq) return mq;
    if (q->label) msg_setLabel_(mq, mc__mtl_str(q->label));
    if (q->dev->residency) msg_addResidencySet_(mq, q->dev->residency); /* F169 */
    return mq;
}

static void retire_mtl_queue(mc__mtl_queue *q, id mq)
{
    if (!mq) return;
    if (q->dev->residency) msg_removeResidencySet_(mq, q->dev->residency);
    mc__mtl_release(mq);
}

mc_status mc__mtl_queue_create(void *vdev, const char *label, void **out)
{
    mc__mtl_device *dev = vdev;
    mc_status s = mc__mtl_device_lost_status(dev);
    if (s != MC_OK) return s;
    mc__mtl_queue *q = mc__calloc(1, sizeof *q);
    if (!q) return mc__fail(MC_ERR_NO_MEMORY, "Metal queue: out of host memory");
    q->dev = dev;
    q->label = label ? mc__strdup(label) : NULL;
    pthread_mutex_init(&q->lock, NULL);
    id pool = mc__mtl_pool_push();
    q->queue = new_mtl_queue(q);
    mc__mtl_pool_pop(pool);
    if (!q->queue) {
        pthread_mutex_destroy(&q->lock);
        free(q->label);
        free(q);
        return mc__fail(MC_ERR_OUT_OF_MEMORY, "Metal could not make a command queue");
    }
    *out = q;
    return MC_OK;
}

void mc__mtl_queue_destroy(void *vdev, void *vq)
{
    mc__mtl_queue *q = vq;
    (void)vdev;
    if (!q) return;
    id pool = mc__mtl_pool_push(); /* the queue's last release runs dealloc, which may autorelease */
    retire_mtl_queue(q, q->queue);
    mc__mtl_pool_pop(pool);
    pthread_mutex_destroy(&q->lock);
    free(q->label);
    free(q);
}

/* ---- errors ------------------------------------------------------------------ */

mc_status mc__mtl_map_error_code(NSInteger code)
{
    switch (code) { /* MTLCommandBufferError, F685: same numbers as the taxonomy */
    case 1: return MC_ERR_INTERNAL;
    case 2: return MC_ERR_TIMEOUT;
    case 3: return MC_ERR_PAGE_FAULT;
    case 4: return MC_ERR_ACCESS_REVOKED;
    case 7: return MC_ERR_NOT_PERMITTED;
    case 8: return MC_ERR_OUT_OF_MEMORY;
    case 9: return MC_ERR_INVALID_RESOURCE;
    case 11: return MC_ERR_DEVICE_LOST;
    default: return MC_ERR_INTERNAL; /* None, Memoryless (10), StackOverflow (12), newer codes */
    }
}

static mc_pass_state map_encoder_state(MTLCommandEncoderErrorState st)
{
    switch (st) { /* MTLCommandEncoderErrorState, F686 */
    case 1: return MC_PASS_COMPLETED;
    case 2: return MC_PASS_AFFECTED;
    case 3: return MC_PASS_PENDING;
    case 4: return MC_PASS_FAULTED;
    default: return MC_PASS_UNKNOWN;
    }
}

static void set_message(mc__submission *sub, const char *fmt, ...) MC__PRINTF(2, 3);
static void set_message(mc__submission *sub, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(sub->message, sizeof sub->message, fmt, ap);
    va_end(ap);
}

/* Pass states from the error's encoder infos, matched to our encoders by
 * label in encoding order. Passes without an encoder (SIGNAL, WAIT, empty
 * copies) are COMPLETED when a later encoder started, PENDING when an
 * earlier one faulted or never ran, else UNKNOWN. Pool held. */
static void states_from_error(const inflight *f, id err, mc__submission *sub)
{
    mc_pass_state *ps = sub->pass_state;
    for (uint32_t p = 0; p < f->nrun; p++) ps[p] = MC_PASS_UNKNOWN;
    id user = err ? msg_userInfo(err) : (id)0;
    id infos = user ? msg_objectForKey_(user, MTLCommandBufferEncoderInfoErrorKey) : (id)0;
    NSUInteger n = infos ? msg_count(infos) : 0;
    uint32_t cursor = 0;
    for (NSUInteger i = 0; i < n; i++) {
        id info = msg_objectAtIndex_(infos, i);
        char label[256];
        mc__mtl_cstr(msg_label(info), label, sizeof label);
        uint32_t k = cursor;
        while (k < f->nenc && strcmp(sub->passes[f->enc_pass[k]].label, label) != 0) k++;
        if (k == f->nenc) continue; /* not one of ours */
        ps[f->enc_pass[k]] = map_encoder_state(msg_errorState(info));
        cursor = k + 1;
    }
    uint32_t e = 0; /* the first encoder after pass p */
    for (uint32_t p = 0; p < f->nrun; p++) {
        while (e < f->nenc && f->enc_pass[e] < p) e++;
        if (e < f->nenc && f->enc_pass[e] == p) continue; /* has its own encoder */
        mc_pass_state next = e < f->nenc ? ps[f->enc_pass[e]] : MC_PASS_UNKNOWN;
        mc_pass_state prev = e > 0 ? ps[f->enc_pass[e - 1]] : MC_PASS_UNKNOWN;
        if (next == MC_PASS_COMPLETED || next == MC_PASS_AFFECTED || next == MC_PASS_FAULTED) ps[p] = MC_PASS_COMPLETED;
        else if (prev == MC_PASS_FAULTED || prev == MC_PASS_PENDING) ps[p] = MC_PASS_PENDING;
    }
}

/* Completes a submission that never reached Metal (pass states stay
 * PENDING). May run inside submit(), which the HAL allows. */
static void complete_unrun(mc__submission *sub, mc_status st)
{
    sub->status = st;
    sub->gpu_start_ns = sub->gpu_end_ns = 0;
    sub->complete(sub);
}

/* ---- encoding ---------------------------------------------------------------- */

static MTLSize size3(mc_size3 s)
{
    MTLSize m = {s.x, s.y, s.z};
    return m;
}

static id new_compute_encoder(id cb, const char *label)
{
    id enc = msg_computeCommandEncoderWithDispatchType_(cb, MTLDispatchTypeSerial);
    if (enc) msg_setLabel_(enc, mc__mtl_str(label));
    return enc;
}

/* The state of one compute encoder: what the internal kernels (grid checks,
 * list ranges) must put back after they borrowed the encoder, which keeps
 * its bindings across dispatches. They use slots 0-2. */
typedef struct binding {
    int kind; /* 0: unbound, 1: buffer, 2: bytes */
    id buffer;
    NSUInteger offset;
    const void *bytes;
    NSUInteger len;
} binding;

typedef struct encoding {
    mc__mtl_device *dev;
    inflight *f;
    uint32_t pass;
    bool validation;
    id enc;
    id pso;
    binding arg[3];
} encoding;

static void set_buffer(encoding *e, id buffer, NSUInteger offset, uint32_t index)
{
    msg_setBuffer_offset_atIndex_(e->enc, buffer, offset, index);
    if (index < 3) e->arg[index] = (binding){1, buffer, offset, NULL, 0};
}

static void set_bytes(encoding *e, const void *bytes, NSUInteger len, uint32_t index)
{
    msg_setBytes_length_atIndex_(e->enc, bytes, len, index);
    if (index < 3) e->arg[index] = (binding){2, (id)0, 0, bytes, len};
}

static void set_pso(encoding *e, id pso)
{
    msg_setComputePipelineState_(e->enc, pso);
    e->pso = pso;
}

/* Puts the program's pipeline and slots 0-2 back after an internal kernel. */
static void restore(encoding *e)
{
    if (e->pso) msg_setComputePipelineState_(e->enc, e->pso);
    for (uint32_t i = 0; i < 3; i++) {
        if (e->arg[i].kind == 1) msg_setBuffer_offset_atIndex_(e->enc, e->arg[i].buffer, e->arg[i].offset, i);
        else if (e->arg[i].kind == 2) msg_setBytes_length_atIndex_(e->enc, e->arg[i].bytes, e->arg[i].len, i);
    }
}

/* The next scratch slot; check: a grid check of the current pass. */
static mc_status take_slot(encoding *e, bool check, NSUInteger *offset)
{
    inflight *f = e->f;
    if (!f->scratch || f->used_slots >= f->nslots)
        return mc__fail(MC_ERR_INTERNAL, "pass '%s': internal scratch slots miscounted", f->sub->passes[e->pass].label);
    f->check_pass[f->used_slots] = check ? e->pass : UINT32_MAX;
    *offset = (NSUInteger)f->used_slots++ * SLOT_BYTES;
    return MC_OK;
}

/* One internal one-thread kernel: in at slot 0, out at slot 1, n (if not
 * NULL) at slot 2; then a barrier, so what follows sees what it wrote. */
static mc_status internal_kernel(encoding *e, int which, id in, NSUInteger in_off, NSUInteger out_off,
                                 const uint32_t *n)
{
    id pso = mc__mtl_util_pipeline(e->dev, which);
    if (!pso) return MC_ERR_INTERNAL; /* the detail is recorded */
    msg_setComputePipelineState_(e->enc, pso);
    msg_setBuffer_offset_atIndex_(e->enc, in, in_off, 0);
    msg_setBuffer_offset_atIndex_(e->enc, e->f->scratch->buffer, out_off, 1);
    if (n) msg_setBytes_length_atIndex_(e->enc, n, sizeof *n, 2);
    MTLSize one = {1, 1, 1};
    msg_dispatchThreadgroups_threadsPerThreadgroup_(e->enc, one, one);
    msg_memoryBarrierWithScope_(e->enc, MTLBarrierScopeBuffers);
    return MC_OK;
}

/* F148; in validation mode through mc_check_grid (counts over the limits
 * become a zero grid and a flag the completed handler reads). */
static mc_status dispatch_indirect(encoding *e, const mc__cmd *c)
{
    id buf = ((mc__mtl_buffer *)c->u.indirect.buffer)->buffer;
    MTLSize t = size3(c->u.indirect.threads);
    if (!e->validation) {
        msg_dispatchThreadgroupsWithIndirectBuffer_indirectBufferOffset_threadsPerThreadgroup_(e->enc, buf,
                                                                                               c->u.indirect.offset, t);
        return MC_OK;
    }
    NSUInteger slot = 0; /* set by take_slot on success; gcc 12 -O3 cannot see that */
    mc_status s = take_slot(e, true, &slot);
    if (s == MC_OK) s = internal_kernel(e, MC__MTL_UTIL_CHECK_GRID, buf, c->u.indirect.offset, slot, NULL);
    if (s != MC_OK) return s;
    restore(e);
    msg_dispatchThreadgroupsWithIndirectBuffer_indirectBufferOffset_threadsPerThreadgroup_(
        e->enc, e->f->scratch->buffer, slot, t);
    return MC_OK;
}

/* A command of a compute pass, or of a list encoded into it (bytes: the
 * arena its SET_BYTES point into). */
static mc_status encode_cmd(encoding *e, const mc__cmd *c, const uint8_t *bytes, const char *label)
{
    switch (c->op) {
    case MC__OP_SET_PIPELINE: set_pso(e, ((mc__mtl_pipeline *)c->u.pipeline)->pso); return MC_OK;
    case MC__OP_SET_BUFFER:
        set_buffer(e, ((mc__mtl_buffer *)c->u.buf.buffer)->buffer, c->u.buf.offset, c->index);
        return MC_OK;
    case MC__OP_SET_BYTES:
        if (c->u.bytes.len) set_bytes(e, bytes + c->u.bytes.offset, c->u.bytes.len, c->index);
        return MC_OK;
    case MC__OP_SET_TGMEM: /* lengths are multiples of 16 bytes in Metal */
        msg_setThreadgroupMemoryLength_atIndex_(e->enc, (c->u.tgmem.len + 15u) & ~(size_t)15u, c->index);
        return MC_OK;
    case MC__OP_DISPATCH:
        if ((uint64_t)c->u.dispatch.groups.x * c->u.dispatch.groups.y * c->u.dispatch.groups.z != 0)
            msg_dispatchThreadgroups_threadsPerThreadgroup_(e->enc, size3(c->u.dispatch.groups),
                                                            size3(c->u.dispatch.threads));
        return MC_OK;
    case MC__OP_DISPATCH_INDIRECT: /* three uint32 = MTLDispatchThreadgroupsIndirectArguments (F148) */
        return dispatch_indirect(e, c);
    case MC__OP_BARRIER: /* orders the dispatches before and after (F142) */
        msg_memoryBarrierWithScope_(e->enc, MTLBarrierScopeBuffers);
        return MC_OK;
    default: return mc__fail(MC_ERR_INTERNAL, "command %u cannot appear in compute pass '%s'", c->op, label);
    }
}

/* EXECUTE_LIST: the pass is the list's execution (metal_list.c). */
static mc_status execute_list(encoding *e, const mc__cmd *c, const char *label)
{
    const mc__mtl_list *l = c->u.exec.list;
    const mc__mtl_buffer *rb = c->u.exec.range_buffer;
    if (!l->icb) {              /* indirect dispatches inside: the recording, encoded here */
        if (rb && l->ncommands) /* the engine refuses these: the list's caps lack MC__LIST_GPU_RANGE */
            return mc__fail(MC_ERR_UNSUPPORTED, "pass '%s': list '%s' cannot take a range the device chooses", label,
                            l->label);
        for (uint32_t k = c->u.exec.first; k < c->u.exec.first + c->u.exec.count; k++) {
            uint32_t end = k + 1 < l->ncommands ? l->group[k + 1] : l->ncmd;
            for (uint32_t i = l->group[k]; i < end; i++) {
                mc_status s = encode_cmd(e, &l->cmds[i], l->bytes, label);
                if (s != MC_OK) return s;
            }
        }
        return MC_OK;
    }
    if (!rb && !c->u.exec.count) return MC_OK;
    /* The encoder cannot see what the commands use. */
    msg_useResources_count_usage_(e->enc, l->resources, l->nresources, MTLResourceUsageRead | MTLResourceUsageWrite);
    /* Pipelines used only inside an ICB can fault on Apple GPUs before the
     * M3 family unless the encoder has used them too (tinygrad's MetalGraph
     * found this; useResources: does not take pipelines): an empty dispatch
     * with each, as that code does. Metal's API validation aborts on a zero
     * grid, so this is done only where needed and validation is off
     * (dev->icb_pipeline_fix, metal_device.c; docs/METAL.md). */
    if (e->dev->icb_pipeline_fix) {
        MTLSize none = {0, 0, 0};
        for (NSUInteger i = 0; i < l->npipelines; i++) {
            msg_setComputePipelineState_(e->enc, l->pipelines[i]);
            msg_dispatchThreadgroups_threadsPerThreadgroup_(e->enc, none, none);
        }
    }
    if (!rb) {
        NSRange r = {c->u.exec.first, c->u.exec.count};
        msg_executeCommandsInBuffer_withRange_(e->enc, l->icb, r);
        return MC_OK;
    }
    /* {first, count} clamped on the device into the range Metal reads */
    NSUInteger slot = 0; /* set by take_slot on success; gcc 12 -O3 cannot see that */
    uint32_t n = l->ncommands;
    mc_status s = take_slot(e, false, &slot);
    if (s == MC_OK) s = internal_kernel(e, MC__MTL_UTIL_CLAMP_RANGE, rb->buffer, c->u.exec.range_offset, slot, &n);
    if (s != MC_OK) return s;
    msg_executeCommandsInBuffer_indirectBuffer_indirectBufferOffset_(e->enc, l->icb, e->f->scratch->buffer, slot);
    return MC_OK;
}

static mc_status encode_compute(mc__mtl_device *dev, id cb, const mc__submission *sub, uint32_t p, inflight *f)
{
    const mc__pass *pass = &sub->passes[p];
    id enc = new_compute_encoder(cb, pass->label);
    if (!enc) return mc__fail(MC_ERR_OUT_OF_MEMORY, "Metal could not make a compute encoder for '%s'", pass->label);
    encoding e;
    memset(&e, 0, sizeof e);
    e.dev = dev;
    e.f = f;
    e.pass = p;
    e.validation = (sub->flags & MC__SUBMIT_VALIDATION) != 0;
    e.enc = enc;
    mc_status s = MC_OK;
    for (uint32_t i = 0; i < pass->count && s == MC_OK; i++) {
        const mc__cmd *c = &sub->cmds[pass->first + i];
        s = c->op == MC__OP_EXECUTE_LIST ? execute_list(&e, c, pass->label)
                                         : encode_cmd(&e, c, sub->bytes, pass->label);
    }
    msg_endEncoding(enc);
    return s;
}

/* Scratch slots the submission's first nrun passes need (take_slot hands
 * them out in the same order). */
static uint32_t count_slots(const mc__submission *sub, uint32_t nrun)
{
    bool validation = (sub->flags & MC__SUBMIT_VALIDATION) != 0;
    uint32_t n = 0;
    for (uint32_t p = 0; p < nrun; p++) {
        const mc__pass *pass = &sub->passes[p];
        if (pass->kind != MC__PASS_COMPUTE) continue;
        for (uint32_t i = 0; i < pass->count; i++) {
            const mc__cmd *c = &sub->cmds[pass->first + i];
            if (c->op == MC__OP_DISPATCH_INDIRECT && validation) n++;
            if (c->op != MC__OP_EXECUTE_LIST) continue;
            const mc__mtl_list *l = c->u.exec.list;
            if (c->u.exec.range_buffer) {
                n++;
            } else if (!l->icb && validation) {
                uint32_t lo = l->group && c->u.exec.count ? l->group[c->u.exec.first] : 0;
                uint32_t last = c->u.exec.first + c->u.exec.count;
                uint32_t hi = !c->u.exec.count ? 0 : last < l->ncommands ? l->group[last] : l->ncmd;
                for (uint32_t k = lo; k < hi; k++) n += l->cmds[k].op == MC__OP_DISPATCH_INDIRECT;
            }
        }
    }
    return n;
}

/* Runs an internal byte kernel over n bytes: buffers at slots 0 (and 1),
 * then the byte count, then (fill) the value. */
static mc_status encode_util(mc__mtl_device *dev, id cb, const char *label, int which, id dst, size_t dst_off, id src,
                             size_t src_off, size_t len, uint8_t value)
{
    if (len > UINT32_MAX)
        return mc__fail(MC_ERR_UNSUPPORTED, "'%s': an unaligned copy or fill of %zu bytes is over 4 GiB", label, len);
    id pso = mc__mtl_util_pipeline(dev, which);
    if (!pso) return MC_ERR_INTERNAL; /* the detail is recorded */
    id enc = new_compute_encoder(cb, label);
    if (!enc) return mc__fail(MC_ERR_OUT_OF_MEMORY, "Metal could not make a compute encoder for '%s'", label);
    uint32_t n = (uint32_t)len, v = value;
    msg_setComputePipelineState_(enc, pso);
    msg_setBuffer_offset_atIndex_(enc, dst, dst_off, 0);
    if (which == MC__MTL_UTIL_COPY) {
        msg_setBuffer_offset_atIndex_(enc, src, src_off, 1);
        msg_setBytes_length_atIndex_(enc, &n, sizeof n, 2);
    } else {
        msg_setBytes_length_atIndex_(enc, &n, sizeof n, 1);
        msg_setBytes_length_atIndex_(enc, &v, sizeof v, 2);
    }
    MTLSize groups = {(n + 255u) / 256u, 1, 1}, threads = {256, 1, 1};
    msg_dispatchThreadgroups_threadsPerThreadgroup_(enc, groups, threads);
    msg_endEncoding(enc);
    return MC_OK;
}

/* Returns whether an encoder was made in *encoded. */
static mc_status encode_copy(mc__mtl_device *dev, id cb, const mc__submission *sub, const mc__pass *pass, bool *encoded)
{
    *encoded = false;
    if (pass->count != 1)
        return mc__fail(MC_ERR_INTERNAL, "copy pass '%s' holds %u commands", pass->label, pass->count);
    const mc__cmd *c = &sub->cmds[pass->first];
    if (c->op == MC__OP_COPY) {
        size_t len = c->u.copy.len;
        if (!len) return MC_OK;
        id src = ((mc__mtl_buffer *)c->u.copy.src)->buffer, dst = ((mc__mtl_buffer *)c->u.copy.dst)->buffer;
        *encoded = true;
        if ((c->u.copy.src_offset | c->u.copy.dst_offset | len) % 4)
            return encode_util(dev, cb, pass->label, MC__MTL_UTIL_COPY, dst, c->u.copy.dst_offset, src,
                               c->u.copy.src_offset, len, 0);
        id blit = msg_blitCommandEncoder(cb);
        if (!blit) return mc__fail(MC_ERR_OUT_OF_MEMORY, "Metal could not make a blit encoder for '%s'", pass->label);
        msg_setLabel_(blit, mc__mtl_str(pass->label));
        msg_copyFromBuffer_sourceOffset_toBuffer_destinationOffset_size_(blit, src, c->u.copy.src_offset, dst,
                                                                         c->u.copy.dst_offset, len);
        msg_endEncoding(blit);
        return MC_OK;
    }
    if (c->op == MC__OP_FILL) {
        size_t len = c->u.fill.len;
        if (!len) return MC_OK;
        id buf = ((mc__mtl_buffer *)c->u.fill.buffer)->buffer;
        *encoded = true;
        if ((c->u.fill.offset | len) % 4)
            return encode_util(dev, cb, pass->label, MC__MTL_UTIL_FILL, buf, c->u.fill.offset, (id)0, 0, len,
                               c->u.fill.value);
        id blit = msg_blitCommandEncoder(cb);
        if (!blit) return mc__fail(MC_ERR_OUT_OF_MEMORY, "Metal could not make a blit encoder for '%s'", pass->label);
        msg_setLabel_(blit, mc__mtl_str(pass->label));
        NSRange range = {c->u.fill.offset, len};
        msg_fillBuffer_range_value_(blit, buf, range, c->u.fill.value);
        msg_endEncoding(blit);
        return MC_OK;
    }
    return mc__fail(MC_ERR_INTERNAL, "command %u cannot appear in copy pass '%s'", c->op, pass->label);
}

static mc_status encode_sync(id cb, const mc__submission *sub, const mc__pass *pass)
{
    for (uint32_t i = 0; i < pass->count; i++) {
        const mc__cmd *c = &sub->cmds[pass->first + i];
        id ev = ((mc__mtl_event *)c->u.event.event)->event;
        if (c->op == MC__OP_SIGNAL) msg_encodeSignalEvent_value_(cb, ev, c->u.event.value);
        else if (c->op == MC__OP_WAIT) msg_encodeWaitForEvent_value_(cb, ev, c->u.event.value);
        else return mc__fail(MC_ERR_INTERNAL, "command %u cannot appear in sync pass '%s'", c->op, pass->label);
    }
    return MC_OK;
}

static mc_status encode(mc__mtl_device *dev, id cb, const mc__submission *sub, inflight *f)
{
    for (uint32_t p = 0; p < f->nrun; p++) {
        const mc__pass *pass = &sub->passes[p];
        bool encoded = false;
        mc_status s;
        switch (pass->kind) {
        case MC__PASS_COMPUTE:
            s = encode_compute(dev, cb, sub, p, f);
            encoded = true;
            break;
        case MC__PASS_COPY: s = encode_copy(dev, cb, sub, pass, &encoded); break;
        case MC__PASS_SYNC: s = encode_sync(cb, sub, pass); break;
        default: s = mc__fail(MC_ERR_INTERNAL, "pass '%s' has unknown kind %u", pass->label, pass->kind);
        }
        if (s != MC_OK) return s;
        if (encoded) f->enc_pass[f->nenc++] = p;
    }
    return MC_OK;
}

/* ---- completion ---------------------------------------------------------------- */

static uint64_t seconds_to_ns(CFTimeInterval t)
{
    return t > 0 ? (uint64_t)(t * 1e9) : 0;
}

/* The command buffer's own outcome, before the queue's and device's rules.
 * Pool held. */
static mc_status own_outcome(const inflight *f, id cb, mc__submission *sub)
{
    MTLCommandBufferStatus st = msg_status(cb);
    if (st == MTLCommandBufferStatusError) {
        id err = msg_error(cb);
        mc_status s = MC_ERR_INTERNAL;
        char text[200];
        mc__mtl_error_text(err, text, sizeof text);
        if (err && msg_isEqualToString_(msg_domain(err), MTLCommandBufferErrorDomain)) {
            NSInteger code = msg_code(err);
            s = mc__mtl_map_error_code(code);
            set_message(sub, "MTLCommandBufferError %ld: %s", (long)code, text);
        } else {
            char domain[64];
            mc__mtl_cstr(err ? msg_domain(err) : (id)0, domain, sizeof domain);
            set_message(sub, "Metal error in domain '%s': %s", domain, text);
        }
        states_from_error(f, err, sub);
        return s;
    }
    if (st != MTLCommandBufferStatusCompleted) {
        for (uint32_t p = 0; p < f->nrun; p++) sub->pass_state[p] = MC_PASS_UNKNOWN;
        set_message(sub, "command buffer finished with MTLCommandBufferStatus %lu", (unsigned long)st);
        return MC_ERR_INTERNAL;
    }
    for (uint32_t p = 0; p < f->nrun; p++) sub->pass_state[p] = MC_PASS_COMPLETED;
    if (sub->inject == MC_OK) {
        sub->message[0] = '\0';
        return MC_OK;
    }
    /* An injected fault: the passes before it ran, it faulted, the rest is
     * pending (never encoded). */
    if (sub->inject_pass < sub->npass) {
        sub->pass_state[sub->inject_pass] = MC_PASS_FAULTED;
        set_message(sub, "injected fault: %s in pass '%s'", mc_status_name(sub->inject),
                    sub->passes[sub->inject_pass].label);
    } else {
        set_message(sub, "injected fault: %s after the last pass", mc_status_name(sub->inject));
    }
    return sub->inject;
}

/* A submission reported as the victim of an earlier failure. Passes Metal
 * ran anyway become AFFECTED: they ran, but after the failure. */
static void make_victim(const inflight *f, mc__submission *sub, mc_status st, const char *why)
{
    bool ran = false;
    for (uint32_t p = 0; p < f->nrun; p++)
        if (sub->pass_state[p] == MC_PASS_COMPLETED) {
            sub->pass_state[p] = MC_PASS_AFFECTED;
            ran = true;
        }
    sub->status = st;
    snprintf(sub->message, sizeof sub->message, "%s: %.220s", ran ? "ran, results not to be trusted" : "not executed",
             why);
}

static void on_scheduled(mc__mtl_block *blk, id cb)
{
    inflight *f = blk->ctx;
    (void)cb;
    int idle = FSCHED_IDLE;
    if (atomic_compare_exchange_strong(&f->sched, &idle, FSCHED_RUNNING)) {
        f->sub->scheduled(f->sub);
        atomic_store(&f->sched, FSCHED_DONE);
    }
    inflight_unref(f);
}

/* Validation mode: a grid check that found counts over the limits fails
 * its pass (the dispatch ran as an empty grid); the passes after it ran. */
static mc_status checked_grids(const inflight *f, mc__submission *sub)
{
    for (uint32_t i = 0; f->scratch && i < f->used_slots; i++) {
        uint32_t p = f->check_pass[i];
        const uint32_t *w = (const uint32_t *)((const char *)f->scratch->host + (size_t)i * SLOT_BYTES);
        if (p == UINT32_MAX || !w[3]) continue;
        for (uint32_t k = 0; k < f->nrun; k++)
            sub->pass_state[k] = k < p ? MC_PASS_COMPLETED : k == p ? MC_PASS_FAULTED : MC_PASS_AFFECTED;
        set_message(sub,
                    "indirect dispatch in pass '%s': threadgroup counts exceed the limits (x <= %u, y and z <= %u); it "
                    "did not run",
                    sub->passes[p].label, MC_INDIRECT_MAX_GROUPS_X, MC_INDIRECT_MAX_GROUPS_YZ);
        return MC_ERR_VALIDATION;
    }
    return MC_OK;
}

static void on_completed(mc__mtl_block *blk, id cb)
{
    inflight *f = blk->ctx;
    mc__mtl_queue *q = f->q;
    mc__mtl_device *dev = q->dev;
    mc__submission *sub = f->sub;

    id pool = mc__mtl_pool_push();
    mc_status st = own_outcome(f, cb, sub);
    if (st == MC_OK) st = checked_grids(f, sub);
    sub->gpu_start_ns = seconds_to_ns(msg_GPUStartTime(cb));
    sub->gpu_end_ns = seconds_to_ns(msg_GPUEndTime(cb));
    if (sub->gpu_end_ns < sub->gpu_start_ns) sub->gpu_end_ns = sub->gpu_start_ns;
    mc__mtl_pool_pop(pool);
    sub->status = st;

    pthread_mutex_lock(&q->lock);
    char why[256];
    if (atomic_load(&dev->lost) && st != MC_ERR_DEVICE_LOST) {
        snprintf(why, sizeof why, "the device was lost while it was in flight (%.180s)", dev->lost_msg);
        make_victim(f, sub, MC_ERR_DEVICE_LOST, why);
    } else if (q->failed != MC_OK && f->seq > q->failed_seq) {
        snprintf(why, sizeof why, "an earlier command buffer on the queue failed with %s; create a new queue (F687)",
                 mc_status_name(q->failed));
        make_victim(f, sub, MC_ERR_PRIOR_ERROR, why);
    } else if (st != MC_OK) {
        q->failed = st;
        q->failed_seq = f->seq;
        unsigned nerr = atomic_fetch_add(&dev->gpu_errors, 1) + 1;
        if (st == MC_ERR_ACCESS_REVOKED) {
            size_t n = strlen(sub->message);
            snprintf(sub->message + n, sizeof sub->message - n,
                     " (macOS revoked this process's GPU access after %u failed command buffers, F146)", nerr);
            mc__log(MC_LOG_ERROR, "metal.access_revoked", "'%s': %s", sub->label ? sub->label : "", sub->message);
        }
        if (st == MC_ERR_DEVICE_LOST) {
            /* One writer; readers look at lost_msg only after seeing lost. */
            pthread_mutex_lock(&dev->lock);
            if (!atomic_load(&dev->lost)) {
                memcpy(dev->lost_msg, sub->message, sizeof dev->lost_msg);
                atomic_store(&dev->lost, 1);
            }
            pthread_mutex_unlock(&dev->lock);
        }
        mc__log(MC_LOG_DEBUG, "metal.cmdbuf_failed", "'%s': %s: %s", sub->label ? sub->label : "", mc_status_name(st),
                sub->message);
    }
    q->inflight--;
    if (q->failed != MC_OK && q->inflight == 0 && !q->recreated && !atomic_load(&dev->lost)) {
        /* The only documented recovery from a GPU error: a new queue (F687).
         * The old one is idle now; its failure stays the HAL queue's. */
        id p2 = mc__mtl_pool_push();
        id fresh = new_mtl_queue(q);
        if (fresh) retire_mtl_queue(q, q->queue);
        mc__mtl_pool_pop(p2);
        if (fresh) {
            q->queue = fresh;
            q->recreated++;
            mc__log(MC_LOG_INFO, "metal.queue_recreated", "queue '%s' replaced after %s", q->label ? q->label : "",
                    mc_status_name(q->failed));
        }
    }
    pthread_mutex_unlock(&q->lock);

    if (f->scratch) { /* no lock held: the residency set takes the device's */
        mc__mtl_buffer_free(dev, f->scratch);
        f->scratch = NULL;
    }
    int idle = FSCHED_IDLE;
    if (!atomic_compare_exchange_strong(&f->sched, &idle, FSCHED_SKIPPED))
        while (atomic_load(&f->sched) != FSCHED_DONE) sched_yield(); /* scheduled() is running: let it finish */
    inflight_unref(f);
    sub->complete(sub); /* the last touch of sub and q */
}

/* ---- submit ---------------------------------------------------------------------- */

mc_status mc__mtl_submit(void *vdev, void *vq, mc__submission *sub)
{
    mc__mtl_device *dev = vdev;
    mc__mtl_queue *q = vq;
    if (!q || !sub || !sub->complete) return mc__fail(MC_ERR_INVALID_ARGUMENT, "submit: no queue or no complete()");
    if (sub->npass && (!sub->passes || !sub->pass_state))
        return mc__fail(MC_ERR_INVALID_ARGUMENT, "submit: passes without pass_state");
    if (sub->pass_time) memset(sub->pass_time, 0, 2 * sizeof(uint64_t) * sub->npass); /* not measured on Metal */
    if (atomic_load(&dev->lost)) {
        set_message(sub, "not executed: device lost earlier (%.200s)", dev->lost_msg);
        complete_unrun(sub, MC_ERR_DEVICE_LOST);
        return MC_OK;
    }
    pthread_mutex_lock(&q->lock);
    if (q->failed != MC_OK) {
        mc_status failed = q->failed;
        pthread_mutex_unlock(&q->lock);
        set_message(sub,
                    "not executed: an earlier command buffer on the queue failed with %s; create a new queue "
                    "(F687)",
                    mc_status_name(failed));
        complete_unrun(sub, MC_ERR_PRIOR_ERROR);
        return MC_OK;
    }
    inflight *f = mc__calloc(1, sizeof *f);
    uint32_t *enc_pass = mc__calloc(sub->npass ? sub->npass : 1, sizeof *enc_pass);
    if (!f || !enc_pass) {
        pthread_mutex_unlock(&q->lock);
        free(f);
        free(enc_pass);
        return mc__fail(MC_ERR_NO_MEMORY, "submit: out of host memory");
    }
    f->q = q;
    f->sub = sub;
    f->enc_pass = enc_pass;
    f->nrun = sub->inject != MC_OK ? MC__MIN(sub->inject_pass, sub->npass) : sub->npass;
    atomic_init(&f->refs, sub->scheduled ? 2 : 1);
    atomic_init(&f->sched, FSCHED_IDLE);
    f->nslots = count_slots(sub, f->nrun);
    if (f->nslots) { /* made before the residency set is committed below */
        mc_status s = MC_OK;
        f->check_pass = mc__calloc(f->nslots, sizeof *f->check_pass);
        if (!f->check_pass) s = mc__fail(MC_ERR_NO_MEMORY, "submit: out of host memory");
        if (s == MC_OK)
            s = mc__mtl_buffer_new(dev, (size_t)f->nslots * SLOT_BYTES, "metal-compute scratch", &f->scratch);
        if (s != MC_OK) {
            pthread_mutex_unlock(&q->lock);
            free(f->check_pass);
            free(f);
            free(enc_pass);
            return s;
        }
    }

    id pool = mc__mtl_pool_push();
    pthread_mutex_lock(&dev->lock);
    mc__mtl_residency_commit_locked(dev); /* buffers made since the last submission */
    pthread_mutex_unlock(&dev->lock);
    bool unretained = (sub->flags & MC_CMDBUF_UNRETAINED_REFERENCES) != 0;
    id cb = msg_commandBufferWithDescriptor_(q->queue, dev->cbdesc[unretained ? 1 : 0]);
    mc_status s = cb ? MC_OK : mc__fail(MC_ERR_OUT_OF_MEMORY, "Metal could not make a command buffer");
    if (s == MC_OK) {
        if (sub->label) msg_setLabel_(cb, mc__mtl_str(sub->label));
        s = encode(dev, cb, sub, f);
    }
    if (s != MC_OK) {
        /* Never committed: the command buffer goes with the pool, its
         * encoders all ended. */
        mc__mtl_pool_pop(pool);
        pthread_mutex_unlock(&q->lock);
        if (f->scratch) mc__mtl_buffer_free(dev, f->scratch);
        free(f->check_pass);
        free(enc_pass);
        free(f);
        return s;
    }
    mc__mtl_block scheduled, completed;
    if (sub->scheduled) {
        mc__mtl_block_init_id(&scheduled, on_scheduled, f);
        msg_addScheduledHandler_(cb, &scheduled);
    }
    mc__mtl_block_init_id(&completed, on_completed, f);
    msg_addCompletedHandler_(cb, &completed);
    f->seq = ++q->seq;
    q->inflight++;
    msg_commit(cb);
    mc__mtl_pool_pop(pool);
    pthread_mutex_unlock(&q->lock);
    return MC_OK;
}
