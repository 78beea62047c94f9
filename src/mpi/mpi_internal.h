/*
 * DOC: the distributed runner's parts (src/mpi), and what they share
 *
 * mpi_runner.c    the public entry points: create, run (the chunk loop and
 *                 the roll-back), statistics, release
 * mpi_grid.c      the grid cut among the ranks (slabs, blocks), the halo
 *                 sizes, the argument checks, gathering the grid back
 * mpi_plan.c      the cost model: H, overlap and command-buffer size from
 *                 measured times (docs/SCALE.md)
 * mpi_device.c    the device objects, the step kernel bound, chunks encoded,
 *                 submitted and waited for, rebuilt after a failure
 * mpi_exchange.c  the halo exchange, between chunks and overlapped
 * mpi_checkpoint.c checkpoints in memory and on disk, resume, set-aside files
 *
 * Defaults: budget 25 ms per command buffer (the runner's, docs/RUNNER.md:
 * far below any watchdog, F688 40 ms context switch); a checkpoint every 16
 * chunks (a fault costs at most 16 chunks of replay; each checkpoint copies
 * only the rank's own rows); 8 failures in a row before giving up (as the
 * runner).
 */
#ifndef MC_MPI_INTERNAL_H
#define MC_MPI_INTERNAL_H

#include "mc/mc_mpi.h"

#include "core/core.h"
#include "runtime/runtime.h"

#define DEFAULT_BUDGET_MS 25.0
#define DEFAULT_CHECKPOINT_CHUNKS 16u
#define DEFAULT_MAX_RECOVERIES 8u
#define DEFAULT_GROUP 16u
/* H beyond this buys nothing measurable: the exchange is already paid once
 * per 256 steps. */
#define MAX_AUTO_HALO 256u

/* The kernel bound for one grid height (bind's output and copies of its
 * BYTES arguments). */
typedef struct kernel_binding {
    mc_mpi_binding b;
    uint8_t *bytes[MC_MAX_BUFFER_ARGS];
    bool bound;
    uint32_t height;
} kernel_binding;

struct mc_mpi_runner {
    mc_mpi_desc d;
    MPI_Comm comm;
    MPI_Datatype row_type;
    int rank, size, local_rank, local_size;
    uint32_t *rows; /* per rank */
    uint32_t row0, my_rows, hr, local_h, steps_per_cb, max_h;
    /* Blocks (ranks_x > 1): a px x py grid of ranks, this one at (bx, by),
     * its block my_cols wide from col0, with hc = hr halo columns each
     * side; slabs: px 1, hc 0, the whole width. */
    uint32_t px, py, bx, by, col0, my_cols, hc, lw;
    int up, down, left, right;
    uint32_t *cols;       /* per rank */
    uint8_t *colbuf;      /* blocks: column bands packed, send left, send right, receive left, right */
    size_t row_bytes;     /* a local row: lw cells, halo columns included */
    size_t own_row_bytes; /* the rank's own cells of a row: my_cols */
    mc_device_desc dev_desc;
    mc_device *dev;
    mc_queue *queue;
    kernel_binding kb;      /* the local grid: the slab and both halos */
    kernel_binding kb_band; /* a boundary band, 3 hr rows (overlap only) */
    mc_buffer *state[2];
    mc_buffer *band[2][2]; /* [top, bottom][A, B] (overlap only) */
    mc_buffer *halo_in;    /* received halos, top then bottom, until the next chunk copies them in */
    bool overlap;
    bool halos_ready;         /* overlap: the next chunk's halos are in halo_in */
    uint8_t *ckpt, *ckpt_new; /* own rows */
    uint64_t ckpt_step, step;
    uint8_t *halo[4];    /* send top, send bottom, receive top, receive bottom */
    MPI_Request xreq[4]; /* the exchange in flight: the receives, then the sends */
    int xrc, xpending;   /* MPI's error bits; receives not yet written to the device */
    uint32_t band_steps_per_cb;
    double exch_ms_sum, comp_ms_sum, wait_ms_sum;
    uint64_t exch_n, comp_n;
    mc_mpi_stats st;
    char *dir;       /* this rank's durable checkpoints; NULL = none */
    uint8_t *params; /* run_params + the slab: what a file must match */
    size_t params_len;
};

