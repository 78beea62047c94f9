/*
 * DOC: The Metal device, private header
 *
 * Plain C11 talking to Metal through the Objective-C runtime. No Objective-C
 * and no Foundation or Metal headers: the few types needed are declared here
 * as Apple's headers spell them, and every message goes through a small typed
 * wrapper (msg_<selector>) that casts objc_msgSend to the exact prototype of
 * the method. The cast is the call: never the variadic form, which on arm64
 * puts the arguments where the method does not look for them.
 *
 * Files:
 *   metal_objc.c      selectors and classes (registered once), retain/release,
 *                     autorelease pools, NSString helpers, hand-built blocks
 *   metal_device.c    devices, buffers, residency sets, events, the HAL table
 *   metal_pipeline.c  libraries from MSL source, pipelines, binary archives
 *   metal_queue.c     queues, encoding a submission, completion, errors
 *
 * Ownership (manual reference counting, as in Objective-C without ARC):
 *   - an object returned by alloc/new/copy/Create/Copy... is owned (+1) and
 *     is released exactly once, through mc__mtl_release();
 *   - anything else (stringWithUTF8String:, commandBufferWithDescriptor:,
 *     encoders, NSError out-parameters, property getters) is borrowed: it
 *     lives until the innermost autorelease pool is drained or its owner
 *     goes. Every entry point that can produce such objects pushes a pool
 *     (mc__mtl_pool_push) and drains it before returning, Metal callbacks
 *     included;
 *   - Metal objects live only in the structs of this directory, never in the
 *     engine's.
 *
 * Locking: dev->lock guards the residency set, the lazily built internal
 * pipelines and the event listener; q->lock guards a queue's state and makes
 * encoding + commit atomic per queue. No lock is held while waiting on the
 * GPU. Order: q->lock -> dev->lock.
 */
#ifndef MC_BACKENDS_METAL_METAL_H
#define MC_BACKENDS_METAL_METAL_H

#ifndef OBJC_OLD_DISPATCH_PROTOTYPES
#define OBJC_OLD_DISPATCH_PROTOTYPES 0
#endif
#include <objc/message.h>
#include <objc/runtime.h>

#include "backends/hal.h"
#include "core/core.h"

#include <pthread.h>
#include <stdatomic.h>

/* ---- Foundation and Metal types, as Apple's headers declare them --------- */

typedef unsigned long NSUInteger;
typedef long NSInteger;
typedef double CFTimeInterval;
typedef struct NSRange {
    NSUInteger location, length;
} NSRange;
typedef struct MTLSize {
    NSUInteger width, height, depth;
} MTLSize;

/* BOOL comes from <objc/objc.h> (bool on arm64, signed char on x86_64); its
 * YES/NO may be Objective-C literals, so C code spells them out. */
#define MC__MTL_YES ((BOOL)1)
#define MC__MTL_NO ((BOOL)0)

typedef NSUInteger MTLResourceOptions;
typedef NSUInteger MTLPipelineOption;
typedef NSUInteger MTLLanguageVersion;
typedef NSInteger MTLMathMode;
typedef NSUInteger MTLDispatchType;
typedef NSUInteger MTLBarrierScope;
typedef NSUInteger MTLCommandBufferErrorOption;
typedef NSUInteger MTLCommandBufferStatus;
typedef NSInteger MTLCommandEncoderErrorState;
typedef NSUInteger MTLIndirectCommandType;
typedef NSUInteger MTLResourceUsage;
typedef NSUInteger MTLDataType;
/* The scalar MTLDataType values a function constant may have (MTLDataType.h;
 * older SDKs: MTLArgument.h). */
enum {
    MTLDataTypeFloat = 3,
    MTLDataTypeHalf = 16,
    MTLDataTypeInt = 29,
    MTLDataTypeUInt = 33,
    MTLDataTypeShort = 37,
    MTLDataTypeUShort = 41,
    MTLDataTypeChar = 45,
    MTLDataTypeUChar = 49,
    MTLDataTypeBool = 53,
    MTLDataTypeLong = 81,
    MTLDataTypeULong = 85
};
/* What executeCommandsInBuffer:indirectBuffer:indirectBufferOffset: reads. */
typedef struct MTLIndirectCommandBufferExecutionRange {
    uint32_t location, length;
} MTLIndirectCommandBufferExecutionRange;
typedef NSInteger MTLGPUFamily;
/* Block parameters: pointers to hand-built block literals (mc__mtl_block),
 * a distinct pointer type so that their type encoding is a block's (@?). */
struct mc__mtl_block;
typedef struct mc__mtl_block *MTLCommandBufferHandler;
typedef struct mc__mtl_block *MTLSharedEventNotificationBlock;
/* newBufferWithBytesNoCopy's deallocator, void (^)(void *pointer,
 * NSUInteger length) in Apple's header, which gives it no name. */
typedef struct mc__mtl_block *MTLBufferDeallocator;

enum {
    MTLResourceStorageModeShared = 0, /* with default CPU cache and hazard tracking */
    MTLPipelineOptionNone = 0,
    MTLPipelineOptionFailOnBinaryArchiveMiss = 1u << 2, /* F700 */
    MTLMathModeSafe = 0,
    MTLMathModeFast = 2,
    MTLDispatchTypeSerial = 0,
    MTLBarrierScopeBuffers = 1u << 0,
    MTLCommandBufferErrorOptionEncoderExecutionStatus = 1u << 0, /* F686 */
    MTLCommandBufferStatusCompleted = 4,
    MTLCommandBufferStatusError = 5,                    /* F687 */
    MTLIndirectCommandTypeConcurrentDispatch = 1u << 5, /* compute commands in an ICB (F670) */
    MTLResourceUsageRead = 1u << 0,
    MTLResourceUsageWrite = 1u << 1
};
/* MTLGPUFamily values (MTLDevice.h). ICB compute commands need Apple7 or
 * Mac2; Apple9 (M3 and later) no longer needs the ICB pipeline workaround
 * (metal_queue.c). */
#define MC__MTL_GPU_FAMILY_APPLE7 ((MTLGPUFamily)1007)
#define MC__MTL_GPU_FAMILY_APPLE9 ((MTLGPUFamily)1009)
#define MC__MTL_GPU_FAMILY_MAC2 ((MTLGPUFamily)2002)
#define MC__MTL_LANGUAGE_VERSION(major, minor) ((MTLLanguageVersion)(((major) << 16) + (minor)))
#define MC__MTL_DEFAULT_LANGUAGE MC__MTL_LANGUAGE_VERSION(3, 0) /* macOS 13, every Apple silicon Mac */

/* Metal's C functions and constants (Metal.framework). */
extern id MTLCreateSystemDefaultDevice(void);
extern id MTLCopyAllDevices(void);
extern id const MTLCommandBufferErrorDomain;
extern id const MTLCommandBufferEncoderInfoErrorKey;

/* ---- selectors and classes, registered once (metal_objc.c) --------------- */

