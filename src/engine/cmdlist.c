/*
 * DOC: Command lists
 *
 * A list is recorded through the shared recorder (recorder.c) in snapshot
 * mode, so each command is a self-contained group that carries its own
 * pipeline, arguments and barrier (hal.h, "command lists"). mc_cmdlist_end
 * freezes the recording into an immutable mc__listrec and asks the backend
 * to build its form of it once (an indirect command buffer, a CUDA graph, a
 * copy): executing it afterwards costs one command in the command buffer,
 * however many dispatches it holds (F149, F673).
 *
 * Lifetimes: the list holds its current recording; every command buffer
 * that executes it holds the list and the recording until it is destroyed.
 * A reset drops only the list's hold, so a command buffer recorded before
 * keeps what it was given. Resets are refused while a committed command
 * buffer that executes the list is unfinished (gpu_uses), as Metal forbids
 * changing an indirect command buffer the GPU may be reading.
 *
 * Without backend lists (or with mc__cmdlist_test_copy_in), executions copy
 * the groups of their range into the command buffer instead.
 */
#include "engine/engine.h"

#include <stdlib.h>
#include <string.h>

static _Atomic bool test_copy_in;

void mc__cmdlist_test_copy_in(bool on)
{
    atomic_store(&test_copy_in, on);
}

mc_status mc_cmdlist_create(mc_device *d, const mc_cmdlist_desc *desc, mc_cmdlist **out)
{
    MC__CHECK_HANDLE(d, MC__TAG_DEVICE, "device");
    if (!out) return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_cmdlist_create: out is NULL");
    *out = NULL;
    uint32_t max = desc && desc->max_commands ? desc->max_commands : MC_CMDLIST_MAX_COMMANDS;
    if (max > MC_CMDLIST_MAX_COMMANDS)
        return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_cmdlist_create: %u commands is over the limit of %u (F149)", max,
                        MC_CMDLIST_MAX_COMMANDS);
    mc_status s = mc_device_check(d);
    if (s != MC_OK) return s;
    mc_cmdlist *l = mc__calloc(1, sizeof *l);
    if (!l) return mc__fail(MC_ERR_NO_MEMORY, "mc_cmdlist_create: out of memory");
    mc__object_init(&l->base, MC__TAG_CMDLIST, d, desc && desc->label ? desc->label : "cmdlist");
    if (!l->base.label) {
        free(l);
        return mc__fail(MC_ERR_NO_MEMORY, "mc_cmdlist_create: out of memory");
    }
    l->max_commands = max;
    pthread_mutex_init(&l->lock, NULL);
    l->state = MC__LIST_EMPTY;
    l->pass.rec = &l->rec;
    atomic_init(&l->gpu_uses, 0);
    mc__object_retain(&d->base);
    *out = l;
    return MC_OK;
}

void mc__cmdlist_destroy(mc_cmdlist *l)
{
    mc_device *d = l->base.device;
    if (l->state == MC__LIST_RECORDING) mc__recorder_free(&l->rec);
    if (l->cur) mc__object_release(&l->cur->base);
    pthread_mutex_destroy(&l->lock);
    l->base.tag = MC__TAG_DEAD;
    free(l->base.label);
    free(l);
    mc__object_release(&d->base);
}

void mc__listrec_destroy(mc__listrec *r)
{
    mc_device *d = r->base.device;
    if (r->hl) d->hal->cmdlist_destroy(d->hd, r->hl);
    for (uint32_t i = 0; i < r->nrefs; i++) mc__object_release(r->refs[i]);
    free(r->refs);
    free(r->cmds);
    free(r->bytes);
    free(r->group);
    r->base.tag = MC__TAG_DEAD;
    free(r->base.label);
    free(r);
    mc__object_release(&d->base);
}

void mc_cmdlist_retain(mc_cmdlist *l)
{
    if (mc__object_check(l, MC__TAG_CMDLIST)) mc__object_retain(&l->base);
}

void mc_cmdlist_release(mc_cmdlist *l)
{
    if (mc__object_check(l, MC__TAG_CMDLIST)) mc__object_release(&l->base);
}

const char *mc_cmdlist_label(const mc_cmdlist *l)
{
    return mc__object_check(l, MC__TAG_CMDLIST) ? l->base.label : NULL;
}

mc_status mc_cmdlist_begin(mc_cmdlist *l, mc_pass **out)
{
    MC__CHECK_HANDLE(l, MC__TAG_CMDLIST, "command list");
    if (!out) return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_cmdlist_begin: out is NULL");
    *out = NULL;
    mc_status s = mc_device_check(l->base.device);
    if (s != MC_OK) return s;
    pthread_mutex_lock(&l->lock);
    int st = l->state;
    if (st == MC__LIST_EMPTY) {
        mc__recorder_init(&l->rec, &l->base, true, false, l->max_commands);
        l->rec.pass_open = true;
        l->state = MC__LIST_RECORDING;
    }
    pthread_mutex_unlock(&l->lock);
    if (st != MC__LIST_EMPTY)
        return mc__fail(MC_ERR_INVALID_STATE, "mc_cmdlist_begin: command list '%s' %s", l->base.label,
                        st == MC__LIST_RECORDING ? "is already recording"
                                                 : "holds a recording: reset it before recording again");
    *out = &l->pass;
    return MC_OK;
}

