"""The binding's struct declarations (metal_compute/_cdef.h) against the C
headers: cffi's ABI mode trusts them, so every size and field offset is
compared with what the C compiler says."""
import os
import shutil
import subprocess

import pytest

from conftest import ROOT
from metal_compute._lib import ffi

STRUCTS = ["mc_device_info", "mc_device_desc", "mc_buffer_desc", "mc_library_desc", "mc_pipeline_desc",
           "mc_pipeline_info", "mc_size3", "mc_queue_desc", "mc_cmdbuf_desc", "mc_pass_info",
           "mc_pipeline_source_desc", "mc_cache_stats", "mc_runner_iteration", "mc_runner_arg",
           "mc_runner_binding", "mc_runner_progress", "mc_runner_desc", "mc_runner_stats", "mc_isolate_desc",
           "mc_stream_arg", "mc_stream_pass", "mc_stream_binding", "mc_stream_result", "mc_stream_desc",
           "mc_stream_slot", "mc_stream_stats"]


def test_struct_layouts_match_the_headers(tmp_path):
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if not cc:
        pytest.skip("no C compiler to read the headers' layouts")
    lines = ['#include <stdio.h>', '#include <stddef.h>', '#include <mc/mc.h>', 'int main(void) {']
    expected = []
    for s in STRUCTS:
        t = ffi.typeof(s)
        lines.append(f'printf("%zu\\n", sizeof({s}));')
        expected.append(ffi.sizeof(t))
        for name, field in t.fields:
            lines.append(f'printf("%zu\\n", offsetof({s}, {name}));')
            expected.append(field.offset)
    lines.append("return 0; }")
    src = tmp_path / "layout.c"
    src.write_text("\n".join(lines))
    exe = tmp_path / "layout"
    subprocess.run([cc, "-std=c11", "-I", os.path.join(ROOT, "include"), str(src), "-o", str(exe)], check=True)
    got = [int(x) for x in subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout.split()]
    labels = []
    for s in STRUCTS:
        labels.append(f"sizeof({s})")
        labels += [f"{s}.{n}" for n, _ in ffi.typeof(s).fields]
    wrong = [(lab, e, g) for lab, e, g in zip(labels, expected, got) if e != g]
    assert not wrong, f"declarations out of step with the headers: {wrong}"
