/*
 * DOC: MSL front end: what the source's macros hide
 *
 * The front end chooses how a kernel's threads run (plain loop, region
 * loops, coroutines, fibers) and what it rewrites by reading the source's
 * tokens before any preprocessor runs. A barrier or SIMD-group function
 * behind a macro (`#define SYNC() threadgroup_barrier(...)`), a chain of
 * macros, a macro that calls a helper with a barrier, one defined under
 * `#if`, would not be seen, and the kernel would run as a plain loop with
 * no barrier: a wrong result, or a crash.
 *
 * Why record the macros rather than run the preprocessor first (clang -E)
 * and classify what it gives: the front end rewrites the user's own text
 * in place, so that clang's errors point at the user's lines and columns,
 * and its other passes (region loops, hoisted bounds tests, coroutines)
 * are written against that text; preprocessed text would move columns,
 * lose clang's "expanded from macro" notes, need the right predefined
 * macros and one more compiler run per build. Classifying needs less than
 * expansion: only whether a name can lead to a barrier. So:
 *
 *   - every #define's body is lexed (x->M) and kept by name; a name
 *     defined more than once (#if branches, #undef and a new definition)
 *     counts with every body it has: the union, so a barrier in any
 *     branch counts (conservative: the paths that run every thread are
 *     right for any kernel, only slower);
 *   - a macro is a group macro when its body names a barrier or a
 *     SIMD-group function, another group macro, or a function that uses
 *     one (the functions' own marks, mc__msl_find_functions, take group
 *     macros into account: one fixpoint over both), or pastes tokens (##:
 *     the name it makes is unknown);
 *   - a kernel that names a group macro is a kernel with barriers; one
 *     that names a macro holding `return` is not made a coroutine (its
 *     returns could not be rewritten). Both then run as fibers, where a
 *     barrier is a barrier however it is spelt;
 *   - an #include other than <metal_*> is not read (the front end has the
 *     source, not the include path): every kernel of such a source runs
 *     as fibers, whatever the header holds;
 *   - a used macro that holds what the front end rewrites before the
 *     preprocessor (a `threadgroup` declaration, an attribute it reads, a
 *     `kernel`, a feature outside the subset) is a compile error naming
 *     the macro and its line, where clang would give an error about the
 *     rewritten text or, for attributes, a kernel bound wrong;
 *   - vector constructors and `h` literals in a macro's body get the same
 *     rewrite as in the code (a `float2(v)` of an int2 v left alone would
 *     be a bit cast with clang's vectors: a silent wrong value).
 */
#include "backends/cpu/cpu_msl.h"

#include <ctype.h>

typedef struct msl_macro {
    uint32_t name_start, name_len, line;
    size_t tb, te; /* its body: tokens [tb, te) of x->M */
    bool group;    /* leads to a barrier or a SIMD-group function */
    bool returns;  /* holds `return` */
    bool used;     /* named in the source's tokens or another macro's body */
} msl_macro;

static bool name_is(const xlat *x, const msl_macro *m, const tok *t)
{
    return t->kind == T_IDENT && t->len == m->name_len && !memcmp(x->s + t->start, x->s + m->name_start, t->len);
}

static bool push_macro(xlat *x, msl_macro m)
{
    if (x->nmacro == x->mcap) {
        size_t ncap = x->mcap ? x->mcap * 2 : 16;
        msl_macro *p = realloc(x->macros, ncap * sizeof *p);
        if (!p) return false;
        x->macros = p;
        x->mcap = ncap;
    }
    x->macros[x->nmacro++] = m;
    return true;
}

/* A view of x whose tokens are the macros' bodies: the token helpers
 * (is, punct, mc__msl_attr_at, ...) read them as they read the source. */
static xlat body_view(const xlat *x)
{
    xlat v = *x;
    v.L = x->M;
    v.error = NULL;
    return v;
}

/* attributes the front end reads from the source's tokens */
static bool front_end_attr(const xlat *v, size_t an)
{
    static const char *const read[] = {"buffer", "threadgroup", "function_constant", "kernel", "host_name"};
    for (size_t k = 0; k < MC__ARRAY_LEN(read); k++)
        if (is(v, an, read[k])) return true;
    return mc__msl_builtin_expr(v, an) != NULL;
}

/* A used macro holding what the front end rewrites before the
 * preprocessor runs: false and x->error set. */
