/*
 * DOC: CPU device: devices, buffers, events and the HAL table
 *
 * Owns what the device reports about itself (limits shaped after an Apple
 * GPU, the execution-time limit and its configuration), host-memory
 * buffers, and timeline events (a counter, a mutex and a condition
 * variable, plus the submissions parked on it).
 */
#include "backends/cpu/cpu.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

/* ---- small helpers shared by the other files -------------------------- */

void *mc__cpu_alloc_aligned(size_t size, void **raw)
{
    if (size > SIZE_MAX - 64) return NULL;
    void *p = mc__calloc(1, size + 64); /* calloc: large blocks come zeroed from the OS */
    *raw = p;
    if (!p) return NULL;
    return (void *)(((uintptr_t)p + 63) & ~(uintptr_t)63);
}

mc_status mc__cpu_cond_init(pthread_cond_t *cv)
{
    /* Deadlines come from mc__now_ns (monotonic): a wall-clock jump must not
     * stretch or cut a wait. */
    mc__cond_init_monotonic(cv);
    return MC_OK;
}

bool mc__cpu_cond_wait_until(pthread_cond_t *cv, pthread_mutex_t *m, uint64_t deadline_ns)
{
    return mc__cond_wait_until(cv, m, deadline_ns);
}

/* ---- device description ------------------------------------------------ */

static void trim(char *s)
{
    size_t n = strlen(s);
    while (n && (s[n - 1] == '\n' || s[n - 1] == ' ' || s[n - 1] == '\t')) s[--n] = '\0';
    size_t i = 0;
    while (s[i] == ' ' || s[i] == '\t') i++;
    memmove(s, s + i, n - i + 1);
}

/* The processor's model from /proc/cpuinfo ("model name" on x86, other
 * keys elsewhere), or "" when there is none. */
static void cpu_model(char *out, size_t cap)
{
    static const char *const keys[] = {"model name", "Hardware", "Processor", "cpu model", "uarch", "cpu"};
    out[0] = '\0';
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (!f) return;
    char line[256];
    size_t best = MC__ARRAY_LEN(keys);
    while (fgets(line, sizeof line, f)) {
        char *colon = strchr(line, ':');
        if (!colon) continue;
        *colon = '\0';
        trim(line);
        for (size_t k = 0; k < best; k++) {
            if (strcmp(line, keys[k]) != 0) continue;
            char *v = colon + 1;
            trim(v);
            if (*v) {
                snprintf(out, cap, "%s", v);
                best = k;
            }
            break;
        }
    }
    fclose(f);
}

static uint64_t physical_memory(void)
{
    long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    if (pages <= 0 || page <= 0) return (uint64_t)1 << 32;
    return (uint64_t)pages * (uint64_t)page;
}

/* desc->time_limit_ms: >0 ms, MC_TIME_LIMIT_NONE none, 0 the default
 * ($MC_TIME_LIMIT_MS where 0 or less means none, else 5 s: the order of
 * the macOS watchdog, F146, F696). */
static mc_status time_limit_ns(const mc_device_desc *desc, uint64_t *out)
{
    long long ms = desc ? desc->time_limit_ms : 0;
    if (ms == MC_TIME_LIMIT_NONE) {
        *out = 0;
        return MC_OK;
    }
    if (ms < 0) return mc__fail(MC_ERR_INVALID_ARGUMENT, "time_limit_ms is %lld (use MC_TIME_LIMIT_NONE)", ms);
    if (ms == 0) ms = mc__env_int("MC_TIME_LIMIT_MS", MC__CPU_DEFAULT_LIMIT_MS);
    if (ms <= 0) {
        *out = 0;
        return MC_OK;
    }
    *out = (uint64_t)ms > UINT64_MAX / 1000000u ? UINT64_MAX : (uint64_t)ms * 1000000u;
    return MC_OK;
}

