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
    if (strstr(fn, "simd_divergent")) {
        uint32_t first = i - i % 32u;
        for (uint32_t k = first + i % 2u; k < first + 32u; k += 2) sum += input(k);
        return i % 2u ? 10u * sum : sum;
    }
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
    mc_library *lib = mct_msl_library(d, src, options);
    CHECK(lib);
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
        if (out[i] != want_of(fn, i) && bad++ < 4)
            fprintf(stderr, "%s: out[%u] = %u, want %u\n", fn, i, out[i], want_of(fn, i));
    mc_cmdbuf_release(cb);
    mc_queue_release(q);
    mc_buffer_release(bi);
    mc_buffer_release(bo);
    mc_pipeline_release(p);
    mc_library_release(lib);
    mc_device_release(d);
    CHECK_EQ(bad, 0);
    /* the path: what the CPU device runs (the translation is the same on any host) */
    char *cpp = mct_msl_translate_cpu(src, NULL);
    CHECK(cpp);
    char r[64];
    CHECK(mct_msl_runner_of(cpp, fn, r, sizeof r));
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

/* ---- what else a macro can hide from the front end ------------------------------ */

/* The front end's error for src (MC_ERR_COMPILE) must hold each of want[]. */
static int expect_refused(const char *src, const char *const *want, size_t nwant)
{
    char *log = NULL;
    char *cpp = mct_msl_translate_cpu(src, &log);
    if (cpp) fprintf(stderr, "translated, not refused:\n%s\n", src);
    free(cpp);
    CHECK(!cpp);
    CHECK(log);
    for (size_t k = 0; k < nwant; k++) CHECK_STR_CONTAINS(log, want[k]);
    free(log);
    return 0;
}

#define MSL_HEAD "#include <metal_stdlib>\nusing namespace metal;\n"
#define MSL_COPY "kernel void k(device uint *o [[buffer(0)]], uint i [[thread_position_in_grid]]) { o[i] = i; }\n"

/* a threadgroup declaration behind a macro would not be placed in the
 * group's memory (each thread would get its own array) */
MC_TEST(msl_macro_hiding_threadgroup_refused)
{
    static const char *const want[] = {"program_source:3: error", "macro 'TG'", "threadgroup"};
    return expect_refused(MSL_HEAD
                          "#define TG threadgroup\n"
                          "kernel void k(device uint *o [[buffer(0)]], uint l [[thread_index_in_threadgroup]]) {\n"
                          "    TG uint t[64];\n    t[l] = l;\n    o[l] = t[63 - l];\n}\n",
                          want, 3);
}

/* attributes bind a kernel's parameters and function constants: one behind
 * a macro would bind nothing */
MC_TEST(msl_macro_hiding_attribute_refused)
{
    static const char *const want_id[] = {"program_source:3: error", "macro 'GID'", "[[thread_position_in_grid]]"};
    int rc = expect_refused(MSL_HEAD
                            "#define GID [[thread_position_in_grid]]\n"
                            "kernel void k(device uint *o [[buffer(0)]], uint i GID) { o[i] = i; }\n",
                            want_id, 3);
    if (rc) return rc;
    static const char *const want_fc[] = {"program_source:4: error", "macro 'FC'", "[[function_constant]]"};
    rc = expect_refused(MSL_HEAD "\n#define FC(n) [[function_constant(n)]]\nconstant uint scale FC(0);\n" MSL_COPY,
                        want_fc, 3);
    if (rc) return rc;
    static const char *const want_buf[] = {"program_source:3: error", "macro 'OUT'", "[[buffer]]"};
    rc = expect_refused(MSL_HEAD
                        "#define OUT(n) device uint *o [[buffer(n)]]\n"
                        "kernel void k(OUT(0), uint i [[thread_position_in_grid]]) { o[i] = i; }\n",
                        want_buf, 3);
    if (rc) return rc;
    /* MLX's instantiation macro: the kernel would not be found */
    static const char *const want_inst[] = {"program_source:3: error", "macro 'instantiate_kernel'", "[[host_name]]"};
    return expect_refused(MSL_HEAD
                          "#define instantiate_kernel(name, func, ...) template [[host_name(name)]] "
                          "[[kernel]] decltype(func<__VA_ARGS__>) func<__VA_ARGS__>;\n"
                          "template <typename T> kernel void add(device T *o [[buffer(0)]], "
                          "uint i [[thread_position_in_grid]]) { o[i] += T(1); }\n"
                          "instantiate_kernel(\"add_float\", add, float)\n",
                          want_inst, 3);
}

