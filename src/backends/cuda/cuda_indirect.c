/*
 * DOC: CUDA indirect dispatch: threadgroup counts read on the GPU
 *
 * Indirect dispatch (F148): the grid must be read on the GPU when the
 * dispatch executes. NVRTC cannot use dynamic parallelism without linking
 * the device runtime, and early exit from a large grid needs the kernel's
 * cooperation, so each indirect dispatch is a small CUDA graph of two
 * kernel nodes: a trampoline that reads the three counts and, through the
 * device-side graph update API (CUDA 12.4: cudaGraphKernelNodeSetGridDim /
 * SetEnabled, provided by the driver, no device runtime to link), sets the
 * grid of the second node (the user's kernel, device-updatable) or disables
 * it for a zero count. Graphs are cached per queue by (function, block,
 * shared memory) and reused once the submissions that launched them are
 * done (host-side parameter updates must not overlap a running launch).
 * Counts over the device's grid limits disable the node and fail the
 * command buffer with MC_ERR_INVALID_RESOURCE (MC_ERR_VALIDATION when the
 * submission carries MC__SUBMIT_VALIDATION). Where the driver is older (or
 * MC_CUDA_INDIRECT=sync), submit() reads the counts after waiting for the
 * stream (a CPU round trip inside submit; a dispatch behind a GPU wait on an
 * event that only the submitting thread would signal later blocks). Command
 * lists reuse all of this for their own indirect dispatches and
 * device-chosen ranges (cuda_list.c).
 *
 * The trampolines' PTX is written here by hand and loaded on first use;
 * the graphs a pipeline leaves behind are forgotten when it is destroyed.
 */
#include "backends/cuda/cuda_be.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* indirect graphs kept per queue before idle ones are dropped */
#define MAX_SLOTS 64u

struct mc__cuda_slot {
    mc__cuda_slot *next;
    const mc__cuda_pipeline *pl;
    unsigned bx, by, bz, smem;
    CUgraph graph;
    CUgraphExec exec;
    CUgraphNode tnode, unode;
    void *devnode;       /* CUgraphDeviceNode */
    uint64_t busy_until; /* marker after the last submission that launched it */
};

/* The PTX the two trampolines share (mc_indirect_trampoline here,
 * mc_list_indirect for lists): the header with the device-side graph
 * functions; the decision on the three counts at register C (the global
 * address of the counts), the node in %rd2: a zero count disables the node,
 * counts over the grid limits (x < 2^31, y and z <= 65535) branch to
 * $L_toolarge, where each records its error its own way, and the rest set
 * the grid and enable the node; and $L_disable. The driver resolves the two
 * functions when the module loads (like printf's vprintf); PTX 8.4 = CUDA
 * 12.4, the release that introduced them. */
#define TRAMP_PTX_HEADER                                                                              \
    ".version 8.4\n"                                                                                  \
    ".target sm_70\n"                                                                                 \
    ".address_size 64\n"                                                                              \
    ".extern .func (.param .b32 rv) cudaGraphKernelNodeSetEnabled(.param .b64 a0, .param .b32 a1);\n" \
    ".extern .func (.param .b32 rv) cudaGraphKernelNodeSetGridDim(.param .b64 a0, .param .align 4 .b8 a1[12]);\n"
