/*
 * The MSL conformance suite: kernels in tests/msl/ (.metal) run on the device
 * ($MC_DEVICE, default cpu) and are compared against host references here;
 * the limits Metal enforces are exceeded one by one; every feature outside
 * the compute subset is refused with its name and line. Also: every .metal
 * file in the repository compiles.
 */
#include "mc_test.h"

#include <dirent.h>
#include <errno.h>
#include <ftw.h>
#include <math.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

typedef struct slot {
    mc_buffer *buf;
    const void *bytes;
    size_t len;
} slot;

/* Every object a test makes through the helpers below, released together by
 * msl_done: each test is its own process, so one list will do. */
static struct {
    mc_library *lib[4];
    mc_pipeline *pl[8];
    mc_buffer *buf[16];
    int nlib, npl, nbuf;
} made;

/* The device named by MC_DEVICE, or a skip where it cannot be opened. */
#define OPEN_MSL_DEVICE(d)             \
    mc_device *d = mct_open_device(0); \
    if (!d) MC_SKIP("the device named by MC_DEVICE cannot be opened")
/* The device and tests/msl/FILE built on it. */
#define OPEN_MSL(d, lib, file)              \
    OPEN_MSL_DEVICE(d);                     \
    mc_library *lib = msl_library(d, file); \
    CHECK(lib)

static mc_library *msl_library(mc_device *d, const char *file)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/tests/msl/%s", MC_SOURCE_DIR, file);
    mc_library *lib = NULL;
    char *log = NULL;
    if (mc_library_create_from_file(d, path, MC_LANG_MSL, NULL, &lib, &log) != MC_OK) {
        fprintf(stderr, "%s: %s\n%s\n", path, mc_last_error(), log ? log : "");
        mc_free(log);
        return NULL;
    }
    if (made.nlib < (int)(sizeof made.lib / sizeof made.lib[0])) made.lib[made.nlib++] = lib;
    return lib;
}

static mc_pipeline *msl_pipeline(mc_device *d, mc_library *lib, const char *fn, const mc_function_constant *fc,
                                 uint32_t nfc)
{
    mc_pipeline_desc pd = MC_PIPELINE_DESC_INIT;
    pd.library = lib;
    pd.function = fn;
    pd.constants = fc;
    pd.constant_count = nfc;
    mc_pipeline *p = NULL;
    if (mc_pipeline_create(d, &pd, &p) != MC_OK) fprintf(stderr, "pipeline %s: %s\n", fn, mc_last_error());
    if (p && made.npl < (int)(sizeof made.pl / sizeof made.pl[0])) made.pl[made.npl++] = p;
    return p;
}

/* One dispatch, waited for; tg0: bytes of threadgroup memory slot 0. */
static mc_status msl_run(mc_device *d, mc_pipeline *p, const slot *slots, uint32_t nslots, mc_size3 groups,
                         mc_size3 threads, size_t tg0)
{
    mc_queue *q = NULL;
    mc_cmdbuf *cb = NULL;
    mc_pass *pass = NULL;
    mc_status s = mc_queue_create(d, NULL, &q);
    if (s == MC_OK) s = mc_cmdbuf_create(q, NULL, &cb);
    if (s == MC_OK) s = mc_cmdbuf_begin_pass(cb, "msl", &pass);
    if (s == MC_OK) s = mc_pass_set_pipeline(pass, p);
    for (uint32_t i = 0; s == MC_OK && i < nslots; i++) {
        if (slots[i].buf) s = mc_pass_set_buffer(pass, i, slots[i].buf, 0);
        else if (slots[i].bytes) s = mc_pass_set_bytes(pass, i, slots[i].bytes, slots[i].len);
    }
    if (s == MC_OK && tg0) s = mc_pass_set_threadgroup_memory(pass, 0, tg0);
    if (s == MC_OK) s = mc_pass_dispatch(pass, groups, threads);
    if (s == MC_OK) s = mc_pass_end(pass);
    if (s == MC_OK) s = mc_cmdbuf_commit(cb);
    if (s == MC_OK) s = mc_cmdbuf_wait(cb, MC_WAIT_FOREVER);
    if (cb) mc_cmdbuf_release(cb);
    if (q) mc_queue_release(q);
    return s;
}

static mc_buffer *msl_buffer(mc_device *d, size_t size, const void *init)
{
    mc_buffer_desc bd = MC_BUFFER_DESC_INIT;
    bd.size = size;
    mc_buffer *b = NULL;
    if (mc_buffer_create(d, &bd, &b) != MC_OK) return NULL;
    if (init && mc_buffer_write(b, 0, init, size) != MC_OK) {
        mc_buffer_release(b);
        return NULL;
    }
    if (made.nbuf < (int)(sizeof made.buf / sizeof made.buf[0])) made.buf[made.nbuf++] = b;
    return b;
}

/* Releases what the helpers made, then the device; the test's result: 0. */
static int msl_done(mc_device *d)
{
    while (made.nbuf) mc_buffer_release(made.buf[--made.nbuf]);
    while (made.npl) mc_pipeline_release(made.pl[--made.npl]);
    while (made.nlib) mc_library_release(made.lib[--made.nlib]);
    mc_device_release(d);
    return 0;
}

/* ---- features.metal ------------------------------------------------------- */

MC_TEST(msl_vectors_swizzles_packed_structs)
{
    OPEN_MSL(d, lib, "features.metal");
    mc_pipeline *p = msl_pipeline(d, lib, "vectors", NULL, 0);
    CHECK(p);
    enum { N = 100 };
    float in[N * 3], out[N * 4];
    for (int i = 0; i < N * 3; i++) in[i] = (float)(i % 17) * 0.5f - 3.0f;
    struct {
        uint32_t n;
        float scale;
        float offset[3];
        int32_t bias;
    } prm = {N, 2.0f, {7.0f, 8.0f, 9.0f}, -4};
    mc_buffer *bo = msl_buffer(d, sizeof out, NULL), *bi = msl_buffer(d, sizeof in, in);
    CHECK(bo && bi);
    slot s[3] = {{bo, NULL, 0}, {bi, NULL, 0}, {NULL, &prm, sizeof prm}};
    CHECK_OK(msl_run(d, p, s, 3, (mc_size3){4, 1, 1}, (mc_size3){32, 1, 1}, 0));
    CHECK_OK(mc_buffer_read(bo, 0, out, sizeof out));
    for (int i = 0; i < N; i++) {
        const float *v = in + 3 * i;
        float a[4] = {v[2], v[1], v[0], 1.0f};
        float ax = a[1] * 2.0f, ay = a[0] * 2.0f;
        a[0] = ax, a[1] = ay;
        float b[4] = {(float)i, -3.0f, 7.0f, 7.0f};
        float dotv = v[0] * 1 + v[1] * 2 + v[2] * 3;
        float crossx = v[1] * 1 - v[2] * 0;
        float want[4] = {a[0] + b[3] + dotv, a[1] + b[2] + 5.0f, a[2] + b[1] + crossx, a[3] + b[0] - 4.0f};
        for (int c = 0; c < 4; c++) CHECK_FLOAT_NEAR(out[4 * i + c], want[c], 1e-4);
    }
    return msl_done(d);
}

/* slot_forms' values, k varying them per dispatch */
typedef struct slot_params {
    uint32_t a;
    float b;
    uint32_t pad[2], c[4];
} slot_params;
enum { SF_N = 64 };
static void sf_values(uint32_t k, slot_params *p, uint32_t w[5], uint32_t d2[6])
{
    memset(p, 0, sizeof *p);
    p->a = 1000u * (k + 1);
    p->b = 7.0f + (float)k;
    for (int j = 0; j < 4; j++) p->c[j] = 100u + (uint32_t)j + k;
    for (int j = 0; j < 5; j++) w[j] = 10u * (uint32_t)j + k;
    for (int j = 0; j < 6; j++) d2[j] = 3u * (uint32_t)j + 2u * k;
}
static int sf_check(const uint32_t *out, uint32_t k)
{
    slot_params p;
    uint32_t w[5], d2[6];
    sf_values(k, &p, w, d2);
    for (uint32_t i = 0; i < SF_N; i++) CHECK_EQ(out[i], p.a + (uint32_t)p.b + p.c[3] + w[i % 5] + d2[2 * (i % 3) + 1]);
    return 0;
}

/* Each of slot_forms' three inputs bound as a buffer and as bytes (8
 * ways); then 6 dispatches a command buffer with their own bytes, twice
 * (a repeated command buffer may be replayed as a graph on CUDA), and a
 * command list of 2. On CUDA a reference slot takes bytes by value or a
 * buffer's address, a pointer slot a buffer or a device copy of the bytes. */
