/*
 * DOC: CUDA devices, buffers, events and the HAL table
 *
 * A device is the primary context of a CUdevice (retained at open, released
 * at close), a stream for synchronous transfers, the built-in PTX kernels
 * and the completion thread that finishes submissions nobody waits for.
 * Buffers are device memory (private storage) or pinned host memory mapped
 * into the device (shared storage). Timeline events are a 64-bit counter in
 * mapped host memory that the GPU signals and waits on with stream memory
 * operations; the CPU side is plain atomics plus spin-then-sleep polling.
 */
#include "backends/cuda/cuda_be.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Kernel execution timeout in force (a display is attached): the driver
 * does not say how long it is. The X server's and Windows' watchdogs are a
 * few seconds; 2 s keeps the runner's chunks safely below either. */
#define MC__CUDA_WATCHDOG_MS 2000

/* Stream memory operations: 1 = the 12.0 API (_v2 symbols), 2 = the old
 * one that needed CU_DEVICE_ATTRIBUTE_CAN_USE_STREAM_MEM_OPS, 0 = none. */
static int memops_kind(const mc__cuda_api *cu, CUdevice d)
{
    int v = 0;
    if (cu->StreamWriteValue64 && cu->StreamWaitValue64 &&
        cu->DeviceGetAttribute(&v, CU_DEVICE_ATTRIBUTE_CAN_USE_64_BIT_STREAM_MEM_OPS, d) == CUDA_SUCCESS && v)
        return 1;
    int ops = 0;
    v = 0;
    if (cu->StreamWriteValue64V1 && cu->StreamWaitValue64V1 &&
        cu->DeviceGetAttribute(&ops, CU_DEVICE_ATTRIBUTE_CAN_USE_STREAM_MEM_OPS_V1, d) == CUDA_SUCCESS && ops &&
        cu->DeviceGetAttribute(&v, CU_DEVICE_ATTRIBUTE_CAN_USE_64_BIT_STREAM_MEM_OPS_V1, d) == CUDA_SUCCESS && v)
        return 2;
    return 0;
}

static int attr(const mc__cuda_api *cu, CUdevice d, CUdevice_attribute a, int dflt)
{
    int v = 0;
    return cu->DeviceGetAttribute(&v, a, d) == CUDA_SUCCESS ? v : dflt;
}

/* Everything mc_device_info says, without opening the device. */
static mc_status query_info(const mc__cuda_api *cu, int index, CUdevice *out_dev, mc_device_info *out, int *cc_major,
                            int *cc_minor, int *smem_optin)
{
    CUdevice d;
    CUresult r = cu->DeviceGet(&d, index);
    if (r != CUDA_SUCCESS) return mc__cuda_fail(NULL, r, "cuDeviceGet");
    memset(out, 0, sizeof *out);
    out->kind = MC_DEVICE_CUDA;
    out->index = index;
    char name[MC_NAME_MAX] = "NVIDIA GPU";
    if (cu->DeviceGetName(name, (int)sizeof name, d) != CUDA_SUCCESS) snprintf(name, sizeof name, "NVIDIA GPU");
    name[sizeof name - 1] = '\0';
    int major = attr(cu, d, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, 0);
    int minor = attr(cu, d, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, 0);
    snprintf(out->name, sizeof out->name, "%s", name);
    snprintf(out->identity, sizeof out->identity, "sm_%d%d %.100s", major, minor, name);
    out->max_threads_per_threadgroup = (uint32_t)attr(cu, d, CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_BLOCK, 1024);
    int optin = attr(cu, d, CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN, 0);
    if (optin <= 0) optin = attr(cu, d, CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK, (int)MC__CUDA_DEFAULT_SMEM);
    out->threadgroup_memory_size = (uint64_t)optin;
    out->simd_width = (uint32_t)attr(cu, d, CU_DEVICE_ATTRIBUTE_WARP_SIZE, 32);
    out->compute_units = (uint32_t)attr(cu, d, CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, 1);
    out->unified_memory = attr(cu, d, CU_DEVICE_ATTRIBUTE_INTEGRATED, 0) != 0;
    size_t total = 0;
    if (cu->DeviceTotalMem(&total, d) == CUDA_SUCCESS) out->max_buffer_size = total;
    out->features = MC_FEATURE_PRIVATE_STORAGE | MC_FEATURE_INDIRECT_DISPATCH;
    if (memops_kind(cu, d)) out->features |= MC_FEATURE_GPU_EVENT_WAIT;
    if (attr(cu, d, CU_DEVICE_ATTRIBUTE_KERNEL_EXEC_TIMEOUT, 0)) {
        out->features |= MC_FEATURE_WATCHDOG;
        long long ms = mc__env_int("MC_CUDA_WATCHDOG_MS", MC__CUDA_WATCHDOG_MS);
        out->execution_time_limit_ns = (uint64_t)(ms > 0 ? ms : MC__CUDA_WATCHDOG_MS) * 1000000ull;
    }
    if (out_dev) *out_dev = d;
    if (cc_major) *cc_major = major;
    if (cc_minor) *cc_minor = minor;
    if (smem_optin) *smem_optin = optin;
    return MC_OK;
}

