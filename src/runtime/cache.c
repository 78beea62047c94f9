/*
 * DOC: The pipeline cache and the on-disk binary archive
 *
 * Pipelines made from source are cached per device, in memory and on disk
 * (F159, F171, F172, F697, F701, F707); docs/CACHE.md is the reference for the
 * file format, the refusal rules and the modes. This file holds the cache
 * object, its settings and the public calls; cache.h lists the other
 * parts.
 *
 * Why the cache holds libraries, not pipelines: the device owns the cache,
 * and every engine object holds a reference to its device. A pipeline (or
 * library) held by the cache would keep the device open for ever. So the
 * cache's libraries hold no device reference while the cache holds them;
 * the pipelines made from them do, so the device cannot close while any of
 * them lives. When the cache lets a library go before the device closes it
 * hands the library a device reference first (mc__cache_lib_drop); when
 * the device closes, no pipeline can be left and the cache destroys its
 * libraries directly (mc__cache_lib_final).
 */
#include "runtime/cache.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* ---- settings from the environment ----------------------------------- */

static mc_cache_mode mode_from_env(void)
{
    const char *v = mc__env_str("MC_CACHE", NULL);
    if (!v || !strcmp(v, "rw")) return MC_CACHE_RW;
    if (!strcmp(v, "off")) return MC_CACHE_OFF;
    if (!strcmp(v, "ro")) return MC_CACHE_RO;
    if (!strcmp(v, "require")) return MC_CACHE_REQUIRE;
    mc__log(MC_LOG_WARN, "cache.bad_mode", "MC_CACHE=%s is not off, ro, rw or require; using rw", v);
    return MC_CACHE_RW;
}

static uint64_t max_bytes_from_env(void)
{
    const char *v = mc__env_str("MC_CACHE_MAX_BYTES", NULL);
    if (!v) return MC_CACHE_DEFAULT_MAX_BYTES;
    char *end;
    errno = 0;
    unsigned long long x = strtoull(v, &end, 10);
    unsigned shift = 0;
    if (*end == 'k' || *end == 'K') shift = 10;
    else if (*end == 'm' || *end == 'M') shift = 20;
    else if (*end == 'g' || *end == 'G') shift = 30;
    if (shift) end++;
    if (errno || end == v || *end || v[0] == '-' || x == 0 || x > (UINT64_MAX >> shift)) {
        mc__log(MC_LOG_WARN, "cache.bad_max_bytes",
                "MC_CACHE_MAX_BYTES=%s is not a size such as 268435456 or 256m; "
                "using %llu",
                v, (unsigned long long)MC_CACHE_DEFAULT_MAX_BYTES);
        return MC_CACHE_DEFAULT_MAX_BYTES;
    }
    return (uint64_t)x << shift;
}

static struct mc__cache *cache_new(mc_device *d)
{
    struct mc__cache *c = mc__calloc(1, sizeof *c);
    if (!c) return NULL;
    c->nbuckets = 64;
    c->table = mc__calloc(c->nbuckets, sizeof *c->table);
    if (!c->table) {
        free(c);
        return NULL;
    }
    c->d = d;
    pthread_mutex_init(&c->lock, NULL);
    pthread_cond_init(&c->built, NULL);
    pthread_mutex_init(&c->disk_lock, NULL);
    pthread_mutex_init(&c->save_lock, NULL);
    pthread_mutex_init(&c->pool_lock, NULL);
    atomic_init(&c->mode, mode_from_env());
    atomic_init(&c->max_bytes, max_bytes_from_env());
    atomic_init(&c->disk, MC__DISK_UNTRIED);
    atomic_init(&c->writable, MC__WRITE_UNKNOWN);
    c->root_fd = c->dir_fd = -1;
    return c;
}

