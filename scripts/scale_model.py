#!/usr/bin/env python3
"""The cost model of the distributed runner (docs/SCALE.md), evaluated.

Per rank and per step, averaged over a chunk of H steps:

    T(N, H) = t_c * W * (n + 2 H r)                    compute, halo rows included
            + (C0 + A(N) + X(H)) / H                   paid once per chunk
    X(H)    = 4 l_copy + 4 H r W b / B_copy            device <-> host copies
            + alpha + H r W b / beta                   the MPI transfer (both ways at once)
    A(N)    = a * ceil(log2 N)                         the allreduce of the fault flag

Overlapped (the runner's default where this is cheaper): each chunk first
computes two boundary bands of 3 H r rows, sends them while the slab
computes, so the exchange shows only where it outlasts the slab's compute:

    T_o(N, H) = t_c * W * (n + 8 H r)                  the slab and both bands
              + (2 C0 + A(N) + max(0, X(H) - H t_c W (n + 2 H r))) / H

(2 C0: the bands' command buffer and the slab's, as the runner prices it.)

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


def t_step_overlap(N, H, W, n, t_c, c0, net):
    a = net["a"] * math.ceil(math.log2(N)) if N > 1 else 0.0
    halo = H * R_STENCIL * W * B
    x = 4 * L_COPY + 4 * halo / B_COPY + net["alpha"] + halo / net["beta"]
    shown = max(0.0, x - H * t_c * W * (n + 2 * H * R_STENCIL))
    return t_c * W * (n + 8 * H * R_STENCIL) + (2 * c0 + a + shown) / H


def best_h(N, W, n, t_c, c0, net):
    a = net["a"] * math.ceil(math.log2(N)) if N > 1 else 0.0
    fixed = c0 + a + 4 * L_COPY + net["alpha"]
    h = math.sqrt(fixed / (2 * R_STENCIL * t_c * W))
    return max(1, min(int(round(h)), n // R_STENCIL))


def best_h_overlap(N, W, n, t_c, c0, net):
    """The H that minimises T_o, by search (the max() has no closed form)."""
    hs = range(1, max(1, min(256, n // R_STENCIL)) + 1)
    return min(hs, key=lambda h: t_step_overlap(N, h, W, n, t_c, c0, net))


def grid_of(N):
    """The most square Px x Py = N (Px columns of blocks, Py rows)."""
    py = int(math.sqrt(N))
    while N % py:
        py -= 1
    return N // py, py


def t_step_blocks(N, H, W, R, t_c, c0, net):
    """2-D blocks of w x h cells (a Px x Py grid of ranks, --ranks-x), the
    exchange between chunks in two phases (columns, then rows with the
    corners), a column band packed on the device into one copy (the runner
    as built copies it a row at a time: see docs/SCALE.md). Against slabs:
    halo cells 2 H r (w + h) instead of 2 H r W, for twice the copies' and
    messages' fixed costs."""
    px, py = grid_of(N)
    w, h = W / px, R / py
    hr = H * R_STENCIL
    a = net["a"] * math.ceil(math.log2(N)) if N > 1 else 0.0
    sent = (2 * hr * h + 2 * hr * (w + 2 * hr)) * B      # both sides, both phases
    x = 8 * L_COPY + 2 * sent / B_COPY + 2 * net["alpha"] + (sent / 2) / net["beta"]
    return t_c * (w + 2 * hr) * (h + 2 * hr) + (c0 + a + x) / H


def best_blocks(N, W, R, t_c, c0, net):
    px, py = grid_of(N)
    limit = int(min(W / px, R / py) // R_STENCIL)
    hs = range(1, max(1, min(256, limit)) + 1)
    h = min(hs, key=lambda k: t_step_blocks(N, k, W, R, t_c, c0, net))
    return t_step_blocks(N, h, W, R, t_c, c0, net), h


def best(N, W, n, t_c, c0, net):
    """(T, H, mode) of the cheaper mode at its best H, as the runner picks."""
    hb = best_h(N, W, n, t_c, c0, net)
    ho = best_h_overlap(N, W, n, t_c, c0, net)
    tb = t_step(N, hb, W, n, t_c, c0, net)
    to = t_step_overlap(N, ho, W, n, t_c, c0, net)
    return (to, ho, "overlapped") if to < tb else (tb, hb, "between")


def net_for(N):
    return NET["node"] if N <= 8 else NET["ib"]


def main():
    gpus = [8, 64, 512]
    hs = [1, 4, 16]
    W = 8192
    print("GPU (H200): t_c = %.2f ps/cell-step, C0 = %.1f us (measured); copies, network assumed" %
          (T_CELL_GPU * 1e12, C0_GPU * 1e6))
    print("\nweak scaling, 8192 x 8192 cells per GPU: efficiency, between chunks / overlapped")
    print("%6s " % "GPUs" + " ".join("%14s" % ("H=%d" % h) for h in hs) + "   runner's pick")
    for N in gpus:
        net = net_for(N)
        t1 = T_CELL_GPU * W * 8192
        row = ["%6.3f / %5.3f" % (t1 / t_step(N, h, W, 8192, T_CELL_GPU, C0_GPU, net),
                                  t1 / t_step_overlap(N, h, W, 8192, T_CELL_GPU, C0_GPU, net)) for h in hs]
        tb, hb, mode = best(N, W, 8192, T_CELL_GPU, C0_GPU, net)
        print("%6d " % N + " ".join(row) + "   %s H=%d: %.3f" % (mode, hb, t1 / tb))
    # The goals at 2 GPUs (one node): weak >= 0.9, strong >= 1.8x on 8192^2.
    net = net_for(2)
    t1 = T_CELL_GPU * 8192 * 8192
    tw, hw, mw = best(2, 8192, 8192, T_CELL_GPU, C0_GPU, net)
    ts, hs2, ms = best(2, 8192, 4096, T_CELL_GPU, C0_GPU, net)
    print("\n2 GPUs: weak %.3f (%s, H=%d); strong on 8192^2: %.2fx (%s, H=%d)" %
          (t1 / tw, mw, hw, t1 / ts, ms, hs2))
    for R in (16384, 65536):
        W = R
        print("\nstrong scaling, %d x %d grid: speedup, between chunks / overlapped" % (R, R))
        print("%6s " % "GPUs" + " ".join("%14s" % ("H=%d" % h) for h in hs) +
              "   runner's pick (efficiency)   rows/GPU   blocks, packed columns (best H)")
        t1 = T_CELL_GPU * W * R
        for N in gpus:
            net = net_for(N)
            n = R // N
            cells = []
            for h in hs:
                if h * R_STENCIL > n:
                    cells.append("%14s" % "n/a (H > rows)")
                    continue
                cells.append("%6.1f / %5.1f" % (t1 / t_step(N, h, W, n, T_CELL_GPU, C0_GPU, net),
                                                t1 / t_step_overlap(N, h, W, n, T_CELL_GPU, C0_GPU, net)))
            tb, hb, mode = best(N, W, n, T_CELL_GPU, C0_GPU, net)
            tk, hk = best_blocks(N, W, R, T_CELL_GPU, C0_GPU, net)
            px, py = grid_of(N)
            print("%6d " % N + " ".join(cells) + "   %s H=%d: %.1f (%.2f)   %d" % (mode, hb, t1 / tb, t1 / tb / N, n) +
                  "   blocks %dx%d H=%d: %.1f (%.2f)" % (px, py, hk, t1 / tk, t1 / tk / N))


if __name__ == "__main__":
    main()
