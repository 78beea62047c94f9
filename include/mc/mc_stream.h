/*
 * metal-compute: streams. Included by mc/mc.h; see docs/STREAMS.md.
 *
 * A stream carries fixed-size items from the CPU through a device and back,
 * through N slots (default 3) of host-visible memory: Apple's triple
 * buffering (F705), with the slot given back only when the command buffer
 * that used it has completed, which the runtime learns from a timeline
 * event signalled at the end of that command buffer (F692), never from a
 * relaxed atomic the kernel sets (F703, F153, F154).
 *
 * The producer acquires a free slot, writes one item into its input and
 * submits it; the runtime records a command buffer with the stream's chain
 * of passes (replayed from a command list recorded once per slot, see
 * MC_STREAM_RECORD_EACH) and a signal of its timeline event, and commits
 * it. Results come
 * back in submission order, exactly once per item: to a callback on the
 * stream's own thread, or by pulling them. A slot is free again when its
 * item was delivered and, when pulled, released.
 *
 *   slot:  FREE -> acquire -> (producer fills input) -> submit -> in flight
 *          -> the device finished (the event reached) -> delivered
 *          -> callback returned, or mc_stream_release_result -> FREE
 *
 * Memory is bounded by the slots: 2 * slots buffers, whatever the rate.
 * When every slot is in use, mc_stream_acquire waits (backpressure).
 *
 * Faults. An item whose command buffer fails is resubmitted from its input,
 * which stays in its slot until the item is delivered: the queue is
 * recreated (F687); after MC_ERR_DEVICE_LOST the device is reopened (same
 * kind and index) and setup runs again, as the runner does (F681, F695).
 * Every item not yet delivered is resubmitted, in order, so no item is
 * lost or delivered twice. An item that itself fails more than max_retries
 * times is delivered with its error; so is one that fails in a way no
 * retry can mend (MC_ERR_NOT_PERMITTED, MC_ERR_INVALID_RESOURCE).
 *
 * Therefore every pass must be a pure function of the slot's input and of
 * buffers it does not write: a replay must give the same output. State that
 * carries from one item to the next (a filter's history) travels with the
 * items (examples/stream_filter does this). The output buffer is not cleared
 * between items: the passes must write all of it that the consumer reads.
 */
#ifndef MC_MC_STREAM_H
#define MC_MC_STREAM_H

#include "mc.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct mc_stream mc_stream;

#define MC_STREAM_MAX_SLOTS 64
#define MC_STREAM_MAX_PASSES 8
#define MC_STREAM_MAX_LANES 4

/* How an argument slot of a pass is bound. */
typedef enum mc_stream_arg_kind {
    MC_STREAM_ARG_NONE = 0,
    MC_STREAM_ARG_INPUT = 1,   /* the item's slot input buffer (+offset) */
    MC_STREAM_ARG_OUTPUT = 2,  /* the item's slot output buffer (+offset) */
    MC_STREAM_ARG_BUFFER = 3,  /* a buffer setup made (+offset) */
    MC_STREAM_ARG_BYTES = 4,   /* bytes by value, copied when setup returns */
    MC_STREAM_ARG_SEQUENCE = 5 /* the item's sequence number: 8 bytes, uint64 */
} mc_stream_arg_kind;

typedef struct mc_stream_arg {
    mc_stream_arg_kind kind;
    mc_buffer *buffer; /* BUFFER: on the device setup was given */
    size_t offset;     /* INPUT, OUTPUT (below item_size / result_size), BUFFER */
    const void *bytes; /* BYTES */
    size_t len;        /* BYTES: 1 .. MC_MAX_BYTES_ARG */
} mc_stream_arg;

/* One pass of the chain: one dispatch of pipeline over threadgroups. The
 * passes of an item run in order, each seeing everything the one before
 * wrote. */
typedef struct mc_stream_pass {
    mc_pipeline *pipeline;
    mc_size3 threadgroups;
    mc_size3 threads_per_threadgroup;
    mc_stream_arg args[MC_MAX_BUFFER_ARGS];                    /* indexed by argument slot */
    size_t threadgroup_memory[MC_MAX_THREADGROUP_MEMORY_ARGS]; /* bytes per threadgroup; 0 = none */
    const char *label;                                         /* names the pass; may be NULL */
} mc_stream_pass;

/* What setup fills in. The stream only borrows the handles: setup creates
 * them, teardown releases them. The binding is zeroed before setup runs. */
typedef struct mc_stream_binding {
    mc_stream_pass passes[MC_STREAM_MAX_PASSES];
    uint32_t pass_count; /* 1 .. MC_STREAM_MAX_PASSES */
    void *user_data;     /* free for setup/teardown */
} mc_stream_binding;

/* Called with a zeroed binding on dev: creates the pipelines and any
 * buffers the passes use. Returns MC_OK, or an error after releasing what
 * it made. Runs in mc_stream_create and, after a device was lost, on the
 * stream's thread for the reopened device (never two at once). */
