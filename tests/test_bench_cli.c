/* The bench command as a user runs it: the JSON it writes carries every
 * field of every row, --peers adds OpenCL rows named after the peer where
 * OpenCL is installed, and --svg draws a well-formed chart with a bar per
 * row. Runs the built program (MC_BINARY_DIR/metal-compute). */
#include "mc_test.h"

#include <dlfcn.h>
#include <stdlib.h>
#include <unistd.h>

/* Runs cmd; returns its stdout and stderr, and its exit status in *status. */
static char *run_command(const char *cmd, int *status)
{
    char full[8192];
    snprintf(full, sizeof full, "%s 2>&1", cmd);
    return mct_command(full, status);
}

static int count(const char *hay, const char *needle)
{
    int n = 0;
    for (const char *p = hay; (p = strstr(p, needle)); p += strlen(needle)) n++;
    return n;
}

/* A temporary file name with the given suffix (the file is left empty). */
static void temp_path(char *out, size_t cap, const char *suffix)
{
    const char *tmp = getenv("TMPDIR");
    snprintf(out, cap, "%s/mc-bench-cli-XXXXXX%s", tmp && *tmp ? tmp : "/tmp", suffix);
    int fd = mkstemps(out, (int)strlen(suffix));
    if (fd >= 0) close(fd);
}

/* Every row has every field the JSON promises; returns the number of rows
 * (-1: a field is missing). */
static int json_rows(const char *json)
{
    static const char *const fields[] = {
        "\"name\": ",          "\"metric\": ", "\"unit\": ",        "\"ours\": ",           "\"baseline\": ",
        "\"baseline_name\": ", "\"ratio\": ",  "\"ours_spread\": ", "\"baseline_spread\": "};
    int rows = count(json, "{\"name\": ");
    for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++)
        if (count(json, fields[i]) != rows) {
            fprintf(stderr, "%d rows but %d with %s\n", rows, count(json, fields[i]), fields[i]);
            return -1;
        }
    return rows;
}

/* Runs `metal-compute bench ARGS --json FILE`, prints what it printed, and
 * returns the JSON it wrote (free it); NULL, saying why, if it failed or
 * wrote none. *out (may be NULL) gets what it printed (free it). */
static char *bench_json(const char *args, char **out)
{
    char json[512], cmd[2048];
    temp_path(json, sizeof json, ".json");
    snprintf(cmd, sizeof cmd, "%s/metal-compute bench %s --json %s", MC_BINARY_DIR, args, json);
    int st = -1;
    char *text = run_command(cmd, &st);
    if (text) fprintf(stderr, "%s", text);
    char *j = text && st == 0 ? mct_read_file(json, NULL) : NULL;
    remove(json);
    if (!j) fprintf(stderr, "bench %s: wait status %d, %s\n", args, st, text ? "no JSON written" : "no output");
    if (out) *out = text;
    else free(text);
    return j;
}

MC_TEST(bench_cli_json_has_every_field)
{
    char *out = NULL, *j = bench_json("--quick --only round-trip", &out);
    CHECK(j);
    CHECK_STR_CONTAINS(out, "round-trip");
    CHECK_STR_CONTAINS(out, "\u00b1"); /* the table shows spreads */
    free(out);
    CHECK(j[0] == '{');
    CHECK_STR_CONTAINS(j, "\"benchmarks\": [");
    CHECK_GE(json_rows(j), 2); /* median and p99 */
    CHECK_STR_CONTAINS(j, "\"name\": \"round-trip\"");
    CHECK_STR_CONTAINS(j, "\"unit\": \"us\"");
    free(j);
    return 0;
}

