// Conformance kernels that need every thread of a group: barriers and
// SIMD-group functions. Checked against host references in tests/test_msl.c.
#include <metal_stdlib>
using namespace metal;

// Tree reduction in threadgroup memory: one partial sum per group.
kernel void reduce_tree(device const float *in [[buffer(0)]],
                        device float *partial [[buffer(1)]],
                        uint gid [[thread_position_in_grid]],
                        uint lid [[thread_position_in_threadgroup]],
                        uint group [[threadgroup_position_in_grid]],
                        uint size [[threads_per_threadgroup]])
{
    threadgroup float scratch[256];
    scratch[lid] = in[gid];
    threadgroup_barrier(mem_flags::mem_threadgroup);
    for (uint s = size / 2; s > 0; s >>= 1) {
        if (lid < s) scratch[lid] += scratch[lid + s];
        threadgroup_barrier(mem_flags::mem_threadgroup);
    }
    if (lid == 0) partial[group] = scratch[0];
}

// Exclusive scan of one group (Hillis-Steele, double-buffered), memory
// from [[threadgroup(0)]].
kernel void scan(device const uint *in [[buffer(0)]],
                 device uint *out [[buffer(1)]],
                 threadgroup uint *tmp [[threadgroup(0)]],
                 uint gid [[thread_position_in_grid]],
                 uint lid [[thread_position_in_threadgroup]],
                 uint n [[threads_per_threadgroup]])
{
    uint pin, pout = 0; // the data starts in the first half
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

// Tiled matrix multiply C = A * B (n x n, n a multiple of 16).
kernel void matmul(device const float *A [[buffer(0)]],
                   device const float *B [[buffer(1)]],
                   device float *C [[buffer(2)]],
                   constant uint &n [[buffer(3)]],
                   uint2 gid [[thread_position_in_grid]],
                   uint2 lid [[thread_position_in_threadgroup]])
{
    threadgroup float ta[16][16];
    threadgroup float tb[16][16];
    float acc = 0.0f;
    for (uint t = 0; t < n; t += 16) {
        ta[lid.y][lid.x] = A[gid.y * n + t + lid.x];
        tb[lid.y][lid.x] = B[(t + lid.y) * n + gid.x];
        threadgroup_barrier(mem_flags::mem_threadgroup);
        for (uint k = 0; k < 16; k++) acc += ta[lid.y][k] * tb[k][lid.x];
        threadgroup_barrier(mem_flags::mem_threadgroup);
    }
    C[gid.y * n + gid.x] = acc;
}

// SIMD-group functions, some under non-uniform branches: only the lanes
// that take a branch take part in what it calls.
kernel void simd(device const int *in [[buffer(0)]],
                 device int *out [[buffer(1)]],
                 uint gid [[thread_position_in_grid]],
                 uint lane [[thread_index_in_simdgroup]])
{
    int v = in[gid];
    device int *o = out + gid * 10;
    o[0] = simd_sum(v);
    o[1] = simd_prefix_exclusive_sum(v);
    o[2] = simd_shuffle_xor(v, 1);
    o[3] = simd_broadcast(v, 5);
    o[4] = int(ulong(simd_ballot(v > 0)) & 0xffffffffu);
    o[5] = simd_max(v);
    o[6] = quad_sum(v);
    o[7] = simd_shuffle_down(v, 3);
    if (lane % 2 == 0) {
        o[8] = simd_sum(v); // even lanes only
    } else {
        o[8] = simd_min(v) + simd_prefix_inclusive_sum(v); // odd lanes only
    }
    o[9] = simd_all(v != 1234567) ? 1 : 0;
}

// A barrier-heavy SIMD reduction: simd_sum, then one value per SIMD group
// through threadgroup memory, then the first SIMD group sums those.
kernel void reduce_simd(device const float *in [[buffer(0)]],
                        device float *partial [[buffer(1)]],
                        uint gid [[thread_position_in_grid]],
                        uint group [[threadgroup_position_in_grid]],
                        uint sg [[simdgroup_index_in_threadgroup]],
                        uint lane [[thread_index_in_simdgroup]],
                        uint nsg [[simdgroups_per_threadgroup]])
{
    threadgroup float sums[32];
    float s = simd_sum(in[gid]);
    if (lane == 0) sums[sg] = s;
    threadgroup_barrier(mem_flags::mem_threadgroup);
    if (sg == 0) {
        float t = lane < nsg ? sums[lane] : 0.0f;
        t = simd_sum(t);
        if (lane == 0) partial[group] = t;
    }
}

// More SIMD-group and quad functions, inside a branch only lanes below 20
// take, and threadgroup atomics: every thread counts itself in.
kernel void simd_more(device const int *in [[buffer(0)]],
                      device int *out [[buffer(1)]],
                      ushort gid [[thread_position_in_grid]],
                      ushort lane [[thread_index_in_simdgroup]],
                      uint lid [[thread_index_in_threadgroup]])
{
    threadgroup atomic_uint count;
    if (lid == 0) atomic_store_explicit(&count, 0u, memory_order_relaxed);
    threadgroup_barrier(mem_flags::mem_threadgroup);
    atomic_fetch_add_explicit(&count, 1u, memory_order_relaxed);
    int v = in[gid];
    device int *o = out + gid * 12;
    if (lane < 20) {
        o[0] = simd_shuffle_up(v, 2);
        o[1] = simd_shuffle_rotate_down(v, 5);
        o[2] = simd_prefix_inclusive_product(v > 0 ? 1 : -1);
        o[3] = simd_broadcast_first(v);
        o[4] = simd_is_first() ? 1 : 0;
        o[5] = quad_shuffle(v, 2);
        o[6] = quad_prefix_exclusive_sum(v);
        o[7] = int(ushort(quad_ballot(v > 0)));
        o[8] = simd_and(v | 0x100) ^ simd_or(v & 0xff) ^ simd_xor(v);
        o[9] = simd_any(v == in[0]) ? 1 : 0;
    } else {
        o[0] = o[1] = o[2] = o[3] = o[4] = o[5] = o[6] = o[7] = o[8] = o[9] = -7;
    }
    threadgroup_barrier(mem_flags::mem_device | mem_flags::mem_threadgroup);
    o[10] = int(atomic_load_explicit(&count, memory_order_relaxed));
    o[11] = simd_min(v);
}

// The barrier sits in a helper: the kernel still runs every thread of a
// group at once (the front end follows calls), else t[] would be read
// before the later threads wrote it.
static void sync_all()
{
    threadgroup_barrier(mem_flags::mem_threadgroup);
}

kernel void helper_barrier(device uint *out [[buffer(0)]],
                           uint lid [[thread_position_in_threadgroup]],
                           uint gid [[thread_position_in_grid]],
                           uint n [[threads_per_threadgroup]])
{
    threadgroup uint t[64];
    t[lid] = gid * 3u; // differs per group: a stale value from an earlier group shows
    sync_all();
    out[gid] = t[n - 1u - lid];
}

// Two threadgroup memory slots, 0 and 2, each the pass's own length: they
// must not overlap (on CUDA slot 2 sits after slots 0 and 1 in the one
// shared block, each rounded up to 16 bytes).
kernel void tg_slots(device const int *in [[buffer(0)]], device int *out [[buffer(1)]],
                     threadgroup int *a [[threadgroup(0)]], threadgroup int *b [[threadgroup(2)]],
                     uint lid [[thread_index_in_threadgroup]], uint gid [[thread_position_in_grid]],
                     uint n [[threads_per_threadgroup]])
{
    a[lid] = in[gid];
    b[lid] = in[gid] * 10;
    threadgroup_barrier(mem_flags::mem_threadgroup);
    out[gid] = a[n - 1 - lid] + b[(lid + 1) % n];
}
