/* run gray-scott --mpi and bench --mpi: the gray_scott kernel bound on a
 * rank's slab (tools/cmd_run_mpi.c). */
#ifndef MC_TOOLS_GRAY_SCOTT_MPI_H
#define MC_TOOLS_GRAY_SCOTT_MPI_H

#include "cli.h"
#include "mc/mc_mpi.h"

/* The kernel's parameter bytes (examples/kernels/gray_scott.metal). */
typedef struct mc_cli_gsm_params {
    uint32_t width, height;
    float du, dv, feed, kill, dt;
    uint32_t fault_step;
} mc_cli_gsm_params;

/* Fills the kernel's part of d (cell size, bind, unbind, user = params)
 * with the single-process run's coefficients. params must outlive the
 * runner. */
void mc_cli_gray_scott_mpi_desc(mc_mpi_desc *d, mc_cli_gsm_params *params);

#endif
