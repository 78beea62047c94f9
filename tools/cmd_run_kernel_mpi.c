/*
 * metal-compute run FILE --mpi: a step kernel of your own across MPI ranks
 * (docs/SCALE.md), the way `run FILE` runs it in one process
 * (docs/RUNNER.md, "Your own kernel"), restricted to what a slab needs:
 *   --arg pair:FIELD.npy   the 2-D grid (H, W), cut into slabs of rows
 *   --arg iter             the iteration range
 *   --arg TYPE:V,...       scalars; the value `height` (u32:height) is
 *                          replaced by each rank's slab height, halos
 *                          included, so the kernel wraps within its slab
 * Every rank runs the same kernel file; rank 0 gathers the grid and writes
 * it with the single-process run's .npy writer: the same bytes.
 */
#include "cli.h"
#include "core/core.h"
#include "mc/mc_mpi.h"
#include "npy.h"

#include <stdlib.h>
#include <string.h>

typedef struct kmpi_scalars {
    uint8_t bytes[MC_MAX_BYTES_ARG];
    size_t len;
    size_t height_at[16]; /* offsets of `height` values */
    uint32_t nheight;
} kmpi_scalars;

typedef struct kmpi_job {
    const char *path, *function;
    mc_npy field;
    int32_t pair_slot, iter_slot;
    kmpi_scalars scalars[MC_MAX_BUFFER_ARGS];
    bool is_scalars[MC_MAX_BUFFER_ARGS];
    uint32_t nargs;
} kmpi_job;

static const struct {
    const char *name;
    size_t size;
} kmpi_types[] = {{"f32", 4}, {"f64", 8}, {"i8", 1},  {"u8", 1},  {"i16", 2},
                  {"u16", 2}, {"i32", 4}, {"u32", 4}, {"i64", 8}, {"u64", 8}};

/* "TYPE:V,TYPE:V" packed like a C struct (natural alignment), as run FILE
 * packs them; u32:height is left for bind to fill. */
static bool kmpi_parse_scalars(const char *spec, kmpi_scalars *k, char *why, size_t cap)
{
    size_t off = 0, align = 1;
    memset(k, 0, sizeof *k);
    for (const char *p = spec; *p;) {
        const char *colon = strchr(p, ':');
        if (!colon) return snprintf(why, cap, "'%s': TYPE:VALUE expected", p), false;
        size_t tl = (size_t)(colon - p), size = 0;
        const char *type = NULL;
        for (size_t t = 0; t < sizeof kmpi_types / sizeof kmpi_types[0]; t++)
            if (strlen(kmpi_types[t].name) == tl && !strncmp(p, kmpi_types[t].name, tl)) {
                type = kmpi_types[t].name;
                size = kmpi_types[t].size;
            }
        if (!type) return snprintf(why, cap, "unknown scalar type '%.*s'", (int)tl, p), false;
        off = (off + size - 1) / size * size;
        if (size > align) align = size;
        if (off + size > MC_MAX_BYTES_ARG) return snprintf(why, cap, "more than %d bytes", MC_MAX_BYTES_ARG), false;
        const char *v = colon + 1;
        size_t vl = strcspn(v, ",");
        char buf[64];
        if (!vl || vl >= sizeof buf) return snprintf(why, cap, "a %s needs a value", type), false;
        memcpy(buf, v, vl);
        buf[vl] = '\0';
        char *end;
        uint8_t *dst = k->bytes + off;
        if (!strcmp(buf, "height")) {
            if (strcmp(type, "u32")) return snprintf(why, cap, "height is a u32"), false;
            if (k->nheight == 16) return snprintf(why, cap, "height more than 16 times"), false;
            k->height_at[k->nheight++] = off;
        } else if (type[0] == 'f') {
            double d = strtod(buf, &end);
            if (*end) return snprintf(why, cap, "'%s' is not a number", buf), false;
            if (size == 4) {
                float f = (float)d;
                memcpy(dst, &f, 4);
            } else {
                memcpy(dst, &d, 8);
            }
        } else {
            bool is_signed = type[0] == 'i';
            long long sv = 0;
            unsigned long long uv = 0;
            if (is_signed) sv = strtoll(buf, &end, 10);
            else uv = strtoull(buf, &end, 10);
            if (*end || (!is_signed && buf[0] == '-')) return snprintf(why, cap, "'%s' is not a %s", buf, type), false;
            unsigned long long bits = is_signed ? (unsigned long long)sv : uv;
            unsigned long long max = size == 8 ? ~0ull : (1ull << (8 * size)) - 1;
            if (!is_signed && uv > max) return snprintf(why, cap, "%s does not fit a %s", buf, type), false;
            if (is_signed && size < 8 && (sv < -(1ll << (8 * size - 1)) || sv >= (1ll << (8 * size - 1))))
                return snprintf(why, cap, "%s does not fit a %s", buf, type), false;
            for (size_t i = 0; i < size; i++) dst[i] = (uint8_t)(bits >> (8 * i)); /* little-endian */
        }
        off += size;
        p = v + vl;
        if (*p == ',') p++;
    }
    k->len = (off + align - 1) / align * align;
    if (!k->len) return snprintf(why, cap, "no scalars"), false;
    return true;
}

