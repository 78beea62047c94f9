/*
 * DOC: CPU device: MSL kernels cut at their barriers into region loops
 *
 * A kernel with threadgroup barriers needs every thread of its group to
 * reach a barrier before any passes it. The coroutine and fiber paths run
 * each thread up to the barrier and switch to the next; PoCL instead cuts
 * the kernel at its barriers into regions and runs each region as one
 * loop over the group's threads, so a barrier costs nothing and the
 * compiler can vectorise a region. This pass does the same by token, for
 * the kernels whose shape it can prove right, and leaves every other
 * kernel to the coroutine path (then fibers):
 *
 *   - the kernel is coroutine-eligible (its barriers are calls in its own
 *     body; no SIMD-group function, lambda, local type or template);
 *   - every barrier is a statement at the top level of the body, or at the
 *     top level of the body of a `for`/`while` loop that is itself at the
 *     top level; MSL makes every thread reach each barrier, so such a loop
 *     runs the same iterations in every thread, and its header is
 *     evaluated once for the group. The header may read only what is the
 *     same for every thread (the loop's own variable, `constant T&`
 *     arguments, group-wide attributes, threadgroup memory, constants) and
 *     may write only the loop's variable, which the body cannot write;
 *   - the locals that live across a barrier (declared at the top level
 *     before it, used after it) are plain data (scalars, vectors, pointers
 *     to device, constant or threadgroup memory, arrays of them), declared
 *     without `auto`, `const`, references or brace initialisers: they move
 *     into a per-thread frame (an array per group kept per worker), and
 *     each region binds the running thread's frame by reference;
 *   - a `return` ends its thread (a per-thread flag: later regions skip
 *     it, as the other paths' barriers wait only for live threads), and is
 *     allowed anywhere outside a barrier loop; no `goto`, no `break` or
 *     `continue` in a barrier loop's body, no preprocessor lines in the
 *     body and no macro used there but a number.
 *
 * The kernel then runs once per group (mc::run_regions, in the header's
 * section "threadgroups as region loops") with thread 0's ids; each region
 * becomes `mc::region<R>(mc_rg, [&](const mc::ids &mc_u, uint32_t mc_t) {
 * ids of t; frame of t; region code })`; the top-level threadgroup
 * variables are references taken once per group, as the coroutines have
 * them. The rewrite keeps every line where it was, so clang's errors still
 * point at the user's text. Where no barrier stands, the threads still meet
 * (around a barrier loop, between its iterations): more order than MSL
 * asks, the same results for a kernel without data races.
 *
 * MC_MSL_REGIONS=0 turns the path off (every such kernel then runs as
 * coroutines); it is part of the compiler's identity in the pipeline cache.
 */
#include "backends/cpu/cpu_msl.h"

#include <ctype.h>

/* ---- the plan: edits at tokens ---------------------------------------------------- */

enum rg_op {
    RG_INSERT, /* text before token tok, which is then translated as usual */
    RG_DELETE, /* tokens [tok, end) go, their line breaks kept, then text */
    RG_REPLACE /* token tok becomes text */
};

typedef struct rg_edit {
    uint32_t tok, end, seq;
    uint8_t op;
    char *text;
} rg_edit;

#define RG_MAX_TG 64

typedef struct region_plan {
    rg_edit *e;
    size_t n, cap, next; /* next: the first edit not yet applied */
    bool oom;
    size_t tg[RG_MAX_TG]; /* the first tokens of the body's top-level threadgroup variables */
    size_t ntg;
} region_plan;

static void rg_add(region_plan *p, uint8_t op, size_t at, size_t end, char *text)
{
    if (p->oom || !text) {
        p->oom = true;
        free(text);
        return;
    }
    if (p->n == p->cap) {
        size_t ncap = p->cap ? p->cap * 2 : 32;
        rg_edit *ne = realloc(p->e, ncap * sizeof *ne);
        if (!ne) {
            p->oom = true;
            free(text);
            return;
        }
        p->e = ne;
        p->cap = ncap;
    }
    p->e[p->n] = (rg_edit){(uint32_t)at, (uint32_t)end, (uint32_t)p->n, op, text};
    p->n++;
}

static char *rg_strdup(const char *s)
{
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    if (d) memcpy(d, s, n);
    return d;
}

static int rg_cmp(const void *a, const void *b)
{
    const rg_edit *x = a, *y = b;
    if (x->tok != y->tok) return x->tok < y->tok ? -1 : 1;
    return x->seq < y->seq ? -1 : x->seq > y->seq;
}

static void free_region_plan(region_plan *p)
{
    if (!p) return;
    for (size_t k = 0; k < p->n; k++) free(p->e[k].text);
    free(p->e);
    free(p);
}

/* ---- what the pass reads ------------------------------------------------------------- */

/* The token after the bracket opened at i ('(', '[' or '{'), or x->L.n. */
static size_t rg_past(const xlat *x, size_t i)
{
    int d = 0;
    for (size_t k = i; k < x->L.n; k++) {
        if (punct(x, k, '(') || punct(x, k, '[') || punct(x, k, '{')) d++;
        else if ((punct(x, k, ')') || punct(x, k, ']') || punct(x, k, '}')) && --d == 0) return k + 1;
    }
    return x->L.n;
}

/* Tokens a and b are one operator (`+=`, `++`, `<<`): adjacent in the text. */
static bool rg_joined(const xlat *x, size_t a, size_t b)
{
    return b < x->L.n && x->L.t[a].start + x->L.t[a].len == x->L.t[b].start;
}

/* The statement at i ends before the returned token (within [i, lim)), or
 * 0 when it cannot be told. */
static size_t rg_stmt_end(const xlat *x, size_t i, size_t lim)
{
    if (i >= lim) return 0;
    if (punct(x, i, '{')) return rg_past(x, i);
    if (punct(x, i, ';')) return i + 1;
    if (is(x, i, "if") || is(x, i, "for") || is(x, i, "while") || is(x, i, "switch")) {
        if (!punct(x, i + 1, '(')) return 0;
        size_t b = rg_past(x, i + 1);
        size_t e = rg_stmt_end(x, b, lim);
        if (!e) return 0;
        if (is(x, i, "if") && e < lim && is(x, e, "else")) return rg_stmt_end(x, e + 1, lim);
        return e;
    }
    if (is(x, i, "do")) {
        size_t e = rg_stmt_end(x, i + 1, lim);
        if (!e || !is(x, e, "while") || !punct(x, e + 1, '(')) return 0;
        size_t c = rg_past(x, e + 1);
        return punct(x, c, ';') ? c + 1 : 0;
    }
    if (is(x, i, "else")) return 0;
    for (size_t k = i; k < lim;) {
        if (punct(x, k, ';')) return k + 1;
        if (punct(x, k, '(') || punct(x, k, '[') || punct(x, k, '{')) k = rg_past(x, k);
        else if (punct(x, k, '}') || punct(x, k, ')') || punct(x, k, ']')) return 0;
        else k++;
    }
    return 0;
}

