/*
 * DOC: The tracer
 *
 * Records events from every thread into memory and writes them, once, as a
 * Chrome Trace Event JSON file (docs/TRACE.md) when the trace stops: at
 * mc_trace_stop or at exit, so a run that ends in an error still leaves its
 * trace. What this file owns:
 *
 *  - the switch: mc__trace_on, read relaxed by the hooks (one branch when
 *    off); the events behind one mutex (a handful per command buffer, so
 *    the lock is not contended at the runner's rates);
 *  - bounded memory: events live in blocks allocated as they fill, at most
 *    MC_TRACE_MAX_EVENTS (default 262144, about 60 MB); later events are
 *    counted in dropped_events and the count goes into the file;
 *  - tracks: a kind and a label ("queue" + the queue's label). Spans of one
 *    track may overlap (the runner keeps several command buffers in
 *    flight); a viewer draws a thread's slices only when they nest, so at
 *    write time each track is split into lanes ("queue X", "queue X (2)")
 *    by greedy interval partitioning, spans of one group staying in their
 *    parent's lane, and each lane's events are written in time order;
 *  - MC_TRACE=FILE: started when the library is loaded, written at exit;
 *  - workers (the isolation layer's processes): a forked child does not
 *    write the file; a worker that relays records into its own bounded
 *    buffer and hands its events out as text lines (mc__trace_relay_take)
 *    for its supervisor to import (mc__trace_import) under the worker's pid,
 *    a process track of its own. Both use the one monotonic clock every
 *    process shares, so a worker's times need no conversion.
 *
 * The tracer is process-wide state, like the logger: a trace covers every
 * device and runner of the program, which is what a person looks at.
 */
#include "engine/trace.h"
#include "core/core.h"
#include "engine/engine.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define DEFAULT_MAX_EVENTS 262144
#define MAX_MAX_EVENTS (1 << 24) /* about 4 GB of events */
#define BLOCK_EVENTS 4096u
#define MAX_TRACKS 1024u
#define MAX_LANES 64u
#define NAME_LEN 64
#define STATUS_LEN 32
#define CAT_LEN 16
#define MAX_KEYS 128 /* argument names of imported events, kept once each */
#define SEP '\x1f'   /* between the fields of a relayed event */

typedef struct tev {
    uint64_t ts, dur, group, seq;
    uint32_t track;
    char ph; /* 'X' span, 'i' instant */
    uint8_t nargs;
    char cat[CAT_LEN];
    char name[NAME_LEN];
    char status[STATUS_LEN];
    mc__targ args[MC__TRACE_MAX_ARGS];
} tev;

atomic_int mc__trace_on;

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static struct {
    bool active;
    char *path;
    uint64_t start_ns;
    tev **blocks;
    size_t nblocks, n, max;
    uint64_t dropped;
    char *tracks[MAX_TRACKS];
    int track_pid[MAX_TRACKS]; /* 0: this process; else a worker's, imported */
    uint32_t ntracks;
    size_t taken;         /* a relaying worker: events before this were handed out */
    char *keys[MAX_KEYS]; /* imported argument names */
    uint32_t nkeys;
    bool relay; /* a worker's trace: handed out, never written */
} T;
static atomic_uint_fast64_t next_group = 1;

uint64_t mc__trace_group(void)
{
    return atomic_fetch_add(&next_group, 1);
}

/* ---- recording ---------------------------------------------------------- */

/* Cut at cap - 1 bytes (not inside a UTF-8 sequence: the writer turns a
 * broken one into '?'). */
static void copy_str(char *dst, size_t cap, const char *src)
{
    size_t n = src ? strnlen(src, cap - 1) : 0;
    memcpy(dst, src ? src : "", n);
    dst[n] = '\0';
}

/* "kind label" equals name, without formatting it (this runs per event). */
static bool track_is(const char *name, const char *kind, const char *label)
{
    size_t k = strlen(kind);
    if (strncmp(name, kind, k)) return false;
    if (!label || !*label) return name[k] == '\0';
    return name[k] == ' ' && !strcmp(name + k + 1, label);
}

