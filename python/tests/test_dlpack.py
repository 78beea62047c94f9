"""DLPack: host buffers as kDLCPU (NumPy consumes them here), CUDA buffers,
private or shared, as kDLCUDA at their device address. The capsule keeps
the buffer alive until its consumer lets go, and a capsule nobody consumed
frees what it holds."""
import gc

import numpy as np
import pytest

import metal_compute as mc
from metal_compute import _dlpack
from metal_compute._lib import ffi, lib

from conftest import DEVICE

ON_CUDA = DEVICE.split(":")[0] == "cuda"
NOT_CUDA = pytest.mark.skipif(ON_CUDA, reason="NumPy consumes host memory; this device's buffers are CUDA memory")
CUDA = pytest.mark.skipif(not ON_CUDA, reason="kDLCUDA export needs the cuda device (MC_DEVICE=cuda)")


@pytest.mark.parametrize("kind, index, host, unified, want", [
    ("cpu", 0, True, True, (1, 0)),
    ("cpu", 0, False, True, "private storage"),
    ("cuda", 0, True, False, (2, 0)),   # shared: pinned, mapped: still CUDA memory to a consumer
    ("cuda", 1, False, False, (2, 1)),  # private: device memory on the second GPU
    ("metal", 0, True, True, (1, 0)),   # unified memory: the host address is the memory
    ("metal", 0, True, False, "not plain host memory"),
])
def test_device_for_each_kind_of_buffer(kind, index, host, unified, want):
    got = _dlpack.device_for(kind, index, host, unified)
    if isinstance(want, str):
        assert isinstance(got, str) and want in got
    else:
        assert got == want


@NOT_CUDA
def test_numpy_consumes_the_buffer_without_a_copy(dev):
    buf = dev.buffer(np.arange(16, dtype=np.float32))
    before = _dlpack.live_count()
    a = np.from_dlpack(buf)
    assert _dlpack.live_count() == before + 1
    assert a.dtype == np.uint8 and a.shape == (64,)
    assert a.__array_interface__["data"][0] == buf.address
    assert (a.view(np.float32) == np.arange(16)).all()
    a.view(np.float32)[3] = 42  # the same memory both ways
    assert buf.numpy(np.float32)[3] == 42


@NOT_CUDA
def test_the_consumer_keeps_the_buffer_alive_then_lets_go(dev, basic):
    import weakref
    buf = dev.buffer(size=256)
    ref = weakref.ref(buf)
    before = _dlpack.live_count()
    a = np.from_dlpack(buf)
    del buf
    gc.collect()
    assert ref() is not None  # held by the capsule's manager
    a.view(np.uint32)[:] = 1
    del a
    gc.collect()
    assert ref() is None and _dlpack.live_count() == before  # the deleter ran once


@pytest.mark.parametrize("max_version", [None, (1, 0)])
def test_an_unconsumed_capsule_frees_what_it_holds(dev, max_version):
    buf = dev.buffer(size=64)
    before = _dlpack.live_count()
    cap = buf.__dlpack__(max_version=max_version)
    assert _dlpack.live_count() == before + 1
    del cap
    gc.collect()
    assert _dlpack.live_count() == before


@NOT_CUDA
def test_an_old_consumer_gets_the_unversioned_capsule(dev):
    buf = dev.buffer(np.arange(4, dtype=np.uint8))
    cap = buf.__dlpack__()  # no max_version: DLPack 0.x
    assert "dltensor" in repr(cap) and "versioned" not in repr(cap)
    b = buf.__dlpack__(max_version=(1, 2))
    assert "dltensor_versioned" in repr(b)


def test_refusals_say_why(dev):
    buf = dev.buffer(size=64, storage="private")
    if not ON_CUDA and not buf.host_visible:
        with pytest.raises(BufferError, match="private storage"):
            buf.__dlpack_device__()
    shared = dev.buffer(size=64)
    target = shared.__dlpack_device__()
    with pytest.raises(BufferError, match="not"):
        shared.__dlpack__(dl_device=(target[0] + 7, 0))
    with pytest.raises(BufferError, match="copy"):
        shared.__dlpack__(copy=True)
    shared.release()
    with pytest.raises(mc.InvalidState):
        shared.__dlpack__()


@CUDA
@pytest.mark.parametrize("storage", ["shared", "private"])
def test_cuda_buffers_export_device_memory(dev, storage):
    buf = dev.buffer(size=1024, storage=storage)
    assert buf.__dlpack_device__() == (2, dev.info.index)
    cap = buf.__dlpack__()
    m = _dlpack.ffi.cast("DLManagedTensor *", _dlpack._capsule_pointer(id(cap), b"dltensor"))  # unversioned
    addr = ffi.new("uint64_t *")
    assert lib.mc_buffer_get_device_address(buf.handle, addr) == 0
    assert int(_dlpack.ffi.cast("uintptr_t", m.dl_tensor.data)) == addr[0]
    assert m.dl_tensor.device.device_type == 2 and m.dl_tensor.shape[0] == 1024


def _spin_reference(n, iters):
    acc = np.arange(n, dtype=np.uint32)
    for _ in range(iters):
        acc = acc * np.uint32(1664525) + np.uint32(1013904223)
    return acc


@NOT_CUDA
def test_export_waits_for_the_work_that_writes_the_buffer(dev, basic):
    n, iters = 4096, 40000  # tens of milliseconds of device time
    out = dev.buffer(size=4 * n)
    cb = dev.command_buffer("spin")
    cb.dispatch(basic["spin"], out, np.uint32(iters), grid=n)
    cb.commit()
    a = np.from_dlpack(out)  # no stream: the export orders itself after the spin
    assert cb.wait(timeout=0), "the export returned while the command buffer still ran"
    assert (a.view(np.uint32) == _spin_reference(n, iters)).all()


@NOT_CUDA
def test_stream_minus_one_exports_without_waiting(dev, basic):
    n = 4096
    out = dev.buffer(size=4 * n)
    q = dev.queue("held")
    ev = dev.event(0)
    cb = q.command_buffer("held back")
    cb.wait_event(ev, 1)  # cannot finish until the event is signalled
    cb.dispatch(basic["spin"], out, np.uint32(1), grid=n)
    cb.commit()
    cap = out.__dlpack__(stream=-1)  # would wait forever for the queue otherwise
    assert "dltensor" in repr(cap)
    assert not cb.wait(timeout=0)
    ev.signal(1)
    assert cb.wait(timeout=10)


def test_stream_argument_checked(dev):
    buf = dev.buffer(size=64)
    with pytest.raises(TypeError, match="stream"):
        buf.__dlpack__(stream="1")
    if ON_CUDA:
        with pytest.raises(BufferError, match="stream 0"):
            buf.__dlpack__(stream=0)
    else:
        with pytest.raises(BufferError, match="host memory"):
            buf.__dlpack__(stream=3)
