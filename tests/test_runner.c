/* The runner: chunking under the execution-time limit, recovery from every
 * kind of fault with a bit-identical result, back-off, cancellation, the
 * stop condition on the device, progress, and the gray-scott command. */
#include "mc_test.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#define RT_N 2048u      /* elements */
#define RT_GROUP 64u    /* threads per threadgroup */
#define RT_LIMIT_MS 200 /* the CPU device's execution-time limit in these tests */
#define RT_MAX_ITERS 6000u

typedef mct_rt_params rt_params;
typedef mct_rt rt_user;

static mc_runner_desc rt_desc(mc_device *d, rt_user *u, uint64_t total)
{
    mc_runner_desc desc = mct_rt_desc(u, RT_GROUP, total);
    desc.device = d;
    desc.control_arg = u->runner_control ? 2 : -1;
    desc.label = "rt";
    return desc;
}

/* One command buffer, one dispatch doing iters iterations, on a fresh
 * buffer: the computation done the plain way. */
static mc_status rt_plain(mc_device *d, const rt_params *p, uint64_t iters, double *gpu_ms, uint32_t *result)
{
    mc_pipeline *pl = mct_pipeline(d, "runner_test", "rt_step");
    if (!pl) return MC_ERR_COMPILE;
    uint32_t *init = malloc((p->n + 1) * sizeof *init);
    for (uint32_t i = 0; i < p->n; i++) init[i] = mct_rt_initial(i);
    init[p->n] = 0;
    mc_buffer *x = NULL, *ctl = NULL;
    mc_buffer_desc bd = {(p->n + 1) * sizeof *init, MC_STORAGE_SHARED, "x", init};
    mc_buffer_desc cd = {32, MC_STORAGE_SHARED, "ctl", NULL};
    mc_queue *q = NULL;
    mc_cmdbuf *cb = NULL;
    mc_pass *pass;
    struct {
        uint64_t first;
        uint32_t count, pad;
    } it = {0, (uint32_t)iters, 0};
    mc_status s = mc_buffer_create(d, &bd, &x);
    if (s == MC_OK) s = mc_buffer_create(d, &cd, &ctl);
    if (s == MC_OK) s = mc_queue_create(d, NULL, &q);
    mc_cmdbuf_desc cbd = {"everything", MC_CMDBUF_TIMESTAMPS};
    if (s == MC_OK) s = mc_cmdbuf_create(q, &cbd, &cb);
    if (s == MC_OK) s = mc_cmdbuf_begin_pass(cb, "everything", &pass);
    if (s == MC_OK) s = mc_pass_set_pipeline(pass, pl);
    if (s == MC_OK) s = mc_pass_set_buffer(pass, 0, x, 0);
    if (s == MC_OK) s = mc_pass_set_bytes(pass, 1, &it, sizeof it);
    if (s == MC_OK) s = mc_pass_set_buffer(pass, 2, ctl, 0);
    if (s == MC_OK) s = mc_pass_set_bytes(pass, 3, p, sizeof *p);
    if (s == MC_OK)
        s = mc_pass_dispatch(pass, (mc_size3){(p->n + RT_GROUP - 1) / RT_GROUP, 1, 1}, (mc_size3){RT_GROUP, 1, 1});
    if (s == MC_OK) s = mc_pass_end(pass);
    if (s == MC_OK) s = mc_cmdbuf_commit(cb);
    if (s == MC_OK) s = mc_cmdbuf_wait(cb, MC_WAIT_FOREVER);
    if (s == MC_OK) s = mc_cmdbuf_status(cb, NULL);
    if (s == MC_OK && result) s = mc_buffer_read(x, 0, result, (p->n + 1) * sizeof *result);
    if (gpu_ms && cb) {
        uint64_t t0 = 0, t1 = 0;
        if (mc_cmdbuf_get_gpu_time(cb, &t0, &t1) == MC_OK) *gpu_ms = (double)(t1 - t0) / 1e6;
    }
    free(init);
    mc_cmdbuf_release(cb);
    mc_queue_release(q);
    mc_buffer_release(x);
    mc_buffer_release(ctl);
    mc_pipeline_release(pl);
    return s;
}