static mc_status kmpi_bind(void *user, mc_device *dev, uint32_t width, uint32_t local_height, mc_mpi_binding *b)
{
    kmpi_job *j = user;
    (void)width;
    mc_library *lib = NULL;
    char *log = NULL;
    mc_status s = mc_library_create_from_file(dev, j->path, MC_LANG_UNSET, NULL, &lib, &log);
    if (s != MC_OK) {
        if (log) fprintf(stderr, "%s: the compiler says:\n%s\n", j->path, log);
        mc_free(log);
        return s;
    }
    mc_pipeline_desc pd = MC_PIPELINE_DESC_INIT;
    pd.library = lib;
    pd.function = j->function;
    s = mc_pipeline_create(dev, &pd, &b->pipeline);
    mc_library_release(lib);
    if (s != MC_OK) return s;
    for (uint32_t i = 0; i < j->nargs; i++) {
        if (!j->is_scalars[i]) continue;
        kmpi_scalars *k = &j->scalars[i];
        for (uint32_t h = 0; h < k->nheight; h++) memcpy(k->bytes + k->height_at[h], &local_height, 4);
        b->args[i].kind = MC_RUNNER_ARG_BYTES;
        b->args[i].bytes = k->bytes;
        b->args[i].len = k->len;
    }
    b->threads_per_threadgroup = (mc_size3){16, 16, 1};
    return MC_OK;
}

static void kmpi_unbind(void *user, mc_mpi_binding *b)
{
    (void)user;
    mc_pipeline_release(b->pipeline);
    b->pipeline = NULL;
}

static int kmpi_usage(int rc)
{
    printf(
        "usage: mpirun -n N metal-compute run FILE --mpi --function NAME --arg pair:FIELD.npy --arg iter\n"
        "           --arg TYPE:V,... [--steps N] [--out FILE.npy] [--device D] [--radius R] [--halo H]\n"
        "           [--slab-rows R0,...] [--budget-ms MS] [--checkpoint-chunks C] [--inject-faults SPEC]\n"
        "           [--checkpoint-dir DIR [--resume]] [--overlap | --no-overlap]\n\n"
        "Runs your step kernel (as run FILE does) across the ranks: the pair's 2-D grid (H, W) is cut\n"
        "into slabs of rows. In the scalars, u32:height stands for each rank's slab height (halos\n"
        "included): the kernel must wrap rows within the height it is given. --radius: rows a step\n"
        "reads above and below (default 1). The .npy written by rank 0 is the same bytes as run FILE's.\n"
        "--overlap: the boundary bands first, sent while the slab computes; --no-overlap: the halos\n"
        "exchanged between chunks; default: whichever the cost model says is faster.\n");
    return rc;
}

static int kmpi_fail(int rank, const char *fmt, const char *what)
{
    if (rank == 0) {
        fprintf(stderr, "metal-compute run: ");
        fprintf(stderr, fmt, what);
        fprintf(stderr, "\n");
    }
    return 2;
}

static bool kmpi_u32(const char *s, uint32_t lo, uint32_t hi, uint32_t *out)
{
    char *end;
    unsigned long long v = strtoull(s, &end, 10);
    if (!*s || *end || *s == '-' || v < lo || v > hi) return false;
    *out = (uint32_t)v;
    return true;
}

