/*
 * DOC: MSL front end: how each kernel runs on the CPU device
 *
 * Chooses the execution path of every kernel: a plain loop over the
 * group's threads (no barrier and no SIMD-group function, in the kernel or
 * anything it calls), coroutines (barriers that are calls in the kernel's
 * own body) or fibers (everything else), and for plain loops whether the
 * bounds test can be hoisted. Then writes the C entry points of the CPU
 * kernel ABI (mc/mc_cpu_kernel.h) that bind each parameter and run the
 * chosen path. The parts of the front end are listed in cpu_msl.h.
 */
#include "backends/cpu/cpu_msl.h"

/* The top-level functions (fn_bodies, cpu_msl.h). Which use a barrier or
 * a SIMD-group function is decided with the macros (mc__msl_mark_group_macros:
 * a function that names a group macro uses one, a macro that names such a
 * function is one). */
void mc__msl_find_functions(xlat *x, fn_bodies *F)
{
    F->n = 0;
    F->nother = 0;
    F->global = x->unread_include; /* what its macros and functions hold is not known */
    for (size_t i = 0; i < x->L.n; i++) {
        if (!punct(x, i, '{')) continue;
        /* the matching brace */
        size_t e = i;
        int d = 0;
        for (; e < x->L.n; e++) {
            if (punct(x, e, '{')) d++;
            else if (punct(x, e, '}') && --d == 0) break;
        }
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
            F->name[F->n] = nm, F->body_b[F->n] = i, F->body_e[F->n] = e, F->uses[F->n] = false;
            F->coro[F->n] = false;
            F->guard[F->n] = NULL;
            F->regions[F->n] = NULL;
            F->n++;
        } else if (!fn && F->nother < MAX_FNS) {
            F->other_b[F->nother] = i, F->other_e[F->nother++] = e;
        } else {
            F->global = true; /* not followed: count it everywhere */
        }
        i = e; /* top-level bodies only */
    }
    mc__msl_mark_group_macros(x, F);
    /* methods and namespaces: a barrier there, or a call from there to a
     * function or macro with one, counts for every kernel */
    for (size_t o = 0; o < F->nother && !F->global; o++)
        for (size_t k = F->other_b[o]; k < F->other_e[o] && k < x->L.n && !F->global; k++) {
            F->global = is_fiber_token(x, k);
            for (size_t g = 0; g < F->n && !F->global; g++)
                F->global = F->uses[g] && x->L.t[k].kind == T_IDENT && same_ident(x, k, F->name[g]);
        }
    /* a group macro used at file scope may define functions the scan
     * cannot see (`DEFINE_SYNC(name)` making `void name() { barrier }`) */
    for (size_t i = 0; i < x->L.n && !F->global; i++) {
        if (punct(x, i, '{')) {
            for (int d = 0; i < x->L.n; i++)
                if (punct(x, i, '{')) d++;
                else if (punct(x, i, '}') && --d == 0) break;
            continue;
        }
        F->global = x->L.t[i].kind == T_IDENT && mc__msl_names_group_macro(x, i);
    }
}

/* Which kernels need every thread of a group at once: those that use a
 * barrier or a SIMD-group function, themselves or through a function they
 * call. The others run as a plain loop; the coroutine kernels (below) run
 * their threads as coroutines, the rest as fibers. */
void mc__msl_mark_fiber_kernels(xlat *x)
{
    const fn_bodies *F = x->fns;
    for (size_t k = 0; k < x->nkern; k++) {
        kern *kn = &x->kerns[k];
        kn->fibers = F->global || F->n == MAX_FNS;
        kn->guard = -1;
        for (size_t f = 0; f < F->n && !kn->fibers; f++)
            if (F->uses[f] && same_ident(x, F->name[f], kn->name_tok)) kn->fibers = true;
        /* a kernel whose body the scan did not find (a macro makes it) may
         * hold anything: it runs every thread of its group */
        bool own = kn->callee != NULL; /* an instance: its template's marks, later */
        for (size_t f = 0; f < F->n && !own; f++) own = F->name[f] == kn->name_tok;
        if (!own) kn->fibers = true;
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
        /* a macro holding `return`: the return could not become co_return */
        if (is_fiber_token(x, k) || mc__msl_names_returning_macro(x, k) || is(x, k, "struct") || is(x, k, "class") ||
            is(x, k, "union") || (t->len > 3 && !strncmp(x->s + t->start, "co_", 3)))
            return false;
        /* named, not only called: a macro's arguments may hold it (CALL(f)) */
        for (size_t g = 0; g < F->n; g++)
            if (F->uses[g] && same_ident(x, k, F->name[g])) return false;
    }
    return barrier;
}

void mc__msl_plan_coroutines(xlat *x)
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

/* A threadgroup variable (its name and semicolon tokens) written as a
 * thread-local variable of another name and `name` a reference to it,
 * taken once (mc::opaque: else the compiler folds the reference back into
 * a thread-local lookup at each use). */
void mc__msl_emit_tg_reference(xlat *x, size_t name, size_t semi)
{
    const tok *nt = &x->L.t[name];
    copy_to(x, nt->start);
    put(&x->out, "mc_tg_", 6);
    copy_to(x, x->L.t[semi].start + 1);
    putf(&x->out, " auto &%.*s = *mc::opaque(&mc_tg_%.*s);", (int)nt->len, x->s + nt->start, (int)nt->len,
         x->s + nt->start);
}

/* A threadgroup variable of a coroutine kernel (`threadgroup T name[...];`
 * at token i, its name and semicolon): the frame keeps the reference, so
 * a resumed thread reaches it without a thread-local lookup. */
bool mc__msl_coro_tg_var(xlat *x, size_t i, size_t name, size_t semi)
{
    if (coro_body_of(x, i) < 0) return false;
    mc__msl_emit_tg_reference(x, name, semi);
    return true;
}

/* Token i of a coroutine kernel, rewritten: its return type, its barriers
 * and its returns. True when replaced. */
bool mc__msl_coro_rewrite(xlat *x, size_t i)
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
    size_t close;    /* the ')' of the kernel's parameter list */
    size_t lp, rp;   /* the if's parentheses */
    bool ge;         /* `>=`: the test says who leaves */
    size_t e_b, e_e; /* E: tokens [e_b, e_e) */
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

void mc__msl_plan_guards(xlat *x)
{
    fn_bodies *F = x->fns;
    for (size_t f = 0; f < F->n && F->n < MAX_FNS; f++) F->guard[f] = guard_eligible(x, F, f);
}

void mc__msl_free_guards(fn_bodies *F)
{
    for (size_t f = 0; F && f < F->n; f++) free(F->guard[f]);
}

/* The parentheses of a hoisted test, and the end of its kernel's
 * parameter list. True when replaced. */
bool mc__msl_guard_rewrite(xlat *x, size_t i)
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

void mc__msl_emit_cpu_entries(xlat *x)
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
                putf(o, "    mc::arg_store<P::at<%u>::raw>::type a%u = mc::buffer_arg<P::at<%u>::raw>(ctx, %u);\n", p,
                     p, p, pa->slot);
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
                 kn->regions  ? "run_regions"
                 : kn->coro   ? "run_group_coro"
                 : kn->fibers ? "run_group"
                              : "run_loop");
        }
        if (!kn->fibers && kn->guard < 0 && !kn->callee)
            emit_rows_entry(x, kn); /* rows call the kernel by its own name */
    }
}
