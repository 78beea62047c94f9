"""A custom kernel on NumPy arrays, in ten lines (the part between the marks).

    python custom_kernel.py [--device cpu] [--language msl|c]
"""
import argparse

import numpy as np

import metal_compute as mc

MSL = """#include <metal_stdlib>
using namespace metal;
kernel void scale(device float *y [[buffer(0)]], device const float *x [[buffer(1)]],
                  constant float &a [[buffer(2)]], constant uint &n [[buffer(3)]],
                  uint i [[thread_position_in_grid]]) { if (i < n) y[i] = a * x[i]; }
"""
C = """#include <mc/mc_cpu_kernel.h>
MC_KERNEL(scale, 4) { float *y = MC_ARG(ctx, 0, float); const float *x = MC_ARG(ctx, 1, const float);
  float a = *MC_ARG(ctx, 2, const float); uint32_t n = *MC_ARG(ctx, 3, const uint32_t);
  MC_FOR_EACH_THREAD_BELOW(ctx, i, n) y[i] = a * x[i]; }
"""

ap = argparse.ArgumentParser()
ap.add_argument("--device", default=None)
ap.add_argument("--language", default="msl", choices=["msl", "c"])
args = ap.parse_args()

# ---- the ten lines -------------------------------------------------------
dev = mc.Device(args.device)                                   # cpu, cuda, metal
x = dev.array(np.linspace(0, 1, 1_000_000, dtype=np.float32))  # one copy in
y = dev.empty(x.shape, np.float32)                             # device memory, a NumPy array
scale = dev.kernel({"msl": MSL, "c": C}[args.language], "scale", language=args.language)
scale(y, x, np.float32(3), np.uint32(x.size), grid=x.size)     # runs and waits
assert np.allclose(y, 3 * x)                                   # read in place: no copy out
# ---------------------------------------------------------------------------
print("ok:", y[:4])
