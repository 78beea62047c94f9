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
 * Overlapped (plan() picks it where the cost model says it pays), the
 * chunk first steps two boundary bands on grids of their own and sends
 * them while the slab computes; the halos received meanwhile are copied
 * in on the device at the start of the next chunk (submit_bands). No MPI call ever waits inside device work (mlx issue 1849): a
 * command buffer that blocked on a peer would run into the watchdog (F145,
 * F146). The allreduce takes the largest status code, so every rank sees
 * the same outcome, and after a failure anywhere every rank restores the
 * checkpoint they all took after the same chunk and replays: the kernel is
 * deterministic, so the result is the same bits (F681, F687, F695).
 *
 * Defaults: budget 25 ms per command buffer (the runner's, docs/RUNNER.md:
 * far below any watchdog, F688 40 ms context switch); a checkpoint every 16
 * chunks (a fault costs at most 16 chunks of replay; each checkpoint copies
 * only the rank's own rows); 8 failures in a row before giving up (as the
 * runner).
 */
#include "mc/mc_mpi.h"

#include "core/core.h"
#include "engine/engine.h"

#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

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
    mc_buffer *band[2][2];  /* [top, bottom][A, B] (overlap only) */
    mc_buffer *halo_in;     /* received halos, top then bottom, until the next chunk copies them in */
    bool overlap;
    bool halos_ready;       /* overlap: the next chunk's halos are in halo_in */
    uint8_t *ckpt, *ckpt_new; /* own rows */
    uint64_t ckpt_step, step;
    uint8_t *halo[4]; /* send top, send bottom, receive top, receive bottom */
    MPI_Request xreq[4]; /* the exchange in flight: the receives, then the sends */
    int xrc, xpending;   /* MPI's error bits; receives not yet written to the device */
    uint32_t band_steps_per_cb;
    double exch_ms_sum, comp_ms_sum, wait_ms_sum;
    uint64_t exch_n, comp_n;
    mc_mpi_stats st;
    char *dir;            /* this rank's durable checkpoints; NULL = none */
    uint8_t *params;      /* run_params + the slab: what a file must match */
    size_t params_len;
};

static double ms_since(uint64_t t0) { return (double)(mc__now_ns() - t0) / 1e6; }

/* Every rank learns the largest status code any rank had: the same outcome
 * everywhere, and the worst one wins. */
static mc_status agree(mc_mpi_runner *r, mc_status local)
{
    int mine = (int)local, all = 0;
    if (MPI_Allreduce(&mine, &all, 1, MPI_INT, MPI_MAX, r->comm) != MPI_SUCCESS)
        return mc__fail(MC_ERR_IO, "MPI_Allreduce failed");
    if (all != MC_OK && local == MC_OK)
        return mc__fail((mc_status)all, "another rank failed with %s", mc_status_name((mc_status)all));
    return (mc_status)all;
}

void mc_mpi_even_slabs(uint32_t height, int n, uint32_t *rows)
{
    if (!rows || n <= 0) return;
    for (int i = 0; i < n; i++) rows[i] = height / (uint32_t)n + ((uint32_t)i < height % (uint32_t)n ? 1u : 0u);
}

uint32_t mc_mpi_pick_halo(double chunk_ms, double row_ms, uint32_t radius, uint32_t max_h)
{
    if (max_h < 1) max_h = 1;
    if (radius < 1) radius = 1;
    if (!(chunk_ms > 0) || !(row_ms > 0)) return max_h < MAX_AUTO_HALO ? max_h : MAX_AUTO_HALO;
    double h = sqrt(chunk_ms / (2.0 * radius * row_ms));
    uint32_t hi = h < 1 ? 1u : h > (double)max_h ? max_h : (uint32_t)(h + 0.5);
    return hi < 1 ? 1u : hi;
}

/* ---- device objects ------------------------------------------------------ */

static void kernel_unbind(mc_mpi_runner *r, kernel_binding *k)
{
    if (k->bound) r->d.unbind(r->d.user, &k->b);
    k->bound = false;
    for (int i = 0; i < MC_MAX_BUFFER_ARGS; i++) {
        free(k->bytes[i]);
        k->bytes[i] = NULL;
    }
}

static void unbind_all(mc_mpi_runner *r)
{
    for (int i = 0; i < 2; i++) {
        mc_buffer_release(r->state[i]);
        r->state[i] = NULL;
        for (int j = 0; j < 2; j++) {
            mc_buffer_release(r->band[i][j]);
            r->band[i][j] = NULL;
        }
    }
    mc_buffer_release(r->halo_in);
    r->halo_in = NULL;
    kernel_unbind(r, &r->kb);
    kernel_unbind(r, &r->kb_band);
    mc_queue_release(r->queue);
    r->queue = NULL;
}

