/* Isolated runs: the runner and the stream in a supervised worker process.
 * A worker killed by a signal, one that hangs past the deadline, one whose
 * device is lost: each run ends with the same bits as an undisturbed one.
 * Restarts past the bound end with a clear error. After every run no
 * process, shared-memory object or descriptor of it is left. Also the
 * runner's hooks the isolation layer is built on (restore, on_checkpoint,
 * MC_RUNNER_NO_REOPEN), the refusal after a device that is not fork-safe,
 * argument checks, and the gray-scott command with --isolate. */
#include "mc_test.h"

#include "engine/engine.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/prctl.h>
#endif

#define IT_N 1024u
#define IT_GROUP 64u
#define IT_DEADLINE_MS 1000.0

/* ---- leftovers ------------------------------------------------------------ */

typedef struct leftovers {
    char shm[64][256];
    int nshm;
    int fds;
} leftovers;

static bool ours(const char *name)
{
    return !strncmp(name, "mc-", 3) || strstr(name, "metal-compute") != NULL;
}

static int count_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    if (!d) d = opendir("/dev/fd");
    if (!d) return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d))) n += e->d_name[0] != '.';
    closedir(d);
    return n;
}

/* Before a run: orphans become our children (so waitpid sees every process
 * a run left), and what /dev/shm and our descriptors hold. */
static void leftovers_begin(leftovers *l)
{
#ifdef __linux__
    prctl(PR_SET_CHILD_SUBREAPER, 1);
#endif
    memset(l, 0, sizeof *l);
    DIR *d = opendir("/dev/shm");
    struct dirent *e;
    while (d && (e = readdir(d)) && l->nshm < 64)
        if (ours(e->d_name)) snprintf(l->shm[l->nshm++], sizeof l->shm[0], "%s", e->d_name);
    if (d) closedir(d);
    l->fds = count_fds();
}

/* After a run: no process, no shared-memory object, no descriptor left. */
static int leftovers_none(const leftovers *l)
{
    int st;
    errno = 0;
    pid_t p = waitpid(-1, &st, WNOHANG);
    if (p != -1 || errno != ECHILD) {
        fprintf(stderr, "a process is left: waitpid gave %d\n", (int)p);
        return 1;
    }
    DIR *d = opendir("/dev/shm");
    struct dirent *e;
    while (d && (e = readdir(d))) {
        if (!ours(e->d_name)) continue;
        bool before = false;
        for (int i = 0; i < l->nshm; i++) before = before || !strcmp(l->shm[i], e->d_name);
        if (!before) {
            fprintf(stderr, "left in /dev/shm: %s\n", e->d_name);
            closedir(d);
            return 1;
        }
    }
    if (d) closedir(d);
    size_t len = 0;
    char *maps = mct_read_file("/proc/self/maps", &len);
    if (maps && strstr(maps, "memfd:metal-compute")) {
        fprintf(stderr, "a shared-memory file is still mapped\n");
        free(maps);
        return 1;
    }
    free(maps);
    if (l->fds >= 0 && count_fds() != l->fds) {
        fprintf(stderr, "descriptors: %d before, %d after\n", l->fds, count_fds());
        return 1;
    }
    return 0;
}

/* ---- the runner's fixture: examples/kernels/runner_test.* ------------------ */

typedef mct_rt_params it_params;
typedef mct_rt it_user;

static mc_runner_desc it_desc(it_user *u, uint64_t total, const mc_isolate_desc *iso)
{
    mc_runner_desc d = mct_rt_desc(u, IT_GROUP, total);
    /* One or a few dispatches per chunk on any device: many chunks in a
     * short run, so the faults (counted in command buffers) land mid-run. */
    d.budget_ms = 0.01;
    d.checkpoint_ms = 20;
    d.isolate = iso;
    d.label = "it";
    return d;
}

/* The workers' device: $MC_DEVICE (a GPU run of the suite), else the CPU.
 * Results are checked against the host, so every device must agree. */
static mc_isolate_desc it_iso(const char *faults)
{
    mc_isolate_desc iso = MC_ISOLATE_DESC_INIT;
    const char *env = getenv("MC_DEVICE");
    iso.device = env && *env ? env : "cpu";
    iso.deadline_ms = IT_DEADLINE_MS;
    iso.inject_faults = faults;
    return iso;
}

typedef struct it_progress {
    uint64_t last;
    int calls, backwards, done;
    uint32_t restarts;
} it_progress;

static void it_on_progress(void *user, const mc_runner_progress *p)
{
    it_progress *l = user;
    if (p->iterations < l->last) l->backwards++;
    l->last = p->iterations;
    l->calls++;
    l->done += p->done;
    l->restarts = p->worker_restarts;
}

