/*
 * DOC: MSL front end: kernel signatures and templates
 *
 * What the compute subset holds (the built-in attributes and the value each
 * binds, the identifiers and attributes of refused features), the parameter
 * list of each kernel with the attribute that binds every parameter, and
 * kernel templates with their [[host_name]] instantiations, each of which
 * becomes a kernel of its own. The parts of the front end are listed in
 * cpu_msl.h.
 */
#include "backends/cpu/cpu_msl.h"

#include <ctype.h>

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

const char *mc__msl_builtin_expr(const xlat *x, size_t an)
{
    for (size_t b = 0; b < MC__ARRAY_LEN(builtin_attrs); b++)
        if (is(x, an, builtin_attrs[b].name)) return builtin_attrs[b].expr;
    return NULL;
}

/* identifiers that name a feature outside the compute subset */
typedef struct refused {
    const char *ident;
    const char *feature;
} refused;

static const refused refused_idents[] = {
    {"texture1d", "textures"},
    {"texture1d_array", "textures"},
    {"texture2d", "textures"},
    {"texture2d_array", "textures"},
    {"texture2d_ms", "textures"},
    {"texture2d_ms_array", "textures"},
    {"texture3d", "textures"},
    {"texturecube", "textures"},
    {"texturecube_array", "textures"},
    {"texture_buffer", "textures"},
    {"depth2d", "textures"},
    {"depth2d_array", "textures"},
    {"depth2d_ms", "textures"},
    {"depthcube", "textures"},
    {"depthcube_array", "textures"},
    {"sampler", "samplers"},
    {"constexpr_sampler", "samplers"},
    {"raytracing", "ray tracing"},
    {"intersector", "ray tracing"},
    {"acceleration_structure", "ray tracing"},
    {"primitive_acceleration_structure", "ray tracing"},
    {"instance_acceleration_structure", "ray tracing"},
    {"intersection_function_table", "ray tracing"},
    {"intersection_result", "ray tracing"},
    {"visible_function_table", "visible functions"},
    {"imageblock", "imageblocks"},
    {"mesh_grid_properties", "mesh and object stages"},
    {"object_data", "mesh and object stages"},
    {"simdgroup_matrix", "SIMD-group matrices"},
    {"simdgroup_float8x8", "SIMD-group matrices"},
    {"simdgroup_half8x8", "SIMD-group matrices"},
    {"simdgroup_load", "SIMD-group matrices"},
    {"simdgroup_store", "SIMD-group matrices"},
    {"simdgroup_multiply_accumulate", "SIMD-group matrices"},
};

/* attributes that belong to features outside the subset */
static const refused refused_attrs[] = {
    {"texture", "textures"},
    {"sampler", "samplers"},
    {"stage_in", "render stages"},
    {"position", "render stages"},
    {"color", "render stages"},
    {"vertex_id", "render stages"},
    {"instance_id", "render stages"},
    {"visible", "visible functions"},
    {"intersection", "ray tracing"},
    {"mesh", "mesh and object stages"},
    {"object", "mesh and object stages"},
    {"vertex", "render stages"},
    {"fragment", "render stages"},
    {"imageblock_data", "imageblocks"},
    {"raster_order_group", "render stages"},
    {"payload", "mesh and object stages"},
};

bool mc__msl_attr_refused(xlat *x, size_t an)
{
    for (size_t r = 0; r < MC__ARRAY_LEN(refused_attrs); r++)
        if (is(x, an, refused_attrs[r].ident)) {
            fail_at(x, x->L.t[an].line, "[[%s]]: %s are outside the compute subset", refused_attrs[r].ident,
                    refused_attrs[r].feature);
            return true;
        }
    return false;
}

/* [[ at i: the attribute's name token and the index past ]]; false if not one */
bool mc__msl_attr_at(const xlat *x, size_t i, size_t *name, size_t *arg, size_t *end)
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

