/*
 * DOC: checkpoints of the distributed runner (mpi_internal.h)
 *
 * Owns: the rank's own cells copied aside after a chunk and made the
 * checkpoint once every rank agreed (so all hold the same step), written
 * to the rank's folder when durable; the roll-back to it; resuming from
 * the newest step every rank holds; and the files set aside at resume,
 * removed when they can no longer be of use.
 */
#include "mpi/mpi_internal.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* The rank's own cells (rows hr.., columns hc..) to or from a packed
 * buffer: one copy for a slab, one per row for a block. */
static mc_status own_io(mc_mpi_runner *r, mc_buffer *b, uint8_t *packed, bool write)
{
    if (!r->hc)
        return write ? mc__mpi_rows_write(r, b, r->hr, r->my_rows, packed)
                     : mc__mpi_rows_read(r, b, r->hr, r->my_rows, packed);
    mc_status s = MC_OK;
    size_t x0 = (size_t)r->hc * r->d.cell_bytes;
    for (uint32_t y = 0; y < r->my_rows && s == MC_OK; y++) {
        size_t at = (size_t)(r->hr + y) * r->row_bytes + x0;
        uint8_t *p = packed + (size_t)y * r->own_row_bytes;
        s = write ? mc_buffer_write(b, at, p, r->own_row_bytes) : mc_buffer_read(b, at, p, r->own_row_bytes);
    }
    return s;
}

/* The rank's own rows of the checkpoint go back in place; the halos are
 * filled by the exchange that starts every chunk. */
mc_status mc__mpi_restore(mc_mpi_runner *r)
{
    r->step = r->ckpt_step;
    r->halos_ready = false;
    mc_buffer *b = mc__mpi_state_at(r, r->step);
    return b ? own_io(r, b, r->ckpt, true) : mc__fail(MC_ERR_DEVICE_LOST, "no device");
}

/* Copies the rank's rows after `step` aside; mc__mpi_checkpoint_commit
 * makes them the checkpoint once every rank has agreed that the chunk
 * succeeded, so all ranks always hold the checkpoint of the same step. */
mc_status mc__mpi_checkpoint_stage(mc_mpi_runner *r, uint64_t step)
{
    return own_io(r, mc__mpi_state_at(r, step), r->ckpt_new, false);
}

mc_status mc__mpi_checkpoint_commit(mc_mpi_runner *r, uint64_t step)
{
    uint8_t *t = r->ckpt;
    r->ckpt = r->ckpt_new;
    r->ckpt_new = t;
    r->ckpt_step = step;
    r->st.checkpoints++;
    if (!r->dir) return MC_OK;
    const void *state[1] = {r->ckpt};
    size_t size = (size_t)r->my_rows * r->own_row_bytes;
    return mc__ckpt_write(r->dir, r->params, r->params_len, step, state, &size, 1);
}

/* A rank's newest checkpoint that no peer holds is renamed with this
 * suffix at resume (below) rather than deleted, so that an operator can
 * still look at it if that run fails too. It is stale from then on: the
 * ranks restart from an earlier step, replay reproduces that step bit for
 * bit, and the loader never reads these names. So every rank removes its
 * own at the next start (before resuming) and when a run succeeds. */
#define AHEAD_SUFFIX ".ahead-of-peers"

void mc__mpi_remove_set_aside(mc_mpi_runner *r)
{
    DIR *d = r->dir ? opendir(r->dir) : NULL;
    if (!d) return;
    size_t sl = strlen(AHEAD_SUFFIX);
    struct dirent *e;
    while ((e = readdir(d))) {
        size_t n = strlen(e->d_name);
        if (n <= sl || strcmp(e->d_name + n - sl, AHEAD_SUFFIX)) continue;
        char path[4300];
        snprintf(path, sizeof path, "%s/%s", r->dir, e->d_name);
        if (unlink(path) == 0) mc__log(MC_LOG_INFO, "mpi.set_aside_removed", "removed %s (stale)", path);
        else mc__log(MC_LOG_WARN, "mpi.set_aside_kept", "cannot remove %s: %s", path, strerror(errno));
    }
    closedir(d);
}

