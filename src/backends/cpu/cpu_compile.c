/*
 * DOC: CPU device: libraries, pipelines and the pipeline archive
 *
 * C kernels are built by the system C compiler into a shared object in a
 * private temporary directory and loaded from memory (memfd), the same way
 * an archived pipeline is loaded back, so a compiled library and an
 * imported one are the same thing. The object's bytes stay with the
 * library: they are what pipeline_export archives. Kernels are plain -O3
 * code (vectorised, portable: no -march); none of the host build's flags (sanitizers included) reach them.
 *
 * The compiler is $CC, else the one this library was built with, else cc.
 * Options are split at white space; quoting is not supported.
 */
#include "backends/cpu/cpu.h"
#include "msl/msl.h"

#include <dlfcn.h>
#include <dirent.h>
#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <signal.h>
#include <link.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

/* Under AddressSanitizer a kernel library stays mapped after dlclose: MSL
 * kernels are C++ with thread-local storage, and LeakSanitizer's exit-time
 * scan reads each thread's dynamic TLS blocks, which dlclose would unmap
 * under it (the scan then crashes, about one run in six). */
#if defined(__SANITIZE_ADDRESS__)
#define MC__DLOPEN_KEEP RTLD_NODELETE
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define MC__DLOPEN_KEEP RTLD_NODELETE
#endif
#endif
#ifndef MC__DLOPEN_KEEP
#define MC__DLOPEN_KEEP 0
#endif

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
#define MSL_FLAGS "-O3 -fno-math-errno -std=c++17 -fPIC -shared -fno-exceptions -fno-rtti -Wno-unknown-attributes -Wno-duplicate-decl-specifier"

typedef struct run_result {
    bool ran;        /* the program started */
    int exit_code;   /* -1 when killed by a signal */
    char *out;       /* stdout and stderr, NUL-terminated (malloc'd) */
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
    if (!mkdtemp(dir)) return mc__fail(MC_ERR_IO, "cannot create a directory under %s: %s",
                                       mc__env_str("TMPDIR", "/tmp"), strerror(errno));
    return MC_OK;
}

/* ---- loading ------------------------------------------------------------------ */

#if defined(__x86_64__)
#define NATIVE_MACHINE EM_X86_64
#elif defined(__aarch64__)
#define NATIVE_MACHINE EM_AARCH64
#elif defined(__i386__)
#define NATIVE_MACHINE EM_386
#elif defined(__arm__)
#define NATIVE_MACHINE EM_ARM
#elif defined(__riscv)
#define NATIVE_MACHINE EM_RISCV
#elif defined(__powerpc64__)
#define NATIVE_MACHINE EM_PPC64
#endif

/* Checks that an object is a shared library for this machine and that
 * everything its headers point at lies inside it: the loader maps a
 * truncated object and dies of SIGBUS on the missing pages. */
static const char *elf_problem(const void *bytes, size_t len)
{
    ElfW(Ehdr) eh;
    if (len < sizeof eh) return "too short for an ELF header";
    memcpy(&eh, bytes, sizeof eh);
    if (memcmp(eh.e_ident, ELFMAG, SELFMAG) != 0) return "not a shared object (no ELF header)";
    if (eh.e_ident[EI_CLASS] != (sizeof(void *) == 8 ? ELFCLASS64 : ELFCLASS32)) return "wrong ELF class";
    if (eh.e_ident[EI_DATA] != (__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__ ? ELFDATA2LSB : ELFDATA2MSB))
        return "wrong byte order";
    if (eh.e_type != ET_DYN) return "not a shared object";
#ifdef NATIVE_MACHINE
    if (eh.e_machine != NATIVE_MACHINE) return "built for another machine";
#endif
    if (eh.e_phentsize != sizeof(ElfW(Phdr)) || eh.e_phoff > len ||
        (size_t)eh.e_phnum * sizeof(ElfW(Phdr)) > len - eh.e_phoff)
        return "program headers outside the object";
    if (eh.e_shoff && (eh.e_shoff > len || (size_t)eh.e_shnum * eh.e_shentsize > len - eh.e_shoff))
        return "section headers outside the object (truncated)";
    for (size_t i = 0; i < eh.e_phnum; i++) {
        ElfW(Phdr) ph;
        memcpy(&ph, (const char *)bytes + eh.e_phoff + i * sizeof ph, sizeof ph);
        if (ph.p_type != PT_NULL && (ph.p_offset > len || ph.p_filesz > len - ph.p_offset))
            return "a segment lies outside the object (truncated)";
    }
    return NULL;
}