/* Freezes the recorder's content into a recording (taking its arrays). */
static mc_status freeze(mc_cmdlist *l, mc__listrec **out)
{
    mc_device *d = l->base.device;
    mc__recorder *rec = &l->rec;
    mc__listrec *r = mc__calloc(1, sizeof *r);
    uint32_t *group = mc__malloc((size_t)(rec->ndispatch ? rec->ndispatch : 1) * sizeof *group);
    if (!r || !group) {
        free(r);
        free(group);
        return mc__fail(MC_ERR_NO_MEMORY, "mc_cmdlist_end: out of memory");
    }
    mc__object_init(&r->base, MC__TAG_LISTREC, d, l->base.label);
    mc__object_retain(&d->base);
    /* Each group ends in its dispatch; the next one starts after it. */
    uint32_t k = 0, start = 0;
    for (uint32_t i = 0; i < rec->ncmd; i++) {
        uint32_t op = rec->cmds[i].op;
        if (op == MC__OP_DISPATCH || op == MC__OP_DISPATCH_INDIRECT) {
            group[k++] = start;
            start = i + 1;
        }
    }
    r->group = group;
    r->ncommands = k;
    r->cmds = rec->cmds;
    r->ncmd = rec->ncmd;
    r->bytes = rec->bytes;
    r->nbytes = rec->nbytes;
    r->refs = rec->refs;
    r->nrefs = rec->nrefs;
    r->has_indirect = rec->has_indirect;
    rec->cmds = NULL;
    rec->bytes = NULL;
    rec->refs = NULL;
    rec->ncmd = rec->nbytes = rec->nrefs = 0;
    mc__recorder_free(rec); /* what is left: nothing a recording needs */

    if (d->hal->version >= 2 && d->hal->cmdlist_create && !atomic_load(&test_copy_in)) {
        mc__list_desc ld = {r->cmds,
                            r->ncmd,
                            r->bytes,
                            r->nbytes,
                            r->ncommands,
                            r->has_indirect,
                            r->base.label ? r->base.label : "cmdlist"};
        mc_status s = d->hal->cmdlist_create(d->hd, &ld, &r->hl, &r->caps);
        if (s != MC_OK) {
            r->hl = NULL;
            mc__object_release(&r->base);
            return s;
        }
    }
    *out = r;
    return MC_OK;
}

mc_status mc_cmdlist_end(mc_cmdlist *l)
{
    MC__CHECK_HANDLE(l, MC__TAG_CMDLIST, "command list");
    if (l->state != MC__LIST_RECORDING)
        return mc__fail(MC_ERR_INVALID_STATE, "mc_cmdlist_end: command list '%s' is not recording", l->base.label);
    mc__listrec *r = NULL;
    mc_status s = freeze(l, &r);
    pthread_mutex_lock(&l->lock);
    if (s == MC_OK) {
        l->cur = r;
        l->state = MC__LIST_READY;
    } else {
        mc__recorder_free(&l->rec); /* if freeze failed before taking it */
        l->state = MC__LIST_EMPTY;
    }
    pthread_mutex_unlock(&l->lock);
    return s;
}

mc_status mc_cmdlist_reset(mc_cmdlist *l)
{
    MC__CHECK_HANDLE(l, MC__TAG_CMDLIST, "command list");
    int uses = atomic_load(&l->gpu_uses);
    if (uses > 0)
        return mc__fail(MC_ERR_INVALID_STATE,
                        "mc_cmdlist_reset: command list '%s' is executed by %d committed command buffer%s that %s not "
                        "finished",
                        l->base.label, uses, uses == 1 ? "" : "s", uses == 1 ? "has" : "have");
    pthread_mutex_lock(&l->lock);
    mc__listrec *old = l->cur;
    if (l->state == MC__LIST_RECORDING) mc__recorder_free(&l->rec);
    l->cur = NULL;
    l->state = MC__LIST_EMPTY;
    pthread_mutex_unlock(&l->lock);
    if (old) mc__object_release(&old->base);
    return MC_OK;
}

uint32_t mc_cmdlist_command_count(const mc_cmdlist *l)
{
    if (!mc__object_check(l, MC__TAG_CMDLIST)) return 0;
    mc_cmdlist *m = (mc_cmdlist *)l;
    pthread_mutex_lock(&m->lock);
    uint32_t n = m->state == MC__LIST_READY && m->cur ? m->cur->ncommands : 0;
    pthread_mutex_unlock(&m->lock);
    return n;
}

mc_status mc__cmdlist_take(mc_cmdlist *l, mc__listrec **out)
{
    pthread_mutex_lock(&l->lock);
    mc__listrec *r = l->state == MC__LIST_READY ? l->cur : NULL;
    int st = l->state;
    if (r) mc__object_retain(&r->base);
    pthread_mutex_unlock(&l->lock);
    if (!r)
        return mc__fail(MC_ERR_INVALID_STATE, "command list '%s' %s", l->base.label,
                        st == MC__LIST_RECORDING ? "is still recording: end it before executing it"
                                                 : "is empty: record it before executing it");
    *out = r;
    return MC_OK;
}
