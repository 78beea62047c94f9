/*
 * The Metal device's contract test, for CI without a Mac.
 *
 * Drives the real backend (src/backends/metal, built with MC_MTL_CONTRACT)
 * through its HAL table against the Objective-C runtime double
 * (objc_double.h), twice: as on macOS 15 (residency sets, mathMode,
 * waitUntilSignaledValue:timeoutMS:, architecture) and as on macOS 11 (none
 * of them). Every scenario ends by closing everything and checking the
 * double's ledger: no violation of the message, lifetime or command-buffer
 * rules, nothing leaked.
 *
 *   mc_metal_contract            the scenarios
 *   mc_metal_contract --checker  plants faults the checker must catch
 *
 * Exit code 77 (skipped) where objc_msgSend cannot be stood in for.
 */
#include "mc_test.h"
#include "objc_double.h"

#include "backends/hal.h"
#include "backends/metal/metal.h"

#include <pthread.h>
#include <time.h>
#include <unistd.h>

static const mc__hal *const H = &mc__metal_hal;

/* ---- submissions -------------------------------------------------------------- */

#define T_MAXCMD 64
#define T_MAXPASS 16

typedef struct tsub {
    mc__submission sub;
    mc__cmd cmds[T_MAXCMD];
    mc__pass passes[T_MAXPASS];
    uint8_t bytes[512];
    mc_pass_state states[T_MAXPASS];
    uint64_t times[2 * T_MAXPASS];
    uint32_t nbytes;
    pthread_mutex_t m;
    pthread_cond_t cv;
    int completes, schedules;
    bool scheduled_after_complete;
} tsub;

static void on_complete(mc__submission *s)
{
    tsub *t = s->owner;
    pthread_mutex_lock(&t->m);
    t->completes++;
    pthread_cond_broadcast(&t->cv);
    pthread_mutex_unlock(&t->m);
}

static void on_scheduled(mc__submission *s)
{
    tsub *t = s->owner;
    pthread_mutex_lock(&t->m);
    t->schedules++;
    if (t->completes) t->scheduled_after_complete = true;
    pthread_mutex_unlock(&t->m);
}

static void t_init(tsub *t, const char *label)
{
    memset(t, 0, sizeof *t);
    pthread_mutex_init(&t->m, NULL);
    pthread_cond_init(&t->cv, NULL);
    t->sub.cmds = t->cmds;
    t->sub.bytes = t->bytes;
    t->sub.passes = t->passes;
    t->sub.pass_state = t->states;
    t->sub.label = label;
    t->sub.complete = on_complete;
    t->sub.scheduled = on_scheduled;
    t->sub.owner = t;
}

static void t_pass(tsub *t, uint32_t kind, const char *label)
{
    mc__pass *p = &t->passes[t->sub.npass];
    p->label = label;
    p->kind = kind;
    p->first = t->sub.ncmd;
    p->count = 0;
    t->states[t->sub.npass] = MC_PASS_PENDING;
    t->sub.npass++;
}

static mc__cmd *t_cmd(tsub *t, uint32_t op)
{
    mc__cmd *c = &t->cmds[t->sub.ncmd++];
    memset(c, 0, sizeof *c);
    c->op = op;
    t->passes[t->sub.npass - 1].count++;
    return c;
}

static void t_pipeline(tsub *t, void *pipeline)
{
    t_cmd(t, MC__OP_SET_PIPELINE)->u.pipeline = pipeline;
}

static void t_buffer(tsub *t, uint32_t index, void *buf, size_t offset)
{
    mc__cmd *c = t_cmd(t, MC__OP_SET_BUFFER);
    c->index = index;
    c->u.buf.buffer = buf;
    c->u.buf.offset = offset;
}

static void t_u32(tsub *t, uint32_t index, uint32_t v)
{
    mc__cmd *c = t_cmd(t, MC__OP_SET_BYTES);
    c->index = index;
    c->u.bytes.offset = t->nbytes;
    c->u.bytes.len = 4;
    memcpy(t->bytes + t->nbytes, &v, 4);
    t->nbytes += 4;
}

static void t_dispatch(tsub *t, uint32_t groups, uint32_t threads)
{
    mc__cmd *c = t_cmd(t, MC__OP_DISPATCH);
    c->u.dispatch.groups = (mc_size3){groups, 1, 1};
    c->u.dispatch.threads = (mc_size3){threads, 1, 1};
}

/* A compute pass running add_one over n uints of buf. */
static void t_add_one_pass(tsub *t, const char *label, void *add_one, void *buf, uint32_t n)
{
    t_pass(t, MC__PASS_COMPUTE, label);
    t_pipeline(t, add_one);
    t_buffer(t, 0, buf, 0);
    t_u32(t, 1, n);
    t_dispatch(t, (n + 63) / 64, 64);
}

static int t_wait(tsub *t)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += 10;
    pthread_mutex_lock(&t->m);
    while (!t->completes)
        if (pthread_cond_timedwait(&t->cv, &t->m, &ts) != 0) break;
    int n = t->completes;
    pthread_mutex_unlock(&t->m);
    return n;
}

#define CHECK_DONE(t, want)                  \
    do {                                     \
        CHECK_EQ(t_wait(t), 1);              \
        CHECK_STATUS((t)->sub.status, want); \
    } while (0)

/* ---- fixtures ---------------------------------------------------------------------------- */

typedef struct fixture {
    void *dev;
    mc_device_info info;
    void *lib;
    void *add_one, *iota;
} fixture;

static char *basic_source(size_t *len)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/examples/kernels/basic.metal", MC_SOURCE_DIR);
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *s = malloc(1 << 16);
    *len = fread(s, 1, (1 << 16) - 1, f);
    s[*len] = '\0';
    fclose(f);
    return s;
}

static int open_fixture(fixture *fx)
{
    memset(fx, 0, sizeof *fx);
    mc_device_desc dd = MC_DEVICE_DESC_INIT;
    CHECK_OK(H->device_open(0, &dd, &fx->dev, &fx->info));
    size_t len;
    char *src = basic_source(&len);
    CHECK(src != NULL);
    char *log = NULL;
    mc_status s = H->library_create(fx->dev, MC_LANG_MSL, src, len, "", &fx->lib, &log);
    free(src);
    free(log);
    CHECK_OK(s);
    mc_pipeline_desc pd = MC_PIPELINE_DESC_INIT;
    pd.function = "add_one";
    pd.max_total_threads_per_threadgroup = 256;
    pd.threadgroup_size_is_multiple_of_simd_width = true;
    pd.label = "add_one";
    mc_pipeline_info pi;
    CHECK_OK(H->pipeline_create(fx->dev, fx->lib, &pd, &fx->add_one, &pi));
    pd.function = "iota";
    pd.label = "iota";
    CHECK_OK(H->pipeline_create(fx->dev, fx->lib, &pd, &fx->iota, &pi));
    return 0;
}

static void close_fixture(fixture *fx)
{
    if (fx->add_one) H->pipeline_destroy(fx->dev, fx->add_one);
    if (fx->iota) H->pipeline_destroy(fx->dev, fx->iota);
    if (fx->lib) H->library_destroy(fx->dev, fx->lib);
    if (fx->dev) H->device_close(fx->dev);
    memset(fx, 0, sizeof *fx);
}

/* ---- scenarios ------------------------------------------------------------------------------ */

static int test_devices(const mcd_os *os)
{
    CHECK_EQ(H->device_count(), os->second_gpu ? 2 : 1);
    mc_device_info info;
    if (os->second_gpu) { /* listed after the system default, whatever MTLCopyAllDevices' order */
        CHECK_OK(H->device_info(1, &info));
        CHECK(strcmp(info.name, "AMD Radeon double eGPU") == 0);
        CHECK_EQ(info.index, 1);
        void *dev2;
        CHECK_OK(H->device_open(1, NULL, &dev2, &info));
        H->device_close(dev2);
    }
    CHECK_OK(H->device_info(0, &info));
    CHECK_EQ(info.kind, MC_DEVICE_METAL);
    CHECK(strcmp(info.name, "Apple M-double GPU") == 0);
    CHECK(strcmp(info.identity, os->architecture ? "applegpu_g99d" : "Apple M-double GPU") == 0);
    CHECK_EQ(info.max_threads_per_threadgroup, 1024);
    CHECK_EQ(info.threadgroup_memory_size, 32768);
    CHECK(info.unified_memory);
    CHECK(info.features & MC_FEATURE_INDIRECT_DISPATCH);
    /* optional features: reported absent where the OS or GPU lacks them */
    CHECK_EQ(!!(info.features & MC_FEATURE_NATIVE_COMMAND_LISTS), !os->paravirtual);
    CHECK_EQ(!!(info.features & MC_FEATURE_BINARY_ARCHIVE), !os->paravirtual);
    CHECK_EQ(!!(info.features & MC_FEATURE_RESIDENCY_SET), os->residency_sets);
    CHECK_EQ(!!(info.features & MC_FEATURE_TIMED_EVENT_WAIT), os->wait_timeout);
    CHECK_STATUS(H->device_info(os->second_gpu ? 2 : 1, &info), MC_ERR_NOT_FOUND);
    void *dev;
    CHECK_STATUS(H->device_open(3, NULL, &dev, &info), MC_ERR_NOT_FOUND);
    return 0;
}

