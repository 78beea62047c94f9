/*
 * The compute subset of the Metal standard library, for the CPU device.
 *
 * Kernels written in Metal Shading Language are compiled as C++17 by clang
 * with this header forced in first (-include). The CPU device's MSL front
 * end (src/backends/cpu/cpu_msl.c) has already rewritten the few spots C++
 * cannot take as they are (vector constructors, threadgroup variables,
 * function constants) and appended one C entry point per kernel that runs a
 * threadgroup; everything else is plain C++ against the names below.
 *
 * Vectors are clang's ext_vector_type, so swizzles (v.xy, v.zyx = ...) and
 * component-wise operators are the compiler's own. half is a class (clang
 * 14 has no _Float16 on x86-64) with float arithmetic rounded back to half
 * at every store, and its vectors are small structs without swizzles.
 *
 * Threads of a group run as fibers (Boost.Context's jump_fcontext, a few ns
 * per switch) when the source uses barriers or SIMD-group functions; else
 * the entry point is a plain loop over the group's threads.
 */
#ifndef MC_MSL_CPU_H
#define MC_MSL_CPU_H

#include <stddef.h>
#include <stdint.h>

#include "mc/mc_cpu_kernel.h"

#ifdef __CUDA__
/* The CUDA device's build of the same header (clang -x cuda, see
 * mc_msl_cuda.h): every function is host and device, libm is libdevice's,
 * threads are the GPU's own. */
#pragma clang force_cuda_host_device begin
#define MC_LIBM(f) __nv_##f
extern "C" int __nv_ilogbf(float);
extern "C" float __nv_acosf(float);
extern "C" float __nv_acoshf(float);
extern "C" float __nv_asinf(float);
extern "C" float __nv_asinhf(float);
extern "C" float __nv_atan2f(float, float);
extern "C" float __nv_atanf(float);
extern "C" float __nv_atanhf(float);
extern "C" float __nv_ceilf(float);
extern "C" float __nv_copysignf(float, float);
extern "C" float __nv_cosf(float);
extern "C" float __nv_coshf(float);
extern "C" float __nv_exp2f(float);
extern "C" float __nv_expf(float);
extern "C" float __nv_fabsf(float);
extern "C" float __nv_fdimf(float, float);
extern "C" float __nv_floorf(float);
extern "C" float __nv_fmaf(float, float, float);
extern "C" float __nv_fmaxf(float, float);
extern "C" float __nv_fminf(float, float);
extern "C" float __nv_fmodf(float, float);
extern "C" float __nv_frexpf(float, int *);
extern "C" float __nv_ldexpf(float, int);
extern "C" float __nv_log10f(float);
extern "C" float __nv_log2f(float);
extern "C" float __nv_logf(float);
extern "C" float __nv_modff(float, float *);
extern "C" float __nv_powf(float, float);
extern "C" float __nv_rintf(float);
extern "C" float __nv_roundf(float);
extern "C" float __nv_sinf(float);
extern "C" float __nv_sinhf(float);
extern "C" float __nv_sqrtf(float);
extern "C" float __nv_tanf(float);
extern "C" float __nv_tanhf(float);
extern "C" float __nv_truncf(float);
#else
#include <stdlib.h>
#include <sys/mman.h>
#define MC_LIBM(f) __builtin_##f
#endif

#ifndef MC_MSL_MAX_TGMEM
#define MC_MSL_MAX_TGMEM 32768
#endif

/* Address spaces are one flat memory here; constant memory is read-only,
 * so `constant T&` arguments are const (and copied by the entry point). */
#define device
#define constant const
#define thread
/* kernels inline into the loop or fiber that runs a threadgroup (CPU), or
 * into the __global__ entry point (CUDA: device code, for __shared__) */
#ifdef __CUDA__
#define kernel __attribute__((__device__)) __attribute__((always_inline)) inline
#else
#define kernel __attribute__((always_inline)) inline
#endif
#define MC_MSL_STR2(x) #x
#define MC_MSL_STR(x) MC_MSL_STR2(x)
#ifdef __CUDA__
#define MC_TG_VAR __attribute__((__shared__))
#else
#define MC_TG_VAR static thread_local
#endif

typedef unsigned char uchar;
typedef unsigned short ushort;
typedef unsigned int uint;
typedef unsigned long ulong;

namespace mc {
template <class T> struct is_int { static constexpr bool value = false; };
#define MC__INT(T) \
    template <> struct is_int<T> { static constexpr bool value = true; };
MC__INT(bool)
MC__INT(char)
MC__INT(signed char)
MC__INT(unsigned char)
MC__INT(short)
MC__INT(unsigned short)
MC__INT(int)
MC__INT(unsigned int)
MC__INT(long)
MC__INT(unsigned long)
MC__INT(long long)
MC__INT(unsigned long long)
#undef MC__INT
template <class A, class B> struct same { static constexpr bool value = false; };
template <class A> struct same<A, A> { static constexpr bool value = true; };
template <bool C, class T = void> struct enable_if {};
template <class T> struct enable_if<true, T> { typedef T type; };
template <class T> struct remove_ref { typedef T type; };
template <class T> struct remove_ref<T &> { typedef T type; };
template <class T> struct remove_cv { typedef T type; };
template <class T> struct remove_cv<const T> { typedef T type; };
template <class T> struct remove_cv<volatile T> { typedef T type; };
template <class T> struct remove_cv<const volatile T> { typedef T type; };

/* ext_vector_type traits */
template <class T> struct vec_traits {
    static constexpr int n = 0;
    typedef T elem;
};
template <class T, int N> using vec __attribute__((ext_vector_type(N))) = T;
#define MC__VT(T)                              \
    template <> struct vec_traits<vec<T, 2>> { \
        static constexpr int n = 2;            \
        typedef T elem;                        \
    };                                         \
    template <> struct vec_traits<vec<T, 3>> { \
        static constexpr int n = 3;            \
        typedef T elem;                        \
    };                                         \
    template <> struct vec_traits<vec<T, 4>> { \
        static constexpr int n = 4;            \
        typedef T elem;                        \
    };
MC__VT(float)
MC__VT(int)
MC__VT(uint)
MC__VT(short)
MC__VT(ushort)
MC__VT(char)
MC__VT(uchar)
MC__VT(long)
MC__VT(ulong)
#undef MC__VT
template <class T> constexpr bool is_vec = vec_traits<T>::n != 0;
template <class T> constexpr bool is_float_like = same<T, float>::value;
} // namespace mc

#define MC__VECS(T)             \
    typedef mc::vec<T, 2> T##2; \
    typedef mc::vec<T, 3> T##3; \
    typedef mc::vec<T, 4> T##4;
MC__VECS(float)
MC__VECS(int)
MC__VECS(uint)
MC__VECS(short)
MC__VECS(ushort)
MC__VECS(char)
MC__VECS(uchar)
MC__VECS(long)
MC__VECS(ulong)
#undef MC__VECS
/* Comparisons of ext vectors give integer masks (all ones for true); bool
 * vectors are such masks here (see docs/MSL.md). */
typedef int2 bool2;
typedef int3 bool3;
typedef int4 bool4;

/* ---- half -------------------------------------------------------------- */
namespace mc {
static inline uint16_t f2h(float f) {
    uint32_t x;
    __builtin_memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000u, ex = (x >> 23) & 0xffu, man = x & 0x7fffffu;
    if (ex == 0xffu) return (uint16_t)(sign | 0x7c00u | (man ? 0x200u | (man >> 13) : 0u));
    int e = (int)ex - 127 + 15;
    if (e >= 31) return (uint16_t)(sign | 0x7c00u);
    if (e <= 0) {
        if (e < -10) return (uint16_t)sign;
        man |= 0x800000u;
        uint32_t shift = (uint32_t)(14 - e);
        uint32_t h = man >> shift, rem = man & ((1u << shift) - 1u), half_ = 1u << (shift - 1u);
        if (rem > half_ || (rem == half_ && (h & 1u))) h++;
        return (uint16_t)(sign | h);
    }
    uint32_t h = ((uint32_t)e << 10) | (man >> 13), rem = man & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) h++; /* may carry into the exponent: still right */
    return (uint16_t)(sign | h);
}
static inline float h2f(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, ex = (h >> 10) & 0x1fu, man = h & 0x3ffu, x;
    if (ex == 0x1fu) x = sign | 0x7f800000u | (man << 13);
    else if (ex) x = sign | ((ex + 112u) << 23) | (man << 13);
    else if (!man) x = sign;
    else {
        int e = -1;
        do {
            man <<= 1;
            e++;
        } while (!(man & 0x400u));
        x = sign | ((uint32_t)(112 - e) << 23) | ((man & 0x3ffu) << 13);
    }
    float f;
    __builtin_memcpy(&f, &x, 4);
    return f;
}
} // namespace mc

struct half {
    uint16_t bits;
    half() = default;
    constexpr half(const half &) = default;
    half(float f) : bits(mc::f2h(f)) {}
    half(double f) : bits(mc::f2h((float)f)) {}
    half(int i) : bits(mc::f2h((float)i)) {}
    half(uint i) : bits(mc::f2h((float)i)) {}
    half(long i) : bits(mc::f2h((float)i)) {}
    half(ulong i) : bits(mc::f2h((float)i)) {}
    half(short i) : bits(mc::f2h((float)i)) {}
    half(ushort i) : bits(mc::f2h((float)i)) {}
    half &operator=(const half &) = default;
    operator float() const { return mc::h2f(bits); }
    half &operator+=(half o) { return *this = half(float(*this) + float(o)); }
    half &operator-=(half o) { return *this = half(float(*this) - float(o)); }
    half &operator*=(half o) { return *this = half(float(*this) * float(o)); }
    half &operator/=(half o) { return *this = half(float(*this) / float(o)); }
};
static inline half operator+(half a, half b) { return half(float(a) + float(b)); }
static inline half operator-(half a, half b) { return half(float(a) - float(b)); }
static inline half operator*(half a, half b) { return half(float(a) * float(b)); }
static inline half operator/(half a, half b) { return half(float(a) / float(b)); }
static inline half operator-(half a) {
    half r = a;
    r.bits ^= 0x8000u;
    return r;
}
static inline half operator""_h(long double d) { return half((float)d); }

/* half vectors are structs (clang's ext vectors of a class type do not
 * exist), so their swizzles are members too: every swizzle of 2 to 4
 * components (xy, zyx, xxxx, and the rgba forms) is a union member over
 * the vector's storage (hswz), read as the vector of its components and
 * written component by component, as MSL defines them. */
namespace mc {
/* D (always void) makes the vectors partial specialisations: their ~1,200
 * swizzle members are instantiated only in a kernel that uses half vectors */
template <int N, class D = void> struct hvec;
template <int... I> constexpr bool distinct_components() {
    const int c[] = {I...};
    for (unsigned a = 0; a < sizeof...(I); a++)
        for (unsigned b = a + 1; b < sizeof...(I); b++)
            if (c[a] == c[b]) return false;
    return true;
}
template <class D, int N, int... I> struct hswz {
    static constexpr int K = sizeof...(I);
    half v[N]; /* the whole vector: every member of the union starts here */
    /* defined here, used once hvec is complete (at is found then) */
    operator hvec<K>() const {
        hvec<K> r;
        int k = 0;
        ((at(r, k++) = v[I]), ...);
        return r;
    }
    hswz &operator=(const hvec<K> &o) {
        static_assert(distinct_components<I...>(), "a swizzle that names a component twice cannot be assigned to");
        const hvec<K> t = o; /* o may be this vector itself (h.xy = h.yx) */
        int k = 0;
        ((v[I] = at(t, k++)), ...);
        return *this;
    }
    /* another swizzle of the same pattern: its components, not its storage */
    hswz &operator=(const hswz &o) { return *this = hvec<K>(o); }
    template <class E, int M, int... J> hswz &operator=(const hswz<E, M, J...> &o) {
        return *this = hvec<K>(hvec<sizeof...(J)>(o));
    }
};
} // namespace mc
/* The members: MC__HL<level><N><set>(F, args...) calls F(args..., name,
 * index) for each of the N components; one family a level, since a macro
 * cannot expand inside itself. */
#define MC__HLA2x(F, ...) F(__VA_ARGS__, x, 0) F(__VA_ARGS__, y, 1)
#define MC__HLA3x(F, ...) MC__HLA2x(F, __VA_ARGS__) F(__VA_ARGS__, z, 2)
#define MC__HLA4x(F, ...) MC__HLA3x(F, __VA_ARGS__) F(__VA_ARGS__, w, 3)
#define MC__HLB2x(F, ...) F(__VA_ARGS__, x, 0) F(__VA_ARGS__, y, 1)
#define MC__HLB3x(F, ...) MC__HLB2x(F, __VA_ARGS__) F(__VA_ARGS__, z, 2)
#define MC__HLB4x(F, ...) MC__HLB3x(F, __VA_ARGS__) F(__VA_ARGS__, w, 3)
#define MC__HLC2x(F, ...) F(__VA_ARGS__, x, 0) F(__VA_ARGS__, y, 1)
#define MC__HLC3x(F, ...) MC__HLC2x(F, __VA_ARGS__) F(__VA_ARGS__, z, 2)
#define MC__HLC4x(F, ...) MC__HLC3x(F, __VA_ARGS__) F(__VA_ARGS__, w, 3)
#define MC__HLD2x(F, ...) F(__VA_ARGS__, x, 0) F(__VA_ARGS__, y, 1)
#define MC__HLD3x(F, ...) MC__HLD2x(F, __VA_ARGS__) F(__VA_ARGS__, z, 2)
#define MC__HLD4x(F, ...) MC__HLD3x(F, __VA_ARGS__) F(__VA_ARGS__, w, 3)
#define MC__HLA2r(F, ...) F(__VA_ARGS__, r, 0) F(__VA_ARGS__, g, 1)
#define MC__HLA3r(F, ...) MC__HLA2r(F, __VA_ARGS__) F(__VA_ARGS__, b, 2)
#define MC__HLA4r(F, ...) MC__HLA3r(F, __VA_ARGS__) F(__VA_ARGS__, a, 3)
#define MC__HLB2r(F, ...) F(__VA_ARGS__, r, 0) F(__VA_ARGS__, g, 1)
#define MC__HLB3r(F, ...) MC__HLB2r(F, __VA_ARGS__) F(__VA_ARGS__, b, 2)
#define MC__HLB4r(F, ...) MC__HLB3r(F, __VA_ARGS__) F(__VA_ARGS__, a, 3)
#define MC__HLC2r(F, ...) F(__VA_ARGS__, r, 0) F(__VA_ARGS__, g, 1)
#define MC__HLC3r(F, ...) MC__HLC2r(F, __VA_ARGS__) F(__VA_ARGS__, b, 2)
#define MC__HLC4r(F, ...) MC__HLC3r(F, __VA_ARGS__) F(__VA_ARGS__, a, 3)
#define MC__HLD2r(F, ...) F(__VA_ARGS__, r, 0) F(__VA_ARGS__, g, 1)
#define MC__HLD3r(F, ...) MC__HLD2r(F, __VA_ARGS__) F(__VA_ARGS__, b, 2)
#define MC__HLD4r(F, ...) MC__HLD3r(F, __VA_ARGS__) F(__VA_ARGS__, a, 3)
#define MC__HS1(N, S, c0, i0) MC__HLB##N##S(MC__HS2, N, S, c0, i0)
#define MC__HS2(N, S, c0, i0, c1, i1) \
    mc::hswz<D, N, i0, i1> c0##c1;    \
    MC__HLC##N##S(MC__HS3, N, S, c0, i0, c1, i1)
