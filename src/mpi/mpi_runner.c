/*
 * DOC: the distributed runner (include/mc/mc_mpi.h, docs/SCALE.md).
 *
 * Owns: one rank's slab of a periodic 2-D grid, its device objects, the
 * halo exchange between chunks, and the coordinated checkpoint / roll-back.
 * Does not own: the step kernel (bind/unbind make it), the transport (Open
 * MPI), the picture (the caller gathers and writes it).
 *
 * A chunk is: exchange halos on the host (MPI_Isend/Irecv in both
 * directions at once), then up to H steps in command buffers of at most
 * budget_ms of measured device time, then an MPI_Iallreduce of the chunk's
 * status, waited for only after the next chunk is on the device.
 * Overlapped (mpi_plan.c picks it where the cost model says it pays), the
 * chunk first steps two boundary bands on grids of their own and sends
 * them while the slab computes; the halos received meanwhile are copied
 * in on the device at the start of the next chunk (mpi_device.c). No MPI
 * call ever waits inside device work (mlx issue 1849): a command buffer
 * that blocked on a peer would run into the watchdog (F145, F146). The
 * allreduce takes the largest status code, so every rank sees the same
 * outcome, and after a failure anywhere every rank restores the checkpoint
 * they all took after the same chunk and replays: the kernel is
 * deterministic, so the result is the same bits (F681, F687, F695).
 *
 * This file: the public entry points and the chunk loop; the other parts
 * and the defaults are listed in mpi_internal.h.
 */
#include "mpi/mpi_internal.h"

#include <stdlib.h>

/* Every rank learns the largest status code any rank had: the same outcome
 * everywhere, and the worst one wins. */
mc_status mc__mpi_agree(mc_mpi_runner *r, mc_status local)
{
    int mine = (int)local, all = 0;
    if (MPI_Allreduce(&mine, &all, 1, MPI_INT, MPI_MAX, r->comm) != MPI_SUCCESS)
        return mc__fail(MC_ERR_IO, "MPI_Allreduce failed");
    if (all != MC_OK && local == MC_OK)
        return mc__fail((mc_status)all, "another rank failed with %s", mc_status_name((mc_status)all));
    return (mc_status)all;
}

static bool recoverable(mc_status s)
{
    return mc_status_is_device_error(s) || s == MC_ERR_WAIT_TIMEOUT;
}

/* One chunk whose status is being agreed on (MPI_Iallreduce) while the
 * next one already runs: the agreement's latency, the only cost that grows
 * with the number of ranks, hides behind compute. If it reports a failure
 * the next chunk is thrown away with the rest of the roll-back. */
typedef struct agreeing {
    bool active;
    uint32_t k;
    bool ckpt;
    int mine, all;
    MPI_Request req;
} agreeing;

static mc_status agreement(mc_mpi_runner *r, agreeing *a)
{
    if (MPI_Wait(&a->req, MPI_STATUS_IGNORE) != MPI_SUCCESS) return mc__fail(MC_ERR_IO, "MPI_Iallreduce failed");
    a->active = false;
    return (mc_status)a->all;
}