MC_TEST(msl_buffer_slots_take_bytes_or_buffers)
{
    OPEN_MSL(d, lib, "features.metal");
    mc_pipeline *pl = msl_pipeline(d, lib, "slot_forms", NULL, 0);
    CHECK(pl);
    slot_params p;
    uint32_t w[5], d2[6], out[6 * SF_N];
    sf_values(0, &p, w, d2);
    mc_buffer *bo = msl_buffer(d, sizeof out, NULL), *bp = msl_buffer(d, sizeof p, &p),
              *bw = msl_buffer(d, sizeof w, w), *bd = msl_buffer(d, sizeof d2, d2);
    CHECK(bo && bp && bw && bd);
    for (uint32_t way = 0; way < 8; way++) {
        slot s[4] = {{bo, NULL, 0},
                     {way & 1 ? NULL : bp, &p, sizeof p},
                     {way & 2 ? NULL : bw, w, sizeof w},
                     {way & 4 ? NULL : bd, d2, sizeof d2}};
        CHECK_OK(msl_run(d, pl, s, 4, (mc_size3){2, 1, 1}, (mc_size3){32, 1, 1}, 0));
        CHECK_OK(mc_buffer_read(bo, 0, out, SF_N * 4));
        if (sf_check(out, 0)) {
            fprintf(stderr, "way %u (bytes for:%s%s%s)\n", way, way & 1 ? " p" : "", way & 2 ? " w" : "",
                    way & 4 ? " d2" : "");
            return 1;
        }
    }
    mc_queue *q = NULL;
    CHECK_OK(mc_queue_create(d, NULL, &q));
    for (int rep = 0; rep < 3; rep++) {
        mc_cmdbuf *cb = NULL;
        mc_pass *pass = NULL;
        CHECK_OK(mc_cmdbuf_create(q, NULL, &cb));
        CHECK_OK(mc_cmdbuf_begin_pass(cb, "six", &pass));
        CHECK_OK(mc_pass_set_pipeline(pass, pl));
        for (uint32_t k = 0; k < 6; k++) {
            sf_values(k + (uint32_t)rep, &p, w, d2);
            CHECK_OK(mc_pass_set_buffer(pass, 0, bo, (size_t)k * SF_N * 4));
            CHECK_OK(mc_pass_set_bytes(pass, 1, &p, sizeof p));
            CHECK_OK(mc_pass_set_bytes(pass, 2, w, sizeof w));
            CHECK_OK(mc_pass_set_bytes(pass, 3, d2, sizeof d2));
            CHECK_OK(mc_pass_dispatch(pass, (mc_size3){2, 1, 1}, (mc_size3){32, 1, 1}));
        }
        CHECK_OK(mc_pass_end(pass));
        CHECK_OK(mc_cmdbuf_commit(cb));
        CHECK_OK(mc_cmdbuf_wait(cb, MC_WAIT_FOREVER));
        CHECK_OK(mc_cmdbuf_status(cb, NULL));
        mc_cmdbuf_release(cb);
        CHECK_OK(mc_buffer_read(bo, 0, out, sizeof out));
        for (uint32_t k = 0; k < 6; k++) CHECK_EQ(sf_check(out + k * SF_N, k + (uint32_t)rep), 0);
    }
    mc_cmdlist *l = NULL;
    mc_cmdlist_desc ld = {"slot forms", 0};
    CHECK_OK(mc_cmdlist_create(d, &ld, &l));
    mc_pass *lp = NULL;
    CHECK_OK(mc_cmdlist_begin(l, &lp));
    CHECK_OK(mc_pass_set_pipeline(lp, pl));
    for (uint32_t k = 0; k < 2; k++) {
        sf_values(10 + k, &p, w, d2);
        CHECK_OK(mc_pass_set_buffer(lp, 0, bo, (size_t)k * SF_N * 4));
        CHECK_OK(mc_pass_set_bytes(lp, 1, &p, sizeof p));
        CHECK_OK(mc_pass_set_bytes(lp, 2, w, sizeof w));
        CHECK_OK(mc_pass_set_buffer(lp, 3, bd, 0)); /* d2 of k = 0 */
        CHECK_OK(mc_pass_dispatch(lp, (mc_size3){2, 1, 1}, (mc_size3){32, 1, 1}));
    }
    CHECK_OK(mc_cmdlist_end(l));
    mc_cmdbuf *cb = NULL;
    CHECK_OK(mc_cmdbuf_create(q, NULL, &cb));
    CHECK_OK(mc_cmdbuf_execute_cmdlist(cb, l, 0, MC_CMDLIST_ALL));
    CHECK_OK(mc_cmdbuf_commit(cb));
    CHECK_OK(mc_cmdbuf_wait(cb, MC_WAIT_FOREVER));
    CHECK_OK(mc_cmdbuf_status(cb, NULL));
    mc_cmdbuf_release(cb);
    mc_cmdlist_release(l);
    mc_queue_release(q);
    CHECK_OK(mc_buffer_read(bo, 0, out, 2 * SF_N * 4));
    uint32_t d0[6];
    sf_values(0, &p, w, d0);
    for (uint32_t k = 0; k < 2; k++) {
        slot_params pk;
        uint32_t wk[5], dk[6];
        sf_values(10 + k, &pk, wk, dk);
        for (uint32_t i = 0; i < SF_N; i++)
            CHECK_EQ(out[k * SF_N + i], pk.a + (uint32_t)pk.b + pk.c[3] + wk[i % 5] + d0[2 * (i % 3) + 1]);
    }
    return msl_done(d);
}

static uint32_t rev32(uint32_t x)
{
    uint32_t r = 0;
    for (int i = 0; i < 32; i++) r = (r << 1) | ((x >> i) & 1u);
    return r;
}

MC_TEST(msl_integer_functions)
{
    OPEN_MSL(d, lib, "features.metal");
    mc_pipeline *p = msl_pipeline(d, lib, "integers", NULL, 0);
    CHECK(p);
    enum { N = 64 };
    uint32_t out[N * 8];
    int64_t wide[N];
    mc_buffer *bo = msl_buffer(d, sizeof out, NULL), *bw = msl_buffer(d, sizeof wide, NULL);
    CHECK(bo && bw);
    slot s[2] = {{bo, NULL, 0}, {bw, NULL, 0}};
    CHECK_OK(msl_run(d, p, s, 2, (mc_size3){2, 1, 1}, (mc_size3){32, 1, 1}, 0));
    CHECK_OK(mc_buffer_read(bo, 0, out, sizeof out));
    CHECK_OK(mc_buffer_read(bw, 0, wide, sizeof wide));
    for (uint32_t i = 0; i < N; i++) {
        uint32_t x = i * 2654435761u;
        CHECK_EQ(out[i * 8 + 0], (uint32_t)__builtin_popcount(x));
        CHECK_EQ(out[i * 8 + 1], x ? (uint32_t)__builtin_clz(x) : 32u);
        CHECK_EQ(out[i * 8 + 2], (uint32_t)__builtin_ctz(x | 0x80000000u));
        CHECK_EQ(out[i * 8 + 3], (x << 7) | (x >> 25));
        CHECK_EQ(out[i * 8 + 4], rev32(x));
        CHECK_EQ(out[i * 8 + 5], (x >> 4) & 0x1ffu);
        uint32_t sat8 = 200u + i > 255u ? 255u : 200u + i;
        int32_t s16 = -32760 - (int32_t)i < -32768 ? -32768 : -32760 - (int32_t)i;
        CHECK_EQ(out[i * 8 + 6], sat8 + (uint32_t)(s16 + 40000));
        int32_t cl = (int32_t)i - 5 < -2 ? -2 : (int32_t)i - 5 > 3 ? 3 : (int32_t)i - 5;
        CHECK_EQ(out[i * 8 + 7], (uint32_t)(((uint64_t)x * 0x9e3779b9u) >> 32) ^ (uint32_t)cl);
        uint64_t u = (uint64_t)x << 20;
        CHECK_EQ(wide[i], (int64_t)(u / 3u) - (int64_t)(uint16_t)i);
    }
    return msl_done(d);
}

/* round-to-nearest-even float -> half -> float, for normal values */
static float to_half(float f)
{
    if (f == 0.0f) return f;
    int e;
    (void)frexpf(f, &e); /* f = m * 2^e with 0.5 <= abs(m) < 1 */
    float scale = ldexpf(1.0f, 11 - e);
    return rintf(f * scale) / scale;
}

