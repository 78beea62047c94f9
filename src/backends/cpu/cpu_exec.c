/*
 * DOC: CPU device: worker pool, queues and execution
 *
 * W workers share one ready list holding at most one submission per queue:
 * the oldest unfinished one. A worker that takes a submission leads it: it
 * runs the commands in order and, for a dispatch of more than one
 * threadgroup, offers the dispatch to the pool; idle workers join and take
 * threadgroups from an atomic counter until none are left. Queues therefore
 * run one after another inside and concurrently between each other.
 *
 * A WAIT on an event that is not there yet parks the submission on the
 * event and frees the worker; the signal puts it back on the ready list.
 *
 * GPU-driven work: an indirect dispatch reads its grid when the worker gets
 * to it, so a kernel earlier in the same command buffer may have written it
 * (F148). A command list is the engine's recording itself: EXECUTE_LIST
 * runs the chosen commands, each from empty bindings plus the ones its
 * group carries, reading a device-chosen range at that moment and clamping
 * it to the list (F149).
 *
 * The Apple GPU's rules are enforced here (F144-F146, F685-F687):
 *  - an execution-time limit per command buffer, checked before every
 *    command and between threadgroups (between runs of at most a chunk of
 *    groups where an MSL kernel runs them row by row, see run_groups);
 *    parked time does not count. A single threadgroup that never returns
 *    cannot be stopped (there is no safe way to kill a thread), so kernels
 *    must keep threadgroups short;
 *  - after a failure the queue's later submissions complete with
 *    MC_ERR_PRIOR_ERROR without running (IOAF codes 4/5, F144);
 *  - repeated timeouts revoke access for a cool-down (F146, F685);
 *  - device loss is sticky for every queue.
 *
 * Idle workers spin for MC_CPU_SPIN_US before sleeping, so back-to-back
 * submissions start in microseconds and an idle device costs no CPU. A
 * spinning thread yields its core every few microseconds: a woken thread
 * may be queued on the spinner's core (see mc__spin_step). A dispatch
 * that took under MC__CPU_INLINE_NS last time is not offered to the pool.
 */
#include "backends/cpu/cpu.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* run_pass outcomes besides a status */
enum { RUN_OK, RUN_PARKED, RUN_FAILED };

/* Dispatches predicted to take less than this run unshared on the worker
 * leading the submission (see dispatch()). */
#define MC__CPU_INLINE_NS 10000u

/* ---- ready list and waking ---------------------------------------------- */

static void push_ready_locked(mc__cpu_device *dev, mc__cpu_job *j)
{
    j->ready_next = NULL;
    if (dev->ready_tail) dev->ready_tail->ready_next = j;
    else dev->ready_head = j;
    dev->ready_tail = j;
    atomic_fetch_add(&dev->work, 1);
}

/* Wakes sleepers for n new pieces of work, minus the workers already
 * spinning: those find it on their own, much sooner than a woken thread. */
static void wake_locked(mc__cpu_device *dev, uint64_t n)
{
    uint32_t spinning = atomic_load(&dev->nspin);
    n = n > spinning ? n - spinning : 0;
    n = MC__MIN(n, dev->nsleep);
    for (uint64_t i = 0; i < n; i++) pthread_cond_signal(&dev->wake);
}

void mc__cpu_make_ready(mc__cpu_device *dev, mc__cpu_job *list)
{
    pthread_mutex_lock(&dev->lock);
    uint64_t n = 0;
    while (list) {
        mc__cpu_job *next = list->ready_next;
        push_ready_locked(dev, list);
        list = next;
        n++;
    }
    wake_locked(dev, n);
    pthread_mutex_unlock(&dev->lock);
}

static void unlink_dispatch_locked(mc__cpu_device *dev, mc__cpu_dispatch *d)
{
    if (d->prev) d->prev->next = d->next;
    else dev->dispatches = d->next;
    if (d->next) d->next->prev = d->prev;
    d->prev = d->next = NULL;
    d->listed = false;
    atomic_fetch_sub(&dev->work, 1);
}

/* Takes a ready submission, else joins a dispatch with threadgroups left.
 * Submissions come first: leading one starts another queue moving. */
static bool take_locked(mc__cpu_device *dev, mc__cpu_job **job, mc__cpu_dispatch **disp)
{
    mc__cpu_job *j = dev->ready_head;
    if (j) {
        dev->ready_head = j->ready_next;
        if (!dev->ready_head) dev->ready_tail = NULL;
        j->ready_next = NULL;
        atomic_fetch_sub(&dev->work, 1);
        *job = j;
        /* More submissions than spinning workers: pass the wake-up on. */
        if (dev->ready_head && dev->nsleep && atomic_load(&dev->nspin) == 0) pthread_cond_signal(&dev->wake);
        return true;
    }
    for (mc__cpu_dispatch *d = dev->dispatches, *next; d; d = next) {
        next = d->next;
        if (atomic_load_explicit(&d->next_group, memory_order_relaxed) >= d->total ||
            atomic_load_explicit(&d->abort, memory_order_relaxed)) {
            unlink_dispatch_locked(dev, d); /* spent: stop others from looking at it */
            continue;
        }
        atomic_fetch_add(&d->helpers, 1);
        *disp = d;
        return true;
    }
    return false;
}

