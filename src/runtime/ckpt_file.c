/*
 * DOC: Durable checkpoints (mc_runner_desc.checkpoint_dir)
 *
 * The runner's checkpoints live in host memory, which a crash, a SIGKILL
 * or a reboot takes along. With a checkpoint folder each checkpoint is also
 * written to a file, and a run can start again from the newest one that
 * passes every check. What this file owns: the file format, writing it
 * atomically, keeping the last two, and choosing which one to resume from.
 *
 * A file, checkpoint-<iteration, 20 digits>.mcck, little-endian:
 *   "MCCKPT\r\n"  u32 version (1)  u32 count  u64 iteration  u64 params_len
 *   u64 sizes[count]  params  state[0] .. state[count-1]  u64 checksum
 * The checksum is 64-bit FNV-1a over every byte before it: each step of
 * FNV-1a is a bijection, so any one changed byte (a flipped bit) always
 * changes it; a truncated file fails the length check before. params are
 * the run's own description (the CLI writes its options and the kernel's
 * source digest): a file of another run is refused, not resumed.
 *
 * Written through a temporary file in the same folder, fsync and rename
 * (the folder fsynced too), so a kill at any moment leaves whole files and
 * at worst a temporary one, which is ignored and later removed. Only after
 * the rename are older files removed, so the previous checkpoint is still
 * there while the new one is being written; two are kept so that a newest
 * one damaged later still leaves one to fall back on.
 */
#include "runtime/runtime.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define CKPT_MAGIC "MCCKPT\r\n"
#define CKPT_VERSION 1u
#define CKPT_KEEP 2
#define CKPT_PREFIX "checkpoint-"
#define CKPT_SUFFIX ".mcck"

static uint64_t fnv1a(uint64_t h, const void *data, size_t len)
{
    const uint8_t *p = data;
    for (size_t i = 0; i < len; i++) {
        h ^= p[i];
        h *= 0x100000001b3ull;
    }
    return h;
}
#define FNV_OFFSET 0xcbf29ce484222325ull

static void put_u32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static void put_u64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static uint32_t get_u32(const uint8_t *p)
{
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) v |= (uint32_t)p[i] << (8 * i);
    return v;
}
static uint64_t get_u64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) v |= (uint64_t)p[i] << (8 * i);
    return v;
}

/* The iteration a file name stands for; false for anything else (the
 * writer's temporary files, the user's own files). */
static bool parse_name(const char *name, uint64_t *iteration)
{
    size_t pl = strlen(CKPT_PREFIX), sl = strlen(CKPT_SUFFIX), n = strlen(name);
    if (n != pl + 20 + sl || strncmp(name, CKPT_PREFIX, pl) || strcmp(name + pl + 20, CKPT_SUFFIX)) return false;
    uint64_t v = 0;
    for (size_t i = pl; i < pl + 20; i++) {
        if (name[i] < '0' || name[i] > '9') return false;
        v = v * 10 + (uint64_t)(name[i] - '0');
    }
    *iteration = v;
    return true;
}

static int cmp_desc(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? 1 : x > y ? -1 : 0;
}

/* The checkpoints in dir, newest first (malloc'd; *n of them). */
static mc_status list_files(const char *dir, uint64_t **out, size_t *n)
{
    *out = NULL;
    *n = 0;
    DIR *d = opendir(dir);
    if (!d) return mc__fail(MC_ERR_IO, "checkpoint folder %s: %s", dir, strerror(errno));
    size_t cap = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        uint64_t it;
        if (!parse_name(e->d_name, &it)) continue;
        if (*n == cap) {
            cap = cap ? cap * 2 : 8;
            uint64_t *g = mc__realloc(*out, cap * sizeof *g);
            if (!g) {
                closedir(d);
                free(*out);
                *out = NULL;
                return mc__fail(MC_ERR_NO_MEMORY, "out of host memory");
            }
            *out = g;
        }
        (*out)[(*n)++] = it;
    }
    closedir(d);
    if (*n) qsort(*out, *n, sizeof **out, cmp_desc);
    return MC_OK;
}