/* a kernel behind a macro would not be found; a refused feature behind
 * one is refused as it is in the code, with the macro named */
MC_TEST(msl_macro_hiding_kernel_or_refused_feature_refused)
{
    static const char *const want_k[] = {"program_source:3: error", "macro 'KERNEL'", "'kernel'"};
    int rc =
        expect_refused(MSL_HEAD
                       "#define KERNEL kernel void\n"
                       "KERNEL k(device uint *o [[buffer(0)]], uint i [[thread_position_in_grid]]) { o[i] = i; }\n",
                       want_k, 3);
    if (rc) return rc;
    static const char *const want_t[] = {"program_source:4: error", "texture2d (in macro 'TEX')", "textures"};
    return expect_refused(MSL_HEAD "\n#define TEX texture2d<float>\nfloat first(TEX t);\n" MSL_COPY, want_t, 3);
}

/* A macro that is never used is not refused, whatever it holds (a header
 * shared with other code may define instantiation macros). */
MC_TEST(msl_macro_unused_is_not_refused)
{
    char *cpp = mct_msl_translate_cpu(MSL_HEAD
                                      "#define TG threadgroup\n#define INST(n) template [[host_name(n)]] [[kernel]]\n"
                                      "#define TEX texture2d<float>\n" MSL_COPY,
                                      NULL);
    CHECK(cpp);
    char r[64];
    CHECK(mct_msl_runner_of(cpp, "k", r, sizeof r));
    CHECK_STR_CONTAINS(r, "mc::run_loop");
    free(cpp);
    return 0;
}

/* A vector constructor in a macro's body converts as it does in code (left
 * alone, float2(int2) would be a bit cast of clang's vectors), and an `h`
 * literal there is a half. */
MC_TEST(msl_macro_vector_constructor_converts)
{
    static const char src[] = MSL_HEAD
        "#define TO_FLOAT2(v) float2(v)\n"
        "#define HALF_STEP 0.5h\n"
        "kernel void conv(device float *o [[buffer(0)]], uint i [[thread_position_in_grid]]) {\n"
        "    float2 f = TO_FLOAT2(int2(int(i), -3));\n"
        "    o[i] = f.x + f.y + float(HALF_STEP);\n"
        "}\n";
    char *cpp = mct_msl_translate_cpu(src, NULL);
    CHECK(cpp);
    CHECK_STR_CONTAINS(cpp, "#define TO_FLOAT2(v) mc::make<float2>(v)");
    CHECK_STR_CONTAINS(cpp, "#define HALF_STEP half(0.5f)");
    free(cpp);
    mc_device *d = mct_open_device(0);
    if (!d) MC_SKIP("the device named by MC_DEVICE cannot be opened");
    mc_library_desc ld = MC_LIBRARY_DESC_INIT;
    ld.language = MC_LANG_MSL;
    ld.source = src;
    mc_library *lib = NULL;
    char *log = NULL;
    mc_status st = mc_library_create(d, &ld, &lib, &log);
    if (st != MC_OK) fprintf(stderr, "%s\n%s\n", mc_last_error(), log ? log : "");
    mc_free(log);
    CHECK_OK(st);
    mc_pipeline_desc pd = MC_PIPELINE_DESC_INIT;
    pd.library = lib;
    pd.function = "conv";
    mc_pipeline *p = NULL;
    CHECK_OK(mc_pipeline_create(d, &pd, &p));
    float out[64];
    mc_buffer_desc bd = MC_BUFFER_DESC_INIT;
    bd.size = sizeof out;
    mc_buffer *bo = NULL;
    CHECK_OK(mc_buffer_create(d, &bd, &bo));
    mc_queue *q = NULL;
    mc_cmdbuf *cb = NULL;
    mc_pass *pass = NULL;
    CHECK_OK(mc_queue_create(d, NULL, &q));
    CHECK_OK(mc_cmdbuf_create(q, NULL, &cb));
    CHECK_OK(mc_cmdbuf_begin_pass(cb, "conv", &pass));
    CHECK_OK(mc_pass_set_pipeline(pass, p));
    CHECK_OK(mc_pass_set_buffer(pass, 0, bo, 0));
    CHECK_OK(mc_pass_dispatch(pass, (mc_size3){2, 1, 1}, (mc_size3){32, 1, 1}));
    CHECK_OK(mc_pass_end(pass));
    CHECK_OK(mc_cmdbuf_commit(cb));
    CHECK_OK(mc_cmdbuf_wait(cb, MC_WAIT_FOREVER));
    CHECK_OK(mc_buffer_read(bo, 0, out, sizeof out));
    for (int i = 0; i < 64; i++) CHECK_FLOAT_NEAR(out[i], (float)i - 3.0f + 0.5f, 0.0f);
    mc_cmdbuf_release(cb);
    mc_queue_release(q);
    mc_buffer_release(bo);
    mc_pipeline_release(p);
    mc_library_release(lib);
    mc_device_release(d);
    return 0;
}

