/*
 * metal-compute cache: the pipeline cache from the command line.
 *
 *   cache build MANIFEST   compile a listed set of kernels into the on-disk
 *                          archive ahead of time (F701), in parallel (F159)
 *   cache list             every entry, checked the way a load checks it
 *   cache stats            entries, bytes and lifetime counters per device
 *   cache clear            remove entries
 *
 * The manifest format is described in docs/CACHE.md and by
 * `metal-compute cache build --help`.
 */
#include "benchmarks.h"
#include "cli.h"
#include "core/core.h"
#include "runtime/cache_format.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static bool is_help(const char *a)
{
    return !strcmp(a, "--help") || !strcmp(a, "-h");
}

static void usage(void)
{
    printf(
        "usage: metal-compute cache COMMAND [OPTIONS]\n\n"
        "The pipeline cache keeps compiled kernels in memory and in an on-disk archive, so a\n"
        "program that ran once starts without compiling (docs/CACHE.md).\n\n"
        "commands:\n"
        "  build MANIFEST [--device D]  compile the kernels MANIFEST lists into the archive\n"
        "  list [--device D]            every entry: key, size, last use, language, function\n"
        "  stats [--device D]           entries, bytes and lifetime counters per device identity\n"
        "  clear [--device D]           remove the entries (of one device, or of all)\n\n"
        "environment:\n"
        "  MC_CACHE_DIR        the archive folder (default $XDG_CACHE_HOME/metal-compute,\n"
        "                      else ~/.cache/metal-compute)\n"
        "  MC_CACHE            off | ro | rw | require (default rw; require: a miss is an error,\n"
        "                      never a compile)\n"
        "  MC_CACHE_MAX_BYTES  size cap of the folder, e.g. 268435456 or 256m (default 256m)\n\n"
        "security: the folder holds compiled code that programs load and run. Whoever can write\n"
        "to it can run code as you: entries carry checksums against corruption, not signatures\n"
        "against tampering. The runtime uses a folder and an entry only when they are yours, not\n"
        "writable by group or others, and not symbolic links; it cannot tell an entry you wrote\n"
        "from one written by another program running as you. Keep MC_CACHE_DIR private.\n"
        "These commands touch only the cache's own folders (tagged with CACHEDIR.TAG, or named\n"
        "<device>-<identity>) and only the files the cache writes there.\n");
}

/* Parses [--device D]; anything else is an error. */
static int device_option(const char *cmd, int argc, char **argv, int first, const char **device, const char **file)
{
    for (int i = first; i < argc; i++) {
        if (!strcmp(argv[i], "--device") && i + 1 < argc) {
            *device = argv[++i];
        } else if (file && !*file && argv[i][0] != '-') {
            *file = argv[i];
        } else {
            fprintf(stderr, "metal-compute cache %s: unknown or incomplete option '%s' (try --help)\n", cmd, argv[i]);
            return 2;
        }
    }
    return 0;
}

/* A manifest is a short text; a kernel source is not large either. The
 * caps keep /dev/zero or a runaway file from filling memory. */
#define MANIFEST_MAX_BYTES (1u << 20)
#define SOURCE_MAX_BYTES (64u << 20)

/* Reads a whole regular file of at most cap bytes into a NUL-terminated
 * buffer. NULL with the reason in *why: not a regular file (a FIFO would
 * block, a device never ends), over the cap, unreadable. Opened
 * non-blocking so a FIFO cannot hang the open itself. */
static char *read_text(const char *path, size_t cap, size_t *len, char *why, size_t why_cap)
{
    if (len) *len = 0;
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) {
        snprintf(why, why_cap, "%s", strerror(errno));
        return NULL;
    }
    struct stat st;
    char *buf = NULL;
    if (fstat(fd, &st) != 0) {
        snprintf(why, why_cap, "%s", strerror(errno));
    } else if (!S_ISREG(st.st_mode)) {
        snprintf(why, why_cap, "not a regular file (%s)",
                 S_ISFIFO(st.st_mode)                         ? "a FIFO"
                 : S_ISCHR(st.st_mode) || S_ISBLK(st.st_mode) ? "a device"
                 : S_ISDIR(st.st_mode)                        ? "a folder"
                                                              : "a socket or other special file");
    } else if ((uint64_t)st.st_size > cap) {
        snprintf(why, why_cap, "%lld bytes, over the limit of %zu", (long long)st.st_size, cap);
    } else if (!(buf = malloc((size_t)st.st_size + 1))) {
        snprintf(why, why_cap, "out of memory");
    } else {
        /* At most what fstat said: a file that grows meanwhile is cut
         * there, never read without bound. */
        size_t n = 0, want = (size_t)st.st_size;
        while (n < want) {
            ssize_t got = read(fd, buf + n, want - n);
            if (got < 0 && errno == EINTR) continue;
            if (got <= 0) break;
            n += (size_t)got;
        }
        if (n < want) {
            snprintf(why, why_cap, "%s", n ? "it shrank while being read" : strerror(errno ? errno : EIO));
            free(buf);
            buf = NULL;
        } else {
            buf[n] = '\0';
            if (len) *len = n;
        }
    }
    close(fd);
    return buf;
}

