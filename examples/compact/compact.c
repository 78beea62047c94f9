/*
 * Stream compaction on the device, in one command buffer with no CPU wait
 * between its stages (F674): the first stage decides how much work the last
 * one does. MC_DEVICE=cpu|cuda|metal chooses the device.
 *
 *   stage 1   compact_filter: keep the values over a threshold, appending
 *             them through an atomic counter;
 *   barrier   every survivor is counted before the next stage reads the count;
 *   stage 1b  compact_args (one thread): the count becomes the threadgroup
 *             grid of stage 2 (three uint32, F148);
 *   barrier
 *   stage 2   compact_square, dispatched indirectly: exactly
 *             ceil(survivors / 256) threadgroups, read by the device when it
 *             gets there; none at all when nothing survived.
 *
 * Each threshold's result is checked against a CPU reference (the kept
 * values and their squares, as multisets: the atomic makes the order
 * arbitrary).
 *
 *   compact [KERNEL_DIR] [N]
 */
#include <mc/mc.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TG 256u

#define CHECK(call)                                                                                       \
    do {                                                                                                  \
        mc_status s_ = (call);                                                                            \
        if (s_ != MC_OK) {                                                                                \
            fprintf(stderr, "compact: %s failed: %s (%s)\n", #call, mc_status_name(s_), mc_last_error()); \
            exit(1);                                                                                      \
        }                                                                                                 \
    } while (0)

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

static mc_pipeline *pipeline(mc_device *dev, mc_library *lib, const char *fn)
{
    mc_pipeline_desc pd = MC_PIPELINE_DESC_INIT;
    pd.library = lib;
    pd.function = fn;
    pd.max_total_threads_per_threadgroup = TG;
    mc_pipeline *p;
    CHECK(mc_pipeline_create(dev, &pd, &p));
    return p;
}

int main(int argc, char **argv)
{
    const char *kernel_dir = argc > 1 ? argv[1] : MC_SOURCE_DIR "/examples/kernels";
    uint32_t n = argc > 2 ? (uint32_t)strtoul(argv[2], NULL, 10) : 1u << 20;
    if (n == 0) n = 1;

    mc_device *dev;
    CHECK(mc_device_open(NULL, &dev));
    mc_device_info info;
    CHECK(mc_device_get_info(dev, &info));
    char path[4096];
    snprintf(path, sizeof path, "%s/compact.metal", kernel_dir); /* MSL: one source for every device */
    mc_library *lib;
    char *log = NULL;
    mc_status s = mc_library_create_from_file(dev, path, MC_LANG_UNSET, NULL, &lib, &log);
    if (s != MC_OK) {
        fprintf(stderr, "compact: cannot build %s: %s\n%s\n", path, mc_last_error(), log ? log : "");
        mc_free(log);
        return 1;
    }
    mc_pipeline *filter = pipeline(dev, lib, "compact_filter");
    mc_pipeline *args = pipeline(dev, lib, "compact_args");
    mc_pipeline *square = pipeline(dev, lib, "compact_square");
    mc_library_release(lib);

    uint32_t *in = malloc((size_t)n * 4), *kept = malloc((size_t)n * 4), *out = malloc((size_t)n * 4);
    uint32_t *ref = malloc((size_t)n * 4), *ref_sq = malloc((size_t)n * 4);
    if (!in || !kept || !out || !ref || !ref_sq) return 1;
    uint32_t x = 12345;
    for (uint32_t i = 0; i < n; i++) {
        x = x * 1664525u + 1013904223u;
        in[i] = x >> 8; /* 0 .. 2^24-1 */
    }
    mc_buffer_desc bd = MC_BUFFER_DESC_INIT;
    bd.size = (size_t)n * 4;
    bd.storage = MC_STORAGE_PRIVATE;
    bd.label = "in";
    bd.initial_data = in;
    mc_buffer *b_in, *b_kept, *b_out, *b_count, *b_grid, *b_range;
    CHECK(mc_buffer_create(dev, &bd, &b_in));
    bd.initial_data = NULL;
    bd.label = "kept";
    CHECK(mc_buffer_create(dev, &bd, &b_kept));
    bd.label = "out";
    CHECK(mc_buffer_create(dev, &bd, &b_out));
    mc_buffer_desc small = {16, MC_STORAGE_PRIVATE, "count", NULL};
    CHECK(mc_buffer_create(dev, &small, &b_count));
    small.label = "grid";
    CHECK(mc_buffer_create(dev, &small, &b_grid));
    small.label = "range";
    CHECK(mc_buffer_create(dev, &small, &b_range));
    mc_queue *q;
    CHECK(mc_queue_create(dev, NULL, &q));

    /* most survive, a third survive, none survive */
    const uint32_t thresholds[] = {1u << 20, (2u << 24) / 3, 1u << 24};
    int bad = 0;
    for (size_t t = 0; t < sizeof thresholds / sizeof thresholds[0]; t++) {
        uint32_t threshold = thresholds[t], tg = TG, zero = 0;
        mc_cmdbuf *cb;
        mc_cmdbuf_desc cd = {"compact", MC_CMDBUF_TIMESTAMPS};
        CHECK(mc_cmdbuf_create(q, &cd, &cb));
        CHECK(mc_cmdbuf_fill_buffer(cb, b_count, 0, 4, 0));
        mc_pass *p;
        CHECK(mc_cmdbuf_begin_pass(cb, "filter, size, square", &p));
        CHECK(mc_pass_set_pipeline(p, filter));
        CHECK(mc_pass_set_buffer(p, 0, b_in, 0));
        CHECK(mc_pass_set_buffer(p, 1, b_kept, 0));
        CHECK(mc_pass_set_buffer(p, 2, b_count, 0));
        CHECK(mc_pass_set_bytes(p, 3, &n, 4));
        CHECK(mc_pass_set_bytes(p, 4, &threshold, 4));
        CHECK(mc_pass_dispatch(p, (mc_size3){(n + TG - 1) / TG, 1, 1}, (mc_size3){TG, 1, 1}));
        CHECK(mc_pass_barrier(p));
        CHECK(mc_pass_set_pipeline(p, args));
        CHECK(mc_pass_set_buffer(p, 0, b_count, 0));
        CHECK(mc_pass_set_buffer(p, 1, b_grid, 0));
        CHECK(mc_pass_set_bytes(p, 2, &tg, 4));
        CHECK(mc_pass_set_buffer(p, 3, b_range, 0));
        CHECK(mc_pass_dispatch(p, (mc_size3){1, 1, 1}, (mc_size3){1, 1, 1}));
        CHECK(mc_pass_barrier(p));
        CHECK(mc_pass_set_pipeline(p, square));
        CHECK(mc_pass_set_buffer(p, 0, b_kept, 0));
        CHECK(mc_pass_set_buffer(p, 1, b_out, 0));
        CHECK(mc_pass_set_buffer(p, 2, b_count, 0));
        CHECK(mc_pass_set_bytes(p, 3, &zero, 4));
        CHECK(mc_pass_dispatch_indirect(p, b_grid, 0, (mc_size3){TG, 1, 1}));
        CHECK(mc_pass_end(p));
        CHECK(mc_cmdbuf_commit(cb));
        CHECK(mc_cmdbuf_wait(cb, MC_WAIT_FOREVER));
        const char *msg;
        s = mc_cmdbuf_status(cb, &msg);
        if (s != MC_OK) {
            fprintf(stderr, "compact: the command buffer failed: %s: %s\n", mc_status_name(s), msg);
            return 1;
        }
        uint64_t t0, t1;
        CHECK(mc_cmdbuf_get_gpu_time(cb, &t0, &t1));
        mc_cmdbuf_release(cb);

        uint32_t count, grid[3];
        CHECK(mc_buffer_read(b_count, 0, &count, 4));
        CHECK(mc_buffer_read(b_grid, 0, grid, sizeof grid));
        uint32_t m = 0;
        for (uint32_t i = 0; i < n; i++)
            if (in[i] > threshold) {
                ref[m] = in[i];
                ref_sq[m] = in[i] * in[i];
                m++;
            }
        bool ok = count == m && grid[0] == (m + TG - 1) / TG;
        if (ok && m) {
            CHECK(mc_buffer_read(b_kept, 0, kept, (size_t)m * 4));
            CHECK(mc_buffer_read(b_out, 0, out, (size_t)m * 4));
            qsort(kept, m, 4, cmp_u32);
            qsort(out, m, 4, cmp_u32);
            qsort(ref, m, 4, cmp_u32);
            qsort(ref_sq, m, 4, cmp_u32);
            ok = memcmp(kept, ref, (size_t)m * 4) == 0 && memcmp(out, ref_sq, (size_t)m * 4) == 0;
        }
        printf(
            "compact on %s: %u of %u values over %u survive; stage 2 ran %u threadgroups; %.3f ms on the device; "
            "%s\n",
            info.name, count, n, threshold, grid[0], (double)(t1 - t0) / 1e6,
            ok ? "matches the CPU reference" : "DIFFERS from the CPU reference");
        if (!ok) bad = 1;
    }

    mc_queue_release(q);
    mc_buffer_release(b_in);
    mc_buffer_release(b_kept);
    mc_buffer_release(b_out);
    mc_buffer_release(b_count);
    mc_buffer_release(b_grid);
    mc_buffer_release(b_range);
    mc_pipeline_release(filter);
    mc_pipeline_release(args);
    mc_pipeline_release(square);
    mc_device_release(dev);
    free(in);
    free(kept);
    free(out);
    free(ref);
    free(ref_sq);
    return bad;
}
