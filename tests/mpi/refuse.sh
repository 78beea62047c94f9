#!/bin/sh
# Bad input under mpirun: every rank exits with status 2 and rank 0 names
# the cause. refuse.sh BIN RANKS 'expected message' JOB [options...], JOB
# gray-scott or a kernel file.
set -u
bin=$1 ranks=$2 want=$3 job=$4
shift 4
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
out=$(mpirun -n "$ranks" --oversubscribe "$bin" run "$job" --mpi --out "$dir/refused.out" "$@" 2>&1)
rc=$?
echo "$out"
[ "$rc" -ne 0 ] || { echo "expected a failure" >&2; exit 1; }
echo "$out" | grep -qF -- "$want" || { echo "expected '$want'" >&2; exit 1; }
[ ! -e "$dir/refused.out" ] || { echo "an output was written" >&2; exit 1; }
