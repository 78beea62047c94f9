/*
 * A benchmark baseline (README.md here): Gray-Scott reaction-diffusion, one
 * time step per dispatch, written by hand in CUDA C; the same kernel and
 * slots as examples/kernels/gray_scott.metal (see there for the model).
 *   [0] float *a        width*height (u, v) pairs
 *   [1] float *b        width*height (u, v) pairs
 *   [2] iteration bytes { uint64 first; uint32 count; uint32 pad }
 *   [3] parameter bytes { uint32 width, height; float du, dv, feed, kill, dt; uint32 fault_step }
 * Grid: 2-D, 16x16 threadgroups covering width x height. No atomics, no
 * reductions: runs on one device give the same bits; across devices the last
 * bits may differ (fused multiply-adds).
 *
 * fault_step (a test hook, `run gray-scott --fault-at-step S`): when it is
 * S + 1, thread (0, 0) of step S writes 4 TiB past its buffer: an illegal
 * address, which poisons the CUDA context for the whole process. 0: never.
 */

struct gs_iteration {
    unsigned long long first;
    unsigned int count;
    unsigned int pad;
};

struct gs_params {
    unsigned int width, height;
    float du, dv, feed, kill, dt;
    unsigned int fault_step;
};

extern "C" __global__ void gray_scott_step(float *a, float *b, gs_iteration iter, gs_params p)
{
    if (iter.count == 0) return;
    const float *src = (iter.first & 1ull) ? b : a;
    float *dst = (iter.first & 1ull) ? a : b;
    const unsigned int w = p.width, h = p.height;
    unsigned int x = blockIdx.x * blockDim.x + threadIdx.x;
    unsigned int y = blockIdx.y * blockDim.y + threadIdx.y;
    if (x >= w || y >= h) return;
    if (p.fault_step && iter.first + 1ull == p.fault_step && x == 0 && y == 0) {
        volatile float *wild = dst + (1ull << 40);
        *wild = 1.0f;
    }
    unsigned int xl = x ? x - 1 : w - 1, xr = x + 1 < w ? x + 1 : 0;
    unsigned int yu = y ? y - 1 : h - 1, yd = y + 1 < h ? y + 1 : 0;
    const float *r0 = src + 2u * (size_t)yu * w, *r1 = src + 2u * (size_t)y * w, *r2 = src + 2u * (size_t)yd * w;
    float u = r1[2u * x], v = r1[2u * x + 1u];
    float lu = 0.05f * (r0[2u * xl] + r0[2u * xr] + r2[2u * xl] + r2[2u * xr]) +
               0.2f * (r0[2u * x] + r2[2u * x] + r1[2u * xl] + r1[2u * xr]) - u;
    float lv = 0.05f * (r0[2u * xl + 1u] + r0[2u * xr + 1u] + r2[2u * xl + 1u] + r2[2u * xr + 1u]) +
               0.2f * (r0[2u * x + 1u] + r2[2u * x + 1u] + r1[2u * xl + 1u] + r1[2u * xr + 1u]) - v;
    float uvv = u * v * v;
    float *o = dst + 2u * ((size_t)y * w + x);
    o[0] = u + p.dt * (p.du * lu - uvv + p.feed * (1.0f - u));
    o[1] = v + p.dt * (p.dv * lv + uvv - (p.feed + p.kill) * v);
}
