import os
import subprocess
import sys

import pytest

from conftest import DEVICE, ROOT, cpu_only

EXAMPLES = os.path.join(ROOT, "python", "examples")


@cpu_only()
def test_gray_scott_png_is_the_cli_png_byte_for_byte(tmp_path, lang):
    cli = os.environ.get("MC_CLI") or os.path.join(ROOT, "build", "metal-compute")
    if not os.path.exists(cli):
        pytest.skip("the command-line program is not built (set MC_CLI)")
    for size in (16, 48):
        py_png, c_png = tmp_path / f"py{size}.png", tmp_path / f"c{size}.png"
        subprocess.run([sys.executable, os.path.join(EXAMPLES, "gray_scott.py"), "--device", DEVICE, "--size",
                        str(size), "--steps", "150", "--language", lang, "--out", str(py_png),
                        "--inject-faults", "timeout@2"], check=True, capture_output=True)
        subprocess.run([cli, "run", "gray-scott", "--device", DEVICE, "--size", str(size), "--steps", "150",
                        "--out", str(c_png)], check=True, capture_output=True)
        assert py_png.read_bytes() == c_png.read_bytes()


def test_custom_kernel_example(lang):
    r = subprocess.run([sys.executable, os.path.join(EXAMPLES, "custom_kernel.py"), "--device", DEVICE,
                        "--language", lang], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "ok" in r.stdout
