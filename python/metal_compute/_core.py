"""Devices, buffers, kernels, command buffers and events over the C API.

Each class wraps one handle of include/mc/mc.h and releases it when the
object is closed or collected; the names follow the C calls (Device.info is
mc_device_get_info, CommandBuffer.commit is mc_cmdbuf_commit, ...).
"""
import itertools
import os
import struct
import threading
import weakref

import numpy as np

from . import _dlpack, errors
from ._lib import MAX_BYTES_ARG, WAIT_FOREVER, cstr, ffi, lib

_KINDS = {0: "any", 1: "cpu", 2: "cuda", 3: "metal"}
_LANGS = {None: 0, "": 0, "c": 1, "cuda": 2, "msl": 3}
_EXT_LANG = {".c": "c", ".cu": "cuda", ".metal": "msl"}
_PASS_STATES = {0: "unknown", 1: "completed", 2: "affected", 3: "pending", 4: "faulted"}
_CMDBUF_STATES = {0: "not_enqueued", 1: "enqueued", 2: "committed", 3: "scheduled", 4: "completed", 5: "error"}
_CACHE_MODES = {"default": 0, "off": 1, "ro": 2, "rw": 3, "require": 4}

#: The kernel language a kernel is written in when none is named. MSL is
#: the one language every device runs; "c" is the CPU device's native one.
DEFAULT_LANGUAGE = os.environ.get("MC_PY_LANG", "msl")

# Wait slices: a wait returns to Python this often so Ctrl-C is seen.
_SLICE_NS = 50_000_000


def _lang(language):
    if isinstance(language, str):
        language = language.lower()
    if language not in _LANGS:
        raise ValueError(f"unknown kernel language {language!r}: use 'msl', 'c' or 'cuda'")
    return _LANGS[language]


class DeviceInfo:
    """mc_device_info as attributes."""

    __slots__ = ("kind", "index", "name", "identity", "max_threads_per_threadgroup", "threadgroup_memory_size",
                 "simd_width", "compute_units", "unified_memory", "execution_time_limit_ns", "max_buffer_size",
                 "features")

    def __init__(self, c):
        self.kind = _KINDS.get(c.kind, str(c.kind))
        self.index = c.index
        self.name = ffi.string(c.name).decode("utf-8", "replace")
        self.identity = ffi.string(c.identity).decode("utf-8", "replace")
        for f in self.__slots__[4:]:
            setattr(self, f, getattr(c, f))
        self.unified_memory = bool(c.unified_memory)

    @property
    def spec(self):
        """The name that opens this device: "cpu", "cuda:1", ..."""
        return self.kind if self.index == 0 else f"{self.kind}:{self.index}"

    def as_dict(self):
        return {f: getattr(self, f) for f in self.__slots__}

    def __repr__(self):
        return f"DeviceInfo({self.spec!r}, name={self.name!r})"


def devices():
    """mc_device_list: the info of every device present."""
    count = ffi.new("size_t *")
    errors.check(lib.mc_device_list(ffi.NULL, 0, count), "listing devices")
    n = count[0]
    if n == 0:
        return []
    out = ffi.new("mc_device_info[]", n)
    errors.check(lib.mc_device_list(out, n, count), "listing devices")
    return [DeviceInfo(out[i]) for i in range(min(n, count[0]))]


def _wait_sliced(call, timeout):
    """Calls call(ns) in slices until it stops answering WAIT_TIMEOUT or the
    timeout (seconds, None = for ever) passes. The GIL is released inside
    each call; between slices Python runs its signal handlers, so Ctrl-C
    interrupts a long wait."""
    import time
    deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
    while True:
        if deadline is None:
            ns = _SLICE_NS
        else:
            left = deadline - time.monotonic()
            ns = max(0, min(_SLICE_NS, int(left * 1e9)))
        st = call(ns)
        if st != errors.WaitTimeout.status:
            return st
        if deadline is not None and time.monotonic() >= deadline:
            return st


