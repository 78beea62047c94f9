/*
 * bench command-list: 50 small dispatches per command buffer, executed from
 * a command list recorded once vs encoded again for every command buffer
 * (F149, F672, F673). Two figures per side:
 *  - CPU time per submission: this thread's CPU time
 *    (CLOCK_THREAD_CPUTIME_ID) from creating the command buffer through
 *    recording it to commit returning: what the application pays per
 *    submission, wherever the device runs;
 *  - total: wall time from commit to completion.
 * On CUDA the list also stands beside the rawest way to run the same 50
 * launches: one CUDA graph launched with cuGraphLaunch (raw_cuda.c),
 * its launch call's CPU time and its launch-to-synchronised time.
 * Every dispatch adds one to each of 4096 words, with a barrier between
 * dispatches; the final count says nothing was lost.
 */
#include "bench.h"
#include "raw.h"

#include <stdlib.h>
#include <time.h>

#define CL_DISPATCHES 50
#define CL_ELEMS 4096u
#define CL_TG 256u
#define CL_BLOCK 20 /* submissions per side before switching */

static double thread_cpu_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

/* The 50 dispatches, into a pass or a list being recorded. */
static mc_status record(mc_pass *p, mc_pipeline *pl, mc_buffer *buf)
{
    uint32_t n = CL_ELEMS;
    mc_status s = MC_OK;
    for (int k = 0; k < CL_DISPATCHES && s == MC_OK; k++) {
        if (k) s = mc_pass_barrier(p);
        if (s == MC_OK) s = mc_pass_set_pipeline(p, pl);
        if (s == MC_OK) s = mc_pass_set_buffer(p, 0, buf, 0);
        if (s == MC_OK) s = mc_pass_set_bytes(p, 1, &n, sizeof n);
        if (s == MC_OK) s = mc_pass_dispatch(p, (mc_size3){CL_ELEMS / CL_TG, 1, 1}, (mc_size3){CL_TG, 1, 1});
    }
    return s;
}

/* One submission; list NULL: encoded. cpu: record+commit CPU time; total:
 * commit to completion. */
static int submit(mc_queue *q, mc_pipeline *pl, mc_buffer *buf, mc_cmdlist *list, double *cpu, double *total)
{
    double c0 = thread_cpu_us();
    mc_cmdbuf *cb;
    if (mc_cmdbuf_create(q, NULL, &cb) != MC_OK) return -1;
    mc_status s;
    if (list) {
        s = mc_cmdbuf_execute_cmdlist(cb, list, 0, MC_CMDLIST_ALL);
    } else {
        mc_pass *p;
        s = mc_cmdbuf_begin_pass(cb, "50 dispatches", &p);
        if (s == MC_OK) s = record(p, pl, buf);
        if (s == MC_OK) s = mc_pass_end(p);
    }
    double w0 = mc_bench_now_us();
    if (s == MC_OK) s = mc_cmdbuf_commit(cb);
    double c1 = thread_cpu_us();
    if (s == MC_OK) s = mc_cmdbuf_wait(cb, MC_WAIT_FOREVER);
    double w1 = mc_bench_now_us();
    if (s == MC_OK) s = mc_cmdbuf_status(cb, NULL);
    mc_cmdbuf_release(cb);
    if (cpu) *cpu = c1 - c0;
    if (total) *total = w1 - w0;
    return s == MC_OK ? 0 : -1;
}

