/*
 * metal-compute: the runner across devices and machines, on MPI (docs/SCALE.md).
 *
 * Built only where CMake finds MPI, as its own library (metal-compute-mpi),
 * so nothing else depends on MPI. Not included by mc/mc.h.
 *
 * One MPI rank per device: ranks on one host (MPI_Comm_split_type SHARED)
 * take devices of the named kind by local rank. A 2-D grid, periodic in both
 * axes, is cut into slabs of whole rows, one per rank, each with H*radius
 * halo rows above and below copied from its neighbours. A chunk runs up to
 * H steps with no communication: every step updates every local row,
 * halo included, so rows near the slab's ends go stale one radius per step
 * and the rank's own rows stay exact for H steps. Halos are exchanged on
 * the host, never inside a command buffer (a send or receive inside GPU
 * work can trip the watchdog: mlx issue 1849; F145): between chunks, or
 * overlapped with the chunk's compute (mc_mpi_desc.overlap).
 *
 * The step kernel has the runner's ping-pong shape (mc/mc_runner.h): slots
 * state_arg[0] and state_arg[1] get buffers A and B of width x
 * (rows + 2 H radius) cells, slot iteration_arg gets mc_runner_iteration
 * bytes {first, count = 1}; step i reads A and writes B when i is even. The
 * kernel must treat the local grid as periodic in y with the height bind is
 * given (it is wrong only in rows the runner throws away) and be
 * deterministic: the result is then the same bits for any number of ranks,
 * slab sizes, H and faults.
 *
 * Coordinated recovery: after each chunk the ranks allreduce its status
 * (MPI_Iallreduce, while the next chunk already runs). If any rank's
 * command buffer failed (any kind; mc_device_inject_faults per rank), every
 * rank drops the chunk running since and rolls back to the last checkpoint,
 * which all ranks took after the same chunk, rebuilding what its own fault
 * broke (the queue, or the device after a loss), and replays.
 *
 * Every call is collective over the runner's communicator unless it says
 * otherwise; call them from one thread per rank.
 */
#ifndef MC_MC_MPI_H
#define MC_MC_MPI_H

#include "mc.h"
#include <mpi.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct mc_mpi_runner mc_mpi_runner;

/* What bind fills in: the pipeline and every slot but the state and
 * iteration slots. The runner only borrows the handles: bind makes them,
 * unbind releases them. Zeroed before bind runs. */
typedef struct mc_mpi_binding {
    mc_pipeline *pipeline;
    mc_runner_arg args[MC_MAX_BUFFER_ARGS]; /* BYTES copied when bind returns; BUFFER on bind's device */
    mc_size3 threads_per_threadgroup;       /* 0 = 16 x 16 x 1 */
    void *user_data;
} mc_mpi_binding;

/* Called on the runner's device with the local grid: width x local_height
 * cells (the slab's rows plus both halos), and with overlap once more for
 * the boundary bands' grid (width x 3 H radius cells); each call's BYTES
 * are copied when it returns. Runs again after a device loss on the
 * reopened device. */
typedef mc_status (*mc_mpi_bind_fn)(void *user, mc_device *dev, uint32_t width, uint32_t local_height,
                                    mc_mpi_binding *b);
typedef void (*mc_mpi_unbind_fn)(void *user, mc_mpi_binding *b);

/* How a chunk's halo exchange meets its compute (docs/SCALE.md). */
typedef enum mc_mpi_overlap {
    MC_MPI_OVERLAP_AUTO = 0, /* on where the cost model says it pays, from the figures measured at
                                create (docs/SCALE.md) */
    MC_MPI_OVERLAP_ON = 1,   /* the boundary bands first, sent while the interior computes */
    MC_MPI_OVERLAP_OFF = 2   /* the exchange between chunks, the device idle */
} mc_mpi_overlap;

