"""Gray-Scott reaction-diffusion through the runner, from Python.

Writes the same PNG as `metal-compute run gray-scott`, byte for byte: the
same seed, kernel, parameters, colour map and PNG encoding (no row filter,
zlib level 6, IDAT chunks of 8192 bytes; tools/cmd_run.c pins them).

    python gray_scott.py [--device cpu] [--size 256] [--steps 10000] [--out gray-scott.png]
                         [--inject-faults timeout@3,page-fault@7] [--isolate] [--language msl|c]
"""
import argparse
import os
import struct
import sys
import tempfile
import zlib

import numpy as np

import metal_compute as mc

_ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
KERNELS = os.path.join(_ROOT, "examples", "kernels")
# The kernel is MSL, which every device runs; the hand-written C and CUDA
# twins are benchmark baselines (benchmarks/baselines), still usable here.
BASELINES = os.path.join(_ROOT, "benchmarks", "baselines")
EXT = {"msl": ".metal", "c": ".c", "cuda": ".cu"}


def kernel_path(language):
    """gray_scott's source in `language` (msl, c or cuda)."""
    return os.path.join(KERNELS if language == "msl" else BASELINES, "gray_scott" + EXT[language])
GROUP = 16


def seed(n):
    """The CLI's initial field: U = 1, V = 0 but for squares of (0.5, 0.25)
    placed by the same fixed-seed LCG, wrapping around the edges."""
    f = np.empty((n, n, 2), np.float32)
    f[..., 0], f[..., 1] = 1.0, 0.0
    rng = 20240611
    side = max(n // 24, 3) if n // 24 > 3 else 3
    count = 6 + (n // 64) * (n // 64) * 3
    for _ in range(count):
        rng = (rng * 1664525 + 1013904223) & 0xFFFFFFFF
        cx = (rng >> 8) % n
        rng = (rng * 1664525 + 1013904223) & 0xFFFFFFFF
        cy = (rng >> 8) % n
        ys = (cy + np.arange(side)) % n
        xs = (cx + np.arange(side)) % n
        f[np.ix_(ys, xs)] = (0.5, 0.25)
    return f


def params(n):
    """gs_params: width, height, du, dv, feed, kill, dt, fault_step (Karl Sims's coral)."""
    return struct.pack("<II5fI", n, n, 1.0, 0.5, 0.0545, 0.062, 1.0, 0)


def simulate(device, size=256, steps=10000, *, language=None, inject_faults=None, isolate=None, progress=None,
             budget_ms=0.0, in_flight=0):
    """Runs the simulation; returns (field of shape (size, size, 2), RunnerStats)."""
    language = language or mc.DEFAULT_LANGUAGE
    path = kernel_path(language)
    # The kernel is compiled on `device` (or a CPU device, to hand its
    # source to an isolated runner, which compiles it again in the worker).
    kdev = device if device is not None else mc.Device("cpu")
    kernel = kdev.kernel(path=path, function="gray_scott_step", language=language)
    f0 = seed(size)
    if inject_faults and device is not None:
        device.inject_faults(inject_faults)
    if inject_faults and isolate is not None:
        isolate = dict(isolate, inject_faults=inject_faults)
    with mc.Runner(device, kernel, state=[f0, f0], args=[mc.state(0), mc.state(1), None, params(size)],
                   iterations=steps, groups=(-(-size // GROUP), -(-size // GROUP)), group=(GROUP, GROUP),
                   iteration_arg=2, budget_ms=budget_ms, in_flight=in_flight, progress=progress, isolate=isolate,
                   label="gray-scott") as r:
        stats = r.run()
        # Step i writes B when i is even: after an even number of steps the field is in A.
        return r.state(steps % 2), stats


STOPS = np.array([[0, 0, 4], [40, 11, 84], [101, 21, 110], [159, 42, 99], [212, 72, 66], [245, 125, 21],
                  [250, 193, 39], [252, 255, 164]], np.float32)


def colour(v):
    """The CLI's palette in the same float32 arithmetic (gs_colour)."""
    v = np.asarray(v, np.float32)
    n = len(STOPS)
    t = np.clip(v * np.float32(2.8), np.float32(0), np.float32(1))
    x = t * np.float32(n - 1)
    i = np.minimum(x.astype(np.int32), n - 2)
    f = (x - i.astype(np.float32))[..., None]
    lo, hi = STOPS[i], STOPS[i + 1]
    return (lo + (hi - lo) * f + np.float32(0.5)).astype(np.uint8)


def png_bytes(rgb):
    """RGB8 PNG: IHDR, IDAT chunks of 8192 bytes, IEND; no row filter, zlib level 6."""
    h, w, _ = rgb.shape

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    raw = np.zeros((h, 1 + 3 * w), np.uint8)
    raw[:, 1:] = rgb.reshape(h, 3 * w)
    # libpng narrows the zlib window for small images (png_deflate_claim):
    # the same rule gives the same stream.
    wbits, size = 15, raw.nbytes
    if size <= 16384:
        half = 1 << (wbits - 1)
        while size + 262 <= half:
            half >>= 1
            wbits -= 1
    wbits = max(wbits, 9)  # zlib refuses 8 for deflate; libpng asks for 9 too
    z = zlib.compressobj(6, zlib.DEFLATED, wbits, 8, zlib.Z_DEFAULT_STRATEGY)
    data = bytearray(z.compress(raw.tobytes()) + z.flush())
    # ... and then writes the smallest window that covers the data into the
    # stream's header (optimize_cmf), keeping the check bits valid.
    cinfo = data[0] >> 4
    if size <= 16384 and (data[0] & 0x0F) == 8 and cinfo <= 7 and size <= 1 << (cinfo + 7):
        half = 1 << (cinfo + 7)
        while True:
            half >>= 1
            cinfo -= 1
            if not (cinfo > 0 and size <= half):
                break
        data[0] = (data[0] & 0x0F) | (cinfo << 4)
        flg = data[1] & 0xE0
        data[1] = flg + 0x1F - ((data[0] << 8) + flg) % 0x1F
    out = [b"\x89PNG\r\n\x1a\n", chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))]
    out += [chunk(b"IDAT", data[i:i + 8192]) for i in range(0, len(data), 8192)]
    out.append(chunk(b"IEND", b""))
    return b"".join(out)


def write_atomically(path, data):
    """A temporary file in the same folder, fsync, rename: never half a file."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".gray-scott-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default=None)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--steps", type=int, default=10000)
    ap.add_argument("--out", default="gray-scott.png")
    ap.add_argument("--inject-faults", default=None)
    ap.add_argument("--isolate", action="store_true")
    ap.add_argument("--language", default=None, choices=sorted(EXT))
    a = ap.parse_args(argv)
    if not 16 <= a.size <= 16384 or a.steps < 1:
        ap.error("--size must be 16 to 16384 and --steps at least 1")
    isolate = {"device": a.device} if a.isolate else None
    device = None if a.isolate else mc.Device(a.device)
    field, stats = simulate(device, a.size, a.steps, language=a.language, inject_faults=a.inject_faults,
                            isolate=isolate)
    write_atomically(a.out, png_bytes(colour(field[..., 1])))
    print(f"gray-scott {a.size}x{a.size}: {stats.iterations} steps, {stats.chunks} chunks, "
          f"{stats.recoveries} recoveries, {stats.elapsed_ms:.0f} ms -> {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