class _Callbacks:
    """Keeps cffi callbacks alive until the runtime has called them once.

    Callbacks run on runtime threads; cffi takes the GIL for them. An
    exception in one cannot go back to C: it is kept here and raised by the
    next call that waits on the object (or reported as unraisable)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._live = {}
        self.pending_errors = []

    def add(self, key, handle):
        with self._lock:
            self._live[key] = handle

    def done(self, key):
        with self._lock:
            self._live.pop(key, None)

    def error(self, exc):
        with self._lock:
            self.pending_errors.append(exc)

    def raise_pending(self):
        with self._lock:
            if not self.pending_errors:
                return
            exc = self.pending_errors.pop(0)
        raise exc


_callbacks = _Callbacks()


class Device:
    """An open device (mc_device_open_name / mc_device_open).

    name: "cpu", "cuda", "cuda:1", "metal", or None for $MC_DEVICE, else the
    best present. time_limit_ms: the CPU device's execution-time limit (0 =
    default, -1 = none). threads: CPU device workers (0 = cores)."""

    def __init__(self, name=None, *, time_limit_ms=0, threads=0):
        if name is not None and not isinstance(name, str):
            raise TypeError("device name must be a str such as 'cpu', 'cuda:1' or 'metal'")
        if not isinstance(time_limit_ms, int) or not isinstance(threads, int) or threads < 0:
            raise TypeError("time_limit_ms and threads must be ints (threads >= 0)")
        desc = ffi.new("mc_device_desc *")
        errors.check(lib.mc_device_desc_from_name((name or "").encode(), desc), f"device name {name!r}")
        desc.time_limit_ms = time_limit_ms
        desc.threads = threads
        out = ffi.new("mc_device **")
        errors.check(lib.mc_device_open(desc, out), f"opening device {name or '(default)'}")
        self._h = out[0]
        self._queue = None
        self._lock = threading.Lock()
        # Every queue made here, so a DLPack export can wait for the work
        # that may still write the buffer (Buffer.__dlpack__).
        self._queues = weakref.WeakSet()
        self._queues_lock = threading.Lock()  # default_queue makes a Queue under _lock
        self._finalizer = weakref.finalize(self, lib.mc_device_release, self._h)

    @property
    def handle(self):
        if self._h is None:
            raise errors.InvalidState("the device is closed")
        return self._h

    def close(self):
        """Releases the device (objects made on it keep it open until they go)."""
        if self._queue is not None:
            self._queue.close()
            self._queue = None
        self._finalizer()
        self._h = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def info(self):
        out = ffi.new("mc_device_info *")
        errors.check(lib.mc_device_get_info(self.handle, out))
        return DeviceInfo(out[0])

    def __repr__(self):
        return f"<metal_compute.Device {self.info.spec}>" if self._h else "<metal_compute.Device closed>"

    def check(self):
        """mc_device_check: raises DeviceLost once the device is lost."""
        errors.check(lib.mc_device_check(self.handle))

    def inject_faults(self, spec):
        """mc_device_inject_faults: "timeout@1,page-fault@3" makes those command
        buffers (counted from now) fail with that error."""
        if not isinstance(spec, str):
            raise TypeError("spec must be a str like 'timeout@1,device-lost@3'")
        errors.check(lib.mc_device_inject_faults(self.handle, spec.encode()), f"fault spec {spec!r}")

    @property
    def committed_count(self):
        return int(lib.mc_device_committed_count(self.handle))

    # -- buffers --------------------------------------------------------
    def buffer(self, data=None, *, size=None, storage="shared", label=None, copy=True):
        """mc_buffer_create. From `data` (an array or bytes-like: copied in
        once, as initial_data) or of `size` bytes (zeroed). copy=False:
        a buffer over data's own memory, no copy (Buffer.from_array)."""
        return Buffer(self, data=data, size=size, storage=storage, label=label, copy=copy)

    def empty(self, shape, dtype=np.float32, *, label=None):
        """A NumPy array whose memory is a new shared buffer: fill it in place,
        pass it to dispatch, read the results from it; nothing is copied."""
        dtype = np.dtype(dtype)
        n = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        return Buffer(self, size=max(n, 1), label=label).numpy(dtype, shape)

    def zeros(self, shape, dtype=np.float32, *, label=None):
        a = self.empty(shape, dtype, label=label)
        a.fill(0)
        return a

    def array(self, a, *, label=None):
        """A device-backed NumPy array with a's contents: the one copy into
        shared memory; from then on the kernels and NumPy share it."""
        a = np.ascontiguousarray(a)
        out = self.empty(a.shape, a.dtype, label=label)
        out[...] = a
        return out

    # -- kernels --------------------------------------------------------
    def kernel(self, source=None, function=None, *, path=None, language=None, options=None,
               max_threads_per_threadgroup=0):
        """mc_pipeline_create_from_source: a kernel from source text or a file,
        through the pipeline cache (memory, then the on-disk archive). A
        compile error raises CompileError with the compiler's log."""
        return Kernel(self, source=source, function=function, path=path, language=language, options=options,
                      max_threads_per_threadgroup=max_threads_per_threadgroup)

    @property
    def cache_mode(self):
        return cstr(lib.mc_cache_mode_name(lib.mc_cache_get_mode(self.handle)))

    @cache_mode.setter
    def cache_mode(self, mode):
        if mode not in _CACHE_MODES:
            raise ValueError(f"cache mode {mode!r}: one of {sorted(_CACHE_MODES)}")
        errors.check(lib.mc_cache_set_mode(self.handle, _CACHE_MODES[mode]))

    def cache_stats(self):
        """mc_cache_get_stats as a dict."""
        s = ffi.new("mc_cache_stats *")
        errors.check(lib.mc_cache_get_stats(self.handle, s))
        names = ("hits_memory", "hits_disk", "misses", "compiles", "compile_ns", "load_ns", "writes", "rejected",
                 "evictions", "memory_entries", "disk_entries", "disk_bytes", "max_bytes", "disk_enabled")
        return {n: getattr(s, n) for n in names}

    # -- queues and command buffers ---------------------------------------
    def queue(self, label=None):
        """mc_queue_create: a new queue."""
        return Queue(self, label)

    @property
    def default_queue(self):
        """The device's queue for command_buffer(); a queue stopped by a
        failure (F687) is replaced by a new one the next time."""
        with self._lock:
            if self._queue is None or lib.mc_queue_check(self._queue._h) != 0:
                if self._queue is not None:
                    self._queue.close()
                self._queue = Queue(self, "python")
            return self._queue

    def command_buffer(self, label=None, *, pass_timestamps=False):
        """mc_cmdbuf_create on the default queue. As a `with` block it commits
        and waits at the end, raising the command buffer's error."""
        return self.default_queue.command_buffer(label, pass_timestamps=pass_timestamps)

    def dispatch(self, kernel, *args, grid=None, groups=None, group=None, threadgroup_memory=None):
        """One dispatch in its own command buffer, committed and waited for."""
        with self.command_buffer(kernel.function) as cb:
            cb.dispatch(kernel, *args, grid=grid, groups=groups, group=group,
                        threadgroup_memory=threadgroup_memory)
        return cb

    def event(self, value=0):
        """mc_event_create: a timeline event (MTLSharedEvent model)."""
        return Event(self, value)


# Arrays that wrapped buffers (Buffer.from_array) live on, by token: the C
# library runs _host_release once when the buffer dies (after the last
# command buffer that used it), on the thread that dropped the last
# reference or the device's notifier thread; cffi takes the GIL there.
_host_keep = {}
_host_keep_lock = threading.Lock()
_host_tokens = itertools.count(1)
# Wrapped buffers, so an array passed to a kernel finds the buffer over its
# memory (buffer_of) even though NumPy's base chain does not lead there.
_wrapped = weakref.WeakSet()


def _on_host_release(user, pointer):
    with _host_keep_lock:
        keep = _host_keep.pop(int(ffi.cast("uintptr_t", user)), None)
    del keep  # the array may be freed here, after the device let go of it


_host_release_cb = ffi.callback("mc_host_release_fn", _on_host_release)


