"""Every lesson widget, driven in a real JupyterLab + Chromium.

Lessons are discovered automatically: any ``lessons/NN_*.ipynb`` with a code cell that builds a
``FigureExplorer(`` is opened, run top to bottom, and each of its widgets' controls is changed once;
the figure's data (read from plotly's ``gd.data`` in the page, not from pixels) must change each
time. Screenshots of each widget before and after go to the screenshot directory.

All tests here share one JupyterLab server and one browser (module fixtures); keep them in this
one file so that ``pytest -n 2 --dist loadfile`` gives them one worker.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import nbformat
import pytest
from labdriver import (Browser, CellError, KernelDied, LabServer, LabStartError, NotebookRun, WaitTimeout, change,
                       controls_in, descendants, describe)

ROOT = Path(__file__).resolve().parents[2]
RUN_TIMEOUT = float(os.environ.get("LMLAB_BROWSER_TIMEOUT", "600"))  # ~1 min alone on 2 cores; far more on a busy machine
CHANGE_TIMEOUT = 30.0  # a redraw takes ~1 s; generous for a busy machine
RETRY_TIMEOUT = 10.0
ATTEMPTS = 3


def widget_lessons() -> list[tuple[str, int]]:
    """(notebook stem, number of FigureExplorer cells) for every lesson with a widget."""
    out = []
    for path in sorted((ROOT / "lessons").glob("[0-9][0-9]_*.ipynb")):
        nb = json.loads(path.read_text(encoding="utf-8"))
        n = sum("FigureExplorer(" in "".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
        if n:
            out.append((path.stem, n))
    return out


def _wait_data(run: NotebookRun, cell, test, timeout: float) -> bool:
    """Poll the figure's data until ``test(signature)``; False on timeout (faults still fail at once)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if run.rendered(cell) and test(run.signature(cell)):
                return True
        except Exception:  # the figure is being replaced
            pass
        run.check_faults()
        time.sleep(0.3)
    return False


def _try_change(run, cell, kind, control, base, attempts, tried, suffix=""):
    """Change ``control`` (further on each attempt) until the figure's data differs from ``base``."""
    for attempt in range(attempts):
        what, undo = change(kind, control, attempt)
        tried.append(what + suffix)
        if _wait_data(run, cell, lambda sig: sig not in ("", base), RETRY_TIMEOUT):
            return what, undo
        undo()
        _wait_data(run, cell, lambda sig: sig == base, CHANGE_TIMEOUT)
    return None, None


