/*
 * Declarations-only stand-in for <objc/runtime.h>, used on Linux ONLY: to
 * compile-check src/backends/metal/ with warnings as errors and to build the
 * contract test against the Objective-C runtime double (tests/metal/). It is
 * never on the include path of a macOS build, where the system header is.
 *
 * The types follow the Objective-C runtime's public headers (objc4): an
 * object is a pointer to struct objc_object, a selector an opaque pointer,
 * BOOL is bool on arm64 and signed char elsewhere.
 */
#ifndef MC_LINUX_CHECK_OBJC_RUNTIME_H
#define MC_LINUX_CHECK_OBJC_RUNTIME_H

#include <stdbool.h>

#if defined(__APPLE__)
#error "linux_check/objc is a Linux stand-in; macOS builds use the system <objc/runtime.h>"
#endif

typedef struct objc_class *Class;
typedef struct objc_object {
    Class isa;
} * id;
typedef struct objc_selector *SEL;

#if defined(__aarch64__)
typedef bool BOOL;
#define YES true
#define NO false
#else
typedef signed char BOOL;
#define YES ((BOOL)1)
#define NO ((BOOL)0)
#endif

#ifndef nil
#define nil ((id)0)
#endif

typedef struct objc_method *Method;

SEL sel_registerName(const char *str);
const char *sel_getName(SEL sel);
Class objc_getClass(const char *name);
/* Introspection, used only by tests/metal/runtime_encodings.c (compiled,
 * not run, on Linux). */
Class object_getClass(id obj);
Method class_getInstanceMethod(Class cls, SEL name);
Method class_getClassMethod(Class cls, SEL name);
const char *method_getTypeEncoding(Method m);

#endif
