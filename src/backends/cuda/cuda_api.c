/*
 * DOC: Loading the CUDA driver and NVRTC
 *
 * libcuda.so.1 and NVRTC are opened with dlopen and every entry point is
 * resolved by the symbol the driver really exports: cuda.h maps names such
 * as cuMemAlloc or cuStreamWriteValue64 to their _v2 versions with macros,
 * and the unversioned symbols are older ABIs (32-bit sizes, for some). So
 * each entry below names the exported symbol, newest first. A missing
 * required symbol, a missing library or a failing cuInit means "no CUDA
 * device": device_count() returns 0 and nothing else is touched.
 *
 * Also here: CUresult -> mc_status, device loss bookkeeping, the context
 * push/pop helpers and the spin-then-sleep backoff every waiter uses.
 */
#include "backends/cuda/cuda_be.h"

#include <dlfcn.h>
#include <sched.h>
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* ---- symbol tables ------------------------------------------------------ */

typedef struct sym {
    size_t offset; /* of the function pointer in the api struct */
    bool required;
    const char *names[3]; /* exported names, preferred first */
} sym;

#define CU_SYM(field, req, ...)             \
    {                                       \
        offsetof(mc__cuda_api, field), req, \
        {                                   \
            __VA_ARGS__                     \
        }                                   \
    }

static const sym cuda_syms[] = {
    CU_SYM(Init, true, "cuInit"),
    CU_SYM(DriverGetVersion, true, "cuDriverGetVersion"),
    CU_SYM(GetErrorName, true, "cuGetErrorName"),
    CU_SYM(GetErrorString, true, "cuGetErrorString"),
    CU_SYM(DeviceGetCount, true, "cuDeviceGetCount"),
    CU_SYM(DeviceGet, true, "cuDeviceGet"),
    CU_SYM(DeviceGetName, true, "cuDeviceGetName"),
    CU_SYM(DeviceGetAttribute, true, "cuDeviceGetAttribute"),
    CU_SYM(DeviceTotalMem, true, "cuDeviceTotalMem_v2"),
    CU_SYM(DevicePrimaryCtxRetain, true, "cuDevicePrimaryCtxRetain"),
    CU_SYM(DevicePrimaryCtxRelease, true, "cuDevicePrimaryCtxRelease_v2", "cuDevicePrimaryCtxRelease"),
    CU_SYM(CtxPushCurrent, true, "cuCtxPushCurrent_v2"),
    CU_SYM(CtxGetCurrent, true, "cuCtxGetCurrent"),
    CU_SYM(CtxPopCurrent, true, "cuCtxPopCurrent_v2"),
    CU_SYM(CtxSetCurrent, true, "cuCtxSetCurrent"),
    CU_SYM(MemAlloc, true, "cuMemAlloc_v2"),
    CU_SYM(MemFree, true, "cuMemFree_v2"),
    CU_SYM(MemHostAlloc, true, "cuMemHostAlloc"),
    CU_SYM(MemFreeHost, true, "cuMemFreeHost"),
    CU_SYM(MemHostGetDevicePointer, true, "cuMemHostGetDevicePointer_v2"),
    CU_SYM(MemHostRegister, false, "cuMemHostRegister_v2"),
    CU_SYM(MemHostUnregister, false, "cuMemHostUnregister"),
    CU_SYM(MemcpyHtoDAsync, true, "cuMemcpyHtoDAsync_v2"),
    CU_SYM(MemcpyDtoHAsync, true, "cuMemcpyDtoHAsync_v2"),
    CU_SYM(MemcpyAsync, true, "cuMemcpyAsync"),
    CU_SYM(MemsetD8Async, true, "cuMemsetD8Async"),
    CU_SYM(StreamCreate, true, "cuStreamCreate"),
    CU_SYM(StreamDestroy, true, "cuStreamDestroy_v2"),
    CU_SYM(StreamQuery, true, "cuStreamQuery"),
    CU_SYM(StreamSynchronize, true, "cuStreamSynchronize"),
    CU_SYM(StreamWriteValue64, false, "cuStreamWriteValue64_v2"),
    CU_SYM(StreamWaitValue64, false, "cuStreamWaitValue64_v2"),
    CU_SYM(StreamWriteValue64V1, false, "cuStreamWriteValue64"),
    CU_SYM(StreamWaitValue64V1, false, "cuStreamWaitValue64"),
    CU_SYM(StreamBatchMemOp, false, "cuStreamBatchMemOp_v2"),
    CU_SYM(EventCreate, true, "cuEventCreate"),
    CU_SYM(EventDestroy, true, "cuEventDestroy_v2"),
    CU_SYM(EventRecord, true, "cuEventRecord"),
    CU_SYM(EventQuery, true, "cuEventQuery"),
    /* _v2 (12.8) has the same prototype; the unversioned one is older. */
    CU_SYM(EventElapsedTime, true, "cuEventElapsedTime_v2", "cuEventElapsedTime"),
    CU_SYM(ModuleLoadData, true, "cuModuleLoadData"),
    CU_SYM(ModuleUnload, true, "cuModuleUnload"),
    CU_SYM(ModuleGetFunction, true, "cuModuleGetFunction"),
    CU_SYM(ModuleGetGlobal, false, "cuModuleGetGlobal_v2"),
    CU_SYM(FuncGetAttribute, true, "cuFuncGetAttribute"),
    CU_SYM(FuncSetAttribute, true, "cuFuncSetAttribute"),
    CU_SYM(FuncGetParamInfo, false, "cuFuncGetParamInfo"),
    CU_SYM(LaunchKernel, true, "cuLaunchKernel"),
    CU_SYM(GraphCreate, false, "cuGraphCreate"),
    CU_SYM(GraphDestroy, false, "cuGraphDestroy"),
    CU_SYM(GraphAddKernelNode, false, "cuGraphAddKernelNode_v2"),
    CU_SYM(GraphKernelNodeSetAttribute, false, "cuGraphKernelNodeSetAttribute"),
    CU_SYM(GraphKernelNodeGetAttribute, false, "cuGraphKernelNodeGetAttribute"),
    CU_SYM(GraphInstantiateWithFlags, false, "cuGraphInstantiateWithFlags"),
    CU_SYM(GraphExecDestroy, false, "cuGraphExecDestroy"),
    CU_SYM(GraphExecKernelNodeSetParams, false, "cuGraphExecKernelNodeSetParams_v2"),
    CU_SYM(GraphKernelNodeSetParams, false, "cuGraphKernelNodeSetParams_v2"),
    CU_SYM(GraphUpload, false, "cuGraphUpload"),
    CU_SYM(GraphLaunch, false, "cuGraphLaunch"),
};

