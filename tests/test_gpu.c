/* Real GPU faults: only where a CUDA device is present (reported as
 * skipped elsewhere). */
#include "mc_test.h"

#include <stdlib.h>
#include <unistd.h>

MC_TEST(cuda_out_of_bounds_write_is_device_lost)
{
    mc_device *d;
    mc_status s = mc_device_open_name("cuda", &d);
    if (s != MC_OK) MC_SKIP("needs a CUDA device (%s)", mc_last_error());
    mc_pipeline *oob = mct_pipeline(d, "basic", "oob_write");
    CHECK(oob);
    mc_queue *q;
    CHECK_OK(mc_queue_create(d, NULL, &q));
    mc_buffer *b;
    mc_buffer_desc bd = {4096, MC_STORAGE_PRIVATE, "small", NULL};
    CHECK_OK(mc_buffer_create(d, &bd, &b));
    uint64_t far = 1ull << 40; /* elements: terabytes past the buffer */
    mc_cmdbuf *cb;
    CHECK_OK(mc_cmdbuf_create(q, NULL, &cb));
    mc_pass *p;
    CHECK_OK(mc_cmdbuf_begin_pass(cb, "wild-write", &p));
    CHECK_OK(mc_pass_set_pipeline(p, oob));
    CHECK_OK(mc_pass_set_buffer(p, 0, b, 0));
    CHECK_OK(mc_pass_set_bytes(p, 1, &far, sizeof far));
    CHECK_OK(mc_pass_dispatch(p, (mc_size3){1, 1, 1}, (mc_size3){32, 1, 1}));
    CHECK_OK(mc_pass_end(p));
    CHECK_OK(mc_cmdbuf_commit(cb));
    CHECK_OK(mc_cmdbuf_wait(cb, 30ull * 1000000000ull)); /* no hang */
    const char *msg;
    CHECK_STATUS(mc_cmdbuf_status(cb, &msg), MC_ERR_DEVICE_LOST);
    fprintf(stderr, "fault reported as: %s\n", msg);
    mc_pass_info pi;
    CHECK_OK(mc_cmdbuf_get_pass_info(cb, 0, &pi));
    CHECK_EQ(pi.state, MC_PASS_FAULTED);
    CHECK(strcmp(pi.label, "wild-write") == 0);
    CHECK_STATUS(mc_device_check(d), MC_ERR_DEVICE_LOST);
    /* Everything after fails fast with the same code, nothing hangs. */
    mc_cmdbuf *after;
    CHECK_OK(mc_cmdbuf_create(q, NULL, &after));
    CHECK_STATUS(mc_cmdbuf_commit(after), MC_ERR_DEVICE_LOST);
    mc_queue *q2;
    CHECK_STATUS(mc_queue_create(d, NULL, &q2), MC_ERR_DEVICE_LOST);
    mc_cmdbuf_release(after);
    mc_cmdbuf_release(cb);
    mc_buffer_release(b);
    mc_queue_release(q);
    mc_pipeline_release(oob);
    mc_device_release(d);
    /* In this process the context stays poisoned: reopening reports it. */
    s = mc_device_open_name("cuda", &d);
    if (s == MC_OK) mc_device_release(d);
    else CHECK_EQ(s, MC_ERR_DEVICE_LOST);
    return 0;
}

/* ---- command buffers replayed as graphs (src/backends/cuda/cuda_replay.h) */

#ifdef MC_HAVE_CUDA
#include "backends/cuda/cuda_replay.h"

static int dropped_graphs;
static void count_drop(void *ctx, void *graph)
{
    (void)ctx;
    (void)graph;
    dropped_graphs++;
}

static void shape(mc__replay_step *s, uint32_t n, const void *pl, uint32_t grid)
{
    memset(s, 0, n * sizeof *s);
    for (uint32_t i = 0; i < n; i++) {
        s[i].pipeline = pl;
        s[i].grid[0] = grid, s[i].grid[1] = s[i].grid[2] = 1;
        s[i].block[0] = 256, s[i].block[1] = s[i].block[2] = 1;
        s[i].param_bytes = 16;
    }
}
#endif

