/*
 * The OpenCL peer: the same work as the CPU device's benchmarks through
 * OpenCL, loaded at run time with dlopen("libOpenCL.so.1") so the program
 * needs no OpenCL at build time and runs where it is absent. The handful of
 * types, constants and entry points used here are declared from the OpenCL
 * 1.2 specification; no header is needed. The kernels are the OpenCL C
 * twins of examples/kernels/basic.metal.
 */
#include "peer.h"

#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ---- what we use of the OpenCL 1.2 API ------------------------------------ */

typedef int32_t cl_int;
typedef uint32_t cl_uint;
typedef uint64_t cl_ulong;
typedef cl_ulong cl_bitfield;
typedef struct cl_opaque *cl_handle; /* platform, device, context, queue, ... */
typedef intptr_t cl_context_properties;

#define CL_SUCCESS 0
#define CL_TRUE 1
#define CL_PLATFORM_VERSION 0x0901u
#define CL_PLATFORM_NAME 0x0902u
#define CL_DEVICE_TYPE_CPU ((cl_bitfield)1 << 1)
#define CL_DEVICE_NAME 0x102Bu
#define CL_MEM_READ_WRITE ((cl_bitfield)1 << 0)
#define CL_PROGRAM_BUILD_LOG 0x1183u

#define CL_FUNCTIONS(X)                                                                                           \
    X(clGetPlatformIDs, cl_int, (cl_uint, cl_handle *, cl_uint *))                                                \
    X(clGetPlatformInfo, cl_int, (cl_handle, cl_uint, size_t, void *, size_t *))                                  \
    X(clGetDeviceIDs, cl_int, (cl_handle, cl_bitfield, cl_uint, cl_handle *, cl_uint *))                          \
    X(clGetDeviceInfo, cl_int, (cl_handle, cl_uint, size_t, void *, size_t *))                                    \
    X(clCreateContext, cl_handle,                                                                                 \
      (const cl_context_properties *, cl_uint, const cl_handle *,                                                 \
       void (*)(const char *, const void *, size_t, void *), void *, cl_int *))                                   \
    X(clCreateCommandQueue, cl_handle, (cl_handle, cl_handle, cl_bitfield, cl_int *))                             \
    X(clCreateProgramWithSource, cl_handle, (cl_handle, cl_uint, const char **, const size_t *, cl_int *))        \
    X(clBuildProgram, cl_int,                                                                                     \
      (cl_handle, cl_uint, const cl_handle *, const char *, void (*)(cl_handle, void *), void *))                 \
    X(clGetProgramBuildInfo, cl_int, (cl_handle, cl_handle, cl_uint, size_t, void *, size_t *))                   \
    X(clCreateKernel, cl_handle, (cl_handle, const char *, cl_int *))                                             \
    X(clSetKernelArg, cl_int, (cl_handle, cl_uint, size_t, const void *))                                         \
    X(clCreateBuffer, cl_handle, (cl_handle, cl_bitfield, size_t, void *, cl_int *))                              \
    X(clEnqueueNDRangeKernel, cl_int,                                                                             \
      (cl_handle, cl_handle, cl_uint, const size_t *, const size_t *, const size_t *, cl_uint, const cl_handle *, \
       cl_handle *))                                                                                              \
    X(clEnqueueWriteBuffer, cl_int,                                                                               \
      (cl_handle, cl_handle, cl_uint, size_t, size_t, const void *, cl_uint, const cl_handle *, cl_handle *))     \
    X(clEnqueueReadBuffer, cl_int,                                                                                \
      (cl_handle, cl_handle, cl_uint, size_t, size_t, void *, cl_uint, const cl_handle *, cl_handle *))           \
    X(clFinish, cl_int, (cl_handle))                                                                              \
    X(clReleaseMemObject, cl_int, (cl_handle))                                                                    \
    X(clReleaseKernel, cl_int, (cl_handle))                                                                       \
    X(clReleaseProgram, cl_int, (cl_handle))                                                                      \
    X(clReleaseCommandQueue, cl_int, (cl_handle))                                                                 \
    X(clReleaseContext, cl_int, (cl_handle))

