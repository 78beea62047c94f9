"""Buffer.from_array / device.buffer(a, copy=False): a NumPy array becomes a
buffer with no copy (mc_buffer_create_from_host). The array lives while the
buffer does, however the Python objects go; what cannot be wrapped is
refused with the reason."""
import gc
import sys
import weakref

import numpy as np
import pytest

import metal_compute as mc
from metal_compute import _core

from conftest import DEVICE


def _aligned(n, dtype=np.uint32, align=65536):
    """n items at an address that meets every device's rule (Metal's pages
    too; the size is the caller's choice)."""
    dtype = np.dtype(dtype)
    nbytes = n * dtype.itemsize
    raw = np.zeros(nbytes + align, np.uint8)
    start = (-raw.__array_interface__["data"][0]) % align
    return raw[start:start + nbytes].view(dtype)


def _eventually(cond):
    """The release may run on the device's notifier thread: wait for it."""
    import time
    for _ in range(500):
        if cond():
            return True
        time.sleep(0.01)
    return cond()


def _live_wrapped():
    with _core._host_keep_lock:
        return len(_core._host_keep)


def test_kernels_write_the_array_itself(dev, basic):
    a = _aligned(4096)
    a[:] = np.arange(a.size, dtype=np.uint32)
    buf = mc.Buffer.from_array(dev, a, label="mine")
    assert buf.wrapped and buf.address == a.__array_interface__["data"][0] and buf.size == a.nbytes
    basic["add_one"](buf, np.uint32(a.size), grid=a.size)
    assert (a == np.arange(a.size) + 1).all()  # the caller's array, no copy back
    # The array itself as an argument finds the buffer over its memory, a slice at its offset.
    basic["add_one"](a[100:], np.uint32(a.size - 100), grid=a.size - 100)
    assert a[99] == 100 and a[100] == 102
    # And the buffer's own view is the same memory.
    assert buf.numpy(np.uint32).__array_interface__["data"][0] == buf.address


def test_device_buffer_copy_false_is_the_same_call(dev):
    a = _aligned(64, np.float32)
    buf = dev.buffer(a, copy=False)
    assert buf.wrapped and buf.address == a.__array_interface__["data"][0]
    with pytest.raises(ValueError, match="copy=False"):
        dev.buffer(a, copy=False, storage="private")
    with pytest.raises(ValueError, match="copy=False"):
        dev.buffer(size=64, copy=False)


def test_the_array_lives_while_the_buffer_does(dev, basic):
    a = _aligned(1024)
    ref = weakref.ref(a.base if a.base is not None else a)
    before = _live_wrapped()
    buf = mc.Buffer.from_array(dev, a)
    assert _live_wrapped() == before + 1
    view = buf.numpy(np.uint32)
    del a
    gc.collect()
    assert ref() is not None  # the buffer keeps it
    del buf
    gc.collect()
    assert ref() is not None  # the view keeps the buffer
    view[:] = 3
    basic["add_one"](view, np.uint32(1024), grid=1024)
    assert (view == 4).all()
    del view
    gc.collect()
    # The release callback ran (it may come on the notifier thread).
    assert _eventually(lambda: ref() is None)
    assert _live_wrapped() == before


def test_passing_the_wrapped_array_itself_does_not_pin_it(dev, basic):
    a = _aligned(512)
    ref = weakref.ref(a.base if a.base is not None else a)
    buf = mc.Buffer.from_array(dev, a)
    basic["add_one"](a, np.uint32(512), grid=512)  # the array, not the buffer
    basic["add_one"](a, np.uint32(512), grid=512)
    assert (a == 2).all()
    del a, buf
    gc.collect()
    assert _eventually(lambda: ref() is None)


def test_a_committed_command_buffer_keeps_the_array(dev, basic):
    a = _aligned(256)
    ref = weakref.ref(a.base if a.base is not None else a)
    buf = mc.Buffer.from_array(dev, a)
    with dev.command_buffer() as cb:
        cb.dispatch(basic["add_one"], buf, np.uint32(256), grid=256)
        buf.release()
        del a, buf
        gc.collect()
        assert ref() is not None  # the recording holds the buffer, the buffer the array
    assert ref() is not None
    del cb
    gc.collect()
    assert _eventually(lambda: ref() is None)


@pytest.mark.parametrize("make, match", [
    (lambda: _aligned(64)[::2], "not C-contiguous"),
    (lambda: np.asfortranarray(np.zeros((4, 4), np.float32)), "not C-contiguous"),
    (lambda: np.frombuffer(b"x" * 64, np.uint8), "read-only"),
    (lambda: np.zeros(0, np.uint8), "empty"),
    (lambda: _aligned(64, np.uint8)[4:20], "MC_HOST_BUFFER_ALIGNMENT"),
])
def test_what_cannot_be_wrapped_is_refused_with_the_reason(dev, make, match):
    before = _live_wrapped()
    a = make()
    with pytest.raises(mc.InvalidArgument, match=match):
        mc.Buffer.from_array(dev, a)
    assert _live_wrapped() == before  # nothing kept for a refused call


def test_not_an_array_is_a_type_error(dev):
    with pytest.raises(TypeError, match="NumPy array"):
        mc.Buffer.from_array(dev, [1, 2, 3])


def test_bytearray_wraps_too(dev, basic):
    raw = _aligned(64, np.uint8)
    buf = mc.Buffer.from_array(dev, memoryview(raw))
    assert buf.address == raw.__array_interface__["data"][0]


@pytest.mark.skipif(DEVICE.split(":")[0] != "metal", reason="Metal's page rule: needs the metal device")
def test_metal_refuses_memory_that_is_not_whole_pages(dev):
    a = _aligned(65536, np.uint8)
    with pytest.raises(mc.InvalidArgument, match="page"):
        mc.Buffer.from_array(dev, a[16:4096 + 16])  # 16-byte aligned, not whole pages


def test_refcount_of_the_array_is_back_after_release(dev):
    a = _aligned(128)
    n = sys.getrefcount(a)
    buf = mc.Buffer.from_array(dev, a)
    assert sys.getrefcount(a) == n + 1
    buf.release()
    assert _eventually(lambda: sys.getrefcount(a) == n)
