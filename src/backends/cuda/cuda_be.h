/*
 * DOC: The CUDA device, private header
 *
 * The whole backend interface on the CUDA driver API. libcuda and NVRTC are
 * loaded with dlopen at run time and every entry point is resolved by its
 * exported (versioned) name, so the library builds and runs where CUDA is
 * absent: the device is then simply not listed. cuda.h and nvrtc.h are
 * included for their types only; nothing here links against them.
 *
 * Files:
 *   cuda_api.c      loading libcuda and NVRTC, CUresult -> mc_status
 *   cuda_device.c   devices, buffers, events and the HAL table
 *   cuda_library.c  NVRTC compilation, modules, pipelines, the archive
 *   cuda_queue.c    queues, completion and its thread, errors after submit
 *   cuda_submit.c   submission: command buffers encoded onto the stream
 *   cuda_indirect.c indirect dispatch (GPU-read counts) and its PTX
 *   cuda_timing.c   the queue's CUDA events, GPU times of command buffers
 *   cuda_clock.c    event times on the host clock (no CUDA: cuda_clock.h)
 *   cuda_list.c     command lists as CUDA graphs
 *   cuda_replay.c   repeated command buffers replayed as CUDA graphs
 *
 * How the Metal model maps (DESIGN.md, "The HAL, Metal-shaped"):
 *  - device: the primary context of a CUdevice, pushed around every call
 *    that needs it (the caller's own current context is left alone; a
 *    thread with none keeps the primary context current);
 *  - buffers: private storage is cuMemAlloc memory; shared storage is pinned
 *    host memory mapped into the device (cuMemHostAlloc DEVICEMAP);
 *  - kernels: CUDA C declared extern "C" __global__, compiled by NVRTC for the
 *    device's exact architecture; argument slot i is kernel parameter i;
 *    all threadgroup memory slots share one extern __shared__ array (slot i
 *    starts at the sum of the earlier slots' lengths, each rounded up to 16);
 *  - queue: a non-blocking stream; the passes of a command buffer run in
 *    stream order (a barrier is free);
 *  - completion: after a command buffer's work the stream writes the queue's
 *    64-bit marker into mapped host memory (cuStreamWriteValue64); a waiter
 *    polls it on its own thread, a per-device completion thread polls it for
 *    everyone else (spin, then sleep with backoff, idle when nothing is in
 *    flight), and both complete submissions in queue order. A command
 *    buffer that ends by signalling an event (a stream's items do) writes
 *    the signal and the marker in one cuStreamBatchMemOp: one host call and
 *    one GPU operation instead of two;
 *  - timeline events: a 64-bit counter in mapped host memory, signalled and
 *    waited on by the GPU with stream memory operations (a one-thread kernel
 *    where the device lacks 64-bit stream memory operations);
 *  - indirect dispatch: a two-node CUDA graph per (pipeline, block, shared
 *    memory) whose first node, a trampoline kernel, reads the three counts on
 *    the GPU and sets the second node's grid with the device-side graph
 *    update API (CUDA 12.4); see cuda_indirect.c for the fallback;
 *  - command lists: a CUDA graph per range executed, built from the
 *    recording once and launched with cuGraphLaunch; a range the device
 *    chooses is a graph whose first node enables the chosen commands with
 *    the same device-side update API (cuda_list.c);
 *  - errors: sticky CUDA errors (illegal address, launch failure, ...) leave
 *    the context unusable for the rest of the process, so they are
 *    MC_ERR_DEVICE_LOST for good; out of memory and resource errors are not.
 *
 * Environment (read at device open or first use):
 *   MC_CUDA_PASS_MARKERS=1  a marker after every pass, so a fault names the
 *                           pass that failed (costs one stream memory
 *                           operation per pass; off by default)
 *   MC_CUDA_SPIN_US=n       how long waiters spin before sleeping (100)
 *   MC_CUDA_YIELD_US=n      how long a thread waiting for a command buffer
 *                           keeps yielding the core before it sleeps (20000)
 *   MC_CUDA_REPLAY=0        launch every command buffer one kernel at a
 *                           time (by default a repeated one is replayed as
 *                           a CUDA graph, cuda_replay.c)
 *   MC_CUDA_DEFER=1         the completion thread does not poll a queue
 *                           that a thread is waiting on (for comparison)
 *   MC_CUDA_DONE=event      a command buffer's completion is an event the
 *                           pollers query (cuEventQuery) instead of a
 *                           marker the GPU writes (MC_CUDA_DONE=marker)
 *   MC_CUDA_BATCH_MEMOPS=0  write a closing signal and the completion
 *                           marker separately (for comparison)
 *   MC_CUDA_INDIRECT=sync   force the CPU fallback for indirect dispatch
 *   MC_CUDA_WATCHDOG_MS=n   the execution-time limit reported when a
 *                           display watchdog is in force (2000)
 *   MC_NVRTC_LIBRARY=path   the NVRTC library to load
 *
 * Locking, outer to inner: dev->mu -> q->submit_mu -> dev->init_mu and
 * q->submit_mu -> q->mu; dev->lost_mu is a leaf. dev->mu is never taken
 * while a queue lock is held. Completion callbacks run with no lock held.
 */