def _wrappable(a):
    """a as a NumPy array over the same memory, or a clear error why it
    cannot become a buffer without a copy."""
    if isinstance(a, (bytearray, memoryview)):
        a = np.frombuffer(a, np.uint8)
    if not isinstance(a, np.ndarray):
        raise TypeError(f"from_array takes a NumPy array (or bytearray/memoryview), not {type(a).__name__}")
    if not a.flags.c_contiguous:
        raise errors.InvalidArgument(
            "from_array: the array is not C-contiguous (a strided view or Fortran order); a buffer is one "
            "contiguous range. np.ascontiguousarray(a) or device.array(a) makes a contiguous copy")
    if not a.flags.writeable:
        raise errors.InvalidArgument(
            "from_array: the array is read-only, and kernels may write a buffer; device.array(a) copies it "
            "into a new buffer")
    if a.nbytes == 0:
        raise errors.InvalidArgument("from_array: the array is empty (0 bytes); a buffer needs at least 1 byte")
    return a


class Buffer:
    """An mc_buffer. Shared storage is host-visible: numpy() views it with
    no copy (the view keeps the buffer alive), as do the buffer protocol
    (Python 3.12+: memoryview(buf); any version: buf.memoryview()) and
    __dlpack__. Private storage is copied explicitly with read()/write().
    Buffer.from_array(device, a) makes a buffer over an existing array's
    memory (mc_buffer_create_from_host), no copy."""

    @classmethod
    def from_array(cls, device, a, *, label=None):
        """A buffer over a's memory, no copy (mc_buffer_create_from_host):
        kernels read and write the array itself. The array is kept alive
        until the buffer dies (after the last command buffer that used it
        finished), even when a and this object are gone. Refused with
        InvalidArgument: a non-contiguous, read-only or empty array, or one
        whose address breaks the device's rule (16-byte alignment
        everywhere; whole pages on Metal; pages pinned twice on CUDA)."""
        return cls(device, data=a, label=label, copy=False)

    def __init__(self, device, *, data=None, size=None, storage="shared", label=None, copy=True):
        if storage not in ("shared", "private"):
            raise ValueError("storage must be 'shared' or 'private'")
        if not copy:
            if data is None or size is not None or storage != "shared":
                raise ValueError("copy=False wraps an array: give data (the array), no size, shared storage")
            self._wrap(device, _wrappable(data), label)
            return
        src = None
        if data is not None:
            if isinstance(data, np.ndarray):
                data = np.ascontiguousarray(data)
            src = memoryview(data).cast("B")
            if size is None:
                size = src.nbytes
            elif size < src.nbytes:
                raise ValueError(f"size {size} is smaller than the data ({src.nbytes} bytes)")
        if size is None or not isinstance(size, (int, np.integer)) or size <= 0:
            raise ValueError("a buffer needs data or a size > 0 (bytes)")
        desc = ffi.new("mc_buffer_desc *")
        desc.size = int(size)
        desc.storage = 0 if storage == "shared" else 1
        label_c = ffi.new("char[]", label.encode()) if label else ffi.NULL
        desc.label = label_c
        keep = None
        if src is not None and src.nbytes == size:
            keep = ffi.from_buffer(src)
            desc.initial_data = keep
        out = ffi.new("mc_buffer **")
        errors.check(lib.mc_buffer_create(device.handle, desc, out), f"creating a {size}-byte buffer")
        self._h = out[0]
        self.device = device
        self.size = int(size)
        self.storage = storage
        self.label = label
        self.wrapped = False
        self._finalizer = weakref.finalize(self, lib.mc_buffer_release, self._h)
        if src is not None and keep is None:
            self.write(src)
        p = lib.mc_buffer_contents(self._h)
        self._ptr = None if p == ffi.NULL else p
        self._addr = None if self._ptr is None else int(ffi.cast("uintptr_t", p))

    def _wrap(self, device, a, label):
        token = next(_host_tokens)
        desc = ffi.new("mc_host_buffer_desc *")
        desc.pointer = ffi.cast("void *", a.__array_interface__["data"][0])
        desc.size = a.nbytes
        label_c = ffi.new("char[]", label.encode()) if label else ffi.NULL
        desc.label = label_c
        desc.release = _host_release_cb
        desc.user = ffi.cast("void *", token)
        out = ffi.new("mc_buffer **")
        with _host_keep_lock:
            _host_keep[token] = a
        st = lib.mc_buffer_create_from_host(device.handle, desc, out)
        if st != 0:
            with _host_keep_lock:  # refused: the release never runs (mc.h)
                _host_keep.pop(token, None)
            errors.check(st, f"a buffer over a {a.nbytes}-byte array")
        self._h = out[0]
        self.device = device
        self.size = int(a.nbytes)
        self.storage = "shared"
        self.label = label
        self.wrapped = True
        self._finalizer = weakref.finalize(self, lib.mc_buffer_release, self._h)
        self._ptr = lib.mc_buffer_contents(self._h)
        self._addr = int(ffi.cast("uintptr_t", self._ptr))
        _wrapped.add(self)

    @property
    def handle(self):
        if self._h is None:
            raise errors.InvalidState("the buffer is released")
        return self._h

    def release(self):
        """Lets go of the buffer now (views made from it keep it alive)."""
        self._finalizer()
        self._h = None

    @property
    def host_visible(self):
        return self._ptr is not None

    @property
    def address(self):
        """The host address of the contents (shared storage), else None."""
        return self._addr

    # NumPy: __array_interface__ hands NumPy the address; NumPy keeps this
    # object as the array's base, so the array keeps the buffer alive.
    @property
    def __array_interface__(self):
        if self._ptr is None:
            raise BufferError(f"buffer {self.label or ''} has private storage: copy it out with read()")
        return {"shape": (self.size,), "typestr": "|u1", "data": (self.address, False), "version": 3}

    def numpy(self, dtype=np.uint8, shape=None, offset=0):
        """A NumPy view of the contents, no copy (shared storage only)."""
        dtype = np.dtype(dtype)
        if offset < 0 or offset > self.size:
            raise ValueError("offset outside the buffer")
        count = (self.size - offset) // dtype.itemsize
        if shape is not None:
            want = int(np.prod(shape, dtype=np.int64))
            if want > count:
                raise ValueError(f"shape {shape} needs {want * dtype.itemsize} bytes; the buffer has {self.size - offset}")
            count = want
        # Through _Contents, not np.asarray(self): on Python 3.12+ NumPy
        # asks the buffer protocol (__buffer__ below) first, which is this
        # method again.
        raw = np.asarray(_Contents(self))
        a = raw[offset:offset + count * dtype.itemsize].view(dtype)
        return a.reshape(shape) if shape is not None else a

    def memoryview(self):
        """A memoryview of the contents (the buffer protocol), no copy."""
        return memoryview(self.numpy())

    def __buffer__(self, flags):  # Python 3.12+: memoryview(buf)
        return self.memoryview()

    def _dlpack_target(self):
        info = self.device.info
        return _dlpack.device_for(info.kind, info.index, self._addr is not None, info.unified_memory)

    def __dlpack_device__(self):
        """(kDLCPU, 0) for host memory; (kDLCUDA, device index) for every
        buffer of a CUDA device, private or shared."""
        target = self._dlpack_target()
        if isinstance(target, str):
            raise BufferError(f"DLPack: {target}")
        return target

    def __dlpack__(self, stream=None, max_version=None, dl_device=None, copy=None):
        """A DLPack capsule over the whole buffer as uint8 (no copy); the
        buffer lives until the consumer lets go. CUDA buffers are exported
        as device memory at mc_buffer_get_device_address.

        Ordering (the DLPack protocol's `stream`): unless the consumer
        passes stream=-1 ("do not synchronise"), the export first waits
        until every queue of this device made from Python is idle, so any
        work that writes the buffer has finished before the consumer's
        stream (or its host code) reads it. For a CUDA buffer `stream` is
        None, -1 or a stream number >= 1 (1 and 2 are CUDA's default
        streams); 0 is refused, as the protocol says. A host buffer takes
        None or -1."""
        target = self.__dlpack_device__()
        self._dlpack_order(stream, target[0])
        if dl_device is not None and tuple(dl_device) != target:
            raise BufferError(f"DLPack: the buffer is on {target}, not {tuple(dl_device)}; copying is not done here")
        if copy:
            raise BufferError("DLPack: copy=True is not supported; export without a copy or use read()")
        if target[0] == _dlpack.KDL_CUDA:
            addr = ffi.new("uint64_t *")
            errors.check(lib.mc_buffer_get_device_address(self.handle, addr), "DLPack: the buffer's device address")
            address = int(addr[0])
        else:
            self.handle  # a released buffer raises
            address = self._addr
        versioned = max_version is not None and tuple(max_version)[0] >= 1
        return _dlpack.export(self, address, self.size, target[0], target[1], versioned)

    def _dlpack_order(self, stream, kind):
        if stream is not None and (isinstance(stream, bool) or not isinstance(stream, int)):
            raise TypeError(f"DLPack: stream must be None or an int, got {type(stream).__name__}")
        if kind == _dlpack.KDL_CUDA and stream == 0:
            raise BufferError("DLPack: stream 0 is ambiguous for CUDA (use 1 for the legacy default stream, "
                              "2 for the per-thread one)")
        if kind != _dlpack.KDL_CUDA and stream not in (None, -1):
            raise BufferError(f"DLPack: the buffer is host memory; stream must be None or -1, got {stream}")
        if stream == -1:
            return
        dev = self.device
        with dev._queues_lock:
            queues = list(dev._queues)
        for q in queues:
            if q._finalizer.alive:
                q.wait_idle()

    def write(self, data, offset=0):
        """mc_buffer_write: copies bytes in (any storage)."""
        src = memoryview(np.ascontiguousarray(data) if isinstance(data, np.ndarray) else data).cast("B")
        if offset < 0 or offset + src.nbytes > self.size:
            raise ValueError(f"write of {src.nbytes} bytes at {offset} does not fit the {self.size}-byte buffer")
        errors.check(lib.mc_buffer_write(self.handle, offset, ffi.from_buffer(src), src.nbytes))

    def read(self, dtype=np.uint8, shape=None, offset=0):
        """mc_buffer_read: a new array with a copy of the contents (any storage)."""
        dtype = np.dtype(dtype)
        count = (self.size - offset) // dtype.itemsize if shape is None else int(np.prod(shape, dtype=np.int64))
        out = np.empty(count, dtype)
        if offset < 0 or offset + out.nbytes > self.size:
            raise ValueError("read outside the buffer")
        errors.check(lib.mc_buffer_read(self.handle, offset, ffi.from_buffer(out), out.nbytes))
        return out.reshape(shape) if shape is not None else out

    def __len__(self):
        return self.size

    def __repr__(self):
        return f"<metal_compute.Buffer {self.size} bytes {self.storage}{' ' + self.label if self.label else ''}>"