/* Iterations that take about target_ms of device time on d, at most max. */
static uint64_t rt_calibrate_max(mc_device *d, const rt_params *p, double target_ms, uint64_t max)
{
    double t = 0;
    const uint64_t probe = 200;
    /* twice: the first run pays for waking the workers and cold caches */
    if (rt_plain(d, p, probe, &t, NULL) != MC_OK || rt_plain(d, p, probe, &t, NULL) != MC_OK || t <= 0) return 0;
    double per = t / (double)probe;
    uint64_t n = (uint64_t)(target_ms / per);
    return n < 400 ? 400 : n > max ? max : n;
}

/* The same, at most RT_MAX_ITERS: the host computes the reference too. */
static uint64_t rt_calibrate(mc_device *d, const rt_params *p, double target_ms)
{
    return rt_calibrate_max(d, p, target_ms, RT_MAX_ITERS);
}

static int rt_check_result(mc_runner *r, const uint32_t *want, uint32_t n)
{
    uint32_t *got = malloc((n + 1) * sizeof *got);
    CHECK(got);
    CHECK_EQ(mc_runner_state_size(r, 0), (n + 1) * sizeof *got);
    CHECK_OK(mc_runner_state_read(r, 0, got, (n + 1) * sizeof *got));
    for (uint32_t i = 0; i <= n; i++) {
        if (got[i] != want[i]) {
            fprintf(stderr, "x[%u] = %u, want %u\n", i, got[i], want[i]);
            free(got);
            return 1;
        }
    }
    free(got);
    return 0;
}

static uint32_t *rt_read(mc_runner *r, uint32_t n)
{
    uint32_t *got = malloc((n + 1) * sizeof *got);
    if (got && mc_runner_state_read(r, 0, got, (n + 1) * sizeof *got) != MC_OK) {
        free(got);
        return NULL;
    }
    return got;
}

MC_TEST(runner_finishes_what_one_dispatch_cannot)
{
    mc_device *d = mct_open_device(RT_LIMIT_MS);
    CHECK(d);
    if (mct_device_kind(d) != MC_DEVICE_CPU) MC_SKIP("the execution-time limit is set on the cpu device");
    rt_user u = {{RT_N, 32, 0}, true, false, MC_OK, NULL, NULL, NULL, 0, 0};
    uint64_t iters = rt_calibrate_max(d, &u.params, 4.0 * RT_LIMIT_MS, 4000000);
    CHECK_GT(iters, 0);

    /* The whole computation in one dispatch meets the limit. (Doubled until
     * it does: a calibration on a crowded host can come out pessimistic.) */
    mc_status plain = MC_OK;
    for (int i = 0; i < 6 && (plain = rt_plain(d, &u.params, iters, NULL, NULL)) == MC_OK; i++) iters *= 2;
    CHECK_STATUS(plain, MC_ERR_TIMEOUT);
    /* Without a limit it is the right result. */
    uint32_t *want = malloc((RT_N + 1) * sizeof *want);
    CHECK(want);
    mc_device_desc nd = MC_DEVICE_DESC_INIT;
    nd.kind = MC_DEVICE_CPU;
    nd.time_limit_ms = MC_TIME_LIMIT_NONE;
    mc_device *unlimited;
    CHECK_OK(mc_device_open(&nd, &unlimited));
    CHECK_OK(rt_plain(unlimited, &u.params, iters, NULL, want));
    mc_device_release(unlimited);
    CHECK_EQ(want[RT_N], iters);

    /* The runner does the same work in chunks, far below the limit. */
    mc_runner_desc desc = rt_desc(d, &u, iters);
    mc_runner *r;
    CHECK_OK(mc_runner_create(&desc, &r));
    CHECK_OK(mc_runner_run(r));
    mc_runner_stats st;
    CHECK_OK(mc_runner_get_stats(r, &st));
    fprintf(stderr, "%llu iterations in %llu chunks: mean %.2f ms, max %.2f ms, gap %.1f us, %.0f ms in all\n",
            (unsigned long long)st.iterations, (unsigned long long)st.chunks, st.chunk_ms_mean, st.chunk_ms_max,
            st.gap_us_mean, st.elapsed_ms);
    CHECK_EQ(st.iterations, iters);
    CHECK_GT(st.chunks, 3);
    /* Chunks are sized far below the limit. (A real timeout can still
     * happen when the host is so loaded that a chunk runs many times longer
     * than measured; the runner then recovers, which the result shows.) */
    CHECK(st.chunk_ms_mean < RT_LIMIT_MS / 4);
    CHECK(!st.stopped_early);
    CHECK_EQ(rt_check_result(r, want, RT_N), 0);
    free(want);
    CHECK_STATUS(mc_runner_run(r), MC_ERR_INVALID_STATE); /* one run per runner */
    mc_runner_release(r);
    CHECK_EQ(u.setups, 1);
    CHECK_EQ(u.teardowns, 1);
    mc_device_release(d);
    return 0;
}

