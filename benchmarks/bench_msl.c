/*
 * bench msl: the same kernels written once in MSL against their hand-written
 * C twins (examples/kernels/NAME.metal vs benchmarks/baselines/NAME.c) on the CPU device: Gray-
 * Scott steps per second at 256^2 (16x16 groups, one dispatch per step, 100
 * steps per command buffer) and saxpy bandwidth (12 bytes per element).
 * Goal: MSL at least 0.9x of C. On a CUDA device the twin is the CUDA C one
 * (goal 0.95x) at 2048^2, 1000 steps a command buffer. With --peers (CPU), also the MSL Gray-Scott against a
 * plain OpenMP loop of the same step (same stencil, layout and periodic
 * edges) at 256^2 and 2048^2: what a CPU user would write by hand; and a
 * barrier-heavy tree reduction (256-thread groups, 9 barriers each) against
 * the same reduction in OpenCL C on PoCL (goal: 0.5x). The "runner" rows run
 * the MSL Gray-Scott through mc_runner_run, as `run gray-scott` does (goal:
 * 0.9x of the OpenMP loop at both sizes).
 */
#include "bench.h"
#include "peer.h"

#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

typedef struct gs_params {
    uint32_t width, height;
    float du, dv, feed, kill, dt;
    uint32_t fault_step;
} gs_params;

typedef struct gs_iter {
    uint64_t first;
    uint32_t count, pad;
} gs_iter;

/* Seconds for steps Gray-Scott steps on n x n, one command buffer. */
static double gs_run(mc_queue *q, mc_pipeline *pl, mc_buffer *a, mc_buffer *b, uint32_t n, uint32_t steps)
{
    gs_params prm = {n, n, 1.0f, 0.5f, 0.0545f, 0.062f, 1.0f, 0};
    mc_cmdbuf *cb = NULL;
    mc_pass *p = NULL;
    double t0 = mc_bench_now_us();
    mc_status s = mc_cmdbuf_create(q, NULL, &cb);
    if (s == MC_OK) s = mc_cmdbuf_begin_pass(cb, "gray-scott", &p);
    if (s == MC_OK) s = mc_pass_set_pipeline(p, pl);
    if (s == MC_OK) s = mc_pass_set_buffer(p, 0, a, 0);
    if (s == MC_OK) s = mc_pass_set_buffer(p, 1, b, 0);
    if (s == MC_OK) s = mc_pass_set_bytes(p, 3, &prm, sizeof prm);
    for (uint32_t i = 0; i < steps && s == MC_OK; i++) {
        gs_iter it = {i, 1, 0};
        if (i) s = mc_pass_barrier(p);
        if (s == MC_OK) s = mc_pass_set_bytes(p, 2, &it, sizeof it);
        if (s == MC_OK) s = mc_pass_dispatch(p, (mc_size3){(n + 15) / 16, (n + 15) / 16, 1}, (mc_size3){16, 16, 1});
    }
    if (s == MC_OK) s = mc_pass_end(p);
    s = mc_bench_commit_wait(cb, s);
    mc_cmdbuf_release(cb);
    return s == MC_OK ? (mc_bench_now_us() - t0) / 1e6 : -1.0;
}

static double saxpy_run(mc_queue *q, mc_pipeline *pl, mc_buffer *x, mc_buffer *y, uint32_t n)
{
    float a = 2.0f;
    mc_cmdbuf *cb = NULL;
    mc_pass *p = NULL;
    double t0 = mc_bench_now_us();
    mc_status s = mc_cmdbuf_create(q, NULL, &cb);
    if (s == MC_OK) s = mc_cmdbuf_begin_pass(cb, "saxpy", &p);
    if (s == MC_OK) s = mc_pass_set_pipeline(p, pl);
    if (s == MC_OK) s = mc_pass_set_buffer(p, 0, y, 0);
    if (s == MC_OK) s = mc_pass_set_buffer(p, 1, x, 0);
    if (s == MC_OK) s = mc_pass_set_bytes(p, 2, &a, sizeof a);
    if (s == MC_OK) s = mc_pass_set_bytes(p, 3, &n, sizeof n);
    if (s == MC_OK) s = mc_pass_dispatch(p, (mc_size3){(n + 1023) / 1024, 1, 1}, (mc_size3){1024, 1, 1});
    if (s == MC_OK) s = mc_pass_end(p);
    s = mc_bench_commit_wait(cb, s);
    mc_cmdbuf_release(cb);
    return s == MC_OK ? (mc_bench_now_us() - t0) / 1e6 : -1.0;
}

