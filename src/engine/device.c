/*
 * DOC: Devices, buffers, libraries, pipelines and events
 *
 * The thin layer between the API and a backend: checks every argument,
 * keeps reference counts, remembers sticky device loss and schedules
 * injected faults. Nothing here knows which backend it calls. It also
 * remembers whether a backend that is not fork-safe (hal.h) was asked for
 * its devices: isolated runs fork workers and must refuse then.
 */
#include "engine/engine.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static _Atomic int validation = -1; /* -1: not read from MC_VALIDATION yet */

/* The name of a backend that is not fork-safe and has devices present, once
 * one was asked for them in this process (string constants only). */
static _Atomic(const char *) fork_unsafe_name;

static int backend_count(const mc__hal *h)
{
    int c = h->device_count();
    if (c > 0 && !atomic_load_explicit(&fork_unsafe_name, memory_order_relaxed)) {
        if (!(h->version >= 3 && h->fork_safe)) atomic_store(&fork_unsafe_name, h->name);
    }
    return c;
}

bool mc__fork_unsafe_backend_used(char *why, size_t cap)
{
    const char *name = atomic_load(&fork_unsafe_name);
    if (name && why && cap) snprintf(why, cap, "%s", name);
    return name != NULL;
}

void mc__fork_unsafe_simulate(const char *name)
{
    atomic_store(&fork_unsafe_name, name);
}

void mc_validation_set(bool on)
{
    atomic_store(&validation, on ? 1 : 0);
}

bool mc_validation_enabled(void)
{
    int v = atomic_load_explicit(&validation, memory_order_relaxed);
    if (v < 0) {
        v = mc__env_int("MC_VALIDATION", 0) != 0;
        atomic_store(&validation, v);
    }
    return v;
}

/* ---- devices ----------------------------------------------------------- */

mc_status mc_device_list(mc_device_info *out, size_t cap, size_t *count)
{
    if (!count) return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_device_list: count is NULL");
    if (cap && !out) return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_device_list: out is NULL but cap > 0");
    size_t n = 0;
    for (const mc__hal *const *h = mc__hal_registry; *h; h++) {
        int c = backend_count(*h);
        for (int i = 0; i < c; i++, n++) {
            if (n < cap) {
                memset(&out[n], 0, sizeof out[n]);
                mc_status s = (*h)->device_info(i, &out[n]);
                if (s != MC_OK) return s;
                out[n].kind = (*h)->kind;
                out[n].index = i;
            }
        }
    }
    *count = n;
    return MC_OK;
}

static const mc__hal *hal_for(mc_device_kind kind)
{
    for (const mc__hal *const *h = mc__hal_registry; *h; h++)
        if ((*h)->kind == kind) return *h;
    return NULL;
}

mc_status mc__device_parse_spec(const char *spec, mc_device_kind *kind, int *index)
{
    size_t len = strcspn(spec, ":");
    *index = 0;
    /* Every kind by its name (core/names.c), compiled in or not: "metal"
     * on Linux is a known device that is absent, not a typing error. */
    for (int k = MC_DEVICE_ANY; k <= MC_DEVICE_METAL; k++) {
        const char *name = mc_device_kind_name((mc_device_kind)k);
        if (strlen(name) == len && !strncmp(spec, name, len)) {
            *kind = (mc_device_kind)k;
            if (spec[len] == ':') {
                char *end;
                long v = strtol(spec + len + 1, &end, 10);
                if (end == spec + len + 1 || *end || v < 0 || v > 1024)
                    return mc__fail(MC_ERR_INVALID_ARGUMENT, "device '%s': the index after ':' must be a number", spec);
                *index = (int)v;
            }
            return MC_OK;
        }
    }
    return mc__fail(MC_ERR_INVALID_ARGUMENT, "unknown device '%s' (expected cpu, cuda or metal, optionally :N)", spec);
}

static mc_status schedule_faults(mc_device *d, const char *what, const char *spec, uint64_t base);

