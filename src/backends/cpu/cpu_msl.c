/*
 * DOC: CPU device: Metal Shading Language front end
 *
 * Turns an MSL source into C++ that clang compiles against the project's
 * own standard-library header (src/msl/mc_msl_cpu.h). The source keeps its
 * lines ("program_source:LINE", as Metal names it), so clang's errors point
 * at the user's text. Only what C++ cannot take as written is rewritten:
 *
 *   float4(a, b.xy)            -> mc::make<float4>(a, b.xy)
 *   1.5h                       -> half(1.5f)
 *   threadgroup float t[64];   -> static thread_local float t[64]; plus a
 *                                 static_assert on the group's total size
 *   threadgroup float *p       -> float *p (one flat address space)
 *   constant T c [[function_constant(i)]];  -> a value read from the pipeline
 *   #include <metal_stdlib>    -> nothing (the header is forced in)
 *
 * and, after the source, one C entry point per kernel that runs a
 * threadgroup (the CPU kernel ABI of mc/mc_cpu_kernel.h), binding each
 * parameter from its attribute. Anything outside the compute subset is
 * refused here with the feature's name and line, before any compiler runs.
 */
#include "backends/cpu/cpu.h"
#include "msl/msl.h"

#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum tok_kind { T_IDENT, T_NUMBER, T_STRING, T_PUNCT, T_PP };

typedef struct tok {
    uint8_t kind;
    uint32_t start, len, line;
} tok;

typedef struct lexed {
    tok *t;
    size_t n, cap;
} lexed;

static bool push_tok(lexed *L, uint8_t kind, size_t start, size_t len, uint32_t line)
{
    if (L->n == L->cap) {
        size_t ncap = L->cap ? L->cap * 2 : 1024;
        tok *p = realloc(L->t, ncap * sizeof *p);
        if (!p) return false;
        L->t = p;
        L->cap = ncap;
    }
    L->t[L->n++] = (tok){kind, (uint32_t)start, (uint32_t)len, line};
    return true;
}

/* Comments and white space are not tokens: they are copied as they are. */
static bool lex(const char *s, size_t n, lexed *L)
{
    uint32_t line = 1;
    bool line_start = true;
    size_t i = 0;
    while (i < n) {
        char c = s[i];
        if (c == '\n') {
            line++;
            line_start = true;
            i++;
            continue;
        }
        if (isspace((unsigned char)c)) {
            i++;
            continue;
        }
        if (c == '/' && i + 1 < n && s[i + 1] == '/') {
            while (i < n && s[i] != '\n') i++;
            continue;
        }
        if (c == '/' && i + 1 < n && s[i + 1] == '*') {
            i += 2;
            while (i + 1 < n && !(s[i] == '*' && s[i + 1] == '/')) {
                if (s[i] == '\n') line++;
                i++;
            }
            i = i + 2 < n ? i + 2 : n;
            continue;
        }
        size_t b = i;
        uint32_t bl = line;
        if (c == '#' && line_start) {
            while (i < n && s[i] != '\n') {
                if (s[i] == '\\' && i + 1 < n && s[i + 1] == '\n') {
                    line++;
                    i++;
                }
                i++;
            }
            if (!push_tok(L, T_PP, b, i - b, bl)) return false;
            continue;
        }
        line_start = false;
        if (isalpha((unsigned char)c) || c == '_') {
            while (i < n && (isalnum((unsigned char)s[i]) || s[i] == '_')) i++;
            if (!push_tok(L, T_IDENT, b, i - b, bl)) return false;
        } else if (isdigit((unsigned char)c) || (c == '.' && i + 1 < n && isdigit((unsigned char)s[i + 1]))) {
            while (i < n && (isalnum((unsigned char)s[i]) || s[i] == '.' || s[i] == '_' ||
                             ((s[i] == '+' || s[i] == '-') && (s[i - 1] == 'e' || s[i - 1] == 'E' || s[i - 1] == 'p' ||
                                                               s[i - 1] == 'P'))))
                i++;
            if (!push_tok(L, T_NUMBER, b, i - b, bl)) return false;
        } else if (c == '"' || c == '\'') {
            i++;
            while (i < n && s[i] != c && s[i] != '\n') i += s[i] == '\\' ? 2 : 1;
            if (i < n) i++;
            if (!push_tok(L, T_STRING, b, i - b, bl)) return false;
        } else {
            i++;
            if (!push_tok(L, T_PUNCT, b, 1, bl)) return false;
        }
    }
    return true;
}

/* ---- output ------------------------------------------------------------------ */

typedef struct sbuf {
    char *p;
    size_t n, cap;
    bool oom;
} sbuf;

