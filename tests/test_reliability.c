/* Bad input and hostile conditions met by the command-line program: every
 * path ends in a clear error that names the cause, and nothing the user
 * owns is lost (docs/RELIABILITY.md lists them all). */
#include "mc_test.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

/* Runs cmd through the shell; its stdout and stderr together. */
static char *run_command(const char *cmd, int *status)
{
    char full[8400];
    snprintf(full, sizeof full, "%s 2>&1", cmd);
    FILE *p = popen(full, "r");
    if (!p) return NULL;
    size_t cap = 1 << 16, len = 0;
    char *out = malloc(cap);
    size_t n;
    while (out && (n = fread(out + len, 1, cap - 1 - len, p)) > 0) len += n;
    int st = pclose(p);
    if (status) *status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    if (out) out[len] = '\0';
    return out;
}

/* The command exits non-zero and says why (want in its output). */
static int expect_refusal(const char *args, const char *want)
{
    char cmd[8192];
    snprintf(cmd, sizeof cmd, "%s/metal-compute %s", MC_BINARY_DIR, args);
    int st = 0;
    char *out = run_command(cmd, &st);
    CHECK(out);
    if (st == 0 || st >= 128 || !strstr(out, want)) {
        fprintf(stderr, "metal-compute %s: exit %d, output:\n%s\n(wanted a refusal naming \"%s\")\n", args, st, out,
                want);
        free(out);
        return 1;
    }
    free(out);
    return 0;
}

MC_TEST(cli_unknown_arguments_are_refused)
{
    CHECK_EQ(expect_refusal("version --bogus", "unexpected argument '--bogus'"), 0);
    CHECK_EQ(expect_refusal("help --bogus", "unexpected argument '--bogus'"), 0);
    CHECK_EQ(expect_refusal("--version --bogus", "unexpected argument '--bogus'"), 0);
    CHECK_EQ(expect_refusal("info --bogus", "'--bogus'"), 0);
    CHECK_EQ(expect_refusal("bench --bogus", "'--bogus'"), 0);
    CHECK_EQ(expect_refusal("cache --bogus", "'--bogus'"), 0);
    CHECK_EQ(expect_refusal("cache list --bogus", "'--bogus'"), 0);
    CHECK_EQ(expect_refusal("cache clear --bogus", "'--bogus'"), 0);
    CHECK_EQ(expect_refusal("run gray-scott --bogus", "'--bogus'"), 0);
    CHECK_EQ(expect_refusal("bogus", "unknown command 'bogus'"), 0);
    return 0;
}

MC_TEST(cli_fault_lists_are_refused_before_work)
{
    char dir[] = "/tmp/mc-rel-XXXXXX";
    CHECK(mkdtemp(dir));
    char args[8192];
    static const char *bad[] = {"timeout@-1", "timeout@99999999999999999999", "kill@-1", "garbage",
                                "timeout@3,page-fault@3"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        snprintf(args, sizeof args, "run gray-scott --size 16 --steps 10 --out %s/x.png --inject-faults %s", dir,
                 bad[i]);
        CHECK_EQ(expect_refusal(args, "--inject-faults"), 0);
        snprintf(args, sizeof args, "run gray-scott --size 16 --steps 10 --out %s/x.png --isolate --inject-faults %s",
                 dir, bad[i]);
        CHECK_EQ(expect_refusal(args, "--inject-faults"), 0);
    }
    snprintf(args, sizeof args, "run gray-scott --size 16 --steps 10 --out %s/x.png", dir);
    setenv("MC_INJECT_FAULTS", "garbage", 1);
    int rc = expect_refusal(args, "MC_INJECT_FAULTS: 'garbage' is not KIND@N");
    unsetenv("MC_INJECT_FAULTS");
    CHECK_EQ(rc, 0);
    snprintf(args, sizeof args, "%s/x.png", dir);
    CHECK(access(args, F_OK) != 0); /* nothing ran */
    rmdir(dir);
    return 0;
}

