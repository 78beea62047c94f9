/*
 * DOC: The pipeline cache's disk store (one folder per device identity)
 *
 * Disk (F697, F701, F707): what the backend loads fastest (pipeline_export
 * / pipeline_import), behind a header with a magic number, the format
 * version, the key, the lengths and the payload's SHA-256
 * (cache_format.h). Entries are written to a temporary file in the same
 * folder, flushed and renamed into place, so a reader sees a whole entry
 * or none, and two processes building one entry both succeed. Nothing
 * read from disk is trusted until every check has passed; a refused entry
 * is removed (when it is ours) and built again. The whole root is kept
 * under a size cap, least recently used first. The statistics file adds
 * up the counters of every process.
 *
 * An unusable folder is not an error: the cache warns once and keeps to
 * memory.
 */
#include "runtime/cache.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#define MAX_ENTRY_BYTES (1ull << 31)           /* larger files are refused unread */
#define STALE_TMP_NS (3600ull * 1000000000ull) /* leftovers of crashed writers */
#define LRU_PRECISION_NS (60ull * 1000000000ull)

/* ---- setting up the folders ------------------------------------------------ */

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

/* Marks the root as the cache's (once): `metal-compute cache` then knows
 * it from a folder of the user's, and backup tools skip it. Written beside
 * and renamed, so a reader never sees half a tag. Best effort: a cache
 * without its tag is still recognised by its device folders. */
