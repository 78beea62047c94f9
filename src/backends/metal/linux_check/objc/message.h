/*
 * Declarations-only stand-in for <objc/message.h> (Linux compile check and
 * contract test only; see runtime.h beside it).
 *
 * As in the system header built with OBJC_OLD_DISPATCH_PROTOTYPES=0, the
 * dispatch functions have no usable prototype: every call site must cast
 * them to the exact prototype of the method it sends (never call them as
 * variadic functions: on arm64 variadic arguments travel on the stack, where
 * the method does not look for them).
 */
#ifndef MC_LINUX_CHECK_OBJC_MESSAGE_H
#define MC_LINUX_CHECK_OBJC_MESSAGE_H

#include <objc/runtime.h>

void objc_msgSend(void);
#if defined(__x86_64__) || defined(__i386__)
/* Methods returning structs larger than 16 bytes (x86_64: memory class)
 * use this entry; the caller passes the result address first. arm64 has no
 * _stret variant: objc_msgSend returns them through x8. */
void objc_msgSend_stret(void);
#endif

#endif