MC_TEST(cli_faults_that_never_fired_are_reported)
{
    char dir[] = "/tmp/mc-rel-XXXXXX";
    CHECK(mkdtemp(dir));
    char cmd[8192];
    const char *modes[] = {"", "--isolate"};
    for (int m = 0; m < 2; m++) {
        snprintf(cmd, sizeof cmd,
                 "%s/metal-compute run gray-scott --size 16 --steps 20 --out %s/x.png %s "
                 "--inject-faults timeout@2,%s@900000",
                 MC_BINARY_DIR, dir, modes[m], m ? "kill" : "page-fault");
        int st = -1;
        char *out = run_command(cmd, &st);
        CHECK(out);
        fprintf(stderr, "%s", out);
        CHECK_EQ(st, 0);
        CHECK_STR_CONTAINS(out, m ? "kill@900000 never fired" : "page-fault@900000 never fired");
        CHECK(!strstr(out, "timeout@2 never fired"));
        free(out);
    }
    snprintf(cmd, sizeof cmd, "%s/x.png", dir);
    unlink(cmd);
    rmdir(dir);
    return 0;
}

/* ---- the pipeline cache's commands ------------------------------------- */

static int write_text(const char *path, const char *text, size_t len)
{
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    size_t n = fwrite(text, 1, len, f);
    return fclose(f) == 0 && n == len ? 0 : -1;
}

static bool exists(const char *dir, const char *name)
{
    char p[2048];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    return access(p, F_OK) == 0;
}

/* Runs `metal-compute ARGS` with MC_CACHE_DIR=cache; exit status, output. */
static char *cache_command(const char *cache, const char *env, const char *args, int *st)
{
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "MC_CACHE_DIR='%s' %s %s/metal-compute %s", cache, env ? env : "", MC_BINARY_DIR, args);
    return run_command(cmd, st);
}

MC_TEST(cache_commands_refuse_a_folder_that_is_not_a_cache)
{
    /* A user's own folder named by MC_CACHE_DIR: nothing in it may go. */
    char dir[] = "/tmp/mc-rel-XXXXXX";
    CHECK(mkdtemp(dir));
    char p[1024];
    snprintf(p, sizeof p, "%s/stats", dir);
    CHECK_EQ(write_text(p, "mine\n", 5), 0);
    snprintf(p, sizeof p, "%s/.tmp-notes", dir);
    CHECK_EQ(write_text(p, "mine\n", 5), 0);
    snprintf(p, sizeof p, "%s/empty", dir);
    CHECK_EQ(mkdir(p, 0700), 0);
    snprintf(p, sizeof p, "%s/photos", dir);
    CHECK_EQ(mkdir(p, 0700), 0);
    snprintf(p, sizeof p, "%s/photos/stats", dir);
    CHECK_EQ(write_text(p, "mine\n", 5), 0);
    const char *cmds[] = {"cache clear", "cache list", "cache stats"};
    for (int i = 0; i < 3; i++) {
        int st = 0;
        char *out = cache_command(dir, NULL, cmds[i], &st);
        CHECK(out);
        if (st == 0 || !strstr(out, "is not a metal-compute pipeline cache") || strstr(out, "removed")) {
            fprintf(stderr, "%s: exit %d:\n%s\n", cmds[i], st, out);
            free(out);
            return 1;
        }
        free(out);
    }
    CHECK(exists(dir, "stats"));
    CHECK(exists(dir, ".tmp-notes"));
    CHECK(exists(dir, "empty"));
    CHECK(exists(dir, "photos/stats"));
    /* the same for a device folder's name on a folder others may write */
    snprintf(p, sizeof p, "%s/cpu-x", dir);
    CHECK_EQ(mkdir(p, 0777), 0);
    CHECK_EQ(chmod(p, 0777), 0);
    int st = 0;
    char *out = cache_command(dir, NULL, "cache clear", &st);
    CHECK(out);
    CHECK_NE(st, 0);
    free(out);
    CHECK(exists(dir, "stats"));
    snprintf(p, sizeof p, "rm -rf '%s'", dir);
    CHECK_EQ(system(p), 0);
    return 0;
}

