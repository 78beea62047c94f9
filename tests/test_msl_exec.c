/*
 * How the CPU device runs an MSL kernel's threads: as a plain loop (no
 * barrier, no SIMD-group function), as coroutines (barriers called in the
 * kernel's own body) or as fibers (everything else: SIMD-group functions,
 * barriers in helpers or lambdas). The front end's choice is checked on
 * the generated entry points; the coroutine path is run against a host
 * reference with threads that leave early, barriers in a loop, private
 * state kept across barriers, 2-D groups of 1024 threads and several
 * groups in flight on the workers.
 */
#include "mc_test.h"

#include "msl/msl.h"

#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static const char paths_src[] =
    "#include <metal_stdlib>\n"
    "using namespace metal;\n"
    "static void sync_all() { threadgroup_barrier(mem_flags::mem_threadgroup); }\n"
    "kernel void plain(device float *o [[buffer(0)]], uint i [[thread_position_in_grid]]) { o[i] = 1.0f; }\n"
    "kernel void own_barriers(device float *o [[buffer(0)]], uint i [[thread_position_in_grid]],\n"
    "                         uint l [[thread_position_in_threadgroup]]) {\n"
    "    threadgroup float t[64];\n"
    "    if (l >= 64u) return;\n"
    "    t[l] = o[i];\n"
    "    threadgroup_barrier(mem_flags::mem_threadgroup);\n"
    "    for (uint s = 0; s < 2u; s++) threadgroup_barrier(mem_flags::mem_device | mem_flags::mem_threadgroup);\n"
    "    o[i] = t[63u - l];\n"
    "}\n"
    "kernel void in_helper(device float *o [[buffer(0)]], uint i [[thread_position_in_grid]]) {\n"
    "    sync_all();\n"
    "    o[i] = 2.0f;\n"
    "}\n"
    "kernel void with_simd(device float *o [[buffer(0)]], uint i [[thread_position_in_grid]]) {\n"
    "    threadgroup_barrier(mem_flags::mem_threadgroup);\n"
    "    o[i] = simd_sum(o[i]);\n"
    "}\n"
    "kernel void with_lambda(device float *o [[buffer(0)]], uint i [[thread_position_in_grid]]) {\n"
    "    auto f = [&](uint k) { return o[k] * 2.0f; };\n"
    "    threadgroup_barrier(mem_flags::mem_threadgroup);\n"
    "    o[i] = f(i);\n"
    "}\n";

MC_TEST(msl_exec_path_per_kernel)
{
    /* own_barriers would run as region loops (msl_regions_path_per_kernel):
     * this test is about the coroutine rewrite */
    setenv("MC_MSL_REGIONS", "0", 1);
    char *cpp = mct_msl_translate_cpu(paths_src, NULL);
    CHECK(cpp);
    char r[64];
    CHECK(mct_msl_runner_of(cpp, "plain", r, sizeof r));
    CHECK_STR_CONTAINS(r, "mc::run_loop");
    CHECK(mct_msl_runner_of(cpp, "own_barriers", r, sizeof r));
    CHECK_STR_CONTAINS(r, "mc::run_group_coro");
    /* its barriers suspend, its return ends the coroutine */
    CHECK_STR_CONTAINS(cpp, "kernel MC_CORO own_barriers(");
    CHECK_STR_CONTAINS(cpp, "if (l >= 64u) MC_CO_RETURN;");
    CHECK_STR_CONTAINS(cpp, "MC_CO_BARRIER(mem_flags::mem_threadgroup);");
    /* the others keep fibers, and their barriers stay calls */
    static const char *const fibers[] = {"in_helper", "with_simd", "with_lambda"};
    for (size_t k = 0; k < 3; k++) {
        CHECK(mct_msl_runner_of(cpp, fibers[k], r, sizeof r));
        if (strcmp(r, "mc::run_group") != 0) fprintf(stderr, "%s runs with %s\n", fibers[k], r);
        CHECK(strcmp(r, "mc::run_group") == 0);
    }
    CHECK_STR_CONTAINS(cpp, "static void sync_all() { threadgroup_barrier(");
    free(cpp);
    return 0;
}

/* Threads at or past `live` return before the first barrier. The live ones
 * pass a value through threadgroup memory 8 times (16 barriers in a loop)
 * and keep a private array, indexed at run time, across the barriers. */
static const char coro_src[] =
    "#include <metal_stdlib>\n"
    "using namespace metal;\n"
    "kernel void coro_mix(device uint *out [[buffer(0)]], constant uint &live [[buffer(1)]],\n"
    "                     uint2 lid [[thread_position_in_threadgroup]], uint2 tptg [[threads_per_threadgroup]],\n"
    "                     uint li [[thread_index_in_threadgroup]], uint2 group [[threadgroup_position_in_grid]],\n"
    "                     uint2 gid [[thread_position_in_grid]], uint2 grid [[threads_per_grid]])\n"
    "{\n"
    "    threadgroup uint t[1024];\n"
    "    uint at = gid.y * grid.x + gid.x;\n"
    "    if (lid.y * tptg.x + lid.x != li) { out[at] = 0xdeadu; return; }\n"
    "    uint mine[320];\n"
    "    for (uint k = 0; k < 320u; k++) mine[k] = li * 320u + k;\n"
    "    if (li >= live) { out[at] = 0xffffffffu; return; }\n"
    "    uint g = group.x * 1000000u + group.y * 100000u;\n"
    "    for (uint round = 0; round < 8u; round++) {\n"
    "        uint k = (round * 40u + li) % 320u;\n"
    "        t[li] = mine[k] + g;\n"
    "        threadgroup_barrier(mem_flags::mem_threadgroup);\n"
    "        mine[k] = t[(live - 1u) - li];\n"
    "        threadgroup_barrier(mem_flags::mem_threadgroup);\n"
    "    }\n"
    "    uint s = 0;\n"
    "    for (uint k = 0; k < 320u; k++) s += mine[k];\n"
    "    out[at] = s;\n"
    "}\n";

/* options: the library's compiler options (NULL: none) */
static int run_coro_mix(const char *options);

MC_TEST(msl_coroutine_threads_cross_barriers)
{
    return run_coro_mix(NULL);
}

/* The same kernel where the compiler has no coroutines (the header then
 * spells it for fibers): the same results. */
MC_TEST(msl_coroutine_kernel_without_coroutines_runs_as_fibers)
{
    return run_coro_mix("-U__cpp_coroutines -U__cpp_impl_coroutine");
}

