/* Durable checkpoints through the library (mc_runner_desc.checkpoint_dir,
 * MC_RUNNER_RESUME): a run stopped half way resumes from its newest file
 * to the bit-identical result; a bit-flipped or truncated newest file is
 * refused with the reason and the older one is used; a file of another run
 * is refused; the folder keeps two. And warm starts: a second process
 * making a pipeline the README's way loads it from the disk cache. */
#include "mc_test.h"

#include <dirent.h>
#include <errno.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define CK_N 1024u
#define CK_ITERS 3000u

typedef struct ck_user {
    mct_rt rt;          /* the runner's user */
    uint64_t cancel_at; /* cancel from the progress callback once past this */
    mc_runner *r;
} ck_user;

static void ck_progress(void *user, const mc_runner_progress *p)
{
    ck_user *u = user;
    if (u->cancel_at && p->iterations >= u->cancel_at) mc_runner_cancel(u->r);
}

static void ck_desc(mc_runner_desc *d, mc_device *dev, ck_user *u, const char *dir, const char *params)
{
    *d = mct_rt_desc(&u->rt, 64, CK_ITERS);
    d->device = dev;
    d->iterations_per_dispatch = 0; /* the default, one */
    d->checkpoint_ms = 1;           /* many checkpoints: the folder must keep only two */
    d->progress = ck_progress;
    d->progress_user = u;
    d->progress_interval_ms = 1;
    d->budget_ms = 2;
    d->checkpoint_dir = dir;
    d->run_params = params;
    d->run_params_len = params ? strlen(params) : 0;
}

static void temp_dir(char *out, size_t cap)
{
    const char *tmp = getenv("TMPDIR");
    snprintf(out, cap, "%s/mc-ckpt-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(out)) out[0] = '\0';
}

static void remove_dir(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *e;
    char p[4096];
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) {
            snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
            remove(p);
        }
    closedir(d);
    rmdir(dir);
}

/* The checkpoint files in dir, newest first (at most max). */
static int list_ckpts(const char *dir, char names[][128], int max)
{
    DIR *d = opendir(dir);
    int n = 0;
    struct dirent *e;
    while (d && (e = readdir(d)))
        if (!strncmp(e->d_name, "checkpoint-", 11) && strlen(e->d_name) < 128 && n < max)
            memcpy(names[n++], e->d_name, strlen(e->d_name) + 1);
    if (d) closedir(d);
    for (int i = 0; i < n; i++) /* names sort by iteration (20 digits) */
        for (int j = i + 1; j < n; j++)
            if (strcmp(names[j], names[i]) > 0) {
                char t[128];
                memcpy(t, names[i], 128);
                memcpy(names[i], names[j], 128);
                memcpy(names[j], t, 128);
            }
    return n;
}

static uint64_t name_iteration(const char *name)
{
    return strtoull(name + 11, NULL, 10);
}

/* Runs with checkpoints to dir and cancels past half way. */
static int first_half(mc_device *dev, const char *dir, const char *params)
{
    ck_user u;
    memset(&u, 0, sizeof u);
    u.rt.params.n = CK_N;
    u.rt.params.spin = 8;
    u.cancel_at = CK_ITERS / 2;
    mc_runner_desc d;
    ck_desc(&d, dev, &u, dir, params);
    CHECK_OK(mc_runner_create(&d, &u.r));
    CHECK_STATUS(mc_runner_run(u.r), MC_ERR_CANCELLED);
    mc_runner_stats st;
    CHECK_OK(mc_runner_get_stats(u.r, &st));
    CHECK_GE(st.checkpoints_written, 3);
    CHECK_LT(st.checkpoint_iteration, CK_ITERS);
    mc_runner_release(u.r);
    return 0;
}

/* Resumes from dir and checks the result against the host model; the
 * iteration it resumed from in *from. */
static int resume_to_end(mc_device *dev, const char *dir, const char *params, uint64_t *from)
{
    ck_user u;
    memset(&u, 0, sizeof u);
    u.rt.params.n = CK_N;
    u.rt.params.spin = 8;
    mc_runner_desc d;
    ck_desc(&d, dev, &u, dir, params);
    d.flags |= MC_RUNNER_RESUME;
    CHECK_OK(mc_runner_create(&d, &u.r));
    mc_runner_stats st;
    CHECK_OK(mc_runner_get_stats(u.r, &st));
    *from = st.resumed_iteration;
    CHECK_OK(mc_runner_run(u.r));
    uint32_t *got = malloc((CK_N + 1) * sizeof *got), *want = mct_rt_reference(CK_N, 8, CK_ITERS);
    CHECK(got && want);
    CHECK_OK(mc_runner_state_read(u.r, 0, got, (CK_N + 1) * sizeof *got));
    /* x[n] counts the iterations this device ran: it went on from the
     * checkpoint's count, so it too is the whole run's. */
    CHECK(!memcmp(got, want, (CK_N + 1) * sizeof *got));
    free(got);
    free(want);
    mc_runner_release(u.r);
    return 0;
}