static int test_buffers(void)
{
    fixture fx;
    if (open_fixture(&fx)) return 1;
    void *b, *host;
    CHECK_OK(H->buffer_create(fx.dev, 4096, MC_STORAGE_SHARED, "round trip", &b, &host));
    CHECK(host != NULL);
    uint32_t in[64], out[64];
    for (int i = 0; i < 64; i++) in[i] = 0x1000u + (uint32_t)i;
    CHECK_OK(H->buffer_write(fx.dev, b, 100, in, sizeof in));
    CHECK_OK(H->buffer_read(fx.dev, b, 100, out, sizeof out));
    CHECK(memcmp(in, out, sizeof in) == 0);
    CHECK(memcmp((char *)host + 100, in, sizeof in) == 0);
    CHECK_STATUS(H->buffer_write(fx.dev, b, 4090, in, 16), MC_ERR_INVALID_ARGUMENT);
    void *big;
    CHECK_STATUS(H->buffer_create(fx.dev, (size_t)1 << 31, MC_STORAGE_PRIVATE, NULL, &big, &host),
                 MC_ERR_OUT_OF_MEMORY);
    H->buffer_destroy(fx.dev, b);
    /* A buffer over the caller's memory: whole pages only (Metal's rule). */
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    char *mine = aligned_alloc(page, 4 * page);
    CHECK(mine != NULL);
    CHECK_STATUS(H->buffer_wrap(fx.dev, mine + 16, 2 * page, "mine", &b), MC_ERR_INVALID_ARGUMENT);
    CHECK_STR_CONTAINS(mc_last_error(), "page");
    CHECK_STATUS(H->buffer_wrap(fx.dev, mine, page + 16, "mine", &b), MC_ERR_INVALID_ARGUMENT);
    CHECK_OK(H->buffer_wrap(fx.dev, mine, 4 * page, "mine", &b));
    CHECK_OK(H->buffer_write(fx.dev, b, 8, in, sizeof in));
    CHECK(memcmp(mine + 8, in, sizeof in) == 0); /* the caller's memory itself */
    H->buffer_destroy(fx.dev, b);
    mine[0] = 1; /* still the caller's: destroy freed nothing */
    free(mine);
    close_fixture(&fx);
    return 0;
}