static int run_coro_mix(const char *options)
{
    mc_device *d = mct_open_device(0);
    if (!d) MC_SKIP("the device named by MC_DEVICE cannot be opened");
    mc_device_info info;
    CHECK_OK(mc_device_get_info(d, &info));
    if (info.kind != MC_DEVICE_CPU) {
        mc_device_release(d);
        MC_SKIP("coroutine threads are the CPU device's way to run barriers");
    }
    mc_library *lib = mct_msl_library(d, coro_src, options);
    CHECK(lib);
    mc_pipeline_desc pd = MC_PIPELINE_DESC_INIT;
    pd.library = lib;
    pd.function = "coro_mix";
    mc_pipeline *p = NULL;
    CHECK_OK(mc_pipeline_create(d, &pd, &p));
    enum { TX = 32, TY = 32, GX = 3, GY = 2, N = TX * TY, W = TX * GX, H = TY * GY };
    const uint32_t live = N - 77; /* not a multiple of 32: the last threads leave early */
    mc_buffer_desc bd = MC_BUFFER_DESC_INIT;
    bd.size = sizeof(uint32_t) * W * H;
    mc_buffer *bo = NULL;
    CHECK_OK(mc_buffer_create(d, &bd, &bo));
    mc_queue *q = NULL;
    mc_cmdbuf *cb = NULL;
    mc_pass *pass = NULL;
    CHECK_OK(mc_queue_create(d, NULL, &q));
    CHECK_OK(mc_cmdbuf_create(q, NULL, &cb));
    CHECK_OK(mc_cmdbuf_begin_pass(cb, "coro", &pass));
    CHECK_OK(mc_pass_set_pipeline(pass, p));
    CHECK_OK(mc_pass_set_buffer(pass, 0, bo, 0));
    CHECK_OK(mc_pass_set_bytes(pass, 1, &live, sizeof live));
    CHECK_OK(mc_pass_dispatch(pass, (mc_size3){GX, GY, 1}, (mc_size3){TX, TY, 1}));
    CHECK_OK(mc_pass_end(pass));
    CHECK_OK(mc_cmdbuf_commit(cb));
    CHECK_OK(mc_cmdbuf_wait(cb, MC_WAIT_FOREVER));
    CHECK_OK(mc_cmdbuf_status(cb, NULL));
    uint32_t *out = malloc(bd.size), *mine = malloc(sizeof(uint32_t) * N * 320), *t = malloc(sizeof(uint32_t) * N);
    CHECK(out && mine && t);
    CHECK_OK(mc_buffer_read(bo, 0, out, bd.size));
    /* the host reference: the same phases, thread by thread */
    int bad = 0;
    for (uint32_t gy = 0; gy < GY; gy++)
        for (uint32_t gx = 0; gx < GX; gx++) {
            uint32_t g = gx * 1000000u + gy * 100000u;
            for (uint32_t li = 0; li < N; li++)
                for (uint32_t k = 0; k < 320; k++) mine[li * 320 + k] = li * 320 + k;
            for (uint32_t round = 0; round < 8; round++) {
                for (uint32_t li = 0; li < live; li++) t[li] = mine[li * 320 + (round * 40 + li) % 320] + g;
                for (uint32_t li = 0; li < live; li++) mine[li * 320 + (round * 40 + li) % 320] = t[live - 1 - li];
            }
            for (uint32_t li = 0; li < N; li++) {
                uint32_t want = 0xffffffffu;
                if (li < live) {
                    want = 0;
                    for (uint32_t k = 0; k < 320; k++) want += mine[li * 320 + k];
                }
                uint32_t x = gx * TX + li % TX, y = gy * TY + li / TX;
                if (out[y * W + x] != want && bad++ < 5)
                    fprintf(stderr, "group (%u, %u) thread %u: %u, want %u\n", gx, gy, li, out[y * W + x], want);
            }
        }
    CHECK_EQ(bad, 0);
    free(out);
    free(mine);
    free(t);
    mc_cmdbuf_release(cb);
    mc_queue_release(q);
    mc_buffer_release(bo);
    mc_pipeline_release(p);
    mc_library_release(lib);
    mc_device_release(d);
    return 0;
}

/* A compiler that has dropped -fcoroutines-ts (clang 17 on): the flag is
 * not passed, the kernel runs as fibers, with the same results. The stand-in
 * says it is clang 17 and logs its arguments, then runs this clang++ without
 * the flag if it came. */
MC_TEST(msl_coroutine_flag_follows_the_compiler_version)
{
    if (system("clang++ --version >/dev/null 2>&1") != 0) MC_SKIP("no clang++ here");
    char dir[] = "/tmp/mc-msl-cxx-XXXXXX";
    CHECK(mkdtemp(dir));
    char script[256], args[256];
    snprintf(script, sizeof script, "%s/cxx", dir);
    snprintf(args, sizeof args, "%s/args", dir);
    FILE *f = fopen(script, "w");
    CHECK(f);
    fprintf(f,
            "#!/bin/sh\n"
            "if [ \"$1\" = --version ]; then echo 'clang version 17.0.6'; exit 0; fi\n"
            "echo \"$@\" >> '%s'\n"
            "exec clang++ \"$@\"\n",
            args);
    CHECK_EQ(fclose(f), 0);
    CHECK_EQ(chmod(script, 0700), 0);
    setenv("MC_MSL_CXX", script, 1);
    setenv("MC_CACHE", "off", 1);
    int rc = run_coro_mix(NULL);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    if (rc == MC_TEST_SKIP_CODE) { /* not the CPU device: it said why */
        CHECK_EQ(system(cmd), 0);
        return rc;
    }
    size_t len = 0;
    char *logged = mct_read_file(args, &len);
    CHECK(logged);
    CHECK_STR_CONTAINS(logged, "-std=c++17");
    CHECK(!strstr(logged, "-fcoroutines-ts"));
    free(logged);
    CHECK_EQ(system(cmd), 0);
    return rc;
}

/* ---- hoisted bounds tests ----------------------------------------------------------- */

static const char guard_src[] =
    "#include <metal_stdlib>\n"
    "using namespace metal;\n"
    "struct lim { uint n, pad; };\n"
    "kernel void below(device float *y [[buffer(0)]], device const float *x [[buffer(1)]],\n"
    "                  constant lim &p [[buffer(2)]], uint i [[thread_position_in_grid]])\n"
    "{\n"
    "    if (i < p.n - 1u) y[i] = 2.0f * x[i] + y[i];\n"
    "    else y[i] = -1.0f;\n"
    "}\n"
    "kernel void leave(device uint *y [[buffer(0)]], constant int &n [[buffer(1)]],\n"
    "                  uint i [[thread_position_in_grid]])\n"
    "{\n"
    "    if (i >= n) return;\n"
    "    y[i] += i;\n"
    "}\n"
    /* not hoisted: a device value, a call, a signed id, another attribute */
    "kernel void k_device(device uint *y [[buffer(0)]], device const uint *n [[buffer(1)]],\n"
    "                     uint i [[thread_position_in_grid]]) { if (i < n[0]) y[i] = 1u; }\n"
    "kernel void k_call(device uint *y [[buffer(0)]], constant uint &n [[buffer(1)]],\n"
    "                   uint i [[thread_position_in_grid]]) { if (i < min(n, 8u)) y[i] = 1u; }\n"
    "kernel void k_int(device uint *y [[buffer(0)]], constant int &n [[buffer(1)]],\n"
    "                  int i [[thread_position_in_grid]]) { if (i < n) y[i] = 1u; }\n"
    "kernel void k_local(device uint *y [[buffer(0)]], constant uint &n [[buffer(1)]],\n"
    "                    uint i [[thread_position_in_threadgroup]]) { if (i < n) y[i] = 1u; }\n";

