/*
 * DOC: CUDA libraries, pipelines and the pipeline archive
 *
 * A library is CUDA C compiled by NVRTC for the device's exact architecture
 * (--gpu-architecture=sm_XY, so NVRTC emits a cubin and nothing is left to
 * the driver's JIT), loaded as one CUmodule. The cubin is also what the
 * pipeline archive stores: importing it is a cuModuleLoadData, never a
 * compile. If NVRTC does not know the device's architecture (a GPU newer
 * than the toolkit), the library is PTX for the newest virtual architecture
 * NVRTC has and the driver compiles it at load; the archive then stores
 * the PTX.
 *
 * Kernels must be declared extern "C" __global__ so they are found by their
 * plain names. A pipeline is one CUfunction. The occupancy hint
 * maxTotalThreadsPerThreadgroup (F157) is what __launch_bounds__ is in CUDA:
 * at or below what the compiled function allows, it only lowers the limit
 * dispatches are checked against; above it, the library is compiled again
 * for that pipeline with the register limit (--maxrregcount) that lets that
 * many threads share a block's register file, as __launch_bounds__ would.
 * The SIMD-multiple hint (F158) has no CUDA counterpart; the engine checks
 * it.
 */
#include "backends/cuda/cuda_be.h"
#include "mc/mc_cpu_kernel.h"
#include "msl/msl.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- libraries ---------------------------------------------------------- */

CUresult mc__cuda_load_module(mc__cuda_device *dev, const char *image, CUmodule *mod)
{
    *mod = NULL;
    return dev->cu->ModuleLoadData(mod, image);
}

static void library_unref(mc__cuda_library *lib)
{
    if (!lib || atomic_fetch_sub(&lib->refs, 1) != 1) return;
    mc__cuda_device *dev = lib->dev;
    if (lib->mod && mc__cuda_enter(dev) == MC_OK) {
        (void)dev->cu->ModuleUnload(lib->mod);
        mc__cuda_leave(dev);
    }
    free(lib->image);
    free(lib->source);
    free(lib->options);
    free(lib);
}

/* Loads image (cubin, or PTX text: image[len] must be '\0') as a library
 * that owns image. */
static mc_status library_from_image(mc__cuda_device *dev, void *image, size_t len, mc__cuda_library **out)
{
    *out = NULL;
    mc__cuda_library *lib = mc__calloc(1, sizeof *lib);
    if (!lib) {
        free(image);
        return mc__fail(MC_ERR_NO_MEMORY, "cuda: out of memory");
    }
    atomic_init(&lib->refs, 1);
    lib->dev = dev;
    lib->image = image;
    lib->image_len = len;
    mc_status s = mc__cuda_enter(dev);
    if (s != MC_OK) {
        library_unref(lib);
        return s;
    }
    CUresult r = mc__cuda_load_module(dev, image, &lib->mod);
    mc__cuda_leave(dev);
    if (r != CUDA_SUCCESS) {
        lib->mod = NULL;
        library_unref(lib);
        return mc__cuda_fail(dev, r, "cuModuleLoadData");
    }
    *out = lib;
    return MC_OK;
}

/* The architecture option: the device's own when NVRTC knows it (a cubin),
 * else the newest older virtual architecture NVRTC has (PTX, JIT at load). */
static void arch_option(const mc__nvrtc_api *rtc, const mc__cuda_device *dev, char *out, size_t cap)
{
    int want = dev->cc_major * 10 + dev->cc_minor;
    int n = 0;
    if (rtc->GetNumSupportedArchs && rtc->GetSupportedArchs && rtc->GetNumSupportedArchs(&n) == NVRTC_SUCCESS &&
        n > 0 && n < 4096) {
        int *archs = mc__calloc((size_t)n, sizeof *archs);
        if (archs && rtc->GetSupportedArchs(archs) == NVRTC_SUCCESS) {
            int best = 0;
            bool exact = false;
            for (int i = 0; i < n; i++) {
                if (archs[i] == want) exact = true;
                if (archs[i] <= want && archs[i] > best) best = archs[i];
            }
            free(archs);
            if (exact) {
                snprintf(out, cap, "--gpu-architecture=sm_%d", want);
            } else if (best) {
                mc__log(MC_LOG_INFO, "cuda.nvrtc_arch",
                        "NVRTC %d.%d does not know %s: compiling PTX for compute_%d (the driver finishes it)",
                        rtc->major, rtc->minor, dev->arch, best);
                snprintf(out, cap, "--gpu-architecture=compute_%d", best);
            } else {
                snprintf(out, cap, "--gpu-architecture=sm_%d", want);
            }
            return;
        }
        free(archs);
    }
    snprintf(out, cap, "--gpu-architecture=sm_%d", want);
}