static uint32_t track_locked(int pid, const char *kind, const char *label)
{
    for (uint32_t i = 0; i < T.ntracks; i++)
        if (T.track_pid[i] == pid && track_is(T.tracks[i], kind, label)) return i;
    char name[160];
    snprintf(name, sizeof name, "%s%s%s", kind, label && *label ? " " : "", label ? label : "");
    if (T.ntracks == MAX_TRACKS) return MAX_TRACKS - 1; /* shares the last track */
    char *copy = mc__strdup(name);
    if (!copy) return 0;
    T.tracks[T.ntracks] = copy;
    T.track_pid[T.ntracks] = pid;
    return T.ntracks++;
}

/* A free event, or NULL (dropped, counted). Under mu. */
static tev *slot_locked(void)
{
    if (T.n >= T.max) {
        T.dropped++;
        return NULL;
    }
    size_t b = T.n / BLOCK_EVENTS;
    if (b == T.nblocks) {
        tev **bl = mc__realloc(T.blocks, (b + 1) * sizeof *bl);
        if (bl) T.blocks = bl;
        tev *blk = bl ? mc__malloc(BLOCK_EVENTS * sizeof *blk) : NULL;
        if (!blk) {
            T.dropped++;
            return NULL;
        }
        T.blocks[T.nblocks++] = blk;
    }
    tev *e = &T.blocks[b][T.n % BLOCK_EVENTS];
    e->seq = T.n++;
    return e;
}

static void record_pid(int pid, char ph, const char *kind, const char *label, const char *cat, const char *name,
                       uint64_t group, uint64_t t0, uint64_t t1, const char *status, int nargs, const mc__targ *args)
{
    if (!t0) t0 = mc__now_ns();
    if (t1 < t0) t1 = t0;
    pthread_mutex_lock(&mu);
    tev *e = T.active ? slot_locked() : NULL; /* stopped between the branch and here: drop */
    if (e) {
        e->ph = ph;
        e->ts = t0;
        e->dur = t1 - t0;
        e->group = group;
        copy_str(e->cat, sizeof e->cat, cat);
        e->track = track_locked(pid, kind, label);
        copy_str(e->name, sizeof e->name, name);
        copy_str(e->status, sizeof e->status, status);
        e->nargs = (uint8_t)(nargs < 0 ? 0 : MC__MIN(nargs, MC__TRACE_MAX_ARGS));
        if (e->nargs) memcpy(e->args, args, e->nargs * sizeof *args);
    }
    pthread_mutex_unlock(&mu);
}

static void record(char ph, const char *kind, const char *label, const char *cat, const char *name, uint64_t group,
                   uint64_t t0, uint64_t t1, const char *status, int nargs, const mc__targ *args)
{
    record_pid(0, ph, kind, label, cat, name, group, t0, t1, status, nargs, args);
}

void mc__trace_span(const char *track_kind, const char *track_label, const char *cat, const char *name, uint64_t group,
                    uint64_t t0, uint64_t t1, const char *status, int nargs, const mc__targ *args)
{
    record('X', track_kind, track_label, cat, name, group, t0, t1, status, nargs, args);
}

void mc__trace_instant(const char *track_kind, const char *track_label, const char *cat, const char *name, uint64_t t,
                       const char *status, int nargs, const mc__targ *args)
{
    if (!t) t = mc__now_ns();
    record('i', track_kind, track_label, cat, name, 0, t, t, status, nargs, args);
}

static uint64_t clamp(uint64_t v, uint64_t lo, uint64_t hi)
{
    return v < lo ? lo : v > hi ? hi : v;
}

/* Passes with their device times, drawn inside the span [lo, hi]. */
static void trace_passes(const char *kind, const char *label, uint64_t group, uint64_t lo, uint64_t hi,
                         const mc__submission *sub)
{
    if (!sub->pass_time) return;
    for (uint32_t i = 0; i < sub->npass; i++) {
        uint64_t a = sub->pass_time[2 * i], b = sub->pass_time[2 * i + 1];
        if (!a || !b || b < a) continue; /* did not run, or not measured (Metal) */
        const char *state = sub->pass_state ? mc_pass_state_name(sub->pass_state[i]) : NULL;
        mc__trace_span(kind, label, "pass", sub->passes[i].label, group, clamp(a, lo, hi), clamp(b, lo, hi), state,
                       MC__TARGS({"index", i}));
    }
}

