/*
 * metal-compute run: long computations through the runner (docs/RUNNER.md).
 *
 * run gray-scott: a Gray-Scott reaction-diffusion simulation, one step per
 * dispatch (examples/kernels/gray_scott.metal), written out as a colour-mapped
 * PNG of the V chemical. The field is seeded from a fixed-seed generator, so
 * a run gives the same image every time on a device, also when faults are
 * injected: the runner restores its last checkpoint and replays.
 *
 * With --isolate the device work runs in a supervised worker process
 * (docs/ISOLATION.md): this process never opens the device, and a worker
 * that faults for good, dies or hangs is replaced. --fault-at-step is the
 * test hook for that: the kernel writes out of bounds once, for real.
 */
#include "cli.h"
#include "core/core.h"
#include "run_report.h"

#include <png.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define GS_GROUP 16u

typedef struct gs_params {
    uint32_t width, height;
    float du, dv, feed, kill, dt;
    uint32_t fault_step; /* 1 + the step that writes out of bounds; 0 = none */
} gs_params;

typedef struct gs_job {
    uint32_t size;
    gs_params params;
    float *seed; /* the initial field, (u, v) pairs */
    bool cached; /* build the kernel through the pipeline cache */
    uint32_t fault_step;
    /* Memory shared with every worker (MAP_SHARED before the run): set by
     * the first setup that arms the fault, so it happens once per run. */
    _Atomic uint32_t *fault_armed;
    mc_pipeline *pl;
    mc_buffer *a, *b;
    mc_run_report report; /* the progress bar or JSON lines on stderr */
} gs_job;

/* U = 1, V = 0 everywhere but a few squares of V, placed by a fixed-seed
 * linear congruential generator: the pattern grows from them. The squares
 * (which wrap around the edges) are summed into a 2-D difference array and
 * painted in one pass, so seeding is O(n^2) however many there are. */
static float *gs_seed(uint32_t n)
{
    size_t w = (size_t)n + 1;
    float *f = malloc((size_t)n * n * 2 * sizeof *f);
    int32_t *diff = calloc(w * w, sizeof *diff);
    if (!f || !diff) {
        free(f);
        free(diff);
        return NULL;
    }
    uint32_t rng = 20240611u;
    uint32_t side = n / 24 > 3 ? n / 24 : 3;
    uint32_t count = 6 + (n / 64) * (n / 64) * 3;
    for (uint32_t k = 0; k < count; k++) {
        rng = rng * 1664525u + 1013904223u;
        uint32_t cx = (rng >> 8) % n;
        rng = rng * 1664525u + 1013904223u;
        uint32_t cy = (rng >> 8) % n;
        /* [c, c + side) wraps into at most two ranges per axis. */
        uint32_t xs[2][2], ys[2][2], nx = 0, ny = 0;
        if (cx + side <= n) {
            xs[nx][0] = cx;
            xs[nx++][1] = cx + side;
        } else {
            xs[nx][0] = cx;
            xs[nx++][1] = n;
            xs[nx][0] = 0;
            xs[nx++][1] = cx + side - n;
        }
        if (cy + side <= n) {
            ys[ny][0] = cy;
            ys[ny++][1] = cy + side;
        } else {
            ys[ny][0] = cy;
            ys[ny++][1] = n;
            ys[ny][0] = 0;
            ys[ny++][1] = cy + side - n;
        }
        for (uint32_t a = 0; a < ny; a++) {
            for (uint32_t b = 0; b < nx; b++) {
                diff[ys[a][0] * w + xs[b][0]]++;
                diff[ys[a][0] * w + xs[b][1]]--;
                diff[ys[a][1] * w + xs[b][0]]--;
                diff[ys[a][1] * w + xs[b][1]]++;
            }
        }
    }
    /* Prefix sums in place: diff[y][x] becomes the number of squares over
     * the cell. */
    for (size_t y = 0; y < n; y++)
        for (size_t x = 0; x < n; x++) {
            int32_t v = diff[y * w + x];
            if (x) v += diff[y * w + x - 1];
            if (y) v += diff[(y - 1) * w + x];
            if (x && y) v -= diff[(y - 1) * w + x - 1];
            diff[y * w + x] = v;
        }
    for (size_t y = 0; y < n; y++)
        for (size_t x = 0; x < n; x++) {
            size_t i = y * n + x;
            bool seeded = diff[y * w + x] > 0;
            f[2 * i] = seeded ? 0.5f : 1.0f;
            f[2 * i + 1] = seeded ? 0.25f : 0.0f;
        }
    free(diff);
    return f;
}

