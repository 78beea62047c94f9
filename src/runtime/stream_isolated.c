/*
 * DOC: The isolated stream
 *
 * The back end of mc_stream (runtime/stream_ops.h) whose device side runs in a
 * worker process (docs/ISOLATION.md). The front end (stream.c) keeps the
 * book, the order and the delivery in the caller's process, as for a local
 * stream; the worker only runs items. What this file owns:
 *
 *  - the slots' memory: each slot's input and output live in one anonymous
 *    shared mapping made before the launcher is forked, so every worker
 *    sees them. A producer writes its item straight into shared memory; the
 *    worker copies it into its own stream's slot, runs it and copies the
 *    output back before it reports the result. While an item is in FLIGHT
 *    (sent to the current worker) the caller never touches its slot; once
 *    it has a result, or that worker has ended, the worker never does;
 *  - the worker (stream_worker): an ordinary local mc_stream with the
 *    caller's setup and MC_STREAM_NO_REOPEN, fed item by item with the
 *    caller's sequence numbers (so MC_STREAM_ARG_SEQUENCE binds the same
 *    value in every worker). A result with an error from a stream that died
 *    (its device lost) is not a result: the worker reports the error and
 *    exits;
 *  - the supervision, as the back end's step on the stream's thread:
 *    start workers, resend every item without a result to a new worker in
 *    sequence order (a worker that ends gives its items back: FLIGHT to
 *    QUEUED), take results, and replace a worker that reports a device
 *    error, dies, or sends nothing for the deadline while it has items.
 *    Restarts in a row without a result are bounded; past the bound the
 *    stream dies. On cancel the worker is ended at once, so the front end
 *    cancels what it had.
 *
 * Items go to the worker under the front end's submit_mu, which also
 * guards the channel (so producers never write to a descriptor that was
 * closed or reused).
 */
#include "runtime/stream_ops.h"
#include "runtime/isolate.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define SLOT_ALIGN 64u
#define HEADER_SIZE 4096u

typedef struct iso {
    mc__iso_policy pol;
    mc__iso_launcher launcher;

    /* shared: the header, then every slot's input, then every output */
    uint8_t *region;
    size_t region_size, in_stride, out_stride;
    mc__iso_shared *sh;
    uint32_t *sends; /* per slot: times its item was sent to a worker */

    /* Under submit_mu: the current worker's channel. */
    pid_t pid;
    int sock;
    bool worker_ready;

    /* Under mu. */
    uint32_t outstanding; /* items with the current worker */
    uint64_t busy_since_ns;
    mc_stream_stats wbase, wcur; /* finished workers' figures; the current one's */
    mc_isolate_stats ist;

    /* The stream's thread only (and open, before it starts). */
    int wake[2];
    uint64_t last_msg_ns;
    uint32_t in_a_row;
    mc__iso_clock clock;
    uint64_t result_ns; /* the last result */
} iso;

static iso *iso_of(const mc_stream *s)
{
    return s->be;
}

static uint8_t *slot_in(const mc_stream *s, uint32_t i)
{
    const iso *is = iso_of(s);
    return is->region + HEADER_SIZE + (size_t)i * is->in_stride;
}

static uint8_t *slot_out(const mc_stream *s, uint32_t i)
{
    const iso *is = iso_of(s);
    return is->region + HEADER_SIZE + (size_t)s->nslots * is->in_stride + (size_t)i * is->out_stride;
}

/* ---- the worker ---------------------------------------------------------------- */

typedef struct sworker {
    const mc_stream *s; /* this process's copy, as it was when the launcher was forked */
    int sock;
    pthread_mutex_t send_mu;
    mc_device *dev;
    mc_stream *ws;
    mc__iso_armed arm;
} sworker;

static void sw_send(sworker *w, mc__iso_msg *m)
{
    if (w->ws) mc_stream_get_stats(w->ws, &m->u.sstats);
    pthread_mutex_lock(&w->send_mu);
    m->t_ns = mc__now_ns();
    mc__iso_send(w->sock, m, -1);
    pthread_mutex_unlock(&w->send_mu);
}

static void sw_error(sworker *w, mc_status s, const char *text)
{
    mc__iso_msg m;
    mc__iso_msg_init(&m, MC__ISO_ERROR);
    m.status = s;
    snprintf(m.text, sizeof m.text, "%s", text);
    sw_send(w, &m);
}

