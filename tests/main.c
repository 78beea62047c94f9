/* Runs one test by name (ctest runs each in its own process), or lists them. */
#include "mc_test.h"

#define MC_TEST_ENTRY(name) int mc_test_##name(void);
#include "test_list.h"
#undef MC_TEST_ENTRY

static const struct {
    const char *name;
    int (*fn)(void);
} tests[] = {
#define MC_TEST_ENTRY(name) {#name, mc_test_##name},
#include "test_list.h"
#undef MC_TEST_ENTRY
};

int main(int argc, char **argv)
{
    size_t n = sizeof(tests) / sizeof(tests[0]);
    if (argc < 2 || !strcmp(argv[1], "--list")) {
        for (size_t i = 0; i < n; i++) printf("%s\n", tests[i].name);
        return argc < 2 ? 2 : 0;
    }
    for (size_t i = 0; i < n; i++) {
        if (!strcmp(argv[1], tests[i].name)) {
            int rc = tests[i].fn();
            if (rc == 0) fprintf(stderr, "PASS %s\n", argv[1]);
            else if (rc != MC_TEST_SKIP_CODE) fprintf(stderr, "FAIL %s\n", argv[1]);
            return rc;
        }
    }
    fprintf(stderr, "no test named %s\n", argv[1]);
    return 2;
}