#define TRAMP_PTX_DECIDE(C)                                       \
    "  ld.volatile.global.u32 %r1, [" C                           \
    "];\n"                                                        \
    "  ld.volatile.global.u32 %r2, [" C                           \
    "+4];\n"                                                      \
    "  ld.volatile.global.u32 %r3, [" C                           \
    "+8];\n"                                                      \
    "  setp.eq.s32 %p1, %r1, 0;\n"                                \
    "  setp.eq.s32 %p2, %r2, 0;\n"                                \
    "  or.pred %p3, %p1, %p2;\n"                                  \
    "  setp.eq.s32 %p4, %r3, 0;\n"                                \
    "  or.pred %p5, %p3, %p4;\n"                                  \
    "  @%p5 bra $L_disable;\n"                                    \
    "  setp.lt.s32 %p6, %r1, 0;\n"                                \
    "  or.b32 %r4, %r3, %r2;\n"                                   \
    "  and.b32 %r5, %r4, -65536;\n"                               \
    "  setp.ne.s32 %p7, %r5, 0;\n"                                \
    "  or.pred %p8, %p6, %p7;\n"                                  \
    "  @%p8 bra $L_toolarge;\n"                                   \
    "  {\n"                                                       \
    "  .param .b64 q0;\n"                                         \
    "  st.param.b64 [q0+0], %rd2;\n"                              \
    "  .param .align 4 .b8 q1[12];\n"                             \
    "  st.param.b32 [q1+0], %r1;\n"                               \
    "  st.param.b32 [q1+4], %r2;\n"                               \
    "  st.param.b32 [q1+8], %r3;\n"                               \
    "  .param .b32 rv;\n"                                         \
    "  call.uni (rv), cudaGraphKernelNodeSetGridDim, (q0, q1);\n" \
    "  ld.param.b32 %r6, [rv+0];\n"                               \
    "  }\n"                                                       \
    "  {\n"                                                       \
    "  .param .b64 q0;\n"                                         \
    "  st.param.b64 [q0+0], %rd2;\n"                              \
    "  .param .b32 q1;\n"                                         \
    "  st.param.b32 [q1+0], 1;\n"                                 \
    "  .param .b32 rv;\n"                                         \
    "  call.uni (rv), cudaGraphKernelNodeSetEnabled, (q0, q1);\n" \
    "  ld.param.b32 %r7, [rv+0];\n"                               \
    "  }\n"                                                       \
    "  ret;\n"                                                    \
    "$L_toolarge:\n"
#define TRAMP_PTX_DISABLE                                         \
    "$L_disable:\n"                                               \
    "  {\n"                                                       \
    "  .param .b64 q0;\n"                                         \
    "  st.param.b64 [q0+0], %rd2;\n"                              \
    "  .param .b32 q1;\n"                                         \
    "  st.param.b32 [q1+0], 0;\n"                                 \
    "  .param .b32 rv;\n"                                         \
    "  call.uni (rv), cudaGraphKernelNodeSetEnabled, (q0, q1);\n" \
    "  ld.param.b32 %r8, [rv+0];\n"                               \
    "  }\n"                                                       \
    "  ret;\n"                                                    \
    "}\n"

/* mc_indirect_trampoline(const uint32_t *counts, CUgraphDeviceNode node,
 *                        uint64_t *err, uint64_t tag)
 * Over the grid limits it records tag in *err if that is still empty. */
static const char tramp_ptx[] =
    TRAMP_PTX_HEADER
    ".visible .entry mc_indirect_trampoline(.param .u64 p_counts, .param .u64 p_node, .param .u64 p_err,\n"
    "                                       .param .u64 p_tag)\n"
    "{\n"
    "  .reg .pred %p<10>;\n"
    "  .reg .b32 %r<10>;\n"
    "  .reg .b64 %rd<8>;\n"
    "  ld.param.u64 %rd4, [p_counts];\n"
    "  ld.param.u64 %rd2, [p_node];\n"
    "  ld.param.u64 %rd5, [p_err];\n"
    "  ld.param.u64 %rd3, [p_tag];\n"
    "  cvta.to.global.u64 %rd1, %rd5;\n"
    "  cvta.to.global.u64 %rd6, %rd4;\n"
    TRAMP_PTX_DECIDE("%rd6")
    "  ld.volatile.global.u64 %rd7, [%rd1];\n"
    "  setp.ne.s64 %p9, %rd7, 0;\n"
    "  @%p9 bra $L_disable;\n"
    "  st.volatile.global.u64 [%rd1], %rd3;\n"
    "  membar.sys;\n"
    TRAMP_PTX_DISABLE;

/* Command lists (cuda_list.c): the head of a list's graph and the
 * trampoline of an indirect dispatch inside a list. Loaded as one module,
 * joined from these pieces (each within ISO C's string length). */
