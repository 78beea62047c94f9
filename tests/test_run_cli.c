/* `metal-compute run FILE --function NAME` as a user runs it: the heat and
 * life examples against a NumPy reference, bad input refused with the
 * cause, --progress json's lines, a second run loading its kernel from the
 * disk cache, and durable checkpoints tested the way they will fail: the
 * whole process tree killed with SIGKILL at random moments, several times
 * in a row, then resumed, giving the bytes an undisturbed run gives
 * (gray-scott's PNG, a user kernel's .npy, also with --isolate). Runs the
 * built program (MC_BINARY_DIR/metal-compute) on the CPU device, with the
 * examples' MSL kernels; tests/kernels/life.c is a C kernel for `run`'s C
 * path. */
#include "mc_test.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define CLI MC_BINARY_DIR "/metal-compute"
#define KERNELS MC_SOURCE_DIR "/tests/kernels"
#define EXAMPLES MC_SOURCE_DIR "/examples/kernels"

/* Runs cmd through the shell; returns its stdout and stderr together and
 * its exit code in *code (-1 if it did not exit). */
static char *run_command(const char *cmd, int *code)
{
    char full[8192];
    snprintf(full, sizeof full, "%s 2>&1", cmd);
    FILE *p = popen(full, "r");
    if (!p) return NULL;
    size_t cap = 1 << 20, len = 0, n;
    char *out = malloc(cap);
    while (out && (n = fread(out + len, 1, cap - 1 - len, p)) > 0) len += n;
    int st = pclose(p);
    *code = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
    if (out) out[len] = '\0';
    return out;
}

