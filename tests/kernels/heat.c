/*
 * Heat diffusion on a periodic grid, one explicit step per dispatch: the C
 * twin of examples/kernels/heat.metal (same slots), for the CPU device
 * while it runs C. docs/RUNNER.md runs it as
 *   metal-compute run heat.c --function heat_step --arg pair:FIELD.npy --arg iter
 *       --arg u32:W,u32:H,f32:ALPHA --steps N
 *   [0] float *a   [1] float *b   (a pair: step i reads a, writes b when i is even)
 *   [2] iteration bytes { uint64 first; uint32 count; uint32 pad }
 *   [3] { uint32 width, height; float alpha }
 *   u' = u + alpha (u_left + u_right + u_up + u_down - 4 u)
 */
#include <mc/mc_cpu_kernel.h>

typedef struct heat_iteration {
    uint64_t first;
    uint32_t count;
    uint32_t pad;
} heat_iteration;

typedef struct heat_params {
    uint32_t width, height;
    float alpha;
} heat_params;

MC_KERNEL(heat_step, 4)
{
    float *a = MC_ARG(ctx, 0, float);
    float *b = MC_ARG(ctx, 1, float);
    const heat_iteration *it = MC_ARG(ctx, 2, const heat_iteration);
    const heat_params *p = MC_ARG(ctx, 3, const heat_params);
    if (it->count == 0) return;
    const float *src = (it->first & 1u) ? b : a;
    float *dst = (it->first & 1u) ? a : b;
    const uint32_t w = p->width, h = p->height;
    MC_FOR_EACH_THREAD_2D(ctx, x, y) {
        if (x >= w || y >= h) continue;
        uint32_t xl = x ? x - 1 : w - 1, xr = x + 1 < w ? x + 1 : 0;
        uint32_t yu = y ? y - 1 : h - 1, yd = y + 1 < h ? y + 1 : 0;
        float u = src[(size_t)y * w + x];
        float sum = src[(size_t)y * w + xl] + src[(size_t)y * w + xr] + src[(size_t)yu * w + x] + src[(size_t)yd * w + x];
        dst[(size_t)y * w + x] = u + p->alpha * (sum - 4.0f * u);
    }
}