/* Kernel libraries are opened and closed under one lock. The dynamic
 * loader serialises these calls itself, but ThreadSanitizer cannot see its
 * lock and reports the loader's own bookkeeping as a race when two devices
 * drop their last library on two threads (the notifier thread can release
 * a device). The calls are rare and slow anyway. */
static pthread_mutex_t loader_lock = PTHREAD_MUTEX_INITIALIZER;

static void *loader_open(const char *path, char **why)
{
    pthread_mutex_lock(&loader_lock);
    void *dl = dlopen(path, RTLD_NOW | RTLD_LOCAL | MC__DLOPEN_KEEP);
    if (!dl) {
        const char *e = dlerror();
        *why = mc__strdup(e ? e : "dlopen failed");
    }
    pthread_mutex_unlock(&loader_lock);
    return dl;
}

static void loader_close(void *dl)
{
    pthread_mutex_lock(&loader_lock);
    dlclose(dl);
    pthread_mutex_unlock(&loader_lock);
}

/* dlopens a shared object held in memory: through a memfd where there is
 * one, else a private temporary file unlinked right after loading.
 *
 * The memfd stays open (*fd) while the object is loaded: the dynamic
 * loader knows objects by the name they were opened with, and
 * "/proc/self/fd/N" must not name a second object while the first lives,
 * or dlopen hands back the first. */
static mc_status load_object(const void *bytes, size_t len, void **dl, int *keep_fd, char **why)
{
    *dl = NULL;
    *keep_fd = -1;
    *why = NULL;
    const char *bad = elf_problem(bytes, len);
    if (bad) {
        *why = mc__strdup(bad);
        return MC_ERR_IO;
    }
    char path[PATH_MAX];
    bool temp_file = false;
    int fd = memfd_create("mc-kernel", MFD_CLOEXEC);
    if (fd < 0) {
        int n = snprintf(path, sizeof path, "%s/mc-kernel-XXXXXX", mc__env_str("TMPDIR", "/tmp"));
        if (n < 0 || (size_t)n >= sizeof path || (fd = mkostemp(path, O_CLOEXEC)) < 0) {
            *why = mc__asprintf("cannot create a file to load from: %s", strerror(errno));
            return MC_ERR_IO;
        }
        temp_file = true;
    } else {
        snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    }
    const char *p = bytes;
    size_t left = len;
    while (left) {
        ssize_t n = write(fd, p, left);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        p += n;
        left -= (size_t)n;
    }
    if (!left) {
        *dl = loader_open(path, why);
    } else {
        *why = mc__asprintf("cannot write the shared object: %s", strerror(errno));
    }
    if (temp_file) unlink(path); /* a random name: reuse while loaded is not a concern */
    if (*dl && !temp_file) *keep_fd = fd;
    else close(fd);
    return *dl ? MC_OK : MC_ERR_IO;
}

/* ---- libraries ------------------------------------------------------------------ */

static void lib_unref(mc__cpu_library *l)
{
    if (!l || atomic_fetch_sub(&l->refs, 1) != 1) return;
    if (l->dl) loader_close(l->dl);
    if (l->fd >= 0) close(l->fd); /* after dlclose: see load_object */
    free(l->so);
    for (size_t i = 0; i < l->nbuiltin; i++) free(l->names[i]);
    free(l->names);
    free(l->fns);
    free(l->argc);
    free(l);
}

/* Loads so (taken over) into a new library. */
static mc_status lib_from_object(void *so, size_t so_len, mc__cpu_library **out, char **why)
{
    void *dl;
    int fd;
    mc_status st = load_object(so, so_len, &dl, &fd, why);
    if (st != MC_OK) {
        free(so);
        return st;
    }
    mc__cpu_library *l = mc__calloc(1, sizeof *l);
    if (!l) {
        loader_close(dl);
        if (fd >= 0) close(fd);
        free(so);
        return MC_ERR_NO_MEMORY;
    }
    atomic_init(&l->refs, 1);
    l->so = so;
    l->so_len = so_len;
    l->dl = dl;
    l->fd = fd;
    *out = l;
    return MC_OK;
}

