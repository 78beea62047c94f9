/*
 * DOC: CUDA device: command lists as CUDA graphs
 *
 * cmdlist_create turns the engine's recording into launch-ready commands
 * once: each command's kernel parameters (hal.h, "command lists": a group
 * carries every binding), its grid and block, its dynamic shared memory,
 * the function opted in to it. Nothing about a command is decided at
 * execution time but what the device reads.
 *
 * Executing a range [first, first+count) launches a CUDA graph of those
 * commands (instantiated on first use and cached per range, at most
 * MAX_INSTANCES per list) with one cuGraphLaunch: the CUDA counterpart of
 * executeCommandsInBuffer (F149, F673), and of the raw 50-launch graph the
 * benchmark compares it with. The nodes form a chain in recording order: a
 * stream runs its work in order anyway, so a barrier costs nothing and
 * commands without one do not overlap here.
 *
 * Device-side parts use the device graph update API (CUDA 12.4) that
 * indirect dispatch already uses (cuda_indirect.c):
 *  - an indirect dispatch is a trampoline node (mc_list_indirect) before a
 *    device-updatable kernel node: it reads the counts when it runs and
 *    sets the kernel's grid, or disables it for a zero count or counts over
 *    the grid limits (then it records the submission's tag in the queue's
 *    error word, so finish() fails the pass: MC_ERR_VALIDATION in
 *    validation mode, else MC_ERR_INVALID_RESOURCE);
 *  - a range the device chooses: one graph of every command, all of them
 *    device-updatable, behind a head node (mc_list_head) with one thread
 *    per command that reads {first, count} when it runs and enables exactly
 *    the commands in the range. The range is clamped by construction.
 * The head also stores the submission's error word and tag where the
 * list's trampolines read them: the graph is built once, the submission
 * launching it is not. It is the only node updated from the host per
 * launch (cuGraphExecKernelNodeSetParams, not device-updatable itself, so no
 * host update ever touches a node the device updates); update and launch
 * happen under the list's lock, so submissions on several queues can share
 * one executable graph (its launches are ordered, and parameters set on the
 * host only affect later launches). A static range without indirect
 * dispatches has no head: executing it is one cuGraphLaunch.
 *
 * Fallbacks, always correct, only slower: where graphs or device updates
 * are missing (or MC_CUDA_INDIRECT=sync), or a list's range cache is full,
 * the commands are launched one by one on the stream (indirect dispatches
 * as elsewhere), and a device-chosen range is read on the CPU after waiting
 * for the stream, like indirect dispatch's own fallback.
 */
#include "backends/cuda/cuda_be.h"

#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_INSTANCES 16u /* static ranges with a graph, per list */
#define HEAD_THREADS 128u

typedef struct lcmd {
    const mc__cuda_pipeline *pl;
    bool empty; /* a zero grid: does nothing, has no node */
    bool indirect;
    mc_size3 groups, threads; /* groups: direct dispatches */
    CUdeviceptr counts;       /* indirect: the three counts */
    const void *counts_host;  /* ... their CPU address, or NULL */
    unsigned smem;
    void **kp; /* kernel parameters: pointers into vals (or zeros) */
    uint8_t *vals;
} lcmd;

typedef struct inst {
    uint32_t first, count;
    bool ranged;
    bool empty;    /* nothing to launch */
    bool uploaded; /* cuGraphUpload done (once, before the first launch) */
    CUgraph graph;
    CUgraphExec exec;
    CUgraphNode head; /* NULL: none */
    unsigned head_blocks, head_threads;
    CUdeviceptr nodes; /* ranged: 2 device node handles per command */
    CUdeviceptr ctx;   /* {error word, tag} for the trampolines */
} inst;

struct mc__cuda_list {
    mc__cuda_device *dev;
    char *label;
    uint32_t n;
    bool has_indirect;
    lcmd *cmd;
    pthread_mutex_t mu; /* the instances; a head update with its launch */
    inst *stat[MAX_INSTANCES];
    uint32_t nstat;
    inst *ranged;
    bool no_graph;   /* graphs failed once: commands are launched one by one */
    CUdeviceptr *up; /* device copies of bytes bound to MSL pointer parameters */
    uint32_t nup, up_cap;
};

/* Zeros for parameters no argument binds (only ever read). */
static uint64_t zero_vals[512];

