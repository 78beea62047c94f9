// The basic example and test kernels in the Metal Shading Language, the one
// source every device runs (benchmarks/baselines/basic.c and basic.cu are
// hand-written twins kept as benchmark baselines only): 1-D grids,
// buffers bound with mc_pass_set_buffer, scalars passed by value with
// mc_pass_set_bytes (read here as `constant T&`).
#include <metal_stdlib>
using namespace metal;

// Does nothing: measures the cost of a dispatch.
kernel void empty()
{
}

// y[i] = a * x[i] + y[i] for i < n.
kernel void saxpy(device float *y [[buffer(0)]],
                  device const float *x [[buffer(1)]],
                  constant float &a [[buffer(2)]],
                  constant uint &n [[buffer(3)]],
                  uint i [[thread_position_in_grid]])
{
    if (i < n) y[i] = a * x[i] + y[i];
}

// data[i] += 1 for i < n.
kernel void add_one(device uint *data [[buffer(0)]],
                    constant uint &n [[buffer(1)]],
                    uint i [[thread_position_in_grid]])
{
    if (i < n) data[i] += 1u;
}

// out[i] = base + i for i < n.
kernel void iota(device uint *out [[buffer(0)]],
                 constant uint &n [[buffer(1)]],
                 constant uint &base [[buffer(2)]],
                 uint i [[thread_position_in_grid]])
{
    if (i < n) out[i] = base + i;
}

// Burns time: each thread runs iters steps of a linear congruential
// generator seeded with its index and stores the result, so the work cannot
// be optimised away (an empty loop may be, F691). Long enough iters trip the
// GPU watchdog (F145, F696).
kernel void spin(device uint *out [[buffer(0)]],
                 constant uint &iters [[buffer(1)]],
                 uint i [[thread_position_in_grid]])
{
    uint acc = i;
    for (uint k = 0; k < iters; k++) acc = acc * 1664525u + 1013904223u;
    out[i] = acc;
}

// dst[i] = src[i] for i < n.
kernel void copy_f32(device float *dst [[buffer(0)]],
                     device const float *src [[buffer(1)]],
                     constant uint &n [[buffer(2)]],
                     uint i [[thread_position_in_grid]])
{
    if (i < n) dst[i] = src[i];
}

// A real fault: thread 0 writes 1 to out[offset_elems]. Far outside every
// allocation this is a GPU page fault (MTLCommandBufferErrorPageFault, F685)
// where the address is unmapped; Metal does not promise which addresses are.
kernel void oob_write(device uint *out [[buffer(0)]],
                      constant ulong &offset_elems [[buffer(1)]],
                      uint i [[thread_position_in_grid]])
{
    if (i == 0) {
        volatile device uint *p = out + offset_elems;
        *p = 1u;
    }
}
