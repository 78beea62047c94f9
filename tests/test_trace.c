/* Traces: the file's content, not only that it parses. Every chunk of a run
 * appears once with its iterations; every injected fault appears with its
 * recovery; timestamps only move forward on each track and spans nest;
 * events from many threads all arrive; the cap drops and counts; the file
 * is written when a run fails; bad paths and bad trace files are refused. */
#include "mc_test.h"

#include "engine/trace.h"

#include <jansson.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define TR_N 1024u
#define TR_GROUP 64u

/* A runner of total iterations with small chunks, traced to path: on d,
 * or (d NULL) isolated as iso says. */
static mc_status tr_run_any(mc_device *d, const mc_isolate_desc *iso, uint64_t total, const char *path,
                            mc_runner_stats *st, mc_isolate_stats *ist)
{
    mct_rt u = {.params = {TR_N, 64, 0}};
    mc_runner_desc desc = mct_rt_desc(&u, TR_GROUP, total);
    desc.device = d;
    desc.isolate = iso;
    desc.control_arg = -1;
    desc.checkpoint_ms = 5;
    desc.budget_ms = iso ? 0.01 : 2; /* isolated: a dispatch or so per chunk, so faults land mid-run */
    desc.label = "tr";
    mc_runner *r;
    mc_status s = mc_trace_start(path);
    if (s != MC_OK) return s;
    s = mc_runner_create(&desc, &r);
    if (s == MC_OK) {
        s = mc_runner_run(r);
        mc_runner_get_stats(r, st);
        if (ist) mc_runner_get_isolate_stats(r, ist);
        mc_runner_release(r);
    }
    mc_status ws = mc_trace_stop();
    return s != MC_OK ? s : ws;
}

static mc_status tr_run(mc_device *d, uint64_t total, const char *path, mc_runner_stats *st)
{
    return tr_run_any(d, NULL, total, path, st, NULL);
}

static char *tr_path(const char *name)
{
    char *dir = malloc(64);
    snprintf(dir, 64, "/tmp/mc-trace-XXXXXX");
    if (!mkdtemp(dir)) return NULL;
    char *p = malloc(strlen(dir) + strlen(name) + 2);
    sprintf(p, "%s/%s", dir, name);
    free(dir);
    return p;
}

static json_t *tr_load(const char *path)
{
    json_error_t err;
    json_t *root = json_load_file(path, JSON_REJECT_DUPLICATES, &err);
    if (!root) fprintf(stderr, "%s: line %d: %s\n", path, err.line, err.text);
    return root;
}

static const char *ev_str(json_t *e, const char *key)
{
    return json_string_value(json_object_get(e, key));
}

static long long ev_arg(json_t *e, const char *key)
{
    json_t *v = json_object_get(json_object_get(e, "args"), key);
    return json_is_integer(v) ? (long long)json_integer_value(v) : -1;
}

static const char *ev_status(json_t *e)
{
    const char *s = json_string_value(json_object_get(json_object_get(e, "args"), "status"));
    return s ? s : "";
}

static bool is(json_t *e, const char *ph, const char *cat, const char *name)
{
    const char *p = ev_str(e, "ph"), *c = ev_str(e, "cat"), *n = ev_str(e, "name");
    return p && !strcmp(p, ph) && (!cat || (c && !strcmp(c, cat))) && (!name || (n && !strcmp(n, name)));
}

/* Per track (pid and tid, as the viewers take them: an isolated run's
 * workers are processes of their own, whose track numbers may repeat):
 * timestamps never go back in file order, and every span either lies
 * inside the one open before it or starts after it ended. */
static int check_tracks(json_t *events)
{
    enum { MAXT = 1024, DEPTH = 16 };
    static long long tids[MAXT], pids[MAXT];
    static double last[MAXT], open_end[MAXT][DEPTH];
    static int depth[MAXT];
    int nt = 0;
    size_t i;
    json_t *e;
    json_array_foreach(events, i, e)
    {
        if (is(e, "M", NULL, NULL)) continue;
        long long tid = json_integer_value(json_object_get(e, "tid"));
        long long pid = json_integer_value(json_object_get(e, "pid"));
        double ts = json_number_value(json_object_get(e, "ts"));
        int k = 0;
        while (k < nt && (tids[k] != tid || pids[k] != pid)) k++;
        if (k == nt) {
            CHECK_LT(nt, MAXT);
            tids[nt] = tid;
            pids[nt] = pid;
            last[nt] = ts;
            depth[nt++] = 0;
        }
        if (ts < last[k]) MC__FAILED("track %lld: event %zu at %.3f us after one at %.3f us", tid, i, ts, last[k]);
        last[k] = ts;
        if (!is(e, "X", NULL, NULL)) continue;
        double end = ts + json_number_value(json_object_get(e, "dur"));
        while (depth[k] && open_end[k][depth[k] - 1] <= ts) depth[k]--;
        if (depth[k] && end > open_end[k][depth[k] - 1] + 1e-3)
            MC__FAILED("track %lld: span %zu [%.3f, %.3f] overlaps the open one ending %.3f", tid, i, ts, end,
                       open_end[k][depth[k] - 1]);
        CHECK_LT(depth[k], DEPTH);
        open_end[k][depth[k]++] = end;
    }
    return 0;
}