/* ---- built-in PTX --------------------------------------------------------- */

/* Event signal and wait as one-thread kernels, for devices without 64-bit
 * stream memory operations. PTX 6.0 / sm_50: any driver JIT-compiles it. */
static const char builtin_ptx[] =
    ".version 6.0\n"
    ".target sm_50\n"
    ".address_size 64\n"
    ".visible .entry mc_event_signal(.param .u64 p_addr, .param .u64 p_value)\n"
    "{\n"
    "  .reg .b64 %rd<4>;\n"
    "  ld.param.u64 %rd1, [p_addr];\n"
    "  ld.param.u64 %rd2, [p_value];\n"
    "  cvta.to.global.u64 %rd3, %rd1;\n"
    "  membar.sys;\n"
    "  st.volatile.global.u64 [%rd3], %rd2;\n"
    "  membar.sys;\n"
    "  ret;\n"
    "}\n"
    ".visible .entry mc_event_wait(.param .u64 p_addr, .param .u64 p_value)\n"
    "{\n"
    "  .reg .pred %p<2>;\n"
    "  .reg .b64 %rd<6>;\n"
    "  ld.param.u64 %rd3, [p_addr];\n"
    "  ld.param.u64 %rd2, [p_value];\n"
    "  cvta.to.global.u64 %rd1, %rd3;\n"
    "$L_wait:\n"
    "  ld.volatile.global.u64 %rd4, [%rd1];\n"
    "  sub.s64 %rd5, %rd4, %rd2;\n"
    "  setp.lt.s64 %p1, %rd5, 0;\n"
    "  @%p1 bra $L_wait;\n"
    "  membar.sys;\n"
    "  ret;\n"
    "}\n"
    /* mc_poke: thread i copies word i of the bytes in its parameters to
     * dst (bytes bound to an MSL pointer parameter; cuda_submit.c). A
     * kernel parameter's address read into a register is in the .param
     * space (PTX ISA, kernel parameters), so each thread loads its own. */
    ".visible .entry mc_poke(.param .u64 p_dst, .param .u32 p_words, .param .align 16 .b8 p_bytes[4064])\n"
    "{\n"
    "  .reg .pred %p<2>;\n"
    "  .reg .b32 %r<4>;\n"
    "  .reg .b64 %rd<7>;\n"
    "  mov.u32 %r1, %tid.x;\n"
    "  ld.param.u32 %r2, [p_words];\n"
    "  setp.ge.u32 %p1, %r1, %r2;\n"
    "  @%p1 bra $L_poked;\n"
    "  ld.param.u64 %rd1, [p_dst];\n"
    "  cvta.to.global.u64 %rd2, %rd1;\n"
    "  mul.wide.u32 %rd3, %r1, 4;\n"
    "  mov.u64 %rd4, p_bytes;\n"
    "  add.u64 %rd5, %rd4, %rd3;\n"
    "  ld.param.u32 %r3, [%rd5];\n"
    "  add.u64 %rd6, %rd2, %rd3;\n"
    "  st.global.u32 [%rd6], %r3;\n"
    "$L_poked:\n"
    "  ret;\n"
    "}\n";

/* mc_poke as a pipeline, so graph replay collects it like any launch. */
static mc__cuda_pipeline *poke_pipeline(CUfunction fn)
{
    static const uint32_t sizes[3] = {8, 4, MC__CUDA_POKE_CHUNK};
    mc__cuda_pipeline *pl = mc__calloc(1, sizeof *pl);
    uint32_t *ps = mc__malloc(sizeof sizes);
    char *name = mc__strdup("mc_poke");
    if (!pl || !ps || !name) {
        free(pl);
        free(ps);
        free(name);
        return NULL;
    }
    memcpy(ps, sizes, sizeof sizes);
    pl->fn = fn;
    pl->name = name;
    pl->max_threads = MC__CUDA_POKE_CHUNK / 4;
    pl->nparams = 3;
    pl->param_size = ps;
    return pl;
}