static const char list_ptx_header[] = TRAMP_PTX_HEADER;
static const char list_ptx_head[] =
    /* mc_list_head(const uint32_t *range, const uint64_t *nodes, uint32_t n,
     *              uint64_t *ctx, uint64_t err, uint64_t tag)
     * The first node of a command-list graph (cuda_list.c). Thread 0 stores
     * {err, tag} at ctx (when ctx is not NULL) for the list's indirect
     * trampolines. With a range, thread i < n enables command i when
     * first <= i < first + count ({first, count} read at range now, so
     * clamped to the list by construction) and disables it otherwise:
     * nodes[2i] is its kernel node, nodes[2i+1] its trampoline (0 for a
     * direct dispatch); an enabled trampoline decides its kernel itself.
     * The CUDA C it was written from, through nvcc -ptx:
     *     if (i == 0 && ctx) { ctx[0] = err; ctx[1] = tag; }
     *     if (!range || i >= n) return;
     *     bool en = i >= range[0] && i - range[0] < range[1];
     *     if (nodes[2i+1]) { SetEnabled(nodes[2i+1], en); if (!en && nodes[2i]) SetEnabled(nodes[2i], 0); }
     *     else if (nodes[2i]) SetEnabled(nodes[2i], en); */
    ".visible .entry mc_list_head(.param .u64 p_range, .param .u64 p_nodes, .param .u32 p_n, .param .u64 p_ctx,\n"
    "                             .param .u64 p_err, .param .u64 p_tag)\n"
    "{\n"
    "  .reg .pred %p<10>;\n"
    "  .reg .b32 %r<12>;\n"
    "  .reg .b64 %rd<14>;\n"
    "  ld.param.u64 %rd1, [p_range];\n"
    "  ld.param.u64 %rd2, [p_nodes];\n"
    "  ld.param.u32 %r1, [p_n];\n"
    "  ld.param.u64 %rd3, [p_ctx];\n"
    "  ld.param.u64 %rd4, [p_err];\n"
    "  ld.param.u64 %rd5, [p_tag];\n"
    "  mov.u32 %r2, %ntid.x;\n"
    "  mov.u32 %r3, %ctaid.x;\n"
    "  mov.u32 %r4, %tid.x;\n"
    "  mad.lo.s32 %r5, %r3, %r2, %r4;\n"
    "  setp.ne.s32 %p1, %r5, 0;\n"
    "  setp.eq.s64 %p2, %rd3, 0;\n"
    "  or.pred %p3, %p1, %p2;\n"
    "  @%p3 bra $L_nodes;\n"
    "  cvta.to.global.u64 %rd6, %rd3;\n"
    "  st.global.u64 [%rd6], %rd4;\n"
    "  st.global.u64 [%rd6+8], %rd5;\n"
    "$L_nodes:\n"
    "  setp.eq.s64 %p4, %rd1, 0;\n"
    "  setp.ge.u32 %p5, %r5, %r1;\n"
    "  or.pred %p6, %p4, %p5;\n"
    "  @%p6 bra $L_done;\n"
    "  cvta.to.global.u64 %rd7, %rd1;\n"
    "  ld.volatile.global.u32 %r6, [%rd7];\n"
    "  ld.volatile.global.u32 %r7, [%rd7+4];\n"
    "  setp.ge.u32 %p1, %r5, %r6;\n"
    "  sub.s32 %r8, %r5, %r6;\n"
    "  setp.lt.u32 %p2, %r8, %r7;\n"
    "  and.pred %p7, %p1, %p2;\n"
    "  selp.u32 %r9, 1, 0, %p7;\n"
    "  cvta.to.global.u64 %rd8, %rd2;\n"
    "  mul.wide.u32 %rd9, %r5, 16;\n"
    "  add.s64 %rd10, %rd8, %rd9;\n"
    "  ld.global.u64 %rd11, [%rd10];\n"
    "  ld.global.u64 %rd12, [%rd10+8];\n"
    "  setp.eq.s64 %p8, %rd12, 0;\n"
    "  @%p8 bra $L_user;\n"
    "  {\n"
    "  .param .b64 q0;\n"
    "  st.param.b64 [q0+0], %rd12;\n"
    "  .param .b32 q1;\n"
    "  st.param.b32 [q1+0], %r9;\n"
    "  .param .b32 rv;\n"
    "  call.uni (rv), cudaGraphKernelNodeSetEnabled, (q0, q1);\n"
    "  ld.param.b32 %r10, [rv+0];\n"
    "  }\n"
    "  setp.eq.s64 %p9, %rd11, 0;\n"
    "  or.pred %p9, %p9, %p7;\n"
    "  @%p9 bra $L_done;\n"
    "  {\n"
    "  .param .b64 q0;\n"
    "  st.param.b64 [q0+0], %rd11;\n"
    "  .param .b32 q1;\n"
    "  st.param.b32 [q1+0], 0;\n"
    "  .param .b32 rv;\n"
    "  call.uni (rv), cudaGraphKernelNodeSetEnabled, (q0, q1);\n"
    "  ld.param.b32 %r10, [rv+0];\n"
    "  }\n"
    "  bra.uni $L_done;\n"
    "$L_user:\n"
    "  setp.eq.s64 %p9, %rd11, 0;\n"
    "  @%p9 bra $L_done;\n"
    "  {\n"
    "  .param .b64 q0;\n"
    "  st.param.b64 [q0+0], %rd11;\n"
    "  .param .b32 q1;\n"
    "  st.param.b32 [q1+0], %r9;\n"
    "  .param .b32 rv;\n"
    "  call.uni (rv), cudaGraphKernelNodeSetEnabled, (q0, q1);\n"
    "  ld.param.b32 %r11, [rv+0];\n"
    "  }\n"
    "$L_done:\n"
    "  ret;\n"
    "}\n";