/* The rules that decide when a command buffer becomes a graph: first
 * sighting launched one by one, second built, later replayed; a new grid,
 * pipeline or length is a new shape; the least recently seen is forgotten;
 * forgetting a pipeline forgets its shapes. No GPU needed. */
MC_TEST(cuda_replay_shapes_are_matched_and_forgotten)
{
#ifndef MC_HAVE_CUDA
    MC_SKIP("this build has no CUDA device");
#else
    static int pa, pb; /* two pipeline identities */
    mc__replay_table t;
    memset(&t, 0, sizeof t);
    t.drop_graph = count_drop;
    dropped_graphs = 0;
    mc__replay_step s[50], other[50];
    mc__replay_entry *e, *first;
    shape(s, 50, &pa, 16);
    CHECK_EQ(mc__replay_lookup(&t, s, 50, &first), MC__REPLAY_DIRECT);
    CHECK(first != NULL);
    CHECK_EQ(mc__replay_lookup(&t, s, 50, &e), MC__REPLAY_BUILD);
    CHECK(e == first);
    e->graph = &pa; /* what the backend does after building */
    CHECK_EQ(mc__replay_lookup(&t, s, 50, &e), MC__REPLAY_LAUNCH);
    CHECK(e == first);
    CHECK_EQ(e->sightings, 3);
    /* too short to be worth a graph: never remembered */
    CHECK_EQ(mc__replay_lookup(&t, s, MC__REPLAY_MIN_LAUNCHES - 1, &e), MC__REPLAY_DIRECT);
    CHECK(e == NULL);
    /* one grid, one pipeline or one length different: a new shape */
    shape(other, 50, &pa, 15);
    CHECK_EQ(mc__replay_lookup(&t, other, 50, &e), MC__REPLAY_DIRECT);
    CHECK(e != first);
    shape(other, 50, &pa, 16);
    other[49].pipeline = &pb;
    CHECK_EQ(mc__replay_lookup(&t, other, 50, &e), MC__REPLAY_DIRECT);
    CHECK_EQ(mc__replay_lookup(&t, s, 49, &e), MC__REPLAY_DIRECT);
    CHECK_EQ(mc__replay_lookup(&t, s, 50, &e), MC__REPLAY_LAUNCH);
    /* a failed build is not retried */
    CHECK_EQ(mc__replay_lookup(&t, other, 50, &e), MC__REPLAY_BUILD);
    e->failed = true;
    CHECK_EQ(mc__replay_lookup(&t, other, 50, &e), MC__REPLAY_DIRECT);
    /* forgetting pb drops the shape that used it; pa's graph stays */
    mc__replay_forget(&t, &pb);
    CHECK_EQ(dropped_graphs, 0);
    CHECK_EQ(mc__replay_lookup(&t, other, 50, &e), MC__REPLAY_DIRECT);
    CHECK_EQ(mc__replay_lookup(&t, s, 50, &e), MC__REPLAY_LAUNCH);
    /* MC__REPLAY_ENTRIES new shapes push the built one out, its graph freed */
    for (uint32_t g = 100; g < 100 + MC__REPLAY_ENTRIES; g++) {
        shape(other, 50, &pa, g);
        CHECK_EQ(mc__replay_lookup(&t, other, 50, &e), MC__REPLAY_DIRECT);
    }
    CHECK_EQ(dropped_graphs, 1);
    CHECK_EQ(mc__replay_lookup(&t, s, 50, &e), MC__REPLAY_DIRECT);
    /* forgetting pa empties the table */
    mc__replay_forget(&t, &pa);
    for (uint32_t i = 0; i < MC__REPLAY_ENTRIES; i++) CHECK(t.e[i].steps == NULL);
    mc__replay_clear(&t);
    return 0;
#endif
}

/* Key material of the pipeline cache for CUDA C: NVRTC's file identity,
 * read without loading NVRTC; a change of size or time is a new key. */
