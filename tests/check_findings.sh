#!/bin/sh
# Every finding number cited in the sources and documents (F145, F-145,
# "(F145, F696)", ranges F685-F687 or F697–F702) must have its line in
# docs/FINDINGS.md, so a reader can resolve every citation.
# Usage: check_findings.sh SOURCE_DIR
set -eu
root=${1:-.}
list="$root/docs/FINDINGS.md"
if [ ! -f "$list" ]; then
    echo "check_findings: $list is missing" >&2
    exit 1
fi
export LC_ALL=C
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# Defined findings: lines "- **F<number>**: ...".
grep -oE '^- \*\*F[0-9]+\*\*' "$list" | grep -oE '[0-9]+' | sort -u >"$tmp/have"

# Cited findings, with the file that cites them. A citation is F, an optional
# dash, digits, not preceded by a letter, digit or underscore (so 0xF0 or
# UTF8 do not count); a second number after -, – or .. makes a range.
dash=$(printf '\342\200\223')
find "$root/src" "$root/include" "$root/tests" "$root/tools" "$root/benchmarks" "$root/examples" "$root/docs" \
     "$root/README.md" "$root/CMakeLists.txt" -type f \
     \( -name '*.c' -o -name '*.h' -o -name '*.m' -o -name '*.metal' -o -name '*.cu' \
        -o -name '*.md' -o -name '*.txt' -o -name '*.sh' -o -name '*.py' -o -name '*.cmake' \) \
     ! -path "$list" 2>/dev/null |
while IFS= read -r f; do
    grep -oE "(^|[^[:alnum:]_])F-?[0-9]+([[:space:]]*(-|$dash|\.\.)[[:space:]]*F-?[0-9]+)?" "$f" |
        sed -E "s/$dash/-/; s/^[^F]*F/F/" |
        sed -E 's/^F-?([0-9]+)[[:space:]]*(-|\.\.)[[:space:]]*F-?([0-9]+)$/R \1 \3/; s/^F-?([0-9]+)$/S \1/' |
        awk -v f="$f" '$1 == "R" { for (i = $2; i <= $3; i++) print i, f; next } $1 == "S" { print $2, f }'
done | sort -n -u >"$tmp/cited"

missing=0
while read -r n f; do
    if ! grep -qx "$n" "$tmp/have"; then
        echo "check_findings: ${f#$root/} cites F$n, which docs/FINDINGS.md does not list" >&2
        missing=1
    fi
done <"$tmp/cited"
count=$(cut -d' ' -f1 "$tmp/cited" | sort -u | wc -l)
if [ "$count" -eq 0 ]; then
    echo "check_findings: found no citations at all under $root: is the path right?" >&2
    exit 1
fi
if [ "$missing" -ne 0 ]; then
    exit 1
fi
echo "check_findings: all $count cited findings are listed"
