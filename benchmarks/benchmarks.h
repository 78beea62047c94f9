/* What the metal-compute program (tools/) calls in the benchmarks: the bench
 * command, and the new process of its pipeline-cache benchmark. */
#ifndef MC_BENCHMARKS_H
#define MC_BENCHMARKS_H

/* metal-compute bench [OPTIONS] (bench.c): argv[0] is the command name. */
int mc_cli_bench(int argc, char **argv);
/* The new process pipeline-cache starts (`cache __bench-child`, bench_cache.c). */
int mc_bench_pipeline_cache_child(int argc, char **argv);

#endif
