/*
 * DOC: The runner's front end and its back ends (internal)
 *
 * One mc_runner handle, two implementations: the local one (runner_local.c:
 * chunks on a device of this process) and the isolated one
 * (runner_isolated.c: a supervisor whose worker processes each run a local
 * runner). runner.c is the front end: it checks descriptors and arguments,
 * owns what every runner has (label, descriptor copy, state sizes, the
 * run-once and cancel flags, published statistics, progress reports,
 * durable checkpoint files and resuming from them) and calls the back end
 * through the table below. A back end's struct begins with struct
 * mc_runner, so the front end's tag check covers both kinds.
 */
#ifndef MC_RUNTIME_RUNNER_OPS_H
#define MC_RUNTIME_RUNNER_OPS_H

#include "runtime/runtime.h"

#include <pthread.h>
#include <stdatomic.h>

typedef struct mc__runner_ops {
    const char *kind; /* "local", "isolated": for messages */
    size_t size;      /* of the back end's struct, which begins with struct mc_runner */
    /* Fills what the back end needs after the front end set the common
     * fields; info is the device's (NULL for an isolated runner). Sets
     * r->nstate and r->state_size. On failure the front end calls destroy,
     * which must cope with a half-made runner. */
    mc_status (*init)(mc_runner *r, const mc_device_info *info);
    /* The run, on the caller's thread; returns with the final figures
     * published and the final progress report made. */
    mc_status (*run)(mc_runner *r);
    /* Cancel was set: wake the run wherever it sleeps. Any thread. */
    void (*wake)(mc_runner *r);
    /* Before the run: the last good state becomes state at iteration
     * (arguments checked). */
    mc_status (*restore)(mc_runner *r, uint64_t iteration, const void *const *state);
    /* Copies len bytes of state index (both checked) into dst. */
    mc_status (*state_read)(mc_runner *r, uint32_t index, void *dst, size_t len);
    mc_device *(*device)(const mc_runner *r);
    void (*destroy)(mc_runner *r);
    bool isolated; /* has mc_isolate_stats */
} mc__runner_ops;

struct mc_runner {
    uint32_t tag;
    const mc__runner_ops *ops;
    bool backend_up;     /* init was called: destroy is due */
    mc_runner_desc desc; /* the caller's; label, checkpoint_dir and run_params point at the copies below */
    char *label;
    char *ckpt_dir;   /* durable checkpoints; NULL: none */
    void *run_params; /* copied from the desc */
    bool warned_ckpt_write;

    uint32_t nstate; /* set by the back end's init */
    size_t state_size[MC_RUNNER_MAX_STATE];
    uint64_t resume_iter; /* where the run starts (restore, resume) */
    uint64_t start_ns;    /* when the run began */

    _Atomic int cancel, ran;
    pthread_mutex_t mu; /* the published figures */
    mc_runner_stats pub;
    mc_isolate_stats ipub;
};

extern const mc__runner_ops mc__runner_local_ops;
extern const mc__runner_ops mc__runner_isolated_ops;

/* Publishes the run's figures (and an isolated run's own, may be NULL);
 * elapsed_ms is set here from the run's clock once it started. */
void mc__runner_publish(mc_runner *r, const mc_runner_stats *st, const mc_isolate_stats *ist);
/* Calls the caller's progress callback, if any, with iterations reached
 * and the published figures. */
void mc__runner_report(mc_runner *r, uint64_t iterations, bool done);
/* A checkpoint of iteration was taken: hands it to on_checkpoint and
 * writes it to checkpoint_dir; true when a file was written. */
bool mc__runner_checkpoint_taken(mc_runner *r, uint64_t iteration, const void *const *state);

/* runner_local.c, for a new isolated worker: the first chunk past
 * iteration takes a checkpoint (the last worker failed there). Before
 * mc_runner_run, on a local runner. */
void mc__runner_checkpoint_past(mc_runner *r, uint64_t iteration);

#endif
