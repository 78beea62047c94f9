// Stream compaction in three stages in the Metal Shading Language, the one
// source every device runs. One command buffer runs them with no CPU wait
// between (F674): the first stage sizes the last (examples/compact).
//
//   compact_filter   keeps the values over a threshold, appending them to
//                    `kept` through an atomic counter (any order);
//   compact_args     one thread: turns the count into the threadgroup grid of
//                    the next stage (three uint, F148), and into a command
//                    range {0, threadgroups} for a command list holding one
//                    command per threadgroup of survivors (F149);
//   compact_square   runs indirectly over exactly the survivors: survivor
//                    base + thread index.
//
// store_words is a helper for tests: one thread copies words given by value
// into a buffer, so a kernel in the same command buffer writes a grid or a
// range.
#include <metal_stdlib>
using namespace metal;

// [0] const uint *in, [1] uint *kept, [2] atomic uint *count, [3] uint n,
// [4] uint threshold
kernel void compact_filter(device const uint *in [[buffer(0)]],
                           device uint *kept [[buffer(1)]],
                           device atomic_uint *count [[buffer(2)]],
                           constant uint &n [[buffer(3)]],
                           constant uint &threshold [[buffer(4)]],
                           uint i [[thread_position_in_grid]])
{
    if (i < n && in[i] > threshold) {
        uint at = atomic_fetch_add_explicit(count, 1u, memory_order_relaxed);
        kept[at] = in[i];
    }
}

// One thread. [0] const uint *count, [1] uint *grid (3 words: an
// MTLDispatchThreadgroupsIndirectArguments), [2] uint threads_per_group,
// [3] uint *range (2 words, {0, grid[0]}: an MTLIndirectCommandBufferExecutionRange)
kernel void compact_args(device const uint *count [[buffer(0)]],
                         device uint *grid [[buffer(1)]],
                         constant uint &tg [[buffer(2)]],
                         device uint *range [[buffer(3)]],
                         uint i [[thread_position_in_grid]])
{
    if (i == 0) {
        uint c = count[0];
        grid[0] = (c + tg - 1) / tg;
        grid[1] = 1;
        grid[2] = 1;
        range[0] = 0;
        range[1] = grid[0];
    }
}

// out[j] = kept[j]^2 for j = base + thread index < count.
// [0] const uint *kept, [1] uint *out, [2] const uint *count, [3] uint base
kernel void compact_square(device const uint *kept [[buffer(0)]],
                           device uint *out [[buffer(1)]],
                           device const uint *count [[buffer(2)]],
                           constant uint &base [[buffer(3)]],
                           uint i [[thread_position_in_grid]])
{
    uint j = base + i;
    if (j < count[0]) out[j] = kept[j] * kept[j];
}

// One thread: dst[k] = words[k] for k < n.
// [0] uint *dst, [1] const uint *words (bytes), [2] uint n
kernel void store_words(device uint *dst [[buffer(0)]],
                        constant uint *words [[buffer(1)]],
                        constant uint &n [[buffer(2)]],
                        uint i [[thread_position_in_grid]])
{
    if (i == 0)
        for (uint k = 0; k < n; k++) dst[k] = words[k];
}
