/*
 * DOC: The pipeline cache's memory table: one build per key
 *
 * Pipelines made from source are content-addressed (F171, F172): the key
 * material is a canonical, length-prefixed serialisation of everything
 * that decides the compiled code (build_material, cache_format.h); on
 * disk an entry is named by the SHA-256 of that material.
 *
 * A hash table per device maps the full key material (compared byte for
 * byte, so it needs no cryptographic hash) to one compiled library. The
 * first request for a key builds it (from disk, else by compiling and
 * archiving) while later ones wait for the same result or error; each
 * request gets its own mc_pipeline made from the shared library. A miss in
 * require mode is an error, never a compile (failOnBinaryArchiveMiss,
 * F700).
 */
#include "runtime/cache.h"
#include "engine/trace.h"

#include <stdlib.h>
#include <string.h>

static uint64_t fnv1a(const uint8_t *p, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 0x100000001b3ull;
    return h;
}

/* Canonical key material: every field that decides the compiled code,
 * length-prefixed so no two inputs serialise alike. */
static bool build_material(mc_device *d, const mc__cache_req *r, mc__bytes *m, bool *identity_known)
{
    char compiler[512];
    *identity_known = false;
    compiler[0] = '\0';
    if (d->hal->compiler_identity) {
        if (d->hal->compiler_identity(d->hd, r->language, compiler, sizeof compiler) == MC_OK) *identity_known = true;
        else compiler[0] = '\0';
        compiler[sizeof compiler - 1] = '\0';
    }
    const char *comp = *identity_known ? compiler : "(unknown compiler)";
    /* function constants in one order whatever order they came in, so
     * the same set hits and two sets never share an entry */
    mc__bytes fc = {NULL, 0, 0, false};
    if (!mc__cache_encode_constants(r->constants, r->constant_count, &fc)) {
        free(fc.p);
        return false;
    }
    mc__cache_material mat = {
        .runtime = {MC_VERSION_STRING, strlen(MC_VERSION_STRING)}, /* backends' import formats may change */
        .backend = {d->hal->name, strlen(d->hal->name)},
        .identity = {d->info.identity, strlen(d->info.identity)},
        .compiler = {comp, strlen(comp)},
        .language = (uint32_t)r->language,
        .source = {r->source, r->source_len},
        .options = {r->options, strlen(r->options)},
        .function = {r->function, strlen(r->function)},
        .max_total_threads_per_threadgroup = r->max_total_threads_per_threadgroup,
        .simd_multiple = r->threadgroup_size_is_multiple_of_simd_width ? 1u : 0u,
        .constants = {(const char *)fc.p, fc.n},
    };
    mc__cache_encode_material(&mat, m);
    free(fc.p);
    return !m->oom;
}

static mc_status pipeline_from_lib(mc_device *d, mc_library *lib, const mc__cache_req *r, mc_pipeline **out)
{
    mc_pipeline_desc pd = MC_PIPELINE_DESC_INIT;
    pd.library = lib;
    pd.function = r->function;
    pd.max_total_threads_per_threadgroup = r->max_total_threads_per_threadgroup;
    pd.threadgroup_size_is_multiple_of_simd_width = r->threadgroup_size_is_multiple_of_simd_width;
    pd.label = r->label;
    pd.constants = r->constants;
    pd.constant_count = r->constant_count;
    return mc_pipeline_create(d, &pd, out);
}

/* The pipeline the backend's import made, wrapped as mc_pipeline_create
 * would (the archive's pipeline is kept, F697). Takes hp over. */
static mc_status pipeline_wrap(mc_device *d, mc_library *lib, void *hp, const mc_pipeline_info *info,
                               const mc__cache_req *r, mc_pipeline **out)
{
    mc_pipeline *p = mc__calloc(1, sizeof *p);
    char *fn = mc__strdup(r->function);
    if (!p || !fn) {
        free(p);
        free(fn);
        d->hal->pipeline_destroy(d->hd, hp);
        return mc__fail(MC_ERR_NO_MEMORY, "out of host memory");
    }
    mc__object_init(&p->base, MC__TAG_PIPELINE, d, r->label ? r->label : r->function);
    p->hp = hp;
    p->info = *info;
    p->function = fn;
    p->simd_multiple = r->threadgroup_size_is_multiple_of_simd_width;
    p->library = lib;
    mc__object_retain(&lib->base);
    mc__object_retain(&d->base);
    *out = p;
    return MC_OK;
}

