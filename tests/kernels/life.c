/*
 * Conway's game of life on a periodic grid of uint8 cells (0 dead, 1
 * alive), one generation per dispatch, in C: the kernel that tests `run`
 * on the C language (MC_LANG_C) against the same NumPy reference as
 * examples/kernels/life.metal, the project's kernel (same slots). Run as
 *   metal-compute run life.c --function life_step --arg pair:BOARD.npy --arg iter
 *       --arg u32:W,u32:H --steps N
 *   [0] uint8 *a   [1] uint8 *b   (a pair: generation i reads a, writes b when i is even)
 *   [2] iteration bytes { uint64 first; uint32 count; uint32 pad }
 *   [3] { uint32 width, height }
 */
#include <mc/mc_cpu_kernel.h>

typedef struct life_iteration {
    uint64_t first;
    uint32_t count;
    uint32_t pad;
} life_iteration;

typedef struct life_params {
    uint32_t width, height;
} life_params;

MC_KERNEL(life_step, 4)
{
    uint8_t *a = MC_ARG(ctx, 0, uint8_t);
    uint8_t *b = MC_ARG(ctx, 1, uint8_t);
    const life_iteration *it = MC_ARG(ctx, 2, const life_iteration);
    const life_params *p = MC_ARG(ctx, 3, const life_params);
    if (it->count == 0) return;
    const uint8_t *src = (it->first & 1u) ? b : a;
    uint8_t *dst = (it->first & 1u) ? a : b;
    const uint32_t w = p->width, h = p->height;
    MC_FOR_EACH_THREAD_2D(ctx, x, y)
    {
        if (x >= w || y >= h) continue;
        uint32_t xs[3] = {x ? x - 1 : w - 1, x, x + 1 < w ? x + 1 : 0};
        uint32_t ys[3] = {y ? y - 1 : h - 1, y, y + 1 < h ? y + 1 : 0};
        uint32_t n = 0;
        for (int j = 0; j < 3; j++)
            for (int i = 0; i < 3; i++)
                if (i != 1 || j != 1) n += src[(size_t)ys[j] * w + xs[i]] ? 1u : 0u;
        uint8_t alive = src[(size_t)y * w + x] != 0;
        dst[(size_t)y * w + x] = (uint8_t)(n == 3 || (alive && n == 2));
    }
}
