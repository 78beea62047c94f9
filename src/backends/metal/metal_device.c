/*
 * DOC: Metal device: devices, buffers, residency, events and the HAL table
 *
 * Devices are listed as MTLCreateSystemDefaultDevice() first, then the rest
 * of MTLCopyAllDevices(). Buffers use shared storage: one allocation the CPU
 * and GPU both address on Apple silicon (F153), so write/read are plain
 * copies. On macOS 15 and later a device keeps one MTLResidencySet holding
 * every buffer it made, attached to each of its queues, so the OS does not
 * page buffers out between submissions (F169); before macOS 15 there is none.
 * Timeline events are MTLSharedEvents (F678): CPU waits use
 * waitUntilSignaledValue:timeoutMS: where the OS has it (macOS 12, F692),
 * else a notification through an MTLSharedEventListener.
 */
#include "backends/metal/metal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define MC__MTL_MAX_DEVICES 16
/* Apple does not document the GPU watchdog (F145, F146); reports put it at a
 * few seconds (F689, F696). The runner sizes chunks from measured time and
 * stays far below this figure, the same one the CPU device enforces. */
#define MC__MTL_ASSUMED_LIMIT_MS 5000u
#define MC__MTL_SIMD_WIDTH 32u /* every Apple GPU; pipelines report their own */

/* ---- devices -------------------------------------------------------------- */

/* Fills out[] with owned (+1) devices, the system default first. */
static int list_devices(id *out, int cap)
{
    mc__mtl_runtime_init();
    id pool = mc__mtl_pool_push();
    int n = 0;
    id def = MTLCreateSystemDefaultDevice(); /* Create rule: +1 */
    if (def) out[n++] = def;
    id all = MTLCopyAllDevices(); /* Copy rule: +1 */
    if (all) {
        NSUInteger count = msg_count(all);
        for (NSUInteger i = 0; i < count && n < cap; i++) {
            id d = msg_objectAtIndex_(all, i); /* borrowed from the array */
            if (d && d != def) out[n++] = mc__mtl_retain(d);
        }
        mc__mtl_release(all);
    }
    mc__mtl_pool_pop(pool);
    return n;
}

static void release_devices(id *list, int n, int keep)
{
    for (int i = 0; i < n; i++)
        if (i != keep) mc__mtl_release(list[i]);
}

/* "Version 15.1 (Build 24B83)" -> "macOS 15.1 24B83", major 15. Pool held. */
static int os_version(char *out, size_t cap)
{
    char raw[128];
    mc__mtl_cstr(msg_operatingSystemVersionString(msg_processInfo(mc__mtl_cls.NSProcessInfo)), raw, sizeof raw);
    char ver[32] = "", build[32] = "";
    int major = 0;
    if (sscanf(raw, "Version %31s (Build %31[^)])", ver, build) >= 1) major = atoi(ver);
    if (ver[0]) snprintf(out, cap, "macOS %s%s%s", ver, build[0] ? " " : "", build);
    else snprintf(out, cap, "macOS %.60s", raw[0] ? raw : "(unknown version)");
    return major;
}

/* MTLLanguageVersion availability in Apple's documentation (the enum's
 * cases: 2.3 macOS 11, 2.4 macOS 12, 3.0 macOS 13, 3.1 macOS 14, 3.2 macOS
 * 15). Asking for a version the OS lacks fails every compile. */
MTLLanguageVersion mc__mtl_newest_language(int os_major)
{
    static const struct {
        int os;
        unsigned major, minor;
    } table[] = {{15, 3, 2}, {14, 3, 1}, {13, 3, 0}, {12, 2, 4}, {11, 2, 3}};
    for (size_t i = 0; i < sizeof table / sizeof table[0]; i++)
        if (os_major >= table[i].os) return MC__MTL_LANGUAGE_VERSION(table[i].major, table[i].minor);
    return 0;
}

/* Metal's API validation layer is on (MTL_DEBUG_LAYER=1, what Xcode's
 * default scheme sets; METAL_DEVICE_WRAPPER_TYPE=1 on older systems). */
static bool api_validation_on(void)
{
    const char *v = getenv("MTL_DEBUG_LAYER");
    const char *w = getenv("METAL_DEVICE_WRAPPER_TYPE");
    return (v && *v && strcmp(v, "0") != 0) || (w && !strcmp(w, "1"));
}

