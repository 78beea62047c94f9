/* GPU-driven work: indirect dispatch, command lists, ranges the device
 * chooses, stages that size the next stage (F148-F150, F667-F674). Every
 * test runs on $MC_DEVICE (cpu by default). */
#include "mc_test.h"

#include "engine/engine.h" /* mc__cmdlist_test_copy_in */

#include <stdlib.h>

#define SEC 1000000000ull

typedef struct fixture {
    mc_device *d;
    mc_queue *q;
    mc_pipeline *add_one, *iota, *store, *filter, *args, *square;
    mc_buffer *buffers[16]; /* made by buffer(); released by fixture_close */
    uint32_t nbuffers;
} fixture;

static int fixture_open(fixture *f)
{
    memset(f, 0, sizeof *f);
    f->d = mct_open_device(0);
    if (!f->d) return -1;
    f->add_one = mct_pipeline(f->d, "basic", "add_one");
    f->iota = mct_pipeline(f->d, "basic", "iota");
    f->store = mct_pipeline(f->d, "compact", "store_words");
    f->filter = mct_pipeline(f->d, "compact", "compact_filter");
    f->args = mct_pipeline(f->d, "compact", "compact_args");
    f->square = mct_pipeline(f->d, "compact", "compact_square");
    if (!f->add_one || !f->iota || !f->store || !f->filter || !f->args || !f->square) return -1;
    return mc_queue_create(f->d, NULL, &f->q) == MC_OK ? 0 : -1;
}

static void fixture_close(fixture *f)
{
    for (uint32_t i = 0; i < f->nbuffers; i++) mc_buffer_release(f->buffers[i]);
    mc_queue_release(f->q);
    mc_pipeline_release(f->add_one);
    mc_pipeline_release(f->iota);
    mc_pipeline_release(f->store);
    mc_pipeline_release(f->filter);
    mc_pipeline_release(f->args);
    mc_pipeline_release(f->square);
    mc_device_release(f->d);
}

/* A zeroed shared buffer that the fixture releases when it closes. */
static mc_buffer *buffer(fixture *f, size_t size, const char *label)
{
    mc_buffer *b = NULL;
    mc_buffer_desc bd = {size, MC_STORAGE_SHARED, label, NULL};
    if (f->nbuffers == sizeof f->buffers / sizeof f->buffers[0]) return NULL;
    if (mc_buffer_create(f->d, &bd, &b) != MC_OK) return NULL;
    f->buffers[f->nbuffers++] = b;
    void *zero = calloc(1, size);
    mc_buffer_write(b, 0, zero, size);
    free(zero);
    return b;
}

static uint32_t word(mc_buffer *b, uint32_t i)
{
    uint32_t v = 0xdeadbeefu;
    mc_buffer_read(b, (size_t)i * 4, &v, 4);
    return v;
}

/* Binds add_one (data[i] += 1 for i < n) for the dispatches that follow. */
static mc_status bind_add_one(mc_pass *p, const fixture *f, mc_buffer *data, const uint32_t *n)
{
    mc_status s = mc_pass_set_pipeline(p, f->add_one);
    if (s == MC_OK) s = mc_pass_set_buffer(p, 0, data, 0);
    if (s == MC_OK) s = mc_pass_set_bytes(p, 1, n, 4);
    return s;
}

/* A kernel writes up to 8 words into dst (by value: 32 bytes of arguments). */
static mc_status store_words(mc_pass *p, mc_pipeline *store, mc_buffer *dst, size_t offset, const uint32_t *words,
                             uint32_t n)
{
    uint32_t w[8] = {0};
    memcpy(w, words, (size_t)n * 4);
    mc_status s = mc_pass_set_pipeline(p, store);
    if (s == MC_OK) s = mc_pass_set_buffer(p, 0, dst, offset);
    if (s == MC_OK) s = mc_pass_set_bytes(p, 1, w, sizeof w);
    if (s == MC_OK) s = mc_pass_set_bytes(p, 2, &n, 4);
    if (s == MC_OK) s = mc_pass_dispatch(p, (mc_size3){1, 1, 1}, (mc_size3){1, 1, 1});
    return s;
}

/* A pass of its own that writes the words. */
static mc_status store_pass(mc_cmdbuf *cb, mc_pipeline *store, mc_buffer *dst, size_t offset, const uint32_t *words,
                            uint32_t n)
{
    mc_pass *p;
    mc_status s = mc_cmdbuf_begin_pass(cb, "store", &p);
    if (s == MC_OK) s = store_words(p, store, dst, offset, words, n);
    if (s == MC_OK) s = mc_pass_end(p);
    return s;
}

/* Command k of a counting list: element k of `counters` += 1. */
static mc_status count_cmd(mc_pass *p, mc_pipeline *add_one, mc_buffer *counters, uint32_t k)
{
    uint32_t one = 1;
    mc_status s = mc_pass_set_pipeline(p, add_one);
    if (s == MC_OK) s = mc_pass_set_buffer(p, 0, counters, (size_t)k * 4);
    if (s == MC_OK) s = mc_pass_set_bytes(p, 1, &one, 4);
    if (s == MC_OK) s = mc_pass_dispatch(p, (mc_size3){1, 1, 1}, (mc_size3){1, 1, 1});
    return s;
}

/* A list of n counting commands, barriers between them. */
static mc_cmdlist *counting_list(fixture *f, mc_buffer *counters, uint32_t n, const char *label)
{
    mc_cmdlist_desc ld = {label, 0};
    mc_cmdlist *l = NULL;
    mc_pass *p;
    if (mc_cmdlist_create(f->d, &ld, &l) != MC_OK || mc_cmdlist_begin(l, &p) != MC_OK) return NULL;
    for (uint32_t k = 0; k < n; k++)
        if ((k && mc_pass_barrier(p) != MC_OK) || count_cmd(p, f->add_one, counters, k) != MC_OK) return NULL;
    if (mc_cmdlist_end(l) != MC_OK) return NULL;
    return l;
}