static bool rg_has(const xlat *x, size_t b, size_t e, const char *word)
{
    for (size_t k = b; k < e; k++)
        if (is(x, k, word)) return true;
    return false;
}

/* a statement that is exactly `threadgroup_barrier(...);` */
static bool rg_is_barrier(const xlat *x, size_t b, size_t e)
{
    return is(x, b, "threadgroup_barrier") && punct(x, b + 1, '(') && rg_past(x, b + 1) == e - 1 &&
           punct(x, e - 1, ';');
}

static const char *const rg_scalar_words[] = {"bool",     "char",    "uchar",     "short",   "ushort",  "int",
                                              "uint",     "long",    "ulong",     "float",   "half",    "unsigned",
                                              "signed",   "size_t",  "ptrdiff_t", "int8_t",  "uint8_t", "int16_t",
                                              "uint16_t", "int32_t", "uint32_t",  "int64_t", "uint64_t"};

static bool rg_is_scalar_word(const xlat *x, size_t i)
{
    for (size_t k = 0; k < MC__ARRAY_LEN(rg_scalar_words); k++)
        if (is(x, i, rg_scalar_words[k])) return true;
    return false;
}

/* floatCxR and halfCxR: matrices are plain data too */
static bool rg_is_matrix_word(const xlat *x, size_t i)
{
    const tok *t = &x->L.t[i];
    const char *s = x->s + t->start;
    if (t->kind != T_IDENT) return false;
    size_t b = t->len == 8 && !memcmp(s, "float", 5) ? 5 : t->len == 7 && !memcmp(s, "half", 4) ? 4 : 0;
    return b && s[b] >= '2' && s[b] <= '4' && s[b + 1] == 'x' && s[b + 2] >= '2' && s[b + 2] <= '4';
}

/* float4, packed_uint3, ...: a scalar word (or packed_ and one) and 2 to 4 */
static bool rg_is_vector_word(const xlat *x, size_t i)
{
    const tok *t = &x->L.t[i];
    const char *s = x->s + t->start;
    if (t->kind != T_IDENT || t->len < 2 || s[t->len - 1] < '2' || s[t->len - 1] > '4') return false;
    size_t skip = t->len > 7 && !memcmp(s, "packed_", 7) ? 7 : 0;
    for (size_t k = 0; k < MC__ARRAY_LEN(rg_scalar_words); k++)
        if (strlen(rg_scalar_words[k]) == t->len - 1 - skip && !memcmp(s + skip, rg_scalar_words[k], t->len - 1 - skip))
            return true;
    return false;
}

static bool rg_is_type_word(const xlat *x, size_t i)
{
    return rg_is_scalar_word(x, i) || rg_is_vector_word(x, i) || rg_is_matrix_word(x, i);
}

/* Parameter p of the list (open, close): its tokens [b, e); false past the last. */
static bool rg_param_range(const xlat *x, size_t open, size_t close, uint32_t p, size_t *b, size_t *e)
{
    uint32_t k = 0;
    size_t start = open + 1;
    for (size_t i = open + 1; i <= close;) {
        if (i < close && (punct(x, i, '(') || punct(x, i, '['))) {
            i = rg_past(x, i);
            continue;
        }
        if (i == close || punct(x, i, ',')) {
            if (k++ == p) {
                *b = start, *e = i;
                return true;
            }
            start = i + 1;
        }
        i++;
    }
    return false;
}

/* ---- the kernel's shape ----------------------------------------------------------------- */

#define RG_MAX_NAMES 256
#define RG_MAX_ITEMS 256

typedef struct rg_local {
    size_t name;           /* its name token */
    size_t stmt_b, stmt_e; /* its declaration statement */
    size_t spec_b, spec_e; /* the specifiers [b, e) */
    size_t decl_b, decl_e; /* its declarator, up to its initialiser's end */
    size_t init;           /* the '=' of its initialiser, or 0 */
    int region;            /* where it is declared */
    bool frame;            /* lives across a barrier */
} rg_local;

enum rg_item_kind { I_CODE, I_BARRIER, I_LOOP, I_GROUP };

typedef struct rg_item {
    uint8_t kind;
    size_t b, e;           /* the statement */
    int region;            /* I_CODE: its region */
    int loop;              /* I_CODE and I_BARRIER in a loop's body: the loop item, else -1 */
    size_t body_b, body_e; /* I_LOOP: the statements of its body */
    size_t var;            /* I_LOOP: the `for` variable's name token, or 0 */
    size_t hdr_e;          /* I_LOOP: the ')' closing its header */
} rg_item;

typedef struct rg_region {
    size_t first, last_end; /* tokens [first, last_end) */
    int loop;               /* the loop item it is in, or -1 */
    bool returns;
} rg_region;

typedef struct rg_shape {
    const fn_bodies *F;
    size_t f, body_b, body_e, open, close;
    rg_item items[RG_MAX_ITEMS];
    size_t nitems;
    rg_region regions[RG_MAX_ITEMS];
    size_t nregions;
    rg_local locals[RG_MAX_NAMES];
    size_t nlocals;
    size_t uniform[RG_MAX_NAMES]; /* names the same for every thread */
    size_t nuniform;
    size_t builtin[MAX_PARAMS]; /* the kernel's attribute parameters' names */
    const char *builtin_expr[MAX_PARAMS];
    size_t nbuiltin;
    size_t params[MAX_PARAMS];
    size_t nparams;
    bool returns;
} rg_shape;

static bool rg_name_in(const xlat *x, const size_t *names, size_t n, size_t i)
{
    for (size_t k = 0; k < n; k++)
        if (same_ident(x, names[k], i)) return true;
    return false;
}

static bool rg_add_uniform(rg_shape *S, size_t name)
{
    if (S->nuniform == RG_MAX_NAMES) return false;
    S->uniform[S->nuniform++] = name;
    return true;
}