/* ---- build ----------------------------------------------------------------- */

typedef struct manifest_entry {
    int line;
    char *path; /* resolved against the manifest's folder */
    mc_language language;
    char *function;
    char *options; /* the compiler's; NULL when none */
    uint32_t threads;
    bool simd;
    char *label;
    char *source;
    size_t source_len;
    mc_pipeline_future *future;
    bool present;
} manifest_entry;

static mc_language language_word(const char *w, const char *path, bool *ok)
{
    *ok = true;
    if (!strcmp(w, "c")) return MC_LANG_C;
    if (!strcmp(w, "cuda")) return MC_LANG_CUDA;
    if (!strcmp(w, "msl") || !strcmp(w, "metal")) return MC_LANG_MSL;
    if (!strcmp(w, "auto")) {
        const char *dot = strrchr(path, '.');
        if (dot && !strcmp(dot, ".c")) return MC_LANG_C;
        if (dot && !strcmp(dot, ".cu")) return MC_LANG_CUDA;
        if (dot && !strcmp(dot, ".metal")) return MC_LANG_MSL;
    }
    *ok = false;
    return MC_LANG_UNSET;
}

static void free_entries(manifest_entry *e, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(e[i].path);
        free(e[i].function);
        free(e[i].options);
        free(e[i].label);
        free(e[i].source);
        mc_pipeline_future_release(e[i].future);
    }
    free(e);
}

static char *join_words(char **w, int n)
{
    size_t len = 1;
    for (int i = 0; i < n; i++) len += strlen(w[i]) + 1;
    char *s = calloc(1, len);
    for (int i = 0; s && i < n; i++) {
        if (i) strcat(s, " ");
        strcat(s, w[i]);
    }
    return s;
}

/* One kernel a line: FILE LANGUAGE FUNCTION [OPTIONS...]; '#' starts a
 * comment at the beginning of a word. Words "mc:threads=N",
 * "mc:simd-multiple" and "mc:label=TEXT" among the options are pipeline
 * hints, not compiler options. */
