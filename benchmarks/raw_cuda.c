/*
 * The raw CUDA baseline: the driver API called directly, loaded with dlopen
 * like the CUDA device, so benchmarks put the runtime beside the rawest
 * thing a CUDA program can do on the same GPU in the same run.
 */
#ifdef MC_HAVE_CUDA_RAW
#include "raw.h"

#include <cuda.h>
#include <dlfcn.h>
#include <nvrtc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef CUresult (*fn_cuInit)(unsigned);
typedef CUresult (*fn_cuDeviceGet)(CUdevice *, int);
typedef CUresult (*fn_cuDeviceGetAttribute)(int *, CUdevice_attribute, CUdevice);
typedef CUresult (*fn_cuDevicePrimaryCtxRetain)(CUcontext *, CUdevice);
typedef CUresult (*fn_cuDevicePrimaryCtxRelease)(CUdevice);
typedef CUresult (*fn_cuCtxSetCurrent)(CUcontext);
typedef CUresult (*fn_cuModuleLoadData)(CUmodule *, const void *);
typedef CUresult (*fn_cuModuleUnload)(CUmodule);
typedef CUresult (*fn_cuModuleGetFunction)(CUfunction *, CUmodule, const char *);
typedef CUresult (*fn_cuStreamCreate)(CUstream *, unsigned);
typedef CUresult (*fn_cuStreamDestroy)(CUstream);
typedef CUresult (*fn_cuStreamSynchronize)(CUstream);
typedef CUresult (*fn_cuStreamQuery)(CUstream);
typedef CUresult (*fn_cuLaunchKernel)(CUfunction, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned,
                                      CUstream, void **, void **);
typedef CUresult (*fn_cuMemAlloc)(CUdeviceptr *, size_t);
typedef CUresult (*fn_cuMemFree)(CUdeviceptr);
typedef CUresult (*fn_cuStreamBeginCapture)(CUstream, CUstreamCaptureMode);
typedef CUresult (*fn_cuStreamEndCapture)(CUstream, CUgraph *);
typedef CUresult (*fn_cuGraphInstantiate)(CUgraphExec *, CUgraph, unsigned long long);
typedef CUresult (*fn_cuGraphLaunch)(CUgraphExec, CUstream);
typedef CUresult (*fn_cuGraphExecDestroy)(CUgraphExec);
typedef CUresult (*fn_cuGraphDestroy)(CUgraph);
typedef CUresult (*fn_cuMemHostAlloc)(void **, size_t, unsigned);
typedef CUresult (*fn_cuMemHostGetDevicePointer)(CUdeviceptr *, void *, unsigned);
typedef CUresult (*fn_cuMemFreeHost)(void *);
typedef CUresult (*fn_cuMemcpyHtoD)(CUdeviceptr, const void *, size_t);
typedef CUresult (*fn_cuStreamWriteValue64)(CUstream, CUdeviceptr, cuuint64_t, unsigned);
typedef nvrtcResult (*fn_nvrtcCreateProgram)(nvrtcProgram *, const char *, const char *, int, const char *const *,
                                             const char *const *);
typedef nvrtcResult (*fn_nvrtcCompileProgram)(nvrtcProgram, int, const char *const *);
typedef nvrtcResult (*fn_nvrtcGetCUBINSize)(nvrtcProgram, size_t *);
typedef nvrtcResult (*fn_nvrtcGetCUBIN)(nvrtcProgram, char *);
typedef nvrtcResult (*fn_nvrtcDestroyProgram)(nvrtcProgram *);

typedef struct raw_cuda {
    void *lib, *nvrtc;
    fn_cuStreamSynchronize sync;
    fn_cuStreamQuery query;
    fn_cuLaunchKernel launch;
    fn_cuStreamDestroy stream_destroy;
    fn_cuModuleUnload unload;
    fn_cuDevicePrimaryCtxRelease ctx_release;
    fn_cuMemFree mem_free;
    fn_cuStreamBeginCapture begin_capture;
    fn_cuStreamEndCapture end_capture;
    fn_cuGraphInstantiate instantiate;
    fn_cuGraphLaunch graph_launch;
    fn_cuGraphExecDestroy exec_destroy;
    fn_cuGraphDestroy graph_destroy;
    CUdevice dev;
    CUcontext ctx;
    CUmodule mod;
    CUfunction empty, add_one, saxpy;
    fn_cuMemAlloc mem_alloc;
    CUdeviceptr sx, sy;
    size_t sn;
    CUstream stream;
    CUdeviceptr buf;
    CUgraphExec graph50;
    /* kept from open for the stream baseline */
    fn_cuModuleLoadData load_data;
    fn_cuModuleGetFunction get_function;
    fn_nvrtcCreateProgram create;
    fn_nvrtcCompileProgram compile;
    fn_nvrtcGetCUBINSize cubin_size;
    fn_nvrtcGetCUBIN get_cubin;
    fn_nvrtcDestroyProgram destroy;
    char arch[64];
} raw_cuda;

