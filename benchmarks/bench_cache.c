/*
 * metal-compute bench pipeline-cache: how much the pipeline cache saves.
 *
 * Cold: compile a kernel through mc_pipeline_create_from_source with an
 * empty cache folder (a fresh temporary MC_CACHE_DIR), which also archives
 * it. Warm from memory: the same request again in the same process. Warm
 * from disk: new processes (this program, `cache __bench-child`) with
 * MC_CACHE=require, so a miss is an error rather than a silent compile.
 * Every sample uses its own source variant, so every cold sample compiles.
 *
 * The first request of a process pays one-off costs on either path (the
 * compiler's identity, which the key needs, F699; libcrypto; the compiler
 * itself on a compile), so it is compared apart: the first pipeline of a
 * new process from disk against the first pipeline of a new process
 * compiled into an empty folder.
 *
 * Goals (docs/CACHE.md): disk-warm at least 100x faster than cold on the
 * CPU device, 500x on CUDA; Fortnite's archive gave 28x (F698).
 */
#include "bench.h"

#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define FUNCTION "saxpy"

/* Source variant i: the kernel file with a comment that changes the key. */
static char *variant(const char *src, int i)
{
    size_t n = strlen(src) + 64;
    char *s = malloc(n);
    if (s) snprintf(s, n, "%s\n/* pipeline-cache bench variant %d */\n", src, i);
    return s;
}

/* The project's kernels are MSL on every device. */
static mc_language language_of(mc_device_kind k)
{
    (void)k;
    return MC_LANG_MSL;
}

/* Times one request in microseconds; < 0 on failure. */
static double time_create(mc_device *d, mc_language lang, const char *src)
{
    mc_pipeline_source_desc desc = MC_PIPELINE_SOURCE_DESC_INIT;
    desc.language = lang;
    desc.source = src;
    desc.function = FUNCTION;
    mc_pipeline *p = NULL;
    char *log = NULL;
    double t0 = mc_bench_now_us();
    mc_status s = mc_pipeline_create_from_source(d, &desc, &p, &log);
    double t = mc_bench_now_us() - t0;
    if (s != MC_OK) {
        mc_cli_fail("bench pipeline-cache: creating the pipeline", s);
        if (log) fprintf(stderr, "%s\n", log);
        mc_free(log);
        return -1;
    }
    mc_pipeline_release(p);
    return t;
}

/* The new process: `cache __bench-child DEVICE KERNEL_FILE N disk|compile`
 * prints one line per variant 0..N-1 with the microseconds its request
 * took, and checks that each came from disk (or was compiled). */
int mc_bench_pipeline_cache_child(int argc, char **argv)
{
    if (argc != 5 || (strcmp(argv[4], "disk") != 0 && strcmp(argv[4], "compile") != 0)) {
        fprintf(stderr, "metal-compute cache __bench-child: internal use by bench pipeline-cache\n");
        return 2;
    }
    bool from_disk = !strcmp(argv[4], "disk");
    int n = atoi(argv[3]);
    size_t len = 0;
    char *src = mc_cli_read_file(argv[2], &len);
    if (!src || n < 1 || !len) {
        fprintf(stderr, "bench child: cannot read %s\n", argv[2]);
        free(src);
        return 1;
    }
    mc_device *d = mc_cli_open_device(argv[1], MC_TIME_LIMIT_NONE);
    if (!d) {
        free(src);
        return 1;
    }
    mc_device_info info;
    mc_device_get_info(d, &info);
    int rc = 0;
    for (int i = 0; i < n && !rc; i++) {
        char *v = variant(src, i);
        double us = v ? time_create(d, language_of(info.kind), v) : -1;
        free(v);
        if (us < 0) rc = 1;
        else printf("%.3f\n", us);
    }
    mc_cache_stats s;
    mc_cache_get_stats(d, &s);
    uint64_t want_disk = from_disk ? (uint64_t)n : 0, want_compiles = from_disk ? 0 : (uint64_t)n;
    if (!rc && (s.hits_disk != want_disk || s.compiles != want_compiles)) {
        fprintf(stderr, "bench child: expected %llu loads from disk and %llu compiles, got %llu and %llu\n",
                (unsigned long long)want_disk, (unsigned long long)want_compiles, (unsigned long long)s.hits_disk,
                (unsigned long long)s.compiles);
        rc = 1;
    }
    mc_device_release(d);
    free(src);
    return rc;
}