class _Contents:
    """A shared buffer's contents as NumPy sees them: only the array
    interface, so NumPy takes the address and keeps this object (and,
    through `base`, the Buffer) as the array's base."""
    __slots__ = ("base",)

    def __init__(self, buf):
        self.base = buf

    @property
    def __array_interface__(self):
        return self.base.__array_interface__


def buffer_of(a):
    """(Buffer, byte offset) for a NumPy array whose memory lies in a
    Buffer (made by Device.empty/array or Buffer.numpy), else None."""
    base = a
    while base is not None and type(base) is not Buffer and not isinstance(base, Buffer):
        # An array made through the buffer protocol has a memoryview base,
        # whose obj is the exporter.
        base = base.obj if isinstance(base, memoryview) else getattr(base, "base", None)
    addr = a.__array_interface__["data"][0]
    if base is None:
        # An array that a Buffer.from_array wraps: its memory, not its base.
        for w in list(_wrapped):
            if w._h is not None and w._addr <= addr and addr + a.nbytes <= w._addr + w.size:
                return w, addr - w._addr
        return None
    if base._addr is None:
        return None
    off = addr - base._addr
    if off < 0 or off + a.nbytes > base.size:
        return None
    return base, off


class Kernel:
    """A compute pipeline (mc_pipeline) made from source through the cache.

    The source, language and function are kept so the runner and streams
    can build the same kernel again on a reopened device."""

    def __init__(self, device, *, source=None, function=None, path=None, language=None, options=None,
                 max_threads_per_threadgroup=0):
        if function is None or not isinstance(function, str):
            raise TypeError("function: the kernel's name (a str) is required")
        if (source is None) == (path is None):
            raise TypeError("give exactly one of source (text) and path (a file)")
        if path is not None:
            path = os.fspath(path)
            try:
                with open(path, "rb") as f:
                    source = f.read().decode("utf-8")
            except OSError as e:
                raise errors.IOFailure(f"cannot read kernel file {path}: {e.strerror}") from e
            if language is None:
                language = _EXT_LANG.get(os.path.splitext(path)[1])
        if language is None:
            language = DEFAULT_LANGUAGE
        self.source = source
        self.function = function
        self.language = language
        self.options = options
        self.max_threads_per_threadgroup = max_threads_per_threadgroup
        self.path = path
        self.device = device
        self._h = make_pipeline(device.handle, self)
        self._finalizer = weakref.finalize(self, lib.mc_pipeline_release, self._h)
        info = ffi.new("mc_pipeline_info *")
        errors.check(lib.mc_pipeline_get_info(self._h, info))
        self.max_total_threads_per_threadgroup = info.max_total_threads_per_threadgroup
        self.simd_width = info.simd_width
        self.argument_count = info.argument_count
        self._shapes = {}
        self._label_c = ffi.new("char[]", function.encode())

    @property
    def handle(self):
        return self._h

    def release(self):
        self._finalizer()
        self._h = None

    def default_group(self, dims):
        """A threadgroup size for a grid of `dims` dimensions: 256 threads in
        1-D, 16x16 in 2-D, 8x8x4 in 3-D (multiples of the SIMD width),
        capped at the pipeline's maximum."""
        cap = max(1, self.max_total_threads_per_threadgroup or 256)
        if dims == 1:
            return (min(256, cap), 1, 1)
        if dims == 2:
            side = 16
            while side * side > cap:
                side //= 2
            return (side, side, 1)
        g = [8, 8, 4]
        while g[0] * g[1] * g[2] > cap:
            i = g.index(max(g))
            g[i] //= 2
        return tuple(g)

    def __call__(self, *args, grid=None, groups=None, group=None, threadgroup_memory=None):
        """Runs the kernel once in a command buffer of its own and waits,
        raising its error; returns the finished CommandBuffer (its passes,
        GPU time). The launch shape is worked out once per (grid, groups,
        group) and the arguments packed without intermediate objects, so
        this costs a few C calls more than a bound Launch (docs/PYTHON.md)."""
        if threadgroup_memory:
            return self.device.dispatch(self, *args, grid=grid, groups=groups, group=group,
                                        threadgroup_memory=threadgroup_memory)
        try:
            shape = self._shapes[grid, groups, group]
        except (KeyError, TypeError):  # TypeError: a list, not hashable
            shape = self._shape(grid, groups, group)
        binds = [_pack_arg(i, a) for i, a in enumerate(args) if a is not None] if args else ()
        return _run_once(self, shape, binds)

    def _shape(self, grid, groups, group):
        """(owner, threadgroups, threads per threadgroup) as mc_size3 values,
        cached when the arguments are hashable."""
        tgs, tg = launch_shape(self, grid, groups, group)
        owner = ffi.new("mc_size3[2]", [tgs, tg])
        shape = (owner, owner[0], owner[1])
        try:
            if len(self._shapes) < 64:
                self._shapes[grid, groups, group] = shape
        except TypeError:
            pass
        return shape

    def bind(self, *args, grid=None, groups=None, group=None, queue=None):
        """A Launch: this kernel with its arguments and shape bound once, run
        by calling it. The argument checks and conversions are done here,
        so each call is only the C calls of one command buffer: the
        cheapest round trip from Python (python -m metal_compute.bench)."""
        return Launch(self, args, grid, groups, group, queue or self.device.default_queue)

    def __repr__(self):
        return f"<metal_compute.Kernel {self.function} ({self.language})>"


