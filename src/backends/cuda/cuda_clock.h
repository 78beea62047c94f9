/*
 * DOC: CUDA event times on the host clock
 *
 * A timed command buffer records CUDA events on its stream: one before it
 * (or before each pass, with pass timestamps) and one after it. CUDA only
 * tells the time between two events, so the queue keeps an anchor: an
 * event whose host time is known, moved to the last event of every timed
 * command buffer that completes. This header is the arithmetic that turns
 * those differences into host times, free of CUDA types, so its rules are
 * tested on machines without a GPU (tests/test_cuda_clock.c); the events
 * themselves are in cuda_timing.c.
 *
 * The rules, so that a trace (Chrome Trace Event JSON) reads the spans
 * right: a span that touches the next one reads as overlapping it, so
 *  - a command buffer starts at least 1 ns after the previous timed one
 *    ended (the anchor);
 *  - consecutive events are at least 1 ns apart: one event ends pass i-1
 *    and starts pass i, and pass i-1's end is put 1 ns before it, which
 *    leaves a pass whose events tie (a pass with no work, or below the
 *    event timer's resolution) a span of its own;
 *  - a pass that started but did not finish gets no times (0, 0).
 */
#ifndef MC_BACKENDS_CUDA_CUDA_CLOCK_H
#define MC_BACKENDS_CUDA_CUDA_CLOCK_H

#include <stdbool.h>
#include <stdint.h>

/* What a finished command buffer's events say. */
typedef struct mc__cuda_clock_in {
    uint64_t anchor_ns;   /* host time of the anchor event */
    uint64_t to_first_ns; /* from the anchor event to event 0 */
    /* from event 0 to event i, for i in [0, nev); [0] is not read */
    const uint64_t *from_first_ns;
    uint32_t nev; /* events recorded, at least 2: the first starts, the last ends */
    /* event i starts pass i, the last event ends the last pass that ran */
    bool pass_events;
    uint32_t npass; /* passes in the command buffer (pass_time's length / 2) */
    uint32_t nran;  /* passes that finished (the events of the others say nothing) */
} mc__cuda_clock_in;

/* The command buffer's start and end on the host clock into *start_ns and
 * *end_ns (the end is the anchor's new time). With pass events and
 * pass_time not NULL, pass p's start and end into pass_time[2p] and
 * pass_time[2p+1] for every p < npass, (0, 0) for a pass that did not
 * finish. False, and nothing written, when in is NULL, has fewer than two
 * events or no differences, or an output is NULL. */
bool mc__cuda_clock_times(const mc__cuda_clock_in *in, uint64_t *pass_time, uint64_t *start_ns, uint64_t *end_ns);

/* CUDA's float milliseconds as nanoseconds: 0 for a negative or NaN value,
 * the largest value for one too large. */
uint64_t mc__cuda_ms_to_ns(float ms);

#endif
