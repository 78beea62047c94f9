/*
 * DOC: the halo exchange of the distributed runner (mpi_internal.h)
 *
 * Owns: reading the rank's boundary rows (and, for blocks, columns) off
 * the device, sending them to the neighbours and writing what arrives into
 * the local grid: between chunks with the device idle, or overlapped, the
 * receives polled while the device computes. Every rank always takes part,
 * even one whose device failed, so that no neighbour blocks.
 */
#include "mpi/mpi_internal.h"

/* My top halo is the bottom of the rank above (lower rows, periodic), my
 * bottom halo the top of the rank below. mc__mpi_exchange_post posts both
 * receives, then reads each band off the device and sends it at once
 * (both directions in flight together); mc__mpi_exchange_complete writes
 * each halo onto the device as soon as it arrives. Every rank always takes part, even
 * one whose device failed (s not MC_OK: nothing is read, the send buffers
 * go as they are), so that no neighbour blocks; what it sends is thrown
 * away in the roll-back that follows. */
void mc__mpi_exchange_post(mc_mpi_runner *r, mc_buffer *top, uint32_t top_row, mc_buffer *bottom, uint32_t bottom_row,
                           mc_status *s)
{
    uint64_t t0 = mc__now_ns();
    uint32_t hr = r->hr;
    int up = r->up, down = r->down;
    int rc = MPI_Irecv(r->halo[2], (int)hr, r->row_type, up, 1, r->comm, &r->xreq[0]);
    rc |= MPI_Irecv(r->halo[3], (int)hr, r->row_type, down, 0, r->comm, &r->xreq[1]);
    if (*s == MC_OK) *s = mc__mpi_rows_read(r, top, top_row, hr, r->halo[0]);
    rc |= MPI_Isend(r->halo[0], (int)hr, r->row_type, up, 0, r->comm, &r->xreq[2]);
    if (*s == MC_OK) *s = mc__mpi_rows_read(r, bottom, bottom_row, hr, r->halo[1]);
    rc |= MPI_Isend(r->halo[1], (int)hr, r->row_type, down, 1, r->comm, &r->xreq[3]);
    r->xrc = rc;
    r->xpending = 2;
    r->exch_ms_sum += mc__mpi_ms_since(t0);
}

/* Writes each halo that has arrived to dst (the top one at top_row, the
 * bottom one at bottom_row); with wait, until both have. */
static void exchange_take(mc_mpi_runner *r, mc_buffer *dst, uint32_t top_row, uint32_t bottom_row, mc_status *s,
                          bool wait)
{
    uint64_t t0 = mc__now_ns();
    double waited = 0;
    while (r->xpending > 0 && r->xrc == MPI_SUCCESS) {
        int which = MPI_UNDEFINED, flag = 1;
        uint64_t t1 = mc__now_ns();
        if (wait) r->xrc |= MPI_Waitany(2, r->xreq, &which, MPI_STATUS_IGNORE);
        else r->xrc |= MPI_Testany(2, r->xreq, &which, &flag, MPI_STATUS_IGNORE);
        waited += mc__mpi_ms_since(t1);
        if (!flag || which == MPI_UNDEFINED) break;
        r->xpending--;
        if (*s == MC_OK) *s = mc__mpi_rows_write(r, dst, which ? bottom_row : top_row, r->hr, r->halo[2 + which]);
    }
    if (wait) r->wait_ms_sum += waited;
    r->exch_ms_sum += mc__mpi_ms_since(t0);
}

mc_status mc__mpi_exchange_complete(mc_mpi_runner *r, mc_buffer *dst, uint32_t top_row, uint32_t bottom_row,
                                    mc_status s)
{
    exchange_take(r, dst, top_row, bottom_row, &s, true);
    uint64_t t1 = mc__now_ns();
    r->xrc |= MPI_Waitall(2, r->xreq + 2, MPI_STATUSES_IGNORE);
    r->wait_ms_sum += mc__mpi_ms_since(t1);
    r->exch_ms_sum += mc__mpi_ms_since(t1);
    r->exch_n++;
    r->xpending = 0;
    if (r->xrc != MPI_SUCCESS) return mc__fail(MC_ERR_IO, "halo exchange: MPI failed");
    return s;
}