/* A manifest of the example kernels for the CPU device, in dir. */
static int write_manifest(const char *dir, int kernels)
{
    static const char *fns[] = {"saxpy", "add_one", "iota", "spin"};
    char text[2048] = "# the CPU device's example kernels\n", p[8192];
    for (int i = 0; i < kernels; i++) {
        size_t len = strlen(text);
        snprintf(text + len, sizeof text - len, "%s/examples/kernels/basic.metal msl %s\n", MC_SOURCE_DIR, fns[i]);
    }
    snprintf(p, sizeof p, "%s/manifest", dir);
    return write_text(p, text, strlen(text));
}

MC_TEST(cache_clear_removes_only_what_the_cache_wrote)
{
    char dir[] = "/tmp/mc-rel-XXXXXX";
    CHECK(mkdtemp(dir));
    char cache[256], args[1024], p[1024];
    snprintf(cache, sizeof cache, "%s/cache", dir);
    CHECK_EQ(write_manifest(dir, 1), 0);
    snprintf(args, sizeof args, "cache build %s/manifest --device cpu", dir);
    int st = -1;
    char *out = cache_command(cache, NULL, args, &st);
    CHECK(out);
    fprintf(stderr, "%s", out);
    CHECK_EQ(st, 0);
    free(out);
    CHECK(exists(cache, "CACHEDIR.TAG"));
    /* The user's files beside and inside the cache's. */
    DIR *d = opendir(cache);
    CHECK(d);
    char device_folder[512] = "";
    struct dirent *de;
    while ((de = readdir(d)) != NULL)
        if (!strncmp(de->d_name, "cpu-", 4)) snprintf(device_folder, sizeof device_folder, "%s", de->d_name);
    closedir(d);
    CHECK(device_folder[0]);
    snprintf(p, sizeof p, "%s/%s/notes.txt", cache, device_folder);
    CHECK_EQ(write_text(p, "mine\n", 5), 0);
    snprintf(p, sizeof p, "%s/%s/.tmp-mine", cache, device_folder);
    CHECK_EQ(write_text(p, "mine\n", 5), 0);
    snprintf(p, sizeof p, "%s/mine", cache);
    CHECK_EQ(mkdir(p, 0700), 0);
    snprintf(p, sizeof p, "%s/mine/stats", cache);
    CHECK_EQ(write_text(p, "mine\n", 5), 0);
    snprintf(p, sizeof p, "%s/empty", cache);
    CHECK_EQ(mkdir(p, 0700), 0);
    out = cache_command(cache, NULL, "cache clear", &st);
    CHECK(out);
    fprintf(stderr, "%s", out);
    CHECK_EQ(st, 0);
    CHECK_STR_CONTAINS(out, "removed 1 entry");
    free(out);
    snprintf(p, sizeof p, "%s/notes.txt", device_folder);
    CHECK(exists(cache, p));
    snprintf(p, sizeof p, "%s/.tmp-mine", device_folder);
    CHECK(exists(cache, p));
    snprintf(p, sizeof p, "%s/stats", device_folder);
    CHECK(!exists(cache, p)); /* the cache's own statistics went */
    CHECK(exists(cache, "mine/stats"));
    CHECK(exists(cache, "empty"));
    snprintf(p, sizeof p, "rm -rf '%s'", dir);
    CHECK_EQ(system(p), 0);
    return 0;
}

