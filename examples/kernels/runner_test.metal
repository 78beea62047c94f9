/*
 * A step kernel for the runner's tests (Metal Shading Language, the one
 * source every device runs).
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
#include <metal_stdlib>
using namespace metal;

struct rt_iteration {
    ulong first;
    uint count;
    uint pad;
};

struct rt_control {
    uint groups[3];
    uint stopped;
    ulong stop_iteration;
};

struct rt_params {
    uint n;
    uint spin;
    ulong stop_at;
};

static uint rt_mix(uint v, ulong it)
{
    v ^= uint(it) + 0x9e3779b9u;
    v *= 0x85ebca6bu;
    v ^= v >> 13;
    return v;
}

kernel void rt_step(device uint *x [[buffer(0)]],
                    constant rt_iteration &iter [[buffer(1)]],
                    device rt_control *ctl [[buffer(2)]],
                    constant rt_params &p [[buffer(3)]],
                    uint tid [[thread_position_in_grid]])
{
    for (uint c = 0; c < iter.count; c++) {
        ulong it = iter.first + c;
        if (p.stop_at != 0 && it >= p.stop_at) {
            if (tid == 0) {
                ctl->groups[0] = 0;
                ctl->stopped = 1;
                ctl->stop_iteration = it;
            }
            break;
        }
        if (tid < p.n) {
            uint v = x[tid];
            for (uint s = 0; s < p.spin; s++) v = rt_mix(v, it);
            x[tid] = v;
        }
        if (tid == 0) x[p.n] += 1u;
    }
}
