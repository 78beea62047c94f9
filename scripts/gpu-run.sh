#!/bin/sh
# Builds with the CUDA device, runs the whole test suite on it and the
# benchmarks beside the raw driver, and leaves logs and JSON in OUTDIR.
# Usage: scripts/gpu-run.sh OUTDIR [DEVICE]   (DEVICE defaults to cuda)
set -u
out=${1:?usage: scripts/gpu-run.sh OUTDIR [DEVICE]}
dev=${2:-cuda}
mkdir -p "$out"
{
    echo "date: $(date -u +%Y-%m-%dT%H:%MZ)"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null
    uname -srm
    nproc
} >"$out/machine.txt" 2>&1
cmake -S . -B build-gpu -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMC_WITH_CUDA=ON ${MC_CMAKE_ARGS:-} >"$out/build.log" 2>&1 &&
    cmake --build build-gpu -j "$(nproc)" >>"$out/build.log" 2>&1 || { tail -50 "$out/build.log"; exit 1; }
build-gpu/metal-compute info >"$out/info.txt" 2>&1
cat "$out/info.txt"
(cd build-gpu && MC_DEVICE=$dev ctest --output-on-failure -j 4 --timeout 120) >"$out/tests.log" 2>&1
tail -30 "$out/tests.log"
MC_DEVICE=$dev build-gpu/examples/saxpy >"$out/saxpy.txt" 2>&1
cat "$out/saxpy.txt"
build-gpu/metal-compute bench --device "$dev" --json "$out/bench.json" >"$out/bench.txt" 2>&1
cat "$out/bench.txt"
# The CPU device on the same host, for the rows that depend on core count.
build-gpu/metal-compute bench --device cpu --only round-trip,stream >"$out/bench-cpu.txt" 2>&1
cat "$out/bench-cpu.txt"