/* The kernel through the pipeline cache: a restarted worker loads it from
 * the on-disk archive instead of compiling it again. */
static mc_pipeline *gs_cached_pipeline(mc_device *dev)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/gray_scott.metal", mc_cli_kernel_dir());
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "metal-compute run: cannot read %s\n", path);
        return NULL;
    }
    char *src = NULL;
    size_t len = 0, cap = 0, n;
    char buf[8192];
    while ((n = fread(buf, 1, sizeof buf, f)) > 0) {
        if (len + n + 1 > cap) {
            cap = (len + n + 1) * 2;
            char *grown = realloc(src, cap);
            if (!grown) break;
            src = grown;
        }
        memcpy(src + len, buf, n);
        len += n;
    }
    fclose(f);
    if (!src) return NULL;
    src[len] = '\0';
    mc_pipeline_source_desc d = MC_PIPELINE_SOURCE_DESC_INIT;
    d.source = src;
    d.source_len = len;
    d.language = MC_LANG_MSL;
    d.function = "gray_scott_step";
    mc_pipeline *p = NULL;
    char *log = NULL;
    mc_status s = mc_pipeline_create_from_source(dev, &d, &p, &log);
    if (s != MC_OK) {
        mc_cli_fail(path, s);
        if (log) fprintf(stderr, "%s\n", log);
    }
    mc_free(log);
    free(src);
    return p;
}

static void gs_job_free(gs_job *j)
{
    free(j->seed);
    j->seed = NULL;
    if (j->fault_armed) munmap((void *)j->fault_armed, sizeof *j->fault_armed);
    j->fault_armed = NULL;
}

static mc_status gs_setup(void *user, mc_device *dev, mc_runner_binding *b)
{
    gs_job *j = user;
    j->pl = j->cached ? gs_cached_pipeline(dev) : mc_cli_pipeline(dev, "gray_scott", "gray_scott_step");
    if (!j->pl) return MC_ERR_COMPILE;
    /* The test hook fires in the first setup's device only: a replacement
     * worker (or a reopened device) runs the step cleanly. */
    j->params.fault_step = 0;
    if (j->fault_step && j->fault_armed && !atomic_exchange(j->fault_armed, 1u)) j->params.fault_step = j->fault_step;
    size_t bytes = (size_t)j->size * j->size * 2 * sizeof(float);
    mc_buffer_desc ad = {bytes, MC_STORAGE_PRIVATE, "gray-scott A", j->seed};
    mc_buffer_desc bd = {bytes, MC_STORAGE_PRIVATE, "gray-scott B", j->seed};
    mc_status s = mc_buffer_create(dev, &ad, &j->a);
    if (s == MC_OK) s = mc_buffer_create(dev, &bd, &j->b);
    if (s != MC_OK) {
        mc_buffer_release(j->a);
        mc_pipeline_release(j->pl);
        j->a = NULL;
        j->pl = NULL;
        return s;
    }
    mc_cli_gray_scott_bind(b, j->pl, j->a, j->b, &j->params, sizeof j->params);
    return MC_OK;
}

static void gs_teardown(void *user, mc_runner_binding *b)
{
    gs_job *j = user;
    (void)b;
    mc_buffer_release(j->a);
    mc_buffer_release(j->b);
    mc_pipeline_release(j->pl);
    j->a = j->b = NULL;
    j->pl = NULL;
}