/* On the worker stream's thread. */
static void sw_on_result(void *user, const mc_stream_result *r)
{
    sworker *w = user;
    uint32_t slot = (uint32_t)r->tag;
    mc_status dead;
    char why[256];
    if (r->status != MC_OK && mc__stream_dead(w->ws, &dead, why, sizeof why)) {
        /* Not the item's fault: this process lost its device. The
         * supervisor resends the item to a new worker. */
        sw_error(w, dead, why);
        mc__cache_save_stats(w->dev);
        _exit(0);
    }
    if (w->s->desc.result_size && r->output) memcpy(slot_out(w->s, slot), r->output, w->s->desc.result_size);
    mc__iso_msg m;
    mc__iso_msg_init(&m, MC__ISO_RESULT);
    m.slot = slot;
    m.a = r->sequence;
    m.status = r->status;
    m.attempts = r->attempts;
    snprintf(m.text, sizeof m.text, "%s", r->message ? r->message : "");
    sw_send(w, &m);
}

static void sw_cleanup(sworker *w)
{
    if (w->ws) {
        mc_stream_close(w->ws, true);
        mc_stream_release(w->ws);
    }
    w->ws = NULL;
    mc__cache_save_stats(w->dev); /* the process ends by _exit, maybe before the device is destroyed */
    mc_device_release(w->dev);
    w->dev = NULL;
}

static int stream_worker(void *ctx, int sock)
{
    const mc_stream *s = ctx;
    const iso *is = iso_of(s);
    sworker w;
    memset(&w, 0, sizeof w);
    w.s = s;
    w.sock = sock;
    pthread_mutex_init(&w.send_mu, NULL);
    char text[MC__ISO_TEXT_MAX];
    mc_status st = mc__iso_open_device(is->pol.device, is->pol.time_limit_ms, is->pol.threads, &w.dev);
    if (st != MC_OK) {
        snprintf(text, sizeof text, "opening the device: %s", mc_last_error());
        sw_error(&w, st, text);
        return 0;
    }
    mc_stream_desc d = s->desc;
    d.device = w.dev;
    d.isolate = NULL;
    d.flags |= MC_STREAM_NO_REOPEN;
    d.on_result = sw_on_result;
    d.result_user = &w;
    mc_stream *ws;
    if ((st = mc_stream_create(&d, &ws)) != MC_OK) {
        snprintf(text, sizeof text, "%s", mc_last_error());
        sw_error(&w, st, text);
        sw_cleanup(&w);
        return 0;
    }
    mc__iso_msg m;
    mc__iso_msg_init(&m, MC__ISO_READY);
    mc_device_get_info(w.dev, &m.u.info);
    pthread_mutex_lock(&w.send_mu);
    bool ok = mc__iso_send(sock, &m, -1);
    pthread_mutex_unlock(&w.send_mu);
    w.ws = ws; /* results may flow from here on */
    mc__iso_arm_faults(&w.arm, w.dev, is->sh, &is->pol.faults);
    while (ok && mc__iso_recv(sock, &m, NULL)) {
        if (m.type == MC__ISO_QUIT) break;
        if (m.type != MC__ISO_ITEM || m.slot >= s->nslots) continue;
        mc_stream_slot sl;
        if ((st = mc_stream_acquire(ws, MC_WAIT_FOREVER, &sl)) == MC_OK) {
            memcpy(sl.input, slot_in(s, m.slot), s->desc.item_size);
            mc__stream_set_sequence(ws, m.a);
            st = mc_stream_submit(ws, sl.index, m.slot);
        }
        if (st != MC_OK) {
            snprintf(text, sizeof text, "%s", mc_last_error());
            sw_error(&w, st, text);
            if (mc__iso_restartable(st)) {
                mc__cache_save_stats(w.dev);
                _exit(0);
            }
            break;
        }
    }
    sw_cleanup(&w);
    return 0;
}

/* ---- the supervision ----------------------------------------------------------------- */

