/*
 * metal-compute bench --mpi, under mpirun: the distributed runner on this
 * job's N ranks against one rank (rank 0 alone, MPI_COMM_SELF) in the
 * same job, one device per rank (docs/SCALE.md).
 *
 *  - strong scaling: one grid, N slabs vs one; the ratio is the speedup.
 *  - weak scaling: a fixed slab per rank (grid height N x the slab) vs one
 *    slab on one rank; the ratio is the efficiency (1 = perfect).
 *  - the halo exchange of a chunk (device copies + MPI) vs a bare
 *    MPI_Sendrecv pair of the same bytes.
 *  - each of those with the exchange overlapped with compute (the
 *    boundary bands first, sent while the slab computes) and between
 *    chunks (--no-overlap), side by side, at the same H.
 * Times are wall clock of mc_mpi_runner_run (compiling and measuring at
 * create are left out), the slowest rank's, median of --reps runs.
 */
#include "bench.h"
#include "gray_scott_mpi.h"

#include <stdlib.h>
#include <string.h>

typedef struct bm_opts {
    const char *device;
    uint32_t strong, weak, steps, halo, threads, ranks_x;
    int reps;
    bool only_one; /* --no-overlap: the between-chunks rows only */
} bm_opts;

/* One run on comm: ms per step, and the exchange per chunk (slowest rank). */
static int bm_run(MPI_Comm comm, const bm_opts *o, mc_mpi_overlap overlap, uint32_t halo, uint32_t width,
                  uint32_t height, double *ms_step, mc_mpi_stats *st)
{
    float *seed = malloc((size_t)width * height * 2 * sizeof *seed);
    float *tile = mc_cli_gray_scott_seed(width);
    mc_status s = seed && tile ? MC_OK : MC_ERR_NO_MEMORY;
    /* The square seed repeated down the taller grids of weak scaling. */
    for (uint32_t y = 0; s == MC_OK && y < height; y++)
        memcpy(seed + (size_t)y * width * 2, tile + (size_t)(y % width) * width * 2, (size_t)width * 2 * sizeof *seed);
    free(tile);
    mc_cli_gsm_params params;
    mc_mpi_desc d = {0};
    mc_cli_gray_scott_mpi_desc(&d, &params);
    d.comm = comm;
    d.device = o->device;
    d.time_limit_ms = MC_TIME_LIMIT_NONE;
    d.cpu_threads = o->threads;
    d.width = width;
    d.height = height;
    d.initial = seed;
    d.total_steps = o->steps;
    d.halo_steps = halo;
    d.overlap = overlap;
    int n = 1;
    MPI_Comm_size(comm, &n);
    d.ranks_x = n > 1 ? o->ranks_x : 0; /* rank 0 alone: one slab */
    mc_mpi_runner *r = NULL;
    if (s == MC_OK) s = mc_mpi_runner_create(&d, &r);
    double *t = calloc((size_t)o->reps, sizeof *t);
    for (int i = 0; s == MC_OK && i < o->reps; i++) {
        MPI_Barrier(comm);
        double t0 = mc_bench_now_us();
        /* Each repetition runs from where the last ended: the same work. */
        if (i) {
            mc_mpi_runner_release(r);
            r = NULL;
            s = mc_mpi_runner_create(&d, &r);
            MPI_Barrier(comm);
            t0 = mc_bench_now_us();
        }
        if (s == MC_OK) s = mc_mpi_runner_run(r);
        double mine = (mc_bench_now_us() - t0) / 1e3, worst = 0;
        MPI_Allreduce(&mine, &worst, 1, MPI_DOUBLE, MPI_MAX, comm);
        t[i] = worst / o->steps;
    }
    if (s == MC_OK) {
        *ms_step = mc_bench_median(t, o->reps);
        mc_mpi_runner_get_stats(r, st);
        double ex[2] = {st->exchange_ms_mean, st->exchange_wait_ms_mean}, worst_ex[2];
        MPI_Allreduce(ex, worst_ex, 2, MPI_DOUBLE, MPI_MAX, comm);
        st->exchange_ms_mean = worst_ex[0];
        st->exchange_wait_ms_mean = worst_ex[1];
    } else {
        mc_cli_fail("bench --mpi", s);
    }
    free(t);
    mc_mpi_runner_release(r);
    free(seed);
    return s == MC_OK ? 0 : 1;
}

/* Both directions of a chunk's exchange through bare MPI_Sendrecv: rows up
 * then rows down, as the runner moves them. Median over 50, slowest rank. */
