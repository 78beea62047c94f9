/*
 * metal-compute run FILE --function NAME: a user's own step kernel through
 * the runner (docs/RUNNER.md, "Your own kernel").
 *
 * Each --arg binds the next argument slot, in order, the way gray-scott's
 * kernel is bound: state buffers (from a .npy file or a dtype, shape and
 * fill), ping-pong pairs (two slots; step i reads the first and writes the
 * second when i is even), the iteration range (mc_runner_iteration bytes)
 * and scalars packed like a C struct. The grid is the first state's shape,
 * last axis fastest. After --steps steps each state named by --out is
 * written as .npy (atomically); a pair writes the buffer that holds the
 * last step.
 */
#include "cli.h"
#include "core/core.h"
#include "npy.h"
#include "run_report.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define MAX_OUTS 16

typedef enum arg_kind { ARG_STATE = 1, ARG_PAIR_B, ARG_ITER, ARG_BYTES } arg_kind;

typedef struct karg {
    arg_kind kind;
    const char *spec;
    mc_npy init;    /* ARG_STATE: the initial contents (a pair's B uses A's) */
    uint32_t state; /* ARG_STATE / ARG_PAIR_B: index among the runner's state buffers */
    bool paired;    /* ARG_STATE: the first of a pair (B at the next slot) */
    uint8_t bytes[MC_MAX_BYTES_ARG];
    size_t len; /* ARG_BYTES */
} karg;

typedef struct kjob {
    const char *path, *function;
    char *source;
    size_t source_len;
    mc_language lang;
    karg args[MC_MAX_BUFFER_ARGS];
    uint32_t nargs, nstate;
    mc_pipeline *pl;
    mc_buffer *bufs[MC_MAX_BUFFER_ARGS];
    bool cache_hit_disk, compiled;
    double compile_ms;
} kjob;

static int usage_error(const char *fmt, const char *what)
{
    fprintf(stderr, "metal-compute run: ");
    fprintf(stderr, fmt, what);
    fprintf(stderr, "\n");
    return 2;
}

static bool ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && !strcmp(s + n - m, suffix);
}

static mc_language language_of(const char *path)
{
    if (ends_with(path, ".metal")) return MC_LANG_MSL;
    if (ends_with(path, ".c")) return MC_LANG_C;
    if (ends_with(path, ".cu")) return MC_LANG_CUDA;
    return MC_LANG_UNSET;
}

bool mc_cli_is_kernel_file(const char *arg)
{
    return language_of(arg) != MC_LANG_UNSET;
}

