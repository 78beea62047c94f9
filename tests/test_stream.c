/* Streams: order under several producers, backpressure, close and cancel,
 * faults that lose nothing and duplicate nothing, argument checks. The
 * items are blocks of an FIR filter (examples/kernels/fir.metal) followed by a
 * gain pass, through one fixture (fx); what the front end defines (order,
 * backpressure, close, cancel, the retry bound) runs one test body on both
 * back ends: the local stream and the isolated one (test names
 * stream_isolated_*), whose device side is a worker process. */
#include "mc_test.h"

#include <pthread.h>
#include <stdatomic.h>
#include <time.h>

#define BLOCK 1024u
#define NTAPS 32u
#define GAIN 0.5f
#define TOL 1e-4

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* ---- the FIR fixture ------------------------------------------------------ */

typedef enum bad_binding {
    BIND_GOOD = 0,
    BIND_NO_PASSES,
    BIND_OUTPUT_PAST_END,
    BIND_EMPTY_BYTES,
    BIND_TOO_MANY_THREADS,
    BIND_SETUP_FAILS,
    BIND_ONLY_ONCE /* setup fails on every device after the first */
} bad_binding;

typedef struct fir_fixture {
    float taps[NTAPS];
    uint32_t n, ntaps;
    float g;
    bad_binding bad;
    _Atomic int setups, teardowns;
} fir_fixture;

typedef struct fir_made {
    mc_pipeline *fir, *gain;
    mc_buffer *taps;
} fir_made;

static void fir_fixture_init(fir_fixture *f)
{
    memset(f, 0, sizeof *f);
    f->n = BLOCK;
    f->ntaps = NTAPS;
    f->g = GAIN;
    /* a short low-pass: a triangle, normalised */
    float sum = 0;
    for (uint32_t k = 0; k < NTAPS; k++) sum += f->taps[k] = (float)(k < NTAPS / 2 ? k + 1 : NTAPS - k);
    for (uint32_t k = 0; k < NTAPS; k++) f->taps[k] /= sum;
}

static mc_status fir_setup(void *user, mc_device *dev, mc_stream_binding *b)
{
    fir_fixture *f = user;
    int calls = atomic_fetch_add(&f->setups, 1);
    if (f->bad == BIND_SETUP_FAILS) return MC_ERR_NOT_FOUND;
    if (f->bad == BIND_ONLY_ONCE && calls > 0) return MC_ERR_COMPILE;
    fir_made *m = calloc(1, sizeof *m);
    if (!m) return MC_ERR_NO_MEMORY;
    char path[4096];
    mc_device_info info;
    mc_device_get_info(dev, &info);
    snprintf(path, sizeof path, "%s/examples/kernels/fir.metal", MC_SOURCE_DIR);
    mc_library *lib = NULL;
    char *log = NULL;
    mc_status s = mc_library_create_from_file(dev, path, MC_LANG_UNSET, NULL, &lib, &log);
    if (s != MC_OK) fprintf(stderr, "cannot build %s: %s\n%s\n", path, mc_last_error(), log ? log : "");
    mc_free(log);
    mc_pipeline_desc pd = MC_PIPELINE_DESC_INIT;
    pd.library = lib;
    pd.function = "fir";
    if (s == MC_OK) s = mc_pipeline_create(dev, &pd, &m->fir);
    pd.function = "gain";
    if (s == MC_OK) s = mc_pipeline_create(dev, &pd, &m->gain);
    mc_library_release(lib);
    mc_buffer_desc bd = {sizeof f->taps, MC_STORAGE_PRIVATE, "taps", f->taps}; /* read by every thread */
    if (s == MC_OK) s = mc_buffer_create(dev, &bd, &m->taps);
    if (s != MC_OK) {
        mc_pipeline_release(m->fir);
        mc_pipeline_release(m->gain);
        mc_buffer_release(m->taps);
        free(m);
        return s;
    }
    b->user_data = m;
    mc_stream_pass *p = &b->passes[0];
    p->label = "fir";
    p->pipeline = m->fir;
    p->threadgroups = (mc_size3){f->n / 64, 1, 1};
    p->threads_per_threadgroup = (mc_size3){64, 1, 1};
    p->args[0].kind = MC_STREAM_ARG_OUTPUT;
    p->args[1].kind = MC_STREAM_ARG_INPUT;
    p->args[2].kind = MC_STREAM_ARG_BUFFER;
    p->args[2].buffer = m->taps;
    p->args[3].kind = MC_STREAM_ARG_BYTES;
    p->args[3].bytes = &f->n;
    p->args[3].len = 4;
    p->args[4].kind = MC_STREAM_ARG_BYTES;
    p->args[4].bytes = &f->ntaps;
    p->args[4].len = 4;
    p->threadgroup_memory[0] = (64 + NTAPS - 1) * sizeof(float);
    p = &b->passes[1];
    p->label = "gain";
    p->pipeline = m->gain;
    p->threadgroups = (mc_size3){f->n / 64, 1, 1};
    p->threads_per_threadgroup = (mc_size3){64, 1, 1};
    p->args[0].kind = MC_STREAM_ARG_OUTPUT;
    p->args[1].kind = MC_STREAM_ARG_BYTES;
    p->args[1].bytes = &f->g;
    p->args[1].len = 4;
    p->args[2].kind = MC_STREAM_ARG_BYTES;
    p->args[2].bytes = &f->n;
    p->args[2].len = 4;
    b->pass_count = 2;
    switch (f->bad) {
    case BIND_NO_PASSES: b->pass_count = 0; break;
    case BIND_OUTPUT_PAST_END: b->passes[1].args[0].offset = f->n * 4; break;
    case BIND_EMPTY_BYTES: b->passes[0].args[3].len = 0; break;
    case BIND_TOO_MANY_THREADS: b->passes[0].threads_per_threadgroup = (mc_size3){4096, 1, 1}; break;
    default: break;
    }
    return MC_OK;
}

static void fir_teardown(void *user, mc_stream_binding *b)
{
    fir_fixture *f = user;
    fir_made *m = b->user_data;
    atomic_fetch_add(&f->teardowns, 1);
    if (!m) return;
    mc_pipeline_release(m->fir);
    mc_pipeline_release(m->gain);
    mc_buffer_release(m->taps);
    free(m);
}

static size_t item_size(void)
{
    return (BLOCK + NTAPS - 1) * sizeof(float);
}

/* A continuous signal: NTAPS - 1 zeros, then blocks * BLOCK samples. Block b
 * (its history included) starts at sig + b * BLOCK. */
static float *make_signal(uint32_t blocks)
{
    size_t len = (size_t)blocks * BLOCK + NTAPS - 1;
    float *sig = calloc(len, sizeof *sig);
    uint32_t x = 12345u;
    for (size_t i = NTAPS - 1; sig && i < len; i++) {
        x = x * 1664525u + 1013904223u;
        sig[i] = (float)(x >> 8) / (float)(1u << 24) * 2.0f - 1.0f;
    }
    return sig;
}

static void reference(const fir_fixture *f, const float *in, float *out)
{
    for (uint32_t i = 0; i < BLOCK; i++) {
        const float *x = in + i + NTAPS - 1;
        float acc = 0;
        for (uint32_t k = 0; k < NTAPS; k++) acc += f->taps[k] * x[-(int32_t)k];
        out[i] = acc * f->g;
    }
}

