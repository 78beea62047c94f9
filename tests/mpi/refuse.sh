#!/bin/sh
# Bad input under mpirun: every rank exits with status 2 and rank 0 names
# the cause. refuse.sh BIN RANKS 'expected message' [options...]
set -u
bin=$1 ranks=$2 want=$3
shift 3
out=$(mpirun -n "$ranks" --oversubscribe "$bin" run gray-scott --mpi --out /tmp/mc-mpi-refused.png "$@" 2>&1)
rc=$?
echo "$out"
[ "$rc" -ne 0 ] || { echo "expected a failure" >&2; exit 1; }
echo "$out" | grep -qF -- "$want" || { echo "expected '$want'" >&2; exit 1; }
[ ! -e /tmp/mc-mpi-refused.png ] || { echo "an image was written" >&2; exit 1; }