/* ---- devices -------------------------------------------------------------- */

static int cuda_device_count(void)
{
    const char *why = NULL;
    const mc__cuda_api *cu = mc__cuda_driver(&why);
    if (!cu) return 0;
    int n = 0;
    if (cu->DeviceGetCount(&n) != CUDA_SUCCESS || n < 0) return 0;
    return n;
}

static mc_status cuda_device_info(int index, mc_device_info *out)
{
    const char *why = "";
    const mc__cuda_api *cu = mc__cuda_driver(&why);
    if (!cu) return mc__fail(MC_ERR_NOT_FOUND, "cuda: %s", why);
    if (index < 0 || index >= cuda_device_count()) return mc__fail(MC_ERR_NOT_FOUND, "cuda:%d is not present", index);
    return query_info(cu, index, NULL, out, NULL, NULL, NULL);
}

void mc__cuda_wake(mc__cuda_device *dev)
{
    pthread_mutex_lock(&dev->mu);
    pthread_cond_broadcast(&dev->cv);
    pthread_mutex_unlock(&dev->mu);
}

static void device_free(mc__cuda_device *dev)
{
    const mc__cuda_api *cu = dev->cu;
    if (dev->ctx) {
        /* Errors are ignored: after a sticky fault every call fails. */
        if (mc__cuda_enter(dev) == MC_OK) {
            if (dev->tramp_mod) (void)cu->ModuleUnload(dev->tramp_mod);
            if (dev->list_mod) (void)cu->ModuleUnload(dev->list_mod);
            if (dev->builtin) (void)cu->ModuleUnload(dev->builtin);
            if (dev->xfer) (void)cu->StreamDestroy(dev->xfer);
            mc__cuda_leave(dev);
        }
        (void)cu->DevicePrimaryCtxRelease(dev->cudev);
    }
    pthread_mutex_destroy(&dev->init_mu);
    pthread_mutex_destroy(&dev->lost_mu);
    pthread_mutex_destroy(&dev->mu);
    pthread_cond_destroy(&dev->cv);
    if (dev->poke) {
        free(dev->poke->param_size);
        free(dev->poke->name);
        free(dev->poke);
    }
    free(dev->poll);
    free(dev);
}

