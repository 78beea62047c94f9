/*
 * DOC: Metal device: libraries, pipelines and binary archives
 *
 * Libraries are compiled from MSL source with an explicit language version
 * and safe math (fast math off), so one source gives the same program on
 * every OS and the same results as the CPU and CUDA devices (F171).
 * Pipelines are made through an MTLComputePipelineDescriptor that always
 * carries the occupancy hints maxTotalThreadsPerThreadgroup (F157) and
 * threadGroupSizeIsMultipleOfThreadExecutionWidth (F158), and
 * supportIndirectCommandBuffers = YES: any pipeline may be recorded into a
 * command list (an indirect command buffer, F670) later, and making it
 * again per list would cost a compile per list and break the pipeline
 * cache's one-pipeline-per-key rule.
 *
 * The pipeline archive is one MTLBinaryArchive per cache entry (F697):
 * export fills an empty archive with addComputePipelineFunctionsWithDescriptor
 * and serialises it to a file URL (the only kind it accepts, F707); import
 * loads that file through the descriptor's url, SETS the archive on the
 * pipeline descriptor (binaryArchives; an archive that is filled but never
 * set is silently useless) and, when asked, forbids compiling with
 * MTLPipelineOptionFailOnBinaryArchiveMiss (F700). The MSL front end still
 * runs on import: the archive holds the GPU binary, not the library (F702).
 *
 * Function constants (mc_pipeline_desc.constants) specialise the function:
 * newFunctionWithName:constantValues:error: with an MTLFunctionConstantValues
 * that holds each value under the type the function declares for its index
 * (read from functionConstantsDictionary: Metal refuses a value of another
 * type, and the API gives sizes, not types). The specialised function goes
 * into the pipeline descriptor, so an archive filled from it is looked up
 * with the same constants.
 */
#include "backends/metal/metal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MC__MTL_MAX_MACROS 32
#define MC__MTL_ARCHIVE_MAGIC "MCMTLAR1" /* payload: magic, u64 LE length, MTLBinaryArchive file */
#define MC__MTL_ARCHIVE_HEADER 16u

/* ---- compile options ----------------------------------------------------- */

typedef struct compile_opts {
    char *copy; /* the options string, tokenised in place */
    MTLLanguageVersion language;
    bool fast_math;
    int nmacros;
    const char *macro[MC__MTL_MAX_MACROS];
    const char *value[MC__MTL_MAX_MACROS];
} compile_opts;

static mc_status add_macro(compile_opts *o, char *def)
{
    if (!*def) return mc__fail(MC_ERR_INVALID_ARGUMENT, "MSL option -D needs a name");
    if (o->nmacros == MC__MTL_MAX_MACROS)
        return mc__fail(MC_ERR_INVALID_ARGUMENT, "more than %d MSL macros", MC__MTL_MAX_MACROS);
    char *eq = strchr(def, '=');
    if (eq) *eq = '\0';
    o->macro[o->nmacros] = def;
    o->value[o->nmacros] = eq ? eq + 1 : "1";
    o->nmacros++;
    return MC_OK;
}

/* Understands -std=[macos-|ios-]metalX.Y, -DNAME[=VALUE] (or -D NAME),
 * -ffast-math and -fno-fast-math; anything else is refused rather than
 * ignored. */
