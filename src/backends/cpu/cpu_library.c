/*
 * DOC: CPU device: libraries, pipelines and the pipeline archive
 *
 * A library is a loaded kernel object (cpu_loader.c) built by
 * cpu_compile.c, or functions linked into the program. The object's bytes
 * stay with the library: they are what pipeline_export archives, and an
 * imported archive becomes a library the same way a compiled object does,
 * so a compiled library and an imported one are the same thing. A pipeline
 * is a kernel of a library with its function-constant values.
 */
#include "backends/cpu/cpu.h"

#include <dlfcn.h>
#include <link.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ---- libraries ------------------------------------------------------------------ */

static void lib_unref(mc__cpu_library *l)
{
    if (!l || atomic_fetch_sub(&l->refs, 1) != 1) return;
    if (l->dl) mc__cpu_loader_close(l->dl);
    if (l->fd >= 0) close(l->fd); /* after dlclose: see mc__cpu_load_object */
    free(l->so);
    for (size_t i = 0; i < l->nbuiltin; i++) free(l->names[i]);
    free(l->names);
    free(l->fns);
    free(l->argc);
    free(l);
}

/* Loads so (taken over) into a new library. */
static mc_status lib_from_object(void *so, size_t so_len, mc__cpu_library **out, char **why)
{
    void *dl;
    int fd;
    mc_status st = mc__cpu_load_object(so, so_len, &dl, &fd, why);
    if (st != MC_OK) {
        free(so);
        return st;
    }
    mc__cpu_library *l = mc__calloc(1, sizeof *l);
    if (!l) {
        mc__cpu_loader_close(dl);
        if (fd >= 0) close(fd);
        free(so);
        return MC_ERR_NO_MEMORY;
    }
    atomic_init(&l->refs, 1);
    l->so = so;
    l->so_len = so_len;
    l->dl = dl;
    l->fd = fd;
    *out = l;
    return MC_OK;
}

mc_status mc__cpu_library_create(void *vdev, mc_language lang, const char *source, size_t len, const char *options,
                                 void **out, char **log)
{
    (void)vdev;
    if (log) *log = NULL;
    if (lang != MC_LANG_C && lang != MC_LANG_MSL)
        return mc__fail(MC_ERR_UNSUPPORTED, "the cpu device compiles MSL and C kernels, not %s",
                        mc_language_name(lang));
    if (!source || !out) return mc__fail(MC_ERR_INVALID_ARGUMENT, "no source or no result pointer");
    if (!len) len = strlen(source);
    void *so = NULL;
    size_t so_len = 0;
    uint64_t t0 = mc__now_ns();
    mc_status st = mc__cpu_compile_object(lang, source, len, options, &so, &so_len, log);
    if (st != MC_OK) return st;

    mc__cpu_library *l = NULL;
    char *why = NULL;
    st = lib_from_object(so, so_len, &l, &why);
    if (st == MC_ERR_NO_MEMORY) return mc__fail(st, "out of host memory");
    if (st != MC_OK) {
        /* e.g. an undefined symbol: a link error, reported like a compile error */
        st = mc__fail(MC_ERR_COMPILE, "cannot load the compiled kernel: %s", why ? why : "?");
        if (log) *log = why;
        else free(why);
        return st;
    }
    mc__log(MC_LOG_DEBUG, "cpu.compiled", "%s library compiled in %.1f ms (%zu bytes)", mc_language_name(lang),
            (double)(mc__now_ns() - t0) / 1e6, so_len);
    *out = l;
    return MC_OK;
}

mc_status mc__cpu_library_create_builtin(void *vdev, const char *const *names, const mc_cpu_kernel_fn *fns,
                                         const int32_t *argc, size_t n, void **out)
{
    (void)vdev;
    if (!n || !names || !fns) return mc__fail(MC_ERR_INVALID_ARGUMENT, "no functions given");
    mc__cpu_library *l = mc__calloc(1, sizeof *l);
    if (!l) return mc__fail(MC_ERR_NO_MEMORY, "out of host memory");
    atomic_init(&l->refs, 1);
    l->fd = -1;
    l->names = mc__calloc(n, sizeof *l->names);
    l->fns = mc__calloc(n, sizeof *l->fns);
    l->argc = mc__calloc(n, sizeof *l->argc);
    if (!l->names || !l->fns || !l->argc) {
        lib_unref(l);
        return mc__fail(MC_ERR_NO_MEMORY, "out of host memory");
    }
    for (size_t i = 0; i < n; i++) {
        if (!names[i] || !fns[i]) {
            lib_unref(l);
            return mc__fail(MC_ERR_INVALID_ARGUMENT, "function %zu has no name or no code", i);
        }
        l->names[i] = mc__strdup(names[i]);
        l->nbuiltin = i + 1; /* so lib_unref frees what is there */
        if (!l->names[i]) {
            lib_unref(l);
            return mc__fail(MC_ERR_NO_MEMORY, "out of host memory");
        }
        l->fns[i] = fns[i];
        l->argc[i] = argc ? argc[i] : -1;
    }
    *out = l;
    return MC_OK;
}

