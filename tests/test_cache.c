/* The pipeline cache: keys, memory, the on-disk archive and every refusal,
 * modes, eviction, statistics, concurrency and asynchronous creation.
 * Each test gets its own temporary MC_CACHE_DIR; bad entries are made for
 * real (truncated, flipped, re-versioned, renamed, re-owned, re-moded). */
#include "mc_test.h"

#include "runtime/cache_format.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <pthread.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* ---- fixtures ---------------------------------------------------------- */

static char cache_root[512];

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    chmod(path, 0700); /* a test may have made it read-only */
    remove(path);
    return 0;
}

static void rm_tree(const char *dir)
{
    nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* A fresh cache root for this test, in MC_CACHE_DIR. */
static const char *fresh_root(void)
{
    const char *tmp = getenv("TMPDIR");
    snprintf(cache_root, sizeof cache_root, "%s/mc-test-cache-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(cache_root)) {
        fprintf(stderr, "mkdtemp: %s\n", strerror(errno));
        exit(1);
    }
    setenv("MC_CACHE_DIR", cache_root, 1);
    unsetenv("MC_CACHE");
    unsetenv("MC_CACHE_MAX_BYTES");
    return cache_root;
}

/* The log, counted by identifier. */
static struct {
    pthread_mutex_t lock;
    int rejected, unusable, no_hash, other_warnings;
    char last_rejected[1024];
} logs = {PTHREAD_MUTEX_INITIALIZER, 0, 0, 0, 0, ""};

static void log_cb(void *user, mc_log_level level, const char *id, const char *message)
{
    (void)user;
    pthread_mutex_lock(&logs.lock);
    if (!strcmp(id, "cache.entry_rejected")) {
        logs.rejected++;
        snprintf(logs.last_rejected, sizeof logs.last_rejected, "%s", message);
    } else if (!strcmp(id, "cache.dir_unusable")) {
        logs.unusable++;
    } else if (!strcmp(id, "cache.no_hash")) {
        logs.no_hash++;
    } else if (level >= MC_LOG_WARN) {
        logs.other_warnings++;
        fprintf(stderr, "log: [%s] %s\n", id, message);
    }
    pthread_mutex_unlock(&logs.lock);
}

static void capture_log(void)
{
    pthread_mutex_lock(&logs.lock);
    logs.rejected = logs.unusable = logs.no_hash = logs.other_warnings = 0;
    logs.last_rejected[0] = '\0';
    pthread_mutex_unlock(&logs.lock);
    mc_log_set_callback(log_cb, NULL, MC_LOG_INFO);
}

static int log_count(int *field)
{
    pthread_mutex_lock(&logs.lock);
    int n = *field;
    pthread_mutex_unlock(&logs.lock);
    return n;
}

typedef struct kernel {
    char *source;
    mc_language lang;
} kernel;

static kernel basic_kernel(mc_device *d)
{
    kernel k;
    k.source = mct_kernel_source(d, "basic", &k.lang);
    return k;
}

static mc_pipeline_source_desc desc_for(const kernel *k, const char *fn)
{
    mc_pipeline_source_desc desc = MC_PIPELINE_SOURCE_DESC_INIT;
    desc.language = k->lang;
    desc.source = k->source;
    desc.function = fn;
    return desc;
}

static mc_status make(mc_device *d, const kernel *k, const char *fn, mc_pipeline **out)
{
    mc_pipeline_source_desc desc = desc_for(k, fn);
    return mc_pipeline_create_from_source(d, &desc, out, NULL);
}

/* Builds fn through the cache and lets the pipeline go. */
static mc_status make_only(mc_device *d, const kernel *k, const char *fn)
{
    mc_pipeline *p = NULL;
    mc_status s = make(d, k, fn, &p);
    mc_pipeline_release(p);
    return s;
}

/* A fresh cache root (the log captured), a device and the basic kernel. */
static int open_fixture(mc_device **d, kernel *k)
{
    fresh_root();
    capture_log();
    CHECK((*d = mct_open_device(0)));
    *k = basic_kernel(*d);
    CHECK(k->source);
    return 0;
}

/* Ends a test made with open_fixture: the device, the kernel, the root. */
static int close_fixture(mc_device *d, kernel *k)
{
    mc_device_release(d);
    free(k->source);
    rm_tree(cache_root);
    return 0;
}

/* Closes d and opens a fresh device, which sees only what is on disk (a
 * new process would see the same); NULL with a message on failure. */
static mc_device *reopen(mc_device *d)
{
    mc_device_release(d);
    mc_device *fresh = mct_open_device(0);
    if (!fresh) fprintf(stderr, "reopen: %s\n", mc_last_error());
    return fresh;
}

static mc_cache_stats stats_of(mc_device *d)
{
    mc_cache_stats s;
    memset(&s, 0, sizeof s);
    if (mc_cache_get_stats(d, &s) != MC_OK) fprintf(stderr, "mc_cache_get_stats: %s\n", mc_last_error());
    return s;
}

/* Entry names in the device's folder (up to max), sorted. */
static int entries(mc_device *d, char names[][65], int max, int *tmp_files)
{
    char dir[1024];
    if (mc_cache_get_dir(d, dir, sizeof dir) != MC_OK) return -1;
    DIR *dp = opendir(dir);
    if (tmp_files) *tmp_files = 0;
    if (!dp) return 0;
    int n = 0;
    struct dirent *de;
    uint8_t key[32];
    while ((de = readdir(dp)) != NULL) {
        if (mc__cache_name_key(de->d_name, key)) {
            if (n < max) memcpy(names[n], de->d_name, 65); /* 64 hex digits and the terminator */
            n++;
        } else if (tmp_files && !strncmp(de->d_name, ".tmp-", 5)) {
            (*tmp_files)++;
        }
    }
    closedir(dp);
    for (int i = 1; i < n && i < max; i++)
        for (int j = i; j > 0 && strcmp(names[j - 1], names[j]) > 0; j--) {
            char t[65];
            memcpy(t, names[j], 65);
            memcpy(names[j], names[j - 1], 65);
            memcpy(names[j - 1], t, 65);
        }
    return n;
}

static void entry_path(mc_device *d, const char *name, char *out, size_t cap)
{
    char dir[1024];
    mc_cache_get_dir(d, dir, sizeof dir);
    if (strlen(dir) + strlen(name) + 2 > cap) {
        fprintf(stderr, "entry path too long\n");
        exit(1);
    }
    strcpy(out, dir);
    strcat(out, "/");
    strcat(out, name);
}

/* The name in `after` that is not in `before`. */
static const char *new_name(char before[][65], int nb, char after[][65], int na)
{
    for (int i = 0; i < na; i++) {
        bool seen = false;
        for (int j = 0; j < nb; j++) seen |= !strcmp(after[i], before[j]);
        if (!seen) return after[i];
    }
    return NULL;
}

/* Runs add_one over 64 zeros and checks every element became 1. */
static int run_add_one(mc_device *d, mc_pipeline *p)
{
    uint32_t n = 64, host[64];
    mc_buffer_desc bd = MC_BUFFER_DESC_INIT;
    bd.size = sizeof host;
    mc_buffer *b = NULL;
    mc_queue *q = NULL;
    mc_cmdbuf *cb = NULL;
    mc_pass *pass;
    CHECK_OK(mc_buffer_create(d, &bd, &b));
    CHECK_OK(mc_queue_create(d, NULL, &q));
    CHECK_OK(mc_cmdbuf_create(q, NULL, &cb));
    CHECK_OK(mc_cmdbuf_begin_pass(cb, "add_one", &pass));
    CHECK_OK(mc_pass_set_pipeline(pass, p));
    CHECK_OK(mc_pass_set_buffer(pass, 0, b, 0));
    CHECK_OK(mc_pass_set_bytes(pass, 1, &n, sizeof n));
    CHECK_OK(mc_pass_dispatch(pass, (mc_size3){1, 1, 1}, (mc_size3){64, 1, 1}));
    CHECK_OK(mc_pass_end(pass));
    CHECK_OK(mc_cmdbuf_commit(cb));
    CHECK_OK(mc_cmdbuf_wait(cb, MC_WAIT_FOREVER));
    CHECK_OK(mc_cmdbuf_status(cb, NULL));
    CHECK_OK(mc_buffer_read(b, 0, host, sizeof host));
    for (int i = 0; i < 64; i++) CHECK_EQ(host[i], 1);
    mc_cmdbuf_release(cb);
    mc_queue_release(q);
    mc_buffer_release(b);
    return 0;
}

/* ---- keys: same input hits, different inputs never share ---------------- */

MC_TEST(cache_same_input_hits_different_inputs_miss)
{
    mc_device *d;
    kernel k;
    if (open_fixture(&d, &k)) return 1;
    size_t len = strlen(k.source);
    char *longer = malloc(len + 2);
    CHECK(longer);
    memcpy(longer, k.source, len);
    memcpy(longer + len, "\n", 2);

    mc_pipeline_source_desc variants[6];
    for (int i = 0; i < 6; i++) variants[i] = desc_for(&k, "add_one");
    variants[1].options = "-DMC_TEST_OPTION=1";
    variants[2].function = "iota";
    variants[3].source = longer;
    variants[4].max_total_threads_per_threadgroup = 256;
    variants[5].threadgroup_size_is_multiple_of_simd_width = true;

    for (int i = 0; i < 6; i++) {
        mc_pipeline *p = NULL;
        CHECK_OK(mc_pipeline_create_from_source(d, &variants[i], &p, NULL));
        mc_pipeline_release(p);
    }
    mc_cache_stats s = stats_of(d);
    CHECK_EQ(s.compiles, 6);
    CHECK_EQ(s.misses, 6);
    CHECK_EQ(s.writes, 6);
    CHECK_EQ(s.disk_entries, 6);
    CHECK_EQ(s.memory_entries, 6);
    char names[8][65];
    CHECK_EQ(entries(d, names, 8, NULL), 6);

    /* the same inputs hit memory; a label is not part of the key */
    for (int i = 0; i < 6; i++) {
        mc_pipeline *p = NULL;
        variants[i].label = "another label";
        CHECK_OK(mc_pipeline_create_from_source(d, &variants[i], &p, NULL));
        mc_pipeline_release(p);
    }
    s = stats_of(d);
    CHECK_EQ(s.compiles, 6);
    CHECK_EQ(s.hits_memory, 6);
    mc_device_release(d);

    /* and the disk in a fresh device */
    CHECK((d = mct_open_device(0)));
    for (int i = 0; i < 6; i++) {
        mc_pipeline *p = NULL;
        CHECK_OK(mc_pipeline_create_from_source(d, &variants[i], &p, NULL));
        mc_pipeline_release(p);
    }
    s = stats_of(d);
    CHECK_EQ(s.compiles, 0);
    CHECK_EQ(s.hits_disk, 6);
    CHECK_EQ(s.rejected, 0);
    CHECK_GT(s.load_ns, 0);
    CHECK_EQ(log_count(&logs.rejected), 0);
    free(longer);
    return close_fixture(d, &k);
}

MC_TEST(cache_disk_pipeline_runs)
{
    mc_device *d;
    kernel k;
    if (open_fixture(&d, &k)) return 1;
    mc_pipeline *p = NULL;
    CHECK_OK(make(d, &k, "add_one", &p));
    CHECK_EQ(run_add_one(d, p), 0);
    mc_pipeline_release(p);

    CHECK((d = reopen(d)));
    CHECK_OK(make(d, &k, "add_one", &p));
    CHECK_EQ(stats_of(d).hits_disk, 1);
    mc_pipeline_info info;
    CHECK_OK(mc_pipeline_get_info(p, &info));
    CHECK_GT(info.max_total_threads_per_threadgroup, 0);
    CHECK_EQ(run_add_one(d, p), 0);
    /* a memory hit makes another working pipeline from the same code */
    mc_pipeline *p2 = NULL;
    CHECK_OK(make(d, &k, "add_one", &p2));
    CHECK(p2 != p);
    CHECK_EQ(run_add_one(d, p2), 0);
    mc_pipeline_release(p2);
    /* the pipeline keeps its device open after the caller lets it go */
    mc_device_release(d);
    CHECK_OK(mc_pipeline_get_info(p, &info));
    mc_pipeline_release(p);
    free(k.source);
    rm_tree(cache_root);
    return 0;
}

MC_TEST(cache_bad_arguments)
{
    mc_device *d;
    kernel k;
    if (open_fixture(&d, &k)) return 1;
    mc_pipeline *p = NULL;
    mc_pipeline_source_desc desc = desc_for(&k, "add_one");
    CHECK_STATUS(mc_pipeline_create_from_source(NULL, &desc, &p, NULL), MC_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(mc_pipeline_create_from_source(d, NULL, &p, NULL), MC_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(mc_pipeline_create_from_source(d, &desc, NULL, NULL), MC_ERR_INVALID_ARGUMENT);
    desc.function = "";
    CHECK_STATUS(mc_pipeline_create_from_source(d, &desc, &p, NULL), MC_ERR_INVALID_ARGUMENT);
    desc = desc_for(&k, "add_one");
    desc.max_total_threads_per_threadgroup = 1u << 30;
    CHECK_STATUS(mc_pipeline_create_from_source(d, &desc, &p, NULL), MC_ERR_INVALID_ARGUMENT);
    desc = desc_for(&k, "no_such_function");
    CHECK_STATUS(mc_pipeline_create_from_source(d, &desc, &p, NULL), MC_ERR_NOT_FOUND);
    CHECK(p == NULL);
    desc = desc_for(&k, "add_one");
    desc.language = MC_LANG_UNSET; /* the device's own: the MSL kernel compiles as MSL on metal only */
    CHECK_STATUS(mc_pipeline_create_from_source(d, &desc, &p, NULL),
                 mct_device_kind(d) == MC_DEVICE_METAL ? MC_OK : MC_ERR_COMPILE);
    if (p) mc_pipeline_release(p);
    CHECK_STATUS(mc_cache_set_mode(d, (mc_cache_mode)9), MC_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(mc_cache_get_stats(d, NULL), MC_ERR_INVALID_ARGUMENT);
    char small[4];
    CHECK_STATUS(mc_cache_get_dir(d, small, sizeof small), MC_ERR_INVALID_ARGUMENT);
    char dir[1024];
    CHECK_OK(mc_cache_get_dir(NULL, dir, sizeof dir));
    CHECK(!strcmp(dir, cache_root));
    CHECK(!strcmp(mc_cache_mode_name(MC_CACHE_REQUIRE), "require"));
    return close_fixture(d, &k);
}

MC_TEST(cache_compile_error_is_reported_not_cached)
{
    fresh_root();
    mc_device *d = mct_open_device(0);
    CHECK(d);
    mc_pipeline_source_desc desc = MC_PIPELINE_SOURCE_DESC_INIT;
    desc.source = "this is not a kernel";
    desc.function = "nothing";
    mc_pipeline *p = NULL;
    char *log = NULL;
    CHECK_STATUS(mc_pipeline_create_from_source(d, &desc, &p, &log), MC_ERR_COMPILE);
    CHECK(log != NULL);
    mc_free(log);
    CHECK_STATUS(mc_pipeline_create_from_source(d, &desc, &p, NULL), MC_ERR_COMPILE);
    mc_cache_stats s = stats_of(d);
    CHECK_EQ(s.compiles, 2); /* failures are not remembered */
    CHECK_EQ(s.writes, 0);
    CHECK_EQ(s.memory_entries, 0);
    mc_device_release(d);
    rm_tree(cache_root);
    return 0;
}

/* ---- refusals ------------------------------------------------------------- */

typedef void (*spoil_fn)(const char *path);

static void spoil_truncate(const char *path)
{
    struct stat st;
    stat(path, &st);
    if (truncate(path, st.st_size / 2) != 0) perror("truncate");
}

static void spoil_empty(const char *path)
{
    if (truncate(path, 0) != 0) perror("truncate");
}

static void flip_byte(const char *path, long offset)
{
    FILE *f = fopen(path, "r+b");
    if (!f) return;
    if (offset < 0) {
        fseek(f, 0, SEEK_END);
        offset += ftell(f);
    }
    fseek(f, offset, SEEK_SET);
    int c = fgetc(f);
    fseek(f, offset, SEEK_SET);
    fputc(c ^ 0x01, f);
    fclose(f);
}

static void spoil_payload(const char *path)
{
    flip_byte(path, -1); /* the last byte is the payload's */
}

static void spoil_header_key(const char *path)
{
    flip_byte(path, 16);
}

static void spoil_magic(const char *path)
{
    flip_byte(path, 0);
}

static void spoil_material(const char *path)
{
    flip_byte(path, MC__CACHE_HEADER_SIZE + 2);
}

static void spoil_version(const char *path)
{
    FILE *f = fopen(path, "r+b");
    if (!f) return;
    fseek(f, 8, SEEK_SET);
    const unsigned char v2[4] = {MC__CACHE_FORMAT_VERSION + 1, 0, 0, 0};
    fwrite(v2, 1, 4, f);
    fclose(f);
}

static void spoil_trailing(const char *path)
{
    FILE *f = fopen(path, "ab");
    if (!f) return;
    fputs("garbage", f);
    fclose(f);
}

static void spoil_mode(const char *path)
{
    chmod(path, 0666);
}

static void spoil_group_mode(const char *path)
{
    chmod(path, 0620);
}

static void spoil_owner(const char *path)
{
    if (chown(path, 65534, 65534) != 0) perror("chown");
}

static void spoil_symlink(const char *path)
{
    /* a link to a perfectly good copy: still refused (O_NOFOLLOW) */
    char copy[1100];
    snprintf(copy, sizeof copy, "%s.elsewhere", path);
    rename(path, copy);
    if (symlink(copy, path) != 0) perror("symlink");
}

static void spoil_directory(const char *path)
{
    unlink(path);
    mkdir(path, 0700);
}

/* Closes d, spoils the one entry it archived, and opens a fresh device,
 * which must read the spoiled file. name and path (cap bytes) receive the
 * entry's. NULL, with a message, on failure. */
static mc_device *spoil_and_reopen(mc_device *d, spoil_fn spoil, char name[65], char *path, size_t cap)
{
    char names[4][65];
    int n = entries(d, names, 4, NULL);
    if (n == 1) {
        memcpy(name, names[0], 65);
        entry_path(d, name, path, cap);
    }
    mc_device_release(d);
    if (n != 1) {
        fprintf(stderr, "spoil_and_reopen: %d entries, expected 1\n", n);
        return NULL;
    }
    spoil(path);
    mc_device *fresh = mct_open_device(0);
    if (!fresh) fprintf(stderr, "spoil_and_reopen: %s\n", mc_last_error());
    return fresh;
}

/* What happens to a refused file: removed and rebuilt, replaced by the
 * rebuild's rename (not ours to remove), or left in place (a folder:
 * neither removed nor replaced, so refused each time). */
typedef enum { REBUILT_REMOVED, REBUILT_REPLACED, REBUILT_NEVER } rebuilt;

/* Builds one entry, spoils it, and checks that the next device refuses it
 * with `reason` logged once, compiles, and (unless REBUILT_NEVER) leaves a
 * valid entry behind. */
static int refused_and_rebuilt(spoil_fn spoil, const char *reason, rebuilt after)
{
    mc_device *d;
    kernel k;
    if (open_fixture(&d, &k)) return 1;
    mc_pipeline *p = NULL;
    CHECK_OK(make_only(d, &k, "add_one"));
    char name[65], path[1200];
    CHECK((d = spoil_and_reopen(d, spoil, name, path, sizeof path)));
    CHECK_OK(make(d, &k, "add_one", &p));
    CHECK_EQ(run_add_one(d, p), 0);
    mc_pipeline_release(p);
    mc_cache_stats s = stats_of(d);
    CHECK_EQ(s.rejected, 1);
    CHECK_EQ(s.hits_disk, 0);
    CHECK_EQ(s.compiles, 1);
    CHECK_EQ(log_count(&logs.rejected), 1);
    CHECK_STR_CONTAINS(logs.last_rejected, reason);
    CHECK_STR_CONTAINS(logs.last_rejected, name);
    if (after == REBUILT_REMOVED) CHECK_STR_CONTAINS(logs.last_rejected, "removed");
    /* asking again in the same device is a memory hit: no second log */
    CHECK_OK(make_only(d, &k, "add_one"));
    CHECK_EQ(log_count(&logs.rejected), 1);
    if (after == REBUILT_NEVER) return close_fixture(d, &k);
    mc_device_release(d);

    /* the rebuilt entry is valid, ours and private */
    struct stat st;
    CHECK_EQ(lstat(path, &st), 0);
    CHECK(S_ISREG(st.st_mode));
    CHECK_EQ(st.st_uid, geteuid());
    CHECK_EQ(st.st_mode & 0777, 0600);
    CHECK((d = mct_open_device(0)));
    CHECK_OK(make_only(d, &k, "add_one"));
    s = stats_of(d);
    CHECK_EQ(s.hits_disk, 1);
    CHECK_EQ(s.rejected, 0);
    CHECK_EQ(log_count(&logs.rejected), 1);
    return close_fixture(d, &k);
}

MC_TEST(cache_rejects_truncated_entry)
{
    return refused_and_rebuilt(spoil_truncate, "truncated", REBUILT_REMOVED);
}

MC_TEST(cache_rejects_empty_entry)
{
    return refused_and_rebuilt(spoil_empty, "truncated", REBUILT_REMOVED);
}

MC_TEST(cache_rejects_flipped_payload_byte)
{
    return refused_and_rebuilt(spoil_payload, "checksum", REBUILT_REMOVED);
}

MC_TEST(cache_rejects_flipped_header_key_byte)
{
    return refused_and_rebuilt(spoil_header_key, "does not match its file name", REBUILT_REMOVED);
}

MC_TEST(cache_rejects_flipped_key_material_byte)
{
    return refused_and_rebuilt(spoil_material, "key material", REBUILT_REMOVED);
}

MC_TEST(cache_rejects_bad_magic)
{
    return refused_and_rebuilt(spoil_magic, "magic", REBUILT_REMOVED);
}

MC_TEST(cache_rejects_other_format_version)
{
    return refused_and_rebuilt(spoil_version, "format version", REBUILT_REMOVED);
}

MC_TEST(cache_rejects_trailing_bytes)
{
    return refused_and_rebuilt(spoil_trailing, "trailing", REBUILT_REMOVED);
}

MC_TEST(cache_rejects_entry_others_can_write)
{
    return refused_and_rebuilt(spoil_mode, "writable by group or others", REBUILT_REMOVED);
}

MC_TEST(cache_rejects_entry_group_can_write)
{
    return refused_and_rebuilt(spoil_group_mode, "writable by group or others", REBUILT_REMOVED);
}

MC_TEST(cache_rejects_symbolic_link)
{
    return refused_and_rebuilt(spoil_symlink, "symbolic link", REBUILT_REMOVED);
}

MC_TEST(cache_rejects_directory_in_place_of_entry)
{
    /* cannot be removed (not ours to recurse into) nor replaced by rename:
     * refused each time, compiled, never loaded */
    return refused_and_rebuilt(spoil_directory, "not a regular file", REBUILT_NEVER);
}

MC_TEST(cache_rejects_entry_of_another_owner)
{
    if (geteuid() != 0) MC_SKIP("changing a file's owner needs root (uid 0); this runs as uid %u", (unsigned)geteuid());
    /* not ours to delete: refused, compiled, and the rebuild's rename
     * replaces it with our own file */
    return refused_and_rebuilt(spoil_owner, "owned by uid 65534", REBUILT_REPLACED);
}

MC_TEST(cache_rejects_entry_renamed_to_another_key)
{
    mc_device *d;
    kernel k;
    if (open_fixture(&d, &k)) return 1;
    char before[4][65], after[4][65], a[1200], b[1200];
    CHECK_OK(make_only(d, &k, "add_one"));
    CHECK_EQ(entries(d, before, 4, NULL), 1);
    CHECK_OK(make_only(d, &k, "iota"));
    CHECK_EQ(entries(d, after, 4, NULL), 2);
    const char *iota = new_name(before, 1, after, 2);
    CHECK(iota);
    entry_path(d, before[0], a, sizeof a);
    entry_path(d, iota, b, sizeof b);
    mc_device_release(d);
    /* add_one's entry now sits under iota's name */
    CHECK_EQ(rename(a, b), 0);

    CHECK((d = mct_open_device(0)));
    CHECK_OK(make_only(d, &k, "iota"));
    mc_cache_stats s = stats_of(d);
    CHECK_EQ(s.rejected, 1);
    CHECK_EQ(s.compiles, 1);
    CHECK_STR_CONTAINS(logs.last_rejected, "does not match its file name");
    /* add_one is gone from disk (renamed away): compiled again too */
    CHECK_OK(make_only(d, &k, "add_one"));
    CHECK_EQ(stats_of(d).compiles, 2);
    CHECK((d = reopen(d)));
    CHECK_OK(make_only(d, &k, "iota"));
    CHECK_OK(make_only(d, &k, "add_one"));
    CHECK_EQ(stats_of(d).hits_disk, 2);
    return close_fixture(d, &k);
}

MC_TEST(cache_read_only_mode_keeps_files)
{
    mc_device *d;
    kernel k;
    if (open_fixture(&d, &k)) return 1;
    /* ro: compiles, writes nothing */
    CHECK_OK(mc_cache_set_mode(d, MC_CACHE_RO));
    CHECK_EQ(mc_cache_get_mode(d), MC_CACHE_RO);
    CHECK_OK(make_only(d, &k, "add_one"));
    CHECK_EQ(stats_of(d).writes, 0);
    char names[4][65];
    CHECK_EQ(entries(d, names, 4, NULL), 0);

    CHECK((d = reopen(d)));
    CHECK_OK(make_only(d, &k, "add_one"));

    /* ro: a bad entry is refused but left alone */
    setenv("MC_CACHE", "ro", 1);
    char name[65], path[1200];
    CHECK((d = spoil_and_reopen(d, spoil_payload, name, path, sizeof path)));
    CHECK_EQ(mc_cache_get_mode(d), MC_CACHE_RO);
    CHECK_OK(make_only(d, &k, "add_one"));
    CHECK_EQ(stats_of(d).rejected, 1);
    CHECK_EQ(log_count(&logs.rejected), 1);
    struct stat st;
    CHECK_EQ(stat(path, &st), 0);
    unsetenv("MC_CACHE");
    return close_fixture(d, &k);
}

/* ---- unusable folders fall back to memory ---------------------------------- */

static int memory_only_with_one_warning(void)
{
    capture_log();
    mc_device *d = mct_open_device(0);
    CHECK(d);
    kernel k = basic_kernel(d);
    for (int i = 0; i < 3; i++) {
        mc_pipeline *p = NULL;
        CHECK_OK(make(d, &k, i == 2 ? "iota" : "add_one", &p));
        if (i == 0) CHECK_EQ(run_add_one(d, p), 0);
        mc_pipeline_release(p);
    }
    mc_cache_stats s = stats_of(d);
    CHECK_EQ(s.compiles, 2);
    CHECK_EQ(s.hits_memory, 1);
    CHECK_EQ(s.writes, 0);
    CHECK(!s.disk_enabled);
    CHECK_EQ(log_count(&logs.unusable), 1);
    CHECK_EQ(log_count(&logs.other_warnings), 0);
    mc_device_release(d);
    free(k.source);
    return 0;
}

MC_TEST(cache_unusable_dir_falls_back_to_memory)
{
    fresh_root();
    /* a folder that cannot be made: its parent is a regular file */
    char file[700], dir[800];
    snprintf(file, sizeof file, "%s/a-file", cache_root);
    FILE *f = fopen(file, "w");
    CHECK(f);
    fclose(f);
    snprintf(dir, sizeof dir, "%s/cache", file);
    setenv("MC_CACHE_DIR", dir, 1);
    if (memory_only_with_one_warning()) return 1;

    /* a folder others may write is not trusted */
    snprintf(dir, sizeof dir, "%s/shared", cache_root);
    CHECK_EQ(mkdir(dir, 0700), 0);
    CHECK_EQ(chmod(dir, 0777), 0);
    setenv("MC_CACHE_DIR", dir, 1);
    if (memory_only_with_one_warning()) return 1;

    /* a read-only folder (root writes anyway: only checked as non-root) */
    if (geteuid() != 0) {
        snprintf(dir, sizeof dir, "%s/readonly", cache_root);
        CHECK_EQ(mkdir(dir, 0500), 0);
        setenv("MC_CACHE_DIR", dir, 1);
        if (memory_only_with_one_warning()) return 1;
    } else {
        fprintf(stderr, "note: running as root, the read-only-folder case is not checked\n");
    }
    rm_tree(cache_root);
    return 0;
}

MC_TEST(cache_unwritable_device_folder_warns_once)
{
    /* the device's folder exists but cannot be written: entries are read,
     * nothing new is written, one warning */
    if (geteuid() == 0) MC_SKIP("root writes into read-only folders; checked as non-root only");
    fresh_root();
    capture_log();
    mc_device *d = mct_open_device(0);
    CHECK(d);
    char dir[1024];
    CHECK_OK(mc_cache_get_dir(d, dir, sizeof dir));
    mc_device_release(d);
    CHECK_EQ(mkdir(dir, 0500), 0);
    if (memory_only_with_one_warning()) return 1;
    rm_tree(cache_root);
    return 0;
}

MC_TEST(cache_without_hash_library_stays_in_memory)
{
    fresh_root();
    mc__hash_test_disable(true);
    capture_log();
    mc_device *d = mct_open_device(0);
    CHECK(d);
    kernel k = basic_kernel(d);
    mc_pipeline *p = NULL;
    CHECK_OK(make_only(d, &k, "add_one"));
    CHECK_OK(make(d, &k, "add_one", &p));
    CHECK_EQ(run_add_one(d, p), 0);
    mc_pipeline_release(p);
    mc_cache_stats s = stats_of(d);
    CHECK_EQ(s.compiles, 1);
    CHECK_EQ(s.hits_memory, 1);
    CHECK(!s.disk_enabled);
    CHECK_EQ(log_count(&logs.no_hash), 1);
    char names[4][65];
    CHECK_EQ(entries(d, names, 4, NULL), 0);
    mc_device_release(d);
    mc__hash_test_disable(false);
    free(k.source);
    rm_tree(cache_root);
    return 0;
}

/* ---- two processes build one entry at once ---------------------------------- */

MC_TEST(cache_two_process_race)
{
    fresh_root();
    for (int round = 0; round < 3; round++) {
        int go[2];
        CHECK_EQ(pipe(go), 0);
        char options[64];
        snprintf(options, sizeof options, "-DMC_RACE_ROUND=%d", round);
        pid_t kids[2];
        for (int i = 0; i < 2; i++) {
            kids[i] = fork();
            CHECK(kids[i] >= 0);
            if (kids[i] == 0) {
                close(go[1]);
                mc_device *d = mct_open_device(0);
                if (!d) _exit(10);
                kernel k = basic_kernel(d);
                mc_pipeline_source_desc desc = desc_for(&k, "add_one");
                desc.options = options;
                char c;
                if (read(go[0], &c, 1) != 0) _exit(11); /* both start when the pipe closes */
                mc_pipeline *p = NULL;
                if (mc_pipeline_create_from_source(d, &desc, &p, NULL) != MC_OK) {
                    fprintf(stderr, "child: %s\n", mc_last_error());
                    _exit(12);
                }
                mc_cache_stats s = stats_of(d);
                if (s.compiles + s.hits_disk != 1 || s.rejected != 0) _exit(13);
                if (run_add_one(d, p) != 0) _exit(14);
                mc_pipeline_release(p);
                mc_device_release(d);
                free(k.source);
                _exit(0);
            }
        }
        close(go[0]);
        usleep(200 * 1000); /* let both open their devices */
        close(go[1]);
        for (int i = 0; i < 2; i++) {
            int status = 0;
            CHECK_EQ(waitpid(kids[i], &status, 0), kids[i]);
            CHECK(WIFEXITED(status));
            CHECK_EQ(WEXITSTATUS(status), 0);
        }
    }
    /* one valid entry per round, no temporary file left */
    mc_device *d = mct_open_device(0);
    CHECK(d);
    char names[8][65];
    int tmp = -1;
    CHECK_EQ(entries(d, names, 8, &tmp), 3);
    CHECK_EQ(tmp, 0);
    kernel k = basic_kernel(d);
    for (int round = 0; round < 3; round++) {
        char options[64];
        snprintf(options, sizeof options, "-DMC_RACE_ROUND=%d", round);
        mc_pipeline_source_desc desc = desc_for(&k, "add_one");
        desc.options = options;
        mc_pipeline *p = NULL;
        CHECK_OK(mc_pipeline_create_from_source(d, &desc, &p, NULL));
        mc_pipeline_release(p);
    }
    mc_cache_stats s = stats_of(d);
    CHECK_EQ(s.hits_disk, 3);
    CHECK_EQ(s.compiles, 0);
    CHECK_EQ(s.rejected, 0);
    return close_fixture(d, &k);
}

/* ---- MSL function constants in the key ------------------------------------ */

/* o[i] = k_mul * i + k_add, each constant's default where it is not given */
static const char fc_source[] =
    "#include <metal_stdlib>\n"
    "using namespace metal;\n"
    "constant int k_mul [[function_constant(0)]];\n"
    "constant int k_add [[function_constant(1)]];\n"
    "kernel void fc(device int *o [[buffer(0)]], uint i [[thread_position_in_grid]]) {\n"
    "    int mul = is_function_constant_defined(k_mul) ? int(k_mul) : -1;\n"
    "    int add = is_function_constant_defined(k_add) ? int(k_add) : 1000;\n"
    "    o[i] = mul * int(i) + add;\n"
    "}\n";

static mc_status fc_make(mc_device *d, const mc_function_constant *fc, uint32_t n, mc_pipeline **p)
{
    mc_pipeline_source_desc desc = MC_PIPELINE_SOURCE_DESC_INIT;
    desc.language = MC_LANG_MSL;
    desc.source = fc_source;
    desc.function = "fc";
    desc.constants = fc;
    desc.constant_count = n;
    return mc_pipeline_create_from_source(d, &desc, p, NULL);
}

/* Runs fc over 64 threads; 0 when o[i] == mul * i + add for every i. */
static int fc_check(mc_device *d, mc_pipeline *p, int mul, int add)
{
    int32_t host[64];
    mc_buffer_desc bd = MC_BUFFER_DESC_INIT;
    bd.size = sizeof host;
    mc_buffer *b = NULL;
    mc_queue *q = NULL;
    mc_cmdbuf *cb = NULL;
    mc_pass *pass;
    CHECK_OK(mc_buffer_create(d, &bd, &b));
    CHECK_OK(mc_queue_create(d, NULL, &q));
    CHECK_OK(mc_cmdbuf_create(q, NULL, &cb));
    CHECK_OK(mc_cmdbuf_begin_pass(cb, "fc", &pass));
    CHECK_OK(mc_pass_set_pipeline(pass, p));
    CHECK_OK(mc_pass_set_buffer(pass, 0, b, 0));
    CHECK_OK(mc_pass_dispatch(pass, (mc_size3){2, 1, 1}, (mc_size3){32, 1, 1}));
    CHECK_OK(mc_pass_end(pass));
    CHECK_OK(mc_cmdbuf_commit(cb));
    CHECK_OK(mc_cmdbuf_wait(cb, MC_WAIT_FOREVER));
    CHECK_OK(mc_buffer_read(b, 0, host, sizeof host));
    for (int i = 0; i < 64; i++) CHECK_EQ(host[i], mul * i + add);
    mc_cmdbuf_release(cb);
    mc_queue_release(q);
    mc_buffer_release(b);
    return 0;
}

/* The value sets of cache_function_constants_in_the_key, with what each
 * kernel computes: {3, 5} in both orders, {4, 5}, and none (defaults). */
static int32_t fc_v3 = 3, fc_v4 = 4, fc_v5 = 5;
static const mc_function_constant fc_set_a[2] = {{0, 4, &fc_v3}, {1, 4, &fc_v5}};
static const mc_function_constant fc_set_a_reordered[2] = {{1, 4, &fc_v5}, {0, 4, &fc_v3}};
static const mc_function_constant fc_set_b[2] = {{0, 4, &fc_v4}, {1, 4, &fc_v5}};

/* Makes and runs the three sets; a child process's exit status. */
static int fc_build_all(void)
{
    mc_device *d = mct_open_device(0);
    if (!d) return 10;
    mc_pipeline *pa = NULL, *pb = NULL, *pn = NULL;
    if (fc_make(d, fc_set_a, 2, &pa) != MC_OK || fc_make(d, fc_set_b, 2, &pb) != MC_OK ||
        fc_make(d, NULL, 0, &pn) != MC_OK) {
        fprintf(stderr, "child: %s\n", mc_last_error());
        return 11;
    }
    if (fc_check(d, pa, 3, 5) || fc_check(d, pb, 4, 5) || fc_check(d, pn, -1, 1000)) return 12;
    mc_cache_stats s = stats_of(d);
    if (s.compiles != 3 || s.writes != 3) return 13;
    mc_pipeline_release(pa);
    mc_pipeline_release(pb);
    mc_pipeline_release(pn);
    mc_device_release(d);
    return 0;
}

MC_TEST(cache_function_constants_in_the_key)
{
    fresh_root();
    capture_log();
    mc_device *d = mct_open_device(0);
    CHECK(d);
    mc_pipeline *p[6] = {NULL};
    CHECK_OK(fc_make(d, fc_set_a, 2, &p[0]));
    mc_cache_stats s = stats_of(d);
    CHECK_EQ(s.misses, 1);
    CHECK_EQ(s.compiles, 1);
    /* the same set in another order is the same key */
    CHECK_OK(fc_make(d, fc_set_a_reordered, 2, &p[1]));
    s = stats_of(d);
    CHECK_EQ(s.hits_memory, 1);
    CHECK_EQ(s.compiles, 1);
    /* another value misses and computes with its own value */
    CHECK_OK(fc_make(d, fc_set_b, 2, &p[2]));
    s = stats_of(d);
    CHECK_EQ(s.misses, 2);
    CHECK_EQ(s.compiles, 2);
    /* no values (the defaults) is a key of its own */
    CHECK_OK(fc_make(d, NULL, 0, &p[3]));
    s = stats_of(d);
    CHECK_EQ(s.misses, 3);
    CHECK_EQ(s.compiles, 3);
    CHECK_EQ(s.memory_entries, 3);
    CHECK_EQ(s.disk_entries, 3);
    CHECK_EQ(fc_check(d, p[0], 3, 5), 0);
    CHECK_EQ(fc_check(d, p[1], 3, 5), 0);
    CHECK_EQ(fc_check(d, p[2], 4, 5), 0);
    CHECK_EQ(fc_check(d, p[3], -1, 1000), 0);
    /* one constant fewer is another key too */
    CHECK_OK(fc_make(d, fc_set_a, 1, &p[4]));
    CHECK_EQ(stats_of(d).compiles, 4);
    CHECK_EQ(fc_check(d, p[4], 3, 1000), 0);
    /* an index given twice has no canonical order: refused */
    const mc_function_constant twice[2] = {{0, 4, &fc_v3}, {0, 4, &fc_v4}};
    CHECK_STATUS(fc_make(d, twice, 2, &p[5]), MC_ERR_INVALID_ARGUMENT);
    CHECK_STR_CONTAINS(mc_last_error(), "index 0 is given twice");
    CHECK(!p[5]);
    for (int i = 0; i < 5; i++) mc_pipeline_release(p[i]);
    CHECK_EQ(log_count(&logs.rejected), 0);
    mc_device_release(d);
    rm_tree(cache_root);
    return 0;
}

MC_TEST(cache_function_constants_load_from_disk_in_a_new_process)
{
    fresh_root();
    capture_log();
    /* a child builds and archives; this process, which opened no device
     * before, then loads the three from disk */
    pid_t kid = fork();
    CHECK(kid >= 0);
    if (kid == 0) _exit(fc_build_all());
    int status = 0;
    CHECK_EQ(waitpid(kid, &status, 0), kid);
    CHECK(WIFEXITED(status));
    CHECK_EQ(WEXITSTATUS(status), 0);
    mc_device *d = mct_open_device(0);
    CHECK(d);
    mc_pipeline *pa = NULL, *pb = NULL, *pn = NULL;
    CHECK_OK(fc_make(d, fc_set_a_reordered, 2, &pa));
    CHECK_OK(fc_make(d, fc_set_b, 2, &pb));
    CHECK_OK(fc_make(d, NULL, 0, &pn));
    mc_cache_stats s = stats_of(d);
    CHECK_EQ(s.hits_disk, 3);
    CHECK_EQ(s.compiles, 0);
    CHECK_EQ(s.rejected, 0);
    CHECK_EQ(fc_check(d, pa, 3, 5), 0);
    CHECK_EQ(fc_check(d, pb, 4, 5), 0);
    CHECK_EQ(fc_check(d, pn, -1, 1000), 0);
    mc_pipeline_release(pa);
    mc_pipeline_release(pb);
    mc_pipeline_release(pn);
    mc_device_release(d);
    rm_tree(cache_root);
    return 0;
}

/* Asynchronous creation keeps its own copy of the constants: the caller's
 * array and values may change before a pool thread builds. */
MC_TEST(cache_function_constants_async_copies_the_values)
{
    fresh_root();
    capture_log();
    mc_device *d = mct_open_device(0);
    CHECK(d);
    int32_t mul = 6, add = 7;
    mc_function_constant fc[2] = {{0, 4, &mul}, {1, 4, &add}};
    mc_pipeline_source_desc desc = MC_PIPELINE_SOURCE_DESC_INIT;
    desc.language = MC_LANG_MSL;
    desc.source = fc_source;
    desc.function = "fc";
    desc.constants = fc;
    desc.constant_count = 2;
    mc_pipeline_future *f = NULL;
    CHECK_OK(mc_pipeline_create_async(d, &desc, &f));
    mul = -100, add = -100; /* what the caller does next is not the request's */
    fc[0].index = 5;
    mc_pipeline *p = NULL;
    CHECK_OK(mc_pipeline_future_wait(f, MC_WAIT_FOREVER, &p, NULL));
    mc_pipeline_future_release(f);
    CHECK_EQ(fc_check(d, p, 6, 7), 0);
    mc_pipeline_release(p);
    /* and it was cached under the values it was given */
    int32_t six = 6, seven = 7;
    mc_function_constant again[2] = {{1, 4, &seven}, {0, 4, &six}};
    CHECK_OK(fc_make(d, again, 2, &p));
    CHECK_EQ(stats_of(d).hits_memory, 1);
    CHECK_EQ(fc_check(d, p, 6, 7), 0);
    mc_pipeline_release(p);
    mc_device_release(d);
    rm_tree(cache_root);
    return 0;
}

/* A library read from a .metal file defers to the cache per pipeline: with
 * function constants too (they were built uncached before). */
MC_TEST(cache_function_constants_of_a_library_file_are_cached)
{
    fresh_root();
    capture_log();
    char path[600];
    snprintf(path, sizeof path, "%s/fc.metal", cache_root);
    FILE *f = fopen(path, "w");
    CHECK(f);
    CHECK_EQ(fwrite(fc_source, 1, sizeof fc_source - 1, f), sizeof fc_source - 1);
    CHECK_EQ(fclose(f), 0);
    mc_device *d = mct_open_device(0);
    CHECK(d);
    mc_library *lib = NULL;
    CHECK_OK(mc_library_create_from_file(d, path, MC_LANG_UNSET, NULL, &lib, NULL));
    mc_pipeline *p[3] = {NULL};
    for (int i = 0; i < 3; i++) {
        mc_pipeline_desc pd = MC_PIPELINE_DESC_INIT;
        pd.library = lib;
        pd.function = "fc";
        pd.constants = i == 1 ? fc_set_a_reordered : i == 2 ? fc_set_b : fc_set_a;
        pd.constant_count = 2;
        CHECK_OK(mc_pipeline_create(d, &pd, &p[i]));
    }
    mc_cache_stats s = stats_of(d);
    CHECK_EQ(s.compiles, 2);
    CHECK_EQ(s.hits_memory, 1);
    CHECK_EQ(fc_check(d, p[0], 3, 5), 0);
    CHECK_EQ(fc_check(d, p[1], 3, 5), 0);
    CHECK_EQ(fc_check(d, p[2], 4, 5), 0);
    for (int i = 0; i < 3; i++) mc_pipeline_release(p[i]);
    mc_library_release(lib);
    mc_device_release(d);
    rm_tree(cache_root);
    return 0;
}

/* ---- require mode: never compile at run time (F700) ----------------------- */

MC_TEST(cache_require_mode)
{
    mc_device *d;
    kernel k;
    if (open_fixture(&d, &k)) return 1;
    mc_pipeline *p = NULL;
    CHECK_OK(mc_cache_set_mode(d, MC_CACHE_REQUIRE));
    CHECK_STATUS(make(d, &k, "add_one", &p), MC_ERR_CACHE_MISS);
    CHECK_STR_CONTAINS(mc_last_error(), "require");
    CHECK(p == NULL);
    mc_cache_stats s = stats_of(d);
    CHECK_EQ(s.compiles, 0);
    CHECK_EQ(s.misses, 1);

    CHECK_OK(mc_cache_set_mode(d, MC_CACHE_RW));
    CHECK_OK(make_only(d, &k, "add_one"));
    CHECK_OK(mc_cache_set_mode(d, MC_CACHE_REQUIRE));
    CHECK_OK(make_only(d, &k, "add_one")); /* memory */
    mc_device_release(d);

    setenv("MC_CACHE", "require", 1);
    CHECK((d = mct_open_device(0)));
    CHECK_EQ(mc_cache_get_mode(d), MC_CACHE_REQUIRE);
    CHECK_OK(make(d, &k, "add_one", &p)); /* disk */
    CHECK_EQ(run_add_one(d, p), 0);
    mc_pipeline_release(p);
    CHECK_STATUS(make(d, &k, "iota", &p), MC_ERR_CACHE_MISS);
    mc_pipeline_future *f = NULL;
    mc_pipeline_source_desc desc = desc_for(&k, "saxpy");
    CHECK_OK(mc_pipeline_create_async(d, &desc, &f));
    CHECK_STATUS(mc_pipeline_future_wait(f, MC_WAIT_FOREVER, &p, NULL), MC_ERR_CACHE_MISS);
    CHECK(p == NULL);
    mc_pipeline_future_release(f);
    s = stats_of(d);
    CHECK_EQ(s.compiles, 0);
    CHECK_EQ(s.hits_disk, 1);
    CHECK_EQ(s.misses, 2);
    /* a spoiled entry in require mode: a miss, never a compile */
    char name[65], path[1200];
    CHECK((d = spoil_and_reopen(d, spoil_payload, name, path, sizeof path)));
    CHECK_EQ(mc_cache_get_mode(d), MC_CACHE_REQUIRE);
    CHECK_STATUS(make(d, &k, "add_one", &p), MC_ERR_CACHE_MISS);
    CHECK_EQ(stats_of(d).compiles, 0);
    CHECK_EQ(stats_of(d).rejected, 1);
    unsetenv("MC_CACHE");
    return close_fixture(d, &k);
}

MC_TEST(cache_off_mode_always_compiles)
{
    fresh_root();
    setenv("MC_CACHE", "off", 1);
    mc_device *d = mct_open_device(0);
    CHECK(d);
    CHECK_EQ(mc_cache_get_mode(d), MC_CACHE_OFF);
    kernel k = basic_kernel(d);
    mc_pipeline *p = NULL;
    for (int i = 0; i < 2; i++) {
        CHECK_OK(make(d, &k, "add_one", &p));
        CHECK_EQ(run_add_one(d, p), 0);
        mc_pipeline_release(p);
    }
    mc_cache_stats s = stats_of(d);
    CHECK_EQ(s.compiles, 2);
    CHECK_EQ(s.hits_memory + s.hits_disk, 0);
    char names[4][65];
    CHECK_EQ(entries(d, names, 4, NULL), 0);
    unsetenv("MC_CACHE");
    return close_fixture(d, &k);
}

/* ---- eviction under a cap, least recently used first ------------------------ */

static void set_age(const char *path, int seconds_ago)
{
    struct timespec ts[2];
    clock_gettime(CLOCK_REALTIME, &ts[0]);
    ts[0].tv_sec -= seconds_ago;
    ts[1] = ts[0];
    utimensat(AT_FDCWD, path, ts, AT_SYMLINK_NOFOLLOW);
}

MC_TEST(cache_eviction_lru)
{
    mc_device *d;
    kernel k;
    if (open_fixture(&d, &k)) return 1;
    static const char *const fns[] = {"add_one", "iota", "saxpy", "copy_f32"};
    char names[4][65]; /* entry of fns[i] */
    char list[8][65], prev[8][65], path[1200];
    int n = 0;
    struct stat st;

    CHECK_OK(make_only(d, &k, fns[0]));
    CHECK_EQ(entries(d, list, 8, NULL), 1);
    memcpy(names[0], list[0], 65);
    entry_path(d, names[0], path, sizeof path);
    CHECK_EQ(stat(path, &st), 0);
    /* room for two entries and a half */
    CHECK_OK(mc_cache_set_max_bytes(d, (uint64_t)st.st_size * 5 / 2));
    set_age(path, 300);

    memcpy(prev, list, sizeof list);
    n = 1;
    CHECK_OK(make_only(d, &k, fns[1]));
    CHECK_EQ(entries(d, list, 8, NULL), 2);
    memcpy(names[1], new_name(prev, n, list, 2), 65);
    entry_path(d, names[1], path, sizeof path);
    set_age(path, 200);
    CHECK_EQ(stats_of(d).evictions, 0);

    /* a third: the oldest (add_one) goes */
    memcpy(prev, list, sizeof list);
    CHECK_OK(make_only(d, &k, fns[2]));
    CHECK_EQ(entries(d, list, 8, NULL), 2);
    CHECK_EQ(stats_of(d).evictions, 1);
    entry_path(d, names[0], path, sizeof path);
    CHECK(stat(path, &st) != 0);
    entry_path(d, names[1], path, sizeof path);
    CHECK_EQ(stat(path, &st), 0);
    memcpy(names[2], new_name(prev, 2, list, 2), 65);
    entry_path(d, names[2], path, sizeof path);
    set_age(path, 100);
    mc_device_release(d);

    /* using iota (the older of the two) makes it recent: saxpy goes next */
    CHECK((d = mct_open_device(0)));
    CHECK_OK(mc_cache_set_max_bytes(d, (uint64_t)st.st_size * 5 / 2));
    CHECK_OK(make_only(d, &k, fns[1]));
    CHECK_EQ(stats_of(d).hits_disk, 1);
    CHECK_OK(make_only(d, &k, fns[3]));
    mc_cache_stats s = stats_of(d);
    CHECK_EQ(s.evictions, 1);
    CHECK_EQ(s.disk_entries, 2);
    CHECK_LE(s.disk_bytes, s.max_bytes);
    entry_path(d, names[2], path, sizeof path);
    CHECK(stat(path, &st) != 0);
    entry_path(d, names[1], path, sizeof path);
    CHECK_EQ(stat(path, &st), 0);
    mc_device_release(d);

    /* the cap from the environment */
    setenv("MC_CACHE_MAX_BYTES", "1k", 1);
    CHECK((d = mct_open_device(0)));
    CHECK_EQ(stats_of(d).max_bytes, 1024);
    CHECK_OK(make_only(d, &k, fns[0])); /* over the cap alone: kept, the rest go */
    s = stats_of(d);
    CHECK_EQ(s.disk_entries, 1);
    CHECK_EQ(s.evictions, 2);
    unsetenv("MC_CACHE_MAX_BYTES");
    return close_fixture(d, &k);
}

/* ---- statistics --------------------------------------------------------------- */

MC_TEST(cache_statistics)
{
    mc_device *d;
    kernel k;
    if (open_fixture(&d, &k)) return 1;
    mc_cache_stats s = stats_of(d);
    CHECK_EQ(s.hits_memory + s.hits_disk + s.misses + s.compiles + s.writes, 0);
    CHECK_EQ(s.max_bytes, MC_CACHE_DEFAULT_MAX_BYTES);
    CHECK(s.disk_enabled);

    CHECK_OK(make_only(d, &k, "add_one"));
    s = stats_of(d);
    CHECK_EQ(s.misses, 1);
    CHECK_EQ(s.compiles, 1);
    CHECK_EQ(s.writes, 1);
    CHECK_GT(s.compile_ns, 0);
    CHECK_EQ(s.disk_entries, 1);
    CHECK_EQ(s.memory_entries, 1);
    char names[2][65], path[1200];
    struct stat st;
    CHECK_EQ(entries(d, names, 2, NULL), 1);
    entry_path(d, names[0], path, sizeof path);
    CHECK_EQ(stat(path, &st), 0);
    CHECK_EQ(s.disk_bytes, st.st_size);

    CHECK_OK(make_only(d, &k, "add_one"));
    CHECK_EQ(stats_of(d).hits_memory, 1);

    CHECK((d = reopen(d)));
    CHECK_OK(make_only(d, &k, "add_one"));
    s = stats_of(d);
    CHECK_EQ(s.hits_disk, 1);
    CHECK_EQ(s.misses, 0);
    CHECK_EQ(s.compiles, 0);
    CHECK_GT(s.load_ns, 0);
    mc_device_release(d);

    /* totals kept across processes, in the folder's stats file */
    char dir[1024];
    CHECK((d = mct_open_device(0)));
    CHECK_OK(mc_cache_get_dir(d, dir, sizeof dir));
    mc_device_release(d);
    int fd = open(dir, O_RDONLY | O_DIRECTORY);
    CHECK(fd >= 0);
    mc__cache_totals t;
    mc__cache_read_totals(fd, &t);
    close(fd);
    CHECK_EQ(t.compiles, 1);
    CHECK_EQ(t.hits_disk, 1);
    CHECK_EQ(t.hits_memory, 1);
    CHECK_EQ(t.writes, 1);
    CHECK_GT(t.compile_ns, 0);
    free(k.source);
    rm_tree(cache_root);
    return 0;
}

MC_TEST(cache_clear_keeps_held_pipelines_valid)
{
    mc_device *d;
    kernel k;
    if (open_fixture(&d, &k)) return 1;
    mc_pipeline *p = NULL, *q = NULL;
    CHECK_OK(make(d, &k, "add_one", &p));
    CHECK_OK(make(d, &k, "iota", &q));
    mc_pipeline_release(q);
    CHECK_EQ(stats_of(d).disk_entries, 2);
    CHECK_OK(mc_cache_clear(d));
    mc_cache_stats s = stats_of(d);
    CHECK_EQ(s.disk_entries, 0);
    CHECK_EQ(s.memory_entries, 0);
    CHECK_EQ(run_add_one(d, p), 0); /* still works after the cache let go */
    CHECK_OK(make(d, &k, "add_one", &q));
    CHECK_EQ(stats_of(d).compiles, 3);
    mc_pipeline_release(q);
    mc_pipeline_release(p);
    return close_fixture(d, &k);
}

/* ---- threads: one compile for many concurrent requests ------------------------ */

typedef struct racer {
    mc_device *d;
    const mc_pipeline_source_desc *desc;
    pthread_barrier_t *barrier;
    mc_status status;
    mc_pipeline *p;
    char *log;
} racer;

static void *race_main(void *arg)
{
    racer *r = arg;
    pthread_barrier_wait(r->barrier);
    r->status = mc_pipeline_create_from_source(r->d, r->desc, &r->p, &r->log);
    return NULL;
}

#define RACERS 8

MC_TEST(cache_concurrent_requests_compile_once)
{
    mc_device *d;
    kernel k;
    if (open_fixture(&d, &k)) return 1;
    mc_pipeline_source_desc good = desc_for(&k, "add_one");
    mc_pipeline_source_desc bad = MC_PIPELINE_SOURCE_DESC_INIT;
    bad.source = "#error this kernel does not compile\n";
    bad.function = "nothing";
    for (int round = 0; round < 2; round++) {
        pthread_barrier_t barrier;
        pthread_barrier_init(&barrier, NULL, RACERS);
        racer rs[RACERS];
        pthread_t th[RACERS];
        for (int i = 0; i < RACERS; i++) {
            rs[i] = (racer){d, round == 0 ? &good : &bad, &barrier, MC_ERR_INTERNAL, NULL, NULL};
            CHECK_EQ(pthread_create(&th[i], NULL, race_main, &rs[i]), 0);
        }
        for (int i = 0; i < RACERS; i++) pthread_join(th[i], NULL);
        pthread_barrier_destroy(&barrier);
        for (int i = 0; i < RACERS; i++) {
            if (round == 0) {
                CHECK_OK(rs[i].status);
                CHECK(rs[i].p != NULL);
                for (int j = 0; j < i; j++) CHECK(rs[i].p != rs[j].p); /* each its own handle */
            } else {
                CHECK_EQ(rs[i].status, MC_ERR_COMPILE);
                CHECK(rs[i].log != NULL);
                CHECK_STR_CONTAINS(rs[i].log, "does not compile");
            }
            mc_free(rs[i].log);
        }
        if (round == 0) {
            mc_cache_stats s = stats_of(d);
            CHECK_EQ(s.compiles, 1);
            CHECK_EQ(s.misses, 1);
            CHECK_EQ(s.hits_memory, RACERS - 1);
            CHECK_EQ(run_add_one(d, rs[3].p), 0);
            for (int i = 0; i < RACERS; i++) mc_pipeline_release(rs[i].p);
        }
    }
    return close_fixture(d, &k);
}

/* ---- asynchronous creation (F159) ----------------------------------------------- */

MC_TEST(cache_async_wait_any)
{
    mc_device *d;
    kernel k;
    if (open_fixture(&d, &k)) return 1;
    static const char *const fns[] = {"add_one", "iota", "saxpy", "copy_f32", "broken"};
    enum { N = 5 };
    mc_pipeline_future *fs[N], *left[N];
    for (int i = 0; i < N; i++) {
        mc_pipeline_source_desc desc = desc_for(&k, fns[i]);
        if (i == N - 1) desc.source = "int broken(void) { return x; }\n";
        CHECK_OK(mc_pipeline_create_async(d, &desc, &fs[i]));
        left[i] = fs[i];
    }
    size_t n = N, index = 99;
    int ok = 0, failed = 0;
    CHECK_STATUS(mc_pipeline_future_wait_any(left, 0, 0, &index), MC_ERR_INVALID_ARGUMENT);
    while (n) {
        CHECK_OK(mc_pipeline_future_wait_any(left, n, MC_WAIT_FOREVER, &index));
        CHECK_LT(index, n);
        CHECK(mc_pipeline_future_done(left[index]));
        mc_pipeline *p = NULL;
        char *log = NULL;
        mc_status s = mc_pipeline_future_wait(left[index], 0, &p, &log);
        if (s == MC_OK) {
            ok++;
            CHECK(p != NULL);
            mc_pipeline_release(p);
        } else {
            failed++;
            CHECK_EQ(s, MC_ERR_COMPILE);
            CHECK(log != NULL);
            mc_free(log);
        }
        left[index] = left[--n];
    }
    CHECK_EQ(ok, N - 1);
    CHECK_EQ(failed, 1);
    /* waiting again hands out another reference */
    mc_pipeline *p = NULL;
    CHECK_OK(mc_pipeline_future_wait(fs[0], MC_WAIT_FOREVER, &p, NULL));
    CHECK_EQ(run_add_one(d, p), 0);
    mc_pipeline_release(p);
    for (int i = 0; i < N; i++) mc_pipeline_future_release(fs[i]);
    mc_cache_stats s = stats_of(d);
    CHECK_EQ(s.compiles, N);

    /* a memory hit completes at once */
    mc_pipeline_future *f = NULL;
    mc_pipeline_source_desc desc = desc_for(&k, "add_one");
    CHECK_OK(mc_pipeline_create_async(d, &desc, &f));
    CHECK(mc_pipeline_future_done(f));
    CHECK_OK(mc_pipeline_future_wait(f, 0, NULL, NULL));
    mc_pipeline_future_release(f);

    /* just looking; then the device let go while the future runs */
    desc = desc_for(&k, "add_one");
    desc.options = "-DMC_PENDING=1";
    CHECK_OK(mc_pipeline_create_async(d, &desc, &f));
    mc_status w = mc_pipeline_future_wait(f, 0, NULL, NULL);
    CHECK(w == MC_ERR_WAIT_TIMEOUT || w == MC_OK);
    CHECK_OK(mc_pipeline_future_wait(f, MC_WAIT_FOREVER, NULL, NULL));
    mc_pipeline_future_release(f);
    desc.options = "-DMC_PENDING=2";
    CHECK_OK(mc_pipeline_create_async(d, &desc, &f));
    mc_device_release(d); /* the future keeps it open */
    CHECK_OK(mc_pipeline_future_wait(f, MC_WAIT_FOREVER, NULL, NULL));
    mc_pipeline_future_release(f); /* and now it closes */
    CHECK_STATUS(mc_pipeline_future_wait(NULL, 0, NULL, NULL), MC_ERR_INVALID_ARGUMENT);
    CHECK(!mc_pipeline_future_done(NULL));
    free(k.source);
    rm_tree(cache_root);
    return 0;
}

MC_TEST(cache_async_abandoned_future_then_device)
{
    /* the caller lets go of both before the work ends: the pool thread
     * drops the last references and the device closes on its notifier */
    mc_device *d;
    kernel k;
    if (open_fixture(&d, &k)) return 1;
    char dir[1024];
    CHECK_OK(mc_cache_get_dir(d, dir, sizeof dir));
    for (int i = 0; i < 4; i++) {
        mc_pipeline_source_desc desc = desc_for(&k, "iota");
        char opt[32];
        snprintf(opt, sizeof opt, "-DMC_GONE=%d", i);
        desc.options = opt;
        mc_pipeline_future *f = NULL;
        CHECK_OK(mc_pipeline_create_async(d, &desc, &f));
        mc_pipeline_future_release(f);
    }
    mc_device_release(d);
    /* the device really closes once the work is done: closing adds its
     * counters to the folder's stats file */
    mc__cache_totals t;
    memset(&t, 0, sizeof t);
    for (int waited_ms = 0; t.compiles < 4 && waited_ms < 60000; waited_ms += 10) {
        usleep(10 * 1000);
        int fd = open(dir, O_RDONLY | O_DIRECTORY);
        if (fd >= 0) {
            mc__cache_read_totals(fd, &t);
            close(fd);
        }
    }
    CHECK_EQ(t.compiles, 4);
    CHECK_EQ(t.writes, 4);
    free(k.source);
    rm_tree(cache_root);
    return 0;
}

/* ---- the entry reader, directly ---------------------------------------------------- */

MC_TEST(cache_entry_parser)
{
    char why[160];
    mc__hash *h = mc__hash_open(why, sizeof why);
    if (!h) MC_SKIP("no SHA-256 library: %s", why);
    /* material: format version, runtime version, backend, identity,
     * compiler, language, source, options, function, threads, simd */
    uint8_t m[256];
    size_t mn = 0;
    const char *fields[] = {MC_VERSION_STRING, "cpu", "x86_64-test", "cc 1.0"};
    m[mn++] = MC__CACHE_FORMAT_VERSION, m[mn++] = 0, m[mn++] = 0, m[mn++] = 0;
    for (int i = 0; i < 4; i++) {
        uint64_t n = strlen(fields[i]);
        for (int b = 0; b < 8; b++) m[mn++] = (uint8_t)(n >> (8 * b));
        memcpy(m + mn, fields[i], n);
        mn += n;
    }
    m[mn++] = MC_LANG_C, m[mn++] = 0, m[mn++] = 0, m[mn++] = 0;
    const char *rest[] = {"int x;", "", "k"};
    for (int i = 0; i < 3; i++) {
        uint64_t n = strlen(rest[i]);
        for (int b = 0; b < 8; b++) m[mn++] = (uint8_t)(n >> (8 * b));
        memcpy(m + mn, rest[i], n);
        mn += n;
    }
    memset(m + mn, 0, 8);
    mn += 8;
    mc__cache_material mat;
    CHECK(mc__cache_parse_material(m, mn, &mat) == NULL);
    CHECK_EQ(mat.language, MC_LANG_C);
    CHECK_EQ(mat.function.len, 1);
    CHECK(mc__cache_parse_material(m, mn - 1, &mat) != NULL);
    CHECK(mc__cache_parse_material(m, mn + 0, NULL) == NULL);
    /* the writer the cache uses puts down the same bytes */
    CHECK(mc__cache_parse_material(m, mn, &mat) == NULL);
    mc__bytes enc = {NULL, 0, 0, false};
    mc__cache_encode_material(&mat, &enc);
    CHECK(!enc.oom);
    CHECK_EQ(enc.n, mn);
    CHECK(!memcmp(enc.p, m, mn));
    free(enc.p);
    /* function constants: canonical whatever the order, read back, and a
     * field out of order refused */
    int32_t v1 = 7, v2 = 9;
    const mc_function_constant fa[2] = {{5, 4, &v1}, {2, 4, &v2}}, fb[2] = {{2, 4, &v2}, {5, 4, &v1}};
    mc__bytes ca = {NULL, 0, 0, false}, cb = {NULL, 0, 0, false};
    CHECK(mc__cache_encode_constants(fa, 2, &ca));
    CHECK(mc__cache_encode_constants(fb, 2, &cb));
    CHECK_EQ(ca.n, cb.n);
    CHECK(!memcmp(ca.p, cb.p, ca.n));
    mat.constants = (mc__cache_str){(const char *)ca.p, ca.n};
    mc__bytes withc = {NULL, 0, 0, false};
    mc__cache_encode_material(&mat, &withc);
    CHECK_GT(withc.n, mn);
    mc__cache_material back;
    CHECK(mc__cache_parse_material(withc.p, withc.n, &back) == NULL);
    CHECK_EQ(back.constants.len, ca.n);
    withc.p[withc.n - ca.n + 4] = 6; /* the first index (2) now above the second (5) */
    CHECK(mc__cache_parse_material(withc.p, withc.n, &back) != NULL);
    const mc_function_constant dup[2] = {{2, 4, &v1}, {2, 4, &v2}};
    mc__bytes cd = {NULL, 0, 0, false};
    CHECK(!mc__cache_encode_constants(dup, 2, &cd));
    free(ca.p);
    free(cb.p);
    free(cd.p);
    free(withc.p);

    const char payload[] = "payload bytes";
    uint8_t e[512];
    size_t en = MC__CACHE_HEADER_SIZE + mn + sizeof payload;
    memset(e, 0, sizeof e);
    memcpy(e, MC__CACHE_MAGIC, 8);
    e[8] = MC__CACHE_FORMAT_VERSION;
    e[12] = MC__CACHE_HEADER_SIZE;
    CHECK(mc__hash_sha256(h, m, mn, e + 16));
    e[48] = (uint8_t)mn;
    e[56] = sizeof payload;
    CHECK(mc__hash_sha256(h, payload, sizeof payload, e + 64));
    memcpy(e + MC__CACHE_HEADER_SIZE, m, mn);
    memcpy(e + MC__CACHE_HEADER_SIZE + mn, payload, sizeof payload);
    uint8_t header[MC__CACHE_HEADER_SIZE];
    mc__cache_entry_header(header, e + 16, mn, sizeof payload, e + 64);
    CHECK(!memcmp(header, e, MC__CACHE_HEADER_SIZE));
    mc__cache_entry ent;
    CHECK(mc__cache_parse_entry(e, en, h, e + 16, &ent) == NULL);
    CHECK_EQ(ent.payload_len, sizeof payload);
    CHECK(!memcmp(ent.payload, payload, sizeof payload));
    char name[65];
    uint8_t key[32];
    mc__cache_key_name(ent.key, name);
    CHECK(mc__cache_name_key(name, key));
    CHECK(!memcmp(key, ent.key, 32));
    CHECK(!mc__cache_name_key("abc", key));
    name[0] = 'G';
    CHECK(!mc__cache_name_key(name, key));

    /* every prefix is refused, and so is every single flipped byte */
    for (size_t n = 0; n < en; n++) CHECK(mc__cache_parse_entry(e, n, h, NULL, NULL) != NULL);
    for (size_t i = 0; i < en; i++) {
        e[i] ^= 0x20;
        CHECK(mc__cache_parse_entry(e, en, h, NULL, NULL) != NULL);
        e[i] ^= 0x20;
    }
    CHECK(mc__cache_parse_entry(e, en, NULL, NULL, NULL) == NULL); /* structure only */
    uint8_t other[32] = {0};
    CHECK_STR_CONTAINS(mc__cache_parse_entry(e, en, h, other, NULL), "file name");
    CHECK(mc__cache_parse_entry(NULL, 0, h, NULL, NULL) != NULL);

    char folder[64];
    mc__cache_folder_name("cpu", "x86/64 ../Model (R)", folder, sizeof folder);
    CHECK(!strcmp(folder, "cpu-x86_64_.._Model__R_"));
    mc__hash_close(h);
    return 0;
}