#define MC__HS3(N, S, c0, i0, c1, i1, c2, i2) \
    mc::hswz<D, N, i0, i1, i2> c0##c1##c2;    \
    MC__HLD##N##S(MC__HS4, N, S, c0, i0, c1, i1, c2, i2)
#define MC__HS4(N, S, c0, i0, c1, i1, c2, i2, c3, i3) mc::hswz<D, N, i0, i1, i2, i3> c0##c1##c2##c3;
#define MC__HSWIZZLES(N) MC__HLA##N##x(MC__HS1, N, x) MC__HLA##N##r(MC__HS1, N, r)
namespace mc {
/* The union's copy assignment is deleted (a swizzle assigns components, not
 * storage), so the vector copies its storage itself. */
#define MC__HVEC_COPY                                                   \
    hvec &operator=(const hvec &o) {                                    \
        __builtin_memcpy((void *)this, (const void *)&o, sizeof *this); \
        return *this;                                                   \
    }
template <class D> struct hvec<2, D> {
    union {
        struct {
            half x, y;
        };
        struct {
            half r, g;
        };
        MC__HSWIZZLES(2)
    };
    MC__HVEC_COPY
};
template <class D> struct hvec<3, D> {
    union {
        struct {
            half x, y, z;
        };
        struct {
            half r, g, b;
        };
        MC__HSWIZZLES(3)
    };
    MC__HVEC_COPY
};
template <class D> struct hvec<4, D> {
    union {
        struct {
            half x, y, z, w;
        };
        struct {
            half r, g, b, a;
        };
        MC__HSWIZZLES(4)
    };
    MC__HVEC_COPY
};
#undef MC__HVEC_COPY
} // namespace mc
typedef mc::hvec<2> half2;
typedef mc::hvec<3> half3;
typedef mc::hvec<4> half4;
namespace mc {
template <int N> struct vec_traits<hvec<N>> {
    static constexpr int n = N;
    typedef half elem;
};
template <class D, int N, int... I> struct vec_traits<hswz<D, N, I...>> {
    static constexpr int n = sizeof...(I);
    typedef half elem;
};
template <int N> static inline half &at(hvec<N> &v, int i) { return (&v.x)[i]; }
template <int N> static inline half at(const hvec<N> &v, int i) { return (&v.x)[i]; }

template <int N> static inline vec<float, N> widen(const hvec<N> &v) {
    vec<float, N> r;
    for (int i = 0; i < N; i++) r[i] = float(at(v, i));
    return r;
}
template <int N> static inline hvec<N> narrow(vec<float, N> v) {
    hvec<N> r;
    for (int i = 0; i < N; i++) at(r, i) = half(v[i]);
    return r;
}
} // namespace mc
#define MC__HOP(op)                                                                                      \
    template <int N> static inline mc::hvec<N> operator op(const mc::hvec<N> &a, const mc::hvec<N> &b) { \
        return mc::narrow<N>(mc::widen(a) op mc::widen(b));                                              \
    }                                                                                                    \
    template <int N> static inline mc::hvec<N> operator op(const mc::hvec<N> &a, half b) {               \
        return mc::narrow<N>(mc::widen(a) op float(b));                                                  \
    }                                                                                                    \
    template <int N> static inline mc::hvec<N> operator op(half a, const mc::hvec<N> &b) {               \
        return mc::narrow<N>(float(a) op mc::widen(b));                                                  \
    }                                                                                                    \
    template <int N> static inline mc::hvec<N> &operator op##=(mc::hvec<N> &a, const mc::hvec<N> &b) {   \
        return a = a op b;                                                                               \
    }
MC__HOP(+)
MC__HOP(-)
MC__HOP(*)
MC__HOP(/)
#undef MC__HOP
/* a swizzle computes as the vector of its components */
#define MC__HSOP(op)                                                                               \
    template <class D, int N, int... I, class B>                                                   \
    static inline auto operator op(const mc::hswz<D, N, I...> &a, const B &b) {                    \
        return mc::hvec<sizeof...(I)>(a) op b;                                                     \
    }                                                                                              \
    template <class A, class D, int N, int... I>                                                   \
    static inline auto operator op(const A &a, const mc::hswz<D, N, I...> &b) {                    \
        return a op mc::hvec<sizeof...(I)>(b);                                                     \
    }                                                                                              \
    template <class D, int N, int... I, class E, int M, int... J>                                  \
    static inline auto operator op(const mc::hswz<D, N, I...> &a, const mc::hswz<E, M, J...> &b) { \
        return mc::hvec<sizeof...(I)>(a) op mc::hvec<sizeof...(J)>(b);                             \
    }                                                                                              \
    template <class D, int N, int... I, class B>                                                   \
    static inline mc::hswz<D, N, I...> &operator op##=(mc::hswz<D, N, I...> &a, const B &b) {      \
        return a = mc::hvec<sizeof...(I)>(a) op b;                                                 \
    }
MC__HSOP(+)
MC__HSOP(-)
MC__HSOP(*)
MC__HSOP(/)
#undef MC__HSOP

/* ---- construction: float4(a.xy, b), float3(1.0f), float2(int2) ------------ */
namespace mc {
template <class V> struct builder {
    typedef typename vec_traits<V>::elem E;
    V v;
    int i = 0;
    template <class S> void put(S s, typename enable_if<!is_vec<S>>::type * = 0) { set(i++, (E)s); }
    template <class S> void put(const S &s, typename enable_if<is_vec<S>>::type * = 0) {
        for (int k = 0; k < vec_traits<S>::n; k++) set(i++, (E)get(s, k));
    }
    template <class S> static auto get(const S &s, int k) { return s[k]; }
    template <int N> static half get(const hvec<N> &s, int k) { return at(s, k); }
    template <class D, int N, int... I> static half get(const hswz<D, N, I...> &s, int k) {
        const int c[] = {I...};
        return s.v[c[k]];
    }
    void set(int k, E e) { v[k] = e; }
};
template <int N> struct builder<hvec<N>> {
    hvec<N> v;
    int i = 0;
    template <class S> void put(S s, typename enable_if<!is_vec<S>>::type * = 0) { at(v, i++) = half((float)s); }
    template <class S> void put(const S &s, typename enable_if<is_vec<S>>::type * = 0) {
        for (int k = 0; k < vec_traits<S>::n; k++) at(v, i++) = half((float)builder<vec<float, 2>>::get(s, k));
    }
};
template <class V, class... A> static inline V make(const A &...a) {
    builder<V> b;
    if constexpr (sizeof...(A) == 1 && (!is_vec<A> && ...)) {
        for (int k = 0; k < vec_traits<V>::n; k++) b.put(a...);
    } else {
        (b.put(a), ...);
    }
    return b.v;
}
} // namespace mc

/* ---- packed vectors: no padding, converted to vectors to compute --------- */
namespace mc {
template <class T, int N> struct packed_members;
template <class T> struct packed_members<T, 2> { T x, y; };
template <class T> struct packed_members<T, 3> { T x, y, z; };
template <class T> struct packed_members<T, 4> { T x, y, z, w; };
template <class T, int N> struct packed : packed_members<T, N> {
    packed() = default;
    packed(vec<T, N> v) {
        for (int i = 0; i < N; i++) (*this)[i] = v[i];
    }
    operator vec<T, N>() const {
        vec<T, N> r;
        for (int i = 0; i < N; i++) r[i] = (*this)[i];
        return r;
    }
    T &operator[](int i) { return (&this->x)[i]; }
    T operator[](int i) const { return (&this->x)[i]; }
};
template <class T, int N> struct vec_traits<packed<T, N>> {
    static constexpr int n = N;
    typedef T elem;
};
} // namespace mc
#define MC__PACKED(T)                       \
    typedef mc::packed<T, 2> packed_##T##2; \
    typedef mc::packed<T, 3> packed_##T##3; \
    typedef mc::packed<T, 4> packed_##T##4;
MC__PACKED(float)
MC__PACKED(int)
MC__PACKED(uint)
MC__PACKED(short)
MC__PACKED(ushort)
MC__PACKED(char)
MC__PACKED(uchar)
#undef MC__PACKED
#define MC__POP(op)                                                                                               \
    template <class T, int N, class B> static inline auto operator op(const mc::packed<T, N> &a, const B &b) {    \
        return mc::vec<T, N>(a) op b;                                                                             \
    }                                                                                                             \
    template <class T, int N> static inline auto operator op(const mc::vec<T, N> &a, const mc::packed<T, N> &b) { \
        return a op mc::vec<T, N>(b);                                                                             \
    }
MC__POP(+)
MC__POP(-)
MC__POP(*)
MC__POP(/)
#undef MC__POP

/* ---- as_type ---------------------------------------------------------------- */
template <class To, class From> static inline To as_type(const From &f) {
    static_assert(sizeof(To) == sizeof(From), "as_type: the two types differ in size");
    To t;
    __builtin_memcpy(&t, &f, sizeof t);
    return t;
}

/* ---- matrices: floatCxR and halfCxR (C columns of R rows), column-major ----
 * m[c] is column c (a vector), m[c][r] one element. Built from a scalar (the
 * diagonal), from C column vectors or from C*R scalars in column order.
 * Arithmetic is in float; half matrices round at every store, like half. */
namespace mc {
template <class T, int R> struct col_of { typedef vec<T, R> type; };
template <int R> struct col_of<half, R> { typedef hvec<R> type; };
template <class V> static inline float melem(const V &v, int i) { return (float)v[i]; }
template <int N> static inline float melem(const hvec<N> &v, int i) { return float(at(v, i)); }
template <class V> static inline void mset(V &v, int i, float f) { v[i] = f; }
template <int N> static inline void mset(hvec<N> &v, int i, float f) { at(v, i) = half(f); }
template <class T, int C, int R> struct mat {
    typedef typename col_of<T, R>::type column;
    column columns[C];
    mat() = default;
    template <class A0, class... A> explicit mat(const A0 &a0, const A &...a) {
        if constexpr (sizeof...(A) == 0 && !is_vec<A0>) { /* the diagonal */
            for (int c = 0; c < C; c++)
                for (int r = 0; r < R; r++) set(c, r, c == r ? (float)a0 : 0.0f);
        } else if constexpr (sizeof...(A) + 1 == C && is_vec<A0>) { /* columns */
            static_assert(((vec_traits<A>::n == R) && ...) && vec_traits<A0>::n == R,
                          "a matrix's columns are vectors of its row count");
            put_column(0, a0);
            int c = 1;
            (put_column(c++, a), ...);
        } else { /* every element, column by column */
            static_assert(sizeof...(A) + 1 == C * R, "a matrix takes one scalar, its columns or every element");
            float e[C * R] = {(float)a0, (float)a...};
            for (int k = 0; k < C * R; k++) set(k / R, k % R, e[k]);
        }
    }
    template <class V> void put_column(int c, const V &v) {
        for (int r = 0; r < R; r++) set(c, r, melem(v, r));
    }
    float get(int c, int r) const { return melem(columns[c], r); }
    void set(int c, int r, float f) { mset(columns[c], r, f); }
    column &operator[](int c) { return columns[c]; }
    const column &operator[](int c) const { return columns[c]; }
};
template <class T> struct is_mat_t { static constexpr bool value = false; };
template <class T, int C, int R> struct is_mat_t<mat<T, C, R>> { static constexpr bool value = true; };
template <class T> constexpr bool is_mat = is_mat_t<T>::value;

#define MC__MAT_EW(op)                                                                     \
    template <class T, int C, int R>                                                       \
    static inline mat<T, C, R> operator op(const mat<T, C, R> &a, const mat<T, C, R> &b) { \
        mat<T, C, R> m;                                                                    \
        for (int c = 0; c < C; c++)                                                        \
            for (int r = 0; r < R; r++) m.set(c, r, a.get(c, r) op b.get(c, r));           \
        return m;                                                                          \
    }                                                                                      \
    template <class T, int C, int R>                                                       \
    static inline mat<T, C, R> &operator op##=(mat<T, C, R> &a, const mat<T, C, R> &b) {   \
        return a = a op b;                                                                 \
    }
