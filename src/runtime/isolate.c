/*
 * DOC: Isolation: processes, the channel, shared memory, worker faults
 *
 * An isolated runner or stream (docs/ISOLATION.md) does its device work in
 * a worker process, so that a fault that poisons a process (a CUDA context
 * after an illegal address, a Metal process whose access was revoked)
 * costs a worker, not the run. What this file owns, for runner_isolated.c
 * and stream_isolated.c:
 *
 *  - the launcher: a small process forked once from the caller when the
 *    isolated object is created, before its supervisor starts any thread.
 *    It forks every worker on request, kills and reaps them, so restarts
 *    never fork the caller's (possibly multithreaded) process and every
 *    worker starts from the caller's memory as it was at create, with no
 *    device library initialised (none is, in the caller: checked here
 *    through device.c's record of backends that are not fork-safe);
 *  - the channel: fixed-size messages over a local stream socket, with a
 *    descriptor passed alongside when needed (the runner's state area);
 *  - worker faults for tests and CI: kill@N and hang@N fire in the
 *    worker's commit hook at the Nth command buffer of the whole run,
 *    counted in shared memory across workers, so each fires once; device
 *    faults in the same spec go to the worker's device;
 *  - the supervisor's bookkeeping shared by runner and stream: the policy
 *    (deadlines, restart bound), which errors a restart may mend, and the
 *    cost of a restart;
 *  - the supervisor's waits, one loop for both: poll() on the worker's
 *    channel and a wake-up pipe with a deadline, a new worker awaited until
 *    it is ready (or hangs, dies, reports an error), and the cause of a
 *    restart counted and put in words.
 */
#include "runtime/isolate.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef MSG_NOSIGNAL
#define MSG_NOSIGNAL 0 /* macOS: SO_NOSIGPIPE is set on the socket instead */
#endif

#define DEFAULT_DEADLINE_MS 10000.0
#define MIN_DEADLINE_MS 250.0
#define DEFAULT_START_TIMEOUT_MS 120000.0
#define DEFAULT_MAX_RESTARTS 5u

/* ---- the channel ----------------------------------------------------------- */

void mc__iso_msg_init(mc__iso_msg *m, uint32_t type)
{
    memset(m, 0, sizeof *m);
    m->magic = MC__ISO_MAGIC;
    m->type = type;
    m->t_ns = mc__now_ns();
}

static void set_cloexec(int fd)
{
    int f = fcntl(fd, F_GETFD);
    if (f >= 0) fcntl(fd, F_SETFD, f | FD_CLOEXEC);
}

static int make_socketpair(int sv[2])
{
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0) return -1;
    for (int i = 0; i < 2; i++) {
        set_cloexec(sv[i]);
#ifdef SO_NOSIGPIPE
        int one = 1;
        setsockopt(sv[i], SOL_SOCKET, SO_NOSIGPIPE, &one, sizeof one);
#endif
    }
    return 0;
}

bool mc__iso_send(int sock, const mc__iso_msg *m, int fd_to_pass)
{
    const char *p = (const char *)m;
    size_t left = sizeof *m;
    bool first = true;
    while (left) {
        struct iovec iov = {(void *)p, left};
        struct msghdr h;
        memset(&h, 0, sizeof h);
        h.msg_iov = &iov;
        h.msg_iovlen = 1;
        union {
            struct cmsghdr align;
            char buf[CMSG_SPACE(sizeof(int))];
        } ctl;
        if (first && fd_to_pass >= 0) {
            memset(&ctl, 0, sizeof ctl);
            h.msg_control = ctl.buf;
            h.msg_controllen = sizeof ctl.buf;
            struct cmsghdr *c = CMSG_FIRSTHDR(&h);
            c->cmsg_level = SOL_SOCKET;
            c->cmsg_type = SCM_RIGHTS;
            c->cmsg_len = CMSG_LEN(sizeof(int));
            memcpy(CMSG_DATA(c), &fd_to_pass, sizeof(int));
        }
        ssize_t n = sendmsg(sock, &h, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                struct pollfd pf = {sock, POLLOUT, 0};
                poll(&pf, 1, 100);
                continue;
            }
            return false;
        }
        first = false;
        p += n;
        left -= (size_t)n;
    }
    return true;
}

