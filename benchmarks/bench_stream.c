/*
 * metal-compute bench stream: items per second and per-item latency of a
 * stream with 1, 2, 3 and 4 slots, against the naive loop at the same item
 * size (fill, one command buffer, commit, wait, read, per item). The item
 * is a block of audio-rate samples through an FIR filter and a gain
 * (examples/kernels/fir.metal, the Anukari use case of F692). Latency is from
 * the moment the producer starts filling the item to the moment its result
 * is in the consumer's hands. Every output is checked: the stream's must
 * equal the naive loop's for the same block, bit for bit.
 *
 * Two more rows put the ratio in context. The device's ceiling: the chains
 * of many items back to back in one command buffer, which no stream can
 * beat (nothing of the CPU's is left to hide); its ratio to the naive loop
 * is the most any pipelining could gain on this device at this item size.
 * And the stream with MC_STREAM_RECORD_EACH, each item recorded anew
 * instead of replaying its slot's command list: what the lists are worth.
 */
#include "bench.h"
#include "raw.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#define SB_BLOCK 1024u
#define SB_TAPS 32u
#define SB_BLOCKS 64u /* distinct blocks cycled through */
#define SB_GROUP 64u
#define SB_TILE ((SB_GROUP + SB_TAPS - 1) * sizeof(float)) /* fir stages its inputs here */

typedef struct sb_ctx {
    mc_device *dev; /* the bench's device: its pipelines are built once */
    mc_pipeline *fir, *gain;
    float taps[SB_TAPS];
    uint32_t n, ntaps;
    float g;
    float *sig;             /* SB_BLOCKS blocks, each with its history in front */
    double want[SB_BLOCKS]; /* output sums from the naive loop */
    bool have_want[SB_BLOCKS];
} sb_ctx;

typedef struct sb_made {
    mc_pipeline *fir, *gain;
    mc_buffer *taps;
} sb_made;

static const float *block_input(const sb_ctx *c, uint32_t b)
{
    return c->sig + (size_t)(b % SB_BLOCKS) * SB_BLOCK;
}

static double sum_of(const float *v)
{
    double s = 0;
    for (uint32_t i = 0; i < SB_BLOCK; i++) s += v[i];
    return s;
}

static void bind_passes(sb_ctx *c, mc_stream_binding *b, sb_made *m)
{
    mc_stream_pass *p = &b->passes[0];
    p->label = "fir";
    p->pipeline = m->fir;
    p->threadgroups = (mc_size3){c->n / SB_GROUP, 1, 1};
    p->threads_per_threadgroup = (mc_size3){SB_GROUP, 1, 1};
    p->args[0].kind = MC_STREAM_ARG_OUTPUT;
    p->args[1].kind = MC_STREAM_ARG_INPUT;
    p->args[2].kind = MC_STREAM_ARG_BUFFER;
    p->args[2].buffer = m->taps;
    p->args[3] = (mc_stream_arg){MC_STREAM_ARG_BYTES, NULL, 0, &c->n, 4};
    p->args[4] = (mc_stream_arg){MC_STREAM_ARG_BYTES, NULL, 0, &c->ntaps, 4};
    p->threadgroup_memory[0] = SB_TILE;
    p = &b->passes[1];
    p->label = "gain";
    p->pipeline = m->gain;
    p->threadgroups = (mc_size3){c->n / SB_GROUP, 1, 1};
    p->threads_per_threadgroup = (mc_size3){SB_GROUP, 1, 1};
    p->args[0].kind = MC_STREAM_ARG_OUTPUT;
    p->args[1] = (mc_stream_arg){MC_STREAM_ARG_BYTES, NULL, 0, &c->g, 4};
    p->args[2] = (mc_stream_arg){MC_STREAM_ARG_BYTES, NULL, 0, &c->n, 4};
    b->pass_count = 2;
    b->user_data = m;
}