/* V through a smooth palette (dark violet, magenta, orange, pale yellow). */
static void gs_colour(float v, uint8_t rgb[3])
{
    static const float stops[][3] = {
        {0, 0, 4},     {40, 11, 84},   {101, 21, 110}, {159, 42, 99},
        {212, 72, 66}, {245, 125, 21}, {250, 193, 39}, {252, 255, 164},
    };
    const int n = (int)(sizeof stops / sizeof stops[0]);
    float t = v * 2.8f; /* V stays below about 0.36 */
    t = t < 0 ? 0 : t > 1 ? 1 : t;
    float x = t * (float)(n - 1);
    int i = (int)x;
    if (i >= n - 1) i = n - 2;
    float f = x - (float)i;
    for (int c = 0; c < 3; c++) rgb[c] = (uint8_t)(stops[i][c] + (stops[i + 1][c] - stops[i][c]) * f + 0.5f);
}

/* Writes the image atomically (a temporary file, fsync, rename). Every
 * byte is a function of the field alone, and the encoding is pinned so that
 * other writers (the Python example) can produce the same bytes: no row
 * filter, zlib level 6 with the default strategy and memory level, IDAT
 * chunks of 8192 bytes, no ancillary chunks. */
static int write_png(const char *path, const uint8_t *rgb, uint32_t w, uint32_t h)
{
    mc__outfile out;
    mc_status s = mc__outfile_open(path, &out);
    if (s != MC_OK) return mc_cli_fail("--out", s);
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
    png_infop info = png ? png_create_info_struct(png) : NULL;
    png_bytep *rows = malloc(h * sizeof *rows);
    int rc = 1;
    if (png && info && rows && !setjmp(png_jmpbuf(png))) {
        for (uint32_t y = 0; y < h; y++) rows[y] = (png_bytep)(rgb + (size_t)y * w * 3);
        png_init_io(png, out.f);
        png_set_filter(png, PNG_FILTER_TYPE_BASE, PNG_FILTER_NONE);
        png_set_compression_level(png, 6);
        png_set_compression_mem_level(png, 8);
        png_set_compression_strategy(png, 0 /* Z_DEFAULT_STRATEGY */);
        png_set_compression_buffer_size(png, 8192);
        png_set_IHDR(png, info, w, h, 8, PNG_COLOR_TYPE_RGB, PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT,
                     PNG_FILTER_TYPE_DEFAULT);
        png_write_info(png, info);
        png_write_image(png, rows);
        png_write_end(png, NULL);
        rc = 0;
    }
    png_destroy_write_struct(&png, &info);
    free(rows);
    if (rc) {
        mc__outfile_abort(&out);
        fprintf(stderr, "metal-compute run: encoding %s failed\n", path);
        return 1;
    }
    s = mc__outfile_commit(&out);
    return s == MC_OK ? 0 : mc_cli_fail("--out", s);
}