typedef struct mc_mpi_desc {
    MPI_Comm comm;             /* 0 (or MPI_COMM_NULL) = MPI_COMM_WORLD; duplicated */
    const char *device;        /* "cpu", "cuda", "metal": index = local rank mod devices of the kind;
                                "cuda:N": that one; NULL/"" = $MC_DEVICE or the best */
    int64_t time_limit_ms;     /* as mc_device_desc.time_limit_ms */
    uint32_t cpu_threads;      /* CPU device workers per rank; 0 = the host's cores / its ranks */
    uint32_t width, height;    /* the global grid, cells */
    uint32_t cell_bytes;       /* bytes per cell, > 0 */
    uint32_t radius;           /* rows a step reads on each side; 0 = 1 */
    const void *initial;       /* width * height cells, row-major; read on every rank (its rows and halos) */
    const uint32_t *slab_rows; /* one count per rank, summing to height, each >= radius; NULL = even split */
    /* > 1: 2-D blocks instead of slabs: ranks_x columns by size / ranks_x
     * rows of blocks (even splits; rank r at column r % ranks_x), halos of
     * H radius cells on all four sides, exchanged between chunks in two
     * phases (columns, then rows with the corners); bind gets the block's
     * local width, which the kernel must wrap within. No slab_rows, no
     * overlap. 0 or 1: slabs of whole rows. */
    uint32_t ranks_x;
    uint64_t total_steps;       /* > 0 */
    uint32_t halo_steps;        /* H; 0 = chosen from the measured step and exchange cost */
    double budget_ms;           /* device time per command buffer; 0 = 25 ms */
    uint32_t checkpoint_chunks; /* chunks between coordinated checkpoints; 0 = 16 */
    uint32_t max_recoveries;    /* failures in a row without progress before giving up; 0 = 8 */
    const char *inject_faults;  /* this rank's faults, "KIND@N,..." counted over its command buffers */
    /* Overlap: each chunk first computes the rank's boundary bands (the
     * rows the neighbours need, 3 H radius rows each, on a grid of their
     * own: bind runs once more for that height) and sends them while the
     * whole slab computes. Never a send or receive inside a command
     * buffer: the host posts them between command buffers. */
    mc_mpi_overlap overlap;
    uint32_t state_arg[2];  /* slots of A and B; both 0 = 0 and 1 */
    uint32_t iteration_arg; /* slot of the iteration bytes; 0 with state_arg unset = 2 */
    /* Not NULL: durable checkpoints. Each coordinated checkpoint is also
     * written by every rank to DIR/rank-R-of-N (the runner's format and
     * atomic writes, docs/RUNNER.md; the last two kept). With resume, the
     * ranks start from the newest step whose files all of them hold and
     * that pass every check (run_params, the slab, the checksum); none at
     * all: from the start. */
    const char *checkpoint_dir;
    bool resume;
    const void *run_params; /* identifies the run; compared on resume */
    size_t run_params_len;
    /* Optional: after every chunk all ranks agreed on, on each rank. */
    void (*progress)(void *user, uint64_t step, uint64_t total_steps);
    void *progress_user;
    mc_mpi_bind_fn bind;     /* required */
    mc_mpi_unbind_fn unbind; /* required */
    void *user;
} mc_mpi_desc;

typedef struct mc_mpi_stats {
    int rank, size, local_rank;
    uint32_t row0, rows; /* this rank's slab */
    uint32_t col0, cols; /* and its columns (blocks; a slab: 0, width) */
    uint32_t halo_steps; /* H in force */
    uint32_t halo_rows;  /* H * radius */
    uint64_t steps;      /* done (= total_steps after a successful run) */
    uint64_t chunks;     /* chunks completed (replays count again) */
    uint64_t checkpoints;
    uint64_t resumed_from;         /* the step a resumed run started at; 0 otherwise */
    uint32_t recoveries;           /* coordinated roll-backs (the same on every rank) */
    uint32_t own_faults;           /* of them, caused by this rank's device */
    mc_status last_fault;          /* this rank's last device error, MC_OK if none */
    uint64_t halo_bytes_per_chunk; /* this rank sends (and receives) per chunk */
    bool overlapped;               /* the exchange overlaps the compute (mc_mpi_desc.overlap) */
    double model_step_ms[2];       /* the model's ms per step, between chunks and overlapped, each at its
                                best H (or the given one), from the slowest rank's figures */
    double step_ms;                /* measured device time of one step on this rank */
    double exchange_ms_mean;       /* wall time of one halo exchange, device copies included */
    double exchange_wait_ms_mean;  /* of it, waiting in MPI (the transfer and any peer still computing) */
    double compute_ms_mean;        /* wall time of one chunk on the device */
    double elapsed_ms;             /* mc_mpi_runner_run, wall */
    mc_device_info device;
} mc_mpi_stats;

/* Collective. Opens this rank's device, binds, creates the state and
 * measures one step (and, when halo_steps is 0, the exchange) to pick H.
 * Fails on every rank when it fails on one (the others get
 * MC_ERR_CANCELLED unless their own step failed); the reason is in
 * mc_last_error() on the rank that failed. */
MC_API mc_status mc_mpi_runner_create(const mc_mpi_desc *desc, mc_mpi_runner **out);
/* Collective. Runs to total_steps. Returns the same status on every rank. */
MC_API mc_status mc_mpi_runner_run(mc_mpi_runner *r);
/* Collective. The global grid (width * height cells) into out on rank
 * root; out is ignored (may be NULL) on the other ranks. */
MC_API mc_status mc_mpi_runner_gather(mc_mpi_runner *r, int root, void *out, size_t len);
/* Local. */
MC_API mc_status mc_mpi_runner_get_stats(const mc_mpi_runner *r, mc_mpi_stats *out);
/* Collective (frees the communicator). NULL is a no-op. */
MC_API void mc_mpi_runner_release(mc_mpi_runner *r);

/* Local. The even split: rank i of n gets height / n rows, the first
 * height % n ranks one more. */
MC_API void mc_mpi_even_slabs(uint32_t height, int n, uint32_t *rows);

/* Local. Halo depth from the cost model (docs/SCALE.md): per step a rank
 * pays chunk_ms / H for what a chunk costs besides its steps (exchange,
 * submission, allreduce) and row_ms * (rows + 2 H radius) for compute,
 * least at H = sqrt(chunk_ms / (2 radius row_ms)); clamped to 1 .. max_h. */
MC_API uint32_t mc_mpi_pick_halo(double chunk_ms, double row_ms, uint32_t radius, uint32_t max_h);

#ifdef __cplusplus
}
#endif
#endif