int mc_bench_command_list(mc_bench *b)
{
    mc_pipeline *pl = mc_cli_pipeline(b->dev, "basic", "add_one");
    if (!pl) return 1;
    mc_queue *q = NULL;
    mc_buffer *buf = NULL;
    mc_cmdlist *list = NULL;
    mc_raw *r = NULL;
    mc_buffer_desc bd = {CL_ELEMS * 4, MC_STORAGE_PRIVATE, "command-list", NULL};
    mc_cmdlist_desc ld = {"50 dispatches", CL_DISPATCHES};
    int n = b->reps * 5, rc = 0;
    uint64_t submissions = 0;
    double *lc = calloc((size_t)n, sizeof(double)), *lt = calloc((size_t)n, sizeof(double));
    double *ec = calloc((size_t)n, sizeof(double)), *et = calloc((size_t)n, sizeof(double));
    mc_pass *p;
    if (!lc || !lt || !ec || !et || mc_queue_create(b->dev, NULL, &q) != MC_OK ||
        mc_buffer_create(b->dev, &bd, &buf) != MC_OK || mc_cmdlist_create(b->dev, &ld, &list) != MC_OK ||
        mc_cmdlist_begin(list, &p) != MC_OK || record(p, pl, buf) != MC_OK || mc_cmdlist_end(list) != MC_OK) {
        rc = mc_cli_fail("command-list setup", MC_ERR_INTERNAL);
        goto out;
    }
    for (int i = 0; i < 20; i++, submissions += 2) /* warm both paths */
        if (submit(q, pl, buf, list, NULL, NULL) || submit(q, pl, buf, NULL, NULL, NULL)) {
            rc = mc_cli_fail("command-list", MC_ERR_INTERNAL);
            goto out;
        }
    /* Alternate blocks, so drift hits both sides alike. */
    for (int i = 0; i < n; i += CL_BLOCK) {
        int m = n - i < CL_BLOCK ? n - i : CL_BLOCK;
        for (int k = 0; k < m; k++, submissions++)
            if (submit(q, pl, buf, list, &lc[i + k], &lt[i + k])) rc = 1;
        for (int k = 0; k < m; k++, submissions++)
            if (submit(q, pl, buf, NULL, &ec[i + k], &et[i + k])) rc = 1;
        if (rc) {
            rc = mc_cli_fail("command-list", MC_ERR_INTERNAL);
            goto out;
        }
    }
    uint32_t first = 0;
    mc_buffer_read(buf, 0, &first, sizeof first);
    if (first != (uint32_t)(submissions * CL_DISPATCHES)) {
        fprintf(stderr, "bench command-list: wrong result %u, want %u\n", first,
                (uint32_t)(submissions * CL_DISPATCHES));
        rc = 1;
        goto out;
    }
    mc_bench_add(b, "command-list", "CPU time per submission of 50 dispatches", "us", mc_bench_median(lc, n),
                 mc_bench_iqr(lc, n), mc_bench_median(ec, n), mc_bench_iqr(ec, n), "encoded each time", false);
    mc_bench_add(b, "command-list", "total, commit to completion", "us", mc_bench_median(lt, n), mc_bench_iqr(lt, n),
                 mc_bench_median(et, n), mc_bench_iqr(et, n), "encoded each time", false);

    /* Where the device has a raw graph (CUDA): beside the same 50 launches as
     * one CUDA graph. Mode 3 launches it without waiting, mode 4 waits. */
    r = b->info.kind == MC_DEVICE_CUDA ? mc_raw_open(b->info.kind, b->info.index) : NULL;
    if (r && mc_raw_batch(r, CL_DISPATCHES, 2) == 0) {
        double *rc_ = ec, *rt = et; /* reuse the encoded arrays for the raw side */
        for (int i = 0; i < n; i += CL_BLOCK) {
            int m = n - i < CL_BLOCK ? n - i : CL_BLOCK;
            for (int k = 0; k < m; k++)
                if (submit(q, pl, buf, list, &lc[i + k], &lt[i + k])) rc = 1;
            for (int k = 0; k < m; k++) {
                double c0 = thread_cpu_us(), w0 = mc_bench_now_us();
                if (mc_raw_batch(r, CL_DISPATCHES, 3)) rc = 1;
                double c1 = thread_cpu_us();
                if (mc_raw_batch(r, CL_DISPATCHES, 4)) rc = 1;
                rc_[i + k] = c1 - c0;
                rt[i + k] = mc_bench_now_us() - w0;
            }
            if (rc) {
                rc = mc_cli_fail("command-list vs raw graph", MC_ERR_INTERNAL);
                goto out;
            }
        }
        mc_bench_add(b, "command-list", "CPU time per submission vs cuGraphLaunch", "us", mc_bench_median(lc, n),
                     mc_bench_iqr(lc, n), mc_bench_median(rc_, n), mc_bench_iqr(rc_, n), "raw: one graph", false);
        mc_bench_add(b, "command-list", "total, launch to completion vs the raw graph", "us", mc_bench_median(lt, n),
                     mc_bench_iqr(lt, n), mc_bench_median(rt, n), mc_bench_iqr(rt, n), "raw: one graph", false);
    }
out:
    mc_raw_close(r);
    free(lc);
    free(lt);
    free(ec);
    free(et);
    mc_cmdlist_release(list);
    mc_buffer_release(buf);
    mc_queue_release(q);
    mc_pipeline_release(pl);
    return rc;
}
