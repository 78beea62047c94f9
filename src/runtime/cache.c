/*
 * DOC: The pipeline cache and the on-disk binary archive
 *
 * Pipelines made from source are content-addressed (F171, F172): the key
 * material is a canonical, length-prefixed serialisation of everything that
 * decides the compiled code (see build_material); on disk an entry is named
 * by the SHA-256 of that material. docs/CACHE.md is the reference for the
 * file format, the refusal rules and the modes.
 *
 * Memory: a hash table per device maps the full key material (compared
 * byte for byte, so it needs no cryptographic hash) to one compiled library.
 * The first request for a key builds it while later ones wait for the same
 * result or error; each request gets its own mc_pipeline made from the
 * shared library.
 *
 * Why the cache holds libraries, not pipelines: the device owns the cache,
 * and every engine object holds a reference to its device. A pipeline (or
 * library) held by the cache would keep the device open for ever. So the
 * cache's libraries hold no device reference while the cache holds them;
 * the pipelines made from them do, so the device cannot close while any of
 * them lives. When the cache lets a library go before the device closes it
 * hands the library a device reference first (cache_lib_drop); when the
 * device closes, no pipeline can be left and the cache destroys its
 * libraries directly (cache_lib_final).
 *
 * Disk (F697, F701, F707): what the backend loads fastest (pipeline_export
 * / pipeline_import), behind a header with a magic number, the format
 * version, the key, the lengths and the payload's SHA-256. Entries are
 * written to a temporary file in the same folder, flushed and renamed into
 * place, so a reader sees a whole entry or none, and two processes building
 * one entry both succeed. Nothing read from disk is trusted until every
 * check has passed. A miss in require mode is an error, never a compile
 * (failOnBinaryArchiveMiss, F700).
 *
 * The hash comes from a well-kept library loaded at run time (libcrypto;
 * CommonCrypto on macOS), so the runtime itself needs only libc, pthreads
 * and the loader. Without one the disk cache is off and memory still works.
 *
 * Asynchronous creation (F159): a small pool of threads per device, started
 * on first use, runs requests; futures are waited on one at a time or any
 * of many.
 */
#include "runtime/runtime.h"
#include "engine/trace.h"

#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#ifdef __APPLE__
#include <CommonCrypto/CommonDigest.h>
#endif

#define MAX_ENTRY_BYTES (1ull << 31)   /* larger files are refused unread */
#define MAX_POOL_THREADS 8u
#define STALE_TMP_NS (3600ull * 1000000000ull) /* leftovers of crashed writers */
#define TMP_PREFIX ".tmp-"
#define LRU_PRECISION_NS (60ull * 1000000000ull)

/* ======================================================================== */
/* SHA-256 from a library loaded at run time                                 */
/* ======================================================================== */

typedef int (*evp_digest_fn)(const void *data, size_t count, unsigned char *md, unsigned int *size,
                             const void *type, void *engine);
typedef const void *(*evp_md_fn)(void);

struct mc__hash {
    void *lib;
    evp_digest_fn digest; /* EVP_Digest */
    evp_md_fn sha256;     /* EVP_sha256 */
};

static _Atomic int test_no_hash;

void mc__cache_test_no_hash(bool on)
{
    atomic_store(&test_no_hash, on ? 1 : 0);
}

bool mc__hash_sha256(const mc__hash *h, const void *data, size_t len, uint8_t out[32])
{
    if (!h) return false;
    if (!data) data = "";
#ifdef __APPLE__
    CC_SHA256_CTX ctx;
    CC_SHA256_Init(&ctx);
    const uint8_t *p = data;
    while (len) {
        CC_LONG n = len > (1u << 30) ? (1u << 30) : (CC_LONG)len; /* CC_LONG is 32 bits */
        CC_SHA256_Update(&ctx, p, n);
        p += n;
        len -= n;
    }
    CC_SHA256_Final(out, &ctx);
    return true;
#else
    unsigned int n = 0;
    return h->digest(data, len, out, &n, h->sha256(), NULL) == 1 && n == 32;
#endif
}

mc__hash *mc__hash_open(char *why, size_t why_cap)
{
    if (why && why_cap) why[0] = '\0';
    if (atomic_load(&test_no_hash)) {
        if (why) snprintf(why, why_cap, "disabled for a test");
        return NULL;
    }
    mc__hash *h = mc__calloc(1, sizeof *h);
    if (!h) {
        if (why) snprintf(why, why_cap, "out of host memory");
        return NULL;
    }
#ifndef __APPLE__
    /* OpenSSL 3, then whatever libcrypto the system links by default (1.1
     * has the same two calls). RTLD_NODELETE: libcrypto registers exit
     * handlers and must never be unloaded. */
    static const char *const names[] = {"libcrypto.so.3", "libcrypto.so"};
    for (size_t i = 0; i < MC__ARRAY_LEN(names) && !h->lib; i++) {
        h->lib = dlopen(names[i], RTLD_NOW | RTLD_LOCAL | RTLD_NODELETE);
        if (!h->lib) continue;
        void *d = dlsym(h->lib, "EVP_Digest"), *s = dlsym(h->lib, "EVP_sha256");
        void *init = dlsym(h->lib, "OPENSSL_init_crypto");
        if (d && s) {
            memcpy(&h->digest, &d, sizeof d); /* POSIX: data and code pointers convert */
            memcpy(&h->sha256, &s, sizeof s);
            /* No exit-time cleanup (OPENSSL_INIT_NO_ATEXIT, 1.1.1b and
             * later): a pool thread still building when the program exits
             * would hash with a torn-down library. Where the program set
             * OpenSSL up first, this changes nothing. */
            if (init) {
                int (*init_fn)(uint64_t, const void *);
                memcpy(&init_fn, &init, sizeof init);
                init_fn(0x00080000ull, NULL);
            }
        } else {
            dlclose(h->lib);
            h->lib = NULL;
        }
    }
    if (!h->lib) {
        if (why) snprintf(why, why_cap, "libcrypto.so.3 / libcrypto.so not found or without EVP_Digest");
        free(h);
        return NULL;
    }
#endif
    /* Known answer (FIPS 180-2, "abc"): a library that answers wrongly is
     * worse than none. */
    static const uint8_t abc[32] = {0xba, 0x78, 0x16, 0xbf, 0x8f, 0x01, 0xcf, 0xea, 0x41, 0x41, 0x40,
                                    0xde, 0x5d, 0xae, 0x22, 0x23, 0xb0, 0x03, 0x61, 0xa3, 0x96, 0x17,
                                    0x7a, 0x9c, 0xb4, 0x10, 0xff, 0x61, 0xf2, 0x00, 0x15, 0xad};
    uint8_t got[32];
    if (!mc__hash_sha256(h, "abc", 3, got) || memcmp(got, abc, 32) != 0) {
        if (why) snprintf(why, why_cap, "the SHA-256 library fails its known-answer test");
        mc__hash_close(h);
        return NULL;
    }
    return h;
}

void mc__hash_close(mc__hash *h)
{
    if (!h) return;
    if (h->lib) dlclose(h->lib);
    free(h);
}

/* ======================================================================== */
/* Bytes: little-endian fields, a growable buffer                            */
/* ======================================================================== */

static void put_le(uint8_t *p, uint64_t v, int n)
{
    for (int i = 0; i < n; i++) p[i] = (uint8_t)(v >> (8 * i));
}

static uint64_t get_le(const uint8_t *p, int n)
{
    uint64_t v = 0;
    for (int i = 0; i < n; i++) v |= (uint64_t)p[i] << (8 * i);
    return v;
}

typedef struct bytes {
    uint8_t *p;
    size_t n, cap;
    bool oom;
} bytes;

