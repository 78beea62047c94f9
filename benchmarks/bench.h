/* metal-compute bench: benchmarks that each measure ours against a baseline
 * in the same run. */
#ifndef MC_BENCHMARKS_BENCH_H
#define MC_BENCHMARKS_BENCH_H

#include "benchmarks.h"
#include "cli.h"

typedef struct mc_bench_row {
    char name[48];
    char metric[64];
    char unit[16];
    double ours, ours_spread; /* median and interquartile range */
    double baseline, baseline_spread;
    char baseline_name[64];
    bool higher_is_better; /* rates; times are lower-is-better */
} mc_bench_row;

typedef struct mc_bench {
    mc_device *dev;
    mc_device_info info;
    int reps; /* repetitions per measurement (--reps, smaller in --quick) */
    bool quick;
    bool peers; /* --peers: add peer rows where a benchmark has them */
    mc_bench_row rows[64];
    int nrows;
} mc_bench;

typedef int (*mc_bench_fn)(mc_bench *b);

/* Adds a row; ratio is derived when printed. */
void mc_bench_add(mc_bench *b, const char *name, const char *metric, const char *unit, double ours, double ours_spread,
                  double baseline, double baseline_spread, const char *baseline_name, bool higher_is_better);

/* Statistics over n samples (sorted in place). */
double mc_bench_median(double *v, int n);
double mc_bench_iqr(double *v, int n);
double mc_bench_percentile(double *v, int n, double p);
double mc_bench_now_us(void);

/* Runs one command buffer with a single empty dispatch and waits. */
int mc_bench_round_trip_once(mc_queue *q, mc_pipeline *empty);
/* If s is MC_OK: commits cb, waits for it and reads its status. Returns
 * the first failure, s included; cb stays the caller's to release. */
mc_status mc_bench_commit_wait(mc_cmdbuf *cb, mc_status s);
/* Encodes one pass of basic.metal's add_one over buf's first n uint32s
 * (n a multiple of 256), groups groups of 256 threads (n / 256 for all). */
mc_status mc_bench_add_one_pass(mc_cmdbuf *cb, mc_pipeline *pl, mc_buffer *buf, uint32_t n, uint32_t groups);
/* passes add_one passes over the first n, per_cb (>= 1) to a command
 * buffer, each command buffer committed and waited for. 0, or -1 on a
 * failure. */
int mc_bench_add_one_passes(mc_queue *q, mc_pipeline *pl, mc_buffer *buf, uint32_t n, int passes, int per_cb);

/* The benchmarks. */
int mc_bench_round_trip(mc_bench *b);
int mc_bench_batching(mc_bench *b);
int mc_bench_saxpy(mc_bench *b);
int mc_bench_stream(mc_bench *b);
int mc_bench_pipeline_cache(mc_bench *b);
int mc_bench_runner(mc_bench *b);
int mc_bench_command_list(mc_bench *b);
int mc_bench_msl(mc_bench *b); /* bench_msl.c */

/* --peers (bench_peers.c): after benchmark `name` ran, adds the same
 * work through its peers (OpenCL on PoCL, OpenMP) where it has them. */
int mc_bench_peers(mc_bench *b, const char *name);
/* The new processes bench --peers starts (`bench __peer-child ...`). */
int mc_bench_peer_child(int argc, char **argv);
/* --svg FILE (bench_svg.c): the ratios as a bar chart. */
int mc_bench_write_svg(const mc_bench *b, const char *path);
/* New processes (bench_os.c): runs argv[0] with argv, in this environment
 * with extra_env ("NAME=VALUE", may be NULL) set, and reads one number a
 * line from its standard output into v (the first cap of them). Returns
 * how many, or -1 when it could not start (said on stderr after who) or
 * did not exit with 0. */
int mc_bench_run_child(const char *who, char *const *argv, const char *extra_env, double *v, int cap);
/* Removes the folder root and everything in it (a benchmark's temporary
 * cache folders), not following links. */
void mc_bench_remove_tree(const char *root);
/* bench --mpi under mpirun (bench_mpi.c, built with MPI). */
int mc_cli_bench_mpi(int argc, char **argv);

#endif
