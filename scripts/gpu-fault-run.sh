#!/bin/sh
# A real device fault survived by an isolated run (docs/ISOLATION.md).
#
# On a CUDA machine: gray-scott with --isolate, where the kernel of one step
# writes 4 TiB past its buffer, once. That illegal address poisons the
# worker's CUDA context for good; the supervisor replaces the worker, which
# restores the last checkpoint, and the run must end with the image of an
# undisturbed run, byte for byte. Prints the restart cost the supervisor
# measured. Logs, images and the pipeline cache go to OUTDIR.
#
# Usage: scripts/gpu-fault-run.sh OUTDIR [DEVICE] [FAULT_STEP]
#        (DEVICE defaults to cuda, FAULT_STEP to 12000 of 20000 steps)
# Exit status: 0 when the faulted run's image is the reference's.
set -u
out=${1:?usage: scripts/gpu-fault-run.sh OUTDIR [DEVICE] [FAULT_STEP]}
dev=${2:-cuda}
step=${3:-12000}
mkdir -p "$out"
out=$(cd "$out" && pwd)
{
    echo "date: $(date -u +%Y-%m-%dT%H:%MZ)"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null
    uname -srm
    nproc
} >"$out/machine.txt" 2>&1
cat "$out/machine.txt"
cmake -S . -B build-gpu -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMC_WITH_CUDA=ON ${MC_CMAKE_ARGS:-} >"$out/build.log" 2>&1 &&
    cmake --build build-gpu -j "$(nproc)" >>"$out/build.log" 2>&1 || { tail -50 "$out/build.log"; exit 1; }

mc=build-gpu/metal-compute
# The first worker compiles the kernel and archives it; a restarted worker
# loads it from here.
export MC_CACHE_DIR="$out/cache"
export MC_LOG=info
args="--device $dev --size 2048 --steps 20000 --checkpoint-ms 100"
status=0

echo "== 1. the undisturbed reference"
$mc run gray-scott $args --out "$out/ref.png" >"$out/ref.txt" 2>&1
cat "$out/ref.txt"

echo "== 2. isolated, step $step writes out of bounds (a real fault)"
$mc run gray-scott $args --isolate --fault-at-step "$step" --out "$out/fault.png" >"$out/fault.txt" 2>&1
rc=$?
cat "$out/fault.txt"
if [ $rc -eq 0 ] && cmp -s "$out/ref.png" "$out/fault.png"; then
    echo "RESULT: the faulted isolated run wrote the reference image, byte for byte"
else
    echo "RESULT: FAILED (exit $rc, or the images differ)"
    status=1
fi
grep -E "worker restarts|restart cost" "$out/fault.txt"
grep -E "isolate.restart_cost|cuda.device_lost|isolate.restart" "$out/fault.txt" | head -5

echo "== 3. for contrast: the same fault without --isolate (the process cannot recover)"
timeout 180 $mc run gray-scott $args --fault-at-step "$step" --out "$out/plain.png" >"$out/plain.txt" 2>&1
echo "exit status $? (expected: not 0)"
tail -5 "$out/plain.txt"

echo "== 4. isolated, injected kill, hang and device loss on the GPU"
$mc run gray-scott $args --isolate --deadline-ms 2000 --inject-faults kill@50,hang@120,device-lost@200 \
    --out "$out/injected.png" >"$out/injected.txt" 2>&1
rc=$?
grep -E "worker restarts|restart cost|time" "$out/injected.txt"
if [ $rc -eq 0 ] && cmp -s "$out/ref.png" "$out/injected.png"; then
    echo "RESULT: injected faults, same image"
else
    echo "RESULT: FAILED with injected faults (exit $rc, or the images differ)"
    status=1
fi

echo "== 5. the isolation tests with workers on $dev"
(cd build-gpu && MC_DEVICE=$dev ctest --output-on-failure -R 'isolate|runner_restore|runner_no_reopen' --timeout 120) \
    >"$out/tests.log" 2>&1 || status=1
tail -25 "$out/tests.log"
exit $status