mc_status mc_mpi_runner_run(mc_mpi_runner *r)
{
    if (!r) return mc__fail(MC_ERR_INVALID_ARGUMENT, "runner is NULL");
    uint64_t t0 = mc__now_ns();
    uint32_t in_a_row = 0, since_ckpt = 0;
    uint64_t fail_step = 0, next = r->step; /* next: where the next chunk starts */
    mc_status pending = MC_OK;              /* a durable write that failed: this rank's failure */
    agreeing prev = {0};
    while (r->step < r->d.total_steps) {
        /* Launch the chunk at `next` (speculative while `prev` is agreed). */
        inflight f = {0};
        uint32_t k = 0;
        mc_status own = MC_OK;
        bool launched = next < r->d.total_steps, ahead = false;
        if (launched) {
            k = (uint32_t)MC__MIN((uint64_t)r->st.halo_steps, r->d.total_steps - next);
            /* Overlap: this chunk's bands give the next chunk's halos, sent
             * while the interior computes; the last chunk needs none. The
             * same on every rank, so every rank posts the same exchanges. */
            ahead = r->overlap && next + k < r->d.total_steps;
            /* Every rank always takes part in the exchange, so that no
             * neighbour waits for it; a failed durable write counts after.
             * With overlap the halos are already there, except after the
             * start or a roll-back (on every rank alike). */
            bool staged = r->halos_ready;
            own = staged ? MC_OK : mc__mpi_exchange(r, next);
            r->halos_ready = false;
            if (pending != MC_OK) own = pending;
            pending = MC_OK;
            inflight bands = {0};
            if (own == MC_OK && ahead) mc__mpi_submit_bands(r, next, k, staged, &bands);
            if (own == MC_OK) mc__mpi_submit(r, next, k, staged && !ahead, &f);
            if (ahead) {
                uint64_t b0 = mc__now_ns();
                mc_status b = mc__mpi_finish(r, &bands, NULL);
                if (own == MC_OK) own = b;
                r->exch_ms_sum += mc__mpi_ms_since(b0);
                uint32_t at = (next + k) & 1u;
                if (own == MC_OK && !r->band[0][at]) own = mc__fail(MC_ERR_DEVICE_LOST, "no device");
                mc__mpi_exchange_post(r, r->band[0][at], r->hr, r->band[1][at], r->hr, &own);
            }
        }
        /* The previous chunk's outcome, the same on every rank. */
        mc_status all = MC_OK;
        if (prev.active) {
            all = agreement(r, &prev);
            if (all == MC_OK) {
                r->step += prev.k;
                r->st.chunks++;
                if (prev.ckpt) pending = mc__mpi_checkpoint_commit(r, r->step);
                since_ckpt = prev.ckpt ? 0 : since_ckpt + 1;
                if (r->step > fail_step) in_a_row = 0;
                if (r->d.progress) r->d.progress(r->d.progress_user, r->step, r->d.total_steps);
            }
        }
        if (launched) {
            uint64_t c0 = f.t0 ? f.t0 : mc__now_ns();
            if (ahead) mc__mpi_take_while_computing(r, &f, &own);
            mc_status done = mc__mpi_finish(r, &f, NULL);
            if (own == MC_OK) own = done;
            r->comp_ms_sum += mc__mpi_ms_since(c0);
            r->comp_n++;
            if (ahead) {
                own = mc__mpi_exchange_complete(r, r->halo_in, 0, r->hr, own);
                r->halos_ready = true;
            }
        }
        if (all == MC_OK && launched) {
            /* Checkpoint after the same chunk on every rank: the count
             * includes the chunk just agreed. */
            bool ckpt = since_ckpt + 1 >= r->d.checkpoint_chunks || next + k == r->d.total_steps;
            if (own == MC_OK && ckpt) own = mc__mpi_checkpoint_stage(r, next + k);
            prev = (agreeing){.active = true, .k = k, .ckpt = ckpt, .mine = (int)own};
            if (MPI_Iallreduce(&prev.mine, &prev.all, 1, MPI_INT, MPI_MAX, r->comm, &prev.req) != MPI_SUCCESS) {
                r->st.elapsed_ms = mc__mpi_ms_since(t0);
                return mc__fail(MC_ERR_IO, "MPI_Iallreduce failed");
            }
            next += k;
            continue;
        }
        if (all == MC_OK) continue; /* nothing launched: the last chunk was just agreed */

        /* A failure anywhere in the previous chunk: every rank rolls back
         * together; the chunk launched since is discarded. */
        own = prev.mine != MC_OK ? (mc_status)prev.mine : own;
        r->st.recoveries++;
        if (own != MC_OK) {
            r->st.own_faults++;
            r->st.last_fault = own;
        }
        fail_step = MC__MAX(fail_step, r->step + prev.k);
        mc__log(MC_LOG_WARN, "mpi.recovering", "rank %d: %s in steps %llu to %llu (%s here); back to step %llu",
                r->rank, mc_status_name(all), (unsigned long long)r->step, (unsigned long long)(r->step + prev.k),
                mc_status_name(own), (unsigned long long)r->ckpt_step);
        if (!recoverable(all)) {
            r->st.elapsed_ms = mc__mpi_ms_since(t0);
            if (own == all) return own;
            return own == MC_OK ? mc__fail(all, "another rank failed with %s", mc_status_name(all))
                                : mc__fail(all, "%s here; another rank failed with %s", mc_status_name(own),
                                           mc_status_name(all));
        }
        for (;;) {
            if (++in_a_row > r->d.max_recoveries) {
                r->st.elapsed_ms = mc__mpi_ms_since(t0);
                return mc__fail(all, "gave up after %u failures in a row without progress", in_a_row - 1);
            }
            mc_status s = mc__mpi_rebuild(r, own, in_a_row);
            if (s == MC_OK) s = mc__mpi_restore(r);
            mc_status both = mc__mpi_agree(r, s);
            if (both == MC_OK) break;
            own = s != MC_OK ? s : own;
            if (!recoverable(both)) {
                r->st.elapsed_ms = mc__mpi_ms_since(t0);
                return both;
            }
        }
        since_ckpt = 0;
        next = r->step;
        pending = MC_OK;
    }
    r->st.steps = r->step;
    r->st.elapsed_ms = mc__mpi_ms_since(t0);
    mc_status s = mc__mpi_agree(r, pending);
    if (s == MC_OK) mc__mpi_remove_set_aside(r);
    return s;
}

