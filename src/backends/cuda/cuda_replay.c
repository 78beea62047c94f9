/*
 * DOC: Command buffers replayed as CUDA graphs (see cuda_replay.h)
 *
 * While a replayable command buffer is encoded (cuda_submit.c's encode with
 * q->collecting set), each launch is collected instead of sent: its
 * pipeline, grid, threadgroup, threadgroup memory and a copy of its
 * arguments, padded to the kernel's parameter sizes. Then the queue's shape
 * table decides (cuda_replay.h): launch the collected launches one by one,
 * build a graph of them, or update the existing graph's changed nodes and
 * launch it. The graph is a chain (each node after the one before), which
 * is what one stream does with the same launches, so barriers, ordering
 * and faults behave alike. A graph's host-side updates only affect later
 * launches of it (CUDA's rule), so one still running is left alone, and
 * launches of one executable graph run in order.
 *
 * MC_CUDA_REPLAY=0 turns it off (every command buffer launched one by one).
 */
#include "backends/cuda/cuda_be.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- the shape table (no CUDA here) --------------------------------------- */

static bool same_shape(const mc__replay_entry *e, const mc__replay_step *steps, uint32_t n)
{
    return e->nsteps == n && memcmp(e->steps, steps, n * sizeof *steps) == 0;
}

static void entry_clear(mc__replay_table *t, mc__replay_entry *e)
{
    if (e->graph && t->drop_graph) t->drop_graph(t->ctx, e->graph);
    free(e->steps);
    memset(e, 0, sizeof *e);
}

mc__replay_action mc__replay_lookup(mc__replay_table *t, const mc__replay_step *steps, uint32_t n,
                                    mc__replay_entry **entry)
{
    *entry = NULL;
    if (n < MC__REPLAY_MIN_LAUNCHES || n > MC__REPLAY_MAX_LAUNCHES) return MC__REPLAY_DIRECT;
    t->clock++;
    mc__replay_entry *victim = &t->e[0];
    for (uint32_t i = 0; i < MC__REPLAY_ENTRIES; i++) {
        mc__replay_entry *e = &t->e[i];
        if (e->steps && same_shape(e, steps, n)) {
            e->last_seen = t->clock;
            if (e->sightings < UINT32_MAX) e->sightings++;
            *entry = e;
            if (e->failed) return MC__REPLAY_DIRECT;
            return e->graph ? MC__REPLAY_LAUNCH : MC__REPLAY_BUILD;
        }
        if (!e->steps) {
            if (victim->steps) victim = e; /* an empty entry first */
        } else if (victim->steps && e->last_seen < victim->last_seen) {
            victim = e;
        }
    }
    /* first sighting: remember it, launch one by one */
    mc__replay_step *copy = mc__malloc(n * sizeof *copy);
    if (!copy) return MC__REPLAY_DIRECT;
    entry_clear(t, victim);
    memcpy(copy, steps, n * sizeof *copy);
    victim->steps = copy;
    victim->nsteps = n;
    victim->sightings = 1;
    victim->last_seen = t->clock;
    *entry = victim;
    return MC__REPLAY_DIRECT;
}

void mc__replay_forget(mc__replay_table *t, const void *pipeline)
{
    for (uint32_t i = 0; i < MC__REPLAY_ENTRIES; i++) {
        mc__replay_entry *e = &t->e[i];
        for (uint32_t k = 0; e->steps && k < e->nsteps; k++) {
            if (e->steps[k].pipeline == pipeline) {
                entry_clear(t, e);
                break;
            }
        }
    }
}

void mc__replay_clear(mc__replay_table *t)
{
    for (uint32_t i = 0; i < MC__REPLAY_ENTRIES; i++) entry_clear(t, &t->e[i]);
}

/* ---- collecting launches --------------------------------------------------- */

/* One collected launch: where its arguments are in the blob. */
typedef struct launch_at {
    mc__cuda_pipeline *pl;
    uint32_t pass;    /* the pass it belongs to */
    uint32_t blob_at; /* its first argument's offset in the blob */
    uint32_t kp_at;   /* its first entry in the kernelParams array */
    uint32_t nparams;
} launch_at;

/* A built graph: its nodes and the arguments each was last given. */
typedef struct rgraph {
    CUgraph graph;
    CUgraphExec exec;
    CUgraphNode *nodes;
    uint8_t *blob; /* the arguments the nodes hold now, laid out as collected */
    uint32_t blob_len;
} rgraph;

