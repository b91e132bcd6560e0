"""Tests for lmlab.course.doctor (environment report, CLI entry points) and lmlab.course.widgets.FigureExplorer."""

from __future__ import annotations

import importlib.metadata as md
import os
import subprocess
import sys
from pathlib import Path

import ipywidgets as W
import plotly.graph_objects as go
import pytest
import torch

from lmlab.course import doctor as doctor_mod
from lmlab.cli import main as cli_main
from lmlab.course.doctor import best_device, doctor, environment
from lmlab.course.widgets import FIGURE_HEIGHT, FIGURE_WIDTH, FigureExplorer, style_figure

REPO = Path(__file__).resolve().parents[1]

# --------------------------------------------------------------------------------------------
# doctor
# --------------------------------------------------------------------------------------------

EXPECTED_KEYS = {
    "python", "platform", "lmlab", "torch", "device", "cpu threads", "thread policy", "numpy", "einops", "plotly",
    "ipywidgets", "jupyterlab", "jupyterlab_widgets", "tqdm", "frontend", "plotly renderer", "problems",
}


def test_environment_reports_the_keys():
    info = environment()
    assert EXPECTED_KEYS <= set(info)
    assert info["torch"] == torch.__version__
    assert info["python"] == ".".join(map(str, sys.version_info[:3]))
    assert info["device"] == best_device()
    assert isinstance(info["cpu threads"], int) and info["cpu threads"] >= 1
    assert isinstance(info["problems"], list)
    assert info["frontend"] == "terminal"  # pytest runs outside any notebook front-end
    for dist in ("numpy", "plotly", "ipywidgets", "tqdm"):  # installed with lmlab
        assert info[dist] == md.version(dist)


def test_best_device_is_cpu_without_accelerators():
    has_mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if torch.cuda.is_available() or has_mps:
        assert best_device() in ("cuda", "mps")
    else:
        assert best_device() == "cpu"


def test_best_device_prefers_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert best_device() == "cuda"


def test_doctor_prints_and_returns_the_report(capsys):
    info = doctor()
    out = capsys.readouterr().out
    assert torch.__version__ in out
    for key in ("python", "torch", "device", "plotly"):
        assert any(line.startswith(key) for line in out.splitlines()), key
    assert set(info) >= EXPECTED_KEYS
    assert doctor(print_report=False)["torch"] == torch.__version__
    assert capsys.readouterr().out == ""