static mc_status run(mc_cmdbuf *cb)
{
    mc_status s = mc_cmdbuf_commit(cb);
    if (s == MC_OK) s = mc_cmdbuf_wait(cb, 60 * SEC);
    if (s == MC_OK) s = mc_cmdbuf_status(cb, NULL);
    return s;
}

/* ---- indirect dispatch --------------------------------------------------- */

MC_TEST(indirect_zero_grids_do_nothing)
{
    fixture f;
    CHECK_EQ(fixture_open(&f), 0);
    uint32_t n = 256;
    mc_buffer *data = buffer(&f, n * 4, "data"), *grids = buffer(&f, 64, "grids");
    CHECK(data && grids);
    const uint32_t g[12] = {0, 1, 1, 1, 0, 1, 1, 1, 0, 2, 1, 1};
    CHECK_OK(mc_buffer_write(grids, 0, g, sizeof g));
    for (int validation = 0; validation < 2; validation++) {
        mc_validation_set(validation != 0); /* a zero grid is valid in validation mode too */
        mc_cmdbuf *cb;
        CHECK_OK(mc_cmdbuf_create(f.q, NULL, &cb));
        mc_pass *p;
        CHECK_OK(mc_cmdbuf_begin_pass(cb, "zeros", &p));
        CHECK_OK(bind_add_one(p, &f, data, &n));
        for (int k = 0; k < 3; k++) CHECK_OK(mc_pass_dispatch_indirect(p, grids, (size_t)k * 12, (mc_size3){64, 1, 1}));
        CHECK_OK(mc_pass_end(p));
        CHECK_OK(run(cb));
        mc_cmdbuf_release(cb);
        for (uint32_t i = 0; i < n; i++) CHECK_EQ(word(data, i), (uint32_t)validation * (i < 128));
        /* a real grid after them still runs */
        CHECK_OK(mc_cmdbuf_create(f.q, NULL, &cb));
        CHECK_OK(mc_cmdbuf_begin_pass(cb, "two groups", &p));
        CHECK_OK(bind_add_one(p, &f, data, &n));
        CHECK_OK(mc_pass_dispatch_indirect(p, grids, 0, (mc_size3){64, 1, 1}));
        CHECK_OK(mc_pass_dispatch_indirect(p, grids, 36, (mc_size3){64, 1, 1}));
        CHECK_OK(mc_pass_end(p));
        CHECK_OK(run(cb));
        mc_cmdbuf_release(cb);
        for (uint32_t i = 0; i < n; i++) CHECK_EQ(word(data, i), i < 128 ? (uint32_t)validation + 1 : 0);
    }
    mc_validation_set(false);
    fixture_close(&f);
    return 0;
}

MC_TEST(indirect_grid_written_by_a_kernel_in_the_same_command_buffer)
{
    fixture f;
    CHECK_EQ(fixture_open(&f), 0);
    uint32_t n = 1024;
    mc_buffer *data = buffer(&f, n * 4, "data"), *grid = buffer(&f, 32, "grid");
    CHECK(data && grid);
    mc_cmdbuf *cb;
    CHECK_OK(mc_cmdbuf_create(f.q, NULL, &cb));
    mc_pass *p;
    /* the same pass: written, barrier, read */
    CHECK_OK(mc_cmdbuf_begin_pass(cb, "write then dispatch", &p));
    const uint32_t three[3] = {3, 1, 1};
    CHECK_OK(store_words(p, f.store, grid, 0, three, 3));
    CHECK_OK(mc_pass_barrier(p));
    CHECK_OK(bind_add_one(p, &f, data, &n));
    CHECK_OK(mc_pass_dispatch_indirect(p, grid, 0, (mc_size3){64, 1, 1}));
    CHECK_OK(mc_pass_end(p));
    /* a later pass rewrites it; the pass after reads the new grid */
    const uint32_t five[3] = {5, 1, 1};
    CHECK_OK(store_pass(cb, f.store, grid, 0, five, 3));
    CHECK_OK(mc_cmdbuf_begin_pass(cb, "dispatch", &p));
    CHECK_OK(bind_add_one(p, &f, data, &n));
    CHECK_OK(mc_pass_dispatch_indirect(p, grid, 0, (mc_size3){64, 1, 1}));
    CHECK_OK(mc_pass_end(p));
    CHECK_OK(run(cb));
    mc_cmdbuf_release(cb);
    for (uint32_t i = 0; i < n; i++) CHECK_EQ(word(data, i), (i < 192) + (i < 320));
    fixture_close(&f);
    return 0;
}

/* A pass of one indirect add_one reading its grid from grids+offset. */
static mc_status indirect_pass(mc_cmdbuf *cb, fixture *f, mc_buffer *data, uint32_t n, mc_buffer *grids, size_t off)
{
    mc_pass *p;
    mc_status s = mc_cmdbuf_begin_pass(cb, "too big", &p);
    if (s == MC_OK) s = bind_add_one(p, f, data, &n);
    if (s == MC_OK) s = mc_pass_dispatch_indirect(p, grids, off, (mc_size3){1, 1, 1});
    if (s == MC_OK) s = mc_pass_end(p);
    return s;
}