static void run_usage(void)
{
    printf(
        "usage: metal-compute run gray-scott [--device D] [--size N] [--steps N] [--budget-ms MS]\n"
        "                                    [--checkpoint-ms MS] [--out FILE.png] [--inject-faults KIND@N,...]\n"
        "                                    [--isolate [--deadline-ms MS] [--max-restarts N]] [--fault-at-step S]\n"
        "                                    [--checkpoint-dir DIR [--resume]] [--progress bar|json|none] [--trace "
        "FILE]\n"
        "       metal-compute run FILE.metal --function NAME --arg SPEC ...  (your own kernel: run FILE --help)\n\n"
        "Runs a Gray-Scott reaction-diffusion simulation through the runner: chunks of work under a time\n"
        "budget, several in flight, checkpoints, and replay after a fault. Writes the final field as a PNG\n"
        "and prints a summary.\n\n"
        "  --device D            cpu, cuda, metal[:N] (default: $MC_DEVICE or the best present)\n"
        "  --size N              grid of N x N cells (default 256)\n"
        "  --steps N             time steps (default 10000)\n"
        "  --budget-ms MS        device time per command buffer (default 25)\n"
        "  --checkpoint-ms MS    time between checkpoints (default 1000)\n"
        "  --checkpoint-dir DIR  also write each checkpoint to DIR (atomically, checksummed; the last two kept)\n"
        "  --resume              continue from the newest valid checkpoint in DIR (none there: from the start)\n"
        "  --progress MODE       bar (default on a terminal), json (one object per line on stderr) or none\n"
        "  --out FILE.png        the image (default gray-scott.png)\n"
        "  --trace FILE          write a Chrome Trace Event JSON file of the run (docs/TRACE.md), also on error\n"
        "  --inject-faults SPEC  the Nth command buffer of the run fails with KIND: timeout, page-fault,\n"
        "                        access-revoked, device-lost or internal (e.g. timeout@3,device-lost@6);\n"
        "                        with --isolate also kill (the worker dies by SIGKILL) and hang (it stops\n"
        "                        answering), N counted over the whole run (e.g. kill@5,hang@9,device-lost@12)\n"
        "  --isolate             run the device work in a worker process that is replaced when it faults\n"
        "                        for good, dies or hangs; this process never opens the device\n"
        "  --deadline-ms MS      with --isolate: a worker silent this long is hung (default 10000)\n"
        "  --max-restarts N      with --isolate: restarts in a row without progress (default 5)\n"
        "  --fault-at-step S     test hook: step S writes out of bounds, once per run (CUDA: an illegal\n"
        "                        address that poisons the process; cpu: SIGSEGV; metal: a page fault)\n");
}

/* Whether a size x size run fits, before any of it is allocated: a size
 * that is accepted must run. One field (u, v per cell) is 8 bytes a cell;
 * the device holds two (ping-pong) and the runner's two checkpoint copies
 * of each; the host holds the seed, the runner's two copies of each, the
 * field read back and the image; an isolated run adds the shared state
 * area and the worker's own copies. Device memory counts against the
 * host's when they are one (the CPU device, unified memory). info: the
 * device when this process opened it, else NULL (isolated). 0 or 2. */
static int gs_check_memory(uint32_t size, bool isolate, const char *device, const mc_device_info *info)
{
    double field = (double)size * size * 2 * sizeof(float), gib = 1024.0 * 1024 * 1024;
    double on_device = 6 * field, on_host = 7.4 * field + (isolate ? 8 * field : 0);
    if (info && info->max_buffer_size && field > (double)info->max_buffer_size) {
        fprintf(stderr, "metal-compute run: --size %u needs buffers of %.2f GiB; the device's limit is %.2f GiB\n",
                size, field / gib, (double)info->max_buffer_size / gib);
        return 2;
    }
    const char *spec = device ? device : getenv("MC_DEVICE");
    bool shared = info ? info->kind == MC_DEVICE_CPU || info->unified_memory : !(spec && !strncmp(spec, "cuda", 4));
    if (shared) on_host += on_device;
    long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    double have = pages > 0 && page > 0 ? (double)pages * (double)page : 0;
    if (have > 0 && on_host > have) {
        fprintf(stderr,
                "metal-compute run: --size %u needs about %.1f GiB of host memory (%.2f GiB a field; %s); this "
                "machine has %.1f GiB\n",
                size, on_host / gib, field / gib,
                shared ? "the device's memory is the host's" : "not counting the device's", have / gib);
        return 2;
    }
    return 0;
}

static bool parse_u32(const char *s, uint32_t lo, uint32_t hi, uint32_t *out)
{
    char *end;
    unsigned long long v = strtoull(s, &end, 10);
    if (!*s || *end || v < lo || v > hi) return false;
    *out = (uint32_t)v;
    return true;
}