/* Splits options on white space into a malloc'd copy; *argv points into it. */
static char *split_options(const char *options, const char **argv, int cap, int *argc)
{
    char *copy = mc__strdup(options ? options : "");
    if (!copy) return NULL;
    char *p = copy;
    while (*p) {
        while (*p && isspace((unsigned char)*p)) *p++ = '\0';
        if (!*p) break;
        if (*argc >= cap) break;
        argv[(*argc)++] = p;
        while (*p && !isspace((unsigned char)*p)) p++;
    }
    return copy;
}

static char *program_log(const mc__nvrtc_api *rtc, nvrtcProgram prog)
{
    size_t n = 0;
    if (rtc->GetProgramLogSize(prog, &n) != NVRTC_SUCCESS || n <= 1) return NULL;
    char *log = mc__malloc(n + 1);
    if (!log) return NULL;
    if (rtc->GetProgramLog(prog, log) != NVRTC_SUCCESS) {
        free(log);
        return NULL;
    }
    log[n] = '\0';
    return log;
}

#define MC__CUDA_MAX_OPTIONS 64

/* Compiles source with the user's options plus extra (may be NULL) into a
 * library that keeps the source. */
static mc_status compile(mc__cuda_device *dev, const char *source, size_t len, const char *options, const char *extra,
                         mc__cuda_library **out, char **log)
{
    *out = NULL;
    if (log) *log = NULL;
    const char *why = "";
    const mc__nvrtc_api *rtc = mc__cuda_nvrtc(&why);
    if (!rtc) return mc__fail(MC_ERR_UNSUPPORTED, "cuda: cannot compile: %s", why);

    char *src = mc__malloc(len + 1); /* NVRTC wants a C string */
    if (!src) return mc__fail(MC_ERR_NO_MEMORY, "cuda: out of memory");
    memcpy(src, source, len);
    src[len] = '\0';

    char arch[64];
    arch_option(rtc, dev, arch, sizeof arch);
    const char *argv[MC__CUDA_MAX_OPTIONS];
    int argc = 0;
    argv[argc++] = arch;
    argv[argc++] = "-default-device";
    if (extra) argv[argc++] = extra;
    char *opts = split_options(options, argv, MC__CUDA_MAX_OPTIONS, &argc);
    if (!opts) {
        free(src);
        return mc__fail(MC_ERR_NO_MEMORY, "cuda: out of memory");
    }

    nvrtcProgram prog = NULL;
    nvrtcResult nr = rtc->CreateProgram(&prog, src, "mc_library.cu", 0, NULL, NULL);
    free(src);
    if (nr != NVRTC_SUCCESS) {
        free(opts);
        return mc__fail(nr == NVRTC_ERROR_OUT_OF_MEMORY ? MC_ERR_NO_MEMORY : MC_ERR_INTERNAL, "nvrtcCreateProgram: %s",
                        rtc->GetErrorString(nr));
    }
    nr = rtc->CompileProgram(prog, argc, argv);
    free(opts);
    if (nr != NVRTC_SUCCESS) {
        char *text = program_log(rtc, prog);
        mc_status s;
        if (nr == NVRTC_ERROR_COMPILATION || nr == NVRTC_ERROR_INVALID_OPTION ||
            nr == NVRTC_ERROR_BUILTIN_OPERATION_FAILURE) {
            /* the first line of the log says what; the whole log goes to the caller */
            char first[160] = "";
            if (text) {
                size_t n = strcspn(text, "\n");
                snprintf(first, sizeof first, ": %.*s", (int)MC__MIN(n, sizeof first - 3), text);
            }
            s = mc__fail(MC_ERR_COMPILE, "NVRTC %d.%d (%s): %s%s", rtc->major, rtc->minor, dev->arch,
                         rtc->GetErrorString(nr), first);
        } else {
            s = mc__fail(nr == NVRTC_ERROR_OUT_OF_MEMORY ? MC_ERR_NO_MEMORY : MC_ERR_INTERNAL,
                         "nvrtcCompileProgram: %s", rtc->GetErrorString(nr));
        }
        if (log && s == MC_ERR_COMPILE) *log = text;
        else free(text);
        rtc->DestroyProgram(&prog);
        return s;
    }

    /* sm_XY gives a cubin; compute_XY only PTX. */
    size_t n = 0;
    void *image = NULL;
    bool is_cubin = strncmp(arch, "--gpu-architecture=sm_", 22) == 0 && rtc->GetCUBINSize && rtc->GetCUBIN;
    if (is_cubin && rtc->GetCUBINSize(prog, &n) == NVRTC_SUCCESS && n > 0) {
        image = mc__malloc(n + 1);
        if (image && rtc->GetCUBIN(prog, image) != NVRTC_SUCCESS) {
            free(image);
            image = NULL;
            n = 0;
        }
    } else {
        n = 0;
        if (rtc->GetPTXSize(prog, &n) == NVRTC_SUCCESS && n > 0) {
            image = mc__malloc(n + 1);
            if (image && rtc->GetPTX(prog, image) != NVRTC_SUCCESS) {
                free(image);
                image = NULL;
            }
        }
    }
    rtc->DestroyProgram(&prog);
    if (!image) return mc__fail(MC_ERR_INTERNAL, "NVRTC produced no code");
    ((char *)image)[n] = '\0';        /* PTX is loaded as a C string */
    if (!is_cubin) n = strlen(image); /* the PTX size counts its terminator */

    mc__cuda_library *lib;
    mc_status s = library_from_image(dev, image, n, &lib);
    if (s != MC_OK) return s;
    lib->source = mc__malloc(len + 1);
    lib->options = mc__strdup(options ? options : "");
    if (!lib->source || !lib->options) {
        library_unref(lib);
        return mc__fail(MC_ERR_NO_MEMORY, "cuda: out of memory");
    }
    memcpy(lib->source, source, len);
    lib->source[len] = '\0';
    lib->source_len = len;
    *out = lib;
    return MC_OK;
}

