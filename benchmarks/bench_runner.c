/*
 * metal-compute bench runner: the price of chunking. The same Gray-Scott
 * steps run through the runner (chunks under the default budget, three in
 * flight, checkpoints) and as one uninterrupted command buffer holding every
 * dispatch (the device has no execution-time limit in bench). Goal: the
 * runner within 3% of the uninterrupted run (DESIGN.md). Also the device's
 * idle gap between chunks, against chunks of the same size committed and
 * waited for one at a time: each of those pays a full round trip (F134)
 * with the device idle, what the runner's in-flight queue avoids (F135).
 */
#include "bench.h"
#include "engine/trace.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define GS_GROUP 16u
/* The grid grows until one step keeps the device busy this long, so the
 * comparison measures the runner, not how fast the CPU can launch. */
#define GS_MIN_STEP_US 40.0
#define GS_MAX_SIZE 2048u

typedef struct gs_params {
    uint32_t width, height;
    float du, dv, feed, kill, dt, pad;
} gs_params;

typedef struct gs_bench {
    uint32_t size;
    mc_size3 grid;
    gs_params params;
    float *seed;
    mc_pipeline *pl; /* built once, shared by every setup */
    mc_buffer *a, *b;
} gs_bench;

static mc_status gs_make(mc_device *dev, gs_bench *g)
{
    size_t bytes = (size_t)g->size * g->size * 2 * sizeof(float);
    mc_buffer_desc ad = {bytes, MC_STORAGE_PRIVATE, "bench A", g->seed};
    mc_buffer_desc bd = {bytes, MC_STORAGE_PRIVATE, "bench B", g->seed};
    mc_status s = mc_buffer_create(dev, &ad, &g->a);
    if (s == MC_OK) s = mc_buffer_create(dev, &bd, &g->b);
    return s;
}

static void gs_free(gs_bench *g)
{
    mc_buffer_release(g->a);
    mc_buffer_release(g->b);
    g->a = g->b = NULL;
}

static mc_status gs_setup(void *user, mc_device *dev, mc_runner_binding *b)
{
    gs_bench *g = user;
    mc_status s = gs_make(dev, g);
    if (s != MC_OK) {
        gs_free(g);
        return s;
    }
    mc_cli_gray_scott_bind(b, g->pl, g->a, g->b, &g->params, sizeof g->params);
    return MC_OK;
}

static void gs_teardown(void *user, mc_runner_binding *b)
{
    (void)b;
    gs_free(user);
}

static const mc_size3 group = {GS_GROUP, GS_GROUP, 1};

/* Steps [first, first + n) in one command buffer on q. */
static mc_status encode_steps(mc_cmdbuf *cb, gs_bench *g, uint64_t first, uint64_t n)
{
    mc_pass *p;
    mc_status s = mc_cmdbuf_begin_pass(cb, "steps", &p);
    if (s == MC_OK) s = mc_pass_set_pipeline(p, g->pl);
    if (s == MC_OK) s = mc_pass_set_buffer(p, 0, g->a, 0);
    if (s == MC_OK) s = mc_pass_set_buffer(p, 1, g->b, 0);
    if (s == MC_OK) s = mc_pass_set_bytes(p, 3, &g->params, sizeof g->params);
    for (uint64_t i = 0; i < n && s == MC_OK; i++) {
        mc_runner_iteration it = {first + i, 1, 0};
        if (i) s = mc_pass_barrier(p);
        if (s == MC_OK) s = mc_pass_set_bytes(p, 2, &it, sizeof it);
        if (s == MC_OK) s = mc_pass_dispatch(p, g->grid, group);
    }
    if (s == MC_OK) s = mc_pass_end(p);
    return s;
}

/* One command buffer with every step; wall time from the start of
 * recording (the runner records as it goes) to completion. */
static mc_status run_uninterrupted(mc_bench *b, gs_bench *g, uint64_t steps, double *us)
{
    mc_queue *q = NULL;
    mc_cmdbuf *cb = NULL;
    mc_status s = gs_make(b->dev, g);
    if (s == MC_OK) s = mc_queue_create(b->dev, NULL, &q);
    double t0 = mc_bench_now_us();
    if (s == MC_OK) s = mc_cmdbuf_create(q, NULL, &cb);
    if (s == MC_OK) s = encode_steps(cb, g, 0, steps);
    s = mc_bench_commit_wait(cb, s);
    *us = mc_bench_now_us() - t0;
    mc_cmdbuf_release(cb);
    mc_queue_release(q);
    gs_free(g);
    return s;
}

/* The same steps through the runner; wall time of mc_runner_run. */
static mc_status run_runner(mc_bench *b, gs_bench *g, uint64_t steps, double *us, mc_runner_stats *st)
{
    mc_runner_desc desc = MC_RUNNER_DESC_INIT;
    desc.device = b->dev;
    desc.setup = gs_setup;
    desc.teardown = gs_teardown;
    desc.user = g;
    desc.threadgroups = g->grid;
    desc.threads_per_threadgroup = group;
    desc.total_iterations = steps;
    desc.iteration_arg = 2;
    desc.label = "bench";
    mc_runner *r;
    mc_status s = mc_runner_create(&desc, &r);
    if (s != MC_OK) return s;
    double t0 = mc_bench_now_us();
    s = mc_runner_run(r);
    *us = mc_bench_now_us() - t0;
    mc_runner_get_stats(r, st);
    mc_runner_release(r);
    return s;
}