/* Reads len bytes; the first read may bring a descriptor. */
static bool read_full(int sock, void *buf, size_t len, int *fd)
{
    char *p = buf;
    bool first = true;
    while (len) {
        struct iovec iov = {p, len};
        struct msghdr h;
        memset(&h, 0, sizeof h);
        h.msg_iov = &iov;
        h.msg_iovlen = 1;
        union {
            struct cmsghdr align;
            char buf[CMSG_SPACE(sizeof(int))];
        } ctl;
        if (first) {
            h.msg_control = ctl.buf;
            h.msg_controllen = sizeof ctl.buf;
        }
        int flags = 0;
#ifdef MSG_CMSG_CLOEXEC
        flags |= MSG_CMSG_CLOEXEC;
#endif
        ssize_t n = recvmsg(sock, &h, flags);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            struct pollfd pf = {sock, POLLIN, 0};
            poll(&pf, 1, 100);
            continue;
        }
        if (n <= 0) return false;
        if (first && h.msg_controllen) {
            for (struct cmsghdr *c = CMSG_FIRSTHDR(&h); c; c = CMSG_NXTHDR(&h, c)) {
                if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
                int got;
                memcpy(&got, CMSG_DATA(c), sizeof got);
                if (fd && *fd < 0) {
                    *fd = got;
                    set_cloexec(got);
                } else {
                    close(got);
                }
            }
        }
        first = false;
        p += n;
        len -= (size_t)n;
    }
    return true;
}

bool mc__iso_recv(int sock, mc__iso_msg *m, int *fd)
{
    if (fd) *fd = -1;
    if (!read_full(sock, m, sizeof *m, fd) || m->magic != MC__ISO_MAGIC) {
        if (fd && *fd >= 0) close(*fd);
        if (fd) *fd = -1;
        return false;
    }
    m->text[sizeof m->text - 1] = '\0';
    return true;
}

/* ---- the launcher ----------------------------------------------------------- */

mc_status mc__iso_fork_allowed(const char *what)
{
    char name[32];
    if (mc__fork_unsafe_backend_used(name, sizeof name))
        return mc__fail(MC_ERR_INVALID_STATE,
                        "%s: this process has used the %s device, whose driver cannot be used again in a forked "
                        "worker; create isolated runs before opening or listing %s devices (docs/ISOLATION.md)",
                        what, name, name);
    return MC_OK;
}

/* Waits for pid up to grace_ms, then kills it; its wait status. */
static int reap_child(pid_t pid, bool kill_now, double grace_ms)
{
    int ws = 0;
    if (kill_now) kill(pid, SIGKILL);
    uint64_t until = mc__now_ns() + (uint64_t)(grace_ms * 1e6);
    for (;;) {
        pid_t r = waitpid(pid, &ws, kill_now ? 0 : WNOHANG);
        if (r == pid) return ws;
        if (r < 0 && errno != EINTR) return 0; /* not ours (any more) */
        if (r == 0) {
            if (mc__now_ns() >= until) {
                kill(pid, SIGKILL);
                kill_now = true;
            } else {
                mc__sleep_ns(500000);
            }
        }
    }
}

/* The launcher's whole life: single-threaded, it forks, kills and reaps. */
static void launcher_main(int sock, mc__iso_worker_fn fn, void *ctx)
{
    pid_t cur = 0;
    mc__iso_msg m;
    while (mc__iso_recv(sock, &m, NULL)) {
        mc__iso_msg r;
        if (m.type == MC__ISO_SPAWN) {
            mc__iso_msg_init(&r, MC__ISO_SPAWNED);
            int sv[2];
            if (make_socketpair(sv) != 0) {
                r.status = MC_ERR_INTERNAL;
                snprintf(r.text, sizeof r.text, "socketpair: %s", strerror(errno));
                if (!mc__iso_send(sock, &r, -1)) break;
                continue;
            }
            pid_t pid = fork();
            if (pid == 0) {
                close(sock);
                close(sv[0]);
                int rc = fn(ctx, sv[1]);
                fflush(NULL);
                _exit(rc);
            }
            close(sv[1]);
            if (pid < 0) {
                r.status = MC_ERR_INTERNAL;
                snprintf(r.text, sizeof r.text, "fork: %s", strerror(errno));
                close(sv[0]);
                if (!mc__iso_send(sock, &r, -1)) break;
                continue;
            }
            cur = pid;
            r.a = (uint64_t)pid;
            bool ok = mc__iso_send(sock, &r, sv[0]);
            close(sv[0]);
            if (!ok) break;
        } else if (m.type == MC__ISO_REAP) {
            pid_t pid = (pid_t)m.a;
            mc__iso_msg_init(&r, MC__ISO_REAPED);
            r.a = m.a;
            r.status = reap_child(pid, m.status != 0, (double)m.b);
            if (pid == cur) cur = 0;
            if (!mc__iso_send(sock, &r, -1)) break;
        } else if (m.type == MC__ISO_STOP) {
            break;
        }
    }
    if (cur > 0) reap_child(cur, true, 0);
    _exit(0);
}