MC_TEST(cuda_compiler_identity_is_the_nvrtc_file)
{
#ifndef MC_HAVE_CUDA
    MC_SKIP("this build has no CUDA device");
#else
    extern mc_status mc__cuda_file_identity(const char *path, char *out, size_t cap);
    char dir[] = "/tmp/mc-nvrtc-id-XXXXXX", path[64], a[700], b[700];
    CHECK(mkdtemp(dir) != NULL);
    snprintf(path, sizeof path, "%s/libnvrtc.so", dir);
    FILE *f = fopen(path, "wb");
    CHECK(f != NULL);
    fputs("one", f);
    fclose(f);
    CHECK_OK(mc__cuda_file_identity(path, a, sizeof a));
    CHECK(strstr(a, "libnvrtc.so") != NULL);
    CHECK(strstr(a, "size 3 ") != NULL);
    CHECK_OK(mc__cuda_file_identity(path, b, sizeof b));
    CHECK(strcmp(a, b) == 0);
    f = fopen(path, "ab");
    CHECK(f != NULL);
    fputs("two", f);
    fclose(f);
    CHECK_OK(mc__cuda_file_identity(path, b, sizeof b));
    CHECK(strcmp(a, b) != 0);
    /* a missing file is an error naming it, not a key */
    remove(path);
    CHECK_STATUS(mc__cuda_file_identity(path, b, sizeof b), MC_ERR_IO);
    CHECK(strstr(mc_last_error(), "libnvrtc.so") != NULL);
    CHECK_STATUS(mc__cuda_file_identity(NULL, b, sizeof b), MC_ERR_INVALID_ARGUMENT);
    rmdir(dir);
    return 0;
#endif
}

/* One command buffer of passes over iota, committed again and again with
 * other buffers and arguments (replayed as a graph from the second time),
 * then with another grid (a new shape), then with a new pipeline at maybe
 * the same address: every result is checked. */
static int commit_iota(mc_queue *q, mc_pipeline *pl, mc_buffer **bufs, uint32_t npass, uint32_t n, uint32_t base)
{
    mc_cmdbuf *cb;
    CHECK_OK(mc_cmdbuf_create(q, NULL, &cb));
    for (uint32_t k = 0; k < npass; k++) {
        mc_pass *p;
        uint32_t b = base + 1000u * k;
        CHECK_OK(mc_cmdbuf_begin_pass(cb, "iota", &p));
        CHECK_OK(mc_pass_set_pipeline(p, pl));
        CHECK_OK(mc_pass_set_buffer(p, 0, bufs[k], 0));
        CHECK_OK(mc_pass_set_bytes(p, 1, &n, sizeof n));
        CHECK_OK(mc_pass_set_bytes(p, 2, &b, sizeof b));
        CHECK_OK(mc_pass_dispatch(p, (mc_size3){(n + 63) / 64, 1, 1}, (mc_size3){64, 1, 1}));
        CHECK_OK(mc_pass_end(p));
    }
    CHECK_OK(mc_cmdbuf_commit(cb));
    CHECK_OK(mc_cmdbuf_wait(cb, MC_WAIT_FOREVER));
    CHECK_OK(mc_cmdbuf_status(cb, NULL));
    mc_cmdbuf_release(cb);
    uint32_t *got = malloc(n * sizeof *got);
    CHECK(got != NULL);
    for (uint32_t k = 0; k < npass; k++) {
        CHECK_OK(mc_buffer_read(bufs[k], 0, got, n * sizeof *got));
        for (uint32_t i = 0; i < n; i++)
            if (got[i] != base + 1000u * k + i) {
                fprintf(stderr, "pass %u element %u: %u, want %u\n", k, i, got[i], base + 1000u * k + i);
                free(got);
                return 1;
            }
    }
    free(got);
    return 0;
}

