/*
 * metal-compute trace summary FILE: what a person looks for first in a
 * trace (docs/TRACE.md): how busy the device was, the longest gaps, the
 * time per label, the faults and what became of them.
 *
 * The file is parsed with Jansson (Debian's libjansson), after checks that
 * refuse what is not a trace: a file over the size limit is never read, JSON
 * that does not parse (a truncated file) is reported with the line and
 * column, and every event must carry the fields the format requires.
 */
#include "cli.h"

#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define DEFAULT_MAX_MB 512
#define TOP_GAPS 5
#define TOP_LABELS 12
#define MAX_LISTED_FAULTS 20

/* ---- --trace for the run command ------------------------------------------ */

static bool cli_started;

/* Ctrl-C or a kill on a run that seems stuck is when its trace is wanted
 * most, and a signal handler cannot write a file. So SIGINT and SIGTERM
 * are blocked in every thread (started after this, they inherit it) and
 * one thread waits for them: it writes the trace, then dies of the signal
 * as the program would have. Forked children get their old mask back.
 * The signals are blocked when the trace starts (every thread made later
 * inherits that); the watcher starts once the job's processes are forked
 * (the isolation layer forks its launcher at mc_runner_create and wants no
 * thread of ours before that). */
static sigset_t stop_signals, old_mask;
static bool signals_blocked;

static void *watch_signals(void *arg)
{
    (void)arg;
    int sig = 0;
    if (sigwait(&stop_signals, &sig) != 0) return NULL;
    if (mc_trace_active()) {
        mc_status s = mc_trace_stop();
        if (s != MC_OK) mc_cli_fail("writing the trace", s);
        else fprintf(stderr, "metal-compute: trace written; stopping on signal %d\n", sig);
    }
    signal(sig, SIG_DFL);
    pthread_sigmask(SIG_UNBLOCK, &stop_signals, NULL);
    raise(sig);
    return NULL;
}

static void restore_mask_in_child(void)
{
    pthread_sigmask(SIG_SETMASK, &old_mask, NULL);
}

int mc_cli_trace_begin(const char *path, bool forks_later)
{
    mc_status s = mc_trace_start(path);
    if (s != MC_OK) return mc_cli_fail("--trace", s);
    cli_started = true;
    /* Blocked now, before the device's threads exist, so that they all
     * inherit it; a signal until the watcher starts waits for it. */
    sigemptyset(&stop_signals);
    sigaddset(&stop_signals, SIGINT);
    sigaddset(&stop_signals, SIGTERM);
    if (pthread_sigmask(SIG_BLOCK, &stop_signals, &old_mask) == 0) {
        signals_blocked = true;
        pthread_atfork(NULL, NULL, restore_mask_in_child);
    }
    if (!forks_later) mc_cli_trace_watch_signals();
    return 0;
}

void mc_cli_trace_watch_signals(void)
{
    static bool watching;
    if (!signals_blocked || watching) return;
    watching = true;
    pthread_t t;
    if (pthread_create(&t, NULL, watch_signals, NULL) == 0) pthread_detach(t);
    else pthread_sigmask(SIG_SETMASK, &old_mask, NULL); /* no watcher: a signal ends the run as before */
}

int mc_cli_trace_finish(int rc)
{
    if (!cli_started) return rc;
    cli_started = false;
    mc_status s = mc_trace_stop();
    if (s != MC_OK) return mc_cli_fail("writing the trace", s);
    return rc;
}

/* ---- reading ---------------------------------------------------------------- */

typedef struct span {
    double t0, t1; /* us */
} span;

typedef struct label_time {
    char *label;
    double total_us;
    uint64_t count;
} label_time;

typedef struct summary {
    json_t *root;
    json_t *events; /* the array */
    char **thread_names;
    json_int_t *thread_ids;
    size_t nthreads;
    span *busy;
    size_t nbusy, busy_cap;
    label_time *labels;
    size_t nlabels, labels_cap;
    double first_us, last_us;
    bool have_time;
    uint64_t chunks, chunks_failed, checkpoints, compiles, hits, misses, items, dropped;
} summary;

static int refuse(const char *path, const char *fmt, const char *detail)
{
    fprintf(stderr, "metal-compute trace: %s: ", path);
    fprintf(stderr, fmt, detail);
    fprintf(stderr, "\n");
    return 1;
}