static mc_status cuda_device_open(int index, const mc_device_desc *desc, void **out, mc_device_info *info)
{
    (void)desc; /* the execution-time limit is the hardware's, not emulated */
    *out = NULL;
    const char *why = "";
    const mc__cuda_api *cu = mc__cuda_driver(&why);
    if (!cu) return mc__fail(MC_ERR_NOT_FOUND, "cuda: %s", why);
    if (index < 0 || index >= cuda_device_count()) return mc__fail(MC_ERR_NOT_FOUND, "cuda:%d is not present", index);

    mc__cuda_device *dev = mc__calloc(1, sizeof *dev);
    if (!dev) return mc__fail(MC_ERR_NO_MEMORY, "cuda: out of memory opening the device");
    dev->cu = cu;
    dev->index = index;
    pthread_mutex_init(&dev->init_mu, NULL);
    pthread_mutex_init(&dev->lost_mu, NULL);
    pthread_mutex_init(&dev->mu, NULL);
    pthread_cond_init(&dev->cv, NULL);

    mc_status s = query_info(cu, index, &dev->cudev, &dev->info, &dev->cc_major, &dev->cc_minor, &dev->smem_optin);
    if (s != MC_OK) {
        device_free(dev);
        return s;
    }
    snprintf(dev->arch, sizeof dev->arch, "sm_%d%d", dev->cc_major, dev->cc_minor);
    if (cu->DriverGetVersion(&dev->driver_version) != CUDA_SUCCESS) dev->driver_version = 0;

    CUresult r = cu->DevicePrimaryCtxRetain(&dev->ctx, dev->cudev);
    if (r != CUDA_SUCCESS) {
        dev->ctx = NULL;
        s = mc__cuda_fail(NULL, r, "cuDevicePrimaryCtxRetain");
        device_free(dev);
        return s;
    }
    if ((s = mc__cuda_enter(dev)) != MC_OK) {
        device_free(dev);
        return s;
    }
    /* A context that died earlier in this process stays dead: resetting the
     * primary context or creating a new one fails the same way. Creating a
     * stream and querying it (neither waits for other work) reports that
     * sticky error, so say so now rather than at the first command buffer. */
    r = cu->StreamCreate(&dev->xfer, CU_STREAM_NON_BLOCKING);
    if (r != CUDA_SUCCESS) dev->xfer = NULL;
    else r = cu->StreamQuery(dev->xfer);
    if (r != CUDA_SUCCESS) {
        char t[120];
        if (mc__cuda_is_sticky(r))
            s = mc__fail(MC_ERR_DEVICE_LOST,
                         "cuda:%d is unusable in this process after an earlier fault (%s); restart the process", index,
                         mc__cuda_text(r, t, sizeof t));
        else s = mc__cuda_fail(NULL, r, "cuStreamCreate");
        mc__cuda_leave(dev);
        device_free(dev);
        return s;
    }
    switch (memops_kind(cu, dev->cudev)) {
    case 1:
        dev->write64 = cu->StreamWriteValue64;
        dev->wait64 = cu->StreamWaitValue64;
        if (mc__env_int("MC_CUDA_BATCH_MEMOPS", 1)) dev->batch64 = cu->StreamBatchMemOp;
        break;
    case 2:
        dev->write64 = cu->StreamWriteValue64V1;
        dev->wait64 = cu->StreamWaitValue64V1;
        break;
    default: break;
    }
    /* The one-thread event kernels: only needed without memory operations,
     * but cheap to have (the driver JIT-compiles a few lines of PTX). */
    r = mc__cuda_load_module(dev, builtin_ptx, &dev->builtin);
    if (r == CUDA_SUCCESS) {
        if (cu->ModuleGetFunction(&dev->k_signal, dev->builtin, "mc_event_signal") != CUDA_SUCCESS ||
            cu->ModuleGetFunction(&dev->k_wait, dev->builtin, "mc_event_wait") != CUDA_SUCCESS) {
            dev->k_signal = dev->k_wait = NULL;
        }
        CUfunction poke = NULL;
        if (cu->ModuleGetFunction(&poke, dev->builtin, "mc_poke") == CUDA_SUCCESS) dev->poke = poke_pipeline(poke);
    } else {
        dev->builtin = NULL;
        char t[120];
        mc__log(MC_LOG_DEBUG, "cuda.builtin_unavailable", "cuda:%d: built-in PTX did not load: %s", index,
                mc__cuda_text(r, t, sizeof t));
    }
    mc__cuda_leave(dev);
    if (!dev->write64 && !dev->k_signal) {
        device_free(dev);
        return mc__fail(MC_ERR_UNSUPPORTED,
                        "cuda:%d has neither 64-bit stream memory operations nor a working PTX JIT: cannot observe "
                        "completion",
                        index);
    }
    if (!dev->write64)
        mc__log(MC_LOG_INFO, "cuda.no_memops",
                "cuda:%d lacks 64-bit stream memory operations: events and completion use one-thread kernels", index);

    dev->pass_markers = mc__env_int("MC_CUDA_PASS_MARKERS", 0) != 0;
    dev->replay = mc__env_int("MC_CUDA_REPLAY", 1) != 0;
    dev->defer_to_waiters = mc__env_int("MC_CUDA_DEFER", 0) != 0;
    dev->done_events = strcmp(mc__env_str("MC_CUDA_DONE", "marker"), "event") == 0;
    dev->replay = mc__cuda_replay_enabled(dev); /* and the driver has graphs */
    long long yield_us = mc__env_int("MC_CUDA_YIELD_US", 20000);
    dev->yield_ns = (uint64_t)(yield_us > 0 ? yield_us : 0) * 1000u;
    long long spin_us = mc__env_int("MC_CUDA_SPIN_US", 100);
    dev->spin_ns = (uint64_t)(spin_us > 0 ? spin_us : 0) * 1000u;
    atomic_store(&dev->indirect, MC__CUDA_IND_UNKNOWN);

    if (pthread_create(&dev->thread, NULL, mc__cuda_completion_main, dev) != 0) {
        device_free(dev);
        return mc__fail(MC_ERR_INTERNAL, "cuda:%d: cannot start the completion thread", index);
    }
    dev->thread_started = true;
    *info = dev->info;
    *out = dev;
    return MC_OK;
}