MC_TEST(msl_bounds_test_hoisted_where_exact)
{
    char *cpp = mct_msl_translate_cpu(guard_src, NULL);
    CHECK(cpp);
    char r[64];
    CHECK(mct_msl_runner_of(cpp, "below", r, sizeof r));
    CHECK_STR_CONTAINS(r, "mc::run_loop_guarded");
    CHECK_STR_CONTAINS(cpp, "if (mc_full || (i < p.n - 1u)) y[i]");
    CHECK_STR_CONTAINS(cpp, "return mc_id < (p . n - 1u);");
    CHECK(mct_msl_runner_of(cpp, "leave", r, sizeof r));
    CHECK_STR_CONTAINS(r, "mc::run_loop_guarded");
    CHECK_STR_CONTAINS(cpp, "if (!mc_full && (i >= n)) return;");
    static const char *const kept[] = {"k_device", "k_call", "k_int", "k_local"};
    for (size_t k = 0; k < 4; k++) {
        CHECK(mct_msl_runner_of(cpp, kept[k], r, sizeof r));
        if (strcmp(r, "mc::run_loop") != 0) fprintf(stderr, "%s runs with %s\n", kept[k], r);
        CHECK(strcmp(r, "mc::run_loop") == 0);
    }
    free(cpp);

    /* run: the groups that pass whole, the one that does not, and a signed
     * bound below zero (every thread leaves: int n converts to a huge uint
     * in `i >= n`, so nobody does, as MSL's conversions say) */
    mc_device *d = mct_open_device(0);
    if (!d) MC_SKIP("the device named by MC_DEVICE cannot be opened");
    mc_library *lib = mct_msl_library(d, guard_src, NULL);
    CHECK(lib);
    mc_pipeline_desc pd = MC_PIPELINE_DESC_INIT;
    pd.library = lib;
    mc_pipeline *pb = NULL, *pl = NULL;
    pd.function = "below";
    CHECK_OK(mc_pipeline_create(d, &pd, &pb));
    pd.function = "leave";
    CHECK_OK(mc_pipeline_create(d, &pd, &pl));
    enum { T = 64, G = 5, N = T * G };
    static const uint32_t limits[] = {N + 1, N - T + 1, 37, 1, 0};
    float x[N], y[N];
    uint32_t u[N];
    for (int i = 0; i < N; i++) x[i] = (float)i;
    mc_buffer_desc bd = MC_BUFFER_DESC_INIT;
    bd.size = sizeof y;
    mc_buffer *bx = NULL, *by = NULL, *bu = NULL;
    CHECK_OK(mc_buffer_create(d, &bd, &bx));
    CHECK_OK(mc_buffer_create(d, &bd, &by));
    CHECK_OK(mc_buffer_create(d, &bd, &bu));
    CHECK_OK(mc_buffer_write(bx, 0, x, sizeof x));
    mc_queue *q = NULL;
    CHECK_OK(mc_queue_create(d, NULL, &q));
    for (size_t k = 0; k < sizeof limits / sizeof limits[0]; k++) {
        uint32_t lim[2] = {limits[k], 0};
        int32_t n = k == 4 ? -5 : (int32_t)limits[k];
        for (int i = 0; i < N; i++) y[i] = 1.0f, u[i] = 7u;
        CHECK_OK(mc_buffer_write(by, 0, y, sizeof y));
        CHECK_OK(mc_buffer_write(bu, 0, u, sizeof u));
        mc_cmdbuf *cb = NULL;
        mc_pass *pass = NULL;
        CHECK_OK(mc_cmdbuf_create(q, NULL, &cb));
        CHECK_OK(mc_cmdbuf_begin_pass(cb, "guards", &pass));
        CHECK_OK(mc_pass_set_pipeline(pass, pb));
        CHECK_OK(mc_pass_set_buffer(pass, 0, by, 0));
        CHECK_OK(mc_pass_set_buffer(pass, 1, bx, 0));
        CHECK_OK(mc_pass_set_bytes(pass, 2, lim, sizeof lim));
        CHECK_OK(mc_pass_dispatch(pass, (mc_size3){G, 1, 1}, (mc_size3){T, 1, 1}));
        CHECK_OK(mc_pass_set_pipeline(pass, pl));
        CHECK_OK(mc_pass_set_buffer(pass, 0, bu, 0));
        CHECK_OK(mc_pass_set_bytes(pass, 1, &n, sizeof n));
        CHECK_OK(mc_pass_dispatch(pass, (mc_size3){G, 1, 1}, (mc_size3){T, 1, 1}));
        CHECK_OK(mc_pass_end(pass));
        CHECK_OK(mc_cmdbuf_commit(cb));
        CHECK_OK(mc_cmdbuf_wait(cb, MC_WAIT_FOREVER));
        CHECK_OK(mc_cmdbuf_status(cb, NULL));
        mc_cmdbuf_release(cb);
        CHECK_OK(mc_buffer_read(by, 0, y, sizeof y));
        CHECK_OK(mc_buffer_read(bu, 0, u, sizeof u));
        int bad = 0;
        for (uint32_t i = 0; i < N; i++) {
            float want_y = i < lim[0] - 1u ? 2.0f * (float)i + 1.0f : -1.0f;
            uint32_t want_u = i >= (uint32_t)n ? 7u : 7u + i;
            if ((y[i] != want_y || u[i] != want_u) && bad++ < 5)
                fprintf(stderr, "limit %u, n %d, thread %u: y %g (want %g), u %u (want %u)\n", lim[0], n, i, y[i],
                        want_y, u[i], want_u);
        }
        CHECK_EQ(bad, 0);
    }
    mc_queue_release(q);
    mc_buffer_release(bx);
    mc_buffer_release(by);
    mc_buffer_release(bu);
    mc_pipeline_release(pb);
    mc_pipeline_release(pl);
    mc_library_release(lib);
    mc_device_release(d);
    return 0;
}

/* ---- groups run row by row ------------------------------------------------------------ */

/* A plain-loop kernel: the CPU device runs the groups of a chunk that share
 * a row of groups through NAME__mc_rows, one loop per row of threads across
 * them. Every thread must still see its own ids and run once. */
static const char rows_src[] =
    "#include <metal_stdlib>\n"
    "using namespace metal;\n"
    "kernel void ids(device uint4 *out [[buffer(0)]], device atomic_uint *runs [[buffer(1)]],\n"
    "                uint2 gid [[thread_position_in_grid]], uint2 grid [[threads_per_grid]],\n"
    "                uint2 group [[threadgroup_position_in_grid]], uint2 lid [[thread_position_in_threadgroup]],\n"
    "                uint li [[thread_index_in_threadgroup]], uint2 tptg [[threads_per_threadgroup]])\n"
    "{\n"
    "    uint at = gid.y * grid.x + gid.x;\n"
    "    out[at] = uint4(group.x, group.y, lid.x | (lid.y << 8), li | (tptg.x << 16));\n"
    "    atomic_fetch_add_explicit(&runs[at], 1u, memory_order_relaxed);\n"
    "}\n";

MC_TEST(msl_plain_groups_run_row_by_row)
{
    mc_device *d = mct_open_device(0);
    if (!d) MC_SKIP("the device named by MC_DEVICE cannot be opened");
    mc_library *lib = mct_msl_library(d, rows_src, NULL);
    CHECK(lib);
    mc_pipeline_desc pd = MC_PIPELINE_DESC_INIT;
    pd.library = lib;
    pd.function = "ids";
    mc_pipeline *p = NULL;
    CHECK_OK(mc_pipeline_create(d, &pd, &p));
    /* 37 x 23 groups of 7 x 5: chunks of several groups, rows that end
     * inside a chunk, and two dispatches (the second knows the group time) */
    enum { GX = 37, GY = 23, TX = 7, TY = 5, W = GX * TX, H = GY * TY };
    mc_buffer_desc bd = MC_BUFFER_DESC_INIT;
    bd.size = sizeof(uint32_t) * 4 * W * H;
    mc_buffer *bo = NULL, *br = NULL;
    CHECK_OK(mc_buffer_create(d, &bd, &bo));
    bd.size = sizeof(uint32_t) * W * H;
    uint32_t *zero = calloc(W * H, sizeof(uint32_t));
    CHECK(zero);
    bd.initial_data = zero;
    CHECK_OK(mc_buffer_create(d, &bd, &br));
    free(zero);
    mc_queue *q = NULL;
    mc_cmdbuf *cb = NULL;
    mc_pass *pass = NULL;
    CHECK_OK(mc_queue_create(d, NULL, &q));
    CHECK_OK(mc_cmdbuf_create(q, NULL, &cb));
    CHECK_OK(mc_cmdbuf_begin_pass(cb, "rows", &pass));
    CHECK_OK(mc_pass_set_pipeline(pass, p));
    CHECK_OK(mc_pass_set_buffer(pass, 0, bo, 0));
    CHECK_OK(mc_pass_set_buffer(pass, 1, br, 0));
    CHECK_OK(mc_pass_dispatch(pass, (mc_size3){GX, GY, 1}, (mc_size3){TX, TY, 1}));
    CHECK_OK(mc_pass_barrier(pass));
    CHECK_OK(mc_pass_dispatch(pass, (mc_size3){GX, GY, 1}, (mc_size3){TX, TY, 1}));
    CHECK_OK(mc_pass_end(pass));
    CHECK_OK(mc_cmdbuf_commit(cb));
    CHECK_OK(mc_cmdbuf_wait(cb, MC_WAIT_FOREVER));
    CHECK_OK(mc_cmdbuf_status(cb, NULL));
    uint32_t *out = malloc(sizeof(uint32_t) * 4 * W * H), *runs = malloc(sizeof(uint32_t) * W * H);
    CHECK(out && runs);
    CHECK_OK(mc_buffer_read(bo, 0, out, sizeof(uint32_t) * 4 * W * H));
    CHECK_OK(mc_buffer_read(br, 0, runs, sizeof(uint32_t) * W * H));
    int bad = 0;
    for (uint32_t y = 0; y < H; y++)
        for (uint32_t x = 0; x < W; x++) {
            uint32_t at = y * W + x, lx = x % TX, ly = y % TY;
            const uint32_t *o = out + 4 * at;
            bool ok = o[0] == x / TX && o[1] == y / TY && o[2] == (lx | ly << 8) &&
                      o[3] == ((ly * TX + lx) | TX << 16) && runs[at] == 2;
            if (!ok && bad++ < 5)
                fprintf(stderr, "thread (%u, %u): group (%u, %u) lid %#x index %#x runs %u\n", x, y, o[0], o[1], o[2],
                        o[3], runs[at]);
        }
    CHECK_EQ(bad, 0);
    free(out);
    free(runs);
    mc_cmdbuf_release(cb);
    mc_queue_release(q);
    mc_buffer_release(bo);
    mc_buffer_release(br);
    mc_pipeline_release(p);
    mc_library_release(lib);
    mc_device_release(d);
    return 0;
}