/* Returns the first index where out and the reference of block b differ, or -1. */
static long check_block(const fir_fixture *f, const float *sig, uint32_t b, const float *out)
{
    float want[BLOCK];
    reference(f, sig + (size_t)b * BLOCK, want);
    for (uint32_t i = 0; i < BLOCK; i++) {
        double d = (double)out[i] - (double)want[i];
        if (d > TOL || d < -TOL) return (long)i;
    }
    return -1;
}

/* ---- what a consumer saw ---------------------------------------------------- */

typedef struct seen {
    pthread_mutex_t lock;
    uint32_t cap, count;
    uint64_t *seq, *tag;
    mc_status *status;
    uint32_t *attempts;
    float *outs;          /* cap blocks, indexed by the block in the tag's low bits */
    uint8_t *times;       /* deliveries per block */
    int sleep_ms;         /* slow consumer */
    uint64_t blocked_seq; /* callback for this item waits for release */
    _Atomic int release;
} seen;

static void seen_init(seen *s, uint32_t cap)
{
    memset(s, 0, sizeof *s);
    pthread_mutex_init(&s->lock, NULL);
    s->cap = cap;
    s->seq = calloc(cap, sizeof *s->seq);
    s->tag = calloc(cap, sizeof *s->tag);
    s->status = calloc(cap, sizeof *s->status);
    s->attempts = calloc(cap, sizeof *s->attempts);
    s->outs = calloc((size_t)cap * BLOCK, sizeof(float));
    s->times = calloc(cap, 1);
}

static void seen_free(seen *s)
{
    free(s->seq);
    free(s->tag);
    free(s->status);
    free(s->attempts);
    free(s->outs);
    free(s->times);
    pthread_mutex_destroy(&s->lock);
}

static uint32_t block_of(uint64_t tag)
{
    return (uint32_t)(tag & 0xffffffffu);
}

static void record(seen *s, const mc_stream_result *r)
{
    pthread_mutex_lock(&s->lock);
    uint32_t i = s->count++;
    if (i < s->cap) {
        s->seq[i] = r->sequence;
        s->tag[i] = r->tag;
        s->status[i] = r->status;
        s->attempts[i] = r->attempts;
    }
    uint32_t b = block_of(r->tag);
    if (b < s->cap) {
        s->times[b]++;
        if (r->status == MC_OK && r->output && r->output_size == BLOCK * sizeof(float))
            memcpy(s->outs + (size_t)b * BLOCK, r->output, r->output_size);
    }
    pthread_mutex_unlock(&s->lock);
}

static void on_result(void *user, const mc_stream_result *r)
{
    seen *s = user;
    record(s, r);
    if (s->blocked_seq && r->sequence == s->blocked_seq)
        while (!atomic_load(&s->release)) sleep_ms(1);
    if (s->sleep_ms) sleep_ms(s->sleep_ms);
}

/* Fills and submits block b. */
static mc_status put_block(mc_stream *st, const float *sig, uint32_t b, uint64_t tag, uint64_t timeout_ns)
{
    mc_stream_slot sl;
    mc_status s = mc_stream_acquire(st, timeout_ns, &sl);
    if (s != MC_OK) return s;
    if (sl.size != item_size()) return MC_ERR_INTERNAL;
    memcpy(sl.input, sig + (size_t)b * BLOCK, item_size());
    return mc_stream_submit(st, sl.index, tag);
}

/* ---- order under several producers ---------------------------------------- */

typedef struct producer {
    mc_stream *st;
    const float *sig;
    uint32_t id, first, count;
    mc_status result;
} producer;

static void *produce(void *arg)
{
    producer *p = arg;
    p->result = MC_OK;
    for (uint32_t k = 0; k < p->count && p->result == MC_OK; k++) {
        uint32_t b = p->first + k;
        p->result = put_block(p->st, p->sig, b, ((uint64_t)p->id << 32) | b, MC_WAIT_FOREVER);
    }
    return NULL;
}

/* Every block delivered once, OK, right; sequence numbers 1..n in order;
 * each producer's blocks in the order it submitted them. */
static int check_seen(const fir_fixture *f, const float *sig, seen *s, uint32_t n)
{
    CHECK_EQ(s->count, n);
    uint32_t last_block[16];
    for (int i = 0; i < 16; i++) last_block[i] = UINT32_MAX;
    for (uint32_t i = 0; i < n; i++) {
        CHECK_EQ(s->seq[i], i + 1);
        CHECK_STATUS(s->status[i], MC_OK);
        uint32_t id = (uint32_t)(s->tag[i] >> 32), b = block_of(s->tag[i]);
        CHECK_LT(id, 16);
        if (last_block[id] != UINT32_MAX) CHECK_GT(b, last_block[id]);
        last_block[id] = b;
    }
    for (uint32_t b = 0; b < n; b++) {
        CHECK_EQ(s->times[b], 1);
        long bad = check_block(f, sig, b, s->outs + (size_t)b * BLOCK);
        if (bad >= 0) MC__FAILED("block %u differs from the reference at sample %ld", b, bad);
    }
    return 0;
}

/* Runs producers threads, each putting each blocks of sig (producer i the
 * blocks from i * each), and waits for them. */
static int produce_all(mc_stream *st, const float *sig, uint32_t producers, uint32_t each)
{
    producer p[8];
    pthread_t t[8];
    CHECK_LE(producers, 8);
    for (uint32_t i = 0; i < producers; i++) {
        p[i] = (producer){st, sig, i, i * each, each, MC_OK};
        CHECK_EQ(pthread_create(&t[i], NULL, produce, &p[i]), 0);
    }
    for (uint32_t i = 0; i < producers; i++) pthread_join(t[i], NULL);
    for (uint32_t i = 0; i < producers; i++) CHECK_OK(p[i].result);
    return 0;
}

/* ---- the fixture: one stream of FIR blocks on either back end -------------- */

/* Where the stream's device side runs: here, or in a worker process
 * (mc/mc_isolate.h). Tests of behaviour the front end defines (order,
 * backpressure, close and cancel) run one body on both. */
typedef enum backend { LOCAL = 0, ISOLATED = 1 } backend;

typedef struct fx {
    backend be;
    mc_device *dev;      /* LOCAL: the stream's device; ISOLATED: NULL (it is in the worker) */
    mc_isolate_desc iso; /* ISOLATED */
    fir_fixture fir;
    float *sig; /* blocks of signal */
    uint32_t blocks;
    seen seen;         /* what the consumer saw */
    mc_stream_desc sd; /* the test may change it before fx_create */
    mc_stream *st;
} fx;

/* The device or the worker's, the FIR fixture, a signal of blocks and a
 * descriptor with slots; callback: results go to on_result into f->seen,
 * else they are pulled. */
static int fx_init(fx *f, backend be, uint32_t blocks, uint32_t slots, bool callback)
{
    memset(f, 0, sizeof *f);
    f->be = be;
    if (be == LOCAL) {
        f->dev = mct_open_device(0);
        CHECK(f->dev);
    } else {
        mc_isolate_desc iso = MC_ISOLATE_DESC_INIT;
        const char *env = getenv("MC_DEVICE");
        iso.device = env && *env ? env : "cpu";
        iso.deadline_ms = 1000;
        f->iso = iso;
    }
    fir_fixture_init(&f->fir);
    f->blocks = blocks;
    f->sig = make_signal(blocks);
    seen_init(&f->seen, blocks);
    CHECK(f->sig && f->seen.outs);
    mc_stream_desc sd = MC_STREAM_DESC_INIT;
    sd.device = f->dev;
    sd.isolate = be == ISOLATED ? &f->iso : NULL;
    sd.setup = fir_setup;
    sd.teardown = fir_teardown;
    sd.user = &f->fir;
    sd.item_size = item_size();
    sd.result_size = BLOCK * sizeof(float);
    sd.slots = slots;
    sd.on_result = callback ? on_result : NULL;
    sd.result_user = callback ? &f->seen : NULL;
    sd.label = "test";
    f->sd = sd;
    return 0;
}