#define MC__MTL_SELECTORS(X)                                                                                          \
    /* NSObject, NSAutoreleasePool */                                                                                 \
    X(alloc, "alloc")                                                                                                 \
    X(init, "init")                                                                                                   \
    X(retain, "retain")                                                                                               \
    X(release, "release")                                                                                             \
    X(drain, "drain")                                                                                                 \
    X(respondsToSelector_, "respondsToSelector:")                                                                     \
    /* Foundation values */                                                                                           \
    X(stringWithUTF8String_, "stringWithUTF8String:")                                                                 \
    X(UTF8String, "UTF8String")                                                                                       \
    X(isEqualToString_, "isEqualToString:")                                                                           \
    X(fileURLWithPath_, "fileURLWithPath:")                                                                           \
    X(arrayWithObjects_count_, "arrayWithObjects:count:")                                                             \
    X(count, "count")                                                                                                 \
    X(objectAtIndex_, "objectAtIndex:")                                                                               \
    X(dictionaryWithObjects_forKeys_count_, "dictionaryWithObjects:forKeys:count:")                                   \
    X(objectForKey_, "objectForKey:")                                                                                 \
    X(code, "code")                                                                                                   \
    X(domain, "domain")                                                                                               \
    X(localizedDescription, "localizedDescription")                                                                   \
    X(userInfo, "userInfo")                                                                                           \
    X(processInfo, "processInfo")                                                                                     \
    X(operatingSystemVersionString, "operatingSystemVersionString")                                                   \
    /* MTLDevice */                                                                                                   \
    X(name, "name")                                                                                                   \
    X(architecture, "architecture")                                                                                   \
    X(maxThreadsPerThreadgroup, "maxThreadsPerThreadgroup")                                                           \
    X(maxThreadgroupMemoryLength, "maxThreadgroupMemoryLength")                                                       \
    X(hasUnifiedMemory, "hasUnifiedMemory")                                                                           \
    X(maxBufferLength, "maxBufferLength")                                                                             \
    X(supportsFamily_, "supportsFamily:")                                                                             \
    X(newBufferWithLength_options_, "newBufferWithLength:options:")                                                   \
    X(newBufferWithBytesNoCopy_length_options_deallocator_, "newBufferWithBytesNoCopy:length:options:deallocator:")   \
    X(newLibraryWithSource_options_error_, "newLibraryWithSource:options:error:")                                     \
    X(newComputePipelineStateWithDescriptor_options_reflection_error_,                                                \
      "newComputePipelineStateWithDescriptor:options:reflection:error:")                                              \
    X(newCommandQueue, "newCommandQueue")                                                                             \
    X(newSharedEvent, "newSharedEvent")                                                                               \
    X(newBinaryArchiveWithDescriptor_error_, "newBinaryArchiveWithDescriptor:error:")                                 \
    X(newResidencySetWithDescriptor_error_, "newResidencySetWithDescriptor:error:")                                   \
    X(newIndirectCommandBufferWithDescriptor_maxCommandCount_options_,                                                \
      "newIndirectCommandBufferWithDescriptor:maxCommandCount:options:")                                              \
    /* labels, buffers */                                                                                             \
    X(setLabel_, "setLabel:")                                                                                         \
    X(contents, "contents")                                                                                           \
    /* MTLCompileOptions, MTLLibrary */                                                                               \
    X(setLanguageVersion_, "setLanguageVersion:")                                                                     \
    X(setMathMode_, "setMathMode:")                                                                                   \
    X(setFastMathEnabled_, "setFastMathEnabled:")                                                                     \
    X(setPreprocessorMacros_, "setPreprocessorMacros:")                                                               \
    X(newFunctionWithName_, "newFunctionWithName:")                                                                   \
    /* function constants: MTLFunction, NSDictionary, MTLFunctionConstant(Values) */                                  \
    X(newFunctionWithName_constantValues_error_, "newFunctionWithName:constantValues:error:")                         \
    X(functionConstantsDictionary, "functionConstantsDictionary")                                                     \
    X(allValues, "allValues")                                                                                         \
    X(index, "index")                                                                                                 \
    X(type, "type")                                                                                                   \
    X(setConstantValue_type_atIndex_, "setConstantValue:type:atIndex:")                                               \
    /* MTLComputePipelineDescriptor, MTLComputePipelineState */                                                       \
    X(setComputeFunction_, "setComputeFunction:")                                                                     \
    X(setMaxTotalThreadsPerThreadgroup_, "setMaxTotalThreadsPerThreadgroup:")                                         \
    X(setThreadGroupSizeIsMultipleOfThreadExecutionWidth_, "setThreadGroupSizeIsMultipleOfThreadExecutionWidth:")     \
    X(setBinaryArchives_, "setBinaryArchives:")                                                                       \
    X(setSupportIndirectCommandBuffers_, "setSupportIndirectCommandBuffers:")                                         \
    X(maxTotalThreadsPerThreadgroup, "maxTotalThreadsPerThreadgroup")                                                 \
    X(threadExecutionWidth, "threadExecutionWidth")                                                                   \
    X(staticThreadgroupMemoryLength, "staticThreadgroupMemoryLength")                                                 \
    /* MTLBinaryArchiveDescriptor, MTLBinaryArchive */                                                                \
    X(setUrl_, "setUrl:")                                                                                             \
    X(addComputePipelineFunctionsWithDescriptor_error_, "addComputePipelineFunctionsWithDescriptor:error:")           \
    X(serializeToURL_error_, "serializeToURL:error:")                                                                 \
    /* MTLCommandQueue, MTLCommandBufferDescriptor */                                                                 \
    X(commandBufferWithDescriptor_, "commandBufferWithDescriptor:")                                                   \
    X(setErrorOptions_, "setErrorOptions:")                                                                           \
    X(setRetainedReferences_, "setRetainedReferences:")                                                               \
    X(addResidencySet_, "addResidencySet:")                                                                           \
    X(removeResidencySet_, "removeResidencySet:")                                                                     \
    /* MTLCommandBuffer */                                                                                            \
    X(computeCommandEncoderWithDispatchType_, "computeCommandEncoderWithDispatchType:")                               \
    X(blitCommandEncoder, "blitCommandEncoder")                                                                       \
    X(encodeSignalEvent_value_, "encodeSignalEvent:value:")                                                           \
    X(encodeWaitForEvent_value_, "encodeWaitForEvent:value:")                                                         \
    X(addScheduledHandler_, "addScheduledHandler:")                                                                   \
    X(addCompletedHandler_, "addCompletedHandler:")                                                                   \
    X(commit, "commit")                                                                                               \
    X(status, "status")                                                                                               \
    X(error, "error")                                                                                                 \
    X(GPUStartTime, "GPUStartTime")                                                                                   \
    X(GPUEndTime, "GPUEndTime")                                                                                       \
    X(label, "label")                                                                                                 \
    X(errorState, "errorState")                                                                                       \
    /* MTLComputeCommandEncoder, MTLBlitCommandEncoder */                                                             \
    X(setComputePipelineState_, "setComputePipelineState:")                                                           \
    X(setBuffer_offset_atIndex_, "setBuffer:offset:atIndex:")                                                         \
    X(setBytes_length_atIndex_, "setBytes:length:atIndex:")                                                           \
    X(setThreadgroupMemoryLength_atIndex_, "setThreadgroupMemoryLength:atIndex:")                                     \
    X(dispatchThreadgroups_threadsPerThreadgroup_, "dispatchThreadgroups:threadsPerThreadgroup:")                     \
    X(dispatchThreadgroupsWithIndirectBuffer_indirectBufferOffset_threadsPerThreadgroup_,                             \
      "dispatchThreadgroupsWithIndirectBuffer:indirectBufferOffset:threadsPerThreadgroup:")                           \
    X(memoryBarrierWithScope_, "memoryBarrierWithScope:")                                                             \
    X(copyFromBuffer_sourceOffset_toBuffer_destinationOffset_size_,                                                   \
      "copyFromBuffer:sourceOffset:toBuffer:destinationOffset:size:")                                                 \
    X(fillBuffer_range_value_, "fillBuffer:range:value:")                                                             \
    X(endEncoding, "endEncoding")                                                                                     \
    X(useResources_count_usage_, "useResources:count:usage:")                                                         \
    X(executeCommandsInBuffer_withRange_, "executeCommandsInBuffer:withRange:")                                       \
    X(executeCommandsInBuffer_indirectBuffer_indirectBufferOffset_,                                                   \
      "executeCommandsInBuffer:indirectBuffer:indirectBufferOffset:")                                                 \
    /* MTLIndirectCommandBufferDescriptor, MTLIndirectCommandBuffer, MTLIndirectComputeCommand (F670) */              \
    X(setCommandTypes_, "setCommandTypes:")                                                                           \
    X(setInheritPipelineState_, "setInheritPipelineState:")                                                           \
    X(setInheritBuffers_, "setInheritBuffers:")                                                                       \
    X(setMaxKernelBufferBindCount_, "setMaxKernelBufferBindCount:")                                                   \
    X(setMaxKernelThreadgroupMemoryBindCount_, "setMaxKernelThreadgroupMemoryBindCount:")                             \
    X(indirectComputeCommandAtIndex_, "indirectComputeCommandAtIndex:")                                               \
    X(setKernelBuffer_offset_atIndex_, "setKernelBuffer:offset:atIndex:")                                             \
    X(concurrentDispatchThreadgroups_threadsPerThreadgroup_, "concurrentDispatchThreadgroups:threadsPerThreadgroup:") \
    X(setBarrier, "setBarrier")                                                                                       \
    X(reset, "reset")                                                                                                 \
    /* MTLSharedEvent */                                                                                              \
    X(signaledValue, "signaledValue")                                                                                 \
    X(setSignaledValue_, "setSignaledValue:")                                                                         \
    X(waitUntilSignaledValue_timeoutMS_, "waitUntilSignaledValue:timeoutMS:")                                         \
    X(notifyListener_atValue_block_, "notifyListener:atValue:block:")                                                 \
    /* MTLResidencySetDescriptor, MTLResidencySet */                                                                  \
    X(setInitialCapacity_, "setInitialCapacity:")                                                                     \
    X(addAllocation_, "addAllocation:")                                                                               \
    X(removeAllocation_, "removeAllocation:")                                                                         \
    X(requestResidency, "requestResidency")                                                                           \
    X(endResidency, "endResidency")