/* ---- region loops ------------------------------------------------------------------- */

/* Kernels whose barriers sit at the top level of their body, or at the top
 * level of a loop there with a header every thread evaluates alike, run as
 * region loops: each stretch between barriers is one loop over the group's
 * threads (src/backends/cpu/cpu_msl_regions.c). Each runs here against a
 * host reference and against the coroutine path (MC_MSL_REGIONS=0), which
 * must give the same bits. */
/* tests/msl/regions.metal, or NULL */
static char *regions_source(void)
{
    size_t len = 0;
    return mct_read_file(MC_SOURCE_DIR "/tests/msl/regions.metal", &len);
}

/* One argument of a region test: a buffer (its bytes; read back after the
 * run into `back` if not NULL), bytes by value, or threadgroup memory of
 * `size` bytes. */
enum { RK_BUF, RK_BYTES, RK_TG };
typedef struct rk_arg {
    int kind;
    const void *data;
    size_t size;
    void *back;
} rk_arg;

/* The device and the library of tests/msl/regions.metal built with region
 * loops off [0] and on [1]: each built once per test (rk_done releases). */
static struct rk_way {
    mc_device *d;
    mc_library *lib;
} rk_ways[2];

static int rk_done(int rc)
{
    for (int w = 0; w < 2; w++) {
        mc_library_release(rk_ways[w].lib);
        mc_device_release(rk_ways[w].d);
        rk_ways[w] = (struct rk_way){NULL, NULL};
    }
    unsetenv("MC_MSL_REGIONS");
    return rc;
}

/* Runs fn of tests/msl/regions.metal on the CPU device with region loops on or off,
 * after checking from the translation that it takes that path. 77: not
 * the CPU device. */
static int rk_run(const char *fn, bool regions, mc_size3 groups, mc_size3 threads, rk_arg *args, uint32_t nargs)
{
    setenv("MC_MSL_REGIONS", regions ? "1" : "0", 1);
    char *src = regions_source();
    CHECK(src);
    char *cpp = mct_msl_translate_cpu(src, NULL);
    CHECK(cpp);
    char r[64];
    CHECK(mct_msl_runner_of(cpp, fn, r, sizeof r));
    if (strcmp(r, regions ? "mc::run_regions" : "mc::run_group_coro") != 0) fprintf(stderr, "%s runs with %s\n", fn, r);
    CHECK(strcmp(r, regions ? "mc::run_regions" : "mc::run_group_coro") == 0);
    free(cpp);
    struct rk_way *w = &rk_ways[regions];
    if (!w->d) {
        w->d = mct_open_device(0);
        if (!w->d) MC_SKIP("the device named by MC_DEVICE cannot be opened");
        if (mct_device_kind(w->d) != MC_DEVICE_CPU) {
            free(src);
            rk_done(0);
            MC_SKIP("region loops are the CPU device's way to run barriers");
        }
        w->lib = mct_msl_library(w->d, src, NULL);
    }
    free(src);
    mc_device *d = w->d;
    mc_library *lib = w->lib;
    CHECK(lib);
    mc_pipeline_desc pd = MC_PIPELINE_DESC_INIT;
    pd.library = lib;
    pd.function = fn;
    mc_pipeline *p = NULL;
    CHECK_OK(mc_pipeline_create(d, &pd, &p));
    mc_buffer *bufs[8] = {NULL};
    mc_queue *q = NULL;
    mc_cmdbuf *cb = NULL;
    mc_pass *pass = NULL;
    CHECK_OK(mc_queue_create(d, NULL, &q));
    CHECK_OK(mc_cmdbuf_create(q, NULL, &cb));
    CHECK_OK(mc_cmdbuf_begin_pass(cb, fn, &pass));
    CHECK_OK(mc_pass_set_pipeline(pass, p));
    uint32_t slot = 0;
    for (uint32_t a = 0; a < nargs && a < 8; a++) {
        if (args[a].kind == RK_TG) {
            CHECK_OK(mc_pass_set_threadgroup_memory(pass, 0, args[a].size));
            continue;
        }
        if (args[a].kind == RK_BYTES) {
            CHECK_OK(mc_pass_set_bytes(pass, slot++, args[a].data, args[a].size));
            continue;
        }
        mc_buffer_desc bd = MC_BUFFER_DESC_INIT;
        bd.size = args[a].size;
        bd.initial_data = args[a].data;
        CHECK_OK(mc_buffer_create(d, &bd, &bufs[a]));
        CHECK_OK(mc_pass_set_buffer(pass, slot++, bufs[a], 0));
    }
    CHECK_OK(mc_pass_dispatch(pass, groups, threads));
    CHECK_OK(mc_pass_end(pass));
    CHECK_OK(mc_cmdbuf_commit(cb));
    CHECK_OK(mc_cmdbuf_wait(cb, MC_WAIT_FOREVER));
    CHECK_OK(mc_cmdbuf_status(cb, NULL));
    for (uint32_t a = 0; a < nargs && a < 8; a++) {
        if (!bufs[a]) continue;
        if (args[a].back) CHECK_OK(mc_buffer_read(bufs[a], 0, args[a].back, args[a].size));
        mc_buffer_release(bufs[a]);
    }
    mc_cmdbuf_release(cb);
    mc_queue_release(q);
    mc_pipeline_release(p);
    return 0;
}

/* Runs fn both ways; out (the buffer argument `which`, n bytes) must be
 * want on both and the same bits on both. */
static int rk_both(const char *fn, mc_size3 groups, mc_size3 threads, rk_arg *args, uint32_t nargs, uint32_t which,
                   const void *want, size_t n)
{
    void *got[2];
    for (int way = 0; way < 2; way++) {
        got[way] = calloc(1, n);
        CHECK(got[way]);
        args[which].back = got[way];
        int rc = rk_run(fn, way == 0, groups, threads, args, nargs);
        if (rc) return rc;
    }
    bool same = memcmp(got[0], got[1], n) == 0, right = memcmp(got[0], want, n) == 0;
    if (!same || !right) {
        const uint32_t *g0 = got[0], *g1 = got[1], *w = want;
        for (size_t i = 0, bad = 0; i < n / 4 && bad < 5; i++)
            if (g0[i] != w[i] || g1[i] != w[i])
                fprintf(stderr, "%s [%zu]: regions %#x, coroutines %#x, want %#x\n", fn, i, g0[i], g1[i], w[i]), bad++;
    }
    free(got[0]);
    free(got[1]);
    CHECK(same);
    CHECK(right);
    return 0;
}

/* The tree reduction of `bench msl`, in groups of 256 and of 48 (not a
 * multiple of 32: its odd steps drop values, as the kernel says). */
MC_TEST(msl_regions_tree_reduction)
{
    static const uint32_t sizes[] = {256, 48, 1024};
    for (size_t k = 0; k < 3; k++) {
        const uint32_t T = sizes[k], G = 7, N = T * G;
        float *in = malloc(N * sizeof *in), *want = calloc(G, sizeof *want), *s = malloc(T * sizeof *s);
        CHECK(in && want && s);
        for (uint32_t i = 0; i < N; i++) in[i] = (float)((i * 37u) % 11u) - 5.0f;
        for (uint32_t g = 0; g < G; g++) {
            memcpy(s, in + g * T, T * sizeof *s);
            for (uint32_t st = T / 2; st > 0; st >>= 1)
                for (uint32_t l = 0; l < st; l++) s[l] += s[l + st];
            want[g] = s[0];
        }
        rk_arg args[] = {{RK_BUF, in, N * sizeof *in, NULL}, {RK_BUF, want, G * sizeof *want, NULL}};
        int rc = rk_both("rg_reduce", (mc_size3){G, 1, 1}, (mc_size3){T, 1, 1}, args, 2, 1, want, G * sizeof *want);
        free(in);
        free(want);
        free(s);
        if (rc) return rk_done(rc);
    }
    return rk_done(0);
}

