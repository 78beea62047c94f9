/* Peers for `bench --peers`: other ways to run the same work on the same
 * machine, measured beside the CPU device in one run. OpenCL (PoCL, on a
 * machine without a GPU, is what a user would otherwise pick) is loaded at
 * run time, so the program builds and runs where it is absent; OpenMP
 * loops are the machine's own limit. */
#ifndef MC_BENCHMARKS_PEER_H
#define MC_BENCHMARKS_PEER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ---- OpenCL (peer_opencl.c) ---------------------------------------------- */

typedef struct mc_peer_cl mc_peer_cl;

/* Loads libOpenCL.so.1 and opens the first CPU device, preferring PoCL.
 * NULL with the reason in why when OpenCL or a CPU device is absent. With
 * kernels false nothing is built (the pipeline-cache child builds its own). */
mc_peer_cl *mc_peer_cl_open(bool kernels, char *why, size_t cap);
void mc_peer_cl_close(mc_peer_cl *c);
/* "PoCL (OpenCL)", or the platform's name with "(OpenCL)". */
const char *mc_peer_cl_name(const mc_peer_cl *c);
/* Platform version and device, for the report. */
const char *mc_peer_cl_describe(const mc_peer_cl *c);
/* The last error, with the call that failed and its code. */
const char *mc_peer_cl_error(const mc_peer_cl *c);

/* One empty kernel (global 1, local 1), enqueued and finished. 0 on success. */
int mc_peer_cl_round_trip(mc_peer_cl *c);
/* passes launches of add_one over n (a multiple of 256) elements; split:
 * clFinish after each, else one clFinish after all. */
int mc_peer_cl_batch(mc_peer_cl *c, uint32_t n, int passes, bool split);
/* Element 0 of the add_one buffer (each pass adds one to it). */
int mc_peer_cl_batch_value(mc_peer_cl *c, uint32_t *out);
/* y = a*x + y over n floats in the peer's own buffers, run and finished. */
int mc_peer_cl_saxpy(mc_peer_cl *c, size_t n);
/* Builds source variant i (>= -1) of the basic kernels (an empty kernel
 * named after i makes each a program of its own) and creates its saxpy kernel: program from source, clBuildProgram,
 * clCreateKernel. Returns microseconds, < 0 on failure. */
double mc_peer_cl_build_us(mc_peer_cl *c, int variant);

/* A tree reduction of n floats (a multiple of 256) in groups of 256 with a
 * barrier per level (bench msl), run and finished; *first_partial (may be
 * NULL) receives group 0's sum. Builds its program on first use. */
int mc_peer_cl_reduce(mc_peer_cl *c, size_t n, float *first_partial);

/* ---- OpenMP (peer_openmp.c) ---------------------------------------------- */

/* False where the program was built without OpenMP. */
bool mc_peer_omp_available(void);
/* An empty parallel region: the fork/join round trip of OpenMP's threads. */
void mc_peer_omp_round_trip(void);
/* passes parallel loops adding one to each of n elements. */
void mc_peer_omp_batch(uint32_t *data, uint32_t n, int passes);
/* y = a*x + y, one parallel loop. */
void mc_peer_omp_saxpy(float *y, const float *x, float a, size_t n);

#endif
