/* The CUDA device's GPU times (src/backends/cuda/cuda_clock.h), checked on
 * the CPU: event times go in as the differences CUDA would report, and the
 * spans that come out obey what a trace needs (tests/test_trace.c,
 * check_tracks): on a track, times never go back; spans either nest or are
 * apart (end < next start: touching spans read as overlapping); no pass
 * ends before it starts. The arithmetic has no CUDA call, so this runs with
 * or without a GPU and with or without the CUDA headers. */
#include "mc_test.h"

#include "backends/cuda/cuda_clock.h"

#include <math.h>

enum { MAXP = 64 };
#define MAX_U32(a, b) ((a) > (b) ? (a) : (b))

typedef struct span {
    uint64_t a, b;
    int is_cmdbuf;
} span;

/* A queue's timeline as the backend keeps it: the anchor's host time. */
typedef struct timeline {
    uint64_t anchor_ns;
    span spans[16384];
    size_t n;
    uint64_t last_end; /* end of the previous command buffer, 0 before the first */
} timeline;

/* One command buffer: checks its own rules, then adds its spans to tl
 * (what the trace draws on the device's track). from_first[i]: event i
 * minus event 0; nev events; pass events or not; npass passes of which
 * nran finished. */
static int run_cmdbuf(timeline *tl, uint64_t to_first, const uint64_t *from_first, uint32_t nev, bool pass_events,
                      uint32_t npass, uint32_t nran, uint64_t *pass_time)
{
    CHECK_LE(npass, MAXP);
    for (uint32_t i = 0; i < 2 * npass; i++) pass_time[i] = 0xdeadbeefu; /* stale from an earlier use */
    mc__cuda_clock_in in = {.anchor_ns = tl->anchor_ns,
                            .to_first_ns = to_first,
                            .from_first_ns = from_first,
                            .nev = nev,
                            .pass_events = pass_events,
                            .npass = npass,
                            .nran = nran};
    uint64_t start = 0, end = 0;
    CHECK(mc__cuda_clock_times(&in, pass_time, &start, &end));
    /* the command buffer: after the anchor, after the previous one, apart */
    CHECK_GT(start, tl->anchor_ns);
    CHECK_LE(start, end);
    if (tl->last_end) CHECK_LT(tl->last_end, start);
    CHECK_LT(tl->n + 1 + npass, sizeof tl->spans / sizeof tl->spans[0]);
    tl->spans[tl->n++] = (span){start, end, 1};
    if (!pass_events) {
        for (uint32_t i = 0; i < 2 * npass; i++) CHECK_EQ(pass_time[i], 0xdeadbeefu); /* not touched */
    } else {
        uint64_t prev_end = 0, prev_start = start;
        for (uint32_t p = 0; p < npass; p++) {
            uint64_t a = pass_time[2 * p], b = pass_time[2 * p + 1];
            if (p >= nran || p + 1 >= nev) { /* did not finish: no times */
                CHECK_EQ(a, 0);
                CHECK_EQ(b, 0);
                continue;
            }
            CHECK_LE(a, b);     /* no pass ends before it starts */
            CHECK_LE(start, a); /* inside its command buffer */
            CHECK_LE(b, end);
            CHECK_LE(prev_start, a);      /* in order */
            if (p) CHECK_LT(prev_end, a); /* apart from the one before */
            prev_end = b;
            prev_start = a;
            tl->spans[tl->n++] = (span){a, b, 0};
        }
    }
    tl->anchor_ns = end; /* the backend moves the anchor to the last event */
    tl->last_end = end;
    return 0;
}

/* The trace's own check, strictly: spans in the order the trace sorts them
 * (start, then the longer first); a span starting at or before the end of
 * an open one must lie inside it. */
static int cmp_span(const void *pa, const void *pb)
{
    const span *a = pa, *b = pb;
    if (a->a != b->a) return a->a < b->a ? -1 : 1;
    if (a->b != b->b) return a->b > b->b ? -1 : 1;
    return b->is_cmdbuf - a->is_cmdbuf;
}

static int check_track(timeline *tl)
{
    qsort(tl->spans, tl->n, sizeof *tl->spans, cmp_span);
    uint64_t open_end[8];
    int depth = 0;
    uint64_t last = 0;
    for (size_t i = 0; i < tl->n; i++) {
        const span *s = &tl->spans[i];
        CHECK_LE(last, s->a);
        last = s->a;
        while (depth && open_end[depth - 1] < s->a) depth--;
        if (depth && s->b > open_end[depth - 1])
            MC__FAILED("span %zu [%llu, %llu] touches or overlaps the open one ending %llu", i,
                       (unsigned long long)s->a, (unsigned long long)s->b, (unsigned long long)open_end[depth - 1]);
        CHECK_LT(depth, 8);
        open_end[depth++] = s->b;
    }
    return 0;
}