MC_TEST(msl_regions_hillis_steele_scan)
{
    static const uint32_t sizes[] = {256, 100};
    for (size_t k = 0; k < 2; k++) {
        const uint32_t T = sizes[k], G = 5, N = T * G;
        uint32_t *in = malloc(N * 4), *want = malloc(N * 4);
        CHECK(in && want);
        for (uint32_t i = 0; i < N; i++) in[i] = (i * 2654435761u) >> 20;
        for (uint32_t g = 0; g < G; g++) {
            uint32_t acc = 0;
            for (uint32_t l = 0; l < T; l++) {
                want[g * T + l] = acc; /* exclusive within the group */
                acc += in[g * T + l];
            }
        }
        rk_arg args[] = {{RK_BUF, in, N * 4, NULL}, {RK_BUF, want, N * 4, NULL}, {RK_TG, NULL, 2 * T * 4, NULL}};
        int rc = rk_both("rg_hillis", (mc_size3){G, 1, 1}, (mc_size3){T, 1, 1}, args, 3, 1, want, N * 4);
        free(in);
        free(want);
        if (rc) return rk_done(rc);
    }
    return rk_done(0);
}

MC_TEST(msl_regions_blelloch_scan)
{
    static const uint32_t sizes[] = {128, 1024, 32};
    for (size_t k = 0; k < 3; k++) {
        const uint32_t T = sizes[k], G = 3, N = 2 * T * G;
        uint32_t *in = malloc(N * 4), *want = malloc(N * 4);
        CHECK(in && want);
        for (uint32_t i = 0; i < N; i++) in[i] = (i * 40503u + 7u) % 1000u;
        for (uint32_t g = 0; g < G; g++) {
            uint32_t acc = 0;
            for (uint32_t l = 0; l < 2 * T; l++) {
                want[g * 2 * T + l] = acc;
                acc += in[g * 2 * T + l];
            }
        }
        rk_arg args[] = {{RK_BUF, in, N * 4, NULL}, {RK_BUF, want, N * 4, NULL}};
        int rc = rk_both("rg_blelloch", (mc_size3){G, 1, 1}, (mc_size3){T, 1, 1}, args, 2, 1, want, N * 4);
        free(in);
        free(want);
        if (rc) return rk_done(rc);
    }
    return rk_done(0);
}

MC_TEST(msl_regions_tiled_matmul)
{
    enum { n = 64 };
    float *A = malloc(n * n * 4), *B = malloc(n * n * 4), *C = malloc(n * n * 4);
    CHECK(A && B && C);
    for (uint32_t i = 0; i < n * n; i++) {
        A[i] = (float)((i * 7u) % 5u) - 2.0f; /* small integers: every sum exact */
        B[i] = (float)((i * 3u) % 7u) - 3.0f;
    }
    for (uint32_t y = 0; y < n; y++)
        for (uint32_t x = 0; x < n; x++) {
            float acc = 0.0f;
            for (uint32_t k = 0; k < n; k++) acc += A[y * n + k] * B[k * n + x];
            C[y * n + x] = acc;
        }
    uint32_t nn = n;
    rk_arg args[] = {{RK_BUF, A, n * n * 4, NULL},
                     {RK_BUF, B, n * n * 4, NULL},
                     {RK_BUF, C, n * n * 4, NULL},
                     {RK_BYTES, &nn, 4, NULL}};
    int rc = rk_both("rg_matmul", (mc_size3){n / 16, n / 16, 1}, (mc_size3){16, 16, 1}, args, 4, 2, C, n * n * 4);
    free(A);
    free(B);
    free(C);
    return rk_done(rc);
}

/* Threads leave before the first barrier and between the two; in groups
 * of 100 (not a multiple of 32) and 1024. */
MC_TEST(msl_regions_early_returns)
{
    static const uint32_t sizes[] = {100, 1024, 100};
    static const uint32_t lives[] = {77, 1000, 100};
    for (size_t k = 0; k < 3; k++) {
        const uint32_t T = sizes[k], G = 3, N = T * G, live = lives[k];
        uint32_t *want = malloc(N * 4), *b = malloc(T * 4);
        CHECK(want && b);
        for (uint32_t g = 0; g < G; g++) {
            for (uint32_t l = 0; l < live; l++) b[l] = ((l + 1) % live) * 7u + 1u + l * 7u + 1u;
            for (uint32_t l = 0; l < T; l++) {
                uint32_t *o = &want[g * T + l];
                if (l >= live) *o = 0xffffffffu;
                else if (l % 3u == 1u) *o = ((l + 1) % live) * 7u + 1u;
                else *o = b[(l + 2) % live] ^ (l * 7u + 1u);
            }
        }
        rk_arg args[] = {{RK_BUF, want, N * 4, NULL}, {RK_BYTES, &live, 4, NULL}};
        int rc = rk_both("rg_returns", (mc_size3){G, 1, 1}, (mc_size3){T, 1, 1}, args, 2, 0, want, N * 4);
        free(want);
        free(b);
        if (rc) return rk_done(rc);
    }
    return rk_done(0);
}

/* 1024-thread 2-D groups, 2 x 3 of them. */
MC_TEST(msl_regions_2d_groups_of_1024)
{
    enum { TX = 32, TY = 32, GX = 2, GY = 3, W = TX * GX, H = TY * GY };
    uint32_t *in = malloc(W * H * 4), *want = malloc(W * H * 4);
    CHECK(in && want);
    for (uint32_t i = 0; i < W * H; i++) in[i] = (i * 2246822519u) >> 22;
    for (uint32_t gy = 0; gy < GY; gy++)
        for (uint32_t gx = 0; gx < GX; gx++)
            for (uint32_t ly = 0; ly < TY; ly++) {
                uint32_t rowsum = 0;
                for (uint32_t lx = 0; lx < TX; lx++) /* row ly of the transposed tile */
                    rowsum += in[(gy * TY + lx) * W + gx * TX + ly];
                for (uint32_t lx = 0; lx < TX; lx++) {
                    uint32_t v = in[(gy * TY + ly) * W + gx * TX + lx];
                    uint32_t tv = in[(gy * TY + lx) * W + gx * TX + ly];
                    want[(gy * TY + ly) * W + gx * TX + lx] = (tv << 8) ^ rowsum ^ (ly * TX + lx) ^ (v << 20);
                }
            }
    rk_arg args[] = {{RK_BUF, in, W * H * 4, NULL}, {RK_BUF, want, W * H * 4, NULL}};
    int rc = rk_both("rg_tile2d", (mc_size3){GX, GY, 1}, (mc_size3){TX, TY, 1}, args, 2, 1, want, W * H * 4);
    free(in);
    free(want);
    return rk_done(rc);
}

/* Barriers in a while loop, in groups of 256 and 100 (odd widths). */
MC_TEST(msl_regions_while_loop)
{
    static const uint32_t sizes[] = {256, 100};
    for (size_t k = 0; k < 2; k++) {
        const uint32_t T = sizes[k], G = 4, N = T * G;
        uint32_t *in = malloc(N * 4), *want = malloc(G * 4), *v = malloc(T * 4);
        CHECK(in && want && v);
        for (uint32_t i = 0; i < N; i++) in[i] = (i * 2654435761u) >> 24;
        for (uint32_t g = 0; g < G; g++) {
            memcpy(v, in + g * T, T * 4);
            for (uint32_t w = T; w > 1; w = (w + 1) / 2) {
                uint32_t h = (w + 1) / 2;
                for (uint32_t l = 0; l < w / 2; l++) v[l] = (v[l] > v[l + h] ? v[l] : v[l + h]) + 1;
            }
            want[g] = v[0];
        }
        rk_arg args[] = {{RK_BUF, in, N * 4, NULL}, {RK_BUF, want, G * 4, NULL}};
        int rc = rk_both("rg_while", (mc_size3){G, 1, 1}, (mc_size3){T, 1, 1}, args, 2, 1, want, G * 4);
        free(in);
        free(want);
        free(v);
        if (rc) return rk_done(rc);
    }
    return rk_done(0);
}

/* ---- which kernels take region loops ----------------------------------------------- */

/* The runner of kernel `k` in the MSL source made of head and body must be
 * `want` (region loops on). */