#define MC__MTL_CLASSES(X)                \
    X(NSAutoreleasePool)                  \
    X(NSString)                           \
    X(NSURL)                              \
    X(NSArray)                            \
    X(NSDictionary)                       \
    X(NSProcessInfo)                      \
    X(MTLCompileOptions)                  \
    X(MTLComputePipelineDescriptor)       \
    X(MTLFunctionConstantValues)          \
    X(MTLBinaryArchiveDescriptor)         \
    X(MTLCommandBufferDescriptor)         \
    X(MTLSharedEventListener)             \
    X(MTLIndirectCommandBufferDescriptor) \
    X(MTLResidencySetDescriptor) /* macOS 15: nil before */

typedef struct mc__mtl_selectors {
#define MC__MTL_SEL_FIELD(field, name) SEL field;
    MC__MTL_SELECTORS(MC__MTL_SEL_FIELD)
#undef MC__MTL_SEL_FIELD
} mc__mtl_selectors;

typedef struct mc__mtl_classes {
#define MC__MTL_CLS_FIELD(cls) id cls;
    MC__MTL_CLASSES(MC__MTL_CLS_FIELD)
#undef MC__MTL_CLS_FIELD
} mc__mtl_classes;

/* Filled once by mc__mtl_runtime_init(); read-only afterwards (the only
 * process-wide state of this backend, like the interned selectors
 * themselves). */
extern mc__mtl_selectors mc__mtl_sel;
extern mc__mtl_classes mc__mtl_cls;

/* Registers every selector and looks up every class, once per process
 * (pthread_once). Every entry point that can be the first calls it. */
void mc__mtl_runtime_init(void);

/* ---- the one way a message is sent --------------------------------------- */

/* MC__MTL_SEND(R, (id, SEL, T1, T2), self, sel, a1, a2): objc_msgSend cast to
 * R (*)(id, SEL, T1, T2) and called. The compiler checks the arguments
 * against the prototype. The contract test (tests/metal) builds this
 * directory with MC_MTL_CONTRACT so that each send also tells the runtime
 * double the prototype it was cast to, which the double compares with the
 * method's documented one; a normal build sends nothing more than the call. */
#ifdef MC_MTL_CONTRACT
/* ret, proto: the cast's spelling; enc[n]: the Objective-C type encoding of
 * the return type and of each parameter type (self and _cmd included), as the
 * compiler sees the types (MC__MTL_ENC), for comparison with Apple's. */
void mc__mtl_contract_note(SEL sel, const char *ret, const char *proto, const char *const *enc, int n);
#define MC__MTL_NOTE(R, P, ...)                                   \
    mc__mtl_contract_note(MC__MTL_SECOND(__VA_ARGS__, ~), #R, #P, \
                          (const char *const[]){MC__MTL_ENC(R), MC__MTL_ENCS P}, 1 + MC__MTL_NARGS P),
#define MC__MTL_SECOND(self, sel, ...) sel
/* The type encoding of T (Apple's "Type Encodings", Objective-C Runtime
 * Programming Guide), chosen by the type itself, not by its name, so a
 * typedef that differs from Apple's shows up: NSUInteger is Q, NSInteger q,
 * BOOL c (x86_64) or B (arm64), id @, SEL :, a block @?, const char * r*,
 * MTLSize {?=QQQ} (untagged in MTLTypes.h), NSRange {_NSRange=QQ}. */
#define MC__MTL_ENC(T) \
    _Generic((T *)0, void *: "v", id *: "@", SEL *: ":", signed char *: "c", _Bool *: "B",          \
             unsigned char *: "C", int *: "i", unsigned int *: "I", long *: "q", unsigned long *: "Q", \
             long long *: "q", unsigned long long *: "Q", float *: "f", double *: "d",               \
             const char **: "r*", char **: "*", void **: "^v", const void **: "r^v", id **: "^@",     \
             const id **: "r^@", MTLSize *: "{?=QQQ}", NSRange *: "{_NSRange=QQ}",                  \
             struct mc__mtl_block **: "@?", default: "<unknown type>")
#define MC__MTL_NARGS(...) MC__MTL_NARGS_(__VA_ARGS__, 8, 7, 6, 5, 4, 3, 2, 1, 0)
#define MC__MTL_NARGS_(a1, a2, a3, a4, a5, a6, a7, a8, n, ...) n
#define MC__MTL_ENCS(...) MC__MTL_ENCS_N(MC__MTL_NARGS(__VA_ARGS__), __VA_ARGS__)
#define MC__MTL_ENCS_N(n, ...) MC__MTL_ENCS_N_(n, __VA_ARGS__)
#define MC__MTL_ENCS_N_(n, ...) MC__MTL_ENCS_##n(__VA_ARGS__)
#define MC__MTL_ENCS_2(a, b) MC__MTL_ENC(a), MC__MTL_ENC(b)
#define MC__MTL_ENCS_3(a, ...) MC__MTL_ENC(a), MC__MTL_ENCS_2(__VA_ARGS__)
#define MC__MTL_ENCS_4(a, ...) MC__MTL_ENC(a), MC__MTL_ENCS_3(__VA_ARGS__)
#define MC__MTL_ENCS_5(a, ...) MC__MTL_ENC(a), MC__MTL_ENCS_4(__VA_ARGS__)
#define MC__MTL_ENCS_6(a, ...) MC__MTL_ENC(a), MC__MTL_ENCS_5(__VA_ARGS__)
#define MC__MTL_ENCS_7(a, ...) MC__MTL_ENC(a), MC__MTL_ENCS_6(__VA_ARGS__)
#define MC__MTL_ENCS_8(a, ...) MC__MTL_ENC(a), MC__MTL_ENCS_7(__VA_ARGS__)
#else
#define MC__MTL_NOTE(R, P, ...)
#endif
/* The dispatch function as a plain pointer: casting it is defined, and
 * compilers do not mistake the cast call for a mismatched prototype. */
