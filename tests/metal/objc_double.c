/*
 * The Objective-C runtime / Foundation / Metal test double (see
 * objc_double.h). objc_msgSend itself is in objc_double_x86_64.c: it turns
 * the machine-level arguments into words and calls mcd_dispatch(), which
 * checks the message against the documented list and the object ledger and
 * runs the fake class's method.
 *
 * One mutex (G) guards everything; it is never held while a block of the
 * code under test runs or while a queue waits for an event. Objects are
 * never freed during a scenario, so a message to a released object is
 * reported, not a crash.
 */
#include "objc_double_internal.h"

#include "backends/metal/metal.h" /* the declarations this file defines must match */

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#ifndef MC_METAL_ENCODINGS
#error "MC_METAL_ENCODINGS must name tests/metal/metal_encodings.txt"
#endif
#ifndef MC_METAL_SELECTORS
#error "MC_METAL_SELECTORS must name tests/metal/metal_selectors.txt"
#endif

/* ---- objects ------------------------------------------------------------------ */

enum kind {
    K_CLASS = 1,
    K_POOL,
    K_STRING,
    K_URL,
    K_ARRAY,
    K_DICT,
    K_ERROR,
    K_PROCINFO,
    K_DEVICE,
    K_ARCH,
    K_BUFFER,
    K_COPTS,
    K_LIBRARY,
    K_FUNCTION,
    K_PDESC,
    K_PSO,
    K_ADESC,
    K_ARCHIVE,
    K_QUEUE,
    K_CBDESC,
    K_CMDBUF,
    K_CENC,
    K_BENC,
    K_EVENT,
    K_LISTENER,
    K_RDESC,
    K_RSET,
    K_EINFO,
    K_ICBDESC,
    K_ICB,
    K_ICMD,
    K_FCVALUES,
    K_FCONST,
    K_COUNT
};

static const char *const kind_names[K_COUNT] = {"?",
                                                "Class",
                                                "NSAutoreleasePool",
                                                "NSString",
                                                "NSURL",
                                                "NSArray",
                                                "NSDictionary",
                                                "NSError",
                                                "NSProcessInfo",
                                                "MTLDevice",
                                                "MTLArchitecture",
                                                "MTLBuffer",
                                                "MTLCompileOptions",
                                                "MTLLibrary",
                                                "MTLFunction",
                                                "MTLComputePipelineDescriptor",
                                                "MTLComputePipelineState",
                                                "MTLBinaryArchiveDescriptor",
                                                "MTLBinaryArchive",
                                                "MTLCommandQueue",
                                                "MTLCommandBufferDescriptor",
                                                "MTLCommandBuffer",
                                                "MTLComputeCommandEncoder",
                                                "MTLBlitCommandEncoder",
                                                "MTLSharedEvent",
                                                "MTLSharedEventListener",
                                                "MTLResidencySetDescriptor",
                                                "MTLResidencySet",
                                                "MTLCommandBufferEncoderInfo",
                                                "MTLIndirectCommandBufferDescriptor",
                                                "MTLIndirectCommandBuffer",
                                                "MTLIndirectComputeCommand",
                                                "MTLFunctionConstantValues",
                                                "MTLFunctionConstant"};

#define MCD_MAGIC 0x6d63644fu
#define MAX_SLOTS 31
#define MAX_FC 8 /* function constants a library may declare, here */

typedef struct obj obj;
typedef struct op op;

/* A recorded GPU command, with everything it needs captured at encode time. */
struct op {
    enum {
        OP_ENC_BEGIN,
        OP_ENC_END,
        OP_DISPATCH,
        OP_INDIRECT,
        OP_BARRIER,
        OP_COPY,
        OP_FILL,
        OP_SIGNAL,
        OP_WAIT,
        OP_EXEC_ICB
    } type;
    obj *enc;
    obj *pso;
    obj *buf[MAX_SLOTS];
    size_t off[MAX_SLOTS];
    unsigned char *bytes[MAX_SLOTS];
    size_t bytes_len[MAX_SLOTS];
    uintptr_t groups[3], threads[3];
    obj *a, *b; /* copy src/dst, fill/indirect buffer, event; OP_EXEC_ICB: the ICB, its range buffer */
    size_t a_off, b_off, len;
    uint64_t value;
};

typedef struct pending_note {
    obj *listener;
    uint64_t value;
    void *block; /* our heap copy */
    struct pending_note *next;
} pending_note;

struct obj {
    struct objc_object base; /* so that an id points at the object */
    uint32_t magic;
    int kind;
    int refs;
    bool dead, immortal, inited;
    unsigned serial, scenario;
    char origin[96];
    char label[128];
    obj *owner; /* borrowed child, released when the owner goes */
    obj *next_all;
    const char *cls; /* K_CLASS */
    /* payload (by kind) */
    char *str;   /* string, URL path, function / kernel name */
    obj **items; /* array items, dict values, set allocations, queue residency sets */
    obj **keys;  /* dict keys */
    size_t n, cap;
    obj *a, *b, *c; /* see each kind */
    void *mem;      /* buffer */
    size_t len;
    uint64_t value; /* event value */
    long code;      /* error code; encoder info state */
    char **names;   /* library kernels, archive keys */
    size_t nnames;
    obj **committed; /* residency set: allocations as of the last commit */
    size_t ncommitted;
    unsigned long lang; /* compile options */
    bool lang_set, math_set;
    int math;
    bool max_set, simd_set, simd; /* pipeline descriptor */
    unsigned long maxt;
    unsigned long err_opts; /* command buffer descriptor / command buffer */
    bool retained_refs, retained_set;
    /* command buffer */
    op *ops;
    size_t nops, capops;
    void *handlers[16];
    bool handler_is_sched[16];
    int nhandlers;
    bool committed_flag;
    unsigned long status;
    double t0, t1;
    long fail_code;
    int fail_enc;
    int nenc;
    int *enc_state;
    char **enc_label;
    /* queue */
    obj **fifo;
    size_t fhead, ftail, fcap;
    bool stop, worker;
    /* event */
    pending_note *notes;
    /* encoder */
    bool ended;
    obj *pso;
    obj *bind_buf[MAX_SLOTS];
    size_t bind_off[MAX_SLOTS];
    unsigned char *bind_bytes[MAX_SLOTS];
    size_t bind_len[MAX_SLOTS];
    unsigned char **allocs;
    size_t nallocs;
    /* function constants: declared by a library (types), declared and set
     * for a function or pipeline, set in MTLFunctionConstantValues, one for
     * an MTLFunctionConstant */
    unsigned fc_index[MAX_FC];
    unsigned long fc_type[MAX_FC];
    uint64_t fc_value[MAX_FC];
    bool fc_set[MAX_FC];
    char fc_name[MAX_FC][32];
    size_t nfc;
    obj **used; /* compute encoder: resources passed to useResources:count:usage: */
    size_t nused;
    /* indirect command buffers (F670): descriptor, ICB, its commands */
    unsigned long icb_types, icb_maxbind, icb_max_tgbind;
    bool icb_inherit_pso, icb_inherit_buf;
    bool icb_ok;        /* pipeline descriptor / state: supportIndirectCommandBuffers */
    struct icmd *icmds; /* ICB: one per command */
    obj **icmd_objs;    /* ICB: the command objects handed out (borrowed children) */
    size_t nicmds;
};

/* One command of an indirect command buffer. */
typedef struct icmd {
    bool encoded, barrier;
    obj *pso;
    obj *buf[MAX_SLOTS];
    size_t off[MAX_SLOTS];
    uintptr_t groups[3], threads[3];
} icmd;

struct objc_selector {
    char *name;
    int registrations;
    const doc_entry *doc;
    const char *encoding; /* Apple's type encoding (metal_encodings.txt), or NULL */
    unsigned long count;
    struct objc_selector *next;
};

static pthread_mutex_t G = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t gpu_cv = PTHREAD_COND_INITIALIZER;  /* queue work, pause */
static pthread_cond_t ev_cv = PTHREAD_COND_INITIALIZER;   /* event values */
static pthread_cond_t idle_cv = PTHREAD_COND_INITIALIZER; /* threads and GPU idle */

static mcd_os g_os;
static mcd_stats g_stats;
static unsigned g_scenario;
static unsigned g_serial;
static obj *g_all;
static obj **g_set;
static size_t g_set_cap, g_set_n;
static struct objc_selector *g_sels;
static doc_entry *g_docs;
static size_t g_ndocs;
static int g_workers;   /* queue worker threads alive */
static int g_notifiers; /* listener notification threads alive */
static int g_executing; /* command buffers being run */
static bool g_paused;
static int g_plan_nth;
static long g_plan_code;
static int g_plan_enc;
static obj *g_device;  /* the system's GPU, held by the system */
static obj *g_device2; /* another GPU, when the scenario has one */
static obj *g_procinfo;

static int g_violations;
static char g_last_violation[512];

static _Thread_local const char *tls_note_ret, *tls_note_proto;
static _Thread_local char tls_note_enc[256];
static _Thread_local SEL tls_note_sel;
static _Thread_local obj *tls_pools[64];
static _Thread_local int tls_npools;

void violation(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(g_last_violation, sizeof g_last_violation, fmt, ap);
    va_end(ap);
    g_violations++;
    fprintf(stderr, "VIOLATION: %s\n", g_last_violation);
}

/* ---- the documented selector list --------------------------------------------- */