MC_TEST(cuda_repeated_command_buffers_replay_with_new_arguments)
{
    mc_device *d;
    if (mc_device_open_name("cuda", &d) != MC_OK) MC_SKIP("needs a CUDA device (%s)", mc_last_error());
    mc_pipeline *pl = mct_pipeline(d, "basic", "iota");
    CHECK(pl);
    mc_queue *q;
    CHECK_OK(mc_queue_create(d, NULL, &q));
    enum { NPASS = 12, N = 1000 };
    mc_buffer *bufs[2 * NPASS];
    for (int i = 0; i < 2 * NPASS; i++) {
        mc_buffer_desc bd = {N * 4, i % 2 ? MC_STORAGE_SHARED : MC_STORAGE_PRIVATE, "iota", NULL};
        CHECK_OK(mc_buffer_create(d, &bd, &bufs[i]));
    }
    /* same shape five times: buffers swap halves, arguments change */
    for (uint32_t rep = 0; rep < 5; rep++)
        CHECK_EQ(commit_iota(q, pl, bufs + (rep % 2) * NPASS, NPASS, N, 7u * rep), 0);
    /* same arguments twice in a row (nothing to update) */
    CHECK_EQ(commit_iota(q, pl, bufs, NPASS, N, 3), 0);
    CHECK_EQ(commit_iota(q, pl, bufs, NPASS, N, 3), 0);
    /* another grid: a new shape, then replayed too */
    for (uint32_t rep = 0; rep < 3; rep++) CHECK_EQ(commit_iota(q, pl, bufs, NPASS, N - 100, 11u + rep), 0);
    /* the pipeline goes, a new one comes: its shapes are not confused */
    mc_pipeline_release(pl);
    pl = mct_pipeline(d, "basic", "iota");
    CHECK(pl);
    for (uint32_t rep = 0; rep < 3; rep++) CHECK_EQ(commit_iota(q, pl, bufs, NPASS, N, 5u + rep), 0);
    for (int i = 0; i < 2 * NPASS; i++) mc_buffer_release(bufs[i]);
    mc_queue_release(q);
    mc_pipeline_release(pl);
    mc_device_release(d);
    return 0;
}

/* Passes that depend on each other keep their order in a replayed graph:
 * 20 passes of add_one over one buffer, committed 6 times, add 120. */
MC_TEST(cuda_replayed_passes_keep_their_order)
{
    mc_device *d;
    if (mc_device_open_name("cuda", &d) != MC_OK) MC_SKIP("needs a CUDA device (%s)", mc_last_error());
    mc_pipeline *pl = mct_pipeline(d, "basic", "add_one");
    CHECK(pl);
    mc_queue *q;
    CHECK_OK(mc_queue_create(d, NULL, &q));
    uint32_t n = 1u << 16;
    mc_buffer *b;
    mc_buffer_desc bd = {n * 4, MC_STORAGE_PRIVATE, "acc", NULL};
    CHECK_OK(mc_buffer_create(d, &bd, &b));
    uint32_t *z = calloc(n, 4);
    CHECK(z != NULL);
    CHECK_OK(mc_buffer_write(b, 0, z, n * 4));
    for (int rep = 0; rep < 6; rep++) {
        mc_cmdbuf *cb;
        CHECK_OK(mc_cmdbuf_create(q, NULL, &cb));
        for (int k = 0; k < 20; k++) {
            mc_pass *p;
            CHECK_OK(mc_cmdbuf_begin_pass(cb, "add", &p));
            CHECK_OK(mc_pass_set_pipeline(p, pl));
            CHECK_OK(mc_pass_set_buffer(p, 0, b, 0));
            CHECK_OK(mc_pass_set_bytes(p, 1, &n, sizeof n));
            CHECK_OK(mc_pass_dispatch(p, (mc_size3){n / 256, 1, 1}, (mc_size3){256, 1, 1}));
            CHECK_OK(mc_pass_end(p));
        }
        CHECK_OK(mc_cmdbuf_commit(cb));
        mc_cmdbuf_release(cb); /* not waited: the next one queues behind it */
    }
    CHECK_OK(mc_queue_wait_idle(q, MC_WAIT_FOREVER));
    CHECK_OK(mc_buffer_read(b, 0, z, n * 4));
    for (uint32_t i = 0; i < n; i++) CHECK_EQ(z[i], 120);
    free(z);
    mc_buffer_release(b);
    mc_queue_release(q);
    mc_pipeline_release(pl);
    mc_device_release(d);
    return 0;
}

