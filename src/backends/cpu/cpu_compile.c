/*
 * DOC: CPU device: running the compilers
 *
 * C kernels are built by the system C compiler, MSL kernels (translated by
 * cpu_msl.c) by clang++, into a shared object in a private temporary
 * directory; its bytes go to cpu_library.c, which loads them (through
 * cpu_loader.c) the same way an archived pipeline is loaded back. Kernels
 * are plain -O3 code (vectorised, portable: no -march); none of the host
 * build's flags (sanitizers included) reach them. Also here: the compiler
 * identity that keys the pipeline cache, and MSL for the CUDA device (PTX
 * from clang's CUDA mode), which runs the same compiler.
 *
 * The compiler is $CC, else the one this library was built with, else cc.
 * Options are split at white space; quoting is not supported.
 */
#include "backends/cpu/cpu.h"
#include "msl/msl.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef MC_CC_DEFAULT
#define MC_CC_DEFAULT "cc"
#endif

/* Compiler output kept for the log; the rest is read and dropped so the
 * compiler never blocks on a full pipe. */
#define LOG_MAX (1u << 20)

/* ---- running the compiler ------------------------------------------------ */

typedef struct argv_list {
    char *v[96];
    size_t n;
} argv_list;

static bool push_arg(argv_list *a, char *s)
{
    if (a->n + 1 >= MC__ARRAY_LEN(a->v)) return false;
    a->v[a->n++] = s;
    a->v[a->n] = NULL;
    return true;
}

/* Splits s (modified in place) at white space. */
static bool push_words(argv_list *a, char *s)
{
    char *save = NULL;
    for (char *tok = strtok_r(s, " \t\r\n", &save); tok; tok = strtok_r(NULL, " \t\r\n", &save))
        if (!push_arg(a, tok)) return false;
    return true;
}

static const char *compiler_command(void)
{
    const char *cc = mc__env_str("CC", NULL);
    if (cc) return cc;
    /* The build's compiler is named by its full path; an installed library
     * may run where that path does not exist. */
    if (MC_CC_DEFAULT[0] != '/' || access(MC_CC_DEFAULT, X_OK) == 0) return MC_CC_DEFAULT;
    return "cc";
}

/* MSL kernels are C++ for clang (ext_vector_type, the forced-in header):
 * $MC_MSL_CXX, else clang++. */
static const char *msl_compiler_command(void)
{
    return mc__env_str("MC_MSL_CXX", "clang++");
}

/* Fixed flags of an MSL build: part of the compiler identity. Unknown
 * attributes are MSL's [[buffer(n)]] and friends, read by cpu_msl.c. */
#define MSL_FLAGS                                                                                     \
    "-O3 -fno-math-errno -std=c++17 -fPIC -shared -fno-exceptions -fno-rtti -Wno-unknown-attributes " \
    "-Wno-duplicate-decl-specifier"

typedef struct run_result {
    bool ran;      /* the program started */
    int exit_code; /* -1 when killed by a signal */
    char *out;     /* stdout and stderr, NUL-terminated (malloc'd) */
    size_t out_len;
} run_result;

/* Runs argv (searched in PATH) in dir (NULL: here), stdout and stderr into
 * r->out. An error status means the run could not be attempted at all. */
static mc_status run_capture(char *const *argv, const char *dir, run_result *r)
{
    memset(r, 0, sizeof *r);
    r->out = mc__malloc(1);
    if (!r->out) return mc__fail(MC_ERR_NO_MEMORY, "out of host memory");
    r->out[0] = '\0';
    int fds[2];
    /* close-on-exec, so compilers started concurrently by other threads do
     * not inherit the write end and hold our end-of-file back */
    if (pipe2(fds, O_CLOEXEC) != 0) {
        free(r->out);
        r->out = NULL;
        return mc__fail(MC_ERR_IO, "cannot create a pipe: %s", strerror(errno));
    }
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_adddup2(&fa, fds[1], 1);
    posix_spawn_file_actions_adddup2(&fa, fds[1], 2);
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 29))
    if (dir) posix_spawn_file_actions_addchdir_np(&fa, dir);
#else
    (void)dir;