#ifndef MC_BACKENDS_CUDA_CUDA_BE_H
#define MC_BACKENDS_CUDA_CUDA_BE_H

#include "backends/cuda/cuda_replay.h"
#include "backends/hal.h"
#include "core/core.h"

#include <cuda.h>
#include <nvrtc.h>
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>

/* Types only, but those of CUDA 12 (the _v2 kernel node parameters, the
 * stream memory operation attributes); the driver may be any 12.x or later. */
#if CUDA_VERSION < 12000
#error "the CUDA device needs cuda.h from CUDA 12.0 or later"
#endif

/* Argument slots a pass can bind (engine limit MC_MAX_BUFFER_ARGS is 31). */
#define MC__CUDA_MAX_SLOTS 32u
/* Bytes of kernel parameters CUDA accepts at most (12.1 and later). */
#define MC__CUDA_MAX_PARAM_BYTES 32764u
/* Threadgroup memory slots (MC_MAX_THREADGROUP_MEMORY_ARGS). */
#define MC__CUDA_MAX_TG 8u
/* Dynamic shared memory a kernel may use without opting in. */
#define MC__CUDA_DEFAULT_SMEM (48u * 1024u)

/* ---- the driver and NVRTC entry points --------------------------------- */

/* Names are ours (cuda.h maps many cu* names to _v2 with macros); the
 * comment after each is the exported symbol it is resolved from. */