MC__MAT_EW(+)
MC__MAT_EW(-)
#undef MC__MAT_EW
template <class T, int C, int R> static inline mat<T, C, R> operator-(const mat<T, C, R> &a) {
    mat<T, C, R> m;
    for (int c = 0; c < C; c++)
        for (int r = 0; r < R; r++) m.set(c, r, -a.get(c, r));
    return m;
}
/* matrix * scalar, scalar * matrix */
template <class T, int C, int R, class S, class = typename enable_if<!is_vec<S> && !is_mat<S>>::type>
static inline mat<T, C, R> operator*(const mat<T, C, R> &a, const S &s) {
    mat<T, C, R> m;
    for (int c = 0; c < C; c++)
        for (int r = 0; r < R; r++) m.set(c, r, a.get(c, r) * (float)s);
    return m;
}
template <class T, int C, int R, class S, class = typename enable_if<!is_vec<S> && !is_mat<S>>::type>
static inline mat<T, C, R> operator*(const S &s, const mat<T, C, R> &a) {
    return a * s;
}
/* matrix * column vector (C components) -> R components */
template <class T, int C, int R, class V, class = typename enable_if<vec_traits<V>::n == C>::type>
static inline typename col_of<T, R>::type operator*(const mat<T, C, R> &a, const V &v) {
    typename col_of<T, R>::type out;
    for (int r = 0; r < R; r++) {
        float acc = 0.0f;
        for (int c = 0; c < C; c++) acc += a.get(c, r) * melem(v, c);
        mset(out, r, acc);
    }
    return out;
}
/* row vector (R components) * matrix -> C components */
template <class T, int C, int R, class V, class = typename enable_if<vec_traits<V>::n == R>::type>
static inline typename col_of<T, C>::type operator*(const V &v, const mat<T, C, R> &a) {
    typename col_of<T, C>::type out;
    for (int c = 0; c < C; c++) {
        float acc = 0.0f;
        for (int r = 0; r < R; r++) acc += melem(v, r) * a.get(c, r);
        mset(out, c, acc);
    }
    return out;
}
/* (K columns, R rows) = (C columns, R rows) * (K columns, C rows) */
template <class T, int C, int R, int K>
static inline mat<T, K, R> operator*(const mat<T, C, R> &a, const mat<T, K, C> &b) {
    mat<T, K, R> m;
    for (int k = 0; k < K; k++)
        for (int r = 0; r < R; r++) {
            float acc = 0.0f;
            for (int c = 0; c < C; c++) acc += a.get(c, r) * b.get(k, c);
            m.set(k, r, acc);
        }
    return m;
}
template <class T, int C, int R, class S, class = typename enable_if<!is_vec<S>>::type>
static inline mat<T, C, R> &operator*=(mat<T, C, R> &a, const S &s) {
    return a = a * s;
}
template <class T, int N> static inline float det(const mat<T, N, N> &m) {
    if constexpr (N == 2) {
        return m.get(0, 0) * m.get(1, 1) - m.get(1, 0) * m.get(0, 1);
    } else {
        float d = 0.0f, sign = 1.0f; /* expansion along row 0 */
        for (int j = 0; j < N; j++, sign = -sign) {
            mat<float, N - 1, N - 1> minor;
            for (int c = 0, k = 0; c < N; c++) {
                if (c == j) continue;
                for (int r = 1; r < N; r++) minor.set(k, r - 1, m.get(c, r));
                k++;
            }
            d += sign * m.get(j, 0) * det(minor);
        }
        return d;
    }
}
} // namespace mc
#define MC__MATS(T)                  \
    typedef mc::mat<T, 2, 2> T##2x2; \
    typedef mc::mat<T, 2, 3> T##2x3; \
    typedef mc::mat<T, 2, 4> T##2x4; \
    typedef mc::mat<T, 3, 2> T##3x2; \
    typedef mc::mat<T, 3, 3> T##3x3; \
    typedef mc::mat<T, 3, 4> T##3x4; \
    typedef mc::mat<T, 4, 2> T##4x2; \
    typedef mc::mat<T, 4, 3> T##4x3; \
    typedef mc::mat<T, 4, 4> T##4x4;
MC__MATS(float)
MC__MATS(half)
#undef MC__MATS
namespace metal {
template <class T, int C, int R> using matrix = mc::mat<T, C, R>;
template <class T, int N> using vec = typename mc::col_of<T, N>::type; /* vec<float, 4> is float4 */
template <class T, int C, int R> static inline mc::mat<T, R, C> transpose(const mc::mat<T, C, R> &m) {
    mc::mat<T, R, C> t;
    for (int c = 0; c < C; c++)
        for (int r = 0; r < R; r++) t.set(r, c, m.get(c, r));
    return t;
}
template <class T, int N> static inline T determinant(const mc::mat<T, N, N> &m) { return T(mc::det(m)); }
} // namespace metal

