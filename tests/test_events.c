/* Timeline events (the MTLSharedEvent model, F678). */
#include "mc_test.h"

#include <pthread.h>
#include <stdlib.h>
#include <time.h>

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

MC_TEST(event_cpu_signal_and_wait)
{
    mc_device *d = mct_open_device(0);
    CHECK(d);
    mc_event *e;
    CHECK_OK(mc_event_create(d, 5, &e));
    uint64_t v;
    CHECK_OK(mc_event_get_value(e, &v));
    CHECK_EQ(v, 5);
    CHECK_OK(mc_event_wait(e, 5, 0));
    CHECK_STATUS(mc_event_wait(e, 6, 1000000), MC_ERR_WAIT_TIMEOUT);
    CHECK_OK(mc_event_signal(e, 9));
    CHECK_OK(mc_event_wait(e, 7, 0));
    CHECK_STATUS(mc_event_signal(e, 8), MC_ERR_INVALID_ARGUMENT); /* only forward */
    CHECK_STR_CONTAINS(mc_last_error(), "forward");
    CHECK_OK(mc_event_get_value(e, &v));
    CHECK_EQ(v, 9);
    mc_event_release(e);
    mc_device_release(d);
    return 0;
}

MC_TEST(event_gpu_wait_holds_a_command_buffer_until_signalled)
{
    mc_device *d = mct_open_device(0);
    CHECK(d);
    mc_pipeline *iota = mct_pipeline(d, "basic", "iota");
    CHECK(iota);
    mc_queue *q;
    CHECK_OK(mc_queue_create(d, NULL, &q));
    mc_event *e;
    CHECK_OK(mc_event_create(d, 0, &e));
    uint32_t n = 512, base = 3;
    mc_buffer *b;
    mc_buffer_desc bd = {n * 4, MC_STORAGE_SHARED, "b", NULL};
    CHECK_OK(mc_buffer_create(d, &bd, &b));
    mc_cmdbuf *cb;
    CHECK_OK(mc_cmdbuf_create(q, NULL, &cb));
    CHECK_OK(mc_cmdbuf_wait_event(cb, e, 2));
    mc_pass *p;
    CHECK_OK(mc_cmdbuf_begin_pass(cb, "iota", &p));
    CHECK_OK(mc_pass_set_pipeline(p, iota));
    CHECK_OK(mc_pass_set_buffer(p, 0, b, 0));
    CHECK_OK(mc_pass_set_bytes(p, 1, &n, 4));
    CHECK_OK(mc_pass_set_bytes(p, 2, &base, 4));
    CHECK_OK(mc_pass_dispatch(p, (mc_size3){n / 64, 1, 1}, (mc_size3){64, 1, 1}));
    CHECK_OK(mc_pass_end(p));
    CHECK_OK(mc_cmdbuf_signal_event(cb, e, 10));
    CHECK_OK(mc_cmdbuf_commit(cb));
    CHECK_STATUS(mc_cmdbuf_wait(cb, 50000000), MC_ERR_WAIT_TIMEOUT); /* held at the wait */
    CHECK(((uint32_t *)mc_buffer_contents(b))[n - 1] == 0);
    CHECK_OK(mc_event_signal(e, 1));
    CHECK_STATUS(mc_cmdbuf_wait(cb, 20000000), MC_ERR_WAIT_TIMEOUT); /* 1 < 2: still held */
    CHECK_OK(mc_event_signal(e, 2));
    CHECK_OK(mc_cmdbuf_wait(cb, MC_WAIT_FOREVER));
    CHECK_OK(mc_cmdbuf_status(cb, NULL));
    CHECK_EQ(((uint32_t *)mc_buffer_contents(b))[n - 1], base + n - 1);
    uint64_t v;
    CHECK_OK(mc_event_get_value(e, &v));
    CHECK_EQ(v, 10); /* the GPU-side signal */
    mc_cmdbuf_release(cb);
    mc_buffer_release(b);
    mc_event_release(e);
    mc_queue_release(q);
    mc_pipeline_release(iota);
    mc_device_release(d);
    return 0;
}