typedef mc_status (*mc_stream_setup_fn)(void *user, mc_device *dev, mc_stream_binding *bind);
/* Releases what setup made (the device may be lost: release only). Runs
 * before the stream lets go of a device, and in mc_stream_release. */
typedef void (*mc_stream_teardown_fn)(void *user, mc_stream_binding *bind);

typedef struct mc_stream_result {
    uint64_t sequence;   /* 1, 2, 3, ... in submission order over the stream's life */
    uint64_t tag;        /* what mc_stream_submit was given */
    mc_status status;    /* MC_OK; the item's error (after retries); MC_ERR_CANCELLED */
    const char *message; /* "" on success, else the detail */
    const void *output;  /* the slot's output: result_size bytes (NULL when result_size is 0) */
    size_t output_size;
    const void *input; /* the item as submitted (item_size bytes) */
    uint32_t attempts; /* command buffers committed for it: 1 without faults, 0 if none */
    uint32_t slot;
} mc_stream_result;

/* Runs on the stream's thread, once per item, in submission order. The
 * pointers in r are valid until it returns; the slot is free after that.
 * It may call mc_stream_acquire with timeout 0 and mc_stream_submit, but
 * must not wait for a slot (only its return frees one) nor close or
 * release the stream. */
typedef void (*mc_stream_result_fn)(void *user, const mc_stream_result *r);

/* mc_stream_desc.flags */
/* After MC_ERR_DEVICE_LOST do not reopen the device: the stream dies at
 * once with MC_ERR_DEVICE_LOST (every item not finished is delivered with
 * it). For a process that is replaced instead: the isolation layer sets it
 * in its worker, whose supervisor then resubmits those items to a new one. */
#define MC_STREAM_NO_REOPEN 0x1u
/* Record every item's passes into its command buffer anew. By default the
 * chain is recorded once per slot as a command list (mc/mc_cmdlist.h: a
 * CUDA graph, a Metal indirect command buffer, a CPU list) and each item
 * replays its slot's list: one launch instead of one per pass, and none of
 * the binding work. Chains that bind MC_STREAM_ARG_SEQUENCE (a value that
 * changes per item) are always recorded anew. For comparison and debugging:
 * with lists an item's command buffer has one pass (the list) instead of
 * one per pass of the chain, as mc_cmdbuf_get_pass_info reports it. */
#define MC_STREAM_RECORD_EACH 0x2u

struct mc_isolate_desc; /* mc/mc_isolate.h */

typedef struct mc_stream_desc {
    mc_device *device;              /* required; the stream keeps its own reference (replaced after a loss) */
    mc_stream_setup_fn setup;       /* required */
    mc_stream_teardown_fn teardown; /* required */
    void *user;                     /* passed to setup and teardown */
    size_t item_size;               /* bytes of each slot's input; > 0 */
    size_t result_size;             /* bytes of each slot's output; 0 = no output buffer */
    uint32_t slots;                 /* 0 = 3; 1 .. MC_STREAM_MAX_SLOTS */
    mc_stream_result_fn on_result;  /* NULL: results are pulled with mc_stream_pull */
    void *result_user;              /* passed to on_result */
    uint32_t max_retries;           /* resubmissions of an item that fails itself; 0 = 3 */
    const char *label;              /* names the command buffers ("LABEL item N") */
    uint32_t flags;                 /* MC_STREAM_* */
    /* Not NULL: an isolated stream (mc/mc_isolate.h, docs/ISOLATION.md).
     * The device side runs in a worker process the library starts and
     * supervises; device must then be NULL (the worker opens
     * isolate->device). Slots live in memory shared with the worker; setup
     * and teardown run in the worker, on_result in the caller's process on
     * the stream's thread. */
    const struct mc_isolate_desc *isolate;
    /* Queues the items are spread over, round robin in sequence order: 1
     * (every item after the one before, in one queue) .. MC_STREAM_MAX_LANES,
     * at most slots; 0 = the device's default: one lane per slot (at most
     * MC_STREAM_MAX_LANES) on a CUDA GPU, where that was measured faster,
     * else 1. Items of different lanes may run
     * at the same time on the device (items are independent: the replay
     * rule above), so small items can overlap their latencies; results
     * still come back in submission order. */
    uint32_t lanes;
} mc_stream_desc;
#define MC_STREAM_DESC_INIT MC__DESC_INIT(.device = NULL, .slots = 0, .max_retries = 0, .lanes = 0)

/* What a producer fills. */
typedef struct mc_stream_slot {
    uint32_t index; /* give it to mc_stream_submit or mc_stream_discard */
    void *input;    /* item_size bytes, host-visible; valid until submit or discard */
    size_t size;    /* item_size */
} mc_stream_slot;

