"""The address the README's command prints opens lesson 00 in a real browser, and the course is all there.

``tools/start.sh`` ends with ``bash tools/lab.sh lessons/00_tour.ipynb``; this test runs that last step
exactly (on throw-away copies of the notebooks: Lab autosaves), opens the *printed* URL in Chromium and
checks what a new learner sees: lesson 00's title with no "Cannot open" dialog, the lesson's link to its
exercise notebook opening that notebook, and, after Run All, a widget's plotly figure. Bounded in time;
every request that is not to 127.0.0.1 is aborted.
"""

from __future__ import annotations

import json
import os
import re
import selectors
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from lmlab.course.notebooks import ROOT

from labdriver import LAB_SETTINGS, Browser, NotebookRun, descendants

pytestmark = pytest.mark.browser

START_LIMIT = 90.0


@pytest.fixture()
def course_copy():
    path = Path(tempfile.mkdtemp(prefix="lmlab-start-url-"))
    (path / "tools").mkdir()
    shutil.copy(ROOT / "tools" / "lab.sh", path / "tools" / "lab.sh")
    for folder in ("lessons", "exercises", "solutions"):
        (path / folder).mkdir()
        for nb in sorted((ROOT / folder).glob("[0-9][0-9]_*.ipynb")):
            shutil.copy(nb, path / folder / nb.name)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _start_lab(root: Path, tmp: Path) -> tuple[subprocess.Popen, str]:
    env = dict(os.environ, LMLAB_PORT="0", OMP_NUM_THREADS="1")
    for var in ("JUPYTER_CONFIG_DIR", "JUPYTER_RUNTIME_DIR", "JUPYTERLAB_SETTINGS_DIR", "JUPYTERLAB_WORKSPACES_DIR"):
        (tmp / var.lower()).mkdir()
        env[var] = str(tmp / var.lower())
    for rel, value in LAB_SETTINGS.items():  # every cell rendered (no virtual scrolling), no news toasts
        path = tmp / "jupyterlab_settings_dir" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(value))
    env.pop("LMLAB_TOKEN", None)  # the token the script makes up, as for a learner
    proc = subprocess.Popen(["bash", str(root / "tools" / "lab.sh"), "lessons/00_tour.ipynb", "--no-browser"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    text, deadline = "", time.monotonic() + START_LIMIT
    while time.monotonic() < deadline:
        if sel.select(timeout=0.5):
            chunk = os.read(proc.stdout.fileno(), 65536).decode(errors="replace")
            if not chunk:
                break
            text += chunk
        if re.search(r"The course opens at: http://\S+", text) and "is running at" in text:
            return proc, re.search(r"The course opens at: (http://\S+)", text).group(1)
    _stop(proc)
    raise AssertionError(f"tools/lab.sh printed no URL or the server did not start in {START_LIMIT:g} s:\n{text[-3000:]}")


def _stop(proc: subprocess.Popen) -> None:
    pids = descendants(proc.pid)
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=15)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    for pid in [proc.pid, *pids]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_printed_url_opens_lesson_00_its_exercise_link_and_a_widget(chromium, course_copy, tmp_path, screenshot_dir):
    proc, url = _start_lab(course_copy, tmp_path)
    browser = Browser(chromium).start()
    page = browser.new_page()
    try:
        assert "/lab/tree/lessons/00_tour.ipynb?token=" in url
        page.goto(url, timeout=90_000)
        page.locator(".jp-Notebook .jp-Cell").first.wait_for(timeout=90_000)
        title = page.locator(".jp-MarkdownOutput h1").first
        title.wait_for(timeout=30_000)
        assert "00 · A tour" in title.inner_text()
        time.sleep(1.0)  # an error dialog would have appeared by now
        dialogs = page.locator(".jp-Dialog")
        assert not dialogs.count(), f"an error dialog is shown: {dialogs.first.inner_text()!r}"
        page.screenshot(path=str(screenshot_dir / "start-url-lesson00.png"))

        # Lab renders markdown as it scrolls into view, and rewrites the relative link to /files/<path>.
        link = page.locator('.jp-MarkdownOutput a[href*="/files/exercises/00_tour.ipynb"]').first
        for _ in range(120):
            if link.count():
                break
            page.evaluate("() => { const s = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-WindowedPanel-outer');"
                          " if (s) s.scrollTop += 600; }")
            time.sleep(0.25)
        assert link.count(), "lesson 00 has no rendered link to exercises/00_tour.ipynb"
        link.scroll_into_view_if_needed(timeout=30_000)
        link.click()
        tab = page.locator(".lm-TabBar-tab", has_text="00_tour.ipynb")
        page.wait_for_function("() => document.querySelectorAll('.jp-NotebookPanel').length >= 2", timeout=60_000)
        assert tab.count() >= 2  # lessons/00_tour.ipynb and exercises/00_tour.ipynb
        exercise = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden)")
        exercise.locator(".jp-Cell").first.wait_for(timeout=60_000)
        page.wait_for_function("() => Array.from(document.querySelectorAll('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-Cell'))"
                               ".some(c => c.innerText.includes('check_all'))", timeout=60_000)
        assert not page.locator(".jp-Dialog").count(), "opening the exercise link showed a dialog"
        page.screenshot(path=str(screenshot_dir / "start-url-exercise.png"))

        # The lesson runs and a widget renders on this server (the driver the widget tests use).
        server = SimpleNamespace(url=url.split("/lab/")[0], token=url.split("token=")[1], log_tail=lambda n=15: "")
        run = NotebookRun(server, browser, "lessons/00_tour.ipynb", screenshot_dir, "start-url-run")
        run.open()
        run.run_all()
        run.wait_idle_after_run(240)
        run.wait("a widget's plotly figure to render", lambda: run.explorer_cells().count() and run.rendered(run.explorer_cells().first), 60)
    except Exception:
        page.screenshot(path=str(screenshot_dir / "start-url-FAILED.png"))
        raise
    finally:
        browser.stop()
        _stop(proc)