/* One isolated run with faults; the final state must be the host's. */
static int it_run(const char *faults, uint64_t iters, uint32_t spin, double checkpoint_ms, mc_runner_stats *st,
                  mc_isolate_stats *ist)
{
    leftovers lo;
    leftovers_begin(&lo);
    it_user u;
    memset(&u, 0, sizeof u);
    u.params = (it_params){IT_N, spin, 0};
    mc_isolate_desc iso = it_iso(faults);
    mc_runner_desc d = it_desc(&u, iters, &iso);
    if (checkpoint_ms > 0) d.checkpoint_ms = checkpoint_ms;
    it_progress prog;
    memset(&prog, 0, sizeof prog);
    d.progress = it_on_progress;
    d.progress_user = &prog;
    d.progress_interval_ms = 5;
    mc_runner *r;
    CHECK_OK(mc_runner_create(&d, &r));
    CHECK(mc_runner_device(r) == NULL); /* this process has no device */
    CHECK_EQ(mc_runner_state_size(r, 0), (IT_N + 1) * 4);
    uint64_t t0 = mc__test_now_ns();
    CHECK_OK(mc_runner_run(r));
    double ms = (double)(mc__test_now_ns() - t0) / 1e6;
    CHECK_OK(mc_runner_get_stats(r, st));
    CHECK_OK(mc_runner_get_isolate_stats(r, ist));
    fprintf(stderr,
            "%s: %llu iterations in %.0f ms, %llu chunks, %llu checkpoints, %u workers (restarts %u: device %u, died "
            "%u, hung %u; last: %s); restart %.1f ms (reap %.1f, start %.1f, resume %.1f); first start %.1f ms; "
            "restored at %llu\n",
            faults ? faults : "no faults", (unsigned long long)st->iterations, ms, (unsigned long long)st->chunks,
            (unsigned long long)st->checkpoints, ist->workers, ist->restarts, ist->device_errors, ist->deaths,
            ist->hangs, ist->last_cause_text, ist->restart_ms_last, ist->reap_ms_last, ist->ready_ms_last,
            ist->resume_ms_last, ist->start_ms, (unsigned long long)ist->restored_iteration);
    CHECK_EQ(st->iterations, iters);
    CHECK_EQ(st->worker_restarts, ist->restarts);
    CHECK_EQ(prog.backwards, 0);
    CHECK_EQ(prog.done, 1);
    CHECK_EQ(prog.last, iters);
    CHECK_EQ(prog.restarts, ist->restarts);
    CHECK(ist->device.name[0] != '\0');
    CHECK_EQ(ist->worker_pid, 0);
    uint32_t *got = malloc((IT_N + 1) * 4), *want = mct_rt_reference(u.params.n, u.params.spin, iters);
    CHECK(got && want);
    CHECK_OK(mc_runner_state_read(r, 0, got, (IT_N + 1) * 4));
    for (uint32_t i = 0; i <= IT_N; i++) {
        if (got[i] != want[i]) {
            fprintf(stderr, "x[%u] = %u, want %u\n", i, got[i], want[i]);
            return 1;
        }
    }
    free(got);
    free(want);
    CHECK_EQ(u.setups, 0); /* setup ran in the workers, never here */
    mc_runner_release(r);
    CHECK_EQ(leftovers_none(&lo), 0);
    return 0;
}

MC_TEST(isolate_runner_undisturbed_matches_the_host)
{
    mc_runner_stats st;
    mc_isolate_stats ist;
    CHECK_EQ(it_run(NULL, 400, 16, 0, &st, &ist), 0);
    CHECK_EQ(ist.workers, 1);
    CHECK_EQ(ist.restarts, 0);
    CHECK_GT(ist.start_ms, 0);
    return 0;
}

MC_TEST(isolate_runner_survives_a_killed_worker)
{
    mc_runner_stats st;
    mc_isolate_stats ist;
    CHECK_EQ(it_run("kill@6", 400, 16, 0, &st, &ist), 0);
    CHECK_EQ(ist.restarts, 1);
    CHECK_EQ(ist.deaths, 1);
    CHECK_EQ(ist.last_signal, SIGKILL);
    CHECK_EQ(ist.last_cause, MC_ERR_WORKER_LOST);
    CHECK_STR_CONTAINS(ist.last_cause_text, "killed by signal 9");
    CHECK_GT(ist.restart_ms_last, 0);
    return 0;
}

MC_TEST(isolate_runner_survives_a_hung_worker)
{
    mc_runner_stats st;
    mc_isolate_stats ist;
    uint64_t t0 = mc__test_now_ns();
    CHECK_EQ(it_run("hang@7", 400, 16, 0, &st, &ist), 0);
    double ms = (double)(mc__test_now_ns() - t0) / 1e6;
    CHECK_EQ(ist.restarts, 1);
    CHECK_EQ(ist.hangs, 1);
    CHECK_STR_CONTAINS(ist.last_cause_text, "sent nothing for 1000 ms");
    CHECK_GE(ms, IT_DEADLINE_MS); /* found by the deadline, not before */
    return 0;
}

MC_TEST(isolate_runner_survives_device_loss)
{
    /* The page fault is mended inside the worker (a new queue); the lost
     * device takes a new worker. */
    mc_runner_stats st;
    mc_isolate_stats ist;
    CHECK_EQ(it_run("page-fault@3,device-lost@9", 400, 16, 0, &st, &ist), 0);
    CHECK_EQ(ist.restarts, 1);
    CHECK_EQ(ist.device_errors, 1);
    CHECK_EQ(ist.last_cause, MC_ERR_DEVICE_LOST);
    CHECK_EQ(st.page_faults, 1);
    CHECK_EQ(st.devices_lost, 1);
    CHECK_EQ(st.device_reopens, 0); /* never in the worker: a new process instead */
    return 0;
}

MC_TEST(isolate_runner_survives_kill_hang_and_device_loss_in_one_run)
{
    mc_runner_stats st;
    mc_isolate_stats ist;
    CHECK_EQ(it_run("kill@5,hang@9,device-lost@12", 400, 16, 0, &st, &ist), 0);
    CHECK_EQ(ist.restarts, 3);
    CHECK_EQ(ist.deaths, 1);
    CHECK_EQ(ist.hangs, 1);
    CHECK_EQ(ist.device_errors, 1);
    CHECK_EQ(ist.workers, 4);
    return 0;
}

MC_TEST(isolate_runner_restarts_from_the_last_checkpoint)
{
    /* A kill three quarters into the run (in command buffers, measured by
     * an undisturbed run on this device), after several checkpoints (every
     * 5 ms): the new worker starts from one, not from iteration 0. */
    mc_runner_stats st;
    mc_isolate_stats ist;
    CHECK_EQ(it_run(NULL, 12000, 16, 5, &st, &ist), 0);
    CHECK_GT(st.chunks_submitted, 8);
    char spec[64];
    snprintf(spec, sizeof spec, "kill@%llu", (unsigned long long)(st.chunks_submitted * 3 / 4));
    CHECK_EQ(it_run(spec, 12000, 16, 5, &st, &ist), 0);
    CHECK_EQ(ist.restarts, 1);
    CHECK_GT(ist.restored_iteration, 0);
    CHECK_LT(ist.restored_iteration, 12000);
    CHECK_GT(st.checkpoints, 1);
    return 0;
}