static int run_gray_scott(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--mpi")) continue;
#ifdef MC_HAVE_MPI
        return mc_cli_run_gray_scott_mpi(argc, argv);
#else
        fprintf(stderr, "metal-compute run: --mpi: this build has no MPI (install Open MPI and rebuild)\n");
        return 2;
#endif
    }
    const char *device = NULL, *out = "gray-scott.png", *faults = NULL, *ckpt_dir = NULL, *trace = NULL;
    mc_run_progress_mode pmode = MC_RUN_PROGRESS_AUTO;
    bool resume = false;
    uint32_t size = 256, steps = 10000, max_restarts = 0, fault_at = 0;
    double budget = 0, checkpoint = 0, deadline = 0;
    bool isolate = false, fault_set = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            run_usage();
            return 0;
        } else if (i + 1 < argc && !strcmp(a, "--device")) {
            device = argv[++i];
        } else if (i + 1 < argc && !strcmp(a, "--size")) {
            if (!parse_u32(argv[++i], 16, 16384, &size)) {
                fprintf(stderr, "metal-compute run: --size takes 16 to 16384\n");
                return 2;
            }
        } else if (i + 1 < argc && !strcmp(a, "--steps")) {
            if (!parse_u32(argv[++i], 1, 2000000000u, &steps)) {
                fprintf(stderr, "metal-compute run: --steps takes 1 to 2000000000\n");
                return 2;
            }
        } else if (i + 1 < argc && !strcmp(a, "--budget-ms")) {
            char *end;
            budget = strtod(argv[++i], &end);
            if (*end || !(budget > 0 && budget <= 60000)) {
                fprintf(stderr, "metal-compute run: --budget-ms takes a number of milliseconds above 0\n");
                return 2;
            }
        } else if (i + 1 < argc && !strcmp(a, "--checkpoint-ms")) {
            char *end;
            checkpoint = strtod(argv[++i], &end);
            if (*end || !(checkpoint > 0 && checkpoint <= 3600000)) {
                fprintf(stderr, "metal-compute run: --checkpoint-ms takes a number of milliseconds above 0\n");
                return 2;
            }
        } else if (!strcmp(a, "--isolate")) {
            isolate = true;
        } else if (i + 1 < argc && !strcmp(a, "--deadline-ms")) {
            char *end;
            deadline = strtod(argv[++i], &end);
            if (*end || !(deadline >= 250 && deadline <= 3600000)) {
                fprintf(stderr, "metal-compute run: --deadline-ms takes 250 to 3600000 milliseconds\n");
                return 2;
            }
        } else if (i + 1 < argc && !strcmp(a, "--max-restarts")) {
            if (!parse_u32(argv[++i], 1, 1000, &max_restarts)) {
                fprintf(stderr, "metal-compute run: --max-restarts takes 1 to 1000\n");
                return 2;
            }
        } else if (i + 1 < argc && !strcmp(a, "--fault-at-step")) {
            if (!parse_u32(argv[++i], 0, 2000000000u, &fault_at)) {
                fprintf(stderr, "metal-compute run: --fault-at-step takes a step number\n");
                return 2;
            }
            fault_set = true;
        } else if (i + 1 < argc && !strcmp(a, "--out")) {
            out = argv[++i];
        } else if (i + 1 < argc && !strcmp(a, "--checkpoint-dir")) {
            ckpt_dir = argv[++i];
        } else if (!strcmp(a, "--resume")) {
            resume = true;
        } else if (i + 1 < argc && !strcmp(a, "--progress")) {
            if (!mc_run_progress_parse(argv[++i], &pmode)) {
                fprintf(stderr, "metal-compute run: --progress takes bar, json or none\n");
                return 2;
            }
        } else if (i + 1 < argc && !strcmp(a, "--inject-faults")) {
            faults = argv[++i];
        } else if (i + 1 < argc && !strcmp(a, "--trace")) {
            trace = argv[++i];
        } else {
            fprintf(stderr, "metal-compute run: unknown or incomplete option '%s'\n", a);
            run_usage();
            return 2;
        }
    }

    if (!isolate && (deadline > 0 || max_restarts > 0)) {
        fprintf(stderr, "metal-compute run: --deadline-ms and --max-restarts need --isolate\n");
        return 2;
    }
    if (resume && !ckpt_dir) {
        fprintf(stderr, "metal-compute run: --resume needs --checkpoint-dir DIR\n");
        return 2;
    }
    if (fault_set && fault_at >= steps) {
        fprintf(stderr, "metal-compute run: --fault-at-step must be below --steps (%u)\n", steps);
        return 2;
    }

    int mrc = gs_check_memory(size, isolate, device, NULL);
    if (mrc) return mrc;

    /* A long run should not end in "cannot write". */
    mc_status cs = mc__outfile_check(out);
    if (cs != MC_OK) {
        mc_cli_fail("--out", cs);
        return 2;
    }
    if (trace && mc_cli_trace_begin(trace, isolate) != 0) return 2;

    gs_job job;
    memset(&job, 0, sizeof job);
    job.size = size;
    /* Karl Sims's coral: grows from the seeds until it fills the field. */
    job.params = (gs_params){size, size, 1.0f, 0.5f, 0.0545f, 0.062f, 1.0f, 0u};
    mc_run_report_init(&job.report, pmode);
    job.seed = gs_seed(size);
    if (!job.seed) return mc_cli_fail("gray-scott", MC_ERR_NO_MEMORY);
    job.cached = isolate;
    if (fault_set) {
        job.fault_step = fault_at + 1;
        void *page = mmap(NULL, sizeof *job.fault_armed, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
        if (page == MAP_FAILED) {
            gs_job_free(&job);
            return mc_cli_fail("gray-scott", MC_ERR_NO_MEMORY);
        }
        job.fault_armed = page;
    }

    /* Isolated, the worker opens the device; this process never does. */
    mc_device *dev;
    mc_device_info info;
    mc_isolate_desc iso;
    if (mc_cli_open_target(device, isolate, deadline, max_restarts, faults, &dev, &info, &iso)) {
        gs_job_free(&job);
        return 1;
    }
    if (dev) {
        if ((mrc = gs_check_memory(size, false, device, &info)) != 0) {
            mc_device_release(dev);
            gs_job_free(&job);
            return mrc;
        }
    }

    mc_runner_desc desc = MC_RUNNER_DESC_INIT;
    mc_run_report_desc(&desc, dev, isolate ? &iso : NULL, budget, checkpoint, ckpt_dir, resume, &job.report);
    desc.setup = gs_setup;
    desc.teardown = gs_teardown;
    desc.user = &job;
    desc.threadgroups = (mc_size3){(size + GS_GROUP - 1) / GS_GROUP, (size + GS_GROUP - 1) / GS_GROUP, 1};
    desc.threads_per_threadgroup = (mc_size3){GS_GROUP, GS_GROUP, 1};
    desc.total_iterations = steps;
    desc.iteration_arg = 2;
    desc.label = "gray-scott";
    /* What makes two runs the same run: a checkpoint of another size or
     * length is refused on --resume. */
    char params[96];
    snprintf(params, sizeof params, "gray-scott v1 size %u steps %u", size, steps);
    desc.run_params = params;
    desc.run_params_len = strlen(params);
    mc_runner *r = NULL;
    mc_status s = mc_runner_create(&desc, &r);
    if (s != MC_OK) {
        mc_cli_fail(s == MC_ERR_INVALID_ARGUMENT && isolate && faults ? "--inject-faults" : "gray-scott", s);
        mc_device_release(dev);
        gs_job_free(&job);
        return s == MC_ERR_INVALID_ARGUMENT ? 2 : 1;
    }
    /* Counted from here: the runner's command buffers are the only ones.
     * (Isolated, the worker schedules them, counted over the whole run.) */
    if (!isolate && faults && (s = mc_device_inject_faults(dev, faults)) != MC_OK) {
        mc_cli_fail("--inject-faults", s);
        mc_runner_release(r);
        mc_device_release(dev);
        gs_job_free(&job);
        return 2;
    }
    mc_device_release(dev); /* the runner holds its own (and replaces it after a loss) */
    mc_cli_trace_watch_signals();

    mc_runner_stats st;
    mc_isolate_stats ist;
    s = mc_run_report_run(r, isolate, &st, &ist, &info);
    if (s != MC_OK) {
        mc_cli_fail("gray-scott", s);
        mc_runner_release(r);
        gs_job_free(&job);
        return 1;
    }

    /* Step i writes B when i is even: after an even number of steps the
     * field is in A. */
    size_t cells = (size_t)size * size;
    float *field = malloc(cells * 2 * sizeof *field);
    uint8_t *rgb = malloc(cells * 3);
    int rc = 1;
    if (!field || !rgb) {
        mc_cli_fail("gray-scott", MC_ERR_NO_MEMORY);
    } else if ((s = mc_runner_state_read(r, steps % 2, field, cells * 2 * sizeof *field)) != MC_OK) {
        mc_cli_fail("reading the field", s);
    } else {
        for (size_t i = 0; i < cells; i++) gs_colour(field[2 * i + 1], rgb + 3 * i);
        rc = write_png(out, rgb, size, size);
    }
    if (rc == 0) {
        printf("gray-scott %ux%u on %s:%d (%s)\n", size, size, mc_device_kind_name(info.kind), info.index, info.name);
        mc_run_report_summary(&st, isolate ? &ist : NULL, ckpt_dir);
        printf("  image        %s\n", out);
    }
    free(field);
    free(rgb);
    mc_runner_release(r);
    gs_job_free(&job);
    return rc;
}