/* The chunks of a run: numbers once each; the ones that counted (status
 * OK, not replayed) tile [0, total) in order; returns how many counted. */
static int check_chunks(json_t *events, uint64_t total, uint64_t *counted, uint64_t *all)
{
    enum { MAXC = 4096 };
    static unsigned char seen[MAXC];
    static long long first[MAXC], iters[MAXC];
    memset(seen, 0, sizeof seen);
    size_t i;
    json_t *e;
    *counted = *all = 0;
    long long maxnum = 0;
    json_array_foreach(events, i, e)
    {
        if (!is(e, "X", "runner", "chunk")) continue;
        long long num = ev_arg(e, "chunk");
        CHECK_GT(num, 0);
        CHECK_LT(num, MAXC);
        if (seen[num]) MC__FAILED("chunk %lld appears twice", num);
        seen[num] = 1;
        (*all)++;
        CHECK_GE(ev_arg(e, "first"), 0);
        CHECK_GT(ev_arg(e, "iters"), 0);
        if (strcmp(ev_status(e), "MC_OK") || ev_arg(e, "replayed") == 1) {
            seen[num] = 2;
            continue;
        }
        first[num] = ev_arg(e, "first");
        iters[num] = ev_arg(e, "iters");
        if (num > maxnum) maxnum = num;
    }
    /* Chunks that counted, in number order, follow each other; a failure
     * sends the run back to a checkpoint, where the next one starts. */
    long long at = 0;
    for (long long n = 1; n <= maxnum; n++) {
        if (seen[n] != 1) continue;
        if (first[n] > at) MC__FAILED("chunk %lld starts at %lld: iterations %lld.. are missing", n, first[n], at);
        at = first[n] + iters[n];
        (*counted)++;
    }
    CHECK_EQ(at, total);
    return 0;
}

MC_TEST(trace_every_chunk_appears_once_with_its_iterations)
{
    mc_device *d = mct_open_device(0);
    CHECK(d);
    char *path = tr_path("run.json");
    CHECK(path);
    mc_runner_stats st;
    memset(&st, 0, sizeof st);
    CHECK_OK(tr_run(d, 4000, path, &st));
    json_t *root = tr_load(path);
    CHECK(root);
    json_t *events = json_object_get(root, "traceEvents");
    CHECK(json_is_array(events));
    CHECK_EQ(json_integer_value(json_object_get(json_object_get(root, "otherData"), "dropped_events")), 0);
    uint64_t counted, all;
    CHECK_EQ(check_chunks(events, 4000, &counted, &all), 0);
    CHECK_EQ(counted, st.chunks);
    CHECK_EQ(all, st.chunks_submitted);
    CHECK_GT(all, 3); /* small budget: several chunks */
    CHECK_EQ(check_tracks(events), 0);
    /* Each chunk's command buffer on the queue's track with its pass, its
     * device span on the device's track; checkpoints; the run's span. */
    size_t i, queue_cbs = 0, device_cbs = 0, passes = 0, checkpoints = 0, runs = 0;
    json_t *e;
    json_array_foreach(events, i, e)
    {
        const char *name = ev_str(e, "name");
        if (is(e, "X", "cmdbuf", NULL) && !strncmp(name, "tr chunk ", 9)) queue_cbs++;
        if (is(e, "X", "device", NULL) && !strncmp(name, "tr chunk ", 9)) device_cbs++;
        if (is(e, "X", "pass", "tr step")) passes++;
        if (is(e, "i", "runner", "checkpoint")) checkpoints++;
        if (is(e, "X", "runner", "run")) {
            runs++;
            CHECK_EQ(ev_arg(e, "iterations"), 4000);
            CHECK(!strcmp(ev_status(e), "MC_OK"));
        }
    }
    CHECK_EQ(queue_cbs, all);
    CHECK_EQ(device_cbs, all);
    CHECK_EQ(passes, 2 * all); /* on the queue's track and on the device's */
    CHECK_EQ(checkpoints, st.checkpoints);
    CHECK_EQ(runs, 1);
    json_decref(root);
    free(path);
    mc_device_release(d);
    return 0;
}

