/*
 * metal-compute run gray-scott --mpi: the same simulation across MPI ranks,
 * one device each (include/mc/mc_mpi.h, docs/SCALE.md).
 *
 * Every rank seeds the same field as the single-process run, runs the same
 * kernel file (examples/kernels/gray_scott.metal) on its slab with the local
 * height in the parameters, and rank 0 gathers the field and writes the PNG
 * with the single-process run's palette and encoder: the same bytes for any
 * number of ranks, slab sizes, halo depth and injected faults.
 */
#include "core/core.h"
#include "gray_scott_mpi.h"

#include <signal.h>
#include <stdlib.h>
#include <string.h>

static mc_status gsm_bind(void *user, mc_device *dev, uint32_t width, uint32_t local_height, mc_mpi_binding *b)
{
    mc_cli_gsm_params *p = user;
    b->pipeline = mc_cli_pipeline(dev, "gray_scott", "gray_scott_step");
    if (!b->pipeline) return MC_ERR_COMPILE;
    p->width = width;
    p->height = local_height; /* periodic within the slab; the halo absorbs the wrap */
    b->args[3].kind = MC_RUNNER_ARG_BYTES;
    b->args[3].bytes = p;
    b->args[3].len = sizeof *p;
    b->threads_per_threadgroup = (mc_size3){16, 16, 1};
    return MC_OK;
}

static void gsm_unbind(void *user, mc_mpi_binding *b)
{
    (void)user;
    mc_pipeline_release(b->pipeline);
    b->pipeline = NULL;
}

void mc_cli_gray_scott_mpi_desc(mc_mpi_desc *d, mc_cli_gsm_params *params)
{
    /* Karl Sims's coral, as the single-process run (tools/cmd_run.c). */
    *params = (mc_cli_gsm_params){0, 0, 1.0f, 0.5f, 0.0545f, 0.062f, 1.0f, 0u};
    d->cell_bytes = 2 * sizeof(float);
    d->bind = gsm_bind;
    d->unbind = gsm_unbind;
    d->user = params;
}

static void usage(void)
{
    printf(
        "usage: mpirun -n N metal-compute run gray-scott --mpi [--device D] [--size N] [--steps N]\n"
        "           [--budget-ms MS] [--halo H] [--slab-rows R0,R1,...] [--checkpoint-chunks C]\n"
        "           [--inject-faults SPEC] [--inject-faults-rank R:SPEC ...] [--checkpoint-dir DIR [--resume]]\n"
        "           [--overlap | --no-overlap] [--ranks-x P] [--out FILE.png]\n\n"
        "Runs gray-scott on every rank's device, the grid cut into slabs of rows with halos H steps\n"
        "deep, exchanged between chunks; every rank rolls back together after a fault on any.\n"
        "Writes the same PNG as the single-process run.\n\n"
        "  --device D              cpu, cuda, metal: ranks of a host take devices by local rank\n"
        "  --size N, --steps N     as the single-process run (default 256, 10000)\n"
        "  --budget-ms MS          device time per command buffer (default 25)\n"
        "  --halo H                steps per chunk without communication (default: from the measured\n"
        "                          step and exchange cost)\n"
        "  --slab-rows R0,R1,...   rows of each rank, summing to --size (default: an even split)\n"
        "  --checkpoint-chunks C   chunks between coordinated checkpoints (default 16)\n"
        "  --inject-faults SPEC    every rank: its Nth command buffer fails with KIND (KIND@N,...)\n"
        "  --inject-faults-rank R:SPEC  rank R only; repeatable\n"
        "  --checkpoint-dir DIR    also write every checkpoint to DIR/rank-R-of-N (atomically; the last two)\n"
        "  --resume                start from the newest step every rank holds in DIR (none: from the start)\n"
        "  --ranks-x P             2-D blocks: P columns by N/P rows of blocks, halos on four sides\n"
        "                          (exchanged between chunks; default: slabs of whole rows)\n"
        "  --overlap               compute the boundary bands first and send them while the slab computes\n"
        "  --no-overlap            exchange the halos between chunks, the device idle\n"
        "                          (default: whichever the cost model, from figures measured at the\n"
        "                          start, says is faster)\n"
        "  --kill-at-step R:S      test hook: rank R dies by SIGKILL at the first chunk boundary at or past S\n"
        "  --out FILE.png          written by rank 0 (default gray-scott.png)\n");
}