namespace metal {
/* ---- math ------------------------------------------------------------------ */
#define MC__UNARY(name, fn)                                                      \
    static inline float name(float x) { return fn(x); }                          \
    static inline half name(half x) { return half(fn(float(x))); }               \
    template <int N> static inline mc::vec<float, N> name(mc::vec<float, N> v) { \
        for (int i = 0; i < N; i++) v[i] = fn(v[i]);                             \
        return v;                                                                \
    }                                                                            \
    template <int N> static inline mc::hvec<N> name(const mc::hvec<N> &v) { return mc::narrow<N>(name(mc::widen(v))); }
#define MC__BINARY(name, fn)                                                                          \
    static inline float name(float x, float y) { return fn(x, y); }                                   \
    static inline half name(half x, half y) { return half(fn(float(x), float(y))); }                  \
    template <int N> static inline mc::vec<float, N> name(mc::vec<float, N> a, mc::vec<float, N> b) { \
        for (int i = 0; i < N; i++) a[i] = fn(a[i], b[i]);                                            \
        return a;                                                                                     \
    }                                                                                                 \
    template <int N> static inline mc::vec<float, N> name(mc::vec<float, N> a, float b) {             \
        for (int i = 0; i < N; i++) a[i] = fn(a[i], b);                                               \
        return a;                                                                                     \
    }
static inline float mc_rsqrt(float x) { return 1.0f / MC_LIBM(sqrtf)(x); }
static inline float mc_fract(float x) {
    float f = x - MC_LIBM(floorf)(x);
    return f < 0x1.fffffep-1f ? f : 0x1.fffffep-1f;
}
static inline float mc_exp10(float x) { return MC_LIBM(powf)(10.0f, x); }
static inline float mc_sinpi(float x) { return MC_LIBM(sinf)(x * 3.14159265358979f); }
static inline float mc_cospi(float x) { return MC_LIBM(cosf)(x * 3.14159265358979f); }
static inline float mc_tanpi(float x) { return MC_LIBM(tanf)(x * 3.14159265358979f); }
static inline float mc_saturate(float x) { return MC_LIBM(fminf)(MC_LIBM(fmaxf)(x, 0.0f), 1.0f); }
static inline float mc_sign(float x) { return x > 0.0f ? 1.0f : x < 0.0f ? -1.0f : x == x ? 0.0f * x : 0.0f; }
static inline float mc_divide(float x, float y) { return x / y; }
static inline float mc_powr(float x, float y) { return MC_LIBM(powf)(x, y); }
static inline float mc_fmin(float x, float y) { return MC_LIBM(fminf)(x, y); }
static inline float mc_fmax(float x, float y) { return MC_LIBM(fmaxf)(x, y); }
static inline float mc_step(float e, float x) { return x < e ? 0.0f : 1.0f; }
#define MC__MATH_FUNCS                       \
    MC__UNARY(fabs, MC_LIBM(fabsf))          \
    MC__UNARY(acos, MC_LIBM(acosf))          \
    MC__UNARY(acosh, MC_LIBM(acoshf))        \
    MC__UNARY(asin, MC_LIBM(asinf))          \
    MC__UNARY(asinh, MC_LIBM(asinhf))        \
    MC__UNARY(atan, MC_LIBM(atanf))          \
    MC__UNARY(atanh, MC_LIBM(atanhf))        \
    MC__UNARY(ceil, MC_LIBM(ceilf))          \
    MC__UNARY(cos, MC_LIBM(cosf))            \
    MC__UNARY(cosh, MC_LIBM(coshf))          \
    MC__UNARY(cospi, mc_cospi)               \
    MC__UNARY(exp, MC_LIBM(expf))            \
    MC__UNARY(exp2, MC_LIBM(exp2f))          \
    MC__UNARY(exp10, mc_exp10)               \
    MC__UNARY(floor, MC_LIBM(floorf))        \
    MC__UNARY(fract, mc_fract)               \
    MC__UNARY(log, MC_LIBM(logf))            \
    MC__UNARY(log2, MC_LIBM(log2f))          \
    MC__UNARY(log10, MC_LIBM(log10f))        \
    MC__UNARY(rint, MC_LIBM(rintf))          \
    MC__UNARY(round, MC_LIBM(roundf))        \
    MC__UNARY(rsqrt, mc_rsqrt)               \
    MC__UNARY(sin, MC_LIBM(sinf))            \
    MC__UNARY(sinh, MC_LIBM(sinhf))          \
    MC__UNARY(sinpi, mc_sinpi)               \
    MC__UNARY(sqrt, MC_LIBM(sqrtf))          \
    MC__UNARY(tan, MC_LIBM(tanf))            \
    MC__UNARY(tanh, MC_LIBM(tanhf))          \
    MC__UNARY(tanpi, mc_tanpi)               \
    MC__UNARY(trunc, MC_LIBM(truncf))        \
    MC__UNARY(saturate, mc_saturate)         \
    MC__UNARY(sign, mc_sign)                 \
    MC__BINARY(atan2, MC_LIBM(atan2f))       \
    MC__BINARY(copysign, MC_LIBM(copysignf)) \
    MC__BINARY(fdim, MC_LIBM(fdimf))         \
    MC__BINARY(fmod, MC_LIBM(fmodf))         \
    MC__BINARY(pow, MC_LIBM(powf))           \
    MC__BINARY(powr, mc_powr)                \
    MC__BINARY(fmin, mc_fmin)                \
    MC__BINARY(fmax, mc_fmax)                \
    MC__BINARY(divide, mc_divide)            \
    MC__BINARY(step, mc_step)
MC__MATH_FUNCS
/* precise:: is what the plain names compute here (libm, correctly handled
 * edge cases); fast:: is the same code: the CPU device never trades
 * accuracy for speed, a Mac's fast:: may differ in the last bits. */
namespace precise {
MC__MATH_FUNCS
}
namespace fast {
MC__MATH_FUNCS
}
#undef MC__MATH_FUNCS

static inline float fma(float a, float b, float c) { return MC_LIBM(fmaf)(a, b, c); }
template <int N> static inline mc::vec<float, N> fma(mc::vec<float, N> a, mc::vec<float, N> b, mc::vec<float, N> c) {
    for (int i = 0; i < N; i++) a[i] = MC_LIBM(fmaf)(a[i], b[i], c[i]);
    return a;
}
static inline float ldexp(float x, int e) { return MC_LIBM(ldexpf)(x, e); }
static inline float frexp(float x, thread int &e) { return MC_LIBM(frexpf)(x, &e); }
static inline float modf(float x, thread float &ip) { return MC_LIBM(modff)(x, &ip); }
static inline int ilogb(float x) { return MC_LIBM(ilogbf)(x); }
static inline float sincos(float x, thread float &c) {
    c = MC_LIBM(cosf)(x);
    return MC_LIBM(sinf)(x);
}

/* ---- common and integer functions (any scalar or ext vector) ----------- */
template <class T> static inline T mc_min1(T a, T b) { return b < a ? b : a; }
template <class T> static inline T mc_max1(T a, T b) { return a < b ? b : a; }
static inline float mc_min1(float a, float b) { return MC_LIBM(fminf)(a, b); }
static inline float mc_max1(float a, float b) { return MC_LIBM(fmaxf)(a, b); }
template <class T> static inline T min(T a, T b) {
    if constexpr (mc::is_vec<T>) {
        for (int i = 0; i < mc::vec_traits<T>::n; i++) a[i] = mc_min1(a[i], b[i]);
        return a;
    } else return mc_min1(a, b);
}
template <class T> static inline T max(T a, T b) {
    if constexpr (mc::is_vec<T>) {
        for (int i = 0; i < mc::vec_traits<T>::n; i++) a[i] = mc_max1(a[i], b[i]);
        return a;
    } else return mc_max1(a, b);
}
template <class T>
static inline T min(T a, typename mc::vec_traits<T>::elem b, typename mc::enable_if<mc::is_vec<T>>::type * = 0) {
    return min(a, (T)b);
}
template <class T>
static inline T max(T a, typename mc::vec_traits<T>::elem b, typename mc::enable_if<mc::is_vec<T>>::type * = 0) {
    return max(a, (T)b);
}
static inline half min(half a, half b) { return half(mc_min1(float(a), float(b))); }
static inline half max(half a, half b) { return half(mc_max1(float(a), float(b))); }
template <class T> static inline T clamp(T x, T lo, T hi) { return min(max(x, lo), hi); }
template <class T, class S>
static inline T clamp(T x, S lo, S hi, typename mc::enable_if<mc::is_vec<T> && !mc::is_vec<S>>::type * = 0) {
    return min(max(x, (T)lo), (T)hi);
}
template <class T> static inline T abs(T x) {
    if constexpr (mc::is_vec<T>) {
        for (int i = 0; i < mc::vec_traits<T>::n; i++) x[i] = x[i] < 0 ? -x[i] : x[i];
        return x;
    } else if constexpr (mc::same<T, float>::value) return MC_LIBM(fabsf)(x);
    else return x < 0 ? (T)-x : x;
}
static inline half abs(half x) {
    x.bits &= 0x7fffu;
    return x;
}
template <class T> static inline T mix(T a, T b, T t) { return a + (b - a) * t; }
template <class T> static inline T mix(T a, T b, float t, typename mc::enable_if<mc::is_vec<T>>::type * = 0) {
    return a + (b - a) * t;
}
template <class T> static inline T smoothstep(T e0, T e1, T x) {
    T t = clamp((x - e0) / (e1 - e0), (T)0.0f, (T)1.0f);
    return t * t * ((T)3.0f - (T)2.0f * t);
}
template <class T> static inline T absdiff(T a, T b) { return a > b ? (T)(a - b) : (T)(b - a); }
template <class T> static inline T addsat(T a, T b) {
    T r;
    if (__builtin_add_overflow(a, b, &r))
        return b > 0 ? (T) ~(T)0 > 0 ? (T) ~(T)0 : (T)((1ull << (sizeof(T) * 8 - 1)) - 1)
                     : (T)(1ull << (sizeof(T) * 8 - 1));
    return r;
}
template <class T> static inline T subsat(T a, T b) {
    T r;
    if (__builtin_sub_overflow(a, b, &r)) {
        if ((T) ~(T)0 > 0) return 0;
        return b < 0 ? (T)((1ull << (sizeof(T) * 8 - 1)) - 1) : (T)(1ull << (sizeof(T) * 8 - 1));
    }
    return r;
}
template <class T> static inline T hadd(T a, T b) { return (T)((a >> 1) + (b >> 1) + (a & b & 1)); }
template <class T> static inline T rhadd(T a, T b) { return (T)((a >> 1) + (b >> 1) + ((a | b) & 1)); }
template <class T> static inline T mulhi(T a, T b) {
    if constexpr (sizeof(T) == 8) return (T)(((__int128)a * b) >> 64);
    else return (T)(((long long)a * (long long)b) >> (sizeof(T) * 8));
}
template <class T> static inline T mad24(T a, T b, T c) { return a * b + c; }
template <class T> static inline T mul24(T a, T b) { return a * b; }
template <class T> static inline T madhi(T a, T b, T c) { return mulhi(a, b) + c; }
template <class T> static inline T popcount(T x) {
    return (T)__builtin_popcountll((unsigned long long)x & (~0ull >> (64 - sizeof(T) * 8)));
}
template <class T> static inline T clz(T x) {
    unsigned long long u = (unsigned long long)x & (~0ull >> (64 - sizeof(T) * 8));
    return (T)(u ? __builtin_clzll(u) - (64 - (int)sizeof(T) * 8) : (int)sizeof(T) * 8);
}
template <class T> static inline T ctz(T x) {
    unsigned long long u = (unsigned long long)x & (~0ull >> (64 - sizeof(T) * 8));
    return (T)(u ? __builtin_ctzll(u) : (int)sizeof(T) * 8);
}
template <class T> static inline T rotate(T v, T i) {
    const unsigned bits = sizeof(T) * 8, s = (unsigned)i % bits;
    unsigned long long u = (unsigned long long)v & (~0ull >> (64 - bits));
    return s ? (T)((u << s) | (u >> (bits - s))) : v;
}
template <class T> static inline T reverse_bits(T x) {
    T r = 0;
    for (unsigned i = 0; i < sizeof(T) * 8; i++) r = (T)((r << 1) | ((x >> i) & 1));
    return r;
}
template <class T> static inline T extract_bits(T x, uint offset, uint bits) {
    if (!bits) return 0;
    unsigned long long u = ((unsigned long long)x >> offset) & (bits >= 64 ? ~0ull : ((1ull << bits) - 1));
    if ((T) ~(T)0 < 0 && bits < sizeof(T) * 8 && (u >> (bits - 1)) & 1) u |= ~0ull << bits; /* sign-extend */
    return (T)u;
}
template <class T> static inline T insert_bits(T base, T ins, uint offset, uint bits) {
    unsigned long long mask = (bits >= 64 ? ~0ull : ((1ull << bits) - 1)) << offset;
    return (T)(((unsigned long long)base & ~mask) | (((unsigned long long)ins << offset) & mask));
}

/* ---- relational ---------------------------------------------------------- */
static inline bool isnan(float x) { return __builtin_isnan(x); }
static inline bool isinf(float x) { return __builtin_isinf(x); }
static inline bool isfinite(float x) { return __builtin_isfinite(x); }
static inline bool isnormal(float x) { return __builtin_isnormal(x); }
static inline bool isordered(float x, float y) { return !__builtin_isunordered(x, y); }
static inline bool isunordered(float x, float y) { return __builtin_isunordered(x, y); }
static inline bool signbit(float x) { return __builtin_signbit(x); }
static inline bool isnan(half x) { return isnan(float(x)); }
static inline bool isinf(half x) { return isinf(float(x)); }
static inline bool all(bool b) { return b; }
static inline bool any(bool b) { return b; }
template <class T> static inline bool all(T v, typename mc::enable_if<mc::is_vec<T>>::type * = 0) {
    for (int i = 0; i < mc::vec_traits<T>::n; i++)
        if (!v[i]) return false;
    return true;
}
template <class T> static inline bool any(T v, typename mc::enable_if<mc::is_vec<T>>::type * = 0) {
    for (int i = 0; i < mc::vec_traits<T>::n; i++)
        if (v[i]) return true;
    return false;
}
template <class T> static inline T select(T a, T b, bool c) { return c ? b : a; }
template <class T, class M>
static inline T select(T a, T b, M c, typename mc::enable_if<mc::is_vec<T> && mc::is_vec<M>>::type * = 0) {
    for (int i = 0; i < mc::vec_traits<T>::n; i++)
        if (c[i]) a[i] = b[i];
    return a;
}

/* ---- geometric ------------------------------------------------------------ */
template <class T> static inline typename mc::vec_traits<T>::elem dot(T a, T b) {
    typename mc::vec_traits<T>::elem s = 0;
    for (int i = 0; i < mc::vec_traits<T>::n; i++) s += a[i] * b[i];
    return s;
}
template <int N> static inline float length_squared(mc::vec<float, N> v) { return dot(v, v); }
template <int N> static inline float length(mc::vec<float, N> v) { return MC_LIBM(sqrtf)(dot(v, v)); }
template <int N> static inline float distance(mc::vec<float, N> a, mc::vec<float, N> b) { return length(a - b); }
template <int N> static inline float distance_squared(mc::vec<float, N> a, mc::vec<float, N> b) {
    return dot(a - b, a - b);
}
template <int N> static inline mc::vec<float, N> normalize(mc::vec<float, N> v) { return v * (1.0f / length(v)); }
static inline float3 cross(float3 a, float3 b) { return a.yzx * b.zxy - a.zxy * b.yzx; }
template <int N> static inline mc::vec<float, N> reflect(mc::vec<float, N> i, mc::vec<float, N> n) {
    return i - 2.0f * dot(n, i) * n;
}
template <int N>
static inline mc::vec<float, N> faceforward(mc::vec<float, N> n, mc::vec<float, N> i, mc::vec<float, N> r) {
    return dot(r, i) < 0.0f ? n : -n;
}
template <int N> static inline mc::vec<float, N> refract(mc::vec<float, N> i, mc::vec<float, N> n, float eta) {
    float d = dot(n, i), k = 1.0f - eta * eta * (1.0f - d * d);
    return k < 0.0f ? (mc::vec<float, N>)0.0f : eta * i - (eta * d + MC_LIBM(sqrtf)(k)) * n;
}

/* ---- atomics (relaxed, as MSL defines them) ------------------------------ */
enum memory_order { memory_order_relaxed = 0, memory_order_seq_cst = 5 };
template <class T> struct mc_atomic { T v; };
typedef mc_atomic<int> atomic_int;
typedef mc_atomic<uint> atomic_uint;
typedef mc_atomic<float> atomic_float;
typedef mc_atomic<bool> atomic_bool;
template <class T> using atomic = mc_atomic<T>;
/* the generic __atomic forms: they take float as well as integers */
template <class T> static inline void atomic_store_explicit(volatile mc_atomic<T> *o, T v, memory_order) {
    __atomic_store((T *)&o->v, &v, __ATOMIC_RELAXED);
}
template <class T> static inline T atomic_load_explicit(const volatile mc_atomic<T> *o, memory_order) {
    T r;
    __atomic_load((T *)&o->v, &r, __ATOMIC_RELAXED);
    return r;
}
template <class T> static inline T atomic_exchange_explicit(volatile mc_atomic<T> *o, T v, memory_order) {
    T r;
    __atomic_exchange((T *)&o->v, &v, &r, __ATOMIC_RELAXED);
    return r;
}
template <class T>
static inline bool atomic_compare_exchange_weak_explicit(volatile mc_atomic<T> *o, thread T *expected, T desired,
                                                         memory_order, memory_order) {
    return __atomic_compare_exchange((T *)&o->v, expected, &desired, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
}
template <class T>
static inline bool atomic_compare_exchange_strong_explicit(volatile mc_atomic<T> *o, thread T *expected, T desired,
                                                           memory_order a, memory_order b) {
    return atomic_compare_exchange_weak_explicit(o, expected, desired, a, b);
}
template <class T, class F> static inline T mc_atomic_rmw(volatile mc_atomic<T> *o, F f) {
    T old, want;
    __atomic_load((T *)&o->v, &old, __ATOMIC_RELAXED);
    do want = f(old);
    while (!__atomic_compare_exchange((T *)&o->v, &old, &want, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED));
    return old;
}
template <class T> static inline T atomic_fetch_add_explicit(volatile mc_atomic<T> *o, T v, memory_order) {
    if constexpr (mc::same<T, float>::value) return mc_atomic_rmw(o, [v](T x) { return x + v; });
    else return __atomic_fetch_add(&o->v, v, __ATOMIC_RELAXED);
}
template <class T> static inline T atomic_fetch_sub_explicit(volatile mc_atomic<T> *o, T v, memory_order) {
    if constexpr (mc::same<T, float>::value) return mc_atomic_rmw(o, [v](T x) { return x - v; });
    else return __atomic_fetch_sub(&o->v, v, __ATOMIC_RELAXED);
}
template <class T> static inline T atomic_fetch_and_explicit(volatile mc_atomic<T> *o, T v, memory_order) {
    return __atomic_fetch_and(&o->v, v, __ATOMIC_RELAXED);
}
template <class T> static inline T atomic_fetch_or_explicit(volatile mc_atomic<T> *o, T v, memory_order) {
    return __atomic_fetch_or(&o->v, v, __ATOMIC_RELAXED);
}
template <class T> static inline T atomic_fetch_xor_explicit(volatile mc_atomic<T> *o, T v, memory_order) {
    return __atomic_fetch_xor(&o->v, v, __ATOMIC_RELAXED);
}
template <class T> static inline T atomic_fetch_min_explicit(volatile mc_atomic<T> *o, T v, memory_order) {
    return mc_atomic_rmw(o, [v](T x) { return v < x ? v : x; });
}
template <class T> static inline T atomic_fetch_max_explicit(volatile mc_atomic<T> *o, T v, memory_order) {
    return mc_atomic_rmw(o, [v](T x) { return x < v ? v : x; });
}

enum mem_flags { mem_none = 0, mem_device = 1, mem_threadgroup = 2, mem_texture = 4, mem_threadgroup_imageblock = 8 };
/* mem_flags::mem_device | mem_flags::mem_threadgroup */
static inline mem_flags operator|(mem_flags a, mem_flags b) { return (mem_flags)((int)a | (int)b); }
/* fast:: and precise:: name the whole library, not only what differs */
#define MC__ALSO(ns)               \
    namespace ns {                 \
    using metal::fma;              \
    using metal::ldexp;            \
    using metal::frexp;            \
    using metal::modf;             \
    using metal::ilogb;            \
    using metal::sincos;           \
    using metal::min;              \
    using metal::max;              \
    using metal::clamp;            \
    using metal::mix;              \
    using metal::smoothstep;       \
    using metal::abs;              \
    using metal::dot;              \
    using metal::length;           \
    using metal::length_squared;   \
    using metal::distance;         \
    using metal::distance_squared; \
    using metal::normalize;        \
    using metal::cross;            \
    using metal::reflect;          \
    using metal::refract;          \
    using metal::faceforward;      \
    using metal::isnan;            \
    using metal::isinf;            \
    using metal::isfinite;         \
    }
MC__ALSO(fast)
MC__ALSO(precise)
#undef MC__ALSO
} // namespace metal
/* mem_flags::mem_threadgroup: the enumerators are reachable through the
 * enum's name as in MSL (C++11 allows Enum::value for plain enums). */
using namespace metal;

namespace mc {
enum simd_op : uint8_t {
    OP_SUM,
    OP_PRODUCT,
    OP_MIN,
    OP_MAX,
    OP_AND,
    OP_OR,
    OP_XOR,
    OP_PFX_INC_SUM,
    OP_PFX_EXC_SUM,
    OP_PFX_INC_PROD,
    OP_PFX_EXC_PROD,
    OP_SHUFFLE,
    OP_SHUFFLE_UP,
    OP_SHUFFLE_DOWN,
    OP_SHUFFLE_XOR,
    OP_ROTATE_UP,
    OP_ROTATE_DOWN,
    OP_BROADCAST_FIRST,
    OP_BALLOT,
    OP_ALL,
    OP_ANY,
    OP_IS_FIRST,
    OP_SYNC
};
/* a thread's ids: what the compute attributes read */
struct ids {
    uint3 tpig, tpitg, tgpig, tptg, tgpg, tpg;
    uint tiitg, tiisg, sgiitg, sgptg;
};
/* one step of a SIMD-group reduction or prefix operation */
template <class T> static inline T reduce1_gpu(uint8_t op, T a, T b) {
    switch (op) {
    case OP_SUM:
    case OP_PFX_INC_SUM:
    case OP_PFX_EXC_SUM: return a + b;
    case OP_PRODUCT:
    case OP_PFX_INC_PROD:
    case OP_PFX_EXC_PROD: return a * b;
    case OP_MIN: return metal::min(a, b);
    case OP_MAX: return metal::max(a, b);
    default: break;
    }
    if constexpr (is_int<T>::value || (is_vec<T> && is_int<typename vec_traits<T>::elem>::value)) {
        if (op == OP_AND) return a & b;
        if (op == OP_OR) return a | b;
        if (op == OP_XOR) return a ^ b;
    }
    return a;
}
} // namespace mc

#ifndef __CUDA__
/* ---- threadgroups as fibers --------------------------------------------------- */
extern "C" {
typedef void *mc_fctx;
typedef struct mc_transfer {
    mc_fctx fctx;
    void *data;
} mc_transfer;
/* Boost.Context's context switch (libboost_context) */
mc_transfer jump_fcontext(mc_fctx const to, void *vp);
mc_fctx make_fcontext(void *sp, size_t size, void (*fn)(mc_transfer));
}

namespace mc {
enum lane_state : uint8_t { L_READY, L_BARRIER, L_SIMD, L_DONE };
struct lane;
typedef void (*resolve_fn)(lane *base, uint32_t count, uint64_t mask, int width);
struct lane {
    mc_fctx ctx;
    uint8_t state;
    uint8_t op;
    uint32_t arg;
    uint64_t site;
    resolve_fn fn;
    alignas(32) unsigned char in[32];
    alignas(32) unsigned char out[32];
};
struct group;
#define MC_FROM_SCHED 0xffffffffu
struct group {
    lane *lanes;
    uint32_t n, cur;
    uint32_t from; /* who switched to the running context: a lane, or MC_FROM_SCHED */
    mc_fctx sched;
    void (*body)(void *closure, uint32_t linear);
    void *closure;
};
inline thread_local group *current = nullptr;

/* After a switch: keeps the context of whoever switched here, so it can
 * be resumed. */
static inline void arrived(group *g, mc_fctx from_ctx) {
    if (g->from == MC_FROM_SCHED) g->sched = from_ctx;
    else g->lanes[g->from].ctx = from_ctx;
}

/* Leaves the running lane: straight to the next lane that can run (one
 * switch per thread per barrier), else back to the scheduler, which
 * resolves barriers and SIMD-group functions. */
static inline void leave(group *g) {
    uint32_t me = g->cur, next = me + 1;
    while (next < g->n && g->lanes[next].state != L_READY) next++;
    g->from = me;
    mc_transfer t;
    if (next < g->n) {
        g->cur = next;
        t = jump_fcontext(g->lanes[next].ctx, g);
    } else {
        t = jump_fcontext(g->sched, g);
    }
    arrived(g, t.fctx);
}

static inline void yield(group *g) { leave(g); }

/* Stacks for one worker's fibers, kept between threadgroups; each has a
 * guard page below it so an overflow faults instead of corrupting the next. */
#define MC_FIBER_STACK (64u * 1024u)
#define MC_FIBER_GUARD 4096u
struct stacks {
    char *base = 0;
    uint32_t n = 0;
    lane *lanes = 0;
    ~stacks() {
        if (base) munmap(base, (size_t)n * (MC_FIBER_STACK + MC_FIBER_GUARD));
        free(lanes);
    }
    bool reserve(uint32_t want) {
        if (want <= n) return true;
        if (base) munmap(base, (size_t)n * (MC_FIBER_STACK + MC_FIBER_GUARD));
        free(lanes);
        base = 0, n = 0;
        size_t per = MC_FIBER_STACK + MC_FIBER_GUARD;
        void *p = mmap(0, per * want, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (p == MAP_FAILED) return false;
        for (uint32_t i = 0; i < want; i++) mprotect((char *)p + i * per, MC_FIBER_GUARD, PROT_NONE);
        lanes = (lane *)aligned_alloc(64, sizeof(lane) * want);
        if (!lanes) {
            munmap(p, per * want);
            return false;
        }
        base = (char *)p;
        n = want;
        return true;
    }
};
inline thread_local stacks worker_stacks;

static void fiber_entry(mc_transfer t) {
    group *g = (group *)t.data;
    arrived(g, t.fctx);
    uint32_t i = g->cur;
    g->body(g->closure, i);
    g->lanes[i].state = L_DONE;
    leave(g); /* never resumed */
    __builtin_unreachable();
}

/* Runs every thread of the group until each returns: a barrier releases
 * when every live thread waits at one, a SIMD-group function resolves over
 * the lanes of its SIMD group that wait at the same call site (the active
 * lanes, as the GPU's divergence would leave them). */
static inline bool run_fibers(uint32_t n, void (*body)(void *, uint32_t), void *closure) {
    if (!worker_stacks.reserve(n)) return false;
    group g;
    g.lanes = worker_stacks.lanes;
    g.n = n;
    g.body = body;
    g.closure = closure;
    group *saved = current;
    current = &g;
    size_t per = MC_FIBER_STACK + MC_FIBER_GUARD;
    for (uint32_t i = 0; i < n; i++) {
        g.lanes[i].state = L_READY;
        g.lanes[i].ctx = make_fcontext(worker_stacks.base + (size_t)(i + 1) * per, MC_FIBER_STACK, fiber_entry);
    }
    for (;;) {
        bool live = false;
        /* the first lane that can run; each passes on to the next */
        for (uint32_t i = 0; i < n; i++) {
            if (g.lanes[i].state != L_READY) continue;
            g.cur = i;
            g.from = MC_FROM_SCHED;
            mc_transfer t = jump_fcontext(g.lanes[i].ctx, &g);
            g.lanes[g.from].ctx = t.fctx; /* the last lane to run came back */
            break;
        }
        bool any_simd = false;
        for (uint32_t s = 0; s < n; s += 32) {
            uint32_t count = n - s < 32 ? n - s : 32;
            lane *L = g.lanes + s;
            int first = -1;
            for (uint32_t k = 0; k < count; k++)
                if (L[k].state == L_SIMD) {
                    first = (int)k;
                    break;
                }
            if (first < 0) continue;
            uint64_t mask = 0;
            for (uint32_t k = (uint32_t)first; k < count; k++)
                if (L[k].state == L_SIMD && L[k].site == L[first].site) mask |= 1ull << k;
            L[first].fn(L, count, mask, 32);
            for (uint32_t k = 0; k < count; k++)
                if (mask >> k & 1) L[k].state = L_READY;
            any_simd = true;
        }
        if (any_simd) continue;
        for (uint32_t i = 0; i < n; i++)
            if (g.lanes[i].state == L_BARRIER) {
                g.lanes[i].state = L_READY;
                live = true;
            }
        if (!live) break;
    }
    current = saved;
    return true;
}

/* ---- SIMD-group exchange ------------------------------------------------------ */
template <class T> static inline T reduce1(uint8_t op, T a, T b) { return reduce1_gpu<T>(op, a, b); }
template <class T> static inline T ident(uint8_t op) {
    if (op == OP_PFX_EXC_PROD) return (T)1;
    return (T)0;
}
template <class T> static void resolve(lane *L, uint32_t count, uint64_t mask, int width) {
    uint8_t op = L[__builtin_ctzll(mask)].op;
    auto in = [&](uint32_t k) {
        T v;
        __builtin_memcpy(&v, L[k].in, sizeof v);
        return v;
    };
    auto out = [&](uint32_t k, T v) { __builtin_memcpy(L[k].out, &v, sizeof v); };
    for (uint32_t seg = 0; seg < count; seg += (uint32_t)width) {
        uint64_t segmask = (mask >> seg) & (width == 64 ? ~0ull : ((1ull << width) - 1));
        if (!segmask) continue;
        uint32_t end = seg + (uint32_t)width < count ? seg + (uint32_t)width : count;
        switch (op) {
        case OP_SUM:
        case OP_PRODUCT:
        case OP_MIN:
        case OP_MAX:
        case OP_AND:
        case OP_OR:
        case OP_XOR: {
            bool have = false;
            T acc{};
            for (uint32_t k = seg; k < end; k++)
                if (mask >> k & 1) {
                    acc = have ? reduce1<T>(op, acc, in(k)) : in(k);
                    have = true;
                }
            for (uint32_t k = seg; k < end; k++)
                if (mask >> k & 1) out(k, acc);
            break;
        }
        case OP_PFX_INC_SUM:
        case OP_PFX_INC_PROD:
        case OP_PFX_EXC_SUM:
        case OP_PFX_EXC_PROD: {
            bool inc = op == OP_PFX_INC_SUM || op == OP_PFX_INC_PROD;
            T acc = (op == OP_PFX_INC_PROD || op == OP_PFX_EXC_PROD) ? (T)1 : (T)0;
            for (uint32_t k = seg; k < end; k++) {
                if (!(mask >> k & 1)) continue;
                T v = in(k);
                if (inc) {
                    acc = reduce1<T>(op, acc, v);
                    out(k, acc);
                } else {
                    out(k, acc);
                    acc = reduce1<T>(op, acc, v);
                }
            }
            break;
        }
        case OP_BROADCAST_FIRST: {
            T v = in(seg + (uint32_t)__builtin_ctzll(segmask));
            for (uint32_t k = seg; k < end; k++)
                if (mask >> k & 1) out(k, v);
            break;
        }
        default: {
            for (uint32_t k = seg; k < end; k++) {
                if (!(mask >> k & 1)) continue;
                uint32_t local = k - seg, a = L[k].arg, w = (uint32_t)width;
                int64_t src = local;
                switch (op) {
                case OP_SHUFFLE: src = a; break;
                case OP_SHUFFLE_UP:
                    src = (int64_t)local - a;
                    if (src < 0) src = local;
                    break;
                case OP_SHUFFLE_DOWN:
                    src = (int64_t)local + a;
                    if (src >= (int64_t)w) src = local;
                    break;
                case OP_SHUFFLE_XOR: src = local ^ a; break;
                case OP_ROTATE_UP: src = (local + w - a % w) % w; break;
                case OP_ROTATE_DOWN: src = (local + a) % w; break;
                default: break;
                }
                uint32_t s = seg + (uint32_t)src;
                /* reading an inactive lane is undefined in MSL: it gives the
                 * reader's own value here */
                out(k, s < end && (mask >> s & 1) ? in(s) : in(k));
            }
            break;
        }
        }
    }
}
static void resolve_vote(lane *L, uint32_t count, uint64_t mask, int width) {
    uint8_t op = L[__builtin_ctzll(mask)].op;
    for (uint32_t seg = 0; seg < count; seg += (uint32_t)width) {
        uint64_t segmask = (mask >> seg) & (width == 64 ? ~0ull : ((1ull << width) - 1));
        if (!segmask) continue;
        uint32_t end = seg + (uint32_t)width < count ? seg + (uint32_t)width : count;
        uint64_t ballot = 0;
        for (uint32_t k = seg; k < end; k++)
            if ((mask >> k & 1) && L[k].in[0]) ballot |= 1ull << (k - seg);
        uint64_t active = segmask;
        for (uint32_t k = seg; k < end; k++) {
            if (!(mask >> k & 1)) continue;
            uint64_t r = 0;
            if (op == OP_BALLOT) r = ballot;
            else if (op == OP_ALL) r = ballot == active;
            else if (op == OP_ANY) r = ballot != 0;
            else if (op == OP_IS_FIRST) r = (k - seg) == (uint32_t)__builtin_ctzll(segmask);
            __builtin_memcpy(L[k].out, &r, sizeof r);
        }
    }
}
static void resolve_sync(lane *, uint32_t, uint64_t, int) {}

static inline uint64_t site_of(unsigned line, unsigned col) { return ((uint64_t)line << 20) | col; }
/* One lane's part in a SIMD-group (width 32) or quad (width 4) function. */
template <class T> static inline T exchange(T x, uint8_t op, uint32_t arg, resolve_fn fn, int width, uint64_t site) {
    group *g = current;
    lane &me = g->lanes[g->cur];
    static_assert(sizeof(T) <= sizeof me.in, "SIMD-group value too large");
    __builtin_memcpy(me.in, &x, sizeof x);
    me.op = op;
    me.arg = arg;
    me.fn = fn;
    me.site = site ^ ((uint64_t)width << 60);
    me.state = L_SIMD;
    yield(g);
    T r;
    __builtin_memcpy(&r, me.out, sizeof r);
    return r;
}
/* a quad's exchange runs through the same machinery; its resolver is the
 * SIMD one applied in segments of 4 lanes */
template <class T> static void resolve_quad(lane *L, uint32_t count, uint64_t mask, int) {
    resolve<T>(L, count, mask, 4);
}
static void resolve_vote_quad(lane *L, uint32_t count, uint64_t mask, int) { resolve_vote(L, count, mask, 4); }
} // namespace mc

#endif /* !__CUDA__ */

#ifndef __CUDA__
namespace metal {
static inline void threadgroup_barrier(mem_flags = mem_none) {
    mc::group *g = mc::current;
    g->lanes[g->cur].state = mc::L_BARRIER;
    mc::yield(g);
}
static inline void simdgroup_barrier(mem_flags = mem_none, unsigned line = __builtin_LINE(),
                                     unsigned col = __builtin_COLUMN()) {
    mc::exchange<int>(0, mc::OP_SYNC, 0, mc::resolve_sync, 32, mc::site_of(line, col));
}
struct simd_vote {
    typedef ulong vote_t;
    ulong v;
    explicit operator ulong() const { return v; }
    bool all() const { return v == ~0ull >> 32; }
    bool any() const { return v != 0; }
};
struct quad_vote {
    typedef ushort vote_t;
    ushort v;
    explicit operator ushort() const { return v; }
    bool all() const { return v == 0xf; }
    bool any() const { return v != 0; }
};
#define MC__SITE unsigned mc_line = __builtin_LINE(), unsigned mc_col = __builtin_COLUMN()
#define MC__S mc::site_of(mc_line, mc_col)
#define MC__SIMD_FN(prefix, W, RES, name, op)                        \
    template <class T> static inline T prefix##name(T x, MC__SITE) { \
        return mc::exchange<T>(x, op, 0, RES<T>, W, MC__S);          \
    }
#define MC__SIMD_FN_ARG(prefix, W, RES, name, op, A)                      \
    template <class T> static inline T prefix##name(T x, A a, MC__SITE) { \
        return mc::exchange<T>(x, op, (uint32_t)a, RES<T>, W, MC__S);     \
    }
#define MC__SIMD_FAMILY(prefix, W, RES)                                          \
    MC__SIMD_FN(prefix, W, RES, sum, mc::OP_SUM)                                 \
    MC__SIMD_FN(prefix, W, RES, product, mc::OP_PRODUCT)                         \
    MC__SIMD_FN(prefix, W, RES, min, mc::OP_MIN)                                 \
    MC__SIMD_FN(prefix, W, RES, max, mc::OP_MAX)                                 \
    MC__SIMD_FN(prefix, W, RES, prefix_inclusive_sum, mc::OP_PFX_INC_SUM)        \
    MC__SIMD_FN(prefix, W, RES, prefix_exclusive_sum, mc::OP_PFX_EXC_SUM)        \
    MC__SIMD_FN(prefix, W, RES, prefix_inclusive_product, mc::OP_PFX_INC_PROD)   \
    MC__SIMD_FN(prefix, W, RES, prefix_exclusive_product, mc::OP_PFX_EXC_PROD)   \
    MC__SIMD_FN(prefix, W, RES, broadcast_first, mc::OP_BROADCAST_FIRST)         \
    MC__SIMD_FN_ARG(prefix, W, RES, shuffle, mc::OP_SHUFFLE, ushort)             \
    MC__SIMD_FN_ARG(prefix, W, RES, broadcast, mc::OP_SHUFFLE, ushort)           \
    MC__SIMD_FN_ARG(prefix, W, RES, shuffle_up, mc::OP_SHUFFLE_UP, ushort)       \
    MC__SIMD_FN_ARG(prefix, W, RES, shuffle_down, mc::OP_SHUFFLE_DOWN, ushort)   \
    MC__SIMD_FN_ARG(prefix, W, RES, shuffle_xor, mc::OP_SHUFFLE_XOR, ushort)     \
    MC__SIMD_FN_ARG(prefix, W, RES, shuffle_rotate_up, mc::OP_ROTATE_UP, ushort) \
    MC__SIMD_FN_ARG(prefix, W, RES, shuffle_rotate_down, mc::OP_ROTATE_DOWN, ushort)
MC__SIMD_FAMILY(simd_, 32, mc::resolve)
MC__SIMD_FAMILY(quad_, 4, mc::resolve_quad)
/* and/or/xor are C++'s alternative tokens: no pasting with them */
#define MC__SIMD_BIT(fullname, W, RES, op) \
    template <class T> static inline T fullname(T x, MC__SITE) { return mc::exchange<T>(x, op, 0, RES<T>, W, MC__S); }
MC__SIMD_BIT(simd_and, 32, mc::resolve, mc::OP_AND)
MC__SIMD_BIT(simd_or, 32, mc::resolve, mc::OP_OR)
MC__SIMD_BIT(simd_xor, 32, mc::resolve, mc::OP_XOR)
MC__SIMD_BIT(quad_and, 4, mc::resolve_quad, mc::OP_AND)
MC__SIMD_BIT(quad_or, 4, mc::resolve_quad, mc::OP_OR)
MC__SIMD_BIT(quad_xor, 4, mc::resolve_quad, mc::OP_XOR)
#undef MC__SIMD_BIT
#undef MC__SIMD_FAMILY
#undef MC__SIMD_FN
#undef MC__SIMD_FN_ARG
static inline simd_vote simd_ballot(bool c, MC__SITE) {
    return simd_vote{mc::exchange<ulong>(c, mc::OP_BALLOT, 0, mc::resolve_vote, 32, MC__S)};
}
static inline bool simd_all(bool c, MC__SITE) {
    return mc::exchange<ulong>(c, mc::OP_ALL, 0, mc::resolve_vote, 32, MC__S) != 0;
}
static inline bool simd_any(bool c, MC__SITE) {
    return mc::exchange<ulong>(c, mc::OP_ANY, 0, mc::resolve_vote, 32, MC__S) != 0;
}
static inline bool simd_is_first(MC__SITE) {
    return mc::exchange<ulong>(1, mc::OP_IS_FIRST, 0, mc::resolve_vote, 32, MC__S) != 0;
}
static inline simd_vote simd_active_threads_mask(MC__SITE) {
    return simd_vote{mc::exchange<ulong>(1, mc::OP_BALLOT, 0, mc::resolve_vote, 32, MC__S)};
}
static inline quad_vote quad_ballot(bool c, MC__SITE) {
    return quad_vote{(ushort)mc::exchange<ulong>(c, mc::OP_BALLOT, 0, mc::resolve_vote_quad, 4, MC__S)};
}
static inline bool quad_all(bool c, MC__SITE) {
    return mc::exchange<ulong>(c, mc::OP_ALL, 0, mc::resolve_vote_quad, 4, MC__S) != 0;
}
static inline bool quad_any(bool c, MC__SITE) {
    return mc::exchange<ulong>(c, mc::OP_ANY, 0, mc::resolve_vote_quad, 4, MC__S) != 0;
}
static inline bool quad_is_first(MC__SITE) {
    return mc::exchange<ulong>(1, mc::OP_IS_FIRST, 0, mc::resolve_vote_quad, 4, MC__S) != 0;
}
#undef MC__SITE
#undef MC__S
} // namespace metal
#else
namespace mc {
/* SIMD groups are warps: the active mask at the call is the set of lanes
 * taking part, as on Apple GPUs. Reductions walk the active lanes in lane
 * order, so float results match the CPU device's bit for bit. */
static inline uint lane_id() { return __nvvm_read_ptx_sreg_laneid(); }
/* activemask reads the lanes that execute this very instruction, so it
 * must stay where the call is. LLVM's SimplifyCFG hoists instructions that
 * begin both arms of an if, identically, above the branch: the two copies
 * of a SIMD-group function's first instruction in `if (lane % 2 == 0) a =
 * simd_sum(v); else b = simd_min(v);` became one activemask before the
 * branch, which read all 32 lanes, and each arm then reduced over both
 * (msl_simd_groups_non_uniform on an H100: 55 where 19 is right). A local's
 * address as an operand makes every inlined copy a distinct instruction,
 * which is never merged with another or moved out of its arm (volatile). */
static inline uint active_mask() {
    uint m;
    char here;
    asm volatile("activemask.b32 %0;" : "=r"(m) : "l"(&here));
    return m;
}
template <class T> static inline T shfl(uint mask, T v, uint src) {
    static_assert(sizeof(T) % 4 == 0 || sizeof(T) < 4, "SIMD-group values are whole 32-bit words");
    constexpr int W = sizeof(T) < 4 ? 1 : sizeof(T) / 4;
    uint w[W] = {0};
    __builtin_memcpy(w, &v, sizeof v);
    for (int i = 0; i < W; i++) w[i] = (uint)__nvvm_shfl_sync_idx_i32(mask, (int)w[i], (int)src, 31);
    T r;
    __builtin_memcpy(&r, w, sizeof r);
    return r;
}
template <class T> static inline T gpu_reduce(uint8_t op, T x, uint width) {
    uint mask = mc::active_mask(), lane = lane_id();
    if (width == 4) mask &= 0xfu << (lane & ~3u);
    bool have = false;
    T acc{};
    bool prefix = op >= OP_PFX_INC_SUM && op <= OP_PFX_EXC_PROD;
    bool inc = op == OP_PFX_INC_SUM || op == OP_PFX_INC_PROD;
    if (op == OP_PFX_EXC_PROD || op == OP_PFX_INC_PROD) acc = (T)1, have = true;
    if (op == OP_PFX_EXC_SUM || op == OP_PFX_INC_SUM) acc = (T)0, have = true;
    for (uint k = 0; k < 32; k++) {
        if (!(mask >> k & 1)) continue;
        T v = shfl(mask, x, k);
        if (prefix && (inc ? k > lane : k >= lane)) continue;
        acc = have ? reduce1_gpu<T>(op, acc, v) : v;
        have = true;
    }
    return acc;
}
template <class T> static inline T gpu_shuffle(uint8_t op, T x, uint a, uint width) {
    uint mask = mc::active_mask(), lane = lane_id();
    uint base = width == 4 ? lane & ~3u : 0u, local = lane - base, w = width;
    int src = (int)local;
    switch (op) {
    case OP_SHUFFLE: src = (int)a; break;
    case OP_SHUFFLE_UP:
        src = (int)local - (int)a;
        if (src < 0) src = (int)local;
        break;
    case OP_SHUFFLE_DOWN:
        src = (int)(local + a);
        if (src >= (int)w) src = (int)local;
        break;
    case OP_SHUFFLE_XOR: src = (int)(local ^ a); break;
    case OP_ROTATE_UP: src = (int)((local + w - a % w) % w); break;
    case OP_ROTATE_DOWN: src = (int)((local + a) % w); break;
    case OP_BROADCAST_FIRST: src = (int)(__builtin_ctz(width == 4 ? (mask >> base) & 0xfu : mask)); break;
    default: break;
    }
    uint s = base + (uint)src;
    T r = shfl(mask, x, s < 32 ? s : lane);
    return s < 32 && (mask >> s & 1) ? r : x;
}
static inline ulong gpu_vote(uint8_t op, bool c, uint width) {
    uint mask = mc::active_mask(), lane = lane_id();
    uint ballot = (uint)__nvvm_vote_ballot_sync(mask, c);
    if (width == 4) {
        uint base = lane & ~3u;
        mask = (mask >> base) & 0xfu;
        ballot = (ballot >> base) & 0xfu;
        lane -= base;
    }
    if (op == OP_BALLOT) return ballot;
    if (op == OP_ALL) return ballot == mask;
    if (op == OP_ANY) return ballot != 0;
    return lane == (uint)__builtin_ctz(mask); /* OP_IS_FIRST */
}
} // namespace mc