static bool refuse_hidden(xlat *x, const msl_macro *m)
{
    xlat v = body_view(x);
    int nl = (int)m->name_len;
    const char *nm = x->s + m->name_start;
    for (size_t k = m->tb; k < m->te; k++) {
        const tok *t = &x->M.t[k];
        const char *feature = mc__msl_refused_feature(&v, k);
        if (feature)
            return fail_at(x, t->line, "%.*s (in macro '%.*s'): %s are outside the compute subset", (int)t->len,
                           x->s + t->start, nl, nm, feature);
        size_t an, aa, ae;
        if (k + 1 < m->te && mc__msl_attr_at(&v, k, &an, &aa, &ae) && an < m->te) {
            bool refused = mc__msl_attr_refused(&v, an);
            free(v.error);
            v.error = NULL;
            if (refused || front_end_attr(&v, an))
                return fail_at(x, t->line,
                               "macro '%.*s' holds the attribute [[%.*s]]: the MSL front end reads attributes "
                               "before the preprocessor runs, so write it out where it is used",
                               nl, nm, (int)x->M.t[an].len, x->s + x->M.t[an].start);
        }
        if (is(&v, k, "threadgroup") && !punct(&v, k + 1, '('))
            return fail_at(x, t->line,
                           "macro '%.*s' holds 'threadgroup': the MSL front end places threadgroup memory "
                           "before the preprocessor runs, so write the declaration out where it is used",
                           nl, nm);
        if (is(&v, k, "kernel") || is(&v, k, "vertex") || is(&v, k, "fragment"))
            return fail_at(x, t->line,
                           "macro '%.*s' holds '%.*s': the MSL front end finds kernels before the "
                           "preprocessor runs, so write the function out",
                           nl, nm, (int)t->len, x->s + t->start);
    }
    return true;
}

bool mc__msl_read_macros(xlat *x)
{
    for (size_t i = 0; i < x->L.n; i++) {
        const tok *t = &x->L.t[i];
        if (t->kind != T_PP) continue;
        const char *s = x->s + t->start, *end = s + t->len, *p = s + 1;
        while (p < end && (*p == ' ' || *p == '\t')) p++;
        const char *dir = p;
        while (p < end && isalpha((unsigned char)*p)) p++;
        size_t dl = (size_t)(p - dir);
        if ((dl == 7 && !memcmp(dir, "include", 7)) || (dl == 6 && !memcmp(dir, "import", 6))) {
            while (p < end && (*p == ' ' || *p == '\t')) p++;
            if ((size_t)(end - p) < 7 || memcmp(p, "<metal_", 7) != 0) x->unread_include = true;
            continue;
        }
        if (dl != 6 || memcmp(dir, "define", 6) != 0) continue;
        while (p < end && (*p == ' ' || *p == '\t')) p++;
        const char *nb = p;
        while (p < end && (isalnum((unsigned char)*p) || *p == '_')) p++;
        if (p == nb) continue; /* clang reports it */
        msl_macro m = {(uint32_t)(nb - x->s), (uint32_t)(p - nb), t->line, 0, 0, false, false, false};
        if (p < end && *p == '(') { /* function-like: the parameters are not its body */
            while (p < end && *p != ')') p++;
            if (p < end) p++;
        }
        m.tb = x->M.n;
        uint32_t line = t->line; /* the body's first line: after any continued lines of the name */
        for (const char *c = s; c < p; c++) line += *c == '\n';
        if (!mc__msl_lex_range(x->s, (size_t)(p - x->s), t->start + t->len, line, &x->M) || !push_macro(x, m))
            return fail_at(x, t->line, "out of host memory");
        x->macros[x->nmacro - 1].te = x->M.n;
    }
    /* used: named by the source's tokens, or by a used macro's body */
    for (size_t i = 0; i < x->L.n; i++) {
        if (x->L.t[i].kind != T_IDENT) continue;
        for (size_t m = 0; m < x->nmacro; m++)
            if (name_is(x, &x->macros[m], &x->L.t[i])) x->macros[m].used = true;
    }
    for (bool changed = true; changed;) {
        changed = false;
        for (size_t m = 0; m < x->nmacro; m++) {
            if (!x->macros[m].used) continue;
            for (size_t k = x->macros[m].tb; k < x->macros[m].te; k++)
                for (size_t n = 0; n < x->nmacro; n++)
                    if (!x->macros[n].used && name_is(x, &x->macros[n], &x->M.t[k])) x->macros[n].used = changed = true;
        }
    }
    xlat v = body_view(x);
    for (size_t m = 0; m < x->nmacro; m++) {
        msl_macro *mm = &x->macros[m];
        for (size_t k = mm->tb; k < mm->te; k++) mm->returns = mm->returns || is(&v, k, "return");
        if (mm->used && !refuse_hidden(x, mm)) return false;
    }
    return true;
}