/* An undisturbed run, then one where command buffer `at` of the run fails
 * with kind: the results must be the same bits. */
/* Injected-fault runs keep the watchdog, but with room: on a loaded 2-core
 * machine under ThreadSanitizer one dispatch has taken over 100 ms, and a
 * real timeout would then mix with the injected fault under test. */
#define RT_FAULT_LIMIT_MS 2000

static int rt_fault_run(mc_status kind, uint64_t at, bool control, mc_runner_stats *out, rt_user *uo)
{
    mc_device *d = mct_open_device(RT_FAULT_LIMIT_MS);
    CHECK(d);
    rt_user u = {{RT_N, 32, 0}, control, false, MC_OK, NULL, NULL, NULL, 0, 0};
    uint64_t iters = rt_calibrate(d, &u.params, 250);
    CHECK_GT(iters, 0);

    mc_runner_desc desc = rt_desc(d, &u, iters);
    desc.checkpoint_ms = 20; /* several checkpoints in a short run */
    desc.backoff_initial_ms = 50;
    mc_runner *r;
    CHECK_OK(mc_runner_create(&desc, &r));
    CHECK_OK(mc_runner_run(r));
    uint32_t *clean = rt_read(r, RT_N);
    CHECK(clean);
    mc_runner_release(r);

    rt_user v = u;
    v.setups = v.teardowns = 0;
    desc.user = &v;
    CHECK_OK(mc_runner_create(&desc, &r));
    CHECK_OK(mc_device_inject_fault(d, kind, at));
    uint64_t t0 = mc__test_now_ns();
    CHECK_OK(mc_runner_run(r));
    double wall_ms = (double)(mc__test_now_ns() - t0) / 1e6;
    CHECK_OK(mc_runner_get_stats(r, out));
    fprintf(stderr,
            "%s at command buffer %llu: %u recoveries, %llu chunks (%llu submitted), %llu checkpoints, back-off %.0f "
            "ms, %.0f ms\n",
            mc_status_name(kind), (unsigned long long)at, out->recoveries, (unsigned long long)out->chunks,
            (unsigned long long)out->chunks_submitted, (unsigned long long)out->checkpoints, out->backoff_ms, wall_ms);
    CHECK_EQ(out->iterations, iters);
    CHECK_GE(out->recoveries, 1);
    CHECK_EQ(rt_check_result(r, clean, RT_N), 0); /* bit-identical */
    uint32_t *want = mct_rt_reference(u.params.n, u.params.spin, iters);
    CHECK(want);
    CHECK_EQ(memcmp(want, clean, (RT_N + 1) * sizeof *want), 0);
    free(want);
    free(clean);
    if (kind == MC_ERR_DEVICE_LOST) {
        CHECK(mc_runner_device(r) != d); /* a new device */
        CHECK_STATUS(mc_device_check(d), MC_ERR_DEVICE_LOST);
        CHECK_OK(mc_device_check(mc_runner_device(r)));
    } else {
        CHECK(mc_runner_device(r) == d);
    }
    mc_runner_release(r);
    CHECK_EQ(v.setups, v.teardowns);
    *uo = v;
    mc_device_release(d);
    return 0;
}

