/*
 * DOC: the grid among the ranks (the distributed runner, mpi_internal.h)
 *
 * Owns: the checks of an mc_mpi_desc, the cut of the grid into slabs (a
 * column of ranks) or blocks (ranks_x columns of them), each rank's
 * neighbours, its halo rows and columns for H steps, the first state it
 * takes from the caller's grid, and the gather that puts the grid back
 * together at the end.
 */
#include "mpi/mpi_internal.h"

#include <stdlib.h>
#include <string.h>

void mc_mpi_even_slabs(uint32_t height, int n, uint32_t *rows)
{
    if (!rows || n <= 0) return;
    for (int i = 0; i < n; i++) rows[i] = height / (uint32_t)n + ((uint32_t)i < height % (uint32_t)n ? 1u : 0u);
}

static mc_status check_desc(const mc_mpi_desc *d, int size)
{
    if (!d->bind || !d->unbind) return mc__fail(MC_ERR_INVALID_ARGUMENT, "bind and unbind are required");
    if (!d->width || !d->height || !d->cell_bytes)
        return mc__fail(MC_ERR_INVALID_ARGUMENT, "width %u, height %u, cell_bytes %u: none may be 0", d->width,
                        d->height, d->cell_bytes);
    if (!d->initial) return mc__fail(MC_ERR_INVALID_ARGUMENT, "initial is NULL");
    if (!d->total_steps) return mc__fail(MC_ERR_INVALID_ARGUMENT, "total_steps is 0");
    if ((unsigned)d->overlap > MC_MPI_OVERLAP_OFF)
        return mc__fail(MC_ERR_INVALID_ARGUMENT, "overlap is %u (AUTO 0, ON 1, OFF 2)", (unsigned)d->overlap);
    if (d->budget_ms < 0 || d->budget_ms > 60000)
        return mc__fail(MC_ERR_INVALID_ARGUMENT, "budget_ms is %g (0 to 60000)", d->budget_ms);
    if (d->state_arg[0] >= MC_MAX_BUFFER_ARGS || d->state_arg[1] >= MC_MAX_BUFFER_ARGS ||
        d->iteration_arg >= MC_MAX_BUFFER_ARGS || d->state_arg[0] == d->state_arg[1] ||
        d->iteration_arg == d->state_arg[0] || d->iteration_arg == d->state_arg[1])
        return mc__fail(MC_ERR_INVALID_ARGUMENT,
                        "state_arg %u, %u and iteration_arg %u must be distinct slots below %d", d->state_arg[0],
                        d->state_arg[1], d->iteration_arg, MC_MAX_BUFFER_ARGS);
    if ((uint64_t)d->width * d->cell_bytes > (uint64_t)INT32_MAX)
        return mc__fail(MC_ERR_INVALID_ARGUMENT, "a row of %u cells of %u bytes is too long", d->width, d->cell_bytes);
    if (d->ranks_x > 1) {
        if ((uint32_t)size % d->ranks_x)
            return mc__fail(MC_ERR_INVALID_ARGUMENT, "ranks_x %u does not divide the %d ranks", d->ranks_x, size);
        if (d->slab_rows) return mc__fail(MC_ERR_INVALID_ARGUMENT, "slab_rows is for slabs, not blocks (ranks_x)");
        if (d->overlap == MC_MPI_OVERLAP_ON)
            return mc__fail(MC_ERR_INVALID_ARGUMENT, "blocks (ranks_x) exchange between chunks: no overlap");
        if (d->ranks_x > d->width)
            return mc__fail(MC_ERR_INVALID_ARGUMENT, "%u columns of blocks for %u cells: every block needs a column",
                            d->ranks_x, d->width);
    }
    uint32_t py = d->ranks_x > 1 ? (uint32_t)size / d->ranks_x : (uint32_t)size;
    if (py > d->height)
        return mc__fail(MC_ERR_INVALID_ARGUMENT, "%d ranks for %u rows: every rank needs a row", size, d->height);
    if (d->slab_rows) {
        uint64_t sum = 0;
        for (int i = 0; i < size; i++) {
            if (d->slab_rows[i] < (d->radius ? d->radius : 1u))
                return mc__fail(MC_ERR_INVALID_ARGUMENT, "slab of rank %d has %u rows; at least the radius (%u)", i,
                                d->slab_rows[i], d->radius ? d->radius : 1u);
            sum += d->slab_rows[i];
        }
        if (sum != d->height)
            return mc__fail(MC_ERR_INVALID_ARGUMENT, "slab rows sum to %llu, the grid has %u", (unsigned long long)sum,
                            d->height);
    }
    return MC_OK;
}

