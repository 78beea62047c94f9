#!/usr/bin/env python3
"""NumPy references for the `metal-compute run FILE` tests (tests/test_run_cli.c).

    run_reference.py init heat|life PATH N      writes the initial state
    run_reference.py check heat INIT OUT STEPS ALPHA
    run_reference.py check life INIT OUT STEPS  exit 0 when OUT matches the reference
"""
import sys

import numpy as np


def heat(u, steps, alpha):
    a = np.float32(alpha)
    for _ in range(steps):
        s = np.roll(u, 1, 1) + np.roll(u, -1, 1) + np.roll(u, 1, 0) + np.roll(u, -1, 0)
        u = (u + a * (s - np.float32(4) * u)).astype(np.float32)
    return u


def life(b, steps):
    for _ in range(steps):
        n = sum(np.roll(np.roll(b, dy, 0), dx, 1) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx)
        b = ((n == 3) | ((b != 0) & (n == 2))).astype(np.uint8)
    return b


def main(argv):
    if argv[1] == "init":
        n = int(argv[4])
        if argv[2] == "heat":
            u = np.zeros((n, n + 3), dtype=np.float32)  # not square: the test sees which axis is x
            u[n // 4:n // 2, n // 3:n // 2 + 3] = 100.0
            u[3, 5] = -40.0
        else:
            rng = np.random.default_rng(7)
            u = (rng.random((n, n + 5)) < 0.3).astype(np.uint8)
        np.save(argv[3], u)
        return 0
    init, out, steps = np.load(argv[3]), np.load(argv[4]), int(argv[5])
    ref = heat(init, steps, float(argv[6])) if argv[2] == "heat" else life(init, steps)
    if out.dtype != ref.dtype or out.shape != ref.shape:
        print(f"got {out.dtype}{out.shape}, want {ref.dtype}{ref.shape}")
        return 1
    if argv[2] == "heat":
        # The kernel may fuse a multiply and an add (FMA); NumPy rounds twice.
        err = float(np.max(np.abs(out - ref)))
        ok = np.allclose(out, ref, rtol=1e-4, atol=1e-4) and not np.array_equal(ref, init)
    else:
        err = int(np.count_nonzero(out != ref))
        ok = err == 0 and not np.array_equal(ref, init)
    print(f"{argv[2]}: {steps} steps, max difference {err}, {'match' if ok else 'MISMATCH'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