/* Attributes whose value is the same for every thread of a group. */
static const char *const rg_uniform_attrs[] = {"threads_per_threadgroup",    "threadgroup_position_in_grid",
                                               "threadgroups_per_grid",      "threads_per_grid",
                                               "simdgroups_per_threadgroup", "thread_execution_width",
                                               "threads_per_simdgroup",      "quadgroups_per_threadgroup"};

/* The kernel's parameters: attribute ones (bound per thread in each
 * region) and the uniform ones a loop header may read. */
static bool rg_params(const xlat *x, rg_shape *S)
{
    size_t pb, pe;
    for (uint32_t p = 0; rg_param_range(x, S->open, S->close, p, &pb, &pe); p++) {
        if (pb == pe) continue;    /* `()` */
        size_t pn = 0, an, aa, ae; /* the name: the identifier before the attribute */
        for (size_t k = pb + 1; k < pe && !pn; k++)
            if (punct(x, k, '[') && punct(x, k + 1, '[') && x->L.t[k - 1].kind == T_IDENT) pn = k - 1;
        if (!pn || !mc__msl_attr_at(x, pn + 1, &an, &aa, &ae) || S->nparams == MAX_PARAMS) return false;
        S->params[S->nparams++] = pn;
        if (is(x, an, "buffer")) {
            /* `constant T &name`: a value for the whole dispatch */
            bool ref = is(x, pb, "constant") && punct(x, pn - 1, '&');
            for (size_t q = pb; q < pn; q++)
                if (punct(x, q, '*')) ref = false;
            if (ref && !rg_add_uniform(S, pn)) return false;
            continue;
        }
        if (is(x, an, "threadgroup")) {
            if (!rg_add_uniform(S, pn)) return false;
            continue;
        }
        const char *expr = mc__msl_builtin_expr(x, an);
        if (!expr) return false;
        for (size_t q = pb; q < pn; q++)
            if (!(x->L.t[q].kind == T_IDENT || punct(x, q, ':'))) return false; /* a reference: bound by value here */
        S->builtin[S->nbuiltin] = pn;
        S->builtin_expr[S->nbuiltin++] = expr;
        for (size_t u = 0; u < MC__ARRAY_LEN(rg_uniform_attrs); u++)
            if (is(x, an, rg_uniform_attrs[u]) && !rg_add_uniform(S, pn)) return false;
    }
    return true;
}

/* Names declared at file scope as constants (`constant T N = ...;`,
 * `constexpr`, `const`, function constants): the same for every thread. */
static bool rg_file_constants(const xlat *x, rg_shape *S)
{
    int depth = 0;
    for (size_t i = 0; i < x->L.n; i++) {
        if (punct(x, i, '{')) depth++;
        else if (punct(x, i, '}')) depth--;
        if (depth != 0 || x->L.t[i].kind != T_IDENT) continue;
        bool start = i == 0 || punct(x, i - 1, ';') || punct(x, i - 1, '}') || x->L.t[i - 1].kind == T_PP;
        if (!start || !(is(x, i, "constant") || is(x, i, "constexpr") || is(x, i, "const") ||
                        (is(x, i, "static") && (is(x, i + 1, "constexpr") || is(x, i + 1, "const")))))
            continue;
        size_t k = i;
        while (k < x->L.n && !punct(x, k, ';') && !punct(x, k, '=') && !punct(x, k, '[') && !punct(x, k, '(') &&
               !punct(x, k, '{') && !punct(x, k, '*') && !punct(x, k, '&'))
            k++;
        if (k >= x->L.n || punct(x, k, '*') || punct(x, k, '&') || punct(x, k, '(') || punct(x, k, '{') ||
            x->L.t[k - 1].kind != T_IDENT || k - 1 == i)
            continue;
        if (rg_name_in(x, S->params, S->nparams, k - 1)) continue; /* a parameter of the kernel hides it */
        if (!rg_add_uniform(S, k - 1)) return false;
    }
    return true;
}

/* `#define NAME` for a NAME used in the body: only a number is taken (it
 * reads as one); any other macro may hide a barrier, a return or a brace. */
static bool rg_macros_ok(const xlat *x, rg_shape *S)
{
    for (size_t i = 0; i < x->L.n; i++) {
        const tok *t = &x->L.t[i];
        if (t->kind != T_PP) continue;
        const char *s = x->s + t->start, *end = s + t->len;
        const char *p = s + 1;
        while (p < end && (*p == ' ' || *p == '\t')) p++;
        if ((size_t)(end - p) < 6 || memcmp(p, "define", 6) != 0) continue;
        p += 6;
        while (p < end && (*p == ' ' || *p == '\t')) p++;
        const char *nb = p;
        while (p < end && (isalnum((unsigned char)*p) || *p == '_')) p++;
        size_t nlen = (size_t)(p - nb);
        if (!nlen) continue;
        bool number = p < end && (*p == ' ' || *p == '\t');
        if (number) {
            while (p < end && (*p == ' ' || *p == '\t')) p++;
            const char *vb = p;
            while (p < end && (isalnum((unsigned char)*p) || *p == '.' || *p == '(' || *p == ')')) p++;
            while (p < end && (*p == ' ' || *p == '\t' || *p == '\r')) p++;
            while (vb < end && *vb == '(') vb++;
            number = p == end && vb < end && isdigit((unsigned char)*vb);
        }
        for (size_t k = S->body_b; k < S->body_e; k++) {
            if (x->L.t[k].kind != T_IDENT || x->L.t[k].len != nlen || memcmp(x->s + x->L.t[k].start, nb, nlen))
                continue;
            if (!number) return false;
            if (!rg_add_uniform(S, k)) return false; /* a number: the same for every thread */
            break;
        }
    }
    return true;
}

/* Tokens [b, e) read only what every thread sees alike and write nothing
 * (a loop variable var, if not 0, may be read). */
