"""Drive a real JupyterLab in Debian's Chromium (Python Playwright): start, run notebooks, poke widgets.

Everything here is bounded in time and cleans up after itself:

- :class:`LabServer` starts ``jupyter lab`` on a free 127.0.0.1 port with a fixed token and
  throw-away config/runtime/settings/workspace directories, in its own process group; ``stop()``
  asks the server to shut down, then kills its process group and any kernel it spawned (kernels
  live in their own sessions), by pid.
- :class:`Browser` starts Playwright + Chromium with every non-local request aborted; ``stop()``
  closes them and kills, by pid, any process Playwright left behind.
- :class:`NotebookRun` opens a notebook, waits for the kernel, runs all cells and finds the
  widgets; every wait names what it waited for and saves the last screenshot when it fails.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


class LabError(AssertionError):
    """A browser-test step failed; the message says what it waited for and where the screenshot is."""


class LabStartError(LabError):
    pass


class KernelDied(LabError):
    pass


class CellError(LabError):
    pass


class WaitTimeout(LabError):
    pass


# ----------------------------------------------------------------------------- processes


def _ppid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read().decode(errors="replace")
        return int(data.rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (Linux /proc), children first."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            parent = _ppid(int(entry))
            if parent is not None:
                children.setdefault(parent, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().decode(errors="replace").rsplit(")", 1)[1].split()[0]
        return state != "Z"
    except (OSError, IndexError):
        return False


def kill_pids(pids: list[int], grace: float = 3.0) -> list[int]:
    """SIGTERM then SIGKILL the given pids (only those still alive); return those that survived."""
    pids = [p for p in pids if p != os.getpid() and alive(p)]
    for p in pids:
        try:
            os.kill(p, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(0.1)
    for p in pids:
        if alive(p):
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
    time.sleep(0.2)
    return [p for p in pids if alive(p)]


def find_chromium() -> str | None:
    explicit = os.environ.get("LMLAB_CHROMIUM")
    if explicit:
        return explicit if Path(explicit).exists() else None
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ----------------------------------------------------------------------------- JupyterLab

LAB_SETTINGS = {
    # render every cell (no virtual scrolling), so widgets far down exist in the DOM
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    # no news / update toasts over the notebook
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false", "checkForUpdates": False},
}


@dataclass
class LabServer:
    root_dir: Path
    start_timeout: float = 60.0
    extra_args: list[str] = field(default_factory=list)
    port: int | None = None
    token: str = "lmlab-browser-test-token"
    proc: subprocess.Popen | None = None
    _tmp: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        assert self._tmp is not None
        return self._tmp / "jupyterlab.log"

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def api(self, method: str, path: str, timeout: float = 5.0):
        req = urllib.request.Request(f"{self.url}{path}", method=method, headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(req, timeout=timeout) as r:
            body = r.read()
        return json.loads(body) if body else None

    def start(self) -> "LabServer":
        self._tmp = Path(tempfile.mkdtemp(prefix="lmlab-lab-"))
        env = dict(os.environ)
        for var in ("JUPYTER_CONFIG_DIR", "JUPYTER_RUNTIME_DIR", "JUPYTERLAB_SETTINGS_DIR", "JUPYTERLAB_WORKSPACES_DIR"):
            d = self._tmp / var.lower()
            d.mkdir()
            env[var] = str(d)
        settings = self._tmp / "jupyterlab_settings_dir"
        for rel, value in LAB_SETTINGS.items():
            p = settings / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(json.dumps(value))
        env["PYTHONUNBUFFERED"] = "1"
        # one OpenMP thread per kernel: with xdist, two workers' torch kernels on 2 cores otherwise
        # oversubscribe and a 30 s lesson can take 10 minutes
        env.setdefault("OMP_NUM_THREADS", "1")
        self.port = self.port or free_port()
        cmd = [
            sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root",
            "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={self.port}", "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={self.token}", f"--ServerApp.root_dir={self.root_dir}",
            "--ServerApp.open_browser=False", "--LabApp.news_url=None",
            *self.extra_args,
        ]
        log = open(self.log_path, "wb")
        try:
            self.proc = subprocess.Popen(cmd, cwd=self.root_dir, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        finally:
            log.close()
        deadline = time.monotonic() + self.start_timeout
        while True:
            if self.proc.poll() is not None:
                code = self.proc.returncode
                self.stop()
                raise LabStartError(f"JupyterLab exited with code {code} before it was ready "
                                    f"(waited for {self.url}/api/status).\nLast log lines:\n{self.log_tail()}")
            try:
                self.api("GET", "/api/status", timeout=2)
                return self
            except (urllib.error.URLError, OSError, ValueError):
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise LabStartError(f"JupyterLab did not answer {self.url}/api/status within {self.start_timeout:.0f} s."
                                    f"\nLast log lines:\n{self.log_tail()}")
            time.sleep(0.25)

    def shutdown_kernels(self) -> None:
        try:
            for s in self.api("GET", "/api/sessions") or []:
                self.api("DELETE", f"/api/sessions/{s['id']}", timeout=10)
        except Exception:  # best effort: stop() kills whatever is left
            pass

    def stop(self) -> list[int]:
        """Stop the server, its kernels and anything else it started; return pids that survived."""
        if self.proc is None:
            return []
        pid = self.proc.pid
        tree = descendants(pid)
        if self.proc.poll() is None:
            try:
                self.api("POST", "/api/shutdown", timeout=3)
                self.proc.wait(timeout=8)
            except Exception:
                pass
        if self.proc.poll() is None:
            try:
                os.killpg(pid, signal.SIGTERM)
                self.proc.wait(timeout=5)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        if self.proc.poll() is None:
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=5)
        survivors = kill_pids(tree + descendants(pid))
        self.proc = None
        return survivors

    def __enter__(self) -> "LabServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)


# ----------------------------------------------------------------------------- browser


class Browser:
    """Playwright's Chromium, local traffic only. ``browser.new_page()`` for each notebook."""

    def __init__(self, executable: str, playwright=None):
        self.executable = executable
        self._shared_pw = playwright  # Playwright's sync API allows one instance per thread: share it
        self._pw = None
        self.browser = None
        self.context = None
        self._pids: list[int] = []

    def start(self) -> "Browser":
        from playwright.sync_api import sync_playwright

        before = set(descendants(os.getpid()))
        try:
            self._pw = self._shared_pw or sync_playwright().start()
            self.browser = self._pw.chromium.launch(
                executable_path=self.executable, headless=True,
                args=["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"], timeout=60_000)
            self.context = self.browser.new_context(viewport={"width": 1280, "height": 1000})
            self.context.route(lambda url: not url.startswith(("http://127.0.0.1", "ws://127.0.0.1", "data:", "blob:", "about:", "file:")),
                               lambda route: route.abort())
        finally:
            self._pids = [p for p in descendants(os.getpid()) if p not in before]
        return self

    def new_page(self):
        return self.context.new_page()

    def stop(self) -> list[int]:
        pids = self._pids + [p for p in descendants(os.getpid()) if p in set(self._pids)]
        for closer in (self.context, self.browser):
            try:
                if closer is not None:
                    closer.close()
            except Exception:
                pass
        try:
            if self._pw is not None and self._shared_pw is None:
                self._pw.stop()
        except Exception:
            pass
        self.context = self.browser = self._pw = None
        return kill_pids(pids)

    def __enter__(self) -> "Browser":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