static void cuda_device_close(void *devp)
{
    mc__cuda_device *dev = devp;
    if (!dev) return;
    if (dev->thread_started) {
        pthread_mutex_lock(&dev->mu);
        atomic_store(&dev->stop, true);
        pthread_cond_broadcast(&dev->cv);
        pthread_mutex_unlock(&dev->mu);
        pthread_join(dev->thread, NULL);
    }
    device_free(dev);
}

/* ---- buffers -------------------------------------------------------------- */

static mc_status cuda_buffer_create(void *devp, size_t size, mc_storage storage, const char *label, void **out,
                                    void **host)
{
    mc__cuda_device *dev = devp;
    const mc__cuda_api *cu = dev->cu;
    (void)label;
    *out = NULL;
    *host = NULL;
    if (size == 0) return mc__fail(MC_ERR_INVALID_ARGUMENT, "cuda: buffer size is 0");
    mc__cuda_buffer *b = mc__calloc(1, sizeof *b);
    if (!b) return mc__fail(MC_ERR_NO_MEMORY, "cuda: out of memory");
    b->size = size;
    b->storage = storage;
    mc_status s = mc__cuda_enter(dev);
    if (s != MC_OK) {
        free(b);
        return s;
    }
    CUresult r;
    if (storage == MC_STORAGE_PRIVATE) {
        r = cu->MemAlloc(&b->dptr, size);
        if (r != CUDA_SUCCESS) {
            s = mc__cuda_fail(dev, r, "cuMemAlloc");
            goto fail;
        }
        /* Zero-filled like Metal's and the CPU device's buffers. */
        r = cu->MemsetD8Async(b->dptr, 0, size, dev->xfer);
        if (r == CUDA_SUCCESS) r = cu->StreamSynchronize(dev->xfer);
        if (r != CUDA_SUCCESS) {
            s = mc__cuda_fail(dev, r, "zero-filling a buffer");
            (void)cu->MemFree(b->dptr);
            goto fail;
        }
    } else {
        r = cu->MemHostAlloc(&b->host, size, CU_MEMHOSTALLOC_DEVICEMAP | CU_MEMHOSTALLOC_PORTABLE);
        if (r != CUDA_SUCCESS) {
            b->host = NULL;
            s = mc__cuda_fail(dev, r, "cuMemHostAlloc (shared storage is pinned host memory)");
            goto fail;
        }
        r = cu->MemHostGetDevicePointer(&b->dptr, b->host, 0);
        if (r != CUDA_SUCCESS) {
            s = mc__cuda_fail(dev, r, "cuMemHostGetDevicePointer");
            (void)cu->MemFreeHost(b->host);
            goto fail;
        }
        memset(b->host, 0, size);
    }
    mc__cuda_leave(dev);
    *out = b;
    *host = b->host;
    return MC_OK;
fail:
    mc__cuda_leave(dev);
    free(b);
    return s;
}

static void cuda_buffer_destroy(void *devp, void *bp)
{
    mc__cuda_device *dev = devp;
    mc__cuda_buffer *b = bp;
    if (!b) return;
    if (mc__cuda_enter(dev) == MC_OK) {
        if (b->storage == MC_STORAGE_PRIVATE) (void)dev->cu->MemFree(b->dptr);
        else if (b->registered) (void)dev->cu->MemHostUnregister(b->host); /* the caller's memory: unpin only */
        else (void)dev->cu->MemFreeHost(b->host);
        mc__cuda_leave(dev);
    }
    free(b);
}

/* The caller's memory pinned and mapped into the device: kernels reach it
 * over the bus through the device pointer, as they do cuMemHostAlloc's
 * shared storage; the transfers and destroy see b->host as usual. */