static mc_status parse_options(const char *options, MTLLanguageVersion dflt, compile_opts *o)
{
    memset(o, 0, sizeof *o);
    o->language = dflt;
    if (!options || !*options) return MC_OK;
    o->copy = mc__strdup(options);
    if (!o->copy) return mc__fail(MC_ERR_NO_MEMORY, "MSL options: out of host memory");
    char *save = NULL;
    for (char *t = strtok_r(o->copy, " \t\n", &save); t; t = strtok_r(NULL, " \t\n", &save)) {
        unsigned major, minor;
        char rest;
        if (!strncmp(t, "-std=", 5)) {
            const char *v = t + 5;
            if (!strncmp(v, "macos-", 6)) v += 6;
            else if (!strncmp(v, "ios-", 4)) v += 4;
            if (sscanf(v, "metal%u.%u%c", &major, &minor, &rest) != 2 || major < 1 || major > 9 || minor > 9)
                return mc__fail(MC_ERR_INVALID_ARGUMENT, "MSL option '%s': expected -std=metalX.Y", t);
            o->language = MC__MTL_LANGUAGE_VERSION(major, minor);
        } else if (!strcmp(t, "-ffast-math")) {
            o->fast_math = true;
        } else if (!strcmp(t, "-fno-fast-math")) {
            o->fast_math = false;
        } else if (!strcmp(t, "-D")) {
            char *def = strtok_r(NULL, " \t\n", &save);
            mc_status s = add_macro(o, def ? def : (char *)"");
            if (s != MC_OK) return s;
        } else if (!strncmp(t, "-D", 2)) {
            mc_status s = add_macro(o, t + 2);
            if (s != MC_OK) return s;
        } else {
            return mc__fail(MC_ERR_INVALID_ARGUMENT,
                            "MSL option '%s' is not supported (use -std=metalX.Y, -DNAME[=VALUE], -ffast-math)", t);
        }
    }
    return MC_OK;
}

/* MTLCompileOptions (+1) from parsed options. Pool held. */
static id make_compile_options(const compile_opts *o)
{
    id opts = msg_init(msg_alloc(mc__mtl_cls.MTLCompileOptions));
    if (!opts) return opts;
    msg_setLanguageVersion_(opts, o->language);
    /* mathMode (macOS 15) replaces the deprecated fastMathEnabled. */
    if (mc__mtl_responds(opts, MC__SEL(setMathMode_)))
        msg_setMathMode_(opts, o->fast_math ? MTLMathModeFast : MTLMathModeSafe);
    else msg_setFastMathEnabled_(opts, o->fast_math ? MC__MTL_YES : MC__MTL_NO);
    if (o->nmacros) {
        id keys[MC__MTL_MAX_MACROS], values[MC__MTL_MAX_MACROS];
        for (int i = 0; i < o->nmacros; i++) {
            keys[i] = mc__mtl_str(o->macro[i]);
            values[i] = mc__mtl_str(o->value[i]);
        }
        msg_setPreprocessorMacros_(opts, msg_dictionaryWithObjects_forKeys_count_(mc__mtl_cls.NSDictionary, values,
                                                                                  keys, (NSUInteger)o->nmacros));
    }
    return opts;
}

mc_status mc__mtl_compile(mc__mtl_device *dev, const char *source, size_t len, const char *options, id *library,
                          char **log)
{
    *library = (id)0;
    if (log) *log = NULL;
    compile_opts o;
    mc_status s = parse_options(options, dev->default_language, &o);
    if (s == MC_OK && o.language > dev->max_language)
        s = mc__fail(MC_ERR_UNSUPPORTED, "MSL %u.%u is newer than %s accepts (MSL %u.%u at most)",
                     (unsigned)(o.language >> 16), (unsigned)(o.language & 0xffffu), dev->os_version,
                     (unsigned)(dev->max_language >> 16), (unsigned)(dev->max_language & 0xffffu));
    if (s != MC_OK) {
        free(o.copy);
        return s;
    }
    char *text = mc__malloc(len + 1); /* the source need not be terminated */
    if (!text) {
        free(o.copy);
        return mc__fail(MC_ERR_NO_MEMORY, "MSL source: out of host memory");
    }
    memcpy(text, source, len);
    text[len] = '\0';
    id pool = mc__mtl_pool_push();
    id src = mc__mtl_str(text);
    id opts = src ? make_compile_options(&o) : (id)0;
    id err = (id)0;
    if (!src) {
        s = mc__fail(MC_ERR_COMPILE, "MSL source is not valid UTF-8");
    } else if (!opts) {
        s = mc__fail(MC_ERR_INTERNAL, "Metal: cannot make MTLCompileOptions");
    } else {
        *library = msg_newLibraryWithSource_options_error_(dev->device, src, opts, &err);
        if (!*library) {
            char *out = mc__mtl_strdup(err ? msg_localizedDescription(err) : (id)0);
            const char *first = out ? out : "no compiler output";
            size_t n = strcspn(first, "\n");
            s = mc__fail(MC_ERR_COMPILE, "MSL compile failed: %.*s", (int)MC__MIN(n, (size_t)200), first);
            if (log) *log = out;
            else free(out);
        } else if (err) {
            /* A library with an error attached: the compiler's warnings. */
            char warn[512];
            mc__mtl_error_text(err, warn, sizeof warn);
            mc__log(MC_LOG_DEBUG, "metal.compile_warnings", "%s", warn);
        }
    }
    mc__mtl_release(opts);
    mc__mtl_pool_pop(pool);
    free(text);
    free(o.copy);
    return s;
}