#define RTC_SYM(field, req, ...)             \
    {                                        \
        offsetof(mc__nvrtc_api, field), req, \
        {                                    \
            __VA_ARGS__                      \
        }                                    \
    }

static const sym nvrtc_syms[] = {
    RTC_SYM(Version, true, "nvrtcVersion"),
    RTC_SYM(GetNumSupportedArchs, false, "nvrtcGetNumSupportedArchs"),
    RTC_SYM(GetSupportedArchs, false, "nvrtcGetSupportedArchs"),
    RTC_SYM(CreateProgram, true, "nvrtcCreateProgram"),
    RTC_SYM(DestroyProgram, true, "nvrtcDestroyProgram"),
    RTC_SYM(CompileProgram, true, "nvrtcCompileProgram"),
    RTC_SYM(GetProgramLogSize, true, "nvrtcGetProgramLogSize"),
    RTC_SYM(GetProgramLog, true, "nvrtcGetProgramLog"),
    RTC_SYM(GetCUBINSize, false, "nvrtcGetCUBINSize"),
    RTC_SYM(GetCUBIN, false, "nvrtcGetCUBIN"),
    RTC_SYM(GetPTXSize, true, "nvrtcGetPTXSize"),
    RTC_SYM(GetPTX, true, "nvrtcGetPTX"),
    RTC_SYM(GetErrorString, true, "nvrtcGetErrorString"),
};