static void write_tag(int root_fd)
{
    if (faccessat(root_fd, MC__CACHE_TAG_FILE, F_OK, AT_SYMLINK_NOFOLLOW) == 0) return;
    char tmp[64];
    snprintf(tmp, sizeof tmp, MC__CACHE_TMP_PREFIX "%ld-0-tag", (long)getpid());
    int fd = openat(root_fd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0) return;
    static const char text[] = MC__CACHE_TAG_SIGNATURE
        "\n"
        "# This file is a cache directory tag created by metal-compute (its pipeline cache).\n"
        "# For information about cache directory tags see https://bford.info/cachedir/\n";
    bool ok = mc__cache_write_all(fd, text, sizeof text - 1) && fsync(fd) == 0;
    close(fd);
    if (!ok || renameat(root_fd, tmp, root_fd, MC__CACHE_TAG_FILE) != 0) unlinkat(root_fd, tmp, 0);
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
        return MC__DISK_OFF;
    }
    if (!c->hash_tried) {
        char why[160];
        c->hash_tried = true;
        c->hash = mc__hash_open(why, sizeof why);
        if (!c->hash) {
            *warn_id = "cache.no_hash";
            snprintf(warn, wcap,
                     "no SHA-256 library could be loaded (%s): the on-disk pipeline cache is off, "
                     "pipelines are cached in memory only",
                     why);
            return MC__DISK_OFF;
        }
    }
    if (mc__cache_root(c->root, sizeof c->root) != MC_OK) {
        *warn_id = "cache.dir_unusable";
        snprintf(warn, wcap, "%s: pipelines are cached in memory only", mc_last_error());
        return MC__DISK_OFF;
    }
    mc__cache_folder_name(hal->name, d->info.identity, c->folder, sizeof c->folder);
    bool create = atomic_load(&c->mode) == MC_CACHE_RW;
    char why[160];
    const char *bad = NULL;
    struct stat st;
    if (create && mkdir_parents(c->root) != 0) {
        bad = strerror(errno);
    } else if ((c->root_fd = open(c->root, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0) {
        if (!create && errno == ENOENT) return MC__DISK_UNTRIED; /* nothing archived yet */
        bad = strerror(errno);
    } else if (fstat(c->root_fd, &st) != 0) {
        bad = strerror(errno);
    } else if ((bad = mc__cache_untrusted_dir(&st, why, sizeof why)) != NULL) {
    } else if (create && (write_tag(c->root_fd), mkdirat(c->root_fd, c->folder, 0700) != 0) && errno != EEXIST) {
        /* (the root is tagged first, then its device folder made) */
        bad = strerror(errno);
    } else if ((c->dir_fd = openat(c->root_fd, c->folder, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)) < 0) {
        if (!create && errno == ENOENT) {
            close(c->root_fd);
            c->root_fd = -1;
            return MC__DISK_UNTRIED;
        }
        bad = strerror(errno);
    } else if (fstat(c->dir_fd, &st) != 0) {
        bad = strerror(errno);
    } else {
        bad = mc__cache_untrusted_dir(&st, why, sizeof why);
    }
    if (bad) {
        *warn_id = "cache.dir_unusable";
        snprintf(warn, wcap,
                 "the pipeline cache folder %s/%s cannot be used (%s): pipelines are cached in memory "
                 "only",
                 c->root, c->folder, bad);
        if (c->dir_fd >= 0) close(c->dir_fd);
        if (c->root_fd >= 0) close(c->root_fd);
        c->dir_fd = c->root_fd = -1;
        return MC__DISK_OFF;
    }
    return MC__DISK_READY;
}

int mc__cache_disk_state(struct mc__cache *c)
{
    int s = atomic_load_explicit(&c->disk, memory_order_acquire);
    if (s != MC__DISK_UNTRIED) return s;
    char warn[PATH_MAX + 512];
    const char *id = NULL;
    warn[0] = '\0';
    pthread_mutex_lock(&c->disk_lock);
    s = atomic_load_explicit(&c->disk, memory_order_acquire);
    if (s == MC__DISK_UNTRIED) {
        s = disk_setup(c, warn, sizeof warn, &id);
        atomic_store_explicit(&c->disk, s, memory_order_release);
    }
    pthread_mutex_unlock(&c->disk_lock);
    if (warn[0]) mc__log(MC_LOG_WARN, id, "%s", warn);
    return s;
}

static void tmp_name(struct mc__cache *c, char *out, size_t cap)
{
    snprintf(out, cap, MC__CACHE_TMP_PREFIX "%ld-%llu-%llx", (long)getpid(),
             (unsigned long long)atomic_fetch_add(&c->tmp_counter, 1), (unsigned long long)mc__now_ns());
}

/* Whether new entries can be written; the first time, proves it with a
 * scratch file and warns once when not (the fallback to memory). */
bool mc__cache_disk_writable(struct mc__cache *c)
{
    int w = atomic_load(&c->writable);
    if (w != MC__WRITE_UNKNOWN) return w == MC__WRITE_YES;
    char warn[PATH_MAX + 256];
    warn[0] = '\0';
    pthread_mutex_lock(&c->disk_lock);
    w = atomic_load(&c->writable);
    if (w == MC__WRITE_UNKNOWN) {
        char name[96];
        tmp_name(c, name, sizeof name);
        int fd = openat(c->dir_fd, name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
        if (fd >= 0) {
            close(fd);
            unlinkat(c->dir_fd, name, 0);
            w = MC__WRITE_YES;
        } else {
            snprintf(warn, sizeof warn,
                     "the pipeline cache folder %s/%s cannot be written (%s): new pipelines are "
                     "cached in memory only",
                     c->root, c->folder, strerror(errno));
            w = MC__WRITE_NO;
        }
        atomic_store(&c->writable, w);
    }
    pthread_mutex_unlock(&c->disk_lock);
    if (warn[0]) mc__log(MC_LOG_WARN, "cache.dir_unusable", "%s", warn);
    return w == MC__WRITE_YES;
}

/* After setup a failed write also falls back to memory, with one warning. */
static void write_failed(struct mc__cache *c, const char *what, int err)
{
    int expect = MC__WRITE_YES;
    if (atomic_compare_exchange_strong(&c->writable, &expect, MC__WRITE_NO))
        mc__log(MC_LOG_WARN, "cache.dir_unusable",
                "cannot %s in the pipeline cache folder %s/%s (%s): new pipelines "
                "are cached in memory only",
                what, c->root, c->folder, strerror(err));
}

/* Refuses name: logs the reason once, removes the file when it is ours
 * (still the same file) and we may write, counts it. */
static void reject(struct mc__cache *c, const char *name, const struct stat *st, bool removable, const char *reason)
{
    mc_cache_mode mode = (mc_cache_mode)atomic_load(&c->mode);
    bool removed = false;
    if (removable && mode == MC_CACHE_RW) {
        struct stat now;
        if (!st || (fstatat(c->dir_fd, name, &now, AT_SYMLINK_NOFOLLOW) == 0 && now.st_ino == st->st_ino &&
                    now.st_dev == st->st_dev))
            removed = unlinkat(c->dir_fd, name, 0) == 0;
    }
    mc__cache_count(&c->n.rejected, 1);
    mc__log(MC_LOG_WARN, "cache.entry_rejected", "pipeline cache entry %s/%s/%s refused: %s; %s", c->root, c->folder,
            name, reason,
            mode == MC_CACHE_REQUIRE ? "not compiling (require mode)"
            : removed                ? "removed, compiling it again"
                                     : "compiling it again");
}

/* Looks key up on disk. On a hit *hl, *hp and *info come from the
 * backend's import. */
mc__cache_look mc__cache_disk_lookup(struct mc__cache *c, const mc__cache_req *r, const uint8_t *material,
                                     size_t material_len, const uint8_t key[32], void **hl, void **hp,
                                     mc_pipeline_info *info)
{
    mc_device *d = c->d;
    char name[MC__CACHE_NAME_LEN + 1];
    mc__cache_key_name(key, name);
    mc_cache_mode mode = (mc_cache_mode)atomic_load(&c->mode);
    int fd = openat(c->dir_fd, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        if (e == ENOENT) return MC__LOOK_MISS;
        char why[128];
        if (e == ELOOP) snprintf(why, sizeof why, "a symbolic link");
        else snprintf(why, sizeof why, "cannot be opened: %s", strerror(e));
        /* a link lives in our folder: removing it touches nothing else */
        reject(c, name, NULL, e == ELOOP, why);
        return MC__LOOK_REJECTED;
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
        return MC__LOOK_MISS; /* out of memory: compile instead, keep the file */
    } else if (!mc__cache_read_all(fd, data, (size_t)st.st_size)) {
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
        return MC__LOOK_REJECTED;
    }
    mc__pipeline_src src = {r->lang,     r->source,      r->source_len, r->options,
                            r->function, r->max_threads, r->simd,       r->label};
    mc_status s =
        d->hal->pipeline_import(d->hd, &src, e.payload, (size_t)e.payload_len, mode == MC_CACHE_REQUIRE, hl, hp, info);
    free(data);
    if (s != MC_OK) {
        mc__cache_look l = MC__LOOK_REJECTED;
        if (s == MC_ERR_CACHE_MISS && mode == MC_CACHE_REQUIRE) {
            l = MC__LOOK_REQUIRE_MISS;
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
        (uint64_t)wall.tv_sec * 1000000000ull > mc__stat_mtime_ns(&st) + LRU_PRECISION_NS)
        futimens(fd, NULL);
    close(fd);
    return MC__LOOK_HIT;
}

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
            x->mtime_ns = mc__stat_mtime_ns(&st);
            x->size = (uint64_t)st.st_size;
            x->dir = index;
            memcpy(x->name, de->d_name, sizeof x->name);
        } else if (clean && !strncmp(de->d_name, MC__CACHE_TMP_PREFIX, strlen(MC__CACHE_TMP_PREFIX))) {
            if (fstatat(dfd, de->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0 && st.st_uid == geteuid() &&
                mc__stat_mtime_ns(&st) + STALE_TMP_NS < wall)
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
        if (fstat(dfd, &st) != 0 || mc__cache_untrusted_dir(&st, why, sizeof why)) {
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
                mc__cache_count(&c->n.evictions, 1);
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

void mc__cache_disk_write(struct mc__cache *c, const uint8_t key[32], const uint8_t *material, size_t material_len,
                          const void *payload, size_t payload_len)
{
    uint8_t header[MC__CACHE_HEADER_SIZE], sum[32];
    if (!mc__hash_sha256(c->hash, payload, payload_len, sum)) return;
    mc__cache_entry_header(header, key, material_len, payload_len, sum);

    char name[MC__CACHE_NAME_LEN + 1], tmp[96];
    mc__cache_key_name(key, name);
    tmp_name(c, tmp, sizeof tmp);
    int fd = openat(c->dir_fd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0) {
        write_failed(c, "create a file", errno);
        return;
    }
    bool ok = mc__cache_write_all(fd, header, sizeof header) && mc__cache_write_all(fd, material, material_len) &&
              mc__cache_write_all(fd, payload, payload_len) && fsync(fd) == 0;
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
    mc__cache_count(&c->n.writes, 1);
    evict(c, name);
}

/* ---- usage and clearing ------------------------------------------------------ */

uint64_t mc__cache_disk_usage(struct mc__cache *c, uint64_t *entries)
{
    size_t nv = 0, cap = 0;
    return scan_folder(c->dir_fd, 0, NULL, &nv, &cap, entries, false);
}

mc_status mc__cache_disk_clear(struct mc__cache *c)
{
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
        if (!mc__cache_name_key(de->d_name, key) &&
            strncmp(de->d_name, MC__CACHE_TMP_PREFIX, strlen(MC__CACHE_TMP_PREFIX)) != 0)
            continue;
        if (unlinkat(c->dir_fd, de->d_name, 0) != 0 && errno != ENOENT && s == MC_OK)
            s = mc__fail(MC_ERR_IO, "cannot remove %s/%s/%s: %s", c->root, c->folder, de->d_name, strerror(errno));
    }
    closedir(dir);
    return s;
}

/* ---- totals kept across processes -------------------------------------------- */

static void save_totals_locked(struct mc__cache *c);

void mc__cache_save_totals(struct mc__cache *c)
{
    pthread_mutex_lock(&c->save_lock);
    save_totals_locked(c);
    pthread_mutex_unlock(&c->save_lock);
}

void mc__cache_save_stats(mc_device *d)
{
    /* A worker process may end through _exit before its device is
     * destroyed (the notifier thread defers that): save now. */
    if (d && d->cache && atomic_load(&d->cache->disk) == MC__DISK_READY && atomic_load(&d->cache->mode) == MC_CACHE_RW)
        mc__cache_save_totals(d->cache);
}

/* Adds what was counted since the last save to the folder's file. */
static void save_totals_locked(struct mc__cache *c)
{
    mc__cache_totals add, now;
#define X(f) now.f = atomic_load(&c->n.f), add.f = now.f - c->saved.f;
    MC__CACHE_TOTALS_FIELDS(X)
#undef X
    uint64_t any = 0;
#define X(f) any |= add.f;
    MC__CACHE_TOTALS_FIELDS(X)
#undef X
    if (!any || atomic_load(&c->writable) == MC__WRITE_NO) return;
    int fd = mc__cache_open_totals(c->dir_fd, O_RDWR | O_CREAT);
    if (fd < 0) return;
    if (flock(fd, LOCK_EX) == 0) {
        char text[4097];
        ssize_t n = pread(fd, text, sizeof text - 1, 0);
        text[n > 0 ? n : 0] = '\0';
        mc__cache_totals t;
        mc__cache_parse_totals(text, &t);
        int len = 0;
#define X(f) len += snprintf(text + len, sizeof text - (size_t)len, "%s %llu\n", #f, (unsigned long long)(t.f + add.f));
        MC__CACHE_TOTALS_FIELDS(X)
#undef X
        if (ftruncate(fd, 0) != 0 || pwrite(fd, text, (size_t)len, 0) != len)
            mc__log(MC_LOG_DEBUG, "cache.stats_unsaved", "cannot save the cache statistics");
        else c->saved = now;
        flock(fd, LOCK_UN);
    }
    close(fd);
}

void mc__cache_disk_close(struct mc__cache *c)
{
    if (atomic_load(&c->disk) == MC__DISK_READY && atomic_load(&c->mode) == MC_CACHE_RW) mc__cache_save_totals(c);
    if (c->dir_fd >= 0) close(c->dir_fd);
    if (c->root_fd >= 0) close(c->root_fd);
    c->dir_fd = c->root_fd = -1;
    mc__hash_close(c->hash);
    c->hash = NULL;
}
