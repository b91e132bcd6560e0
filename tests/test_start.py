"""``tools/lab.sh`` (the part of ``tools/start.sh`` that opens the course) starts JupyterLab, as root too.

The test runs the launch script as start.sh does (without reinstalling anything), reads the URL it
prints, reaches the server's ``/api/status`` with that token, and checks that the printed notebook path is
the server's (the repository is its root: lessons/, exercises/ and solutions/ are all reachable). Jupyter's settings, runtime files and
workspaces go to a temporary folder; ``--no-browser`` keeps it headless. Bounded: 90 s to start.
"""

from __future__ import annotations

import json
import os
import re
import selectors
import signal
import subprocess
import time
import urllib.request

from lmlab.course.notebooks import ROOT

START_LIMIT = 90.0


def test_lab_script_opens_the_course_and_prints_where(tmp_path):
    env = dict(os.environ, LMLAB_PORT="0", LMLAB_TOKEN="lmlabtesttoken", JUPYTER_CONFIG_DIR=str(tmp_path / "config"),
               JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"), JUPYTERLAB_SETTINGS_DIR=str(tmp_path / "settings"),
               JUPYTERLAB_WORKSPACES_DIR=str(tmp_path / "workspaces"), JUPYTER_DATA_DIR=str(tmp_path / "data"))
    proc = subprocess.Popen(["bash", str(ROOT / "tools" / "lab.sh"), "lessons/00_tour.ipynb", "--no-browser"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        deadline, text, url, status = time.monotonic() + START_LIMIT, "", None, None
        while time.monotonic() < deadline and status is None:
            if sel.select(timeout=0.5):
                chunk = os.read(proc.stdout.fileno(), 65536).decode(errors="replace")
                if not chunk:
                    break
                text += chunk
            m = re.search(r"The course opens at: (http://\S+)", text)
            url = m.group(1) if m else None
            if url:
                base = url.split("/lab/")[0]
                try:
                    with urllib.request.urlopen(f"{base}/api/status?token=lmlabtesttoken", timeout=2) as r:
                        status = json.loads(r.read())
                except OSError:
                    time.sleep(0.3)
        assert url, f"no URL printed:\n{text[-2000:]}"
        assert "token=lmlabtesttoken" in url and url.endswith("?token=lmlabtesttoken")
        assert status is not None, f"the server did not answer /api/status in {START_LIMIT:g} s:\n{text[-2000:]}"
        assert "started" in status
        path = url.split("/lab/tree/")[1].split("?")[0]
        with urllib.request.urlopen(f"{base}/api/contents/{path}?content=0&token=lmlabtesttoken", timeout=10) as r:
            assert json.loads(r.read())["type"] == "notebook"  # the printed address opens this notebook
        with urllib.request.urlopen(f"{base}/api/contents?token=lmlabtesttoken", timeout=10) as r:
            names = {item["name"] for item in json.loads(r.read())["content"]}
        assert {"lessons", "exercises", "solutions"} <= names, names  # the file browser shows the whole course
        if os.getuid() == 0:
            assert "--allow-root" in text
        assert "Running as root is not recommended" not in text or "--allow-root" in text
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_lab_script_names_a_missing_notebook():
    out = subprocess.run(["bash", str(ROOT / "tools" / "lab.sh"), "lessons/99_nothing.ipynb", "--no-browser"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "no notebook at lessons/99_nothing.ipynb" in out.stderr