static void temp_dir(char *out, size_t cap)
{
    const char *tmp = getenv("TMPDIR");
    snprintf(out, cap, "%s/mc-run-cli-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(out)) out[0] = '\0';
}

static void remove_tree(const char *dir)
{
    char cmd[1200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", dir);
}

/* A Python with NumPy: $MC_PYTHON, python3 on the PATH, /usr/bin/python3. */
static const char *numpy_python(void)
{
    static char found[512];
    const char *cands[] = {getenv("MC_PYTHON"), "python3", "/usr/bin/python3"};
    for (size_t i = 0; i < sizeof cands / sizeof cands[0]; i++) {
        if (!cands[i] || !*cands[i]) continue;
        char cmd[700];
        snprintf(cmd, sizeof cmd, "%s -c 'import numpy' >/dev/null 2>&1", cands[i]);
        if (system(cmd) == 0) {
            snprintf(found, sizeof found, "%s", cands[i]);
            return found;
        }
    }
    return NULL;
}

static bool cpu_device(void)
{
    const char *d = getenv("MC_DEVICE");
    return !d || !*d || !strncmp(d, "cpu", 3);
}

/* The device under test ($MC_DEVICE, as every test takes it), for runs
 * that do not depend on the CPU device's timing or its C kernels. */
static const char *run_device(void)
{
    const char *d = getenv("MC_DEVICE");
    return d && *d ? d : "cpu";
}

/* The example `name` (heat or life) against NumPy: init, then the MSL
 * example, and with_c the C kernel tests/kernels/NAME.c too, each checked. */
static int numpy_example(const char *name, const char *fn, const char *scalars, int steps, const char *alpha,
                         bool with_c)
{
    const char *py = numpy_python();
    if (!py) MC_SKIP("no Python 3 with NumPy (apt-get install python3-numpy, or set MC_PYTHON)");
    char dir[512], cmd[4096];
    temp_dir(dir, sizeof dir);
    CHECK(dir[0]);
    int code = -1;
    snprintf(cmd, sizeof cmd, "%s %s/tests/run_reference.py init %s %s/init.npy 48", py, MC_SOURCE_DIR, name, dir);
    char *out = run_command(cmd, &code);
    CHECK(out);
    fprintf(stderr, "%s", out);
    free(out);
    CHECK_EQ(code, 0);
    const char *kernels[] = {EXAMPLES "/%s.metal", KERNELS "/%s.c"};
    for (int k = 0; k < (with_c && cpu_device() ? 2 : 1); k++) { /* C kernels: the CPU device's */
        char kernel[600];
        snprintf(kernel, sizeof kernel, kernels[k], name);
        /* The grid comes from the shape (48 rows, 51 or 53 columns): the
         * scalars name the same width and height. */
        snprintf(cmd, sizeof cmd,
                 "%s run %s --function %s --device %s --arg pair:%s/init.npy --arg iter --arg %s --steps %d "
                 "--out %s/out.npy --progress none",
                 CLI, kernel, fn, run_device(), dir, scalars, steps, dir);
        out = run_command(cmd, &code);
        CHECK(out);
        fprintf(stderr, "%s", out);
        CHECK_EQ(code, 0);
        CHECK_STR_CONTAINS(out, "grid         ");
        free(out);
        snprintf(cmd, sizeof cmd, "%s %s/tests/run_reference.py check %s %s/init.npy %s/out.npy %d %s", py,
                 MC_SOURCE_DIR, name, dir, dir, steps, alpha);
        out = run_command(cmd, &code);
        CHECK(out);
        fprintf(stderr, "%s", out);
        CHECK_STR_CONTAINS(out, "match");
        free(out);
        CHECK_EQ(code, 0);
    }
    remove_tree(dir);
    return 0;
}

MC_TEST(run_kernel_heat_matches_numpy)
{
    /* An odd number of steps: the result is in the pair's second buffer. */
    return numpy_example("heat", "heat_step", "u32:51,u32:48,f32:0.2", 151, "0.2", false);
}

MC_TEST(run_kernel_life_matches_numpy)
{
    return numpy_example("life", "life_step", "u32:53,u32:48", 120, "", true);
}

/* Writes a uint8 board as .npy (version 1.0) without NumPy. */
static int write_board(const char *path, uint32_t h, uint32_t w)
{
    FILE *f = fopen(path, "wb");
    CHECK(f);
    char dict[128];
    int n = snprintf(dict, sizeof dict, "{'descr': '|u1', 'fortran_order': False, 'shape': (%u, %u), }", h, w);
    int pad = (64 - (10 + n + 1) % 64) % 64, hlen = n + pad + 1;
    fwrite("\x93NUMPY\x01\x00", 1, 8, f);
    fputc(hlen & 0xff, f);
    fputc(hlen >> 8, f);
    fwrite(dict, 1, (size_t)n, f);
    for (int i = 0; i < pad; i++) fputc(' ', f);
    fputc('\n', f);
    uint32_t rng = 12345u;
    for (uint32_t i = 0; i < h * w; i++) {
        rng = rng * 1664525u + 1013904223u;
        fputc((rng >> 24) < 77 ? 1 : 0, f); /* about 30% alive */
    }
    CHECK_EQ(fclose(f), 0);
    return 0;
}

static int expect_refusal(const char *args, int want_code, const char *want_text)
{
    char cmd[4096];
    int code = -1;
    snprintf(cmd, sizeof cmd, "%s run %s", CLI, args);
    char *out = run_command(cmd, &code);
    CHECK(out);
    if (code != want_code || !strstr(out, want_text))
        fprintf(stderr, "run %s\n  exit %d (want %d)\n  %s\n", args, code, want_code, out);
    CHECK_EQ(code, want_code);
    CHECK_STR_CONTAINS(out, want_text);
    free(out);
    return 0;
}

MC_TEST(run_kernel_refuses_bad_input_with_the_cause)
{
    if (!cpu_device()) MC_SKIP("these runs use --device cpu");
    char dir[512], a[4096], p[700];
    temp_dir(dir, sizeof dir);
    CHECK(dir[0]);
    snprintf(p, sizeof p, "%s/board.npy", dir);
    CHECK_EQ(write_board(p, 16, 16), 0);
    const char *life = EXAMPLES "/life.metal --device cpu --function life_step";
#define REFUSED(code, text, ...)                    \
    do {                                            \
        snprintf(a, sizeof a, __VA_ARGS__);         \
        CHECK_EQ(expect_refusal(a, code, text), 0); \
    } while (0)
    REFUSED(2, "--function NAME is required", "%s/life.metal --arg %s", EXAMPLES, p);
    REFUSED(2, "no state", "%s --arg iter --arg u32:16,u32:16", life);
    REFUSED(2, "unknown dtype 'float33'", "%s --arg float33[4]", life);
    REFUSED(2, "the shape takes sizes", "%s --arg float32[4,x]", life);
    REFUSED(2, "not a u32 value", "%s --arg pair:%s --arg iter --arg u32:-1", life, p);
    REFUSED(2, "unknown scalar type 'f16'", "%s --arg pair:%s --arg f16:1", life, p);
    REFUSED(2, "must end in .npy", "%s --arg pair:%s --out %s/x.png", life, p, dir);
    REFUSED(2, "SLOT must be the slot of a state buffer", "%s --arg pair:%s --arg iter --out 2=%s/x.npy", life, p, dir);
    REFUSED(2, "--resume needs --checkpoint-dir", "%s --arg pair:%s --resume", life, p);
    REFUSED(2, "--steps takes", "%s --arg pair:%s --steps 0", life, p);
    REFUSED(2, "cannot open", "%s --arg pair:%s/missing.npy", life, dir);
    REFUSED(2, "'iter' is given twice", "%s --arg pair:%s --arg iter --arg iter", life, p);
    /* Damaged arrays: named with what is wrong. */
    FILE *f = fopen(p, "r+b");
    CHECK(f);
    CHECK_EQ(ftruncate(fileno(f), 64 + 100), 0);
    fclose(f);
    REFUSED(2, "bytes of data where the shape needs 256", "%s --arg pair:%s", life, p);
    f = fopen(p, "wb");
    CHECK(f);
    fputs("not numpy at all", f);
    fclose(f);
    REFUSED(2, "not a .npy file", "%s --arg pair:%s", life, p);
    CHECK_EQ(write_board(p, 16, 16), 0);
    /* The kernel: missing, not compiling, no such function. */
    REFUSED(2, "cannot read the kernel", "%s/nope.c --device cpu --function f --arg pair:%s", dir, p);
    /* An empty file and a folder named like a kernel: the cause, not a
     * stale errno or an allocation of the folder's "size". */
    snprintf(a, sizeof a, "%s/empty.c", dir);
    f = fopen(a, "wb");
    CHECK(f);
    if (f) fclose(f);
    REFUSED(2, "empty.c: empty file", "%s/empty.c --device cpu --function f --arg pair:%s", dir, p);
    snprintf(a, sizeof a, "%s/folder.c", dir);
    CHECK_EQ(mkdir(a, 0700), 0);
    REFUSED(2, "folder.c: Is a directory", "%s/folder.c --device cpu --function f --arg pair:%s", dir, p);
    snprintf(a, sizeof a, "%s/broken.c", dir);
    f = fopen(a, "w");
    CHECK(f);
    fputs("#include <mc/mc_cpu_kernel.h>\nMC_KERNEL(broken_step, 4) { this is not C; }\n", f);
    fclose(f);
    REFUSED(1, "this is not C; }", "%s/broken.c --device cpu --function broken_step --arg pair:%s --progress none", dir,
            p);
    REFUSED(1, "no_such_step", "%s --arg pair:%s --arg iter --arg u32:16,u32:16 --function no_such_step", life, p);
    /* A file name that is not a kernel is not mistaken for a job. */
    REFUSED(2, "unknown job", "%s", p);
#undef REFUSED
    remove_tree(dir);
    return 0;
}

/* The value of "field": in a JSON line, as a number (-1 if absent). */
static double json_number(const char *line, const char *field)
{
    char key[64];
    snprintf(key, sizeof key, "\"%s\": ", field);
    const char *p = strstr(line, key);
    return p ? strtod(p + strlen(key), NULL) : -1;
}

MC_TEST(run_progress_json_one_object_per_line)
{
    char dir[512], cmd[4096];
    temp_dir(dir, sizeof dir);
    CHECK(dir[0]);
    snprintf(cmd, sizeof cmd, "%s/board.npy", dir);
    CHECK_EQ(write_board(cmd, 128, 128), 0);
    /* Long enough for updates before the last: a GPU does a step in a
     * few microseconds. */
    const long long steps = cpu_device() ? 3000 : 300000;
    snprintf(cmd, sizeof cmd,
             "%s run %s/life.metal --device %s --function life_step --arg pair:%s/board.npy --arg iter --arg "
             "u32:128,u32:128 --steps %lld --out %s/out.npy --progress json 2>%s/progress.jsonl >/dev/null",
             CLI, EXAMPLES, run_device(), dir, steps, dir, dir);
    CHECK_EQ(system(cmd), 0);
    snprintf(cmd, sizeof cmd, "%s/progress.jsonl", dir);
    char *text = mct_read_file(cmd, NULL);
    CHECK(text);
    static const char *const fields[] = {"iterations", "total_iterations", "fraction",   "steps_per_s",    "eta_s",
                                         "elapsed_s",  "chunks",           "recoveries", "worker_restarts"};
    int lines = 0, done = 0;
    double last = -1;
    for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
        CHECK(line[0] == '{' && line[strlen(line) - 1] == '}');
        CHECK_STR_CONTAINS(line, "\"event\": \"progress\"");
        for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++) {
            char key[64];
            snprintf(key, sizeof key, "\"%s\": ", fields[i]);
            CHECK_STR_CONTAINS(line, key);
        }
        double it = json_number(line, "iterations");
        CHECK(it >= last); /* never goes back */
        last = it;
        CHECK_EQ((long long)json_number(line, "total_iterations"), steps);
        CHECK(done == 0); /* "done" is the last line */
        if (strstr(line, "\"done\": true")) done++;
        lines++;
    }
    CHECK_EQ(done, 1);
    CHECK_EQ((long long)last, steps);
    CHECK_GE(lines, 2);
    free(text);
    remove_tree(dir);
    return 0;
}

