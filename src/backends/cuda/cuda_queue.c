/*
 * DOC: CUDA queues: executing command buffers and reporting their outcome
 *
 * submit() turns a command buffer into work on the queue's non-blocking
 * stream: kernel launches, copies, fills and stream memory operations, in
 * order (a pass barrier is free: one stream runs in order). Then it
 * enqueues a write of the queue's next marker value into mapped host memory
 * and appends a record to the queue's FIFO. Nothing waits in submit()
 * (except the indirect-dispatch fallback, below).
 *
 * Completion: a record is done when the marker the GPU wrote reaches the
 * record's. Whoever polls first completes the records at the head of the
 * FIFO, in order, exactly once: the thread in submission_wait() (no thread
 * hop for a waiter) or the device's completion thread (spins briefly after
 * work arrives, then sleeps with a growing interval; blocks when nothing is
 * in flight). Completion callbacks run with no lock held.
 *
 * Errors (F685-F687):
 *  - refused or failed at submit (bad launch configuration, out of memory,
 *    an injected fault): the passes before the failing one still run; the
 *    record completes after them with the error, the failing pass FAULTED
 *    and the rest PENDING; later submissions on the queue complete with
 *    MC_ERR_PRIOR_ERROR without running;
 *  - a sticky error (a kernel faulted): the context is dead for the process
 *    (on the H100 even a reset or a new context fails the same way), so the
 *    device is lost for good. A dead context never writes the marker again;
 *    every poller checks the stream with cuStreamQuery when the marker has
 *    not moved for a while, which returns the sticky error. Records already
 *    reached complete normally, the one in flight gets MC_ERR_DEVICE_LOST
 *    (pass states from the per-pass markers when MC_CUDA_PASS_MARKERS=1,
 *    else AFFECTED for the passes that may have run), and everything later
 *    MC_ERR_DEVICE_LOST with PENDING passes;
 *  - a device-lost injection loses the device the same way, except that
 *    the GPU is fine: work submitted before it still completes normally.
 *
 * GPU timing (MC_CMDBUF_TIMESTAMPS / PASS_TIMESTAMPS only, so the fast path
 * records no events): CUDA events from a per-queue pool, turned into
 * nanoseconds relative to an anchor event whose host time is known. The
 * anchor moves to the last completed timing event, so a start is measured
 * from the previous timed command buffer rather than from the queue's
 * creation, and durations from the command buffer's own start: cuda's float
 * milliseconds keep their resolution however long the queue lives.
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
 */
#include "backends/cuda/cuda_be.h"

#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NO_PASS UINT32_MAX
/* the queue's pinned page: [0] marker, [8] indirect error, [16] counts */
#define BLOCK_BYTES 4096u
#define BLOCK_ERR MC__CUDA_BLOCK_ERR
#define BLOCK_COUNTS 16u
/* indirect error tag: submission sequence (40 bits) << 24 | pass (24 bits) */
#define TAG_SHIFT 24
#define TAG_SEQ_MASK ((1ull << 40) - 1)
#define TAG_PASS_MASK ((1ull << TAG_SHIFT) - 1)
/* how often a poller asks the driver whether a silent stream failed */
#define CHECK_NS 1000000ull
/* completion thread and waiters: longest sleep between polls */
#define THREAD_MAX_SLEEP_NS 1000000ull
#define WAITER_MAX_SLEEP_NS 100000ull
/* indirect graphs kept per queue before idle ones are dropped */
#define MAX_SLOTS 64u

enum { ARG_NONE = 0, ARG_PTR = 1, ARG_BYTES = 2 };
enum { V_WAIT = 0, V_DONE = 1, V_LOST_PENDING = 2, V_LOST = 3 };

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

/* Zeros for parameters no slot binds (only ever read). */
static uint64_t zero_params[512];

/* ---- built-in PTX --------------------------------------------------------- */

/* Event signal and wait as one-thread kernels, for devices without 64-bit
 * stream memory operations. PTX 6.0 / sm_50: any driver JIT-compiles it. */
const char mc__cuda_builtin_ptx[] =
    ".version 6.0\n"
    ".target sm_50\n"
    ".address_size 64\n"
    ".visible .entry mc_event_signal(.param .u64 p_addr, .param .u64 p_value)\n"
    "{\n"
    "  .reg .b64 %rd<4>;\n"
    "  ld.param.u64 %rd1, [p_addr];\n"
    "  ld.param.u64 %rd2, [p_value];\n"
    "  cvta.to.global.u64 %rd3, %rd1;\n"
    "  membar.sys;\n"
    "  st.volatile.global.u64 [%rd3], %rd2;\n"
    "  membar.sys;\n"
    "  ret;\n"
    "}\n"
    ".visible .entry mc_event_wait(.param .u64 p_addr, .param .u64 p_value)\n"
    "{\n"
    "  .reg .pred %p<2>;\n"
    "  .reg .b64 %rd<6>;\n"
    "  ld.param.u64 %rd3, [p_addr];\n"
    "  ld.param.u64 %rd2, [p_value];\n"
    "  cvta.to.global.u64 %rd1, %rd3;\n"
    "$L_wait:\n"
    "  ld.volatile.global.u64 %rd4, [%rd1];\n"
    "  sub.s64 %rd5, %rd4, %rd2;\n"
    "  setp.lt.s64 %p1, %rd5, 0;\n"
    "  @%p1 bra $L_wait;\n"
    "  membar.sys;\n"
    "  ret;\n"
    "}\n";

/* The PTX the two trampolines share (mc_indirect_trampoline here,
 * mc_list_indirect for lists): the header with the device-side graph
 * functions; the decision on the three counts at register C (the global
 * address of the counts), the node in %rd2: a zero count disables the node,
 * counts over the grid limits (x < 2^31, y and z <= 65535) branch to
 * $L_toolarge, where each records its error its own way, and the rest set
 * the grid and enable the node; and $L_disable. The driver resolves the two
 * functions when the module loads (like printf's vprintf); PTX 8.4 = CUDA
 * 12.4, the release that introduced them. */
