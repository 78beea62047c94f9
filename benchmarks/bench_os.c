/*
 * What the benchmarks ask of the OS, written once for all of them: new
 * processes of this program that print their samples (bench pipeline-cache,
 * bench --peers), and removing the temporary cache folders they leave.
 */
#include "bench.h"

#include <errno.h>
#include <ftw.h>
#include <spawn.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

int mc_bench_run_child(const char *who, char *const *argv, const char *extra_env, double *v, int cap)
{
    if (!who || !argv || !argv[0] || (!v && cap > 0) || cap < 0) {
        fprintf(stderr, "bench: no program, samples or caller given for a new process\n");
        return -1;
    }
    /* this environment, with extra_env's NAME replaced (or added) */
    size_t nenv = 0;
    while (environ[nenv]) nenv++;
    char **envp = calloc(nenv + 2, sizeof *envp);
    if (!envp) return -1;
    size_t e = 0, keylen = extra_env ? strcspn(extra_env, "=") + 1 : 0;
    for (size_t i = 0; i < nenv; i++)
        if (!extra_env || strncmp(environ[i], extra_env, keylen) != 0) envp[e++] = environ[i];
    if (extra_env) envp[e++] = (char *)extra_env;
    envp[e] = NULL;
    int fds[2];
    if (pipe(fds) != 0) {
        free(envp);
        return -1;
    }
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, fds[1], 1);
    posix_spawn_file_actions_addclose(&fa, fds[0]);
    pid_t pid;
    int rc = posix_spawn(&pid, argv[0], &fa, NULL, argv, envp);
    posix_spawn_file_actions_destroy(&fa);
    free(envp);
    close(fds[1]);
    if (rc != 0) {
        close(fds[0]);
        fprintf(stderr, "%s: cannot start %s: %s\n", who, argv[0], strerror(rc));
        return -1;
    }
    /* read to the end, so the child never blocks on a full pipe */
    int n = 0;
    FILE *out = fdopen(fds[0], "r");
    char line[64];
    while (out && fgets(line, sizeof line, out))
        if (n < cap) v[n++] = atof(line);
    if (out) fclose(out);
    else close(fds[0]);
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? n : -1;
}

static int remove_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb, (void)flag, (void)ftw;
    remove(path);
    return 0;
}

void mc_bench_remove_tree(const char *root)
{
    if (root && *root) nftw(root, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}