MC_TEST(run_second_start_loads_the_kernel_from_disk)
{
    char dir[512], cmd[4096];
    temp_dir(dir, sizeof dir);
    CHECK(dir[0]);
    snprintf(cmd, sizeof cmd, "%s/board.npy", dir);
    CHECK_EQ(write_board(cmd, 32, 32), 0);
    const char *want[] = {"pipeline     compiled", "pipeline     loaded from the disk cache"};
    for (int i = 0; i < 2; i++) {
        int code = -1;
        snprintf(cmd, sizeof cmd,
                 "env -u MC_CACHE MC_CACHE_DIR=%s/cache %s run %s/life.metal --device %s --function life_step --arg "
                 "pair:%s/board.npy --arg iter --arg u32:32,u32:32 --steps 10 --out %s/out.npy",
                 dir, CLI, EXAMPLES, run_device(), dir, dir);
        char *out = run_command(cmd, &code);
        CHECK(out);
        fprintf(stderr, "%s", out);
        CHECK_EQ(code, 0);
        CHECK_STR_CONTAINS(out, want[i]);
        free(out);
    }
    /* `cache stats` shows it: the lifetime counters of the folder. */
    int code = -1;
    snprintf(cmd, sizeof cmd, "env -u MC_CACHE MC_CACHE_DIR=%s/cache %s cache stats", dir, CLI);
    char *out = run_command(cmd, &code);
    CHECK(out);
    fprintf(stderr, "%s", out);
    CHECK_EQ(code, 0);
    CHECK_STR_CONTAINS(out, "1 from disk"); /* wording of tools/cmd_cache.c */
    free(out);
    remove_tree(dir);
    return 0;
}

