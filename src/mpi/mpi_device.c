/*
 * DOC: the distributed runner's device work (mpi_internal.h)
 *
 * Owns: the rank's device, queue, state buffers and the step kernel bound
 * for its local grid (and for the boundary bands when overlapped); a chunk
 * encoded into command buffers of the budget, committed, and waited for;
 * what a failure broke, rebuilt. No MPI here: no command buffer ever waits
 * on a peer (F145, F146).
 */
#include "mpi/mpi_internal.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void kernel_unbind(mc_mpi_runner *r, kernel_binding *k)
{
    if (k->bound) r->d.unbind(r->d.user, &k->b);
    k->bound = false;
    for (int i = 0; i < MC_MAX_BUFFER_ARGS; i++) {
        free(k->bytes[i]);
        k->bytes[i] = NULL;
    }
}

void mc__mpi_unbind_all(mc_mpi_runner *r)
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

mc_status mc__mpi_bind_all(mc_mpi_runner *r)
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

mc_status mc__mpi_open_device(mc_mpi_runner *r)
{
    mc_status s = mc_device_open(&r->dev_desc, &r->dev);
    if (s == MC_OK) s = mc__mpi_bind_all(r);
    if (s == MC_OK) mc_device_get_info(r->dev, &r->st.device);
    return s;
}

void mc__mpi_close_device(mc_mpi_runner *r)
{
    mc__mpi_unbind_all(r);
    mc_device_release(r->dev);
    r->dev = NULL;
}

/* Ranks of one host share its devices by local rank, and its cores: a
 * device that computes on the host's cores gets the rank's share of them
 * so that ranks do not fight over them. desc.threads says that share, and
 * only such a device reads it (the CPU backend's workers; a GPU's backend
 * ignores it), so it is set whatever the device rather than asking its
 * kind: only a backend knows what its kind means (docs/ARCHITECTURE.md). */
mc_status mc__mpi_pick_device(mc_mpi_runner *r)
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
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    long share = cores > 0 ? cores / r->local_size : 1;
    dd->threads = r->d.cpu_threads ? r->d.cpu_threads : share > 0 ? (uint32_t)share : 1u;
    return MC_OK;
}

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
    mc_status s = mc_cmdbuf_copy_buffer(cb, r->halo_in, 0, mc__mpi_state_at(r, first), 0, band);
    if (s == MC_OK)
        s = mc_cmdbuf_copy_buffer(cb, r->halo_in, band, mc__mpi_state_at(r, first),
                                  (size_t)(r->hr + r->my_rows) * r->row_bytes, band);
    return s;
}

/* Commits steps [first, first + count) on the local grid in command
 * buffers of steps_per_cb steps; the device runs them while the caller
 * does other work. stage: the first one copies the received halos in. */
void mc__mpi_submit(mc_mpi_runner *r, uint64_t first, uint32_t count, bool stage, inflight *f)
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
void mc__mpi_submit_bands(mc_mpi_runner *r, uint64_t first, uint32_t count, bool stage, inflight *f)
{
    uint32_t per = r->band_steps_per_cb;
    uint32_t ncb = (count + per - 1) / per;
    if (!inflight_start(f, ncb)) return;
    size_t band = (size_t)3 * r->hr * r->row_bytes;
    mc_buffer *src = mc__mpi_state_at(r, first);
    for (uint32_t c = 0; c < ncb && f->status == MC_OK; c++) {
        uint32_t n = MC__MIN(per, count - c * per);
        uint64_t at = first + (uint64_t)c * per;
        mc_cmdbuf *cb = NULL;
        mc_status s = inflight_add(r, f, "mpi bands", &cb);
        if (s == MC_OK && stage && c == 0) s = stage_halos(r, cb, first);
        if (s == MC_OK && c == 0) s = mc_cmdbuf_copy_buffer(cb, src, 0, r->band[0][first & 1u], 0, band);
        if (s == MC_OK && c == 0)
            s = mc_cmdbuf_copy_buffer(cb, src, (size_t)(r->my_rows - r->hr) * r->row_bytes, r->band[1][first & 1u], 0,
                                      band);
        for (int i = 0; i < 2 && s == MC_OK; i++) s = encode(r, cb, &r->kb_band, r->band[i][0], r->band[i][1], at, n);
        if (s == MC_OK) s = mc_cmdbuf_commit(cb);
        if (s != MC_OK) f->status = s;
    }
}

/* Waits for a submitted chunk; the status of the first command buffer
 * that failed. */
mc_status mc__mpi_finish(mc_mpi_runner *r, inflight *f, uint64_t *gpu_ns)
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

mc_status mc__mpi_compute(mc_mpi_runner *r, uint64_t first, uint32_t count, uint64_t *gpu_ns)
{
    inflight f;
    mc__mpi_submit(r, first, count, false, &f);
    uint64_t t0 = f.t0;
    mc_status s = mc__mpi_finish(r, &f, gpu_ns);
    r->comp_ms_sum += mc__mpi_ms_since(t0);
    r->comp_n++;
    return s;
}

/* After a failure anywhere: this rank rebuilds what its own failure broke
 * (a failed queue takes no more work, F687; a lost device is reopened). */
mc_status mc__mpi_rebuild(mc_mpi_runner *r, mc_status own, uint32_t attempt)
{
    if (own == MC_ERR_ACCESS_REVOKED) {
        /* The system keeps a process off the device for a while (F146). */
        double ms = 100.0;
        for (uint32_t i = 1; i < attempt && ms < 2000; i++) ms *= 2;
        mc__sleep_ns((uint64_t)(ms * 1e6));
    }
    bool lost = own == MC_ERR_DEVICE_LOST || (r->dev && mc_device_check(r->dev) != MC_OK);
    if (lost || !r->dev) {
        mc__mpi_close_device(r);
        return mc__mpi_open_device(r);
    }
    if (own != MC_OK || (r->queue && mc_queue_check(r->queue) != MC_OK)) {
        mc__mpi_unbind_all(r);
        return mc__mpi_bind_all(r);
    }
    return MC_OK;
}