mc_status mc_device_open(const mc_device_desc *desc, mc_device **out)
{
    if (!out) return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_device_open: out is NULL");
    *out = NULL;
    mc_device_desc dd = MC_DEVICE_DESC_INIT;
    if (desc) dd = *desc;
    if (dd.kind > MC_DEVICE_METAL || dd.index < 0)
        return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_device_open: kind %d / index %d out of range", dd.kind, dd.index);
    if (dd.time_limit_ms < MC_TIME_LIMIT_NONE)
        return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_device_open: time_limit_ms %lld is negative",
                        (long long)dd.time_limit_ms);

    const char *env = mc__env_str("MC_DEVICE", NULL);
    if (dd.kind == MC_DEVICE_ANY && env) {
        mc_status s = mc__device_parse_spec(env, &dd.kind, &dd.index);
        if (s != MC_OK) return mc__fail(s, "MC_DEVICE: %s", mc_last_error());
    }
    /* A fault list the user asked for and cannot have is an error, not a
     * run without the faults they meant to test. */
    mc__fault_item env_faults[MC__MAX_FAULTS];
    size_t n_env_faults;
    mc_status fs = mc__fault_list_parse("MC_INJECT_FAULTS", mc__env_str("MC_INJECT_FAULTS", NULL), false, env_faults,
                                        &n_env_faults);
    if (fs != MC_OK) return fs;
    const mc__hal *hal = NULL;
    if (dd.kind == MC_DEVICE_ANY) {
        for (const mc__hal *const *h = mc__hal_registry; *h && !hal; h++)
            if (backend_count(*h) > dd.index) hal = *h;
        if (!hal) return mc__fail(MC_ERR_NOT_FOUND, "no device with index %d is present", dd.index);
    } else {
        hal = hal_for(dd.kind);
        if (!hal)
            return mc__fail(MC_ERR_UNSUPPORTED, "the %s device is not compiled into this build",
                            mc_device_kind_name(dd.kind));
        int c = backend_count(hal);
        if (dd.index >= c)
            return mc__fail(MC_ERR_NOT_FOUND, "%s:%d not present (%d %s device%s found)", hal->name, dd.index, c,
                            hal->name, c == 1 ? "" : "s");
    }

    mc_device *d = mc__calloc(1, sizeof *d);
    if (!d) return mc__fail(MC_ERR_NO_MEMORY, "mc_device_open: out of memory");
    mc__object_init(&d->base, MC__TAG_DEVICE, d, hal->name);
    d->hal = hal;
    pthread_mutex_init(&d->lock, NULL);
    mc_status s = hal->device_open(dd.index, &dd, &d->hd, &d->info);
    if (s != MC_OK) {
        pthread_mutex_destroy(&d->lock);
        free(d->base.label);
        free(d);
        return s;
    }
    d->info.kind = hal->kind;
    d->info.index = dd.index;
    d->opened = dd;
    d->opened.kind = hal->kind;
    /* Made now, before any other thread can see the device; its thread
     * starts on first use. */
    if ((s = mc__notifier_create(d)) != MC_OK) {
        hal->device_close(d->hd);
        pthread_mutex_destroy(&d->lock);
        free(d->base.label);
        free(d);
        return s;
    }
    /* Checked above, before the backend was opened; cannot fail now. */
    const char *faults = mc__env_str("MC_INJECT_FAULTS", NULL);
    if (faults) schedule_faults(d, "MC_INJECT_FAULTS", faults, 0);
    mc__log(MC_LOG_INFO, "device.open", "opened %s:%d (%s)", hal->name, dd.index, d->info.name);
    *out = d;
    return MC_OK;
}

mc_status mc_device_desc_from_name(const char *spec, mc_device_desc *desc)
{
    if (!desc) return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_device_desc_from_name: desc is NULL");
    if (!spec || !*spec) {
        desc->kind = MC_DEVICE_ANY;
        desc->index = 0;
        return MC_OK;
    }
    return mc__device_parse_spec(spec, &desc->kind, &desc->index);
}

mc_status mc_device_open_name(const char *spec, mc_device **out)
{
    mc_device_desc desc = MC_DEVICE_DESC_INIT;
    mc_status s = mc_device_desc_from_name(spec, &desc);
    return s == MC_OK ? mc_device_open(&desc, out) : s;
}

void mc__device_destroy(mc_device *d)
{
    mc__notifier_shutdown(d);
    /* A fault list that lies past the end of the work tested nothing:
     * say so rather than let a clean run pass for a survived one. */
    uint64_t done = atomic_load(&d->committed);
    for (size_t i = 0; i < d->nfaults; i++)
        mc__log(MC_LOG_WARN, "device.fault_never_fired",
                "injected fault %s@%llu never fired: the device committed %llu command buffer%s",
                mc__status_word(d->faults[i].kind) ? mc__status_word(d->faults[i].kind) : "?",
                (unsigned long long)d->faults[i].nth, (unsigned long long)done, done == 1 ? "" : "s");
    if (d->cache) mc__cache_destroy(d->cache);
    d->hal->device_close(d->hd);
    pthread_mutex_destroy(&d->lock);
    d->base.tag = MC__TAG_DEAD;
    free(d->base.label);
    free(d);
}

void mc_device_retain(mc_device *d)
{
    if (mc__object_check(d, MC__TAG_DEVICE)) mc__object_retain(&d->base);
}

void mc_device_release(mc_device *d)
{
    if (mc__object_check(d, MC__TAG_DEVICE)) mc__object_release(&d->base);
}

mc_status mc_device_get_info(const mc_device *d, mc_device_info *out)
{
    MC__CHECK_HANDLE(d, MC__TAG_DEVICE, "device");
    if (!out) return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_device_get_info: out is NULL");
    *out = d->info;
    return MC_OK;
}

mc_status mc_device_check(const mc_device *d)
{
    MC__CHECK_HANDLE(d, MC__TAG_DEVICE, "device");
    if (atomic_load(&((mc_device *)d)->lost))
        return mc__fail(MC_ERR_DEVICE_LOST, "the %s device was lost; open it again", d->hal->name);
    return MC_OK;
}

uint64_t mc_device_committed_count(const mc_device *d)
{
    return mc__object_check(d, MC__TAG_DEVICE) ? atomic_load(&((mc_device *)d)->committed) : 0;
}

static mc_status add_fault(mc_device *d, mc_status kind, uint64_t at)
{
    if (d->nfaults == MC__MAX_FAULTS)
        return mc__fail(MC_ERR_INVALID_ARGUMENT, "at most %d faults may be scheduled", MC__MAX_FAULTS);
    d->faults[d->nfaults].at = at;
    d->faults[d->nfaults].kind = kind;
    d->nfaults++;
    atomic_store(&d->pending_faults, d->nfaults);
    return MC_OK;
}