/* Creates the stream, with faults (NULL: none) counted from its first
 * command buffer: injected into the device right after create, or into
 * every worker of the isolated stream's run. */
static int fx_create(fx *f, const char *faults)
{
    f->iso.inject_faults = faults;
    CHECK_OK(mc_stream_create(&f->sd, &f->st));
    if (f->be == LOCAL && faults) CHECK_OK(mc_device_inject_faults(f->dev, faults));
    return 0;
}

/* Releases the stream (if any) and everything fx_init made. */
static void fx_free(fx *f)
{
    mc_stream_release(f->st);
    f->st = NULL;
    seen_free(&f->seen);
    free(f->sig);
    mc_device_release(f->dev);
}

static uint32_t seen_count(seen *s)
{
    pthread_mutex_lock(&s->lock);
    uint32_t c = s->count;
    pthread_mutex_unlock(&s->lock);
    return c;
}

/* Waits (up to 20 s) until the consumer has seen n results. */
static int wait_seen(seen *s, uint32_t n)
{
    for (int i = 0; i < 20000 && seen_count(s) < n; i++) sleep_ms(1);
    CHECK_GE(seen_count(s), n);
    return 0;
}

/* ---- order, on both back ends ------------------------------------------------ */

static int in_order_from_several_producers(backend be)
{
    enum { PRODUCERS = 4, EACH = 50, N = PRODUCERS * EACH };
    fx f;
    if (fx_init(&f, be, N, 0, true) || fx_create(&f, NULL)) return 1;
    mc_stream_stats stats;
    CHECK_OK(mc_stream_get_stats(f.st, &stats));
    CHECK_EQ(stats.slots, 3); /* the default: triple buffering */
    if (produce_all(f.st, f.sig, PRODUCERS, EACH)) return 1;
    CHECK_OK(mc_stream_close(f.st, true));
    if (check_seen(&f.fir, f.sig, &f.seen, N)) return 1;
    CHECK_OK(mc_stream_get_stats(f.st, &stats));
    CHECK_EQ(stats.submitted, N);
    CHECK_EQ(stats.delivered, N);
    CHECK_EQ(stats.commits, N);
    CHECK_EQ(stats.failed + stats.cancelled + stats.replays + stats.recoveries, 0);
    CHECK_LE(stats.max_in_flight, 3);
    CHECK_EQ(stats.slots_in_use, 0);
    mc_stream_release(f.st);
    f.st = NULL;
    if (be == LOCAL) { /* an isolated stream's setup runs in its worker */
        CHECK_EQ(atomic_load(&f.fir.setups), 1);
        CHECK_EQ(atomic_load(&f.fir.teardowns), 1);
    }
    fx_free(&f);
    return 0;
}

MC_TEST(stream_delivers_in_order_from_several_producers)
{
    return in_order_from_several_producers(LOCAL);
}

MC_TEST(stream_isolated_delivers_in_order_from_several_producers)
{
    return in_order_from_several_producers(ISOLATED);
}

typedef struct closer {
    mc_stream *st;
    const float *sig;
    uint32_t producers, each;
    int failed;
    mc_status result;
} closer;

static void *produce_then_close(void *arg)
{
    closer *c = arg;
    c->failed = produce_all(c->st, c->sig, c->producers, c->each);
    c->result = mc_stream_close(c->st, true);
    return NULL;
}

static int pull_in_order_until_the_end(backend be)
{
    enum { PRODUCERS = 3, EACH = 40, N = PRODUCERS * EACH };
    fx f;
    if (fx_init(&f, be, N, 4, false) || fx_create(&f, NULL)) return 1;
    closer c = {f.st, f.sig, PRODUCERS, EACH, 0, MC_ERR_INTERNAL};
    pthread_t ct;
    CHECK_EQ(pthread_create(&ct, NULL, produce_then_close, &c), 0);
    mc_stream_result r;
    mc_status ps;
    uint32_t held_max = 0;
    while ((ps = mc_stream_pull(f.st, 20ull * 1000000000ull, &r)) == MC_OK) {
        CHECK(r.output && r.input);
        CHECK_EQ(r.output_size, BLOCK * sizeof(float));
        CHECK_EQ(r.attempts, 1);
        record(&f.seen, &r);
        mc_stream_stats stats;
        CHECK_OK(mc_stream_get_stats(f.st, &stats));
        if (stats.slots_in_use > held_max) held_max = stats.slots_in_use;
        CHECK_OK(mc_stream_release_result(f.st, &r));
        CHECK_STATUS(mc_stream_release_result(f.st, &r), MC_ERR_INVALID_ARGUMENT); /* once */
    }
    CHECK_STATUS(ps, MC_ERR_INVALID_STATE); /* closed, every result pulled: the end */
    pthread_join(ct, NULL);
    CHECK_EQ(c.failed, 0);
    CHECK_OK(c.result);
    if (check_seen(&f.fir, f.sig, &f.seen, N)) return 1;
    CHECK_LE(held_max, 4);
    CHECK_STATUS(mc_stream_pull(f.st, 0, &r), MC_ERR_INVALID_STATE);
    fx_free(&f);
    return 0;
}

MC_TEST(stream_pull_mode_delivers_in_order_until_the_end)
{
    return pull_in_order_until_the_end(LOCAL);
}

MC_TEST(stream_isolated_pull_mode_delivers_in_order_until_the_end)
{
    return pull_in_order_until_the_end(ISOLATED);
}

/* ---- backpressure, on both back ends ------------------------------------------ */

static int backpressure_with_a_slow_consumer(backend be)
{
    enum { N = 16, SLOW_MS = 25 };
    fx f;
    if (fx_init(&f, be, N, 3, true)) return 1;
    f.seen.sleep_ms = SLOW_MS;
    f.seen.blocked_seq = 1; /* the first callback holds its slot until release */
    if (fx_create(&f, NULL)) return 1;
    mc_stream *st = f.st;

    /* Three items take the three slots. */
    for (uint32_t b = 0; b < 3; b++) CHECK_OK(put_block(st, f.sig, b, b, 0));
    mc_stream_slot sl;
    /* Non-blocking: no slot can free until the release below, so a call
     * that waited would never return (the test's timeout fails it);
     * asserted by what it does, not by a clock on a loaded machine. */
    for (int i = 0; i < 100; i++) CHECK_STATUS(mc_stream_acquire(st, 0, &sl), MC_ERR_WAIT_TIMEOUT);
    CHECK_STR_CONTAINS(mc_last_error(), "busy");
    uint64_t t0 = mc__test_now_ns();
    CHECK_STATUS(mc_stream_acquire(st, 30000000ull, &sl), MC_ERR_WAIT_TIMEOUT); /* waits its timeout */
    CHECK_GE(mc__test_now_ns() - t0, 29000000ull);
    mc_stream_stats stats;
    CHECK_OK(mc_stream_get_stats(st, &stats));
    CHECK_EQ(stats.slots_in_use, 3);
    atomic_store(&f.seen.release, 1);

    /* The producer runs at the consumer's pace; memory stays at 3 slots. */
    t0 = mc__test_now_ns();
    uint32_t max_in_use = 0;
    for (uint32_t b = 3; b < N; b++) {
        CHECK_OK(put_block(st, f.sig, b, b, MC_WAIT_FOREVER));
        CHECK_OK(mc_stream_get_stats(st, &stats));
        if (stats.slots_in_use > max_in_use) max_in_use = stats.slots_in_use;
    }
    uint64_t took = mc__test_now_ns() - t0;
    CHECK_OK(mc_stream_close(st, true));
    CHECK_LE(max_in_use, 3);
    /* 13 more items need 10 more slots freed, each after a slow callback */
    CHECK_GE(took, (uint64_t)(N - 3 - 3) * SLOW_MS * 1000000ull);
    CHECK_OK(mc_stream_get_stats(st, &stats));
    CHECK_LE(stats.max_in_flight, 3);
    CHECK_EQ(stats.delivered, N);
    for (uint32_t b = 0; b < N; b++) {
        CHECK_EQ(f.seen.times[b], 1);
        CHECK_EQ(check_block(&f.fir, f.sig, b, f.seen.outs + (size_t)b * BLOCK), -1);
    }
    fx_free(&f);
    return 0;
}

