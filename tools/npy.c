/*
 * The .npy format (NumPy's own description, numpy.lib.format): a magic
 * string, a version, a header length, a Python dict literal with 'descr',
 * 'fortran_order' and 'shape', padded so the data starts aligned, then the
 * raw elements. Only what a state buffer can be is accepted: numeric
 * little-endian dtypes, C order, 1 to 3 dimensions. Anything else is
 * refused with the reason, never guessed.
 */
#include "npy.h"

#include "core/core.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const struct {
    mc_npy_dtype t;
    const char *name, *code;
    size_t size;
} dtypes[] = {
    {MC_NPY_F32, "float32", "f4", 4}, {MC_NPY_F64, "float64", "f8", 8}, {MC_NPY_I8, "int8", "i1", 1},
    {MC_NPY_U8, "uint8", "u1", 1},    {MC_NPY_I16, "int16", "i2", 2},   {MC_NPY_U16, "uint16", "u2", 2},
    {MC_NPY_I32, "int32", "i4", 4},   {MC_NPY_U32, "uint32", "u4", 4},  {MC_NPY_I64, "int64", "i8", 8},
    {MC_NPY_U64, "uint64", "u8", 8},
};

const char *mc_npy_dtype_name(mc_npy_dtype t)
{
    for (size_t i = 0; i < MC__ARRAY_LEN(dtypes); i++)
        if (dtypes[i].t == t) return dtypes[i].name;
    return NULL;
}

static const char *dtype_code(mc_npy_dtype t)
{
    for (size_t i = 0; i < MC__ARRAY_LEN(dtypes); i++)
        if (dtypes[i].t == t) return dtypes[i].code;
    return NULL;
}

mc_npy_dtype mc_npy_dtype_parse(const char *s)
{
    if (!s) return MC_NPY_NONE;
    /* One byte has no order: NumPy writes '|u1'. */
    if (s[0] == '<' || s[0] == '|') s++;
    for (size_t i = 0; i < MC__ARRAY_LEN(dtypes); i++)
        if (!strcmp(s, dtypes[i].name) || !strcmp(s, dtypes[i].code)) return dtypes[i].t;
    return MC_NPY_NONE;
}

size_t mc_npy_dtype_size(mc_npy_dtype t)
{
    for (size_t i = 0; i < MC__ARRAY_LEN(dtypes); i++)
        if (dtypes[i].t == t) return dtypes[i].size;
    return 0;
}

size_t mc_npy_count(const mc_npy *a)
{
    size_t n = 1, es = mc_npy_dtype_size(a->dtype);
    if (!es || !a->ndim) return 0;
    for (uint32_t i = 0; i < a->ndim; i++) {
        if (a->shape[i] == 0 || a->shape[i] > SIZE_MAX / es / n) return 0;
        n *= (size_t)a->shape[i];
    }
    return n;
}

void mc_npy_free(mc_npy *a)
{
    if (!a) return;
    free(a->data);
    memset(a, 0, sizeof *a);
}

#define WHY(...) (snprintf(why, why_cap, __VA_ARGS__), false)

/* The value of 'key' in the header dict: a pointer just past "'key':". */
static const char *dict_value(const char *h, const char *key)
{
    char pat[32];
    snprintf(pat, sizeof pat, "'%s'", key);
    const char *p = strstr(h, pat);
    if (!p) return NULL;
    p += strlen(pat);
    while (*p == ' ') p++;
    if (*p != ':') return NULL;
    p++;
    while (*p == ' ') p++;
    return p;
}

static bool parse_header(const char *h, mc_npy *out, char *why, size_t why_cap)
{
    const char *d = dict_value(h, "descr");
    if (!d || *d != '\'') return WHY("the header has no 'descr' string (structured dtypes are not supported)");
    char descr[16];
    size_t n = 0;
    for (d++; *d && *d != '\'' && n + 1 < sizeof descr; d++) descr[n++] = *d;
    descr[n] = '\0';
    if (*d != '\'') return WHY("dtype '%s...' is not one a state buffer can be", descr);
    if (descr[0] == '>' && strcmp(descr + 1, "u1") && strcmp(descr + 1, "i1"))
        return WHY("dtype '%s' is big-endian; save it little-endian (astype('<%s'))", descr, descr + 1);
    out->dtype = mc_npy_dtype_parse(descr[0] == '>' ? descr + 1 : descr);
    if (out->dtype == MC_NPY_NONE)
        return WHY("dtype '%s' is not supported (float32, float64, int8..int64, uint8..uint64)", descr);
    const char *f = dict_value(h, "fortran_order");
    if (!f) return WHY("the header has no 'fortran_order'");
    if (!strncmp(f, "True", 4)) return WHY("the array is in Fortran order; save np.ascontiguousarray(a)");
    if (strncmp(f, "False", 5)) return WHY("'fortran_order' is neither True nor False");
    const char *s = dict_value(h, "shape");
    if (!s || *s != '(') return WHY("the header has no 'shape' tuple");
    s++;
    out->ndim = 0;
    for (;;) {
        while (*s == ' ') s++;
        if (*s == ')') break;
        if (!isdigit((unsigned char)*s)) return WHY("the shape is not a tuple of sizes");
        errno = 0;
        char *end;
        unsigned long long v = strtoull(s, &end, 10);
        if (errno) return WHY("a size in the shape is too large");
        if (out->ndim == MC_NPY_MAX_DIMS) return WHY("more than %d dimensions", MC_NPY_MAX_DIMS);
        out->shape[out->ndim++] = v;
        s = end;
        while (*s == ' ') s++;
        if (*s == ',') s++;
        else if (*s != ')') return WHY("the shape is not a tuple of sizes");
    }
    if (out->ndim == 0) return WHY("the array is a scalar (0 dimensions); a state buffer needs 1 to 3");
    for (uint32_t i = 0; i < out->ndim; i++)
        if (!out->shape[i]) return WHY("the array is empty (a size in its shape is 0)");
    return true;
}