mc_status mc_device_inject_fault(mc_device *d, mc_status kind, uint64_t nth)
{
    MC__CHECK_HANDLE(d, MC__TAG_DEVICE, "device");
    if (!mc_status_is_device_error(kind) || kind == MC_ERR_PRIOR_ERROR)
        return mc__fail(MC_ERR_INVALID_ARGUMENT, "%s is not a device error that can be injected", mc_status_name(kind));
    if (nth == 0) return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_device_inject_fault: nth must be >= 1");
    pthread_mutex_lock(&d->lock);
    mc_status s = add_fault(d, kind, atomic_load(&d->committed) + nth);
    if (s == MC_OK) d->faults[d->nfaults - 1].nth = nth;
    pthread_mutex_unlock(&d->lock);
    return s;
}

mc_status mc__fault_list_parse(const char *what, const char *spec, bool worker_faults, mc__fault_item *out, size_t *n)
{
    *n = 0;
    if (!spec) return MC_OK;
    const char *kinds = worker_faults ? "kill, hang, timeout, page-fault, access-revoked, device-lost, internal, "
                                        "not-permitted, out-of-memory or invalid-resource"
                                      : "timeout, page-fault, access-revoked, device-lost, internal, not-permitted, "
                                        "out-of-memory or invalid-resource";
    for (const char *p = spec; *p;) {
        size_t len = strcspn(p, ",");
        char item[64];
        if (len == 0 || len >= sizeof item)
            return mc__fail(MC_ERR_INVALID_ARGUMENT, "%s '%s': an empty or overlong item (expected KIND@N,...)", what,
                            spec);
        memcpy(item, p, len);
        item[len] = '\0';
        char *at = strchr(item, '@');
        if (!at) return mc__fail(MC_ERR_INVALID_ARGUMENT, "%s: '%s' is not KIND@N (KIND: %s)", what, item, kinds);
        *at = '\0';
        const char *num = at + 1;
        /* Digits only: strtoull would take "-1" as 2^64-1 and clamp an
         * overflow, and either would schedule a fault that never fires. */
        uint64_t nth = 0;
        bool ok = *num != '\0';
        for (const char *c = num; ok && *c; c++) {
            if (*c < '0' || *c > '9' || nth > (MC__FAULT_MAX_AT - (uint64_t)(*c - '0')) / 10) ok = false;
            else nth = nth * 10 + (uint64_t)(*c - '0');
        }
        if (!ok || nth == 0)
            return mc__fail(MC_ERR_INVALID_ARGUMENT, "%s: in '%s@%s', N must be a whole number from 1 to %llu", what,
                            item, num, MC__FAULT_MAX_AT);
        int kind;
        if (!strcmp(item, "kill") || !strcmp(item, "hang")) {
            if (!worker_faults)
                return mc__fail(MC_ERR_INVALID_ARGUMENT,
                                "%s: '%s@%s' is a fault of a worker process: it needs an isolated run "
                                "(mc_isolate_desc.inject_faults, or --isolate on the command line)",
                                what, item, num);
            kind = !strcmp(item, "kill") ? MC__FAULT_KILL : MC__FAULT_HANG;
        } else {
            mc_status st;
            if (mc_status_from_word(item, &st) != MC_OK)
                return mc__fail(MC_ERR_INVALID_ARGUMENT, "%s: unknown fault kind '%s' (expected %s)", what, item,
                                kinds);
            kind = (int)st;
        }
        /* One command buffer fails once: a second fault there would stay
         * scheduled and never fire. */
        for (size_t i = 0; i < *n; i++) {
            if (out[i].at == nth)
                return mc__fail(MC_ERR_INVALID_ARGUMENT,
                                "%s: two faults on command buffer %llu ('%s' and '%s'); a command buffer fails once",
                                what, (unsigned long long)nth,
                                out[i].kind == MC__FAULT_KILL   ? "kill"
                                : out[i].kind == MC__FAULT_HANG ? "hang"
                                                                : mc__status_word((mc_status)out[i].kind),
                                item);
        }
        if (*n == MC__MAX_FAULTS)
            return mc__fail(MC_ERR_INVALID_ARGUMENT, "%s: more than %d faults", what, MC__MAX_FAULTS);
        out[*n].kind = kind;
        out[*n].at = nth;
        (*n)++;
        p += len;
        if (*p == ',') p++;
    }
    return MC_OK;
}

/* Parses the whole spec before scheduling anything. */
static mc_status schedule_faults(mc_device *d, const char *what, const char *spec, uint64_t base)
{
    mc__fault_item parsed[MC__MAX_FAULTS];
    size_t n;
    mc_status s = mc__fault_list_parse(what, spec, false, parsed, &n);
    if (s != MC_OK) return s;
    pthread_mutex_lock(&d->lock);
    if (d->nfaults + n > MC__MAX_FAULTS)
        s = mc__fail(MC_ERR_INVALID_ARGUMENT, "%s: at most %d faults may be scheduled", what, MC__MAX_FAULTS);
    for (size_t i = 0; i < n && s == MC_OK; i++) {
        for (size_t j = 0; j < d->nfaults && s == MC_OK; j++)
            if (d->faults[j].at == base + parsed[i].at)
                s = mc__fail(MC_ERR_INVALID_ARGUMENT,
                             "%s: command buffer %llu already has a fault scheduled; a command buffer fails once", what,
                             (unsigned long long)parsed[i].at);
    }
    for (size_t i = 0; i < n && s == MC_OK; i++) s = add_fault(d, (mc_status)parsed[i].kind, base + parsed[i].at);
    if (s == MC_OK)
        for (size_t i = 0; i < n; i++) d->faults[d->nfaults - n + i].nth = parsed[i].at;
    pthread_mutex_unlock(&d->lock);
    return s;
}