typedef struct mc__cuda_api {
    CUresult (*Init)(unsigned int);                                      /* cuInit */
    CUresult (*DriverGetVersion)(int *);                                 /* cuDriverGetVersion */
    CUresult (*GetErrorName)(CUresult, const char **);                   /* cuGetErrorName */
    CUresult (*GetErrorString)(CUresult, const char **);                 /* cuGetErrorString */
    CUresult (*DeviceGetCount)(int *);                                   /* cuDeviceGetCount */
    CUresult (*DeviceGet)(CUdevice *, int);                              /* cuDeviceGet */
    CUresult (*DeviceGetName)(char *, int, CUdevice);                    /* cuDeviceGetName */
    CUresult (*DeviceGetAttribute)(int *, CUdevice_attribute, CUdevice); /* cuDeviceGetAttribute */
    CUresult (*DeviceTotalMem)(size_t *, CUdevice);                      /* cuDeviceTotalMem_v2 */
    CUresult (*DevicePrimaryCtxRetain)(CUcontext *, CUdevice);           /* cuDevicePrimaryCtxRetain */
    CUresult (*DevicePrimaryCtxRelease)(CUdevice);                       /* cuDevicePrimaryCtxRelease_v2 */
    CUresult (*CtxPushCurrent)(CUcontext);                               /* cuCtxPushCurrent_v2 */
    CUresult (*CtxPopCurrent)(CUcontext *);                              /* cuCtxPopCurrent_v2 */
    CUresult (*CtxSetCurrent)(CUcontext);                                /* cuCtxSetCurrent */
    CUresult (*CtxGetCurrent)(CUcontext *);                              /* cuCtxGetCurrent */
    CUresult (*MemAlloc)(CUdeviceptr *, size_t);                         /* cuMemAlloc_v2 */
    CUresult (*MemFree)(CUdeviceptr);                                    /* cuMemFree_v2 */
    CUresult (*MemHostAlloc)(void **, size_t, unsigned int);             /* cuMemHostAlloc */
    CUresult (*MemFreeHost)(void *);                                     /* cuMemFreeHost */
    /* cuMemHostGetDevicePointer_v2 */
    CUresult (*MemHostGetDevicePointer)(CUdeviceptr *, void *, unsigned int);
    CUresult (*MemHostRegister)(void *, size_t, unsigned int);                /* cuMemHostRegister_v2 (optional) */
    CUresult (*MemHostUnregister)(void *);                                    /* cuMemHostUnregister (optional) */
    CUresult (*MemcpyHtoDAsync)(CUdeviceptr, const void *, size_t, CUstream); /* cuMemcpyHtoDAsync_v2 */
    CUresult (*MemcpyDtoHAsync)(void *, CUdeviceptr, size_t, CUstream);       /* cuMemcpyDtoHAsync_v2 */
    CUresult (*MemcpyAsync)(CUdeviceptr, CUdeviceptr, size_t, CUstream);      /* cuMemcpyAsync */
    CUresult (*MemsetD8Async)(CUdeviceptr, unsigned char, size_t, CUstream);  /* cuMemsetD8Async */
    CUresult (*StreamCreate)(CUstream *, unsigned int);                       /* cuStreamCreate */
    CUresult (*StreamDestroy)(CUstream);                                      /* cuStreamDestroy_v2 */
    CUresult (*StreamQuery)(CUstream);                                        /* cuStreamQuery */
    CUresult (*StreamSynchronize)(CUstream);                                  /* cuStreamSynchronize */
    CUresult (*StreamWriteValue64)(CUstream, CUdeviceptr, cuuint64_t, unsigned int);   /* cuStreamWriteValue64_v2 */
    CUresult (*StreamWaitValue64)(CUstream, CUdeviceptr, cuuint64_t, unsigned int);    /* cuStreamWaitValue64_v2 */
    CUresult (*StreamWriteValue64V1)(CUstream, CUdeviceptr, cuuint64_t, unsigned int); /* cuStreamWriteValue64 */
    CUresult (*StreamWaitValue64V1)(CUstream, CUdeviceptr, cuuint64_t, unsigned int);  /* cuStreamWaitValue64 */
    CUresult (*StreamBatchMemOp)(CUstream, unsigned int, CUstreamBatchMemOpParams *,
                                 unsigned int);              /* cuStreamBatchMemOp_v2 */
    CUresult (*EventCreate)(CUevent *, unsigned int);        /* cuEventCreate */
    CUresult (*EventDestroy)(CUevent);                       /* cuEventDestroy_v2 */
    CUresult (*EventRecord)(CUevent, CUstream);              /* cuEventRecord */
    CUresult (*EventQuery)(CUevent);                         /* cuEventQuery */
    CUresult (*EventElapsedTime)(float *, CUevent, CUevent); /* cuEventElapsedTime_v2 | cuEventElapsedTime */
    CUresult (*ModuleLoadData)(CUmodule *, const void *);    /* cuModuleLoadData */
    CUresult (*ModuleUnload)(CUmodule);                      /* cuModuleUnload */
    CUresult (*ModuleGetFunction)(CUfunction *, CUmodule, const char *);          /* cuModuleGetFunction */
    CUresult (*ModuleGetGlobal)(CUdeviceptr *, size_t *, CUmodule, const char *); /* cuModuleGetGlobal_v2 (optional) */
    CUresult (*FuncGetAttribute)(int *, CUfunction_attribute, CUfunction);        /* cuFuncGetAttribute */
    CUresult (*FuncSetAttribute)(CUfunction, CUfunction_attribute, int);          /* cuFuncSetAttribute */
    CUresult (*FuncGetParamInfo)(CUfunction, size_t, size_t *, size_t *); /* cuFuncGetParamInfo (12.4, optional) */
    CUresult (*LaunchKernel)(CUfunction, unsigned int, unsigned int, unsigned int, unsigned int, unsigned int,
                             unsigned int, unsigned int, CUstream, void **, void **); /* cuLaunchKernel */
    /* Graphs, for indirect dispatch (optional). */
    CUresult (*GraphCreate)(CUgraph *, unsigned int); /* cuGraphCreate */
    CUresult (*GraphDestroy)(CUgraph);                /* cuGraphDestroy */
    CUresult (*GraphAddKernelNode)(CUgraphNode *, CUgraph, const CUgraphNode *, size_t,
                                   const CUDA_KERNEL_NODE_PARAMS_v2 *); /* cuGraphAddKernelNode_v2 */
    CUresult (*GraphKernelNodeSetAttribute)(CUgraphNode, CUkernelNodeAttrID,
                                            const CUkernelNodeAttrValue *); /* cuGraphKernelNodeSetAttribute */
    CUresult (*GraphKernelNodeGetAttribute)(CUgraphNode, CUkernelNodeAttrID,
                                            CUkernelNodeAttrValue *); /* cuGraphKernelNodeGetAttribute */
    CUresult (*GraphInstantiateWithFlags)(CUgraphExec *, CUgraph, unsigned long long); /* cuGraphInstantiateWithFlags */
    CUresult (*GraphExecDestroy)(CUgraphExec);                                         /* cuGraphExecDestroy */
    /* cuGraphExecKernelNodeSetParams_v2 */
    CUresult (*GraphExecKernelNodeSetParams)(CUgraphExec, CUgraphNode, const CUDA_KERNEL_NODE_PARAMS_v2 *);
    /* cuGraphKernelNodeSetParams_v2 */
    CUresult (*GraphKernelNodeSetParams)(CUgraphNode, const CUDA_KERNEL_NODE_PARAMS_v2 *);
    CUresult (*GraphUpload)(CUgraphExec, CUstream); /* cuGraphUpload */
    CUresult (*GraphLaunch)(CUgraphExec, CUstream); /* cuGraphLaunch */
} mc__cuda_api;