MC_TEST(checkpoint_dir_resume_is_bit_identical)
{
    mc_device *dev = mct_open_device(0);
    CHECK(dev);
    char dir[512];
    temp_dir(dir, sizeof dir);
    CHECK(dir[0]);
    CHECK_EQ(first_half(dev, dir, "rt spin 8"), 0);
    char names[8][128];
    int n = list_ckpts(dir, names, 8);
    CHECK_EQ(n, 2); /* many written, the last two kept */
    uint64_t newest = name_iteration(names[0]), from = 0;
    CHECK_GT(newest, 0);
    CHECK_EQ(resume_to_end(dev, dir, "rt spin 8", &from), 0);
    CHECK_EQ(from, newest);
    remove_dir(dir);
    mc_device_release(dev);
    return 0;
}

static int damage(const char *dir, const char *name, bool truncate_it)
{
    char p[4096];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    FILE *f = fopen(p, "r+b");
    CHECK(f);
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    CHECK_GT(len, 100);
    if (truncate_it) {
        fclose(f);
        CHECK_EQ(truncate(p, len - 7), 0);
        return 0;
    }
    fseek(f, len / 2, SEEK_SET); /* inside the state */
    int c = fgetc(f);
    fseek(f, len / 2, SEEK_SET);
    fputc(c ^ 0x10, f);
    fclose(f);
    return 0;
}

MC_TEST(checkpoint_corrupt_newest_falls_back_to_older)
{
    mc_device *dev = mct_open_device(0);
    CHECK(dev);
    char dir[512], names[8][128];
    temp_dir(dir, sizeof dir);
    CHECK(dir[0]);
    for (int mode = 0; mode < 2; mode++) {
        CHECK_EQ(first_half(dev, dir, "rt spin 8"), 0);
        CHECK_EQ(list_ckpts(dir, names, 8), 2);
        uint64_t older = name_iteration(names[1]), from = 0;
        CHECK_EQ(damage(dir, names[0], mode == 1), 0);
        CHECK_EQ(resume_to_end(dev, dir, "rt spin 8", &from), 0);
        CHECK_EQ(from, older);
        remove_dir(dir);
        CHECK_EQ(mkdir(dir, 0700), 0);
    }
    /* Both refused: the run does not start, and says why for each. */
    CHECK_EQ(first_half(dev, dir, "rt spin 8"), 0);
    CHECK_EQ(list_ckpts(dir, names, 8), 2);
    CHECK_EQ(damage(dir, names[0], false), 0);
    CHECK_EQ(damage(dir, names[1], true), 0);
    ck_user u;
    memset(&u, 0, sizeof u);
    u.rt.params.n = CK_N;
    u.rt.params.spin = 8;
    mc_runner_desc d;
    ck_desc(&d, dev, &u, dir, "rt spin 8");
    d.flags |= MC_RUNNER_RESUME;
    CHECK_STATUS(mc_runner_create(&d, &u.r), MC_ERR_INVALID_STATE);
    CHECK_STR_CONTAINS(mc_last_error(), "checksum mismatch");
    CHECK_STR_CONTAINS(mc_last_error(), "truncated");
    remove_dir(dir);
    mc_device_release(dev);
    return 0;
}

MC_TEST(checkpoint_of_another_run_is_refused)
{
    mc_device *dev = mct_open_device(0);
    CHECK(dev);
    char dir[512];
    temp_dir(dir, sizeof dir);
    CHECK(dir[0]);
    CHECK_EQ(first_half(dev, dir, "rt spin 8"), 0);
    ck_user u;
    memset(&u, 0, sizeof u);
    u.rt.params.n = CK_N;
    u.rt.params.spin = 8;
    mc_runner_desc d;
    ck_desc(&d, dev, &u, dir, "rt spin 9");
    d.flags |= MC_RUNNER_RESUME;
    CHECK_STATUS(mc_runner_create(&d, &u.r), MC_ERR_INVALID_STATE);
    CHECK_STR_CONTAINS(mc_last_error(), "parameters differ");
    /* An empty folder is a fresh start, not an error. */
    remove_dir(dir);
    CHECK_EQ(mkdir(dir, 0700), 0);
    uint64_t from = 1;
    CHECK_EQ(resume_to_end(dev, dir, "rt spin 9", &from), 0);
    CHECK_EQ(from, 0);
    remove_dir(dir);
    mc_device_release(dev);
    return 0;
}