/* What a device has of the optional features, asked without sending a
 * message it may not implement (the paravirtual GPU of hosted runners lacks
 * some, as does an older OS). Pool held. */
typedef struct probe {
    bool families; /* responds to supportsFamily: (macOS 10.15) */
    bool icb, archive, wait_timeout, residency, before_apple9;
} probe;

static bool family(id device, bool known, MTLGPUFamily f)
{
    return known && msg_supportsFamily_(device, f);
}

static void probe_device(id device, probe *p)
{
    memset(p, 0, sizeof *p);
    p->families = mc__mtl_responds(device, MC__SEL(supportsFamily_));
    /* ICB compute commands: Apple7 (M1) or Mac2 (Apple's feature set
     * tables); without supportsFamily: there is no way to know, so none. */
    p->icb = mc__mtl_cls.MTLIndirectCommandBufferDescriptor &&
             mc__mtl_responds(device, MC__SEL(newIndirectCommandBufferWithDescriptor_maxCommandCount_options_)) &&
             (family(device, p->families, MC__MTL_GPU_FAMILY_APPLE7) ||
              family(device, p->families, MC__MTL_GPU_FAMILY_MAC2));
    p->before_apple9 = !family(device, p->families, MC__MTL_GPU_FAMILY_APPLE9);
    p->archive = mc__mtl_cls.MTLBinaryArchiveDescriptor &&
                 mc__mtl_responds(device, MC__SEL(newBinaryArchiveWithDescriptor_error_));
    p->residency = mc__mtl_cls.MTLResidencySetDescriptor &&
                   mc__mtl_responds(device, MC__SEL(newResidencySetWithDescriptor_error_));
    /* Timed waits are a method of the event's class: ask one. */
    id ev = msg_newSharedEvent(device);
    p->wait_timeout = ev && mc__mtl_responds(ev, MC__SEL(waitUntilSignaledValue_timeoutMS_));
    mc__mtl_release(ev);
}

/* Pool held. */
static void fill_info(id device, int index, const probe *p, mc_device_info *info)
{
    memset(info, 0, sizeof *info);
    info->kind = MC_DEVICE_METAL;
    info->index = index;
    mc__mtl_cstr(msg_name(device), info->name, sizeof info->name);
    /* The GPU architecture ("applegpu_g14s", macOS 14) keys the pipeline
     * cache; older systems only have the marketing name. */
    if (mc__mtl_responds(device, MC__SEL(architecture)))
        mc__mtl_cstr(msg_name(msg_architecture(device)), info->identity, sizeof info->identity);
    if (!info->identity[0]) snprintf(info->identity, sizeof info->identity, "%s", info->name);
    MTLSize m = msg_maxThreadsPerThreadgroup(device);
    info->max_threads_per_threadgroup = (uint32_t)MC__MIN(m.width, (NSUInteger)UINT32_MAX);
    info->threadgroup_memory_size = msg_maxThreadgroupMemoryLength(device);
    info->simd_width = MC__MTL_SIMD_WIDTH;
    info->compute_units = 0; /* Metal does not say */
    info->unified_memory = msg_hasUnifiedMemory(device) ? true : false;
    info->execution_time_limit_ns = (uint64_t)MC__MTL_ASSUMED_LIMIT_MS * 1000000u;
    info->max_buffer_size = msg_maxBufferLength(device);
    info->features = MC_FEATURE_GPU_EVENT_WAIT | MC_FEATURE_INDIRECT_DISPATCH | MC_FEATURE_WATCHDOG;
    if (p->icb) info->features |= MC_FEATURE_NATIVE_COMMAND_LISTS;
    if (p->archive) info->features |= MC_FEATURE_BINARY_ARCHIVE;
    if (p->residency) info->features |= MC_FEATURE_RESIDENCY_SET;
    if (p->wait_timeout) info->features |= MC_FEATURE_TIMED_EVENT_WAIT;
}

static int mtl_device_count(void)
{
    id list[MC__MTL_MAX_DEVICES];
    int n = list_devices(list, MC__MTL_MAX_DEVICES);
    id pool = mc__mtl_pool_push();
    release_devices(list, n, -1);
    mc__mtl_pool_pop(pool);
    return n;
}

