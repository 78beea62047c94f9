/*
 * DOC: The isolated stream
 *
 * An mc_stream whose device side runs in a worker process
 * (docs/ISOLATION.md). The caller's process keeps the slots, the order and
 * the delivery, exactly once and in sequence order as an ordinary stream
 * does; the worker only runs items. What this file owns:
 *
 *  - the slots: each slot's input and output live in one anonymous shared
 *    mapping made before the launcher is forked, so every worker sees
 *    them. A producer writes its item straight into shared memory; the
 *    worker copies it into its own stream's slot, runs it and copies the
 *    output back before it reports the result. Between sending an item and
 *    its result (or the end of that worker) the caller never touches the
 *    slot; after that the worker never does;
 *  - the worker (stream_worker): an ordinary mc_stream with the caller's
 *    setup and MC_STREAM_NO_REOPEN, fed ITEM by ITEM with the caller's
 *    sequence numbers (so MC_STREAM_ARG_SEQUENCE binds the same value in
 *    every worker). A result with an error from a stream that died (its
 *    device lost) is not a result: the worker reports the error and exits;
 *  - the supervisor thread (the stream's thread in the caller's process):
 *    starts workers, resends every item without a result to a new worker in
 *    sequence order, delivers results (the callback runs here), and
 *    replaces a worker that reports a device error, dies, or sends nothing
 *    for the deadline while it has items. Restarts in a row without a
 *    result are bounded; past the bound the stream dies: every item not
 *    finished is delivered with the error.
 *
 * Locks: send_mu (the worker's channel and the sequence numbers: items go
 * out in sequence order) is taken before mu (slots, rings, counters).
 */
#include "runtime/isolate.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define DEFAULT_SLOTS 3u
#define SLOT_ALIGN 64u
#define HEADER_SIZE 4096u

typedef enum slot_state {
    SLOT_FREE = 0,
    SLOT_ACQUIRED,
    SLOT_QUEUED,   /* submitted; with sent_gen == gen, in the current worker's hands */
    SLOT_FINISHED, /* its result is in; waiting for its turn */
    SLOT_DELIVERING,
    SLOT_READY,
    SLOT_HELD
} slot_state;

typedef struct islot {
    slot_state state;
    uint64_t seq, tag;
    uint64_t sent_gen; /* the worker it was last sent to; 0: never sent */
    uint32_t attempts;
    mc_status status;
    char message[256];
} islot;

typedef struct ring {
    uint32_t *v;
    uint32_t head, count, cap;
} ring;

typedef struct iso_stream {
    uint32_t tag;
    char *label;
    mc_stream_desc desc; /* the caller's, defaults resolved, label owned */
    mc__iso_policy pol;
    mc__iso_launcher launcher;

    /* shared: the header, then every slot's input, then every output */
    uint8_t *region;
    size_t region_size, in_stride, out_stride;
    mc__iso_shared *sh;

    uint32_t nslots;
    islot *slots;
    ring free_slots, order, ready;

    pthread_mutex_t send_mu; /* before mu */
    pid_t pid;
    int sock;
    uint64_t gen; /* workers started */
    bool worker_ready;
    uint64_t next_seq;

    pthread_mutex_t mu;
    pthread_cond_t free_cv, ready_cv, idle_cv;
    uint32_t outstanding; /* items with the current worker */
    uint64_t busy_since_ns;
    bool closed, cancel, quit, dead, delivering;
    mc_status dead_status;
    char dead_message[256];
    mc_stream_stats st;
    mc_stream_stats wbase, wcur; /* finished workers' figures; the current one's */
    mc_isolate_stats ist;

    /* the supervisor thread only */
    pthread_t thread;
    bool thread_started;
    int wake[2];
    uint64_t last_msg_ns;
    uint32_t in_a_row;
    mc__iso_timing timing;
    bool measuring;
    uint64_t fault_ns, reaped_ns, ready_ns;
    uint64_t result_ns, stall_ns; /* the last result; that time at the last fault */
} iso_stream;

static iso_stream *as_iso(const mc_stream *s)
{
    return (iso_stream *)(uintptr_t)s;
}

static uint8_t *slot_in(const iso_stream *is, uint32_t i)
{
    return is->region + HEADER_SIZE + (size_t)i * is->in_stride;
}

static uint8_t *slot_out(const iso_stream *is, uint32_t i)
{
    return is->region + HEADER_SIZE + (size_t)is->nslots * is->in_stride + (size_t)i * is->out_stride;
}

static void ring_push(ring *r, uint32_t x)
{
    r->v[(r->head + r->count) % r->cap] = x;
    r->count++;
}

static uint32_t ring_pop(ring *r)
{
    uint32_t x = r->v[r->head];
    r->head = (r->head + 1) % r->cap;
    r->count--;
    return x;
}

static uint32_t ring_at(const ring *r, uint32_t i)
{
    return r->v[(r->head + i) % r->cap];
}