# ----------------------------------------------------------------------------- a notebook in the page

# A figure's data, as a string: trace types and their x/y/z/text values (typed arrays made plain).
FIGURE_SIGNATURE_JS = """
(root) => Array.from(root.querySelectorAll('.widget-output .js-plotly-plot')).map(gd =>
  JSON.stringify((gd.data || []).map(t => ({type: t.type, x: t.x, y: t.y, z: t.z, text: t.text,
      values: t.values, labels: t.labels})),
    (k, v) => (ArrayBuffer.isView(v) ? Array.from(v) : v))).join('|')
"""

RENDERED_PLOTS_JS = """
(root) => Array.from(root.querySelectorAll('.widget-output .js-plotly-plot')).filter(gd =>
  gd._fullLayout && (gd.data || []).length > 0 && gd.querySelector('.main-svg')).length
"""

ERROR_TEXT_JS = """
() => {
  const outs = Array.from(document.querySelectorAll('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]'));
  const bad = outs.map(o => o.innerText).filter(t => t.includes('Traceback (most recent call last)') || /^\\w*(Error|Exception)\\b/m.test(t));
  return bad.length ? bad[0].slice(-3000) : null;
}
"""


class NotebookRun:
    """One notebook open in one page. Every wait is bounded and fails with a screenshot."""

    def __init__(self, server: LabServer, browser: Browser, notebook: str, shots: Path, name: str):
        self.server, self.notebook, self.shots, self.name = server, notebook, shots, name
        self.page = browser.new_page()
        self.last_screenshot: Path | None = None
        self.console: list[str] = []
        self.page.on("console", lambda m: self.console.append(f"{m.type}: {m.text}") if m.type == "error" else None)

    # -- evidence
    def screenshot(self, label: str, element=None) -> Path:
        self.shots.mkdir(parents=True, exist_ok=True)
        path = self.shots / f"{self.name}-{label}.png"
        try:
            (element or self.page).screenshot(path=str(path), timeout=15_000, **({} if element else {"full_page": False}))
            self.last_screenshot = path
        except Exception as e:  # a screenshot must never hide the real failure
            path = Path(f"(screenshot failed: {e})")
        return path

    def fail(self, kind: type[LabError], what: str, waited: float | None = None, detail: str = "") -> None:
        shot = self.screenshot("FAILED")
        status = self.status_text()
        msg = (f"[{self.name}] {'timed out after %.0f s ' % waited if waited is not None else ''}waiting for {what}."
               f"\n  status bar: {status!r}\n  last screenshot: {shot}")
        if detail:
            msg += f"\n  {detail}"
        if self.console:
            msg += "\n  browser console errors:\n    " + "\n    ".join(self.console[-5:])
        msg += f"\n  server log tail:\n{self.server.log_tail(15)}"
        raise kind(msg)

    def status_text(self) -> str:
        try:
            return self.page.locator("#jp-main-statusbar").inner_text(timeout=2000).replace("\n", " ")
        except Exception:
            return "(no status bar)"

    def check_faults(self) -> None:
        """Fail at once on a dead kernel or a cell error instead of waiting out a timeout."""
        status = self.status_text()
        died = self.page.locator(".jp-Dialog").filter(has_text="died")
        if "Dead" in status or "Restarting" in status or died.count():
            self.fail(KernelDied, "the notebook to run, but the kernel died", detail="(a cell crashed the kernel or it ran out of memory)")
        err = self.page.evaluate(ERROR_TEXT_JS)
        if err:
            self.fail(CellError, "the notebook to run, but a cell raised an error", detail="cell error:\n" + err)

    def wait(self, what: str, predicate, timeout: float, faults: bool = True, poll: float = 0.5):
        start = time.monotonic()
        while True:
            try:
                value = predicate()
            except LabError:
                raise
            except Exception:  # DOM in flux (element replaced between query and read)
                value = None
            if value:
                return value
            if faults:
                self.check_faults()
            if time.monotonic() - start > timeout:
                self.fail(WaitTimeout, what, waited=timeout)
            time.sleep(poll)

    # -- steps
    def open(self, timeout: float = 90) -> None:
        self.page.goto(f"{self.server.url}/lab/tree/{self.notebook}?reset&token={self.server.token}", timeout=timeout * 1000)
        self.wait("JupyterLab to open the notebook", lambda: self.page.locator(".jp-Notebook .jp-Cell").count(), timeout, faults=False)
        self.wait("the kernel to be ready (status bar '(ipykernel) | Idle')",
                  lambda: "| Idle" in self.status_text(), timeout, faults=False)

    def run_all(self, timeout: float = 30) -> None:
        self.page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click(timeout=timeout * 1000)
        self.page.locator('li.lm-Menu-item[data-command="runmenu:run-all"]').click(timeout=timeout * 1000)

    def wait_idle_after_run(self, timeout: float) -> None:
        """Every code cell has an execution count and the kernel is idle."""
        def done():
            pending = self.page.evaluate("""() => Array.from(document.querySelectorAll('.jp-CodeCell .jp-InputArea-prompt'))
                .filter(p => !/\\[\\d+\\]/.test(p.innerText)).length""")
            return pending == 0 and "| Idle" in self.status_text()
        self.wait("every cell to finish (all prompts numbered, kernel idle)", done, timeout)

    def explorer_cells(self):
        """Code cells whose output holds a widget with a plotly figure inside an ipywidgets Output."""
        return self.page.locator(".jp-CodeCell").filter(has=self.page.locator(".jp-OutputArea-output .widget-output .js-plotly-plot"))

    def signature(self, cell) -> str:
        return cell.evaluate(FIGURE_SIGNATURE_JS)

    def rendered(self, cell) -> int:
        return cell.evaluate(RENDERED_PLOTS_JS)

    def close(self) -> None:
        try:
            self.page.close()
        except Exception:
            pass