/* ---- SIGKILL at random moments, then resume ---------------------------- */

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

/* Starts argv in a process group of its own, output to log. */
static pid_t spawn(char *const *argv, const char *log)
{
    pid_t pid = fork();
    if (pid != 0) return pid;
    setpgid(0, 0);
    int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0600);
    if (fd >= 0) {
        dup2(fd, 1);
        dup2(fd, 2);
        close(fd);
    }
    execv(argv[0], argv);
    _exit(127);
}

static int wait_exit(pid_t pid)
{
    int ws = 0;
    while (waitpid(pid, &ws, 0) < 0 && errno == EINTR) {
    }
    return WIFEXITED(ws) ? WEXITSTATUS(ws) : -WTERMSIG(ws);
}

static bool same_file(const char *a, const char *b)
{
    size_t la = 0, lb = 0;
    char *x = mct_read_file(a, &la), *y = mct_read_file(b, &lb);
    bool same = x && y && la == lb && !memcmp(x, y, la);
    free(x);
    free(y);
    return same;
}

/* No process of the group is left (the worker and launcher of --isolate
 * included). */
static bool group_gone(pid_t pgid)
{
    for (int i = 0; i < 200; i++) {
        if (kill(-pgid, 0) != 0 && errno == ESRCH) return true;
        usleep(10000);
    }
    return false;
}

/* args: the job's arguments with OUT where the output path goes. Runs it
 * once undisturbed, then `kills` times with --checkpoint-dir and --resume,
 * killing the whole process group with SIGKILL after a random time, then
 * once to the end; the output must be the undisturbed one's, byte for
 * byte. */