void mc__trace_cmdbuf(mc_cmdbuf *cb, const mc__submission *sub, uint64_t commit_ns)
{
    uint64_t now = mc__now_ns();
    const char *queue = cb->queue->base.label;
    const char *device = cb->base.device->hal->name;
    const char *status = mc_status_name(sub->status);
    uint64_t g = mc__trace_group();
    mc__trace_span("queue", queue, "cmdbuf", cb->base.label, g, commit_ns, now, status,
                   MC__TARGS({"passes", sub->npass}));
    trace_passes("queue", queue, g, commit_ns, now, sub);
    uint64_t a = sub->gpu_start_ns, b = sub->gpu_end_ns;
    if (a && b >= a) {
        g = mc__trace_group();
        mc__trace_span("device", device, "device", cb->base.label, g, a, b, status, MC__TARGS({"passes", sub->npass}));
        trace_passes("device", device, g, a, b, sub);
    }
}

/* ---- writing ------------------------------------------------------------ */

static tev *at(size_t i)
{
    return &T.blocks[i / BLOCK_EVENTS][i % BLOCK_EVENTS];
}

/* Track, then time, then the longer span first (a parent before the spans
 * drawn inside it), then the order of recording. */
static int by_track_time(const void *pa, const void *pb)
{
    const tev *a = *(const tev *const *)pa, *b = *(const tev *const *)pb;
    if (a->track != b->track) return a->track < b->track ? -1 : 1;
    if (a->ts != b->ts) return a->ts < b->ts ? -1 : 1;
    if (a->dur != b->dur) return a->dur > b->dur ? -1 : 1;
    return a->seq < b->seq ? -1 : a->seq > b->seq;
}

/* Lane of each span, so the spans of one lane nest. */
typedef struct lane {
    uint64_t end, group, group_end;
} lane;

static uint32_t place(lane *lanes, uint32_t *nlanes, const tev *e)
{
    uint64_t end = e->ts + e->dur;
    if (e->ph != 'X') return 0;
    if (e->group) {
        for (uint32_t i = 0; i < *nlanes; i++)
            if (lanes[i].group == e->group && end <= lanes[i].group_end) return i;
    }
    uint32_t i = 0;
    while (i < *nlanes && lanes[i].end > e->ts) i++;
    if (i == MAX_LANES) i = MAX_LANES - 1; /* more overlap than lanes: this lane may not nest */
    if (i == *nlanes) {
        (*nlanes)++;
        lanes[i].end = 0;
    }
    lanes[i].end = MC__MAX(lanes[i].end, end);
    lanes[i].group = e->group;
    lanes[i].group_end = end;
    return i;
}

static void put_json_str(FILE *f, const char *s)
{
    fputc('"', f);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        unsigned c = *p;
        if (c == '"' || c == '\\') fprintf(f, "\\%c", c);
        else if (c < 0x20) fprintf(f, "\\u%04x", c);
        else if (c < 0x80) fputc((int)c, f);
        else {
            /* Well-formed UTF-8 passes; any other byte becomes '?', so the
             * file always parses. */
            int n = c >= 0xf0 && c < 0xf5 ? 3 : c >= 0xe0 ? 2 : c >= 0xc2 && c < 0xe0 ? 1 : -1;
            int k = 0;
            while (n > 0 && k < n && (p[k + 1] & 0xc0) == 0x80) k++;
            if (n <= 0 || k != n) {
                fputc('?', f);
                continue;
            }
            fwrite(p, 1, (size_t)n + 1, f);
            p += n;
        }
    }
    fputc('"', f);
}

/* ns relative to the trace's start, as microseconds with three decimals. */
static void put_us(FILE *f, int64_t ns)
{
    uint64_t a = ns < 0 ? (uint64_t)0 - (uint64_t)ns : (uint64_t)ns;
    fprintf(f, "%s%" PRIu64 ".%03" PRIu64, ns < 0 ? "-" : "", a / 1000, a % 1000);
}