mc_status mc__iso_launcher_start(mc__iso_launcher *l, mc__iso_worker_fn fn, void *ctx)
{
    l->pid = 0;
    l->sock = -1;
    int sv[2];
    if (make_socketpair(sv) != 0)
        return mc__fail(MC_ERR_INTERNAL, "isolation: cannot make a socket pair: %s", strerror(errno));
    fflush(NULL); /* nothing buffered here is written twice */
    mc__log_fork_prepare();
    pid_t pid = fork();
    if (pid == 0) {
        mc__log_fork_child();
        close(sv[0]);
        signal(SIGCHLD, SIG_DFL); /* its workers are waited for, whatever the caller set */
        launcher_main(sv[1], fn, ctx);
    }
    mc__log_fork_parent();
    int e = errno;
    close(sv[1]);
    if (pid < 0) {
        close(sv[0]);
        return mc__fail(MC_ERR_INTERNAL, "isolation: cannot fork the launcher: %s", strerror(e));
    }
    l->pid = pid;
    l->sock = sv[0];
    return MC_OK;
}

mc_status mc__iso_launcher_spawn(mc__iso_launcher *l, pid_t *pid, int *sock)
{
    *pid = 0;
    *sock = -1;
    mc__iso_msg m;
    mc__iso_msg_init(&m, MC__ISO_SPAWN);
    int fd = -1;
    if (l->sock < 0 || !mc__iso_send(l->sock, &m, -1) || !mc__iso_recv(l->sock, &m, &fd) || m.type != MC__ISO_SPAWNED)
        return mc__fail(MC_ERR_WORKER_LOST, "isolation: the launcher process is gone");
    if (m.status != MC_OK || fd < 0) {
        if (fd >= 0) close(fd);
        return mc__fail(m.status != MC_OK ? (mc_status)m.status : MC_ERR_INTERNAL,
                        "isolation: cannot start a worker: %s", m.text);
    }
    *pid = (pid_t)m.a;
    *sock = fd;
    return MC_OK;
}

mc_status mc__iso_launcher_reap(mc__iso_launcher *l, pid_t pid, bool kill_now, double grace_ms, int *wstatus)
{
    if (wstatus) *wstatus = 0;
    mc__iso_msg m;
    mc__iso_msg_init(&m, MC__ISO_REAP);
    m.a = (uint64_t)pid;
    m.b = (uint64_t)(grace_ms > 0 ? grace_ms : 0);
    m.status = kill_now;
    if (l->sock < 0 || !mc__iso_send(l->sock, &m, -1) || !mc__iso_recv(l->sock, &m, NULL) || m.type != MC__ISO_REAPED)
        return mc__fail(MC_ERR_WORKER_LOST, "isolation: the launcher process is gone");
    if (wstatus) *wstatus = m.status;
    return MC_OK;
}

void mc__iso_launcher_stop(mc__iso_launcher *l)
{
    if (l->sock >= 0) {
        mc__iso_msg m;
        mc__iso_msg_init(&m, MC__ISO_STOP);
        mc__iso_send(l->sock, &m, -1);
        close(l->sock);
        l->sock = -1;
    }
    if (l->pid > 0) {
        int ws;
        while (waitpid(l->pid, &ws, 0) < 0 && errno == EINTR) {
        }
        l->pid = 0;
    }
}

const char *mc__iso_unprefixed(const char *text, const char *kind, const char *label)
{
    size_t k = strlen(kind), l = strlen(label);
    if (!strncmp(text, kind, k) && !strncmp(text + k, " '", 2) && !strncmp(text + k + 2, label, l) &&
        !strncmp(text + k + 2 + l, "': ", 3))
        return text + k + 2 + l + 3;
    return text;
}

