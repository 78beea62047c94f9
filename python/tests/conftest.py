"""The suite runs on MC_PY_DEVICE, else MC_DEVICE (default "cpu"); on a GPU
host set either to "cuda" or "metal"; a test that needs another device says
so in its skip reason. Kernels are in MC_PY_LANG: "msl" (default, one
source for every device) or the device's native language ("c", "cuda")."""
import os
import sys

import numpy as np
import pytest

import metal_compute as mc

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
KERNELS = os.path.join(ROOT, "examples", "kernels")
# MC_PY_LANG c or cuda: the hand-written twins, kept as benchmark baselines.
BASELINES = os.path.join(ROOT, "benchmarks", "baselines")
sys.path.insert(0, os.path.join(ROOT, "python", "examples"))

# MC_PY_DEVICE, else MC_DEVICE (the C tests' variable), else the CPU device.
DEVICE = os.environ.get("MC_PY_DEVICE") or os.environ.get("MC_DEVICE") or "cpu"
_NATIVE = {"cpu": "msl", "cuda": "msl", "metal": "msl"}
_EXT = {"c": ".c", "cuda": ".cu", "msl": ".metal"}


@pytest.fixture(scope="session")
def lang():
    return os.environ.get("MC_PY_LANG") or _NATIVE[DEVICE.split(":")[0]]


@pytest.fixture
def dev():
    d = mc.Device(DEVICE)
    yield d
    d.close()


def kernel_path(name, language):
    return os.path.join(KERNELS if language == "msl" else BASELINES, name + _EXT[language])


@pytest.fixture
def basic(dev, lang):
    """The basic kernels (examples/kernels/basic.*) on dev, by name."""
    path = kernel_path("basic", lang)
    return {n: dev.kernel(path=path, function=n, language=lang)
            for n in ("empty", "saxpy", "add_one", "iota", "spin")}


def cpu_only():
    return pytest.mark.skipif(DEVICE.split(":")[0] != "cpu", reason="CPU device only")