static bool rg_uniform_expr(const xlat *x, const rg_shape *S, size_t b, size_t e, size_t var)
{
    static const char *const pure[] = {"min", "max", "clamp", "abs"};
    if (b >= e) return false;
    for (size_t k = b; k < e; k++) {
        const tok *t = &x->L.t[k];
        if (t->kind == T_NUMBER) continue;
        if (t->kind == T_PUNCT) {
            char c = x->s[t->start];
            if (!strchr("+-*/%<>=!&|^~?:().[],", c)) return false;
            if (c == '=') { /* only in ==, !=, <=, >= */
                bool joined = k > b && rg_joined(x, k - 1, k) && x->L.t[k - 1].kind == T_PUNCT;
                char p = joined ? x->s[x->L.t[k - 1].start] : 0;
                bool shift = (p == '<' || p == '>') && k > b + 1 && rg_joined(x, k - 2, k - 1) && punct(x, k - 2, p);
                bool first_of_eq = !joined && k + 1 < e && punct(x, k + 1, '=') && rg_joined(x, k, k + 1);
                if (!(p == '=' || p == '!' || ((p == '<' || p == '>') && !shift) || first_of_eq)) return false;
            }
            if ((c == '+' || c == '-') && k + 1 < e && punct(x, k + 1, c) && rg_joined(x, k, k + 1)) return false;
            if (c == '-' && k + 1 < e && punct(x, k + 1, '>') && rg_joined(x, k, k + 1)) return false;
            continue;
        }
        if (t->kind != T_IDENT) return false;
        if (k > b && punct(x, k - 1, '.')) continue; /* a member */
        if (var && same_ident(x, k, var)) continue;
        if (rg_is_type_word(x, k) || is(x, k, "true") || is(x, k, "false")) continue;
        if (is(x, k, "metal") && punct(x, k + 1, ':') && punct(x, k + 2, ':')) {
            k += 2;
            continue;
        }
        bool fn = false;
        for (size_t p = 0; p < MC__ARRAY_LEN(pure); p++) fn = fn || is(x, k, pure[p]);
        for (size_t g = 0; fn && g < S->F->n; g++) fn = !same_ident(x, k, S->F->name[g]); /* the source's own */
        if (fn && punct(x, k + 1, '(')) continue;
        if (!rg_name_in(x, S->uniform, S->nuniform, k)) return false;
    }
    return true;
}

/* Does tokens [b, e) write name n (assign, increment, take its address)? */
static bool rg_writes(const xlat *x, size_t b, size_t e, size_t n)
{
    for (size_t k = b; k < e; k++) {
        if (!same_ident(x, k, n) || (k > b && punct(x, k - 1, '.'))) continue;
        if (k + 1 < e && x->L.t[k + 1].kind == T_PUNCT) {
            char c = x->s[x->L.t[k + 1].start];
            if (c == '=' && !(punct(x, k + 2, '=') && rg_joined(x, k + 1, k + 2))) return true;
            if (strchr("+-*/%&|^", c) && punct(x, k + 2, '=') && rg_joined(x, k + 1, k + 2)) return true;
            if ((c == '+' || c == '-') && punct(x, k + 2, c) && rg_joined(x, k + 1, k + 2)) return true;
            if ((c == '<' || c == '>') && punct(x, k + 2, c) && punct(x, k + 3, '=')) return true;
        }
        if (k >= b + 2 && (punct(x, k - 1, '+') || punct(x, k - 1, '-')) && rg_joined(x, k - 2, k - 1) &&
            x->s[x->L.t[k - 2].start] == x->s[x->L.t[k - 1].start])
            return true;
        if (k > b && punct(x, k - 1, '&')) return true;
    }
    return false;
}

/* A declaration statement [b, e): its locals, or false when it is not one
 * this pass can read (the caller then gives up on the kernel). *decl says
 * whether it declares anything. */
static bool rg_declaration(const xlat *x, rg_shape *S, size_t b, size_t e, int region, bool *decl)
{
    *decl = false;
    static const char *const not_decl[] = {"return", "if",       "for",  "while",   "do",     "switch", "else",
                                           "break",  "continue", "case", "default", "sizeof", "delete", "new"};
    /* `[[attr]] T x`, `::T x`: declarations this pass does not read */
    if (punct(x, b, '[') || punct(x, b, ':')) return false;
    if (x->L.t[b].kind != T_IDENT) return true;
    if (is(x, b, "decltype") || is(x, b, "alignas") || is(x, b, "__attribute__") || is(x, b, "typename")) return false;
    for (size_t k = 0; k < MC__ARRAY_LEN(not_decl); k++)
        if (is(x, b, not_decl[k])) return true;
    /* the leading identifiers (with ::, <...>) up to a declarator's punctuation */
    size_t k = b, idents = 0;
    while (k < e) {
        if (x->L.t[k].kind == T_IDENT) {
            idents++;
            k++;
        } else if (punct(x, k, ':') && punct(x, k + 1, ':')) {
            k += 2;
        } else if (punct(x, k, '<') && idents) {
            return false; /* a template's arguments: not read here */
        } else {
            break;
        }
    }
    if (k >= e) return false;
    bool star = punct(x, k, '*') || punct(x, k, '&');
    if (idents < 2 && !(idents == 1 && star && rg_is_type_word(x, b))) {
        /* an expression (`x = ...`, `f(...)`, `a[i] = ...`); `a * b` with
         * a not a type word could be a declaration: refused */
        return !(idents == 1 && star && k + 1 < e && x->L.t[k + 1].kind == T_IDENT);
    }
    *decl = true;
    size_t spec_e = star ? k : k - 1; /* the first declarator starts here */
    if (x->L.t[spec_e].kind != T_IDENT && !star) return false;
    for (size_t d = spec_e; d < e - 1;) {
        size_t db = d;
        while (punct(x, d, '*') || punct(x, d, '&') || is(x, d, "const")) d++;
        if (d >= e || x->L.t[d].kind != T_IDENT) return false;
        size_t name = d++;
        while (punct(x, d, '[')) d = rg_past(x, d);
        size_t init = 0;
        if (punct(x, d, '=')) {
            init = d;
            while (d < e - 1 && !punct(x, d, ',')) {
                if (punct(x, d, '(') || punct(x, d, '[') || punct(x, d, '{')) d = rg_past(x, d);
                else d++;
            }
        }
        if (!(d == e - 1 || punct(x, d, ','))) return false; /* `T x(1)`, `T x{1}`, ... */
        if (S->nlocals == RG_MAX_NAMES) return false;
        S->locals[S->nlocals++] = (rg_local){.name = name,
                                             .stmt_b = b,
                                             .stmt_e = e,
                                             .spec_b = b,
                                             .spec_e = spec_e,
                                             .decl_b = db,
                                             .decl_e = d,
                                             .init = init,
                                             .region = region};
        if (punct(x, d, ',')) d++;
    }
    return true;
}