static mc_status list_refuse(mc__cuda_rec *r, mc_status s, const char *fmt, ...) MC__PRINTF(3, 4);
static mc_status list_refuse(mc__cuda_rec *r, mc_status s, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->msg, sizeof r->msg, fmt, ap);
    va_end(ap);
    return s;
}

/* ---- building the commands ------------------------------------------------ */

typedef struct argval {
    const void *p; /* NULL: unbound */
    size_t len;
    CUdeviceptr ptr; /* buffer arguments: the value */
} argval;

/* Bytes bound to an MSL pointer parameter in a list: copied once into
 * device memory the list owns (a list's bytes never change after it is
 * recorded), and the parameter is that address. */
static mc_status upload_bytes(mc__cuda_list *l, const mc__list_desc *d, argval *a)
{
    mc__cuda_device *dev = l->dev;
    if (l->nup == l->up_cap) {
        uint32_t ncap = l->up_cap ? 2 * l->up_cap : 4;
        CUdeviceptr *nu = mc__realloc(l->up, ncap * sizeof *nu);
        if (!nu) return mc__fail(MC_ERR_NO_MEMORY, "command list '%s': out of host memory", d->label);
        l->up = nu;
        l->up_cap = ncap;
    }
    CUdeviceptr at = 0;
    CUresult r = dev->cu->MemAlloc(&at, a->len ? a->len : 4);
    if (r != CUDA_SUCCESS) return mc__cuda_fail(dev, r, "command list: device memory for bound bytes");
    l->up[l->nup++] = at;
    if (a->len) r = dev->cu->MemcpyHtoDAsync(at, a->p, a->len, dev->xfer);
    if (r == CUDA_SUCCESS) r = dev->cu->StreamSynchronize(dev->xfer);
    if (r != CUDA_SUCCESS) return mc__cuda_fail(dev, r, "command list: copying bound bytes");
    a->p = NULL; /* from here on, a buffer at that address */
    a->ptr = at;
    a->len = sizeof at;
    return MC_OK;
}

/* The kernelParams of one command, as build_params (cuda_submit.c) makes
 * them for a pass: parameter i from slot i (mc__cuda_place_arg), shorter
 * values and unbound parameters padded with zeros. */
static mc_status make_params(mc__cuda_list *l, const mc__list_desc *d, lcmd *c, argval *av, uint32_t bound, uint32_t k)
{
    const mc__cuda_pipeline *pl = c->pl;
    uint32_t nb = bound ? 32u - (uint32_t)__builtin_clz(bound) : 0;
    uint32_t n = pl->nparams >= 0 ? MC__MAX((uint32_t)pl->nparams, nb) : nb;
    size_t total = 0;
    argval local[32];
    const argval *use[32] = {0}; /* slot i's value: as bound, or its device copy */
    for (uint32_t i = 0; i < n; i++) {
        size_t need = (pl->param_size && (int32_t)i < pl->nparams) ? pl->param_size[i] : 0;
        const argval *a = i < 32 && (bound >> i & 1u) ? &av[i] : NULL;
        if (a && a->p && i < MC__CUDA_MAX_SLOTS && (pl->slot[i] & 0xffu) == MC__CUDA_SLOT_PTR) {
            local[i] = *a;
            mc_status s = upload_bytes(l, d, &local[i]);
            if (s != MC_OK) return s;
            a = &local[i];
        }
        if (i < 32) use[i] = a;
        if (!a && need <= sizeof zero_vals) continue;
        total = ((total + 15u) & ~(size_t)15u) + MC__MAX(need, a ? a->len : 0);
    }
    if (total > MC__CUDA_MAX_PARAM_BYTES)
        return mc__fail(MC_ERR_INVALID_ARGUMENT, "command list '%s': command %u: kernel parameters exceed %u bytes",
                        d->label, k, MC__CUDA_MAX_PARAM_BYTES);
    c->kp = mc__calloc(n ? n : 1, sizeof *c->kp);
    c->vals = mc__calloc(total ? total : 1, 1);
    if (!c->kp || !c->vals) return mc__fail(MC_ERR_NO_MEMORY, "command list '%s': out of host memory", d->label);
    size_t at = 0;
    for (uint32_t i = 0; i < n; i++) {
        size_t need = (pl->param_size && (int32_t)i < pl->nparams) ? pl->param_size[i] : 0;
        const argval *a = i < 32 ? use[i] : NULL;
        if (!a && need <= sizeof zero_vals) {
            c->kp[i] = zero_vals;
            continue;
        }
        at = (at + 15u) & ~(size_t)15u;
        size_t len = MC__MAX(need, a ? a->len : 0);
        if (a) mc__cuda_place_arg(pl, i, a->p ? NULL : &a->ptr, a->p, a->len, c->vals + at, len);
        c->kp[i] = c->vals + at;
        at += len;
    }
    return MC_OK;
}

