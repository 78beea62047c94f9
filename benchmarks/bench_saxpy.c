/*
 * bench saxpy: a bandwidth-bound kernel through the runtime vs the raw path
 * (the CUDA driver launching the same kernel; a plain OpenMP loop on the
 * CPU). GB/s counts 12 bytes per element: read x, read y, write y.
 */
#include "bench.h"
#include "raw.h"

#include <stdio.h>
#include <stdlib.h>

/* One saxpy over n floats through pl: commit, wait; seconds in *us. */
static int saxpy_once(mc_queue *q, mc_pipeline *pl, mc_buffer *x, mc_buffer *y, size_t n, uint32_t tg, double *us)
{
    uint32_t un = (uint32_t)n;
    float a = 2.0f;
    mc_cmdbuf *cb = NULL;
    mc_pass *p;
    double t0 = mc_bench_now_us();
    int rc = 0;
    if (mc_cmdbuf_create(q, NULL, &cb) != MC_OK || mc_cmdbuf_begin_pass(cb, "saxpy", &p) != MC_OK ||
        mc_pass_set_pipeline(p, pl) != MC_OK || mc_pass_set_buffer(p, 0, y, 0) != MC_OK ||
        mc_pass_set_buffer(p, 1, x, 0) != MC_OK || mc_pass_set_bytes(p, 2, &a, 4) != MC_OK ||
        mc_pass_set_bytes(p, 3, &un, 4) != MC_OK ||
        mc_pass_dispatch(p, (mc_size3){(uint32_t)((n + tg - 1) / tg), 1, 1}, (mc_size3){tg, 1, 1}) != MC_OK ||
        mc_pass_end(p) != MC_OK || mc_cmdbuf_commit(cb) != MC_OK || mc_cmdbuf_wait(cb, MC_WAIT_FOREVER) != MC_OK ||
        mc_cmdbuf_status(cb, NULL) != MC_OK)
        rc = -1;
    *us = mc_bench_now_us() - t0;
    mc_cmdbuf_release(cb);
    return rc;
}

int mc_bench_saxpy(mc_bench *b)
{
    /* Big enough that launch costs vanish: 1 GiB per array on a GPU. */
    size_t n = b->info.kind == MC_DEVICE_CPU ? (size_t)1 << 24 : (size_t)1 << 28;
    if (b->quick) n >>= 4;
    mc_pipeline *pl = mc_cli_pipeline(b->dev, "basic", "saxpy");
    if (!pl) return 1;
    /* On CUDA also the MSL kernel (basic.metal) beside its CUDA twin. */
    mc_pipeline *msl = NULL;
    if (b->info.kind == MC_DEVICE_CUDA && !(msl = mc_cli_pipeline_ext(b->dev, "basic", ".metal", "saxpy")))
        fprintf(stderr, "saxpy: the MSL kernel did not build on this device; no MSL row\n");
    mc_buffer *x = NULL, *y = NULL;
    mc_queue *q = NULL;
    mc_buffer_desc bd = {n * sizeof(float), MC_STORAGE_PRIVATE, "saxpy", NULL};
    int reps = b->reps < 20 ? b->reps : 20, rc = 0;
    double *ours = calloc((size_t)reps, sizeof *ours), *raw = calloc((size_t)reps, sizeof *raw);
    double *msl_rate = calloc((size_t)reps, sizeof *msl_rate);
    mc_raw *r = mc_raw_open(b->info.kind, b->info.index);
    if (!ours || !raw || !msl_rate || mc_buffer_create(b->dev, &bd, &x) != MC_OK ||
        mc_buffer_create(b->dev, &bd, &y) != MC_OK || mc_queue_create(b->dev, NULL, &q) != MC_OK) {
        rc = mc_cli_fail("saxpy setup", MC_ERR_OUT_OF_MEMORY);
        goto out;
    }
    mc_pipeline_info pi;
    mc_pipeline_get_info(pl, &pi);
    uint32_t tg = pi.max_total_threads_per_threadgroup >= 256 ? 256 : pi.max_total_threads_per_threadgroup;
    if (b->info.kind == MC_DEVICE_CPU) tg = 1024; /* one call per 1024 elements amortises the call */
    uint32_t tg_msl = tg;
    if (msl) {
        mc_pipeline_get_info(msl, &pi);
        tg_msl = pi.max_total_threads_per_threadgroup >= 256 ? 256 : pi.max_total_threads_per_threadgroup;
    }
    for (int i = -2; i < reps; i++) { /* two warm-ups each */
        double t_ours = 0, t_msl = 0;
        if (saxpy_once(q, pl, x, y, n, tg, &t_ours)) {
            rc = mc_cli_fail("saxpy", MC_ERR_INTERNAL);
            goto out;
        }
        double t1 = mc_bench_now_us();
        if (r && mc_raw_saxpy(r, n)) {
            rc = mc_cli_fail("raw saxpy", MC_ERR_INTERNAL);
            goto out;
        }
        double t2 = mc_bench_now_us();
        if (msl && saxpy_once(q, msl, x, y, n, tg_msl, &t_msl)) {
            rc = mc_cli_fail("saxpy (MSL)", MC_ERR_INTERNAL);
            goto out;
        }
        if (i >= 0) {
            ours[i] = 12.0 * (double)n / t_ours / 1e3; /* GB/s */
            raw[i] = 12.0 * (double)n / (t2 - t1) / 1e3;
            if (msl) msl_rate[i] = 12.0 * (double)n / t_msl / 1e3;
        }
    }
    mc_bench_add(b, "saxpy", r ? "bandwidth, 12 bytes per element" : "bandwidth (no raw baseline in this build)",
                 "GB/s", mc_bench_median(ours, reps), mc_bench_iqr(ours, reps), r ? mc_bench_median(raw, reps) : 0,
                 r ? mc_bench_iqr(raw, reps) : 0, r ? mc_raw_saxpy_name(r) : "none", true);
    if (msl)
        mc_bench_add(b, "saxpy", "bandwidth, the MSL kernel vs its CUDA twin", "GB/s", mc_bench_median(msl_rate, reps),
                     mc_bench_iqr(msl_rate, reps), mc_bench_median(ours, reps), mc_bench_iqr(ours, reps),
                     "basic.cu through the runtime", true);
out:
    mc_raw_close(r);
    free(ours);
    free(raw);
    free(msl_rate);
    mc_queue_release(q);
    mc_buffer_release(x);
    mc_buffer_release(y);
    mc_pipeline_release(pl);
    mc_pipeline_release(msl);
    return rc;
}
