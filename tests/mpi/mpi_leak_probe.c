/*
 * The leak check under mpirun, checked: MPI_Init and MPI_Finalize alone
 * must be clean with tests/mpi/lsan.supp (Open MPI's own leaks are
 * suppressed), and with "leak" this program loses a block of its own,
 * which LeakSanitizer must still report (the suppressions hide nothing of
 * ours).
 */
#include <mpi.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* volatile, and in a function of its own, so that the compiler keeps the
 * allocation and no register or stack slot of main still points at it. */
static void *volatile lost;

__attribute__((noinline)) static void lose_a_block(void)
{
    lost = malloc(4242);
    if (lost) memset(lost, 1, 4242);
    lost = NULL; /* the only pointer gone: a direct leak */
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    if (argc > 1 && !strcmp(argv[1], "leak")) lose_a_block();
    int rank = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Finalize();
    if (rank == 0) printf("probe done\n");
    return 0;
}