typedef struct mc_stream_stats {
    uint64_t submitted;  /* items accepted by mc_stream_submit */
    uint64_t delivered;  /* items handed over (callback ran, or ready to pull) */
    uint64_t failed;     /* delivered with a device or recording error */
    uint64_t cancelled;  /* delivered with MC_ERR_CANCELLED */
    uint64_t commits;    /* command buffers committed, replays included */
    uint64_t replays;    /* of them, resubmissions after a failure */
    uint32_t recoveries; /* failures recovered from (queue or device recreated) */
    uint32_t device_reopens;
    uint32_t slots;
    uint32_t slots_in_use;    /* not free now */
    uint32_t max_in_flight;   /* most items committed and unfinished at once */
    mc_status last_failure;   /* MC_OK if none */
    uint32_t worker_restarts; /* isolated streams: worker processes restarted (mc_stream_get_isolate_stats) */
    uint64_t list_commits;    /* of commits, those that replayed the slot's recorded command list */
} mc_stream_stats;

/* Validates desc, calls setup, makes the queue, the timeline event and the
 * slots' buffers (shared storage), and starts the stream's thread. Errors:
 * MC_ERR_INVALID_ARGUMENT (the field named), setup's error, device errors.
 * With desc->isolate (device NULL) the slots are shared memory, and it
 * starts the launcher and the first worker process, which opens the device
 * and runs setup (so the same errors come back), then the stream's thread;
 * MC_ERR_INVALID_STATE when a device that is not fork-safe was used in
 * this process first (mc/mc_isolate.h). */
MC_API mc_status mc_stream_create(const mc_stream_desc *desc, mc_stream **out);

/* A free slot to fill. timeout_ns 0 returns at once, MC_WAIT_FOREVER waits
 * for ever. MC_ERR_WAIT_TIMEOUT when every slot stayed busy;
 * MC_ERR_INVALID_STATE once the stream is closed; the device's error when
 * the stream could not recover from a failure. Thread-safe. */
MC_API mc_status mc_stream_acquire(mc_stream *s, uint64_t timeout_ns, mc_stream_slot *out);

/* Submits the item in an acquired slot; its result comes back tagged with
 * tag. The sequence number is taken here: submissions from several threads
 * are ordered as their calls are. Never waits for the device. MC_OK means
 * the result will be delivered exactly once, whatever happens to the
 * device. The slot leaves the caller's hands unless the call fails with
 * MC_ERR_INVALID_ARGUMENT (not a slot the caller acquired); when the
 * stream is closed (MC_ERR_INVALID_STATE) or dead, the slot is freed.
 * Thread-safe. */
MC_API mc_status mc_stream_submit(mc_stream *s, uint32_t slot, uint64_t tag);

/* Gives an acquired slot back unused. Thread-safe. */
MC_API mc_status mc_stream_discard(mc_stream *s, uint32_t slot);

/* Pull mode (on_result NULL): the next result in submission order. Waits up
 * to timeout_ns (0: at once). The output stays valid, and the slot in use,
 * until mc_stream_release_result. MC_ERR_WAIT_TIMEOUT when nothing came in
 * time; MC_ERR_INVALID_STATE in callback mode, and once the stream is
 * closed and every result was pulled (the end of the stream). Thread-safe:
 * several consumers get the results in order, one each. */
MC_API mc_status mc_stream_pull(mc_stream *s, uint64_t timeout_ns, mc_stream_result *out);
/* The consumer is done with a pulled result: its slot is free. */
MC_API mc_status mc_stream_release_result(mc_stream *s, const mc_stream_result *r);

/* No more submissions (they fail with MC_ERR_INVALID_STATE; producers
 * waiting in acquire wake with it). drain = true: waits until every item
 * submitted was delivered (recovering from faults as usual). drain = false
 * (cancel): items not yet committed never are; items the device has are
 * waited for until it is done with them (their slots are never reused
 * earlier; an isolated stream ends its worker at once). Every item handed
 * over after the cancel is delivered with MC_ERR_CANCELLED, whether it ran
 * or not, unless it failed with an error of its own; results handed over
 * before it (the callback running, results waiting to be pulled or held)
 * keep their status. The same for local and isolated streams.
 * Returns when every item is delivered (in pull mode: ready to pull). A
 * second call waits the same way (cancel may follow drain). Not from the
 * result callback: MC_ERR_INVALID_STATE. */
MC_API mc_status mc_stream_close(mc_stream *s, bool drain);

/* Thread-safe, any time. */
MC_API mc_status mc_stream_get_stats(const mc_stream *s, mc_stream_stats *out);
/* The device the stream uses now (borrowed: a loss replaces it). NULL for
 * an isolated stream: its device is in its worker process. */
MC_API mc_device *mc_stream_device(const mc_stream *s);

/* Closes with cancel if not closed, stops the stream's thread, calls
 * teardown and releases everything; results still held from pull become
 * invalid. Not while other calls on the stream run, nor from the result
 * callback. NULL is a no-op. A stream is not reference counted (mc/mc.h):
 * this destroys it; there is no retain. */
MC_API void mc_stream_release(mc_stream *s);

#ifdef __cplusplus
}
#endif

#endif