static void bytes_add(bytes *b, const void *data, size_t len)
{
    if (b->oom) return;
    if (len > SIZE_MAX / 2 - b->n) {
        b->oom = true;
        return;
    }
    if (b->n + len > b->cap) {
        size_t cap = MC__MAX(b->cap * 2, b->n + len + 256);
        uint8_t *p = mc__realloc(b->p, cap);
        if (!p) {
            b->oom = true;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    if (len) memcpy(b->p + b->n, data, len);
    b->n += len;
}

static void bytes_u32(bytes *b, uint32_t v)
{
    uint8_t t[4];
    put_le(t, v, 4);
    bytes_add(b, t, 4);
}

static void bytes_field(bytes *b, const void *data, size_t len)
{
    uint8_t t[8];
    put_le(t, len, 8);
    bytes_add(b, t, 8);
    bytes_add(b, data, len);
}

static void bytes_str(bytes *b, const char *s)
{
    bytes_field(b, s, strlen(s));
}

static uint64_t fnv1a(const uint8_t *p, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 0x100000001b3ull;
    return h;
}

/* ======================================================================== */
/* Entry names, folder names, the root                                       */
/* ======================================================================== */

void mc__cache_key_name(const uint8_t key[MC__CACHE_KEY_SIZE], char *out)
{
    static const char hex[] = "0123456789abcdef";
    for (unsigned i = 0; i < MC__CACHE_KEY_SIZE; i++) {
        out[2 * i] = hex[key[i] >> 4];
        out[2 * i + 1] = hex[key[i] & 15];
    }
    out[MC__CACHE_NAME_LEN] = '\0';
}

static int hex_value(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1; /* upper case is not an entry name: names are canonical */
}

bool mc__cache_name_key(const char *name, uint8_t key[MC__CACHE_KEY_SIZE])
{
    for (unsigned i = 0; i < MC__CACHE_NAME_LEN; i++)
        if (hex_value(name[i]) < 0) return false;
    if (name[MC__CACHE_NAME_LEN] != '\0') return false;
    for (unsigned i = 0; i < MC__CACHE_KEY_SIZE; i++)
        key[i] = (uint8_t)(hex_value(name[2 * i]) << 4 | hex_value(name[2 * i + 1]));
    return true;
}

void mc__cache_folder_name(const char *backend, const char *identity, char *out, size_t cap)
{
    if (!cap) return;
    int n = snprintf(out, cap, "%s-%s", backend, identity);
    size_t len = n < 0 ? 0 : MC__MIN((size_t)n, cap - 1);
    out[len] = '\0';
    for (size_t i = 0; i < len; i++) {
        char ch = out[i];
        bool ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') || ch == '.' ||
                  ch == '_' || ch == '-';
        if (!ok || (i == 0 && ch == '.')) out[i] = '_';
    }
}

mc_status mc__cache_root(char *out, size_t cap)
{
    const char *dir = mc__env_str("MC_CACHE_DIR", NULL);
    int n;
    if (dir) {
        n = snprintf(out, cap, "%s", dir);
    } else {
        /* XDG: a relative XDG_CACHE_HOME is invalid and ignored */
        const char *xdg = mc__env_str("XDG_CACHE_HOME", NULL);
        const char *home = mc__env_str("HOME", NULL);
        if (xdg && xdg[0] == '/') n = snprintf(out, cap, "%s/metal-compute", xdg);
        else if (home) n = snprintf(out, cap, "%s/.cache/metal-compute", home);
        else return mc__fail(MC_ERR_NOT_FOUND, "no cache folder: set MC_CACHE_DIR, XDG_CACHE_HOME or HOME");
    }
    if (n < 0 || (size_t)n >= cap) return mc__fail(MC_ERR_INVALID_ARGUMENT, "the cache folder's path is too long");
    while (n > 1 && out[n - 1] == '/') out[--n] = '\0';
    return MC_OK;
}

/* ======================================================================== */
/* Parsing an entry and its key material (also the fuzzer's entry point)     */
/* ======================================================================== */

/* Header, little-endian (docs/CACHE.md):
 *    0  8  magic "MCPCACHE"
 *    8  4  format version
 *   12  4  header size (96)
 *   16 32  key: SHA-256 of the key material
 *   48  8  key material length
 *   56  8  payload length
 *   64 32  SHA-256 of the payload
 *   96     key material, then payload; nothing after */
const char *mc__cache_parse_entry(const uint8_t *data, size_t len, const mc__hash *h, const uint8_t *want_key,
                                  mc__cache_entry *out)
{
    mc__cache_entry e;
    memset(&e, 0, sizeof e);
    if (out) memset(out, 0, sizeof *out);
    if (!data || len < MC__CACHE_HEADER_SIZE) return "truncated: shorter than the header";
    if (memcmp(data, MC__CACHE_MAGIC, 8) != 0) return "not a pipeline cache entry (bad magic number)";
    e.version = (uint32_t)get_le(data + 8, 4);
    if (e.version != MC__CACHE_FORMAT_VERSION) return "written in another format version";
    if (get_le(data + 12, 4) != MC__CACHE_HEADER_SIZE) return "bad header size";
    memcpy(e.key, data + 16, MC__CACHE_KEY_SIZE);
    e.material_len = get_le(data + 48, 8);
    e.payload_len = get_le(data + 56, 8);
    memcpy(e.payload_sum, data + 64, 32);
    uint64_t body = (uint64_t)len - MC__CACHE_HEADER_SIZE;
    if (e.material_len > body || e.payload_len > body - e.material_len) return "truncated: shorter than its lengths";
    if (e.material_len + e.payload_len != body) return "trailing bytes after the payload";
    if (e.material_len == 0) return "no key material";
    e.material = data + MC__CACHE_HEADER_SIZE;
    e.payload = e.material + e.material_len;
    if (want_key && memcmp(want_key, e.key, MC__CACHE_KEY_SIZE) != 0) return "its key does not match its file name";
    if (h) {
        uint8_t sum[32];
        if (!mc__hash_sha256(h, e.material, (size_t)e.material_len, sum)) return "cannot hash the key material";
        if (memcmp(sum, e.key, 32) != 0) return "the key material does not hash to the key (corrupt)";
        if (!mc__hash_sha256(h, e.payload, (size_t)e.payload_len, sum)) return "cannot hash the payload";
        if (memcmp(sum, e.payload_sum, 32) != 0) return "payload checksum mismatch (corrupt)";
    }
    if (out) *out = e;
    return NULL;
}

static const char *take_field(const uint8_t **p, size_t *left, mc__cache_str *out)
{
    if (*left < 8) return "key material truncated";
    uint64_t n = get_le(*p, 8);
    if (n > *left - 8) return "key material field longer than the material";
    out->p = (const char *)*p + 8;
    out->len = (size_t)n;
    *p += 8 + n;
    *left -= 8 + (size_t)n;
    return NULL;
}

static const char *take_u32(const uint8_t **p, size_t *left, uint32_t *out)
{
    if (*left < 4) return "key material truncated";
    *out = (uint32_t)get_le(*p, 4);
    *p += 4;
    *left -= 4;
    return NULL;
}

const char *mc__cache_parse_material(const uint8_t *m, size_t len, mc__cache_material *out)
{
    mc__cache_material r;
    memset(&r, 0, sizeof r);
    if (out) memset(out, 0, sizeof *out);
    if (!m) return "no key material";
    const uint8_t *p = m;
    size_t left = len;
    const char *why;
    if ((why = take_u32(&p, &left, &r.version))) return why;
    if (r.version != MC__CACHE_FORMAT_VERSION) return "key material of another format version";
    if ((why = take_field(&p, &left, &r.runtime)) || (why = take_field(&p, &left, &r.backend)) ||
        (why = take_field(&p, &left, &r.identity)) ||
        (why = take_field(&p, &left, &r.compiler)) || (why = take_u32(&p, &left, &r.language)) ||
        (why = take_field(&p, &left, &r.source)) || (why = take_field(&p, &left, &r.options)) ||
        (why = take_field(&p, &left, &r.function)) ||
        (why = take_u32(&p, &left, &r.max_total_threads_per_threadgroup)) ||
        (why = take_u32(&p, &left, &r.simd_multiple)))
        return why;
    if (left) return "trailing bytes after the key material";
    if (out) *out = r;
    return NULL;
}

/* ======================================================================== */
/* The cache                                                                 */
/* ======================================================================== */

enum { ENTRY_BUILDING, ENTRY_READY, ENTRY_FAILED };
enum { DISK_UNTRIED, DISK_READY, DISK_OFF };
enum { WRITE_UNKNOWN, WRITE_YES, WRITE_NO };

typedef struct centry centry;
struct centry {
    centry *next; /* hash chain */
    uint64_t hash;
    uint8_t *material;
    size_t material_len;
    int refs;      /* the table's and each waiter's; under c->lock */
    bool in_table;
    int state;     /* ENTRY_* */
    mc_library *lib; /* READY: the shared library (no device reference) */
    mc_status status; /* FAILED */
    char *msg;
    char *log;
};

typedef struct pool pool;

struct mc__cache {
    mc_device *d;
    pthread_mutex_t lock; /* the table and the entries */
    pthread_cond_t built; /* an entry left BUILDING */
    centry **table;
    size_t nbuckets, count;
    _Atomic int mode;     /* mc_cache_mode, never DEFAULT */
    _Atomic uint64_t max_bytes;

    /* disk: set up once (disk_lock), then read-only until destroy */
    pthread_mutex_t disk_lock;
    _Atomic int disk;     /* DISK_* */
    _Atomic int writable; /* WRITE_* */
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
    pool *pool;
};

/* One request, with the strings it points to owned by the caller. */
typedef struct req {
    mc_language lang;
    const char *source;
    size_t source_len;
    const char *options;  /* never NULL */
    const char *function;
    uint32_t max_threads;
    bool simd;
    const char *label;    /* may be NULL */
} req;

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
        mc__log(MC_LOG_WARN, "cache.bad_max_bytes", "MC_CACHE_MAX_BYTES=%s is not a size such as 268435456 or 256m; "
                "using %llu", v, (unsigned long long)MC_CACHE_DEFAULT_MAX_BYTES);
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
    atomic_init(&c->disk, DISK_UNTRIED);
    atomic_init(&c->writable, WRITE_UNKNOWN);
    c->root_fd = c->dir_fd = -1;
    return c;
}

/* The device's cache, made on first use; NULL only when out of memory.
 * The environment is read outside the device lock (it may log). */
static struct mc__cache *cache_get(mc_device *d)
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

static mc_library *cache_lib_wrap(mc_device *d, void *hl, mc_language lang, const char *label)
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
static void cache_lib_drop(mc_device *d, mc_library *l)
{
    mc__object_retain(&d->base);
    mc__object_release(&l->base);
}

/* Ends a temporary reference taken under the cache lock. While the cache
 * holds the library this cannot be the last one; once a clear dropped it,
 * the library has its own device reference (cache_lib_drop). Either way a
 * plain release is right. */
static void lib_unref_temporary(mc_library *l)
{
    mc__object_release(&l->base);
}

/* At device destroy: no pipeline is left (each held the device). */
static void cache_lib_final(mc_device *d, mc_library *l)
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

/* ---- counters ---------------------------------------------------------- */

static void count(_Atomic uint64_t *c, uint64_t v)
{
    atomic_fetch_add_explicit(c, v, memory_order_relaxed);
}

static uint64_t now_ns(void)
{
    return mc__now_ns();
}

/* ======================================================================== */
/* Disk: setting up the folders                                              */
/* ======================================================================== */

/* Creates every missing folder of path, 0700. */
static int mkdir_parents(const char *path)
{
    char buf[PATH_MAX];
    size_t n = strlen(path);
    if (n == 0 || n >= sizeof buf) {
        errno = ENAMETOOLONG;
        return -1;
    }
    memcpy(buf, path, n + 1);
    for (size_t i = 1; i <= n; i++) {
        if (buf[i] != '/' && buf[i] != '\0') continue;
        char saved = buf[i];
        buf[i] = '\0';
        if (mkdir(buf, 0700) != 0 && errno != EEXIST) return -1;
        buf[i] = saved;
    }
    return 0;
}

#define untrusted_dir mc__cache_untrusted_dir

/* A folder we may trust: a directory, ours, not writable by others. */
const char *mc__cache_untrusted_dir(const struct stat *st, char *why, size_t cap)
{
    if (!S_ISDIR(st->st_mode)) return "not a directory";
    if (st->st_uid != geteuid()) {
        snprintf(why, cap, "owned by uid %u, not by the current user (uid %u)", (unsigned)st->st_uid,
                 (unsigned)geteuid());
        return why;
    }
    if (st->st_mode & (S_IWGRP | S_IWOTH)) return "writable by group or others";
    return NULL;
}

static bool read_all(int fd, uint8_t *buf, size_t len);
static bool write_all(int fd, const void *data, size_t len);

/* The Cache Directory Tagging signature: the tag file's first line. */
#define TAG_SIGNATURE "Signature: 8a477f597d28d172789f06886806bc55"

/* Marks the root as the cache's (once): `metal-compute cache` then knows
 * it from a folder of the user's, and backup tools skip it. Written beside
 * and renamed, so a reader never sees half a tag. Best effort: a cache
 * without its tag is still recognised by its device folders. */
static void write_tag(int root_fd)
{
    if (faccessat(root_fd, MC__CACHE_TAG_FILE, F_OK, AT_SYMLINK_NOFOLLOW) == 0) return;
    char tmp[64];
    snprintf(tmp, sizeof tmp, TMP_PREFIX "%ld-0-tag", (long)getpid());
    int fd = openat(root_fd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0) return;
    static const char text[] = TAG_SIGNATURE "\n"
                               "# This file is a cache directory tag created by metal-compute (its pipeline cache).\n"
                               "# For information about cache directory tags see https://bford.info/cachedir/\n";
    bool ok = write_all(fd, text, sizeof text - 1) && fsync(fd) == 0;
    close(fd);
    if (!ok || renameat(root_fd, tmp, root_fd, MC__CACHE_TAG_FILE) != 0) unlinkat(root_fd, tmp, 0);
}

bool mc__cache_is_device_folder_name(const char *name)
{
    static const char *const backends[] = {"cpu-", "cuda-", "metal-"};
    for (size_t i = 0; i < MC__ARRAY_LEN(backends); i++) {
        size_t n = strlen(backends[i]);
        if (strncmp(name, backends[i], n) != 0 || !name[n]) continue;
        for (const char *p = name + n; *p; p++) /* mc__cache_folder_name's alphabet */
            if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') || *p == '.' ||
                  *p == '_' || *p == '-'))
                return false;
        return true;
    }
    return false;
}

