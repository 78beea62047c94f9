/*
 * metal-compute bench: each benchmark measures ours and its baseline side by
 * side in one run, and reports medians, spreads and the ratio (how many
 * times better ours is: baseline/ours for times, ours/baseline for rates).
 */
#include "bench.h"
#include "raw.h"
#include "core/core.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static const struct {
    const char *name;
    mc_bench_fn fn;
    const char *what;
} benches[] = {
    {"round-trip", mc_bench_round_trip, "empty dispatch, commit to completion, vs the device's rawest path"},
    {"batching", mc_bench_batching, "50 small passes in one command buffer vs 50 command buffers"},
    {"saxpy", mc_bench_saxpy, "a bandwidth-bound kernel vs the raw driver (CUDA) or an OpenMP loop (CPU)"},
    {"stream", mc_bench_stream, "a stream with 1-4 slots vs fill, commit, wait per item (FIR blocks)"},
    {"pipeline-cache", mc_bench_pipeline_cache, "cold compile vs warm from memory vs warm from disk in a new process"},
    {"runner", mc_bench_runner, "gray-scott through the runner vs one uninterrupted command buffer"},
    {"command-list", mc_bench_command_list, "50 dispatches from a recorded command list vs encoded each time"},
    {"msl", mc_bench_msl, "gray-scott and saxpy written in MSL vs their hand-written C twins (CPU device)"},
};

double mc_bench_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

double mc_bench_percentile(double *v, int n, double p)
{
    if (n <= 0) return 0;
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    double idx = p * (n - 1);
    int lo = (int)idx;
    int hi = lo + 1 < n ? lo + 1 : lo;
    return v[lo] + (v[hi] - v[lo]) * (idx - lo);
}

double mc_bench_median(double *v, int n)
{
    return mc_bench_percentile(v, n, 0.5);
}

double mc_bench_iqr(double *v, int n)
{
    return mc_bench_percentile(v, n, 0.75) - mc_bench_percentile(v, n, 0.25);
}

void mc_bench_add(mc_bench *b, const char *name, const char *metric, const char *unit, double ours, double ours_spread,
                  double baseline, double baseline_spread, const char *baseline_name, bool higher_is_better)
{
    if (b->nrows >= (int)(sizeof b->rows / sizeof b->rows[0])) return;
    mc_bench_row *r = &b->rows[b->nrows++];
    snprintf(r->name, sizeof r->name, "%s", name);
    snprintf(r->metric, sizeof r->metric, "%s", metric);
    snprintf(r->unit, sizeof r->unit, "%s", unit);
    r->ours = ours;
    r->ours_spread = ours_spread;
    r->baseline = baseline;
    r->baseline_spread = baseline_spread;
    snprintf(r->baseline_name, sizeof r->baseline_name, "%s", baseline_name);
    r->higher_is_better = higher_is_better;
}

static double ratio(const mc_bench_row *r)
{
    if (r->ours <= 0 || r->baseline <= 0) return 0;
    return r->higher_is_better ? r->ours / r->baseline : r->baseline / r->ours;
}

int mc_bench_round_trip_once(mc_queue *q, mc_pipeline *empty)
{
    mc_cmdbuf *cb;
    mc_pass *p;
    if (mc_cmdbuf_create(q, NULL, &cb) != MC_OK) return -1;
    int rc = -1;
    if (mc_cmdbuf_begin_pass(cb, NULL, &p) == MC_OK && mc_pass_set_pipeline(p, empty) == MC_OK &&
        mc_pass_dispatch(p, (mc_size3){1, 1, 1}, (mc_size3){1, 1, 1}) == MC_OK && mc_pass_end(p) == MC_OK &&
        mc_cmdbuf_commit(cb) == MC_OK && mc_cmdbuf_wait(cb, MC_WAIT_FOREVER) == MC_OK &&
        mc_cmdbuf_status(cb, NULL) == MC_OK)
        rc = 0;
    mc_cmdbuf_release(cb);
    return rc;
}

