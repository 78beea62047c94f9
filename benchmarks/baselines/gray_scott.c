/*
 * A benchmark baseline (README.md here): Gray-Scott reaction-diffusion, one
 * time step per dispatch, written by hand in C for the CPU device; the same
 * kernel and slots as examples/kernels/gray_scott.metal, which the project
 * runs.
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
 * fault_step is a test hook (`run gray-scott --fault-at-step S`): when it
 * is S + 1, step S writes far outside its buffers, a real fault. Here that
 * is an address no process can map, so the process dies of SIGSEGV; an
 * isolated run loses a worker and goes on (docs/ISOLATION.md). 0: never.
 */
#include <mc/mc_cpu_kernel.h>

typedef struct gs_iteration {
    uint64_t first;
    uint32_t count;
    uint32_t pad;
} gs_iteration;

typedef struct gs_params {
    uint32_t width, height;
    float du, dv, feed, kill, dt;
    uint32_t fault_step;
} gs_params;

MC_KERNEL(gray_scott_step, 4)
{
    float *a = MC_ARG(ctx, 0, float);
    float *b = MC_ARG(ctx, 1, float);
    const gs_iteration *iter = MC_ARG(ctx, 2, const gs_iteration);
    const gs_params *p = MC_ARG(ctx, 3, const gs_params);
    if (iter->count == 0) return;
    const float *src = (iter->first & 1u) ? b : a;
    float *dst = (iter->first & 1u) ? a : b;
    if (p->fault_step && iter->first + 1 == p->fault_step) {
        /* Bit 55 set: outside every process's address space (non-canonical
         * on x86-64, the kernel's half on arm64). */
        volatile float *wild = (volatile float *)((uintptr_t)dst | ((uintptr_t)1 << 55));
        *wild = 1.0f;
    }
    const uint32_t w = p->width, h = p->height;
    MC_FOR_EACH_THREAD_2D(ctx, x, y) {
        if (x >= w || y >= h) continue;
        uint32_t xl = x ? x - 1 : w - 1, xr = x + 1 < w ? x + 1 : 0;
        uint32_t yu = y ? y - 1 : h - 1, yd = y + 1 < h ? y + 1 : 0;
        const float *r0 = src + 2u * (size_t)yu * w, *r1 = src + 2u * (size_t)y * w, *r2 = src + 2u * (size_t)yd * w;
        float u = r1[2u * x], v = r1[2u * x + 1u];
        float lu = 0.05f * (r0[2u * xl] + r0[2u * xr] + r2[2u * xl] + r2[2u * xr]) +
                   0.2f * (r0[2u * x] + r2[2u * x] + r1[2u * xl] + r1[2u * xr]) - u;
        float lv = 0.05f * (r0[2u * xl + 1u] + r0[2u * xr + 1u] + r2[2u * xl + 1u] + r2[2u * xr + 1u]) +
                   0.2f * (r0[2u * x + 1u] + r2[2u * x + 1u] + r1[2u * xl + 1u] + r1[2u * xr + 1u]) - v;
        float uvv = u * v * v;
        float *o = dst + 2u * ((size_t)y * w + x);
        o[0] = u + p->dt * (p->du * lu - uvv + p->feed * (1.0f - u));
        o[1] = v + p->dt * (p->dv * lv + uvv - (p->feed + p->kill) * v);
    }
}
