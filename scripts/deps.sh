#!/bin/sh
# Checks for what the build needs; installs it when run as root on Debian,
# otherwise prints the exact command and stops.
set -e
need=""
command -v cmake >/dev/null 2>&1 || need="$need cmake"
command -v make >/dev/null 2>&1 || need="$need make"
command -v cc >/dev/null 2>&1 || need="$need gcc"
command -v pkg-config >/dev/null 2>&1 || need="$need pkg-config"
[ -f /usr/include/png.h ] || need="$need libpng-dev"
# MSL kernels on the CPU device: clang++ and Boost.Context (fiber switches)
command -v clang++ >/dev/null 2>&1 || need="$need clang"
[ -f /usr/include/boost/context/detail/fcontext.hpp ] || need="$need libboost-context-dev"
[ -f /usr/include/jansson.h ] || need="$need libjansson-dev"
# make test runs the Python package's tests (a venv) and the MPI tests
python3 -c 'import ensurepip' >/dev/null 2>&1 || need="$need python3-venv"
python3 -c 'import numpy' >/dev/null 2>&1 || /usr/bin/python3 -c 'import numpy' >/dev/null 2>&1 || need="$need python3-numpy"
command -v mpicc >/dev/null 2>&1 || need="$need libopenmpi-dev openmpi-bin"
[ -z "$need" ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing:$need"
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $need >/dev/null ||
        { apt-get update >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $need >/dev/null; }
    exit 0
fi
echo "metal-compute needs:$need"
echo "install them with:  sudo apt-get install -y$need"
exit 1
