/*
 * objc_msgSend and objc_msgSend_stret for the test double, x86_64 System V.
 *
 * The backend never calls objc_msgSend as a variadic function: each wrapper
 * casts it to the exact prototype of the method, e.g.
 *     void (*)(id, SEL, id, NSUInteger, NSUInteger)   setBuffer:offset:atIndex:
 * so the caller lays out the arguments as for that prototype. This file
 * receives them with one catch-all prototype whose slots line up with where
 * the System V ABI puts arguments of any prototype:
 *   - INTEGER-class arguments (pointers, integers, BOOL, enums) in rdi, rsi,
 *     rdx, rcx, r8, r9: self, _cmd, then a2..a5 below;
 *   - double arguments in xmm0-xmm7: f0..f7, independent of the integers;
 *   - what does not fit, and every struct over 16 bytes (MTLSize, 24 bytes:
 *     MEMORY class), on the stack in argument order: s0..s15 (the caller's
 *     outgoing area, read only; parameters are never written, and this file
 *     is built without sibling-call optimisation, so it is never reused);
 *   - a 16-byte struct of two integers (NSRange) in two integer registers if
 *     both are free, else wholly on the stack.
 * Which slots carry the message's arguments is decided afterwards, in
 * mcd_dispatch(), from the method's documented prototype. The result
 * struct {uintptr_t; double} comes back in rax and xmm0, so one function
 * serves integer, pointer, BOOL and double results. Methods returning a
 * struct over 16 bytes (MTLSize) go through objc_msgSend_stret, whose caller
 * passes the result address in rdi (and expects it back in rax).
 *
 * Elsewhere (arm64 passes MTLSize by reference and returns it through x8;
 * no C prototype can stand in for that) the contract test reports itself
 * skipped and these entry points abort.
 */
#include "objc_double_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct mcd_ret {
    uintptr_t i;
    double d;
} mcd_ret;

#if MCD_ABI_SUPPORTED

mcd_ret objc_msgSend(id self, SEL op, uintptr_t a2, uintptr_t a3, uintptr_t a4, uintptr_t a5, double f0, double f1,
                     double f2, double f3, double f4, double f5, double f6, double f7, uintptr_t s0, uintptr_t s1,
                     uintptr_t s2, uintptr_t s3, uintptr_t s4, uintptr_t s5, uintptr_t s6, uintptr_t s7, uintptr_t s8,
                     uintptr_t s9, uintptr_t s10, uintptr_t s11, uintptr_t s12, uintptr_t s13, uintptr_t s14,
                     uintptr_t s15);
void *objc_msgSend_stret(void *ret, id self, SEL op, uintptr_t a3, uintptr_t a4, uintptr_t a5, double f0, double f1,
                         double f2, double f3, double f4, double f5, double f6, double f7, uintptr_t s0, uintptr_t s1,
                         uintptr_t s2, uintptr_t s3, uintptr_t s4, uintptr_t s5, uintptr_t s6, uintptr_t s7,
                         uintptr_t s8, uintptr_t s9, uintptr_t s10, uintptr_t s11, uintptr_t s12, uintptr_t s13,
                         uintptr_t s14, uintptr_t s15);

mcd_ret objc_msgSend(id self, SEL op, uintptr_t a2, uintptr_t a3, uintptr_t a4, uintptr_t a5, double f0, double f1,
                     double f2, double f3, double f4, double f5, double f6, double f7, uintptr_t s0, uintptr_t s1,
                     uintptr_t s2, uintptr_t s3, uintptr_t s4, uintptr_t s5, uintptr_t s6, uintptr_t s7, uintptr_t s8,
                     uintptr_t s9, uintptr_t s10, uintptr_t s11, uintptr_t s12, uintptr_t s13, uintptr_t s14,
                     uintptr_t s15)
{
    mcd_raw raw = {{a2, a3, a4, a5},
                   4,
                   {f0, f1, f2, f3, f4, f5, f6, f7},
                   {s0, s1, s2, s3, s4, s5, s6, s7, s8, s9, s10, s11, s12, s13, s14, s15}};
    mcd_out out;
    mcd_dispatch(self, op, &raw, false, &out);
    mcd_ret r = {out.i, out.d};
    return r;
}

void *objc_msgSend_stret(void *ret, id self, SEL op, uintptr_t a3, uintptr_t a4, uintptr_t a5, double f0, double f1,
                         double f2, double f3, double f4, double f5, double f6, double f7, uintptr_t s0, uintptr_t s1,
                         uintptr_t s2, uintptr_t s3, uintptr_t s4, uintptr_t s5, uintptr_t s6, uintptr_t s7,
                         uintptr_t s8, uintptr_t s9, uintptr_t s10, uintptr_t s11, uintptr_t s12, uintptr_t s13,
                         uintptr_t s14, uintptr_t s15)
{
    mcd_raw raw = {{a3, a4, a5, 0},
                   3,
                   {f0, f1, f2, f3, f4, f5, f6, f7},
                   {s0, s1, s2, s3, s4, s5, s6, s7, s8, s9, s10, s11, s12, s13, s14, s15}};
    mcd_out out;
    mcd_dispatch(self, op, &raw, true, &out);
    memcpy(ret, out.s, sizeof out.s);
    return ret;
}

#else

void objc_msgSend(void);
void objc_msgSend_stret(void);

void objc_msgSend(void)
{
    fprintf(stderr, "objc double: objc_msgSend is only stood in for on x86_64 Linux\n");
    abort();
}

void objc_msgSend_stret(void)
{
    objc_msgSend();
}

#endif
