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
    r->bar_len = fprintf(stderr, "\r[%s] %3.0f%%  %llu/%llu steps  %.0f steps/s%s%s ", bar, frac * 100,
                         (unsigned long long)p->iterations, (unsigned long long)p->total_iterations, p->rate, left,
                         retry);
    fflush(stderr);
}
