/*
 * Progress of `metal-compute run`, on stderr so stdout keeps the summary.
 * The bar: fraction done, steps, steps per second and the time left. JSON
 * (docs/RUNNER.md lists the fields): one object per line, the last with
 * "done": true, so a script or a notebook can follow a run by reading
 * lines.
 */
#include "run_report.h"

#include "cli.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

bool mc_run_progress_parse(const char *s, mc_run_progress_mode *out)
{
    if (!strcmp(s, "bar")) *out = MC_RUN_PROGRESS_BAR;
    else if (!strcmp(s, "json")) *out = MC_RUN_PROGRESS_JSON;
    else if (!strcmp(s, "none")) *out = MC_RUN_PROGRESS_NONE;
    else return false;
    return true;
}

void mc_run_report_init(mc_run_report *r, mc_run_progress_mode mode)
{
    memset(r, 0, sizeof *r);
    if (mode == MC_RUN_PROGRESS_AUTO) mode = mc_cli_isatty(stderr) ? MC_RUN_PROGRESS_BAR : MC_RUN_PROGRESS_NONE;
    r->mode = mode;
}

/* "42 s", "3 min 05 s", "2 h 07 min": what a person reads at a glance. */
static void format_left(double s, char *out, size_t cap)
{
    if (s < 0 || !isfinite(s)) snprintf(out, cap, "?");
    else if (s < 60) snprintf(out, cap, "%.1f s", s);
    else if (s < 3600) snprintf(out, cap, "%d min %02d s", (int)(s / 60), (int)fmod(s, 60));
    else snprintf(out, cap, "%d h %02d min", (int)(s / 3600), (int)fmod(s / 60, 60));
}

static void print_json(const mc_runner_progress *p)
{
    double frac = p->total_iterations ? (double)p->iterations / (double)p->total_iterations : 0;
    char eta[32];
    if (p->eta_s >= 0 && isfinite(p->eta_s)) snprintf(eta, sizeof eta, "%.3f", p->eta_s);
    else snprintf(eta, sizeof eta, "null");
    fprintf(stderr,
            "{\"event\": \"progress\", \"iterations\": %llu, \"total_iterations\": %llu, \"fraction\": %.6f, "
            "\"steps_per_s\": %.3f, \"eta_s\": %s, \"elapsed_s\": %.3f, \"chunks\": %llu, \"recoveries\": %u, "
            "\"worker_restarts\": %u, \"done\": %s}\n",
            (unsigned long long)p->iterations, (unsigned long long)p->total_iterations, frac,
            isfinite(p->rate) ? p->rate : 0.0, eta, p->elapsed_s, (unsigned long long)p->chunks, p->recoveries,
            p->worker_restarts, p->done ? "true" : "false");
    fflush(stderr);
}

void mc_run_report_progress(void *user, const mc_runner_progress *p)
{
    mc_run_report *r = user;
    if (r->mode == MC_RUN_PROGRESS_JSON) {
        print_json(p);
        return;
    }
    if (r->mode != MC_RUN_PROGRESS_BAR) return;
    if (p->done) {
        fprintf(stderr, "\r%*s\r", r->bar_len, "");
        fflush(stderr);
        return;
    }
    double frac = p->total_iterations ? (double)p->iterations / (double)p->total_iterations : 0;
    char bar[31];
    int fill = (int)(frac * 30 + 0.5);
    for (int i = 0; i < 30; i++) bar[i] = i < fill ? '#' : '.';
    bar[30] = '\0';
    char left[48] = "", when[32];
    if (p->eta_s >= 0) {
        format_left(p->eta_s, when, sizeof when);
        snprintf(left, sizeof left, "  %s left", when);
    }
    char retry[64] = "";
    if (p->recoveries) snprintf(retry, sizeof retry, "  %u recovered", p->recoveries);
    if (p->worker_restarts)
        snprintf(retry + strlen(retry), sizeof retry - strlen(retry), "  %u restarts", p->worker_restarts);
    r->bar_len =
        fprintf(stderr, "\r[%s] %3.0f%%  %llu/%llu steps  %.0f steps/s%s%s ", bar, frac * 100,
                (unsigned long long)p->iterations, (unsigned long long)p->total_iterations, p->rate, left, retry);
    fflush(stderr);
}

void mc_run_report_summary(const mc_runner_stats *st, const mc_isolate_stats *ist, const char *ckpt_dir)
{
    double secs = st->elapsed_ms / 1e3;
    printf("  steps        %llu", (unsigned long long)st->iterations);
    if (st->resumed_iteration) printf(" (resumed at %llu)", (unsigned long long)st->resumed_iteration);
    printf("\n  chunks       %llu (mean %.2f ms, max %.2f ms of device time; gap %.1f us)\n",
           (unsigned long long)st->chunks, st->chunk_ms_mean, st->chunk_ms_max, st->gap_us_mean);
    printf("  recoveries   %u", st->recoveries);
    if (st->recoveries)
        printf(" (timeout %u, page fault %u, access revoked %u, device lost %u, internal %u, other %u)", st->timeouts,
               st->page_faults, st->access_revoked, st->devices_lost, st->internal_errors,
               st->victims + st->other_errors);
    if (ist) {
        printf("\n  worker restarts %u", st->worker_restarts);
        if (st->worker_restarts)
            printf(" (device error %u, died %u, hung %u)", ist->device_errors, ist->deaths, ist->hangs);
        if (ist->restart_ms_last > 0)
            printf(
                "\n  restart cost %.1f ms from the fault to progress (reap %.1f, start %.1f, resume %.1f);"
                " %.1f mean, %.1f max; %.1f ms without progress",
                ist->restart_ms_last, ist->reap_ms_last, ist->ready_ms_last, ist->resume_ms_last, ist->restart_ms_mean,
                ist->restart_ms_max, ist->outage_ms_last);
    }
    if (ckpt_dir) printf("\n  checkpoints  %llu written to %s", (unsigned long long)st->checkpoints_written, ckpt_dir);
    /* After a resume, the rate counts only the steps this process ran. */
    printf("\n  steps/s      %.0f\n", secs > 0 ? (double)(st->iterations - st->resumed_iteration) / secs : 0);
    printf("  time         %.2f s\n", secs);
}

void mc_run_report_desc(mc_runner_desc *d, mc_device *dev, const mc_isolate_desc *iso, double budget_ms,
                        double checkpoint_ms, const char *ckpt_dir, bool resume, mc_run_report *report)
{
    d->device = dev;
    d->isolate = iso;
    d->iterations_per_dispatch = 1;
    d->budget_ms = budget_ms;
    d->checkpoint_ms = checkpoint_ms;
    d->checkpoint_dir = ckpt_dir;
    if (resume) d->flags |= MC_RUNNER_RESUME;
    d->progress = mc_run_report_progress;
    d->progress_user = report;
}

mc_status mc_run_report_run(mc_runner *r, bool iso_run, mc_runner_stats *st, mc_isolate_stats *ist,
                            mc_device_info *info)
{
    mc_status s = mc_runner_run(r);
    mc_runner_get_stats(r, st);
    memset(ist, 0, sizeof *ist);
    if (iso_run && mc_runner_get_isolate_stats(r, ist) == MC_OK) *info = ist->device;
    return s;
}
