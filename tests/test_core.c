/* Status texts, devices, buffers, libraries and pipelines. */
#include "mc_test.h"

#include "core/core.h"

#include <stdlib.h>

MC_TEST(status_names_and_texts)
{
    /* Every code in the list has a distinct name and a non-empty text. */
    static const mc_status all[] = {
#define X(name, value, text) MC_##name,
        MC_STATUS_MAP(X)
#undef X
    };
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) {
        CHECK(strncmp(mc_status_name(all[i]), "MC_", 3) == 0);
        CHECK(strlen(mc_status_text(all[i])) > 3);
        for (size_t j = 0; j < i; j++) CHECK(strcmp(mc_status_name(all[i]), mc_status_name(all[j])) != 0);
    }
    CHECK_EQ(MC_ERR_TIMEOUT, 2); /* MTLCommandBufferError numbers (F685) */
    CHECK_EQ(MC_ERR_PAGE_FAULT, 3);
    CHECK_EQ(MC_ERR_ACCESS_REVOKED, 4);
    CHECK_EQ(MC_ERR_DEVICE_LOST, 11);
    CHECK(strcmp(mc_status_name((mc_status)9999), "MC_UNKNOWN") == 0);
    CHECK(strlen(mc_status_text((mc_status)9999)) > 0);
    mc_status s;
    CHECK_OK(mc_status_from_word("page-fault", &s));
    CHECK_EQ(s, MC_ERR_PAGE_FAULT);
    CHECK_OK(mc_status_from_word("device-lost", &s));
    CHECK_EQ(s, MC_ERR_DEVICE_LOST);
    CHECK_STATUS(mc_status_from_word("melted", &s), MC_ERR_INVALID_ARGUMENT);
    CHECK_STR_CONTAINS(mc_last_error(), "melted");
    CHECK(mc_status_is_device_error(MC_ERR_TIMEOUT));
    CHECK(!mc_status_is_device_error(MC_ERR_INVALID_ARGUMENT));
    CHECK(!mc_status_is_device_error(MC_OK));
    return 0;
}

