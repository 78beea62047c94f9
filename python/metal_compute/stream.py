"""Streams from Python (mc_stream, include/mc/mc_stream.h, docs/STREAMS.md).

A producer puts NumPy blocks into the triple-buffered stream; the device
runs a chain of passes over each; a consumer gets the results in order, by
pulling them or in a callback on the stream's thread. A slot is given back
only when the command buffer that used it completed (F705).
"""
import numpy as np

from . import errors
from ._core import _lang, _wait_sliced, launch_shape, make_pipeline, scalar_bytes
from ._lib import MAX_BUFFER_ARGS, WAIT_FOREVER, cstr, ffi, lib
from .runner import isolate_desc, isolate_stats_dict


class _Marker:
    def __init__(self, name, kind):
        self.name, self.kind = name, kind

    def __repr__(self):
        return self.name


#: The item's input buffer (its slot's), as an argument of a pass.
INPUT = _Marker("INPUT", 1)
#: The item's output buffer.
OUTPUT = _Marker("OUTPUT", 2)
#: The item's sequence number (uint64, by value).
SEQUENCE = _Marker("SEQUENCE", 5)


class StreamPass:
    """One pass of the chain: a kernel, its arguments (INPUT, OUTPUT,
    SEQUENCE, an array: a constant buffer made by setup, a scalar by value,
    None) and its launch shape (grid threads or groups, group)."""

    def __init__(self, kernel, *args, grid=None, groups=None, group=None, label=None):
        if len(args) > MAX_BUFFER_ARGS:
            raise ValueError(f"at most {MAX_BUFFER_ARGS} arguments")
        _lang(kernel.language)
        self.kernel = kernel
        self.shape = launch_shape(kernel, grid, groups, group)
        self.label = label or kernel.function
        self.args = []
        for i, a in enumerate(args):
            if a is None or isinstance(a, _Marker):
                self.args.append(a)
            elif isinstance(a, np.ndarray) and a.ndim > 0:
                self.args.append(np.ascontiguousarray(a))
            else:
                b = scalar_bytes(a)
                if b is None:
                    raise TypeError(f"argument {i}: cannot pass a {type(a).__name__}")
                self.args.append(b)


class StreamResult:
    """One delivered item: sequence, tag, status (0 = ok), message, attempts
    and output, a NumPy view of the slot's output valid until release()
    (pull mode) or until the callback returns."""

    def __init__(self, stream, c, dtype, shape):
        self._stream = stream
        self._c = c
        self.sequence = int(c.sequence)
        self.tag = int(c.tag)
        self.status = int(c.status)
        self.message = cstr(c.message)
        self.attempts = int(c.attempts)
        self.output = None
        if c.output != ffi.NULL and c.output_size:
            self.output = np.frombuffer(ffi.buffer(c.output, c.output_size), dtype=dtype).reshape(shape)

    def raise_for_status(self):
        if self.status != 0:
            raise errors.make_error(self.status, self.message)

    def release(self):
        """mc_stream_release_result: the slot is free again; output is gone."""
        if self._c is not None and self._stream is not None:
            c, self._c = self._c, None
            self.output = None
            errors.check(lib.mc_stream_release_result(self._stream._h, c))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