MC_TEST(runner_recovers_from_timeout)
{
    mc_runner_stats st;
    rt_user u;
    CHECK_EQ(rt_fault_run(MC_ERR_TIMEOUT, 5, true, &st, &u), 0);
    CHECK_GE(st.timeouts, 1);
    CHECK_EQ(u.setups, 1);
    return 0;
}

MC_TEST(runner_recovers_from_page_fault)
{
    mc_runner_stats st;
    rt_user u;
    CHECK_EQ(rt_fault_run(MC_ERR_PAGE_FAULT, 5, false, &st, &u), 0);
    CHECK_EQ(st.page_faults, 1);
    return 0;
}

MC_TEST(runner_recovers_from_internal_error)
{
    mc_runner_stats st;
    rt_user u;
    CHECK_EQ(rt_fault_run(MC_ERR_INTERNAL, 4, true, &st, &u), 0);
    CHECK_EQ(st.internal_errors, 1);
    return 0;
}

MC_TEST(runner_recovers_from_device_loss)
{
    mc_runner_stats st;
    rt_user u;
    CHECK_EQ(rt_fault_run(MC_ERR_DEVICE_LOST, 6, true, &st, &u), 0);
    CHECK_EQ(st.devices_lost, 1);
    CHECK_EQ(st.device_reopens, 1);
    CHECK_EQ(u.setups, 2); /* again on the new device */
    return 0;
}

MC_TEST(runner_backs_off_when_access_is_revoked)
{
    /* Access comes back 300 ms after the fault; the runner waits 50, 100,
     * 200 ... ms between tries. */
    setenv("MC_REVOKE_COOLDOWN_MS", "300", 1);
    mc_runner_stats st;
    rt_user u;
    CHECK_EQ(rt_fault_run(MC_ERR_ACCESS_REVOKED, 4, true, &st, &u), 0);
    mc_device *d = mct_open_device(0);
    CHECK(d);
    if (mct_device_kind(d) == MC_DEVICE_CPU) {
        /* the cpu device keeps access revoked for the cool-down */
        CHECK_GE(st.access_revoked, 2); /* the fault, then tries inside the cool-down */
        CHECK_GE(st.backoff_ms, 300);
    } else {
        CHECK_GE(st.access_revoked, 1);
        CHECK_GE(st.backoff_ms, 50); /* the first wait */
    }
    mc_device_release(d);
    CHECK_EQ(st.device_reopens, 0);
    unsetenv("MC_REVOKE_COOLDOWN_MS");
    return 0;
}

MC_TEST(runner_gives_up_naming_the_cause)
{
    mc_device *d = mct_open_device(RT_LIMIT_MS);
    CHECK(d);
    rt_user u = {{RT_N, 32, 0}, true, false, MC_OK, NULL, NULL, NULL, 0, 0};
    mc_runner_desc desc = rt_desc(d, &u, 100000);
    desc.max_recoveries = 3;
    mc_runner *r;
    CHECK_OK(mc_runner_create(&desc, &r));
    for (uint64_t i = 1; i <= 40; i++) CHECK_OK(mc_device_inject_fault(d, MC_ERR_PAGE_FAULT, i));
    CHECK_STATUS(mc_runner_run(r), MC_ERR_PAGE_FAULT);
    const char *msg = mc_last_error();
    fprintf(stderr, "%s\n", msg);
    CHECK_STR_CONTAINS(msg, "MC_ERR_PAGE_FAULT");
    CHECK_STR_CONTAINS(msg, "4 failures in a row");
    CHECK_STR_CONTAINS(msg, "last good iteration 0");
    mc_runner_stats st;
    CHECK_OK(mc_runner_get_stats(r, &st));
    CHECK_EQ(st.recoveries, 4);
    CHECK_EQ(st.page_faults, 4);
    CHECK_EQ(st.iterations, 0);
    /* The last good state is what the runner leaves. */
    uint32_t *want = mct_rt_reference(u.params.n, u.params.spin, 0);
    CHECK_EQ(rt_check_result(r, want, RT_N), 0);
    free(want);
    mc_runner_release(r);
    mc_device_release(d);
    return 0;
}

