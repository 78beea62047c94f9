// Conformance kernels: types, vectors, math, structs, attributes.
// Each is checked against a host reference in tests/test_msl.c.
#include <metal_stdlib>
using namespace metal;

struct params {
    uint n;
    float scale;
    packed_float3 offset; // 12 bytes: the struct's layout matches the host's
    int bias;
};

// Vectors: constructors, swizzles (read and write), packed_ types,
// conversions, geometric functions.
kernel void vectors(device float4 *out [[buffer(0)]],
                    device const packed_float3 *in [[buffer(1)]],
                    constant params &p [[buffer(2)]],
                    uint i [[thread_position_in_grid]])
{
    if (i >= p.n) return;
    float3 v = in[i];
    float4 a = float4(v.zyx, 1.0f);
    a.xy = a.yx * p.scale;
    float2 h = float2(int2(int(i), -3));
    float4 b = float4(h, float2(p.offset.x));
    out[i] = a + b.wzyx + float4(dot(v, float3(1, 2, 3)), fast::length(float2(3.0f, 4.0f)),
                                 cross(v, float3(0, 0, 1)).x, float(p.bias));
}

// Integer functions, all type widths: uchar, short, ushort, long, ulong.
kernel void integers(device uint *out [[buffer(0)]],
                     device long *wide [[buffer(1)]],
                     uint i [[thread_position_in_grid]])
{
    uint x = i * 2654435761u;
    out[i * 8 + 0] = popcount(x);
    out[i * 8 + 1] = clz(x);
    out[i * 8 + 2] = ctz(x | 0x80000000u);
    out[i * 8 + 3] = rotate(x, 7u);
    out[i * 8 + 4] = reverse_bits(x);
    out[i * 8 + 5] = extract_bits(x, 4u, 9u);
    out[i * 8 + 6] = uint(addsat(uchar(200), uchar(i))) + uint(subsat(short(-32760), short(i)) + 40000);
    out[i * 8 + 7] = mulhi(x, 0x9e3779b9u) ^ uint(clamp(int(i) - 5, -2, 3));
    ulong u = ulong(x) << 20;
    wide[i] = long(u / 3ul) - long(ushort(i));
}

// Math: plain, precise:: and fast:: (the CPU computes them alike), half.
kernel void math(device float *out [[buffer(0)]],
                 device half *hout [[buffer(1)]],
                 device const half *hin [[buffer(2)]],
                 uint i [[thread_position_in_grid]])
{
    float x = float(i) * 0.25f + 0.1f;
    out[i * 6 + 0] = sqrt(x) + rsqrt(x);
    out[i * 6 + 1] = precise::exp(x * 0.5f) - fast::log(x);
    out[i * 6 + 2] = sin(x) * cos(x) + tanh(x);
    out[i * 6 + 3] = pow(x, 1.5f) + fmod(x, 0.7f) + fract(x);
    out[i * 6 + 4] = mix(1.0f, 3.0f, saturate(x * 0.1f)) + step(1.0f, x) + smoothstep(0.0f, 4.0f, x);
    out[i * 6 + 5] = select(-1.0f, 1.0f, isfinite(x) && !isnan(x)) + sign(x - 2.0f) + fma(x, 2.0f, 1.0f);
    half h = hin[i];
    half4 hv = half4(h, h * 2.0h, 0.5h, half(x));
    hv = hv * half4(1.0h);
    hout[i] = hv.x + hv.y + hv.z + hv.w;
}

// Every compute attribute, in uint, ushort and vector forms.
kernel void attributes(device uint *out [[buffer(0)]],
                       uint3 tpig [[thread_position_in_grid]],
                       ushort2 tpitg [[thread_position_in_threadgroup]],
                       uint2 tgpig [[threadgroup_position_in_grid]],
                       uint3 tptg [[threads_per_threadgroup]],
                       ushort3 tgpg [[threadgroups_per_grid]],
                       uint2 tpg [[threads_per_grid]],
                       ushort tiitg [[thread_index_in_threadgroup]],
                       uint tiisg [[thread_index_in_simdgroup]],
                       ushort sgiitg [[simdgroup_index_in_threadgroup]],
                       uint sgptg [[simdgroups_per_threadgroup]],
                       uint tew [[thread_execution_width]])
{
    uint idx = tpig.y * tpg.x + tpig.x;
    device uint *o = out + idx * 12;
    o[0] = tpig.x;
    o[1] = tpig.y;
    o[2] = tpitg.x + 100u * tpitg.y;
    o[3] = tgpig.x + 100u * tgpig.y;
    o[4] = tptg.x * tptg.y * tptg.z;
    o[5] = tgpg.x * tgpg.y;
    o[6] = tpg.x * tpg.y;
    o[7] = tiitg;
    o[8] = tiisg;
    o[9] = sgiitg;
    o[10] = sgptg;
    o[11] = tew;
}