static const msl_macro *macro_named(const xlat *x, const tok *t, size_t from)
{
    for (size_t m = from; m < x->nmacro; m++)
        if (name_is(x, &x->macros[m], t)) return &x->macros[m];
    return NULL;
}

bool mc__msl_names_group_macro(const xlat *x, size_t i)
{
    const tok *t = &x->L.t[i];
    for (size_t m = 0; m < x->nmacro; m++)
        if (x->macros[m].group && name_is(x, &x->macros[m], t)) return true;
    return false;
}

bool mc__msl_names_returning_macro(const xlat *x, size_t i)
{
    const tok *t = &x->L.t[i];
    for (size_t m = 0; m < x->nmacro; m++)
        if (x->macros[m].returns && name_is(x, &x->macros[m], t)) return true;
    return false;
}

bool mc__msl_named_in_macro(const xlat *x, size_t i)
{
    const tok *t = &x->L.t[i];
    for (size_t k = 0; k < x->M.n; k++) {
        const tok *b = &x->M.t[k];
        if (b->kind == T_IDENT && b->len == t->len && !memcmp(x->s + b->start, x->s + t->start, t->len)) return true;
    }
    return false;
}

/* token t (of the source or of a body) names a function of F that uses a
 * barrier or a SIMD-group function */
static bool names_using_fn(const xlat *x, const fn_bodies *F, const tok *t)
{
    if (t->kind != T_IDENT) return false;
    for (size_t g = 0; g < F->n; g++) {
        const tok *nt = &x->L.t[F->name[g]];
        if (F->uses[g] && nt->len == t->len && !memcmp(x->s + nt->start, x->s + t->start, t->len)) return true;
    }
    return false;
}

void mc__msl_mark_group_macros(xlat *x, fn_bodies *F)
{
    for (bool changed = true; changed;) {
        changed = false;
        for (size_t m = 0; m < x->nmacro; m++) {
            msl_macro *mm = &x->macros[m];
            for (size_t k = mm->tb; k < mm->te && !mm->group; k++) {
                const tok *t = &x->M.t[k];
                bool paste = t->kind == T_PUNCT && x->s[t->start] == '#' && k + 1 < mm->te &&
                             x->M.t[k + 1].kind == T_PUNCT && x->s[x->M.t[k + 1].start] == '#' &&
                             x->M.t[k + 1].start == t->start + 1;
                bool group = paste;
                if (t->kind == T_IDENT) {
                    const msl_macro *o = NULL;
                    group = is_fiber_name(x->s + t->start, t->len) || names_using_fn(x, F, t);
                    for (size_t from = 0; !group && (o = macro_named(x, t, from)) != NULL;
                         from = (size_t)(o - x->macros) + 1)
                        group = o->group;
                }
                if (group) mm->group = changed = true;
            }
        }
        for (size_t f = 0; f < F->n; f++) {
            if (F->uses[f]) continue;
            for (size_t k = F->body_b[f]; k < F->body_e[f] && !F->uses[f]; k++) {
                /* named at all, not only called: a macro's arguments may hold a
                 * function that its body calls (CALL(helper)) */
                if (is_fiber_token(x, k) || names_using_fn(x, F, &x->L.t[k])) F->uses[f] = changed = true;
            }
        }
    }
}

/* The SIMD-group functions of the CPU header (src/msl/mc_msl_cpu.h) that
 * take their call site as trailing `line, col` arguments. */