MC_TEST(cache_build_refuses_manifests_that_are_not_text_files)
{
    char dir[] = "/tmp/mc-rel-XXXXXX";
    CHECK(mkdtemp(dir));
    char p[512], args[1024], cache[256];
    snprintf(cache, sizeof cache, "%s/cache", dir);
    static const struct {
        const char *name, *text, *why;
        size_t len;
    } bad[] = {
        {"empty", "", "it is empty", 0},
        {"comments", "# nothing\n\n", "lists no kernels", 11},
        {"binary", "a.c c f\0\1\2\n", "NUL bytes", 11},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        snprintf(p, sizeof p, "%s/%s", dir, bad[i].name);
        CHECK_EQ(write_text(p, bad[i].text, bad[i].len), 0);
        snprintf(args, sizeof args, "cache build %s --device cpu", p);
        int st = 0;
        char *out = cache_command(cache, NULL, args, &st);
        CHECK(out);
        if (st == 0 || !strstr(out, bad[i].why)) {
            fprintf(stderr, "%s: exit %d:\n%s\n", bad[i].name, st, out);
            free(out);
            return 1;
        }
        free(out);
    }
    /* A FIFO would block a reader for ever; /dev/zero never ends; a
     * manifest over the cap is refused before it is read. */
    snprintf(p, sizeof p, "%s/fifo", dir);
    CHECK_EQ(mkfifo(p, 0600), 0);
    const char *special[][2] = {{p, "a FIFO"}, {"/dev/zero", "a device"}, {dir, "a folder"}};
    for (int i = 0; i < 3; i++) {
        snprintf(args, sizeof args, "cache build %s --device cpu", special[i][0]);
        int st = 0;
        char *out = cache_command(cache, "timeout 20", args, &st);
        CHECK(out);
        if (st == 0 || st == 124 || !strstr(out, special[i][1])) {
            fprintf(stderr, "%s: exit %d:\n%s\n", special[i][0], st, out);
            free(out);
            return 1;
        }
        free(out);
    }
    snprintf(p, sizeof p, "%s/huge", dir);
    FILE *f = fopen(p, "wb");
    CHECK(f);
    for (int i = 0; i < 70000; i++) fputs("# a very long manifest\n", f);
    CHECK_EQ(fclose(f), 0);
    snprintf(args, sizeof args, "cache build %s --device cpu", p);
    CHECK_EQ(expect_refusal(args, "over the limit"), 0);
    snprintf(p, sizeof p, "rm -rf '%s'", dir);
    CHECK_EQ(system(p), 0);
    return 0;
}

MC_TEST(cache_build_reports_entries_lost_to_the_size_cap)
{
    char dir[] = "/tmp/mc-rel-XXXXXX";
    CHECK(mkdtemp(dir));
    char cache[256], args[1024];
    snprintf(cache, sizeof cache, "%s/cache", dir);
    CHECK_EQ(write_manifest(dir, 3), 0);
    snprintf(args, sizeof args, "cache build %s/manifest --device cpu", dir);
    /* Room for about one entry (each is some KiB): two are evicted. */
    int st = 0;
    char *out = cache_command(cache, "MC_CACHE_MAX_BYTES=1", args, &st);
    CHECK(out);
    fprintf(stderr, "%s", out);
    CHECK_NE(st, 0);
    CHECK_STR_CONTAINS(out, "EVICTED");
    CHECK_STR_CONTAINS(out, "evicted them");
    free(out);
    /* With room for all, the same build succeeds. */
    out = cache_command(cache, NULL, args, &st);
    CHECK(out);
    CHECK_EQ(st, 0);
    CHECK(!strstr(out, "EVICTED"));
    free(out);
    char p[1024];
    snprintf(p, sizeof p, "rm -rf '%s'", dir);
    CHECK_EQ(system(p), 0);
    return 0;
}

/* The hits_disk counter of the one device folder under cache; -1 if none. */
static long long disk_hits(const char *cache)
{
    DIR *d = opendir(cache);
    if (!d) return -1;
    long long hits = -1;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (strncmp(de->d_name, "cpu-", 4) != 0) continue;
        char p[1024], text[4097];
        snprintf(p, sizeof p, "%s/%.255s/stats", cache, de->d_name);
        FILE *f = fopen(p, "r");
        if (!f) continue;
        size_t n = fread(text, 1, sizeof text - 1, f);
        fclose(f);
        text[n] = '\0';
        const char *h = strstr(text, "hits_disk ");
        if (h) hits = atoll(h + 10);
    }
    closedir(d);
    return hits;
}

