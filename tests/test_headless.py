"""Widget cells execute headless: ``jupyter nbconvert --execute`` with its DEFAULT settings, and papermill.

Before ``lmlab.course.widgets.FigureExplorer`` set its ``Output``'s ``outputs`` directly, nbclient stalled on a
plotly figure shown inside an ``Output`` (forever with nbconvert's defaults). A subprocess timeout turns a
stall into a failure. The notebook is small (one 40 x 40 heatmap, ~10 KB of plotly JSON, a control change)
so the test costs one kernel start; ``tools/build_previews.py --execute-all`` runs the whole course.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import nbformat
import pytest

STALL_LIMIT = 150  # seconds: the notebook needs ~10 s; a stall waits forever

CELLS = [
    "import torch\nfrom ipywidgets import IntSlider\nfrom lmlab.course.widgets import FigureExplorer, mask_heatmap",
    "ex = FigureExplorer(lambda T: mask_heatmap(torch.ones(T, T).tril().bool(), f'T = {T}'), {'T': IntSlider(40, 2, 48)})\nex",
    "ex.controls['T'].value = 41\nassert ex.renders == 2 and len(ex.figure.data[0].z) == 41\nprint('changed')",
]


def _notebook(path):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in CELLS])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


def _outputs_of_widget_state(nb) -> list:
    state = nb.metadata.get("widgets", {}).get("application/vnd.jupyter.widget-state+json", {}).get("state", {})
    return [out for model in state.values() if model.get("model_name") == "OutputModel"
            for out in model.get("state", {}).get("outputs", [])]


def test_nbconvert_default_settings_do_not_stall(tmp_path):
    src, out = tmp_path / "widgets.ipynb", tmp_path / "widgets.out.ipynb"
    _notebook(src)
    try:
        subprocess.run([sys.executable, "-m", "jupyter", "nbconvert", "--to", "notebook", "--execute", str(src), "--output", out.name],
                       cwd=tmp_path, check=True, timeout=STALL_LIMIT, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    except subprocess.TimeoutExpired:
        pytest.fail(f"nbconvert --execute stalled on a FigureExplorer cell (> {STALL_LIMIT} s)")
    nb = nbformat.read(out, as_version=4)
    assert "changed" in "".join(o.get("text", "") for o in nb.cells[2].outputs)
    figures = [o for o in _outputs_of_widget_state(nb) if "application/vnd.plotly.v1+json" in o.get("data", {})
               or "text/html" in o.get("data", {})]
    assert figures, "the figure should be in the Output widget's saved state (what previews render)"


def test_papermill_does_not_stall(tmp_path):
    pm = pytest.importorskip("papermill")
    src, out = tmp_path / "widgets.ipynb", tmp_path / "widgets.pm.ipynb"
    _notebook(src)
    code = f"import papermill as pm; pm.execute_notebook({str(src)!r}, {str(out)!r}, kernel_name='python3', progress_bar=False)"
    try:
        subprocess.run([sys.executable, "-c", code], cwd=tmp_path, check=True, timeout=STALL_LIMIT, capture_output=True)
    except subprocess.TimeoutExpired:
        pytest.fail(f"papermill stalled on a FigureExplorer cell (> {STALL_LIMIT} s)")
    nb = json.loads(out.read_text())
    assert any("changed" in "".join(o.get("text", "")) for o in nb["cells"][2]["outputs"])
    assert pm.__version__
