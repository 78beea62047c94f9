import _thread
import threading

import numpy as np
import pytest

import gray_scott
import metal_compute as mc
from conftest import DEVICE, cpu_only

SIZE, STEPS = 32, 120


@pytest.fixture(scope="module")
def reference(lang):
    d = mc.Device(DEVICE)
    field, stats = gray_scott.simulate(d, SIZE, STEPS, language=lang)
    assert stats.iterations == STEPS and stats.recoveries == 0
    return field


def test_runs_n_iterations_with_progress(dev, lang, reference):
    seen = []
    field, stats = gray_scott.simulate(dev, SIZE, STEPS, language=lang, progress=seen.append, budget_ms=0.5)
    assert np.array_equal(field, reference)
    assert not np.array_equal(field, gray_scott.seed(SIZE))  # it did work
    assert stats.chunks >= 2 and seen and seen[-1].done and seen[-1].iterations == STEPS
    assert all(b.iterations >= a.iterations for a, b in zip(seen, seen[1:]))


def test_faults_injected_from_python_recover_bit_identically(dev, lang, reference):
    # One chunk in flight: with more, a fault scheduled on a chunk committed
    # behind a failing one never fires (that chunk completes as a victim,
    # MC_ERR_PRIOR_ERROR, without running), and whether it was committed
    # before the failure showed is a matter of timing.
    field, stats = gray_scott.simulate(dev, SIZE, STEPS, language=lang, budget_ms=0.5, in_flight=1,
                                       inject_faults="timeout@2,page-fault@4,device-lost@6")
    assert stats.recoveries >= 2 and stats.devices_lost == 1 and stats.device_reopens == 1
    assert np.array_equal(field, reference)


def test_exhausted_recoveries_raise_the_cause(dev, lang):
    k = dev.kernel(path=gray_scott.kernel_path(lang), function="gray_scott_step")
    f0 = gray_scott.seed(SIZE)
    dev.inject_faults(",".join(f"page-fault@{i}" for i in range(2, 12)))
    with mc.Runner(dev, k, state=[f0, f0], args=[mc.state(0), mc.state(1), None, gray_scott.params(SIZE)],
                   iterations=STEPS, groups=(2, 2), group=(16, 16), iteration_arg=2, budget_ms=0.5,
                   max_recoveries=2) as r:
        with pytest.raises(mc.PageFault) as e:
            r.run()
        assert "page fault" in e.value.message.lower() or e.value.message


def test_keyboard_interrupt_cancels_cleanly(dev, lang):
    k = dev.kernel(path=gray_scott.kernel_path(lang), function="gray_scott_step")
    f0 = gray_scott.seed(64)
    calls = []

    def progress(p):
        calls.append(p.iterations)
        if len(calls) == 2:
            _thread.interrupt_main()  # as Ctrl-C would

    r = mc.Runner(dev, k, state=[f0, f0], args=[mc.state(0), mc.state(1), None, gray_scott.params(64)],
                  iterations=10_000_000, groups=(4, 4), group=(16, 16), iteration_arg=2,
                  progress=progress, progress_interval_ms=10)
    with pytest.raises(KeyboardInterrupt):
        r.run()
    st = r.stats()
    # The run stopped promptly and cleanly; the runner and device stay usable.
    assert st.cancelled and 0 < st.dispatches < 10_000_000 and st.elapsed_ms < 60_000
    assert r.last_progress is not None and r.last_progress.iterations < 10_000_000
    r.close()
    field, _ = gray_scott.simulate(dev, 16, 10, language=lang)
    assert field.shape == (16, 16, 2)


def test_cancel_from_another_thread_raises_cancelled(dev, lang):
    k = dev.kernel(path=gray_scott.kernel_path(lang), function="gray_scott_step")
    f0 = gray_scott.seed(64)
    r = mc.Runner(dev, k, state=[f0, f0], args=[mc.state(0), mc.state(1), None, gray_scott.params(64)],
                  iterations=10_000_000, groups=(4, 4), group=(16, 16), iteration_arg=2)
    threading.Timer(0.2, r.cancel).start()
    with pytest.raises(mc.Cancelled):
        r.run()
    with pytest.raises(mc.InvalidArgument):
        r.isolate_stats()  # only an isolated runner has a worker to report on
    r.close()


def test_progress_exception_stops_the_run_and_is_raised(dev, lang):
    def progress(p):
        raise ValueError("stop here")

    with pytest.raises(ValueError, match="stop here"):
        gray_scott.simulate(dev, SIZE, 100_000, language=lang, progress=progress)


def test_bad_runner_arguments(dev, basic):
    with pytest.raises(ValueError):
        mc.Runner(dev, basic["add_one"], state=[], args=[], iterations=1, grid=1)
    with pytest.raises(ValueError, match="runner binds"):
        mc.Runner(dev, basic["add_one"], state=[np.zeros(4)], args=[mc.state(0), b"x"], iterations=1, grid=1,
                  iteration_arg=1)
    with pytest.raises(ValueError, match="state"):
        mc.Runner(dev, basic["add_one"], state=[np.zeros(4)], args=[mc.state(3)], iterations=1, grid=1)


@cpu_only()
def test_isolated_worker_survives_a_killed_worker(lang, reference):
    field, stats = gray_scott.simulate(None, SIZE, STEPS, language=lang, budget_ms=0.5,
                                       isolate={"device": "cpu", "deadline_ms": 5000},
                                       inject_faults="kill@3,page-fault@5")
    assert stats.worker_restarts >= 1
    assert np.array_equal(field, reference)
