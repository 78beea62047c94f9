/*
 * The test harness: each MC_TEST runs in its own process (ctest starts
 * `mc_tests NAME`), so a crash or hang fails one test. Assertions print
 * both values and the line; MC_SKIP reports a skip with its reason.
 */
#ifndef MC_TESTS_MC_TEST_H
#define MC_TESTS_MC_TEST_H

#include "mc/mc.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MC_TEST(name)         \
    int mc_test_##name(void); \
    int mc_test_##name(void)
#define MC_TEST_SKIP_CODE 77

#define MC_SKIP(...)                  \
    do {                              \
        fprintf(stderr, "SKIPPED: "); \
        fprintf(stderr, __VA_ARGS__); \
        fprintf(stderr, "\n");        \
        return MC_TEST_SKIP_CODE;     \
    } while (0)

#define MC__FAILED(...)                                 \
    do {                                                \
        fprintf(stderr, "%s:%d: ", __FILE__, __LINE__); \
        fprintf(stderr, __VA_ARGS__);                   \
        fprintf(stderr, "\n");                          \
        return 1;                                       \
    } while (0)

#define CHECK(cond)                                         \
    do {                                                    \
        if (!(cond)) MC__FAILED("CHECK(%s) failed", #cond); \
    } while (0)

#define CHECK_INT_OP(a, op, b)                                                                  \
    do {                                                                                        \
        long long mc__a = (long long)(a), mc__b = (long long)(b);                               \
        if (!(mc__a op mc__b)) MC__FAILED("%s %s %s: %lld vs %lld", #a, #op, #b, mc__a, mc__b); \
    } while (0)
#define CHECK_EQ(a, b) CHECK_INT_OP(a, ==, b)
#define CHECK_NE(a, b) CHECK_INT_OP(a, !=, b)
#define CHECK_LT(a, b) CHECK_INT_OP(a, <, b)
#define CHECK_LE(a, b) CHECK_INT_OP(a, <=, b)
#define CHECK_GT(a, b) CHECK_INT_OP(a, >, b)
#define CHECK_GE(a, b) CHECK_INT_OP(a, >=, b)

#define CHECK_STATUS(expr, want)                                                                        \
    do {                                                                                                \
        mc_status mc__s = (expr), mc__w = (want);                                                       \
        if (mc__s != mc__w)                                                                             \
            MC__FAILED("%s: got %s, want %s (%s)", #expr, mc_status_name(mc__s), mc_status_name(mc__w), \
                       mc_last_error());                                                                \
    } while (0)
#define CHECK_OK(expr) CHECK_STATUS(expr, MC_OK)

#define CHECK_STR_CONTAINS(hay, needle)                                                              \
    do {                                                                                             \
        const char *mc__h = (hay), *mc__n = (needle);                                                \
        if (!mc__h || !strstr(mc__h, mc__n))                                                         \
            MC__FAILED("%s does not contain \"%s\": \"%s\"", #hay, mc__n, mc__h ? mc__h : "(null)"); \
    } while (0)

#define CHECK_FLOAT_NEAR(a, b, tol)                                \
    do {                                                           \
        double mc__a = (a), mc__b = (b);                           \
        if (!(mc__a - mc__b <= (tol) && mc__b - mc__a <= (tol)))   \
            MC__FAILED("%s ~ %s: %g vs %g", #a, #b, mc__a, mc__b); \
    } while (0)

/* Shared fixtures (tests/util.c). */
/* Opens the device named by $MC_DEVICE (default cpu) with the given CPU time
 * limit in ms (0 = default). */
mc_device *mct_open_device(int64_t time_limit_ms);
mc_device_kind mct_device_kind(mc_device *d);
/* The MSL source of examples/kernels/NAME.metal (every device runs it); *lang = MC_LANG_MSL. */
char *mct_kernel_source(mc_device *d, const char *name, mc_language *lang);
/* Builds a pipeline for function fn of examples/kernels/NAME.*; NULL and a message on failure. */
mc_pipeline *mct_pipeline(mc_device *d, const char *file, const char *fn);
char *mct_read_file(const char *path, size_t *len);
/* MSL on the CPU device: src translated to the C++ the compiler gets, or
 * NULL with the front end's log in *log (printed when log is NULL); the
 * name of the runner (mc::run_...) the entry point of kernel name calls,
 * in out; an MSL library of src on d, or NULL with the compiler's log
 * printed. */
char *mct_msl_translate_cpu(const char *src, char **log);
const char *mct_msl_runner_of(const char *cpp, const char *name, char *out, size_t cap);
mc_library *mct_msl_library(mc_device *d, const char *src, const char *options);
/* Runs cmd through the shell and returns what it printed (at most 64 KiB,
 * NUL-terminated; free it), *status (may be NULL) its wait status. */
char *mct_command(const char *cmd, int *status);
uint64_t mc__test_now_ns(void);
/* Host model of rt_step in examples/kernels/runner_test: x[i]'s start value,
 * and x after iters iterations with spin mixes each (x[n] = iters; free). */
uint32_t mct_rt_initial(uint32_t i);
uint32_t *mct_rt_reference(uint32_t n, uint32_t spin, uint64_t iters);
/* A runner binding for rt_step, shared by the runner, isolation and
 * checkpoint tests: *pl, *x (n cells from mct_rt_initial and the stop word)
 * and *ctl (a 32-byte control buffer), bound as the pipeline, state 0,
 * args[0] = x and args[3] = params. args[2] (ctl) is the caller's to bind.
 * On failure nothing is left made. mct_rt_release undoes it. */
mc_status mct_rt_bind(mc_device *dev, uint32_t n, const void *params, size_t params_len, mc_pipeline **pl,
                      mc_buffer **x, mc_buffer **ctl, mc_runner_binding *b);
void mct_rt_release(mc_pipeline **pl, mc_buffer **x, mc_buffer **ctl);

/* The runner tests' fixture, one for the runner, isolation, checkpoint and
 * trace tests: rt_step's parameters and what its setup makes. Pass an
 * mct_rt as the runner's user with mct_rt_setup and mct_rt_teardown. */
typedef struct mct_rt_params {
    uint32_t n, spin;
    uint64_t stop_at;
} mct_rt_params;
typedef struct mct_rt {
    mct_rt_params params;
    bool runner_control;    /* slot 2 is left to the runner's control buffer */
    bool bind_control_slot; /* a mistake on purpose: setup binds slot 2 all the same */
    mc_status fail_setup;   /* when not MC_OK, setup fails with it, on purpose */
    mc_pipeline *pl;
    mc_buffer *x, *ctl;
    int setups, teardowns; /* in this process */
} mct_rt;
mc_status mct_rt_setup(void *user, mc_device *dev, mc_runner_binding *b);
void mct_rt_teardown(void *user, mc_runner_binding *b);
/* A descriptor for u's run of total iterations: setup and teardown, the
 * grid over params.n cells in groups of `group` threads, 4 iterations per
 * dispatch, the iteration range in slot 1, the control block in slot 2
 * when u->runner_control; no device. */
mc_runner_desc mct_rt_desc(mct_rt *u, uint32_t group, uint64_t total);
/* A thread body that sleeps delay_ms, notes the time (at_ns) and cancels
 * r: cancel from another thread, for the local and the isolated runner. */
typedef struct mct_canceller {
    mc_runner *r;
    unsigned delay_ms;
    uint64_t at_ns;
} mct_canceller;
void *mct_cancel_later(void *arg);

#endif
