/* Bad input and hostile conditions met by the command-line program: every
 * path ends in a clear error that names the cause, and nothing the user
 * owns is lost (docs/RELIABILITY.md lists them all). */
#include "mc_test.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

/* Runs cmd through the shell; its stdout and stderr together. */
static char *run_command(const char *cmd, int *status)
{
    char full[8400];
    snprintf(full, sizeof full, "%s 2>&1", cmd);
    FILE *p = popen(full, "r");
    if (!p) return NULL;
    size_t cap = 1 << 16, len = 0;
    char *out = malloc(cap);
    size_t n;
    while (out && (n = fread(out + len, 1, cap - 1 - len, p)) > 0) len += n;
    int st = pclose(p);
    if (status) *status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    if (out) out[len] = '\0';
    return out;
}

/* The command exits non-zero and says why (want in its output). */
static int expect_refusal(const char *args, const char *want)
{
    char cmd[8192];
    snprintf(cmd, sizeof cmd, "%s/metal-compute %s", MC_BINARY_DIR, args);
    int st = 0;
    char *out = run_command(cmd, &st);
    CHECK(out);
    if (st == 0 || st >= 128 || !strstr(out, want)) {
        fprintf(stderr, "metal-compute %s: exit %d, output:\n%s\n(wanted a refusal naming \"%s\")\n", args, st, out,
                want);
        free(out);
        return 1;
    }
    free(out);
    return 0;
}

MC_TEST(cli_unknown_arguments_are_refused)
{
    CHECK_EQ(expect_refusal("version --bogus", "unexpected argument '--bogus'"), 0);
    CHECK_EQ(expect_refusal("help --bogus", "unexpected argument '--bogus'"), 0);
    CHECK_EQ(expect_refusal("--version --bogus", "unexpected argument '--bogus'"), 0);
    CHECK_EQ(expect_refusal("info --bogus", "'--bogus'"), 0);
    CHECK_EQ(expect_refusal("bench --bogus", "'--bogus'"), 0);
    CHECK_EQ(expect_refusal("cache --bogus", "'--bogus'"), 0);
    CHECK_EQ(expect_refusal("cache list --bogus", "'--bogus'"), 0);
    CHECK_EQ(expect_refusal("cache clear --bogus", "'--bogus'"), 0);
    CHECK_EQ(expect_refusal("run gray-scott --bogus", "'--bogus'"), 0);
    CHECK_EQ(expect_refusal("bogus", "unknown command 'bogus'"), 0);
    return 0;
}

MC_TEST(cli_fault_lists_are_refused_before_work)
{
    char dir[] = "/tmp/mc-rel-XXXXXX";
    CHECK(mkdtemp(dir));
    char args[8192];
    static const char *bad[] = {"timeout@-1", "timeout@99999999999999999999", "kill@-1", "garbage",
                                "timeout@3,page-fault@3"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        snprintf(args, sizeof args, "run gray-scott --size 16 --steps 10 --out %s/x.png --inject-faults %s", dir,
                 bad[i]);
        CHECK_EQ(expect_refusal(args, "--inject-faults"), 0);
        snprintf(args, sizeof args,
                 "run gray-scott --size 16 --steps 10 --out %s/x.png --isolate --inject-faults %s", dir, bad[i]);
        CHECK_EQ(expect_refusal(args, "--inject-faults"), 0);
    }
    snprintf(args, sizeof args, "run gray-scott --size 16 --steps 10 --out %s/x.png", dir);
    setenv("MC_INJECT_FAULTS", "garbage", 1);
    int rc = expect_refusal(args, "MC_INJECT_FAULTS: 'garbage' is not KIND@N");
    unsetenv("MC_INJECT_FAULTS");
    CHECK_EQ(rc, 0);
    snprintf(args, sizeof args, "%s/x.png", dir);
    CHECK(access(args, F_OK) != 0); /* nothing ran */
    rmdir(dir);
    return 0;
}

MC_TEST(cli_faults_that_never_fired_are_reported)
{
    char dir[] = "/tmp/mc-rel-XXXXXX";
    CHECK(mkdtemp(dir));
    char cmd[8192];
    const char *modes[] = {"", "--isolate"};
    for (int m = 0; m < 2; m++) {
        snprintf(cmd, sizeof cmd,
                 "%s/metal-compute run gray-scott --size 16 --steps 20 --out %s/x.png %s "
                 "--inject-faults timeout@2,%s@900000",
                 MC_BINARY_DIR, dir, modes[m], m ? "kill" : "page-fault");
        int st = -1;
        char *out = run_command(cmd, &st);
        CHECK(out);
        fprintf(stderr, "%s", out);
        CHECK_EQ(st, 0);
        CHECK_STR_CONTAINS(out, m ? "kill@900000 never fired" : "page-fault@900000 never fired");
        CHECK(!strstr(out, "timeout@2 never fired"));
        free(out);
    }
    snprintf(cmd, sizeof cmd, "%s/x.png", dir);
    unlink(cmd);
    rmdir(dir);
    return 0;
}