static void add_wstats(mc_stream_stats *t, const mc_stream_stats *c)
{
    t->commits += c->commits;
    t->list_commits += c->list_commits;
    t->replays += c->replays;
    t->recoveries += c->recoveries;
    t->device_reopens += c->device_reopens;
    if (c->last_failure != MC_OK) t->last_failure = c->last_failure;
}

/* Marks item i sent to the current worker. Under mu. */
static void mark_sent(mc_stream *s, uint32_t i, uint64_t now)
{
    iso *is = iso_of(s);
    if (is->sends[i]++) s->st.replays++;
    s->slots[i].state = MC__SLOT_FLIGHT;
    if (!is->outstanding++) is->busy_since_ns = now;
    if (is->outstanding > s->st.max_in_flight) s->st.max_in_flight = is->outstanding;
}

static bool send_item(mc_stream *s, uint32_t i)
{
    mc__iso_msg m;
    mc__iso_msg_init(&m, MC__ISO_ITEM);
    m.slot = i;
    m.a = s->slots[i].seq;
    m.b = s->slots[i].tag;
    return mc__iso_send(iso_of(s)->sock, &m, -1);
}

/* Ends the current worker; what it had goes back to QUEUED. The channel is
 * closed under submit_mu: producers never write to a descriptor that was
 * closed or reused. Without mu. */
static void end_worker(mc_stream *s, bool kill_now, double grace_ms, int *wstatus)
{
    iso *is = iso_of(s);
    if (wstatus) *wstatus = 0;
    pthread_mutex_lock(&s->submit_mu);
    pid_t pid = is->pid;
    is->worker_ready = false;
    pthread_mutex_unlock(&s->submit_mu);
    if (pid > 0) mc__iso_launcher_reap(&is->launcher, pid, kill_now, grace_ms, wstatus);
    pthread_mutex_lock(&s->submit_mu);
    if (is->sock >= 0) close(is->sock);
    is->sock = -1;
    is->pid = 0;
    pthread_mutex_unlock(&s->submit_mu);
    pthread_mutex_lock(&s->mu);
    for (uint32_t k = 0; k < s->order.count; k++) {
        mc__slot *sl = &s->slots[mc__ring_at(&s->order, k)];
        if (sl->state == MC__SLOT_FLIGHT) sl->state = MC__SLOT_QUEUED;
    }
    add_wstats(&is->wbase, &is->wcur);
    memset(&is->wcur, 0, sizeof is->wcur);
    is->outstanding = 0;
    is->ist.worker_pid = 0;
    pthread_mutex_unlock(&s->mu);
}

static void end_worker_cb(void *ctx, bool kill_now, double grace_ms, int *wstatus)
{
    end_worker(ctx, kill_now, grace_ms, wstatus);
}

/* Woken while a worker starts: only closing or cancel ends that wait. */
static bool quitting(void *ctx)
{
    mc_stream *s = ctx;
    pthread_mutex_lock(&s->mu);
    bool stop = s->quit || s->cancel;
    pthread_mutex_unlock(&s->mu);
    return stop;
}

/* Dies with what ended the worker (already ended). Without mu. */
static void die_after(mc_stream *s, mc_status st, const char *what, const char *text)
{
    char why[MC__ISO_TEXT_MAX + 64];
    snprintf(why, sizeof why, "%s: %s", what, mc__iso_unprefixed(text, "stream", s->label));
    pthread_mutex_lock(&s->mu);
    mc__stream_die_locked(s, st, why);
    pthread_mutex_unlock(&s->mu);
}

/* Starts a worker, waits until it is ready, and hands it every item without
 * a result, in order. Without mu. */
