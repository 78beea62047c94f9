/*
 * The MSL front end's private header: the tokens, the output buffer and the
 * translation's state that its parts share. The parts, in the order a
 * source goes through them:
 *
 *   cpu_msl.c          the tokenizer, the lexical rewrites of the source
 *                      (translate_tokens) and mc__msl_translate, which runs
 *                      the others
 *   cpu_msl_kernels.c  what the subset holds (built-in attributes, refused
 *                      features), kernel signatures and the attribute of
 *                      each parameter, kernel templates and their
 *                      [[host_name]] instantiations
 *   cpu_msl_paths.c    how each kernel runs on the CPU device (plain loop,
 *                      coroutines or fibers; hoisted bounds tests) and its
 *                      C entry points
 *   cpu_msl_cuda.c     the CUDA form's entry points
 *   cpu_msl_macros.c   the source's #define bodies and #includes: what a
 *                      macro hides from the token scans above
 */
#ifndef MC_CPU_MSL_H
#define MC_CPU_MSL_H

#include "backends/cpu/cpu.h"
#include "msl/msl.h"

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

/* ---- output ------------------------------------------------------------------ */

typedef struct sbuf {
    char *p;
    size_t n, cap;
    bool oom;
} sbuf;

static inline void put(sbuf *b, const char *s, size_t n)
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

static inline void putf(sbuf *b, const char *fmt, ...)
{
    char tmp[1024];
    va_list ap;
    va_start(ap, fmt);
    int k = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (k > 0) put(b, tmp, MC__MIN((size_t)k, sizeof tmp - 1));
}

/* ---- the translation's state --------------------------------------------------- */

#define MAX_PARAMS 64

typedef struct param {
    enum { P_BUFFER, P_TG, P_BUILTIN } kind;
    uint32_t slot;
    const char *expr;
} param;

typedef struct kern {
    uint32_t name_tok;
    bool fibers;   /* it or a function it calls uses barriers or SIMD-group functions */
    bool coro;     /* its threads run as coroutines (mc__msl_plan_coroutines) */
    bool regions;  /* it runs as region loops (mc__msl_plan_regions) */
    int32_t guard; /* its function in fn_bodies when its bounds test is hoisted (mc__msl_plan_guards), else -1 */
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
    struct instance {
        uint32_t tmpl, host_start, host_len, line;
        char *callee;
    } * insts;
    size_t ninst, icap;
    bool fibers;
    mc__msl_target target;
    struct fn_bodies *fns; /* top-level functions (mc__msl_find_functions) */
    /* function constants: index, the type's text in the source, the name
     * token, and N for bool2/3/4 (else 0) */
    struct fc_decl {
        uint32_t idx, type_start, type_len, name_tok, bools;
    } * fcs;
    size_t nfc, fccap;
    /* macros (cpu_msl_macros.c): every #define's body, lexed into M */
    lexed M;
    struct msl_macro *macros;
    size_t nmacro, mcap;
    bool unread_include; /* an #include the front end does not read */
} xlat;

static inline bool is(const xlat *x, size_t i, const char *word)
{
    if (i >= x->L.n) return false;
    const tok *t = &x->L.t[i];
    size_t k = strlen(word);
    return t->len == k && !memcmp(x->s + t->start, word, k);
}

static inline bool punct(const xlat *x, size_t i, char c)
{
    return i < x->L.n && x->L.t[i].kind == T_PUNCT && x->s[x->L.t[i].start] == c;
}

static inline bool fail_at(xlat *x, uint32_t line, const char *fmt, ...)
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
static inline void replace_tok(xlat *x, size_t i, const char *text)
{
    const tok *t = &x->L.t[i];
    put(&x->out, x->s + x->pos, t->start - x->pos);
    put(&x->out, text, strlen(text));
    x->pos = t->start + t->len;
}

static inline void copy_to(xlat *x, size_t off)
{
    put(&x->out, x->s + x->pos, off - x->pos);
    x->pos = off;
}

/* a barrier or a SIMD-group function by name: the thread cannot run alone */
static inline bool is_fiber_name(const char *ts, size_t len)
{
    return (len > 5 && (!strncmp(ts, "simd_", 5) || !strncmp(ts, "quad_", 5))) ||
           (len == 19 && !memcmp(ts, "threadgroup_barrier", 19)) || (len == 17 && !memcmp(ts, "simdgroup_barrier", 17));
}

/* true when identifier token i names a macro that expands, through other
 * macros or functions, to a barrier or a SIMD-group function
 * (cpu_msl_macros.c) */
bool mc__msl_names_group_macro(const xlat *x, size_t i);

/* token i is a barrier or a SIMD-group function, or a macro that holds one */
static inline bool is_fiber_token(const xlat *x, size_t i)
{
    const tok *t = &x->L.t[i];
    if (t->kind != T_IDENT) return false;
    return is_fiber_name(x->s + t->start, t->len) || mc__msl_names_group_macro(x, i);
}