MC_TEST(cache_statistics_of_concurrent_isolated_runs_are_all_saved)
{
    /* Each worker loads the kernel from disk once and ends by _exit: four
     * runs at once must add four disk hits to the folder's statistics. */
    char dir[] = "/tmp/mc-rel-XXXXXX";
    CHECK(mkdtemp(dir));
    char cache[256], cmd[4096];
    snprintf(cache, sizeof cache, "%s/cache", dir);
    const char *run = "run gray-scott --device cpu --size 16 --steps 30 --isolate";
    snprintf(cmd, sizeof cmd, "MC_CACHE_DIR=%s %s/metal-compute %s --out %s/warm.png", cache, MC_BINARY_DIR, run, dir);
    int st = -1;
    char *out = run_command(cmd, &st);
    CHECK(out);
    CHECK_EQ(st, 0);
    free(out);
    long long before = disk_hits(cache);
    CHECK_GE(before, 0);
    snprintf(cmd, sizeof cmd,
             "for i in 1 2 3 4; do MC_CACHE_DIR=%s %s/metal-compute %s --out %s/$i.png >/dev/null & done; "
             "wait; for i in 1 2 3 4; do test -s %s/$i.png || exit 1; done",
             cache, MC_BINARY_DIR, run, dir, dir);
    out = run_command(cmd, &st);
    CHECK(out);
    fprintf(stderr, "%s", out);
    CHECK_EQ(st, 0);
    free(out);
    CHECK_EQ(disk_hits(cache) - before, 4);
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    CHECK_EQ(system(cmd), 0);
    return 0;
}

/* ---- output files -------------------------------------------------------- */

/* Files in dir whose name starts with prefix (temporary files left over). */
static int count_prefixed(const char *dir, const char *prefix)
{
    DIR *d = opendir(dir);
    if (!d) return -1;
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) n += !strncmp(de->d_name, prefix, strlen(prefix));
    closedir(d);
    return n;
}

MC_TEST(cli_bad_output_paths_are_refused_before_work)
{
    char dir[] = "/tmp/mc-rel-XXXXXX";
    CHECK(mkdtemp(dir));
    char args[1024];
    const char *gs = "run gray-scott --size 16 --steps 10";
    /* each refused at once with its cause, before the device is opened */
    snprintf(args, sizeof args, "%s --out %s", gs, dir);
    CHECK_EQ(expect_refusal(args, "is a folder"), 0);
    snprintf(args, sizeof args, "%s --out %s/", gs, dir);
    CHECK_EQ(expect_refusal(args, "names a folder"), 0);
    snprintf(args, sizeof args, "%s --out ''", gs);
    CHECK_EQ(expect_refusal(args, "output path is empty"), 0);
    snprintf(args, sizeof args, "%s --out /proc/x.png", gs);
    CHECK_EQ(expect_refusal(args, "cannot create a file beside '/proc/x.png'"), 0);
    snprintf(args, sizeof args, "%s --out %s/no/such/folder/x.png", gs, dir);
    CHECK_EQ(expect_refusal(args, "No such file or directory"), 0);
    /* the benchmark's outputs too, before any benchmark runs */
    snprintf(args, sizeof args, "bench --device cpu --json %s", dir);
    CHECK_EQ(expect_refusal(args, "--json"), 0);
    snprintf(args, sizeof args, "bench --device cpu --svg /proc/x.svg");
    CHECK_EQ(expect_refusal(args, "--svg"), 0);
    snprintf(args, sizeof args, "bench --device cpu --json ''");
    CHECK_EQ(expect_refusal(args, "output path is empty"), 0);
    CHECK_EQ(count_prefixed(dir, "."), 2); /* "." and "..": nothing was left behind */
    rmdir(dir);
    return 0;
}

MC_TEST(cli_full_disk_keeps_the_old_image_byte_for_byte)
{
    /* A full disk, as a file size limit: writes past it fail with EFBIG
     * (SIGXFSZ ignored, as a shell's trap '' XFSZ leaves it for exec). */
    char dir[] = "/tmp/mc-rel-XXXXXX";
    CHECK(mkdtemp(dir));
    char img[256], cmd[4096];
    snprintf(img, sizeof img, "%s/field.png", dir);
    snprintf(cmd, sizeof cmd, "%s/metal-compute run gray-scott --device cpu --size 16 --steps 10 --out %s",
             MC_BINARY_DIR, img);
    int st = -1;
    char *out = run_command(cmd, &st);
    CHECK(out);
    CHECK_EQ(st, 0);
    free(out);
    size_t old_len = 0;
    char *old = mct_read_file(img, &old_len);
    CHECK(old);
    CHECK_GT(old_len, 0);
    /* 4 blocks of 512 bytes: far less than a 256 x 256 image */
    snprintf(cmd, sizeof cmd,
             "trap '' XFSZ; ulimit -f 4; exec %s/metal-compute run gray-scott --device cpu --size 256 --steps 10 "
             "--out %s",
             MC_BINARY_DIR, img);
    out = run_command(cmd, &st);
    CHECK(out);
    fprintf(stderr, "%s", out);
    CHECK_NE(st, 0);
    CHECK(st < 128); /* an error, not a signal */
    CHECK_STR_CONTAINS(out, "File too large");
    free(out);
    size_t now_len = 0;
    char *now = mct_read_file(img, &now_len);
    CHECK(now);
    CHECK_EQ(now_len, old_len);
    CHECK_EQ(memcmp(now, old, old_len), 0);
    free(now);
    free(old);
    CHECK_EQ(count_prefixed(dir, ".field.png.tmp-"), 0);
    unlink(img);
    CHECK_EQ(rmdir(dir), 0);
    return 0;
}