/* Fills the function pointers of table from lib. ISO C has no conversion
 * from void * to a function pointer; POSIX guarantees they have the same
 * representation, so the bytes are copied. */
static bool resolve(void *lib, void *table, const sym *syms, size_t n, char *why, size_t cap)
{
    for (size_t i = 0; i < n; i++) {
        void *p = NULL;
        for (size_t k = 0; k < MC__ARRAY_LEN(syms[i].names) && syms[i].names[k] && !p; k++)
            p = dlsym(lib, syms[i].names[k]);
        if (!p && syms[i].required) {
            snprintf(why, cap, "the library lacks %s", syms[i].names[0]);
            return false;
        }
        memcpy((char *)table + syms[i].offset, &p, sizeof p);
    }
    return true;
}

/* dlopen that leaves no dlerror state behind. */
static void *open_lib(const char *name)
{
    void *h = dlopen(name, RTLD_NOW | RTLD_LOCAL);
    if (!h) (void)dlerror();
    return h;
}

/* ---- the driver ---------------------------------------------------------- */

static pthread_once_t driver_once = PTHREAD_ONCE_INIT;
static mc__cuda_api driver_api;
static const mc__cuda_api *driver_ok;
static char driver_why[160];

static void driver_load(void)
{
    void *h = open_lib("libcuda.so.1");
    if (!h) h = open_lib("libcuda.so");
    if (!h) {
        snprintf(driver_why, sizeof driver_why, "libcuda.so.1 not found (no NVIDIA driver)");
        return;
    }
    char why[120];
    if (!resolve(h, &driver_api, cuda_syms, MC__ARRAY_LEN(cuda_syms), why, sizeof why)) {
        snprintf(driver_why, sizeof driver_why, "libcuda.so.1: %s (driver too old)", why);
        return; /* the handle stays open: libcuda must not be unloaded */
    }
    CUresult r = driver_api.Init(0);
    if (r != CUDA_SUCCESS) {
        char t[96];
        /* e.g. CUDA_ERROR_NO_DEVICE, or the toolkit's stub library */
        snprintf(driver_why, sizeof driver_why, "cuInit failed: %s", mc__cuda_text(r, t, sizeof t));
        return;
    }
    driver_ok = &driver_api;
}

static void driver_load_once(void)
{
    driver_load();
    if (!driver_ok) mc__log(MC_LOG_DEBUG, "cuda.unavailable", "no CUDA device: %s", driver_why);
}

const mc__cuda_api *mc__cuda_driver(const char **why)
{
    pthread_once(&driver_once, driver_load_once);
    if (!driver_ok && why) *why = driver_why;
    return driver_ok;
}

/* ---- NVRTC ---------------------------------------------------------------- */

static pthread_once_t nvrtc_once = PTHREAD_ONCE_INIT;
static mc__nvrtc_api nvrtc_api;
static const mc__nvrtc_api *nvrtc_ok;
static char nvrtc_why[200];

static void *open_in_dir(const char *dir, const char *file)
{
    if (!dir || !*dir) return NULL;
    char path[512];
    int n = snprintf(path, sizeof path, "%s/%s", dir, file);
    if (n < 0 || (size_t)n >= sizeof path) return NULL;
    return open_lib(path);
}

static const char *const nvrtc_names[] = {"libnvrtc.so", "libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so.11.2"};

/* ---- NVRTC's identity without loading it ----------------------------------
 * The pipeline cache keys CUDA C by the compiler that would build it. Asking
 * NVRTC its version means loading it (about 8 ms, more than the whole disk
 * hit it decides), so the key names the library file instead: its real
 * path, size and modification time, found the way the loader below looks for
 * it, and the loader then opens exactly that file. A new toolkit is a new
 * file, so a new key. Only when no file is found is NVRTC loaded for its
 * version (nvrtc_load's own search, e.g. through ld.so.cache). */

static pthread_once_t nvrtc_file_once = PTHREAD_ONCE_INIT;
static char nvrtc_file[PATH_MAX]; /* the real path, or "" when none was found */