/* Compiles source in dir; on success *so holds the object's bytes. */
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
        if (cc && push_words(&a, cc) && a.n && push_arg(&a, version) && run_capture(a.v, NULL, &r) == MC_OK &&
            r.ran && r.exit_code == 0 && r.out) {
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
    if (msl)
        /* the header is found through -I. (the compiler runs in dir) */
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
            return mc__fail(MC_ERR_COMPILE, msl ? "cannot run the MSL compiler '%s' (install clang or set $MC_MSL_CXX)"
                                                : "cannot run the C compiler '%s' (set $CC)",
                            cc_name);
        if (r.exit_code != 0)
            return mc__fail(MC_ERR_COMPILE, "%s failed (exit %d)%s%.*s", cc_name, r.exit_code, first ? ": " : "",
                            flen, first ? first : "");
        return mc__fail(MC_ERR_COMPILE, "%s produced no shared object", cc_name);
    }
    if (r.out_len) mc__log(MC_LOG_DEBUG, "cpu.compile_output", "%s", r.out);
    free(r.out);
    return MC_OK;
}

mc_status mc__cpu_library_create(void *vdev, mc_language lang, const char *source, size_t len, const char *options,
                                 void **out, char **log)
{
    (void)vdev;
    if (log) *log = NULL;
    if (lang != MC_LANG_C && lang != MC_LANG_MSL)
        return mc__fail(MC_ERR_UNSUPPORTED, "the cpu device compiles MSL and C kernels, not %s",
                        mc_language_name(lang));
    if (!source || !out) return mc__fail(MC_ERR_INVALID_ARGUMENT, "no source or no result pointer");
    if (!len) len = strlen(source);
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
    void *so = NULL;
    size_t so_len = 0;
    uint64_t t0 = mc__now_ns();
    st = compile_in(dir, lang, source, len, options, &so, &so_len, log);
    free(cpp);
    remove_tree(dir);
    if (st != MC_OK) return st;

    mc__cpu_library *l = NULL;
    char *why = NULL;
    st = lib_from_object(so, so_len, &l, &why);
    if (st == MC_ERR_NO_MEMORY) return mc__fail(st, "out of host memory");
    if (st != MC_OK) {
        /* e.g. an undefined symbol: a link error, reported like a compile error */
        st = mc__fail(MC_ERR_COMPILE, "cannot load the compiled kernel: %s", why ? why : "?");
        if (log) *log = why;
        else free(why);
        return st;
    }
    mc__log(MC_LOG_DEBUG, "cpu.compiled", "%s library compiled in %.1f ms (%zu bytes)", mc_language_name(lang),
            (double)(mc__now_ns() - t0) / 1e6, so_len);
    *out = l;
    return MC_OK;
}

mc_status mc__cpu_library_create_builtin(void *vdev, const char *const *names, const mc_cpu_kernel_fn *fns,
                                         const int32_t *argc, size_t n, void **out)
{
    (void)vdev;
    if (!n || !names || !fns) return mc__fail(MC_ERR_INVALID_ARGUMENT, "no functions given");
    mc__cpu_library *l = mc__calloc(1, sizeof *l);
    if (!l) return mc__fail(MC_ERR_NO_MEMORY, "out of host memory");
    atomic_init(&l->refs, 1);
    l->fd = -1;
    l->names = mc__calloc(n, sizeof *l->names);
    l->fns = mc__calloc(n, sizeof *l->fns);
    l->argc = mc__calloc(n, sizeof *l->argc);
    if (!l->names || !l->fns || !l->argc) {
        lib_unref(l);
        return mc__fail(MC_ERR_NO_MEMORY, "out of host memory");
    }
    for (size_t i = 0; i < n; i++) {
        if (!names[i] || !fns[i]) {
            lib_unref(l);
            return mc__fail(MC_ERR_INVALID_ARGUMENT, "function %zu has no name or no code", i);
        }
        l->names[i] = mc__strdup(names[i]);
        l->nbuiltin = i + 1; /* so lib_unref frees what is there */
        if (!l->names[i]) {
            lib_unref(l);
            return mc__fail(MC_ERR_NO_MEMORY, "out of host memory");
        }
        l->fns[i] = fns[i];
        l->argc[i] = argc ? argc[i] : -1;
    }
    *out = l;
    return MC_OK;
}

void mc__cpu_library_destroy(void *vdev, void *vlib)
{
    (void)vdev;
    lib_unref(vlib); /* pipelines made from it keep the code loaded */
}

/* ---- pipelines ------------------------------------------------------------------ */

/* dlsym also searches the object's dependencies: a kernel named like a C
 * library function must not resolve to that function. */
static bool defined_in(void *dl, const void *sym)
{
    struct link_map *lm = NULL;
    Dl_info di;
    if (dlinfo(dl, RTLD_DI_LINKMAP, &lm) != 0 || !lm || !dladdr(sym, &di)) return true; /* cannot tell */
    return di.dli_fbase == (void *)lm->l_addr || (di.dli_fname && lm->l_name && !strcmp(di.dli_fname, lm->l_name));
}