MC_TEST(trace_every_injected_fault_appears_with_its_recovery)
{
    mc_device *d = mct_open_device(0);
    CHECK(d);
    char *path = tr_path("faults.json");
    CHECK(path);
    static const mc_status kinds[] = {MC_ERR_TIMEOUT, MC_ERR_PAGE_FAULT, MC_ERR_DEVICE_LOST};
    static const uint64_t at[] = {3, 9, 16};
    for (size_t k = 0; k < 3; k++) CHECK_OK(mc_device_inject_fault(d, kinds[k], at[k]));
    mc_runner_stats st;
    memset(&st, 0, sizeof st);
    CHECK_OK(tr_run(d, 4000, path, &st));
    CHECK_EQ(st.recoveries, 3);
    json_t *root = tr_load(path);
    CHECK(root);
    json_t *events = json_object_get(root, "traceEvents");
    CHECK(json_is_array(events));
    uint64_t counted, all;
    CHECK_EQ(check_chunks(events, 4000, &counted, &all), 0);
    CHECK_EQ(check_tracks(events), 0);
    /* Faults in the order injected, each followed by its recovery. */
    size_t i, nfault = 0, nrec = 0;
    json_t *e;
    double fault_ts[3] = {0};
    long long fault_chunk[3] = {0};
    json_array_foreach(events, i, e)
    {
        if (is(e, "i", "runner", "fault")) {
            CHECK_LT(nfault, 3);
            CHECK(!strcmp(ev_status(e), mc_status_name(kinds[nfault])));
            fault_ts[nfault] = json_number_value(json_object_get(e, "ts"));
            fault_chunk[nfault] = ev_arg(e, "chunk");
            nfault++;
        }
    }
    json_array_foreach(events, i, e)
    {
        if (!is(e, "i", "runner", "recovery")) continue;
        CHECK_LT(nrec, 3);
        CHECK(!strcmp(ev_status(e), mc_status_name(kinds[nrec])));
        CHECK_EQ(ev_arg(e, "chunk"), fault_chunk[nrec]);
        CHECK(json_number_value(json_object_get(e, "ts")) >= fault_ts[nrec]);
        CHECK_EQ(ev_arg(e, "device_reopened"), kinds[nrec] == MC_ERR_DEVICE_LOST);
        nrec++;
    }
    CHECK_EQ(nfault, 3);
    CHECK_EQ(nrec, 3);
    /* The failed chunk itself is there with the fault's status. */
    for (size_t k = 0; k < 3; k++) {
        bool found = false;
        json_array_foreach(events, i, e)
        {
            if (is(e, "X", "runner", "chunk") && ev_arg(e, "chunk") == fault_chunk[k])
                found = !strcmp(ev_status(e), mc_status_name(kinds[k]));
        }
        if (!found) MC__FAILED("chunk %lld is not in the trace with %s", fault_chunk[k], mc_status_name(kinds[k]));
    }
    json_decref(root);
    free(path);
    mc_device_release(d);
    return 0;
}

/* ---- many threads, the cap -------------------------------------------------- */

#define TR_THREADS 8
#define TR_EACH 2000

static void *tr_emit(void *arg)
{
    const char *label = arg;
    for (int i = 0; i < TR_EACH; i++) {
        uint64_t g = mc__trace_group(), t = mc__test_now_ns();
        if (i % 2) mc__trace_span("test", label, "test", "span", g, t, t + 1000, "OK", MC__TARGS({"i", i}));
        else mc__trace_instant("test", label, "test", "instant", 0, NULL, MC__TARGS({"i", i}));
    }
    return NULL;
}

static int tr_threads(const char *path)
{
    static const char *labels[TR_THREADS] = {"a", "b", "c", "d", "a", "b", "c", "d"};
    pthread_t th[TR_THREADS];
    CHECK_OK(mc_trace_start(path));
    CHECK(mc_trace_active());
    for (int i = 0; i < TR_THREADS; i++) CHECK_EQ(pthread_create(&th[i], NULL, tr_emit, (void *)labels[i]), 0);
    for (int i = 0; i < TR_THREADS; i++) pthread_join(th[i], NULL);
    CHECK_OK(mc_trace_stop());
    CHECK(!mc_trace_active());
    return 0;
}

MC_TEST(trace_records_events_from_many_threads)
{
    char *path = tr_path("threads.json");
    CHECK(path);
    CHECK_EQ(tr_threads(path), 0);
    json_t *root = tr_load(path);
    CHECK(root);
    json_t *events = json_object_get(root, "traceEvents");
    size_t i, n = 0;
    json_t *e;
    long long per_track[4] = {0};
    json_array_foreach(events, i, e)
    {
        if (!is(e, "X", "test", NULL) && !is(e, "i", "test", NULL)) continue;
        n++;
        long long arg = ev_arg(e, "i");
        CHECK(arg >= 0 && arg < TR_EACH);
        per_track[arg % 4]++;
    }
    CHECK_EQ(n, TR_THREADS * TR_EACH);
    CHECK_EQ(json_integer_value(json_object_get(json_object_get(root, "otherData"), "dropped_events")), 0);
    CHECK_EQ(check_tracks(events), 0);
    json_decref(root);
    /* Stopped: nothing more is recorded, and a stop without a start is refused. */
    mc__trace_instant("test", "late", "test", "late", 0, NULL, 0, NULL);
    CHECK_STATUS(mc_trace_stop(), MC_ERR_INVALID_STATE);
    free(path);
    return 0;
}

