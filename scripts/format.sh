#!/bin/sh
# Formats the C sources with clang-format and the repository's .clang-format.
# Usage: scripts/format.sh            rewrite every file that differs
#        scripts/format.sh --check    list the files that differ; exit 1 if any
# Covers src/, tools/, benchmarks/ (not its baselines), tests/, include/ and
# examples/ (.c, .h, .m, .cu).
# Needs clang-format (Debian package clang-format); CLANG_FORMAT picks another.
set -eu
cd "$(dirname "$0")/.."
mode=write
case ${1:-} in
"") ;;
--check) mode=check ;;
-h | --help)
    sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'
    exit 0
    ;;
*)
    echo "format.sh: unknown option '$1' (use --check, or nothing to rewrite the files)" >&2
    exit 2
    ;;
esac
cf=${CLANG_FORMAT:-clang-format}
if ! command -v "$cf" >/dev/null 2>&1; then
    echo "format.sh: '$cf' not found: apt-get install clang-format (or set CLANG_FORMAT)" >&2
    exit 2
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
find src tools benchmarks tests include examples -path benchmarks/baselines -prune -o \
    -type f \( -name '*.c' -o -name '*.h' -o -name '*.m' -o -name '*.cu' \) -print |
    LC_ALL=C sort >"$tmp/files"
differ=0
while IFS= read -r f; do
    # Twice: clang-format 14 does not always settle in one pass, and the
    # check must agree with what a rewrite leaves.
    "$cf" --style=file "$f" | "$cf" --style=file --assume-filename="$f" >"$tmp/out"
    if cmp -s "$f" "$tmp/out"; then continue; fi
    differ=$((differ + 1))
    if [ "$mode" = check ]; then
        echo "$f"
    else
        # Same folder, fsync, rename: an interrupted run never leaves half a file.
        new=$(mktemp "$f.fmt.XXXXXX")
        cat "$tmp/out" >"$new"
        chmod --reference="$f" "$new" 2>/dev/null || true
        sync "$new" 2>/dev/null || sync
        mv "$new" "$f"
    fi
done <"$tmp/files"
if [ "$mode" = check ]; then
    if [ "$differ" -ne 0 ]; then
        echo "format.sh: $differ file(s) differ from .clang-format (scripts/format.sh rewrites them)" >&2
        exit 1
    fi
    echo "format.sh: every file matches .clang-format"
else
    echo "format.sh: rewrote $differ file(s)"
fi