static const char *thread_name(const summary *s, json_int_t tid)
{
    for (size_t i = 0; i < s->nthreads; i++)
        if (s->thread_ids[i] == tid) return s->thread_names[i];
    return "";
}

/* "queue X (2)" -> "queue X": a track's lanes count as one. */
static bool is_device_track(const char *name)
{
    return !strncmp(name, "device ", 7) || !strcmp(name, "device");
}

/* A label with its trailing number replaced ("gray-scott chunk 17" ->
 * "gray-scott chunk N"), so command buffers of one kind add up. */
static void normalise(const char *in, char *out, size_t cap)
{
    size_t n = strlen(in), k = n;
    while (k > 0 && in[k - 1] >= '0' && in[k - 1] <= '9') k--;
    if (k < n && k > 0 && in[k - 1] == ' ') snprintf(out, cap, "%.*sN", (int)k, in);
    else snprintf(out, cap, "%s", in);
}

static bool add_label(summary *s, const char *label, double dur)
{
    for (size_t i = 0; i < s->nlabels; i++) {
        if (!strcmp(s->labels[i].label, label)) {
            s->labels[i].total_us += dur;
            s->labels[i].count++;
            return true;
        }
    }
    if (s->nlabels == s->labels_cap) {
        size_t cap = s->labels_cap ? 2 * s->labels_cap : 32;
        label_time *l = realloc(s->labels, cap * sizeof *l);
        if (!l) return false;
        s->labels = l;
        s->labels_cap = cap;
    }
    char *copy = strdup(label);
    if (!copy) return false;
    s->labels[s->nlabels++] = (label_time){copy, dur, 1};
    return true;
}

static bool add_busy(summary *s, double t0, double t1)
{
    if (s->nbusy == s->busy_cap) {
        size_t cap = s->busy_cap ? 2 * s->busy_cap : 256;
        span *b = realloc(s->busy, cap * sizeof *b);
        if (!b) return false;
        s->busy = b;
        s->busy_cap = cap;
    }
    s->busy[s->nbusy++] = (span){t0, t1};
    return true;
}

static int by_start(const void *a, const void *b)
{
    double x = ((const span *)a)->t0, y = ((const span *)b)->t0;
    return x < y ? -1 : x > y;
}

static int by_total(const void *a, const void *b)
{
    double x = ((const label_time *)a)->total_us, y = ((const label_time *)b)->total_us;
    return x > y ? -1 : x < y;
}

static int by_length_desc(const void *a, const void *b)
{
    double x = ((const span *)a)->t1 - ((const span *)a)->t0, y = ((const span *)b)->t1 - ((const span *)b)->t0;
    return x > y ? -1 : x < y;
}

static void free_summary(summary *s)
{
    for (size_t i = 0; i < s->nthreads; i++) free(s->thread_names[i]);
    free(s->thread_names);
    free(s->thread_ids);
    for (size_t i = 0; i < s->nlabels; i++) free(s->labels[i].label);
    free(s->labels);
    free(s->busy);
    json_decref(s->root);
}

/* Reads path into s->root, refusing what is not a trace. */
static int load(const char *path, size_t max_bytes, summary *s)
{
    struct stat st;
    if (stat(path, &st) != 0) return refuse(path, "cannot read it (%s)", strerror(errno));
    if (!S_ISREG(st.st_mode)) return refuse(path, "%s", "not a regular file");
    if ((uint64_t)st.st_size > max_bytes) {
        char detail[96];
        snprintf(detail, sizeof detail, "%.0f MiB, over the limit of %.0f MiB (--max-mb)",
                 (double)st.st_size / 1048576.0, (double)max_bytes / 1048576.0);
        return refuse(path, "too large to summarise: %s", detail);
    }
    if (st.st_size == 0) return refuse(path, "%s", "not a trace: the file is empty");
    json_error_t err;
    s->root = json_load_file(path, JSON_REJECT_DUPLICATES, &err);
    if (!s->root) {
        char detail[300];
        snprintf(detail, sizeof detail, "line %d, column %d: %s", err.line, err.column, err.text);
        return refuse(path, "not valid JSON (truncated or not a trace): %s", detail);
    }
    /* The object form ({"traceEvents": [...]}) or the bare array form. */
    s->events = json_is_array(s->root) ? s->root : json_object_get(s->root, "traceEvents");
    if (!json_is_array(s->events))
        return refuse(path, "%s", "not a trace: no traceEvents array (Chrome Trace Event format)");
    json_t *other = json_is_object(s->root) ? json_object_get(s->root, "otherData") : NULL;
    json_t *dropped = other ? json_object_get(other, "dropped_events") : NULL;
    if (json_is_integer(dropped)) s->dropped = (uint64_t)json_integer_value(dropped);
    return 0;
}