mc_status mc_device_inject_faults(mc_device *d, const char *spec)
{
    MC__CHECK_HANDLE(d, MC__TAG_DEVICE, "device");
    if (!spec) return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_device_inject_faults: spec is NULL");
    return schedule_faults(d, "fault list", spec, atomic_load(&d->committed));
}

void mc__device_set_commit_hook(mc_device *d, void (*fn)(void *user, uint64_t n), void *user)
{
    d->commit_hook_user = user;
    d->commit_hook = fn;
}

mc_status mc__device_take_fault(mc_device *d, uint64_t n)
{
    if (d->commit_hook) d->commit_hook(d->commit_hook_user, n);
    if (atomic_load_explicit(&d->pending_faults, memory_order_relaxed) == 0) return MC_OK;
    mc_status kind = MC_OK;
    pthread_mutex_lock(&d->lock);
    for (size_t i = 0; i < d->nfaults; i++) {
        if (d->faults[i].at == n) {
            kind = d->faults[i].kind;
            d->faults[i] = d->faults[--d->nfaults];
            break;
        }
    }
    atomic_store(&d->pending_faults, d->nfaults);
    pthread_mutex_unlock(&d->lock);
    return kind;
}

bool mc__device_queues_overlap(const mc_device *d)
{
    return d->hal->version >= 4 && d->hal->queues_overlap;
}

bool mc__device_is_lost(const mc_device *d)
{
    return mc__object_check(d, MC__TAG_DEVICE) && atomic_load(&((mc_device *)d)->lost);
}

mc_status mc__device_take_like(mc_device *d, mc__device_like *out)
{
    MC__CHECK_HANDLE(d, MC__TAG_DEVICE, "device");
    if (!out) return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc__device_take_like: out is NULL");
    memset(out, 0, sizeof *out);
    out->desc = d->opened;
    pthread_mutex_lock(&d->lock);
    uint64_t done = atomic_load(&d->committed);
    for (size_t i = 0; i < d->nfaults; i++) {
        if (d->faults[i].at <= done) continue; /* its commit came and went: nothing to carry */
        out->faults[out->nfaults].kind = d->faults[i].kind;
        out->faults[out->nfaults].nth = d->faults[i].at - done;
        out->nfaults++;
    }
    /* Moved, not unfired: the old device does not warn of them. */
    d->nfaults = 0;
    atomic_store(&d->pending_faults, 0);
    pthread_mutex_unlock(&d->lock);
    return MC_OK;
}

mc_status mc__device_reopen_like(mc__device_like *like, mc_device **out)
{
    if (!out) return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc__device_reopen_like: out is NULL");
    *out = NULL;
    if (!like || like->desc.kind == MC_DEVICE_ANY || like->nfaults > MC__MAX_FAULTS)
        return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc__device_reopen_like: no device recorded to reopen");
    mc_device *d;
    mc_status s = mc_device_open(&like->desc, &d);
    if (s != MC_OK) return s;
    pthread_mutex_lock(&d->lock);
    uint64_t base = atomic_load(&d->committed);
    for (size_t i = 0; i < like->nfaults; i++) {
        /* Only a full list (MC_INJECT_FAULTS's and these) refuses one: say
         * so, as a fault that never fires would be said at close. */
        if (add_fault(d, like->faults[i].kind, base + like->faults[i].nth) == MC_OK)
            d->faults[d->nfaults - 1].nth = like->faults[i].nth;
        else
            mc__log(MC_LOG_WARN, "device.fault_not_carried", "reopening %s:%d: fault %s@%llu dropped: %s", d->hal->name,
                    d->opened.index,
                    mc__status_word(like->faults[i].kind) ? mc__status_word(like->faults[i].kind) : "?",
                    (unsigned long long)like->faults[i].nth, mc_last_error());
    }
    pthread_mutex_unlock(&d->lock);
    like->nfaults = 0;
    *out = d;
    return MC_OK;
}

void mc__device_forget_faults(mc_device *d)
{
    if (!mc__object_check(d, MC__TAG_DEVICE)) return;
    pthread_mutex_lock(&d->lock);
    d->nfaults = 0;
    atomic_store(&d->pending_faults, 0);
    pthread_mutex_unlock(&d->lock);
}

/* ---- buffers ----------------------------------------------------------- */

static mc_status device_usable(mc_device *d)
{
    MC__CHECK_HANDLE(d, MC__TAG_DEVICE, "device");
    if (atomic_load_explicit(&d->lost, memory_order_relaxed))
        return mc__fail(MC_ERR_DEVICE_LOST, "the %s device was lost; open it again", d->hal->name);
    return MC_OK;
}

