/*
 * Between the double's files: the machine-level arguments of one message,
 * as objc_double_x86_64.c collects them, and the dispatcher that checks and
 * runs it (objc_double.c).
 */
#ifndef MC_TESTS_METAL_OBJC_DOUBLE_INTERNAL_H
#define MC_TESTS_METAL_OBJC_DOUBLE_INTERNAL_H

#include "objc_double.h"

#include <objc/runtime.h> /* the Linux stand-in: id, SEL, BOOL */

#if defined(__x86_64__) && defined(__linux__)
#define MCD_ABI_SUPPORTED 1
#else
#define MCD_ABI_SUPPORTED 0
#endif

/* The argument registers and stack words a message arrived with. */
typedef struct mcd_raw {
    uintptr_t reg[4];    /* integer registers after self and _cmd, in order */
    int nreg;            /* how many of them carry arguments (3 for _stret) */
    double fp[8];        /* xmm0-xmm7 */
    uintptr_t stack[16]; /* the caller's stack arguments, in order */
} mcd_raw;

/* A method's result: integer class (rax), double (xmm0) or MTLSize (memory). */
typedef struct mcd_out {
    uintptr_t i;
    double d;
    uintptr_t s[3];
} mcd_out;

/* One documented selector from metal_selectors.txt. */
typedef struct doc_entry {
    char sel[128];
    char ret[64];    /* normalised C type */
    char proto[512]; /* "(id,SEL,T1,T2)", normalised */
    int nparams;
    char param[8][48]; /* normalised C types */
} doc_entry;

void mcd_dispatch(id self, SEL op, const mcd_raw *raw, bool stret, mcd_out *out);
void mcd_normalize(const char *in, char *out, size_t cap);
void violation(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
