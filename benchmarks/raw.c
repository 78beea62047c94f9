/*
 * The raw baselines' dispatcher, and the CPU's: one bare worker thread that
 * runs an empty function handed to it and signals back, with the same
 * spin-then-sleep policy as the CPU device. That is the least any CPU
 * runtime must do to run work asynchronously and learn that it finished.
 */
#include "raw.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

struct mc_raw {
    const mc_raw_ops *ops;
    void *impl;
};

static char raw_error[256];

const char *mc_raw_error(void)
{
    return raw_error;
}

mc_raw *mc_raw_open(mc_device_kind kind, int index)
{
    const mc_raw_ops *ops = NULL;
    if (kind == MC_DEVICE_CPU) ops = &mc_raw_cpu_ops;
#ifdef MC_HAVE_CUDA_RAW
    if (kind == MC_DEVICE_CUDA) ops = &mc_raw_cuda_ops;
#endif
    if (!ops) {
        snprintf(raw_error, sizeof raw_error, "no raw baseline for the %s device in this build",
                 mc_device_kind_name(kind));
        return NULL;
    }
    mc_raw *r = calloc(1, sizeof *r);
    if (!r) return NULL;
    r->ops = ops;
    r->impl = ops->open(index);
    if (!r->impl) {
        if (!raw_error[0]) snprintf(raw_error, sizeof raw_error, "cannot open the raw %s baseline", ops->name);
        free(r);
        return NULL;
    }
    return r;
}

void mc_raw_close(mc_raw *r)
{
    if (!r) return;
    r->ops->close(r->impl);
    free(r);
}

const char *mc_raw_name(const mc_raw *r)
{
    return r->ops->name;
}

int mc_raw_round_trip(mc_raw *r)
{
    return r->ops->round_trip(r->impl);
}

int mc_raw_batch(mc_raw *r, int passes, int mode)
{
    return r->ops->batch ? r->ops->batch(r->impl, passes, mode) : -1;
}

int mc_raw_saxpy(mc_raw *r, size_t n)
{
    return r->ops->saxpy ? r->ops->saxpy(r->impl, n) : -1;
}

double mc_raw_stream(mc_raw *r, const mc_raw_stream_work *w)
{
    return r->ops->stream ? r->ops->stream(r->impl, w) : -1;
}

const char *mc_raw_saxpy_name(const mc_raw *r)
{
    return r->ops->saxpy_name ? r->ops->saxpy_name : r->ops->name;
}

/* ---- CPU: a bare worker thread ------------------------------------------- */

typedef struct raw_cpu {
    float *x, *y;
    size_t n;
    pthread_t thread;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    _Atomic unsigned long posted, done;
    _Atomic int stop;
    void (*fn)(void);
} raw_cpu;

static void empty_kernel(void)
{
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

#define RAW_SPIN_NS 50000u

static void *raw_cpu_main(void *arg)
{
    raw_cpu *c = arg;
    unsigned long seen = 0;
    while (!atomic_load(&c->stop)) {
        uint64_t t0 = now_ns();
        while (atomic_load_explicit(&c->posted, memory_order_acquire) == seen && !atomic_load(&c->stop) &&
               now_ns() - t0 < RAW_SPIN_NS) {
        }
        if (atomic_load_explicit(&c->posted, memory_order_acquire) == seen) {
            pthread_mutex_lock(&c->lock);
            while (atomic_load(&c->posted) == seen && !atomic_load(&c->stop)) pthread_cond_wait(&c->cond, &c->lock);
            pthread_mutex_unlock(&c->lock);
            continue;
        }
        seen++;
        c->fn();
        atomic_store_explicit(&c->done, seen, memory_order_release);
    }
    return NULL;
}

static void *raw_cpu_open(int index)
{
    (void)index;
    raw_cpu *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    pthread_mutex_init(&c->lock, NULL);
    pthread_cond_init(&c->cond, NULL);
    c->fn = empty_kernel;
    if (pthread_create(&c->thread, NULL, raw_cpu_main, c)) {
        free(c);
        return NULL;
    }
    return c;
}

static void raw_cpu_close(void *impl)
{
    raw_cpu *c = impl;
    pthread_mutex_lock(&c->lock);
    atomic_store(&c->stop, 1);
    pthread_cond_signal(&c->cond);
    pthread_mutex_unlock(&c->lock);
    pthread_join(c->thread, NULL);
    pthread_mutex_destroy(&c->lock);
    pthread_cond_destroy(&c->cond);
    free(c->x);
    free(c->y);
    free(c);
}

static int raw_cpu_round_trip(void *impl)
{
    raw_cpu *c = impl;
    unsigned long want = atomic_load(&c->posted) + 1;
    pthread_mutex_lock(&c->lock);
    atomic_store_explicit(&c->posted, want, memory_order_release);
    pthread_cond_signal(&c->cond);
    pthread_mutex_unlock(&c->lock);
    while (atomic_load_explicit(&c->done, memory_order_acquire) != want) {
    }
    return 0;
}

/* The machine's limit for saxpy: a plain OpenMP loop where the compiler has
 * OpenMP, else one thread. */
static int raw_cpu_saxpy(void *impl, size_t n)
{
    raw_cpu *c = impl;
    if (c->n != n) {
        free(c->x);
        free(c->y);
        c->x = malloc(n * sizeof *c->x);
        c->y = malloc(n * sizeof *c->y);
        if (!c->x || !c->y) return -1;
        c->n = n;
#ifdef _OPENMP
#pragma omp parallel for schedule(static)
#endif
        for (long i = 0; i < (long)n; i++) {
            c->x[i] = (float)(i % 1000);
            c->y[i] = 1.0f;
        }
    }
    float *x = c->x, *y = c->y, a = 2.0f;
#ifdef _OPENMP
#pragma omp parallel for schedule(static)
#endif
    for (long i = 0; i < (long)n; i++) y[i] = a * x[i] + y[i];
    return 0;
}

#ifdef _OPENMP
#define RAW_CPU_SAXPY "raw OpenMP loop"
#else
#define RAW_CPU_SAXPY "raw loop, one thread"
#endif

const mc_raw_ops mc_raw_cpu_ops = {"raw worker thread", raw_cpu_open,  raw_cpu_close, raw_cpu_round_trip, NULL,
                                   raw_cpu_saxpy,       RAW_CPU_SAXPY, NULL};
