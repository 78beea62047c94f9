"""Errors as exceptions: one class per mc_status, all under MetalComputeError.

Each carries the status (the C enum's value, `status`, and its name,
`status_name`, e.g. "MC_ERR_TIMEOUT"), the message (the command buffer's
detail or mc_last_error()), and, for command-buffer failures, the state of
every pass (`pass_states`: (label, state) pairs, state one of "completed",
"affected", "pending", "faulted", as MTLCommandEncoderErrorState, F686).
"""
from ._lib import cstr, lib


class MetalComputeError(Exception):
    """Base of every error the library reports."""

    status = -1

    def __init__(self, message="", *, status=None, pass_states=(), log=None):
        if status is not None:
            self.status = status
        self.status_name = cstr(lib.mc_status_name(self.status))
        self.message = message or cstr(lib.mc_status_text(self.status))
        self.pass_states = list(pass_states)
        self.log = log
        text = f"{self.status_name}: {self.message}"
        if log:
            text += "\n" + log
        super().__init__(text)

    @property
    def is_device_error(self):
        """True when the device failed (restore state and replay, as the runner does)."""
        return bool(lib.mc_status_is_device_error(self.status))


def _cls(name, value, doc, *bases):
    return type(name, (MetalComputeError,) + bases, {"status": value, "__doc__": doc})


InternalError = _cls("InternalError", 1, "MC_ERR_INTERNAL: internal error in the device or its driver.")
Timeout = _cls("Timeout", 2, "MC_ERR_TIMEOUT: the command buffer exceeded the execution-time limit.")
PageFault = _cls("PageFault", 3, "MC_ERR_PAGE_FAULT: a kernel touched memory it does not own.")
AccessRevoked = _cls("AccessRevoked", 4, "MC_ERR_ACCESS_REVOKED: device access revoked after repeated errors.")
NotPermitted = _cls("NotPermitted", 7, "MC_ERR_NOT_PERMITTED: not permitted to use the device.")
OutOfMemory = _cls("OutOfMemory", 8, "MC_ERR_OUT_OF_MEMORY: out of device memory.")
InvalidResource = _cls("InvalidResource", 9, "MC_ERR_INVALID_RESOURCE: invalid resource used by a command.")
DeviceLost = _cls("DeviceLost", 11, "MC_ERR_DEVICE_LOST: open the device again.")
PriorError = _cls("PriorError", 20, "MC_ERR_PRIOR_ERROR: not run, victim of an earlier error on the queue.")
InvalidArgument = _cls("InvalidArgument", 100, "MC_ERR_INVALID_ARGUMENT.", ValueError)
Unsupported = _cls("Unsupported", 101, "MC_ERR_UNSUPPORTED: not supported by this device.")
CompileError = _cls("CompileError", 102, "MC_ERR_COMPILE: kernel compilation failed; `log` holds the compiler's output.")
CacheMiss = _cls("CacheMiss", 103, "MC_ERR_CACHE_MISS: pipeline not cached and compiling is disabled.")
IOFailure = _cls("IOFailure", 104, "MC_ERR_IO: input/output error.", OSError)
NotFound = _cls("NotFound", 105, "MC_ERR_NOT_FOUND.", LookupError)
InvalidState = _cls("InvalidState", 106, "MC_ERR_INVALID_STATE: not allowed in the object's current state.")
ValidationError = _cls("ValidationError", 107, "MC_ERR_VALIDATION: refused by validation.")
WaitTimeout = _cls("WaitTimeout", 108, "MC_ERR_WAIT_TIMEOUT: a wait timed out.", TimeoutError)
Cancelled = _cls("Cancelled", 109, "MC_ERR_CANCELLED.")
NoMemory = _cls("NoMemory", 110, "MC_ERR_NO_MEMORY: out of host memory.", MemoryError)
WorkerLost = _cls("WorkerLost", 111, "MC_ERR_WORKER_LOST: the worker process died or hung past the restart bound.")

_BY_STATUS = {c.status: c for c in (
    InternalError, Timeout, PageFault, AccessRevoked, NotPermitted, OutOfMemory, InvalidResource, DeviceLost,
    PriorError, InvalidArgument, Unsupported, CompileError, CacheMiss, IOFailure, NotFound, InvalidState,
    ValidationError, WaitTimeout, Cancelled, NoMemory, WorkerLost)}


def error_class(status):
    """The exception class of an mc_status value (MetalComputeError for an unknown one)."""
    return _BY_STATUS.get(int(status), MetalComputeError)


def make_error(status, message=None, **kw):
    cls = error_class(status)
    if message is None:
        message = cstr(lib.mc_last_error())
    if cls is MetalComputeError:
        return MetalComputeError(message, status=int(status), **kw)
    return cls(message, **kw)


def check(status, what=None):
    """Raises the exception for a failing status; the message is mc_last_error()."""
    if status != 0:
        msg = cstr(lib.mc_last_error())
        if what and what not in msg:
            msg = f"{what}: {msg}" if msg else what
        raise make_error(status, msg)
