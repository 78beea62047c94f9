/*
 * metal_runtime_encodings: on a Mac, the Metal device's wrappers checked
 * against the real Objective-C runtime.
 *
 * Each typed wrapper of src/backends/metal/metal.h casts objc_msgSend to a
 * prototype written by hand; one wrong parameter type is a crash or a wrong
 * value on Apple hardware, and only there. This test calls every wrapper
 * once with a nil receiver (a message to nil does nothing and returns zero),
 * which reports the selector and the type encoding of the prototype the
 * wrapper was compiled with (MC_MTL_CONTRACT, MC__MTL_ENC), and compares it
 * with method_getTypeEncoding() of the real method: on the classes of a real
 * device, queue, command buffer, compute and blit encoders, buffer, event,
 * library, function, pipeline state, indirect command buffer and residency
 * set, and on the public Foundation and Metal descriptor classes. It also
 * compares the table the Linux double checks against (metal_encodings.txt)
 * with the same methods. Every mismatch is reported, then the test fails,
 * so the first run on Apple hardware lists them all instead of crashing on
 * one.
 *
 * Compared is what decides how arguments travel: frame offsets, type
 * qualifiers (const, oneway) and struct tags are left out, and BOOL's c
 * (x86_64) equals its B (arm64). A method a GPU does not have (the hosted
 * runners' paravirtual GPU has no indirect command buffers) is reported as
 * not checked, not as a failure: the backend asks with respondsToSelector:
 * before it sends those.
 *
 * Elsewhere than macOS it reports itself skipped (exit 77); the Linux build
 * still compiles the whole check against the declarations shim
 * (MC_MTL_RUNTIME_ENCODINGS_COMPILE_CHECK), and runs it against the
 * contract test's runtime double (MC_MTL_RUNTIME_ENCODINGS_ON_DOUBLE,
 * metal_runtime_encodings_on_double), whose methods report the encodings of
 * metal_encodings.txt: that proves the check's own machinery, not Metal.
 */
#include "backends/metal/metal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SKIP_CODE 77 /* ctest SKIP_RETURN_CODE */

#if defined(__APPLE__) || defined(MC_MTL_RUNTIME_ENCODINGS_COMPILE_CHECK) || defined(MC_MTL_RUNTIME_ENCODINGS_ON_DOUBLE)
#ifdef MC_MTL_RUNTIME_ENCODINGS_ON_DOUBLE
#include "objc_double.h"
#endif

int mc_mtl_runtime_encodings(void);

/* What the last wrapper call noted (MC__MTL_NOTE). */
static SEL g_sel;
static char g_enc[256];
static int g_checked, g_mismatches, g_absent;

void mc__mtl_contract_note(SEL sel, const char *ret, const char *proto, const char *const *enc, int n)
{
#ifdef MC_MTL_RUNTIME_ENCODINGS_ON_DOUBLE
    mcd_contract_note(sel, ret, proto, enc, n); /* the double checks each message as usual */
#else
    (void)ret;
    (void)proto;
#endif
    g_sel = sel;
    g_enc[0] = '\0';
    for (int i = 0; i < n; i++) strncat(g_enc, enc[i], sizeof g_enc - strlen(g_enc) - 1);
}

/* Keeps what decides the calling convention: no offsets (digits), no
 * qualifiers (r n N o O R V) where a type starts, no struct tags, BOOL as B. */
static void normalize(const char *in, char *out, size_t cap)
{
    size_t j = 0;
    bool type_start = true;
    for (const char *p = in; *p && j + 1 < cap; p++) {
        if (*p >= '0' && *p <= '9') {
            type_start = true;
            continue;
        }
        if (type_start && strchr("rnNoORV", *p)) continue;
        if (*p == '{') { /* {tag=...}: drop the tag */
            out[j++] = '{';
            const char *eq = strchr(p, '=');
            if (eq) p = eq;
            else continue;
        }
        out[j++] = *p == 'c' ? 'B' : *p;
        type_start = strchr("{(^", *p) == NULL;
    }
    out[j] = '\0';
}

/* Apple's encodings as written in metal_encodings.txt, when the file is
 * there (MC_METAL_ENCODINGS); "" when not. */