int mc_bench_round_trip(mc_bench *b)
{
    mc_pipeline *empty = mc_cli_pipeline(b->dev, "basic", "empty");
    if (!empty) return 1;
    mc_queue *q;
    if (mc_queue_create(b->dev, NULL, &q) != MC_OK) return mc_cli_fail("queue", MC_ERR_INTERNAL);
    int n = b->reps * 10;
    double *ours = calloc((size_t)n, sizeof *ours), *raw = calloc((size_t)n, sizeof *raw);
    mc_raw *r = mc_raw_open(b->info.kind, b->info.index);
    int rc = 0;
    if (!ours || !raw || !r) {
        fprintf(stderr, "bench round-trip: %s\n", r ? "out of memory" : mc_raw_error());
        rc = 1;
        goto out;
    }
    for (int i = 0; i < n / 10 + 10; i++) { /* warm both paths */
        mc_bench_round_trip_once(q, empty);
        mc_raw_round_trip(r);
    }
    /* Alternate blocks, so drift hits both sides alike while each side
     * still measures back-to-back round trips (its workers stay awake). */
    enum { BLOCK = 50 };
    for (int i = 0; i < n; i += BLOCK) {
        int m = n - i < BLOCK ? n - i : BLOCK;
        for (int k = 0; k < m; k++) {
            double t0 = mc_bench_now_us();
            if (mc_bench_round_trip_once(q, empty)) {
                rc = mc_cli_fail("round trip", MC_ERR_INTERNAL);
                goto out;
            }
            ours[i + k] = mc_bench_now_us() - t0;
        }
        for (int k = 0; k < m; k++) {
            double t0 = mc_bench_now_us();
            mc_raw_round_trip(r);
            raw[i + k] = mc_bench_now_us() - t0;
        }
    }
    double om = mc_bench_median(ours, n), oi = mc_bench_iqr(ours, n), o99 = mc_bench_percentile(ours, n, 0.99);
    double rm = mc_bench_median(raw, n), ri = mc_bench_iqr(raw, n), r99 = mc_bench_percentile(raw, n, 0.99);
    mc_bench_add(b, "round-trip", "empty dispatch round trip, median", "us", om, oi, rm, ri, mc_raw_name(r), false);
    mc_bench_add(b, "round-trip", "empty dispatch round trip, p99", "us", o99, 0, r99, 0, mc_raw_name(r), false);
out:
    mc_raw_close(r);
    free(ours);
    free(raw);
    mc_queue_release(q);
    mc_pipeline_release(empty);
    return rc;
}

/* 50 small passes: the F136 experiment (6.4x on M1 when split). */
#define BATCH_PASSES 50
#define BATCH_ELEMS 4096u

mc_status mc_bench_commit_wait(mc_cmdbuf *cb, mc_status s)
{
    if (s == MC_OK) s = mc_cmdbuf_commit(cb);
    if (s == MC_OK) s = mc_cmdbuf_wait(cb, MC_WAIT_FOREVER);
    if (s == MC_OK) s = mc_cmdbuf_status(cb, NULL);
    return s;
}

mc_status mc_bench_add_one_pass(mc_cmdbuf *cb, mc_pipeline *pl, mc_buffer *buf, uint32_t n, uint32_t groups)
{
    mc_pass *p;
    mc_status s = mc_cmdbuf_begin_pass(cb, NULL, &p);
    if (s == MC_OK) s = mc_pass_set_pipeline(p, pl);
    if (s == MC_OK) s = mc_pass_set_buffer(p, 0, buf, 0);
    if (s == MC_OK) s = mc_pass_set_bytes(p, 1, &n, sizeof n);
    if (s == MC_OK) s = mc_pass_dispatch(p, (mc_size3){groups, 1, 1}, (mc_size3){256, 1, 1});
    if (s == MC_OK) s = mc_pass_end(p);
    return s;
}

int mc_bench_add_one_passes(mc_queue *q, mc_pipeline *pl, mc_buffer *buf, uint32_t n, int passes, int per_cb)
{
    if (per_cb < 1) return -1;
    for (int done = 0; done < passes;) {
        mc_cmdbuf *cb;
        if (mc_cmdbuf_create(q, NULL, &cb) != MC_OK) return -1;
        mc_status s = MC_OK;
        for (int k = 0; k < per_cb && s == MC_OK; k++, done++) s = mc_bench_add_one_pass(cb, pl, buf, n, n / 256);
        s = mc_bench_commit_wait(cb, s);
        mc_cmdbuf_release(cb);
        if (s != MC_OK) return -1;
    }
    return 0;
}

static int run_passes(mc_queue *q, mc_pipeline *pl, mc_buffer *buf, int per_cb)
{
    return mc_bench_add_one_passes(q, pl, buf, BATCH_ELEMS, BATCH_PASSES, per_cb);
}