static mc_status start_worker(mc_stream *s, mc__iso_cause *cause, char *text, size_t cap)
{
    iso *is = iso_of(s);
    *cause = MC__ISO_CAUSE_ERROR;
    text[0] = '\0';
    uint64_t t0 = mc__now_ns();
    pid_t pid;
    int sock;
    mc_status st = mc__iso_launcher_spawn(&is->launcher, &pid, &sock);
    if (st != MC_OK) {
        snprintf(text, cap, "%s", mc_last_error());
        return st;
    }
    pthread_mutex_lock(&s->submit_mu);
    is->pid = pid;
    is->sock = sock;
    pthread_mutex_unlock(&s->submit_mu);
    pthread_mutex_lock(&s->mu);
    is->ist.workers++;
    is->ist.worker_pid = pid;
    pthread_mutex_unlock(&s->mu);
    mc__iso_waiter w = {.wake_fd = is->wake[0], .stop = quitting, .end_worker = end_worker_cb, .ctx = s};
    mc__iso_msg m;
    int ws = 0;
    st = mc__iso_await_ready(&w, sock, t0, is->pol.start_timeout_ns, &m, cause, &ws, text, cap);
    if (*cause == MC__ISO_CAUSE_DIED && WIFSIGNALED(ws)) {
        pthread_mutex_lock(&s->mu);
        is->ist.last_signal = WTERMSIG(ws);
        pthread_mutex_unlock(&s->mu);
    }
    if (st != MC_OK) return st;
    uint64_t ready_ns = is->clock.ready_ns = is->last_msg_ns = mc__now_ns();
    /* Everything without a result goes to the new worker, in order. */
    pthread_mutex_lock(&s->submit_mu);
    pthread_mutex_lock(&s->mu);
    if (is->ist.workers == 1) is->ist.start_ms = (double)(ready_ns - t0) / 1e6;
    is->ist.device = m.u.info;
    is->worker_ready = true;
    uint32_t todo[MC_STREAM_MAX_SLOTS], n = 0;
    for (uint32_t k = 0; k < s->order.count; k++) {
        uint32_t i = mc__ring_at(&s->order, k);
        if (s->slots[i].state != MC__SLOT_QUEUED) continue;
        mark_sent(s, i, ready_ns);
        todo[n++] = i;
    }
    pthread_mutex_unlock(&s->mu);
    for (uint32_t k = 0; k < n; k++)
        if (!send_item(s, todo[k])) break; /* it died: seen on the channel */
    pthread_mutex_unlock(&s->submit_mu);
    return MC_OK;
}

/* Replaces the worker after a fault, or gives up. Without mu. */
static void restart(mc_stream *s, mc__iso_cause cause, mc_status status, const char *text, uint64_t fault_ns)
{
    iso *is = iso_of(s);
    int ws = 0;
    end_worker(s, true, 0, &ws);
    uint64_t reaped = mc__now_ns();
    char what[MC__ISO_TEXT_MAX + 64];
    pthread_mutex_lock(&s->mu);
    status = mc__iso_note_cause(&is->ist, cause, status, ws, is->pol.deadline_ns, " while it had items",
                                mc__iso_unprefixed(text, "stream", s->label), what, sizeof what);
    s->st.last_failure = status;
    is->in_a_row++;
    if (is->in_a_row > is->pol.max_restarts) {
        char why[MC__ISO_TEXT_MAX + 128];
        snprintf(why, sizeof why, "%u worker restarts in a row without a result; the last: %s", is->in_a_row - 1, what);
        mc__stream_die_locked(s, status, why);
        pthread_mutex_unlock(&s->mu);
        return;
    }
    is->ist.restarts++;
    pthread_mutex_unlock(&s->mu);
    mc__log(MC_LOG_WARN, "isolate.restart", "stream '%s': %s; starting worker %u", s->label, what, is->ist.workers + 1);
    mc__iso_clock_fault(&is->clock, is->result_ns, fault_ns, reaped);
}

static void take_result(mc_stream *s, const mc__iso_msg *m, uint64_t now)
{
    iso *is = iso_of(s);
    pthread_mutex_lock(&s->mu);
    is->wcur = m->u.sstats;
    mc__slot *sl = m->slot < s->nslots ? &s->slots[m->slot] : NULL;
    /* FLIGHT: sent to this worker (one that ended gave its items back) */
    if (sl && sl->state == MC__SLOT_FLIGHT && sl->seq == m->a) {
        sl->state = MC__SLOT_FINISHED;
        sl->attempts += m->attempts;
        mc__stream_set_message(sl, (mc_status)m->status, m->text);
        if (is->outstanding) is->outstanding--;
        is->busy_since_ns = now;
        is->in_a_row = 0;
        mc__iso_clock_progress(&is->clock, &is->ist, now);
        is->result_ns = now;
    }
    pthread_mutex_unlock(&s->mu);
}

/* No worker: start one (even with nothing to run, so the next item finds
 * it ready). */