static void wake(iso_stream *is)
{
    if (is->wake[1] >= 0) {
        ssize_t n = write(is->wake[1], "w", 1);
        (void)n;
    }
}

static bool on_thread(const iso_stream *is)
{
    return is->thread_started && pthread_equal(is->thread, pthread_self());
}

/* ---- the worker ---------------------------------------------------------------- */

typedef struct sworker {
    iso_stream *is; /* this process's copy, as it was when the launcher was forked */
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
    const iso_stream *is = w->is;
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
    if (is->desc.result_size && r->output) memcpy(slot_out(is, slot), r->output, is->desc.result_size);
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
    iso_stream *is = ctx;
    sworker w;
    memset(&w, 0, sizeof w);
    w.is = is;
    w.sock = sock;
    pthread_mutex_init(&w.send_mu, NULL);
    char text[MC__ISO_TEXT_MAX];
    mc_status s = mc__iso_open_device(is->pol.device, is->pol.time_limit_ms, is->pol.threads, &w.dev);
    if (s != MC_OK) {
        snprintf(text, sizeof text, "opening the device: %s", mc_last_error());
        sw_error(&w, s, text);
        return 0;
    }
    mc_stream_desc d = is->desc;
    d.device = w.dev;
    d.isolate = NULL;
    d.flags |= MC_STREAM_NO_REOPEN;
    d.on_result = sw_on_result;
    d.result_user = &w;
    mc_stream *ws;
    if ((s = mc_stream_create(&d, &ws)) != MC_OK) {
        snprintf(text, sizeof text, "%s", mc_last_error());
        sw_error(&w, s, text);
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
        if (m.type != MC__ISO_ITEM || m.slot >= is->nslots) continue;
        mc_stream_slot sl;
        if ((s = mc_stream_acquire(ws, MC_WAIT_FOREVER, &sl)) == MC_OK) {
            memcpy(sl.input, slot_in(is, m.slot), is->desc.item_size);
            mc__stream_set_sequence(ws, m.a);
            s = mc_stream_submit(ws, sl.index, m.slot);
        }
        if (s != MC_OK) {
            snprintf(text, sizeof text, "%s", mc_last_error());
            sw_error(&w, s, text);
            if (mc__iso_restartable(s)) {
                mc__cache_save_stats(w.dev);
                _exit(0);
            }
            break;
        }
    }
    sw_cleanup(&w);
    return 0;
}

/* ---- delivery (under mu) --------------------------------------------------------- */

static void free_slot(iso_stream *is, islot *sl)
{
    sl->state = SLOT_FREE;
    ring_push(&is->free_slots, (uint32_t)(sl - is->slots));
    pthread_cond_signal(&is->free_cv);
}

static bool idle(const iso_stream *is)
{
    return is->order.count == 0 && !is->delivering;
}

static void set_message(islot *sl, mc_status st, const char *msg)
{
    sl->status = st;
    snprintf(sl->message, sizeof sl->message, "%.255s", msg && *msg ? msg : st == MC_OK ? "" : mc_status_text(st));
}

static void fill_result(const iso_stream *is, const islot *sl, mc_stream_result *r)
{
    memset(r, 0, sizeof *r);
    uint32_t i = (uint32_t)(sl - is->slots);
    r->sequence = sl->seq;
    r->tag = sl->tag;
    r->status = sl->status;
    r->message = sl->message;
    r->output = is->desc.result_size ? slot_out(is, i) : NULL;
    r->output_size = is->desc.result_size;
    r->input = slot_in(is, i);
    r->attempts = sl->attempts;
    r->slot = i;
}

/* Hands over every finished item at the head of the order. */
static void deliver(iso_stream *is)
{
    while (is->order.count && is->slots[ring_at(&is->order, 0)].state == SLOT_FINISHED && !is->delivering) {
        uint32_t idx = ring_pop(&is->order);
        islot *sl = &is->slots[idx];
        is->st.delivered++;
        if (sl->status == MC_ERR_CANCELLED) is->st.cancelled++;
        else if (sl->status != MC_OK) is->st.failed++;
        if (is->desc.on_result) {
            sl->state = SLOT_DELIVERING;
            is->delivering = true;
            mc_stream_result r;
            fill_result(is, sl, &r);
            pthread_mutex_unlock(&is->mu);
            is->desc.on_result(is->desc.result_user, &r);
            pthread_mutex_lock(&is->mu);
            is->delivering = false;
            free_slot(is, sl);
        } else {
            sl->state = SLOT_READY;
            ring_push(&is->ready, idx);
            pthread_cond_signal(&is->ready_cv);
        }
    }
    if (idle(is)) {
        pthread_cond_broadcast(&is->idle_cv);
        if (is->closed) pthread_cond_broadcast(&is->ready_cv);
    }
}