#define TRAMP_PTX_HEADER \
    ".version 8.4\n" \
    ".target sm_70\n" \
    ".address_size 64\n" \
    ".extern .func (.param .b32 rv) cudaGraphKernelNodeSetEnabled(.param .b64 a0, .param .b32 a1);\n" \
    ".extern .func (.param .b32 rv) cudaGraphKernelNodeSetGridDim(.param .b64 a0, .param .align 4 .b8 a1[12]);\n"
#define TRAMP_PTX_DECIDE(C) \
    "  ld.volatile.global.u32 %r1, [" C "];\n" \
    "  ld.volatile.global.u32 %r2, [" C "+4];\n" \
    "  ld.volatile.global.u32 %r3, [" C "+8];\n" \
    "  setp.eq.s32 %p1, %r1, 0;\n" \
    "  setp.eq.s32 %p2, %r2, 0;\n" \
    "  or.pred %p3, %p1, %p2;\n" \
    "  setp.eq.s32 %p4, %r3, 0;\n" \
    "  or.pred %p5, %p3, %p4;\n" \
    "  @%p5 bra $L_disable;\n" \
    "  setp.lt.s32 %p6, %r1, 0;\n" \
    "  or.b32 %r4, %r3, %r2;\n" \
    "  and.b32 %r5, %r4, -65536;\n" \
    "  setp.ne.s32 %p7, %r5, 0;\n" \
    "  or.pred %p8, %p6, %p7;\n" \
    "  @%p8 bra $L_toolarge;\n" \
    "  {\n" \
    "  .param .b64 q0;\n" \
    "  st.param.b64 [q0+0], %rd2;\n" \
    "  .param .align 4 .b8 q1[12];\n" \
    "  st.param.b32 [q1+0], %r1;\n" \
    "  st.param.b32 [q1+4], %r2;\n" \
    "  st.param.b32 [q1+8], %r3;\n" \
    "  .param .b32 rv;\n" \
    "  call.uni (rv), cudaGraphKernelNodeSetGridDim, (q0, q1);\n" \
    "  ld.param.b32 %r6, [rv+0];\n" \
    "  }\n" \
    "  {\n" \
    "  .param .b64 q0;\n" \
    "  st.param.b64 [q0+0], %rd2;\n" \
    "  .param .b32 q1;\n" \
    "  st.param.b32 [q1+0], 1;\n" \
    "  .param .b32 rv;\n" \
    "  call.uni (rv), cudaGraphKernelNodeSetEnabled, (q0, q1);\n" \
    "  ld.param.b32 %r7, [rv+0];\n" \
    "  }\n" \
    "  ret;\n" \
    "$L_toolarge:\n"
#define TRAMP_PTX_DISABLE \
    "$L_disable:\n" \
    "  {\n" \
    "  .param .b64 q0;\n" \
    "  st.param.b64 [q0+0], %rd2;\n" \
    "  .param .b32 q1;\n" \
    "  st.param.b32 [q1+0], 0;\n" \
    "  .param .b32 rv;\n" \
    "  call.uni (rv), cudaGraphKernelNodeSetEnabled, (q0, q1);\n" \
    "  ld.param.b32 %r8, [rv+0];\n" \
    "  }\n" \
    "  ret;\n" \
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


/* ---- small helpers --------------------------------------------------------- */

static uint64_t load_done(const mc__cuda_queue *q)
{
    return __atomic_load_n(q->done, __ATOMIC_ACQUIRE);
}

static mc_status refuse(mc__cuda_rec *r, mc_status s, const char *fmt, ...) MC__PRINTF(3, 4);
static mc_status refuse(mc__cuda_rec *r, mc_status s, const char *fmt, ...)
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

uint64_t mc__cuda_indirect_tag(const mc__cuda_rec *r, uint32_t pass)
{
    return ((r->sub_seq & TAG_SEQ_MASK) << TAG_SHIFT) | (pass & TAG_PASS_MASK);
}

static void mark_failed(mc__cuda_queue *q, const mc__cuda_rec *r)
{
    uint64_t zero = 0;
    atomic_compare_exchange_strong(&q->fail_seq, &zero, r->sub_seq);
}

/* Writes value to the queue's marker when the stream gets there. */
static CUresult write_marker(mc__cuda_device *dev, mc__cuda_queue *q, uint64_t value)
{
    CUdeviceptr addr = q->block_dptr;
    if (dev->write64) return dev->write64(q->stream, addr, value, CU_STREAM_WRITE_VALUE_DEFAULT);
    void *args[2] = {&addr, &value};
    return dev->cu->LaunchKernel(dev->k_signal, 1, 1, 1, 1, 1, 1, 0, q->stream, args, NULL);
}

/* ---- timing events ----------------------------------------------------------- */

static CUevent ev_take(mc__cuda_device *dev, mc__cuda_queue *q)
{
    CUevent e = NULL;
    pthread_mutex_lock(&q->mu);
    if (q->nevpool) e = q->evpool[--q->nevpool];
    pthread_mutex_unlock(&q->mu);
    if (!e && dev->cu->EventCreate(&e, CU_EVENT_DEFAULT) != CUDA_SUCCESS) e = NULL;
    return e;
}

/* The context must be current (an event that cannot be pooled is destroyed). */
static void ev_give(mc__cuda_device *dev, mc__cuda_queue *q, CUevent e)
{
    if (!e) return;
    pthread_mutex_lock(&q->mu);
    if (q->nevpool == q->evpool_cap) {
        uint32_t ncap = q->evpool_cap ? q->evpool_cap * 2 : 16;
        CUevent *n = mc__realloc(q->evpool, ncap * sizeof *n);
        if (n) {
            q->evpool = n;
            q->evpool_cap = ncap;
        }
    }
    if (q->nevpool < q->evpool_cap) {
        q->evpool[q->nevpool++] = e;
        e = NULL;
    }
    pthread_mutex_unlock(&q->mu);
    if (e) (void)dev->cu->EventDestroy(e);
}

/* Completion events (MC_CUDA_DONE=event): no timing, pooled per queue. */
static CUevent done_take(mc__cuda_device *dev, mc__cuda_queue *q)
{
    CUevent e = NULL;
    pthread_mutex_lock(&q->mu);
    if (q->ndonepool) e = q->donepool[--q->ndonepool];
    pthread_mutex_unlock(&q->mu);
    if (!e && dev->cu->EventCreate(&e, CU_EVENT_DISABLE_TIMING) != CUDA_SUCCESS) e = NULL;
    return e;
}