typedef void (*mc__mtl_imp)(void);
static inline mc__mtl_imp mc__mtl_msgsend(void)
{
    return objc_msgSend;
}
#define MC__MTL_SEND(R, P, ...) (MC__MTL_NOTE(R, P, __VA_ARGS__)((R(*) P)mc__mtl_msgsend())(__VA_ARGS__))

/* Methods returning a struct of more than 16 bytes (MTLSize): on x86_64 such
 * results are returned in memory, through objc_msgSend_stret; arm64 returns
 * them through x8 with plain objc_msgSend. */
#if defined(__x86_64__) || defined(__i386__)
static inline mc__mtl_imp mc__mtl_msgsend_stret(void)
{
    return objc_msgSend_stret;
}
#define MC__MTL_SEND_STRET(R, P, ...) (MC__MTL_NOTE(R, P, __VA_ARGS__)((R(*) P)mc__mtl_msgsend_stret())(__VA_ARGS__))
#else
#define MC__MTL_SEND_STRET(R, P, ...) MC__MTL_SEND(R, P, __VA_ARGS__)
#endif

#define MC__SEL(field) (mc__mtl_sel.field)

/* ---- typed wrappers, one per selector ------------------------------------ */

/* NSObject */
static inline id msg_alloc(id cls)
{
    return MC__MTL_SEND(id, (id, SEL), cls, MC__SEL(alloc));
}
static inline id msg_init(id obj)
{
    return MC__MTL_SEND(id, (id, SEL), obj, MC__SEL(init));
}
static inline id msg_retain(id obj)
{
    return MC__MTL_SEND(id, (id, SEL), obj, MC__SEL(retain));
}
static inline void msg_release(id obj)
{
    MC__MTL_SEND(void, (id, SEL), obj, MC__SEL(release));
}
static inline void msg_drain(id pool)
{
    MC__MTL_SEND(void, (id, SEL), pool, MC__SEL(drain));
}
static inline BOOL msg_respondsToSelector_(id obj, SEL sel)
{
    return MC__MTL_SEND(BOOL, (id, SEL, SEL), obj, MC__SEL(respondsToSelector_), sel);
}

/* NSString, NSURL, NSArray, NSDictionary, NSError, NSProcessInfo */
static inline id msg_stringWithUTF8String_(id cls, const char *s)
{
    return MC__MTL_SEND(id, (id, SEL, const char *), cls, MC__SEL(stringWithUTF8String_), s);
}
static inline const char *msg_UTF8String(id str)
{
    return MC__MTL_SEND(const char *, (id, SEL), str, MC__SEL(UTF8String));
}
static inline BOOL msg_isEqualToString_(id str, id other)
{
    return MC__MTL_SEND(BOOL, (id, SEL, id), str, MC__SEL(isEqualToString_), other);
}
static inline id msg_fileURLWithPath_(id cls, id path)
{
    return MC__MTL_SEND(id, (id, SEL, id), cls, MC__SEL(fileURLWithPath_), path);
}
static inline id msg_arrayWithObjects_count_(id cls, const id *objects, NSUInteger n)
{
    return MC__MTL_SEND(id, (id, SEL, const id *, NSUInteger), cls, MC__SEL(arrayWithObjects_count_), objects, n);
}
static inline NSUInteger msg_count(id array)
{
    return MC__MTL_SEND(NSUInteger, (id, SEL), array, MC__SEL(count));
}
static inline id msg_objectAtIndex_(id array, NSUInteger i)
{
    return MC__MTL_SEND(id, (id, SEL, NSUInteger), array, MC__SEL(objectAtIndex_), i);
}
static inline id msg_dictionaryWithObjects_forKeys_count_(id cls, const id *objects, const id *keys, NSUInteger n)
{
    return MC__MTL_SEND(id, (id, SEL, const id *, const id *, NSUInteger), cls,
                        MC__SEL(dictionaryWithObjects_forKeys_count_), objects, keys, n);
}
static inline id msg_objectForKey_(id dict, id key)
{
    return MC__MTL_SEND(id, (id, SEL, id), dict, MC__SEL(objectForKey_), key);
}
static inline NSInteger msg_code(id error)
{
    return MC__MTL_SEND(NSInteger, (id, SEL), error, MC__SEL(code));
}
static inline id msg_domain(id error)
{
    return MC__MTL_SEND(id, (id, SEL), error, MC__SEL(domain));
}
static inline id msg_localizedDescription(id error)
{
    return MC__MTL_SEND(id, (id, SEL), error, MC__SEL(localizedDescription));
}
static inline id msg_userInfo(id error)
{
    return MC__MTL_SEND(id, (id, SEL), error, MC__SEL(userInfo));
}
static inline id msg_processInfo(id cls)
{
    return MC__MTL_SEND(id, (id, SEL), cls, MC__SEL(processInfo));
}
static inline id msg_operatingSystemVersionString(id info)
{
    return MC__MTL_SEND(id, (id, SEL), info, MC__SEL(operatingSystemVersionString));
}