/* Issue 15: faults every 50 command buffers, alternating kill and hang,
 * with checkpoints too far apart to be taken on time. Each new worker must
 * checkpoint as soon as it passes where the last one failed, and a worker
 * that reaches a new iteration is progress: the run completes. */
MC_TEST(isolate_runner_keeps_progress_under_faults_every_50_command_buffers)
{
    char faults[512] = "";
    for (int i = 1; i <= 10; i++) {
        size_t len = strlen(faults);
        snprintf(faults + len, sizeof faults - len, "%s%s@%d", i > 1 ? "," : "", i % 2 ? "kill" : "hang", 50 * i);
    }
    leftovers lo;
    leftovers_begin(&lo);
    it_user u;
    memset(&u, 0, sizeof u);
    u.params = (it_params){IT_N, 16, 0};
    mc_isolate_desc iso = it_iso(faults);
    /* Hangs are found at the deadline: short on the CPU device; a GPU
     * worker's first chunks (module loading) can take longer than 250 ms. */
    const char *env = getenv("MC_DEVICE");
    iso.deadline_ms = !env || !*env || !strncmp(env, "cpu", 3) ? 250 : 2000;
    iso.max_restarts = 2;
    uint64_t iters = 4000;
    mc_runner_desc d = it_desc(&u, iters, &iso);
    d.checkpoint_ms = 600000; /* only the checkpoints taken past a failure */
    mc_runner *r;
    CHECK_OK(mc_runner_create(&d, &r));
    mc_status s = mc_runner_run(r);
    mc_runner_stats st;
    mc_isolate_stats ist;
    CHECK_OK(mc_runner_get_stats(r, &st));
    CHECK_OK(mc_runner_get_isolate_stats(r, &ist));
    fprintf(stderr, "%s: %s; %llu iterations, %u restarts (died %u, hung %u), %llu checkpoints\n", faults,
            s == MC_OK ? "done" : mc_last_error(), (unsigned long long)st.iterations, ist.restarts, ist.deaths,
            ist.hangs, (unsigned long long)st.checkpoints);
    CHECK_OK(s);
    CHECK_EQ(st.iterations, iters);
    if (iso.deadline_ms < 1000) {
        CHECK_EQ(ist.deaths, 5);
        CHECK_EQ(ist.hangs, 5);
    } else {
        /* A GPU worker killed while its driver releases the device can take
         * longer than the deadline to exit, and is then ended as hung. */
        CHECK_EQ(ist.deaths + ist.hangs, 10);
        CHECK_GE(ist.hangs, 5);
    }
    uint32_t *got = malloc((IT_N + 1) * 4), *want = mct_rt_reference(u.params.n, u.params.spin, iters);
    CHECK(got && want);
    CHECK_OK(mc_runner_state_read(r, 0, got, (IT_N + 1) * 4));
    CHECK_EQ(memcmp(got, want, (IT_N + 1) * 4), 0);
    free(got);
    free(want);
    mc_runner_release(r);
    CHECK_EQ(leftovers_none(&lo), 0);
    return 0;
}

MC_TEST(isolate_runner_gives_up_past_the_restart_bound)
{
    leftovers lo;
    leftovers_begin(&lo);
    it_user u;
    memset(&u, 0, sizeof u);
    u.params = (it_params){IT_N, 16, 0};
    /* Every worker dies at its first command buffer: no progress, ever. */
    mc_isolate_desc iso = it_iso("kill@1,kill@2,kill@3,kill@4,kill@5,kill@6");
    iso.max_restarts = 2;
    mc_runner_desc d = it_desc(&u, 400, &iso);
    mc_runner *r;
    CHECK_OK(mc_runner_create(&d, &r));
    CHECK_STATUS(mc_runner_run(r), MC_ERR_WORKER_LOST);
    const char *msg = mc_last_error();
    fprintf(stderr, "%s\n", msg);
    CHECK_STR_CONTAINS(msg, "gave up after 2 worker restarts in a row without progress");
    CHECK_STR_CONTAINS(msg, "killed by signal 9");
    CHECK_STR_CONTAINS(msg, "last good iteration 0");
    mc_runner_stats st;
    mc_isolate_stats ist;
    CHECK_OK(mc_runner_get_stats(r, &st));
    CHECK_OK(mc_runner_get_isolate_stats(r, &ist));
    CHECK_EQ(ist.workers, 3);
    CHECK_EQ(ist.restarts, 2);
    CHECK_EQ(st.iterations, 0);
    CHECK_EQ(st.last_failure, MC_ERR_WORKER_LOST);
    /* The last good state stays readable: the initial one. */
    uint32_t *got = malloc((IT_N + 1) * 4), *want = mct_rt_reference(u.params.n, u.params.spin, 0);
    CHECK(got && want);
    CHECK_OK(mc_runner_state_read(r, 0, got, (IT_N + 1) * 4));
    CHECK_EQ(memcmp(got, want, (IT_N + 1) * 4), 0);
    free(got);
    free(want);
    CHECK_STATUS(mc_runner_run(r), MC_ERR_INVALID_STATE);
    mc_runner_release(r);
    CHECK_EQ(leftovers_none(&lo), 0);
    return 0;
}

