import threading
import time

import numpy as np
import pytest

import metal_compute as mc


def test_several_passes_in_one_command_buffer(dev, basic):
    y = dev.array(np.ones(256, np.float32))
    x = dev.array(np.arange(256, dtype=np.float32))
    with dev.command_buffer("three passes", pass_timestamps=True) as cb:
        cb.dispatch(basic["saxpy"], y, x, 2.0, np.uint32(256), grid=256, label="first")
        with cb.compute_pass("second") as p:
            p.dispatch(basic["saxpy"], y, x, 1.0, np.uint32(256), grid=256)
            p.barrier()
            p.dispatch(basic["saxpy"], y, x, 1.0, np.uint32(256), grid=256)
        cb.fill(dev.buffer(size=64), 0xAB)
    assert cb.state == "completed"
    assert np.array_equal(y, 1 + 4 * np.arange(256, dtype=np.float32))
    passes = cb.passes
    assert [p.label for p in passes[:2]] == ["first", "second"]
    assert all(p.state == "completed" for p in passes)


def test_scalars_by_value(dev, basic):
    y = dev.zeros(8, np.float32)
    x = dev.array(np.ones(8, np.float32))
    basic["saxpy"](y, x, np.float32(0.5), np.uint32(8), grid=8)
    assert (y == 0.5).all()
    with pytest.raises(TypeError, match="cannot pass"):
        basic["saxpy"](y, x, object(), np.uint32(8), grid=8)


def test_launch_shape_errors(dev, basic):
    a = dev.zeros(4, np.uint32)
    with pytest.raises(TypeError):
        basic["add_one"](a, np.uint32(4))
    with pytest.raises(ValueError):
        basic["add_one"](a, np.uint32(4), grid=0)
    with pytest.raises(mc.MetalComputeError):
        basic["add_one"](a, np.uint32(4), grid=4, group=100000)


def test_events_signal_wait_and_notify(dev, basic):
    e = dev.event(0)
    seen = []
    done = threading.Event()

    def on_value(v):  # a runtime thread, back in Python
        seen.append((v, threading.get_ident()))
        done.set()

    e.notify(2, on_value)
    a = dev.zeros(4, np.uint32)
    cb = dev.command_buffer("signals")
    cb.dispatch(basic["add_one"], a, np.uint32(4), grid=4)
    cb.signal_event(e, 2)
    cb.commit()
    assert e.wait(2, timeout=10)
    assert done.wait(10)
    assert seen[0][0] >= 2 and seen[0][1] != threading.get_ident()
    assert e.value == 2
    assert not e.wait(5, timeout=0.01)
    with pytest.raises(mc.MetalComputeError):
        e.signal(1)  # values only move forward


def test_on_completed_runs_once_on_a_runtime_thread(dev, basic):
    calls = []
    cb = dev.command_buffer()
    cb.dispatch(basic["empty"], grid=1)
    cb.on_completed(lambda c: calls.append((c.state, threading.get_ident())))
    cb.commit()
    cb.wait()
    for _ in range(100):
        if calls:
            break
        time.sleep(0.01)
    assert len(calls) == 1 and calls[0][1] != threading.get_ident()


def test_exception_in_a_callback_is_raised_by_the_next_wait(dev, basic):
    cb = dev.command_buffer()
    cb.dispatch(basic["empty"], grid=1)

    def boom(c):
        raise RuntimeError("from the callback")

    cb.on_completed(boom)
    cb.commit()
    # The callback runs on a runtime thread after completion; the first
    # wait after it has run raises its exception.
    deadline = time.monotonic() + 10
    with pytest.raises(RuntimeError, match="from the callback"):
        while time.monotonic() < deadline:
            cb.wait()
            time.sleep(0.01)


def test_gil_is_released_while_waiting(dev, basic):
    out = dev.zeros(4096, np.uint32)
    counter = [0]
    stop = threading.Event()

    def count():
        while not stop.is_set():
            counter[0] += 1

    t = threading.Thread(target=count)
    t.start()
    try:
        start = counter[0]
        t0 = time.perf_counter()
        basic["spin"](out, np.uint32(50000), grid=4096)  # about 0.1 s of device time
        elapsed = time.perf_counter() - t0
        progressed = counter[0] - start
    finally:
        stop.set()
        t.join()
    assert elapsed > 0.005
    assert progressed > 100, "another Python thread ran while the dispatch was waited for"


def test_bound_launch_runs_and_recovers_after_a_fault(dev, basic):
    a = dev.zeros(32, np.uint32)
    run = basic["add_one"].bind(a, np.uint32(32), grid=32)
    run()
    run()
    assert (a == 2).all()
    dev.inject_faults("timeout@1")
    with pytest.raises(mc.Timeout) as e:
        run()
    assert e.value.pass_states == [("add_one", "faulted")]
    run()  # a new queue replaces the stopped one
    assert (a == 3).all()
    with pytest.raises(TypeError):
        basic["add_one"].bind(np.zeros(4, np.uint32), np.uint32(4), grid=4)


def test_a_plain_call_returns_the_finished_command_buffer_and_raises_its_fault(dev, basic):
    a = dev.zeros(32, np.uint32)
    cb = basic["add_one"](a, np.uint32(32), grid=32)
    assert cb.state == "completed" and cb.status[0] == 0
    assert [(p.label, p.state) for p in cb.passes] == [("add_one", "completed")]
    dev.inject_faults("page-fault@1")
    with pytest.raises(mc.PageFault) as e:
        basic["add_one"](a, np.uint32(32), grid=32)
    assert e.value.pass_states == [("add_one", "faulted")]
    # The queue the fault stopped is replaced by the next call (F687), and
    # by a bound launch on it too.
    run = basic["add_one"].bind(a, np.uint32(32), grid=32)
    dev.inject_faults("timeout@1")
    with pytest.raises(mc.Timeout) as e:
        run()
    assert e.value.pass_states == [("add_one", "faulted")]
    run()
    basic["add_one"](a, np.uint32(32), grid=32)
    assert (a == 3).all()


def test_plain_call_arguments_are_checked(dev, basic):
    with pytest.raises(TypeError, match="from_array"):
        basic["add_one"](np.zeros(4, np.uint32), np.uint32(4), grid=4)
    with pytest.raises(TypeError, match="cannot pass a list"):
        basic["add_one"]([1, 2], np.uint32(4), grid=4)
    with pytest.raises(ValueError, match="strided"):
        basic["add_one"](dev.zeros(8, np.uint32)[::2], np.uint32(4), grid=4)
    with pytest.raises(ValueError, match="bytes by value"):
        basic["add_one"](dev.zeros(8, np.uint32), b"x" * 5000, grid=4)
    with pytest.raises(TypeError, match="exactly one of grid"):
        basic["add_one"](dev.zeros(8, np.uint32), np.uint32(8))
    # A grid given as a list (not hashable) still works, uncached.
    a = dev.zeros(8, np.uint32)
    basic["add_one"](a, np.uint32(8), grid=[8])
    assert (a == 1).all()