/* MTLDevice */
static inline id msg_name(id obj)
{
    return MC__MTL_SEND(id, (id, SEL), obj, MC__SEL(name));
}
static inline id msg_architecture(id device)
{
    return MC__MTL_SEND(id, (id, SEL), device, MC__SEL(architecture));
}
static inline MTLSize msg_maxThreadsPerThreadgroup(id device)
{
    return MC__MTL_SEND_STRET(MTLSize, (id, SEL), device, MC__SEL(maxThreadsPerThreadgroup));
}
static inline NSUInteger msg_maxThreadgroupMemoryLength(id device)
{
    return MC__MTL_SEND(NSUInteger, (id, SEL), device, MC__SEL(maxThreadgroupMemoryLength));
}
static inline BOOL msg_hasUnifiedMemory(id device)
{
    return MC__MTL_SEND(BOOL, (id, SEL), device, MC__SEL(hasUnifiedMemory));
}
static inline NSUInteger msg_maxBufferLength(id device)
{
    return MC__MTL_SEND(NSUInteger, (id, SEL), device, MC__SEL(maxBufferLength));
}
static inline BOOL msg_supportsFamily_(id device, MTLGPUFamily family)
{
    return MC__MTL_SEND(BOOL, (id, SEL, MTLGPUFamily), device, MC__SEL(supportsFamily_), family);
}
static inline id msg_newBufferWithLength_options_(id device, NSUInteger length, MTLResourceOptions options)
{
    return MC__MTL_SEND(id, (id, SEL, NSUInteger, MTLResourceOptions), device, MC__SEL(newBufferWithLength_options_),
                        length, options);
}
static inline id msg_newBufferWithBytesNoCopy_length_options_deallocator_(id device, void *pointer, NSUInteger length,
                                                                          MTLResourceOptions options,
                                                                          MTLBufferDeallocator deallocator)
{
    return MC__MTL_SEND(id, (id, SEL, void *, NSUInteger, MTLResourceOptions, MTLBufferDeallocator), device,
                        MC__SEL(newBufferWithBytesNoCopy_length_options_deallocator_), pointer, length, options,
                        deallocator);
}
static inline id msg_newLibraryWithSource_options_error_(id device, id source, id options, id *error)
{
    return MC__MTL_SEND(id, (id, SEL, id, id, id *), device, MC__SEL(newLibraryWithSource_options_error_), source,
                        options, error);
}
static inline id msg_newComputePipelineStateWithDescriptor_options_reflection_error_(id device, id desc,
                                                                                     MTLPipelineOption options,
                                                                                     id *reflection, id *error)
{
    return MC__MTL_SEND(id, (id, SEL, id, MTLPipelineOption, id *, id *), device,
                        MC__SEL(newComputePipelineStateWithDescriptor_options_reflection_error_), desc, options,
                        reflection, error);
}
static inline id msg_newCommandQueue(id device)
{
    return MC__MTL_SEND(id, (id, SEL), device, MC__SEL(newCommandQueue));
}
static inline id msg_newSharedEvent(id device)
{
    return MC__MTL_SEND(id, (id, SEL), device, MC__SEL(newSharedEvent));
}
static inline id msg_newBinaryArchiveWithDescriptor_error_(id device, id desc, id *error)
{
    return MC__MTL_SEND(id, (id, SEL, id, id *), device, MC__SEL(newBinaryArchiveWithDescriptor_error_), desc, error);
}
static inline id msg_newResidencySetWithDescriptor_error_(id device, id desc, id *error)
{
    return MC__MTL_SEND(id, (id, SEL, id, id *), device, MC__SEL(newResidencySetWithDescriptor_error_), desc, error);
}
static inline id msg_newIndirectCommandBufferWithDescriptor_maxCommandCount_options_(id device, id desc,
                                                                                     NSUInteger count,
                                                                                     MTLResourceOptions options)
{
    return MC__MTL_SEND(id, (id, SEL, id, NSUInteger, MTLResourceOptions), device,
                        MC__SEL(newIndirectCommandBufferWithDescriptor_maxCommandCount_options_), desc, count, options);
}

/* labels, MTLBuffer */
static inline void msg_setLabel_(id obj, id label)
{
    MC__MTL_SEND(void, (id, SEL, id), obj, MC__SEL(setLabel_), label);
}
static inline id msg_label(id obj)
{
    return MC__MTL_SEND(id, (id, SEL), obj, MC__SEL(label));
}
static inline void *msg_contents(id buffer)
{
    return MC__MTL_SEND(void *, (id, SEL), buffer, MC__SEL(contents));
}

/* MTLCompileOptions, MTLLibrary */
static inline void msg_setLanguageVersion_(id options, MTLLanguageVersion v)
{
    MC__MTL_SEND(void, (id, SEL, MTLLanguageVersion), options, MC__SEL(setLanguageVersion_), v);
}
static inline void msg_setMathMode_(id options, MTLMathMode mode)
{
    MC__MTL_SEND(void, (id, SEL, MTLMathMode), options, MC__SEL(setMathMode_), mode);
}
static inline void msg_setFastMathEnabled_(id options, BOOL on)
{
    MC__MTL_SEND(void, (id, SEL, BOOL), options, MC__SEL(setFastMathEnabled_), on);
}
static inline void msg_setPreprocessorMacros_(id options, id dict)
{
    MC__MTL_SEND(void, (id, SEL, id), options, MC__SEL(setPreprocessorMacros_), dict);
}
static inline id msg_newFunctionWithName_(id library, id name)
{
    return MC__MTL_SEND(id, (id, SEL, id), library, MC__SEL(newFunctionWithName_), name);
}
/* Function constants: the function specialised with values (+1), the
 * constants a function declares (NSDictionary of name -> MTLFunctionConstant,
 * autoreleased) and each one's index and type. */
static inline id msg_newFunctionWithName_constantValues_error_(id library, id name, id values, id *error)
{
    return MC__MTL_SEND(id, (id, SEL, id, id, id *), library, MC__SEL(newFunctionWithName_constantValues_error_), name,
                        values, error);
}
static inline id msg_functionConstantsDictionary(id function)
{
    return MC__MTL_SEND(id, (id, SEL), function, MC__SEL(functionConstantsDictionary));
}
static inline id msg_allValues(id dictionary)
{
    return MC__MTL_SEND(id, (id, SEL), dictionary, MC__SEL(allValues));
}
static inline NSUInteger msg_index(id constant)
{
    return MC__MTL_SEND(NSUInteger, (id, SEL), constant, MC__SEL(index));
}
static inline MTLDataType msg_type(id constant)
{
    return MC__MTL_SEND(MTLDataType, (id, SEL), constant, MC__SEL(type));
}
static inline void msg_setConstantValue_type_atIndex_(id values, const void *value, MTLDataType type, NSUInteger index)
{
    MC__MTL_SEND(void, (id, SEL, const void *, MTLDataType, NSUInteger), values,
                 MC__SEL(setConstantValue_type_atIndex_), value, type, index);
}

/* MTLComputePipelineDescriptor, MTLComputePipelineState */
static inline void msg_setComputeFunction_(id desc, id function)
{
    MC__MTL_SEND(void, (id, SEL, id), desc, MC__SEL(setComputeFunction_), function);
}
static inline void msg_setMaxTotalThreadsPerThreadgroup_(id desc, NSUInteger n)
{
    MC__MTL_SEND(void, (id, SEL, NSUInteger), desc, MC__SEL(setMaxTotalThreadsPerThreadgroup_), n);
}
static inline void msg_setThreadGroupSizeIsMultipleOfThreadExecutionWidth_(id desc, BOOL on)
{
    MC__MTL_SEND(void, (id, SEL, BOOL), desc, MC__SEL(setThreadGroupSizeIsMultipleOfThreadExecutionWidth_), on);
}
static inline void msg_setBinaryArchives_(id desc, id array)
{
    MC__MTL_SEND(void, (id, SEL, id), desc, MC__SEL(setBinaryArchives_), array);
}
static inline void msg_setSupportIndirectCommandBuffers_(id desc, BOOL on)
{
    MC__MTL_SEND(void, (id, SEL, BOOL), desc, MC__SEL(setSupportIndirectCommandBuffers_), on);
}
static inline NSUInteger msg_maxTotalThreadsPerThreadgroup(id pipeline)
{
    return MC__MTL_SEND(NSUInteger, (id, SEL), pipeline, MC__SEL(maxTotalThreadsPerThreadgroup));
}
static inline NSUInteger msg_threadExecutionWidth(id pipeline)
{
    return MC__MTL_SEND(NSUInteger, (id, SEL), pipeline, MC__SEL(threadExecutionWidth));
}
static inline NSUInteger msg_staticThreadgroupMemoryLength(id pipeline)
{
    return MC__MTL_SEND(NSUInteger, (id, SEL), pipeline, MC__SEL(staticThreadgroupMemoryLength));
}

/* MTLBinaryArchiveDescriptor, MTLBinaryArchive */
static inline void msg_setUrl_(id desc, id url)
{
    MC__MTL_SEND(void, (id, SEL, id), desc, MC__SEL(setUrl_), url);
}
static inline BOOL msg_addComputePipelineFunctionsWithDescriptor_error_(id archive, id desc, id *error)
{
    return MC__MTL_SEND(BOOL, (id, SEL, id, id *), archive, MC__SEL(addComputePipelineFunctionsWithDescriptor_error_),
                        desc, error);
}
static inline BOOL msg_serializeToURL_error_(id archive, id url, id *error)
{
    return MC__MTL_SEND(BOOL, (id, SEL, id, id *), archive, MC__SEL(serializeToURL_error_), url, error);
}