/* One command buffer of BATCH_PASSES passes whose last pass has a grid not
 * seen in the last `variant` command buffers: a shape a device that replays
 * repeated command buffers (the CUDA device) has not seen, so this is the
 * plain first-sighting path. */
static int run_passes_unseen(mc_queue *q, mc_pipeline *pl, mc_buffer *buf, int variant)
{
    uint32_t n = BATCH_ELEMS;
    mc_cmdbuf *cb;
    if (mc_cmdbuf_create(q, NULL, &cb) != MC_OK) return -1;
    mc_status s = MC_OK;
    for (int k = 0; k < BATCH_PASSES && s == MC_OK; k++)
        s = mc_bench_add_one_pass(cb, pl, buf, n, k + 1 < BATCH_PASSES ? n / 256 : n / 256 - (uint32_t)(variant % 15));
    s = mc_bench_commit_wait(cb, s);
    mc_cmdbuf_release(cb);
    return s == MC_OK ? 0 : -1;
}

int mc_bench_batching(mc_bench *b)
{
    mc_pipeline *pl = mc_cli_pipeline(b->dev, "basic", "add_one");
    if (!pl) return 1;
    mc_queue *q = NULL;
    mc_buffer *buf = NULL;
    mc_buffer_desc bd = {BATCH_ELEMS * 4, MC_STORAGE_PRIVATE, "batch", NULL};
    int n = b->reps, rc = 0;
    double *one = calloc((size_t)n, sizeof *one), *split = calloc((size_t)n, sizeof *split);
    if (!one || !split || mc_queue_create(b->dev, NULL, &q) != MC_OK || mc_buffer_create(b->dev, &bd, &buf) != MC_OK) {
        rc = mc_cli_fail("batching setup", MC_ERR_NO_MEMORY);
        goto out;
    }
    for (int i = 0; i < 3; i++)
        if (run_passes(q, pl, buf, BATCH_PASSES) || run_passes(q, pl, buf, 1)) {
            rc = mc_cli_fail("batching", MC_ERR_INTERNAL);
            goto out;
        }
    for (int i = 0; i < n; i++) {
        double t0 = mc_bench_now_us();
        run_passes(q, pl, buf, BATCH_PASSES);
        double t1 = mc_bench_now_us();
        run_passes(q, pl, buf, 1);
        double t2 = mc_bench_now_us();
        one[i] = t1 - t0;
        split[i] = t2 - t1;
    }
    /* Every pass adds one to every element: the total says nothing was lost. */
    uint32_t first;
    mc_buffer_read(buf, 0, &first, sizeof first);
    uint32_t want = (uint32_t)(3 + n) * 2 * BATCH_PASSES;
    if (first != want) {
        fprintf(stderr, "bench batching: wrong result %u, want %u\n", first, want);
        rc = 1;
        goto out;
    }
    mc_bench_add(b, "batching", "50 passes, one command buffer vs 50 committed+waited", "us", mc_bench_median(one, n),
                 mc_bench_iqr(one, n), mc_bench_median(split, n), mc_bench_iqr(split, n), "50 command buffers", false);
    /* Where the device has a raw driver path, put ours beside it too. */
    mc_raw *r = mc_raw_open(b->info.kind, b->info.index);
    if (r && mc_raw_batch(r, BATCH_PASSES, 2) == 0) {
        static const char *const modes[] = {"raw: wait after each", "raw: back to back", "raw: one graph"};
        double *raw = calloc((size_t)n, sizeof *raw);
        for (int mode = 0; raw && mode < 3; mode++) {
            for (int i = 0; i < n; i++) {
                double t0 = mc_bench_now_us();
                run_passes(q, pl, buf, BATCH_PASSES);
                double t1 = mc_bench_now_us();
                mc_raw_batch(r, BATCH_PASSES, mode);
                double t2 = mc_bench_now_us();
                one[i] = t1 - t0;
                raw[i] = t2 - t1;
            }
            mc_bench_add(b, "batching", "50 passes in one command buffer vs the raw driver", "us",
                         mc_bench_median(one, n), mc_bench_iqr(one, n), mc_bench_median(raw, n), mc_bench_iqr(raw, n),
                         modes[mode], false);
        }
        /* The same, each command buffer of a shape not seen lately (15
         * variants in turn: more than a device remembers). */
        for (int i = 0; raw && i < n; i++) {
            double t0 = mc_bench_now_us();
            run_passes_unseen(q, pl, buf, i);
            double t1 = mc_bench_now_us();
            mc_raw_batch(r, BATCH_PASSES, 1);
            double t2 = mc_bench_now_us();
            one[i] = t1 - t0;
            raw[i] = t2 - t1;
        }
        if (raw)
            mc_bench_add(b, "batching", "50 passes, a command buffer not seen before, vs the raw driver", "us",
                         mc_bench_median(one, n), mc_bench_iqr(one, n), mc_bench_median(raw, n), mc_bench_iqr(raw, n),
                         modes[1], false);
        free(raw);
    }
    mc_raw_close(r);
out:
    free(one);
    free(split);
    mc_buffer_release(buf);
    mc_queue_release(q);
    mc_pipeline_release(pl);
    return rc;
}