MC_TEST(checkpoint_dir_bad_arguments)
{
    mc_device *dev = mct_open_device(0);
    CHECK(dev);
    ck_user u;
    memset(&u, 0, sizeof u);
    u.rt.params.n = CK_N;
    u.rt.params.spin = 1;
    mc_runner_desc d;
    ck_desc(&d, dev, &u, NULL, NULL);
    d.flags |= MC_RUNNER_RESUME;
    CHECK_STATUS(mc_runner_create(&d, &u.r), MC_ERR_INVALID_ARGUMENT);
    CHECK_STR_CONTAINS(mc_last_error(), "checkpoint_dir");
    ck_desc(&d, dev, &u, "", NULL);
    CHECK_STATUS(mc_runner_create(&d, &u.r), MC_ERR_INVALID_ARGUMENT);
    ck_desc(&d, dev, &u, "/tmp", NULL);
    d.run_params_len = 4;
    CHECK_STATUS(mc_runner_create(&d, &u.r), MC_ERR_INVALID_ARGUMENT);
    CHECK_STR_CONTAINS(mc_last_error(), "run_params");
    /* A folder inside a file cannot be made: refused before any work. */
    char file[512], sub[600];
    temp_dir(file, sizeof file);
    CHECK(file[0]);
    rmdir(file);
    FILE *f = fopen(file, "w");
    CHECK(f);
    fclose(f);
    snprintf(sub, sizeof sub, "%s/ck", file);
    ck_desc(&d, dev, &u, sub, NULL);
    CHECK_STATUS(mc_runner_create(&d, &u.r), MC_ERR_IO);
    CHECK_STR_CONTAINS(mc_last_error(), sub);
    remove(file);
    mc_device_release(dev);
    return 0;
}

/* In a child process: makes basic.metal's saxpy the README's way
 * (mc_library_create_from_file + mc_pipeline_create) and exits with
 * 10 + 1 if it came from the disk cache + 2 if it compiled. */
static int child_build(const char *cache_dir)
{
    pid_t pid = fork();
    if (pid < 0) return -1;
    if (pid == 0) {
        setenv("MC_CACHE_DIR", cache_dir, 1);
        unsetenv("MC_CACHE");
        mc_device *d = mct_open_device(0);
        if (!d) _exit(1);
        char path[4096];
        snprintf(path, sizeof path, "%s/examples/kernels/basic.metal", MC_SOURCE_DIR);
        mc_library *lib = NULL;
        mc_pipeline *p = NULL;
        mc_pipeline_desc pd = MC_PIPELINE_DESC_INIT;
        if (mc_library_create_from_file(d, path, MC_LANG_UNSET, NULL, &lib, NULL) != MC_OK) _exit(2);
        pd.library = lib;
        pd.function = "saxpy";
        if (mc_pipeline_create(d, &pd, &p) != MC_OK) _exit(3);
        mc_cache_stats st;
        if (mc_cache_get_stats(d, &st) != MC_OK) _exit(4);
        mc_pipeline_release(p);
        mc_library_release(lib);
        mc_device_release(d);
        _exit(10 + (st.hits_disk ? 1 : 0) + (st.compiles ? 2 : 0));
    }
    int ws = 0;
    if (waitpid(pid, &ws, 0) != pid || !WIFEXITED(ws)) return -1;
    return WEXITSTATUS(ws);
}

/* Only the children open the device: a CUDA or Metal driver initialised
 * here would be unusable in a forked child. */