static int rg_expect(const char *head, const char *params, const char *body, const char *want)
{
    char src[4096];
    snprintf(src, sizeof src,
             "#include <metal_stdlib>\nusing namespace metal;\n%s\n"
             "kernel void k(device uint *out [[buffer(0)]], device const uint *in [[buffer(1)]],\n"
             "              constant uint &n [[buffer(2)]], uint lid [[thread_position_in_threadgroup]],\n"
             "              uint gid [[thread_position_in_grid]], uint size [[threads_per_threadgroup]]%s)\n"
             "{\n    threadgroup uint t[256];\n%s}\n",
             head, params, body);
    setenv("MC_MSL_REGIONS", "1", 1);
    char *cpp = mct_msl_translate_cpu(src, NULL);
    CHECK(cpp);
    char r[64];
    CHECK(mct_msl_runner_of(cpp, "k", r, sizeof r));
    if (strcmp(r, want) != 0) fprintf(stderr, "k runs with %s, not %s:\n%s\n", r, want, src);
    CHECK(strcmp(r, want) == 0);
    if (!strcmp(want, "mc::run_regions")) CHECK(!strstr(cpp, "threadgroup_barrier(")); /* every barrier is gone */
    else CHECK_STR_CONTAINS(cpp, "MC_CO_BARRIER(");
    free(cpp);
    return 0;
}

#define RG_CORO "mc::run_group_coro"

MC_TEST(msl_regions_path_per_kernel)
{
    /* the shapes that take region loops: top-level barriers and returns, a
     * loop whose only statement is a barrier, a top-level constexpr and a
     * numeric macro in a header, a pointer to constant device memory and an
     * array living across barriers, a declaration of two locals of which
     * one crosses a barrier */
    int rc = rg_expect("#define STEPS 3", "",
                       "    if (lid >= n) return;\n"
                       "    device const uint *p = in + gid;\n"
                       "    uint acc[2] = {0u, 1u};\n"
                       "    uint keep[2], once = 3u;\n"
                       "    keep[0] = acc[1] + once;\n"
                       "    constexpr uint K = 2;\n"
                       "    t[lid] = *p;\n"
                       "    threadgroup_barrier(mem_flags::mem_threadgroup);\n"
                       "    for (uint s = 0; s < STEPS * K; s++) threadgroup_barrier(mem_flags::mem_threadgroup);\n"
                       "    while (t[0] > size) threadgroup_barrier(mem_flags::mem_threadgroup);\n"
                       "    out[gid] = t[(lid + 1) % n] + *p + keep[0];\n",
                       "mc::run_regions");
    if (rc) return rc;
    /* the kernel of the coroutine tests stays a coroutine: a local of its
     * barrier loop crosses the loop's barrier */
    char *cpp = mct_msl_translate_cpu(coro_src, NULL);
    CHECK(cpp);
    char r[64];
    CHECK(mct_msl_runner_of(cpp, "coro_mix", r, sizeof r));
    CHECK(strcmp(r, RG_CORO) == 0);
    free(cpp);
    return 0;
}

/* One test per reason a kernel keeps the coroutine path. */
MC_TEST(msl_regions_fallback_barrier_under_if)
{
    return rg_expect("", "",
                     "    if (n > 1) { t[lid] = 1; threadgroup_barrier(mem_flags::mem_threadgroup); }\n"
                     "    out[gid] = t[0];\n",
                     RG_CORO);
}

MC_TEST(msl_regions_fallback_barrier_in_nested_loop)
{
    return rg_expect("", "",
                     "    for (uint i = 0; i < n; i++)\n"
                     "        for (uint j = 0; j < n; j++) threadgroup_barrier(mem_flags::mem_threadgroup);\n"
                     "    out[gid] = 1;\n",
                     RG_CORO);
}

MC_TEST(msl_regions_fallback_barrier_in_do_loop)
{
    return rg_expect("", "",
                     "    uint i = 0;\n    do { threadgroup_barrier(mem_flags::mem_threadgroup); } while (++i < n);\n"
                     "    out[gid] = i;\n",
                     RG_CORO);
}

MC_TEST(msl_regions_fallback_header_reads_a_thread_id)
{
    return rg_expect("", "",
                     "    for (uint i = lid; i < n; i += size) threadgroup_barrier(mem_flags::mem_threadgroup);\n"
                     "    out[gid] = 1;\n",
                     RG_CORO);
}

MC_TEST(msl_regions_fallback_header_reads_a_local)
{
    return rg_expect("", "",
                     "    uint m = n;\n"
                     "    for (uint i = 0; i < m; i++) threadgroup_barrier(mem_flags::mem_threadgroup);\n"
                     "    out[gid] = m;\n",
                     RG_CORO);
}

MC_TEST(msl_regions_fallback_header_reads_device_memory)
{
    return rg_expect("", "",
                     "    while (in[0] > lid) threadgroup_barrier(mem_flags::mem_threadgroup);\n"
                     "    out[gid] = 1;\n",
                     RG_CORO);
}

MC_TEST(msl_regions_fallback_header_calls_a_function)
{
    return rg_expect("static uint steps(uint x) { return x / 2; }", "",
                     "    for (uint i = 0; i < steps(n); i++) threadgroup_barrier(mem_flags::mem_threadgroup);\n"
                     "    out[gid] = 1;\n",
                     RG_CORO);
}

MC_TEST(msl_regions_fallback_loop_variable_written)
{
    return rg_expect("", "",
                     "    for (uint i = 0; i < n; i++) {\n"
                     "        threadgroup_barrier(mem_flags::mem_threadgroup);\n"
                     "        if (n > 4) i++;\n"
                     "    }\n    out[gid] = 1;\n",
                     RG_CORO);
}

MC_TEST(msl_regions_fallback_auto_local_crosses)
{
    return rg_expect("", "",
                     "    auto v = in[gid];\n    threadgroup_barrier(mem_flags::mem_threadgroup);\n"
                     "    out[gid] = v;\n",
                     RG_CORO);
}

MC_TEST(msl_regions_fallback_reference_crosses)
{
    return rg_expect("", "",
                     "    uint v = in[gid];\n    thread uint &r = v;\n"
                     "    threadgroup_barrier(mem_flags::mem_threadgroup);\n    out[gid] = r;\n",
                     RG_CORO);
}

MC_TEST(msl_regions_fallback_const_local_crosses)
{
    return rg_expect("", "",
                     "    const uint v = in[gid];\n    threadgroup_barrier(mem_flags::mem_threadgroup);\n"
                     "    out[gid] = v;\n",
                     RG_CORO);
}

MC_TEST(msl_regions_fallback_brace_initialised_array_crosses)
{
    return rg_expect("", "",
                     "    uint v[2] = {in[gid], 1u};\n    threadgroup_barrier(mem_flags::mem_threadgroup);\n"
                     "    out[gid] = v[0];\n",
                     RG_CORO);
}

MC_TEST(msl_regions_fallback_struct_local_crosses)
{
    return rg_expect("struct pair { uint a, b; };", "",
                     "    pair p;\n    p.a = in[gid];\n    threadgroup_barrier(mem_flags::mem_threadgroup);\n"
                     "    out[gid] = p.a;\n",
                     RG_CORO);
}

MC_TEST(msl_regions_fallback_pointer_to_thread_memory_crosses)
{
    return rg_expect("", "",
                     "    uint v = in[gid];\n    thread uint *p = &v;\n"
                     "    threadgroup_barrier(mem_flags::mem_threadgroup);\n    out[gid] = *p;\n",
                     RG_CORO);
}

MC_TEST(msl_regions_fallback_loop_local_crosses_its_barrier)
{
    return rg_expect("", "",
                     "    for (uint i = 0; i < n; i++) {\n        uint v = t[i];\n"
                     "        threadgroup_barrier(mem_flags::mem_threadgroup);\n        t[lid] = v;\n"
                     "        threadgroup_barrier(mem_flags::mem_threadgroup);\n    }\n    out[gid] = t[lid];\n",
                     RG_CORO);
}

MC_TEST(msl_regions_fallback_goto)
{
    return rg_expect("", "",
                     "    if (lid > n) goto done;\n    t[lid] = 1;\ndone:\n"
                     "    threadgroup_barrier(mem_flags::mem_threadgroup);\n    out[gid] = t[0];\n",
                     RG_CORO);
}

MC_TEST(msl_regions_fallback_return_in_barrier_loop)
{
    return rg_expect("", "",
                     "    for (uint i = 0; i < n; i++) {\n        if (lid == i) return;\n"
                     "        threadgroup_barrier(mem_flags::mem_threadgroup);\n    }\n    out[gid] = 1;\n",
                     RG_CORO);
}

MC_TEST(msl_regions_fallback_break_in_barrier_loop)
{
    return rg_expect("", "",
                     "    for (uint i = 0; i < n; i++) {\n        threadgroup_barrier(mem_flags::mem_threadgroup);\n"
                     "        if (t[0] == i) break;\n    }\n    out[gid] = 1;\n",
                     RG_CORO);
}

