import threading

import numpy as np
import pytest

import metal_compute as mc

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
    assert stats["recoveries"] >= 2 and stats["replays"] >= 2


def test_wrong_block_shape(dev, basic):
    with mc.Stream(dev, _passes(basic), item_shape=N, result_shape=N) as s:
        with pytest.raises(ValueError, match="shape"):
            s.submit(np.zeros(N + 1, np.float32))
