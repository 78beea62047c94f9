import threading

import numpy as np
import pytest

import metal_compute as mc

from conftest import cpu_only

N = 256


def _passes(basic):
    return [mc.StreamPass(basic["saxpy"].device.kernel(basic["saxpy"].source, "copy_f32",
                                                        language=basic["saxpy"].language),
                          mc.OUTPUT, mc.INPUT, np.uint32(N), grid=N),
            mc.StreamPass(basic["saxpy"], mc.OUTPUT, mc.INPUT, np.float32(2), np.uint32(N), grid=N)]


def test_producer_and_consumer_of_numpy_blocks(dev, basic):
    blocks = [np.full(N, i, np.float32) for i in range(20)]
    got = []
    with mc.Stream(dev, _passes(basic), item_shape=N, result_shape=N) as s:
        consumer = threading.Thread(target=lambda: got.extend(s.results()))
        consumer.start()
        for i, b in enumerate(blocks):
            s.submit(b, tag=i)
        s.close()
        consumer.join(30)
        stats = s.stats()
    assert [t for t, _ in got] == list(range(20))
    for (t, out), b in zip(got, blocks):
        assert np.array_equal(out, 3 * b)
    assert stats["delivered"] == 20 and stats["slots"] == 3


def test_callback_consumer_and_faults_recover(dev, basic):
    seen = []
    dev.inject_faults("timeout@3,page-fault@5")
    s = mc.Stream(dev, _passes(basic), item_shape=N, result_shape=N,
                  on_result=lambda r: seen.append((r.tag, r.status, r.output.copy(), threading.get_ident())))
    for i in range(8):
        idx, view = s.acquire()
        view[:] = i  # filled in place: no copy
        s.submit_slot(idx, tag=i)
    s.close()
    stats = s.stats()
    s.release()
    assert [t for t, *_ in seen] == list(range(8))
    assert all(st == 0 for _, st, _, _ in seen)
    assert all(np.array_equal(o, np.full(N, 3 * t, np.float32)) for t, _, o, _ in seen)
    assert seen[0][3] != threading.get_ident()
    # Both failed items are replayed; where both were in flight at once
    # (a GPU's lanes) one recovery settles the two.
    assert stats["recoveries"] >= 1 and stats["replays"] >= 2


def test_wrong_block_shape(dev, basic):
    with mc.Stream(dev, _passes(basic), item_shape=N, result_shape=N) as s:
        with pytest.raises(ValueError, match="shape"):
            s.submit(np.zeros(N + 1, np.float32))


def _isolated_passes(lang):
    """The stream's kernels, made on a device of this process only for their
    source and launch shape: the worker builds them again on its own."""
    from conftest import kernel_path
    with mc.Device("cpu") as d:
        saxpy = d.kernel(path=kernel_path("basic", lang), function="saxpy", language=lang)
        copy = d.kernel(path=kernel_path("basic", lang), function="copy_f32", language=lang)
        return [mc.StreamPass(copy, mc.OUTPUT, mc.INPUT, np.uint32(N), grid=N),
                mc.StreamPass(saxpy, mc.OUTPUT, mc.INPUT, np.float32(2), np.uint32(N), grid=N)]


@cpu_only()  # forking after this process used a CUDA or Metal device is refused (docs/ISOLATION.md)
def test_isolated_stream_survives_a_killed_worker(lang):
    blocks = [np.full(N, i, np.float32) for i in range(12)]
    got = []
    with mc.Stream(None, _isolated_passes(lang), item_shape=N, result_shape=N,
                   isolate={"device": "cpu", "deadline_ms": 5000, "inject_faults": "kill@4,page-fault@8"}) as s:
        assert s.isolated
        consumer = threading.Thread(target=lambda: got.extend(s.results()))
        consumer.start()
        for i, b in enumerate(blocks):
            s.submit(b, tag=i)
        s.close()
        consumer.join(60)
        iso = s.isolate_stats()
        stats = s.stats()
    assert [t for t, _ in got] == list(range(12))
    for (t, out), b in zip(got, blocks):
        assert np.array_equal(out, 3 * b)
    assert iso["deaths"] >= 1 and iso["restarts"] >= 1 and iso["workers"] >= 2
    assert iso["device"] is not None and iso["device"].kind == "cpu"
    assert stats["delivered"] == 12


def test_isolated_stream_arguments_are_checked(dev, basic):
    with pytest.raises(ValueError, match="device=None"):
        mc.Stream(dev, _passes(basic), item_shape=N, result_shape=N, isolate=True)
    with pytest.raises(ValueError, match="device is required"):
        mc.Stream(None, _passes(basic), item_shape=N, result_shape=N)
    with pytest.raises(ValueError, match="unknown field"):
        mc.Stream(None, _passes(basic), item_shape=N, result_shape=N, isolate={"devise": "cpu"})
    with mc.Stream(dev, _passes(basic), item_shape=N, result_shape=N) as s:
        with pytest.raises(mc.InvalidArgument):
            s.isolate_stats()  # not an isolated stream
