/* Command buffers: execution, order, passes, copies, states, concurrency. */
#include "mc_test.h"

#include <pthread.h>
#include <stdatomic.h>
#include <time.h>
#include <stdlib.h>

typedef struct fixture {
    mc_device *d;
    mc_queue *q;
    mc_pipeline *saxpy, *add_one, *iota, *spin;
} fixture;

static int fixture_open(fixture *f, int64_t limit_ms)
{
    memset(f, 0, sizeof *f);
    f->d = mct_open_device(limit_ms);
    if (!f->d) return -1;
    f->saxpy = mct_pipeline(f->d, "basic", "saxpy");
    f->add_one = mct_pipeline(f->d, "basic", "add_one");
    f->iota = mct_pipeline(f->d, "basic", "iota");
    f->spin = mct_pipeline(f->d, "basic", "spin");
    if (!f->saxpy || !f->add_one || !f->iota || !f->spin) return -1;
    return mc_queue_create(f->d, NULL, &f->q) == MC_OK ? 0 : -1;
}

static void fixture_close(fixture *f)
{
    mc_queue_release(f->q);
    mc_pipeline_release(f->saxpy);
    mc_pipeline_release(f->add_one);
    mc_pipeline_release(f->iota);
    mc_pipeline_release(f->spin);
    mc_device_release(f->d);
}

static mc_status encode_1d(mc_cmdbuf *cb, const char *label, mc_pipeline *p, mc_buffer *b, uint32_t n,
                           const uint32_t *extra)
{
    mc_pass *pass;
    mc_status s = mc_cmdbuf_begin_pass(cb, label, &pass);
    if (s == MC_OK) s = mc_pass_set_pipeline(pass, p);
    if (s == MC_OK) s = mc_pass_set_buffer(pass, 0, b, 0);
    if (s == MC_OK) s = mc_pass_set_bytes(pass, 1, &n, sizeof n);
    if (s == MC_OK && extra) s = mc_pass_set_bytes(pass, 2, extra, sizeof *extra);
    if (s == MC_OK) s = mc_pass_dispatch(pass, (mc_size3){(n + 63) / 64, 1, 1}, (mc_size3){64, 1, 1});
    if (s == MC_OK) s = mc_pass_end(pass);
    return s;
}

MC_TEST(saxpy_matches_reference)
{
    fixture f;
    CHECK_EQ(fixture_open(&f, 0), 0);
    uint32_t n = 100003; /* not a multiple of the threadgroup */
    float a = 3.0f;
    float *x = malloc(n * 4), *y = malloc(n * 4), *out = malloc(n * 4);
    CHECK(x && y && out);
    for (uint32_t i = 0; i < n; i++) {
        x[i] = (float)i * 0.25f;
        y[i] = (float)(i % 13);
    }
    mc_buffer *bx, *by;
    mc_buffer_desc bd = {n * 4, MC_STORAGE_SHARED, "x", x};
    CHECK_OK(mc_buffer_create(f.d, &bd, &bx));
    bd.label = "y";
    bd.initial_data = y;
    bd.storage = MC_STORAGE_PRIVATE;
    CHECK_OK(mc_buffer_create(f.d, &bd, &by));
    mc_cmdbuf *cb;
    mc_cmdbuf_desc cd = {"saxpy", MC_CMDBUF_TIMESTAMPS};
    CHECK_OK(mc_cmdbuf_create(f.q, &cd, &cb));
    CHECK(strcmp(mc_cmdbuf_label(cb), "saxpy") == 0);
    CHECK_EQ(mc_cmdbuf_get_state(cb), MC_CMDBUF_NOT_ENQUEUED);
    mc_pass *p;
    CHECK_OK(mc_cmdbuf_begin_pass(cb, "saxpy-pass", &p));
    CHECK_OK(mc_pass_set_pipeline(p, f.saxpy));
    CHECK_OK(mc_pass_set_buffer(p, 0, by, 0));
    CHECK_OK(mc_pass_set_buffer(p, 1, bx, 0));
    CHECK_OK(mc_pass_set_bytes(p, 2, &a, 4));
    CHECK_OK(mc_pass_set_bytes(p, 3, &n, 4));
    CHECK_OK(mc_pass_dispatch(p, (mc_size3){(n + 127) / 128, 1, 1}, (mc_size3){128, 1, 1}));
    CHECK_OK(mc_pass_end(p));
    CHECK_OK(mc_cmdbuf_enqueue(cb));
    CHECK_EQ(mc_cmdbuf_get_state(cb), MC_CMDBUF_ENQUEUED);
    CHECK_OK(mc_cmdbuf_commit(cb));
    CHECK_OK(mc_cmdbuf_wait(cb, 30ull * 1000000000ull));
    CHECK_EQ(mc_cmdbuf_get_state(cb), MC_CMDBUF_COMPLETED);
    const char *msg;
    CHECK_OK(mc_cmdbuf_status(cb, &msg));
    CHECK_EQ(mc_cmdbuf_pass_count(cb), 1);
    mc_pass_info pi;
    CHECK_OK(mc_cmdbuf_get_pass_info(cb, 0, &pi));
    CHECK(strcmp(pi.label, "saxpy-pass") == 0);
    CHECK_EQ(pi.state, MC_PASS_COMPLETED);
    uint64_t t0, t1;
    CHECK_OK(mc_cmdbuf_get_gpu_time(cb, &t0, &t1));
    CHECK_GE(t1, t0);
    CHECK_GT(t1, 0);
    CHECK_OK(mc_buffer_read(by, 0, out, n * 4));
    for (uint32_t i = 0; i < n; i++) CHECK_FLOAT_NEAR(out[i], a * x[i] + y[i], 1e-3);
    mc_cmdbuf_release(cb);
    mc_buffer_release(bx);
    mc_buffer_release(by);
    fixture_close(&f);
    free(x);
    free(y);
    free(out);
    return 0;
}