static const char *table_encoding(const char *sel)
{
#ifdef MC_METAL_ENCODINGS
    static char line[1024], enc[256];
    FILE *f = fopen(MC_METAL_ENCODINGS, "r");
    if (!f) return "";
    enc[0] = '\0';
    while (fgets(line, sizeof line, f)) {
        if (line[0] == '#') continue;
        char *b1 = strchr(line, '|'), *b2 = b1 ? strchr(b1 + 1, '|') : NULL;
        if (!b2) continue;
        *b1 = *b2 = '\0';
        char name[256];
        if (sscanf(line, " %255s", name) == 1 && !strcmp(name, sel) && sscanf(b1 + 1, " %255s", enc) == 1) break;
        enc[0] = '\0';
    }
    fclose(f);
    return enc;
#else
    (void)sel;
    return "";
#endif
}

/* Compares the wrapper just called (g_sel, g_enc) with the method of cls
 * (class_method: a class method, like +alloc). */
static void check(Class cls, bool class_method, const char *receiver)
{
    const char *name = g_sel ? sel_getName(g_sel) : "(no note: not sent through MC__MTL_SEND)";
    Method m =
        cls && g_sel ? (class_method ? class_getClassMethod(cls, g_sel) : class_getInstanceMethod(cls, g_sel)) : NULL;
    if (!m) {
        printf("not checked  %c[%s %s]: %s\n", class_method ? '+' : '-', receiver, name,
               cls ? "no such method on this system or GPU" : "no such object on this system or GPU");
        g_absent++;
        g_sel = NULL;
        return;
    }
    const char *real = method_getTypeEncoding(m);
    char a[256], b[256], t[256];
    normalize(g_enc, a, sizeof a);
    normalize(real ? real : "", b, sizeof b);
    const char *table = table_encoding(name);
    normalize(table, t, sizeof t);
    g_checked++;
    if (strcmp(a, b) != 0) {
        printf("MISMATCH     %c[%s %s]: the wrapper's prototype is %s, the runtime's method %s\n",
               class_method ? '+' : '-', receiver, name, g_enc, real ? real : "(none)");
        g_mismatches++;
    }
    if (table[0] && strcmp(t, b) != 0) {
        printf("MISMATCH     %c[%s %s]: metal_encodings.txt says %s, the runtime's method %s\n",
               class_method ? '+' : '-', receiver, name, table, real ? real : "(none)");
        g_mismatches++;
    }
    g_sel = NULL;
}

static Class class_of(id obj)
{
    return obj ? object_getClass(obj) : (Class)0;
}

/* Calls the wrapper with a nil receiver, then compares. */
#define ON(obj, call) (g_sel = NULL, (void)(call), check(class_of(obj), false, #obj))
#define ON_CLASS(cls, call) (g_sel = NULL, (void)(call), check((Class)(cls), false, #cls))
#define ON_META(cls, call) (g_sel = NULL, (void)(call), check((Class)(cls), true, #cls))

