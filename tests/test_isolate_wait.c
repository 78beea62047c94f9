/*
 * The isolated supervisor's shared wait (runtime/isolate.h) on its own,
 * without a device: a socket pair stands for a worker's channel, a forked
 * child for a worker that dies, and a fake end_worker records how the
 * waiter ended the worker. The runner's and the stream's isolated back
 * ends both use these, so every way a wait can end is checked once here.
 */
#include "mc_test.h"

#include "runtime/isolate.h"

#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

/* What the fake end_worker saw, and the child it reaps (0: none). */
typedef struct fake_worker {
    int ends;
    bool kill_now;
    double grace_ms;
    pid_t child;
    int stops;     /* times stop() was asked */
    bool stop_now; /* what stop() answers */
} fake_worker;

static void fake_end(void *ctx, bool kill_now, double grace_ms, int *wstatus)
{
    fake_worker *f = ctx;
    f->ends++;
    f->kill_now = kill_now;
    f->grace_ms = grace_ms;
    if (wstatus) *wstatus = 0;
    if (f->child > 0) {
        int ws = 0;
        while (waitpid(f->child, &ws, 0) < 0) {
        }
        if (wstatus) *wstatus = ws;
        f->child = 0;
    }
}

static bool fake_stop(void *ctx)
{
    fake_worker *f = ctx;
    f->stops++;
    return f->stop_now;
}

static bool send_type(int sock, uint32_t type, mc_status status, const char *text)
{
    mc__iso_msg m;
    mc__iso_msg_init(&m, type);
    m.status = status;
    snprintf(m.text, sizeof m.text, "%s", text);
    return mc__iso_send(sock, &m, -1);
}

MC_TEST(isolate_wait_ends_on_a_message_the_deadline_the_channel_or_a_wake_up)
{
    int sv[2], wake[2];
    CHECK_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    CHECK_OK(mc__iso_wake_open(wake, "test"));
    fake_worker f = {0};
    mc__iso_waiter w = {.wake_fd = wake[0], .stop = fake_stop, .end_worker = fake_end, .ctx = &f};
    mc__iso_msg m;

    CHECK(send_type(sv[1], MC__ISO_PROGRESS, MC_OK, ""));
    CHECK_EQ(mc__iso_wait(&w, sv[0], &m, UINT64_MAX), 1);
    CHECK_EQ(m.type, MC__ISO_PROGRESS);

    /* Nothing comes: the deadline. */
    CHECK_EQ(mc__iso_wait(&w, sv[0], &m, 20000000), 0);

    /* Woken, and stop says go on: the wait lasts until its deadline. */
    f.stop_now = false;
    mc__iso_wake_signal(wake);
    CHECK_EQ(mc__iso_wait(&w, sv[0], &m, 20000000), 0);
    CHECK_EQ(f.stops, 1);
    /* Woken, and stop says so: 2, and the pipe is drained. */
    f.stop_now = true;
    mc__iso_wake_signal(wake);
    mc__iso_wake_signal(wake);
    CHECK_EQ(mc__iso_wait(&w, sv[0], &m, UINT64_MAX), 2);
    CHECK_EQ(mc__iso_wait(&w, sv[0], &m, 1000000), 0);
    /* Without stop every wake-up ends the wait; no worker: only the pipe. */
    mc__iso_waiter any = {.wake_fd = wake[0]};
    mc__iso_wake_signal(wake);
    CHECK_EQ(mc__iso_wait(&any, -1, &m, UINT64_MAX), 2);
    CHECK_EQ(mc__iso_wait(&any, -1, &m, 1000000), 0);

    /* The worker's end closes: -1. */
    close(sv[1]);
    CHECK_EQ(mc__iso_wait(&w, sv[0], &m, UINT64_MAX), -1);
    CHECK_EQ(f.ends, 0); /* waiting never ends a worker */
    close(sv[0]);
    mc__iso_wake_close(wake);
    CHECK_EQ(wake[0], -1);
    CHECK_EQ(wake[1], -1);
    return 0;
}

