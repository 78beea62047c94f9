/*
 * metal-compute bench --peers: the CPU device beside the other ways to run
 * the same work on the same machine, in the same run. A user without a GPU
 * would otherwise pick OpenCL on PoCL; a plain OpenMP loop is the machine's
 * own limit. Each benchmark that has peers (round-trip, batching, saxpy,
 * pipeline-cache) adds rows whose baseline_name is the peer.
 *
 * Fairness: the sides are measured in rotation, in blocks; before each block
 * the process sleeps (SETTLE_MS) so every pool's threads have stopped
 * spinning, then the side runs unmeasured for WARM_MS and then its block.
 * So each side is measured back to back, in its steady state, from a quiet
 * machine, and drift hits every side alike. "After an idle pause" sleeps IDLE_MS before every
 * single sample instead, so each one starts with every thread asleep. The
 * CPU an idle pool burns is measured in a new process per side, which does
 * a burst of round trips and then sleeps for one second.
 *
 * The goals (docs/PERFORMANCE.md) are checked as the rows are made and
 * printed as "goal ...: met" or "NOT met" lines.
 */
#include "bench.h"
#include "peer.h"

#include <errno.h>
#include <ftw.h>
#include <limits.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define SETTLE_MS 20
#define WARM_MS 40
#define IDLE_MS 100
#define IDLE_WINDOW_S 1.0
#define PEER_PASSES 50
#define PEER_ELEMS 4096u

