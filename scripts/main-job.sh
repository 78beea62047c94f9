#!/bin/sh
# The main job: a Gray-Scott reaction-diffusion run through the runner on
# the default device (the CPU device when no GPU is present).
set -e
build=${1:-build}
shift 2>/dev/null || true
"$build/metal-compute" run gray-scott --out "$build/gray-scott.png" "$@"