MC_TEST(isolate_await_ready_names_each_way_a_worker_fails_to_start)
{
    int sv[2], wake[2];
    CHECK_OK(mc__iso_wake_open(wake, "test"));
    fake_worker f = {0};
    mc__iso_waiter w = {.wake_fd = wake[0], .stop = fake_stop, .end_worker = fake_end, .ctx = &f};
    mc__iso_msg m;
    mc__iso_cause cause;
    int ws;
    char text[MC__ISO_TEXT_MAX];

    /* READY, after a message that is not: MC_OK, the worker kept. */
    CHECK_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    CHECK(send_type(sv[1], MC__ISO_TRACE, MC_OK, ""));
    CHECK(send_type(sv[1], MC__ISO_READY, MC_OK, ""));
    CHECK_OK(mc__iso_await_ready(&w, sv[0], mc__now_ns(), 10000000000ull, &m, &cause, &ws, text, sizeof text));
    CHECK_EQ(m.type, MC__ISO_READY);
    CHECK_EQ(f.ends, 0);

    /* The worker's own error: its status and text; it gets a grace to exit. */
    CHECK(send_type(sv[1], MC__ISO_ERROR, MC_ERR_DEVICE_LOST, "opening the device: gone"));
    CHECK_STATUS(mc__iso_await_ready(&w, sv[0], mc__now_ns(), 10000000000ull, &m, &cause, &ws, text, sizeof text),
                 MC_ERR_DEVICE_LOST);
    CHECK_EQ(cause, MC__ISO_CAUSE_ERROR);
    CHECK(strcmp(text, "opening the device: gone") == 0);
    CHECK_EQ(f.ends, 1);
    CHECK(!f.kill_now);
    CHECK_FLOAT_NEAR(f.grace_ms, 1000, 0);

    /* Not ready in time: a hang, killed at once. */
    CHECK_STATUS(mc__iso_await_ready(&w, sv[0], mc__now_ns(), 30000000, &m, &cause, &ws, text, sizeof text),
                 MC_ERR_WORKER_LOST);
    CHECK_EQ(cause, MC__ISO_CAUSE_HUNG);
    CHECK_STR_CONTAINS(text, "not ready within 30 ms");
    CHECK_EQ(f.ends, 2);
    CHECK(f.kill_now);

    /* Cancelled while it starts; a wake-up that stop declines does not. */
    f.stop_now = false;
    mc__iso_wake_signal(wake);
    CHECK(send_type(sv[1], MC__ISO_READY, MC_OK, ""));
    CHECK_OK(mc__iso_await_ready(&w, sv[0], mc__now_ns(), 10000000000ull, &m, &cause, &ws, text, sizeof text));
    f.stop_now = true;
    mc__iso_wake_signal(wake);
    CHECK_STATUS(mc__iso_await_ready(&w, sv[0], mc__now_ns(), 10000000000ull, &m, &cause, &ws, text, sizeof text),
                 MC_ERR_CANCELLED);
    CHECK_EQ(f.ends, 3);
    CHECK(f.kill_now);
    close(sv[0]);
    close(sv[1]);

    /* A worker that dies before READY: its exit status in the text. */
    CHECK_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) _exit(3); /* its end of the channel closes with it */
    close(sv[1]);
    f.child = pid;
    CHECK_STATUS(mc__iso_await_ready(&w, sv[0], mc__now_ns(), 10000000000ull, &m, &cause, &ws, text, sizeof text),
                 MC_ERR_WORKER_LOST);
    CHECK_EQ(cause, MC__ISO_CAUSE_DIED);
    CHECK(WIFEXITED(ws) && WEXITSTATUS(ws) == 3);
    CHECK_STR_CONTAINS(text, "the worker exited with code 3");
    CHECK_STR_CONTAINS(text, "while starting");
    CHECK(!f.kill_now); /* it may still be writing: a grace, not a kill */
    close(sv[0]);
    mc__iso_wake_close(wake);
    return 0;
}