MC_TEST(msl_math_precise_fast_half)
{
    OPEN_MSL(d, lib, "features.metal");
    mc_pipeline *p = msl_pipeline(d, lib, "math", NULL, 0);
    CHECK(p);
    enum { N = 32 };
    float out[N * 6];
    uint16_t hin[N], hout[N];
    for (int i = 0; i < N; i++) hin[i] = (uint16_t)(0x3c00u + (uint16_t)(i * 16)); /* 1.0 up */
    mc_buffer *bo = msl_buffer(d, sizeof out, NULL), *bh = msl_buffer(d, sizeof hout, NULL),
              *bi = msl_buffer(d, sizeof hin, hin);
    CHECK(bo && bh && bi);
    slot s[3] = {{bo, NULL, 0}, {bh, NULL, 0}, {bi, NULL, 0}};
    CHECK_OK(msl_run(d, p, s, 3, (mc_size3){1, 1, 1}, (mc_size3){N, 1, 1}, 0));
    CHECK_OK(mc_buffer_read(bo, 0, out, sizeof out));
    CHECK_OK(mc_buffer_read(bh, 0, hout, sizeof hout));
    for (int i = 0; i < N; i++) {
        float x = (float)i * 0.25f + 0.1f;
        float sat = fminf(fmaxf(x * 0.1f, 0.0f), 1.0f);
        float t = fminf(fmaxf(x / 4.0f, 0.0f), 1.0f);
        float want[6] = {sqrtf(x) + 1.0f / sqrtf(x),
                         expf(x * 0.5f) - logf(x),
                         sinf(x) * cosf(x) + tanhf(x),
                         powf(x, 1.5f) + fmodf(x, 0.7f) + (x - floorf(x)),
                         1.0f + 2.0f * sat + (x < 1.0f ? 0.0f : 1.0f) + t * t * (3.0f - 2.0f * t),
                         1.0f +
                             (x > 2.0f   ? 1.0f
                              : x < 2.0f ? -1.0f
                                         : 0.0f) +
                             fmaf(x, 2.0f, 1.0f)};
        for (int c = 0; c < 6; c++) CHECK_FLOAT_NEAR(out[i * 6 + c], want[c], 1e-4 * fmaxf(1.0f, fabsf(want[c])));
        /* half: h + 2h + 0.5 + half(x), each sum rounded to half */
        float h = 1.0f + (float)(i * 16) / 1024.0f;
        float hv[4] = {h, to_half(h * 2.0f), 0.5f, to_half(x)};
        float acc = to_half(to_half(to_half(hv[0] + hv[1]) + hv[2]) + hv[3]);
        uint32_t bits;
        memcpy(&bits, &acc, 4);
        uint16_t want_h =
            (uint16_t)(((bits >> 16) & 0x8000u) | ((((bits >> 23) & 0xffu) - 112u) << 10) | ((bits >> 13) & 0x3ffu));
        CHECK_EQ(hout[i], want_h);
    }
    return msl_done(d);
}

MC_TEST(msl_every_compute_attribute)
{
    OPEN_MSL(d, lib, "features.metal");
    mc_pipeline *p = msl_pipeline(d, lib, "attributes", NULL, 0);
    CHECK(p);
    const uint32_t gx = 3, gy = 2, tx = 16, ty = 3; /* 48 threads: a full and a partial SIMD group */
    const uint32_t W = gx * tx, H = gy * ty;
    uint32_t *out = calloc((size_t)W * H * 12, 4);
    CHECK(out);
    mc_buffer *bo = msl_buffer(d, (size_t)W * H * 12 * 4, NULL);
    CHECK(bo);
    slot s[1] = {{bo, NULL, 0}};
    CHECK_OK(msl_run(d, p, s, 1, (mc_size3){gx, gy, 1}, (mc_size3){tx, ty, 1}, 0));
    CHECK_OK(mc_buffer_read(bo, 0, out, (size_t)W * H * 12 * 4));
    for (uint32_t y = 0; y < H; y++)
        for (uint32_t x = 0; x < W; x++) {
            const uint32_t *o = out + ((size_t)y * W + x) * 12;
            uint32_t lx = x % tx, ly = y % ty, li = ly * tx + lx;
            CHECK_EQ(o[0], x);
            CHECK_EQ(o[1], y);
            CHECK_EQ(o[2], lx + 100u * ly);
            CHECK_EQ(o[3], x / tx + 100u * (y / ty));
            CHECK_EQ(o[4], tx * ty);
            CHECK_EQ(o[5], gx * gy);
            CHECK_EQ(o[6], W * H);
            CHECK_EQ(o[7], li);
            CHECK_EQ(o[8], li % 32u);
            CHECK_EQ(o[9], li / 32u);
            CHECK_EQ(o[10], (tx * ty + 31u) / 32u);
            CHECK_EQ(o[11], 32u);
        }
    free(out);
    return msl_done(d);
}

MC_TEST(msl_atomics_under_contention)
{
    OPEN_MSL(d, lib, "features.metal");
    mc_pipeline *p = msl_pipeline(d, lib, "atomics", NULL, 0);
    CHECK(p);
    const uint32_t groups = 256, threads = 64, n = groups * threads;
    uint32_t counts[8] = {0};
    int32_t mins[1] = {0};
    float sum = 0.0f;
    mc_buffer *bc = msl_buffer(d, sizeof counts, counts), *bm = msl_buffer(d, sizeof mins, mins),
              *bs = msl_buffer(d, sizeof sum, &sum);
    CHECK(bc && bm && bs);
    slot s[3] = {{bc, NULL, 0}, {bm, NULL, 0}, {bs, NULL, 0}};
    CHECK_OK(msl_run(d, p, s, 3, (mc_size3){groups, 1, 1}, (mc_size3){threads, 1, 1}, 0));
    CHECK_OK(mc_buffer_read(bc, 0, counts, sizeof counts));
    CHECK_OK(mc_buffer_read(bm, 0, mins, sizeof mins));
    CHECK_OK(mc_buffer_read(bs, 0, &sum, sizeof sum));
    for (int i = 0; i < 4; i++) CHECK_EQ(counts[i], n / 4);
    CHECK_EQ(counts[4], n - 1);
    CHECK_EQ(mins[0], -(int32_t)(n - 1));
    CHECK_EQ(counts[5], 0xffffffffu);
    CHECK_EQ(counts[6], 2u * n);
    CHECK_FLOAT_NEAR(sum, 0.5 * n, 0.0); /* exact: halves add exactly below 2^24 */
    return msl_done(d);
}

MC_TEST(msl_function_constants)
{
    OPEN_MSL_DEVICE(d);
    mc_library *lib = msl_library(d, "features.metal");
    CHECK(lib);
    uint32_t mul = 3;
    bool neg = true;
    mc_function_constant fc[2] = {{0, sizeof mul, &mul}, {1, sizeof neg, &neg}};
    mc_pipeline *p1 = msl_pipeline(d, lib, "constants", fc, 2), *p2 = msl_pipeline(d, lib, "constants", fc, 1);
    CHECK(p1 && p2);
    int32_t out[64];
    mc_buffer *bo = msl_buffer(d, sizeof out, NULL);
    CHECK(bo);
    slot s[1] = {{bo, NULL, 0}};
    CHECK_OK(msl_run(d, p1, s, 1, (mc_size3){2, 1, 1}, (mc_size3){32, 1, 1}, 0));
    CHECK_OK(mc_buffer_read(bo, 0, out, sizeof out));
    for (int i = 0; i < 64; i++) CHECK_EQ(out[i], -3 * i);
    /* the same library, fc_negate left undefined */
    CHECK_OK(msl_run(d, p2, s, 1, (mc_size3){2, 1, 1}, (mc_size3){32, 1, 1}, 0));
    CHECK_OK(mc_buffer_read(bo, 0, out, sizeof out));
    for (int i = 0; i < 64; i++) CHECK_EQ(out[i], 3 * i);
    /* bad constants are refused at pipeline creation */
    mc_function_constant bad = {200, 4, &mul};
    mc_pipeline_desc pd = MC_PIPELINE_DESC_INIT;
    pd.library = lib;
    pd.function = "constants";
    pd.constants = &bad;
    pd.constant_count = 1;
    mc_pipeline *p3 = NULL;
    CHECK_STATUS(mc_pipeline_create(d, &pd, &p3), MC_ERR_INVALID_ARGUMENT);
    CHECK_STR_CONTAINS(mc_last_error(), "index 200");
    return msl_done(d);
}

static int expect_refused(mc_device *d, const char *src, const char *want);

/* float <-> half bits for values a half holds exactly (normal or zero) */
static uint16_t exact_half(float f)
{
    uint32_t x;
    memcpy(&x, &f, 4);
    if (!(x & 0x7fffffffu)) return (uint16_t)(x >> 16);
    return (uint16_t)(((x >> 16) & 0x8000u) | ((((x >> 23) & 0xffu) - 112u) << 10) | ((x >> 13) & 0x3ffu));
}

static float half_value(uint16_t h)
{
    uint32_t x = (uint32_t)(h & 0x8000u) << 16;
    if (h & 0x7fffu) x |= ((((h >> 10) & 0x1fu) + 112u) << 23) | ((uint32_t)(h & 0x3ffu) << 13);
    float f;
    memcpy(&f, &x, 4);
    return f;
}