bool mc__cache_is_tmp_name(const char *name)
{
    /* tmp_name()'s form; write_tag's ends in "-tag" */
    size_t n = strlen(TMP_PREFIX);
    if (strncmp(name, TMP_PREFIX, n) != 0) return false;
    const char *p = name + n;
    for (int field = 0; field < 3; field++) {
        const char *start = p;
        if (field == 2 && !strcmp(p, "tag")) return true;
        while ((*p >= '0' && *p <= '9') || (field == 2 && ((*p >= 'a' && *p <= 'f')))) p++;
        if (p == start) return false;
        if (field < 2 && *p++ != '-') return false;
    }
    return *p == '\0';
}

static bool tagged(int root_fd)
{
    int fd = openat(root_fd, MC__CACHE_TAG_FILE, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) return false;
    struct stat st;
    char text[sizeof TAG_SIGNATURE];
    bool ok = fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_uid == geteuid() &&
              read_all(fd, (uint8_t *)text, sizeof text - 1) && !memcmp(text, TAG_SIGNATURE, sizeof text - 1);
    close(fd);
    return ok;
}

mc_status mc__cache_open_root(const char *root, int *out)
{
    *out = -1;
    int fd = open(root, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ENOENT) return mc__fail(MC_ERR_NOT_FOUND, "the pipeline cache folder %s does not exist", root);
        return mc__fail(errno == ENOTDIR ? MC_ERR_INVALID_ARGUMENT : MC_ERR_IO, "cannot open the cache folder %s: %s",
                        root, strerror(errno));
    }
    struct stat st;
    char why[160];
    const char *bad = fstat(fd, &st) != 0 ? strerror(errno) : untrusted_dir(&st, why, sizeof why);
    if (bad) {
        close(fd);
        return mc__fail(MC_ERR_INVALID_ARGUMENT, "the cache folder %s is not one the cache trusts: %s", root, bad);
    }
    bool known = tagged(fd);
    if (!known) {
        /* A cache written before the tag: known by its device folders. */
        int dup_fd = openat(fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        DIR *dir = dup_fd >= 0 ? fdopendir(dup_fd) : NULL;
        if (!dir && dup_fd >= 0) close(dup_fd);
        struct dirent *de;
        while (dir && !known && (de = readdir(dir)) != NULL) {
            struct stat ds;
            known = mc__cache_is_device_folder_name(de->d_name) &&
                    fstatat(fd, de->d_name, &ds, AT_SYMLINK_NOFOLLOW) == 0 &&
                    !untrusted_dir(&ds, why, sizeof why);
        }
        if (dir) closedir(dir);
    }
    if (!known) {
        close(fd);
        return mc__fail(MC_ERR_INVALID_ARGUMENT,
                        "%s is not a metal-compute pipeline cache (no %s written by the cache, no device folder such "
                        "as cpu-...): refusing to touch it; check MC_CACHE_DIR",
                        root, MC__CACHE_TAG_FILE);
    }
    *out = fd;
    return MC_OK;
}

/* Runs once (under disk_lock); returns the new state and at most one
 * warning for the caller to log after unlocking. */
