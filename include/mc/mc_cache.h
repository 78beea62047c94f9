/*
 * metal-compute: the pipeline cache and on-disk binary archive.
 *
 * Included by mc/mc.h; the conventions at the top of mc.h hold here too.
 *
 * A pipeline made from source through this header is content-addressed:
 * its key covers the backend, the device identity (model/architecture), the
 * compiler's identity and version, the language, the full source, the
 * options, the function name and the occupancy hints (F171, F172). The same
 * input always finds the same entry; two different inputs never share one.
 *
 *  - In memory, one compiled library per key and device, shared by every
 *    pipeline made from it. Concurrent requests for one key compile once and
 *    all get the result, or the same error.
 *  - On disk, in $MC_CACHE_DIR (default $XDG_CACHE_HOME/metal-compute, else
 *    ~/.cache/metal-compute), one folder per device identity, one file per
 *    key holding what the device loads fastest: the shared object on the
 *    CPU, the cubin on CUDA, an MTLBinaryArchive on Metal (F697, F707). A
 *    file that is truncated, corrupt, of another format, misnamed, not owned
 *    by the current user or writable by others is never loaded: it is
 *    removed where that is safe, rebuilt, and the reason logged once
 *    ("cache.entry_rejected"). docs/CACHE.md describes the format.
 *
 * Every function here is thread-safe.
 */
#ifndef MC_MC_CACHE_H
#define MC_MC_CACHE_H

#include "mc.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------------ */
/* Pipelines from source, through the cache                                  */
/* ------------------------------------------------------------------------ */
typedef struct mc_pipeline_source_desc {
    mc_language language; /* UNSET: the device's own (c, cuda or msl) */
    const char *source;
    size_t source_len;   /* 0 = strlen(source) */
    const char *options; /* compiler options, space separated; may be NULL */
    const char *function;
    /* Occupancy hints (F157, F158): 0 = device default. Part of the key. */
    uint32_t max_total_threads_per_threadgroup;
    bool threadgroup_size_is_multiple_of_simd_width;
    const char *label; /* not part of the key; NULL = the function name */
    /* MSL function constants, as mc_pipeline_desc takes them: part of the
     * key (indices, sizes and values, in any order; an index given twice
     * is refused), so each set of values is an entry of its own. */
    const mc_function_constant *constants;
    uint32_t constant_count;
} mc_pipeline_source_desc;
#define MC_PIPELINE_SOURCE_DESC_INIT \
    MC__DESC_INIT(.language = MC_LANG_UNSET, .source = NULL, .source_len = 0, .max_total_threads_per_threadgroup = 0)

/* Makes a pipeline from source: from memory, else from the on-disk archive,
 * else by compiling (and then archiving). *out is a new reference the
 * caller releases; each call returns its own mc_pipeline, and pipelines of
 * one key share the compiled code. On MC_ERR_COMPILE *log (if log != NULL)
 * receives the compiler's output (free with mc_free), else NULL.
 * In MC_CACHE_REQUIRE mode a pipeline found neither in memory nor on disk
 * returns MC_ERR_CACHE_MISS without compiling (F700). */
MC_API mc_status mc_pipeline_create_from_source(mc_device *d, const mc_pipeline_source_desc *desc, mc_pipeline **out,
                                                char **log);

/* ------------------------------------------------------------------------ */
/* Asynchronous creation (F159): start many, wait for any                    */
/* ------------------------------------------------------------------------ */
typedef struct mc_pipeline_future mc_pipeline_future;

/* Starts mc_pipeline_create_from_source on one of the device's background
 * threads (a memory hit completes at once). desc and its strings are copied
 * before returning. *out is released with mc_pipeline_future_release, which
 * may come before the work has finished. The future keeps the device open. */
MC_API mc_status mc_pipeline_create_async(mc_device *d, const mc_pipeline_source_desc *desc, mc_pipeline_future **out);
/* Waits up to timeout_ns (MC_WAIT_FOREVER: for ever; 0: just looks).
 * MC_ERR_WAIT_TIMEOUT while the work runs; otherwise the status of the
 * creation, with *out (may be NULL) a new reference to the pipeline on
 * MC_OK, and *log (may be NULL) the compiler's output on failure (mc_free).
 * May be called again: every MC_OK hands out another reference. */