mc_status mc__mtl_library_create(void *vdev, mc_language lang, const char *source, size_t len, const char *options,
                                 void **out, char **log)
{
    mc__mtl_device *dev = vdev;
    if (log) *log = NULL;
    if (lang != MC_LANG_MSL)
        return mc__fail(MC_ERR_UNSUPPORTED, "the Metal device compiles MSL, not %s", mc_language_name(lang));
    mc_status s = mc__mtl_device_lost_status(dev);
    if (s != MC_OK) return s;
    mc__mtl_library *lib = mc__calloc(1, sizeof *lib);
    if (!lib) return mc__fail(MC_ERR_NO_MEMORY, "Metal library: out of host memory");
    s = mc__mtl_compile(dev, source, len, options, &lib->library, log);
    if (s != MC_OK) {
        free(lib);
        return s;
    }
    *out = lib;
    return MC_OK;
}

void mc__mtl_library_destroy(void *vdev, void *vlib)
{
    mc__mtl_library *lib = vlib;
    (void)vdev;
    if (!lib) return;
    id pool = mc__mtl_pool_push(); /* a last release runs dealloc, which may autorelease */
    mc__mtl_release(lib->library);
    mc__mtl_pool_pop(pool);
    free(lib);
}

/* ---- pipelines ------------------------------------------------------------ */

typedef struct pso_request {
    id library;
    const char *function;
    const mc_function_constant *constants;
    uint32_t constant_count;
    const char *label;
    uint32_t max_threads;
    bool simd_multiple;
    id archive; /* MTLBinaryArchive to look in, or nil */
    bool fail_on_miss;
} pso_request;

/* An MTLComputePipelineDescriptor (+1) for fn with the occupancy hints, the
 * same for making, archiving and loading a pipeline so that archive lookups
 * match. Pool held. */
static id make_pipeline_descriptor(const mc__mtl_device *dev, id fn, const char *label, uint32_t max_threads,
                                   bool simd_multiple)
{
    id desc = msg_init(msg_alloc(mc__mtl_cls.MTLComputePipelineDescriptor));
    if (!desc) return desc;
    msg_setComputeFunction_(desc, fn);
    if (label) msg_setLabel_(desc, mc__mtl_str(label));
    msg_setMaxTotalThreadsPerThreadgroup_(desc, max_threads); /* F157: 0 = default */
    msg_setThreadGroupSizeIsMultipleOfThreadExecutionWidth_(desc, simd_multiple ? MC__MTL_YES : MC__MTL_NO); /* F158 */
    if (dev->has_icb) msg_setSupportIndirectCommandBuffers_(desc, MC__MTL_YES); /* command lists (F670) */
    return desc;
}

#define MC__MTL_MAX_CONSTANT_INDEX 128u /* mc_function_constant.index is below this */

/* The size of a scalar function constant of Metal type t; 0 for any other. */
static uint32_t constant_type_size(MTLDataType t)
{
    switch (t) {
    case MTLDataTypeBool:
    case MTLDataTypeChar:
    case MTLDataTypeUChar: return 1;
    case MTLDataTypeShort:
    case MTLDataTypeUShort:
    case MTLDataTypeHalf: return 2;
    case MTLDataTypeInt:
    case MTLDataTypeUInt:
    case MTLDataTypeFloat: return 4;
    case MTLDataTypeLong:
    case MTLDataTypeULong: return 8;
    default: return 0;
    }
}

/* Fills values (MTLFunctionConstantValues) from the constants the function
 * declares: each given value under its declared type. Values for indices
 * the function does not declare are left out, as Metal ignores them.
 * Pool held. */
