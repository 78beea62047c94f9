/*
 * DOC: Metal device: command lists as indirect command buffers
 *
 * A list becomes one MTLIndirectCommandBuffer (F149, F670), encoded once
 * when the list ends: command k of the list is ICB command k, a concurrent
 * dispatch (MTLIndirectCommandTypeConcurrentDispatch) that carries its own
 * pipeline and buffers (inheritPipelineState and inheritBuffers NO, as the
 * engine's groups carry their own state), its threadgroup memory, and
 * setBarrier where the recording has a barrier before it: ICB commands do
 * not serialize on their own. A dispatch of zero threadgroups is a command
 * left in its reset state, which does nothing. ICBs have no setBytes, so
 * bytes arguments live in a buffer the list owns, each at a 256-byte
 * aligned offset (the strictest alignment macOS asks of constant-space
 * buffer offsets). Pipelines are made with supportIndirectCommandBuffers
 * (metal_pipeline.c).
 *
 * Executing (metal_queue.c) is one compute encoder: useResources:count:usage:
 * for every buffer the commands use (the encoder cannot see them), then
 * executeCommandsInBuffer:withRange:, or for a range the device chooses a
 * one-thread kernel that clamps {first, count} into an
 * MTLIndirectCommandBufferExecutionRange and
 * executeCommandsInBuffer:indirectBuffer:indirectBufferOffset:.
 *
 * MTLIndirectComputeCommand has no indirect dispatch, so a list holding
 * indirect dispatches keeps no ICB: its static ranges are encoded into the
 * pass at each execution from the engine's recording, and a range chosen by
 * the device is refused (the list's caps lack MC__LIST_GPU_RANGE). The same
 * holds on a GPU without ICB compute commands (dev->has_icb: the hosted
 * runners' paravirtual GPU) and for a list with threadgroup memory where the
 * ICB descriptor has no maxKernelThreadgroupMemoryBindCount (before macOS
 * 14).
 */
#include "backends/metal/metal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ARGS_ALIGN 256u

/* Adds x to a set kept as an array (lists are small; commands repeat the
 * same few buffers and pipelines, so the last one is checked first). */
static bool add_unique(id **arr, NSUInteger *n, NSUInteger *cap, id x)
{
    for (NSUInteger i = *n; i-- > 0;)
        if ((*arr)[i] == x) return true;
    if (*n == *cap) {
        NSUInteger nc = *cap ? *cap * 2 : 16;
        id *na = mc__realloc(*arr, nc * sizeof *na);
        if (!na) return false;
        *arr = na;
        *cap = nc;
    }
    (*arr)[(*n)++] = x;
    return true;
}

/* Where each distinct bytes argument of the engine's arena goes in the
 * list's own buffer: a small open-addressing map from arena offset. */
typedef struct bytes_map {
    uint32_t *key, *val; /* key UINT32_MAX: empty */
    uint32_t cap;
} bytes_map;

static uint32_t *map_slot(bytes_map *m, uint32_t key)
{
    uint32_t h = (key * 2654435761u) & (m->cap - 1);
    while (m->key[h] != UINT32_MAX && m->key[h] != key) h = (h + 1) & (m->cap - 1);
    return &m->key[h];
}

void mc__mtl_cmdlist_destroy(void *vdev, void *vl)
{
    mc__mtl_device *dev = vdev;
    mc__mtl_list *l = vl;
    if (!l) return;
    id pool = mc__mtl_pool_push(); /* the ICB's last release runs dealloc, which may autorelease */
    mc__mtl_release(l->icb);
    mc__mtl_pool_pop(pool);
    if (l->args) mc__mtl_buffer_free(dev, l->args);
    free(l->resources);
    free(l->pipelines);
    free(l->group);
    free(l->label);
    free(l);
}

/* The ICB descriptor has maxKernelThreadgroupMemoryBindCount (macOS 14),
 * asked of the class's instances rather than inferred from the OS version. */
static bool icb_tgmem_bind_count_known(void)
{
    id pool = mc__mtl_pool_push();
    id desc = msg_init(msg_alloc(mc__mtl_cls.MTLIndirectCommandBufferDescriptor));
    bool known = desc && mc__mtl_responds(desc, MC__SEL(setMaxKernelThreadgroupMemoryBindCount_));
    mc__mtl_release(desc);
    mc__mtl_pool_pop(pool);
    return known;
}