/* Checks a command against its function's limits once, and opts the
 * function in to the dynamic shared memory it needs (as check_launch). */
static mc_status check_cmd(mc__cuda_device *dev, const mc__list_desc *d, lcmd *c, uint32_t k)
{
    mc__cuda_pipeline *pl = (mc__cuda_pipeline *)c->pl;
    uint64_t threads = (uint64_t)c->threads.x * c->threads.y * c->threads.z;
    if (threads == 0 || threads > pl->max_threads)
        return mc__fail(MC_ERR_INVALID_ARGUMENT,
                        "command list '%s': command %u: threadgroup of %llu threads for kernel '%s' (limit %u)",
                        d->label, k, (unsigned long long)threads, pl->name, pl->max_threads);
    if (c->smem + pl->static_smem > (size_t)dev->smem_optin)
        return mc__fail(MC_ERR_INVALID_ARGUMENT,
                        "command list '%s': command %u: %u bytes of threadgroup memory plus %u static for kernel '%s' "
                        "exceed the device's %d",
                        d->label, k, c->smem, pl->static_smem, pl->name, dev->smem_optin);
    if (!c->indirect && !c->empty && (c->groups.x > (uint32_t)INT_MAX || c->groups.y > 65535u || c->groups.z > 65535u))
        return mc__fail(MC_ERR_INVALID_ARGUMENT,
                        "command list '%s': command %u: a grid of (%u,%u,%u) threadgroups exceeds the device's limits",
                        d->label, k, c->groups.x, c->groups.y, c->groups.z);
    if ((int)c->smem > atomic_load(&pl->dyn_smem)) {
        pthread_mutex_lock(&dev->init_mu);
        CUresult res = CUDA_SUCCESS;
        if ((int)c->smem > atomic_load(&pl->dyn_smem)) {
            res = dev->cu->FuncSetAttribute(pl->fn, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, (int)c->smem);
            if (res == CUDA_SUCCESS) atomic_store(&pl->dyn_smem, (int)c->smem);
        }
        pthread_mutex_unlock(&dev->init_mu);
        if (res != CUDA_SUCCESS) return mc__cuda_fail(dev, res, "opting in to dynamic shared memory");
    }
    return MC_OK;
}

static void inst_free(mc__cuda_device *dev, inst *in)
{
    const mc__cuda_api *cu = dev->cu;
    if (!in) return;
    if (in->exec) (void)cu->GraphExecDestroy(in->exec); /* freed once in-flight launches end */
    if (in->graph) (void)cu->GraphDestroy(in->graph);
    if (in->nodes) (void)cu->MemFree(in->nodes);
    if (in->ctx) (void)cu->MemFree(in->ctx);
    free(in);
}

static void list_free(mc__cuda_list *l)
{
    mc__cuda_device *dev = l->dev;
    bool ctx = (l->nstat || l->ranged || l->nup) && mc__cuda_enter(dev) == MC_OK;
    for (uint32_t i = 0; i < l->nstat; i++) {
        if (ctx) inst_free(dev, l->stat[i]);
        else free(l->stat[i]);
    }
    if (ctx) inst_free(dev, l->ranged);
    else free(l->ranged);
    for (uint32_t i = 0; ctx && i < l->nup; i++) (void)dev->cu->MemFree(l->up[i]);
    free(l->up);
    if (ctx) mc__cuda_leave(dev);
    for (uint32_t k = 0; l->cmd && k < l->n; k++) {
        free(l->cmd[k].kp);
        free(l->cmd[k].vals);
    }
    free(l->cmd);
    free(l->label);
    pthread_mutex_destroy(&l->mu);
    free(l);
}