static int test_libraries(const mcd_os *os)
{
    fixture fx;
    if (open_fixture(&fx)) return 1;
    const mcd_stats *st = mcd_get_stats();
    /* explicit language version, one the OS has (MTLLanguageVersion
     * availability: 3.0 from macOS 13, 2.4 on 12, 2.3 on 11) and safe math */
    CHECK_EQ(st->last_language, os->major >= 13 ? (3u << 16) : os->major == 12 ? (2u << 16) + 4 : (2u << 16) + 3);
    CHECK_EQ(st->last_math, 0);
    const char *src = "#include <metal_stdlib>\nkernel void k1(device uint *p [[buffer(0)]]) { p[0] = 1; }\n";
    void *lib;
    char *log = NULL;
    /* MSL 3.1 is macOS 14: refused with the reason before, not sent */
    const char *opts = "-std=metal3.1 -DFOO=2 -D BAR -ffast-math";
    if (os->major < 14) {
        CHECK_STATUS(H->library_create(fx.dev, MC_LANG_MSL, src, strlen(src), opts, &lib, &log), MC_ERR_UNSUPPORTED);
        CHECK_STR_CONTAINS(mc_last_error(), "MSL 3.1 is newer than");
        opts = "-std=metal2.3 -DFOO=2 -D BAR -ffast-math";
    }
    CHECK_OK(H->library_create(fx.dev, MC_LANG_MSL, src, strlen(src), opts, &lib, &log));
    CHECK(log == NULL);
    CHECK_EQ(st->last_language, os->major < 14 ? (2u << 16) + 3 : (3u << 16) + 1);
    CHECK_EQ(st->last_math, 1);
    CHECK(strcmp(st->last_macros, "FOO=2;BAR=1;") == 0);
    /* the source need not be terminated */
    H->library_destroy(fx.dev, lib);
    CHECK_STATUS(H->library_create(fx.dev, MC_LANG_MSL, src, strlen(src), "-O3", &lib, &log), MC_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(H->library_create(fx.dev, MC_LANG_C, src, strlen(src), "", &lib, &log), MC_ERR_UNSUPPORTED);
    const char *bad = "#include <metal_stdlib>\n#error this does not compile\n";
    CHECK_STATUS(H->library_create(fx.dev, MC_LANG_MSL, bad, strlen(bad), NULL, &lib, &log), MC_ERR_COMPILE);
    CHECK(log != NULL);
    CHECK_STR_CONTAINS(log, "program_source:2:2: error: #error this does not compile");
    CHECK_STR_CONTAINS(mc_last_error(), "MSL compile failed");
    free(log);

    mc_pipeline_desc pd = MC_PIPELINE_DESC_INIT;
    mc_pipeline_info pi;
    void *p;
    pd.function = "saxpy";
    CHECK_OK(H->pipeline_create(fx.dev, fx.lib, &pd, &p, &pi));
    CHECK_EQ(pi.max_total_threads_per_threadgroup, 1024);
    CHECK_EQ(pi.simd_width, 32);
    CHECK_EQ(pi.argument_count, -1);
    H->pipeline_destroy(fx.dev, p);
    pd.function = "not_there";
    CHECK_STATUS(H->pipeline_create(fx.dev, fx.lib, &pd, &p, &pi), MC_ERR_NOT_FOUND);
    pd.function = "empty";
    pd.max_total_threads_per_threadgroup = 4096;
    CHECK_STATUS(H->pipeline_create(fx.dev, fx.lib, &pd, &p, &pi), MC_ERR_COMPILE);
    close_fixture(&fx);
    return 0;
}

static int test_submit(void)
{
    fixture fx;
    if (open_fixture(&fx)) return 1;
    void *a, *b, *c, *d, *q1, *q2, *ev;
    void *ha, *hb, *hc, *hd;
    CHECK_OK(H->buffer_create(fx.dev, 4096, MC_STORAGE_SHARED, "a", &a, &ha));
    CHECK_OK(H->buffer_create(fx.dev, 4096, MC_STORAGE_SHARED, "b", &b, &hb));
    CHECK_OK(H->buffer_create(fx.dev, 4096, MC_STORAGE_SHARED, "c", &c, &hc));
    CHECK_OK(H->buffer_create(fx.dev, 64, MC_STORAGE_SHARED, "indirect", &d, &hd));
    uint32_t counts[4] = {0, 2, 1, 1}; /* three uint32 at offset 4 */
    CHECK_OK(H->buffer_write(fx.dev, d, 0, counts, sizeof counts));
    CHECK_OK(H->queue_create(fx.dev, "q1", &q1));
    CHECK_OK(H->queue_create(fx.dev, "q2", &q2));
    CHECK_OK(H->event_create(fx.dev, 0, &ev));

    /* q2 waits on the GPU for q1's signal */
    tsub t2;
    t_init(&t2, "after the event");
    t_pass(&t2, MC__PASS_SYNC, "wait");
    mc__cmd *w = t_cmd(&t2, MC__OP_WAIT);
    w->u.event.event = ev;
    w->u.event.value = 5;
    t_add_one_pass(&t2, "b += 1", fx.add_one, b, 256);
    CHECK_OK(H->submit(fx.dev, q2, &t2.sub));

    tsub t1;
    t_init(&t1, "everything");
    t1.sub.flags = MC_CMDBUF_TIMESTAMPS | MC_CMDBUF_PASS_TIMESTAMPS;
    t1.sub.pass_time = t1.times;
    t_pass(&t1, MC__PASS_COMPUTE, "iota then add_one");
    t_pipeline(&t1, fx.iota);
    t_buffer(&t1, 0, a, 0);
    t_u32(&t1, 1, 256);
    t_u32(&t1, 2, 100);
    t_dispatch(&t1, 4, 64);
    t_cmd(&t1, MC__OP_BARRIER);
    t_pipeline(&t1, fx.add_one);
    t_cmd(&t1, MC__OP_SET_TGMEM)->u.tgmem.len = 100; /* unused by the kernel; rounded up to 112 */
    t_dispatch(&t1, 4, 64);                          /* bindings persist within the pass: slot 1 still holds n */
    t_pass(&t1, MC__PASS_COPY, "copy a -> b");
    mc__cmd *cp = t_cmd(&t1, MC__OP_COPY);
    cp->u.copy.src = a;
    cp->u.copy.dst = b;
    cp->u.copy.len = 1024;
    t_pass(&t1, MC__PASS_COPY, "unaligned copy a+1 -> c+3");
    cp = t_cmd(&t1, MC__OP_COPY);
    cp->u.copy.src = a;
    cp->u.copy.src_offset = 1;
    cp->u.copy.dst = c;
    cp->u.copy.dst_offset = 3;
    cp->u.copy.len = 10;
    t_pass(&t1, MC__PASS_COPY, "fill c[512, 768)");
    mc__cmd *fl = t_cmd(&t1, MC__OP_FILL);
    fl->u.fill.buffer = c;
    fl->u.fill.offset = 512;
    fl->u.fill.len = 256;
    fl->u.fill.value = 0xab;
    t_pass(&t1, MC__PASS_COPY, "unaligned fill c[1001, 1008)");
    fl = t_cmd(&t1, MC__OP_FILL);
    fl->u.fill.buffer = c;
    fl->u.fill.offset = 1001;
    fl->u.fill.len = 7;
    fl->u.fill.value = 7;
    t_pass(&t1, MC__PASS_COPY, "empty copy");
    cp = t_cmd(&t1, MC__OP_COPY);
    cp->u.copy.src = a;
    cp->u.copy.dst = b;
    t_pass(&t1, MC__PASS_COMPUTE, "indirect add_one on b");
    t_pipeline(&t1, fx.add_one);
    t_buffer(&t1, 0, b, 0);
    t_u32(&t1, 1, 256);
    mc__cmd *ind = t_cmd(&t1, MC__OP_DISPATCH_INDIRECT);
    ind->u.indirect.buffer = d;
    ind->u.indirect.offset = 4;
    ind->u.indirect.threads = (mc_size3){64, 1, 1};
    t_pass(&t1, MC__PASS_SYNC, "signal");
    mc__cmd *sg = t_cmd(&t1, MC__OP_SIGNAL);
    sg->u.event.event = ev;
    sg->u.event.value = 5;
    CHECK_OK(H->submit(fx.dev, q1, &t1.sub));

    CHECK_DONE(&t1, MC_OK);
    CHECK_DONE(&t2, MC_OK);
    for (uint32_t p = 0; p < t1.sub.npass; p++) CHECK_EQ(t1.states[p], MC_PASS_COMPLETED);
    for (uint32_t p = 0; p < t2.sub.npass; p++) CHECK_EQ(t2.states[p], MC_PASS_COMPLETED);
    CHECK_GT(t1.sub.gpu_start_ns, 0);
    CHECK_GE(t1.sub.gpu_end_ns, t1.sub.gpu_start_ns);
    CHECK_EQ(t1.times[0], 0); /* per-pass times are not measured on Metal */
    CHECK_EQ(t1.schedules, 1);
    CHECK(!t1.scheduled_after_complete);
    CHECK_EQ(H->event_value(fx.dev, ev), 5);

    const uint32_t *ua = ha, *ub = hb;
    const uint8_t *bc = hc;
    for (uint32_t i = 0; i < 256; i++) {
        CHECK_EQ(ua[i], 101 + i);
        CHECK_EQ(ub[i], 101 + i + (i < 128 ? 2 : 1)); /* indirect: 2 groups of 64; then q2 */
    }
    CHECK(memcmp(bc + 3, (const uint8_t *)ha + 1, 10) == 0);
    CHECK_EQ(bc[2], 0);
    CHECK_EQ(bc[13], 0);
    for (int i = 512; i < 768; i++) CHECK_EQ(bc[i], 0xab);
    for (int i = 1001; i < 1008; i++) CHECK_EQ(bc[i], 7);
    CHECK_EQ(bc[1000], 0);
    CHECK_EQ(bc[1008], 0);
    CHECK_GE(mcd_get_stats()->encoders_labelled, 7);

    /* unretained references (F676): the engine keeps the resources alive */
    tsub t3;
    t_init(&t3, "unretained");
    t3.sub.flags = MC_CMDBUF_UNRETAINED_REFERENCES;
    t3.sub.scheduled = NULL;
    t_add_one_pass(&t3, "a += 1", fx.add_one, a, 256);
    unsigned before = mcd_get_stats()->cmdbufs_unretained;
    CHECK_OK(H->submit(fx.dev, q1, &t3.sub));
    CHECK_DONE(&t3, MC_OK);
    CHECK_EQ(mcd_get_stats()->cmdbufs_unretained, before + 1);
    CHECK_EQ(ua[0], 102);

    H->event_destroy(fx.dev, ev);
    H->queue_destroy(fx.dev, q1);
    H->queue_destroy(fx.dev, q2);
    H->buffer_destroy(fx.dev, a);
    H->buffer_destroy(fx.dev, b);
    H->buffer_destroy(fx.dev, c);
    H->buffer_destroy(fx.dev, d);
    close_fixture(&fx);
    return 0;
}

/* One single-pass submission on a fresh queue whose command buffer the
 * double fails with code; returns its status. */
static mc_status fail_with(fixture *fx, void *buf, long code, char *msg, size_t cap)
{
    void *q;
    if (H->queue_create(fx->dev, "victim", &q) != MC_OK) return MC_ERR_INTERNAL;
    tsub t;
    t_init(&t, "fails");
    t_add_one_pass(&t, "p", fx->add_one, buf, 16);
    mcd_fail_commit(1, code, 0);
    mc_status s = H->submit(fx->dev, q, &t.sub);
    if (s == MC_OK && t_wait(&t) == 1) s = t.sub.status;
    else s = MC_ERR_INTERNAL;
    if (msg) snprintf(msg, cap, "%s", t.sub.message);
    H->queue_destroy(fx->dev, q);
    return s;
}

static int test_errors(void)
{
    fixture fx;
    if (open_fixture(&fx)) return 1;
    void *x, *hx, *q;
    CHECK_OK(H->buffer_create(fx.dev, 256, MC_STORAGE_SHARED, "x", &x, &hx));
    const uint32_t *ux = hx;

    /* injected fault: the passes before it run, it faults, the rest pend */
    CHECK_OK(H->queue_create(fx.dev, "injected", &q));
    unsigned queues = mcd_get_stats()->queues_made;
    tsub t;
    t_init(&t, "injected");
    t_add_one_pass(&t, "p0", fx.add_one, x, 16);
    t_add_one_pass(&t, "p1", fx.add_one, x, 16);
    t_add_one_pass(&t, "p2", fx.add_one, x, 16);
    t.sub.inject = MC_ERR_TIMEOUT;
    t.sub.inject_pass = 1;
    CHECK_OK(H->submit(fx.dev, q, &t.sub));
    CHECK_DONE(&t, MC_ERR_TIMEOUT);
    CHECK_EQ(t.states[0], MC_PASS_COMPLETED);
    CHECK_EQ(t.states[1], MC_PASS_FAULTED);
    CHECK_EQ(t.states[2], MC_PASS_PENDING);
    CHECK_STR_CONTAINS(t.sub.message, "injected fault: MC_ERR_TIMEOUT in pass 'p1'");
    CHECK_EQ(ux[0], 1);
    /* the queue is failed for good; its Metal queue was replaced (F687) */
    tsub t2;
    t_init(&t2, "after");
    t_add_one_pass(&t2, "p", fx.add_one, x, 16);
    CHECK_OK(H->submit(fx.dev, q, &t2.sub));
    CHECK_DONE(&t2, MC_ERR_PRIOR_ERROR);
    CHECK_EQ(t2.states[0], MC_PASS_PENDING);
    CHECK_EQ(ux[0], 1);
    CHECK_EQ(mcd_get_stats()->queues_made, queues + 1);
    H->queue_destroy(fx.dev, q);

    /* a GPU error: encoder infos give the pass states (F686) */
    void *ev;
    CHECK_OK(H->event_create(fx.dev, 0, &ev));
    CHECK_OK(H->queue_create(fx.dev, "page fault", &q));
    t_init(&t, "page fault");
    t_add_one_pass(&t, "e0", fx.add_one, x, 16);
    t_pass(&t, MC__PASS_SYNC, "signal");
    mc__cmd *sg = t_cmd(&t, MC__OP_SIGNAL);
    sg->u.event.event = ev;
    sg->u.event.value = 1;
    t_add_one_pass(&t, "e1", fx.add_one, x, 16);
    t_add_one_pass(&t, "e2", fx.add_one, x, 16);
    mcd_fail_commit(1, 3, 1);
    CHECK_OK(H->submit(fx.dev, q, &t.sub));
    CHECK_DONE(&t, MC_ERR_PAGE_FAULT);
    CHECK_EQ(t.states[0], MC_PASS_COMPLETED);
    CHECK_EQ(t.states[1], MC_PASS_COMPLETED);
    CHECK_EQ(t.states[2], MC_PASS_FAULTED);
    CHECK_EQ(t.states[3], MC_PASS_PENDING);
    CHECK_STR_CONTAINS(t.sub.message, "MTLCommandBufferError 3");
    CHECK_EQ(ux[0], 2);
    H->queue_destroy(fx.dev, q);
    H->event_destroy(fx.dev, ev);

    /* a command buffer already committed behind a failed one is its victim */
    CHECK_OK(H->queue_create(fx.dev, "victims", &q));
    tsub v1, v2;
    t_init(&v1, "first");
    t_add_one_pass(&v1, "v1", fx.add_one, x, 16);
    t_init(&v2, "second");
    t_add_one_pass(&v2, "v2", fx.add_one, x, 16);
    mcd_pause_gpu(true);
    mcd_fail_commit(1, 2, 0);
    CHECK_OK(H->submit(fx.dev, q, &v1.sub));
    CHECK_OK(H->submit(fx.dev, q, &v2.sub));
    mcd_pause_gpu(false);
    CHECK_DONE(&v1, MC_ERR_TIMEOUT);
    CHECK_EQ(v1.states[0], MC_PASS_FAULTED);
    CHECK_DONE(&v2, MC_ERR_PRIOR_ERROR);
    CHECK_EQ(v2.states[0], MC_PASS_AFFECTED); /* Metal ran it anyway */
    H->queue_destroy(fx.dev, q);

    /* MTLCommandBufferError codes map to the taxonomy (F685) */
    static const struct {
        long code;
        mc_status want;
    } map[] = {{1, MC_ERR_INTERNAL},      {2, MC_ERR_TIMEOUT},       {3, MC_ERR_PAGE_FAULT},
               {7, MC_ERR_NOT_PERMITTED}, {8, MC_ERR_OUT_OF_MEMORY}, {9, MC_ERR_INVALID_RESOURCE},
               {10, MC_ERR_INTERNAL},     {12, MC_ERR_INTERNAL},     {4, MC_ERR_ACCESS_REVOKED}};
    char msg[256];
    for (size_t i = 0; i < sizeof map / sizeof map[0]; i++)
        CHECK_STATUS(fail_with(&fx, x, map[i].code, msg, sizeof msg), map[i].want);
    CHECK_STR_CONTAINS(msg, "revoked this process's GPU access after");
    for (long code = 1; code <= 12; code++)
        CHECK_EQ(mc__mtl_map_error_code(code),
                 code == 10 || code == 12 || code == 5 || code == 6 ? MC_ERR_INTERNAL : code);

    /* device removed: the device is lost for good */
    CHECK_STATUS(fail_with(&fx, x, 11, msg, sizeof msg), MC_ERR_DEVICE_LOST);
    CHECK_STATUS(H->queue_create(fx.dev, "late", &q), MC_ERR_DEVICE_LOST);
    void *y, *hy, *e2;
    CHECK_STATUS(H->buffer_create(fx.dev, 64, MC_STORAGE_SHARED, NULL, &y, &hy), MC_ERR_DEVICE_LOST);
    CHECK_STATUS(H->event_create(fx.dev, 0, &e2), MC_ERR_DEVICE_LOST);
    CHECK_STATUS(H->buffer_write(fx.dev, x, 0, msg, 4), MC_ERR_DEVICE_LOST);
    H->buffer_destroy(fx.dev, x);
    close_fixture(&fx);

    /* an injected device loss, and a submission after it */
    if (open_fixture(&fx)) return 1;
    void *q2;
    CHECK_OK(H->buffer_create(fx.dev, 256, MC_STORAGE_SHARED, "x", &x, &hx));
    CHECK_OK(H->queue_create(fx.dev, "a", &q));
    CHECK_OK(H->queue_create(fx.dev, "b", &q2));
    t_init(&t, "lost");
    t_add_one_pass(&t, "p0", fx.add_one, x, 16);
    t.sub.inject = MC_ERR_DEVICE_LOST;
    t.sub.inject_pass = 0;
    CHECK_OK(H->submit(fx.dev, q, &t.sub));
    CHECK_DONE(&t, MC_ERR_DEVICE_LOST);
    CHECK_EQ(t.states[0], MC_PASS_FAULTED);
    t_init(&t2, "after loss");
    t_add_one_pass(&t2, "p0", fx.add_one, x, 16);
    CHECK_OK(H->submit(fx.dev, q2, &t2.sub));
    CHECK_DONE(&t2, MC_ERR_DEVICE_LOST);
    CHECK_EQ(((const uint32_t *)hx)[0], 0);
    H->queue_destroy(fx.dev, q);
    H->queue_destroy(fx.dev, q2);
    H->buffer_destroy(fx.dev, x);
    close_fixture(&fx);
    return 0;
}

static int test_archive(const mcd_os *os)
{
    fixture fx;
    if (open_fixture(&fx)) return 1;
    char ident[128];
    CHECK_OK(H->compiler_identity(fx.dev, MC_LANG_MSL, ident, sizeof ident));
    char want[64];
    snprintf(want, sizeof want, "MSL %s", os->major >= 13 ? "3.0" : os->major == 12 ? "2.4" : "2.3");
    CHECK_STR_CONTAINS(ident, want);
    CHECK_STATUS(H->compiler_identity(fx.dev, MC_LANG_CUDA, ident, sizeof ident), MC_ERR_UNSUPPORTED);

    size_t len;
    char *src = basic_source(&len);
    mc__pipeline_src ps = {MC_LANG_MSL, src, len, "", "add_one", 256, true, "add_one", NULL, 0};
    void *bytes = NULL;
    size_t n = 0;
    if (os->paravirtual) { /* no MTLBinaryArchive: refused with the reason, nothing sent */
        CHECK_STATUS(H->pipeline_export(fx.dev, &ps, fx.lib, fx.add_one, &bytes, &n), MC_ERR_UNSUPPORTED);
        CHECK_STR_CONTAINS(mc_last_error(), "no MTLBinaryArchive");
        free(src);
        close_fixture(&fx);
        return 0;
    }
    CHECK_OK(H->pipeline_export(fx.dev, &ps, fx.lib, fx.add_one, &bytes, &n));
    CHECK_GT(n, 16);
    CHECK(memcmp(bytes, "MCMTLAR1", 8) == 0);

    void *lib, *pl;
    mc_pipeline_info pi;
    unsigned hits = mcd_get_stats()->archive_hits;
    CHECK_OK(H->pipeline_import(fx.dev, &ps, bytes, n, true, &lib, &pl, &pi)); /* found: no compile (F700) */
    CHECK_EQ(mcd_get_stats()->archive_hits, hits + 1);
    CHECK_EQ(pi.max_total_threads_per_threadgroup, 256);
    H->pipeline_destroy(fx.dev, pl);
    H->library_destroy(fx.dev, lib);
    CHECK_OK(H->pipeline_import(fx.dev, &ps, bytes, n, false, &lib, &pl, &pi)); /* the archive is set either way */
    CHECK_EQ(mcd_get_stats()->archive_hits, hits + 2);
    H->pipeline_destroy(fx.dev, pl);
    H->library_destroy(fx.dev, lib);

    mc__pipeline_src other = ps;
    other.function = "iota"; /* not in this archive */
    CHECK_STATUS(H->pipeline_import(fx.dev, &other, bytes, n, true, &lib, &pl, &pi), MC_ERR_CACHE_MISS);
    other = ps;
    other.max_total_threads_per_threadgroup = 64; /* another descriptor: another entry */
    CHECK_STATUS(H->pipeline_import(fx.dev, &other, bytes, n, true, &lib, &pl, &pi), MC_ERR_CACHE_MISS);
    CHECK_OK(H->pipeline_import(fx.dev, &other, bytes, n, false, &lib, &pl, &pi)); /* compiles */
    H->pipeline_destroy(fx.dev, pl);
    H->library_destroy(fx.dev, lib);
    CHECK_STATUS(H->pipeline_import(fx.dev, &ps, bytes, n - 1, true, &lib, &pl, &pi), MC_ERR_IO);
    memcpy(bytes, "XXXXXXXX", 8);
    CHECK_STATUS(H->pipeline_import(fx.dev, &ps, bytes, n, false, &lib, &pl, &pi), MC_ERR_IO);
    /* an archive file Metal refuses */
    memcpy(bytes, "MCMTLAR1", 8);
    memset((char *)bytes + 16, 'z', n - 16);
    CHECK_STATUS(H->pipeline_import(fx.dev, &ps, bytes, n, true, &lib, &pl, &pi), MC_ERR_CACHE_MISS);
    CHECK_STATUS(H->pipeline_import(fx.dev, &ps, bytes, n, false, &lib, &pl, &pi), MC_ERR_IO);
    free(bytes);
    free(src);
    close_fixture(&fx);
    return 0;
}

/* ---- function constants -------------------------------------------------------------- */

static const char fc_source[] =
    "#include <metal_stdlib>\nusing namespace metal;\n"
    "constant uint fc_mul [[function_constant(0)]];\n"
    "constant bool fc_neg [[function_constant(1)]];\n"
    "kernel void fc_scale(device int *out [[buffer(0)]], uint i [[thread_position_in_grid]])\n"
    "{ int v = int(i * fc_mul); out[i] = is_function_constant_defined(fc_neg) && fc_neg ? -v : v; }\n";

/* Runs fc_scale over 64 ints of buf with pipeline p; 0 when out[i] = want * i. */
static int fc_run(fixture *fx, void *q, void *p, void *buf, const void *host, int32_t want)
{
    tsub t;
    t_init(&t, "fc");
    t_pass(&t, MC__PASS_COMPUTE, "fc");
    t_pipeline(&t, p);
    t_buffer(&t, 0, buf, 0);
    t_dispatch(&t, 1, 64);
    CHECK_OK(H->submit(fx->dev, q, &t.sub));
    CHECK_DONE(&t, MC_OK);
    const int32_t *out = host;
    for (int32_t i = 0; i < 64; i++) CHECK_EQ(out[i], want * i);
    return 0;
}

/* mc_pipeline_desc.constants specialise the function, each value under the
 * type the function declares; an archive holds the specialised pipeline. */
static int test_function_constants(const mcd_os *os)
{
    fixture fx;
    if (open_fixture(&fx)) return 1;
    void *lib, *q, *buf, *host, *p;
    char *log = NULL;
    CHECK_OK(H->library_create(fx.dev, MC_LANG_MSL, fc_source, strlen(fc_source), "", &lib, &log));
    CHECK_OK(H->queue_create(fx.dev, "fc", &q));
    CHECK_OK(H->buffer_create(fx.dev, 256, MC_STORAGE_SHARED, "fc out", &buf, &host));
    uint32_t mul = 3;
    bool neg = true;
    mc_function_constant fc[2] = {{0, sizeof mul, &mul}, {1, sizeof neg, &neg}};
    mc_pipeline_desc pd = MC_PIPELINE_DESC_INIT;
    pd.function = "fc_scale";
    pd.constants = fc;
    pd.constant_count = 2;
    mc_pipeline_info pi;
    CHECK_OK(H->pipeline_create(fx.dev, lib, &pd, &p, &pi));
    if (fc_run(&fx, q, p, buf, host, -3)) return 1;
    H->pipeline_destroy(fx.dev, p);
    pd.constant_count = 1; /* fc_neg undefined */
    CHECK_OK(H->pipeline_create(fx.dev, lib, &pd, &p, &pi));
    if (fc_run(&fx, q, p, buf, host, 3)) return 1;
    H->pipeline_destroy(fx.dev, p);
    /* refused with the cause: a size that is not the declared type's, a bad index */
    uint16_t small = 3;
    mc_function_constant wrong = {0, sizeof small, &small}, far = {200, 4, &mul};
    pd.constants = &wrong;
    CHECK_STATUS(H->pipeline_create(fx.dev, lib, &pd, &p, &pi), MC_ERR_INVALID_ARGUMENT);
    CHECK_STR_CONTAINS(mc_last_error(), "function constant 0 of 'fc_scale' is 4 bytes, but 2 were given");
    pd.constants = &far;
    CHECK_STATUS(H->pipeline_create(fx.dev, lib, &pd, &p, &pi), MC_ERR_INVALID_ARGUMENT);
    CHECK_STR_CONTAINS(mc_last_error(), "index 200");
    if (!os->paravirtual) { /* the archive holds the pipeline for these values only */
        mc__pipeline_src ps = {MC_LANG_MSL, fc_source, strlen(fc_source), "", "fc_scale", 0, false, "fc", fc, 2};
        void *bytes = NULL, *lib2, *p2;
        size_t n = 0;
        CHECK_OK(H->pipeline_export(fx.dev, &ps, lib, NULL, &bytes, &n));
        unsigned hits = mcd_get_stats()->archive_hits;
        CHECK_OK(H->pipeline_import(fx.dev, &ps, bytes, n, true, &lib2, &p2, &pi));
        CHECK_EQ(mcd_get_stats()->archive_hits, hits + 1);
        if (fc_run(&fx, q, p2, buf, host, -3)) return 1;
        H->pipeline_destroy(fx.dev, p2);
        H->library_destroy(fx.dev, lib2);
        uint32_t other = 4;
        mc_function_constant fc2[2] = {{0, sizeof other, &other}, {1, sizeof neg, &neg}};
        ps.constants = fc2;
        CHECK_STATUS(H->pipeline_import(fx.dev, &ps, bytes, n, true, &lib2, &p2, &pi), MC_ERR_CACHE_MISS);
        free(bytes);
    }
    H->buffer_destroy(fx.dev, buf);
    H->queue_destroy(fx.dev, q);
    H->library_destroy(fx.dev, lib);
    close_fixture(&fx);
    return 0;
}

/* ---- command lists (ICBs) and GPU-driven work ------------------------------------ */

/* A recording as the engine freezes it (hal.h, "command lists"). */
typedef struct tlist {
    mc__cmd cmds[T_MAXCMD];
    uint32_t ncmd, ncommands;
    uint8_t bytes[256];
    uint32_t nbytes;
    bool has_indirect;
} tlist;

static mc__cmd *l_cmd(tlist *l, uint32_t op)
{
    mc__cmd *c = &l->cmds[l->ncmd++];
    memset(c, 0, sizeof *c);
    c->op = op;
    return c;
}

/* Command k: add_one on counter k (one thread does it), with its own
 * pipeline, buffer and bytes; barrier: ordered after the commands before. */
static void l_count(tlist *l, void *add_one, void *counters, uint32_t k, bool barrier, uint32_t groups)
{
    if (barrier) l_cmd(l, MC__OP_BARRIER);
    l_cmd(l, MC__OP_SET_PIPELINE)->u.pipeline = add_one;
    mc__cmd *c = l_cmd(l, MC__OP_SET_BUFFER);
    c->index = 0;
    c->u.buf.buffer = counters;
    c->u.buf.offset = (size_t)k * 4;
    c = l_cmd(l, MC__OP_SET_BYTES);
    c->index = 1;
    c->u.bytes.offset = l->nbytes;
    c->u.bytes.len = 4;
    uint32_t one = 1;
    memcpy(l->bytes + l->nbytes, &one, 4);
    l->nbytes += 16;
    if (k == 1) l_cmd(l, MC__OP_SET_TGMEM)->u.tgmem.len = 40; /* rounded up to 48 */
    c = l_cmd(l, MC__OP_DISPATCH);
    c->u.dispatch.groups = (mc_size3){groups, 1, 1};
    c->u.dispatch.threads = (mc_size3){32, 1, 1};
    l->ncommands++;
}

static mc__list_desc l_desc(tlist *l, const char *label)
{
    mc__list_desc d = {l->cmds, l->ncmd, l->bytes, l->nbytes, l->ncommands, l->has_indirect, label};
    return d;
}

static void t_exec(tsub *t, const char *label, void *list, uint32_t first, uint32_t count, void *range)
{
    t_pass(t, MC__PASS_COMPUTE, label);
    mc__cmd *c = t_cmd(t, MC__OP_EXECUTE_LIST);
    c->u.exec.list = list;
    c->u.exec.first = first;
    c->u.exec.count = count;
    c->u.exec.range_buffer = range;
}

static int test_cmdlist(const mcd_os *os)
{
    /* ICBs where the GPU has them; threadgroup memory in ICB commands needs
     * maxKernelThreadgroupMemoryBindCount (macOS 14) */
    bool icb = !os->paravirtual, icb_tgmem = icb && os->major >= 14;
    fixture fx;
    if (open_fixture(&fx)) return 1;
    void *counters, *ranges, *grid, *q, *hc, *hr, *hg;
    CHECK_OK(H->buffer_create(fx.dev, 64, MC_STORAGE_SHARED, "counters", &counters, &hc));
    CHECK_OK(H->buffer_create(fx.dev, 64, MC_STORAGE_SHARED, "ranges", &ranges, &hr));
    CHECK_OK(H->buffer_create(fx.dev, 64, MC_STORAGE_SHARED, "grid", &grid, &hg));
    CHECK_OK(H->queue_create(fx.dev, "lists", &q));
    const uint32_t *uc = hc;

    /* four commands: 0, 1 (threadgroup memory), barrier + 2, 3 does nothing */
    tlist tl;
    memset(&tl, 0, sizeof tl);
    l_count(&tl, fx.add_one, counters, 0, false, 1);
    l_count(&tl, fx.add_one, counters, 1, false, 1);
    l_count(&tl, fx.add_one, counters, 2, true, 1);
    l_count(&tl, fx.add_one, counters, 3, false, 0);
    mc__list_desc d = l_desc(&tl, "count");
    void *list;
    uint32_t caps = 0;
    CHECK_OK(H->cmdlist_create(fx.dev, &d, &list, &caps));
    CHECK_EQ(caps, icb_tgmem ? MC__LIST_GPU_RANGE : 0u);
    CHECK_EQ(((mc__mtl_list *)list)->icb != NULL, icb_tgmem);
    mc__cmd *c;
    tsub t;
    if (!icb_tgmem) { /* encoded into the pass at each execution; no range from the GPU */
        t_init(&t, "executions without an ICB");
        t_exec(&t, "all", list, 0, 4, NULL);
        t_exec(&t, "empty", list, 2, 0, NULL);
        CHECK_OK(H->submit(fx.dev, q, &t.sub));
        CHECK_DONE(&t, MC_OK);
        CHECK_EQ(uc[0], 1);
        CHECK_EQ(uc[1], 1);
        CHECK_EQ(uc[2], 1);
        CHECK_EQ(uc[3], 0);
        H->cmdlist_destroy(fx.dev, list);
        /* without threadgroup memory, an ICB still where the GPU has them */
        memset(&tl, 0, sizeof tl);
        l_count(&tl, fx.add_one, counters, 0, false, 1);
        d = l_desc(&tl, "no threadgroup memory");
        CHECK_OK(H->cmdlist_create(fx.dev, &d, &list, &caps));
        CHECK_EQ(caps, icb ? MC__LIST_GPU_RANGE : 0u);
        CHECK_EQ(((mc__mtl_list *)list)->icb != NULL, icb);
        t_init(&t, "small list");
        t_exec(&t, "all", list, 0, 1, NULL);
        CHECK_OK(H->submit(fx.dev, q, &t.sub));
        CHECK_DONE(&t, MC_OK);
        CHECK_EQ(uc[0], 2);
        H->cmdlist_destroy(fx.dev, list);
        goto indirect;
    }
    {
        uint32_t r[4] = {1, 100, 9, 1}; /* {1, 100}: clamped to 1..3; {9, 1}: past the end */
        CHECK_OK(H->buffer_write(fx.dev, ranges, 0, r, sizeof r));
        t_init(&t, "executions");
        t_exec(&t, "all", list, 0, 4, NULL);
        t_exec(&t, "empty", list, 2, 0, NULL);
        t_exec(&t, "chosen on the GPU", list, 0, 4, ranges);
        t_pass(&t, MC__PASS_COMPUTE, "past the end");
        c = t_cmd(&t, MC__OP_EXECUTE_LIST);
        c->u.exec.list = list;
        c->u.exec.count = 4;
        c->u.exec.range_buffer = ranges;
        c->u.exec.range_offset = 8;
        unsigned long before = mcd_get_stats()->icb_commands_run;
        CHECK_OK(H->submit(fx.dev, q, &t.sub));
        CHECK_DONE(&t, MC_OK);
        for (uint32_t p = 0; p < t.sub.npass; p++) CHECK_EQ(t.states[p], MC_PASS_COMPLETED);
        CHECK_EQ(uc[0], 1);
        CHECK_EQ(uc[1], 2);
        CHECK_EQ(uc[2], 2);
        CHECK_EQ(uc[3], 0); /* a zero grid: a reset command */
        CHECK_EQ(mcd_get_stats()->icb_commands_run, before + 5);
        /* under API validation (MTL_DEBUG_LAYER=1, as here) no zero-grid
     * pipeline workaround: Metal would abort the process */
        CHECK_EQ(mcd_get_stats()->pipeline_touches, 0);
        H->cmdlist_destroy(fx.dev, list);
    }

indirect:
    /* a list with an indirect dispatch: no ICB, encoded at each execution */
    memset(&tl, 0, sizeof tl);
    l_count(&tl, fx.add_one, counters, 4, false, 1);
    l_cmd(&tl, MC__OP_SET_PIPELINE)->u.pipeline = fx.add_one;
    c = l_cmd(&tl, MC__OP_SET_BUFFER);
    c->u.buf.buffer = counters;
    c->u.buf.offset = 40;
    c = l_cmd(&tl, MC__OP_SET_BYTES);
    c->index = 1;
    c->u.bytes.offset = 0; /* the 1 command 0 passes */
    c->u.bytes.len = 4;
    c = l_cmd(&tl, MC__OP_DISPATCH_INDIRECT);
    c->u.indirect.buffer = grid;
    c->u.indirect.threads = (mc_size3){32, 1, 1};
    tl.ncommands++;
    tl.has_indirect = true;
    d = l_desc(&tl, "with an indirect dispatch");
    CHECK_OK(H->cmdlist_create(fx.dev, &d, &list, &caps));
    CHECK_EQ(caps, 0); /* MTLIndirectComputeCommand has no indirect dispatch */
    uint32_t g[3] = {1, 1, 1};
    CHECK_OK(H->buffer_write(fx.dev, grid, 0, g, sizeof g));
    t_init(&t, "inline");
    t_exec(&t, "both", list, 0, 2, NULL);
    t_exec(&t, "the indirect one", list, 1, 1, NULL);
    CHECK_OK(H->submit(fx.dev, q, &t.sub));
    CHECK_DONE(&t, MC_OK);
    CHECK_EQ(uc[4], 1);
    CHECK_EQ(uc[10], 2);

    /* validation mode: counts over the limits are refused on the device */
    g[1] = 70000;
    CHECK_OK(H->buffer_write(fx.dev, grid, 0, g, sizeof g));
    t_init(&t, "validation");
    t.sub.flags = MC__SUBMIT_VALIDATION;
    t_add_one_pass(&t, "before", fx.add_one, counters, 1);
    t_exec(&t, "over the limits", list, 1, 1, NULL);
    t_add_one_pass(&t, "after", fx.add_one, counters, 1);
    CHECK_OK(H->submit(fx.dev, q, &t.sub));
    CHECK_DONE(&t, MC_ERR_VALIDATION);
    CHECK_STR_CONTAINS(t.sub.message, "exceed the limits");
    CHECK_EQ(t.states[0], MC_PASS_COMPLETED);
    CHECK_EQ(t.states[1], MC_PASS_FAULTED);
    CHECK_EQ(t.states[2], MC_PASS_AFFECTED);
    CHECK_EQ(uc[10], 2); /* it did not run */
    H->queue_destroy(fx.dev, q);
    CHECK_OK(H->queue_create(fx.dev, "lists again", &q));
    g[1] = 1;
    CHECK_OK(H->buffer_write(fx.dev, grid, 0, g, sizeof g));
    t_init(&t, "validation, within the limits");
    t.sub.flags = MC__SUBMIT_VALIDATION;
    t_exec(&t, "checked", list, 1, 1, NULL);
    CHECK_OK(H->submit(fx.dev, q, &t.sub));
    CHECK_DONE(&t, MC_OK);
    CHECK_EQ(uc[10], 3);
    H->cmdlist_destroy(fx.dev, list);

    H->queue_destroy(fx.dev, q);
    H->buffer_destroy(fx.dev, counters);
    H->buffer_destroy(fx.dev, ranges);
    H->buffer_destroy(fx.dev, grid);
    close_fixture(&fx);
    return 0;
}

typedef struct later {
    void *dev, *ev;
    uint64_t value;
} later;

static void *signal_later(void *arg)
{
    later *l = arg;
    usleep(30000);
    H->event_signal(l->dev, l->ev, l->value);
    return NULL;
}

static int test_events(const mcd_os *os)
{
    fixture fx;
    if (open_fixture(&fx)) return 1;
    void *ev;
    CHECK_OK(H->event_create(fx.dev, 10, &ev));
    CHECK_EQ(H->event_value(fx.dev, ev), 10);
    CHECK_OK(H->event_signal(fx.dev, ev, 20));
    CHECK_EQ(H->event_value(fx.dev, ev), 20);
    CHECK_STATUS(H->event_signal(fx.dev, ev, 15), MC_ERR_INVALID_ARGUMENT);
    CHECK_OK(H->event_wait(fx.dev, ev, 20, 0));
    CHECK_STATUS(H->event_wait(fx.dev, ev, 30, 0), MC_ERR_WAIT_TIMEOUT);
    unsigned waits = mcd_get_stats()->timed_waits, notes = mcd_get_stats()->notifications;
    CHECK_STATUS(H->event_wait(fx.dev, ev, 30, 20000000), MC_ERR_WAIT_TIMEOUT);
    later l = {fx.dev, ev, 30};
    pthread_t th;
    pthread_create(&th, NULL, signal_later, &l);
    CHECK_OK(H->event_wait(fx.dev, ev, 30, 5000000000ull));
    pthread_join(th, NULL);
    l.value = 40;
    pthread_create(&th, NULL, signal_later, &l);
    CHECK_OK(H->event_wait(fx.dev, ev, 40, MC_WAIT_FOREVER));
    pthread_join(th, NULL);
    if (os->wait_timeout) {
        CHECK_GE(mcd_get_stats()->timed_waits, waits + 3); /* F692 */
    } else {
        /* the listener's notifications arrive on their own threads */
        for (int i = 0; i < 200 && mcd_get_stats()->notifications < notes + 2; i++) usleep(10000);
        CHECK_GE(mcd_get_stats()->notifications, notes + 2);
    }
    H->event_destroy(fx.dev, ev);
    close_fixture(&fx);
    return 0;
}

static int scenario(const char *name, const mcd_os *os)
{
    fprintf(stderr, "== %s\n", name);
    mcd_begin(os);
    int rc = 0;
    rc |= test_devices(os);
    rc |= test_buffers();
    rc |= test_libraries(os);
    rc |= test_submit();
    rc |= test_cmdlist(os);
    rc |= test_errors();
    rc |= test_archive(os);
    rc |= test_function_constants(os);
    rc |= test_events(os);
    int v = mcd_end();
    const mcd_stats *st = mcd_get_stats();
    fprintf(stderr,
            "   %lu messages (%lu through objc_msgSend_stret), %u distinct selectors, %u command buffers, %u "
            "residency commits, %u compiles, %u violations\n",
            st->messages, st->stret_messages, st->distinct_selectors, st->cmdbufs_committed, st->residency_commits,
            st->compiles, v);
    if (os->residency_sets && st->residency_commits == 0) {
        fprintf(stderr, "FAIL: no residency set was committed on a system that has them (F169)\n");
        rc = 1;
    }
    if (!os->residency_sets && st->residency_commits) rc = 1;
    if (st->stret_messages == 0) rc = 1;
    if (getenv("MC_METAL_CONTRACT_VERBOSE")) mcd_print_selector_counts();
    mcd_clear_violations();
    return rc || v;
}

/* The ICB pipeline workaround (an empty dispatch per pipeline before an ICB,
 * needed before the Apple9 family) is a zero grid, which Metal's API
 * validation aborts on: it is sent only with validation off, only where
 * needed. */
static int icb_workaround(int family, bool validation, bool want_touches)
{
    mcd_os os = {.residency_sets = true,
                 .wait_timeout = true,
                 .math_mode = true,
                 .architecture = true,
                 .version = "Version 15.1 (Build 24B83)",
                 .major = 15,
                 .gpu_family = family};
    if (validation) setenv("MTL_DEBUG_LAYER", "1", 1);
    else unsetenv("MTL_DEBUG_LAYER");
    fprintf(stderr, "== ICB pipeline workaround: Apple%d, API validation %s\n", family - 1000,
            validation ? "on" : "off");
    mcd_begin(&os);
    int rc = 0;
    fixture fx;
    if (open_fixture(&fx)) rc = 1;
    void *counters = NULL, *hc, *q = NULL, *list = NULL;
    uint32_t caps;
    tlist tl;
    memset(&tl, 0, sizeof tl);
    if (!rc && (H->buffer_create(fx.dev, 64, MC_STORAGE_SHARED, "counters", &counters, &hc) != MC_OK ||
                H->queue_create(fx.dev, "q", &q) != MC_OK))
        rc = 1;
    if (!rc) {
        l_count(&tl, fx.add_one, counters, 0, false, 1);
        mc__list_desc d = l_desc(&tl, "one");
        rc = H->cmdlist_create(fx.dev, &d, &list, &caps) != MC_OK;
    }
    if (!rc) {
        tsub t;
        t_init(&t, "exec");
        t_exec(&t, "all", list, 0, 1, NULL);
        rc = H->submit(fx.dev, q, &t.sub) != MC_OK || t_wait(&t) != 1 || t.sub.status != MC_OK;
        if (!rc && ((const uint32_t *)hc)[0] != 1) rc = 1;
        if ((mcd_get_stats()->pipeline_touches > 0) != want_touches) {
            fprintf(stderr, "FAIL: %u pipeline touches, want %s\n", mcd_get_stats()->pipeline_touches,
                    want_touches ? "some" : "none");
            rc = 1;
        }
    }
    H->cmdlist_destroy(fx.dev, list);
    if (q) H->queue_destroy(fx.dev, q);
    if (counters) H->buffer_destroy(fx.dev, counters);
    close_fixture(&fx);
    int v = mcd_end();
    mcd_clear_violations();
    setenv("MTL_DEBUG_LAYER", "1", 1);
    if (rc || v) fprintf(stderr, "FAIL: the ICB pipeline workaround case (%d violations)\n", v);
    return rc || v;
}

/* ---- the checker's own test ---------------------------------------------------------------------- */

static int expect(const char *what, const char *needle)
{
    int n = mcd_violation_count();
    const char *last = mcd_last_violation();
    if (n != 1 || !strstr(last, needle)) {
        fprintf(stderr, "FAIL: planted %s: %d violations, last \"%s\", want one containing \"%s\"\n", what, n, last,
                needle);
        mcd_clear_violations();
        return 1;
    }
    fprintf(stderr, "caught planted %s: %s\n", what, last);
    mcd_clear_violations();
    return 0;
}

static int checker_test(void)
{
    mcd_os os = {.residency_sets = true,
                 .wait_timeout = true,
                 .math_mode = true,
                 .architecture = true,
                 .version = "Version 15.1 (Build 24B83)",
                 .major = 15};
    int rc = 0;
    setenv("MTL_DEBUG_LAYER", "1", 1); /* Metal's API validation, as CI's macOS job runs */
    mcd_begin(&os);
    mc__mtl_runtime_init();
    id pool = mc__mtl_pool_push();

    id opts = msg_init(msg_alloc(mc__mtl_cls.MTLCompileOptions));
    msg_setLanguageVersion_(opts, MC__MTL_DEFAULT_LANGUAGE);
    msg_release(opts);
    msg_release(opts);
    rc |= expect("double release", "double release");
    msg_setLanguageVersion_(opts, MC__MTL_DEFAULT_LANGUAGE);
    rc |= expect("message to a released object", "after it was released");

    opts = msg_init(msg_alloc(mc__mtl_cls.MTLCompileOptions));
    SEL bogus = sel_registerName("frobnicateWithGPU:");
    rc |= expect("selector without a type encoding", "has no Objective-C type encoding in metal_encodings.txt");
    MC__MTL_SEND(void, (id, SEL, id), opts, bogus, (id)0);
    rc |= expect("undocumented selector", "not in the documented selector list");
    MC__MTL_SEND(void, (id, SEL), opts, MC__SEL(setLanguageVersion_)); /* a colon, no argument */
    rc |= expect("wrong argument count", "sent with 0 arguments; the selector has 1 colons");
    MC__MTL_SEND(void, (id, SEL, uint64_t), opts, MC__SEL(setLanguageVersion_), (uint64_t)1);
    rc |= expect("wrong prototype", "documented void (id,SEL,MTLLanguageVersion)");
    ((void (*)(id, SEL, NSUInteger))mc__mtl_msgsend())(opts, MC__SEL(setLanguageVersion_), 1);
    rc |= expect("untyped send", "not sent through a typed wrapper");
    (void)msg_newCommandQueue(opts);
    rc |= expect("unrecognized selector", "does not implement it");
    {
        /* The consistent mistake the stringified prototype cannot see: the
         * same type name, another type (Apple's MTLMathMode is NSInteger). */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wshadow"
        typedef NSUInteger MTLMathMode;
#pragma GCC diagnostic pop
        MC__MTL_SEND(void, (id, SEL, MTLMathMode), opts, MC__SEL(setMathMode_), (MTLMathMode)0);
        rc |= expect("a parameter type that differs from Apple's under the same name", "Apple declares v@:q");
    }
    msg_setLanguageVersion_(opts, MC__MTL_LANGUAGE_VERSION(3, 9));
    rc |= expect("an MSL version the OS lacks", "does not exist on macOS 15");
    mc__mtl_release(opts);

    id dev = MTLCreateSystemDefaultDevice();
    id q = msg_newCommandQueue(dev);
    id desc = msg_init(msg_alloc(mc__mtl_cls.MTLCommandBufferDescriptor));
    id cb = msg_commandBufferWithDescriptor_(q, desc);
    id enc = msg_computeCommandEncoderWithDispatchType_(cb, MTLDispatchTypeSerial);
    (void)msg_blitCommandEncoder(cb);
    rc |= expect("second encoder", "while encoder");
    msg_commit(cb);
    rc |= expect("commit with an open encoder", "was not ended");
    msg_endEncoding(enc);
    msg_commit(cb);
    msg_commit(cb);
    rc |= expect("double commit", "committed twice");
    msg_endEncoding(enc);
    rc |= expect("encoding after endEncoding", "after endEncoding");

    /* an ICB executed without telling the encoder what its commands use */
    fixture fx;
    void *b, *hb, *list;
    uint32_t caps;
    tlist tl;
    memset(&tl, 0, sizeof tl);
    if (open_fixture(&fx) || H->buffer_create(fx.dev, 64, MC_STORAGE_SHARED, "b", &b, &hb) != MC_OK) return 1;
    l_count(&tl, fx.add_one, b, 0, false, 1);
    mc__list_desc ld = l_desc(&tl, "planted");
    if (H->cmdlist_create(fx.dev, &ld, &list, &caps) != MC_OK) return 1;
    id cb2 = msg_commandBufferWithDescriptor_(q, desc);
    id enc2 = msg_computeCommandEncoderWithDispatchType_(cb2, MTLDispatchTypeSerial);
    NSRange all = {0, 1};
    msg_executeCommandsInBuffer_withRange_(enc2, ((mc__mtl_list *)list)->icb, all);
    rc |= expect("ICB without useResources:count:usage:", "the encoder was not told of");
    MTLSize zero = {0, 0, 0};
    msg_setComputePipelineState_(enc2, ((mc__mtl_pipeline *)fx.add_one)->pso);
    msg_dispatchThreadgroups_threadsPerThreadgroup_(enc2, zero, zero);
    rc |= expect("a zero grid under API validation", "Metal's API validation aborts");
    id cmd = msg_indirectComputeCommandAtIndex_(((mc__mtl_list *)list)->icb, 0);
    msg_setThreadgroupMemoryLength_atIndex_(cmd, 16, 0);
    rc |= expect("threadgroup memory past the ICB's bind count", "maxKernelThreadgroupMemoryBindCount is 0");
    msg_setBarrier(cmd); /* command 0 is already encoded */
    rc |= expect("setBarrier after its dispatch", "after the dispatch it guards");
    msg_endEncoding(enc2);
    H->cmdlist_destroy(fx.dev, list);
    H->buffer_destroy(fx.dev, b);
    close_fixture(&fx);
    id leaked = msg_init(msg_alloc(mc__mtl_cls.MTLCompileOptions));
    (void)leaked;
    mc__mtl_release(desc);
    mc__mtl_release(q);
    mc__mtl_release(dev);
    mc__mtl_pool_pop(pool);
    msg_setLanguageVersion_(leaked, MC__MTL_DEFAULT_LANGUAGE); /* any message: Metal may autorelease inside it */
    rc |= expect("a message with no pool", "with no autorelease pool on this thread");
    (void)msg_stringWithUTF8String_(mc__mtl_cls.NSString, "no pool");
    if (mcd_violation_count() != 2 || !strstr(mcd_last_violation(), "no autorelease pool")) {
        fprintf(stderr, "FAIL: planted autorelease without a pool: %d violations, last \"%s\"\n", mcd_violation_count(),
                mcd_last_violation());
        rc = 1;
    } else {
        fprintf(stderr, "caught planted autorelease without a pool: %s\n", mcd_last_violation());
    }
    mcd_clear_violations();
    int v = mcd_end(); /* the options leaked above, and the string autoreleased with no pool */
    if (v != 2 || !strstr(mcd_last_violation(), "leak: MTLCompileOptions")) {
        fprintf(stderr, "FAIL: planted leak: %d violations, last \"%s\"\n", v, mcd_last_violation());
        rc = 1;
    } else {
        fprintf(stderr, "caught planted leak: %s\n", mcd_last_violation());
    }
    mcd_clear_violations();
    fprintf(stderr, rc ? "FAIL: the checker missed a planted fault\n" : "PASS: the checker catches planted faults\n");
    return rc;
}

int main(int argc, char **argv)
{
    if (!mcd_abi_supported()) {
        fprintf(stderr,
                "SKIPPED: the objc_msgSend double needs x86_64 Linux (System V argument passing); "
                "the Metal sources are still compile-checked on this machine\n");
        return MC_TEST_SKIP_CODE;
    }
    if (argc > 1 && !strcmp(argv[1], "--checker")) return checker_test();
    /* As CI's macOS job runs: Metal's API validation on (the double aborts
     * nothing, it reports what validation would reject). */
    setenv("MTL_DEBUG_LAYER", "1", 1);
    mcd_os macos15 = {.residency_sets = true,
                      .wait_timeout = true,
                      .math_mode = true,
                      .architecture = true,
                      .version = "Version 15.1 (Build 24B83)",
                      .major = 15};
    mcd_os macos14 = {.wait_timeout = true,
                      .architecture = true,
                      .version = "Version 14.6.1 (Build 23G93)",
                      .major = 14,
                      .gpu_family = 1009};
    mcd_os macos12 = {.wait_timeout = true, .version = "Version 12.7.6 (Build 21H1320)", .major = 12};
    mcd_os macos11 = {.second_gpu = true, .version = "Version 11.7.10 (Build 20G1427)", .major = 11};
    mcd_os hosted = {.residency_sets = true,
                     .wait_timeout = true,
                     .math_mode = true,
                     .architecture = true,
                     .version = "Version 15.1 (Build 24B83)",
                     .major = 15,
                     .paravirtual = true};
    int rc = scenario("as on macOS 15 (residency sets, mathMode, timed event waits, architecture)", &macos15);
    rc |= scenario("as on macOS 14 (architecture, threadgroup memory in ICBs, timed waits; an M3)", &macos14);
    rc |= scenario("as on macOS 12 (timed event waits; MSL 2.4 at most)", &macos12);
    rc |= scenario("as on macOS 11 (none of them; MSL 2.3 at most; a second GPU)", &macos11);
    rc |= scenario("as on a hosted runner's paravirtual GPU (no ICBs, no binary archives)", &hosted);
    rc |= icb_workaround(1008, false, true);
    rc |= icb_workaround(1008, true, false);
    rc |= icb_workaround(1009, false, false);
    fprintf(stderr, rc ? "FAIL metal_contract\n" : "PASS metal_contract\n");
    return rc;
}