static bool parse_u32(const char *s, uint32_t lo, uint32_t hi, uint32_t *out)
{
    char *end;
    unsigned long long v = strtoull(s, &end, 10);
    if (!*s || *end || v < lo || v > hi) return false;
    *out = (uint32_t)v;
    return true;
}

/* "R0,R1,..." with exactly n entries. */
static bool parse_rows(const char *s, int n, uint32_t *rows)
{
    const char *p = s;
    for (int i = 0; i < n; i++) {
        char *end;
        unsigned long long v = strtoull(p, &end, 10);
        if (end == p || v > 16384) return false;
        rows[i] = (uint32_t)v;
        if (i + 1 < n) {
            if (*end != ',') return false;
            p = end + 1;
        } else if (*end) {
            return false;
        }
    }
    return true;
}

typedef struct gsm_options {
    const char *device, *out, *faults, *rows, *ckpt_dir;
    uint32_t size, steps, halo, ckpt, ranks_x;
    double budget;
    bool resume;
    mc_mpi_overlap overlap;
    int kill_rank; /* -1: none */
    uint32_t kill_step;
    bool bar; /* rank 0 on a terminal */
    int bar_len;
    double last_bar;
} gsm_options;

/* Rank 0 on a terminal shows the steps done, at most ten times a second.
 * The --kill-at-step test hook: this rank dies by SIGKILL, as a crash or an
 * operator's kill would, and mpirun then ends the others. */
static void gsm_progress(void *user, uint64_t step, uint64_t total)
{
    gsm_options *o = user;
    if (o->kill_step && step >= o->kill_step) raise(SIGKILL);
    if (!o->bar) return;
    double now = MPI_Wtime();
    if (step < total && now - o->last_bar < 0.1) return;
    o->last_bar = now;
    if (step >= total) {
        fprintf(stderr, "\r%*s\r", o->bar_len, "");
        return;
    }
    o->bar_len = fprintf(stderr, "\r%llu/%llu steps (%.0f%%) ", (unsigned long long)step, (unsigned long long)total,
                         100.0 * (double)step / (double)total);
    fflush(stderr);
}

/* Every rank parses the same argv; only rank 0 speaks. */
static int parse(int argc, char **argv, int rank, int size, gsm_options *o)
{
    *o = (gsm_options){.out = "gray-scott.png", .size = 256, .steps = 10000, .kill_rank = -1};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *bad = NULL;
        if (!strcmp(a, "--mpi")) {
        } else if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            if (rank == 0) usage();
            return 0;
        } else if (i + 1 < argc && !strcmp(a, "--device")) {
            o->device = argv[++i];
        } else if (i + 1 < argc && !strcmp(a, "--size")) {
            if (!parse_u32(argv[++i], 16, 16384, &o->size)) bad = "--size takes 16 to 16384";
        } else if (i + 1 < argc && !strcmp(a, "--steps")) {
            if (!parse_u32(argv[++i], 1, 2000000000u, &o->steps)) bad = "--steps takes 1 to 2000000000";
        } else if (i + 1 < argc && !strcmp(a, "--halo")) {
            if (!parse_u32(argv[++i], 1, 16384, &o->halo)) bad = "--halo takes 1 to 16384 steps";
        } else if (i + 1 < argc && !strcmp(a, "--checkpoint-chunks")) {
            if (!parse_u32(argv[++i], 1, 1000000, &o->ckpt)) bad = "--checkpoint-chunks takes 1 to 1000000";
        } else if (i + 1 < argc && !strcmp(a, "--budget-ms")) {
            char *end;
            o->budget = strtod(argv[++i], &end);
            if (*end || !(o->budget > 0 && o->budget <= 60000)) bad = "--budget-ms takes milliseconds above 0";
        } else if (i + 1 < argc && !strcmp(a, "--slab-rows")) {
            o->rows = argv[++i];
        } else if (i + 1 < argc && !strcmp(a, "--checkpoint-dir")) {
            o->ckpt_dir = argv[++i];
        } else if (!strcmp(a, "--resume")) {
            o->resume = true;
        } else if (i + 1 < argc && !strcmp(a, "--ranks-x")) {
            if (!parse_u32(argv[++i], 1, (uint32_t)size, &o->ranks_x) || size % (int)o->ranks_x)
                bad = "--ranks-x takes a divisor of the number of ranks";
        } else if (!strcmp(a, "--no-overlap")) {
            o->overlap = MC_MPI_OVERLAP_OFF;
        } else if (!strcmp(a, "--overlap")) {
            o->overlap = MC_MPI_OVERLAP_ON;
        } else if (i + 1 < argc && !strcmp(a, "--kill-at-step")) {
            const char *v = argv[++i];
            char *end;
            unsigned long r = strtoul(v, &end, 10);
            if (end == v || *end != ':' || !parse_u32(end + 1, 1, 2000000000u, &o->kill_step))
                bad = "--kill-at-step takes RANK:STEP";
            else if (r >= (unsigned long)size) bad = "--kill-at-step names a rank this job does not have";
            else o->kill_rank = (int)r;
        } else if (i + 1 < argc && !strcmp(a, "--out")) {
            o->out = argv[++i];
        } else if (i + 1 < argc && !strcmp(a, "--inject-faults")) {
            o->faults = argv[++i];
        } else if (i + 1 < argc && !strcmp(a, "--inject-faults-rank")) {
            const char *v = argv[++i];
            char *end;
            unsigned long r = strtoul(v, &end, 10);
            if (end == v || *end != ':' || !end[1]) bad = "--inject-faults-rank takes RANK:KIND@N,...";
            else if (r >= (unsigned long)size) bad = "--inject-faults-rank names a rank this job does not have";
            else if ((int)r == rank) o->faults = end + 1;
        } else {
            if (rank == 0) {
                fprintf(stderr, "metal-compute run: unknown or incomplete option '%s'\n", a);
                usage();
            }
            return 2;
        }
        if (bad) {
            if (rank == 0) fprintf(stderr, "metal-compute run: %s\n", bad);
            return 2;
        }
    }
    if (o->resume && !o->ckpt_dir) {
        if (rank == 0) fprintf(stderr, "metal-compute run: --resume needs --checkpoint-dir DIR\n");
        return 2;
    }
    return -1; /* go on */
}