static int kill_and_resume(const char *const *args, int nargs, const char *ext, int kills)
{
    char dir[512];
    temp_dir(dir, sizeof dir);
    CHECK(dir[0]);
    char ref[600], out[600], ck[600], log[600];
    snprintf(ref, sizeof ref, "%s/reference%s", dir, ext);
    snprintf(out, sizeof out, "%s/resumed%s", dir, ext);
    snprintf(ck, sizeof ck, "%s/checkpoints", dir);
    snprintf(log, sizeof log, "%s/log.txt", dir);
    char *argv[64];
    int n = 0;
    argv[n++] = (char *)CLI;
    argv[n++] = (char *)"run";
    int out_at = -1;
    for (int i = 0; i < nargs; i++) {
        if (!strcmp(args[i], "OUT")) out_at = n;
        argv[n++] = (char *)args[i];
    }
    CHECK(out_at >= 0);
    argv[n++] = (char *)"--progress";
    argv[n++] = (char *)"none";
    argv[n] = NULL;
    argv[out_at] = ref;
    double t0 = now_s();
    pid_t pid = spawn(argv, log);
    CHECK_EQ(wait_exit(pid), 0);
    double ref_s = now_s() - t0;

    argv[out_at] = out;
    argv[n++] = (char *)"--checkpoint-dir";
    argv[n++] = ck;
    argv[n++] = (char *)"--checkpoint-ms";
    argv[n++] = (char *)"20";
    argv[n++] = (char *)"--resume";
    argv[n] = NULL;
    unsigned seed = (unsigned)time(NULL) ^ (unsigned)getpid();
    fprintf(stderr, "undisturbed run %.2f s; kill times from seed %u\n", ref_s, seed);
    srand(seed);
    int killed_running = 0;
    for (int k = 0; k < kills; k++) {
        /* Anywhere from the start-up to half an undisturbed run: every
         * part of a run gets hit over the test's runs. */
        double delay = 0.02 + ref_s * 0.5 * (double)rand() / RAND_MAX;
        pid = spawn(argv, log);
        usleep((useconds_t)(delay * 1e6));
        int ws = 0;
        pid_t done = waitpid(pid, &ws, WNOHANG);
        kill(-pid, SIGKILL);
        if (done == 0) {
            killed_running++;
            CHECK_EQ(wait_exit(pid), -SIGKILL);
        }
        CHECK(group_gone(pid));
        fprintf(stderr, "  kill %d after %.0f ms: %s\n", k + 1, delay * 1e3, done == 0 ? "killed" : "had finished");
    }
    CHECK_GE(killed_running, 1);
    pid = spawn(argv, log);
    int code = wait_exit(pid);
    char *text = mct_read_file(log, NULL);
    if (code != 0 || !same_file(ref, out)) fprintf(stderr, "%s", text ? text : "");
    CHECK_EQ(code, 0);
    CHECK(same_file(ref, out));
    /* The folder keeps two checkpoints at most, and no temporary file
     * outlives a finished run's writes... except a killed writer's. */
    DIR *d = opendir(ck);
    CHECK(d);
    int files = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (!strncmp(e->d_name, "checkpoint-", 11)) files++;
    closedir(d);
    CHECK_LE(files, 2);
    CHECK_GE(files, 1);
    CHECK(text);
    CHECK_STR_CONTAINS(text, "resumed at");
    free(text);
    remove_tree(dir);
    return 0;
}

MC_TEST(run_sigkill_resume_gray_scott_png_identical)
{
    if (!cpu_device()) MC_SKIP("the kill timings are set for the cpu device");
    const char *args[] = {"gray-scott", "--device", "cpu", "--size", "128", "--steps", "12000", "--out", "OUT"};
    return kill_and_resume(args, 9, ".png", 4);
}

static int life_kill_test(bool isolate)
{
    if (!cpu_device()) MC_SKIP("these runs use --device cpu");
    char dir[512], board[600], pair[620];
    temp_dir(dir, sizeof dir);
    CHECK(dir[0]);
    snprintf(board, sizeof board, "%s/board.npy", dir);
    CHECK_EQ(write_board(board, 256, 256), 0);
    snprintf(pair, sizeof pair, "pair:%s", board);
    /* The MSL example, as a user runs it. */
    const char *args[] = {EXAMPLES "/life.metal",
                          "--device",
                          "cpu",
                          "--function",
                          "life_step",
                          "--arg",
                          pair,
                          "--arg",
                          "iter",
                          "--arg",
                          "u32:256,u32:256",
                          "--steps",
                          "6001",
                          "--out",
                          "OUT",
                          "--isolate"};
    int rc = kill_and_resume(args, isolate ? 16 : 15, ".npy", 4);
    remove_tree(dir);
    return rc;
}