MC_TEST(warm_start_second_process_loads_from_disk)
{
    char dir[512];
    temp_dir(dir, sizeof dir);
    CHECK(dir[0]);
    CHECK_EQ(child_build(dir), 12); /* the first compiles */
    CHECK_EQ(child_build(dir), 11); /* the second loads, compiles nothing */
    /* The cache's folder holds one entry per device identity folder. */
    char cmd[1200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    CHECK_EQ(system(cmd), 0);
    return 0;
}

MC_TEST(warm_start_off_compiles_in_library_create)
{
    mc_device *d = mct_open_device(0);
    CHECK(d);
    if (mct_device_kind(d) != MC_DEVICE_CPU) MC_SKIP("C source is for the cpu device");
    char dir[512], path[600];
    temp_dir(dir, sizeof dir);
    CHECK(dir[0]);
    snprintf(path, sizeof path, "%s/broken.c", dir);
    FILE *f = fopen(path, "w");
    CHECK(f);
    fputs("#include <mc/mc_cpu_kernel.h>\nMC_KERNEL(broken, 0) { this is not C; }\n", f);
    fclose(f);
    mc_library *lib = NULL;
    char *log = NULL;
    /* Cache on: nothing compiles until a pipeline is made; the error and
     * the compiler's words come from mc_pipeline_create. */
    CHECK_OK(mc_cache_set_mode(d, MC_CACHE_RW));
    CHECK_OK(mc_library_create_from_file(d, path, MC_LANG_UNSET, NULL, &lib, &log));
    mc_pipeline_desc pd = MC_PIPELINE_DESC_INIT;
    pd.library = lib;
    pd.function = "broken";
    mc_pipeline *p = NULL;
    CHECK_STATUS(mc_pipeline_create(d, &pd, &p), MC_ERR_COMPILE);
    CHECK_STR_CONTAINS(mc_last_error(), "this");
    CHECK(p == NULL);
    mc_library_release(lib);
    /* Cache off: compiled (and refused) at once, the log handed back. */
    CHECK_OK(mc_cache_set_mode(d, MC_CACHE_OFF));
    CHECK_STATUS(mc_library_create_from_file(d, path, MC_LANG_UNSET, NULL, &lib, &log), MC_ERR_COMPILE);
    CHECK(log);
    CHECK_STR_CONTAINS(log, "this");
    mc_free(log);
    remove(path);
    rmdir(dir);
    mc_device_release(d);
    return 0;
}

/* An isolated runner resumes from the folder too: the supervisor reads the
 * newest file into the state its workers share, and a worker killed
 * afterwards restarts from there or later, never from the beginning. */
MC_TEST(checkpoint_dir_resume_isolated)
{
    char dir[512], names[8][128];
    temp_dir(dir, sizeof dir);
    CHECK(dir[0]);
    /* The first half in a child: isolated runs must be created before this
     * process opens a device that is not fork-safe (mc_isolate.h). */
    pid_t pid = fork();
    CHECK_GE(pid, 0);
    if (pid == 0) {
        mc_device *dev = mct_open_device(0);
        _exit(dev && first_half(dev, dir, "rt spin 8") == 0 ? 0 : 1);
    }
    int ws = 0;
    CHECK_EQ(waitpid(pid, &ws, 0), pid);
    CHECK(WIFEXITED(ws) && WEXITSTATUS(ws) == 0);
    CHECK_EQ(list_ckpts(dir, names, 8), 2);
    uint64_t newest = name_iteration(names[0]);
    ck_user u;
    memset(&u, 0, sizeof u);
    u.rt.params.n = CK_N;
    u.rt.params.spin = 8;
    mc_isolate_desc iso = MC_ISOLATE_DESC_INIT;
    const char *env = getenv("MC_DEVICE"); /* the device mct_open_device opens */
    iso.device = env && *env ? env : "cpu";
    iso.inject_faults = "kill@3";
    mc_runner_desc d;
    ck_desc(&d, NULL, &u, dir, "rt spin 8");
    d.isolate = &iso;
    d.progress = NULL;
    d.flags |= MC_RUNNER_RESUME;
    CHECK_OK(mc_runner_create(&d, &u.r));
    CHECK_OK(mc_runner_run(u.r));
    mc_runner_stats st;
    CHECK_OK(mc_runner_get_stats(u.r, &st));
    CHECK_EQ(st.resumed_iteration, newest);
    CHECK_EQ(st.worker_restarts, 1);
    CHECK_GE(st.checkpoints_written, 1);
    uint32_t *got = malloc((CK_N + 1) * sizeof *got), *want = mct_rt_reference(CK_N, 8, CK_ITERS);
    CHECK(got && want);
    CHECK_OK(mc_runner_state_read(u.r, 0, got, (CK_N + 1) * sizeof *got));
    CHECK(!memcmp(got, want, (CK_N + 1) * sizeof *got));
    free(got);
    free(want);
    mc_runner_release(u.r);
    remove_dir(dir);
    return 0;
}
