/*
 * DOC: Asynchronous pipeline creation (F159)
 *
 * A small pool of threads per device, started on first use, runs requests
 * through the same path as the synchronous call (cache_table.c); a request
 * that is already in memory completes at once, without a thread hop.
 * Futures are waited on one at a time or any of many. A pool thread may
 * hold the last reference to its device: releases there go to the
 * device's notifier (mc__in_completion), never join the pool from inside.
 */
#include "runtime/cache.h"

#include <stdlib.h>
#include <string.h>

#define MAX_POOL_THREADS 8u

#define MC__TAG_FUTURE 0x6d634654

typedef struct fwaiter {
    pthread_mutex_t lock;
    pthread_cond_t cv;
    bool fired;
} fwaiter;

typedef struct flink {
    struct flink *next;
    fwaiter *w;
} flink;

struct mc_pipeline_future {
    uint32_t tag;
    _Atomic int refs; /* the caller's and the pool job's */
    mc_device *d;     /* retained */
    struct mc__cache *c;
    mc__cache_req r;
    char *source, *options, *function, *label; /* owned copies */
    mc_function_constant *constants;           /* owned copies, each value in values */
    uint8_t *values;
    pthread_mutex_t lock;
    pthread_cond_t cv;
    _Atomic bool done;
    mc_status status;
    char *msg;
    char *log;
    mc_pipeline *pipeline;
    flink *waiters;
    mc_pipeline_future *next; /* in the pool's queue */
};

struct mc__cache_pool {
    pthread_mutex_t lock;
    pthread_cond_t cv;
    mc_pipeline_future *head, *tail;
    bool stop;
    bool orphaned; /* destroyed from one of its own threads: that thread frees it */
    unsigned n;
    pthread_t threads[MAX_POOL_THREADS];
};

static void future_free(mc_pipeline_future *f)
{
    mc_device *d = f->d;
    /* a completer may still be leaving its critical section */
    pthread_mutex_lock(&f->lock);
    pthread_mutex_unlock(&f->lock);
    if (f->pipeline) mc_pipeline_release(f->pipeline);
    pthread_mutex_destroy(&f->lock);
    pthread_cond_destroy(&f->cv);
    free(f->source);
    free(f->options);
    free(f->function);
    free(f->label);
    free(f->constants);
    free(f->values);
    free(f->msg);
    free(f->log);
    f->tag = MC__TAG_DEAD;
    free(f);
    /* last: on a pool thread the device's destruction goes to its notifier
     * (mc__in_completion), never joins the pool from inside it */
    mc_device_release(d);
}

static void future_unref(mc_pipeline_future *f)
{
    if (atomic_fetch_sub(&f->refs, 1) == 1) future_free(f);
}

/* Publishes the outcome. With job_ref, also ends the job's reference,
 * before anyone can see the future done: whoever wakes up holds the only
 * reference left, so the caller's last release frees the future (and lets
 * go of the device) on the caller's own thread, at once. */
static void future_complete(mc_pipeline_future *f, mc_status s, mc_pipeline *p, char *log, bool job_ref)
{
    pthread_mutex_lock(&f->lock);
    f->status = s;
    f->pipeline = p;
    f->log = log;
    if (s != MC_OK) f->msg = mc__strdup(mc_last_error());
    bool last = job_ref && atomic_fetch_sub(&f->refs, 1) == 1; /* the caller let go already */
    atomic_store(&f->done, true);
    pthread_cond_broadcast(&f->cv);
    for (flink *l = f->waiters; l; l = l->next) {
        pthread_mutex_lock(&l->w->lock);
        l->w->fired = true;
        pthread_cond_signal(&l->w->cv);
        pthread_mutex_unlock(&l->w->lock);
    }
    pthread_mutex_unlock(&f->lock);
    if (last) future_free(f); /* on a pool thread: the device may close on its notifier */
}

static void pool_free(mc__cache_pool *p)
{
    pthread_mutex_destroy(&p->lock);
    pthread_cond_destroy(&p->cv);
    free(p);
}

static void *pool_main(void *arg)
{
    mc__cache_pool *p = arg;
    mc__in_completion = 1; /* releases that would destroy go to the notifier */
    pthread_mutex_lock(&p->lock);
    for (;;) {
        while (!p->head && !p->stop) pthread_cond_wait(&p->cv, &p->lock);
        mc_pipeline_future *f = p->head;
        if (!f) break; /* stopping and drained */
        p->head = f->next;
        if (!p->head) p->tail = NULL;
        pthread_mutex_unlock(&p->lock);
        mc_pipeline *pl = NULL;
        char *log = NULL;
        mc_status s = mc__cache_request(f->c, &f->r, &pl, &log);
        future_complete(f, s, pl, log, true); /* f may be gone after this */
        pthread_mutex_lock(&p->lock);
    }
    bool orphaned = p->orphaned;
    pthread_mutex_unlock(&p->lock);
    if (orphaned) pool_free(p);
    return NULL;
}

