/*
 * DOC: Streams: what the front end shares with its back ends
 *
 * stream.c is the one front end of mc_stream: the descriptor's checks, the
 * slot book, ordering, delivery, close and cancel, the stream's death and
 * its statistics. The device side is a back end behind the operations
 * table below: stream_local.c runs items on a device of this process,
 * stream_isolated.c in a supervised worker process (docs/ISOLATION.md).
 * A back end moves items from QUEUED to FLIGHT (gives them to the device),
 * from FLIGHT to FINISHED (the device is done, the status is known) or back
 * to QUEUED (the device failed them and will get them again), and from
 * QUEUED to FINISHED with an error when an item cannot run (its commands
 * cannot be recorded, it failed past max_retries); everything else about a
 * slot is the front end's.
 *
 * Locks: submit_mu (sequence numbers and whatever gives items to the
 * device: commits, messages to the worker) is taken before mu (the book).
 */
#ifndef MC_RUNTIME_STREAM_OPS_H
#define MC_RUNTIME_STREAM_OPS_H

#include "runtime/runtime.h"

#include <pthread.h>

/* acquire, pull and an idle stream's thread look again for this long
 * before they sleep: a slot, a result or a commit that comes within
 * microseconds costs no sleep and wake-up on either side. */
#define MC__STREAM_SPIN_NS 20000ull

typedef enum mc__slot_state {
    MC__SLOT_FREE = 0,
    MC__SLOT_ACQUIRED,   /* a producer fills its input */
    MC__SLOT_QUEUED,     /* submitted; not with the device (not yet, or given back after a fault) */
    MC__SLOT_FLIGHT,     /* with the device: committed, or sent to the worker */
    MC__SLOT_FINISHED,   /* the device is done with it, its status set; waiting for its turn */
    MC__SLOT_DELIVERING, /* the callback runs */
    MC__SLOT_READY,      /* pull mode: waiting to be pulled */
    MC__SLOT_HELD        /* pulled, not yet released */
} mc__slot_state;

typedef struct mc__slot {
    mc__slot_state state;
    void *in_host, *out_host; /* the slot's memory, as the back end placed it */
    uint64_t seq, tag;
    uint32_t attempts; /* command buffers committed for the item */
    mc_status status;
    char message[256];
} mc__slot;

/* A FIFO of slot indices, at most one entry per slot. */
typedef struct mc__ring {
    uint32_t *v;
    uint32_t head, count, cap;
} mc__ring;

static inline void mc__ring_push(mc__ring *r, uint32_t x)
{
    r->v[(r->head + r->count) % r->cap] = x;
    r->count++;
}

static inline uint32_t mc__ring_pop(mc__ring *r)
{
    uint32_t x = r->v[r->head];
    r->head = (r->head + 1) % r->cap;
    r->count--;
    return x;
}

static inline uint32_t mc__ring_at(const mc__ring *r, uint32_t i)
{
    return r->v[(r->head + i) % r->cap];
}

/* A back end. Every operation gets the stream with its front end made
 * (desc with defaults resolved, label, slots, locks); the back end keeps
 * its own state in s->be. */
typedef struct mc__stream_ops {
    const char *name;
    /* The descriptor's fields that are the back end's (the device, the
     * isolation policy), before anything is made; *info gets the device's
     * limits when there is one here (else stays zero). */
    mc_status (*check)(const mc_stream_desc *desc, mc_device_info *info);
    /* Makes s->be: the slots' memory (each slot's in_host and out_host),
     * and the device side up to setup having run. Before the stream's
     * thread starts. On failure, destroy runs next. */
    mc_status (*open)(mc_stream *s, const mc_stream_desc *desc);
    /* Under submit_mu, not mu: the item just submitted in slot (QUEUED)
     * goes to the device now if it can, else the stream's thread hears of
     * it. */
    void (*submit)(mc_stream *s, uint32_t slot);
    /* On the stream's thread, mu held (it may let go of it meanwhile):
     * waits a bounded time, or until woken, for the device side to move
     * items on; recovers, restarts. Never delivers. Not called while the
     * oldest item is FINISHED, nor with QUEUED items after a cancel. */
    void (*step)(mc_stream *s);
    /* Under mu: wakes step (close, release). NULL: work_cv is enough. */
    void (*wake)(mc_stream *s);
    /* Under mu: a producer just acquired slot. May be NULL. */
    void (*acquired)(mc_stream *s, uint32_t slot);
    /* Under mu: the back end's figures over *out (the front end's). May be NULL. */
    void (*stats)(const mc_stream *s, mc_stream_stats *out);
    mc_device *(*device)(const mc_stream *s);
    /* After the stream's thread ended (or was never started): ends the
     * device side and frees s->be, whatever open got to. */
    void (*destroy)(mc_stream *s);
} mc__stream_ops;

extern const mc__stream_ops mc__stream_local_ops;    /* stream_local.c */
extern const mc__stream_ops mc__stream_isolated_ops; /* stream_isolated.c */

struct mc_stream {
    uint32_t tag;
    const mc__stream_ops *ops;
    void *be;
    mc_stream_desc desc; /* defaults resolved; label owned; isolate NULL */
    char *label;
    uint32_t nslots;
    mc__slot *slots;
    mc__ring free_slots, order, ready;
    uint64_t next_seq;

    pthread_mutex_t submit_mu;      /* taken before mu */
    pthread_mutex_t mu;             /* everything below, and every slot's state */
    pthread_cond_t free_cv;         /* a slot became free; close */
    pthread_cond_t work_cv;         /* for the stream's thread: an item, close, quit */
    pthread_cond_t ready_cv;        /* pull: a result is ready; close */
    pthread_cond_t idle_cv;         /* every submitted item delivered */
    _Atomic uint32_t nfree, nready; /* the rings' counts, for spinning without mu */
    _Atomic int stop_spin;          /* closed or dead: stop spinning */
    bool delivering;                /* the callback runs */
    bool closed, cancel, quit, dead;
    mc_status dead_status;
    char dead_message[256];
    mc_stream_stats st;

    pthread_t thread;
    bool thread_started;
};

/* ---- for the back ends (stream.c) ----------------------------------------- */

/* s->be when s is a stream of that back end, else NULL. */
void *mc__stream_backend(const mc_stream *s, const mc__stream_ops *ops);
bool mc__stream_on_thread(const mc_stream *s);
/* Sets the slot's status and message (the status's text when msg is
 * NULL or empty). */
void mc__stream_set_message(mc__slot *sl, mc_status st, const char *msg);
/* Spins up to MC__STREAM_SPIN_NS (not past deadline) until *count is not
 * zero or the stream stops spinning; mu not held. */
void mc__stream_spin_for(const mc_stream *s, _Atomic uint32_t *count, uint64_t deadline);
/* Under mu: the device side cannot go on. Every QUEUED item is finished
 * with st; acquire and submit return it from now on. */
void mc__stream_die_locked(mc_stream *s, mc_status st, const char *why);

/* ---- for the isolated stream's worker ---------------------------------------- */

/* The next item submitted gets sequence number next. */
mc_status mc__stream_set_sequence(mc_stream *s, uint64_t next);
/* Whether the stream died, and why. */
bool mc__stream_dead(mc_stream *s, mc_status *status, char *why, size_t cap);

#endif
