"""Fixtures for the real-browser tests: one JupyterLab server and one Chromium per test module.

Select these tests with ``-m browser``, skip them with ``-m 'not browser'``. Without Chromium they
skip with the reason, except under CI (env ``CI`` set to anything but ``false``/``0``), where a missing
browser is a failure. Screenshots go to a temporary directory (printed, and attached to each test's
report); with ``LMLAB_ARTIFACTS`` set they are also copied to ``$LMLAB_ARTIFACTS/screenshots``
(``LMLAB_ARTIFACTS=1`` means ``artifacts/`` in the checkout).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from labdriver import Browser, LabServer, find_chromium  # noqa: E402


def pytest_collection_modifyitems(config, items):
    """Every test here that needs Chromium is a ``browser`` test."""
    for item in items:
        if Path(str(item.fspath)).resolve().is_relative_to(HERE) and "chromium" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.browser)


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _missing(reason: str):
    if in_ci():
        pytest.fail(f"{reason} — CI is set, so the browser tests must run (tools/test.sh installs Debian's chromium when run as root).",
                    pytrace=False)
    pytest.skip(f"{reason}. Install it (Debian/Ubuntu: sudo apt-get install chromium) or run tools/test.sh as root.")


@pytest.fixture(scope="session")
def chromium() -> str:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        _missing("Python Playwright is not installed (pip install -e '.[test]')")
    path = find_chromium()
    if path is None:
        _missing("Chromium not found (looked for $LMLAB_CHROMIUM, chromium, chromium-browser, google-chrome on PATH)")
    return path


def artifacts_dir() -> Path | None:
    value = os.environ.get("LMLAB_ARTIFACTS", "").strip()
    if not value or value.lower() in ("0", "false", "no"):
        return None
    return ROOT / "artifacts" if value.lower() in ("1", "true", "yes") else Path(value)


@pytest.fixture(scope="session")
def screenshot_dir():
    path = Path(tempfile.mkdtemp(prefix="lmlab-screenshots-"))
    print(f"\nbrowser test screenshots: {path}")
    yield path
    dest = artifacts_dir()
    if dest is not None and any(path.iterdir()):
        (dest / "screenshots").mkdir(parents=True, exist_ok=True)
        shutil.copytree(path, dest / "screenshots", dirs_exist_ok=True)


@pytest.fixture(scope="module")
def lab_root():
    path = Path(tempfile.mkdtemp(prefix="lmlab-lab-root-"))
    (path / "lessons").mkdir()
    for nb in sorted((ROOT / "lessons").glob("[0-9][0-9]_*.ipynb")):
        shutil.copy(nb, path / "lessons" / nb.name)  # throw-away copies: Lab autosaves
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def lab_server(chromium, lab_root):
    server = LabServer(lab_root)
    server.start()
    try:
        yield server
    finally:
        survivors = server.stop()
        shutil.rmtree(server._tmp, ignore_errors=True)
        assert not survivors, f"processes of the JupyterLab server survived SIGKILL: {survivors}"


@pytest.fixture(scope="module")
def browser(chromium):
    b = Browser(chromium)
    try:
        b.start()
        yield b
    finally:
        survivors = b.stop()
        assert not survivors, f"browser processes survived SIGKILL: {survivors}"
