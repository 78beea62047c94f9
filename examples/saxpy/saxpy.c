/*
 * saxpy on the default device (MC_DEVICE=cpu|cuda|metal to choose), checked
 * against a CPU reference. The smallest complete program: device, buffers,
 * a library from source, a pipeline, one command buffer.
 */
#include <mc/mc.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHECK(call)                                                                                     \
    do {                                                                                                \
        mc_status s_ = (call);                                                                          \
        if (s_ != MC_OK) {                                                                              \
            fprintf(stderr, "saxpy: %s failed: %s (%s)\n", #call, mc_status_name(s_), mc_last_error()); \
            exit(1);                                                                                    \
        }                                                                                               \
    } while (0)

int main(int argc, char **argv)
{
    const char *kernel_dir = argc > 1 ? argv[1] : MC_SOURCE_DIR "/examples/kernels";
    uint32_t n = 1u << 22;
    float a = 2.5f;

    mc_device *dev;
    CHECK(mc_device_open(NULL, &dev));
    mc_device_info info;
    CHECK(mc_device_get_info(dev, &info));

    char path[4096];
    snprintf(path, sizeof path, "%s/basic.metal", kernel_dir); /* MSL: one source for every device */
    mc_library *lib;
    char *log = NULL;
    mc_status s = mc_library_create_from_file(dev, path, MC_LANG_UNSET, NULL, &lib, &log);
    if (s != MC_OK) {
        fprintf(stderr, "saxpy: cannot build %s: %s\n%s\n", path, mc_last_error(), log ? log : "");
        mc_free(log);
        return 1;
    }
    mc_pipeline_desc pd = MC_PIPELINE_DESC_INIT;
    pd.library = lib;
    pd.function = "saxpy";
    mc_pipeline *pipe;
    CHECK(mc_pipeline_create(dev, &pd, &pipe));

    mc_buffer_desc bd = MC_BUFFER_DESC_INIT;
    bd.size = (size_t)n * sizeof(float);
    bd.storage = MC_STORAGE_PRIVATE; /* device memory where the device has it */
    mc_buffer *x, *y;
    CHECK(mc_buffer_create(dev, &bd, &x));
    CHECK(mc_buffer_create(dev, &bd, &y));
    float *hx = malloc(bd.size), *hy = malloc(bd.size), *out = malloc(bd.size);
    if (!hx || !hy || !out) return 1;
    for (uint32_t i = 0; i < n; i++) {
        hx[i] = (float)(i % 1000) * 0.5f;
        hy[i] = (float)(i % 77);
    }
    CHECK(mc_buffer_write(x, 0, hx, bd.size));
    CHECK(mc_buffer_write(y, 0, hy, bd.size));

    mc_queue *q;
    CHECK(mc_queue_create(dev, NULL, &q));
    mc_cmdbuf *cb;
    mc_cmdbuf_desc cd = {"saxpy", MC_CMDBUF_TIMESTAMPS};
    CHECK(mc_cmdbuf_create(q, &cd, &cb));
    mc_pass *p;
    CHECK(mc_cmdbuf_begin_pass(cb, "saxpy", &p));
    CHECK(mc_pass_set_pipeline(p, pipe));
    CHECK(mc_pass_set_buffer(p, 0, y, 0));
    CHECK(mc_pass_set_buffer(p, 1, x, 0));
    CHECK(mc_pass_set_bytes(p, 2, &a, sizeof a));
    CHECK(mc_pass_set_bytes(p, 3, &n, sizeof n));
    uint32_t tg = 256;
    CHECK(mc_pass_dispatch(p, (mc_size3){(n + tg - 1) / tg, 1, 1}, (mc_size3){tg, 1, 1}));
    CHECK(mc_pass_end(p));
    CHECK(mc_cmdbuf_commit(cb));
    CHECK(mc_cmdbuf_wait(cb, MC_WAIT_FOREVER));
    const char *msg;
    CHECK(mc_cmdbuf_status(cb, &msg));
    uint64_t t0, t1;
    CHECK(mc_cmdbuf_get_gpu_time(cb, &t0, &t1));
    CHECK(mc_buffer_read(y, 0, out, bd.size));

    size_t bad = 0;
    for (uint32_t i = 0; i < n; i++) {
        float want = a * hx[i] + hy[i];
        if (fabsf(out[i] - want) > 1e-4f * fabsf(want) + 1e-6f) bad++;
    }
    double sec = (double)(t1 - t0) / 1e9;
    printf("saxpy on %s (%s): n=%u, %s, %.3f ms, %.1f GB/s\n", mc_device_kind_name(info.kind), info.name, n,
           bad ? "WRONG" : "matches the CPU reference", sec * 1e3, sec > 0 ? 12.0 * n / sec / 1e9 : 0.0);

    mc_cmdbuf_release(cb);
    mc_queue_release(q);
    mc_buffer_release(x);
    mc_buffer_release(y);
    mc_pipeline_release(pipe);
    mc_library_release(lib);
    mc_device_release(dev);
    free(hx);
    free(hy);
    free(out);
    return bad ? 1 : 0;
}