/* The same Gray-Scott step as gray_scott.metal, by hand, over all cores. */
static void omp_step(const float *src, float *dst, uint32_t w, uint32_t h, const gs_params *p)
{
#ifdef _OPENMP
#pragma omp parallel for schedule(static)
#endif
    for (uint32_t y = 0; y < h; y++) {
        uint32_t yu = y ? y - 1 : h - 1, yd = y + 1 < h ? y + 1 : 0;
        const float *r0 = src + 2u * yu * w, *r1 = src + 2u * y * w, *r2 = src + 2u * yd * w;
        for (uint32_t x = 0; x < w; x++) {
            uint32_t xl = x ? x - 1 : w - 1, xr = x + 1 < w ? x + 1 : 0;
            float u = r1[2u * x], v = r1[2u * x + 1u];
            float lu = 0.05f * (r0[2u * xl] + r0[2u * xr] + r2[2u * xl] + r2[2u * xr]) +
                       0.2f * (r0[2u * x] + r2[2u * x] + r1[2u * xl] + r1[2u * xr]) - u;
            float lv = 0.05f * (r0[2u * xl + 1u] + r0[2u * xr + 1u] + r2[2u * xl + 1u] + r2[2u * xr + 1u]) +
                       0.2f * (r0[2u * x + 1u] + r2[2u * x + 1u] + r1[2u * xl + 1u] + r1[2u * xr + 1u]) - v;
            float uvv = u * v * v;
            float *o = dst + 2u * (y * w + x);
            o[0] = u + p->dt * (p->du * lu - uvv + p->feed * (1.0f - u));
            o[1] = v + p->dt * (p->dv * lv + uvv - (p->feed + p->kill) * v);
        }
    }
}

static void seed(float *u, uint32_t n)
{
    for (uint32_t i = 0; i < n * n; i++) {
        uint32_t px = i % n, py = i / n;
        bool in = px > n / 2 - 8 && px < n / 2 + 8 && py > n / 2 - 8 && py < n / 2 + 8;
        u[2 * i] = in ? 0.5f : 1.0f;
        u[2 * i + 1] = in ? 0.25f : 0.0f;
    }
}

/* MSL Gray-Scott through the device vs the OpenMP loop, steps/s at n^2. */
static int vs_openmp(mc_bench *b, mc_queue *q, mc_pipeline *pl, uint32_t n, uint32_t steps, int reps)
{
    mc_buffer_desc gd = {(size_t)n * n * 2 * sizeof(float), MC_STORAGE_SHARED, "gray-scott", NULL};
    mc_buffer *ga = NULL, *gb = NULL;
    float *ha = malloc(gd.size), *hb = malloc(gd.size);
    double *m = calloc((size_t)reps * 2, sizeof *m);
    int rc = 0;
    if (!ha || !hb || !m || mc_buffer_create(b->dev, &gd, &ga) != MC_OK ||
        mc_buffer_create(b->dev, &gd, &gb) != MC_OK) {
        rc = mc_cli_fail("msl vs OpenMP setup", MC_ERR_OUT_OF_MEMORY);
        goto out;
    }
    float *dev_a = mc_buffer_contents(ga);
    if (dev_a) seed(dev_a, n);
    seed(ha, n);
    gs_params prm = {n, n, 1.0f, 0.5f, 0.0545f, 0.062f, 1.0f, 0};
    /* Not interleaved: idle device workers and OpenMP's threads both spin
     * for a while after their work, and would take the other's cores.
     * Each side runs all its repetitions after the other has gone quiet. */
    for (int i = -1; i < reps; i++) {
        double t = gs_run(q, pl, ga, gb, n, steps);
        if (t <= 0) {
            rc = mc_cli_fail("msl gray-scott", MC_ERR_INTERNAL);
            goto out;
        }
        if (i >= 0) m[i] = steps / t;
    }
    usleep(50000);
    for (int i = -1; i < reps; i++) {
        double t0 = mc_bench_now_us();
        for (uint32_t k = 0; k < steps; k++) omp_step(k & 1 ? hb : ha, k & 1 ? ha : hb, n, n, &prm);
        double t_omp = (mc_bench_now_us() - t0) / 1e6;
        if (i >= 0) m[reps + i] = steps / t_omp;
    }
    usleep(50000);
    char name[48];
    snprintf(name, sizeof name, "msl gray-scott %u^2 vs OpenMP", n);
    mc_bench_add(b, name, "steps/s, MSL kernel vs a plain OpenMP loop", "steps/s", mc_bench_median(m, reps),
                 mc_bench_iqr(m, reps), mc_bench_median(m + reps, reps), mc_bench_iqr(m + reps, reps), "OpenMP", true);
out:
    free(ha);
    free(hb);
    free(m);
    mc_buffer_release(ga);
    mc_buffer_release(gb);
    return rc;
}