/* May local L live in a frame: plain data, declared so an assignment
 * gives the same value as its initialisation. */
static bool rg_frame_ok(const xlat *x, const rg_shape *S, const rg_local *L)
{
    bool space = false, type = false, cnst = false;
    for (size_t k = L->spec_b; k < L->spec_e; k++) {
        if (is(x, k, "device") || is(x, k, "threadgroup") || is(x, k, "constant")) space = true;
        else if (rg_is_type_word(x, k)) type = true;
        else if (is(x, k, "const")) cnst = true;    /* of the pointee, when a pointer */
        else if (!is(x, k, "thread")) return false; /* auto, static, a user type, ... */
    }
    bool ptr = false;
    for (size_t k = L->decl_b; k < L->name; k++) {
        if (!punct(x, k, '*')) return false; /* a reference, a const pointer */
        ptr = true;
    }
    if (!type || ptr != space || (cnst && !ptr)) return false; /* a pointer to thread memory; a const local */
    size_t end = L->init ? L->init : L->decl_e;
    for (size_t k = L->name + 1; k < end; k++) {
        if (x->L.t[k].kind != T_IDENT) continue;
        for (size_t q = 0; q < S->nlocals; q++) /* a bound naming a local of the body */
            if (same_ident(x, k, S->locals[q].name)) return false;
    }
    if (L->init && end < L->decl_e && punct(x, L->name + 1, '[')) return false; /* an array's initialiser */
    if (L->init && L->init + 1 < L->decl_e && punct(x, L->init + 1, '{')) return false;
    return true;
}

static bool rg_used(const xlat *x, size_t b, size_t e, size_t name)
{
    for (size_t k = b; k < e; k++)
        if (same_ident(x, k, name) && !(k > b && (punct(x, k - 1, '.') || punct(x, k - 1, ':') ||
                                                  (punct(x, k - 1, '>') && punct(x, k - 2, '-')))))
            return true;
    return false;
}

/* The statements [b, e) of the body (loop -1) or of a loop's body. */
static bool rg_items(const xlat *x, rg_shape *S, size_t b, size_t e, int loop)
{
    for (size_t i = b; i < e;) {
        size_t se = rg_stmt_end(x, i, e);
        if (!se || se > e || S->nitems == RG_MAX_ITEMS) return false;
        rg_item it = {.kind = I_CODE, .b = i, .e = se, .region = -1, .loop = loop};
        bool barrier_inside = rg_has(x, i, se, "threadgroup_barrier");
        if (rg_is_barrier(x, i, se)) {
            it.kind = I_BARRIER;
        } else if (loop < 0 && (is(x, i, "for") || is(x, i, "while")) && barrier_inside) {
            it.kind = I_LOOP;
        } else if (barrier_inside) {
            return false; /* a barrier under an if, in a block, a do loop, a loop in a loop */
        } else if (is(x, i, "threadgroup") && !punct(x, i + 1, '(')) {
            bool ptr = false;
            for (size_t k = i; k < se && !punct(x, k, '='); k++) ptr = ptr || punct(x, k, '*') || punct(x, k, '&');
            if (!ptr) {
                if (loop >= 0) return false; /* threadgroup memory declared in a barrier loop */
                it.kind = I_GROUP;
            }
        } else if (is(x, i, "constexpr") && loop < 0) {
            it.kind = I_GROUP;
        } else if (x->L.t[i].kind == T_IDENT && punct(x, i + 1, ':') && !punct(x, i + 2, ':')) {
            return false; /* a label */
        }
        S->items[S->nitems++] = it;
        if (it.kind == I_LOOP) {
            rg_item *L = &S->items[S->nitems - 1];
            int me = (int)(S->nitems - 1);
            size_t hb = i + 2, he = rg_past(x, i + 1) - 1; /* inside the header's parentheses */
            if (is(x, i, "for")) {
                size_t s1 = hb, s2;
                while (s1 < he && !punct(x, s1, ';'))
                    s1 = punct(x, s1, '(') || punct(x, s1, '[') ? rg_past(x, s1) : s1 + 1;
                s2 = s1 + 1;
                while (s2 < he && !punct(x, s2, ';'))
                    s2 = punct(x, s2, '(') || punct(x, s2, '[') ? rg_past(x, s2) : s2 + 1;
                if (s1 >= he || s2 >= he) return false;
                /* init: `T v = uniform`, T scalar words only */
                size_t k = hb;
                while (k < s1 && rg_is_scalar_word(x, k)) k++;
                if (k == hb || k + 2 >= s1 || x->L.t[k].kind != T_IDENT || !punct(x, k + 1, '=') ||
                    punct(x, k + 2, '='))
                    return false;
                size_t var = k;
                L->var = var;
                if (!rg_uniform_expr(x, S, k + 2, s1, 0) || !rg_uniform_expr(x, S, s1 + 1, s2, var)) return false;
                /* increment: v++, ++v, v--, --v, v op= uniform, v = uniform */
                size_t ib = s2 + 1, n = he - ib;
                char c0 = x->L.t[ib].kind == T_PUNCT ? x->s[x->L.t[ib].start] : 0;
                char c1 = ib + 1 < he && x->L.t[ib + 1].kind == T_PUNCT ? x->s[x->L.t[ib + 1].start] : 0;
                bool ok = false;
                if (n == 3 && same_ident(x, ib, var) && (c1 == '+' || c1 == '-') && punct(x, ib + 2, c1) &&
                    rg_joined(x, ib + 1, ib + 2))
                    ok = true;
                else if (n == 3 && same_ident(x, ib + 2, var) && (c0 == '+' || c0 == '-') && punct(x, ib + 1, c0) &&
                         rg_joined(x, ib, ib + 1))
                    ok = true;
                else if (n >= 3 && same_ident(x, ib, var)) {
                    size_t a = ib + 1;
                    if ((c1 == '<' || c1 == '>') && punct(x, a + 1, c1) && rg_joined(x, a, a + 1)) a += 2;
                    else if (c1 && strchr("+-*/%&|^", c1)) a++;
                    ok = punct(x, a, '=') && (a == ib + 1 || rg_joined(x, a - 1, a)) && !punct(x, a + 1, '=') &&
                         rg_uniform_expr(x, S, a + 1, he, var);
                    for (size_t q = a + 1; q < he && ok; q++) ok = !punct(x, q, ',');
                }
                if (!ok) return false;
            } else if (!rg_uniform_expr(x, S, hb, he, 0)) {
                return false;
            }
            size_t bb = he + 1, be = se; /* the body: `{...}` or one statement */
            if (punct(x, bb, '{')) {
                bb++;
                be--;
            }
            L->hdr_e = he;
            L->body_b = bb;
            L->body_e = be;
            if (L->var && rg_writes(x, bb, be, L->var)) return false;
            if (rg_has(x, bb, be, "break") || rg_has(x, bb, be, "continue") || rg_has(x, bb, be, "return"))
                return false;
            if (!rg_items(x, S, bb, be, me)) return false;
        }
        i = se;
    }
    return true;
}