mc_status mc_buffer_create(mc_device *d, const mc_buffer_desc *desc, mc_buffer **out)
{
    mc_status s = device_usable(d);
    if (s != MC_OK) return s;
    if (!desc || !out) return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_buffer_create: desc or out is NULL");
    *out = NULL;
    if (desc->size == 0) return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_buffer_create: size is 0");
    if (desc->storage != MC_STORAGE_SHARED && desc->storage != MC_STORAGE_PRIVATE)
        return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_buffer_create: unknown storage mode %d", desc->storage);
    if (d->info.max_buffer_size && desc->size > d->info.max_buffer_size)
        return mc__fail(MC_ERR_OUT_OF_MEMORY, "buffer of %zu bytes is over the device's limit of %llu", desc->size,
                        (unsigned long long)d->info.max_buffer_size);
    mc_buffer *b = mc__calloc(1, sizeof *b);
    if (!b) return mc__fail(MC_ERR_NO_MEMORY, "mc_buffer_create: out of memory");
    s = d->hal->buffer_create(d->hd, desc->size, desc->storage, desc->label, &b->hb, &b->host);
    if (s != MC_OK) {
        free(b);
        return s;
    }
    mc__object_init(&b->base, MC__TAG_BUFFER, d, desc->label);
    b->size = desc->size;
    b->storage = desc->storage;
    mc__object_retain(&d->base);
    if (desc->initial_data && (s = mc_buffer_write(b, 0, desc->initial_data, desc->size)) != MC_OK) {
        mc_buffer_release(b);
        return s;
    }
    *out = b;
    return MC_OK;
}

void mc__buffer_destroy(mc_buffer *b)
{
    mc_device *d = b->base.device;
    d->hal->buffer_destroy(d->hd, b->hb);
    if (b->host_release) b->host_release(b->host_user, b->host);
    b->base.tag = MC__TAG_DEAD;
    free(b->base.label);
    free(b);
    mc__object_release(&d->base);
}

void mc_buffer_retain(mc_buffer *b)
{
    if (mc__object_check(b, MC__TAG_BUFFER)) mc__object_retain(&b->base);
}

void mc_buffer_release(mc_buffer *b)
{
    if (!b) return;
    if (!mc__object_check(b, MC__TAG_BUFFER)) {
        mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_buffer_release: buffer is not a valid handle");
        return;
    }
    if (mc_validation_enabled() && atomic_load(&b->gpu_uses) > 0) {
        const char *label = b->base.label ? b->base.label : "(unlabelled)";
        mc__fail(MC_ERR_VALIDATION,
                 "buffer '%s' released while a command buffer with unretained references still uses it", label);
        mc__log(MC_LOG_WARN, "validation.buffer_in_use",
                "buffer '%s' released while a command buffer still uses it: the reference is kept", label);
        return;
    }
    mc__object_release(&b->base);
}

size_t mc_buffer_size(const mc_buffer *b)
{
    return mc__object_check(b, MC__TAG_BUFFER) ? b->size : 0;
}

void *mc_buffer_contents(mc_buffer *b)
{
    return mc__object_check(b, MC__TAG_BUFFER) ? b->host : NULL;
}

mc_status mc__buffer_check_range(const mc_buffer *b, size_t offset, size_t len, const char *what)
{
    if (offset > b->size || len > b->size - offset)
        return mc__fail(MC_ERR_INVALID_ARGUMENT, "%s: range [%zu, +%zu) is past the end of buffer '%s' (%zu bytes)",
                        what, offset, len, b->base.label ? b->base.label : "(unlabelled)", b->size);
    return MC_OK;
}

mc_status mc_buffer_write(mc_buffer *b, size_t offset, const void *src, size_t len)
{
    MC__CHECK_HANDLE(b, MC__TAG_BUFFER, "buffer");
    if (!src && len) return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_buffer_write: src is NULL");
    mc_status s = mc__buffer_check_range(b, offset, len, "mc_buffer_write");
    if (s != MC_OK || len == 0) return s;
    mc_device *d = b->base.device;
    return d->hal->buffer_write(d->hd, b->hb, offset, src, len);
}

mc_status mc_buffer_read(mc_buffer *b, size_t offset, void *dst, size_t len)
{
    MC__CHECK_HANDLE(b, MC__TAG_BUFFER, "buffer");
    if (!dst && len) return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_buffer_read: dst is NULL");
    mc_status s = mc__buffer_check_range(b, offset, len, "mc_buffer_read");
    if (s != MC_OK || len == 0) return s;
    mc_device *d = b->base.device;
    return d->hal->buffer_read(d->hd, b->hb, offset, dst, len);
}

/* mc_buffer_create_from_host: the engine checks what holds on every device
 * (mc.h), the backend its own rules (Metal's page alignment, CUDA's
 * pinning), so the message names the rule that failed. */
