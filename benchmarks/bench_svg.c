/*
 * metal-compute bench --svg FILE: the ratios of a run as a bar chart that
 * reads at a glance. One bar per row (ours against one baseline), grouped
 * by benchmark, on a log scale with a line at 1x: a bar to the right of the
 * line (green) means ours is better, to the left (red) worse. Every bar
 * carries a tooltip with the medians and spreads. Self-contained SVG, no
 * fonts or scripts from elsewhere.
 */
#include "bench.h"
#include "cli.h"
#include "core/core.h"

#include <math.h>
#include <string.h>

#define SVG_W 1200
#define SVG_LABEL_W 640 /* labels, right-aligned against the plot */
#define SVG_PLOT_X (SVG_LABEL_W + 20)
#define SVG_PLOT_W (SVG_W - SVG_PLOT_X - 70)
#define SVG_ROW_H 20
#define SVG_GROUP_H 26
#define SVG_TOP 74

static double row_ratio(const mc_bench_row *r)
{
    if (r->ours <= 0 || r->baseline <= 0) return 0;
    return r->higher_is_better ? r->ours / r->baseline : r->baseline / r->ours;
}

static void xml(FILE *f, const char *s)
{
    for (; *s; s++) {
        switch (*s) {
        case '&': fputs("&amp;", f); break;
        case '<': fputs("&lt;", f); break;
        case '>': fputs("&gt;", f); break;
        case '"': fputs("&quot;", f); break;
        default: fputc(*s, f);
        }
    }
}

static void ratio_text(char *out, size_t cap, double r)
{
    if (r >= 100) snprintf(out, cap, "%.0fx", r);
    else if (r >= 10) snprintf(out, cap, "%.1fx", r);
    else snprintf(out, cap, "%.2fx", r);
}

