// Barriers and SIMD-group functions behind macros: the CPU device must see
// them to run each kernel so that a barrier is a barrier. Each way of
// hiding one comes twice: in a kernel that shows nothing else (it would
// otherwise run as a plain loop) and in a kernel whose other barriers are
// in view at its top level (region loops or coroutines). Checked against
// host references in tests/test_msl_macros.c.
#include <metal_stdlib>
using namespace metal;

// an object-like macro
#define SYNC_OBJ threadgroup_barrier(mem_flags::mem_threadgroup)
// a function-like macro
#define SYNC_FN() threadgroup_barrier(mem_flags::mem_threadgroup)
// a chain: the barrier two macros down, its flags a third
#define TG_FLAGS mem_flags::mem_threadgroup
#define BARRIER_ON(f) threadgroup_barrier(f)
#define SYNC_CHAIN() BARRIER_ON(TG_FLAGS)
// a helper function with a barrier, called by a macro
static void sync_helper() { threadgroup_barrier(mem_flags::mem_threadgroup); }
#define SYNC_HELPER() sync_helper()
// a helper named only in a macro's arguments
#define CALL(f) f()
// a barrier in one branch of #if (the branch that is compiled)
#ifdef MC_MACROS_NO_SUCH_OPTION
#define SYNC_IF() (void)0
#else
#define SYNC_IF() threadgroup_barrier(mem_flags::mem_threadgroup)
#endif
// a SIMD-group function
#define REDUCE(x) simd_sum(x)
// harmless macros: they must not cost a kernel its plain loop
#define SQUARE(x) ((x) * (x))
#define LIMIT 256

// Plain shape: out[gid] = the group's input reversed, through threadgroup
// memory (wrong without the barrier: a thread reads what a later thread
// has not written yet).
kernel void obj_plain(device const uint *in [[buffer(0)]], device uint *out [[buffer(1)]],
                      uint gid [[thread_position_in_grid]], uint lid [[thread_position_in_threadgroup]],
                      uint size [[threads_per_threadgroup]])
{
    threadgroup uint t[LIMIT];
    t[lid] = in[gid];
    SYNC_OBJ;
    out[gid] = t[size - 1 - lid];
}

kernel void fn_plain(device const uint *in [[buffer(0)]], device uint *out [[buffer(1)]],
                     uint gid [[thread_position_in_grid]], uint lid [[thread_position_in_threadgroup]],
                     uint size [[threads_per_threadgroup]])
{
    threadgroup uint t[LIMIT];
    t[lid] = in[gid];
    SYNC_FN();
    out[gid] = t[size - 1 - lid];
}

kernel void chain_plain(device const uint *in [[buffer(0)]], device uint *out [[buffer(1)]],
                        uint gid [[thread_position_in_grid]], uint lid [[thread_position_in_threadgroup]],
                        uint size [[threads_per_threadgroup]])
{
    threadgroup uint t[LIMIT];
    t[lid] = in[gid];
    SYNC_CHAIN();
    out[gid] = t[size - 1 - lid];
}

kernel void helper_plain(device const uint *in [[buffer(0)]], device uint *out [[buffer(1)]],
                         uint gid [[thread_position_in_grid]], uint lid [[thread_position_in_threadgroup]],
                         uint size [[threads_per_threadgroup]])
{
    threadgroup uint t[LIMIT];
    t[lid] = in[gid];
    SYNC_HELPER();
    out[gid] = t[size - 1 - lid];
}

kernel void arg_plain(device const uint *in [[buffer(0)]], device uint *out [[buffer(1)]],
                      uint gid [[thread_position_in_grid]], uint lid [[thread_position_in_threadgroup]],
                      uint size [[threads_per_threadgroup]])
{
    threadgroup uint t[LIMIT];
    t[lid] = in[gid];
    CALL(sync_helper);
    out[gid] = t[size - 1 - lid];
}

kernel void if_plain(device const uint *in [[buffer(0)]], device uint *out [[buffer(1)]],
                     uint gid [[thread_position_in_grid]], uint lid [[thread_position_in_threadgroup]],
                     uint size [[threads_per_threadgroup]])
{
    threadgroup uint t[LIMIT];
    t[lid] = in[gid];
    SYNC_IF();
    out[gid] = t[size - 1 - lid];
}

// out[gid] = the sum of in over the thread's SIMD group (32 lanes)
kernel void simd_plain(device const uint *in [[buffer(0)]], device uint *out [[buffer(1)]],
                       uint gid [[thread_position_in_grid]])
{
    out[gid] = REDUCE(in[gid]);
}

// Region shape: out[gid] = the group's input reversed plus the group's
// sum, a tree reduction whose first barriers are in view and whose loop
// barrier is hidden.
kernel void obj_regions(device const uint *in [[buffer(0)]], device uint *out [[buffer(1)]],
                        uint gid [[thread_position_in_grid]], uint lid [[thread_position_in_threadgroup]],
                        uint size [[threads_per_threadgroup]])
{
    threadgroup uint t[LIMIT];
    t[lid] = in[gid];
    threadgroup_barrier(mem_flags::mem_threadgroup);
    uint mine = t[size - 1 - lid];
    threadgroup_barrier(mem_flags::mem_threadgroup);
    for (uint s = size / 2; s > 0; s >>= 1) {
        if (lid < s) t[lid] += t[lid + s];
        SYNC_OBJ;
    }
    out[gid] = mine + t[0];
}