static mc_status mtl_device_info(int index, mc_device_info *out)
{
    id list[MC__MTL_MAX_DEVICES];
    int n = list_devices(list, MC__MTL_MAX_DEVICES);
    id pool = mc__mtl_pool_push();
    if (index >= 0 && index < n) {
        probe p;
        probe_device(list[index], &p);
        fill_info(list[index], index, &p, out);
    }
    release_devices(list, n, -1);
    mc__mtl_pool_pop(pool);
    if (index < 0 || index >= n) return mc__fail(MC_ERR_NOT_FOUND, "no Metal device %d (%d present)", index, n);
    return MC_OK;
}

static id make_cmdbuf_descriptor(bool retained)
{
    id d = msg_init(msg_alloc(mc__mtl_cls.MTLCommandBufferDescriptor));
    if (!d) return d;
    /* Per-encoder state in the error's userInfo (F686); cheap enough for
     * production, and the only way to know which pass faulted. */
    msg_setErrorOptions_(d, MTLCommandBufferErrorOptionEncoderExecutionStatus);
    msg_setRetainedReferences_(d, retained ? MC__MTL_YES : MC__MTL_NO);
    return d;
}

/* Pool held. */
static void make_residency_set(mc__mtl_device *dev)
{
    if (!mc__mtl_cls.MTLResidencySetDescriptor ||
        !mc__mtl_responds(dev->device, MC__SEL(newResidencySetWithDescriptor_error_)))
        return; /* before macOS 15: the OS manages residency itself */
    id desc = msg_init(msg_alloc(mc__mtl_cls.MTLResidencySetDescriptor));
    if (!desc) return;
    msg_setLabel_(desc, mc__mtl_str("metal-compute buffers"));
    msg_setInitialCapacity_(desc, 64);
    id err = (id)0;
    dev->residency = msg_newResidencySetWithDescriptor_error_(dev->device, desc, &err);
    mc__mtl_release(desc);
    if (!dev->residency) {
        char text[160];
        mc__mtl_error_text(err, text, sizeof text);
        mc__log(MC_LOG_WARN, "metal.residency_set", "no residency set, buffers may be paged out when idle: %s", text);
    }
}

static mc_status mtl_device_open(int index, const mc_device_desc *desc, void **out, mc_device_info *info)
{
    (void)desc; /* the Metal watchdog is the OS's; nothing to configure */
    id list[MC__MTL_MAX_DEVICES];
    int n = list_devices(list, MC__MTL_MAX_DEVICES);
    id pool = mc__mtl_pool_push(); /* last releases run dealloc, which may autorelease */
    mc__mtl_device *dev = NULL;
    mc_status s = MC_OK;
    if (index < 0 || index >= n) s = mc__fail(MC_ERR_NOT_FOUND, "no Metal device %d (%d present)", index, n);
    else if (!mc__mtl_cls.MTLCommandBufferDescriptor)
        s = mc__fail(MC_ERR_UNSUPPORTED, "Metal device: macOS 11 or later is needed (MTLCommandBufferDescriptor)");
    else if (!(dev = mc__calloc(1, sizeof *dev))) s = mc__fail(MC_ERR_NO_MEMORY, "Metal device: out of host memory");
    release_devices(list, n, s == MC_OK ? index : -1);
    if (s != MC_OK) {
        mc__mtl_pool_pop(pool);
        return s;
    }
    dev->device = list[index];
    pthread_mutex_init(&dev->lock, NULL);
    probe p;
    probe_device(dev->device, &p);
    fill_info(dev->device, index, &p, &dev->info);
    dev->has_icb = p.icb;
    dev->has_archive = p.archive;
    dev->has_wait_timeout = p.wait_timeout;
    /* Pipelines used only inside an ICB can fault on Apple GPUs before the
     * Apple9 family (M3) unless the encoder used them (tinygrad's MetalGraph
     * found this); the workaround, an empty dispatch with each, is what
     * Metal's API validation rejects (a zero grid aborts the process). So:
     * only on families before Apple9, only with validation off, and
     * MC_METAL_ICB_PIPELINE_FIX=0 turns it off (docs/METAL.md). */
    dev->icb_pipeline_fix =
        p.icb && p.before_apple9 && !api_validation_on() && mc__env_int("MC_METAL_ICB_PIPELINE_FIX", 1) != 0;
    int major = os_version(dev->os_version, sizeof dev->os_version);
    /* An explicit language version (F171): the same source means the same
     * program on every OS that has it. MSL 3.0 from macOS 13; before that
     * the newest the OS documents (2.4 on 12, 2.3 on 11). An unreadable
     * version string (major 0) is taken as macOS 13. */
    dev->max_language = mc__mtl_newest_language(major ? major : 13);
    dev->default_language = MC__MIN(dev->max_language, MC__MTL_DEFAULT_LANGUAGE);
    dev->cbdesc[0] = make_cmdbuf_descriptor(true);
    dev->cbdesc[1] = make_cmdbuf_descriptor(false);
    if (p.residency) make_residency_set(dev);
    if (!dev->cbdesc[0] || !dev->cbdesc[1]) {
        mc__mtl_release(dev->cbdesc[0]);
        mc__mtl_release(dev->cbdesc[1]);
        mc__mtl_release(dev->residency);
        mc__mtl_release(dev->device);
        mc__mtl_pool_pop(pool);
        pthread_mutex_destroy(&dev->lock);
        free(dev);
        return mc__fail(MC_ERR_INTERNAL, "Metal device: cannot make a command buffer descriptor");
    }
    mc__mtl_pool_pop(pool);
    mc__log(MC_LOG_INFO, "metal.device_open", "%s (%s), %s, residency set: %s", dev->info.name, dev->info.identity,
            dev->os_version, dev->residency ? "yes" : "no");
    *out = dev;
    if (info) *info = dev->info;
    return MC_OK;
}

