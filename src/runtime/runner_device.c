/*
 * DOC: The local runner on its device
 *
 * What a local runner makes and keeps on its device: the binding (setup's
 * pipeline, state buffers and arguments, checked before anything runs,
 * with copies of the bytes arguments), the queue, the timeline event, the
 * control block and its snapshots, the two checkpoint slots; and, after
 * the device was lost, a new device like it with the injected faults not
 * yet reached carried over. runner_local.c decides when.
 */
#include "runtime/runner_local.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void free_bytes(local_runner *r)
{
    for (uint32_t i = 0; i < MC_MAX_BUFFER_ARGS; i++) {
        free(r->bytes[i]);
        r->bytes[i] = NULL;
    }
}

/* ---- the binding ------------------------------------------------------- */

static mc_status check_binding(local_runner *r)
{
    const mc_runner_binding *b = &r->bind;
    const char *l = r->b.label;
    mc_pipeline_info pi;
    if (!mc__object_check(b->pipeline, MC__TAG_PIPELINE) || mc__object_device(b->pipeline) != r->dev ||
        mc_pipeline_get_info(b->pipeline, &pi) != MC_OK)
        return mc__fail(MC_ERR_INVALID_ARGUMENT, "runner '%s': setup left no pipeline of this device in the binding",
                        l);
    mc_size3 t = r->b.desc.threads_per_threadgroup;
    uint64_t threads = (uint64_t)t.x * t.y * t.z;
    if (pi.max_total_threads_per_threadgroup && threads > pi.max_total_threads_per_threadgroup)
        return mc__fail(MC_ERR_INVALID_ARGUMENT, "runner '%s': %llu threads per threadgroup; the pipeline allows %u", l,
                        (unsigned long long)threads, pi.max_total_threads_per_threadgroup);
    if (b->state_count < 1 || b->state_count > MC_RUNNER_MAX_STATE)
        return mc__fail(MC_ERR_INVALID_ARGUMENT, "runner '%s': state_count is %u; 1 to %d state buffers", l,
                        b->state_count, MC_RUNNER_MAX_STATE);
    if (r->b.nstate && b->state_count != r->b.nstate)
        return mc__fail(MC_ERR_INVALID_STATE, "runner '%s': setup made %u state buffers, before %u", l, b->state_count,
                        r->b.nstate);
    for (uint32_t i = 0; i < b->state_count; i++) {
        mc_buffer *s = b->state[i];
        if (!mc__object_check(s, MC__TAG_BUFFER) || mc__object_device(s) != r->dev)
            return mc__fail(MC_ERR_INVALID_ARGUMENT, "runner '%s': state[%u] is not a buffer of this device", l, i);
        if (r->b.nstate && mc_buffer_size(s) != r->b.state_size[i])
            return mc__fail(MC_ERR_INVALID_STATE, "runner '%s': setup made state[%u] of %zu bytes, before %zu", l, i,
                            mc_buffer_size(s), r->b.state_size[i]);
    }
    for (uint32_t i = 0; i < MC_MAX_BUFFER_ARGS; i++) {
        const mc_runner_arg *a = &b->args[i];
        bool runner_slot = (int32_t)i == r->b.desc.iteration_arg || (int32_t)i == r->b.desc.control_arg;
        if (a->kind == MC_RUNNER_ARG_NONE) continue;
        if (runner_slot)
            return mc__fail(MC_ERR_INVALID_ARGUMENT, "runner '%s': slot %u is the runner's (%s); leave it unbound", l,
                            i, (int32_t)i == r->b.desc.iteration_arg ? "iteration_arg" : "control_arg");
        if (a->kind == MC_RUNNER_ARG_BUFFER) {
            if (!mc__object_check(a->buffer, MC__TAG_BUFFER) || mc__object_device(a->buffer) != r->dev)
                return mc__fail(MC_ERR_INVALID_ARGUMENT, "runner '%s': slot %u is not a buffer of this device", l, i);
            if (a->offset > mc_buffer_size(a->buffer))
                return mc__fail(MC_ERR_INVALID_ARGUMENT, "runner '%s': slot %u: offset %zu past the buffer's %zu bytes",
                                l, i, a->offset, mc_buffer_size(a->buffer));
        } else if (a->kind == MC_RUNNER_ARG_BYTES) {
            if (!a->bytes || a->len == 0 || a->len > MC_MAX_BYTES_ARG)
                return mc__fail(MC_ERR_INVALID_ARGUMENT, "runner '%s': slot %u: bytes need a pointer and 1 to %d bytes",
                                l, i, MC_MAX_BYTES_ARG);
        } else {
            return mc__fail(MC_ERR_INVALID_ARGUMENT, "runner '%s': slot %u has unknown kind %d", l, i, (int)a->kind);
        }
    }
    for (uint32_t i = 0; i < MC_MAX_THREADGROUP_MEMORY_ARGS; i++)
        if (b->threadgroup_memory[i] > r->info.threadgroup_memory_size)
            return mc__fail(MC_ERR_INVALID_ARGUMENT,
                            "runner '%s': threadgroup memory slot %u: %zu bytes, the device has %llu", l, i,
                            b->threadgroup_memory[i], (unsigned long long)r->info.threadgroup_memory_size);
    return MC_OK;
}

void mc__lr_unbind(local_runner *r)
{
    if (r->bound) r->b.desc.teardown(r->b.desc.user, &r->bind);
    r->bound = false;
    memset(&r->bind, 0, sizeof r->bind);
    free_bytes(r);
}

