/*
 * DOC: The tracer's hooks (internal)
 *
 * Engine files record events through these calls, each behind
 * MC__TRACING(): with tracing off the cost is that one predictable branch
 * on a relaxed load. Events are named by a track (kind + label, e.g.
 * "queue" + the queue's label), a category, a name, monotonic times in ns
 * (mc__now_ns; device timestamps are in that base), an optional status
 * word and up to MC__TRACE_MAX_ARGS integer arguments. trace.c owns the
 * buffer, the lanes and the file; docs/TRACE.md lists every event.
 */
#ifndef MC_ENGINE_TRACE_H
#define MC_ENGINE_TRACE_H

#include "mc/mc.h"

#include <stdatomic.h>

extern atomic_int mc__trace_on;

#if defined(__GNUC__)
#define MC__TRACING() __builtin_expect(atomic_load_explicit(&mc__trace_on, memory_order_relaxed), 0)
#else
#define MC__TRACING() atomic_load_explicit(&mc__trace_on, memory_order_relaxed)
#endif

#define MC__TRACE_MAX_ARGS 6

typedef struct mc__targ {
    const char *key; /* a string literal: kept as a pointer */
    int64_t value;
} mc__targ;

/* nargs, args from a list of {key, value} pairs. */
#define MC__TARGS(...)                                                              \
    (int)(sizeof((mc__targ[]){__VA_ARGS__}) / sizeof(mc__targ)), (const mc__targ[]) \
    {                                                                               \
        __VA_ARGS__                                                                 \
    }

/* A span [t0, t1] (t0 == 0: now; t1 < t0: t1 = t0). Spans of one group on
 * one track nest: the first (longest) is the parent, the others are drawn
 * inside it. group 0: none. status may be NULL. Strings are copied. */
void mc__trace_span(const char *track_kind, const char *track_label, const char *cat, const char *name, uint64_t group,
                    uint64_t t0, uint64_t t1, const char *status, int nargs, const mc__targ *args);
/* A point in time (t == 0: now). */
void mc__trace_instant(const char *track_kind, const char *track_label, const char *cat, const char *name, uint64_t t,
                       const char *status, int nargs, const mc__targ *args);
/* A fresh group id (never 0). */
uint64_t mc__trace_group(void);

/* Workers (the isolation layer): in a forked worker, records into this
 * process's bounded buffer for the supervisor, never into a file. */
void mc__trace_relay_start(void);
/* Hands out the oldest events not yet taken as text lines (whole lines
 * only) into buf[cap], NUL-terminated; returns the bytes written, 0 when
 * none is waiting. *dropped (may be NULL) gets the events dropped since
 * the last call. */
size_t mc__trace_relay_take(char *buf, size_t cap, uint64_t *dropped);
/* In the supervisor: records a worker's lines under its pid, a process
 * track of its own, and counts its dropped events. */
void mc__trace_import(int pid, const char *text, uint64_t dropped);

/* A command buffer finished: its span from commit to completion with its
 * passes on the queue's track, and the device's own span (device
 * timestamps) with its passes on the device's track. */
struct mc_cmdbuf;
struct mc__submission;
void mc__trace_cmdbuf(struct mc_cmdbuf *cb, const struct mc__submission *sub, uint64_t commit_ns);

#endif