int mc_cli_run(int argc, char **argv)
{
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        run_usage();
        return argc < 2 ? 2 : 0;
    }
    if (!strcmp(argv[1], "gray-scott")) return mc_cli_trace_finish(run_gray_scott(argc - 1, argv + 1));
#ifdef MC_HAVE_MPI
    for (int i = 2; mc_cli_is_kernel_file(argv[1]) && i < argc; i++)
        if (!strcmp(argv[i], "--mpi")) return mc_cli_run_kernel_mpi(argc - 1, argv + 1);
#endif
    if (mc_cli_is_kernel_file(argv[1])) return mc_cli_trace_finish(mc_cli_run_kernel(argc - 1, argv + 1));
    fprintf(stderr, "metal-compute run: unknown job '%s' (gray-scott, or a kernel file: FILE.metal, .c or .cu)\n",
            argv[1]);
    return 2;
}

/* For the --mpi path (cmd_run_mpi.c): the same seed, palette and encoder,
 * so that its image is the same bytes. */
float *mc_cli_gray_scott_seed(uint32_t n)
{
    return gs_seed(n);
}
void mc_cli_gray_scott_colour(float v, uint8_t rgb[3])
{
    gs_colour(v, rgb);
}

void mc_cli_gray_scott_bind(mc_runner_binding *bind, mc_pipeline *pl, mc_buffer *a, mc_buffer *b, const void *params,
                            size_t len)
{
    bind->pipeline = pl;
    bind->state[0] = a;
    bind->state[1] = b;
    bind->state_count = 2;
    bind->args[0].kind = bind->args[1].kind = MC_RUNNER_ARG_BUFFER;
    bind->args[0].buffer = a;
    bind->args[1].buffer = b;
    bind->args[3].kind = MC_RUNNER_ARG_BYTES;
    bind->args[3].bytes = params;
    bind->args[3].len = len;
}
int mc_cli_write_png(const char *path, const uint8_t *rgb, uint32_t w, uint32_t h)
{
    return write_png(path, rgb, w, h);
}