/* bind for a grid of `height` rows; BYTES arguments copied, since bind may
 * point them at memory it rewrites for the next grid. */
static mc_status kernel_bind(mc_mpi_runner *r, kernel_binding *k, uint32_t height)
{
    memset(&k->b, 0, sizeof k->b);
    mc_status s = r->d.bind(r->d.user, r->dev, r->lw, height, &k->b);
    if (s != MC_OK) return s;
    k->bound = true;
    if (!k->b.pipeline) return mc__fail(MC_ERR_INVALID_ARGUMENT, "bind set no pipeline");
    for (int i = 0; i < MC_MAX_BUFFER_ARGS; i++) {
        const mc_runner_arg *a = &k->b.args[i];
        if (a->kind != MC_RUNNER_ARG_BYTES) continue;
        if (!a->bytes || a->len == 0 || a->len > MC_MAX_BYTES_ARG)
            return mc__fail(MC_ERR_INVALID_ARGUMENT, "bind: slot %d has %zu bytes (1 to %d)", i, a->len,
                            MC_MAX_BYTES_ARG);
        if (!(k->bytes[i] = malloc(a->len))) return mc__fail(MC_ERR_NO_MEMORY, "bind: slot %d", i);
        memcpy(k->bytes[i], a->bytes, a->len);
    }
    mc_size3 *t = &k->b.threads_per_threadgroup;
    if (!t->x) *t = (mc_size3){DEFAULT_GROUP, DEFAULT_GROUP, 1};
    k->height = height;
    return MC_OK;
}

static mc_status state_buffer(mc_mpi_runner *r, uint32_t rows, const char *label, mc_buffer **out)
{
    mc_buffer_desc bd = {(size_t)rows * r->row_bytes, MC_STORAGE_PRIVATE, label, NULL};
    return mc_buffer_create(r->dev, &bd, out);
}

static mc_status bind_all(mc_mpi_runner *r)
{
    mc_queue_desc qd = {"mpi runner"};
    mc_status s = mc_queue_create(r->dev, &qd, &r->queue);
    if (s == MC_OK) s = kernel_bind(r, &r->kb, r->local_h);
    static const char *const labels[2] = {"mpi state A", "mpi state B"};
    for (int i = 0; i < 2 && s == MC_OK; i++) s = state_buffer(r, r->local_h, labels[i], &r->state[i]);
    if (!r->overlap || s != MC_OK) return s;
    /* The boundary bands: 3 hr rows each, a grid of their own. */
    s = kernel_bind(r, &r->kb_band, 3 * r->hr);
    static const char *const band_labels[2][2] = {{"mpi top band A", "mpi top band B"},
                                                  {"mpi bottom band A", "mpi bottom band B"}};
    for (int i = 0; i < 2 && s == MC_OK; i++)
        for (int j = 0; j < 2 && s == MC_OK; j++) s = state_buffer(r, 3 * r->hr, band_labels[i][j], &r->band[i][j]);
    if (s == MC_OK) s = state_buffer(r, 2 * r->hr, "mpi received halos", &r->halo_in);
    return s;
}

static mc_status open_device(mc_mpi_runner *r)
{
    mc_status s = mc_device_open(&r->dev_desc, &r->dev);
    if (s == MC_OK) s = bind_all(r);
    if (s == MC_OK) mc_device_get_info(r->dev, &r->st.device);
    return s;
}

static void close_device(mc_mpi_runner *r)
{
    unbind_all(r);
    mc_device_release(r->dev);
    r->dev = NULL;
}

/* Ranks of one host share its devices by local rank; a CPU device gets its
 * share of the cores so that ranks do not fight over them. */