static char *trim(char *s)
{
    while (*s == ' ' || *s == '\t') s++;
    size_t n = strlen(s);
    while (n && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\n' || s[n - 1] == '\r')) s[--n] = '\0';
    return s;
}

void mcd_normalize(const char *in, char *out, size_t cap)
{
    size_t j = 0;
    for (; *in && j + 1 < cap; in++)
        if (*in != ' ' && *in != '\t') out[j++] = *in;
    out[j] = '\0';
}

static void load_docs(void)
{
    if (g_docs) return;
    FILE *f = fopen(MC_METAL_SELECTORS, "r");
    if (!f) {
        fprintf(stderr, "objc double: cannot read %s: %s\n", MC_METAL_SELECTORS, strerror(errno));
        abort();
    }
    g_docs = calloc(256, sizeof *g_docs);
    char line[1024];
    while (fgets(line, sizeof line, f)) {
        char *l = trim(line);
        if (!*l || *l == '#') continue;
        char *field[6] = {0};
        int nf = 0;
        for (char *p = l; p && nf < 6; nf++) {
            char *bar = strchr(p, '|');
            if (bar) *bar = '\0';
            field[nf] = trim(p);
            p = bar ? bar + 1 : NULL;
        }
        if (nf != 6 || g_ndocs == 256) {
            fprintf(stderr, "objc double: malformed line in %s: %s\n", MC_METAL_SELECTORS, l);
            abort();
        }
        doc_entry *d = &g_docs[g_ndocs++];
        snprintf(d->sel, sizeof d->sel, "%s", field[0]);
        mcd_normalize(field[1], d->ret, sizeof d->ret);
        char proto[512] = "(id,SEL";
        if (strcmp(field[2], "-") != 0) {
            char *save = NULL;
            for (char *t = strtok_r(field[2], ",", &save); t; t = strtok_r(NULL, ",", &save)) {
                mcd_normalize(t, d->param[d->nparams], sizeof d->param[0]);
                strcat(proto, ",");
                strcat(proto, d->param[d->nparams]);
                d->nparams++;
            }
        }
        strcat(proto, ")");
        snprintf(d->proto, sizeof d->proto, "%s", proto);
        int colons = 0;
        for (const char *c = d->sel; *c; c++) colons += *c == ':';
        if (colons != d->nparams) {
            fprintf(stderr, "objc double: %s lists %d parameters for a selector with %d colons\n", d->sel, d->nparams,
                    colons);
            abort();
        }
    }
    fclose(f);
}

/* Apple's type encodings, one per selector: "selector | encoding | declared
 * in". Written from Apple's headers, independent of the backend's metal.h. */
typedef struct enc_entry {
    char sel[128];
    char enc[128];
} enc_entry;
static enc_entry *g_encs;
static size_t g_nencs;

static void load_encodings(void)
{
    if (g_encs) return;
    FILE *f = fopen(MC_METAL_ENCODINGS, "r");
    if (!f) {
        fprintf(stderr, "objc double: cannot read %s: %s\n", MC_METAL_ENCODINGS, strerror(errno));
        abort();
    }
    g_encs = calloc(256, sizeof *g_encs);
    char line[1024];
    while (fgets(line, sizeof line, f)) {
        char *l = trim(line);
        if (!*l || *l == '#') continue;
        char *b1 = strchr(l, '|'), *b2 = b1 ? strchr(b1 + 1, '|') : NULL;
        if (!b2 || g_nencs == 256) {
            fprintf(stderr, "objc double: malformed line in %s: %s\n", MC_METAL_ENCODINGS, l);
            abort();
        }
        *b1 = *b2 = '\0';
        enc_entry *e = &g_encs[g_nencs++];
        snprintf(e->sel, sizeof e->sel, "%s", trim(l));
        snprintf(e->enc, sizeof e->enc, "%s", trim(b1 + 1));
    }
    fclose(f);
}

static const char *find_encoding(const char *sel)
{
    for (size_t i = 0; i < g_nencs; i++)
        if (!strcmp(g_encs[i].sel, sel)) return g_encs[i].enc;
    return NULL;
}

/* Apple's encodings are written for arm64, where BOOL is bool (B); on
 * x86_64, where this double runs, BOOL is signed char (c). Type qualifiers
 * (r const, V oneway, n/N/o/O/R in/inout/out/bycopy/byref) do not change
 * how arguments travel and are skipped; struct names are compared. */
static bool is_qualifier(const char *p, const char *start)
{
    /* a qualifier begins a type: at the start, or after a complete type */
    bool type_start = p == start || strchr("@:vcBCiIqQfd*?}", p[-1]) != NULL;
    return type_start && strchr("rVnNoOR", *p) != NULL;
}

static bool encoding_equal(const char *apple, const char *sent)
{
    const char *a0 = apple, *s0 = sent;
    for (;;) {
        while (*apple && is_qualifier(apple, a0)) apple++;
        while (*sent && is_qualifier(sent, s0)) sent++;
        if (!*apple || !*sent) break;
        if (*apple != *sent) {
#if !defined(__aarch64__)
            if (!(*apple == 'B' && *sent == 'c')) return false;
#else
            return false;
#endif
        }
        apple++;
        sent++;
    }
    return *apple == *sent;
}

static const doc_entry *find_doc(const char *sel)
{
    for (size_t i = 0; i < g_ndocs; i++)
        if (!strcmp(g_docs[i].sel, sel)) return &g_docs[i];
    return NULL;
}

/* ---- the runtime's C functions ------------------------------------------------- */

static struct objc_selector *sel_lookup_locked(const char *name, bool create)
{
    for (struct objc_selector *s = g_sels; s; s = s->next)
        if (!strcmp(s->name, name)) return s;
    if (!create) return NULL;
    struct objc_selector *s = calloc(1, sizeof *s);
    s->name = strdup(name);
    s->doc = find_doc(name);
    s->encoding = find_encoding(name);
    s->next = g_sels;
    g_sels = s;
    return s;
}

SEL sel_registerName(const char *str)
{
    pthread_mutex_lock(&G);
    load_docs();
    load_encodings();
    struct objc_selector *s = sel_lookup_locked(str, true);
    /* Every selector the backend registers is one it may send. */
    if (s->registrations == 0 && !s->encoding)
        violation("selector '%s' has no Objective-C type encoding in metal_encodings.txt", str);
    /* The backend registers its selectors once per process. */
    if (++s->registrations > 1 && s->doc)
        violation("selector '%s' registered %d times (register once, at first use)", str, s->registrations);
    pthread_mutex_unlock(&G);
    return s;
}

const char *sel_getName(SEL sel)
{
    return sel ? sel->name : "<null selector>";
}

/* ---- ledger ----------------------------------------------------------------------- */

static size_t ptr_hash(const void *p, size_t cap)
{
    uintptr_t x = (uintptr_t)p;
    x ^= x >> 17;
    x *= 0x9e3779b97f4a7c15ull;
    return (size_t)(x >> 20) & (cap - 1);
}

static void set_insert(obj *o)
{
    if ((g_set_n + 1) * 2 > g_set_cap) {
        size_t ncap = g_set_cap ? g_set_cap * 2 : 4096;
        obj **n = calloc(ncap, sizeof *n);
        for (size_t i = 0; i < g_set_cap; i++)
            if (g_set[i]) {
                size_t h = ptr_hash(g_set[i], ncap);
                while (n[h]) h = (h + 1) & (ncap - 1);
                n[h] = g_set[i];
            }
        free(g_set);
        g_set = n;
        g_set_cap = ncap;
    }
    size_t h = ptr_hash(o, g_set_cap);
    while (g_set[h]) h = (h + 1) & (g_set_cap - 1);
    g_set[h] = o;
    g_set_n++;
}

static obj *lookup(const void *p)
{
    if (!p || !g_set_cap) return NULL;
    size_t h = ptr_hash(p, g_set_cap);
    while (g_set[h]) {
        if ((const void *)g_set[h] == p) return g_set[h];
        h = (h + 1) & (g_set_cap - 1);
    }
    return NULL;
}

static obj *new_obj(int kind, const char *origin)
{
    obj *o = calloc(1, sizeof *o);
    o->magic = MCD_MAGIC;
    o->kind = kind;
    o->refs = 1;
    o->serial = ++g_serial;
    o->scenario = g_scenario;
    snprintf(o->origin, sizeof o->origin, "%s", origin);
    o->next_all = g_all;
    g_all = o;
    set_insert(o);
    return o;
}

static const char *describe(const obj *o)
{
    static char buf[4][256];
    static int k;
    char *b = buf[k++ & 3];
    snprintf(b, 256, "%s #%u%s%s%s (from %s)", o->kind == K_CLASS ? o->cls : kind_names[o->kind], o->serial,
             o->label[0] ? " '" : "", o->label, o->label[0] ? "'" : "", o->origin);
    return b;
}

static void die(obj *o);

static void obj_retain(obj *o)
{
    if (!o || o->immortal) return;
    if (o->dead) violation("retain of released %s", describe(o));
    else o->refs++;
}

static void obj_release(obj *o)
{
    if (!o || o->immortal) return;
    if (o->dead) {
        violation("release of %s after its last reference was dropped (double release)", describe(o));
        return;
    }
    if (--o->refs == 0) die(o);
}

static obj *child(obj *owner, int kind, const char *origin)
{
    obj *o = new_obj(kind, origin);
    o->owner = owner;
    return o;
}

static void autorelease(obj *o)
{
    if (tls_npools == 0) {
        violation("%s autoreleased with no autorelease pool in place: it leaks", describe(o));
        return;
    }
    obj *pool = tls_pools[tls_npools - 1];
    if (pool->n == pool->cap) {
        pool->cap = pool->cap ? pool->cap * 2 : 16;
        pool->items = realloc(pool->items, pool->cap * sizeof *pool->items);
    }
    pool->items[pool->n++] = o;
}

static void push_item(obj *holder, obj *item, bool retain)
{
    if (holder->n == holder->cap) {
        holder->cap = holder->cap ? holder->cap * 2 : 8;
        holder->items = realloc(holder->items, holder->cap * sizeof *holder->items);
        if (holder->kind == K_DICT) holder->keys = realloc(holder->keys, holder->cap * sizeof *holder->keys);
    }
    holder->items[holder->n++] = item;
    if (retain) obj_retain(item);
}

static obj *new_string(const char *s, const char *origin)
{
    obj *o = new_obj(K_STRING, origin);
    o->str = strdup(s);
    return o;
}

static void block_dispose(void *blk);

static void die(obj *o)
{
    o->dead = true;
    o->refs = 0;
    switch (o->kind) {
    case K_STRING:
        if (o->str) memset(o->str, '#', strlen(o->str)); /* a kept UTF8String pointer reads garbage */
        break;
    case K_QUEUE:
        o->stop = true;
        g_stats.queues_dead++;
        pthread_cond_broadcast(&gpu_cv);
        break;
    case K_ERROR:  /* a: domain, b: userInfo */
    case K_PDESC:  /* a: function, b: binaryArchives */
    case K_ADESC:  /* a: url */
    case K_COPTS:  /* a: macros */
    case K_CMDBUF: /* a: queue, b: error */
        obj_release(o->a);
        obj_release(o->b);
        o->a = o->b = NULL;
        if (o->kind == K_CMDBUF) {
            for (int i = 0; i < o->nhandlers; i++) block_dispose(o->handlers[i]);
            o->nhandlers = 0;
            if (o->c) violation("%s released while encoder %s was still open", describe(o), describe(o->c));
        }
        break;
    case K_CENC:
    case K_BENC:
        for (size_t i = 0; i < o->nallocs; i++) free(o->allocs[i]);
        o->nallocs = 0;
        free(o->used);
        o->used = NULL;
        o->nused = 0;
        break;
    case K_ICB: /* its command objects go with it, as borrowed children */
        free(o->icmds);
        free(o->icmd_objs);
        o->icmds = NULL;
        o->icmd_objs = NULL;
        o->nicmds = 0;
        break;
    case K_EVENT:
        for (pending_note *p = o->notes, *next; p; p = next) {
            next = p->next;
            block_dispose(p->block);
            obj_release(p->listener);
            free(p);
        }
        o->notes = NULL;
        break;
    default: break;
    }
    /* What it holds: array items, dictionary entries, a set's allocations, a
     * queue's residency sets, a command buffer's encoders and (retained
     * references) resources. */
    size_t n = o->n;
    o->n = 0;
    for (size_t i = 0; i < n; i++) {
        obj_release(o->items[i]);
        if (o->kind == K_DICT) obj_release(o->keys[i]);
    }
    /* Borrowed children go with their owner. */
    for (obj *x = g_all; x; x = x->next_all)
        if (x->owner == o && !x->dead) obj_release(x);
}

/* ---- blocks (Block ABI) ------------------------------------------------------------ */

void *_NSConcreteStackBlock[32];

typedef struct block_layout {
    void *isa;
    int flags;
    int reserved;
    void (*invoke)(void);
    const unsigned long *descriptor; /* reserved, size, [copy, dispose], [signature] */
} block_layout;

#define BLOCK_HAS_COPY_DISPOSE (1 << 25)
#define BLOCK_HAS_SIGNATURE (1 << 30)

/* What Block_copy does to a stack block: a heap copy, with the copy helper. */
static void *block_copy(const void *b, const char *want_signature, const char *sel)
{
    const block_layout *blk = b;
    if (!blk || blk->isa != (void *)_NSConcreteStackBlock) {
        violation("%s: the block is not a stack block literal (isa %p)", sel, blk ? blk->isa : NULL);
        return NULL;
    }
    size_t size = blk->descriptor[1];
    if (size < sizeof(block_layout)) {
        violation("%s: block descriptor size %zu is smaller than a block", sel, size);
        return NULL;
    }
    const unsigned long *d = blk->descriptor;
    int idx = 2;
    void (*copy)(void *, const void *) = NULL;
    if (blk->flags & BLOCK_HAS_COPY_DISPOSE) {
        copy = (void (*)(void *, const void *))d[idx];
        idx += 2;
    }
    if (blk->flags & BLOCK_HAS_SIGNATURE) {
        const char *sig = (const char *)d[idx];
        if (!sig || strcmp(sig, want_signature) != 0)
            violation("%s: block signature '%s', expected '%s'", sel, sig ? sig : "(null)", want_signature);
    }
    void *heap = malloc(size);
    memcpy(heap, b, size);
    if (copy) copy(heap, b);
    return heap;
}

static void block_dispose(void *b)
{
    block_layout *blk = b;
    if (!blk) return;
    if (blk->flags & BLOCK_HAS_COPY_DISPOSE) {
        void (*dispose)(const void *) = (void (*)(const void *))blk->descriptor[3];
        dispose(blk);
    }
    free(blk);
}

/* ---- pools --------------------------------------------------------------------------- */

static void pool_drain(obj *pool)
{
    if (tls_npools == 0 || tls_pools[tls_npools - 1] != pool) {
        violation("drain of %s, which is not this thread's innermost pool", describe(pool));
        return;
    }
    tls_npools--;
    for (size_t i = 0; i < pool->n; i++) obj_release(pool->items[i]);
    pool->n = 0;
    obj_release(pool);
}

/* ---- method implementations ------------------------------------------------------------ */

typedef void (*imp_fn)(obj *self, const uintptr_t *a, mcd_out *r);
#define IMP(name) static void name(obj *self, const uintptr_t *a, mcd_out *r)
#define RET_OBJ(o) (r->i = (uintptr_t)(o))
#define ARG_OBJ(i) lookup((const void *)a[i])

static bool want_kind(const char *sel, obj *o, int kind, bool allow_nil)
{
    if (!o) {
        if (!allow_nil) violation("%s: nil or unknown object where a %s is needed", sel, kind_names[kind]);
        return allow_nil;
    }
    if (o->dead) {
        violation("%s: argument %s was released", sel, describe(o));
        return false;
    }
    if (o->kind != kind) {
        violation("%s: argument is a %s, not a %s", sel, describe(o), kind_names[kind]);
        return false;
    }
    return true;
}

static void set_error(uintptr_t out, long code, const char *domain, const char *text, const char *sel)
{
    if (!out) return;
    obj *e = new_obj(K_ERROR, sel);
    e->code = code;
    e->a = new_string(domain, "NSError.domain");
    e->str = strdup(text);
    autorelease(e);
    *(id *)out = (id)e;
}

/* NSObject */
IMP(i_init)
{
    self->inited = true;
    if (self->kind == K_POOL) {
        if (tls_npools == 64) violation("more than 64 nested autorelease pools");
        else tls_pools[tls_npools++] = self;
    }
    RET_OBJ(self);
}
IMP(i_retain)
{
    obj_retain(self);
    RET_OBJ(self);
}
IMP(i_release)
{
    (void)a;
    (void)r;
    obj_release(self);
}
static const imp_fn *find_imp(obj *o, const struct objc_selector *s);
IMP(i_responds)
{
    const struct objc_selector *s = (const struct objc_selector *)a[0];
    r->i = find_imp(self, s) != NULL;
}

/* classes */
static int alloc_kind(const char *cls)
{
    static const struct {
        const char *cls;
        int kind;
    } t[] = {{"NSAutoreleasePool", K_POOL},
             {"MTLCompileOptions", K_COPTS},
             {"MTLComputePipelineDescriptor", K_PDESC},
             {"MTLBinaryArchiveDescriptor", K_ADESC},
             {"MTLCommandBufferDescriptor", K_CBDESC},
             {"MTLSharedEventListener", K_LISTENER},
             {"MTLResidencySetDescriptor", K_RDESC},
             {"MTLIndirectCommandBufferDescriptor", K_ICBDESC},
             {"MTLFunctionConstantValues", K_FCVALUES},
             {"MTLFunctionConstant", K_FCONST}};
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++)
        if (!strcmp(t[i].cls, cls)) return t[i].kind;
    return 0;
}
IMP(c_alloc)
{
    (void)a;
    char origin[96];
    snprintf(origin, sizeof origin, "+[%s alloc]", self->cls);
    obj *o = new_obj(alloc_kind(self->cls), origin);
    if (o->kind == K_CBDESC) o->retained_refs = true;                         /* Metal's default */
    if (o->kind == K_ICBDESC) o->icb_inherit_pso = o->icb_inherit_buf = true; /* Metal's defaults */
    RET_OBJ(o);
}
IMP(c_string)
{
    const char *s = (const char *)a[0];
    if (!s) {
        violation("stringWithUTF8String: NULL");
        return;
    }
    obj *o = new_string(s, "+[NSString stringWithUTF8String:]");
    autorelease(o);
    RET_OBJ(o);
}
IMP(c_url)
{
    obj *path = ARG_OBJ(0);
    if (!want_kind("fileURLWithPath:", path, K_STRING, false)) return;
    obj *o = new_obj(K_URL, "+[NSURL fileURLWithPath:]");
    o->str = strdup(path->str);
    autorelease(o);
    RET_OBJ(o);
}
IMP(c_array)
{
    const id *objs = (const id *)a[0];
    size_t n = a[1];
    obj *o = new_obj(K_ARRAY, "+[NSArray arrayWithObjects:count:]");
    for (size_t i = 0; i < n; i++) {
        obj *x = lookup(objs[i]);
        if (!x || x->dead) violation("arrayWithObjects:count: element %zu is not a live object", i);
        else push_item(o, x, true);
    }
    autorelease(o);
    RET_OBJ(o);
}
IMP(c_dict)
{
    const id *vals = (const id *)a[0], *keys = (const id *)a[1];
    size_t n = a[2];
    obj *o = new_obj(K_DICT, "+[NSDictionary dictionaryWithObjects:forKeys:count:]");
    for (size_t i = 0; i < n; i++) {
        obj *k = lookup(keys[i]), *v = lookup(vals[i]);
        if (!k || !v || k->dead || v->dead) {
            violation("dictionaryWithObjects:forKeys:count: entry %zu is not a live object", i);
            continue;
        }
        push_item(o, v, true);
        o->keys[o->n - 1] = k;
        obj_retain(k);
    }
    autorelease(o);
    RET_OBJ(o);
}
IMP(c_procinfo)
{
    (void)a;
    RET_OBJ(g_procinfo);
}

/* NSString, NSArray, NSDictionary, NSError, NSProcessInfo */
IMP(s_utf8)
{
    (void)a;
    r->i = (uintptr_t)self->str;
}
IMP(s_equal)
{
    obj *o = ARG_OBJ(0);
    r->i = o && o->kind == K_STRING && !strcmp(o->str, self->str);
}
IMP(arr_count)
{
    (void)a;
    r->i = self->n;
}
IMP(arr_at)
{
    if (a[0] >= self->n) {
        violation("objectAtIndex: %lu beyond the count %zu (NSRangeException)", (unsigned long)a[0], self->n);
        return;
    }
    RET_OBJ(self->items[a[0]]);
}
IMP(dict_get)
{
    obj *k = ARG_OBJ(0);
    for (size_t i = 0; k && i < self->n; i++)
        if (self->keys[i] == k ||
            (k->kind == K_STRING && self->keys[i]->kind == K_STRING && !strcmp(k->str, self->keys[i]->str)))
            RET_OBJ(self->items[i]);
}
IMP(err_code)
{
    (void)a;
    r->i = (uintptr_t)self->code;
}
IMP(err_domain)
{
    (void)a;
    RET_OBJ(self->a);
}
IMP(err_desc)
{
    (void)a;
    obj *s = new_string(self->str ? self->str : "", "-[NSError localizedDescription]");
    autorelease(s);
    RET_OBJ(s);
}
IMP(err_user)
{
    (void)a;
    RET_OBJ(self->b);
}
IMP(pi_version)
{
    (void)a;
    obj *s = new_string(g_os.version ? g_os.version : "Version 15.1 (Build 24B83)",
                        "-[NSProcessInfo operatingSystemVersionString]");
    autorelease(s);
    RET_OBJ(s);
}

/* labels */
IMP(x_set_label)
{
    obj *l = ARG_OBJ(0);
    if (l && !want_kind("setLabel:", l, K_STRING, false)) return;
    snprintf(self->label, sizeof self->label, "%s", l ? l->str : "");
    if (self->kind == K_CENC || self->kind == K_BENC) g_stats.encoders_labelled++;
}
IMP(x_label)
{
    (void)a;
    obj *s = self->c;
    if (!s) { /* a borrowed child: goes with its owner */
        s = self->c = child(self, K_STRING, "label");
        s->str = strdup(self->label);
    }
    RET_OBJ(s);
}