/* q->mu held. Never destroys (no context needed); an event that cannot be
 * pooled is left to the context's teardown. */
static void done_give_locked(mc__cuda_queue *q, CUevent e)
{
    if (q->ndonepool == q->donepool_cap) {
        uint32_t ncap = q->donepool_cap ? q->donepool_cap * 2 : 16;
        CUevent *n = mc__realloc(q->donepool, ncap * sizeof *n);
        if (!n) return;
        q->donepool = n;
        q->donepool_cap = ncap;
    }
    q->donepool[q->ndonepool++] = e;
}

/* Records a timing event on the stream into r; false if that failed. */
static bool rec_event(mc__cuda_device *dev, mc__cuda_queue *q, mc__cuda_rec *r)
{
    if (r->nev == r->ev_cap) {
        uint32_t ncap = r->ev_cap ? r->ev_cap * 2 : 4;
        CUevent *n = mc__realloc(r->ev, ncap * sizeof *n);
        if (!n) return false;
        r->ev = n;
        r->ev_cap = ncap;
    }
    CUevent e = ev_take(dev, q);
    if (!e) return false;
    if (dev->cu->EventRecord(e, q->stream) != CUDA_SUCCESS) {
        ev_give(dev, q, e);
        return false;
    }
    r->ev[r->nev++] = e;
    return true;
}

static uint64_t ms_to_ns(float ms)
{
    return ms > 0.0f ? (uint64_t)((double)ms * 1e6) : 0;
}

/* GPU times of a finished record (context current, reaping thread only). */
static void compute_times(mc__cuda_device *dev, mc__cuda_queue *q, mc__cuda_rec *r, mc__submission *sub)
{
    const mc__cuda_api *cu = dev->cu;
    float ms = 0;
    if (r->nev < 2 || !q->anchor || cu->EventElapsedTime(&ms, q->anchor, r->ev[0]) != CUDA_SUCCESS) return;
    /* The anchor is the previous timed command buffer's end: this one starts
     * after it, never on it (touching spans read as nested in a trace). */
    uint64_t start = q->anchor_ns + MC__MAX(ms_to_ns(ms), (uint64_t)1);
    uint64_t prev = start;
    uint64_t t_end = start;
    for (uint32_t i = 0; i < r->nev; i++) {
        uint64_t t = start;
        if (i > 0) {
            if (cu->EventElapsedTime(&ms, r->ev[0], r->ev[i]) != CUDA_SUCCESS) return;
            t = MC__MAX(start + ms_to_ns(ms), prev);
        }
        prev = t;
        if (r->pass_events && sub->pass_time && i < sub->npass) sub->pass_time[2 * i] = t;
        if (r->pass_events && sub->pass_time && i > 0 && i - 1 < sub->npass && i - 1 < r->nran)
            /* one event ends pass i-1 and starts pass i: the end is put 1 ns
             * before, so the spans do not touch (a trace reads touching
             * spans as overlapping) */
            sub->pass_time[2 * (i - 1) + 1] = MC__MAX(t - 1, sub->pass_time[2 * (i - 1)]);
        t_end = t;
    }
    /* a pass that started but did not finish has no end */
    if (r->pass_events && sub->pass_time)
        for (uint32_t p = r->nran; p < sub->npass; p++) sub->pass_time[2 * p] = sub->pass_time[2 * p + 1] = 0;
    sub->gpu_start_ns = start;
    sub->gpu_end_ns = t_end;
    /* The newest completed event becomes the anchor. */
    CUevent old = q->anchor;
    q->anchor = r->ev[r->nev - 1];
    q->anchor_ns = t_end;
    r->ev[r->nev - 1] = old;
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

/* The kernelParams array: for parameter i, a pointer to its value. Bound
 * values shorter than the parameter, and unbound parameters, are padded
 * with zeros in the staging area so the driver never reads past them. */
static mc_status build_params(mc__cuda_queue *q, mc__cuda_rec *r, const mc__cuda_pipeline *pl, void ***out)
{
    uint32_t nb = q->bound ? 32u - (uint32_t)__builtin_clz(q->bound) : 0;
    uint32_t n = pl->nparams >= 0 ? MC__MAX((uint32_t)pl->nparams, nb) : nb;
    if (n > q->params_cap) {
        uint32_t ncap = MC__MAX(n, 2 * q->params_cap);
        void **np = mc__realloc(q->params, ncap * sizeof *np);
        if (!np) return refuse(r, MC_ERR_NO_MEMORY, "out of host memory building kernel parameters");
        q->params = np;
        q->params_cap = ncap;
    }
    size_t used = 0;
    for (uint32_t i = 0; i < n; i++) {
        size_t need = (pl->param_size && (int32_t)i < pl->nparams) ? pl->param_size[i] : 0;
        const void *src = NULL;
        size_t have = 0;
        if (i < MC__CUDA_MAX_SLOTS && ((q->bound >> i) & 1u)) {
            if (q->arg_kind[i] == ARG_PTR) {
                src = &q->arg_ptr[i];
                have = sizeof(CUdeviceptr);
            } else {
                src = q->arg_bytes[i];
                have = q->arg_len[i];
            }
        }
        if (src && have >= need) {
            q->params[i] = (void *)src; /* only read by the driver */
            continue;
        }
        if (!src && need <= sizeof zero_params) {
            q->params[i] = zero_params;
            continue;
        }
        size_t at = (used + 15u) & ~(size_t)15u;
        if (at + need > MC__CUDA_MAX_PARAM_BYTES)
            return refuse(r, MC_ERR_INVALID_RESOURCE, "kernel parameters exceed %u bytes", MC__CUDA_MAX_PARAM_BYTES);
        memset(q->staging + at, 0, need);
        if (src) memcpy(q->staging + at, src, have);
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
    if (!pl) return refuse(r, MC_ERR_INVALID_RESOURCE, "dispatch in pass '%s' without a pipeline", ps->label);
    uint64_t threads = (uint64_t)t.x * t.y * t.z;
    if (threads == 0 || threads > pl->max_threads)
        return refuse(r, MC_ERR_INVALID_RESOURCE,
                      "pass '%s': threadgroup of %llu threads for kernel '%s' (limit %u)", ps->label,
                      (unsigned long long)threads, pl->name, pl->max_threads);
    if (smem + pl->static_smem > (size_t)dev->smem_optin)
        return refuse(r, MC_ERR_INVALID_RESOURCE,
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
        snprintf(what, sizeof what, "launching '%s' with (%u,%u,%u) x (%u,%u,%u) threads", pl->name, g.x, g.y, g.z,
                 t.x, t.y, t.z);
        return enc_fail(dev, r, res, what, ps);
    }
    return MC_OK;
}

/* ---- indirect dispatch ------------------------------------------------------ */

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
                mc__log(MC_LOG_INFO, "cuda.indirect_trampoline", "cuda:%d: trampoline did not load: %s",
                        dev->index, mc__cuda_text(res, t, sizeof t));
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
    uint64_t done = load_done(q);
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
    CUdeviceptr counts = q->block_dptr + BLOCK_COUNTS, err = q->block_dptr + BLOCK_ERR;
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
        if (!n) return refuse(r, MC_ERR_NO_MEMORY, "out of host memory");
        q->used = n;
        q->used_cap = ncap;
    }
    s->busy_until = UINT64_MAX; /* until this submission's marker is known */
    q->used[q->nused++] = s;
    return MC_OK;
}

