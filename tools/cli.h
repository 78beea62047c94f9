/* The metal-compute command-line program: shared helpers for its commands. */
#ifndef MC_TOOLS_CLI_H
#define MC_TOOLS_CLI_H

#include "mc/mc.h"
#include "mc/mc_isolate.h"
#include "mc/mc_runner.h"

#include <stdbool.h>
#include <stdio.h>

typedef struct mc_cli_command {
    const char *name;
    const char *summary;
    int (*run)(int argc, char **argv); /* argv[0] is the command name */
} mc_cli_command;

int mc_cli_info(int argc, char **argv);
int mc_cli_cache(int argc, char **argv);
int mc_cli_run(int argc, char **argv);
int mc_cli_trace(int argc, char **argv);
/* --trace FILE (cmd_trace.c): begin checks the path now and makes Ctrl-C
 * and SIGTERM write the trace before the program dies of them; a job that
 * forks later (--isolate) passes forks_later and calls watch_signals once
 * its runner exists. finish stops the trace and writes it, also after an
 * error; returns rc, or 1 when the file could not be written. */
int mc_cli_trace_begin(const char *path, bool forks_later);
void mc_cli_trace_watch_signals(void);
int mc_cli_trace_finish(int rc);
/* run FILE --function NAME (tools/cmd_run_kernel.c): argv[0] is FILE. */
int mc_cli_run_kernel(int argc, char **argv);
bool mc_cli_is_kernel_file(const char *arg);

/* Directory holding examples/kernels (source tree, else installed). */
const char *mc_cli_kernel_dir(void);
/* Directory holding benchmarks/baselines: the hand-written C and CUDA twins
 * of the MSL kernels, run only as benchmark baselines. */
const char *mc_cli_baseline_dir(void);
/* The running program's own path (benchmarks start copies of it). */
bool mc_cli_self_exe(char *out, size_t cap);
/* Opens a device by name ("" or NULL = default) and reports failures. */
mc_device *mc_cli_open_device(const char *spec, int64_t time_limit_ms);
/* Where a run job's runner works. Isolated, a worker process opens the
 * device: *iso is filled in and *dev stays NULL. Otherwise the device is
 * opened here and its info read into *info. Returns 0, or 1 after
 * reporting the failure. */
int mc_cli_open_target(const char *device, bool isolate, double deadline_ms, uint32_t max_restarts, const char *faults,
                       mc_device **dev, mc_device_info *info, mc_isolate_desc *iso);
/* Builds function fn from kernels/FILE.metal (every device runs MSL); NULL on error. */
mc_pipeline *mc_cli_pipeline(mc_device *d, const char *file, const char *fn);
/* The same from FILE<ext>: ".metal" from the kernels, ".c" or ".cu" (the
 * hand-written twins) from the baselines. */
mc_pipeline *mc_cli_pipeline_ext(mc_device *d, const char *file, const char *ext, const char *fn);
/* Prints "metal-compute: <what>: <status> (<detail>)" to stderr; returns 1. */
int mc_cli_fail(const char *what, mc_status s);
/* The whole file as a NUL-terminated string (free it), its length in
 * *len (may be NULL); NULL if it cannot be read, is not a regular file
 * (errno EISDIR or EINVAL) or is empty (errno 0). */
char *mc_cli_read_file(const char *path, size_t *len);
/* True if the stream is a terminal (progress bars). */
bool mc_cli_isatty(FILE *f);

/* run gray-scott, shared with its --mpi path (cmd_run_mpi.c, built with
 * MPI): the seeded field ((u, v) pairs, free it), the palette, the PNG. */
float *mc_cli_gray_scott_seed(uint32_t n);
void mc_cli_gray_scott_colour(float v, uint8_t rgb[3]);
/* Binds gray_scott_step (pl) on the runner's ping-pong pair, for run
 * gray-scott and the benchmarks that run it: a and b are states 0 and 1 in
 * slots 0 and 1, params (len bytes of the kernel's parameters; the runner
 * copies them when setup returns) slot 3; the runner gives slot 2 the step. */
void mc_cli_gray_scott_bind(mc_runner_binding *bind, mc_pipeline *pl, mc_buffer *a, mc_buffer *b, const void *params,
                            size_t len);
int mc_cli_write_png(const char *path, const uint8_t *rgb, uint32_t w, uint32_t h);
int mc_cli_run_gray_scott_mpi(int argc, char **argv);
/* Runs job(argc, argv, rank, size) between MPI_Init and MPI_Finalize (when
 * MPI was not started yet); every rank exits with the worst status. */
int mc_cli_mpi_job(int argc, char **argv, int (*job)(int argc, char **argv, int rank, int size));
/* run FILE --mpi under mpirun (tools/cmd_run_kernel_mpi.c, built with MPI). */
int mc_cli_run_kernel_mpi(int argc, char **argv);

#endif
