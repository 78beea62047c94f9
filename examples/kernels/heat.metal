/*
 * Heat diffusion on a periodic grid, one explicit step per dispatch (Metal
 * Shading Language), for `metal-compute run` (docs/RUNNER.md):
 *   metal-compute run examples/kernels/heat.metal --function heat_step \
 *       --arg pair:field.npy --arg iter --arg u32:256,u32:256,f32:0.2 --steps 1000
 *   [0] float *a   [1] float *b   (a pair: step i reads a, writes b when i is even)
 *   [2] iteration bytes { uint64 first; uint32 count; uint32 pad }
 *   [3] { uint32 width, height; float alpha }   (alpha <= 0.25 keeps it stable)
 *   u' = u + alpha (u_left + u_right + u_up + u_down - 4 u)
 * Grid: the field's shape, 16x16 threadgroups; threads past the edge return.
 */
#include <metal_stdlib>
using namespace metal;

struct heat_iteration {
    ulong first;
    uint count;
    uint pad;
};

struct heat_params {
    uint width, height;
    float alpha;
};

kernel void heat_step(device float *a [[buffer(0)]],
                      device float *b [[buffer(1)]],
                      constant heat_iteration &it [[buffer(2)]],
                      constant heat_params &p [[buffer(3)]],
                      uint2 gid [[thread_position_in_grid]])
{
    if (it.count == 0) return;
    device const float *src = (it.first & 1) ? b : a;
    device float *dst = (it.first & 1) ? a : b;
    const uint w = p.width, h = p.height;
    uint x = gid.x, y = gid.y;
    if (x >= w || y >= h) return;
    uint xl = x ? x - 1 : w - 1, xr = x + 1 < w ? x + 1 : 0;
    uint yu = y ? y - 1 : h - 1, yd = y + 1 < h ? y + 1 : 0;
    float u = src[y * w + x];
    float sum = src[y * w + xl] + src[y * w + xr] + src[yu * w + x] + src[yd * w + x];
    dst[y * w + x] = u + p.alpha * (sum - 4.0f * u);
}