static int run(int argc, char **argv, int rank, int size)
{
    gsm_options o;
    int rc = parse(argc, argv, rank, size, &o);
    if (rc >= 0) return rc;
    uint32_t *rows = NULL;
    if (o.rows) {
        rows = calloc((size_t)size, sizeof *rows);
        if (!rows) return mc_cli_fail("gray-scott", MC_ERR_NO_MEMORY);
        if (!parse_rows(o.rows, size, rows)) {
            if (rank == 0)
                fprintf(stderr, "metal-compute run: --slab-rows takes %d row counts (one per rank), comma separated\n",
                        size);
            free(rows);
            return 2;
        }
    }
    /* A long run should not end in "cannot write". */
    int unwritable = 0;
    if (rank == 0) {
        mc_status cs = mc__outfile_check(o.out);
        if (cs != MC_OK) unwritable = mc_cli_fail("--out", cs);
    }
    MPI_Bcast(&unwritable, 1, MPI_INT, 0, MPI_COMM_WORLD);
    if (unwritable) {
        free(rows);
        return 2;
    }
    float *seed = mc_cli_gray_scott_seed(o.size);
    mc_cli_gsm_params params;
    mc_mpi_desc d = {0};
    mc_cli_gray_scott_mpi_desc(&d, &params);
    d.device = o.device;
    d.width = d.height = o.size;
    d.initial = seed;
    d.slab_rows = rows;
    d.total_steps = o.steps;
    d.halo_steps = o.halo;
    d.budget_ms = o.budget;
    d.checkpoint_chunks = o.ckpt;
    d.inject_faults = o.faults;
    d.overlap = o.overlap;
    d.ranks_x = o.ranks_x;
    /* What makes two runs the same run; the runner adds the rank's slab. */
    char run_id[96];
    snprintf(run_id, sizeof run_id, "gray-scott --mpi v1 size %u steps %u ranks %d", o.size, o.steps, size);
    d.checkpoint_dir = o.ckpt_dir;
    d.resume = o.resume;
    d.run_params = run_id;
    d.run_params_len = strlen(run_id);
    if (o.kill_rank != rank) o.kill_step = 0;
    o.bar = rank == 0 && mc_cli_isatty(stderr);
    d.progress = gsm_progress;
    d.progress_user = &o;
    mc_mpi_runner *r = NULL;
    mc_status s = seed ? mc_mpi_runner_create(&d, &r) : MC_ERR_NO_MEMORY;
    free(rows);
    if (s != MC_OK) {
        /* Every rank got the status; the one whose input or device failed says why. */
        if (rank == 0 || (s != MC_ERR_INVALID_ARGUMENT && strncmp(mc_last_error(), "another rank", 12)))
            mc_cli_fail("gray-scott --mpi", s);
        free(seed);
        return s == MC_ERR_INVALID_ARGUMENT ? 2 : 1;
    }
    s = mc_mpi_runner_run(r);
    if (s != MC_OK) {
        if (rank == 0 || (s != MC_ERR_INVALID_ARGUMENT && strncmp(mc_last_error(), "another rank", 12)))
            mc_cli_fail("gray-scott --mpi", s);
        mc_mpi_runner_release(r);
        free(seed);
        return 1;
    }
    size_t cells = (size_t)o.size * o.size;
    float *field = rank == 0 ? seed : NULL; /* the seed's memory takes the result */
    s = mc_mpi_runner_gather(r, 0, field, cells * 2 * sizeof(float));
    mc_mpi_stats st;
    mc_mpi_runner_get_stats(r, &st);
    /* Totals over the ranks for the summary. */
    unsigned own = st.own_faults, own_all = 0;
    double ex[2] = {st.exchange_ms_mean, st.compute_ms_mean}, ex_max[2] = {0, 0};
    MPI_Reduce(&own, &own_all, 1, MPI_UNSIGNED, MPI_SUM, 0, MPI_COMM_WORLD);
    MPI_Reduce(ex, ex_max, 2, MPI_DOUBLE, MPI_MAX, 0, MPI_COMM_WORLD);
    rc = 0;
    if (s != MC_OK) {
        rc = mc_cli_fail("gathering the field", s);
    } else if (rank == 0) {
        uint8_t *rgb = malloc(cells * 3);
        if (!rgb) {
            rc = mc_cli_fail("gray-scott", MC_ERR_NO_MEMORY);
        } else {
            for (size_t i = 0; i < cells; i++) mc_cli_gray_scott_colour(field[2 * i + 1], rgb + 3 * i);
            rc = mc_cli_write_png(o.out, rgb, o.size, o.size);
            free(rgb);
        }
        if (rc == 0) {
            printf("gray-scott %ux%u on %d ranks (%s:%d on rank 0, %s)\n", o.size, o.size, size,
                   mc_device_kind_name(st.device.kind), st.device.index, st.device.name);
            if (o.ranks_x > 1)
                printf("  blocks       %u x %d (rank 0: %u x %u cells)\n", o.ranks_x, size / (int)o.ranks_x, st.cols,
                       st.rows);
            printf("  steps        %llu in %llu chunks of up to %u steps (halo %u rows, exchange %s)\n",
                   (unsigned long long)st.steps, (unsigned long long)st.chunks, st.halo_steps, st.halo_rows,
                   st.overlapped ? "overlapped with compute" : "between chunks");
            printf("  per chunk    exchange %.3f ms (%llu bytes each way), compute %.3f ms (slowest rank)\n", ex_max[0],
                   (unsigned long long)st.halo_bytes_per_chunk / 2, ex_max[1]);
            printf("  model        %.4f ms per step between chunks, %.4f overlapped (at the start, slowest rank)\n",
                   st.model_step_ms[0], st.model_step_ms[1]);
            printf("  recoveries   %u (faults on the ranks: %u)\n", st.recoveries, own_all);
            printf("  checkpoints  %llu", (unsigned long long)st.checkpoints);
            if (st.resumed_from) printf(" (resumed from step %llu)", (unsigned long long)st.resumed_from);
            printf("\n");
            printf("  time         %.2f s\n", st.elapsed_ms / 1e3);
            printf("  image        %s\n", o.out);
        }
    }
    mc_mpi_runner_release(r);
    free(seed);
    return rc;
}

int mc_cli_mpi_job(int argc, char **argv, int (*job)(int argc, char **argv, int rank, int size))
{
    int init = 0, provided = 0;
    MPI_Initialized(&init);
    if (!init && MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided) != MPI_SUCCESS) {
        fprintf(stderr, "metal-compute run: MPI_Init failed\n");
        return 1;
    }
    int rank = 0, size = 1;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    int rc = job(argc, argv, rank, size);
    /* The exit status of every rank is the worst of them (mpirun reports
     * the first non-zero one anyway). */
    int worst = rc;
    MPI_Allreduce(&rc, &worst, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    if (!init) MPI_Finalize();
    return worst;
}

int mc_cli_run_gray_scott_mpi(int argc, char **argv)
{
    return mc_cli_mpi_job(argc, argv, run);
}