MC_TEST(validation_refuses_indirect_counts_over_the_limit)
{
    fixture f;
    CHECK_EQ(fixture_open(&f), 0);
    mc_validation_set(true);
    uint32_t n = 64;
    mc_buffer *data = buffer(&f, n * 4, "data"), *grids = buffer(&f, 64, "grids");
    CHECK(data && grids);
    /* x over 2^31-1, y over 65535, z over 65535 */
    const uint32_t g[9] = {0x80000000u, 1, 1, 1, 65536, 1, 1, 1, 70000};
    CHECK_OK(mc_buffer_write(grids, 0, g, sizeof g));
    for (int k = 0; k < 3; k++) {
        mc_queue *q; /* a refused pass fails its queue, as any error does (F687) */
        CHECK_OK(mc_queue_create(f.d, NULL, &q));
        mc_cmdbuf *cb;
        CHECK_OK(mc_cmdbuf_create(q, NULL, &cb));
        CHECK_OK(indirect_pass(cb, &f, data, n, grids, (size_t)k * 12));
        const char *msg;
        CHECK_OK(mc_cmdbuf_commit(cb));
        CHECK_OK(mc_cmdbuf_wait(cb, 60 * SEC));
        CHECK_STATUS(mc_cmdbuf_status(cb, &msg), MC_ERR_VALIDATION);
        CHECK_STR_CONTAINS(msg, "exceed the limits");
        CHECK_STR_CONTAINS(msg, "65535");
        CHECK_STR_CONTAINS(msg, "too big");
        mc_pass_info pi;
        CHECK_OK(mc_cmdbuf_get_pass_info(cb, 0, &pi));
        CHECK_EQ(pi.state, MC_PASS_FAULTED);
        mc_cmdbuf_release(cb);
        mc_queue_release(q);
        for (uint32_t i = 0; i < n; i++) CHECK_EQ(word(data, i), 0); /* it did not run */
    }
    /* the same counts inside a command list */
    mc_cmdlist *l;
    mc_cmdlist_desc ld = {"too big too", 0};
    CHECK_OK(mc_cmdlist_create(f.d, &ld, &l));
    mc_pass *p;
    CHECK_OK(mc_cmdlist_begin(l, &p));
    CHECK_OK(bind_add_one(p, &f, data, &n));
    CHECK_OK(mc_pass_dispatch_indirect(p, grids, 12, (mc_size3){1, 1, 1}));
    CHECK_OK(mc_cmdlist_end(l));
    mc_queue *q;
    CHECK_OK(mc_queue_create(f.d, NULL, &q));
    mc_cmdbuf *cb;
    CHECK_OK(mc_cmdbuf_create(q, NULL, &cb));
    CHECK_OK(mc_cmdbuf_execute_cmdlist(cb, l, 0, MC_CMDLIST_ALL));
    const char *msg;
    CHECK_OK(mc_cmdbuf_commit(cb));
    CHECK_OK(mc_cmdbuf_wait(cb, 60 * SEC));
    CHECK_STATUS(mc_cmdbuf_status(cb, &msg), MC_ERR_VALIDATION);
    CHECK_STR_CONTAINS(msg, "exceed the limits");
    CHECK_STR_CONTAINS(msg, "too big too");
    for (uint32_t i = 0; i < n; i++) CHECK_EQ(word(data, i), 0);
    mc_cmdbuf_release(cb);
    mc_queue_release(q);
    mc_cmdlist_release(l);
    /* without validation the CPU device runs what it is given; the CUDA
     * device cannot launch such a grid and reports MC_ERR_INVALID_RESOURCE */
    mc_validation_set(false);
    fixture_close(&f);
    return 0;
}

/* ---- command lists ---------------------------------------------------------- */

static int check_counts(mc_buffer *counters, uint32_t n, const uint32_t *want)
{
    for (uint32_t k = 0; k < n; k++) CHECK_EQ(word(counters, k), want[k]);
    return 0;
}

MC_TEST(cmdlist_static_ranges_run_without_encoding_again)
{
    fixture f;
    CHECK_EQ(fixture_open(&f), 0);
    enum { N = 8 };
    mc_buffer *counters = buffer(&f, N * 4, "counters");
    CHECK(counters);
    mc_cmdlist *l = counting_list(&f, counters, N, "count");
    CHECK(l);
    CHECK_EQ(mc_cmdlist_command_count(l), N);
    CHECK(strcmp(mc_cmdlist_label(l), "count") == 0);
    uint32_t want[N] = {0};
    mc_cmdbuf *cb;
    CHECK_OK(mc_cmdbuf_create(f.q, NULL, &cb));
    CHECK_OK(mc_cmdbuf_execute_cmdlist(cb, l, 0, MC_CMDLIST_ALL)); /* all */
    CHECK_OK(mc_cmdbuf_execute_cmdlist(cb, l, 2, 3));              /* 2, 3, 4 */
    CHECK_OK(mc_cmdbuf_execute_cmdlist(cb, l, 5, 100));            /* 5, 6, 7: clamped */
    CHECK_OK(mc_cmdbuf_execute_cmdlist(cb, l, 7, 1));              /* the last */
    CHECK_OK(mc_cmdbuf_execute_cmdlist(cb, l, 3, 0));              /* empty */
    CHECK_OK(mc_cmdbuf_execute_cmdlist(cb, l, N, MC_CMDLIST_ALL)); /* empty: starts at the end */
    CHECK_STATUS(mc_cmdbuf_execute_cmdlist(cb, l, N + 1, 1), MC_ERR_INVALID_ARGUMENT);
    CHECK_STR_CONTAINS(mc_last_error(), "past the end");
    CHECK_EQ(mc_cmdbuf_pass_count(cb), 6);
    CHECK_OK(run(cb));
    for (size_t i = 0; i < 6; i++) {
        mc_pass_info pi;
        CHECK_OK(mc_cmdbuf_get_pass_info(cb, i, &pi));
        CHECK(strcmp(pi.label, "count") == 0); /* each execution is a pass labelled with the list */
        CHECK_EQ(pi.state, MC_PASS_COMPLETED);
    }
    mc_cmdbuf_release(cb);
    const uint32_t after_one[N] = {1, 1, 2, 2, 2, 2, 2, 3};
    CHECK_EQ(check_counts(counters, N, after_one), 0);
    /* the same list in more command buffers, released right after commit */
    for (int i = 0; i < 5; i++) {
        CHECK_OK(mc_cmdbuf_create(f.q, NULL, &cb));
        CHECK_OK(mc_cmdbuf_execute_cmdlist(cb, l, 0, MC_CMDLIST_ALL));
        CHECK_OK(mc_cmdbuf_commit(cb));
        mc_cmdbuf_release(cb);
    }
    CHECK_OK(mc_queue_wait_idle(f.q, 60 * SEC));
    for (uint32_t k = 0; k < N; k++) want[k] = after_one[k] + 5;
    CHECK_EQ(check_counts(counters, N, want), 0);
    mc_cmdlist_release(l);
    fixture_close(&f);
    return 0;
}