def drive_widgets(run: NotebookRun, expected: int) -> list[str]:
    """Wait for ``expected`` rendered widget figures; change every control from the starting state
    and assert that the figure's data changed. A control with no effect in the starting state (a
    stride that only the "strided" pattern uses) is tried again under each other option of the
    widget's dropdowns."""
    run.wait(f"{expected} widget(s) with a rendered plotly figure (.widget-output .js-plotly-plot)",
             lambda: run.explorer_cells().count() >= expected and all(
                 run.rendered(run.explorer_cells().nth(i)) for i in range(expected)), RUN_TIMEOUT)
    log = []
    cells = run.explorer_cells()
    for w in range(cells.count()):
        cell = cells.nth(w)
        widget = cell.locator(".jp-OutputArea-output").filter(has=run.page.locator(".widget-output")).first
        widget.scroll_into_view_if_needed()
        run.screenshot(f"widget{w}-0-before", widget)
        controls = controls_in(cell)
        assert controls, f"[{run.name}] widget {w} has no slider, dropdown, text box or checkbox"
        for c, (kind, control) in enumerate(controls, start=1):
            label = describe(control)
            base = run.signature(cell)
            assert base, f"[{run.name}] widget {w}: no figure data to compare"
            tried: list[str] = []
            mode_undo, mode = None, ""
            what, undo = _try_change(run, cell, kind, control, base, ATTEMPTS, tried)
            if what is None and kind != "dropdown":
                for dropdown in [ctl for k, ctl in controls if k == "dropdown"]:
                    n_options = dropdown.locator("option").count()
                    for attempt in range(n_options - 1):
                        mode, mode_undo = change("dropdown", dropdown, attempt)
                        _wait_data(run, cell, lambda sig: sig not in ("", base), CHANGE_TIMEOUT)
                        mode_base = run.signature(cell)
                        what, undo = _try_change(run, cell, kind, control, mode_base, 1, tried, f" (with {mode})")
                        if what:
                            break
                        mode_undo()
                        _wait_data(run, cell, lambda sig: sig == base, CHANGE_TIMEOUT)
                    if what:
                        break
            if what is None:
                run.fail(WaitTimeout, f"widget {w}'s figure data to change after {kind} {label!r}; tried: " + "; ".join(tried),
                         waited=RETRY_TIMEOUT)
            run.screenshot(f"widget{w}-{c}-after-{kind}", widget)
            undo()
            if what and mode_undo and tried[-1].endswith(f"(with {mode})"):
                mode_undo()
                what += f" (with {mode})"
            # a figure with randomness in it may not return exactly: note it, carry on
            back = "and back" if _wait_data(run, cell, lambda sig: sig == base, CHANGE_TIMEOUT) else \
                "did NOT return to the starting data after undo"
            log.append(f"widget {w}: {label}: {what}: figure data changed ({back})")
    return log


@pytest.mark.parametrize("lesson,n_widgets", widget_lessons() or [pytest.param("none", 0, marks=pytest.mark.skip(
    reason="no lesson builds a FigureExplorer yet"))])
def test_lesson_widgets(lesson, n_widgets, lab_server, browser, screenshot_dir, request):
    run = NotebookRun(lab_server, browser, f"lessons/{lesson}.ipynb", screenshot_dir, lesson)
    t0 = time.monotonic()
    try:
        run.open()
        run.run_all()
        log = drive_widgets(run, n_widgets)
        run.wait_idle_after_run(RUN_TIMEOUT)
        run.screenshot("page-end")
    finally:
        run.close()
        lab_server.shutdown_kernels()
    summary = f"{lesson}: {len(log)} control changes in {time.monotonic() - t0:.0f} s; screenshots in {screenshot_dir}\n" + "\n".join(log)
    print(summary)
    request.node.add_report_section("call", "browser", summary)
    assert (screenshot_dir / f"{lesson}-widget0-0-before.png").stat().st_size > 1000


# ----------------------------------------------------------------------------- the toolkit, and faults


def _notebook(path: Path, *sources: str) -> str:
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in sources])
    nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return str(path.relative_to(path.parents[1]))


TOOLKIT_CELL = '''
import plotly.graph_objects as go
from ipywidgets import Checkbox, Dropdown, FloatSlider, IntSlider, IntText, Text
from lmlab.course.widgets import FigureExplorer

def make(n, scale, kind, label, offset, flip):
    ys = [scale * (i + offset) * (-1 if flip else 1) for i in range(n)]
    fig = go.Figure(go.Bar(x=[f"{label}{i}" for i in range(n)], y=ys) if kind == "bar" else go.Scatter(y=ys))
    return fig, f"sum = {sum(ys):.1f}"

explorer = FigureExplorer(make, {
    "n": IntSlider(value=4, min=1, max=10), "scale": FloatSlider(value=1.0, min=0.5, max=3.0, step=0.5),
    "kind": Dropdown(options=["bar", "line"]), "label": Text(value="t"), "offset": IntText(value=0),
    "flip": Checkbox(value=False)}, caption="toolkit check")
explorer
'''


