/* The public API's shape: every MC_*_INIT is the all-zero descriptor, and
 * an all-zero descriptor means the defaults (the runner's slot fields
 * included: 0 is "none"). */
#include "mc_test.h"

#include <stdio.h>
#include <string.h>

/* Static objects: their padding is zero too, so memcmp compares values. */
#define SAME_AS_ZERO(type, init)                            \
    do {                                                    \
        static const type from_init = init;                 \
        static const type zero;                             \
        CHECK(memcmp(&from_init, &zero, sizeof zero) == 0); \
    } while (0)

MC_TEST(api_init_macros_are_all_zero)
{
    SAME_AS_ZERO(mc_device_desc, MC_DEVICE_DESC_INIT);
    SAME_AS_ZERO(mc_buffer_desc, MC_BUFFER_DESC_INIT);
    SAME_AS_ZERO(mc_library_desc, MC_LIBRARY_DESC_INIT);
    SAME_AS_ZERO(mc_pipeline_desc, MC_PIPELINE_DESC_INIT);
    SAME_AS_ZERO(mc_queue_desc, MC_QUEUE_DESC_INIT);
    SAME_AS_ZERO(mc_cmdbuf_desc, MC_CMDBUF_DESC_INIT);
    SAME_AS_ZERO(mc_pipeline_source_desc, MC_PIPELINE_SOURCE_DESC_INIT);
    SAME_AS_ZERO(mc_cmdlist_desc, MC_CMDLIST_DESC_INIT);
    SAME_AS_ZERO(mc_isolate_desc, MC_ISOLATE_DESC_INIT);
    SAME_AS_ZERO(mc_runner_desc, MC_RUNNER_DESC_INIT);
    SAME_AS_ZERO(mc_stream_desc, MC_STREAM_DESC_INIT);
    return 0;
}

static mc_status refuse_setup(void *user, mc_device *dev, mc_runner_binding *bind)
{
    (void)dev;
    (void)bind;
    ++*(int *)user;
    return MC_ERR_NOT_PERMITTED; /* a status the runner's own checks never return */
}

static void no_teardown(void *user, mc_runner_binding *bind)
{
    (void)user;
    (void)bind;
}

MC_TEST(api_zero_runner_slots_mean_none)
{
    mc_device *d = mct_open_device(0);
    CHECK(d != NULL);
    int setups = 0;
    mc_runner_desc desc;
    memset(&desc, 0, sizeof desc);
    desc.device = d;
    desc.setup = refuse_setup;
    desc.teardown = no_teardown;
    desc.user = &setups;
    desc.threadgroups = (mc_size3){1, 1, 1};
    desc.threads_per_threadgroup = (mc_size3){1, 1, 1};
    mc_runner *r = NULL;

    /* No control slot (0) and no iteration count: nothing would end the run. */
    CHECK_STATUS(mc_runner_create(&desc, &r), MC_ERR_INVALID_ARGUMENT);
    CHECK_STR_CONTAINS(mc_last_error(), "no control_arg");
    CHECK(r == NULL);
    CHECK_EQ(setups, 0);

    /* With a count, the all-zero rest passes every check and reaches setup,
     * whose own error comes back. */
    desc.total_iterations = 4;
    CHECK_STATUS(mc_runner_create(&desc, &r), MC_ERR_NOT_PERMITTED);
    CHECK(r == NULL);
    CHECK_EQ(setups, 1);

    /* -1, the older spelling of none, still means none. */
    desc.iteration_arg = -1;
    desc.control_arg = -1;
    CHECK_STATUS(mc_runner_create(&desc, &r), MC_ERR_NOT_PERMITTED);
    CHECK_EQ(setups, 2);

    /* Below -1 is no slot at all. */
    desc.control_arg = -2;
    CHECK_STATUS(mc_runner_create(&desc, &r), MC_ERR_INVALID_ARGUMENT);
    CHECK_STR_CONTAINS(mc_last_error(), "control_arg -2");
    mc_device_release(d);
    return 0;
}

MC_TEST(api_version_at_run_time_matches_the_headers)
{
    const char *v = mc_version();
    CHECK(v != NULL);
    CHECK(strcmp(v, MC_VERSION_STRING) == 0);
    unsigned major = 0, minor = 0, patch = 0;
    int end = 0;
    CHECK_EQ(sscanf(v, "%u.%u.%u%n", &major, &minor, &patch, &end), 3);
    CHECK_EQ((size_t)end, strlen(v));
    CHECK_EQ(major, MC_VERSION_MAJOR);
    CHECK_EQ(minor, MC_VERSION_MINOR);
    CHECK_EQ(patch, MC_VERSION_PATCH);
    return 0;
}