/* The GPU-side path: returns MC_ERR_UNSUPPORTED (nothing enqueued) when the
 * device cannot do it, so the caller falls back. */
mc_status mc__cuda_indirect_graph(mc__cuda_device *dev, mc__cuda_queue *q, mc__cuda_rec *r,
                                  const mc__cuda_pipeline *pl, CUdeviceptr counts, mc_size3 t, unsigned smem,
                                  void **params, uint32_t pass_index, const mc__pass *ps)
{
#if CUDA_VERSION >= 12040
    const mc__cuda_api *cu = dev->cu;
    uint64_t done = load_done(q);
    mc__cuda_slot *s = q->slots;
    for (; s; s = s->next)
        if (s->pl == pl && s->bx == t.x && s->by == t.y && s->bz == t.z && s->smem == smem && s->busy_until <= done)
            break;
    if (!s) {
        CUresult res = CUDA_SUCCESS;
        mc_status st = slot_create(dev, q, pl, t, smem, params, &s, &res);
        if (st == MC_ERR_UNSUPPORTED) return st;
        if (st == MC_ERR_NO_MEMORY) return refuse(r, st, "out of host memory");
        if (st != MC_OK) return enc_fail(dev, r, res, "building the indirect-dispatch graph", ps);
    }
    mc_status st = note_used(q, r, s);
    if (st != MC_OK) return st;
    CUdeviceptr err = q->block_dptr + BLOCK_ERR;
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
        return enc_fail(dev, r, res, what, ps);
    }
    r->indirect = true;
    return MC_OK;
#else
    (void)dev, (void)q, (void)r, (void)pl, (void)counts, (void)t, (void)smem, (void)params, (void)pass_index,
        (void)ps;
    return MC_ERR_UNSUPPORTED;
#endif
}

mc_status mc__cuda_read_sync(mc__cuda_device *dev, mc__cuda_queue *q, mc__cuda_rec *r, const void *host,
                             CUdeviceptr dptr, uint32_t *out, uint32_t nwords, const mc__pass *ps)
{
    const mc__cuda_api *cu = dev->cu;
    CUresult res;
    if (nwords > 4) return refuse(r, MC_ERR_INTERNAL, "pass '%s': reading %u words on the CPU", ps->label, nwords);
    if (host) {
        res = cu->StreamSynchronize(q->stream);
        if (res != CUDA_SUCCESS) return enc_fail(dev, r, res, "waiting for values the device writes", ps);
        memcpy(out, host, nwords * sizeof *out);
    } else {
        void *stage = (char *)q->block + BLOCK_COUNTS;
        res = cu->MemcpyDtoHAsync(stage, dptr, nwords * sizeof *out, q->stream);
        if (res == CUDA_SUCCESS) res = cu->StreamSynchronize(q->stream);
        if (res != CUDA_SUCCESS) return enc_fail(dev, r, res, "reading values the device writes", ps);
        memcpy(out, stage, nwords * sizeof *out);
    }
    return MC_OK;
}

