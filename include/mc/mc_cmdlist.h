/*
 * metal-compute: command lists and GPU-driven work. Included by mc/mc.h;
 * see docs/GPU_DRIVEN.md.
 *
 * A command list is a sequence of dispatches recorded once and executed in
 * any number of command buffers without being encoded again: Metal's
 * indirect command buffer (F149, F670, F673), a CUDA graph on the CUDA
 * device, a recorded list on the CPU device. It is recorded through the same
 * mc_pass calls as a compute pass:
 *
 *     mc_pass *p;
 *     mc_cmdlist_begin(list, &p);
 *     mc_pass_set_pipeline(p, scale);          // bindings, as in a pass
 *     mc_pass_set_buffer(p, 0, data, 0);
 *     mc_pass_dispatch(p, groups, threads);    // command 0
 *     mc_pass_barrier(p);                      // orders 0 before 1
 *     mc_pass_dispatch_indirect(p, args, 0, threads); // command 1
 *     mc_cmdlist_end(list);                    // frozen: ready to execute
 *
 *     mc_cmdbuf_execute_cmdlist(cb, list, 0, UINT32_MAX);   // all of it
 *     mc_cmdbuf_execute_cmdlist_indirect(cb, list, range, 0); // the GPU picks
 *
 * Commands. Each dispatch (direct or indirect) is one command; its index is
 * its position among the dispatches of the recording, from 0. A command
 * keeps the pipeline, arguments and threadgroup memory that were bound when
 * it was recorded (as each command of a Metal ICB carries its own state):
 * executing a range that starts in the middle runs every command in it with
 * its own bindings. Bindings set after a command do not change it. A
 * dispatch of zero threadgroups is recorded as a command that does nothing,
 * so indices stay where the program put them.
 *
 * Order. Only barriers order commands: a command recorded after
 * mc_pass_barrier starts after every command before it has finished and
 * sees its writes; commands with no barrier between them may run
 * concurrently (ICB commands are concurrent dispatches). Consecutive
 * executions in a command buffer are passes: each starts after the one
 * before has finished.
 *
 * Ranges. mc_cmdbuf_execute_cmdlist runs commands [first, first + count),
 * count clamped to the end of the list. mc_cmdbuf_execute_cmdlist_indirect
 * reads two uint32 {first, count} from a buffer when the execution starts on
 * the device (F149: an earlier kernel of the same command buffer may write
 * them); the range is clamped the same way, so first past the end or a
 * count of 0 runs nothing. Each execution is its own pass, labelled with
 * the list's label, for mc_cmdbuf_get_pass_info.
 *
 * Lifetimes. The list holds references to the pipelines and buffers it
 * uses until it is reset or released. A command buffer holds the list and
 * the recording it executes until it completes (also with
 * MC_CMDBUF_UNRETAINED_REFERENCES), so the list may be released after
 * commit. A command buffer recorded before a reset keeps executing the
 * recording it was given.
 *
 * Threads: a list is recorded by one thread at a time. Once ended it may be
 * executed from command buffers on any thread, also concurrently; reset and
 * release must not race with those calls.
 */
#ifndef MC_MC_CMDLIST_H
#define MC_MC_CMDLIST_H

#include "mc.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct mc_cmdlist mc_cmdlist;

/* Commands a list may hold at most: the documented limit of a Metal
 * indirect command buffer (F149), on every device so a program that fits
 * here fits on a Mac. */
#define MC_CMDLIST_MAX_COMMANDS 16384u
/* execute_cmdlist: every command from first to the end. */
#define MC_CMDLIST_ALL UINT32_MAX

typedef struct mc_cmdlist_desc {
    const char *label;     /* also the label of each execution's pass */
    uint32_t max_commands; /* 0 = MC_CMDLIST_MAX_COMMANDS; at most that */
} mc_cmdlist_desc;
#define MC_CMDLIST_DESC_INIT MC__DESC_INIT(.label = NULL, .max_commands = 0)

/* desc may be NULL (defaults). The list starts empty: begin records it. */
MC_API mc_status mc_cmdlist_create(mc_device *d, const mc_cmdlist_desc *desc, mc_cmdlist **out);
MC_API void mc_cmdlist_retain(mc_cmdlist *l);
/* Releasing NULL is a no-op. */
MC_API void mc_cmdlist_release(mc_cmdlist *l);
MC_API const char *mc_cmdlist_label(const mc_cmdlist *l);

/* Starts recording an empty list (new, or reset). *out accepts
 * mc_pass_set_pipeline, _set_buffer, _set_bytes, _set_threadgroup_memory,
 * _dispatch, _dispatch_indirect and _barrier with the same checks as a
 * compute pass (validation mode included); it is valid until the recording
 * ends. MC_ERR_INVALID_STATE while recording or when the list holds a
 * recording (reset it first). */
MC_API mc_status mc_cmdlist_begin(mc_cmdlist *l, mc_pass **out);
/* Freezes the recording; the list can then be executed. mc_pass_end on the
 * list's pass does the same. On failure (out of memory, the device could
 * not build its form of the list) the recording is dropped and the list is
 * empty again. */
MC_API mc_status mc_cmdlist_end(mc_cmdlist *l);
/* Drops the recording (or the one in progress) so the list can be recorded
 * again. MC_ERR_INVALID_STATE while a committed command buffer that executes
 * the list has not finished: the device may still read it (F673). */
MC_API mc_status mc_cmdlist_reset(mc_cmdlist *l);
/* Commands in the ended recording; 0 while empty or recording. */
MC_API uint32_t mc_cmdlist_command_count(const mc_cmdlist *l);

/* Executes commands [first, first + count) of an ended list as one pass of
 * cb (count clamped; MC_CMDLIST_ALL for the rest of the list). first past the
 * end: MC_ERR_INVALID_ARGUMENT; a list not ended: MC_ERR_INVALID_STATE. Not
 * while a pass of cb is open. */
MC_API mc_status mc_cmdbuf_execute_cmdlist(mc_cmdbuf *cb, mc_cmdlist *l, uint32_t first, uint32_t count);
/* Executes the range the device reads from two uint32 {first, count} at
 * range+offset (4-byte aligned) when the pass starts, clamped to the list.
 * MC_ERR_UNSUPPORTED when the device cannot run this list from a range it
 * reads itself (see docs/GPU_DRIVEN.md: Metal, for a list holding indirect
 * dispatches). */
MC_API mc_status mc_cmdbuf_execute_cmdlist_indirect(mc_cmdbuf *cb, mc_cmdlist *l, mc_buffer *range, size_t offset);

/* Limits on the threadgroup counts of an indirect dispatch, read on the
 * device: in validation mode a count over them fails the pass with
 * MC_ERR_VALIDATION before the dispatch runs, on every device (they are
 * CUDA's grid limits, the strictest of the devices). */
#define MC_INDIRECT_MAX_GROUPS_X 2147483647u
#define MC_INDIRECT_MAX_GROUPS_YZ 65535u

#ifdef __cplusplus
}
#endif

#endif
