/*
 * Streaming filter kernels for the CPU device (C, see mc/mc_cpu_kernel.h).
 * fir.cu (CUDA) and fir.metal (Metal) have the same names, argument slots
 * and arithmetic: a program binds the same way on every device. Grids are
 * 1-D. Used by examples/stream_filter, the stream tests and the stream
 * benchmark.
 *
 * Each block carries its own history: in[0 .. ntaps-2] are the last
 * ntaps-1 samples of the block before it, in[ntaps-1 ..] the block's n
 * samples. So an output depends only on its item's input, and a block
 * computed again (after a fault) or out of order gives the same samples.
 */
#include <mc/mc_cpu_kernel.h>

/* out[i] = sum over k < ntaps of taps[k] * in[i + ntaps - 1 - k], for i < n,
 * summed in order of k from 0.
 * [0] float *out, [1] const float *in (n + ntaps - 1 samples),
 * [2] const float *taps, [3] uint32 n, [4] uint32 ntaps;
 * threadgroup memory [0]: (threads per threadgroup + ntaps - 1) floats,
 * where the GPU versions stage the group's inputs (one coalesced read of
 * each input sample instead of ntaps); here it holds the group's sums, and
 * the loops run tap by tap over the group's samples, a counted inner loop
 * the compiler vectorises. Each sum still adds its taps in order of k. */
MC_KERNEL(fir, 5)
{
    float *out = MC_ARG(ctx, 0, float);
    const float *in = MC_ARG(ctx, 1, const float);
    const float *taps = MC_ARG(ctx, 2, const float);
    const uint32_t n = *MC_ARG(ctx, 3, const uint32_t);
    const uint32_t ntaps = *MC_ARG(ctx, 4, const uint32_t);
    const uint32_t first = ctx->group_id[0] * ctx->group_size[0];
    if (first >= n) return;
    const uint32_t count = n - first < ctx->group_size[0] ? n - first : ctx->group_size[0];
    float *restrict acc = ctx->tg_mem[0];
    const float *restrict x = in + first + ntaps - 1; /* x[i - k] = in[first + i + ntaps - 1 - k] */
    for (uint32_t i = 0; i < count; i++) acc[i] = 0.0f;
    for (uint32_t k = 0; k < ntaps; k++) {
        const float t = taps[k];
        const float *restrict xk = x - k;
        for (uint32_t i = 0; i < count; i++) acc[i] += t * xk[i];
    }
    for (uint32_t i = 0; i < count; i++) out[first + i] = acc[i];
}

/* data[i] *= g for i < n.
 * [0] float *data, [1] float g, [2] uint32 n */
MC_KERNEL(gain, 3)
{
    float *data = MC_ARG(ctx, 0, float);
    const float g = *MC_ARG(ctx, 1, const float);
    const uint32_t n = *MC_ARG(ctx, 2, const uint32_t);
    MC_FOR_EACH_THREAD_BELOW(ctx, i, n) data[i] *= g;
}