static void fill_info(mc_device_info *info, uint32_t workers, uint64_t limit_ns)
{
    char model[96];
    struct utsname u;
    const char *arch = uname(&u) == 0 ? u.machine : "unknown";
    cpu_model(model, sizeof model);
    memset(info, 0, sizeof *info);
    info->kind = MC_DEVICE_CPU;
    info->index = 0;
    if (model[0]) snprintf(info->name, sizeof info->name, "CPU (%u threads, %.96s)", workers, model);
    else snprintf(info->name, sizeof info->name, "CPU (%u threads)", workers);
    /* Run-time compiled kernels are built for the architecture; the model
     * keeps caches of different machines apart. */
    snprintf(info->identity, sizeof info->identity, "%.24s-%.96s", arch, model[0] ? model : "generic");
    info->max_threads_per_threadgroup = MC__CPU_MAX_THREADS;
    info->threadgroup_memory_size = MC__CPU_TGMEM_SIZE;
    info->simd_width = MC__CPU_SIMD_WIDTH;
    info->compute_units = workers;
    info->unified_memory = true;
    info->execution_time_limit_ns = limit_ns;
    info->max_buffer_size = physical_memory();
    info->features = MC_FEATURE_GPU_EVENT_WAIT | MC_FEATURE_INDIRECT_DISPATCH;
    if (limit_ns) info->features |= MC_FEATURE_WATCHDOG;
}

static uint32_t default_workers(void)
{
    unsigned n = mc__cpu_count();
    return n < 1 ? 1 : n > MC__CPU_MAX_WORKERS ? MC__CPU_MAX_WORKERS : n;
}

int mc__cpu_device_count(void)
{
    return 1;
}

mc_status mc__cpu_device_info(int index, mc_device_info *out)
{
    if (index != 0) return mc__fail(MC_ERR_NOT_FOUND, "cpu:%d: there is one CPU device (cpu:0)", index);
    uint64_t limit = 0;
    mc_status st = time_limit_ns(NULL, &limit);
    if (st != MC_OK) return st;
    fill_info(out, default_workers(), limit);
    return MC_OK;
}

static uint64_t env_ms_ns(const char *name, long long dflt_ms)
{
    long long ms = mc__env_int(name, dflt_ms);
    return ms <= 0 ? 0 : (uint64_t)ms * 1000000u;
}

mc_status mc__cpu_device_open(int index, const mc_device_desc *desc, void **out, mc_device_info *info)
{
    if (index != 0) return mc__fail(MC_ERR_NOT_FOUND, "cpu:%d: there is one CPU device (cpu:0)", index);
    uint64_t limit = 0;
    mc_status st = time_limit_ns(desc, &limit);
    if (st != MC_OK) return st;
    uint32_t workers = desc && desc->threads ? desc->threads : default_workers();
    if (workers > MC__CPU_MAX_WORKERS)
        return mc__fail(MC_ERR_INVALID_ARGUMENT, "threads is %u; the CPU device takes at most %u", workers,
                        MC__CPU_MAX_WORKERS);

    mc__cpu_device *dev = mc__calloc(1, sizeof *dev);
    if (!dev) return mc__fail(MC_ERR_NO_MEMORY, "cpu device: out of memory");
    fill_info(&dev->info, workers, limit);
    dev->limit_ns = limit;
    long long spin_us = mc__env_int("MC_CPU_SPIN_US", 50);
    dev->spin_ns = spin_us <= 0 ? 0 : (uint64_t)MC__MIN(spin_us, 1000000LL) * 1000u;
    /* Metal revokes a process's GPU access after repeated timeouts (F146,
     * F685); the numbers are ours, the macOS ones are undocumented. */
    long long after = mc__env_int("MC_REVOKE_AFTER", 3); /* 0: never revoke */
    dev->revoke_after = after <= 0 ? 0 : (uint32_t)MC__MIN(after, MC__CPU_MAX_REVOKE_AFTER);
    dev->revoke_window_ns = env_ms_ns("MC_REVOKE_WINDOW_MS", 10000); /* 0: no window, count them all */
    dev->revoke_cooldown_ns = env_ms_ns("MC_REVOKE_COOLDOWN_MS", 1000);
    dev->nworkers = workers;
    /* Spinners beyond half the cores take them from the threads that feed
     * and drain the device and from the worker running the work; two
     * workers both spin, or back-to-back submissions would wait for a
     * wake-up whenever the other one is busy. */
    long long spinners = mc__env_int("MC_CPU_SPINNERS", workers > 2 ? workers / 2 : workers);
    dev->max_spinners = spinners < 1 ? 1 : (uint32_t)MC__MIN(spinners, (long long)workers);

    bool lock_ok = pthread_mutex_init(&dev->lock, NULL) == 0;
    bool cc_ok = lock_ok && pthread_mutex_init(&dev->cc_lock, NULL) == 0;
    bool wake_ok = cc_ok && mc__cpu_cond_init(&dev->wake) == MC_OK;
    bool disp_ok = wake_ok && mc__cpu_cond_init(&dev->dispatch_cv) == MC_OK;
    if (disp_ok) st = mc__cpu_pool_start(dev);
    if (!disp_ok || st != MC_OK) {
        if (disp_ok) pthread_cond_destroy(&dev->dispatch_cv);
        if (wake_ok) pthread_cond_destroy(&dev->wake);
        if (cc_ok) pthread_mutex_destroy(&dev->cc_lock);
        if (lock_ok) pthread_mutex_destroy(&dev->lock);
        free(dev);
        return disp_ok ? st : mc__fail(MC_ERR_NO_MEMORY, "cpu device: cannot create its locks");
    }
    mc__log(MC_LOG_DEBUG, "cpu.open", "%s: limit %llu ms, spin %llu us", dev->info.name,
            (unsigned long long)(limit / 1000000u), (unsigned long long)(dev->spin_ns / 1000u));
    *out = dev;
    if (info) *info = dev->info;
    return MC_OK;
}