static const char raw_source[] =
    "extern \"C\" __global__ void empty() {}\n"
    "extern \"C\" __global__ void add_one(unsigned *d, unsigned n) {\n"
    "  unsigned i = blockIdx.x * blockDim.x + threadIdx.x; if (i < n) d[i] += 1; }\n"
    "extern \"C\" __global__ void saxpy(float *y, const float *x, float a, unsigned n) {\n"
    "  unsigned i = blockIdx.x * blockDim.x + threadIdx.x; if (i < n) y[i] = a * x[i] + y[i]; }\n";

#define LOAD(h, var, name)                                   \
    do {                                                     \
        *(void **)(&var) = dlsym(h, name);                   \
        if (!var) {                                          \
            fprintf(stderr, "raw cuda: missing %s\n", name); \
            goto fail;                                       \
        }                                                    \
    } while (0)

/* Compiles source for this device, as the runtime does (cubin for the exact
 * architecture). */
static CUmodule compile_module(raw_cuda *r, const char *source, const char *name)
{
    const char *opts[] = {r->arch};
    nvrtcProgram prog;
    if (r->create(&prog, source, name, 0, NULL, NULL) != NVRTC_SUCCESS) return NULL;
    size_t n = 0;
    char *cubin = NULL;
    CUmodule mod = NULL;
    if (r->compile(prog, 1, opts) == NVRTC_SUCCESS && r->cubin_size(prog, &n) == NVRTC_SUCCESS && (cubin = malloc(n)) &&
        r->get_cubin(prog, cubin) == NVRTC_SUCCESS && r->load_data(&mod, cubin) != CUDA_SUCCESS)
        mod = NULL;
    free(cubin);
    r->destroy(&prog);
    return mod;
}