/* Blocks until there is something to do; false when the pool stops. */
static bool find_work(mc__cpu_worker *w, mc__cpu_job **job, mc__cpu_dispatch **disp)
{
    mc__cpu_device *dev = w->dev;
    *job = NULL;
    *disp = NULL;
    if (dev->spin_ns && atomic_fetch_add(&dev->nspin, 1) >= dev->max_spinners) {
        atomic_fetch_sub(&dev->nspin, 1); /* enough spin already: sleep */
    } else if (dev->spin_ns) {
        uint64_t until = mc__now_ns() + dev->spin_ns;
        for (uint32_t i = 1;; i++) {
            /* trylock: when another spinner holds the lock it is taking the
             * work; piling up behind it only delays the owner's next lock */
            if (atomic_load_explicit(&dev->work, memory_order_acquire) > 0 && pthread_mutex_trylock(&dev->lock) == 0) {
                if (take_locked(dev, job, disp)) {
                    /* under the lock, so a concurrent push counts us right */
                    atomic_fetch_sub(&dev->nspin, 1);
                    pthread_mutex_unlock(&dev->lock);
                    return true;
                }
                pthread_mutex_unlock(&dev->lock);
            }
            if (atomic_load_explicit(&dev->stopping, memory_order_relaxed)) break;
            if ((i & 31) == 0 && mc__now_ns() >= until) break;
            mc__spin_step(i);
        }
        atomic_fetch_sub(&dev->nspin, 1);
    }
    pthread_mutex_lock(&dev->lock);
    for (;;) {
        if (take_locked(dev, job, disp)) break;
        if (atomic_load(&dev->stopping)) {
            pthread_mutex_unlock(&dev->lock);
            return false;
        }
        dev->nsleep++;
        pthread_cond_wait(&dev->wake, &dev->lock);
        dev->nsleep--;
    }
    pthread_mutex_unlock(&dev->lock);
    return true;
}

/* ---- dispatches --------------------------------------------------------- */

/* Takes threadgroups until none are left or the deadline passes; returns
 * how many this worker ran. */
static uint64_t run_groups(mc__cpu_worker *w, mc__cpu_dispatch *d)
{
    mc_cpu_ctx ctx;
    memset(&ctx, 0, sizeof ctx);
    for (int i = 0; i < 3; i++) {
        ctx.groups[i] = d->groups[i];
        ctx.group_size[i] = d->threads[i];
    }
    ctx.args = d->args;
    ctx.worker = w->index;
    ctx.constants = d->constants;
    for (int i = 0; i < MC_CPU_MAX_TG_MEM; i++) {
        ctx.tg_mem[i] = d->tg_len[i] ? (char *)w->tgmem + d->tg_offset[i] : NULL;
        ctx.tg_mem_size[i] = d->tg_len[i];
    }
    const bool timed = d->deadline_ns != UINT64_MAX;
    const uint64_t gx = d->groups[0], gy = d->groups[1];
    uint64_t ran = 0;
    for (;;) {
        uint64_t g = atomic_fetch_add_explicit(&d->next_group, d->chunk, memory_order_relaxed);
        if (g >= d->total) return ran;
        uint64_t end = MC__MIN(g + d->chunk, d->total);
        while (g < end) {
            if (atomic_load_explicit(&d->abort, memory_order_relaxed)) return ran;
            if (timed && mc__now_ns() > d->deadline_ns) {
                atomic_store(&d->abort, true);
                return ran;
            }
            uint64_t rest = g / gx;
            ctx.group_id[0] = (uint32_t)(g % gx);
            ctx.group_id[1] = (uint32_t)(rest % gy);
            ctx.group_id[2] = (uint32_t)(rest / gy);
            /* the groups of the chunk in this row of groups, row by row
             * across them: long runs along x for the prefetcher, where a
             * 16x16 group alone reads 18 rows 16 cells at a time */
            uint64_t run = d->rows ? MC__MIN(end - g, gx - ctx.group_id[0]) : 1;
            if (run > 1) d->rows(&ctx, (uint32_t)run);
            else d->fn(&ctx);
            ran += run;
            g += run;
        }
    }
}

/* A worker that joined someone else's dispatch. After the decrement the
 * record may already serve the leader's next dispatch; reading
 * leader_sleeping then costs at most a spurious wake-up. The seq_cst
 * decrement and load pair with the leader's store and load (Dekker), so a
 * sleeping leader is always woken. */
static void help(mc__cpu_worker *w, mc__cpu_dispatch *d)
{
    run_groups(w, d);
    if (atomic_fetch_sub(&d->helpers, 1) == 1 && atomic_load(&d->leader_sleeping)) {
        mc__cpu_device *dev = w->dev;
        pthread_mutex_lock(&dev->lock);
        pthread_cond_broadcast(&dev->dispatch_cv);
        pthread_mutex_unlock(&dev->lock);
    }
}

static void wait_helpers(mc__cpu_device *dev, mc__cpu_dispatch *d)
{
    uint64_t until = 0;
    for (uint32_t i = 0;; i++) {
        if (atomic_load(&d->helpers) == 0) return;
        if ((i & 31) == 0) {
            uint64_t now = mc__now_ns();
            if (!until) until = now + dev->spin_ns;
            else if (now >= until) break;
        }
        mc__spin_step(i + 1);
    }
    atomic_store(&d->leader_sleeping, true);
    pthread_mutex_lock(&dev->lock);
    while (atomic_load(&d->helpers) != 0) pthread_cond_wait(&dev->dispatch_cv, &dev->lock);
    pthread_mutex_unlock(&dev->lock);
    atomic_store(&d->leader_sleeping, false);
}

/* ---- failing a submission ------------------------------------------------ */

static const char *label_of(const mc__submission *sub)
{
    return sub->label && sub->label[0] ? sub->label : "(unlabelled)";
}

