/*
 * DOC: OS glue (POSIX)
 *
 * Clocks, sleeping, the environment, core counts, allocation, shared
 * memory, thread names, file times and the system's own SHA-256. The only
 * file that knows which OS it runs on, the way libuv keeps src/unix apart.
 */
#include "core/core.h"

#ifdef __APPLE__
#include <CommonCrypto/CommonDigest.h>
#endif

#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

uint64_t mc__now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

void mc__sleep_ns(uint64_t ns)
{
    struct timespec ts = {(time_t)(ns / 1000000000ull), (long)(ns % 1000000000ull)};
    while (nanosleep(&ts, &ts) == -1 && errno == EINTR) {
    }
}

void mc__timespec_from_ns(uint64_t ns, struct timespec *ts)
{
    if (ns > (uint64_t)INT32_MAX * 1000000000ull) ns = (uint64_t)INT32_MAX * 1000000000ull;
    ts->tv_sec = (time_t)(ns / 1000000000ull);
    ts->tv_nsec = (long)(ns % 1000000000ull);
}

void mc__cond_init_monotonic(pthread_cond_t *c)
{
#ifdef __APPLE__
    pthread_cond_init(c, NULL);
#else
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(c, &ca);
    pthread_condattr_destroy(&ca);
#endif
}

bool mc__cond_wait_until(pthread_cond_t *c, pthread_mutex_t *m, uint64_t deadline)
{
    if (deadline == UINT64_MAX) {
        pthread_cond_wait(c, m);
        return true;
    }
    uint64_t now = mc__now_ns();
    if (now >= deadline) return false;
    struct timespec ts;
#ifdef __APPLE__
    mc__timespec_from_ns(deadline - now, &ts);
    pthread_cond_timedwait_relative_np(c, m, &ts);
#else
    mc__timespec_from_ns(deadline, &ts);
    pthread_cond_timedwait(c, m, &ts);
#endif
    return true;
}

const char *mc__env_str(const char *name, const char *dflt)
{
    const char *v = getenv(name);
    return v && *v ? v : dflt;
}

long long mc__env_int(const char *name, long long dflt)
{
    const char *v = mc__env_str(name, NULL);
    if (!v) return dflt;
    char *end;
    errno = 0;
    long long x = strtoll(v, &end, 10);
    if (errno || end == v || *end) {
        mc__log(MC_LOG_WARN, "config.bad_integer", "%s=%s is not an integer; using %lld", name, v, dflt);
        return dflt;
    }
    return x;
}

unsigned mc__cpu_count(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (unsigned)n : 1u;
}

/* ---- shared memory -------------------------------------------------------- */

void *mc__shm_map_anon(size_t size)
{
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    return p == MAP_FAILED ? NULL : p;
}

void mc__shm_unmap(void *p, size_t size)
{
    if (p) munmap(p, size);
}

int mc__shm_create_fd(size_t size)
{
    int fd = -1;
#if defined(__linux__)
    fd = memfd_create("metal-compute", MFD_CLOEXEC);
#else
    /* A name nobody else can have, gone as soon as it is open. */
    static _Atomic unsigned counter;
    for (int tries = 0; fd < 0 && tries < 16; tries++) {
        char name[64];
        snprintf(name, sizeof name, "/mc-%ld-%u-%lx", (long)getpid(), atomic_fetch_add(&counter, 1),
                 (unsigned long)mc__now_ns());
        fd = shm_open(name, O_RDWR | O_CREAT | O_EXCL, 0600);
        if (fd >= 0) {
            shm_unlink(name);
            fcntl(fd, F_SETFD, FD_CLOEXEC);
        } else if (errno != EEXIST) {
            break;
        }
    }
#endif
    if (fd < 0) return -1;
    if (ftruncate(fd, (off_t)size) != 0) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    return fd;
}

void *mc__shm_map_fd(int fd, size_t size)
{
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    return p == MAP_FAILED ? NULL : p;
}

/* Fault-injecting allocation (Lua's and SQLite's test builds). */
static _Atomic long long alloc_countdown;

void mc__alloc_fail_at(long long nth)
{
    atomic_store(&alloc_countdown, nth);
}

static bool alloc_should_fail(void)
{
    if (atomic_load_explicit(&alloc_countdown, memory_order_relaxed) <= 0) return false;
    return atomic_fetch_sub(&alloc_countdown, 1) == 1;
}

void *mc__malloc(size_t n)
{
    return alloc_should_fail() ? NULL : malloc(n ? n : 1);
}

void *mc__calloc(size_t count, size_t size)
{
    return alloc_should_fail() ? NULL : calloc(count ? count : 1, size ? size : 1);
}

void *mc__realloc(void *p, size_t n)
{
    return alloc_should_fail() ? NULL : realloc(p, n ? n : 1);
}

char *mc__strdup(const char *s)
{
    if (!s) return NULL;
    size_t n = strlen(s) + 1;
    char *d = mc__malloc(n);
    if (d) memcpy(d, s, n);
    return d;
}

char *mc__asprintf(const char *fmt, ...)
{
    va_list ap, ap2;
    va_start(ap, fmt);
    va_copy(ap2, ap);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    char *s = n >= 0 ? mc__malloc((size_t)n + 1) : NULL;
    if (s) vsnprintf(s, (size_t)n + 1, fmt, ap2);
    va_end(ap2);
    return s;
}

void mc_free(void *p)
{
    free(p);
}

void mc__thread_set_name(const char *name)
{
    char n[16]; /* Linux's limit, terminator included */
    snprintf(n, sizeof n, "%s", name ? name : "");
#ifdef __APPLE__
    pthread_setname_np(n); /* macOS names only the calling thread */
#else
    pthread_setname_np(pthread_self(), n);
#endif
}

uint64_t mc__stat_mtime_ns(const struct stat *st)
{
#ifdef __APPLE__
    return (uint64_t)st->st_mtimespec.tv_sec * 1000000000ull + (uint64_t)st->st_mtimespec.tv_nsec;
#else
    return (uint64_t)st->st_mtim.tv_sec * 1000000000ull + (uint64_t)st->st_mtim.tv_nsec;
#endif
}

bool mc__os_sha256(const void *data, size_t len, uint8_t out[32])
{
#ifdef __APPLE__
    CC_SHA256_CTX ctx;
    CC_SHA256_Init(&ctx);
    const uint8_t *p = data ? data : (const void *)"";
    while (len) {
        CC_LONG n = len > (1u << 30) ? (1u << 30) : (CC_LONG)len; /* CC_LONG is 32 bits */
        CC_SHA256_Update(&ctx, p, n);
        p += n;
        len -= n;
    }
    CC_SHA256_Final(out, &ctx);
    return true;
#else
    (void)data;
    (void)len;
    (void)out;
    return false; /* sha256.c loads libcrypto instead */
#endif
}
