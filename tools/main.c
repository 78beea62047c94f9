/* metal-compute: the command-line program. */
#include "benchmarks.h"
#include "cli.h"

#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <sys/stat.h>
#include <unistd.h>

#ifdef __APPLE__
#include <mach-o/dyld.h>
#endif

/* AddressSanitizer builds (CI): the runtime of gcc <= 13 and LLVM <= 16
 * misreads a dynamic TLS block that malloc happens to place at a certain
 * page offset as an old glibc header, and LeakSanitizer's tracer then
 * crashes at exit: with PoCL loaded (bench --peers) it did so depending on
 * the heap's layout. Not intercepting __tls_get_addr avoids it;
 * ASAN_OPTIONS still overrides. */
#if defined(__SANITIZE_ADDRESS__)
#define MC_CLI_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define MC_CLI_ASAN 1
#endif
#endif
#ifdef MC_CLI_ASAN
const char *__asan_default_options(void);
const char *__asan_default_options(void)
{
    return "intercept_tls_get_addr=0";
}
#endif

/* A command that takes no arguments refuses any: a typo that exits 0 reads
 * as success to a script. */
static int no_arguments(const char *cmd, int argc, char **argv)
{
    if (argc < 2) return 0;
    fprintf(stderr, "metal-compute %s: unexpected argument '%s' (it takes none)\n", cmd, argv[1]);
    return 2;
}

static int cmd_version(int argc, char **argv)
{
    int rc = no_arguments("version", argc, argv);
    if (rc) return rc;
    printf("metal-compute %s\n", mc_version());
    return 0;
}

static int cmd_help(int argc, char **argv);

static const mc_cli_command commands[] = {
    {"run", "run a long computation through the runner: run gray-scott", mc_cli_run},
    {"info", "list every device and its capabilities", mc_cli_info},
    {"bench", "measure the runtime against the rawest baseline, side by side", mc_cli_bench},
    {"cache", "build, list, inspect and clear the pipeline cache", mc_cli_cache},
    {"trace", "read a trace written by --trace or MC_TRACE: trace summary FILE", mc_cli_trace},
    {"version", "print the version", cmd_version},
    {"help", "this help", cmd_help},
};

static int cmd_help(int argc, char **argv)
{
    int rc = argc > 1 && strcmp(argv[1], "--help") && strcmp(argv[1], "-h") ? no_arguments("help", argc, argv) : 0;
    if (rc) return rc;
    printf(
        "usage: metal-compute COMMAND [OPTIONS]\n\n"
        "GPU compute that survives long-running work, on cpu, cuda and metal devices.\n\ncommands:\n");
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        printf("  %-10s %s\n", commands[i].name, commands[i].summary);
    printf(
        "\n'metal-compute COMMAND --help' describes a command's options.\n"
        "environment: MC_DEVICE=cpu|cuda|metal[:N]  MC_VALIDATION=1  MC_LOG=debug|info|warn|error|off\n"
        "             MC_TIME_LIMIT_MS (cpu watchdog, 0 = none)  MC_INJECT_FAULTS=KIND@N,...\n");
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        cmd_help(argc, argv);
        return 2;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) return cmd_help(argc - 1, argv + 1);
    if (!strcmp(argv[1], "--version")) return cmd_version(argc - 1, argv + 1);
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (!strcmp(argv[1], commands[i].name)) return commands[i].run(argc - 1, argv + 1);
    fprintf(stderr, "metal-compute: unknown command '%s' (try --help)\n", argv[1]);
    return 2;
}

const char *mc_cli_kernel_dir(void)
{
    const char *env = getenv("MC_KERNEL_DIR");
    if (env && *env) return env;
    struct stat st;
    if (stat(MC_SOURCE_DIR "/examples/kernels", &st) == 0) return MC_SOURCE_DIR "/examples/kernels";
    return MC_KERNEL_DIR;
}

const char *mc_cli_baseline_dir(void)
{
    const char *env = getenv("MC_BASELINE_DIR");
    if (env && *env) return env;
    struct stat st;
    if (stat(MC_SOURCE_DIR "/benchmarks/baselines", &st) == 0) return MC_SOURCE_DIR "/benchmarks/baselines";
    return MC_BASELINE_DIR;
}