/* Regions: the runs of code items between barriers, loops and group-scope
 * statements; and the locals each code item declares. */
static bool rg_regions(const xlat *x, rg_shape *S)
{
    int cur = -1;
    int cur_loop = -2;
    for (size_t k = 0; k < S->nitems; k++) {
        rg_item *it = &S->items[k];
        if (it->kind != I_CODE) {
            cur = -1;
            continue;
        }
        if (cur < 0 || cur_loop != it->loop) {
            if (S->nregions == RG_MAX_ITEMS) return false;
            cur = (int)S->nregions++;
            S->regions[cur] = (rg_region){.first = it->b, .loop = it->loop};
            cur_loop = it->loop;
        }
        it->region = cur;
        S->regions[cur].last_end = it->e;
        if (rg_has(x, it->b, it->e, "return")) {
            S->regions[cur].returns = true;
            S->returns = true;
            for (size_t q = it->b; q < it->e; q++)
                if (is(x, q, "return") && !punct(x, q + 1, ';')) return false; /* a value from a void kernel */
        }
        bool decl;
        if (!rg_declaration(x, S, it->b, it->e, cur, &decl)) return false;
    }
    return true;
}

/* Each local that a later region uses lives in the frame; a local that
 * crosses a barrier of a loop's body, one that cannot live in a frame, or
 * one used before its declaration in its own region sends the kernel back
 * to coroutines. */
static bool rg_frames(const xlat *x, rg_shape *S)
{
    /* two locals of one name: fine in the bodies of two loops; a top-level
     * one and a later one would meet in a region (its frame reference and
     * the declaration) */
    for (size_t a = 0; a < S->nlocals; a++)
        for (size_t b = a + 1; b < S->nlocals; b++) {
            int la = S->regions[S->locals[a].region].loop, lb = S->regions[S->locals[b].region].loop;
            if (same_ident(x, S->locals[a].name, S->locals[b].name) && (la < 0 || la == lb)) return false;
        }
    for (size_t l = 0; l < S->nlocals; l++) {
        rg_local *L = &S->locals[l];
        const rg_region *R = &S->regions[L->region];
        if (rg_name_in(x, S->builtin, S->nbuiltin, L->name) || rg_name_in(x, S->params, S->nparams, L->name))
            return false;
        if (rg_used(x, R->first, L->stmt_b, L->name)) return false;
        for (size_t r = (size_t)L->region + 1; r < S->nregions; r++) {
            if (R->loop >= 0 && S->regions[r].loop != R->loop) break;
            if (rg_used(x, S->regions[r].first, S->regions[r].last_end, L->name)) L->frame = true;
        }
        if (L->frame && R->loop >= 0) return false;
    }
    /* the locals of one declaration live in the frame together (their
     * declaration becomes their initialisations) */
    for (size_t l = 0; l < S->nlocals; l++)
        for (size_t m = 0; m < S->nlocals; m++)
            if (S->locals[m].stmt_b == S->locals[l].stmt_b && S->locals[m].frame) S->locals[l].frame = true;
    for (size_t l = 0; l < S->nlocals; l++)
        if (S->locals[l].frame && !rg_frame_ok(x, S, &S->locals[l])) return false;
    /* a loop variable shadows nothing the regions bind, and a loop header
     * reads no local (one may be named like a file-scope constant) */
    for (size_t k = 0; k < S->nitems; k++) {
        const rg_item *it = &S->items[k];
        if (it->kind == I_GROUP) /* `constexpr uint k = sizeof(local)`: out of the local's scope here */
            for (size_t l = 0; l < S->nlocals; l++)
                if (rg_used(x, it->b, it->e, S->locals[l].name)) return false;
        if (it->kind != I_LOOP) continue;
        for (size_t l = 0; l < S->nlocals; l++)
            if (rg_used(x, it->b + 1, it->hdr_e, S->locals[l].name)) return false;
        size_t v = it->var;
        if (!v) continue;
        if (rg_name_in(x, S->params, S->nparams, v)) return false;
        for (size_t l = 0; l < S->nlocals; l++)
            if (same_ident(x, S->locals[l].name, v)) return false;
    }
    return true;
}

/* ---- emission --------------------------------------------------------------------- */

static void rg_puts(sbuf *o, const char *s)
{
    put(o, s, strlen(s));
}

/* builtin_attrs' expressions read `t.`; the regions' ids are mc_u */
static void rg_attr_expr(sbuf *o, const char *expr)
{
    for (const char *p = expr; *p; p++) {
        if (*p == 't' && p[1] == '.' && (p == expr || !(isalnum((unsigned char)p[-1]) || p[-1] == '_'))) {
            put(o, "mc_u", 4);
            continue;
        }
        put(o, p, 1);
    }
}