MC_TEST(cmdlist_commands_keep_their_own_bindings)
{
    fixture f;
    CHECK_EQ(fixture_open(&f), 0);
    mc_buffer *a = buffer(&f, 64 * 4, "a"), *b = buffer(&f, 64 * 4, "b");
    CHECK(a && b);
    mc_cmdlist *l;
    CHECK_OK(mc_cmdlist_create(f.d, NULL, &l));
    mc_pass *p;
    CHECK_OK(mc_cmdlist_begin(l, &p));
    uint32_t n = 64, base = 1000;
    /* 0: iota into a (three arguments) */
    CHECK_OK(mc_pass_set_pipeline(p, f.iota));
    CHECK_OK(mc_pass_set_buffer(p, 0, a, 0));
    CHECK_OK(mc_pass_set_bytes(p, 1, &n, 4));
    CHECK_OK(mc_pass_set_bytes(p, 2, &base, 4));
    CHECK_OK(mc_pass_dispatch(p, (mc_size3){1, 1, 1}, (mc_size3){64, 1, 1}));
    /* changing bindings after a command does not change it */
    base = 5;
    CHECK_OK(mc_pass_barrier(p));
    /* 1: add_one on b; slot 2 still bound but unused */
    CHECK_OK(mc_pass_set_pipeline(p, f.add_one));
    CHECK_OK(mc_pass_set_buffer(p, 0, b, 0));
    CHECK_OK(mc_pass_dispatch(p, (mc_size3){1, 1, 1}, (mc_size3){64, 1, 1}));
    /* 2: a zero grid is a command that does nothing */
    CHECK_OK(mc_pass_dispatch(p, (mc_size3){0, 1, 1}, (mc_size3){64, 1, 1}));
    CHECK_OK(mc_pass_barrier(p));
    /* 3: add_one on a, only the first half */
    uint32_t half = 32;
    CHECK_OK(mc_pass_set_buffer(p, 0, a, 0));
    CHECK_OK(mc_pass_set_bytes(p, 1, &half, 4));
    CHECK_OK(mc_pass_dispatch(p, (mc_size3){1, 1, 1}, (mc_size3){64, 1, 1}));
    CHECK_OK(mc_pass_end(p)); /* the same as mc_cmdlist_end */
    CHECK_EQ(mc_cmdlist_command_count(l), 4);
    CHECK_STATUS(mc_pass_dispatch(p, (mc_size3){1, 1, 1}, (mc_size3){64, 1, 1}), MC_ERR_INVALID_STATE);
    mc_cmdbuf *cb;
    CHECK_OK(mc_cmdbuf_create(f.q, NULL, &cb));
    CHECK_OK(mc_cmdbuf_execute_cmdlist(cb, l, 1, 3)); /* starts in the middle: command 1's own bindings */
    CHECK_OK(mc_cmdbuf_execute_cmdlist(cb, l, 0, 1));
    CHECK_OK(mc_cmdbuf_execute_cmdlist(cb, l, 3, 1));
    CHECK_OK(run(cb));
    mc_cmdbuf_release(cb);
    for (uint32_t i = 0; i < 64; i++) {
        CHECK_EQ(word(b, i), 1);
        CHECK_EQ(word(a, i), 1000 + i + (i < 32));
    }
    mc_cmdlist_release(l);
    fixture_close(&f);
    return 0;
}