MC_TEST(runner_cancels_from_another_thread)
{
    mc_device *d = mct_open_device(RT_LIMIT_MS);
    CHECK(d);
    rt_user u = {{RT_N, 32, 0}, true, false, MC_OK, NULL, NULL, NULL, 0, 0};
    mc_runner_desc desc = rt_desc(d, &u, 1000000000ull); /* hours of work */
    mc_runner *r;
    CHECK_OK(mc_runner_create(&desc, &r));
    mct_canceller c = {r, 300, 0};
    pthread_t t;
    CHECK_EQ(pthread_create(&t, NULL, mct_cancel_later, &c), 0);
    CHECK_STATUS(mc_runner_run(r), MC_ERR_CANCELLED);
    uint64_t back = mc__test_now_ns();
    pthread_join(t, NULL);
    double late_ms = (double)(back - c.at_ns) / 1e6;
    CHECK_STR_CONTAINS(mc_last_error(), "cancelled at iteration");
    mc_runner_stats st;
    CHECK_OK(mc_runner_get_stats(r, &st));
    fprintf(stderr, "returned %.1f ms after the cancel, at iteration %llu\n", late_ms,
            (unsigned long long)st.iterations);
    CHECK(st.cancelled);
    CHECK_GT(st.iterations, 0);
    /* the chunks in flight, each within the budget (20 ms here): tens of
     * ms; the bound leaves room for a loaded host */
    CHECK(late_ms < 1500);
    mc_runner_release(r);

    /* Cancelled before it runs: returns at once. */
    CHECK_OK(mc_runner_create(&desc, &r));
    CHECK_OK(mc_runner_cancel(r));
    CHECK_STATUS(mc_runner_run(r), MC_ERR_CANCELLED);
    mc_runner_release(r);
    mc_device_release(d);
    return 0;
}

/* Cancel is the front end's, one rule for both back ends: before the run
 * or during it, from another thread, the run returns MC_ERR_CANCELLED with
 * the reason, the figures say cancelled, and the runner does not run again. */
MC_TEST(runner_cancel_is_one_rule_for_local_and_isolated)
{
    mc_isolate_desc iso = MC_ISOLATE_DESC_INIT;
    const char *env = getenv("MC_DEVICE");
    iso.device = env && *env ? env : "cpu";
    mc_device *d = NULL;
    /* Isolated first: a process that used a GPU driver may not fork. */
    for (int isolated = 1; isolated >= 0; isolated--) {
        if (!isolated) {
            d = mct_open_device(RT_LIMIT_MS);
            CHECK(d);
        }
        for (int before = 0; before < 2; before++) {
            rt_user u = {{RT_N, 32, 0}, false, false, MC_OK, NULL, NULL, NULL, 0, 0};
            mc_runner_desc desc = rt_desc(isolated ? NULL : d, &u, 1000000000ull); /* hours of work */
            desc.isolate = isolated ? &iso : NULL;
            mc_runner *r;
            CHECK_OK(mc_runner_create(&desc, &r));
            mct_canceller c = {r, 200, 0};
            pthread_t t;
            if (before) CHECK_OK(mc_runner_cancel(r));
            else CHECK_EQ(pthread_create(&t, NULL, mct_cancel_later, &c), 0);
            CHECK_STATUS(mc_runner_run(r), MC_ERR_CANCELLED);
            if (!before) pthread_join(t, NULL);
            CHECK_STR_CONTAINS(mc_last_error(), "cancelled");
            mc_runner_stats st;
            CHECK_OK(mc_runner_get_stats(r, &st));
            CHECK(st.cancelled);
            CHECK(st.iterations < desc.total_iterations);
            if (before) CHECK_EQ(st.chunks, 0);
            CHECK_OK(mc_runner_cancel(r)); /* again, after the run: harmless */
            CHECK_STATUS(mc_runner_run(r), MC_ERR_INVALID_STATE);
            mc_runner_release(r);
        }
    }
    CHECK_STATUS(mc_runner_cancel(NULL), MC_ERR_INVALID_ARGUMENT);
    mc_device_release(d);
    return 0;
}