static mc_status sb_setup(void *user, mc_device *dev, mc_stream_binding *b)
{
    sb_ctx *c = user;
    sb_made *m = calloc(1, sizeof *m);
    if (!m) return MC_ERR_NO_MEMORY;
    if (dev == c->dev) {
        m->fir = c->fir;
        m->gain = c->gain;
        mc_pipeline_retain(m->fir);
        mc_pipeline_retain(m->gain);
    } else {
        m->fir = mc_cli_pipeline(dev, "fir", "fir");
        m->gain = mc_cli_pipeline(dev, "fir", "gain");
    }
    mc_buffer_desc bd = {sizeof c->taps, MC_STORAGE_PRIVATE, "taps", c->taps};
    mc_status s = m->fir && m->gain ? mc_buffer_create(dev, &bd, &m->taps) : MC_ERR_COMPILE;
    if (s != MC_OK) {
        mc_pipeline_release(m->fir);
        mc_pipeline_release(m->gain);
        free(m);
        return s;
    }
    bind_passes(c, b, m);
    return MC_OK;
}

static void sb_teardown(void *user, mc_stream_binding *b)
{
    (void)user;
    sb_made *m = b->user_data;
    if (!m) return;
    mc_pipeline_release(m->fir);
    mc_pipeline_release(m->gain);
    mc_buffer_release(m->taps);
    free(m);
}

/* ---- the naive loop ------------------------------------------------------- */

typedef struct sb_naive {
    mc_queue *q;
    mc_buffer *in, *out, *taps;
} sb_naive;

/* The chain's two dispatches on the naive loop's buffers, into a pass of a
 * command buffer or a command list's recording. */
static mc_status bind_fir(sb_ctx *c, sb_naive *nv, mc_pass *p)
{
    mc_status s = mc_pass_set_pipeline(p, c->fir);
    if (s == MC_OK) s = mc_pass_set_buffer(p, 0, nv->out, 0);
    if (s == MC_OK) s = mc_pass_set_buffer(p, 1, nv->in, 0);
    if (s == MC_OK) s = mc_pass_set_buffer(p, 2, nv->taps, 0);
    if (s == MC_OK) s = mc_pass_set_bytes(p, 3, &c->n, 4);
    if (s == MC_OK) s = mc_pass_set_bytes(p, 4, &c->ntaps, 4);
    if (s == MC_OK) s = mc_pass_set_threadgroup_memory(p, 0, SB_TILE);
    if (s == MC_OK) s = mc_pass_dispatch(p, (mc_size3){c->n / SB_GROUP, 1, 1}, (mc_size3){SB_GROUP, 1, 1});
    return s;
}

static mc_status bind_gain(sb_ctx *c, sb_naive *nv, mc_pass *p)
{
    mc_status s = mc_pass_set_pipeline(p, c->gain);
    if (s == MC_OK) s = mc_pass_set_buffer(p, 0, nv->out, 0);
    if (s == MC_OK) s = mc_pass_set_bytes(p, 1, &c->g, 4);
    if (s == MC_OK) s = mc_pass_set_bytes(p, 2, &c->n, 4);
    if (s == MC_OK) s = mc_pass_dispatch(p, (mc_size3){c->n / SB_GROUP, 1, 1}, (mc_size3){SB_GROUP, 1, 1});
    return s;
}

static int naive_item(sb_ctx *c, sb_naive *nv, uint32_t b)
{
    memcpy(mc_buffer_contents(nv->in), block_input(c, b), (SB_BLOCK + SB_TAPS - 1) * sizeof(float));
    mc_cmdbuf *cb;
    if (mc_cmdbuf_create(nv->q, NULL, &cb) != MC_OK) return -1;
    mc_pass *p;
    mc_status s = mc_cmdbuf_begin_pass(cb, "fir", &p);
    if (s == MC_OK) s = bind_fir(c, nv, p);
    if (s == MC_OK) s = mc_pass_end(p);
    if (s == MC_OK) s = mc_cmdbuf_begin_pass(cb, "gain", &p);
    if (s == MC_OK) s = bind_gain(c, nv, p);
    if (s == MC_OK) s = mc_pass_end(p);
    s = mc_bench_commit_wait(cb, s);
    mc_cmdbuf_release(cb);
    if (s != MC_OK) return -1;
    double sum = sum_of(mc_buffer_contents(nv->out));
    uint32_t k = b % SB_BLOCKS;
    if (!c->have_want[k]) {
        c->want[k] = sum;
        c->have_want[k] = true;
    } else if (sum != c->want[k]) {
        return -1;
    }
    return 0;
}