static mc_status fill_constants(id base, const char *name, const mc_function_constant *fc, uint32_t n, id values)
{
    id dict = msg_functionConstantsDictionary(base);
    id decl = dict ? msg_allValues(dict) : (id)0;
    NSUInteger ndecl = decl ? msg_count(decl) : 0;
    for (uint32_t i = 0; i < n; i++) {
        for (NSUInteger k = 0; k < ndecl; k++) {
            id c = msg_objectAtIndex_(decl, k);
            if (msg_index(c) != fc[i].index) continue;
            MTLDataType t = msg_type(c);
            uint32_t size = constant_type_size(t);
            if (!size)
                return mc__fail(MC_ERR_INVALID_ARGUMENT,
                                "function constant %u of '%s' has Metal data type %lu, not a "
                                "scalar (only scalar constants can be set)",
                                fc[i].index, name, (unsigned long)t);
            if (size != fc[i].size)
                return mc__fail(MC_ERR_INVALID_ARGUMENT, "function constant %u of '%s' is %u bytes, but %u were given",
                                fc[i].index, name, size, fc[i].size);
            msg_setConstantValue_type_atIndex_(values, fc[i].value, t, fc[i].index);
        }
    }
    return MC_OK;
}

/* The function (+1), specialised with the constants if any; NOT_FOUND with
 * a message when missing. Pool held. */
static mc_status find_function(id library, const char *name, const mc_function_constant *fc, uint32_t n, id *fn)
{
    *fn = (id)0;
    if (n && !fc) return mc__fail(MC_ERR_INVALID_ARGUMENT, "constant_count is %u but constants is NULL", n);
    for (uint32_t i = 0; i < n; i++)
        if (fc[i].index >= MC__MTL_MAX_CONSTANT_INDEX || fc[i].size < 1 || fc[i].size > 8 || !fc[i].value)
            return mc__fail(MC_ERR_INVALID_ARGUMENT,
                            "function constant %u: index %u (below %u), size %u (1 to 8 bytes) and a value are needed",
                            i, fc[i].index, MC__MTL_MAX_CONSTANT_INDEX, fc[i].size);
    id base = msg_newFunctionWithName_(library, mc__mtl_str(name));
    if (!base) return mc__fail(MC_ERR_NOT_FOUND, "function '%s' is not in the MSL library", name);
    if (!n) {
        *fn = base;
        return MC_OK;
    }
    id values = msg_init(msg_alloc(mc__mtl_cls.MTLFunctionConstantValues));
    mc_status s = values ? fill_constants(base, name, fc, n, values)
                         : mc__fail(MC_ERR_INTERNAL, "Metal: cannot make MTLFunctionConstantValues");
    mc__mtl_release(base);
    if (s == MC_OK) {
        id err = (id)0;
        *fn = msg_newFunctionWithName_constantValues_error_(library, mc__mtl_str(name), values, &err);
        if (!*fn) {
            char text[256];
            mc__mtl_error_text(err, text, sizeof text);
            s = mc__fail(MC_ERR_COMPILE, "Metal cannot specialise '%s' with its function constants: %s", name, text);
        }
    }
    mc__mtl_release(values);
    return s;
}