/* Records the outcome: status, message and the failing pass (-1: none). */
static int fail(mc__cpu_job *job, int64_t pass, mc_status st, const char *fmt, ...) MC__PRINTF(4, 5);
static int fail(mc__cpu_job *job, int64_t pass, mc_status st, const char *fmt, ...)
{
    mc__submission *sub = job->sub;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(sub->message, sizeof sub->message, fmt, ap);
    va_end(ap);
    sub->status = st;
    if (pass >= 0 && (uint32_t)pass < sub->npass) {
        sub->pass_state[pass] = MC_PASS_FAULTED;
        if (sub->pass_time) {
            uint64_t now = mc__now_ns();
            if (!job->in_pass) sub->pass_time[2 * pass] = now; /* faulted as it began */
            sub->pass_time[2 * pass + 1] = now;
        }
    }
    return RUN_FAILED;
}

static int fail_lost(mc__cpu_device *dev, mc__cpu_job *job)
{
    pthread_mutex_lock(&dev->lock);
    fail(job, -1, MC_ERR_DEVICE_LOST, "device lost: %.200s", dev->lost_msg);
    pthread_mutex_unlock(&dev->lock);
    return RUN_FAILED;
}

static int fail_timeout(mc__cpu_device *dev, mc__cpu_job *job, uint32_t pass)
{
    /* Metal has no way to raise the limit (F145): the answer is shorter
     * command buffers. */
    return fail(job, pass, MC_ERR_TIMEOUT,
                "command buffer '%s' exceeded the execution-time limit of %llu ms in pass '%s'; split the work "
                "into shorter command buffers",
                label_of(job->sub), (unsigned long long)(dev->limit_ns / 1000000u), job->sub->passes[pass].label);
}

/* Under dev->lock. Counts a timeout; enough of them inside the window
 * revoke access for the cool-down. */
static void note_timeout_locked(mc__cpu_device *dev, uint64_t now)
{
    uint32_t n = dev->revoke_after;
    if (!n) return;
    dev->timeouts[dev->ntimeouts % n] = now;
    dev->ntimeouts++;
    if (dev->ntimeouts < n) return;
    uint64_t oldest = dev->timeouts[dev->ntimeouts % n]; /* the n-th most recent */
    if (dev->revoke_window_ns && now - oldest > dev->revoke_window_ns) return;
    dev->revoked_until_ns = now + dev->revoke_cooldown_ns;
    dev->ntimeouts = 0;
    dev->revocations++;
    mc__log(MC_LOG_WARN, "cpu.access_revoked",
            "%u execution-time-limit faults within %llu ms: device access revoked for %llu ms", n,
            (unsigned long long)(dev->revoke_window_ns / 1000000u),
            (unsigned long long)(dev->revoke_cooldown_ns / 1000000u));
}

/* Under dev->lock. Every parked submission must learn of the loss: nobody
 * may ever signal what it waits for. */
static void lose_device_locked(mc__cpu_device *dev, const char *why)
{
    if (atomic_load(&dev->lost)) return;
    snprintf(dev->lost_msg, sizeof dev->lost_msg, "%s", why);
    atomic_store(&dev->lost, true);
    mc__log(MC_LOG_ERROR, "cpu.device_lost", "device lost: %s", why);
    uint64_t n = 0;
    for (mc__cpu_event *ev = dev->events; ev; ev = ev->dev_next) {
        pthread_mutex_lock(&ev->lock);
        mc__cpu_job *list = ev->parked;
        ev->parked = NULL;
        pthread_mutex_unlock(&ev->lock);
        while (list) {
            mc__cpu_job *next = list->ready_next;
            push_ready_locked(dev, list);
            list = next;
            n++;
        }
    }
    wake_locked(dev, n);
}

/* Decides, when a submission reaches the head of its queue, whether it
 * may run at all. */
static mc_status admit(mc__cpu_device *dev, mc__cpu_job *job)
{
    mc__submission *sub = job->sub;
    mc_status st = MC_OK;
    pthread_mutex_lock(&dev->lock);
    uint64_t now = mc__now_ns();
    /* Device state before queue state: while access is revoked every
     * submission reports it, victims of an earlier failure included. */
    if (atomic_load(&dev->lost)) {
        st = MC_ERR_DEVICE_LOST;
        snprintf(sub->message, sizeof sub->message, "not executed: device lost earlier (%.200s)", dev->lost_msg);
    } else if (now < dev->revoked_until_ns) {
        st = MC_ERR_ACCESS_REVOKED;
        snprintf(sub->message, sizeof sub->message,
                 "not executed: device access revoked after repeated execution-time-limit faults; "
                 "retry in %llu ms",
                 (unsigned long long)((dev->revoked_until_ns - now + 999999u) / 1000000u));
    } else if (job->queue->error != MC_OK) {
        st = MC_ERR_PRIOR_ERROR;
        snprintf(sub->message, sizeof sub->message,
                 "not executed: an earlier command buffer on the queue failed with %s; create a new queue",
                 mc_status_name(job->queue->error));
    }
    pthread_mutex_unlock(&dev->lock);
    return st;
}

/* ---- commands ------------------------------------------------------------- */

static uint64_t job_deadline(const mc__cpu_device *dev, const mc__cpu_job *job)
{
    if (!dev->limit_ns) return UINT64_MAX;
    uint64_t left = dev->limit_ns > job->run_ns ? dev->limit_ns - job->run_ns : 0;
    return left > UINT64_MAX - job->seg_start_ns ? UINT64_MAX : job->seg_start_ns + left;
}