mc_status mc_buffer_create_from_host(mc_device *d, const mc_host_buffer_desc *desc, mc_buffer **out)
{
    mc_status s = device_usable(d);
    if (s != MC_OK) return s;
    if (!desc || !out) return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_buffer_create_from_host: desc or out is NULL");
    *out = NULL;
    if (!desc->pointer) return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_buffer_create_from_host: pointer is NULL");
    if (desc->size == 0) return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_buffer_create_from_host: size is 0");
    if ((uintptr_t)desc->pointer % MC_HOST_BUFFER_ALIGNMENT)
        return mc__fail(MC_ERR_INVALID_ARGUMENT,
                        "mc_buffer_create_from_host: pointer %p is not a multiple of %d bytes "
                        "(MC_HOST_BUFFER_ALIGNMENT: kernels load 16-byte vectors)",
                        desc->pointer, MC_HOST_BUFFER_ALIGNMENT);
    if (d->info.max_buffer_size && desc->size > d->info.max_buffer_size)
        return mc__fail(MC_ERR_OUT_OF_MEMORY, "buffer of %zu bytes is over the device's limit of %llu", desc->size,
                        (unsigned long long)d->info.max_buffer_size);
    if (d->hal->version < 3 || !d->hal->buffer_wrap)
        return mc__fail(MC_ERR_UNSUPPORTED,
                        "the %s device cannot make a buffer over host memory; copy it in with "
                        "mc_buffer_create's initial_data",
                        d->hal->name);
    mc_buffer *b = mc__calloc(1, sizeof *b);
    if (!b) return mc__fail(MC_ERR_NO_MEMORY, "mc_buffer_create_from_host: out of memory");
    s = d->hal->buffer_wrap(d->hd, desc->pointer, desc->size, desc->label, &b->hb);
    if (s != MC_OK) {
        free(b);
        return s;
    }
    mc__object_init(&b->base, MC__TAG_BUFFER, d, desc->label);
    b->host = desc->pointer;
    b->size = desc->size;
    b->storage = MC_STORAGE_SHARED;
    b->host_release = desc->release;
    b->host_user = desc->user;
    mc__object_retain(&d->base);
    *out = b;
    return MC_OK;
}

mc_status mc_buffer_get_device_address(mc_buffer *b, uint64_t *out)
{
    MC__CHECK_HANDLE(b, MC__TAG_BUFFER, "buffer");
    if (!out) return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_buffer_get_device_address: out is NULL");
    *out = 0;
    mc_device *d = b->base.device;
    if (d->hal->version < 3 || !d->hal->buffer_device_address)
        return mc__fail(MC_ERR_UNSUPPORTED, "the %s device does not expose buffers' device addresses", d->hal->name);
    return d->hal->buffer_device_address(d->hd, b->hb, out);
}

/* ---- libraries and pipelines ------------------------------------------- */

static mc_library *library_wrap(mc_device *d, void *hl, mc_language lang, const char *label)
{
    mc_library *l = mc__calloc(1, sizeof *l);
    if (!l) {
        if (hl) d->hal->library_destroy(d->hd, hl);
        return NULL;
    }
    mc__object_init(&l->base, MC__TAG_LIBRARY, d, label);
    l->hl = hl;
    l->language = lang;
    mc__object_retain(&d->base);
    return l;
}

mc_status mc_library_create(mc_device *d, const mc_library_desc *desc, mc_library **out, char **log)
{
    if (log) *log = NULL;
    mc_status s = device_usable(d);
    if (s != MC_OK) return s;
    if (!desc || !out) return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_library_create: desc or out is NULL");
    *out = NULL;
    if (!desc->source) return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_library_create: source is NULL");
    if (desc->language == MC_LANG_UNSET || desc->language > MC_LANG_MSL)
        return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_library_create: the language must be named (c, cuda or msl)");
    size_t len = desc->source_len ? desc->source_len : strlen(desc->source);
    void *hl = NULL;
    char *blog = NULL;
    s = d->hal->library_create(d->hd, desc->language, desc->source, len, desc->options ? desc->options : "", &hl,
                               &blog);
    if (s != MC_OK) {
        if (log) *log = blog;
        else free(blog);
        if (s == MC_ERR_COMPILE && !mc_last_error()[0])
            mc__fail(s, "%s compilation failed", mc_language_name(desc->language));
        return s;
    }
    free(blog);
    mc_library *l = library_wrap(d, hl, desc->language, desc->label);
    if (!l) return mc__fail(MC_ERR_NO_MEMORY, "mc_library_create: out of memory");
    *out = l;
    return MC_OK;
}

const char *mc_device_kernel_extension(mc_device_kind k)
{
    const mc__hal *h = hal_for(k);
    return h && h->version >= 3 && h->kernel_extension ? h->kernel_extension : "";
}

mc_language mc__device_default_language(const mc_device *d)
{
    if (!mc__object_check(d, MC__TAG_DEVICE)) return MC_LANG_UNSET;
    return d->hal->version >= 3 ? d->hal->default_language : MC_LANG_UNSET;
}

