/*
 * DOC: The pipeline cache on disk: entries, names, the folder layout
 *
 * Everything about the cache's files that a reader needs without a device:
 * the entry format (the fuzzed parser and its writer), the key material,
 * entry and folder names, the root folder, which folders and files are the
 * cache's, and the statistics file. The CLI (`metal-compute cache`) and
 * the fuzzer use this header alone; the cache itself (cache.h) builds on
 * it. docs/CACHE.md is the reference for the format.
 */
#ifndef MC_RUNTIME_CACHE_FORMAT_H
#define MC_RUNTIME_CACHE_FORMAT_H

#include "core/core.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define MC__CACHE_FORMAT_VERSION 1u
#define MC__CACHE_MAGIC "MCPCACHE" /* 8 bytes, no terminator on disk */
#define MC__CACHE_HEADER_SIZE 96u
#define MC__CACHE_KEY_SIZE 32u /* SHA-256 */
#define MC__CACHE_NAME_LEN 64u /* an entry's file name: the key in lowercase hex */
#define MC__CACHE_STATS_FILE "stats"
/* Marks the root (the Cache Directory Tagging format, which backup tools
 * also honour). */
#define MC__CACHE_TAG_FILE "CACHEDIR.TAG"
#define MC__CACHE_TAG_SIGNATURE "Signature: 8a477f597d28d172789f06886806bc55" /* the tag's first line */
/* Temporary files: ".tmp-<pid>-<n>-<hex>", the tag's ".tmp-<pid>-0-tag". */
#define MC__CACHE_TMP_PREFIX ".tmp-"

/* ---- entries ------------------------------------------------------------- */

/* A parsed entry; pointers point into the bytes given to the parser. */
typedef struct mc__cache_entry {
    uint32_t version;
    uint8_t key[MC__CACHE_KEY_SIZE];
    const uint8_t *material; /* the canonical key material */
    uint64_t material_len;
    const uint8_t *payload; /* what the backend imports */
    uint64_t payload_len;
    uint8_t payload_sum[32];
} mc__cache_entry;

/* Checks an entry's bytes: size, magic, format version, lengths; the key
 * against want_key (the file's name; NULL: not checked); with h, the key
 * against the hash of the material and the payload against its checksum.
 * NULL when every check passes, else the reason (a static string).
 * Never reads outside data[0..len). */
const char *mc__cache_parse_entry(const uint8_t *data, size_t len, const mc__hash *h, const uint8_t *want_key,
                                  mc__cache_entry *out);
/* The header mc__cache_parse_entry reads, for an entry of these lengths
 * (the material and the payload follow it, nothing after). */
void mc__cache_entry_header(uint8_t out[MC__CACHE_HEADER_SIZE], const uint8_t key[MC__CACHE_KEY_SIZE],
                            uint64_t material_len, uint64_t payload_len, const uint8_t payload_sum[32]);

/* ---- key material -------------------------------------------------------- */

/* A growable byte buffer; oom once an append failed (the rest are no-ops). */
typedef struct mc__bytes {
    uint8_t *p;
    size_t n, cap;
    bool oom;
} mc__bytes;
void mc__bytes_add(mc__bytes *b, const void *data, size_t len);

/* The key material decoded (strings are not NUL-terminated). */
typedef struct mc__cache_str {
    const char *p;
    size_t len;
} mc__cache_str;
typedef struct mc__cache_material {
    uint32_t version;
    mc__cache_str runtime, backend, identity, compiler, source, options, function;
    uint32_t language; /* mc_language */
    uint32_t max_total_threads_per_threadgroup;
    uint32_t simd_multiple;
    /* MSL function constants: absent (len 0) when none were given, else
     * their count (u32) and, by ascending index, each one's index (u32),
     * size (u32) and value bytes (mc__cache_encode_constants) */
    mc__cache_str constants;
} mc__cache_material;
/* NULL on success, else the reason. Never reads outside m[0..len). */
const char *mc__cache_parse_material(const uint8_t *m, size_t len, mc__cache_material *out);
/* The canonical serialisation of m (its version field is ignored: the
 * current one is written), appended to out: every field length-prefixed,
 * so no two inputs serialise alike. mc__cache_parse_material reads it. */
void mc__cache_encode_material(const mc__cache_material *m, mc__bytes *out);
/* The canonical form of a set of function constants (the constants field
 * above; nothing for n == 0), whatever order they are given in. false when
 * an index is given twice (or out of memory: out->oom). */
struct mc_function_constant;
bool mc__cache_encode_constants(const struct mc_function_constant *fc, uint32_t n, mc__bytes *out);

/* ---- names and folders --------------------------------------------------- */

/* Hex name of a key (out: MC__CACHE_NAME_LEN + 1 bytes); and the reverse,
 * false when name is not exactly an entry's name. */
void mc__cache_key_name(const uint8_t key[MC__CACHE_KEY_SIZE], char *out);
bool mc__cache_name_key(const char *name, uint8_t key[MC__CACHE_KEY_SIZE]);
/* The folder name of a device identity: "<backend>-<identity>" with every
 * byte outside [A-Za-z0-9._-] replaced by '_'. */
void mc__cache_folder_name(const char *backend, const char *identity, char *out, size_t cap);
/* The root folder from the environment (no I/O). */
mc_status mc__cache_root(char *out, size_t cap);

/* The cache's own layout, so tools touch only what the cache wrote. */
struct stat;
/* A device folder's name: "<cpu|cuda|metal>-<identity>". */
bool mc__cache_is_device_folder_name(const char *name);
/* A temporary file of the cache's: ".tmp-<pid>-<n>-<hex>". */
bool mc__cache_is_tmp_name(const char *name);
/* A folder the cache trusts (as a load does): a directory of the current
 * user that group and others cannot write. NULL, or the reason. */
const char *mc__cache_untrusted_dir(const struct stat *st, char *why, size_t cap);
/* Opens root (into *fd) only when it is the cache's: trusted, and tagged
 * or holding a trusted device folder. MC_ERR_NOT_FOUND when it does not
 * exist; MC_ERR_INVALID_ARGUMENT, with the cause, when it is not a
 * cache (a user's own folder named by MC_CACHE_DIR). */
mc_status mc__cache_open_root(const char *root, int *fd);

/* Reads exactly len bytes and then the end of the file (a file that grew
 * after fstat is not the file that was checked); false otherwise. */
bool mc__cache_read_all(int fd, uint8_t *buf, size_t len);
bool mc__cache_write_all(int fd, const void *data, size_t len);

/* ---- the statistics file ------------------------------------------------- */

/* Counters persisted in each folder's stats file across processes, one
 * "name value" line each. */
#define MC__CACHE_TOTALS_FIELDS(X) \
    X(hits_memory) X(hits_disk) X(misses) X(compiles) X(compile_ns) X(load_ns) X(writes) X(rejected) X(evictions)
typedef struct mc__cache_totals {
    uint64_t hits_memory, hits_disk, misses, compiles, compile_ns, load_ns, writes, rejected, evictions;
} mc__cache_totals;
/* Reads folder_fd's stats file; zeros when it is missing or unreadable. */
void mc__cache_read_totals(int folder_fd, mc__cache_totals *out);
/* The stats file's text -> totals (unknown lines are skipped). */
void mc__cache_parse_totals(const char *text, mc__cache_totals *t);
/* Opens the stats file only when it is safe to trust: ours, regular,
 * private, small. -1 otherwise. */
int mc__cache_open_totals(int folder_fd, int flags);

#endif