static void put(sbuf *b, const char *s, size_t n)
{
    if (b->oom) return;
    if (b->n + n + 1 > b->cap) {
        size_t ncap = MC__MAX(b->cap * 2, b->n + n + 1024);
        char *p = realloc(b->p, ncap);
        if (!p) {
            b->oom = true;
            return;
        }
        b->p = p;
        b->cap = ncap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = '\0';
}

static void putf(sbuf *b, const char *fmt, ...)
{
    char tmp[1024];
    va_list ap;
    va_start(ap, fmt);
    int k = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (k > 0) put(b, tmp, MC__MIN((size_t)k, sizeof tmp - 1));
}

/* ---- what the subset holds ---------------------------------------------------------- */

typedef struct builtin_attr {
    const char *name;
    const char *expr; /* the value, from mc::ids t */
} builtin_attr;

static const builtin_attr builtin_attrs[] = {
    {"thread_position_in_grid", "t.tpig"},
    {"thread_position_in_threadgroup", "t.tpitg"},
    {"threadgroup_position_in_grid", "t.tgpig"},
    {"threads_per_threadgroup", "t.tptg"},
    {"threadgroups_per_grid", "t.tgpg"},
    {"threads_per_grid", "t.tpg"},
    {"thread_index_in_threadgroup", "t.tiitg"},
    {"thread_index_in_simdgroup", "t.tiisg"},
    {"simdgroup_index_in_threadgroup", "t.sgiitg"},
    {"simdgroups_per_threadgroup", "t.sgptg"},
    {"thread_execution_width", "32u"},
    {"threads_per_simdgroup", "32u"},
    {"thread_index_in_quadgroup", "(t.tiitg & 3u)"},
    {"quadgroup_index_in_threadgroup", "(t.tiitg >> 2)"},
    {"quadgroups_per_threadgroup", "((t.tptg.x * t.tptg.y * t.tptg.z + 3u) / 4u)"},
};

/* identifiers that name a feature outside the compute subset */
typedef struct refused {
    const char *ident;
    const char *feature;
} refused;

static const refused refused_idents[] = {
    {"texture1d", "textures"}, {"texture1d_array", "textures"}, {"texture2d", "textures"},
    {"texture2d_array", "textures"}, {"texture2d_ms", "textures"}, {"texture2d_ms_array", "textures"},
    {"texture3d", "textures"}, {"texturecube", "textures"}, {"texturecube_array", "textures"},
    {"texture_buffer", "textures"}, {"depth2d", "textures"}, {"depth2d_array", "textures"},
    {"depth2d_ms", "textures"}, {"depthcube", "textures"}, {"depthcube_array", "textures"},
    {"sampler", "samplers"}, {"constexpr_sampler", "samplers"},
    {"raytracing", "ray tracing"}, {"intersector", "ray tracing"}, {"acceleration_structure", "ray tracing"},
    {"primitive_acceleration_structure", "ray tracing"}, {"instance_acceleration_structure", "ray tracing"},
    {"intersection_function_table", "ray tracing"}, {"intersection_result", "ray tracing"},
    {"visible_function_table", "visible functions"}, {"imageblock", "imageblocks"},
    {"mesh_grid_properties", "mesh and object stages"}, {"object_data", "mesh and object stages"},
    {"simdgroup_matrix", "SIMD-group matrices"}, {"simdgroup_float8x8", "SIMD-group matrices"},
    {"simdgroup_half8x8", "SIMD-group matrices"}, {"simdgroup_load", "SIMD-group matrices"},
    {"simdgroup_store", "SIMD-group matrices"}, {"simdgroup_multiply_accumulate", "SIMD-group matrices"},
};

/* attributes that belong to features outside the subset */
static const refused refused_attrs[] = {
    {"texture", "textures"}, {"sampler", "samplers"}, {"stage_in", "render stages"},
    {"position", "render stages"}, {"color", "render stages"}, {"vertex_id", "render stages"},
    {"instance_id", "render stages"}, {"visible", "visible functions"}, {"intersection", "ray tracing"},
    {"mesh", "mesh and object stages"}, {"object", "mesh and object stages"}, {"vertex", "render stages"},
    {"fragment", "render stages"}, {"imageblock_data", "imageblocks"}, {"raster_order_group", "render stages"},
    {"payload", "mesh and object stages"},
};

static const char *const stage_keywords[] = {"vertex", "fragment", "mesh", "object"};

/* ---- translation ------------------------------------------------------------------ */

#define MAX_PARAMS 64

typedef struct param {
    enum { P_BUFFER, P_TG, P_BUILTIN } kind;
    uint32_t slot;
    const char *expr;
} param;

typedef struct kern {
    uint32_t name_tok;
    bool fibers; /* it or a function it calls uses barriers or SIMD-group functions */
    bool coro;   /* its threads run as coroutines (plan_coroutines) */
    bool regions; /* it runs as region loops (plan_regions, cpu_msl_regions.c) */
    int32_t guard; /* its function in fn_bodies when its bounds test is hoisted (plan_guards), else -1 */
    uint32_t nparam;
    param params[MAX_PARAMS];
    /* templates: a kernel template has no entry point of its own; each
     * [[host_name("NAME")]] instantiation is a kernel named NAME (name_tok)
     * that calls `callee` (e.g. "add<float>"), a copy of kern `tmpl` */
    bool is_template;
    char *callee;
    uint32_t tmpl;
} kern;

typedef struct xlat {
    const char *s;
    size_t n;
    lexed L;
    sbuf out;
    size_t pos; /* source copied up to here */
    char *error;
    kern *kerns;
    size_t nkern, kcap;
    size_t tmpl_end; /* the '>' closing the last `template <...>` at file scope, or SIZE_MAX */
    struct instance { uint32_t tmpl, host_start, host_len, line; char *callee; } *insts;
    size_t ninst, icap;
    bool fibers;
    mc__msl_target target;
    struct fn_bodies *fns; /* top-level functions (find_functions) */
} xlat;

static bool is(const xlat *x, size_t i, const char *word)
{
    if (i >= x->L.n) return false;
    const tok *t = &x->L.t[i];
    size_t k = strlen(word);
    return t->len == k && !memcmp(x->s + t->start, word, k);
}

static bool punct(const xlat *x, size_t i, char c)
{
    return i < x->L.n && x->L.t[i].kind == T_PUNCT && x->s[x->L.t[i].start] == c;
}

static bool fail_at(xlat *x, uint32_t line, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (!x->error) x->error = mc__asprintf("program_source:%u: error: %s", line, msg);
    return false;
}

/* copies the source up to token i's start, then text in its place */
static void replace_tok(xlat *x, size_t i, const char *text)
{
    const tok *t = &x->L.t[i];
    put(&x->out, x->s + x->pos, t->start - x->pos);
    put(&x->out, text, strlen(text));
    x->pos = t->start + t->len;
}

static void copy_to(xlat *x, size_t off)
{
    put(&x->out, x->s + x->pos, off - x->pos);
    x->pos = off;
}

/* [[ at i: the attribute's name token and the index past ]]; false if not one */
static bool attr_at(const xlat *x, size_t i, size_t *name, size_t *arg, size_t *end)
{
    if (!punct(x, i, '[') || !punct(x, i + 1, '[') || x->L.t[i + 1].start != x->L.t[i].start + 1) return false;
    size_t k = i + 2;
    if (k >= x->L.n || x->L.t[k].kind != T_IDENT) return false;
    *name = k;
    *arg = 0;
    k++;
    while (punct(x, k, ':') && punct(x, k + 1, ':') && k + 2 < x->L.n) k += 3; /* a::b: keep the last part */
    if (k - 1 != *name) *name = k - 1;
    if (punct(x, k, '(')) {
        *arg = k + 1;
        int depth = 0;
        for (; k < x->L.n; k++) {
            if (punct(x, k, '(')) depth++;
            else if (punct(x, k, ')') && --depth == 0) break;
        }
        k++;
    }
    while (k < x->L.n && !(punct(x, k, ']') && punct(x, k + 1, ']'))) {
        if (punct(x, k, ';') || punct(x, k, '{')) return false;
        k++;
    }
    *end = k + 2;
    return k < x->L.n;
}

static bool tok_uint(const xlat *x, size_t i, uint32_t *v)
{
    if (i >= x->L.n || x->L.t[i].kind != T_NUMBER) return false;
    char buf[32];
    size_t len = MC__MIN((size_t)x->L.t[i].len, sizeof buf - 1);
    memcpy(buf, x->s + x->L.t[i].start, len);
    buf[len] = '\0';
    char *e;
    unsigned long u = strtoul(buf, &e, 0);
    while (*e == 'u' || *e == 'U') e++;
    if (*e || u > 1000000) return false;
    *v = (uint32_t)u;
    return true;
}

static const char *vector_bases[] = {"float", "half", "int", "uint", "short", "ushort", "char", "uchar", "long",
                                     "ulong", "bool", "packed_float", "packed_int", "packed_uint", "packed_short",
                                     "packed_ushort", "packed_char", "packed_uchar"};

static bool is_vector_type(const xlat *x, size_t i)
{
    const tok *t = &x->L.t[i];
    if (t->kind != T_IDENT || t->len < 2) return false;
    char last = x->s[t->start + t->len - 1];
    if (last < '2' || last > '4') return false;
    for (size_t k = 0; k < MC__ARRAY_LEN(vector_bases); k++)
        if (strlen(vector_bases[k]) == t->len - 1 && !memcmp(x->s + t->start, vector_bases[k], t->len - 1)) return true;
    return false;
}

/* The kernel whose name is token name_tok, its parameters between the
 * parentheses at open. */
static bool parse_kernel(xlat *x, size_t name_tok, size_t open, size_t *close)
{
    if (x->nkern == x->kcap) {
        size_t ncap = x->kcap ? x->kcap * 2 : 8;
        kern *p = realloc(x->kerns, ncap * sizeof *p);
        if (!p) return fail_at(x, 0, "out of host memory");
        x->kerns = p;
        x->kcap = ncap;
    }
    kern *k = &x->kerns[x->nkern];
    memset(k, 0, sizeof *k);
    k->name_tok = (uint32_t)name_tok;
    const tok *nt = &x->L.t[name_tok];
    int depth = 0;
    size_t i = open;
    bool have_attr = false, empty = true;
    for (; i < x->L.n; i++) {
        if (punct(x, i, '(')) {
            depth++;
            continue;
        }
        if (punct(x, i, ')') && --depth == 0) break;
        size_t an, aa, ae;
        if (depth == 1 && attr_at(x, i, &an, &aa, &ae)) {
            param *p = &k->params[k->nparam];
            const tok *at = &x->L.t[an];
            if (is(x, an, "buffer") || is(x, an, "threadgroup")) {
                uint32_t slot;
                bool buf = is(x, an, "buffer");
                if (!aa || !tok_uint(x, aa, &slot))
                    return fail_at(x, at->line, "[[%s(n)]] needs a constant index", buf ? "buffer" : "threadgroup");
                uint32_t lim = buf ? MC_CPU_MAX_ARGS : MC_CPU_MAX_TG_MEM;
                if (slot >= lim)
                    return fail_at(x, at->line, "%s index %u is beyond the %u %s slots (0 to %u)",
                                   buf ? "buffer" : "threadgroup", slot, lim,
                                   buf ? "buffer" : "threadgroup memory", lim - 1);
                p->kind = buf ? P_BUFFER : P_TG;
                p->slot = slot;
            } else {
                for (size_t r = 0; r < MC__ARRAY_LEN(refused_attrs); r++)
                    if (is(x, an, refused_attrs[r].ident))
                        return fail_at(x, at->line, "[[%s]]: %s are outside the compute subset",
                                       refused_attrs[r].ident, refused_attrs[r].feature);
                p->kind = P_BUILTIN;
                p->expr = NULL;
                for (size_t b = 0; b < MC__ARRAY_LEN(builtin_attrs); b++)
                    if (is(x, an, builtin_attrs[b].name)) p->expr = builtin_attrs[b].expr;
                if (!p->expr)
                    return fail_at(x, at->line, "kernel parameter attribute [[%.*s]] is not supported",
                                   (int)at->len, x->s + at->start);
            }
            have_attr = true;
            i = ae - 1;
            continue;
        }
        if (depth == 1 && punct(x, i, ',')) {
            if (!have_attr)
                return fail_at(x, x->L.t[i].line, "parameter %u of kernel '%.*s' has no attribute ([[buffer(n)]], ...)",
                               k->nparam + 1, (int)nt->len, x->s + nt->start);
            if (++k->nparam == MAX_PARAMS) return fail_at(x, x->L.t[i].line, "too many kernel parameters");
            have_attr = false;
            continue;
        }
        if (depth == 1) empty = false;
    }
    if (i >= x->L.n) return fail_at(x, nt->line, "unterminated parameter list of kernel '%.*s'", (int)nt->len,
                                    x->s + nt->start);
    if (!empty || have_attr) {
        if (!have_attr && !is(x, i - 1, "void"))
            return fail_at(x, x->L.t[i].line, "parameter %u of kernel '%.*s' has no attribute ([[buffer(n)]], ...)",
                           k->nparam + 1, (int)nt->len, x->s + nt->start);
        if (have_attr) k->nparam++;
    }
    x->nkern++;
    *close = i;
    return true;
}

/* The first identifier, in source order, that names a refused feature. */
static bool refuse_features(xlat *x)
{
    for (size_t i = 0; i < x->L.n; i++) {
        if (x->L.t[i].kind != T_IDENT) continue;
        for (size_t r = 0; r < MC__ARRAY_LEN(refused_idents); r++)
            if (is(x, i, refused_idents[r].ident))
                return fail_at(x, x->L.t[i].line, "%s: %s are outside the compute subset", refused_idents[r].ident,
                               refused_idents[r].feature);
    }
    return true;
}

/* ---- kernel templates and [[host_name]] instantiations ------------------------- */

static bool same_ident(const xlat *x, size_t a, size_t b);

/* The index of the token closing the bracket opened at i ('<' or '('), or
 * x->L.n. Angle brackets nest with parentheses inside them. */
static size_t close_of(const xlat *x, size_t i)
{
    int angle = 0, paren = 0;
    for (size_t k = i; k < x->L.n; k++) {
        if (punct(x, k, '(')) paren++;
        else if (punct(x, k, ')')) paren--;
        else if (paren == 0 && punct(x, k, '<')) angle++;
        else if (paren == 0 && punct(x, k, '>') && --angle == 0) return k;
        if (punct(x, k, ';') || punct(x, k, '{')) break;
    }
    return x->L.n;
}

/* The kernel just parsed (starting at token start) follows `template <...>`:
 * it is a template, with no entry point until it is instantiated. */
static void mark_template_kernel(xlat *x, size_t start)
{
    if (x->tmpl_end == SIZE_MAX || start != x->tmpl_end + 1) return;
    x->kerns[x->nkern - 1].is_template = true;
    x->tmpl_end = SIZE_MAX;
}

static bool host_name_ok(const char *s, size_t n)
{
    if (!n || isdigit((unsigned char)s[0])) return false;
    for (size_t i = 0; i < n; i++)
        if (!isalnum((unsigned char)s[i]) && s[i] != '_') return false;
    return true;
}

/* `template` at file scope, token *i: `template <...>` (a template follows;
 * a kernel right after it is a kernel template) or an explicit
 * instantiation, `template [[host_name("NAME")]] [[kernel]] void k<T>(...);`
 * or `... decltype(k<T>) k<T>;` (MLX's form). An instantiation of a kernel
 * template becomes a kernel named NAME; the statement itself is dropped
 * (the entry point instantiates the template), its lines kept. */
static bool template_at(xlat *x, size_t *i)
{
    size_t t0 = *i;
    uint32_t line = x->L.t[t0].line;
    if (punct(x, t0 + 1, '<')) {
        size_t e = close_of(x, t0 + 1);
        if (e >= x->L.n) return fail_at(x, line, "unterminated template parameter list");
        x->tmpl_end = e;
        *i = e;
        return true;
    }
    size_t k = t0 + 1, an, aa, ae, host = 0;
    bool is_kernel = false;
    while (attr_at(x, k, &an, &aa, &ae)) {
        if (is(x, an, "host_name")) {
            if (!aa || x->L.t[aa].kind != T_STRING || x->L.t[aa].len < 2 || x->s[x->L.t[aa].start] != '"')
                return fail_at(x, line, "[[host_name(...)]] takes the kernel's name as a string literal");
            host = aa;
        } else if (is(x, an, "kernel")) {
            is_kernel = true;
        }
        k = ae;
    }
    size_t semi = k;
    while (semi < x->L.n && !punct(x, semi, ';') && !punct(x, semi, '{')) semi++;
    if (semi >= x->L.n || !punct(x, semi, ';')) {
        if (host || is_kernel) return fail_at(x, line, "a kernel instantiation must end with ';'");
        return true; /* not ours: C++ as written */
    }
    /* the first `NAME <` naming a kernel template */
    size_t nm = 0;
    uint32_t tmpl = 0;
    for (size_t j = k; j < semi && !nm; j++) {
        if (x->L.t[j].kind != T_IDENT || !punct(x, j + 1, '<')) continue;
        for (size_t q = 0; q < x->nkern; q++)
            if (x->kerns[q].is_template && same_ident(x, j, x->kerns[q].name_tok)) {
                nm = j;
                tmpl = (uint32_t)q;
                break;
            }
    }
    if (!nm) {
        if (host || is_kernel)
            return fail_at(x, line, "a kernel instantiation must name a kernel template defined above it");
        *i = semi;
        return true; /* an ordinary explicit instantiation */
    }
    if (!host)
        return fail_at(x, line, "an instantiated kernel template needs [[host_name(\"name\")]], the name pipelines "
                                "find it by");
    const tok *ht = &x->L.t[host];
    if (!host_name_ok(x->s + ht->start + 1, ht->len - 2))
        return fail_at(x, line, "[[host_name(%.*s)]]: a kernel name is letters, digits and '_'", (int)ht->len,
                       x->s + ht->start);
    size_t ce = close_of(x, nm + 1);
    if (ce >= semi) return fail_at(x, line, "unterminated template argument list");
    if (x->ninst == x->icap) {
        size_t ncap = x->icap ? x->icap * 2 : 8;
        struct instance *p = realloc(x->insts, ncap * sizeof *p);
        if (!p) return fail_at(x, line, "out of host memory");
        x->insts = p;
        x->icap = ncap;
    }
    size_t clen = x->L.t[ce].start + 1 - x->L.t[nm].start;
    char *callee = malloc(clen + 1);
    if (!callee) return fail_at(x, line, "out of host memory");
    memcpy(callee, x->s + x->L.t[nm].start, clen);
    callee[clen] = '\0';
    x->insts[x->ninst++] = (struct instance){tmpl, ht->start + 1, ht->len - 2, line, callee};
    copy_to(x, x->L.t[t0].start);
    for (uint32_t l = line; l < x->L.t[semi].line; l++) put(&x->out, "\n", 1);
    x->pos = x->L.t[semi].start + 1;
    *i = semi;
    return true;
}

/* Each instantiation becomes a kernel: its name a token over the host name
 * (appended after the source's tokens), its parameters the template's. */
static bool add_instances(xlat *x)
{
    for (size_t k = 0; k < x->ninst; k++) {
        struct instance *in = &x->insts[k];
        for (size_t q = 0; q < x->nkern; q++) {
            const tok *nt = &x->L.t[x->kerns[q].name_tok];
            if (!x->kerns[q].is_template && nt->len == in->host_len &&
                !memcmp(x->s + nt->start, x->s + in->host_start, in->host_len))
                return fail_at(x, in->line, "kernel '%.*s' is defined twice", (int)in->host_len,
                               x->s + in->host_start);
        }
        if (!push_tok(&x->L, T_IDENT, in->host_start, in->host_len, in->line))
            return fail_at(x, in->line, "out of host memory");
        if (x->nkern == x->kcap) {
            size_t ncap = x->kcap ? x->kcap * 2 : 8;
            kern *p = realloc(x->kerns, ncap * sizeof *p);
            if (!p) return fail_at(x, in->line, "out of host memory");
            x->kerns = p;
            x->kcap = ncap;
        }
        kern *kn = &x->kerns[x->nkern++];
        *kn = x->kerns[in->tmpl];
        kn->is_template = false;
        kn->name_tok = (uint32_t)(x->L.n - 1);
        kn->tmpl = in->tmpl;
        kn->callee = in->callee;
        in->callee = NULL;
    }
    return true;
}

/* An instantiation runs as its template does: after the kernels are
 * analysed (by name, which an instantiation's is not), it takes every
 * finding of its template's (fibers or a plain loop, ...) but its name. */
static void inherit_template_fibers(xlat *x)
{
    for (size_t k = 0; k < x->nkern; k++) {
        kern *kn = &x->kerns[k];
        if (!kn->callee) continue;
        kern own = *kn;
        *kn = x->kerns[own.tmpl];
        kn->name_tok = own.name_tok;
        kn->is_template = false;
        kn->callee = own.callee;
        kn->tmpl = own.tmpl;
    }
}

static bool coro_rewrite(xlat *x, size_t i);
static bool regions_rewrite(xlat *x, size_t *i);
static bool guard_rewrite(xlat *x, size_t i);
static bool coro_tg_var(xlat *x, size_t i, size_t name, size_t semi);

static bool translate_tokens(xlat *x)
{
    if (!refuse_features(x)) return false;
    int depth = 0;        /* braces */
    int paren = 0;
    int fn_depth = -1;    /* brace depth of the current function body at depth 0 -> 1 */
    char tg_sum[2048] = ""; /* sizeof() terms of this function's threadgroup variables */
    for (size_t i = 0; i < x->L.n && !x->error; i++) {
        if (regions_rewrite(x, &i)) continue;
        const tok *t = &x->L.t[i];
        const char *ts = x->s + t->start;
        if (t->kind == T_PP) {
            const char *inc = "#include";
            size_t k = 1;
            while (k < t->len && isspace((unsigned char)ts[k])) k++;
            if (t->len > 8 && !strncmp(ts + k, inc + 1, 7)) {
                const char *lt = memchr(ts, '<', t->len);
                if (lt && (size_t)(ts + t->len - lt) > 7 && !strncmp(lt, "<metal_", 7)) {
                    if (!strncmp(lt, "<metal_texture", 14) || !strncmp(lt, "<metal_raytracing", 17) ||
                        !strncmp(lt, "<metal_imageblocks", 18))
                        return fail_at(x, t->line, "%.*s: %s are outside the compute subset", (int)t->len, ts,
                                       lt[7] == 't' ? "textures" : lt[7] == 'r' ? "ray tracing" : "imageblocks");
                    replace_tok(x, i, ""); /* the standard library is forced in */
                }
            }
            continue;
        }
        if (t->kind == T_PUNCT) {
            char c = *ts;
            if (c == '{') {
                depth++;
                if (depth == 1 && paren == 0) {
                    fn_depth = 1;
                    tg_sum[0] = '\0';
                }
            } else if (c == '}') {
                depth--;
            } else if (c == '(') {
                paren++;
            } else if (c == ')') {
                paren--;
            }
            if ((c == '(' || c == ')') && guard_rewrite(x, i)) continue;
            size_t an, aa, ae;
            if (c == '[' && attr_at(x, i, &an, &aa, &ae)) {
                const tok *at = &x->L.t[an];
                for (size_t r = 0; r < MC__ARRAY_LEN(refused_attrs); r++)
                    if (is(x, an, refused_attrs[r].ident))
                        return fail_at(x, at->line, "[[%s]]: %s are outside the compute subset", refused_attrs[r].ident,
                                       refused_attrs[r].feature);
                if (is(x, an, "kernel") && depth == 0) {
                    /* [[kernel]] void name(...) */
                    replace_tok(x, i, "");
                    x->pos = x->L.t[ae - 1].start + 1; /* the whole attribute goes */
                    size_t nm = ae + 1;
                    if (!is(x, ae, "void") || nm >= x->L.n || x->L.t[nm].kind != T_IDENT || !punct(x, nm + 1, '('))
                        return fail_at(x, at->line, "a kernel must be 'kernel void name(...)'");
                    replace_tok(x, ae, "__attribute__((always_inline)) inline void");
                    size_t close;
                    if (!parse_kernel(x, nm, nm + 1, &close)) return false;
                    mark_template_kernel(x, i);
                    i = nm;
                    continue;
                }
                if (is(x, an, "function_constant") && depth == 0) continue; /* handled with 'constant' */
                i = ae - 1; /* parameter attributes: clang ignores them (-Wno-unknown-attributes) */
                continue;
            }
            continue;
        }
        if (t->kind == T_NUMBER) {
            char last = ts[t->len - 1];
            if ((last == 'h' || last == 'H') && !(t->len > 1 && (ts[1] == 'x' || ts[1] == 'X'))) {
                char buf[96];
                bool fl = memchr(ts, '.', t->len) || memchr(ts, 'e', t->len) || memchr(ts, 'E', t->len);
                snprintf(buf, sizeof buf, "half(%.*s%s)", (int)MC__MIN(t->len - 1, 64u), ts, fl ? "f" : "");
                replace_tok(x, i, buf);
            }
            continue;
        }
        if (t->kind != T_IDENT) continue;
        if (coro_rewrite(x, i)) continue;
        bool stmt_start = i == 0 || punct(x, i - 1, ';') || punct(x, i - 1, '}') || punct(x, i - 1, ']') ||
                          x->L.t[i - 1].kind == T_PP;
        if (depth == 0 && stmt_start) {
            for (size_t r = 0; r < MC__ARRAY_LEN(stage_keywords); r++)
                if (is(x, i, stage_keywords[r]) && i + 1 < x->L.n && x->L.t[i + 1].kind == T_IDENT)
                    return fail_at(x, t->line, "%s functions: %s stages are outside the compute subset",
                                   stage_keywords[r],
                                   r < 2 ? "render" : "mesh and object");
        }
        if (t->len > 5 && (!strncmp(ts, "simd_", 5) || !strncmp(ts, "quad_", 5))) x->fibers = true;
        if (is(x, i, "threadgroup_barrier") || is(x, i, "simdgroup_barrier")) x->fibers = true;
        if (is(x, i, "template") && depth == 0) {
            if (!template_at(x, &i)) return false;
            continue;
        }
        if (is(x, i, "kernel") && depth == 0) {
            size_t nm = i + 2;
            if (!is(x, i + 1, "void") || nm >= x->L.n || x->L.t[nm].kind != T_IDENT || !punct(x, nm + 1, '('))
                return fail_at(x, t->line, "a kernel must be 'kernel void name(...)'");
            size_t close;
            if (!parse_kernel(x, nm, nm + 1, &close)) return false;
            mark_template_kernel(x, i);
            continue;
        }
        if (is(x, i, "constant") && depth == 0 && stmt_start) {
            /* constant T name [[function_constant(i)]]; */
            size_t k = i + 1, an = 0, aa = 0, ae = 0;
            bool fc = false;
            for (; k < x->L.n && !punct(x, k, ';'); k++) {
                if (attr_at(x, k, &an, &aa, &ae) && is(x, an, "function_constant")) {
                    fc = true;
                    break;
                }
            }
            if (!fc) continue;
            uint32_t idx;
            if (!aa || !tok_uint(x, aa, &idx)) return fail_at(x, t->line, "[[function_constant(n)]] needs a constant index");
            size_t name = k - 1;
            if (name <= i + 1 || x->L.t[name].kind != T_IDENT || !punct(x, ae, ';'))
                return fail_at(x, t->line, "a function constant must read 'constant T name [[function_constant(n)]];'");
            copy_to(x, t->start);
            put(&x->out, "MC_FUNCTION_CONSTANT(", 21);
            put(&x->out, x->s + x->L.t[i + 1].start, x->L.t[name - 1].start + x->L.t[name - 1].len - x->L.t[i + 1].start);
            putf(&x->out, ", %.*s, %u);", (int)x->L.t[name].len, x->s + x->L.t[name].start, idx);
            for (uint32_t l = t->line; l < x->L.t[ae].line; l++) put(&x->out, "\n", 1);
            x->pos = x->L.t[ae].start + 1;
            i = ae;
            continue;
        }
        if (is(x, i, "threadgroup") && !punct(x, i + 1, '(')) {
            /* a pointer or reference type, or a variable? */
            size_t k = i + 1, name = 0;
            bool ptr = false;
            int d = 0;
            for (; k < x->L.n; k++) {
                if (punct(x, k, '<') || punct(x, k, '(')) d++;
                else if ((punct(x, k, '>') || punct(x, k, ')')) && d > 0) d--;
                else if (d == 0 && (punct(x, k, '*') || punct(x, k, '&'))) ptr = true;
                else if (d == 0 && (punct(x, k, ';') || punct(x, k, ',') || punct(x, k, ')') || punct(x, k, '=') ||
                                    punct(x, k, '{')))
                    break;
                if (d == 0 && !name && punct(x, k, '[') && x->L.t[k - 1].kind == T_IDENT) name = k - 1;
            }
            if (ptr || paren > 0) {
                replace_tok(x, i, "");
                continue;
            }
            if (!name && k > 0 && x->L.t[k - 1].kind == T_IDENT) name = k - 1;
            if (depth == 0 || !name || !punct(x, k, ';'))
                return fail_at(x, t->line, "threadgroup variables are declared one per statement inside a kernel");
            replace_tok(x, i, "MC_TG_VAR");
            if (!coro_tg_var(x, i, name, k)) copy_to(x, x->L.t[k].start + 1);
            size_t used = strlen(tg_sum);
            snprintf(tg_sum + used, sizeof tg_sum - used, "%ssizeof(%.*s)", used ? " + " : "", (int)x->L.t[name].len,
                     x->s + x->L.t[name].start);
            putf(&x->out, " static_assert(%s <= MC_MSL_MAX_TGMEM, \"threadgroup memory exceeds the device's limit of "
                          "\" MC_MSL_STR(MC_MSL_MAX_TGMEM) \" bytes per threadgroup\");",
                 tg_sum);
            i = k;
            continue;
        }
        if (is_vector_type(x, i) && punct(x, i + 1, '(') && !(i > 0 && punct(x, i - 1, '<'))) {
            char buf[64];
            snprintf(buf, sizeof buf, "mc::make<%.*s>", (int)t->len, ts);
            replace_tok(x, i, buf);
        }
    }
    (void)fn_depth;
    return !x->error;
}

/* CUDA: slot i is kernel parameter i (src/backends/cuda/cuda_be.h): a
 * pointer for a buffer, the bytes by value for `constant T&`. */
static bool emit_cuda_wrappers(xlat *x)
{
    sbuf *o = &x->out;
    putf(o, "\n} /* namespace mc_user */\n#pragma clang force_cuda_host_device end\n#line 1 \"entry points\"\n");
    putf(o, "extern \"C\" __attribute__((__constant__)) mc_cpu_constants mc_function_constants = {};\n");
    for (size_t k = 0; k < x->nkern; k++) {
        const kern *kn = &x->kerns[k];
        const tok *nt = &x->L.t[kn->name_tok];
        int nl = (int)nt->len;
        const char *nm = x->s + nt->start;
        if (kn->is_template) continue;
        int cl = kn->callee ? (int)strlen(kn->callee) : nl; /* the C++ function the entry point calls */
        const char *cn = kn->callee ? kn->callee : nm;
        int32_t param_of[MC_CPU_MAX_ARGS];
        uint32_t nslots = 0;
        for (uint32_t s = 0; s < MC_CPU_MAX_ARGS; s++) param_of[s] = -1;
        for (uint32_t p = 0; p < kn->nparam; p++) {
            const param *pa = &kn->params[p];
            if (pa->kind == P_BUFFER) {
                param_of[pa->slot] = (int32_t)p;
                nslots = MC__MAX(nslots, pa->slot + 1);
            } else if (pa->kind == P_TG && pa->slot != 0) {
                return fail_at(x, nt->line, "kernel '%.*s': [[threadgroup(%u)]]: the cuda device gives MSL kernels "
                                            "threadgroup slot 0 only", nl, nm, pa->slot);
            }
        }
        putf(o, "typedef mc::params<decltype(mc_user::%.*s)> mc_P_%.*s;\n", cl, cn, nl, nm);
        putf(o, "extern \"C\" __attribute__((__global__)) void %.*s(", nl, nm);
        for (uint32_t s = 0; s < nslots; s++) {
            if (param_of[s] >= 0)
                putf(o, "%smc::cuda_param<mc_P_%.*s::at<%d>::raw>::type s%u", s ? ", " : "", nl, nm, param_of[s], s);
            else
                putf(o, "%sunsigned long long s%u", s ? ", " : "", s);
        }
        putf(o, ")\n{\n    mc::ids t = mc::cuda_ids();\n    (void)t;\n    mc_user::%.*s(", cl, cn);
        for (uint32_t p = 0; p < kn->nparam; p++) {
            const param *pa = &kn->params[p];
            if (pa->kind == P_BUILTIN)
                putf(o, "%smc::attr<mc_P_%.*s::at<%u>::raw>(%s)", p ? ", " : "", nl, nm, p, pa->expr);
            else if (pa->kind == P_TG)
                putf(o, "%s(mc_P_%.*s::at<%u>::raw)mc::mc_threadgroup_memory", p ? ", " : "", nl, nm, p);
            else
                putf(o, "%ss%u", p ? ", " : "", pa->slot);
        }
        putf(o, ");\n}\n");
    }
    return true;
}

static bool is_fiber_token(const xlat *x, size_t i)
{
    const tok *t = &x->L.t[i];
    if (t->kind != T_IDENT) return false;
    const char *ts = x->s + t->start;
    return (t->len > 5 && (!strncmp(ts, "simd_", 5) || !strncmp(ts, "quad_", 5))) || is(x, i, "threadgroup_barrier") ||
           is(x, i, "simdgroup_barrier");
}

static bool same_ident(const xlat *x, size_t a, size_t b)
{
    return x->L.t[a].len == x->L.t[b].len && !memcmp(x->s + x->L.t[a].start, x->s + x->L.t[b].start, x->L.t[a].len);
}

/* Top-level functions: name token, body braces and whether the body, or
 * a function it calls (by name, transitively), uses a barrier or a
 * SIMD-group function. Code that cannot be attributed to a top-level
 * function (methods, namespaces) sets global. */
#define MAX_FNS 512
typedef struct fn_bodies {
    size_t n;
    bool global;
    size_t name[MAX_FNS], body_b[MAX_FNS], body_e[MAX_FNS];
    bool uses[MAX_FNS];
    bool coro[MAX_FNS]; /* a kernel whose threads run as coroutines */
    struct guard_plan *guard[MAX_FNS]; /* a kernel whose bounds test is hoisted, else NULL */
    struct region_plan *regions[MAX_FNS]; /* a kernel run as region loops, else NULL */
} fn_bodies;

static void find_functions(const xlat *x, fn_bodies *F)
{
    F->n = 0;
    F->global = false;
    for (size_t i = 0; i < x->L.n; i++) {
        if (!punct(x, i, '{')) continue;
        /* the matching brace */
        size_t e = i;
        int d = 0;
        for (; e < x->L.n; e++) {
            if (punct(x, e, '{')) d++;
            else if (punct(x, e, '}') && --d == 0) break;
        }
        bool any = false;
        for (size_t k = i; k < e && k < x->L.n; k++) any = any || is_fiber_token(x, k);
        size_t nm = 0;
        bool fn = false;
        if (i > 0 && punct(x, i - 1, ')')) {
            int pd = 0;
            size_t k = i - 1;
            for (;; k--) {
                if (punct(x, k, ')')) pd++;
                else if (punct(x, k, '(') && --pd == 0) break;
                if (k == 0) break;
            }
            if (k > 0 && punct(x, k, '(') && x->L.t[k - 1].kind == T_IDENT) {
                nm = k - 1;
                fn = true;
            }
        }
        if (fn && F->n < MAX_FNS) {
            F->name[F->n] = nm, F->body_b[F->n] = i, F->body_e[F->n] = e, F->uses[F->n] = any;
            F->coro[F->n] = false;
            F->guard[F->n] = NULL;
            F->regions[F->n] = NULL;
            F->n++;
        } else if (any) {
            F->global = true;
        }
        i = e; /* top-level bodies only */
    }
    for (bool changed = true; changed;) {
        changed = false;
        for (size_t f = 0; f < F->n; f++) {
            if (F->uses[f]) continue;
            for (size_t k = F->body_b[f]; k < F->body_e[f] && !F->uses[f]; k++) {
                if (x->L.t[k].kind != T_IDENT || !punct(x, k + 1, '(')) continue;
                for (size_t g = 0; g < F->n; g++)
                    if (F->uses[g] && same_ident(x, k, F->name[g])) {
                        F->uses[f] = changed = true;
                        break;
                    }
            }
        }
    }
}

/* Which kernels need every thread of a group at once: those that use a
 * barrier or a SIMD-group function, themselves or through a function they
 * call. The others run as a plain loop; the coroutine kernels (below) run
 * their threads as coroutines, the rest as fibers. */
static void mark_fiber_kernels(xlat *x)
{
    const fn_bodies *F = x->fns;
    for (size_t k = 0; k < x->nkern; k++) {
        kern *kn = &x->kerns[k];
        kn->fibers = F->global || F->n == MAX_FNS;
        kn->guard = -1;
        for (size_t f = 0; f < F->n && !kn->fibers; f++)
            if (F->uses[f] && same_ident(x, F->name[f], kn->name_tok)) kn->fibers = true;
        /* the body that was rewritten is this kernel's own (not a namesake's) */
        for (size_t f = 0; f < F->n && kn->fibers; f++)
            if (F->coro[f] && F->name[f] == kn->name_tok) kn->coro = true;
        for (size_t f = 0; f < F->n && kn->fibers; f++)
            if (F->regions[f] && F->name[f] == kn->name_tok) kn->regions = true;
        for (size_t f = 0; f < F->n && !kn->fibers; f++)
            if (F->guard[f] && F->name[f] == kn->name_tok) kn->guard = (int32_t)f;
    }
}

/* ---- coroutine kernels --------------------------------------------------------
 * Barriers need every thread of a group to stop at them; a fiber per thread
 * does that for any code, at the price of a stack per thread and a context
 * switch per thread per barrier. Where the barriers are calls in the
 * kernel's own body, the kernel is compiled as a C++ coroutine instead
 * (MC_CORO, MC_CO_BARRIER, MC_CO_RETURN: the header's section "threadgroups
 * as coroutines", which falls back to fibers where the compiler has no
 * coroutines): each barrier becomes a suspension point, and resuming a
 * thread costs a call.
 * The rewrite is by token, so it is limited to bodies where every
 * `return` is the kernel's and every barrier a plain call: no lambdas, no
 * local classes, no templates (their instantiations would need the same
 * return type), no SIMD-group functions (their lanes exchange values:
 * fibers), and no call to a function that uses a barrier or a SIMD-group
 * function. Everything else keeps fibers. */
static bool coro_eligible(const xlat *x, const fn_bodies *F, size_t f)
{
    size_t nm = F->name[f];
    if (F->global || F->uses[f] == false || nm < 2 || !is(x, nm - 1, "void") || !is(x, nm - 2, "kernel")) return false;
    if (nm >= 3 && punct(x, nm - 3, '>')) return false; /* a template */
    bool barrier = false;
    for (size_t k = F->body_b[f] + 1; k < F->body_e[f]; k++) {
        const tok *t = &x->L.t[k];
        if (t->kind == T_PUNCT && punct(x, k, '[') && !punct(x, k + 1, '[') && !punct(x, k - 1, '[')) {
            const tok *pt = &x->L.t[k - 1];
            if (!(pt->kind == T_IDENT || punct(x, k - 1, ']') || punct(x, k - 1, ')'))) return false; /* a lambda */
        }
        if (t->kind != T_IDENT) continue;
        if (is(x, k, "threadgroup_barrier")) {
            if (!punct(x, k + 1, '(')) return false;
            barrier = true;
            continue;
        }
        if (is_fiber_token(x, k) || is(x, k, "struct") || is(x, k, "class") || is(x, k, "union") ||
            (t->len > 3 && !strncmp(x->s + t->start, "co_", 3)))
            return false;
        if (!punct(x, k + 1, '(')) continue;
        for (size_t g = 0; g < F->n; g++)
            if (F->uses[g] && same_ident(x, k, F->name[g])) return false;
    }
    return barrier;
}

static void plan_coroutines(xlat *x)
{
    fn_bodies *F = x->fns;
    for (size_t f = 0; f < F->n && F->n < MAX_FNS; f++) F->coro[f] = coro_eligible(x, F, f);
}

/* The coroutine kernel whose body holds token i, or -1. */
static ptrdiff_t coro_body_of(const xlat *x, size_t i)
{
    const fn_bodies *F = x->fns;
    for (size_t f = 0; F && f < F->n; f++)
        if (F->coro[f] && i > F->body_b[f] && i < F->body_e[f]) return (ptrdiff_t)f;
    return -1;
}

/* A threadgroup variable of a coroutine kernel (`threadgroup T name[...];`
 * at token i, its name and semicolon): the thread-local variable gets
 * another name and `name` becomes a reference to it, which the frame
 * keeps, so a resumed thread reaches it without a thread-local lookup
 * (mc::opaque: else the compiler folds the reference back into one). */
static bool coro_tg_var(xlat *x, size_t i, size_t name, size_t semi)
{
    if (coro_body_of(x, i) < 0) return false;
    const tok *nt = &x->L.t[name];
    copy_to(x, nt->start);
    put(&x->out, "mc_tg_", 6);
    copy_to(x, x->L.t[semi].start + 1);
    putf(&x->out, " auto &%.*s = *mc::opaque(&mc_tg_%.*s);", (int)nt->len, x->s + nt->start, (int)nt->len,
         x->s + nt->start);
    return true;
}

/* Token i of a coroutine kernel, rewritten: its return type, its barriers
 * and its returns. True when replaced. */
static bool coro_rewrite(xlat *x, size_t i)
{
    const fn_bodies *F = x->fns;
    if (!F) return false;
    for (size_t f = 0; f < F->n; f++) {
        if (!F->coro[f]) continue;
        if (i == F->name[f] - 1) {
            replace_tok(x, i, "MC_CORO");
            return true;
        }
        if (i <= F->body_b[f] || i >= F->body_e[f]) continue;
        if (is(x, i, "threadgroup_barrier")) {
            replace_tok(x, i, "MC_CO_BARRIER");
            return true;
        }
        if (is(x, i, "return")) {
            replace_tok(x, i, "MC_CO_RETURN");
            return true;
        }
        return false;
    }
    return false;
}

/* ---- hoisted bounds tests -------------------------------------------------------
 * `if (i < n) y[i] = ...` is a conditional store, which baseline x86-64
 * cannot vectorise (no masked stores; AVX's are slower than scalar code on
 * AMD). Where a plain-loop kernel's first statement is `if (ID < E)` or
 * `if (ID >= E)`, ID its `uint [[thread_position_in_grid]]` and E an
 * expression of its `constant T&` arguments (names, members, integer
 * literals, arithmetic), the test is monotone in ID and the same for the
 * whole dispatch: a group whose last thread in x passes has every thread
 * pass. The kernel gets a last parameter `bool mc_full = false`, the test
 * becomes `(mc_full || (ID < E))` (or `(!mc_full && (ID >= E))`), and the
 * entry point evaluates E itself to run such groups with mc_full = true:
 * a loop without a branch. Other groups keep the test. */
#define GUARD_MAX_NAMES 8
typedef struct guard_plan {
    size_t close;      /* the ')' of the kernel's parameter list */
    size_t lp, rp;     /* the if's parentheses */
    bool ge;           /* `>=`: the test says who leaves */
    size_t e_b, e_e;   /* E: tokens [e_b, e_e) */
    uint32_t nnames;
    size_t name_tok[GUARD_MAX_NAMES];
    uint32_t name_param[GUARD_MAX_NAMES]; /* the parameter each name is */
} guard_plan;

/* Parameter p of the list (open, close): its tokens [b, e). */
static bool param_range(const xlat *x, size_t open, size_t close, uint32_t p, size_t *b, size_t *e)
{
    uint32_t k = 0;
    int d = 0;
    size_t start = open + 1;
    for (size_t i = open + 1; i <= close; i++) {
        if (punct(x, i, '(') || punct(x, i, '[') || punct(x, i, '<')) d++;
        else if ((punct(x, i, ')') || punct(x, i, ']') || punct(x, i, '>')) && d > 0) d--;
        else if (d == 0 && (punct(x, i, ',') || i == close)) {
            if (k == p) {
                *b = start, *e = i;
                return true;
            }
            k++;
            start = i + 1;
        }
    }
    return false;
}

/* The parameter's name: the identifier before its attribute. */
static size_t param_name(const xlat *x, size_t b, size_t e)
{
    for (size_t i = b + 1; i < e; i++)
        if (punct(x, i, '[') && punct(x, i + 1, '[') && x->L.t[i - 1].kind == T_IDENT) return i - 1;
    return 0;
}

static bool is_int_literal(const xlat *x, size_t i)
{
    const tok *t = &x->L.t[i];
    const char *s = x->s + t->start;
    bool hex = t->len > 2 && s[0] == '0' && (s[1] == 'x' || s[1] == 'X');
    for (uint32_t k = 0; k < t->len; k++) {
        char c = s[k];
        if (c == '.' || (!hex && strchr("eEhHfF", c)) || c == '\'') return false;
    }
    return true;
}

static guard_plan *guard_eligible(const xlat *x, const fn_bodies *F, size_t f)
{
    size_t nm = F->name[f], open = nm + 1, close = open;
    if (F->uses[f] || F->global || nm < 2 || !is(x, nm - 1, "void") || !is(x, nm - 2, "kernel")) return NULL;
    if (nm >= 3 && punct(x, nm - 3, '>')) return NULL; /* a template */
    for (int d = 0; close < x->L.n; close++) {
        if (punct(x, close, '(')) d++;
        else if (punct(x, close, ')') && --d == 0) break;
    }
    size_t b = F->body_b[f];
    if (close + 1 != b || !is(x, b + 1, "if") || !punct(x, b + 2, '(') || x->L.t[b + 3].kind != T_IDENT) return NULL;
    size_t lp = b + 2, id = b + 3, op = b + 4, e_b;
    bool ge;
    if (punct(x, op, '<') && !punct(x, op + 1, '<') && !punct(x, op + 1, '=')) ge = false, e_b = op + 1;
    else if (punct(x, op, '>') && punct(x, op + 1, '=') && x->L.t[op + 1].start == x->L.t[op].start + 1)
        ge = true, e_b = op + 2;
    else return NULL;
    guard_plan g = {.close = close, .lp = lp, .ge = ge, .e_b = e_b};
    int d = 0;
    size_t i = e_b;
    for (; i < F->body_e[f]; i++) {
        if (punct(x, i, '(')) d++;
        else if (punct(x, i, ')') && d-- == 0) break;
    }
    if (i >= F->body_e[f] || i == e_b) return NULL;
    g.rp = i;
    g.e_e = i;
    /* ID: a `uint NAME [[thread_position_in_grid]]` parameter */
    bool id_ok = false;
    size_t pb, pe;
    for (uint32_t p = 0; param_range(x, open, close, p, &pb, &pe); p++) {
        size_t pn = param_name(x, pb, pe);
        if (pn && same_ident(x, pn, id))
            id_ok = pe - pb >= 5 && pn == pb + 1 && is(x, pb, "uint") && is(x, pb + 4, "thread_position_in_grid");
    }
    if (!id_ok) return NULL;
    /* E: integer literals, arithmetic, members, and `constant T&` parameters */
    for (size_t k = e_b; k < g.e_e; k++) {
        const tok *t = &x->L.t[k];
        if (t->kind == T_NUMBER) {
            if (!is_int_literal(x, k)) return NULL;
            continue;
        }
        if (t->kind == T_PUNCT) {
            if (!strchr("+-*/%()&|^~.", x->s[t->start])) return NULL;
            continue;
        }
        if (t->kind != T_IDENT) return NULL;
        if (punct(x, k - 1, '.')) continue; /* a member */
        if (punct(x, k + 1, '(') || g.nnames == GUARD_MAX_NAMES) return NULL;
        bool found = false;
        for (uint32_t p = 0; !found && param_range(x, open, close, p, &pb, &pe); p++) {
            size_t pn = param_name(x, pb, pe);
            if (!pn || !same_ident(x, pn, k)) continue;
            if (!is(x, pb, "constant") || !punct(x, pn - 1, '&')) return NULL;
            for (size_t q = pb; q < pn; q++)
                if (punct(x, q, '*')) return NULL;
            g.name_tok[g.nnames] = k;
            g.name_param[g.nnames++] = p;
            found = true;
        }
        if (!found) return NULL;
    }
    guard_plan *out = malloc(sizeof *out);
    if (out) *out = g;
    return out;
}

static void plan_guards(xlat *x)
{
    fn_bodies *F = x->fns;
    for (size_t f = 0; f < F->n && F->n < MAX_FNS; f++) F->guard[f] = guard_eligible(x, F, f);
}

static void free_guards(fn_bodies *F)
{
    for (size_t f = 0; F && f < F->n; f++) free(F->guard[f]);
}

/* The parentheses of a hoisted test, and the end of its kernel's
 * parameter list. True when replaced. */
static bool guard_rewrite(xlat *x, size_t i)
{
    const fn_bodies *F = x->fns;
    for (size_t f = 0; F && f < F->n; f++) {
        const guard_plan *g = F->guard[f];
        if (!g) continue;
        if (i == g->close) replace_tok(x, i, ", bool mc_full = false)");
        else if (i == g->lp) replace_tok(x, i, g->ge ? "(!mc_full && (" : "(mc_full || (");
        else if (i == g->rp) replace_tok(x, i, "))");
        else continue;
        return true;
    }
    return false;
}

static void emit_guard_test(xlat *x, const kern *kn)
{
    sbuf *o = &x->out;
    const guard_plan *g = x->fns->guard[kn->guard];
    putf(o, "    auto pass = [&](uint mc_id) __attribute__((always_inline)) -> bool {\n");
    for (uint32_t k = 0; k < g->nnames; k++) {
        const tok *t = &x->L.t[g->name_tok[k]];
        putf(o, "        auto &&%.*s = a%u;\n        (void)%.*s;\n", (int)t->len, x->s + t->start, g->name_param[k],
             (int)t->len, x->s + t->start);
    }
    putf(o, "        return %smc_id %s (", g->ge ? "!(" : "", g->ge ? ">=" : "<");
    for (size_t k = g->e_b; k < g->e_e; k++) {
        const tok *t = &x->L.t[k];
        putf(o, "%s%.*s", k > g->e_b ? " " : "", (int)t->len, x->s + t->start);
    }
    putf(o, ")%s;\n    };\n", g->ge ? ")" : "");
}

/* NAME__mc_rows(ctx, count): the plain-loop kernel over count groups along
 * x, row by row across them (mc::run_rows); the CPU device calls it for the
 * groups of a chunk that share a row of groups (cpu_exec.c). */
static void emit_rows_entry(xlat *x, const kern *kn)
{
    sbuf *o = &x->out;
    const tok *nt = &x->L.t[kn->name_tok];
    int nl = (int)nt->len;
    const char *nm = x->s + nt->start;
    putf(o, "extern \"C\" MC_KERNEL_EXPORT void %.*s__mc_rows(const mc_cpu_ctx *ctx, uint32_t count)\n{\n", nl, nm);
    putf(o, "    typedef mc::params<decltype(mc_user::%.*s)> P;\n    mc::fc_enter(ctx);\n", nl, nm);
    for (uint32_t p = 0; p < kn->nparam; p++) {
        const param *pa = &kn->params[p];
        if (pa->kind == P_BUFFER)
            putf(o, "    mc::arg_store<P::at<%u>::raw>::type a%u = mc::buffer_arg<P::at<%u>::raw>(ctx, %u);\n", p, p, p,
                 pa->slot);
        else if (pa->kind == P_TG)
            putf(o, "    P::at<%u>::raw a%u = mc::tg_arg<P::at<%u>::raw>(ctx, %u);\n", p, p, p, pa->slot);
    }
    putf(o, "    auto body = [&](const mc::ids &t) __attribute__((always_inline)) {\n        (void)t;\n");
    putf(o, "        mc_user::%.*s(", nl, nm);
    for (uint32_t p = 0; p < kn->nparam; p++) {
        const param *pa = &kn->params[p];
        if (pa->kind == P_BUILTIN) putf(o, "%smc::attr<P::at<%u>::raw>(%s)", p ? ", " : "", p, pa->expr);
        else putf(o, "%sa%u", p ? ", " : "", p);
    }
    putf(o, ");\n    };\n    mc::run_rows(ctx, count, body);\n}\n");
}

static void emit_wrappers(xlat *x)
{
    sbuf *o = &x->out;
    /* a coroutine kernel called as a plain function (mc::coro is nodiscard)
     * would leave its threads at their first barrier: an error, not a warning */
    putf(o, "\n} /* namespace mc_user */\n#pragma clang diagnostic error \"-Wunused-result\"\n");
    putf(o, "#line 1 \"entry points\"\n");
    for (size_t k = 0; k < x->nkern; k++) {
        const kern *kn = &x->kerns[k];
        const tok *nt = &x->L.t[kn->name_tok];
        int nl = (int)nt->len;
        const char *nm = x->s + nt->start;
        if (kn->is_template) continue;
        int cl = kn->callee ? (int)strlen(kn->callee) : nl; /* the C++ function the entry point calls */
        const char *cn = kn->callee ? kn->callee : nm;
        int32_t argc = 0;
        for (uint32_t p = 0; p < kn->nparam; p++)
            if (kn->params[p].kind == P_BUFFER) argc = (int32_t)MC__MAX((uint32_t)argc, kn->params[p].slot + 1);
        putf(o, "extern \"C\" MC_KERNEL_EXPORT const int32_t %.*s__mc_argc = %d;\n", nl, nm, argc);
        putf(o, "extern \"C\" MC_KERNEL_EXPORT void %.*s(const mc_cpu_ctx *ctx)\n{\n", nl, nm);
        putf(o, "    typedef mc::params<decltype(mc_user::%.*s)> P;\n    mc::fc_enter(ctx);\n", cl, cn);
        for (uint32_t p = 0; p < kn->nparam; p++) {
            const param *pa = &kn->params[p];
            if (pa->kind == P_BUFFER)
                putf(o, "    mc::arg_store<P::at<%u>::raw>::type a%u = mc::buffer_arg<P::at<%u>::raw>(ctx, %u);\n", p, p,
                     p, pa->slot);
            else if (pa->kind == P_TG)
                putf(o, "    P::at<%u>::raw a%u = mc::tg_arg<P::at<%u>::raw>(ctx, %u);\n", p, p, p, pa->slot);
        }
        for (int full = 0; full <= (kn->guard >= 0); full++) {
            putf(o, "    auto body%s = [&](const mc::ids &t) __attribute__((always_inline)) {\n        (void)t;\n",
                 full ? "_full" : "");
            putf(o, "        %smc_user::%.*s(", kn->coro ? "return " : "", cl, cn);
            for (uint32_t p = 0; p < kn->nparam; p++) {
                const param *pa = &kn->params[p];
                if (pa->kind == P_BUILTIN) putf(o, "%smc::attr<P::at<%u>::raw>(%s)", p ? ", " : "", p, pa->expr);
                else putf(o, "%sa%u", p ? ", " : "", p);
            }
            putf(o, "%s);\n    };\n", kn->guard < 0 ? "" : full ? ", true" : ", false");
        }
        if (kn->guard >= 0) {
            emit_guard_test(x, kn);
            putf(o, "    mc::run_loop_guarded(ctx, body, body_full, pass);\n}\n");
        } else {
            putf(o, "    mc::%s(ctx, body);\n}\n",
                 kn->regions ? "run_regions" : kn->coro ? "run_group_coro" : kn->fibers ? "run_group" : "run_loop");
        }
        if (!kn->fibers && kn->guard < 0 && !kn->callee) emit_rows_entry(x, kn); /* rows call the kernel by its own name */
    }
}

#define MC__MSL_REGIONS_INLINE
#include "backends/cpu/cpu_msl_regions.c" /* until the front end is split into files */

mc_status mc__cpu_msl_translate(const char *source, size_t len, char **cpp, size_t *cpp_len, char **log)
{
    return mc__msl_translate(source, len, MC__MSL_CPU, cpp, cpp_len, log);
}

mc_status mc__msl_translate(const char *source, size_t len, mc__msl_target target, char **cpp, size_t *cpp_len,
                            char **log)
{
    if (!source || !cpp || !cpp_len) return mc__fail(MC_ERR_INVALID_ARGUMENT, "no source or no result pointer");
    *cpp = NULL;
    *cpp_len = 0;
    if (log) *log = NULL;
    xlat x;
    memset(&x, 0, sizeof x);
    x.s = source;
    x.n = len;
    x.target = target;
    if (!lex(source, len, &x.L)) {
        free(x.L.t);
        return mc__fail(MC_ERR_NO_MEMORY, "out of host memory");
    }
    /* CUDA: the user's helpers are host and device like the header's */
    static const char head[] = "namespace mc_user {\n#line 1 \"program_source\"\n";
    static const char cuda_head[] = "#pragma clang force_cuda_host_device begin\nnamespace mc_user {\n#line 1 \"program_source\"\n";
    if (target == MC__MSL_CUDA) put(&x.out, cuda_head, sizeof cuda_head - 1);
    else put(&x.out, head, sizeof head - 1);
    fn_bodies *fns = mc__calloc(1, sizeof *fns);
    if (!fns) {
        free(x.L.t);
        return mc__fail(MC_ERR_NO_MEMORY, "out of host memory");
    }
    find_functions(&x, fns);
    x.fns = fns;
    if (target == MC__MSL_CPU) {
        plan_coroutines(&x);
        plan_regions(&x);
        plan_guards(&x);
    }
    x.tmpl_end = SIZE_MAX;
    bool ok = translate_tokens(&x) && add_instances(&x);
    if (ok) {
        copy_to(&x, len);
        if (!x.nkern) ok = fail_at(&x, 1, "no kernel function ('kernel void name(...)') in the source");
    }
    if (ok) mark_fiber_kernels(&x);
    if (ok) inherit_template_fibers(&x);
    if (ok && target == MC__MSL_CUDA) ok = emit_cuda_wrappers(&x);
    else if (ok) emit_wrappers(&x);
    free(x.L.t);
    for (size_t k = 0; k < x.nkern; k++) free(x.kerns[k].callee);
    for (size_t k = 0; k < x.ninst; k++) free(x.insts[k].callee);
    free(x.kerns);
    free(x.insts);
    free_guards(fns);
    free_regions(fns);
    free(fns);
    if (!ok) {
        free(x.out.p);
        mc_status st = mc__fail(MC_ERR_COMPILE, "%s", x.error ? x.error : "out of host memory");
        if (log && x.error) *log = mc__asprintf("%s\n", x.error);
        free(x.error);
        return st;
    }
    if (x.out.oom) {
        free(x.out.p);
        return mc__fail(MC_ERR_NO_MEMORY, "out of host memory");
    }
    *cpp = x.out.p;
    *cpp_len = x.out.n;
    return MC_OK;
}