mc_status mc__cuda_library_create(void *devp, mc_language lang, const char *source, size_t len, const char *options,
                                  void **out, char **log)
{
    *out = NULL;
    if (log) *log = NULL;
    if (lang == MC_LANG_MSL) {
        /* MSL through the project's header in clang's CUDA mode (see
         * src/msl/msl.h): PTX, loaded like NVRTC's. No source is kept, so
         * an occupancy hint never rebuilds it through NVRTC. */
        char *ptx = NULL;
        size_t n = 0;
        mc_status s = mc__msl_build_ptx(source, len, options, &ptx, &n, log);
        if (s != MC_OK) return s;
        mc__cuda_library *lib;
        s = library_from_image(devp, ptx, n, &lib);
        if (s == MC_OK) *out = lib;
        return s;
    }
    if (lang != MC_LANG_CUDA)
        return mc__fail(MC_ERR_UNSUPPORTED, "the CUDA device compiles CUDA C and MSL, not %s", mc_language_name(lang));
    mc__cuda_library *lib;
    mc_status s = compile(devp, source, len, options, NULL, &lib, log);
    if (s == MC_OK) *out = lib;
    return s;
}

void mc__cuda_library_destroy(void *devp, void *lib)
{
    (void)devp;
    library_unref(lib);
}

/* ---- pipelines ------------------------------------------------------------ */

static void pipeline_free(mc__cuda_pipeline *pl)
{
    if (!pl) return;
    library_unref(pl->lib);
    free(pl->param_size);
    free(pl->name);
    free(pl);
}