# The per-call path of Kernel.__call__: no Python objects but the packed
# arguments, no cffi allocation but the result's out-pointers (one pair
# per thread), and the queue checked only when a commit fails.
_tls = threading.local()


def _out_pointers():
    try:
        return _tls.out
    except AttributeError:
        _tls.out = out = (ffi.new("mc_cmdbuf **"), ffi.new("mc_pass **"))
        return out


# NumPy scalars by exact type -> their bytes through struct, which is many
# times faster than .tobytes() (NumPy 2 makes an array for it) and gives
# the same bytes for every value but a NaN (whose payload it may change).
_SCALAR_PACK = {np.dtype(c).type: struct.Struct("<" + np.dtype(c).char.replace("l", "q").replace("L", "Q")).pack
                for c in "bBhHiIlLqQefd?"}

# Arrays passed before: id -> (weak reference, weak reference to the
# Buffer, offset). Finding an array's buffer and offset (its base chain,
# its address) costs more than the rest of the packing, and a kernel is
# called with the same arrays again and again. An array's memory never
# moves; its entry goes with it. The Buffer is held weakly: an array that
# Buffer.from_array wraps must not keep its own buffer alive.
_array_binds = {}


def _forget_array(ref, key):
    e = _array_binds.get(key)
    if e is not None and e[0] is ref:
        del _array_binds[key]


def _array_binding(a):
    key = id(a)
    e = _array_binds.get(key)
    if e is not None and e[0]() is a:
        buf = e[1]()
        if buf is not None:
            return buf, e[2]
    found = buffer_of(a)
    if found is not None:
        if len(_array_binds) >= 4096:
            _array_binds.clear()
        _array_binds[key] = (weakref.ref(a, lambda r, k=key: _forget_array(r, k)), weakref.ref(found[0]), found[1])
    return found


def _pack_arg(i, a):
    """One argument as (index, buffer handle, offset) or (index, bytes).
    The common kinds first, by exact type: this runs for every argument of
    every call."""
    t = type(a)
    pack = _SCALAR_PACK.get(t)
    if pack is not None and a == a:  # a NaN keeps its exact bits through tobytes below
        return (i, pack(a))
    if t is np.ndarray and a.ndim > 0:
        found = _array_binding(a)
        if found is None:
            raise TypeError(
                f"argument {i}: this NumPy array's memory is not a device buffer; make it with "
                "device.array(a) / device.empty(...) (one copy), wrap it with Buffer.from_array(device, a) "
                "(no copy), or pass a Buffer")
        if not a.flags.c_contiguous:
            raise ValueError(f"argument {i}: a kernel sees contiguous memory; this view is strided")
        return (i, found[0].handle, found[1])
    if t is Buffer:
        return (i, a.handle, 0)
    if t is tuple and len(a) == 2 and isinstance(a[0], Buffer):
        return (i, a[0].handle, int(a[1]))
    if isinstance(a, Buffer):
        return (i, a.handle, 0)
    if isinstance(a, np.ndarray) and a.ndim > 0:
        return _pack_arg(i, np.asarray(a))
    data = scalar_bytes(a)
    if data is None:
        raise TypeError(f"argument {i}: cannot pass a {type(a).__name__} to a kernel")
    if not 0 < len(data) <= MAX_BYTES_ARG:
        raise ValueError(f"argument {i}: {len(data)} bytes by value (1 .. {MAX_BYTES_ARG})")
    return (i, data)