static const char list_ptx_indirect[] =
    /* mc_list_indirect(const uint32_t *counts, CUgraphDeviceNode node,
     *                  const uint64_t *ctx)
     * mc_indirect_trampoline for an indirect dispatch inside a command
     * list: the error word and the tag come from ctx, where the list's head
     * stored them for this launch (the graph is built once, the submission
     * that launches it changes). */
    ".visible .entry mc_list_indirect(.param .u64 p_counts, .param .u64 p_node, .param .u64 p_ctx)\n"
    "{\n"
    "  .reg .pred %p<10>;\n"
    "  .reg .b32 %r<10>;\n"
    "  .reg .b64 %rd<10>;\n"
    "  ld.param.u64 %rd1, [p_counts];\n"
    "  ld.param.u64 %rd2, [p_node];\n"
    "  ld.param.u64 %rd3, [p_ctx];\n"
    "  cvta.to.global.u64 %rd4, %rd1;\n"
    TRAMP_PTX_DECIDE("%rd4")
    "  cvta.to.global.u64 %rd5, %rd3;\n"
    "  ld.global.u64 %rd6, [%rd5];\n"
    "  ld.global.u64 %rd7, [%rd5+8];\n"
    "  setp.eq.s64 %p9, %rd6, 0;\n"
    "  @%p9 bra $L_disable;\n"
    "  cvta.to.global.u64 %rd8, %rd6;\n"
    "  ld.volatile.global.u64 %rd9, [%rd8];\n"
    "  setp.ne.s64 %p9, %rd9, 0;\n"
    "  @%p9 bra $L_disable;\n"
    "  st.volatile.global.u64 [%rd8], %rd7;\n"
    "  membar.sys;\n"
    TRAMP_PTX_DISABLE;

/* ---- indirect dispatch ------------------------------------------------------ */

uint64_t mc__cuda_indirect_tag(const mc__cuda_rec *r, uint32_t pass)
{
    return ((r->sub_seq & MC__CUDA_TAG_SEQ_MASK) << MC__CUDA_TAG_SHIFT) | (pass & MC__CUDA_TAG_PASS_MASK);
}

static bool have_graph_api(const mc__cuda_api *cu)
{
    return cu->GraphCreate && cu->GraphDestroy && cu->GraphAddKernelNode && cu->GraphKernelNodeSetAttribute &&
           cu->GraphKernelNodeGetAttribute && cu->GraphInstantiateWithFlags && cu->GraphExecDestroy &&
           cu->GraphExecKernelNodeSetParams && cu->GraphUpload && cu->GraphLaunch;
}

/* The command lists' device-side kernels (init_mu held, context current);
 * without them lists launch their commands one by one (cuda_list.c). */
