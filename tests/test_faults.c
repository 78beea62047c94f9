/* GPU semantics on every device: the watchdog, victims of a prior error,
 * access revoked, injected faults, device loss, validation refusals. */
#include "mc_test.h"
#include "engine/engine.h"

#include <stdlib.h>
#include <time.h>

static mc_status encode(mc_cmdbuf *cb, const char *label, mc_pipeline *p, mc_buffer *b, uint32_t n, uint32_t arg)
{
    mc_pass *pass;
    mc_status s = mc_cmdbuf_begin_pass(cb, label, &pass);
    if (s == MC_OK) s = mc_pass_set_pipeline(pass, p);
    if (s == MC_OK) s = mc_pass_set_buffer(pass, 0, b, 0);
    if (s == MC_OK) s = mc_pass_set_bytes(pass, 1, &arg, sizeof arg);
    if (s == MC_OK) s = mc_pass_dispatch(pass, (mc_size3){(n + 63) / 64, 1, 1}, (mc_size3){64, 1, 1});
    if (s == MC_OK) s = mc_pass_end(pass);
    return s;
}

static mc_status run_one(mc_queue *q, mc_pipeline *p, mc_buffer *b, uint32_t n, mc_cmdbuf **out)
{
    mc_cmdbuf *cb;
    mc_status s = mc_cmdbuf_create(q, NULL, &cb);
    if (s != MC_OK) return s;
    s = encode(cb, "work", p, b, n, n);
    if (s == MC_OK) s = mc_cmdbuf_commit(cb);
    if (s == MC_OK) s = mc_cmdbuf_wait(cb, MC_WAIT_FOREVER);
    if (s == MC_OK) s = mc_cmdbuf_status(cb, NULL);
    if (out) *out = cb;
    else mc_cmdbuf_release(cb);
    return s;
}

MC_TEST(watchdog_times_out_long_command_buffers)
{
    mc_device *d = mct_open_device(200);
    CHECK(d);
    if (mct_device_kind(d) != MC_DEVICE_CPU) MC_SKIP("the execution-time limit is emulated on the cpu device only");
    mc_pipeline *spin = mct_pipeline(d, "basic", "spin"), *add = mct_pipeline(d, "basic", "add_one");
    CHECK(spin && add);
    mc_queue *q;
    CHECK_OK(mc_queue_create(d, NULL, &q));
    uint32_t n = 64 * 4096;
    mc_buffer *b;
    mc_buffer_desc bd = {n * 4, MC_STORAGE_SHARED, "b", NULL};
    CHECK_OK(mc_buffer_create(d, &bd, &b));

    mc_cmdbuf *cb, *victim;
    CHECK_OK(mc_cmdbuf_create(q, NULL, &cb));
    CHECK_OK(encode(cb, "before", add, b, n, n));
    CHECK_OK(encode(cb, "forever", spin, b, n, 300000u)); /* ~10 ms a threadgroup, a minute in all */
    CHECK_OK(encode(cb, "after", add, b, n, n));
    CHECK_OK(mc_cmdbuf_create(q, NULL, &victim));
    CHECK_OK(encode(victim, "victim", add, b, n, n));
    uint64_t t0 = mc__test_now_ns();
    CHECK_OK(mc_cmdbuf_commit(cb));
    CHECK_OK(mc_cmdbuf_commit(victim));
    CHECK_OK(mc_cmdbuf_wait(cb, 20ull * 1000000000ull));
    uint64_t took = mc__test_now_ns() - t0;
    const char *msg;
    CHECK_STATUS(mc_cmdbuf_status(cb, &msg), MC_ERR_TIMEOUT);
    CHECK_STR_CONTAINS(msg, "forever");
    CHECK_LT(took, 5ull * 1000000000ull); /* stopped near the 200 ms limit, not after the work */
    CHECK_EQ(mc_cmdbuf_get_state(cb), MC_CMDBUF_ERROR);
    mc_pass_info pi;
    CHECK_OK(mc_cmdbuf_get_pass_info(cb, 0, &pi));
    CHECK_EQ(pi.state, MC_PASS_COMPLETED);
    CHECK_OK(mc_cmdbuf_get_pass_info(cb, 1, &pi));
    CHECK_EQ(pi.state, MC_PASS_FAULTED);
    CHECK(strcmp(pi.label, "forever") == 0);
    CHECK_OK(mc_cmdbuf_get_pass_info(cb, 2, &pi));
    CHECK_EQ(pi.state, MC_PASS_PENDING);

    /* The command buffer queued behind it is a victim and did not run. */
    CHECK_OK(mc_cmdbuf_wait(victim, MC_WAIT_FOREVER));
    CHECK_STATUS(mc_cmdbuf_status(victim, NULL), MC_ERR_PRIOR_ERROR);
    CHECK_OK(mc_cmdbuf_get_pass_info(victim, 0, &pi));
    CHECK_EQ(pi.state, MC_PASS_PENDING);
    uint32_t *v = mc_buffer_contents(b);
    CHECK_EQ(v[n - 1] >= 1, 1);

    /* The queue accepts no more work until it is recreated (F687). */
    CHECK_STATUS(mc_queue_check(q), MC_ERR_TIMEOUT);
    mc_cmdbuf *late;
    CHECK_OK(mc_cmdbuf_create(q, NULL, &late));
    CHECK_OK(encode(late, "late", add, b, n, n));
    CHECK_STATUS(mc_cmdbuf_commit(late), MC_ERR_TIMEOUT);
    CHECK_EQ(mc_cmdbuf_get_state(late), MC_CMDBUF_ERROR);
    mc_cmdbuf_release(late);
    mc_queue_release(q);
    CHECK_OK(mc_queue_create(d, NULL, &q));
    CHECK_OK(run_one(q, add, b, n, NULL));

    mc_cmdbuf_release(cb);
    mc_cmdbuf_release(victim);
    mc_queue_release(q);
    mc_buffer_release(b);
    mc_pipeline_release(spin);
    mc_pipeline_release(add);
    mc_device_release(d);
    return 0;
}

