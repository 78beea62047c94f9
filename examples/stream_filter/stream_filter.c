/*
 * A streaming filter: blocks of audio-rate samples go through a stream to
 * the default device (MC_DEVICE=cpu|cuda|metal to choose), through an FIR
 * low-pass and a gain, and come back in order; every block is checked
 * against a CPU reference. The Anukari use case (F692): a continuous
 * CPU/GPU flow of small blocks, three in flight (F705).
 *
 * The filter's state (the last taps-1 input samples) is carried by the
 * items themselves: each block is sent with the history it needs in front
 * of it. So a block's output depends on that block's item alone, which is
 * what makes it safe to have several in flight and to replay one after a
 * fault (MC_INJECT_FAULTS="page-fault@20,device-lost@150" shows it): a
 * kernel that kept the history in a device buffer would see it advanced
 * twice by a replay.
 *
 *   stream_filter [KERNEL_DIR] [BLOCKS]
 */
#define _POSIX_C_SOURCE 200809L /* clock_gettime */

#include <mc/mc.h>

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define BLOCK 1024u  /* samples per block */
#define NTAPS 32u    /* FIR length */
#define RATE 48000.0 /* samples per second, for the real-time figure */
#define TOLERANCE 1e-5f
#define PI 3.14159265358979323846

#define CHECK(call)                                                                                             \
    do {                                                                                                        \
        mc_status s_ = (call);                                                                                  \
        if (s_ != MC_OK) {                                                                                      \
            fprintf(stderr, "stream_filter: %s failed: %s (%s)\n", #call, mc_status_name(s_), mc_last_error()); \
            exit(1);                                                                                            \
        }                                                                                                       \
    } while (0)

typedef struct filter {
    const char *kernel_dir;
    float taps[NTAPS];
    uint32_t n, ntaps;
    float gain;
} filter;

/* What setup made on a device; teardown releases it. */
typedef struct made {
    mc_pipeline *fir, *gain;
    mc_buffer *taps;
} made;

/* Called by mc_stream_create, and again on a reopened device after one was
 * lost: everything the passes use on that device. */
static mc_status setup(void *user, mc_device *dev, mc_stream_binding *b)
{
    filter *f = user;
    mc_status s;
    char path[4096];
    snprintf(path, sizeof path, "%s/fir.metal", f->kernel_dir); /* MSL: one source for every device */
    mc_library *lib;
    char *log = NULL;
    s = mc_library_create_from_file(dev, path, MC_LANG_UNSET, NULL, &lib, &log);
    if (s != MC_OK) {
        fprintf(stderr, "stream_filter: cannot build %s: %s\n%s\n", path, mc_last_error(), log ? log : "");
        mc_free(log);
        return s;
    }
    made *m = calloc(1, sizeof *m);
    if (!m) {
        mc_library_release(lib);
        return MC_ERR_NO_MEMORY;
    }
    mc_pipeline_desc pd = MC_PIPELINE_DESC_INIT;
    pd.library = lib;
    pd.function = "fir";
    s = mc_pipeline_create(dev, &pd, &m->fir);
    pd.function = "gain";
    if (s == MC_OK) s = mc_pipeline_create(dev, &pd, &m->gain);
    mc_library_release(lib);
    mc_buffer_desc bd = MC_BUFFER_DESC_INIT;
    bd.size = sizeof f->taps;
    bd.storage = MC_STORAGE_PRIVATE; /* every thread reads every tap: keep them in device memory */
    bd.label = "fir taps";
    bd.initial_data = f->taps;
    if (s == MC_OK) s = mc_buffer_create(dev, &bd, &m->taps);
    if (s != MC_OK) {
        mc_pipeline_release(m->fir);
        mc_pipeline_release(m->gain);
        free(m);
        return s;
    }
    b->user_data = m;

    /* pass 0: out = fir(in); pass 1: out *= gain */
    uint32_t tg = 64;
    mc_stream_pass *p = &b->passes[0];
    p->label = "fir";
    p->pipeline = m->fir;
    p->threadgroups = (mc_size3){(f->n + tg - 1) / tg, 1, 1};
    p->threads_per_threadgroup = (mc_size3){tg, 1, 1};
    p->args[0].kind = MC_STREAM_ARG_OUTPUT;
    p->args[1].kind = MC_STREAM_ARG_INPUT;
    p->args[2].kind = MC_STREAM_ARG_BUFFER;
    p->args[2].buffer = m->taps;
    p->args[3].kind = MC_STREAM_ARG_BYTES;
    p->args[3].bytes = &f->n;
    p->args[3].len = sizeof f->n;
    p->args[4].kind = MC_STREAM_ARG_BYTES;
    p->args[4].bytes = &f->ntaps;
    p->args[4].len = sizeof f->ntaps;
    p->threadgroup_memory[0] = (tg + NTAPS - 1) * sizeof(float); /* the group's inputs, staged */
    p = &b->passes[1];
    p->label = "gain";
    p->pipeline = m->gain;
    p->threadgroups = (mc_size3){(f->n + tg - 1) / tg, 1, 1};
    p->threads_per_threadgroup = (mc_size3){tg, 1, 1};
    p->args[0].kind = MC_STREAM_ARG_OUTPUT;
    p->args[1].kind = MC_STREAM_ARG_BYTES;
    p->args[1].bytes = &f->gain;
    p->args[1].len = sizeof f->gain;
    p->args[2].kind = MC_STREAM_ARG_BYTES;
    p->args[2].bytes = &f->n;
    p->args[2].len = sizeof f->n;
    b->pass_count = 2;
    return MC_OK;
}

static void teardown(void *user, mc_stream_binding *b)
{
    (void)user;
    made *m = b->user_data;
    if (!m) return;
    mc_pipeline_release(m->fir);
    mc_pipeline_release(m->gain);
    mc_buffer_release(m->taps);
    free(m);
}

/* The producer: block b goes out with the NTAPS-1 samples before it. */
typedef struct producer {
    mc_stream *stream;
    const float *signal; /* NTAPS-1 zeros, then the samples */
    uint32_t blocks;
    mc_status status;
} producer;

static void *produce(void *arg)
{
    producer *p = arg;
    for (uint32_t b = 0; b < p->blocks; b++) {
        mc_stream_slot slot;
        p->status = mc_stream_acquire(p->stream, MC_WAIT_FOREVER, &slot); /* waits while 3 are in flight */
        if (p->status != MC_OK) return NULL;
        memcpy(slot.input, p->signal + (size_t)b * BLOCK, slot.size);
        p->status = mc_stream_submit(p->stream, slot.index, b);
        if (p->status != MC_OK) return NULL;
    }
    /* Everything submitted is delivered before close returns. */
    p->status = mc_stream_close(p->stream, true);
    return NULL;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
    filter f;
    memset(&f, 0, sizeof f);
    f.kernel_dir = argc > 1 ? argv[1] : MC_SOURCE_DIR "/examples/kernels";
    uint32_t blocks = argc > 2 ? (uint32_t)strtoul(argv[2], NULL, 10) : 2000u;
    if (blocks == 0) blocks = 1;
    f.n = BLOCK;
    f.ntaps = NTAPS;
    f.gain = 0.8f;
    /* A windowed-sinc low-pass at a quarter of the sample rate. */
    double sum = 0;
    for (uint32_t k = 0; k < NTAPS; k++) {
        double m = k - (NTAPS - 1) / 2.0, x = 0.5 * PI * m;
        double sinc = fabs(m) < 1e-9 ? 1.0 : sin(x) / x;
        double w = 0.54 - 0.46 * cos(2 * PI * k / (NTAPS - 1));
        f.taps[k] = (float)(sinc * w);
        sum += f.taps[k];
    }
    for (uint32_t k = 0; k < NTAPS; k++) f.taps[k] = (float)(f.taps[k] / sum);

    /* The input: two tones and some noise. */
    size_t total = (size_t)blocks * BLOCK;
    float *signal = calloc(total + NTAPS - 1, sizeof *signal), *ref = malloc(total * sizeof *ref);
    if (!signal || !ref) return 1;
    uint32_t rng = 1;
    for (size_t i = 0; i < total; i++) {
        rng = rng * 1664525u + 1013904223u;
        double t = (double)i / RATE;
        signal[NTAPS - 1 + i] = (float)(0.5 * sin(2 * PI * 440 * t) + 0.3 * sin(2 * PI * 15000 * t) +
                                        0.05 * ((double)(rng >> 8) / (1u << 24) - 0.5));
    }
    /* The CPU reference, in the same order of summation as the kernels. */
    for (size_t i = 0; i < total; i++) {
        const float *x = signal + i + NTAPS - 1;
        float acc = 0.0f;
        for (uint32_t k = 0; k < NTAPS; k++) acc += f.taps[k] * x[-(int32_t)k];
        ref[i] = acc * f.gain;
    }

    mc_device *dev;
    CHECK(mc_device_open(NULL, &dev));
    mc_device_info info;
    CHECK(mc_device_get_info(dev, &info));

    mc_stream_desc sd = MC_STREAM_DESC_INIT;
    sd.device = dev;
    sd.setup = setup;
    sd.teardown = teardown;
    sd.user = &f;
    sd.item_size = (BLOCK + NTAPS - 1) * sizeof(float); /* history + block */
    sd.result_size = BLOCK * sizeof(float);
    sd.slots = 3;
    sd.label = "stream_filter";
    mc_stream *stream;
    CHECK(mc_stream_create(&sd, &stream));

    double t0 = now_s();
    producer p = {stream, signal, blocks, MC_OK};
    pthread_t thread;
    if (pthread_create(&thread, NULL, produce, &p) != 0) return 1;

    /* The consumer: results in submission order until the stream ends. */
    uint32_t received = 0, wrong = 0, failed = 0;
    float max_err = 0;
    mc_stream_result r;
    mc_status s;
    while ((s = mc_stream_pull(stream, MC_WAIT_FOREVER, &r)) == MC_OK) {
        if (r.tag != received) {
            fprintf(stderr, "stream_filter: block %llu arrived where %u was due\n", (unsigned long long)r.tag,
                    received);
            wrong++;
        }
        if (r.status != MC_OK) {
            fprintf(stderr, "stream_filter: block %llu failed: %s: %s\n", (unsigned long long)r.tag,
                    mc_status_name(r.status), r.message);
            failed++;
        } else {
            const float *out = r.output, *want = ref + (size_t)r.tag * BLOCK;
            for (uint32_t i = 0; i < BLOCK; i++) {
                float e = fabsf(out[i] - want[i]);
                if (e > max_err) max_err = e;
            }
        }
        received++;
        CHECK(mc_stream_release_result(stream, &r));
    }
    double secs = now_s() - t0;
    pthread_join(thread, NULL);
    if (s != MC_ERR_INVALID_STATE) CHECK(s); /* INVALID_STATE: closed, all pulled */
    CHECK(p.status);

    mc_stream_stats st;
    CHECK(mc_stream_get_stats(stream, &st));
    bool ok = received == blocks && !wrong && !failed && max_err <= TOLERANCE;
    printf(
        "stream_filter on %s (%s): %u blocks of %u samples, %u taps, %u slots: %s (max error %.2g), "
        "%.0f blocks/s (%.0fx real time at %.0f kHz), %u recover%s, %u device reopen%s\n",
        mc_device_kind_name(info.kind), info.name, received, BLOCK, NTAPS, st.slots,
        ok ? "matches the CPU reference" : "WRONG", (double)max_err, received / secs,
        received * (double)BLOCK / RATE / secs, RATE / 1000, st.recoveries, st.recoveries == 1 ? "y" : "ies",
        st.device_reopens, st.device_reopens == 1 ? "" : "s");

    mc_stream_release(stream);
    mc_device_release(dev);
    free(signal);
    free(ref);
    return ok ? 0 : 1;
}
