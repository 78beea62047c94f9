/*
 * Gray-Scott reaction-diffusion, one time step per dispatch (Metal Shading
 * Language), the one source every device runs: `metal-compute run
 * gray-scott` binds alike everywhere. benchmarks/baselines/gray_scott.c and
 * .cu are hand-written twins kept as benchmark baselines only.
 *
 * Two chemicals U and V on a periodic width x height grid, stored as
 * (u, v) float pairs. Step i reads state A and writes state B when i is
 * even, the other way round when odd: the dispatch boundary is the only
 * grid-wide barrier, so one dispatch runs one step (count 1).
 *   u' = u + dt (du lap(u) - u v^2 + feed (1 - u))
 *   v' = v + dt (dv lap(v) + u v^2 - (feed + kill) v)
 * lap is the 3x3 stencil (centre -1, sides 0.2, corners 0.05). Every cell
 * depends only on the previous step: the result is the same bits whatever
 * the threads, chunks or replays.
 *   [0] float *a        width*height (u, v) pairs
 *   [1] float *b        width*height (u, v) pairs
 *   [2] iteration bytes { uint64 first; uint32 count; uint32 pad }
 *   [3] parameter bytes { uint32 width, height; float du, dv, feed, kill, dt; uint32 fault_step }
 * Grid: 2-D, 16x16 threadgroups covering width x height.
 *
 * fault_step (a test hook, `run gray-scott --fault-at-step S`): when it is
 * S + 1, thread (0, 0) of step S writes 64 GiB past its buffer, which the
 * GPU reports as a page fault. 0: never.
 */
#include <metal_stdlib>
using namespace metal;

struct gs_iteration {
    ulong first;
    uint count;
    uint pad;
};

struct gs_params {
    uint width, height;
    float du, dv, feed, kill, dt;
    uint fault_step;
};

kernel void gray_scott_step(device float *a [[buffer(0)]],
                            device float *b [[buffer(1)]],
                            constant gs_iteration &iter [[buffer(2)]],
                            constant gs_params &p [[buffer(3)]],
                            uint2 gid [[thread_position_in_grid]])
{
    if (iter.count == 0) return;
    device const float *src = (iter.first & 1) ? b : a;
    device float *dst = (iter.first & 1) ? a : b;
    const uint w = p.width, h = p.height;
    uint x = gid.x, y = gid.y;
    if (x >= w || y >= h) return;
    if (p.fault_step != 0 && iter.first + 1 == ulong(p.fault_step) && x == 0 && y == 0) {
        /* 2^55 bytes on: mapped nowhere (non-canonical on x86-64, past any
         * GPU's address space; 2^36 landed in ThreadSanitizer's shadow) */
        volatile device float *wild = dst + (ulong(1) << 53);
        *wild = 1.0f;
    }
    uint xl = x ? x - 1 : w - 1, xr = x + 1 < w ? x + 1 : 0;
    uint yu = y ? y - 1 : h - 1, yd = y + 1 < h ? y + 1 : 0;
    device const float *r0 = src + 2u * yu * w;
    device const float *r1 = src + 2u * y * w;
    device const float *r2 = src + 2u * yd * w;
    float u = r1[2u * x], v = r1[2u * x + 1u];
    float lu = 0.05f * (r0[2u * xl] + r0[2u * xr] + r2[2u * xl] + r2[2u * xr]) +
               0.2f * (r0[2u * x] + r2[2u * x] + r1[2u * xl] + r1[2u * xr]) - u;
    float lv = 0.05f * (r0[2u * xl + 1u] + r0[2u * xr + 1u] + r2[2u * xl + 1u] + r2[2u * xr + 1u]) +
               0.2f * (r0[2u * x + 1u] + r2[2u * x + 1u] + r1[2u * xl + 1u] + r1[2u * xr + 1u]) - v;
    float uvv = u * v * v;
    device float *o = dst + 2u * (y * w + x);
    o[0] = u + p.dt * (p.du * lu - uvv + p.feed * (1.0f - u));
    o[1] = v + p.dt * (p.dv * lv + uvv - (p.feed + p.kill) * v);
}
