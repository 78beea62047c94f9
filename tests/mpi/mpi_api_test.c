/*
 * The distributed runner through its library API, under mpirun on the CPU
 * device: a radius-2 integer stencil (exact: uint32 arithmetic wraps, so any
 * wrong cell shows) against the same stencil run serially on the host, on
 * uneven slabs, with every fault kind injected on some rank; and every
 * public function's refusal of bad arguments. Exits 0 on every rank when
 * all checks pass.
 */
#include "mc/mc_mpi.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int failures;
#define CHECK(cond)                                                                                        \
    do {                                                                                                   \
        if (!(cond)) {                                                                                     \
            fprintf(stderr, "%s:%d: check failed: %s (%s)\n", __FILE__, __LINE__, #cond, mc_last_error()); \
            failures++;                                                                                    \
        }                                                                                                  \
    } while (0)
#define CHECK_EQ(a, b)                                                                                \
    do {                                                                                              \
        long long a_ = (long long)(a), b_ = (long long)(b);                                           \
        if (a_ != b_) {                                                                               \
            fprintf(stderr, "%s:%d: %s = %lld, expected %lld (%s)\n", __FILE__, __LINE__, #a, a_, b_, \
                    mc_last_error());                                                                 \
            failures++;                                                                               \
        }                                                                                             \
    } while (0)

typedef struct st_params {
    uint32_t width, height;
} st_params;

/* The step: rows y-2 .. y+2 and columns x-1, x+1, periodic, uint32. */
static uint32_t cell(const uint32_t *src, uint32_t w, uint32_t h, uint32_t x, uint32_t y)
{
    uint32_t ym2 = (y + h - 2) % h, ym1 = (y + h - 1) % h, yp1 = (y + 1) % h, yp2 = (y + 2) % h;
    uint32_t xl = (x + w - 1) % w, xr = (x + 1) % w;
    return 3u * src[ym2 * w + x] + 5u * src[ym1 * w + x] + 7u * src[y * w + x] + 11u * src[yp1 * w + x] +
           13u * src[yp2 * w + x] + src[y * w + xl] + 2u * src[y * w + xr] + 1u;
}

static void stencil_step(const mc_cpu_ctx *ctx);
#include "mc/mc_cpu_kernel.h"
static void stencil_step(const mc_cpu_ctx *ctx)
{
    uint32_t *a = MC_ARG(ctx, 0, uint32_t);
    uint32_t *b = MC_ARG(ctx, 1, uint32_t);
    const mc_runner_iteration *it = MC_ARG(ctx, 2, const mc_runner_iteration);
    const st_params *p = MC_ARG(ctx, 3, const st_params);
    const uint32_t *src = (it->first_iteration & 1u) ? b : a;
    uint32_t *dst = (it->first_iteration & 1u) ? a : b;
    MC_FOR_EACH_THREAD_2D(ctx, x, y)
    {
        if (x < p->width && y < p->height) dst[y * p->width + x] = cell(src, p->width, p->height, x, y);
    }
}

static mc_status bind(void *user, mc_device *dev, uint32_t width, uint32_t local_height, mc_mpi_binding *b)
{
    st_params *p = user;
    const char *names[] = {"stencil_step"};
    mc_cpu_kernel_fn fns[] = {stencil_step};
    int32_t argc[] = {4};
    mc_library *lib = NULL;
    mc_status s = mc_library_create_builtin(dev, names, fns, argc, 1, &lib);
    if (s != MC_OK) return s;
    mc_pipeline_desc pd = MC_PIPELINE_DESC_INIT;
    pd.library = lib;
    pd.function = "stencil_step";
    s = mc_pipeline_create(dev, &pd, &b->pipeline);
    mc_library_release(lib);
    p->width = width;
    p->height = local_height;
    b->args[3].kind = MC_RUNNER_ARG_BYTES;
    b->args[3].bytes = p;
    b->args[3].len = sizeof *p;
    b->threads_per_threadgroup = (mc_size3){8, 8, 1};
    return s;
}

static void unbind(void *user, mc_mpi_binding *b)
{
    (void)user;
    mc_pipeline_release(b->pipeline);
}

enum { W = 24, H = 37, STEPS = 23 };

static void reference(uint32_t *out)
{
    uint32_t *a = malloc(sizeof(uint32_t) * W * H), *b = malloc(sizeof(uint32_t) * W * H);
    for (uint32_t i = 0; i < W * H; i++) a[i] = i * 2654435761u;
    for (int s = 0; s < STEPS; s++) {
        for (uint32_t y = 0; y < H; y++)
            for (uint32_t x = 0; x < W; x++) b[y * W + x] = cell(a, W, H, x, y);
        uint32_t *t = a;
        a = b;
        b = t;
    }
    memcpy(out, a, sizeof(uint32_t) * W * H);
    free(a);
    free(b);
}

static void base_desc(mc_mpi_desc *d, st_params *p, const uint32_t *init)
{
    memset(d, 0, sizeof *d);
    d->device = "cpu";
    d->width = W;
    d->height = H;
    d->cell_bytes = sizeof(uint32_t);
    d->radius = 2;
    d->initial = init;
    d->total_steps = STEPS;
    d->checkpoint_chunks = 2;
    d->bind = bind;
    d->unbind = unbind;
    d->user = p;
}

/* One run against the reference; the same result on every rank's gather. */
static void run_and_compare(const mc_mpi_desc *d, const uint32_t *want, int rank, uint32_t min_recoveries)
{
    mc_mpi_runner *r = NULL;
    CHECK_EQ(mc_mpi_runner_create(d, &r), MC_OK);
    if (!r) return;
    CHECK_EQ(mc_mpi_runner_run(r), MC_OK);
    uint32_t *got = calloc(W * H, sizeof *got);
    CHECK_EQ(mc_mpi_runner_gather(r, 0, rank == 0 ? got : NULL, sizeof(uint32_t) * W * H), MC_OK);
    if (rank == 0) CHECK(memcmp(got, want, sizeof(uint32_t) * W * H) == 0);
    mc_mpi_stats st;
    CHECK_EQ(mc_mpi_runner_get_stats(r, &st), MC_OK);
    CHECK_EQ(st.steps, STEPS);
    CHECK(st.recoveries >= min_recoveries);
    CHECK(st.halo_rows == st.halo_steps * 2u);
    if (d->overlap == MC_MPI_OVERLAP_ON) CHECK(st.overlapped);
    if (d->overlap == MC_MPI_OVERLAP_OFF) CHECK(!st.overlapped);
    /* The default runs whichever the model priced lower. */
    if (d->overlap == MC_MPI_OVERLAP_AUTO) CHECK(st.overlapped == (st.model_step_ms[1] < st.model_step_ms[0]));
    CHECK(st.model_step_ms[0] > 0 && st.model_step_ms[1] > 0);
    free(got);
    mc_mpi_runner_release(r);
}

/* The CPU device's workers (its compute units) after create. */
static void check_cpu_workers(const mc_mpi_desc *d, uint32_t want)
{
    mc_mpi_runner *r = NULL;
    CHECK_EQ(mc_mpi_runner_create(d, &r), MC_OK);
    if (!r) return;
    mc_mpi_stats st;
    CHECK_EQ(mc_mpi_runner_get_stats(r, &st), MC_OK);
    CHECK_EQ(st.device.compute_units, want);
    mc_mpi_runner_release(r);
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    int rank, size;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    uint32_t *init = malloc(sizeof(uint32_t) * W * H), *want = malloc(sizeof(uint32_t) * W * H);
    for (uint32_t i = 0; i < W * H; i++) init[i] = i * 2654435761u;
    reference(want);
    st_params p;
    mc_mpi_desc d;

    /* The even split and the chosen H. */
    base_desc(&d, &p, init);
    run_and_compare(&d, want, rank, 0);

    /* Ranks of one host split its cores (every rank is on this host here),
     * unless cpu_threads says how many workers each gets. */
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    check_cpu_workers(&d, cores / size > 1 ? (uint32_t)(cores / size) : 1u);
    d.cpu_threads = 3;
    check_cpu_workers(&d, 3);

    /* Uneven slabs (the last rank gets the rest), H = 2 (4 halo rows). */
    uint32_t rows[8];
    for (int i = 0; i < size; i++) rows[i] = i + 1 < size ? 4u + (uint32_t)i : 0u;
    uint32_t used = 0;
    for (int i = 0; i + 1 < size; i++) used += rows[i];
    rows[size - 1] = H - used;
    base_desc(&d, &p, init);
    d.slab_rows = rows;
    d.halo_steps = 2;
    run_and_compare(&d, want, rank, 0);

    /* Both exchanges on the same uneven slabs (radius 2: bands of 3 H 2 rows). */
    d.overlap = MC_MPI_OVERLAP_ON;
    run_and_compare(&d, want, rank, 0);
    d.overlap = MC_MPI_OVERLAP_OFF;
    run_and_compare(&d, want, rank, 0);
    d.halo_steps = 0; /* overlapped at the H it picks for overlap */
    d.overlap = MC_MPI_OVERLAP_ON;
    run_and_compare(&d, want, rank, 0);

    /* Every kind of fault, spread over the ranks: all roll back together. */
    /* Numbered so that no rank gets two faults on one command buffer (a
     * fault list refuses that) for 2 and 3 ranks alike. */
    static const char *const kinds[] = {"timeout@2", "page-fault@2", "access-revoked@3", "device-lost@3", "internal@4"};
    char spec[160] = "";
    for (int k = rank; k < 5; k += size)
        snprintf(spec + strlen(spec), sizeof spec - strlen(spec), "%s%s", *spec ? "," : "", kinds[k]);
    base_desc(&d, &p, init);
    d.halo_steps = 2;
    d.inject_faults = spec;
    run_and_compare(&d, want, rank, 1);
    d.overlap = MC_MPI_OVERLAP_ON; /* the same faults, overlapped */
    run_and_compare(&d, want, rank, 1);

    /* Refusals: every rank gets the error, none crashes. */
    mc_mpi_runner *r = (mc_mpi_runner *)&d;
    CHECK_EQ(mc_mpi_runner_create(NULL, &r), MC_ERR_INVALID_ARGUMENT);
    CHECK(r == NULL);
    CHECK_EQ(mc_mpi_runner_create(&d, NULL), MC_ERR_INVALID_ARGUMENT);
    CHECK_EQ(mc_mpi_runner_run(NULL), MC_ERR_INVALID_ARGUMENT);
    CHECK_EQ(mc_mpi_runner_gather(NULL, 0, NULL, 0), MC_ERR_INVALID_ARGUMENT);
    CHECK_EQ(mc_mpi_runner_get_stats(NULL, NULL), MC_ERR_INVALID_ARGUMENT);
    mc_mpi_runner_release(NULL);
    base_desc(&d, &p, init);
    d.bind = NULL;
    CHECK_EQ(mc_mpi_runner_create(&d, &r), MC_ERR_INVALID_ARGUMENT);
    base_desc(&d, &p, init);
    d.initial = NULL;
    CHECK_EQ(mc_mpi_runner_create(&d, &r), MC_ERR_INVALID_ARGUMENT);
    base_desc(&d, &p, init);
    d.ranks_x = (uint32_t)size + 1; /* does not divide the ranks */
    CHECK_EQ(mc_mpi_runner_create(&d, &r), MC_ERR_INVALID_ARGUMENT);
    CHECK(strstr(mc_last_error(), "does not divide") != NULL);
    base_desc(&d, &p, init);
    d.overlap = (mc_mpi_overlap)7;
    CHECK_EQ(mc_mpi_runner_create(&d, &r), MC_ERR_INVALID_ARGUMENT);
    CHECK(strstr(mc_last_error(), "overlap is 7") != NULL);
    base_desc(&d, &p, init);
    d.halo_steps = 1000; /* deeper than any slab */
    CHECK_EQ(mc_mpi_runner_create(&d, &r), MC_ERR_INVALID_ARGUMENT);
    CHECK(strstr(mc_last_error(), "halo of 1000 steps") != NULL);
    base_desc(&d, &p, init);
    rows[0] = 1; /* fewer rows than the radius */
    d.slab_rows = rows;
    CHECK_EQ(mc_mpi_runner_create(&d, &r), MC_ERR_INVALID_ARGUMENT);
    base_desc(&d, &p, init);
    d.inject_faults = rank == size - 1 ? "nonsense@1" : NULL; /* one rank's bad input fails all */
    mc_status s = mc_mpi_runner_create(&d, &r);
    CHECK(s != MC_OK);
    CHECK(r == NULL);
    /* The even split and the halo choice. */
    uint32_t even[3];
    mc_mpi_even_slabs(10, 3, even);
    CHECK(even[0] == 4 && even[1] == 3 && even[2] == 3);
    CHECK_EQ(mc_mpi_pick_halo(0.2, 0.001, 1, 64), 10); /* sqrt(0.2 / 0.002) */
    CHECK_EQ(mc_mpi_pick_halo(0.2, 0.001, 1, 4), 4);
    CHECK_EQ(mc_mpi_pick_halo(1e-9, 1.0, 1, 64), 1);

    int all = 0;
    MPI_Allreduce(&failures, &all, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    if (rank == 0) printf("%s: %d failed checks over %d ranks\n", all ? "FAIL" : "ok", all, size);
    free(init);
    free(want);
    MPI_Finalize();
    return all ? 1 : 0;
}
