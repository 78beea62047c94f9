/* Real GPU faults: only where a CUDA device is present (reported as
 * skipped elsewhere). */
#include "mc_test.h"

MC_TEST(cuda_out_of_bounds_write_is_device_lost)
{
    mc_device *d;
    mc_status s = mc_device_open_name("cuda", &d);
    if (s != MC_OK) MC_SKIP("needs a CUDA device (%s)", mc_last_error());
    mc_pipeline *oob = mct_pipeline(d, "basic", "oob_write");
    CHECK(oob);
    mc_queue *q;
    CHECK_OK(mc_queue_create(d, NULL, &q));
    mc_buffer *b;
    mc_buffer_desc bd = {4096, MC_STORAGE_PRIVATE, "small", NULL};
    CHECK_OK(mc_buffer_create(d, &bd, &b));
    uint64_t far = 1ull << 40; /* elements: terabytes past the buffer */
    mc_cmdbuf *cb;
    CHECK_OK(mc_cmdbuf_create(q, NULL, &cb));
    mc_pass *p;
    CHECK_OK(mc_cmdbuf_begin_pass(cb, "wild-write", &p));
    CHECK_OK(mc_pass_set_pipeline(p, oob));
    CHECK_OK(mc_pass_set_buffer(p, 0, b, 0));
    CHECK_OK(mc_pass_set_bytes(p, 1, &far, sizeof far));
    CHECK_OK(mc_pass_dispatch(p, (mc_size3){1, 1, 1}, (mc_size3){32, 1, 1}));
    CHECK_OK(mc_pass_end(p));
    CHECK_OK(mc_cmdbuf_commit(cb));
    CHECK_OK(mc_cmdbuf_wait(cb, 30ull * 1000000000ull)); /* no hang */
    const char *msg;
    CHECK_STATUS(mc_cmdbuf_status(cb, &msg), MC_ERR_DEVICE_LOST);
    fprintf(stderr, "fault reported as: %s\n", msg);
    mc_pass_info pi;
    CHECK_OK(mc_cmdbuf_pass_info(cb, 0, &pi));
    CHECK_EQ(pi.state, MC_PASS_FAULTED);
    CHECK(strcmp(pi.label, "wild-write") == 0);
    CHECK_STATUS(mc_device_check(d), MC_ERR_DEVICE_LOST);
    /* Everything after fails fast with the same code, nothing hangs. */
    mc_cmdbuf *after;
    CHECK_OK(mc_cmdbuf_create(q, NULL, &after));
    CHECK_STATUS(mc_cmdbuf_commit(after), MC_ERR_DEVICE_LOST);
    mc_queue *q2;
    CHECK_STATUS(mc_queue_create(d, NULL, &q2), MC_ERR_DEVICE_LOST);
    mc_cmdbuf_release(after);
    mc_cmdbuf_release(cb);
    mc_buffer_release(b);
    mc_queue_release(q);
    mc_pipeline_release(oob);
    mc_device_release(d);
    /* In this process the context stays poisoned: reopening reports it. */
    s = mc_device_open_name("cuda", &d);
    if (s == MC_OK) mc_device_release(d);
    else CHECK_EQ(s, MC_ERR_DEVICE_LOST);
    return 0;
}
