/* The runtime layer's view of the engine (src/runtime/runtime.h): handle
 * checks, device loss, and reopening a device like a lost one with its
 * pending injected faults carried over. */
#include "mc_test.h"
#include "runtime/runtime.h"

#include <dirent.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* add_one over a small buffer on one queue: enough to commit work. */
typedef struct work {
    mc_pipeline *add;
    mc_buffer *b;
    mc_queue *q;
} work;

static int work_open(mc_device *d, work *w)
{
    memset(w, 0, sizeof *w);
    CHECK((w->add = mct_pipeline(d, "basic", "add_one")));
    mc_buffer_desc bd = {1024, MC_STORAGE_SHARED, "b", NULL};
    CHECK_OK(mc_buffer_create(d, &bd, &w->b));
    CHECK_OK(mc_queue_create(d, NULL, &w->q));
    return 0;
}

/* A new queue: the only recovery for a queue after a fault (F687). */
static mc_status work_new_queue(mc_device *d, work *w)
{
    mc_queue_release(w->q);
    w->q = NULL;
    return mc_queue_create(d, NULL, &w->q);
}

static void work_close(work *w)
{
    mc_queue_release(w->q);
    mc_buffer_release(w->b);
    mc_pipeline_release(w->add);
}

/* One command buffer of add_one, committed and waited for. */
static mc_status run_one(const work *w)
{
    mc_cmdbuf *cb;
    mc_status s = mc_cmdbuf_create(w->q, NULL, &cb);
    if (s != MC_OK) return s;
    mc_pass *pass;
    uint32_t n = 256;
    s = mc_cmdbuf_begin_pass(cb, "work", &pass);
    if (s == MC_OK) s = mc_pass_set_pipeline(pass, w->add);
    if (s == MC_OK) s = mc_pass_set_buffer(pass, 0, w->b, 0);
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
    work w;
    if (work_open(d, &w)) return 1;

    /* Commit 1 passes; 2 is lost; 3 and 5 lie beyond the loss. */
    CHECK_OK(mc_device_inject_faults(d, "device-lost@2,page-fault@3,internal@5"));
    CHECK_OK(run_one(&w));
    CHECK_STATUS(run_one(&w), MC_ERR_DEVICE_LOST);
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
    work_close(&w);
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

    if (work_open(d2, &w)) return 1;
    CHECK_STATUS(run_one(&w), MC_ERR_PAGE_FAULT);
    CHECK_OK(work_new_queue(d2, &w));
    CHECK_OK(run_one(&w));
    CHECK_STATUS(run_one(&w), MC_ERR_INTERNAL);
    CHECK_OK(work_new_queue(d2, &w));
    CHECK_OK(run_one(&w));

    /* Forgotten faults neither fire nor warn. */
    CHECK_OK(mc_device_inject_fault(d2, MC_ERR_PAGE_FAULT, 1));
    mc__device_forget_faults(d2);
    CHECK_OK(run_one(&w));
    work_close(&w);
    mc_device_release(d2);
    mc_log_set_callback(NULL, NULL, MC_LOG_WARN);
    CHECK_EQ(seen.never_fired, 0);
    return 0;
}

/* The backend table says what the engine used to learn by asking which
 * device it talks to (hal.h, version 3). */
MC_TEST(runtime_backend_table_answers_for_the_device)
{
    mc_device *d = mct_open_device(0);
    CHECK(d);
    mc_device_info info;
    CHECK_OK(mc_device_get_info(d, &info));
    /* the language a source without one gets is one the device compiles,
     * and the file the project's kernels use for it exists */
    mc_language lang = mc__device_default_language(d);
    CHECK(lang != MC_LANG_UNSET);
    CHECK_EQ(mc__device_default_language(NULL), MC_LANG_UNSET);
    const char *ext = mc_device_kernel_extension(info.kind);
    CHECK(ext[0] == '.');
    char path[1024];
    /* the project's kernels are MSL; the twins in the device's own language
     * are the benchmarks' baselines (Metal's own is MSL) */
    snprintf(path, sizeof path, "%s/benchmarks/baselines/basic%s", MC_SOURCE_DIR, ext);
    if (access(path, R_OK) != 0) snprintf(path, sizeof path, "%s/examples/kernels/basic%s", MC_SOURCE_DIR, ext);
    size_t len = 0;
    char *src = mct_read_file(path, &len);
    CHECK(src);
    mc_pipeline_source_desc desc = MC_PIPELINE_SOURCE_DESC_INIT;
    desc.source = src;
    desc.function = "add_one"; /* language left unset: the device's own */
    mc_pipeline *p = NULL;
    CHECK_OK(mc_pipeline_create_from_source(d, &desc, &p, NULL));
    mc_pipeline_release(p);
    free(src);
    CHECK(!strcmp(mc_device_kernel_extension(MC_DEVICE_ANY), ""));
    CHECK(!strcmp(mc_device_kernel_extension((mc_device_kind)99), ""));
    if (info.kind == MC_DEVICE_CPU) {
        CHECK(!strcmp(ext, ".c"));
        CHECK_EQ(lang, MC_LANG_C);
    }
    mc_device_release(d);
    /* asking for the CPU device's devices leaves this process fork-safe */
    mc__fork_unsafe_simulate(NULL);
    mc_device_desc cpu = MC_DEVICE_DESC_INIT;
    cpu.kind = MC_DEVICE_CPU;
    CHECK_OK(mc_device_open(&cpu, &d));
    mc_device_release(d);
    CHECK(!mc__fork_unsafe_backend_used(NULL, 0));
    return 0;
}

/* CPU workers name themselves (os_posix.c: macOS names only the calling
 * thread), so a debugger or top -H shows them. */
MC_TEST(runtime_cpu_workers_are_named)
{
#ifdef __linux__
    mc_device_desc dd = MC_DEVICE_DESC_INIT;
    dd.kind = MC_DEVICE_CPU;
    dd.threads = 2;
    mc_device *d;
    CHECK_OK(mc_device_open(&dd, &d));
    work w;
    if (work_open(d, &w)) return 1;
    CHECK_OK(run_one(&w)); /* the pool runs by now */
    int named = 0;
    for (int tries = 0; tries < 200 && named < 2; tries++) {
        named = 0;
        DIR *dir = opendir("/proc/self/task");
        CHECK(dir);
        struct dirent *de;
        while ((de = readdir(dir)) != NULL) {
            if (de->d_name[0] == '.') continue;
            char path[300], comm[32] = "";
            snprintf(path, sizeof path, "/proc/self/task/%s/comm", de->d_name);
            FILE *f = fopen(path, "r");
            if (!f) continue;
            if (fgets(comm, sizeof comm, f) && (!strcmp(comm, "mc-cpu-0\n") || !strcmp(comm, "mc-cpu-1\n"))) named++;
            fclose(f);
        }
        closedir(dir);
        if (named < 2) usleep(5000); /* a worker names itself as it starts */
    }
    CHECK_EQ(named, 2);
    work_close(&w);
    mc_device_release(d);
    return 0;
#else
    MC_SKIP("reads thread names from /proc (Linux only)");
#endif
}
