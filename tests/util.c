/* Fixtures shared by the tests. */
#include "mc_test.h"
#include "core/core.h" /* mc__fail: setup's failure with a reason, as a user's would give */
#include "msl/msl.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

uint64_t mc__test_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

mc_device *mct_open_device(int64_t time_limit_ms)
{
    mc_device_desc desc = MC_DEVICE_DESC_INIT;
    const char *env = getenv("MC_DEVICE");
    mc_device *d = NULL;
    if (env && *env) {
        if (mc_device_desc_from_name(env, &desc) != MC_OK) {
            fprintf(stderr, "cannot use MC_DEVICE=%s: %s\n", env, mc_last_error());
            return NULL;
        }
    } else {
        desc.kind = MC_DEVICE_CPU;
    }
    desc.time_limit_ms = time_limit_ms;
    if (mc_device_open(&desc, &d) != MC_OK) {
        fprintf(stderr, "cannot open the device: %s\n", mc_last_error());
        return NULL;
    }
    return d;
}

mc_device_kind mct_device_kind(mc_device *d)
{
    mc_device_info info;
    mc_device_get_info(d, &info);
    return info.kind;
}

char *mct_read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *s = malloc((size_t)n + 1);
    if (s && fread(s, 1, (size_t)n, f) != (size_t)n) {
        free(s);
        s = NULL;
    }
    fclose(f);
    if (s) {
        s[n] = '\0';
        if (len) *len = (size_t)n;
    }
    return s;
}

char *mct_kernel_source(mc_device *d, const char *name, mc_language *lang)
{
    (void)d; /* the project's kernels are MSL, which every device runs */
    char path[4096];
    snprintf(path, sizeof path, "%s/examples/kernels/%s.metal", MC_SOURCE_DIR, name);
    if (lang) *lang = MC_LANG_MSL;
    return mct_read_file(path, NULL);
}

mc_pipeline *mct_pipeline(mc_device *d, const char *file, const char *fn)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/examples/kernels/%s.metal", MC_SOURCE_DIR, file);
    mc_library *lib;
    char *log = NULL;
    if (mc_library_create_from_file(d, path, MC_LANG_UNSET, NULL, &lib, &log) != MC_OK) {
        fprintf(stderr, "cannot build %s: %s\n%s\n", path, mc_last_error(), log ? log : "");
        mc_free(log);
        return NULL;
    }
    mc_pipeline_desc pd = MC_PIPELINE_DESC_INIT;
    pd.library = lib;
    pd.function = fn;
    mc_pipeline *p = NULL;
    if (mc_pipeline_create(d, &pd, &p) != MC_OK) fprintf(stderr, "cannot make %s: %s\n", fn, mc_last_error());
    mc_library_release(lib);
    return p;
}

uint32_t mct_rt_initial(uint32_t i)
{
    return i * 2654435761u + 12345u;
}

static uint32_t rt_mix(uint32_t v, uint64_t it)
{
    v ^= (uint32_t)it + 0x9e3779b9u;
    v *= 0x85ebca6bu;
    v ^= v >> 13;
    return v;
}

uint32_t *mct_rt_reference(uint32_t n, uint32_t spin, uint64_t iters)
{
    uint32_t *x = malloc((n + 1) * sizeof *x);
    if (!x) return NULL;
    for (uint32_t i = 0; i < n; i++) {
        uint32_t v = mct_rt_initial(i);
        for (uint64_t it = 0; it < iters; it++)
            for (uint32_t s = 0; s < spin; s++) v = rt_mix(v, it);
        x[i] = v;
    }
    x[n] = (uint32_t)iters;
    return x;
}

mc_status mct_rt_bind(mc_device *dev, uint32_t n, const void *params, size_t params_len, mc_pipeline **pl,
                      mc_buffer **x, mc_buffer **ctl, mc_runner_binding *b)
{
    *x = *ctl = NULL;
    *pl = mct_pipeline(dev, "runner_test", "rt_step");
    if (!*pl) return MC_ERR_COMPILE;
    uint32_t *init = malloc((n + 1) * sizeof *init);
    if (!init) {
        mct_rt_release(pl, x, ctl);
        return MC_ERR_NO_MEMORY;
    }
    for (uint32_t i = 0; i < n; i++) init[i] = mct_rt_initial(i);
    init[n] = 0;
    mc_buffer_desc bd = {(n + 1) * sizeof *init, MC_STORAGE_SHARED, "x", init};
    mc_status s = mc_buffer_create(dev, &bd, x);
    free(init);
    mc_buffer_desc cd = {32, MC_STORAGE_SHARED, "unused control", NULL};
    if (s == MC_OK) s = mc_buffer_create(dev, &cd, ctl);
    if (s != MC_OK) {
        mct_rt_release(pl, x, ctl);
        return s;
    }
    b->pipeline = *pl;
    b->state[0] = *x;
    b->state_count = 1;
    b->args[0].kind = MC_RUNNER_ARG_BUFFER;
    b->args[0].buffer = *x;
    b->args[3].kind = MC_RUNNER_ARG_BYTES;
    b->args[3].bytes = params;
    b->args[3].len = params_len;
    return MC_OK;
}