/* Chunks of `per` steps, each committed and waited for before the next:
 * the mean device idle time between them. */
static mc_status naive_gap(mc_bench *b, gs_bench *g, uint64_t per, int chunks, double *gap_us)
{
    mc_queue *q = NULL;
    mc_status s = gs_make(b->dev, g);
    if (s == MC_OK) s = mc_queue_create(b->dev, NULL, &q);
    uint64_t prev_end = 0;
    double sum = 0;
    int n = 0;
    for (int k = 0; k < chunks && s == MC_OK; k++) {
        mc_cmdbuf *cb = NULL;
        mc_cmdbuf_desc cd = {"naive chunk", MC_CMDBUF_TIMESTAMPS};
        s = mc_cmdbuf_create(q, &cd, &cb);
        if (s == MC_OK) s = encode_steps(cb, g, (uint64_t)k * per, per);
        s = mc_bench_commit_wait(cb, s);
        uint64_t t0 = 0, t1 = 0;
        if (s == MC_OK) s = mc_cmdbuf_get_gpu_time(cb, &t0, &t1);
        if (s == MC_OK && k > 0 && t0 >= prev_end) {
            sum += (double)(t0 - prev_end) / 1e3;
            n++;
        }
        prev_end = t1;
        mc_cmdbuf_release(cb);
    }
    *gap_us = n ? sum / n : 0;
    mc_queue_release(q);
    gs_free(g);
    return s;
}

/* Tracing's cost (docs/TRACE.md): the same runs with a trace recording and
 * without, alternating; the trace goes to a temporary folder, written and
 * removed after each traced run (the write is not timed: it happens at
 * stop, after the run). Wall times per repetition in on[] and off[]. */
static mc_status trace_overhead(mc_bench *b, gs_bench *g, uint64_t steps, int reps, double *on, double *off)
{
    char dir[] = "/tmp/mc-bench-trace-XXXXXX";
    if (!mkdtemp(dir)) {
        fprintf(stderr, "runner: no temporary folder for the trace: %s\n", strerror(errno));
        return MC_ERR_IO;
    }
    char path[64];
    snprintf(path, sizeof path, "%s/bench.json", dir);
    mc_runner_stats st;
    mc_status s = MC_OK;
    for (int i = 0; i < reps && s == MC_OK; i++) {
        for (int k = 0; k < 2 && s == MC_OK; k++) {
            bool traced = (k == 0) == (i % 2 == 0);
            if (traced && (s = mc_trace_start(path)) != MC_OK) break;
            s = run_runner(b, g, steps, traced ? &on[i] : &off[i], &st);
            if (traced) {
                mc_status ws = mc_trace_stop();
                if (s == MC_OK) s = ws;
                remove(path);
            }
        }
    }
    /* The cost of one event, which the noise of whole runs hides: a few
     * per chunk (command buffer, pass, device span, chunk, checkpoint). */
    if (s == MC_OK && (s = mc_trace_start(path)) == MC_OK) {
        const int n = 50000;
        double t0 = mc_bench_now_us();
        for (int i = 0; i < n; i++)
            mc__trace_span("bench", "events", "bench", "span", 0, 1, 2, "MC_OK", MC__TARGS({"i", i}));
        double per_ns = (mc_bench_now_us() - t0) * 1e3 / n;
        s = mc_trace_stop();
        remove(path);
        fprintf(stderr, "runner: recording one trace event takes %.0f ns\n", per_ns);
    }
    rmdir(dir);
    return s;
}

static void gs_seed(gs_bench *g)
{
    uint32_t n = g->size;
    for (size_t i = 0; i < (size_t)n * n; i++) {
        g->seed[2 * i] = 1.0f;
        g->seed[2 * i + 1] = (i / n) % 64 < 8 && (i % n) % 64 < 8 ? 0.25f : 0.0f;
    }
}

static mc_status gs_resize(gs_bench *g, uint32_t n)
{
    float *f = realloc(g->seed, (size_t)n * n * 2 * sizeof *f);
    if (!f) return MC_ERR_NO_MEMORY;
    g->seed = f;
    g->size = n;
    g->grid = (mc_size3){(n + GS_GROUP - 1) / GS_GROUP, (n + GS_GROUP - 1) / GS_GROUP, 1};
    g->params = (gs_params){n, n, 1.0f, 0.5f, 0.0545f, 0.062f, 1.0f, 0.0f};
    gs_seed(g);
    return MC_OK;
}

