/* The runtime layer's view of the engine (src/runtime/runtime.h): handle
 * checks, device loss, and reopening a device like a lost one with its
 * pending injected faults carried over. */
#include "mc_test.h"
#include "runtime/runtime.h"

#include <stdlib.h>
#include <string.h>

static mc_status run_one(mc_queue *q, mc_pipeline *p, mc_buffer *b)
{
    mc_cmdbuf *cb;
    mc_status s = mc_cmdbuf_create(q, NULL, &cb);
    if (s != MC_OK) return s;
    mc_pass *pass;
    uint32_t n = 256;
    s = mc_cmdbuf_begin_pass(cb, "work", &pass);
    if (s == MC_OK) s = mc_pass_set_pipeline(pass, p);
    if (s == MC_OK) s = mc_pass_set_buffer(pass, 0, b, 0);
    if (s == MC_OK) s = mc_pass_set_bytes(pass, 1, &n, sizeof n);
    if (s == MC_OK) s = mc_pass_dispatch(pass, (mc_size3){n / 64, 1, 1}, (mc_size3){64, 1, 1});
    if (s == MC_OK) s = mc_pass_end(pass);
    if (s == MC_OK) s = mc_cmdbuf_commit(cb);
    if (s == MC_OK) s = mc_cmdbuf_wait(cb, MC_WAIT_FOREVER);
    if (s == MC_OK) s = mc_cmdbuf_status(cb, NULL);
    mc_cmdbuf_release(cb);
    return s;
}

typedef struct seen_log {
    int never_fired;
} seen_log;

static void on_log(void *user, mc_log_level level, const char *id, const char *message)
{
    (void)level;
    (void)message;
    if (!strcmp(id, "device.fault_never_fired")) ((seen_log *)user)->never_fired++;
}

MC_TEST(runtime_handles_name_their_device)
{
    mc_device *d = mct_open_device(0);
    CHECK(d);
    mc_buffer *b;
    mc_buffer_desc bd = {1024, MC_STORAGE_SHARED, "b", NULL};
    CHECK_OK(mc_buffer_create(d, &bd, &b));
    CHECK(mc__object_check(d, MC__TAG_DEVICE));
    CHECK(mc__object_check(b, MC__TAG_BUFFER));
    CHECK(!mc__object_check(b, MC__TAG_PIPELINE));
    CHECK(!mc__object_check(NULL, MC__TAG_BUFFER));
    CHECK(mc__object_device(d) == d);
    CHECK(mc__object_device(b) == d);
    CHECK(mc__object_device(NULL) == NULL);
    uint32_t not_an_object[16];
    memset(not_an_object, 0x5a, sizeof not_an_object);
    CHECK(mc__object_device(not_an_object) == NULL);
    CHECK(!mc__device_is_lost(d));
    CHECK(!mc__device_is_lost((mc_device *)(void *)b)); /* not a device: not lost */
    mc_buffer_release(b);
    mc_device_release(d);
    return 0;
}