/* H steps per chunk: H * radius halo rows on each side. */
mc_status mc__mpi_set_halo(mc_mpi_runner *r, uint32_t h)
{
    r->hr = h * r->d.radius;
    r->hc = r->px > 1 ? r->hr : 0;
    r->lw = r->my_cols + 2 * r->hc;
    r->row_bytes = (size_t)r->lw * r->d.cell_bytes;
    r->local_h = r->my_rows + 2 * r->hr;
    free(r->halo[0]);
    memset(r->halo, 0, sizeof r->halo);
    size_t halo = (size_t)r->hr * r->row_bytes;
    uint8_t *all = malloc(4 * halo);
    for (int i = 0; all && i < 4; i++) r->halo[i] = all + (size_t)i * halo;
    free(r->colbuf);
    r->colbuf = r->hc ? malloc(4 * (size_t)r->hc * r->d.cell_bytes * r->my_rows) : NULL;
    if (!all || (r->hc && !r->colbuf)) return mc__fail(MC_ERR_NO_MEMORY, "halo rows");
    /* The unit of the row exchange: one local row. */
    if (r->row_type != MPI_DATATYPE_NULL) MPI_Type_free(&r->row_type);
    if (MPI_Type_contiguous((int)r->row_bytes, MPI_BYTE, &r->row_type) != MPI_SUCCESS ||
        MPI_Type_commit(&r->row_type) != MPI_SUCCESS) {
        r->row_type = MPI_DATATYPE_NULL;
        return mc__fail(MC_ERR_IO, "MPI row type");
    }
    return MC_OK;
}