MC_TEST(device_list_and_open)
{
    size_t n = 0;
    CHECK_STATUS(mc_device_list(NULL, 0, NULL), MC_ERR_INVALID_ARGUMENT);
    CHECK_OK(mc_device_list(NULL, 0, &n));
    CHECK_GE(n, 1);
    mc_device_info infos[16];
    CHECK_OK(mc_device_list(infos, 16, &n));
    bool cpu = false;
    for (size_t i = 0; i < n && i < 16; i++) {
        CHECK(infos[i].name[0] != '\0');
        CHECK(infos[i].identity[0] != '\0');
        CHECK_GT(infos[i].max_threads_per_threadgroup, 0);
        CHECK_GT(infos[i].simd_width, 0);
        if (infos[i].kind == MC_DEVICE_CPU) cpu = true;
    }
    CHECK(cpu);

    mc_device *d;
    CHECK_OK(mc_device_open_name("cpu", &d));
    mc_device_info info;
    CHECK_OK(mc_device_get_info(d, &info));
    CHECK_EQ(info.kind, MC_DEVICE_CPU);
    CHECK(info.unified_memory);
    CHECK_EQ(info.execution_time_limit_ns, 5000000000ull); /* the Apple-like default */
    CHECK(info.features & MC_FEATURE_WATCHDOG);
    CHECK_OK(mc_device_check(d));
    mc_device_release(d);

    CHECK_OK(mc_device_open_name("cpu:0", &d));
    mc_device_release(d);
    CHECK_STATUS(mc_device_open_name("gpu", &d), MC_ERR_INVALID_ARGUMENT);
    CHECK_STR_CONTAINS(mc_last_error(), "gpu");
    CHECK_STATUS(mc_device_open_name("cpu:7", &d), MC_ERR_NOT_FOUND);
    CHECK_STATUS(mc_device_open_name("cpu:x", &d), MC_ERR_INVALID_ARGUMENT);
    mc_device_desc named = MC_DEVICE_DESC_INIT;
    named.time_limit_ms = 123;
    CHECK_OK(mc_device_desc_from_name("cuda:2", &named));
    CHECK_EQ(named.kind, MC_DEVICE_CUDA);
    CHECK_EQ(named.index, 2);
    CHECK_EQ(named.time_limit_ms, 123); /* other fields left alone */
    CHECK_OK(mc_device_desc_from_name(NULL, &named));
    CHECK_EQ(named.kind, MC_DEVICE_ANY);
    CHECK_STATUS(mc_device_desc_from_name("gpu", &named), MC_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(mc_device_desc_from_name("cpu", NULL), MC_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(mc_device_open(NULL, NULL), MC_ERR_INVALID_ARGUMENT);

    mc_device_desc desc = MC_DEVICE_DESC_INIT;
    desc.kind = MC_DEVICE_CPU;
    desc.time_limit_ms = MC_TIME_LIMIT_NONE;
    desc.threads = 3;
    CHECK_OK(mc_device_open(&desc, &d));
    CHECK_OK(mc_device_get_info(d, &info));
    CHECK_EQ(info.execution_time_limit_ns, 0);
    CHECK(!(info.features & MC_FEATURE_WATCHDOG));
    CHECK_EQ(info.compute_units, 3);
    mc_device_release(d);

    desc.time_limit_ms = 250;
    CHECK_OK(mc_device_open(&desc, &d));
    CHECK_OK(mc_device_get_info(d, &info));
    CHECK_EQ(info.execution_time_limit_ns, 250000000ull);
    mc_device_release(d);
    desc.time_limit_ms = -5;
    CHECK_STATUS(mc_device_open(&desc, &d), MC_ERR_INVALID_ARGUMENT);
    return 0;
}

MC_TEST(device_from_environment)
{
    setenv("MC_DEVICE", "cpu", 1);
    setenv("MC_TIME_LIMIT_MS", "0", 1);
    mc_device *d;
    CHECK_OK(mc_device_open(NULL, &d));
    mc_device_info info;
    CHECK_OK(mc_device_get_info(d, &info));
    CHECK_EQ(info.kind, MC_DEVICE_CPU);
    CHECK_EQ(info.execution_time_limit_ns, 0); /* 0 in the environment = none */
    mc_device_release(d);
    setenv("MC_DEVICE", "tpu", 1);
    CHECK_STATUS(mc_device_open(NULL, &d), MC_ERR_INVALID_ARGUMENT);
    CHECK_STR_CONTAINS(mc_last_error(), "MC_DEVICE");
    setenv("MC_DEVICE", "cuda:99", 1);
    mc_status s = mc_device_open(NULL, &d);
    CHECK(s == MC_ERR_NOT_FOUND || s == MC_ERR_UNSUPPORTED);
    unsetenv("MC_DEVICE");
    unsetenv("MC_TIME_LIMIT_MS");
    return 0;
}

MC_TEST(buffers)
{
    mc_device *d = mct_open_device(0);
    CHECK(d);
    mc_buffer *b;
    mc_buffer_desc bd = MC_BUFFER_DESC_INIT;
    CHECK_STATUS(mc_buffer_create(d, &bd, &b), MC_ERR_INVALID_ARGUMENT); /* size 0 */
    CHECK_STR_CONTAINS(mc_last_error(), "size");
    CHECK_STATUS(mc_buffer_create(d, NULL, &b), MC_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(mc_buffer_create(NULL, &bd, &b), MC_ERR_INVALID_ARGUMENT);
    bd.size = 1000;
    bd.storage = (mc_storage)7;
    CHECK_STATUS(mc_buffer_create(d, &bd, &b), MC_ERR_INVALID_ARGUMENT);
    bd.storage = MC_STORAGE_SHARED;
    uint8_t init[1000];
    for (int i = 0; i < 1000; i++) init[i] = (uint8_t)(i * 7);
    bd.initial_data = init;
    bd.label = "shared";
    CHECK_OK(mc_buffer_create(d, &bd, &b));
    CHECK_EQ(mc_buffer_size(b), 1000);
    uint8_t *host = mc_buffer_contents(b);
    CHECK(host != NULL);
    CHECK(memcmp(host, init, 1000) == 0);
    uint8_t out[16];
    CHECK_OK(mc_buffer_read(b, 990, out, 10));
    CHECK(memcmp(out, init + 990, 10) == 0);
    CHECK_STATUS(mc_buffer_read(b, 995, out, 10), MC_ERR_INVALID_ARGUMENT);
    CHECK_STR_CONTAINS(mc_last_error(), "past the end");
    CHECK_STATUS(mc_buffer_write(b, 1001, out, 0), MC_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(mc_buffer_write(b, 0, NULL, 4), MC_ERR_INVALID_ARGUMENT);
    mc_buffer_release(b);

    bd.storage = MC_STORAGE_PRIVATE;
    bd.initial_data = NULL;
    CHECK_OK(mc_buffer_create(d, &bd, &b));
    mc_device_info info;
    mc_device_get_info(d, &info);
    if (info.features & MC_FEATURE_PRIVATE_STORAGE || info.kind == MC_DEVICE_CPU) CHECK(mc_buffer_contents(b) == NULL);
    CHECK_OK(mc_buffer_write(b, 10, "hello", 5));
    char hello[6] = {0};
    CHECK_OK(mc_buffer_read(b, 10, hello, 5));
    CHECK(strcmp(hello, "hello") == 0);
    mc_buffer_release(b);

    CHECK_EQ(mc_buffer_size(NULL), 0);
    CHECK(mc_buffer_contents(NULL) == NULL);
    mc_buffer_release(NULL); /* a no-op */
    mc_device_release(d);
    return 0;
}

MC_TEST(library_compile_error_returns_log)
{
    mc_device *d = mct_open_device(0);
    CHECK(d);
    if (mct_device_kind(d) != MC_DEVICE_CPU) MC_SKIP("C source is for the cpu device");
    mc_library_desc ld = MC_LIBRARY_DESC_INIT;
    ld.language = MC_LANG_C;
    ld.source = "#include <mc/mc_cpu_kernel.h>\nMC_KERNEL(broken, 0) { this is not C; }\n";
    mc_library *l = NULL;
    char *log = NULL;
    CHECK_STATUS(mc_library_create(d, &ld, &l, &log), MC_ERR_COMPILE);
    CHECK(l == NULL);
    CHECK(log != NULL);
    CHECK_STR_CONTAINS(log, "error");
    CHECK_STR_CONTAINS(log, "this");
    mc_free(log);

    ld.language = MC_LANG_CUDA;
    CHECK_STATUS(mc_library_create(d, &ld, &l, &log), MC_ERR_UNSUPPORTED);
    ld.language = MC_LANG_UNSET;
    CHECK_STATUS(mc_library_create(d, &ld, &l, &log), MC_ERR_INVALID_ARGUMENT);
    CHECK_STR_CONTAINS(mc_last_error(), "language");
    CHECK_STATUS(mc_library_create_from_file(d, "/nonexistent/k.c", MC_LANG_UNSET, NULL, &l, NULL), MC_ERR_IO);
    CHECK_STATUS(mc_library_create_from_file(d, "k.txt", MC_LANG_UNSET, NULL, &l, NULL), MC_ERR_INVALID_ARGUMENT);
    mc_device_release(d);
    return 0;
}

MC_TEST(pipelines_and_hints)
{
    mc_device *d = mct_open_device(0);
    CHECK(d);
    char path[4096];
    snprintf(path, sizeof path, "%s/examples/kernels/basic.metal", MC_SOURCE_DIR);
    mc_library *lib;
    CHECK_OK(mc_library_create_from_file(d, path, MC_LANG_UNSET, NULL, &lib, NULL));
    mc_pipeline_desc pd = MC_PIPELINE_DESC_INIT;
    pd.library = lib;
    pd.function = "no_such_kernel";
    mc_pipeline *p;
    CHECK_STATUS(mc_pipeline_create(d, &pd, &p), MC_ERR_NOT_FOUND);
    CHECK_STR_CONTAINS(mc_last_error(), "no_such_kernel");
    pd.function = "";
    CHECK_STATUS(mc_pipeline_create(d, &pd, &p), MC_ERR_INVALID_ARGUMENT);
    pd.function = "saxpy";
    mc_device_info info;
    mc_device_get_info(d, &info);
    pd.max_total_threads_per_threadgroup = info.max_threads_per_threadgroup + 1;
    CHECK_STATUS(mc_pipeline_create(d, &pd, &p), MC_ERR_INVALID_ARGUMENT);
    pd.max_total_threads_per_threadgroup = 64;
    pd.threadgroup_size_is_multiple_of_simd_width = true;
    CHECK_OK(mc_pipeline_create(d, &pd, &p));
    mc_pipeline_info pi;
    CHECK_OK(mc_pipeline_get_info(p, &pi));
    CHECK_LE(pi.max_total_threads_per_threadgroup, 64);
    CHECK_GT(pi.max_total_threads_per_threadgroup, 0);
    if (pi.argument_count >= 0) CHECK_EQ(pi.argument_count, 4);
    mc_library_release(lib); /* the pipeline keeps what it needs */

    /* A threadgroup over the pipeline's limit is refused before it runs. */
    mc_queue *q;
    CHECK_OK(mc_queue_create(d, NULL, &q));
    mc_cmdbuf *cb;
    CHECK_OK(mc_cmdbuf_create(q, NULL, &cb));
    mc_pass *pass;
    CHECK_OK(mc_cmdbuf_begin_pass(cb, "big", &pass));
    CHECK_OK(mc_pass_set_pipeline(pass, p));
    CHECK_STATUS(mc_pass_dispatch(pass, (mc_size3){1, 1, 1}, (mc_size3){128, 1, 1}), MC_ERR_INVALID_ARGUMENT);
    CHECK_STR_CONTAINS(mc_last_error(), "over the limit");
    CHECK_STATUS(mc_pass_dispatch(pass, (mc_size3){1, 1, 1}, (mc_size3){0, 1, 1}), MC_ERR_INVALID_ARGUMENT);
    if (pi.simd_width > 1)
        CHECK_STATUS(mc_pass_dispatch(pass, (mc_size3){1, 1, 1}, (mc_size3){pi.simd_width + 1, 1, 1}),
                     MC_ERR_INVALID_ARGUMENT);
    CHECK_OK(mc_pass_end(pass));
    mc_cmdbuf_release(cb);
    mc_queue_release(q);
    mc_pipeline_release(p);
    mc_device_release(d);
    return 0;
}

static void builtin_double(const mc_cpu_ctx *ctx);
#include "mc/mc_cpu_kernel.h"
static void builtin_double(const mc_cpu_ctx *ctx)
{
    uint32_t *v = MC_ARG(ctx, 0, uint32_t);
    MC_FOR_EACH_THREAD(ctx, tid) v[tid] *= 2;
}

MC_TEST(builtin_kernels)
{
    mc_device *d;
    CHECK_OK(mc_device_open_name("cpu", &d));
    const char *names[] = {"double"};
    mc_cpu_kernel_fn fns[] = {builtin_double};
    int32_t argc[] = {1};
    mc_library *lib;
    CHECK_STATUS(mc_library_create_builtin(d, names, fns, argc, 0, &lib), MC_ERR_INVALID_ARGUMENT);
    CHECK_OK(mc_library_create_builtin(d, names, fns, argc, 1, &lib));
    mc_pipeline_desc pd = {lib, "double", 0, false, NULL, NULL, 0};
    mc_pipeline *p;
    CHECK_OK(mc_pipeline_create(d, &pd, &p));
    uint32_t init[64];
    for (int i = 0; i < 64; i++) init[i] = (uint32_t)i;
    mc_buffer_desc bd = {sizeof init, MC_STORAGE_SHARED, "v", init};
    mc_buffer *b;
    CHECK_OK(mc_buffer_create(d, &bd, &b));
    mc_queue *q;
    CHECK_OK(mc_queue_create(d, NULL, &q));
    mc_cmdbuf *cb;
    CHECK_OK(mc_cmdbuf_create(q, NULL, &cb));
    mc_pass *pass;
    CHECK_OK(mc_cmdbuf_begin_pass(cb, NULL, &pass));
    CHECK_OK(mc_pass_set_pipeline(pass, p));
    CHECK_OK(mc_pass_set_buffer(pass, 0, b, 0));
    CHECK_OK(mc_pass_dispatch(pass, (mc_size3){4, 1, 1}, (mc_size3){16, 1, 1}));
    CHECK_OK(mc_pass_end(pass));
    CHECK_OK(mc_cmdbuf_commit(cb));
    CHECK_OK(mc_cmdbuf_wait(cb, MC_WAIT_FOREVER));
    CHECK_OK(mc_cmdbuf_status(cb, NULL));
    uint32_t *v = mc_buffer_contents(b);
    for (int i = 0; i < 64; i++) CHECK_EQ(v[i], 2u * i);
    mc_cmdbuf_release(cb);
    mc_queue_release(q);
    mc_buffer_release(b);
    mc_pipeline_release(p);
    mc_library_release(lib);
    mc_device_release(d);
    return 0;
}

MC_TEST(null_and_stale_handles_are_refused)
{
    mc_device *d = NULL;
    mc_device_info info;
    CHECK_STATUS(mc_device_get_info(NULL, &info), MC_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(mc_device_check(NULL), MC_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(mc_device_inject_fault(NULL, MC_ERR_TIMEOUT, 1), MC_ERR_INVALID_ARGUMENT);
    mc_queue *q = NULL;
    CHECK_STATUS(mc_queue_create(NULL, NULL, &q), MC_ERR_INVALID_ARGUMENT);
    mc_cmdbuf *cb;
    CHECK_STATUS(mc_cmdbuf_create(NULL, NULL, &cb), MC_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(mc_cmdbuf_commit(NULL), MC_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(mc_cmdbuf_wait(NULL, 0), MC_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(mc_cmdbuf_status(NULL, NULL), MC_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(mc_pass_end(NULL), MC_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(mc_pass_dispatch(NULL, (mc_size3){1, 1, 1}, (mc_size3){1, 1, 1}), MC_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(mc_event_signal(NULL, 1), MC_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(mc_event_wait(NULL, 1, 0), MC_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(mc_event_notify(NULL, 1, NULL, NULL), MC_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(mc_pipeline_get_info(NULL, NULL), MC_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(mc_buffer_write(NULL, 0, "", 0), MC_ERR_INVALID_ARGUMENT);
    /* A handle of the wrong type is caught by its tag. */
    CHECK_OK(mc_device_open_name("cpu", &d));
    CHECK_STATUS(mc_cmdbuf_create((mc_queue *)d, NULL, &cb), MC_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(mc_buffer_write((mc_buffer *)d, 0, "", 0), MC_ERR_INVALID_ARGUMENT);
    mc_device_release(d);
    mc_device_release(NULL);
    mc_queue_release(NULL);
    mc_cmdbuf_release(NULL);
    mc_event_release(NULL);
    mc_pipeline_release(NULL);
    mc_library_release(NULL);
    return 0;
}

MC_TEST(allocation_failures_are_reported)
{
    /* Fail each allocation of a full create/submit path in turn: every
     * failure must come back as a status, never a crash or a leak. */
    mc_device *d;
    CHECK_OK(mc_device_open_name("cpu", &d));
    mc_pipeline *p = mct_pipeline(d, "basic", "add_one");
    CHECK(p);
    int failures = 0;
    for (long long nth = 1; nth < 40; nth++) {
        mc__alloc_fail_at(nth);
        mc_queue *q = NULL;
        mc_cmdbuf *cb = NULL;
        mc_buffer *b = NULL;
        mc_buffer_desc bd = {256, MC_STORAGE_SHARED, "b", NULL};
        mc_status s = mc_queue_create(d, NULL, &q);
        if (s == MC_OK) s = mc_buffer_create(d, &bd, &b);
        if (s == MC_OK) s = mc_cmdbuf_create(q, NULL, &cb);
        mc_pass *pass;
        uint32_t n = 64;
        if (s == MC_OK) s = mc_cmdbuf_begin_pass(cb, "p", &pass);
        if (s == MC_OK) s = mc_pass_set_pipeline(pass, p);
        if (s == MC_OK) s = mc_pass_set_buffer(pass, 0, b, 0);
        if (s == MC_OK) s = mc_pass_set_bytes(pass, 1, &n, 4);
        if (s == MC_OK) s = mc_pass_dispatch(pass, (mc_size3){1, 1, 1}, (mc_size3){64, 1, 1});
        if (s == MC_OK) s = mc_pass_end(pass);
        if (s == MC_OK) s = mc_cmdbuf_commit(cb);
        mc__alloc_fail_at(0);
        if (s == MC_OK) {
            CHECK_OK(mc_cmdbuf_wait(cb, MC_WAIT_FOREVER));
        } else {
            CHECK(s == MC_ERR_NO_MEMORY || s == MC_ERR_OUT_OF_MEMORY);
            failures++;
        }
        mc_cmdbuf_release(cb);
        mc_buffer_release(b);
        mc_queue_release(q);
    }
    CHECK_GT(failures, 3);
    mc_pipeline_release(p);
    mc_device_release(d);
    return 0;
}