MC_TEST(trace_memory_is_capped_and_drops_are_counted)
{
    char *path = tr_path("cap.json");
    CHECK(path);
    setenv("MC_TRACE_MAX_EVENTS", "1000", 1);
    CHECK_EQ(tr_threads(path), 0);
    unsetenv("MC_TRACE_MAX_EVENTS");
    json_t *root = tr_load(path);
    CHECK(root);
    json_t *other = json_object_get(root, "otherData");
    CHECK_EQ(json_integer_value(json_object_get(other, "events")), 1000);
    CHECK_EQ(json_integer_value(json_object_get(other, "dropped_events")), TR_THREADS * TR_EACH - 1000);
    size_t i, n = 0;
    json_t *e;
    json_array_foreach(json_object_get(root, "traceEvents"), i, e) n += !is(e, "M", NULL, NULL);
    CHECK_EQ(n, 1000);
    json_decref(root);
    setenv("MC_TRACE_MAX_EVENTS", "0", 1);
    CHECK_STATUS(mc_trace_start(path), MC_ERR_INVALID_ARGUMENT);
    CHECK_STR_CONTAINS(mc_last_error(), "MC_TRACE_MAX_EVENTS");
    unsetenv("MC_TRACE_MAX_EVENTS");
    free(path);
    return 0;
}

MC_TEST(trace_start_refuses_bad_paths_before_work)
{
    CHECK_STATUS(mc_trace_start(NULL), MC_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(mc_trace_start(""), MC_ERR_INVALID_ARGUMENT);
    CHECK_STR_CONTAINS(mc_last_error(), "empty");
    CHECK_STATUS(mc_trace_start("/tmp"), MC_ERR_INVALID_ARGUMENT);
    CHECK_STR_CONTAINS(mc_last_error(), "folder");
    mc_status s = mc_trace_start("/nonexistent-folder-for-mc/trace.json");
    CHECK(s != MC_OK);
    CHECK_STR_CONTAINS(mc_last_error(), "nonexistent-folder-for-mc");
    CHECK(!mc_trace_active());
    CHECK_STATUS(mc_trace_stop(), MC_ERR_INVALID_STATE);
    char *path = tr_path("twice.json");
    CHECK(path);
    CHECK_OK(mc_trace_start(path));
    CHECK_STATUS(mc_trace_start(path), MC_ERR_INVALID_STATE);
    CHECK_STR_CONTAINS(mc_last_error(), "already");
    CHECK_OK(mc_trace_stop());
    struct stat stt;
    CHECK_EQ(stat(path, &stt), 0); /* an empty trace is still a trace */
    json_t *root = tr_load(path);
    CHECK(root);
    json_decref(root);
    free(path);
    return 0;
}

/* ---- the command line ----------------------------------------------------- */

/* What cmd printed; *status its exit code (-1: killed by a signal). */
static char *tr_command(const char *cmd, int *status)
{
    int ws = -1;
    char *out = mct_command(cmd, &ws);
    if (status) *status = WIFEXITED(ws) ? WEXITSTATUS(ws) : -1;
    return out;
}

MC_TEST(trace_is_written_when_the_run_fails)
{
    char *path = tr_path("failed.json");
    CHECK(path);
    char cmd[8192];
    /* Faults in every command buffer: the runner gives up, the run fails. */
    char faults[2048] = "";
    for (int i = 1; i <= 40; i++)
        snprintf(faults + strlen(faults), sizeof faults - strlen(faults), "%spage-fault@%d", i > 1 ? "," : "", i);
    snprintf(cmd, sizeof cmd,
             "MC_LOG=off MC_TRACE=%s %s/metal-compute run gray-scott --size 32 --steps 200 --out %s.png "
             "--inject-faults %s 2>&1",
             path, MC_BINARY_DIR, path, faults);
    int st = 0;
    char *out = tr_command(cmd, &st);
    CHECK(out);
    fprintf(stderr, "%s", out);
    CHECK_NE(st, 0);
    free(out);
    json_t *root = tr_load(path);
    CHECK(root);
    json_t *events = json_object_get(root, "traceEvents");
    size_t i, gave_up = 0, faults_seen = 0, runs = 0;
    json_t *e;
    json_array_foreach(events, i, e)
    {
        if (is(e, "i", "runner", "gave up")) gave_up++;
        if (is(e, "i", "runner", "fault")) faults_seen++;
        if (is(e, "X", "runner", "run")) {
            runs++;
            CHECK(!strcmp(ev_status(e), "MC_ERR_PAGE_FAULT"));
        }
    }
    CHECK_EQ(gave_up, 1);
    CHECK_GT(faults_seen, 1);
    CHECK_EQ(runs, 1);
    CHECK_EQ(check_tracks(events), 0);
    json_decref(root);

    /* --trace the same way, and the summary reads it. */
    snprintf(cmd, sizeof cmd,
             "%s/metal-compute run gray-scott --size 32 --steps 300 --out %s.png --trace %s "
             "--inject-faults timeout@3,page-fault@7 >/dev/null 2>&1 && %s/metal-compute trace summary %s",
             MC_BINARY_DIR, path, path, MC_BINARY_DIR, path);
    out = tr_command(cmd, &st);
    CHECK(out);
    fprintf(stderr, "%s", out);
    CHECK_EQ(st, 0);
    CHECK_STR_CONTAINS(out, "device busy");
    CHECK_STR_CONTAINS(out, "longest gaps");
    CHECK_STR_CONTAINS(out, "pass gray-scott step");
    CHECK_STR_CONTAINS(out, "faults         2, recoveries 2");
    CHECK_STR_CONTAINS(out, "MC_ERR_TIMEOUT");
    CHECK_STR_CONTAINS(out, "MC_ERR_PAGE_FAULT");
    free(out);
    /* A bad --trace path is refused before the run. */
    snprintf(cmd, sizeof cmd, "%s/metal-compute run gray-scott --size 32 --steps 10 --out %s.png --trace /tmp 2>&1",
             MC_BINARY_DIR, path);
    out = tr_command(cmd, &st);
    CHECK(out);
    CHECK_EQ(st, 2);
    CHECK_STR_CONTAINS(out, "--trace");
    CHECK_STR_CONTAINS(out, "folder");
    free(out);
    free(path);
    return 0;
}

static int tr_summary_refuses(const char *path, const char *extra, const char *want)
{
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "%s/metal-compute trace summary %s %s 2>&1", MC_BINARY_DIR, path, extra);
    int st = 0;
    char *out = tr_command(cmd, &st);
    CHECK(out);
    fprintf(stderr, "%s", out);
    CHECK_EQ(st, 1);
    CHECK_STR_CONTAINS(out, want);
    free(out);
    return 0;
}