static void *raw_cuda_open(int index)
{
    raw_cuda *r = calloc(1, sizeof *r);
    if (!r) return NULL;
    fn_cuInit init;
    fn_cuDeviceGet device_get;
    fn_cuDeviceGetAttribute attr;
    fn_cuDevicePrimaryCtxRetain retain;
    fn_cuCtxSetCurrent set_current;
    fn_cuModuleLoadData load_data;
    fn_cuModuleGetFunction get_function;
    fn_cuStreamCreate stream_create;
    fn_cuMemAlloc mem_alloc;
    fn_nvrtcCreateProgram create;
    fn_nvrtcCompileProgram compile;
    fn_nvrtcGetCUBINSize cubin_size;
    fn_nvrtcGetCUBIN get_cubin;
    fn_nvrtcDestroyProgram destroy;
    r->lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    const char *nv[] = {"libnvrtc.so", "libnvrtc.so.13", "libnvrtc.so.12", "/usr/local/cuda/lib64/libnvrtc.so"};
    for (size_t i = 0; i < sizeof nv / sizeof nv[0] && !r->nvrtc; i++) r->nvrtc = dlopen(nv[i], RTLD_NOW | RTLD_LOCAL);
    if (!r->lib || !r->nvrtc) goto fail;
    LOAD(r->lib, init, "cuInit");
    LOAD(r->lib, device_get, "cuDeviceGet");
    LOAD(r->lib, attr, "cuDeviceGetAttribute");
    LOAD(r->lib, retain, "cuDevicePrimaryCtxRetain");
    LOAD(r->lib, r->ctx_release, "cuDevicePrimaryCtxRelease_v2");
    LOAD(r->lib, set_current, "cuCtxSetCurrent");
    LOAD(r->lib, load_data, "cuModuleLoadData");
    LOAD(r->lib, r->unload, "cuModuleUnload");
    LOAD(r->lib, get_function, "cuModuleGetFunction");
    LOAD(r->lib, stream_create, "cuStreamCreate");
    LOAD(r->lib, r->stream_destroy, "cuStreamDestroy_v2");
    LOAD(r->lib, r->sync, "cuStreamSynchronize");
    LOAD(r->lib, r->query, "cuStreamQuery");
    LOAD(r->lib, r->launch, "cuLaunchKernel");
    LOAD(r->lib, mem_alloc, "cuMemAlloc_v2");
    r->mem_alloc = mem_alloc;
    LOAD(r->lib, r->mem_free, "cuMemFree_v2");
    LOAD(r->lib, r->begin_capture, "cuStreamBeginCapture_v2");
    LOAD(r->lib, r->end_capture, "cuStreamEndCapture");
    LOAD(r->lib, r->instantiate, "cuGraphInstantiateWithFlags");
    LOAD(r->lib, r->graph_launch, "cuGraphLaunch");
    LOAD(r->lib, r->exec_destroy, "cuGraphExecDestroy");
    LOAD(r->lib, r->graph_destroy, "cuGraphDestroy");
    LOAD(r->nvrtc, create, "nvrtcCreateProgram");
    LOAD(r->nvrtc, compile, "nvrtcCompileProgram");
    LOAD(r->nvrtc, cubin_size, "nvrtcGetCUBINSize");
    LOAD(r->nvrtc, get_cubin, "nvrtcGetCUBIN");
    LOAD(r->nvrtc, destroy, "nvrtcDestroyProgram");
    if (init(0) || device_get(&r->dev, index) || retain(&r->ctx, r->dev) || set_current(r->ctx)) goto fail;
    int major = 0, minor = 0;
    attr(&major, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, r->dev);
    attr(&minor, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, r->dev);
    snprintf(r->arch, sizeof r->arch, "--gpu-architecture=sm_%d%d", major, minor);
    r->load_data = load_data;
    r->get_function = get_function;
    r->create = create;
    r->compile = compile;
    r->cubin_size = cubin_size;
    r->get_cubin = get_cubin;
    r->destroy = destroy;
    r->mod = compile_module(r, raw_source, "raw.cu");
    if (!r->mod || get_function(&r->empty, r->mod, "empty") || get_function(&r->add_one, r->mod, "add_one") ||
        get_function(&r->saxpy, r->mod, "saxpy") || stream_create(&r->stream, CU_STREAM_NON_BLOCKING) ||
        mem_alloc(&r->buf, 4096 * 4))
        goto fail;
    return r;
fail:
    if (r->lib) dlclose(r->lib);
    if (r->nvrtc) dlclose(r->nvrtc);
    free(r);
    return NULL;
}

static void raw_cuda_close(void *impl)
{
    raw_cuda *r = impl;
    if (r->graph50) r->exec_destroy(r->graph50);
    if (r->sn) {
        r->mem_free(r->sx);
        r->mem_free(r->sy);
    }
    r->mem_free(r->buf);
    r->stream_destroy(r->stream);
    r->unload(r->mod);
    r->ctx_release(r->dev);
    dlclose(r->nvrtc);
    dlclose(r->lib);
    free(r);
}

static int raw_cuda_round_trip(void *impl)
{
    raw_cuda *r = impl;
    if (r->launch(r->empty, 1, 1, 1, 1, 1, 1, 0, r->stream, NULL, NULL)) return -1;
    return r->sync(r->stream) ? -1 : 0;
}

static int launch_add(raw_cuda *r)
{
    unsigned n = 4096;
    void *args[] = {&r->buf, &n};
    return r->launch(r->add_one, n / 256, 1, 1, 256, 1, 1, 0, r->stream, args, NULL) ? -1 : 0;
}

/* mode 0: synchronise after each launch; 1: back to back, one sync;
 * 2: one CUDA graph of all launches; 3: launch that graph, no sync;
 * 4: synchronise only. */