void mc__cpu_library_destroy(void *vdev, void *vlib)
{
    (void)vdev;
    lib_unref(vlib); /* pipelines made from it keep the code loaded */
}

/* ---- pipelines ------------------------------------------------------------------ */

/* dlsym also searches the object's dependencies: a kernel named like a C
 * library function must not resolve to that function. */
static bool defined_in(void *dl, const void *sym)
{
    struct link_map *lm = NULL;
    Dl_info di;
    if (dlinfo(dl, RTLD_DI_LINKMAP, &lm) != 0 || !lm || !dladdr(sym, &di)) return true; /* cannot tell */
    return di.dli_fbase == (void *)lm->l_addr || (di.dli_fname && lm->l_name && !strcmp(di.dli_fname, lm->l_name));
}

/* Each value against the size of the type its index is declared with in
 * the library (mc__function_constants, written by the MSL front end):
 * Metal refuses a value of another type. Values for undeclared indices are
 * left unread, as Metal ignores them. */
static mc_status check_constant_sizes(void *dl, const char *function, const mc_function_constant *fc, uint32_t n)
{
    const mc_cpu_fc_decl *decl = dl ? dlsym(dl, "mc__function_constants") : NULL;
    if (!decl || !defined_in(dl, decl)) return MC_OK; /* a C library: no declarations */
    for (uint32_t i = 0; i < n; i++)
        for (const mc_cpu_fc_decl *d = decl; d->decl; d++)
            if (d->index == fc[i].index && d->size != fc[i].size)
                return mc__fail(MC_ERR_INVALID_ARGUMENT,
                                "'%s': function constant %u is declared '%s', a value of %u bytes; the value given "
                                "has %u bytes",
                                function, fc[i].index, d->decl, d->size, fc[i].size);
    return MC_OK;
}

/* The pipeline's function constants in the layout kernels read. */
static mc_status make_constants(const mc_function_constant *fc, uint32_t n, mc_cpu_constants **out)
{
    *out = NULL;
    if (!n) return MC_OK;
    if (!fc) return mc__fail(MC_ERR_INVALID_ARGUMENT, "constant_count is %u but constants is NULL", n);
    mc_cpu_constants *c = mc__calloc(1, sizeof *c);
    if (!c) return mc__fail(MC_ERR_NO_MEMORY, "out of host memory");
    for (uint32_t i = 0; i < n; i++) {
        if (fc[i].index >= MC_CPU_MAX_CONSTANTS || !fc[i].value || fc[i].size == 0 ||
            fc[i].size > MC_CPU_CONSTANT_SIZE) {
            free(c);
            return mc__fail(MC_ERR_INVALID_ARGUMENT,
                            "function constant %u: index %u (below %u), size %u (1 to %u bytes) and a value are needed",
                            i, fc[i].index, MC_CPU_MAX_CONSTANTS, fc[i].size, MC_CPU_CONSTANT_SIZE);
        }
        c->defined[fc[i].index / 64] |= 1ull << (fc[i].index % 64);
        memcpy(&c->value[fc[i].index], fc[i].value, fc[i].size);
    }
    *out = c;
    return MC_OK;
}