/* MTLDevice */
IMP(d_name)
{
    (void)a;
    if (!self->c) {
        self->c = child(self, K_STRING, "name");
        self->c->str = strdup(self->str);
    }
    RET_OBJ(self->c);
}
IMP(d_arch)
{
    (void)a;
    if (!self->b) {
        self->b = child(self, K_ARCH, "-[MTLDevice architecture]");
        self->b->str = strdup("applegpu_g99d");
    }
    RET_OBJ(self->b);
}
IMP(d_max_threads)
{
    (void)a;
    r->s[0] = r->s[1] = r->s[2] = 1024;
}
IMP(d_tgmem)
{
    (void)a;
    r->i = 32768;
}
IMP(d_unified)
{
    (void)a;
    r->i = 1;
}
#define MCD_MAX_BUFFER (1ull << 30)
IMP(d_max_buffer)
{
    (void)a;
    r->i = MCD_MAX_BUFFER;
}
IMP(d_new_buffer)
{
    size_t len = a[0];
    if (a[1] != 0)
        violation("newBufferWithLength:options: options 0x%lx: expected shared storage (0)", (unsigned long)a[1]);
    if (len == 0 || len > MCD_MAX_BUFFER) return; /* nil, as Metal */
    obj *o = new_obj(K_BUFFER, "-[MTLDevice newBufferWithLength:options:]");
    o->mem = calloc(1, len);
    o->len = len;
    RET_OBJ(o);
}

/* -- newBufferWithBytesNoCopy:length:options:deallocator: (buffers over the
 * caller's memory, mc_buffer_create_from_host). Metal's documented rules:
 * the pointer page-aligned, the length a whole number of pages; the memory
 * stays the caller's (no deallocator from the backend: it frees nothing). */
IMP(d_new_buffer_nocopy)
{
    uintptr_t ptr = a[0];
    size_t len = a[1];
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    if (a[2] != 0)
        violation("newBufferWithBytesNoCopy:length:options:deallocator: options 0x%lx: expected shared storage (0)",
                  (unsigned long)a[2]);
    if (a[3] != 0) violation("newBufferWithBytesNoCopy:length:options:deallocator: a deallocator block was passed");
    if (!ptr || ptr % page || len == 0 || len % page) {
        violation("newBufferWithBytesNoCopy:length:options:deallocator: %p + %zu is not whole pages of %zu bytes",
                  (void *)ptr, len, page);
        return; /* nil */
    }
    if (len > MCD_MAX_BUFFER) return;
    obj *o = new_obj(K_BUFFER, "-[MTLDevice newBufferWithBytesNoCopy:length:options:deallocator:]");
    o->mem = (void *)ptr;
    o->len = len;
    RET_OBJ(o);
}

/* MTLDataType of an MSL scalar type name (MTLDataType.h); 0 if not one. */
static unsigned long msl_data_type(const char *t, size_t n)
{
    static const struct {
        const char *name;
        unsigned long type;
    } m[] = {{"float", 3}, {"half", 16},  {"int", 29},  {"uint", 33}, {"short", 37}, {"ushort", 41},
             {"char", 45}, {"uchar", 49}, {"bool", 53}, {"long", 81}, {"ulong", 85}};
    for (size_t i = 0; i < sizeof m / sizeof m[0]; i++)
        if (strlen(m[i].name) == n && !memcmp(m[i].name, t, n)) return m[i].type;
    return 0;
}

static size_t data_type_size(unsigned long t)
{
    switch (t) {
    case 53:
    case 45:
    case 49: return 1;
    case 16:
    case 37:
    case 41: return 2;
    case 3:
    case 29:
    case 33: return 4;
    case 81:
    case 85: return 8;
    default: return 0;
    }
}

static bool ident_char(char c)
{
    return c == '_' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}

/* `constant TYPE NAME [[function_constant(N)]];` declarations, in order. */
static void parse_function_constants(obj *lib, const char *src)
{
    const char *p = src, *tag = "[[function_constant(";
    while ((p = strstr(p, tag)) != NULL && lib->nfc < MAX_FC) {
        const char *q = p;
        while (q > src && q[-1] == ' ') q--;
        const char *ne = q;
        while (q > src && ident_char(q[-1])) q--;
        const char *nb = q;
        while (q > src && q[-1] == ' ') q--;
        const char *te = q;
        while (q > src && ident_char(q[-1])) q--;
        size_t k = lib->nfc++;
        lib->fc_index[k] = (unsigned)strtoul(p + strlen(tag), NULL, 10);
        lib->fc_type[k] = msl_data_type(q, (size_t)(te - q));
        snprintf(lib->fc_name[k], sizeof lib->fc_name[k], "%.*s", (int)(ne - nb), nb);
        p += strlen(tag);
    }
}

static void parse_kernels(obj *lib, const char *src)
{
    parse_function_constants(lib, src);
    const char *p = src;
    while ((p = strstr(p, "kernel void ")) != NULL) {
        p += strlen("kernel void ");
        while (*p == ' ') p++;
        size_t n = 0;
        while (p[n] == '_' || (p[n] >= 'a' && p[n] <= 'z') || (p[n] >= 'A' && p[n] <= 'Z') ||
               (p[n] >= '0' && p[n] <= '9'))
            n++;
        lib->names = realloc(lib->names, (lib->nnames + 1) * sizeof *lib->names);
        lib->names[lib->nnames++] = strndup(p, n);
        p += n;
    }
}

IMP(d_new_library)
{
    obj *src = ARG_OBJ(0), *opts = ARG_OBJ(1);
    if (!want_kind("newLibraryWithSource:options:error:", src, K_STRING, false)) return;
    if (!opts)
        violation(
            "newLibraryWithSource:options:error: without MTLCompileOptions: the language version is "
            "implicit (F171)");
    else if (!want_kind("newLibraryWithSource:options:error:", opts, K_COPTS, false)) return;
    g_stats.compiles++;
    if (opts) {
        if (!opts->lang_set) violation("library compiled without an explicit languageVersion (F171)");
        if (!opts->math_set) violation("library compiled with the default math mode (fast math on)");
        g_stats.last_language = opts->lang;
        g_stats.last_math = opts->math;
        g_stats.last_macros[0] = '\0';
        for (size_t i = 0; opts->a && i < opts->a->n; i++) {
            size_t n = strlen(g_stats.last_macros);
            snprintf(g_stats.last_macros + n, sizeof g_stats.last_macros - n, "%s=%s;", opts->a->keys[i]->str,
                     opts->a->items[i]->str);
        }
    }
    const char *err = strstr(src->str, "#error");
    if (err) {
        int line = 1;
        for (const char *c = src->str; c < err; c++) line += *c == '\n';
        char text[256];
        const char *eol = strchr(err, '\n');
        snprintf(text, sizeof text, "program_source:%d:2: error: %.*s\n1 error generated.", line,
                 (int)(eol ? (size_t)(eol - err) : strlen(err)), err);
        set_error(a[2], 3 /* MTLLibraryErrorCompileFailure */, "MTLLibraryErrorDomain", text,
                  "newLibraryWithSource:options:error:");
        return;
    }
    obj *lib = new_obj(K_LIBRARY, "-[MTLDevice newLibraryWithSource:options:error:]");
    parse_kernels(lib, src->str);
    RET_OBJ(lib);
}

static void copy_constants(obj *to, const obj *from)
{
    to->nfc = from->nfc;
    memcpy(to->fc_index, from->fc_index, sizeof to->fc_index);
    memcpy(to->fc_type, from->fc_type, sizeof to->fc_type);
    memcpy(to->fc_value, from->fc_value, sizeof to->fc_value);
    memcpy(to->fc_set, from->fc_set, sizeof to->fc_set);
    memcpy(to->fc_name, from->fc_name, sizeof to->fc_name);
}

IMP(l_new_function)
{
    obj *name = ARG_OBJ(0);
    if (!want_kind("newFunctionWithName:", name, K_STRING, false)) return;
    for (size_t i = 0; i < self->nnames; i++)
        if (!strcmp(self->names[i], name->str)) {
            obj *fn = new_obj(K_FUNCTION, "-[MTLLibrary newFunctionWithName:]");
            fn->str = strdup(name->str);
            copy_constants(fn, self);
            RET_OBJ(fn);
            return;
        }
}

/* An MTLFunction made with MTLFunctionConstantValues: each value must have
 * the type the library declares for its index (Metal refuses another). */
IMP(l_new_function_cv)
{
    obj *name = ARG_OBJ(0), *vals = ARG_OBJ(1);
    const char *sel = "newFunctionWithName:constantValues:error:";
    if (!want_kind(sel, name, K_STRING, false) || !want_kind(sel, vals, K_FCVALUES, false)) return;
    size_t i = 0;
    while (i < self->nnames && strcmp(self->names[i], name->str)) i++;
    if (i == self->nnames) {
        set_error(a[2], 1, "MTLLibraryErrorDomain", "function not found", sel);
        return;
    }
    obj *fn = new_obj(K_FUNCTION, "-[MTLLibrary newFunctionWithName:constantValues:error:]");
    fn->str = strdup(name->str);
    copy_constants(fn, self);
    for (size_t v = 0; v < vals->nfc; v++)
        for (size_t d = 0; d < fn->nfc; d++) {
            if (fn->fc_index[d] != vals->fc_index[v]) continue;
            if (fn->fc_type[d] != vals->fc_type[v])
                violation("%s: function constant %u ('%s') is declared with MTLDataType %lu but set as %lu", sel,
                          fn->fc_index[d], fn->fc_name[d], fn->fc_type[d], vals->fc_type[v]);
            fn->fc_value[d] = vals->fc_value[v];
            fn->fc_set[d] = true;
        }
    RET_OBJ(fn);
}

/* functionConstantsDictionary: name -> MTLFunctionConstant, autoreleased. */
IMP(f_constants)
{
    (void)a;
    obj *dict = new_obj(K_DICT, "-[MTLFunction functionConstantsDictionary]");
    for (size_t d = 0; d < self->nfc; d++) {
        obj *c = new_obj(K_FCONST, "-[MTLFunction functionConstantsDictionary] entry");
        c->nfc = 1;
        c->fc_index[0] = self->fc_index[d];
        c->fc_type[0] = self->fc_type[d];
        push_item(dict, c, false);
        dict->keys[dict->n - 1] = new_string(self->fc_name[d], "functionConstantsDictionary key");
    }
    autorelease(dict);
    RET_OBJ(dict);
}
IMP(dict_all_values)
{
    (void)a;
    obj *arr = new_obj(K_ARRAY, "-[NSDictionary allValues]");
    for (size_t i = 0; i < self->n; i++) push_item(arr, self->items[i], true);
    autorelease(arr);
    RET_OBJ(arr);
}
IMP(fc_index)
{
    (void)a;
    r->i = self->fc_index[0];
}
IMP(fc_type)
{
    (void)a;
    r->i = self->fc_type[0];
}
IMP(fcv_set)
{
    const void *value = (const void *)a[0];
    unsigned long type = a[1];
    unsigned index = (unsigned)a[2];
    size_t size = data_type_size(type);
    if (!value || !size) {
        violation("setConstantValue:type:atIndex: with %s value and MTLDataType %lu", value ? "a" : "a NULL", type);
        return;
    }
    size_t k = 0;
    while (k < self->nfc && self->fc_index[k] != index) k++;
    if (k == self->nfc) {
        if (k == MAX_FC) {
            violation("setConstantValue:type:atIndex: more than %d constants", MAX_FC);
            return;
        }
        self->nfc++;
    }
    self->fc_index[k] = index;
    self->fc_type[k] = type;
    self->fc_value[k] = 0;
    memcpy(&self->fc_value[k], value, size);
    self->fc_set[k] = true;
}

/* What identifies an archived pipeline: the function with its constant
 * values, and the descriptor's hints. */
static void archive_key(const obj *desc, char *out, size_t cap)
{
    int n = snprintf(out, cap, "%s|%lu|%d", desc->a ? desc->a->str : "?", desc->maxt, desc->simd ? 1 : 0);
    for (size_t i = 0; desc->a && i < desc->a->nfc && n > 0 && (size_t)n < cap; i++)
        if (desc->a->fc_set[i])
            n += snprintf(out + n, cap - (size_t)n, "|c%u=%llx", desc->a->fc_index[i],
                          (unsigned long long)desc->a->fc_value[i]);
}

IMP(d_new_pso)
{
    obj *desc = ARG_OBJ(0);
    unsigned long options = a[1];
    const char *sel = "newComputePipelineStateWithDescriptor:options:reflection:error:";
    if (!want_kind(sel, desc, K_PDESC, false)) return;
    if (!desc->a) {
        set_error(a[3], 1, "MTLLibraryErrorDomain", "no compute function", sel);
        return;
    }
    if (!desc->max_set) violation("%s: maxTotalThreadsPerThreadgroup not set on the descriptor (F157)", sel);
    if (!desc->simd_set) violation("%s: threadGroupSizeIsMultipleOfThreadExecutionWidth not set (F158)", sel);
    if (a[2]) violation("%s: reflection asked for but not used", sel);
    char key[256];
    archive_key(desc, key, sizeof key);
    bool hit = false;
    for (size_t i = 0; desc->b && i < desc->b->n && !hit; i++) {
        obj *ar = desc->b->items[i];
        for (size_t k = 0; ar->kind == K_ARCHIVE && k < ar->nnames && !hit; k++) hit = !strcmp(ar->names[k], key);
    }
    if (hit) g_stats.archive_hits++;
    if ((options & 4u /* FailOnBinaryArchiveMiss */) && !hit) {
        set_error(a[3], 1, "MTLLibraryErrorDomain", "pipeline not found in the binary archives", sel);
        return;
    }
    if (desc->maxt > 1024) {
        set_error(a[3], 1, "MTLLibraryErrorDomain", "maxTotalThreadsPerThreadgroup over the device limit", sel);
        return;
    }
    obj *pso = new_obj(K_PSO, "-[MTLDevice newComputePipelineStateWithDescriptor:options:reflection:error:]");
    pso->str = strdup(desc->a->str);
    copy_constants(pso, desc->a);
    pso->maxt = desc->maxt ? desc->maxt : 1024;
    pso->simd = desc->simd;
    pso->icb_ok = desc->icb_ok;
    snprintf(pso->label, sizeof pso->label, "%s", desc->label);
    g_stats.pipelines_made++;
    RET_OBJ(pso);
}

static void *queue_worker(void *arg);

IMP(d_new_queue)
{
    (void)a;
    obj *q = new_obj(K_QUEUE, "-[MTLDevice newCommandQueue]");
    q->worker = true;
    g_workers++;
    g_stats.queues_made++;
    pthread_t th;
    pthread_attr_t at;
    pthread_attr_init(&at);
    pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
    pthread_create(&th, &at, queue_worker, q);
    pthread_attr_destroy(&at);
    RET_OBJ(q);
}
IMP(d_new_event)
{
    (void)a;
    RET_OBJ(new_obj(K_EVENT, "-[MTLDevice newSharedEvent]"));
}

#define ARCHIVE_MAGIC "MCD-BINARY-ARCHIVE\n"

IMP(d_new_archive)
{
    obj *desc = ARG_OBJ(0);
    const char *sel = "newBinaryArchiveWithDescriptor:error:";
    if (!want_kind(sel, desc, K_ADESC, false)) return;
    obj *ar = new_obj(K_ARCHIVE, "-[MTLDevice newBinaryArchiveWithDescriptor:error:]");
    if (desc->a) { /* load from the file URL (F707) */
        FILE *f = fopen(desc->a->str, "r");
        char line[512];
        bool ok = f && fgets(line, sizeof line, f) && !strcmp(line, ARCHIVE_MAGIC);
        while (ok && fgets(line, sizeof line, f)) {
            line[strcspn(line, "\n")] = '\0';
            ar->names = realloc(ar->names, (ar->nnames + 1) * sizeof *ar->names);
            ar->names[ar->nnames++] = strdup(line);
        }
        if (f) fclose(f);
        if (!ok) {
            obj_release(ar);
            set_error(a[1], 1 /* MTLBinaryArchiveErrorInvalidFile */, "MTLBinaryArchiveDomain", "invalid file", sel);
            return;
        }
    }
    RET_OBJ(ar);
}
IMP(d_new_rset)
{
    obj *desc = ARG_OBJ(0);
    if (!want_kind("newResidencySetWithDescriptor:error:", desc, K_RDESC, false)) return;
    obj *s = new_obj(K_RSET, "-[MTLDevice newResidencySetWithDescriptor:error:]");
    snprintf(s->label, sizeof s->label, "%s", desc->label);
    RET_OBJ(s);
}