/* a macro other than a number may hide a return or a brace (one that hides
 * a barrier runs as fibers: tests/test_msl_macros.c) */
MC_TEST(msl_regions_fallback_macro_in_body)
{
    return rg_expect("#define TWICE(v) ((v) * 2u)", "",
                     "    t[lid] = 1;\n    threadgroup_barrier(mem_flags::mem_threadgroup);\n"
                     "    out[gid] = TWICE(t[0]);\n",
                     RG_CORO);
}

MC_TEST(msl_regions_fallback_preprocessor_line_in_body)
{
    return rg_expect("", "",
                     "    t[lid] = 1;\n#if 1\n    threadgroup_barrier(mem_flags::mem_threadgroup);\n#endif\n"
                     "    out[gid] = t[0];\n",
                     RG_CORO);
}

MC_TEST(msl_regions_fallback_reference_attribute)
{
    return rg_expect("", ", const thread uint &li [[thread_index_in_threadgroup]]",
                     "    t[lid] = li;\n    threadgroup_barrier(mem_flags::mem_threadgroup);\n    out[gid] = t[0];\n",
                     RG_CORO);
}

MC_TEST(msl_regions_mixed_shapes)
{
    static const uint32_t sizes[] = {100, 256};
    static const uint32_t lives[] = {90, 256};
    for (size_t k = 0; k < 2; k++) {
        const uint32_t T = sizes[k], G = 3, N = T * G, live = lives[k];
        uint32_t *want = malloc(N * 4), *acc = malloc(T * 4), *buf = malloc(2 * T * 4);
        CHECK(want && acc && buf);
        for (uint32_t l = 0; l < live; l++) {
            acc[l] = 1;
            buf[l] = l * 3u;
        }
        for (uint32_t r = 0; r < 6; r++) {
            for (uint32_t l = 0; l < live; l++) acc[l] += buf[(r & 1u) * T + (l + r) % live] & 0xffu;
            for (uint32_t l = 0; l < live; l++) buf[((r + 1u) & 1u) * T + l] = acc[l] + r;
        }
        for (uint32_t g = 0; g < G; g++)
            for (uint32_t l = 0; l < T; l++) want[g * T + l] = l >= live ? 0xdead0002u : acc[l] ^ (l << 16);
        rk_arg args[] = {{RK_BUF, want, N * 4, NULL}, {RK_BYTES, &live, 4, NULL}};
        int rc = rk_both("rg_mixed", (mc_size3){G, 1, 1}, (mc_size3){T, 1, 1}, args, 2, 0, want, N * 4);
        free(want);
        free(acc);
        free(buf);
        if (rc) return rk_done(rc);
    }
    return rk_done(0);
}

/* a parameter named like a file-scope constant is the parameter, a thread's id */
MC_TEST(msl_regions_fallback_header_reads_a_parameter_named_like_a_constant)
{
    return rg_expect("constant uint N = 4;", ", uint N [[thread_index_in_threadgroup]]",
                     "    for (uint i = 0; i < N; i++) threadgroup_barrier(mem_flags::mem_threadgroup);\n"
                     "    out[gid] = 1;\n",
                     RG_CORO);
}

/* What the pass writes (shadowed ids, frame references, loop variables
 * captured by copy) builds without a warning where a user's options ask
 * for all of them as errors. */
MC_TEST(msl_regions_build_without_warnings)
{
    mc_device *d = mct_open_device(0);
    if (!d) MC_SKIP("the device named by MC_DEVICE cannot be opened");
    if (mct_device_kind(d) != MC_DEVICE_CPU) {
        mc_device_release(d);
        MC_SKIP("region loops are the CPU device's");
    }
    setenv("MC_MSL_REGIONS", "1", 1);
    char *src = regions_source();
    CHECK(src);
    mc_library *lib = mct_msl_library(d, src, "-Wall -Wextra -Werror");
    free(src);
    CHECK(lib);
    mc_library_release(lib);
    mc_device_release(d);
    unsetenv("MC_MSL_REGIONS");
    return 0;
}

/* ---- region loops against coroutines and fibers on generated kernels ---------------- */

static uint32_t gen_rand(uint32_t *s, uint32_t n)
{
    *s = *s * 1664525u + 1013904223u;
    return (*s >> 8) % n;
}