/* count items; lat receives each item's latency in us. Returns the rate. */
static double naive_run(sb_ctx *c, sb_naive *nv, uint32_t first, uint32_t count, double *lat)
{
    double t0 = mc_bench_now_us();
    for (uint32_t i = 0; i < count; i++) {
        double s = mc_bench_now_us();
        if (naive_item(c, nv, first + i)) return -1;
        if (lat) lat[i] = mc_bench_now_us() - s;
    }
    double t = mc_bench_now_us() - t0;
    return t > 0 ? count / (t / 1e6) : 0;
}

/* The device's own rate: count items' chains recorded as one command list
 * (all launched at once: a CUDA graph, an ICB, a CPU list) and timed on the
 * device from the start of the first to the end of the last. */
static double ceiling_run(sb_ctx *c, sb_naive *nv, uint32_t count)
{
    memcpy(mc_buffer_contents(nv->in), block_input(c, 0), (SB_BLOCK + SB_TAPS - 1) * sizeof(float));
    mc_cmdlist_desc ld = {"stream ceiling", 2 * count};
    mc_cmdlist *l;
    if (mc_cmdlist_create(c->dev, &ld, &l) != MC_OK) return -1;
    mc_pass *p;
    mc_status s = mc_cmdlist_begin(l, &p);
    for (uint32_t i = 0; i < count && s == MC_OK; i++) {
        if (i) s = mc_pass_barrier(p);
        if (s == MC_OK) s = bind_fir(c, nv, p);
        if (s == MC_OK) s = mc_pass_barrier(p);
        if (s == MC_OK) s = bind_gain(c, nv, p);
    }
    if (s == MC_OK) s = mc_cmdlist_end(l);
    double best = -1;
    for (int rep = 0; rep < 3 && s == MC_OK; rep++) {
        mc_cmdbuf_desc cd = MC_CMDBUF_DESC_INIT;
        cd.flags = MC_CMDBUF_TIMESTAMPS;
        mc_cmdbuf *cb;
        uint64_t t0 = 0, t1 = 0;
        s = mc_cmdbuf_create(nv->q, &cd, &cb);
        if (s != MC_OK) break;
        s = mc_cmdbuf_execute_cmdlist(cb, l, 0, MC_CMDLIST_ALL);
        s = mc_bench_commit_wait(cb, s);
        if (s == MC_OK) s = mc_cmdbuf_get_gpu_time(cb, &t0, &t1);
        mc_cmdbuf_release(cb);
        double rate = s == MC_OK && t1 > t0 ? count / ((double)(t1 - t0) / 1e9) : -1;
        if (rate > best) best = rate;
    }
    mc_cmdlist_release(l);
    return s == MC_OK ? best : -1;
}

/* ---- the stream ------------------------------------------------------------- */

typedef struct sb_run {
    sb_ctx *c;
    pthread_mutex_t lock;
    pthread_cond_t cv;
    uint64_t delivered, want;
    double *start_us; /* by tag */
    double *lat;      /* by tag */
    double last_us;
    bool bad;
} sb_run;

static void sb_on_result(void *user, const mc_stream_result *r)
{
    sb_run *run = user;
    double now = mc_bench_now_us();
    uint32_t k = (uint32_t)(r->tag % SB_BLOCKS);
    bool ok = r->status == MC_OK && run->c->have_want[k] && sum_of(r->output) == run->c->want[k];
    pthread_mutex_lock(&run->lock);
    run->lat[r->tag] = now - run->start_us[r->tag];
    run->last_us = now;
    if (!ok) run->bad = true;
    if (++run->delivered == run->want) pthread_cond_signal(&run->cv);
    pthread_mutex_unlock(&run->lock);
}

static double stream_run(mc_stream *st, sb_run *run, uint32_t count)
{
    pthread_mutex_lock(&run->lock);
    run->delivered = 0;
    run->want = count;
    pthread_mutex_unlock(&run->lock);
    double t0 = mc_bench_now_us();
    for (uint32_t i = 0; i < count; i++) {
        mc_stream_slot sl;
        if (mc_stream_acquire(st, MC_WAIT_FOREVER, &sl) != MC_OK) return -1;
        double s = mc_bench_now_us();
        pthread_mutex_lock(&run->lock);
        run->start_us[i] = s;
        pthread_mutex_unlock(&run->lock);
        memcpy(sl.input, block_input(run->c, i), sl.size);
        if (mc_stream_submit(st, sl.index, i) != MC_OK) return -1;
    }
    pthread_mutex_lock(&run->lock);
    while (run->delivered < run->want) pthread_cond_wait(&run->cv, &run->lock);
    double t = run->last_us - t0;
    bool bad = run->bad;
    pthread_mutex_unlock(&run->lock);
    if (bad) return -1;
    return t > 0 ? count / (t / 1e6) : 0;
}

