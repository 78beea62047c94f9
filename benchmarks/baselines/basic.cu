/*
 * A benchmark baseline (README.md here): the basic kernels of
 * examples/kernels/basic.metal written by hand in CUDA C (compiled at run
 * time by NVRTC), same names and argument slots. Grids are 1-D.
 *
 * Rules of the CUDA device (see src/backends/cuda/cuda_be.h):
 *  - kernels are declared extern "C" __global__ so they are found by name;
 *  - argument slot i is kernel parameter i: a buffer slot is a pointer (the
 *    buffer's device address plus the bound offset), a bytes slot is the
 *    parameter's value;
 *  - threadgroup memory slots share one `extern __shared__` array: slot i
 *    starts at the sum of the lengths of the slots before it, each rounded
 *    up to 16 bytes.
 */

/* Does nothing: measures the round trip of a dispatch. */
extern "C" __global__ void empty(void)
{
}

/* y[i] = a * x[i] + y[i] for i < n.
 * [0] float *y, [1] const float *x, [2] float a, [3] uint32 n */
extern "C" __global__ void saxpy(float *y, const float *x, float a, unsigned int n)
{
    unsigned int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = a * x[i] + y[i];
}

/* data[i] += 1 for i < n.
 * [0] uint32 *data, [1] uint32 n */
extern "C" __global__ void add_one(unsigned int *data, unsigned int n)
{
    unsigned int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) data[i] += 1u;
}

/* out[i] = base + i for i < n.
 * [0] uint32 *out, [1] uint32 n, [2] uint32 base */
extern "C" __global__ void iota(unsigned int *out, unsigned int n, unsigned int base)
{
    unsigned int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = base + i;
}

/* Burns time: each thread runs iters steps of a linear congruential
 * generator and stores the result in out[i] (one slot per thread of the
 * grid), so the loop cannot be optimised away.
 * [0] uint32 *out, [1] uint32 iters */
extern "C" __global__ void spin(unsigned int *out, unsigned int iters)
{
    unsigned int i = blockIdx.x * blockDim.x + threadIdx.x;
    unsigned int x = i;
    for (unsigned int k = 0; k < iters; k++) x = x * 1664525u + 1013904223u;
    out[i] = x;
}

/* dst[i] = src[i] for i < n.
 * [0] float *dst, [1] const float *src, [2] uint32 n */
extern "C" __global__ void copy_f32(float *dst, const float *src, unsigned int n)
{
    unsigned int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) dst[i] = src[i];
}

/* A real page fault: thread 0 writes 1 to out[offset_elems]. With an offset
 * far outside any allocation this is an illegal address, which on CUDA is a
 * sticky error: the device is lost for the rest of the process.
 * [0] uint32 *out, [1] uint64 offset_elems */
extern "C" __global__ void oob_write(unsigned int *out, unsigned long long offset_elems)
{
    if (blockIdx.x == 0 && threadIdx.x == 0) {
        volatile unsigned int *p = out + offset_elems;
        *p = 1u;
    }
}