typedef struct cl_api {
#define X(name, ret, args) ret(*name) args;
    CL_FUNCTIONS(X)
#undef X
} cl_api;

/* The OpenCL C twins of examples/kernels/basic.metal: same names, same
 * argument order. */
static const char cl_source[] =
    "__kernel void empty(void) {}\n"
    "__kernel void saxpy(__global float *y, __global const float *x, float a, uint n) {\n"
    "    uint i = get_global_id(0);\n"
    "    if (i < n) y[i] = a * x[i] + y[i];\n"
    "}\n"
    "__kernel void add_one(__global uint *data, uint n) {\n"
    "    uint i = get_global_id(0);\n"
    "    if (i < n) data[i] += 1;\n"
    "}\n"
    "__kernel void iota(__global uint *out, uint n, uint base) {\n"
    "    uint i = get_global_id(0);\n"
    "    if (i < n) out[i] = base + i;\n"
    "}\n"
    "__kernel void spin(__global uint *out, uint iters) {\n"
    "    uint i = get_global_id(0), x = i;\n"
    "    for (uint k = 0; k < iters; k++) x = x * 1664525u + 1013904223u;\n"
    "    out[i] = x;\n"
    "}\n"
    "__kernel void copy_f32(__global float *dst, __global const float *src, uint n) {\n"
    "    uint i = get_global_id(0);\n"
    "    if (i < n) dst[i] = src[i];\n"
    "}\n";

/* saxpy's work-group size: as large as PoCL's CPU device allows work-group
 * loops to be, like the CPU device's 1024 (PoCL vectorises across it). */
#define CL_SAXPY_LOCAL 1024u
#define CL_BATCH_LOCAL 256u

struct mc_peer_cl {
    void *dl;
    cl_api api;
    cl_handle platform, device, context, queue;
    cl_handle program, k_empty, k_add_one, k_saxpy;
    cl_handle batch_buf;
    uint32_t batch_n;
    cl_handle x, y;
    size_t saxpy_n;
    cl_handle rd_program, rd_kernel, rd_in, rd_out; /* mc_peer_cl_reduce */
    size_t rd_n;
    char name[64];
    char describe[1100];
    char error[512];
};

static void set_error(mc_peer_cl *c, const char *call, cl_int err)
{
    snprintf(c->error, sizeof c->error, "%s failed with OpenCL error %d", call, (int)err);
}

#define CL_CHECK(c, call, expr)            \
    do {                                   \
        cl_int cl__err = (expr);           \
        if (cl__err != CL_SUCCESS) {       \
            set_error((c), call, cl__err); \
            return -1;                     \
        }                                  \
    } while (0)

const char *mc_peer_cl_name(const mc_peer_cl *c)
{
    return c->name;
}

const char *mc_peer_cl_describe(const mc_peer_cl *c)
{
    return c->describe;
}

const char *mc_peer_cl_error(const mc_peer_cl *c)
{
    return c->error;
}

/* Builds the program for one source; on failure the compiler's log goes
 * into the error. */
static cl_handle build(mc_peer_cl *c, const char *src)
{
    cl_int err;
    size_t len = strlen(src);
    cl_handle p = c->api.clCreateProgramWithSource(c->context, 1, &src, &len, &err);
    if (!p) {
        set_error(c, "clCreateProgramWithSource", err);
        return NULL;
    }
    err = c->api.clBuildProgram(p, 1, &c->device, "", NULL, NULL);
    if (err != CL_SUCCESS) {
        char log[256] = "";
        c->api.clGetProgramBuildInfo(p, c->device, CL_PROGRAM_BUILD_LOG, sizeof log - 1, log, NULL);
        snprintf(c->error, sizeof c->error, "clBuildProgram failed with OpenCL error %d: %s", (int)err, log);
        c->api.clReleaseProgram(p);
        return NULL;
    }
    return p;
}