MC_TEST(isolate_runner_cancels_from_another_thread)
{
    leftovers lo;
    leftovers_begin(&lo);
    it_user u;
    memset(&u, 0, sizeof u);
    u.params = (it_params){IT_N, 16, 0};
    mc_isolate_desc iso = it_iso(NULL);
    mc_runner_desc d = it_desc(&u, 1000000000ull, &iso); /* hours */
    mc_runner *r;
    CHECK_OK(mc_runner_create(&d, &r));
    mct_canceller c = {r, 300, 0};
    pthread_t t;
    CHECK_EQ(pthread_create(&t, NULL, mct_cancel_later, &c), 0);
    CHECK_STATUS(mc_runner_run(r), MC_ERR_CANCELLED);
    uint64_t back = mc__test_now_ns();
    pthread_join(t, NULL);
    CHECK_STR_CONTAINS(mc_last_error(), "cancelled at iteration");
    mc_runner_stats st;
    CHECK_OK(mc_runner_get_stats(r, &st));
    fprintf(stderr, "returned %.1f ms after the cancel, at iteration %llu\n", (double)(back - c.at_ns) / 1e6,
            (unsigned long long)st.iterations);
    CHECK(st.cancelled);
    CHECK_GT(st.iterations, 0);
    CHECK((double)(back - c.at_ns) / 1e6 < 1500);
    /* The state is the one of the iteration reported: the work counter says so. */
    uint32_t *got = malloc((IT_N + 1) * 4);
    CHECK(got);
    CHECK_OK(mc_runner_state_read(r, 0, got, (IT_N + 1) * 4));
    CHECK_EQ(got[IT_N], st.iterations);
    free(got);
    mc_runner_release(r);

    /* Cancelled before it runs; and released without a run. */
    CHECK_OK(mc_runner_create(&d, &r));
    CHECK_OK(mc_runner_cancel(r));
    CHECK_STATUS(mc_runner_run(r), MC_ERR_CANCELLED);
    mc_runner_release(r);
    CHECK_OK(mc_runner_create(&d, &r));
    mc_runner_release(r);
    CHECK_EQ(leftovers_none(&lo), 0);
    return 0;
}

MC_TEST(isolate_refuses_after_a_device_that_is_not_fork_safe)
{
    /* As if this process had opened a CUDA device: the driver would be
     * initialised here, and a forked worker could not use it. */
    mc__fork_unsafe_simulate("cuda");
    it_user u;
    memset(&u, 0, sizeof u);
    u.params = (it_params){IT_N, 1, 0};
    mc_isolate_desc iso = it_iso(NULL);
    mc_runner_desc d = it_desc(&u, 10, &iso);
    mc_runner *r = NULL;
    CHECK_STATUS(mc_runner_create(&d, &r), MC_ERR_INVALID_STATE);
    CHECK_STR_CONTAINS(mc_last_error(), "cuda");
    CHECK_STR_CONTAINS(mc_last_error(), "before opening");
    CHECK(r == NULL);
    mc_stream_desc sd = MC_STREAM_DESC_INIT;
    sd.setup = (mc_stream_setup_fn)1; /* never called */
    sd.teardown = (mc_stream_teardown_fn)1;
    sd.item_size = 4;
    sd.isolate = &iso;
    mc_stream *s = NULL;
    CHECK_STATUS(mc_stream_create(&sd, &s), MC_ERR_INVALID_STATE);
    CHECK(s == NULL);
    mc__fork_unsafe_simulate(NULL);
    /* The CPU device is fork-safe: opening one first is fine. */
    mc_device *dev;
    CHECK_OK(mc_device_open_name("cpu", &dev));
    char why[32];
    CHECK(!mc__fork_unsafe_backend_used(why, sizeof why));
    mc_device_release(dev);
    return 0;
}