/* The raw driver doing the same work pipelined the same way, in rounds;
 * its median items/s, or -1 where there is no such baseline. */
static double raw_stream_rate(mc_bench *b, const sb_ctx *c, int rounds, uint32_t per, uint32_t slots)
{
    if (b->info.kind != MC_DEVICE_CUDA) return -1;
    char path[4096];
    snprintf(path, sizeof path, "%s/fir.cu", mc_cli_baseline_dir()); /* the raw driver runs the CUDA twin */
    char *src = mc_cli_read_file(path, NULL);
    mc_raw *r = src ? mc_raw_open(b->info.kind, b->info.index) : NULL;
    double *rate = calloc((size_t)rounds, sizeof *rate), med = -1;
    if (r && rate) {
        mc_raw_stream_work w = {src,      c->sig,   SB_BLOCK + SB_TAPS - 1, SB_BLOCKS, c->want, c->taps, c->n,
                                c->ntaps, SB_GROUP, (uint32_t)SB_TILE,      c->g,      per,     slots};
        int ok = 1;
        for (int i = 0; i < rounds && ok; i++) ok = (rate[i] = mc_raw_stream(r, &w)) > 0;
        if (ok) med = mc_bench_median(rate, rounds);
    }
    free(rate);
    mc_raw_close(r);
    free(src);
    return med;
}

typedef struct sb_plan {
    int rounds;
    uint32_t per, warm;
    double *rate_o, *rate_n, *lat_o, *lat_n; /* rounds, rounds, rounds * per, rounds * per */
} sb_plan;

/* One stream of slots (and flags) against the naive loop, alternating in
 * rounds so drift hits both alike. Fills the plan's arrays; 0 or -1. */
static int measure(mc_bench *b, sb_ctx *c, sb_naive *nv, sb_run *run, const sb_plan *pl, uint32_t slots, uint32_t flags,
                   uint32_t lanes)
{
    mc_stream_desc sd = MC_STREAM_DESC_INIT;
    sd.device = b->dev;
    sd.setup = sb_setup;
    sd.teardown = sb_teardown;
    sd.user = c;
    sd.item_size = (SB_BLOCK + SB_TAPS - 1) * sizeof(float);
    sd.result_size = SB_BLOCK * sizeof(float);
    sd.slots = slots;
    sd.on_result = sb_on_result;
    sd.result_user = run;
    sd.label = "bench stream";
    sd.flags = flags;
    sd.lanes = lanes;
    mc_stream *st;
    mc_status s = mc_stream_create(&sd, &st);
    if (s != MC_OK) return mc_cli_fail("stream create", s);
    int rc = stream_run(st, run, pl->warm) < 0 ? -1 : 0;
    for (int r = 0; r < pl->rounds && rc == 0; r++) {
        pl->rate_n[r] = naive_run(c, nv, 0, pl->per, pl->lat_n + (size_t)r * pl->per);
        pl->rate_o[r] = stream_run(st, run, pl->per);
        if (pl->rate_n[r] < 0 || pl->rate_o[r] < 0) rc = -1;
        else memcpy(pl->lat_o + (size_t)r * pl->per, run->lat, pl->per * sizeof(double));
    }
    mc_stream_stats stats;
    mc_stream_get_stats(st, &stats);
    mc_stream_release(st);
    if (rc) return mc_cli_fail("stream: wrong or missing results", MC_ERR_INTERNAL);
    if (stats.delivered != (uint64_t)pl->warm + (uint64_t)pl->rounds * pl->per || stats.failed || stats.cancelled)
        return mc_cli_fail("stream: items lost or failed", MC_ERR_INTERNAL);
    return 0;
}