int mc_bench_runner(mc_bench *b)
{
    gs_bench g;
    memset(&g, 0, sizeof g);
    int reps = b->quick ? 3 : 7, rc = 0;
    double *ours = calloc((size_t)reps, sizeof *ours), *base = calloc((size_t)reps, sizeof *base);
    double *gaps = calloc((size_t)reps, sizeof *gaps);
    mc_status s = MC_OK;
    if (!ours || !base || !gaps) {
        rc = mc_cli_fail("bench runner", MC_ERR_NO_MEMORY);
        goto out;
    }
    g.pl = mc_cli_pipeline(b->dev, "gray_scott", "gray_scott_step");
    if (!g.pl) {
        rc = 1;
        goto out;
    }
    /* The grid: 256 x 256, doubled while one step is shorter than
     * GS_MIN_STEP_US. */
    const uint64_t probe = 40;
    double step_us = 0;
    for (uint32_t n = 256;; n *= 2) {
        double t = 0;
        if ((s = gs_resize(&g, n)) != MC_OK || (s = run_uninterrupted(b, &g, probe, &t)) != MC_OK ||
            (s = run_uninterrupted(b, &g, probe, &t)) != MC_OK) { /* the second: warm */
            rc = mc_cli_fail("bench runner: uninterrupted run", s);
            goto out;
        }
        step_us = t / (double)probe;
        if (step_us >= GS_MIN_STEP_US || n >= GS_MAX_SIZE) break;
    }
    /* About a second of work (a quarter in --quick). */
    double target_us = b->quick ? 250e3 : 1e6;
    uint64_t steps = (uint64_t)(target_us / step_us);
    steps = steps < 200 ? 200 : steps > 2000000 ? 2000000 : steps;

    mc_runner_stats st;
    memset(&st, 0, sizeof st);
    double chunk_ms = 0, chunks = 0;
    for (int i = 0; i < reps; i++) {
        /* Alternate the order, so drift hits both sides alike. */
        for (int k = 0; k < 2; k++) {
            if ((k == 0) == (i % 2 == 0)) {
                if ((s = run_runner(b, &g, steps, &ours[i], &st)) != MC_OK) {
                    rc = mc_cli_fail("bench runner: runner", s);
                    goto out;
                }
                gaps[i] = st.gap_us_mean;
                chunk_ms += st.chunk_ms_mean;
                chunks += (double)st.chunks;
            } else if ((s = run_uninterrupted(b, &g, steps, &base[i])) != MC_OK) {
                rc = mc_cli_fail("bench runner: uninterrupted run", s);
                goto out;
            }
        }
    }
    /* The naive way, with chunks as long as the runner's. */
    uint64_t per = st.chunks ? st.dispatches / st.chunks : 1;
    double naive = 0;
    if ((s = naive_gap(b, &g, per ? per : 1, b->quick ? 10 : 30, &naive)) != MC_OK) {
        rc = mc_cli_fail("bench runner: naive chunks", s);
        goto out;
    }
    /* The same runner with a trace recording, side by side with none. */
    double *traced = calloc((size_t)reps, sizeof *traced), *untraced = calloc((size_t)reps, sizeof *untraced);
    if (traced && untraced && (s = trace_overhead(b, &g, steps, reps, traced, untraced)) == MC_OK) {
        char tm[64];
        snprintf(tm, sizeof tm, "gray-scott %u^2, %llu steps, traced", g.size, (unsigned long long)steps);
        double tmed = mc_bench_median(traced, reps), tiq = mc_bench_iqr(traced, reps);
        double umed = mc_bench_median(untraced, reps), uiq = mc_bench_iqr(untraced, reps);
        mc_bench_add(b, "runner", tm, "ms", tmed / 1e3, tiq / 1e3, umed / 1e3, uiq / 1e3, "tracing off", false);
        fprintf(stderr, "runner: tracing costs %+.2f%% of the run\n", umed > 0 ? (tmed / umed - 1) * 100 : 0);
    } else if (traced && untraced) {
        fprintf(stderr, "runner: no tracing row: %s\n", mc_last_error());
    }
    free(traced);
    free(untraced);
    char metric[64];
    snprintf(metric, sizeof metric, "gray-scott %u^2, %llu steps, total", g.size, (unsigned long long)steps);
    double om = mc_bench_median(ours, reps), oi = mc_bench_iqr(ours, reps);
    double bm = mc_bench_median(base, reps), bi = mc_bench_iqr(base, reps);
    mc_bench_add(b, "runner", metric, "ms", om / 1e3, oi / 1e3, bm / 1e3, bi / 1e3, "one command buffer", false);
    double gm = mc_bench_median(gaps, reps), gi = mc_bench_iqr(gaps, reps);
    mc_bench_add(b, "runner", "device idle between chunks, mean", "us", gm, gi, naive, 0, "commit+wait each chunk",
                 false);
    fprintf(stderr, "runner: %.1f us per step; %.0f chunks per run, %.1f ms of device time each; total %+.2f%%\n",
            step_us, chunks / reps, chunk_ms / reps, bm > 0 ? (om / bm - 1) * 100 : 0);
out:
    free(ours);
    free(base);
    free(gaps);
    free(g.seed);
    mc_pipeline_release(g.pl);
    return rc;
}
