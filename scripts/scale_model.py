#!/usr/bin/env python3
"""The cost model of the distributed runner (docs/SCALE.md), evaluated.

Per rank and per step, averaged over a chunk of H steps:

    T(N, H) = t_c * W * (n + 2 H r)                    compute, halo rows included
            + (C0 + A(N) + X(H)) / H                   paid once per chunk
    X(H)    = 4 l_copy + 4 H r W b / B_copy            device <-> host copies
            + alpha + H r W b / beta                   the MPI transfer (both ways at once)
    A(N)    = a * ceil(log2 N)                         the allreduce of the fault flag

One device without the runner's slabs: T1(R) = t_c * W * R.
Weak scaling keeps n rows per rank: efficiency T1(n) / T(N, H).
Strong scaling keeps R rows: speedup T1(R) / T(N, H) with n = R / N.

Run it to print the tables in docs/SCALE.md; every parameter is named
below with where it comes from.
"""
import math

B = 8        # bytes per cell: (u, v) float32
R_STENCIL = 1

# Measured by the project on one NVIDIA H200 (docs/PERFORMANCE.md):
# gray-scott 2048^2, 27477 steps in 945.6 ms through the runner.
T_CELL_GPU = 945.6e-3 / 27477 / 2048**2          # s per cell-step, 8.2 ps
C0_GPU = 11.19e-6                                 # empty command buffer round trip, median

# Assumed (not measured here), nominal figures:
L_COPY = 10e-6     # one synchronous device<->host copy's fixed cost (cuMemcpy over PCIe)
B_COPY = 50e9      # PCIe Gen5 x16 achievable, bytes/s (64 GB/s nominal)
NET = {
    # ranks of one 8-GPU node talk through shared memory (host-staged halos)
    "node": dict(alpha=1e-6, beta=10e9, a=1e-6),
    # across nodes: one 400 Gb/s InfiniBand NDR port per GPU (50 GB/s), ~2 us latency,
    # ~3 us per allreduce hop
    "ib": dict(alpha=2e-6, beta=50e9, a=3e-6),
}


def t_step(N, H, W, n, t_c, c0, net):
    a = net["a"] * math.ceil(math.log2(N)) if N > 1 else 0.0
    halo = H * R_STENCIL * W * B
    x = 4 * L_COPY + 4 * halo / B_COPY + net["alpha"] + halo / net["beta"]
    return t_c * W * (n + 2 * H * R_STENCIL) + (c0 + a + x) / H


def best_h(N, W, n, t_c, c0, net):
    a = net["a"] * math.ceil(math.log2(N)) if N > 1 else 0.0
    fixed = c0 + a + 4 * L_COPY + net["alpha"]
    h = math.sqrt(fixed / (2 * R_STENCIL * t_c * W))
    return max(1, min(int(round(h)), n // R_STENCIL))


def net_for(N):
    return NET["node"] if N <= 8 else NET["ib"]


def main():
    gpus = [8, 64, 512]
    hs = [1, 4, 16]
    W = 8192
    print("GPU (H200): t_c = %.2f ps/cell-step, C0 = %.1f us (measured); copies, network assumed" %
          (T_CELL_GPU * 1e12, C0_GPU * 1e6))
    print("\nweak scaling, 8192 x 8192 cells per GPU: efficiency")
    print("%6s " % "GPUs" + " ".join("%8s" % ("H=%d" % h) for h in hs) + "   best H")
    for N in gpus:
        net = net_for(N)
        t1 = T_CELL_GPU * W * 8192
        row = [t1 / t_step(N, h, W, 8192, T_CELL_GPU, C0_GPU, net) for h in hs]
        hb = best_h(N, W, 8192, T_CELL_GPU, C0_GPU, net)
        eb = t1 / t_step(N, hb, W, 8192, T_CELL_GPU, C0_GPU, net)
        print("%6d " % N + " ".join("%8.3f" % e for e in row) + "   H=%d: %.3f" % (hb, eb))
    # The goals at 2 GPUs (one node): weak >= 0.9, strong >= 1.8x on 8192^2.
    net = net_for(2)
    hb = best_h(2, 8192, 8192, T_CELL_GPU, C0_GPU, net)
    t1 = T_CELL_GPU * 8192 * 8192
    print("\n2 GPUs, H=%d (best): weak %.3f; strong on 8192^2: %.2fx" %
          (hb, t1 / t_step(2, hb, 8192, 8192, T_CELL_GPU, C0_GPU, net),
           t1 / t_step(2, best_h(2, 8192, 4096, T_CELL_GPU, C0_GPU, net), 8192, 4096, T_CELL_GPU, C0_GPU, net)))
    for R in (16384, 65536):
        W = R
        print("\nstrong scaling, %d x %d grid: speedup (efficiency)" % (R, R))
        print("%6s " % "GPUs" + " ".join("%16s" % ("H=%d" % h) for h in hs) + "   rows/GPU")
        t1 = T_CELL_GPU * W * R
        for N in gpus:
            net = net_for(N)
            n = R // N
            cells = []
            for h in hs:
                if h * R_STENCIL > n:
                    cells.append("%16s" % "n/a (H > rows)")
                    continue
                s = t1 / t_step(N, h, W, n, T_CELL_GPU, C0_GPU, net)
                cells.append("%9.1f (%.2f)" % (s, s / N))
            print("%6d " % N + " ".join(cells) + "   %d" % n)


if __name__ == "__main__":
    main()