/* Compiles r into a fresh library (no device reference) and a pipeline. */
static mc_status compile(struct mc__cache *c, const mc__cache_req *r, mc_library **lib_out, mc_pipeline **out,
                         char **log)
{
    mc_device *d = c->d;
    void *hl = NULL;
    char *blog = NULL;
    uint64_t t0 = mc__now_ns();
    mc__cache_count(&c->n.compiles, 1);
    mc_status s = d->hal->library_create(d->hd, r->language, r->source, r->source_len, r->options, &hl, &blog);
    if (s != MC_OK) {
        mc__cache_count(&c->n.compile_ns, mc__now_ns() - t0);
        if (MC__TRACING())
            mc__trace_span("pipelines", NULL, "compile", r->function, 0, t0, mc__now_ns(), mc_status_name(s), 0, NULL);
        if (s == MC_ERR_COMPILE && !mc_last_error()[0])
            mc__fail(s, "%s compilation failed", mc_language_name(r->language));
        *log = blog;
        return s;
    }
    free(blog);
    mc_library *lib = mc__cache_lib_wrap(d, hl, r->language, r->label ? r->label : r->function);
    if (!lib) {
        d->hal->library_destroy(d->hd, hl);
        return mc__fail(MC_ERR_NO_MEMORY, "out of host memory");
    }
    s = pipeline_from_lib(d, lib, r, out);
    mc__cache_count(&c->n.compile_ns, mc__now_ns() - t0);
    if (MC__TRACING())
        mc__trace_span("pipelines", NULL, "compile", r->function, 0, t0, mc__now_ns(), mc_status_name(s), 0, NULL);
    if (s != MC_OK) {
        mc__cache_lib_final(d, lib); /* no pipeline was made from it */
        return s;
    }
    *lib_out = lib;
    return MC_OK;
}

/* Builds the entry e for r: from disk, else by compiling (and archiving).
 * On success e->lib is set and *out is the requester's pipeline. */
static mc_status build(struct mc__cache *c, const mc__cache_req *r, const mc__bytes *m, bool archivable,
                       mc_library **lib_out, mc_pipeline **out, char **log)
{
    mc_device *d = c->d;
    mc_cache_mode mode = (mc_cache_mode)atomic_load(&c->mode);
    bool disk = archivable && mc__cache_disk_state(c) == MC__DISK_READY;
    uint8_t key[32];
    if (disk && !mc__hash_sha256(c->hash, m->p, m->n, key)) disk = false;
    const char *miss_why = disk ? "not archived" : "no on-disk cache";
    if (disk) {
        void *hl = NULL, *hp = NULL;
        mc_pipeline_info info;
        uint64_t t0 = mc__now_ns();
        mc__cache_look l = mc__cache_disk_lookup(c, r, m->p, m->n, key, &hl, &hp, &info);
        if (l == MC__LOOK_HIT) {
            mc_library *lib = mc__cache_lib_wrap(d, hl, r->language, r->label ? r->label : r->function);
            if (!lib) {
                d->hal->pipeline_destroy(d->hd, hp);
                d->hal->library_destroy(d->hd, hl);
                return mc__fail(MC_ERR_NO_MEMORY, "out of host memory");
            }
            /* With function constants the pipeline is made again from the
             * archived library by pipeline creation, which specialises it
             * on every device; an import need not (CUDA's makes the plain
             * function), and a plain pipeline would silently ignore them. */
            mc_status s;
            if (r->constant_count) {
                d->hal->pipeline_destroy(d->hd, hp);
                s = pipeline_from_lib(d, lib, r, out);
            } else {
                s = pipeline_wrap(d, lib, hp, &info, r, out);
            }
            if (s != MC_OK) {
                mc__cache_lib_final(d, lib);
                return s;
            }
            mc__cache_count(&c->n.load_ns, mc__now_ns() - t0);
            mc__cache_count(&c->n.hits_disk, 1);
            if (MC__TRACING())
                mc__trace_instant("pipelines", NULL, "cache hit", r->function, 0, NULL, MC__TARGS({"disk", 1}));
            *lib_out = lib;
            return MC_OK;
        }
        if (l == MC__LOOK_REQUIRE_MISS) miss_why = "the archive does not hold it";
        else if (l == MC__LOOK_REJECTED) miss_why = "its entry was refused";
    }
    mc__cache_count(&c->n.misses, 1);
    if (MC__TRACING()) mc__trace_instant("pipelines", NULL, "cache miss", r->function, 0, NULL, 0, NULL);
    if (mode == MC_CACHE_REQUIRE)
        return mc__fail(MC_ERR_CACHE_MISS, "pipeline '%s' is not in the cache (%s) and the cache mode is 'require'",
                        r->function, miss_why);
    mc_status s = compile(c, r, lib_out, out, log);
    if (s != MC_OK || !disk || mode != MC_CACHE_RW || !mc__cache_disk_writable(c)) return s;
    void *payload = NULL;
    size_t len = 0;
    if (d->hal->pipeline_export(d->hd, r, (*lib_out)->hl, (*out)->hp, &payload, &len) != MC_OK) {
        mc__log(MC_LOG_DEBUG, "cache.export_failed", "pipeline '%s' cannot be archived: %s", r->function,
                mc_last_error());
        return MC_OK;
    }
    mc__cache_disk_write(c, key, m->p, m->n, payload, len);
    free(payload);
    return MC_OK;
}