static mc_status make_pso(mc__mtl_device *dev, const pso_request *r, id *pso, mc_pipeline_info *info)
{
    *pso = (id)0;
    id pool = mc__mtl_pool_push();
    id fn, desc = (id)0, err = (id)0;
    mc_status s = find_function(r->library, r->function, r->constants, r->constant_count, &fn);
    if (s == MC_OK) {
        desc = make_pipeline_descriptor(dev, fn, r->label, r->max_threads, r->simd_multiple);
        if (!desc) s = mc__fail(MC_ERR_INTERNAL, "Metal: cannot make MTLComputePipelineDescriptor");
    }
    if (s == MC_OK) {
        if (r->archive) msg_setBinaryArchives_(desc, msg_arrayWithObjects_count_(mc__mtl_cls.NSArray, &r->archive, 1));
        *pso = msg_newComputePipelineStateWithDescriptor_options_reflection_error_(
            dev->device, desc, r->fail_on_miss ? MTLPipelineOptionFailOnBinaryArchiveMiss : MTLPipelineOptionNone, NULL,
            &err);
        if (!*pso) {
            char text[256];
            mc__mtl_error_text(err, text, sizeof text);
            s = r->fail_on_miss ? mc__fail(MC_ERR_CACHE_MISS,
                                           "pipeline '%s' is not in the binary archive and compiling is off "
                                           "(F700): %s",
                                           r->function, text)
                                : mc__fail(MC_ERR_COMPILE, "Metal cannot make pipeline '%s': %s", r->function, text);
        }
    }
    if (*pso && info) {
        memset(info, 0, sizeof *info);
        info->max_total_threads_per_threadgroup = (uint32_t)msg_maxTotalThreadsPerThreadgroup(*pso);
        info->simd_width = (uint32_t)msg_threadExecutionWidth(*pso);
        info->static_threadgroup_memory = msg_staticThreadgroupMemoryLength(*pso);
        info->argument_count = -1; /* reflection would cost a second compile pass */
    }
    mc__mtl_release(desc);
    mc__mtl_release(fn);
    mc__mtl_pool_pop(pool);
    return s;
}

static mc_status wrap_pipeline(id pso, const mc_pipeline_info *info, void **out)
{
    mc__mtl_pipeline *p = mc__calloc(1, sizeof *p);
    if (!p) {
        id pool = mc__mtl_pool_push();
        mc__mtl_release(pso);
        mc__mtl_pool_pop(pool);
        return mc__fail(MC_ERR_NO_MEMORY, "Metal pipeline: out of host memory");
    }
    p->pso = pso;
    p->info = *info;
    *out = p;
    return MC_OK;
}

mc_status mc__mtl_pipeline_create(void *vdev, void *vlib, const mc_pipeline_desc *desc, void **out,
                                  mc_pipeline_info *info)
{
    mc__mtl_device *dev = vdev;
    mc_status s = mc__mtl_device_lost_status(dev);
    if (s != MC_OK) return s;
    pso_request r = {((mc__mtl_library *)vlib)->library,
                     desc->function,
                     desc->constants,
                     desc->constant_count,
                     desc->label,
                     desc->max_total_threads_per_threadgroup,
                     desc->threadgroup_size_is_multiple_of_simd_width,
                     (id)0,
                     false};
    id pso;
    mc_pipeline_info pi;
    if ((s = make_pso(dev, &r, &pso, &pi)) != MC_OK) return s;
    if (info) *info = pi;
    return wrap_pipeline(pso, &pi, out);
}

void mc__mtl_pipeline_destroy(void *vdev, void *vp)
{
    mc__mtl_pipeline *p = vp;
    (void)vdev;
    if (!p) return;
    id pool = mc__mtl_pool_push(); /* a last release runs dealloc, which may autorelease */
    mc__mtl_release(p->pso);
    mc__mtl_pool_pop(pool);
    free(p);
}

/* ---- internal pipelines -------------------------------------------------------- */

/* Blit copies and fills need 4-byte multiples on macOS (Apple's
 * documentation for copyFromBuffer:... and fillBuffer:range:value:); other
 * ones run as the byte kernels, in order with everything else.
 * mc_clamp_range copies a command list's device-chosen {first, count} into
 * the MTLIndirectCommandBufferExecutionRange Metal reads, clamped to the
 * list (Metal itself does not clamp). mc_check_grid is validation mode's
 * check of an indirect dispatch's counts against MC_INDIRECT_MAX_GROUPS_*:
 * it copies them, zeroed when over the limits, with a flag the completion
 * handler reads. */