typedef struct mc__nvrtc_api {
    nvrtcResult (*Version)(int *, int *);
    nvrtcResult (*GetNumSupportedArchs)(int *); /* optional */
    nvrtcResult (*GetSupportedArchs)(int *);    /* optional */
    nvrtcResult (*CreateProgram)(nvrtcProgram *, const char *, const char *, int, const char *const *,
                                 const char *const *);
    nvrtcResult (*DestroyProgram)(nvrtcProgram *);
    nvrtcResult (*CompileProgram)(nvrtcProgram, int, const char *const *);
    nvrtcResult (*GetProgramLogSize)(nvrtcProgram, size_t *);
    nvrtcResult (*GetProgramLog)(nvrtcProgram, char *);
    nvrtcResult (*GetCUBINSize)(nvrtcProgram, size_t *); /* optional (11.1) */
    nvrtcResult (*GetCUBIN)(nvrtcProgram, char *);       /* optional (11.1) */
    nvrtcResult (*GetPTXSize)(nvrtcProgram, size_t *);
    nvrtcResult (*GetPTX)(nvrtcProgram, char *);
    const char *(*GetErrorString)(nvrtcResult);
    int major, minor;
} mc__nvrtc_api;

/* Loaded once per process; NULL (and why in *why, if not NULL) when the
 * driver is missing or cuInit failed. Never unloaded: libcuda does not
 * support being unloaded while the process runs. */
const mc__cuda_api *mc__cuda_driver(const char **why);
/* NVRTC, loaded on first use; NULL (and why) when it cannot be found. */
const mc__nvrtc_api *mc__cuda_nvrtc(const char **why);
/* The NVRTC library file the loader will open, found without loading it
 * (the real path), or NULL when the search finds none: the cache keys CUDA C
 * by this file's identity, so a disk hit never loads NVRTC. */
const char *mc__cuda_nvrtc_file(void);
/* The search behind it, into out (not cached; false when nothing is found). */
bool mc__cuda_nvrtc_find(char *out, size_t cap);
/* "file REALPATH size N mtime S.NS": a file's identity for a cache key. */
mc_status mc__cuda_file_identity(const char *path, char *out, size_t cap);

/* ---- objects ------------------------------------------------------------ */

typedef struct mc__cuda_device mc__cuda_device;
typedef struct mc__cuda_queue mc__cuda_queue;
typedef struct mc__cuda_rec mc__cuda_rec;
typedef struct mc__cuda_slot mc__cuda_slot;
typedef struct mc__cuda_list mc__cuda_list;
typedef struct mc__cuda_replay mc__cuda_replay;

/* dev->lost */
enum { MC__CUDA_ALIVE = 0, MC__CUDA_LOST_INJECTED = 1, MC__CUDA_LOST_DEAD = 2 };
/* dev->indirect */
enum { MC__CUDA_IND_UNKNOWN = 0, MC__CUDA_IND_GRAPH = 1, MC__CUDA_IND_SYNC = 2 };

struct mc__cuda_device {
    const mc__cuda_api *cu;
    int index;
    CUdevice cudev;
    CUcontext ctx;
    int cc_major, cc_minor;
    int driver_version;
    char arch[16]; /* "sm_90" */
    mc_device_info info;
    int smem_optin; /* dynamic + static shared memory a block may use */
    CUstream xfer;  /* buffer_write/read and zero fills */

    /* stream memory operations: NULL when the device lacks 64-bit ones */
    CUresult (*write64)(CUstream, CUdeviceptr, cuuint64_t, unsigned int);
    CUresult (*wait64)(CUstream, CUdeviceptr, cuuint64_t, unsigned int);
    /* several of them in one call (the _v2 memory operations only): a
     * submission's closing event signal and completion marker go together,
     * which costs the host one call and the GPU one operation less */
    CUresult (*batch64)(CUstream, unsigned int, CUstreamBatchMemOpParams *, unsigned int);
    CUmodule builtin; /* PTX kernels: event signal/wait without memory operations */
    CUfunction k_signal, k_wait;
    struct mc__cuda_pipeline *poke; /* the built-in mc_poke as a pipeline (for graph replay too); NULL: none */

    /* indirect dispatch, set up on first use under init_mu */
    pthread_mutex_t init_mu;
    _Atomic int indirect;
    CUmodule tramp_mod;
    CUfunction k_tramp;
    CUmodule list_mod; /* command lists (cuda_list.c), loaded with the trampoline */
    CUfunction k_list_head, k_list_ind;

    /* settings from the environment */
    bool pass_markers;
    uint64_t yield_ns;     /* MC_CUDA_YIELD_US: how long a waiter yields before sleeping */
    bool replay;           /* MC_CUDA_REPLAY (on): repeated command buffers as graphs */
    bool done_events;      /* MC_CUDA_DONE=event: completion by event, not marker */
    bool defer_to_waiters; /* MC_CUDA_DEFER=1: the completion thread leaves a waited queue to its waiter */
    uint64_t spin_ns;

    /* queues and the completion thread */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    mc__cuda_queue *queues; /* under mu */
    mc__cuda_queue **poll;  /* completion thread's scratch, under mu */
    size_t poll_cap;
    atomic_bool stop;            /* written under mu */
    _Atomic uint64_t queues_gen; /* bumped when a queue comes or goes */
    bool thread_started;
    pthread_t thread;
    _Atomic uint64_t inflight; /* records not yet completed, every queue */

