// Conformance kernels: kernel templates instantiated with [[host_name]]
// (MLX's style) and matrix types. Each is checked against a host reference
// in tests/test_msl.c.
#include <metal_stdlib>
using namespace metal;

// A kernel template, instantiated under two names in the two forms Metal
// accepts: the full signature, and decltype (as MLX's macros write it).
template <typename T>
kernel void axpb(device T *out [[buffer(0)]],
                 device const T *in [[buffer(1)]],
                 constant T &a [[buffer(2)]],
                 uint i [[thread_position_in_grid]])
{
    out[i] = in[i] * a + T(1);
}

template [[host_name("axpb_float")]] [[kernel]] void axpb<float>(device float *, device const float *,
                                                                  constant float &, uint);
template [[host_name("axpb_int")]] [[kernel]] decltype(axpb<int>) axpb<int>;

// A template with a non-type parameter whose body crosses a barrier: each
// instantiation runs as its template does (every thread of the group at once).
template <typename T, uint N>
[[kernel]] void group_sum(device const T *in [[buffer(0)]],
                          device T *out [[buffer(1)]],
                          uint lid [[thread_position_in_threadgroup]],
                          uint g [[threadgroup_position_in_grid]])
{
    threadgroup T part[N];
    part[lid] = in[g * N + lid];
    threadgroup_barrier(mem_flags::mem_threadgroup);
    for (uint s = N / 2; s > 0; s /= 2) {
        if (lid < s) part[lid] += part[lid + s];
        threadgroup_barrier(mem_flags::mem_threadgroup);
    }
    if (lid == 0) out[g] = part[0];
}

template [[host_name("group_sum_uint_64")]] [[kernel]] void group_sum<uint, 64>(device const uint *, device uint *,
                                                                               uint, uint);
template [[host_name("group_sum_float_32")]] [[kernel]] decltype(group_sum<float, 32>) group_sum<float, 32>;

// Matrices: constructors (columns, every element, a diagonal), columns and
// elements, matrix * matrix, matrix * vector, vector * matrix, +, -, scalar
// products, transpose, determinant (2x2, 3x3, 4x4), non-square shapes and
// half matrices. Inputs are small integers: every result is exact.
kernel void matrices(device float *out [[buffer(0)]],
                     device const float4 *in [[buffer(1)]],
                     uint i [[thread_position_in_grid]])
{
    float4 v = in[i];
    float2x2 a = float2x2(v.xy, v.zw);
    float2x2 b = float2x2(1.0f, 2.0f, 3.0f, 4.0f);
    float2x2 c = a * b;
    float2 mv = a * float2(1.0f, -1.0f);
    float2 vm = float2(1.0f, -1.0f) * a;
    float3x3 d = float3x3(2.0f) + float3x3(float3(v.x, 0, 0), float3(0, v.y, 0), float3(v.z, v.w, 1));
    float2x3 e = float2x3(v.x, v.y, v.z, v.w, 1, 2);
    float3x2 et = transpose(e);
    float4x4 f = float4x4(float4(v.x, 1, 0, 0), float4(0, v.y, 1, 0), float4(0, 0, v.z, 1), float4(1, 0, 0, v.w));
    half2x2 h = half2x2(half2(half(v.x), half(v.y)), half2(half(v.z), half(v.w)));
    half2 hv = h * half2(half(1), half(2));
    matrix<float, 2, 2> g = a;
    vec<float, 2> one = vec<float, 2>(1.0f);
    g -= b * 2.0f;
    uint o = i * 16;
    out[o + 0] = c[0][0];
    out[o + 1] = c[0][1];
    out[o + 2] = c[1][0];
    out[o + 3] = c[1].y;
    out[o + 4] = mv.x;
    out[o + 5] = mv.y;
    out[o + 6] = vm.x;
    out[o + 7] = vm.y;
    out[o + 8] = determinant(d);
    out[o + 9] = et[2][0] + 10.0f * et[0][1];
    out[o + 10] = (et * float3(1, 2, 3)).y;
    out[o + 11] = determinant(f);
    out[o + 12] = float(determinant(h));
    out[o + 13] = float(hv.x) + 10.0f * float(hv.y);
    out[o + 14] = (e * float2(1, 1)).z + (-a)[0][0];
    out[o + 15] = g[1].y + (2.0f * a)[1][0] + (one.x - one.y);
}