/* ---- Gray-Scott through the runner ------------------------------------------------ */

typedef struct gs_runner_user {
    mc_pipeline *pl;
    uint32_t n;
    gs_params prm;
    const float *seed;
    mc_buffer *a, *b;
} gs_runner_user;

static mc_status gs_runner_setup(void *user, mc_device *dev, mc_runner_binding *bind)
{
    gs_runner_user *g = user;
    mc_buffer_desc d = {(size_t)g->n * g->n * 2 * sizeof(float), MC_STORAGE_SHARED, "gray-scott", g->seed};
    mc_status s = mc_buffer_create(dev, &d, &g->a);
    if (s == MC_OK) s = mc_buffer_create(dev, &d, &g->b);
    if (s != MC_OK) return s;
    mc_cli_gray_scott_bind(bind, g->pl, g->a, g->b, &g->prm, sizeof g->prm);
    return MC_OK;
}

static void gs_runner_teardown(void *user, mc_runner_binding *bind)
{
    gs_runner_user *g = user;
    (void)bind;
    mc_buffer_release(g->a);
    mc_buffer_release(g->b);
    g->a = g->b = NULL;
}

/* Seconds for steps Gray-Scott steps through mc_runner_run with its
 * defaults (chunks of about 25 ms, three in flight, checkpoints). */
static double gs_run_runner(mc_bench *b, gs_runner_user *g, uint32_t steps)
{
    mc_runner_desc desc = MC_RUNNER_DESC_INIT;
    desc.device = b->dev;
    desc.setup = gs_runner_setup;
    desc.teardown = gs_runner_teardown;
    desc.user = g;
    desc.threadgroups = (mc_size3){(g->n + 15) / 16, (g->n + 15) / 16, 1};
    desc.threads_per_threadgroup = (mc_size3){16, 16, 1};
    desc.total_iterations = steps;
    desc.iteration_arg = 2;
    desc.label = "bench msl";
    mc_runner *r = NULL;
    if (mc_runner_create(&desc, &r) != MC_OK) return -1.0;
    double t0 = mc_bench_now_us();
    mc_status s = mc_runner_run(r);
    double t = (mc_bench_now_us() - t0) / 1e6;
    mc_runner_release(r);
    return s == MC_OK ? t : -1.0;
}

/* MSL Gray-Scott through the runner vs the OpenMP loop, steps/s at n^2;
 * each side's repetitions after the other's have gone quiet, as above. */
