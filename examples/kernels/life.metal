/*
 * Conway's game of life on a periodic grid of uint8 cells (0 dead, 1
 * alive), one generation per dispatch (Metal Shading Language), for
 * `metal-compute run` (docs/RUNNER.md):
 *   metal-compute run examples/kernels/life.metal --function life_step \
 *       --arg pair:board.npy --arg iter --arg u32:256,u32:256 --steps 500
 *   [0] uchar *a   [1] uchar *b   (a pair: generation i reads a, writes b when i is even)
 *   [2] iteration bytes { uint64 first; uint32 count; uint32 pad }
 *   [3] { uint32 width, height }
 * Grid: the board's shape, 16x16 threadgroups; threads past the edge return.
 */
#include <metal_stdlib>
using namespace metal;

struct life_iteration {
    ulong first;
    uint count;
    uint pad;
};

struct life_params {
    uint width, height;
};

kernel void life_step(device uchar *a [[buffer(0)]],
                      device uchar *b [[buffer(1)]],
                      constant life_iteration &it [[buffer(2)]],
                      constant life_params &p [[buffer(3)]],
                      uint2 gid [[thread_position_in_grid]])
{
    if (it.count == 0) return;
    device const uchar *src = (it.first & 1) ? b : a;
    device uchar *dst = (it.first & 1) ? a : b;
    const uint w = p.width, h = p.height;
    uint x = gid.x, y = gid.y;
    if (x >= w || y >= h) return;
    uint xs[3] = {x ? x - 1 : w - 1, x, x + 1 < w ? x + 1 : 0};
    uint ys[3] = {y ? y - 1 : h - 1, y, y + 1 < h ? y + 1 : 0};
    uint n = 0;
    for (int j = 0; j < 3; j++)
        for (int i = 0; i < 3; i++)
            if (i != 1 || j != 1) n += src[ys[j] * w + xs[i]] ? 1u : 0u;
    bool alive = src[y * w + x] != 0;
    dst[y * w + x] = (n == 3 || (alive && n == 2)) ? 1 : 0;
}