mc_status mc__cuda_cmdlist_create(void *devp, const mc__list_desc *d, void **out, uint32_t *caps)
{
    mc__cuda_device *dev = devp;
    *out = NULL;
    if (atomic_load(&dev->lost) != MC__CUDA_ALIVE) return mc__fail(MC_ERR_DEVICE_LOST, "%s", dev->lost_msg);
    mc__cuda_list *l = mc__calloc(1, sizeof *l);
    if (!l) return mc__fail(MC_ERR_NO_MEMORY, "command list: out of host memory");
    pthread_mutex_init(&l->mu, NULL);
    l->dev = dev;
    l->label = mc__strdup(d->label);
    l->cmd = mc__calloc(d->ncommands ? d->ncommands : 1, sizeof *l->cmd);
    if (!l->label || !l->cmd) {
        list_free(l);
        return mc__fail(MC_ERR_NO_MEMORY, "command list: out of host memory");
    }
    mc_status s = mc__cuda_enter(dev); /* FuncSetAttribute needs the context */
    if (s != MC_OK) {
        list_free(l);
        return s;
    }
    argval av[32];
    size_t tg[MC__CUDA_MAX_TG];
    uint32_t bound = 0, k = 0;
    memset(av, 0, sizeof av);
    memset(tg, 0, sizeof tg);
    const mc__cuda_pipeline *pl = NULL;
    for (uint32_t i = 0; i < d->ncmd && s == MC_OK; i++) {
        const mc__cmd *c = &d->cmds[i];
        switch (c->op) {
        case MC__OP_BARRIER: break; /* the chain orders every command */
        case MC__OP_SET_PIPELINE:   /* a group starts: empty bindings */
            pl = c->u.pipeline;
            bound = 0;
            memset(tg, 0, sizeof tg);
            break;
        case MC__OP_SET_BUFFER:
        case MC__OP_SET_BYTES:
            if (c->index >= MC__CUDA_MAX_SLOTS) {
                s = mc__fail(MC_ERR_INVALID_ARGUMENT, "command list '%s': argument slot %u is over the limit of %u",
                             d->label, c->index, MC__CUDA_MAX_SLOTS - 1);
                break;
            }
            if (c->op == MC__OP_SET_BUFFER) {
                av[c->index].p = NULL;
                av[c->index].ptr = ((const mc__cuda_buffer *)c->u.buf.buffer)->dptr + c->u.buf.offset;
                av[c->index].len = sizeof(CUdeviceptr);
            } else {
                av[c->index].p = d->bytes + c->u.bytes.offset;
                av[c->index].len = c->u.bytes.len;
            }
            bound |= 1u << c->index;
            break;
        case MC__OP_SET_TGMEM:
            if (c->index >= MC__CUDA_MAX_TG) {
                s = mc__fail(MC_ERR_INVALID_ARGUMENT, "command list '%s': threadgroup memory slot %u is over the limit",
                             d->label, c->index);
                break;
            }
            tg[c->index] = c->u.tgmem.len;
            break;
        case MC__OP_DISPATCH:
        case MC__OP_DISPATCH_INDIRECT: {
            if (k >= d->ncommands || !pl) {
                s = mc__fail(MC_ERR_INTERNAL, "command list '%s': command %u is not a complete group", d->label, k);
                break;
            }
            lcmd *lc = &l->cmd[k];
            lc->pl = pl;
            size_t smem = 0;
            for (uint32_t t = 0; t < MC__CUDA_MAX_TG; t++) smem += (tg[t] + 15u) & ~(size_t)15u;
            lc->smem = (unsigned)smem;
            if (c->op == MC__OP_DISPATCH) {
                lc->groups = c->u.dispatch.groups;
                lc->threads = c->u.dispatch.threads;
                lc->empty = !lc->groups.x || !lc->groups.y || !lc->groups.z;
            } else {
                const mc__cuda_buffer *b = c->u.indirect.buffer;
                lc->indirect = true;
                lc->counts = b->dptr + c->u.indirect.offset;
                lc->counts_host = c->u.indirect.host;
                lc->threads = c->u.indirect.threads;
                l->has_indirect = true;
            }
            s = check_cmd(dev, d, lc, k);
            uint32_t tg_sizes[MC__CUDA_MAX_TG], lbound = bound;
            if (mc__cuda_takes_tg_sizes(pl) && !((bound >> MC__CUDA_TG_SIZES_PARAM) & 1u)) {
                mc__cuda_tg_sizes(tg, tg_sizes); /* copied by make_params */
                av[MC__CUDA_TG_SIZES_PARAM] = (argval){.p = tg_sizes, .len = sizeof tg_sizes};
                lbound |= 1u << MC__CUDA_TG_SIZES_PARAM;
            }
            if (s == MC_OK) s = make_params(l, d, lc, av, lbound, k);
            k++;
            break;
        }
        default:
            s = mc__fail(MC_ERR_INVALID_ARGUMENT, "command list '%s': command %u cannot be in a list", d->label, c->op);
        }
    }
    mc__cuda_leave(dev);
    if (s == MC_OK && k != d->ncommands)
        s = mc__fail(MC_ERR_INTERNAL, "command list '%s': %u commands, %u expected", d->label, k, d->ncommands);
    if (s != MC_OK) {
        list_free(l);
        return s;
    }
    l->n = k;
    *out = l;
    *caps = MC__LIST_GPU_RANGE; /* on the device, else read on the CPU */
    return MC_OK;
}

