#!/bin/sh
# Installs the build into a fresh prefix and builds a program against it
# through pkg-config: what `make install` promises a user.
set -eu
build=$1
cc=$2
prefix=$(mktemp -d)
trap 'rm -rf "$prefix"' EXIT
cmake --install "$build" --prefix "$prefix" >/dev/null
pc=$(find "$prefix" -name metal-compute.pc | head -n 1)
[ -n "$pc" ] || { echo "no metal-compute.pc installed"; exit 1; }
# The user's own search path stays behind ours (their other packages).
export PKG_CONFIG_PATH="$(dirname "$pc")${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"
# On a line of its own, so that set -e sees pkg-config fail.
flags=$(pkg-config --cflags --libs metal-compute)
[ -f "$(pkg-config --variable=includedir metal-compute)/mc/mc.h" ] || {
    echo "pkg-config's includedir has no mc/mc.h: flags '$flags'; installed:"
    find "$prefix" -name mc.h
    exit 1
}
cat >"$prefix/use.c" <<'C'
#include <mc/mc.h>
#include <stdio.h>
int main(void)
{
    mc_device *d;
    if (mc_device_open_name("cpu", &d) != MC_OK) return 1;
    mc_device_info info;
    mc_device_get_info(d, &info);
    printf("%s\n", info.name);
    mc_device_release(d);
    return 0;
}
C
"$cc" "$prefix/use.c" $flags -o "$prefix/use"
LD_LIBRARY_PATH=$(pkg-config --variable=libdir metal-compute) "$prefix/use"
