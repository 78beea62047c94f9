/*
 * A benchmark baseline (README.md here): the streaming filter kernels of
 * examples/kernels/fir.metal written by hand in CUDA C (compiled at run time
 * by NVRTC), same names, argument slots and arithmetic; see fir.metal for
 * the layout of a block (its history first).
 * NVRTC contracts a * b + c into one fused multiply-add, so the last bits
 * may differ from another device's: compare across devices with a
 * tolerance. On one device a block computed again gives the same bits.
 */

/* out[i] = sum over k < ntaps of taps[k] * in[i + ntaps - 1 - k], for i < n.
 * [0] float *out, [1] const float *in (n + ntaps - 1 samples),
 * [2] const float *taps, [3] uint32 n, [4] uint32 ntaps;
 * threadgroup memory [0]: (blockDim.x + ntaps - 1) floats.
 * The block's inputs are staged in shared memory first: each input sample
 * is read once, coalesced, instead of ntaps times. That matters when `in`
 * is a stream slot (shared storage: host memory read over the bus). */
extern "C" __global__ void fir(float *out, const float *in, const float *taps, unsigned int n, unsigned int ntaps)
{
    extern __shared__ float tile[];
    unsigned int base = blockIdx.x * blockDim.x;
    unsigned int span = blockDim.x + ntaps - 1, len = n + ntaps - 1;
    for (unsigned int j = threadIdx.x; j < span; j += blockDim.x)
        if (base + j < len) tile[j] = in[base + j];
    __syncthreads();
    unsigned int i = base + threadIdx.x;
    if (i < n) {
        const float *x = tile + threadIdx.x + ntaps - 1; /* x[-k] = in[i + ntaps - 1 - k] */
        float acc = 0.0f;
        for (unsigned int k = 0; k < ntaps; k++) acc += taps[k] * x[-(int)k];
        out[i] = acc;
    }
}

/* data[i] *= g for i < n.
 * [0] float *data, [1] float g, [2] uint32 n */
extern "C" __global__ void gain(float *data, float g, unsigned int n)
{
    unsigned int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) data[i] *= g;
}