bool mc__msl_tok_uint(const xlat *x, size_t i, uint32_t *v)
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
/* The kernel whose name is token name_tok, its parameters between the
 * parentheses at open. */
bool mc__msl_parse_kernel(xlat *x, size_t name_tok, size_t open, size_t *close)
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
        if (depth == 1 && mc__msl_attr_at(x, i, &an, &aa, &ae)) {
            param *p = &k->params[k->nparam];
            const tok *at = &x->L.t[an];
            if (is(x, an, "buffer") || is(x, an, "threadgroup")) {
                uint32_t slot;
                bool buf = is(x, an, "buffer");
                if (!aa || !mc__msl_tok_uint(x, aa, &slot))
                    return fail_at(x, at->line, "[[%s(n)]] needs a constant index", buf ? "buffer" : "threadgroup");
                uint32_t lim = buf ? MC_CPU_MAX_ARGS : MC_CPU_MAX_TG_MEM;
                if (slot >= lim)
                    return fail_at(x, at->line, "%s index %u is beyond the %u %s slots (0 to %u)",
                                   buf ? "buffer" : "threadgroup", slot, lim, buf ? "buffer" : "threadgroup memory",
                                   lim - 1);
                p->kind = buf ? P_BUFFER : P_TG;
                p->slot = slot;
            } else {
                if (mc__msl_attr_refused(x, an)) return false;
                p->kind = P_BUILTIN;
                p->expr = NULL;
                for (size_t b = 0; b < MC__ARRAY_LEN(builtin_attrs); b++)
                    if (is(x, an, builtin_attrs[b].name)) p->expr = builtin_attrs[b].expr;
                if (!p->expr)
                    return fail_at(x, at->line, "kernel parameter attribute [[%.*s]] is not supported", (int)at->len,
                                   x->s + at->start);
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
    if (i >= x->L.n)
        return fail_at(x, nt->line, "unterminated parameter list of kernel '%.*s'", (int)nt->len, x->s + nt->start);
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
const char *mc__msl_refused_feature(const xlat *x, size_t i)
{
    if (x->L.t[i].kind != T_IDENT) return NULL;
    for (size_t r = 0; r < MC__ARRAY_LEN(refused_idents); r++)
        if (is(x, i, refused_idents[r].ident)) return refused_idents[r].feature;
    return NULL;
}

bool mc__msl_refuse_features(xlat *x)
{
    for (size_t i = 0; i < x->L.n; i++) {
        const char *feature = mc__msl_refused_feature(x, i);
        if (feature)
            return fail_at(x, x->L.t[i].line, "%.*s: %s are outside the compute subset", (int)x->L.t[i].len,
                           x->s + x->L.t[i].start, feature);
    }
    return true;
}
/* ---- kernel templates and [[host_name]] instantiations ------------------------- */

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
void mc__msl_mark_template_kernel(xlat *x, size_t start)
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
bool mc__msl_template_at(xlat *x, size_t *i)
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
    while (mc__msl_attr_at(x, k, &an, &aa, &ae)) {
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
        return fail_at(x, line,
                       "an instantiated kernel template needs [[host_name(\"name\")]], the name pipelines "
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
bool mc__msl_add_instances(xlat *x)
{
    for (size_t k = 0; k < x->ninst; k++) {
        struct instance *in = &x->insts[k];
        for (size_t q = 0; q < x->nkern; q++) {
            const tok *nt = &x->L.t[x->kerns[q].name_tok];
            if (!x->kerns[q].is_template && nt->len == in->host_len &&
                !memcmp(x->s + nt->start, x->s + in->host_start, in->host_len))
                return fail_at(x, in->line, "kernel '%.*s' is defined twice", (int)in->host_len, x->s + in->host_start);
        }
        if (!mc__msl_push_tok(&x->L, T_IDENT, in->host_start, in->host_len, in->line))
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
void mc__msl_inherit_template_fibers(xlat *x)
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