static void gen_put(char *b, size_t cap, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void gen_put(char *b, size_t cap, const char *fmt, ...)
{
    size_t used = strlen(b);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(b + used, cap - used, fmt, ap);
    va_end(ap);
}

/* Kernel gK: four locals, two threadgroup buffers used in turn (each phase
 * reads one anywhere and writes the other at its own index, so no phase
 * races), phases at the top level (some threads returning) and in loops
 * whose bounds are the argument n. Race-free, so every way to run it must
 * give the same bits. */
static void gen_kernel(char *b, size_t cap, int k, uint32_t *s)
{
    static const char *const ops[] = {"+", "^", "*", "-"};
    gen_put(b, cap,
            "kernel void g%d(device uint *out [[buffer(0)]], constant uint &n [[buffer(1)]],\n"
            "                uint lid [[thread_index_in_threadgroup]], uint2 gid [[thread_position_in_grid]],\n"
            "                uint2 tptg [[threads_per_threadgroup]], uint2 grid [[threads_per_grid]])\n{\n"
            "    threadgroup uint A[256];\n    threadgroup uint B[256];\n    threadgroup uint count;\n"
            "    uint size = tptg.x * tptg.y;\n    uint at = gid.y * grid.x + gid.x;\n",
            k);
    for (int v = 0; v < 4; v++)
        gen_put(b, cap, "    uint v%d = lid * %uu + %uu;\n", v, gen_rand(s, 97) + 1, gen_rand(s, 1000));
    gen_put(b, cap, "    A[lid] = v0;\n    B[lid] = v1;\n    threadgroup_barrier(mem_flags::mem_threadgroup);\n");
    /* thread 0 never leaves: it counts the while loops down */
    char rd = 'A', wr = 'B';
    int phases = 3 + (int)gen_rand(s, 4);
    for (int p = 0; p < phases; p++) {
        uint32_t what = gen_rand(s, 5);
        if (what == 4) { /* a while loop on a threadgroup counter, the same two phases */
            gen_put(b, cap,
                    "    threadgroup_barrier(mem_flags::mem_threadgroup);\n" /* every thread has read count */
                    "    if (lid == 0u) count = n + %uu;\n    threadgroup_barrier(mem_flags::mem_threadgroup);\n"
                    "    while (count > %uu) {\n"
                    "        v%d = v%d %s %c[(lid + count) %% size];\n        %c[lid] = v%d;\n"
                    "        threadgroup_barrier(mem_flags::mem_threadgroup);\n"
                    "        v%d += %c[(lid + %uu) %% size];\n        %c[lid] = v%d;\n"
                    "        if (lid == 0u) count = count - 1u;\n"
                    "        threadgroup_barrier(mem_flags::mem_threadgroup);\n    }\n",
                    gen_rand(s, 3), gen_rand(s, 2), (int)gen_rand(s, 4), (int)gen_rand(s, 4), ops[gen_rand(s, 4)], rd,
                    wr, (int)gen_rand(s, 4), (int)gen_rand(s, 4), wr, gen_rand(s, 90), rd, (int)gen_rand(s, 4));
            continue;
        }
        int i = (int)gen_rand(s, 4), j = (int)gen_rand(s, 4), q = (int)gen_rand(s, 4);
        const char *op = ops[gen_rand(s, 4)];
        if (what == 0) { /* a loop of two phases: the buffers end where they began */
            gen_put(b, cap,
                    "    for (uint r = %uu; r < n + %uu; r++) {\n"
                    "        uint t = %c[(lid + r * %uu) %% size];\n"
                    "        v%d = v%d %s t;\n        %c[lid] = v%d + r;\n"
                    "        threadgroup_barrier(mem_flags::mem_threadgroup);\n"
                    "        v%d ^= %c[(lid + %uu) %% size] >> 1;\n        %c[lid] = v%d;\n"
                    "        threadgroup_barrier(mem_flags::mem_threadgroup);\n    }\n",
                    gen_rand(s, 2), gen_rand(s, 3), rd, gen_rand(s, 7) + 1, i, j, op, wr, i, q, wr, gen_rand(s, 50), rd,
                    q);
            continue;
        }
        if (what == 1) /* some threads leave, from inside a loop of the region */
            gen_put(b, cap,
                    "    for (uint k = 0; k < 3u; k++)\n"
                    "        if (lid != 0u && (v%d + k) %% %uu == 0u) {\n            out[at] = v%d ^ k;\n"
                    "            return;\n"
                    "        }\n",
                    i, gen_rand(s, 13) + 5, j);
        else if (what == 2) /* or straight from the region */
            gen_put(b, cap,
                    "    if (lid != 0u && v%d %% %uu == 1u) {\n        out[at] = 7u * v%d;\n        return;\n    }\n",
                    i, gen_rand(s, 11) + 3, j);
        gen_put(b, cap, "    v%d = v%d %s %c[(lid + %uu) %% size];\n    %c[lid] = v%d ^ v%d;\n", i, j, op, rd,
                gen_rand(s, 300), wr, i, q);
        gen_put(b, cap, "    threadgroup_barrier(mem_flags::mem_threadgroup);\n");
        char t = rd;
        rd = wr;
        wr = t;
    }
    gen_put(b, cap, "    out[at] = v0 ^ (v1 << 3) ^ (v2 << 7) ^ (v3 << 11) ^ %c[(lid * 5u) %% size];\n}\n", rd);
}

/* The output of gK for groups of T threads, n loop rounds, on lib. */
static int gen_run(mc_device *d, mc_library *lib, int k, mc_size3 T, uint32_t n, uint32_t *out)
{
    char fn[16];
    snprintf(fn, sizeof fn, "g%d", k);
    mc_pipeline_desc pd = MC_PIPELINE_DESC_INIT;
    pd.library = lib;
    pd.function = fn;
    mc_pipeline *p = NULL;
    CHECK_OK(mc_pipeline_create(d, &pd, &p));
    enum { G = 3 };
    mc_buffer_desc bd = MC_BUFFER_DESC_INIT;
    bd.size = G * T.x * T.y * 4;
    mc_buffer *bo = NULL;
    CHECK_OK(mc_buffer_create(d, &bd, &bo));
    mc_queue *q = NULL;
    mc_cmdbuf *cb = NULL;
    mc_pass *pass = NULL;
    CHECK_OK(mc_queue_create(d, NULL, &q));
    CHECK_OK(mc_cmdbuf_create(q, NULL, &cb));
    CHECK_OK(mc_cmdbuf_begin_pass(cb, fn, &pass));
    CHECK_OK(mc_pass_set_pipeline(pass, p));
    CHECK_OK(mc_pass_set_buffer(pass, 0, bo, 0));
    CHECK_OK(mc_pass_set_bytes(pass, 1, &n, sizeof n));
    CHECK_OK(mc_pass_dispatch(pass, (mc_size3){G, 1, 1}, T));
    CHECK_OK(mc_pass_end(pass));
    CHECK_OK(mc_cmdbuf_commit(cb));
    CHECK_OK(mc_cmdbuf_wait(cb, MC_WAIT_FOREVER));
    CHECK_OK(mc_cmdbuf_status(cb, NULL));
    CHECK_OK(mc_buffer_read(bo, 0, out, bd.size));
    mc_cmdbuf_release(cb);
    mc_queue_release(q);
    mc_buffer_release(bo);
    mc_pipeline_release(p);
    return 0;
}

/* Twelve generated kernels (a fixed seed) run as region loops, as
 * coroutines and as fibers (coroutines without the compiler's support)
 * must give the same bits, in groups of 100 and 256 threads and of 10 x 10
 * and 16 x 16. */
MC_TEST(msl_regions_generated_kernels_match_coroutines_and_fibers)
{
    enum { KERNELS = 12, CAP = 1 << 16 };
    char *src = calloc(1, CAP);
    CHECK(src);
    gen_put(src, CAP, "#include <metal_stdlib>\nusing namespace metal;\n");
    uint32_t seed = 20261205u;
    for (int k = 0; k < KERNELS; k++) gen_kernel(src, CAP, k, &seed);
    CHECK(strlen(src) < CAP - 1);
    /* every one of them takes region loops */
    setenv("MC_MSL_REGIONS", "1", 1);
    char *cpp = mct_msl_translate_cpu(src, NULL);
    CHECK(cpp);
    for (int k = 0; k < KERNELS; k++) {
        char fn[16], r[64];
        snprintf(fn, sizeof fn, "g%d", k);
        CHECK(mct_msl_runner_of(cpp, fn, r, sizeof r));
        if (strcmp(r, "mc::run_regions") != 0) fprintf(stderr, "%s runs with %s\n%s", fn, r, src);
        CHECK(strcmp(r, "mc::run_regions") == 0);
    }
    free(cpp);
    mc_device *d = mct_open_device(0);
    if (!d) MC_SKIP("the device named by MC_DEVICE cannot be opened");
    if (mct_device_kind(d) != MC_DEVICE_CPU) {
        mc_device_release(d);
        MC_SKIP("region loops are the CPU device's");
    }
    mc_library *lib[3];
    lib[0] = mct_msl_library(d, src, NULL);
    setenv("MC_MSL_REGIONS", "0", 1);
    lib[1] = mct_msl_library(d, src, NULL);
    lib[2] = mct_msl_library(d, src, "-U__cpp_coroutines -U__cpp_impl_coroutine");
    unsetenv("MC_MSL_REGIONS");
    CHECK(lib[0] && lib[1] && lib[2]);
    static const mc_size3 sizes[] = {{100, 1, 1}, {256, 1, 1}, {10, 10, 1}, {16, 16, 1}};
    uint32_t *out[3];
    for (int w = 0; w < 3; w++) CHECK((out[w] = malloc(3 * 256 * 4)));
    int bad = 0;
    for (int k = 0; k < KERNELS; k++)
        for (size_t z = 0; z < 4; z++) {
            for (int w = 0; w < 3; w++) {
                int rc = gen_run(d, lib[w], k, sizes[z], 2u + (uint32_t)k % 3u, out[w]);
                if (rc) return rc;
            }
            for (uint32_t i = 0; i < 3 * sizes[z].x * sizes[z].y; i++)
                if ((out[0][i] != out[1][i] || out[0][i] != out[2][i]) && bad++ < 5)
                    fprintf(stderr, "g%d, groups of %u x %u, thread %u: regions %#x, coroutines %#x, fibers %#x\n", k,
                            sizes[z].x, sizes[z].y, i, out[0][i], out[1][i], out[2][i]);
        }
    if (bad) fprintf(stderr, "%s", src);
    CHECK_EQ(bad, 0);
    for (int w = 0; w < 3; w++) {
        free(out[w]);
        mc_library_release(lib[w]);
    }
    mc_device_release(d);
    free(src);
    return 0;
}

/* 2-D groups (12 x 10 and 32 x 32) whose threads leave at a diagonal
 * pattern before the first barrier. */
MC_TEST(msl_regions_2d_early_returns)
{
    static const uint32_t tx[] = {12, 32}, ty[] = {10, 32};
    for (size_t k = 0; k < 2; k++) {
        const uint32_t TX = tx[k], TY = ty[k], GX = 2, GY = 2, W = TX * GX, H = TY * GY, N = TX * TY;
        uint32_t *want = malloc(W * H * 4), *t2 = malloc(N * 4);
        CHECK(want && t2);
        for (uint32_t li = 0; li < N; li++) {
            bool left = (li % TX + li / TX) % 5u == 0u;
            t2[li] = left ? li * 3u + 1u : ((li + TX) % N) * 3u + 1u + li;
        }
        for (uint32_t y = 0; y < H; y++)
            for (uint32_t x = 0; x < W; x++) {
                uint32_t lx = x % TX, ly = y % TY, li = ly * TX + lx;
                want[y * W + x] = (lx + ly) % 5u == 0u ? 0xabcdu : t2[(li + 1) % N] ^ (lx << 16);
            }
        rk_arg args[] = {{RK_BUF, want, W * H * 4, NULL}};
        int rc = rk_both("rg_returns2d", (mc_size3){GX, GY, 1}, (mc_size3){TX, TY, 1}, args, 1, 0, want, W * H * 4);
        free(want);
        free(t2);
        if (rc) return rk_done(rc);
    }
    return rk_done(0);
}