/* MTLCommandQueue, MTLCommandBufferDescriptor */
static inline id msg_commandBufferWithDescriptor_(id queue, id desc)
{
    return MC__MTL_SEND(id, (id, SEL, id), queue, MC__SEL(commandBufferWithDescriptor_), desc);
}
static inline void msg_setErrorOptions_(id desc, MTLCommandBufferErrorOption options)
{
    MC__MTL_SEND(void, (id, SEL, MTLCommandBufferErrorOption), desc, MC__SEL(setErrorOptions_), options);
}
static inline void msg_setRetainedReferences_(id desc, BOOL on)
{
    MC__MTL_SEND(void, (id, SEL, BOOL), desc, MC__SEL(setRetainedReferences_), on);
}
static inline void msg_addResidencySet_(id queue, id set)
{
    MC__MTL_SEND(void, (id, SEL, id), queue, MC__SEL(addResidencySet_), set);
}
static inline void msg_removeResidencySet_(id queue, id set)
{
    MC__MTL_SEND(void, (id, SEL, id), queue, MC__SEL(removeResidencySet_), set);
}

/* MTLCommandBuffer */
static inline id msg_computeCommandEncoderWithDispatchType_(id cmdbuf, MTLDispatchType type)
{
    return MC__MTL_SEND(id, (id, SEL, MTLDispatchType), cmdbuf, MC__SEL(computeCommandEncoderWithDispatchType_), type);
}
static inline id msg_blitCommandEncoder(id cmdbuf)
{
    return MC__MTL_SEND(id, (id, SEL), cmdbuf, MC__SEL(blitCommandEncoder));
}
static inline void msg_encodeSignalEvent_value_(id cmdbuf, id event, uint64_t value)
{
    MC__MTL_SEND(void, (id, SEL, id, uint64_t), cmdbuf, MC__SEL(encodeSignalEvent_value_), event, value);
}
static inline void msg_encodeWaitForEvent_value_(id cmdbuf, id event, uint64_t value)
{
    MC__MTL_SEND(void, (id, SEL, id, uint64_t), cmdbuf, MC__SEL(encodeWaitForEvent_value_), event, value);
}
static inline void msg_addScheduledHandler_(id cmdbuf, MTLCommandBufferHandler block)
{
    MC__MTL_SEND(void, (id, SEL, MTLCommandBufferHandler), cmdbuf, MC__SEL(addScheduledHandler_), block);
}
static inline void msg_addCompletedHandler_(id cmdbuf, MTLCommandBufferHandler block)
{
    MC__MTL_SEND(void, (id, SEL, MTLCommandBufferHandler), cmdbuf, MC__SEL(addCompletedHandler_), block);
}
static inline void msg_commit(id obj)
{
    MC__MTL_SEND(void, (id, SEL), obj, MC__SEL(commit));
}
static inline MTLCommandBufferStatus msg_status(id cmdbuf)
{
    return MC__MTL_SEND(MTLCommandBufferStatus, (id, SEL), cmdbuf, MC__SEL(status));
}
static inline id msg_error(id cmdbuf)
{
    return MC__MTL_SEND(id, (id, SEL), cmdbuf, MC__SEL(error));
}
static inline CFTimeInterval msg_GPUStartTime(id cmdbuf)
{
    return MC__MTL_SEND(CFTimeInterval, (id, SEL), cmdbuf, MC__SEL(GPUStartTime));
}
static inline CFTimeInterval msg_GPUEndTime(id cmdbuf)
{
    return MC__MTL_SEND(CFTimeInterval, (id, SEL), cmdbuf, MC__SEL(GPUEndTime));
}
static inline MTLCommandEncoderErrorState msg_errorState(id info)
{
    return MC__MTL_SEND(MTLCommandEncoderErrorState, (id, SEL), info, MC__SEL(errorState));
}

/* MTLComputeCommandEncoder, MTLBlitCommandEncoder */
static inline void msg_setComputePipelineState_(id enc, id pipeline)
{
    MC__MTL_SEND(void, (id, SEL, id), enc, MC__SEL(setComputePipelineState_), pipeline);
}
static inline void msg_setBuffer_offset_atIndex_(id enc, id buffer, NSUInteger offset, NSUInteger index)
{
    MC__MTL_SEND(void, (id, SEL, id, NSUInteger, NSUInteger), enc, MC__SEL(setBuffer_offset_atIndex_), buffer, offset,
                 index);
}
static inline void msg_setBytes_length_atIndex_(id enc, const void *bytes, NSUInteger length, NSUInteger index)
{
    MC__MTL_SEND(void, (id, SEL, const void *, NSUInteger, NSUInteger), enc, MC__SEL(setBytes_length_atIndex_), bytes,
                 length, index);
}
static inline void msg_setThreadgroupMemoryLength_atIndex_(id enc, NSUInteger length, NSUInteger index)
{
    MC__MTL_SEND(void, (id, SEL, NSUInteger, NSUInteger), enc, MC__SEL(setThreadgroupMemoryLength_atIndex_), length,
                 index);
}
static inline void msg_dispatchThreadgroups_threadsPerThreadgroup_(id enc, MTLSize groups, MTLSize threads)
{
    MC__MTL_SEND(void, (id, SEL, MTLSize, MTLSize), enc, MC__SEL(dispatchThreadgroups_threadsPerThreadgroup_), groups,
                 threads);
}
static inline void msg_dispatchThreadgroupsWithIndirectBuffer_indirectBufferOffset_threadsPerThreadgroup_(
    id enc, id buffer, NSUInteger offset, MTLSize threads)
{
    MC__MTL_SEND(void, (id, SEL, id, NSUInteger, MTLSize), enc,
                 MC__SEL(dispatchThreadgroupsWithIndirectBuffer_indirectBufferOffset_threadsPerThreadgroup_), buffer,
                 offset, threads);
}
static inline void msg_memoryBarrierWithScope_(id enc, MTLBarrierScope scope)
{
    MC__MTL_SEND(void, (id, SEL, MTLBarrierScope), enc, MC__SEL(memoryBarrierWithScope_), scope);
}
static inline void msg_copyFromBuffer_sourceOffset_toBuffer_destinationOffset_size_(id enc, id src, NSUInteger src_off,
                                                                                    id dst, NSUInteger dst_off,
                                                                                    NSUInteger size)
{
    MC__MTL_SEND(void, (id, SEL, id, NSUInteger, id, NSUInteger, NSUInteger), enc,
                 MC__SEL(copyFromBuffer_sourceOffset_toBuffer_destinationOffset_size_), src, src_off, dst, dst_off,
                 size);
}
static inline void msg_fillBuffer_range_value_(id enc, id buffer, NSRange range, uint8_t value)
{
    MC__MTL_SEND(void, (id, SEL, id, NSRange, uint8_t), enc, MC__SEL(fillBuffer_range_value_), buffer, range, value);
}
static inline void msg_endEncoding(id enc)
{
    MC__MTL_SEND(void, (id, SEL), enc, MC__SEL(endEncoding));
}
static inline void msg_useResources_count_usage_(id enc, const id *resources, NSUInteger n, MTLResourceUsage usage)
{
    MC__MTL_SEND(void, (id, SEL, const id *, NSUInteger, MTLResourceUsage), enc, MC__SEL(useResources_count_usage_),
                 resources, n, usage);
}
static inline void msg_executeCommandsInBuffer_withRange_(id enc, id icb, NSRange range)
{
    MC__MTL_SEND(void, (id, SEL, id, NSRange), enc, MC__SEL(executeCommandsInBuffer_withRange_), icb, range);
}
static inline void msg_executeCommandsInBuffer_indirectBuffer_indirectBufferOffset_(id enc, id icb, id range_buffer,
                                                                                    NSUInteger offset)
{
    MC__MTL_SEND(void, (id, SEL, id, id, NSUInteger), enc,
                 MC__SEL(executeCommandsInBuffer_indirectBuffer_indirectBufferOffset_), icb, range_buffer, offset);
}