static mc_status make_pipeline(mc__cpu_library *l, const char *function, uint32_t max_threads,
                               const mc_function_constant *fc, uint32_t nfc, void **out, mc_pipeline_info *info)
{
    if (!function || !function[0]) return mc__fail(MC_ERR_INVALID_ARGUMENT, "no function name");
    if (max_threads > MC__CPU_MAX_THREADS)
        return mc__fail(MC_ERR_INVALID_ARGUMENT, "max_total_threads_per_threadgroup %u exceeds the device's %u",
                        max_threads, MC__CPU_MAX_THREADS);
    mc_cpu_kernel_fn fn = NULL;
    mc__cpu_rows_fn rows = NULL;
    int32_t argc = -1;
    if (l->dl) {
        void *sym = dlsym(l->dl, function);
        if (sym && !defined_in(l->dl, sym))
            return mc__fail(MC_ERR_NOT_FOUND, "'%s' is not a kernel of the library (it comes from a library it uses)",
                            function);
        if (sym) memcpy(&fn, &sym, sizeof fn); /* POSIX: data and code pointers convert */
        char argc_name[256];
        if (snprintf(argc_name, sizeof argc_name, "%s__mc_argc", function) < (int)sizeof argc_name) {
            const int32_t *n = dlsym(l->dl, argc_name);
            if (n) argc = *n;
        }
        /* optional: MSL plain-loop kernels run several groups row by row */
        if (fn && snprintf(argc_name, sizeof argc_name, "%s__mc_rows", function) < (int)sizeof argc_name) {
            void *r = dlsym(l->dl, argc_name);
            if (r && defined_in(l->dl, r)) memcpy(&rows, &r, sizeof rows);
        }
    } else {
        for (size_t i = 0; i < l->nbuiltin; i++) {
            if (strcmp(l->names[i], function) == 0) {
                fn = l->fns[i];
                argc = l->argc[i];
                break;
            }
        }
    }
    if (!fn) return mc__fail(MC_ERR_NOT_FOUND, "no kernel function '%s' in the library", function);
    mc_cpu_constants *constants = NULL;
    mc_status st = make_constants(fc, nfc, &constants);
    if (st == MC_OK && (st = check_constant_sizes(l->dl, function, fc, nfc)) != MC_OK) free(constants);
    if (st != MC_OK) return st;
    mc__cpu_pipeline *p = mc__calloc(1, sizeof *p);
    if (!p) {
        free(constants);
        return mc__fail(MC_ERR_NO_MEMORY, "out of host memory");
    }
    p->constants = constants;
    atomic_fetch_add(&l->refs, 1);
    p->lib = l;
    p->fn = fn;
    p->rows = rows;
    p->max_threads = max_threads ? max_threads : MC__CPU_MAX_THREADS;
    p->argc = argc;
    if (info) {
        memset(info, 0, sizeof *info);
        info->max_total_threads_per_threadgroup = p->max_threads;
        info->simd_width = MC__CPU_SIMD_WIDTH;
        info->static_threadgroup_memory = 0;
        info->argument_count = argc;
    }
    *out = p;
    return MC_OK;
}

mc_status mc__cpu_pipeline_create(void *vdev, void *vlib, const mc_pipeline_desc *desc, void **out,
                                  mc_pipeline_info *info)
{
    (void)vdev;
    if (!vlib || !desc) return mc__fail(MC_ERR_INVALID_ARGUMENT, "no library or no descriptor");
    return make_pipeline(vlib, desc->function, desc->max_total_threads_per_threadgroup, desc->constants,
                         desc->constant_count, out, info);
}

void mc__cpu_pipeline_destroy(void *vdev, void *vpl)
{
    mc__cpu_pipeline *p = vpl;
    (void)vdev;
    if (!p) return;
    lib_unref(p->lib);
    free((void *)p->constants);
    free(p);
}

mc_status mc__cpu_pipeline_export(void *vdev, const mc__pipeline_src *src, void *vlib, void *vpl, void **bytes,
                                  size_t *len)
{
    (void)vdev;
    (void)src;
    mc__cpu_pipeline *p = vpl;
    mc__cpu_library *l = p ? p->lib : vlib;
    if (!l) return mc__fail(MC_ERR_INVALID_ARGUMENT, "nothing to export");
    if (!l->so) return mc__fail(MC_ERR_UNSUPPORTED, "built-in kernels are linked into the program: nothing to archive");
    void *copy = mc__malloc(l->so_len);
    if (!copy) return mc__fail(MC_ERR_NO_MEMORY, "out of host memory");
    memcpy(copy, l->so, l->so_len);
    *bytes = copy;
    *len = l->so_len;
    return MC_OK;
}

mc_status mc__cpu_pipeline_import(void *vdev, const mc__pipeline_src *src, const void *bytes, size_t len,
                                  bool fail_on_miss, void **out_lib, void **out_pl, mc_pipeline_info *info)
{
    (void)vdev;
    (void)fail_on_miss; /* importing never compiles on the CPU */
    if (!src || !bytes) return mc__fail(MC_ERR_INVALID_ARGUMENT, "nothing to import");
    void *so = mc__malloc(len ? len : 1);
    if (!so) return mc__fail(MC_ERR_NO_MEMORY, "out of host memory");
    memcpy(so, bytes, len);
    mc__cpu_library *l = NULL;
    char *why = NULL;
    mc_status st = lib_from_object(so, len, &l, &why);
    if (st == MC_ERR_NO_MEMORY) return mc__fail(st, "out of host memory");
    if (st != MC_OK) {
        st = mc__fail(MC_ERR_IO, "archived kernel does not load: %s", why ? why : "?");
        free(why);
        return st;
    }
    st = make_pipeline(l, src->function, src->max_total_threads_per_threadgroup, src->constants, src->constant_count,
                       out_pl, info);
    if (st != MC_OK) {
        lib_unref(l);
        return st;
    }
    *out_lib = l;
    return MC_OK;
}
