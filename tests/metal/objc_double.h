/*
 * A test double of the Objective-C runtime and of the parts of Foundation
 * and Metal the Metal device uses, for Linux CI (never built on macOS).
 *
 * It defines objc_msgSend / objc_msgSend_stret, sel_registerName,
 * objc_getClass, MTLCreateSystemDefaultDevice, MTLCopyAllDevices, the
 * MTLCommandBuffer error constants and _NSConcreteStackBlock, so the
 * backend's real code runs against it unchanged. Every message is checked
 * and recorded:
 *  - the selector is in metal_selectors.txt (Apple's documentation, one
 *    source per entry) and the receiver's class implements it;
 *  - the prototype the caller cast objc_msgSend to equals the documented
 *    one (so the argument count equals the selector's colons), and methods
 *    returning MTLSize come through objc_msgSend_stret;
 *  - the Objective-C type encoding the caller's prototype has equals Apple's
 *    (metal_encodings.txt, written from Apple's headers);
 *  - Metal's validation rules the backend can break: no zero grid under
 *    API validation, ICB threadgroup-memory bind counts, setBarrier before
 *    the dispatch it guards, the MSL versions each macOS accepts, methods
 *    each modelled macOS (11, 12, 14, 15) or the paravirtual GPU lacks, and
 *    an autorelease pool around every message that may autorelease;
 *  - lifetimes: alloc/new/copy/Create/Copy results are owned, everything
 *    else is autoreleased or owned by its parent; releasing a dead object,
 *    messaging one, leaking one, autoreleasing with no pool, draining pools
 *    out of order are violations;
 *  - command buffers: one encoder at a time, every encoder ended before
 *    commit, no encoding after endEncoding or commit, one commit each;
 *  - Metal usage rules the backend relies on: explicit language version and
 *    math mode, occupancy hints on pipeline descriptors, 4-byte aligned blit
 *    copies and fills, setBytes <= 4 KiB, buffers resident through a
 *    committed residency set on systems that have them.
 *
 * Command buffers execute on one thread per queue: blit copies and fills
 * on the buffers' real memory, dispatches through C versions of the
 * example kernels, events, completion handlers (hand-built blocks), and
 * injected GPU errors with per-encoder states.
 */
#ifndef MC_TESTS_METAL_OBJC_DOUBLE_H
#define MC_TESTS_METAL_OBJC_DOUBLE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* What the simulated OS has. */
typedef struct mcd_os {
    bool residency_sets; /* macOS 15: MTLResidencySet */
    bool wait_timeout;   /* macOS 12: waitUntilSignaledValue:timeoutMS: */
    bool math_mode;      /* macOS 15: MTLCompileOptions.mathMode */
    bool architecture;   /* macOS 14: MTLDevice.architecture */
    bool second_gpu;     /* MTLCopyAllDevices also lists another GPU (an eGPU) */
    const char *version; /* NSProcessInfo.operatingSystemVersionString */
    int major;           /* macOS major version: which methods and MSL versions exist (11, 12, 14, 15) */
    int gpu_family;      /* highest MTLGPUFamilyApple<N> as 100N (0: Apple8, an M2) */
    bool paravirtual;    /* hosted runners' GPU: no ICBs, no binary archives, no GPU family */
} mcd_os;

typedef struct mcd_stats {
    unsigned long messages;
    unsigned long stret_messages;
    unsigned compiles;
    unsigned long last_language; /* MTLLanguageVersion of the last compile */
    int last_math;               /* 0 safe, 1 fast (explicit either way) */
    char last_macros[128];       /* "NAME=VALUE;..." of the last compile */
    unsigned queues_made, queues_dead;
    unsigned pipelines_made;
    unsigned archive_hits; /* pipelines found in a binary archive set on the descriptor */
    unsigned residency_commits;
    unsigned cmdbufs_committed, cmdbufs_unretained;
    unsigned notifications; /* listener blocks invoked */
    unsigned timed_waits;   /* waitUntilSignaledValue:timeoutMS: calls */
    unsigned encoders_labelled;
    unsigned long icb_commands_run; /* ICB commands executed */
    unsigned pipeline_touches;      /* empty dispatches that only use a pipeline before an ICB */
    unsigned distinct_selectors;
} mcd_stats;

/* True where objc_msgSend can be stood in for (x86_64 System V). */
bool mcd_abi_supported(void);

/* Starts a scenario on a fresh simulated system. */
void mcd_begin(const mcd_os *os);
/* Waits for the simulated GPU to go idle, drops the system's own
 * references, checks the ledger; returns the number of violations of the
 * whole scenario (printed as they happen). */
int mcd_end(void);

int mcd_violation_count(void);
/* The most recent violation's text ("" if none). */
const char *mcd_last_violation(void);
void mcd_clear_violations(void);

/* The nth command buffer committed from now (1 = the next) fails with
 * MTLCommandBufferError code, at encoder enc (earlier ones complete, later
 * ones stay pending). */
void mcd_fail_commit(int nth, long code, int enc);
/* Holds (or releases) execution on every queue. */
void mcd_pause_gpu(bool paused);

const mcd_stats *mcd_get_stats(void);

/* What MC__MTL_NOTE tells the double before each message (the backend's
 * mc__mtl_contract_note, weak here, forwards to it). */
struct objc_selector;
void mcd_contract_note(struct objc_selector *sel, const char *ret, const char *proto, const char *const *enc, int n);
/* Per-selector message counts, to stderr. */
void mcd_print_selector_counts(void);

#endif
