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
 *
 * This file holds the tokenizer, the lexical rewrites and the driver; the
 * other parts are listed in cpu_msl.h.
 */
#include "backends/cpu/cpu_msl.h"

#include <ctype.h>

static const char *const stage_keywords[] = {"vertex", "fragment", "mesh", "object"};

bool mc__msl_push_tok(lexed *L, uint8_t kind, size_t start, size_t len, uint32_t line)
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

/* Comments and white space are not tokens: they are copied as they are.
 * In a macro's body (macro: s[b, n) is the rest of a #define) a backslash
 * before a newline continues the line and `#` is an operator. */
static bool lex_impl(const char *s, size_t b0, size_t n, uint32_t line, bool macro, lexed *L)
{
    bool line_start = !macro;
    size_t i = b0;
    while (i < n) {
        char c = s[i];
        if (macro && c == '\\' && i + 1 < n && (s[i + 1] == '\n' || s[i + 1] == '\r')) {
            i += s[i + 1] == '\r' && i + 2 < n && s[i + 2] == '\n' ? 3 : 2;
            line++;
            continue;
        }
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
            if (!mc__msl_push_tok(L, T_PP, b, i - b, bl)) return false;
            continue;
        }
        line_start = false;
        if (isalpha((unsigned char)c) || c == '_') {
            while (i < n && (isalnum((unsigned char)s[i]) || s[i] == '_')) i++;
            if (!mc__msl_push_tok(L, T_IDENT, b, i - b, bl)) return false;
        } else if (isdigit((unsigned char)c) || (c == '.' && i + 1 < n && isdigit((unsigned char)s[i + 1]))) {
            while (i < n && (isalnum((unsigned char)s[i]) || s[i] == '.' || s[i] == '_' ||
                             ((s[i] == '+' || s[i] == '-') &&
                              (s[i - 1] == 'e' || s[i - 1] == 'E' || s[i - 1] == 'p' || s[i - 1] == 'P'))))
                i++;
            if (!mc__msl_push_tok(L, T_NUMBER, b, i - b, bl)) return false;
        } else if (c == '"' || c == '\'') {
            i++;
            while (i < n && s[i] != c && s[i] != '\n') i += s[i] == '\\' ? 2 : 1;
            if (i < n) i++;
            if (!mc__msl_push_tok(L, T_STRING, b, i - b, bl)) return false;
        } else {
            i++;
            if (!mc__msl_push_tok(L, T_PUNCT, b, 1, bl)) return false;
        }
    }
    return true;
}

static bool lex(const char *s, size_t n, lexed *L)
{
    return lex_impl(s, 0, n, 1, false, L);
}

bool mc__msl_lex_range(const char *s, size_t b, size_t e, uint32_t line, lexed *L)
{
    return lex_impl(s, b, e, line, true, L);
}
static const char *vector_bases[] = {"float",         "half",         "int",         "uint",        "short",
                                     "ushort",        "char",         "uchar",       "long",        "ulong",
                                     "bool",          "packed_float", "packed_int",  "packed_uint", "packed_short",
                                     "packed_ushort", "packed_char",  "packed_uchar"};

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

bool mc__msl_is_vector_type(const xlat *x, size_t i)
{
    return is_vector_type(x, i);
}

static bool record_fc(xlat *x, uint32_t idx, uint32_t type_start, uint32_t type_len, size_t name, uint32_t bools)
{
    if (x->nfc == x->fccap) {
        size_t ncap = x->fccap ? x->fccap * 2 : 8;
        struct fc_decl *p = realloc(x->fcs, ncap * sizeof *p);
        if (!p) return false;
        x->fcs = p;
        x->fccap = ncap;
    }
    x->fcs[x->nfc++] = (struct fc_decl){idx, type_start, type_len, (uint32_t)name, bools};
    return true;
}

/* The library's function constants for the CPU device to check values
 * against at pipeline creation (mc_cpu_fc_decl, mc/mc_cpu_kernel.h). In the
 * user's namespace, where their types are named as the source names them. */