static void entry_unref(mc__centry *e)
{
    if (--e->refs > 0) return;
    free(e->material);
    free(e->msg);
    free(e->log);
    free(e);
}

static void table_remove(struct mc__cache *c, mc__centry *e)
{
    for (mc__centry **pp = &c->table[e->hash % c->nbuckets]; *pp; pp = &(*pp)->next) {
        if (*pp == e) {
            *pp = e->next;
            e->in_table = false;
            c->count--;
            return;
        }
    }
}

static void table_grow(struct mc__cache *c)
{
    size_t n = c->nbuckets * 2;
    mc__centry **t = mc__calloc(n, sizeof *t);
    if (!t) return; /* longer chains, still correct */
    for (size_t i = 0; i < c->nbuckets; i++) {
        for (mc__centry *e = c->table[i], *next; e; e = next) {
            next = e->next;
            e->next = t[e->hash % n];
            t[e->hash % n] = e;
        }
    }
    free(c->table);
    c->table = t;
    c->nbuckets = n;
}

/* Copies the outcome of a failed entry to this thread. */
static mc_status failed_result(const mc__centry *e, char **log)
{
    if (log && e->log) *log = mc__strdup(e->log);
    return mc__fail(e->status, "%s", e->msg ? e->msg : mc_status_text(e->status));
}

/* No cache: compile into an ordinary library. */
static mc_status request_uncached(struct mc__cache *c, const mc__cache_req *r, mc_pipeline **out, char **log)
{
    mc_device *d = c->d;
    mc_library_desc ld = MC_LIBRARY_DESC_INIT;
    ld.language = r->language;
    ld.source = r->source;
    ld.source_len = r->source_len;
    ld.options = r->options;
    ld.label = r->label ? r->label : r->function;
    mc_library *lib = NULL;
    uint64_t t0 = mc__now_ns();
    mc__cache_count(&c->n.misses, 1);
    mc__cache_count(&c->n.compiles, 1);
    mc_status s = mc_library_create(d, &ld, &lib, log);
    if (MC__TRACING())
        mc__trace_span("pipelines", NULL, "compile", r->function, 0, t0, mc__now_ns(), mc_status_name(s), 0, NULL);
    if (s == MC_OK) {
        s = pipeline_from_lib(d, lib, r, out);
        mc_library_release(lib);
    }
    mc__cache_count(&c->n.compile_ns, mc__now_ns() - t0);
    return s;
}

/* The one path every request takes, on the caller's thread or a pool
 * thread. *log receives the compiler's output on failure. */