static int vs_openmp_runner(mc_bench *b, mc_pipeline *pl, uint32_t n, uint32_t steps, int reps)
{
    size_t bytes = (size_t)n * n * 2 * sizeof(float);
    float *seed0 = malloc(bytes), *ha = malloc(bytes), *hb = malloc(bytes);
    double *m = calloc((size_t)reps * 2, sizeof *m);
    int rc = 0;
    if (!seed0 || !ha || !hb || !m) {
        rc = mc_cli_fail("msl runner vs OpenMP setup", MC_ERR_OUT_OF_MEMORY);
        goto out;
    }
    seed(seed0, n);
    seed(ha, n);
    gs_runner_user g = {pl, n, {n, n, 1.0f, 0.5f, 0.0545f, 0.062f, 1.0f, 0}, seed0, NULL, NULL};
    for (int i = -1; i < reps; i++) {
        double t = gs_run_runner(b, &g, steps);
        if (t <= 0) {
            rc = mc_cli_fail("msl gray-scott through the runner", MC_ERR_INTERNAL);
            goto out;
        }
        if (i >= 0) m[i] = steps / t;
    }
    usleep(50000);
    for (int i = -1; i < reps; i++) {
        double t0 = mc_bench_now_us();
        for (uint32_t k = 0; k < steps; k++) omp_step(k & 1 ? hb : ha, k & 1 ? ha : hb, n, n, &g.prm);
        double t_omp = (mc_bench_now_us() - t0) / 1e6;
        if (i >= 0) m[reps + i] = steps / t_omp;
    }
    usleep(50000);
    char name[48];
    snprintf(name, sizeof name, "msl gray-scott %u^2 runner vs OpenMP", n);
    mc_bench_add(b, name, "steps/s, MSL kernel through mc_runner_run vs a plain OpenMP loop", "steps/s",
                 mc_bench_median(m, reps), mc_bench_iqr(m, reps), mc_bench_median(m + reps, reps),
                 mc_bench_iqr(m + reps, reps), "OpenMP", true);
out:
    free(seed0);
    free(ha);
    free(hb);
    free(m);
    return rc;
}

/* The same kernel as reduce_tree in tests/msl/barriers.metal. */
static const char reduce_msl[] =
    "#include <metal_stdlib>\nusing namespace metal;\n"
    "kernel void reduce_tree(device const float *in [[buffer(0)]], device float *partial [[buffer(1)]],\n"
    "                        uint gid [[thread_position_in_grid]], uint lid [[thread_position_in_threadgroup]],\n"
    "                        uint group [[threadgroup_position_in_grid]], uint size [[threads_per_threadgroup]])\n"
    "{\n"
    "    threadgroup float scratch[256];\n"
    "    scratch[lid] = in[gid];\n"
    "    threadgroup_barrier(mem_flags::mem_threadgroup);\n"
    "    for (uint s = size / 2; s > 0; s >>= 1) {\n"
    "        if (lid < s) scratch[lid] += scratch[lid + s];\n"
    "        threadgroup_barrier(mem_flags::mem_threadgroup);\n"
    "    }\n"
    "    if (lid == 0) partial[group] = scratch[0];\n"
    "}\n";

/* Elements per second through the MSL reduction vs PoCL's; no row (and
 * no failure) where OpenCL or PoCL is absent. */