static double bm_sendrecv_ms(size_t bytes)
{
    int rank, size;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    int up = (rank + size - 1) % size, down = (rank + 1) % size;
    char *a = calloc(1, bytes), *b = calloc(1, bytes);
    double t[50];
    for (int i = 0; i < 50; i++) {
        MPI_Barrier(MPI_COMM_WORLD);
        double t0 = mc_bench_now_us();
        MPI_Sendrecv(a, (int)bytes, MPI_BYTE, up, 0, b, (int)bytes, MPI_BYTE, down, 0, MPI_COMM_WORLD,
                     MPI_STATUS_IGNORE);
        MPI_Sendrecv(a, (int)bytes, MPI_BYTE, down, 1, b, (int)bytes, MPI_BYTE, up, 1, MPI_COMM_WORLD,
                     MPI_STATUS_IGNORE);
        t[i] = (mc_bench_now_us() - t0) / 1e3;
    }
    free(a);
    free(b);
    double mine = mc_bench_median(t, 50), worst = 0;
    MPI_Allreduce(&mine, &worst, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    return worst;
}

static void bm_usage(void)
{
    printf(
        "usage: mpirun -n N metal-compute bench --mpi [--quick] [--device D] [--strong SIDE] [--weak SIDE]\n"
        "                                         [--steps S] [--halo H] [--threads T] [--reps R] [--no-overlap]\n\n"
        "  --strong SIDE   grid of SIDE x SIDE cells cut into N slabs (default 1024; --quick 256)\n"
        "  --weak SIDE     SIDE x SIDE cells per rank, grid SIDE x N*SIDE (default 512; --quick 256)\n"
        "  --steps S       steps per run (default 200; --quick 60)\n"
        "  --halo H        halo depth in steps (default: chosen by the runner)\n"
        "  --threads T     CPU device workers per rank (default 1: one fixed-size device per rank)\n"
        "  --reps R        runs per figure, median (default 3; --quick 1)\n"
        "  --no-overlap    only the exchange between chunks (default: overlapped and between, side by side)\n"
        "  --ranks-x P     2-D blocks, P columns of them (between chunks only; default: slabs)\n");
}

static int bm_parse(int argc, char **argv, bm_opts *o)
{
    *o = (bm_opts){.strong = 1024, .weak = 512, .steps = 200, .threads = 1, .reps = 3};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        uint32_t *u = NULL;
        if (!strcmp(a, "--mpi")) continue;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            bm_usage();
            return 0;
        } else if (!strcmp(a, "--quick")) {
            o->strong = 256;
            o->weak = 256;
            o->steps = 60;
            o->reps = 1;
            continue;
        } else if (!strcmp(a, "--no-overlap")) {
            o->only_one = true;
            continue;
        } else if (i + 1 < argc && !strcmp(a, "--device")) {
            o->device = argv[++i];
            continue;
        } else if (i + 1 < argc && !strcmp(a, "--reps")) {
            o->reps = atoi(argv[++i]);
            if (o->reps >= 1 && o->reps <= 100) continue;
        } else if (i + 1 < argc && !strcmp(a, "--strong")) {
            u = &o->strong;
        } else if (i + 1 < argc && !strcmp(a, "--weak")) {
            u = &o->weak;
        } else if (i + 1 < argc && !strcmp(a, "--steps")) {
            u = &o->steps;
        } else if (i + 1 < argc && !strcmp(a, "--halo")) {
            u = &o->halo;
        } else if (i + 1 < argc && !strcmp(a, "--threads")) {
            u = &o->threads;
        } else if (i + 1 < argc && !strcmp(a, "--ranks-x")) {
            u = &o->ranks_x;
        }
        if (u) {
            char *end;
            unsigned long v = strtoul(argv[++i], &end, 10);
            if (!*end && v >= 1 && v <= 65536) {
                *u = (uint32_t)v;
                continue;
            }
        }
        fprintf(stderr, "metal-compute bench --mpi: bad or incomplete option '%s'\n", a);
        bm_usage();
        return 2;
    }
    return -1;
}