#endif
    pid_t pid;
    int rc = posix_spawnp(&pid, argv[0], &fa, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    close(fds[1]);
    if (rc != 0) {
        close(fds[0]);
        free(r->out);
        r->out = mc__asprintf("cannot run '%s': %s (set $CC to a C compiler)\n", argv[0], strerror(rc));
        r->out_len = r->out ? strlen(r->out) : 0;
        return MC_OK;
    }
    r->ran = true;
    size_t cap = 1;
    char chunk[4096];
    for (;;) {
        ssize_t n = read(fds[0], chunk, sizeof chunk);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        size_t keep = MC__MIN((size_t)n, LOG_MAX - r->out_len);
        if (keep && r->out_len + keep + 1 > cap) {
            size_t ncap = MC__MAX(cap * 2, r->out_len + keep + 1);
            char *p = mc__realloc(r->out, ncap);
            if (!p) continue; /* keep what we have; drain the rest */
            r->out = p;
            cap = ncap;
        }
        if (keep && r->out_len + keep + 1 <= cap) {
            memcpy(r->out + r->out_len, chunk, keep);
            r->out_len += keep;
            r->out[r->out_len] = '\0';
        }
    }
    close(fds[0]);
    int status = 0;
    pid_t w;
    while ((w = waitpid(pid, &status, 0)) < 0 && errno == EINTR) {
    }
    if (w < 0) r->exit_code = 0; /* SIGCHLD ignored by the program: judge by the output file */
    else r->exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    return MC_OK;
}

/* ---- files ------------------------------------------------------------------ */

static mc_status write_file(const char *path, const void *data, size_t len)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0) return mc__fail(MC_ERR_IO, "cannot create %s: %s", path, strerror(errno));
    const char *p = data;
    while (len) {
        ssize_t n = write(fd, p, len);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            int e = errno;
            close(fd);
            return mc__fail(MC_ERR_IO, "cannot write %s: %s", path, strerror(e));
        }
        p += n;
        len -= (size_t)n;
    }
    if (close(fd) != 0) return mc__fail(MC_ERR_IO, "cannot write %s: %s", path, strerror(errno));
    return MC_OK;
}

static mc_status read_file(const char *path, void **data, size_t *len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return mc__fail(MC_ERR_IO, "cannot open %s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || st.st_size <= 0) {
        close(fd);
        return mc__fail(MC_ERR_IO, "%s is empty or unreadable", path);
    }
    size_t size = (size_t)st.st_size, got = 0;
    char *buf = mc__malloc(size);
    if (!buf) {
        close(fd);
        return mc__fail(MC_ERR_NO_MEMORY, "out of host memory reading %s", path);
    }
    while (got < size) {
        ssize_t n = read(fd, buf + got, size - got);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        got += (size_t)n;
    }
    close(fd);
    if (got != size) {
        free(buf);
        return mc__fail(MC_ERR_IO, "short read of %s", path);
    }
    *data = buf;
    *len = size;
    return MC_OK;
}

static int remove_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    remove(path);
    return 0;
}

static void remove_tree(const char *dir)
{
    nftw(dir, remove_entry, 8, FTW_DEPTH | FTW_PHYS);
}

/* dir/name into out; false when it does not fit */
static bool join_path(char *out, size_t cap, const char *dir, const char *name)
{
    size_t a = strlen(dir), b = strlen(name);
    if (a + b + 2 > cap) return false;
    memcpy(out, dir, a);
    out[a] = '/';
    memcpy(out + a + 1, name, b + 1);
    return true;
}

/* Build directories carry their creator's pid (mc-cpu-PID-XXXXXX): a
 * compiler run killed with its process leaves one behind, and the next
 * process to build removes those whose creator is gone (issue 15). */