mc_status mc_library_create_from_file(mc_device *d, const char *path, mc_language language, const char *options,
                                      mc_library **out, char **log)
{
    if (log) *log = NULL;
    if (!path || !out) return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_library_create_from_file: path or out is NULL");
    *out = NULL;
    if (language == MC_LANG_UNSET) {
        const char *dot = strrchr(path, '.');
        if (dot && !strcmp(dot, ".c")) language = MC_LANG_C;
        else if (dot && !strcmp(dot, ".cu")) language = MC_LANG_CUDA;
        else if (dot && !strcmp(dot, ".metal")) language = MC_LANG_MSL;
        else
            return mc__fail(MC_ERR_INVALID_ARGUMENT,
                            "%s: cannot tell the language from the extension (.c, .cu, .metal)", path);
    }
    FILE *f = fopen(path, "rb");
    if (!f) return mc__fail(MC_ERR_IO, "cannot open kernel source %s: %s", path, strerror(errno));
    char *src = NULL;
    size_t len = 0, cap = 0;
    for (;;) {
        if (len + 4096 + 1 > cap) {
            cap = cap ? cap * 2 : 16384;
            char *n = mc__realloc(src, cap);
            if (!n) {
                free(src);
                fclose(f);
                return mc__fail(MC_ERR_NO_MEMORY, "out of memory reading %s", path);
            }
            src = n;
        }
        size_t got = fread(src + len, 1, 4096, f);
        len += got;
        if (got < 4096) break;
    }
    bool err = ferror(f);
    fclose(f);
    if (err) {
        free(src);
        return mc__fail(MC_ERR_IO, "cannot read kernel source %s", path);
    }
    src[len] = '\0';
    /* Warm starts by default: with the pipeline cache on, the source is
     * compiled per pipeline through the cache (mc_pipeline_create), so a
     * second run loads what the first compiled (F697, F698). */
    if (mc_cache_get_mode(d) != MC_CACHE_OFF && d->hal->pipeline_export && d->hal->pipeline_import) {
        mc_status s = device_usable(d);
        char *opts = mc__strdup(options ? options : "");
        mc_library *l = s == MC_OK && opts ? library_wrap(d, NULL, language, path) : NULL;
        if (!l) {
            free(src);
            free(opts);
            return s != MC_OK ? s : mc__fail(MC_ERR_NO_MEMORY, "out of memory reading %s", path);
        }
        l->source = src;
        l->source_len = len;
        l->options = opts;
        *out = l;
        return MC_OK;
    }
    mc_library_desc desc = {language, src, len, options, path};
    mc_status s = mc_library_create(d, &desc, out, log);
    free(src);
    return s;
}

/* A pipeline from a deferred library: through the cache. The compiler's
 * log of a failure goes into the error message (this call has no log). */
static mc_status pipeline_from_deferred(mc_device *d, const mc_pipeline_desc *desc, mc_pipeline **out)
{
    const mc_library *l = desc->library;
    char *log = NULL;
    mc_status s;
    /* function constants are part of the cache's key (docs/CACHE.md) */
    mc_pipeline_source_desc sd = MC_PIPELINE_SOURCE_DESC_INIT;
    sd.language = l->language;
    sd.source = l->source;
    sd.source_len = l->source_len;
    sd.options = l->options;
    sd.function = desc->function;
    sd.max_total_threads_per_threadgroup = desc->max_total_threads_per_threadgroup;
    sd.threadgroup_size_is_multiple_of_simd_width = desc->threadgroup_size_is_multiple_of_simd_width;
    sd.label = desc->label;
    sd.constants = desc->constants;
    sd.constant_count = desc->constant_count;
    s = mc_pipeline_create_from_source(d, &sd, out, &log);
    if (s != MC_OK && log)
        mc__fail(s, "%s: %s compilation failed:\n%s", l->base.label ? l->base.label : "library",
                 mc_language_name(l->language), log);
    mc_free(log);
    return s;
}

mc_status mc_library_create_builtin(mc_device *d, const char *const *names, const mc_cpu_kernel_fn *fns,
                                    const int32_t *argument_counts, size_t n, mc_library **out)
{
    mc_status s = device_usable(d);
    if (s != MC_OK) return s;
    if (!names || !fns || !out || n == 0)
        return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_library_create_builtin: names, fns and out are required, n > 0");
    *out = NULL;
    for (size_t i = 0; i < n; i++)
        if (!names[i] || !fns[i])
            return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_library_create_builtin: entry %zu is NULL", i);
    if (!d->hal->library_create_builtin)
        return mc__fail(MC_ERR_UNSUPPORTED, "the %s device cannot run kernels linked into the program", d->hal->name);
    void *hl;
    s = d->hal->library_create_builtin(d->hd, names, fns, argument_counts, n, &hl);
    if (s != MC_OK) return s;
    mc_library *l = library_wrap(d, hl, MC_LANG_C, "builtin");
    if (!l) return mc__fail(MC_ERR_NO_MEMORY, "out of memory");
    *out = l;
    return MC_OK;
}

void mc__library_destroy(mc_library *l)
{
    mc_device *d = l->base.device;
    if (l->hl) d->hal->library_destroy(d->hd, l->hl);
    free(l->source);
    free(l->options);
    l->base.tag = MC__TAG_DEAD;
    free(l->base.label);
    free(l);
    mc__object_release(&d->base);
}

void mc_library_retain(mc_library *l)
{
    if (mc__object_check(l, MC__TAG_LIBRARY)) mc__object_retain(&l->base);
}

void mc_library_release(mc_library *l)
{
    if (mc__object_check(l, MC__TAG_LIBRARY)) mc__object_release(&l->base);
}