def _run_once(kernel, shape, binds, launch=None, retry=True):
    """Records, commits and waits for one command buffer with one pass;
    raises its error. Returns the finished CommandBuffer, or None for a
    Launch (which runs on its own queue)."""
    dev = kernel.device
    q = dev._queue if launch is None else launch.queue
    if q is None:
        q = dev.default_queue
    cbp, pp = _out_pointers()
    st = lib.mc_cmdbuf_create(q._h, ffi.NULL, cbp)
    if st != 0:
        errors.check(st, "creating a command buffer")
    cb = cbp[0]
    try:
        st = lib.mc_cmdbuf_begin_pass(cb, kernel._label_c, pp)
        if st == 0:
            p = pp[0]
            st = lib.mc_pass_set_pipeline(p, kernel._h)
            for b in binds:
                if st != 0:
                    break
                if len(b) == 3:
                    st = lib.mc_pass_set_buffer(p, b[0], b[1], b[2])
                else:
                    st = lib.mc_pass_set_bytes(p, b[0], b[1], len(b[1]))
            if st == 0:
                st = lib.mc_pass_dispatch(p, shape[1], shape[2])
            if st == 0:
                st = lib.mc_pass_end(p)
        if st != 0:
            errors.check(st, f"recording {kernel.function}")
        st = lib.mc_cmdbuf_commit(cb)
        if st != 0:
            if retry and lib.mc_queue_check(q._h) != 0 and lib.mc_device_check(dev.handle) == 0:
                # A fault stopped the queue (F687): nothing of this one ran;
                # record it again on the replacement queue.
                lib.mc_cmdbuf_release(cb)
                cb = None
                if launch is None:
                    dev.default_queue
                else:
                    launch.queue = dev.default_queue
                return _run_once(kernel, shape, binds, launch, retry=False)
            errors.check(st, f"committing {kernel.function}")
        st = lib.mc_cmdbuf_wait(cb, _SLICE_NS)
        while st == 108:  # MC_ERR_WAIT_TIMEOUT: a slice passed; Ctrl-C is seen here
            st = lib.mc_cmdbuf_wait(cb, _SLICE_NS)
        errors.check(st)
        st = lib.mc_cmdbuf_status(cb, ffi.NULL)
        if launch is not None and st == 0:
            _callbacks.raise_pending()
            return None
        # Kernel(...)'s result, or the error of either with every pass's state.
        done = CommandBuffer._finished(q, cb, kernel.function)
        cb = None  # the CommandBuffer releases it
        _callbacks.raise_pending()
        if st != 0:
            done.raise_for_status()
        return done
    finally:
        if cb is not None:
            lib.mc_cmdbuf_release(cb)


class Launch:
    """A bound dispatch (Kernel.bind). Calling it records one command buffer
    with one pass, commits it, waits (GIL released) and raises its error."""

    def __init__(self, kernel, args, grid, groups, group, queue):
        self.kernel, self.queue = kernel, queue
        self._shape = kernel._shape(grid, groups, group)
        # The packed arguments hold buffer handles: keep their owners.
        self._keep = [a for a in args if isinstance(a, (Buffer, np.ndarray, tuple))]
        self._binds = [_pack_arg(i, a) for i, a in enumerate(args) if a is not None]

    def __call__(self):
        _run_once(self.kernel, self._shape, self._binds, self)


def make_pipeline(dev_handle, k):
    """mc_pipeline_create_from_source for a Kernel's description on a device handle."""
    desc = ffi.new("mc_pipeline_source_desc *")
    desc.language = _lang(k.language)
    src = k.source.encode("utf-8")
    src_c = ffi.new("char[]", src)
    desc.source = src_c
    desc.source_len = len(src)
    opts = ffi.new("char[]", k.options.encode()) if k.options else ffi.NULL
    desc.options = opts
    fn = ffi.new("char[]", k.function.encode())
    desc.function = fn
    desc.max_total_threads_per_threadgroup = k.max_threads_per_threadgroup
    out = ffi.new("mc_pipeline **")
    log = ffi.new("char **")
    st = lib.mc_pipeline_create_from_source(dev_handle, desc, out, log)
    if st != 0:
        text = cstr(log[0]) if log[0] != ffi.NULL else None
        lib.mc_free(log[0])
        msg = cstr(lib.mc_last_error()) or f"kernel {k.function}"
        raise errors.make_error(st, msg, log=text)
    return out[0]


def _size3(v, name):
    if v is None:
        return None
    if isinstance(v, (int, np.integer)):
        v = (int(v),)
    v = tuple(int(x) for x in v)
    if not 1 <= len(v) <= 3 or any(x <= 0 for x in v):
        raise ValueError(f"{name} must be 1 to 3 positive sizes, got {v}")
    return v + (1,) * (3 - len(v)), len(v)


def scalar_bytes(value):
    """The bytes a scalar argument passes by value: Python int -> uint32
    (int32 when negative), float -> float32, bool -> uint32; NumPy scalars
    and 0-d arrays keep their dtype; bytes-like as they are."""
    if isinstance(value, bool):
        return np.uint32(value).tobytes()
    if isinstance(value, int):
        return (np.int32(value) if value < 0 else np.uint32(value)).tobytes()
    if isinstance(value, float):
        return np.float32(value).tobytes()
    if isinstance(value, np.generic):
        return value.tobytes()
    if isinstance(value, np.ndarray) and value.ndim == 0:
        return value.tobytes()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    return None


