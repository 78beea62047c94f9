/*
 * DOC: the cost model of the distributed runner (docs/SCALE.md)
 *
 * Owns: measuring one step, a command buffer's round trip, the exchange
 * and the allreduce, and choosing from those figures (the slowest rank's,
 * so every rank chooses the same) H, whether to overlap, and how many
 * steps fit one command buffer of the budget.
 */
#include "mpi/mpi_internal.h"

#include <math.h>

uint32_t mc_mpi_pick_halo(double chunk_ms, double row_ms, uint32_t radius, uint32_t max_h)
{
    if (max_h < 1) max_h = 1;
    if (radius < 1) radius = 1;
    if (!(chunk_ms > 0) || !(row_ms > 0)) return max_h < MAX_AUTO_HALO ? max_h : MAX_AUTO_HALO;
    double h = sqrt(chunk_ms / (2.0 * radius * row_ms));
    uint32_t hi = h < 1 ? 1u : h > (double)max_h ? max_h : (uint32_t)(h + 0.5);
    return hi < 1 ? 1u : hi;
}

/* As many steps per command buffer as fit the budget at the slowest
 * rank's measured time per row. */
void mc__mpi_set_steps_per_cb(mc_mpi_runner *r, double row_ms)
{
    double step = row_ms * r->local_h;
    r->steps_per_cb = step > 0 ? (uint32_t)MC__MIN(1e6, MC__MAX(1.0, r->d.budget_ms / step)) : 1u;
    double bands = row_ms * 6.0 * r->hr; /* two bands of 3 hr rows */
    r->band_steps_per_cb = bands > 0 ? (uint32_t)MC__MIN(1e6, MC__MAX(1.0, r->d.budget_ms / bands)) : 1u;
}

/* One step on the device, timed (the second of two: the first pays for
 * warming up), and what a chunk costs besides its steps: the exchange,
 * submitting and waiting for the command buffer, and the allreduce. Those
 * are paid once per chunk, so they size H (mc_mpi_pick_halo). */
mc_status mc__mpi_measure(mc_mpi_runner *r, double *step_ms, double fixed[3])
{
    uint64_t ns = 0;
    mc_status s = MC_OK;
    double wall = 0, best_x = 0, best_a = 0;
    for (int i = 0; i < 2 && s == MC_OK; i++) {
        uint64_t t0 = mc__now_ns();
        s = mc__mpi_compute(r, 0, 1, &ns);
        wall = mc__mpi_ms_since(t0);
    }
    *step_ms = (double)ns / 1e6;
    /* Exchanging the initial state writes the halos it already has. A
     * barrier first, so that the time is the exchange, not a late peer. */
    for (int i = 0; i < 3; i++) {
        MPI_Barrier(r->comm);
        uint64_t t0 = mc__now_ns();
        if (s == MC_OK) s = mc__mpi_exchange(r, 0);
        double x = mc__mpi_ms_since(t0);
        best_x = i ? MC__MIN(best_x, x) : x;
        t0 = mc__now_ns();
        int one = 1, all = 0;
        MPI_Allreduce(&one, &all, 1, MPI_INT, MPI_MAX, r->comm);
        x = mc__mpi_ms_since(t0);
        best_a = i ? MC__MIN(best_a, x) : x;
    }
    fixed[0] = MC__MAX(0.0, wall - *step_ms); /* a command buffer's round trip */
    fixed[1] = best_x;
    fixed[2] = best_a;
    r->exch_ms_sum = r->comp_ms_sum = r->wait_ms_sum = 0;
    r->exch_n = r->comp_n = 0;
    return s;
}

/* The cost model of docs/SCALE.md, per step, in ms: rows computed (the
 * slab, and `extra` rows per halo step: 2 for the halos, 8 with overlap's
 * two bands of 3) plus what a chunk pays once, over its H steps. */
static double model_step_ms(const mc_mpi_runner *r, double row_ms, double chunk_ms, uint32_t extra, uint32_t h)
{
    return row_ms * ((double)r->my_rows + (double)extra * h * r->d.radius) + chunk_ms / h;
}

/* H, and whether to overlap, from the slowest rank's figures (so every
 * rank decides the same): between chunks a chunk pays a round trip, the
 * exchange and the allreduce; overlapped it pays two round trips (the
 * bands, the slab) and the allreduce, the exchange hidden behind the slab,
 * for 6 H radius more rows per step. AUTO takes the cheaper at its best H. */
void mc__mpi_plan(mc_mpi_runner *r, const double worst[4], uint32_t *h_out, bool *overlap_out)
{
    double row = worst[0], chunk[2] = {worst[1] + worst[2] + worst[3], 2 * worst[1] + worst[3]};
    static const uint32_t extra[2] = {2, 8};
    uint32_t h[2];
    double cost[2];
    for (int m = 0; m < 2; m++) {
        h[m] = r->d.halo_steps;
        if (!h[m]) {
            /* mc_mpi_pick_halo's 2 H radius rows, scaled to these. */
            h[m] = mc_mpi_pick_halo(chunk[m], row * extra[m] / 2.0, r->d.radius, r->max_h);
            /* A chunk fits one command buffer of the budget. */
            h[m] = MC__MAX(1u, MC__MIN(h[m], r->steps_per_cb));
        }
        cost[m] = model_step_ms(r, row, chunk[m], extra[m], h[m]);
    }
    bool overlap = r->d.overlap == MC_MPI_OVERLAP_ON || (r->d.overlap == MC_MPI_OVERLAP_AUTO && cost[1] < cost[0]);
    if (r->px > 1) overlap = false; /* blocks: between chunks only */
    *overlap_out = overlap;
    *h_out = h[overlap];
    r->st.model_step_ms[0] = cost[0];
    r->st.model_step_ms[1] = cost[1];
}
