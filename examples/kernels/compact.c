/*
 * Stream compaction in three stages for the CPU device (C, see
 * mc/mc_cpu_kernel.h); compact.cu and compact.metal have the same names and
 * argument slots. One command buffer runs them with no CPU wait between
 * (F674): the first stage sizes the last (examples/compact).
 *
 *   compact_filter   keeps the values over a threshold, appending them to
 *                    `kept` through an atomic counter (any order);
 *   compact_args     one thread: turns the count into the threadgroup grid of
 *                    the next stage (three uint32, F148), and into a command
 *                    range {0, threadgroups} for a command list holding one
 *                    command per threadgroup of survivors (F149);
 *   compact_square   runs indirectly over exactly the survivors: survivor
 *                    base + thread index.
 *
 * store_words is a helper for tests: one thread copies words given by value
 * into a buffer, so a kernel in the same command buffer writes a grid or a
 * range.
 */
#include <mc/mc_cpu_kernel.h>

/* [0] const uint32 *in, [1] uint32 *kept, [2] uint32 *count, [3] uint32 n,
 * [4] uint32 threshold */
MC_KERNEL(compact_filter, 5)
{
    const uint32_t *in = MC_ARG(ctx, 0, const uint32_t);
    uint32_t *kept = MC_ARG(ctx, 1, uint32_t);
    uint32_t *count = MC_ARG(ctx, 2, uint32_t);
    const uint32_t n = *MC_ARG(ctx, 3, const uint32_t);
    const uint32_t threshold = *MC_ARG(ctx, 4, const uint32_t);
    MC_FOR_EACH_THREAD(ctx, i) {
        if (i < n && in[i] > threshold) {
            /* threadgroups run on several workers at once */
            uint32_t at = __atomic_fetch_add(count, 1u, __ATOMIC_RELAXED);
            kept[at] = in[i];
        }
    }
}

/* One thread. [0] const uint32 *count, [1] uint32 *grid (3 words),
 * [2] uint32 threads_per_group, [3] uint32 *range (2 words: 0, grid[0]) */
MC_KERNEL(compact_args, 4)
{
    const uint32_t *count = MC_ARG(ctx, 0, const uint32_t);
    uint32_t *grid = MC_ARG(ctx, 1, uint32_t);
    const uint32_t tg = *MC_ARG(ctx, 2, const uint32_t);
    uint32_t *range = MC_ARG(ctx, 3, uint32_t);
    MC_FOR_EACH_THREAD(ctx, i) {
        if (i == 0) {
            uint32_t c = __atomic_load_n(count, __ATOMIC_RELAXED);
            grid[0] = (c + tg - 1) / tg;
            grid[1] = 1;
            grid[2] = 1;
            range[0] = 0;
            range[1] = grid[0];
        }
    }
}

/* out[j] = kept[j]^2 for j = base + thread index < count.
 * [0] const uint32 *kept, [1] uint32 *out, [2] const uint32 *count, [3] uint32 base */
MC_KERNEL(compact_square, 4)
{
    const uint32_t *kept = MC_ARG(ctx, 0, const uint32_t);
    uint32_t *out = MC_ARG(ctx, 1, uint32_t);
    const uint32_t count = *MC_ARG(ctx, 2, const uint32_t);
    const uint32_t base = *MC_ARG(ctx, 3, const uint32_t);
    MC_FOR_EACH_THREAD(ctx, i) {
        uint32_t j = base + i;
        if (j < count) out[j] = kept[j] * kept[j];
    }
}

/* One thread: dst[k] = words[k] for k < n.
 * [0] uint32 *dst, [1] const uint32 *words (bytes), [2] uint32 n */
MC_KERNEL(store_words, 3)
{
    uint32_t *dst = MC_ARG(ctx, 0, uint32_t);
    const uint32_t *words = MC_ARG(ctx, 1, const uint32_t);
    const uint32_t n = *MC_ARG(ctx, 2, const uint32_t);
    MC_FOR_EACH_THREAD(ctx, i) {
        if (i == 0)
            for (uint32_t k = 0; k < n; k++) dst[k] = words[k];
    }
}
