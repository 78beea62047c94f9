// Streaming filter kernels in the Metal Shading Language, the one source
// every device runs (benchmarks/baselines/fir.c and fir.cu are hand-written
// twins kept as benchmark baselines only). Used by examples/stream_filter,
// the stream tests and the stream benchmark.
//
// Each block carries its own history: in[0 .. ntaps-2] are the last
// ntaps-1 samples of the block before it, in[ntaps-1 ..] the block's n
// samples. So an output depends only on its item's input, and a block
// computed again (after a fault) or out of order gives the same samples.
// Buffers are bound with
// mc_pass_set_buffer, scalars passed by value with mc_pass_set_bytes (read
// here as `constant T&`). The compiler may fuse a * b + c: compare across
// devices with a tolerance.
#include <metal_stdlib>
using namespace metal;

// out[i] = sum over k < ntaps of taps[k] * in[i + ntaps - 1 - k], for i < n.
// Threadgroup memory 0: (threads per threadgroup + ntaps - 1) floats, where
// the group's inputs are staged: each input sample is read once.
kernel void fir(device float *out [[buffer(0)]],
                device const float *in [[buffer(1)]],
                device const float *taps [[buffer(2)]],
                constant uint &n [[buffer(3)]],
                constant uint &ntaps [[buffer(4)]],
                threadgroup float *tile [[threadgroup(0)]],
                uint i [[thread_position_in_grid]],
                uint lid [[thread_position_in_threadgroup]],
                uint tg [[threadgroup_position_in_grid]],
                uint tg_size [[threads_per_threadgroup]])
{
    uint base = tg * tg_size;
    uint span = tg_size + ntaps - 1, len = n + ntaps - 1;
    for (uint j = lid; j < span; j += tg_size)
        if (base + j < len) tile[j] = in[base + j];
    threadgroup_barrier(mem_flags::mem_threadgroup);
    if (i < n) {
        threadgroup const float *x = tile + lid + ntaps - 1; // x[-k] = in[i + ntaps - 1 - k]
        float acc = 0.0f;
        for (uint k = 0; k < ntaps; k++) acc += taps[k] * x[-(int)k];
        out[i] = acc;
    }
}

// data[i] *= g for i < n.
kernel void gain(device float *data [[buffer(0)]],
                 constant float &g [[buffer(1)]],
                 constant uint &n [[buffer(2)]],
                 uint i [[thread_position_in_grid]])
{
    if (i < n) data[i] *= g;
}