class Stream:
    """mc_stream_create: items of item_shape/item_dtype in, results of
    result_shape/result_dtype out, through `slots` slots (default 3).
    on_result: fn(StreamResult) on the stream's thread; None: pull.
    isolate: a dict of mc_isolate_desc fields (device, deadline_ms,
    max_restarts, inject_faults, time_limit_ms, threads) or True, with
    device=None: the passes run in a supervised worker process that the
    stream replaces when it dies, hangs or loses its device (the items
    without a result are submitted again); the slots are memory shared with
    it, so acquire() still fills them in place. Create it from the main
    thread before other threads start (docs/ISOLATION.md)."""

    def __init__(self, device, passes, *, item_shape, item_dtype=np.float32, result_shape=None,
                 result_dtype=np.float32, slots=0, on_result=None, max_retries=0, label=None, lanes=0,
                 isolate=None):
        if not 1 <= len(passes) <= 8:
            raise ValueError("passes: 1 to 8 StreamPass")
        if isolate is None and device is None:
            raise ValueError("device is required (or isolate=... to run in a worker process)")
        if isolate is not None and device is not None:
            raise ValueError("an isolated stream opens its device in the worker: pass device=None")
        self._passes = list(passes)
        self.item_dtype, self.item_shape = np.dtype(item_dtype), tuple(np.atleast_1d(item_shape))
        self.result_dtype = np.dtype(result_dtype)
        self.result_shape = None if result_shape is None else tuple(np.atleast_1d(result_shape))
        item_size = int(np.prod(self.item_shape)) * self.item_dtype.itemsize
        result_size = 0 if result_shape is None else int(np.prod(self.result_shape)) * self.result_dtype.itemsize
        self._made = []
        self._keep = []
        self._setup_error = None
        self._cb_error = None
        self._user_result = on_result
        self._setup_cb = ffi.callback("mc_stream_setup_fn", self._setup)
        self._teardown_cb = ffi.callback("mc_stream_teardown_fn", self._teardown)
        self._result_cb = ffi.callback("mc_stream_result_fn", self._on_result)
        d = ffi.new("mc_stream_desc *")
        d.device = device.handle if device is not None else ffi.NULL
        if isolate is not None:
            d.isolate = isolate_desc(isolate, self._keep)
        d.setup = self._setup_cb
        d.teardown = self._teardown_cb
        d.item_size = item_size
        d.result_size = result_size
        d.slots = slots
        d.max_retries = max_retries
        d.lanes = lanes
        self._label = ffi.new("char[]", label.encode()) if label else ffi.NULL
        d.label = self._label
        if on_result is not None:
            d.on_result = self._result_cb
        out = ffi.new("mc_stream **")
        st = lib.mc_stream_create(d, out)
        if st != 0:
            msg = cstr(lib.mc_last_error())
            err, self._setup_error = self._setup_error, None
            if err is not None and not isinstance(err, errors.MetalComputeError):
                raise err
            raise errors.make_error(st, msg)
        self._h = out[0]
        self.device = device
        self.isolated = isolate is not None

    def _setup(self, user, dev, bind):
        made = []
        try:
            for pi, sp in enumerate(self._passes):
                cp = bind.passes[pi]
                pl = make_pipeline(dev, sp.kernel)
                made.append((lib.mc_pipeline_release, pl))
                cp.pipeline = pl
                cp.threadgroups, cp.threads_per_threadgroup = sp.shape
                lab = ffi.new("char[]", sp.label.encode())
                self._keep.append(lab)
                cp.label = lab
                for i, a in enumerate(sp.args):
                    if a is None:
                        continue
                    arg = cp.args[i]
                    if isinstance(a, _Marker):
                        arg.kind = a.kind
                    elif isinstance(a, np.ndarray):
                        desc = ffi.new("mc_buffer_desc *")
                        desc.size = max(a.nbytes, 1)
                        desc.initial_data = ffi.from_buffer(a)
                        o = ffi.new("mc_buffer **")
                        errors.check(lib.mc_buffer_create(dev, desc, o), "stream constant buffer")
                        made.append((lib.mc_buffer_release, o[0]))
                        arg.kind = 3
                        arg.buffer = o[0]
                    else:
                        c = ffi.new("char[]", a)
                        self._keep.append(c)
                        arg.kind = 4
                        arg.bytes = c
                        arg.len = len(a)
            bind.pass_count = len(self._passes)
            self._made = made
            return 0
        except BaseException as e:
            for rel, h in reversed(made):
                rel(h)
            self._setup_error = e
            return e.status if isinstance(e, errors.MetalComputeError) else errors.InternalError.status

    def _teardown(self, user, bind):
        made, self._made = self._made, []
        for rel, h in reversed(made):
            rel(h)

    def _on_result(self, user, r):
        try:
            res = StreamResult(None, r, self.result_dtype, self.result_shape)
            self._user_result(res)
        except BaseException as e:
            self._cb_error = e  # raised by the next submit or close

    def _raise_cb_error(self):
        if self._cb_error is not None:
            e, self._cb_error = self._cb_error, None
            raise e

    # -- producer ---------------------------------------------------------------
    def acquire(self, timeout=None):
        """mc_stream_acquire: (slot index, a NumPy view of its input) to fill
        in place; then submit_slot(index, tag) or discard(index). Waits for a
        free slot (GIL released)."""
        slot = ffi.new("mc_stream_slot *")
        st = _wait_sliced(lambda ns: lib.mc_stream_acquire(self._h, ns, slot), timeout)
        errors.check(st, "acquiring a stream slot")
        view = np.frombuffer(ffi.buffer(slot.input, slot.size), dtype=self.item_dtype).reshape(self.item_shape)
        return int(slot.index), view

    def submit_slot(self, index, tag=0):
        errors.check(lib.mc_stream_submit(self._h, index, tag))

    def discard(self, index):
        errors.check(lib.mc_stream_discard(self._h, index))

    def submit(self, block, tag=0, timeout=None):
        """Copies one block into a free slot (waiting for one) and submits it."""
        self._raise_cb_error()
        block = np.asarray(block, dtype=self.item_dtype)
        if block.shape != self.item_shape:
            raise ValueError(f"block shape {block.shape}; the stream takes {self.item_shape}")
        index, view = self.acquire(timeout)
        try:
            view[...] = block
        except BaseException:
            self.discard(index)
            raise
        self.submit_slot(index, tag)

    # -- consumer -------------------------------------------------------------
    def pull(self, timeout=None):
        """mc_stream_pull: the next result in order (release it, or use it as
        a `with` block). Raises InvalidState at the end of the stream and
        WaitTimeout when nothing came in time."""
        r = ffi.new("mc_stream_result *")
        st = _wait_sliced(lambda ns: lib.mc_stream_pull(self._h, ns, r), timeout)
        errors.check(st)
        return StreamResult(self, r, self.result_dtype, self.result_shape)

    def results(self):
        """Yields (tag, output copy) for every result until the stream is
        closed and drained; raises an item's error."""
        while True:
            try:
                r = self.pull()
            except errors.InvalidState:
                return
            with r:
                r.raise_for_status()
                out = None if r.output is None else r.output.copy()
                tag = r.tag
            yield tag, out

    def close(self, drain=True):
        """mc_stream_close: no more submissions; drain=True waits for every
        item, False cancels those not done."""
        errors.check(lib.mc_stream_close(self._h, bool(drain)))
        self._raise_cb_error()

    def stats(self):
        s = ffi.new("mc_stream_stats *")
        errors.check(lib.mc_stream_get_stats(self._h, s))
        names = ("submitted", "delivered", "failed", "cancelled", "commits", "replays", "recoveries",
                 "device_reopens", "slots", "slots_in_use", "max_in_flight", "worker_restarts", "list_commits")
        d = {n: int(getattr(s, n)) for n in names}
        d["last_failure"] = cstr(lib.mc_status_name(s.last_failure))
        return d

    def isolate_stats(self):
        """mc_stream_get_isolate_stats as a dict (workers, restarts, deaths,
        hangs, last_cause, ...); isolated streams only (else InvalidArgument)."""
        return isolate_stats_dict(lib.mc_stream_get_isolate_stats, self._h)

    def release(self):
        """mc_stream_release (closes with cancel if still open)."""
        if getattr(self, "_h", None) is not None:
            lib.mc_stream_release(self._h)
            self._h = None

    def __enter__(self):
        return self

    def __exit__(self, et, *exc):
        try:
            if et is None:
                self.close(True)
        finally:
            self.release()

    def __del__(self):
        self.release()
