/*
 * DOC: The pipeline cache's parts and what they share
 *
 * One cache per device, made on first use (docs/CACHE.md):
 *   cache.c         the cache object, its modes from the environment, the
 *                   libraries it holds, the public mc_cache_* calls
 *   cache_table.c   the memory table: key material, one build per key,
 *                   compiling and archiving (the one path every request takes)
 *   cache_disk.c    the disk store: the device's folder, reading, writing and
 *                   evicting entries, the statistics file
 *   cache_async.c   asynchronous creation: futures and the thread pool
 *   cache_format.c  the files themselves, with no device (cache_format.h)
 *
 * The cache extends pipeline creation, so unlike the rest of the runtime
 * it works with the engine's pipeline and library objects and the backend
 * table (engine.h).
 */
#ifndef MC_RUNTIME_CACHE_H
#define MC_RUNTIME_CACHE_H

#include "engine/engine.h" /* the cache extends pipeline creation: see above */
#include "runtime/cache_format.h"
#include "runtime/runtime.h"

#include <limits.h>
#include <stdatomic.h>

enum { MC__ENTRY_BUILDING, MC__ENTRY_READY, MC__ENTRY_FAILED };
enum { MC__DISK_UNTRIED, MC__DISK_READY, MC__DISK_OFF };
enum { MC__WRITE_UNKNOWN, MC__WRITE_YES, MC__WRITE_NO };

/* One key in the memory table. */
typedef struct mc__centry mc__centry;
struct mc__centry {
    mc__centry *next; /* hash chain */
    uint64_t hash;
    uint8_t *material;
    size_t material_len;
    int refs; /* the table's and each waiter's; under c->lock */
    bool in_table;
    int state;        /* MC__ENTRY_* */
    mc_library *lib;  /* READY: the shared library (no device reference) */
    mc_status status; /* FAILED */
    char *msg;
    char *log;
};

typedef struct mc__cache_pool mc__cache_pool;

struct mc__cache {
    mc_device *d;
    pthread_mutex_t lock; /* the table and the entries */
    pthread_cond_t built; /* an entry left BUILDING */
    mc__centry **table;
    size_t nbuckets, count;
    _Atomic int mode; /* mc_cache_mode, never DEFAULT */
    _Atomic uint64_t max_bytes;

    /* disk: set up once (disk_lock), then read-only until destroy */
    pthread_mutex_t disk_lock;
    _Atomic int disk;     /* MC__DISK_* */
    _Atomic int writable; /* MC__WRITE_* */
    bool hash_tried;
    mc__hash *hash;
    int root_fd, dir_fd;
    char root[PATH_MAX];
    char folder[MC_NAME_MAX + 16];
    _Atomic uint64_t tmp_counter;

    struct {
        _Atomic uint64_t hits_memory, hits_disk, misses, compiles, compile_ns, load_ns, writes, rejected, evictions;
    } n;
    mc__cache_totals saved; /* of n, what is in the stats file already (save_totals, under save_lock) */
    pthread_mutex_t save_lock;

    pthread_mutex_t pool_lock; /* starting the pool */
    mc__cache_pool *pool;
};

/* One request, with the strings it points to owned by the caller. */
typedef struct mc__cache_req {
    mc_language lang;
    const char *source;
    size_t source_len;
    const char *options; /* never NULL */
    const char *function;
    uint32_t max_threads;
    bool simd;
    const char *label; /* may be NULL */
} mc__cache_req;

static inline void mc__cache_count(_Atomic uint64_t *c, uint64_t v)
{
    atomic_fetch_add_explicit(c, v, memory_order_relaxed);
}

/* cache.c */
/* The device's cache, made on first use; NULL only when out of memory. */
struct mc__cache *mc__cache_get(mc_device *d);
/* Checks desc and fills r (pointing into desc); who names the caller. */
mc_status mc__cache_make_req(mc_device *d, const mc_pipeline_source_desc *desc, mc__cache_req *r, const char *who);
/* The cache's libraries hold no device reference while it holds them (the
 * DOC block of cache.c): wrap makes one; drop lets one go while the device
 * is open; final destroys one as the device closes; unref_temporary ends a
 * reference taken under the cache lock. */
mc_library *mc__cache_lib_wrap(mc_device *d, void *hl, mc_language lang, const char *label);
void mc__cache_lib_drop(mc_device *d, mc_library *l);
void mc__cache_lib_final(mc_device *d, mc_library *l);
void mc__cache_lib_unref_temporary(mc_library *l);

/* cache_table.c */
/* The one path every request takes, on the caller's thread or a pool
 * thread. *log receives the compiler's output on failure. */
mc_status mc__cache_request(struct mc__cache *c, const mc__cache_req *r, mc_pipeline **out, char **log);
/* A memory hit without waiting (false: none, build it); *st is the
 * outcome of making the pipeline from the hit. */
bool mc__cache_try_memory_hit(struct mc__cache *c, const mc__cache_req *r, mc_pipeline **out, mc_status *st);
/* Takes every ready library out of the table (building ones finish as
 * usual) into a malloc'd array; NULL when out of memory. */
mc_library **mc__cache_table_take_ready(struct mc__cache *c, size_t *n);
/* At destroy: frees the table and the libraries it holds. */
void mc__cache_table_free(struct mc__cache *c);

/* cache_disk.c */
typedef enum { MC__LOOK_MISS, MC__LOOK_HIT, MC__LOOK_REJECTED, MC__LOOK_REQUIRE_MISS } mc__cache_look;
/* MC__DISK_*: the device's folder, set up on first use. */
int mc__cache_disk_state(struct mc__cache *c);
/* Whether new entries can be written (warns once when not). */
bool mc__cache_disk_writable(struct mc__cache *c);
/* Looks key up on disk; on a hit *hl, *hp and *info come from the
 * backend's import. */
mc__cache_look mc__cache_disk_lookup(struct mc__cache *c, const mc__cache_req *r, const uint8_t *material,
                                     size_t material_len, const uint8_t key[32], void **hl, void **hp,
                                     mc_pipeline_info *info);
/* Writes an entry (temporary file, fsync, rename), then evicts. */
void mc__cache_disk_write(struct mc__cache *c, const uint8_t key[32], const uint8_t *material, size_t material_len,
                          const void *payload, size_t payload_len);
/* The device folder's entries and their bytes. */
uint64_t mc__cache_disk_usage(struct mc__cache *c, uint64_t *entries);
/* Removes the device folder's entries and temporary files. */
mc_status mc__cache_disk_clear(struct mc__cache *c);
/* Adds what was counted since the last save to the folder's stats file. */
void mc__cache_save_totals(struct mc__cache *c);
/* At destroy: saves the totals, closes the folders. */
void mc__cache_disk_close(struct mc__cache *c);

/* cache_async.c */
/* At destroy: stops the pool and joins its threads (or leaves a pool
 * thread that destroys its own device to finish alone). */
void mc__cache_pool_stop(mc__cache_pool *p);

#endif