MC_TEST(repeated_timeouts_revoke_access_for_a_cooldown)
{
    setenv("MC_REVOKE_COOLDOWN_MS", "300", 1);
    mc_device *d = mct_open_device(0);
    CHECK(d);
    if (mct_device_kind(d) != MC_DEVICE_CPU) MC_SKIP("revocation is emulated on the cpu device; real GPUs decide");
    mc_pipeline *add = mct_pipeline(d, "basic", "add_one");
    CHECK(add);
    mc_buffer *b;
    mc_buffer_desc bd = {4096, MC_STORAGE_SHARED, "b", NULL};
    CHECK_OK(mc_buffer_create(d, &bd, &b));
    for (int i = 0; i < 3; i++) {
        mc_queue *q;
        CHECK_OK(mc_queue_create(d, NULL, &q));
        CHECK_OK(mc_device_inject_fault(d, MC_ERR_TIMEOUT, 1));
        CHECK_STATUS(run_one(q, add, b, 1024, NULL), MC_ERR_TIMEOUT);
        mc_queue_release(q);
    }
    mc_queue *q;
    CHECK_OK(mc_queue_create(d, NULL, &q));
    mc_cmdbuf *cb;
    CHECK_STATUS(run_one(q, add, b, 1024, &cb), MC_ERR_ACCESS_REVOKED);
    mc_pass_info pi;
    CHECK_OK(mc_cmdbuf_get_pass_info(cb, 0, &pi));
    CHECK_EQ(pi.state, MC_PASS_PENDING); /* nothing ran */
    mc_cmdbuf_release(cb);
    mc_queue_release(q);
    struct timespec ts = {0, 400000000};
    nanosleep(&ts, NULL);
    CHECK_OK(mc_queue_create(d, NULL, &q));
    CHECK_OK(run_one(q, add, b, 1024, NULL)); /* the cool-down is over */
    mc_queue_release(q);
    mc_buffer_release(b);
    mc_pipeline_release(add);
    mc_device_release(d);
    unsetenv("MC_REVOKE_COOLDOWN_MS");
    return 0;
}