static int dispatch(mc__cpu_worker *w, mc__cpu_job *job, uint32_t pass, mc_size3 groups, mc_size3 threads,
                    uint64_t deadline)
{
    mc__cpu_device *dev = w->dev;
    const mc__cpu_pipeline *pl = job->pipeline;
    if (!pl)
        return fail(job, pass, MC_ERR_INVALID_RESOURCE, "dispatch without a pipeline in pass '%s'",
                    job->sub->passes[pass].label);
    uint64_t per_group = (uint64_t)threads.x * threads.y * threads.z;
    if (per_group == 0 || per_group > pl->max_threads)
        return fail(job, pass, MC_ERR_INVALID_RESOURCE,
                    "threadgroup of %ux%ux%u threads in pass '%s'; the pipeline allows 1 to %u", threads.x, threads.y,
                    threads.z, job->sub->passes[pass].label, pl->max_threads);
    if (!groups.x || !groups.y || !groups.z) return RUN_OK;
    uint64_t total = (uint64_t)groups.x * groups.y;
    if (total > UINT64_MAX / groups.z)
        return fail(job, pass, MC_ERR_INVALID_RESOURCE, "grid of %ux%ux%u threadgroups is too large", groups.x,
                    groups.y, groups.z);
    total *= groups.z;

    mc__cpu_dispatch *d = &w->dispatch;
    size_t off = 0;
    for (int i = 0; i < MC_CPU_MAX_TG_MEM; i++) {
        d->tg_offset[i] = off;
        d->tg_len[i] = job->tg_len[i];
        off += (job->tg_len[i] + 15) & ~(size_t)15; /* 16-byte aligned slots, as Metal requires */
        if (job->tg_len[i] > MC__CPU_TGMEM_SIZE || off > MC__CPU_TGMEM_SIZE)
            return fail(job, pass, MC_ERR_INVALID_RESOURCE,
                        "threadgroup memory slots in pass '%s' need more than the device's %u bytes",
                        job->sub->passes[pass].label, MC__CPU_TGMEM_SIZE);
    }
    d->fn = pl->fn;
    d->rows = pl->rows;
    d->constants = pl->constants;
    d->args = job->args;
    d->groups[0] = groups.x, d->groups[1] = groups.y, d->groups[2] = groups.z;
    d->threads[0] = threads.x, d->threads[1] = threads.y, d->threads[2] = threads.z;
    d->total = total;
    /* Grabbing several threadgroups at a time keeps the shared counter cool
     * for large grids of tiny groups; the deadline is still checked before
     * each one, or each run of them along x (rows). A kernel run row by
     * row takes up to a whole row of groups (at most 256): the longer a
     * run, the longer the rows the prefetcher follows (Gray-Scott 2048^2:
     * 0.81x of an OpenMP loop with 64, 0.87-0.97x with the row's 128). */
    uint64_t most = pl->rows ? MC__MIN(MC__MAX(64u, (uint64_t)groups.x), 256u) : 64u;
    d->chunk = MC__MAX(1u, MC__MIN(total / ((uint64_t)dev->nworkers * 8u), most));
    d->deadline_ns = deadline;
    atomic_store(&d->next_group, 0);
    atomic_store(&d->helpers, 0);
    atomic_store(&d->abort, false);

    /* A grid whose groups took so little last time that all of it fits in
     * MC__CPU_INLINE_NS runs here, unshared: offering it would cost about
     * what it saves (a lock, a wake-up, cache lines moving between cores)
     * and keep a second core busy. Every dispatch measures again, so a
     * pipeline whose work grows is shared from its next dispatch on. */
    mc__cpu_pipeline *mpl = (mc__cpu_pipeline *)pl; /* group_ns is the one field that changes */
    uint64_t group_ns = atomic_load_explicit(&mpl->group_ns, memory_order_relaxed), t0, t1, ran;
    if (total == 1 || dev->nworkers == 1 || (group_ns && group_ns <= MC__CPU_INLINE_NS / total)) {
        t0 = mc__now_ns();
        ran = run_groups(w, d); /* nothing to share: no wake-ups, no locks */
        t1 = mc__now_ns();
    } else {
        pthread_mutex_lock(&dev->lock);
        d->prev = NULL;
        d->next = dev->dispatches;
        if (d->next) d->next->prev = d;
        dev->dispatches = d;
        d->listed = true;
        atomic_fetch_add(&dev->work, 1);
        wake_locked(dev, MC__MIN(total - 1, (uint64_t)dev->nworkers - 1));
        pthread_mutex_unlock(&dev->lock);

        t0 = mc__now_ns();
        ran = run_groups(w, d);
        t1 = mc__now_ns();

        pthread_mutex_lock(&dev->lock);
        if (d->listed) unlink_dispatch_locked(dev, d);
        pthread_mutex_unlock(&dev->lock);
        wait_helpers(dev, d);
    }
    /* this worker's own time per group: what running all of it here costs */
    if (ran) atomic_store_explicit(&mpl->group_ns, MC__MAX((t1 - t0) / ran, 1u), memory_order_relaxed);
    if (atomic_load(&d->abort)) return fail_timeout(dev, job, pass);
    return RUN_OK;
}

static int bad_range(mc__cpu_job *job, uint32_t pass, const char *what, const mc__cpu_buffer *b, size_t offset,
                     size_t len)
{
    return fail(job, pass, MC_ERR_INVALID_RESOURCE, "%s: range [%zu, +%zu) outside a buffer of %zu bytes (pass '%s')",
                what, offset, len, b ? b->size : 0, job->sub->passes[pass].label);
}

static bool in_range(const mc__cpu_buffer *b, size_t offset, size_t len)
{
    return b && offset <= b->size && len <= b->size - offset;
}

/* Parks the job on ev unless the value is there. Everything the job
 * records happens before it is visible on the list: from then on a signal
 * on another thread may resume it at once. */