static int tr_write(const char *path, const char *text, size_t len)
{
    FILE *f = fopen(path, "wb");
    CHECK(f);
    CHECK_EQ(fwrite(text, 1, len, f), len);
    CHECK_EQ(fclose(f), 0);
    return 0;
}

MC_TEST(trace_summary_refuses_what_is_not_a_trace)
{
    char *path = tr_path("bad.json");
    CHECK(path);
    CHECK_EQ(tr_summary_refuses(path, "", "cannot read it"), 0);
    CHECK_EQ(tr_write(path, "", 0), 0);
    CHECK_EQ(tr_summary_refuses(path, "", "empty"), 0);
    CHECK_EQ(tr_write(path, "hello", 5), 0);
    CHECK_EQ(tr_summary_refuses(path, "", "not valid JSON"), 0);
    const char *other = "{\"a\": 1}";
    CHECK_EQ(tr_write(path, other, strlen(other)), 0);
    CHECK_EQ(tr_summary_refuses(path, "", "no traceEvents"), 0);
    const char *no_ts = "{\"traceEvents\":[{\"name\":\"x\",\"ph\":\"X\",\"dur\":1}]}";
    CHECK_EQ(tr_write(path, no_ts, strlen(no_ts)), 0);
    CHECK_EQ(tr_summary_refuses(path, "", "\"ts\""), 0);

    /* A real trace, cut in half: truncated. */
    CHECK_OK(mc_trace_start(path));
    for (int i = 0; i < 200; i++) mc__trace_instant("test", "t", "test", "x", 0, NULL, MC__TARGS({"i", i}));
    CHECK_OK(mc_trace_stop());
    size_t len = 0;
    char *text = mct_read_file(path, &len);
    CHECK(text);
    CHECK_GT(len, 1000);
    CHECK_EQ(tr_write(path, text, len / 2), 0);
    CHECK_EQ(tr_summary_refuses(path, "", "truncated"), 0);
    /* Over the size limit: refused without reading it. */
    CHECK_EQ(truncate(path, 3 * 1048576), 0);
    CHECK_EQ(tr_summary_refuses(path, "--max-mb 2", "too large"), 0);
    free(text);
    free(path);
    return 0;
}

/* ---- the pipeline cache, streams, isolated runs ----------------------------- */

static size_t tr_count(json_t *events, const char *ph, const char *cat, const char *name, long long disk)
{
    size_t i, n = 0;
    json_t *e;
    json_array_foreach(events, i, e) n += is(e, ph, cat, name) && (disk < 0 || ev_arg(e, "disk") == disk);
    return n;
}

MC_TEST(trace_shows_pipeline_compiles_and_cache_hits_and_misses)
{
    char root_dir[] = "/tmp/mc-trace-cache-XXXXXX";
    CHECK(mkdtemp(root_dir));
    setenv("MC_CACHE_DIR", root_dir, 1);
    unsetenv("MC_CACHE");
    char *path = tr_path("cache.json");
    CHECK(path);
    CHECK_OK(mc_trace_start(path));
    mc_device *d = mct_open_device(0), *d2 = NULL;
    CHECK(d);
    mc_language lang;
    char *src = mct_kernel_source(d, "runner_test", &lang);
    CHECK(src);
    mc_pipeline_source_desc sd = MC_PIPELINE_SOURCE_DESC_INIT;
    sd.language = lang;
    sd.source = src;
    sd.function = "rt_step";
    mc_pipeline *p1, *p2, *p3;
    CHECK_OK(mc_pipeline_create_from_source(d, &sd, &p1, NULL)); /* miss, compile */
    CHECK_OK(mc_pipeline_create_from_source(d, &sd, &p2, NULL)); /* from memory */
    d2 = mct_open_device(0);
    CHECK(d2);
    CHECK_OK(mc_pipeline_create_from_source(d2, &sd, &p3, NULL)); /* from disk: a new device */
    mc_pipeline_release(p1);
    mc_pipeline_release(p2);
    mc_pipeline_release(p3);
    mc_device_release(d);
    mc_device_release(d2);
    free(src);
    CHECK_OK(mc_trace_stop());
    json_t *root = tr_load(path);
    CHECK(root);
    json_t *events = json_object_get(root, "traceEvents");
    CHECK_EQ(tr_count(events, "i", "cache miss", "rt_step", -1), 1);
    CHECK_EQ(tr_count(events, "X", "compile", "rt_step", -1), 1);
    CHECK_EQ(tr_count(events, "i", "cache hit", "rt_step", 0), 1);
    CHECK_EQ(tr_count(events, "i", "cache hit", "rt_step", 1), 1);
    size_t i;
    json_t *e;
    json_array_foreach(events, i, e) if (is(e, "X", "compile", NULL)) CHECK(!strcmp(ev_status(e), "MC_OK"));
    json_decref(root);
    free(path);
    return 0;
}