MC_TEST(stream_backpressure_when_the_consumer_is_slow)
{
    return backpressure_with_a_slow_consumer(LOCAL);
}

MC_TEST(stream_isolated_backpressure_when_the_consumer_is_slow)
{
    return backpressure_with_a_slow_consumer(ISOLATED);
}

static int pull_backpressure_until_released(backend be)
{
    fx f;
    if (fx_init(&f, be, 4, 2, false) || fx_create(&f, NULL)) return 1;
    mc_stream *st = f.st;
    CHECK_OK(put_block(st, f.sig, 0, 0, 0));
    CHECK_OK(put_block(st, f.sig, 1, 1, 0));
    mc_stream_slot sl;
    CHECK_STATUS(mc_stream_acquire(st, 20000000ull, &sl), MC_ERR_WAIT_TIMEOUT); /* unpulled results hold both */
    mc_stream_result r;
    CHECK_OK(mc_stream_pull(st, MC_WAIT_FOREVER, &r));
    CHECK_EQ(r.sequence, 1);
    CHECK_STATUS(mc_stream_acquire(st, 20000000ull, &sl), MC_ERR_WAIT_TIMEOUT); /* pulled, not released */
    CHECK_EQ(check_block(&f.fir, f.sig, 0, r.output), -1);
    CHECK_OK(mc_stream_release_result(st, &r));
    CHECK_OK(mc_stream_acquire(st, MC_WAIT_FOREVER, &sl));
    CHECK_OK(mc_stream_discard(st, sl.index));
    CHECK_STATUS(mc_stream_discard(st, sl.index), MC_ERR_INVALID_ARGUMENT);
    CHECK_OK(mc_stream_pull(st, MC_WAIT_FOREVER, &r));
    CHECK_EQ(r.sequence, 2);
    CHECK_EQ(r.tag, 1);
    CHECK_OK(mc_stream_release_result(st, &r));
    CHECK_STATUS(mc_stream_pull(st, 1000000ull, &r), MC_ERR_WAIT_TIMEOUT);
    fx_free(&f);
    return 0;
}

MC_TEST(stream_pull_mode_backpressure_until_results_are_released)
{
    return pull_backpressure_until_released(LOCAL);
}

MC_TEST(stream_isolated_pull_mode_backpressure_until_results_are_released)
{
    return pull_backpressure_until_released(ISOLATED);
}

/* ---- close and cancel, on both back ends --------------------------------------- */

static int close_drains_everything(backend be)
{
    enum { N = 12 };
    fx f;
    if (fx_init(&f, be, N, 4, true) || fx_create(&f, NULL)) return 1;
    mc_stream *st = f.st;
    for (uint32_t b = 0; b < N; b++) CHECK_OK(put_block(st, f.sig, b, b, MC_WAIT_FOREVER));
    mc_stream_slot held;
    CHECK_OK(mc_stream_acquire(st, MC_WAIT_FOREVER, &held)); /* acquired, not submitted */
    CHECK_OK(mc_stream_close(st, true));
    /* everything submitted was delivered by the time close returned */
    CHECK_EQ(seen_count(&f.seen), N);
    for (uint32_t b = 0; b < N; b++) {
        CHECK_EQ(f.seen.times[b], 1);
        CHECK_STATUS(f.seen.status[b], MC_OK);
        CHECK_EQ(check_block(&f.fir, f.sig, b, f.seen.outs + (size_t)b * BLOCK), -1);
    }
    /* no more items */
    CHECK_STATUS(mc_stream_submit(st, held.index, N), MC_ERR_INVALID_STATE);
    CHECK_STR_CONTAINS(mc_last_error(), "closed");
    mc_stream_slot sl;
    CHECK_STATUS(mc_stream_acquire(st, MC_WAIT_FOREVER, &sl), MC_ERR_INVALID_STATE);
    CHECK_OK(mc_stream_close(st, true)); /* again: nothing to wait for */
    mc_stream_stats stats;
    CHECK_OK(mc_stream_get_stats(st, &stats));
    CHECK_EQ(stats.submitted, N);
    CHECK_EQ(stats.delivered, N);
    CHECK_EQ(stats.cancelled, 0);
    CHECK_EQ(stats.slots_in_use, 0); /* the refused slot went back */
    fx_free(&f);
    return 0;
}

MC_TEST(stream_close_drains_everything_in_flight)
{
    return close_drains_everything(LOCAL);
}

MC_TEST(stream_isolated_close_drains_everything_in_flight)
{
    return close_drains_everything(ISOLATED);
}

typedef struct acquirer {
    mc_stream *st;
    seen *seen;
    mc_status result;
} acquirer;

/* Waits for a slot (there is none) until close wakes it; by then the
 * stream is cancelled, and the held callback may return. */
static void *acquire_then_release(void *arg)
{
    acquirer *a = arg;
    mc_stream_slot sl;
    a->result = mc_stream_acquire(a->st, MC_WAIT_FOREVER, &sl);
    atomic_store(&a->seen->release, 1);
    return NULL;
}

/* The cancel rule (mc/mc_stream.h, docs/STREAMS.md): the item whose
 * callback runs when close cancels keeps its result; every item handed over
 * after the cancel, run or not, is MC_ERR_CANCELLED; each exactly once, in
 * order. */