static int vs_pocl(mc_bench *b, mc_queue *q, int reps)
{
    char why[256] = "";
    mc_peer_cl *cl = mc_peer_cl_open(false, why, sizeof why);
    if (!cl) {
        printf("  msl reduction: no OpenCL peer (%s)\n", why);
        return 0;
    }
    const size_t n = b->quick ? (size_t)1 << 16 : (size_t)1 << 20;
    mc_library_desc ld = MC_LIBRARY_DESC_INIT;
    ld.language = MC_LANG_MSL;
    ld.source = reduce_msl;
    mc_library *lib = NULL;
    mc_pipeline *pl = NULL;
    mc_buffer *in = NULL, *out = NULL;
    double *m = calloc((size_t)reps * 2, sizeof *m);
    float *init = malloc(n * sizeof *init);
    mc_pipeline_desc pd = MC_PIPELINE_DESC_INIT;
    mc_buffer_desc bi = {n * sizeof(float), MC_STORAGE_SHARED, "reduce in", NULL};
    mc_buffer_desc bo = {n / 256 * sizeof(float), MC_STORAGE_SHARED, "reduce out", NULL};
    int rc = 0;
    if (!m || !init || mc_library_create(b->dev, &ld, &lib, NULL) != MC_OK) {
        rc = mc_cli_fail("msl reduction", MC_ERR_COMPILE);
        goto out;
    }
    pd.library = lib;
    pd.function = "reduce_tree";
    for (size_t i = 0; i < n; i++) init[i] = (float)(i % 13) - 4.0f;
    bi.initial_data = init;
    if (mc_pipeline_create(b->dev, &pd, &pl) != MC_OK || mc_buffer_create(b->dev, &bi, &in) != MC_OK ||
        mc_buffer_create(b->dev, &bo, &out) != MC_OK) {
        rc = mc_cli_fail("msl reduction setup", MC_ERR_OUT_OF_MEMORY);
        goto out;
    }
    float want = 0.0f;
    for (int i = 0; i < 256; i++) want += init[i];
    for (int i = -1; i < reps; i++) {
        double t0 = mc_bench_now_us();
        mc_cmdbuf *cb = NULL;
        mc_pass *p = NULL;
        mc_status s = mc_cmdbuf_create(q, NULL, &cb);
        if (s == MC_OK) s = mc_cmdbuf_begin_pass(cb, "reduce", &p);
        if (s == MC_OK) s = mc_pass_set_pipeline(p, pl);
        if (s == MC_OK) s = mc_pass_set_buffer(p, 0, in, 0);
        if (s == MC_OK) s = mc_pass_set_buffer(p, 1, out, 0);
        if (s == MC_OK) s = mc_pass_dispatch(p, (mc_size3){(uint32_t)(n / 256), 1, 1}, (mc_size3){256, 1, 1});
        if (s == MC_OK) s = mc_pass_end(p);
        s = mc_bench_commit_wait(cb, s);
        mc_cmdbuf_release(cb);
        double t1 = mc_bench_now_us();
        float got_cl = 0.0f;
        int cl_rc = mc_peer_cl_reduce(cl, n, &got_cl);
        double t2 = mc_bench_now_us();
        float *got = mc_buffer_contents(out);
        if (s != MC_OK || cl_rc != 0 || !got || got[0] != want || got_cl != want) {
            printf("  msl reduction: %s\n", cl_rc ? mc_peer_cl_error(cl) : "wrong sum or failed dispatch");
            rc = s != MC_OK || (got && got[0] != want) ? 1 : 0; /* a broken peer is no failure of ours */
            goto out;
        }
        if (i < 0) continue;
        m[i] = (double)n / (t1 - t0); /* elements per microsecond = M/s */
        m[reps + i] = (double)n / (t2 - t1);
    }
    mc_bench_add(b, "msl reduction vs PoCL", "tree reduction, 256-thread groups, 9 barriers", "Melem/s",
                 mc_bench_median(m, reps), mc_bench_iqr(m, reps), mc_bench_median(m + reps, reps),
                 mc_bench_iqr(m + reps, reps), mc_peer_cl_name(cl), true);
out:
    free(m);
    free(init);
    mc_buffer_release(in);
    mc_buffer_release(out);
    mc_pipeline_release(pl);
    mc_library_release(lib);
    mc_peer_cl_close(cl);
    return rc;
}