MC_TEST(cmdlist_ranges_chosen_by_the_gpu)
{
    fixture f;
    CHECK_EQ(fixture_open(&f), 0);
    enum { N = 8 };
    mc_buffer *counters = buffer(&f, N * 4, "counters"), *ranges = buffer(&f, 256, "ranges");
    CHECK(counters && ranges);
    mc_cmdlist *l = counting_list(&f, counters, N, "count");
    CHECK(l);
    /* {first, count}, written by a kernel just before each execution */
    static const uint32_t cases[][2] = {
        {0, N},       /* full */
        {0, 0},       /* empty */
        {2, 3},       /* partial: 2, 3, 4 */
        {6, 100},     /* count clamped: 6, 7 */
        {N, 1},       /* first at the end: nothing */
        {1000, 1000}, /* first past the end: nothing */
        {7, 1},       /* the last */
        {0, 0xffffffffu},
    };
    enum { NC = sizeof cases / sizeof cases[0] };
    uint32_t want[N] = {0};
    mc_cmdbuf *cb;
    CHECK_OK(mc_cmdbuf_create(f.q, NULL, &cb));
    uint32_t poison[2] = {0, 0}; /* the range buffer holds nothing useful at record time */
    CHECK_OK(mc_buffer_write(ranges, 0, poison, sizeof poison));
    for (uint32_t c = 0; c < NC; c++) {
        CHECK_OK(store_pass(cb, f.store, ranges, c * 8, cases[c], 2));
        CHECK_OK(mc_cmdbuf_execute_cmdlist_indirect(cb, l, ranges, c * 8));
        uint32_t first = cases[c][0] < N ? cases[c][0] : N;
        uint32_t count = cases[c][1] < N - first ? cases[c][1] : N - first;
        for (uint32_t k = first; k < first + count; k++) want[k]++;
    }
    /* one range written in the same command buffer, read by two executions */
    CHECK_OK(mc_cmdbuf_execute_cmdlist_indirect(cb, l, ranges, 2 * 8));
    for (uint32_t k = 2; k < 5; k++) want[k]++;
    CHECK_OK(run(cb));
    for (size_t i = 0; i < mc_cmdbuf_pass_count(cb); i++) {
        mc_pass_info pi;
        CHECK_OK(mc_cmdbuf_get_pass_info(cb, i, &pi));
        CHECK_EQ(pi.state, MC_PASS_COMPLETED);
    }
    mc_cmdbuf_release(cb);
    CHECK_EQ(check_counts(counters, N, want), 0);
    /* argument checks */
    CHECK_OK(mc_cmdbuf_create(f.q, NULL, &cb));
    CHECK_STATUS(mc_cmdbuf_execute_cmdlist_indirect(cb, l, ranges, 2), MC_ERR_INVALID_ARGUMENT);   /* unaligned */
    CHECK_STATUS(mc_cmdbuf_execute_cmdlist_indirect(cb, l, ranges, 252), MC_ERR_INVALID_ARGUMENT); /* 4 bytes left */
    CHECK_STATUS(mc_cmdbuf_execute_cmdlist_indirect(cb, l, NULL, 0), MC_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(mc_cmdbuf_execute_cmdlist_indirect(cb, NULL, ranges, 0), MC_ERR_INVALID_ARGUMENT);
    CHECK_EQ(mc_cmdbuf_pass_count(cb), 0);
    mc_cmdbuf_release(cb);
    mc_cmdlist_release(l);
    fixture_close(&f);
    return 0;
}

MC_TEST(cmdlist_indirect_dispatch_inside_a_list)
{
    fixture f;
    CHECK_EQ(fixture_open(&f), 0);
    uint32_t n = 1024;
    mc_buffer *data = buffer(&f, n * 4, "data"), *grid = buffer(&f, 32, "grid"), *range = buffer(&f, 8, "range");
    CHECK(data && grid && range);
    mc_cmdlist *l;
    mc_cmdlist_desc ld = {"write a grid, use it", 0};
    CHECK_OK(mc_cmdlist_create(f.d, &ld, &l));
    mc_pass *p;
    CHECK_OK(mc_cmdlist_begin(l, &p));
    const uint32_t three[3] = {3, 1, 1};
    CHECK_OK(store_words(p, f.store, grid, 0, three, 3)); /* 0 */
    CHECK_OK(mc_pass_barrier(p));
    CHECK_OK(bind_add_one(p, &f, data, &n)); /* 1: three groups of 64 */
    CHECK_OK(mc_pass_dispatch_indirect(p, grid, 0, (mc_size3){64, 1, 1}));
    CHECK_OK(mc_cmdlist_end(l));
    mc_cmdbuf *cb;
    CHECK_OK(mc_cmdbuf_create(f.q, NULL, &cb));
    CHECK_OK(mc_cmdbuf_execute_cmdlist(cb, l, 0, MC_CMDLIST_ALL));
    const uint32_t seven[3] = {7, 1, 1};
    CHECK_OK(store_pass(cb, f.store, grid, 0, seven, 3));
    CHECK_OK(mc_cmdbuf_execute_cmdlist(cb, l, 1, 1)); /* only the dispatch: reads 7 */
    CHECK_OK(run(cb));
    mc_cmdbuf_release(cb);
    for (uint32_t i = 0; i < n; i++) CHECK_EQ(word(data, i), (i < 192) + (i < 448));
    /* the device chooses the range: command 1 only, then both */
    CHECK_OK(mc_cmdbuf_create(f.q, NULL, &cb));
    const uint32_t r1[2] = {1, 1};
    CHECK_OK(store_pass(cb, f.store, range, 0, r1, 2));
    mc_status s = mc_cmdbuf_execute_cmdlist_indirect(cb, l, range, 0);
    if (s == MC_ERR_UNSUPPORTED) { /* Metal: ICB commands cannot dispatch indirectly (docs/GPU_DRIVEN.md) */
        CHECK(mct_device_kind(f.d) == MC_DEVICE_METAL);
        mc_cmdbuf_release(cb);
    } else {
        CHECK_OK(s);
        const uint32_t r2[2] = {0, 2};
        CHECK_OK(store_pass(cb, f.store, range, 0, r2, 2));
        CHECK_OK(mc_cmdbuf_execute_cmdlist_indirect(cb, l, range, 0));
        CHECK_OK(run(cb));
        mc_cmdbuf_release(cb);
        for (uint32_t i = 0; i < n; i++) CHECK_EQ(word(data, i), (i < 192) * 2 + (i < 448) * 2);
    }
    mc_cmdlist_release(l);
    fixture_close(&f);
    return 0;
}

MC_TEST(cmdlist_rerecording_leaves_earlier_executions_alone)
{
    fixture f;
    CHECK_EQ(fixture_open(&f), 0);
    enum { N = 4 };
    mc_buffer *counters = buffer(&f, N * 4, "counters"), *other = buffer(&f, 64 * 4, "other");
    CHECK(counters && other);
    mc_cmdlist *l = counting_list(&f, counters, N, "first recording");
    CHECK(l);
    /* recorded now, committed after the list was recorded again */
    mc_cmdbuf *early;
    CHECK_OK(mc_cmdbuf_create(f.q, NULL, &early));
    CHECK_OK(mc_cmdbuf_execute_cmdlist(early, l, 0, MC_CMDLIST_ALL));

    /* in flight behind an event: reset is refused */
    mc_event *e;
    CHECK_OK(mc_event_create(f.d, 0, &e));
    mc_cmdbuf *gate, *held;
    CHECK_OK(mc_cmdbuf_create(f.q, NULL, &gate));
    CHECK_OK(mc_cmdbuf_wait_event(gate, e, 1));
    CHECK_OK(mc_cmdbuf_commit(gate));
    CHECK_OK(mc_cmdbuf_create(f.q, NULL, &held));
    CHECK_OK(mc_cmdbuf_execute_cmdlist(held, l, 1, 1));
    CHECK_OK(mc_cmdbuf_commit(held));
    CHECK_STATUS(mc_cmdlist_reset(l), MC_ERR_INVALID_STATE);
    CHECK_STR_CONTAINS(mc_last_error(), "not finished");
    mc_pass *p;
    CHECK_STATUS(mc_cmdlist_begin(l, &p), MC_ERR_INVALID_STATE); /* holds a recording */
    CHECK_OK(mc_event_signal(e, 1));
    CHECK_OK(mc_cmdbuf_wait(held, 60 * SEC));
    CHECK_OK(mc_cmdbuf_status(held, NULL));
    mc_cmdbuf_release(gate);
    mc_cmdbuf_release(held);
    CHECK_OK(mc_cmdlist_reset(l));
    CHECK_EQ(mc_cmdlist_command_count(l), 0);
    mc_cmdbuf *cb;
    CHECK_OK(mc_cmdbuf_create(f.q, NULL, &cb));
    CHECK_STATUS(mc_cmdbuf_execute_cmdlist(cb, l, 0, 1), MC_ERR_INVALID_STATE); /* empty */
    CHECK_STR_CONTAINS(mc_last_error(), "empty");

    /* something else entirely */
    CHECK_OK(mc_cmdlist_begin(l, &p));
    uint32_t n = 64, base = 7;
    CHECK_OK(mc_pass_set_pipeline(p, f.iota));
    CHECK_OK(mc_pass_set_buffer(p, 0, other, 0));
    CHECK_OK(mc_pass_set_bytes(p, 1, &n, 4));
    CHECK_OK(mc_pass_set_bytes(p, 2, &base, 4));
    CHECK_STATUS(mc_cmdbuf_execute_cmdlist(cb, l, 0, 1), MC_ERR_INVALID_STATE); /* still recording */
    CHECK_STR_CONTAINS(mc_last_error(), "recording");
    CHECK_OK(mc_pass_dispatch(p, (mc_size3){1, 1, 1}, (mc_size3){64, 1, 1}));
    CHECK_OK(mc_cmdlist_end(l));
    CHECK_EQ(mc_cmdlist_command_count(l), 1);
    CHECK_OK(mc_cmdbuf_execute_cmdlist(cb, l, 0, MC_CMDLIST_ALL));
    CHECK_OK(run(cb));
    mc_cmdbuf_release(cb);
    CHECK_OK(run(early)); /* the first recording */
    mc_cmdbuf_release(early);
    const uint32_t want[N] = {1, 2, 1, 1};
    CHECK_EQ(check_counts(counters, N, want), 0);
    for (uint32_t i = 0; i < 64; i++) CHECK_EQ(word(other, i), 7 + i);
    /* reset while recording drops the recording in progress */
    CHECK_OK(mc_cmdlist_reset(l));
    CHECK_OK(mc_cmdlist_begin(l, &p));
    CHECK_OK(count_cmd(p, f.add_one, counters, 3));
    CHECK_OK(mc_cmdlist_reset(l));
    CHECK_STATUS(mc_pass_dispatch(p, (mc_size3){1, 1, 1}, (mc_size3){1, 1, 1}), MC_ERR_INVALID_STATE);
    CHECK_EQ(mc_cmdlist_command_count(l), 0);
    mc_event_release(e);
    mc_cmdlist_release(l);
    fixture_close(&f);
    return 0;
}

MC_TEST(cmdlist_argument_checks)
{
    fixture f;
    CHECK_EQ(fixture_open(&f), 0);
    mc_buffer *b = buffer(&f, 64, "b");
    CHECK(b);
    mc_cmdlist *l = NULL;
    CHECK_STATUS(mc_cmdlist_create(NULL, NULL, &l), MC_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(mc_cmdlist_create(f.d, NULL, NULL), MC_ERR_INVALID_ARGUMENT);
    mc_cmdlist_desc ld = {"small", MC_CMDLIST_MAX_COMMANDS + 1};
    CHECK_STATUS(mc_cmdlist_create(f.d, &ld, &l), MC_ERR_INVALID_ARGUMENT);
    CHECK(l == NULL);
    ld.max_commands = 2;
    CHECK_OK(mc_cmdlist_create(f.d, &ld, &l));
    mc_pass *p, *p2;
    CHECK_STATUS(mc_cmdlist_begin(l, NULL), MC_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(mc_cmdlist_end(l), MC_ERR_INVALID_STATE); /* not recording */
    CHECK_OK(mc_cmdlist_begin(l, &p));
    CHECK_STATUS(mc_cmdlist_begin(l, &p2), MC_ERR_INVALID_STATE);
    CHECK_STATUS(mc_pass_dispatch(p, (mc_size3){1, 1, 1}, (mc_size3){1, 1, 1}), MC_ERR_INVALID_STATE); /* no pipeline */
    CHECK_OK(count_cmd(p, f.add_one, b, 0));
    CHECK_OK(count_cmd(p, f.add_one, b, 1));
    CHECK_STATUS(count_cmd(p, f.add_one, b, 2), MC_ERR_INVALID_ARGUMENT); /* full */
    CHECK_STR_CONTAINS(mc_last_error(), "at most 2");
    CHECK_STATUS(mc_pass_set_buffer(p, 31, b, 0), MC_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(mc_pass_dispatch_indirect(p, b, 60, (mc_size3){1, 1, 1}), MC_ERR_INVALID_ARGUMENT);
    CHECK_OK(mc_cmdlist_end(l));
    CHECK_EQ(mc_cmdlist_command_count(l), 2);
    mc_cmdbuf *cb;
    CHECK_OK(mc_cmdbuf_create(f.q, NULL, &cb));
    CHECK_STATUS(mc_cmdbuf_execute_cmdlist(NULL, l, 0, 1), MC_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(mc_cmdbuf_execute_cmdlist(cb, NULL, 0, 1), MC_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(mc_cmdbuf_execute_cmdlist(cb, (mc_cmdlist *)b, 0, 1), MC_ERR_INVALID_ARGUMENT);
    CHECK_OK(mc_cmdbuf_begin_pass(cb, "open", &p2));
    CHECK_STATUS(mc_cmdbuf_execute_cmdlist(cb, l, 0, 1), MC_ERR_INVALID_STATE); /* a pass is open */
    CHECK_OK(mc_pass_end(p2));
    CHECK_OK(mc_cmdbuf_execute_cmdlist(cb, l, 0, 2));
    CHECK_OK(run(cb));
    CHECK_STATUS(mc_cmdbuf_execute_cmdlist(cb, l, 0, 1), MC_ERR_INVALID_STATE); /* committed */
    mc_cmdbuf_release(cb);
    CHECK_EQ(word(b, 0), 1);
    CHECK_EQ(word(b, 1), 1);
    /* the list keeps what it uses: released right after recording, it still runs */
    mc_buffer *mine = buffer(&f, 16, "mine");
    mc_pipeline *add = mct_pipeline(f.d, "basic", "add_one");
    CHECK(mine && add);
    mc_cmdlist *l2;
    CHECK_OK(mc_cmdlist_create(f.d, NULL, &l2));
    CHECK(strcmp(mc_cmdlist_label(l2), "cmdlist") == 0);
    CHECK_OK(mc_cmdlist_begin(l2, &p));
    CHECK_OK(count_cmd(p, add, mine, 2));
    CHECK_OK(mc_cmdlist_end(l2));
    mc_pipeline_release(add);
    CHECK_OK(mc_cmdbuf_create(f.q, NULL, &cb));
    CHECK_OK(mc_cmdbuf_execute_cmdlist(cb, l2, 0, 1));
    mc_cmdlist_release(l2); /* the command buffer holds it */
    CHECK_OK(run(cb));
    mc_cmdbuf_release(cb);
    CHECK_EQ(word(mine, 2), 1);
    /* NULL and stale handles */
    mc_cmdlist_release(NULL);
    CHECK(mc_cmdlist_label(NULL) == NULL);
    CHECK_EQ(mc_cmdlist_command_count(NULL), 0);
    CHECK_STATUS(mc_cmdlist_reset(NULL), MC_ERR_INVALID_ARGUMENT);
    mc_cmdlist_release(l);
    fixture_close(&f);
    return 0;
}

MC_TEST(cmdlist_copied_in_where_the_device_has_no_lists)
{
    fixture f;
    CHECK_EQ(fixture_open(&f), 0);
    mc__cmdlist_test_copy_in(true);
    enum { N = 6 };
    mc_buffer *counters = buffer(&f, N * 4, "counters"), *range = buffer(&f, 8, "range");
    CHECK(counters && range);
    mc_cmdlist *l = counting_list(&f, counters, N, "copied");
    CHECK(l);
    mc_cmdbuf *cb;
    CHECK_OK(mc_cmdbuf_create(f.q, NULL, &cb));
    CHECK_OK(mc_cmdbuf_execute_cmdlist(cb, l, 0, MC_CMDLIST_ALL));
    CHECK_OK(mc_cmdbuf_execute_cmdlist(cb, l, 4, 9));
    CHECK_STATUS(mc_cmdbuf_execute_cmdlist_indirect(cb, l, range, 0), MC_ERR_UNSUPPORTED);
    CHECK_STR_CONTAINS(mc_last_error(), "cannot read the range");
    CHECK_OK(run(cb));
    mc_cmdbuf_release(cb);
    const uint32_t want[N] = {1, 1, 1, 1, 2, 2};
    CHECK_EQ(check_counts(counters, N, want), 0);
    mc__cmdlist_test_copy_in(false);
    mc_cmdlist_release(l);
    fixture_close(&f);
    return 0;
}

/* ---- stages that size the next stage ---------------------------------------- */

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

MC_TEST(compaction_in_one_command_buffer_matches_the_reference)
{
    fixture f;
    CHECK_EQ(fixture_open(&f), 0);
    const uint32_t n = 100003, tg = 64;
    uint32_t *in = malloc(n * 4), *got = malloc(n * 4), *ref = malloc(n * 4);
    CHECK(in && got && ref);
    uint32_t x = 99;
    for (uint32_t i = 0; i < n; i++) {
        x = x * 1664525u + 1013904223u;
        in[i] = x >> 16;
    }
    mc_buffer *b_in = buffer(&f, n * 4, "in"), *kept = buffer(&f, n * 4, "kept"), *out = buffer(&f, n * 4, "out");
    mc_buffer *count = buffer(&f, 4, "count"), *grid = buffer(&f, 12, "grid"), *range = buffer(&f, 8, "range");
    CHECK(b_in && kept && out && count && grid && range);
    CHECK_OK(mc_buffer_write(b_in, 0, in, n * 4));
    /* stage 2 also as a command list whose range stage 1b chooses: command k
     * squares survivors [64k, 64k+64); stage 1b writes {0, threadgroups} */
    enum { CHUNKS = 2048 };
    mc_cmdlist *l;
    mc_cmdlist_desc ld = {"square chunk", CHUNKS};
    CHECK_OK(mc_cmdlist_create(f.d, &ld, &l));
    mc_pass *p;
    CHECK_OK(mc_cmdlist_begin(l, &p));
    CHECK_OK(mc_pass_set_pipeline(p, f.square));
    CHECK_OK(mc_pass_set_buffer(p, 0, kept, 0));
    CHECK_OK(mc_pass_set_buffer(p, 1, out, 0));
    CHECK_OK(mc_pass_set_buffer(p, 2, count, 0));
    for (uint32_t k = 0; k < CHUNKS; k++) {
        uint32_t base = k * tg;
        CHECK_OK(mc_pass_set_bytes(p, 3, &base, 4));
        CHECK_OK(mc_pass_dispatch(p, (mc_size3){1, 1, 1}, (mc_size3){tg, 1, 1}));
    }
    CHECK_OK(mc_cmdlist_end(l));
    bool gpu_range = true;
    const uint32_t thresholds[] = {0, 20000, 65535};
    for (int use_list = 0; use_list < 2; use_list++) {
        for (size_t t = 0; t < sizeof thresholds / sizeof thresholds[0]; t++) {
            uint32_t threshold = thresholds[t];
            mc_cmdbuf *cb;
            CHECK_OK(mc_cmdbuf_create(f.q, NULL, &cb));
            CHECK_OK(mc_cmdbuf_fill_buffer(cb, count, 0, 4, 0));
            CHECK_OK(mc_cmdbuf_fill_buffer(cb, out, 0, n * 4, 0));
            CHECK_OK(mc_cmdbuf_begin_pass(cb, "filter and size", &p));
            CHECK_OK(mc_pass_set_pipeline(p, f.filter));
            CHECK_OK(mc_pass_set_buffer(p, 0, b_in, 0));
            CHECK_OK(mc_pass_set_buffer(p, 1, kept, 0));
            CHECK_OK(mc_pass_set_buffer(p, 2, count, 0));
            CHECK_OK(mc_pass_set_bytes(p, 3, &n, 4));
            CHECK_OK(mc_pass_set_bytes(p, 4, &threshold, 4));
            CHECK_OK(mc_pass_dispatch(p, (mc_size3){(n + tg - 1) / tg, 1, 1}, (mc_size3){tg, 1, 1}));
            CHECK_OK(mc_pass_barrier(p));
            CHECK_OK(mc_pass_set_pipeline(p, f.args));
            CHECK_OK(mc_pass_set_buffer(p, 0, count, 0));
            CHECK_OK(mc_pass_set_buffer(p, 1, grid, 0));
            CHECK_OK(mc_pass_set_bytes(p, 2, &tg, 4));
            CHECK_OK(mc_pass_set_buffer(p, 3, range, 0));
            CHECK_OK(mc_pass_dispatch(p, (mc_size3){1, 1, 1}, (mc_size3){1, 1, 1}));
            if (!use_list) {
                CHECK_OK(mc_pass_barrier(p));
                CHECK_OK(mc_pass_set_pipeline(p, f.square));
                CHECK_OK(mc_pass_set_buffer(p, 0, kept, 0));
                CHECK_OK(mc_pass_set_buffer(p, 1, out, 0));
                CHECK_OK(mc_pass_set_buffer(p, 2, count, 0));
                uint32_t zero = 0;
                CHECK_OK(mc_pass_set_bytes(p, 3, &zero, 4));
                CHECK_OK(mc_pass_dispatch_indirect(p, grid, 0, (mc_size3){tg, 1, 1}));
            }
            CHECK_OK(mc_pass_end(p));
            if (use_list) {
                mc_status s = mc_cmdbuf_execute_cmdlist_indirect(cb, l, range, 0);
                if (s == MC_ERR_UNSUPPORTED) gpu_range = false;
                else CHECK_OK(s);
            }
            CHECK_OK(run(cb));
            mc_cmdbuf_release(cb);
            if (use_list && !gpu_range) break;
            uint32_t m = 0;
            for (uint32_t i = 0; i < n; i++)
                if (in[i] > threshold) ref[m++] = in[i];
            CHECK_EQ(word(count, 0), m);
            CHECK_EQ(word(grid, 0), (m + tg - 1) / tg);
            CHECK_EQ(word(range, 1), (m + tg - 1) / tg);
            CHECK_OK(mc_buffer_read(kept, 0, got, (size_t)m * 4));
            qsort(got, m, 4, cmp_u32);
            qsort(ref, m, 4, cmp_u32);
            CHECK(memcmp(got, ref, (size_t)m * 4) == 0);
            CHECK_OK(mc_buffer_read(out, 0, got, n * 4));
            qsort(got, m, 4, cmp_u32);
            for (uint32_t i = 0; i < m; i++) ref[i] *= ref[i];
            qsort(ref, m, 4, cmp_u32);
            CHECK(memcmp(got, ref, (size_t)m * 4) == 0);
            for (uint32_t i = m; i < n; i++) CHECK_EQ(word(out, i), 0); /* nothing past the survivors */
        }
    }
    mc_cmdlist_release(l);
    free(in);
    free(got);
    free(ref);
    fixture_close(&f);
    return 0;
}