static const char util_source[] =
    "#include <metal_stdlib>\n"
    "using namespace metal;\n"
    "kernel void mc_copy_bytes(device uchar *dst [[buffer(0)]], device const uchar *src [[buffer(1)]],\n"
    "                          constant uint &n [[buffer(2)]], uint i [[thread_position_in_grid]])\n"
    "{\n"
    "    if (i < n) dst[i] = src[i];\n"
    "}\n"
    "kernel void mc_fill_bytes(device uchar *dst [[buffer(0)]], constant uint &n [[buffer(1)]],\n"
    "                          constant uint &value [[buffer(2)]], uint i [[thread_position_in_grid]])\n"
    "{\n"
    "    if (i < n) dst[i] = uchar(value);\n"
    "}\n"
    "kernel void mc_clamp_range(device const uint *in [[buffer(0)]], device uint *out [[buffer(1)]],\n"
    "                           constant uint &n [[buffer(2)]], uint i [[thread_position_in_grid]])\n"
    "{\n"
    "    if (i == 0) {\n"
    "        uint first = min(in[0], n);\n"
    "        out[0] = first;\n"
    "        out[1] = min(in[1], n - first);\n"
    "    }\n"
    "}\n"
    "kernel void mc_check_grid(device const uint *in [[buffer(0)]], device uint *out [[buffer(1)]],\n"
    "                          uint i [[thread_position_in_grid]])\n"
    "{\n"
    "    if (i == 0) {\n"
    "        uint x = in[0], y = in[1], z = in[2];\n"
    "        bool over = x != 0 && y != 0 && z != 0 && (x > 2147483647u || y > 65535u || z > 65535u);\n"
    "        out[0] = over ? 0u : x;\n"
    "        out[1] = over ? 0u : y;\n"
    "        out[2] = over ? 0u : z;\n"
    "        out[3] = over ? 1u : 0u;\n"
    "    }\n"
    "}\n";

id mc__mtl_util_pipeline(mc__mtl_device *dev, int which)
{
    pthread_mutex_lock(&dev->lock);
    if (!dev->util_pso[which]) {
        id library;
        mc_status s = mc__mtl_compile(dev, util_source, sizeof util_source - 1, NULL, &library, NULL);
        static const char *const fn[MC__MTL_UTIL_COUNT] = {"mc_copy_bytes", "mc_fill_bytes", "mc_clamp_range",
                                                           "mc_check_grid"};
        static const char *const label[MC__MTL_UTIL_COUNT] = {"metal-compute copy_bytes", "metal-compute fill_bytes",
                                                              "metal-compute clamp_range", "metal-compute check_grid"};
        for (int i = 0; s == MC_OK && i < MC__MTL_UTIL_COUNT; i++) {
            pso_request r = {library, fn[i], NULL, 0, label[i], 256, i <= MC__MTL_UTIL_FILL, (id)0, false};
            if (!dev->util_pso[i]) s = make_pso(dev, &r, &dev->util_pso[i], NULL);
        }
        mc__mtl_release(library); /* the pipelines keep what they need */
    }
    id pso = dev->util_pso[which];
    pthread_mutex_unlock(&dev->lock);
    return pso;
}

/* ---- binary archives -------------------------------------------------------------- */

mc_status mc__mtl_compiler_identity(void *vdev, mc_language lang, char *out, size_t cap)
{
    mc__mtl_device *dev = vdev;
    if (lang != MC_LANG_MSL)
        return mc__fail(MC_ERR_UNSUPPORTED, "the Metal device compiles MSL, not %s", mc_language_name(lang));
    /* Archives are tied to the OS build and the GPU (F699); the GPU is in
     * the device identity, the OS build here. */
    snprintf(out, cap, "%s MSL %u.%u", dev->os_version, (unsigned)(dev->default_language >> 16),
             (unsigned)(dev->default_language & 0xffffu));
    return MC_OK;
}

/* A private directory for one archive file: archives load and save through
 * file URLs only (F707). */
static mc_status archive_path(char *dir, size_t dcap, char *path, size_t pcap)
{
    const char *tmp = getenv("TMPDIR");
    if (!tmp || !*tmp) tmp = "/tmp";
    size_t n = strlen(tmp);
    while (n > 1 && tmp[n - 1] == '/') n--;
    snprintf(dir, dcap, "%.*s/mc-metal-archive-XXXXXX", (int)n, tmp);
    if (!mkdtemp(dir))
        return mc__fail(MC_ERR_IO, "cannot make a directory for a binary archive in %s: %s", tmp, strerror(errno));
    snprintf(path, pcap, "%s/pipeline.metallib", dir);
    return MC_OK;
}

