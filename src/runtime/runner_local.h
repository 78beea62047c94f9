/*
 * DOC: The local runner's state (internal)
 *
 * Shared by runner_local.c (chunks, the run, recovery, the back end's
 * entries) and runner_device.c (the binding setup makes and the objects
 * the runner keeps on the device). Nothing outside these two files looks
 * inside a local runner: the front end reaches it through mc__runner_ops.
 */
#ifndef MC_RUNTIME_RUNNER_LOCAL_H
#define MC_RUNTIME_RUNNER_LOCAL_H

#include "runtime/runner_ops.h"

#define SNAP_STRIDE 32u

typedef struct chunk {
    mc_cmdbuf *cb;
    uint64_t number;       /* 1, 2, ... over the whole run */
    uint64_t value;        /* timeline value signalled at its end */
    uint64_t first, iters; /* iterations [first, first + iters) */
    uint32_t dispatches;
    int ckpt_slot; /* -1: no checkpoint */
    uint32_t snap; /* snapshot slot */
    bool retired;  /* its work is done (the timeline passed value) */
    bool stopped;  /* its snapshot shows the stop condition */
    uint64_t stop_iteration;
} chunk;

/* What a chunk's completion callback needs to wake the runner. */
typedef struct wake_note {
    mc_event *event;
    uint64_t value;
} wake_note;

typedef struct local_runner {
    struct mc_runner b; /* the front end's part; b.desc has the defaults resolved */
    double budget_ns, cap_ns, checkpoint_ns;

    /* the device and what lives on it */
    mc_device *dev;
    mc_device_info info;
    mc_queue *queue;
    mc_event *timeline; /* swapped under mu: cancel signals it */
    mc_buffer *control; /* with a control slot */
    mc_buffer *snaps;   /* control snapshots, in_flight + 1 slots */
    mc_buffer *ckpt[2][MC_RUNNER_MAX_STATE];
    bool ckpt_busy[2];
    mc_runner_binding bind;
    bool bound;                         /* setup ran; teardown is due */
    uint8_t *bytes[MC_MAX_BUFFER_ARGS]; /* the runner's copies of BYTES args */
    mc__device_like like;               /* how the lost device was opened, its faults not yet reached */

    /* the last good state, in host memory (double-buffered) */
    void *host[2][MC_RUNNER_MAX_STATE];
    int host_cur;
    uint64_t host_iter;

    /* the run: touched only by the thread in mc_runner_run */
    chunk *list; /* submission order */
    uint32_t nlist, list_cap;
    uint64_t next_value, next_number, next_iter, high;
    uint32_t cur_d;
    double est_ns; /* device time per dispatch */
    uint64_t last_ckpt_ns;
    bool force_ckpt;
    uint64_t fail_point; /* first iteration of the chunk that failed last */
    uint32_t in_a_row;   /* failures without a checkpoint past fail_point */
    uint32_t revoked_in_a_row;
    bool warned_long;
    bool stopped;
    uint64_t stop_iteration;
    uint64_t prev_end_ns;
    bool have_prev;
    double chunk_ns_sum, gap_ns_sum;
    uint64_t ngaps;
    mc_runner_stats st; /* the run's figures; published through the front end */

    pthread_mutex_t mu; /* the timeline pointer, the back-off sleep */
    pthread_cond_t cv;  /* back-off sleeps; cancel broadcasts */
} local_runner;

static inline bool mc__lr_lost(const local_runner *r)
{
    return !r->dev || mc__device_is_lost(r->dev);
}

/* runner_device.c */
/* Calls setup on r->dev and checks what it made; teardown and forget it. */
mc_status mc__lr_bind(local_runner *r);
void mc__lr_unbind(local_runner *r);
/* Everything the runner itself keeps on the device, made where missing;
 * let go of. */
mc_status mc__lr_make_objects(local_runner *r);
void mc__lr_drop_objects(local_runner *r);
/* The control block back to the full grid. */
mc_status mc__lr_reset_control(local_runner *r);
/* Lets go of a lost device (its unreached faults kept); opens one like it. */
void mc__lr_drop_device(local_runner *r);
mc_status mc__lr_open_device(local_runner *r);

#endif