static void mtl_device_close(void *vdev)
{
    mc__mtl_device *dev = vdev;
    if (!dev) return;
    /* A last release runs dealloc, which may autorelease. */
    id pool = mc__mtl_pool_push();
    if (dev->residency) {
        msg_endResidency(dev->residency);
        mc__mtl_release(dev->residency);
    }
    mc__mtl_release(dev->listener);
    for (int i = 0; i < MC__MTL_UTIL_COUNT; i++) mc__mtl_release(dev->util_pso[i]);
    mc__mtl_release(dev->cbdesc[0]);
    mc__mtl_release(dev->cbdesc[1]);
    mc__mtl_release(dev->device);
    mc__mtl_pool_pop(pool);
    pthread_mutex_destroy(&dev->lock);
    free(dev);
}

mc_status mc__mtl_device_lost_status(mc__mtl_device *dev)
{
    if (!atomic_load(&dev->lost)) return MC_OK;
    return mc__fail(MC_ERR_DEVICE_LOST, "Metal device lost earlier: %s", dev->lost_msg);
}

/* ---- buffers and residency -------------------------------------------------- */

void mc__mtl_residency_commit_locked(mc__mtl_device *dev)
{
    if (!dev->residency || !dev->residency_dirty) return;
    msg_commit(dev->residency);
    msg_requestResidency(dev->residency);
    dev->residency_dirty = false;
}

/* Every buffer joins the residency set, so it is not paged out while idle. */
static void residency_add(mc__mtl_device *dev, mc__mtl_buffer *b)
{
    if (!dev->residency) return;
    id pool = mc__mtl_pool_push();
    pthread_mutex_lock(&dev->lock);
    msg_addAllocation_(dev->residency, b->buffer);
    dev->residency_dirty = true;
    pthread_mutex_unlock(&dev->lock);
    mc__mtl_pool_pop(pool);
}

static mc_status mtl_buffer_create(void *vdev, size_t size, mc_storage storage, const char *label, void **out,
                                   void **host)
{
    mc__mtl_device *dev = vdev;
    (void)storage; /* shared storage for both: one allocation on unified memory (F153) */
    mc_status s = mc__mtl_device_lost_status(dev);
    if (s != MC_OK) return s;
    mc__mtl_buffer *b = mc__calloc(1, sizeof *b);
    if (!b) return mc__fail(MC_ERR_NO_MEMORY, "Metal buffer: out of host memory");
    id pool = mc__mtl_pool_push();
    b->buffer = msg_newBufferWithLength_options_(dev->device, size, MTLResourceStorageModeShared);
    if (b->buffer) {
        if (label) msg_setLabel_(b->buffer, mc__mtl_str(label));
        b->host = msg_contents(b->buffer);
        b->size = size;
    }
    mc__mtl_pool_pop(pool);
    if (!b->buffer) {
        free(b);
        return mc__fail(MC_ERR_OUT_OF_MEMORY, "Metal could not allocate a buffer of %zu bytes (max %llu)", size,
                        (unsigned long long)dev->info.max_buffer_size);
    }
    residency_add(dev, b);
    *out = b;
    if (host) *host = b->host;
    return MC_OK;
}