/* Runs `cache __bench-child DEVICE KERNEL N MODE` in a new process; its
 * samples go to v (at most cap). Returns how many, or -1 when it failed. */
static int run_child(const char *exe, const char *device, const char *kernel, int n, const char *mode, double *v,
                     int cap)
{
    char count[16];
    snprintf(count, sizeof count, "%d", n);
    char *args[] = {(char *)exe, "cache", "__bench-child", (char *)device, (char *)kernel, count, (char *)mode, NULL};
    return mc_bench_run_child("bench pipeline-cache", args, NULL, v, cap);
}

/* Sets name to value, remembering what was there. */
typedef struct saved_env {
    const char *name;
    char *old;
} saved_env;

static void env_set(saved_env *s, const char *name, const char *value)
{
    const char *old = getenv(name);
    s->name = name;
    s->old = old ? strdup(old) : NULL;
    setenv(name, value, 1);
}

static void env_restore(saved_env *s)
{
    if (s->old) setenv(s->name, s->old, 1);
    else unsetenv(s->name);
    free(s->old);
}

int mc_bench_pipeline_cache(mc_bench *b)
{
    int n = b->reps / 10;
    n = n < 5 ? 5 : n > 20 ? 20 : n; /* cold samples: each one really compiles */
    int children = b->quick ? 2 : 3;
    int mem_reps = 20;
    char kernel[PATH_MAX], root[PATH_MAX], exe[PATH_MAX], device[32];
    snprintf(kernel, sizeof kernel, "%s/basic.metal", mc_cli_kernel_dir());
    snprintf(device, sizeof device, "%s:%d", mc_device_kind_name(b->info.kind), b->info.index);
    const char *tmp = getenv("TMPDIR");
    snprintf(root, sizeof root, "%s/mc-bench-cache-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mc_cli_self_exe(exe, sizeof exe)) {
        fprintf(stderr, "bench pipeline-cache: cannot find this program's own path\n");
        return 1;
    }
    if (!mkdtemp(root)) {
        fprintf(stderr, "bench pipeline-cache: cannot create %s: %s\n", root, strerror(errno));
        return 1;
    }
    saved_env e_dir, e_mode;
    env_set(&e_dir, "MC_CACHE_DIR", root);
    env_set(&e_mode, "MC_CACHE", "rw");

    int rc = 1;
    char *src = NULL;
    mc_device *d = NULL;
    double *cold = calloc((size_t)n, sizeof *cold), *mem = calloc((size_t)(n * mem_reps), sizeof *mem);
    double *disk = calloc((size_t)(n * children), sizeof *disk), *first = calloc((size_t)children, sizeof *first);
    double *all = calloc((size_t)n, sizeof *all), *first_cold = calloc((size_t)children, sizeof *first_cold);
    int ndisk = 0, nfirst = 0;
    src = mc_cli_read_file(kernel, NULL);
    if (!src || !cold || !mem || !disk || !first || !all || !first_cold) {
        fprintf(stderr, "bench pipeline-cache: cannot read %s\n", kernel);
        goto out;
    }
    /* a device of its own, so its cache starts empty in the new folder */
    mc_device_desc dd = MC_DEVICE_DESC_INIT;
    dd.kind = b->info.kind;
    dd.index = b->info.index;
    dd.time_limit_ms = MC_TIME_LIMIT_NONE;
    if (mc_device_open(&dd, &d) != MC_OK) {
        mc_cli_fail("bench pipeline-cache: opening the device", MC_ERR_NOT_FOUND);
        goto out;
    }
    mc_language lang = language_of(b->info.kind);
    char *warm = variant(src, -1); /* the compiler's first run and its version, not measured */
    double t = warm ? time_create(d, lang, warm) : -1;
    free(warm);
    if (t < 0) goto out;
    for (int i = 0; i < n; i++) {
        char *v = variant(src, i);
        if (!v || (cold[i] = time_create(d, lang, v)) < 0) {
            free(v);
            goto out;
        }
        for (int k = 0; k < mem_reps; k++)
            if ((mem[i * mem_reps + k] = time_create(d, lang, v)) < 0) {
                free(v);
                goto out;
            }
        free(v);
    }
    mc_cache_stats s;
    mc_cache_get_stats(d, &s);
    if (s.compiles != (uint64_t)n + 1 || s.writes != (uint64_t)n + 1) {
        fprintf(stderr,
                "bench pipeline-cache: %llu of %d compiles reached the archive (is the cache folder "
                "usable? see the warnings above)\n",
                (unsigned long long)s.writes, n + 1);
        goto out;
    }
    mc_device_release(d);
    d = NULL;

    /* cold starts: a new process compiles its first pipeline (into an
     * empty folder of its own) */
    for (int c = 0; c < children; c++) {
        char cold_root[PATH_MAX + 16];
        snprintf(cold_root, sizeof cold_root, "%s/cold-%d", root, c);
        setenv("MC_CACHE_DIR", cold_root, 1);
        if (run_child(exe, device, kernel, 1, "compile", all, n) != 1) {
            fprintf(stderr, "bench pipeline-cache: the new process failed to compile\n");
            goto out;
        }
        first_cold[c] = all[0];
    }
    setenv("MC_CACHE_DIR", root, 1);
    /* new processes, which may only load (a miss would be an error) */
    setenv("MC_CACHE", "require", 1);
    for (int c = 0; c < children; c++) {
        int got = run_child(exe, device, kernel, n, "disk", all, n);
        if (got != n) {
            if (got < 0) fprintf(stderr, "bench pipeline-cache: the new process failed\n");
            else fprintf(stderr, "bench pipeline-cache: the new process failed (%d of %d samples)\n", got, n);
            goto out;
        }
        first[nfirst++] = all[0];
        for (int i = 1; i < n; i++) disk[ndisk++] = all[i];
    }
    double cm = mc_bench_median(cold, n), ci = mc_bench_iqr(cold, n);
    double dm = mc_bench_median(disk, ndisk), di = mc_bench_iqr(disk, ndisk);
    double fm = mc_bench_median(first, nfirst), fi = mc_bench_iqr(first, nfirst);
    double fcm = mc_bench_median(first_cold, children), fci = mc_bench_iqr(first_cold, children);
    double mm = mc_bench_median(mem, n * mem_reps), mi = mc_bench_iqr(mem, n * mem_reps);
    mc_bench_add(b, "pipeline-cache", "warm from disk, new process, per pipeline", "us", dm, di, cm, ci, "cold compile",
                 false);
    mc_bench_add(b, "pipeline-cache", "warm from memory", "us", mm, mi, cm, ci, "cold compile", false);
    mc_bench_add(b, "pipeline-cache", "first pipeline of a new process, from disk", "us", fm, fi, fcm, fci,
                 "compiled in a new process", false);
    double goal = b->info.kind == MC_DEVICE_CPU ? 100 : b->info.kind == MC_DEVICE_CUDA ? 500 : 28;
    double ratio = dm > 0 ? cm / dm : 0;
    printf(
        "pipeline-cache on %s: disk-warm %.0fx faster than cold (goal %.0fx: %s); memory %.0fx; first "
        "pipeline of a new process %.0fx (both pay one-off costs: the compiler's identity, libcrypto)\n",
        device, ratio, goal, ratio >= goal ? "met" : "NOT met", mm > 0 ? cm / mm : 0, fm > 0 ? fcm / fm : 0);
    rc = 0;
out:
    if (d) mc_device_release(d);
    env_restore(&e_mode);
    env_restore(&e_dir);
    mc_bench_remove_tree(root);
    free(src);
    free(cold);
    free(mem);
    free(disk);
    free(first);
    free(first_cold);
    free(all);
    return rc;
}