static void remove_orphans(const char *tmp)
{
    DIR *d = opendir(tmp);
    if (!d) return;
    struct dirent *e;
    uid_t me = geteuid();
    while ((e = readdir(d)) != NULL) {
        long pid;
        char rest[64];
        if (strncmp(e->d_name, "mc-cpu-", 7) != 0 || sscanf(e->d_name + 7, "%ld-%63s", &pid, rest) != 2 || pid <= 0)
            continue;
        if (pid == (long)getpid() || kill((pid_t)pid, 0) == 0 || errno != ESRCH) continue;
        char path[PATH_MAX];
        struct stat st;
        if (!join_path(path, sizeof path, tmp, e->d_name) || lstat(path, &st) != 0 || !S_ISDIR(st.st_mode) ||
            st.st_uid != me)
            continue;
        mc__log(MC_LOG_DEBUG, "cpu.orphan_removed", "removing %s: left by process %ld, which is gone", path, pid);
        remove_tree(path);
    }
    closedir(d);
}

static pthread_once_t orphans_once = PTHREAD_ONCE_INIT;
static void remove_orphans_once(void)
{
    remove_orphans(mc__env_str("TMPDIR", "/tmp"));
}

static mc_status make_temp_dir(char *dir, size_t cap)
{
    pthread_once(&orphans_once, remove_orphans_once);
    int n = snprintf(dir, cap, "%s/mc-cpu-%ld-XXXXXX", mc__env_str("TMPDIR", "/tmp"), (long)getpid());
    if (n < 0 || (size_t)n >= cap) return mc__fail(MC_ERR_IO, "$TMPDIR is too long");
    if (!mkdtemp(dir))
        return mc__fail(MC_ERR_IO, "cannot create a directory under %s: %s", mc__env_str("TMPDIR", "/tmp"),
                        strerror(errno));
    return MC_OK;
}
/* -fcoroutines-ts where the MSL compiler has it, clang 14 to 16: kernels
 * whose barriers are in their own body run as coroutines (docs/MSL.md).
 * Clang 17 dropped the flag (coroutines are C++20 there; MSL stays C++17):
 * those kernels then run as fibers. Decided from `--version` (part of the
 * cache key), once per compiler command. */
static bool msl_coroutines_flag(const char *command)
{
    static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
    static char known_for[256];
    static bool known_flag;
    bool flag = false;
    pthread_mutex_lock(&lock);
    if (known_for[0] && !strcmp(known_for, command)) {
        flag = known_flag;
    } else {
        char *cc = mc__strdup(command);
        static char version[] = "--version";
        argv_list a = {.n = 0};
        run_result r = {.out = NULL};
        if (cc && push_words(&a, cc) && a.n && push_arg(&a, version) && run_capture(a.v, NULL, &r) == MC_OK && r.ran &&
            r.exit_code == 0 && r.out) {
            const char *v = strstr(r.out, "clang version ");
            int major = v ? atoi(v + 14) : 0;
            bool apple = strstr(r.out, "Apple clang") != NULL; /* Apple's 16 is LLVM 17 */
            flag = major >= 14 && major < (apple ? 16 : 17);
        }
        free(r.out);
        free(cc);
        snprintf(known_for, sizeof known_for, "%s", command);
        known_flag = flag;
    }
    pthread_mutex_unlock(&lock);
    return flag;
}

/* Compiles source in dir; on success *so holds the object's bytes. */
static mc_status compile_in(const char *dir, mc_language lang, const char *source, size_t len, const char *options,
                            void **so, size_t *so_len, char **log)
{
    const bool msl = lang == MC_LANG_MSL;
    char path[PATH_MAX], so_path[PATH_MAX];
    /* the longest name first: when it fits, the shorter ones below do */
    if (!join_path(path, sizeof path, dir, "mc/mc_cpu_kernel.h") ||
        !join_path(so_path, sizeof so_path, dir, "kernel.so"))
        return mc__fail(MC_ERR_IO, "temporary directory name too long");
    join_path(path, sizeof path, dir, msl ? "kernel.cpp" : "kernel.c");
    mc_status st = write_file(path, source, len);
    if (st != MC_OK) return st;
    join_path(path, sizeof path, dir, "mc");
    if (mkdir(path, 0700) != 0) return mc__fail(MC_ERR_IO, "cannot create %s: %s", path, strerror(errno));
    join_path(path, sizeof path, dir, "mc/mc_cpu_kernel.h");
    st = write_file(path, mc__cpu_kernel_header, strlen(mc__cpu_kernel_header));
    if (st != MC_OK) return st;
    if (msl) {
        join_path(path, sizeof path, dir, "mc_msl_cpu.h");
        st = write_file(path, mc__msl_cpu_header, strlen(mc__msl_cpu_header));
        if (st != MC_OK) return st;
    }

    char *cc = mc__strdup(msl ? msl_compiler_command() : compiler_command());
    char *opts = mc__strdup(options ? options : "");
    char inc[PATH_MAX + 2], out[PATH_MAX], src[PATH_MAX];
    /* Relative paths when the compiler runs in dir, so the log reads
     * "kernel.c:3:5: error: ..." rather than naming a temporary directory. */
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 29))
    const char *run_dir = dir;
    snprintf(inc, sizeof inc, "-I.");
    snprintf(out, sizeof out, "kernel.so");
    snprintf(src, sizeof src, msl ? "kernel.cpp" : "kernel.c");
