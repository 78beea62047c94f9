"""Loads the C library through cffi's ABI mode.

ABI mode needs no compiler when the package is imported: the declarations
in _cdef.h are parsed at import and the shared library that the wheel
carries (built by scikit-build-core from the project's CMake) is opened.
cffi releases the GIL around every call into the library, so every wait
lets other Python threads run; its callbacks take the GIL themselves when a
runtime thread calls them.
"""
import os
import sys

from cffi import FFI

ffi = FFI()
with open(os.path.join(os.path.dirname(__file__), "_cdef.h"), encoding="utf-8") as _f:
    ffi.cdef(_f.read())


def _find_library():
    here = os.path.dirname(os.path.abspath(__file__))
    names = ["libmetal-compute.dylib"] if sys.platform == "darwin" else [
        "libmetal-compute.so", "libmetal-compute.so.0"]
    for name in names:
        path = os.path.join(here, name)
        if os.path.exists(path):
            return path
    # Not a wheel install: a library installed with `make install`.
    import ctypes.util
    found = ctypes.util.find_library("metal-compute")
    if found:
        return found
    raise ImportError(
        "metal_compute: the C library (libmetal-compute) is not inside the package and not installed; "
        "install the package with `pip install .` from the repository so it is built")


lib = ffi.dlopen(_find_library())

WAIT_FOREVER = 0xFFFFFFFFFFFFFFFF
NAME_MAX = 128
MAX_BYTES_ARG = 4096
MAX_BUFFER_ARGS = 31
MAX_THREADGROUP_MEMORY_ARGS = 8


def cstr(p):
    """A C string from the library as a Python str ('' for NULL)."""
    return "" if p == ffi.NULL else ffi.string(p).decode("utf-8", "replace")