/* The pipeline's function constants in the layout kernels read. */
static mc_status make_constants(const mc_function_constant *fc, uint32_t n, mc_cpu_constants **out)
{
    *out = NULL;
    if (!n) return MC_OK;
    if (!fc) return mc__fail(MC_ERR_INVALID_ARGUMENT, "constant_count is %u but constants is NULL", n);
    mc_cpu_constants *c = mc__calloc(1, sizeof *c);
    if (!c) return mc__fail(MC_ERR_NO_MEMORY, "out of host memory");
    for (uint32_t i = 0; i < n; i++) {
        if (fc[i].index >= MC_CPU_MAX_CONSTANTS || !fc[i].value || fc[i].size == 0 || fc[i].size > 8) {
            free(c);
            return mc__fail(MC_ERR_INVALID_ARGUMENT,
                            "function constant %u: index %u (below %u), size %u (1 to 8 bytes) and a value are needed",
                            i, fc[i].index, MC_CPU_MAX_CONSTANTS, fc[i].size);
        }
        c->defined[fc[i].index / 64] |= 1ull << (fc[i].index % 64);
        memcpy(&c->value[fc[i].index], fc[i].value, fc[i].size);
    }
    *out = c;
    return MC_OK;
}

static mc_status make_pipeline(mc__cpu_library *l, const char *function, uint32_t max_threads,
                               const mc_function_constant *fc, uint32_t nfc, void **out, mc_pipeline_info *info)
{
    if (!function || !function[0]) return mc__fail(MC_ERR_INVALID_ARGUMENT, "no function name");
    if (max_threads > MC__CPU_MAX_THREADS)
        return mc__fail(MC_ERR_INVALID_ARGUMENT, "max_total_threads_per_threadgroup %u exceeds the device's %u",
                        max_threads, MC__CPU_MAX_THREADS);
    mc_cpu_kernel_fn fn = NULL;
    mc__cpu_rows_fn rows = NULL;
    int32_t argc = -1;
    if (l->dl) {
        void *sym = dlsym(l->dl, function);
        if (sym && !defined_in(l->dl, sym))
            return mc__fail(MC_ERR_NOT_FOUND, "'%s' is not a kernel of the library (it comes from a library it uses)",
                            function);
        if (sym) memcpy(&fn, &sym, sizeof fn); /* POSIX: data and code pointers convert */
        char argc_name[256];
        if (snprintf(argc_name, sizeof argc_name, "%s__mc_argc", function) < (int)sizeof argc_name) {
            const int32_t *n = dlsym(l->dl, argc_name);
            if (n) argc = *n;
        }
        /* optional: MSL plain-loop kernels run several groups row by row */
        if (fn && snprintf(argc_name, sizeof argc_name, "%s__mc_rows", function) < (int)sizeof argc_name) {
            void *r = dlsym(l->dl, argc_name);
            if (r && defined_in(l->dl, r)) memcpy(&rows, &r, sizeof rows);
        }
    } else {
        for (size_t i = 0; i < l->nbuiltin; i++) {
            if (strcmp(l->names[i], function) == 0) {
                fn = l->fns[i];
                argc = l->argc[i];
                break;
            }
        }
    }
    if (!fn) return mc__fail(MC_ERR_NOT_FOUND, "no kernel function '%s' in the library", function);
    mc_cpu_constants *constants = NULL;
    mc_status st = make_constants(fc, nfc, &constants);
    if (st != MC_OK) return st;
    mc__cpu_pipeline *p = mc__calloc(1, sizeof *p);
    if (!p) {
        free(constants);
        return mc__fail(MC_ERR_NO_MEMORY, "out of host memory");
    }
    p->constants = constants;
    atomic_fetch_add(&l->refs, 1);
    p->lib = l;
    p->fn = fn;
    p->rows = rows;
    p->max_threads = max_threads ? max_threads : MC__CPU_MAX_THREADS;
    p->argc = argc;
    if (info) {
        memset(info, 0, sizeof *info);
        info->max_total_threads_per_threadgroup = p->max_threads;
        info->simd_width = MC__CPU_SIMD_WIDTH;
        info->static_threadgroup_memory = 0;
        info->argument_count = argc;
    }
    *out = p;
    return MC_OK;
}