MC_TEST(runner_stop_condition_wastes_no_queued_chunk)
{
    mc_device *d = mct_open_device(RT_LIMIT_MS);
    CHECK(d);
    rt_user u = {{RT_N, 32, 0}, true, false, MC_OK, NULL, NULL, NULL, 0, 0};
    uint64_t iters = rt_calibrate(d, &u.params, 150);
    CHECK_GT(iters, 0);
    u.params.stop_at = iters + 1;            /* inside a dispatch of 4 iterations */
    mc_runner_desc desc = rt_desc(d, &u, 0); /* until the kernel stops it */
    mc_runner *r;
    CHECK_OK(mc_runner_create(&desc, &r));
    CHECK_OK(mc_runner_run(r));
    mc_runner_stats st;
    CHECK_OK(mc_runner_get_stats(r, &st));
    fprintf(stderr, "stopped at %llu after %llu chunks; %llu queued behind the stop ran empty\n",
            (unsigned long long)st.iterations, (unsigned long long)st.chunks, (unsigned long long)st.chunks_after_stop);
    CHECK(st.stopped_early);
    CHECK_EQ(st.iterations, u.params.stop_at);
    /* On the cpu device the chunks are slower than queueing them, so some
     * were always queued behind the stop. (A GPU may run this light kernel
     * as fast as the CPU launches it: then none were, and none wasted.) */
    if (mct_device_kind(d) == MC_DEVICE_CPU) CHECK_GE(st.chunks_after_stop, 1);
    /* The work counter says no iteration ran after the stop: the queued
     * chunks read an empty grid. */
    rt_params p = u.params;
    uint32_t *want = mct_rt_reference(p.n, p.spin, p.stop_at);
    CHECK_EQ(rt_check_result(r, want, RT_N), 0);
    free(want);
    mc_runner_release(r);
    mc_device_release(d);
    return 0;
}

typedef struct progress_log {
    uint64_t last;
    int calls, backwards, done_calls;
    bool done_last;
    uint64_t final_iterations;
} progress_log;

static void on_progress(void *user, const mc_runner_progress *p)
{
    progress_log *l = user;
    if (p->iterations < l->last) l->backwards++;
    l->last = p->iterations;
    l->calls++;
    l->done_calls += p->done;
    l->done_last = p->done;
    l->final_iterations = p->iterations;
}

MC_TEST(runner_progress_only_moves_forward)
{
    mc_device *d = mct_open_device(RT_LIMIT_MS);
    CHECK(d);
    rt_user u = {{RT_N, 32, 0}, true, false, MC_OK, NULL, NULL, NULL, 0, 0};
    uint64_t iters = rt_calibrate(d, &u.params, 200);
    CHECK_GT(iters, 0);
    progress_log log = {0, 0, 0, 0, false, 0};
    mc_runner_desc desc = rt_desc(d, &u, iters);
    desc.progress = on_progress;
    desc.progress_user = &log;
    desc.progress_interval_ms = 1;
    desc.checkpoint_ms = 30;
    mc_runner *r;
    CHECK_OK(mc_runner_create(&desc, &r));
    /* Replays after these go back in iterations; progress must not. */
    CHECK_OK(mc_device_inject_faults(d, "page-fault@7,timeout@15"));
    CHECK_OK(mc_runner_run(r));
    mc_runner_stats st;
    CHECK_OK(mc_runner_get_stats(r, &st));
    fprintf(stderr, "%d progress calls, %u recoveries\n", log.calls, st.recoveries);
    CHECK_GE(st.recoveries, 1);
    CHECK_GT(log.calls, 3);
    CHECK_EQ(log.backwards, 0);
    CHECK_EQ(log.done_calls, 1);
    CHECK(log.done_last);
    CHECK_EQ(log.final_iterations, iters);
    mc_runner_release(r);
    mc_device_release(d);
    return 0;
}