static char *rg_region_open(const xlat *x, const rg_shape *S, size_t r)
{
    const rg_region *R = &S->regions[r];
    sbuf o = {0};
    putf(&o, "mc::region<%s>(mc_rg, [&", S->returns ? "true" : "false");
    if (R->loop >= 0 && S->items[R->loop].var) {
        const tok *v = &x->L.t[S->items[R->loop].var];
        putf(&o, ", %.*s = %.*s", (int)v->len, x->s + v->start, (int)v->len, x->s + v->start);
    }
    putf(&o, "](const mc::ids &mc_u, uint32_t mc_t) __attribute__((always_inline)) { (void)mc_u; (void)mc_t;");
    if (R->loop >= 0 && S->items[R->loop].var) { /* a region need not read it (-Wunused-lambda-capture) */
        const tok *v = &x->L.t[S->items[R->loop].var];
        putf(&o, " (void)%.*s;", (int)v->len, x->s + v->start);
    }
    for (size_t b = 0; b < S->nbuiltin; b++) {
        const tok *n = &x->L.t[S->builtin[b]];
        int nl = (int)n->len;
        const char *ns = x->s + n->start;
        putf(&o, " decltype(%.*s) %.*s = mc::attr<decltype(%.*s)>(", nl, ns, nl, ns, nl, ns);
        rg_attr_expr(&o, S->builtin_expr[b]);
        putf(&o, "); (void)%.*s;", nl, ns);
    }
    for (size_t l = 0; l < S->nlocals; l++) {
        const rg_local *L = &S->locals[l];
        if (!L->frame || (size_t)L->region > r) continue;
        if ((size_t)L->region != r && !rg_used(x, R->first, R->last_end, L->name)) continue;
        const tok *n = &x->L.t[L->name];
        putf(&o, " auto &%.*s = mc_fr[mc_t].%.*s; (void)%.*s;", (int)n->len, x->s + n->start, (int)n->len,
             x->s + n->start, (int)n->len, x->s + n->start);
    }
    put(&o, " ", 1);
    return o.oom ? (free(o.p), NULL) : o.p;
}

static char *rg_frame_struct(const xlat *x, const rg_shape *S)
{
    sbuf o = {0};
    rg_puts(&o, " mc::rgroup &mc_rg = *mc::rg_now;");
    bool any = false;
    for (size_t l = 0; l < S->nlocals; l++) {
        const rg_local *L = &S->locals[l];
        if (!L->frame) continue;
        if (!any) rg_puts(&o, " struct mc_frame {");
        any = true;
        put(&o, " ", 1);
        for (size_t k = L->spec_b; k < L->spec_e; k++) {
            if (is(x, k, "threadgroup")) continue; /* one flat address space */
            putf(&o, "%.*s ", (int)x->L.t[k].len, x->s + x->L.t[k].start);
        }
        size_t end = L->init ? L->init : L->decl_e;
        for (size_t k = L->decl_b; k < end; k++) putf(&o, "%.*s", (int)x->L.t[k].len, x->s + x->L.t[k].start);
        put(&o, ";", 1);
    }
    if (any) rg_puts(&o, " }; mc_frame *mc_fr = mc::region_frames_of<mc_frame>(mc_rg);");
    put(&o, " ", 1);
    return o.oom ? (free(o.p), NULL) : o.p;
}

/* A frame local's declaration becomes its initialisations: `T a, b = 1;`
 * -> `b = 1;` (the locals of one declaration are all frame locals or none:
 * rg_frames). */
static bool rg_plan_declarations(const xlat *x, const rg_shape *S, region_plan *P)
{
    for (size_t l = 0; l < S->nlocals;) {
        size_t m = l;
        bool frame = S->locals[l].frame, mixed = false;
        while (m < S->nlocals && S->locals[m].stmt_b == S->locals[l].stmt_b) {
            mixed = mixed || S->locals[m].frame != frame;
            m++;
        }
        if (mixed) return false;
        if (frame) {
            size_t from = S->locals[l].stmt_b; /* deleted up to the next kept initialiser */
            bool first = true;
            for (size_t q = l; q < m; q++) {
                const rg_local *L = &S->locals[q];
                if (!L->init) continue;
                rg_add(P, RG_DELETE, from, L->name, rg_strdup(first ? "" : ", "));
                first = false;
                from = L->decl_e;
            }
            rg_add(P, RG_DELETE, from, S->locals[l].stmt_e - 1, rg_strdup(""));
        }
        l = m;
    }
    return true;
}

static region_plan *rg_plan(const xlat *x, rg_shape *S)
{
    region_plan *P = calloc(1, sizeof *P);
    if (!P) return NULL;
    rg_add(P, RG_INSERT, S->body_b + 1, 0, rg_frame_struct(x, S));
    for (size_t r = 0; r < S->nregions; r++) {
        const rg_region *R = &S->regions[r];
        rg_add(P, RG_INSERT, R->first, 0, rg_region_open(x, S, r));
        for (size_t k = R->first; k < R->last_end; k++)
            if (is(x, k, "return")) rg_add(P, RG_REPLACE, k, 0, rg_strdup("return mc_rg.leave(mc_t)"));
    }
    if (!rg_plan_declarations(x, S, P)) {
        free_region_plan(P);
        return NULL;
    }
    for (size_t r = 0; r < S->nregions; r++) {
        const rg_region *R = &S->regions[r];
        rg_add(P, RG_INSERT, R->last_end, 0,
               rg_strdup(R->returns && R->loop < 0 ? "}); if (!mc_rg.live) return; " : "}); "));
    }
    for (size_t k = 0; k < S->nitems; k++)
        if (S->items[k].kind == I_GROUP && is(x, S->items[k].b, "threadgroup") && P->ntg < RG_MAX_TG)
            P->tg[P->ntg++] = S->items[k].b;
    for (size_t k = 0; k < S->nitems; k++)
        if (S->items[k].kind == I_BARRIER) /* the ';' stays: a loop's only statement */
            rg_add(P, RG_DELETE, S->items[k].b, S->items[k].e - 1, rg_strdup(""));
    if (P->oom) {
        free_region_plan(P);
        return NULL;
    }
    /* region ends before what starts at the same token (a barrier's
     * deletion, the next region's start): end inserts were added last but
     * must come first, so order by token and put inserts before the rest */
    for (size_t k = 0; k < P->n; k++)
        if (P->e[k].op == RG_INSERT && strncmp(P->e[k].text, "});", 3) == 0) P->e[k].seq = 0;
        else P->e[k].seq = (uint32_t)(k + 1) + (P->e[k].op == RG_INSERT ? 0u : 1000000u);
    qsort(P->e, P->n, sizeof *P->e, rg_cmp);
    return P;
}

/* The region plan for top-level function f, or NULL: it keeps the
 * coroutine path. */