static void load_list_module(mc__cuda_device *dev)
{
    size_t a = strlen(list_ptx_header), b = strlen(list_ptx_head), c = strlen(list_ptx_indirect);
    char *ptx = mc__malloc(a + b + c + 1);
    if (!ptx) return;
    memcpy(ptx, list_ptx_header, a);
    memcpy(ptx + a, list_ptx_head, b);
    memcpy(ptx + a + b, list_ptx_indirect, c + 1);
    CUresult res = mc__cuda_load_module(dev, ptx, &dev->list_mod);
    free(ptx);
    if (res == CUDA_SUCCESS) res = dev->cu->ModuleGetFunction(&dev->k_list_head, dev->list_mod, "mc_list_head");
    if (res == CUDA_SUCCESS) res = dev->cu->ModuleGetFunction(&dev->k_list_ind, dev->list_mod, "mc_list_indirect");
    if (res != CUDA_SUCCESS) {
        char t[120];
        mc__log(MC_LOG_INFO, "cuda.cmdlist_kernels", "cuda:%d: command-list kernels did not load (%s)", dev->index,
                mc__cuda_text(res, t, sizeof t));
        dev->k_list_head = dev->k_list_ind = NULL;
    }
}

/* Chooses how indirect dispatch runs on this device (context current). */
int mc__cuda_indirect_mode(mc__cuda_device *dev)
{
    int mode = atomic_load(&dev->indirect);
    if (mode != MC__CUDA_IND_UNKNOWN) return mode;
    pthread_mutex_lock(&dev->init_mu);
    mode = atomic_load(&dev->indirect);
    if (mode == MC__CUDA_IND_UNKNOWN) {
        mode = MC__CUDA_IND_SYNC;
        const char *why = NULL;
        const char *env = mc__env_str("MC_CUDA_INDIRECT", "graph");
        if (strcmp(env, "sync") == 0) {
            why = "MC_CUDA_INDIRECT=sync";
        } else if (CUDA_VERSION < 12040 || dev->driver_version < 12040 || !have_graph_api(dev->cu)) {
            why = "the driver predates device-updatable graph nodes (CUDA 12.4)";
        } else {
            CUresult res = mc__cuda_load_module(dev, tramp_ptx, &dev->tramp_mod);
            if (res == CUDA_SUCCESS)
                res = dev->cu->ModuleGetFunction(&dev->k_tramp, dev->tramp_mod, "mc_indirect_trampoline");
            if (res == CUDA_SUCCESS) {
                mode = MC__CUDA_IND_GRAPH;
                load_list_module(dev);
            } else {
                char t[120];
                mc__log(MC_LOG_INFO, "cuda.indirect_trampoline", "cuda:%d: trampoline did not load: %s", dev->index,
                        mc__cuda_text(res, t, sizeof t));
                why = "the trampoline kernel did not load";
            }
        }
        if (why)
            mc__log(MC_LOG_INFO, "cuda.indirect_fallback",
                    "cuda:%d: indirect dispatch reads its counts on the CPU (%s): each one waits for the queue",
                    dev->index, why);
        atomic_store(&dev->indirect, mode);
    }
    pthread_mutex_unlock(&dev->init_mu);
    return mode;
}

static void slot_destroy(const mc__cuda_api *cu, mc__cuda_slot *s)
{
    if (s->exec) (void)cu->GraphExecDestroy(s->exec);
    if (s->graph) (void)cu->GraphDestroy(s->graph);
    free(s);
}

/* Drops the queue's idle graphs (context current, submit_mu held). */
static void slots_trim(mc__cuda_device *dev, mc__cuda_queue *q, const mc__cuda_pipeline *only)
{
    uint64_t done = mc__cuda_load_done(q);
    mc__cuda_slot **pp = &q->slots;
    while (*pp) {
        mc__cuda_slot *s = *pp;
        bool idle = s->busy_until <= done || atomic_load(&dev->lost) == MC__CUDA_LOST_DEAD;
        if (only ? s->pl == only : idle) {
            *pp = s->next;
            slot_destroy(dev->cu, s);
        } else {
            pp = &s->next;
        }
    }
}