MC_TEST(msl_half_vector_swizzles)
{
    OPEN_MSL(d, lib, "features.metal");
    mc_pipeline *p = msl_pipeline(d, lib, "half_swizzles", NULL, 0);
    CHECK(p);
    enum { N = 64 };
    /* quarters from -8 to 8: every sum and product below is exact in half */
    float a[N][4];
    uint16_t in[N * 4], out[N * 12];
    float f[N * 4];
    for (int i = 0; i < N; i++)
        for (int k = 0; k < 4; k++) {
            a[i][k] = (float)((i * 7 + k * 13) % 65 - 32) * 0.25f;
            in[i * 4 + k] = exact_half(a[i][k]);
        }
    mc_buffer *bi = msl_buffer(d, sizeof in, in), *bo = msl_buffer(d, sizeof out, NULL),
              *bf = msl_buffer(d, sizeof f, NULL);
    CHECK(bi && bo && bf);
    slot s[3] = {{bi, NULL, 0}, {bo, NULL, 0}, {bf, NULL, 0}};
    CHECK_OK(msl_run(d, p, s, 3, (mc_size3){2, 1, 1}, (mc_size3){32, 1, 1}, 0));
    CHECK_OK(mc_buffer_read(bo, 0, out, sizeof out));
    CHECK_OK(mc_buffer_read(bf, 0, f, sizeof f));
    for (int i = 0; i < N; i++) {
        float x = a[i][0], y = a[i][1], z = a[i][2], w = a[i][3];
        /* b = xxxx; b.zyx = 2 * (x, y, z); b.xy = b.yx; c = (w, z, 1);
         * d = (x + z, y + w); d.yx += (w, w) */
        float dx = x + z + w, dy = y + w + w;
        const float want[12] = {2 * y, 2 * z, 2 * x, x, w, z, 1, dx, dx, dy, y, w};
        for (int k = 0; k < 12; k++) CHECK_FLOAT_NEAR(half_value(out[i * 12 + k]), want[k], 0.0);
        const float wantf[4] = {z + 1, w + z, x + w, y + dy};
        for (int k = 0; k < 4; k++) CHECK_FLOAT_NEAR(f[i * 4 + k], wantf[k], 0.0);
    }
    /* writing through a swizzle that names a component twice is an error, as in MSL */
    if (mct_device_kind(d) != MC_DEVICE_METAL &&
        expect_refused(d,
                       "kernel void k(device half4 *o [[buffer(0)]]) {\n  half4 h = o[0];\n  h.xx = half2(1.0h);\n"
                       "  o[0] = h;\n}\n",
                       "names a component twice"))
        return 1;
    return msl_done(d);
}

MC_TEST(msl_vector_function_constants)
{
    OPEN_MSL_DEVICE(d);
    mc_library *lib = msl_library(d, "features.metal");
    CHECK(lib);
    const float f2[2] = {1.5f, -2.0f};
    const int32_t i3[4] = {7, -8, 9, 0};                         /* int3: 16 bytes, as in Metal */
    const uint16_t h4[4] = {0x3800u, 0x3c00u, 0xc000u, 0x4200u}; /* 0.5, 1, -2, 3 */
    const uint8_t b2[2] = {1, 0};                                /* bool2: a byte a component */
    const uint32_t u4[4] = {1u, 2u, 3u, 4000000000u};
    mc_function_constant fc[5] = {
        {10, sizeof f2, f2}, {11, sizeof i3, i3}, {12, sizeof h4, h4}, {13, sizeof b2, b2}, {14, sizeof u4, u4}};
    mc_pipeline *p = msl_pipeline(d, lib, "vector_constants", fc, 5);
    mc_pipeline *pn = msl_pipeline(d, lib, "vector_constants", NULL, 0);
    CHECK(p && pn);
    float out[16];
    mc_buffer *bo = msl_buffer(d, sizeof out, NULL);
    CHECK(bo);
    slot s[1] = {{bo, NULL, 0}};
    CHECK_OK(msl_run(d, p, s, 1, (mc_size3){1, 1, 1}, (mc_size3){32, 1, 1}, 0));
    CHECK_OK(mc_buffer_read(bo, 0, out, sizeof out));
    const float want[16] = {1.5f, -2.0f, 7, -8, 9, 0.5f, 1, -2, 3, 1, 0, 1, 2, 3, 4000000000.0f, 1};
    for (int i = 0; i < 16; i++) CHECK_FLOAT_NEAR(out[i], want[i], 0.0);
    /* none given: every component reads 0, and the constant is undefined */
    CHECK_OK(msl_run(d, pn, s, 1, (mc_size3){1, 1, 1}, (mc_size3){32, 1, 1}, 0));
    CHECK_OK(mc_buffer_read(bo, 0, out, sizeof out));
    for (int i = 0; i < 16; i++) CHECK_FLOAT_NEAR(out[i], 0.0f, 0.0);
    /* a value of another size than the declared type's is refused, naming
     * the constant, its type and both sizes */
    mc_device_kind kind = mct_device_kind(d);
    const struct {
        mc_function_constant fc;
        const char *want;
    } bad[3] = {{{10, 4, f2}, "declared 'float2 vc_f2', a value of 8 bytes; the value given has 4 bytes"},
                {{13, 8, i3}, "declared 'bool2 vc_b2', a value of 2 bytes; the value given has 8 bytes"},
                {{11, 12, i3}, "declared 'int3 vc_i3', a value of 16 bytes; the value given has 12 bytes"}};
    for (int i = 0; i < 3 && kind == MC_DEVICE_CPU; i++) {
        mc_pipeline_desc pd = MC_PIPELINE_DESC_INIT;
        pd.library = lib;
        pd.function = "vector_constants";
        pd.constants = &bad[i].fc;
        pd.constant_count = 1;
        mc_pipeline *pb = NULL;
        CHECK_STATUS(mc_pipeline_create(d, &pd, &pb), MC_ERR_INVALID_ARGUMENT);
        CHECK_STR_CONTAINS(mc_last_error(), bad[i].want);
        CHECK(!pb);
    }
    return msl_done(d);
}

/* ---- barriers.metal ----------------------------------------------------------- */

MC_TEST(msl_barrier_tiled_reduction)
{
    OPEN_MSL(d, lib, "barriers.metal");
    mc_pipeline *pt = msl_pipeline(d, lib, "reduce_tree", NULL, 0), *ps = msl_pipeline(d, lib, "reduce_simd", NULL, 0);
    CHECK(pt && ps);
    enum { G = 64, T = 256 };
    float *in = malloc(sizeof(float) * G * T), part[G];
    CHECK(in);
    for (int i = 0; i < G * T; i++) in[i] = (float)(i % 13) - 4.0f; /* small integers: sums are exact */
    mc_buffer *bi = msl_buffer(d, sizeof(float) * G * T, in), *bp = msl_buffer(d, sizeof part, NULL);
    CHECK(bi && bp);
    slot s[2] = {{bi, NULL, 0}, {bp, NULL, 0}};
    for (int k = 0; k < 2; k++) {
        CHECK_OK(msl_run(d, k ? ps : pt, s, 2, (mc_size3){G, 1, 1}, (mc_size3){T, 1, 1}, 0));
        CHECK_OK(mc_buffer_read(bp, 0, part, sizeof part));
        for (int g = 0; g < G; g++) {
            float want = 0.0f;
            for (int t = 0; t < T; t++) want += in[g * T + t];
            CHECK_FLOAT_NEAR(part[g], want, 0.0);
        }
    }
    free(in);
    return msl_done(d);
}

MC_TEST(msl_threadgroup_slots_above_zero)
{
    OPEN_MSL(d, lib, "barriers.metal");
    mc_pipeline *p = msl_pipeline(d, lib, "tg_slots", NULL, 0);
    CHECK(p);
    enum { G = 3, T = 64 };
    int32_t in[G * T], out[G * T];
    for (int i = 0; i < G * T; i++) in[i] = (i * 29 % 101) - 50;
    mc_buffer *bi = msl_buffer(d, sizeof in, in), *bo = msl_buffer(d, sizeof out, NULL);
    CHECK(bi && bo);
    mc_queue *q = NULL;
    mc_cmdbuf *cb = NULL;
    mc_pass *pass = NULL;
    CHECK_OK(mc_queue_create(d, NULL, &q));
    CHECK_OK(mc_cmdbuf_create(q, NULL, &cb));
    CHECK_OK(mc_cmdbuf_begin_pass(cb, "tg_slots", &pass));
    CHECK_OK(mc_pass_set_pipeline(pass, p));
    CHECK_OK(mc_pass_set_buffer(pass, 0, bi, 0));
    CHECK_OK(mc_pass_set_buffer(pass, 1, bo, 0));
    /* slot 1 is set but unused: slot 2 comes after it, at 256 + 112 bytes on CUDA */
    CHECK_OK(mc_pass_set_threadgroup_memory(pass, 0, T * sizeof(int32_t)));
    CHECK_OK(mc_pass_set_threadgroup_memory(pass, 1, 100));
    CHECK_OK(mc_pass_set_threadgroup_memory(pass, 2, T * sizeof(int32_t)));
    CHECK_OK(mc_pass_dispatch(pass, (mc_size3){G, 1, 1}, (mc_size3){T, 1, 1}));
    CHECK_OK(mc_pass_end(pass));
    CHECK_OK(mc_cmdbuf_commit(cb));
    CHECK_OK(mc_cmdbuf_wait(cb, MC_WAIT_FOREVER));
    CHECK_OK(mc_cmdbuf_status(cb, NULL));
    mc_cmdbuf_release(cb);
    mc_queue_release(q);
    CHECK_OK(mc_buffer_read(bo, 0, out, sizeof out));
    for (int g = 0; g < G; g++)
        for (int l = 0; l < T; l++) CHECK_EQ(out[g * T + l], in[g * T + (T - 1 - l)] + 10 * in[g * T + (l + 1) % T]);
    return msl_done(d);
}