/* Every item not finished ends with st (under mu). */
static void finish_all(iso_stream *is, mc_status st, const char *why)
{
    for (uint32_t i = 0; i < is->order.count; i++) {
        islot *sl = &is->slots[ring_at(&is->order, i)];
        if (sl->state == SLOT_QUEUED) {
            sl->state = SLOT_FINISHED;
            set_message(sl, st, why);
        }
    }
    is->outstanding = 0;
}

/* The stream gives up (under mu). */
static void die(iso_stream *is, mc_status st, const char *why)
{
    is->dead = true;
    is->dead_status = st;
    snprintf(is->dead_message, sizeof is->dead_message, "stream '%s' gave up: %s", is->label, why);
    finish_all(is, st, is->dead_message);
    pthread_cond_broadcast(&is->free_cv);
    pthread_cond_broadcast(&is->ready_cv);
    mc__log(MC_LOG_ERROR, "isolate.stream_dead", "%s", is->dead_message);
}

/* ---- the supervisor thread --------------------------------------------------------- */

static void add_wstats(mc_stream_stats *t, const mc_stream_stats *c)
{
    t->commits += c->commits;
    t->list_commits += c->list_commits;
    t->replays += c->replays;
    t->recoveries += c->recoveries;
    t->device_reopens += c->device_reopens;
    if (c->last_failure != MC_OK) t->last_failure = c->last_failure;
}

/* Ends the current worker (the channel is closed under send_mu: producers
 * never write to a descriptor that was closed or reused). */
static void end_worker(iso_stream *is, bool kill_now, double grace_ms, int *wstatus)
{
    if (wstatus) *wstatus = 0;
    pthread_mutex_lock(&is->send_mu);
    pid_t pid = is->pid;
    is->worker_ready = false;
    pthread_mutex_unlock(&is->send_mu);
    if (pid > 0) mc__iso_launcher_reap(&is->launcher, pid, kill_now, grace_ms, wstatus);
    pthread_mutex_lock(&is->send_mu);
    if (is->sock >= 0) close(is->sock);
    is->sock = -1;
    is->pid = 0;
    pthread_mutex_unlock(&is->send_mu);
    pthread_mutex_lock(&is->mu);
    add_wstats(&is->wbase, &is->wcur);
    memset(&is->wcur, 0, sizeof is->wcur);
    is->outstanding = 0;
    is->ist.worker_pid = 0;
    pthread_mutex_unlock(&is->mu);
}

/* Waits for the worker's channel or a wake-up: 1 a message, 0 the time ran
 * out, -1 the channel ended, 2 woken. */
static int wait_event(iso_stream *is, int sock, mc__iso_msg *m, uint64_t timeout_ns)
{
    uint64_t deadline = mc__deadline(timeout_ns);
    for (;;) {
        /* A negative descriptor is ignored by poll(): no worker, only the wake-up. */
        struct pollfd pf[2] = {{sock, POLLIN, 0}, {is->wake[0], POLLIN, 0}};
        uint64_t now = mc__now_ns();
        int ms = now >= deadline ? 0 : deadline == UINT64_MAX ? -1 : (int)MC__MIN((deadline - now + 999999) / 1000000, 3600000ull);
        int n = poll(pf, 2, ms);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return -1;
        if (sock >= 0 && pf[0].revents) return mc__iso_recv(sock, m, NULL) ? 1 : -1;
        if (pf[1].revents) {
            char buf[64];
            while (read(is->wake[0], buf, sizeof buf) > 0) {
            }
            return 2;
        }
        if (n == 0 && mc__now_ns() >= deadline) return 0;
    }
}

/* Starts a worker, waits until it is ready, and hands it every item without
 * a result, in order. */