int mc_bench_msl(mc_bench *b)
{
    /* The twin in the device's own language: C on the CPU device, CUDA C
     * on a GPU (benchmarks/baselines). */
    const char *twin = b->info.kind == MC_DEVICE_CPU ? ".c" : b->info.kind == MC_DEVICE_CUDA ? ".cu" : NULL;
    const char *twin_name = b->info.kind == MC_DEVICE_CPU ? "hand-written C" : "hand-written CUDA C";
    if (!twin) {
        printf("  msl: no hand-written twin for this device (C: cpu, CUDA C: cuda); no rows here\n");
        return 0;
    }
    /* A GPU does a 256^2 step in a few microseconds, mostly launch cost:
     * 2048^2 there, where the kernels' own speed shows. */
    const bool gpu = b->info.kind != MC_DEVICE_CPU;
    const uint32_t n = gpu ? 2048 : 256, steps = b->quick ? 20 : gpu ? 1000 : 100;
    const uint32_t sn = b->quick ? 1u << 20 : gpu ? 1u << 26 : 1u << 24;
    int reps = b->reps < 10 ? b->reps : 10, rc = 0;
    if (reps < 1) reps = 1;
    mc_pipeline *gs_msl = mc_cli_pipeline_ext(b->dev, "gray_scott", ".metal", "gray_scott_step");
    mc_pipeline *gs_c = mc_cli_pipeline_ext(b->dev, "gray_scott", twin, "gray_scott_step");
    mc_pipeline *sx_msl = mc_cli_pipeline_ext(b->dev, "basic", ".metal", "saxpy");
    mc_pipeline *sx_c = mc_cli_pipeline_ext(b->dev, "basic", twin, "saxpy");
    mc_buffer *ga = NULL, *gb = NULL, *x = NULL, *y = NULL;
    mc_queue *q = NULL;
    double *m = calloc((size_t)reps * 4, sizeof *m);
    /* On a GPU the kernels' own memory (shared storage there is host
     * memory read over the bus) */
    mc_storage storage = gpu ? MC_STORAGE_PRIVATE : MC_STORAGE_SHARED;
    float *seeded = malloc((size_t)n * n * 2 * sizeof(float));
    if (seeded) seed(seeded, n); /* u = 1, v = 0.25 in a square: real work, no denormals */
    mc_buffer_desc gd = {(size_t)n * n * 2 * sizeof(float), storage, "gray-scott", seeded};
    mc_buffer_desc sd = {(size_t)sn * sizeof(float), storage, "saxpy", NULL};
    if (!seeded || !gs_msl || !gs_c || !sx_msl || !sx_c || !m || mc_buffer_create(b->dev, &gd, &ga) != MC_OK ||
        mc_buffer_create(b->dev, &gd, &gb) != MC_OK || mc_buffer_create(b->dev, &sd, &x) != MC_OK ||
        mc_buffer_create(b->dev, &sd, &y) != MC_OK || mc_queue_create(b->dev, NULL, &q) != MC_OK) {
        rc = 1;
        goto out;
    }
    for (int i = -1; i < reps; i++) {
        /* one warm-up; the two kernels alternate, each first every other
         * time, so neither gains from following the other */
        double t_msl, t_c, s_msl, s_c;
        if (i & 1) {
            t_c = gs_run(q, gs_c, ga, gb, n, steps);
            t_msl = gs_run(q, gs_msl, ga, gb, n, steps);
            s_c = saxpy_run(q, sx_c, x, y, sn);
            s_msl = saxpy_run(q, sx_msl, x, y, sn);
        } else {
            t_msl = gs_run(q, gs_msl, ga, gb, n, steps);
            t_c = gs_run(q, gs_c, ga, gb, n, steps);
            s_msl = saxpy_run(q, sx_msl, x, y, sn);
            s_c = saxpy_run(q, sx_c, x, y, sn);
        }
        if (t_msl <= 0 || t_c <= 0 || s_msl <= 0 || s_c <= 0) {
            rc = mc_cli_fail("msl bench", MC_ERR_INTERNAL);
            goto out;
        }
        if (i < 0) continue;
        m[i] = steps / t_msl;
        m[reps + i] = steps / t_c;
        m[2 * reps + i] = 12.0 * sn / s_msl / 1e9;
        m[3 * reps + i] = 12.0 * sn / s_c / 1e9;
    }
    char name[48];
    snprintf(name, sizeof name, "msl gray-scott %u^2", n);
    mc_bench_add(b, name, "steps/s, MSL kernel vs its twin", "steps/s", mc_bench_median(m, reps), mc_bench_iqr(m, reps),
                 mc_bench_median(m + reps, reps), mc_bench_iqr(m + reps, reps), twin_name, true);
    mc_bench_add(b, "msl saxpy", "bandwidth, MSL kernel vs its twin", "GB/s", mc_bench_median(m + 2 * reps, reps),
                 mc_bench_iqr(m + 2 * reps, reps), mc_bench_median(m + 3 * reps, reps),
                 mc_bench_iqr(m + 3 * reps, reps), twin_name, true);
    if (b->peers && !gpu) { /* the OpenMP loop and PoCL are CPU peers */
        rc = vs_openmp(b, q, gs_msl, 256, steps, reps);
        if (!rc) rc = vs_openmp(b, q, gs_msl, 2048, b->quick ? 2 : 10, reps);
        if (!rc) rc = vs_openmp_runner(b, gs_msl, 256, b->quick ? 50 : 500, reps);
        if (!rc) rc = vs_openmp_runner(b, gs_msl, 2048, b->quick ? 2 : 10, reps);
        if (!rc) rc = vs_pocl(b, q, reps);
    }
out:
    free(m);
    free(seeded);
    mc_queue_release(q);
    mc_buffer_release(ga);
    mc_buffer_release(gb);
    mc_buffer_release(x);
    mc_buffer_release(y);
    mc_pipeline_release(gs_msl);
    mc_pipeline_release(gs_c);
    mc_pipeline_release(sx_msl);
    mc_pipeline_release(sx_c);
    return rc;
}
