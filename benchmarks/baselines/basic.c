/*
 * A benchmark baseline (README.md here): the basic kernels of
 * examples/kernels/basic.metal written by hand in C for the CPU device (see
 * mc/mc_cpu_kernel.h), same names and argument slots. Grids are 1-D.
 */
#include <mc/mc_cpu_kernel.h>

/* Does nothing: measures the round trip of a dispatch. */
MC_KERNEL(empty, 0)
{
    (void)ctx;
}

/* y[i] = a * x[i] + y[i] for i < n.
 * [0] float *y, [1] const float *x, [2] float a, [3] uint32 n */
MC_KERNEL(saxpy, 4)
{
    float *y = MC_ARG(ctx, 0, float);
    const float *x = MC_ARG(ctx, 1, const float);
    const float a = *MC_ARG(ctx, 2, const float);
    const uint32_t n = *MC_ARG(ctx, 3, const uint32_t);
    MC_FOR_EACH_THREAD_BELOW(ctx, i, n) y[i] = a * x[i] + y[i];
}

/* data[i] += 1 for i < n.
 * [0] uint32 *data, [1] uint32 n */
MC_KERNEL(add_one, 2)
{
    uint32_t *data = MC_ARG(ctx, 0, uint32_t);
    const uint32_t n = *MC_ARG(ctx, 1, const uint32_t);
    MC_FOR_EACH_THREAD(ctx, i) {
        if (i < n) data[i] += 1;
    }
}

/* out[i] = base + i for i < n.
 * [0] uint32 *out, [1] uint32 n, [2] uint32 base */
MC_KERNEL(iota, 3)
{
    uint32_t *out = MC_ARG(ctx, 0, uint32_t);
    const uint32_t n = *MC_ARG(ctx, 1, const uint32_t);
    const uint32_t base = *MC_ARG(ctx, 2, const uint32_t);
    MC_FOR_EACH_THREAD(ctx, i) {
        if (i < n) out[i] = base + i;
    }
}

/* Burns time: each thread runs iters steps of a linear congruential
 * generator and stores the result in out[i] (one slot per thread of the
 * grid), so the loop cannot be optimised away. Makes command buffers run
 * long enough to meet the execution-time limit.
 * [0] uint32 *out, [1] uint32 iters */
MC_KERNEL(spin, 2)
{
    uint32_t *out = MC_ARG(ctx, 0, uint32_t);
    const uint32_t iters = *MC_ARG(ctx, 1, const uint32_t);
    MC_FOR_EACH_THREAD(ctx, i) {
        uint32_t x = i;
        for (uint32_t k = 0; k < iters; k++) x = x * 1664525u + 1013904223u;
        out[i] = x;
    }
}

/* dst[i] = src[i] for i < n.
 * [0] float *dst, [1] const float *src, [2] uint32 n */
MC_KERNEL(copy_f32, 3)
{
    float *dst = MC_ARG(ctx, 0, float);
    const float *src = MC_ARG(ctx, 1, const float);
    const uint32_t n = *MC_ARG(ctx, 2, const uint32_t);
    MC_FOR_EACH_THREAD(ctx, i) {
        if (i < n) dst[i] = src[i];
    }
}