/* ---- output ----------------------------------------------------------- */

/* "median ± spread unit"; the spread is left out where a row has none. */
static void format_value(char *out, size_t cap, double v, double spread, const char *unit)
{
    int digits = v != 0 && fabs(v) < 0.1 ? 3 : 2;
    if (spread > 0) snprintf(out, cap, "%.*f \u00b1 %.*f %s", digits, v, digits, spread, unit);
    else snprintf(out, cap, "%.*f %s", digits, v, unit);
}

static void print_table(const mc_bench *b)
{
    /* ours and baseline: median ± interquartile range over repetitions */
    printf("\n%-16s %-52s %24s %24s %-22s %8s\n", "benchmark", "metric", "ours (median \u00b1 IQR)",
           "baseline (median \u00b1 IQR)", "baseline is", "ratio");
    for (int i = 0; i < b->nrows; i++) {
        const mc_bench_row *r = &b->rows[i];
        char o[64], base[64];
        format_value(o, sizeof o, r->ours, r->ours_spread, r->unit);
        format_value(base, sizeof base, r->baseline, r->baseline_spread, r->unit);
        /* "\u00b1" is two bytes in one column: pad by bytes, one more */
        int wo = 24 + (strstr(o, "\u00b1") != NULL), wb = 24 + (strstr(base, "\u00b1") != NULL);
        printf("%-16s %-52s %*s %*s %-22s %7.2fx\n", r->name, r->metric, wo, o, wb, base, r->baseline_name, ratio(r));
    }
    printf("(ratio: how many times better ours is; above 1 means ours is better)\n");
}

static void json_str(FILE *f, const char *s)
{
    fputc('"', f);
    for (; *s; s++) {
        if (*s == '"' || *s == '\\') fprintf(f, "\\%c", *s);
        else if ((unsigned char)*s < 0x20) fprintf(f, "\\u%04x", *s);
        else fputc(*s, f);
    }
    fputc('"', f);
}

static int write_json(const mc_bench *b, const char *path)
{
    /* beside the target, fsync, rename: a failed write keeps the old file */
    mc__outfile out;
    mc_status s = mc__outfile_open(path, &out);
    if (s != MC_OK) return mc_cli_fail("--json", s);
    FILE *f = out.f;
    fprintf(f, "{\"device\": ");
    json_str(f, b->info.name);
    fprintf(f, ", \"device_kind\": \"%s\", \"benchmarks\": [", mc_device_kind_name(b->info.kind));
    for (int i = 0; i < b->nrows; i++) {
        const mc_bench_row *r = &b->rows[i];
        fprintf(f, "%s\n  {\"name\": ", i ? "," : "");
        json_str(f, r->name);
        fprintf(f, ", \"metric\": ");
        json_str(f, r->metric);
        fprintf(f, ", \"unit\": ");
        json_str(f, r->unit);
        fprintf(f, ", \"ours\": %.6g, \"baseline\": %.6g, \"baseline_name\": ", r->ours, r->baseline);
        json_str(f, r->baseline_name);
        fprintf(f, ", \"ratio\": %.6g, \"ours_spread\": %.6g, \"baseline_spread\": %.6g}", ratio(r), r->ours_spread,
                r->baseline_spread);
    }
    fprintf(f, "\n]}\n");
    s = mc__outfile_commit(&out);
    return s == MC_OK ? 0 : mc_cli_fail("--json", s);
}

static void usage(void)
{
    printf(
        "usage: metal-compute bench [--device D] [--only NAME[,NAME]] [--json FILE] [--svg FILE] [--reps N]\n"
        "                          [--quick] [--peers]\n\n"
        "  --peers     also run round-trip, batching, saxpy and pipeline-cache through OpenCL (PoCL) and\n"
        "              OpenMP on the same machine, as rows of their own (CPU device; OpenCL where installed)\n"
        "  --svg FILE  draw the ratios as a bar chart (SVG)\n\n"
        "benchmarks:\n");
    for (size_t i = 0; i < sizeof benches / sizeof benches[0]; i++)
        printf("  %-16s %s\n", benches[i].name, benches[i].what);
}