static void sleep_ms(double ms)
{
    struct timespec ts = {(time_t)(ms / 1000), (long)((ms - (time_t)(ms / 1000) * 1000.0) * 1e6)};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

static double cpu_time_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

/* ---- the peers of one benchmark ------------------------------------------ */

typedef struct peers {
    mc_peer_cl *cl; /* NULL: OpenCL absent (noted once) */
    bool omp;
    const char *cl_name;
} peers;

static bool noted_cl, noted_omp;

static void peers_open(peers *p, bool kernels)
{
    char why[512];
    memset(p, 0, sizeof *p);
    p->cl = mc_peer_cl_open(kernels, why, sizeof why);
    if (p->cl) {
        p->cl_name = mc_peer_cl_name(p->cl);
        if (!noted_cl) printf("peers: %s: %s\n", p->cl_name, mc_peer_cl_describe(p->cl));
    } else if (!noted_cl) {
        printf("peers: no OpenCL rows: %s\n", why);
    }
    noted_cl = true;
    p->omp = mc_peer_omp_available();
    if (!p->omp && !noted_omp) printf("peers: no OpenMP rows: this build has no OpenMP\n");
    noted_omp = true;
}

static void peers_close(peers *p)
{
    mc_peer_cl_close(p->cl);
}

static int cl_failed(peers *p, const char *what)
{
    fprintf(stderr, "bench --peers: %s: %s\n", what, mc_peer_cl_error(p->cl));
    return 1;
}

/* A goal line: ours against a bound, with the margin. */
#ifdef __GNUC__
static void goal(const char *what, bool met, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
#endif
static void goal(const char *what, bool met, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    printf("goal %s: %s (", what, met ? "met" : "NOT met");
    vprintf(fmt, ap);
    printf(")\n");
    va_end(ap);
}

/* ---- measuring sides in rotation ----------------------------------------- */

typedef int (*side_fn)(void *ctx); /* one sample's work; 0 on success */

typedef struct side {
    const char *name;
    side_fn fn;
    void *ctx;
    double *v; /* samples, us */
} side;

/* samples per side in blocks of `block`, each after a settle pause and at
 * least `warm` unmeasured runs lasting WARM_MS: long enough for the
 * scheduler to have spread the side's threads over the cores (woken
 * threads may start on the core that woke them; rebalancing takes
 * milliseconds), so a block measures the steady state of back-to-back
 * work. 0, or -1 when a run failed. */
static int measure(side *s, int ns, int samples, int block, int warm)
{
    for (int i = 0; i < samples; i += block) {
        int m = samples - i < block ? samples - i : block;
        for (int k = 0; k < ns; k++) {
            sleep_ms(SETTLE_MS);
            double until = mc_bench_now_us() + WARM_MS * 1e3;
            for (int w = 0; w < warm || mc_bench_now_us() < until; w++)
                if (s[k].fn(s[k].ctx)) goto failed;
            for (int j = 0; j < m; j++) {
                double t0 = mc_bench_now_us();
                if (s[k].fn(s[k].ctx)) goto failed;
                s[k].v[i + j] = mc_bench_now_us() - t0;
            }
        }
    }
    return 0;
failed:
    fprintf(stderr, "bench --peers: a sample failed\n");
    return -1;
}

/* One sample per side at a time, each after IDLE_MS of sleep. */
static int measure_idle(side *s, int ns, int samples)
{
    for (int i = 0; i < samples; i++)
        for (int k = 0; k < ns; k++) {
            sleep_ms(IDLE_MS);
            double t0 = mc_bench_now_us();
            if (s[k].fn(s[k].ctx)) {
                fprintf(stderr, "bench --peers: a sample failed\n");
                return -1;
            }
            s[k].v[i] = mc_bench_now_us() - t0;
        }
    return 0;
}

static double med(double *v, int n)
{
    return mc_bench_median(v, n);
}

static double iqr(double *v, int n)
{
    return mc_bench_iqr(v, n);
}

/* ---- child processes ------------------------------------------------------- */

/* Runs `metal-compute bench __peer-child ARGS...` with extra environment
 * (NAME=VALUE, may be NULL) and appends the numbers it prints to v (at most
 * cap). Returns how many, or -1 when it failed. */
static int run_child(const char *const *args, int nargs, const char *extra_env, double *v, int cap)
{
    char exe[PATH_MAX];
    if (!mc_cli_self_exe(exe, sizeof exe)) {
        fprintf(stderr, "bench --peers: cannot find this program's own path\n");
        return -1;
    }
    char *argv[16];
    int a = 0;
    argv[a++] = exe;
    argv[a++] = "bench";
    argv[a++] = "__peer-child";
    for (int i = 0; i < nargs && a < 15; i++) argv[a++] = (char *)args[i];
    argv[a] = NULL;
    return mc_bench_run_child("bench --peers", argv, extra_env, v, cap);
}

/* ---- ours, the same work ----------------------------------------------------- */

typedef struct ours_ctx {
    mc_queue *q;
    mc_pipeline *pl;
    mc_buffer *buf, *x;
    uint32_t n;
    float a;
    uint32_t tg;
    int per_cb;     /* batching: passes per command buffer */
    uint32_t *runs; /* batching: runs of this buffer, counted */
} ours_ctx;

static int ours_round_trip(void *ctx)
{
    ours_ctx *o = ctx;
    return mc_bench_round_trip_once(o->q, o->pl);
}

/* PEER_PASSES passes of add_one, per_cb to a command buffer, each command
 * buffer committed and waited for. */
static int ours_passes(void *ctx)
{
    ours_ctx *o = ctx;
    if (mc_bench_add_one_passes(o->q, o->pl, o->buf, o->n, PEER_PASSES, o->per_cb)) return -1;
    if (o->runs) ++*o->runs;
    return 0;
}

static int ours_saxpy(void *ctx)
{
    ours_ctx *o = ctx;
    mc_cmdbuf *cb;
    mc_pass *p;
    if (mc_cmdbuf_create(o->q, NULL, &cb) != MC_OK) return -1;
    int rc = -1;
    if (mc_cmdbuf_begin_pass(cb, "saxpy", &p) == MC_OK && mc_pass_set_pipeline(p, o->pl) == MC_OK &&
        mc_pass_set_buffer(p, 0, o->buf, 0) == MC_OK && mc_pass_set_buffer(p, 1, o->x, 0) == MC_OK &&
        mc_pass_set_bytes(p, 2, &o->a, 4) == MC_OK && mc_pass_set_bytes(p, 3, &o->n, 4) == MC_OK &&
        mc_pass_dispatch(p, (mc_size3){(o->n + o->tg - 1) / o->tg, 1, 1}, (mc_size3){o->tg, 1, 1}) == MC_OK &&
        mc_pass_end(p) == MC_OK && mc_cmdbuf_commit(cb) == MC_OK && mc_cmdbuf_wait(cb, MC_WAIT_FOREVER) == MC_OK &&
        mc_cmdbuf_status(cb, NULL) == MC_OK)
        rc = 0;
    mc_cmdbuf_release(cb);
    return rc;
}

/* ---- the peers' sides --------------------------------------------------------- */

typedef struct cl_ctx {
    mc_peer_cl *cl;
    bool split;
    size_t n;
    uint32_t *runs;
} cl_ctx;

static int cl_round_trip(void *ctx)
{
    return mc_peer_cl_round_trip(((cl_ctx *)ctx)->cl);
}

static int cl_passes(void *ctx)
{
    cl_ctx *c = ctx;
    if (mc_peer_cl_batch(c->cl, PEER_ELEMS, PEER_PASSES, c->split)) return -1;
    ++*c->runs;
    return 0;
}

static int cl_saxpy(void *ctx)
{
    cl_ctx *c = ctx;
    return mc_peer_cl_saxpy(c->cl, c->n);
}

typedef struct omp_ctx {
    uint32_t *data;
    float *x, *y;
    size_t n;
    uint32_t runs;
} omp_ctx;

static int omp_round_trip(void *ctx)
{
    (void)ctx;
    mc_peer_omp_round_trip();
    return 0;
}

static int omp_passes(void *ctx)
{
    omp_ctx *c = ctx;
    mc_peer_omp_batch(c->data, PEER_ELEMS, PEER_PASSES);
    c->runs++;
    return 0;
}

static int omp_saxpy(void *ctx)
{
    omp_ctx *c = ctx;
    mc_peer_omp_saxpy(c->y, c->x, 2.0f, c->n);
    return 0;
}

/* ---- round-trip ---------------------------------------------------------------- */

/* CPU microseconds an idle side used over IDLE_WINDOW_S after a burst, as
 * the median over new processes; < 0 when the side could not run. */
static double idle_cpu(const char *which, int children, double *spread)
{
    double v[8];
    int n = 0;
    char window[32];
    snprintf(window, sizeof window, "%g", IDLE_WINDOW_S);
    for (int c = 0; c < children && c < 8; c++) {
        const char *args[] = {"idle", which, window};
        double one;
        if (run_child(args, 3, NULL, &one, 1) != 1) return -1;
        v[n++] = one;
    }
    *spread = iqr(v, n) / 1e3 / IDLE_WINDOW_S;
    return med(v, n) / 1e3 / IDLE_WINDOW_S; /* ms of CPU per second */
}

static int peers_round_trip(mc_bench *b)
{
    peers p;
    peers_open(&p, true);
    ours_ctx o = {0};
    cl_ctx cc = {p.cl, false, 0, NULL};
    int n = b->reps * 10, nidle = b->quick ? 3 : b->reps / 10 < 5 ? 5 : b->reps / 10 > 30 ? 30 : b->reps / 10;
    double *v[6];
    int rc = 1;
    for (int i = 0; i < 6; i++) v[i] = calloc((size_t)(n > nidle ? n : nidle), sizeof(double));
    o.pl = mc_cli_pipeline(b->dev, "basic", "empty");
    if (!o.pl || mc_queue_create(b->dev, NULL, &o.q) != MC_OK || !v[0] || !v[1] || !v[2] || !v[3] || !v[4] || !v[5])
        goto out;
    side s[3] = {{"ours", ours_round_trip, &o, v[0]}};
    int ns = 1, icl = -1, iomp = -1;
    if (p.cl) icl = ns, s[ns++] = (side){p.cl_name, cl_round_trip, &cc, v[1]};
    if (p.omp) iomp = ns, s[ns++] = (side){"OpenMP", omp_round_trip, NULL, v[2]};
    if (measure(s, ns, n, 100, 20) < 0) goto out;
    double p99[3];
    double m[3], q[3];
    for (int k = 0; k < ns; k++) {
        m[k] = med(s[k].v, n);
        q[k] = iqr(s[k].v, n);
        p99[k] = mc_bench_percentile(s[k].v, n, 0.99);
    }
    for (int k = 1; k < ns; k++)
        mc_bench_add(b, "round-trip", "back to back, median", "us", m[0], q[0], m[k], q[k], s[k].name, false);
    for (int k = 1; k < ns; k++)
        mc_bench_add(b, "round-trip", "back to back, p99", "us", p99[0], 0, p99[k], 0, s[k].name, false);

    fprintf(stderr, "running round-trip after %d ms idle pauses (%d samples per side)...\n", IDLE_MS, nidle);
    side si[3];
    for (int k = 0; k < ns; k++) si[k] = s[k], si[k].v = v[3 + k];
    if (measure_idle(si, ns, nidle)) goto out;
    double im[3], iq[3];
    for (int k = 0; k < ns; k++) {
        im[k] = med(si[k].v, nidle);
        iq[k] = iqr(si[k].v, nidle);
    }
    for (int k = 1; k < ns; k++)
        mc_bench_add(b, "round-trip", "after a 100 ms idle pause, median", "us", im[0], iq[0], im[k], iq[k], si[k].name,
                     false);

    /* the idle device: CPU time in the second after its last dispatch */
    int children = b->quick ? 1 : 3;
    double ospread, os = idle_cpu("ours", children, &ospread);
    if (os < 0) {
        fprintf(stderr, "bench --peers: the idle measurement of the CPU device failed\n");
        goto out;
    }
    double cls = -1, cls_spread = 0, omps = -1, omps_spread = 0;
    if (p.cl) cls = idle_cpu("opencl", children, &cls_spread);
    if (p.omp) omps = idle_cpu("openmp", children, &omps_spread);
    if ((p.cl && cls < 0) || (p.omp && omps < 0))
        fprintf(stderr, "bench --peers: the idle measurement of a peer failed; its row is left out\n");
    if (p.cl && cls >= 0)
        mc_bench_add(b, "round-trip", "CPU used when idle, in the 1 s after a burst", "ms/s", os, ospread, cls,
                     cls_spread, p.cl_name, false);
    if (p.omp && omps >= 0)
        mc_bench_add(b, "round-trip", "CPU used when idle, in the 1 s after a burst", "ms/s", os, ospread, omps,
                     omps_spread, "OpenMP", false);
    printf("peers round-trip: ours %.2f us back to back, %.1f us after %d ms idle, %.3f ms CPU per idle second", m[0],
           im[0], IDLE_MS, os);
    if (icl > 0) printf("; %s %.2f us, %.1f us, %.3f ms", p.cl_name, m[icl], im[icl], cls);
    if (iomp > 0) printf("; OpenMP %.2f us, %.1f us, %.3f ms", m[iomp], im[iomp], omps);
    printf("\n");
    if (icl > 0) {
        goal("round-trip back to back <= 1/4 of PoCL", m[0] <= m[icl] / 4, "ours %.2f us, PoCL %.2f us: %.1fx", m[0],
             m[icl], m[icl] / m[0]);
        goal("round-trip after an idle pause <= PoCL", im[0] <= im[icl], "ours %.1f us, PoCL %.1f us: %.2fx", im[0],
             im[icl], im[icl] / im[0]);
    }
    rc = 0;
out:
    for (int i = 0; i < 6; i++) free(v[i]);
    mc_queue_release(o.q);
    mc_pipeline_release(o.pl);
    peers_close(&p);
    return rc;
}

/* ---- batching ------------------------------------------------------------------- */

static int peers_batching(mc_bench *b)
{
    peers p;
    peers_open(&p, true);
    uint32_t ours_runs = 0, cl_runs = 0;
    ours_ctx one = {0}, split;
    cl_ctx cone = {p.cl, false, 0, &cl_runs}, csplit = {p.cl, true, 0, &cl_runs};
    omp_ctx oc = {0};
    int n = b->reps, rc = 1;
    double *v[5];
    for (int i = 0; i < 5; i++) v[i] = calloc((size_t)n, sizeof(double));
    mc_buffer_desc bd = {PEER_ELEMS * 4, MC_STORAGE_PRIVATE, "peers batch", NULL};
    one.pl = mc_cli_pipeline(b->dev, "basic", "add_one");
    oc.data = calloc(PEER_ELEMS, sizeof *oc.data);
    if (!one.pl || !oc.data || mc_queue_create(b->dev, NULL, &one.q) != MC_OK ||
        mc_buffer_create(b->dev, &bd, &one.buf) != MC_OK || !v[0] || !v[1] || !v[2] || !v[3] || !v[4])
        goto out;
    one.n = PEER_ELEMS;
    one.per_cb = PEER_PASSES;
    one.runs = &ours_runs;
    split = one;
    split.per_cb = 1;
    side s[5] = {{"ours, one command buffer", ours_passes, &one, v[0]},
                 {"ours, 50 command buffers", ours_passes, &split, v[1]}};
    int ns = 2, icl = -1, iomp = -1;
    if (p.cl) {
        icl = ns;
        s[ns++] = (side){p.cl_name, cl_passes, &cone, v[2]};
        s[ns++] = (side){p.cl_name, cl_passes, &csplit, v[3]};
    }
    if (p.omp) iomp = ns, s[ns++] = (side){"OpenMP", omp_passes, &oc, v[4]};
    if (measure(s, ns, n, 10, 2) < 0) goto out;
    /* every run adds PEER_PASSES to every element: the totals say nothing
     * was lost (each side counts its own runs) */
    uint32_t got = 0;
    if (mc_buffer_read(one.buf, 0, &got, sizeof got) != MC_OK || got != ours_runs * PEER_PASSES) {
        fprintf(stderr, "bench --peers batching: ours computed %u, want %u\n", got, ours_runs * PEER_PASSES);
        goto out;
    }
    if (p.cl) {
        if (mc_peer_cl_batch_value(p.cl, &got)) {
            rc = cl_failed(&p, "batching");
            goto out;
        }
        if (got != cl_runs * PEER_PASSES) {
            fprintf(stderr, "bench --peers batching: %s computed %u, want %u\n", p.cl_name, got, cl_runs * PEER_PASSES);
            goto out;
        }
    }
    if (p.omp && oc.data[PEER_ELEMS - 1] != oc.runs * PEER_PASSES) {
        fprintf(stderr, "bench --peers batching: OpenMP computed %u, want %u\n", oc.data[PEER_ELEMS - 1],
                oc.runs * PEER_PASSES);
        goto out;
    }
    double m[5], q[5];
    for (int k = 0; k < ns; k++) m[k] = med(s[k].v, n), q[k] = iqr(s[k].v, n);
    if (icl > 0) {
        mc_bench_add(b, "batching", "50 passes, one submission", "us", m[0], q[0], m[icl], q[icl], p.cl_name, false);
        mc_bench_add(b, "batching", "50 passes, each waited for", "us", m[1], q[1], m[icl + 1], q[icl + 1], p.cl_name,
                     false);
    }
    if (iomp > 0)
        mc_bench_add(b, "batching", "50 passes, one submission (OpenMP: 50 loops)", "us", m[0], q[0], m[iomp], q[iomp],
                     "OpenMP", false);
    printf("peers batching: ours %.1f us batched, %.1f us split (%.1fx)", m[0], m[1], m[1] / m[0]);
    if (icl > 0)
        printf("; %s %.1f us batched, %.1f us split (%.1fx)", p.cl_name, m[icl], m[icl + 1], m[icl + 1] / m[icl]);
    if (iomp > 0) printf("; OpenMP %.1f us", m[iomp]);
    printf("\n");
    if (icl > 0)
        goal("batching: ours batched <= PoCL batched", m[0] <= m[icl], "ours %.1f us, PoCL %.1f us: %.2fx", m[0],
             m[icl], m[icl] / m[0]);
    goal("batching: split/batched >= 6.4x (F136, M1)", m[1] / m[0] >= 6.4, "ours %.2fx", m[1] / m[0]);
    rc = 0;
out:
    for (int i = 0; i < 5; i++) free(v[i]);
    free(oc.data);
    mc_buffer_release(one.buf);
    mc_queue_release(one.q);
    mc_pipeline_release(one.pl);
    peers_close(&p);
    return rc;
}

/* ---- saxpy ---------------------------------------------------------------------- */

/* The hand-written C saxpy (benchmarks/baselines/basic.c) as one loop over
 * the group's range, with restrict: the form a C compiler vectorises (a
 * per-thread bounds check stops it). Built with -O3 -march=native through the library's options,
 * the code generation PoCL gives every OpenCL kernel; the runtime around
 * it is the same. */
static const char saxpy_range_source[] =
    "#include <mc/mc_cpu_kernel.h>\n"
    "MC_KERNEL(saxpy, 4)\n"
    "{\n"
    "    float *restrict y = MC_ARG(ctx, 0, float);\n"
    "    const float *restrict x = MC_ARG(ctx, 1, const float);\n"
    "    const float a = *MC_ARG(ctx, 2, const float);\n"
    "    const uint32_t n = *MC_ARG(ctx, 3, const uint32_t);\n"
    "    uint32_t first = ctx->group_id[0] * ctx->group_size[0], end = first + ctx->group_size[0];\n"
    "    if (end > n) end = n;\n"
    "    for (uint32_t i = first; i < end; i++) y[i] = a * x[i] + y[i];\n"
    "}\n";
#define SAXPY_RANGE_OPTIONS "-O3 -march=native"

static mc_pipeline *saxpy_range_pipeline(mc_device *d)
{
    mc_library_desc ld = MC_LIBRARY_DESC_INIT;
    ld.language = MC_LANG_C;
    ld.source = saxpy_range_source;
    ld.options = SAXPY_RANGE_OPTIONS;
    ld.label = "saxpy, range loop";
    mc_library *lib = NULL;
    char *log = NULL;
    if (mc_library_create(d, &ld, &lib, &log) != MC_OK) {
        printf("peers saxpy: no range-loop row: the compiler refused " SAXPY_RANGE_OPTIONS " (%s)\n", mc_last_error());
        mc_free(log);
        return NULL;
    }
    mc_free(log);
    mc_pipeline_desc pd = MC_PIPELINE_DESC_INIT;
    pd.library = lib;
    pd.function = "saxpy";
    mc_pipeline *pl = NULL;
    if (mc_pipeline_create(d, &pd, &pl) != MC_OK) pl = NULL;
    mc_library_release(lib);
    return pl;
}

static int peers_saxpy(mc_bench *b)
{
    peers p;
    peers_open(&p, true);
    size_t n = (size_t)1 << 24; /* as bench saxpy on the CPU device */
    if (b->quick) n >>= 4;
    ours_ctx o = {0}, tuned;
    cl_ctx cc = {p.cl, false, n, NULL};
    omp_ctx oc = {NULL, NULL, NULL, n, 0};
    int reps = b->reps < 20 ? b->reps : 20, rc = 1;
    double *v[4];
    for (int i = 0; i < 4; i++) v[i] = calloc((size_t)reps, sizeof(double));
    mc_buffer_desc bd = {n * sizeof(float), MC_STORAGE_PRIVATE, "peers saxpy", NULL};
    o.pl = mc_cli_pipeline(b->dev, "basic", "saxpy");
    o.n = (uint32_t)n;
    o.a = 2.0f;
    o.tg = 1024; /* as bench saxpy: one call per 1024 elements */
    tuned = o;
    tuned.pl = saxpy_range_pipeline(b->dev);
    if (p.omp) {
        oc.x = malloc(n * sizeof(float));
        oc.y = malloc(n * sizeof(float));
        if (oc.x && oc.y)
            for (size_t i = 0; i < n; i++) oc.x[i] = (float)(i % 1000), oc.y[i] = 1.0f;
    }
    if (!o.pl || mc_queue_create(b->dev, NULL, &o.q) != MC_OK || mc_buffer_create(b->dev, &bd, &o.buf) != MC_OK ||
        mc_buffer_create(b->dev, &bd, &o.x) != MC_OK || !v[0] || !v[1] || !v[2] || !v[3] || (p.omp && (!oc.x || !oc.y)))
        goto out;
    tuned.q = o.q, tuned.buf = o.buf, tuned.x = o.x;
    /* the same data on every side: x[i] = i % 1000, y = 1 */
    float *init = malloc(n * sizeof *init);
    bool written = init != NULL;
    if (init) {
        for (size_t i = 0; i < n; i++) init[i] = (float)(i % 1000);
        written = mc_buffer_write(o.x, 0, init, n * sizeof *init) == MC_OK;
        for (size_t i = 0; i < n; i++) init[i] = 1.0f;
        written = written && mc_buffer_write(o.buf, 0, init, n * sizeof *init) == MC_OK;
        free(init);
    }
    if (!written) goto out;
    side s[4] = {{"ours", ours_saxpy, &o, v[0]}};
    int ns = 1, itu = -1;
    if (p.cl) s[ns++] = (side){p.cl_name, cl_saxpy, &cc, v[1]};
    if (p.omp) s[ns++] = (side){"OpenMP", omp_saxpy, &oc, v[2]};
    if (tuned.pl) itu = ns, s[ns++] = (side){"ours, range loop", ours_saxpy, &tuned, v[3]};
    if (measure(s, ns, reps, 5, 1) < 0) {
        if (p.cl) cl_failed(&p, "saxpy");
        goto out;
    }
    double m[4], q[4];
    for (int k = 0; k < ns; k++) {
        for (int i = 0; i < reps; i++) s[k].v[i] = 12.0 * (double)n / s[k].v[i] / 1e3; /* GB/s */
        m[k] = med(s[k].v, reps);
        q[k] = iqr(s[k].v, reps);
    }
    int npeers = itu > 0 ? ns - 1 : ns; /* sides 1..npeers-1 are the peers */
    for (int k = 1; k < npeers; k++)
        mc_bench_add(b, "saxpy", "bandwidth, 12 bytes per element", "GB/s", m[0], q[0], m[k], q[k], s[k].name, true);
    for (int k = 1; itu > 0 && k < npeers; k++)
        mc_bench_add(b, "saxpy", "bandwidth, range-loop kernel, -O3 -march=native", "GB/s", m[itu], q[itu], m[k], q[k],
                     s[k].name, true);
    double best = 0;
    const char *best_name = "";
    for (int k = 1; k < npeers; k++)
        if (m[k] > best) best = m[k], best_name = s[k].name;
    printf("peers saxpy (%zu elements, %.0f MiB per array): ours %.2f GB/s", n, n * 4.0 / (1 << 20), m[0]);
    for (int k = 1; k < ns; k++) printf("; %s %.2f GB/s", s[k].name, m[k]);
    printf("\n");
    if (best > 0) {
        goal("saxpy >= 95% of the better of PoCL and OpenMP", m[0] >= 0.95 * best,
             "ours %.2f GB/s, %s %.2f GB/s: %.0f%%", m[0], best_name, best, 100 * m[0] / best);
        if (itu > 0)
            goal("saxpy, range-loop kernel -O3 -march=native, >= 95% of the better", m[itu] >= 0.95 * best,
                 "ours %.2f GB/s: %.0f%%", m[itu], 100 * m[itu] / best);
    }
    rc = 0;
out:
    for (int i = 0; i < 4; i++) free(v[i]);
    free(oc.x);
    free(oc.y);
    mc_buffer_release(o.buf);
    mc_buffer_release(o.x);
    mc_queue_release(o.q);
    mc_pipeline_release(o.pl);
    mc_pipeline_release(tuned.pl);
    peers_close(&p);
    return rc;
}

/* ---- pipeline-cache ---------------------------------------------------------------- */

static int nprograms; /* count_programs' tally: nftw passes no context */

static int count_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)path, (void)sb, (void)ftw;
    size_t len = strlen(path);
    if (flag == FTW_F && len >= 11 && !strcmp(path + len - 11, "/program.bc")) nprograms++; /* PoCL's programs */
    return 0;
}