static mc_status start_worker(iso_stream *is, mc__iso_cause *cause, char *text, size_t cap)
{
    *cause = MC__ISO_CAUSE_ERROR;
    text[0] = '\0';
    uint64_t t0 = mc__now_ns();
    pid_t pid;
    int sock;
    mc_status s = mc__iso_launcher_spawn(&is->launcher, &pid, &sock);
    if (s != MC_OK) {
        snprintf(text, cap, "%s", mc_last_error());
        return s;
    }
    pthread_mutex_lock(&is->send_mu);
    is->pid = pid;
    is->sock = sock;
    pthread_mutex_unlock(&is->send_mu);
    pthread_mutex_lock(&is->mu);
    is->ist.workers++;
    is->ist.worker_pid = pid;
    pthread_mutex_unlock(&is->mu);
    for (;;) {
        uint64_t now = mc__now_ns(), until = t0 + is->pol.start_timeout_ns;
        mc__iso_msg m;
        int e = wait_event(is, sock, &m, until > now ? until - now : 0);
        if (e == 2) {
            pthread_mutex_lock(&is->mu);
            bool stop = is->quit || is->cancel;
            pthread_mutex_unlock(&is->mu);
            if (!stop) continue;
            end_worker(is, true, 0, NULL);
            snprintf(text, cap, "cancelled while a worker started");
            return MC_ERR_CANCELLED;
        }
        if (e == 0) {
            end_worker(is, true, 0, NULL);
            *cause = MC__ISO_CAUSE_HUNG;
            snprintf(text, cap, "the worker was not ready within %.0f ms (opening the device and setup)",
                     (double)is->pol.start_timeout_ns / 1e6);
            return MC_ERR_WORKER_LOST;
        }
        if (e < 0) {
            int ws;
            end_worker(is, false, 200, &ws);
            *cause = MC__ISO_CAUSE_DIED;
            char how[128];
            mc__iso_describe_exit(ws, how, sizeof how);
            pthread_mutex_lock(&is->mu);
            if (WIFSIGNALED(ws)) is->ist.last_signal = WTERMSIG(ws);
            pthread_mutex_unlock(&is->mu);
            snprintf(text, cap, "the worker %s while starting", how);
            return MC_ERR_WORKER_LOST;
        }
        if (m.type == MC__ISO_ERROR) {
            end_worker(is, false, 1000, NULL);
            snprintf(text, cap, "%s", m.text);
            return (mc_status)m.status;
        }
        if (m.type != MC__ISO_READY) continue;
        is->ready_ns = is->last_msg_ns = mc__now_ns();
        /* Everything without a result goes to the new worker, in order. */
        pthread_mutex_lock(&is->send_mu);
        pthread_mutex_lock(&is->mu);
        if (is->ist.workers == 1) is->ist.start_ms = (double)(is->ready_ns - t0) / 1e6;
        is->ist.device = m.u.info;
        is->gen++;
        is->worker_ready = true;
        uint32_t todo[MC_STREAM_MAX_SLOTS], n = 0;
        for (uint32_t i = 0; i < is->order.count; i++) {
            uint32_t idx = ring_at(&is->order, i);
            islot *sl = &is->slots[idx];
            if (sl->state != SLOT_QUEUED) continue;
            if (sl->sent_gen) is->st.replays++;
            sl->sent_gen = is->gen;
            todo[n++] = idx;
        }
        is->outstanding = n;
        if (n) is->busy_since_ns = is->ready_ns;
        if (n > is->st.max_in_flight) is->st.max_in_flight = n;
        pthread_mutex_unlock(&is->mu);
        for (uint32_t i = 0; i < n; i++) {
            islot *sl = &is->slots[todo[i]];
            mc__iso_msg it;
            mc__iso_msg_init(&it, MC__ISO_ITEM);
            it.slot = todo[i];
            it.a = sl->seq;
            it.b = sl->tag;
            if (!mc__iso_send(is->sock, &it, -1)) break; /* it died: seen on the channel */
        }
        pthread_mutex_unlock(&is->send_mu);
        return MC_OK;
    }
}

/* Replaces the worker after a fault, or gives up. */
static void restart(iso_stream *is, mc__iso_cause cause, mc_status status, const char *text, uint64_t fault_ns)
{
    int ws = 0;
    end_worker(is, true, 0, &ws);
    uint64_t reaped = mc__now_ns();
    char what[MC__ISO_TEXT_MAX + 64];
    pthread_mutex_lock(&is->mu);
    if (cause == MC__ISO_CAUSE_DIED) {
        char how[128];
        mc__iso_describe_exit(ws, how, sizeof how);
        if (WIFSIGNALED(ws)) is->ist.last_signal = WTERMSIG(ws);
        snprintf(what, sizeof what, "the worker %s", how);
        is->ist.deaths++;
        status = MC_ERR_WORKER_LOST;
    } else if (cause == MC__ISO_CAUSE_HUNG) {
        snprintf(what, sizeof what, "the worker sent nothing for %.0f ms while it had items",
                 (double)is->pol.deadline_ns / 1e6);
        is->ist.hangs++;
        status = MC_ERR_WORKER_LOST;
    } else {
        snprintf(what, sizeof what, "the worker reported %s: %s", mc_status_name(status),
                 mc__iso_unprefixed(text, "stream", is->label));
        is->ist.device_errors++;
    }
    is->st.last_failure = status;
    is->ist.last_cause = status;
    mc__iso_copy_text(is->ist.last_cause_text, sizeof is->ist.last_cause_text, what);
    is->in_a_row++;
    if (is->in_a_row > is->pol.max_restarts) {
        char why[MC__ISO_TEXT_MAX + 128];
        snprintf(why, sizeof why, "%u worker restarts in a row without a result; the last: %s", is->in_a_row - 1, what);
        die(is, status, why);
        deliver(is);
        pthread_mutex_unlock(&is->mu);
        return;
    }
    is->ist.restarts++;
    is->st.worker_restarts = is->ist.restarts;
    pthread_mutex_unlock(&is->mu);
    mc__log(MC_LOG_WARN, "isolate.restart", "stream '%s': %s; starting worker %u", is->label, what,
            is->ist.workers + 1);
    if (!is->measuring) is->stall_ns = is->result_ns;
    is->measuring = true;
    is->fault_ns = fault_ns;
    is->reaped_ns = reaped;
}

