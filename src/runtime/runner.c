/*
 * DOC: The runner's front end
 *
 * Every mc_runner_* call lands here. A runner is local (runner_local.c:
 * bounded chunks on a device of this process, recovery, checkpoints in
 * host memory) or isolated (runner_isolated.c: the same run in worker
 * processes that a supervisor replaces when they fail); the caller sees
 * one handle and one set of rules. What this file owns, for both:
 *
 *  - the descriptor's checks that need no device, and the device's where
 *    there is one (an isolated runner opens its device in its worker);
 *  - the handle: its tag, label and copies of what the descriptor points
 *    at, the state sizes, run-once, cancel, the published statistics;
 *  - progress reports: the rate counts only what this run did, so a
 *    resumed run's rate is not inflated by the iterations it skipped;
 *  - checkpoints leaving the run: on_checkpoint and the durable files in
 *    checkpoint_dir (ckpt_file.c), and resuming from the newest valid file
 *    (MC_RUNNER_RESUME) through the back end's restore.
 *
 * The back ends are reached only through mc__runner_ops (runner_ops.h).
 */
#include "runtime/runner_ops.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define RUNNER_TAG 0x6d63524eu /* "mcRN" */
#define MAX_IN_FLIGHT 16u

static bool runner_ok(const mc_runner *r)
{
    return r && r->tag == RUNNER_TAG;
}

/* ---- the descriptor ---------------------------------------------------- */

static mc_status check_ms(double v, const char *what)
{
    if (!isfinite(v) || v < 0)
        return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_runner_create: %s is %g; 0 (default) or a positive number", what,
                        v);
    return MC_OK;
}

static mc_status check_desc(const mc_runner_desc *d, const mc_device_info *info)
{
    mc_status s;
    if (!d->setup || !d->teardown)
        return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_runner_create: setup and teardown are required");
    mc_size3 g = d->threadgroups, t = d->threads_per_threadgroup;
    if (!g.x || !g.y || !g.z)
        return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_runner_create: threadgroups (%u,%u,%u) has a zero dimension", g.x,
                        g.y, g.z);
    uint64_t threads = (uint64_t)t.x * t.y * t.z;
    if (!threads || (info && threads > info->max_threads_per_threadgroup))
        return mc__fail(MC_ERR_INVALID_ARGUMENT,
                        "mc_runner_create: threads_per_threadgroup (%u,%u,%u); the device allows 1 to %u", t.x, t.y,
                        t.z, info ? info->max_threads_per_threadgroup : 0);
    /* 0 means none so that an all-zero descriptor is the default; -1, the
     * old spelling of none, is still accepted. */
    if (d->iteration_arg < -1 || d->iteration_arg >= MC_MAX_BUFFER_ARGS)
        return mc__fail(MC_ERR_INVALID_ARGUMENT,
                        "mc_runner_create: iteration_arg %d is not a slot (1 to %d) or 0 (none)", d->iteration_arg,
                        MC_MAX_BUFFER_ARGS - 1);
    if (d->control_arg < -1 || d->control_arg >= MC_MAX_BUFFER_ARGS)
        return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_runner_create: control_arg %d is not a slot (1 to %d) or 0 (none)",
                        d->control_arg, MC_MAX_BUFFER_ARGS - 1);
    if (d->iteration_arg > 0 && d->iteration_arg == d->control_arg)
        return mc__fail(MC_ERR_INVALID_ARGUMENT,
                        "mc_runner_create: iteration_arg and control_arg are both slot %d (0 means none, as in "
                        "MC_RUNNER_DESC_INIT)",
                        d->iteration_arg);
    if (!d->total_iterations && d->control_arg <= 0)
        return mc__fail(
            MC_ERR_INVALID_ARGUMENT,
            "mc_runner_create: total_iterations is 0 (until the stop condition) but there is no control_arg");
    if (info && d->control_arg > 0 && !(info->features & MC_FEATURE_INDIRECT_DISPATCH))
        return mc__fail(MC_ERR_UNSUPPORTED,
                        "mc_runner_create: a stop condition needs indirect dispatch, which %s lacks", info->name);
    if (d->in_flight > MAX_IN_FLIGHT)
        return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_runner_create: in_flight %u; at most %u", d->in_flight,
                        MAX_IN_FLIGHT);
    if ((s = check_ms(d->budget_ms, "budget_ms")) != MC_OK ||
        (s = check_ms(d->max_chunk_ms, "max_chunk_ms")) != MC_OK ||
        (s = check_ms(d->checkpoint_ms, "checkpoint_ms")) != MC_OK ||
        (s = check_ms(d->backoff_initial_ms, "backoff_initial_ms")) != MC_OK ||
        (s = check_ms(d->backoff_max_ms, "backoff_max_ms")) != MC_OK ||
        (s = check_ms(d->progress_interval_ms, "progress_interval_ms")) != MC_OK)
        return s;
    const uint32_t known = MC_RUNNER_NO_REOPEN | MC_RUNNER_RESUME;
    if (d->flags & ~known)
        return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_runner_create: unknown flags 0x%x", d->flags & ~known);
    if ((d->flags & MC_RUNNER_RESUME) && !d->checkpoint_dir)
        return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_runner_create: MC_RUNNER_RESUME needs checkpoint_dir");
    if (d->checkpoint_dir && !d->checkpoint_dir[0])
        return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_runner_create: checkpoint_dir is empty");
    if (d->run_params_len && !d->run_params)
        return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_runner_create: run_params is NULL but run_params_len is %zu",
                        d->run_params_len);
    return MC_OK;
}