#if CUDA_VERSION >= 12040
/* Builds the two-node graph for (pl, t, smem). MC_ERR_UNSUPPORTED when the
 * driver refuses device-updatable nodes: the caller falls back. */
static mc_status slot_create(mc__cuda_device *dev, mc__cuda_queue *q, const mc__cuda_pipeline *pl, mc_size3 t,
                             unsigned smem, void **params, mc__cuda_slot **out, CUresult *res_out)
{
    const mc__cuda_api *cu = dev->cu;
    *out = NULL;
    *res_out = CUDA_SUCCESS;
    uint32_t n = 0;
    for (mc__cuda_slot *s = q->slots; s; s = s->next) n++;
    if (n >= MAX_SLOTS) slots_trim(dev, q, NULL);
    mc__cuda_slot *s = mc__calloc(1, sizeof *s);
    if (!s) return MC_ERR_NO_MEMORY;
    s->pl = pl;
    s->bx = t.x;
    s->by = t.y;
    s->bz = t.z;
    s->smem = smem;
    CUresult res = cu->GraphCreate(&s->graph, 0);
    CUdeviceptr counts = q->block_dptr + MC__CUDA_BLOCK_COUNTS, err = q->block_dptr + MC__CUDA_BLOCK_ERR;
    CUgraphDeviceNode none = NULL;
    uint64_t tag = 0;
    void *targs[4] = {&counts, &none, &err, &tag};
    CUDA_KERNEL_NODE_PARAMS_v2 tp;
    memset(&tp, 0, sizeof tp);
    tp.func = dev->k_tramp;
    tp.gridDimX = tp.gridDimY = tp.gridDimZ = 1;
    tp.blockDimX = tp.blockDimY = tp.blockDimZ = 1;
    tp.kernelParams = targs;
    if (res == CUDA_SUCCESS) res = cu->GraphAddKernelNode(&s->tnode, s->graph, NULL, 0, &tp);
    CUDA_KERNEL_NODE_PARAMS_v2 up;
    memset(&up, 0, sizeof up);
    up.func = pl->fn;
    up.gridDimX = up.gridDimY = up.gridDimZ = 1;
    up.blockDimX = t.x;
    up.blockDimY = t.y;
    up.blockDimZ = t.z;
    up.sharedMemBytes = smem;
    up.kernelParams = params;
    if (res == CUDA_SUCCESS) res = cu->GraphAddKernelNode(&s->unode, s->graph, &s->tnode, 1, &up);
    if (res == CUDA_SUCCESS) {
        CUkernelNodeAttrValue v;
        memset(&v, 0, sizeof v);
        v.deviceUpdatableKernelNode.deviceUpdatable = 1;
        res = cu->GraphKernelNodeSetAttribute(s->unode, CU_LAUNCH_ATTRIBUTE_DEVICE_UPDATABLE_KERNEL_NODE, &v);
        if (res == CUDA_SUCCESS) {
            memset(&v, 0, sizeof v);
            res = cu->GraphKernelNodeGetAttribute(s->unode, CU_LAUNCH_ATTRIBUTE_DEVICE_UPDATABLE_KERNEL_NODE, &v);
            s->devnode = v.deviceUpdatableKernelNode.devNode;
            if (res == CUDA_SUCCESS && !s->devnode) res = CUDA_ERROR_NOT_SUPPORTED;
        }
        if (res != CUDA_SUCCESS && !mc__cuda_is_sticky(res)) {
            char t2[120];
            mc__log(MC_LOG_INFO, "cuda.indirect_fallback",
                    "cuda:%d: device-updatable graph nodes unavailable (%s): indirect dispatch reads its counts on "
                    "the CPU",
                    dev->index, mc__cuda_text(res, t2, sizeof t2));
            slot_destroy(cu, s);
            return MC_ERR_UNSUPPORTED;
        }
    }
    if (res == CUDA_SUCCESS) res = cu->GraphInstantiateWithFlags(&s->exec, s->graph, 0);
    if (res != CUDA_SUCCESS) {
        slot_destroy(cu, s);
        *res_out = res;
        return MC_ERR_INTERNAL;
    }
    s->next = q->slots;
    q->slots = s;
    *out = s;
    return MC_OK;
}
#endif