# ----------------------------------------------------------------------------- controls


def controls_in(cell) -> list[tuple[str, object]]:
    """(kind, locator) for every control in a widget cell: sliders, text boxes, dropdowns, checkboxes."""
    found = []
    for kind, selector in (("slider", ".widget-slider"), ("text", ".widget-text"), ("dropdown", ".widget-dropdown"),
                           ("checkbox", ".widget-checkbox")):
        loc = cell.locator(f".jp-OutputArea-output {selector}")
        found += [(kind, loc.nth(i)) for i in range(loc.count())]
    return found


def describe(control) -> str:
    try:
        return control.locator(".widget-label").first.inner_text(timeout=1000).strip() or "?"
    except Exception:
        return "?"


SLIDER_STEPS = (1, 3, 8)  # key presses per attempt


def change(kind: str, control, attempt: int = 0):
    """Change one control the way a learner would; return (description, undo) where ``undo()``
    puts it back, so that each control is tried from the lesson's starting state. A later
    ``attempt`` changes it further (another option, more slider steps)."""
    if kind == "slider":
        readout = control.locator(".widget-readout")
        before = readout.inner_text()
        handle = control.locator(".noUi-handle").first
        handle.focus()
        n = SLIDER_STEPS[min(attempt, len(SLIDER_STEPS) - 1)]
        for _ in range(n):
            handle.press("ArrowRight")
        time.sleep(0.2)
        keys = ("ArrowLeft",) * n
        if readout.inner_text() == before:  # at the maximum: go the other way
            for _ in range(n):
                handle.press("ArrowLeft")
            keys = ("ArrowRight",) * n

        def undo():
            handle.focus()
            for key in keys:
                handle.press(key)
        return f"slider {before} -> {readout.inner_text()}", undo
    if kind == "dropdown":
        select = control.locator("select")
        options = select.evaluate("s => Array.from(s.options).map(o => o.value)")
        current = select.evaluate("s => s.selectedIndex")
        new = (current + 1 + attempt) % len(options)
        if new == current:
            new = (new + 1) % len(options)
        select.select_option(index=new)
        return f"dropdown {options[current]!r} -> {options[new]!r}", lambda: select.select_option(index=current)
    if kind == "text":
        box = control.locator("input, textarea").first
        old = box.input_value()
        if box.get_attribute("type") == "number":
            new = str(float(old) + 1 + attempt)
            new = new[:-2] if new.endswith(".0") and "." not in old else new
        else:
            new = old + "x" * (1 + attempt)
        box.fill(new)
        box.press("Enter")

        def undo():
            box.fill(old)
            box.press("Enter")
        return f"text {old!r} -> {new!r}", undo
    if kind == "checkbox":
        box = control.locator("input").first
        box.click()
        return "checkbox toggled", box.click
    raise ValueError(kind)