MC_TEST(trace_stream_items_appear_once_each_with_their_attempts)
{
    char *path = tr_path("stream.json");
    CHECK(path);
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "MC_LOG=off MC_TRACE=%s MC_INJECT_FAULTS=page-fault@20 %s/examples/stream_filter 2>&1",
             path, MC_BINARY_DIR);
    int st = -1;
    char *out = tr_command(cmd, &st);
    CHECK(out);
    CHECK_EQ(st, 0);
    free(out);
    json_t *root = tr_load(path);
    CHECK(root);
    json_t *events = json_object_get(root, "traceEvents");
    enum { MAXI = 1 << 16 };
    static unsigned char seen[MAXI];
    size_t i, n = 0, retried = 0;
    long long maxseq = 0;
    json_t *e;
    json_array_foreach(events, i, e)
    {
        if (!is(e, "i", "stream", "item")) continue;
        long long seq = ev_arg(e, "sequence");
        CHECK(seq >= 1 && seq < MAXI);
        if (seen[seq]) MC__FAILED("stream item %lld delivered twice", seq);
        seen[seq] = 1;
        n++;
        if (seq > maxseq) maxseq = seq;
        CHECK(!strcmp(ev_status(e), "MC_OK"));
        CHECK_GE(ev_arg(e, "attempts"), 1);
        retried += ev_arg(e, "attempts") > 1;
    }
    CHECK_GT(n, 20);
    CHECK_EQ((long long)n, maxseq); /* 1..N, none missing */
    CHECK_GE(retried, 1);           /* the fault's item was replayed */
    CHECK_EQ(check_tracks(events), 0);
    json_decref(root);
    free(path);
    return 0;
}

MC_TEST(trace_shows_worker_restarts_under_isolate)
{
    char *path = tr_path("isolate.json");
    CHECK(path);
    char cmd[4096];
    snprintf(cmd, sizeof cmd,
             "%s/metal-compute run gray-scott --size 32 --steps 300 --out %s.png --isolate --inject-faults kill@4 "
             "--trace %s 2>&1",
             MC_BINARY_DIR, path, path);
    int st = -1;
    char *out = tr_command(cmd, &st);
    CHECK(out);
    fprintf(stderr, "%s", out);
    CHECK_EQ(st, 0);
    free(out);
    json_t *root = tr_load(path);
    CHECK(root);
    json_t *events = json_object_get(root, "traceEvents");
    size_t i, restarts = 0;
    json_t *e;
    json_array_foreach(events, i, e)
    {
        if (!is(e, "i", "isolate", "worker restart")) continue;
        restarts++;
        CHECK(!strcmp(ev_status(e), "MC_ERR_WORKER_LOST"));
        CHECK_EQ(ev_arg(e, "worker"), 2);
    }
    CHECK_EQ(restarts, 1);
    json_decref(root);
    free(path);
    return 0;
}

/* ---- isolated workers: their own events, under their own pids -------------- */

#define TR_ISO_TOTAL 600u
#define TR_MAX_WORKERS 8

typedef struct tr_workers {
    int n;                                 /* workers seen ready */
    long long pid[TR_MAX_WORKERS + 1];     /* by worker number, from 1 */
    long long from[TR_MAX_WORKERS + 1];    /* the iteration each started from */
    long long restart_pid[TR_MAX_WORKERS]; /* the pid each restart replaced, in order */
    const char *restart_status[TR_MAX_WORKERS];
    double restart_ts[TR_MAX_WORKERS];
    int restarts;
} tr_workers;

/* An isolated run of TR_ISO_TOTAL iterations with faults, traced; the
 * trace's events in *events (owned by *root), the workers in *w. */
