/*
 * DOC: Logging
 *
 * Detail goes to one callback with stable message identifiers (sokol's
 * logger idea), never straight to stdout. The default writes warnings and
 * errors to stderr; MC_LOG picks the level.
 */
#include "core/core.h"

#include <pthread.h>
#include <stdio.h>
#include <string.h>

static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;
static mc_log_fn log_fn;
static void *log_user;
static int log_min = -1; /* -1: not read from the environment yet */

static int level_from_env(void)
{
    const char *v = mc__env_str("MC_LOG", NULL);
    if (!v) return MC_LOG_WARN;
    static const char *const names[] = {"", "debug", "info", "warn", "error", "off"};
    for (int i = 1; i < 6; i++)
        if (!strcmp(v, names[i])) return i;
    return MC_LOG_WARN;
}

void mc_log_set_callback(mc_log_fn fn, void *user, mc_log_level min_level)
{
    pthread_mutex_lock(&log_lock);
    log_fn = fn;
    log_user = user;
    log_min = fn ? (int)min_level : level_from_env();
    pthread_mutex_unlock(&log_lock);
}

bool mc__log_enabled(mc_log_level level)
{
    pthread_mutex_lock(&log_lock);
    if (log_min < 0) log_min = level_from_env();
    bool on = (int)level >= log_min && level < MC_LOG_OFF;
    pthread_mutex_unlock(&log_lock);
    return on;
}

void mc__log(mc_log_level level, const char *id, const char *fmt, ...)
{
    if (!mc__log_enabled(level)) return;
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    pthread_mutex_lock(&log_lock);
    mc_log_fn fn = log_fn;
    void *user = log_user;
    pthread_mutex_unlock(&log_lock);
    if (fn) {
        fn(user, level, id, msg);
        return;
    }
    static const char *const names[] = {"", "debug", "info", "warning", "error", ""};
    fprintf(stderr, "metal-compute: %s: %s [%s]\n", names[level], msg, id);
}

/* Around a fork() of the isolation layer: the child gets the lock free even
 * when another thread held it at the fork. */
void mc__log_fork_prepare(void)
{
    pthread_mutex_lock(&log_lock);
}

void mc__log_fork_parent(void)
{
    pthread_mutex_unlock(&log_lock);
}

void mc__log_fork_child(void)
{
    pthread_mutex_unlock(&log_lock);
}