static bool selected(const char *only, const char *name)
{
    if (!only) return true;
    size_t n = strlen(name);
    for (const char *p = only; *p;) {
        size_t len = strcspn(p, ",");
        if (len == n && !strncmp(p, name, n)) return true;
        p += len;
        if (*p == ',') p++;
    }
    return false;
}

int mc_cli_bench(int argc, char **argv)
{
    const char *device = NULL, *only = NULL, *json = NULL, *svg = NULL;
    if (argc > 1 && !strcmp(argv[1], "__peer-child")) return mc_bench_peer_child(argc - 1, argv + 1);
#ifdef MC_HAVE_MPI
    if (argc > 1 && !strcmp(argv[1], "--mpi")) return mc_cli_bench_mpi(argc, argv); /* bench_mpi.c */
#endif
    mc_bench *b = calloc(1, sizeof *b);
    if (!b) return 1;
    b->reps = 200;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage();
            free(b);
            return 0;
        } else if (!strcmp(a, "--quick")) {
            b->quick = true;
            b->reps = 10;
        } else if (!strcmp(a, "--peers")) {
            b->peers = true;
        } else if (i + 1 < argc && !strcmp(a, "--device")) {
            device = argv[++i];
        } else if (i + 1 < argc && !strcmp(a, "--only")) {
            only = argv[++i];
        } else if (i + 1 < argc && !strcmp(a, "--json")) {
            json = argv[++i];
        } else if (i + 1 < argc && !strcmp(a, "--svg")) {
            svg = argv[++i];
        } else if (i + 1 < argc && !strcmp(a, "--reps")) {
            b->reps = atoi(argv[++i]);
            if (b->reps < 1) {
                fprintf(stderr, "metal-compute bench: --reps needs a number >= 1\n");
                free(b);
                return 2;
            }
        } else {
            fprintf(stderr, "metal-compute bench: unknown or incomplete option '%s'\n", a);
            usage();
            free(b);
            return 2;
        }
    }
    if (only) {
        for (const char *p = only; *p;) {
            size_t len = strcspn(p, ","), k;
            for (k = 0; k < sizeof benches / sizeof benches[0]; k++)
                if (strlen(benches[k].name) == len && !strncmp(p, benches[k].name, len)) break;
            if (k == sizeof benches / sizeof benches[0]) {
                fprintf(stderr, "metal-compute bench: no benchmark named '%.*s'\n", (int)len, p);
                free(b);
                return 2;
            }
            p += len;
            if (*p == ',') p++;
        }
    }
    /* A typo in an output path is found before the benchmarks run. */
    const char *outs[2][2] = {{"--json", json}, {"--svg", svg}};
    for (int i = 0; i < 2; i++) {
        mc_status cs = outs[i][1] ? mc__outfile_check(outs[i][1]) : MC_OK;
        if (cs != MC_OK) {
            mc_cli_fail(outs[i][0], cs);
            free(b);
            return 2;
        }
    }
    /* Benchmarks measure the runtime, not the watchdog: no limit. */
    b->dev = mc_cli_open_device(device, MC_TIME_LIMIT_NONE);
    if (!b->dev) {
        free(b);
        return 1;
    }
    mc_device_get_info(b->dev, &b->info);
    printf("metal-compute bench on %s:%d (%s), %d repetitions\n", mc_device_kind_name(b->info.kind), b->info.index,
           b->info.name, b->reps);
    int rc = 0;
    for (size_t i = 0; i < sizeof benches / sizeof benches[0]; i++) {
        if (!selected(only, benches[i].name)) continue;
        fprintf(stderr, "running %s...\n", benches[i].name);
        if (benches[i].fn(b)) {
            fprintf(stderr, "metal-compute bench: %s failed\n", benches[i].name);
            rc = 1;
        } else if (b->peers && mc_bench_peers(b, benches[i].name)) {
            fprintf(stderr, "metal-compute bench: %s against its peers failed\n", benches[i].name);
            rc = 1;
        }
    }
    print_table(b);
    if (json && write_json(b, json)) rc = 1;
    if (svg && mc_bench_write_svg(b, svg)) rc = 1;
    mc_device_release(b->dev);
    free(b);
    return rc;
}