static bool regular_file(const char *path, struct stat *st)
{
    return stat(path, st) == 0 && S_ISREG(st->st_mode);
}

/* dir/name into out when it is a regular file. */
static bool find_in_dir(const char *dir, size_t dir_len, const char *name, char *out, size_t cap)
{
    struct stat st;
    if (!dir_len) return false;
    int n = snprintf(out, cap, "%.*s/%s", (int)dir_len, dir, name);
    return n > 0 && (size_t)n < cap && regular_file(out, &st);
}

bool mc__cuda_nvrtc_find(char *out, size_t cap)
{
    struct stat st;
    const char *explicit_path = mc__env_str("MC_NVRTC_LIBRARY", NULL);
    if (explicit_path) {
        /* what dlopen would do with it: a name without '/' is searched */
        if (strchr(explicit_path, '/'))
            return snprintf(out, cap, "%s", explicit_path) < (int)cap && regular_file(out, &st);
    }
    static const char *const std_dirs[] = {"/lib/x86_64-linux-gnu",
                                           "/usr/lib/x86_64-linux-gnu",
                                           "/lib/aarch64-linux-gnu",
                                           "/usr/lib/aarch64-linux-gnu",
                                           "/lib64",
                                           "/usr/lib64",
                                           "/lib",
                                           "/usr/lib"};
    const char *ld = getenv("LD_LIBRARY_PATH");
    const char *cuda_path = getenv("CUDA_PATH");
    char buf[400];
    size_t first = explicit_path ? 0 : 1; /* a bare explicit name is searched first */
    for (size_t i = first; i < MC__ARRAY_LEN(nvrtc_names) + 1; i++) {
        const char *name = i == 0 ? explicit_path : nvrtc_names[i - 1];
        for (const char *p = ld; p && *p;) {
            size_t len = strcspn(p, ":");
            if (find_in_dir(p, len, name, out, cap)) return true;
            p += len + (p[len] == ':');
        }
        for (size_t k = 0; k < MC__ARRAY_LEN(std_dirs); k++)
            if (find_in_dir(std_dirs[k], strlen(std_dirs[k]), name, out, cap)) return true;
        if (cuda_path && *cuda_path) {
            snprintf(buf, sizeof buf, "%s/lib64", cuda_path);
            if (find_in_dir(buf, strlen(buf), name, out, cap)) return true;
            snprintf(buf, sizeof buf, "%s/lib", cuda_path);
            if (find_in_dir(buf, strlen(buf), name, out, cap)) return true;
        }
        if (find_in_dir("/usr/local/cuda/lib64", strlen("/usr/local/cuda/lib64"), name, out, cap)) return true;
    }
    return false;
}

mc_status mc__cuda_file_identity(const char *path, char *out, size_t cap)
{
    if (!path || !out || !cap) return mc__fail(MC_ERR_INVALID_ARGUMENT, "cuda: no file to identify");
    char real[PATH_MAX];
    struct stat st;
    if (!realpath(path, real) || !regular_file(real, &st))
        return mc__fail(MC_ERR_IO, "cuda: cannot identify '%s': %s", path, strerror(errno));
    int n = snprintf(out, cap, "file %s size %lld mtime %lld.%09ld", real, (long long)st.st_size,
                     (long long)st.st_mtim.tv_sec, (long)st.st_mtim.tv_nsec);
    if (n < 0 || (size_t)n >= cap) return mc__fail(MC_ERR_INVALID_ARGUMENT, "cuda: identity of '%s' too long", path);
    return MC_OK;
}

static void nvrtc_file_find(void)
{
    char found[512];
    if (mc__cuda_nvrtc_find(found, sizeof found) && realpath(found, nvrtc_file) == NULL) nvrtc_file[0] = '\0';
}

const char *mc__cuda_nvrtc_file(void)
{
    pthread_once(&nvrtc_file_once, nvrtc_file_find);
    return nvrtc_file[0] ? nvrtc_file : NULL;
}

