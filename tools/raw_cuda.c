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
typedef CUresult (*fn_cuLaunchKernel)(CUfunction, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned,
                                      unsigned, CUstream, void **, void **);
typedef CUresult (*fn_cuMemAlloc)(CUdeviceptr *, size_t);
typedef CUresult (*fn_cuMemFree)(CUdeviceptr);
typedef CUresult (*fn_cuStreamBeginCapture)(CUstream, CUstreamCaptureMode);
typedef CUresult (*fn_cuStreamEndCapture)(CUstream, CUgraph *);
typedef CUresult (*fn_cuGraphInstantiate)(CUgraphExec *, CUgraph, unsigned long long);
typedef CUresult (*fn_cuGraphLaunch)(CUgraphExec, CUstream);
typedef CUresult (*fn_cuGraphExecDestroy)(CUgraphExec);
typedef CUresult (*fn_cuGraphDestroy)(CUgraph);
typedef nvrtcResult (*fn_nvrtcCreateProgram)(nvrtcProgram *, const char *, const char *, int, const char *const *,
                                             const char *const *);
typedef nvrtcResult (*fn_nvrtcCompileProgram)(nvrtcProgram, int, const char *const *);
typedef nvrtcResult (*fn_nvrtcGetCUBINSize)(nvrtcProgram, size_t *);
typedef nvrtcResult (*fn_nvrtcGetCUBIN)(nvrtcProgram, char *);
typedef nvrtcResult (*fn_nvrtcDestroyProgram)(nvrtcProgram *);

typedef struct raw_cuda {
    void *lib, *nvrtc;
    fn_cuStreamSynchronize sync;
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
} raw_cuda;

static const char raw_source[] =
    "extern \"C\" __global__ void empty() {}\n"
    "extern \"C\" __global__ void add_one(unsigned *d, unsigned n) {\n"
    "  unsigned i = blockIdx.x * blockDim.x + threadIdx.x; if (i < n) d[i] += 1; }\n"
    "extern \"C\" __global__ void saxpy(float *y, const float *x, float a, unsigned n) {\n"
    "  unsigned i = blockIdx.x * blockDim.x + threadIdx.x; if (i < n) y[i] = a * x[i] + y[i]; }\n";

#define LOAD(h, var, name)                                                      \
    do {                                                                        \
        *(void **)(&var) = dlsym(h, name);                                      \
        if (!var) {                                                             \
            fprintf(stderr, "raw cuda: missing %s\n", name);                   \
            goto fail;                                                          \
        }                                                                       \
    } while (0)

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
    char arch[64];
    snprintf(arch, sizeof arch, "--gpu-architecture=sm_%d%d", major, minor);
    const char *opts[] = {arch};
    nvrtcProgram prog;
    if (create(&prog, raw_source, "raw.cu", 0, NULL, NULL) != NVRTC_SUCCESS) goto fail;
    size_t n = 0;
    char *cubin = NULL;
    if (compile(prog, 1, opts) == NVRTC_SUCCESS && cubin_size(prog, &n) == NVRTC_SUCCESS && (cubin = malloc(n)) &&
        get_cubin(prog, cubin) == NVRTC_SUCCESS && load_data(&r->mod, cubin) == CUDA_SUCCESS) {
    }
    free(cubin);
    destroy(&prog);
    if (!r->mod || get_function(&r->empty, r->mod, "empty") || get_function(&r->add_one, r->mod, "add_one") ||
        get_function(&r->saxpy, r->mod, "saxpy") ||
        stream_create(&r->stream, CU_STREAM_NON_BLOCKING) || mem_alloc(&r->buf, 4096 * 4))
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

const mc_raw_ops mc_raw_cuda_ops = {"raw CUDA driver", raw_cuda_open, raw_cuda_close, raw_cuda_round_trip,
                                    raw_cuda_batch, raw_cuda_saxpy, NULL};
#else
typedef int mc_raw_cuda_unused;
#endif