/* One event ends pass i-1 and starts pass i: the end goes 1 ns before. */
MC_TEST(cuda_clock_passes_sharing_an_event_do_not_touch)
{
    static timeline tl;
    memset(&tl, 0, sizeof tl);
    tl.anchor_ns = 1000000;
    uint64_t pt[2 * MAXP];
    const uint64_t ev[] = {0, 1000, 2500, 4000};
    CHECK_EQ(run_cmdbuf(&tl, 300, ev, 4, true, 3, 3, pt), 0);
    const uint64_t s = 1000000 + 300;
    CHECK_EQ(pt[0], s);
    CHECK_EQ(pt[1], s + 999);
    CHECK_EQ(pt[2], s + 1000);
    CHECK_EQ(pt[3], s + 2499);
    CHECK_EQ(pt[4], s + 2500);
    CHECK_EQ(pt[5], s + 3999);
    CHECK_EQ(tl.anchor_ns, s + 4000);
    CHECK_EQ(check_track(&tl), 0);
    return 0;
}

/* Events that tie (a pass with nothing to run, or shorter than the event
 * timer's resolution) still give each pass a span of its own, apart from
 * its neighbours; events that come out of order (rounding) do too. */
MC_TEST(cuda_clock_tied_events_give_every_pass_its_own_span)
{
    static timeline tl;
    memset(&tl, 0, sizeof tl);
    tl.anchor_ns = 5000;
    uint64_t pt[2 * MAXP];
    const uint64_t ties[] = {0, 0, 0, 500, 500};
    CHECK_EQ(run_cmdbuf(&tl, 10, ties, 5, true, 4, 4, pt), 0);
    const uint64_t s = 5010;
    CHECK_EQ(pt[0], s); /* [s, s] */
    CHECK_EQ(pt[1], s);
    CHECK_EQ(pt[2], s + 1); /* [s+1, s+1] */
    CHECK_EQ(pt[3], s + 1);
    CHECK_EQ(pt[4], s + 2); /* [s+2, s+499] */
    CHECK_EQ(pt[5], s + 499);
    CHECK_EQ(pt[6], s + 500); /* [s+500, s+500] */
    CHECK_EQ(pt[7], s + 500);
    const uint64_t backwards[] = {0, 300, 200, 400};
    CHECK_EQ(run_cmdbuf(&tl, 0, backwards, 4, true, 3, 3, pt), 0);
    const uint64_t zero[] = {0, 0};
    CHECK_EQ(run_cmdbuf(&tl, 0, zero, 2, true, 1, 1, pt), 0);
    CHECK_EQ(pt[0], pt[1]); /* a zero-length pass is a point, not nothing */
    CHECK_EQ(check_track(&tl), 0);
    return 0;
}

/* A pass that failed at submit, or after an injected fault, has a start
 * event but no end: it and the passes after it get no times. */
MC_TEST(cuda_clock_unfinished_passes_have_no_times)
{
    static timeline tl;
    memset(&tl, 0, sizeof tl);
    tl.anchor_ns = 77;
    uint64_t pt[2 * MAXP];
    /* pass 2 of 4 failed while encoding: events before passes 0..2, then the end */
    const uint64_t failed[] = {0, 100, 200, 210};
    CHECK_EQ(run_cmdbuf(&tl, 5, failed, 4, true, 4, 2, pt), 0);
    CHECK_NE(pt[2], 0);
    CHECK_EQ(pt[4], 0);
    CHECK_EQ(pt[5], 0);
    /* an injected fault at pass 1 of 3: pass 0 ran, then the end event */
    const uint64_t injected[] = {0, 50};
    CHECK_EQ(run_cmdbuf(&tl, 5, injected, 2, true, 3, 1, pt), 0);
    CHECK_EQ(pt[1] + 1, tl.anchor_ns);
    /* nothing finished */
    CHECK_EQ(run_cmdbuf(&tl, 5, injected, 2, true, 3, 0, pt), 0);
    CHECK_EQ(check_track(&tl), 0);
    return 0;
}

/* Command buffers back to back on a queue: the next one's first event is
 * the previous one's last (zero from the anchor), so it starts 1 ns after;
 * with or without pass timestamps. */