static cl_handle kernel(mc_peer_cl *c, const char *name)
{
    cl_int err;
    cl_handle k = c->api.clCreateKernel(c->program, name, &err);
    if (!k) snprintf(c->error, sizeof c->error, "clCreateKernel(%s) failed with OpenCL error %d", name, (int)err);
    return k;
}

/* Picks the first CPU device, PoCL's if there is one. */
static int pick_device(mc_peer_cl *c)
{
    cl_handle platforms[16];
    cl_uint np = 0;
    cl_int err = c->api.clGetPlatformIDs(16, platforms, &np);
    if (err != CL_SUCCESS || np == 0) {
        snprintf(c->error, sizeof c->error, "no OpenCL platform (clGetPlatformIDs: error %d, %u platforms)", (int)err,
                 (unsigned)np);
        return -1;
    }
    if (np > 16) np = 16;
    bool found = false;
    for (int pass = 0; pass < 2 && !found; pass++) {
        for (cl_uint i = 0; i < np && !found; i++) {
            char pname[512] = "";
            c->api.clGetPlatformInfo(platforms[i], CL_PLATFORM_NAME, sizeof pname - 1, pname, NULL);
            bool pocl = strstr(pname, "Portable Computing Language") != NULL || strstr(pname, "PoCL") != NULL;
            if (pass == 0 && !pocl) continue;
            cl_handle dev;
            cl_uint nd = 0;
            if (c->api.clGetDeviceIDs(platforms[i], CL_DEVICE_TYPE_CPU, 1, &dev, &nd) != CL_SUCCESS || nd == 0)
                continue;
            c->platform = platforms[i];
            c->device = dev;
            if (pocl) snprintf(c->name, sizeof c->name, "PoCL (OpenCL)");
            else snprintf(c->name, sizeof c->name, "%.40s (OpenCL)", pname);
            found = true;
        }
    }
    if (!found) {
        snprintf(c->error, sizeof c->error, "no OpenCL CPU device on %u platform(s)", (unsigned)np);
        return -1;
    }
    char version[512] = "", dname[512] = ""; /* too small a buffer is an error, not a cut */
    c->api.clGetPlatformInfo(c->platform, CL_PLATFORM_VERSION, sizeof version - 1, version, NULL);
    c->api.clGetDeviceInfo(c->device, CL_DEVICE_NAME, sizeof dname - 1, dname, NULL);
    snprintf(c->describe, sizeof c->describe, "%s, device %s", version, dname);
    return 0;
}