MC_TEST(run_sigkill_resume_user_kernel_npy_identical)
{
    return life_kill_test(false);
}

MC_TEST(run_sigkill_resume_isolated_npy_identical)
{
    return life_kill_test(true);
}

MC_TEST(run_resume_refuses_other_parameters)
{
    char dir[512], cmd[4096];
    temp_dir(dir, sizeof dir);
    CHECK(dir[0]);
    snprintf(cmd, sizeof cmd, "%s/board.npy", dir);
    CHECK_EQ(write_board(cmd, 64, 64), 0);
    int code = -1;
    const char *base =
        "%s run %s/life.metal --device %s --function life_step --arg pair:%s/board.npy --arg iter "
        "--arg u32:64,u32:%d --steps %d --out %s/out.npy --checkpoint-dir %s/ck --checkpoint-ms 1 %s";
    snprintf(cmd, sizeof cmd, base, CLI, EXAMPLES, run_device(), dir, 64, 2000, dir, dir, "");
    char *out = run_command(cmd, &code);
    CHECK(out);
    CHECK_EQ(code, 0);
    CHECK_STR_CONTAINS(out, "checkpoints  ");
    free(out);
    /* Another height in the scalars, then another step count. */
    snprintf(cmd, sizeof cmd, base, CLI, EXAMPLES, run_device(), dir, 63, 2000, dir, dir, "--resume");
    out = run_command(cmd, &code);
    CHECK(out);
    CHECK_EQ(code, 1);
    CHECK_STR_CONTAINS(out, "parameters differ");
    free(out);
    snprintf(cmd, sizeof cmd, base, CLI, EXAMPLES, run_device(), dir, 64, 2001, dir, dir, "--resume");
    out = run_command(cmd, &code);
    CHECK(out);
    CHECK_EQ(code, 1);
    CHECK_STR_CONTAINS(out, "parameters differ");
    free(out);
    /* The same run resumes. */
    snprintf(cmd, sizeof cmd, base, CLI, EXAMPLES, run_device(), dir, 64, 2000, dir, dir, "--resume");
    out = run_command(cmd, &code);
    CHECK(out);
    CHECK_EQ(code, 0);
    CHECK_STR_CONTAINS(out, "resumed at");
    free(out);
    remove_tree(dir);
    return 0;
}

/* Everything run gray-scott has: injected faults, recovered from, and an
 * isolated worker killed and hung, give the same bytes. */
MC_TEST(run_kernel_survives_faults_byte_for_byte)
{
    char dir[512], cmd[4096];
    temp_dir(dir, sizeof dir);
    CHECK(dir[0]);
    snprintf(cmd, sizeof cmd, "%s/board.npy", dir);
    CHECK_EQ(write_board(cmd, 96, 96), 0);
    const char *extra[] = {"", "--inject-faults timeout@3,device-lost@6,page-fault@9",
                           "--isolate --deadline-ms 1000 --inject-faults kill@4,hang@8,device-lost@12"};
    const char *want[] = {"recoveries   0", "recoveries   3", "worker restarts 3"};
    for (int i = 0; i < 3; i++) {
        int code = -1;
        snprintf(cmd, sizeof cmd,
                 "%s run %s/life.metal --device %s --function life_step --arg pair:%s/board.npy --arg iter --arg "
                 "u32:96,u32:96 --steps 1001 --budget-ms 1 --out %s/out%d.npy --progress none %s",
                 CLI, EXAMPLES, run_device(), dir, dir, i, extra[i]);
        char *out = run_command(cmd, &code);
        CHECK(out);
        fprintf(stderr, "%s", out);
        CHECK_EQ(code, 0);
        CHECK_STR_CONTAINS(out, want[i]);
        free(out);
        if (i) {
            char a[600], b[600];
            snprintf(a, sizeof a, "%s/out0.npy", dir);
            snprintf(b, sizeof b, "%s/out%d.npy", dir, i);
            CHECK(same_file(a, b));
        }
    }
    remove_tree(dir);
    return 0;
}