int mc_mtl_runtime_encodings(void)
{
    mc__mtl_runtime_init();
    id pool = mc__mtl_pool_push();
    id dev = MTLCreateSystemDefaultDevice();
    if (!dev) {
        printf("SKIPPED: no Metal device on this Mac\n");
        mc__mtl_pool_pop(pool);
        return SKIP_CODE;
    }
    const id nil_ = (id)0;
    const MTLSize z = {0, 0, 0};
    const NSRange r0 = {0, 0};

    /* real objects whose classes are private (protocol implementations) */
    id q = msg_newCommandQueue(dev);
    id cbdesc = msg_init(msg_alloc(mc__mtl_cls.MTLCommandBufferDescriptor));
    id cb = q && cbdesc ? msg_commandBufferWithDescriptor_(q, cbdesc) : nil_;
    id cenc = cb ? msg_computeCommandEncoderWithDispatchType_(cb, MTLDispatchTypeSerial) : nil_;
    if (cenc) msg_endEncoding(cenc);
    id benc = cb ? msg_blitCommandEncoder(cb) : nil_;
    if (benc) msg_endEncoding(benc);
    id buf = msg_newBufferWithLength_options_(dev, 256, MTLResourceStorageModeShared);
    id ev = msg_newSharedEvent(dev);
    id copts = msg_init(msg_alloc(mc__mtl_cls.MTLCompileOptions));
    if (copts) {
        msg_setLanguageVersion_(copts, MC__MTL_LANGUAGE_VERSION(2, 3)); /* macOS 11 has it */
        if (mc__mtl_responds(copts, MC__SEL(setMathMode_))) msg_setMathMode_(copts, MTLMathModeSafe);
        else msg_setFastMathEnabled_(copts, MC__MTL_NO);
    }
    id err = nil_;
    id lib = msg_newLibraryWithSource_options_error_(
        dev, mc__mtl_str("kernel void k(device uint *p [[buffer(0)]]) { p[0] = 1; }"), copts, &err);
    id fn = lib ? msg_newFunctionWithName_(lib, mc__mtl_str("k")) : nil_;
    id pdesc = msg_init(msg_alloc(mc__mtl_cls.MTLComputePipelineDescriptor));
    if (pdesc && fn) {
        msg_setComputeFunction_(pdesc, fn);
        msg_setMaxTotalThreadsPerThreadgroup_(pdesc, 64);
        msg_setThreadGroupSizeIsMultipleOfThreadExecutionWidth_(pdesc, MC__MTL_NO);
    }
    bool icb_ok =
        mc__mtl_responds(dev, MC__SEL(supportsFamily_)) &&
        (msg_supportsFamily_(dev, MC__MTL_GPU_FAMILY_APPLE7) || msg_supportsFamily_(dev, MC__MTL_GPU_FAMILY_MAC2));
    if (pdesc && icb_ok) msg_setSupportIndirectCommandBuffers_(pdesc, MC__MTL_YES);
    id pso = pdesc && fn
                 ? msg_newComputePipelineStateWithDescriptor_options_reflection_error_(dev, pdesc, 0, NULL, &err)
                 : nil_;
    id arch = mc__mtl_responds(dev, MC__SEL(architecture)) ? msg_architecture(dev) : nil_;
    id icbdesc = msg_init(msg_alloc(mc__mtl_cls.MTLIndirectCommandBufferDescriptor));
    id icb = nil_, icmd = nil_;
    if (icbdesc && icb_ok) {
        msg_setCommandTypes_(icbdesc, MTLIndirectCommandTypeConcurrentDispatch);
        msg_setInheritPipelineState_(icbdesc, MC__MTL_NO);
        msg_setInheritBuffers_(icbdesc, MC__MTL_NO);
        msg_setMaxKernelBufferBindCount_(icbdesc, 1);
        icb = msg_newIndirectCommandBufferWithDescriptor_maxCommandCount_options_(dev, icbdesc, 1,
                                                                                  MTLResourceStorageModeShared);
        icmd = icb ? msg_indirectComputeCommandAtIndex_(icb, 0) : nil_;
    }
    id adesc =
        mc__mtl_cls.MTLBinaryArchiveDescriptor ? msg_init(msg_alloc(mc__mtl_cls.MTLBinaryArchiveDescriptor)) : nil_;
    id archive = adesc && mc__mtl_responds(dev, MC__SEL(newBinaryArchiveWithDescriptor_error_))
                     ? msg_newBinaryArchiveWithDescriptor_error_(dev, adesc, &err)
                     : nil_;
    id rdesc =
        mc__mtl_cls.MTLResidencySetDescriptor ? msg_init(msg_alloc(mc__mtl_cls.MTLResidencySetDescriptor)) : nil_;
    id rset = rdesc && mc__mtl_responds(dev, MC__SEL(newResidencySetWithDescriptor_error_))
                  ? msg_newResidencySetWithDescriptor_error_(dev, rdesc, &err)
                  : nil_;
    id NSObject_ = (id)objc_getClass("NSObject"), NSError_ = (id)objc_getClass("NSError");
    id MTLFunctionConstant_ = (id)objc_getClass("MTLFunctionConstant");

    /* NSObject, NSAutoreleasePool */
    ON_META(NSObject_, msg_alloc(nil_));
    ON_CLASS(NSObject_, msg_init(nil_));
    ON_CLASS(NSObject_, msg_retain(nil_));
    ON_CLASS(NSObject_, msg_release(nil_));
    ON_CLASS(NSObject_, msg_respondsToSelector_(nil_, MC__SEL(init)));
    ON_CLASS(mc__mtl_cls.NSAutoreleasePool, msg_drain(nil_));
    /* Foundation */
    ON_META(mc__mtl_cls.NSString, msg_stringWithUTF8String_(nil_, ""));
    ON_CLASS(mc__mtl_cls.NSString, msg_UTF8String(nil_));
    ON_CLASS(mc__mtl_cls.NSString, msg_isEqualToString_(nil_, nil_));
    ON_META(mc__mtl_cls.NSURL, msg_fileURLWithPath_(nil_, nil_));
    ON_META(mc__mtl_cls.NSArray, msg_arrayWithObjects_count_(nil_, NULL, 0));
    ON_CLASS(mc__mtl_cls.NSArray, msg_count(nil_));
    ON_CLASS(mc__mtl_cls.NSArray, msg_objectAtIndex_(nil_, 0));
    ON_META(mc__mtl_cls.NSDictionary, msg_dictionaryWithObjects_forKeys_count_(nil_, NULL, NULL, 0));
    ON_CLASS(mc__mtl_cls.NSDictionary, msg_objectForKey_(nil_, nil_));
    ON_CLASS(NSError_, msg_code(nil_));
    ON_CLASS(NSError_, msg_domain(nil_));
    ON_CLASS(NSError_, msg_localizedDescription(nil_));
    ON_CLASS(NSError_, msg_userInfo(nil_));
    ON_META(mc__mtl_cls.NSProcessInfo, msg_processInfo(nil_));
    ON_CLASS(mc__mtl_cls.NSProcessInfo, msg_operatingSystemVersionString(nil_));
    /* MTLDevice */
    ON(dev, msg_name(nil_));
    ON(dev, msg_architecture(nil_));
    ON(arch, msg_name(nil_));
    ON(dev, msg_maxThreadsPerThreadgroup(nil_));
    ON(dev, msg_maxThreadgroupMemoryLength(nil_));
    ON(dev, msg_hasUnifiedMemory(nil_));
    ON(dev, msg_maxBufferLength(nil_));
    ON(dev, msg_supportsFamily_(nil_, 0));
    ON(dev, msg_newBufferWithLength_options_(nil_, 0, 0));
    ON(dev, msg_newLibraryWithSource_options_error_(nil_, nil_, nil_, NULL));
    ON(dev, msg_newComputePipelineStateWithDescriptor_options_reflection_error_(nil_, nil_, 0, NULL, NULL));
    ON(dev, msg_newCommandQueue(nil_));
    ON(dev, msg_newSharedEvent(nil_));
    ON(dev, msg_newBinaryArchiveWithDescriptor_error_(nil_, nil_, NULL));
    ON(dev, msg_newResidencySetWithDescriptor_error_(nil_, nil_, NULL));
    ON(dev, msg_newIndirectCommandBufferWithDescriptor_maxCommandCount_options_(nil_, nil_, 0, 0));
    /* labels, buffers */
    ON(buf, msg_setLabel_(nil_, nil_));
    ON(q, msg_setLabel_(nil_, nil_));
    ON(cb, msg_label(nil_));
    ON(buf, msg_contents(nil_));
    /* MTLCompileOptions, MTLLibrary */
    ON_CLASS(mc__mtl_cls.MTLCompileOptions, msg_setLanguageVersion_(nil_, 0));
    ON_CLASS(mc__mtl_cls.MTLCompileOptions, msg_setMathMode_(nil_, 0));
    ON_CLASS(mc__mtl_cls.MTLCompileOptions, msg_setFastMathEnabled_(nil_, MC__MTL_NO));
    ON_CLASS(mc__mtl_cls.MTLCompileOptions, msg_setPreprocessorMacros_(nil_, nil_));
    ON(lib, msg_newFunctionWithName_(nil_, nil_));
    /* function constants */
    ON(lib, msg_newFunctionWithName_constantValues_error_(nil_, nil_, nil_, NULL));
    ON(fn, msg_functionConstantsDictionary(nil_));
    ON_CLASS(mc__mtl_cls.NSDictionary, msg_allValues(nil_));
    ON_CLASS(mc__mtl_cls.MTLFunctionConstantValues, msg_setConstantValue_type_atIndex_(nil_, NULL, 0, 0));
    ON_CLASS(MTLFunctionConstant_, msg_index(nil_));
    ON_CLASS(MTLFunctionConstant_, msg_type(nil_));
    /* MTLComputePipelineDescriptor, MTLComputePipelineState */
    ON_CLASS(mc__mtl_cls.MTLComputePipelineDescriptor, msg_setComputeFunction_(nil_, nil_));
    ON_CLASS(mc__mtl_cls.MTLComputePipelineDescriptor, msg_setLabel_(nil_, nil_));
    ON_CLASS(mc__mtl_cls.MTLComputePipelineDescriptor, msg_setMaxTotalThreadsPerThreadgroup_(nil_, 0));
    ON_CLASS(mc__mtl_cls.MTLComputePipelineDescriptor,
             msg_setThreadGroupSizeIsMultipleOfThreadExecutionWidth_(nil_, MC__MTL_NO));
    ON_CLASS(mc__mtl_cls.MTLComputePipelineDescriptor, msg_setBinaryArchives_(nil_, nil_));
    ON_CLASS(mc__mtl_cls.MTLComputePipelineDescriptor, msg_setSupportIndirectCommandBuffers_(nil_, MC__MTL_NO));
    ON(pso, msg_maxTotalThreadsPerThreadgroup(nil_));
    ON(pso, msg_threadExecutionWidth(nil_));
    ON(pso, msg_staticThreadgroupMemoryLength(nil_));
    /* binary archives */
    ON_CLASS(mc__mtl_cls.MTLBinaryArchiveDescriptor, msg_setUrl_(nil_, nil_));
    ON(archive, msg_addComputePipelineFunctionsWithDescriptor_error_(nil_, nil_, NULL));
    ON(archive, msg_serializeToURL_error_(nil_, nil_, NULL));
    /* MTLCommandQueue, MTLCommandBufferDescriptor */
    ON(q, msg_commandBufferWithDescriptor_(nil_, nil_));
    ON_CLASS(mc__mtl_cls.MTLCommandBufferDescriptor, msg_setErrorOptions_(nil_, 0));
    ON_CLASS(mc__mtl_cls.MTLCommandBufferDescriptor, msg_setRetainedReferences_(nil_, MC__MTL_NO));
    ON(q, msg_addResidencySet_(nil_, nil_));
    ON(q, msg_removeResidencySet_(nil_, nil_));
    /* MTLCommandBuffer */
    ON(cb, msg_computeCommandEncoderWithDispatchType_(nil_, 0));
    ON(cb, msg_blitCommandEncoder(nil_));
    ON(cb, msg_encodeSignalEvent_value_(nil_, nil_, 0));
    ON(cb, msg_encodeWaitForEvent_value_(nil_, nil_, 0));
    ON(cb, msg_addScheduledHandler_(nil_, NULL));
    ON(cb, msg_addCompletedHandler_(nil_, NULL));
    ON(cb, msg_commit(nil_));
    ON(cb, msg_status(nil_));
    ON(cb, msg_error(nil_));
    ON(cb, msg_GPUStartTime(nil_));
    ON(cb, msg_GPUEndTime(nil_));
    /* errorState belongs to MTLCommandBufferEncoderInfo, whose objects only
     * a faulted command buffer's error holds: not checked here */
    /* MTLComputeCommandEncoder, MTLBlitCommandEncoder */
    ON(cenc, msg_setComputePipelineState_(nil_, nil_));
    ON(cenc, msg_setBuffer_offset_atIndex_(nil_, nil_, 0, 0));
    ON(cenc, msg_setBytes_length_atIndex_(nil_, NULL, 0, 0));
    ON(cenc, msg_setThreadgroupMemoryLength_atIndex_(nil_, 0, 0));
    ON(cenc, msg_dispatchThreadgroups_threadsPerThreadgroup_(nil_, z, z));
    ON(cenc, msg_dispatchThreadgroupsWithIndirectBuffer_indirectBufferOffset_threadsPerThreadgroup_(nil_, nil_, 0, z));
    ON(cenc, msg_memoryBarrierWithScope_(nil_, 0));
    ON(cenc, msg_useResources_count_usage_(nil_, NULL, 0, 0));
    ON(cenc, msg_executeCommandsInBuffer_withRange_(nil_, nil_, r0));
    ON(cenc, msg_executeCommandsInBuffer_indirectBuffer_indirectBufferOffset_(nil_, nil_, nil_, 0));
    ON(cenc, msg_endEncoding(nil_));
    ON(benc, msg_copyFromBuffer_sourceOffset_toBuffer_destinationOffset_size_(nil_, nil_, 0, nil_, 0, 0));
    ON(benc, msg_fillBuffer_range_value_(nil_, nil_, r0, 0));
    ON(benc, msg_endEncoding(nil_));
    /* indirect command buffers */
    ON_CLASS(mc__mtl_cls.MTLIndirectCommandBufferDescriptor, msg_setCommandTypes_(nil_, 0));
    ON_CLASS(mc__mtl_cls.MTLIndirectCommandBufferDescriptor, msg_setInheritPipelineState_(nil_, MC__MTL_NO));
    ON_CLASS(mc__mtl_cls.MTLIndirectCommandBufferDescriptor, msg_setInheritBuffers_(nil_, MC__MTL_NO));
    ON_CLASS(mc__mtl_cls.MTLIndirectCommandBufferDescriptor, msg_setMaxKernelBufferBindCount_(nil_, 0));
    ON_CLASS(mc__mtl_cls.MTLIndirectCommandBufferDescriptor, msg_setMaxKernelThreadgroupMemoryBindCount_(nil_, 0));
    ON(icb, msg_indirectComputeCommandAtIndex_(nil_, 0));
    ON(icb, msg_setLabel_(nil_, nil_));
    ON(icmd, msg_setComputePipelineState_(nil_, nil_));
    ON(icmd, msg_setKernelBuffer_offset_atIndex_(nil_, nil_, 0, 0));
    ON(icmd, msg_setThreadgroupMemoryLength_atIndex_(nil_, 0, 0));
    ON(icmd, msg_concurrentDispatchThreadgroups_threadsPerThreadgroup_(nil_, z, z));
    ON(icmd, msg_setBarrier(nil_));
    ON(icmd, msg_reset(nil_));
    /* MTLSharedEvent */
    ON(ev, msg_signaledValue(nil_));
    ON(ev, msg_setSignaledValue_(nil_, 0));
    ON(ev, msg_waitUntilSignaledValue_timeoutMS_(nil_, 0, 0));
    ON(ev, msg_notifyListener_atValue_block_(nil_, nil_, 0, NULL));
    /* residency sets (macOS 15) */
    ON_CLASS(mc__mtl_cls.MTLResidencySetDescriptor, msg_setInitialCapacity_(nil_, 0));
    ON(rset, msg_addAllocation_(nil_, nil_));
    ON(rset, msg_removeAllocation_(nil_, nil_));
    ON(rset, msg_commit(nil_));
    ON(rset, msg_requestResidency(nil_));
    ON(rset, msg_endResidency(nil_));

    id owned[] = {rset, rdesc, archive, adesc, icb, icbdesc, pso, pdesc, fn, lib, copts, ev, buf, cbdesc, q, dev};
    for (size_t i = 0; i < sizeof owned / sizeof owned[0]; i++) mc__mtl_release(owned[i]);
    mc__mtl_pool_pop(pool);
    printf("%d methods compared, %d mismatches, %d not checked (absent here)\n", g_checked, g_mismatches, g_absent);
    if (g_mismatches) printf("FAIL: fix each wrapper's prototype in metal.h (and metal_encodings.txt) to match\n");
    return g_mismatches ? 1 : 0;
}