/* DTYPE[D0,D1,...] or DTYPE[...]=FILL: an array of FILL (default 0). */
static bool parse_shape_spec(const char *spec, mc_npy *a, char *why, size_t cap)
{
    memset(a, 0, sizeof *a);
    const char *lb = strchr(spec, '[');
    const char *rb = lb ? strchr(lb, ']') : NULL;
    if (!lb || !rb) return snprintf(why, cap, "expected DTYPE[SHAPE][=FILL], e.g. float32[256,256]=0"), false;
    char dt[32];
    size_t dn = (size_t)(lb - spec);
    if (dn == 0 || dn >= sizeof dt) return snprintf(why, cap, "no dtype before '['"), false;
    memcpy(dt, spec, dn);
    dt[dn] = '\0';
    a->dtype = mc_npy_dtype_parse(dt);
    if (a->dtype == MC_NPY_NONE)
        return snprintf(why, cap, "unknown dtype '%s' (float32, float64, int8..int64, uint8..uint64)", dt), false;
    const char *p = lb + 1;
    while (p < rb) {
        char *end;
        errno = 0;
        unsigned long long v = strtoull(p, &end, 10);
        if (end == p || errno || v == 0 || v > (1ull << 32))
            return snprintf(why, cap, "the shape takes sizes from 1 to 2^32, comma separated"), false;
        if (a->ndim == MC_NPY_MAX_DIMS) return snprintf(why, cap, "at most %d dimensions", MC_NPY_MAX_DIMS), false;
        a->shape[a->ndim++] = v;
        p = end;
        if (*p == ',') p++;
        else if (p != rb) return snprintf(why, cap, "the shape takes sizes, comma separated"), false;
    }
    if (!a->ndim) return snprintf(why, cap, "the shape is empty"), false;
    double fill = 0;
    if (rb[1] == '=') {
        char *end;
        fill = strtod(rb + 2, &end);
        if (end == rb + 2 || *end) return snprintf(why, cap, "the fill '%s' is not a number", rb + 2), false;
    } else if (rb[1]) {
        return snprintf(why, cap, "unexpected '%s' after the shape", rb + 1), false;
    }
    size_t n = mc_npy_count(a), es = mc_npy_dtype_size(a->dtype);
    if (!n || n > ((size_t)1 << 34) / es) return snprintf(why, cap, "the array is too large"), false;
    a->bytes = n * es;
    a->data = calloc(n, es);
    if (!a->data) return snprintf(why, cap, "out of memory for %zu bytes", a->bytes), false;
    if (fill != 0) {
        uint8_t one[8];
        switch (a->dtype) {
        case MC_NPY_F32: {
            float v = (float)fill;
            memcpy(one, &v, 4);
            break;
        }
        case MC_NPY_F64: memcpy(one, &fill, 8); break;
        case MC_NPY_I8: {
            int8_t v = (int8_t)fill;
            memcpy(one, &v, 1);
            break;
        }
        case MC_NPY_U8: {
            uint8_t v = (uint8_t)fill;
            memcpy(one, &v, 1);
            break;
        }
        case MC_NPY_I16: {
            int16_t v = (int16_t)fill;
            memcpy(one, &v, 2);
            break;
        }
        case MC_NPY_U16: {
            uint16_t v = (uint16_t)fill;
            memcpy(one, &v, 2);
            break;
        }
        case MC_NPY_I32: {
            int32_t v = (int32_t)fill;
            memcpy(one, &v, 4);
            break;
        }
        case MC_NPY_U32: {
            uint32_t v = (uint32_t)fill;
            memcpy(one, &v, 4);
            break;
        }
        case MC_NPY_I64: {
            int64_t v = (int64_t)fill;
            memcpy(one, &v, 8);
            break;
        }
        case MC_NPY_U64: {
            uint64_t v = (uint64_t)fill;
            memcpy(one, &v, 8);
            break;
        }
        case MC_NPY_NONE: break;
        }
        for (size_t i = 0; i < n; i++) memcpy((uint8_t *)a->data + i * es, one, es);
    }
    return true;
}