// Atomics under contention: every thread adds into a handful of counters.
kernel void atomics(device atomic_uint *counts [[buffer(0)]],
                    device atomic_int *mins [[buffer(1)]],
                    device atomic_float *sum [[buffer(2)]],
                    uint i [[thread_position_in_grid]])
{
    atomic_fetch_add_explicit(&counts[i % 4], 1u, memory_order_relaxed);
    atomic_fetch_max_explicit(&counts[4], i, memory_order_relaxed);
    atomic_fetch_min_explicit(&mins[0], -int(i), memory_order_relaxed);
    atomic_fetch_or_explicit(&counts[5], 1u << (i % 32), memory_order_relaxed);
    atomic_fetch_add_explicit(sum, 0.5f, memory_order_relaxed);
    uint expected = atomic_load_explicit(&counts[6], memory_order_relaxed);
    while (!atomic_compare_exchange_weak_explicit(&counts[6], &expected, expected + 2u, memory_order_relaxed,
                                                  memory_order_relaxed)) {
    }
}

// Function constants, set through pipeline creation.
constant uint fc_mul [[function_constant(0)]];
constant bool fc_negate [[function_constant(1)]];
kernel void constants(device int *out [[buffer(0)]], uint i [[thread_position_in_grid]])
{
    int v = int(i * fc_mul);
    if (is_function_constant_defined(fc_negate) && fc_negate) v = -v;
    out[i] = v;
}

// Vector-typed function constants (and a bool vector, one byte a component
// through the API), set through pipeline creation like scalar ones.
constant float2 vc_f2 [[function_constant(10)]];
constant int3 vc_i3 [[function_constant(11)]];
constant half4 vc_h4 [[function_constant(12)]];
constant bool2 vc_b2 [[function_constant(13)]];
constant uint4 vc_u4 [[function_constant(14)]];
kernel void vector_constants(device float *o [[buffer(0)]], uint i [[thread_position_in_grid]])
{
    if (i != 0) return;
    float2 f = vc_f2;
    int3 n = vc_i3;
    half4 h = vc_h4;
    bool2 b = vc_b2;
    uint4 u = vc_u4;
    o[0] = f.x;
    o[1] = f.y;
    o[2] = float(n.x);
    o[3] = float(n.y);
    o[4] = float(n.z);
    o[5] = float(h.x);
    o[6] = float(h.y);
    o[7] = float(h.z);
    o[8] = float(h.w);
    o[9] = b.x ? 1.0f : 0.0f;
    o[10] = b.y ? 1.0f : 0.0f;
    o[11] = float(u.x);
    o[12] = float(u.y);
    o[13] = float(u.z);
    o[14] = float(u.w);
    o[15] = is_function_constant_defined(vc_f2) ? 1.0f : 0.0f;
}

// half vector swizzles: read (xy, zyx, xxxx, rgba names), write (zyx = ...,
// a swap through itself, compound), in constructors and mixed with float.
kernel void half_swizzles(device const half4 *in [[buffer(0)]], device half4 *out [[buffer(1)]],
                          device float4 *f [[buffer(2)]], uint i [[thread_position_in_grid]])
{
    half4 a = in[i];
    half4 b = a.xxxx;
    b.zyx = a.xyz * 2.0h;
    b.xy = b.yx;
    half3 c = half3(a.wz, 1.0h);
    half2 d = a.rg + a.ba;
    d.yx += half2(a.ww);
    out[3 * i + 0] = b;
    out[3 * i + 1] = half4(c, d.x);
    out[3 * i + 2] = half4(d, a.yw);
    f[i] = float4(a.zw, float2(a.xy)) + float4(float3(c.zyx), float(d.y));
}

// A slot takes a buffer or bytes whatever the parameter's form, as Metal's
// setBuffer and setBytes both bind any buffer slot: a reference to
// constant, a pointer to constant, a pointer to read-only device memory.
struct slot_params {
    uint a;
    float b;
    uint4 c;
};
kernel void slot_forms(device uint *out [[buffer(0)]], constant slot_params &p [[buffer(1)]],
                       constant uint *w [[buffer(2)]], const device uint2 *d2 [[buffer(3)]],
                       uint i [[thread_position_in_grid]])
{
    out[i] = p.a + uint(p.b) + p.c.w + w[i % 5] + d2[i % 3].y;
}
