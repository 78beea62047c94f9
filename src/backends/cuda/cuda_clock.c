/*
 * DOC: CUDA event times on the host clock (cuda_clock.h says the rules)
 *
 * Plain C with no CUDA call, so the tests run it where there is no GPU.
 */
#include "backends/cuda/cuda_clock.h"

#include <stddef.h>

bool mc__cuda_clock_times(const mc__cuda_clock_in *in, uint64_t *pass_time, uint64_t *start_ns, uint64_t *end_ns)
{
    if (!in || in->nev < 2 || !in->from_first_ns || !start_ns || !end_ns) return false;
    /* The anchor is the previous timed command buffer's end: this one starts
     * after it, never on it. */
    uint64_t start = in->anchor_ns + (in->to_first_ns > 0 ? in->to_first_ns : 1);
    /* Event i's time, never before event i-1's + 1 ns: the timer's
     * resolution, or rounding, can tie two events (or put them out of
     * order); every pass keeps an instant of its own. */
    uint64_t t = start;
    bool passes = in->pass_events && pass_time;
    for (uint32_t i = 1; i < in->nev; i++) {
        uint64_t next = start + in->from_first_ns[i];
        if (next <= t) next = t + 1;
        /* one event ends pass i-1 and starts pass i: the end is put 1 ns
         * before, so the spans do not touch */
        if (passes && i - 1 < in->npass && i - 1 < in->nran) {
            pass_time[2 * (i - 1)] = t;
            pass_time[2 * (i - 1) + 1] = next - 1;
        }
        t = next;
    }
    if (passes) /* a pass that started but did not finish has no times */
        for (uint32_t p = in->nran < in->nev - 1 ? in->nran : in->nev - 1; p < in->npass; p++)
            pass_time[2 * p] = pass_time[2 * p + 1] = 0;
    *start_ns = start;
    *end_ns = t;
    return true;
}

uint64_t mc__cuda_ms_to_ns(float ms)
{
    if (!(ms > 0.0f)) return 0; /* negative or NaN */
    double ns = (double)ms * 1e6;
    return ns >= 18446744073709551616.0 ? UINT64_MAX : (uint64_t)ns; /* 2^64 */
}
