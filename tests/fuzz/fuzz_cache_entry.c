/*
 * libFuzzer target for the pipeline cache's entry reader: every byte of an
 * entry file comes from disk and is untrusted. The reader must refuse what
 * is not a well-formed entry and never read outside the bytes it is given
 * (AddressSanitizer watches). Built and run by tests/fuzz/run.sh.
 */
#include "runtime/cache_format.h"

#include <stdio.h>
#include <string.h>

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static mc__hash *hash;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    char why[160];
    hash = mc__hash_open(why, sizeof why);
    if (!hash) fprintf(stderr, "fuzz_cache_entry: no SHA-256 library (%s): checksums not exercised\n", why);
    return 0;
}

/* Reads every byte a parse says is there, so an out-of-bounds pointer or
 * length shows up under AddressSanitizer. */
static unsigned touch(const void *p, size_t n)
{
    const volatile uint8_t *b = p;
    unsigned sum = 0;
    for (size_t i = 0; i < n; i++) sum += b[i];
    return sum;
}

static unsigned check_material(const uint8_t *m, size_t n)
{
    mc__cache_material mat;
    if (mc__cache_parse_material(m, n, &mat) != NULL) return 0;
    const mc__cache_str *s[] = {&mat.runtime, &mat.backend, &mat.identity, &mat.compiler,
                                &mat.source,  &mat.options, &mat.function, &mat.constants};
    unsigned sum = 0;
    for (size_t i = 0; i < sizeof s / sizeof s[0]; i++) {
        if (!s[i]->p && !s[i]->len) continue; /* the optional constants field, absent */
        if ((const uint8_t *)s[i]->p < m || (const uint8_t *)s[i]->p + s[i]->len > m + n) __builtin_trap();
        sum += touch(s[i]->p, s[i]->len);
    }
    return sum;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    mc__cache_entry e;
    unsigned sum = 0;
    /* the structure alone, then as a load checks it: the header's key as
     * the file name, checksums verified */
    for (int pass = 0; pass < 2; pass++) {
        const uint8_t *want = pass && size >= 48 ? data + 16 : NULL;
        if (mc__cache_parse_entry(data, size, pass ? hash : NULL, want, &e) != NULL) continue;
        if (e.material < data || e.payload < data || e.material + e.material_len > data + size ||
            e.payload + e.payload_len > data + size || e.material_len + e.payload_len + MC__CACHE_HEADER_SIZE != size)
            __builtin_trap();
        sum += touch(e.material, (size_t)e.material_len) + touch(e.payload, (size_t)e.payload_len);
        sum += check_material(e.material, (size_t)e.material_len);
    }
    /* the material parser on raw bytes too */
    sum += check_material(data, size);
    uint8_t key[MC__CACHE_KEY_SIZE];
    char name[MC__CACHE_NAME_LEN + 1];
    if (size > MC__CACHE_NAME_LEN) {
        memcpy(name, data, MC__CACHE_NAME_LEN);
        name[MC__CACHE_NAME_LEN] = '\0';
        if (mc__cache_name_key(name, key)) {
            char back[MC__CACHE_NAME_LEN + 1];
            mc__cache_key_name(key, back);
            if (memcmp(back, name, MC__CACHE_NAME_LEN) != 0) __builtin_trap(); /* names are canonical */
        }
    }
    (void)sum;
    return 0;
}