/* The environment is read outside the device lock (it may log). */
struct mc__cache *mc__cache_get(mc_device *d)
{
    pthread_mutex_lock(&d->lock);
    struct mc__cache *c = d->cache;
    pthread_mutex_unlock(&d->lock);
    if (c) return c;
    struct mc__cache *fresh = cache_new(d);
    if (!fresh) return NULL;
    pthread_mutex_lock(&d->lock);
    if (!d->cache) {
        d->cache = fresh;
        fresh = NULL;
    }
    c = d->cache;
    pthread_mutex_unlock(&d->lock);
    if (fresh) mc__cache_destroy(fresh);
    return c;
}

/* ---- the cache's libraries (see the DOC block: no device reference) ---- */

mc_library *mc__cache_lib_wrap(mc_device *d, void *hl, mc_language lang, const char *label)
{
    mc_library *l = mc__calloc(1, sizeof *l);
    if (!l) return NULL;
    mc__object_init(&l->base, MC__TAG_LIBRARY, d, label ? label : "cached");
    l->hl = hl;
    l->language = lang;
    return l;
}

/* Lets a library go while the device is open: pipelines made from it may
 * still hold it, so it becomes an ordinary library with its own device
 * reference, destroyed with the last of them. */
void mc__cache_lib_drop(mc_device *d, mc_library *l)
{
    mc__object_retain(&d->base);
    mc__object_release(&l->base);
}

/* Ends a temporary reference taken under the cache lock. While the cache
 * holds the library this cannot be the last one; once a clear dropped it,
 * the library has its own device reference (mc__cache_lib_drop). Either way a
 * plain release is right. */
void mc__cache_lib_unref_temporary(mc_library *l)
{
    mc__object_release(&l->base);
}

/* At device destroy: no pipeline is left (each held the device). */
void mc__cache_lib_final(mc_device *d, mc_library *l)
{
    if (atomic_load(&l->base.refs) != 1) {
        mc__log(MC_LOG_ERROR, "cache.library_leak", "a cached library is still in use as its device closes");
        return;
    }
    d->hal->library_destroy(d->hd, l->hl);
    l->base.tag = MC__TAG_DEAD;
    free(l->base.label);
    free(l);
}

mc_status mc__cache_make_req(mc_device *d, const mc_pipeline_source_desc *desc, mc__cache_req *r, const char *who)
{
    if (!desc) return mc__fail(MC_ERR_INVALID_ARGUMENT, "%s: desc is NULL", who);
    if (!desc->source) return mc__fail(MC_ERR_INVALID_ARGUMENT, "%s: source is NULL", who);
    if (!desc->function || !desc->function[0])
        return mc__fail(MC_ERR_INVALID_ARGUMENT, "%s: function name is empty", who);
    mc_language lang = desc->language;
    if (lang == MC_LANG_UNSET) lang = mc__device_default_language(d); /* the backend's (hal.h) */
    if (lang == MC_LANG_UNSET || lang > MC_LANG_MSL)
        return mc__fail(MC_ERR_INVALID_ARGUMENT, "%s: unknown language %d", who, (int)desc->language);
    if (desc->max_total_threads_per_threadgroup > d->info.max_threads_per_threadgroup)
        return mc__fail(MC_ERR_INVALID_ARGUMENT,
                        "%s: max_total_threads_per_threadgroup %u is over the device's "
                        "limit of %u",
                        who, desc->max_total_threads_per_threadgroup, d->info.max_threads_per_threadgroup);
    r->language = lang;
    r->source = desc->source;
    r->source_len = desc->source_len ? desc->source_len : strlen(desc->source);
    r->options = desc->options ? desc->options : "";
    r->function = desc->function;
    r->max_total_threads_per_threadgroup = desc->max_total_threads_per_threadgroup;
    r->threadgroup_size_is_multiple_of_simd_width = desc->threadgroup_size_is_multiple_of_simd_width;
    r->label = desc->label;
    if (desc->constant_count && !desc->constants)
        return mc__fail(MC_ERR_INVALID_ARGUMENT, "%s: constant_count is %u but constants is NULL", who,
                        desc->constant_count);
    /* The key holds every value (cache_table.c): each must be readable and
     * its index given once, or two orders of one list would differ. */
    uint64_t seen[2] = {0, 0};
    for (uint32_t i = 0; i < desc->constant_count; i++) {
        const mc_function_constant *fc = &desc->constants[i];
        if (fc->index >= 128 || !fc->size || !fc->value)
            return mc__fail(MC_ERR_INVALID_ARGUMENT,
                            "%s: function constant %u: index %u (below 128), a size (%u) and a value are needed", who,
                            i, fc->index, fc->size);
        if (seen[fc->index / 64] >> (fc->index % 64) & 1)
            return mc__fail(MC_ERR_INVALID_ARGUMENT, "%s: function constant index %u is given twice", who, fc->index);
        seen[fc->index / 64] |= 1ull << (fc->index % 64);
    }
    r->constants = desc->constant_count ? desc->constants : NULL;
    r->constant_count = desc->constant_count;
    return MC_OK;
}