static int parse_manifest(const char *manifest, manifest_entry **out, size_t *count)
{
    char why[160];
    size_t text_len;
    char *text = read_text(manifest, MANIFEST_MAX_BYTES, &text_len, why, sizeof why);
    if (!text) {
        fprintf(stderr, "metal-compute cache build: cannot read the manifest %s: %s\n", manifest, why);
        return 2;
    }
    /* Nothing to build is a mistake (the wrong file), not a success. */
    const char *bad = text_len == 0                          ? "it is empty"
                      : memchr(text, '\0', text_len) != NULL ? "it holds NUL bytes: not a text manifest"
                                                             : NULL;
    if (bad) {
        fprintf(stderr, "metal-compute cache build: the manifest %s: %s\n", manifest, bad);
        free(text);
        return 2;
    }
    char base[PATH_MAX];
    snprintf(base, sizeof base, "%s", manifest);
    char *slash = strrchr(base, '/');
    if (slash) *slash = '\0';
    else snprintf(base, sizeof base, ".");

    manifest_entry *list = NULL;
    size_t n = 0, cap = 0;
    int line_no = 0, rc = 0;
    for (char *line = text, *next; line && *line; line = next) {
        next = strchr(line, '\n');
        if (next) *next++ = '\0';
        line_no++;
        char *words[64];
        int nw = 0;
        char *save = NULL;
        for (char *w = strtok_r(line, " \t\r", &save); w; w = strtok_r(NULL, " \t\r", &save)) {
            if (w[0] == '#') break;
            if (nw == 64) {
                fprintf(stderr, "%s:%d: too many words\n", manifest, line_no);
                rc = 2;
                break;
            }
            words[nw++] = w;
        }
        if (rc) break;
        if (nw == 0) continue;
        if (nw < 3) {
            fprintf(stderr, "%s:%d: expected FILE LANGUAGE FUNCTION [OPTIONS...]\n", manifest, line_no);
            rc = 2;
            break;
        }
        if (n == cap) {
            cap = cap ? cap * 2 : 16;
            manifest_entry *nl = realloc(list, cap * sizeof *nl);
            if (!nl) {
                rc = 1;
                break;
            }
            list = nl;
        }
        manifest_entry *e = &list[n++];
        memset(e, 0, sizeof *e);
        e->line = line_no;
        char path[2 * PATH_MAX + 2];
        int plen = words[0][0] == '/' ? snprintf(path, sizeof path, "%s", words[0])
                                      : snprintf(path, sizeof path, "%s/%s", base, words[0]);
        if (plen < 0 || plen >= PATH_MAX) {
            fprintf(stderr, "%s:%d: path too long\n", manifest, line_no);
            rc = 2;
            break;
        }
        e->path = strdup(path);
        bool ok;
        e->language = language_word(words[1], path, &ok);
        if (!ok) {
            fprintf(stderr, "%s:%d: language '%s' is not c, cuda, msl or auto (from the extension)\n", manifest,
                    line_no, words[1]);
            rc = 2;
            break;
        }
        e->function = strdup(words[2]);
        char *opts[64];
        int no = 0;
        for (int i = 3; i < nw; i++) {
            if (!strncmp(words[i], "mc:threads=", 11)) {
                char *end;
                long t = strtol(words[i] + 11, &end, 10);
                if (*end || t < 0 || t > 65536) {
                    fprintf(stderr, "%s:%d: bad %s\n", manifest, line_no, words[i]);
                    rc = 2;
                    break;
                }
                e->threads = (uint32_t)t;
            } else if (!strcmp(words[i], "mc:simd-multiple")) {
                e->simd = true;
            } else if (!strncmp(words[i], "mc:label=", 9)) {
                free(e->label);
                e->label = strdup(words[i] + 9);
            } else if (!strncmp(words[i], "mc:", 3)) {
                fprintf(stderr, "%s:%d: unknown hint '%s' (mc:threads=N, mc:simd-multiple, mc:label=TEXT)\n", manifest,
                        line_no, words[i]);
                rc = 2;
                break;
            } else {
                opts[no++] = words[i];
            }
        }
        if (rc) break;
        if (no) e->options = join_words(opts, no);
        if (!e->path || !e->function || (no && !e->options)) {
            rc = 1;
            break;
        }
    }
    free(text);
    if (!rc && n == 0) {
        fprintf(stderr, "metal-compute cache build: the manifest %s lists no kernels (only comments and blank lines)\n",
                manifest);
        rc = 2;
    }
    if (rc) {
        free_entries(list, n);
        return rc;
    }
    *out = list;
    *count = n;
    return 0;
}

static mc_language device_language(mc_device_kind k)
{
    return k == MC_DEVICE_CPU ? MC_LANG_C : k == MC_DEVICE_CUDA ? MC_LANG_CUDA : MC_LANG_MSL;
}

static mc_pipeline_source_desc entry_desc(const manifest_entry *e)
{
    mc_pipeline_source_desc desc = MC_PIPELINE_SOURCE_DESC_INIT;
    desc.language = e->language;
    desc.source = e->source;
    desc.source_len = e->source_len;
    desc.options = e->options;
    desc.function = e->function;
    desc.max_total_threads_per_threadgroup = e->threads;
    desc.threadgroup_size_is_multiple_of_simd_width = e->simd;
    desc.label = e->label;
    return desc;
}

/* Which of the manifest's kernels a fresh process would not find on disk
 * (a new device handle: its memory cache is empty; require: a miss never
 * compiles). Prints each; returns how many. */
static size_t lost_to_the_cap(const char *device, const char *manifest, manifest_entry *es, size_t n)
{
    mc_device *d = mc_cli_open_device(device, 0);
    if (!d) return 0;
    mc_cache_set_mode(d, MC_CACHE_REQUIRE);
    size_t lost = 0;
    for (size_t i = 0; i < n; i++) {
        manifest_entry *e = &es[i];
        if (!e->source || (!e->present && !e->future)) continue;
        if (e->future && mc_pipeline_future_wait(e->future, 0, NULL, NULL) != MC_OK) continue; /* failed */
        mc_pipeline_source_desc desc = entry_desc(e);
        mc_pipeline *p = NULL;
        if (mc_pipeline_create_from_source(d, &desc, &p, NULL) == MC_OK) {
            mc_pipeline_release(p);
        } else {
            printf("  EVICTED  %s:%d %s (by the size cap)\n", manifest, e->line, e->function);
            lost++;
        }
    }
    mc_device_release(d);
    return lost;
}