static int raw_cuda_batch(void *impl, int passes, int mode)
{
    raw_cuda *r = impl;
    if (mode == 4) return r->sync(r->stream) ? -1 : 0;
    if (mode == 2 || mode == 3) {
        if (!r->graph50) {
            CUgraph g;
            if (r->begin_capture(r->stream, CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)) return -1;
            for (int i = 0; i < passes; i++) launch_add(r);
            if (r->end_capture(r->stream, &g) || r->instantiate(&r->graph50, g, 0)) return -1;
            r->graph_destroy(g);
        }
        if (r->graph_launch(r->graph50, r->stream)) return -1;
        if (mode == 3) return 0;
        return r->sync(r->stream) ? -1 : 0;
    }
    for (int i = 0; i < passes; i++) {
        if (launch_add(r)) return -1;
        if (mode == 0 && r->sync(r->stream)) return -1;
    }
    return r->sync(r->stream) ? -1 : 0;
}

static int raw_cuda_saxpy(void *impl, size_t n)
{
    raw_cuda *r = impl;
    if (r->sn != n) {
        if (r->sn) {
            r->mem_free(r->sx);
            r->mem_free(r->sy);
            r->sn = 0;
        }
        if (r->mem_alloc(&r->sx, n * 4) || r->mem_alloc(&r->sy, n * 4)) return -1;
        r->sn = n;
    }
    unsigned un = (unsigned)n;
    float a = 2.0f;
    void *args[] = {&r->sy, &r->sx, &a, &un};
    if (r->launch(r->saxpy, (unsigned)((n + 255) / 256), 1, 1, 256, 1, 1, 0, r->stream, args, NULL)) return -1;
    return r->sync(r->stream) ? -1 : 0;
}

/* ---- the stream benchmark's work -------------------------------------------- */

static double block_sum(const float *v, uint32_t n)
{
    double s = 0;
    for (uint32_t i = 0; i < n; i++) s += v[i];
    return s;
}

#define RAW_MAX_SLOTS 8

/* The tightest pipeline the driver allows for the stream's work, on one
 * thread with no ordering, delivery or recovery machinery: per slot, pinned
 * mapped input and output and the two kernels captured once as a graph;
 * per item, wait until the item that last used the slot is done (its
 * 64-bit marker, polled), check its output, fill the slot, launch the
 * slot's graph and a marker write. */
