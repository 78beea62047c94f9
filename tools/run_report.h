/* What `metal-compute run` shows while a job runs: a progress bar on a
 * terminal, or one JSON object per line for scripts (--progress json). */
#ifndef MC_TOOLS_RUN_REPORT_H
#define MC_TOOLS_RUN_REPORT_H

#include "mc/mc.h"
#include "mc/mc_isolate.h"
#include "mc/mc_runner.h"

#include <stdbool.h>

typedef enum mc_run_progress_mode {
    MC_RUN_PROGRESS_AUTO = 0, /* a bar when stderr is a terminal, else nothing */
    MC_RUN_PROGRESS_BAR,
    MC_RUN_PROGRESS_JSON,
    MC_RUN_PROGRESS_NONE
} mc_run_progress_mode;

typedef struct mc_run_report {
    mc_run_progress_mode mode; /* resolved by mc_run_report_init */
    int bar_len;               /* characters last printed */
} mc_run_report;

/* Parses --progress's value (bar, json, none); false for anything else. */
bool mc_run_progress_parse(const char *s, mc_run_progress_mode *out);
void mc_run_report_init(mc_run_report *r, mc_run_progress_mode mode);
/* A runner progress callback (user: the mc_run_report). */
void mc_run_report_progress(void *user, const mc_runner_progress *p);
/* The summary lines every run job prints after its header: steps, chunks,
 * recoveries, worker restarts (ist not NULL: an isolated run), checkpoints
 * (ckpt_dir not NULL), steps per second and time. */
void mc_run_report_summary(const mc_runner_stats *st, const mc_isolate_stats *ist, const char *ckpt_dir);
/* What every run job's runner shares: where it runs (dev, or worker
 * processes when iso is not NULL), one step a dispatch, the chunk budget,
 * checkpoints (every checkpoint_ms; also into ckpt_dir, resumed from there
 * when resume) and progress through report. The job fills in the rest. */
void mc_run_report_desc(mc_runner_desc *d, mc_device *dev, const mc_isolate_desc *iso, double budget_ms,
                        double checkpoint_ms, const char *ckpt_dir, bool resume, mc_run_report *report);
/* Runs r to its end and reads its statistics into st, and an isolated
 * run's (iso_run) into ist, whose worker's device becomes *info; ist is
 * zeroed otherwise. Returns mc_runner_run's status. */
mc_status mc_run_report_run(mc_runner *r, bool iso_run, mc_runner_stats *st, mc_isolate_stats *ist,
                            mc_device_info *info);

#endif