MC_TEST(bench_cli_peers_add_opencl_rows)
{
    void *cl = dlopen("libOpenCL.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!cl) MC_SKIP("OpenCL is not installed (libOpenCL.so.1: %s); --peers leaves its rows out", dlerror());
    dlclose(cl);
    char *out = NULL, *j = bench_json("--quick --peers --device cpu --only round-trip", &out);
    CHECK(j);
    if (strstr(out, "peers: no OpenCL rows")) {
        free(out);
        free(j);
        MC_SKIP("libOpenCL.so.1 loads but offers no CPU device (no PoCL?), so there are no peer rows");
    }
    CHECK_STR_CONTAINS(out, "(OpenCL)");
    CHECK_STR_CONTAINS(out, "goal round-trip");
    free(out);
    CHECK_GE(json_rows(j), 4);
    CHECK_STR_CONTAINS(j, "(OpenCL)\"");                /* baseline_name is the peer */
    CHECK_STR_CONTAINS(j, "after a 100 ms idle pause"); /* the idle rows */
    CHECK_STR_CONTAINS(j, "CPU used when idle");
    free(j);
    return 0;
}

MC_TEST(bench_cli_svg_is_a_chart)
{
    char svg[512], cmd[2048];
    temp_path(svg, sizeof svg, ".svg");
    snprintf(cmd, sizeof cmd, "%s/metal-compute bench --quick --only round-trip --svg %s", MC_BINARY_DIR, svg);
    int st = -1;
    char *out = run_command(cmd, &st);
    CHECK(out);
    CHECK_EQ(st, 0);
    free(out);
    size_t len = 0;
    char *s = mct_read_file(svg, &len);
    remove(svg);
    CHECK(s);
    CHECK(!strncmp(s, "<svg ", 5));
    CHECK_STR_CONTAINS(s, "xmlns=\"http://www.w3.org/2000/svg\"");
    CHECK(len > 7 && !strcmp(s + len - 7, "</svg>\n"));
    CHECK_EQ(count(s, "<svg"), 1);
    CHECK_GE(count(s, "<rect class=\"bar\""), 2); /* one bar per row */
    CHECK_EQ(count(s, "<g>"), count(s, "</g>"));
    CHECK_EQ(count(s, "<text"), count(s, "</text>"));
    CHECK_EQ(count(s, "<title>"), count(s, "</title>"));
    CHECK_STR_CONTAINS(s, ">1x<"); /* the line at 1x is labelled */
    CHECK_STR_CONTAINS(s, "round-trip");
    /* nothing that would break the XML: every '&' starts an entity */
    for (const char *p = s; (p = strchr(p, '&')); p++)
        CHECK(!strncmp(p, "&amp;", 5) || !strncmp(p, "&lt;", 4) || !strncmp(p, "&gt;", 4) || !strncmp(p, "&quot;", 6) ||
              !strncmp(p, "&#10;", 5));
    free(s);
    return 0;
}

/* bench stream as the issue asks for it: items per second and latency
 * (median, p99) for 1 to 4 slots beside the naive loop, plus the rows that
 * put the ratio in context. The bench itself fails (non-zero exit) if any
 * output of a stream differs from the naive loop's or an item is lost. */
MC_TEST(bench_cli_stream_rows)
{
    char *j = bench_json("--quick --only stream", NULL);
    CHECK(j);
    /* 1-4 slots x (rate, median, p99); recorded anew, 1 lane, 3 lanes, the
     * ceiling and the share of it; on CUDA also the raw driver's pipeline */
    bool cuda = strstr(j, "\"device_kind\": \"cuda\"") != NULL;
    CHECK_EQ(json_rows(j), 4 * 3 + 5 + (cuda ? 1 : 0));
    CHECK_EQ(strstr(j, "vs the raw driver") != NULL, cuda);
    for (int slots = 1; slots <= 4; slots++) {
        char m[96];
        snprintf(m, sizeof m, "\"metric\": \"items/s, %d slot%s (FIR", slots, slots == 1 ? "" : "s");
        CHECK_STR_CONTAINS(j, m);
        snprintf(m, sizeof m, "\"metric\": \"latency median, %d slot%s\"", slots, slots == 1 ? "" : "s");
        CHECK_STR_CONTAINS(j, m);
        snprintf(m, sizeof m, "\"metric\": \"latency p99, %d slot%s\"", slots, slots == 1 ? "" : "s");
        CHECK_STR_CONTAINS(j, m);
    }
    CHECK_STR_CONTAINS(j, "\"baseline_name\": \"naive loop\"");
    CHECK_STR_CONTAINS(j, "each item recorded anew");
    CHECK_STR_CONTAINS(j, "3 slots, 1 lane (one queue)");
    CHECK_STR_CONTAINS(j, "3 lanes");
    CHECK_STR_CONTAINS(j, "device ceiling (one queue)");
    CHECK_EQ(count(j, "\"ours\": 0,"), 0); /* every rate and latency was measured */
    free(j);
    return 0;
}

/* bench batching: ours in one command buffer and in 50 (the passes helper
 * that --peers shares). The bench fails (non-zero exit) when a pass was
 * lost: the total the passes add up to is checked. Without --peers: the
 * OpenMP peer's loops are not instrumented, and ThreadSanitizer builds
 * report them (CI's own bench --peers run covers the peers). */
MC_TEST(bench_cli_batching_rows)
{
    char *j = bench_json("--quick --device cpu --only batching", NULL);
    CHECK(j);
    CHECK_GE(json_rows(j), 1);
    CHECK_STR_CONTAINS(j, "\"metric\": \"50 passes, one command buffer vs 50 committed+waited\"");
    CHECK_STR_CONTAINS(j, "\"baseline_name\": \"50 command buffers\"");
    CHECK_EQ(count(j, "\"ours\": 0,"), 0);
    CHECK_EQ(count(j, "\"baseline\": 0,"), 0);
    free(j);
    return 0;
}

/* bench pipeline-cache: its new processes (`cache __bench-child`) compile
 * into empty folders and load from the warm one, and print their samples;
 * a process that failed or printed too few fails the bench. */
MC_TEST(bench_cli_pipeline_cache_rows)
{
    char *j = bench_json("--quick --reps 2 --device cpu --only pipeline-cache", NULL);
    CHECK(j);
    CHECK_EQ(json_rows(j), 3);
    CHECK_STR_CONTAINS(j, "\"metric\": \"warm from disk, new process, per pipeline\"");
    CHECK_STR_CONTAINS(j, "\"metric\": \"warm from memory\"");
    CHECK_STR_CONTAINS(j, "\"metric\": \"first pipeline of a new process, from disk\"");
    CHECK_STR_CONTAINS(j, "\"baseline_name\": \"compiled in a new process\"");
    CHECK_EQ(count(j, "\"ours\": 0,"), 0);
    CHECK_EQ(count(j, "\"baseline\": 0,"), 0);
    free(j);
    return 0;
}