static double raw_cuda_stream(void *impl, const mc_raw_stream_work *w)
{
    raw_cuda *r = impl;
    if (w->slots < 1 || w->slots > RAW_MAX_SLOTS) return -1;
    fn_cuMemHostAlloc host_alloc;
    fn_cuMemHostGetDevicePointer host_dptr;
    fn_cuMemFreeHost free_host;
    fn_cuMemcpyHtoD htod;
    fn_cuStreamWriteValue64 write64;
    CUmodule mod = NULL;
    LOAD(r->lib, host_alloc, "cuMemHostAlloc");
    LOAD(r->lib, host_dptr, "cuMemHostGetDevicePointer_v2");
    LOAD(r->lib, free_host, "cuMemFreeHost");
    LOAD(r->lib, htod, "cuMemcpyHtoD_v2");
    LOAD(r->lib, write64, "cuStreamWriteValue64_v2");
    mod = compile_module(r, w->source, "fir.cu");
    CUfunction fir = NULL, gain = NULL;
    if (!mod || r->get_function(&fir, mod, "fir") || r->get_function(&gain, mod, "gain")) goto fail;
    double rate = -1;
    size_t in_bytes = w->block_floats * sizeof(float), out_bytes = (size_t)w->n * sizeof(float);
    void *in[RAW_MAX_SLOTS] = {0}, *out[RAW_MAX_SLOTS] = {0};
    CUgraphExec graph[RAW_MAX_SLOTS] = {0};
    volatile uint64_t *marker = NULL;
    CUdeviceptr taps = 0, dmarker = 0;
    bool ok = r->mem_alloc(&taps, w->ntaps * sizeof(float)) == CUDA_SUCCESS &&
              htod(taps, w->taps, w->ntaps * sizeof(float)) == CUDA_SUCCESS &&
              host_alloc((void **)&marker, 64, CU_MEMHOSTALLOC_DEVICEMAP | CU_MEMHOSTALLOC_PORTABLE) == CUDA_SUCCESS &&
              host_dptr(&dmarker, (void *)marker, 0) == CUDA_SUCCESS;
    for (uint32_t s = 0; ok && s < w->slots; s++) {
        CUdeviceptr din, dout;
        ok = host_alloc(&in[s], in_bytes, CU_MEMHOSTALLOC_DEVICEMAP | CU_MEMHOSTALLOC_PORTABLE) == CUDA_SUCCESS &&
             host_alloc(&out[s], out_bytes, CU_MEMHOSTALLOC_DEVICEMAP | CU_MEMHOSTALLOC_PORTABLE) == CUDA_SUCCESS &&
             host_dptr(&din, in[s], 0) == CUDA_SUCCESS && host_dptr(&dout, out[s], 0) == CUDA_SUCCESS;
        if (!ok) break;
        unsigned n = w->n, ntaps = w->ntaps;
        float g = w->g;
        void *fargs[] = {&dout, &din, &taps, &n, &ntaps};
        void *gargs[] = {&dout, &g, &n};
        CUgraph gr;
        ok = r->begin_capture(r->stream, CU_STREAM_CAPTURE_MODE_THREAD_LOCAL) == CUDA_SUCCESS;
        if (ok) {
            (void)r->launch(fir, w->n / w->group, 1, 1, w->group, 1, 1, w->tile_bytes, r->stream, fargs, NULL);
            (void)r->launch(gain, w->n / w->group, 1, 1, w->group, 1, 1, 0, r->stream, gargs, NULL);
            ok = r->end_capture(r->stream, &gr) == CUDA_SUCCESS;
        }
        if (ok) {
            ok = r->instantiate(&graph[s], gr, 0) == CUDA_SUCCESS;
            r->graph_destroy(gr);
        }
    }
    if (ok) {
        marker[0] = 0;
        uint64_t slot_item[RAW_MAX_SLOTS] = {0}; /* 1 + the item a slot last held; 0 = none */
        double t0 = 0;
        /* a warm-up of one round of slots, then the timed items */
        uint32_t warm = w->slots, total = warm + w->items;
        for (uint32_t i = 0; ok && i <= total; i++) {
            if (i == warm) {
                struct timespec ts;
                clock_gettime(CLOCK_MONOTONIC, &ts);
                t0 = ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
            }
            uint32_t s = i % w->slots;
            /* the slot's last item (or, at the end, every item) must be done */
            uint64_t need = i == total ? total : slot_item[s];
            for (uint32_t spin = 0; marker[0] < need; spin++) {
                if ((spin & 0xfffu) == 0 && r->query(r->stream) != CUDA_ERROR_NOT_READY && marker[0] < need) {
                    ok = false; /* the stream is idle or broken short of the marker */
                    break;
                }
            }
            if (!ok) break;
            if (slot_item[s] && block_sum(out[s], w->n) != w->want[(slot_item[s] - 1) % w->nblocks]) ok = false;
            if (i == total) {
                for (uint32_t k = 1; k < w->slots && ok; k++) {
                    uint32_t o = (s + k) % w->slots;
                    if (slot_item[o] && block_sum(out[o], w->n) != w->want[(slot_item[o] - 1) % w->nblocks]) ok = false;
                }
                break;
            }
            memcpy(in[s], w->blocks + (size_t)(i % w->nblocks) * w->n, in_bytes);
            ok = r->graph_launch(graph[s], r->stream) == CUDA_SUCCESS &&
                 write64(r->stream, dmarker, i + 1, 0) == CUDA_SUCCESS;
            slot_item[s] = i + 1;
        }
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        double t = ts.tv_sec * 1e6 + ts.tv_nsec / 1e3 - t0;
        if (ok && t > 0) rate = w->items / (t / 1e6);
        else fprintf(stderr, "raw cuda stream: %s\n", ok ? "no time" : "a launch failed or an output differs");
    }
    (void)r->sync(r->stream);
    for (uint32_t s = 0; s < w->slots; s++) {
        if (graph[s]) r->exec_destroy(graph[s]);
        if (in[s]) free_host(in[s]);
        if (out[s]) free_host(out[s]);
    }
    if (marker) free_host((void *)marker);
    if (taps) r->mem_free(taps);
    r->unload(mod);
    return rate;
fail:
    if (mod) r->unload(mod);
    return -1;
}

const mc_raw_ops mc_raw_cuda_ops = {"raw CUDA driver", raw_cuda_open,  raw_cuda_close, raw_cuda_round_trip,
                                    raw_cuda_batch,    raw_cuda_saxpy, NULL,           raw_cuda_stream};
#else
typedef int mc_raw_cuda_unused;
#endif
