/*
 * The CPU device's kernel ABI. Standalone: kernels compiled at run time
 * include only this header (the runtime writes it beside the source).
 *
 * A kernel is called once per threadgroup, on one of the device's workers:
 *
 *     MC_KERNEL(saxpy, 4)   // name, number of argument slots (or -1)
 *     {
 *         float *y = MC_ARG(ctx, 0, float);
 *         const float *x = MC_ARG(ctx, 1, const float);
 *         float a = *MC_ARG(ctx, 2, const float);
 *         uint32_t n = *MC_ARG(ctx, 3, const uint32_t);
 *         MC_FOR_EACH_THREAD(ctx, tid) {       // tid: index within the grid
 *             if (tid < n) y[tid] += a * x[tid];
 *         }
 *         // or, vectorisable: MC_FOR_EACH_THREAD_BELOW(ctx, tid, n) y[tid] += a * x[tid];
 *     }
 *
 * A threadgroup barrier is the end of one MC_FOR_EACH_THREAD loop and the
 * start of the next: threads of a group run in order inside one call.
 * Threadgroup memory slot i is ctx->tg_mem[i] (per worker, not zeroed).
 */
#ifndef MC_MC_CPU_KERNEL_H
#define MC_MC_CPU_KERNEL_H

#include <stddef.h>
#include <stdint.h>

#define MC_CPU_ABI_VERSION 2
#define MC_CPU_MAX_ARGS 31
#define MC_CPU_MAX_TG_MEM 8

/* MSL function constants of a pipeline: index i is set when bit i of
 * defined is; each value sits in the low bytes of its slot, which holds
 * up to a 4-vector of 32-bit components (float4, int4, uint4). */
#define MC_CPU_MAX_CONSTANTS 128
#define MC_CPU_CONSTANT_SIZE 16
typedef struct mc_cpu_constants {
    uint64_t defined[MC_CPU_MAX_CONSTANTS / 64];
    uint64_t value[MC_CPU_MAX_CONSTANTS][MC_CPU_CONSTANT_SIZE / 8];
} mc_cpu_constants;

/* What an MSL library declares (its symbol mc__function_constants, ended
 * by an entry whose decl is NULL): each constant's index, the size of the
 * value the API passes for its type, and the declaration, for messages. */
typedef struct mc_cpu_fc_decl {
    uint32_t index;
    uint32_t size;
    const char *decl;
} mc_cpu_fc_decl;

typedef struct mc_cpu_arg {
    void *ptr;   /* buffer contents + offset, or the bytes passed by value */
    size_t size; /* bytes valid from ptr */
} mc_cpu_arg;

struct mc_cpu_ctx {
    uint32_t group_id[3];   /* this threadgroup in the grid */
    uint32_t groups[3];     /* threadgroups per grid */
    uint32_t group_size[3]; /* threads per threadgroup */
    const mc_cpu_arg *args; /* MC_CPU_MAX_ARGS slots */
    void *tg_mem[MC_CPU_MAX_TG_MEM];
    size_t tg_mem_size[MC_CPU_MAX_TG_MEM];
    uint32_t worker;                   /* which worker runs this call */
    const mc_cpu_constants *constants; /* MSL function constants, or NULL */
};
typedef struct mc_cpu_ctx mc_cpu_ctx;

#if defined(__GNUC__)
#define MC_KERNEL_EXPORT __attribute__((visibility("default")))
#else
#define MC_KERNEL_EXPORT
#endif

/* Declares the kernel and its argument count (read by validation). */
#define MC_KERNEL(name, nargs)                                \
    MC_KERNEL_EXPORT const int32_t name##__mc_argc = (nargs); \
    MC_KERNEL_EXPORT void name(const mc_cpu_ctx *ctx)

#define MC_ARG(ctx, i, type) ((type *)(ctx)->args[(i)].ptr)
#define MC_ARG_SIZE(ctx, i) ((ctx)->args[(i)].size)

/* Threads of the group in x-fastest order; tid is the global x index,
 * lid the flattened index within the group. For 1-D grids. The group's
 * size and base are read once, into locals: a kernel's stores through a
 * uint32_t pointer could otherwise alias ctx and force a reload of both
 * every iteration. */
#define MC_FOR_EACH_THREAD(ctx, tid)                                                                                \
    for (uint32_t mc__lid = 0, mc__n = (ctx)->group_size[0], mc__base = (ctx)->group_id[0] * mc__n, tid = mc__base; \
         mc__lid < mc__n; ++mc__lid, tid = mc__base + mc__lid)

/* The threads of the group whose global x index is below limit: a plain
 * counted loop with no test inside, which the compiler can vectorise. */
#define MC_FOR_EACH_THREAD_BELOW(ctx, tid, limit)                                  \
    for (uint32_t mc__e = ((ctx)->group_id[0] + 1u) * (ctx)->group_size[0],        \
                  tid = (ctx)->group_id[0] * (ctx)->group_size[0],                 \
                  mc__end = mc__e < (uint32_t)(limit) ? mc__e : (uint32_t)(limit); \
         tid < mc__end; ++tid)

/* 2-D: gx, gy are the global thread coordinates. */
#define MC_FOR_EACH_THREAD_2D(ctx, gx, gy)                                                                          \
    for (uint32_t mc__ly = 0, mc__ny = (ctx)->group_size[1], mc__by = (ctx)->group_id[1] * mc__ny, gy = mc__by;     \
         mc__ly < mc__ny; ++mc__ly, gy = mc__by + mc__ly)                                                           \
        for (uint32_t mc__lx = 0, mc__nx = (ctx)->group_size[0], mc__bx = (ctx)->group_id[0] * mc__nx, gx = mc__bx; \
             mc__lx < mc__nx; ++mc__lx, gx = mc__bx + mc__lx)

#endif