static int wait_event(mc__cpu_device *dev, mc__cpu_job *job, uint32_t c, mc__cpu_event *ev, uint64_t v)
{
    if (atomic_load_explicit(&ev->value, memory_order_acquire) >= v) return RUN_OK;
    pthread_mutex_lock(&ev->lock);
    if (atomic_load_explicit(&ev->value, memory_order_acquire) >= v) {
        pthread_mutex_unlock(&ev->lock);
        return RUN_OK;
    }
    if (atomic_load(&dev->lost)) {
        pthread_mutex_unlock(&ev->lock);
        return fail_lost(dev, job);
    }
    job->run_ns += mc__now_ns() - job->seg_start_ns;
    job->cmd = c;
    job->wait_value = v;
    job->ready_next = ev->parked;
    ev->parked = job;
    pthread_mutex_unlock(&ev->lock);
    return RUN_PARKED;
}

/* Where a command of pass p sits, for messages: "" or " (list 'x' command k)". */
typedef struct where {
    const mc__cpu_list *list; /* NULL: the pass's own command */
    uint32_t k;
    char text[96];
} where;

static const char *where_text(where *at)
{
    if (!at->list) return "";
    snprintf(at->text, sizeof at->text, " (list '%.48s' command %u)", at->list->label, at->k);
    return at->text;
}

/* Reads an indirect dispatch's grid now, at execution, as the GPU does
 * (F148); in validation mode counts over the limits fail the pass. */
static int dispatch_indirect(mc__cpu_worker *w, mc__cpu_job *job, uint32_t p, const mc__cmd *cmd, where *at,
                             uint64_t deadline)
{
    const mc__cpu_buffer *b = cmd->u.indirect.buffer;
    uint32_t g[3];
    if (!in_range(b, cmd->u.indirect.offset, sizeof g))
        return bad_range(job, p, "indirect dispatch", b, cmd->u.indirect.offset, sizeof g);
    memcpy(g, (const char *)b->data + cmd->u.indirect.offset, sizeof g);
    if (g[0] && g[1] && g[2] && (job->sub->flags & MC__SUBMIT_VALIDATION) &&
        (g[0] > MC_INDIRECT_MAX_GROUPS_X || g[1] > MC_INDIRECT_MAX_GROUPS_YZ || g[2] > MC_INDIRECT_MAX_GROUPS_YZ))
        return fail(job, p, MC_ERR_VALIDATION,
                    "indirect dispatch in pass '%s'%s: threadgroup counts (%u,%u,%u) exceed the limits (x <= %u, y "
                    "and z <= %u); it did not run",
                    job->sub->passes[p].label, where_text(at), g[0], g[1], g[2], MC_INDIRECT_MAX_GROUPS_X,
                    MC_INDIRECT_MAX_GROUPS_YZ);
    mc_size3 groups = {g[0], g[1], g[2]};
    return dispatch(w, job, p, groups, cmd->u.indirect.threads, deadline);
}

static int run_list(mc__cpu_worker *w, mc__cpu_job *job, uint32_t p, const mc__cmd *cmd, uint64_t deadline);

/* One command of pass p; bytes: the arena SET_BYTES offsets point into. */
static int run_cmd(mc__cpu_worker *w, mc__cpu_job *job, uint32_t p, uint32_t c, const mc__cmd *cmd,
                   const uint8_t *bytes, where *at, uint64_t deadline)
{
    mc__cpu_device *dev = w->dev;
    const char *label = job->sub->passes[p].label;
    switch ((mc__op)cmd->op) {
    case MC__OP_SET_PIPELINE: job->pipeline = cmd->u.pipeline; return RUN_OK;
    case MC__OP_SET_BUFFER: {
        const mc__cpu_buffer *b = cmd->u.buf.buffer;
        if (cmd->index >= MC_CPU_MAX_ARGS) break;
        if (b && cmd->u.buf.offset > b->size) return bad_range(job, p, "buffer binding", b, cmd->u.buf.offset, 0);
        /* From our own record, not u.buf.host: private buffers have no
         * host address for the engine, but they are host memory here. */
        job->args[cmd->index].ptr = b ? (char *)b->data + cmd->u.buf.offset : NULL;
        job->args[cmd->index].size = b ? b->size - cmd->u.buf.offset : 0;
        return RUN_OK;
    }
    case MC__OP_SET_BYTES:
        if (cmd->index >= MC_CPU_MAX_ARGS) break;
        job->args[cmd->index].ptr = (void *)(bytes + cmd->u.bytes.offset);
        job->args[cmd->index].size = cmd->u.bytes.len;
        return RUN_OK;
    case MC__OP_SET_TGMEM:
        if (cmd->index >= MC_CPU_MAX_TG_MEM) break;
        job->tg_len[cmd->index] = cmd->u.tgmem.len;
        return RUN_OK;
    case MC__OP_DISPATCH: return dispatch(w, job, p, cmd->u.dispatch.groups, cmd->u.dispatch.threads, deadline);
    case MC__OP_DISPATCH_INDIRECT: return dispatch_indirect(w, job, p, cmd, at, deadline);
    case MC__OP_BARRIER:
        /* Dispatches already run one after another: nothing overlaps. */
        return RUN_OK;
    case MC__OP_EXECUTE_LIST:
        if (at->list) return fail(job, p, MC_ERR_INTERNAL, "a command list inside a command list in pass '%s'", label);
        return run_list(w, job, p, cmd, deadline);
    case MC__OP_COPY: {
        const mc__cpu_buffer *src = cmd->u.copy.src, *dst = cmd->u.copy.dst;
        if (!in_range(src, cmd->u.copy.src_offset, cmd->u.copy.len))
            return bad_range(job, p, "copy source", src, cmd->u.copy.src_offset, cmd->u.copy.len);
        if (!in_range(dst, cmd->u.copy.dst_offset, cmd->u.copy.len))
            return bad_range(job, p, "copy destination", dst, cmd->u.copy.dst_offset, cmd->u.copy.len);
        if (cmd->u.copy.len)
            memmove((char *)dst->data + cmd->u.copy.dst_offset, (const char *)src->data + cmd->u.copy.src_offset,
                    cmd->u.copy.len);
        return RUN_OK;
    }
    case MC__OP_FILL: {
        const mc__cpu_buffer *b = cmd->u.fill.buffer;
        if (!in_range(b, cmd->u.fill.offset, cmd->u.fill.len))
            return bad_range(job, p, "fill", b, cmd->u.fill.offset, cmd->u.fill.len);
        if (cmd->u.fill.len) memset((char *)b->data + cmd->u.fill.offset, cmd->u.fill.value, cmd->u.fill.len);
        return RUN_OK;
    }
    case MC__OP_SIGNAL: {
        mc__cpu_job *released = mc__cpu_event_raise(cmd->u.event.event, cmd->u.event.value);
        if (released) mc__cpu_make_ready(dev, released);
        return RUN_OK;
    }
    case MC__OP_WAIT:
        if (at->list) break;
        return wait_event(dev, job, c, cmd->u.event.event, cmd->u.event.value);
    default: return fail(job, p, MC_ERR_INTERNAL, "unknown command %u in pass '%s'%s", cmd->op, label, where_text(at));
    }
    return fail(job, p, MC_ERR_INVALID_RESOURCE, "argument slot %u out of range in pass '%s'%s", cmd->index, label,
                where_text(at));
}