/* MTLIndirectCommandBufferDescriptor, MTLIndirectCommandBuffer, MTLIndirectComputeCommand (F670) */
IMP(icd_types)
{
    self->icb_types = a[0];
}
IMP(icd_inherit_pso)
{
    self->icb_inherit_pso = (signed char)a[0] != 0;
}
IMP(icd_inherit_buf)
{
    self->icb_inherit_buf = (signed char)a[0] != 0;
}
IMP(icd_maxbind)
{
    if (a[0] > MAX_SLOTS)
        violation("setMaxKernelBufferBindCount: %lu is over the %d buffers a kernel can take", (unsigned long)a[0],
                  MAX_SLOTS);
    self->icb_maxbind = a[0];
}
IMP(icd_tgbind)
{
    self->icb_max_tgbind = a[0];
}
/* GPU families: Apple1..Apple9 are 1001..1009, Mac2 is 2002; the scenario's
 * GPU is of family g_os.gpu_family (default Apple8, an M2); the paravirtual
 * GPU answers no to all of them. */
IMP(d_family)
{
    long f = (long)a[0], mine = g_os.gpu_family ? g_os.gpu_family : 1008;
    r->i = !g_os.paravirtual && ((f >= 1001 && f <= mine) || f == 2002);
}
IMP(d_new_icb)
{
    obj *desc = ARG_OBJ(0);
    const char *sel = "newIndirectCommandBufferWithDescriptor:maxCommandCount:options:";
    if (!want_kind(sel, desc, K_ICBDESC, false)) return;
    if (a[2] != 0) violation("%s options 0x%lx: expected shared storage (0)", sel, (unsigned long)a[2]);
    if (!(desc->icb_types & 32u)) violation("%s: the descriptor's commandTypes lack ConcurrentDispatch", sel);
    if (a[1] == 0) return; /* nil */
    obj *icb = new_obj(K_ICB, "-[MTLDevice newIndirectCommandBufferWithDescriptor:maxCommandCount:options:]");
    icb->icb_types = desc->icb_types;
    icb->icb_maxbind = desc->icb_maxbind;
    icb->icb_max_tgbind = desc->icb_max_tgbind;
    icb->icb_inherit_pso = desc->icb_inherit_pso;
    icb->icb_inherit_buf = desc->icb_inherit_buf;
    icb->nicmds = a[1];
    icb->icmds = calloc(a[1], sizeof *icb->icmds);
    icb->icmd_objs = calloc(a[1], sizeof *icb->icmd_objs);
    RET_OBJ(icb);
}
IMP(icb_command)
{
    if (a[0] >= self->nicmds) {
        violation("indirectComputeCommandAtIndex: %lu of an ICB of %zu commands", (unsigned long)a[0], self->nicmds);
        return;
    }
    if (!self->icmd_objs[a[0]]) { /* borrowed: goes with the ICB */
        obj *c = child(self, K_ICMD, "-[MTLIndirectCommandBuffer indirectComputeCommandAtIndex:]");
        c->value = a[0];
        self->icmd_objs[a[0]] = c;
    }
    RET_OBJ(self->icmd_objs[a[0]]);
}
static icmd *icmd_of(obj *self)
{
    obj *icb = self->owner;
    return icb && !icb->dead && self->value < icb->nicmds ? &icb->icmds[self->value] : NULL;
}
IMP(ic_pso)
{
    icmd *c = icmd_of(self);
    obj *p = ARG_OBJ(0);
    if (!c || !want_kind("setComputePipelineState:", p, K_PSO, false)) return;
    if (self->owner->icb_inherit_pso)
        violation("setComputePipelineState: on a command of an ICB that inherits its pipeline state");
    if (!p->icb_ok)
        violation("setComputePipelineState: %s was not made with supportIndirectCommandBuffers", describe(p));
    c->pso = p;
}
IMP(ic_buffer)
{
    icmd *c = icmd_of(self);
    obj *b = ARG_OBJ(0);
    if (!c || !want_kind("setKernelBuffer:offset:atIndex:", b, K_BUFFER, false)) return;
    if (self->owner->icb_inherit_buf) violation("setKernelBuffer:offset:atIndex: on an ICB that inherits its buffers");
    if (a[2] >= self->owner->icb_maxbind) {
        violation("setKernelBuffer:offset:atIndex: index %lu, the ICB allows %lu buffers", (unsigned long)a[2],
                  self->owner->icb_maxbind);
        return;
    }
    if (a[1] > b->len)
        violation("setKernelBuffer:offset:atIndex: offset %lu beyond %s", (unsigned long)a[1], describe(b));
    c->buf[a[2]] = b;
    c->off[a[2]] = a[1];
}
IMP(ic_tgmem)
{
    if (!icmd_of(self)) return;
    /* Metal's validation: an ICB command's threadgroup memory index must be
     * below the descriptor's maxKernelThreadgroupMemoryBindCount (0 unless
     * set, macOS 14). */
    if (a[1] >= self->owner->icb_max_tgbind)
        violation(
            "setThreadgroupMemoryLength:atIndex: index %lu on an ICB command, but the ICB's "
            "maxKernelThreadgroupMemoryBindCount is %lu",
            (unsigned long)a[1], self->owner->icb_max_tgbind);
    if (a[0] % 16) violation("setThreadgroupMemoryLength:atIndex: %lu is not a multiple of 16", (unsigned long)a[0]);
    if (a[0] > 32768)
        violation("setThreadgroupMemoryLength:atIndex: %lu over the device's 32 KiB", (unsigned long)a[0]);
}
IMP(ic_dispatch)
{
    const char *sel = "concurrentDispatchThreadgroups:threadsPerThreadgroup:";
    icmd *c = icmd_of(self);
    if (!c) return;
    if (!(self->owner->icb_types & 32u)) violation("%s on an ICB without ConcurrentDispatch commands", sel);
    if (!c->pso) {
        violation("%s before setComputePipelineState:", sel);
        return;
    }
    const uintptr_t *g = a, *t = a + 3;
    if (!g[0] || !g[1] || !g[2]) violation("%s with an empty grid: reset the command instead", sel);
    uintptr_t total = t[0] * t[1] * t[2];
    if (!total || total > c->pso->maxt)
        violation("%s: %lu threads per threadgroup, the pipeline allows %lu", sel, (unsigned long)total, c->pso->maxt);
    if (c->pso->simd && t[0] % 32)
        violation("%s: %lu threads, not a multiple of the SIMD width the pipeline promised (F158)", sel,
                  (unsigned long)t[0]);
    memcpy(c->groups, g, sizeof c->groups);
    memcpy(c->threads, t, sizeof c->threads);
    c->encoded = true;
}
IMP(ic_barrier)
{
    (void)a;
    icmd *c = icmd_of(self);
    /* Apple's setBarrier page: set the barrier before encoding the command
     * it guards. */
    if (c && c->encoded) violation("setBarrier sent after the dispatch it guards (set it before encoding the command)");
    if (c) c->barrier = true;
}
IMP(ic_reset)
{
    (void)a;
    icmd *c = icmd_of(self);
    if (c) memset(c, 0, sizeof *c);
}

/* MTLBuffer */
IMP(b_contents)
{
    (void)a;
    r->i = (uintptr_t)self->mem;
}

/* MTLCompileOptions */
/* The newest MSL each modelled macOS accepts (MTLLanguageVersion
 * availability in Apple's documentation). */
static unsigned long newest_msl(int major)
{
    return major >= 15   ? (3ul << 16) + 2
           : major >= 14 ? (3ul << 16) + 1
           : major >= 13 ? 3ul << 16
           : major >= 12 ? (2ul << 16) + 4
                         : (2ul << 16) + 3;
}
IMP(co_lang)
{
    unsigned long top = newest_msl(g_os.major);
    if (g_os.major && a[0] > top)
        violation(
            "setLanguageVersion: MSL %lu.%lu does not exist on macOS %d (MSL %lu.%lu at most): every "
            "compile fails",
            (unsigned long)(a[0] >> 16), (unsigned long)(a[0] & 0xffff), g_os.major, top >> 16, top & 0xffff);
    self->lang = a[0];
    self->lang_set = true;
}
IMP(co_math)
{
    if ((long)a[0] != 0 && (long)a[0] != 2) violation("setMathMode: %ld", (long)a[0]);
    self->math = (long)a[0] == 2;
    self->math_set = true;
}
IMP(co_fast)
{
    self->math = (signed char)a[0] != 0;
    self->math_set = true;
}
IMP(co_macros)
{
    obj *d = ARG_OBJ(0);
    if (!want_kind("setPreprocessorMacros:", d, K_DICT, false)) return;
    obj_retain(d);
    obj_release(self->a);
    self->a = d;
}

/* MTLComputePipelineDescriptor */
IMP(pd_function)
{
    obj *fn = ARG_OBJ(0);
    if (!want_kind("setComputeFunction:", fn, K_FUNCTION, false)) return;
    obj_retain(fn);
    obj_release(self->a);
    self->a = fn;
}
IMP(pd_max)
{
    self->maxt = a[0];
    self->max_set = true;
}
IMP(pd_simd)
{
    self->simd = (signed char)a[0] != 0;
    self->simd_set = true;
}
IMP(pd_support_icb)
{
    self->icb_ok = (signed char)a[0] != 0;
}
IMP(pd_archives)
{
    obj *arr = ARG_OBJ(0);
    if (!want_kind("setBinaryArchives:", arr, K_ARRAY, false)) return;
    obj_retain(arr);
    obj_release(self->b);
    self->b = arr;
}

/* MTLComputePipelineState */
IMP(ps_max)
{
    (void)a;
    r->i = self->maxt;
}
IMP(ps_width)
{
    (void)a;
    r->i = 32;
}
IMP(ps_static_tg)
{
    (void)a;
    r->i = 0;
}

/* MTLBinaryArchiveDescriptor, MTLBinaryArchive */
IMP(ad_url)
{
    obj *u = ARG_OBJ(0);
    if (!want_kind("setUrl:", u, K_URL, false)) return;
    obj_retain(u);
    obj_release(self->a);
    self->a = u;
}
IMP(ar_add)
{
    obj *desc = ARG_OBJ(0);
    if (!want_kind("addComputePipelineFunctionsWithDescriptor:error:", desc, K_PDESC, false)) return;
    if (!desc->max_set || !desc->simd_set)
        violation("addComputePipelineFunctionsWithDescriptor:error: descriptor without occupancy hints (F157, F158)");
    char key[256];
    archive_key(desc, key, sizeof key);
    self->names = realloc(self->names, (self->nnames + 1) * sizeof *self->names);
    self->names[self->nnames++] = strdup(key);
    r->i = 1;
}
IMP(ar_serialize)
{
    obj *u = ARG_OBJ(0);
    if (!want_kind("serializeToURL:error:", u, K_URL, false)) return;
    FILE *f = fopen(u->str, "w");
    if (!f) {
        set_error(a[1], 1, "MTLBinaryArchiveDomain", "cannot write", "serializeToURL:error:");
        return;
    }
    fputs(ARCHIVE_MAGIC, f);
    for (size_t i = 0; i < self->nnames; i++) fprintf(f, "%s\n", self->names[i]);
    fclose(f);
    r->i = 1;
}

/* MTLCommandQueue, MTLCommandBufferDescriptor */
IMP(q_cmdbuf)
{
    obj *desc = ARG_OBJ(0);
    if (!want_kind("commandBufferWithDescriptor:", desc, K_CBDESC, false)) return;
    obj *cb = new_obj(K_CMDBUF, "-[MTLCommandQueue commandBufferWithDescriptor:]");
    cb->a = self;
    obj_retain(self); /* a command buffer keeps its queue */
    cb->err_opts = desc->err_opts;
    cb->retained_refs = desc->retained_refs;
    cb->fail_enc = -1;
    autorelease(cb);
    RET_OBJ(cb);
}
IMP(q_add_rset)
{
    obj *s = ARG_OBJ(0);
    if (!want_kind("addResidencySet:", s, K_RSET, false)) return;
    push_item(self, s, true);
}
IMP(q_remove_rset)
{
    obj *s = ARG_OBJ(0);
    for (size_t i = 0; s && i < self->n; i++)
        if (self->items[i] == s) {
            self->items[i] = self->items[--self->n];
            obj_release(s);
            return;
        }
    violation("removeResidencySet: %s is not attached to %s", s ? describe(s) : "nil", describe(self));
}
IMP(cd_errors)
{
    self->err_opts = a[0];
}
IMP(cd_retained)
{
    self->retained_refs = (signed char)a[0] != 0;
    self->retained_set = true;
}

/* MTLCommandBuffer */
static op *add_op(obj *cb, int type)
{
    if (cb->nops == cb->capops) {
        cb->capops = cb->capops ? cb->capops * 2 : 16;
        cb->ops = realloc(cb->ops, cb->capops * sizeof *cb->ops);
    }
    op *o = &cb->ops[cb->nops++];
    memset(o, 0, sizeof *o);
    o->type = type;
    return o;
}

static bool cb_encodable(obj *cb, const char *sel, bool need_no_encoder)
{
    if (cb->committed_flag) {
        violation("%s on %s after commit", sel, describe(cb));
        return false;
    }
    if (need_no_encoder && cb->c) {
        violation("%s on %s while encoder %s is still open (end it first)", sel, describe(cb), describe(cb->c));
        return false;
    }
    return true;
}

static obj *new_encoder(obj *cb, int kind, const char *origin)
{
    obj *e = new_obj(kind, origin);
    e->owner = NULL;
    e->a = NULL;
    cb->c = e;
    obj_retain(e); /* the command buffer keeps its encoders... */
    push_item(cb, e, false);
    autorelease(e); /* ...the caller borrows it */
    op *o = add_op(cb, OP_ENC_BEGIN);
    o->enc = e;
    cb->nenc++;
    e->c = cb; /* back pointer, not a reference */
    return e;
}

IMP(cb_compute)
{
    if (!cb_encodable(self, "computeCommandEncoderWithDispatchType:", true)) return;
    if (a[0] > 1) violation("computeCommandEncoderWithDispatchType: %lu", (unsigned long)a[0]);
    RET_OBJ(new_encoder(self, K_CENC, "-[MTLCommandBuffer computeCommandEncoderWithDispatchType:]"));
}
IMP(cb_blit)
{
    (void)a;
    if (!cb_encodable(self, "blitCommandEncoder", true)) return;
    RET_OBJ(new_encoder(self, K_BENC, "-[MTLCommandBuffer blitCommandEncoder]"));
}
static void keep_ref(obj *cb, obj *x)
{
    if (cb->retained_refs && x) push_item(cb, x, true);
}
static void cb_event_op(obj *self, const uintptr_t *a, int type, const char *sel)
{
    if (!cb_encodable(self, sel, true)) return;
    obj *ev = ARG_OBJ(0);
    if (!want_kind(sel, ev, K_EVENT, false)) return;
    op *o = add_op(self, type);
    o->a = ev;
    o->value = a[1];
    keep_ref(self, ev);
}
IMP(cb_signal)
{
    (void)r;
    cb_event_op(self, a, OP_SIGNAL, "encodeSignalEvent:value:");
}
IMP(cb_wait)
{
    (void)r;
    cb_event_op(self, a, OP_WAIT, "encodeWaitForEvent:value:");
}
static void cb_handler(obj *self, const uintptr_t *a, bool sched)
{
    const char *sel = sched ? "addScheduledHandler:" : "addCompletedHandler:";
    if (!cb_encodable(self, sel, false)) return;
    if (self->nhandlers == 16) {
        violation("more than 16 handlers on %s", describe(self));
        return;
    }
    void *b = block_copy((const void *)a[0], "v16@?0@8", sel);
    if (!b) return;
    self->handler_is_sched[self->nhandlers] = sched;
    self->handlers[self->nhandlers++] = b;
}
IMP(cb_add_scheduled)
{
    (void)r;
    cb_handler(self, a, true);
}
IMP(cb_add_completed)
{
    (void)r;
    cb_handler(self, a, false);
}

