#!/bin/sh
# The main job on the default device (cpu when no GPU is present).
set -e
build=${1:-build}
"$build/metal-compute" info
"$build/examples/saxpy"