static mc_status pick_device(mc_mpi_runner *r)
{
    mc_device_desc *dd = &r->dev_desc;
    memset(dd, 0, sizeof *dd);
    const char *spec = r->d.device;
    mc_status s = mc_device_desc_from_name(spec, dd);
    if (s != MC_OK) return s;
    dd->time_limit_ms = r->d.time_limit_ms;
    if (dd->kind == MC_DEVICE_ANY) {
        mc_device *probe = NULL;
        if ((s = mc_device_open(dd, &probe)) != MC_OK) return s;
        mc_device_info info;
        mc_device_get_info(probe, &info);
        mc_device_release(probe);
        dd->kind = info.kind;
    }
    if (!spec || !strchr(spec, ':')) {
        mc_device_info list[64];
        size_t n = 0, same = 0;
        if ((s = mc_device_list(list, 64, &n)) != MC_OK) return s;
        for (size_t i = 0; i < n && i < 64; i++) same += list[i].kind == dd->kind;
        dd->index = same ? r->local_rank % (int)same : 0;
    }
    if (dd->kind == MC_DEVICE_CPU) {
        long cores = sysconf(_SC_NPROCESSORS_ONLN);
        long share = cores > 0 ? cores / r->local_size : 1;
        dd->threads = r->d.cpu_threads ? r->d.cpu_threads : share > 0 ? (uint32_t)share : 1u;
    }
    return MC_OK;
}

/* ---- state: rows, halos, checkpoints --------------------------------------- */

static mc_buffer *cur(mc_mpi_runner *r, uint64_t step) { return r->state[step & 1u]; }

static mc_status rows_read(mc_mpi_runner *r, mc_buffer *b, uint32_t first, uint32_t n, void *dst)
{
    return mc_buffer_read(b, (size_t)first * r->row_bytes, dst, (size_t)n * r->row_bytes);
}

static mc_status rows_write(mc_mpi_runner *r, mc_buffer *b, uint32_t first, uint32_t n, const void *src)
{
    return mc_buffer_write(b, (size_t)first * r->row_bytes, src, (size_t)n * r->row_bytes);
}

/* The rank's own rows of the checkpoint go back in place; the halos are
 * filled by the exchange that starts every chunk. */
/* The rank's own cells (rows hr.., columns hc..) to or from a packed
 * buffer: one copy for a slab, one per row for a block. */
static mc_status own_io(mc_mpi_runner *r, mc_buffer *b, uint8_t *packed, bool write)
{
    if (!r->hc)
        return write ? rows_write(r, b, r->hr, r->my_rows, packed) : rows_read(r, b, r->hr, r->my_rows, packed);
    mc_status s = MC_OK;
    size_t x0 = (size_t)r->hc * r->d.cell_bytes;
    for (uint32_t y = 0; y < r->my_rows && s == MC_OK; y++) {
        size_t at = (size_t)(r->hr + y) * r->row_bytes + x0;
        uint8_t *p = packed + (size_t)y * r->own_row_bytes;
        s = write ? mc_buffer_write(b, at, p, r->own_row_bytes) : mc_buffer_read(b, at, p, r->own_row_bytes);
    }
    return s;
}

static mc_status restore(mc_mpi_runner *r)
{
    r->step = r->ckpt_step;
    r->halos_ready = false;
    mc_buffer *b = cur(r, r->step);
    return b ? own_io(r, b, r->ckpt, true) : mc__fail(MC_ERR_DEVICE_LOST, "no device");
}

/* Copies the rank's rows after `step` aside; checkpoint_commit makes them
 * the checkpoint once every rank has agreed that the chunk succeeded, so
 * all ranks always hold the checkpoint of the same step. */
static mc_status checkpoint_stage(mc_mpi_runner *r, uint64_t step)
{
    return own_io(r, cur(r, step), r->ckpt_new, false);
}

static mc_status checkpoint_commit(mc_mpi_runner *r, uint64_t step)
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