MC_TEST(isolate_note_cause_counts_and_words_each_cause)
{
    mc_isolate_stats st;
    memset(&st, 0, sizeof st);
    char what[MC__ISO_TEXT_MAX + 64];

    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        raise(SIGKILL);
        _exit(0);
    }
    int ws = 0;
    while (waitpid(pid, &ws, 0) < 0) {
    }
    CHECK_STATUS(mc__iso_note_cause(&st, MC__ISO_CAUSE_DIED, MC_OK, ws, 250000000, "", "", what, sizeof what),
                 MC_ERR_WORKER_LOST);
    CHECK_STR_CONTAINS(what, "the worker killed by signal 9");
    CHECK_EQ(st.deaths, 1);
    CHECK_EQ(st.last_signal, SIGKILL);
    CHECK_EQ(st.last_cause, MC_ERR_WORKER_LOST);
    CHECK(strcmp(st.last_cause_text, what) == 0);

    CHECK_STATUS(
        mc__iso_note_cause(&st, MC__ISO_CAUSE_HUNG, MC_OK, 0, 250000000, " while it had items", "", what, sizeof what),
        MC_ERR_WORKER_LOST);
    CHECK(strcmp(what, "the worker sent nothing for 250 ms while it had items") == 0);
    CHECK_EQ(st.hangs, 1);

    CHECK_STATUS(mc__iso_note_cause(&st, MC__ISO_CAUSE_ERROR, MC_ERR_PAGE_FAULT, 0, 250000000, "", "chunk 3 faulted",
                                    what, sizeof what),
                 MC_ERR_PAGE_FAULT);
    CHECK_STR_CONTAINS(what, "the worker reported ");
    CHECK_STR_CONTAINS(what, mc_status_name(MC_ERR_PAGE_FAULT));
    CHECK_STR_CONTAINS(what, ": chunk 3 faulted");
    CHECK_EQ(st.device_errors, 1);
    CHECK_EQ(st.last_cause, MC_ERR_PAGE_FAULT);
    CHECK(strcmp(st.last_cause_text, what) == 0);
    CHECK_EQ(st.deaths, 1);
    CHECK_EQ(st.hangs, 1);
    return 0;
}

MC_TEST(isolate_clock_measures_each_restart_from_its_fault)
{
    const uint64_t ms = 1000000;
    mc_isolate_stats st;
    memset(&st, 0, sizeof st);
    mc__iso_clock c;
    memset(&c, 0, sizeof c);

    /* Progress with no restart behind it counts nothing. */
    mc__iso_clock_progress(&c, &st, 5 * ms);
    CHECK_EQ(c.n, 0);

    /* Work advanced at 1 ms, a fault at 2, reaped at 3, ready at 5,
     * progress at 12. */
    mc__iso_clock_fault(&c, 1 * ms, 2 * ms, 3 * ms);
    c.ready_ns = 5 * ms;
    mc__iso_clock_progress(&c, &st, 12 * ms);
    CHECK_FLOAT_NEAR(st.restart_ms_last, 10, 1e-9);
    CHECK_FLOAT_NEAR(st.reap_ms_last, 1, 1e-9);
    CHECK_FLOAT_NEAR(st.ready_ms_last, 2, 1e-9);
    CHECK_FLOAT_NEAR(st.resume_ms_last, 7, 1e-9);
    CHECK_FLOAT_NEAR(st.outage_ms_last, 11, 1e-9);
    CHECK_FLOAT_NEAR(st.restart_ms_mean, 10, 1e-9);
    /* Counted once. */
    mc__iso_clock_progress(&c, &st, 50 * ms);
    CHECK_EQ(c.n, 1);
    CHECK_FLOAT_NEAR(st.restart_ms_last, 10, 1e-9);

    /* Two faults in a row are one outage, from the progress before the
     * first; the restart is the last one's. */
    mc__iso_clock_fault(&c, 50 * ms, 60 * ms, 61 * ms);
    mc__iso_clock_fault(&c, 70 * ms, 80 * ms, 81 * ms);
    c.ready_ns = 84 * ms;
    mc__iso_clock_progress(&c, &st, 100 * ms);
    CHECK_FLOAT_NEAR(st.outage_ms_last, 50, 1e-9);
    CHECK_FLOAT_NEAR(st.restart_ms_last, 20, 1e-9);
    CHECK_FLOAT_NEAR(st.restart_ms_max, 20, 1e-9);
    CHECK_FLOAT_NEAR(st.restart_ms_mean, 15, 1e-9);
    CHECK_EQ(c.n, 2);
    return 0;
}