static uint32_t lane_tid(uint32_t track, uint32_t lane_index)
{
    return track * MAX_LANES + lane_index + 1;
}

static void put_thread_name(FILE *f, int pid, uint32_t track, uint32_t l, bool *first)
{
    fprintf(f,
            "%s\n{\"name\":\"thread_name\",\"ph\":\"M\",\"pid\":%d,\"tid\":%u,\"args\":{\"name\":", *first ? "" : ",",
            pid, lane_tid(track, l));
    char name[200];
    if (l) snprintf(name, sizeof name, "%s (%u)", T.tracks[track], l + 1);
    else snprintf(name, sizeof name, "%s", T.tracks[track]);
    put_json_str(f, name);
    fprintf(f, "}},\n{\"name\":\"thread_sort_index\",\"ph\":\"M\",\"pid\":%d,\"tid\":%u,\"args\":{\"sort_index\":%u}}",
            pid, lane_tid(track, l), lane_tid(track, l));
    *first = false;
}

static void put_event(FILE *f, int pid, uint32_t tid, const tev *e)
{
    fputs(",\n{\"name\":", f);
    put_json_str(f, e->name);
    fputs(",\"cat\":", f);
    put_json_str(f, e->cat[0] ? e->cat : "mc");
    fprintf(f, ",\"ph\":\"%c\",", e->ph);
    if (e->ph == 'i') fputs("\"s\":\"t\",", f);
    fprintf(f, "\"pid\":%d,\"tid\":%u,\"ts\":", pid, tid);
    put_us(f, (int64_t)(e->ts - T.start_ns));
    if (e->ph == 'X') {
        fputs(",\"dur\":", f);
        put_us(f, (int64_t)e->dur);
    }
    fputs(",\"args\":{", f);
    bool comma = false;
    if (e->status[0]) {
        fputs("\"status\":", f);
        put_json_str(f, e->status);
        comma = true;
    }
    for (uint8_t i = 0; i < e->nargs; i++) {
        fprintf(f, "%s\"%s\":%" PRId64, comma ? "," : "", e->args[i].key, e->args[i].value);
        comma = true;
    }
    fputs("}}", f);
}

/* Writes the recorded events into o->f. Under mu, tracing off. */
static mc_status write_locked(FILE *f)
{
    tev **order = T.n ? mc__malloc(T.n * sizeof *order) : NULL;
    if (T.n && !order) return mc__fail(MC_ERR_NO_MEMORY, "trace: out of memory sorting %zu events", T.n);
    for (size_t i = 0; i < T.n; i++) order[i] = at(i);
    if (T.n) qsort(order, T.n, sizeof *order, by_track_time);
    uint32_t *tids = T.n ? mc__malloc(T.n * sizeof *tids) : NULL;
    lane *lanes = mc__calloc(MAX_LANES, sizeof *lanes);
    bool *named = mc__calloc((size_t)MAX_TRACKS * MAX_LANES, sizeof *named);
    mc_status s = MC_OK;
    if ((T.n && !tids) || !lanes || !named) {
        s = mc__fail(MC_ERR_NO_MEMORY, "trace: out of memory writing %zu events", T.n);
        goto out;
    }
    int pid = (int)getpid();
    fprintf(f,
            "{\"displayTimeUnit\":\"ns\",\"otherData\":{\"producer\":\"metal-compute %s\",\"format_version\":1,"
            "\"events\":%zu,\"dropped_events\":%" PRIu64 ",\"max_events\":%zu},\n\"traceEvents\":[",
            MC_VERSION_STRING, T.n, T.dropped, T.max);
    bool first = true;
    fprintf(f, "\n{\"name\":\"process_name\",\"ph\":\"M\",\"pid\":%d,\"tid\":0,\"args\":{\"name\":\"metal-compute\"}}",
            pid);
    first = false;
    /* Each worker that relayed its events: a process of its own. */
    for (uint32_t t = 0; t < T.ntracks; t++) {
        int w = T.track_pid[t];
        bool seen = false;
        for (uint32_t u = 0; u < t && !seen; u++) seen = T.track_pid[u] == w;
        if (!w || seen) continue;
        fprintf(f,
                ",\n{\"name\":\"process_name\",\"ph\":\"M\",\"pid\":%d,\"tid\":0,\"args\":{\"name\":\"metal-compute "
                "worker %d\"}}",
                w, w);
    }
    /* Lanes per track, then the names of the lanes used. */
    uint32_t nlanes = 0, track = UINT32_MAX;
    for (size_t i = 0; i < T.n; i++) {
        if (order[i]->track != track) {
            track = order[i]->track;
            nlanes = 0;
        }
        uint32_t l = place(lanes, &nlanes, order[i]);
        tids[i] = lane_tid(track, l);
        if (!named[(size_t)track * MAX_LANES + l]) {
            named[(size_t)track * MAX_LANES + l] = true;
            put_thread_name(f, T.track_pid[track] ? T.track_pid[track] : pid, track, l, &first);
        }
    }
    /* Events of a lane in time order: the sort keeps each track's events
     * in time order, and a lane is a subsequence of its track. */
    for (size_t i = 0; i < T.n; i++) {
        int p = T.track_pid[order[i]->track];
        put_event(f, p ? p : pid, tids[i], order[i]);
    }
    fputs("\n]}\n", f);
    if (ferror(f)) s = mc__fail(MC_ERR_IO, "trace: write error");
out:
    free(order);
    free(tids);
    free(lanes);
    free(named);
    return s;
}