static void nvrtc_load(void)
{
    void *h = NULL;
    /* the file the cache key names, when there is one (see above) */
    const char *keyed = mc__cuda_nvrtc_file();
    if (keyed) h = open_lib(keyed);
    const char *explicit_path = mc__env_str("MC_NVRTC_LIBRARY", NULL);
    if (!h && explicit_path) h = open_lib(explicit_path);
    for (size_t i = 0; !h && i < MC__ARRAY_LEN(nvrtc_names); i++) h = open_lib(nvrtc_names[i]);
    const char *cuda_path = getenv("CUDA_PATH");
    char dir[400];
    for (size_t i = 0; !h && i < MC__ARRAY_LEN(nvrtc_names); i++) {
        if (cuda_path && *cuda_path) {
            snprintf(dir, sizeof dir, "%s/lib64", cuda_path);
            h = open_in_dir(dir, nvrtc_names[i]);
            if (!h) {
                snprintf(dir, sizeof dir, "%s/lib", cuda_path);
                h = open_in_dir(dir, nvrtc_names[i]);
            }
        }
        if (!h) h = open_in_dir("/usr/local/cuda/lib64", nvrtc_names[i]);
    }
    if (!h) {
        snprintf(nvrtc_why, sizeof nvrtc_why,
                 "NVRTC not found (libnvrtc.so; set MC_NVRTC_LIBRARY or CUDA_PATH, or install the CUDA toolkit)");
        return;
    }
    char why[120];
    if (!resolve(h, &nvrtc_api, nvrtc_syms, MC__ARRAY_LEN(nvrtc_syms), why, sizeof why)) {
        snprintf(nvrtc_why, sizeof nvrtc_why, "NVRTC: %s", why);
        return;
    }
    if (nvrtc_api.Version(&nvrtc_api.major, &nvrtc_api.minor) != NVRTC_SUCCESS) {
        snprintf(nvrtc_why, sizeof nvrtc_why, "NVRTC: nvrtcVersion failed");
        return;
    }
    nvrtc_ok = &nvrtc_api;
}

const mc__nvrtc_api *mc__cuda_nvrtc(const char **why)
{
    pthread_once(&nvrtc_once, nvrtc_load);
    if (!nvrtc_ok && why) *why = nvrtc_why;
    return nvrtc_ok;
}

/* ---- errors ---------------------------------------------------------------- */

bool mc__cuda_is_sticky(CUresult r)
{
    /* Errors after which the context cannot be used again: the driver
     * returns them from every later call in the process. On the H100 even
     * resetting the primary context or creating a new one fails the same
     * way, so they are device loss for good. */
    switch ((int)r) {
    case CUDA_ERROR_DEINITIALIZED:
    case CUDA_ERROR_ECC_UNCORRECTABLE:
    case CUDA_ERROR_NVLINK_UNCORRECTABLE:
    case 226: /* CUDA_ERROR_CONTAINED (12.2) */
    case CUDA_ERROR_ILLEGAL_ADDRESS:
    case CUDA_ERROR_LAUNCH_TIMEOUT:
    case CUDA_ERROR_CONTEXT_IS_DESTROYED:
    case CUDA_ERROR_ASSERT:
    case CUDA_ERROR_HARDWARE_STACK_ERROR:
    case CUDA_ERROR_ILLEGAL_INSTRUCTION:
    case CUDA_ERROR_MISALIGNED_ADDRESS:
    case CUDA_ERROR_INVALID_ADDRESS_SPACE:
    case CUDA_ERROR_INVALID_PC:
    case CUDA_ERROR_LAUNCH_FAILED:
    case 721: /* CUDA_ERROR_TENSOR_MEMORY_LEAK (12.8) */
    case CUDA_ERROR_EXTERNAL_DEVICE:
    case 916: /* CUDA_ERROR_KEY_ROTATION (12.4) */
    case CUDA_ERROR_UNKNOWN: return true;
    default: return false;
    }
}