static void remove_set_aside(mc_mpi_runner *r)
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
static mc_status resume(mc_mpi_runner *r)
{
    size_t size = (size_t)r->my_rows * r->own_row_bytes;
    void *state[1] = {r->ckpt_new};
    uint64_t it = 0;
    bool found = false;
    mc_status s = mc__ckpt_load(r->dir, "mpi", r->params, r->params_len, &size, 1, state, &it, &found);
    for (int round = 0; round < 2; round++) {
        long long mine[2] = {found ? (long long)it : 0, found ? -(long long)it : 0}, all[2] = {0, 0};
        if ((s = agree(r, s)) != MC_OK) return s;
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
    return agree(r, mc__fail(MC_ERR_INVALID_STATE, "the ranks' checkpoints have no step in common"));
}

static mc_status durable_setup(mc_mpi_runner *r, const mc_mpi_desc *d)
{
    if (!d->checkpoint_dir) return MC_OK;
    size_t n = strlen(d->checkpoint_dir) + 64;
    if (!(r->dir = malloc(n))) return mc__fail(MC_ERR_NO_MEMORY, "checkpoint folder");
    mc_status s = mc__ckpt_prepare_dir(d->checkpoint_dir);
    snprintf(r->dir, n, "%s/rank-%d-of-%d", d->checkpoint_dir, r->rank, r->size);
    if (s == MC_OK) s = mc__ckpt_prepare_dir(r->dir);
    if (s != MC_OK) return s;
    uint32_t slab[8] = {r->d.width, r->d.height, r->d.cell_bytes, r->d.radius, r->row0, r->my_rows, r->col0,
                        r->my_cols};
    size_t slab_len = (r->px > 1 ? 8 : 6) * sizeof *slab; /* slabs: as before blocks existed */
    r->params_len = d->run_params_len + slab_len;
    if (!(r->params = malloc(r->params_len))) return mc__fail(MC_ERR_NO_MEMORY, "run params");
    if (d->run_params_len) memcpy(r->params, d->run_params, d->run_params_len);
    memcpy(r->params + d->run_params_len, slab, slab_len);
    return MC_OK;
}

/* My top halo is the bottom of the rank above (lower rows, periodic), my
 * bottom halo the top of the rank below. exchange_post posts both
 * receives, then reads each band off the device and sends it at once
 * (both directions in flight together); exchange_complete writes each halo
 * onto the device as soon as it arrives. Every rank always takes part, even
 * one whose device failed (s not MC_OK: nothing is read, the send buffers
 * go as they are), so that no neighbour blocks; what it sends is thrown
 * away in the roll-back that follows. */
static void exchange_post(mc_mpi_runner *r, mc_buffer *top, uint32_t top_row, mc_buffer *bottom,
                          uint32_t bottom_row, mc_status *s)
{
    uint64_t t0 = mc__now_ns();
    uint32_t hr = r->hr;
    int up = r->up, down = r->down;
    int rc = MPI_Irecv(r->halo[2], (int)hr, r->row_type, up, 1, r->comm, &r->xreq[0]);
    rc |= MPI_Irecv(r->halo[3], (int)hr, r->row_type, down, 0, r->comm, &r->xreq[1]);
    if (*s == MC_OK) *s = rows_read(r, top, top_row, hr, r->halo[0]);
    rc |= MPI_Isend(r->halo[0], (int)hr, r->row_type, up, 0, r->comm, &r->xreq[2]);
    if (*s == MC_OK) *s = rows_read(r, bottom, bottom_row, hr, r->halo[1]);
    rc |= MPI_Isend(r->halo[1], (int)hr, r->row_type, down, 1, r->comm, &r->xreq[3]);
    r->xrc = rc;
    r->xpending = 2;
    r->exch_ms_sum += ms_since(t0);
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
        waited += ms_since(t1);
        if (!flag || which == MPI_UNDEFINED) break;
        r->xpending--;
        if (*s == MC_OK) *s = rows_write(r, dst, which ? bottom_row : top_row, r->hr, r->halo[2 + which]);
    }
    if (wait) r->wait_ms_sum += waited;
    r->exch_ms_sum += ms_since(t0);
}