MC_TEST(msl_barrier_scan_and_matmul)
{
    OPEN_MSL(d, lib, "barriers.metal");
    mc_pipeline *ps = msl_pipeline(d, lib, "scan", NULL, 0), *pm = msl_pipeline(d, lib, "matmul", NULL, 0);
    CHECK(ps && pm);
    enum { G = 8, T = 128 };
    uint32_t in[G * T], out[G * T];
    for (int i = 0; i < G * T; i++) in[i] = (uint32_t)(i * 7 % 11);
    mc_buffer *bi = msl_buffer(d, sizeof in, in), *bo = msl_buffer(d, sizeof out, NULL);
    CHECK(bi && bo);
    slot s[2] = {{bi, NULL, 0}, {bo, NULL, 0}};
    CHECK_OK(msl_run(d, ps, s, 2, (mc_size3){G, 1, 1}, (mc_size3){T, 1, 1}, 2 * T * sizeof(uint32_t)));
    CHECK_OK(mc_buffer_read(bo, 0, out, sizeof out));
    for (int g = 0; g < G; g++) {
        uint32_t acc = 0;
        for (int t = 0; t < T; t++) {
            CHECK_EQ(out[g * T + t], acc);
            acc += in[g * T + t];
        }
    }
    enum { N = 64 };
    float *A = malloc(sizeof(float) * N * N * 3);
    CHECK(A);
    float *B = A + N * N, *C = B + N * N;
    for (int i = 0; i < N * N; i++) {
        A[i] = (float)(i % 7) - 3.0f;
        B[i] = (float)(i % 5) - 2.0f;
    }
    uint32_t n = N;
    mc_buffer *ba = msl_buffer(d, sizeof(float) * N * N, A), *bb = msl_buffer(d, sizeof(float) * N * N, B),
              *bc = msl_buffer(d, sizeof(float) * N * N, NULL);
    CHECK(ba && bb && bc);
    slot m[4] = {{ba, NULL, 0}, {bb, NULL, 0}, {bc, NULL, 0}, {NULL, &n, sizeof n}};
    CHECK_OK(msl_run(d, pm, m, 4, (mc_size3){N / 16, N / 16, 1}, (mc_size3){16, 16, 1}, 0));
    CHECK_OK(mc_buffer_read(bc, 0, C, sizeof(float) * N * N));
    for (int r = 0; r < N; r++)
        for (int c = 0; c < N; c++) {
            float want = 0.0f;
            for (int k = 0; k < N; k++) want += A[r * N + k] * B[k * N + c];
            CHECK_FLOAT_NEAR(C[r * N + c], want, 0.0);
        }
    free(A);
    return msl_done(d);
}

MC_TEST(msl_simd_groups_non_uniform)
{
    OPEN_MSL(d, lib, "barriers.metal");
    mc_pipeline *p = msl_pipeline(d, lib, "simd", NULL, 0);
    CHECK(p);
    enum { G = 2, T = 48 }; /* per group: one full SIMD group and one of 16 lanes */
    int32_t in[G * T], out[G * T * 10];
    for (int i = 0; i < G * T; i++) in[i] = (i * 37 % 23) - 9;
    mc_buffer *bi = msl_buffer(d, sizeof in, in), *bo = msl_buffer(d, sizeof out, NULL);
    CHECK(bi && bo);
    slot s[2] = {{bi, NULL, 0}, {bo, NULL, 0}};
    CHECK_OK(msl_run(d, p, s, 2, (mc_size3){G, 1, 1}, (mc_size3){T, 1, 1}, 0));
    CHECK_OK(mc_buffer_read(bo, 0, out, sizeof out));
    for (int g = 0; g < G; g++)
        for (int sg = 0; sg * 32 < T; sg++) {
            int base = g * T + sg * 32, lanes = T - sg * 32 < 32 ? T - sg * 32 : 32;
            const int32_t *v = in + base;
            int sum = 0, mx = v[0], even = 0, oddmin = 1 << 30;
            uint32_t ballot = 0;
            for (int l = 0; l < lanes; l++) {
                sum += v[l];
                mx = v[l] > mx ? v[l] : mx;
                if (v[l] > 0) ballot |= 1u << l;
                if (l % 2 == 0) even += v[l];
                else oddmin = v[l] < oddmin ? v[l] : oddmin;
            }
            int pre = 0, oddpre = 0;
            for (int l = 0; l < lanes; l++) {
                const int32_t *o = out + (size_t)(base + l) * 10;
                CHECK_EQ(o[0], sum);
                CHECK_EQ(o[1], pre);
                pre += v[l];
                CHECK_EQ(o[2], (l ^ 1) < lanes ? v[l ^ 1] : v[l]);
                CHECK_EQ(o[3], v[5]);
                CHECK_EQ((uint32_t)o[4], ballot);
                CHECK_EQ(o[5], mx);
                int q = l & ~3, qs = 0;
                for (int k = q; k < q + 4 && k < lanes; k++) qs += v[k];
                CHECK_EQ(o[6], qs);
                CHECK_EQ(o[7], l + 3 < lanes ? v[l + 3] : v[l]);
                if (l % 2 == 0) {
                    CHECK_EQ(o[8], even);
                } else {
                    oddpre += v[l];
                    CHECK_EQ(o[8], oddmin + oddpre);
                }
                CHECK_EQ(o[9], 1);
            }
        }
    return msl_done(d);
}

MC_TEST(msl_simd_quad_and_threadgroup_atomics)
{
    OPEN_MSL(d, lib, "barriers.metal");
    mc_pipeline *p = msl_pipeline(d, lib, "simd_more", NULL, 0);
    CHECK(p);
    enum { G = 2, T = 64 };
    int32_t in[G * T], out[G * T * 12];
    for (int i = 0; i < G * T; i++) in[i] = (i * 29 % 17) - 6;
    mc_buffer *bi = msl_buffer(d, sizeof in, in), *bo = msl_buffer(d, sizeof out, NULL);
    CHECK(bi && bo);
    slot s[2] = {{bi, NULL, 0}, {bo, NULL, 0}};
    CHECK_OK(msl_run(d, p, s, 2, (mc_size3){G, 1, 1}, (mc_size3){T, 1, 1}, 0));
    CHECK_OK(mc_buffer_read(bo, 0, out, sizeof out));
    for (int base = 0; base < G * T; base += 32) {
        const int32_t *v = in + base;
        const int A = 20; /* active lanes in the branch: 0..19 */
        int prod = 1, andv = ~0, orv = 0, xorv = 0, mn = v[0];
        bool any = false;
        for (int l = 0; l < A; l++) {
            andv &= v[l] | 0x100;
            orv |= v[l] & 0xff;
            xorv ^= v[l];
            any = any || v[l] == in[0];
        }
        for (int l = 0; l < 32; l++) mn = v[l] < mn ? v[l] : mn;
        for (int l = 0; l < 32; l++) {
            const int32_t *o = out + (size_t)(base + l) * 12;
            CHECK_EQ(o[10], T);
            CHECK_EQ(o[11], mn);
            if (l >= A) {
                CHECK_EQ(o[0], -7);
                continue;
            }
            prod *= v[l] > 0 ? 1 : -1;
            CHECK_EQ(o[0], l >= 2 ? v[l - 2] : v[l]);
            int rot = (l + 5) % 32;
            CHECK_EQ(o[1], rot < A ? v[rot] : v[l]); /* an inactive source gives the reader's own value */
            CHECK_EQ(o[2], prod);
            CHECK_EQ(o[3], v[0]);
            CHECK_EQ(o[4], l == 0);
            int q = l & ~3;
            CHECK_EQ(o[5], v[q + 2]);
            int qs = 0;
            for (int k = q; k < l; k++) qs += v[k];
            CHECK_EQ(o[6], qs);
            int qb = 0;
            for (int k = 0; k < 4; k++)
                if (v[q + k] > 0) qb |= 1 << k;
            CHECK_EQ(o[7], qb);
            CHECK_EQ(o[8], andv ^ orv ^ xorv);
            CHECK_EQ(o[9], any ? 1 : 0);
        }
    }
    return msl_done(d);
}