/* ---- error messages -------------------------------------------------------- */

MC_TEST(cli_nested_worker_errors_read_once_and_whole)
{
    char dir[] = "/tmp/mc-rel-XXXXXX";
    CHECK(mkdtemp(dir));
    char cmd[4096];
    static const struct {
        const char *opts, *want;
    } cases[] = {
        /* refused in the worker: the supervisor names the runner once */
        {"--inject-faults not-permitted@3", "runner 'gray-scott' (in its worker): the failure is not recoverable"},
        /* the worker's whole error inside the supervisor's, to its end
         * (a fault on every command buffer: a worker commits a few before
         * its first fails, and each new one must fail at once) */
        {"--max-restarts 1 --inject-faults device-lost@1,device-lost@2,device-lost@3,device-lost@4,device-lost@5,"
         "device-lost@6,device-lost@7,device-lost@8,device-lost@9,device-lost@10,device-lost@11,device-lost@12",
         "the worker reported MC_ERR_DEVICE_LOST: the device was lost"},
    };
    for (int i = 0; i < 2; i++) {
        snprintf(cmd, sizeof cmd,
                 "%s/metal-compute run gray-scott --device cpu --size 16 --steps 100 --isolate "
                 "--out %s/x.png %s",
                 MC_BINARY_DIR, dir, cases[i].opts);
        int st = 0;
        char *out = run_command(cmd, &st);
        CHECK(out);
        fprintf(stderr, "%s", out);
        CHECK_NE(st, 0);
        CHECK_STR_CONTAINS(out, cases[i].want);
        CHECK(!strstr(out, "runner 'gray-scott': runner 'gray-scott'"));
        CHECK(!strstr(out, "(in its worker): runner 'gray-scott'"));
        CHECK(!strstr(out, "MC_ERR_DEVICE_LOST: runner 'gray-scott'"));
        const char *last = strstr(out, "metal-compute: gray-scott: ");
        CHECK(last);
        CHECK_STR_CONTAINS(last, "(checkpoint), furthest reached "); /* the whole message, to its end */
        CHECK_STR_CONTAINS(last, ")\n");
        free(out);
    }
    rmdir(dir);
    return 0;
}

MC_TEST(cli_size_that_cannot_fit_is_refused_with_the_numbers)
{
    /* --size 16384 on the CPU device needs about 27 GiB (43 isolated). */
    double have = (double)sysconf(_SC_PHYS_PAGES) * (double)sysconf(_SC_PAGESIZE);
    if (have >= 48.0 * (1 << 30))
        MC_SKIP("this machine has %.0f GiB: --size 16384 fits and would run", have / (1 << 30));
    char dir[] = "/tmp/mc-rel-XXXXXX";
    CHECK(mkdtemp(dir));
    char args[1024];
    snprintf(args, sizeof args, "run gray-scott --device cpu --size 16384 --steps 1 --out %s/x.png", dir);
    CHECK_EQ(expect_refusal(args, "--size 16384 needs about"), 0);
    CHECK_EQ(expect_refusal(args, "GiB of host memory"), 0);
    snprintf(args, sizeof args, "run gray-scott --device cpu --size 16384 --steps 1 --isolate --out %s/x.png", dir);
    CHECK_EQ(expect_refusal(args, "this machine has"), 0);
    CHECK_EQ(count_prefixed(dir, "."), 2); /* refused before the output was even probed */
    rmdir(dir);
    return 0;
}
