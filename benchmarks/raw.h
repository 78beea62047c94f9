/* Raw baselines: each device's rawest way to do what a benchmark measures,
 * without the runtime (a bare worker thread on the CPU; the CUDA driver API
 * directly on NVIDIA). */
#ifndef MC_BENCHMARKS_RAW_H
#define MC_BENCHMARKS_RAW_H

#include "mc/mc.h"

typedef struct mc_raw mc_raw;

/* NULL when this build has no raw baseline for the device (mc_raw_error). */
mc_raw *mc_raw_open(mc_device_kind kind, int index);
void mc_raw_close(mc_raw *r);
const char *mc_raw_name(const mc_raw *r);
const char *mc_raw_error(void);
/* One empty kernel, launched and waited for. 0 on success. */
int mc_raw_round_trip(mc_raw *r);
/* -1 when the baseline has no batch path. */
int mc_raw_batch(mc_raw *r, int passes, int mode);
int mc_raw_saxpy(mc_raw *r, size_t n);
const char *mc_raw_saxpy_name(const mc_raw *r);

/* The stream benchmark's work for a raw baseline: items blocks (cycling
 * through nblocks, each block_floats long) through the fir then the gain
 * kernel of `source` (benchmarks/baselines/fir.cu), slots of them in flight.
 * want[b] is the sum of block b's output from the runtime's naive loop:
 * every output is checked against it. */
typedef struct mc_raw_stream_work {
    const char *source;
    const float *blocks;
    size_t block_floats;
    uint32_t nblocks;
    const double *want;
    const float *taps;
    uint32_t n, ntaps, group, tile_bytes;
    float g;
    uint32_t items, slots;
} mc_raw_stream_work;
/* Items per second, or -1 when the baseline has no stream path or failed
 * (mc_raw_error says why). */
double mc_raw_stream(mc_raw *r, const mc_raw_stream_work *w);

/* Per-device implementations behind the dispatcher in raw.c. */
typedef struct mc_raw_ops {
    const char *name;
    void *(*open)(int index);
    void (*close)(void *impl);
    int (*round_trip)(void *impl);
    /* optional: `passes` small launches; mode 0 = wait after each, 1 = back
     * to back then wait, 2 = one recorded graph; 3 = launch that graph
     * without waiting, 4 = wait for what was launched (3 and 4 split mode
     * 2, so a benchmark can time the launch call alone). */
    int (*batch)(void *impl, int passes, int mode);
    /* optional: y = a*x + y over n floats in the baseline's own memory,
     * run and waited for. */
    int (*saxpy)(void *impl, size_t n);
    const char *saxpy_name;
    /* optional: the stream benchmark's work the rawest pipelined way (see
     * mc_raw_stream). */
    double (*stream)(void *impl, const mc_raw_stream_work *w);
} mc_raw_ops;

extern const mc_raw_ops mc_raw_cpu_ops;
#ifdef MC_HAVE_CUDA_RAW
extern const mc_raw_ops mc_raw_cuda_ops;
#endif

#endif