static void emit_fc_table(xlat *x)
{
    sbuf *o = &x->out;
    putf(o, "\nextern \"C\" MC_KERNEL_EXPORT const mc_cpu_fc_decl mc__function_constants[] = {\n");
    for (size_t k = 0; k < x->nfc; k++) {
        const struct fc_decl *f = &x->fcs[k];
        const tok *nt = &x->L.t[f->name_tok];
        int tl = (int)f->type_len;
        const char *ts = x->s + f->type_start;
        if (f->bools) putf(o, "    {%uu, %uu, ", f->idx, f->bools);
        else putf(o, "    {%uu, mc::fc_api_size<mc::remove_cv<%.*s>::type>::value, ", f->idx, tl, ts);
        put(o, "\"", 1);
        for (int c = 0; c < tl; c++) /* one line, nothing to escape: a message, not code */
            if (ts[c] != '"' && ts[c] != '\\') put(o, isspace((unsigned char)ts[c]) ? " " : ts + c, 1);
        putf(o, " %.*s\"},\n", (int)nt->len, x->s + nt->start);
    }
    putf(o, "    {0u, 0u, nullptr}};\n");
}

static bool translate_tokens(xlat *x)
{
    if (!mc__msl_refuse_features(x)) return false;
    int depth = 0; /* braces */
    int paren = 0;
    int fn_depth = -1;      /* brace depth of the current function body at depth 0 -> 1 */
    char tg_sum[2048] = ""; /* sizeof() terms of this function's threadgroup variables */
    for (size_t i = 0; i < x->L.n && !x->error; i++) {
        if (mc__msl_regions_rewrite(x, &i)) continue;
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
                                       lt[7] == 't'   ? "textures"
                                       : lt[7] == 'r' ? "ray tracing"
                                                      : "imageblocks");
                    replace_tok(x, i, ""); /* the standard library is forced in */
                }
            }
            mc__msl_rewrite_macro_body(x, i);
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
            if ((c == '(' || c == ')') && mc__msl_guard_rewrite(x, i)) continue;
            size_t an, aa, ae;
            if (c == '[' && mc__msl_attr_at(x, i, &an, &aa, &ae)) {
                const tok *at = &x->L.t[an];
                if (mc__msl_attr_refused(x, an)) return false;
                if (is(x, an, "kernel") && depth == 0) {
                    /* [[kernel]] void name(...) */
                    replace_tok(x, i, "");
                    x->pos = x->L.t[ae - 1].start + 1; /* the whole attribute goes */
                    size_t nm = ae + 1;
                    if (!is(x, ae, "void") || nm >= x->L.n || x->L.t[nm].kind != T_IDENT || !punct(x, nm + 1, '('))
                        return fail_at(x, at->line, "a kernel must be 'kernel void name(...)'");
                    replace_tok(x, ae, "__attribute__((always_inline)) inline void");
                    size_t close;
                    if (!mc__msl_parse_kernel(x, nm, nm + 1, &close)) return false;
                    mc__msl_mark_template_kernel(x, i);
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
        if (mc__msl_coro_rewrite(x, i)) continue;
        bool stmt_start = i == 0 || punct(x, i - 1, ';') || punct(x, i - 1, '}') || punct(x, i - 1, ']') ||
                          x->L.t[i - 1].kind == T_PP;
        if (depth == 0 && stmt_start) {
            for (size_t r = 0; r < MC__ARRAY_LEN(stage_keywords); r++)
                if (is(x, i, stage_keywords[r]) && i + 1 < x->L.n && x->L.t[i + 1].kind == T_IDENT)
                    return fail_at(x, t->line, "%s functions: %s stages are outside the compute subset",
                                   stage_keywords[r], r < 2 ? "render" : "mesh and object");
        }
        if (t->len > 5 && (!strncmp(ts, "simd_", 5) || !strncmp(ts, "quad_", 5))) x->fibers = true;
        if (is(x, i, "threadgroup_barrier") || is(x, i, "simdgroup_barrier")) x->fibers = true;
        if (is(x, i, "template") && depth == 0) {
            if (!mc__msl_template_at(x, &i)) return false;
            continue;
        }
        if (is(x, i, "kernel") && depth == 0) {
            size_t nm = i + 2;
            if (!is(x, i + 1, "void") || nm >= x->L.n || x->L.t[nm].kind != T_IDENT || !punct(x, nm + 1, '('))
                return fail_at(x, t->line, "a kernel must be 'kernel void name(...)'");
            size_t close;
            if (!mc__msl_parse_kernel(x, nm, nm + 1, &close)) return false;
            mc__msl_mark_template_kernel(x, i);
            continue;
        }
        if (is(x, i, "constant") && depth == 0 && stmt_start) {
            /* constant T name [[function_constant(i)]]; */
            size_t k = i + 1, an = 0, aa = 0, ae = 0;
            bool fc = false;
            for (; k < x->L.n && !punct(x, k, ';'); k++) {
                if (mc__msl_attr_at(x, k, &an, &aa, &ae) && is(x, an, "function_constant")) {
                    fc = true;
                    break;
                }
            }
            if (!fc) continue;
            uint32_t idx;
            if (!aa || !mc__msl_tok_uint(x, aa, &idx))
                return fail_at(x, t->line, "[[function_constant(n)]] needs a constant index");
            size_t name = k - 1;
            if (name <= i + 1 || x->L.t[name].kind != T_IDENT || !punct(x, ae, ';'))
                return fail_at(x, t->line, "a function constant must read 'constant T name [[function_constant(n)]];'");
            if (idx >= MC_CPU_MAX_CONSTANTS)
                return fail_at(x, t->line, "function constant index %u is beyond the %u indices (0 to %u)", idx,
                               MC_CPU_MAX_CONSTANTS, MC_CPU_MAX_CONSTANTS - 1);
            uint32_t tys = x->L.t[i + 1].start, tyl = x->L.t[name - 1].start + x->L.t[name - 1].len - tys;
            /* bool vectors are integer masks here, but one byte a component
             * through the API (Metal's): read by the header's fc_bools */
            uint32_t bools = 0;
            if (name == i + 2 && tyl == 5 && !memcmp(x->s + tys, "bool", 4) && x->s[tys + 4] >= '2' &&
                x->s[tys + 4] <= '4')
                bools = (uint32_t)(x->s[tys + 4] - '0');
            if (!record_fc(x, idx, tys, tyl, name, bools)) return fail_at(x, t->line, "out of host memory");
            copy_to(x, t->start);
            if (bools) {
                putf(&x->out, "MC_FUNCTION_CONSTANT_BOOLS(%u", bools);
            } else {
                put(&x->out, "MC_FUNCTION_CONSTANT(", 21);
                put(&x->out, x->s + tys, tyl);
            }
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
            if (!mc__msl_coro_tg_var(x, i, name, k) && !mc__msl_regions_tg_var(x, i, name, k))
                copy_to(x, x->L.t[k].start + 1);
            size_t used = strlen(tg_sum);
            snprintf(tg_sum + used, sizeof tg_sum - used, "%ssizeof(%.*s)", used ? " + " : "", (int)x->L.t[name].len,
                     x->s + x->L.t[name].start);
            putf(&x->out,
                 " static_assert(%s <= MC_MSL_MAX_TGMEM, \"threadgroup memory exceeds the device's limit of "
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
    static const char cuda_head[] =
        "#pragma clang force_cuda_host_device begin\nnamespace mc_user {\n#line 1 \"program_source\"\n";
    if (target == MC__MSL_CUDA) put(&x.out, cuda_head, sizeof cuda_head - 1);
    else put(&x.out, head, sizeof head - 1);
    fn_bodies *fns = mc__calloc(1, sizeof *fns);
    if (!fns) {
        free(x.L.t);
        return mc__fail(MC_ERR_NO_MEMORY, "out of host memory");
    }
    bool macros_ok = mc__msl_read_macros(&x);
    mc__msl_find_functions(&x, fns);
    x.fns = fns;
    if (target == MC__MSL_CPU) {
        mc__msl_plan_coroutines(&x);
        mc__msl_plan_regions(&x);
        mc__msl_plan_guards(&x);
    }
    x.tmpl_end = SIZE_MAX;
    bool ok = macros_ok && translate_tokens(&x) && mc__msl_add_instances(&x);
    if (ok) {
        copy_to(&x, len);
        if (!x.nkern) ok = fail_at(&x, 1, "no kernel function ('kernel void name(...)') in the source");
    }
    if (ok) mc__msl_mark_fiber_kernels(&x);
    if (ok) mc__msl_inherit_template_fibers(&x);
    if (ok && target == MC__MSL_CPU) emit_fc_table(&x);
    if (ok && target == MC__MSL_CUDA) ok = mc__msl_emit_cuda_entries(&x);
    else if (ok) mc__msl_emit_cpu_entries(&x);
    free(x.L.t);
    for (size_t k = 0; k < x.nkern; k++) free(x.kerns[k].callee);
    for (size_t k = 0; k < x.ninst; k++) free(x.insts[k].callee);
    free(x.kerns);
    free(x.insts);
    free(x.fcs);
    mc__msl_free_macros(&x);
    mc__msl_free_guards(fns);
    mc__msl_free_regions(fns);
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