void mc__cpu_device_close(void *vdev)
{
    mc__cpu_device *dev = vdev;
    if (!dev) return;
    mc__cpu_pool_stop(dev);
    if (dev->events) mc__log(MC_LOG_WARN, "cpu.leak", "device closed with events still alive");
    pthread_cond_destroy(&dev->dispatch_cv);
    pthread_cond_destroy(&dev->wake);
    pthread_mutex_destroy(&dev->cc_lock);
    pthread_mutex_destroy(&dev->lock);
    free(dev);
}

/* ---- buffers ------------------------------------------------------------ */

mc_status mc__cpu_buffer_create(void *vdev, size_t size, mc_storage storage, const char *label, void **out, void **host)
{
    mc__cpu_device *dev = vdev;
    (void)label;
    if (size == 0) return mc__fail(MC_ERR_INVALID_ARGUMENT, "buffer size is 0");
    if (storage != MC_STORAGE_SHARED && storage != MC_STORAGE_PRIVATE)
        return mc__fail(MC_ERR_INVALID_ARGUMENT, "unknown storage mode %d", (int)storage);
    if (size > dev->info.max_buffer_size)
        return mc__fail(MC_ERR_OUT_OF_MEMORY, "buffer of %zu bytes exceeds the device's %llu", size,
                        (unsigned long long)dev->info.max_buffer_size);
    mc__cpu_buffer *b = mc__calloc(1, sizeof *b);
    if (!b) return mc__fail(MC_ERR_NO_MEMORY, "buffer: out of host memory");
    b->data = mc__cpu_alloc_aligned(size, &b->raw);
    if (!b->data) {
        free(b);
        return mc__fail(MC_ERR_OUT_OF_MEMORY, "cannot allocate a buffer of %zu bytes", size);
    }
    b->size = size;
    b->storage = storage;
    *out = b;
    /* Private storage is host memory too (the CPU has nothing else), but it
     * is not handed out, so code that maps it fails here as on a GPU. */
    if (host) *host = storage == MC_STORAGE_SHARED ? b->data : NULL;
    return MC_OK;
}

void mc__cpu_buffer_destroy(void *dev, void *vbuf)
{
    mc__cpu_buffer *b = vbuf;
    (void)dev;
    if (!b) return;
    free(b->raw);
    free(b);
}

/* The caller's memory as it is: raw stays NULL, so destroy frees only the
 * record, never the memory (hal.h buffer_wrap). */
static mc_status cpu_buffer_wrap(void *vdev, void *host, size_t size, const char *label, void **out)
{
    mc__cpu_device *dev = vdev;
    (void)label;
    if (size > dev->info.max_buffer_size)
        return mc__fail(MC_ERR_OUT_OF_MEMORY, "buffer of %zu bytes exceeds the device's %llu", size,
                        (unsigned long long)dev->info.max_buffer_size);
    mc__cpu_buffer *b = mc__calloc(1, sizeof *b);
    if (!b) return mc__fail(MC_ERR_NO_MEMORY, "buffer: out of host memory");
    b->data = host;
    b->size = size;
    b->storage = MC_STORAGE_SHARED;
    *out = b;
    return MC_OK;
}

static mc_status cpu_buffer_device_address(void *dev, void *vbuf, uint64_t *addr)
{
    (void)dev;
    *addr = (uint64_t)(uintptr_t)((mc__cpu_buffer *)vbuf)->data;
    return MC_OK;
}