/* Calls setup on r->dev and checks what it made. */
mc_status mc__lr_bind(local_runner *r)
{
    memset(&r->bind, 0, sizeof r->bind);
    mc_status s = r->b.desc.setup(r->b.desc.user, r->dev, &r->bind);
    if (s != MC_OK) {
        char why[256];
        snprintf(why, sizeof why, "%s", mc_last_error());
        memset(&r->bind, 0, sizeof r->bind);
        return mc__fail(s, "runner '%s': setup failed: %s", r->b.label, why[0] ? why : mc_status_text(s));
    }
    r->bound = true;
    if ((s = check_binding(r)) != MC_OK) {
        char why[256];
        snprintf(why, sizeof why, "%s", mc_last_error());
        mc__lr_unbind(r);
        return mc__fail(s, "%s", why);
    }
    for (uint32_t i = 0; i < MC_MAX_BUFFER_ARGS; i++) {
        const mc_runner_arg *a = &r->bind.args[i];
        if (a->kind != MC_RUNNER_ARG_BYTES) continue;
        r->bytes[i] = mc__malloc(a->len);
        if (!r->bytes[i]) {
            mc__lr_unbind(r);
            return mc__fail(MC_ERR_NO_MEMORY, "runner '%s': out of host memory", r->b.label);
        }
        memcpy(r->bytes[i], a->bytes, a->len);
    }
    if (!r->b.nstate) {
        r->b.nstate = r->bind.state_count;
        for (uint32_t i = 0; i < r->b.nstate; i++) r->b.state_size[i] = mc_buffer_size(r->bind.state[i]);
    }
    return MC_OK;
}

/* ---- objects on the device -------------------------------------------- */

static void set_timeline(local_runner *r, mc_event *e)
{
    pthread_mutex_lock(&r->mu);
    mc_event *old = r->timeline;
    r->timeline = e;
    pthread_mutex_unlock(&r->mu);
    mc_event_release(old);
}

mc_status mc__lr_reset_control(local_runner *r)
{
    if (!r->control) return MC_OK;
    mc_runner_control c;
    memset(&c, 0, sizeof c);
    c.groups[0] = r->b.desc.threadgroups.x;
    c.groups[1] = r->b.desc.threadgroups.y;
    c.groups[2] = r->b.desc.threadgroups.z;
    return mc_buffer_write(r->control, 0, &c, sizeof c);
}

static mc_status make_queue(local_runner *r)
{
    mc_queue_release(r->queue);
    r->queue = NULL;
    mc_queue_desc qd = {r->b.label};
    return mc_queue_create(r->dev, &qd, &r->queue);
}

/* Everything the runner itself keeps on the device, made where missing. */
mc_status mc__lr_make_objects(local_runner *r)
{
    mc_status s = MC_OK;
    if (!r->queue && (s = make_queue(r)) != MC_OK) return s;
    if (!r->timeline) {
        mc_event *e;
        if ((s = mc_event_create(r->dev, 0, &e)) != MC_OK) return s;
        set_timeline(r, e);
    }
    if (r->b.desc.control_arg >= 0 && !r->control) {
        mc_buffer_desc bd = {SNAP_STRIDE, MC_STORAGE_SHARED, "runner control", NULL};
        if ((s = mc_buffer_create(r->dev, &bd, &r->control)) != MC_OK) return s;
        bd.size = (size_t)SNAP_STRIDE * (r->b.desc.in_flight + 1);
        bd.label = "runner control snapshots";
        if ((s = mc_buffer_create(r->dev, &bd, &r->snaps)) != MC_OK) return s;
    }
    for (int k = 0; k < 2; k++) {
        for (uint32_t i = 0; i < r->b.nstate; i++) {
            if (r->ckpt[k][i]) continue;
            mc_buffer_desc bd = {r->b.state_size[i], MC_STORAGE_SHARED,
                                 k ? "runner checkpoint B" : "runner checkpoint A", NULL};
            if ((s = mc_buffer_create(r->dev, &bd, &r->ckpt[k][i])) != MC_OK) return s;
        }
        r->ckpt_busy[k] = false;
    }
    return MC_OK;
}

void mc__lr_drop_objects(local_runner *r)
{
    mc_queue_release(r->queue);
    r->queue = NULL;
    set_timeline(r, NULL);
    mc_buffer_release(r->control);
    mc_buffer_release(r->snaps);
    r->control = r->snaps = NULL;
    for (int k = 0; k < 2; k++) {
        for (uint32_t i = 0; i < MC_RUNNER_MAX_STATE; i++) {
            mc_buffer_release(r->ckpt[k][i]);
            r->ckpt[k][i] = NULL;
        }
        r->ckpt_busy[k] = false;
    }
}

/* Lets go of a (lost) device. Injected faults scheduled on it but not yet
 * reached move to the next one, so "the Nth command buffer of the run"
 * keeps its meaning across a reopen. */
void mc__lr_drop_device(local_runner *r)
{
    mc__lr_unbind(r);
    mc__lr_drop_objects(r);
    if (!r->dev) return; /* a reopen failed before: the last one's record stands */
    mc__device_take_like(r->dev, &r->like);
    mc_device_release(r->dev);
    r->dev = NULL;
}

/* Opens a device like the one lost (same kind, index, time limit, worker
 * count: the engine knows how it was opened) with its faults carried. */
mc_status mc__lr_open_device(local_runner *r)
{
    mc_device *d;
    mc_status s = mc__device_reopen_like(&r->like, &d);
    if (s != MC_OK) return s;
    r->dev = d;
    mc_device_get_info(d, &r->info);
    r->st.device_reopens++;
    mc__log(MC_LOG_INFO, "runner.device_reopened", "runner '%s': reopened %s:%d", r->b.label,
            mc_device_kind_name(r->info.kind), r->info.index);
    return MC_OK;
}