MC_TEST(passes_run_in_order_with_copies_and_fills)
{
    fixture f;
    CHECK_EQ(fixture_open(&f, 0), 0);
    uint32_t n = 5000, base = 100;
    mc_buffer *a, *b;
    mc_buffer_desc bd = {n * 4, MC_STORAGE_SHARED, "a", NULL};
    CHECK_OK(mc_buffer_create(f.d, &bd, &a));
    bd.label = "b";
    CHECK_OK(mc_buffer_create(f.d, &bd, &b));
    mc_cmdbuf *cb;
    CHECK_OK(mc_cmdbuf_create(f.q, NULL, &cb));
    /* fill b with 0xff, iota into a, add_one twice (with a barrier), copy a -> b's first half */
    CHECK_OK(mc_cmdbuf_fill_buffer(cb, b, 0, n * 4, 0xff));
    CHECK_OK(encode_1d(cb, "iota", f.iota, a, n, &base));
    mc_pass *p;
    CHECK_OK(mc_cmdbuf_begin_pass(cb, "twice", &p));
    CHECK_OK(mc_pass_set_pipeline(p, f.add_one));
    CHECK_OK(mc_pass_set_buffer(p, 0, a, 0));
    CHECK_OK(mc_pass_set_bytes(p, 1, &n, 4));
    CHECK_OK(mc_pass_dispatch(p, (mc_size3){(n + 63) / 64, 1, 1}, (mc_size3){64, 1, 1}));
    CHECK_OK(mc_pass_barrier(p));
    CHECK_OK(mc_pass_dispatch(p, (mc_size3){(n + 63) / 64, 1, 1}, (mc_size3){64, 1, 1}));
    CHECK_OK(mc_pass_end(p));
    CHECK_OK(mc_cmdbuf_copy_buffer(cb, a, 0, b, 0, n * 2));
    CHECK_STATUS(mc_cmdbuf_copy_buffer(cb, a, 0, a, 4, 16), MC_ERR_INVALID_ARGUMENT); /* overlap */
    CHECK_STATUS(mc_cmdbuf_copy_buffer(cb, a, n * 4 - 4, b, 0, 8), MC_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(mc_cmdbuf_fill_buffer(cb, b, 1, n * 4, 0), MC_ERR_INVALID_ARGUMENT);
    CHECK_OK(mc_cmdbuf_commit(cb));
    CHECK_OK(mc_cmdbuf_wait(cb, MC_WAIT_FOREVER));
    CHECK_OK(mc_cmdbuf_status(cb, NULL));
    CHECK_EQ(mc_cmdbuf_pass_count(cb), 4);
    for (size_t i = 0; i < 4; i++) {
        mc_pass_info pi;
        CHECK_OK(mc_cmdbuf_get_pass_info(cb, i, &pi));
        CHECK_EQ(pi.state, MC_PASS_COMPLETED);
    }
    mc_pass_info pi;
    CHECK_OK(mc_cmdbuf_get_pass_info(cb, 0, &pi));
    CHECK(strcmp(pi.label, "fill") == 0);
    CHECK_STATUS(mc_cmdbuf_get_pass_info(cb, 4, &pi), MC_ERR_INVALID_ARGUMENT);
    uint32_t *va = mc_buffer_contents(a), *vb = mc_buffer_contents(b);
    for (uint32_t i = 0; i < n; i++) {
        CHECK_EQ(va[i], base + i + 2);
        CHECK_EQ(vb[i], i < n / 2 ? base + i + 2 : 0xffffffffu);
    }
    mc_cmdbuf_release(cb);
    mc_buffer_release(a);
    mc_buffer_release(b);
    fixture_close(&f);
    return 0;
}

MC_TEST(command_buffers_of_a_queue_run_in_commit_order)
{
    fixture f;
    CHECK_EQ(fixture_open(&f, 0), 0);
    uint32_t n = 1024, base = 7;
    mc_buffer *a;
    mc_buffer_desc bd = {n * 4, MC_STORAGE_SHARED, "a", NULL};
    CHECK_OK(mc_buffer_create(f.d, &bd, &a));
    /* iota resets; add_one increments: only commit order gives base+i+19 */
    mc_cmdbuf *cbs[20];
    for (int i = 0; i < 20; i++) {
        CHECK_OK(mc_cmdbuf_create(f.q, NULL, &cbs[i]));
        if (i == 0) CHECK_OK(encode_1d(cbs[i], "iota", f.iota, a, n, &base));
        else CHECK_OK(encode_1d(cbs[i], "add", f.add_one, a, n, NULL));
    }
    for (int i = 0; i < 20; i++) CHECK_OK(mc_cmdbuf_commit(cbs[i]));
    CHECK_OK(mc_queue_wait_idle(f.q, MC_WAIT_FOREVER));
    for (int i = 0; i < 20; i++) {
        CHECK_EQ(mc_cmdbuf_get_state(cbs[i]), MC_CMDBUF_COMPLETED);
        mc_cmdbuf_release(cbs[i]);
    }
    uint32_t *v = mc_buffer_contents(a);
    for (uint32_t i = 0; i < n; i++) CHECK_EQ(v[i], base + i + 19);
    mc_buffer_release(a);
    fixture_close(&f);
    return 0;
}

MC_TEST(recording_rules)
{
    fixture f;
    CHECK_EQ(fixture_open(&f, 0), 0);
    mc_buffer *a;
    mc_buffer_desc bd = {256, MC_STORAGE_SHARED, "a", NULL};
    CHECK_OK(mc_buffer_create(f.d, &bd, &a));
    mc_cmdbuf *cb;
    CHECK_OK(mc_cmdbuf_create(f.q, NULL, &cb));
    mc_pass *p, *p2;
    CHECK_STATUS(mc_cmdbuf_wait(cb, 0), MC_ERR_INVALID_STATE); /* never committed */
    CHECK_OK(mc_cmdbuf_begin_pass(cb, "one", &p));
    CHECK_STATUS(mc_cmdbuf_begin_pass(cb, "two", &p2), MC_ERR_INVALID_STATE); /* one open pass at a time */
    CHECK_STATUS(mc_cmdbuf_fill_buffer(cb, a, 0, 4, 0), MC_ERR_INVALID_STATE);
    CHECK_STATUS(mc_pass_dispatch(p, (mc_size3){1, 1, 1}, (mc_size3){1, 1, 1}), MC_ERR_INVALID_STATE); /* no pipeline */
    CHECK_STR_CONTAINS(mc_last_error(), "pipeline");
    CHECK_OK(mc_pass_set_pipeline(p, f.add_one));
    CHECK_STATUS(mc_pass_set_buffer(p, 31, a, 0), MC_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(mc_pass_set_buffer(p, 0, a, 257), MC_ERR_INVALID_ARGUMENT);
    CHECK_STR_CONTAINS(mc_last_error(), "past the end");
    char big[MC_MAX_BYTES_ARG + 1] = {0};
    CHECK_STATUS(mc_pass_set_bytes(p, 1, big, sizeof big), MC_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(mc_pass_set_bytes(p, 1, NULL, 4), MC_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(mc_pass_set_threadgroup_memory(p, 8, 16), MC_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(mc_pass_set_threadgroup_memory(p, 0, (size_t)1 << 40), MC_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(mc_pass_dispatch_indirect(p, a, 250, (mc_size3){1, 1, 1}), MC_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(mc_pass_dispatch_indirect(p, a, 2, (mc_size3){1, 1, 1}), MC_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(mc_cmdbuf_commit(cb), MC_ERR_INVALID_STATE); /* pass not ended */
    CHECK_STR_CONTAINS(mc_last_error(), "not ended");
    CHECK_OK(mc_pass_end(p));
    CHECK_STATUS(mc_pass_end(p), MC_ERR_INVALID_STATE);
    CHECK_OK(mc_cmdbuf_commit(cb));
    CHECK_STATUS(mc_cmdbuf_commit(cb), MC_ERR_INVALID_STATE); /* use after commit */
    CHECK_STR_CONTAINS(mc_last_error(), "already committed");
    CHECK_STATUS(mc_cmdbuf_begin_pass(cb, "late", &p2), MC_ERR_INVALID_STATE);
    CHECK_STATUS(mc_cmdbuf_enqueue(cb), MC_ERR_INVALID_STATE);
    CHECK_OK(mc_cmdbuf_wait(cb, MC_WAIT_FOREVER));
    CHECK_OK(mc_cmdbuf_status(cb, NULL));
    mc_cmdbuf_release(cb);
    mc_buffer_release(a);
    fixture_close(&f);
    return 0;
}

MC_TEST(resources_may_be_released_after_commit)
{
    fixture f;
    CHECK_EQ(fixture_open(&f, 0), 0);
    uint32_t n = 4096, base = 1;
    mc_buffer *a, *keep;
    mc_buffer_desc bd = {n * 4, MC_STORAGE_SHARED, "a", NULL};
    CHECK_OK(mc_buffer_create(f.d, &bd, &a));
    CHECK_OK(mc_buffer_create(f.d, &bd, &keep));
    mc_cmdbuf *cb;
    CHECK_OK(mc_cmdbuf_create(f.q, NULL, &cb));
    CHECK_OK(encode_1d(cb, "iota", f.iota, a, n, &base));
    CHECK_OK(mc_cmdbuf_copy_buffer(cb, a, 0, keep, 0, n * 4));
    CHECK_OK(mc_cmdbuf_commit(cb));
    mc_buffer_release(a); /* the command buffer holds its own reference */
    mc_pipeline_release(f.iota);
    f.iota = NULL;
    mc_cmdbuf_release(cb); /* fire and forget */
    CHECK_OK(mc_queue_wait_idle(f.q, MC_WAIT_FOREVER));
    uint32_t *v = mc_buffer_contents(keep);
    for (uint32_t i = 0; i < n; i++) CHECK_EQ(v[i], base + i);
    mc_buffer_release(keep);
    fixture_close(&f);
    return 0;
}

static _Atomic int callback_runs;
static pthread_t callback_thread;

static void on_done(void *user, mc_cmdbuf *cb)
{
    callback_thread = pthread_self();
    if (user == (void *)0x1234 && mc_cmdbuf_get_state(cb) >= MC_CMDBUF_COMPLETED) atomic_fetch_add(&callback_runs, 1);
}

MC_TEST(completion_callback_runs_once_on_a_runtime_thread)
{
    fixture f;
    CHECK_EQ(fixture_open(&f, 0), 0);
    mc_buffer *a;
    mc_buffer_desc bd = {1024, MC_STORAGE_SHARED, "a", NULL};
    CHECK_OK(mc_buffer_create(f.d, &bd, &a));
    mc_cmdbuf *cb;
    CHECK_OK(mc_cmdbuf_create(f.q, NULL, &cb));
    CHECK_OK(encode_1d(cb, "add", f.add_one, a, 256, NULL));
    CHECK_STATUS(mc_cmdbuf_on_completed(cb, NULL, NULL), MC_ERR_INVALID_ARGUMENT);
    CHECK_OK(mc_cmdbuf_on_completed(cb, on_done, (void *)0x1234));
    CHECK_OK(mc_cmdbuf_commit(cb));
    CHECK_STATUS(mc_cmdbuf_on_completed(cb, on_done, NULL), MC_ERR_INVALID_STATE);
    CHECK_OK(mc_cmdbuf_wait(cb, MC_WAIT_FOREVER));
    for (int i = 0; i < 2000 && atomic_load(&callback_runs) == 0; i++) {
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
    CHECK_EQ(atomic_load(&callback_runs), 1);
    CHECK(!pthread_equal(callback_thread, pthread_self()));

    /* A commit that fails never runs the callback. */
    mc_cmdbuf *bad;
    CHECK_OK(mc_cmdbuf_create(f.q, NULL, &bad));
    mc_pass *p;
    CHECK_OK(mc_cmdbuf_begin_pass(bad, "open", &p));
    CHECK_OK(mc_cmdbuf_on_completed(bad, on_done, (void *)0x1234));
    CHECK_STATUS(mc_cmdbuf_commit(bad), MC_ERR_INVALID_STATE);
    mc_cmdbuf_release(bad);
    mc_cmdbuf_release(cb);
    mc_buffer_release(a);
    fixture_close(&f);
    CHECK_EQ(atomic_load(&callback_runs), 1);
    return 0;
}

/* Several threads, each with its own queue and buffer, plus two threads
 * sharing one queue. */
typedef struct worker_arg {
    fixture *f;
    mc_queue *q;
    mc_buffer *b;
    int rounds;
    int failures;
} worker_arg;

static void *submitter(void *arg)
{
    worker_arg *w = arg;
    for (int i = 0; i < w->rounds; i++) {
        mc_cmdbuf *cb;
        if (mc_cmdbuf_create(w->q, NULL, &cb) != MC_OK) {
            w->failures++;
            continue;
        }
        if (encode_1d(cb, "add", w->f->add_one, w->b, 2048, NULL) != MC_OK || mc_cmdbuf_commit(cb) != MC_OK ||
            (i % 7 == 0 && mc_cmdbuf_wait(cb, MC_WAIT_FOREVER) != MC_OK))
            w->failures++;
        mc_cmdbuf_release(cb);
    }
    return NULL;
}

MC_TEST(concurrent_submission_from_several_threads)
{
    fixture f;
    CHECK_EQ(fixture_open(&f, 0), 0);
    enum { T = 4, ROUNDS = 60 };
    pthread_t th[T + 2];
    worker_arg w[T + 2];
    mc_queue *shared_q;
    CHECK_OK(mc_queue_create(f.d, NULL, &shared_q));
    mc_buffer *shared_b;
    mc_buffer_desc bd = {2048 * 4, MC_STORAGE_SHARED, "b", NULL};
    CHECK_OK(mc_buffer_create(f.d, &bd, &shared_b));
    for (int i = 0; i < T + 2; i++) {
        w[i].f = &f;
        w[i].rounds = ROUNDS;
        w[i].failures = 0;
        if (i < T) {
            CHECK_OK(mc_queue_create(f.d, NULL, &w[i].q));
            CHECK_OK(mc_buffer_create(f.d, &bd, &w[i].b));
        } else {
            w[i].q = shared_q;
            w[i].b = shared_b;
        }
        CHECK_EQ(pthread_create(&th[i], NULL, submitter, &w[i]), 0);
    }
    for (int i = 0; i < T + 2; i++) pthread_join(th[i], NULL);
    for (int i = 0; i < T + 2; i++) {
        CHECK_EQ(w[i].failures, 0);
        CHECK_OK(mc_queue_wait_idle(w[i].q, MC_WAIT_FOREVER));
    }
    for (int i = 0; i < T; i++) {
        uint32_t *v = mc_buffer_contents(w[i].b);
        for (int k = 0; k < 2048; k++) CHECK_EQ(v[k], ROUNDS);
        mc_buffer_release(w[i].b);
        mc_queue_release(w[i].q);
    }
    uint32_t *v = mc_buffer_contents(shared_b);
    for (int k = 0; k < 2048; k++) CHECK_EQ(v[k], 2 * ROUNDS);
    mc_buffer_release(shared_b);
    mc_queue_release(shared_q);
    fixture_close(&f);
    return 0;
}

/* A queue hands finished command buffers out again (their memory, not their
 * state): a reused one starts empty, with its own label, and a failed one
 * leaves nothing of its failure behind. */
MC_TEST(reused_command_buffers_start_clean)
{
    fixture f;
    CHECK_EQ(fixture_open(&f, 0), 0);
    uint32_t n = 256, base = 7;
    mc_buffer *a;
    mc_buffer_desc bd = {n * 4, MC_STORAGE_SHARED, "a", NULL};
    CHECK_OK(mc_buffer_create(f.d, &bd, &a));
    for (int round = 0; round < 20; round++) {
        char label[32];
        snprintf(label, sizeof label, "round %d", round);
        mc_cmdbuf_desc cd = MC_CMDBUF_DESC_INIT;
        cd.label = label;
        mc_cmdbuf *cb;
        CHECK_OK(mc_cmdbuf_create(f.q, &cd, &cb));
        CHECK_EQ(mc_cmdbuf_get_state(cb), MC_CMDBUF_NOT_ENQUEUED);
        CHECK_EQ(mc_cmdbuf_pass_count(cb), 0);
        CHECK_STR_CONTAINS(mc_cmdbuf_label(cb), label);
        CHECK_STATUS(mc_cmdbuf_status(cb, NULL), MC_ERR_INVALID_STATE);
        mc_pass_info pi;
        CHECK_STATUS(mc_cmdbuf_get_pass_info(cb, 0, &pi), MC_ERR_INVALID_ARGUMENT);
        /* every third one fails by injection, the rest run one or two passes */
        if (round % 3 == 1) CHECK_OK(mc_device_inject_fault(f.d, MC_ERR_PAGE_FAULT, 1));
        uint32_t passes = 1 + (uint32_t)(round % 2);
        for (uint32_t p = 0; p < passes; p++) CHECK_OK(encode_1d(cb, "iota", f.iota, a, n, &base));
        CHECK_OK(mc_cmdbuf_commit(cb));
        CHECK_OK(mc_cmdbuf_wait(cb, MC_WAIT_FOREVER));
        CHECK_EQ(mc_cmdbuf_pass_count(cb), passes);
        if (round % 3 == 1) {
            CHECK_STATUS(mc_cmdbuf_status(cb, NULL), MC_ERR_PAGE_FAULT);
            mc_cmdbuf_release(cb);
            /* the queue stopped (F687): a new one, as a program would */
            mc_queue_release(f.q);
            CHECK_OK(mc_queue_create(f.d, NULL, &f.q));
            continue;
        }
        CHECK_OK(mc_cmdbuf_status(cb, NULL));
        for (uint32_t p = 0; p < passes; p++) {
            CHECK_OK(mc_cmdbuf_get_pass_info(cb, p, &pi));
            CHECK_EQ(pi.state, MC_PASS_COMPLETED);
        }
        const uint32_t *v = mc_buffer_contents(a);
        CHECK_EQ(v[n - 1], base + n - 1);
        mc_cmdbuf_release(cb);
    }
    mc_buffer_release(a);
    fixture_close(&f);
    return 0;
}
