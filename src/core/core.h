/*
 * DOC: Core internals shared by the engine and the backends
 *
 * Error detail, logging, environment configuration, clocks and small OS
 * helpers. Everything platform-specific lives in os_posix.c; nothing here
 * knows about devices.
 */
#ifndef MC_CORE_CORE_H
#define MC_CORE_CORE_H

#include "mc/mc.h"

#include <sched.h>
#include <stdarg.h>
#include <stdio.h>

#if defined(__GNUC__)
#define MC__PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define MC__PRINTF(a, b)
#endif

/* Records the detail for mc_last_error() on this thread and returns s, so
 * error paths read `return mc__fail(MC_ERR_INVALID_ARGUMENT, "size is 0");` */
mc_status mc__fail(mc_status s, const char *fmt, ...) MC__PRINTF(2, 3);
void mc__clear_error(void);

/* Logging through the installed callback; id is a stable identifier. */
void mc__log(mc_log_level level, const char *id, const char *fmt, ...) MC__PRINTF(3, 4);
bool mc__log_enabled(mc_log_level level);
/* Around fork() (the isolation layer): the logger's lock is taken before
 * and given back in both processes after, so the child never inherits it
 * held by a thread it does not have. */
void mc__log_fork_prepare(void);
void mc__log_fork_parent(void);
void mc__log_fork_child(void);

/* Environment: value of name, or dflt when unset or empty. */
const char *mc__env_str(const char *name, const char *dflt);
long long mc__env_int(const char *name, long long dflt);

/* Clocks and waiting. */
uint64_t mc__now_ns(void); /* monotonic */
void mc__sleep_ns(uint64_t ns);
static inline void mc__cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}
/* One step of a spin-wait: pause, and every 32nd step give the core away.
 * A spinner that never yields holds its core for a whole time slice when
 * there are more runnable threads than cores, and the thread it waits for
 * may be queued on that very core. */
static inline void mc__spin_step(uint32_t i)
{
    if ((i & 31u) == 0) sched_yield();
    else mc__cpu_relax();
}
/* Deadline helper: UINT64_MAX timeouts never expire. */
static inline uint64_t mc__deadline(uint64_t timeout_ns)
{
    uint64_t now = mc__now_ns();
    return timeout_ns > UINT64_MAX - now ? UINT64_MAX : now + timeout_ns;
}
/* Converts an absolute monotonic deadline to a struct timespec for
 * pthread_cond_timedwait on a CLOCK_MONOTONIC condition variable. */
struct timespec;
void mc__timespec_from_ns(uint64_t ns, struct timespec *ts);

/* Condition variables on the monotonic clock, so deadlines do not move
 * with the wall clock (macOS: relative waits, it has no setclock). */
#include <pthread.h>
void mc__cond_init_monotonic(pthread_cond_t *c);
/* Waits on c until deadline (absolute, mc__now_ns; UINT64_MAX = for ever);
 * false once the deadline has passed. Wakes spuriously like any wait. */
bool mc__cond_wait_until(pthread_cond_t *c, pthread_mutex_t *m, uint64_t deadline);

unsigned mc__cpu_count(void);

/* Shared memory between processes (the isolation layer). An anonymous
 * shared mapping, inherited by processes forked later; NULL on failure. */
void *mc__shm_map_anon(size_t size);
void mc__shm_unmap(void *p, size_t size);
/* An unnamed shared-memory file of size bytes that leaves no name behind
 * (memfd on Linux; elsewhere a random O_EXCL name unlinked at once), for
 * passing to another process; -1 on failure (errno set). */
int mc__shm_create_fd(size_t size);
/* Maps such a file read-write; NULL on failure. */
void *mc__shm_map_fd(int fd, size_t size);

/* Allocation: NULL on failure. Test builds may fail the nth allocation
 * (MC_FAIL_ALLOC_AT=n) to reach the error paths. */
void *mc__malloc(size_t n);
void *mc__calloc(size_t count, size_t size);
void *mc__realloc(void *p, size_t n);
char *mc__strdup(const char *s);       /* NULL stays NULL */
void mc__alloc_fail_at(long long nth); /* 0 = off */

/* printf into a fresh malloc'd string. */
char *mc__asprintf(const char *fmt, ...) MC__PRINTF(1, 2);

/* Files written for the user (outfile.c): a temporary file beside the
 * target, fsync, rename; a failed write leaves the old file untouched.
 * check: the path can be created (not empty, not a folder, its folder
 * writable), tested before long work starts. open/commit/abort: write
 * through o->f, then commit (always closes) or abort (removes the
 * temporary file). write: the whole buffer in one go. Errors carry the
 * path and the system's reason in mc_last_error(). */
typedef struct mc__outfile {
    FILE *f;
    char *path; /* the target (a symbolic link's target when it is one) */
    char *tmp;
} mc__outfile;
mc_status mc__outfile_check(const char *path);
mc_status mc__outfile_open(const char *path, mc__outfile *o);
mc_status mc__outfile_commit(mc__outfile *o);
void mc__outfile_abort(mc__outfile *o);
mc_status mc__outfile_write(const char *path, const void *data, size_t len);

/* Names the calling thread (debuggers, top -H); at most 15 bytes kept. */
void mc__thread_set_name(const char *name);
/* A file's modification time in nanoseconds since the epoch. */
struct stat;
uint64_t mc__stat_mtime_ns(const struct stat *st);
/* SHA-256 by the operating system itself where it has one (CommonCrypto
 * on macOS); false where it has none (sha256.c then loads libcrypto). */
bool mc__os_sha256(const void *data, size_t len, uint8_t out[32]);

/* SHA-256 from a well-kept library (sha256.c): libcrypto loaded at run
 * time, or the system's own (mc__os_sha256), so the library itself needs
 * only libc, pthreads and the loader. NULL when none can be had; *why says
 * why. Passes a known-answer test before it is handed out. */
typedef struct mc__hash mc__hash;
mc__hash *mc__hash_open(char *why, size_t why_cap);
void mc__hash_close(mc__hash *h);
bool mc__hash_sha256(const mc__hash *h, const void *data, size_t len, uint8_t out[32]);
/* Tests: pretend no hash library can be loaded (opens from now on fail). */
void mc__hash_test_disable(bool on);

#define MC__ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))
#define MC__MIN(a, b) ((a) < (b) ? (a) : (b))
#define MC__MAX(a, b) ((a) > (b) ? (a) : (b))

#endif
