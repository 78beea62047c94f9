"""The runner from Python (mc_runner, include/mc/mc_runner.h, docs/RUNNER.md).

A step is a kernel and its arguments; the runner applies it N times in
command buffers sized to a time budget, checkpoints the state buffers and
replays from the last checkpoint after a fault. Setup runs again on a
reopened device (and in the worker process of an isolated run), so the
runner keeps the kernel's source and the state's initial contents, not
objects of one device.
"""
import sys
import threading

import numpy as np

from . import errors
from ._core import _SLICE_NS, DeviceInfo, _lang, launch_shape, make_pipeline, scalar_bytes
from ._lib import MAX_BUFFER_ARGS, cstr, ffi, lib


class state:
    """Marks an argument slot bound to state buffer `index`."""

    __slots__ = ("index",)

    def __init__(self, index):
        self.index = int(index)

    def __repr__(self):
        return f"state({self.index})"


class RunnerStats:
    """mc_runner_stats (and the last mc_runner_progress) as attributes."""

    _FIELDS = ("iterations", "chunks", "chunks_submitted", "chunks_after_stop", "dispatches", "chunk_ms_mean",
               "chunk_ms_max", "gap_us_mean", "gap_us_max", "checkpoints", "checkpoint_iteration", "recoveries",
               "timeouts", "page_faults", "access_revoked", "devices_lost", "internal_errors", "victims",
               "other_errors", "device_reopens", "backoff_ms", "elapsed_ms", "last_failure", "stopped_early",
               "cancelled", "worker_restarts")

    def __init__(self, c):
        for f in self._FIELDS:
            setattr(self, f, getattr(c, f))
        self.last_failure_name = cstr(lib.mc_status_name(c.last_failure))

    def as_dict(self):
        d = {f: getattr(self, f) for f in self._FIELDS}
        d["last_failure_name"] = self.last_failure_name
        return d

    def __repr__(self):
        return (f"RunnerStats(iterations={self.iterations}, chunks={self.chunks}, "
                f"recoveries={self.recoveries}, elapsed_ms={self.elapsed_ms:.1f})")


class Progress:
    """mc_runner_progress as attributes (given to the progress callback)."""

    __slots__ = ("iterations", "total_iterations", "rate", "eta_s", "elapsed_s", "chunks", "recoveries", "done",
                 "worker_restarts")

    def __init__(self, c):
        for f in self.__slots__:
            setattr(self, f, getattr(c, f))
        self.done = bool(c.done)


def _tqdm_progress():
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    bar = {}

    def show(p):
        if "bar" not in bar:
            bar["bar"] = tqdm(total=p.total_iterations or None, unit="it", file=sys.stderr)
        b = bar["bar"]
        b.update(p.iterations - b.n)
        if p.recoveries:
            b.set_postfix(recovered=p.recoveries)
        if p.done:
            b.close()

    return show


def isolate_desc(isolate, keep):
    """An mc_isolate_desc from a dict of its fields (device, inject_faults,
    time_limit_ms, threads, deadline_ms, start_timeout_ms, max_restarts)
    or True (all defaults); what it points to is appended to keep."""
    iso = {} if isolate is True else dict(isolate)
    idesc = ffi.new("mc_isolate_desc *")
    keep.append(idesc)
    for k, v in iso.items():
        if k in ("device", "inject_faults"):
            if v is not None:
                keep.append(ffi.new("char[]", str(v).encode()))
                setattr(idesc, k, keep[-1])
        elif k in ("time_limit_ms", "threads", "deadline_ms", "start_timeout_ms", "max_restarts"):
            setattr(idesc, k, v)
        else:
            raise ValueError(f"isolate: unknown field {k!r}")
    return idesc


_ISOLATE_STATS = ("workers", "restarts", "device_errors", "deaths", "hangs", "last_signal", "start_ms",
                  "restart_ms_last", "restart_ms_mean", "restart_ms_max", "reap_ms_last", "ready_ms_last",
                  "resume_ms_last", "outage_ms_last", "restored_iteration", "worker_pid")