/* MC_RUNNER_RESUME: the newest valid checkpoint file becomes the state
 * the run starts from. */
static mc_status resume(mc_runner *r)
{
    void *state[MC_RUNNER_MAX_STATE] = {NULL};
    mc_status s = MC_OK;
    for (uint32_t i = 0; i < r->nstate && s == MC_OK; i++)
        if (!(state[i] = mc__malloc(r->state_size[i])))
            s = mc__fail(MC_ERR_NO_MEMORY, "runner '%s': no host memory to resume (%zu bytes)", r->label,
                         r->state_size[i]);
    uint64_t it = 0;
    bool found = false;
    if (s == MC_OK)
        s = mc__ckpt_load(r->ckpt_dir, r->label, r->run_params, r->desc.run_params_len, r->state_size, r->nstate, state,
                          &it, &found);
    if (s == MC_OK && found && r->desc.total_iterations && it > r->desc.total_iterations)
        s = mc__fail(MC_ERR_INVALID_STATE,
                     "runner '%s': the checkpoint in %s is at iteration %llu, past the run's %llu", r->label,
                     r->ckpt_dir, (unsigned long long)it, (unsigned long long)r->desc.total_iterations);
    if (s == MC_OK && found && (s = r->ops->restore(r, it, (const void *const *)state)) == MC_OK) r->resume_iter = it;
    for (uint32_t i = 0; i < r->nstate; i++) free(state[i]);
    return s;
}