static bool resident(obj *q, obj *buf)
{
    for (size_t i = 0; i < q->n; i++) {
        obj *s = q->items[i];
        for (size_t k = 0; k < s->ncommitted; k++)
            if (s->committed[k] == buf) return true;
    }
    return false;
}

static void check_resident(obj *cb, obj *buf)
{
    if (!g_os.residency_sets || !buf) return;
    if (!resident(cb->a, buf))
        violation("%s uses %s, which no committed residency set of its queue holds (F169)", describe(cb),
                  describe(buf));
}

IMP(cb_commit)
{
    (void)a;
    (void)r;
    if (self->committed_flag) {
        violation("%s committed twice", describe(self));
        return;
    }
    if (self->c) {
        violation("%s committed while encoder %s was not ended", describe(self), describe(self->c));
        return;
    }
    self->committed_flag = true;
    self->status = 2; /* committed */
    g_stats.cmdbufs_committed++;
    if (!self->retained_refs) g_stats.cmdbufs_unretained++;
    for (size_t i = 0; i < self->nops; i++) {
        op *o = &self->ops[i];
        for (int k = 0; k < MAX_SLOTS; k++) check_resident(self, o->buf[k]);
        if (o->type == OP_COPY || o->type == OP_FILL || o->type == OP_INDIRECT) {
            check_resident(self, o->a);
            check_resident(self, o->b);
        }
        if (o->type == OP_EXEC_ICB) {
            check_resident(self, o->b);
            for (size_t k = 0; k < o->a->nicmds; k++)
                for (int slot = 0; slot < MAX_SLOTS; slot++) check_resident(self, o->a->icmds[k].buf[slot]);
        }
    }
    if (g_plan_nth > 0 && --g_plan_nth == 0) {
        self->fail_code = g_plan_code;
        self->fail_enc = g_plan_enc;
    }
    obj *q = self->a;
    obj_retain(self); /* the queue keeps it until it completes */
    if (q->fhead == q->ftail) q->fhead = q->ftail = 0;
    if (q->ftail == q->fcap) {
        q->fcap = q->fcap ? q->fcap * 2 : 16;
        q->fifo = realloc(q->fifo, q->fcap * sizeof *q->fifo);
    }
    q->fifo[q->ftail++] = self;
    pthread_cond_broadcast(&gpu_cv);
}
IMP(cb_status)
{
    (void)a;
    r->i = self->status;
}
IMP(cb_error)
{
    (void)a;
    RET_OBJ(self->b);
}
IMP(cb_start)
{
    (void)a;
    r->d = self->t0;
}
IMP(cb_end)
{
    (void)a;
    r->d = self->t1;
}

/* encoders */
static obj *enc_cb(obj *e, const char *sel)
{
    obj *cb = e->c;
    if (e->ended) {
        violation("%s on %s after endEncoding", sel, describe(e));
        return NULL;
    }
    if (!cb || cb->committed_flag) {
        violation("%s on %s after its command buffer was committed", sel, describe(e));
        return NULL;
    }
    return cb;
}
IMP(e_pso)
{
    obj *cb = enc_cb(self, "setComputePipelineState:");
    obj *p = ARG_OBJ(0);
    if (!cb || !want_kind("setComputePipelineState:", p, K_PSO, false)) return;
    self->pso = p;
    keep_ref(cb, p);
}
IMP(e_buffer)
{
    obj *cb = enc_cb(self, "setBuffer:offset:atIndex:");
    obj *b = ARG_OBJ(0);
    if (!cb || !want_kind("setBuffer:offset:atIndex:", b, K_BUFFER, false)) return;
    if (a[2] >= MAX_SLOTS) {
        violation("setBuffer:offset:atIndex: index %lu", (unsigned long)a[2]);
        return;
    }
    if (a[1] > b->len) violation("setBuffer:offset:atIndex: offset %lu beyond %s", (unsigned long)a[1], describe(b));
    self->bind_buf[a[2]] = b;
    self->bind_off[a[2]] = a[1];
    self->bind_bytes[a[2]] = NULL;
    keep_ref(cb, b);
}
IMP(e_bytes)
{
    obj *cb = enc_cb(self, "setBytes:length:atIndex:");
    if (!cb) return;
    size_t len = a[1], idx = a[2];
    if (idx >= MAX_SLOTS || len == 0 || !a[0]) {
        violation("setBytes:length:atIndex: bad arguments (len %zu, index %zu)", len, idx);
        return;
    }
    if (len > 4096) violation("setBytes:length:atIndex: %zu bytes: Metal allows 4 KiB", len);
    unsigned char *copy = malloc(len);
    memcpy(copy, (const void *)a[0], len); /* copied now, as Metal does */
    self->allocs = realloc(self->allocs, (self->nallocs + 1) * sizeof *self->allocs);
    self->allocs[self->nallocs++] = copy;
    self->bind_bytes[idx] = copy;
    self->bind_len[idx] = len;
    self->bind_buf[idx] = NULL;
}
IMP(e_tgmem)
{
    if (!enc_cb(self, "setThreadgroupMemoryLength:atIndex:")) return;
    if (a[0] % 16) violation("setThreadgroupMemoryLength:atIndex: %lu is not a multiple of 16", (unsigned long)a[0]);
    if (a[0] > 32768)
        violation("setThreadgroupMemoryLength:atIndex: %lu over the device's 32 KiB", (unsigned long)a[0]);
}
static op *dispatch_op(obj *self, const char *sel, int type, const uintptr_t *threads)
{
    obj *cb = enc_cb(self, sel);
    if (!cb) return NULL;
    if (!self->pso) {
        violation("%s before setComputePipelineState:", sel);
        return NULL;
    }
    uintptr_t total = threads[0] * threads[1] * threads[2];
    if (!total) violation("%s with a zero threadgroup size", sel);
    if (total > self->pso->maxt)
        violation("%s: %lu threads per threadgroup, the pipeline allows %lu", sel, (unsigned long)total,
                  self->pso->maxt);
    if (self->pso->simd && threads[0] % 32)
        violation("%s: %lu threads, not a multiple of the SIMD width the pipeline promised (F158)", sel,
                  (unsigned long)threads[0]);
    op *o = add_op(cb, type);
    o->enc = self;
    o->pso = self->pso;
    memcpy(o->buf, self->bind_buf, sizeof o->buf);
    memcpy(o->off, self->bind_off, sizeof o->off);
    memcpy(o->bytes, self->bind_bytes, sizeof o->bytes);
    memcpy(o->bytes_len, self->bind_len, sizeof o->bytes_len);
    memcpy(o->threads, threads, sizeof o->threads);
    return o;
}
IMP(e_dispatch)
{
    if (!a[0] || !a[1] || !a[2]) {
        /* Metal's API validation (MTL_DEBUG_LAYER=1) asserts on a zero
         * grid and the process aborts. Without it, the one zero grid the
         * backend may send is the ICB pipeline workaround, on a GPU family
         * that needs it (before Apple9). */
        const char *v = getenv("MTL_DEBUG_LAYER");
        bool validation = v && *v && strcmp(v, "0") != 0;
        long fam = g_os.gpu_family ? g_os.gpu_family : 1008;
        if (validation)
            violation(
                "dispatchThreadgroups:threadsPerThreadgroup: with a zero grid (%lu,%lu,%lu): Metal's API "
                "validation aborts the process",
                (unsigned long)a[0], (unsigned long)a[1], (unsigned long)a[2]);
        else if (fam >= 1009)
            violation(
                "dispatchThreadgroups:threadsPerThreadgroup: with a zero grid on an Apple9 GPU, which "
                "needs no ICB pipeline workaround");
        else if (enc_cb(self, "dispatchThreadgroups:threadsPerThreadgroup:") && !self->pso)
            violation("dispatchThreadgroups:threadsPerThreadgroup: before setComputePipelineState:");
        g_stats.pipeline_touches++;
        return;
    }
    op *o = dispatch_op(self, "dispatchThreadgroups:threadsPerThreadgroup:", OP_DISPATCH, a + 3);
    if (o) memcpy(o->groups, a, sizeof o->groups);
}
IMP(e_indirect)
{
    const char *sel = "dispatchThreadgroupsWithIndirectBuffer:indirectBufferOffset:threadsPerThreadgroup:";
    obj *b = ARG_OBJ(0);
    if (!want_kind(sel, b, K_BUFFER, false)) return;
    if (a[1] % 4) violation("%s: offset %lu is not 4-byte aligned", sel, (unsigned long)a[1]);
    op *o = dispatch_op(self, sel, OP_INDIRECT, a + 2);
    if (!o) return;
    o->a = b;
    o->a_off = a[1];
    keep_ref(self->c, b);
}
IMP(e_barrier)
{
    obj *cb = enc_cb(self, "memoryBarrierWithScope:");
    if (!cb) return;
    if (a[0] != 1) violation("memoryBarrierWithScope: %lu (expected MTLBarrierScopeBuffers)", (unsigned long)a[0]);
    add_op(cb, OP_BARRIER)->enc = self;
}
IMP(e_copy)
{
    const char *sel = "copyFromBuffer:sourceOffset:toBuffer:destinationOffset:size:";
    obj *cb = enc_cb(self, sel);
    obj *src = ARG_OBJ(0), *dst = ARG_OBJ(2);
    if (!cb || !want_kind(sel, src, K_BUFFER, false) || !want_kind(sel, dst, K_BUFFER, false)) return;
    if ((a[1] | a[3] | a[4]) % 4)
        violation("%s: offsets %lu, %lu and size %lu must be multiples of 4 on macOS", sel, (unsigned long)a[1],
                  (unsigned long)a[3], (unsigned long)a[4]);
    op *o = add_op(cb, OP_COPY);
    o->enc = self;
    o->a = src;
    o->a_off = a[1];
    o->b = dst;
    o->b_off = a[3];
    o->len = a[4];
    keep_ref(cb, src);
    keep_ref(cb, dst);
}
IMP(e_fill)
{
    const char *sel = "fillBuffer:range:value:";
    obj *cb = enc_cb(self, sel);
    obj *b = ARG_OBJ(0);
    if (!cb || !want_kind(sel, b, K_BUFFER, false)) return;
    if ((a[1] | a[2]) % 4 || !a[2])
        violation("%s: range {%lu, %lu} must be non-empty multiples of 4 on macOS", sel, (unsigned long)a[1],
                  (unsigned long)a[2]);
    op *o = add_op(cb, OP_FILL);
    o->enc = self;
    o->a = b;
    o->a_off = a[1];
    o->len = a[2];
    o->value = (uint8_t)a[3];
    keep_ref(cb, b);
}
IMP(e_use)
{
    const id *res = (const id *)a[0];
    if (!enc_cb(self, "useResources:count:usage:")) return;
    if (!(a[2] & 3u))
        violation("useResources:count:usage: usage %lu grants neither read nor write", (unsigned long)a[2]);
    for (size_t i = 0; i < a[1]; i++) {
        obj *x = lookup(res[i]);
        if (!x || x->dead || x->kind != K_BUFFER) {
            violation("useResources:count:usage: element %zu is not a live buffer", i);
            continue;
        }
        self->used = realloc(self->used, (self->nused + 1) * sizeof *self->used);
        self->used[self->nused++] = x;
    }
}
static bool used_in(const obj *enc, const obj *b)
{
    for (size_t i = 0; i < enc->nused; i++)
        if (enc->used[i] == b) return true;
    return false;
}
/* The commands [lo, hi) of icb may run from enc: what they use is resident. */
static void check_icb_use(obj *enc, obj *icb, size_t lo, size_t hi, const char *sel)
{
    for (size_t k = lo; k < hi && k < icb->nicmds; k++) {
        const icmd *c = &icb->icmds[k];
        for (int i = 0; c->encoded && i < MAX_SLOTS; i++)
            if (c->buf[i] && !used_in(enc, c->buf[i])) {
                violation("%s: ICB command %zu uses %s, which the encoder was not told of (useResources:count:usage:)",
                          sel, k, describe(c->buf[i]));
                return;
            }
    }
}
static op *exec_icb_op(obj *self, obj *icb, const char *sel)
{
    obj *cb = enc_cb(self, sel);
    if (!cb || !want_kind(sel, icb, K_ICB, false)) return NULL;
    op *o = add_op(cb, OP_EXEC_ICB);
    o->enc = self;
    o->a = icb;
    keep_ref(cb, icb);
    return o;
}
IMP(e_exec_range)
{
    const char *sel = "executeCommandsInBuffer:withRange:";
    obj *icb = ARG_OBJ(0);
    size_t loc = a[1], len = a[2];
    op *o = exec_icb_op(self, icb, sel);
    if (!o) return;
    if (len > 16384) violation("%s: %zu commands, Metal runs at most 16384 in one", sel, len);
    if (loc > icb->nicmds || len > icb->nicmds - loc)
        violation("%s: range {%zu, %zu} beyond the ICB's %zu commands", sel, loc, len, icb->nicmds);
    o->groups[0] = loc;
    o->groups[1] = len;
    check_icb_use(self, icb, loc, loc + len, sel);
}
IMP(e_exec_indirect)
{
    const char *sel = "executeCommandsInBuffer:indirectBuffer:indirectBufferOffset:";
    obj *icb = ARG_OBJ(0), *rb = ARG_OBJ(1);
    if (!want_kind(sel, rb, K_BUFFER, false)) return;
    op *o = exec_icb_op(self, icb, sel);
    if (!o) return;
    if (a[2] % 4) violation("%s: offset %lu is not 4-byte aligned", sel, (unsigned long)a[2]);
    o->b = rb;
    o->b_off = a[2];
    keep_ref(self->c, rb);
    check_icb_use(self, icb, 0, icb->nicmds, sel);
}
IMP(e_end)
{
    obj *cb = enc_cb(self, "endEncoding");
    if (!cb) return;
    self->ended = true;
    cb->c = NULL;
    add_op(cb, OP_ENC_END)->enc = self;
}

/* MTLSharedEvent, MTLSharedEventListener */
static void *notify_thread(void *arg);

static void fire_notes_locked(obj *ev)
{
    pending_note **pp = &ev->notes;
    while (*pp) {
        pending_note *p = *pp;
        if (p->value <= ev->value) {
            *pp = p->next;
            struct {
                pending_note *p;
                obj *ev;
            } *job = malloc(sizeof *job);
            job->p = p;
            job->ev = ev;
            obj_retain(ev);
            g_notifiers++;
            pthread_t th;
            pthread_attr_t at;
            pthread_attr_init(&at);
            pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
            pthread_create(&th, &at, notify_thread, job);
            pthread_attr_destroy(&at);
        } else {
            pp = &p->next;
        }
    }
}

static void event_set_locked(obj *ev, uint64_t v)
{
    if (v > ev->value) ev->value = v; /* values only move forward */
    pthread_cond_broadcast(&ev_cv);
    fire_notes_locked(ev);
}

IMP(ev_value)
{
    (void)a;
    r->i = self->value;
}
IMP(ev_set)
{
    (void)r;
    event_set_locked(self, a[0]);
}
IMP(ev_wait)
{
    g_stats.timed_waits++;
    uint64_t v = a[0], ms = a[1];
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t ns = (uint64_t)ts.tv_nsec + (ms > 100000 ? 100000 : ms) * 1000000ull; /* the double caps at 100 s */
    ts.tv_sec += (time_t)(ns / 1000000000ull);
    ts.tv_nsec = (long)(ns % 1000000000ull);
    while (self->value < v)
        if (pthread_cond_timedwait(&ev_cv, &G, &ts) == ETIMEDOUT) break;
    r->i = self->value >= v;
}
IMP(ev_notify)
{
    obj *listener = ARG_OBJ(0);
    if (!want_kind("notifyListener:atValue:block:", listener, K_LISTENER, false)) return;
    void *b = block_copy((const void *)a[2], "v24@?0@8Q16", "notifyListener:atValue:block:");
    if (!b) return;
    pending_note *p = calloc(1, sizeof *p);
    p->listener = listener;
    obj_retain(listener);
    p->value = a[1];
    p->block = b;
    p->next = self->notes;
    self->notes = p;
    fire_notes_locked(self);
}