mc_status mc__mpi_setup(mc_mpi_runner *r, const mc_mpi_desc *desc)
{
    int size = r->size;
    r->d = *desc;
    if (!r->d.radius) r->d.radius = 1;
    if (!r->d.budget_ms) r->d.budget_ms = DEFAULT_BUDGET_MS;
    if (!r->d.checkpoint_chunks) r->d.checkpoint_chunks = DEFAULT_CHECKPOINT_CHUNKS;
    if (!r->d.max_recoveries) r->d.max_recoveries = DEFAULT_MAX_RECOVERIES;
    if (!r->d.state_arg[0] && !r->d.state_arg[1]) {
        r->d.state_arg[1] = 1;
        if (!r->d.iteration_arg) r->d.iteration_arg = 2;
    }
    mc_status s = check_desc(&r->d, size);
    if (s != MC_OK) return s;
    /* Slabs: px 1, rows per rank. Blocks: rows per row of blocks and
     * columns per column of blocks, both even splits. */
    r->px = r->d.ranks_x > 1 ? r->d.ranks_x : 1;
    r->py = (uint32_t)size / r->px;
    r->bx = (uint32_t)r->rank % r->px;
    r->by = (uint32_t)r->rank / r->px;
    r->up = (int)(((r->by + r->py - 1) % r->py) * r->px + r->bx);
    r->down = (int)(((r->by + 1) % r->py) * r->px + r->bx);
    r->left = (int)(r->by * r->px + (r->bx + r->px - 1) % r->px);
    r->right = (int)(r->by * r->px + (r->bx + 1) % r->px);
    r->rows = malloc((size_t)size * sizeof *r->rows);
    r->cols = malloc((size_t)size * sizeof *r->cols);
    uint32_t *split_y = malloc(r->py * sizeof *split_y), *split_x = malloc(r->px * sizeof *split_x);
    if (!r->rows || !r->cols || !split_y || !split_x) {
        free(split_y);
        free(split_x);
        return mc__fail(MC_ERR_NO_MEMORY, "slabs");
    }
    if (desc->slab_rows) memcpy(split_y, desc->slab_rows, (size_t)size * sizeof *r->rows);
    else mc_mpi_even_slabs(r->d.height, (int)r->py, split_y);
    mc_mpi_even_slabs(r->d.width, (int)r->px, split_x);
    for (int i = 0; i < size; i++) {
        r->rows[i] = split_y[(uint32_t)i / r->px];
        r->cols[i] = split_x[(uint32_t)i % r->px];
    }
    for (uint32_t j = 0; j < r->by; j++) r->row0 += split_y[j];
    for (uint32_t j = 0; j < r->bx; j++) r->col0 += split_x[j];
    free(split_y);
    free(split_x);
    uint32_t min_rows = UINT32_MAX, min_cols = UINT32_MAX;
    for (int i = 0; i < size; i++) {
        min_rows = MC__MIN(min_rows, r->rows[i]);
        min_cols = MC__MIN(min_cols, r->cols[i]);
    }
    if (min_rows < r->d.radius)
        return mc__fail(MC_ERR_INVALID_ARGUMENT, "%u rows on %d ranks: a slab has %u rows, fewer than the radius %u",
                        r->d.height, size, min_rows, r->d.radius);
    if (r->px > 1 && min_cols < r->d.radius)
        return mc__fail(MC_ERR_INVALID_ARGUMENT, "%u columns in %u blocks: a block has %u, fewer than the radius %u",
                        r->d.width, r->px, min_cols, r->d.radius);
    r->my_rows = r->rows[r->rank];
    r->my_cols = r->cols[r->rank];
    r->own_row_bytes = (size_t)r->my_cols * r->d.cell_bytes;
    /* The halo may not reach past the neighbour's slab (or block). */
    uint32_t max_h = min_rows / r->d.radius;
    if (r->px > 1) max_h = MC__MIN(max_h, min_cols / r->d.radius);
    if (r->d.halo_steps > max_h)
        return mc__fail(MC_ERR_INVALID_ARGUMENT, "halo of %u steps needs %u rows in every slab; the smallest has %u",
                        r->d.halo_steps, r->d.halo_steps * r->d.radius, MC__MIN(min_rows, min_cols));
    r->max_h = MC__MIN(max_h, MAX_AUTO_HALO);
    r->steps_per_cb = r->band_steps_per_cb = 1; /* until measured */
    /* Automatic H is measured at H = 1, then the slab is rebuilt deeper. */
    if ((s = mc__mpi_set_halo(r, r->d.halo_steps ? r->d.halo_steps : 1)) != MC_OK) return s;
    size_t own = (size_t)r->my_rows * r->own_row_bytes;
    r->ckpt = malloc(own);
    r->ckpt_new = malloc(own);
    if (!r->ckpt || !r->ckpt_new) return mc__fail(MC_ERR_NO_MEMORY, "slab of %zu bytes", own);
    const uint8_t *init = desc->initial;
    size_t grid_row = (size_t)r->d.width * r->d.cell_bytes;
    for (uint32_t y = 0; y < r->my_rows; y++)
        memcpy(r->ckpt + (size_t)y * r->own_row_bytes,
               init + (size_t)(r->row0 + y) * grid_row + (size_t)r->col0 * r->d.cell_bytes, r->own_row_bytes);
    r->ckpt_step = 0;
    if ((s = mc__mpi_pick_device(r)) != MC_OK) return s;
    /* Measured without bands; mc__mpi_plan decides (mc_mpi_runner_create). */
    r->overlap = r->d.overlap == MC_MPI_OVERLAP_ON;
    if ((s = mc__mpi_open_device(r)) != MC_OK) return s;
    return mc__mpi_restore(r);
}

/* Blocks: every rank's block, packed, to root in rank order (bytes), then
 * into place. */