namespace metal {
static inline void threadgroup_barrier(mem_flags = mem_none) { __nvvm_bar_sync(0); }
static inline void simdgroup_barrier(mem_flags = mem_none) { __nvvm_bar_warp_sync(mc::active_mask()); }
struct simd_vote {
    typedef ulong vote_t;
    ulong v;
    explicit operator ulong() const { return v; }
    bool all() const { return v == ~0ull >> 32; }
    bool any() const { return v != 0; }
};
struct quad_vote {
    typedef ushort vote_t;
    ushort v;
    explicit operator ushort() const { return v; }
    bool all() const { return v == 0xf; }
    bool any() const { return v != 0; }
};
#define MC__GR(name, W, op) \
    template <class T> static inline T name(T x) { return mc::gpu_reduce<T>(op, x, W); }
#define MC__GS(name, W, op) \
    template <class T> static inline T name(T x, ushort a) { return mc::gpu_shuffle<T>(op, x, a, W); }
#define MC__G_FAMILY(p, W)                                          \
    MC__GR(p##sum, W, mc::OP_SUM)                                   \
    MC__GR(p##product, W, mc::OP_PRODUCT)                           \
    MC__GR(p##min, W, mc::OP_MIN)                                   \
    MC__GR(p##max, W, mc::OP_MAX)                                   \
    MC__GR(p##prefix_inclusive_sum, W, mc::OP_PFX_INC_SUM)          \
    MC__GR(p##prefix_exclusive_sum, W, mc::OP_PFX_EXC_SUM)          \
    MC__GR(p##prefix_inclusive_product, W, mc::OP_PFX_INC_PROD)     \
    MC__GR(p##prefix_exclusive_product, W, mc::OP_PFX_EXC_PROD)     \
    MC__GS(p##shuffle, W, mc::OP_SHUFFLE)                           \
    MC__GS(p##broadcast, W, mc::OP_SHUFFLE)                         \
    MC__GS(p##shuffle_up, W, mc::OP_SHUFFLE_UP)                     \
    MC__GS(p##shuffle_down, W, mc::OP_SHUFFLE_DOWN)                 \
    MC__GS(p##shuffle_xor, W, mc::OP_SHUFFLE_XOR)                   \
    MC__GS(p##shuffle_rotate_up, W, mc::OP_ROTATE_UP)               \
    MC__GS(p##shuffle_rotate_down, W, mc::OP_ROTATE_DOWN)           \
    template <class T> static inline T p##broadcast_first(T x) {    \
        return mc::gpu_shuffle<T>(mc::OP_BROADCAST_FIRST, x, 0, W); \
    }
MC__G_FAMILY(simd_, 32)
MC__G_FAMILY(quad_, 4)
MC__GR(simd_and, 32, mc::OP_AND)
MC__GR(simd_or, 32, mc::OP_OR)
MC__GR(simd_xor, 32, mc::OP_XOR)
MC__GR(quad_and, 4, mc::OP_AND)
MC__GR(quad_or, 4, mc::OP_OR)
MC__GR(quad_xor, 4, mc::OP_XOR)
#undef MC__G_FAMILY
#undef MC__GR
#undef MC__GS
static inline simd_vote simd_ballot(bool c) { return simd_vote{mc::gpu_vote(mc::OP_BALLOT, c, 32)}; }
static inline bool simd_all(bool c) { return mc::gpu_vote(mc::OP_ALL, c, 32) != 0; }
static inline bool simd_any(bool c) { return mc::gpu_vote(mc::OP_ANY, c, 32) != 0; }
static inline bool simd_is_first() { return mc::gpu_vote(mc::OP_IS_FIRST, true, 32) != 0; }
static inline simd_vote simd_active_threads_mask() { return simd_vote{mc::gpu_vote(mc::OP_BALLOT, true, 32)}; }
static inline quad_vote quad_ballot(bool c) { return quad_vote{(ushort)mc::gpu_vote(mc::OP_BALLOT, c, 4)}; }
static inline bool quad_all(bool c) { return mc::gpu_vote(mc::OP_ALL, c, 4) != 0; }
static inline bool quad_any(bool c) { return mc::gpu_vote(mc::OP_ANY, c, 4) != 0; }
static inline bool quad_is_first() { return mc::gpu_vote(mc::OP_IS_FIRST, true, 4) != 0; }
} // namespace metal
#endif

/* ---- entry points (used by the generated wrappers) --------------------------------- */
namespace mc {
/* Function constants: the values the pipeline was created with, for the
 * group this worker runs. */
#ifdef __CUDA__
/* set by the CUDA device before a launch (cuModuleGetGlobal) */
extern "C" __attribute__((__constant__)) mc_cpu_constants mc_function_constants;
static inline bool fc_defined(uint32_t i) {
    return i < MC_CPU_MAX_CONSTANTS && (mc_function_constants.defined[i / 64] >> (i % 64) & 1);
}
static inline const void *fc_slot(uint32_t i) { return (const void *)&mc_function_constants.value[i]; }
#else
inline thread_local const mc_cpu_constants *fconsts = nullptr;
static inline void fc_enter(const mc_cpu_ctx *ctx) { fconsts = ctx->constants; }
static inline bool fc_defined(uint32_t i) {
    return fconsts && i < MC_CPU_MAX_CONSTANTS && (fconsts->defined[i / 64] >> (i % 64) & 1);
}
static inline const void *fc_slot(uint32_t i) { return &fconsts->value[i]; }
#endif
/* Scalars and vectors: the value's bytes as the kernel lays the type out
 * (a 3-vector of 32-bit components is 16 bytes, as in Metal). */
template <class T> static inline T fc_value(uint32_t i) {
    static_assert(sizeof(T) <= MC_CPU_CONSTANT_SIZE,
                  "a function constant is at most 16 bytes (a 4-vector of 32-bit components)");
    T v{};
    if (fc_defined(i)) __builtin_memcpy((void *)&v, fc_slot(i), sizeof v);
    return v;
}
/* bool2/3/4: one byte a component through the API (Metal's layout), a mask
 * vector in the kernel (bool vectors are integer masks here) */
template <int N> static inline vec<int, N> fc_bools(uint32_t i) {
    vec<int, N> v = 0;
    if (!fc_defined(i)) return v;
    const unsigned char *b = (const unsigned char *)fc_slot(i);
    for (int k = 0; k < N; k++) v[k] = b[k] ? -1 : 0;
    return v;
}
/* The size of the value the API passes for a constant of type T: what the
 * CPU device checks at pipeline creation (mc__function_constants). */
template <class T> struct fc_api_size { static constexpr uint32_t value = sizeof(T); };
template <> struct fc_api_size<hvec<3>> { static constexpr uint32_t value = 8; }; /* Metal's half3: 4 halves */
} // namespace mc
#define MC_FUNCTION_CONSTANT(T, name, idx)                                                            \
    struct mc_fc_##name {                                                                             \
        operator mc::remove_cv<T>::type() const { return mc::fc_value<mc::remove_cv<T>::type>(idx); } \
        bool mc_defined() const { return mc::fc_defined(idx); }                                       \
    };                                                                                                \
    static const mc_fc_##name name = {}
#define MC_FUNCTION_CONSTANT_BOOLS(N, name, idx)                          \
    struct mc_fc_##name {                                                 \
        operator mc::vec<int, N>() const { return mc::fc_bools<N>(idx); } \
        bool mc_defined() const { return mc::fc_defined(idx); }           \
    };                                                                    \
    static const mc_fc_##name name = {}
#define is_function_constant_defined(x) ((x).mc_defined())
namespace mc {
/* function constants: the pipeline's values, read through the running
 * group (see mc_fc in the wrapper) */
template <class F> struct params;
template <class R, class... A> struct params<R(A...)> {
    template <int I> struct at {
        typedef typename remove_cv<typename remove_ref<__type_pack_element<I, A...>>::type>::type type;
        typedef __type_pack_element<I, A...> raw;
    };
};
template <class P> static inline P buffer_arg(const mc_cpu_ctx *ctx, int slot) {
    if constexpr (__is_pointer(P)) return (P)ctx->args[slot].ptr;
    else return *(typename remove_cv<typename remove_ref<P>::type>::type *)ctx->args[slot].ptr;
}
template <class P> static inline P tg_arg(const mc_cpu_ctx *ctx, int slot) { return (P)ctx->tg_mem[slot]; }
/* How the entry point holds a buffer argument: `constant T&` as a copy in
 * a local (constant memory cannot change during the dispatch), so stores
 * through device pointers cannot alias it and the loop vectorises;
 * pointers and writable references as they are. */
template <class P> struct arg_store { typedef P type; };
template <class T> struct arg_store<const T &> { typedef T type; };
template <class P> static inline P attr(uint3 v) {
    typedef typename remove_cv<typename remove_ref<P>::type>::type T;
    if constexpr (vec_traits<T>::n == 2) return make<T>(v.x, v.y);
    else if constexpr (vec_traits<T>::n == 3) return make<T>(v);
    else return (T)v.x;
}
template <class P> static inline P attr(uint v) { return (P)v; }

#ifdef __CUDA__
/* The CUDA parameter of a buffer slot whose kernel parameter has type P,
 * and how the CUDA device fills it (`slot`, read from the module's
 * mc_slots_NAME table; src/backends/cuda/cuda_be.h). Metal binds either a
 * buffer or bytes (setBytes) to any buffer slot, so both must work:
 *  - a pointer (slot 1): the buffer's address; bytes are first copied into
 *    device memory by the CUDA device;
 *  - a reference (slot 2 | offset of value << 8): a pointer and a copy,
 *    the pointer when a buffer is bound, else null with the bytes by value
 *    in `value`, which is what set_bytes costs nothing for. */
template <class T> struct cuda_ref {
    T *ptr;
    T value;
};
template <class P> struct cuda_param {
    typedef typename remove_cv<P>::type type;
    static constexpr unsigned slot = 0u;
    static P get(type v) { return v; }
};
template <class T> struct cuda_param<T *> {
    typedef T *type;
    static constexpr unsigned slot = 1u;
    static T *get(T *p) { return p; }
};
template <class T> struct cuda_param<T &> {
    typedef cuda_ref<typename remove_cv<T>::type> type;
    static constexpr unsigned slot = 2u | (unsigned)__builtin_offsetof(type, value) << 8;
    static T &get(type &r) { return r.ptr ? *r.ptr : r.value; }
};
/* `constant T&`: a copy made once at entry (constant memory cannot change
 * during a dispatch), so the kernel's stores cannot alias it and its
 * fields stay in registers, as a by-value parameter's do. The buffer's
 * bytes are read through the read-only cache, by loads the compiler cannot
 * merge with the parameter's: one select between the two addresses would
 * put the copy in local memory, read field by field. */
template <class V> static inline V cuda_constant_copy(const cuda_ref<V> &r) {
    if (!r.ptr) return r.value;
    V v;
    if constexpr (alignof(V) >= 4 && sizeof(V) % 4 == 0) {
        for (unsigned i = 0; i < sizeof(V) / 4; i++)
            reinterpret_cast<unsigned *>(&v)[i] = __nvvm_ldg_ui(reinterpret_cast<const unsigned *>(r.ptr) + i);
    } else {
        for (unsigned i = 0; i < sizeof(V); i++)
            reinterpret_cast<unsigned char *>(&v)[i] =
                __nvvm_ldg_uc(reinterpret_cast<const unsigned char *>(r.ptr) + i);
    }
    return v;
}
template <class T> struct cuda_param<const T &> {
    typedef cuda_ref<typename remove_cv<T>::type> type;
    static constexpr unsigned slot = 2u | (unsigned)__builtin_offsetof(type, value) << 8;
    static typename remove_cv<T>::type get(const type &r) { return cuda_constant_copy(r); }
};
extern "C" __attribute__((__shared__)) __attribute__((aligned(16))) char mc_threadgroup_memory[];
/* [[threadgroup(n)]] slots share the one dynamic shared block, slot 0
 * first, each rounded up to 16 bytes: the CUDA device's layout (tg_total
 * in src/backends/cuda/cuda_queue.c). A kernel that uses a slot above 0
 * needs the sizes the pass set to find it: they are its parameter 31,
 * after the 31 buffer slots (tg_sizes). */
struct tg_sizes {
    uint size[MC_CPU_MAX_TG_MEM];
};
static inline char *tg_slot(const tg_sizes &s, uint slot) {
    uint off = 0, any = 0, dyn;
    for (uint j = 0; j < MC_CPU_MAX_TG_MEM; j++) {
        if (j < slot) off += (s.size[j] + 15u) & ~15u;
        any |= s.size[j];
    }
    asm("mov.u32 %0, %%dynamic_smem_size;" : "=r"(dyn));
    /* memory was set but no sizes came: every slot would start at 0 and
     * overlap, a wrong result; stop the kernel instead */
    if (!any && dyn) __builtin_trap();
    return mc_threadgroup_memory + off;
}
static inline ids cuda_ids() {
    ids t;
    t.tptg = uint3{(uint)__nvvm_read_ptx_sreg_ntid_x(), (uint)__nvvm_read_ptx_sreg_ntid_y(),
                   (uint)__nvvm_read_ptx_sreg_ntid_z()};
    t.tgpg = uint3{(uint)__nvvm_read_ptx_sreg_nctaid_x(), (uint)__nvvm_read_ptx_sreg_nctaid_y(),
                   (uint)__nvvm_read_ptx_sreg_nctaid_z()};
    t.tgpig = uint3{(uint)__nvvm_read_ptx_sreg_ctaid_x(), (uint)__nvvm_read_ptx_sreg_ctaid_y(),
                    (uint)__nvvm_read_ptx_sreg_ctaid_z()};
    t.tpitg = uint3{(uint)__nvvm_read_ptx_sreg_tid_x(), (uint)__nvvm_read_ptx_sreg_tid_y(),
                    (uint)__nvvm_read_ptx_sreg_tid_z()};
    t.tpg = t.tptg * t.tgpg;
    t.tpig = t.tgpig * t.tptg + t.tpitg;
    t.tiitg = (t.tpitg.z * t.tptg.y + t.tpitg.y) * t.tptg.x + t.tpitg.x;
    t.tiisg = t.tiitg & 31u;
    t.sgiitg = t.tiitg >> 5;
    t.sgptg = (t.tptg.x * t.tptg.y * t.tptg.z + 31u) / 32u;
    return t;
}
#else
/* Threads of one group in x-fastest order, as a plain loop (no barriers or
 * SIMD-group functions in the source): F(ids) inlines into the loop. */
template <class F> static inline void run_loop(const mc_cpu_ctx *ctx, F &&f) {
    ids t;
    t.tptg = uint3{ctx->group_size[0], ctx->group_size[1], ctx->group_size[2]};
    t.tgpg = uint3{ctx->groups[0], ctx->groups[1], ctx->groups[2]};
    t.tgpig = uint3{ctx->group_id[0], ctx->group_id[1], ctx->group_id[2]};
    t.tpg = t.tptg * t.tgpg;
    t.sgptg = (t.tptg.x * t.tptg.y * t.tptg.z + 31u) / 32u;
    uint3 base = t.tgpig * t.tptg;
    if (t.tptg.y == 1 && t.tptg.z == 1) {
        /* 1-D groups: one counted loop, the shape the vectoriser takes */
        const uint nx = t.tptg.x, bx = base.x;
        for (uint x = 0; x < nx; x++) {
            ids u = t;
            u.tpitg = uint3{x, 0u, 0u};
            u.tpig = uint3{bx + x, base.y, base.z};
            u.tiitg = x;
            u.tiisg = x & 31u;
            u.sgiitg = x >> 5;
            f(u);
        }
        return;
    }
    /* A row's ids are set outside the loop over x and only the x parts
     * inside it, in scalars: what depends on y alone (row pointers, the
     * periodic edge in y) stays out of the inner loop. */
    const uint nx = t.tptg.x, bx = base.x;
    for (uint z = 0; z < t.tptg.z; z++)
        for (uint y = 0; y < t.tptg.y; y++) {
            const uint row = (z * t.tptg.y + y) * nx;
            ids r = t;
            r.tpitg = uint3{0u, y, z};
            r.tpig = uint3{bx, base.y + y, base.z + z};
            for (uint x = 0; x < nx; x++) {
                ids u = r;
                u.tpitg.x = x;
                u.tpig.x = bx + x;
                u.tiitg = row + x;
                u.tiisg = (row + x) & 31u;
                u.sgiitg = (row + x) >> 5;
                f(u);
            }
        }
}
/* count groups from ctx->group_id along x, as one loop per row of threads
 * across all of them (NAME__mc_rows): the order of threads is free in a
 * kernel without barriers, and long rows are what the prefetcher follows
 * (a 16x16 group alone reads 18 rows, 16 cells at a time). */
template <class F> static inline void run_rows(const mc_cpu_ctx *ctx, uint32_t count, F &&f) {
    ids t;
    t.tptg = uint3{ctx->group_size[0], ctx->group_size[1], ctx->group_size[2]};
    t.tgpg = uint3{ctx->groups[0], ctx->groups[1], ctx->groups[2]};
    t.tgpig = uint3{ctx->group_id[0], ctx->group_id[1], ctx->group_id[2]};
    t.tpg = t.tptg * t.tgpg;
    t.sgptg = (t.tptg.x * t.tptg.y * t.tptg.z + 31u) / 32u;
    const uint nx = t.tptg.x, g0 = ctx->group_id[0], by = t.tgpig.y * t.tptg.y, bz = t.tgpig.z * t.tptg.z;
    for (uint z = 0; z < t.tptg.z; z++)
        for (uint y = 0; y < t.tptg.y; y++) {
            const uint row = (z * t.tptg.y + y) * nx;
            ids r = t;
            r.tpitg = uint3{0u, y, z};
            for (uint g = 0; g < count; g++) {
                const uint bx = (g0 + g) * nx;
                r.tgpig.x = g0 + g;
                r.tpig = uint3{bx, by + y, bz + z};
                for (uint x = 0; x < nx; x++) {
                    ids u = r;
                    u.tpitg.x = x;
                    u.tpig.x = bx + x;
                    u.tiitg = row + x;
                    u.tiisg = (row + x) & 31u;
                    u.sgiitg = (row + x) >> 5;
                    f(u);
                }
            }
        }
}
/* A kernel whose bounds test the front end hoisted (cpu_msl_paths.c, "hoisted
 * bounds tests"): pass(id) is the test, monotone in the x position; a
 * group whose last thread in x passes runs the kernel with the test taken
 * as passed (full), a loop without a branch. */
template <class F, class G, class C>
static inline void run_loop_guarded(const mc_cpu_ctx *ctx, F &&checked, G &&full, C &&pass) {
    const uint nx = ctx->group_size[0];
    if (nx && pass(ctx->group_id[0] * nx + (nx - 1u))) run_loop(ctx, full);
    else run_loop(ctx, checked);
}
template <class F> struct fiber_closure {
    const mc_cpu_ctx *ctx;
    F *f;
    static void call(void *c, uint32_t linear) {
        fiber_closure *fc = (fiber_closure *)c;
        const mc_cpu_ctx *ctx = fc->ctx;
        ids u;
        u.tptg = uint3{ctx->group_size[0], ctx->group_size[1], ctx->group_size[2]};
        u.tgpg = uint3{ctx->groups[0], ctx->groups[1], ctx->groups[2]};
        u.tgpig = uint3{ctx->group_id[0], ctx->group_id[1], ctx->group_id[2]};
        u.tpg = u.tptg * u.tgpg;
        u.sgptg = (u.tptg.x * u.tptg.y * u.tptg.z + 31u) / 32u;
        u.tpitg = uint3{linear % u.tptg.x, (linear / u.tptg.x) % u.tptg.y, linear / (u.tptg.x * u.tptg.y)};
        u.tpig = u.tgpig * u.tptg + u.tpitg;
        u.tiitg = linear;
        u.tiisg = linear & 31u;
        u.sgiitg = linear >> 5;
        (*fc->f)(u);
    }
};
template <class F> static inline void run_group(const mc_cpu_ctx *ctx, F &&f) {
    uint32_t n = ctx->group_size[0] * ctx->group_size[1] * ctx->group_size[2];
    fiber_closure<typename remove_ref<F>::type> c{ctx, &f};
    if (!run_fibers(n, fiber_closure<typename remove_ref<F>::type>::call, &c)) abort(); /* no memory for stacks */
}
#endif /* __CUDA__ */
} // namespace mc

#ifndef __CUDA__
namespace mc {
/* p, as a value the compiler cannot see through (see coro_tg_var in the
 * front end) */
template <class T> static inline T *opaque(T *p) {
    __asm__("" : "+r"(p));
    return p;
}
} // namespace mc
#endif
#ifndef __CUDA__
/* ---- threadgroups as region loops ---------------------------------------------
 * A kernel whose barriers all sit at the top level of its body, or at the
 * top level of a loop there whose header every thread evaluates alike, is
 * cut by the front end (cpu_msl_regions.c) at its barriers into regions;
 * each region runs as one loop over the group's threads (mc::region), so a
 * barrier is the end of one loop and costs nothing, and the compiler may
 * vectorise a region (PoCL's approach). The kernel runs once per group
 * with the ids of thread 0 (the uniform ones are every thread's); each
 * region binds a thread's own ids and its frame, the locals that live
 * across a barrier. A thread that returns is marked done: later regions
 * skip it, as the other paths' barriers wait only for live threads. */
namespace mc {
struct rgroup {
    ids t0;        /* thread 0's ids */
    uint3 base;    /* thread_position_in_grid of thread 0 */
    uint32_t n;    /* threads in the group */
    uint32_t live; /* threads that have not returned */
    uint8_t *done; /* per thread: returned */
    void leave(uint32_t t) noexcept {
        done[t] = 1;
        live--;
    }
};
/* Per-worker storage, kept between groups. */
struct region_store {
    void *p = nullptr;
    size_t cap = 0;
    ~region_store() { free(p); }
    void *take(size_t n) {
        if (n <= cap) return p;
        free(p);
        cap = 0;
        p = aligned_alloc(64, (n + 63) & ~(size_t)63);
        if (p) cap = n;
        return p;
    }
};
inline thread_local region_store region_done, region_frames;
inline thread_local rgroup *rg_now = nullptr;
/* The running group's frames: an array of n Fr (plain data: the front end
 * admits only scalars, vectors, pointers and arrays of them). */
template <class Fr> static inline Fr *region_frames_of(rgroup &g) {
    Fr *f = (Fr *)region_frames.take((size_t)g.n * sizeof(Fr));
    if (!f) abort(); /* no memory for the frames, as run_group */
    return f;
}
/* One region: f(ids, t) for every live thread t of the group, in the
 * linear order the other paths use. Checked: some thread may have
 * returned (the loop then tests each thread's flag). */
template <bool Checked, class F> static inline void region_run(rgroup &g, F &&f) {
    const ids &t = g.t0;
    const uint nx = t.tptg.x;
    if (t.tptg.y == 1 && t.tptg.z == 1) {
        const uint bx = g.base.x;
        for (uint x = 0; x < nx; x++) {
            if (Checked && g.done[x]) continue;
            ids u = t;
            u.tpitg = uint3{x, 0u, 0u};
            u.tpig = uint3{bx + x, g.base.y, g.base.z};
            u.tiitg = x;
            u.tiisg = x & 31u;
            u.sgiitg = x >> 5;
            f(u, x);
        }
        return;
    }
    for (uint z = 0; z < t.tptg.z; z++)
        for (uint y = 0; y < t.tptg.y; y++) {
            const uint row = (z * t.tptg.y + y) * nx;
            ids r = t;
            r.tpitg = uint3{0u, y, z};
            r.tpig = uint3{g.base.x, g.base.y + y, g.base.z + z};
            for (uint x = 0; x < nx; x++) {
                if (Checked && g.done[row + x]) continue;
                ids u = r;
                u.tpitg.x = x;
                u.tpig.x = g.base.x + x;
                u.tiitg = row + x;
                u.tiisg = (row + x) & 31u;
                u.sgiitg = (row + x) >> 5;
                f(u, row + x);
            }
        }
}
/* Returns: whether the kernel has an early return (else no thread is
 * ever done, and no flag is tested). */
template <bool Returns, class F> static inline void region(rgroup &g, F &&f) {
    if (Returns && g.live != g.n) region_run<true>(g, f);
    else region_run<false>(g, f);
}
/* The entry point of a region kernel: the kernel once per group, given
 * thread 0's ids (f), which finds its group through rg_now. */
template <class F> static inline void run_regions(const mc_cpu_ctx *ctx, F &&f) {
    rgroup g;
    ids &t = g.t0;
    t.tptg = uint3{ctx->group_size[0], ctx->group_size[1], ctx->group_size[2]};
    t.tgpg = uint3{ctx->groups[0], ctx->groups[1], ctx->groups[2]};
    t.tgpig = uint3{ctx->group_id[0], ctx->group_id[1], ctx->group_id[2]};
    t.tpg = t.tptg * t.tgpg;
    t.sgptg = (t.tptg.x * t.tptg.y * t.tptg.z + 31u) / 32u;
    t.tpitg = uint3{0u, 0u, 0u};
    g.base = t.tgpig * t.tptg;
    t.tpig = g.base;
    t.tiitg = t.tiisg = t.sgiitg = 0;
    g.n = t.tptg.x * t.tptg.y * t.tptg.z;
    g.live = g.n;
    g.done = (uint8_t *)region_done.take(g.n);
    if (!g.done) abort(); /* no memory for the flags, as run_group */
    __builtin_memset(g.done, 0, g.n);
    rgroup *saved = rg_now;
    rg_now = &g;
    f(t);
    rg_now = saved;
}
} // namespace mc
#endif
#if !defined(__CUDA__) && (defined(__cpp_impl_coroutine) || defined(__cpp_coroutines))
/* ---- threadgroups as coroutines ----------------------------------------------
 * A kernel whose own body holds its threadgroup barriers (and no SIMD-group
 * function, no call to a function that uses either) is compiled as a C++
 * coroutine by the front end: each barrier becomes `co_await
 * mc::co_barrier(...)`, each return `co_return`. The group's threads are
 * coroutine frames in one per-worker arena, resumed in turn: a resume runs
 * a thread from one barrier to the next, which costs a call and a switch
 * on the suspension point, a few ns, where a fiber switch also saves and
 * restores registers on a stack of its own (docs/MSL.md). The semantics
 * are the fibers': a barrier releases once every live thread waits at one.
 * Built with -fcoroutines-ts (C++17 stays the language) where clang has it
 * (14 to 16); the two library names the compiler looks up are declared
 * here, so no C++ library header is needed. A compiler without coroutines
 * gets the fibers' spelling of the same kernel (the #else below). */
#define MC_CORO mc::coro
#define MC_CO_BARRIER co_await mc::co_barrier
#define MC_CO_RETURN co_return
namespace std {
template <class R, class... A> struct coroutine_traits { typedef typename R::promise_type promise_type; };
template <class P = void> struct coroutine_handle;
template <> struct coroutine_handle<void> {
    void *p = nullptr;
    static coroutine_handle from_address(void *a) noexcept {
        coroutine_handle h;
        h.p = a;
        return h;
    }
    void *address() const noexcept { return p; }
};
template <class P> struct coroutine_handle : coroutine_handle<void> {
    static coroutine_handle from_address(void *a) noexcept {
        coroutine_handle h;
        h.p = a;
        return h;
    }
};
} // namespace std
namespace mc {
/* Frames of one worker's coroutines: chunks kept between groups, reused
 * from the first at every group. */
struct coro_arena {
    struct chunk {
        chunk *next;
        size_t cap, used;
    };
    chunk *head = nullptr, *cur = nullptr;
    ~coro_arena() {
        for (chunk *c = head, *n; c; c = n) {
            n = c->next;
            free(c);
        }
    }
    void reset() {
        cur = head;
        if (cur) cur->used = 0;
    }
    void *take(size_t n) {
        n = (n + 63) & ~(size_t)63;
        while (cur && cur->used + n > cur->cap) {
            if (!cur->next) break;
            cur = cur->next;
            cur->used = 0;
        }
        if (!cur || cur->used + n > cur->cap) {
            size_t cap = n > ((size_t)1 << 20) ? n : ((size_t)1 << 20);
            chunk *c = (chunk *)aligned_alloc(64, 64 + cap);
            if (!c) return nullptr;
            c->cap = cap, c->used = 0;
            if (cur) {
                c->next = cur->next;
                cur->next = c;
            } else {
                c->next = head;
                head = c;
            }
            cur = c;
        }
        void *r = (char *)cur + 64 + cur->used;
        cur->used += n;
        return r;
    }
};
inline thread_local coro_arena coro_frames;
/* the running group's arena: a plain pointer, so taking a frame needs no
 * thread-local initialisation check (coro_frames has a destructor) */
inline thread_local coro_arena *coro_frames_now = nullptr;
template <bool Ready> struct coro_suspend {
    bool await_ready() const noexcept { return Ready; }
    void await_suspend(std::coroutine_handle<>) const noexcept {}
    void await_resume() const noexcept {}
};
typedef coro_suspend<true> coro_never;
typedef coro_suspend<false> coro_always;
/* One thread of a group: runs at once up to its first barrier, and stays
 * suspended at its end until the group is done. nodiscard: an entry point
 * that called a coroutine kernel as a plain function would leave its
 * threads at their first barrier, so that is a compile error. */
struct [[nodiscard]] coro {
    struct promise_type {
        static void *operator new(size_t n) noexcept { return coro_frames_now->take(n); }
        static void operator delete(void *) noexcept {}
        static coro get_return_object_on_allocation_failure() noexcept { return coro{nullptr}; }
        coro get_return_object() noexcept {
            return coro{__builtin_coro_promise((char *)this, __alignof(promise_type), true)};
        }
        coro_never initial_suspend() noexcept { return {}; }
        coro_always final_suspend() noexcept { return {}; }
        void return_void() noexcept {}
        void unhandled_exception() noexcept {}
    };
    void *frame;
};
/* threadgroup_barrier(flags) in a coroutine kernel: suspends the thread;
 * every thread's memory is the one memory here, so the flags order nothing
 * more. */
struct co_barrier {
    explicit co_barrier(mem_flags = mem_none) {}
    bool await_ready() const noexcept { return false; }
    void await_suspend(std::coroutine_handle<>) const noexcept {}
    void await_resume() const noexcept {}
};
/* Every thread of the group, in linear order, from barrier to barrier
 * until each has returned; false when there is no memory for the frames. */
template <class F> static inline bool run_coro(const mc_cpu_ctx *ctx, F &&f) {
    const uint32_t n = ctx->group_size[0] * ctx->group_size[1] * ctx->group_size[2];
    coro_arena *arena = &coro_frames;
    coro_frames_now = arena;
    arena->reset();
    void **frame = (void **)arena->take((size_t)n * sizeof(void *));
    if (!frame) return false;
    ids u;
    u.tptg = uint3{ctx->group_size[0], ctx->group_size[1], ctx->group_size[2]};
    u.tgpg = uint3{ctx->groups[0], ctx->groups[1], ctx->groups[2]};
    u.tgpig = uint3{ctx->group_id[0], ctx->group_id[1], ctx->group_id[2]};
    u.tpg = u.tptg * u.tgpg;
    u.sgptg = (u.tptg.x * u.tptg.y * u.tptg.z + 31u) / 32u;
    uint32_t made = 0;
    bool ok = true;
    for (uint32_t z = 0; z < u.tptg.z && ok; z++)
        for (uint32_t y = 0; y < u.tptg.y && ok; y++)
            for (uint32_t x = 0; x < u.tptg.x; x++) {
                u.tpitg = uint3{x, y, z};
                u.tpig = u.tgpig * u.tptg + u.tpitg;
                u.tiitg = made;
                u.tiisg = made & 31u;
                u.sgiitg = made >> 5;
                frame[made] = f(u).frame;
                if (!frame[made]) {
                    ok = false;
                    break;
                }
                made++;
            }
    for (bool live = ok; live;) {
        live = false;
        for (uint32_t i = 0; i < n; i++) {
            if (__builtin_coro_done(frame[i])) continue;
            __builtin_coro_resume(frame[i]);
            live = true;
        }
    }
    for (uint32_t i = 0; i < made; i++) __builtin_coro_destroy(frame[i]);
    return ok;
}
template <class F> static inline void run_group_coro(const mc_cpu_ctx *ctx, F &&f) {
    if (!run_coro(ctx, f)) abort(); /* no memory for the frames, as run_group */
}
} // namespace mc
#elif !defined(__CUDA__)
/* no coroutines in this compiler: coroutine kernels run as fibers */
#define MC_CORO void
#define MC_CO_BARRIER threadgroup_barrier
#define MC_CO_RETURN return
namespace mc {
template <class F> static inline void run_group_coro(const mc_cpu_ctx *ctx, F &&f) { run_group(ctx, f); }
} // namespace mc
#endif /* !__CUDA__ */

#ifdef __CUDA__
#pragma clang force_cuda_host_device end
#endif

#endif