MC_TEST(msl_barrier_in_a_helper_function)
{
    OPEN_MSL(d, lib, "barriers.metal");
    mc_pipeline *p = msl_pipeline(d, lib, "helper_barrier", NULL, 0);
    CHECK(p);
    enum { G = 3, T = 64 };
    uint32_t out[G * T];
    mc_buffer *bo = msl_buffer(d, sizeof out, NULL);
    CHECK(bo);
    slot s[1] = {{bo, NULL, 0}};
    CHECK_OK(msl_run(d, p, s, 1, (mc_size3){G, 1, 1}, (mc_size3){T, 1, 1}, 0));
    CHECK_OK(mc_buffer_read(bo, 0, out, sizeof out));
    for (int g = 0; g < G; g++)
        for (int l = 0; l < T; l++) CHECK_EQ(out[g * T + l], 3u * (uint32_t)(g * T + T - 1 - l));
    return msl_done(d);
}

/* ---- language.metal: kernel templates and matrices ---------------------------------- */

static int expect_refused(mc_device *d, const char *src, const char *want);

MC_TEST(msl_kernel_templates_host_name)
{
    OPEN_MSL(d, lib, "language.metal");
    enum { N = 256 };
    float fin[N], fout[N], fa = 1.5f;
    int32_t iin[N], iout[N], ia = -3;
    uint32_t uin[N], usum[N / 64];
    for (int i = 0; i < N; i++) {
        fin[i] = (float)(i % 19) - 7.0f;
        iin[i] = i * 7 % 23 - 11;
        uin[i] = (uint32_t)(i * 2654435761u) >> 8;
    }
    mc_pipeline *pf = msl_pipeline(d, lib, "axpb_float", NULL, 0), *pi = msl_pipeline(d, lib, "axpb_int", NULL, 0),
                *pu = msl_pipeline(d, lib, "group_sum_uint_64", NULL, 0),
                *ps = msl_pipeline(d, lib, "group_sum_float_32", NULL, 0);
    CHECK(pf && pi && pu && ps);
    mc_buffer *bfi = msl_buffer(d, sizeof fin, fin), *bfo = msl_buffer(d, sizeof fout, NULL),
              *bii = msl_buffer(d, sizeof iin, iin), *bio = msl_buffer(d, sizeof iout, NULL),
              *bui = msl_buffer(d, sizeof uin, uin), *buo = msl_buffer(d, sizeof usum, NULL);
    CHECK(bfi && bfo && bii && bio && bui && buo);
    slot sf[3] = {{bfo, NULL, 0}, {bfi, NULL, 0}, {NULL, &fa, sizeof fa}};
    slot si[3] = {{bio, NULL, 0}, {bii, NULL, 0}, {NULL, &ia, sizeof ia}};
    CHECK_OK(msl_run(d, pf, sf, 3, (mc_size3){N / 64, 1, 1}, (mc_size3){64, 1, 1}, 0));
    CHECK_OK(msl_run(d, pi, si, 3, (mc_size3){N / 64, 1, 1}, (mc_size3){64, 1, 1}, 0));
    CHECK_OK(mc_buffer_read(bfo, 0, fout, sizeof fout));
    CHECK_OK(mc_buffer_read(bio, 0, iout, sizeof iout));
    for (int i = 0; i < N; i++) {
        CHECK_FLOAT_NEAR(fout[i], fin[i] * fa + 1.0f, 0.0);
        CHECK_EQ(iout[i], iin[i] * ia + 1);
    }
    /* the barrier templates: a tree sum per group, 64 uints and 32 floats */
    slot su[2] = {{bui, NULL, 0}, {buo, NULL, 0}};
    CHECK_OK(msl_run(d, pu, su, 2, (mc_size3){N / 64, 1, 1}, (mc_size3){64, 1, 1}, 0));
    CHECK_OK(mc_buffer_read(buo, 0, usum, sizeof usum));
    for (int g = 0; g < N / 64; g++) {
        uint32_t want = 0;
        for (int k = 0; k < 64; k++) want += uin[g * 64 + k];
        CHECK_EQ(usum[g], want);
    }
    float fsum[N / 32];
    slot ss[2] = {{bfi, NULL, 0}, {bfo, NULL, 0}};
    CHECK_OK(msl_run(d, ps, ss, 2, (mc_size3){N / 32, 1, 1}, (mc_size3){32, 1, 1}, 0));
    CHECK_OK(mc_buffer_read(bfo, 0, fsum, sizeof fsum));
    for (int g = 0; g < N / 32; g++) {
        float want = 0.0f;
        for (int k = 0; k < 32; k++) want += fin[g * 32 + k];
        CHECK_FLOAT_NEAR(fsum[g], want, 0.0); /* small integers: exact in any order */
    }
    /* the template itself is no kernel: only its instantiations are */
    mc_pipeline_desc pd = MC_PIPELINE_DESC_INIT;
    pd.library = lib;
    pd.function = "axpb";
    mc_pipeline *none = NULL;
    CHECK_STATUS(mc_pipeline_create(d, &pd, &none), MC_ERR_NOT_FOUND);
    return msl_done(d);
}

/* The determinant of the n x n matrix m (column-major), by expansion. */
static double host_det(const double *m, int n)
{
    if (n == 1) return m[0];
    double d = 0.0, minor[16], sign = 1.0;
    for (int j = 0; j < n; j++, sign = -sign) {
        int k = 0;
        for (int c = 0; c < n; c++) {
            if (c == j) continue;
            for (int r = 1; r < n; r++) minor[k * (n - 1) + r - 1] = m[c * n + r];
            k++;
        }
        d += sign * m[j * n] * host_det(minor, n - 1);
    }
    return d;
}

MC_TEST(msl_matrices)
{
    OPEN_MSL(d, lib, "language.metal");
    mc_pipeline *p = msl_pipeline(d, lib, "matrices", NULL, 0);
    CHECK(p);
    enum { N = 64 };
    float in[N * 4], out[N * 16];
    for (int i = 0; i < N; i++) {
        in[4 * i + 0] = (float)(i % 5) - 2.0f;
        in[4 * i + 1] = (float)(i % 3) + 1.0f;
        in[4 * i + 2] = (float)(i % 7) - 3.0f;
        in[4 * i + 3] = (float)(i % 4) - 1.0f;
    }
    mc_buffer *bo = msl_buffer(d, sizeof out, NULL), *bi = msl_buffer(d, sizeof in, in);
    CHECK(bo && bi);
    slot s[2] = {{bo, NULL, 0}, {bi, NULL, 0}};
    CHECK_OK(msl_run(d, p, s, 2, (mc_size3){N / 32, 1, 1}, (mc_size3){32, 1, 1}, 0));
    CHECK_OK(mc_buffer_read(bo, 0, out, sizeof out));
    for (int i = 0; i < N; i++) {
        double x = in[4 * i], y = in[4 * i + 1], z = in[4 * i + 2], w = in[4 * i + 3];
        double m3[9] = {2 + x, 0, 0, 0, 2 + y, 0, z, w, 3};
        double m4[16] = {x, 1, 0, 0, 0, y, 1, 0, 0, 0, z, 1, 1, 0, 0, w};
        double want[16] = {x + 2 * z,
                           y + 2 * w,
                           3 * x + 4 * z,
                           3 * y + 4 * w, /* a * b */
                           x - z,
                           y - w,
                           x - y,
                           z - w, /* a * v, v * a */
                           host_det(m3, 3),
                           z + 10 * w,
                           w + 8, /* det, transpose */
                           host_det(m4, 4),
                           x * w - z * y,                  /* det 4x4, half det */
                           (x + 2 * z) + 10 * (y + 2 * w), /* half matrix * vector */
                           z + 2 - x,
                           w - 8 + 2 * z}; /* 2x3 * vector, -, scalars */
        for (int k = 0; k < 16; k++)
            if (out[16 * i + k] != (float)want[k]) {
                fprintf(stderr, "thread %d, result %d: %g, want %g\n", i, k, out[16 * i + k], want[k]);
                return 1;
            }
    }
    return msl_done(d);
}