mc_peer_cl *mc_peer_cl_open(bool kernels, char *why, size_t cap)
{
    mc_peer_cl *c = calloc(1, sizeof *c);
    if (!c) {
        snprintf(why, cap, "out of memory");
        return NULL;
    }
    c->dl = dlopen("libOpenCL.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!c->dl) {
        snprintf(why, cap, "OpenCL is not installed (%s)", dlerror());
        free(c);
        return NULL;
    }
#define X(fname, ret, args)                                     \
    *(void **)&c->api.fname = dlsym(c->dl, #fname);             \
    if (!c->api.fname) {                                        \
        snprintf(why, cap, "libOpenCL.so.1 has no %s", #fname); \
        dlclose(c->dl);                                         \
        free(c);                                                \
        return NULL;                                            \
    }
    CL_FUNCTIONS(X)
#undef X
    cl_int err = CL_SUCCESS;
    if (pick_device(c) != 0) goto fail;
    cl_context_properties props[] = {0x1084 /* CL_CONTEXT_PLATFORM */, (cl_context_properties)c->platform, 0};
    c->context = c->api.clCreateContext(props, 1, &c->device, NULL, NULL, &err);
    if (!c->context) {
        set_error(c, "clCreateContext", err);
        goto fail;
    }
    c->queue = c->api.clCreateCommandQueue(c->context, c->device, 0, &err);
    if (!c->queue) {
        set_error(c, "clCreateCommandQueue", err);
        goto fail;
    }
    if (kernels) {
        if (!(c->program = build(c, cl_source))) goto fail;
        if (!(c->k_empty = kernel(c, "empty")) || !(c->k_add_one = kernel(c, "add_one")) ||
            !(c->k_saxpy = kernel(c, "saxpy")))
            goto fail;
    }
    return c;
fail:
    snprintf(why, cap, "%s", c->error);
    mc_peer_cl_close(c);
    return NULL;
}

void mc_peer_cl_close(mc_peer_cl *c)
{
    if (!c) return;
    if (c->queue) c->api.clFinish(c->queue);
    cl_handle mems[] = {c->batch_buf, c->x, c->y, c->rd_in, c->rd_out};
    for (size_t i = 0; i < sizeof mems / sizeof mems[0]; i++)
        if (mems[i]) c->api.clReleaseMemObject(mems[i]);
    cl_handle kernels[] = {c->k_empty, c->k_add_one, c->k_saxpy, c->rd_kernel};
    for (size_t i = 0; i < sizeof kernels / sizeof kernels[0]; i++)
        if (kernels[i]) c->api.clReleaseKernel(kernels[i]);
    if (c->program) c->api.clReleaseProgram(c->program);
    if (c->rd_program) c->api.clReleaseProgram(c->rd_program);
    if (c->queue) c->api.clReleaseCommandQueue(c->queue);
    if (c->context) c->api.clReleaseContext(c->context);
    /* The ICD loader and PoCL keep threads and atexit handlers: unloading
     * them under their feet is not safe, so the library stays mapped. */
    free(c);
}

int mc_peer_cl_round_trip(mc_peer_cl *c)
{
    size_t one = 1;
    CL_CHECK(c, "clEnqueueNDRangeKernel(empty)",
             c->api.clEnqueueNDRangeKernel(c->queue, c->k_empty, 1, NULL, &one, &one, 0, NULL, NULL));
    CL_CHECK(c, "clFinish", c->api.clFinish(c->queue));
    return 0;
}

int mc_peer_cl_batch(mc_peer_cl *c, uint32_t n, int passes, bool split)
{
    if (n == 0 || n % CL_BATCH_LOCAL) {
        snprintf(c->error, sizeof c->error, "batch size %u is not a multiple of %u", n, CL_BATCH_LOCAL);
        return -1;
    }
    cl_int err;
    if (c->batch_n != n) {
        if (c->batch_buf) c->api.clReleaseMemObject(c->batch_buf);
        c->batch_n = 0;
        c->batch_buf = c->api.clCreateBuffer(c->context, CL_MEM_READ_WRITE, (size_t)n * 4, NULL, &err);
        if (!c->batch_buf) {
            set_error(c, "clCreateBuffer", err);
            return -1;
        }
        uint32_t *zero = calloc(n, 4);
        if (!zero) return -1;
        err = c->api.clEnqueueWriteBuffer(c->queue, c->batch_buf, CL_TRUE, 0, (size_t)n * 4, zero, 0, NULL, NULL);
        free(zero);
        CL_CHECK(c, "clEnqueueWriteBuffer", err);
        CL_CHECK(c, "clSetKernelArg", c->api.clSetKernelArg(c->k_add_one, 0, sizeof c->batch_buf, &c->batch_buf));
        CL_CHECK(c, "clSetKernelArg", c->api.clSetKernelArg(c->k_add_one, 1, sizeof n, &n));
        c->batch_n = n;
    }
    size_t global = n, local = CL_BATCH_LOCAL;
    for (int i = 0; i < passes; i++) {
        CL_CHECK(c, "clEnqueueNDRangeKernel(add_one)",
                 c->api.clEnqueueNDRangeKernel(c->queue, c->k_add_one, 1, NULL, &global, &local, 0, NULL, NULL));
        if (split) CL_CHECK(c, "clFinish", c->api.clFinish(c->queue));
    }
    if (!split) CL_CHECK(c, "clFinish", c->api.clFinish(c->queue));
    return 0;
}

int mc_peer_cl_batch_value(mc_peer_cl *c, uint32_t *out)
{
    if (!c->batch_buf) return -1;
    CL_CHECK(c, "clEnqueueReadBuffer",
             c->api.clEnqueueReadBuffer(c->queue, c->batch_buf, CL_TRUE, 0, sizeof *out, out, 0, NULL, NULL));
    return 0;
}

int mc_peer_cl_saxpy(mc_peer_cl *c, size_t n)
{
    cl_int err;
    if (c->saxpy_n != n) {
        if (c->x) c->api.clReleaseMemObject(c->x);
        if (c->y) c->api.clReleaseMemObject(c->y);
        c->x = c->y = NULL;
        c->saxpy_n = 0;
        float *init = malloc(n * sizeof *init);
        if (!init) return -1;
        c->x = c->api.clCreateBuffer(c->context, CL_MEM_READ_WRITE, n * sizeof(float), NULL, &err);
        if (c->x) c->y = c->api.clCreateBuffer(c->context, CL_MEM_READ_WRITE, n * sizeof(float), NULL, &err);
        if (!c->x || !c->y) {
            free(init);
            set_error(c, "clCreateBuffer", err);
            return -1;
        }
        for (size_t i = 0; i < n; i++) init[i] = (float)(i % 1000);
        err = c->api.clEnqueueWriteBuffer(c->queue, c->x, CL_TRUE, 0, n * sizeof(float), init, 0, NULL, NULL);
        for (size_t i = 0; i < n; i++) init[i] = 1.0f;
        if (err == CL_SUCCESS)
            err = c->api.clEnqueueWriteBuffer(c->queue, c->y, CL_TRUE, 0, n * sizeof(float), init, 0, NULL, NULL);
        free(init);
        CL_CHECK(c, "clEnqueueWriteBuffer", err);
        float a = 2.0f;
        cl_uint un = (cl_uint)n;
        CL_CHECK(c, "clSetKernelArg", c->api.clSetKernelArg(c->k_saxpy, 0, sizeof c->y, &c->y));
        CL_CHECK(c, "clSetKernelArg", c->api.clSetKernelArg(c->k_saxpy, 1, sizeof c->x, &c->x));
        CL_CHECK(c, "clSetKernelArg", c->api.clSetKernelArg(c->k_saxpy, 2, sizeof a, &a));
        CL_CHECK(c, "clSetKernelArg", c->api.clSetKernelArg(c->k_saxpy, 3, sizeof un, &un));
        c->saxpy_n = n;
    }
    size_t local = CL_SAXPY_LOCAL, global = (n + local - 1) / local * local;
    CL_CHECK(c, "clEnqueueNDRangeKernel(saxpy)",
             c->api.clEnqueueNDRangeKernel(c->queue, c->k_saxpy, 1, NULL, &global, &local, 0, NULL, NULL));
    CL_CHECK(c, "clFinish", c->api.clFinish(c->queue));
    return 0;
}

static double now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

double mc_peer_cl_build_us(mc_peer_cl *c, int variant)
{
    char *src = malloc(sizeof cl_source + 64);
    if (!src) return -1;
    /* PoCL hashes the program after preprocessing, so a comment would not
     * make a new program: the variant is a kernel of its own (empty). */
    snprintf(src, sizeof cl_source + 64, "%s__kernel void pipeline_cache_variant_%u(void) {}\n", cl_source,
             (unsigned)(variant + 1));
    double t0 = now_us();
    cl_handle p = build(c, src);
    cl_handle k = NULL;
    if (p) {
        cl_int err;
        k = c->api.clCreateKernel(p, "saxpy", &err);
        if (!k) set_error(c, "clCreateKernel(saxpy)", err);
    }
    double t = now_us() - t0;
    if (k) c->api.clReleaseKernel(k);
    if (p) c->api.clReleaseProgram(p);
    free(src);
    return k ? t : -1;
}

/* The OpenCL C twin of reduce_tree in tests/msl/barriers.metal (bench msl):
 * a tree reduction in local memory, one barrier per level. */
static const char cl_reduce_source[] =
    "__kernel void reduce_tree(__global const float *in, __global float *partial) {\n"
    "    __local float s[256];\n"
    "    uint l = get_local_id(0);\n"
    "    s[l] = in[get_global_id(0)];\n"
    "    barrier(CLK_LOCAL_MEM_FENCE);\n"
    "    for (uint k = get_local_size(0) / 2; k > 0; k >>= 1) {\n"
    "        if (l < k) s[l] += s[l + k];\n"
    "        barrier(CLK_LOCAL_MEM_FENCE);\n"
    "    }\n"
    "    if (l == 0) partial[get_group_id(0)] = s[0];\n"
    "}\n";

int mc_peer_cl_reduce(mc_peer_cl *c, size_t n, float *first_partial)
{
    cl_int err;
    if (!c || n == 0 || n % 256) return -1;
    if (!c->rd_kernel) {
        c->rd_program = build(c, cl_reduce_source);
        if (!c->rd_program) return -1;
        c->rd_kernel = c->api.clCreateKernel(c->rd_program, "reduce_tree", &err);
        if (!c->rd_kernel) {
            set_error(c, "clCreateKernel(reduce_tree)", err);
            return -1;
        }
    }
    if (c->rd_n != n) {
        if (c->rd_in) c->api.clReleaseMemObject(c->rd_in);
        if (c->rd_out) c->api.clReleaseMemObject(c->rd_out);
        c->rd_in = c->rd_out = NULL;
        c->rd_n = 0;
        float *init = malloc(n * sizeof *init);
        if (!init) return -1;
        for (size_t i = 0; i < n; i++) init[i] = (float)(i % 13) - 4.0f;
        c->rd_in = c->api.clCreateBuffer(c->context, CL_MEM_READ_WRITE, n * sizeof(float), NULL, &err);
        if (c->rd_in)
            c->rd_out = c->api.clCreateBuffer(c->context, CL_MEM_READ_WRITE, n / 256 * sizeof(float), NULL, &err);
        if (!c->rd_in || !c->rd_out) {
            free(init);
            set_error(c, "clCreateBuffer", err);
            return -1;
        }
        err = c->api.clEnqueueWriteBuffer(c->queue, c->rd_in, CL_TRUE, 0, n * sizeof(float), init, 0, NULL, NULL);
        free(init);
        CL_CHECK(c, "clEnqueueWriteBuffer", err);
        CL_CHECK(c, "clSetKernelArg", c->api.clSetKernelArg(c->rd_kernel, 0, sizeof c->rd_in, &c->rd_in));
        CL_CHECK(c, "clSetKernelArg", c->api.clSetKernelArg(c->rd_kernel, 1, sizeof c->rd_out, &c->rd_out));
        c->rd_n = n;
    }
    size_t local = 256, global = n;
    CL_CHECK(c, "clEnqueueNDRangeKernel(reduce_tree)",
             c->api.clEnqueueNDRangeKernel(c->queue, c->rd_kernel, 1, NULL, &global, &local, 0, NULL, NULL));
    if (first_partial)
        CL_CHECK(
            c, "clEnqueueReadBuffer",
            c->api.clEnqueueReadBuffer(c->queue, c->rd_out, CL_TRUE, 0, sizeof(float), first_partial, 0, NULL, NULL));
    CL_CHECK(c, "clFinish", c->api.clFinish(c->queue));
    return 0;
}