static void on_result(iso_stream *is, const mc__iso_msg *m, uint64_t now)
{
    pthread_mutex_lock(&is->mu);
    is->wcur = m->u.sstats;
    if (m->slot < is->nslots) {
        islot *sl = &is->slots[m->slot];
        if (sl->state == SLOT_QUEUED && sl->seq == m->a && sl->sent_gen == is->gen) {
            sl->state = SLOT_FINISHED;
            sl->attempts += m->attempts;
            set_message(sl, (mc_status)m->status, m->text);
            if (is->outstanding) is->outstanding--;
            is->busy_since_ns = now;
            is->in_a_row = 0;
            if (is->measuring) {
                mc__iso_count_restart(&is->ist, &is->timing, is->stall_ns, is->fault_ns, is->reaped_ns, is->ready_ns,
                                      now);
                is->measuring = false;
            }
            is->result_ns = now;
        }
    }
    deliver(is);
    pthread_mutex_unlock(&is->mu);
}

static void *supervisor_main(void *arg)
{
    iso_stream *is = arg;
    for (;;) {
        pthread_mutex_lock(&is->mu);
        bool quit = is->quit, cancel = is->cancel, dead = is->dead;
        pthread_mutex_unlock(&is->mu);
        if (quit) break;
        if (cancel && is->pid > 0) {
            /* Nothing more goes to the device, and nothing the worker has
             * may touch a slot once it is given back: end it first. */
            end_worker(is, true, 0, NULL);
            pthread_mutex_lock(&is->mu);
            finish_all(is, MC_ERR_CANCELLED, "cancelled by mc_stream_close");
            deliver(is);
            pthread_mutex_unlock(&is->mu);
            continue;
        }
        if (cancel) {
            pthread_mutex_lock(&is->mu);
            finish_all(is, MC_ERR_CANCELLED, "cancelled by mc_stream_close");
            deliver(is);
            pthread_mutex_unlock(&is->mu);
        }
        if (is->pid <= 0 && !cancel && !dead) {
            mc__iso_cause cause;
            char text[MC__ISO_TEXT_MAX];
            uint64_t t = mc__now_ns();
            mc_status s = start_worker(is, &cause, text, sizeof text);
            if (s == MC_ERR_CANCELLED) continue;
            if (s != MC_OK) {
                if (cause == MC__ISO_CAUSE_ERROR && !mc__iso_restartable(s)) {
                    pthread_mutex_lock(&is->mu);
                    char why[MC__ISO_TEXT_MAX + 64];
                    snprintf(why, sizeof why, "a new worker failed: %s", mc__iso_unprefixed(text, "stream", is->label));
                    die(is, s, why);
                    deliver(is);
                    pthread_mutex_unlock(&is->mu);
                } else {
                    restart(is, cause, s, text, t);
                }
                continue;
            }
        }
        /* Wake at least every deadline/4 to look for a hang. */
        mc__iso_msg m;
        int e = wait_event(is, is->pid > 0 ? is->sock : -1, &m, is->pol.deadline_ns / 4);
        uint64_t now = mc__now_ns();
        if (e == 1) {
            is->last_msg_ns = now;
            if (m.type == MC__ISO_RESULT) {
                on_result(is, &m, now);
            } else if (m.type == MC__ISO_ERROR) {
                mc_status st = (mc_status)m.status;
                if (mc__iso_restartable(st)) {
                    restart(is, MC__ISO_CAUSE_ERROR, st, m.text, m.t_ns);
                } else {
                    end_worker(is, false, (double)is->pol.deadline_ns / 1e6, NULL);
                    pthread_mutex_lock(&is->mu);
                    char why[MC__ISO_TEXT_MAX + 64];
                    snprintf(why, sizeof why, "the worker: %s", mc__iso_unprefixed(m.text, "stream", is->label));
                    die(is, st, why);
                    deliver(is);
                    pthread_mutex_unlock(&is->mu);
                }
            }
        } else if (e < 0 && is->pid > 0) {
            restart(is, MC__ISO_CAUSE_DIED, MC_OK, "", now);
        } else if (is->pid > 0) {
            pthread_mutex_lock(&is->mu);
            uint64_t since = MC__MAX(is->last_msg_ns, is->busy_since_ns);
            bool hung = is->outstanding && now > since && now - since >= is->pol.deadline_ns;
            pthread_mutex_unlock(&is->mu);
            if (hung) restart(is, MC__ISO_CAUSE_HUNG, MC_OK, "", now);
        }
    }
    return NULL;
}

/* ---- the API ------------------------------------------------------------------------ */