static void step_start(mc_stream *s)
{
    mc__iso_cause cause;
    char text[MC__ISO_TEXT_MAX];
    uint64_t t = mc__now_ns();
    mc_status st = start_worker(s, &cause, text, sizeof text);
    if (st == MC_OK || st == MC_ERR_CANCELLED) return;
    if (cause == MC__ISO_CAUSE_ERROR && !mc__iso_restartable(st)) die_after(s, st, "a new worker failed", text);
    else restart(s, cause, st, text, t);
}

/* A worker runs: wait for its next message, at least every deadline/4 to
 * look for a hang. */
static void step_listen(mc_stream *s)
{
    iso *is = iso_of(s);
    mc__iso_msg m;
    /* Any wake-up ends the wait: the front end looks at what changed. */
    mc__iso_waiter w = {.wake_fd = is->wake[0]};
    int e = mc__iso_wait(&w, is->pid > 0 ? is->sock : -1, &m, is->pol.deadline_ns / 4);
    uint64_t now = mc__now_ns();
    if (e == 1) {
        is->last_msg_ns = now;
        if (m.type == MC__ISO_RESULT) {
            take_result(s, &m, now);
        } else if (m.type == MC__ISO_ERROR) {
            mc_status st = (mc_status)m.status;
            if (mc__iso_restartable(st)) {
                restart(s, MC__ISO_CAUSE_ERROR, st, m.text, m.t_ns);
            } else {
                end_worker(s, false, (double)is->pol.deadline_ns / 1e6, NULL);
                die_after(s, st, "the worker", m.text);
            }
        }
    } else if (e < 0 && is->pid > 0) {
        restart(s, MC__ISO_CAUSE_DIED, MC_OK, "", now);
    } else if (is->pid > 0) {
        pthread_mutex_lock(&s->mu);
        uint64_t since = MC__MAX(is->last_msg_ns, is->busy_since_ns);
        bool hung = is->outstanding && now > since && now - since >= is->pol.deadline_ns;
        pthread_mutex_unlock(&s->mu);
        if (hung) restart(s, MC__ISO_CAUSE_HUNG, MC_OK, "", now);
    }
}

static void iso_step(mc_stream *s)
{
    iso *is = iso_of(s);
    bool cancel = s->cancel, dead = s->dead;
    pthread_mutex_unlock(&s->mu);
    /* Nothing more goes to the device, and nothing the worker has may touch
     * a slot once it is given back: end it first; the front end cancels
     * what it had. */
    if (cancel && is->pid > 0) end_worker(s, true, 0, NULL);
    else if (is->pid <= 0 && !cancel && !dead) step_start(s);
    else step_listen(s);
    pthread_mutex_lock(&s->mu);
}

/* ---- the operations ---------------------------------------------------------------- */

static mc_status iso_check(const mc_stream_desc *desc, mc_device_info *info)
{
    (void)info; /* the device is in the worker */
    if (desc->device)
        return mc__fail(
            MC_ERR_INVALID_ARGUMENT,
            "mc_stream_create: an isolated stream opens its device in its worker: desc->device must be NULL "
            "(name it in isolate->device)");
    return MC_OK;
}

