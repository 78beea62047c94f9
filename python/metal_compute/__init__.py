"""metal-compute from Python: GPU compute that survives long-running work.

    import numpy as np, metal_compute as mc
    dev = mc.Device("cpu")                   # "cuda:1", "metal", None = $MC_DEVICE or the best
    x = dev.array(np.arange(1024, dtype=np.float32))   # device-backed NumPy array
    k = dev.kernel(SOURCE, "scale")           # through the pipeline cache
    k(x, np.float32(2), np.uint32(x.size), grid=x.size)

See docs/PYTHON.md. Names follow the C API (include/mc/mc.h).
"""
from ._core import (DEFAULT_LANGUAGE, Buffer, CommandBuffer, ComputePass, Device, DeviceInfo, Event, Kernel, Launch,
                    PassInfo, Queue, buffer_of, devices)
from .errors import *  # noqa: F401,F403  (one class per status)
from .errors import MetalComputeError, error_class
from .runner import Runner, RunnerStats, state
from .stream import INPUT, OUTPUT, SEQUENCE, Stream, StreamPass, StreamResult

__version__ = "0.1.0"