#else
    const char *run_dir = NULL;
    snprintf(inc, sizeof inc, "-I%s", dir);
    join_path(out, sizeof out, dir, "kernel.so");
    join_path(src, sizeof src, dir, msl ? "kernel.cpp" : "kernel.c");
#endif
    char msl_flags[] = MSL_FLAGS, msl_include[] = "-include", msl_header[] = "mc_msl_cpu.h",
         boost[] = "-lboost_context", coro[] = "-fcoroutines-ts";
    static char opt[] = "-O3", std[] = "-std=c11", pic[] = "-fPIC", shared[] = "-shared", o[] = "-o", lm[] = "-lm";
    argv_list a = {.n = 0};
    bool ok = cc && opts && push_words(&a, cc) && a.n > 0;
    if (msl) /* the header is found through -I. (the compiler runs in dir) */
        ok = ok && push_words(&a, msl_flags) && push_arg(&a, inc) && push_arg(&a, msl_include) &&
             push_arg(&a, msl_header) && push_words(&a, opts) && push_arg(&a, o) && push_arg(&a, out) &&
             push_arg(&a, src) && push_arg(&a, boost) && push_arg(&a, lm) &&
             (!msl_coroutines_flag(msl_compiler_command()) || push_arg(&a, coro));
    else
        ok = ok && push_arg(&a, opt) && push_arg(&a, std) && push_arg(&a, pic) && push_arg(&a, shared) &&
             push_arg(&a, inc) && push_words(&a, opts) && push_arg(&a, o) && push_arg(&a, out) && push_arg(&a, src) &&
             push_arg(&a, lm);
    if (!ok) {
        free(cc);
        free(opts);
        if (!cc || !opts) return mc__fail(MC_ERR_NO_MEMORY, "out of host memory");
        return mc__fail(MC_ERR_INVALID_ARGUMENT, "empty $CC or too many compiler options");
    }
    run_result r;
    st = run_capture(a.v, run_dir, &r);
    char cc_name[64];
    snprintf(cc_name, sizeof cc_name, "%s", a.v[0]);
    free(cc);
    free(opts);
    if (st != MC_OK) return st;

    if (r.ran && r.exit_code == 0) st = read_file(so_path, so, so_len);
    if (!r.ran || r.exit_code != 0 || st != MC_OK) {
        /* the first line that says "error" is the useful summary */
        const char *first = r.out ? strstr(r.out, "error") : NULL;
        int flen = 0;
        if (first) {
            const char *eol = strchr(first, '\n');
            flen = (int)MC__MIN(eol ? (size_t)(eol - first) : strlen(first), 160u);
        }
        if (log) *log = r.out;
        else free(r.out);
        if (!r.ran)
            return mc__fail(MC_ERR_COMPILE,
                            msl ? "cannot run the MSL compiler '%s' (install clang or set $MC_MSL_CXX)"
                                : "cannot run the C compiler '%s' (set $CC)",
                            cc_name);
        if (r.exit_code != 0)
            return mc__fail(MC_ERR_COMPILE, "%s failed (exit %d)%s%.*s", cc_name, r.exit_code, first ? ": " : "", flen,
                            first ? first : "");
        return mc__fail(MC_ERR_COMPILE, "%s produced no shared object", cc_name);
    }
    if (r.out_len) mc__log(MC_LOG_DEBUG, "cpu.compile_output", "%s", r.out);
    free(r.out);
    return MC_OK;
}