static int cancel_after_a_held_callback(backend be)
{
    enum { N = 8 };
    fx f;
    if (fx_init(&f, be, N, N, true)) return 1;
    f.seen.blocked_seq = 1; /* the first callback holds up delivery; the rest wait behind it */
    if (fx_create(&f, NULL)) return 1;
    for (uint32_t b = 0; b < N; b++) CHECK_OK(put_block(f.st, f.sig, b, b, 0));
    if (wait_seen(&f.seen, 1)) return 1;
    /* A producer waiting for a slot is woken by close. */
    acquirer a = {f.st, &f.seen, MC_OK};
    pthread_t at;
    CHECK_EQ(pthread_create(&at, NULL, acquire_then_release, &a), 0);
    CHECK_OK(mc_stream_close(f.st, false)); /* waits for the held callback */
    pthread_join(at, NULL);
    CHECK_STATUS(a.result, MC_ERR_INVALID_STATE);
    CHECK_EQ(f.seen.count, N);
    for (uint32_t i = 0; i < N; i++) {
        CHECK_EQ(f.seen.seq[i], i + 1);
        CHECK_EQ(f.seen.times[i], 1);
        CHECK_STATUS(f.seen.status[i], i == 0 ? MC_OK : MC_ERR_CANCELLED);
    }
    CHECK_EQ(check_block(&f.fir, f.sig, 0, f.seen.outs), -1);
    mc_stream_stats stats;
    CHECK_OK(mc_stream_get_stats(f.st, &stats));
    CHECK_EQ(stats.cancelled, N - 1);
    CHECK_EQ(stats.failed, 0);
    CHECK_EQ(stats.delivered, N);
    CHECK_EQ(stats.slots_in_use, 0);
    mc_stream_slot sl;
    CHECK_STATUS(mc_stream_acquire(f.st, 0, &sl), MC_ERR_INVALID_STATE);
    CHECK_OK(mc_stream_close(f.st, false)); /* again: nothing to wait for */
    fx_free(&f);
    return 0;
}

MC_TEST(stream_close_cancels_what_is_in_flight_exactly_once)
{
    return cancel_after_a_held_callback(LOCAL);
}

MC_TEST(stream_isolated_close_cancels_what_is_in_flight_exactly_once)
{
    return cancel_after_a_held_callback(ISOLATED);
}

/* Pull mode: results ready to pull before the cancel keep MC_OK; one pulled
 * and held stays valid until released; then the stream ends. */
static int cancel_keeps_what_was_handed_over(backend be)
{
    fx f;
    if (fx_init(&f, be, 4, 4, false) || fx_create(&f, NULL)) return 1;
    mc_stream *st = f.st;
    for (uint32_t b = 0; b < 3; b++) CHECK_OK(put_block(st, f.sig, b, b, 0));
    mc_stream_result held, r;
    CHECK_OK(mc_stream_pull(st, MC_WAIT_FOREVER, &held));
    mc_stream_stats stats;
    for (int i = 0; i < 20000; i++) {
        CHECK_OK(mc_stream_get_stats(st, &stats));
        if (stats.delivered == 3) break;
        sleep_ms(1);
    }
    CHECK_EQ(stats.delivered, 3);            /* items 2 and 3 wait to be pulled */
    CHECK_OK(put_block(st, f.sig, 3, 3, 0)); /* handed over before the cancel, or cancelled */
    CHECK_OK(mc_stream_close(st, false));
    for (uint64_t seq = 2; seq <= 4; seq++) {
        CHECK_OK(mc_stream_pull(st, 0, &r));
        CHECK_EQ(r.sequence, seq);
        if (seq < 4 || r.status == MC_OK) {
            CHECK_OK(r.status);
            CHECK_EQ(check_block(&f.fir, f.sig, (uint32_t)r.tag, r.output), -1);
        } else {
            CHECK_STATUS(r.status, MC_ERR_CANCELLED);
        }
        CHECK_OK(mc_stream_release_result(st, &r));
    }
    CHECK_STATUS(mc_stream_pull(st, 0, &r), MC_ERR_INVALID_STATE); /* the end */
    CHECK_OK(held.status);
    CHECK_EQ(held.sequence, 1);
    CHECK_EQ(check_block(&f.fir, f.sig, 0, held.output), -1);
    CHECK_OK(mc_stream_release_result(st, &held));
    CHECK_OK(mc_stream_get_stats(st, &stats));
    CHECK_EQ(stats.delivered, 4);
    CHECK_LE(stats.cancelled, 1);
    CHECK_EQ(stats.slots_in_use, 0);
    fx_free(&f);
    return 0;
}

MC_TEST(stream_cancel_keeps_results_handed_over_before_it)
{
    return cancel_keeps_what_was_handed_over(LOCAL);
}

MC_TEST(stream_isolated_cancel_keeps_results_handed_over_before_it)
{
    return cancel_keeps_what_was_handed_over(ISOLATED);
}

/* Cancel while the device side is being rebuilt: the local stream backs
 * off after access was revoked (F146); the isolated one waits for its
 * hung worker's deadline. Nothing more is committed. */
static int cancel_during_recovery(backend be, const char *faults, mc_status want_failure)
{
    fx f;
    if (fx_init(&f, be, 3, 3, false) || fx_create(&f, faults)) return 1;
    for (uint32_t b = 0; b < 3; b++) CHECK_OK(put_block(f.st, f.sig, b, b, 0));
    sleep_ms(30);
    uint64_t t0 = mc__test_now_ns();
    CHECK_OK(mc_stream_close(f.st, false));
    CHECK_LT(mc__test_now_ns() - t0, 2000000000ull); /* the wait was cut short */
    mc_stream_result r;
    uint32_t attempts = 0;
    for (uint64_t i = 1; i <= 3; i++) {
        CHECK_OK(mc_stream_pull(f.st, 0, &r));
        CHECK_EQ(r.sequence, i);
        CHECK_STATUS(r.status, MC_ERR_CANCELLED);
        CHECK_LE(r.attempts, 1); /* committed once, or never: not again */
        attempts += r.attempts;
        CHECK_OK(mc_stream_release_result(f.st, &r));
    }
    CHECK_STATUS(mc_stream_pull(f.st, 0, &r), MC_ERR_INVALID_STATE);
    mc_stream_stats stats;
    CHECK_OK(mc_stream_get_stats(f.st, &stats));
    CHECK_EQ(stats.commits, attempts);
    CHECK_EQ(stats.replays, 0);
    CHECK_EQ(stats.cancelled, 3);
    CHECK_STATUS(stats.last_failure, want_failure);
    fx_free(&f);
    return 0;
}

MC_TEST(stream_cancel_during_recovery_commits_nothing_more)
{
    return cancel_during_recovery(LOCAL, "access-revoked@1", MC_ERR_ACCESS_REVOKED);
}

MC_TEST(stream_isolated_cancel_with_a_hung_worker_commits_nothing_more)
{
    /* cancelled before the hang is noticed: no failure counted */
    return cancel_during_recovery(ISOLATED, "hang@1", MC_OK);
}

/* ---- faults ------------------------------------------------------------------ */

/* Streams n blocks from two producers through a fresh stream, with faults
 * (NULL: none). outs receives every block's output; *setups and
 * *teardowns are increased by the fixture's calls. */
static int run_faulted(backend be, uint32_t n, const char *faults, uint32_t flags, uint32_t lanes, float *outs,
                       mc_stream_stats *stats, int *setups, int *teardowns)
{
    fx f;
    if (fx_init(&f, be, n, 3, true)) return 1;
    f.sd.flags = flags;
    f.sd.lanes = lanes;
    if (fx_create(&f, faults) || produce_all(f.st, f.sig, 2, n / 2)) return 1;
    CHECK_OK(mc_stream_close(f.st, true));
    if (check_seen(&f.fir, f.sig, &f.seen, n)) return 1; /* exactly once, in order, right */
    memcpy(outs, f.seen.outs, (size_t)n * BLOCK * sizeof(float));
    CHECK_OK(mc_stream_get_stats(f.st, stats));
    mc_stream_release(f.st);
    f.st = NULL;
    *setups += atomic_load(&f.fir.setups);
    *teardowns += atomic_load(&f.fir.teardowns);
    fx_free(&f);
    return 0;
}

