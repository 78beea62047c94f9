/*
 * DOC: Command buffers replayed as CUDA graphs: the shape table
 *
 * A command buffer whose passes are plain dispatches (bindings, dispatches,
 * barriers) has a shape: the sequence of (pipeline, grid, threadgroup,
 * threadgroup memory) of its launches. Buffer addresses and argument bytes
 * are not part of it. Users commit the same shape again and again (every
 * runner chunk, stream item, training step), so each queue remembers the
 * shapes it saw last:
 *
 *  - first sighting: the launches go out one by one, as always (nothing is
 *    built that might never be used again: never slower than plain launches);
 *  - second sighting: the launches become one CUDA graph, instantiated and
 *    launched (the build is paid once);
 *  - later sightings: the graph's nodes whose arguments changed are updated
 *    in place (cuGraphExecKernelNodeSetParams), then one cuGraphLaunch.
 *
 * This header is the table alone, free of CUDA types, so its rules are
 * tested on machines without a GPU (tests/test_gpu.c). The graphs are in
 * cuda_replay.c.
 */
#ifndef MC_BACKENDS_CUDA_CUDA_REPLAY_H
#define MC_BACKENDS_CUDA_CUDA_REPLAY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Shapes a queue remembers (least recently seen is forgotten first). */
#define MC__REPLAY_ENTRIES 8u
/* Fewer launches than this go out one by one: a graph launch costs about
 * what one kernel launch does. */
#define MC__REPLAY_MIN_LAUNCHES 4u
/* More than this are not remembered (the table's memory stays small). */
#define MC__REPLAY_MAX_LAUNCHES 4096u

/* One launch of a shape. `pipeline` is an identity only (never called). */
typedef struct mc__replay_step {
    const void *pipeline;
    uint32_t grid[3], block[3];
    uint32_t smem;
    uint32_t param_bytes; /* of this launch's arguments, padded as launched */
} mc__replay_step;

typedef enum mc__replay_action {
    MC__REPLAY_DIRECT = 0, /* launch one by one (first sighting, or not replayable) */
    MC__REPLAY_BUILD = 1,  /* second sighting: build the graph, then launch it */
    MC__REPLAY_LAUNCH = 2  /* the entry's graph exists: update and launch it */
} mc__replay_action;

typedef struct mc__replay_entry {
    mc__replay_step *steps;
    uint32_t nsteps;
    uint32_t sightings;
    uint64_t last_seen; /* the table's clock */
    bool failed;        /* building its graph failed once: never again */
    void *graph;        /* the backend's (cuda_replay.c); NULL until built */
} mc__replay_entry;

typedef struct mc__replay_table {
    mc__replay_entry e[MC__REPLAY_ENTRIES];
    uint64_t clock;
    /* the backend frees an evicted entry's graph with this */
    void (*drop_graph)(void *ctx, void *graph);
    void *ctx;
} mc__replay_table;

/* Looks a shape up and counts the sighting. *entry: the entry now holding
 * the shape (NULL when not remembered: too short, too long, out of memory).
 * The action says what to do with it. */
mc__replay_action mc__replay_lookup(mc__replay_table *t, const mc__replay_step *steps, uint32_t n,
                                    mc__replay_entry **entry);
/* Forgets every shape that launches `pipeline` (it is being destroyed: a new
 * one may get its address). */
void mc__replay_forget(mc__replay_table *t, const void *pipeline);
/* Forgets everything (frees graphs through drop_graph). */
void mc__replay_clear(mc__replay_table *t);

#endif