void mc__iso_copy_text(char *dst, size_t cap, const char *src)
{
    if (!cap) return;
    size_t n = strlen(src);
    if (n < cap) {
        memcpy(dst, src, n + 1);
        return;
    }
    if (cap < 4) {
        dst[0] = '\0';
        return;
    }
    memcpy(dst, src, cap - 4);
    memcpy(dst + cap - 4, "...", 4);
}

/* ---- faults ------------------------------------------------------------------ */

mc_status mc__iso_parse_faults(const char *spec, mc__iso_faults *out)
{
    return mc__fault_list_parse("fault list", spec, true, out->f, &out->n);
}

static void commit_hook(void *user, uint64_t n)
{
    (void)n;
    mc__iso_armed *a = user;
    if (a->before) a->before(a->before_ctx);
    uint64_t total = atomic_fetch_add(&a->shared->commits, 1) + 1;
    for (size_t i = 0; i < a->faults.n; i++) {
        if (a->faults.f[i].at != total) continue;
        if (a->faults.f[i].kind == MC__ISO_FAULT_KILL) {
            mc__log(MC_LOG_INFO, "isolate.fault_kill", "injected: the worker kills itself at command buffer %llu",
                    (unsigned long long)total);
            kill(getpid(), SIGKILL);
        } else {
            mc__log(MC_LOG_INFO, "isolate.fault_hang", "injected: the worker stops answering at command buffer %llu",
                    (unsigned long long)total);
        }
        for (;;) mc__sleep_ns(1000000000ull); /* until the supervisor kills it */
    }
}

void mc__iso_arm_faults(mc__iso_armed *arm, mc_device *dev, mc__iso_shared *shared, const mc__iso_faults *faults)
{
    arm->shared = shared;
    arm->faults.n = 0;
    uint64_t base = atomic_load(&shared->commits);
    for (size_t i = 0; i < faults->n; i++) {
        const mc__iso_fault *f = &faults->f[i];
        if (f->at <= base) continue; /* reached by an earlier worker */
        if (f->kind < 0) arm->faults.f[arm->faults.n++] = *f;
        else if (mc_device_inject_fault(dev, (mc_status)f->kind, f->at - base) != MC_OK)
            mc__log(MC_LOG_ERROR, "isolate.bad_fault", "cannot inject %s: %s", mc_status_name((mc_status)f->kind),
                    mc_last_error());
    }
    mc__device_set_commit_hook(dev, commit_hook, arm);
}

/* ---- the worker's device -------------------------------------------------------- */

mc_status mc__iso_open_device(const char *spec, int64_t time_limit_ms, uint32_t threads, mc_device **out)
{
    mc_device_desc dd = MC_DEVICE_DESC_INIT;
    if (spec && *spec) {
        mc_status s = mc__device_parse_spec(spec, &dd.kind, &dd.index);
        if (s != MC_OK) return s;
    }
    dd.time_limit_ms = time_limit_ms;
    dd.threads = threads;
    return mc_device_open(&dd, out);
}

/* ---- the supervisor's bookkeeping --------------------------------------------------- */

mc_status mc__iso_policy_init(mc__iso_policy *p, const mc_isolate_desc *d, const char *what)
{
    memset(p, 0, sizeof *p);
    if (d->device && *d->device) {
        mc_device_kind kind;
        int index;
        mc_status s = mc__device_parse_spec(d->device, &kind, &index);
        if (s != MC_OK) {
            char why[256];
            snprintf(why, sizeof why, "%s", mc_last_error());
            return mc__fail(s, "%s: isolate->device: %s", what, why);
        }
    }
    if (d->time_limit_ms < MC_TIME_LIMIT_NONE)
        return mc__fail(MC_ERR_INVALID_ARGUMENT, "%s: isolate->time_limit_ms %lld is negative", what,
                        (long long)d->time_limit_ms);
    double dl = d->deadline_ms, st = d->start_timeout_ms;
    if (!(dl == 0 || dl >= MIN_DEADLINE_MS) || dl != dl)
        return mc__fail(MC_ERR_INVALID_ARGUMENT, "%s: isolate->deadline_ms is %g; 0 (default %g) or at least %g", what,
                        dl, DEFAULT_DEADLINE_MS, MIN_DEADLINE_MS);
    if (!(st >= 0) || st != st)
        return mc__fail(MC_ERR_INVALID_ARGUMENT, "%s: isolate->start_timeout_ms is %g; 0 (default) or more", what, st);
    mc_status s = mc__iso_parse_faults(d->inject_faults, &p->faults);
    if (s != MC_OK) {
        char why[MC__ISO_TEXT_MAX];
        snprintf(why, sizeof why, "%s", mc_last_error());
        return mc__fail(s, "%s: isolate->inject_faults: %s", what, why);
    }
    p->device = mc__strdup(d->device && *d->device ? d->device : "");
    if (!p->device) return mc__fail(MC_ERR_NO_MEMORY, "%s: out of host memory", what);
    p->time_limit_ms = d->time_limit_ms;
    p->threads = d->threads;
    p->deadline_ns = (uint64_t)((dl ? dl : DEFAULT_DEADLINE_MS) * 1e6);
    p->start_timeout_ns = (uint64_t)((st ? st : DEFAULT_START_TIMEOUT_MS) * 1e6);
    p->max_restarts = d->max_restarts ? d->max_restarts : DEFAULT_MAX_RESTARTS;
    return MC_OK;
}