/* The pipeline for function in lib. When the occupancy hint asks for more
 * threads than the compiled function allows, returns MC_ERR_INVALID_ARGUMENT
 * with *fmax_out set (the caller may rebuild the library). */
static mc_status pipeline_make(mc__cuda_device *dev, mc__cuda_library *lib, const char *function,
                               uint32_t max_total_threads, mc__cuda_pipeline **out, mc_pipeline_info *info,
                               uint32_t *fmax_out)
{
    const mc__cuda_api *cu = dev->cu;
    *out = NULL;
    if (fmax_out) *fmax_out = 0;
    if (!function || !*function) return mc__fail(MC_ERR_INVALID_ARGUMENT, "cuda: no function name");
    mc__cuda_pipeline *pl = mc__calloc(1, sizeof *pl);
    if (!pl) return mc__fail(MC_ERR_NO_MEMORY, "cuda: out of memory");
    pl->name = mc__strdup(function);
    if (!pl->name) {
        free(pl);
        return mc__fail(MC_ERR_NO_MEMORY, "cuda: out of memory");
    }
    mc_status s = mc__cuda_enter(dev);
    if (s != MC_OK) {
        free(pl->name);
        free(pl);
        return s;
    }
    CUresult r = cu->ModuleGetFunction(&pl->fn, lib->mod, function);
    if (r != CUDA_SUCCESS) {
        mc__cuda_leave(dev);
        free(pl->name);
        free(pl);
        if (r == CUDA_ERROR_NOT_FOUND)
            return mc__fail(MC_ERR_NOT_FOUND,
                            "cuda: no kernel '%s' in the library (kernels must be declared extern \"C\" __global__)",
                            function);
        return mc__cuda_fail(dev, r, "cuModuleGetFunction");
    }
    int v = 0;
    uint32_t fmax = 0;
    if (cu->FuncGetAttribute(&v, CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK, pl->fn) == CUDA_SUCCESS && v > 0)
        fmax = (uint32_t)v;
    else fmax = dev->info.max_threads_per_threadgroup;
    v = 0;
    if (cu->FuncGetAttribute(&v, CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES, pl->fn) == CUDA_SUCCESS && v > 0)
        pl->static_smem = (uint32_t)v;
    v = 0;
    if (cu->FuncGetAttribute(&v, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, pl->fn) == CUDA_SUCCESS && v > 0)
        atomic_init(&pl->dyn_smem, v);
    else atomic_init(&pl->dyn_smem, (int)MC__CUDA_DEFAULT_SMEM - (int)pl->static_smem);

    /* Parameter layout (12.4): lets short SET_BYTES and unbound slots be
     * padded to what the kernel reads, and tells validation the count. The
     * query fails with CUDA_ERROR_INVALID_VALUE one past the last one. */
    pl->nparams = -1;
    if (cu->FuncGetParamInfo) {
        uint32_t count = 0, cap = 0;
        uint32_t *sizes = NULL;
        bool ok = true;
        for (;;) {
            size_t off = 0, size = 0;
            r = cu->FuncGetParamInfo(pl->fn, count, &off, &size);
            if (r != CUDA_SUCCESS) {
                ok = r == CUDA_ERROR_INVALID_VALUE;
                break;
            }
            if (count == cap) {
                uint32_t ncap = cap ? cap * 2 : 8;
                uint32_t *ns = mc__realloc(sizes, ncap * sizeof *ns);
                if (!ns) {
                    ok = false;
                    break;
                }
                sizes = ns;
                cap = ncap;
            }
            sizes[count++] = (uint32_t)size;
            if (count >= MC__CUDA_MAX_PARAM_BYTES) break;
        }
        if (ok) {
            pl->param_size = sizes;
            pl->nparams = (int32_t)count;
        } else {
            free(sizes);
        }
    }
    /* An MSL kernel says how each slot is filled (mc::cuda_param in
     * src/msl/mc_msl_cpu.h): a table beside it in the module. */
    char sym[64 + 16];
    CUdeviceptr table = 0;
    size_t table_size = 0;
    if (cu->ModuleGetGlobal && strlen(function) < 64 && snprintf(sym, sizeof sym, "mc_slots_%s", function) > 0 &&
        cu->ModuleGetGlobal(&table, &table_size, lib->mod, sym) == CUDA_SUCCESS && table_size <= sizeof pl->slot &&
        table_size % sizeof pl->slot[0] == 0) {
        r = cu->MemcpyDtoHAsync(pl->slot, table, table_size, dev->xfer);
        if (r == CUDA_SUCCESS) r = cu->StreamSynchronize(dev->xfer);
        if (r != CUDA_SUCCESS) {
            mc__cuda_leave(dev);
            pipeline_free(pl);
            return mc__cuda_fail(dev, r, "reading the kernel's slot table");
        }
    }
    mc__cuda_leave(dev);

    if (fmax_out) *fmax_out = fmax;
    if (max_total_threads > fmax) {
        free(pl->param_size);
        free(pl->name);
        free(pl);
        return mc__fail(MC_ERR_INVALID_ARGUMENT,
                        "cuda: kernel '%s' allows at most %u threads per threadgroup, the hint asks for %u (F157)",
                        function, fmax, max_total_threads);
    }
    pl->max_threads = max_total_threads ? max_total_threads : fmax;
    atomic_fetch_add(&lib->refs, 1);
    pl->lib = lib;
    if (info) {
        memset(info, 0, sizeof *info);
        info->max_total_threads_per_threadgroup = pl->max_threads;
        info->simd_width = dev->info.simd_width;
        info->static_threadgroup_memory = pl->static_smem;
        info->argument_count = pl->nparams;
    }
    *out = pl;
    return MC_OK;
}