/* Executes the chosen range of a list: each command from empty bindings,
 * with the ones its group carries (hal.h, "command lists"). */
static int run_list(mc__cpu_worker *w, mc__cpu_job *job, uint32_t p, const mc__cmd *cmd, uint64_t deadline)
{
    const mc__cpu_list *l = cmd->u.exec.list;
    uint32_t first = cmd->u.exec.first, count = cmd->u.exec.count;
    if (cmd->u.exec.range_buffer) { /* chosen by earlier work: read it now, clamp it to the list */
        const mc__cpu_buffer *rb = cmd->u.exec.range_buffer;
        uint32_t range[2];
        if (!in_range(rb, cmd->u.exec.range_offset, sizeof range))
            return bad_range(job, p, "command list range", rb, cmd->u.exec.range_offset, sizeof range);
        memcpy(range, (const char *)rb->data + cmd->u.exec.range_offset, sizeof range);
        first = MC__MIN(range[0], l->ncommands);
        count = MC__MIN(range[1], l->ncommands - first);
    } else if (first > l->ncommands || count > l->ncommands - first) {
        return fail(job, p, MC_ERR_INTERNAL, "commands [%u, +%u) of list '%s' (%u commands) in pass '%s'", first, count,
                    l->label, l->ncommands, job->sub->passes[p].label);
    }
    for (uint32_t k = first; k < first + count; k++) {
        if (deadline != UINT64_MAX && mc__now_ns() > deadline) return fail_timeout(w->dev, job, p);
        where at = {l, k, ""};
        job->pipeline = NULL;
        memset(job->args, 0, sizeof job->args);
        memset(job->tg_len, 0, sizeof job->tg_len);
        uint32_t end = k + 1 < l->ncommands ? l->group[k + 1] : l->ncmd;
        for (uint32_t c = l->group[k]; c < end; c++) {
            int rc = run_cmd(w, job, p, c, &l->cmds[c], l->bytes, &at, deadline);
            if (rc != RUN_OK) return rc;
        }
    }
    return RUN_OK;
}

static int run_pass(mc__cpu_worker *w, mc__cpu_job *job, uint32_t p)
{
    const mc__submission *sub = job->sub;
    const mc__pass *pass = &sub->passes[p];
    const uint64_t deadline = job_deadline(w->dev, job);
    where at = {NULL, 0, ""};
    for (uint32_t c = job->cmd; c < pass->first + pass->count; c++) {
        if (deadline != UINT64_MAX && mc__now_ns() > deadline) return fail_timeout(w->dev, job, p);
        int rc = run_cmd(w, job, p, c, &sub->cmds[c], sub->bytes, &at, deadline);
        if (rc != RUN_OK) return rc;
    }
    return RUN_OK;
}

/* ---- command lists ------------------------------------------------------------ */

mc_status mc__cpu_cmdlist_create(void *vdev, const mc__list_desc *desc, void **out, uint32_t *caps)
{
    (void)vdev;
    mc__cpu_list *l = mc__calloc(1, sizeof *l);
    uint32_t *group = mc__malloc((size_t)(desc->ncommands ? desc->ncommands : 1) * sizeof *group);
    char *label = mc__strdup(desc->label);
    if (!l || !group || !label) {
        free(l);
        free(group);
        free(label);
        return mc__fail(MC_ERR_NO_MEMORY, "command list: out of host memory");
    }
    uint32_t k = 0, start = 0;
    for (uint32_t i = 0; i < desc->ncmd; i++) {
        uint32_t op = desc->cmds[i].op;
        if (op == MC__OP_EXECUTE_LIST || op == MC__OP_WAIT) {
            free(l);
            free(group);
            free(label);
            return mc__fail(MC_ERR_INVALID_ARGUMENT, "command list '%s': command %u cannot be in a list", desc->label,
                            op);
        }
        if ((op == MC__OP_DISPATCH || op == MC__OP_DISPATCH_INDIRECT) && k < desc->ncommands) {
            group[k++] = start;
            start = i + 1;
        }
    }
    /* The engine's arrays stay valid until cmdlist_destroy (hal.h). */
    l->cmds = desc->cmds;
    l->ncmd = desc->ncmd;
    l->bytes = desc->bytes;
    l->group = group;
    l->ncommands = k;
    l->label = label;
    *out = l;
    *caps = MC__LIST_GPU_RANGE;
    return MC_OK;
}

