#!/bin/sh
# Runs `run gray-scott` once in one process and once under mpirun with the
# given ranks and options, and checks that the two images are the same
# bytes. Optional checks on the summary: EXPECT='text' must appear in it.
#   compare.sh BIN RANKS SIZE STEPS [--mpi options...]
set -eu
bin=$1 ranks=$2 size=$3 steps=$4
shift 4
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
"$bin" run gray-scott --size "$size" --steps "$steps" --out "$dir/plain.png" >"$dir/plain.txt"
mpirun -n "$ranks" --oversubscribe "$bin" run gray-scott --mpi --size "$size" --steps "$steps" \
    --out "$dir/mpi.png" "$@" >"$dir/mpi.txt"
cat "$dir/mpi.txt"
cmp "$dir/plain.png" "$dir/mpi.png"
if [ -n "${EXPECT:-}" ] && ! grep -qF "$EXPECT" "$dir/mpi.txt"; then
    echo "expected '$EXPECT' in the summary" >&2
    exit 1
fi
echo "same bytes as the single-process run"
