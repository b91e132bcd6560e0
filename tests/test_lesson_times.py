"""benchmarks/lesson_times.py on a tiny notebook: every mode runs, reports seconds and the kernel's peak memory."""

from __future__ import annotations

import json
import subprocess
import sys

import nbformat

from lmlab.course.notebooks import ROOT

SCRIPT = ROOT / "benchmarks" / "lesson_times.py"


def test_quick_mode_reports_time_and_peak_memory_of_each_run(tmp_path):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("import torch\nx = torch.ones(64 * 1024 * 1024 // 4)  # 64 MB\nprint(torch.get_num_threads())")])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = tmp_path / "tiny.ipynb"
    nbformat.write(nb, path)
    out = tmp_path / "times.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), str(path), "--quick", "--busy-limit", "60", "--timeout", "120", "--json", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    record = json.loads(out.read_text())
    assert record["modes"] == ["lmlab", "lmlab+busy"]
    for mode, r in record["lessons"]["tiny.ipynb"].items():
        assert r["ok"], (mode, r)
        assert 0 < r["seconds"] < 120
        assert 64 < r["peak_mb"] < 1536  # the 64 MB tensor is in the kernel's peak
    assert "tiny.ipynb" in proc.stdout and "ok" in proc.stdout


def test_bad_arguments_are_refused(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "missing.ipynb")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "not notebooks" in proc.stderr
    proc = subprocess.run([sys.executable, str(SCRIPT), "--modes", "fast"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "unknown modes" in proc.stderr