static char *file_path(const char *dir, uint64_t iteration)
{
    return mc__asprintf("%s/" CKPT_PREFIX "%020llu" CKPT_SUFFIX, dir, (unsigned long long)iteration);
}

mc_status mc__ckpt_prepare_dir(const char *dir)
{
    if (!dir || !*dir) return mc__fail(MC_ERR_INVALID_ARGUMENT, "checkpoint_dir is empty");
    if (mkdir(dir, 0777) != 0 && errno != EEXIST)
        return mc__fail(MC_ERR_IO, "cannot create the checkpoint folder %s: %s", dir, strerror(errno));
    if (access(dir, W_OK | X_OK) != 0)
        return mc__fail(MC_ERR_IO, "checkpoint folder %s is not writable: %s", dir, strerror(errno));
    return MC_OK;
}

mc_status mc__ckpt_write(const char *dir, const void *params, size_t params_len, uint64_t iteration,
                         const void *const *state, const size_t *sizes, uint32_t count)
{
    size_t head = 8 + 4 + 4 + 8 + 8 + 8 * (size_t)count;
    uint8_t *h = mc__malloc(head);
    char *path = file_path(dir, iteration);
    if (!h || !path) {
        free(h);
        free(path);
        return mc__fail(MC_ERR_NO_MEMORY, "out of host memory");
    }
    memcpy(h, CKPT_MAGIC, 8);
    put_u32(h + 8, CKPT_VERSION);
    put_u32(h + 12, count);
    put_u64(h + 16, iteration);
    put_u64(h + 24, params_len);
    for (uint32_t i = 0; i < count; i++) put_u64(h + 32 + 8 * i, sizes[i]);
    uint64_t sum = fnv1a(FNV_OFFSET, h, head);
    if (params_len) sum = fnv1a(sum, params, params_len);
    for (uint32_t i = 0; i < count; i++) sum = fnv1a(sum, state[i], sizes[i]);
    uint8_t tail[8];
    put_u64(tail, sum);

    mc__outfile o;
    mc_status s = mc__outfile_open(path, &o);
    if (s == MC_OK) {
        bool ok = fwrite(h, 1, head, o.f) == head && (!params_len || fwrite(params, 1, params_len, o.f) == params_len);
        for (uint32_t i = 0; ok && i < count; i++) ok = fwrite(state[i], 1, sizes[i], o.f) == sizes[i];
        ok = ok && fwrite(tail, 1, 8, o.f) == 8;
        if (!ok) {
            int e = errno;
            mc__outfile_abort(&o);
            s = mc__fail(MC_ERR_IO, "writing checkpoint %s: %s", path, strerror(e));
        } else {
            s = mc__outfile_commit(&o);
        }
    }
    free(h);
    free(path);
    if (s != MC_OK) return s;

    /* The new one is in place: only now do the oldest go. */
    uint64_t *its;
    size_t n;
    if (list_files(dir, &its, &n) != MC_OK) return MC_OK;
    for (size_t i = CKPT_KEEP; i < n; i++) {
        char *old = file_path(dir, its[i]);
        if (old) unlink(old);
        free(old);
    }
    free(its);
    return MC_OK;
}