/* MTLResidencySetDescriptor, MTLResidencySet */
IMP(rd_capacity)
{
    (void)a;
    (void)self;
}
IMP(rs_add)
{
    obj *b = ARG_OBJ(0);
    if (!want_kind("addAllocation:", b, K_BUFFER, false)) return;
    push_item(self, b, true); /* the set keeps its allocations */
}
IMP(rs_remove)
{
    obj *b = ARG_OBJ(0);
    for (size_t i = 0; b && i < self->n; i++)
        if (self->items[i] == b) {
            self->items[i] = self->items[--self->n];
            obj_release(b);
            return;
        }
    violation("removeAllocation: %s is not in %s", b ? describe(b) : "nil", describe(self));
}
IMP(rs_commit)
{
    (void)a;
    free(self->committed);
    self->committed = malloc((self->n ? self->n : 1) * sizeof *self->committed);
    memcpy(self->committed, self->items, self->n * sizeof *self->items);
    self->ncommitted = self->n;
    g_stats.residency_commits++;
}
IMP(rs_nothing)
{
    (void)a;
    (void)self;
}

/* MTLCommandBufferEncoderInfo */
IMP(ei_state)
{
    (void)a;
    r->i = (uintptr_t)self->code;
}

/* ---- the method table ------------------------------------------------------------------ */

/* Availability: what each modelled macOS version (11, 12, 14, 15) has, from
 * Apple's documentation of each method, and what the paravirtual GPU of
 * hosted runners lacks. */
enum { F_NONE, F_RESIDENCY, F_WAIT, F_MATH, F_ARCH, F_TGBIND, F_REAL_GPU };

typedef struct method {
    int kind;
    const char *cls; /* K_CLASS: the class */
    const char *sel;
    imp_fn imp;
    int feature;
} method;

static const method methods[] = {
    {K_CLASS, "NSAutoreleasePool", "alloc", c_alloc, 0},
    {K_CLASS, "MTLCompileOptions", "alloc", c_alloc, 0},
    {K_CLASS, "MTLComputePipelineDescriptor", "alloc", c_alloc, 0},
    {K_CLASS, "MTLBinaryArchiveDescriptor", "alloc", c_alloc, 0},
    {K_CLASS, "MTLCommandBufferDescriptor", "alloc", c_alloc, 0},
    {K_CLASS, "MTLSharedEventListener", "alloc", c_alloc, 0},
    {K_CLASS, "MTLResidencySetDescriptor", "alloc", c_alloc, F_RESIDENCY},
    {K_CLASS, "NSString", "stringWithUTF8String:", c_string, 0},
    {K_CLASS, "NSURL", "fileURLWithPath:", c_url, 0},
    {K_CLASS, "NSArray", "arrayWithObjects:count:", c_array, 0},
    {K_CLASS, "NSDictionary", "dictionaryWithObjects:forKeys:count:", c_dict, 0},
    {K_CLASS, "NSProcessInfo", "processInfo", c_procinfo, 0},
    {K_POOL, NULL, "init", i_init, 0},
    {K_COPTS, NULL, "init", i_init, 0},
    {K_PDESC, NULL, "init", i_init, 0},
    {K_ADESC, NULL, "init", i_init, 0},
    {K_CBDESC, NULL, "init", i_init, 0},
    {K_LISTENER, NULL, "init", i_init, 0},
    {K_RDESC, NULL, "init", i_init, 0},
    {K_STRING, NULL, "UTF8String", s_utf8, 0},
    {K_STRING, NULL, "isEqualToString:", s_equal, 0},
    {K_ARRAY, NULL, "count", arr_count, 0},
    {K_ARRAY, NULL, "objectAtIndex:", arr_at, 0},
    {K_DICT, NULL, "objectForKey:", dict_get, 0},
    {K_ERROR, NULL, "code", err_code, 0},
    {K_ERROR, NULL, "domain", err_domain, 0},
    {K_ERROR, NULL, "localizedDescription", err_desc, 0},
    {K_ERROR, NULL, "userInfo", err_user, 0},
    {K_PROCINFO, NULL, "operatingSystemVersionString", pi_version, 0},
    {K_DEVICE, NULL, "name", d_name, 0},
    {K_DEVICE, NULL, "architecture", d_arch, F_ARCH},
    {K_DEVICE, NULL, "maxThreadsPerThreadgroup", d_max_threads, 0},
    {K_DEVICE, NULL, "maxThreadgroupMemoryLength", d_tgmem, 0},
    {K_DEVICE, NULL, "hasUnifiedMemory", d_unified, 0},
    {K_DEVICE, NULL, "maxBufferLength", d_max_buffer, 0},
    {K_DEVICE, NULL, "newBufferWithLength:options:", d_new_buffer, 0},
    {K_DEVICE, NULL, "newBufferWithBytesNoCopy:length:options:deallocator:", d_new_buffer_nocopy, 0},
    {K_DEVICE, NULL, "newLibraryWithSource:options:error:", d_new_library, 0},
    {K_DEVICE, NULL, "newComputePipelineStateWithDescriptor:options:reflection:error:", d_new_pso, 0},
    {K_DEVICE, NULL, "newCommandQueue", d_new_queue, 0},
    {K_DEVICE, NULL, "newSharedEvent", d_new_event, 0},
    {K_DEVICE, NULL, "newBinaryArchiveWithDescriptor:error:", d_new_archive, F_REAL_GPU},
    {K_DEVICE, NULL, "newResidencySetWithDescriptor:error:", d_new_rset, F_RESIDENCY},
    {K_ARCH, NULL, "name", d_name, 0},
    {K_BUFFER, NULL, "contents", b_contents, 0},
    {K_BUFFER, NULL, "setLabel:", x_set_label, 0},
    {K_COPTS, NULL, "setLanguageVersion:", co_lang, 0},
    {K_COPTS, NULL, "setMathMode:", co_math, F_MATH},
    {K_COPTS, NULL, "setFastMathEnabled:", co_fast, 0},
    {K_COPTS, NULL, "setPreprocessorMacros:", co_macros, 0},
    {K_LIBRARY, NULL, "newFunctionWithName:", l_new_function, 0},
    {K_LIBRARY, NULL, "newFunctionWithName:constantValues:error:", l_new_function_cv, 0},
    {K_FUNCTION, NULL, "functionConstantsDictionary", f_constants, 0},
    {K_DICT, NULL, "allValues", dict_all_values, 0},
    {K_FCONST, NULL, "index", fc_index, 0},
    {K_FCONST, NULL, "type", fc_type, 0},
    {K_CLASS, "MTLFunctionConstantValues", "alloc", c_alloc, 0},
    {K_FCVALUES, NULL, "init", i_init, 0},
    {K_FCVALUES, NULL, "setConstantValue:type:atIndex:", fcv_set, 0},
    {K_PDESC, NULL, "setComputeFunction:", pd_function, 0},
    {K_PDESC, NULL, "setLabel:", x_set_label, 0},
    {K_PDESC, NULL, "setMaxTotalThreadsPerThreadgroup:", pd_max, 0},
    {K_PDESC, NULL, "setThreadGroupSizeIsMultipleOfThreadExecutionWidth:", pd_simd, 0},
    {K_PDESC, NULL, "setBinaryArchives:", pd_archives, 0},
    {K_PDESC, NULL, "setSupportIndirectCommandBuffers:", pd_support_icb, 0},
    {K_CLASS, "MTLIndirectCommandBufferDescriptor", "alloc", c_alloc, 0},
    {K_ICBDESC, NULL, "init", i_init, 0},
    {K_ICBDESC, NULL, "setCommandTypes:", icd_types, 0},
    {K_ICBDESC, NULL, "setInheritPipelineState:", icd_inherit_pso, 0},
    {K_ICBDESC, NULL, "setInheritBuffers:", icd_inherit_buf, 0},
    {K_ICBDESC, NULL, "setMaxKernelBufferBindCount:", icd_maxbind, 0},
    {K_ICBDESC, NULL, "setMaxKernelThreadgroupMemoryBindCount:", icd_tgbind, F_TGBIND},
    {K_DEVICE, NULL, "newIndirectCommandBufferWithDescriptor:maxCommandCount:options:", d_new_icb, F_REAL_GPU},
    {K_DEVICE, NULL, "supportsFamily:", d_family, 0},
    {K_ICB, NULL, "setLabel:", x_set_label, 0},
    {K_ICB, NULL, "indirectComputeCommandAtIndex:", icb_command, 0},
    {K_ICMD, NULL, "setComputePipelineState:", ic_pso, 0},
    {K_ICMD, NULL, "setKernelBuffer:offset:atIndex:", ic_buffer, 0},
    {K_ICMD, NULL, "setThreadgroupMemoryLength:atIndex:", ic_tgmem, 0},
    {K_ICMD, NULL, "concurrentDispatchThreadgroups:threadsPerThreadgroup:", ic_dispatch, 0},
    {K_ICMD, NULL, "setBarrier", ic_barrier, 0},
    {K_ICMD, NULL, "reset", ic_reset, 0},
    {K_PSO, NULL, "maxTotalThreadsPerThreadgroup", ps_max, 0},
    {K_PSO, NULL, "threadExecutionWidth", ps_width, 0},
    {K_PSO, NULL, "staticThreadgroupMemoryLength", ps_static_tg, 0},
    {K_ADESC, NULL, "setUrl:", ad_url, 0},
    {K_ARCHIVE, NULL, "addComputePipelineFunctionsWithDescriptor:error:", ar_add, 0},
    {K_ARCHIVE, NULL, "serializeToURL:error:", ar_serialize, 0},
    {K_QUEUE, NULL, "commandBufferWithDescriptor:", q_cmdbuf, 0},
    {K_QUEUE, NULL, "setLabel:", x_set_label, 0},
    {K_QUEUE, NULL, "addResidencySet:", q_add_rset, F_RESIDENCY},
    {K_QUEUE, NULL, "removeResidencySet:", q_remove_rset, F_RESIDENCY},
    {K_CBDESC, NULL, "setErrorOptions:", cd_errors, 0},
    {K_CBDESC, NULL, "setRetainedReferences:", cd_retained, 0},
    {K_CMDBUF, NULL, "setLabel:", x_set_label, 0},
    {K_CMDBUF, NULL, "computeCommandEncoderWithDispatchType:", cb_compute, 0},
    {K_CMDBUF, NULL, "blitCommandEncoder", cb_blit, 0},
    {K_CMDBUF, NULL, "encodeSignalEvent:value:", cb_signal, 0},
    {K_CMDBUF, NULL, "encodeWaitForEvent:value:", cb_wait, 0},
    {K_CMDBUF, NULL, "addScheduledHandler:", cb_add_scheduled, 0},
    {K_CMDBUF, NULL, "addCompletedHandler:", cb_add_completed, 0},
    {K_CMDBUF, NULL, "commit", cb_commit, 0},
    {K_CMDBUF, NULL, "status", cb_status, 0},
    {K_CMDBUF, NULL, "error", cb_error, 0},
    {K_CMDBUF, NULL, "GPUStartTime", cb_start, 0},
    {K_CMDBUF, NULL, "GPUEndTime", cb_end, 0},
    {K_CENC, NULL, "setLabel:", x_set_label, 0},
    {K_CENC, NULL, "setComputePipelineState:", e_pso, 0},
    {K_CENC, NULL, "setBuffer:offset:atIndex:", e_buffer, 0},
    {K_CENC, NULL, "setBytes:length:atIndex:", e_bytes, 0},
    {K_CENC, NULL, "setThreadgroupMemoryLength:atIndex:", e_tgmem, 0},
    {K_CENC, NULL, "dispatchThreadgroups:threadsPerThreadgroup:", e_dispatch, 0},
    {K_CENC, NULL, "dispatchThreadgroupsWithIndirectBuffer:indirectBufferOffset:threadsPerThreadgroup:", e_indirect, 0},
    {K_CENC, NULL, "memoryBarrierWithScope:", e_barrier, 0},
    {K_CENC, NULL, "useResources:count:usage:", e_use, 0},
    {K_CENC, NULL, "executeCommandsInBuffer:withRange:", e_exec_range, 0},
    {K_CENC, NULL, "executeCommandsInBuffer:indirectBuffer:indirectBufferOffset:", e_exec_indirect, 0},
    {K_CENC, NULL, "endEncoding", e_end, 0},
    {K_BENC, NULL, "setLabel:", x_set_label, 0},
    {K_BENC, NULL, "copyFromBuffer:sourceOffset:toBuffer:destinationOffset:size:", e_copy, 0},
    {K_BENC, NULL, "fillBuffer:range:value:", e_fill, 0},
    {K_BENC, NULL, "endEncoding", e_end, 0},
    {K_EVENT, NULL, "signaledValue", ev_value, 0},
    {K_EVENT, NULL, "setSignaledValue:", ev_set, 0},
    {K_EVENT, NULL, "waitUntilSignaledValue:timeoutMS:", ev_wait, F_WAIT},
    {K_EVENT, NULL, "notifyListener:atValue:block:", ev_notify, 0},
    {K_RDESC, NULL, "setLabel:", x_set_label, F_RESIDENCY},
    {K_RDESC, NULL, "setInitialCapacity:", rd_capacity, F_RESIDENCY},
    {K_RSET, NULL, "addAllocation:", rs_add, F_RESIDENCY},
    {K_RSET, NULL, "removeAllocation:", rs_remove, F_RESIDENCY},
    {K_RSET, NULL, "commit", rs_commit, F_RESIDENCY},
    {K_RSET, NULL, "requestResidency", rs_nothing, F_RESIDENCY},
    {K_RSET, NULL, "endResidency", rs_nothing, F_RESIDENCY},
    {K_EINFO, NULL, "label", x_label, 0},
    {K_EINFO, NULL, "errorState", ei_state, 0},
};

static const imp_fn generic_retain = i_retain, generic_release = i_release, generic_responds = i_responds;

/* Each modelled macOS's table: what Apple's availability notes give each
 * method (a scenario without a major version falls back to its flags). */
static bool feature_on(int f)
{
    int v = g_os.major;
    if (v) switch (f) {
        case F_RESIDENCY: return v >= 15; /* MTLResidencySet, addResidencySet: */
        case F_WAIT: return v >= 12;      /* waitUntilSignaledValue:timeoutMS: */
        case F_MATH: return v >= 15;      /* MTLCompileOptions.mathMode */
        case F_ARCH: return v >= 14;      /* MTLDevice.architecture */
        default: break;
        }
    switch (f) {
    case F_RESIDENCY: return g_os.residency_sets;
    case F_WAIT: return g_os.wait_timeout;
    case F_MATH: return g_os.math_mode;
    case F_ARCH: return g_os.architecture;
    case F_TGBIND: return g_os.major >= 14;    /* maxKernelThreadgroupMemoryBindCount: macOS 14 */
    case F_REAL_GPU: return !g_os.paravirtual; /* the paravirtual GPU lacks them (MLX issue 31) */
    default: return true;
    }
}

static const imp_fn *find_imp(obj *o, const struct objc_selector *s)
{
    if (!s) return NULL;
    if (o->kind != K_CLASS) {
        if (!strcmp(s->name, "retain")) return &generic_retain;
        if (!strcmp(s->name, "release")) return &generic_release;
        if (!strcmp(s->name, "respondsToSelector:")) return &generic_responds;
        if (!strcmp(s->name, "drain") && o->kind == K_POOL) return NULL; /* handled in dispatch */
    }
    for (size_t i = 0; i < sizeof methods / sizeof methods[0]; i++) {
        const method *m = &methods[i];
        if (m->kind != o->kind || strcmp(m->sel, s->name) != 0) continue;
        if (m->cls && strcmp(m->cls, o->cls) != 0) continue;
        return feature_on(m->feature) ? &m->imp : NULL;
    }
    return NULL;
}

/* ---- dispatch -------------------------------------------------------------------------------- */

/* Weak, so that a test may define its own and forward here
 * (runtime_encodings.c run against this double). */