struct mc__cuda_replay {
    mc__replay_table table;
    mc__cuda_device *dev;
    mc__replay_step *steps;
    launch_at *at;
    uint32_t n, cap;
    uint32_t *param_off; /* per argument, its offset in the blob */
    uint32_t nparam, param_cap;
    uint8_t *blob;
    uint32_t blob_len, blob_cap;
    void **kp; /* kernelParams, filled once collection ends */
    uint32_t kp_cap;
    bool broken; /* something could not be collected: launch one by one */
};

static void rgraph_free(const mc__cuda_api *cu, rgraph *g)
{
    if (!g) return;
    /* an executable graph still running is freed when it finishes (CUDA) */
    if (g->exec) (void)cu->GraphExecDestroy(g->exec);
    if (g->graph) (void)cu->GraphDestroy(g->graph);
    free(g->nodes);
    free(g->blob);
    free(g);
}

static void drop_graph(void *ctx, void *graph)
{
    mc__cuda_device *dev = ctx;
    /* queue teardown and pipeline destruction enter the context first */
    rgraph_free(dev->cu, graph);
}

bool mc__cuda_replay_enabled(const mc__cuda_device *dev)
{
    const mc__cuda_api *cu = dev->cu;
    return dev->replay && cu->GraphCreate && cu->GraphDestroy && cu->GraphAddKernelNode &&
           cu->GraphInstantiateWithFlags && cu->GraphExecDestroy && cu->GraphExecKernelNodeSetParams && cu->GraphLaunch;
}

/* Passes [0, nrun) hold only bindings, dispatches and barriers, with at
 * least MC__REPLAY_MIN_LAUNCHES dispatches. */
bool mc__cuda_replay_eligible(const mc__submission *sub, uint32_t nrun)
{
    uint32_t dispatches = 0;
    for (uint32_t p = 0; p < nrun; p++) {
        const mc__pass *ps = &sub->passes[p];
        if (ps->kind != MC__PASS_COMPUTE || ps->first > sub->ncmd || ps->count > sub->ncmd - ps->first) return false;
        for (uint32_t i = ps->first; i < ps->first + ps->count; i++) {
            switch (sub->cmds[i].op) {
            case MC__OP_DISPATCH: dispatches++; break;
            case MC__OP_SET_PIPELINE:
            case MC__OP_SET_BUFFER:
            case MC__OP_SET_BYTES:
            case MC__OP_SET_TGMEM:
            case MC__OP_BARRIER: break;
            default: return false;
            }
        }
    }
    return dispatches >= MC__REPLAY_MIN_LAUNCHES && dispatches <= MC__REPLAY_MAX_LAUNCHES;
}

mc_status mc__cuda_replay_begin(mc__cuda_device *dev, mc__cuda_queue *q)
{
    if (!q->replay) {
        q->replay = mc__calloc(1, sizeof *q->replay);
        if (!q->replay) return MC_ERR_NO_MEMORY;
        q->replay->dev = dev;
        q->replay->table.drop_graph = drop_graph;
        q->replay->table.ctx = dev;
    }
    mc__cuda_replay *rp = q->replay;
    rp->n = rp->nparam = rp->blob_len = 0;
    rp->broken = false;
    q->collecting = true;
    return MC_OK;
}

static bool grow(void **p, uint32_t *cap, uint32_t need, size_t elem)
{
    if (need <= *cap) return true;
    uint32_t ncap = *cap ? *cap : 64;
    while (ncap < need) ncap *= 2;
    void *np = mc__realloc(*p, (size_t)ncap * elem);
    if (!np) return false;
    *p = np;
    *cap = ncap;
    return true;
}