static mc_status check_range(const mc__cpu_buffer *b, size_t offset, size_t len)
{
    if (offset > b->size || len > b->size - offset)
        return mc__fail(MC_ERR_INVALID_ARGUMENT, "range [%zu, +%zu) outside a buffer of %zu bytes", offset, len,
                        b->size);
    return MC_OK;
}

mc_status mc__cpu_buffer_write(void *dev, void *vbuf, size_t offset, const void *src, size_t len)
{
    mc__cpu_buffer *b = vbuf;
    (void)dev;
    mc_status st = check_range(b, offset, len);
    if (st == MC_OK && len) memcpy((char *)b->data + offset, src, len);
    return st;
}

mc_status mc__cpu_buffer_read(void *dev, void *vbuf, size_t offset, void *dst, size_t len)
{
    mc__cpu_buffer *b = vbuf;
    (void)dev;
    mc_status st = check_range(b, offset, len);
    if (st == MC_OK && len) memcpy(dst, (char *)b->data + offset, len);
    return st;
}

/* ---- events ------------------------------------------------------------- */

mc_status mc__cpu_event_create(void *vdev, uint64_t initial, void **out)
{
    mc__cpu_device *dev = vdev;
    mc__cpu_event *ev = mc__calloc(1, sizeof *ev);
    if (!ev) return mc__fail(MC_ERR_NO_MEMORY, "event: out of host memory");
    if (pthread_mutex_init(&ev->lock, NULL)) {
        free(ev);
        return mc__fail(MC_ERR_NO_MEMORY, "event: cannot create its mutex");
    }
    if (mc__cpu_cond_init(&ev->cv) != MC_OK) {
        pthread_mutex_destroy(&ev->lock);
        free(ev);
        return mc__fail(MC_ERR_NO_MEMORY, "event: cannot create its condition variable");
    }
    ev->dev = dev;
    atomic_init(&ev->value, initial);
    /* The device keeps a list so a device loss can release parked work. */
    pthread_mutex_lock(&dev->lock);
    ev->dev_next = dev->events;
    if (dev->events) dev->events->dev_prev = ev;
    dev->events = ev;
    pthread_mutex_unlock(&dev->lock);
    *out = ev;
    return MC_OK;
}

void mc__cpu_event_destroy(void *vdev, void *vev)
{
    mc__cpu_device *dev = vdev;
    mc__cpu_event *ev = vev;
    if (!ev) return;
    pthread_mutex_lock(&dev->lock);
    if (ev->dev_prev) ev->dev_prev->dev_next = ev->dev_next;
    else dev->events = ev->dev_next;
    if (ev->dev_next) ev->dev_next->dev_prev = ev->dev_prev;
    pthread_mutex_unlock(&dev->lock);
    /* The engine keeps events alive while committed work uses them. */
    pthread_mutex_lock(&ev->lock);
    bool parked = ev->parked != NULL;
    pthread_mutex_unlock(&ev->lock);
    if (parked) mc__log(MC_LOG_ERROR, "cpu.event_destroy_parked", "event destroyed with work waiting on it");
    pthread_cond_destroy(&ev->cv);
    pthread_mutex_destroy(&ev->lock);
    free(ev);
}

uint64_t mc__cpu_event_value(void *dev, void *vev)
{
    mc__cpu_event *ev = vev;
    (void)dev;
    return atomic_load_explicit(&ev->value, memory_order_acquire);
}

/* Under ev->lock: moves the value to v and unlinks the parked jobs it
 * satisfies. */
static mc__cpu_job *raise_locked(mc__cpu_event *ev, uint64_t v)
{
    atomic_store_explicit(&ev->value, v, memory_order_release);
    mc__cpu_job *released = NULL, **tail = &released, **p = &ev->parked;
    while (*p) {
        mc__cpu_job *j = *p;
        if (j->wait_value <= v) {
            *p = j->ready_next;
            j->ready_next = NULL;
            *tail = j;
            tail = &j->ready_next;
        } else {
            p = &j->ready_next;
        }
    }
    if (ev->cpu_waiters) pthread_cond_broadcast(&ev->cv);
    return released;
}

mc__cpu_job *mc__cpu_event_raise(mc__cpu_event *ev, uint64_t v)
{
    pthread_mutex_lock(&ev->lock);
    mc__cpu_job *released = NULL;
    if (v > atomic_load_explicit(&ev->value, memory_order_relaxed)) released = raise_locked(ev, v);
    pthread_mutex_unlock(&ev->lock);
    return released;
}