static mc_status pool_submit(struct mc__cache *c, mc_pipeline_future *f)
{
    pthread_mutex_lock(&c->pool_lock);
    mc__cache_pool *p = c->pool;
    if (!p) {
        p = mc__calloc(1, sizeof *p);
        if (!p) {
            pthread_mutex_unlock(&c->pool_lock);
            return mc__fail(MC_ERR_NO_MEMORY, "out of host memory");
        }
        pthread_mutex_init(&p->lock, NULL);
        pthread_cond_init(&p->cv, NULL);
        unsigned want = MC__MIN(MC__MAX(mc__cpu_count(), 2u), MAX_POOL_THREADS);
        for (unsigned i = 0; i < want; i++) {
            if (pthread_create(&p->threads[p->n], NULL, pool_main, p) != 0) break;
            p->n++;
        }
        if (!p->n) {
            pthread_mutex_unlock(&c->pool_lock);
            pool_free(p);
            return mc__fail(MC_ERR_INTERNAL, "cannot start a thread to build pipelines");
        }
        c->pool = p;
    }
    pthread_mutex_unlock(&c->pool_lock);
    f->next = NULL;
    pthread_mutex_lock(&p->lock);
    if (p->tail) p->tail->next = f;
    else p->head = f;
    p->tail = f;
    pthread_cond_signal(&p->cv);
    pthread_mutex_unlock(&p->lock);
    return MC_OK;
}

void mc__cache_pool_stop(mc__cache_pool *p)
{
    pthread_t self = pthread_self();
    bool in_pool = false;
    pthread_mutex_lock(&p->lock);
    p->stop = true;
    for (unsigned i = 0; i < p->n; i++)
        if (pthread_equal(p->threads[i], self)) in_pool = true;
    p->orphaned = in_pool;
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->lock);
    for (unsigned i = 0; i < p->n; i++) {
        if (pthread_equal(p->threads[i], self)) pthread_detach(self);
        else pthread_join(p->threads[i], NULL);
    }
    if (!in_pool) pool_free(p);
}

static char *dup_n(const char *s, size_t n)
{
    char *p = mc__malloc(n + 1);
    if (p) {
        memcpy(p, s, n);
        p[n] = '\0';
    }
    return p;
}

/* The request's function constants, values included (the caller's may be
 * gone before a pool thread builds): false when out of memory. */
static bool copy_constants(const mc__cache_req *r, mc_function_constant **fc, uint8_t **values)
{
    *fc = NULL;
    *values = NULL;
    if (!r->constant_count) return true;
    size_t total = 0;
    for (uint32_t i = 0; i < r->constant_count; i++) total += r->constants[i].size;
    *fc = mc__calloc(r->constant_count, sizeof **fc);
    *values = mc__malloc(total ? total : 1);
    if (!*fc || !*values) return false;
    size_t at = 0;
    for (uint32_t i = 0; i < r->constant_count; i++) {
        (*fc)[i] = r->constants[i];
        memcpy(*values + at, r->constants[i].value, r->constants[i].size);
        (*fc)[i].value = *values + at;
        at += r->constants[i].size;
    }
    return true;
}

mc_status mc_pipeline_create_async(mc_device *d, const mc_pipeline_source_desc *desc, mc_pipeline_future **out)
{
    MC__CHECK_HANDLE(d, MC__TAG_DEVICE, "device");
    if (!out) return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_pipeline_create_async: out is NULL");
    *out = NULL;
    mc__cache_req r;
    mc_status s = mc__cache_make_req(d, desc, &r, "mc_pipeline_create_async");
    if (s != MC_OK) return s;
    if ((s = mc_device_check(d)) != MC_OK) return s;
    struct mc__cache *c = mc__cache_get(d);
    mc_pipeline_future *f = c ? mc__calloc(1, sizeof *f) : NULL;
    if (!f) return mc__fail(MC_ERR_NO_MEMORY, "out of host memory");
    f->source = dup_n(r.source, r.source_len);
    f->options = mc__strdup(r.options);
    f->function = mc__strdup(r.function);
    f->label = mc__strdup(r.label);
    bool consts_ok = copy_constants(&r, &f->constants, &f->values);
    if (!f->source || !f->options || !f->function || (r.label && !f->label) || !consts_ok) {
        free(f->source);
        free(f->options);
        free(f->function);
        free(f->label);
        free(f->constants);
        free(f->values);
        free(f);
        return mc__fail(MC_ERR_NO_MEMORY, "out of host memory");
    }
    f->tag = MC__TAG_FUTURE;
    f->d = d;
    f->c = c;
    f->r = r;
    f->r.source = f->source;
    f->r.options = f->options;
    f->r.function = f->function;
    f->r.label = f->label;
    f->r.constants = f->constants;
    pthread_mutex_init(&f->lock, NULL);
    mc__cond_init_monotonic(&f->cv);
    atomic_init(&f->done, false);
    mc_device_retain(d);
    mc_pipeline *p = NULL;
    if (mc__cache_try_memory_hit(c, &f->r, &p, &s)) {
        atomic_init(&f->refs, 1);
        future_complete(f, s, p, NULL, false);
        *out = f;
        return MC_OK;
    }
    atomic_init(&f->refs, 2); /* the caller and the job */
    s = pool_submit(c, f);
    if (s != MC_OK) {
        atomic_store(&f->refs, 1);
        future_unref(f);
        return s;
    }
    *out = f;
    return MC_OK;
}

