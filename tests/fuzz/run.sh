#!/bin/sh
# Builds the libFuzzer targets with clang and runs each for a fixed time on
# its seed corpus (tests/fuzz/corpus); new inputs go to a temporary folder,
# so the corpus in the repository stays as it is.
# Usage: tests/fuzz/run.sh [SECONDS]   (default 30; FUZZ_BUILD names the build folder)
set -eu
cd "$(dirname "$0")/../.."
secs=${1:-30}
build=${FUZZ_BUILD:-build-fuzz}
CC=clang cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMC_WITH_CUDA=OFF -DMC_BUILD_FUZZ=ON \
    -DMC_SANITIZE=address,undefined >/dev/null
cmake --build "$build" -j "${JOBS:-2}" --target fuzz_cache_entry
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$build/tests/fuzz/fuzz_cache_entry" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 \
    -print_final_stats=1 "$work" tests/fuzz/corpus