mc_status mc__cpu_event_signal(void *vdev, void *vev, uint64_t value)
{
    mc__cpu_device *dev = vdev;
    mc__cpu_event *ev = vev;
    pthread_mutex_lock(&ev->lock);
    uint64_t cur = atomic_load_explicit(&ev->value, memory_order_relaxed);
    if (value < cur) {
        pthread_mutex_unlock(&ev->lock);
        return mc__fail(MC_ERR_INVALID_ARGUMENT, "event value only moves forward: %llu < %llu",
                        (unsigned long long)value, (unsigned long long)cur);
    }
    mc__cpu_job *released = value > cur ? raise_locked(ev, value) : NULL;
    pthread_mutex_unlock(&ev->lock);
    /* Not under ev->lock: the device lock is never taken inside an event's. */
    if (released) mc__cpu_make_ready(dev, released);
    return MC_OK;
}

mc_status mc__cpu_event_wait(void *vdev, void *vev, uint64_t value, uint64_t timeout_ns)
{
    mc__cpu_device *dev = vdev;
    mc__cpu_event *ev = vev;
    if (atomic_load_explicit(&ev->value, memory_order_acquire) >= value) return MC_OK;
    uint64_t deadline = mc__deadline(timeout_ns);
    /* A short spin catches signals that come within microseconds without a
     * sleep and wake-up. */
    uint64_t spin_until = MC__MIN(deadline, mc__now_ns() + dev->spin_ns);
    for (uint32_t i = 1;; i++) {
        if (atomic_load_explicit(&ev->value, memory_order_acquire) >= value) return MC_OK;
        if ((i & 63) == 0 && mc__now_ns() >= spin_until) break;
        mc__spin_step(i);
    }
    mc_status st = MC_OK;
    pthread_mutex_lock(&ev->lock);
    ev->cpu_waiters++;
    while (atomic_load_explicit(&ev->value, memory_order_relaxed) < value) {
        if (!mc__cpu_cond_wait_until(&ev->cv, &ev->lock, deadline) &&
            atomic_load_explicit(&ev->value, memory_order_relaxed) < value) {
            st = MC_ERR_WAIT_TIMEOUT;
            break;
        }
    }
    ev->cpu_waiters--;
    pthread_mutex_unlock(&ev->lock);
    if (st != MC_OK)
        return mc__fail(st, "event stayed at %llu, below %llu", (unsigned long long)mc__cpu_event_value(dev, ev),
                        (unsigned long long)value);
    return MC_OK;
}

/* ---- the table ---------------------------------------------------------- */

const mc__hal mc__cpu_hal = {
    .version = MC__HAL_VERSION,
    .kind = MC_DEVICE_CPU,
    .name = "cpu",
    .device_count = mc__cpu_device_count,
    .device_info = mc__cpu_device_info,
    .device_open = mc__cpu_device_open,
    .device_close = mc__cpu_device_close,
    .buffer_create = mc__cpu_buffer_create,
    .buffer_destroy = mc__cpu_buffer_destroy,
    .buffer_write = mc__cpu_buffer_write,
    .buffer_read = mc__cpu_buffer_read,
    .library_create = mc__cpu_library_create,
    .library_create_builtin = mc__cpu_library_create_builtin,
    .library_destroy = mc__cpu_library_destroy,
    .pipeline_create = mc__cpu_pipeline_create,
    .pipeline_destroy = mc__cpu_pipeline_destroy,
    .compiler_identity = mc__cpu_compiler_identity,
    .pipeline_export = mc__cpu_pipeline_export,
    .pipeline_import = mc__cpu_pipeline_import,
    .queue_create = mc__cpu_queue_create,
    .queue_destroy = mc__cpu_queue_destroy,
    .submit = mc__cpu_submit,
    .submission_wait = mc__cpu_submission_wait,
    .event_create = mc__cpu_event_create,
    .event_destroy = mc__cpu_event_destroy,
    .event_value = mc__cpu_event_value,
    .event_signal = mc__cpu_event_signal,
    .event_wait = mc__cpu_event_wait,
    .cmdlist_create = mc__cpu_cmdlist_create,
    .cmdlist_destroy = mc__cpu_cmdlist_destroy,
    .default_language = MC_LANG_C,
    .kernel_extension = ".c",
    .fork_safe = true,
    .buffer_wrap = cpu_buffer_wrap,
    .buffer_device_address = cpu_buffer_device_address,
};