void mct_rt_release(mc_pipeline **pl, mc_buffer **x, mc_buffer **ctl)
{
    mc_buffer_release(*x);
    mc_buffer_release(*ctl);
    mc_pipeline_release(*pl);
    *x = *ctl = NULL;
    *pl = NULL;
}

mc_status mct_rt_setup(void *user, mc_device *dev, mc_runner_binding *b)
{
    mct_rt *u = user;
    if (u->fail_setup != MC_OK) return mc__fail(u->fail_setup, "the test's setup fails on purpose");
    mc_status s = mct_rt_bind(dev, u->params.n, &u->params, sizeof u->params, &u->pl, &u->x, &u->ctl, b);
    if (s != MC_OK) return s;
    if (!u->runner_control || u->bind_control_slot) {
        b->args[2].kind = MC_RUNNER_ARG_BUFFER;
        b->args[2].buffer = u->ctl;
    }
    u->setups++;
    return MC_OK;
}

void mct_rt_teardown(void *user, mc_runner_binding *b)
{
    mct_rt *u = user;
    (void)b;
    mct_rt_release(&u->pl, &u->x, &u->ctl);
    u->teardowns++;
}

mc_runner_desc mct_rt_desc(mct_rt *u, uint32_t group, uint64_t total)
{
    mc_runner_desc d = MC_RUNNER_DESC_INIT;
    d.setup = mct_rt_setup;
    d.teardown = mct_rt_teardown;
    d.user = u;
    d.threadgroups = (mc_size3){(u->params.n + group - 1) / group, 1, 1};
    d.threads_per_threadgroup = (mc_size3){group, 1, 1};
    d.iterations_per_dispatch = 4;
    d.total_iterations = total;
    d.iteration_arg = 1;
    d.control_arg = u->runner_control ? 2 : 0;
    return d;
}

char *mct_command(const char *cmd, int *status)
{
    FILE *p = popen(cmd, "r");
    if (!p) return NULL;
    size_t cap = 1 << 20, len = 0, n; /* bench prints whole tables */
    char *out = malloc(cap);
    while (out && (n = fread(out + len, 1, cap - 1 - len, p)) > 0) len += n;
    int st = pclose(p);
    if (status) *status = st;
    if (out) out[len] = '\0';
    return out;
}

void *mct_cancel_later(void *arg)
{
    mct_canceller *c = arg;
    struct timespec ts = {c->delay_ms / 1000, (long)(c->delay_ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
    c->at_ns = mc__test_now_ns();
    mc_runner_cancel(c->r);
    return NULL;
}

char *mct_msl_translate_cpu(const char *src, char **log)
{
    char *cpp = NULL, *lg = NULL;
    size_t len = 0;
    mc_status s = mc__msl_translate(src, strlen(src), MC__MSL_CPU, &cpp, &len, &lg);
    if (log) {
        *log = lg;
        return s == MC_OK ? cpp : NULL;
    }
    if (s != MC_OK) fprintf(stderr, "%s\n", lg ? lg : mc_last_error());
    free(lg);
    return s == MC_OK ? cpp : NULL;
}

const char *mct_msl_runner_of(const char *cpp, const char *name, char *out, size_t cap)
{
    char head[160];
    snprintf(head, sizeof head, "MC_KERNEL_EXPORT void %s(const mc_cpu_ctx *ctx)", name);
    const char *at = strstr(cpp, head);
    if (!at) return NULL;
    const char *r = strstr(at, "mc::run_");
    if (!r) return NULL;
    size_t n = strcspn(r, "(");
    snprintf(out, cap, "%.*s", (int)(n < cap ? n : cap - 1), r);
    return out;
}

mc_library *mct_msl_library(mc_device *d, const char *src, const char *options)
{
    mc_library_desc ld = MC_LIBRARY_DESC_INIT;
    ld.language = MC_LANG_MSL;
    ld.source = src;
    ld.options = options;
    mc_library *lib = NULL;
    char *log = NULL;
    mc_status s = mc_library_create(d, &ld, &lib, &log);
    if (s != MC_OK) fprintf(stderr, "%s\n%s\n", mc_last_error(), log ? log : "");
    mc_free(log);
    return s == MC_OK ? lib : NULL;
}