MC_TEST(injected_faults_fail_the_chosen_command_buffer)
{
    /* access-revoked last: like a real one it starts the device's cool-down */
    static const mc_status kinds[] = {MC_ERR_TIMEOUT,       MC_ERR_PAGE_FAULT,       MC_ERR_INTERNAL,
                                      MC_ERR_OUT_OF_MEMORY, MC_ERR_INVALID_RESOURCE, MC_ERR_NOT_PERMITTED,
                                      MC_ERR_ACCESS_REVOKED};
    mc_device *d = mct_open_device(0);
    CHECK(d);
    mc_pipeline *add = mct_pipeline(d, "basic", "add_one");
    CHECK(add);
    mc_buffer *b;
    uint32_t n = 256;
    mc_buffer_desc bd = {n * 4, MC_STORAGE_SHARED, "b", NULL};
    CHECK_OK(mc_buffer_create(d, &bd, &b));
    CHECK_STATUS(mc_device_inject_fault(d, MC_ERR_INVALID_ARGUMENT, 1), MC_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(mc_device_inject_fault(d, MC_ERR_TIMEOUT, 0), MC_ERR_INVALID_ARGUMENT);
    for (size_t k = 0; k < sizeof kinds / sizeof kinds[0]; k++) {
        mc_queue *q;
        CHECK_OK(mc_queue_create(d, NULL, &q));
        CHECK_OK(mc_device_inject_fault(d, kinds[k], 2)); /* the second from now */
        CHECK_OK(run_one(q, add, b, n, NULL));
        mc_cmdbuf *cb;
        CHECK_OK(mc_cmdbuf_create(q, NULL, &cb));
        /* three passes: the middle one faults, the first completes */
        CHECK_OK(encode(cb, "p0", add, b, n, n));
        CHECK_OK(encode(cb, "p1", add, b, n, n));
        CHECK_OK(encode(cb, "p2", add, b, n, n));
        uint32_t before = ((uint32_t *)mc_buffer_contents(b))[0];
        CHECK_OK(mc_cmdbuf_commit(cb));
        CHECK_OK(mc_cmdbuf_wait(cb, MC_WAIT_FOREVER));
        const char *msg;
        CHECK_STATUS(mc_cmdbuf_status(cb, &msg), kinds[k]);
        CHECK(msg[0] != '\0');
        mc_pass_info pi;
        CHECK_OK(mc_cmdbuf_get_pass_info(cb, 0, &pi));
        CHECK_EQ(pi.state, MC_PASS_COMPLETED);
        CHECK_OK(mc_cmdbuf_get_pass_info(cb, 1, &pi));
        CHECK_EQ(pi.state, MC_PASS_FAULTED);
        CHECK_OK(mc_cmdbuf_get_pass_info(cb, 2, &pi));
        CHECK_EQ(pi.state, MC_PASS_PENDING);
        CHECK_EQ(((uint32_t *)mc_buffer_contents(b))[0], before + 1); /* partial work, as on a real fault */
        mc_cmdbuf_release(cb);
        mc_queue_release(q);
    }
    mc_buffer_release(b);
    mc_pipeline_release(add);
    mc_device_release(d);
    return 0;
}

MC_TEST(faults_from_the_environment_and_spec)
{
    setenv("MC_INJECT_FAULTS", "page-fault@2", 1);
    mc_device *d = mct_open_device(0);
    unsetenv("MC_INJECT_FAULTS");
    CHECK(d);
    mc_pipeline *add = mct_pipeline(d, "basic", "add_one");
    CHECK(add);
    mc_buffer *b;
    mc_buffer_desc bd = {1024, MC_STORAGE_SHARED, "b", NULL};
    CHECK_OK(mc_buffer_create(d, &bd, &b));
    mc_queue *q;
    CHECK_OK(mc_queue_create(d, NULL, &q));
    CHECK_OK(run_one(q, add, b, 256, NULL));
    CHECK_STATUS(run_one(q, add, b, 256, NULL), MC_ERR_PAGE_FAULT);
    mc_queue_release(q);
    CHECK_STATUS(mc_device_inject_faults(d, "timeout@1,bogus@2"), MC_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(mc_device_inject_faults(d, "timeout@0"), MC_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(mc_device_inject_faults(d, "timeout"), MC_ERR_INVALID_ARGUMENT);
    CHECK_OK(mc_device_inject_faults(d, "internal@2"));
    CHECK_OK(mc_queue_create(d, NULL, &q));
    CHECK_OK(run_one(q, add, b, 256, NULL)); /* the bad specs scheduled nothing */
    CHECK_STATUS(run_one(q, add, b, 256, NULL), MC_ERR_INTERNAL);
    mc_queue_release(q);
    mc_buffer_release(b);
    mc_pipeline_release(add);
    mc_device_release(d);
    return 0;
}

MC_TEST(device_loss_is_sticky)
{
    mc_device *d = mct_open_device(0);
    CHECK(d);
    mc_pipeline *add = mct_pipeline(d, "basic", "add_one");
    CHECK(add);
    mc_buffer *b;
    mc_buffer_desc bd = {1024, MC_STORAGE_SHARED, "b", NULL};
    CHECK_OK(mc_buffer_create(d, &bd, &b));
    mc_queue *q, *q2;
    CHECK_OK(mc_queue_create(d, NULL, &q));
    CHECK_OK(mc_queue_create(d, NULL, &q2));
    CHECK_OK(mc_device_inject_fault(d, MC_ERR_DEVICE_LOST, 1));
    CHECK_STATUS(run_one(q, add, b, 256, NULL), MC_ERR_DEVICE_LOST);
    CHECK_STATUS(mc_device_check(d), MC_ERR_DEVICE_LOST);
    CHECK_STATUS(run_one(q2, add, b, 256, NULL), MC_ERR_DEVICE_LOST); /* every queue */
    mc_buffer *b2;
    CHECK_STATUS(mc_buffer_create(d, &bd, &b2), MC_ERR_DEVICE_LOST);
    mc_queue_release(q);
    mc_queue_release(q2);
    mc_buffer_release(b);
    mc_pipeline_release(add);
    mc_device_release(d);
    /* A fresh device works. */
    d = mct_open_device(0);
    CHECK(d);
    CHECK_OK(mc_device_check(d));
    mc_device_release(d);
    return 0;
}

MC_TEST(validation_refusals)
{
    mc_validation_set(true);
    mc_device *d = mct_open_device(0);
    CHECK(d);
    mc_pipeline *saxpy = mct_pipeline(d, "basic", "saxpy");
    CHECK(saxpy);
    mc_buffer *b;
    mc_buffer_desc bd = {1024, MC_STORAGE_SHARED, "b", NULL};
    CHECK_OK(mc_buffer_create(d, &bd, &b));
    mc_queue *q;
    CHECK_OK(mc_queue_create(d, NULL, &q));
    mc_cmdbuf *cb;
    mc_cmdbuf_desc cd = {"unretained", MC_CMDBUF_UNRETAINED_REFERENCES};
    CHECK_OK(mc_cmdbuf_create(q, &cd, &cb));
    mc_pass *p;
    CHECK_OK(mc_cmdbuf_begin_pass(cb, "v", &p));
    CHECK_OK(mc_pass_set_pipeline(p, saxpy));
    CHECK_STATUS(mc_pass_set_buffer(p, 0, b, 1024), MC_ERR_VALIDATION); /* offset at the end */
    CHECK_OK(mc_pass_set_buffer(p, 0, b, 0));
    CHECK_OK(mc_pass_set_buffer(p, 1, b, 0));
    float a = 1;
    CHECK_OK(mc_pass_set_bytes(p, 2, &a, 4));
    /* slot 3 (n) unbound */
    CHECK_STATUS(mc_pass_dispatch(p, (mc_size3){1, 1, 1}, (mc_size3){32, 1, 1}), MC_ERR_VALIDATION);
    CHECK_STR_CONTAINS(mc_last_error(), "slot 3");
    uint32_t n = 0;
    CHECK_OK(mc_pass_set_bytes(p, 3, &n, 4));
    CHECK_STATUS(mc_pass_dispatch(p, (mc_size3){0, 1, 1}, (mc_size3){32, 1, 1}), MC_ERR_VALIDATION);
    CHECK_STATUS(mc_pass_dispatch(p, (mc_size3){1, 1, 1}, (mc_size3){0, 1, 1}), MC_ERR_VALIDATION);
    CHECK_STATUS(mc_pass_dispatch(p, (mc_size3){1, 1, 1}, (mc_size3){4096, 1, 1}), MC_ERR_VALIDATION);
    CHECK_OK(mc_pass_dispatch(p, (mc_size3){1, 1, 1}, (mc_size3){32, 1, 1}));
    CHECK_STATUS(mc_cmdbuf_commit(cb), MC_ERR_VALIDATION); /* pass not ended */
    CHECK_OK(mc_pass_end(p));
    /* Hold the command buffer on an event so the buffer is in use. */
    mc_event *e;
    CHECK_OK(mc_event_create(d, 0, &e));
    mc_cmdbuf *gate;
    CHECK_OK(mc_cmdbuf_create(q, NULL, &gate));
    CHECK_OK(mc_cmdbuf_wait_event(gate, e, 1));
    CHECK_OK(mc_cmdbuf_commit(gate));
    CHECK_OK(mc_cmdbuf_commit(cb));
    CHECK_EQ(mc_cmdbuf_get_state(cb), MC_CMDBUF_COMMITTED); /* held behind the gate */
    mc_buffer_release(b);                                   /* freed while in use: refused, the reference kept */
    CHECK_STR_CONTAINS(mc_last_error(), "still uses it");
    CHECK_EQ(mc_buffer_size(b), 1024);
    CHECK_OK(mc_event_signal(e, 1));
    CHECK_OK(mc_cmdbuf_wait(cb, MC_WAIT_FOREVER));
    CHECK_OK(mc_cmdbuf_status(cb, NULL));
    mc_buffer_release(b); /* now it is free */
    mc_cmdbuf_release(gate);
    mc_cmdbuf_release(cb);
    mc_event_release(e);
    mc_queue_release(q);
    mc_pipeline_release(saxpy);
    mc_device_release(d);
    mc_validation_set(false);
    return 0;
}

/* Issue 15: a fault list is refused whole when any item is out of range,
 * negative, unknown or a second fault on one command buffer. */
MC_TEST(fault_lists_refuse_bad_numbers_words_and_repeats)
{
    mc_device *d = mct_open_device(0);
    CHECK(d);
    static const struct {
        const char *spec, *why;
    } bad[] = {
        {"timeout@-1", "from 1 to"},
        {"timeout@99999999999999999999", "from 1 to"},
        {"timeout@1000000000000001", "from 1 to"},
        {"timeout@+3", "from 1 to"},
        {"timeout@ 3", "from 1 to"},
        {"timeout@3x", "from 1 to"},
        {"timeout@", "from 1 to"},
        {"garbage", "not KIND@N"},
        {"explode@3", "unknown fault kind 'explode'"},
        {"kill@-1", "from 1 to"},
        {"kill@3", "isolated run"},
        {"timeout@3,page-fault@3", "a command buffer fails once"},
        {"timeout@2,,page-fault@3", "empty"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        mc_status s = mc_device_inject_faults(d, bad[i].spec);
        if (s != MC_ERR_INVALID_ARGUMENT) {
            fprintf(stderr, "'%s' was taken (%s)\n", bad[i].spec, mc_status_name(s));
            return 1;
        }
        CHECK_STR_CONTAINS(mc_last_error(), bad[i].why);
    }
    /* The largest N is taken; a fault on a command buffer that already has
     * one is refused, and the refused lists scheduled nothing. */
    CHECK_OK(mc_device_inject_faults(d, "timeout@1000000000000000"));
    CHECK_OK(mc_device_inject_faults(d, "page-fault@2"));
    CHECK_STATUS(mc_device_inject_faults(d, "internal@2"), MC_ERR_INVALID_ARGUMENT);
    CHECK_STR_CONTAINS(mc_last_error(), "already has a fault");
    CHECK_EQ(d->nfaults, 2);
    mc_device_release(d);
    return 0;
}

MC_TEST(fault_list_from_the_environment_is_checked_at_open)
{
    const char *bad[] = {"garbage", "timeout@-1", "kill@-1", "timeout@99999999999999999999", "timeout@2,timeout@2"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        setenv("MC_INJECT_FAULTS", bad[i], 1);
        mc_device *d = NULL;
        mc_status s = mc_device_open_name("cpu", &d);
        unsetenv("MC_INJECT_FAULTS");
        if (s != MC_ERR_INVALID_ARGUMENT) {
            fprintf(stderr, "MC_INJECT_FAULTS=%s: the device opened (%s)\n", bad[i], mc_status_name(s));
            mc_device_release(d);
            return 1;
        }
        CHECK(d == NULL);
        CHECK_STR_CONTAINS(mc_last_error(), "MC_INJECT_FAULTS");
    }
    return 0;
}

typedef struct seen_log {
    int never_fired;
    char text[512];
} seen_log;

static void on_log(void *user, mc_log_level level, const char *id, const char *message)
{
    seen_log *l = user;
    (void)level;
    if (!strcmp(id, "device.fault_never_fired")) {
        l->never_fired++;
        snprintf(l->text, sizeof l->text, "%s", message);
    }
}

MC_TEST(faults_past_the_end_of_the_work_are_reported)
{
    seen_log seen;
    memset(&seen, 0, sizeof seen);
    mc_log_set_callback(on_log, &seen, MC_LOG_WARN);
    mc_device *d = mct_open_device(0);
    CHECK(d);
    mc_pipeline *add = mct_pipeline(d, "basic", "add_one");
    CHECK(add);
    mc_buffer *b;
    mc_buffer_desc bd = {1024, MC_STORAGE_SHARED, "b", NULL};
    CHECK_OK(mc_buffer_create(d, &bd, &b));
    mc_queue *q;
    CHECK_OK(mc_queue_create(d, NULL, &q));
    CHECK_OK(mc_device_inject_faults(d, "page-fault@1,device-lost@500"));
    CHECK_STATUS(run_one(q, add, b, 256, NULL), MC_ERR_PAGE_FAULT);
    mc_queue_release(q);
    mc_buffer_release(b);
    mc_pipeline_release(add);
    mc_device_release(d);
    mc_log_set_callback(NULL, NULL, MC_LOG_WARN);
    CHECK_EQ(seen.never_fired, 1); /* the one that fired is not reported */
    CHECK_STR_CONTAINS(seen.text, "device-lost@500 never fired");
    CHECK_STR_CONTAINS(seen.text, "committed 1 command buffer");
    return 0;
}

/* mc__fail may quote the detail it replaces (MC_DEVICE=bogus once printed
 * a garbled message: the format read the buffer it was writing). */
MC_TEST(error_detail_may_quote_itself)
{
    setenv("MC_DEVICE", "bogus", 1);
    mc_device *d = NULL;
    CHECK_STATUS(mc_device_open(NULL, &d), MC_ERR_INVALID_ARGUMENT);
    unsetenv("MC_DEVICE");
    CHECK(!strcmp(mc_last_error(), "MC_DEVICE: unknown device 'bogus' (expected cpu, cuda or metal, optionally :N)"));
    mc__fail(MC_ERR_IO, "inner %d", 1);
    mc__fail(MC_ERR_IO, "outer: %s: %s", mc_last_error(), mc_last_error());
    CHECK(!strcmp(mc_last_error(), "outer: inner 1: inner 1"));
    return 0;
}