/* n blocks through a fresh stream twice: undisturbed (flags 0, one lane,
 * *clean), then with faults and flags (*other). The outputs must match bit
 * for bit: replays give the same bits, and so does recording each item.
 * *setups and *teardowns count the fixture's calls over both. */
static int two_runs(backend be, uint32_t n, const char *faults, uint32_t flags, uint32_t lanes, mc_stream_stats *clean,
                    mc_stream_stats *other, int *setups, int *teardowns)
{
    float *a = calloc((size_t)n * BLOCK, sizeof(float)), *b = calloc((size_t)n * BLOCK, sizeof(float));
    CHECK(a && b);
    *setups = *teardowns = 0;
    if (run_faulted(be, n, NULL, 0, 1, a, clean, setups, teardowns)) return 1;
    if (run_faulted(be, n, faults, flags, lanes, b, other, setups, teardowns)) return 1;
    CHECK(memcmp(a, b, (size_t)n * BLOCK * sizeof(float)) == 0);
    free(a);
    free(b);
    return 0;
}

static int fault_test(const char *faults, uint32_t want_recoveries, uint32_t want_reopens)
{
    enum { N = 40 };
    mc_stream_stats st0, st1;
    int setups, teardowns;
    if (two_runs(LOCAL, N, faults, 0, 1, &st0, &st1, &setups, &teardowns)) return 1;
    CHECK_EQ(st0.recoveries, 0);
    if (want_recoveries) CHECK_EQ(st1.recoveries, want_recoveries);
    else CHECK_GE(st1.recoveries, 1);
    CHECK_EQ(st1.device_reopens, want_reopens);
    CHECK_EQ(st1.delivered, N);
    CHECK_EQ(st1.failed, 0);
    CHECK_GE(st1.commits, N + 1);
    CHECK_EQ(st1.commits, N + st1.replays);
    /* every commit replayed its slot's list, also after the queue or the
     * device was replaced (the lists are recorded again for new buffers) */
    CHECK_EQ(st0.list_commits, st0.commits);
    CHECK_EQ(st1.list_commits, st1.commits);
    CHECK_NE(st1.last_failure, MC_OK);
    /* setup: once per stream, once more per reopened device */
    CHECK_EQ(setups, 2 + (int)want_reopens);
    CHECK_EQ(teardowns, setups);
    return 0;
}

MC_TEST(stream_page_fault_loses_nothing_and_duplicates_nothing)
{
    return fault_test("page-fault@7", 1, 0);
}

MC_TEST(stream_timeout_loses_nothing_and_duplicates_nothing)
{
    return fault_test("timeout@11", 1, 0);
}

MC_TEST(stream_device_loss_reopens_and_resubmits)
{
    return fault_test("device-lost@9", 1, 1);
}

MC_TEST(stream_survives_several_faults_across_a_device_loss)
{
    /* The page fault after the loss is carried to the reopened device. */
    return fault_test("internal@4,device-lost@12,page-fault@30", 3, 1);
}

/* The same faults through the isolated back end: a killed worker and a
 * lost device cost a worker each, a page fault is recovered inside one. */
MC_TEST(stream_isolated_worker_faults_lose_nothing_and_duplicate_nothing)
{
    enum { N = 40 };
    mc_stream_stats st0, st1;
    int setups, teardowns;
    if (two_runs(ISOLATED, N, "kill@7,page-fault@15,device-lost@25", 0, 1, &st0, &st1, &setups, &teardowns)) return 1;
    CHECK_EQ(st0.worker_restarts, 0);
    CHECK_EQ(st1.worker_restarts, 2);
    CHECK_EQ(st1.delivered, N);
    CHECK_EQ(st1.failed, 0);
    CHECK_GE(st1.recoveries, 1); /* the page fault, inside a worker */
    CHECK_GT(st1.replays, 0);
    CHECK_NE(st1.last_failure, MC_OK);
    return 0;
}

MC_TEST(stream_recording_each_item_gives_the_same_bits_as_replaying_lists)
{
    enum { N = 24 };
    mc_stream_stats listed, recorded;
    int setups, teardowns;
    if (two_runs(LOCAL, N, "page-fault@5", MC_STREAM_RECORD_EACH, 1, &listed, &recorded, &setups, &teardowns)) return 1;
    CHECK_EQ(listed.list_commits, N);
    CHECK_EQ(recorded.list_commits, 0);
    CHECK_EQ(recorded.commits, N + recorded.replays);
    CHECK_EQ(recorded.recoveries, 1);
    CHECK_EQ(teardowns, setups);
    return 0;
}

/* Items spread over three queues: in order, exactly once, the same bits as
 * one queue, through a page fault and a device loss. */
MC_TEST(stream_lanes_deliver_in_order_through_faults)
{
    enum { N = 60 };
    mc_stream_stats one, three;
    int setups, teardowns;
    if (two_runs(LOCAL, N, "page-fault@9,device-lost@30", 0, 3, &one, &three, &setups, &teardowns)) return 1;
    CHECK_EQ(three.delivered, N);
    CHECK_EQ(three.failed, 0);
    CHECK_GE(three.recoveries, 2);
    CHECK_EQ(three.device_reopens, 1);
    CHECK_EQ(three.commits, N + three.replays);
    CHECK_EQ(three.list_commits, three.commits);
    CHECK_EQ(teardowns, setups);
    return 0;
}

/* Item 1 alone in flight: its first three command buffers fault; item 3's
 * fails in a way no retry mends. */
static int retry_bound(backend be)
{
    fx f;
    if (fx_init(&f, be, 3, 2, false)) return 1;
    f.sd.max_retries = 2;
    if (fx_create(&f, "page-fault@1,page-fault@2,page-fault@3,invalid-resource@5")) return 1;
    mc_stream *st = f.st;
    CHECK_OK(put_block(st, f.sig, 0, 100, 0));
    mc_stream_result r;
    CHECK_OK(mc_stream_pull(st, 10ull * 1000000000ull, &r));
    CHECK_EQ(r.sequence, 1);
    CHECK_EQ(r.tag, 100);
    CHECK_STATUS(r.status, MC_ERR_PAGE_FAULT);
    CHECK_EQ(r.attempts, 3); /* the first try and max_retries more */
    CHECK_STR_CONTAINS(r.message, "injected");
    CHECK_OK(mc_stream_release_result(st, &r));
    /* The stream goes on. */
    CHECK_OK(put_block(st, f.sig, 1, 101, 0));
    CHECK_OK(mc_stream_pull(st, 10ull * 1000000000ull, &r));
    CHECK_EQ(r.sequence, 2);
    CHECK_OK(r.status);
    CHECK_EQ(r.attempts, 1);
    CHECK_EQ(check_block(&f.fir, f.sig, 1, r.output), -1);
    CHECK_OK(mc_stream_release_result(st, &r));
    /* An error no retry mends is delivered at once. */
    CHECK_OK(put_block(st, f.sig, 2, 102, 0));
    CHECK_OK(mc_stream_pull(st, 10ull * 1000000000ull, &r));
    CHECK_STATUS(r.status, MC_ERR_INVALID_RESOURCE);
    CHECK_EQ(r.attempts, 1);
    CHECK_OK(mc_stream_release_result(st, &r));

    mc_stream_stats stats;
    CHECK_OK(mc_stream_close(st, true));
    CHECK_OK(mc_stream_get_stats(st, &stats));
    CHECK_EQ(stats.failed, 2);
    CHECK_EQ(stats.delivered, 3);
    CHECK_EQ(stats.recoveries, 4);
    CHECK_EQ(stats.commits, 5);
    CHECK_EQ(stats.worker_restarts, 0); /* an isolated stream's worker mended them itself */
    fx_free(&f);
    return 0;
}