/* Blocks, first phase: the hc columns at each side of the rank's own rows
 * to its left and right neighbours, packed a row at a time (a column band
 * is strided on the device). The row phase after it sends whole local
 * rows, these halo columns included, so the corners arrive too. */
static mc_status exchange_columns(mc_mpi_runner *r, mc_buffer *b, mc_status s)
{
    size_t cell = r->d.cell_bytes, seg = (size_t)r->hc * cell, band = seg * r->my_rows;
    uint8_t *send_l = r->colbuf, *send_r = send_l + band, *recv_l = send_r + band, *recv_r = recv_l + band;
    MPI_Request req[4];
    int n = (int)band;
    int rc = MPI_Irecv(recv_l, n, MPI_BYTE, r->left, 3, r->comm, &req[0]);
    rc |= MPI_Irecv(recv_r, n, MPI_BYTE, r->right, 2, r->comm, &req[1]);
    for (uint32_t y = 0; y < r->my_rows && s == MC_OK; y++) {
        size_t row = (size_t)(r->hr + y) * r->row_bytes;
        s = mc_buffer_read(b, row + seg, send_l + y * seg, seg);
        if (s == MC_OK) s = mc_buffer_read(b, row + (size_t)r->my_cols * cell, send_r + y * seg, seg);
    }
    rc |= MPI_Isend(send_l, n, MPI_BYTE, r->left, 2, r->comm, &req[2]);
    rc |= MPI_Isend(send_r, n, MPI_BYTE, r->right, 3, r->comm, &req[3]);
    uint64_t t1 = mc__now_ns();
    rc |= MPI_Waitall(4, req, MPI_STATUSES_IGNORE);
    r->wait_ms_sum += mc__mpi_ms_since(t1);
    for (uint32_t y = 0; y < r->my_rows && s == MC_OK; y++) {
        size_t row = (size_t)(r->hr + y) * r->row_bytes;
        s = mc_buffer_write(b, row, recv_l + y * seg, seg);
        if (s == MC_OK) s = mc_buffer_write(b, row + (size_t)(r->hc + r->my_cols) * cell, recv_r + y * seg, seg);
    }
    if (rc != MPI_SUCCESS) return mc__fail(MC_ERR_IO, "halo exchange: MPI failed");
    return s;
}

/* The exchange between chunks, with the device idle: the halos of `step`
 * from the neighbours' own rows at `step`, straight into the local grid. */
mc_status mc__mpi_exchange(mc_mpi_runner *r, uint64_t step)
{
    mc_buffer *b = mc__mpi_state_at(r, step);
    mc_status s = b ? MC_OK : mc__fail(MC_ERR_DEVICE_LOST, "no device");
    if (r->hc) {
        uint64_t t0 = mc__now_ns();
        s = exchange_columns(r, b, s);
        r->exch_ms_sum += mc__mpi_ms_since(t0);
    }
    mc__mpi_exchange_post(r, b, r->hr, b, r->my_rows, &s);
    return mc__mpi_exchange_complete(r, b, 0, r->hr + r->my_rows, s);
}

/* Overlap: while the slab computes, each halo goes to halo_in as it
 * arrives. MPI is polled between short waits on the device, not waited on:
 * Open MPI's blocking wait spins, which on the CPU device would take a core
 * from the compute. */
#define POLL_NS 100000u
void mc__mpi_take_while_computing(mc_mpi_runner *r, inflight *f, mc_status *s)
{
    if (!f->made) return;
    mc_cmdbuf *last = f->cbs[f->made - 1];
    if (mc_cmdbuf_get_state(last) == MC_CMDBUF_NOT_ENQUEUED) return;
    for (;;) {
        exchange_take(r, r->halo_in, 0, r->hr, s, false);
        if (!r->xpending || r->xrc != MPI_SUCCESS) return;
        if (mc_cmdbuf_wait(last, POLL_NS) != MC_ERR_WAIT_TIMEOUT) return;
    }
}