/* TYPE:VALUE[,TYPE:VALUE...] packed with C struct alignment. */
static bool parse_scalars(const char *spec, karg *k, char *why, size_t cap)
{
    static const struct {
        const char *name;
        size_t size;
        char kind; /* f: float, i: signed, u: unsigned */
    } types[] = {{"f32", 4, 'f'}, {"f64", 8, 'f'}, {"i8", 1, 'i'},  {"u8", 1, 'u'},  {"i16", 2, 'i'},
                 {"u16", 2, 'u'}, {"i32", 4, 'i'}, {"u32", 4, 'u'}, {"i64", 8, 'i'}, {"u64", 8, 'u'}};
    size_t off = 0, align = 1;
    const char *p = spec;
    while (*p) {
        const char *colon = strchr(p, ':');
        if (!colon) return snprintf(why, cap, "expected TYPE:VALUE at '%s' (f32:0.5, u32:256, ...)", p), false;
        size_t tl = (size_t)(colon - p), t = 0;
        while (t < MC__ARRAY_LEN(types) && (strlen(types[t].name) != tl || strncmp(types[t].name, p, tl))) t++;
        if (t == MC__ARRAY_LEN(types))
            return snprintf(why, cap, "unknown scalar type '%.*s' (f32 f64 i8 u8 i16 u16 i32 u32 i64 u64)", (int)tl, p),
                   false;
        size_t sz = types[t].size;
        off = (off + sz - 1) / sz * sz;
        if (off + sz > sizeof k->bytes)
            return snprintf(why, cap, "more than %d bytes of scalars", MC_MAX_BYTES_ARG), false;
        const char *v = colon + 1;
        char *end;
        errno = 0;
        uint8_t one[8];
        if (types[t].kind == 'f') {
            double d = strtod(v, &end);
            if (sz == 4) {
                float f = (float)d;
                memcpy(one, &f, 4);
            } else memcpy(one, &d, 8);
        } else if (types[t].kind == 'i') {
            long long x = strtoll(v, &end, 0);
            int64_t w = x;
            bool fits = sz == 8 || (w >= -(1ll << (8 * sz - 1)) && w < (1ll << (8 * sz - 1)));
            if (!fits) errno = ERANGE;
            for (size_t b = 0; b < sz; b++) one[b] = (uint8_t)((uint64_t)w >> (8 * b));
        } else {
            if (*v == '-') errno = ERANGE;
            unsigned long long x = strtoull(v, &end, 0);
            if (sz < 8 && x >> (8 * sz)) errno = ERANGE;
            for (size_t b = 0; b < sz; b++) one[b] = (uint8_t)(x >> (8 * b));
        }
        if (end == v || (*end && *end != ',') || errno)
            return snprintf(why, cap, "'%.*s' is not a %s value", (int)strcspn(v, ","), v, types[t].name), false;
        memcpy(k->bytes + off, one, sz); /* the host is little-endian, like every device */
        off += sz;
        if (sz > align) align = sz;
        p = *end ? end + 1 : end;
    }
    k->len = (off + align - 1) / align * align;
    if (!k->len) return snprintf(why, cap, "no scalars"), false;
    return true;
}

/* One --arg. A pair takes two slots. */
static int add_arg(kjob *j, const char *spec)
{
    char why[256];
    if (j->nargs >= MC_MAX_BUFFER_ARGS) return usage_error("more than %s argument slots", "31");
    karg *k = &j->args[j->nargs];
    memset(k, 0, sizeof *k);
    k->spec = spec;
    bool pair = !strncmp(spec, "pair:", 5);
    const char *s = pair ? spec + 5 : spec;
    if (!pair && !strcmp(s, "iter")) {
        k->kind = ARG_ITER;
        j->nargs++;
        return 0;
    }
    if (ends_with(s, ".npy")) {
        if (!mc_npy_read(s, &k->init, why, sizeof why)) {
            fprintf(stderr, "metal-compute run: --arg %s: %s\n", spec, why);
            return 2;
        }
        k->kind = ARG_STATE;
    } else if (strchr(s, '[')) {
        if (!parse_shape_spec(s, &k->init, why, sizeof why)) {
            fprintf(stderr, "metal-compute run: --arg %s: %s\n", spec, why);
            return 2;
        }
        k->kind = ARG_STATE;
    } else if (!pair && strchr(s, ':')) {
        if (!parse_scalars(s, k, why, sizeof why)) {
            fprintf(stderr, "metal-compute run: --arg %s: %s\n", spec, why);
            return 2;
        }
        k->kind = ARG_BYTES;
        j->nargs++;
        return 0;
    } else {
        fprintf(stderr,
                "metal-compute run: --arg %s: not a state (FILE.npy, DTYPE[SHAPE]=FILL, pair:...), 'iter' or scalars "
                "(TYPE:VALUE,...)\n",
                spec);
        return 2;
    }
    if (j->nstate + (pair ? 2 : 1) > MC_RUNNER_MAX_STATE) return usage_error("more than %s state buffers", "16");
    k->state = j->nstate++;
    j->nargs++;
    if (pair) {
        if (j->nargs >= MC_MAX_BUFFER_ARGS) return usage_error("more than %s argument slots", "31");
        k->paired = true;
        karg *b = &j->args[j->nargs++];
        memset(b, 0, sizeof *b);
        b->kind = ARG_PAIR_B;
        b->spec = spec;
        b->state = j->nstate++;
    }
    return 0;
}