static void reset_locked(void)
{
    for (size_t i = 0; i < T.nblocks; i++) free(T.blocks[i]);
    free(T.blocks);
    for (uint32_t i = 0; i < T.ntracks; i++) free(T.tracks[i]);
    for (uint32_t i = 0; i < T.nkeys; i++) free(T.keys[i]);
    free(T.path);
    T.blocks = NULL;
    T.nblocks = T.n = T.taken = 0;
    T.ntracks = T.nkeys = 0;
    T.dropped = 0;
    T.path = NULL;
    T.active = false;
    T.relay = false;
}

/* ---- workers: relaying events to the supervisor ---------------------------- */

/* A field of a relayed line: the separators and line ends cannot occur. */
static size_t put_field(char *dst, size_t cap, const char *src)
{
    size_t n = 0;
    for (; src && *src && n + 1 < cap; src++) dst[n++] = *src == SEP || *src == '\n' ? '?' : *src;
    if (n < cap) dst[n++] = SEP;
    return n;
}

void mc__trace_relay_start(void)
{
    pthread_mutex_lock(&mu);
    reset_locked(); /* what the parent had recorded when it forked is the parent's */
    long long max = mc__env_int("MC_TRACE_MAX_EVENTS", DEFAULT_MAX_EVENTS);
    T.max = max >= 1 && max <= MAX_MAX_EVENTS ? (size_t)max : DEFAULT_MAX_EVENTS;
    T.start_ns = mc__now_ns();
    T.active = true;
    T.relay = true;
    atomic_store(&mc__trace_on, 1);
    pthread_mutex_unlock(&mu);
}

/* One event as a line: ph, ts, dur, group, track, cat, name, status, then
 * key=value per argument, each field ending in SEP, the line in '\n'. */
static size_t pack(const tev *e, char *buf, size_t cap)
{
    char line[512];
    int k = snprintf(line, sizeof line, "%c%c%" PRIu64 "%c%" PRIu64 "%c%" PRIu64 "%c", e->ph, SEP, e->ts, SEP, e->dur,
                     SEP, e->group, SEP);
    size_t n = (size_t)k;
    n += put_field(line + n, sizeof line - n, T.tracks[e->track]);
    n += put_field(line + n, sizeof line - n, e->cat);
    n += put_field(line + n, sizeof line - n, e->name);
    n += put_field(line + n, sizeof line - n, e->status);
    for (uint8_t i = 0; i < e->nargs && n + 64 < sizeof line; i++)
        n += (size_t)snprintf(line + n, sizeof line - n, "%s=%" PRId64 "%c", e->args[i].key, e->args[i].value, SEP);
    if (n + 2 > cap) return 0;
    memcpy(buf, line, n);
    buf[n++] = '\n';
    return n;
}