MC_TEST(stream_item_failing_past_the_retry_bound_gets_its_error)
{
    return retry_bound(LOCAL);
}

MC_TEST(stream_isolated_item_failing_past_the_retry_bound_gets_its_error)
{
    return retry_bound(ISOLATED);
}

MC_TEST(stream_gives_up_when_the_device_cannot_be_rebuilt)
{
    fx f;
    if (fx_init(&f, LOCAL, 3, 3, false)) return 1;
    f.fir.bad = BIND_ONLY_ONCE;
    if (fx_create(&f, NULL)) return 1;
    mc_stream *st = f.st;
    CHECK_OK(put_block(st, f.sig, 0, 0, 0));
    mc_stream_result r;
    CHECK_OK(mc_stream_pull(st, 10ull * 1000000000ull, &r));
    CHECK_OK(r.status);
    CHECK_OK(mc_stream_release_result(st, &r));
    /* The device is lost and setup fails on the new one: nothing can run. */
    CHECK_OK(mc_device_inject_faults(f.dev, "device-lost@1"));
    CHECK_OK(put_block(st, f.sig, 1, 1, 0));
    CHECK_OK(put_block(st, f.sig, 2, 2, 0));
    for (uint64_t i = 2; i <= 3; i++) {
        CHECK_OK(mc_stream_pull(st, 10ull * 1000000000ull, &r));
        CHECK_EQ(r.sequence, i);
        CHECK_STATUS(r.status, MC_ERR_COMPILE); /* what stopped the rebuild */
        CHECK_STR_CONTAINS(r.message, "gave up");
        CHECK_OK(mc_stream_release_result(st, &r));
    }
    mc_stream_slot sl;
    CHECK_STATUS(mc_stream_acquire(st, 0, &sl), MC_ERR_COMPILE);
    CHECK_STR_CONTAINS(mc_last_error(), "gave up");
    mc_stream_stats stats;
    CHECK_OK(mc_stream_get_stats(st, &stats));
    CHECK_EQ(stats.failed, 2);
    CHECK_EQ(stats.device_reopens, 1);
    CHECK_OK(mc_stream_close(st, true));
    CHECK_STATUS(mc_stream_pull(st, 0, &r), MC_ERR_INVALID_STATE);
    mc_stream_release(st);
    f.st = NULL;
    CHECK_EQ(atomic_load(&f.fir.setups), 2);
    CHECK_EQ(atomic_load(&f.fir.teardowns), 1);
    fx_free(&f);
    return 0;
}

/* ---- the sequence argument --------------------------------------------------- */

typedef struct iota_made {
    mc_pipeline *iota;
    uint32_t n;
} iota_made;

static mc_status iota_setup(void *user, mc_device *dev, mc_stream_binding *b)
{
    iota_made *m = user;
    m->iota = mct_pipeline(dev, "basic", "iota");
    if (!m->iota) return MC_ERR_COMPILE;
    mc_stream_pass *p = &b->passes[0];
    p->pipeline = m->iota;
    p->threadgroups = (mc_size3){1, 1, 1};
    p->threads_per_threadgroup = (mc_size3){m->n, 1, 1};
    p->args[0].kind = MC_STREAM_ARG_OUTPUT;
    p->args[1].kind = MC_STREAM_ARG_BYTES;
    p->args[1].bytes = &m->n;
    p->args[1].len = 4;
    p->args[2].kind = MC_STREAM_ARG_SEQUENCE; /* read as a uint32: the low half */
    b->pass_count = 1;
    return MC_OK;
}

static void iota_teardown(void *user, mc_stream_binding *b)
{
    iota_made *m = user;
    (void)b;
    mc_pipeline_release(m->iota);
    m->iota = NULL;
}

MC_TEST(stream_passes_the_sequence_number_to_a_kernel)
{
    mc_device *d = mct_open_device(0);
    CHECK(d);
    iota_made m = {NULL, 64};
    mc_stream_desc sd = MC_STREAM_DESC_INIT;
    sd.device = d;
    sd.setup = iota_setup;
    sd.teardown = iota_teardown;
    sd.user = &m;
    sd.item_size = 4;
    sd.result_size = m.n * 4;
    mc_stream *st;
    CHECK_OK(mc_stream_create(&sd, &st));
    CHECK_OK(mc_device_inject_faults(d, "page-fault@2"));
    for (int i = 0; i < 4; i++) {
        mc_stream_slot sl;
        CHECK_OK(mc_stream_acquire(st, MC_WAIT_FOREVER, &sl));
        CHECK_OK(mc_stream_submit(st, sl.index, (uint64_t)i));
        mc_stream_result r;
        CHECK_OK(mc_stream_pull(st, 10ull * 1000000000ull, &r));
        CHECK_OK(r.status);
        const uint32_t *out = r.output;
        for (uint32_t k = 0; k < m.n; k++) CHECK_EQ(out[k], r.sequence + k);
        CHECK_EQ(r.attempts, i == 1 ? 2 : 1);
        CHECK_OK(mc_stream_release_result(st, &r));
    }
    /* a value that changes per item cannot live in a recorded list */
    mc_stream_stats stats;
    CHECK_OK(mc_stream_get_stats(st, &stats));
    CHECK_EQ(stats.commits, 5);
    CHECK_EQ(stats.list_commits, 0);
    mc_stream_release(st);
    mc_device_release(d);
    return 0;
}

/* ---- argument checks ------------------------------------------------------- */

typedef struct cb_probe {
    mc_stream *st;
    mc_status close, acquire;
    _Atomic int ran;
} cb_probe;

static void close_in_callback(void *user, const mc_stream_result *r)
{
    cb_probe *p = user;
    (void)r;
    p->close = mc_stream_close(p->st, true);
    mc_stream_slot sl;
    p->acquire = mc_stream_acquire(p->st, MC_WAIT_FOREVER, &sl); /* never waits here: it would deadlock */
    if (p->acquire == MC_OK) mc_stream_discard(p->st, sl.index);
    atomic_store(&p->ran, 1);
}

