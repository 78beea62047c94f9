#!/bin/sh
# Every public header compiles on its own: a translation unit that includes
# only that header builds with warnings as errors, as C11 and, since the
# headers wrap themselves in extern "C", as C++11.
# Usage: compile_alone.sh c|c++ COMPILER INCLUDE_DIR GENERATED_INCLUDE_DIR
# (the second holds mc/mc_version.h, which the build generates).
# Exits 77 (reported as skipped) when the C++ compiler is absent.
set -eu
lang=$1
cc=$2
inc=$3
gen=$4
if [ "$lang" = c++ ] && ! command -v "$cc" >/dev/null 2>&1; then
    echo "compile_alone: no C++ compiler ('$cc'): skipped" >&2
    exit 77
fi
case $lang in
c) ext=c; flags="-std=c11 -Wall -Wextra -pedantic -Werror -Wstrict-prototypes -Wmissing-prototypes -Wshadow" ;;
c++) ext=cpp; flags="-std=c++11 -Wall -Wextra -pedantic -Werror -Wshadow" ;;
*) echo "compile_alone: language must be c or c++, not '$lang'" >&2; exit 2 ;;
esac
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
failed=0
count=0
for h in "$inc"/mc/*.h "$gen"/mc/*.h; do
    name=$(basename "$h")
    # The MPI runner's header needs mpi.h: checked where the build has MPI.
    if [ "$name" = mc_mpi.h ] && [ -n "${MC_MPI_INCLUDE:-}" ]; then
        extra=$(printf -- '-isystem %s ' $MC_MPI_INCLUDE)  # their own warnings are not ours
    elif [ "$name" = mc_mpi.h ]; then
        echo "compile_alone: mc/mc_mpi.h not checked: this build has no MPI" >&2
        continue
    else
        extra=
    fi
    # The typedef keeps a header of macros only from making an empty unit.
    printf '#include <mc/%s>\ntypedef int header_test_unit_is_not_empty;\n' "$name" >"$tmp/tu.$ext"
    # shellcheck disable=SC2086
    if ! "$cc" $flags $extra -I"$inc" -I"$gen" -fsyntax-only "$tmp/tu.$ext"; then
        echo "compile_alone: mc/$name does not compile on its own as $lang" >&2
        failed=1
    fi
    count=$((count + 1))
done
# The MC_*_INIT macros expand in this language too.
inits=$(grep -ho '#define MC_[A-Z][A-Z_]*_DESC_INIT' "$inc"/mc/*.h | sed 's/#define //' | sort -u)
{
    echo '#include <mc/mc.h>'
    for m in $inits; do
        type=$(echo "$m" | sed 's/_INIT$//' | tr 'A-Z' 'a-z')
        echo "extern const $type ${type}_example; const $type ${type}_example = $m;"
    done
} >"$tmp/inits.$ext"
# shellcheck disable=SC2086
if [ -z "$inits" ] || ! "$cc" $flags -I"$inc" -I"$gen" -fsyntax-only "$tmp/inits.$ext"; then
    echo "compile_alone: the MC_*_INIT macros do not compile as $lang" >&2
    failed=1
fi
if [ "$count" -eq 0 ]; then
    echo "compile_alone: no headers found in $inc/mc" >&2
    exit 1
fi
[ "$failed" -eq 0 ] || exit 1
echo "compile_alone: all $count public headers compile on their own as $lang"