def isolate_stats_dict(getter, handle):
    """mc_runner_get_isolate_stats / mc_stream_get_isolate_stats as a dict."""
    s = ffi.new("mc_isolate_stats *")
    errors.check(getter(handle, s))
    d = {n: getattr(s, n) for n in _ISOLATE_STATS}
    d["last_cause"] = cstr(lib.mc_status_name(s.last_cause))
    d["last_cause_text"] = ffi.string(s.last_cause_text).decode("utf-8", "replace")
    d["device"] = DeviceInfo(s.device) if ffi.string(s.device.name) else None  # once a worker was ready
    return d


class Runner:
    """mc_runner_create + mc_runner_run for one step kernel.

    device: a Device (None with isolate). kernel: a Kernel (its source is
    rebuilt on every device the runner uses). state: the initial contents of
    the state buffers (arrays; checkpointed and restored). args: one value
    per argument slot: state(i), an array (a constant input buffer made by
    setup), a scalar by value, or None (unbound, or the runner's
    iteration/control slots). iterations: the total. grid (threads) or
    groups (threadgroups), group: as Device.dispatch. progress: a callable
    fn(Progress), True (a tqdm bar when tqdm is installed), or None (a tqdm
    bar when stderr is a terminal and tqdm is installed). isolate: a dict of
    mc_isolate_desc fields (device, deadline_ms, max_restarts,
    inject_faults, time_limit_ms, threads) or True: the device work runs in
    a supervised worker process."""

    def __init__(self, device, kernel, *, state, args, iterations, grid=None, groups=None, group=None,
                 iteration_arg=None, control_arg=None, iterations_per_dispatch=1, budget_ms=0.0, max_chunk_ms=0.0,
                 in_flight=0, checkpoint_ms=0.0, max_recoveries=0, progress=None, progress_interval_ms=0.0,
                 on_checkpoint=None, label=None, isolate=None, storage="shared"):
        if not state:
            raise ValueError("state: at least one array (the state the runner checkpoints)")
        if len(state) > 16:
            raise ValueError("state: at most 16 buffers (MC_RUNNER_MAX_STATE)")
        if len(args) > MAX_BUFFER_ARGS:
            raise ValueError(f"args: at most {MAX_BUFFER_ARGS} slots")
        if not isinstance(iterations, (int, np.integer)) or iterations < 0:
            raise ValueError("iterations must be an int >= 0 (0: until the kernel's stop condition)")
        if isolate is None and device is None:
            raise ValueError("device is required (or isolate=... to run in a worker process)")
        if isolate is not None and device is not None:
            raise ValueError("an isolated runner opens its device in the worker: pass device=None")
        for a in (kernel.source, kernel.function):
            if not isinstance(a, str):
                raise TypeError("kernel must be a Kernel (or have source and function strings)")
        _lang(kernel.language)
        self._kernel = kernel
        self._state = [np.ascontiguousarray(s) for s in state]
        self._state_meta = [(s.dtype, s.shape) for s in self._state]
        self._storage = 0 if storage == "shared" else 1
        self._made = []
        self._keep = []
        self._setup_error = None
        self._cb_error = None
        self._cancel_requested = False
        self._args = []
        # The C runner reserves slot 0 for state: 0 there means "none".
        for name, slot in (("iteration_arg", iteration_arg), ("control_arg", control_arg)):
            if slot is not None and slot < 1:
                raise ValueError(f"{name}={slot}: it takes a slot from 1 up (slot 0 holds state)")
        for i, a in enumerate(args):
            if i in (iteration_arg, control_arg):
                if a is not None:
                    raise ValueError(f"args[{i}]: the runner binds this slot; leave it None")
                self._args.append(None)
            elif a is None or isinstance(a, globals()["state"]):
                if a is not None and not 0 <= a.index < len(self._state):
                    raise ValueError(f"args[{i}]: {a} but there are {len(self._state)} state buffers")
                self._args.append(a)
            elif isinstance(a, np.ndarray) and a.ndim > 0:
                self._args.append(np.ascontiguousarray(a))
            else:
                b = scalar_bytes(a)
                if b is None:
                    raise TypeError(f"args[{i}]: cannot pass a {type(a).__name__}")
                self._args.append(b)
        # A dummy kernel only for its launch shape (default group sizes).
        tgs, tg = launch_shape(kernel, grid, groups, group)

        self._setup_cb = ffi.callback("mc_runner_setup_fn", self._setup)
        self._teardown_cb = ffi.callback("mc_runner_teardown_fn", self._teardown)
        self._progress_cb = ffi.callback("mc_runner_progress_fn", self._progress)
        self._checkpoint_cb = ffi.callback("mc_runner_checkpoint_fn", self._checkpoint)
        if progress is True or (progress is None and sys.stderr.isatty()):
            progress = _tqdm_progress()
        self._user_progress = progress or None
        self._user_checkpoint = on_checkpoint
        self.last_progress = None

        d = ffi.new("mc_runner_desc *")
        d.device = device.handle if device is not None else ffi.NULL
        d.setup = self._setup_cb
        d.teardown = self._teardown_cb
        d.threadgroups = tgs
        d.threads_per_threadgroup = tg
        d.iterations_per_dispatch = iterations_per_dispatch
        d.total_iterations = int(iterations)
        d.iteration_arg = -1 if iteration_arg is None else iteration_arg
        d.control_arg = -1 if control_arg is None else control_arg
        d.budget_ms = budget_ms
        d.max_chunk_ms = max_chunk_ms
        d.in_flight = in_flight
        d.checkpoint_ms = checkpoint_ms
        d.max_recoveries = max_recoveries
        # Always a progress callback: it is where a cancel reaches the run.
        d.progress = self._progress_cb
        d.progress_interval_ms = progress_interval_ms
        self._label = ffi.new("char[]", label.encode()) if label else ffi.NULL
        d.label = self._label
        if on_checkpoint is not None:
            d.on_checkpoint = self._checkpoint_cb
        if isolate is not None:
            d.isolate = isolate_desc(isolate, self._keep)
        out = ffi.new("mc_runner **")
        st = lib.mc_runner_create(d, out)
        if st != 0:
            msg = cstr(lib.mc_last_error())
            err = self._setup_error
            self._setup_error = None
            if err is not None and not isinstance(err, errors.MetalComputeError):
                raise err
            raise errors.make_error(st, msg)
        self._h = out[0]
        self.isolated = isolate is not None
        self.device = device

    # -- callbacks (the run's thread; the worker process when isolated) ------
    def _setup(self, user, dev, bind):
        try:
            made = []
            pl = make_pipeline(dev, self._kernel)
            made.append((lib.mc_pipeline_release, pl))
            bind.pipeline = pl
            bufs = []
            for s in self._state:
                bufs.append(self._buffer(dev, s, made))
            for i, b in enumerate(bufs):
                bind.state[i] = b
            bind.state_count = len(bufs)
            for i, a in enumerate(self._args):
                if a is None:
                    continue
                arg = bind.args[i]
                if isinstance(a, state):
                    arg.kind = 1
                    arg.buffer = bufs[a.index]
                elif isinstance(a, np.ndarray):
                    arg.kind = 1
                    arg.buffer = self._buffer(dev, a, made)
                else:
                    c = ffi.new("char[]", a)
                    self._keep.append(c)
                    arg.kind = 2
                    arg.bytes = c
                    arg.len = len(a)
            self._made = made
            return 0
        except BaseException as e:
            for rel, h in reversed(locals().get("made", [])):
                rel(h)
            self._setup_error = e
            return e.status if isinstance(e, errors.MetalComputeError) else errors.InternalError.status

    def _buffer(self, dev, a, made):
        desc = ffi.new("mc_buffer_desc *")
        desc.size = max(a.nbytes, 1)
        desc.storage = self._storage
        src = ffi.from_buffer(a) if a.nbytes else ffi.NULL
        desc.initial_data = src
        out = ffi.new("mc_buffer **")
        errors.check(lib.mc_buffer_create(dev, desc, out), "runner state buffer")
        made.append((lib.mc_buffer_release, out[0]))
        return out[0]

    def _teardown(self, user, bind):
        made, self._made = self._made, []
        for rel, h in reversed(made):
            rel(h)

    def _progress(self, user, p):
        try:
            prog = Progress(p)
            self.last_progress = prog
            if self._user_progress is not None:
                self._user_progress(prog)
        except BaseException as e:
            # An exception cannot go back into C: stop the run, raise it after.
            self._cb_error = e
            lib.mc_runner_cancel(self._h)

    def _checkpoint(self, user, iteration, st, sizes, count):
        try:
            arrays = []
            for i in range(count):
                dtype, shape = self._state_meta[i]
                raw = ffi.buffer(st[i], sizes[i])
                arrays.append(np.frombuffer(raw, dtype=dtype).reshape(shape).copy())
            self._user_checkpoint(int(iteration), arrays)
        except BaseException as e:
            self._cb_error = e
            lib.mc_runner_cancel(self._h)

    # -- the run --------------------------------------------------------------
    def run(self):
        """mc_runner_run, on a thread of its own so this thread can take
        Ctrl-C: KeyboardInterrupt cancels the run (the chunks in flight
        finish), then is raised again. Returns the RunnerStats; raises the
        error that exhausted the recoveries (or Cancelled after cancel())."""
        result = {}
        # Our own flag, not Thread.join/is_alive: a KeyboardInterrupt inside
        # join() marks a running thread as stopped (CPython 3.11's
        # _wait_for_tstate_lock), and releasing the runner under a run that
        # still goes corrupts the heap.
        finished = self._finished = threading.Event()

        def body():
            try:
                result["status"] = lib.mc_runner_run(self._h)
                result["message"] = cstr(lib.mc_last_error())
            finally:
                finished.set()

        t = threading.Thread(target=body, name="metal_compute runner", daemon=True)
        t.start()
        try:
            while not finished.wait(_SLICE_NS / 1e9):
                pass
        except KeyboardInterrupt:
            lib.mc_runner_cancel(self._h)
            while True:  # the chunks in flight finish (each within the budget)
                try:
                    if finished.wait(_SLICE_NS / 1e9):
                        break
                except KeyboardInterrupt:
                    continue
            raise
        if self._cb_error is not None:
            e, self._cb_error = self._cb_error, None
            raise e
        st = result["status"]
        if st != 0:
            raise errors.make_error(st, result["message"])
        return self.stats()

    def cancel(self):
        """mc_runner_cancel: thread-safe; run() then raises Cancelled."""
        errors.check(lib.mc_runner_cancel(self._h))

    def isolate_stats(self):
        """mc_runner_get_isolate_stats as a dict (workers, restarts, deaths,
        hangs, last_cause, restart_ms_last, ..., device: the DeviceInfo the
        workers opened); isolated runners only (else InvalidArgument)."""
        return isolate_stats_dict(lib.mc_runner_get_isolate_stats, self._h)

    def stats(self):
        out = ffi.new("mc_runner_stats *")
        errors.check(lib.mc_runner_get_stats(self._h, out))
        return RunnerStats(out[0])

    def state(self, index=0):
        """mc_runner_state_read: a copy of state buffer `index` after the run,
        with the dtype and shape of the initial state."""
        if not 0 <= index < len(self._state_meta):
            raise IndexError(f"state {index}: the runner has {len(self._state_meta)}")
        dtype, shape = self._state_meta[index]
        out = np.empty(shape, dtype)
        errors.check(lib.mc_runner_state_read(self._h, index, ffi.from_buffer(out), out.nbytes))
        return out

    def close(self):
        """mc_runner_release (calls teardown). Not while run() runs."""
        running = getattr(self, "_finished", None)
        if running is not None and not running.is_set():
            raise errors.InvalidState("the runner is running: cancel() and let run() return first")
        if getattr(self, "_h", None) is not None:
            lib.mc_runner_release(self._h)
            self._h = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except errors.InvalidState:
            pass  # a run still going keeps its runner (released with the process)
