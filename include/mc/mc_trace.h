/*
 * metal-compute: traces. Included by mc/mc.h; see docs/TRACE.md.
 *
 * A trace records what the runtime did, with timestamps, into a Chrome
 * Trace Event JSON file that Perfetto (ui.perfetto.dev) and chrome://tracing
 * open: a track per queue with every command buffer from commit to
 * completion and its passes by label; the device's own execution spans
 * (device timestamps) on a device track; the runner's chunks with their
 * iteration ranges, checkpoints, faults and recoveries; worker restarts of
 * isolated runs; stream items; pipeline compiles and cache hits and misses.
 *
 * Events are kept in memory and the file is written once, when the trace
 * stops: at mc_trace_stop, or when the program exits (also after an error,
 * when the trace is needed most). Memory is bounded: past MC_TRACE_MAX_EVENTS
 * events (default 262144, about 60 MB) further events are counted as
 * dropped, and the count is written into the file.
 *
 * Setting MC_TRACE=FILE in the environment starts a trace when the library
 * is loaded, for any program that uses it; it is written at exit.
 *
 * With tracing off, each place that could record an event costs one
 * predictable branch. Thread-safe: events may come from any thread.
 */
#ifndef MC_TRACE_H
#define MC_TRACE_H

#include "mc.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Starts recording. The path is checked now (not empty, not a folder, its
 * folder writable: MC_ERR_INVALID_ARGUMENT or MC_ERR_IO with the cause), so
 * a long run does not find out at its end; the file is written at
 * mc_trace_stop or at exit, atomically (a temporary file beside it, then
 * renamed). MC_ERR_INVALID_STATE when a trace is already recording (for
 * example one started by MC_TRACE). */
MC_API mc_status mc_trace_start(const char *path);

/* Stops recording and writes the file. MC_ERR_INVALID_STATE when no trace
 * is recording; MC_ERR_IO (with the path and the reason) when the file
 * cannot be written. The events are freed either way. */
MC_API mc_status mc_trace_stop(void);

/* True while a trace is recording. */
MC_API bool mc_trace_active(void);

#ifdef __cplusplus
}
#endif

#endif