MC_TEST(runtime_reopen_like_carries_pending_faults)
{
    seen_log seen = {0};
    mc_log_set_callback(on_log, &seen, MC_LOG_WARN);
    mc_device_desc dd = MC_DEVICE_DESC_INIT;
    CHECK_OK(mc_device_desc_from_name(getenv("MC_DEVICE"), &dd));
    dd.time_limit_ms = 1234;
    dd.threads = 3;
    mc_device *d;
    CHECK_OK(mc_device_open(&dd, &d));
    mc_device_info before;
    CHECK_OK(mc_device_get_info(d, &before));
    mc_pipeline *add = mct_pipeline(d, "basic", "add_one");
    CHECK(add);
    mc_buffer *b;
    mc_buffer_desc bd = {1024, MC_STORAGE_SHARED, "b", NULL};
    CHECK_OK(mc_buffer_create(d, &bd, &b));
    mc_queue *q;
    CHECK_OK(mc_queue_create(d, NULL, &q));

    /* Commit 1 passes; 2 is lost; 3 and 5 lie beyond the loss. */
    CHECK_OK(mc_device_inject_faults(d, "device-lost@2,page-fault@3,internal@5"));
    CHECK_OK(run_one(q, add, b));
    CHECK_STATUS(run_one(q, add, b), MC_ERR_DEVICE_LOST);
    CHECK(mc__device_is_lost(d));

    mc__device_like like;
    CHECK_STATUS(mc__device_take_like(NULL, &like), MC_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(mc__device_take_like(d, NULL), MC_ERR_INVALID_ARGUMENT);
    CHECK_OK(mc__device_take_like(d, &like));
    CHECK_EQ(like.desc.kind, before.kind);
    CHECK_EQ(like.desc.index, before.index);
    CHECK_EQ(like.desc.time_limit_ms, 1234);
    CHECK_EQ(like.desc.threads, 3);
    CHECK_EQ(like.nfaults, 2);
    /* Counted from the lost device's last commit (2): 1 and 3 from now. */
    uint64_t page_nth = 0, internal_nth = 0;
    for (size_t i = 0; i < like.nfaults; i++) {
        if (like.faults[i].kind == MC_ERR_PAGE_FAULT) page_nth = like.faults[i].nth;
        if (like.faults[i].kind == MC_ERR_INTERNAL) internal_nth = like.faults[i].nth;
    }
    CHECK_EQ(page_nth, 1);
    CHECK_EQ(internal_nth, 3);
    mc_queue_release(q);
    mc_buffer_release(b);
    mc_pipeline_release(add);
    mc_device_release(d);
    CHECK_EQ(seen.never_fired, 0); /* moved, not unfired */

    mc_device *d2;
    CHECK_STATUS(mc__device_reopen_like(NULL, &d2), MC_ERR_INVALID_ARGUMENT);
    mc__device_like nothing;
    memset(&nothing, 0, sizeof nothing);
    CHECK_STATUS(mc__device_reopen_like(&nothing, &d2), MC_ERR_INVALID_ARGUMENT);
    CHECK_OK(mc__device_reopen_like(&like, &d2));
    CHECK_EQ(like.nfaults, 0);
    mc_device_info after;
    CHECK_OK(mc_device_get_info(d2, &after));
    CHECK_EQ(after.kind, before.kind);
    CHECK_EQ(after.index, before.index);
    CHECK_EQ(after.execution_time_limit_ns, before.execution_time_limit_ns);
    CHECK_EQ(after.compute_units, before.compute_units);

    add = mct_pipeline(d2, "basic", "add_one");
    CHECK(add);
    CHECK_OK(mc_buffer_create(d2, &bd, &b));
    CHECK_OK(mc_queue_create(d2, NULL, &q));
    CHECK_STATUS(run_one(q, add, b), MC_ERR_PAGE_FAULT);
    mc_queue_release(q);
    CHECK_OK(mc_queue_create(d2, NULL, &q)); /* the only recovery for a queue (F687) */
    CHECK_OK(run_one(q, add, b));
    CHECK_STATUS(run_one(q, add, b), MC_ERR_INTERNAL);
    mc_queue_release(q);
    CHECK_OK(mc_queue_create(d2, NULL, &q));
    CHECK_OK(run_one(q, add, b));

    /* Forgotten faults neither fire nor warn. */
    CHECK_OK(mc_device_inject_fault(d2, MC_ERR_PAGE_FAULT, 1));
    mc__device_forget_faults(d2);
    CHECK_OK(run_one(q, add, b));
    mc_queue_release(q);
    mc_buffer_release(b);
    mc_pipeline_release(add);
    mc_device_release(d2);
    mc_log_set_callback(NULL, NULL, MC_LOG_WARN);
    CHECK_EQ(seen.never_fired, 0);
    return 0;
}