void mc__iso_policy_free(mc__iso_policy *p)
{
    free(p->device);
    p->device = NULL;
}

bool mc__iso_restartable(mc_status s)
{
    /* What the worker's own recovery could not mend but a new process may:
     * a lost or poisoned device, revoked access, faults that kept coming.
     * Refused work and broken resources fail the same way every time. */
    return mc_status_is_device_error(s) && s != MC_ERR_NOT_PERMITTED && s != MC_ERR_INVALID_RESOURCE;
}

void mc__iso_describe_exit(int ws, char *out, size_t cap)
{
    if (WIFSIGNALED(ws)) snprintf(out, cap, "killed by signal %d (%s)", WTERMSIG(ws), strsignal(WTERMSIG(ws)));
    else if (WIFEXITED(ws)) snprintf(out, cap, "exited with code %d without a report", WEXITSTATUS(ws));
    else snprintf(out, cap, "ended (wait status 0x%x)", (unsigned)ws);
}

/* ---- the supervisor's waits -------------------------------------------------------- */

mc_status mc__iso_wake_open(int wake[2], const char *what)
{
    if (pipe(wake) != 0) {
        wake[0] = wake[1] = -1;
        return mc__fail(MC_ERR_INTERNAL, "%s: pipe: %s", what, strerror(errno));
    }
    for (int i = 0; i < 2; i++) {
        fcntl(wake[i], F_SETFL, fcntl(wake[i], F_GETFL) | O_NONBLOCK);
        fcntl(wake[i], F_SETFD, FD_CLOEXEC);
    }
    return MC_OK;
}

void mc__iso_wake_signal(const int wake[2])
{
    if (wake[1] >= 0) {
        ssize_t n = write(wake[1], "w", 1);
        (void)n; /* full: a wake-up is pending anyway */
    }
}

void mc__iso_wake_close(int wake[2])
{
    for (int i = 0; i < 2; i++) {
        if (wake[i] >= 0) close(wake[i]);
        wake[i] = -1;
    }
}

int mc__iso_wait(const mc__iso_waiter *w, int sock, mc__iso_msg *m, uint64_t timeout_ns)
{
    uint64_t deadline = mc__deadline(timeout_ns);
    for (;;) {
        /* A negative descriptor is ignored by poll(): no worker, only the wake-up. */
        struct pollfd pf[2] = {{sock, POLLIN, 0}, {w->wake_fd, POLLIN, 0}};
        uint64_t now = mc__now_ns();
        int ms = now >= deadline          ? 0
                 : deadline == UINT64_MAX ? -1
                                          : (int)MC__MIN((deadline - now + 999999) / 1000000, 3600000ull);
        int n = poll(pf, 2, ms);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return -1;
        if (sock >= 0 && pf[0].revents) return mc__iso_recv(sock, m, NULL) ? 1 : -1;
        if (pf[1].revents) {
            char buf[64];
            while (read(w->wake_fd, buf, sizeof buf) > 0) {
            }
            if (!w->stop || w->stop(w->ctx)) return 2;
        }
        if (n == 0 && mc__now_ns() >= deadline) return 0;
    }
}