int mc_cli_bench_mpi(int argc, char **argv)
{
    int init = 0, provided = 0;
    MPI_Initialized(&init);
    if (!init && MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided) != MPI_SUCCESS) {
        fprintf(stderr, "metal-compute bench: MPI_Init failed\n");
        return 1;
    }
    int rank = 0, size = 1;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    bm_opts o;
    int rc = bm_parse(argc, argv, &o);
    if (rc < 0) {
        rc = 0;
        /* [0] overlapped, [1] between chunks, each at the H the first one
         * picked, so the two differ only in the overlap. */
        double strong_n[2] = {0, 0}, weak_n[2] = {0, 0}, strong_1 = 0, weak_1 = 0;
        mc_mpi_stats st_strong[2], st_weak[2], st1;
        memset(st_strong, 0, sizeof st_strong);
        memset(st_weak, 0, sizeof st_weak);
        int first = o.only_one || o.ranks_x > 1 ? 1 : 0;
        static const mc_mpi_overlap mode[2] = {MC_MPI_OVERLAP_ON, MC_MPI_OVERLAP_OFF};
        uint32_t h_strong = o.halo, h_weak = o.halo;
        for (int m = first; m < 2; m++) {
            rc |= bm_run(MPI_COMM_WORLD, &o, mode[m], h_strong, o.strong, o.strong, &strong_n[m], &st_strong[m]);
            rc |= bm_run(MPI_COMM_WORLD, &o, mode[m], h_weak, o.weak, o.weak * (uint32_t)size, &weak_n[m], &st_weak[m]);
            if (!h_strong) h_strong = st_strong[m].halo_steps;
            if (!h_weak) h_weak = st_weak[m].halo_steps;
        }
        /* N ranks, then rank 0 alone with the one-rank problem (no
         * neighbour to overlap with: between chunks). */
        if (rank == 0) {
            rc |= bm_run(MPI_COMM_SELF, &o, MC_MPI_OVERLAP_OFF, o.halo, o.strong, o.strong, &strong_1, &st1);
            rc |= bm_run(MPI_COMM_SELF, &o, MC_MPI_OVERLAP_OFF, o.halo, o.weak, o.weak, &weak_1, &st1);
        }
        double bare = bm_sendrecv_ms((size_t)st_strong[1].halo_rows * o.strong * 2 * sizeof(float));
        int all = rc;
        MPI_Allreduce(&rc, &all, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
        rc = all;
        if (rank == 0 && rc == 0) {
            printf("metal-compute bench --mpi: %d ranks, %s:%d (%s), %u steps, median of %d\n", size,
                   mc_device_kind_name(st_strong[1].device.kind), st_strong[1].device.index, st_strong[1].device.name,
                   o.steps, o.reps);
            printf("%-44s %12s %12s %12s %9s %9s\n", "", "overlapped", "between", "1 rank", "ratio o", "ratio b");
            for (int w = 0; w < 2; w++) {
                const double *n = w ? weak_n : strong_n;
                double one = w ? weak_1 : strong_1;
                char on[16] = "-", ro[16] = "-";
                if (!first) {
                    snprintf(on, sizeof on, "%.3f", n[0]);
                    snprintf(ro, sizeof ro, "%.2f", one / n[0]);
                }
                printf("%-44s %12s %12.3f %12.3f %9s %9.2f  %s (H %u)\n",
                       w ? "weak: ms per step, fixed cells per rank" : "strong: ms per step, fixed grid", on, n[1], one,
                       ro, one / n[1], w ? "efficiency" : "speedup",
                       w ? st_weak[1].halo_steps : st_strong[1].halo_steps);
            }
            /* What the runner's cost model predicted at create, from its own measurements, at the H
             * in force: compare with the rows above. */
            for (int w = 0; w < 2; w++) {
                const mc_mpi_stats *st = w ? st_weak : st_strong;
                char on[16] = "-";
                if (!first) snprintf(on, sizeof on, "%.3f", st[0].model_step_ms[1]);
                printf("%-44s %12s %12.3f\n",
                       w ? "  model, weak (slowest rank's figures)" : "  model, strong (slowest rank's figures)", on,
                       st[1].model_step_ms[0]);
            }
            printf("%-44s %12s %12s %12s\n", "", "overlapped", "between", "Sendrecv");
            printf("%-44s %12.1f %12.1f %12.1f  (%u rows x %u cells, each way)\n",
                   "halo exchange per chunk, us (strong grid)", st_strong[0].exchange_ms_mean * 1e3,
                   st_strong[1].exchange_ms_mean * 1e3, bare * 1e3, st_strong[1].halo_rows, o.strong);
            printf("%-44s %12.1f %12.1f\n", "  of it waiting in MPI, us (slowest rank)",
                   st_strong[0].exchange_wait_ms_mean * 1e3, st_strong[1].exchange_wait_ms_mean * 1e3);
            printf("%-44s %12.3f %12.3f\n", "compute per chunk, ms (strong, rank 0)", st_strong[0].compute_ms_mean,
                   st_strong[1].compute_ms_mean);
            printf("%-44s %12.3f\n", "device time of one step, ms (strong, rank 0)", st_strong[1].step_ms);
            printf(
                "overlapped: the boundary bands first, sent while the slab computes; its exchange counts the\n"
                "bands' wait, so it is the part not hidden. %s\n",
                first ? "(--no-overlap: not run)" : "");
        }
    }
    if (!init) MPI_Finalize();
    return rc;
}