static mc_status iso_open(mc_stream *s, const mc_stream_desc *desc)
{
    mc_status st = mc__iso_fork_allowed("mc_stream_create");
    if (st != MC_OK) return st;
    iso *is = mc__calloc(1, sizeof *is);
    if (!is) return mc__fail(MC_ERR_NO_MEMORY, "mc_stream_create: out of host memory");
    s->be = is;
    is->sock = is->wake[0] = is->wake[1] = -1;
    is->launcher.sock = -1;
    is->sends = mc__calloc(s->nslots, sizeof *is->sends);
    if (!is->sends) return mc__fail(MC_ERR_NO_MEMORY, "mc_stream_create: out of host memory");
    if ((st = mc__iso_policy_init(&is->pol, desc->isolate, "mc_stream_create")) != MC_OK) return st;
    is->in_stride = (s->desc.item_size + SLOT_ALIGN - 1) / SLOT_ALIGN * SLOT_ALIGN;
    is->out_stride = (s->desc.result_size + SLOT_ALIGN - 1) / SLOT_ALIGN * SLOT_ALIGN;
    is->region_size = HEADER_SIZE + (size_t)s->nslots * (is->in_stride + is->out_stride);
    is->region = mc__shm_map_anon(is->region_size);
    if (!is->region)
        return mc__fail(MC_ERR_NO_MEMORY, "mc_stream_create: no shared memory for the slots (%zu bytes): %s",
                        is->region_size, strerror(errno));
    is->sh = (mc__iso_shared *)is->region;
    is->sh->magic = MC__ISO_MAGIC;
    for (uint32_t i = 0; i < s->nslots; i++) {
        s->slots[i].in_host = slot_in(s, i);
        s->slots[i].out_host = s->desc.result_size ? slot_out(s, i) : NULL;
    }
    /* The launcher first: it inherits the slots, and nothing else of ours. */
    if ((st = mc__iso_launcher_start(&is->launcher, stream_worker, s)) != MC_OK) return st;
    if ((st = mc__iso_wake_open(is->wake, "mc_stream_create")) != MC_OK) return st;
    /* The first worker now: setup's errors come back from create. */
    mc__iso_cause cause;
    char text[MC__ISO_TEXT_MAX];
    if ((st = start_worker(s, &cause, text, sizeof text)) != MC_OK)
        return mc__fail(st, "stream '%s': %s", s->label, mc__iso_unprefixed(text, "stream", s->label));
    return MC_OK;
}

static void iso_submit(mc_stream *s, uint32_t i)
{
    iso *is = iso_of(s);
    bool now = is->worker_ready; /* else the next worker gets it when it is ready */
    pthread_mutex_lock(&s->mu);
    is->sends[i] = 0;
    if (now) mark_sent(s, i, mc__now_ns());
    pthread_mutex_unlock(&s->mu);
    if (now) send_item(s, i); /* a worker gone is seen on the channel, and the item resent */
}

static void iso_wake(mc_stream *s)
{
    mc__iso_wake_signal(iso_of(s)->wake);
}

static void iso_stats(const mc_stream *s, mc_stream_stats *out)
{
    const iso *is = iso_of(s);
    mc_stream_stats w = is->wbase;
    add_wstats(&w, &is->wcur);
    out->commits = w.commits;
    out->list_commits = w.list_commits;
    out->replays += w.replays;
    out->recoveries = w.recoveries;
    out->device_reopens = w.device_reopens;
    if (out->last_failure == MC_OK) out->last_failure = w.last_failure;
    out->worker_restarts = is->ist.restarts;
}

static mc_device *iso_device(const mc_stream *s)
{
    (void)s; /* in the worker process */
    return NULL;
}

static void iso_destroy(mc_stream *s)
{
    iso *is = iso_of(s);
    if (!is) return;
    if (is->pid > 0) {
        /* Every item was delivered: the worker finishes up and exits. */
        mc__iso_msg m;
        mc__iso_msg_init(&m, MC__ISO_QUIT);
        pthread_mutex_lock(&s->submit_mu);
        mc__iso_send(is->sock, &m, -1);
        pthread_mutex_unlock(&s->submit_mu);
        end_worker(s, false, (double)is->pol.deadline_ns / 1e6, NULL);
    }
    mc__iso_launcher_stop(&is->launcher);
    mc__shm_unmap(is->region, is->region_size);
    mc__iso_wake_close(is->wake);
    mc__iso_policy_free(&is->pol);
    free(is->sends);
    free(is);
    s->be = NULL;
}

const mc__stream_ops mc__stream_isolated_ops = {
    .name = "isolated",
    .check = iso_check,
    .open = iso_open,
    .submit = iso_submit,
    .step = iso_step,
    .wake = iso_wake,
    .stats = iso_stats,
    .device = iso_device,
    .destroy = iso_destroy,
};

mc_status mc_stream_get_isolate_stats(const mc_stream *s, mc_isolate_stats *out)
{
    iso *is = mc__stream_backend(s, &mc__stream_isolated_ops);
    if (!is) return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_stream_get_isolate_stats: s is not an isolated stream");
    if (!out) return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_stream_get_isolate_stats: out is NULL");
    mc_stream *m = (mc_stream *)s;
    pthread_mutex_lock(&m->mu);
    *out = is->ist;
    pthread_mutex_unlock(&m->mu);
    return MC_OK;
}