void mc__cpu_cmdlist_destroy(void *vdev, void *vl)
{
    (void)vdev;
    mc__cpu_list *l = vl;
    if (!l) return;
    free(l->group);
    free(l->label);
    free(l);
}

/* ---- submissions -------------------------------------------------------- */

/* Reports the outcome and retires the job. Returns the queue's next
 * submission when this worker should lead it directly (nothing else is
 * waiting for a worker), else NULL. */
static mc__cpu_job *finish(mc__cpu_worker *w, mc__cpu_job *job, bool executed)
{
    mc__cpu_device *dev = w->dev;
    mc__cpu_queue *q = job->queue;
    mc__submission *sub = job->sub;
    mc_status st = sub->status;
    if (st == MC_OK) sub->message[0] = '\0';
    sub->gpu_end_ns = mc__now_ns();
    if (!executed) sub->gpu_start_ns = sub->gpu_end_ns;
    if (st != MC_OK) {
        pthread_mutex_lock(&dev->lock);
        if (q->error == MC_OK) q->error = st;
        /* Only a submission that itself faulted changes the device's
         * state; the victims of that state do not. */
        if (executed) {
            if (st == MC_ERR_TIMEOUT) note_timeout_locked(dev, sub->gpu_end_ns);
            if (st == MC_ERR_ACCESS_REVOKED) dev->revoked_until_ns = sub->gpu_end_ns + dev->revoke_cooldown_ns;
            if (st == MC_ERR_DEVICE_LOST) lose_device_locked(dev, sub->message);
        }
        pthread_mutex_unlock(&dev->lock);
        mc__log(MC_LOG_DEBUG, "cpu.cmdbuf_failed", "'%s': %s: %s", label_of(sub), mc_status_name(st), sub->message);
    }
    uint64_t seq = job->seq;
    sub->complete(sub); /* the last touch of sub */
    atomic_store_explicit(&q->done_seq, seq, memory_order_release);

    mc__cpu_job *next;
    pthread_mutex_lock(&dev->lock);
    q->head = next = job->next;
    if (!next) {
        q->tail = NULL;
    } else if (dev->ready_head) {
        push_ready_locked(dev, next); /* others wait: keep the order fair */
        wake_locked(dev, 1);
        next = NULL;
    }
    if (q->waiters) pthread_cond_broadcast(&q->done_cv);
    pthread_mutex_unlock(&dev->lock);
    free(job);
    return next;
}

/* Runs job from where it stopped until it completes or parks; returns the
 * next job to lead, if any. */
static mc__cpu_job *run_job(mc__cpu_worker *w, mc__cpu_job *job)
{
    mc__cpu_device *dev = w->dev;
    mc__submission *sub = job->sub;
    if (!job->started) {
        job->started = true;
        mc_status st = admit(dev, job);
        if (st != MC_OK) {
            sub->status = st;
            return finish(w, job, false);
        }
        sub->gpu_start_ns = mc__now_ns();
        if (sub->scheduled) sub->scheduled(sub);
    }
    job->seg_start_ns = mc__now_ns();
    int rc = RUN_OK;
    sub->status = MC_OK;
    for (; job->pass < sub->npass; job->pass++) {
        uint32_t p = job->pass;
        if (!job->in_pass) {
            if (sub->inject != MC_OK && p == sub->inject_pass) {
                rc = fail(job, p, sub->inject, "injected fault: %s in pass '%s'", mc_status_name(sub->inject),
                          sub->passes[p].label);
                break;
            }
            if (atomic_load(&dev->lost)) {
                rc = fail_lost(dev, job);
                break;
            }
            if (sub->pass_time) sub->pass_time[2 * p] = mc__now_ns();
            /* Bindings belong to one pass, as to a Metal encoder. */
            job->pipeline = NULL;
            memset(job->args, 0, sizeof job->args);
            memset(job->tg_len, 0, sizeof job->tg_len);
            job->cmd = sub->passes[p].first;
            job->in_pass = true;
        }
        rc = run_pass(w, job, p);
        if (rc == RUN_PARKED) return NULL; /* job belongs to the event now */
        if (rc != RUN_OK) break;
        job->in_pass = false;
        sub->pass_state[p] = MC_PASS_COMPLETED;
        if (sub->pass_time) sub->pass_time[2 * p + 1] = mc__now_ns();
    }
    if (rc == RUN_OK && sub->inject != MC_OK)
        fail(job, -1, sub->inject, "injected fault: %s after the last pass", mc_status_name(sub->inject));
    return finish(w, job, true);
}

static void *worker_main(void *arg)
{
    mc__cpu_worker *w = arg;
    char name[16];
    snprintf(name, sizeof name, "mc-cpu-%u", w->index % 10000u);
    mc__thread_set_name(name); /* named from inside: macOS names only the calling thread */
    mc__cpu_job *job;
    mc__cpu_dispatch *d;
    while (find_work(w, &job, &d)) {
        if (d) help(w, d);
        while (job) job = run_job(w, job);
    }
    return NULL;
}