static mc_status cuda_buffer_wrap(void *devp, void *host, size_t size, const char *label, void **out)
{
    mc__cuda_device *dev = devp;
    const mc__cuda_api *cu = dev->cu;
    (void)label;
    *out = NULL;
    if (!cu->MemHostRegister || !cu->MemHostUnregister)
        return mc__fail(MC_ERR_UNSUPPORTED, "cuda: this driver has no cuMemHostRegister: cannot wrap host memory");
    mc__cuda_buffer *b = mc__calloc(1, sizeof *b);
    if (!b) return mc__fail(MC_ERR_NO_MEMORY, "cuda: out of memory");
    mc_status s = mc__cuda_enter(dev);
    if (s != MC_OK) {
        free(b);
        return s;
    }
    CUresult r = cu->MemHostRegister(host, size, CU_MEMHOSTREGISTER_DEVICEMAP | CU_MEMHOSTREGISTER_PORTABLE);
    if (r == CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED) {
        s = mc__fail(MC_ERR_INVALID_ARGUMENT,
                     "cuda: the %zu bytes at %p are already pinned (another buffer over "
                     "the same pages, or cuMemHostAlloc memory): pinned memory cannot be registered twice",
                     size, host);
        goto fail;
    }
    if (r != CUDA_SUCCESS) {
        s = mc__cuda_fail(dev, r, "cuMemHostRegister (a buffer over host memory)");
        goto fail;
    }
    r = cu->MemHostGetDevicePointer(&b->dptr, host, 0);
    if (r != CUDA_SUCCESS) {
        s = mc__cuda_fail(dev, r, "cuMemHostGetDevicePointer (a buffer over host memory)");
        (void)cu->MemHostUnregister(host);
        goto fail;
    }
    mc__cuda_leave(dev);
    b->host = host;
    b->size = size;
    b->storage = MC_STORAGE_SHARED;
    b->registered = true;
    *out = b;
    return MC_OK;
fail:
    mc__cuda_leave(dev);
    free(b);
    return s;
}

static mc_status cuda_buffer_device_address(void *devp, void *bp, uint64_t *addr)
{
    (void)devp;
    *addr = (uint64_t)((mc__cuda_buffer *)bp)->dptr;
    return MC_OK;
}

static mc_status check_range(const mc__cuda_buffer *b, size_t offset, size_t len, const char *what)
{
    if (offset > b->size || len > b->size - offset)
        return mc__fail(MC_ERR_INVALID_ARGUMENT, "cuda: %s of %zu bytes at %zu is outside the buffer (%zu bytes)", what,
                        len, offset, b->size);
    return MC_OK;
}

/* Transfers go through the device's own stream and wait for it: a plain
 * cuMemcpyHtoD from pageable memory may return before the data reaches the
 * device, and a queue's non-blocking stream would not wait for it. */
static mc_status cuda_buffer_write(void *devp, void *bp, size_t offset, const void *src, size_t len)
{
    mc__cuda_device *dev = devp;
    mc__cuda_buffer *b = bp;
    mc_status s = check_range(b, offset, len, "write");
    if (s != MC_OK || len == 0) return s;
    if (b->host) {
        memcpy((char *)b->host + offset, src, len);
        return MC_OK;
    }
    if ((s = mc__cuda_enter(dev)) != MC_OK) return s;
    CUresult r = dev->cu->MemcpyHtoDAsync(b->dptr + offset, src, len, dev->xfer);
    if (r == CUDA_SUCCESS) r = dev->cu->StreamSynchronize(dev->xfer);
    if (r != CUDA_SUCCESS) s = mc__cuda_fail(dev, r, "buffer write");
    mc__cuda_leave(dev);
    return s;
}

static mc_status cuda_buffer_read(void *devp, void *bp, size_t offset, void *dst, size_t len)
{
    mc__cuda_device *dev = devp;
    mc__cuda_buffer *b = bp;
    mc_status s = check_range(b, offset, len, "read");
    if (s != MC_OK || len == 0) return s;
    if (b->host) {
        memcpy(dst, (const char *)b->host + offset, len);
        return MC_OK;
    }
    if ((s = mc__cuda_enter(dev)) != MC_OK) return s;
    CUresult r = dev->cu->MemcpyDtoHAsync(dst, b->dptr + offset, len, dev->xfer);
    if (r == CUDA_SUCCESS) r = dev->cu->StreamSynchronize(dev->xfer);
    if (r != CUDA_SUCCESS) s = mc__cuda_fail(dev, r, "buffer read");
    mc__cuda_leave(dev);
    return s;
}

/* ---- timeline events ------------------------------------------------------- */