/* Checks every event and gathers the figures. */
static int gather(const char *path, summary *s)
{
    size_t n = json_array_size(s->events);
    s->thread_names = calloc(n ? n : 1, sizeof *s->thread_names);
    s->thread_ids = calloc(n ? n : 1, sizeof *s->thread_ids);
    if (!s->thread_names || !s->thread_ids) return refuse(path, "%s", "out of memory");
    for (size_t pass = 0; pass < 2; pass++) {
        for (size_t i = 0; i < n; i++) {
            json_t *e = json_array_get(s->events, i);
            char where[64];
            snprintf(where, sizeof where, "event %zu", i);
            if (!json_is_object(e)) return refuse(path, "not a trace: %s is not an object", where);
            const char *ph = json_string_value(json_object_get(e, "ph"));
            const char *name = json_string_value(json_object_get(e, "name"));
            if (!ph || !name) return refuse(path, "not a trace: %s has no \"ph\" or \"name\" string", where);
            json_t *tidj = json_object_get(e, "tid");
            json_int_t tid = json_is_integer(tidj) ? json_integer_value(tidj) : 0;
            if (pass == 0) {
                if (!strcmp(ph, "M") && !strcmp(name, "thread_name")) {
                    const char *tn = json_string_value(json_object_get(json_object_get(e, "args"), "name"));
                    if (tn && s->nthreads < n) {
                        s->thread_ids[s->nthreads] = tid;
                        s->thread_names[s->nthreads] = strdup(tn);
                        if (s->thread_names[s->nthreads]) s->nthreads++;
                    }
                }
                continue;
            }
            if (!strcmp(ph, "M")) continue;
            json_t *tsj = json_object_get(e, "ts");
            if (!json_is_number(tsj)) return refuse(path, "not a trace: %s has no numeric \"ts\"", where);
            double ts = json_number_value(tsj), dur = 0;
            if (!strcmp(ph, "X")) {
                json_t *dj = json_object_get(e, "dur");
                if (!json_is_number(dj) || json_number_value(dj) < 0)
                    return refuse(path, "not a trace: %s is a complete event without a \"dur\" of 0 or more", where);
                dur = json_number_value(dj);
            }
            if (!s->have_time || ts < s->first_us) s->first_us = ts;
            if (!s->have_time || ts + dur > s->last_us) s->last_us = ts + dur;
            s->have_time = true;
            const char *cat = json_string_value(json_object_get(e, "cat"));
            const char *status = json_string_value(json_object_get(json_object_get(e, "args"), "status"));
            cat = cat ? cat : "";
            const char *track = thread_name(s, tid);
            char label[200];
            bool ok = true;
            if (!strcmp(ph, "X") && is_device_track(track) && !strcmp(cat, "device")) ok = add_busy(s, ts, ts + dur);
            if (ok && !strcmp(ph, "X") && is_device_track(track) && (!strcmp(cat, "pass") || !strcmp(cat, "device"))) {
                char norm[160];
                normalise(name, norm, sizeof norm);
                snprintf(label, sizeof label, "%s %s", !strcmp(cat, "pass") ? "pass" : "command buffer", norm);
                ok = add_label(s, label, dur);
            }
            if (ok && !strcmp(ph, "X") && !strcmp(cat, "compile")) {
                s->compiles++;
                snprintf(label, sizeof label, "compile %s", name);
                ok = add_label(s, label, dur);
            }
            if (!ok) return refuse(path, "%s", "out of memory");
            if (!strcmp(cat, "runner") && !strcmp(name, "chunk")) {
                s->chunks++;
                if (status && strcmp(status, "MC_OK")) s->chunks_failed++;
            }
            if (!strcmp(cat, "runner") && !strcmp(name, "checkpoint")) s->checkpoints++;
            if (!strcmp(cat, "cache hit")) s->hits++;
            if (!strcmp(cat, "cache miss")) s->misses++;
            if (!strcmp(cat, "stream") && !strcmp(name, "item")) s->items++;
        }
    }
    return 0;
}