static mc_status exchange_complete(mc_mpi_runner *r, mc_buffer *dst, uint32_t top_row, uint32_t bottom_row,
                                   mc_status s)
{
    exchange_take(r, dst, top_row, bottom_row, &s, true);
    uint64_t t1 = mc__now_ns();
    r->xrc |= MPI_Waitall(2, r->xreq + 2, MPI_STATUSES_IGNORE);
    r->wait_ms_sum += ms_since(t1);
    r->exch_ms_sum += ms_since(t1);
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
    r->wait_ms_sum += ms_since(t1);
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
static mc_status exchange(mc_mpi_runner *r, uint64_t step)
{
    mc_buffer *b = cur(r, step);
    mc_status s = b ? MC_OK : mc__fail(MC_ERR_DEVICE_LOST, "no device");
    if (r->hc) {
        uint64_t t0 = mc__now_ns();
        s = exchange_columns(r, b, s);
        r->exch_ms_sum += ms_since(t0);
    }
    exchange_post(r, b, r->hr, b, r->my_rows, &s);
    return exchange_complete(r, b, 0, r->hr + r->my_rows, s);
}

/* ---- compute --------------------------------------------------------------- */

/* count steps from `first` on the grid of k (A and B its ping-pong
 * buffers), one dispatch per step, in one pass. */
static mc_status encode(mc_mpi_runner *r, mc_cmdbuf *cb, const kernel_binding *k, mc_buffer *a, mc_buffer *b,
                        uint64_t first, uint32_t count)
{
    mc_pass *p = NULL;
    mc_status s = mc_cmdbuf_begin_pass(cb, "mpi steps", &p);
    if (s != MC_OK) return s;
    s = mc_pass_set_pipeline(p, k->b.pipeline);
    for (uint32_t i = 0; i < MC_MAX_BUFFER_ARGS && s == MC_OK; i++) {
        const mc_runner_arg *arg = &k->b.args[i];
        if (arg->kind == MC_RUNNER_ARG_BUFFER) s = mc_pass_set_buffer(p, i, arg->buffer, arg->offset);
        else if (arg->kind == MC_RUNNER_ARG_BYTES) s = mc_pass_set_bytes(p, i, k->bytes[i], arg->len);
    }
    if (s == MC_OK) s = mc_pass_set_buffer(p, r->d.state_arg[0], a, 0);
    if (s == MC_OK) s = mc_pass_set_buffer(p, r->d.state_arg[1], b, 0);
    mc_size3 t = k->b.threads_per_threadgroup;
    mc_size3 groups = {(r->lw + t.x - 1) / t.x, (k->height + t.y - 1) / t.y, 1};
    for (uint32_t j = 0; j < count && s == MC_OK; j++) {
        mc_runner_iteration it = {first + j, 1, 0};
        if (j) s = mc_pass_barrier(p);
        if (s == MC_OK) s = mc_pass_set_bytes(p, r->d.iteration_arg, &it, sizeof it);
        if (s == MC_OK) s = mc_pass_dispatch(p, groups, t);
    }
    mc_status e = mc_pass_end(p);
    return s != MC_OK ? s : e;
}

/* Command buffers of one chunk, committed and not yet waited for. */
typedef struct inflight {
    mc_cmdbuf **cbs;
    uint32_t made;
    mc_status status; /* the first failure to create, encode or commit */
    uint64_t t0;
} inflight;

static bool inflight_start(inflight *f, uint32_t ncb)
{
    memset(f, 0, sizeof *f);
    f->t0 = mc__now_ns();
    if (!(f->cbs = calloc(ncb, sizeof *f->cbs))) f->status = mc__fail(MC_ERR_NO_MEMORY, "command buffers");
    return f->cbs != NULL;
}

static mc_status inflight_add(mc_mpi_runner *r, inflight *f, const char *label, mc_cmdbuf **out)
{
    mc_cmdbuf_desc cd = {label, MC_CMDBUF_TIMESTAMPS};
    mc_status s = mc_cmdbuf_create(r->queue, &cd, &f->cbs[f->made]);
    if (s == MC_OK) *out = f->cbs[f->made++];
    return s;
}

/* Overlap: the halos received during the last chunk go into the local
 * grid on the device timeline, first thing in the chunk, so the host wrote
 * them (to halo_in) while the device still computed. */
static mc_status stage_halos(mc_mpi_runner *r, mc_cmdbuf *cb, uint64_t first)
{
    size_t band = (size_t)r->hr * r->row_bytes;
    mc_status s = mc_cmdbuf_copy_buffer(cb, r->halo_in, 0, cur(r, first), 0, band);
    if (s == MC_OK)
        s = mc_cmdbuf_copy_buffer(cb, r->halo_in, band, cur(r, first), (size_t)(r->hr + r->my_rows) * r->row_bytes,
                                  band);
    return s;
}

/* Commits steps [first, first + count) on the local grid in command
 * buffers of steps_per_cb steps; the device runs them while the caller
 * does other work. stage: the first one copies the received halos in. */
static void submit(mc_mpi_runner *r, uint64_t first, uint32_t count, bool stage, inflight *f)
{
    uint32_t ncb = (count + r->steps_per_cb - 1) / r->steps_per_cb;
    if (!inflight_start(f, ncb)) return;
    for (uint32_t c = 0; c < ncb && f->status == MC_OK; c++) {
        uint32_t n = MC__MIN(r->steps_per_cb, count - c * r->steps_per_cb);
        uint64_t at = first + (uint64_t)c * r->steps_per_cb;
        mc_cmdbuf *cb = NULL;
        mc_status s = inflight_add(r, f, "mpi chunk", &cb);
        if (s == MC_OK && stage && c == 0) s = stage_halos(r, cb, first);
        if (s == MC_OK) s = encode(r, cb, &r->kb, r->state[0], r->state[1], at, n);
        if (s == MC_OK) s = mc_cmdbuf_commit(cb);
        if (s != MC_OK) f->status = s;
    }
}

/* Overlap: the boundary bands of the chunk [first, first + count), each a
 * grid of 3 hr rows of its own copied from the local grid at `first` (the
 * top band from local row 0, the bottom one from my_rows - hr). After
 * count <= H steps the middle hr rows of each are exact (a step spoils
 * radius rows at each end of a grid, as in the slab): the rank's own first
 * and last hr rows at first + count, what the neighbours need next. They
 * run first on the queue, so the host sends them while the device computes
 * the whole local grid (the interior) after them. */
static void submit_bands(mc_mpi_runner *r, uint64_t first, uint32_t count, bool stage, inflight *f)
{
    uint32_t per = r->band_steps_per_cb;
    uint32_t ncb = (count + per - 1) / per;
    if (!inflight_start(f, ncb)) return;
    size_t band = (size_t)3 * r->hr * r->row_bytes;
    mc_buffer *src = cur(r, first);
    for (uint32_t c = 0; c < ncb && f->status == MC_OK; c++) {
        uint32_t n = MC__MIN(per, count - c * per);
        uint64_t at = first + (uint64_t)c * per;
        mc_cmdbuf *cb = NULL;
        mc_status s = inflight_add(r, f, "mpi bands", &cb);
        if (s == MC_OK && stage && c == 0) s = stage_halos(r, cb, first);
        if (s == MC_OK && c == 0) s = mc_cmdbuf_copy_buffer(cb, src, 0, r->band[0][first & 1u], 0, band);
        if (s == MC_OK && c == 0)
            s = mc_cmdbuf_copy_buffer(cb, src, (size_t)(r->my_rows - r->hr) * r->row_bytes, r->band[1][first & 1u],
                                      0, band);
        for (int i = 0; i < 2 && s == MC_OK; i++) s = encode(r, cb, &r->kb_band, r->band[i][0], r->band[i][1], at, n);
        if (s == MC_OK) s = mc_cmdbuf_commit(cb);
        if (s != MC_OK) f->status = s;
    }
}

/* Waits for a submitted chunk; the status of the first command buffer
 * that failed. */
static mc_status finish(mc_mpi_runner *r, inflight *f, uint64_t *gpu_ns)
{
    (void)r;
    mc_status result = f->status;
    if (gpu_ns) *gpu_ns = 0;
    for (uint32_t c = 0; c < f->made; c++) {
        if (mc_cmdbuf_get_state(f->cbs[c]) != MC_CMDBUF_NOT_ENQUEUED) {
            mc_cmdbuf_wait(f->cbs[c], MC_WAIT_FOREVER);
            mc_status s = mc_cmdbuf_status(f->cbs[c], NULL);
            if (s != MC_OK && s != MC_ERR_INVALID_STATE && result == MC_OK) result = s;
            uint64_t a = 0, b = 0;
            if (s == MC_OK && gpu_ns && mc_cmdbuf_get_gpu_time(f->cbs[c], &a, &b) == MC_OK && b > a) *gpu_ns += b - a;
        }
        mc_cmdbuf_release(f->cbs[c]);
    }
    free(f->cbs);
    f->cbs = NULL;
    f->made = 0;
    return result;
}

static mc_status compute(mc_mpi_runner *r, uint64_t first, uint32_t count, uint64_t *gpu_ns)
{
    inflight f;
    submit(r, first, count, false, &f);
    uint64_t t0 = f.t0;
    mc_status s = finish(r, &f, gpu_ns);
    r->comp_ms_sum += ms_since(t0);
    r->comp_n++;
    return s;
}

/* After a failure anywhere: this rank rebuilds what its own failure broke
 * (a failed queue takes no more work, F687; a lost device is reopened). */
static mc_status rebuild(mc_mpi_runner *r, mc_status own, uint32_t attempt)
{
    if (own == MC_ERR_ACCESS_REVOKED) {
        /* The system keeps a process off the device for a while (F146). */
        double ms = 100.0;
        for (uint32_t i = 1; i < attempt && ms < 2000; i++) ms *= 2;
        mc__sleep_ns((uint64_t)(ms * 1e6));
    }
    bool lost = own == MC_ERR_DEVICE_LOST || (r->dev && mc_device_check(r->dev) != MC_OK);
    if (lost || !r->dev) {
        close_device(r);
        return open_device(r);
    }
    if (own != MC_OK || (r->queue && mc_queue_check(r->queue) != MC_OK)) {
        unbind_all(r);
        return bind_all(r);
    }
    return MC_OK;
}

/* Overlap: while the slab computes, each halo goes to halo_in as it
 * arrives. MPI is polled between short waits on the device, not waited on:
 * Open MPI's blocking wait spins, which on the CPU device would take a core
 * from the compute. */
#define POLL_NS 100000u
static void take_while_computing(mc_mpi_runner *r, inflight *f, mc_status *s)
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

static bool recoverable(mc_status s) { return mc_status_is_device_error(s) || s == MC_ERR_WAIT_TIMEOUT; }

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
    mc_status pending = MC_OK;               /* a durable write that failed: this rank's failure */
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
            own = staged ? MC_OK : exchange(r, next);
            r->halos_ready = false;
            if (pending != MC_OK) own = pending;
            pending = MC_OK;
            inflight bands = {0};
            if (own == MC_OK && ahead) submit_bands(r, next, k, staged, &bands);
            if (own == MC_OK) submit(r, next, k, staged && !ahead, &f);
            if (ahead) {
                uint64_t b0 = mc__now_ns();
                mc_status b = finish(r, &bands, NULL);
                if (own == MC_OK) own = b;
                r->exch_ms_sum += ms_since(b0);
                uint32_t at = (next + k) & 1u;
                if (own == MC_OK && !r->band[0][at]) own = mc__fail(MC_ERR_DEVICE_LOST, "no device");
                exchange_post(r, r->band[0][at], r->hr, r->band[1][at], r->hr, &own);
            }
        }
        /* The previous chunk's outcome, the same on every rank. */
        mc_status all = MC_OK;
        if (prev.active) {
            all = agreement(r, &prev);
            if (all == MC_OK) {
                r->step += prev.k;
                r->st.chunks++;
                if (prev.ckpt) pending = checkpoint_commit(r, r->step);
                since_ckpt = prev.ckpt ? 0 : since_ckpt + 1;
                if (r->step > fail_step) in_a_row = 0;
                if (r->d.progress) r->d.progress(r->d.progress_user, r->step, r->d.total_steps);
            }
        }
        if (launched) {
            uint64_t c0 = f.t0 ? f.t0 : mc__now_ns();
            if (ahead) take_while_computing(r, &f, &own);
            mc_status done = finish(r, &f, NULL);
            if (own == MC_OK) own = done;
            r->comp_ms_sum += ms_since(c0);
            r->comp_n++;
            if (ahead) {
                own = exchange_complete(r, r->halo_in, 0, r->hr, own);
                r->halos_ready = true;
            }
        }
        if (all == MC_OK && launched) {
            /* Checkpoint after the same chunk on every rank: the count
             * includes the chunk just agreed. */
            bool ckpt = since_ckpt + 1 >= r->d.checkpoint_chunks || next + k == r->d.total_steps;
            if (own == MC_OK && ckpt) own = checkpoint_stage(r, next + k);
            prev = (agreeing){.active = true, .k = k, .ckpt = ckpt, .mine = (int)own};
            if (MPI_Iallreduce(&prev.mine, &prev.all, 1, MPI_INT, MPI_MAX, r->comm, &prev.req) != MPI_SUCCESS) {
                r->st.elapsed_ms = ms_since(t0);
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
            r->st.elapsed_ms = ms_since(t0);
            if (own == all) return own;
            return own == MC_OK ? mc__fail(all, "another rank failed with %s", mc_status_name(all))
                                : mc__fail(all, "%s here; another rank failed with %s", mc_status_name(own),
                                           mc_status_name(all));
        }
        for (;;) {
            if (++in_a_row > r->d.max_recoveries) {
                r->st.elapsed_ms = ms_since(t0);
                return mc__fail(all, "gave up after %u failures in a row without progress", in_a_row - 1);
            }
            mc_status s = rebuild(r, own, in_a_row);
            if (s == MC_OK) s = restore(r);
            mc_status both = agree(r, s);
            if (both == MC_OK) break;
            own = s != MC_OK ? s : own;
            if (!recoverable(both)) {
                r->st.elapsed_ms = ms_since(t0);
                return both;
            }
        }
        since_ckpt = 0;
        next = r->step;
        pending = MC_OK;
    }
    r->st.steps = r->step;
    r->st.elapsed_ms = ms_since(t0);
    mc_status s = agree(r, pending);
    if (s == MC_OK) remove_set_aside(r);
    return s;
}

