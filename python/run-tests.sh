#!/usr/bin/env bash
# The Python package's tests, run by `make test`: a venv under the build
# folder, the package installed into it with pip (which builds the C library
# through scikit-build-core), then pytest. Fails when pytest fails or finds
# no tests. MC_PY_DEVICE picks the device the suite runs on (default cpu).
set -euo pipefail
BUILD=${1:-build}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
case "$BUILD" in /*) ;; *) BUILD="$ROOT/$BUILD" ;; esac
PY=${PYTHON:-python3}
VENV="$BUILD/python-venv"
if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV" || { echo "python: cannot create a venv (apt-get install python3-venv)" >&2; exit 1; }
fi
# pip's own cache makes later runs work offline.
"$VENV/bin/python" -m pip install -q --disable-pip-version-check numpy cffi pytest scikit-build-core
# No build isolation: the backend just installed is used, nothing more is
# fetched; the CMake build folder is kept between runs (incremental).
"$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-build-isolation \
    --config-settings=build-dir="$BUILD/python-build" "$ROOT"
# From the tests folder: the installed package is imported, not the source tree.
cd "$ROOT/python/tests"
# The command-line program the PNG and bench tests compare against.
export MC_CLI="${MC_CLI:-$BUILD/metal-compute}"
rc=0
"$VENV/bin/python" -m pytest -q -p no:cacheprovider . || rc=$?
if [ "$rc" = 5 ]; then echo "pytest: no tests ran" >&2; exit 1; fi
exit "$rc"
