/*
 * DOC: The notifier thread
 *
 * One thread per device (made with the device, started on first use) runs
 * everything the runtime calls back: command-buffer completion callbacks,
 * event notifications (MTLSharedEventListener's role, F678) and deferred
 * destruction. Callbacks therefore never run on the thread that signalled
 * or committed.
 */
#include "engine/engine.h"

#include <stdlib.h>

typedef struct mc__note mc__note;
struct mc__note {
    mc__job job; /* first: the job pointer is the note */
    mc__note *next;
    mc_event *event;
    uint64_t target;
    uint64_t value;
    bool forgotten; /* the event went away before target */
    mc_event_fn fn;
    void *user;
};

struct mc__notifier {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    mc__job *head, *tail;
    mc__note *pending;
    bool started, stop, detached;
    pthread_t thread;
};

mc_status mc__notifier_create(mc_device *d)
{
    mc__notifier *n = mc__calloc(1, sizeof *n);
    if (!n) return mc__fail(MC_ERR_NO_MEMORY, "cannot allocate the notifier");
    pthread_mutex_init(&n->lock, NULL);
    pthread_cond_init(&n->cond, NULL);
    d->notifier = n;
    return MC_OK;
}

static void *notifier_main(void *arg)
{
    mc__notifier *n = arg;
    pthread_mutex_lock(&n->lock);
    for (;;) {
        while (!n->head && !n->stop) pthread_cond_wait(&n->cond, &n->lock);
        mc__job *job = n->head;
        if (!job) break; /* stop and drained */
        n->head = job->next;
        if (!n->head) n->tail = NULL;
        pthread_mutex_unlock(&n->lock);
        job->run(job);
        pthread_mutex_lock(&n->lock);
    }
    bool detached = n->detached;
    pthread_mutex_unlock(&n->lock);
    if (detached) {
        /* The device was destroyed from this very thread: we own n now. */
        pthread_mutex_destroy(&n->lock);
        pthread_cond_destroy(&n->cond);
        free(n);
    }
    return NULL;
}

mc_status mc__notifier_post(mc_device *d, mc__job *job)
{
    mc__notifier *n = d->notifier;
    if (!n) return mc__fail(MC_ERR_INVALID_STATE, "the device's notifier has shut down");
    job->next = NULL;
    pthread_mutex_lock(&n->lock);
    if (!n->started) {
        if (pthread_create(&n->thread, NULL, notifier_main, n) != 0) {
            pthread_mutex_unlock(&n->lock);
            return mc__fail(MC_ERR_INTERNAL, "cannot start the notifier thread");
        }
        n->started = true;
    }
    if (n->tail) n->tail->next = job;
    else n->head = job;
    n->tail = job;
    pthread_cond_signal(&n->cond);
    pthread_mutex_unlock(&n->lock);
    return MC_OK;
}

void mc__notifier_shutdown(mc_device *d)
{
    mc__notifier *n = d->notifier;
    if (!n) return;
    d->notifier = NULL;
    pthread_mutex_lock(&n->lock);
    n->stop = true;
    bool self = n->started && pthread_equal(n->thread, pthread_self());
    bool started = n->started;
    if (self) n->detached = true;
    pthread_cond_signal(&n->cond);
    pthread_mutex_unlock(&n->lock);
    if (self) {
        pthread_detach(n->thread);
        return;
    }
    if (started) pthread_join(n->thread, NULL);
    pthread_mutex_destroy(&n->lock);
    pthread_cond_destroy(&n->cond);
    free(n);
}

/* ---- event notifications ---------------------------------------------- */

static void note_run(mc__job *job)
{
    mc__note *note = (mc__note *)job;
    note->fn(note->user, note->forgotten ? NULL : note->event, note->value);
    if (!note->forgotten) mc__object_release(&note->event->base);
    free(note);
}

mc_status mc_event_notify(mc_event *e, uint64_t target, mc_event_fn fn, void *user)
{
    MC__CHECK_HANDLE(e, MC__TAG_EVENT, "event");
    if (!fn) return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_event_notify: fn is NULL");
    mc_device *d = e->base.device;
    mc__notifier *n = d->notifier;
    mc__note *note = mc__calloc(1, sizeof *note);
    if (!n || !note) {
        free(note);
        return mc__fail(MC_ERR_NO_MEMORY, "mc_event_notify: out of memory");
    }
    note->job.run = note_run;
    note->event = e;
    note->target = target;
    note->fn = fn;
    note->user = user;
    pthread_mutex_lock(&n->lock);
    note->next = n->pending;
    n->pending = note;
    pthread_mutex_unlock(&n->lock);
    /* The value may have been reached already, or while we queued. */
    mc__events_changed(d, e);
    return MC_OK;
}

static void fire_matching(mc_device *d, mc_event *e, bool forget)
{
    mc__notifier *n = d->notifier;
    if (!n) return;
    uint64_t value = d->hal->event_value(d->hd, e->he);
    mc__note *ready = NULL;
    pthread_mutex_lock(&n->lock);
    for (mc__note **pp = &n->pending; *pp;) {
        mc__note *note = *pp;
        if (note->event == e && (forget || note->target <= value)) {
            *pp = note->next;
            note->next = ready;
            ready = note;
        } else {
            pp = &note->next;
        }
    }
    pthread_mutex_unlock(&n->lock);
    while (ready) {
        mc__note *note = ready;
        ready = note->next;
        note->value = value;
        note->forgotten = forget;
        if (!forget) mc__object_retain(&e->base);
        if (mc__notifier_post(d, &note->job) != MC_OK) {
            /* No thread can be had: better late on this thread than never. */
            note_run(&note->job);
        }
    }
}

void mc__events_changed(mc_device *d, mc_event *e)
{
    fire_matching(d, e, false);
}

void mc__events_forget(mc_device *d, mc_event *e)
{
    fire_matching(d, e, true);
}