void mc__cuda_cmdlist_destroy(void *devp, void *lp)
{
    (void)devp;
    if (lp) list_free(lp);
}

/* ---- graphs ------------------------------------------------------------------- */

static bool have_graphs(const mc__cuda_api *cu)
{
    return cu->GraphCreate && cu->GraphDestroy && cu->GraphAddKernelNode && cu->GraphInstantiateWithFlags &&
           cu->GraphExecDestroy && cu->GraphLaunch;
}

/* Device updates: the trampolines loaded and the node APIs present. */
static bool have_device_updates(mc__cuda_device *dev)
{
    const mc__cuda_api *cu = dev->cu;
    return mc__cuda_indirect_mode(dev) == MC__CUDA_IND_GRAPH && dev->k_list_head && dev->k_list_ind &&
           cu->GraphKernelNodeSetAttribute && cu->GraphKernelNodeGetAttribute && cu->GraphKernelNodeSetParams &&
           cu->GraphExecKernelNodeSetParams && cu->GraphUpload;
}

static CUresult add_node(const mc__cuda_api *cu, inst *in, CUgraphNode *prev, CUgraphNode *out, CUfunction fn,
                         mc_size3 g, mc_size3 t, unsigned smem, void **params)
{
    CUDA_KERNEL_NODE_PARAMS_v2 p;
    memset(&p, 0, sizeof p);
    p.func = fn;
    p.gridDimX = g.x;
    p.gridDimY = g.y;
    p.gridDimZ = g.z;
    p.blockDimX = t.x;
    p.blockDimY = t.y;
    p.blockDimZ = t.z;
    p.sharedMemBytes = smem;
    p.kernelParams = params; /* copied into the node */
    CUresult res = cu->GraphAddKernelNode(out, in->graph, *prev ? prev : NULL, *prev ? 1 : 0, &p);
    if (res == CUDA_SUCCESS) *prev = *out;
    return res;
}

#if CUDA_VERSION >= 12040
/* Marks node device-updatable; *handle: what device-side updates name it by. */
static CUresult updatable(const mc__cuda_api *cu, CUgraphNode node, uint64_t *handle)
{
    CUkernelNodeAttrValue v;
    memset(&v, 0, sizeof v);
    v.deviceUpdatableKernelNode.deviceUpdatable = 1;
    CUresult res = cu->GraphKernelNodeSetAttribute(node, CU_LAUNCH_ATTRIBUTE_DEVICE_UPDATABLE_KERNEL_NODE, &v);
    if (res != CUDA_SUCCESS) return res;
    memset(&v, 0, sizeof v);
    res = cu->GraphKernelNodeGetAttribute(node, CU_LAUNCH_ATTRIBUTE_DEVICE_UPDATABLE_KERNEL_NODE, &v);
    *handle = (uint64_t)(uintptr_t)v.deviceUpdatableKernelNode.devNode;
    if (res == CUDA_SUCCESS && !*handle) res = CUDA_ERROR_NOT_SUPPORTED;
    return res;
}
#endif

/* The head's parameters for one launch (range 0: none). */
typedef struct head_args {
    CUdeviceptr range, nodes;
    uint32_t n;
    CUdeviceptr ctx;
    uint64_t err, tag;
    void *kp[6];
} head_args;

static void head_params(head_args *h, const inst *in, uint32_t n, CUdeviceptr range, uint64_t err, uint64_t tag,
                        CUDA_KERNEL_NODE_PARAMS_v2 *p, CUfunction fn)
{
    h->range = range;
    h->nodes = in->nodes;
    h->n = range ? n : 0;
    h->ctx = in->ctx;
    h->err = err;
    h->tag = tag;
    h->kp[0] = &h->range;
    h->kp[1] = &h->nodes;
    h->kp[2] = &h->n;
    h->kp[3] = &h->ctx;
    h->kp[4] = &h->err;
    h->kp[5] = &h->tag;
    memset(p, 0, sizeof *p);
    p->func = fn;
    p->gridDimX = in->head_blocks;
    p->gridDimY = p->gridDimZ = 1;
    p->blockDimX = in->head_threads;
    p->blockDimY = p->blockDimZ = 1;
    p->kernelParams = h->kp;
}