mc_status mc__cpu_pool_start(mc__cpu_device *dev)
{
    dev->workers = mc__calloc(dev->nworkers, sizeof *dev->workers);
    if (!dev->workers) return mc__fail(MC_ERR_NO_MEMORY, "cpu device: out of host memory");
    mc_status st = MC_OK;
    for (uint32_t i = 0; i < dev->nworkers && st == MC_OK; i++) {
        mc__cpu_worker *w = &dev->workers[i];
        w->dev = dev;
        w->index = i;
        w->tgmem = mc__cpu_alloc_aligned(MC__CPU_TGMEM_SIZE, &w->tgmem_raw);
        if (!w->tgmem) st = mc__fail(MC_ERR_NO_MEMORY, "cpu device: out of host memory");
    }
    for (uint32_t i = 0; i < dev->nworkers && st == MC_OK; i++) {
        mc__cpu_worker *w = &dev->workers[i];
        if (pthread_create(&w->thread, NULL, worker_main, w)) {
            st = mc__fail(MC_ERR_NO_MEMORY, "cpu device: cannot start worker %u of %u", i, dev->nworkers);
            break;
        }
        w->started = true;
    }
    if (st != MC_OK) mc__cpu_pool_stop(dev);
    return st;
}

void mc__cpu_pool_stop(mc__cpu_device *dev)
{
    if (!dev->workers) return;
    pthread_mutex_lock(&dev->lock);
    atomic_store(&dev->stopping, true);
    pthread_cond_broadcast(&dev->wake);
    pthread_mutex_unlock(&dev->lock);
    for (uint32_t i = 0; i < dev->nworkers; i++) {
        mc__cpu_worker *w = &dev->workers[i];
        if (w->started) pthread_join(w->thread, NULL);
        free(w->tgmem_raw);
    }
    free(dev->workers);
    dev->workers = NULL;
}

/* ---- queues ---------------------------------------------------------------- */

mc_status mc__cpu_queue_create(void *vdev, const char *label, void **out)
{
    (void)label;
    mc__cpu_queue *q = mc__calloc(1, sizeof *q);
    if (!q) return mc__fail(MC_ERR_NO_MEMORY, "queue: out of host memory");
    if (mc__cpu_cond_init(&q->done_cv) != MC_OK) {
        free(q);
        return mc__fail(MC_ERR_NO_MEMORY, "queue: cannot create its condition variable");
    }
    q->dev = vdev;
    atomic_init(&q->done_seq, 0);
    *out = q;
    return MC_OK;
}

void mc__cpu_queue_destroy(void *vdev, void *vq)
{
    mc__cpu_device *dev = vdev;
    mc__cpu_queue *q = vq;
    if (!q) return;
    /* The engine calls this once every complete() ran; a worker may still
     * be retiring the last job: wait for it to let go of the queue. */
    pthread_mutex_lock(&dev->lock);
    q->waiters++;
    while (q->head) pthread_cond_wait(&q->done_cv, &dev->lock);
    q->waiters--;
    pthread_mutex_unlock(&dev->lock);
    pthread_cond_destroy(&q->done_cv);
    free(q);
}

mc_status mc__cpu_submit(void *vdev, void *vq, mc__submission *sub)
{
    mc__cpu_device *dev = vdev;
    mc__cpu_queue *q = vq;
    if (!q || !sub || !sub->complete) return mc__fail(MC_ERR_INVALID_ARGUMENT, "submit: no queue or no complete()");
    if (sub->npass && (!sub->passes || !sub->pass_state))
        return mc__fail(MC_ERR_INVALID_ARGUMENT, "submit: passes without pass_state");
    for (uint32_t p = 0; p < sub->npass; p++) {
        const mc__pass *pass = &sub->passes[p];
        if (pass->first > sub->ncmd || pass->count > sub->ncmd - pass->first)
            return mc__fail(MC_ERR_INVALID_ARGUMENT, "submit: pass %u covers commands outside the list", p);
    }
    mc__cpu_job *job = mc__calloc(1, sizeof *job);
    if (!job) return mc__fail(MC_ERR_NO_MEMORY, "submit: out of host memory");
    job->queue = q;
    job->sub = sub;
    pthread_mutex_lock(&dev->lock);
    job->seq = ++q->next_seq;
    if (q->tail) {
        q->tail->next = job; /* runs when the one ahead completes */
    } else {
        q->head = job;
        push_ready_locked(dev, job);
        wake_locked(dev, 1);
    }
    q->tail = job;
    pthread_mutex_unlock(&dev->lock);
    return MC_OK;
}

mc_status mc__cpu_submission_wait(void *vdev, void *vq, mc__submission *sub, uint64_t timeout_ns)
{
    mc__cpu_device *dev = vdev;
    mc__cpu_queue *q = vq;
    uint64_t seq = 0;
    pthread_mutex_lock(&dev->lock);
    /* The newest match: a retired job may linger at the head for a moment
     * after complete(), and the engine may already have reused its memory
     * for the submission asked about. */
    for (mc__cpu_job *j = q->head; j; j = j->next)
        if (j->sub == sub) seq = j->seq;
    pthread_mutex_unlock(&dev->lock);
    if (!seq) return MC_OK; /* retired: complete() has returned */

    uint64_t deadline = mc__deadline(timeout_ns);
    uint64_t spin_until = MC__MIN(deadline, mc__now_ns() + dev->spin_ns);
    for (uint32_t i = 1;; i++) {
        if (atomic_load_explicit(&q->done_seq, memory_order_acquire) >= seq) return MC_OK;
        if ((i & 31) == 0 && mc__now_ns() >= spin_until) break;
        mc__spin_step(i);
    }
    mc_status st = MC_OK;
    pthread_mutex_lock(&dev->lock);
    q->waiters++;
    while (atomic_load_explicit(&q->done_seq, memory_order_acquire) < seq) {
        if (!mc__cpu_cond_wait_until(&q->done_cv, &dev->lock, deadline) &&
            atomic_load_explicit(&q->done_seq, memory_order_acquire) < seq) {
            st = MC_ERR_WAIT_TIMEOUT;
            break;
        }
    }
    q->waiters--;
    pthread_mutex_unlock(&dev->lock);
    return st == MC_OK ? MC_OK : mc__fail(st, "command buffer '%s' still running", label_of(sub));
}