static int count_programs(const char *dir)
{
    nprograms = 0;
    nftw(dir, count_entry, 16, FTW_PHYS);
    return nprograms;
}

/* ours: the rows bench pipeline-cache made a moment ago */
static const mc_bench_row *find_row(const mc_bench *b, const char *metric_prefix)
{
    for (int i = b->nrows - 1; i >= 0; i--)
        if (!strcmp(b->rows[i].name, "pipeline-cache") &&
            !strncmp(b->rows[i].metric, metric_prefix, strlen(metric_prefix)))
            return &b->rows[i];
    return NULL;
}

static int peers_pipeline_cache(mc_bench *b)
{
    const mc_bench_row *disk = find_row(b, "warm from disk"), *first = find_row(b, "first pipeline of a new process");
    if (!disk || !first) {
        fprintf(stderr, "bench --peers pipeline-cache: the pipeline-cache rows are missing\n");
        return 1;
    }
    peers p;
    peers_open(&p, false);
    if (!p.cl) return 0; /* OpenMP compiles nothing at run time */
    int n = b->reps / 10;
    n = n < 5 ? 5 : n > 20 ? 20 : n; /* as bench pipeline-cache */
    int children = b->quick ? 2 : 3, rc = 1;
    double *cold = calloc((size_t)n + 1, sizeof *cold), *warm = calloc((size_t)n * children, sizeof *warm);
    double *all = calloc((size_t)n + 1, sizeof *all), *first_cold = calloc((size_t)children, sizeof(double));
    double *first_warm = calloc((size_t)children, sizeof(double));
    int nwarm = 0;
    const char *tmp = getenv("TMPDIR");
    char root[PATH_MAX], env[PATH_MAX + 32], count[16];
    snprintf(root, sizeof root, "%s/mc-bench-peers-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    snprintf(count, sizeof count, "%d", n);
    if (!cold || !warm || !all || !first_cold || !first_warm || !mkdtemp(root)) {
        fprintf(stderr, "bench --peers pipeline-cache: cannot make a cache folder in %s\n", root);
        goto out;
    }
    /* cold: new processes, each into an empty cache folder of its own; the
     * first build of each is its first pipeline, the rest are per pipeline */
    int ncold = 0;
    for (int c = 0; c < children; c++) {
        snprintf(env, sizeof env, "POCL_CACHE_DIR=%s/cold-%d", root, c);
        const char *args[] = {"cl-build", count, "cold"};
        if (run_child(args, 3, env, all, n + 1) != n + 1) {
            fprintf(stderr, "bench --peers pipeline-cache: the OpenCL build process failed\n");
            goto out;
        }
        first_cold[c] = all[0];
        if (c == 0)
            for (int i = 1; i <= n; i++) cold[ncold++] = all[i];
    }
    /* warm: new processes on the first cold folder, which holds every variant */
    char dir[PATH_MAX + 16];
    snprintf(dir, sizeof dir, "%s/cold-0", root);
    snprintf(env, sizeof env, "POCL_CACHE_DIR=%s", dir);
    int files = count_programs(dir);
    for (int c = 0; c < children; c++) {
        const char *args[] = {"cl-build", count, "warm"};
        if (run_child(args, 3, env, all, n) != n) {
            fprintf(stderr, "bench --peers pipeline-cache: the OpenCL build process failed\n");
            goto out;
        }
        first_warm[c] = all[0];
        for (int i = 1; i < n; i++) warm[nwarm++] = all[i];
    }
    if (count_programs(dir) != files)
        printf("peers pipeline-cache: note: %s's warm builds compiled (its cache held %d programs, then %d)\n",
               p.cl_name, files, count_programs(dir));
    double cm = med(cold, ncold), ci = iqr(cold, ncold), wm = med(warm, nwarm), wi = iqr(warm, nwarm);
    double fcm = med(first_cold, children), fci = iqr(first_cold, children);
    double fwm = med(first_warm, children), fwi = iqr(first_warm, children);
    /* ours: disk->ours is the disk-warm pipeline, its baseline the cold compile */
    mc_bench_add(b, "pipeline-cache", "cold compile, per pipeline", "us", disk->baseline, disk->baseline_spread, cm, ci,
                 p.cl_name, false);
    mc_bench_add(b, "pipeline-cache", "warm from disk, new process, per pipeline", "us", disk->ours, disk->ours_spread,
                 wm, wi, p.cl_name, false);
    mc_bench_add(b, "pipeline-cache", "first pipeline of a new process, compiled", "us", first->baseline,
                 first->baseline_spread, fcm, fci, p.cl_name, false);
    mc_bench_add(b, "pipeline-cache", "first pipeline of a new process, from disk", "us", first->ours,
                 first->ours_spread, fwm, fwi, p.cl_name, false);
    printf(
        "peers pipeline-cache: %s build %.1f ms cold, %.2f ms warm from its cache (first of a process: %.1f ms "
        "cold, %.1f ms warm)\n",
        p.cl_name, cm / 1e3, wm / 1e3, fcm / 1e3, fwm / 1e3);
    goal("pipeline-cache: ours disk-warm >= 5x faster than PoCL warm", wm >= 5 * disk->ours,
         "ours %.1f us, PoCL %.1f us: %.1fx", disk->ours, wm, wm / disk->ours);
    goal("pipeline-cache: ours cold compile <= PoCL cold build", disk->baseline <= cm,
         "ours %.1f ms, PoCL %.1f ms: %.2fx", disk->baseline / 1e3, cm / 1e3, cm / disk->baseline);
    rc = 0;
out:
    if (root[0] && strstr(root, "mc-bench-peers-") && !strstr(root, "XXXXXX")) mc_bench_remove_tree(root);
    free(cold);
    free(warm);
    free(all);
    free(first_cold);
    free(first_warm);
    peers_close(&p);
    return rc;
}

int mc_bench_peers(mc_bench *b, const char *name)
{
    if (b->info.kind != MC_DEVICE_CPU) {
        if (!noted_cl)
            printf("peers: they run on the CPU; this run measures the %s device, so none are added\n",
                   mc_device_kind_name(b->info.kind));
        noted_cl = true;
        return 0;
    }
    int (*fn)(mc_bench *) = !strcmp(name, "round-trip")       ? peers_round_trip
                            : !strcmp(name, "batching")       ? peers_batching
                            : !strcmp(name, "saxpy")          ? peers_saxpy
                            : !strcmp(name, "pipeline-cache") ? peers_pipeline_cache
                                                              : NULL;
    if (!fn) return 0;
    fprintf(stderr, "running %s against its peers...\n", name);
    return fn(b);
}

/* ---- the child processes ------------------------------------------------------------ */

static int child_idle(const char *which, double window_s)
{
    enum { BURST = 200 };
    if (!strcmp(which, "ours")) {
        mc_device *d = mc_cli_open_device("cpu", MC_TIME_LIMIT_NONE);
        if (!d) return 1;
        ours_ctx o = {0};
        o.pl = mc_cli_pipeline(d, "basic", "empty");
        int rc = 1;
        if (o.pl && mc_queue_create(d, NULL, &o.q) == MC_OK) {
            rc = 0;
            for (int i = 0; i < BURST && !rc; i++) rc = ours_round_trip(&o);
            double t0 = cpu_time_us();
            sleep_ms(window_s * 1e3);
            if (!rc) printf("%.3f\n", cpu_time_us() - t0);
        }
        mc_queue_release(o.q);
        mc_pipeline_release(o.pl);
        mc_device_release(d);
        return rc;
    }
    if (!strcmp(which, "opencl")) {
        char why[512];
        mc_peer_cl *c = mc_peer_cl_open(true, why, sizeof why);
        if (!c) {
            fprintf(stderr, "bench child: %s\n", why);
            return 1;
        }
        int rc = 0;
        for (int i = 0; i < BURST && !rc; i++) rc = mc_peer_cl_round_trip(c);
        double t0 = cpu_time_us();
        sleep_ms(window_s * 1e3);
        if (!rc) printf("%.3f\n", cpu_time_us() - t0);
        else fprintf(stderr, "bench child: %s\n", mc_peer_cl_error(c));
        mc_peer_cl_close(c);
        return rc ? 1 : 0;
    }
    if (!strcmp(which, "openmp")) {
        for (int i = 0; i < BURST; i++) mc_peer_omp_round_trip();
        double t0 = cpu_time_us();
        sleep_ms(window_s * 1e3);
        printf("%.3f\n", cpu_time_us() - t0);
        return 0;
    }
    return 2;
}

/* Builds variants 0..n-1 (cold: variant -1 first, into the empty cache)
 * and prints the microseconds of each. */
static int child_cl_build(int n, bool cold)
{
    char why[512];
    mc_peer_cl *c = mc_peer_cl_open(false, why, sizeof why);
    if (!c) {
        fprintf(stderr, "bench child: %s\n", why);
        return 1;
    }
    int rc = 0;
    for (int i = cold ? -1 : 0; i < n && !rc; i++) {
        double us = mc_peer_cl_build_us(c, i);
        if (us < 0) {
            fprintf(stderr, "bench child: %s\n", mc_peer_cl_error(c));
            rc = 1;
        } else {
            printf("%.3f\n", us);
        }
    }
    fflush(stdout);
    mc_peer_cl_close(c);
    return rc;
}

int mc_bench_peer_child(int argc, char **argv)
{
    /* argv[0] is "__peer-child" */
    if (argc == 4 && !strcmp(argv[1], "idle")) return child_idle(argv[2], atof(argv[3]));
    if (argc == 4 && !strcmp(argv[1], "cl-build") && (!strcmp(argv[3], "cold") || !strcmp(argv[3], "warm")))
        return child_cl_build(atoi(argv[2]), !strcmp(argv[3], "cold"));
    fprintf(stderr, "metal-compute bench __peer-child: internal use by bench --peers\n");
    return 2;
}