MC_API mc_status mc_pipeline_future_wait(mc_pipeline_future *f, uint64_t timeout_ns, mc_pipeline **out, char **log);
/* Waits until at least one of futures[0..n) has finished (succeeded or
 * failed) and sets *index to the lowest such index; MC_ERR_WAIT_TIMEOUT if
 * none has by the timeout. A finished future stays finished: take it out of
 * the array before waiting again. The futures may belong to different
 * devices. */
MC_API mc_status mc_pipeline_future_wait_any(mc_pipeline_future *const *futures, size_t n, uint64_t timeout_ns,
                                             size_t *index);
/* True once the creation has finished (either way). false for NULL. */
MC_API bool mc_pipeline_future_done(const mc_pipeline_future *f);
/* A future is not reference counted (mc/mc.h): this destroys it (pipelines
 * it handed out stay valid); there is no retain. NULL is a no-op. */
MC_API void mc_pipeline_future_release(mc_pipeline_future *f);

/* ------------------------------------------------------------------------ */
/* Modes, size cap, statistics                                               */
/* ------------------------------------------------------------------------ */
typedef enum mc_cache_mode {
    MC_CACHE_DEFAULT = 0, /* $MC_CACHE (off|ro|rw|require), else RW */
    MC_CACHE_OFF = 1,     /* no cache: every request compiles */
    MC_CACHE_RO = 2,      /* memory, and read the disk; never write it */
    MC_CACHE_RW = 3,      /* memory and disk (the default) */
    MC_CACHE_REQUIRE = 4  /* memory and disk read-only; a miss is MC_ERR_CACHE_MISS, never a compile (F700) */
} mc_cache_mode;

MC_API const char *mc_cache_mode_name(mc_cache_mode m); /* "off", "ro", "rw", "require" */
/* Sets the device's mode; MC_CACHE_DEFAULT goes back to $MC_CACHE. Applies
 * to requests that start after the call. */
MC_API mc_status mc_cache_set_mode(mc_device *d, mc_cache_mode mode);
MC_API mc_cache_mode mc_cache_get_mode(mc_device *d); /* never DEFAULT; OFF for an invalid handle */

/* Cap on the bytes of the whole cache folder (every device identity). After
 * each write the least recently used entries go until the total fits.
 * 0 = $MC_CACHE_MAX_BYTES (a number, optionally with k, m or g), else
 * MC_CACHE_DEFAULT_MAX_BYTES. */
#define MC_CACHE_DEFAULT_MAX_BYTES (256ull << 20)
MC_API mc_status mc_cache_set_max_bytes(mc_device *d, uint64_t max_bytes);

typedef struct mc_cache_stats {
    uint64_t hits_memory;    /* requests served from memory (or by waiting for a concurrent build) */
    uint64_t hits_disk;      /* requests served from the on-disk archive */
    uint64_t misses;         /* requests that found nothing usable */
    uint64_t compiles;       /* compilations run (a failed one counts too) */
    uint64_t compile_ns;     /* time spent compiling */
    uint64_t load_ns;        /* time spent loading entries from disk */
    uint64_t writes;         /* entries written to disk */
    uint64_t rejected;       /* on-disk entries refused (see docs/CACHE.md) */
    uint64_t evictions;      /* entries removed to stay under the cap */
    uint64_t memory_entries; /* keys held in memory now */
    uint64_t disk_entries;   /* entries in this device's folder now */
    uint64_t disk_bytes;     /* their bytes */
    uint64_t max_bytes;      /* the cap in force */
    bool disk_enabled;       /* false: memory only (see the log for why) */
} mc_cache_stats;

/* The device's counters since it was opened, and what its folder holds. */
MC_API mc_status mc_cache_get_stats(mc_device *d, mc_cache_stats *out);
/* Forgets every pipeline of this device in memory (pipelines the program
 * holds stay valid) and removes this device's entries from disk. */
MC_API mc_status mc_cache_clear(mc_device *d);
/* The cache folder: with d == NULL the root, else that device's folder
 * (which may not exist yet). MC_ERR_INVALID_ARGUMENT if it does not fit. */
MC_API mc_status mc_cache_get_dir(const mc_device *d, char *out, size_t cap);

#ifdef __cplusplus
}
#endif

#endif
