import numpy as np
import pytest

import metal_compute as mc

KINDS = [("timeout", mc.Timeout), ("page-fault", mc.PageFault), ("internal", mc.InternalError),
         ("access-revoked", mc.AccessRevoked), ("device-lost", mc.DeviceLost)]


def test_one_class_per_status_under_one_base():
    for value in (1, 2, 3, 4, 7, 8, 9, 11, 20, 100, 101, 102, 103, 104, 105, 106, 107, 108, 109, 110, 111):
        cls = mc.error_class(value)
        assert cls is not mc.MetalComputeError and issubclass(cls, mc.MetalComputeError)
        e = cls("detail")
        assert e.status == value and e.status_name.startswith("MC_ERR_") and e.message == "detail"
    assert mc.error_class(12345) is mc.MetalComputeError


@pytest.mark.parametrize("word,cls", KINDS)
def test_injected_faults_raise_the_right_class_with_pass_states(word, cls, basic):
    dev = basic["add_one"].device
    a = dev.zeros(64, np.uint32)
    dev.inject_faults(f"{word}@1")
    with pytest.raises(cls) as e:
        with dev.command_buffer("faulty") as cb:
            for i in range(3):
                cb.dispatch(basic["add_one"], a, np.uint32(64), grid=64, label=f"p{i}")
    err = e.value
    assert err.status == cls.status and err.is_device_error and err.message
    states = dict(err.pass_states)
    assert states["p0"] == "completed" and states["p1"] == "faulted" and states["p2"] == "pending"
    assert (a == 1).all()  # the pass before the fault ran, once

    # Recovery from Python: a new queue (the device's default queue is
    # replaced), or a new device after a loss.
    if cls is mc.DeviceLost:
        with pytest.raises(mc.DeviceLost):
            dev.check()
        dev = mc.Device(dev.info.spec)
        k = dev.kernel(basic["add_one"].source, "add_one", language=basic["add_one"].language)
        b = dev.zeros(64, np.uint32)
        k(b, np.uint32(64), grid=64)
        assert (b == 1).all()
    else:
        # Access revoked: back off until the device takes work again (the
        # runner's way); the other faults: at once, on a new queue.
        import time
        deadline = time.monotonic() + 10
        while True:
            try:
                basic["add_one"](a, np.uint32(64), grid=64)
                break
            except mc.AccessRevoked:
                assert cls is mc.AccessRevoked and time.monotonic() < deadline
                time.sleep(0.2)
        assert (a == 2).all()


def test_bad_fault_spec(dev):
    with pytest.raises(mc.InvalidArgument):
        dev.inject_faults("nonsense@x")