mc_status mc__mtl_cmdlist_create(void *vdev, const mc__list_desc *d, void **out, uint32_t *caps)
{
    mc__mtl_device *dev = vdev;
    *out = NULL;
    mc_status s = mc__mtl_device_lost_status(dev);
    if (s != MC_OK) return s;
    mc__mtl_list *l = mc__calloc(1, sizeof *l);
    if (!l) return mc__fail(MC_ERR_NO_MEMORY, "command list: out of host memory");
    l->label = mc__strdup(d->label);
    l->group = mc__malloc((size_t)(d->ncommands ? d->ncommands : 1) * sizeof *l->group);
    NSUInteger rcap = 0, pcap = 0;
    uint32_t max_index = 0, nbytes_args = 0, max_tgmem_index = 0;
    bytes_map map = {NULL, NULL, 0};
    if (!l->label || !l->group) s = mc__fail(MC_ERR_NO_MEMORY, "command list: out of host memory");

    /* The groups, the buffers and pipelines they use, the slots they bind,
     * and the bytes arguments' room in the list's buffer. */
    uint32_t k = 0, start = 0, nbytes_cmds = 0;
    for (uint32_t i = 0; i < d->ncmd && s == MC_OK; i++) {
        const mc__cmd *c = &d->cmds[i];
        switch (c->op) {
        case MC__OP_SET_PIPELINE:
            if (!add_unique(&l->pipelines, &l->npipelines, &pcap, ((mc__mtl_pipeline *)c->u.pipeline)->pso))
                s = mc__fail(MC_ERR_NO_MEMORY, "command list: out of host memory");
            break;
        case MC__OP_SET_BUFFER:
            if (!add_unique(&l->resources, &l->nresources, &rcap, ((mc__mtl_buffer *)c->u.buf.buffer)->buffer))
                s = mc__fail(MC_ERR_NO_MEMORY, "command list: out of host memory");
            max_index = MC__MAX(max_index, c->index + 1);
            break;
        case MC__OP_SET_BYTES:
            nbytes_cmds++;
            max_index = MC__MAX(max_index, c->index + 1);
            break;
        case MC__OP_DISPATCH_INDIRECT:
            if (!add_unique(&l->resources, &l->nresources, &rcap, ((mc__mtl_buffer *)c->u.indirect.buffer)->buffer))
                s = mc__fail(MC_ERR_NO_MEMORY, "command list: out of host memory");
            /* fall through */
        case MC__OP_DISPATCH:
            if (k < d->ncommands) l->group[k++] = start;
            start = i + 1;
            break;
        case MC__OP_SET_TGMEM: max_tgmem_index = MC__MAX(max_tgmem_index, c->index + 1); break;
        case MC__OP_BARRIER: break;
        default:
            s = mc__fail(MC_ERR_INVALID_ARGUMENT, "command list '%s': command %u cannot be in a list", d->label, c->op);
        }
    }
    l->ncommands = k;
    if (s == MC_OK && max_index > MC_MAX_BUFFER_ARGS)
        s = mc__fail(MC_ERR_INVALID_ARGUMENT, "command list '%s': argument slot %u is over the limit", d->label,
                     max_index - 1);
    /* Threadgroup memory in ICB commands needs a bind count that only macOS
     * 14 has (maxKernelThreadgroupMemoryBindCount); before, such a list is
     * encoded into the pass like one without an ICB. */
    bool tgmem_ok = max_tgmem_index == 0 || (dev->has_icb && icb_tgmem_bind_count_known());
    if (s != MC_OK || d->has_indirect || k == 0 || !dev->has_icb || !tgmem_ok) {
        /* no ICB: encoded from the recording at each execution; a range the
         * device chooses needs an ICB (or nothing to run) */
        if (s == MC_OK) {
            l->cmds = d->cmds;
            l->ncmd = d->ncmd;
            l->bytes = d->bytes;
            *out = l;
            *caps = k == 0 ? MC__LIST_GPU_RANGE : 0;
            return MC_OK;
        }
        mc__mtl_cmdlist_destroy(dev, l);
        return s;
    }

    /* bytes arguments: one 256-aligned copy of each distinct one */
    if (nbytes_cmds) {
        map.cap = 16;
        while (map.cap < 2 * nbytes_cmds) map.cap *= 2;
        map.key = mc__malloc(map.cap * sizeof *map.key);
        map.val = mc__malloc(map.cap * sizeof *map.val);
        if (!map.key || !map.val) s = mc__fail(MC_ERR_NO_MEMORY, "command list: out of host memory");
        for (uint32_t i = 0; s == MC_OK && i < map.cap; i++) map.key[i] = UINT32_MAX;
        for (uint32_t i = 0; s == MC_OK && i < d->ncmd; i++) {
            const mc__cmd *c = &d->cmds[i];
            if (c->op != MC__OP_SET_BYTES) continue;
            uint32_t *slot = map_slot(&map, c->u.bytes.offset);
            if (*slot != UINT32_MAX) continue;
            *slot = c->u.bytes.offset;
            map.val[slot - map.key] = nbytes_args;
            nbytes_args += (c->u.bytes.len + ARGS_ALIGN - 1) & ~(ARGS_ALIGN - 1);
        }
        if (s == MC_OK) s = mc__mtl_buffer_new(dev, nbytes_args, "metal-compute command list arguments", &l->args);
        if (s == MC_OK && !add_unique(&l->resources, &l->nresources, &rcap, l->args->buffer))
            s = mc__fail(MC_ERR_NO_MEMORY, "command list: out of host memory");
        for (uint32_t i = 0; s == MC_OK && i < d->ncmd; i++) {
            const mc__cmd *c = &d->cmds[i];
            if (c->op != MC__OP_SET_BYTES) continue;
            memcpy((char *)l->args->host + map.val[map_slot(&map, c->u.bytes.offset) - map.key],
                   d->bytes + c->u.bytes.offset, c->u.bytes.len);
        }
    }

    id pool = mc__mtl_pool_push();
    id desc = (id)0;
    if (s == MC_OK) {
        desc = msg_init(msg_alloc(mc__mtl_cls.MTLIndirectCommandBufferDescriptor));
        if (!desc) s = mc__fail(MC_ERR_INTERNAL, "Metal: cannot make MTLIndirectCommandBufferDescriptor");
    }
    if (s == MC_OK) {
        msg_setCommandTypes_(desc, MTLIndirectCommandTypeConcurrentDispatch);
        msg_setInheritPipelineState_(desc, MC__MTL_NO);
        msg_setInheritBuffers_(desc, MC__MTL_NO);
        msg_setMaxKernelBufferBindCount_(desc, max_index ? max_index : 1);
        /* Commands that set threadgroup memory need room for it (macOS 14;
         * Metal's validation rejects setThreadgroupMemoryLength:atIndex: at
         * an index at or over this count). */
        if (max_tgmem_index) msg_setMaxKernelThreadgroupMemoryBindCount_(desc, max_tgmem_index);
        l->icb = msg_newIndirectCommandBufferWithDescriptor_maxCommandCount_options_(dev->device, desc, k,
                                                                                     MTLResourceStorageModeShared);
        if (!l->icb)
            s = mc__fail(MC_ERR_OUT_OF_MEMORY,
                         "Metal could not make an indirect command buffer of %u commands for '%s'", k, d->label);
        else msg_setLabel_(l->icb, mc__mtl_str(d->label));
    }
    /* command k from group k; a barrier before a command that does nothing
     * passes to the next one */
    bool barrier = false;
    for (uint32_t c = 0; s == MC_OK && c < k; c++) {
        id cmd = msg_indirectComputeCommandAtIndex_(l->icb, c);
        uint32_t end = c + 1 < k ? l->group[c + 1] : d->ncmd;
        for (uint32_t i = l->group[c]; i < end; i++) {
            const mc__cmd *x = &d->cmds[i];
            switch (x->op) {
            case MC__OP_BARRIER: barrier = true; break;
            case MC__OP_SET_PIPELINE:
                msg_setComputePipelineState_(cmd, ((mc__mtl_pipeline *)x->u.pipeline)->pso);
                break;
            case MC__OP_SET_BUFFER:
                msg_setKernelBuffer_offset_atIndex_(cmd, ((mc__mtl_buffer *)x->u.buf.buffer)->buffer, x->u.buf.offset,
                                                    x->index);
                break;
            case MC__OP_SET_BYTES:
                msg_setKernelBuffer_offset_atIndex_(cmd, l->args->buffer,
                                                    map.val[map_slot(&map, x->u.bytes.offset) - map.key], x->index);
                break;
            case MC__OP_SET_TGMEM: /* multiples of 16 bytes in Metal */
                msg_setThreadgroupMemoryLength_atIndex_(cmd, (x->u.tgmem.len + 15u) & ~(size_t)15u, x->index);
                break;
            case MC__OP_DISPATCH: {
                mc_size3 g = x->u.dispatch.groups, t = x->u.dispatch.threads;
                if ((uint64_t)g.x * g.y * g.z == 0) {
                    msg_reset(cmd); /* a command that does nothing */
                    break;
                }
                MTLSize mg = {g.x, g.y, g.z}, mt = {t.x, t.y, t.z};
                /* Apple's setBarrier page: set it before encoding the
                 * command it guards; it then waits for every command
                 * before this one. */
                if (barrier) msg_setBarrier(cmd);
                barrier = false;
                msg_concurrentDispatchThreadgroups_threadsPerThreadgroup_(cmd, mg, mt);
                break;
            }
            default: break;
            }
        }
    }
    mc__mtl_release(desc);
    mc__mtl_pool_pop(pool);
    free(map.key);
    free(map.val);
    if (s != MC_OK) {
        mc__mtl_cmdlist_destroy(dev, l);
        return s;
    }
    *out = l;
    *caps = MC__LIST_GPU_RANGE;
    return MC_OK;
}