static mc_status gather_blocks(mc_mpi_runner *r, int root, void *out, size_t grid_bytes)
{
    mc_status s = MC_OK;
    int *counts = NULL, *displs = NULL;
    uint8_t *tmp = NULL;
    if (grid_bytes > (size_t)INT32_MAX) s = mc__fail(MC_ERR_INVALID_ARGUMENT, "blocks gather at most 2 GiB");
    if (s == MC_OK && r->rank == root) {
        counts = malloc((size_t)r->size * sizeof *counts);
        displs = malloc((size_t)r->size * sizeof *displs);
        tmp = malloc(grid_bytes);
        if (!counts || !displs || !tmp) s = mc__fail(MC_ERR_NO_MEMORY, "gather");
        for (int i = 0, at = 0; s == MC_OK && i < r->size; at += counts[i], i++) {
            counts[i] = (int)((size_t)r->rows[i] * r->cols[i] * r->d.cell_bytes);
            displs[i] = at;
        }
    }
    if ((s = mc__mpi_agree(r, s)) == MC_OK &&
        MPI_Gatherv(r->ckpt, (int)((size_t)r->my_rows * r->own_row_bytes), MPI_BYTE, tmp, counts, displs, MPI_BYTE,
                    root, r->comm) != MPI_SUCCESS)
        s = mc__fail(MC_ERR_IO, "MPI_Gatherv failed");
    if (s == MC_OK && r->rank == root) {
        size_t cell = r->d.cell_bytes, grid_row = (size_t)r->d.width * cell;
        for (int i = 0; i < r->size; i++) {
            uint32_t bx = (uint32_t)i % r->px, by = (uint32_t)i / r->px, row0 = 0, col0 = 0;
            for (uint32_t j = 0; j < by; j++) row0 += r->rows[j * r->px];
            for (uint32_t j = 0; j < bx; j++) col0 += r->cols[j];
            size_t own_row = (size_t)r->cols[i] * cell;
            for (uint32_t y = 0; y < r->rows[i]; y++)
                memcpy((uint8_t *)out + (size_t)(row0 + y) * grid_row + (size_t)col0 * cell,
                       tmp + displs[i] + (size_t)y * own_row, own_row);
        }
    }
    free(counts);
    free(displs);
    free(tmp);
    return s;
}

mc_status mc_mpi_runner_gather(mc_mpi_runner *r, int root, void *out, size_t len)
{
    if (!r) return mc__fail(MC_ERR_INVALID_ARGUMENT, "runner is NULL");
    mc_status s = MC_OK;
    if (root < 0 || root >= r->size) return mc__fail(MC_ERR_INVALID_ARGUMENT, "root %d of %d ranks", root, r->size);
    size_t grid_bytes = (size_t)r->d.height * r->d.width * r->d.cell_bytes;
    if (r->rank == root && (!out || len < grid_bytes))
        s = mc__fail(MC_ERR_INVALID_ARGUMENT, "out needs %zu bytes", grid_bytes);
    /* The last checkpoint holds the rank's rows at the step reached. */
    if (s == MC_OK && r->ckpt_step != r->step) s = mc__fail(MC_ERR_INVALID_STATE, "the run did not finish");
    if ((s = mc__mpi_agree(r, s)) != MC_OK) return s;
    if (r->px > 1) return gather_blocks(r, root, out, grid_bytes);
    int *counts = NULL, *displs = NULL;
    if (r->rank == root) {
        counts = malloc((size_t)r->size * sizeof *counts);
        displs = malloc((size_t)r->size * sizeof *displs);
        if (!counts || !displs) s = mc__fail(MC_ERR_NO_MEMORY, "gather");
        for (int i = 0, at = 0; s == MC_OK && i < r->size; at += (int)r->rows[i], i++) {
            counts[i] = (int)r->rows[i];
            displs[i] = at;
        }
    }
    if ((s = mc__mpi_agree(r, s)) == MC_OK && MPI_Gatherv(r->ckpt, (int)r->my_rows, r->row_type, out, counts, displs,
                                                          r->row_type, root, r->comm) != MPI_SUCCESS)
        s = mc__fail(MC_ERR_IO, "MPI_Gatherv failed");
    free(counts);
    free(displs);
    return s;
}