static int tr_isolated(const char *name, const char *faults, json_t **root, json_t **events, tr_workers *w,
                       mc_runner_stats *st, mc_isolate_stats *ist)
{
    char *path = tr_path(name);
    CHECK(path);
    mc_isolate_desc iso = MC_ISOLATE_DESC_INIT;
    const char *env = getenv("MC_DEVICE");
    iso.device = env && *env ? env : "cpu";
    iso.deadline_ms = 5000;
    iso.inject_faults = faults;
    CHECK_OK(tr_run_any(NULL, &iso, TR_ISO_TOTAL, path, st, ist));
    CHECK_EQ(st->iterations, TR_ISO_TOTAL);
    *root = tr_load(path);
    CHECK(*root);
    *events = json_object_get(*root, "traceEvents");
    CHECK(json_is_array(*events));
    CHECK_EQ(json_integer_value(json_object_get(json_object_get(*root, "otherData"), "dropped_events")), 0);
    memset(w, 0, sizeof *w);
    size_t i;
    json_t *e;
    json_array_foreach(*events, i, e)
    {
        if (is(e, "i", "isolate", "worker ready")) {
            long long k = ev_arg(e, "worker");
            CHECK_EQ(k, w->n + 1);
            CHECK_LT(k, TR_MAX_WORKERS + 1);
            w->pid[k] = ev_arg(e, "pid");
            CHECK_GT(w->pid[k], 0);
            w->n = (int)k;
        } else if (is(e, "i", "isolate", "worker restart")) {
            CHECK_LT(w->restarts, TR_MAX_WORKERS);
            long long k = ev_arg(e, "worker");
            CHECK_LT(k, TR_MAX_WORKERS + 1);
            w->from[k] = ev_arg(e, "from");
            w->restart_pid[w->restarts] = ev_arg(e, "old_pid");
            w->restart_status[w->restarts] = ev_status(e);
            w->restart_ts[w->restarts] = json_number_value(json_object_get(e, "ts"));
            w->restarts++;
        }
    }
    CHECK_EQ(w->n, (int)ist->workers);
    CHECK_EQ(w->restarts, (int)ist->restarts);
    /* Each worker is a process of its own in the file, named so. */
    for (int k = 1; k <= w->n; k++) {
        bool named = false;
        json_array_foreach(*events, i, e)
        {
            if (!is(e, "M", NULL, "process_name")) continue;
            if (json_integer_value(json_object_get(e, "pid")) != w->pid[k]) continue;
            const char *pn = json_string_value(json_object_get(json_object_get(e, "args"), "name"));
            named = pn && strstr(pn, "worker");
        }
        if (!named) MC__FAILED("worker %d (pid %lld) has no process of its own in the trace", k, w->pid[k]);
    }
    CHECK_EQ(check_tracks(*events), 0);
    free(path);
    return 0;
}

/* The worker number of pid, 0 if none. */
static int tr_worker_of(const tr_workers *w, long long pid)
{
    for (int k = 1; k <= w->n; k++)
        if (w->pid[k] == pid) return k;
    return 0;
}

MC_TEST(trace_isolated_workers_chunks_appear_once_with_their_iterations)
{
    json_t *root, *events;
    tr_workers w;
    mc_runner_stats st;
    mc_isolate_stats ist;
    CHECK_EQ(tr_isolated("iso-chunks.json", "kill@40", &root, &events, &w, &st, &ist), 0);
    CHECK_EQ(ist.restarts, 1);
    /* Per worker, in number order: each chunk once; the ones that counted
     * follow each other from where the worker started (a failure sends it
     * back to a checkpoint); between them the workers reach the end. */
    enum { MAXC = 4096 };
    static long long first[TR_MAX_WORKERS + 1][MAXC], iters[TR_MAX_WORKERS + 1][MAXC];
    static unsigned char seen[TR_MAX_WORKERS + 1][MAXC];
    memset(seen, 0, sizeof seen);
    long long maxnum[TR_MAX_WORKERS + 1] = {0};
    size_t i, counted = 0;
    json_t *e;
    json_array_foreach(events, i, e)
    {
        if (!is(e, "X", "runner", "chunk")) continue;
        int k = tr_worker_of(&w, json_integer_value(json_object_get(e, "pid")));
        if (!k)
            MC__FAILED("a chunk of pid %lld, which is no worker",
                       (long long)json_integer_value(json_object_get(e, "pid")));
        long long num = ev_arg(e, "chunk");
        CHECK_GT(num, 0);
        CHECK_LT(num, MAXC);
        if (seen[k][num]) MC__FAILED("worker %d: chunk %lld appears twice", k, num);
        seen[k][num] = 2;
        CHECK_GE(ev_arg(e, "first"), 0);
        CHECK_GT(ev_arg(e, "iters"), 0);
        if (strcmp(ev_status(e), "MC_OK") || ev_arg(e, "replayed") == 1) continue;
        seen[k][num] = 1;
        first[k][num] = ev_arg(e, "first");
        iters[k][num] = ev_arg(e, "iters");
        if (num > maxnum[k]) maxnum[k] = num;
        counted++;
    }
    long long reached = 0;
    for (int k = 1; k <= w.n; k++) {
        long long at = w.from[k];
        CHECK(at <= reached); /* a worker starts from a checkpoint the ones before it reached */
        for (long long n = 1; n <= maxnum[k]; n++) {
            if (seen[k][n] != 1) continue;
            if (first[k][n] > at)
                MC__FAILED("worker %d: chunk %lld starts at %lld: iterations %lld.. are missing", k, n, first[k][n],
                           at);
            at = first[k][n] + iters[k][n];
        }
        if (at > reached) reached = at;
        /* every worker did work of its own before the fault or the end */
        if (!maxnum[k]) MC__FAILED("worker %d (pid %lld) has no chunk in the trace", k, w.pid[k]);
    }
    CHECK_EQ(reached, TR_ISO_TOTAL);
    CHECK_GE(counted, 2);
    /* The workers' command buffers and device spans came too, and each
     * worker's setup: its pipeline from the cache (a compile, a hit). */
    CHECK_GT(tr_count(events, "X", "cmdbuf", NULL, -1), 0);
    CHECK_GT(tr_count(events, "X", "device", NULL, -1), 0);
    for (int k = 1; k <= w.n; k++) {
        size_t setup = 0;
        json_array_foreach(events, i, e)
        {
            const char *cat = ev_str(e, "cat");
            if (json_integer_value(json_object_get(e, "pid")) == w.pid[k] && cat &&
                (!strcmp(cat, "compile") || !strcmp(cat, "cache hit") || !strcmp(cat, "cache miss")))
                setup++;
        }
        if (!setup) MC__FAILED("worker %d (pid %lld): its setup's pipeline is not in the trace", k, w.pid[k]);
    }
    json_decref(root);
    return 0;
}