mc_status mc__cuda_status(CUresult r)
{
    if (r == CUDA_SUCCESS) return MC_OK;
    if (mc__cuda_is_sticky(r)) return MC_ERR_DEVICE_LOST;
    switch ((int)r) {
    case CUDA_ERROR_OUT_OF_MEMORY: return MC_ERR_OUT_OF_MEMORY;
    case CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES:
    case CUDA_ERROR_INVALID_VALUE:
    case CUDA_ERROR_INVALID_HANDLE:
    case CUDA_ERROR_COOPERATIVE_LAUNCH_TOO_LARGE:
    case CUDA_ERROR_INVALID_CLUSTER_SIZE: return MC_ERR_INVALID_RESOURCE;
    case CUDA_ERROR_NOT_PERMITTED:
    case CUDA_ERROR_DEVICE_UNAVAILABLE:
    case CUDA_ERROR_DEVICE_NOT_LICENSED: return MC_ERR_NOT_PERMITTED;
    case CUDA_ERROR_NOT_SUPPORTED:
    case CUDA_ERROR_CALL_REQUIRES_NEWER_DRIVER:
    case CUDA_ERROR_STUB_LIBRARY:
    case CUDA_ERROR_COMPAT_NOT_SUPPORTED_ON_DEVICE: return MC_ERR_UNSUPPORTED;
    case CUDA_ERROR_NOT_FOUND:
    case CUDA_ERROR_NO_DEVICE:
    case CUDA_ERROR_INVALID_DEVICE: return MC_ERR_NOT_FOUND;
    case CUDA_ERROR_INVALID_IMAGE:
    case CUDA_ERROR_NO_BINARY_FOR_GPU:
    case CUDA_ERROR_INVALID_PTX:
    case CUDA_ERROR_UNSUPPORTED_PTX_VERSION:
    case CUDA_ERROR_JIT_COMPILER_NOT_FOUND:
    case CUDA_ERROR_JIT_COMPILATION_DISABLED:
    case CUDA_ERROR_SHARED_OBJECT_SYMBOL_NOT_FOUND: return MC_ERR_COMPILE;
    case CUDA_ERROR_TIMEOUT: return MC_ERR_TIMEOUT;
    default: return MC_ERR_INTERNAL;
    }
}

const char *mc__cuda_text(CUresult r, char *buf, size_t cap)
{
    const char *name = NULL, *text = NULL;
    /* The names come from the driver when its table is loaded (also before
     * cuInit succeeded: cuGetErrorName needs no initialisation). */
    if (driver_api.GetErrorName && driver_api.GetErrorName(r, &name) != CUDA_SUCCESS) name = NULL;
    if (driver_api.GetErrorString && driver_api.GetErrorString(r, &text) != CUDA_SUCCESS) text = NULL;
    snprintf(buf, cap, "%s (%d): %s", name ? name : "CUDA error", (int)r, text ? text : "no description");
    return buf;
}

void mc__cuda_set_lost(mc__cuda_device *dev, int kind, uint64_t ordinal, const char *msg)
{
    bool first = false;
    pthread_mutex_lock(&dev->lost_mu);
    int cur = atomic_load(&dev->lost);
    if (cur == MC__CUDA_ALIVE) {
        snprintf(dev->lost_msg, sizeof dev->lost_msg, "%s", msg);
        atomic_store(&dev->lost_ordinal, ordinal);
        atomic_store(&dev->lost, kind);
        first = true;
    } else if (kind == MC__CUDA_LOST_DEAD && cur != MC__CUDA_LOST_DEAD) {
        /* An injected loss, then the context really died: nothing in flight
         * will finish now. */
        atomic_store(&dev->lost_ordinal, UINT64_MAX);
        atomic_store(&dev->lost, kind);
    }
    pthread_mutex_unlock(&dev->lost_mu);
    if (first)
        mc__log(kind == MC__CUDA_LOST_DEAD ? MC_LOG_ERROR : MC_LOG_WARN, "cuda.device_lost", "cuda:%d: device lost: %s",
                dev->index, msg);
    /* No wake-up: this runs under queue locks (dev->mu comes first), and
     * whoever has work in flight is polling and sees dev->lost. */
}

