/*
 * Stream compaction in three stages for the CUDA device (CUDA C through
 * NVRTC); same names and argument slots as compact.c and compact.metal. See
 * compact.c for what each stage does.
 */

/* [0] const uint32 *in, [1] uint32 *kept, [2] uint32 *count, [3] uint32 n,
 * [4] uint32 threshold */
extern "C" __global__ void compact_filter(const unsigned int *in, unsigned int *kept, unsigned int *count,
                                          unsigned int n, unsigned int threshold)
{
    unsigned int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n && in[i] > threshold) {
        unsigned int at = atomicAdd(count, 1u);
        kept[at] = in[i];
    }
}

/* One thread. [0] const uint32 *count, [1] uint32 *grid (3 words),
 * [2] uint32 threads_per_group, [3] uint32 *range (2 words: 0, grid[0]) */
extern "C" __global__ void compact_args(const unsigned int *count, unsigned int *grid, unsigned int tg,
                                        unsigned int *range)
{
    if (blockIdx.x == 0 && threadIdx.x == 0) {
        unsigned int c = *(const volatile unsigned int *)count;
        unsigned int groups = (c + tg - 1) / tg;
        grid[0] = groups;
        grid[1] = 1;
        grid[2] = 1;
        range[0] = 0;
        range[1] = groups;
    }
}

/* out[j] = kept[j]^2 for j = base + thread index < count.
 * [0] const uint32 *kept, [1] uint32 *out, [2] const uint32 *count, [3] uint32 base */
extern "C" __global__ void compact_square(const unsigned int *kept, unsigned int *out, const unsigned int *count,
                                          unsigned int base)
{
    unsigned int j = base + blockIdx.x * blockDim.x + threadIdx.x;
    if (j < *count) out[j] = kept[j] * kept[j];
}

/* One thread: dst[k] = words[k] for k < n. The words come by value: a
 * bytes argument is the kernel parameter itself, so the parameter is an
 * array wrapped in a struct of the largest size the tests pass.
 * [0] uint32 *dst, [1] uint32 words[8] (bytes), [2] uint32 n */
struct mc_words8 {
    unsigned int w[8];
};
extern "C" __global__ void store_words(unsigned int *dst, struct mc_words8 words, unsigned int n)
{
    if (blockIdx.x == 0 && threadIdx.x == 0)
        for (unsigned int k = 0; k < n && k < 8; k++) dst[k] = words.w[k];
}