mc_status mc__cache_request(struct mc__cache *c, const mc__cache_req *r, mc_pipeline **out, char **log)
{
    mc_device *d = c->d;
    *out = NULL;
    mc_status s = mc_device_check(d);
    if (s != MC_OK) return s;
    if ((mc_cache_mode)atomic_load(&c->mode) == MC_CACHE_OFF) return request_uncached(c, r, out, log);

    mc__bytes m = {NULL, 0, 0, false};
    bool archivable = false;
    if (!build_material(d, r, &m, &archivable)) {
        free(m.p);
        return mc__fail(MC_ERR_NO_MEMORY, "out of host memory");
    }
    uint64_t h = fnv1a(m.p, m.n);

    pthread_mutex_lock(&c->lock);
    mc__centry *e = c->table[h % c->nbuckets];
    while (e && !(e->hash == h && e->material_len == m.n && !memcmp(e->material, m.p, m.n))) e = e->next;
    if (e) {
        /* built already, or being built by another thread: its result (or
         * its error) is ours too */
        e->refs++;
        while (e->state == MC__ENTRY_BUILDING) pthread_cond_wait(&c->built, &c->lock);
        mc_library *lib = e->lib;
        if (lib) mc__object_retain(&lib->base); /* held across a concurrent clear */
        if (e->state == MC__ENTRY_FAILED) s = failed_result(e, log);
        entry_unref(e);
        pthread_mutex_unlock(&c->lock);
        free(m.p);
        if (!lib) return s;
        mc__cache_count(&c->n.hits_memory, 1);
        if (MC__TRACING())
            mc__trace_instant("pipelines", NULL, "cache hit", r->function, 0, NULL, MC__TARGS({"disk", 0}));
        s = pipeline_from_lib(d, lib, r, out);
        mc__cache_lib_unref_temporary(lib);
        return s;
    }
    e = mc__calloc(1, sizeof *e);
    if (!e) {
        pthread_mutex_unlock(&c->lock);
        free(m.p);
        return mc__fail(MC_ERR_NO_MEMORY, "out of host memory");
    }
    e->hash = h;
    e->material = m.p;
    e->material_len = m.n;
    e->state = MC__ENTRY_BUILDING;
    e->refs = 2; /* the table and this builder */
    e->in_table = true;
    e->next = c->table[h % c->nbuckets];
    c->table[h % c->nbuckets] = e;
    c->count++;
    pthread_mutex_unlock(&c->lock);

    mc_library *lib = NULL;
    char *blog = NULL;
    s = build(c, r, &m, archivable, &lib, out, &blog);

    pthread_mutex_lock(&c->lock);
    if (s == MC_OK) {
        e->lib = lib;
        e->state = MC__ENTRY_READY;
    } else {
        /* waiting requests get the same error; later ones try again */
        e->state = MC__ENTRY_FAILED;
        e->status = s;
        e->msg = mc__strdup(mc_last_error());
        e->log = blog ? mc__strdup(blog) : NULL;
        if (e->in_table) {
            table_remove(c, e);
            e->refs--;
        }
    }
    if (e->in_table && c->count > 2 * c->nbuckets) table_grow(c);
    pthread_cond_broadcast(&c->built);
    entry_unref(e);
    pthread_mutex_unlock(&c->lock);
    if (log) *log = blog;
    else free(blog);
    return s;
}

bool mc__cache_try_memory_hit(struct mc__cache *c, const mc__cache_req *r, mc_pipeline **out, mc_status *st)
{
    mc_device *d = c->d;
    if ((mc_cache_mode)atomic_load(&c->mode) == MC_CACHE_OFF) return false;
    mc__bytes m = {NULL, 0, 0, false};
    bool archivable;
    if (!build_material(d, r, &m, &archivable)) {
        free(m.p);
        return false;
    }
    uint64_t h = fnv1a(m.p, m.n);
    pthread_mutex_lock(&c->lock);
    mc__centry *e = c->table[h % c->nbuckets];
    while (e && !(e->hash == h && e->material_len == m.n && !memcmp(e->material, m.p, m.n))) e = e->next;
    mc_library *lib = e && e->state == MC__ENTRY_READY ? e->lib : NULL;
    if (lib) mc__object_retain(&lib->base);
    pthread_mutex_unlock(&c->lock);
    free(m.p);
    if (!lib) return false;
    mc__cache_count(&c->n.hits_memory, 1);
    if (MC__TRACING()) mc__trace_instant("pipelines", NULL, "cache hit", r->function, 0, NULL, MC__TARGS({"disk", 0}));
    *st = pipeline_from_lib(d, lib, r, out);
    mc__cache_lib_unref_temporary(lib);
    return true;
}

mc_library **mc__cache_table_take_ready(struct mc__cache *c, size_t *n)
{
    *n = 0;
    pthread_mutex_lock(&c->lock);
    mc_library **libs = mc__calloc(c->count ? c->count : 1, sizeof *libs);
    for (size_t i = 0; libs && i < c->nbuckets; i++) {
        for (mc__centry **pp = &c->table[i]; *pp;) {
            mc__centry *e = *pp;
            if (e->state != MC__ENTRY_READY) {
                pp = &e->next;
                continue;
            }
            *pp = e->next;
            e->in_table = false;
            c->count--;
            libs[(*n)++] = e->lib;
            e->lib = NULL;
            entry_unref(e);
        }
    }
    pthread_mutex_unlock(&c->lock);
    return libs;
}

void mc__cache_table_free(struct mc__cache *c)
{
    for (size_t i = 0; i < c->nbuckets; i++) {
        for (mc__centry *e = c->table[i], *next; e; e = next) {
            next = e->next;
            if (e->lib) mc__cache_lib_final(c->d, e->lib);
            e->refs = 1;
            entry_unref(e);
        }
    }
    free(c->table);
    c->table = NULL;
}