/* MTLIndirectCommandBufferDescriptor, MTLIndirectCommandBuffer, MTLIndirectComputeCommand */
static inline void msg_setCommandTypes_(id desc, MTLIndirectCommandType types)
{
    MC__MTL_SEND(void, (id, SEL, MTLIndirectCommandType), desc, MC__SEL(setCommandTypes_), types);
}
static inline void msg_setInheritPipelineState_(id desc, BOOL on)
{
    MC__MTL_SEND(void, (id, SEL, BOOL), desc, MC__SEL(setInheritPipelineState_), on);
}
static inline void msg_setInheritBuffers_(id desc, BOOL on)
{
    MC__MTL_SEND(void, (id, SEL, BOOL), desc, MC__SEL(setInheritBuffers_), on);
}
static inline void msg_setMaxKernelBufferBindCount_(id desc, NSUInteger n)
{
    MC__MTL_SEND(void, (id, SEL, NSUInteger), desc, MC__SEL(setMaxKernelBufferBindCount_), n);
}
static inline void msg_setMaxKernelThreadgroupMemoryBindCount_(id desc, NSUInteger n)
{
    MC__MTL_SEND(void, (id, SEL, NSUInteger), desc, MC__SEL(setMaxKernelThreadgroupMemoryBindCount_), n);
}
static inline id msg_indirectComputeCommandAtIndex_(id icb, NSUInteger index)
{
    return MC__MTL_SEND(id, (id, SEL, NSUInteger), icb, MC__SEL(indirectComputeCommandAtIndex_), index);
}
static inline void msg_setKernelBuffer_offset_atIndex_(id cmd, id buffer, NSUInteger offset, NSUInteger index)
{
    MC__MTL_SEND(void, (id, SEL, id, NSUInteger, NSUInteger), cmd, MC__SEL(setKernelBuffer_offset_atIndex_), buffer,
                 offset, index);
}
static inline void msg_concurrentDispatchThreadgroups_threadsPerThreadgroup_(id cmd, MTLSize groups, MTLSize threads)
{
    MC__MTL_SEND(void, (id, SEL, MTLSize, MTLSize), cmd, MC__SEL(concurrentDispatchThreadgroups_threadsPerThreadgroup_),
                 groups, threads);
}
static inline void msg_setBarrier(id cmd)
{
    MC__MTL_SEND(void, (id, SEL), cmd, MC__SEL(setBarrier));
}
static inline void msg_reset(id cmd)
{
    MC__MTL_SEND(void, (id, SEL), cmd, MC__SEL(reset));
}

/* MTLSharedEvent */
static inline uint64_t msg_signaledValue(id event)
{
    return MC__MTL_SEND(uint64_t, (id, SEL), event, MC__SEL(signaledValue));
}
static inline void msg_setSignaledValue_(id event, uint64_t value)
{
    MC__MTL_SEND(void, (id, SEL, uint64_t), event, MC__SEL(setSignaledValue_), value);
}
static inline BOOL msg_waitUntilSignaledValue_timeoutMS_(id event, uint64_t value, uint64_t ms)
{
    return MC__MTL_SEND(BOOL, (id, SEL, uint64_t, uint64_t), event, MC__SEL(waitUntilSignaledValue_timeoutMS_), value,
                        ms);
}
static inline void msg_notifyListener_atValue_block_(id event, id listener, uint64_t value,
                                                     MTLSharedEventNotificationBlock block)
{
    MC__MTL_SEND(void, (id, SEL, id, uint64_t, MTLSharedEventNotificationBlock), event,
                 MC__SEL(notifyListener_atValue_block_), listener, value, block);
}

/* MTLResidencySetDescriptor, MTLResidencySet (macOS 15, F169) */
static inline void msg_setInitialCapacity_(id desc, NSUInteger n)
{
    MC__MTL_SEND(void, (id, SEL, NSUInteger), desc, MC__SEL(setInitialCapacity_), n);
}
static inline void msg_addAllocation_(id set, id allocation)
{
    MC__MTL_SEND(void, (id, SEL, id), set, MC__SEL(addAllocation_), allocation);
}
static inline void msg_removeAllocation_(id set, id allocation)
{
    MC__MTL_SEND(void, (id, SEL, id), set, MC__SEL(removeAllocation_), allocation);
}
static inline void msg_requestResidency(id set)
{
    MC__MTL_SEND(void, (id, SEL), set, MC__SEL(requestResidency));
}
static inline void msg_endResidency(id set)
{
    MC__MTL_SEND(void, (id, SEL), set, MC__SEL(endResidency));
}

/* ---- runtime helpers (metal_objc.c) -------------------------------------- */

/* The one pair that changes reference counts. NULL (nil) is a no-op. */
id mc__mtl_retain(id obj);
void mc__mtl_release(id obj);

/* Autorelease pools around every entry point that may produce borrowed
 * objects; drained in LIFO order on the same thread. */
id mc__mtl_pool_push(void);
void mc__mtl_pool_pop(id pool);

/* A borrowed NSString (lives in the current pool); NULL -> nil. */
id mc__mtl_str(const char *s);
/* Copies an NSString's UTF-8 into out (always terminated); nil -> "". */
void mc__mtl_cstr(id str, char *out, size_t cap);
/* A malloc'd copy of an NSString's UTF-8, or NULL. */
char *mc__mtl_strdup(id str);
/* "text of err" (localizedDescription), for messages; "" for nil. */
void mc__mtl_error_text(id err, char *out, size_t cap);
bool mc__mtl_responds(id obj, SEL sel);

/* Blocks built by hand after the Block ABI (clang, "Block Implementation
 * Specification"): what `^(id<MTLCommandBuffer> cb) { ... }` compiles to,
 * without needing -fblocks. A literal lives on the stack of the call that
 * passes it; Metal copies it (Block_copy) before returning. */
typedef struct mc__mtl_block mc__mtl_block;
struct mc__mtl_block {
    void *isa; /* &_NSConcreteStackBlock */
    int flags; /* MC__MTL_BLOCK_* */
    int reserved;
    void (*invoke)(void);   /* cast to the block's own prototype */
    const void *descriptor; /* mc__mtl_block_descriptor[_helpers] */
    void *ctx;              /* the captured pointer */
};
#define MC__MTL_BLOCK_HAS_COPY_DISPOSE (1 << 25)
#define MC__MTL_BLOCK_HAS_SIGNATURE (1 << 30)
typedef struct mc__mtl_block_descriptor {
    unsigned long reserved;
    unsigned long size;
    const char *signature;
} mc__mtl_block_descriptor;
typedef struct mc__mtl_block_descriptor_helpers {
    unsigned long reserved;
    unsigned long size;
    void (*copy)(void *dst, const void *src);
    void (*dispose)(const void *src);
    const char *signature;
} mc__mtl_block_descriptor_helpers;
extern void *_NSConcreteStackBlock[32];