kernel void fn_regions(device const uint *in [[buffer(0)]], device uint *out [[buffer(1)]],
                       uint gid [[thread_position_in_grid]], uint lid [[thread_position_in_threadgroup]],
                       uint size [[threads_per_threadgroup]])
{
    threadgroup uint t[LIMIT];
    t[lid] = in[gid];
    threadgroup_barrier(mem_flags::mem_threadgroup);
    uint mine = t[size - 1 - lid];
    threadgroup_barrier(mem_flags::mem_threadgroup);
    for (uint s = size / 2; s > 0; s >>= 1) {
        if (lid < s) t[lid] += t[lid + s];
        SYNC_FN();
    }
    out[gid] = mine + t[0];
}

kernel void chain_regions(device const uint *in [[buffer(0)]], device uint *out [[buffer(1)]],
                          uint gid [[thread_position_in_grid]], uint lid [[thread_position_in_threadgroup]],
                          uint size [[threads_per_threadgroup]])
{
    threadgroup uint t[LIMIT];
    t[lid] = in[gid];
    threadgroup_barrier(mem_flags::mem_threadgroup);
    uint mine = t[size - 1 - lid];
    threadgroup_barrier(mem_flags::mem_threadgroup);
    for (uint s = size / 2; s > 0; s >>= 1) {
        if (lid < s) t[lid] += t[lid + s];
        SYNC_CHAIN();
    }
    out[gid] = mine + t[0];
}

kernel void helper_regions(device const uint *in [[buffer(0)]], device uint *out [[buffer(1)]],
                           uint gid [[thread_position_in_grid]], uint lid [[thread_position_in_threadgroup]],
                           uint size [[threads_per_threadgroup]])
{
    threadgroup uint t[LIMIT];
    t[lid] = in[gid];
    threadgroup_barrier(mem_flags::mem_threadgroup);
    uint mine = t[size - 1 - lid];
    threadgroup_barrier(mem_flags::mem_threadgroup);
    for (uint s = size / 2; s > 0; s >>= 1) {
        if (lid < s) t[lid] += t[lid + s];
        SYNC_HELPER();
    }
    out[gid] = mine + t[0];
}

kernel void arg_regions(device const uint *in [[buffer(0)]], device uint *out [[buffer(1)]],
                        uint gid [[thread_position_in_grid]], uint lid [[thread_position_in_threadgroup]],
                        uint size [[threads_per_threadgroup]])
{
    threadgroup uint t[LIMIT];
    t[lid] = in[gid];
    threadgroup_barrier(mem_flags::mem_threadgroup);
    uint mine = t[size - 1 - lid];
    threadgroup_barrier(mem_flags::mem_threadgroup);
    for (uint s = size / 2; s > 0; s >>= 1) {
        if (lid < s) t[lid] += t[lid + s];
        CALL(sync_helper);
    }
    out[gid] = mine + t[0];
}

kernel void if_regions(device const uint *in [[buffer(0)]], device uint *out [[buffer(1)]],
                       uint gid [[thread_position_in_grid]], uint lid [[thread_position_in_threadgroup]],
                       uint size [[threads_per_threadgroup]])
{
    threadgroup uint t[LIMIT];
    t[lid] = in[gid];
    threadgroup_barrier(mem_flags::mem_threadgroup);
    uint mine = t[size - 1 - lid];
    threadgroup_barrier(mem_flags::mem_threadgroup);
    for (uint s = size / 2; s > 0; s >>= 1) {
        if (lid < s) t[lid] += t[lid + s];
        SYNC_IF();
    }
    out[gid] = mine + t[0];
}

// out[gid] = the sum, over the thread's SIMD group, of the group's input
// reversed (the barrier in view, the SIMD-group function hidden)
kernel void simd_regions(device const uint *in [[buffer(0)]], device uint *out [[buffer(1)]],
                         uint gid [[thread_position_in_grid]], uint lid [[thread_position_in_threadgroup]],
                         uint size [[threads_per_threadgroup]])
{
    threadgroup uint t[LIMIT];
    t[lid] = in[gid];
    threadgroup_barrier(mem_flags::mem_threadgroup);
    out[gid] = REDUCE(t[size - 1 - lid]);
}

// Harmless macros keep the plain loop: out[gid] = in[gid]^2 + 256
kernel void harmless_plain(device const uint *in [[buffer(0)]], device uint *out [[buffer(1)]],
                           uint gid [[thread_position_in_grid]])
{
    out[gid] = SQUARE(in[gid]) + LIMIT;
}

// Two SIMD-group calls in one macro, in the two arms of a branch the lanes
// of a SIMD group take apart: each arm's lanes exchange only among
// themselves. out[gid] = the sum of in over the even lanes of the thread's
// SIMD group for an even lane, 10 times the sum over the odd lanes for an
// odd one.
#define PICK(c, x) ((c) ? simd_sum(x) : simd_sum((x) * 10u))
kernel void simd_divergent(device const uint *in [[buffer(0)]], device uint *out [[buffer(1)]],
                           uint gid [[thread_position_in_grid]], uint lane [[thread_index_in_simdgroup]])
{
    out[gid] = PICK(lane % 2u == 0u, in[gid]);
}
