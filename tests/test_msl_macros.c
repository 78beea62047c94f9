/*
 * Barriers and SIMD-group functions hidden behind macros (issue: never a
 * silent wrong result). The MSL front end picks how a kernel's threads run
 * from its tokens, before the preprocessor; a barrier it does not see
 * would run a kernel as a plain loop with no barrier. Each way of hiding
 * one (tests/msl/macros.metal: object-like, function-like, a chain, a
 * helper called by a macro or named in its arguments, an #if branch, a
 * SIMD-group function, a header the front end does not read) runs here
 * against a host reference, in a kernel that would otherwise be a plain
 * loop and in one whose other barriers are in view, and must take the
 * path that runs every thread of a group (fibers). Macros that hide what
 * the front end rewrites (threadgroup variables, attributes, kernels,
 * refused features) are compile errors naming the macro and its line.
 */
#include "mc_test.h"

#include "msl/msl.h"

#include <stdlib.h>
#include <string.h>

enum { GROUP = 64, GROUPS = 3, N = GROUP * GROUPS };

/* The entry point's runner for kernel name in the C++ the front end made. */
static const char *runner_of(const char *cpp, const char *name, char *out, size_t cap)
{
    char head[160];
    snprintf(head, sizeof head, "MC_KERNEL_EXPORT void %s(const mc_cpu_ctx *ctx)", name);
    const char *at = strstr(cpp, head);
    if (!at) return NULL;
    const char *r = strstr(at, "mc::run_");
    if (!r) return NULL;
    size_t n = strcspn(r, "(");
    snprintf(out, cap, "%.*s", (int)(n < cap ? n : cap - 1), r);
    return out;
}

/* src translated for the CPU device, or NULL with the log in *log (if not NULL). */
static char *translate_cpu(const char *src, char **log)
{
    char *cpp = NULL, *lg = NULL;
    size_t len = 0;
    mc_status s = mc__msl_translate(src, strlen(src), MC__MSL_CPU, &cpp, &len, &lg);
    if (log) *log = lg;
    else free(lg);
    return s == MC_OK ? cpp : NULL;
}

static char *macros_source(void)
{
    size_t len = 0;
    return mct_read_file(MC_SOURCE_DIR "/tests/msl/macros.metal", &len);
}

static uint32_t input(uint32_t i)
{
    return (i * 7u) % 101u + 1u;
}

/* What each shape of kernel writes (tests/msl/macros.metal). */
static uint32_t want_of(const char *fn, uint32_t i)
{
    uint32_t g = i / GROUP, l = i % GROUP, sum = 0;
    uint32_t mirror = g * GROUP + (GROUP - 1 - l);
    if (strstr(fn, "simd_plain") || strstr(fn, "simd_regions")) {
        uint32_t first = i - i % 32u;
        for (uint32_t k = first; k < first + 32u; k++)
            sum += strstr(fn, "plain") ? input(k) : input(g * GROUP + (GROUP - 1 - k % GROUP));
        return sum;
    }
    if (strstr(fn, "harmless")) return input(i) * input(i) + 256u;
    if (strstr(fn, "_plain")) return input(mirror);
    for (uint32_t k = 0; k < GROUP; k++) sum += input(g * GROUP + k);
    return input(mirror) + sum; /* _regions */
}

/* Runs fn of the library src (options: the library's) over GROUPS groups
 * of GROUP threads and compares every element with want_of; then checks
 * that the CPU front end gives fn the runner `runner`. */
static int run_and_check(const char *src, const char *options, const char *fn, const char *runner)
{
    mc_device *d = mct_open_device(0);
    if (!d) MC_SKIP("the device named by MC_DEVICE cannot be opened");
    mc_library_desc ld = MC_LIBRARY_DESC_INIT;
    ld.language = MC_LANG_MSL;
    ld.source = src;
    ld.options = options;
    mc_library *lib = NULL;
    char *log = NULL;
    mc_status st = mc_library_create(d, &ld, &lib, &log);
    if (st != MC_OK) fprintf(stderr, "%s\n%s\n", mc_last_error(), log ? log : "");
    mc_free(log);
    CHECK_OK(st);
    mc_pipeline_desc pd = MC_PIPELINE_DESC_INIT;
    pd.library = lib;
    pd.function = fn;
    mc_pipeline *p = NULL;
    CHECK_OK(mc_pipeline_create(d, &pd, &p));
    uint32_t in[N], out[N];
    for (uint32_t i = 0; i < N; i++) in[i] = input(i);
    mc_buffer_desc bd = MC_BUFFER_DESC_INIT;
    bd.size = sizeof in;
    bd.initial_data = in;
    mc_buffer *bi = NULL, *bo = NULL;
    CHECK_OK(mc_buffer_create(d, &bd, &bi));
    bd.initial_data = NULL;
    CHECK_OK(mc_buffer_create(d, &bd, &bo));
    mc_queue *q = NULL;
    mc_cmdbuf *cb = NULL;
    mc_pass *pass = NULL;
    CHECK_OK(mc_queue_create(d, NULL, &q));
    CHECK_OK(mc_cmdbuf_create(q, NULL, &cb));
    CHECK_OK(mc_cmdbuf_begin_pass(cb, fn, &pass));
    CHECK_OK(mc_pass_set_pipeline(pass, p));
    CHECK_OK(mc_pass_set_buffer(pass, 0, bi, 0));
    CHECK_OK(mc_pass_set_buffer(pass, 1, bo, 0));
    CHECK_OK(mc_pass_dispatch(pass, (mc_size3){GROUPS, 1, 1}, (mc_size3){GROUP, 1, 1}));
    CHECK_OK(mc_pass_end(pass));
    CHECK_OK(mc_cmdbuf_commit(cb));
    CHECK_OK(mc_cmdbuf_wait(cb, MC_WAIT_FOREVER));
    CHECK_OK(mc_cmdbuf_status(cb, NULL));
    CHECK_OK(mc_buffer_read(bo, 0, out, sizeof out));
    int bad = 0;
    for (uint32_t i = 0; i < N; i++)
        if (out[i] != want_of(fn, i) && bad++ < 4) fprintf(stderr, "%s: out[%u] = %u, want %u\n", fn, i, out[i], want_of(fn, i));
    mc_cmdbuf_release(cb);
    mc_queue_release(q);
    mc_buffer_release(bi);
    mc_buffer_release(bo);
    mc_pipeline_release(p);
    mc_library_release(lib);
    mc_device_release(d);
    CHECK_EQ(bad, 0);
    /* the path: what the CPU device runs (the translation is the same on any host) */
    char *cpp = translate_cpu(src, NULL);
    CHECK(cpp);
    char r[64];
    CHECK(runner_of(cpp, fn, r, sizeof r));
    if (strcmp(r, runner) != 0) fprintf(stderr, "%s runs with %s, not %s\n", fn, r, runner);
    free(cpp);
    CHECK(strcmp(r, runner) == 0);
    return 0;
}