mc_status mc_pipeline_create_from_source(mc_device *d, const mc_pipeline_source_desc *desc, mc_pipeline **out,
                                         char **log)
{
    if (log) *log = NULL;
    MC__CHECK_HANDLE(d, MC__TAG_DEVICE, "device");
    if (!out) return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_pipeline_create_from_source: out is NULL");
    *out = NULL;
    mc__cache_req r;
    mc_status s = mc__cache_make_req(d, desc, &r, "mc_pipeline_create_from_source");
    if (s != MC_OK) return s;
    struct mc__cache *c = mc__cache_get(d);
    if (!c) return mc__fail(MC_ERR_NO_MEMORY, "out of host memory");
    char *blog = NULL;
    s = mc__cache_request(c, &r, out, &blog);
    if (log) *log = blog;
    else free(blog);
    return s;
}

/* ---- modes, statistics, clearing ------------------------------------- */

const char *mc_cache_mode_name(mc_cache_mode m)
{
    switch (m) {
    case MC_CACHE_OFF: return "off";
    case MC_CACHE_RO: return "ro";
    case MC_CACHE_RW: return "rw";
    case MC_CACHE_REQUIRE: return "require";
    case MC_CACHE_DEFAULT: return "default";
    }
    return "unknown";
}

mc_status mc_cache_set_mode(mc_device *d, mc_cache_mode mode)
{
    MC__CHECK_HANDLE(d, MC__TAG_DEVICE, "device");
    if (mode > MC_CACHE_REQUIRE) return mc__fail(MC_ERR_INVALID_ARGUMENT, "unknown cache mode %d", (int)mode);
    struct mc__cache *c = mc__cache_get(d);
    if (!c) return mc__fail(MC_ERR_NO_MEMORY, "out of host memory");
    atomic_store(&c->mode, mode == MC_CACHE_DEFAULT ? mode_from_env() : mode);
    return MC_OK;
}

mc_cache_mode mc_cache_get_mode(mc_device *d)
{
    if (!mc__object_check(d, MC__TAG_DEVICE)) return MC_CACHE_OFF;
    struct mc__cache *c = mc__cache_get(d);
    return c ? (mc_cache_mode)atomic_load(&c->mode) : MC_CACHE_OFF;
}

mc_status mc_cache_set_max_bytes(mc_device *d, uint64_t max_bytes)
{
    MC__CHECK_HANDLE(d, MC__TAG_DEVICE, "device");
    struct mc__cache *c = mc__cache_get(d);
    if (!c) return mc__fail(MC_ERR_NO_MEMORY, "out of host memory");
    atomic_store(&c->max_bytes, max_bytes ? max_bytes : max_bytes_from_env());
    return MC_OK;
}