static int by_ts(const void *pa, const void *pb)
{
    double a = json_number_value(json_object_get(*(json_t *const *)pa, "ts"));
    double b = json_number_value(json_object_get(*(json_t *const *)pb, "ts"));
    return a < b ? -1 : a > b;
}

static bool is_fault_event(const char *name)
{
    return !strcmp(name, "fault") || !strcmp(name, "recovery") || !strcmp(name, "gave up") ||
           !strcmp(name, "worker restart");
}

static void print_faults(const summary *s)
{
    size_t n = json_array_size(s->events), listed = 0, faults = 0, recoveries = 0, restarts = 0, gave_up = 0;
    for (size_t i = 0; i < n; i++) {
        json_t *e = json_array_get(s->events, i);
        const char *name = json_string_value(json_object_get(e, "name"));
        const char *ph = json_string_value(json_object_get(e, "ph"));
        if (!name || !ph || strcmp(ph, "i") || !is_fault_event(name)) continue;
        faults += !strcmp(name, "fault");
        recoveries += !strcmp(name, "recovery");
        restarts += !strcmp(name, "worker restart");
        gave_up += !strcmp(name, "gave up");
    }
    printf("faults         %zu, recoveries %zu, worker restarts %zu%s\n", faults, recoveries, restarts,
           gave_up ? ", gave up" : "");
    /* In time order: a file lists each track (each process under
     * --isolate) apart. */
    json_t **order = malloc((faults + recoveries + restarts + gave_up + 1) * sizeof *order);
    size_t norder = 0;
    for (size_t i = 0; order && i < n; i++) {
        json_t *e = json_array_get(s->events, i);
        const char *name = json_string_value(json_object_get(e, "name"));
        const char *ph = json_string_value(json_object_get(e, "ph"));
        if (name && ph && !strcmp(ph, "i") && is_fault_event(name)) order[norder++] = e;
    }
    if (norder) qsort(order, norder, sizeof *order, by_ts);
    for (size_t i = 0; i < norder && listed < MAX_LISTED_FAULTS; i++) {
        json_t *e = order[i];
        const char *name = json_string_value(json_object_get(e, "name"));
        json_t *args = json_object_get(e, "args");
        const char *status = json_string_value(json_object_get(args, "status"));
        printf("  %10.3f ms  %-15s %-22s", (json_number_value(json_object_get(e, "ts")) - s->first_us) / 1e3, name,
               status ? status : "");
        const char *key;
        json_t *v;
        json_object_foreach(args, key, v)
        {
            if (json_is_integer(v)) printf(" %s=%" JSON_INTEGER_FORMAT, key, json_integer_value(v));
        }
        printf("\n");
        listed++;
    }
    if (listed == MAX_LISTED_FAULTS) printf("  (the first %d listed)\n", MAX_LISTED_FAULTS);
    free(order);
}