/* Registers per thread that let `threads` threads share one block's
 * register file: what __launch_bounds__(threads) makes the compiler do. */
static int regs_for(const mc__cuda_device *dev, uint32_t threads)
{
    int per_block = 0;
    if (dev->cu->DeviceGetAttribute(&per_block, CU_DEVICE_ATTRIBUTE_MAX_REGISTERS_PER_BLOCK, dev->cudev) !=
            CUDA_SUCCESS ||
        per_block <= 0)
        per_block = 65536;
    uint32_t warps = (threads + 31u) / 32u;
    int r = per_block / (int)(warps * 32u);
    r &= ~7; /* registers are allocated to warps in units of 8 per thread */
    return MC__MIN(r, 255);
}

/* MSL function constants on CUDA: the kernels read them from the module's
 * __constant__ mc_function_constants (src/msl/mc_msl_cpu.h), so a pipeline
 * with constants loads the library's PTX as a module of its own and fills
 * that variable once. */
static mc_status constants_pipeline(mc__cuda_device *dev, mc__cuda_library *lib, const mc_pipeline_desc *desc,
                                    mc__cuda_pipeline **out, mc_pipeline_info *info)
{
    *out = NULL;
    const mc_function_constant *fc = desc->constants;
    if (!fc)
        return mc__fail(MC_ERR_INVALID_ARGUMENT, "constant_count is %u but constants is NULL", desc->constant_count);
    mc_cpu_constants c;
    memset(&c, 0, sizeof c);
    for (uint32_t i = 0; i < desc->constant_count; i++) {
        if (fc[i].index >= MC_CPU_MAX_CONSTANTS || !fc[i].value || fc[i].size == 0 || fc[i].size > MC_CPU_CONSTANT_SIZE)
            return mc__fail(MC_ERR_INVALID_ARGUMENT,
                            "function constant %u: index %u (below %u), size %u (1 to %u bytes) and a value are needed",
                            i, fc[i].index, MC_CPU_MAX_CONSTANTS, fc[i].size, MC_CPU_CONSTANT_SIZE);
        c.defined[fc[i].index / 64] |= 1ull << (fc[i].index % 64);
        memcpy(&c.value[fc[i].index], fc[i].value, fc[i].size);
    }
    if (!lib->image || !lib->image_len || !dev->cu->ModuleGetGlobal)
        return mc__fail(MC_ERR_UNSUPPORTED, "cuda: function constants need an MSL library and cuModuleGetGlobal");
    void *image = mc__malloc(lib->image_len + 1);
    if (!image) return mc__fail(MC_ERR_NO_MEMORY, "cuda: out of memory");
    memcpy(image, lib->image, lib->image_len);
    ((char *)image)[lib->image_len] = '\0';
    mc__cuda_library *own;
    mc_status s = library_from_image(dev, image, lib->image_len, &own);
    if (s != MC_OK) return s;
    mc__cuda_pipeline *pl = NULL;
    s = pipeline_make(dev, own, desc->function, desc->max_total_threads_per_threadgroup, &pl, info, NULL);
    library_unref(own); /* the pipeline holds it */
    if (s != MC_OK) return s;
    if ((s = mc__cuda_enter(dev)) != MC_OK) {
        pipeline_free(pl);
        return s;
    }
    CUdeviceptr at = 0;
    size_t size = 0;
    CUresult r = dev->cu->ModuleGetGlobal(&at, &size, own->mod, "mc_function_constants");
    if (r != CUDA_SUCCESS || size != sizeof c) {
        mc__cuda_leave(dev);
        pipeline_free(pl);
        return mc__fail(MC_ERR_INVALID_ARGUMENT,
                        "cuda: '%s' has no function constants to set (only MSL libraries take them)", desc->function);
    }
    r = dev->cu->MemcpyHtoDAsync(at, &c, sizeof c, dev->xfer);
    if (r == CUDA_SUCCESS) r = dev->cu->StreamSynchronize(dev->xfer);
    mc__cuda_leave(dev);
    if (r != CUDA_SUCCESS) {
        pipeline_free(pl);
        return mc__cuda_fail(dev, r, "setting function constants");
    }
    *out = pl;
    return MC_OK;
}