/* ---- create, gather, release ------------------------------------------------ */

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
        return mc__fail(MC_ERR_INVALID_ARGUMENT, "state_arg %u, %u and iteration_arg %u must be distinct slots below %d",
                        d->state_arg[0], d->state_arg[1], d->iteration_arg, MC_MAX_BUFFER_ARGS);
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
static mc_status set_halo(mc_mpi_runner *r, uint32_t h)
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

static mc_status setup(mc_mpi_runner *r, const mc_mpi_desc *desc)
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
    if ((s = set_halo(r, r->d.halo_steps ? r->d.halo_steps : 1)) != MC_OK) return s;
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
    if ((s = pick_device(r)) != MC_OK) return s;
    /* Measured without bands; plan() decides (mc_mpi_runner_create). */
    r->overlap = r->d.overlap == MC_MPI_OVERLAP_ON;
    if ((s = open_device(r)) != MC_OK) return s;
    return restore(r);
}

/* As many steps per command buffer as fit the budget at the slowest
 * rank's measured time per row. */
static void set_steps_per_cb(mc_mpi_runner *r, double row_ms)
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
static mc_status measure(mc_mpi_runner *r, double *step_ms, double fixed[3])
{
    uint64_t ns = 0;
    mc_status s = MC_OK;
    double wall = 0, best_x = 0, best_a = 0;
    for (int i = 0; i < 2 && s == MC_OK; i++) {
        uint64_t t0 = mc__now_ns();
        s = compute(r, 0, 1, &ns);
        wall = ms_since(t0);
    }
    *step_ms = (double)ns / 1e6;
    /* Exchanging the initial state writes the halos it already has. A
     * barrier first, so that the time is the exchange, not a late peer. */
    for (int i = 0; i < 3; i++) {
        MPI_Barrier(r->comm);
        uint64_t t0 = mc__now_ns();
        if (s == MC_OK) s = exchange(r, 0);
        double x = ms_since(t0);
        best_x = i ? MC__MIN(best_x, x) : x;
        t0 = mc__now_ns();
        int one = 1, all = 0;
        MPI_Allreduce(&one, &all, 1, MPI_INT, MPI_MAX, r->comm);
        x = ms_since(t0);
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
static void plan(mc_mpi_runner *r, const double worst[4], uint32_t *h_out, bool *overlap_out)
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

    mc_status s = setup(r, desc);
    if (s == MC_OK) s = durable_setup(r, desc);
    if ((s = agree(r, s)) != MC_OK) goto fail;
    remove_set_aside(r);
    if (r->dir && desc->resume && (s = resume(r)) != MC_OK) goto fail;

    double step_ms = 0, fixed[3] = {0, 0, 0};
    s = measure(r, &step_ms, fixed);
    if ((s = agree(r, s)) != MC_OK) goto fail;
    /* H, overlap and the command-buffer size from the slowest rank, so
     * every rank picks the same. */
    double mine[4] = {step_ms / r->local_h, fixed[0], fixed[1], fixed[2]}, worst[4] = {0, 0, 0, 0};
    MPI_Allreduce(mine, worst, 4, MPI_DOUBLE, MPI_MAX, r->comm);
    set_steps_per_cb(r, worst[0]);
    uint32_t h = 0;
    bool overlap = false;
    plan(r, worst, &h, &overlap);
    if (h * r->d.radius != r->hr || overlap != r->overlap) {
        /* Deeper halos, a taller local grid, or the bands: bind again. */
        unbind_all(r);
        r->overlap = overlap;
        s = set_halo(r, h);
        if (s == MC_OK) s = bind_all(r);
    }
    /* Measuring wrote over the state: back to the start (or the resumed step). */
    if (s == MC_OK) s = restore(r);
    if ((s = agree(r, s)) != MC_OK) goto fail;
    set_steps_per_cb(r, worst[0]);
    r->st.halo_steps = h;
    r->st.halo_rows = r->hr;
    r->st.step_ms = step_ms;
    if (r->d.inject_faults && *r->d.inject_faults) s = mc_device_inject_faults(r->dev, r->d.inject_faults);
    if ((s = agree(r, s)) != MC_OK) goto fail;
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
    if ((s = agree(r, s)) == MC_OK &&
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
    if ((s = agree(r, s)) != MC_OK) return s;
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
    if ((s = agree(r, s)) == MC_OK &&
        MPI_Gatherv(r->ckpt, (int)r->my_rows, r->row_type, out, counts, displs, r->row_type, root, r->comm) !=
            MPI_SUCCESS)
        s = mc__fail(MC_ERR_IO, "MPI_Gatherv failed");
    free(counts);
    free(displs);
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
    close_device(r);
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