/* Builds and instantiates the graph of in (first/count/ranged set).
 * MC_ERR_UNSUPPORTED: the device cannot (launch command by command);
 * anything else with *res: a CUDA failure. */
static mc_status build(mc__cuda_list *l, inst *in, CUresult *res_out)
{
    mc__cuda_device *dev = l->dev;
    const mc__cuda_api *cu = dev->cu;
    *res_out = CUDA_SUCCESS;
    if (!have_graphs(cu)) return MC_ERR_UNSUPPORTED;
    uint32_t lo = in->ranged ? 0 : in->first, hi = in->ranged ? l->n : in->first + in->count;
    bool any_indirect = false;
    for (uint32_t k = lo; k < hi; k++) any_indirect |= l->cmd[k].indirect;
    bool need_updates = in->ranged || any_indirect;
#if CUDA_VERSION >= 12040
    if (need_updates && !have_device_updates(dev)) return MC_ERR_UNSUPPORTED;
#else
    if (need_updates) return MC_ERR_UNSUPPORTED;
#endif
    CUresult res = cu->GraphCreate(&in->graph, 0);
    if (res != CUDA_SUCCESS) {
        in->graph = NULL;
        *res_out = res;
        return MC_ERR_INTERNAL;
    }
    CUgraphNode prev = NULL, node;
    uint64_t *handles = NULL;
    if (need_updates) {
        in->head_blocks = in->ranged ? (l->n + HEAD_THREADS - 1) / HEAD_THREADS : 1;
        in->head_threads = in->ranged ? HEAD_THREADS : 1;
        if (any_indirect) res = cu->MemAlloc(&in->ctx, 2 * sizeof(uint64_t));
        if (res == CUDA_SUCCESS && in->ranged) {
            handles = mc__calloc(2 * (size_t)l->n, sizeof *handles);
            if (!handles) return MC_ERR_NO_MEMORY; /* the caller frees in */
        }
        head_args h;
        CUDA_KERNEL_NODE_PARAMS_v2 hp;
        head_params(&h, in, l->n, 0, 0, 0, &hp, dev->k_list_head);
        if (res == CUDA_SUCCESS) res = cu->GraphAddKernelNode(&in->head, in->graph, NULL, 0, &hp);
        if (res == CUDA_SUCCESS) prev = in->head;
    }
    bool any = false;
    for (uint32_t k = lo; k < hi && res == CUDA_SUCCESS; k++) {
        const lcmd *c = &l->cmd[k];
        if (c->empty) continue;
        any = true;
        mc_size3 one = {1, 1, 1};
        if (!c->indirect) {
            res = add_node(cu, in, &prev, &node, c->pl->fn, c->groups, c->threads, c->smem, c->kp);
#if CUDA_VERSION >= 12040
            if (res == CUDA_SUCCESS && in->ranged) res = updatable(cu, node, &handles[2 * k]);
#endif
            continue;
        }
#if CUDA_VERSION >= 12040
        /* trampoline, then the kernel it sizes; the trampoline learns the
         * kernel's handle once the kernel node exists */
        CUgraphNode tnode;
        CUdeviceptr counts = c->counts, ctxp = in->ctx;
        uint64_t none = 0, uh = 0, th = 0;
        void *targs[3] = {&counts, &none, &ctxp};
        res = add_node(cu, in, &prev, &tnode, dev->k_list_ind, one, one, 0, targs);
        if (res == CUDA_SUCCESS) res = add_node(cu, in, &prev, &node, c->pl->fn, one, c->threads, c->smem, c->kp);
        if (res == CUDA_SUCCESS) res = updatable(cu, node, &uh);
        if (res == CUDA_SUCCESS) { /* its parameters are final before it becomes device-updatable */
            CUDA_KERNEL_NODE_PARAMS_v2 tp;
            memset(&tp, 0, sizeof tp);
            tp.func = dev->k_list_ind;
            tp.gridDimX = tp.gridDimY = tp.gridDimZ = 1;
            tp.blockDimX = tp.blockDimY = tp.blockDimZ = 1;
            void *targs2[3] = {&counts, &uh, &ctxp};
            tp.kernelParams = targs2;
            res = cu->GraphKernelNodeSetParams(tnode, &tp);
        }
        if (res == CUDA_SUCCESS && in->ranged) res = updatable(cu, tnode, &th);
        if (handles) {
            handles[2 * k] = uh;
            handles[2 * k + 1] = th;
        }
#endif
    }
    if (res == CUDA_SUCCESS && in->ranged && l->n) {
        res = cu->MemAlloc(&in->nodes, 2 * (size_t)l->n * sizeof *handles);
        if (res == CUDA_SUCCESS)
            res = cu->MemcpyHtoDAsync(in->nodes, handles, 2 * (size_t)l->n * sizeof *handles, dev->xfer);
        if (res == CUDA_SUCCESS) res = cu->StreamSynchronize(dev->xfer);
    }
    free(handles);
    in->empty = !any; /* only the head (or nothing): no command to run */
    if (res == CUDA_SUCCESS && !in->empty) res = cu->GraphInstantiateWithFlags(&in->exec, in->graph, 0);
    if (res != CUDA_SUCCESS) {
        in->exec = NULL;
        *res_out = res;
        return mc__cuda_is_sticky(res) ? MC_ERR_DEVICE_LOST : MC_ERR_UNSUPPORTED;
    }
    return MC_OK;
}