MC_TEST(trace_isolated_faults_appear_with_recovery_and_worker_restart)
{
    json_t *root, *events;
    tr_workers w;
    mc_runner_stats st;
    mc_isolate_stats ist;
    /* A timeout the worker mends itself, a kill, a lost device the worker
     * cannot mend: each in the trace with what followed it. */
    CHECK_EQ(tr_isolated("iso-faults.json", "timeout@5,kill@40,device-lost@80", &root, &events, &w, &st, &ist), 0);
    CHECK_EQ(ist.restarts, 2);
    CHECK_EQ(w.restarts, 2);
    static const mc_status kinds[] = {MC_ERR_TIMEOUT, MC_ERR_DEVICE_LOST};
    size_t i, nfault = 0;
    json_t *e;
    json_array_foreach(events, i, e)
    {
        if (!is(e, "i", "runner", "fault")) continue;
        CHECK_LT(nfault, 2);
        CHECK(!strcmp(ev_status(e), mc_status_name(kinds[nfault])));
        long long pid = json_integer_value(json_object_get(e, "pid"));
        CHECK_GT(tr_worker_of(&w, pid), 0); /* in a worker's own process */
        double ts = json_number_value(json_object_get(e, "ts"));
        long long chunk = ev_arg(e, "chunk");
        /* What followed: the timeout mended in the worker; the lost device
         * given up there, and the worker replaced by the supervisor. */
        const char *then = kinds[nfault] == MC_ERR_TIMEOUT ? "recovery" : "gave up";
        size_t j, found = 0;
        json_t *f;
        json_array_foreach(events, j, f)
        {
            if (!is(f, "i", "runner", then)) continue;
            if (json_integer_value(json_object_get(f, "pid")) != pid || ev_arg(f, "chunk") != chunk) continue;
            CHECK(!strcmp(ev_status(f), mc_status_name(kinds[nfault])));
            CHECK(json_number_value(json_object_get(f, "ts")) >= ts);
            found++;
        }
        if (found != 1)
            MC__FAILED("%s in chunk %lld: %zu '%s' events, not 1", mc_status_name(kinds[nfault]), chunk, found, then);
        if (kinds[nfault] == MC_ERR_DEVICE_LOST) {
            bool replaced = false;
            for (int r = 0; r < w.restarts; r++)
                replaced |= w.restart_pid[r] == pid && !strcmp(w.restart_status[r], "MC_ERR_DEVICE_LOST") &&
                            w.restart_ts[r] >= ts;
            if (!replaced) MC__FAILED("the worker (pid %lld) that lost its device was not replaced in the trace", pid);
        }
        nfault++;
    }
    CHECK_EQ(nfault, 2);
    /* The kill: the supervisor saw the worker die and replaced it. */
    bool killed = false;
    for (int r = 0; r < w.restarts; r++)
        killed |= !strcmp(w.restart_status[r], "MC_ERR_WORKER_LOST") && tr_worker_of(&w, w.restart_pid[r]) > 0;
    CHECK(killed);
    json_decref(root);
    return 0;
}

MC_TEST(trace_is_written_when_the_run_is_interrupted)
{
    char *path = tr_path("interrupted.json");
    CHECK(path);
    char png[4200], bin[4200];
    snprintf(png, sizeof png, "%s.png", path);
    snprintf(bin, sizeof bin, "%s/metal-compute", MC_BINARY_DIR);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        execl(bin, bin, "run", "gray-scott", "--size", "64", "--steps", "2000000000", "--out", png, "--trace", path,
              (char *)NULL);
        _exit(127);
    }
    usleep(2500 * 1000); /* a run of hours, stopped by Ctrl-C */
    CHECK_EQ(kill(pid, SIGINT), 0);
    int ws = 0;
    CHECK_EQ(waitpid(pid, &ws, 0), pid);
    CHECK(WIFSIGNALED(ws)); /* it still dies of the signal */
    CHECK_EQ(WTERMSIG(ws), SIGINT);
    json_t *root = tr_load(path);
    CHECK(root);
    json_t *events = json_object_get(root, "traceEvents");
    CHECK_GT(tr_count(events, "X", "runner", "chunk", -1), 0);
    CHECK_EQ(check_tracks(events), 0);
    json_decref(root);
    free(path);
    return 0;
}