mc_status mc__cuda_pipeline_create(void *devp, void *libp, const mc_pipeline_desc *desc, void **out,
                                   mc_pipeline_info *info)
{
    mc__cuda_device *dev = devp;
    mc__cuda_library *lib = libp;
    *out = NULL;
    if (desc->constant_count) {
        mc__cuda_pipeline *cpl;
        mc_status cs = constants_pipeline(dev, lib, desc, &cpl, info);
        if (cs == MC_OK) *out = cpl;
        return cs;
    }
    uint32_t want = desc->max_total_threads_per_threadgroup, fmax = 0;
    mc__cuda_pipeline *pl;
    mc_status s = pipeline_make(dev, lib, desc->function, want, &pl, info, &fmax);
    if (s == MC_ERR_INVALID_ARGUMENT && fmax && want > fmax && want <= dev->info.max_threads_per_threadgroup &&
        lib->source) {
        /* The occupancy hint (F157) asks for more threads than the compiled
         * function allows: build the library again with the register limit
         * __launch_bounds__(want) would impose, for this pipeline alone. */
        int regs = regs_for(dev, want);
        char opt[40];
        snprintf(opt, sizeof opt, "--maxrregcount=%d", regs);
        mc__cuda_library *own;
        s = compile(dev, lib->source, lib->source_len, lib->options, opt, &own, NULL);
        if (s != MC_OK) return s;
        s = pipeline_make(dev, own, desc->function, want, &pl, info, &fmax);
        library_unref(own); /* the pipeline holds it */
        if (s == MC_OK)
            mc__log(MC_LOG_INFO, "cuda.occupancy_hint",
                    "cuda:%d: '%s' rebuilt with %s so %u threads fit in a threadgroup (F157)", dev->index,
                    desc->function, opt, want);
    }
    if (s == MC_OK) *out = pl;
    return s;
}

void mc__cuda_pipeline_destroy(void *devp, void *p)
{
    mc__cuda_pipeline *pl = p;
    if (!pl) return;
    mc__cuda_forget_pipeline(devp, pl);
    pipeline_free(pl);
}

/* ---- the archive ------------------------------------------------------------ */

