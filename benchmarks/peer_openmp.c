/*
 * The OpenMP peer: plain parallel loops, the machine's own limit for work
 * that a CPU runtime hands to its threads. OpenMP's threads spin between
 * regions for a while (GOMP_SPINCOUNT) and then sleep, so back-to-back
 * regions are as cheap as a CPU runtime's submission can be. Built only
 * where the compiler has OpenMP; elsewhere the peer reports itself absent.
 */
#include "peer.h"

bool mc_peer_omp_available(void)
{
#ifdef _OPENMP
    return true;
#else
    return false;
#endif
}

void mc_peer_omp_round_trip(void)
{
#ifdef _OPENMP
#pragma omp parallel
#endif
    {
        __asm__ volatile("" ::: "memory"); /* every thread enters; the region's end is a join */
    }
}

void mc_peer_omp_batch(uint32_t *data, uint32_t n, int passes)
{
    for (int p = 0; p < passes; p++) {
#ifdef _OPENMP
#pragma omp parallel for schedule(static)
#endif
        for (long i = 0; i < (long)n; i++) data[i] += 1;
    }
}

void mc_peer_omp_saxpy(float *y, const float *x, float a, size_t n)
{
#ifdef _OPENMP
#pragma omp parallel for schedule(static)
#endif
    for (long i = 0; i < (long)n; i++) y[i] = a * x[i] + y[i];
}