mc_status mc_runner_create(const mc_runner_desc *desc, mc_runner **out)
{
    if (!out) return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_runner_create: out is NULL");
    *out = NULL;
    if (!desc) return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_runner_create: desc is NULL");
    const mc__runner_ops *ops = desc->isolate ? &mc__runner_isolated_ops : &mc__runner_local_ops;
    mc_device_info info;
    mc_status s;
    if (desc->isolate) {
        if (desc->device)
            return mc__fail(MC_ERR_INVALID_ARGUMENT,
                            "mc_runner_create: an isolated runner opens its device in its worker: desc->device must be "
                            "NULL (name it in isolate->device)");
        if ((s = check_desc(desc, NULL)) != MC_OK) return s;
        if (desc->on_checkpoint)
            return mc__fail(MC_ERR_INVALID_ARGUMENT,
                            "mc_runner_create: on_checkpoint is the worker's in an isolated runner");
    } else {
        MC__CHECK_HANDLE(desc->device, MC__TAG_DEVICE, "desc->device");
        if ((s = mc_device_check(desc->device)) != MC_OK) return s;
        mc_device_get_info(desc->device, &info);
        if ((s = check_desc(desc, &info)) != MC_OK) return s;
    }

    mc_runner *r = mc__calloc(1, ops->size);
    if (!r) return mc__fail(MC_ERR_NO_MEMORY, "mc_runner_create: out of host memory");
    r->tag = RUNNER_TAG;
    r->ops = ops;
    pthread_mutex_init(&r->mu, NULL);
    r->desc = *desc;
    r->label = mc__strdup(desc->label ? desc->label : "runner");
    if (desc->checkpoint_dir) r->ckpt_dir = mc__strdup(desc->checkpoint_dir);
    if (desc->run_params_len && (r->run_params = mc__malloc(desc->run_params_len)))
        memcpy(r->run_params, desc->run_params, desc->run_params_len);
    r->desc.label = r->label;
    r->desc.checkpoint_dir = r->ckpt_dir;
    r->desc.run_params = r->run_params;
    if (!r->label || (desc->checkpoint_dir && !r->ckpt_dir) || (desc->run_params_len && !r->run_params)) {
        s = mc__fail(MC_ERR_NO_MEMORY, "mc_runner_create: out of host memory");
        goto fail;
    }
    if (r->ckpt_dir && (s = mc__ckpt_prepare_dir(r->ckpt_dir)) != MC_OK) goto fail;
    r->backend_up = true; /* from here on, release calls destroy */
    if ((s = ops->init(r, desc->isolate ? NULL : &info)) != MC_OK) goto fail;
    if ((desc->flags & MC_RUNNER_RESUME) && (s = resume(r)) != MC_OK) goto fail;
    mc__runner_publish(r, NULL, NULL);
    *out = r;
    return MC_OK;
fail : {
    char why[1200]; /* a worker's whole error (MC__ISO_TEXT_MAX) and our prefix */
    snprintf(why, sizeof why, "%s", mc_last_error());
    mc_runner_release(r);
    return mc__fail(s, "%s", why);
}
}

/* ---- what the back ends call -------------------------------------------- */

void mc__runner_publish(mc_runner *r, const mc_runner_stats *st, const mc_isolate_stats *ist)
{
    pthread_mutex_lock(&r->mu);
    if (st) r->pub = *st;
    if (ist) r->ipub = *ist;
    if (r->start_ns) r->pub.elapsed_ms = (double)(mc__now_ns() - r->start_ns) / 1e6;
    if (r->desc.flags & MC_RUNNER_RESUME) r->pub.resumed_iteration = r->resume_iter;
    pthread_mutex_unlock(&r->mu);
}

void mc__runner_report(mc_runner *r, uint64_t iterations, bool done)
{
    if (!r->desc.progress) return;
    mc_runner_stats t;
    pthread_mutex_lock(&r->mu);
    t = r->pub;
    pthread_mutex_unlock(&r->mu);
    mc_runner_progress p;
    memset(&p, 0, sizeof p);
    p.iterations = iterations;
    p.total_iterations = r->desc.total_iterations;
    p.elapsed_s = (double)(mc__now_ns() - r->start_ns) / 1e9;
    /* A resumed run's rate counts only what this run did. */
    uint64_t from = r->resume_iter;
    p.rate = p.elapsed_s > 0 && iterations >= from ? (double)(iterations - from) / p.elapsed_s : 0;
    p.eta_s = done ? 0 : p.total_iterations && p.rate > 0 ? (double)(p.total_iterations - iterations) / p.rate : -1;
    p.chunks = t.chunks;
    p.recoveries = t.recoveries;
    p.worker_restarts = t.worker_restarts;
    p.done = done;
    r->desc.progress(r->desc.progress_user, &p);
}

bool mc__runner_checkpoint_taken(mc_runner *r, uint64_t iteration, const void *const *state)
{
    if (r->desc.on_checkpoint)
        r->desc.on_checkpoint(r->desc.checkpoint_user, iteration, state, r->state_size, r->nstate);
    if (!r->ckpt_dir) return false;
    /* On the run's thread, between chunks: the chunks queued behind keep
     * the device busy while the file is written. */
    mc_status s =
        mc__ckpt_write(r->ckpt_dir, r->run_params, r->desc.run_params_len, iteration, state, r->state_size, r->nstate);
    if (s == MC_OK) return true;
    if (!r->warned_ckpt_write) {
        r->warned_ckpt_write = true; /* the run goes on: its memory checkpoints still work */
        mc__log(MC_LOG_WARN, "runner.checkpoint_write_failed", "runner '%s': %s", r->label, mc_last_error());
    }
    return false;
}

