import numpy as np
import pytest

import metal_compute as mc
from conftest import cpu_only, kernel_path


def test_from_file_and_source_through_the_cache(dev, lang):
    path = kernel_path("basic", lang)
    k1 = dev.kernel(path=path, function="iota")
    before = dev.cache_stats()
    k2 = dev.kernel(open(path).read(), "iota", language=lang)
    after = dev.cache_stats()
    assert k1.function == k2.function == "iota"
    assert after["hits_memory"] + after["hits_disk"] > before["hits_memory"] + before["hits_disk"]
    out = dev.zeros(10, np.uint32)
    k2(out, np.uint32(10), np.uint32(100), grid=10)
    assert list(out) == list(range(100, 110))


@cpu_only()
def test_compile_error_raises_with_the_log(dev):
    with pytest.raises(mc.CompileError) as e:
        dev.kernel("MC_KERNEL(broken, 1) { this is not C; }", "broken", language="c")
    assert e.value.status == 102 and e.value.log and "error" in e.value.log
    assert "MC_ERR_COMPILE" in str(e.value)


def test_missing_function_and_file(dev, lang):
    with pytest.raises(mc.MetalComputeError):
        dev.kernel(path=kernel_path("basic", lang), function="no_such_kernel")
    with pytest.raises(mc.IOFailure, match="cannot read"):
        dev.kernel(path="/nonexistent/k.c", function="k")


def test_bad_kernel_arguments(dev, lang):
    with pytest.raises(TypeError):
        dev.kernel("x", None)
    with pytest.raises(TypeError):
        dev.kernel("x", "f", path="y")
    with pytest.raises(ValueError, match="language"):
        dev.kernel("x", "f", language="fortran")


def test_cache_require_mode_raises_cache_miss(dev, lang):
    dev.cache_mode = "require"
    try:
        src = open(kernel_path("basic", lang)).read() + "\n/* a key nobody compiled: %d */\n" % id(dev)
        with pytest.raises(mc.CacheMiss):
            dev.kernel(src, "iota", language=lang)
    finally:
        dev.cache_mode = "default"


def test_default_group_sizes(dev, basic):
    k = basic["iota"]
    assert k.default_group(1)[0] * k.default_group(1)[1] <= k.max_total_threads_per_threadgroup
    g2 = k.default_group(2)
    assert g2[0] == g2[1] and g2[0] * g2[1] <= k.max_total_threads_per_threadgroup
    # A grid that is not a multiple of the group is rounded up (kernels check bounds).
    out = dev.zeros(1001, np.uint32)
    k(out, np.uint32(1001), np.uint32(1), grid=1001)
    assert out[-1] == 1001