__attribute__((weak)) void mc__mtl_contract_note(SEL sel, const char *ret, const char *proto, const char *const *enc,
                                                 int n)
{
    mcd_contract_note(sel, ret, proto, enc, n);
}

void mcd_contract_note(SEL sel, const char *ret, const char *proto, const char *const *enc, int n)
{
    tls_note_sel = sel;
    tls_note_ret = ret;
    tls_note_proto = proto;
    tls_note_enc[0] = '\0';
    for (int i = 0; i < n; i++) strncat(tls_note_enc, enc[i], sizeof tls_note_enc - strlen(tls_note_enc) - 1);
}

/* System V x86_64 argument classes of the documented parameter types. */
static int arg_words(const char *type, int *cls)
{
    if (!strcmp(type, "MTLSize")) return *cls = 2, 3;                                   /* MEMORY: on the stack */
    if (!strcmp(type, "NSRange")) return *cls = 3, 2;                                   /* two INTEGER eightbytes */
    if (!strcmp(type, "double") || !strcmp(type, "CFTimeInterval")) return *cls = 1, 1; /* SSE */
    return *cls = 0, 1;                                                                 /* INTEGER */
}

static void decode(const doc_entry *d, const mcd_raw *raw, uintptr_t *w)
{
    int ri = 0, fi = 0, si = 0, wi = 0;
    for (int p = 0; p < d->nparams; p++) {
        int cls, n = arg_words(d->param[p], &cls);
        if (cls == 1) {
            double v = raw->fp[fi++];
            memcpy(&w[wi++], &v, sizeof v);
        } else if (cls == 2 || (cls == 3 && ri + 2 > raw->nreg)) {
            for (int k = 0; k < n; k++) w[wi++] = raw->stack[si++];
        } else if (cls == 3) {
            w[wi++] = raw->reg[ri++];
            w[wi++] = raw->reg[ri++];
        } else {
            w[wi++] = ri < raw->nreg ? raw->reg[ri++] : raw->stack[si++];
        }
    }
}

/* Messages that cannot autorelease: the pool's own, retain, and a release
 * that is not the last (a last one runs dealloc). */
static bool needs_pool(const obj *o, const char *sel)
{
    if (o->kind == K_POOL || (o->kind == K_CLASS && !strcmp(o->cls, "NSAutoreleasePool"))) return false;
    if (!strcmp(sel, "retain")) return false;
    if (!strcmp(sel, "release")) return o->refs == 1 && !o->immortal;
    return true;
}

void mcd_dispatch(id self_, SEL op_, const mcd_raw *raw, bool stret, mcd_out *out)
{
    memset(out, 0, sizeof *out);
    const char *note_ret = tls_note_ret, *note_proto = tls_note_proto;
    char note_enc[256];
    snprintf(note_enc, sizeof note_enc, "%s", tls_note_enc);
    SEL note_sel = tls_note_sel;
    tls_note_ret = tls_note_proto = NULL;
    tls_note_sel = NULL;
    tls_note_enc[0] = '\0';
    pthread_mutex_lock(&G);
    g_stats.messages++;
    if (stret) g_stats.stret_messages++;
    struct objc_selector *s = op_;
    bool known = false;
    for (struct objc_selector *x = g_sels; x && !known; x = x->next) known = x == s;
    if (!known) {
        violation("message with a selector that did not come from sel_registerName (%p)", (void *)op_);
        pthread_mutex_unlock(&G);
        return;
    }
    const doc_entry *d = s->doc;
    bool ok = true;
    if (!d) {
        violation("'%s' is not in the documented selector list (metal_selectors.txt)", s->name);
        ok = false;
    } else if (note_proto && note_sel != op_) {
        violation("'%s' sent through the wrapper of '%s'", s->name, sel_getName(note_sel));
        ok = false;
    } else if (!note_proto) {
        violation("'%s' was not sent through a typed wrapper (no prototype noted)", s->name);
        ok = false;
    } else {
        char proto[512], ret[64];
        mcd_normalize(note_proto, proto, sizeof proto);
        mcd_normalize(note_ret, ret, sizeof ret);
        int nargs = 0;
        for (const char *c = proto; *c; c++) nargs += *c == ',';
        nargs -= 1; /* (id,SEL,...) */
        bool want_stret = !strcmp(d->ret, "MTLSize");
        if (nargs != d->nparams)
            violation("'%s' sent with %d arguments; the selector has %d colons", s->name, nargs, d->nparams);
        else if (strcmp(proto, d->proto) != 0 || strcmp(ret, d->ret) != 0)
            violation("'%s' sent as %s %s; documented %s %s", s->name, ret, proto, d->ret, d->proto);
        else if (!s->encoding) violation("'%s' has no Objective-C type encoding in metal_encodings.txt", s->name);
        else if (!encoding_equal(s->encoding, note_enc))
            violation("'%s' sent with type encoding %s; Apple declares %s (metal_encodings.txt)", s->name, note_enc,
                      s->encoding);
        else if (want_stret != stret)
            violation("'%s' returns %s: it must come through %s", s->name, d->ret,
                      want_stret ? "objc_msgSend_stret on x86_64" : "objc_msgSend");
        else ok = true;
        ok = ok && nargs == d->nparams;
    }
    if (!ok || !self_) { /* a message that cannot be decoded is not run; messages to nil return zero */
        pthread_mutex_unlock(&G);
        return;
    }
    obj *o = lookup(self_);
    if (!o) {
        violation("'%s' sent to %p, which is not an object", s->name, (void *)self_);
    } else if (o->dead && !strcmp(s->name, "release")) {
        violation("release of %s after its last reference was dropped (double release)", describe(o));
    } else if (o->dead) {
        violation("'%s' sent to %s after it was released", s->name, describe(o));
    } else {
        uintptr_t w[32] = {0};
        if (d) decode(d, raw, w);
        s->count++;
        if (!tls_npools && needs_pool(o, s->name))
            violation(
                "'%s' sent to %s with no autorelease pool on this thread: Metal may autorelease inside "
                "any message, and what it autoreleases there leaks",
                s->name, describe(o));
        if (o->kind == K_POOL && !strcmp(s->name, "drain")) {
            pool_drain(o);
        } else {
            const imp_fn *imp = find_imp(o, s);
            if (!imp)
                violation("'%s' sent to %s, which does not implement it (unrecognized selector)", s->name, describe(o));
            else (*imp)(o, w, out);
        }
    }
    pthread_mutex_unlock(&G);
}

/* ---- classes, devices, constants ---------------------------------------------------------- */

static obj *g_classes[32];
static int g_nclasses;

Class objc_getClass(const char *name)
{
    static const char *const known[] = {"NSAutoreleasePool",
                                        "NSString",
                                        "NSURL",
                                        "NSArray",
                                        "NSDictionary",
                                        "NSProcessInfo",
                                        "MTLCompileOptions",
                                        "MTLComputePipelineDescriptor",
                                        "MTLBinaryArchiveDescriptor",
                                        "MTLCommandBufferDescriptor",
                                        "MTLSharedEventListener",
                                        "MTLResidencySetDescriptor",
                                        "MTLIndirectCommandBufferDescriptor",
                                        "NSObject",
                                        "NSError",
                                        "MTLFunctionConstantValues",
                                        "MTLFunctionConstant"};
    pthread_mutex_lock(&G);
    load_docs();
    obj *found = NULL;
    for (int i = 0; i < g_nclasses && !found; i++)
        if (!strcmp(g_classes[i]->cls, name)) found = g_classes[i];
    for (size_t i = 0; !found && i < sizeof known / sizeof known[0]; i++)
        if (!strcmp(known[i], name)) {
            found = new_obj(K_CLASS, "objc_getClass");
            found->cls = known[i];
            found->immortal = true;
            g_classes[g_nclasses++] = found;
        }
    pthread_mutex_unlock(&G);
    return (Class)found;
}

/* ---- introspection: what runtime_encodings.c asks of the real runtime ---------------------- */

/* An instance's class: one token per kind. A public class (objc_getClass)
 * stands for its instances' kind. */
static char g_kind_class[K_COUNT];

struct objc_method {
    const char *sel;
    const char *enc;
};
static struct objc_method g_methods[256];
static size_t g_nmethods;

Class object_getClass(id obj_)
{
    pthread_mutex_lock(&G);
    obj *o = lookup(obj_);
    Class c = o && !o->dead ? (Class)(void *)&g_kind_class[o->kind] : (Class)0;
    pthread_mutex_unlock(&G);
    return c;
}

/* -1: NSObject (the generic methods), 0: unknown. G held. */
static int class_kind_locked(Class cls, const obj **as_class)
{
    *as_class = NULL;
    const char *p = (const char *)(void *)cls;
    if (p >= g_kind_class && p < g_kind_class + K_COUNT) return (int)(p - g_kind_class);
    const obj *o = lookup(cls);
    if (!o || o->kind != K_CLASS) return 0;
    *as_class = o;
    static const struct {
        const char *cls;
        int kind;
    } t[] = {{"NSString", K_STRING},        {"NSURL", K_URL},     {"NSArray", K_ARRAY}, {"NSDictionary", K_DICT},
             {"NSProcessInfo", K_PROCINFO}, {"NSError", K_ERROR}, {"NSObject", -1}};
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++)
        if (!strcmp(t[i].cls, o->cls)) return t[i].kind;
    return alloc_kind(o->cls);
}

static Method method_of_locked(const char *sel)
{
    for (size_t i = 0; i < g_nmethods; i++)
        if (!strcmp(g_methods[i].sel, sel)) return &g_methods[i];
    if (g_nmethods == sizeof g_methods / sizeof g_methods[0]) return NULL;
    g_methods[g_nmethods] = (struct objc_method){strdup(sel), find_encoding(sel)};
    return &g_methods[g_nmethods++];
}

static Method lookup_method(Class cls, SEL sel, bool class_method)
{
    if (!cls || !sel) return NULL;
    pthread_mutex_lock(&G);
    const obj *as_class;
    int kind = class_kind_locked(cls, &as_class);
    bool found = false;
    const char *name = sel->name;
    if (class_method) {
        for (size_t i = 0; as_class && !found && i < sizeof methods / sizeof methods[0]; i++)
            found = methods[i].kind == K_CLASS && methods[i].cls && !strcmp(methods[i].cls, as_class->cls) &&
                    !strcmp(methods[i].sel, name) && feature_on(methods[i].feature);
        found = found || (as_class && !strcmp(name, "alloc")); /* every class inherits +alloc */
    } else if (kind) {
        found = !strcmp(name, "retain") || !strcmp(name, "release") || !strcmp(name, "respondsToSelector:") ||
                (kind == -1 && !strcmp(name, "init")) || (kind == K_POOL && !strcmp(name, "drain"));
        for (size_t i = 0; kind > 0 && !found && i < sizeof methods / sizeof methods[0]; i++)
            found = methods[i].kind == kind && !strcmp(methods[i].sel, name) && feature_on(methods[i].feature);
    }
    Method m = found ? method_of_locked(name) : NULL;
    pthread_mutex_unlock(&G);
    return m;
}

Method class_getInstanceMethod(Class cls, SEL sel)
{
    return lookup_method(cls, sel, false);
}

Method class_getClassMethod(Class cls, SEL sel)
{
    return lookup_method(cls, sel, true);
}

const char *method_getTypeEncoding(Method m)
{
    return m ? m->enc : NULL;
}

static obj domain_obj = {
    .magic = MCD_MAGIC, .kind = K_STRING, .immortal = true, .refs = 1, .origin = "MTLCommandBufferErrorDomain"};
static obj infokey_obj = {
    .magic = MCD_MAGIC, .kind = K_STRING, .immortal = true, .refs = 1, .origin = "MTLCommandBufferEncoderInfoErrorKey"};
id const MTLCommandBufferErrorDomain = (id)&domain_obj;
id const MTLCommandBufferEncoderInfoErrorKey = (id)&infokey_obj;

static void ensure_system_locked(void)
{
    load_docs();
    if (!domain_obj.str) {
        domain_obj.str = strdup("MTLCommandBufferErrorDomain");
        infokey_obj.str = strdup("MTLCommandBufferEncoderInfoErrorKey");
        set_insert(&domain_obj);
        set_insert(&infokey_obj);
    }
    if (!g_procinfo) {
        g_procinfo = new_obj(K_PROCINFO, "the system");
        g_procinfo->immortal = true;
    }
    if (!g_device) {
        g_device = new_obj(K_DEVICE, "the system"); /* the system's own reference */
        g_device->str = strdup("Apple M-double GPU");
    }
    if (!g_device2 && g_os.second_gpu) {
        g_device2 = new_obj(K_DEVICE, "the system");
        g_device2->str = strdup("AMD Radeon double eGPU");
    }
}

id MTLCreateSystemDefaultDevice(void)
{
    pthread_mutex_lock(&G);
    ensure_system_locked();
    obj_retain(g_device); /* Create rule: the caller owns one reference */
    pthread_mutex_unlock(&G);
    return (id)g_device;
}

id MTLCopyAllDevices(void)
{
    pthread_mutex_lock(&G);
    ensure_system_locked();
    obj *arr = new_obj(K_ARRAY, "MTLCopyAllDevices"); /* Copy rule: owned by the caller */
    if (g_device2) push_item(arr, g_device2, true);   /* not necessarily the default first */
    push_item(arr, g_device, true);
    pthread_mutex_unlock(&G);
    return (id)arr;
}

/* ---- the simulated GPU ---------------------------------------------------------------------- */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

typedef struct kctx {
    const op *o;
    bool fault;
    char why[160];
} kctx;

static void *arg_mem(kctx *k, int slot, size_t at, size_t n)
{
    const obj *b = k->o->buf[slot];
    if (!b) {
        if (k->o->bytes[slot] && at + n <= k->o->bytes_len[slot]) return k->o->bytes[slot] + at;
        snprintf(k->why, sizeof k->why, "kernel '%s': argument slot %d not bound", k->o->pso->str, slot);
        k->fault = true;
        return NULL;
    }
    if (b->dead) {
        violation("kernel '%s' ran with released %s (unretained references must outlive the command buffer)",
                  k->o->pso->str, describe(b));
        k->fault = true;
        return NULL;
    }
    size_t off = k->o->off[slot], end;
    if (__builtin_add_overflow(off, at, &end) || __builtin_add_overflow(end, n, &end) || end > b->len) {
        snprintf(k->why, sizeof k->why, "kernel '%s': slot %d read/write at %zu beyond %zu bytes", k->o->pso->str, slot,
                 off + at, b->len);
        k->fault = true;
        return NULL;
    }
    return (char *)b->mem + off + at;
}

static uint32_t arg_u32(kctx *k, int slot)
{
    uint32_t v = 0, *p = arg_mem(k, slot, 0, 4);
    if (p) memcpy(&v, p, 4);
    return v;
}

/* C versions of examples/kernels/basic.metal and the backend's byte kernels;
 * one call per thread, tid = thread_position_in_grid.x. */