/* The caller's memory as an MTLBuffer (hal.h buffer_wrap). Metal takes
 * only whole pages here (newBufferWithBytesNoCopy:length:); with no
 * deallocator block it never frees them, and destroy releases the MTLBuffer
 * as for any other buffer. */
static mc_status mtl_buffer_wrap(void *vdev, void *host, size_t size, const char *label, void **out)
{
    mc__mtl_device *dev = vdev;
    mc_status s = mc__mtl_device_lost_status(dev);
    if (s != MC_OK) return s;
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    if ((uintptr_t)host % page || size % page)
        return mc__fail(MC_ERR_INVALID_ARGUMENT,
                        "metal: a buffer over host memory must start on a page and be whole pages "
                        "(newBufferWithBytesNoCopy:length:, page size %zu bytes): got %p and %zu bytes; "
                        "copy instead (initial_data)",
                        page, host, size);
    mc__mtl_buffer *b = mc__calloc(1, sizeof *b);
    if (!b) return mc__fail(MC_ERR_NO_MEMORY, "Metal buffer: out of host memory");
    id pool = mc__mtl_pool_push();
    b->buffer = msg_newBufferWithBytesNoCopy_length_options_deallocator_(dev->device, host, size,
                                                                         MTLResourceStorageModeShared, NULL);
    if (b->buffer) {
        if (label) msg_setLabel_(b->buffer, mc__mtl_str(label));
        b->host = host;
        b->size = size;
    }
    mc__mtl_pool_pop(pool);
    if (!b->buffer) {
        free(b);
        return mc__fail(MC_ERR_OUT_OF_MEMORY, "Metal refused a buffer over %zu bytes of host memory at %p", size, host);
    }
    residency_add(dev, b);
    *out = b;
    return MC_OK;
}

static void mtl_buffer_destroy(void *vdev, void *vbuf)
{
    mc__mtl_device *dev = vdev;
    mc__mtl_buffer *b = vbuf;
    if (!b) return;
    id pool = mc__mtl_pool_push();
    if (dev->residency) {
        pthread_mutex_lock(&dev->lock);
        msg_removeAllocation_(dev->residency, b->buffer);
        dev->residency_dirty = true;
        mc__mtl_residency_commit_locked(dev); /* let its memory go now, not at the next submission */
        pthread_mutex_unlock(&dev->lock);
    }
    mc__mtl_release(b->buffer);
    mc__mtl_pool_pop(pool);
    free(b);
}

mc_status mc__mtl_buffer_new(mc__mtl_device *dev, size_t size, const char *label, mc__mtl_buffer **out)
{
    void *b = NULL;
    mc_status s = mtl_buffer_create(dev, size, MC_STORAGE_SHARED, label, &b, NULL);
    *out = b;
    return s;
}

void mc__mtl_buffer_free(mc__mtl_device *dev, mc__mtl_buffer *b)
{
    mtl_buffer_destroy(dev, b);
}

/* Lost device, then the range, for the synchronous transfers. */
static mc_status check_transfer(void *vdev, const mc__mtl_buffer *b, size_t offset, size_t len, const char *what)
{
    mc_status s = mc__mtl_device_lost_status(vdev);
    if (s != MC_OK) return s;
    if (offset > b->size || len > b->size - offset)
        return mc__fail(MC_ERR_INVALID_ARGUMENT, "%s of %zu bytes at %zu is outside the buffer (%zu bytes)", what, len,
                        offset, b->size);
    return MC_OK;
}

static mc_status mtl_buffer_write(void *vdev, void *vbuf, size_t offset, const void *src, size_t len)
{
    mc__mtl_buffer *b = vbuf;
    mc_status s = check_transfer(vdev, b, offset, len, "write");
    if (s == MC_OK && len) memcpy((char *)b->host + offset, src, len);
    return s;
}

static mc_status mtl_buffer_read(void *vdev, void *vbuf, size_t offset, void *dst, size_t len)
{
    mc__mtl_buffer *b = vbuf;
    mc_status s = check_transfer(vdev, b, offset, len, "read");
    if (s == MC_OK && len) memcpy(dst, (const char *)b->host + offset, len);
    return s;
}

/* ---- timeline events ---------------------------------------------------------- */

/* Every event entry point holds an autorelease pool: Metal may autorelease
 * inside any message, and these run on the caller's threads, which may have
 * none (an object autoreleased there would leak). */