MC_TEST(msl_kernel_templates_refused_with_the_cause)
{
    OPEN_MSL_DEVICE(d);
    if (mct_device_kind(d) == MC_DEVICE_METAL) MC_SKIP("the messages checked are the MSL front end's, not Metal's");
    static const char tmpl[] = "template <typename T>\nkernel void k(device T *o [[buffer(0)]]) { o[0] = T(1); }\n";
    static const struct {
        const char *inst;
        const char *want;
    } cases[] = {
        {"template [[kernel]] void k<float>(device float *);\n",
         "program_source:3: error: an instantiated kernel template needs [[host_name(\"name\")]]"},
        {"template [[host_name(\"k-f\")]] [[kernel]] void k<float>(device float *);\n",
         "program_source:3: error: [[host_name(\"k-f\")]]: a kernel name is letters, digits and '_'"},
        {"template [[host_name(\"kf\")]] [[kernel]] void nope<float>(device float *);\n",
         "program_source:3: error: a kernel instantiation must name a kernel template defined above it"},
        {"kernel void kf(device float *o [[buffer(0)]]) {}\n"
         "template [[host_name(\"kf\")]] [[kernel]] decltype(k<float>) k<float>;\n",
         "program_source:4: error: kernel 'kf' is defined twice"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char src[1024];
        snprintf(src, sizeof src, "%s%s", tmpl, cases[i].inst);
        if (expect_refused(d, src, cases[i].want)) {
            fprintf(stderr, "case %zu\n", i);
            return 1;
        }
    }
    return msl_done(d);
}

/* ---- limits and refusals ----------------------------------------------------------- */

/* Compiles src; MC_ERR_COMPILE is expected and the message must hold want. */
static int expect_refused(mc_device *d, const char *src, const char *want)
{
    mc_library_desc ld = MC_LIBRARY_DESC_INIT;
    ld.language = MC_LANG_MSL;
    ld.source = src;
    mc_library *lib = NULL;
    char *log = NULL;
    mc_status s = mc_library_create(d, &ld, &lib, &log);
    if (s == MC_OK) mc_library_release(lib);
    CHECK_STATUS(s, MC_ERR_COMPILE);
    char msg[2048];
    snprintf(msg, sizeof msg, "%s | %s", mc_last_error(), log ? log : "");
    mc_free(log);
    CHECK_STR_CONTAINS(msg, want);
    return 0;
}

MC_TEST(msl_unsupported_features_refused)
{
    OPEN_MSL_DEVICE(d);
    if (mct_device_kind(d) == MC_DEVICE_METAL) MC_SKIP("Metal itself runs textures and render stages");
    static const struct {
        const char *src;
        const char *want;
    } cases[] = {
        {"#include <metal_stdlib>\nusing namespace metal;\nkernel void k(texture2d<float> t [[texture(0)]]) {}\n",
         "program_source:3: error: texture2d: textures"},
        {"using namespace metal;\n\nkernel void k(device float *o [[buffer(0)]], sampler s [[sampler(0)]]) {}\n",
         "program_source:3: error: sampler: samplers"},
        {"using namespace metal;\nkernel void k(device float *o [[buffer(0)]]) {\n  raytracing::ray r;\n}\n",
         "program_source:3: error: raytracing: ray tracing"},
        {"\n\n\n\nkernel void k(visible_function_table<void()> t [[buffer(0)]]) {}\n",
         "program_source:5: error: visible_function_table: visible functions"},
        {"kernel void k(device float *o [[buffer(0)]]) {\n imageblock<float> b;\n}\n",
         "program_source:2: error: imageblock: imageblocks"},
        {"struct V { float4 p [[position]]; };\n", "program_source:1: error: [[position]]: render stages"},
        {"kernel void k(device float *o [[buffer(0)]]) {}\nvertex float4 v(uint id [[vertex_id]]) { return 0; }\n",
         "program_source:2: error: vertex functions: render stages"},
        {"\n[[mesh]] void m() {}\n", "program_source:2: error: [[mesh]]: mesh and object stages"},
        {"kernel void k(device float *o [[buffer(0)]], float4 x [[stage_in]]) {}\n",
         "program_source:1: error: [[stage_in]]: render stages"},
        {"kernel void k(device float *o [[buffer(0)]],\n uint x [[dispatch_quadgroups_per_threadgroup]]) {}\n",
         "program_source:2: error: kernel parameter attribute [[dispatch_quadgroups_per_threadgroup]] is not "
         "supported"},
        {"kernel void k(device float *o [[buffer(0)]]) {\n simdgroup_float8x8 m;\n}\n",
         "program_source:2: error: simdgroup_float8x8: SIMD-group matrices"},
        {"#include <metal_texture>\n", "program_source:1: error: #include <metal_texture>: textures"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        if (expect_refused(d, cases[i].src, cases[i].want)) {
            fprintf(stderr, "case %zu\n", i);
            return 1;
        }
    /* a plain compile error reports the compiler's line in the same file name */
    if (expect_refused(d, "kernel void k(device float *o [[buffer(0)]])\n{\n  o[0] = undefined_name;\n}\n",
                       "program_source:3:"))
        return 1;
    return msl_done(d);
}

MC_TEST(msl_apple_limits_enforced)
{
    OPEN_MSL_DEVICE(d);
    mc_device_info info;
    CHECK_OK(mc_device_get_info(d, &info));
    CHECK_EQ(info.simd_width, 32);
    if (mct_device_kind(d) != MC_DEVICE_CUDA) { /* a CUDA GPU reports its own threadgroup memory */
        CHECK_EQ(info.threadgroup_memory_size, 32768);
        CHECK_EQ(info.max_threads_per_threadgroup, 1024);
    }
    if (mct_device_kind(d) != MC_DEVICE_CPU) MC_SKIP("the limit messages below are the CPU device's");
    /* 32 KiB of static threadgroup memory plus one float */
    if (expect_refused(d,
                       "kernel void k(device float *o [[buffer(0)]], uint i [[thread_position_in_grid]]) {\n"
                       "  threadgroup float a[4096];\n  threadgroup float b[4097];\n  o[i] = a[i] + b[i];\n}\n",
                       "threadgroup memory exceeds the device's limit of 32768 bytes"))
        return 1;
    /* buffer slots: 31 (0 to 30) */
    if (expect_refused(d, "kernel void k(device float *o [[buffer(31)]]) {}\n",
                       "program_source:1: error: buffer index 31 is beyond the 31 buffer slots (0 to 30)"))
        return 1;
    mc_library *lib = msl_library(d, "barriers.metal");
    CHECK(lib);
    mc_pipeline *p = msl_pipeline(d, lib, "scan", NULL, 0);
    CHECK(p);
    mc_buffer *b = msl_buffer(d, 4096 * 4, NULL);
    CHECK(b);
    slot s[2] = {{b, NULL, 0}, {b, NULL, 0}};
    /* dynamic threadgroup memory over 32 KiB */
    mc_status st = msl_run(d, p, s, 2, (mc_size3){1, 1, 1}, (mc_size3){64, 1, 1}, 32768 + 16);
    CHECK(st != MC_OK);
    CHECK_STR_CONTAINS(mc_last_error(), "32768");
    /* 1025 threads per threadgroup */
    st = msl_run(d, p, s, 2, (mc_size3){1, 1, 1}, (mc_size3){1025, 1, 1}, 0);
    CHECK(st != MC_OK);
    CHECK_STR_CONTAINS(mc_last_error(), "1024");
    return msl_done(d);
}

/* ---- every .metal file of the repository compiles ------------------------------------ */

static mc_device *walk_dev;
static int walk_failed, walk_count;

static int compile_one(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)ftw;
    if (flag == FTW_D && (strstr(path, "/build") || strstr(path, "/.git"))) return FTW_SKIP_SUBTREE;
    size_t n = strlen(path);
    if (flag != FTW_F || n < 6 || strcmp(path + n - 6, ".metal") != 0) return 0;
    mc_library *lib = NULL;
    char *log = NULL;
    walk_count++;
    if (mc_library_create_from_file(walk_dev, path, MC_LANG_MSL, NULL, &lib, &log) != MC_OK) {
        fprintf(stderr, "%s: %s\n%s\n", path, mc_last_error(), log ? log : "");
        walk_failed++;
    } else {
        mc_library_release(lib);
    }
    mc_free(log);
    return 0;
}

MC_TEST(msl_every_metal_file_compiles)
{
    OPEN_MSL_DEVICE(d);
    walk_dev = d;
    CHECK_EQ(nftw(MC_SOURCE_DIR, compile_one, 16, FTW_PHYS | FTW_ACTIONRETVAL), 0);
    fprintf(stderr, "%d .metal files compiled, %d failed\n", walk_count, walk_failed);
    CHECK_GE(walk_count, 7);
    CHECK_EQ(walk_failed, 0);
    return msl_done(d);
}

/* ---- a build killed mid-way leaves no directory behind for good ---------------------- */

static int count_build_dirs(const char *dir, long pid)
{
    DIR *dd = opendir(dir);
    if (!dd) return -1;
    struct dirent *e;
    int n = 0;
    char prefix[64];
    snprintf(prefix, sizeof prefix, "mc-cpu-%ld-", pid);
    while ((e = readdir(dd)) != NULL)
        if (!strncmp(e->d_name, prefix, strlen(prefix))) n++;
    closedir(dd);
    return n;
}

MC_TEST(cpu_orphaned_build_dirs_removed)
{
    mc_device *d = mct_open_device(0);
    CHECK(d);
    if (mct_device_kind(d) != MC_DEVICE_CPU) {
        mc_device_release(d);
        MC_SKIP("the run-time compiler's build directories are the cpu device's");
    }
    char tmp[] = "/tmp/mc-orphans-XXXXXX";
    CHECK(mkdtemp(tmp));
    /* a process that is gone, and what its killed build left */
    pid_t gone = fork();
    CHECK(gone >= 0);
    if (gone == 0) _exit(0);
    CHECK_EQ(waitpid(gone, NULL, 0), gone);
    char path[512];
    snprintf(path, sizeof path, "%s/mc-cpu-%ld-abc123", tmp, (long)gone);
    CHECK_EQ(mkdir(path, 0700), 0);
    snprintf(path, sizeof path, "%s/mc-cpu-%ld-abc123/kernel.c", tmp, (long)gone);
    FILE *f = fopen(path, "w");
    CHECK(f);
    fputs("half-written", f);
    fclose(f);
    /* a live process's build (ours, from a parent's view: pid 1 lives) */
    snprintf(path, sizeof path, "%s/mc-cpu-1-live00", tmp);
    CHECK_EQ(mkdir(path, 0700), 0);
    CHECK_EQ(count_build_dirs(tmp, gone), 1);
    CHECK_EQ(setenv("TMPDIR", tmp, 1), 0);
    mc_library_desc ld = MC_LIBRARY_DESC_INIT;
    ld.language = MC_LANG_C;
    ld.source = "#include <mc/mc_cpu_kernel.h>\nMC_KERNEL(nop, 0) { (void)ctx; }\n";
    mc_library *lib = NULL;
    CHECK_OK(mc_library_create(d, &ld, &lib, NULL));
    mc_library_release(lib);
    CHECK_EQ(count_build_dirs(tmp, gone), 0);
    CHECK_EQ(count_build_dirs(tmp, 1), 1);              /* not ours to remove */
    CHECK_EQ(count_build_dirs(tmp, (long)getpid()), 0); /* our own build cleaned up after itself */
    snprintf(path, sizeof path, "%s/mc-cpu-1-live00", tmp);
    CHECK_EQ(rmdir(path), 0);
    CHECK_EQ(rmdir(tmp), 0);
    return msl_done(d);
}

/* ---- the pipeline cache keys MSL builds and loads them back ----------------------------- */

MC_TEST(msl_pipeline_cache_archives_and_reloads)
{
    char dir[] = "/tmp/mc-msl-cache-XXXXXX";
    CHECK(mkdtemp(dir));
    CHECK_EQ(setenv("MC_CACHE_DIR", dir, 1), 0);
    static const char src[] =
        "#include <metal_stdlib>\nusing namespace metal;\n"
        "kernel void twice(device uint *o [[buffer(0)]], uint i [[thread_position_in_grid]])\n"
        "{ o[i] = simd_sum(1u) + i * 2u; }\n";
    for (int round = 0; round < 2; round++) {
        OPEN_MSL_DEVICE(d);
        if (mct_device_kind(d) != MC_DEVICE_CPU) {
            mc_device_release(d);
            MC_SKIP("checks the cpu device's archive");
        }
        /* the second device, a new process's view, must load from disk */
        if (round == 1) CHECK_OK(mc_cache_set_mode(d, MC_CACHE_REQUIRE));
        mc_pipeline_source_desc sd = MC_PIPELINE_SOURCE_DESC_INIT;
        sd.language = MC_LANG_MSL;
        sd.source = src;
        sd.function = "twice";
        mc_pipeline *p = NULL;
        char *log = NULL;
        mc_status s = mc_pipeline_create_from_source(d, &sd, &p, &log);
        if (s != MC_OK) fprintf(stderr, "%s\n%s\n", mc_last_error(), log ? log : "");
        mc_free(log);
        CHECK_OK(s);
        uint32_t out[64];
        mc_buffer *b = msl_buffer(d, sizeof out, NULL);
        CHECK(b);
        slot sl[1] = {{b, NULL, 0}};
        CHECK_OK(msl_run(d, p, sl, 1, (mc_size3){2, 1, 1}, (mc_size3){32, 1, 1}, 0));
        CHECK_OK(mc_buffer_read(b, 0, out, sizeof out));
        for (uint32_t i = 0; i < 64; i++) CHECK_EQ(out[i], 32u + 2u * i);
        mc_cache_stats st;
        CHECK_OK(mc_cache_get_stats(d, &st));
        mc_pipeline_release(p);
        msl_done(d); /* and b */
    }
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    CHECK_EQ(system(cmd), 0);
    return 0;
}

/* ---- CUDA: each MSL file becomes PTX that ptxas assembles --------------------------------- */

#include "msl/msl.h"

static bool write_text(const char *path, const char *text, size_t len)
{
    FILE *f = fopen(path, "wb");
    if (!f) return false;
    bool ok = fwrite(text, 1, len, f) == len;
    return fclose(f) == 0 && ok;
}

static const char *find_tool(const char *const *candidates, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (access(candidates[i], X_OK) == 0) return candidates[i];
    return NULL;
}

MC_TEST(msl_cuda_ptx_assembles)
{
    static const char *const ptxas_at[] = {"/usr/local/cuda/bin/ptxas", "/usr/bin/ptxas"};
    static const char *const libdevice_at[] = {"/usr/local/cuda/nvvm/libdevice/libdevice.10.bc",
                                               "/usr/lib/nvidia-cuda-toolkit/libdevice/libdevice.10.bc"};
    const char *ptxas = find_tool(ptxas_at, 2);
    const char *libdevice = NULL;
    for (size_t i = 0; i < 2; i++)
        if (access(libdevice_at[i], R_OK) == 0) libdevice = libdevice_at[i];
    if (!ptxas || !libdevice) MC_SKIP("no CUDA toolkit here (ptxas and libdevice.10.bc under /usr/local/cuda)");
    if (system("clang++ --version >/dev/null 2>&1") != 0) MC_SKIP("no clang++ to emit PTX");
    char dir[] = "/tmp/mc-msl-ptx-XXXXXX";
    CHECK(mkdtemp(dir));
    char path[1024], cmd[4096];
    snprintf(path, sizeof path, "%s/mc", dir);
    CHECK_EQ(mkdir(path, 0700), 0);
    snprintf(path, sizeof path, "%s/mc/mc_cpu_kernel.h", dir);
    CHECK(write_text(path, mc__cpu_kernel_header, strlen(mc__cpu_kernel_header)));
    snprintf(path, sizeof path, "%s/mc_msl_cpu.h", dir);
    CHECK(write_text(path, mc__msl_cpu_header, strlen(mc__msl_cpu_header)));
    static const char *const files[] = {"tests/msl/features.metal",          "tests/msl/barriers.metal",
                                        "tests/msl/language.metal",          "examples/kernels/basic.metal",
                                        "examples/kernels/gray_scott.metal", "examples/kernels/fir.metal",
                                        "examples/kernels/compact.metal",    "examples/kernels/runner_test.metal"};
    int failed = 0;
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        snprintf(path, sizeof path, "%s/%s", MC_SOURCE_DIR, files[i]);
        size_t len = 0;
        char *src = mct_read_file(path, &len);
        CHECK(src);
        char *cpp = NULL, *log = NULL;
        size_t cpp_len = 0;
        mc_status s = mc__msl_translate(src, len, MC__MSL_CUDA, &cpp, &cpp_len, &log);
        free(src);
        if (s != MC_OK) fprintf(stderr, "%s: %s\n", files[i], log ? log : mc_last_error());
        free(log);
        CHECK_OK(s);
        snprintf(path, sizeof path, "%s/kernel.cu", dir);
        CHECK(write_text(path, cpp, cpp_len));
        free(cpp);
        snprintf(cmd, sizeof cmd,
                 "cd %s && clang++ " MC__MSL_CUDA_FLAGS
                 " -o kernel.ptx kernel.cu -Xclang -mlink-builtin-bitcode "
                 "-Xclang %s && %s -arch=sm_80 kernel.ptx -o kernel.cubin && grep -q '.entry' kernel.ptx",
                 dir, libdevice, ptxas);
        if (system(cmd) != 0) {
            fprintf(stderr, "%s: PTX did not build or assemble (command: %s)\n", files[i], cmd);
            failed++;
        }
    }
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    CHECK_EQ(system(cmd), 0);
    CHECK_EQ(failed, 0);
    /* the CUDA device's own path: the same, in process, ready for cuModuleLoadData */
    snprintf(path, sizeof path, "%s/examples/kernels/basic.metal", MC_SOURCE_DIR);
    size_t len = 0;
    char *src = mct_read_file(path, &len), *ptx = NULL, *log = NULL;
    CHECK(src);
    size_t ptx_len = 0;
    mc_status s = mc__msl_build_ptx(src, len, NULL, &ptx, &ptx_len, &log);
    free(src);
    if (s != MC_OK) fprintf(stderr, "%s\n%s\n", mc_last_error(), log ? log : "");
    free(log);
    CHECK_OK(s);
    CHECK_EQ(strlen(ptx), ptx_len);
    CHECK(strstr(ptx, ".entry saxpy("));
    CHECK(strstr(ptx, ".target sm_80"));
    free(ptx);
    /* a bad kernel is a compile error with clang's log */
    s = mc__msl_build_ptx("kernel void k(device float *o [[buffer(0)]]) { o[0] = nope; }\n", 0, NULL, &ptx, &ptx_len,
                          &log);
    CHECK_STATUS(s, MC_ERR_COMPILE);
    CHECK_STR_CONTAINS(log, "program_source:1:");
    free(log);
    return 0;
}