/* Two queues on two GPUs run at the same time: cuda:0's command buffer
 * waits on the GPU for an event only the CPU signals, and cuda:1's work
 * must finish meanwhile; then the event lets cuda:0's finish. Both results
 * are checked. */
MC_TEST(cuda_two_gpus_run_queues_concurrently)
{
    mc_device_info infos[16];
    size_t count = 0, ncuda = 0;
    CHECK_OK(mc_device_list(infos, 16, &count));
    for (size_t i = 0; i < count && i < 16; i++) ncuda += infos[i].kind == MC_DEVICE_CUDA;
    if (ncuda < 2) MC_SKIP("needs 2 CUDA devices, found %zu", ncuda);
    mc_device *d[2];
    CHECK_OK(mc_device_open_name("cuda:0", &d[0]));
    CHECK_OK(mc_device_open_name("cuda:1", &d[1]));
    mc_pipeline *pl[2];
    mc_queue *q[2];
    mc_buffer *b[2];
    mc_cmdbuf *cb[2];
    uint32_t n = 4096;
    for (int k = 0; k < 2; k++) {
        pl[k] = mct_pipeline(d[k], "basic", "iota");
        CHECK(pl[k]);
        CHECK_OK(mc_queue_create(d[k], NULL, &q[k]));
        mc_buffer_desc bd = {n * 4, MC_STORAGE_PRIVATE, "iota", NULL};
        CHECK_OK(mc_buffer_create(d[k], &bd, &b[k]));
    }
    mc_event *gate;
    CHECK_OK(mc_event_create(d[0], 0, &gate));
    for (int k = 0; k < 2; k++) {
        CHECK_OK(mc_cmdbuf_create(q[k], NULL, &cb[k]));
        if (k == 0) CHECK_OK(mc_cmdbuf_wait_event(cb[k], gate, 1));
        mc_pass *p;
        uint32_t base = 100u * (uint32_t)(k + 1);
        CHECK_OK(mc_cmdbuf_begin_pass(cb[k], "iota", &p));
        CHECK_OK(mc_pass_set_pipeline(p, pl[k]));
        CHECK_OK(mc_pass_set_buffer(p, 0, b[k], 0));
        CHECK_OK(mc_pass_set_bytes(p, 1, &n, sizeof n));
        CHECK_OK(mc_pass_set_bytes(p, 2, &base, sizeof base));
        CHECK_OK(mc_pass_dispatch(p, (mc_size3){n / 64, 1, 1}, (mc_size3){64, 1, 1}));
        CHECK_OK(mc_pass_end(p));
    }
    CHECK_OK(mc_cmdbuf_commit(cb[0]));
    CHECK_OK(mc_cmdbuf_commit(cb[1]));
    /* cuda:1 finishes while cuda:0 is held */
    CHECK_OK(mc_cmdbuf_wait(cb[1], 30ull * 1000000000ull));
    CHECK_OK(mc_cmdbuf_status(cb[1], NULL));
    CHECK_STATUS(mc_cmdbuf_wait(cb[0], 1000000ull), MC_ERR_WAIT_TIMEOUT);
    CHECK_OK(mc_event_signal(gate, 1));
    CHECK_OK(mc_cmdbuf_wait(cb[0], 30ull * 1000000000ull));
    CHECK_OK(mc_cmdbuf_status(cb[0], NULL));
    for (int k = 0; k < 2; k++) {
        uint32_t got[4];
        CHECK_OK(mc_buffer_read(b[k], 4 * (n - 4), got, sizeof got));
        for (uint32_t i = 0; i < 4; i++) CHECK_EQ(got[i], 100u * (uint32_t)(k + 1) + n - 4 + i);
        mc_cmdbuf_release(cb[k]);
        mc_buffer_release(b[k]);
        mc_queue_release(q[k]);
        mc_pipeline_release(pl[k]);
    }
    mc_event_release(gate);
    mc_device_release(d[1]);
    mc_device_release(d[0]);
    return 0;
}