static bool site_fn(const xlat *v, size_t k)
{
    static const char *const fns[] = {"sum",
                                      "product",
                                      "min",
                                      "max",
                                      "prefix_inclusive_sum",
                                      "prefix_exclusive_sum",
                                      "prefix_inclusive_product",
                                      "prefix_exclusive_product",
                                      "broadcast_first",
                                      "shuffle",
                                      "broadcast",
                                      "shuffle_up",
                                      "shuffle_down",
                                      "shuffle_xor",
                                      "shuffle_rotate_up",
                                      "shuffle_rotate_down",
                                      "and",
                                      "or",
                                      "xor",
                                      "ballot",
                                      "all",
                                      "any",
                                      "is_first"};
    const tok *t = &v->L.t[k];
    const char *ts = v->s + t->start;
    if (t->kind != T_IDENT || t->len < 6) return false;
    if (t->len == 24 && !memcmp(ts, "simd_active_threads_mask", 24)) return true;
    if (memcmp(ts, "simd_", 5) != 0 && memcmp(ts, "quad_", 5) != 0) return false;
    for (size_t f = 0; f < MC__ARRAY_LEN(fns); f++)
        if (strlen(fns[f]) == t->len - 5 && !memcmp(ts + 5, fns[f], t->len - 5)) return true;
    return false;
}

/* The rewrites translate_tokens makes in code, in a body: `float4(...)`
 * -> `mc::make<float4>(...)`, `1.5h` -> `half(1.5f)`. And on the CPU
 * device a SIMD-group call gets its own call site: the fibers resolve a
 * SIMD-group function over the lanes waiting at the same site
 * (__builtin_LINE and __builtin_COLUMN), which in a macro's body is where
 * the macro is expanded, the same for every call in the body; then
 * `(c) ? simd_sum(x) : simd_max(x)` there would mix the lanes of both
 * branches. Call n of the body adds n << 12 to the column (lines are
 * shorter than 4096 columns; 20 bits of column in the site). */
#define MACRO_SITE_CALLS 200
void mc__msl_rewrite_macro_body(xlat *x, size_t i)
{
    const tok *pp = &x->L.t[i];
    for (size_t m = 0; m < x->nmacro; m++) {
        const msl_macro *mm = &x->macros[m];
        if (mm->name_start < pp->start || mm->name_start >= pp->start + pp->len) continue;
        xlat v = body_view(x);
        /* where each tagged call's ')' is, and the text that goes before it */
        size_t close[MACRO_SITE_CALLS];
        bool empty[MACRO_SITE_CALLS];
        size_t ncall = 0;
        for (size_t k = mm->tb; x->target == MC__MSL_CPU && k + 1 < mm->te && ncall < MACRO_SITE_CALLS; k++) {
            if (!site_fn(&v, k) || !punct(&v, k + 1, '(')) continue;
            size_t c = k + 1;
            for (int d = 0; c < mm->te; c++)
                if (punct(&v, c, '(')) d++;
                else if (punct(&v, c, ')') && --d == 0) break;
            if (c >= mm->te) continue;
            empty[ncall] = c == k + 2;
            close[ncall++] = c;
        }
        for (size_t k = mm->tb; k < mm->te; k++) {
            const tok *t = &x->M.t[k];
            const char *ts = x->s + t->start;
            char buf[96];
            for (size_t n = 0; n < ncall; n++) {
                if (close[n] != k) continue;
                snprintf(buf, sizeof buf, "%s__builtin_LINE(), __builtin_COLUMN() + %zuu", empty[n] ? "" : ", ",
                         (n + 1) << 12);
                copy_to(x, t->start);
                put(&x->out, buf, strlen(buf));
            }
            buf[0] = '\0';
            if (t->kind == T_NUMBER) {
                char last = ts[t->len - 1];
                if ((last == 'h' || last == 'H') && !(t->len > 1 && (ts[1] == 'x' || ts[1] == 'X'))) {
                    bool fl = memchr(ts, '.', t->len) || memchr(ts, 'e', t->len) || memchr(ts, 'E', t->len);
                    snprintf(buf, sizeof buf, "half(%.*s%s)", (int)MC__MIN(t->len - 1, 64u), ts, fl ? "f" : "");
                }
            } else if (mc__msl_is_vector_type(&v, k) && k + 1 < mm->te && punct(&v, k + 1, '(') &&
                       !(k > mm->tb && punct(&v, k - 1, '<'))) {
                snprintf(buf, sizeof buf, "mc::make<%.*s>", (int)t->len, ts);
            }
            if (!buf[0]) continue;
            copy_to(x, t->start);
            put(&x->out, buf, strlen(buf));
            x->pos = t->start + t->len;
        }
        return;
    }
}

void mc__msl_free_macros(xlat *x)
{
    free(x->M.t);
    free(x->macros);
    x->M.t = NULL;
    x->macros = NULL;
    x->nmacro = x->mcap = 0;
}