/* ---- the rest of the API ------------------------------------------------- */

mc_status mc_runner_restore(mc_runner *r, uint64_t iteration, const void *const *state, uint32_t count)
{
    if (!runner_ok(r)) return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_runner_restore: r is NULL or not a runner");
    if (r->ops->isolated)
        return mc__fail(MC_ERR_UNSUPPORTED, "mc_runner_restore: an isolated runner restores its own checkpoints");
    if (atomic_load(&r->ran))
        return mc__fail(MC_ERR_INVALID_STATE, "mc_runner_restore: runner '%s' has begun its run", r->label);
    if (!state || count != r->nstate)
        return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_runner_restore: %u state buffers given; runner '%s' has %u", count,
                        r->label, r->nstate);
    for (uint32_t i = 0; i < count; i++)
        if (!state[i]) return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_runner_restore: state[%u] is NULL", i);
    if (r->desc.total_iterations && iteration > r->desc.total_iterations)
        return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_runner_restore: iteration %llu is past total_iterations %llu",
                        (unsigned long long)iteration, (unsigned long long)r->desc.total_iterations);
    mc_status s = r->ops->restore(r, iteration, state);
    if (s == MC_OK) r->resume_iter = iteration;
    return s;
}

mc_status mc_runner_run(mc_runner *r)
{
    if (!runner_ok(r)) return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_runner_run: r is NULL or not a runner");
    if (atomic_exchange(&r->ran, 1))
        return mc__fail(MC_ERR_INVALID_STATE, "runner '%s' has run already; make a new one", r->label);
    r->start_ns = mc__now_ns();
    mc_status s = r->ops->run(r);
    if (s == MC_OK) mc__clear_error();
    return s;
}

mc_status mc_runner_cancel(mc_runner *r)
{
    if (!runner_ok(r)) return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_runner_cancel: r is NULL or not a runner");
    atomic_store(&r->cancel, 1);
    r->ops->wake(r);
    return MC_OK;
}

mc_status mc_runner_get_stats(const mc_runner *r, mc_runner_stats *out)
{
    if (!runner_ok(r)) return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_runner_get_stats: r is NULL or not a runner");
    if (!out) return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_runner_get_stats: out is NULL");
    mc_runner *m = (mc_runner *)(uintptr_t)r; /* the lock, not the figures, changes */
    pthread_mutex_lock(&m->mu);
    *out = m->pub;
    pthread_mutex_unlock(&m->mu);
    return MC_OK;
}

mc_status mc_runner_get_isolate_stats(const mc_runner *r, mc_isolate_stats *out)
{
    if (!runner_ok(r) || !r->ops->isolated)
        return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_runner_get_isolate_stats: r is not an isolated runner");
    if (!out) return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_runner_get_isolate_stats: out is NULL");
    mc_runner *m = (mc_runner *)(uintptr_t)r;
    pthread_mutex_lock(&m->mu);
    *out = m->ipub;
    pthread_mutex_unlock(&m->mu);
    return MC_OK;
}

mc_status mc_runner_state_read(mc_runner *r, uint32_t index, void *dst, size_t len)
{
    if (!runner_ok(r)) return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_runner_state_read: r is NULL or not a runner");
    if (index >= r->nstate)
        return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_runner_state_read: state %u of %u does not exist", index,
                        r->nstate);
    if (!dst && len) return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_runner_state_read: dst is NULL");
    if (len > r->state_size[index])
        return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_runner_state_read: %zu bytes from a state buffer of %zu", len,
                        r->state_size[index]);
    return r->ops->state_read(r, index, dst, len);
}

size_t mc_runner_state_size(const mc_runner *r, uint32_t index)
{
    return runner_ok(r) && index < r->nstate ? r->state_size[index] : 0;
}

mc_device *mc_runner_device(const mc_runner *r)
{
    return runner_ok(r) ? r->ops->device(r) : NULL;
}

void mc_runner_release(mc_runner *r)
{
    if (!runner_ok(r)) return;
    if (r->backend_up) r->ops->destroy(r);
    free(r->label);
    free(r->ckpt_dir);
    free(r->run_params);
    pthread_mutex_destroy(&r->mu);
    r->tag = 0;
    free(r);
}