/* Checks one file against the run; fills state on success. */
static bool check_file(const uint8_t *b, size_t len, const void *params, size_t params_len, const size_t *sizes,
                       uint32_t count, uint64_t name_iter, void *const *state, char *why, size_t cap)
{
    size_t head = 8 + 4 + 4 + 8 + 8 + 8 * (size_t)count;
    if (len < 32 || memcmp(b, CKPT_MAGIC, 8)) return snprintf(why, cap, "not a checkpoint file"), false;
    if (get_u32(b + 8) != CKPT_VERSION)
        return snprintf(why, cap, "format version %u, this program reads %u", get_u32(b + 8), CKPT_VERSION), false;
    if (get_u32(b + 12) != count)
        return snprintf(why, cap, "%u state buffers, this run has %u (another run's)", get_u32(b + 12), count), false;
    if (len < head) return snprintf(why, cap, "truncated (%zu bytes)", len), false;
    size_t total = head + params_len + 8;
    for (uint32_t i = 0; i < count; i++) total += sizes[i];
    uint64_t plen = get_u64(b + 24);
    bool same_sizes = plen == params_len;
    for (uint32_t i = 0; i < count; i++) same_sizes = same_sizes && get_u64(b + 32 + 8 * i) == sizes[i];
    if (same_sizes && len < total) return snprintf(why, cap, "truncated (%zu of %zu bytes)", len, total), false;
    if (same_sizes && len > total) return snprintf(why, cap, "%zu bytes past its end", len - total), false;
    if (same_sizes && get_u64(b + len - 8) != fnv1a(FNV_OFFSET, b, len - 8))
        return snprintf(why, cap, "checksum mismatch (corrupt)"), false;
    if (!same_sizes) {
        for (uint32_t i = 0; i < count; i++)
            if (get_u64(b + 32 + 8 * i) != sizes[i])
                return snprintf(why, cap, "state buffer %u holds %llu bytes, this run's %zu (another run's)", i,
                                (unsigned long long)get_u64(b + 32 + 8 * i), sizes[i]),
                       false;
        return snprintf(why, cap, "the run's parameters differ (%llu bytes of them, this run has %zu)",
                        (unsigned long long)plen, params_len),
               false;
    }
    if (params_len && memcmp(b + head, params, params_len))
        return snprintf(why, cap, "the run's parameters differ (another run's checkpoint)"), false;
    if (get_u64(b + 16) != name_iter)
        return snprintf(why, cap, "holds iteration %llu but is named for %llu", (unsigned long long)get_u64(b + 16),
                        (unsigned long long)name_iter),
               false;
    const uint8_t *p = b + head + params_len;
    for (uint32_t i = 0; i < count; i++) {
        memcpy(state[i], p, sizes[i]);
        p += sizes[i];
    }
    return true;
}

static uint8_t *read_whole(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    uint8_t *buf = NULL;
    size_t n = 0, cap = 0, got;
    do {
        if (n == cap) {
            cap = cap ? cap * 2 : 1 << 16;
            uint8_t *g = mc__realloc(buf, cap);
            if (!g) {
                free(buf);
                fclose(f);
                return NULL;
            }
            buf = g;
        }
        got = fread(buf + n, 1, cap - n, f);
        n += got;
    } while (got);
    bool err = ferror(f);
    fclose(f);
    if (err) {
        free(buf);
        return NULL;
    }
    *len = n;
    return buf ? buf : mc__malloc(1);
}

mc_status mc__ckpt_load(const char *dir, const char *label, const void *params, size_t params_len, const size_t *sizes,
                        uint32_t count, void *const *state, uint64_t *iteration, bool *found)
{
    *found = false;
    uint64_t *its;
    size_t n;
    mc_status s = list_files(dir, &its, &n);
    if (s != MC_OK) return s;
    char reasons[768] = "";
    for (size_t i = 0; i < n; i++) {
        char *path = file_path(dir, its[i]);
        size_t len = 0;
        uint8_t *b = path ? read_whole(path, &len) : NULL;
        char why[256];
        bool ok = false;
        if (!b) snprintf(why, sizeof why, "cannot be read: %s", strerror(errno));
        else ok = check_file(b, len, params, params_len, sizes, count, its[i], state, why, sizeof why);
        free(b);
        if (ok) {
            if (i) mc__log(MC_LOG_WARN, "runner.checkpoint_fallback", "runner '%s': resuming from %s", label, path);
            *iteration = its[i];
            *found = true;
            free(path);
            free(its);
            return MC_OK;
        }
        mc__log(MC_LOG_WARN, "runner.checkpoint_refused", "runner '%s': checkpoint %s refused: %s", label,
                path ? path : "?", why);
        snprintf(reasons + strlen(reasons), sizeof reasons - strlen(reasons),
                 "%s" CKPT_PREFIX "%020llu" CKPT_SUFFIX ": %s", i ? "; " : "", (unsigned long long)its[i], why);
        free(path);
    }
    free(its);
    if (n)
        return mc__fail(MC_ERR_INVALID_STATE, "runner '%s': no checkpoint in %s can be resumed: %s", label, dir,
                        reasons);
    return MC_OK;
}