static void destroy(iso_stream *is)
{
    mc__iso_launcher_stop(&is->launcher);
    mc__shm_unmap(is->region, is->region_size);
    for (int i = 0; i < 2; i++)
        if (is->wake[i] >= 0) close(is->wake[i]);
    mc__iso_policy_free(&is->pol);
    free(is->slots);
    free(is->free_slots.v);
    free(is->order.v);
    free(is->ready.v);
    free(is->label);
    pthread_mutex_destroy(&is->send_mu);
    pthread_mutex_destroy(&is->mu);
    pthread_cond_destroy(&is->free_cv);
    pthread_cond_destroy(&is->ready_cv);
    pthread_cond_destroy(&is->idle_cv);
    is->tag = 0;
    free(is);
}

mc_status mc__iso_stream_create(const mc_stream_desc *desc, mc_stream **out)
{
    if (desc->device)
        return mc__fail(MC_ERR_INVALID_ARGUMENT,
                        "mc_stream_create: an isolated stream opens its device in its worker: desc->device must be NULL "
                        "(name it in isolate->device)");
    mc_status s = mc__stream_check_desc(desc);
    if (s != MC_OK) return s;
    if ((s = mc__iso_fork_allowed("mc_stream_create")) != MC_OK) return s;
    iso_stream *is = mc__calloc(1, sizeof *is);
    if (!is) return mc__fail(MC_ERR_NO_MEMORY, "mc_stream_create: out of host memory");
    is->tag = MC__ISO_STREAM_TAG;
    is->sock = is->wake[0] = is->wake[1] = -1;
    is->launcher.sock = -1;
    pthread_mutex_init(&is->send_mu, NULL);
    pthread_mutex_init(&is->mu, NULL);
    mc__cond_init_monotonic(&is->free_cv);
    mc__cond_init_monotonic(&is->ready_cv);
    mc__cond_init_monotonic(&is->idle_cv);
    is->desc = *desc;
    is->desc.slots = desc->slots ? desc->slots : DEFAULT_SLOTS;
    is->desc.isolate = NULL;
    is->nslots = is->desc.slots;
    is->label = mc__strdup(desc->label ? desc->label : "stream");
    is->desc.label = is->label;
    is->slots = mc__calloc(is->nslots, sizeof *is->slots);
    is->free_slots.v = mc__calloc(is->nslots, sizeof(uint32_t));
    is->order.v = mc__calloc(is->nslots, sizeof(uint32_t));
    is->ready.v = mc__calloc(is->nslots, sizeof(uint32_t));
    is->free_slots.cap = is->order.cap = is->ready.cap = is->nslots;
    if (!is->label || !is->slots || !is->free_slots.v || !is->order.v || !is->ready.v) {
        destroy(is);
        return mc__fail(MC_ERR_NO_MEMORY, "mc_stream_create: out of host memory");
    }
    for (uint32_t i = 0; i < is->nslots; i++) ring_push(&is->free_slots, i);
    is->st.slots = is->nslots;
    if ((s = mc__iso_policy_init(&is->pol, desc->isolate, "mc_stream_create")) != MC_OK) {
        destroy(is);
        return s;
    }
    is->in_stride = (is->desc.item_size + SLOT_ALIGN - 1) / SLOT_ALIGN * SLOT_ALIGN;
    is->out_stride = (is->desc.result_size + SLOT_ALIGN - 1) / SLOT_ALIGN * SLOT_ALIGN;
    is->region_size = HEADER_SIZE + (size_t)is->nslots * (is->in_stride + is->out_stride);
    is->region = mc__shm_map_anon(is->region_size);
    if (!is->region) {
        s = mc__fail(MC_ERR_NO_MEMORY, "mc_stream_create: no shared memory for the slots (%zu bytes): %s",
                     is->region_size, strerror(errno));
        destroy(is);
        return s;
    }
    is->sh = (mc__iso_shared *)is->region;
    is->sh->magic = MC__ISO_MAGIC;
    /* The launcher first: it inherits the slots, and nothing else of ours. */
    if ((s = mc__iso_launcher_start(&is->launcher, stream_worker, is)) != MC_OK) {
        destroy(is);
        return s;
    }
    if (pipe(is->wake) != 0) {
        s = mc__fail(MC_ERR_INTERNAL, "mc_stream_create: pipe: %s", strerror(errno));
        destroy(is);
        return s;
    }
    for (int i = 0; i < 2; i++) {
        fcntl(is->wake[i], F_SETFL, fcntl(is->wake[i], F_GETFL) | O_NONBLOCK);
        fcntl(is->wake[i], F_SETFD, FD_CLOEXEC);
    }
    /* The first worker now: setup's errors come back from create. */
    mc__iso_cause cause;
    char text[MC__ISO_TEXT_MAX];
    if ((s = start_worker(is, &cause, text, sizeof text)) != MC_OK) {
        s = mc__fail(s, "stream '%s': %s", is->label, mc__iso_unprefixed(text, "stream", is->label));
        char why[MC__ISO_TEXT_MAX + 128];
        snprintf(why, sizeof why, "%s", mc_last_error());
        destroy(is);
        return mc__fail(s, "%s", why);
    }
    if (pthread_create(&is->thread, NULL, supervisor_main, is) != 0) {
        end_worker(is, true, 0, NULL);
        destroy(is);
        return mc__fail(MC_ERR_INTERNAL, "stream '%s': cannot start its thread", desc->label ? desc->label : "stream");
    }
    is->thread_started = true;
    *out = (mc_stream *)is;
    return MC_OK;
}