static const karg *state_arg(const kjob *j, uint32_t slot)
{
    return j->args[slot].kind == ARG_PAIR_B ? &j->args[slot - 1] : &j->args[slot];
}

static mc_status k_setup(void *user, mc_device *dev, mc_runner_binding *b)
{
    kjob *j = user;
    mc_cache_stats before, after;
    bool stats = mc_cache_get_stats(dev, &before) == MC_OK;
    mc_pipeline_source_desc sd = MC_PIPELINE_SOURCE_DESC_INIT;
    sd.language = j->lang;
    sd.source = j->source;
    sd.source_len = j->source_len;
    sd.function = j->function;
    char *log = NULL;
    uint64_t t0 = mc__now_ns();
    mc_status s = mc_pipeline_create_from_source(dev, &sd, &j->pl, &log);
    if (s != MC_OK) {
        /* The whole log, where the person is looking (an error message
         * holds only its start); in an isolated run the worker shares
         * this stderr. */
        if (log) fprintf(stderr, "%s: the compiler says:\n%s\n", j->path, log);
        mc_free(log);
        return s;
    }
    j->compile_ms = (double)(mc__now_ns() - t0) / 1e6;
    if (stats && mc_cache_get_stats(dev, &after) == MC_OK) {
        j->cache_hit_disk = after.hits_disk > before.hits_disk;
        j->compiled = after.compiles > before.compiles;
    }
    for (uint32_t i = 0; i < j->nargs && s == MC_OK; i++) {
        karg *k = &j->args[i];
        if (k->kind == ARG_STATE || k->kind == ARG_PAIR_B) {
            const karg *src = state_arg(j, i);
            mc_buffer_desc bd = {src->init.bytes, MC_STORAGE_PRIVATE, k->spec, src->init.data};
            s = mc_buffer_create(dev, &bd, &j->bufs[i]);
            if (s != MC_OK) break;
            b->state[k->state] = j->bufs[i];
            b->args[i].kind = MC_RUNNER_ARG_BUFFER;
            b->args[i].buffer = j->bufs[i];
        } else if (k->kind == ARG_BYTES) {
            b->args[i].kind = MC_RUNNER_ARG_BYTES;
            b->args[i].bytes = k->bytes;
            b->args[i].len = k->len;
        }
    }
    if (s != MC_OK) {
        for (uint32_t i = 0; i < j->nargs; i++) {
            mc_buffer_release(j->bufs[i]);
            j->bufs[i] = NULL;
        }
        mc_pipeline_release(j->pl);
        j->pl = NULL;
        return s;
    }
    b->pipeline = j->pl;
    b->state_count = j->nstate;
    return MC_OK;
}

static void k_teardown(void *user, mc_runner_binding *b)
{
    kjob *j = user;
    (void)b;
    for (uint32_t i = 0; i < j->nargs; i++) {
        mc_buffer_release(j->bufs[i]);
        j->bufs[i] = NULL;
    }
    mc_pipeline_release(j->pl);
    j->pl = NULL;
}

static uint64_t fnv1a(uint64_t h, const void *data, size_t len)
{
    const uint8_t *p = data;
    for (size_t i = 0; i < len; i++) h = (h ^ p[i]) * 0x100000001b3ull;
    return h;
}

/* What makes two runs the same run, for the checkpoint files: the kernel
 * (its source, not its file name), every slot with its initial contents,
 * the grid and the number of steps. */