/* fn_plain and fn_regions of tests/msl/macros.metal for fn = "fn": both
 * run every thread of a group (mc::run_group: fibers, where every barrier
 * is a barrier, however it is spelt). */
static int both_shapes(const char *kind)
{
    char *src = macros_source();
    CHECK(src);
    char fn[64];
    int rc = 0;
    for (int shape = 0; shape < 2 && !rc; shape++) {
        snprintf(fn, sizeof fn, "%s_%s", kind, shape ? "regions" : "plain");
        rc = run_and_check(src, NULL, fn, "mc::run_group");
    }
    free(src);
    return rc;
}

MC_TEST(msl_macro_barrier_object_like)
{
    return both_shapes("obj");
}

MC_TEST(msl_macro_barrier_function_like)
{
    return both_shapes("fn");
}

MC_TEST(msl_macro_barrier_chain)
{
    return both_shapes("chain");
}

MC_TEST(msl_macro_calls_helper_with_barrier)
{
    return both_shapes("helper");
}

MC_TEST(msl_macro_helper_named_in_arguments)
{
    return both_shapes("arg");
}

MC_TEST(msl_macro_barrier_in_if_branch)
{
    return both_shapes("if");
}

MC_TEST(msl_macro_simd_function)
{
    return both_shapes("simd");
}

/* A macro from a header the front end does not read (found through the
 * library's -I option): whatever it holds, the kernels of the source run
 * every thread of a group. */
MC_TEST(msl_macro_from_included_header)
{
    static const char src[] =
        "#include <metal_stdlib>\n"
        "#include \"macros_sync.h\"\n"
        "using namespace metal;\n"
        "kernel void hdr_plain(device const uint *in [[buffer(0)]], device uint *out [[buffer(1)]],\n"
        "                      uint gid [[thread_position_in_grid]], uint lid [[thread_position_in_threadgroup]],\n"
        "                      uint size [[threads_per_threadgroup]])\n"
        "{\n"
        "    threadgroup uint t[256];\n"
        "    t[lid] = in[gid];\n"
        "    HEADER_SYNC();\n"
        "    out[gid] = t[size - 1 - lid];\n"
        "}\n"
        "kernel void hdr_regions(device const uint *in [[buffer(0)]], device uint *out [[buffer(1)]],\n"
        "                        uint gid [[thread_position_in_grid]], uint lid [[thread_position_in_threadgroup]],\n"
        "                        uint size [[threads_per_threadgroup]])\n"
        "{\n"
        "    threadgroup uint t[256];\n"
        "    t[lid] = in[gid];\n"
        "    threadgroup_barrier(mem_flags::mem_threadgroup);\n"
        "    uint mine = t[size - 1 - lid];\n"
        "    threadgroup_barrier(mem_flags::mem_threadgroup);\n"
        "    for (uint s = size / 2; s > 0; s >>= 1) {\n"
        "        if (lid < s) t[lid] += t[lid + s];\n"
        "        HEADER_SYNC();\n"
        "    }\n"
        "    out[gid] = mine + t[0];\n"
        "}\n";
    const char *opts = "-I" MC_SOURCE_DIR "/tests/msl";
    int rc = run_and_check(src, opts, "hdr_plain", "mc::run_group");
    return rc ? rc : run_and_check(src, opts, "hdr_regions", "mc::run_group");
}

/* Macros that hide no barrier leave a kernel its plain loop. */
MC_TEST(msl_macro_harmless_keeps_plain_loop)
{
    char *src = macros_source();
    CHECK(src);
    int rc = run_and_check(src, NULL, "harmless_plain", "mc::run_loop");
    free(src);
    return rc;
}