static void run_kernel(kctx *k, const char *fn, uint64_t tid)
{
    if (!strcmp(fn, "empty")) return;
    if (!strcmp(fn, "fc_scale")) { /* out[i] = i * fc_mul, negated when fc_neg is set and true */
        const obj *p = k->o->pso;
        uint64_t mul = 0, neg = 0;
        for (size_t i = 0; i < p->nfc; i++) {
            if (p->fc_set[i] && p->fc_index[i] == 0) mul = p->fc_value[i];
            if (p->fc_set[i] && p->fc_index[i] == 1) neg = p->fc_value[i] & 0xff;
        }
        int32_t v = (int32_t)((uint32_t)tid * (uint32_t)mul), *o;
        if ((o = arg_mem(k, 0, tid * 4, 4))) *o = neg ? -v : v;
        return;
    }
    if (!strcmp(fn, "add_one")) {
        uint32_t n = arg_u32(k, 1), *p;
        if (tid < n && (p = arg_mem(k, 0, tid * 4, 4))) *p += 1;
    } else if (!strcmp(fn, "iota")) {
        uint32_t n = arg_u32(k, 1), base = arg_u32(k, 2), *p;
        if (tid < n && (p = arg_mem(k, 0, tid * 4, 4))) *p = base + (uint32_t)tid;
    } else if (!strcmp(fn, "saxpy")) {
        float a, *y, *x;
        uint32_t n = arg_u32(k, 3);
        float *ap = arg_mem(k, 2, 0, 4);
        if (!ap) return;
        memcpy(&a, ap, 4);
        if (tid < n && (y = arg_mem(k, 0, tid * 4, 4)) && (x = arg_mem(k, 1, tid * 4, 4))) *y = a * *x + *y;
    } else if (!strcmp(fn, "copy_f32")) {
        uint32_t n = arg_u32(k, 2);
        float *d, *s;
        if (tid < n && (d = arg_mem(k, 0, tid * 4, 4)) && (s = arg_mem(k, 1, tid * 4, 4))) *d = *s;
    } else if (!strcmp(fn, "spin")) {
        uint32_t iters = arg_u32(k, 1), acc = (uint32_t)tid, *p;
        for (uint32_t i = 0; i < iters; i++) acc = acc * 1664525u + 1013904223u;
        if ((p = arg_mem(k, 0, tid * 4, 4))) *p = acc;
    } else if (!strcmp(fn, "oob_write")) {
        uint64_t off = 0;
        uint64_t *po = arg_mem(k, 1, 0, 8);
        uint32_t *p;
        if (po) memcpy(&off, po, 8);
        if (tid == 0 && (p = arg_mem(k, 0, off > SIZE_MAX / 4 ? SIZE_MAX - 4 : (size_t)off * 4, 4))) *p = 1;
    } else if (!strcmp(fn, "mc_copy_bytes")) {
        uint32_t n = arg_u32(k, 2);
        unsigned char *d, *s;
        if (tid < n && (d = arg_mem(k, 0, tid, 1)) && (s = arg_mem(k, 1, tid, 1))) *d = *s;
    } else if (!strcmp(fn, "mc_clamp_range")) {
        uint32_t n = arg_u32(k, 2), *in = arg_mem(k, 0, 0, 8), *out = arg_mem(k, 1, 0, 8);
        if (tid == 0 && in && out) {
            uint32_t first = in[0] < n ? in[0] : n, count = in[1] < n - first ? in[1] : n - first;
            out[0] = first;
            out[1] = count;
        }
    } else if (!strcmp(fn, "mc_check_grid")) {
        uint32_t *in = arg_mem(k, 0, 0, 12), *out = arg_mem(k, 1, 0, 16);
        if (tid == 0 && in && out) {
            bool over = in[0] && in[1] && in[2] && (in[0] > 2147483647u || in[1] > 65535u || in[2] > 65535u);
            for (int i = 0; i < 3; i++) out[i] = over ? 0 : in[i];
            out[3] = over;
        }
    } else if (!strcmp(fn, "mc_fill_bytes")) {
        uint32_t n = arg_u32(k, 1), v = arg_u32(k, 2);
        unsigned char *d;
        if (!k->fault && tid < n && (d = arg_mem(k, 0, tid, 1))) *d = (unsigned char)v;
    } else {
        snprintf(k->why, sizeof k->why, "no C version of kernel '%s' in the double", fn);
        k->fault = true;
    }
}

static bool execute(const op *o, char *why, size_t cap);

/* An ICB's commands, each as the dispatch it encodes. The range a buffer
 * gives is not clamped: Metal does not, so the backend must have. */
static bool execute_icb(const op *o, char *why, size_t cap)
{
    obj *icb = o->a;
    size_t loc = o->groups[0], len = o->groups[1];
    if (icb->dead) violation("an ICB ran after it was released (%s)", describe(icb));
    if (o->b) {
        uint32_t r[2];
        if (o->b->dead) violation("an ICB range ran from released %s", describe(o->b));
        if (o->b_off + 8 > o->b->len) {
            snprintf(why, cap, "ICB range at %zu beyond %s", o->b_off, describe(o->b));
            return false;
        }
        memcpy(r, (char *)o->b->mem + o->b_off, 8);
        loc = r[0];
        len = r[1];
        if (loc > icb->nicmds || len > icb->nicmds - loc || len > 16384) {
            violation(
                "executeCommandsInBuffer:indirectBuffer:... read the range {%zu, %zu} for an ICB of %zu commands: "
                "Metal does not clamp it",
                loc, len, icb->nicmds);
            return true;
        }
    }
    for (size_t k = loc; k < loc + len && k < icb->nicmds; k++) {
        const icmd *c = &icb->icmds[k];
        if (!c->encoded) continue; /* a reset command does nothing */
        op d;
        memset(&d, 0, sizeof d);
        d.type = OP_DISPATCH;
        d.pso = c->pso;
        memcpy(d.buf, c->buf, sizeof d.buf);
        memcpy(d.off, c->off, sizeof d.off);
        memcpy(d.groups, c->groups, sizeof d.groups);
        memcpy(d.threads, c->threads, sizeof d.threads);
        g_stats.icb_commands_run++;
        if (!execute(&d, why, cap)) return false;
    }
    return true;
}

/* Returns false (and a reason) on a simulated page fault. */
static bool execute(const op *o, char *why, size_t cap)
{
    if (o->type == OP_EXEC_ICB) return execute_icb(o, why, cap);
    if (o->type == OP_DISPATCH || o->type == OP_INDIRECT) {
        kctx k = {o, false, ""};
        uintptr_t groups[3] = {o->groups[0], o->groups[1], o->groups[2]};
        if (o->pso->dead) {
            violation("dispatch ran with released %s", describe(o->pso));
            return false;
        }
        if (o->type == OP_INDIRECT) {
            uint32_t g[3];
            if (o->a->dead) violation("indirect dispatch ran with released %s", describe(o->a));
            if (o->a_off + 12 > o->a->len) {
                snprintf(why, cap, "indirect arguments at %zu beyond %s", o->a_off, describe(o->a));
                return false;
            }
            memcpy(g, (char *)o->a->mem + o->a_off, 12);
            groups[0] = g[0], groups[1] = g[1], groups[2] = g[2];
        }
        uint64_t n = (uint64_t)groups[0] * o->threads[0];
        if (groups[1] * groups[2] == 0) n = 0;
        for (uint64_t tid = 0; tid < n && !k.fault; tid++) run_kernel(&k, o->pso->str, tid);
        if (k.fault) snprintf(why, cap, "%s", k.why);
        return !k.fault;
    }
    if (o->type == OP_COPY) {
        if (o->a->dead || o->b->dead) violation("copy ran with a released buffer");
        if (o->a_off + o->len > o->a->len || o->b_off + o->len > o->b->len) {
            snprintf(why, cap, "copy of %zu bytes outside its buffers", o->len);
            return false;
        }
        memmove((char *)o->b->mem + o->b_off, (char *)o->a->mem + o->a_off, o->len);
    } else if (o->type == OP_FILL) {
        if (o->a->dead) violation("fill ran with a released buffer");
        if (o->a_off + o->len > o->a->len) {
            snprintf(why, cap, "fill of %zu bytes outside %s", o->len, describe(o->a));
            return false;
        }
        memset((char *)o->a->mem + o->a_off, (int)o->value, o->len);
    }
    return true;
}

static void invoke_handlers(obj *cb, bool sched)
{
    for (int i = 0; i < cb->nhandlers; i++) {
        if (cb->handler_is_sched[i] != sched) continue;
        block_layout *b = cb->handlers[i];
        int depth = tls_npools;
        pthread_mutex_unlock(&G);
        ((void (*)(void *, id))b->invoke)(b, (id)cb);
        pthread_mutex_lock(&G);
        if (tls_npools != depth)
            violation("a %s handler left %d autorelease pools open", sched ? "scheduled" : "completed",
                      tls_npools - depth);
    }
}

enum { ES_UNKNOWN, ES_COMPLETED, ES_AFFECTED, ES_PENDING, ES_FAULTED };

static void make_error(obj *cb, long code, const char *why)
{
    obj *e = new_obj(K_ERROR, "a failed command buffer");
    e->code = code;
    e->a = &domain_obj;
    char text[320];
    snprintf(text, sizeof text, "Command buffer execution failed (simulated MTLCommandBufferError %ld): %s", code, why);
    e->str = strdup(text);
    if (cb->err_opts & 1u) { /* MTLCommandBufferErrorOptionEncoderExecutionStatus (F686) */
        obj *infos = new_obj(K_ARRAY, "encoder infos");
        for (int i = 0; i < cb->nenc; i++) {
            obj *info = new_obj(K_EINFO, "MTLCommandBufferEncoderInfo");
            snprintf(info->label, sizeof info->label, "%s", cb->enc_label[i]);
            info->code = cb->enc_state[i];
            push_item(infos, info, false);
        }
        obj *dict = new_obj(K_DICT, "NSError.userInfo");
        push_item(dict, infos, false);
        dict->keys[0] = &infokey_obj;
        e->b = dict;
    }
    cb->b = e; /* owned by the command buffer */
}

static void run_cmdbuf(obj *cb)
{
    g_executing++;
    cb->status = 3; /* scheduled */
    cb->t0 = now_s();
    cb->enc_state = calloc(cb->nenc ? cb->nenc : 1, sizeof *cb->enc_state);
    cb->enc_label = calloc(cb->nenc ? cb->nenc : 1, sizeof *cb->enc_label);
    for (size_t i = 0, e = 0; i < cb->nops; i++)
        if (cb->ops[i].type == OP_ENC_BEGIN) cb->enc_label[e++] = strdup(cb->ops[i].enc->label);
    invoke_handlers(cb, true);
    int enc = -1;
    long code = 0;
    char why[200] = "";
    for (int i = 0; i < cb->nenc; i++) cb->enc_state[i] = ES_PENDING;
    for (size_t i = 0; i < cb->nops && !code; i++) {
        op *o = &cb->ops[i];
        switch (o->type) {
        case OP_ENC_BEGIN:
            enc++;
            if (enc == cb->fail_enc) {
                code = cb->fail_code;
                snprintf(why, sizeof why, "injected by the test at encoder %d", enc);
                cb->enc_state[enc] = ES_FAULTED;
            }
            break;
        case OP_ENC_END: cb->enc_state[enc] = ES_COMPLETED; break;
        case OP_SIGNAL: event_set_locked(o->a, o->value); break;
        case OP_WAIT: {
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_sec += 5; /* the double's watchdog */
            while (o->a->value < o->value)
                if (pthread_cond_timedwait(&ev_cv, &G, &ts) == ETIMEDOUT) break;
            if (o->a->value < o->value) {
                code = 2;
                snprintf(why, sizeof why, "waited 5 s for event value %llu", (unsigned long long)o->value);
            }
            break;
        }
        default:
            if (!execute(o, why, sizeof why)) {
                code = 3; /* a page fault */
                cb->enc_state[enc] = ES_FAULTED;
            }
        }
    }
    if (!code && cb->fail_code) { /* planned past the last encoder */
        code = cb->fail_code;
        snprintf(why, sizeof why, "injected by the test after the last encoder");
    }
    cb->t1 = now_s();
    if (code) {
        make_error(cb, code, why);
        cb->status = 5;
    } else {
        cb->status = 4;
    }
    invoke_handlers(cb, false);
    for (int i = 0; i < cb->nenc; i++) free(cb->enc_label[i]);
    g_executing--;
    pthread_cond_broadcast(&idle_cv);
    obj_release(cb); /* the queue's reference */
}

static void *queue_worker(void *arg)
{
    obj *q = arg;
    pthread_mutex_lock(&G);
    for (;;) {
        while (!q->stop && (q->fhead == q->ftail || g_paused)) pthread_cond_wait(&gpu_cv, &G);
        if (q->fhead == q->ftail) break; /* stopped and drained */
        obj *cb = q->fifo[q->fhead++];
        run_cmdbuf(cb);
    }
    g_workers--;
    pthread_cond_broadcast(&idle_cv);
    pthread_mutex_unlock(&G);
    return NULL;
}

static void *notify_thread(void *arg)
{
    struct {
        pending_note *p;
        obj *ev;
    } *job = arg;
    block_layout *b = job->p->block;
    pthread_mutex_lock(&G);
    uint64_t v = job->ev->value;
    g_stats.notifications++;
    pthread_mutex_unlock(&G);
    ((void (*)(void *, id, uint64_t))b->invoke)(b, (id)job->ev, v);
    pthread_mutex_lock(&G);
    block_dispose(b);
    obj_release(job->p->listener);
    obj_release(job->ev);
    free(job->p);
    free(job);
    g_notifiers--;
    pthread_cond_broadcast(&idle_cv);
    pthread_mutex_unlock(&G);
    return NULL;
}

/* ---- scenarios ---------------------------------------------------------------------------------- */

bool mcd_abi_supported(void)
{
    return MCD_ABI_SUPPORTED;
}

void mcd_begin(const mcd_os *os)
{
    pthread_mutex_lock(&G);
    g_os = *os;
    g_scenario++;
    ensure_system_locked();
    memset(&g_stats, 0, sizeof g_stats);
    for (struct objc_selector *s = g_sels; s; s = s->next) s->count = 0;
    g_plan_nth = 0;
    g_paused = false;
    pthread_mutex_unlock(&G);
}

static bool gpu_idle_locked(void)
{
    if (g_executing) return false;
    for (obj *o = g_all; o; o = o->next_all)
        if (o->kind == K_QUEUE && !o->dead && o->fhead != o->ftail) return false;
    return true;
}

int mcd_end(void)
{
    pthread_mutex_lock(&G);
    g_paused = false;
    pthread_cond_broadcast(&gpu_cv);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += 10;
    while (!gpu_idle_locked() || g_notifiers > 0) {
        if (pthread_cond_timedwait(&idle_cv, &G, &ts) == ETIMEDOUT) {
            violation("the simulated GPU did not go idle within 10 s");
            break;
        }
    }
    if (tls_npools) violation("%d autorelease pools left open on the test thread", tls_npools);
    /* The system lets go of its device; what is left is somebody's leak. */
    obj_release(g_device);
    obj_release(g_device2);
    g_device = g_device2 = NULL;
    for (obj *o = g_all; o; o = o->next_all) {
        if (o->dead || o->immortal || o->scenario != g_scenario || o->owner) continue;
        violation("leak: %s still has %d reference%s", describe(o), o->refs, o->refs == 1 ? "" : "s");
    }
    /* Stop the workers of leaked queues. */
    for (obj *o = g_all; o; o = o->next_all)
        if (o->kind == K_QUEUE && !o->dead) o->stop = true;
    pthread_cond_broadcast(&gpu_cv);
    while (g_workers > 0) pthread_cond_wait(&idle_cv, &G);
    unsigned distinct = 0;
    for (struct objc_selector *s = g_sels; s; s = s->next) distinct += s->count > 0;
    g_stats.distinct_selectors = distinct;
    int v = g_violations;
    pthread_mutex_unlock(&G);
    return v;
}

int mcd_violation_count(void)
{
    pthread_mutex_lock(&G);
    int v = g_violations;
    pthread_mutex_unlock(&G);
    return v;
}

const char *mcd_last_violation(void)
{
    return g_last_violation;
}

void mcd_clear_violations(void)
{
    pthread_mutex_lock(&G);
    g_violations = 0;
    g_last_violation[0] = '\0';
    pthread_mutex_unlock(&G);
}

void mcd_fail_commit(int nth, long code, int enc)
{
    pthread_mutex_lock(&G);
    g_plan_nth = nth;
    g_plan_code = code;
    g_plan_enc = enc;
    pthread_mutex_unlock(&G);
}

void mcd_pause_gpu(bool paused)
{
    pthread_mutex_lock(&G);
    g_paused = paused;
    pthread_cond_broadcast(&gpu_cv);
    pthread_mutex_unlock(&G);
}

const mcd_stats *mcd_get_stats(void)
{
    return &g_stats;
}

void mcd_print_selector_counts(void)
{
    pthread_mutex_lock(&G);
    for (struct objc_selector *s = g_sels; s; s = s->next)
        if (s->count) fprintf(stderr, "  %8lu  %s\n", s->count, s->name);
    pthread_mutex_unlock(&G);
}