size_t mc__trace_relay_take(char *buf, size_t cap, uint64_t *dropped)
{
    size_t used = 0;
    pthread_mutex_lock(&mu);
    if (dropped) {
        *dropped = T.dropped;
        T.dropped = 0;
    }
    while (T.relay && T.taken < T.n) {
        size_t k = pack(at(T.taken), buf + used, cap - used - 1);
        if (!k) break;
        used += k;
        T.taken++;
    }
    /* All handed out: the blocks are reused from the start. */
    if (T.taken == T.n) T.taken = T.n = 0;
    pthread_mutex_unlock(&mu);
    if (cap) buf[used] = '\0';
    return used;
}

/* An argument name of an imported event, kept for the trace's life. */
static const char *key_locked(const char *k, size_t len)
{
    for (uint32_t i = 0; i < T.nkeys; i++)
        if (strlen(T.keys[i]) == len && !strncmp(T.keys[i], k, len)) return T.keys[i];
    for (size_t i = 0; i < len; i++)
        if (!((k[i] >= 'a' && k[i] <= 'z') || (k[i] >= '0' && k[i] <= '9') || k[i] == '_')) return NULL;
    if (T.nkeys == MAX_KEYS) return NULL;
    char *c = mc__malloc(len + 1);
    if (!c) return NULL;
    memcpy(c, k, len);
    c[len] = '\0';
    return T.keys[T.nkeys++] = c;
}

/* The next field of *p (cut at SEP) into dst; false at the line's end. */
static bool next_field(const char **p, const char *end, char *dst, size_t cap)
{
    const char *q = memchr(*p, SEP, (size_t)(end - *p));
    if (!q) return false;
    size_t n = MC__MIN((size_t)(q - *p), cap - 1);
    memcpy(dst, *p, n);
    dst[n] = '\0';
    *p = q + 1;
    return true;
}

void mc__trace_import(int pid, const char *text, uint64_t dropped)
{
    if (!MC__TRACING() || pid <= 0 || !text) return;
    pthread_mutex_lock(&mu);
    T.dropped += dropped;
    for (const char *line = text; *line;) {
        const char *end = strchr(line, '\n');
        if (!end) break; /* a line is never cut across messages: a broken one is ignored */
        const char *p = line;
        char ph[4], ts[24], dur[24], grp[24], track[160], cat[CAT_LEN], name[NAME_LEN], status[STATUS_LEN];
        bool ok = next_field(&p, end, ph, sizeof ph) && next_field(&p, end, ts, sizeof ts) &&
                  next_field(&p, end, dur, sizeof dur) && next_field(&p, end, grp, sizeof grp) &&
                  next_field(&p, end, track, sizeof track) && next_field(&p, end, cat, sizeof cat) &&
                  next_field(&p, end, name, sizeof name) && next_field(&p, end, status, sizeof status) &&
                  (ph[0] == 'X' || ph[0] == 'i');
        mc__targ args[MC__TRACE_MAX_ARGS];
        int nargs = 0;
        char kv[96];
        while (ok && nargs < MC__TRACE_MAX_ARGS && next_field(&p, end, kv, sizeof kv)) {
            char *eq = strchr(kv, '=');
            const char *key = eq ? key_locked(kv, (size_t)(eq - kv)) : NULL;
            if (!key) continue;
            args[nargs].key = key;
            args[nargs++].value = strtoll(eq + 1, NULL, 10);
        }
        line = end + 1;
        if (!ok) continue;
        tev *e = T.active ? slot_locked() : NULL;
        if (!e) continue;
        e->ph = ph[0];
        e->ts = strtoull(ts, NULL, 10);
        e->dur = strtoull(dur, NULL, 10);
        e->group = strtoull(grp, NULL, 10);
        e->track = track_locked(pid, track, NULL);
        copy_str(e->cat, sizeof e->cat, cat);
        copy_str(e->name, sizeof e->name, name);
        copy_str(e->status, sizeof e->status, status);
        e->nargs = (uint8_t)nargs;
        if (nargs) memcpy(e->args, args, (size_t)nargs * sizeof *args);
    }
    pthread_mutex_unlock(&mu);
}