int mc_bench_stream(mc_bench *b)
{
    sb_ctx c;
    memset(&c, 0, sizeof c);
    c.dev = b->dev;
    c.n = SB_BLOCK;
    c.ntaps = SB_TAPS;
    c.g = 0.5f;
    float tsum = 0;
    for (uint32_t k = 0; k < SB_TAPS; k++) tsum += c.taps[k] = (float)(k < SB_TAPS / 2 ? k + 1 : SB_TAPS - k);
    for (uint32_t k = 0; k < SB_TAPS; k++) c.taps[k] /= tsum;
    size_t len = (size_t)SB_BLOCKS * SB_BLOCK + SB_TAPS - 1;
    c.sig = calloc(len, sizeof *c.sig);
    uint32_t x = 1u;
    for (size_t i = SB_TAPS - 1; c.sig && i < len; i++) {
        x = x * 1664525u + 1013904223u;
        c.sig[i] = (float)(x >> 8) / (float)(1u << 24) * 2.0f - 1.0f;
    }
    c.fir = mc_cli_pipeline(b->dev, "fir", "fir");
    c.gain = mc_cli_pipeline(b->dev, "fir", "gain");

    sb_plan pl;
    pl.rounds = b->quick ? 2 : 5;
    pl.per = b->quick ? 100u : (uint32_t)(b->reps * 5 < 200 ? 200 : b->reps * 5);
    pl.warm = pl.per / 10 + 8;
    sb_naive nv;
    memset(&nv, 0, sizeof nv);
    sb_run run;
    memset(&run, 0, sizeof run);
    run.c = &c;
    pthread_mutex_init(&run.lock, NULL);
    pthread_cond_init(&run.cv, NULL);
    pl.rate_o = calloc((size_t)pl.rounds, sizeof(double));
    pl.rate_n = calloc((size_t)pl.rounds, sizeof(double));
    pl.lat_o = calloc((size_t)pl.rounds * pl.per, sizeof(double));
    pl.lat_n = calloc((size_t)pl.rounds * pl.per, sizeof(double));
    run.start_us = calloc(pl.per + pl.warm, sizeof(double));
    run.lat = calloc(pl.per + pl.warm, sizeof(double));
    double rate3 = 0;
    int rc = 0;
    mc_buffer_desc bi = {(SB_BLOCK + SB_TAPS - 1) * sizeof(float), MC_STORAGE_SHARED, "naive input", NULL};
    mc_buffer_desc bo = {SB_BLOCK * sizeof(float), MC_STORAGE_SHARED, "naive output", NULL};
    mc_buffer_desc bt = {sizeof c.taps, MC_STORAGE_PRIVATE, "taps", c.taps};
    if (!c.sig || !c.fir || !c.gain || !pl.rate_o || !pl.rate_n || !pl.lat_o || !pl.lat_n || !run.start_us ||
        !run.lat || mc_queue_create(b->dev, NULL, &nv.q) != MC_OK || mc_buffer_create(b->dev, &bi, &nv.in) != MC_OK ||
        mc_buffer_create(b->dev, &bo, &nv.out) != MC_OK || mc_buffer_create(b->dev, &bt, &nv.taps) != MC_OK) {
        rc = mc_cli_fail("stream setup", MC_ERR_NO_MEMORY);
        goto out;
    }
    /* every block once through the naive loop: the expected outputs */
    if (naive_run(&c, &nv, 0, SB_BLOCKS + pl.warm, NULL) < 0) {
        rc = mc_cli_fail("stream: naive loop", MC_ERR_INTERNAL);
        goto out;
    }
    for (uint32_t slots = 1; slots <= 4; slots++) {
        if ((rc = measure(b, &c, &nv, &run, &pl, slots, 0, 0)) != 0) goto out;
        char metric[64];
        const char *sfx = slots == 1 ? "" : "s";
        int nl = pl.rounds * (int)pl.per;
        snprintf(metric, sizeof metric, "items/s, %u slot%s (FIR 1024x32 + gain)", slots, sfx);
        mc_bench_add(b, "stream", metric, "items/s", mc_bench_median(pl.rate_o, pl.rounds),
                     mc_bench_iqr(pl.rate_o, pl.rounds), mc_bench_median(pl.rate_n, pl.rounds),
                     mc_bench_iqr(pl.rate_n, pl.rounds), "naive loop", true);
        snprintf(metric, sizeof metric, "latency median, %u slot%s", slots, sfx);
        mc_bench_add(b, "stream", metric, "us", mc_bench_median(pl.lat_o, nl), mc_bench_iqr(pl.lat_o, nl),
                     mc_bench_median(pl.lat_n, nl), mc_bench_iqr(pl.lat_n, nl), "naive loop", false);
        snprintf(metric, sizeof metric, "latency p99, %u slot%s", slots, sfx);
        mc_bench_add(b, "stream", metric, "us", mc_bench_percentile(pl.lat_o, nl, 0.99), 0,
                     mc_bench_percentile(pl.lat_n, nl, 0.99), 0, "naive loop", false);
        if (slots == 3) rate3 = mc_bench_median(pl.rate_o, pl.rounds);
    }
    /* What replaying a slot's command list is worth: the same stream with
     * every item recorded anew. */
    if ((rc = measure(b, &c, &nv, &run, &pl, 3, MC_STREAM_RECORD_EACH, 0)) != 0) goto out;
    mc_bench_add(b, "stream", "items/s, 3 slots, each item recorded anew", "items/s",
                 mc_bench_median(pl.rate_o, pl.rounds), mc_bench_iqr(pl.rate_o, pl.rounds),
                 mc_bench_median(pl.rate_n, pl.rounds), mc_bench_iqr(pl.rate_n, pl.rounds), "naive loop", true);
    /* What lanes are worth: 3 slots on one queue, and on 3 (the default
     * on a CUDA GPU is one lane per slot, the rows above). */
    if ((rc = measure(b, &c, &nv, &run, &pl, 3, 0, 1)) != 0) goto out;
    mc_bench_add(b, "stream", "items/s, 3 slots, 1 lane (one queue)", "items/s", mc_bench_median(pl.rate_o, pl.rounds),
                 mc_bench_iqr(pl.rate_o, pl.rounds), mc_bench_median(pl.rate_n, pl.rounds),
                 mc_bench_iqr(pl.rate_n, pl.rounds), "naive loop", true);
    if ((rc = measure(b, &c, &nv, &run, &pl, 3, 0, 3)) != 0) goto out;
    mc_bench_add(b, "stream", "items/s, 3 slots, 3 lanes (queues)", "items/s", mc_bench_median(pl.rate_o, pl.rounds),
                 mc_bench_iqr(pl.rate_o, pl.rounds), mc_bench_median(pl.rate_n, pl.rounds),
                 mc_bench_iqr(pl.rate_n, pl.rounds), "naive loop", true);
    /* The device's ceiling, measured in rounds beside the naive loop. */
    for (int r = 0; r < pl.rounds; r++) {
        pl.rate_n[r] = naive_run(&c, &nv, 0, pl.per, NULL);
        pl.rate_o[r] = ceiling_run(&c, &nv, pl.per);
        if (pl.rate_o[r] < 0 || pl.rate_n[r] < 0) {
            rc = mc_cli_fail("stream: the ceiling run failed", MC_ERR_INTERNAL);
            goto out;
        }
    }
    double ceiling = mc_bench_median(pl.rate_o, pl.rounds);
    mc_bench_add(b, "stream", "device ceiling (one queue): chains back to back", "items/s", ceiling,
                 mc_bench_iqr(pl.rate_o, pl.rounds), mc_bench_median(pl.rate_n, pl.rounds),
                 mc_bench_iqr(pl.rate_n, pl.rounds), "naive loop", true);
    mc_bench_add(b, "stream", "items/s, 3 slots, of the device ceiling", "items/s", rate3, 0, ceiling, 0,
                 "device ceiling", true);
    double raw = raw_stream_rate(b, &c, pl.rounds, pl.per, 3);
    if (raw > 0)
        mc_bench_add(b, "stream", "items/s, 3 slots vs the raw driver", "items/s", rate3, 0, raw, 0,
                     "raw: slot graphs, one stream", true);
out:
    pthread_mutex_destroy(&run.lock);
    pthread_cond_destroy(&run.cv);
    free(run.start_us);
    free(run.lat);
    free(pl.rate_o);
    free(pl.rate_n);
    free(pl.lat_o);
    free(pl.lat_n);
    mc_buffer_release(nv.in);
    mc_buffer_release(nv.out);
    mc_buffer_release(nv.taps);
    mc_queue_release(nv.q);
    mc_pipeline_release(c.fir);
    mc_pipeline_release(c.gain);
    free(c.sig);
    return rc;
}