static int kmpi_run(int argc, char **argv, int rank, int size)
{
    kmpi_job j;
    memset(&j, 0, sizeof j);
    j.path = argv[0];
    j.pair_slot = j.iter_slot = -1;
    const char *out = NULL, *device = NULL, *faults = NULL, *ckpt_dir = NULL, *rows_spec = NULL;
    uint32_t steps = 1000, radius = 1, halo = 0, ckpt = 0;
    double budget = 0;
    bool resume = false;
    mc_mpi_overlap overlap = MC_MPI_OVERLAP_AUTO;
    char why[256];
    int rc = 2;
    bool parsed = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--mpi")) continue;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            if (rank == 0) kmpi_usage(0);
            rc = 0;
            goto checked;
        } else if (v && !strcmp(a, "--function")) {
            j.function = argv[++i];
        } else if (v && !strcmp(a, "--arg")) {
            const char *spec = argv[++i];
            if (j.nargs >= MC_MAX_BUFFER_ARGS) {
                rc = kmpi_fail(rank, "more than %s argument slots", "31");
                goto checked;
            }
            if (!strncmp(spec, "pair:", 5) && j.pair_slot < 0 && j.nargs + 1 < MC_MAX_BUFFER_ARGS) {
                if (!mc_npy_read(spec + 5, &j.field, why, sizeof why)) {
                    if (rank == 0) fprintf(stderr, "metal-compute run: --arg %s: %s\n", spec, why);
                    goto checked;
                }
                j.pair_slot = (int32_t)j.nargs;
                j.nargs += 2;
            } else if (!strcmp(spec, "iter") && j.iter_slot < 0) {
                j.iter_slot = (int32_t)j.nargs++;
            } else if (strchr(spec, ':') && strncmp(spec, "pair:", 5)) {
                if (!kmpi_parse_scalars(spec, &j.scalars[j.nargs], why, sizeof why)) {
                    if (rank == 0) fprintf(stderr, "metal-compute run: --arg %s: %s\n", spec, why);
                    goto checked;
                }
                j.is_scalars[j.nargs++] = true;
            } else {
                rc = kmpi_fail(rank, "--arg %s: with --mpi, one pair:FIELD.npy (the grid), one iter and scalars", spec);
                goto checked;
            }
        } else if (v && !strcmp(a, "--steps")) {
            if (!kmpi_u32(argv[++i], 1, 2000000000u, &steps)) {
                rc = kmpi_fail(rank, "--steps takes 1 to 2000000000, not '%s'", v);
                goto checked;
            }
        } else if (v && !strcmp(a, "--radius")) {
            if (!kmpi_u32(argv[++i], 1, 1024, &radius)) {
                rc = kmpi_fail(rank, "--radius takes 1 to 1024 rows, not '%s'", v);
                goto checked;
            }
        } else if (v && !strcmp(a, "--halo")) {
            if (!kmpi_u32(argv[++i], 1, 16384, &halo)) {
                rc = kmpi_fail(rank, "--halo takes 1 to 16384 steps, not '%s'", v);
                goto checked;
            }
        } else if (v && !strcmp(a, "--checkpoint-chunks")) {
            if (!kmpi_u32(argv[++i], 1, 1000000, &ckpt)) {
                rc = kmpi_fail(rank, "--checkpoint-chunks takes 1 to 1000000, not '%s'", v);
                goto checked;
            }
        } else if (v && !strcmp(a, "--budget-ms")) {
            char *end;
            budget = strtod(argv[++i], &end);
            if (*end || !(budget > 0 && budget <= 60000)) {
                rc = kmpi_fail(rank, "--budget-ms takes milliseconds above 0, not '%s'", v);
                goto checked;
            }
        } else if (v && !strcmp(a, "--out")) {
            out = argv[++i];
        } else if (v && !strcmp(a, "--device")) {
            device = argv[++i];
        } else if (v && !strcmp(a, "--inject-faults")) {
            faults = argv[++i];
        } else if (v && !strcmp(a, "--slab-rows")) {
            rows_spec = argv[++i];
        } else if (v && !strcmp(a, "--checkpoint-dir")) {
            ckpt_dir = argv[++i];
        } else if (!strcmp(a, "--resume")) {
            resume = true;
        } else if (!strcmp(a, "--no-overlap")) {
            overlap = MC_MPI_OVERLAP_OFF;
        } else if (!strcmp(a, "--overlap")) {
            overlap = MC_MPI_OVERLAP_ON;
        } else {
            rc = kmpi_fail(rank, "unknown or incomplete option '%s' (see run FILE --mpi --help)", a);
            goto checked;
        }
    }
    if (!j.function) {
        rc = kmpi_fail(rank, "%s: --function NAME is required", j.path);
        goto checked;
    }
    if (j.pair_slot < 0 || j.iter_slot < 0) {
        rc = kmpi_fail(rank, "%s", "--mpi needs --arg pair:FIELD.npy (the grid) and --arg iter");
        goto checked;
    }
    if (j.field.ndim != 2 || j.field.shape[0] > 16384 || j.field.shape[1] > 65536) {
        rc = kmpi_fail(rank, "%s", "--mpi: the pair's array must be 2-D (H, W), H at most 16384, W at most 65536");
        goto checked;
    }
    if (resume && !ckpt_dir) {
        rc = kmpi_fail(rank, "%s", "--resume needs --checkpoint-dir DIR");
        goto checked;
    }
    parsed = true;