MC_TEST(isolate_rejects_bad_arguments)
{
    leftovers lo;
    leftovers_begin(&lo);
    it_user u;
    memset(&u, 0, sizeof u);
    u.params = (it_params){IT_N, 1, 0};
    mc_isolate_desc iso = it_iso(NULL), bad;
    mc_runner_desc good = it_desc(&u, 10, &iso), d;
    mc_runner *r = NULL;

    d = good;
    d.device = (mc_device *)&u; /* not NULL */
    CHECK_STATUS(mc_runner_create(&d, &r), MC_ERR_INVALID_ARGUMENT);
    CHECK_STR_CONTAINS(mc_last_error(), "desc->device must be NULL");
    d = good;
    d.setup = NULL;
    CHECK_STATUS(mc_runner_create(&d, &r), MC_ERR_INVALID_ARGUMENT);
    d = good;
    d.threadgroups.x = 0;
    CHECK_STATUS(mc_runner_create(&d, &r), MC_ERR_INVALID_ARGUMENT);
    d = good;
    d.on_checkpoint = (mc_runner_checkpoint_fn)1;
    CHECK_STATUS(mc_runner_create(&d, &r), MC_ERR_INVALID_ARGUMENT);
    d = good;
    d.flags = 0x80;
    CHECK_STATUS(mc_runner_create(&d, &r), MC_ERR_INVALID_ARGUMENT);
    bad = iso;
    bad.device = "gpu";
    d = good;
    d.isolate = &bad;
    CHECK_STATUS(mc_runner_create(&d, &r), MC_ERR_INVALID_ARGUMENT);
    CHECK_STR_CONTAINS(mc_last_error(), "isolate->device");
    bad = iso;
    bad.deadline_ms = 10;
    CHECK_STATUS(mc_runner_create(&d, &r), MC_ERR_INVALID_ARGUMENT);
    CHECK_STR_CONTAINS(mc_last_error(), "deadline_ms");
    bad = iso;
    bad.inject_faults = "kill@0";
    CHECK_STATUS(mc_runner_create(&d, &r), MC_ERR_INVALID_ARGUMENT);
    bad.inject_faults = "explode@3";
    CHECK_STATUS(mc_runner_create(&d, &r), MC_ERR_INVALID_ARGUMENT);
    CHECK_STR_CONTAINS(mc_last_error(), "unknown fault kind 'explode'");
    bad.inject_faults = "kill@-1";
    CHECK_STATUS(mc_runner_create(&d, &r), MC_ERR_INVALID_ARGUMENT);
    CHECK_STR_CONTAINS(mc_last_error(), "from 1 to");
    bad.inject_faults = "hang@99999999999999999999";
    CHECK_STATUS(mc_runner_create(&d, &r), MC_ERR_INVALID_ARGUMENT);
    bad.inject_faults = "kill@3,hang@3";
    CHECK_STATUS(mc_runner_create(&d, &r), MC_ERR_INVALID_ARGUMENT);
    CHECK_STR_CONTAINS(mc_last_error(), "a command buffer fails once");
    bad.inject_faults = "kill@3,hang@4,timeout@5,device-lost@6";
    CHECK_OK(mc_runner_create(&d, &r));
    mc_runner_release(r);
    r = NULL;
    /* A device that is not there: the worker's error comes back from create. */
    bad = iso;
    bad.device = "cpu:7";
    CHECK_STATUS(mc_runner_create(&d, &r), MC_ERR_NOT_FOUND);
    CHECK_STR_CONTAINS(mc_last_error(), "cpu:7");
    CHECK(r == NULL);
    /* setup's own failure comes back from the worker, as from a plain runner */
    u.fail_setup = MC_ERR_OUT_OF_MEMORY;
    CHECK_STATUS(mc_runner_create(&good, &r), MC_ERR_OUT_OF_MEMORY);
    CHECK_STR_CONTAINS(mc_last_error(), "setup failed");
    CHECK_STR_CONTAINS(mc_last_error(), "on purpose");
    u.fail_setup = MC_OK;

    /* The calls that make no sense for an isolated runner */
    CHECK_OK(mc_runner_create(&good, &r));
    uint32_t word;
    CHECK_STATUS(mc_runner_state_read(r, 0, &word, 4), MC_ERR_INVALID_STATE); /* in the worker until the run ends */
    CHECK_STATUS(mc_runner_state_read(r, 1, &word, 4), MC_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(mc_runner_restore(r, 0, NULL, 1), MC_ERR_UNSUPPORTED);
    mc_runner_stats st;
    CHECK_STATUS(mc_runner_get_stats(r, NULL), MC_ERR_INVALID_ARGUMENT);
    CHECK_OK(mc_runner_get_stats(r, &st));
    mc_isolate_stats ist;
    CHECK_STATUS(mc_runner_get_isolate_stats(r, NULL), MC_ERR_INVALID_ARGUMENT);
    CHECK_OK(mc_runner_get_isolate_stats(r, &ist));
    CHECK_EQ(ist.workers, 1);
    CHECK_GT(ist.worker_pid, 0);
    mc_runner_release(r);
    CHECK_STATUS(mc_runner_get_isolate_stats(NULL, &ist), MC_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(mc_stream_get_isolate_stats(NULL, &ist), MC_ERR_INVALID_ARGUMENT);
    CHECK_EQ(leftovers_none(&lo), 0);

    /* Worker faults need an isolated run: a plain device refuses them clearly. */
    mc_device *dev;
    CHECK_OK(mc_device_open_name("cpu", &dev));
    CHECK_STATUS(mc_device_inject_faults(dev, "timeout@2,kill@3"), MC_ERR_INVALID_ARGUMENT);
    CHECK_STR_CONTAINS(mc_last_error(), "isolated run");
    /* ... and an ordinary runner is not an isolated one */
    mc_runner_desc pd = it_desc(&u, 10, NULL);
    pd.device = dev;
    CHECK_OK(mc_runner_create(&pd, &r));
    CHECK_STATUS(mc_runner_get_isolate_stats(r, &ist), MC_ERR_INVALID_ARGUMENT);
    mc_runner_release(r);
    mc_device_release(dev);
    return 0;
}

/* ---- the runner's hooks ---------------------------------------------------- */

typedef struct it_saved {
    uint64_t iteration;
    uint32_t *state;
    size_t size;
    int calls;
} it_saved;

static void it_keep_first(void *user, uint64_t iteration, const void *const *state, const size_t *sizes, uint32_t n)
{
    it_saved *s = user;
    s->calls++;
    if (s->state || n != 1) return;
    s->state = malloc(sizes[0]);
    if (!s->state) return;
    memcpy(s->state, state[0], sizes[0]);
    s->size = sizes[0];
    s->iteration = iteration;
}

MC_TEST(runner_restore_resumes_from_a_saved_checkpoint)
{
    mc_device *dev;
    CHECK_OK(mc_device_open_name("cpu", &dev));
    it_user u;
    memset(&u, 0, sizeof u);
    u.params = (it_params){IT_N, 16, 0};
    const uint64_t iters = 2000;
    /* A run that hands its checkpoints out; keep the first. */
    it_saved saved;
    memset(&saved, 0, sizeof saved);
    mc_runner_desc d = it_desc(&u, iters, NULL);
    d.device = dev;
    d.on_checkpoint = it_keep_first;
    d.checkpoint_user = &saved;
    d.checkpoint_ms = 5;
    mc_runner *r;
    CHECK_OK(mc_runner_create(&d, &r));
    CHECK_OK(mc_runner_run(r));
    mc_runner_stats st;
    CHECK_OK(mc_runner_get_stats(r, &st));
    CHECK_EQ(saved.calls, (int)st.checkpoints);
    CHECK(saved.state);
    CHECK_GT(saved.iteration, 0);
    CHECK_LT(saved.iteration, iters);
    CHECK_EQ(saved.state[IT_N], saved.iteration); /* the work counter agrees */
    mc_runner_release(r);

    /* A new runner from that checkpoint ends where a whole run does. */
    mc_runner_desc d2 = it_desc(&u, iters, NULL);
    d2.device = dev;
    CHECK_OK(mc_runner_create(&d2, &r));
    const void *state[1] = {saved.state};
    CHECK_STATUS(mc_runner_restore(r, iters + 1, state, 1), MC_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(mc_runner_restore(r, saved.iteration, state, 2), MC_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(mc_runner_restore(NULL, saved.iteration, state, 1), MC_ERR_INVALID_ARGUMENT);
    CHECK_OK(mc_runner_restore(r, saved.iteration, state, 1));
    CHECK_OK(mc_runner_run(r));
    CHECK_OK(mc_runner_get_stats(r, &st));
    CHECK_EQ(st.iterations, iters);
    uint32_t *got = malloc((IT_N + 1) * 4), *want = mct_rt_reference(u.params.n, u.params.spin, iters);
    CHECK(got && want);
    CHECK_OK(mc_runner_state_read(r, 0, got, (IT_N + 1) * 4));
    CHECK_EQ(memcmp(got, want, (IT_N + 1) * 4), 0);
    CHECK_STATUS(mc_runner_restore(r, 0, state, 1), MC_ERR_INVALID_STATE); /* after the run */
    mc_runner_release(r);
    free(got);
    free(want);
    free(saved.state);
    mc_device_release(dev);
    return 0;
}

MC_TEST(runner_no_reopen_ends_the_run_on_device_loss)
{
    mc_device *dev;
    CHECK_OK(mc_device_open_name("cpu", &dev));
    it_user u;
    memset(&u, 0, sizeof u);
    u.params = (it_params){IT_N, 16, 0};
    mc_runner_desc d = it_desc(&u, 2000, NULL);
    d.device = dev;
    d.flags = MC_RUNNER_NO_REOPEN;
    mc_runner *r;
    CHECK_OK(mc_runner_create(&d, &r));
    CHECK_OK(mc_device_inject_faults(dev, "page-fault@2,device-lost@5"));
    CHECK_STATUS(mc_runner_run(r), MC_ERR_DEVICE_LOST);
    CHECK_STR_CONTAINS(mc_last_error(), "MC_RUNNER_NO_REOPEN");
    mc_runner_stats st;
    CHECK_OK(mc_runner_get_stats(r, &st));
    CHECK_EQ(st.page_faults, 1); /* mended as usual */
    CHECK_EQ(st.devices_lost, 1);
    CHECK_EQ(st.device_reopens, 0);
    CHECK_EQ(u.setups, 1);
    /* The last good state is still there, from host memory. */
    uint32_t word[2];
    CHECK_OK(mc_runner_state_read(r, 0, word, sizeof word));
    mc_runner_release(r);
    mc_device_release(dev);
    return 0;
}

/* ---- the stream -------------------------------------------------------------- */

#define IS_N 64u /* floats in an item */

typedef struct is_fixture {
    uint32_t n;
    mc_pipeline *copy, *iota;
} is_fixture;

/* Two passes: the item's floats copied to the output, then the sequence
 * number plus k written after them. */
static mc_status is_setup(void *user, mc_device *dev, mc_stream_binding *b)
{
    is_fixture *f = user;
    f->copy = mct_pipeline(dev, "basic", "copy_f32");
    f->iota = mct_pipeline(dev, "basic", "iota");
    if (!f->copy || !f->iota) {
        mc_pipeline_release(f->copy);
        mc_pipeline_release(f->iota);
        return MC_ERR_COMPILE;
    }
    mc_stream_pass *p = &b->passes[0];
    p->pipeline = f->copy;
    p->threadgroups = (mc_size3){1, 1, 1};
    p->threads_per_threadgroup = (mc_size3){f->n, 1, 1};
    p->args[0].kind = MC_STREAM_ARG_OUTPUT;
    p->args[1].kind = MC_STREAM_ARG_INPUT;
    p->args[2].kind = MC_STREAM_ARG_BYTES;
    p->args[2].bytes = &f->n;
    p->args[2].len = 4;
    p = &b->passes[1];
    p->pipeline = f->iota;
    p->threadgroups = (mc_size3){1, 1, 1};
    p->threads_per_threadgroup = (mc_size3){f->n, 1, 1};
    p->args[0].kind = MC_STREAM_ARG_OUTPUT;
    p->args[0].offset = f->n * 4;
    p->args[1].kind = MC_STREAM_ARG_BYTES;
    p->args[1].bytes = &f->n;
    p->args[1].len = 4;
    p->args[2].kind = MC_STREAM_ARG_SEQUENCE;
    b->pass_count = 2;
    return MC_OK;
}

static void is_teardown(void *user, mc_stream_binding *b)
{
    is_fixture *f = user;
    (void)b;
    mc_pipeline_release(f->copy);
    mc_pipeline_release(f->iota);
    f->copy = f->iota = NULL;
}

static float is_value(uint64_t tag, uint32_t k)
{
    return (float)(tag * 1000u + k) * 0.5f;
}

typedef struct is_log {
    _Atomic int n;
    uint64_t seq[512], tag[512];
    mc_status status[512];
    _Atomic int wrong;
} is_log;

static void is_on_result(void *user, const mc_stream_result *r)
{
    is_log *l = user;
    int i = atomic_fetch_add(&l->n, 1);
    if (i >= 512) return;
    l->seq[i] = r->sequence;
    l->tag[i] = r->tag;
    l->status[i] = r->status;
    if (r->status != MC_OK) return;
    const float *out = r->output;
    const uint32_t *seq = (const uint32_t *)r->output + IS_N;
    for (uint32_t k = 0; k < IS_N; k++)
        if (out[k] != is_value(r->tag, k) || seq[k] != (uint32_t)r->sequence + k) atomic_fetch_add(&l->wrong, 1);
}

static mc_stream_desc is_desc(is_fixture *f, is_log *log, const mc_isolate_desc *iso)
{
    mc_stream_desc sd = MC_STREAM_DESC_INIT;
    sd.setup = is_setup;
    sd.teardown = is_teardown;
    sd.user = f;
    sd.item_size = IS_N * 4;
    sd.result_size = IS_N * 8;
    sd.on_result = log ? is_on_result : NULL;
    sd.result_user = log;
    sd.isolate = iso;
    sd.label = "is";
    return sd;
}

static int is_produce(mc_stream *s, uint64_t first, uint64_t count)
{
    for (uint64_t t = first; t < first + count; t++) {
        mc_stream_slot sl;
        CHECK_OK(mc_stream_acquire(s, MC_WAIT_FOREVER, &sl));
        float *in = sl.input;
        for (uint32_t k = 0; k < IS_N; k++) in[k] = is_value(t, k);
        CHECK_OK(mc_stream_submit(s, sl.index, t));
    }
    return 0;
}

MC_TEST(isolate_stream_survives_kill_hang_and_device_loss)
{
    leftovers lo;
    leftovers_begin(&lo);
    is_fixture f = {IS_N, NULL, NULL};
    static is_log log;
    mc_isolate_desc iso = it_iso("kill@10,hang@25,device-lost@40,page-fault@50");
    mc_stream_desc sd = is_desc(&f, &log, &iso);
    mc_stream *s;
    CHECK_OK(mc_stream_create(&sd, &s));
    CHECK(mc_stream_device(s) == NULL);
    const int items = 120;
    CHECK_EQ(is_produce(s, 0, (uint64_t)items), 0);
    CHECK_OK(mc_stream_close(s, true));
    mc_stream_stats st;
    mc_isolate_stats ist;
    CHECK_OK(mc_stream_get_stats(s, &st));
    CHECK_OK(mc_stream_get_isolate_stats(s, &ist));
    fprintf(
        stderr,
        "%d items: %llu delivered, %llu commits, %llu replays, %u recoveries; %u restarts (device %u, died %u, hung "
        "%u); restart %.1f ms mean, %.1f max\n",
        items, (unsigned long long)st.delivered, (unsigned long long)st.commits, (unsigned long long)st.replays,
        st.recoveries, ist.restarts, ist.device_errors, ist.deaths, ist.hangs, ist.restart_ms_mean, ist.restart_ms_max);
    /* Every item once, in order, right, whatever happened to the workers. */
    CHECK_EQ(atomic_load(&log.n), items);
    for (int i = 0; i < items; i++) {
        CHECK_EQ(log.seq[i], (uint64_t)i + 1);
        CHECK_EQ(log.tag[i], (uint64_t)i);
        CHECK_OK(log.status[i]);
    }
    CHECK_EQ(atomic_load(&log.wrong), 0);
    CHECK_EQ(st.delivered, (uint64_t)items);
    CHECK_EQ(st.failed, 0);
    CHECK_EQ(ist.restarts, 3);
    CHECK_EQ(ist.deaths, 1);
    CHECK_EQ(ist.hangs, 1);
    CHECK_EQ(ist.device_errors, 1);
    CHECK_EQ(st.worker_restarts, 3);
    CHECK_GE(st.recoveries, 1); /* the page fault, inside the worker */
    CHECK_GT(st.replays, 0);
    mc_stream_release(s);
    CHECK_EQ(leftovers_none(&lo), 0);
    return 0;
}

MC_TEST(isolate_stream_pull_mode_and_cancel)
{
    leftovers lo;
    leftovers_begin(&lo);
    is_fixture f = {IS_N, NULL, NULL};
    mc_isolate_desc iso = it_iso("kill@3");
    mc_stream_desc sd = is_desc(&f, NULL, &iso);
    mc_stream *s;
    CHECK_OK(mc_stream_create(&sd, &s));
    for (uint64_t t = 0; t < 8; t++) {
        CHECK_EQ(is_produce(s, t, 1), 0);
        mc_stream_result r;
        CHECK_OK(mc_stream_pull(s, 20ull * 1000000000ull, &r));
        CHECK_OK(r.status);
        CHECK_EQ(r.sequence, t + 1);
        CHECK_EQ(r.tag, t);
        const float *out = r.output;
        const float *in = r.input;
        for (uint32_t k = 0; k < IS_N; k++) {
            CHECK(out[k] == is_value(t, k));
            CHECK(in[k] == is_value(t, k));
        }
        CHECK_OK(mc_stream_release_result(s, &r));
        CHECK_STATUS(mc_stream_release_result(s, &r), MC_ERR_INVALID_ARGUMENT);
    }
    mc_isolate_stats ist;
    CHECK_OK(mc_stream_get_isolate_stats(s, &ist));
    CHECK_EQ(ist.restarts, 1);
    /* Cancel: what is not finished comes back cancelled, exactly once. */
    CHECK_EQ(is_produce(s, 100, 3), 0);
    CHECK_OK(mc_stream_close(s, false));
    int got = 0;
    mc_stream_result r;
    while (mc_stream_pull(s, 0, &r) == MC_OK) {
        CHECK(r.status == MC_OK || r.status == MC_ERR_CANCELLED);
        CHECK_OK(mc_stream_release_result(s, &r));
        got++;
    }
    CHECK_EQ(got, 3);
    mc_stream_slot sl;
    CHECK_STATUS(mc_stream_acquire(s, 0, &sl), MC_ERR_INVALID_STATE);
    mc_stream_release(s);
    CHECK_EQ(leftovers_none(&lo), 0);
    return 0;
}

MC_TEST(isolate_stream_gives_up_past_the_restart_bound)
{
    leftovers lo;
    leftovers_begin(&lo);
    is_fixture f = {IS_N, NULL, NULL};
    static is_log log;
    /* Every worker dies at its first command buffer. */
    mc_isolate_desc iso = it_iso("kill@1,kill@2,kill@3,kill@4,kill@5,kill@6");
    iso.max_restarts = 2;
    mc_stream_desc sd = is_desc(&f, &log, &iso);
    mc_stream *s;
    CHECK_OK(mc_stream_create(&sd, &s));
    CHECK_EQ(is_produce(s, 0, 2), 0);
    CHECK_OK(mc_stream_close(s, true));
    CHECK_EQ(atomic_load(&log.n), 2);
    for (int i = 0; i < 2; i++) CHECK_STATUS(log.status[i], MC_ERR_WORKER_LOST);
    mc_stream_stats st;
    CHECK_OK(mc_stream_get_stats(s, &st));
    CHECK_EQ(st.failed, 2);
    CHECK_EQ(st.worker_restarts, 2);
    mc_stream_release(s);

    /* Dead: acquire says why. */
    CHECK_OK(mc_stream_create(&sd, &s));
    atomic_store(&log.n, 0);
    CHECK_EQ(is_produce(s, 0, 1), 0);
    mc_stream_slot sl;
    mc_status a = MC_OK;
    /* Until a deadline, not a count: a GPU's worker takes seconds to start
     * (driver initialisation), and three must start and die first. */
    uint64_t t0 = mc__test_now_ns();
    while (a == MC_OK && mc__test_now_ns() - t0 < 120000000000ull) {
        a = mc_stream_acquire(s, 100000000ull, &sl);
        if (a == MC_OK) mc_stream_discard(s, sl.index);
        struct timespec ts = {0, 20000000L};
        nanosleep(&ts, NULL);
    }
    CHECK_STATUS(a, MC_ERR_WORKER_LOST);
    CHECK_STR_CONTAINS(mc_last_error(), "worker restarts in a row");
    mc_stream_release(s);
    CHECK_EQ(leftovers_none(&lo), 0);
    return 0;
}

/* ---- the command ---------------------------------------------------------------- */

static int same_file(const char *a, const char *b)
{
    size_t la = 0, lb = 0;
    char *pa = mct_read_file(a, &la), *pb = mct_read_file(b, &lb);
    CHECK(pa && pb);
    CHECK_GT(la, 100);
    CHECK_EQ(memcmp(pa, "\x89PNG", 4), 0);
    CHECK_EQ(la, lb);
    CHECK_EQ(memcmp(pa, pb, la), 0);
    free(pa);
    free(pb);
    return 0;
}

MC_TEST(isolate_gray_scott_command_survives_kill_hang_and_device_loss)
{
    char dir[] = "/tmp/mc-isolate-XXXXXX";
    CHECK(mkdtemp(dir));
    char cmd[8192], a[4200], b[4200], c[4200];
    snprintf(a, sizeof a, "%s/A.png", dir);
    snprintf(b, sizeof b, "%s/B.png", dir);
    snprintf(c, sizeof c, "%s/C.png", dir);
    const char *common = "run gray-scott --device cpu --size 64 --steps 300 --budget-ms 1 --checkpoint-ms 20";
    int st = -1;
    snprintf(cmd, sizeof cmd, "MC_CACHE_DIR=%s/cache %s/metal-compute %s --out %s", dir, MC_BINARY_DIR, common, a);
    char *out = mct_command(cmd, &st);
    CHECK(out);
    CHECK_EQ(st, 0);
    free(out);
    snprintf(cmd, sizeof cmd,
             "MC_CACHE_DIR=%s/cache %s/metal-compute %s --out %s --isolate --deadline-ms 1000 "
             "--inject-faults kill@5,hang@9,device-lost@12",
             dir, MC_BINARY_DIR, common, b);
    out = mct_command(cmd, &st);
    CHECK(out);
    fprintf(stderr, "%s", out);
    CHECK_EQ(st, 0);
    CHECK_STR_CONTAINS(out, "worker restarts 3 (device error 1, died 1, hung 1)");
    CHECK_STR_CONTAINS(out, "restart cost");
    free(out);
    CHECK_EQ(same_file(a, b), 0);
    /* A real fault: step 150 writes where no process may (SIGSEGV). */
    snprintf(cmd, sizeof cmd, "MC_CACHE_DIR=%s/cache %s/metal-compute %s --out %s --isolate --fault-at-step 150 2>&1",
             dir, MC_BINARY_DIR, common, c);
    out = mct_command(cmd, &st);
    CHECK(out);
    CHECK_EQ(st, 0);
    CHECK_STR_CONTAINS(out, "worker restarts 1 (device error 0, died 1, hung 0)");
    free(out);
    CHECK_EQ(same_file(a, c), 0);
    /* Worker faults without --isolate: refused, clearly. */
    snprintf(cmd, sizeof cmd, "%s/metal-compute %s --out %s --inject-faults kill@5 2>&1", MC_BINARY_DIR, common, c);
    out = mct_command(cmd, &st);
    CHECK(out);
    CHECK_NE(st, 0);
    CHECK_STR_CONTAINS(out, "needs an isolated run");
    free(out);
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    CHECK_EQ(system(cmd), 0);
    return 0;
}

/* The caller's process killed mid-run (SIGKILL: no cleanup of its own):
 * the launcher sees its channel end, kills its worker and exits. This test
 * process adopts the orphans (a subreaper) and must see every one end. */
MC_TEST(isolate_killed_caller_leaves_no_process)
{
    CHECK_EQ(prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0), 0);
    char dir[] = "/tmp/mc-iso-XXXXXX";
    CHECK(mkdtemp(dir));
    char exe[1024], out[256];
    snprintf(exe, sizeof exe, "%s/metal-compute", MC_BINARY_DIR);
    snprintf(out, sizeof out, "%s/x.png", dir);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        int null = open("/dev/null", O_WRONLY);
        if (null >= 0) {
            dup2(null, 1);
            dup2(null, 2);
        }
        execl(exe, exe, "run", "gray-scott", "--device", "cpu", "--size", "64", "--steps", "2000000000", "--isolate",
              "--out", out, (char *)NULL);
        _exit(127);
    }
    /* Until it has its launcher and a worker (children of its own). */
    char path[128];
    snprintf(path, sizeof path, "/proc/%d/task/%d/children", (int)pid, (int)pid);
    int kids = 0;
    for (int i = 0; i < 2000 && kids == 0; i++) {
        FILE *f = fopen(path, "r");
        if (!f) MC_SKIP("no %s on this kernel", path);
        int c, prev = ' ';
        while ((c = fgetc(f)) != EOF) {
            if (c != ' ' && prev == ' ') kids++;
            prev = c;
        }
        fclose(f);
        if (!kids) usleep(5000);
    }
    CHECK_GT(kids, 0);
    usleep(300000); /* the worker is running chunks */
    CHECK_EQ(kill(pid, SIGKILL), 0);
    int ws;
    CHECK_EQ(waitpid(pid, &ws, 0), pid);
    /* Every orphan ends by itself, within a few seconds. */
    uint64_t t0 = mc__test_now_ns();
    int reaped = 0;
    for (;;) {
        pid_t p = waitpid(-1, &ws, WNOHANG);
        if (p > 0) {
            reaped++;
            continue;
        }
        if (p < 0 && errno == ECHILD) break;
        if (mc__test_now_ns() - t0 > 20000000000ull) {
            fprintf(stderr, "processes of the killed caller are still running after 20 s\n");
            return 1;
        }
        usleep(10000);
    }
    CHECK_GE(reaped, 1);
    unlink(out);
    rmdir(dir);
    return 0;
}