mc_status mc_mpi_runner_create(const mc_mpi_desc *desc, mc_mpi_runner **out)
{
    if (out) *out = NULL;
    if (!desc || !out) return mc__fail(MC_ERR_INVALID_ARGUMENT, "desc and out are required");
    int init = 0;
    MPI_Initialized(&init);
    if (!init) return mc__fail(MC_ERR_INVALID_STATE, "MPI is not initialised (call MPI_Init first)");
    mc_mpi_runner *r = calloc(1, sizeof *r);
    if (!r) return mc__fail(MC_ERR_NO_MEMORY, "mpi runner");
    MPI_Comm base = desc->comm ? desc->comm : MPI_COMM_WORLD;
    MPI_Comm local = MPI_COMM_NULL;
    if (MPI_Comm_dup(base, &r->comm) != MPI_SUCCESS ||
        MPI_Comm_split_type(r->comm, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &local) != MPI_SUCCESS) {
        free(r);
        return mc__fail(MC_ERR_IO, "MPI communicator setup failed");
    }
    MPI_Comm_rank(r->comm, &r->rank);
    MPI_Comm_size(r->comm, &r->size);
    MPI_Comm_rank(local, &r->local_rank);
    MPI_Comm_size(local, &r->local_size);
    MPI_Comm_free(&local);
    r->row_type = MPI_DATATYPE_NULL;

    mc_status s = mc__mpi_setup(r, desc);
    if (s == MC_OK) s = mc__mpi_durable_setup(r, desc);
    if ((s = mc__mpi_agree(r, s)) != MC_OK) goto fail;
    mc__mpi_remove_set_aside(r);
    if (r->dir && desc->resume && (s = mc__mpi_resume(r)) != MC_OK) goto fail;

    double step_ms = 0, fixed[3] = {0, 0, 0};
    s = mc__mpi_measure(r, &step_ms, fixed);
    if ((s = mc__mpi_agree(r, s)) != MC_OK) goto fail;
    /* H, overlap and the command-buffer size from the slowest rank, so
     * every rank picks the same. */
    double mine[4] = {step_ms / r->local_h, fixed[0], fixed[1], fixed[2]}, worst[4] = {0, 0, 0, 0};
    MPI_Allreduce(mine, worst, 4, MPI_DOUBLE, MPI_MAX, r->comm);
    mc__mpi_set_steps_per_cb(r, worst[0]);
    uint32_t h = 0;
    bool overlap = false;
    mc__mpi_plan(r, worst, &h, &overlap);
    if (h * r->d.radius != r->hr || overlap != r->overlap) {
        /* Deeper halos, a taller local grid, or the bands: bind again. */
        mc__mpi_unbind_all(r);
        r->overlap = overlap;
        s = mc__mpi_set_halo(r, h);
        if (s == MC_OK) s = mc__mpi_bind_all(r);
    }
    /* Measuring wrote over the state: back to the start (or the resumed step). */
    if (s == MC_OK) s = mc__mpi_restore(r);
    if ((s = mc__mpi_agree(r, s)) != MC_OK) goto fail;
    mc__mpi_set_steps_per_cb(r, worst[0]);
    r->st.halo_steps = h;
    r->st.halo_rows = r->hr;
    r->st.step_ms = step_ms;
    if (r->d.inject_faults && *r->d.inject_faults) s = mc_device_inject_faults(r->dev, r->d.inject_faults);
    if ((s = mc__mpi_agree(r, s)) != MC_OK) goto fail;
    r->st.rank = r->rank;
    r->st.size = r->size;
    r->st.local_rank = r->local_rank;
    r->st.row0 = r->row0;
    r->st.rows = r->my_rows;
    r->st.halo_bytes_per_chunk = 2ull * r->hr * r->row_bytes + 2ull * r->hc * r->d.cell_bytes * r->my_rows;
    r->st.col0 = r->col0;
    r->st.cols = r->my_cols;
    r->st.overlapped = r->overlap;
    *out = r;
    return MC_OK;
fail:
    mc_mpi_runner_release(r);
    return s;
}

mc_status mc_mpi_runner_get_stats(const mc_mpi_runner *r, mc_mpi_stats *out)
{
    if (!r || !out) return mc__fail(MC_ERR_INVALID_ARGUMENT, "runner and out are required");
    *out = r->st;
    out->steps = r->step;
    out->exchange_ms_mean = r->exch_n ? r->exch_ms_sum / (double)r->exch_n : 0;
    out->compute_ms_mean = r->comp_n ? r->comp_ms_sum / (double)r->comp_n : 0;
    out->exchange_wait_ms_mean = r->exch_n ? r->wait_ms_sum / (double)r->exch_n : 0;
    return MC_OK;
}

void mc_mpi_runner_release(mc_mpi_runner *r)
{
    if (!r) return;
    mc__mpi_close_device(r);
    if (r->row_type != MPI_DATATYPE_NULL) MPI_Type_free(&r->row_type);
    MPI_Comm_free(&r->comm);
    free(r->rows);
    free(r->cols);
    free(r->colbuf);
    free(r->ckpt);
    free(r->ckpt_new);
    free(r->halo[0]); /* one block for all four */
    free(r->dir);
    free(r->params);
    free(r);
}