void mc__cuda_set_dead(mc__cuda_device *dev, CUresult r, const char *where)
{
    char t[120], msg[200];
    snprintf(msg, sizeof msg, "%s: %s; the CUDA context is unusable for the rest of the process (restart it)", where,
             mc__cuda_text(r, t, sizeof t));
    mc__cuda_set_lost(dev, MC__CUDA_LOST_DEAD, UINT64_MAX, msg);
}

mc_status mc__cuda_fail(mc__cuda_device *dev, CUresult r, const char *what)
{
    char t[120];
    if (dev && mc__cuda_is_sticky(r)) mc__cuda_set_dead(dev, r, what);
    return mc__fail(mc__cuda_status(r), "cuda: %s: %s", what, mc__cuda_text(r, t, sizeof t));
}

/* ---- context ------------------------------------------------------------- */

/* enter/leave nest on a thread. Bit d of enter_pushed says whether the
 * enter at depth d pushed the context; one that found it current already
 * (the caller's own, or an outer enter's) pushes nothing and its leave pops
 * nothing: a submission from a thread that stays in the context then costs
 * one query instead of a push and a pop. Deeper than 64, every enter pushes. */
static _Thread_local uint64_t enter_pushed;
static _Thread_local uint32_t enter_depth;

mc_status mc__cuda_enter(mc__cuda_device *dev)
{
    CUcontext cur = NULL;
    bool push = enter_depth >= 64 || dev->cu->CtxGetCurrent(&cur) != CUDA_SUCCESS || cur != dev->ctx;
    if (push && !cur && enter_depth == 0 && dev->cu->CtxSetCurrent(dev->ctx) == CUDA_SUCCESS) {
        /* A thread with no context at all keeps the device's primary one
         * (what the CUDA runtime would make current there anyway): its
         * next calls cost one query, not a push and a pop (issue 21, the
         * round trip). */
        push = false;
    }
    if (push) {
        CUresult r = dev->cu->CtxPushCurrent(dev->ctx);
        if (r != CUDA_SUCCESS) return mc__cuda_fail(dev, r, "cuCtxPushCurrent");
    }
    if (enter_depth < 64) {
        uint64_t bit = 1ull << enter_depth;
        enter_pushed = push ? enter_pushed | bit : enter_pushed & ~bit;
    }
    enter_depth++;
    return MC_OK;
}

void mc__cuda_leave(mc__cuda_device *dev)
{
    if (!enter_depth) return; /* unpaired: nothing of ours is current */
    enter_depth--;
    if (enter_depth >= 64 || (enter_pushed >> enter_depth & 1u)) {
        CUcontext prev;
        (void)dev->cu->CtxPopCurrent(&prev);
    }
}

/* ---- waiting --------------------------------------------------------------- */

void mc__cuda_backoff_init(mc__cuda_backoff *b)
{
    b->start = mc__now_ns();
    b->sleep_ns = 0;
    b->yield_ns = 0;
}

void mc__cuda_backoff_step(mc__cuda_backoff *b, uint64_t spin_ns, uint64_t max_sleep_ns, uint64_t deadline)
{
    uint64_t now = mc__now_ns();
    if (now - b->start < spin_ns) {
        for (int i = 0; i < 32; i++) mc__cpu_relax();
        return;
    }
    if (now - b->start < b->yield_ns) {
        /* A waiter past its spin: give the core away but stay runnable, as
         * cuStreamSynchronize does. Sleeping here overshot a 1 ms kernel by
         * up to the 100 us sleep cap plus the timer's slack (saxpy, issue 21). */
        sched_yield();
        return;
    }
    b->sleep_ns = b->sleep_ns ? MC__MIN(b->sleep_ns * 2, max_sleep_ns) : MC__MIN((uint64_t)2000, max_sleep_ns);
    uint64_t ns = b->sleep_ns;
    if (deadline != UINT64_MAX) {
        if (now >= deadline) return;
        ns = MC__MIN(ns, deadline - now);
    }
    mc__sleep_ns(ns);
}