static mc_status note_used(mc__cuda_queue *q, mc__cuda_rec *r, mc__cuda_slot *s)
{
    if (q->nused == q->used_cap) {
        uint32_t ncap = q->used_cap ? q->used_cap * 2 : 8;
        mc__cuda_slot **n = mc__realloc(q->used, ncap * sizeof *n);
        if (!n) return mc__cuda_refuse(r, MC_ERR_NO_MEMORY, "out of host memory");
        q->used = n;
        q->used_cap = ncap;
    }
    s->busy_until = UINT64_MAX; /* until this submission's marker is known */
    q->used[q->nused++] = s;
    return MC_OK;
}

/* The GPU-side path: returns MC_ERR_UNSUPPORTED (nothing enqueued) when the
 * device cannot do it, so the caller falls back. */
mc_status mc__cuda_indirect_graph(mc__cuda_device *dev, mc__cuda_queue *q, mc__cuda_rec *r, const mc__cuda_pipeline *pl,
                                  CUdeviceptr counts, mc_size3 t, unsigned smem, void **params, uint32_t pass_index,
                                  const mc__pass *ps)
{
#if CUDA_VERSION >= 12040
    const mc__cuda_api *cu = dev->cu;
    uint64_t done = mc__cuda_load_done(q);
    mc__cuda_slot *s = q->slots;
    for (; s; s = s->next)
        if (s->pl == pl && s->bx == t.x && s->by == t.y && s->bz == t.z && s->smem == smem && s->busy_until <= done)
            break;
    if (!s) {
        CUresult res = CUDA_SUCCESS;
        mc_status st = slot_create(dev, q, pl, t, smem, params, &s, &res);
        if (st == MC_ERR_UNSUPPORTED) return st;
        if (st == MC_ERR_NO_MEMORY) return mc__cuda_refuse(r, st, "out of host memory");
        if (st != MC_OK) return mc__cuda_enc_fail(dev, r, res, "building the indirect-dispatch graph", ps);
    }
    mc_status st = note_used(q, r, s);
    if (st != MC_OK) return st;
    CUdeviceptr err = q->block_dptr + MC__CUDA_BLOCK_ERR;
    CUgraphDeviceNode node = s->devnode;
    uint64_t tag = mc__cuda_indirect_tag(r, pass_index);
    void *targs[4] = {&counts, &node, &err, &tag};
    CUDA_KERNEL_NODE_PARAMS_v2 tp;
    memset(&tp, 0, sizeof tp);
    tp.func = dev->k_tramp;
    tp.gridDimX = tp.gridDimY = tp.gridDimZ = 1;
    tp.blockDimX = tp.blockDimY = tp.blockDimZ = 1;
    tp.kernelParams = targs;
    CUDA_KERNEL_NODE_PARAMS_v2 up;
    memset(&up, 0, sizeof up);
    up.func = pl->fn;
    up.gridDimX = up.gridDimY = up.gridDimZ = 1; /* the trampoline sets the real grid */
    up.blockDimX = t.x;
    up.blockDimY = t.y;
    up.blockDimZ = t.z;
    up.sharedMemBytes = smem;
    up.kernelParams = params;
    /* Host-side updates to a device-updatable node require an upload before
     * the next launch; both are stream-ordered. */
    CUresult res = cu->GraphExecKernelNodeSetParams(s->exec, s->tnode, &tp);
    if (res == CUDA_SUCCESS) res = cu->GraphExecKernelNodeSetParams(s->exec, s->unode, &up);
    if (res == CUDA_SUCCESS) res = cu->GraphUpload(s->exec, q->stream);
    if (res == CUDA_SUCCESS) res = cu->GraphLaunch(s->exec, q->stream);
    if (res != CUDA_SUCCESS) {
        char what[160];
        snprintf(what, sizeof what, "launching the indirect dispatch of '%s'", pl->name);
        return mc__cuda_enc_fail(dev, r, res, what, ps);
    }
    r->indirect = true;
    return MC_OK;
#else
    (void)dev, (void)q, (void)r, (void)pl, (void)counts, (void)t, (void)smem, (void)params, (void)pass_index, (void)ps;
    return MC_ERR_UNSUPPORTED;
#endif
}