/* A stack block calling fn(block, obj) (signature void (^)(id)). */
void mc__mtl_block_init_id(mc__mtl_block *b, void (*fn)(mc__mtl_block *, id), void *ctx);

/* ---- backend objects ------------------------------------------------------ */

typedef struct mc__mtl_device mc__mtl_device;

/* The internal pipelines (metal_pipeline.c, mc__mtl_util_pipeline). */
enum {
    MC__MTL_UTIL_COPY = 0,
    MC__MTL_UTIL_FILL = 1,
    MC__MTL_UTIL_CLAMP_RANGE = 2,
    MC__MTL_UTIL_CHECK_GRID = 3,
    MC__MTL_UTIL_COUNT = 4
};

struct mc__mtl_device {
    id device;    /* MTLDevice (+1) */
    id cbdesc[2]; /* MTLCommandBufferDescriptor: [0] retained, [1] unretained references (F676) */
    id residency; /* MTLResidencySet (macOS 15, F169) or nil */
    bool residency_dirty;
    /* Optional features, probed once at open with respondsToSelector: /
     * supportsFamily: so that a GPU without them (the paravirtual GPU of
     * hosted macOS runners, an older OS) reports them absent instead of
     * raising an unrecognized selector (mc__mtl_probe). */
    bool has_wait_timeout;           /* MTLSharedEvent responds to waitUntilSignaledValue:timeoutMS: (F692) */
    bool has_icb;                    /* ICB compute commands: Apple7 or Mac2 family (F670) */
    bool has_archive;                /* MTLBinaryArchive (macOS 11, F697) */
    bool icb_pipeline_fix;           /* empty dispatch per pipeline before an ICB (metal_queue.c) */
    id listener;                     /* MTLSharedEventListener, made on first need */
    id util_pso[MC__MTL_UTIL_COUNT]; /* internal pipelines (MC__MTL_UTIL_*), made on first need */
    pthread_mutex_t lock;
    atomic_int lost;
    atomic_uint gpu_errors;              /* failed command buffers on this device so far */
    char lost_msg[256];                  /* written once, under lock, before lost is set */
    MTLLanguageVersion default_language; /* explicit, from the OS version (F171) */
    MTLLanguageVersion max_language;     /* the newest this OS accepts */
    char os_version[96];                 /* "macOS 15.1 24B83" */
    mc_device_info info;
};

typedef struct mc__mtl_buffer {
    id buffer; /* MTLBuffer, shared storage (+1) */
    void *host;
    size_t size;
} mc__mtl_buffer;

typedef struct mc__mtl_library {
    id library; /* MTLLibrary (+1) */
} mc__mtl_library;

typedef struct mc__mtl_pipeline {
    id pso; /* MTLComputePipelineState (+1) */
    mc_pipeline_info info;
} mc__mtl_pipeline;

typedef struct mc__mtl_event {
    id event; /* MTLSharedEvent (+1) */
} mc__mtl_event;

typedef struct mc__mtl_queue {
    mc__mtl_device *dev;
    pthread_mutex_t lock;
    id queue; /* MTLCommandQueue (+1) */
    char *label;
    uint64_t seq;        /* submissions committed so far */
    uint64_t failed_seq; /* the first that failed, 0 = none */
    mc_status failed;    /* its status, MC_OK = none */
    uint32_t inflight;   /* committed, completion not yet handled */
    uint32_t recreated;  /* Metal queues replaced after a failure (F687) */
} mc__mtl_queue;

/* ---- between the files ------------------------------------------------------ */

extern const mc__hal mc__metal_hal;

mc_status mc__mtl_device_lost_status(mc__mtl_device *dev);

/* The MSL version Apple documents for an OS major version (MTLLanguageVersion
 * availability: 2.3 macOS 11, 2.4 macOS 12, 3.0 macOS 13, 3.1 macOS 14, 3.2
 * macOS 15); 0 for an OS older than 11. */
MTLLanguageVersion mc__mtl_newest_language(int os_major);
/* Commits pending residency-set changes (dev->lock held by the caller). */
void mc__mtl_residency_commit_locked(mc__mtl_device *dev);

/* Builds an MSL library; *log (malloc'd) gets the compiler output on
 * MC_ERR_COMPILE. */
mc_status mc__mtl_compile(mc__mtl_device *dev, const char *source, size_t len, const char *options, id *library,
                          char **log);
/* The internal pipelines (MC__MTL_UTIL_*: unaligned copies and fills, list
 * ranges, grid checks), built on first use; nil and a recorded error when
 * they cannot be. */

id mc__mtl_util_pipeline(mc__mtl_device *dev, int which);

mc_status mc__mtl_library_create(void *dev, mc_language lang, const char *source, size_t len, const char *options,
                                 void **lib, char **log);
void mc__mtl_library_destroy(void *dev, void *lib);
mc_status mc__mtl_pipeline_create(void *dev, void *lib, const mc_pipeline_desc *desc, void **pipeline,
                                  mc_pipeline_info *info);
void mc__mtl_pipeline_destroy(void *dev, void *pipeline);
mc_status mc__mtl_compiler_identity(void *dev, mc_language lang, char *out, size_t cap);
mc_status mc__mtl_pipeline_export(void *dev, const mc__pipeline_src *src, void *lib, void *pipeline, void **bytes,
                                  size_t *len);
mc_status mc__mtl_pipeline_import(void *dev, const mc__pipeline_src *src, const void *bytes, size_t len,
                                  bool fail_on_miss, void **lib, void **pipeline, mc_pipeline_info *info);

/* Buffers the backend makes for itself (shared storage, in the residency
 * set like the engine's). */
mc_status mc__mtl_buffer_new(mc__mtl_device *dev, size_t size, const char *label, mc__mtl_buffer **out);
void mc__mtl_buffer_free(mc__mtl_device *dev, mc__mtl_buffer *b);

/* A command list (metal_list.c): an indirect command buffer of concurrent
 * dispatches (F149, F670), or, for a recording with indirect dispatches
 * (which ICB commands cannot do), the recording itself, encoded into the
 * pass at each execution. */
typedef struct mc__mtl_list {
    id icb;               /* MTLIndirectCommandBuffer (+1), or nil */
    mc__mtl_buffer *args; /* bytes arguments (ICBs have no setBytes), or NULL */
    id *resources;        /* every MTLBuffer the commands use, for useResources: */
    NSUInteger nresources;
    id *pipelines; /* every pipeline state they use */
    NSUInteger npipelines;
    uint32_t ncommands;
    /* icb nil: the engine's recording (valid until cmdlist_destroy) */
    const mc__cmd *cmds;
    uint32_t ncmd;
    const uint8_t *bytes;
    uint32_t *group; /* each command's first mc__cmd */
    char *label;
} mc__mtl_list;
mc_status mc__mtl_cmdlist_create(void *dev, const mc__list_desc *desc, void **list, uint32_t *caps);
void mc__mtl_cmdlist_destroy(void *dev, void *list);

mc_status mc__mtl_queue_create(void *dev, const char *label, void **queue);
void mc__mtl_queue_destroy(void *dev, void *queue);
mc_status mc__mtl_submit(void *dev, void *queue, mc__submission *sub);

/* MTLCommandBufferError code (F685) -> taxonomy. */
mc_status mc__mtl_map_error_code(NSInteger code);

#endif
