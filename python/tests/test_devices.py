import pytest

import metal_compute as mc
from conftest import DEVICE


def test_list_has_the_cpu_device():
    infos = mc.devices()
    assert any(i.kind == "cpu" for i in infos)
    cpu = [i for i in infos if i.kind == "cpu"][0]
    assert cpu.max_threads_per_threadgroup >= 1 and cpu.name


def test_open_by_name_and_info(dev):
    info = dev.info
    assert info.spec.split(":")[0] == DEVICE.split(":")[0]
    assert info.max_threads_per_threadgroup > 0
    assert isinstance(info.as_dict()["unified_memory"], bool)
    assert DEVICE.split(":")[0] in repr(dev)


def test_time_limit_option():
    with mc.Device("cpu", time_limit_ms=1234) as d:
        assert d.info.execution_time_limit_ns == 1234 * 1_000_000


@pytest.mark.parametrize("name", ["gpu", "cpu:x", "cuda:99"])
def test_bad_name_raises_with_the_cause(name):
    with pytest.raises(mc.MetalComputeError) as e:
        mc.Device(name)
    assert e.value.status in (mc.InvalidArgument.status, mc.NotFound.status, mc.Unsupported.status)
    assert e.value.message


def test_bad_argument_types():
    with pytest.raises(TypeError):
        mc.Device(3)
    with pytest.raises(TypeError):
        mc.Device("cpu", threads=-1)


def test_closed_device_refuses_work(dev):
    dev.close()
    with pytest.raises(mc.InvalidState):
        dev.buffer(size=16)