static char *run_params(const kjob *j, uint64_t steps, mc_size3 grid, mc_size3 tg)
{
    uint64_t h = fnv1a(0xcbf29ce484222325ull, j->source, j->source_len);
    char *p = mc__asprintf("metal-compute run v1\nsource %016llx\nfunction %s\nsteps %llu\ngrid %u %u %u / %u %u %u\n",
                           (unsigned long long)h, j->function, (unsigned long long)steps, grid.x, grid.y, grid.z, tg.x,
                           tg.y, tg.z);
    for (uint32_t i = 0; p && i < j->nargs; i++) {
        const karg *k = &j->args[i];
        uint64_t d = 0;
        if (k->kind == ARG_STATE) d = fnv1a(0xcbf29ce484222325ull, k->init.data, k->init.bytes);
        else if (k->kind == ARG_BYTES) d = fnv1a(0xcbf29ce484222325ull, k->bytes, k->len);
        char *q = mc__asprintf("%sslot %u kind %d %s %016llx\n", p, i, (int)k->kind,
                               k->kind == ARG_STATE ? mc_npy_dtype_name(k->init.dtype) : "", (unsigned long long)d);
        free(p);
        p = q;
    }
    return p;
}

static void kjob_free(kjob *j)
{
    for (uint32_t i = 0; i < j->nargs; i++) mc_npy_free(&j->args[i].init);
    free(j->source);
}

static void kernel_usage(void)
{
    printf(
        "usage: metal-compute run FILE.metal --function NAME --arg SPEC ... [--steps N] [--out [SLOT=]FILE.npy]\n"
        "           [--device D] [--grid X[,Y[,Z]]] [--threadgroup X[,Y[,Z]]] [--budget-ms MS] [--checkpoint-ms MS]\n"
        "           [--checkpoint-dir DIR [--resume]] [--progress bar|json|none] [--inject-faults KIND@N,...]\n"
        "           [--isolate [--deadline-ms MS] [--max-restarts N]] [--trace FILE]\n\n"
        "Runs a step kernel of your own through the runner, --steps times (default 1000). Each --arg binds\n"
        "the next argument slot, from slot 0:\n"
        "  FILE.npy              a state buffer with the array's contents (C order, little-endian)\n"
        "  DTYPE[SHAPE][=FILL]   a state buffer of FILL (default 0), e.g. float32[256,256]=1\n"
        "  pair:STATE            two slots: A (this one) and B (the next), B starting as a copy of A;\n"
        "                        step i reads A and writes B when i is even, the other way when odd\n"
        "  iter                  the iteration range, bytes {uint64 first; uint32 count; uint32 pad}\n"
        "  TYPE:V[,TYPE:V...]    scalars by value, packed like a C struct (f32 f64 i8 u8 i16 u16 i32\n"
        "                        u32 i64 u64), e.g. u32:256,u32:256,f32:0.2\n"
        "The grid is the first state's shape, last axis fastest (x), unless --grid gives it; the kernel\n"
        "checks its bounds. The language comes from the extension (.metal, .c, .cu). --out SLOT=FILE.npy\n"
        "writes the final state of the buffer at SLOT (a pair: the buffer holding the last step);\n"
        "without --out the first state goes to NAME.npy. docs/RUNNER.md has the rest, with examples.\n");
}

static bool parse_dims(const char *s, mc_size3 *out)
{
    uint32_t v[3] = {1, 1, 1};
    int n = 0;
    const char *p = s;
    while (*p && n < 3) {
        char *end;
        errno = 0;
        unsigned long x = strtoul(p, &end, 10);
        if (end == p || errno || x == 0 || x > 0xffffffffu) return false;
        v[n++] = (uint32_t)x;
        p = end;
        if (*p == ',') p++;
        else if (*p) return false;
    }
    if (*p || !n) return false;
    *out = (mc_size3){v[0], v[1], v[2]};
    return true;
}