/* The cached graph for a static range or the ranged one, built on first
 * use; NULL when there is none (launch command by command). l->mu held. */
static inst *instance(mc__cuda_list *l, bool ranged, uint32_t first, uint32_t count, mc_status *err, CUresult *res)
{
    *err = MC_OK;
    if (l->no_graph) return NULL;
    if (ranged && l->ranged) return l->ranged;
    for (uint32_t i = 0; !ranged && i < l->nstat; i++)
        if (l->stat[i]->first == first && l->stat[i]->count == count) return l->stat[i];
    if (!ranged && l->nstat == MAX_INSTANCES) return NULL; /* many ranges: those beyond run command by command */
    inst *in = mc__calloc(1, sizeof *in);
    if (!in) {
        *err = MC_ERR_NO_MEMORY;
        return NULL;
    }
    in->ranged = ranged;
    in->first = first;
    in->count = count;
    mc_status s = build(l, in, res);
    if (s != MC_OK) {
        inst_free(l->dev, in);
        if (s == MC_ERR_UNSUPPORTED) {
            char t[120];
            if (*res != CUDA_SUCCESS)
                mc__log(MC_LOG_INFO, "cuda.cmdlist_fallback",
                        "cuda:%d: command list '%s' cannot be a graph (%s): its commands are launched one by one",
                        l->dev->index, l->label, mc__cuda_text(*res, t, sizeof t));
            if (*res != CUDA_SUCCESS) l->no_graph = true; /* the driver refused: do not try again */
            *res = CUDA_SUCCESS;
            return NULL;
        }
        *err = s;
        return NULL;
    }
    if (ranged) l->ranged = in;
    else l->stat[l->nstat++] = in;
    return in;
}

/* ---- execution ------------------------------------------------------------------ */

/* Commands [first, first+count) launched one by one on the stream. */
static mc_status launch_each(mc__cuda_device *dev, mc__cuda_queue *q, mc__cuda_rec *r, const mc__cuda_list *l,
                             uint32_t first, uint32_t count, uint32_t pass_index, const mc__pass *ps)
{
    const mc__cuda_api *cu = dev->cu;
    for (uint32_t k = first; k < first + count; k++) {
        const lcmd *c = &l->cmd[k];
        mc_size3 g = c->groups;
        mc_status s;
        if (c->empty) continue;
        if (c->indirect) {
            if (mc__cuda_indirect_mode(dev) == MC__CUDA_IND_GRAPH) {
                s = mc__cuda_indirect_graph(dev, q, r, c->pl, c->counts, c->threads, c->smem, c->kp, pass_index, ps);
                if (s != MC_ERR_UNSUPPORTED) {
                    if (s != MC_OK) return s;
                    continue;
                }
                atomic_store(&dev->indirect, MC__CUDA_IND_SYNC);
            }
            uint32_t n[3];
            if ((s = mc__cuda_read_sync(dev, q, r, c->counts_host, c->counts, n, 3, ps)) != MC_OK) return s;
            if (!n[0] || !n[1] || !n[2]) continue;
            if ((s = mc__cuda_check_counts(r, n, ps)) != MC_OK) return s;
            g = (mc_size3){n[0], n[1], n[2]};
        }
        CUresult res = cu->LaunchKernel(c->pl->fn, g.x, g.y, g.z, c->threads.x, c->threads.y, c->threads.z, c->smem,
                                        q->stream, c->kp, NULL);
        if (res != CUDA_SUCCESS) {
            char what[160];
            snprintf(what, sizeof what, "launching command %u of list '%s' ('%s')", k, l->label, c->pl->name);
            return mc__cuda_enc_fail(dev, r, res, what, ps);
        }
    }
    return MC_OK;
}