mc_status mc_cache_get_stats(mc_device *d, mc_cache_stats *out)
{
    MC__CHECK_HANDLE(d, MC__TAG_DEVICE, "device");
    if (!out) return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_cache_get_stats: out is NULL");
    struct mc__cache *c = mc__cache_get(d);
    if (!c) return mc__fail(MC_ERR_NO_MEMORY, "out of host memory");
    memset(out, 0, sizeof *out);
    out->hits_memory = atomic_load(&c->n.hits_memory);
    out->hits_disk = atomic_load(&c->n.hits_disk);
    out->misses = atomic_load(&c->n.misses);
    out->compiles = atomic_load(&c->n.compiles);
    out->compile_ns = atomic_load(&c->n.compile_ns);
    out->load_ns = atomic_load(&c->n.load_ns);
    out->writes = atomic_load(&c->n.writes);
    out->rejected = atomic_load(&c->n.rejected);
    out->evictions = atomic_load(&c->n.evictions);
    out->max_bytes = atomic_load(&c->max_bytes);
    pthread_mutex_lock(&c->lock);
    out->memory_entries = c->count;
    pthread_mutex_unlock(&c->lock);
    mc_cache_mode mode = (mc_cache_mode)atomic_load(&c->mode);
    if (mode != MC_CACHE_OFF && mc__cache_disk_state(c) == MC__DISK_READY) {
        out->disk_enabled = mode != MC_CACHE_RW || atomic_load(&c->writable) != MC__WRITE_NO;
        out->disk_bytes = mc__cache_disk_usage(c, &out->disk_entries);
    }
    return MC_OK;
}

mc_status mc_cache_clear(mc_device *d)
{
    MC__CHECK_HANDLE(d, MC__TAG_DEVICE, "device");
    struct mc__cache *c = mc__cache_get(d);
    if (!c) return mc__fail(MC_ERR_NO_MEMORY, "out of host memory");
    /* memory: ready entries leave the table; building ones finish as usual */
    size_t nlibs = 0;
    mc_library **libs = mc__cache_table_take_ready(c, &nlibs);
    if (!libs) return mc__fail(MC_ERR_NO_MEMORY, "out of host memory");
    for (size_t i = 0; i < nlibs; i++) mc__cache_lib_drop(d, libs[i]);
    free(libs);
    if (mc__cache_disk_state(c) != MC__DISK_READY) return MC_OK;
    mc_cache_mode mode = (mc_cache_mode)atomic_load(&c->mode);
    if (mode != MC_CACHE_RW && mode != MC_CACHE_OFF)
        return mc__fail(MC_ERR_INVALID_STATE, "the cache is read-only (mode %s): memory cleared, disk kept",
                        mc_cache_mode_name(mode));
    return mc__cache_disk_clear(c);
}

mc_status mc_cache_get_dir(const mc_device *d, char *out, size_t cap)
{
    if (!out || !cap) return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_cache_get_dir: out is NULL or cap is 0");
    out[0] = '\0';
    char root[PATH_MAX];
    mc_status s = mc__cache_root(root, sizeof root);
    if (s != MC_OK) return s;
    if (!d) {
        if (strlen(root) >= cap)
            return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_cache_get_dir: %zu bytes do not fit", cap);
        memcpy(out, root, strlen(root) + 1);
        return MC_OK;
    }
    MC__CHECK_HANDLE(d, MC__TAG_DEVICE, "device");
    char folder[MC_NAME_MAX + 16];
    mc__cache_folder_name(d->hal->name, d->info.identity, folder, sizeof folder);
    int n = snprintf(out, cap, "%s/%s", root, folder);
    if (n < 0 || (size_t)n >= cap) {
        out[0] = '\0';
        return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_cache_get_dir: %zu bytes do not fit", cap);
    }
    return MC_OK;
}

/* ---- destruction (the device is closing: no pipeline of it is left) -- */

void mc__cache_destroy(struct mc__cache *c)
{
    if (!c) return;
    if (c->pool) mc__cache_pool_stop(c->pool);
    mc__cache_table_free(c);
    mc__cache_disk_close(c);
    pthread_mutex_destroy(&c->lock);
    pthread_cond_destroy(&c->built);
    pthread_mutex_destroy(&c->disk_lock);
    pthread_mutex_destroy(&c->save_lock);
    pthread_mutex_destroy(&c->pool_lock);
    free(c);
}