mc_status mc__iso_await_ready(const mc__iso_waiter *w, int sock, uint64_t t0, uint64_t timeout_ns, mc__iso_msg *ready,
                              mc__iso_cause *cause, int *wstatus, char *text, size_t cap)
{
    *cause = MC__ISO_CAUSE_ERROR;
    *wstatus = 0;
    text[0] = '\0';
    for (;;) {
        uint64_t now = mc__now_ns(), until = t0 + timeout_ns;
        int e = mc__iso_wait(w, sock, ready, until > now ? until - now : 0);
        if (e == 2) {
            w->end_worker(w->ctx, true, 0, NULL);
            snprintf(text, cap, "cancelled while a worker started");
            return MC_ERR_CANCELLED;
        }
        if (e == 0) {
            w->end_worker(w->ctx, true, 0, NULL);
            *cause = MC__ISO_CAUSE_HUNG;
            snprintf(text, cap, "the worker was not ready within %.0f ms (opening the device and setup)",
                     (double)timeout_ns / 1e6);
            return MC_ERR_WORKER_LOST;
        }
        if (e < 0) {
            /* It may still be writing its last words: a short grace. */
            w->end_worker(w->ctx, false, 200, wstatus);
            *cause = MC__ISO_CAUSE_DIED;
            char how[128];
            mc__iso_describe_exit(*wstatus, how, sizeof how);
            snprintf(text, cap, "the worker %s while starting", how);
            return MC_ERR_WORKER_LOST;
        }
        if (ready->type == MC__ISO_ERROR) {
            w->end_worker(w->ctx, false, 1000, NULL);
            snprintf(text, cap, "%s", ready->text);
            return (mc_status)ready->status;
        }
        if (ready->type == MC__ISO_READY) return MC_OK;
    }
}

mc_status mc__iso_note_cause(mc_isolate_stats *st, mc__iso_cause cause, mc_status status, int wstatus,
                             uint64_t deadline_ns, const char *hung_while, const char *text, char *what, size_t cap)
{
    if (cause == MC__ISO_CAUSE_DIED) {
        char how[128];
        mc__iso_describe_exit(wstatus, how, sizeof how);
        if (WIFSIGNALED(wstatus)) st->last_signal = WTERMSIG(wstatus);
        snprintf(what, cap, "the worker %s", how);
        st->deaths++;
        status = MC_ERR_WORKER_LOST;
    } else if (cause == MC__ISO_CAUSE_HUNG) {
        snprintf(what, cap, "the worker sent nothing for %.0f ms%s", (double)deadline_ns / 1e6, hung_while);
        st->hangs++;
        status = MC_ERR_WORKER_LOST;
    } else {
        snprintf(what, cap, "the worker reported %s: %s", mc_status_name(status), text);
        st->device_errors++;
    }
    st->last_cause = status;
    mc__iso_copy_text(st->last_cause_text, sizeof st->last_cause_text, what);
    return status;
}

void mc__iso_clock_fault(mc__iso_clock *c, uint64_t last_progress_ns, uint64_t fault_ns, uint64_t reaped_ns)
{
    /* Faults in a row are one outage: it began when work last advanced. */
    if (!c->measuring) c->stall_ns = last_progress_ns;
    c->measuring = true;
    c->fault_ns = fault_ns;
    c->reaped_ns = reaped_ns;
}

void mc__iso_clock_progress(mc__iso_clock *c, mc_isolate_stats *st, uint64_t now_ns)
{
    if (!c->measuring) return;
    c->measuring = false;
    st->outage_ms_last = c->stall_ns && c->stall_ns <= now_ns ? (double)(now_ns - c->stall_ns) / 1e6 : 0;
    double total = (double)(now_ns - c->fault_ns) / 1e6;
    st->restart_ms_last = total;
    if (total > st->restart_ms_max) st->restart_ms_max = total;
    c->sum_ms += total;
    c->n++;
    st->restart_ms_mean = c->sum_ms / c->n;
    st->reap_ms_last = (double)(c->reaped_ns - c->fault_ns) / 1e6;
    st->ready_ms_last = (double)(c->ready_ns - c->reaped_ns) / 1e6;
    st->resume_ms_last = (double)(now_ns - c->ready_ns) / 1e6;
    mc__log(
        MC_LOG_INFO, "isolate.restart_cost",
        "restart: %.1f ms from the fault to progress (reap %.1f, start %.1f, resume %.1f); %.1f ms without progress",
        total, st->reap_ms_last, st->ready_ms_last, st->resume_ms_last, st->outage_ms_last);
}