int mc_bench_write_svg(const mc_bench *b, const char *path)
{
    /* the scale: whole decades around every ratio and 1x */
    double lo = 1, hi = 1;
    int nbars = 0, ngroups = 0;
    const char *group = NULL;
    for (int i = 0; i < b->nrows; i++) {
        double r = row_ratio(&b->rows[i]);
        if (r <= 0) continue;
        nbars++;
        if (!group || strcmp(group, b->rows[i].name)) ngroups++;
        group = b->rows[i].name;
        lo = fmin(lo, r);
        hi = fmax(hi, r);
    }
    int dlo = (int)floor(log10(fmax(lo, 1e-4))), dhi = (int)ceil(log10(fmin(hi, 1e7)));
    if (dlo > -1) dlo = -1;
    if (dhi < 1) dhi = 1;
    /* beside the target, fsync, rename: a failed write keeps the old file */
    mc__outfile out;
    mc_status s = mc__outfile_open(path, &out);
    if (s != MC_OK) return mc_cli_fail("--svg", s);
    FILE *f = out.f;
    int height = SVG_TOP + ngroups * SVG_GROUP_H + nbars * SVG_ROW_H + 40;
#define X_OF(r) (SVG_PLOT_X + SVG_PLOT_W * (log10(r) - dlo) / (double)(dhi - dlo))
    fprintf(f,
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" viewBox=\"0 0 %d %d\" "
            "font-family=\"DejaVu Sans, Helvetica, Arial, sans-serif\" font-size=\"12\">\n"
            "<rect width=\"100%%\" height=\"100%%\" fill=\"#ffffff\"/>\n",
            SVG_W, height, SVG_W, height);
    fprintf(f, "<text x=\"12\" y=\"22\" font-size=\"15\" font-weight=\"bold\">metal-compute bench on ");
    xml(f, mc_device_kind_name(b->info.kind));
    fprintf(f, " (");
    xml(f, b->info.name);
    fprintf(f,
            "): how many times better ours is</text>\n"
            "<text x=\"12\" y=\"40\" fill=\"#444\">Each bar: ours against the baseline named on its left, "
            "median over repetitions, log scale. Right of 1x (green): ours is better; left (red): "
            "worse.</text>\n");
    /* decades */
    int plot_bottom = height - 30;
    for (int d = dlo; d <= dhi; d++) {
        double x = X_OF(pow(10, d));
        char label[32];
        if (d < 0) snprintf(label, sizeof label, "%gx", pow(10, d));
        else snprintf(label, sizeof label, "%.0fx", pow(10, d));
        fprintf(f,
                "<line x1=\"%.1f\" y1=\"%d\" x2=\"%.1f\" y2=\"%d\" stroke=\"%s\" stroke-width=\"%s\"/>\n"
                "<text x=\"%.1f\" y=\"%d\" text-anchor=\"middle\" fill=\"#444\">%s</text>\n",
                x, SVG_TOP - 8, x, plot_bottom, d == 0 ? "#000" : "#ddd", d == 0 ? "1.5" : "1", x, SVG_TOP - 14, label);
    }
    int y = SVG_TOP;
    group = NULL;
    for (int i = 0; i < b->nrows; i++) {
        const mc_bench_row *r = &b->rows[i];
        double q = row_ratio(r);
        if (q <= 0) continue;
        if (!group || strcmp(group, r->name)) {
            y += SVG_GROUP_H;
            fprintf(f, "<text x=\"12\" y=\"%d\" font-size=\"13\" font-weight=\"bold\">", y - 8);
            xml(f, r->name);
            fprintf(f, "</text>\n<line x1=\"12\" y1=\"%d\" x2=\"%d\" y2=\"%d\" stroke=\"#bbb\"/>\n", y - 4, SVG_W - 12,
                    y - 4);
            group = r->name;
        }
        double x1 = X_OF(1), x2 = X_OF(fmin(fmax(q, pow(10, dlo)), pow(10, dhi)));
        double left = fmin(x1, x2), w = fmax(fabs(x2 - x1), 1.0);
        bool better = q >= 1;
        char rt[32];
        ratio_text(rt, sizeof rt, q);
        fprintf(f, "<g>\n<title>");
        xml(f, r->name);
        fprintf(f, ": ");
        xml(f, r->metric);
        fprintf(f, "&#10;ours %.4g %s (IQR %.3g), ", r->ours, r->unit, r->ours_spread);
        xml(f, r->baseline_name);
        fprintf(f, " %.4g %s (IQR %.3g): %s%s</title>\n", r->baseline, r->unit, r->baseline_spread, rt,
                r->higher_is_better ? " (higher is better)" : " (lower is better)");
        fprintf(f, "<text x=\"%d\" y=\"%d\" text-anchor=\"end\">", SVG_LABEL_W, y + 14);
        xml(f, r->metric);
        fprintf(f, " <tspan fill=\"#555\">vs ");
        xml(f, r->baseline_name);
        fprintf(f, "</tspan></text>\n");
        fprintf(f, "<rect class=\"bar\" x=\"%.1f\" y=\"%d\" width=\"%.1f\" height=\"%d\" fill=\"%s\"/>\n", left, y + 3,
                w, SVG_ROW_H - 6, better ? "#2e7d32" : "#c62828");
        /* a red bar's figure goes right of the 1x line, clear of the labels */
        fprintf(f, "<text x=\"%.1f\" y=\"%d\" text-anchor=\"%s\" fill=\"%s\">%s</text>\n</g>\n",
                better ? left + w + 4 : x1 + 4, y + 14, "start", better ? "#1b5e20" : "#b71c1c", rt);
        y += SVG_ROW_H;
    }
#undef X_OF
    fprintf(f,
            "<text x=\"12\" y=\"%d\" fill=\"#666\">ratio = baseline/ours for times, ours/baseline for rates; "
            "spreads are interquartile ranges (hover a bar).</text>\n</svg>\n",
            height - 10);
    s = mc__outfile_commit(&out);
    return s == MC_OK ? 0 : mc_cli_fail("--svg", s);
}