static bool future_ok(const mc_pipeline_future *f)
{
    return f && f->tag == MC__TAG_FUTURE;
}

bool mc_pipeline_future_done(const mc_pipeline_future *f)
{
    return future_ok(f) && atomic_load(&((mc_pipeline_future *)f)->done);
}

mc_status mc_pipeline_future_wait(mc_pipeline_future *f, uint64_t timeout_ns, mc_pipeline **out, char **log)
{
    if (out) *out = NULL;
    if (log) *log = NULL;
    if (!future_ok(f)) return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_pipeline_future_wait: not a valid future");
    uint64_t deadline = mc__deadline(timeout_ns);
    pthread_mutex_lock(&f->lock);
    while (!atomic_load(&f->done)) {
        if (!mc__cond_wait_until(&f->cv, &f->lock, deadline)) {
            pthread_mutex_unlock(&f->lock);
            return mc__fail(MC_ERR_WAIT_TIMEOUT, "pipeline '%s' is still being built", f->function);
        }
    }
    mc_status s = f->status;
    if (s == MC_OK) {
        if (out) {
            mc_pipeline_retain(f->pipeline);
            *out = f->pipeline;
        }
    } else {
        if (log && f->log) *log = mc__strdup(f->log);
        mc__fail(s, "%s", f->msg ? f->msg : mc_status_text(s));
    }
    pthread_mutex_unlock(&f->lock);
    return s;
}

mc_status mc_pipeline_future_wait_any(mc_pipeline_future *const *futures, size_t n, uint64_t timeout_ns, size_t *index)
{
    if (!futures || !n || !index)
        return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_pipeline_future_wait_any: futures, n > 0 and index are required");
    for (size_t i = 0; i < n; i++)
        if (!future_ok(futures[i]))
            return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_pipeline_future_wait_any: entry %zu is not a valid future", i);
    for (size_t i = 0; i < n; i++) {
        if (atomic_load(&futures[i]->done)) {
            *index = i;
            return MC_OK;
        }
    }
    if (timeout_ns == 0) return mc__fail(MC_ERR_WAIT_TIMEOUT, "none of %zu pipelines is ready", n);
    flink *links = mc__calloc(n, sizeof *links);
    if (!links) return mc__fail(MC_ERR_NO_MEMORY, "out of host memory");
    fwaiter w;
    w.fired = false;
    pthread_mutex_init(&w.lock, NULL);
    mc__cond_init_monotonic(&w.cv);
    for (size_t i = 0; i < n; i++) {
        mc_pipeline_future *f = futures[i];
        links[i].w = &w;
        pthread_mutex_lock(&f->lock);
        links[i].next = f->waiters;
        f->waiters = &links[i];
        if (atomic_load(&f->done)) {
            pthread_mutex_lock(&w.lock);
            w.fired = true;
            pthread_mutex_unlock(&w.lock);
        }
        pthread_mutex_unlock(&f->lock);
    }
    uint64_t deadline = mc__deadline(timeout_ns);
    pthread_mutex_lock(&w.lock);
    while (!w.fired && mc__cond_wait_until(&w.cv, &w.lock, deadline)) {
    }
    pthread_mutex_unlock(&w.lock);
    for (size_t i = 0; i < n; i++) {
        mc_pipeline_future *f = futures[i];
        pthread_mutex_lock(&f->lock);
        for (flink **pp = &f->waiters; *pp; pp = &(*pp)->next) {
            if (*pp == &links[i]) {
                *pp = links[i].next;
                break;
            }
        }
        pthread_mutex_unlock(&f->lock);
    }
    free(links);
    pthread_mutex_destroy(&w.lock);
    pthread_cond_destroy(&w.cv);
    for (size_t i = 0; i < n; i++) {
        if (atomic_load(&futures[i]->done)) {
            *index = i;
            return MC_OK;
        }
    }
    return mc__fail(MC_ERR_WAIT_TIMEOUT, "none of %zu pipelines is ready", n);
}

void mc_pipeline_future_release(mc_pipeline_future *f)
{
    if (future_ok(f)) future_unref(f);
}