mc_status mc__cuda_compiler_identity(void *devp, mc_language lang, char *out, size_t cap)
{
    mc__cuda_device *dev = devp;
    if (lang == MC_LANG_MSL) {
        char id[768];
        mc_status s = mc__msl_cuda_identity(id, sizeof id);
        if (s == MC_OK) snprintf(out, cap, "%s %s", id, dev->arch);
        return s;
    }
    if (lang != MC_LANG_CUDA)
        return mc__fail(MC_ERR_UNSUPPORTED, "the CUDA device compiles CUDA C and MSL, not %s", mc_language_name(lang));
    /* Cache key material (issue 21): NVRTC's file, not its version, so a
     * disk hit never loads NVRTC (cuda_api.c, "NVRTC's identity"). */
    const char *file = mc__cuda_nvrtc_file();
    char id[640];
    if (file && mc__cuda_file_identity(file, id, sizeof id) == MC_OK) {
        snprintf(out, cap, "nvrtc %s %s", id, dev->arch);
        return MC_OK;
    }
    const char *why = "";
    const mc__nvrtc_api *rtc = mc__cuda_nvrtc(&why);
    if (!rtc) return mc__fail(MC_ERR_UNSUPPORTED, "cuda: %s", why);
    snprintf(out, cap, "nvrtc %d.%d %s", rtc->major, rtc->minor, dev->arch);
    return MC_OK;
}

mc_status mc__cuda_pipeline_export(void *devp, const mc__pipeline_src *src, void *libp, void *pipeline, void **bytes,
                                   size_t *len)
{
    (void)devp;
    (void)src;
    mc__cuda_pipeline *pl = pipeline;
    mc__cuda_library *lib = pl ? pl->lib : libp; /* an occupancy hint may have rebuilt it */
    *bytes = NULL;
    *len = 0;
    if (!lib || !lib->image || !lib->image_len) return mc__fail(MC_ERR_UNSUPPORTED, "cuda: library has no binary");
    void *copy = mc__malloc(lib->image_len);
    if (!copy) return mc__fail(MC_ERR_NO_MEMORY, "cuda: out of memory");
    memcpy(copy, lib->image, lib->image_len);
    *bytes = copy;
    *len = lib->image_len;
    return MC_OK;
}

mc_status mc__cuda_pipeline_import(void *devp, const mc__pipeline_src *src, const void *bytes, size_t len,
                                   bool fail_on_miss, void **lib_out, void **pipeline_out, mc_pipeline_info *info)
{
    mc__cuda_device *dev = devp;
    (void)fail_on_miss; /* importing never compiles */
    *lib_out = NULL;
    *pipeline_out = NULL;
    /* A cubin is an ELF image; PTX is text starting with a comment or a
     * directive. Anything else is not ours: refuse it before the driver
     * parses it. */
    static const unsigned char elf[4] = {0x7f, 'E', 'L', 'F'};
    const char *b = bytes;
    bool is_elf = len >= 52 && memcmp(bytes, elf, 4) == 0;
    bool is_ptx = len >= 8 && (b[0] == '/' || b[0] == '.' || b[0] == '\n' || b[0] == '\r' || b[0] == ' ') &&
                  memchr(bytes, '\0', len) == NULL;
    if (!is_elf && !is_ptx) return mc__fail(MC_ERR_IO, "cuda: archived pipeline is neither a cubin nor PTX");
    void *image = mc__malloc(len + 1);
    if (!image) return mc__fail(MC_ERR_NO_MEMORY, "cuda: out of memory");
    memcpy(image, bytes, len);
    ((char *)image)[len] = '\0';
    mc__cuda_library *lib;
    mc_status s = library_from_image(dev, image, len, &lib);
    if (s != MC_OK) {
        if (s == MC_ERR_COMPILE) s = mc__fail(MC_ERR_IO, "cuda: archived binary does not load: %s", mc_last_error());
        return s;
    }
    mc__cuda_pipeline *pl;
    s = pipeline_make(dev, lib, src->function, src->max_total_threads_per_threadgroup, &pl, info, NULL);
    if (s != MC_OK) {
        library_unref(lib);
        return s;
    }
    *lib_out = lib;
    *pipeline_out = pl;
    return MC_OK;
}