static mc_status cuda_event_create(void *devp, uint64_t initial, void **out)
{
    mc__cuda_device *dev = devp;
    *out = NULL;
    mc__cuda_event *e = mc__calloc(1, sizeof *e);
    if (!e) return mc__fail(MC_ERR_NO_MEMORY, "cuda: out of memory");
    mc_status s = mc__cuda_enter(dev);
    if (s != MC_OK) {
        free(e);
        return s;
    }
    void *p = NULL;
    CUresult r = dev->cu->MemHostAlloc(&p, sizeof(uint64_t), CU_MEMHOSTALLOC_DEVICEMAP | CU_MEMHOSTALLOC_PORTABLE);
    if (r == CUDA_SUCCESS) {
        r = dev->cu->MemHostGetDevicePointer(&e->dptr, p, 0);
        if (r != CUDA_SUCCESS) (void)dev->cu->MemFreeHost(p);
    }
    mc__cuda_leave(dev);
    if (r != CUDA_SUCCESS) {
        free(e);
        return mc__cuda_fail(dev, r, "allocating an event counter");
    }
    e->host = p;
    __atomic_store_n(e->host, initial, __ATOMIC_RELEASE);
    *out = e;
    return MC_OK;
}

static void cuda_event_destroy(void *devp, void *ep)
{
    mc__cuda_device *dev = devp;
    mc__cuda_event *e = ep;
    if (!e) return;
    if (mc__cuda_enter(dev) == MC_OK) {
        (void)dev->cu->MemFreeHost(e->host);
        mc__cuda_leave(dev);
    }
    free(e);
}

static uint64_t cuda_event_value(void *devp, void *ep)
{
    (void)devp;
    mc__cuda_event *e = ep;
    return __atomic_load_n(e->host, __ATOMIC_ACQUIRE);
}

static mc_status cuda_event_signal(void *devp, void *ep, uint64_t value)
{
    (void)devp;
    mc__cuda_event_raise(ep, value);
    return MC_OK;
}

static mc_status cuda_event_wait(void *devp, void *ep, uint64_t value, uint64_t timeout_ns)
{
    mc__cuda_device *dev = devp;
    mc__cuda_event *e = ep;
    uint64_t deadline = mc__deadline(timeout_ns);
    mc__cuda_backoff b;
    mc__cuda_backoff_init(&b);
    b.yield_ns = dev->yield_ns;
    for (;;) {
        if (__atomic_load_n(e->host, __ATOMIC_ACQUIRE) >= value) return MC_OK;
        if (atomic_load(&dev->lost) != MC__CUDA_ALIVE) {
            if (__atomic_load_n(e->host, __ATOMIC_ACQUIRE) >= value) return MC_OK;
            return mc__fail(MC_ERR_DEVICE_LOST, "cuda:%d: device lost while waiting for an event: %s", dev->index,
                            dev->lost_msg);
        }
        if (mc__now_ns() >= deadline) return MC_ERR_WAIT_TIMEOUT;
        mc__cuda_backoff_step(&b, dev->spin_ns, 200000u, deadline);
    }
}

/* ---- the table ------------------------------------------------------------- */

const mc__hal mc__cuda_hal = {
    .version = MC__HAL_VERSION,
    .kind = MC_DEVICE_CUDA,
    .name = "cuda",
    .device_count = cuda_device_count,
    .device_info = cuda_device_info,
    .device_open = cuda_device_open,
    .device_close = cuda_device_close,
    .buffer_create = cuda_buffer_create,
    .buffer_destroy = cuda_buffer_destroy,
    .buffer_write = cuda_buffer_write,
    .buffer_read = cuda_buffer_read,
    .library_create = mc__cuda_library_create,
    .library_create_builtin = NULL,
    .library_destroy = mc__cuda_library_destroy,
    .pipeline_create = mc__cuda_pipeline_create,
    .pipeline_destroy = mc__cuda_pipeline_destroy,
    .compiler_identity = mc__cuda_compiler_identity,
    .pipeline_export = mc__cuda_pipeline_export,
    .pipeline_import = mc__cuda_pipeline_import,
    .queue_create = mc__cuda_queue_create,
    .queue_destroy = mc__cuda_queue_destroy,
    .submit = mc__cuda_submit,
    .submission_wait = mc__cuda_submission_wait,
    .event_create = cuda_event_create,
    .event_destroy = cuda_event_destroy,
    .event_value = cuda_event_value,
    .event_signal = cuda_event_signal,
    .event_wait = cuda_event_wait,
    .cmdlist_create = mc__cuda_cmdlist_create,
    .cmdlist_destroy = mc__cuda_cmdlist_destroy,
    .default_language = MC_LANG_CUDA,
    .kernel_extension = ".cu",
    .fork_safe = false,
    .queues_overlap = true,
    .buffer_wrap = cuda_buffer_wrap,
    .buffer_device_address = cuda_buffer_device_address,
};