static void print_summary(const char *path, summary *s)
{
    double window = s->have_time ? s->last_us - s->first_us : 0;
    printf("trace          %s\n", path);
    printf("events         %zu%s", json_array_size(s->events), s->dropped ? "" : "\n");
    if (s->dropped) printf(" (%" PRIu64 " dropped past the limit: the trace is incomplete)\n", s->dropped);
    printf("duration       %.3f ms\n", window / 1e3);

    /* Busy: the union of the device's execution spans. */
    qsort(s->busy, s->nbusy, sizeof *s->busy, by_start);
    size_t nmerged = 0;
    for (size_t i = 0; i < s->nbusy; i++) {
        if (nmerged && s->busy[i].t0 <= s->busy[nmerged - 1].t1) {
            if (s->busy[i].t1 > s->busy[nmerged - 1].t1) s->busy[nmerged - 1].t1 = s->busy[i].t1;
        } else {
            s->busy[nmerged++] = s->busy[i];
        }
    }
    double busy = 0;
    for (size_t i = 0; i < nmerged; i++) busy += s->busy[i].t1 - s->busy[i].t0;
    if (!nmerged || window <= 0) {
        printf("device         no device execution spans in the trace\n");
    } else {
        printf("device busy    %.3f ms (%.1f%%), idle %.3f ms (%.1f%%)\n", busy / 1e3, 100.0 * busy / window,
               (window - busy) / 1e3, 100.0 * (window - busy) / window);
        /* Gaps between busy spans, the longest first (reusing the array). */
        size_t ngaps = 0;
        for (size_t i = 1; i < nmerged; i++) s->busy[ngaps++] = (span){s->busy[i - 1].t1, s->busy[i].t0};
        qsort(s->busy, ngaps, sizeof *s->busy, by_length_desc);
        printf("longest gaps  ");
        if (!ngaps) printf(" none (one busy span)");
        for (size_t i = 0; i < ngaps && i < TOP_GAPS; i++)
            printf(" %.1f us at %.3f ms%s", s->busy[i].t1 - s->busy[i].t0, (s->busy[i].t0 - s->first_us) / 1e3,
                   i + 1 < ngaps && i + 1 < TOP_GAPS ? ";" : "");
        printf("\n");
    }
    printf("time per label (device time)\n");
    qsort(s->labels, s->nlabels, sizeof *s->labels, by_total);
    for (size_t i = 0; i < s->nlabels && i < TOP_LABELS; i++)
        printf("  %-44s %10.3f ms  %8" PRIu64 " x  %10.1f us mean\n", s->labels[i].label, s->labels[i].total_us / 1e3,
               s->labels[i].count, s->labels[i].total_us / (double)s->labels[i].count);
    if (!s->nlabels) printf("  (none)\n");
    printf("runner         %" PRIu64 " chunks (%" PRIu64 " failed or replayed), %" PRIu64 " checkpoints\n", s->chunks,
           s->chunks_failed, s->checkpoints);
    print_faults(s);
    printf("pipelines      %" PRIu64 " compiles, %" PRIu64 " cache hits, %" PRIu64 " misses\n", s->compiles, s->hits,
           s->misses);
    if (s->items) printf("stream items   %" PRIu64 "\n", s->items);
}

static void trace_usage(void)
{
    printf(
        "usage: metal-compute trace summary FILE [--max-mb N]\n\n"
        "Summarises a trace written by 'run --trace FILE' or MC_TRACE=FILE (docs/TRACE.md): device busy and\n"
        "idle share, the longest gaps, time per label, faults and recoveries. Open the file itself in\n"
        "https://ui.perfetto.dev or chrome://tracing.\n\n"
        "  --max-mb N   refuse files larger than N MiB (default %d)\n",
        DEFAULT_MAX_MB);
}

int mc_cli_trace(int argc, char **argv)
{
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        trace_usage();
        return argc < 2 ? 2 : 0;
    }
    if (strcmp(argv[1], "summary")) {
        fprintf(stderr, "metal-compute trace: unknown subcommand '%s' (try summary)\n", argv[1]);
        return 2;
    }
    const char *path = NULL;
    long max_mb = DEFAULT_MAX_MB;
    for (int i = 2; i < argc; i++) {
        if (i + 1 < argc && !strcmp(argv[i], "--max-mb")) {
            char *end;
            max_mb = strtol(argv[++i], &end, 10);
            if (*end || max_mb < 1 || max_mb > 65536) {
                fprintf(stderr, "metal-compute trace: --max-mb takes 1 to 65536\n");
                return 2;
            }
        } else if (argv[i][0] == '-' || path) {
            fprintf(stderr, "metal-compute trace: unexpected argument '%s'\n", argv[i]);
            trace_usage();
            return 2;
        } else {
            path = argv[i];
        }
    }
    if (!path) {
        fprintf(stderr, "metal-compute trace summary: which FILE?\n");
        return 2;
    }
    summary s;
    memset(&s, 0, sizeof s);
    int rc = load(path, (size_t)max_mb * 1048576u, &s);
    if (rc == 0) rc = gather(path, &s);
    if (rc == 0) print_summary(path, &s);
    free_summary(&s);
    return rc;
}
