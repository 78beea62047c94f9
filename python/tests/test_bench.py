import json
import os
import subprocess
import sys

from conftest import DEVICE, ROOT


def test_bench_module_runs_and_reports_no_copy(lang):
    cli = os.environ.get("MC_CLI") or os.path.join(ROOT, "build", "metal-compute")
    args = [sys.executable, "-m", "metal_compute.bench", "--json", "--reps", "50", "--gib", "0.0625",
            "--device", DEVICE, "--language", lang]
    if os.path.exists(cli):
        args += ["--cli", cli]
    r = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["py_call_us"] > 0 and res["py_launch_us"] > 0
    assert res["same_memory"] is True and res["rss_added_mib"] < 16  # 64 MiB viewed, not copied
    assert "macOS" in res["py_metal_compute"] or sys.platform == "darwin"
    # A NumPy array made a buffer: the array's own memory, nothing copied.
    assert res["wrap_same_memory"] is True and res["wrap_rss_added_mib"] < 16
    if lang == "msl":
        assert res["py_call_args_us"] > 0 and res["py_launch_args_us"] > 0