void mc__cuda_replay_collect(mc__cuda_queue *q, mc__cuda_pipeline *pl, mc_size3 g, mc_size3 t, unsigned smem,
                             void **params, uint32_t pass)
{
    mc__cuda_replay *rp = q->replay;
    if (rp->broken) return;
    /* the arguments' sizes must be known to copy them */
    if (pl->nparams < 0 || (pl->nparams > 0 && !pl->param_size)) {
        rp->broken = true;
        return;
    }
    uint32_t np = (uint32_t)pl->nparams;
    uint32_t blob_at = (rp->blob_len + 15u) & ~15u, end = blob_at;
    for (uint32_t i = 0; i < np; i++) end = ((end + 15u) & ~15u) + pl->param_size[i];
    uint32_t cap = rp->cap;
    if (!grow((void **)&rp->steps, &cap, rp->n + 1, sizeof *rp->steps) ||
        !grow((void **)&rp->at, &rp->cap, rp->n + 1, sizeof *rp->at) ||
        !grow((void **)&rp->param_off, &rp->param_cap, rp->nparam + np, sizeof *rp->param_off) ||
        !grow((void **)&rp->blob, &rp->blob_cap, end, 1)) {
        rp->broken = true;
        return;
    }
    mc__replay_step *st = &rp->steps[rp->n];
    memset(st, 0, sizeof *st); /* compared with memcmp: no stray padding */
    st->pipeline = pl;
    st->grid[0] = g.x, st->grid[1] = g.y, st->grid[2] = g.z;
    st->block[0] = t.x, st->block[1] = t.y, st->block[2] = t.z;
    st->smem = smem;
    st->param_bytes = end - blob_at;
    launch_at *a = &rp->at[rp->n];
    a->pl = pl;
    a->pass = pass;
    a->blob_at = blob_at;
    a->kp_at = rp->nparam;
    a->nparams = np;
    uint32_t off = blob_at;
    memset(rp->blob + rp->blob_len, 0, end - rp->blob_len);
    for (uint32_t i = 0; i < np; i++) {
        off = (off + 15u) & ~15u;
        memcpy(rp->blob + off, params[i], pl->param_size[i]);
        rp->param_off[rp->nparam++] = off;
        off += pl->param_size[i];
    }
    rp->blob_len = end;
    rp->n++;
}

static void kernel_params(const mc__cuda_replay *rp, uint32_t k, const uint8_t *blob, void **kp,
                          CUDA_KERNEL_NODE_PARAMS_v2 *out)
{
    const mc__replay_step *st = &rp->steps[k];
    const launch_at *a = &rp->at[k];
    for (uint32_t i = 0; i < a->nparams; i++) kp[i] = (void *)(blob + rp->param_off[a->kp_at + i]);
    memset(out, 0, sizeof *out);
    out->func = a->pl->fn;
    out->gridDimX = st->grid[0];
    out->gridDimY = st->grid[1];
    out->gridDimZ = st->grid[2];
    out->blockDimX = st->block[0];
    out->blockDimY = st->block[1];
    out->blockDimZ = st->block[2];
    out->sharedMemBytes = st->smem;
    out->kernelParams = kp;
}

/* Builds the chain graph of the collected launches. NULL if the driver
 * refused (logged once per shape: the entry is marked failed). */
static rgraph *build(mc__cuda_device *dev, mc__cuda_replay *rp)
{
    const mc__cuda_api *cu = dev->cu;
    rgraph *g = mc__calloc(1, sizeof *g);
    if (!g) return NULL;
    g->nodes = mc__calloc(rp->n, sizeof *g->nodes);
    g->blob = mc__malloc(rp->blob_len ? rp->blob_len : 1);
    if (!g->nodes || !g->blob) {
        rgraph_free(cu, g);
        return NULL;
    }
    memcpy(g->blob, rp->blob, rp->blob_len);
    g->blob_len = rp->blob_len;
    CUresult res = cu->GraphCreate(&g->graph, 0);
    for (uint32_t k = 0; k < rp->n && res == CUDA_SUCCESS; k++) {
        CUDA_KERNEL_NODE_PARAMS_v2 kn;
        kernel_params(rp, k, rp->blob, rp->kp + rp->at[k].kp_at, &kn);
        res = cu->GraphAddKernelNode(&g->nodes[k], g->graph, k ? &g->nodes[k - 1] : NULL, k ? 1 : 0, &kn);
    }
    if (res == CUDA_SUCCESS) res = cu->GraphInstantiateWithFlags(&g->exec, g->graph, 0);
    if (res != CUDA_SUCCESS) {
        char t[120];
        mc__log(MC_LOG_INFO, "cuda.replay_build",
                "cuda:%d: a command buffer of %u launches is not replayed as a graph: %s", dev->index, rp->n,
                mc__cuda_text(res, t, sizeof t));
        if (!g->exec) g->exec = NULL;
        rgraph_free(cu, g);
        return NULL;
    }
    return g;
}

/* Updates the nodes whose arguments changed, then launches the graph. */
static CUresult relaunch(mc__cuda_device *dev, mc__cuda_queue *q, mc__cuda_replay *rp, rgraph *g)
{
    const mc__cuda_api *cu = dev->cu;
    for (uint32_t k = 0; k < rp->n; k++) {
        uint32_t at = rp->at[k].blob_at, len = rp->steps[k].param_bytes;
        if (memcmp(g->blob + at, rp->blob + at, len) == 0) continue;
        CUDA_KERNEL_NODE_PARAMS_v2 kn;
        kernel_params(rp, k, rp->blob, rp->kp + rp->at[k].kp_at, &kn);
        CUresult res = cu->GraphExecKernelNodeSetParams(g->exec, g->nodes[k], &kn);
        if (res != CUDA_SUCCESS) return res;
        memcpy(g->blob + at, rp->blob + at, len);
    }
    return cu->GraphLaunch(g->exec, q->stream);
}