static void archive_cleanup(const char *dir, const char *path)
{
    unlink(path);
    rmdir(dir);
}

static mc_status read_archive(const char *path, void **bytes, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) return mc__fail(MC_ERR_IO, "cannot open the serialised binary archive %s: %s", path, strerror(errno));
    mc_status s = MC_OK;
    long size = -1;
    if (fseek(f, 0, SEEK_END) == 0) size = ftell(f);
    uint8_t *buf = size >= 0 ? mc__malloc(MC__MTL_ARCHIVE_HEADER + (size_t)size) : NULL;
    if (size < 0) s = mc__fail(MC_ERR_IO, "cannot size %s", path);
    else if (!buf) s = mc__fail(MC_ERR_NO_MEMORY, "binary archive of %ld bytes: out of host memory", size);
    else if (fseek(f, 0, SEEK_SET) != 0 || fread(buf + MC__MTL_ARCHIVE_HEADER, 1, (size_t)size, f) != (size_t)size)
        s = mc__fail(MC_ERR_IO, "cannot read %s", path);
    fclose(f);
    if (s != MC_OK) {
        free(buf);
        return s;
    }
    memcpy(buf, MC__MTL_ARCHIVE_MAGIC, 8);
    for (int i = 0; i < 8; i++) buf[8 + i] = (uint8_t)((uint64_t)size >> (8 * i));
    *bytes = buf;
    *len = MC__MTL_ARCHIVE_HEADER + (size_t)size;
    return MC_OK;
}

mc_status mc__mtl_pipeline_export(void *vdev, const mc__pipeline_src *src, void *vlib, void *vpipeline, void **bytes,
                                  size_t *len)
{
    mc__mtl_device *dev = vdev;
    (void)vpipeline; /* the archive is filled from the descriptor, as at creation */
    mc_status s = mc__mtl_device_lost_status(dev);
    if (s != MC_OK) return s;
    if (!dev->has_archive)
        return mc__fail(MC_ERR_UNSUPPORTED, "Metal pipeline archive: this GPU or OS has no MTLBinaryArchive");
    char dir[1024], path[1100];
    if ((s = archive_path(dir, sizeof dir, path, sizeof path)) != MC_OK) return s;
    id pool = mc__mtl_pool_push();
    id err = (id)0, archive = (id)0, fn = (id)0, desc = (id)0;
    char text[256];
    id adesc = msg_init(msg_alloc(mc__mtl_cls.MTLBinaryArchiveDescriptor)); /* no url: an empty archive */
    if (adesc) archive = msg_newBinaryArchiveWithDescriptor_error_(dev->device, adesc, &err);
    mc__mtl_release(adesc);
    if (!archive) {
        mc__mtl_error_text(err, text, sizeof text);
        s = mc__fail(MC_ERR_INTERNAL, "Metal cannot make a binary archive: %s", text);
    }
    if (s == MC_OK)
        s = find_function(((mc__mtl_library *)vlib)->library, src->function, src->constants, src->constant_count, &fn);
    if (s == MC_OK) {
        desc = make_pipeline_descriptor(dev, fn, src->label, src->max_total_threads_per_threadgroup,
                                        src->threadgroup_size_is_multiple_of_simd_width);
        if (!desc) s = mc__fail(MC_ERR_INTERNAL, "Metal: cannot make MTLComputePipelineDescriptor");
    }
    if (s == MC_OK && !msg_addComputePipelineFunctionsWithDescriptor_error_(archive, desc, &err)) {
        mc__mtl_error_text(err, text, sizeof text);
        s = mc__fail(MC_ERR_COMPILE, "Metal cannot archive pipeline '%s': %s", src->function, text);
    }
    if (s == MC_OK) {
        id url = msg_fileURLWithPath_(mc__mtl_cls.NSURL, mc__mtl_str(path));
        if (!msg_serializeToURL_error_(archive, url, &err)) {
            mc__mtl_error_text(err, text, sizeof text);
            s = mc__fail(MC_ERR_IO, "Metal cannot serialise the binary archive to %s: %s", path, text);
        }
    }
    mc__mtl_release(desc);
    mc__mtl_release(fn);
    mc__mtl_release(archive);
    mc__mtl_pool_pop(pool);
    if (s == MC_OK) s = read_archive(path, bytes, len);
    archive_cleanup(dir, path);
    return s;
}

