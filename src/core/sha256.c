/*
 * DOC: SHA-256 from a well-kept library, loaded at run time
 *
 * The pipeline cache names its entries by SHA-256 and checks their
 * payloads with it. Writing our own would be a second, unreviewed
 * implementation; linking libcrypto would make every program that uses
 * metal-compute depend on it. So the hash comes from the system: its own
 * where it has one (CommonCrypto on macOS, behind mc__os_sha256 in
 * os_posix.c), else libcrypto opened with dlopen. Without either the
 * caller says so and works without it (the cache keeps to memory).
 */
#include "core/core.h"

#include <dlfcn.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

typedef int (*evp_digest_fn)(const void *data, size_t count, unsigned char *md, unsigned int *size, const void *type,
                             void *engine);
typedef const void *(*evp_md_fn)(void);

struct mc__hash {
    void *lib;            /* NULL: the system's own (mc__os_sha256) */
    evp_digest_fn digest; /* EVP_Digest */
    evp_md_fn sha256;     /* EVP_sha256 */
};

static _Atomic int test_disabled;

void mc__hash_test_disable(bool on)
{
    atomic_store(&test_disabled, on ? 1 : 0);
}

bool mc__hash_sha256(const mc__hash *h, const void *data, size_t len, uint8_t out[32])
{
    if (!h || !out) return false;
    if (!data) data = "";
    if (!h->lib) return mc__os_sha256(data, len, out);
    unsigned int n = 0;
    return h->digest(data, len, out, &n, h->sha256(), NULL) == 1 && n == 32;
}

/* OpenSSL 3, then whatever libcrypto the system links by default (1.1 has
 * the same two calls). RTLD_NODELETE: libcrypto registers exit handlers and
 * must never be unloaded. */
static bool load_libcrypto(mc__hash *h)
{
    static const char *const names[] = {"libcrypto.so.3", "libcrypto.so"};
    for (size_t i = 0; i < MC__ARRAY_LEN(names) && !h->lib; i++) {
        h->lib = dlopen(names[i], RTLD_NOW | RTLD_LOCAL | RTLD_NODELETE);
        if (!h->lib) continue;
        void *d = dlsym(h->lib, "EVP_Digest"), *s = dlsym(h->lib, "EVP_sha256");
        void *init = dlsym(h->lib, "OPENSSL_init_crypto");
        if (d && s) {
            memcpy(&h->digest, &d, sizeof d); /* POSIX: data and code pointers convert */
            memcpy(&h->sha256, &s, sizeof s);
            /* No exit-time cleanup (OPENSSL_INIT_NO_ATEXIT, 1.1.1b and
             * later): a pool thread still building when the program exits
             * would hash with a torn-down library. Where the program set
             * OpenSSL up first, this changes nothing. */
            if (init) {
                int (*init_fn)(uint64_t, const void *);
                memcpy(&init_fn, &init, sizeof init);
                init_fn(0x00080000ull, NULL);
            }
        } else {
            dlclose(h->lib);
            h->lib = NULL;
        }
    }
    return h->lib != NULL;
}

mc__hash *mc__hash_open(char *why, size_t why_cap)
{
    if (why && why_cap) why[0] = '\0';
    if (atomic_load(&test_disabled)) {
        if (why) snprintf(why, why_cap, "disabled for a test");
        return NULL;
    }
    mc__hash *h = mc__calloc(1, sizeof *h);
    if (!h) {
        if (why) snprintf(why, why_cap, "out of host memory");
        return NULL;
    }
    uint8_t probe[32];
    if (!mc__os_sha256("", 0, probe) && !load_libcrypto(h)) {
        if (why) snprintf(why, why_cap, "libcrypto.so.3 / libcrypto.so not found or without EVP_Digest");
        free(h);
        return NULL;
    }
    /* Known answer (FIPS 180-2, "abc"): a library that answers wrongly is
     * worse than none. */
    static const uint8_t abc[32] = {0xba, 0x78, 0x16, 0xbf, 0x8f, 0x01, 0xcf, 0xea, 0x41, 0x41, 0x40,
                                    0xde, 0x5d, 0xae, 0x22, 0x23, 0xb0, 0x03, 0x61, 0xa3, 0x96, 0x17,
                                    0x7a, 0x9c, 0xb4, 0x10, 0xff, 0x61, 0xf2, 0x00, 0x15, 0xad};
    uint8_t got[32];
    if (!mc__hash_sha256(h, "abc", 3, got) || memcmp(got, abc, 32) != 0) {
        if (why) snprintf(why, why_cap, "the SHA-256 library fails its known-answer test");
        mc__hash_close(h);
        return NULL;
    }
    return h;
}

void mc__hash_close(mc__hash *h)
{
    if (!h) return;
    if (h->lib) dlclose(h->lib);
    free(h);
}