MC_TEST(event_chains_two_queues_on_the_device)
{
    /* Queue B waits for queue A's signal: ordering across queues without a
     * CPU round trip (F693). */
    mc_device *d = mct_open_device(0);
    CHECK(d);
    mc_pipeline *iota = mct_pipeline(d, "basic", "iota"), *add = mct_pipeline(d, "basic", "add_one");
    CHECK(iota && add);
    mc_queue *qa, *qb;
    CHECK_OK(mc_queue_create(d, NULL, &qa));
    CHECK_OK(mc_queue_create(d, NULL, &qb));
    mc_event *e;
    CHECK_OK(mc_event_create(d, 0, &e));
    uint32_t n = 4096, base = 0;
    mc_buffer *b;
    mc_buffer_desc bd = {n * 4, MC_STORAGE_SHARED, "b", NULL};
    CHECK_OK(mc_buffer_create(d, &bd, &b));
    mc_cmdbuf *cbb, *cba;
    CHECK_OK(mc_cmdbuf_create(qb, NULL, &cbb));
    CHECK_OK(mc_cmdbuf_wait_event(cbb, e, 1));
    mc_pass *p;
    CHECK_OK(mc_cmdbuf_begin_pass(cbb, "add", &p));
    CHECK_OK(mc_pass_set_pipeline(p, add));
    CHECK_OK(mc_pass_set_buffer(p, 0, b, 0));
    CHECK_OK(mc_pass_set_bytes(p, 1, &n, 4));
    CHECK_OK(mc_pass_dispatch(p, (mc_size3){n / 64, 1, 1}, (mc_size3){64, 1, 1}));
    CHECK_OK(mc_pass_end(p));
    CHECK_OK(mc_cmdbuf_commit(cbb)); /* committed first, runs second */
    sleep_ms(20);
    CHECK_OK(mc_cmdbuf_create(qa, NULL, &cba));
    CHECK_OK(mc_cmdbuf_begin_pass(cba, "iota", &p));
    CHECK_OK(mc_pass_set_pipeline(p, iota));
    CHECK_OK(mc_pass_set_buffer(p, 0, b, 0));
    CHECK_OK(mc_pass_set_bytes(p, 1, &n, 4));
    CHECK_OK(mc_pass_set_bytes(p, 2, &base, 4));
    CHECK_OK(mc_pass_dispatch(p, (mc_size3){n / 64, 1, 1}, (mc_size3){64, 1, 1}));
    CHECK_OK(mc_pass_end(p));
    CHECK_OK(mc_cmdbuf_signal_event(cba, e, 1));
    CHECK_OK(mc_cmdbuf_commit(cba));
    CHECK_OK(mc_cmdbuf_wait(cbb, 10ull * 1000000000ull));
    CHECK_OK(mc_cmdbuf_status(cbb, NULL));
    uint32_t *v = mc_buffer_contents(b);
    for (uint32_t i = 0; i < n; i++) CHECK_EQ(v[i], i + 1);
    mc_cmdbuf_release(cba);
    mc_cmdbuf_release(cbb);
    mc_buffer_release(b);
    mc_event_release(e);
    mc_queue_release(qa);
    mc_queue_release(qb);
    mc_pipeline_release(iota);
    mc_pipeline_release(add);
    mc_device_release(d);
    return 0;
}

typedef struct notify_state {
    pthread_mutex_t lock;
    int runs;
    uint64_t value;
    bool had_event;
    pthread_t thread;
} notify_state;

static void on_notify(void *user, mc_event *e, uint64_t value)
{
    notify_state *s = user;
    pthread_mutex_lock(&s->lock);
    s->runs++;
    s->value = value;
    s->had_event = e != NULL;
    s->thread = pthread_self();
    pthread_mutex_unlock(&s->lock);
}

static int runs_of(notify_state *s)
{
    pthread_mutex_lock(&s->lock);
    int r = s->runs;
    pthread_mutex_unlock(&s->lock);
    return r;
}

MC_TEST(event_notify_runs_once_on_the_notifier_thread)
{
    mc_device *d = mct_open_device(0);
    CHECK(d);
    mc_event *e;
    CHECK_OK(mc_event_create(d, 0, &e));
    notify_state s = {PTHREAD_MUTEX_INITIALIZER, 0, 0, false, pthread_self()};
    CHECK_STATUS(mc_event_notify(e, 3, NULL, &s), MC_ERR_INVALID_ARGUMENT);
    CHECK_OK(mc_event_notify(e, 3, on_notify, &s));
    CHECK_OK(mc_event_signal(e, 2));
    sleep_ms(30);
    CHECK_EQ(runs_of(&s), 0);
    CHECK_OK(mc_event_signal(e, 4));
    for (int i = 0; i < 1000 && runs_of(&s) == 0; i++) sleep_ms(1);
    CHECK_EQ(runs_of(&s), 1);
    CHECK_GE(s.value, 3);
    CHECK(s.had_event);
    CHECK(!pthread_equal(s.thread, pthread_self())); /* never on the signalling thread */
    CHECK_OK(mc_event_signal(e, 10));
    sleep_ms(20);
    CHECK_EQ(runs_of(&s), 1); /* exactly once */

    /* Already reached: still delivered, on the notifier thread. */
    notify_state s2 = {PTHREAD_MUTEX_INITIALIZER, 0, 0, false, pthread_self()};
    CHECK_OK(mc_event_notify(e, 5, on_notify, &s2));
    for (int i = 0; i < 1000 && runs_of(&s2) == 0; i++) sleep_ms(1);
    CHECK_EQ(runs_of(&s2), 1);

    /* Released before reaching the target: runs once with a NULL event. */
    notify_state s3 = {PTHREAD_MUTEX_INITIALIZER, 0, 0, true, pthread_self()};
    CHECK_OK(mc_event_notify(e, 1000, on_notify, &s3));
    mc_event_release(e);
    for (int i = 0; i < 1000 && runs_of(&s3) == 0; i++) sleep_ms(1);
    CHECK_EQ(runs_of(&s3), 1);
    CHECK(!s3.had_event);
    CHECK_EQ(s3.value, 10);
    mc_device_release(d);
    return 0;
}

MC_TEST(event_notify_after_gpu_signal)
{
    mc_device *d = mct_open_device(0);
    CHECK(d);
    mc_queue *q;
    CHECK_OK(mc_queue_create(d, NULL, &q));
    mc_event *e;
    CHECK_OK(mc_event_create(d, 0, &e));
    notify_state s = {PTHREAD_MUTEX_INITIALIZER, 0, 0, false, pthread_self()};
    CHECK_OK(mc_event_notify(e, 7, on_notify, &s));
    mc_cmdbuf *cb;
    CHECK_OK(mc_cmdbuf_create(q, NULL, &cb));
    CHECK_OK(mc_cmdbuf_signal_event(cb, e, 7));
    CHECK_OK(mc_cmdbuf_commit(cb));
    mc_cmdbuf_release(cb);
    for (int i = 0; i < 2000 && runs_of(&s) == 0; i++) sleep_ms(1);
    CHECK_EQ(runs_of(&s), 1);
    CHECK_EQ(s.value, 7);
    mc_event_release(e);
    mc_queue_release(q);
    mc_device_release(d);
    return 0;
}