static mc_status mtl_event_create(void *vdev, uint64_t initial, void **out)
{
    mc__mtl_device *dev = vdev;
    mc_status s = mc__mtl_device_lost_status(dev);
    if (s != MC_OK) return s;
    mc__mtl_event *e = mc__calloc(1, sizeof *e);
    if (!e) return mc__fail(MC_ERR_NO_MEMORY, "Metal event: out of host memory");
    id pool = mc__mtl_pool_push();
    e->event = msg_newSharedEvent(dev->device);
    if (e->event && initial) msg_setSignaledValue_(e->event, initial);
    mc__mtl_pool_pop(pool);
    if (!e->event) {
        free(e);
        return mc__fail(MC_ERR_OUT_OF_MEMORY, "Metal could not make a shared event");
    }
    *out = e;
    return MC_OK;
}

static void mtl_event_destroy(void *vdev, void *vev)
{
    mc__mtl_event *e = vev;
    (void)vdev;
    if (!e) return;
    id pool = mc__mtl_pool_push();
    mc__mtl_release(e->event);
    mc__mtl_pool_pop(pool);
    free(e);
}

static uint64_t mtl_event_value(void *vdev, void *vev)
{
    (void)vdev;
    id pool = mc__mtl_pool_push();
    uint64_t v = msg_signaledValue(((mc__mtl_event *)vev)->event);
    mc__mtl_pool_pop(pool);
    return v;
}

static mc_status mtl_event_signal(void *vdev, void *vev, uint64_t value)
{
    mc__mtl_event *e = vev;
    mc_status s = mc__mtl_device_lost_status(vdev);
    if (s != MC_OK) return s;
    id pool = mc__mtl_pool_push();
    uint64_t cur = msg_signaledValue(e->event);
    if (value >= cur) msg_setSignaledValue_(e->event, value);
    mc__mtl_pool_pop(pool);
    if (value < cur)
        return mc__fail(MC_ERR_INVALID_ARGUMENT, "event values only move forward: %llu is below %llu",
                        (unsigned long long)value, (unsigned long long)cur);
    return MC_OK;
}

/* A waiter shared by the waiting thread and the notification block: one
 * reference each (the block's is taken by its copy helper when Metal copies
 * the block, and dropped by its dispose helper), so whichever ends last
 * frees it, even when the wait timed out long before the notification. */
typedef struct waiter {
    pthread_mutex_t lock;
    pthread_cond_t cv;
    atomic_int refs;
    bool fired;
} waiter;

static void waiter_unref(waiter *w)
{
    if (atomic_fetch_sub(&w->refs, 1) != 1) return;
    pthread_cond_destroy(&w->cv);
    pthread_mutex_destroy(&w->lock);
    free(w);
}

static void notify_copy(void *dst, const void *src)
{
    (void)dst;
    atomic_fetch_add(&((waiter *)((const mc__mtl_block *)src)->ctx)->refs, 1);
}

static void notify_dispose(const void *src)
{
    waiter_unref(((const mc__mtl_block *)src)->ctx);
}

/* void (^)(id<MTLSharedEvent> event, uint64_t value), on the listener's queue */
static void notify_invoke(mc__mtl_block *b, id event, uint64_t value)
{
    waiter *w = b->ctx;
    (void)event;
    (void)value;
    pthread_mutex_lock(&w->lock);
    w->fired = true;
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->lock);
}

static const mc__mtl_block_descriptor_helpers notify_descriptor = {0, sizeof(mc__mtl_block), notify_copy,
                                                                   notify_dispose, "v24@?0@8Q16"};