def launch_shape(kernel, grid, groups, group):
    """(threadgroups, threads per threadgroup) as mc_size3 tuples. grid is
    the number of threads (rounded up to whole groups: kernels check their
    bounds); groups the number of threadgroups."""
    if (grid is None) == (groups is None):
        raise TypeError("give exactly one of grid (threads) and groups (threadgroups)")
    g = _size3(grid if grid is not None else groups, "grid" if grid is not None else "groups")
    dims = g[1]
    tg = _size3(group, "group")
    tg = tg[0] if tg else kernel.default_group(dims)
    if grid is not None:
        n = g[0]
        return tuple(-(-n[i] // tg[i]) for i in range(3)), tg
    return g[0], tg


class Queue:
    """An mc_queue: command buffers run one after another in commit order."""

    def __init__(self, device, label=None):
        self.device = device
        desc = ffi.new("mc_queue_desc *")
        lab = ffi.new("char[]", label.encode()) if label else ffi.NULL
        desc.label = lab
        out = ffi.new("mc_queue **")
        errors.check(lib.mc_queue_create(device.handle, desc, out))
        self._h = out[0]
        self._finalizer = weakref.finalize(self, lib.mc_queue_release, self._h)
        with device._queues_lock:
            device._queues.add(self)

    def close(self):
        self._finalizer()

    def check(self):
        errors.check(lib.mc_queue_check(self._h))

    def command_buffer(self, label=None, *, pass_timestamps=False):
        return CommandBuffer(self, label, pass_timestamps=pass_timestamps)

    def wait_idle(self, timeout=None):
        st = _wait_sliced(lambda ns: lib.mc_queue_wait_idle(self._h, ns), timeout)
        errors.check(st)


class PassInfo(tuple):
    """(label, state) of one pass; state: completed/affected/pending/faulted."""

    __slots__ = ()

    def __new__(cls, label, state, gpu_start_ns=0, gpu_end_ns=0):
        return tuple.__new__(cls, (label, state, gpu_start_ns, gpu_end_ns))

    label = property(lambda s: s[0])
    state = property(lambda s: s[1])
    gpu_start_ns = property(lambda s: s[2])
    gpu_end_ns = property(lambda s: s[3])


class ComputePass:
    """An open compute pass (Metal compute encoder): several dispatches
    sharing bindings; ends with end() or the `with` block."""

    def __init__(self, cb, label):
        self._cb = cb
        out = ffi.new("mc_pass **")
        lab = label.encode() if label else ffi.NULL
        errors.check(lib.mc_cmdbuf_begin_pass(cb._h, lab, out), f"beginning pass {label!r}")
        self._h = out[0]

    def __enter__(self):
        return self

    def __exit__(self, et, ev, tb):
        if self._h is not None:
            self.end()

    def set_kernel(self, kernel):
        errors.check(lib.mc_pass_set_pipeline(self._h, kernel.handle))
        self._cb._keep.append(kernel)

    def set_buffer(self, index, buf, offset=0):
        errors.check(lib.mc_pass_set_buffer(self._h, index, buf.handle, offset), f"argument {index}")
        self._cb._keep.append(buf)

    def set_bytes(self, index, data):
        data = bytes(data)
        if not 0 < len(data) <= MAX_BYTES_ARG:
            raise ValueError(f"argument {index}: {len(data)} bytes by value (1 .. {MAX_BYTES_ARG})")
        errors.check(lib.mc_pass_set_bytes(self._h, index, data, len(data)), f"argument {index}")

    def set_threadgroup_memory(self, index, nbytes):
        errors.check(lib.mc_pass_set_threadgroup_memory(self._h, index, nbytes), f"threadgroup memory {index}")

    def bind(self, index, value):
        """Binds one argument slot: a Buffer, a (Buffer, offset) pair, a
        device-backed NumPy array (its buffer at its offset: no copy), or a
        scalar by value (see scalar_bytes). None leaves the slot unbound."""
        if value is None:
            return
        if isinstance(value, Buffer):
            return self.set_buffer(index, value, 0)
        if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], Buffer):
            return self.set_buffer(index, value[0], int(value[1]))
        if isinstance(value, np.ndarray) and value.ndim > 0:
            found = buffer_of(value)
            if found is None:
                raise TypeError(
                    f"argument {index}: this NumPy array's memory is not a device buffer; make it with "
                    "device.array(a) / device.empty(...) (one copy) or pass a Buffer")
            if not value.flags.c_contiguous:
                raise ValueError(f"argument {index}: a kernel sees contiguous memory; this view is strided")
            return self.set_buffer(index, found[0], found[1])
        data = scalar_bytes(value)
        if data is None:
            raise TypeError(f"argument {index}: cannot pass a {type(value).__name__} to a kernel")
        self.set_bytes(index, data)

    def dispatch(self, kernel, *args, grid=None, groups=None, group=None, threadgroup_memory=None):
        """Sets the kernel, binds args to slots 0, 1, ... and dispatches."""
        tgs, tg = launch_shape(kernel, grid, groups, group)
        self.set_kernel(kernel)
        for i, a in enumerate(args):
            self.bind(i, a)
        for i, n in (threadgroup_memory or {}).items():
            self.set_threadgroup_memory(i, n)
        errors.check(lib.mc_pass_dispatch(self._h, tgs, tg), f"dispatching {kernel.function}")

    def barrier(self):
        errors.check(lib.mc_pass_barrier(self._h))

    def end(self):
        h, self._h = self._h, None
        errors.check(lib.mc_pass_end(h))