mc_status mc__cuda_check_counts(mc__cuda_rec *r, const uint32_t n[3], const mc__pass *ps)
{
    if (n[0] <= MC_INDIRECT_MAX_GROUPS_X && n[1] <= MC_INDIRECT_MAX_GROUPS_YZ && n[2] <= MC_INDIRECT_MAX_GROUPS_YZ)
        return MC_OK;
    bool validation = r->sub && (r->sub->flags & MC__SUBMIT_VALIDATION);
    return refuse(r, validation ? MC_ERR_VALIDATION : MC_ERR_INVALID_RESOURCE,
                  "indirect dispatch in pass '%s': threadgroup counts (%u,%u,%u) exceed the limits (x <= %u, y and z "
                  "<= %u); it did not run",
                  ps->label, n[0], n[1], n[2], MC_INDIRECT_MAX_GROUPS_X, MC_INDIRECT_MAX_GROUPS_YZ);
}

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
        return refuse(r, MC_ERR_INTERNAL, "pass %u '%s' lists commands outside the command buffer", p, ps->label);
    args_reset(q); /* bindings last for one pass, as with a Metal encoder */
    mc__cuda_pipeline *pl = NULL;
    for (uint32_t i = ps->first; i < ps->first + ps->count; i++) {
        const mc__cmd *c = &sub->cmds[i];
        mc_status s = MC_OK;
        CUresult res = CUDA_SUCCESS;
        switch (c->op) {
        case MC__OP_SET_PIPELINE:
            pl = c->u.pipeline;
            break;
        case MC__OP_SET_BUFFER:
        case MC__OP_SET_BYTES:
            if (c->index >= MC__CUDA_MAX_SLOTS)
                return refuse(r, MC_ERR_INVALID_RESOURCE, "pass '%s': argument slot %u is over the limit of %u",
                              ps->label, c->index, MC__CUDA_MAX_SLOTS - 1);
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
                return refuse(r, MC_ERR_INVALID_RESOURCE, "pass '%s': threadgroup memory slot %u is over the limit",
                              ps->label, c->index);
            q->tg[c->index] = c->u.tgmem.len;
            break;
        case MC__OP_DISPATCH:
            s = launch(dev, q, r, pl, c->u.dispatch.groups, c->u.dispatch.threads, ps);
            break;
        case MC__OP_DISPATCH_INDIRECT:
            s = launch_indirect(dev, q, r, pl, c, p, ps);
            break;
        case MC__OP_EXECUTE_LIST:
            s = mc__cuda_list_execute(dev, q, r, c, p, ps);
            break;
        case MC__OP_BARRIER:
            break; /* the stream runs in order */
        case MC__OP_COPY: {
            const mc__cuda_buffer *src = c->u.copy.src, *dst = c->u.copy.dst;
            if (c->u.copy.len)
                res = cu->MemcpyAsync(dst->dptr + c->u.copy.dst_offset, src->dptr + c->u.copy.src_offset,
                                      c->u.copy.len, q->stream);
            if (res != CUDA_SUCCESS) s = enc_fail(dev, r, res, "copy", ps);
            break;
        }
        case MC__OP_FILL: {
            const mc__cuda_buffer *b = c->u.fill.buffer;
            if (c->u.fill.len) res = cu->MemsetD8Async(b->dptr + c->u.fill.offset, c->u.fill.value, c->u.fill.len,
                                                       q->stream);
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
                return refuse(r, MC_ERR_UNSUPPORTED, "pass '%s': the device cannot wait for events", ps->label);
            }
            if (res != CUDA_SUCCESS)
                s = enc_fail(dev, r, res, c->op == MC__OP_SIGNAL ? "event signal" : "event wait", ps);
            break;
        }
        default:
            return refuse(r, MC_ERR_INTERNAL, "pass '%s': unknown command %u", ps->label, c->op);
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
        mark_failed(q, r);
        return;
    }
    uint32_t np = sub->npass, nrun = np, fault = NO_PASS;
    if (sub->inject != MC_OK) {
        fault = np ? MC__MIN(sub->inject_pass, np - 1) : NO_PASS;
        nrun = np ? fault : 0;
    }
    bool timing = (sub->flags & (MC_CMDBUF_TIMESTAMPS | MC_CMDBUF_PASS_TIMESTAMPS)) && q->timing && nrun > 0;
    r->pass_events = timing && (sub->flags & MC_CMDBUF_PASS_TIMESTAMPS) && sub->pass_time;
    if (timing && !r->pass_events && !rec_event(dev, q, r)) timing = false;
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
        if (r->pass_events && timing && !rec_event(dev, q, r)) timing = r->pass_events = false;
        q->cur_pass = p;
        s = encode_pass(dev, q, r, sub, p);
        if (s != MC_OK) {
            /* a sticky error here is an earlier command's fault, not p's */
            fault = s == MC_ERR_DEVICE_LOST ? NO_PASS : p;
            break;
        }
        r->nran = p + 1;
        if (dev->pass_markers && p + 1 < nrun) {
            uint64_t m = atomic_load(&q->marker) + 1;
            CUresult res = write_marker(dev, q, m);
            if (res != CUDA_SUCCESS) {
                s = enc_fail(dev, r, res, "writing a pass marker", &sub->passes[p]);
                fault = NO_PASS; /* pass p ran; the rest did not */
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
            fault = NO_PASS;
            r->nran = 0;
            goto again;
        }
        s = rs;
    }
    if (timing && !rec_event(dev, q, r)) timing = false;
    if (!timing) {
        for (uint32_t i = 0; i < r->nev; i++) ev_give(dev, q, r->ev[i]);
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
        r->done_ev = dev->done_events ? done_take(dev, q) : NULL;
        res = r->done_ev ? cu->EventRecord(r->done_ev, q->stream) : CUDA_ERROR_NOT_SUPPORTED;
        if (res != CUDA_SUCCESS && r->done_ev) {
            pthread_mutex_lock(&q->mu);
            done_give_locked(q, r->done_ev);
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
            uint64_t cur = load_done(q);
            while (cur < m && !__atomic_compare_exchange_n(q->done, &cur, m, false, __ATOMIC_ACQ_REL,
                                                           __ATOMIC_ACQUIRE)) {
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
        mark_failed(q, r);
    } else if (sub->inject != MC_OK) {
        r->preset = sub->inject;
        r->fault_pass = fault;
        if (fault != NO_PASS)
            snprintf(r->msg, sizeof r->msg, "injected fault: %s in pass %u '%s'", mc_status_name(sub->inject), fault,
                     sub->passes[fault].label);
        else
            snprintf(r->msg, sizeof r->msg, "injected fault: %s", mc_status_name(sub->inject));
        mark_failed(q, r);
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
    r->fault_pass = NO_PASS;
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
        for (uint32_t i = 0; i < q->nused; i++) q->used[i]->busy_until = atomic_load(&q->marker);
        q->nused = 0;
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

/* ---- completion ----------------------------------------------------------- */

static int verdict(mc__cuda_device *dev, const mc__cuda_queue *q, const mc__cuda_rec *r)
{
    int lost = atomic_load(&dev->lost);
    if (load_done(q) >= r->last_marker) {
        if (lost != MC__CUDA_ALIVE && r->ordinal > atomic_load(&dev->lost_ordinal)) return V_LOST_PENDING;
        return V_DONE;
    }
    return lost == MC__CUDA_LOST_DEAD ? V_LOST : V_WAIT;
}

static void fill_states(mc__submission *sub, uint32_t done_before, uint32_t fault, mc_pass_state rest)
{
    if (!sub->pass_state) return;
    for (uint32_t i = 0; i < sub->npass; i++)
        sub->pass_state[i] = i < done_before ? MC_PASS_COMPLETED : i == fault ? MC_PASS_FAULTED : rest;
}

/* Fills the outputs of r's submission and completes it (no lock held). */
static void finish(mc__cuda_device *dev, mc__cuda_queue *q, mc__cuda_rec *r, int v)
{
    mc__submission *sub = r->sub;
    mc_status st = MC_OK;
    const char *msg = "";
    char buf[256];
    if (v == V_DONE) {
        uint64_t failed = atomic_load(&q->fail_seq);
        uint64_t e = r->indirect ? __atomic_load_n((uint64_t *)((char *)q->block + BLOCK_ERR), __ATOMIC_ACQUIRE) : 0;
        if (r->preset != MC_OK) {
            st = r->preset;
            msg = r->msg;
            fill_states(sub, r->nran, r->fault_pass, MC_PASS_PENDING);
        } else if (failed && failed < r->sub_seq) {
            /* an earlier submission failed on the GPU after this one was queued */
            st = MC_ERR_PRIOR_ERROR;
            snprintf(buf, sizeof buf,
                     "command buffer #%llu on this queue failed while this one was queued; its passes ran but may "
                     "have used bad data",
                     (unsigned long long)failed);
            msg = buf;
            fill_states(sub, 0, NO_PASS, MC_PASS_AFFECTED);
        } else if (e && (e >> TAG_SHIFT) == (r->sub_seq & TAG_SEQ_MASK)) {
            uint32_t p = (uint32_t)(e & TAG_PASS_MASK);
            st = (sub->flags & MC__SUBMIT_VALIDATION) ? MC_ERR_VALIDATION : MC_ERR_INVALID_RESOURCE;
            snprintf(buf, sizeof buf,
                     "indirect dispatch in pass %u '%s': threadgroup counts exceed the limits (x <= %u, y and z <= "
                     "%u); it did not run",
                     p, p < sub->npass ? sub->passes[p].label : "?", MC_INDIRECT_MAX_GROUPS_X,
                     MC_INDIRECT_MAX_GROUPS_YZ);
            msg = buf;
            fill_states(sub, p, p, MC_PASS_AFFECTED);
            __atomic_store_n((uint64_t *)((char *)q->block + BLOCK_ERR), 0, __ATOMIC_RELEASE);
            mark_failed(q, r);
        } else {
            fill_states(sub, sub->npass, NO_PASS, MC_PASS_COMPLETED);
        }
        if (r->nev >= 2) compute_times(dev, q, r, sub);
    } else if (v == V_LOST_PENDING) {
        st = MC_ERR_DEVICE_LOST;
        msg = dev->lost_msg;
        fill_states(sub, 0, NO_PASS, MC_PASS_PENDING);
    } else { /* V_LOST: the context died before this one finished */
        st = MC_ERR_DEVICE_LOST;
        msg = dev->lost_msg;
        if (r->ran && !q->lost_head_seen) {
            /* In flight when the context died: passes behind a reached
             * marker are done; with markers the next one faulted (later
             * ones never started: the stream runs in order), without them
             * any pass that may have run is AFFECTED. */
            q->lost_head_seen = true;
            uint64_t done = load_done(q);
            uint32_t k = 0;
            while (k < r->nmarkers && done >= r->first_marker + k) k++;
            bool exact = r->nmarkers > 0 || r->nran == 1;
            uint32_t limit = MC__MAX(r->nran, r->fault_pass == NO_PASS ? 0 : r->fault_pass + 1);
            for (uint32_t i = 0; i < sub->npass && sub->pass_state; i++) {
                mc_pass_state s;
                if (i < k) s = MC_PASS_COMPLETED;
                else if (i >= limit) s = MC_PASS_PENDING;
                else if (exact) s = i == k ? MC_PASS_FAULTED : MC_PASS_PENDING;
                else s = MC_PASS_AFFECTED;
                sub->pass_state[i] = s;
            }
        } else {
            fill_states(sub, 0, NO_PASS, MC_PASS_PENDING);
        }
    }
    sub->status = st;
    snprintf(sub->message, sizeof sub->message, "%s", msg);
    for (uint32_t i = 0; i < r->nev; i++) ev_give(dev, q, r->ev[i]);
    r->nev = 0;
    if (r->ran && !r->scheduled && sub->scheduled) sub->scheduled(sub);
    r->scheduled = true;
    sub->complete(sub);
}

/* Completes the finished records at the head of q, in order; one thread at
 * a time (the others return at once). True if any completed. */
static bool reap(mc__cuda_device *dev, mc__cuda_queue *q)
{
    bool progress = false, entered = false;
    pthread_mutex_lock(&q->mu);
    if (q->reaping) {
        pthread_mutex_unlock(&q->mu);
        return false;
    }
    q->reaping = true;
    for (;;) {
        mc__cuda_rec *r = q->head;
        if (!r) break;
        pthread_mutex_unlock(&q->mu);
        int v = verdict(dev, q, r);
        if (v == V_WAIT) {
            /* at the head of the queue: its work is what the GPU runs now */
            if (r->ran && !r->scheduled) {
                r->scheduled = true;
                if (r->sub->scheduled) r->sub->scheduled(r->sub);
            }
            pthread_mutex_lock(&q->mu);
            break;
        }
        if (!entered && r->nev) entered = mc__cuda_enter(dev) == MC_OK;
        if (!entered && r->nev) {
            /* no context: the times are lost, the events stay with the record */
            r->nev = 0;
        }
        uint64_t seq = r->sub_seq;
        finish(dev, q, r, v);
        atomic_store(&q->completed_seq, seq);
        pthread_mutex_lock(&q->mu);
        q->head = r->next;
        if (!q->head) q->tail = NULL;
        atomic_store(&q->head_marker, q->head ? q->head->last_marker : UINT64_MAX);
        r->sub = NULL;
        if (r->done_ev) done_give_locked(q, r->done_ev);
        r->done_ev = NULL;
        r->next = q->free_recs;
        q->free_recs = r;
        atomic_fetch_sub(&q->nrec, 1);
        atomic_fetch_sub(&dev->inflight, 1);
        progress = true;
    }
    q->reaping = false;
    pthread_mutex_unlock(&q->mu);
    if (entered) mc__cuda_leave(dev);
    return progress;
}

/* The marker has not moved for a while: ask the driver about the stream.
 * True if that changed something (the device is lost, or the marker was
 * moved by hand). */
static bool stall_check(mc__cuda_device *dev, mc__cuda_queue *q)
{
    uint64_t issued = atomic_load(&q->marker);
    if (mc__cuda_enter(dev) != MC_OK) return false;
    CUresult res = dev->cu->StreamQuery(q->stream);
    mc__cuda_leave(dev);
    if (res == CUDA_ERROR_NOT_READY) return false;
    if (res == CUDA_SUCCESS) {
        /* Everything enqueued before the query ran, markers included. */
        uint64_t cur = load_done(q);
        if (cur >= issued) return false;
        if (!dev->done_events) /* with completion events nothing writes the marker: not a loss */
            mc__log(MC_LOG_WARN, "cuda.marker_lost", "cuda:%d: queue idle at marker %llu of %llu; moving it", dev->index,
                (unsigned long long)cur, (unsigned long long)issued);
        while (cur < issued &&
               !__atomic_compare_exchange_n(q->done, &cur, issued, false, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
        }
        return true;
    }
    if (mc__cuda_is_sticky(res)) {
        mc__cuda_set_dead(dev, res, "a command on the device failed");
        return true;
    }
    return false;
}

/* Reaps q when its head is finished (checked without locks, so spinning
 * pollers do not contend with submitters) and, when it is stuck, checks
 * now and then whether the context died. True if anything completed. */
/* MC_CUDA_DONE=event: the head record's completion event has fired; moves
 * the marker to the record's, as the GPU would have. True if it moved (or
 * the device was found dead). */
static bool done_by_event(mc__cuda_device *dev, mc__cuda_queue *q)
{
    if (mc__cuda_enter(dev) != MC_OK) return false;
    pthread_mutex_lock(&q->mu); /* the head record is not recycled meanwhile */
    mc__cuda_rec *r = q->head;
    uint64_t m = r ? r->last_marker : 0;
    CUresult res = r && r->done_ev ? dev->cu->EventQuery(r->done_ev) : CUDA_ERROR_NOT_READY;
    pthread_mutex_unlock(&q->mu);
    mc__cuda_leave(dev);
    if (res == CUDA_SUCCESS) {
        uint64_t cur = load_done(q);
        while (cur < m &&
               !__atomic_compare_exchange_n(q->done, &cur, m, false, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
        }
        return true;
    }
    if (res != CUDA_ERROR_NOT_READY && mc__cuda_is_sticky(res)) {
        mc__cuda_set_dead(dev, res, "a command on the device failed");
        return true;
    }
    return false;
}

static bool queue_poll(mc__cuda_device *dev, mc__cuda_queue *q)
{
    if (atomic_load(&q->nrec) == 0) return false;
    if (load_done(q) >= atomic_load(&q->head_marker) || atomic_load(&dev->lost) != MC__CUDA_ALIVE)
        return reap(dev, q);
    if (dev->done_events && done_by_event(dev, q)) return reap(dev, q);
    uint64_t now = mc__now_ns(), last = atomic_load(&q->last_check_ns);
    if (now - last >= CHECK_NS && atomic_compare_exchange_strong(&q->last_check_ns, &last, now) &&
        stall_check(dev, q))
        return reap(dev, q);
    return false;
}

/* ---- queues ---------------------------------------------------------------- */

static void queue_free(mc__cuda_queue *q)
{
    mc__cuda_device *dev = q->dev;
    const mc__cuda_api *cu = dev->cu;
    bool ctx = mc__cuda_enter(dev) == MC_OK;
    if (ctx) mc__cuda_replay_free(q);
    while (q->slots) {
        mc__cuda_slot *s = q->slots;
        q->slots = s->next;
        if (ctx) slot_destroy(cu, s);
        else free(s);
    }
    if (ctx) {
        for (uint32_t i = 0; i < q->nevpool; i++) (void)cu->EventDestroy(q->evpool[i]);
        for (uint32_t i = 0; i < q->ndonepool; i++) (void)cu->EventDestroy(q->donepool[i]);
        if (q->anchor) (void)cu->EventDestroy(q->anchor);
        if (q->stream) (void)cu->StreamDestroy(q->stream);
        if (q->block) (void)cu->MemFreeHost(q->block);
        mc__cuda_leave(dev);
    }
    while (q->free_recs) {
        mc__cuda_rec *r = q->free_recs;
        q->free_recs = r->next;
        free(r->ev);
        free(r);
    }
    free(q->evpool);
    free(q->donepool);
    free(q->params);
    free(q->staging);
    free(q->used);
    pthread_mutex_destroy(&q->submit_mu);
    pthread_mutex_destroy(&q->mu);
    free(q);
}

mc_status mc__cuda_queue_create(void *devp, const char *label, void **out)
{
    mc__cuda_device *dev = devp;
    const mc__cuda_api *cu = dev->cu;
    (void)label;
    *out = NULL;
    mc__cuda_queue *q = mc__calloc(1, sizeof *q);
    if (!q) return mc__fail(MC_ERR_NO_MEMORY, "cuda: out of memory");
    q->dev = dev;
    pthread_mutex_init(&q->submit_mu, NULL);
    pthread_mutex_init(&q->mu, NULL);
    q->staging = mc__malloc(MC__CUDA_MAX_PARAM_BYTES + 64);
    if (!q->staging) {
        queue_free(q);
        return mc__fail(MC_ERR_NO_MEMORY, "cuda: out of memory");
    }
    mc_status s = mc__cuda_enter(dev);
    if (s != MC_OK) {
        queue_free(q);
        return s;
    }
    CUresult r = cu->StreamCreate(&q->stream, CU_STREAM_NON_BLOCKING);
    if (r != CUDA_SUCCESS) {
        q->stream = NULL;
        s = mc__cuda_fail(dev, r, "cuStreamCreate");
    }
    if (s == MC_OK) {
        r = cu->MemHostAlloc(&q->block, BLOCK_BYTES, CU_MEMHOSTALLOC_DEVICEMAP | CU_MEMHOSTALLOC_PORTABLE);
        if (r != CUDA_SUCCESS) {
            q->block = NULL;
            s = mc__cuda_fail(dev, r, "cuMemHostAlloc (queue marker)");
        } else if ((r = cu->MemHostGetDevicePointer(&q->block_dptr, q->block, 0)) != CUDA_SUCCESS) {
            s = mc__cuda_fail(dev, r, "cuMemHostGetDevicePointer (queue marker)");
        }
    }
    if (s == MC_OK) {
        memset(q->block, 0, BLOCK_BYTES);
        q->done = (volatile uint64_t *)q->block;
        /* The timing anchor: an event whose host time is known. */
        if (cu->EventCreate(&q->anchor, CU_EVENT_DEFAULT) != CUDA_SUCCESS) q->anchor = NULL;
        if (q->anchor && cu->EventRecord(q->anchor, q->stream) != CUDA_SUCCESS) {
            (void)cu->EventDestroy(q->anchor);
            q->anchor = NULL;
        }
        q->anchor_ns = mc__now_ns();
        q->timing = q->anchor != NULL;
    }
    mc__cuda_leave(dev);
    if (s != MC_OK) {
        queue_free(q);
        return s;
    }
    atomic_store(&q->head_marker, UINT64_MAX);
    pthread_mutex_lock(&dev->mu);
    q->next = dev->queues;
    dev->queues = q;
    atomic_fetch_add(&dev->queues_gen, 1);
    pthread_mutex_unlock(&dev->mu);
    *out = q;
    return MC_OK;
}

/* Under dev->mu. True if the caller must free q (after unlocking). */
static bool unpin_locked(mc__cuda_queue *q)
{
    return --q->pins == 0 && q->destroyed;
}

void mc__cuda_queue_destroy(void *devp, void *qp)
{
    mc__cuda_device *dev = devp;
    mc__cuda_queue *q = qp;
    if (!q) return;
    pthread_mutex_lock(&dev->mu);
    for (mc__cuda_queue **pp = &dev->queues; *pp; pp = &(*pp)->next) {
        if (*pp == q) {
            *pp = q->next;
            break;
        }
    }
    q->destroyed = true;
    atomic_fetch_add(&dev->queues_gen, 1); /* the completion thread lets go of it */
    bool now = q->pins == 0;               /* else the last thread polling it frees it */
    pthread_mutex_unlock(&dev->mu);
    if (now) queue_free(q);
}

mc_status mc__cuda_submission_wait(void *devp, void *qp, mc__submission *sub, uint64_t timeout_ns)
{
    mc__cuda_device *dev = devp;
    mc__cuda_queue *q = qp;
    uint64_t target = 0;
    pthread_mutex_lock(&q->mu);
    for (mc__cuda_rec *r = q->head; r; r = r->next) {
        if (r->sub == sub) {
            target = r->sub_seq;
            break;
        }
    }
    pthread_mutex_unlock(&q->mu);
    if (!target) return MC_OK; /* completed already */

    pthread_mutex_lock(&dev->mu);
    q->pins++;
    pthread_mutex_unlock(&dev->mu);
    uint64_t deadline = mc__deadline(timeout_ns);
    mc__cuda_backoff b;
    mc__cuda_backoff_init(&b);
    b.yield_ns = dev->yield_ns;
    mc_status s = MC_OK;
    atomic_fetch_add(&q->waiters, 1);
    for (;;) {
        if (atomic_load(&q->completed_seq) >= target) break;
        queue_poll(dev, q);
        if (atomic_load(&q->completed_seq) >= target) break;
        if (mc__now_ns() >= deadline) {
            s = MC_ERR_WAIT_TIMEOUT;
            break;
        }
        mc__cuda_backoff_step(&b, dev->spin_ns, WAITER_MAX_SLEEP_NS, deadline);
    }
    atomic_fetch_sub(&q->waiters, 1);
    pthread_mutex_lock(&dev->mu);
    bool free_it = unpin_locked(q);
    pthread_mutex_unlock(&dev->mu);
    if (free_it) queue_free(q);
    return s;
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

/* ---- the completion thread -------------------------------------------------- */

void *mc__cuda_completion_main(void *arg)
{
    mc__cuda_device *dev = arg;
    (void)dev->cu->CtxSetCurrent(dev->ctx); /* our own thread */
    mc__cuda_backoff b;
    pthread_mutex_lock(&dev->mu);
    while (!atomic_load(&dev->stop)) {
        if (atomic_load(&dev->inflight) == 0) {
            /* Spin a little before blocking, so back-to-back submissions do
             * not pay for a wake-up. */
            pthread_mutex_unlock(&dev->mu);
            uint64_t t0 = mc__now_ns();
            while (atomic_load(&dev->inflight) == 0 && !atomic_load(&dev->stop) && mc__now_ns() - t0 < dev->spin_ns)
                for (int i = 0; i < 32; i++) mc__cpu_relax();
            pthread_mutex_lock(&dev->mu);
            while (!atomic_load(&dev->stop) && atomic_load(&dev->inflight) == 0)
                pthread_cond_wait(&dev->cv, &dev->mu);
            continue;
        }
        /* Pin every queue, then poll without dev->mu until the device is
         * idle or the set of queues changes. */
        size_t n = 0;
        for (mc__cuda_queue *q = dev->queues; q; q = q->next) n++;
        if (n > dev->poll_cap) {
            mc__cuda_queue **np = mc__realloc(dev->poll, n * sizeof *np);
            if (np) {
                dev->poll = np;
                dev->poll_cap = n;
            }
        }
        n = 0;
        for (mc__cuda_queue *q = dev->queues; q && n < dev->poll_cap; q = q->next) {
            q->pins++;
            dev->poll[n++] = q;
        }
        uint64_t gen = atomic_load(&dev->queues_gen);
        pthread_mutex_unlock(&dev->mu);
        mc__cuda_backoff_init(&b);
        while (atomic_load(&dev->inflight) != 0 && atomic_load(&dev->queues_gen) == gen && !atomic_load(&dev->stop)) {
            bool progress = false;
            for (size_t i = 0; i < n; i++)
                if (!dev->defer_to_waiters || atomic_load(&dev->poll[i]->waiters) == 0)
                    progress |= queue_poll(dev, dev->poll[i]);
            if (progress) mc__cuda_backoff_init(&b);
            else mc__cuda_backoff_step(&b, dev->spin_ns, THREAD_MAX_SLEEP_NS, UINT64_MAX);
        }
        pthread_mutex_lock(&dev->mu);
        for (size_t i = 0; i < n; i++) {
            if (unpin_locked(dev->poll[i])) {
                pthread_mutex_unlock(&dev->mu);
                queue_free(dev->poll[i]);
                pthread_mutex_lock(&dev->mu);
            }
        }
    }
    pthread_mutex_unlock(&dev->mu);
    return NULL;
}
