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
 * each input sample instead of ntaps); here the input is read in place. */
MC_KERNEL(fir, 5)
{
    float *out = MC_ARG(ctx, 0, float);
    const float *in = MC_ARG(ctx, 1, const float);
    const float *taps = MC_ARG(ctx, 2, const float);
    const uint32_t n = *MC_ARG(ctx, 3, const uint32_t);
    const uint32_t ntaps = *MC_ARG(ctx, 4, const uint32_t);
    MC_FOR_EACH_THREAD(ctx, i) {
        if (i < n) {
            const float *x = in + i + ntaps - 1; /* x[-k] = in[i + ntaps - 1 - k] */
            float acc = 0.0f;
            for (uint32_t k = 0; k < ntaps; k++) acc += taps[k] * x[-(int32_t)k];
            out[i] = acc;
        }
    }
}

/* data[i] *= g for i < n.
 * [0] float *data, [1] float g, [2] uint32 n */
MC_KERNEL(gain, 3)
{
    float *data = MC_ARG(ctx, 0, float);
    const float g = *MC_ARG(ctx, 1, const float);
    const uint32_t n = *MC_ARG(ctx, 2, const uint32_t);
    MC_FOR_EACH_THREAD(ctx, i) {
        if (i < n) data[i] *= g;
    }
}
