/*
 * DOC: Metal device: the Objective-C runtime from C
 *
 * Selectors are registered and classes looked up once per process
 * (pthread_once); every wrapper in metal.h reads them from mc__mtl_sel /
 * mc__mtl_cls. Reference counts change only in mc__mtl_retain /
 * mc__mtl_release; autorelease pools are NSAutoreleasePool objects pushed
 * and drained around entry points (the documented manual-reference-counting
 * form of @autoreleasepool). Blocks for Metal's callbacks are built by hand
 * after the Block ABI.
 */
#include "backends/metal/metal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

mc__mtl_selectors mc__mtl_sel;
mc__mtl_classes mc__mtl_cls;

static pthread_once_t runtime_once = PTHREAD_ONCE_INIT;

static void runtime_init_once(void)
{
#define MC__MTL_SEL_REGISTER(field, name) mc__mtl_sel.field = sel_registerName(name);
    MC__MTL_SELECTORS(MC__MTL_SEL_REGISTER)
#undef MC__MTL_SEL_REGISTER
#define MC__MTL_CLS_LOOKUP(cls) mc__mtl_cls.cls = (id)objc_getClass(#cls);
    MC__MTL_CLASSES(MC__MTL_CLS_LOOKUP)
#undef MC__MTL_CLS_LOOKUP
}

void mc__mtl_runtime_init(void)
{
    pthread_once(&runtime_once, runtime_init_once);
}

id mc__mtl_retain(id obj)
{
    return obj ? msg_retain(obj) : obj;
}

void mc__mtl_release(id obj)
{
    if (obj) msg_release(obj);
}

id mc__mtl_pool_push(void)
{
    return msg_init(msg_alloc(mc__mtl_cls.NSAutoreleasePool));
}

void mc__mtl_pool_pop(id pool)
{
    if (pool) msg_drain(pool); /* drains and deallocates the pool */
}

id mc__mtl_str(const char *s)
{
    return s ? msg_stringWithUTF8String_(mc__mtl_cls.NSString, s) : (id)0;
}

void mc__mtl_cstr(id str, char *out, size_t cap)
{
    if (!cap) return;
    const char *s = str ? msg_UTF8String(str) : NULL;
    snprintf(out, cap, "%s", s ? s : "");
}

char *mc__mtl_strdup(id str)
{
    const char *s = str ? msg_UTF8String(str) : NULL;
    return s ? mc__strdup(s) : NULL;
}

void mc__mtl_error_text(id err, char *out, size_t cap)
{
    mc__mtl_cstr(err ? msg_localizedDescription(err) : (id)0, out, cap);
}

bool mc__mtl_responds(id obj, SEL sel)
{
    return obj && msg_respondsToSelector_(obj, sel);
}

/* The type encoding of void (^)(id): returns void, takes the block and one
 * object; what clang emits for such a block literal. */
static const mc__mtl_block_descriptor block_id_descriptor = {0, sizeof(mc__mtl_block), "v16@?0@8"};

void mc__mtl_block_init_id(mc__mtl_block *b, void (*fn)(mc__mtl_block *, id), void *ctx)
{
    b->isa = _NSConcreteStackBlock;
    b->flags = MC__MTL_BLOCK_HAS_SIGNATURE;
    b->reserved = 0;
    b->invoke = (void (*)(void))fn;
    b->descriptor = &block_id_descriptor;
    b->ctx = ctx;
}