/* ---- the public calls --------------------------------------------------- */

static void at_exit(void)
{
    if (mc_trace_active() && mc_trace_stop() != MC_OK)
        mc__log(MC_LOG_ERROR, "trace.write_failed", "the trace could not be written: %s", mc_last_error());
}

/* A forked child (the isolation layer's launcher and workers) does not
 * trace: its exit would overwrite the parent's file with its own events.
 * The lock may have been held by another thread at fork: made anew. */
static void fork_child(void)
{
    atomic_store(&mc__trace_on, 0);
    pthread_mutex_init(&mu, NULL);
    T.active = false;
}

static pthread_once_t exit_once = PTHREAD_ONCE_INIT;
static void register_exit(void)
{
    atexit(at_exit);
    pthread_atfork(NULL, NULL, fork_child);
}

mc_status mc_trace_start(const char *path)
{
    if (!path) return mc__fail(MC_ERR_INVALID_ARGUMENT, "mc_trace_start: path is NULL");
    mc_status s = mc__outfile_check(path);
    if (s != MC_OK) return s;
    long long max = mc__env_int("MC_TRACE_MAX_EVENTS", DEFAULT_MAX_EVENTS);
    if (max < 1 || max > MAX_MAX_EVENTS)
        return mc__fail(MC_ERR_INVALID_ARGUMENT, "MC_TRACE_MAX_EVENTS is %lld; it must be 1 to %d", max,
                        MAX_MAX_EVENTS);
    char *copy = mc__strdup(path);
    if (!copy) return mc__fail(MC_ERR_NO_MEMORY, "mc_trace_start: out of memory");
    pthread_once(&exit_once, register_exit);
    pthread_mutex_lock(&mu);
    if (T.active) {
        pthread_mutex_unlock(&mu);
        free(copy);
        return mc__fail(MC_ERR_INVALID_STATE, "a trace is already recording (to '%s'); stop it first", T.path);
    }
    T.path = copy;
    T.max = (size_t)max;
    T.start_ns = mc__now_ns();
    T.active = true;
    atomic_store(&mc__trace_on, 1);
    pthread_mutex_unlock(&mu);
    return MC_OK;
}

mc_status mc_trace_stop(void)
{
    pthread_mutex_lock(&mu);
    if (!T.active) {
        pthread_mutex_unlock(&mu);
        return mc__fail(MC_ERR_INVALID_STATE, "mc_trace_stop: no trace is recording");
    }
    atomic_store(&mc__trace_on, 0);
    T.active = false;
    if (T.relay) {
        /* A worker's events not yet handed out go with it. */
        reset_locked();
        pthread_mutex_unlock(&mu);
        return MC_OK;
    }
    mc__outfile o;
    mc_status s = mc__outfile_open(T.path, &o);
    if (s == MC_OK) {
        s = write_locked(o.f);
        if (s == MC_OK) s = mc__outfile_commit(&o);
        else mc__outfile_abort(&o);
    }
    if (s == MC_OK && T.dropped)
        mc__log(MC_LOG_WARN, "trace.dropped", "trace '%s': %" PRIu64 " events dropped past MC_TRACE_MAX_EVENTS=%zu",
                T.path, T.dropped, T.max);
    reset_locked();
    pthread_mutex_unlock(&mu);
    return s;
}

bool mc_trace_active(void)
{
    return atomic_load(&mc__trace_on) != 0;
}

/* MC_TRACE=FILE traces any program that uses the library. */
#if defined(__GNUC__)
__attribute__((constructor)) static void trace_from_env(void)
{
    const char *path = mc__env_str("MC_TRACE", NULL);
    if (!path) return;
    if (mc_trace_start(path) != MC_OK) mc__log(MC_LOG_ERROR, "trace.start_failed", "MC_TRACE: %s", mc_last_error());
}
#endif