mc_status mc__cpu_pipeline_create(void *vdev, void *vlib, const mc_pipeline_desc *desc, void **out,
                                  mc_pipeline_info *info)
{
    (void)vdev;
    if (!vlib || !desc) return mc__fail(MC_ERR_INVALID_ARGUMENT, "no library or no descriptor");
    return make_pipeline(vlib, desc->function, desc->max_total_threads_per_threadgroup, desc->constants,
                         desc->constant_count, out, info);
}

void mc__cpu_pipeline_destroy(void *vdev, void *vpl)
{
    mc__cpu_pipeline *p = vpl;
    (void)vdev;
    if (!p) return;
    lib_unref(p->lib);
    free((void *)p->constants);
    free(p);
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
                st = mc__fail(MC_ERR_UNSUPPORTED, "cannot ask the %s compiler '%s' for its version",
                              msl ? "MSL" : "C", a.v[0]);
            } else {
                /* The key must change with anything that changes the
                 * shared object: the whole command (flags in it too), our
                 * fixed flags, and the headers the source includes. */
                size_t n = strcspn(r.out, "\r\n");
                if (msl)
                    snprintf(identity, sizeof dev->msl_identity,
                             "%.*s | cxx='%s' | " MSL_FLAGS " -lboost_context -lm | abi %d header %016llx msl %016llx",
                             (int)n, r.out, command, MC_CPU_ABI_VERSION,
                             (unsigned long long)header_digest(mc__cpu_kernel_header),
                             (unsigned long long)header_digest(mc__msl_cpu_header));
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

mc_status mc__cpu_pipeline_export(void *vdev, const mc__pipeline_src *src, void *vlib, void *vpl, void **bytes,
                                  size_t *len)
{
    (void)vdev;
    (void)src;
    mc__cpu_pipeline *p = vpl;
    mc__cpu_library *l = p ? p->lib : vlib;
    if (!l) return mc__fail(MC_ERR_INVALID_ARGUMENT, "nothing to export");
    if (!l->so) return mc__fail(MC_ERR_UNSUPPORTED, "built-in kernels are linked into the program: nothing to archive");
    void *copy = mc__malloc(l->so_len);
    if (!copy) return mc__fail(MC_ERR_NO_MEMORY, "out of host memory");
    memcpy(copy, l->so, l->so_len);
    *bytes = copy;
    *len = l->so_len;
    return MC_OK;
}

mc_status mc__cpu_pipeline_import(void *vdev, const mc__pipeline_src *src, const void *bytes, size_t len,
                                  bool fail_on_miss, void **out_lib, void **out_pl, mc_pipeline_info *info)
{
    (void)vdev;
    (void)fail_on_miss; /* importing never compiles on the CPU */
    if (!src || !bytes) return mc__fail(MC_ERR_INVALID_ARGUMENT, "nothing to import");
    void *so = mc__malloc(len ? len : 1);
    if (!so) return mc__fail(MC_ERR_NO_MEMORY, "out of host memory");
    memcpy(so, bytes, len);
    mc__cpu_library *l = NULL;
    char *why = NULL;
    mc_status st = lib_from_object(so, len, &l, &why);
    if (st == MC_ERR_NO_MEMORY) return mc__fail(st, "out of host memory");
    if (st != MC_OK) {
        st = mc__fail(MC_ERR_IO, "archived kernel does not load: %s", why ? why : "?");
        free(why);
        return st;
    }
    st = make_pipeline(l, src->function, src->max_total_threads_per_threadgroup, src->constants, src->constant_count,
                       out_pl, info);
    if (st != MC_OK) {
        lib_unref(l);
        return st;
    }
    *out_lib = l;
    return MC_OK;
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
    if (!join_path(path, sizeof path, dir, "mc/mc_cpu_kernel.h")) return mc__fail(MC_ERR_IO, "temporary directory name too long");
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
        return mc__fail(MC_ERR_UNSUPPORTED, "MSL on the cuda device needs libdevice.10.bc from the CUDA toolkit "
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
                snprintf(msl_cuda_id, sizeof msl_cuda_id, "%.*s | cxx='%s' | %s | libdevice %s | msl %016llx", (int)n,
                         r.out, msl_compiler_command(), MC__MSL_CUDA_FLAGS, libdevice,
                         (unsigned long long)header_digest(mc__msl_cpu_header));
            }
        }
        free(r.out);
        free(cc);
    }
    if (st == MC_OK) snprintf(out, cap, "%s", msl_cuda_id);
    pthread_mutex_unlock(&msl_cuda_id_lock);
    return st;
}