static int cmd_build(int argc, char **argv)
{
    if (argc > 1 && is_help(argv[1])) {
        printf(
            "usage: metal-compute cache build MANIFEST [--device D]\n\n"
            "Compiles every kernel MANIFEST lists for device D (default: $MC_DEVICE, else the best)\n"
            "into the on-disk archive, in parallel, so programs find them there and never compile\n"
            "at run time (run them with MC_CACHE=require to make sure). Kernels already archived\n"
            "are left as they are; kernels in another device's native language are skipped\n"
            "(MSL builds everywhere).\n\n"
            "MANIFEST: one kernel a line, '#' starts a comment:\n"
            "  FILE LANGUAGE FUNCTION [OPTIONS...]\n"
            "FILE is relative to the manifest's folder; LANGUAGE is c, cuda, msl or auto (from the\n"
            "extension: .c, .cu, .metal); OPTIONS go to the compiler, except these pipeline hints:\n"
            "  mc:threads=N        max total threads per threadgroup\n"
            "  mc:simd-multiple    threadgroup size is a multiple of the SIMD width\n"
            "  mc:label=TEXT       the pipeline's label\n"
            "example:\n"
            "  # the project's kernels: MSL, which every device runs\n"
            "  kernels/basic.metal  msl  saxpy\n"
            "  kernels/basic.metal  msl  add_one -DWIDE=1 mc:threads=256\n"
            "  kernels/fir.metal    auto fir\n");
        return 0;
    }
    const char *device = NULL, *manifest = NULL;
    int rc = device_option("build", argc, argv, 1, &device, &manifest);
    if (rc) return rc;
    if (!manifest) {
        fprintf(stderr, "metal-compute cache build: which MANIFEST? (try --help)\n");
        return 2;
    }
    manifest_entry *es = NULL;
    size_t n = 0;
    if ((rc = parse_manifest(manifest, &es, &n)) != 0) return rc;
    mc_device *d = mc_cli_open_device(device, 0);
    if (!d) {
        free_entries(es, n);
        return 1;
    }
    mc_device_info info;
    mc_device_get_info(d, &info);
    char dir[PATH_MAX];
    mc_cache_get_dir(d, dir, sizeof dir);
    printf("building %zu kernel%s for %s:%d (%s) into %s\n", n, n == 1 ? "" : "s", mc_device_kind_name(info.kind),
           info.index, info.identity, dir);

    /* 1. what is archived already (require: a miss never compiles) */
    mc_language lang = device_language(info.kind);
    size_t skipped = 0, present = 0, built = 0, failed = 0, pending = 0;
    mc_cache_set_mode(d, MC_CACHE_REQUIRE);
    for (size_t i = 0; i < n; i++) {
        manifest_entry *e = &es[i];
        if (e->language != lang && e->language != MC_LANG_MSL) { /* every device compiles MSL */
            printf("  skip     %s:%d %s (%s; this device compiles %s and msl)\n", manifest, e->line, e->function,
                   mc_language_name(e->language), mc_language_name(lang));
            skipped++;
            continue;
        }
        char why[160];
        e->source = read_text(e->path, SOURCE_MAX_BYTES, &e->source_len, why, sizeof why);
        if (!e->source) {
            printf("  FAILED   %s:%d %s: cannot read %s: %s\n", manifest, e->line, e->function, e->path, why);
            failed++;
            continue;
        }
        mc_pipeline_source_desc desc = entry_desc(e);
        mc_pipeline *p = NULL;
        if (mc_pipeline_create_from_source(d, &desc, &p, NULL) == MC_OK) {
            mc_pipeline_release(p);
            e->present = true;
            present++;
            printf("  present  %s:%d %s\n", manifest, e->line, e->function);
        }
    }
    /* 2. compile the rest on the background threads, report as they end */
    mc_cache_set_mode(d, MC_CACHE_RW);
    mc_cache_stats before;
    mc_cache_get_stats(d, &before);
    mc_pipeline_future **waiting = calloc(n ? n : 1, sizeof *waiting);
    size_t *which = calloc(n ? n : 1, sizeof *which);
    if (!waiting || !which) {
        free(waiting);
        free(which);
        free_entries(es, n);
        mc_device_release(d);
        return mc_cli_fail("cache build", MC_ERR_NO_MEMORY);
    }
    uint64_t t0 = mc__now_ns();
    for (size_t i = 0; i < n; i++) {
        manifest_entry *e = &es[i];
        if ((e->language != lang && e->language != MC_LANG_MSL) || !e->source || e->present) continue;
        mc_pipeline_source_desc desc = entry_desc(e);
        mc_status s = mc_pipeline_create_async(d, &desc, &e->future);
        if (s != MC_OK) {
            printf("  FAILED   %s:%d %s: %s (%s)\n", manifest, e->line, e->function, mc_status_name(s),
                   mc_last_error());
            failed++;
            continue;
        }
        waiting[pending] = e->future;
        which[pending++] = i;
    }
    while (pending) {
        size_t k;
        if (mc_pipeline_future_wait_any(waiting, pending, MC_WAIT_FOREVER, &k) != MC_OK) break;
        manifest_entry *e = &es[which[k]];
        char *log = NULL;
        mc_status s = mc_pipeline_future_wait(waiting[k], 0, NULL, &log);
        if (s == MC_OK) {
            built++;
            printf("  built    %s:%d %s (%.0f ms since start)\n", manifest, e->line, e->function,
                   (mc__now_ns() - t0) / 1e6);
        } else {
            failed++;
            printf("  FAILED   %s:%d %s: %s (%s)\n", manifest, e->line, e->function, mc_status_name(s),
                   mc_last_error());
            if (log) printf("%s\n", log);
        }
        mc_free(log);
        waiting[k] = waiting[--pending];
        which[k] = which[pending];
    }
    free(waiting);
    free(which);
    mc_cache_stats after;
    mc_cache_get_stats(d, &after);
    printf("%zu built, %zu already archived, %zu skipped, %zu failed; %llu entries (%llu bytes) in %s\n", built,
           present, skipped, failed, (unsigned long long)after.disk_entries, (unsigned long long)after.disk_bytes, dir);
    if (built && after.writes - before.writes < built) {
        fprintf(stderr,
                "metal-compute cache build: only %llu of %zu kernels reached the archive (see the warnings "
                "above)\n",
                (unsigned long long)(after.writes - before.writes), built);
        failed++;
    }
    if (after.evictions > before.evictions) {
        size_t lost = lost_to_the_cap(device, manifest, es, n);
        if (lost) {
            fprintf(stderr,
                    "metal-compute cache build: %zu of the kernels built or archived are not in the archive: the "
                    "size cap of %llu bytes (MC_CACHE_MAX_BYTES) evicted them; raise it\n",
                    lost, (unsigned long long)after.max_bytes);
            failed++;
        }
    }
    free_entries(es, n);
    mc_device_release(d);
    return failed ? 1 : 0;
}