    /* device loss */
    _Atomic uint64_t ordinal; /* submissions so far, device-wide */
    pthread_mutex_t lost_mu;
    _Atomic int lost;              /* MC__CUDA_* */
    _Atomic uint64_t lost_ordinal; /* submissions after this one are lost even if they ran */
    char lost_msg[200];            /* written once, before lost is set */
};

typedef struct mc__cuda_buffer {
    CUdeviceptr dptr;
    void *host; /* shared storage: the pinned host mapping */
    size_t size;
    mc_storage storage;
    bool registered; /* host is the caller's memory, pinned by cuMemHostRegister (buffer_wrap) */
} mc__cuda_buffer;

typedef struct mc__cuda_event {
    uint64_t *host; /* the counter, pinned and mapped */
    CUdeviceptr dptr;
} mc__cuda_event;

/* A CPU signal: values only move forward, so a racing larger one wins. (A
 * GPU write is a plain store; the engine orders those.) */
static inline void mc__cuda_event_raise(mc__cuda_event *e, uint64_t value)
{
    uint64_t cur = __atomic_load_n(e->host, __ATOMIC_ACQUIRE);
    while (cur < value &&
           !__atomic_compare_exchange_n(e->host, &cur, value, false, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
    }
}

typedef struct mc__cuda_library {
    atomic_uint refs; /* the library and each pipeline made from it */
    mc__cuda_device *dev;
    CUmodule mod;
    void *image; /* cubin (or PTX, NUL-terminated) for pipeline_export */
    size_t image_len;
    char *source; /* kept to rebuild for an occupancy hint; NULL if imported */
    size_t source_len;
    char *options;
} mc__cuda_library;

typedef struct mc__cuda_pipeline {
    mc__cuda_library *lib;
    CUfunction fn;
    char *name;
    uint32_t max_threads; /* what dispatches may use (hint applied) */
    uint32_t static_smem;
    int32_t nparams;      /* -1: unknown (no cuFuncGetParamInfo) */
    uint32_t *param_size; /* nparams entries, or NULL */
    _Atomic int dyn_smem; /* dynamic shared memory the function is opted in to */
    /* An MSL kernel's slots (its module's mc_slots_NAME, mc::cuda_param in
     * src/msl/mc_msl_cpu.h): MC__CUDA_SLOT_PTR or MC__CUDA_SLOT_REF with
     * the value's offset above bit 8; 0 (CUDA C): slot i is parameter i as
     * bound. */
    uint32_t slot[MC__CUDA_MAX_SLOTS];
} mc__cuda_pipeline;

#define MC__CUDA_SLOT_PTR 1u /* a pointer: bytes bound to it are copied to device memory first */
#define MC__CUDA_SLOT_REF 2u /* {pointer, value}: a buffer's address, or null and the bytes */
/* Bytes bound to a pointer slot go through the queue's poke area, one
 * region per slot, written by the built-in mc_poke kernel on the stream
 * (so a later write never overtakes an earlier reader). */
#define MC__CUDA_POKE_SLOT 4096u
#define MC__CUDA_POKE_CHUNK 4064u /* bytes one mc_poke launch carries in its parameters */

/* The bytes of parameter i of pl when slot i is bound to a buffer (ptr)
 * or to bytes (src, len), placed into dst (need bytes, zeroed first): for
 * an MSL reference the pointer first, or the bytes at the value's offset;
 * otherwise the value as bound. Bytes beyond the parameter are not read,
 * as a kernel reads no further. */
static inline void mc__cuda_place_arg(const mc__cuda_pipeline *pl, uint32_t i, const CUdeviceptr *ptr, const void *src,
                                      size_t len, uint8_t *dst, size_t need)
{
    uint32_t kind = i < MC__CUDA_MAX_SLOTS ? pl->slot[i] & 0xffu : 0;
    size_t at = kind == MC__CUDA_SLOT_REF && !ptr ? pl->slot[i] >> 8 : 0;
    if (ptr) {
        src = ptr;
        len = sizeof *ptr;
    }
    memset(dst, 0, need);
    if (at >= need) return;
    memcpy(dst + at, src, MC__MIN(len, need - at));
}

/* An MSL kernel with a [[threadgroup(n)]] slot above 0 takes the lengths
 * of the pass's threadgroup slots as its last parameter, 31: eight
 * uint32_t, so each slot lies at its offset in the one dynamic shared
 * block (the CUDA entry points of src/backends/cpu/cpu_msl_cuda.c). Told
 * from the function's parameters: 32, the last of 32 bytes. */
#define MC__CUDA_TG_SIZES_PARAM 31u
static inline bool mc__cuda_takes_tg_sizes(const mc__cuda_pipeline *pl)
{
    return pl->nparams == (int32_t)MC__CUDA_TG_SIZES_PARAM + 1 && pl->param_size &&
           pl->param_size[MC__CUDA_TG_SIZES_PARAM] == MC__CUDA_MAX_TG * sizeof(uint32_t);
}
static inline void mc__cuda_tg_sizes(const size_t tg[MC__CUDA_MAX_TG], uint32_t out[MC__CUDA_MAX_TG])
{
    for (uint32_t i = 0; i < MC__CUDA_MAX_TG; i++) out[i] = (uint32_t)tg[i];
}

/* One submission in flight on a queue. */
struct mc__cuda_rec {
    mc__cuda_rec *next;
    mc__submission *sub;
    uint64_t sub_seq;      /* per queue, from 1 */
    uint64_t ordinal;      /* device-wide, from 1 */
    uint64_t first_marker; /* marker after pass 0 when per-pass markers are on */
    uint32_t nmarkers;     /* per-pass markers written (pass i done at first_marker + i) */
    uint64_t last_marker;  /* the queue's marker once this submission is done */
    uint32_t nran;         /* passes fully enqueued */
    uint32_t fault_pass;   /* UINT32_MAX: none */
    mc_status preset;      /* outcome decided at submit (MC_OK: none) */
    bool ran;              /* GPU work was enqueued */
    bool scheduled;        /* sub->scheduled was called */
    bool indirect;         /* has GPU-side indirect dispatches */
    bool pass_events;      /* ev[i] is the start of pass i */
    CUevent done_ev;       /* MC_CUDA_DONE=event: recorded after the work (no marker) */
    CUevent *ev;           /* timing events, first = start, last = end */
    uint32_t nev, ev_cap;
    char msg[256];
};

struct mc__cuda_queue {
    mc__cuda_device *dev;
    mc__cuda_queue *next; /* dev->queues, under dev->mu */
    int pins;             /* under dev->mu: threads polling the queue */
    bool destroyed;       /* under dev->mu */

    CUstream stream;
    void *block; /* pinned mapped page: [0] marker, [1] indirect error, [2..3] counts */
    CUdeviceptr block_dptr;
    volatile uint64_t *done; /* the marker the GPU has reached */

    /* submission side, under submit_mu */
    pthread_mutex_t submit_mu;
    uint64_t sub_seq;
    _Atomic uint64_t marker;   /* last marker value enqueued */
    _Atomic uint64_t fail_seq; /* first failed submission (PRIOR_ERROR after it), 0 = none */
    uint32_t bound;            /* slots bound in the current pass */
    uint8_t arg_kind[MC__CUDA_MAX_SLOTS];
    CUdeviceptr arg_ptr[MC__CUDA_MAX_SLOTS];
    const void *arg_bytes[MC__CUDA_MAX_SLOTS];
    uint32_t arg_len[MC__CUDA_MAX_SLOTS];
    size_t tg[MC__CUDA_MAX_TG];
    void **params;
    uint32_t params_cap;
    uint8_t *staging;                         /* MC__CUDA_MAX_PARAM_BYTES + slack */
    CUdeviceptr poke_area;                    /* MC__CUDA_MAX_SLOTS x MC__CUDA_POKE_SLOT, made at first use */
    CUdeviceptr poke_ptr[MC__CUDA_MAX_SLOTS]; /* the parameter values pointing into it */
    mc__cuda_slot *slots;
    mc__cuda_slot **used; /* slots launched by the submission being encoded */
    uint32_t nused, used_cap;
    /* graph replay of repeated command buffers (cuda_replay.c) */
    mc__cuda_replay *replay;
    bool collecting;   /* launch() collects instead of launching */
    uint32_t cur_pass; /* the pass being encoded */

    /* completion side, under mu */
    pthread_mutex_t mu;
    mc__cuda_rec *head, *tail, *free_recs;
    bool reaping; /* one thread completes records at a time, in order */
    CUevent *evpool;
    uint32_t nevpool, evpool_cap;
    CUevent *donepool; /* completion events (no timing), MC_CUDA_DONE=event */
    uint32_t ndonepool, donepool_cap;
    _Atomic size_t nrec;
    _Atomic int waiters;            /* threads in submission_wait on this queue */
    _Atomic uint64_t head_marker;   /* last_marker of the head record, UINT64_MAX if none */
    _Atomic uint64_t completed_seq; /* sub_seq of the last completed submission */
    _Atomic uint64_t last_check_ns;
    bool timing; /* set at creation: the anchor exists, GPU timing works */
    /* only the reaping thread touches these */
    CUevent anchor; /* a completed event and its time on the host clock */
    uint64_t anchor_ns;
    bool lost_head_seen;
};

/* ---- shared internals ---------------------------------------------------- */

/* CUresult -> mc_status (sticky errors are MC_ERR_DEVICE_LOST). */
mc_status mc__cuda_status(CUresult r);
bool mc__cuda_is_sticky(CUresult r);
/* "CUDA_ERROR_X (n): text" into buf. */
const char *mc__cuda_text(CUresult r, char *buf, size_t cap);
/* Maps r, marks the device lost when r is sticky, records the detail for
 * mc_last_error and returns the status. */
mc_status mc__cuda_fail(mc__cuda_device *dev, CUresult r, const char *what);
/* Marks the device lost (kind MC__CUDA_LOST_*); ordinal: submissions after
 * it are lost even if they ran. Safe to call more than once, and under any
 * lock but dev->lost_mu (it takes no other). */
void mc__cuda_set_lost(mc__cuda_device *dev, int kind, uint64_t ordinal, const char *msg);
/* The error a sticky CUresult leaves; message used for every lost submission. */
void mc__cuda_set_dead(mc__cuda_device *dev, CUresult r, const char *where);

/* The primary context around a call (the caller's current context is kept). */
mc_status mc__cuda_enter(mc__cuda_device *dev);
void mc__cuda_leave(mc__cuda_device *dev);

/* cuda_device.c: the completion thread is woken when work arrives. */
void mc__cuda_wake(mc__cuda_device *dev);

/* cuda_library.c */
mc_status mc__cuda_library_create(void *dev, mc_language lang, const char *source, size_t len, const char *options,
                                  void **lib, char **log);
void mc__cuda_library_destroy(void *dev, void *lib);
mc_status mc__cuda_pipeline_create(void *dev, void *lib, const mc_pipeline_desc *desc, void **pipeline,
                                   mc_pipeline_info *info);
void mc__cuda_pipeline_destroy(void *dev, void *pipeline);
mc_status mc__cuda_compiler_identity(void *dev, mc_language lang, char *out, size_t cap);
mc_status mc__cuda_pipeline_export(void *dev, const mc__pipeline_src *src, void *lib, void *pipeline, void **bytes,
                                   size_t *len);
mc_status mc__cuda_pipeline_import(void *dev, const mc__pipeline_src *src, const void *bytes, size_t len,
                                   bool fail_on_miss, void **lib, void **pipeline, mc_pipeline_info *info);
/* Loads PTX text (or a cubin) as a module in the current context. */
CUresult mc__cuda_load_module(mc__cuda_device *dev, const char *image, CUmodule *mod);

/* The queue's pinned page: [0] marker, [8] indirect error, [16] counts. */
#define MC__CUDA_BLOCK_BYTES 4096u
#define MC__CUDA_BLOCK_ERR 8u
#define MC__CUDA_BLOCK_COUNTS 16u
/* Indirect error tag: submission sequence (40 bits) << 24 | pass (24 bits). */
#define MC__CUDA_TAG_SHIFT 24
#define MC__CUDA_TAG_SEQ_MASK ((1ull << 40) - 1)
#define MC__CUDA_TAG_PASS_MASK ((1ull << MC__CUDA_TAG_SHIFT) - 1)
/* r->fault_pass when no pass faulted. */
#define MC__CUDA_NO_PASS UINT32_MAX

/* The marker the GPU has reached on q. */
static inline uint64_t mc__cuda_load_done(const mc__cuda_queue *q)
{
    return __atomic_load_n(q->done, __ATOMIC_ACQUIRE);
}

/* r failed: the submissions after it on q complete with MC_ERR_PRIOR_ERROR
 * (the first failure is kept). */
static inline void mc__cuda_mark_failed(mc__cuda_queue *q, const mc__cuda_rec *r)
{
    uint64_t zero = 0;
    atomic_compare_exchange_strong(&q->fail_seq, &zero, r->sub_seq);
}

/* cuda_queue.c */
mc_status mc__cuda_queue_create(void *dev, const char *label, void **queue);
void mc__cuda_queue_destroy(void *dev, void *queue);
mc_status mc__cuda_submission_wait(void *dev, void *queue, mc__submission *sub, uint64_t timeout_ns);
/* Polls every queue with work in flight until the device closes. */
void *mc__cuda_completion_main(void *dev);

/* cuda_submit.c */
mc_status mc__cuda_submit(void *dev, void *queue, mc__submission *sub);
/* Fills r->msg from fmt and returns s: a refusal while encoding r. */
mc_status mc__cuda_refuse(mc__cuda_rec *r, mc_status s, const char *fmt, ...) MC__PRINTF(3, 4);
/* A CUDA call made while encoding pass ps of r failed: fills r->msg, marks
 * the device lost on a sticky error, returns the status. */
mc_status mc__cuda_enc_fail(mc__cuda_device *dev, mc__cuda_rec *r, CUresult res, const char *what, const mc__pass *ps);

/* cuda_timing.c: the queue's events (submit_mu or the reaping thread; the
 * pools themselves are under q->mu). */
/* Records a timing event on q's stream into r; false if that failed. */
bool mc__cuda_ev_record(mc__cuda_device *dev, mc__cuda_queue *q, mc__cuda_rec *r);
/* Back to the pool (context current: one that cannot be pooled is destroyed). */
void mc__cuda_ev_give(mc__cuda_device *dev, mc__cuda_queue *q, CUevent e);
/* Completion events (MC_CUDA_DONE=event): no timing; NULL if none could be made. */
CUevent mc__cuda_done_take(mc__cuda_device *dev, mc__cuda_queue *q);
/* q->mu held; never destroys (no context needed). */
void mc__cuda_done_give_locked(mc__cuda_queue *q, CUevent e);
/* GPU times of a finished record into sub; moves the queue's anchor (context
 * current, reaping thread only). */
void mc__cuda_compute_times(mc__cuda_device *dev, mc__cuda_queue *q, mc__cuda_rec *r, mc__submission *sub);

/* cuda_indirect.c */
/* How indirect dispatch runs on the device (MC__CUDA_IND_*), decided on first
 * use (context current). */
int mc__cuda_indirect_mode(mc__cuda_device *dev);
/* The tag an over-limit indirect dispatch of pass `pass` of r writes into the
 * queue's error word (finish() then fails r). */
uint64_t mc__cuda_indirect_tag(const mc__cuda_rec *r, uint32_t pass);
/* One indirect dispatch as a two-node graph (cuda_indirect.c);
 * MC_ERR_UNSUPPORTED (nothing enqueued) when the device cannot. */
mc_status mc__cuda_indirect_graph(mc__cuda_device *dev, mc__cuda_queue *q, mc__cuda_rec *r, const mc__cuda_pipeline *pl,
                                  CUdeviceptr counts, mc_size3 t, unsigned smem, void **params, uint32_t pass_index,
                                  const mc__pass *ps);
/* Waits for the queue's stream and reads nwords uint32 at host (if not NULL)
 * or dptr: the CPU fallback for values the device writes. */
mc_status mc__cuda_read_sync(mc__cuda_device *dev, mc__cuda_queue *q, mc__cuda_rec *r, const void *host,
                             CUdeviceptr dptr, uint32_t *out, uint32_t nwords, const mc__pass *ps);
/* Threadgroup counts read on the CPU against the grid limits: MC_OK, or the
 * refusal (MC_ERR_VALIDATION in validation mode) with r->msg filled. */
mc_status mc__cuda_check_counts(mc__cuda_rec *r, const uint32_t n[3], const mc__pass *ps);
/* The graphs the submission just encoded launched stay busy until its
 * marker (submit_mu held). */
void mc__cuda_slots_settle(mc__cuda_queue *q);
/* Frees the queue's graphs (ctx: the context is current, so they can be
 * destroyed; without it only the host memory is freed). */
void mc__cuda_slots_free(mc__cuda_queue *q, bool ctx);

/* cuda_list.c */
mc_status mc__cuda_cmdlist_create(void *dev, const mc__list_desc *desc, void **list, uint32_t *caps);
void mc__cuda_cmdlist_destroy(void *dev, void *list);
/* EXECUTE_LIST in pass p of r (submit_mu held, context current). */
mc_status mc__cuda_list_execute(mc__cuda_device *dev, mc__cuda_queue *q, mc__cuda_rec *r, const mc__cmd *c,
                                uint32_t pass_index, const mc__pass *ps);

/* cuda_replay.c: command buffers replayed as graphs (submit_mu held,
 * context current). */
bool mc__cuda_replay_enabled(const mc__cuda_device *dev);
bool mc__cuda_replay_eligible(const mc__submission *sub, uint32_t nrun);
mc_status mc__cuda_replay_begin(mc__cuda_device *dev, mc__cuda_queue *q);
void mc__cuda_replay_collect(mc__cuda_queue *q, mc__cuda_pipeline *pl, mc_size3 g, mc_size3 t, unsigned smem,
                             void **params, uint32_t pass);
/* Sends what was collected (as a graph or one by one). `encoded`: the
 * encoding's outcome (a failed pass still runs the launches before it).
 * MC_ERR_UNSUPPORTED: nothing was sent, encode again without collecting. */
mc_status mc__cuda_replay_end(mc__cuda_device *dev, mc__cuda_queue *q, mc__cuda_rec *r, const mc__submission *sub,
                              mc_status encoded, uint32_t *fault);
void mc__cuda_replay_forget(mc__cuda_queue *q, const mc__cuda_pipeline *pl);
void mc__cuda_replay_free(mc__cuda_queue *q);

/* Forgets the cached graphs (indirect dispatch, replay) of a pipeline being
 * destroyed (cuda_indirect.c). */
void mc__cuda_forget_pipeline(mc__cuda_device *dev, mc__cuda_pipeline *pl);

/* Spin, then sleep with a growing interval (shared by every waiter). */
typedef struct mc__cuda_backoff {
    uint64_t start;
    uint64_t sleep_ns;
    uint64_t yield_ns; /* 0 but for waiters: until then yield instead of sleeping */
} mc__cuda_backoff;
void mc__cuda_backoff_init(mc__cuda_backoff *b);
/* spin_ns of spinning, then yields until yield_ns (counted from the start),
 * then sleeps growing to max_sleep_ns (never past deadline). */
void mc__cuda_backoff_step(mc__cuda_backoff *b, uint64_t spin_ns, uint64_t max_sleep_ns, uint64_t deadline);

#endif
