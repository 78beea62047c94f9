import gc
import resource
import tracemalloc

import numpy as np


def _rss_kib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() // 1024


def test_no_leak_over_10000_dispatches(dev, basic):
    a = dev.zeros(64, np.uint32)
    k = basic["add_one"]
    n = np.uint32(64)
    for _ in range(500):  # warm up: caches, pools, free lists
        k(a, n, grid=64)
    gc.collect()
    tracemalloc.start()
    snap0 = tracemalloc.take_snapshot()
    rss0 = _rss_kib()
    for _ in range(10_000):
        k(a, n, grid=64)
    gc.collect()
    snap1 = tracemalloc.take_snapshot()
    rss1 = _rss_kib()
    tracemalloc.stop()
    grown = sum(s.size_diff for s in snap1.compare_to(snap0, "filename"))
    assert (a == 10_500).all()
    assert grown < 256 * 1024, f"Python heap grew {grown} bytes over 10,000 dispatches"
    assert rss1 - rss0 < 8 * 1024, f"RSS grew {rss1 - rss0} KiB over 10,000 dispatches"