/* Command buffers of one chunk, committed and not yet waited for. */
typedef struct inflight {
    mc_cmdbuf **cbs;
    uint32_t made;
    mc_status status; /* the first failure to create, encode or commit */
    uint64_t t0;
} inflight;

static inline double mc__mpi_ms_since(uint64_t t0)
{
    return (double)(mc__now_ns() - t0) / 1e6;
}

static inline mc_buffer *mc__mpi_state_at(mc_mpi_runner *r, uint64_t step)
{
    return r->state[step & 1u];
}

static inline mc_status mc__mpi_rows_read(mc_mpi_runner *r, mc_buffer *b, uint32_t first, uint32_t n, void *dst)
{
    return mc_buffer_read(b, (size_t)first * r->row_bytes, dst, (size_t)n * r->row_bytes);
}

static inline mc_status mc__mpi_rows_write(mc_mpi_runner *r, mc_buffer *b, uint32_t first, uint32_t n, const void *src)
{
    return mc_buffer_write(b, (size_t)first * r->row_bytes, src, (size_t)n * r->row_bytes);
}

/* mpi_runner.c */
mc_status mc__mpi_agree(mc_mpi_runner *r, mc_status local);

/* mpi_grid.c */
mc_status mc__mpi_setup(mc_mpi_runner *r, const mc_mpi_desc *desc);
mc_status mc__mpi_set_halo(mc_mpi_runner *r, uint32_t h);

/* mpi_plan.c */
void mc__mpi_set_steps_per_cb(mc_mpi_runner *r, double row_ms);
mc_status mc__mpi_measure(mc_mpi_runner *r, double *step_ms, double fixed[3]);
void mc__mpi_plan(mc_mpi_runner *r, const double worst[4], uint32_t *h_out, bool *overlap_out);

/* mpi_device.c */
mc_status mc__mpi_pick_device(mc_mpi_runner *r);
mc_status mc__mpi_open_device(mc_mpi_runner *r);
void mc__mpi_close_device(mc_mpi_runner *r);
mc_status mc__mpi_bind_all(mc_mpi_runner *r);
void mc__mpi_unbind_all(mc_mpi_runner *r);
void mc__mpi_submit(mc_mpi_runner *r, uint64_t first, uint32_t count, bool stage, inflight *f);
void mc__mpi_submit_bands(mc_mpi_runner *r, uint64_t first, uint32_t count, bool stage, inflight *f);
mc_status mc__mpi_finish(mc_mpi_runner *r, inflight *f, uint64_t *gpu_ns);
mc_status mc__mpi_compute(mc_mpi_runner *r, uint64_t first, uint32_t count, uint64_t *gpu_ns);
mc_status mc__mpi_rebuild(mc_mpi_runner *r, mc_status own, uint32_t attempt);

/* mpi_exchange.c */
void mc__mpi_exchange_post(mc_mpi_runner *r, mc_buffer *top, uint32_t top_row, mc_buffer *bottom, uint32_t bottom_row,
                           mc_status *s);
mc_status mc__mpi_exchange_complete(mc_mpi_runner *r, mc_buffer *dst, uint32_t top_row, uint32_t bottom_row,
                                    mc_status s);
mc_status mc__mpi_exchange(mc_mpi_runner *r, uint64_t step);
void mc__mpi_take_while_computing(mc_mpi_runner *r, inflight *f, mc_status *s);

/* mpi_checkpoint.c */
mc_status mc__mpi_restore(mc_mpi_runner *r);
mc_status mc__mpi_checkpoint_stage(mc_mpi_runner *r, uint64_t step);
mc_status mc__mpi_checkpoint_commit(mc_mpi_runner *r, uint64_t step);
void mc__mpi_remove_set_aside(mc_mpi_runner *r);
mc_status mc__mpi_resume(mc_mpi_runner *r);
mc_status mc__mpi_durable_setup(mc_mpi_runner *r, const mc_mpi_desc *d);

#endif
