#!/bin/sh
# A job whose ranks are all killed resumes under mpirun: rank 1 dies by
# SIGKILL at step 30 (mpirun ends the others), then the same command with
# --resume finishes from the durable checkpoints and writes the same bytes
# as the single-process run. With "lag", rank 2's newest checkpoint is
# removed first, as if it had been killed before writing it: every rank
# must then resume from the step before, the others setting their newer
# file aside (*.ahead-of-peers), and none may be left once the run is done.
# With "aside", the resumed run is killed too: its set-aside files must
# still be there for an operator; the next start removes them (that run is
# killed as well, so only the start can have done it); a last one finishes.
# With "overlap", the plain case with the exchange overlapped (--overlap);
# with "blocks", cut into 3 x 1 blocks (--ranks-x 3).
#   resume.sh BIN [lag|aside|overlap|blocks]
set -eu
bin=$1 mode=${2:-}
extra=""
[ "$mode" != overlap ] || extra=--overlap
[ "$mode" != blocks ] || extra="--ranks-x 3"
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
"$bin" run gray-scott --size 50 --steps 60 --out "$dir/plain.png" >/dev/null
run() {
    mpirun -n 3 --oversubscribe "$bin" run gray-scott --mpi --size 50 --steps 60 --halo 2 --checkpoint-chunks 4 \
        --checkpoint-dir "$dir/ck" --out "$dir/mpi.png" $extra "$@"
}
killed() {
    if run "$@" >"$dir/killed.txt" 2>&1; then
        echo "the killed run succeeded" >&2
        exit 1
    fi
    [ ! -e "$dir/mpi.png" ] || { echo "the killed run wrote an image" >&2; exit 1; }
}
aside() { find "$dir/ck" -name '*.ahead-of-peers' | wc -l; }
killed --kill-at-step 1:30
want=24
if [ "$mode" = lag ] || [ "$mode" = aside ]; then
    rm "$dir/ck/rank-2-of-3/checkpoint-00000000000000000024.mcck"
    want=16
fi
if [ "$mode" = aside ]; then
    killed --resume --kill-at-step 1:40
    [ "$(aside)" -eq 2 ] || { echo "expected ranks 0 and 1 to have set step 24 aside: $(aside) files" >&2; exit 1; }
    killed --resume --kill-at-step 1:50
    [ "$(aside)" -eq 0 ] || { echo "the start left $(aside) stale set-aside files" >&2; exit 1; }
    want=48
fi
run --resume >"$dir/resumed.txt"
cat "$dir/resumed.txt"
grep -qF "resumed from step $want" "$dir/resumed.txt" || { echo "expected a resume from step $want" >&2; exit 1; }
if [ "$mode" = overlap ] && ! grep -qF "exchange overlapped" "$dir/resumed.txt"; then
    echo "expected the overlapped exchange" >&2
    exit 1
fi
[ "$(aside)" -eq 0 ] || { echo "the finished run left $(aside) set-aside files" >&2; exit 1; }
cmp "$dir/plain.png" "$dir/mpi.png"
echo "same bytes as the single-process run"
