/*
 * mc_buffer_create_from_host: a buffer over the caller's memory. Every
 * argument refused with a message naming the rule, the release callback
 * run exactly once (and never after a refusal), kernels reading and
 * writing the caller's memory in place, and a committed command buffer
 * keeping the memory in use after the caller released the buffer.
 */
#include "mc_test.h"

#include <stdatomic.h>
#include <time.h>

typedef struct release_log {
    _Atomic int calls;
    void *last_pointer;
} release_log;

static void on_release(void *user, void *pointer)
{
    release_log *log = user;
    log->last_pointer = pointer;
    atomic_fetch_add(&log->calls, 1);
}

/* The release may come on the notifier thread (mc.h): wait for it. */
static int wait_calls(release_log *log, int want)
{
    for (int i = 0; i < 5000 && atomic_load(&log->calls) < want; i++) {
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
    return atomic_load(&log->calls);
}

/* 64 KiB-aligned memory covers every device's rule (Metal's pages too). */
static void *aligned_memory(size_t size)
{
    void *p = NULL;
    return posix_memalign(&p, 65536, size) == 0 ? p : NULL;
}

MC_TEST(host_buffer_refuses_bad_arguments)
{
    mc_device *d = mct_open_device(0);
    CHECK(d);
    release_log log = {0};
    size_t size = 65536;
    char *mem = aligned_memory(size);
    CHECK(mem);
    mc_host_buffer_desc desc = MC_HOST_BUFFER_DESC_INIT;
    desc.pointer = mem;
    desc.size = size;
    desc.release = on_release;
    desc.user = &log;
    mc_buffer *b = (mc_buffer *)&log; /* set to NULL on every refusal */

    CHECK_STATUS(mc_buffer_create_from_host(NULL, &desc, &b), MC_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(mc_buffer_create_from_host(d, NULL, &b), MC_ERR_INVALID_ARGUMENT);
    CHECK_STR_CONTAINS(mc_last_error(), "desc or out is NULL");
    CHECK_STATUS(mc_buffer_create_from_host(d, &desc, NULL), MC_ERR_INVALID_ARGUMENT);

    mc_host_buffer_desc bad = desc;
    bad.pointer = NULL;
    CHECK_STATUS(mc_buffer_create_from_host(d, &bad, &b), MC_ERR_INVALID_ARGUMENT);
    CHECK_STR_CONTAINS(mc_last_error(), "pointer is NULL");
    CHECK(b == NULL);

    bad = desc;
    bad.size = 0;
    CHECK_STATUS(mc_buffer_create_from_host(d, &bad, &b), MC_ERR_INVALID_ARGUMENT);
    CHECK_STR_CONTAINS(mc_last_error(), "size is 0");

    bad = desc;
    bad.pointer = mem + 4; /* 4-byte aligned: a float's, not a float4's */
    bad.size = 1024;
    CHECK_STATUS(mc_buffer_create_from_host(d, &bad, &b), MC_ERR_INVALID_ARGUMENT);
    CHECK_STR_CONTAINS(mc_last_error(), "MC_HOST_BUFFER_ALIGNMENT");

    mc_device_info info;
    CHECK_OK(mc_device_get_info(d, &info));
    if (info.max_buffer_size && info.max_buffer_size < SIZE_MAX) {
        bad = desc;
        bad.size = (size_t)info.max_buffer_size + 1; /* refused before the memory is touched */
        CHECK_STATUS(mc_buffer_create_from_host(d, &bad, &b), MC_ERR_OUT_OF_MEMORY);
        CHECK_STR_CONTAINS(mc_last_error(), "limit");
    }

    /* A refused call never runs the release callback. */
    CHECK_EQ(atomic_load(&log.calls), 0);
    mc_device_release(d);
    CHECK_EQ(atomic_load(&log.calls), 0);
    free(mem);
    return 0;
}

MC_TEST(host_buffer_kernels_use_the_callers_memory)
{
    mc_device *d = mct_open_device(0);
    CHECK(d);
    mc_pipeline *add_one = mct_pipeline(d, "basic", "add_one");
    CHECK(add_one);
    uint32_t n = 4099; /* not a multiple of the threadgroup */
    size_t size = 65536;
    uint32_t *mem = aligned_memory(size);
    CHECK(mem);
    for (uint32_t i = 0; i <= n; i++) mem[i] = i * 3u;

    release_log log = {0};
    mc_host_buffer_desc desc = MC_HOST_BUFFER_DESC_INIT;
    desc.pointer = mem;
    desc.size = size;
    desc.label = "numpy";
    desc.release = on_release;
    desc.user = &log;
    mc_buffer *b = NULL;
    CHECK_OK(mc_buffer_create_from_host(d, &desc, &b));
    CHECK(mc_buffer_contents(b) == mem);
    CHECK_EQ(mc_buffer_size(b), size);

    /* The synchronous transfers see the same memory. */
    uint32_t v = 0;
    CHECK_OK(mc_buffer_read(b, 4 * 7, &v, 4));
    CHECK_EQ(v, 21);
    v = 1000;
    CHECK_OK(mc_buffer_write(b, 4 * 8, &v, 4));
    CHECK_EQ(mem[8], 1000);
    CHECK_STATUS(mc_buffer_write(b, size - 2, &v, 4), MC_ERR_INVALID_ARGUMENT);

    mc_queue *q;
    CHECK_OK(mc_queue_create(d, NULL, &q));
    mc_cmdbuf *cb;
    CHECK_OK(mc_cmdbuf_create(q, NULL, &cb));
    mc_pass *p;
    CHECK_OK(mc_cmdbuf_begin_pass(cb, "add_one", &p));
    CHECK_OK(mc_pass_set_pipeline(p, add_one));
    CHECK_OK(mc_pass_set_buffer(p, 0, b, 0));
    CHECK_OK(mc_pass_set_bytes(p, 1, &n, 4));
    CHECK_OK(mc_pass_dispatch(p, (mc_size3){(n + 63) / 64, 1, 1}, (mc_size3){64, 1, 1}));
    CHECK_OK(mc_pass_end(p));
    CHECK_OK(mc_cmdbuf_commit(cb));
    /* The committed command buffer holds its own reference: releasing ours
     * must not let the memory go while the kernel may still use it. */
    mc_buffer_release(b);
    CHECK_EQ(atomic_load(&log.calls), 0);
    CHECK_OK(mc_cmdbuf_wait(cb, MC_WAIT_FOREVER));
    CHECK_OK(mc_cmdbuf_status(cb, NULL));
    for (uint32_t i = 0; i < n; i++) {
        uint32_t want = (i == 8 ? 1000u : i * 3u) + 1u;
        if (mem[i] != want) MC__FAILED("mem[%u] = %u, want %u", i, mem[i], want);
    }
    CHECK_EQ(mem[n], n * 3u); /* past n: untouched */
    mc_cmdbuf_release(cb);
    /* Exactly once, with the caller's pointer. */
    CHECK_EQ(wait_calls(&log, 1), 1);
    CHECK(log.last_pointer == mem);
    mc_queue_release(q);
    mc_pipeline_release(add_one);
    mc_device_release(d);
    CHECK_EQ(atomic_load(&log.calls), 1);
    free(mem);
    return 0;
}

MC_TEST(host_buffer_release_runs_once_without_a_callback_too)
{
    mc_device *d = mct_open_device(0);
    CHECK(d);
    size_t size = 65536;
    void *mem = aligned_memory(size);
    CHECK(mem);
    release_log log = {0};
    mc_host_buffer_desc desc = MC_HOST_BUFFER_DESC_INIT;
    desc.pointer = mem;
    desc.size = size;
    desc.release = on_release;
    desc.user = &log;
    mc_buffer *b = NULL;
    CHECK_OK(mc_buffer_create_from_host(d, &desc, &b));
    mc_buffer_retain(b);
    mc_buffer_release(b);
    CHECK_EQ(atomic_load(&log.calls), 0); /* one reference left */
    mc_buffer_release(b);
    CHECK_EQ(wait_calls(&log, 1), 1);

    /* No callback: allowed; the memory is simply the caller's again. */
    desc.release = NULL;
    CHECK_OK(mc_buffer_create_from_host(d, &desc, &b));
    mc_buffer_release(b);
    mc_device_release(d);
    CHECK_EQ(atomic_load(&log.calls), 1);
    free(mem);
    return 0;
}

/* Metal's rule (newBufferWithBytesNoCopy:length:) is page alignment of the
 * pointer and the size; other devices accept any 16-byte-aligned range. */
MC_TEST(host_buffer_alignment_rules_per_device)
{
    mc_device *d = mct_open_device(0);
    CHECK(d);
    char *mem = aligned_memory(4 * 65536);
    CHECK(mem);
    mc_host_buffer_desc desc = MC_HOST_BUFFER_DESC_INIT;
    desc.pointer = mem + 16; /* 16-byte aligned, not page aligned */
    desc.size = 1000;        /* not a page multiple */
    mc_buffer *b = NULL;
    mc_status s = mc_buffer_create_from_host(d, &desc, &b);
    if (mct_device_kind(d) == MC_DEVICE_METAL) {
        CHECK_STATUS(s, MC_ERR_INVALID_ARGUMENT);
        CHECK_STR_CONTAINS(mc_last_error(), "page");
        desc.pointer = mem;
        CHECK_STATUS(mc_buffer_create_from_host(d, &desc, &b), MC_ERR_INVALID_ARGUMENT);
        CHECK_STR_CONTAINS(mc_last_error(), "page");
        desc.size = 4 * 65536;
        CHECK_OK(mc_buffer_create_from_host(d, &desc, &b));
    } else {
        CHECK_OK(s);
        CHECK(mc_buffer_contents(b) == mem + 16);
        CHECK_EQ(mc_buffer_size(b), 1000);
    }
    mc_buffer_release(b);
    mc_device_release(d);
    free(mem);
    return 0;
}

/* Two buffers over the same pages: CUDA pins pages once, so the second is
 * refused with the reason; the CPU and Metal devices allow overlap. */
MC_TEST(host_buffer_overlapping_ranges)
{
    mc_device *d = mct_open_device(0);
    CHECK(d);
    char *mem = aligned_memory(65536);
    CHECK(mem);
    mc_host_buffer_desc desc = MC_HOST_BUFFER_DESC_INIT;
    desc.pointer = mem;
    desc.size = 65536;
    mc_buffer *a = NULL, *b = NULL;
    CHECK_OK(mc_buffer_create_from_host(d, &desc, &a));
    mc_status s = mc_buffer_create_from_host(d, &desc, &b);
    if (mct_device_kind(d) == MC_DEVICE_CUDA) {
        CHECK_STATUS(s, MC_ERR_INVALID_ARGUMENT);
        CHECK_STR_CONTAINS(mc_last_error(), "already pinned");
        CHECK(b == NULL);
    } else {
        CHECK_OK(s);
        CHECK(mc_buffer_contents(b) == mc_buffer_contents(a));
    }
    mc_buffer_release(b);
    mc_buffer_release(a);
    /* After the first is gone its pages are free to wrap again. */
    CHECK_OK(mc_buffer_create_from_host(d, &desc, &b));
    mc_buffer_release(b);
    mc_device_release(d);
    free(mem);
    return 0;
}

/* mc_buffer_get_device_address: the host address on the CPU device (private
 * storage too), a device pointer on CUDA, refused where none exists. */
MC_TEST(buffer_device_address_per_device)
{
    mc_device *d = mct_open_device(0);
    CHECK(d);
    uint64_t addr = 1;
    CHECK_STATUS(mc_buffer_get_device_address(NULL, &addr), MC_ERR_INVALID_ARGUMENT);
    mc_buffer_desc bd = MC_BUFFER_DESC_INIT;
    bd.size = 4096;
    mc_buffer *shared = NULL, *priv = NULL;
    CHECK_OK(mc_buffer_create(d, &bd, &shared));
    bd.storage = MC_STORAGE_PRIVATE;
    CHECK_OK(mc_buffer_create(d, &bd, &priv));
    CHECK_STATUS(mc_buffer_get_device_address(shared, NULL), MC_ERR_INVALID_ARGUMENT);
    CHECK_STR_CONTAINS(mc_last_error(), "out is NULL");
    mc_status s = mc_buffer_get_device_address(shared, &addr);
    switch (mct_device_kind(d)) {
    case MC_DEVICE_CPU:
        CHECK_OK(s);
        CHECK_EQ(addr, (uint64_t)(uintptr_t)mc_buffer_contents(shared));
        CHECK_OK(mc_buffer_get_device_address(priv, &addr));
        CHECK_NE(addr, 0);
        break;
    case MC_DEVICE_CUDA:
        CHECK_OK(s);
        CHECK_NE(addr, 0);
        CHECK_OK(mc_buffer_get_device_address(priv, &addr));
        CHECK_NE(addr, 0);
        break;
    default:
        CHECK_STATUS(s, MC_ERR_UNSUPPORTED);
        CHECK_EQ(addr, 0);
        break;
    }
    mc_buffer_release(priv);
    mc_buffer_release(shared);
    mc_device_release(d);
    return 0;
}