mc_status mc_pipeline_create(mc_device *d, const mc_pipeline_desc *desc, mc_pipeline **out)
{
    mc_status s = device_usable(d);
    if (s != MC_OK) return s;
    if (!desc || !out) return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_pipeline_create: desc or out is NULL");
    *out = NULL;
    MC__CHECK_HANDLE(desc->library, MC__TAG_LIBRARY, "desc->library");
    if (desc->library->base.device != d)
        return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_pipeline_create: the library belongs to another device");
    if (!desc->function || !*desc->function)
        return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_pipeline_create: function name is empty");
    if (desc->max_total_threads_per_threadgroup > d->info.max_threads_per_threadgroup)
        return mc__fail(MC_ERR_INVALID_ARGUMENT,
                        "max_total_threads_per_threadgroup %u is over the device's limit of %u",
                        desc->max_total_threads_per_threadgroup, d->info.max_threads_per_threadgroup);
    if (!desc->library->hl) return pipeline_from_deferred(d, desc, out);
    mc_pipeline *p = mc__calloc(1, sizeof *p);
    if (!p) return mc__fail(MC_ERR_NO_MEMORY, "mc_pipeline_create: out of memory");
    p->function = mc__strdup(desc->function);
    if (!p->function) {
        free(p);
        return mc__fail(MC_ERR_NO_MEMORY, "mc_pipeline_create: out of memory");
    }
    s = d->hal->pipeline_create(d->hd, desc->library->hl, desc, &p->hp, &p->info);
    if (s != MC_OK) {
        free(p->function);
        free(p);
        return s;
    }
    mc__object_init(&p->base, MC__TAG_PIPELINE, d, desc->label ? desc->label : desc->function);
    p->library = desc->library;
    p->simd_multiple = desc->threadgroup_size_is_multiple_of_simd_width;
    mc__object_retain(&desc->library->base);
    mc__object_retain(&d->base);
    *out = p;
    return MC_OK;
}

void mc__pipeline_destroy(mc_pipeline *p)
{
    mc_device *d = p->base.device;
    d->hal->pipeline_destroy(d->hd, p->hp);
    if (p->own_hl) d->hal->library_destroy(d->hd, p->own_hl);
    if (p->library) mc__object_release(&p->library->base);
    p->base.tag = MC__TAG_DEAD;
    free(p->function);
    free(p->base.label);
    free(p);
    mc__object_release(&d->base);
}

void mc_pipeline_retain(mc_pipeline *p)
{
    if (mc__object_check(p, MC__TAG_PIPELINE)) mc__object_retain(&p->base);
}

void mc_pipeline_release(mc_pipeline *p)
{
    if (mc__object_check(p, MC__TAG_PIPELINE)) mc__object_release(&p->base);
}

mc_status mc_pipeline_get_info(const mc_pipeline *p, mc_pipeline_info *out)
{
    MC__CHECK_HANDLE(p, MC__TAG_PIPELINE, "pipeline");
    if (!out) return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_pipeline_get_info: out is NULL");
    *out = p->info;
    return MC_OK;
}

/* ---- events ------------------------------------------------------------ */

mc_status mc_event_create(mc_device *d, uint64_t initial_value, mc_event **out)
{
    mc_status s = device_usable(d);
    if (s != MC_OK) return s;
    if (!out) return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_event_create: out is NULL");
    *out = NULL;
    mc_event *e = mc__calloc(1, sizeof *e);
    if (!e) return mc__fail(MC_ERR_NO_MEMORY, "mc_event_create: out of memory");
    s = d->hal->event_create(d->hd, initial_value, &e->he);
    if (s != MC_OK) {
        free(e);
        return s;
    }
    mc__object_init(&e->base, MC__TAG_EVENT, d, "event");
    mc__object_retain(&d->base);
    *out = e;
    return MC_OK;
}

void mc__event_destroy(mc_event *e)
{
    mc_device *d = e->base.device;
    mc__events_forget(d, e);
    d->hal->event_destroy(d->hd, e->he);
    e->base.tag = MC__TAG_DEAD;
    free(e->base.label);
    free(e);
    mc__object_release(&d->base);
}

void mc_event_retain(mc_event *e)
{
    if (mc__object_check(e, MC__TAG_EVENT)) mc__object_retain(&e->base);
}

void mc_event_release(mc_event *e)
{
    if (mc__object_check(e, MC__TAG_EVENT)) mc__object_release(&e->base);
}

mc_status mc_event_get_value(const mc_event *e, uint64_t *out)
{
    MC__CHECK_HANDLE(e, MC__TAG_EVENT, "event");
    if (!out) return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_event_get_value: out is NULL");
    mc_device *d = e->base.device;
    *out = d->hal->event_value(d->hd, e->he);
    return MC_OK;
}

mc_status mc_event_signal(mc_event *e, uint64_t value)
{
    MC__CHECK_HANDLE(e, MC__TAG_EVENT, "event");
    mc_device *d = e->base.device;
    uint64_t cur = d->hal->event_value(d->hd, e->he);
    if (value < cur)
        return mc__fail(MC_ERR_INVALID_ARGUMENT, "event values only move forward: %llu < current %llu",
                        (unsigned long long)value, (unsigned long long)cur);
    mc_status s = d->hal->event_signal(d->hd, e->he, value);
    if (s == MC_OK) mc__events_changed(d, e);
    return s;
}

mc_status mc_event_wait(mc_event *e, uint64_t target, uint64_t timeout_ns)
{
    MC__CHECK_HANDLE(e, MC__TAG_EVENT, "event");
    mc_device *d = e->base.device;
    mc_status s = d->hal->event_wait(d->hd, e->he, target, timeout_ns);
    if (s == MC_ERR_WAIT_TIMEOUT)
        return mc__fail(s, "event did not reach %llu in time (value %llu)", (unsigned long long)target,
                        (unsigned long long)d->hal->event_value(d->hd, e->he));
    return s;
}
