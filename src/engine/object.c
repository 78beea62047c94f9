/*
 * DOC: Object base and reference counting
 *
 * Reference counts change only through retain/release. When the last
 * reference goes inside a backend's completion context, destruction would
 * re-enter the backend (or join the thread we are on), so it is handed to
 * the device's notifier thread instead (sokol's deferred release).
 */
#include "engine/engine.h"

#include <stdlib.h>

_Thread_local int mc__in_completion;

void mc__object_init(mc__object *o, uint32_t tag, mc_device *d, const char *label)
{
    o->tag = tag;
    atomic_init(&o->refs, 1);
    o->device = d;
    o->label = mc__strdup(label);
    o->deferred.next = NULL;
    o->deferred.run = NULL;
}

bool mc__object_check(const void *o, uint32_t tag)
{
    return o && ((const mc__object *)o)->tag == tag;
}

mc_device *mc__object_device(const void *h)
{
    if (!h) return NULL;
    const mc__object *o = h;
    switch (o->tag) {
    case MC__TAG_DEVICE: return (mc_device *)h;
    case MC__TAG_BUFFER:
    case MC__TAG_LIBRARY:
    case MC__TAG_PIPELINE:
    case MC__TAG_QUEUE:
    case MC__TAG_CMDBUF:
    case MC__TAG_EVENT:
    case MC__TAG_CMDLIST:
    case MC__TAG_LISTREC: return o->device;
    default: return NULL;
    }
}

void mc__object_retain(mc__object *o)
{
    if (o) atomic_fetch_add_explicit(&o->refs, 1, memory_order_relaxed);
}

static void destroy_now(mc__object *o)
{
    switch (o->tag) {
    case MC__TAG_DEVICE: mc__device_destroy((mc_device *)o); break;
    case MC__TAG_BUFFER: mc__buffer_destroy((mc_buffer *)o); break;
    case MC__TAG_LIBRARY: mc__library_destroy((mc_library *)o); break;
    case MC__TAG_PIPELINE: mc__pipeline_destroy((mc_pipeline *)o); break;
    case MC__TAG_QUEUE: mc__queue_destroy((mc_queue *)o); break;
    case MC__TAG_CMDBUF: mc__cmdbuf_destroy((mc_cmdbuf *)o); break;
    case MC__TAG_EVENT: mc__event_destroy((mc_event *)o); break;
    case MC__TAG_CMDLIST: mc__cmdlist_destroy((mc_cmdlist *)o); break;
    case MC__TAG_LISTREC: mc__listrec_destroy((mc__listrec *)o); break;
    default: abort(); /* a double release or a wild pointer: fail loudly */
    }
}

static void run_deferred(mc__job *job)
{
    mc__object *o = (mc__object *)((char *)job - offsetof(mc__object, deferred));
    destroy_now(o);
}

void mc__object_release(mc__object *o)
{
    if (!o) return;
    int old = atomic_fetch_sub_explicit(&o->refs, 1, memory_order_acq_rel);
    if (old > 1) return;
    if (old < 1) abort(); /* released more often than retained */
    if (mc__in_completion) {
        /* The device itself is deferred too: its notifier detaches itself. */
        mc_device *d = o->tag == MC__TAG_DEVICE ? (mc_device *)o : o->device;
        o->deferred.run = run_deferred;
        if (mc__notifier_post(d, &o->deferred) == MC_OK) return;
    }
    destroy_now(o);
}