mc_status mc__cuda_list_execute(mc__cuda_device *dev, mc__cuda_queue *q, mc__cuda_rec *r, const mc__cmd *c,
                                uint32_t pass_index, const mc__pass *ps)
{
    const mc__cuda_api *cu = dev->cu;
    mc__cuda_list *l = c->u.exec.list;
    uint32_t first = c->u.exec.first, count = c->u.exec.count;
    bool ranged = c->u.exec.range_buffer != NULL;
    CUdeviceptr range = 0;
    if (ranged) {
        const mc__cuda_buffer *rb = c->u.exec.range_buffer;
        range = rb->dptr + c->u.exec.range_offset;
        first = 0;
        count = l->n;
    } else if (first > l->n || count > l->n - first) {
        return list_refuse(r, MC_ERR_INTERNAL, "pass '%s': commands [%u, +%u) of list '%s' (%u commands)", ps->label,
                           first, count, l->label, l->n);
    }
    if (!count) return MC_OK;

    pthread_mutex_lock(&l->mu);
    mc_status s;
    CUresult res = CUDA_SUCCESS;
    inst *in = instance(l, ranged, first, count, &s, &res);
    if (!in && s == MC_OK && ranged) {
        /* No device-side range: wait for the stream and read it here. */
        pthread_mutex_unlock(&l->mu);
        uint32_t rg[2];
        s = mc__cuda_read_sync(dev, q, r, c->u.exec.range_host, range, rg, 2, ps);
        if (s != MC_OK) return s;
        first = MC__MIN(rg[0], l->n);
        count = MC__MIN(rg[1], l->n - first);
        if (!count) return MC_OK;
        ranged = false;
        pthread_mutex_lock(&l->mu);
        in = instance(l, false, first, count, &s, &res);
    }
    if (s != MC_OK) {
        pthread_mutex_unlock(&l->mu);
        if (res != CUDA_SUCCESS) return mc__cuda_enc_fail(dev, r, res, "building the command list's graph", ps);
        return list_refuse(r, s, "pass '%s': cannot build a graph of list '%s'", ps->label, l->label);
    }
    if (!in) {
        pthread_mutex_unlock(&l->mu);
        return launch_each(dev, q, r, l, first, count, pass_index, ps);
    }
    if (in->empty) {
        pthread_mutex_unlock(&l->mu);
        return MC_OK;
    }
    if (in->head) {
        head_args h;
        CUDA_KERNEL_NODE_PARAMS_v2 hp;
        head_params(&h, in, l->n, range, q->block_dptr + MC__CUDA_BLOCK_ERR, mc__cuda_indirect_tag(r, pass_index), &hp,
                    dev->k_list_head);
        res = cu->GraphExecKernelNodeSetParams(in->exec, in->head, &hp);
    }
    /* A graph whose nodes the device updates must be uploaded before it is
     * launched (cuda.h, CU_LAUNCH_ATTRIBUTE_DEVICE_UPDATABLE_KERNEL_NODE);
     * host updates touch only the head, which is not device-updatable, so
     * once is enough. Stream-ordered, like the launch. */
    if (res == CUDA_SUCCESS && !in->uploaded && cu->GraphUpload) {
        res = cu->GraphUpload(in->exec, q->stream);
        if (res == CUDA_SUCCESS) in->uploaded = true;
    }
    if (res == CUDA_SUCCESS) res = cu->GraphLaunch(in->exec, q->stream);
    bool indirect = in->ctx != 0;
    pthread_mutex_unlock(&l->mu);
    if (res != CUDA_SUCCESS) {
        char what[160];
        snprintf(what, sizeof what, "launching the graph of list '%s'", l->label);
        return mc__cuda_enc_fail(dev, r, res, what, ps);
    }
    if (indirect) r->indirect = true; /* finish() reads the error word */
    return MC_OK;
}