checked:
    /* A file one rank cannot read must not leave the others waiting in a
     * collective call: every rank learns whether any failed here. */
    {
        int bad = !parsed, any = 0;
        MPI_Allreduce(&bad, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
        if (any) {
            if (parsed) rc = 2;
            goto done;
        }
    }
    if (!out) out = "out.npy";
    {
        int unwritable = 0;
        if (rank == 0) {
            mc_status cs = mc__outfile_check(out);
            if (cs != MC_OK) unwritable = mc_cli_fail("--out", cs);
        }
        MPI_Bcast(&unwritable, 1, MPI_INT, 0, MPI_COMM_WORLD);
        if (unwritable) goto done;
    }
    uint32_t *rows = NULL;
    if (rows_spec) {
        rows = calloc((size_t)size, sizeof *rows);
        const char *p = rows_spec;
        bool ok = rows != NULL;
        for (int i = 0; ok && i < size; i++) {
            char *end;
            unsigned long long x = strtoull(p, &end, 10);
            ok = end != p && x <= 16384 && (i + 1 < size ? *end == ',' : !*end);
            rows[i] = (uint32_t)x;
            p = end + 1;
        }
        if (!ok) {
            free(rows);
            rc = kmpi_fail(rank, "--slab-rows takes one row count per rank, comma separated: '%s'", rows_spec);
            goto done;
        }
    }
    mc_mpi_desc d;
    memset(&d, 0, sizeof d);
    d.device = device;
    d.width = (uint32_t)j.field.shape[1];
    d.height = (uint32_t)j.field.shape[0];
    d.cell_bytes = (uint32_t)mc_npy_dtype_size(j.field.dtype);
    d.radius = radius;
    d.initial = j.field.data;
    d.slab_rows = rows;
    d.total_steps = steps;
    d.halo_steps = halo;
    d.budget_ms = budget;
    d.checkpoint_chunks = ckpt;
    d.inject_faults = faults;
    d.state_arg[0] = (uint32_t)j.pair_slot;
    d.state_arg[1] = (uint32_t)j.pair_slot + 1;
    d.iteration_arg = (uint32_t)j.iter_slot;
    d.bind = kmpi_bind;
    d.unbind = kmpi_unbind;
    d.user = &j;
    /* What makes two runs the same run; the runner adds the slab. */
    char run_id[600];
    snprintf(run_id, sizeof run_id, "run FILE --mpi v1 %s %s steps %u ranks %d", j.path, j.function, steps, size);
    d.checkpoint_dir = ckpt_dir;
    d.resume = resume;
    d.overlap = overlap;
    d.run_params = run_id;
    d.run_params_len = strlen(run_id);
    mc_mpi_runner *r = NULL;
    mc_status s = mc_mpi_runner_create(&d, &r);
    free(rows);
    if (s == MC_OK) s = mc_mpi_runner_run(r);
    /* The field's memory takes the result on rank 0. */
    if (s == MC_OK) s = mc_mpi_runner_gather(r, 0, rank == 0 ? j.field.data : NULL, j.field.bytes);
    mc_mpi_stats st;
    memset(&st, 0, sizeof st);
    if (r) mc_mpi_runner_get_stats(r, &st);
    mc_mpi_runner_release(r);
    if (s != MC_OK) {
        if (rank == 0 || (s != MC_ERR_INVALID_ARGUMENT && strncmp(mc_last_error(), "another rank", 12)))
            mc_cli_fail(j.path, s);
        rc = s == MC_ERR_INVALID_ARGUMENT ? 2 : 1;
        goto done;
    }
    rc = 0;
    if (rank == 0) {
        if (!mc_npy_write(out, &j.field, why, sizeof why)) {
            fprintf(stderr, "metal-compute run: --out %s: %s\n", out, why);
            rc = 1;
        } else {
            printf("%s %s on %d ranks: %llu steps in %llu chunks of up to %u (halo %u rows%s), %u recoveries\n", j.path,
                   j.function, size, (unsigned long long)st.steps, (unsigned long long)st.chunks, st.halo_steps,
                   st.halo_rows, st.overlapped ? ", overlapped" : "", st.recoveries);
            if (st.resumed_from) printf("  resumed from step %llu\n", (unsigned long long)st.resumed_from);
            printf("  output %s\n", out);
        }
    }
done:
    mc_npy_free(&j.field);
    return rc;
}

int mc_cli_run_kernel_mpi(int argc, char **argv)
{
    return mc_cli_mpi_job(argc, argv, kmpi_run);
}