mc_status mc__cpu_compile_object(mc_language lang, const char *source, size_t len, const char *options, void **so,
                                 size_t *so_len, char **log)
{
    char *cpp = NULL;
    if (lang == MC_LANG_MSL) {
        size_t cpp_len = 0;
        mc_status tst = mc__cpu_msl_translate(source, len, &cpp, &cpp_len, log);
        if (tst != MC_OK) return tst;
        source = cpp;
        len = cpp_len;
    }

    char dir[PATH_MAX];
    mc_status st = make_temp_dir(dir, sizeof dir);
    if (st != MC_OK) {
        free(cpp);
        return st;
    }
    st = compile_in(dir, lang, source, len, options, so, so_len, log);
    free(cpp);
    remove_tree(dir);
    return st;
}

/* ---- the archive ------------------------------------------------------------------ */

/* FNV-1a over the embedded kernel header: not a security boundary (the
 * cache's SHA-256 covers that), only a change detector for the ABI text. */
static uint64_t header_digest(const char *text)
{
    uint64_t h = 1469598103934665603ull;
    for (const char *p = text; *p; p++) h = (h ^ (unsigned char)*p) * 1099511628211ull;
    return h;
}

mc_status mc__cpu_compiler_identity(void *vdev, mc_language lang, char *out, size_t cap)
{
    mc__cpu_device *dev = vdev;
    if (lang != MC_LANG_C && lang != MC_LANG_MSL)
        return mc__fail(MC_ERR_UNSUPPORTED, "the cpu device compiles MSL and C kernels, not %s",
                        mc_language_name(lang));
    if (!dev || !out || !cap) return mc__fail(MC_ERR_INVALID_ARGUMENT, "no device or no room for the identity");
    const bool msl = lang == MC_LANG_MSL;
    char *identity = msl ? dev->msl_identity : dev->cc_identity;
    bool *known = msl ? &dev->msl_known : &dev->cc_known;
    mc_status st = MC_OK;
    pthread_mutex_lock(&dev->cc_lock);
    if (!*known) {
        const char *command = msl ? msl_compiler_command() : compiler_command();
        char *cc = mc__strdup(command);
        static char version[] = "--version";
        argv_list a = {.n = 0};
        run_result r = {.out = NULL};
        if (!cc || !push_words(&a, cc) || !a.n || !push_arg(&a, version)) {
            st = mc__fail(MC_ERR_INVALID_ARGUMENT, msl ? "empty $MC_MSL_CXX" : "empty $CC");
        } else if ((st = run_capture(a.v, NULL, &r)) == MC_OK) {
            if (!r.ran || r.exit_code != 0 || !r.out_len) {
                st = mc__fail(MC_ERR_UNSUPPORTED, "cannot ask the %s compiler '%s' for its version", msl ? "MSL" : "C",
                              a.v[0]);
            } else {
                /* The key must change with anything that changes the
                 * shared object: the whole command (flags in it too), our
                 * fixed flags, and the headers the source includes. */
                size_t n = strcspn(r.out, "\r\n");
                if (msl)
                    snprintf(identity, sizeof dev->msl_identity,
                             "%.*s | cxx='%s' | " MSL_FLAGS
                             " -lboost_context -lm | abi %d header %016llx msl %016llx front end %d",
                             (int)n, r.out, command, MC_CPU_ABI_VERSION,
                             (unsigned long long)header_digest(mc__cpu_kernel_header),
                             (unsigned long long)header_digest(mc__msl_cpu_header), MC__MSL_FRONT_END_REVISION);
                else
                    snprintf(identity, sizeof dev->cc_identity,
                             "%.*s | cc='%s' | -O3 -std=c11 -fPIC -shared -lm | abi %d header %016llx", (int)n, r.out,
                             command, MC_CPU_ABI_VERSION, (unsigned long long)header_digest(mc__cpu_kernel_header));
                *known = true;
            }
        }
        free(r.out);
        free(cc);
    }
    /* region loops change the code built from the same source (MC_MSL_REGIONS) */
    if (st == MC_OK) snprintf(out, cap, "%s%s", identity, msl && !mc__cpu_msl_regions_on() ? " | regions off" : "");
    pthread_mutex_unlock(&dev->cc_lock);
    return st;
}