char *mc_cli_read_file(const char *path, size_t *len)
{
    if (len) *len = 0;
    /* Only regular files: a folder "reads" as an absurd size and a FIFO
     * blocks. errno says why (0: the file is empty). */
    struct stat st;
    if (stat(path, &st) != 0) return NULL;
    if (!S_ISREG(st.st_mode)) {
        errno = S_ISDIR(st.st_mode) ? EISDIR : EINVAL;
        return NULL;
    }
    if (st.st_size == 0) {
        errno = 0;
        return NULL;
    }
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *buf = NULL;
    long size = -1;
    if (fseek(f, 0, SEEK_END) == 0 && (size = ftell(f)) > 0 && fseek(f, 0, SEEK_SET) == 0 &&
        (buf = calloc(1, (size_t)size + 1)) && fread(buf, 1, (size_t)size, f) != (size_t)size) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    if (buf && len) *len = (size_t)size;
    return buf;
}

int mc_cli_fail(const char *what, mc_status s)
{
    fprintf(stderr, "metal-compute: %s: %s (%s)\n", what, mc_status_name(s), mc_last_error());
    return 1;
}

bool mc_cli_isatty(FILE *f)
{
    return isatty(fileno(f));
}

mc_device *mc_cli_open_device(const char *spec, int64_t time_limit_ms)
{
    mc_device_desc desc = MC_DEVICE_DESC_INIT;
    mc_device *d = NULL;
    mc_status s = mc_device_desc_from_name(spec, &desc);
    if (s != MC_OK) {
        mc_cli_fail(spec, s);
        return NULL;
    }
    desc.time_limit_ms = time_limit_ms;
    s = mc_device_open(&desc, &d);
    if (s != MC_OK) {
        mc_cli_fail("opening the device", s);
        return NULL;
    }
    return d;
}

bool mc_cli_self_exe(char *out, size_t cap)
{
#ifdef __APPLE__
    uint32_t size = (uint32_t)cap;
    return _NSGetExecutablePath(out, &size) == 0;
#else
    ssize_t n = readlink("/proc/self/exe", out, cap - 1);
    if (n <= 0) return false;
    out[n] = '\0';
    return true;
#endif
}

int mc_cli_open_target(const char *device, bool isolate, double deadline_ms, uint32_t max_restarts, const char *faults,
                       mc_device **dev, mc_device_info *info, mc_isolate_desc *iso)
{
    *dev = NULL;
    memset(info, 0, sizeof *info);
    *iso = (mc_isolate_desc)MC_ISOLATE_DESC_INIT;
    if (isolate) {
        iso->device = device;
        iso->deadline_ms = deadline_ms;
        iso->max_restarts = max_restarts;
        iso->inject_faults = faults;
        return 0;
    }
    *dev = mc_cli_open_device(device, 0);
    if (!*dev) return 1;
    mc_device_get_info(*dev, info);
    return 0;
}

mc_pipeline *mc_cli_pipeline(mc_device *d, const char *file, const char *fn)
{
    return mc_cli_pipeline_ext(d, file, ".metal", fn); /* the project's kernels are MSL, run on every device */
}

mc_pipeline *mc_cli_pipeline_ext(mc_device *d, const char *file, const char *ext, const char *fn)
{
    char path[4096];
    /* MSL from the kernels; the hand-written C and CUDA twins are benchmark baselines */
    const char *dir = !strcmp(ext, ".metal") ? mc_cli_kernel_dir() : mc_cli_baseline_dir();
    snprintf(path, sizeof path, "%s/%s%s", dir, file, ext);
    mc_library *lib;
    char *log = NULL;
    mc_status s = mc_library_create_from_file(d, path, MC_LANG_UNSET, NULL, &lib, &log);
    if (s != MC_OK) {
        mc_cli_fail(path, s);
        if (log) fprintf(stderr, "%s\n", log);
        mc_free(log);
        return NULL;
    }
    mc_pipeline_desc pd = MC_PIPELINE_DESC_INIT;
    pd.library = lib;
    pd.function = fn;
    mc_pipeline *p = NULL;
    s = mc_pipeline_create(d, &pd, &p);
    mc_library_release(lib);
    if (s != MC_OK) mc_cli_fail(fn, s);
    return p;
}