MC_TEST(cuda_clock_back_to_back_command_buffers_do_not_touch)
{
    static timeline tl;
    memset(&tl, 0, sizeof tl);
    tl.anchor_ns = 1;
    uint64_t pt[2 * MAXP];
    const uint64_t ev[] = {0, 40, 40, 90};
    for (int k = 0; k < 10; k++) {
        uint64_t before = tl.anchor_ns;
        CHECK_EQ(run_cmdbuf(&tl, 0, ev, 4, k % 2 == 0, 3, 3, pt), 0);
        CHECK_EQ(tl.spans[tl.n - (k % 2 == 0 ? 4 : 1)].a, before + 1);
    }
    const uint64_t two[] = {0, 0};
    CHECK_EQ(run_cmdbuf(&tl, 0, two, 2, false, 0, 0, pt), 0);
    CHECK_EQ(run_cmdbuf(&tl, 0, two, 2, false, 0, 0, pt), 0);
    CHECK_EQ(check_track(&tl), 0);
    return 0;
}

/* Many command buffers with random event times (ties, long gaps, events
 * out of order), random pass counts and failures: the rules hold for all. */
MC_TEST(cuda_clock_random_event_times_keep_the_trace_rules)
{
    static timeline tl;
    memset(&tl, 0, sizeof tl);
    tl.anchor_ns = 123456789;
    uint64_t pt[2 * MAXP], ev[MAXP + 1];
    uint64_t x = 0x9e3779b97f4a7c15ull; /* xorshift64, fixed seed: a failure repeats */
#define NEXT() (x ^= x << 13, x ^= x >> 7, x ^= x << 17, x)
    for (int k = 0; k < 800; k++) {
        uint32_t npass = 1 + (uint32_t)(NEXT() % 12);
        uint32_t nran = NEXT() % 4 ? npass : (uint32_t)(NEXT() % npass);
        bool pass_events = NEXT() % 3 != 0;
        /* with pass events: one before each pass that began and one at the
         * end; a pass that failed while encoding began, an injected fault's
         * pass did not */
        uint32_t began = nran + (uint32_t)(NEXT() % 2);
        uint32_t nev = 2;
        if (pass_events && nran == npass) nev = npass + 1;
        else if (pass_events) nev = MAX_U32(2u, began + 1);
        ev[0] = 0;
        for (uint32_t i = 1; i < nev; i++) {
            uint64_t r = NEXT() % 8;
            uint64_t step = r < 3 ? 0 : r < 6 ? NEXT() % 2000 : NEXT() % 5000000;
            ev[i] = NEXT() % 16 ? ev[i - 1] + step : (ev[i - 1] > 100 ? ev[i - 1] - 100 : 0);
        }
        uint64_t to_first = NEXT() % 4 ? NEXT() % 100000 : 0;
        if (run_cmdbuf(&tl, to_first, ev, nev, pass_events, npass, nran, pt)) MC__FAILED("command buffer %d", k);
    }
#undef NEXT
    CHECK_EQ(check_track(&tl), 0);
    return 0;
}

/* Bad input is refused with nothing written; CUDA's float milliseconds
 * become nanoseconds without undefined conversions. */
MC_TEST(cuda_clock_refuses_bad_input)
{
    uint64_t pt[2] = {7, 7}, s = 9, e = 9;
    const uint64_t ev[] = {0, 10};
    mc__cuda_clock_in in = {.anchor_ns = 1, .from_first_ns = ev, .nev = 1, .pass_events = true, .npass = 1, .nran = 1};
    CHECK(!mc__cuda_clock_times(&in, pt, &s, &e));
    CHECK(!mc__cuda_clock_times(NULL, pt, &s, &e));
    in.nev = 2;
    CHECK(!mc__cuda_clock_times(&in, pt, NULL, &e));
    CHECK(!mc__cuda_clock_times(&in, pt, &s, NULL));
    in.from_first_ns = NULL;
    CHECK(!mc__cuda_clock_times(&in, pt, &s, &e));
    CHECK_EQ(pt[0], 7);
    CHECK_EQ(s, 9);
    CHECK_EQ(e, 9);
    /* no pass_time asked for: the command buffer's times only */
    in.from_first_ns = ev;
    CHECK(mc__cuda_clock_times(&in, NULL, &s, &e));
    CHECK_EQ(s, 2);
    CHECK_EQ(e, 12);

    CHECK_EQ(mc__cuda_ms_to_ns(1.5f), 1500000);
    CHECK_EQ(mc__cuda_ms_to_ns(0.0f), 0);
    CHECK_EQ(mc__cuda_ms_to_ns(-3.0f), 0);
    CHECK_EQ(mc__cuda_ms_to_ns(NAN), 0);
    CHECK(mc__cuda_ms_to_ns(INFINITY) == UINT64_MAX);
    CHECK(mc__cuda_ms_to_ns(3.0e30f) == UINT64_MAX);
    return 0;
}