/* Every rank loads its newest valid file; they start from the oldest of
 * those steps. All ranks write after the same chunk and keep two, so a
 * rank ahead (killed while the others were still writing) holds that step
 * as its previous file: the newer one, which no peer has, is set aside. */
mc_status mc__mpi_resume(mc_mpi_runner *r)
{
    size_t size = (size_t)r->my_rows * r->own_row_bytes;
    void *state[1] = {r->ckpt_new};
    uint64_t it = 0;
    bool found = false;
    mc_status s = mc__ckpt_load(r->dir, "mpi", r->params, r->params_len, &size, 1, state, &it, &found);
    for (int round = 0; round < 2; round++) {
        long long mine[2] = {found ? (long long)it : 0, found ? -(long long)it : 0}, all[2] = {0, 0};
        if ((s = mc__mpi_agree(r, s)) != MC_OK) return s;
        MPI_Allreduce(mine, all, 2, MPI_LONG_LONG, MPI_MIN, r->comm);
        uint64_t lo = (uint64_t)all[0], hi = (uint64_t)-all[1];
        if (lo == hi || lo == 0) {
            if (lo > 0) {
                uint8_t *t = r->ckpt;
                r->ckpt = r->ckpt_new;
                r->ckpt_new = t;
                r->ckpt_step = lo;
                r->st.resumed_from = lo;
            }
            return MC_OK; /* lo == 0: some rank has none; all start afresh */
        }
        if (it > lo) {
            char from[4200], to[4220];
            snprintf(from, sizeof from, "%s/checkpoint-%020llu.mcck", r->dir, (unsigned long long)it);
            snprintf(to, sizeof to, "%s" AHEAD_SUFFIX, from);
            if (rename(from, to) != 0) s = mc__fail(MC_ERR_IO, "cannot set aside %s", from);
            if (s == MC_OK) s = mc__ckpt_load(r->dir, "mpi", r->params, r->params_len, &size, 1, state, &it, &found);
            if (s == MC_OK && (!found || it != lo))
                s = mc__fail(MC_ERR_INVALID_STATE, "rank %d has no checkpoint of step %llu, which every other has",
                             r->rank, (unsigned long long)lo);
        }
    }
    return mc__mpi_agree(r, mc__fail(MC_ERR_INVALID_STATE, "the ranks' checkpoints have no step in common"));
}

mc_status mc__mpi_durable_setup(mc_mpi_runner *r, const mc_mpi_desc *d)
{
    if (!d->checkpoint_dir) return MC_OK;
    size_t n = strlen(d->checkpoint_dir) + 64;
    if (!(r->dir = malloc(n))) return mc__fail(MC_ERR_NO_MEMORY, "checkpoint folder");
    mc_status s = mc__ckpt_prepare_dir(d->checkpoint_dir);
    snprintf(r->dir, n, "%s/rank-%d-of-%d", d->checkpoint_dir, r->rank, r->size);
    if (s == MC_OK) s = mc__ckpt_prepare_dir(r->dir);
    if (s != MC_OK) return s;
    uint32_t slab[8] = {r->d.width, r->d.height, r->d.cell_bytes, r->d.radius,
                        r->row0,    r->my_rows,  r->col0,         r->my_cols};
    size_t slab_len = (r->px > 1 ? 8 : 6) * sizeof *slab; /* slabs: as before blocks existed */
    r->params_len = d->run_params_len + slab_len;
    if (!(r->params = malloc(r->params_len))) return mc__fail(MC_ERR_NO_MEMORY, "run params");
    if (d->run_params_len) memcpy(r->params, d->run_params, d->run_params_len);
    memcpy(r->params + d->run_params_len, slab, slab_len);
    return MC_OK;
}
