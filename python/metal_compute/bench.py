"""python -m metal_compute.bench: what the Python layer costs.

 - round trip of an empty dispatch from Python (Kernel.__call__, and a
   bound Launch) against the C round trip (`metal-compute bench --only
   round-trip`, when the command-line program is found: --cli or $MC_CLI);
 - the same with four arguments (two arrays, two scalars: saxpy on 64
   elements, MSL only), so the cost of packing arguments per call shows;
 - a 1 GiB buffer viewed as a NumPy array: the time and the RSS it adds
   (no copy: neither grows with the size until the pages are touched);
 - a 1 GiB NumPy array made into a buffer (Buffer.from_array): the same;
 - py-metal-compute on the same kernel: it needs macOS and Metal, so on
   any other system the row says so.
Prints a table, or JSON with --json.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

from . import DEFAULT_LANGUAGE, Buffer, Device

SAXPY_MSL = """kernel void saxpy(device float *y [[buffer(0)]], device const float *x [[buffer(1)]],
                  constant float &a [[buffer(2)]], constant uint &n [[buffer(3)]],
                  uint i [[thread_position_in_grid]]) { if (i < n) y[i] = a * x[i] + y[i]; }
"""

EMPTY = {"msl": "kernel void empty() {}\n",
         "c": "#include <mc/mc_cpu_kernel.h>\nMC_KERNEL(empty, 0) { (void)ctx; }\n",
         "cuda": 'extern "C" __global__ void empty() {}\n'}


def _rss_kib():
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024
    except OSError:
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _median_us(fn, reps):
    for _ in range(min(200, reps)):
        fn()
    t = []
    for _ in range(reps):
        t0 = time.perf_counter_ns()
        fn()
        t.append(time.perf_counter_ns() - t0)
    return statistics.median(t) / 1e3


def c_round_trip(cli, device):
    if not cli:
        return None
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "rt.json")
        args = [cli, "bench", "--only", "round-trip", "--quick", "--json", out]
        if device:
            args += ["--device", device]
        subprocess.run(args, check=True, capture_output=True)
        with open(out) as f:
            rows = json.load(f)["benchmarks"]
    return next(r["ours"] for r in rows if r["metric"].endswith("median"))


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m metal_compute.bench", description=__doc__.splitlines()[0])
    ap.add_argument("--device", default=None)
    ap.add_argument("--language", default=DEFAULT_LANGUAGE, choices=sorted(EMPTY))
    ap.add_argument("--reps", type=int, default=2000)
    ap.add_argument("--gib", type=float, default=1.0, help="size of the viewed buffer")
    ap.add_argument("--cli", default=os.environ.get("MC_CLI") or shutil.which("metal-compute"))
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    if a.reps < 10 or a.gib <= 0:
        ap.error("--reps must be at least 10 and --gib above 0")
    dev = Device(a.device)
    k = dev.kernel(EMPTY[a.language], "empty", language=a.language)
    res = {"device": dev.info.name, "language": a.language, "reps": a.reps}
    res["py_call_us"] = _median_us(lambda: k(grid=1), a.reps)
    launch = k.bind(grid=1)
    res["py_launch_us"] = _median_us(launch, a.reps)
    res["py_call_args_us"] = res["py_launch_args_us"] = None
    if a.language == "msl":
        sx = dev.kernel(SAXPY_MSL, "saxpy", language="msl")
        x, y = dev.zeros(64, np.float32), dev.zeros(64, np.float32)
        alpha, n = np.float32(0), np.uint32(64)
        res["py_call_args_us"] = _median_us(lambda: sx(y, x, alpha, n, grid=64), a.reps)
        res["py_launch_args_us"] = _median_us(sx.bind(y, x, alpha, n, grid=64), a.reps)
    res["c_us"] = c_round_trip(a.cli, a.device)
    if res["c_us"]:
        best = min(res["py_call_us"], res["py_launch_us"])
        res["ratio"] = best / res["c_us"]
        res["extra_us"] = best - res["c_us"]
        res["goal_met"] = res["ratio"] <= 2 or res["extra_us"] <= 10

    size = int(a.gib * (1 << 30))
    dev.buffer(size=64).numpy(np.float32)  # first-call costs out of the figure
    t0 = time.perf_counter()
    buf = dev.buffer(size=size)
    tc = time.perf_counter()
    # RSS from after the buffer exists: a device may make its memory resident
    # at creation (CUDA pins it); what a copy would add shows at the view.
    rss0 = _rss_kib()
    t1 = time.perf_counter()
    view = buf.numpy(np.float32)
    t2 = time.perf_counter()
    rss1 = _rss_kib()
    res.update(buffer_bytes=size, create_ms=(tc - t0) * 1e3, view_us=(t2 - t1) * 1e6,
               rss_added_mib=(rss1 - rss0) / 1024, view_elements=int(view.size),
               same_memory=view.__array_interface__["data"][0] == buf.address)
    del view, buf
    Buffer.from_array(dev, np.zeros(64, np.uint8)).release()  # first-call costs out of the figure
    # Pages touched first: a device that pins them (CUDA) makes untouched ones
    # resident, which is not a copy; a copy would add the size again.
    host = np.ones(size, np.uint8)
    rss0 = _rss_kib()
    t0 = time.perf_counter()
    wrapped = Buffer.from_array(dev, host)
    t1 = time.perf_counter()
    res.update(wrap_us=(t1 - t0) * 1e6, wrap_rss_added_mib=(_rss_kib() - rss0) / 1024,
               wrap_same_memory=wrapped.address == host.__array_interface__["data"][0])
    wrapped.release()
    del wrapped, host
    res["py_metal_compute"] = ("not measured: py-metal-compute needs macOS with Metal"
                               if sys.platform != "darwin" else "not measured by this tool yet")
    if a.json:
        print(json.dumps(res, indent=1))
        return 0
    print(f"device {res['device']} ({a.language}), {a.reps} reps")
    print(f"  empty dispatch round trip, Python Kernel(...)   {res['py_call_us']:8.1f} us (median)")
    print(f"  empty dispatch round trip, Python Launch()      {res['py_launch_us']:8.1f} us (median)")
    if res["py_call_args_us"] is not None:
        print(f"  4 arguments (saxpy, 64 floats), Kernel(...)     {res['py_call_args_us']:8.1f} us (median)")
        print(f"  4 arguments (saxpy, 64 floats), Launch()        {res['py_launch_args_us']:8.1f} us (median)")
    if res["c_us"]:
        print(f"  empty dispatch round trip, C (metal-compute)    {res['c_us']:8.1f} us (median)")
        print(f"  best Python / C: {res['ratio']:.1f}x, {res['extra_us']:+.1f} us "
              f"(goal: at most 2x or 10 us more: {'met' if res['goal_met'] else 'missed'})")
    else:
        print("  C round trip: the command-line program was not found (--cli PATH)")
    print(f"  {size / (1 << 30):.2f} GiB buffer: create {res['create_ms']:.2f} ms, view as array "
          f"{res['view_us']:.1f} us, RSS +{res['rss_added_mib']:.1f} MiB, same memory: {res['same_memory']}")
    print(f"  {size / (1 << 30):.2f} GiB NumPy array as a buffer (from_array): {res['wrap_us']:.1f} us, "
          f"RSS +{res['wrap_rss_added_mib']:.1f} MiB, same memory: {res['wrap_same_memory']}")
    print(f"  py-metal-compute: {res['py_metal_compute']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
