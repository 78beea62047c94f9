#!/bin/sh
# run FILE --mpi against run FILE: the heat kernel (examples/kernels/heat.metal) on
# a random 48 x 51 float32 field, once in one process and once under mpirun
# with the given ranks and options; the .npy files must be the same bytes.
#   kernel_compare.sh BIN KERNEL RANKS [--mpi options...]
set -eu
bin=$1 kernel=$2 ranks=$3
shift 3
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
python3 - "$dir/field.npy" <<'PY'
import random, struct, sys
h, w = 48, 51
random.seed(7)
data = b''.join(struct.pack('<f', random.random()) for _ in range(h * w))
hdr = "{'descr': '<f4', 'fortran_order': False, 'shape': (%d, %d), }" % (h, w)
hdr += ' ' * ((64 - (10 + len(hdr) + 1) % 64) % 64) + '\n'
open(sys.argv[1], 'wb').write(b'\x93NUMPY\x01\x00' + struct.pack('<H', len(hdr)) + hdr.encode() + data)
PY
"$bin" run "$kernel" --function heat_step --arg "pair:$dir/field.npy" --arg iter --arg u32:51,u32:48,f32:0.2 \
    --steps 37 --out "$dir/plain.npy" --progress none >/dev/null
mpirun -n "$ranks" --oversubscribe "$bin" run "$kernel" --mpi --function heat_step --arg "pair:$dir/field.npy" \
    --arg iter --arg u32:51,u32:height,f32:0.2 --steps 37 --out "$dir/mpi.npy" "$@" >"$dir/mpi.txt"
cat "$dir/mpi.txt"
cmp "$dir/plain.npy" "$dir/mpi.npy"
if [ -n "${EXPECT:-}" ] && ! grep -qF "$EXPECT" "$dir/mpi.txt"; then
    echo "expected '$EXPECT' in the summary" >&2
    exit 1
fi
echo "same bytes as the single-process run"