int mc_cli_run_kernel(int argc, char **argv)
{
    kjob job;
    memset(&job, 0, sizeof job);
    job.path = argv[0];
    job.lang = language_of(job.path);
    const char *device = NULL, *faults = NULL, *ckpt_dir = NULL, *trace = NULL;
    const char *outs[MAX_OUTS];
    int nouts = 0;
    uint64_t steps = 1000;
    uint32_t max_restarts = 0;
    double budget = 0, checkpoint = 0, deadline = 0;
    bool isolate = false, resume = false, grid_set = false, tg_set = false;
    mc_size3 grid = {0, 0, 0}, tg = {0, 0, 0};
    mc_run_progress_mode pmode = MC_RUN_PROGRESS_AUTO;
    int rc = 2;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        char *end;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            kernel_usage();
            kjob_free(&job);
            return 0;
        } else if (v && !strcmp(a, "--function")) {
            job.function = argv[++i];
        } else if (v && !strcmp(a, "--arg")) {
            if ((rc = add_arg(&job, argv[++i])) != 0) goto out;
            rc = 2;
        } else if (v && !strcmp(a, "--steps")) {
            errno = 0;
            unsigned long long x = strtoull(argv[++i], &end, 10);
            if (*end || errno || !x || x > (1ull << 53) || *v == '-') {
                usage_error("--steps takes 1 to 2^53, not '%s'", v);
                goto out;
            }
            steps = x;
        } else if (v && !strcmp(a, "--device")) {
            device = argv[++i];
        } else if (v && !strcmp(a, "--out")) {
            if (nouts == MAX_OUTS) {
                usage_error("at most %s --out", "16");
                goto out;
            }
            outs[nouts++] = argv[++i];
        } else if (v && !strcmp(a, "--grid")) {
            if (!parse_dims(argv[++i], &grid)) {
                usage_error("--grid takes X[,Y[,Z]] (each at least 1), not '%s'", v);
                goto out;
            }
            grid_set = true;
        } else if (v && !strcmp(a, "--threadgroup")) {
            if (!parse_dims(argv[++i], &tg)) {
                usage_error("--threadgroup takes X[,Y[,Z]] (each at least 1), not '%s'", v);
                goto out;
            }
            tg_set = true;
        } else if (v && !strcmp(a, "--budget-ms")) {
            budget = strtod(argv[++i], &end);
            if (*end || !(budget > 0 && budget <= 60000)) {
                usage_error("--budget-ms takes a number of milliseconds above 0, not '%s'", v);
                goto out;
            }
        } else if (v && !strcmp(a, "--checkpoint-ms")) {
            checkpoint = strtod(argv[++i], &end);
            if (*end || !(checkpoint > 0 && checkpoint <= 3600000)) {
                usage_error("--checkpoint-ms takes a number of milliseconds above 0, not '%s'", v);
                goto out;
            }
        } else if (v && !strcmp(a, "--checkpoint-dir")) {
            ckpt_dir = argv[++i];
        } else if (v && !strcmp(a, "--trace")) {
            trace = argv[++i];
        } else if (!strcmp(a, "--resume")) {
            resume = true;
        } else if (v && !strcmp(a, "--progress")) {
            if (!mc_run_progress_parse(argv[++i], &pmode)) {
                usage_error("--progress takes bar, json or none, not '%s'", v);
                goto out;
            }
        } else if (v && !strcmp(a, "--inject-faults")) {
            faults = argv[++i];
        } else if (!strcmp(a, "--isolate")) {
            isolate = true;
        } else if (v && !strcmp(a, "--deadline-ms")) {
            deadline = strtod(argv[++i], &end);
            if (*end || !(deadline >= 250 && deadline <= 3600000)) {
                usage_error("--deadline-ms takes 250 to 3600000 milliseconds, not '%s'", v);
                goto out;
            }
        } else if (v && !strcmp(a, "--max-restarts")) {
            unsigned long x = strtoul(argv[++i], &end, 10);
            if (*end || x < 1 || x > 1000) {
                usage_error("--max-restarts takes 1 to 1000, not '%s'", v);
                goto out;
            }
            max_restarts = (uint32_t)x;
        } else {
            fprintf(stderr, "metal-compute run: unknown or incomplete option '%s' (see run %s --help)\n", a, job.path);
            goto out;
        }
    }
    if (!job.function) {
        usage_error("%s: --function NAME is required (the kernel to run)", job.path);
        goto out;
    }
    if (!job.nstate) {
        usage_error("%s: no state: give at least one --arg FILE.npy, DTYPE[SHAPE] or pair:...", job.path);
        goto out;
    }
    if (resume && !ckpt_dir) {
        usage_error("%s", "--resume needs --checkpoint-dir DIR");
        goto out;
    }
    if (!isolate && (deadline > 0 || max_restarts > 0)) {
        usage_error("%s", "--deadline-ms and --max-restarts need --isolate");
        goto out;
    }

    /* Outputs: checked before any work, so a long run does not end in
     * "cannot write". */
    uint32_t out_slot[MAX_OUTS];
    const char *out_path[MAX_OUTS];
    char default_out[512];
    uint32_t first_state = 0;
    while (job.args[first_state].kind != ARG_STATE) first_state++;
    if (!nouts) {
        snprintf(default_out, sizeof default_out, "%s.npy", job.function);
        outs[nouts++] = default_out;
    }
    for (int k = 0; k < nouts; k++) {
        const char *eq = strchr(outs[k], '=');
        out_slot[k] = first_state;
        out_path[k] = outs[k];
        if (eq) {
            char *end;
            unsigned long x = strtoul(outs[k], &end, 10);
            if (end != eq || x >= job.nargs || (job.args[x].kind != ARG_STATE && job.args[x].kind != ARG_PAIR_B)) {
                fprintf(stderr, "metal-compute run: --out %s: SLOT must be the slot of a state buffer\n", outs[k]);
                goto out;
            }
            out_slot[k] = (uint32_t)x;
            out_path[k] = eq + 1;
        }
        if (!ends_with(out_path[k], ".npy")) {
            fprintf(stderr, "metal-compute run: --out %s: the file name must end in .npy\n", outs[k]);
            goto out;
        }
        mc_status cs = mc__outfile_check(out_path[k]);
        if (cs != MC_OK) {
            mc_cli_fail("--out", cs);
            goto out;
        }
    }

    /* Like run gray-scott: the trace path is checked before any work. */
    if (trace && mc_cli_trace_begin(trace, isolate) != 0) goto out;

    job.source = mc_cli_read_file(job.path, &job.source_len);
    if (!job.source) {
        fprintf(stderr, "metal-compute run: cannot read the kernel %s: %s\n", job.path,
                errno ? strerror(errno) : "empty file");
        goto out;
    }

    /* The grid: the first state's shape, last axis fastest. */
    const mc_npy *shape = &job.args[first_state].init;
    if (!grid_set) {
        uint64_t g[3] = {1, 1, 1};
        for (uint32_t d = 0; d < shape->ndim; d++) g[d] = shape->shape[shape->ndim - 1 - d];
        if (g[0] > 0xffffffffu || g[1] > 0xffffffffu || g[2] > 0xffffffffu) {
            usage_error("%s", "the first state is too large for a grid; give --grid");
            goto out;
        }
        grid = (mc_size3){(uint32_t)g[0], (uint32_t)g[1], (uint32_t)g[2]};
    }
    if (!tg_set) {
        if (grid.z > 1) tg = (mc_size3){8, 8, 4};
        else if (grid.y > 1) tg = (mc_size3){16, 16, 1};
        else tg = (mc_size3){256, 1, 1};
    }
    mc_size3 groups = {(grid.x + tg.x - 1) / tg.x, (grid.y + tg.y - 1) / tg.y, (grid.z + tg.z - 1) / tg.z};
    int32_t iter_slot = -1;
    for (uint32_t i = 0; i < job.nargs; i++)
        if (job.args[i].kind == ARG_ITER) {
            if (iter_slot >= 0) {
                usage_error("%s", "'iter' is given twice");
                goto out;
            }
            iter_slot = (int32_t)i;
        }

    char *params = run_params(&job, steps, grid, tg);
    if (!params) {
        mc_cli_fail("run", MC_ERR_NO_MEMORY);
        rc = 1;
        goto out;
    }
    mc_device *dev;
    mc_device_info info;
    mc_isolate_desc iso;
    if (mc_cli_open_target(device, isolate, deadline, max_restarts, faults, &dev, &info, &iso)) {
        free(params);
        rc = 1;
        goto out;
    }
    mc_run_report report;
    mc_run_report_init(&report, pmode);
    mc_runner_desc desc = MC_RUNNER_DESC_INIT;
    mc_run_report_desc(&desc, dev, isolate ? &iso : NULL, budget, checkpoint, ckpt_dir, resume, &report);
    desc.setup = k_setup;
    desc.teardown = k_teardown;
    desc.user = &job;
    desc.threadgroups = groups;
    desc.threads_per_threadgroup = tg;
    desc.total_iterations = steps;
    desc.iteration_arg = iter_slot;
    desc.label = job.function;
    desc.run_params = params;
    desc.run_params_len = strlen(params);
    mc_runner *r = NULL;
    mc_status s = mc_runner_create(&desc, &r);
    free(params);
    if (s != MC_OK) {
        mc_cli_fail(job.path, s);
        mc_device_release(dev);
        rc = s == MC_ERR_INVALID_ARGUMENT ? 2 : 1;
        goto out;
    }
    mc_cli_trace_watch_signals();
    if (!isolate && faults && (s = mc_device_inject_faults(dev, faults)) != MC_OK) {
        mc_cli_fail("--inject-faults", s);
        mc_runner_release(r);
        mc_device_release(dev);
        goto out;
    }
    mc_device_release(dev); /* the runner holds its own */

    mc_runner_stats st;
    mc_isolate_stats ist;
    s = mc_run_report_run(r, isolate, &st, &ist, &info);
    if (s != MC_OK) {
        mc_cli_fail(job.path, s);
        mc_runner_release(r);
        rc = 1;
        goto out;
    }
    rc = 0;
    for (int k = 0; k < nouts && rc == 0; k++) {
        uint32_t slot = out_slot[k];
        const karg *a = state_arg(&job, slot);
        /* A pair's last step wrote B when the step count is odd. */
        uint32_t idx = a->paired ? a->state + (uint32_t)(steps % 2) : job.args[slot].state;
        mc_npy o = a->init;
        o.data = malloc(o.bytes);
        char why[512];
        if (!o.data) {
            rc = mc_cli_fail("--out", MC_ERR_NO_MEMORY);
        } else if ((s = mc_runner_state_read(r, idx, o.data, o.bytes)) != MC_OK) {
            rc = mc_cli_fail("reading the final state", s);
        } else if (!mc_npy_write(out_path[k], &o, why, sizeof why)) {
            fprintf(stderr, "metal-compute run: --out %s: %s\n", out_path[k], why);
            rc = 1;
        }
        free(o.data);
    }
    if (rc == 0) {
        printf("%s %s on %s:%d (%s)\n", job.path, job.function, mc_device_kind_name(info.kind), info.index, info.name);
        printf("  grid         %u x %u x %u (threadgroups of %u x %u x %u)\n", grid.x, grid.y, grid.z, tg.x, tg.y,
               tg.z);
        if (!isolate)
            printf("  pipeline     %s (%.1f ms)\n",
                   job.cache_hit_disk ? "loaded from the disk cache"
                   : job.compiled     ? "compiled"
                                      : "from memory",
                   job.compile_ms);
        mc_run_report_summary(&st, isolate ? &ist : NULL, ckpt_dir);
        for (int k = 0; k < nouts; k++) printf("  output       %s (slot %u)\n", out_path[k], out_slot[k]);
    }
    mc_runner_release(r);
out:
    kjob_free(&job);
    return rc;
}