mc_status mc__cuda_read_sync(mc__cuda_device *dev, mc__cuda_queue *q, mc__cuda_rec *r, const void *host,
                             CUdeviceptr dptr, uint32_t *out, uint32_t nwords, const mc__pass *ps)
{
    const mc__cuda_api *cu = dev->cu;
    CUresult res;
    if (nwords > 4)
        return mc__cuda_refuse(r, MC_ERR_INTERNAL, "pass '%s': reading %u words on the CPU", ps->label, nwords);
    if (host) {
        res = cu->StreamSynchronize(q->stream);
        if (res != CUDA_SUCCESS) return mc__cuda_enc_fail(dev, r, res, "waiting for values the device writes", ps);
        memcpy(out, host, nwords * sizeof *out);
    } else {
        void *stage = (char *)q->block + MC__CUDA_BLOCK_COUNTS;
        res = cu->MemcpyDtoHAsync(stage, dptr, nwords * sizeof *out, q->stream);
        if (res == CUDA_SUCCESS) res = cu->StreamSynchronize(q->stream);
        if (res != CUDA_SUCCESS) return mc__cuda_enc_fail(dev, r, res, "reading values the device writes", ps);
        memcpy(out, stage, nwords * sizeof *out);
    }
    return MC_OK;
}

mc_status mc__cuda_check_counts(mc__cuda_rec *r, const uint32_t n[3], const mc__pass *ps)
{
    if (n[0] <= MC_INDIRECT_MAX_GROUPS_X && n[1] <= MC_INDIRECT_MAX_GROUPS_YZ && n[2] <= MC_INDIRECT_MAX_GROUPS_YZ)
        return MC_OK;
    bool validation = r->sub && (r->sub->flags & MC__SUBMIT_VALIDATION);
    return mc__cuda_refuse(
        r, validation ? MC_ERR_VALIDATION : MC_ERR_INVALID_RESOURCE,
        "indirect dispatch in pass '%s': threadgroup counts (%u,%u,%u) exceed the limits (x <= %u, y and z "
        "<= %u); it did not run",
        ps->label, n[0], n[1], n[2], MC_INDIRECT_MAX_GROUPS_X, MC_INDIRECT_MAX_GROUPS_YZ);
}

/* ---- the queue's graphs ----------------------------------------------------- */

void mc__cuda_slots_settle(mc__cuda_queue *q)
{
    for (uint32_t i = 0; i < q->nused; i++) q->used[i]->busy_until = atomic_load(&q->marker);
    q->nused = 0;
}

void mc__cuda_slots_free(mc__cuda_queue *q, bool ctx)
{
    while (q->slots) {
        mc__cuda_slot *s = q->slots;
        q->slots = s->next;
        if (ctx) slot_destroy(q->dev->cu, s);
        else free(s);
    }
}

void mc__cuda_forget_pipeline(mc__cuda_device *dev, mc__cuda_pipeline *pl)
{
    if (atomic_load(&dev->indirect) != MC__CUDA_IND_GRAPH && !dev->replay) return; /* no graphs were ever made */
    /* Lock order dev->mu -> q->submit_mu: submit never takes dev->mu while
     * holding its queue's submit_mu. */
    pthread_mutex_lock(&dev->mu);
    bool ctx = false;
    for (mc__cuda_queue *q = dev->queues; q; q = q->next) {
        pthread_mutex_lock(&q->submit_mu);
        if (q->replay && !ctx) ctx = mc__cuda_enter(dev) == MC_OK;
        if (q->replay && ctx) mc__cuda_replay_forget(q, pl);
        bool any = false;
        for (mc__cuda_slot *s = q->slots; s && !any; s = s->next) any = s->pl == pl;
        if (any && !ctx) ctx = mc__cuda_enter(dev) == MC_OK;
        if (any && ctx) slots_trim(dev, q, pl);
        pthread_mutex_unlock(&q->submit_mu);
    }
    if (ctx) mc__cuda_leave(dev);
    pthread_mutex_unlock(&dev->mu);
}