MC_TEST(stream_rejects_bad_arguments)
{
    fx x;
    if (fx_init(&x, LOCAL, 1, 3, false)) return 1;
    mc_device *d = x.dev;
    fir_fixture *f = &x.fir;
    mc_stream *st = (mc_stream *)1;
    mc_stream_desc sd = x.sd;

    CHECK_STATUS(mc_stream_create(&sd, NULL), MC_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(mc_stream_create(NULL, &st), MC_ERR_INVALID_ARGUMENT);
    CHECK(st == NULL);
    mc_stream_desc bad = sd;
    bad.device = NULL;
    CHECK_STATUS(mc_stream_create(&bad, &st), MC_ERR_INVALID_ARGUMENT);
    bad = sd;
    bad.setup = NULL;
    CHECK_STATUS(mc_stream_create(&bad, &st), MC_ERR_INVALID_ARGUMENT);
    CHECK_STR_CONTAINS(mc_last_error(), "setup");
    bad = sd;
    bad.item_size = 0;
    CHECK_STATUS(mc_stream_create(&bad, &st), MC_ERR_INVALID_ARGUMENT);
    CHECK_STR_CONTAINS(mc_last_error(), "item_size");
    bad = sd;
    bad.slots = MC_STREAM_MAX_SLOTS + 1;
    CHECK_STATUS(mc_stream_create(&bad, &st), MC_ERR_INVALID_ARGUMENT);
    CHECK_STR_CONTAINS(mc_last_error(), "slots");
    bad = sd;
    bad.lanes = 4; /* more lanes than the 3 slots */
    CHECK_STATUS(mc_stream_create(&bad, &st), MC_ERR_INVALID_ARGUMENT);
    CHECK_STR_CONTAINS(mc_last_error(), "lanes");
    bad.slots = 8;
    bad.lanes = MC_STREAM_MAX_LANES + 1;
    CHECK_STATUS(mc_stream_create(&bad, &st), MC_ERR_INVALID_ARGUMENT);
    CHECK_STR_CONTAINS(mc_last_error(), "lanes");
    bad = sd;
    bad.flags = 0x80u;
    CHECK_STATUS(mc_stream_create(&bad, &st), MC_ERR_INVALID_ARGUMENT);
    CHECK_STR_CONTAINS(mc_last_error(), "flags");
    CHECK_EQ(atomic_load(&f->setups), 0);

    /* What setup makes is checked; a failing setup fails create with its error. */
    static const struct {
        bad_binding bad;
        mc_status want;
        const char *says;
    } binds[] = {
        {BIND_NO_PASSES, MC_ERR_INVALID_ARGUMENT, "passes"},
        {BIND_OUTPUT_PAST_END, MC_ERR_INVALID_ARGUMENT, "output offset"},
        {BIND_EMPTY_BYTES, MC_ERR_INVALID_ARGUMENT, "bytes"},
        {BIND_TOO_MANY_THREADS, MC_ERR_INVALID_ARGUMENT, "threads_per_threadgroup"},
        {BIND_SETUP_FAILS, MC_ERR_NOT_FOUND, "setup failed"},
    };
    for (size_t i = 0; i < sizeof binds / sizeof binds[0]; i++) {
        f->bad = binds[i].bad;
        st = (mc_stream *)1;
        CHECK_STATUS(mc_stream_create(&sd, &st), binds[i].want);
        CHECK(st == NULL);
        CHECK_STR_CONTAINS(mc_last_error(), binds[i].says);
    }
    CHECK_EQ(atomic_load(&f->teardowns), 4); /* every setup that succeeded was torn down */
    f->bad = BIND_GOOD;
    bad = sd;
    bad.result_size = 0; /* the passes bind the output */
    CHECK_STATUS(mc_stream_create(&bad, &st), MC_ERR_INVALID_ARGUMENT);
    CHECK_STR_CONTAINS(mc_last_error(), "result_size is 0");

    /* calls on a NULL or wrong handle */
    mc_stream_slot sl;
    mc_stream_result r;
    mc_stream_stats stats;
    memset(&r, 0, sizeof r);
    CHECK_STATUS(mc_stream_acquire(NULL, 0, &sl), MC_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(mc_stream_acquire((mc_stream *)d, 0, &sl), MC_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(mc_stream_submit(NULL, 0, 0), MC_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(mc_stream_discard(NULL, 0), MC_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(mc_stream_pull(NULL, 0, &r), MC_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(mc_stream_release_result(NULL, &r), MC_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(mc_stream_close(NULL, true), MC_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(mc_stream_get_stats(NULL, &stats), MC_ERR_INVALID_ARGUMENT);
    CHECK(mc_stream_device(NULL) == NULL);
    mc_stream_release(NULL);

    /* calls on a good stream with bad arguments */
    CHECK_OK(mc_stream_create(&sd, &st));
    CHECK(mc_stream_device(st) == d);
    CHECK_STATUS(mc_stream_acquire(st, 0, NULL), MC_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(mc_stream_get_stats(st, NULL), MC_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(mc_stream_pull(st, 0, NULL), MC_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(mc_stream_release_result(st, NULL), MC_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(mc_stream_submit(st, 3, 0), MC_ERR_INVALID_ARGUMENT); /* no such slot */
    CHECK_STATUS(mc_stream_submit(st, 0, 0), MC_ERR_INVALID_ARGUMENT); /* not acquired */
    CHECK_STR_CONTAINS(mc_last_error(), "not acquired");
    CHECK_STATUS(mc_stream_discard(st, 7), MC_ERR_INVALID_ARGUMENT);
    r.slot = 9;
    CHECK_STATUS(mc_stream_release_result(st, &r), MC_ERR_INVALID_ARGUMENT);
    r.slot = 0;
    CHECK_STATUS(mc_stream_release_result(st, &r), MC_ERR_INVALID_ARGUMENT); /* never pulled */
    CHECK_OK(mc_stream_acquire(st, 0, &sl));
    CHECK_STATUS(mc_stream_release_result(st, &r), MC_ERR_INVALID_ARGUMENT);
    const float *sig = x.sig;
    memcpy(sl.input, sig, item_size());
    CHECK_OK(mc_stream_submit(st, sl.index, 5));
    CHECK_STATUS(mc_stream_submit(st, sl.index, 5), MC_ERR_INVALID_ARGUMENT); /* submitted already */
    CHECK_OK(mc_stream_pull(st, MC_WAIT_FOREVER, &r));
    mc_stream_result wrong = r;
    wrong.sequence++;
    CHECK_STATUS(mc_stream_release_result(st, &wrong), MC_ERR_INVALID_ARGUMENT);
    CHECK_OK(mc_stream_release_result(st, &r));
    mc_stream_release(st);

    /* callback mode: no pulling; no closing from the callback */
    cb_probe cb = {NULL, MC_OK, MC_OK, 0};
    sd.on_result = close_in_callback;
    sd.result_user = &cb;
    CHECK_OK(mc_stream_create(&sd, &cb.st));
    CHECK_STATUS(mc_stream_pull(cb.st, 0, &r), MC_ERR_INVALID_STATE);
    CHECK_OK(mc_stream_acquire(cb.st, 0, &sl));
    memcpy(sl.input, sig, item_size());
    CHECK_OK(mc_stream_submit(cb.st, sl.index, 1));
    for (int i = 0; i < 10000 && !atomic_load(&cb.ran); i++) sleep_ms(1);
    CHECK(atomic_load(&cb.ran));
    CHECK_OK(mc_stream_close(cb.st, true));
    CHECK_STATUS(cb.close, MC_ERR_INVALID_STATE);
    CHECK_OK(cb.acquire); /* a free slot: acquired at once */
    mc_stream_release(cb.st);

    /* the back ends' own fields: a local stream needs the device, an
     * isolated one must not have it (its worker opens it) */
    mc_isolate_desc iso = MC_ISOLATE_DESC_INIT;
    bad = sd;
    bad.on_result = NULL;
    bad.isolate = &iso;
    CHECK_STATUS(mc_stream_create(&bad, &st), MC_ERR_INVALID_ARGUMENT);
    CHECK_STR_CONTAINS(mc_last_error(), "desc->device must be NULL");
    mc_isolate_stats ist;
    CHECK_OK(mc_stream_create(&x.sd, &st));
    CHECK_STATUS(mc_stream_get_isolate_stats(st, &ist), MC_ERR_INVALID_ARGUMENT); /* not an isolated stream */
    mc_stream_release(st);
    fx_free(&x);
    return 0;
}