/* ---- walking the folders ------------------------------------------------------ */

/* Calls fn for every device folder of the cache (only `only` when set).
 * The root must be the cache's own (tagged, or holding device folders)
 * and trusted the way a load trusts it; a device folder must be named as
 * the cache names them, be ours and not writable by others. Anything else
 * under the root is the user's and is never visited. */
static int each_folder(const char *only, int (*fn)(void *user, const char *root, const char *name, int fd), void *user,
                       int *count)
{
    char root[PATH_MAX];
    mc_status s = mc__cache_root(root, sizeof root);
    if (s != MC_OK) return mc_cli_fail("the cache folder", s);
    *count = 0;
    int root_fd;
    s = mc__cache_open_root(root, &root_fd);
    if (s == MC_ERR_NOT_FOUND) return 0; /* nothing cached yet */
    if (s != MC_OK) {
        fprintf(stderr, "metal-compute cache: %s\n", mc_last_error());
        return 1;
    }
    DIR *dir = fdopendir(root_fd);
    if (!dir) {
        fprintf(stderr, "metal-compute cache: cannot read %s: %s\n", root, strerror(errno));
        close(root_fd);
        return 1;
    }
    int rc = 0;
    struct dirent *de;
    while ((de = readdir(dir)) != NULL) {
        if (!mc__cache_is_device_folder_name(de->d_name)) continue;
        if (only && strcmp(only, de->d_name) != 0) continue;
        int fd = openat(dirfd(dir), de->d_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (fd < 0) continue;
        struct stat st;
        char why[160];
        if (fstat(fd, &st) == 0 && !mc__cache_untrusted_dir(&st, why, sizeof why)) {
            (*count)++;
            rc |= fn(user, root, de->d_name, fd);
        }
        close(fd);
    }
    closedir(dir);
    return rc;
}

/* 0 when the root is the cache's or does not exist yet; else says why
 * and returns 1, before anything is printed as if it were a cache. */
static int root_is_the_caches(void)
{
    char root[PATH_MAX];
    mc_status s = mc__cache_root(root, sizeof root);
    if (s != MC_OK) return mc_cli_fail("the cache folder", s);
    int fd;
    s = mc__cache_open_root(root, &fd);
    if (s == MC_OK) close(fd);
    if (s == MC_OK || s == MC_ERR_NOT_FOUND) return 0;
    fprintf(stderr, "metal-compute cache: %s\n", mc_last_error());
    return 1;
}

/* The folder of --device D, or NULL for all. */
static int folder_of(const char *device, char *out, size_t cap, const char **only)
{
    *only = NULL;
    if (!device) return 0;
    mc_device *d = mc_cli_open_device(device, 0);
    if (!d) return 1;
    char dir[PATH_MAX];
    mc_status s = mc_cache_get_dir(d, dir, sizeof dir);
    mc_device_release(d);
    if (s != MC_OK) return mc_cli_fail("the cache folder", s);
    const char *slash = strrchr(dir, '/');
    snprintf(out, cap, "%s", slash ? slash + 1 : dir);
    *only = out;
    return 0;
}

static void human_bytes(uint64_t b, char *out, size_t cap)
{
    if (b >= (1ull << 30)) snprintf(out, cap, "%.1f GiB", b / 1073741824.0);
    else if (b >= (1ull << 20)) snprintf(out, cap, "%.1f MiB", b / 1048576.0);
    else if (b >= 1024) snprintf(out, cap, "%.1f KiB", b / 1024.0);
    else snprintf(out, cap, "%llu B", (unsigned long long)b);
}

/* ---- list ------------------------------------------------------------------------ */

typedef struct list_ctx {
    mc__hash *hash;
    uint64_t entries, bytes, bad;
} list_ctx;

/* Reads and checks one entry the way a load would; prints it. */
static void list_entry(list_ctx *c, int dfd, const char *name)
{
    uint8_t key[MC__CACHE_KEY_SIZE];
    mc__cache_name_key(name, key);
    int fd = openat(dfd, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    struct stat st;
    const char *why = NULL;
    uint8_t *data = NULL;
    if (fd < 0) why = errno == ELOOP ? "a symbolic link" : "cannot be opened";
    else if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) why = "not a regular file";
    else if (st.st_uid != geteuid()) why = "owned by another user";
    else if (st.st_mode & 022) why = "writable by group or others";
    else if (st.st_size > (1ll << 31)) why = "too large";
    else if (!(data = malloc((size_t)st.st_size + 1))) why = "out of memory";
    else if (pread(fd, data, (size_t)st.st_size, 0) != st.st_size) why = "cannot be read";
    mc__cache_entry e;
    mc__cache_material m;
    memset(&m, 0, sizeof m);
    if (!why) why = mc__cache_parse_entry(data, (size_t)st.st_size, c->hash, key, &e);
    if (!why) why = mc__cache_parse_material(e.material, (size_t)e.material_len, &m);
    char when[32] = "?", size[32] = "?";
    if (fd >= 0 && fstat(fd, &st) == 0) {
        struct tm tm;
        time_t t = st.st_mtime;
        if (localtime_r(&t, &tm)) strftime(when, sizeof when, "%Y-%m-%d %H:%M", &tm);
        human_bytes((uint64_t)st.st_size, size, sizeof size);
        c->bytes += (uint64_t)st.st_size;
    }
    if (fd >= 0) close(fd);
    c->entries++;
    if (why) {
        c->bad++;
        printf("  %.16s  %10s  %s  BAD: %s\n", name, size, when, why);
    } else {
        printf("  %.16s  %10s  %s  %-5s %.*s%s%.*s%s (%zu source bytes)\n", name, size, when,
               mc_language_name((mc_language)m.language), (int)MC__MIN(m.function.len, 64), m.function.p,
               m.options.len ? "  options: " : "", (int)MC__MIN(m.options.len, 80), m.options.p,
               m.max_total_threads_per_threadgroup || m.simd_multiple ? "  (hints)" : "", m.source.len);
    }
    free(data);
}

static int list_folder(void *user, const char *root, const char *name, int fd)
{
    list_ctx *c = user;
    printf("%s/%s\n", root, name);
    int dup_fd = openat(fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    DIR *dir = dup_fd >= 0 ? fdopendir(dup_fd) : NULL;
    if (!dir) {
        if (dup_fd >= 0) close(dup_fd);
        return 1;
    }
    struct dirent *de;
    uint8_t key[MC__CACHE_KEY_SIZE];
    uint64_t before = c->entries;
    while ((de = readdir(dir)) != NULL)
        if (mc__cache_name_key(de->d_name, key)) list_entry(c, fd, de->d_name);
    closedir(dir);
    if (c->entries == before) printf("  (no entries)\n");
    return 0;
}

static int cmd_list(int argc, char **argv)
{
    if (argc > 1 && is_help(argv[1])) {
        printf(
            "usage: metal-compute cache list [--device D]\n\n"
            "Lists every entry of the on-disk archive (or of device D's folder): the start of its key,\n"
            "size, last use, language, function and options. Each entry is checked the way loading\n"
            "checks it; a bad one says why (it would be refused and rebuilt).\n");
        return 0;
    }
    const char *device = NULL, *only;
    char folder[PATH_MAX];
    int rc = device_option("list", argc, argv, 1, &device, NULL);
    if (rc || (rc = root_is_the_caches()) || (rc = folder_of(device, folder, sizeof folder, &only))) return rc;
    char why[160];
    list_ctx c = {mc__hash_open(why, sizeof why), 0, 0, 0};
    if (!c.hash) printf("(no SHA-256 library: %s; checksums are not verified)\n", why);
    int count = 0;
    rc = each_folder(only, list_folder, &c, &count);
    char b[32];
    human_bytes(c.bytes, b, sizeof b);
    if (!count) printf("the pipeline cache is empty\n");
    else printf("%llu entries, %s, %llu bad\n", (unsigned long long)c.entries, b, (unsigned long long)c.bad);
    mc__hash_close(c.hash);
    return rc;
}

/* ---- stats ------------------------------------------------------------------------- */

typedef struct stats_ctx {
    uint64_t entries, bytes;
    mc__cache_totals sum;
} stats_ctx;

static int stats_folder(void *user, const char *root, const char *name, int fd)
{
    (void)root;
    stats_ctx *c = user;
    int dup_fd = openat(fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    DIR *dir = dup_fd >= 0 ? fdopendir(dup_fd) : NULL;
    if (!dir) {
        if (dup_fd >= 0) close(dup_fd);
        return 1;
    }
    uint64_t entries = 0, bytes = 0;
    struct dirent *de;
    uint8_t key[MC__CACHE_KEY_SIZE];
    while ((de = readdir(dir)) != NULL) {
        struct stat st;
        if (mc__cache_name_key(de->d_name, key) && fstatat(fd, de->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
            S_ISREG(st.st_mode)) {
            entries++;
            bytes += (uint64_t)st.st_size;
        }
    }
    closedir(dir);
    mc__cache_totals t;
    mc__cache_read_totals(fd, &t);
    char b[32];
    human_bytes(bytes, b, sizeof b);
    printf("%s\n", name);
    printf("  entries %llu, %s\n", (unsigned long long)entries, b);
    printf("  requests: %llu from memory, %llu from disk, %llu missed; %llu compiled\n",
           (unsigned long long)t.hits_memory, (unsigned long long)t.hits_disk, (unsigned long long)t.misses,
           (unsigned long long)t.compiles);
    printf("  time: %.1f ms compiling (%.1f ms each), %.2f ms loading (%.3f ms each)\n", t.compile_ns / 1e6,
           t.compiles ? t.compile_ns / 1e6 / (double)t.compiles : 0.0, t.load_ns / 1e6,
           t.hits_disk ? t.load_ns / 1e6 / (double)t.hits_disk : 0.0);
    printf("  written %llu, refused %llu, evicted %llu\n", (unsigned long long)t.writes, (unsigned long long)t.rejected,
           (unsigned long long)t.evictions);
    c->entries += entries;
    c->bytes += bytes;
#define ADD(f) c->sum.f += t.f;
    ADD(hits_memory)
    ADD(hits_disk)
    ADD(misses)
    ADD(compiles)
    ADD(compile_ns)
    ADD(load_ns)
    ADD(writes)
    ADD(rejected)
    ADD(evictions)
#undef ADD
    return 0;
}

static int cmd_stats(int argc, char **argv)
{
    if (argc > 1 && is_help(argv[1])) {
        printf(
            "usage: metal-compute cache stats [--device D]\n\n"
            "Per device identity (or for device D): entries and bytes on disk, and the counters every\n"
            "process adds up when it closes a device: requests served from memory and from disk,\n"
            "misses, compilations, time spent compiling and loading, entries written, refused and\n"
            "evicted. A running program reads its own with mc_cache_get_stats.\n");
        return 0;
    }
    const char *device = NULL, *only;
    char folder[PATH_MAX], root[PATH_MAX];
    int rc = device_option("stats", argc, argv, 1, &device, NULL);
    if (rc || (rc = root_is_the_caches()) || (rc = folder_of(device, folder, sizeof folder, &only))) return rc;
    if (mc__cache_root(root, sizeof root) != MC_OK) return mc_cli_fail("the cache folder", MC_ERR_NOT_FOUND);
    const char *mode = getenv("MC_CACHE"), *cap = getenv("MC_CACHE_MAX_BYTES");
    printf("pipeline cache %s (mode %s, cap %s)\n", root, mode && *mode ? mode : "rw", cap && *cap ? cap : "256m");
    stats_ctx c;
    memset(&c, 0, sizeof c);
    int count = 0;
    rc = each_folder(only, stats_folder, &c, &count);
    char b[32];
    human_bytes(c.bytes, b, sizeof b);
    if (!count) printf("(empty)\n");
    else if (count > 1)
        printf("total: %llu entries, %s; %llu compiled, %llu loaded from disk\n", (unsigned long long)c.entries, b,
               (unsigned long long)c.sum.compiles, (unsigned long long)c.sum.hits_disk);
    return rc;
}

/* ---- clear --------------------------------------------------------------------------- */

typedef struct clear_ctx {
    uint64_t files, bytes;
} clear_ctx;

static int clear_folder(void *user, const char *root, const char *name, int fd)
{
    clear_ctx *c = user;
    int dup_fd = openat(fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    DIR *dir = dup_fd >= 0 ? fdopendir(dup_fd) : NULL;
    if (!dir) {
        if (dup_fd >= 0) close(dup_fd);
        return 1;
    }
    int rc = 0;
    struct dirent *de;
    uint8_t key[MC__CACHE_KEY_SIZE];
    while ((de = readdir(dir)) != NULL) {
        /* Only what the cache writes: entries, its temporary files, the
         * statistics; regular files of ours, never through a link. */
        bool entry = mc__cache_name_key(de->d_name, key);
        if (!entry && !mc__cache_is_tmp_name(de->d_name) && strcmp(de->d_name, MC__CACHE_STATS_FILE) != 0) continue;
        struct stat st;
        if (fstatat(fd, de->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0 || !S_ISREG(st.st_mode) || st.st_uid != geteuid())
            continue;
        if (unlinkat(fd, de->d_name, 0) != 0) {
            fprintf(stderr, "metal-compute cache clear: cannot remove %s/%s/%s: %s\n", root, name, de->d_name,
                    strerror(errno));
            rc = 1;
            continue;
        }
        if (entry) {
            c->files++;
            c->bytes += (uint64_t)st.st_size;
        }
    }
    closedir(dir);
    char root_fd_path[PATH_MAX + 256 + 2];
    snprintf(root_fd_path, sizeof root_fd_path, "%s/%s", root, name);
    rmdir(root_fd_path); /* only when nothing else is in it */
    return rc;
}

static int cmd_clear(int argc, char **argv)
{
    if (argc > 1 && is_help(argv[1])) {
        printf(
            "usage: metal-compute cache clear [--device D]\n\n"
            "Removes every entry of the on-disk archive (or of device D's folder), with the folders'\n"
            "statistics. Only files of the current user are touched; programs running now keep the\n"
            "pipelines they hold.\n");
        return 0;
    }
    const char *device = NULL, *only;
    char folder[PATH_MAX];
    int rc = device_option("clear", argc, argv, 1, &device, NULL);
    if (rc || (rc = root_is_the_caches()) || (rc = folder_of(device, folder, sizeof folder, &only))) return rc;
    clear_ctx c = {0, 0};
    int count = 0;
    rc = each_folder(only, clear_folder, &c, &count);
    char b[32];
    human_bytes(c.bytes, b, sizeof b);
    printf("removed %llu entr%s (%s) from %d folder%s\n", (unsigned long long)c.files, c.files == 1 ? "y" : "ies", b,
           count, count == 1 ? "" : "s");
    return rc;
}

int mc_cli_cache(int argc, char **argv)
{
    if (argc < 2 || is_help(argv[1])) {
        usage();
        return argc < 2 ? 2 : 0;
    }
    const char *sub = argv[1];
    if (!strcmp(sub, "build")) return cmd_build(argc - 1, argv + 1);
    if (!strcmp(sub, "list")) return cmd_list(argc - 1, argv + 1);
    if (!strcmp(sub, "stats")) return cmd_stats(argc - 1, argv + 1);
    if (!strcmp(sub, "clear")) return cmd_clear(argc - 1, argv + 1);
    /* not in the help: the new process of `bench --only pipeline-cache` */
    if (!strcmp(sub, "__bench-child")) return mc_bench_pipeline_cache_child(argc - 1, argv + 1);
    fprintf(stderr, "metal-compute cache: unknown command '%s' (try --help)\n", sub);
    return 2;
}