static mc_status refused(const iso_stream *is, const char *fn)
{
    if (is->closed) return mc__fail(MC_ERR_INVALID_STATE, "%s: stream '%s' is closed", fn, is->label);
    return mc__fail(is->dead_status, "%s: %s", fn, is->dead_message);
}

mc_status mc__iso_stream_acquire(mc_stream *s, uint64_t timeout_ns, mc_stream_slot *out)
{
    iso_stream *is = as_iso(s);
    if (!out) return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_stream_acquire: out is NULL");
    memset(out, 0, sizeof *out);
    if (on_thread(is)) timeout_ns = 0;
    uint64_t deadline = mc__deadline(timeout_ns);
    pthread_mutex_lock(&is->mu);
    for (;;) {
        if (is->closed || is->dead) {
            mc_status st = refused(is, "mc_stream_acquire");
            pthread_mutex_unlock(&is->mu);
            return st;
        }
        if (is->free_slots.count) break;
        if (!mc__cond_wait_until(&is->free_cv, &is->mu, deadline)) {
            pthread_mutex_unlock(&is->mu);
            return mc__fail(MC_ERR_WAIT_TIMEOUT, "stream '%s': all %u slots stayed busy", is->label, is->nslots);
        }
    }
    uint32_t idx = ring_pop(&is->free_slots);
    is->slots[idx].state = SLOT_ACQUIRED;
    out->index = idx;
    out->input = slot_in(is, idx);
    out->size = is->desc.item_size;
    pthread_mutex_unlock(&is->mu);
    return MC_OK;
}

mc_status mc__iso_stream_submit(mc_stream *s, uint32_t index, uint64_t tag)
{
    iso_stream *is = as_iso(s);
    if (index >= is->nslots)
        return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_stream_submit: slot %u of %u does not exist", index, is->nslots);
    pthread_mutex_lock(&is->send_mu);
    pthread_mutex_lock(&is->mu);
    islot *sl = &is->slots[index];
    if (sl->state != SLOT_ACQUIRED) {
        pthread_mutex_unlock(&is->mu);
        pthread_mutex_unlock(&is->send_mu);
        return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_stream_submit: slot %u is not acquired", index);
    }
    if (is->closed || is->dead) {
        mc_status st = refused(is, "mc_stream_submit");
        free_slot(is, sl);
        pthread_mutex_unlock(&is->mu);
        pthread_mutex_unlock(&is->send_mu);
        return st;
    }
    sl->seq = ++is->next_seq;
    sl->tag = tag;
    sl->attempts = 0;
    sl->sent_gen = 0;
    set_message(sl, MC_OK, NULL);
    sl->state = SLOT_QUEUED;
    ring_push(&is->order, index);
    is->st.submitted++;
    bool now = is->worker_ready;
    if (now) {
        sl->sent_gen = is->gen;
        if (!is->outstanding++) is->busy_since_ns = mc__now_ns();
        if (is->outstanding > is->st.max_in_flight) is->st.max_in_flight = is->outstanding;
    }
    pthread_mutex_unlock(&is->mu);
    if (now) {
        mc__iso_msg m;
        mc__iso_msg_init(&m, MC__ISO_ITEM);
        m.slot = index;
        m.a = sl->seq;
        m.b = tag;
        mc__iso_send(is->sock, &m, -1); /* a worker gone is seen on the channel, and the item resent */
    }
    pthread_mutex_unlock(&is->send_mu);
    mc__clear_error();
    return MC_OK;
}

mc_status mc__iso_stream_discard(mc_stream *s, uint32_t index)
{
    iso_stream *is = as_iso(s);
    if (index >= is->nslots)
        return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_stream_discard: slot %u of %u does not exist", index, is->nslots);
    pthread_mutex_lock(&is->mu);
    islot *sl = &is->slots[index];
    if (sl->state != SLOT_ACQUIRED) {
        pthread_mutex_unlock(&is->mu);
        return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_stream_discard: slot %u is not acquired", index);
    }
    free_slot(is, sl);
    pthread_mutex_unlock(&is->mu);
    return MC_OK;
}