/* ---- MSL for the CUDA device: PTX from clang's CUDA mode ------------------------ */

/* libdevice (the CUDA toolkit's libm as LLVM bitcode), linked into every
 * kernel: $MC_LIBDEVICE, else under $CUDA_PATH, else the default toolkit. */
static bool find_libdevice(char *out, size_t cap)
{
    const char *env = mc__env_str("MC_LIBDEVICE", NULL);
    if (env) {
        snprintf(out, cap, "%s", env);
        return access(out, R_OK) == 0;
    }
    const char *roots[] = {mc__env_str("CUDA_PATH", NULL), "/usr/local/cuda", "/usr/lib/nvidia-cuda-toolkit"};
    for (size_t i = 0; i < MC__ARRAY_LEN(roots); i++) {
        if (!roots[i]) continue;
        int n = snprintf(out, cap, "%s/nvvm/libdevice/libdevice.10.bc", roots[i]);
        if (n > 0 && (size_t)n < cap && access(out, R_OK) == 0) return true;
        n = snprintf(out, cap, "%s/libdevice/libdevice.10.bc", roots[i]);
        if (n > 0 && (size_t)n < cap && access(out, R_OK) == 0) return true;
    }
    return false;
}

static mc_status build_ptx_in(const char *dir, const char *cpp, size_t cpp_len, const char *libdevice,
                              const char *options, char **ptx, size_t *ptx_len, char **log)
{
    char path[PATH_MAX];
    if (!join_path(path, sizeof path, dir, "mc/mc_cpu_kernel.h"))
        return mc__fail(MC_ERR_IO, "temporary directory name too long");
    join_path(path, sizeof path, dir, "kernel.cu");
    mc_status st = write_file(path, cpp, cpp_len);
    if (st != MC_OK) return st;
    join_path(path, sizeof path, dir, "mc");
    if (mkdir(path, 0700) != 0) return mc__fail(MC_ERR_IO, "cannot create %s: %s", path, strerror(errno));
    join_path(path, sizeof path, dir, "mc/mc_cpu_kernel.h");
    if ((st = write_file(path, mc__cpu_kernel_header, strlen(mc__cpu_kernel_header))) != MC_OK) return st;
    join_path(path, sizeof path, dir, "mc_msl_cpu.h");
    if ((st = write_file(path, mc__msl_cpu_header, strlen(mc__msl_cpu_header))) != MC_OK) return st;

    char *cc = mc__strdup(msl_compiler_command()), *flags = mc__strdup(MC__MSL_CUDA_FLAGS),
         *opts = mc__strdup(options ? options : "");
    static char o[] = "-o", out[] = "kernel.ptx", src[] = "kernel.cu", xclang[] = "-Xclang",
                link[] = "-mlink-builtin-bitcode";
    char xclang2[] = "-Xclang";
    char *ld = mc__strdup(libdevice);
    argv_list a = {.n = 0};
    bool ok = cc && flags && opts && ld && push_words(&a, cc) && a.n > 0 && push_words(&a, flags) &&
              push_words(&a, opts) && push_arg(&a, o) && push_arg(&a, out) && push_arg(&a, src) &&
              push_arg(&a, xclang) && push_arg(&a, link) && push_arg(&a, xclang2) && push_arg(&a, ld);
    run_result r = {.out = NULL};
    if (ok) st = run_capture(a.v, dir, &r);
    char cc_name[64];
    snprintf(cc_name, sizeof cc_name, "%s", a.n ? a.v[0] : "?");
    free(cc);
    free(flags);
    free(opts);
    free(ld);
    if (!ok) return mc__fail(MC_ERR_NO_MEMORY, "out of host memory or too many compiler options");
    if (st != MC_OK) return st;
    void *bytes = NULL;
    size_t n = 0;
    join_path(path, sizeof path, dir, "kernel.ptx");
    if (r.ran && r.exit_code == 0) st = read_file(path, &bytes, &n);
    if (!r.ran || r.exit_code != 0 || st != MC_OK) {
        if (log) *log = r.out;
        else free(r.out);
        if (!r.ran) return mc__fail(MC_ERR_COMPILE, "cannot run the MSL compiler '%s' (install clang)", cc_name);
        return mc__fail(MC_ERR_COMPILE, "%s (CUDA mode) failed (exit %d)", cc_name, r.exit_code);
    }
    free(r.out);
    char *text = mc__realloc(bytes, n + 1); /* the driver reads PTX as a C string */
    if (!text) {
        free(bytes);
        return mc__fail(MC_ERR_NO_MEMORY, "out of host memory");
    }
    text[n] = '\0';
    *ptx = text;
    *ptx_len = n;
    return MC_OK;
}