static region_plan *regions_eligible(const xlat *x, const fn_bodies *F, size_t f)
{
    if (!F->coro[f]) return NULL;
    rg_shape *S = calloc(1, sizeof *S);
    if (!S) return NULL;
    S->F = F;
    S->f = f;
    S->body_b = F->body_b[f];
    S->body_e = F->body_e[f];
    S->open = F->name[f] + 1;
    S->close = rg_past(x, S->open) - 1;
    region_plan *P = NULL;
    static const char *const rg_refused[] = {"goto",         "typedef",   "using",    "enum",     "static",
                                             "thread_local", "asm",       "__asm__",  "template", "operator",
                                             "namespace",    "extern",    "throw",    "try",      "this",
                                             "co_await",     "co_return", "co_yield", "register", "__label__"};
    bool ok = S->close + 1 == S->body_b;
    /* a kernel called (or named) by other code would run without its group
     * (coroutines make that a compile error: mc::coro is nodiscard) */
    for (size_t k = 0; ok && k < x->L.n; k++)
        if ((k < S->open - 1 || k > S->body_e) && same_ident(x, k, F->name[f]) && x->L.t[k].kind == T_IDENT) ok = false;
    if (mc__msl_named_in_macro(x, F->name[f])) ok = false; /* a macro may call it */
    for (size_t k = S->body_b + 1; ok && k < S->body_e; k++) {
        const tok *t = &x->L.t[k];
        if (t->kind == T_PP) ok = false;
        if (t->kind != T_IDENT) continue;
        if (t->len >= 3 && !memcmp(x->s + t->start, "mc_", 3)) ok = false; /* the names the pass makes */
        for (size_t r = 0; r < MC__ARRAY_LEN(rg_refused); r++) ok = ok && !is(x, k, rg_refused[r]);
    }
    ok = ok && rg_params(x, S) && rg_file_constants(x, S) && rg_macros_ok(x, S);
    /* threadgroup variables and top-level constexprs are group-wide:
     * loop headers may read them */
    for (size_t i = S->body_b + 1; ok && i < S->body_e;) {
        size_t se = rg_stmt_end(x, i, S->body_e);
        if (!se) {
            ok = false;
            break;
        }
        if ((is(x, i, "threadgroup") && !punct(x, i + 1, '(')) || is(x, i, "constexpr")) {
            size_t k = i;
            while (k < se && !punct(x, k, ';') && !punct(x, k, '=') && !punct(x, k, '[') && !punct(x, k, '*') &&
                   !punct(x, k, '&'))
                k++;
            if (k < se && (punct(x, k, ';') || punct(x, k, '=') || punct(x, k, '[')) && x->L.t[k - 1].kind == T_IDENT)
                ok = rg_add_uniform(S, k - 1);
        }
        i = se;
    }
    ok = ok && rg_items(x, S, S->body_b + 1, S->body_e, -1);
    ok = ok && rg_regions(x, S) && rg_frames(x, S);
    if (ok) {
        size_t barriers = 0, found = 0;
        for (size_t k = S->body_b; k < S->body_e; k++) found += is(x, k, "threadgroup_barrier");
        for (size_t k = 0; k < S->nitems; k++) barriers += S->items[k].kind == I_BARRIER;
        ok = barriers == found && barriers > 0;
    }
    if (ok) P = rg_plan(x, S);
    free(S);
    return P;
}

/* Which coroutine kernels run as region loops instead (MC_MSL_REGIONS=0:
 * none). Called after plan_coroutines; a kernel planned here is no longer
 * a coroutine kernel. */
bool mc__cpu_msl_regions_on(void)
{
    const char *env = mc__env_str("MC_MSL_REGIONS", "1");
    return strcmp(env, "0") != 0 && strcmp(env, "off") != 0;
}

void mc__msl_plan_regions(xlat *x)
{
    fn_bodies *F = x->fns;
    if (!mc__cpu_msl_regions_on()) return;
    for (size_t f = 0; f < F->n && F->n < MAX_FNS; f++) {
        F->regions[f] = regions_eligible(x, F, f);
        if (F->regions[f]) F->coro[f] = false;
    }
}

void mc__msl_free_regions(fn_bodies *F)
{
    for (size_t f = 0; F && f < F->n; f++) free_region_plan(F->regions[f]);
}

/* Applies the edits at token *i; true when the token was consumed (then
 * *i is the last token consumed). */
bool mc__msl_regions_rewrite(xlat *x, size_t *i)
{
    const fn_bodies *F = x->fns;
    for (size_t f = 0; F && f < F->n; f++) {
        region_plan *P = F->regions[f];
        if (!P || *i < F->body_b[f] || *i > F->body_e[f]) continue;
        /* an edit the translation stepped over would leave a kernel that
         * compiles and runs wrong (a return that does not end its thread):
         * an error instead, which no tested shape reaches */
        if (P->next < P->n && P->e[P->next].tok < *i)
            return fail_at(x, x->L.t[*i].line,
                           "internal error: the region loops of this kernel were not written "
                           "whole (MC_MSL_REGIONS=0 runs it as coroutines)");
        while (P->next < P->n && P->e[P->next].tok == *i) {
            const rg_edit *E = &P->e[P->next++];
            const tok *t = &x->L.t[*i];
            if (E->op == RG_INSERT) {
                copy_to(x, t->start);
                put(&x->out, E->text, strlen(E->text));
                continue;
            }
            if (E->op == RG_REPLACE) {
                replace_tok(x, *i, E->text);
                return true;
            }
            /* RG_DELETE: keep the line breaks */
            copy_to(x, t->start);
            size_t to = E->end < x->L.n ? x->L.t[E->end].start : x->n;
            for (size_t c = t->start; c < to; c++)
                if (x->s[c] == '\n') put(&x->out, "\n", 1);
            put(&x->out, E->text, strlen(E->text));
            x->pos = to;
            if (E->end == *i) continue; /* nothing deleted */
            *i = E->end - 1;
            if (P->next < P->n && P->e[P->next].tok <= *i)
                return fail_at(x, t->line,
                               "internal error: the region loops of this kernel were not written whole "
                               "(MC_MSL_REGIONS=0 runs it as coroutines)");
            return true;
        }
        return false;
    }
    return false;
}

/* A top-level threadgroup variable of a region kernel (`threadgroup T
 * name[...];` at token i, its name and semicolon), as the coroutines have
 * it: the thread-local variable gets another name and `name` becomes a
 * reference to it, taken once per group (mc::opaque: else the compiler
 * folds it back into a thread-local lookup in each thread that uses it). */
bool mc__msl_regions_tg_var(xlat *x, size_t i, size_t name, size_t semi)
{
    const fn_bodies *F = x->fns;
    for (size_t f = 0; F && f < F->n; f++) {
        const region_plan *P = F->regions[f];
        for (size_t k = 0; P && k < P->ntg; k++) {
            if (P->tg[k] != i) continue;
            mc__msl_emit_tg_reference(x, name, semi);
            return true;
        }
    }
    return false;
}