mc_status mc__iso_stream_pull(mc_stream *s, uint64_t timeout_ns, mc_stream_result *out)
{
    iso_stream *is = as_iso(s);
    if (!out) return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_stream_pull: out is NULL");
    memset(out, 0, sizeof *out);
    if (is->desc.on_result)
        return mc__fail(MC_ERR_INVALID_STATE, "mc_stream_pull: stream '%s' delivers its results to a callback",
                        is->label);
    uint64_t deadline = mc__deadline(timeout_ns);
    pthread_mutex_lock(&is->mu);
    while (!is->ready.count) {
        if (is->closed && idle(is)) {
            pthread_mutex_unlock(&is->mu);
            return mc__fail(MC_ERR_INVALID_STATE, "mc_stream_pull: stream '%s' is closed and every result was pulled",
                            is->label);
        }
        if (!mc__cond_wait_until(&is->ready_cv, &is->mu, deadline)) {
            pthread_mutex_unlock(&is->mu);
            return mc__fail(MC_ERR_WAIT_TIMEOUT, "stream '%s': no result came in time", is->label);
        }
    }
    uint32_t idx = ring_pop(&is->ready);
    islot *sl = &is->slots[idx];
    sl->state = SLOT_HELD;
    fill_result(is, sl, out);
    pthread_mutex_unlock(&is->mu);
    return MC_OK;
}

mc_status mc__iso_stream_release_result(mc_stream *s, const mc_stream_result *r)
{
    iso_stream *is = as_iso(s);
    if (!r) return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_stream_release_result: r is NULL");
    if (r->slot >= is->nslots)
        return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_stream_release_result: slot %u of %u does not exist", r->slot,
                        is->nslots);
    pthread_mutex_lock(&is->mu);
    islot *sl = &is->slots[r->slot];
    if (sl->state != SLOT_HELD || sl->seq != r->sequence) {
        pthread_mutex_unlock(&is->mu);
        return mc__fail(MC_ERR_INVALID_ARGUMENT,
                        "mc_stream_release_result: item %llu in slot %u is not a result pulled and not yet released",
                        (unsigned long long)r->sequence, r->slot);
    }
    free_slot(is, sl);
    pthread_mutex_unlock(&is->mu);
    return MC_OK;
}

mc_status mc__iso_stream_close(mc_stream *s, bool drain)
{
    iso_stream *is = as_iso(s);
    if (on_thread(is))
        return mc__fail(MC_ERR_INVALID_STATE, "mc_stream_close: not from the result callback of stream '%s'",
                        is->label);
    pthread_mutex_lock(&is->mu);
    is->closed = true;
    if (!drain) is->cancel = true;
    pthread_cond_broadcast(&is->free_cv);
    pthread_cond_broadcast(&is->ready_cv);
    wake(is);
    while (!idle(is)) pthread_cond_wait(&is->idle_cv, &is->mu);
    pthread_cond_broadcast(&is->ready_cv);
    pthread_mutex_unlock(&is->mu);
    return MC_OK;
}

mc_status mc__iso_stream_get_stats(const mc_stream *s, mc_stream_stats *out)
{
    if (!out) return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_stream_get_stats: out is NULL");
    iso_stream *is = as_iso(s);
    pthread_mutex_lock(&is->mu);
    *out = is->st;
    mc_stream_stats w = is->wbase;
    add_wstats(&w, &is->wcur);
    out->commits = w.commits;
    out->list_commits = w.list_commits;
    out->replays += w.replays;
    out->recoveries = w.recoveries;
    out->device_reopens = w.device_reopens;
    if (out->last_failure == MC_OK) out->last_failure = w.last_failure;
    out->slots_in_use = is->nslots - is->free_slots.count;
    out->worker_restarts = is->ist.restarts;
    pthread_mutex_unlock(&is->mu);
    return MC_OK;
}

mc_status mc_stream_get_isolate_stats(const mc_stream *s, mc_isolate_stats *out)
{
    if (!mc__iso_is_stream(s)) return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_stream_get_isolate_stats: s is not an isolated stream");
    if (!out) return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_stream_get_isolate_stats: out is NULL");
    iso_stream *is = as_iso(s);
    pthread_mutex_lock(&is->mu);
    *out = is->ist;
    pthread_mutex_unlock(&is->mu);
    return MC_OK;
}

void mc__iso_stream_release(mc_stream *s)
{
    iso_stream *is = as_iso(s);
    if (on_thread(is)) {
        mc__log(MC_LOG_ERROR, "stream.release_from_callback",
                "mc_stream_release: not from the result callback of stream '%s'; not released", is->label);
        return;
    }
    pthread_mutex_lock(&is->mu);
    bool drained = is->closed && !is->cancel;
    pthread_mutex_unlock(&is->mu);
    if (!drained) mc__iso_stream_close(s, false);
    pthread_mutex_lock(&is->mu);
    is->quit = true;
    pthread_mutex_unlock(&is->mu);
    wake(is);
    if (is->thread_started) pthread_join(is->thread, NULL);
    if (is->pid > 0) {
        /* Every item was delivered: the worker finishes up and exits. */
        mc__iso_msg m;
        mc__iso_msg_init(&m, MC__ISO_QUIT);
        pthread_mutex_lock(&is->send_mu);
        mc__iso_send(is->sock, &m, -1);
        pthread_mutex_unlock(&is->send_mu);
        end_worker(is, false, (double)is->pol.deadline_ns / 1e6, NULL);
    }
    destroy(is);
}