static int disk_setup(struct mc__cache *c, char *warn, size_t wcap, const char **warn_id)
{
    mc_device *d = c->d;
    const mc__hal *hal = d->hal;
    if (!hal->compiler_identity || !hal->pipeline_export || !hal->pipeline_import) {
        mc__log(MC_LOG_DEBUG, "cache.no_archive", "the %s device cannot archive pipelines: memory cache only",
                hal->name);
        return DISK_OFF;
    }
    if (!c->hash_tried) {
        char why[160];
        c->hash_tried = true;
        c->hash = mc__hash_open(why, sizeof why);
        if (!c->hash) {
            *warn_id = "cache.no_hash";
            snprintf(warn, wcap, "no SHA-256 library could be loaded (%s): the on-disk pipeline cache is off, "
                     "pipelines are cached in memory only", why);
            return DISK_OFF;
        }
    }
    if (mc__cache_root(c->root, sizeof c->root) != MC_OK) {
        *warn_id = "cache.dir_unusable";
        snprintf(warn, wcap, "%s: pipelines are cached in memory only", mc_last_error());
        return DISK_OFF;
    }
    mc__cache_folder_name(hal->name, d->info.identity, c->folder, sizeof c->folder);
    bool create = atomic_load(&c->mode) == MC_CACHE_RW;
    char why[160];
    const char *bad = NULL;
    struct stat st;
    if (create && mkdir_parents(c->root) != 0) {
        bad = strerror(errno);
    } else if ((c->root_fd = open(c->root, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0) {
        if (!create && errno == ENOENT) return DISK_UNTRIED; /* nothing archived yet */
        bad = strerror(errno);
    } else if (fstat(c->root_fd, &st) != 0) {
        bad = strerror(errno);
    } else if ((bad = untrusted_dir(&st, why, sizeof why)) != NULL) {
    } else if (create && (write_tag(c->root_fd), mkdirat(c->root_fd, c->folder, 0700) != 0) && errno != EEXIST) {
        /* (the root is tagged first, then its device folder made) */
        bad = strerror(errno);
    } else if ((c->dir_fd = openat(c->root_fd, c->folder, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)) < 0) {
        if (!create && errno == ENOENT) {
            close(c->root_fd);
            c->root_fd = -1;
            return DISK_UNTRIED;
        }
        bad = strerror(errno);
    } else if (fstat(c->dir_fd, &st) != 0) {
        bad = strerror(errno);
    } else {
        bad = untrusted_dir(&st, why, sizeof why);
    }
    if (bad) {
        *warn_id = "cache.dir_unusable";
        snprintf(warn, wcap, "the pipeline cache folder %s/%s cannot be used (%s): pipelines are cached in memory "
                 "only", c->root, c->folder, bad);
        if (c->dir_fd >= 0) close(c->dir_fd);
        if (c->root_fd >= 0) close(c->root_fd);
        c->dir_fd = c->root_fd = -1;
        return DISK_OFF;
    }
    return DISK_READY;
}

static int disk_state(struct mc__cache *c)
{
    int s = atomic_load_explicit(&c->disk, memory_order_acquire);
    if (s != DISK_UNTRIED) return s;
    char warn[PATH_MAX + 512];
    const char *id = NULL;
    warn[0] = '\0';
    pthread_mutex_lock(&c->disk_lock);
    s = atomic_load_explicit(&c->disk, memory_order_acquire);
    if (s == DISK_UNTRIED) {
        s = disk_setup(c, warn, sizeof warn, &id);
        atomic_store_explicit(&c->disk, s, memory_order_release);
    }
    pthread_mutex_unlock(&c->disk_lock);
    if (warn[0]) mc__log(MC_LOG_WARN, id, "%s", warn);
    return s;
}

static void tmp_name(struct mc__cache *c, char *out, size_t cap)
{
    snprintf(out, cap, TMP_PREFIX "%ld-%llu-%llx", (long)getpid(),
             (unsigned long long)atomic_fetch_add(&c->tmp_counter, 1), (unsigned long long)now_ns());
}

/* Whether new entries can be written; the first time, proves it with a
 * scratch file and warns once when not (the fallback to memory). */
static bool disk_writable(struct mc__cache *c)
{
    int w = atomic_load(&c->writable);
    if (w != WRITE_UNKNOWN) return w == WRITE_YES;
    char warn[PATH_MAX + 256];
    warn[0] = '\0';
    pthread_mutex_lock(&c->disk_lock);
    w = atomic_load(&c->writable);
    if (w == WRITE_UNKNOWN) {
        char name[96];
        tmp_name(c, name, sizeof name);
        int fd = openat(c->dir_fd, name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
        if (fd >= 0) {
            close(fd);
            unlinkat(c->dir_fd, name, 0);
            w = WRITE_YES;
        } else {
            snprintf(warn, sizeof warn, "the pipeline cache folder %s/%s cannot be written (%s): new pipelines are "
                     "cached in memory only", c->root, c->folder, strerror(errno));
            w = WRITE_NO;
        }
        atomic_store(&c->writable, w);
    }
    pthread_mutex_unlock(&c->disk_lock);
    if (warn[0]) mc__log(MC_LOG_WARN, "cache.dir_unusable", "%s", warn);
    return w == WRITE_YES;
}

/* After setup a failed write also falls back to memory, with one warning. */
static void write_failed(struct mc__cache *c, const char *what, int err)
{
    int expect = WRITE_YES;
    if (atomic_compare_exchange_strong(&c->writable, &expect, WRITE_NO))
        mc__log(MC_LOG_WARN, "cache.dir_unusable", "cannot %s in the pipeline cache folder %s/%s (%s): new pipelines "
                "are cached in memory only", what, c->root, c->folder, strerror(err));
}

/* ======================================================================== */
/* Disk: reading an entry                                                    */
/* ======================================================================== */

static bool read_all(int fd, uint8_t *buf, size_t len)
{
    size_t got = 0;
    while (got < len) {
        ssize_t n = read(fd, buf + got, len - got);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return false;
        got += (size_t)n;
    }
    /* a file that grew after fstat is not the file we checked */
    uint8_t extra;
    ssize_t n;
    while ((n = read(fd, &extra, 1)) < 0 && errno == EINTR) {
    }
    return n == 0;
}

static bool write_all(int fd, const void *data, size_t len)
{
    const uint8_t *p = data;
    while (len) {
        ssize_t n = write(fd, p, len);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return false;
        p += n;
        len -= (size_t)n;
    }
    return true;
}

typedef enum { LOOK_MISS, LOOK_HIT, LOOK_REJECTED, LOOK_REQUIRE_MISS } look;

static uint64_t mtime_ns(const struct stat *st);

/* Refuses name: logs the reason once, removes the file when it is ours
 * (still the same file) and we may write, counts it. */
static void reject(struct mc__cache *c, const char *name, const struct stat *st, bool removable,
                   const char *reason)
{
    mc_cache_mode mode = (mc_cache_mode)atomic_load(&c->mode);
    bool removed = false;
    if (removable && mode == MC_CACHE_RW) {
        struct stat now;
        if (!st || (fstatat(c->dir_fd, name, &now, AT_SYMLINK_NOFOLLOW) == 0 && now.st_ino == st->st_ino &&
                    now.st_dev == st->st_dev))
            removed = unlinkat(c->dir_fd, name, 0) == 0;
    }
    count(&c->n.rejected, 1);
    mc__log(MC_LOG_WARN, "cache.entry_rejected", "pipeline cache entry %s/%s/%s refused: %s; %s", c->root, c->folder,
            name, reason,
            mode == MC_CACHE_REQUIRE ? "not compiling (require mode)"
            : removed                ? "removed, compiling it again"
                                     : "compiling it again");
}

/* Looks key up on disk. On a hit *hl, *hp and *info come from the
 * backend's import. */
static look disk_lookup(struct mc__cache *c, const req *r, const uint8_t *material, size_t material_len,
                        const uint8_t key[32], void **hl, void **hp, mc_pipeline_info *info)
{
    mc_device *d = c->d;
    char name[MC__CACHE_NAME_LEN + 1];
    mc__cache_key_name(key, name);
    mc_cache_mode mode = (mc_cache_mode)atomic_load(&c->mode);
    int fd = openat(c->dir_fd, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        if (e == ENOENT) return LOOK_MISS;
        char why[128];
        if (e == ELOOP) snprintf(why, sizeof why, "a symbolic link");
        else snprintf(why, sizeof why, "cannot be opened: %s", strerror(e));
        /* a link lives in our folder: removing it touches nothing else */
        reject(c, name, NULL, e == ELOOP, why);
        return LOOK_REJECTED;
    }
    struct stat st;
    char why[160];
    const char *bad = NULL;
    bool removable = true;
    uint8_t *data = NULL;
    if (fstat(fd, &st) != 0) {
        snprintf(why, sizeof why, "cannot be examined: %s", strerror(errno));
        bad = why;
        removable = false;
    } else if (!S_ISREG(st.st_mode)) {
        bad = "not a regular file";
        removable = false;
    } else if (st.st_uid != geteuid()) {
        snprintf(why, sizeof why, "owned by uid %u, not by the current user (uid %u)", (unsigned)st.st_uid,
                 (unsigned)geteuid());
        bad = why;
        removable = false; /* not ours to delete; a rebuild replaces it */
    } else if (st.st_mode & (S_IWGRP | S_IWOTH)) {
        bad = "writable by group or others";
    } else if ((uint64_t)st.st_size < MC__CACHE_HEADER_SIZE) {
        bad = "truncated: shorter than the header";
    } else if ((uint64_t)st.st_size > MAX_ENTRY_BYTES) {
        bad = "larger than any entry may be";
    } else if (!(data = mc__malloc((size_t)st.st_size))) {
        close(fd);
        return LOOK_MISS; /* out of memory: compile instead, keep the file */
    } else if (!read_all(fd, data, (size_t)st.st_size)) {
        bad = "changed size while being read";
    }
    mc__cache_entry e;
    if (!bad) bad = mc__cache_parse_entry(data, (size_t)st.st_size, c->hash, key, &e);
    if (!bad && (e.material_len != material_len || memcmp(e.material, material, material_len) != 0))
        bad = "its key material differs from the request's";
    if (bad) {
        free(data);
        reject(c, name, &st, removable, bad);
        close(fd);
        return LOOK_REJECTED;
    }
    mc__pipeline_src src = {r->lang, r->source, r->source_len, r->options, r->function, r->max_threads, r->simd,
                            r->label, NULL, 0}; /* no constants: such pipelines are not cached (device.c) */
    mc_status s = d->hal->pipeline_import(d->hd, &src, e.payload, (size_t)e.payload_len, mode == MC_CACHE_REQUIRE,
                                          hl, hp, info);
    free(data);
    if (s != MC_OK) {
        look l = LOOK_REJECTED;
        if (s == MC_ERR_CACHE_MISS && mode == MC_CACHE_REQUIRE) {
            l = LOOK_REQUIRE_MISS;
        } else {
            snprintf(why, sizeof why, "its payload does not load (%s: %.100s)", mc_status_name(s), mc_last_error());
            reject(c, name, &st, true, why);
        }
        close(fd);
        return l;
    }
    /* last use, for eviction; a minute's precision spares a metadata
     * write on every hit */
    struct timespec wall;
    if (mode == MC_CACHE_RW && clock_gettime(CLOCK_REALTIME, &wall) == 0 &&
        (uint64_t)wall.tv_sec * 1000000000ull > mtime_ns(&st) + LRU_PRECISION_NS)
        futimens(fd, NULL);
    close(fd);
    return LOOK_HIT;
}

/* ======================================================================== */
/* Disk: writing an entry, eviction                                          */
/* ======================================================================== */

typedef struct victim {
    uint64_t mtime_ns;
    uint64_t size;
    int dir; /* index into the open folders */
    char name[MC__CACHE_NAME_LEN + 1];
} victim;

static int victim_cmp(const void *a, const void *b)
{
    const victim *x = a, *y = b;
    if (x->mtime_ns != y->mtime_ns) return x->mtime_ns < y->mtime_ns ? -1 : 1;
    return strcmp(x->name, y->name);
}

static uint64_t mtime_ns(const struct stat *st)
{
#ifdef __APPLE__
    return (uint64_t)st->st_mtimespec.tv_sec * 1000000000ull + (uint64_t)st->st_mtimespec.tv_nsec;
#else
    return (uint64_t)st->st_mtim.tv_sec * 1000000000ull + (uint64_t)st->st_mtim.tv_nsec;
#endif
}

/* Walks one folder: entries into *v (when v), stale temporary files removed
 * (when clean). Returns the entries' bytes. */
static uint64_t scan_folder(int dfd, int index, victim **v, size_t *nv, size_t *cap, uint64_t *entries, bool clean)
{
    int fd = openat(dfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return 0;
    DIR *dir = fdopendir(fd);
    if (!dir) {
        close(fd);
        return 0;
    }
    uint64_t total = 0, wall = 0;
    struct timespec ts;
    if (clean && clock_gettime(CLOCK_REALTIME, &ts) == 0)
        wall = (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
    struct dirent *de;
    uint8_t key[MC__CACHE_KEY_SIZE];
    while ((de = readdir(dir)) != NULL) {
        struct stat st;
        if (mc__cache_name_key(de->d_name, key)) {
            if (fstatat(dfd, de->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0 || !S_ISREG(st.st_mode)) continue;
            total += (uint64_t)st.st_size;
            if (entries) (*entries)++;
            if (!v || st.st_uid != geteuid()) continue;
            if (*nv == *cap) {
                size_t ncap = *cap ? *cap * 2 : 64;
                victim *nvp = mc__realloc(*v, ncap * sizeof *nvp);
                if (!nvp) continue;
                *v = nvp;
                *cap = ncap;
            }
            victim *x = &(*v)[(*nv)++];
            x->mtime_ns = mtime_ns(&st);
            x->size = (uint64_t)st.st_size;
            x->dir = index;
            memcpy(x->name, de->d_name, sizeof x->name);
        } else if (clean && !strncmp(de->d_name, TMP_PREFIX, strlen(TMP_PREFIX))) {
            if (fstatat(dfd, de->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0 && st.st_uid == geteuid() &&
                mtime_ns(&st) + STALE_TMP_NS < wall)
                unlinkat(dfd, de->d_name, 0);
        }
    }
    closedir(dir);
    return total;
}

/* Keeps the whole root (every identity's folder we own) under the cap,
 * least recently used first; never the entry just written. */
static void evict(struct mc__cache *c, const char *keep)
{
    uint64_t cap_bytes = atomic_load(&c->max_bytes);
    int rfd = openat(c->root_fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (rfd < 0) return;
    DIR *root = fdopendir(rfd);
    if (!root) {
        close(rfd);
        return;
    }
    int *dirs = NULL;
    size_t ndirs = 0, dcap = 0, nv = 0, vcap = 0;
    victim *v = NULL;
    uint64_t total = 0;
    struct dirent *de;
    int self = -1;
    while ((de = readdir(root)) != NULL) {
        if (de->d_name[0] == '.' && (de->d_name[1] == '\0' || (de->d_name[1] == '.' && de->d_name[2] == '\0')))
            continue;
        int dfd = openat(c->root_fd, de->d_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (dfd < 0) continue;
        struct stat st;
        char why[96];
        if (fstat(dfd, &st) != 0 || untrusted_dir(&st, why, sizeof why)) {
            close(dfd);
            continue;
        }
        if (ndirs == dcap) {
            size_t ncap = dcap ? dcap * 2 : 8;
            int *nd = mc__realloc(dirs, ncap * sizeof *nd);
            if (!nd) {
                close(dfd);
                continue;
            }
            dirs = nd;
            dcap = ncap;
        }
        if (!strcmp(de->d_name, c->folder)) self = (int)ndirs;
        dirs[ndirs] = dfd;
        total += scan_folder(dfd, (int)ndirs, &v, &nv, &vcap, NULL, true);
        ndirs++;
    }
    closedir(root);
    if (total > cap_bytes && nv) {
        qsort(v, nv, sizeof *v, victim_cmp);
        for (size_t i = 0; i < nv && total > cap_bytes; i++) {
            if (v[i].dir == self && !strcmp(v[i].name, keep)) continue;
            if (unlinkat(dirs[v[i].dir], v[i].name, 0) == 0) {
                total -= MC__MIN(total, v[i].size);
                count(&c->n.evictions, 1);
                mc__log(MC_LOG_DEBUG, "cache.evicted", "evicted %s (%llu bytes, least recently used)", v[i].name,
                        (unsigned long long)v[i].size);
            } else if (errno == ENOENT) {
                total -= MC__MIN(total, v[i].size); /* another process was first */
            }
        }
    }
    for (size_t i = 0; i < ndirs; i++) close(dirs[i]);
    free(dirs);
    free(v);
}

static void disk_write(struct mc__cache *c, const uint8_t key[32], const uint8_t *material, size_t material_len,
                       const void *payload, size_t payload_len)
{
    uint8_t header[MC__CACHE_HEADER_SIZE];
    memset(header, 0, sizeof header);
    memcpy(header, MC__CACHE_MAGIC, 8);
    put_le(header + 8, MC__CACHE_FORMAT_VERSION, 4);
    put_le(header + 12, MC__CACHE_HEADER_SIZE, 4);
    memcpy(header + 16, key, 32);
    put_le(header + 48, material_len, 8);
    put_le(header + 56, payload_len, 8);
    if (!mc__hash_sha256(c->hash, payload, payload_len, header + 64)) return;

    char name[MC__CACHE_NAME_LEN + 1], tmp[96];
    mc__cache_key_name(key, name);
    tmp_name(c, tmp, sizeof tmp);
    int fd = openat(c->dir_fd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0) {
        write_failed(c, "create a file", errno);
        return;
    }
    bool ok = write_all(fd, header, sizeof header) && write_all(fd, material, material_len) &&
              write_all(fd, payload, payload_len) && fsync(fd) == 0;
    int err = errno;
    if (close(fd) != 0 && ok) {
        ok = false;
        err = errno;
    }
    /* rename is atomic: readers see the old entry or the new one, and of two
     * processes writing one key the last rename wins, both valid */
    if (ok && renameat(c->dir_fd, tmp, c->dir_fd, name) != 0) {
        ok = false;
        err = errno;
    }
    if (!ok) {
        unlinkat(c->dir_fd, tmp, 0);
        write_failed(c, "write an entry", err);
        return;
    }
    fsync(c->dir_fd); /* the rename itself survives a crash */
    count(&c->n.writes, 1);
    evict(c, name);
}

/* ======================================================================== */
/* Building one key                                                          */
/* ======================================================================== */

/* Canonical key material: every field that decides the compiled code,
 * length-prefixed so no two inputs serialise alike. */
static bool build_material(mc_device *d, const req *r, bytes *m, bool *identity_known)
{
    char compiler[512];
    *identity_known = false;
    compiler[0] = '\0';
    if (d->hal->compiler_identity) {
        if (d->hal->compiler_identity(d->hd, r->lang, compiler, sizeof compiler) == MC_OK) *identity_known = true;
        else compiler[0] = '\0';
        compiler[sizeof compiler - 1] = '\0';
    }
    bytes_u32(m, MC__CACHE_FORMAT_VERSION);
    bytes_str(m, MC_VERSION_STRING); /* backends' import formats may change between releases */
    bytes_str(m, d->hal->name);
    bytes_str(m, d->info.identity);
    bytes_str(m, *identity_known ? compiler : "(unknown compiler)");
    bytes_u32(m, (uint32_t)r->lang);
    bytes_field(m, r->source, r->source_len);
    bytes_str(m, r->options);
    bytes_str(m, r->function);
    bytes_u32(m, r->max_threads);
    bytes_u32(m, r->simd ? 1u : 0u);
    return !m->oom;
}

static mc_status pipeline_from_lib(mc_device *d, mc_library *lib, const req *r, mc_pipeline **out)
{
    mc_pipeline_desc pd = MC_PIPELINE_DESC_INIT;
    pd.library = lib;
    pd.function = r->function;
    pd.max_total_threads_per_threadgroup = r->max_threads;
    pd.threadgroup_size_is_multiple_of_simd_width = r->simd;
    pd.label = r->label;
    return mc_pipeline_create(d, &pd, out);
}

/* The pipeline the backend's import made, wrapped as mc_pipeline_create
 * would (the archive's pipeline is kept, F697). Takes hp over. */
static mc_status pipeline_wrap(mc_device *d, mc_library *lib, void *hp, const mc_pipeline_info *info, const req *r,
                               mc_pipeline **out)
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
    p->simd_multiple = r->simd;
    p->library = lib;
    mc__object_retain(&lib->base);
    mc__object_retain(&d->base);
    *out = p;
    return MC_OK;
}

/* Compiles r into a fresh library (no device reference) and a pipeline. */
static mc_status compile(struct mc__cache *c, const req *r, mc_library **lib_out, mc_pipeline **out, char **log)
{
    mc_device *d = c->d;
    void *hl = NULL;
    char *blog = NULL;
    uint64_t t0 = now_ns();
    count(&c->n.compiles, 1);
    mc_status s = d->hal->library_create(d->hd, r->lang, r->source, r->source_len, r->options, &hl, &blog);
    if (s != MC_OK) {
        count(&c->n.compile_ns, now_ns() - t0);
        if (MC__TRACING())
            mc__trace_span("pipelines", NULL, "compile", r->function, 0, t0, now_ns(), mc_status_name(s), 0, NULL);
        if (s == MC_ERR_COMPILE && !mc_last_error()[0])
            mc__fail(s, "%s compilation failed", mc_language_name(r->lang));
        *log = blog;
        return s;
    }
    free(blog);
    mc_library *lib = cache_lib_wrap(d, hl, r->lang, r->label ? r->label : r->function);
    if (!lib) {
        d->hal->library_destroy(d->hd, hl);
        return mc__fail(MC_ERR_NO_MEMORY, "out of host memory");
    }
    s = pipeline_from_lib(d, lib, r, out);
    count(&c->n.compile_ns, now_ns() - t0);
    if (MC__TRACING()) mc__trace_span("pipelines", NULL, "compile", r->function, 0, t0, now_ns(), mc_status_name(s), 0, NULL);
    if (s != MC_OK) {
        cache_lib_final(d, lib); /* no pipeline was made from it */
        return s;
    }
    *lib_out = lib;
    return MC_OK;
}

/* Builds the entry e for r: from disk, else by compiling (and archiving).
 * On success e->lib is set and *out is the requester's pipeline. */
static mc_status build(struct mc__cache *c, const req *r, const bytes *m, bool archivable, mc_library **lib_out,
                       mc_pipeline **out, char **log)
{
    mc_device *d = c->d;
    mc_cache_mode mode = (mc_cache_mode)atomic_load(&c->mode);
    bool disk = archivable && disk_state(c) == DISK_READY;
    uint8_t key[32];
    if (disk && !mc__hash_sha256(c->hash, m->p, m->n, key)) disk = false;
    const char *miss_why = disk ? "not archived" : "no on-disk cache";
    if (disk) {
        void *hl = NULL, *hp = NULL;
        mc_pipeline_info info;
        uint64_t t0 = now_ns();
        look l = disk_lookup(c, r, m->p, m->n, key, &hl, &hp, &info);
        if (l == LOOK_HIT) {
            mc_library *lib = cache_lib_wrap(d, hl, r->lang, r->label ? r->label : r->function);
            if (!lib) {
                d->hal->pipeline_destroy(d->hd, hp);
                d->hal->library_destroy(d->hd, hl);
                return mc__fail(MC_ERR_NO_MEMORY, "out of host memory");
            }
            mc_status s = pipeline_wrap(d, lib, hp, &info, r, out);
            if (s != MC_OK) {
                cache_lib_final(d, lib);
                return s;
            }
            count(&c->n.load_ns, now_ns() - t0);
            count(&c->n.hits_disk, 1);
            if (MC__TRACING())
                mc__trace_instant("pipelines", NULL, "cache hit", r->function, 0, NULL, MC__TARGS({"disk", 1}));
            *lib_out = lib;
            return MC_OK;
        }
        if (l == LOOK_REQUIRE_MISS) miss_why = "the archive does not hold it";
        else if (l == LOOK_REJECTED) miss_why = "its entry was refused";
    }
    count(&c->n.misses, 1);
    if (MC__TRACING()) mc__trace_instant("pipelines", NULL, "cache miss", r->function, 0, NULL, 0, NULL);
    if (mode == MC_CACHE_REQUIRE)
        return mc__fail(MC_ERR_CACHE_MISS, "pipeline '%s' is not in the cache (%s) and the cache mode is 'require'",
                        r->function, miss_why);
    mc_status s = compile(c, r, lib_out, out, log);
    if (s != MC_OK || !disk || mode != MC_CACHE_RW || !disk_writable(c)) return s;
    void *payload = NULL;
    size_t len = 0;
    mc__pipeline_src src = {r->lang, r->source, r->source_len, r->options, r->function, r->max_threads, r->simd,
                            r->label, NULL, 0}; /* no constants: such pipelines are not cached (device.c) */
    if (d->hal->pipeline_export(d->hd, &src, (*lib_out)->hl, (*out)->hp, &payload, &len) != MC_OK) {
        mc__log(MC_LOG_DEBUG, "cache.export_failed", "pipeline '%s' cannot be archived: %s", r->function,
                mc_last_error());
        return MC_OK;
    }
    disk_write(c, key, m->p, m->n, payload, len);
    free(payload);
    return MC_OK;
}

static void entry_unref(centry *e)
{
    if (--e->refs > 0) return;
    free(e->material);
    free(e->msg);
    free(e->log);
    free(e);
}

static void table_remove(struct mc__cache *c, centry *e)
{
    for (centry **pp = &c->table[e->hash % c->nbuckets]; *pp; pp = &(*pp)->next) {
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
    centry **t = mc__calloc(n, sizeof *t);
    if (!t) return; /* longer chains, still correct */
    for (size_t i = 0; i < c->nbuckets; i++) {
        for (centry *e = c->table[i], *next; e; e = next) {
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
static mc_status failed_result(const centry *e, char **log)
{
    if (log && e->log) *log = mc__strdup(e->log);
    return mc__fail(e->status, "%s", e->msg ? e->msg : mc_status_text(e->status));
}

/* No cache: compile into an ordinary library. */
static mc_status request_uncached(struct mc__cache *c, const req *r, mc_pipeline **out, char **log)
{
    mc_device *d = c->d;
    mc_library_desc ld = MC_LIBRARY_DESC_INIT;
    ld.language = r->lang;
    ld.source = r->source;
    ld.source_len = r->source_len;
    ld.options = r->options;
    ld.label = r->label ? r->label : r->function;
    mc_library *lib = NULL;
    uint64_t t0 = now_ns();
    count(&c->n.misses, 1);
    count(&c->n.compiles, 1);
    mc_status s = mc_library_create(d, &ld, &lib, log);
    if (MC__TRACING()) mc__trace_span("pipelines", NULL, "compile", r->function, 0, t0, now_ns(), mc_status_name(s), 0, NULL);
    if (s == MC_OK) {
        s = pipeline_from_lib(d, lib, r, out);
        mc_library_release(lib);
    }
    count(&c->n.compile_ns, now_ns() - t0);
    return s;
}

/* The one path every request takes, on the caller's thread or a pool
 * thread. *log receives the compiler's output on failure. */
static mc_status request(struct mc__cache *c, const req *r, mc_pipeline **out, char **log)
{
    mc_device *d = c->d;
    *out = NULL;
    mc_status s = mc_device_check(d);
    if (s != MC_OK) return s;
    if ((mc_cache_mode)atomic_load(&c->mode) == MC_CACHE_OFF) return request_uncached(c, r, out, log);

    bytes m = {NULL, 0, 0, false};
    bool archivable = false;
    if (!build_material(d, r, &m, &archivable)) {
        free(m.p);
        return mc__fail(MC_ERR_NO_MEMORY, "out of host memory");
    }
    uint64_t h = fnv1a(m.p, m.n);

    pthread_mutex_lock(&c->lock);
    centry *e = c->table[h % c->nbuckets];
    while (e && !(e->hash == h && e->material_len == m.n && !memcmp(e->material, m.p, m.n))) e = e->next;
    if (e) {
        /* built already, or being built by another thread: its result (or
         * its error) is ours too */
        e->refs++;
        while (e->state == ENTRY_BUILDING) pthread_cond_wait(&c->built, &c->lock);
        mc_library *lib = e->lib;
        if (lib) mc__object_retain(&lib->base); /* held across a concurrent clear */
        if (e->state == ENTRY_FAILED) s = failed_result(e, log);
        entry_unref(e);
        pthread_mutex_unlock(&c->lock);
        free(m.p);
        if (!lib) return s;
        count(&c->n.hits_memory, 1);
        if (MC__TRACING()) mc__trace_instant("pipelines", NULL, "cache hit", r->function, 0, NULL, MC__TARGS({"disk", 0}));
        s = pipeline_from_lib(d, lib, r, out);
        lib_unref_temporary(lib);
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
    e->state = ENTRY_BUILDING;
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
        e->state = ENTRY_READY;
    } else {
        /* waiting requests get the same error; later ones try again */
        e->state = ENTRY_FAILED;
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

/* Checks desc and fills r (pointing into desc). */
static mc_status make_req(mc_device *d, const mc_pipeline_source_desc *desc, req *r, const char *who)
{
    if (!desc) return mc__fail(MC_ERR_INVALID_ARGUMENT, "%s: desc is NULL", who);
    if (!desc->source) return mc__fail(MC_ERR_INVALID_ARGUMENT, "%s: source is NULL", who);
    if (!desc->function || !desc->function[0])
        return mc__fail(MC_ERR_INVALID_ARGUMENT, "%s: function name is empty", who);
    mc_language lang = desc->language;
    if (lang == MC_LANG_UNSET) {
        switch (d->info.kind) {
        case MC_DEVICE_CPU: lang = MC_LANG_C; break;
        case MC_DEVICE_CUDA: lang = MC_LANG_CUDA; break;
        case MC_DEVICE_METAL: lang = MC_LANG_MSL; break;
        case MC_DEVICE_ANY: break;
        }
    }
    if (lang == MC_LANG_UNSET || lang > MC_LANG_MSL)
        return mc__fail(MC_ERR_INVALID_ARGUMENT, "%s: unknown language %d", who, (int)desc->language);
    if (desc->max_total_threads_per_threadgroup > d->info.max_threads_per_threadgroup)
        return mc__fail(MC_ERR_INVALID_ARGUMENT, "%s: max_total_threads_per_threadgroup %u is over the device's "
                        "limit of %u", who, desc->max_total_threads_per_threadgroup,
                        d->info.max_threads_per_threadgroup);
    r->lang = lang;
    r->source = desc->source;
    r->source_len = desc->source_len ? desc->source_len : strlen(desc->source);
    r->options = desc->options ? desc->options : "";
    r->function = desc->function;
    r->max_threads = desc->max_total_threads_per_threadgroup;
    r->simd = desc->threadgroup_size_is_multiple_of_simd_width;
    r->label = desc->label;
    return MC_OK;
}

mc_status mc_pipeline_create_from_source(mc_device *d, const mc_pipeline_source_desc *desc, mc_pipeline **out,
                                         char **log)
{
    if (log) *log = NULL;
    MC__CHECK_HANDLE(d, MC__TAG_DEVICE, "device");
    if (!out) return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_pipeline_create_from_source: out is NULL");
    *out = NULL;
    req r;
    mc_status s = make_req(d, desc, &r, "mc_pipeline_create_from_source");
    if (s != MC_OK) return s;
    struct mc__cache *c = cache_get(d);
    if (!c) return mc__fail(MC_ERR_NO_MEMORY, "out of host memory");
    char *blog = NULL;
    s = request(c, &r, out, &blog);
    if (log) *log = blog;
    else free(blog);
    return s;
}

/* ======================================================================== */
/* Futures and the background pool                                           */
/* ======================================================================== */

#define MC__TAG_FUTURE 0x6d634654

typedef struct fwaiter {
    pthread_mutex_t lock;
    pthread_cond_t cv;
    bool fired;
} fwaiter;

typedef struct flink {
    struct flink *next;
    fwaiter *w;
} flink;

struct mc_pipeline_future {
    uint32_t tag;
    _Atomic int refs; /* the caller's and the pool job's */
    mc_device *d;     /* retained */
    struct mc__cache *c;
    req r;
    char *source, *options, *function, *label; /* owned copies */
    pthread_mutex_t lock;
    pthread_cond_t cv;
    _Atomic bool done;
    mc_status status;
    char *msg;
    char *log;
    mc_pipeline *pipeline;
    flink *waiters;
    mc_pipeline_future *next; /* in the pool's queue */
};

struct pool {
    pthread_mutex_t lock;
    pthread_cond_t cv;
    mc_pipeline_future *head, *tail;
    bool stop;
    bool orphaned; /* destroyed from one of its own threads: that thread frees it */
    unsigned n;
    pthread_t threads[MAX_POOL_THREADS];
};

static void future_free(mc_pipeline_future *f)
{
    mc_device *d = f->d;
    /* a completer may still be leaving its critical section */
    pthread_mutex_lock(&f->lock);
    pthread_mutex_unlock(&f->lock);
    if (f->pipeline) mc_pipeline_release(f->pipeline);
    pthread_mutex_destroy(&f->lock);
    pthread_cond_destroy(&f->cv);
    free(f->source);
    free(f->options);
    free(f->function);
    free(f->label);
    free(f->msg);
    free(f->log);
    f->tag = MC__TAG_DEAD;
    free(f);
    /* last: on a pool thread the device's destruction goes to its notifier
     * (mc__in_completion), never joins the pool from inside it */
    mc_device_release(d);
}

static void future_unref(mc_pipeline_future *f)
{
    if (atomic_fetch_sub(&f->refs, 1) == 1) future_free(f);
}

/* Publishes the outcome. With job_ref, also ends the job's reference,
 * before anyone can see the future done: whoever wakes up holds the only
 * reference left, so the caller's last release frees the future (and lets
 * go of the device) on the caller's own thread, at once. */
static void future_complete(mc_pipeline_future *f, mc_status s, mc_pipeline *p, char *log, bool job_ref)
{
    pthread_mutex_lock(&f->lock);
    f->status = s;
    f->pipeline = p;
    f->log = log;
    if (s != MC_OK) f->msg = mc__strdup(mc_last_error());
    bool last = job_ref && atomic_fetch_sub(&f->refs, 1) == 1; /* the caller let go already */
    atomic_store(&f->done, true);
    pthread_cond_broadcast(&f->cv);
    for (flink *l = f->waiters; l; l = l->next) {
        pthread_mutex_lock(&l->w->lock);
        l->w->fired = true;
        pthread_cond_signal(&l->w->cv);
        pthread_mutex_unlock(&l->w->lock);
    }
    pthread_mutex_unlock(&f->lock);
    if (last) future_free(f); /* on a pool thread: the device may close on its notifier */
}

static void pool_free(pool *p)
{
    pthread_mutex_destroy(&p->lock);
    pthread_cond_destroy(&p->cv);
    free(p);
}

static void *pool_main(void *arg)
{
    pool *p = arg;
    mc__in_completion = 1; /* releases that would destroy go to the notifier */
    pthread_mutex_lock(&p->lock);
    for (;;) {
        while (!p->head && !p->stop) pthread_cond_wait(&p->cv, &p->lock);
        mc_pipeline_future *f = p->head;
        if (!f) break; /* stopping and drained */
        p->head = f->next;
        if (!p->head) p->tail = NULL;
        pthread_mutex_unlock(&p->lock);
        mc_pipeline *pl = NULL;
        char *log = NULL;
        mc_status s = request(f->c, &f->r, &pl, &log);
        future_complete(f, s, pl, log, true); /* f may be gone after this */
        pthread_mutex_lock(&p->lock);
    }
    bool orphaned = p->orphaned;
    pthread_mutex_unlock(&p->lock);
    if (orphaned) pool_free(p);
    return NULL;
}

static mc_status pool_submit(struct mc__cache *c, mc_pipeline_future *f)
{
    pthread_mutex_lock(&c->pool_lock);
    pool *p = c->pool;
    if (!p) {
        p = mc__calloc(1, sizeof *p);
        if (!p) {
            pthread_mutex_unlock(&c->pool_lock);
            return mc__fail(MC_ERR_NO_MEMORY, "out of host memory");
        }
        pthread_mutex_init(&p->lock, NULL);
        pthread_cond_init(&p->cv, NULL);
        unsigned want = MC__MIN(MC__MAX(mc__cpu_count(), 2u), MAX_POOL_THREADS);
        for (unsigned i = 0; i < want; i++) {
            if (pthread_create(&p->threads[p->n], NULL, pool_main, p) != 0) break;
            p->n++;
        }
        if (!p->n) {
            pthread_mutex_unlock(&c->pool_lock);
            pool_free(p);
            return mc__fail(MC_ERR_INTERNAL, "cannot start a thread to build pipelines");
        }
        c->pool = p;
    }
    pthread_mutex_unlock(&c->pool_lock);
    f->next = NULL;
    pthread_mutex_lock(&p->lock);
    if (p->tail) p->tail->next = f;
    else p->head = f;
    p->tail = f;
    pthread_cond_signal(&p->cv);
    pthread_mutex_unlock(&p->lock);
    return MC_OK;
}

static void pool_stop(pool *p)
{
    pthread_t self = pthread_self();
    bool in_pool = false;
    pthread_mutex_lock(&p->lock);
    p->stop = true;
    for (unsigned i = 0; i < p->n; i++)
        if (pthread_equal(p->threads[i], self)) in_pool = true;
    p->orphaned = in_pool;
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->lock);
    for (unsigned i = 0; i < p->n; i++) {
        if (pthread_equal(p->threads[i], self)) pthread_detach(self);
        else pthread_join(p->threads[i], NULL);
    }
    if (!in_pool) pool_free(p);
}

/* A memory hit without waiting: the future completes at once. */
static bool try_memory_hit(struct mc__cache *c, const req *r, mc_pipeline **out, mc_status *st)
{
    mc_device *d = c->d;
    if ((mc_cache_mode)atomic_load(&c->mode) == MC_CACHE_OFF) return false;
    bytes m = {NULL, 0, 0, false};
    bool archivable;
    if (!build_material(d, r, &m, &archivable)) {
        free(m.p);
        return false;
    }
    uint64_t h = fnv1a(m.p, m.n);
    pthread_mutex_lock(&c->lock);
    centry *e = c->table[h % c->nbuckets];
    while (e && !(e->hash == h && e->material_len == m.n && !memcmp(e->material, m.p, m.n))) e = e->next;
    mc_library *lib = e && e->state == ENTRY_READY ? e->lib : NULL;
    if (lib) mc__object_retain(&lib->base);
    pthread_mutex_unlock(&c->lock);
    free(m.p);
    if (!lib) return false;
    count(&c->n.hits_memory, 1);
    if (MC__TRACING()) mc__trace_instant("pipelines", NULL, "cache hit", r->function, 0, NULL, MC__TARGS({"disk", 0}));
    *st = pipeline_from_lib(d, lib, r, out);
    lib_unref_temporary(lib);
    return true;
}

static char *dup_n(const char *s, size_t n)
{
    char *p = mc__malloc(n + 1);
    if (p) {
        memcpy(p, s, n);
        p[n] = '\0';
    }
    return p;
}

mc_status mc_pipeline_create_async(mc_device *d, const mc_pipeline_source_desc *desc, mc_pipeline_future **out)
{
    MC__CHECK_HANDLE(d, MC__TAG_DEVICE, "device");
    if (!out) return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_pipeline_create_async: out is NULL");
    *out = NULL;
    req r;
    mc_status s = make_req(d, desc, &r, "mc_pipeline_create_async");
    if (s != MC_OK) return s;
    if ((s = mc_device_check(d)) != MC_OK) return s;
    struct mc__cache *c = cache_get(d);
    mc_pipeline_future *f = c ? mc__calloc(1, sizeof *f) : NULL;
    if (!f) return mc__fail(MC_ERR_NO_MEMORY, "out of host memory");
    f->source = dup_n(r.source, r.source_len);
    f->options = mc__strdup(r.options);
    f->function = mc__strdup(r.function);
    f->label = mc__strdup(r.label);
    if (!f->source || !f->options || !f->function || (r.label && !f->label)) {
        free(f->source);
        free(f->options);
        free(f->function);
        free(f->label);
        free(f);
        return mc__fail(MC_ERR_NO_MEMORY, "out of host memory");
    }
    f->tag = MC__TAG_FUTURE;
    f->d = d;
    f->c = c;
    f->r = r;
    f->r.source = f->source;
    f->r.options = f->options;
    f->r.function = f->function;
    f->r.label = f->label;
    pthread_mutex_init(&f->lock, NULL);
    mc__cond_init_monotonic(&f->cv);
    atomic_init(&f->done, false);
    mc_device_retain(d);
    mc_pipeline *p = NULL;
    if (try_memory_hit(c, &f->r, &p, &s)) {
        atomic_init(&f->refs, 1);
        future_complete(f, s, p, NULL, false);
        *out = f;
        return MC_OK;
    }
    atomic_init(&f->refs, 2); /* the caller and the job */
    s = pool_submit(c, f);
    if (s != MC_OK) {
        atomic_store(&f->refs, 1);
        future_unref(f);
        return s;
    }
    *out = f;
    return MC_OK;
}

static bool future_ok(const mc_pipeline_future *f)
{
    return f && f->tag == MC__TAG_FUTURE;
}

bool mc_pipeline_future_done(const mc_pipeline_future *f)
{
    return future_ok(f) && atomic_load(&((mc_pipeline_future *)f)->done);
}

mc_status mc_pipeline_future_wait(mc_pipeline_future *f, uint64_t timeout_ns, mc_pipeline **out, char **log)
{
    if (out) *out = NULL;
    if (log) *log = NULL;
    if (!future_ok(f)) return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_pipeline_future_wait: not a valid future");
    uint64_t deadline = mc__deadline(timeout_ns);
    pthread_mutex_lock(&f->lock);
    while (!atomic_load(&f->done)) {
        if (!mc__cond_wait_until(&f->cv, &f->lock, deadline)) {
            pthread_mutex_unlock(&f->lock);
            return mc__fail(MC_ERR_WAIT_TIMEOUT, "pipeline '%s' is still being built", f->function);
        }
    }
    mc_status s = f->status;
    if (s == MC_OK) {
        if (out) {
            mc_pipeline_retain(f->pipeline);
            *out = f->pipeline;
        }
    } else {
        if (log && f->log) *log = mc__strdup(f->log);
        mc__fail(s, "%s", f->msg ? f->msg : mc_status_text(s));
    }
    pthread_mutex_unlock(&f->lock);
    return s;
}

mc_status mc_pipeline_future_wait_any(mc_pipeline_future *const *futures, size_t n, uint64_t timeout_ns,
                                      size_t *index)
{
    if (!futures || !n || !index)
        return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_pipeline_future_wait_any: futures, n > 0 and index are required");
    for (size_t i = 0; i < n; i++)
        if (!future_ok(futures[i]))
            return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_pipeline_future_wait_any: entry %zu is not a valid future", i);
    for (size_t i = 0; i < n; i++) {
        if (atomic_load(&futures[i]->done)) {
            *index = i;
            return MC_OK;
        }
    }
    if (timeout_ns == 0) return mc__fail(MC_ERR_WAIT_TIMEOUT, "none of %zu pipelines is ready", n);
    flink *links = mc__calloc(n, sizeof *links);
    if (!links) return mc__fail(MC_ERR_NO_MEMORY, "out of host memory");
    fwaiter w;
    w.fired = false;
    pthread_mutex_init(&w.lock, NULL);
    mc__cond_init_monotonic(&w.cv);
    for (size_t i = 0; i < n; i++) {
        mc_pipeline_future *f = futures[i];
        links[i].w = &w;
        pthread_mutex_lock(&f->lock);
        links[i].next = f->waiters;
        f->waiters = &links[i];
        if (atomic_load(&f->done)) {
            pthread_mutex_lock(&w.lock);
            w.fired = true;
            pthread_mutex_unlock(&w.lock);
        }
        pthread_mutex_unlock(&f->lock);
    }
    uint64_t deadline = mc__deadline(timeout_ns);
    pthread_mutex_lock(&w.lock);
    while (!w.fired && mc__cond_wait_until(&w.cv, &w.lock, deadline)) {
    }
    pthread_mutex_unlock(&w.lock);
    for (size_t i = 0; i < n; i++) {
        mc_pipeline_future *f = futures[i];
        pthread_mutex_lock(&f->lock);
        for (flink **pp = &f->waiters; *pp; pp = &(*pp)->next) {
            if (*pp == &links[i]) {
                *pp = links[i].next;
                break;
            }
        }
        pthread_mutex_unlock(&f->lock);
    }
    free(links);
    pthread_mutex_destroy(&w.lock);
    pthread_cond_destroy(&w.cv);
    for (size_t i = 0; i < n; i++) {
        if (atomic_load(&futures[i]->done)) {
            *index = i;
            return MC_OK;
        }
    }
    return mc__fail(MC_ERR_WAIT_TIMEOUT, "none of %zu pipelines is ready", n);
}

void mc_pipeline_future_release(mc_pipeline_future *f)
{
    if (future_ok(f)) future_unref(f);
}

/* ======================================================================== */
/* Modes, statistics, clearing                                               */
/* ======================================================================== */

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
    struct mc__cache *c = cache_get(d);
    if (!c) return mc__fail(MC_ERR_NO_MEMORY, "out of host memory");
    atomic_store(&c->mode, mode == MC_CACHE_DEFAULT ? mode_from_env() : mode);
    return MC_OK;
}

mc_cache_mode mc_cache_get_mode(mc_device *d)
{
    if (!mc__object_check(d, MC__TAG_DEVICE)) return MC_CACHE_OFF;
    struct mc__cache *c = cache_get(d);
    return c ? (mc_cache_mode)atomic_load(&c->mode) : MC_CACHE_OFF;
}

mc_status mc_cache_set_max_bytes(mc_device *d, uint64_t max_bytes)
{
    MC__CHECK_HANDLE(d, MC__TAG_DEVICE, "device");
    struct mc__cache *c = cache_get(d);
    if (!c) return mc__fail(MC_ERR_NO_MEMORY, "out of host memory");
    atomic_store(&c->max_bytes, max_bytes ? max_bytes : max_bytes_from_env());
    return MC_OK;
}

mc_status mc_cache_get_stats(mc_device *d, mc_cache_stats *out)
{
    MC__CHECK_HANDLE(d, MC__TAG_DEVICE, "device");
    if (!out) return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_cache_get_stats: out is NULL");
    struct mc__cache *c = cache_get(d);
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
    if (mode != MC_CACHE_OFF && disk_state(c) == DISK_READY) {
        out->disk_enabled = mode != MC_CACHE_RW || atomic_load(&c->writable) != WRITE_NO;
        size_t nv = 0, cap = 0;
        out->disk_bytes = scan_folder(c->dir_fd, 0, NULL, &nv, &cap, &out->disk_entries, false);
    }
    return MC_OK;
}

mc_status mc_cache_clear(mc_device *d)
{
    MC__CHECK_HANDLE(d, MC__TAG_DEVICE, "device");
    struct mc__cache *c = cache_get(d);
    if (!c) return mc__fail(MC_ERR_NO_MEMORY, "out of host memory");
    /* memory: ready entries leave the table; building ones finish as usual */
    mc_library **libs = NULL;
    size_t nlibs = 0;
    pthread_mutex_lock(&c->lock);
    libs = mc__calloc(c->count ? c->count : 1, sizeof *libs);
    for (size_t i = 0; libs && i < c->nbuckets; i++) {
        for (centry **pp = &c->table[i]; *pp;) {
            centry *e = *pp;
            if (e->state != ENTRY_READY) {
                pp = &e->next;
                continue;
            }
            *pp = e->next;
            e->in_table = false;
            c->count--;
            libs[nlibs++] = e->lib;
            e->lib = NULL;
            entry_unref(e);
        }
    }
    pthread_mutex_unlock(&c->lock);
    if (!libs) return mc__fail(MC_ERR_NO_MEMORY, "out of host memory");
    for (size_t i = 0; i < nlibs; i++) cache_lib_drop(d, libs[i]);
    free(libs);
    if (disk_state(c) != DISK_READY) return MC_OK;
    mc_cache_mode mode = (mc_cache_mode)atomic_load(&c->mode);
    if (mode != MC_CACHE_RW && mode != MC_CACHE_OFF)
        return mc__fail(MC_ERR_INVALID_STATE, "the cache is read-only (mode %s): memory cleared, disk kept",
                        mc_cache_mode_name(mode));
    int fd = openat(c->dir_fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    DIR *dir = fd >= 0 ? fdopendir(fd) : NULL;
    if (!dir) {
        if (fd >= 0) close(fd);
        return mc__fail(MC_ERR_IO, "cannot read %s/%s: %s", c->root, c->folder, strerror(errno));
    }
    struct dirent *de;
    uint8_t key[32];
    mc_status s = MC_OK;
    while ((de = readdir(dir)) != NULL) {
        if (!mc__cache_name_key(de->d_name, key) && strncmp(de->d_name, TMP_PREFIX, strlen(TMP_PREFIX)) != 0)
            continue;
        if (unlinkat(c->dir_fd, de->d_name, 0) != 0 && errno != ENOENT && s == MC_OK)
            s = mc__fail(MC_ERR_IO, "cannot remove %s/%s/%s: %s", c->root, c->folder, de->d_name, strerror(errno));
    }
    closedir(dir);
    return s;
}

mc_status mc_cache_dir(const mc_device *d, char *out, size_t cap)
{
    if (!out || !cap) return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_cache_dir: out is NULL or cap is 0");
    out[0] = '\0';
    char root[PATH_MAX];
    mc_status s = mc__cache_root(root, sizeof root);
    if (s != MC_OK) return s;
    if (!d) {
        if (strlen(root) >= cap) return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_cache_dir: %zu bytes do not fit", cap);
        memcpy(out, root, strlen(root) + 1);
        return MC_OK;
    }
    MC__CHECK_HANDLE(d, MC__TAG_DEVICE, "device");
    char folder[MC_NAME_MAX + 16];
    mc__cache_folder_name(d->hal->name, d->info.identity, folder, sizeof folder);
    int n = snprintf(out, cap, "%s/%s", root, folder);
    if (n < 0 || (size_t)n >= cap) {
        out[0] = '\0';
        return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_cache_dir: %zu bytes do not fit", cap);
    }
    return MC_OK;
}

/* ======================================================================== */
/* Totals kept across processes                                              */
/* ======================================================================== */

#define TOTALS_FIELDS(X) \
    X(hits_memory) X(hits_disk) X(misses) X(compiles) X(compile_ns) X(load_ns) X(writes) X(rejected) X(evictions)

static void parse_totals(const char *text, mc__cache_totals *t)
{
    memset(t, 0, sizeof *t);
    for (const char *p = text; *p;) {
        size_t len = strcspn(p, "\n");
        char line[128];
        if (len < sizeof line) {
            memcpy(line, p, len);
            line[len] = '\0';
            char name[64];
            unsigned long long v;
            if (sscanf(line, "%63s %llu", name, &v) == 2) {
#define X(f) if (!strcmp(name, #f)) t->f = v;
                TOTALS_FIELDS(X)
#undef X
            }
        }
        p += len;
        if (*p) p++;
    }
}

/* Opens the stats file safely: ours, regular, private. */
static int open_totals(int folder_fd, int flags)
{
    int fd = openat(folder_fd, MC__CACHE_STATS_FILE, flags | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC, 0600);
    if (fd < 0) return -1;
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_uid != geteuid() || (st.st_mode & 022) ||
        st.st_size > 4096) {
        close(fd);
        return -1;
    }
    return fd;
}

void mc__cache_read_totals(int folder_fd, mc__cache_totals *out)
{
    memset(out, 0, sizeof *out);
    int fd = open_totals(folder_fd, O_RDONLY);
    if (fd < 0) return;
    char text[4097];
    flock(fd, LOCK_SH);
    ssize_t n = pread(fd, text, sizeof text - 1, 0);
    flock(fd, LOCK_UN);
    close(fd);
    text[n > 0 ? n : 0] = '\0';
    parse_totals(text, out);
}

static void save_totals_locked(struct mc__cache *c);

static void save_totals(struct mc__cache *c)
{
    pthread_mutex_lock(&c->save_lock);
    save_totals_locked(c);
    pthread_mutex_unlock(&c->save_lock);
}

void mc__cache_save_stats(mc_device *d)
{
    /* A worker process may end through _exit before its device is
     * destroyed (the notifier thread defers that): save now. */
    if (d && d->cache && atomic_load(&d->cache->disk) == DISK_READY && atomic_load(&d->cache->mode) == MC_CACHE_RW)
        save_totals(d->cache);
}

/* Adds what was counted since the last save to the folder's file. */
static void save_totals_locked(struct mc__cache *c)
{
    mc__cache_totals add, now;
#define X(f) now.f = atomic_load(&c->n.f), add.f = now.f - c->saved.f;
    TOTALS_FIELDS(X)
#undef X
    uint64_t any = 0;
#define X(f) any |= add.f;
    TOTALS_FIELDS(X)
#undef X
    if (!any || atomic_load(&c->writable) == WRITE_NO) return;
    int fd = open_totals(c->dir_fd, O_RDWR | O_CREAT);
    if (fd < 0) return;
    if (flock(fd, LOCK_EX) == 0) {
        char text[4097];
        ssize_t n = pread(fd, text, sizeof text - 1, 0);
        text[n > 0 ? n : 0] = '\0';
        mc__cache_totals t;
        parse_totals(text, &t);
        int len = 0;
#define X(f) len += snprintf(text + len, sizeof text - (size_t)len, "%s %llu\n", #f, (unsigned long long)(t.f + add.f));
        TOTALS_FIELDS(X)
#undef X
        if (ftruncate(fd, 0) != 0 || pwrite(fd, text, (size_t)len, 0) != len)
            mc__log(MC_LOG_DEBUG, "cache.stats_unsaved", "cannot save the cache statistics");
        else
            c->saved = now;
        flock(fd, LOCK_UN);
    }
    close(fd);
}

/* ======================================================================== */
/* Destruction (the device is closing: no pipeline of it is left)            */
/* ======================================================================== */

void mc__cache_destroy(struct mc__cache *c)
{
    if (!c) return;
    if (c->pool) pool_stop(c->pool);
    for (size_t i = 0; i < c->nbuckets; i++) {
        for (centry *e = c->table[i], *next; e; e = next) {
            next = e->next;
            if (e->lib) cache_lib_final(c->d, e->lib);
            e->refs = 1;
            entry_unref(e);
        }
    }
    if (atomic_load(&c->disk) == DISK_READY && atomic_load(&c->mode) == MC_CACHE_RW) save_totals(c);
    if (c->dir_fd >= 0) close(c->dir_fd);
    if (c->root_fd >= 0) close(c->root_fd);
    mc__hash_close(c->hash);
    free(c->table);
    pthread_mutex_destroy(&c->lock);
    pthread_cond_destroy(&c->built);
    pthread_mutex_destroy(&c->disk_lock);
    pthread_mutex_destroy(&c->save_lock);
    pthread_mutex_destroy(&c->pool_lock);
    free(c);
}