bool mc_npy_parse(const void *file, size_t len, mc_npy *out, char *why, size_t why_cap)
{
    const uint8_t *b = file;
    memset(out, 0, sizeof *out);
    if (len < 10 || memcmp(b, "\x93NUMPY", 6)) return WHY("not a .npy file (no \\x93NUMPY magic)");
    uint32_t major = b[6];
    size_t hlen, start;
    if (major == 1) {
        hlen = (size_t)b[8] | (size_t)b[9] << 8;
        start = 10;
    } else if (major == 2 || major == 3) {
        if (len < 12) return WHY("truncated header");
        hlen = (size_t)b[8] | (size_t)b[9] << 8 | (size_t)b[10] << 16 | (size_t)b[11] << 24;
        start = 12;
    } else {
        return WHY(".npy format version %u.%u is not supported (1.0 to 3.0)", major, b[7]);
    }
    if (hlen > len - start) return WHY("truncated header (%zu bytes announced, %zu present)", hlen, len - start);
    char *h = malloc(hlen + 1);
    if (!h) return WHY("out of memory");
    memcpy(h, b + start, hlen);
    h[hlen] = '\0';
    bool ok = parse_header(h, out, why, why_cap);
    free(h);
    if (!ok) return false;
    size_t n = mc_npy_count(out);
    if (!n) return WHY("the array is too large for this machine");
    size_t bytes = n * mc_npy_dtype_size(out->dtype);
    size_t have = len - start - hlen;
    if (have != bytes)
        return WHY("%s %zu bytes of data where the shape needs %zu",
                   have < bytes ? "truncated:" : "trailing bytes:", have, bytes);
    out->data = malloc(bytes);
    if (!out->data) return WHY("out of memory for %zu bytes", bytes);
    memcpy(out->data, b + start + hlen, bytes);
    out->bytes = bytes;
    return true;
}

bool mc_npy_read(const char *path, mc_npy *out, char *why, size_t why_cap)
{
    memset(out, 0, sizeof *out);
    FILE *f = fopen(path, "rb");
    if (!f) return WHY("cannot open: %s", strerror(errno));
    uint8_t *buf = NULL;
    size_t len = 0, cap = 0, got;
    bool ok = true;
    do {
        if (len == cap) {
            cap = cap ? cap * 2 : 1 << 16;
            uint8_t *g = realloc(buf, cap);
            if (!g) {
                ok = false;
                break;
            }
            buf = g;
        }
        got = fread(buf + len, 1, cap - len, f);
        len += got;
    } while (got);
    bool err = ferror(f);
    fclose(f);
    if (!ok || err) {
        free(buf);
        return WHY("%s", err ? "read error" : "out of memory");
    }
    ok = mc_npy_parse(buf, len, out, why, why_cap);
    free(buf);
    return ok;
}

bool mc_npy_write(const char *path, const mc_npy *a, char *why, size_t why_cap)
{
    const char *code = dtype_code(a->dtype);
    if (!code || !a->ndim || a->ndim > MC_NPY_MAX_DIMS) return WHY("nothing to write");
    char shape[96] = "";
    for (uint32_t i = 0; i < a->ndim; i++)
        snprintf(shape + strlen(shape), sizeof shape - strlen(shape), "%llu,%s", (unsigned long long)a->shape[i],
                 a->ndim > 1 && i + 1 < a->ndim ? " " : "");
    if (a->ndim > 1) shape[strlen(shape) - 1] = '\0'; /* (2, 3), but (5,) */
    char dict[256];
    int n = snprintf(dict, sizeof dict, "{'descr': '%s%s', 'fortran_order': False, 'shape': (%s), }",
                     mc_npy_dtype_size(a->dtype) == 1 ? "|" : "<", code, shape);
    /* Pad with spaces and a newline so the data starts on 64 bytes. */
    size_t total = 10 + (size_t)n + 1;
    size_t pad = (64 - total % 64) % 64;
    size_t hlen = (size_t)n + pad + 1;
    uint8_t head[10 + 256 + 64];
    memcpy(head, "\x93NUMPY\x01\x00", 8);
    head[8] = (uint8_t)(hlen & 0xff);
    head[9] = (uint8_t)(hlen >> 8);
    memcpy(head + 10, dict, (size_t)n);
    memset(head + 10 + n, ' ', pad);
    head[10 + hlen - 1] = '\n';
    mc__outfile o;
    mc_status s = mc__outfile_open(path, &o);
    if (s != MC_OK) return WHY("%s", mc_last_error());
    if (fwrite(head, 1, 10 + hlen, o.f) != 10 + hlen || fwrite(a->data, 1, a->bytes, o.f) != a->bytes) {
        mc__outfile_abort(&o);
        return WHY("write error");
    }
    s = mc__outfile_commit(&o);
    if (s != MC_OK) return WHY("%s", mc_last_error());
    return true;
}