#endif

#ifndef MC_MTL_RUNTIME_ENCODINGS_COMPILE_CHECK
int main(void)
{
#if defined(__APPLE__)
    return mc_mtl_runtime_encodings();
#elif defined(MC_MTL_RUNTIME_ENCODINGS_ON_DOUBLE)
    if (!mcd_abi_supported()) {
        printf("SKIPPED: the objc_msgSend double needs x86_64 Linux\n");
        return SKIP_CODE;
    }
    setenv("MTL_DEBUG_LAYER", "1", 1);
    mcd_os os = {.residency_sets = true,
                 .wait_timeout = true,
                 .math_mode = true,
                 .architecture = true,
                 .version = "Version 15.1 (Build 24B83)",
                 .major = 15};
    mcd_begin(&os);
    int rc = mc_mtl_runtime_encodings();
    if (!rc && g_checked < 100) {
        printf("FAIL: only %d methods compared\n", g_checked);
        rc = 1;
    }
    /* The check can fail: a prototype with NSUInteger where Apple has
     * NSInteger (setMathMode:) must be reported. */
    int before = g_mismatches;
    g_sel = MC__SEL(setMathMode_);
    snprintf(g_enc, sizeof g_enc, "v@:Q");
    check((Class)mc__mtl_cls.MTLCompileOptions, false, "planted");
    if (g_mismatches != before + 1) {
        printf("FAIL: the planted mismatch was not reported\n");
        rc = 1;
    }
    int v = mcd_end();
    if (v) printf("FAIL: %d violations of the double's rules\n", v);
    return rc || v;
#else
    printf(
        "SKIPPED: compares the Metal wrappers with the Objective-C runtime's method encodings, which needs "
        "macOS with Metal; here the check is only compiled (mc_metal_runtime_encodings_compile_check)\n");
    return SKIP_CODE;
#endif
}
#endif