static inline bool same_ident(const xlat *x, size_t a, size_t b)
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
    /* braces at file scope that are not a function's body (namespaces,
     * structs with methods): what they use counts for every kernel */
    size_t nother;
    size_t other_b[MAX_FNS], other_e[MAX_FNS];
    bool uses[MAX_FNS];
    bool coro[MAX_FNS];                /* a kernel whose threads run as coroutines */
    struct guard_plan *guard[MAX_FNS]; /* a kernel whose bounds test is hoisted, else NULL */
    /* a kernel run as region loops (cpu_msl_regions.c), else NULL */
    struct region_plan *regions[MAX_FNS];
} fn_bodies;

/* ---- cpu_msl.c ---- */
bool mc__msl_push_tok(lexed *L, uint8_t kind, size_t start, size_t len, uint32_t line);
/* token i names a vector type (float4, packed_half3, ...) */
bool mc__msl_is_vector_type(const xlat *x, size_t i);

/* ---- cpu_msl_kernels.c ---- */
/* [[ at i: the attribute's name token and the index past ]]; false if not one */
bool mc__msl_attr_at(const xlat *x, size_t i, size_t *name, size_t *arg, size_t *end);
bool mc__msl_tok_uint(const xlat *x, size_t i, uint32_t *v);
/* true (and x->error set) when attribute name token an is a refused feature's */
bool mc__msl_attr_refused(xlat *x, size_t an);
bool mc__msl_refuse_features(xlat *x);
bool mc__msl_parse_kernel(xlat *x, size_t name_tok, size_t open, size_t *close);
/* the ids expression of built-in attribute name token an (from mc::ids t), or NULL */
const char *mc__msl_builtin_expr(const xlat *x, size_t an);
void mc__msl_mark_template_kernel(xlat *x, size_t start);
bool mc__msl_template_at(xlat *x, size_t *i);
bool mc__msl_add_instances(xlat *x);
void mc__msl_inherit_template_fibers(xlat *x);

/* ---- cpu_msl_paths.c ---- */
void mc__msl_find_functions(xlat *x, fn_bodies *F);
void mc__msl_mark_fiber_kernels(xlat *x);
void mc__msl_plan_coroutines(xlat *x);
void mc__msl_plan_guards(xlat *x);
void mc__msl_free_guards(fn_bodies *F);
/* token rewrites of the planned kernels, called by translate_tokens: true
 * when the token was replaced */
bool mc__msl_coro_rewrite(xlat *x, size_t i);
bool mc__msl_guard_rewrite(xlat *x, size_t i);
bool mc__msl_coro_tg_var(xlat *x, size_t i, size_t name, size_t semi);
/* a threadgroup variable renamed, with `name` a reference to it (coroutine
 * and region-loop kernels alike) */
void mc__msl_emit_tg_reference(xlat *x, size_t name, size_t semi);
void mc__msl_emit_cpu_entries(xlat *x);

/* ---- cpu_msl_regions.c ---- */
/* which coroutine kernels run as region loops instead (after plan_coroutines) */
void mc__msl_plan_regions(xlat *x);
void mc__msl_free_regions(fn_bodies *F);
/* the region loops' edits at token *i, called by translate_tokens: true
 * when tokens up to *i were consumed */
bool mc__msl_regions_rewrite(xlat *x, size_t *i);
/* a top-level threadgroup variable of a region kernel, reached through a
 * reference taken once per group: true when written */
bool mc__msl_regions_tg_var(xlat *x, size_t i, size_t name, size_t semi);

/* ---- cpu_msl_macros.c ---- */
/* Records every #define (x->macros, bodies lexed into x->M) and notes an
 * #include the front end does not read; refuses a used macro that hides
 * what the front end rewrites (threadgroup variables, attributes, kernels,
 * refused features): false and x->error set. */
bool mc__msl_read_macros(xlat *x);
/* Marks the macros that hold a barrier or a SIMD-group function, directly,
 * through other macros or through the functions of F (whose uses this
 * extends): a fixpoint over both. */
void mc__msl_mark_group_macros(xlat *x, fn_bodies *F);
/* identifier token i names a macro whose body holds `return` */
bool mc__msl_names_returning_macro(const xlat *x, size_t i);
/* identifier token i is named in some macro's body */
bool mc__msl_named_in_macro(const xlat *x, size_t i);
/* the C++ rewrites of translate_tokens inside the body of the #define at
 * PP token i (vector constructors, half literals) */
void mc__msl_rewrite_macro_body(xlat *x, size_t i);
void mc__msl_free_macros(xlat *x);
/* lexes s[b, e) (a #define's body, lines from line) into L; a backslash
 * before a newline continues the line */
bool mc__msl_lex_range(const char *s, size_t b, size_t e, uint32_t line, lexed *L);
/* ---- cpu_msl_kernels.c, for macros ---- */
/* the feature identifier token i names outside the compute subset, or NULL */
const char *mc__msl_refused_feature(const xlat *x, size_t i);

/* ---- cpu_msl_cuda.c ---- */
bool mc__msl_emit_cuda_entries(xlat *x);

#endif
