// Kernels that run as region loops on the CPU device (the kernel cut at its
// barriers into loops over the threads); tests/test_msl_exec.c runs each
// against a host reference and against the coroutine path.
#include <metal_stdlib>
using namespace metal;
constant uint TILE = 16;
kernel void rg_reduce(device const float *in [[buffer(0)]], device float *partial [[buffer(1)]],
                      uint gid [[thread_position_in_grid]], uint lid [[thread_position_in_threadgroup]],
                      uint group [[threadgroup_position_in_grid]], uint size [[threads_per_threadgroup]])
{
    threadgroup float scratch[1024];
    scratch[lid] = in[gid];
    threadgroup_barrier(mem_flags::mem_threadgroup);
    for (uint s = size / 2; s > 0; s >>= 1) {
        if (lid < s) scratch[lid] += scratch[lid + s];
        threadgroup_barrier(mem_flags::mem_threadgroup);
    }
    if (lid == 0) partial[group] = scratch[0];
}
// Hillis-Steele, double-buffered in [[threadgroup(0)]] memory: pin and
// pout are written in the loop and read after it (the frame)
kernel void rg_hillis(device const uint *in [[buffer(0)]], device uint *out [[buffer(1)]],
                      threadgroup uint *tmp [[threadgroup(0)]], uint gid [[thread_position_in_grid]],
                      uint lid [[thread_position_in_threadgroup]], uint n [[threads_per_threadgroup]])
{
    uint pin, pout = 0;
    tmp[lid] = lid > 0 ? in[gid - 1] : 0u;
    threadgroup_barrier(mem_flags::mem_threadgroup);
    for (uint off = 1; off < n; off <<= 1) {
        pout = 1 - pout;
        pin = 1 - pout;
        uint v = tmp[pin * n + lid];
        if (lid >= off) v += tmp[pin * n + lid - off];
        tmp[pout * n + lid] = v;
        threadgroup_barrier(mem_flags::mem_threadgroup);
    }
    out[gid] = tmp[pout * n + lid];
}
// Blelloch (work-efficient, exclusive) over 2n values: offset and base
// cross every barrier
kernel void rg_blelloch(device const uint *in [[buffer(0)]], device uint *out [[buffer(1)]],
                        uint lid [[thread_index_in_threadgroup]], uint group [[threadgroup_position_in_grid]],
                        uint n [[threads_per_threadgroup]])
{
    threadgroup uint tmp[2048];
    uint base = group * n * 2;
    tmp[2 * lid] = in[base + 2 * lid];
    tmp[2 * lid + 1] = in[base + 2 * lid + 1];
    uint offset = 1;
    for (uint d = n; d > 0; d >>= 1) {
        threadgroup_barrier(mem_flags::mem_threadgroup);
        if (lid < d) {
            uint ai = offset * (2 * lid + 1) - 1;
            uint bi = offset * (2 * lid + 2) - 1;
            tmp[bi] += tmp[ai];
        }
        offset *= 2;
    }
    if (lid == 0) tmp[2 * n - 1] = 0;
    for (uint d = 1; d < 2 * n; d *= 2) {
        offset >>= 1;
        threadgroup_barrier(mem_flags::mem_threadgroup);
        if (lid < d) {
            uint ai = offset * (2 * lid + 1) - 1;
            uint bi = offset * (2 * lid + 2) - 1;
            uint t = tmp[ai];
            tmp[ai] = tmp[bi];
            tmp[bi] += t;
        }
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
    out[base + 2 * lid] = tmp[2 * lid];
    out[base + 2 * lid + 1] = tmp[2 * lid + 1];
}
// tiled C = A * B: acc and row live across the barriers of a loop
// whose bound is an argument and whose step a file-scope constant
kernel void rg_matmul(device const float *A [[buffer(0)]], device const float *B [[buffer(1)]],
                      device float *C [[buffer(2)]], constant uint &n [[buffer(3)]],
                      uint2 gid [[thread_position_in_grid]], uint2 lid [[thread_position_in_threadgroup]])
{
    threadgroup float ta[TILE][TILE];
    threadgroup float tb[TILE][TILE];
    float acc = 0.0f;
    uint row = gid.y * n;
    for (uint t = 0; t < n; t += TILE) {
        ta[lid.y][lid.x] = A[row + t + lid.x];
        tb[lid.y][lid.x] = B[(t + lid.y) * n + gid.x];
        threadgroup_barrier(mem_flags::mem_threadgroup);
        for (uint k = 0; k < TILE; k++) acc += ta[lid.y][k] * tb[k][lid.x];
        threadgroup_barrier(mem_flags::mem_threadgroup);
    }
    C[row + gid.x] = acc;
}
// threads past `live` leave before the first barrier, one in three
// between the two barriers; the rest read what every live thread wrote
kernel void rg_returns(device uint *out [[buffer(0)]], constant uint &live [[buffer(1)]],
                       uint lid [[thread_index_in_threadgroup]], uint gid [[thread_position_in_grid]])
{
    threadgroup uint a[1024];
    threadgroup uint b[1024];
    out[gid] = 0xffffffffu;
    if (lid >= live) return;
    uint mine = lid * 7u + 1u;
    a[lid] = mine;
    threadgroup_barrier(mem_flags::mem_threadgroup);
    uint other = a[(lid + 1u) % live];
    b[lid] = other + mine;
    if (lid % 3u == 1u) {
        out[gid] = other;
        return;
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
    out[gid] = b[(lid + 2u) % live] ^ mine;
}
// 2-D groups (32 x 32 = 1024 threads): a transpose through threadgroup
// memory, then a sum along each row; ushort and vector ids
kernel void rg_tile2d(device const uint *in [[buffer(0)]], device uint *out [[buffer(1)]],
                      uint2 gid [[thread_position_in_grid]], uint2 lid [[thread_position_in_threadgroup]],
                      uint2 tptg [[threads_per_threadgroup]], uint2 grid [[threads_per_grid]],
                      ushort li [[thread_index_in_threadgroup]])
{
    threadgroup uint tile[32][33];
    threadgroup uint rows[32][32];
    uint v = in[gid.y * grid.x + gid.x];
    tile[lid.y][lid.x] = v;
    threadgroup_barrier(mem_flags::mem_threadgroup);
    uint tv = tile[lid.x][lid.y];
    rows[lid.y][lid.x] = tv;
    for (uint s = tptg.x / 2; s > 0; s /= 2) {
        threadgroup_barrier(mem_flags::mem_threadgroup);
        if (lid.x < s) rows[lid.y][lid.x] += rows[lid.y][lid.x + s];
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
    out[gid.y * grid.x + gid.x] = (tv << 8) ^ rows[lid.y][0] ^ (uint)li ^ (v << 20);
}
// a while loop whose condition reads threadgroup memory: a max-plus-one
// reduction that halves the width each pass
kernel void rg_while(device const uint *in [[buffer(0)]], device uint *out [[buffer(1)]],
                     uint lid [[thread_position_in_threadgroup]], uint gid [[thread_position_in_grid]],
                     uint n [[threads_per_threadgroup]], uint group [[threadgroup_position_in_grid]])
{
    threadgroup uint vals[1024];
    threadgroup uint width;
    vals[lid] = in[gid];
    if (lid == 0) width = n;
    threadgroup_barrier(mem_flags::mem_threadgroup);
    while (width > 1) {
        uint w = width;
        uint h = (w + 1) / 2;
        if (lid < w / 2) vals[lid] = max(vals[lid], vals[lid + h]) + 1;
        threadgroup_barrier(mem_flags::mem_threadgroup);
        if (lid == 0) width = (width + 1) / 2;
        threadgroup_barrier(mem_flags::mem_threadgroup);
    }
    if (lid == 0) out[group] = vals[0];
}
// Shapes the pass takes that the kernels above do not show: a return from
// inside a loop of a region, a vector local written through a swizzle and a
// pointer to threadgroup memory living across barriers, a group-wide
// constexpr, and a loop header of a numeric macro and a file-scope
// constant array; the loop's variable read in its regions.
#define ROUNDS 3
constant uint shifts[2] = {1, 2};
kernel void rg_mixed(device uint *out [[buffer(0)]], constant uint &live [[buffer(1)]],
                     uint lid [[thread_index_in_threadgroup]], uint gid [[thread_position_in_grid]])
{
    threadgroup uint buf[2][256];
    constexpr uint mask = 0xffu;
    uint2 acc = uint2(lid, 1u);
    threadgroup uint *mine = &buf[0][lid];
    for (uint k = 0; k < 4u; k++)
        if (lid >= live && k == 2u) {
            out[gid] = 0xdead0000u + k;
            return;
        }
    *mine = acc.x * 3u;
    threadgroup_barrier(mem_flags::mem_threadgroup);
    for (uint r = 0; r < ROUNDS * shifts[1]; r += shifts[0]) {
        acc.y += buf[r & 1u][(lid + r) % live] & mask;
        threadgroup_barrier(mem_flags::mem_threadgroup);
        buf[(r + 1u) & 1u][lid] = acc.y + r;
        threadgroup_barrier(mem_flags::mem_threadgroup);
    }
    out[gid] = acc.y ^ (acc.x << 16);
}
// 2-D groups where threads leave before the first barrier: the later
// regions skip them by their linear index.
kernel void rg_returns2d(device uint *out [[buffer(0)]], uint2 lid [[thread_position_in_threadgroup]],
                         uint2 tptg [[threads_per_threadgroup]], uint2 gid [[thread_position_in_grid]],
                         uint2 grid [[threads_per_grid]], uint li [[thread_index_in_threadgroup]])
{
    threadgroup uint t[1024];
    uint at = gid.y * grid.x + gid.x;
    t[li] = li * 3u + 1u;
    if ((lid.x + lid.y) % 5u == 0u) {
        out[at] = 0xabcdu;
        return;
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
    uint other = t[(li + tptg.x) % (tptg.x * tptg.y)];
    threadgroup_barrier(mem_flags::mem_threadgroup);
    t[li] = other + li;
    threadgroup_barrier(mem_flags::mem_threadgroup);
    out[at] = t[(li + 1u) % (tptg.x * tptg.y)] ^ (lid.x << 16);
}
