/*
 * DOC: The pipeline cache's files (cache_format.h)
 *
 * Reading and writing what lies on disk, with no device in sight: entry
 * headers and key material (every byte read here is untrusted: the parsers
 * never read outside what they are given, and the fuzzer checks that),
 * entry and folder names, the root folder from the environment, which
 * folders and files are the cache's, and the statistics file.
 */
#include "runtime/cache_format.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- bytes: little-endian fields, a growable buffer ---------------------- */

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

void mc__bytes_add(mc__bytes *b, const void *data, size_t len)
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

static void bytes_u32(mc__bytes *b, uint32_t v)
{
    uint8_t t[4];
    put_le(t, v, 4);
    mc__bytes_add(b, t, 4);
}

static void bytes_field(mc__bytes *b, const void *data, size_t len)
{
    uint8_t t[8];
    put_le(t, len, 8);
    mc__bytes_add(b, t, 8);
    mc__bytes_add(b, data, len);
}

/* ---- entry names, folder names, the root ---------------------------------- */

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

/* ---- entries and key material -------------------------------------------- */

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

/* A constants field as mc__cache_encode_constants writes it: a count, then
 * that many (index, size, bytes) in ascending index order, nothing after. */
static const char *check_constants(const mc__cache_str *f)
{
    const uint8_t *p = (const uint8_t *)f->p;
    size_t left = f->len;
    uint32_t n, index, size, last = 0;
    const char *why;
    if ((why = take_u32(&p, &left, &n))) return why;
    if (!n) return "an empty function-constant list in the key material";
    for (uint32_t i = 0; i < n; i++) {
        if ((why = take_u32(&p, &left, &index)) || (why = take_u32(&p, &left, &size))) return why;
        if (i && index <= last) return "function constants out of order in the key material";
        if (size > left) return "a function constant's value runs past the key material";
        p += size;
        left -= size;
        last = index;
    }
    return left ? "trailing bytes after the function constants" : NULL;
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
        (why = take_field(&p, &left, &r.identity)) || (why = take_field(&p, &left, &r.compiler)) ||
        (why = take_u32(&p, &left, &r.language)) || (why = take_field(&p, &left, &r.source)) ||
        (why = take_field(&p, &left, &r.options)) || (why = take_field(&p, &left, &r.function)) ||
        (why = take_u32(&p, &left, &r.max_total_threads_per_threadgroup)) ||
        (why = take_u32(&p, &left, &r.simd_multiple)))
        return why;
    /* optional, so the material of a pipeline without constants is what
     * it was before constants were part of the key */
    if (left && (why = take_field(&p, &left, &r.constants))) return why;
    if (left) return "trailing bytes after the key material";
    if (r.constants.p && (why = check_constants(&r.constants))) return why;
    if (out) *out = r;
    return NULL;
}

void mc__cache_entry_header(uint8_t out[MC__CACHE_HEADER_SIZE], const uint8_t key[MC__CACHE_KEY_SIZE],
                            uint64_t material_len, uint64_t payload_len, const uint8_t payload_sum[32])
{
    memset(out, 0, MC__CACHE_HEADER_SIZE);
    memcpy(out, MC__CACHE_MAGIC, 8);
    put_le(out + 8, MC__CACHE_FORMAT_VERSION, 4);
    put_le(out + 12, MC__CACHE_HEADER_SIZE, 4);
    memcpy(out + 16, key, MC__CACHE_KEY_SIZE);
    put_le(out + 48, material_len, 8);
    put_le(out + 56, payload_len, 8);
    memcpy(out + 64, payload_sum, 32);
}

void mc__cache_encode_material(const mc__cache_material *m, mc__bytes *out)
{
    /* The order mc__cache_parse_material reads. */
    bytes_u32(out, MC__CACHE_FORMAT_VERSION);
    bytes_field(out, m->runtime.p, m->runtime.len);
    bytes_field(out, m->backend.p, m->backend.len);
    bytes_field(out, m->identity.p, m->identity.len);
    bytes_field(out, m->compiler.p, m->compiler.len);
    bytes_u32(out, m->language);
    bytes_field(out, m->source.p, m->source.len);
    bytes_field(out, m->options.p, m->options.len);
    bytes_field(out, m->function.p, m->function.len);
    bytes_u32(out, m->max_total_threads_per_threadgroup);
    bytes_u32(out, m->simd_multiple);
    if (m->constants.len) bytes_field(out, m->constants.p, m->constants.len);
}

static int by_index(const void *a, const void *b)
{
    uint32_t x = (*(const mc_function_constant *const *)a)->index, y = (*(const mc_function_constant *const *)b)->index;
    return x < y ? -1 : x > y;
}

bool mc__cache_encode_constants(const mc_function_constant *fc, uint32_t n, mc__bytes *out)
{
    if (!n) return true;
    const mc_function_constant **order = mc__calloc(n, sizeof *order);
    if (!order) {
        out->oom = true;
        return false;
    }
    for (uint32_t i = 0; i < n; i++) order[i] = &fc[i];
    qsort(order, n, sizeof *order, by_index);
    bool ok = true;
    bytes_u32(out, n);
    for (uint32_t i = 0; i < n && ok; i++) {
        if (i && order[i]->index == order[i - 1]->index) ok = false;
        bytes_u32(out, order[i]->index);
        bytes_u32(out, order[i]->size);
        mc__bytes_add(out, order[i]->value, order[i]->size);
    }
    free(order);
    return ok && !out->oom;
}

/* ---- the layout: which folders and files are the cache's ----------------- */

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

bool mc__cache_is_device_folder_name(const char *name)
{
    /* Every kind a build may have, so a tool built without one still
     * recognises its folders. */
    for (int k = MC_DEVICE_CPU; k <= MC_DEVICE_METAL; k++) {
        const char *kind = mc_device_kind_name((mc_device_kind)k);
        size_t n = strlen(kind);
        if (strncmp(name, kind, n) != 0 || name[n] != '-' || !name[n + 1]) continue;
        n++;
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
    size_t n = strlen(MC__CACHE_TMP_PREFIX);
    if (strncmp(name, MC__CACHE_TMP_PREFIX, n) != 0) return false;
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
    char text[sizeof MC__CACHE_TAG_SIGNATURE];
    bool ok = fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_uid == geteuid() &&
              mc__cache_read_all(fd, (uint8_t *)text, sizeof text - 1) &&
              !memcmp(text, MC__CACHE_TAG_SIGNATURE, sizeof text - 1);
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
    const char *bad = fstat(fd, &st) != 0 ? strerror(errno) : mc__cache_untrusted_dir(&st, why, sizeof why);
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
                    !mc__cache_untrusted_dir(&ds, why, sizeof why);
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

bool mc__cache_read_all(int fd, uint8_t *buf, size_t len)
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

bool mc__cache_write_all(int fd, const void *data, size_t len)
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

/* ---- the statistics file -------------------------------------------------- */

void mc__cache_parse_totals(const char *text, mc__cache_totals *t)
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
#define X(f) \
    if (!strcmp(name, #f)) t->f = v;
                MC__CACHE_TOTALS_FIELDS(X)
#undef X
            }
        }
        p += len;
        if (*p) p++;
    }
}

int mc__cache_open_totals(int folder_fd, int flags)
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
    int fd = mc__cache_open_totals(folder_fd, O_RDONLY);
    if (fd < 0) return;
    char text[4097];
    flock(fd, LOCK_SH);
    ssize_t n = pread(fd, text, sizeof text - 1, 0);
    flock(fd, LOCK_UN);
    close(fd);
    text[n > 0 ? n : 0] = '\0';
    mc__cache_parse_totals(text, out);
}
