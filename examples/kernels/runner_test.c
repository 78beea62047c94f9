/*
 * A step kernel for the runner's tests (CPU device, C). runner_test.cu and
 * runner_test.metal are the same kernel with the same slots.
 *
 * rt_step: each iteration mixes every element of x with the iteration
 * number `spin` times (deterministic, order-sensitive: a skipped, repeated
 * or reordered iteration changes the result), and thread 0 adds one to the
 * work counter x[n]. At iteration stop_at (when not 0) it stops the run on
 * the device instead: the control block's grid goes to zero, so dispatches
 * already queued run nothing.
 *   [0] uint32 *x            n elements, then the work counter
 *   [1] iteration bytes      { uint64 first; uint32 count; uint32 pad }
 *   [2] control buffer       { uint32 groups[3]; uint32 stopped; uint64 stop_iteration }
 *   [3] parameter bytes      { uint32 n; uint32 spin; uint64 stop_at }
 * Grid: 1-D, any threadgroup size, at least n threads.
 */
#include <mc/mc_cpu_kernel.h>

typedef struct rt_iteration {
    uint64_t first;
    uint32_t count;
    uint32_t pad;
} rt_iteration;

typedef struct rt_control {
    uint32_t groups[3];
    uint32_t stopped;
    uint64_t stop_iteration;
} rt_control;

typedef struct rt_params {
    uint32_t n;
    uint32_t spin;
    uint64_t stop_at;
} rt_params;

static uint32_t rt_mix(uint32_t v, uint64_t it)
{
    v ^= (uint32_t)it + 0x9e3779b9u;
    v *= 0x85ebca6bu;
    v ^= v >> 13;
    return v;
}

MC_KERNEL(rt_step, 4)
{
    uint32_t *x = MC_ARG(ctx, 0, uint32_t);
    const rt_iteration *iter = MC_ARG(ctx, 1, const rt_iteration);
    rt_control *ctl = MC_ARG(ctx, 2, rt_control);
    const rt_params *p = MC_ARG(ctx, 3, const rt_params);
    MC_FOR_EACH_THREAD(ctx, tid) {
        for (uint32_t c = 0; c < iter->count; c++) {
            uint64_t it = iter->first + c;
            if (p->stop_at && it >= p->stop_at) {
                if (tid == 0) {
                    ctl->groups[0] = 0;
                    ctl->stopped = 1;
                    ctl->stop_iteration = it;
                }
                break;
            }
            if (tid < p->n) {
                uint32_t v = x[tid];
                for (uint32_t s = 0; s < p->spin; s++) v = rt_mix(v, it);
                x[tid] = v;
            }
            if (tid == 0) x[p->n] += 1;
        }
    }
}
