import gc

import numpy as np
import pytest

import metal_compute as mc


def test_empty_is_a_view_of_the_buffer_no_copy(dev):
    a = dev.empty(1000, np.uint32)
    buf, off = mc.buffer_of(a)
    assert off == 0 and buf.size == 4000
    a[:] = 7
    # The same memory through the buffer: no copy either way.
    assert buf.numpy(np.uint32)[999] == 7
    assert buf.numpy(np.uint32).__array_interface__["data"][0] == a.__array_interface__["data"][0]


def test_arrays_through_the_buffer_protocol_still_bind(dev, basic):
    # NumPy on Python 3.12+ reads a Buffer through its buffer protocol: the
    # array's base is then a memoryview, which must still lead to the Buffer.
    buf = dev.buffer(size=400)
    a = np.asarray(buf.memoryview()).view(np.uint32)
    assert isinstance(a.base, memoryview) or isinstance(a.base.base, memoryview)
    found, off = mc.buffer_of(a[10:])
    assert found is buf and off == 40
    basic["add_one"](a, np.uint32(100), grid=100)
    assert (buf.numpy(np.uint32) == 1).all()
    # A view is made without the buffer protocol, so it cannot recurse into it.
    chain, b = [], buf.numpy()
    while b is not None and not isinstance(b, mc.Buffer):
        chain.append(type(b).__name__)
        b = getattr(b, "base", None)
    assert b is buf and "_Contents" in chain and "memoryview" not in chain


def test_kernel_writes_are_seen_through_the_array(dev, basic):
    a = dev.zeros(100, np.uint32)
    basic["add_one"](a, np.uint32(100), grid=100)
    assert (a == 1).all()
    # A slice binds at its offset.
    basic["add_one"](a[50:], np.uint32(50), grid=50)
    assert (a[:50] == 1).all() and (a[50:] == 2).all()


def test_view_keeps_the_buffer_alive(dev, basic):
    buf = dev.buffer(size=64 * 4)
    view = buf.numpy(np.uint32)
    view[:] = 5
    del buf
    gc.collect()
    assert (view == 5).all()  # the memory is still the buffer's
    basic["add_one"](view, np.uint32(64), grid=64)
    assert (view == 6).all()


def test_buffer_dies_with_its_last_view(dev):
    import weakref
    buf = dev.buffer(size=16)
    ref = weakref.ref(buf)
    view = buf.numpy()
    del buf
    gc.collect()
    assert ref() is not None
    del view
    gc.collect()
    assert ref() is None


def test_buffer_protocol_and_dlpack(dev):
    buf = dev.buffer(np.arange(16, dtype=np.float32))
    mv = buf.memoryview()
    assert mv.nbytes == 64
    if dev.info.kind == "cuda":
        pytest.skip("CUDA buffers export kDLCUDA (test_dlpack.py); NumPy takes host memory only")
    assert buf.__dlpack_device__() == (1, 0)
    arr = np.from_dlpack(buf)
    assert arr.dtype == np.uint8 and arr.nbytes == 64
    assert arr.__array_interface__["data"][0] == buf.address  # no copy
    assert (buf.numpy(np.float32) == np.arange(16)).all()


def test_private_buffers_copy_explicitly(dev):
    src = np.arange(32, dtype=np.int32)
    buf = dev.buffer(src, storage="private")
    if buf.host_visible:
        pytest.skip("this device maps private buffers")
    with pytest.raises(BufferError, match="private"):
        buf.numpy()
    assert (buf.read(np.int32) == src).all()
    buf.write(src[::-1].copy())
    assert (buf.read(np.int32) == src[::-1]).all()


def test_array_copies_once_and_keeps_the_values(dev):
    src = np.random.default_rng(1).random((4, 5)).astype(np.float64)
    a = dev.array(src)
    assert a.shape == (4, 5) and (a == src).all()
    assert mc.buffer_of(a) is not None and mc.buffer_of(src) is None


@pytest.mark.parametrize("kw", [dict(), dict(size=0), dict(size=-1), dict(data=b"abcd", size=2)])
def test_bad_buffer_arguments(dev, kw):
    with pytest.raises(ValueError):
        dev.buffer(**kw)


def test_foreign_array_as_argument_is_refused(dev, basic):
    with pytest.raises(TypeError, match="device.array"):
        basic["add_one"](np.zeros(4, np.uint32), np.uint32(4), grid=4)


def test_reads_and_writes_out_of_range(dev):
    buf = dev.buffer(size=8)
    with pytest.raises(ValueError):
        buf.write(b"123456789")
    with pytest.raises(ValueError):
        buf.numpy(np.uint32, shape=(3,))