mc_status mc__msl_build_ptx(const char *source, size_t len, const char *options, char **ptx, size_t *ptx_len,
                            char **log)
{
    if (log) *log = NULL;
    if (!source || !ptx || !ptx_len) return mc__fail(MC_ERR_INVALID_ARGUMENT, "no source or no result pointer");
    *ptx = NULL;
    *ptx_len = 0;
    char libdevice[PATH_MAX];
    if (!find_libdevice(libdevice, sizeof libdevice))
        return mc__fail(MC_ERR_UNSUPPORTED,
                        "MSL on the cuda device needs libdevice.10.bc from the CUDA toolkit "
                        "(set $MC_LIBDEVICE or $CUDA_PATH)");
    char *cpp = NULL;
    size_t cpp_len = 0;
    mc_status st = mc__msl_translate(source, len ? len : strlen(source), MC__MSL_CUDA, &cpp, &cpp_len, log);
    if (st != MC_OK) return st;
    char dir[PATH_MAX];
    st = make_temp_dir(dir, sizeof dir);
    if (st == MC_OK) {
        st = build_ptx_in(dir, cpp, cpp_len, libdevice, options, ptx, ptx_len, log);
        remove_tree(dir);
    }
    free(cpp);
    return st;
}

static pthread_mutex_t msl_cuda_id_lock = PTHREAD_MUTEX_INITIALIZER;
static char msl_cuda_id[512];

mc_status mc__msl_cuda_identity(char *out, size_t cap)
{
    if (!out || !cap) return mc__fail(MC_ERR_INVALID_ARGUMENT, "no room for the identity");
    mc_status st = MC_OK;
    pthread_mutex_lock(&msl_cuda_id_lock);
    if (!msl_cuda_id[0]) {
        char *cc = mc__strdup(msl_compiler_command());
        static char version[] = "--version";
        argv_list a = {.n = 0};
        run_result r = {.out = NULL};
        char libdevice[PATH_MAX] = "";
        (void)find_libdevice(libdevice, sizeof libdevice);
        if (!cc || !push_words(&a, cc) || !a.n || !push_arg(&a, version)) {
            st = mc__fail(MC_ERR_INVALID_ARGUMENT, "empty $MC_MSL_CXX");
        } else if ((st = run_capture(a.v, NULL, &r)) == MC_OK) {
            if (!r.ran || r.exit_code != 0 || !r.out_len) {
                st = mc__fail(MC_ERR_UNSUPPORTED, "cannot ask the MSL compiler '%s' for its version", a.v[0]);
            } else {
                size_t n = strcspn(r.out, "\r\n");
                snprintf(msl_cuda_id, sizeof msl_cuda_id,
                         "%.*s | cxx='%s' | %s | libdevice %s | msl %016llx front end %d", (int)n, r.out,
                         msl_compiler_command(), MC__MSL_CUDA_FLAGS, libdevice,
                         (unsigned long long)header_digest(mc__msl_cpu_header), MC__MSL_FRONT_END_REVISION);
            }
        }
        free(r.out);
        free(cc);
    }
    if (st == MC_OK) snprintf(out, cap, "%s", msl_cuda_id);
    pthread_mutex_unlock(&msl_cuda_id_lock);
    return st;
}