mc_status mc__mtl_pipeline_import(void *vdev, const mc__pipeline_src *src, const void *bytes, size_t len,
                                  bool fail_on_miss, void **out_lib, void **out_pipeline, mc_pipeline_info *info)
{
    mc__mtl_device *dev = vdev;
    const uint8_t *b = bytes;
    uint64_t n = 0;
    if (len >= MC__MTL_ARCHIVE_HEADER)
        for (int i = 0; i < 8; i++) n |= (uint64_t)b[8 + i] << (8 * i);
    if (len < MC__MTL_ARCHIVE_HEADER || memcmp(b, MC__MTL_ARCHIVE_MAGIC, 8) || n != len - MC__MTL_ARCHIVE_HEADER)
        return mc__fail(MC_ERR_IO, "not a Metal pipeline archive (bad header or truncated: %zu bytes)", len);
    mc_status s = mc__mtl_device_lost_status(dev);
    if (s != MC_OK) return s;
    if (!dev->has_archive)
        return mc__fail(MC_ERR_UNSUPPORTED, "Metal pipeline archive: this GPU or OS has no MTLBinaryArchive");
    char dir[1024], path[1100];
    if ((s = archive_path(dir, sizeof dir, path, sizeof path)) != MC_OK) return s;
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(b + MC__MTL_ARCHIVE_HEADER, 1, (size_t)n, f) != (size_t)n)
        s = mc__fail(MC_ERR_IO, "cannot write %s", path);
    if (f && fclose(f) != 0 && s == MC_OK) s = mc__fail(MC_ERR_IO, "cannot write %s", path);
    if (s != MC_OK) {
        archive_cleanup(dir, path);
        return s;
    }
    id pool = mc__mtl_pool_push();
    id err = (id)0, archive = (id)0, library = (id)0, pso = (id)0;
    mc_pipeline_info pi;
    id adesc = msg_init(msg_alloc(mc__mtl_cls.MTLBinaryArchiveDescriptor));
    if (adesc) {
        msg_setUrl_(adesc, msg_fileURLWithPath_(mc__mtl_cls.NSURL, mc__mtl_str(path)));
        archive = msg_newBinaryArchiveWithDescriptor_error_(dev->device, adesc, &err);
        mc__mtl_release(adesc);
    }
    if (!archive) {
        char text[256];
        mc__mtl_error_text(err, text, sizeof text);
        s = mc__fail(fail_on_miss ? MC_ERR_CACHE_MISS : MC_ERR_IO, "Metal cannot load the binary archive: %s", text);
    }
    if (s == MC_OK) s = mc__mtl_compile(dev, src->source, src->source_len, src->options, &library, NULL);
    if (s == MC_OK) {
        pso_request r = {library,
                         src->function,
                         src->constants,
                         src->constant_count,
                         src->label,
                         src->max_total_threads_per_threadgroup,
                         src->threadgroup_size_is_multiple_of_simd_width,
                         archive,
                         fail_on_miss};
        s = make_pso(dev, &r, &pso, &pi);
    }
    mc__mtl_release(archive); /* pipelines keep what they need (F706) */
    mc__mtl_pool_pop(pool);
    archive_cleanup(dir, path);
    mc__mtl_library *lib = s == MC_OK ? mc__calloc(1, sizeof *lib) : NULL;
    if (s == MC_OK && !lib) s = mc__fail(MC_ERR_NO_MEMORY, "Metal library: out of host memory");
    if (s == MC_OK) s = wrap_pipeline(pso, &pi, out_pipeline);
    if (s != MC_OK) {
        id p2 = mc__mtl_pool_push();    /* last releases run dealloc, which may autorelease */
        if (!lib) mc__mtl_release(pso); /* else wrap_pipeline released it */
        mc__mtl_release(library);
        mc__mtl_pool_pop(p2);
        free(lib);
        return s;
    }
    lib->library = library;
    *out_lib = lib;
    if (info) *info = pi;
    return MC_OK;
}