/* Pool held. */
static mc_status listener_wait(mc__mtl_device *dev, mc__mtl_event *e, uint64_t value, uint64_t deadline)
{
    pthread_mutex_lock(&dev->lock);
    if (!dev->listener) dev->listener = msg_init(msg_alloc(mc__mtl_cls.MTLSharedEventListener));
    id listener = dev->listener;
    pthread_mutex_unlock(&dev->lock);
    if (!listener) return mc__fail(MC_ERR_INTERNAL, "Metal: cannot make an MTLSharedEventListener");
    waiter *w = mc__calloc(1, sizeof *w);
    if (!w) return mc__fail(MC_ERR_NO_MEMORY, "event wait: out of host memory");
    pthread_mutex_init(&w->lock, NULL);
    pthread_cond_init(&w->cv, NULL);
    atomic_init(&w->refs, 1);
    mc__mtl_block blk = {_NSConcreteStackBlock,
                         MC__MTL_BLOCK_HAS_COPY_DISPOSE | MC__MTL_BLOCK_HAS_SIGNATURE,
                         0,
                         (void (*)(void))notify_invoke,
                         &notify_descriptor,
                         w};
    msg_notifyListener_atValue_block_(e->event, listener, value, &blk);
    /* Waits in slices on the realtime clock the condition variable uses, and
     * measures the deadline on the monotonic one. */
    pthread_mutex_lock(&w->lock);
    while (!w->fired) {
        uint64_t now = mc__now_ns();
        if (now >= deadline) break;
        uint64_t slice = MC__MIN(deadline - now, (uint64_t)50000000u);
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        uint64_t abs_ns = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec + slice;
        ts.tv_sec = (time_t)(abs_ns / 1000000000u);
        ts.tv_nsec = (long)(abs_ns % 1000000000u);
        pthread_cond_timedwait(&w->cv, &w->lock, &ts);
    }
    pthread_mutex_unlock(&w->lock);
    waiter_unref(w);
    return msg_signaledValue(e->event) >= value ? MC_OK : MC_ERR_WAIT_TIMEOUT;
}

/* Pool held. */
static mc_status event_wait(mc__mtl_device *dev, mc__mtl_event *e, uint64_t value, uint64_t timeout_ns)
{
    if (msg_signaledValue(e->event) >= value) return MC_OK;
    mc_status s = mc__mtl_device_lost_status(dev);
    if (s != MC_OK) return s;
    if (timeout_ns == 0) return MC_ERR_WAIT_TIMEOUT;
    uint64_t deadline = mc__deadline(timeout_ns);
    if (!dev->has_wait_timeout) {
        s = listener_wait(dev, e, value, deadline);
    } else {
        /* In slices of at most an hour: "for ever" must not overflow the
         * framework's conversion to a dispatch time. */
        s = MC_ERR_WAIT_TIMEOUT;
        for (;;) {
            uint64_t now = mc__now_ns();
            if (now >= deadline) break;
            uint64_t ms = MC__MIN((deadline - now + 999999u) / 1000000u, (uint64_t)3600000u);
            if (msg_waitUntilSignaledValue_timeoutMS_(e->event, value, ms)) {
                s = MC_OK;
                break;
            }
        }
    }
    if (s == MC_ERR_WAIT_TIMEOUT && msg_signaledValue(e->event) >= value) s = MC_OK;
    return s;
}

static mc_status mtl_event_wait(void *vdev, void *vev, uint64_t value, uint64_t timeout_ns)
{
    id pool = mc__mtl_pool_push();
    mc_status s = event_wait(vdev, vev, value, timeout_ns);
    mc__mtl_pool_pop(pool);
    return s;
}

/* ---- the table ------------------------------------------------------------------- */

const mc__hal mc__metal_hal = {
    .version = MC__HAL_VERSION,
    .kind = MC_DEVICE_METAL,
    .name = "metal",
    .device_count = mtl_device_count,
    .device_info = mtl_device_info,
    .device_open = mtl_device_open,
    .device_close = mtl_device_close,
    .buffer_create = mtl_buffer_create,
    .buffer_destroy = mtl_buffer_destroy,
    .buffer_write = mtl_buffer_write,
    .buffer_read = mtl_buffer_read,
    .library_create = mc__mtl_library_create,
    .library_create_builtin = NULL,
    .library_destroy = mc__mtl_library_destroy,
    .pipeline_create = mc__mtl_pipeline_create,
    .pipeline_destroy = mc__mtl_pipeline_destroy,
    .compiler_identity = mc__mtl_compiler_identity,
    .pipeline_export = mc__mtl_pipeline_export,
    .pipeline_import = mc__mtl_pipeline_import,
    .queue_create = mc__mtl_queue_create,
    .queue_destroy = mc__mtl_queue_destroy,
    .submit = mc__mtl_submit,
    .submission_wait = NULL,
    .event_create = mtl_event_create,
    .event_destroy = mtl_event_destroy,
    .event_value = mtl_event_value,
    .event_signal = mtl_event_signal,
    .event_wait = mtl_event_wait,
    .cmdlist_create = mc__mtl_cmdlist_create,
    .cmdlist_destroy = mc__mtl_cmdlist_destroy,
    .default_language = MC_LANG_MSL,
    .kernel_extension = ".metal",
    .fork_safe = false,
    .buffer_wrap = mtl_buffer_wrap,
};