class CommandBuffer:
    """An mc_cmdbuf. As a `with` block: commit and wait at the end, raising
    the error (with every pass's state) if it failed."""

    def __init__(self, queue, label=None, *, pass_timestamps=False):
        self.queue = queue
        desc = ffi.new("mc_cmdbuf_desc *")
        self._label_c = ffi.new("char[]", label.encode()) if label else ffi.NULL
        desc.label = self._label_c
        desc.flags = 0x2 if pass_timestamps else 0
        out = ffi.new("mc_cmdbuf **")
        errors.check(lib.mc_cmdbuf_create(queue._h, desc, out), "creating a command buffer")
        self._h = out[0]
        self._finalizer = weakref.finalize(self, lib.mc_cmdbuf_release, self._h)
        self._keep = [queue]  # what the recording must outlive
        self.label = label
        self.committed = False

    @classmethod
    def _finished(cls, queue, h, label):
        """A committed, finished command buffer whose handle the caller gives
        over (Kernel.__call__): no recording state, released by __del__ (a
        finalizer would cost more than the rest of the call)."""
        self = cls.__new__(_FinishedCommandBuffer)
        self.queue = queue
        self._h = h
        self._keep = ()
        self.label = label
        self.committed = True
        return self

    def __enter__(self):
        return self

    def __exit__(self, et, ev, tb):
        if et is not None:
            return False  # recording failed: nothing is committed
        if not self.committed:
            self.commit()
        self.wait()
        self.raise_for_status()
        return False

    def compute_pass(self, label=None):
        """mc_cmdbuf_begin_pass: a pass for several dispatches."""
        return ComputePass(self, label)

    def dispatch(self, kernel, *args, grid=None, groups=None, group=None, threadgroup_memory=None, label=None):
        """One pass with one dispatch (see ComputePass.dispatch)."""
        with self.compute_pass(label or kernel.function) as p:
            p.dispatch(kernel, *args, grid=grid, groups=groups, group=group, threadgroup_memory=threadgroup_memory)

    def copy(self, src, dst, nbytes=None, src_offset=0, dst_offset=0):
        nbytes = min(src.size - src_offset, dst.size - dst_offset) if nbytes is None else nbytes
        errors.check(lib.mc_cmdbuf_copy_buffer(self._h, src.handle, src_offset, dst.handle, dst_offset, nbytes))
        self._keep += [src, dst]

    def fill(self, buf, value=0, offset=0, nbytes=None):
        nbytes = buf.size - offset if nbytes is None else nbytes
        errors.check(lib.mc_cmdbuf_fill_buffer(self._h, buf.handle, offset, nbytes, value))
        self._keep.append(buf)

    def signal_event(self, event, value):
        errors.check(lib.mc_cmdbuf_signal_event(self._h, event._h, value))
        self._keep.append(event)

    def wait_event(self, event, value):
        errors.check(lib.mc_cmdbuf_wait_event(self._h, event._h, value))
        self._keep.append(event)

    def on_completed(self, fn):
        """fn(command_buffer) runs once on a runtime thread when it finishes
        (before commit only). An exception in fn is raised by the next wait."""
        key = object()

        def _cb(user, h):
            try:
                fn(self)
            except BaseException as e:  # cannot go back into C
                _callbacks.error(e)
            finally:
                _callbacks.done(key)

        handle = ffi.callback("mc_cmdbuf_fn", _cb)
        _callbacks.add(key, (handle, self))
        st = lib.mc_cmdbuf_on_completed(self._h, handle, ffi.NULL)
        if st != 0:
            _callbacks.done(key)
            errors.check(st)

    def commit(self):
        """mc_cmdbuf_commit."""
        st = lib.mc_cmdbuf_commit(self._h)
        if st != 0:
            errors.check(st, f"committing {self.label or 'command buffer'}")
        self.committed = True

    def wait(self, timeout=None):
        """mc_cmdbuf_wait (GIL released; Ctrl-C interrupts it). Returns True
        when finished, False on timeout. Does not raise the command
        buffer's own error: see raise_for_status()."""
        st = _wait_sliced(lambda ns: lib.mc_cmdbuf_wait(self._h, ns), timeout)
        if st == errors.WaitTimeout.status:
            return False
        errors.check(st)
        _callbacks.raise_pending()
        return True

    @property
    def state(self):
        return _CMDBUF_STATES.get(lib.mc_cmdbuf_get_state(self._h), "unknown")

    @property
    def status(self):
        """(status, message): 0 after success; the error code after a failure."""
        msg = ffi.new("char **")
        st = lib.mc_cmdbuf_status(self._h, ffi.cast("const char **", msg))
        return st, cstr(msg[0])

    @property
    def passes(self):
        """mc_cmdbuf_get_pass_info for every pass: PassInfo(label, state, ...)."""
        out = []
        info = ffi.new("mc_pass_info *")
        for i in range(lib.mc_cmdbuf_pass_count(self._h)):
            errors.check(lib.mc_cmdbuf_get_pass_info(self._h, i, info))
            out.append(PassInfo(cstr(info.label), _PASS_STATES.get(info.state, "unknown"),
                                info.gpu_start_ns, info.gpu_end_ns))
        return out

    @property
    def gpu_time_ns(self):
        a, b = ffi.new("uint64_t *"), ffi.new("uint64_t *")
        errors.check(lib.mc_cmdbuf_get_gpu_time(self._h, a, b))
        return int(b[0] - a[0])

    def raise_for_status(self):
        st, msg = self.status
        if st != 0:
            raise errors.make_error(st, msg, pass_states=[(p.label, p.state) for p in self.passes])


class _FinishedCommandBuffer(CommandBuffer):
    """What Kernel.__call__ returns: a CommandBuffer that has finished."""

    def __del__(self):
        h, self._h = self._h, None
        if h is not None:
            lib.mc_cmdbuf_release(h)


class Event:
    """A timeline event (mc_event): a 64-bit value that only moves forward."""

    def __init__(self, device, value=0):
        out = ffi.new("mc_event **")
        errors.check(lib.mc_event_create(device.handle, value, out))
        self._h = out[0]
        self._finalizer = weakref.finalize(self, lib.mc_event_release, self._h)

    @property
    def value(self):
        v = ffi.new("uint64_t *")
        errors.check(lib.mc_event_get_value(self._h, v))
        return int(v[0])

    def signal(self, value):
        errors.check(lib.mc_event_signal(self._h, value), f"signalling {value}")

    def wait(self, value, timeout=None):
        """True once the value reached `value`; False on timeout. GIL released."""
        st = _wait_sliced(lambda ns: lib.mc_event_wait(self._h, value, ns), timeout)
        if st == errors.WaitTimeout.status:
            return False
        errors.check(st)
        return True

    def notify(self, value, fn):
        """fn(value_now) runs once on the device's notifier thread when the
        value reaches `value`."""
        key = object()

        def _cb(user, e, v):
            try:
                fn(int(v))
            except BaseException as exc:
                _callbacks.error(exc)
            finally:
                _callbacks.done(key)

        handle = ffi.callback("mc_event_fn", _cb)
        _callbacks.add(key, (handle, self))
        st = lib.mc_event_notify(self._h, value, handle, ffi.NULL)
        if st != 0:
            _callbacks.done(key)
            errors.check(st)