/* A macro holding `return` keeps a kernel off the coroutines (its return
 * could not end a coroutine), and the kernel still gives right results. */
MC_TEST(msl_macro_with_return_is_not_a_coroutine)
{
    static const char src[] = MSL_HEAD
        "#define LEAVE_IF(c) if (c) return\n"
        "kernel void k(device uint *o [[buffer(0)]], uint l [[thread_position_in_threadgroup]]) {\n"
        "    threadgroup uint t[64];\n"
        "    t[l] = l;\n"
        "    threadgroup_barrier(mem_flags::mem_threadgroup);\n"
        "    LEAVE_IF(l >= 32u);\n"
        "    o[l] = t[63u - l];\n"
        "}\n";
    setenv("MC_MSL_REGIONS", "0", 1); /* the coroutine rule, not the region one */
    char *cpp = mct_msl_translate_cpu(src, NULL);
    unsetenv("MC_MSL_REGIONS");
    CHECK(cpp);
    char r[64];
    CHECK(mct_msl_runner_of(cpp, "k", r, sizeof r));
    free(cpp);
    CHECK(strcmp(r, "mc::run_group") == 0);
    return 0;
}

/* The CUDA form of the same kernels builds (barriers are bar.sync there,
 * however spelt; the macro bodies' rewrites hold for clang's CUDA mode). */
MC_TEST(msl_macro_cuda_form_builds)
{
    char *src = macros_source();
    CHECK(src);
    char *ptx = NULL, *log = NULL;
    size_t ptx_len = 0;
    mc_status s = mc__msl_build_ptx(src, strlen(src), "", &ptx, &ptx_len, &log);
    free(src);
    if (s == MC_ERR_UNSUPPORTED) {
        free(log);
        MC_SKIP("no clang CUDA mode or libdevice here: %s", mc_last_error());
    }
    if (s != MC_OK) fprintf(stderr, "%s\n%s\n", mc_last_error(), log ? log : "");
    free(log);
    CHECK_OK(s);
    CHECK(ptx);
    CHECK_STR_CONTAINS(ptx, ".entry obj_plain");
    CHECK_STR_CONTAINS(ptx, "bar.sync");
    free(ptx);
    return 0;
}

/* A macro used at file scope that holds a barrier may define the helper a
 * kernel calls: the helper's body is not in the tokens, so every kernel of
 * the source runs every thread of its group. */
MC_TEST(msl_macro_defining_a_helper_with_barrier)
{
    static const char src[] = MSL_HEAD
        "#define DEFINE_SYNC(name) static void name() { threadgroup_barrier(mem_flags::mem_threadgroup); }\n"
        "DEFINE_SYNC(made_sync)\n"
        "kernel void made_plain(device const uint *in [[buffer(0)]], device uint *out [[buffer(1)]],\n"
        "                       uint gid [[thread_position_in_grid]], uint lid [[thread_position_in_threadgroup]],\n"
        "                       uint size [[threads_per_threadgroup]])\n"
        "{\n"
        "    threadgroup uint t[256];\n"
        "    t[lid] = in[gid];\n"
        "    made_sync();\n"
        "    out[gid] = t[size - 1 - lid];\n"
        "}\n";
    return run_and_check(src, NULL, "made_plain", "mc::run_group");
}

/* Two SIMD-group calls of one macro in the two arms of a divergent branch:
 * each call is its own site, so each arm's lanes exchange among themselves,
 * as on a GPU. */
MC_TEST(msl_macro_simd_calls_in_divergent_branches)
{
    char *src = macros_source();
    CHECK(src);
    int rc = run_and_check(src, NULL, "simd_divergent", "mc::run_group");
    free(src);
    return rc;
}