def test_doctor_lists_problems(monkeypatch, capsys):
    real = doctor_mod.importlib.import_module

    def fake_import(name, *args, **kwargs):
        if name == "einops":
            raise ImportError(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(doctor_mod.importlib, "import_module", fake_import)
    info = doctor()
    assert info["problems"] == ["einops is missing: pip install einops"]
    assert "einops is missing" in capsys.readouterr().out


def test_cli_main_doctor(capsys):
    assert cli_main(["doctor"]) == 0
    assert torch.__version__ in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli_main(["no-such-command"])


def _console_script() -> Path | None:
    if not md.entry_points(group="console_scripts", name="lmlab"):
        return None  # lmlab is not pip-installed in this environment
    script = Path(sys.executable).parent / ("lmlab.exe" if os.name == "nt" else "lmlab")
    assert script.exists(), f"lmlab is installed but its console script is missing at {script}"
    return script


def test_command_line_doctor_runs():
    commands = [[sys.executable, "-m", "lmlab.course.doctor"]]
    script = _console_script()
    if script is not None:
        commands.append([str(script), "doctor"])
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    # Start them all at once: each pays for importing torch.
    procs = [subprocess.Popen(c, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for c in commands]
    for cmd, proc in zip(commands, procs):
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, (cmd, err)
        assert torch.__version__ in out, (cmd, out)
        assert "device" in out
    if script is None:
        pytest.skip("lmlab is not pip-installed: the `lmlab doctor` console script was not checked")


# --------------------------------------------------------------------------------------------
# widgets
# --------------------------------------------------------------------------------------------


def _bar_figure(n: int, color: str = "red"):
    fig = go.Figure(go.Bar(x=list(range(n)), y=[i * i for i in range(n)], marker_color=color))
    return fig, f"{n} bars"


def test_figure_explorer_renders_on_creation():
    ex = FigureExplorer(_bar_figure, {"n": W.IntSlider(value=3, min=1, max=10)}, caption="squares")
    assert ex.renders == 1
    assert isinstance(ex.figure, go.Figure)
    assert list(ex.figure.data[0].x) == [0, 1, 2]
    assert "3 bars" in ex.note.value
    assert ex.values == {"n": 3}
    assert ex.controls["n"].description == "n"  # defaults to the control's name
    assert ex.controls["n"].continuous_update is False
    assert any(isinstance(c, W.HTML) and "squares" in c.value for c in ex.children)


def test_changing_a_control_rerenders():
    controls = {"n": W.IntSlider(value=3, min=1, max=10), "color": W.Dropdown(options=["red", "blue"], value="red")}
    ex = FigureExplorer(_bar_figure, controls)
    first = ex.figure
    ex.controls["n"].value = 6
    assert ex.renders == 2
    assert ex.figure is not first
    assert list(ex.figure.data[0].y) == [0, 1, 4, 9, 16, 25]
    assert "6 bars" in ex.note.value
    ex.controls["color"].value = "blue"
    assert ex.renders == 3
    assert ex.figure.data[0].marker.color == "blue"
    assert ex.values == {"n": 6, "color": "blue"}
    ex.controls["n"].value = 6  # not a change: no redraw
    assert ex.renders == 3


def test_make_figure_may_return_just_a_figure():
    ex = FigureExplorer(lambda n: go.Figure(go.Scatter(y=[n])), {"n": W.IntText(value=2)})
    assert list(ex.figure.data[0].y) == [2]
    assert ex.note.value == ""


@pytest.mark.parametrize("bad", [None, "a figure", {"data": []}, (None, "note")])
def test_bad_make_figure_return_type(bad):
    with pytest.raises(ValueError, match="make_figure must return a plotly go.Figure"):
        FigureExplorer(lambda n: bad, {"n": W.IntSlider(value=1)})


def test_bad_return_after_a_change_is_reported():
    ex = FigureExplorer(lambda n: go.Figure() if n < 5 else "oops", {"n": W.IntSlider(value=1, max=10)})
    with pytest.raises(ValueError, match="make_figure must return a plotly go.Figure"):
        ex.controls["n"].value = 7


@pytest.mark.parametrize("control", [3, "slider", W.Button(), W.Output()])
def test_non_widget_control(control):
    with pytest.raises(ValueError, match=r"control 'n' must be an ipywidgets value widget"):
        FigureExplorer(lambda n: go.Figure(), {"n": control})


def test_bad_make_figure_or_empty_controls():
    with pytest.raises(ValueError, match="make_figure must be a function"):
        FigureExplorer("not callable", {"n": W.IntSlider()})
    with pytest.raises(ValueError, match="controls must name at least one widget"):
        FigureExplorer(lambda: go.Figure(), {})


def test_style_figure():
    fig = style_figure(go.Figure(), title="Loss")
    assert fig.layout.width == FIGURE_WIDTH and fig.layout.height == FIGURE_HEIGHT
    assert fig.layout.title.text == "Loss"
    small = style_figure(go.Figure(), width=300, height=200)
    assert small.layout.width == 300 and small.layout.height == 200


def test_style_figure_caps_the_width_and_makes_room_for_subplot_titles():
    from plotly.subplots import make_subplots

    from lmlab.course.widgets import FIGURE_MAX_WIDTH, style_figure

    wide = style_figure(go.Figure(), "wide", width=1200)
    assert wide.layout.width == FIGURE_MAX_WIDTH  # fits JupyterLab's column beside the file browser
    plain = style_figure(go.Figure(), "one plot")
    two = style_figure(make_subplots(rows=1, cols=2, subplot_titles=("a", "b")), "two plots")
    assert two.layout.margin.t > plain.layout.margin.t  # the title clears the subplot titles