def test_toolkit_every_control_kind(lab_server, browser, screenshot_dir):
    """FigureExplorer with a slider of each kind, a dropdown, two text boxes and a checkbox."""
    rel = _notebook(lab_server.root_dir / "scratch" / "toolkit.ipynb", TOOLKIT_CELL)
    run = NotebookRun(lab_server, browser, rel, screenshot_dir, "toolkit")
    try:
        run.open()
        run.run_all()
        log = drive_widgets(run, 1)
    finally:
        run.close()
        lab_server.shutdown_kernels()
    kinds = [line.split(": ")[2].split()[0] for line in log]
    assert sorted(kinds) == ["checkbox", "dropdown", "slider", "slider", "text", "text"], log


def test_kernel_death_fails_fast(lab_server, browser, screenshot_dir):
    rel = _notebook(lab_server.root_dir / "scratch" / "dies.ipynb", "import os\nos._exit(1)", "print('never')")
    run = NotebookRun(lab_server, browser, rel, screenshot_dir, "fault-kernel-dies")
    t0 = time.monotonic()
    try:
        run.open()
        run.run_all()
        with pytest.raises((KernelDied, WaitTimeout)) as err:
            drive_widgets(run, 1)
    finally:
        run.close()
        lab_server.shutdown_kernels()
    assert err.type is KernelDied, err.value
    assert time.monotonic() - t0 < 60
    assert "kernel died" in str(err.value) and "last screenshot:" in str(err.value)


def test_cell_error_fails_fast(lab_server, browser, screenshot_dir):
    rel = _notebook(lab_server.root_dir / "scratch" / "raises.ipynb", "raise ValueError('lesson bug 123')")
    run = NotebookRun(lab_server, browser, rel, screenshot_dir, "fault-cell-error")
    try:
        run.open()
        run.run_all()
        with pytest.raises(CellError, match="lesson bug 123"):
            drive_widgets(run, 1)
    finally:
        run.close()
        lab_server.shutdown_kernels()


def test_lab_start_failure_is_reported_and_cleaned_up(tmp_path, chromium):
    """JupyterLab cannot bind its port: a clear error within seconds, and no process left."""
    before = set(descendants(os.getpid()))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        t0 = time.monotonic()
        with pytest.raises(LabStartError, match="JupyterLab") as err:
            LabServer(tmp_path, port=busy.getsockname()[1], start_timeout=30).start()
    assert time.monotonic() - t0 < 40
    assert "Last log lines" in str(err.value)
    assert [p for p in descendants(os.getpid()) if p not in before] == []


def test_missing_widget_times_out_and_leaves_nothing_behind(tmp_path, chromium, browser, screenshot_dir):
    """A widget that never appears: bounded failure naming what it waited for, with a screenshot;
    then this test's own server, kernel and browser are all gone."""
    before = set(descendants(os.getpid()))
    rel = _notebook(tmp_path / "scratch" / "nowidget.ipynb", "print('no widget here')")
    with LabServer(tmp_path) as server, Browser(chromium, playwright=browser._pw) as b:
        run = NotebookRun(server, b, rel, screenshot_dir, "fault-no-widget")
        run.open()
        run.run_all()
        t0 = time.monotonic()
        with pytest.raises(WaitTimeout) as err:
            run.wait("a widget that is never built", lambda: run.explorer_cells().count(), timeout=8)
        assert time.monotonic() - t0 < 20
        server_tree = [server.proc.pid, *descendants(server.proc.pid)]
        assert len(server_tree) >= 2, "expected a kernel under the server"
    msg = str(err.value)
    assert "waiting for a widget that is never built" in msg and "timed out after 8 s" in msg
    shot = Path(msg.split("last screenshot: ")[1].split("\n")[0])
    assert shot.exists() and shot.stat().st_size > 1000
    time.sleep(0.5)
    left = [p for p in descendants(os.getpid()) if p not in before]
    assert left == [], f"left behind: {left}"
    assert not any(os.path.exists(f"/proc/{p}") and open(f"/proc/{p}/stat").read().split()[2] != "Z" for p in server_tree)