static mc_status null_setup(void *user, mc_device *dev, mc_runner_binding *b)
{
    (void)user;
    (void)dev;
    (void)b;
    return MC_OK;
}

static void null_teardown(void *user, mc_runner_binding *b)
{
    int *n = user;
    (void)b;
    if (n) (*n)++;
}

MC_TEST(runner_rejects_bad_arguments)
{
    mc_device *d = mct_open_device(RT_LIMIT_MS);
    CHECK(d);
    rt_user u = {{RT_N, 1, 0}, true, false, MC_OK, NULL, NULL, NULL, 0, 0};
    mc_runner *r = NULL;
    mc_runner_desc good = rt_desc(d, &u, 100), desc;
    CHECK_STATUS(mc_runner_create(NULL, &r), MC_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(mc_runner_create(&good, NULL), MC_ERR_INVALID_ARGUMENT);

    desc = good;
    desc.device = NULL;
    CHECK_STATUS(mc_runner_create(&desc, &r), MC_ERR_INVALID_ARGUMENT);
    CHECK(r == NULL);
    desc = good;
    desc.setup = NULL;
    CHECK_STATUS(mc_runner_create(&desc, &r), MC_ERR_INVALID_ARGUMENT);
    desc = good;
    desc.threadgroups.y = 0;
    CHECK_STATUS(mc_runner_create(&desc, &r), MC_ERR_INVALID_ARGUMENT);
    desc = good;
    desc.threads_per_threadgroup = (mc_size3){4096, 1, 1};
    CHECK_STATUS(mc_runner_create(&desc, &r), MC_ERR_INVALID_ARGUMENT);
    desc = good;
    desc.control_arg = desc.iteration_arg;
    CHECK_STATUS(mc_runner_create(&desc, &r), MC_ERR_INVALID_ARGUMENT);
    CHECK_STR_CONTAINS(mc_last_error(), "MC_RUNNER_DESC_INIT");
    desc = good;
    desc.iteration_arg = 31;
    CHECK_STATUS(mc_runner_create(&desc, &r), MC_ERR_INVALID_ARGUMENT);
    desc = good;
    desc.total_iterations = 0;
    desc.control_arg = -1;
    CHECK_STATUS(mc_runner_create(&desc, &r), MC_ERR_INVALID_ARGUMENT);
    desc = good;
    desc.budget_ms = -1;
    CHECK_STATUS(mc_runner_create(&desc, &r), MC_ERR_INVALID_ARGUMENT);
    CHECK_STR_CONTAINS(mc_last_error(), "budget_ms");
    desc = good;
    desc.in_flight = 1000;
    CHECK_STATUS(mc_runner_create(&desc, &r), MC_ERR_INVALID_ARGUMENT);

    /* setup's own failure comes back; no teardown for what it never made */
    u.fail_setup = MC_ERR_OUT_OF_MEMORY;
    CHECK_STATUS(mc_runner_create(&good, &r), MC_ERR_OUT_OF_MEMORY);
    CHECK_STR_CONTAINS(mc_last_error(), "setup failed");
    CHECK_EQ(u.teardowns, 0);
    u.fail_setup = MC_OK;
    /* a binding that takes the runner's slot is refused, and torn down */
    u.bind_control_slot = true;
    CHECK_STATUS(mc_runner_create(&good, &r), MC_ERR_INVALID_ARGUMENT);
    CHECK_STR_CONTAINS(mc_last_error(), "slot 2 is the runner's");
    CHECK_EQ(u.setups, 1);
    CHECK_EQ(u.teardowns, 1);
    u.bind_control_slot = false;
    /* an empty binding is refused */
    int teardowns = 0;
    desc = good;
    desc.setup = null_setup;
    desc.teardown = null_teardown;
    desc.user = &teardowns;
    CHECK_STATUS(mc_runner_create(&desc, &r), MC_ERR_INVALID_ARGUMENT);
    CHECK_STR_CONTAINS(mc_last_error(), "no pipeline");
    CHECK_EQ(teardowns, 1);

    /* the other calls check their handles */
    mc_runner_stats st;
    uint32_t word;
    CHECK_STATUS(mc_runner_run(NULL), MC_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(mc_runner_cancel(NULL), MC_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(mc_runner_get_stats(NULL, &st), MC_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(mc_runner_state_read(NULL, 0, &word, 4), MC_ERR_INVALID_ARGUMENT);
    CHECK_EQ(mc_runner_state_size(NULL, 0), 0);
    CHECK(mc_runner_device(NULL) == NULL);
    mc_runner_release(NULL);
    CHECK_STATUS(mc_runner_run((mc_runner *)d), MC_ERR_INVALID_ARGUMENT); /* not a runner */

    CHECK_OK(mc_runner_create(&good, &r));
    CHECK_STATUS(mc_runner_get_stats(r, NULL), MC_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(mc_runner_state_read(r, 1, &word, 4), MC_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(mc_runner_state_read(r, 0, NULL, 4), MC_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(mc_runner_state_read(r, 0, &word, (RT_N + 2) * 4), MC_ERR_INVALID_ARGUMENT);
    CHECK_OK(mc_runner_state_read(r, 0, &word, 4)); /* the initial state, before the run */
    CHECK_EQ(word, mct_rt_initial(0));
    CHECK_OK(mc_runner_get_stats(r, &st));
    CHECK_EQ(st.chunks, 0);
    mc_runner_release(r);
    mc_device_release(d);
    return 0;
}

/* ---- the command --------------------------------------------------------- */

MC_TEST(runner_gray_scott_command_survives_faults_byte_for_byte)
{
    char dir[] = "/tmp/mc-runner-XXXXXX";
    CHECK(mkdtemp(dir));
    char cmd[8192], a[4200], b[4200];
    snprintf(a, sizeof a, "%s/A.png", dir);
    snprintf(b, sizeof b, "%s/B.png", dir);
    int st = -1;
    snprintf(cmd, sizeof cmd, "%s/metal-compute run gray-scott --size 64 --steps 300 --out %s", MC_BINARY_DIR, a);
    char *out = mct_command(cmd, &st);
    CHECK(out);
    fprintf(stderr, "%s", out);
    CHECK_EQ(st, 0);
    CHECK_STR_CONTAINS(out, "steps");
    CHECK_STR_CONTAINS(out, "chunks");
    CHECK_STR_CONTAINS(out, "recoveries");
    CHECK_STR_CONTAINS(out, "steps/s");
    free(out);
    snprintf(cmd, sizeof cmd,
             "%s/metal-compute run gray-scott --size 64 --steps 300 --out %s "
             "--inject-faults timeout@3,device-lost@6,page-fault@9 2>&1",
             MC_BINARY_DIR, b);
    out = mct_command(cmd, &st);
    CHECK(out);
    fprintf(stderr, "%s", out);
    CHECK_EQ(st, 0);
    /* The same image proves nothing unless the faults fired: each of the
     * three is a recovery of its own kind. */
    CHECK_STR_CONTAINS(out, "recoveries   3 (timeout 1, page fault 1, access revoked 0, device lost 1, internal 0");
    CHECK(!strstr(out, "never fired"));
    free(out);
    size_t la = 0, lb = 0;
    char *pa = mct_read_file(a, &la), *pb = mct_read_file(b, &lb);
    CHECK(pa && pb);
    CHECK_GT(la, 100);
    CHECK_EQ(memcmp(pa, "\x89PNG", 4), 0);
    CHECK_EQ(la, lb);
    CHECK_EQ(memcmp(pa, pb, la), 0);
    free(pa);
    free(pb);
    /* A bad spec is refused before anything runs. */
    snprintf(cmd, sizeof cmd,
             "%s/metal-compute run gray-scott --size 64 --steps 10 --out %s --inject-faults bogus@1 2>&1",
             MC_BINARY_DIR, a);
    out = mct_command(cmd, &st);
    CHECK(out);
    CHECK_NE(st, 0);
    free(out);
    unlink(a);
    unlink(b);
    rmdir(dir);
    return 0;
}