/* Sends the collected launches one by one; on a failure, r->nran and *fault
 * say which pass it was in. */
static mc_status launch_each(mc__cuda_device *dev, mc__cuda_queue *q, mc__cuda_rec *r, const mc__submission *sub,
                             mc__cuda_replay *rp, uint32_t *fault)
{
    for (uint32_t k = 0; k < rp->n; k++) {
        const mc__replay_step *st = &rp->steps[k];
        const launch_at *a = &rp->at[k];
        void **kp = rp->kp + a->kp_at;
        for (uint32_t i = 0; i < a->nparams; i++) kp[i] = rp->blob + rp->param_off[a->kp_at + i];
        CUresult res = dev->cu->LaunchKernel(a->pl->fn, st->grid[0], st->grid[1], st->grid[2], st->block[0],
                                             st->block[1], st->block[2], st->smem, q->stream, kp, NULL);
        if (res != CUDA_SUCCESS) {
            char what[160];
            snprintf(what, sizeof what, "launching '%s' with (%u,%u,%u) x (%u,%u,%u) threads", a->pl->name, st->grid[0],
                     st->grid[1], st->grid[2], st->block[0], st->block[1], st->block[2]);
            r->nran = a->pass;
            *fault = mc__cuda_is_sticky(res) ? UINT32_MAX : a->pass;
            return mc__cuda_enc_fail(dev, r, res, what, &sub->passes[a->pass]);
        }
    }
    return MC_OK;
}

mc_status mc__cuda_replay_end(mc__cuda_device *dev, mc__cuda_queue *q, mc__cuda_rec *r, const mc__submission *sub,
                              mc_status encoded, uint32_t *fault)
{
    mc__cuda_replay *rp = q->replay;
    q->collecting = false;
    if (!grow((void **)&rp->kp, &rp->kp_cap, rp->nparam ? rp->nparam : 1, sizeof *rp->kp)) rp->broken = true;
    if (rp->broken) {
        /* Nothing can be sent from what was collected: encode again the
         * plain way. Only reached before any launch went out. */
        return MC_ERR_UNSUPPORTED;
    }
    uint32_t nran = r->nran;
    /* A pass that failed while encoding: what came before it still runs, as
     * with plain launches. */
    if (encoded != MC_OK) {
        mc_status s = launch_each(dev, q, r, sub, rp, fault);
        if (s == MC_OK) r->nran = nran;
        return s == MC_OK ? encoded : s;
    }
    mc__replay_entry *e;
    mc__replay_action act = mc__replay_lookup(&rp->table, rp->steps, rp->n, &e);
    if (act == MC__REPLAY_BUILD) {
        rgraph *g = build(dev, rp);
        if (g) {
            e->graph = g;
            act = MC__REPLAY_LAUNCH;
        } else {
            e->failed = true;
            act = MC__REPLAY_DIRECT;
        }
    }
    if (act == MC__REPLAY_LAUNCH) {
        CUresult res = relaunch(dev, q, rp, e->graph);
        if (res == CUDA_SUCCESS) return MC_OK;
        if (mc__cuda_is_sticky(res)) {
            *fault = UINT32_MAX;
            r->nran = 0;
            return mc__cuda_enc_fail(dev, r, res, "launching the command buffer's graph", &sub->passes[0]);
        }
        /* refused before anything ran: drop the graph, launch one by one */
        char t[120];
        mc__log(MC_LOG_INFO, "cuda.replay_launch", "cuda:%d: graph replay refused (%s); launching one by one",
                dev->index, mc__cuda_text(res, t, sizeof t));
        rgraph_free(dev->cu, e->graph);
        e->graph = NULL;
        e->failed = true;
    }
    mc_status s = launch_each(dev, q, r, sub, rp, fault);
    if (s == MC_OK) r->nran = nran;
    return s;
}

void mc__cuda_replay_forget(mc__cuda_queue *q, const mc__cuda_pipeline *pl)
{
    if (q->replay) mc__replay_forget(&q->replay->table, pl);
}

void mc__cuda_replay_free(mc__cuda_queue *q)
{
    mc__cuda_replay *rp = q->replay;
    if (!rp) return;
    mc__replay_clear(&rp->table);
    free(rp->steps);
    free(rp->at);
    free(rp->param_off);
    free(rp->blob);
    free(rp->kp);
    free(rp);
    q->replay = NULL;
}
