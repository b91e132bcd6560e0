"""Delivery: Binder's environment.yml, the Colab setup cell in every lesson, and the badges.

The repository is named in one place, ``lmlab.course.notebooks.GITHUB_REPO``; everything else (README badges,
lesson badges, the Colab cell) is made from it with ``colab_badge`` / ``colab_url`` / ``binder_url``
and these tests fail when a copy drifts from it.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
import types

import jupytext
import nbformat
import pytest
import yaml

from lmlab.course import notebooks as course
from lmlab.course.notebooks import COLAB_SETUP_SOURCE, GITHUB_REPO, ROOT, binder_url, colab_badge, colab_url

LESSONS = course.lesson_sources()
CUDA_ONLY = re.compile(r"cuda|cudnn|cublas|nccl|nvidia|cupy|triton|\+cu\d", re.I)
TEST_ONLY = {"pytest", "pytest-xdist", "pytest-timeout", "nbval", "playwright", "hypothesis"}


def _name(spec: str) -> str:
    return re.split(r"[\s<>=!~\[@;]", spec.strip(), maxsplit=1)[0].lower().replace("_", "-")


# ----------------------------------------------------------------------------- Binder


@pytest.fixture(scope="module")
def env():
    path = ROOT / "environment.yml"
    assert path.exists(), "environment.yml (Binder) is missing at the top of the repository"
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def _conda_and_pip(env) -> tuple[list[str], list[str]]:
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    pip = [x for d in env["dependencies"] if isinstance(d, dict) for x in d.get("pip", [])]
    return conda, pip


def test_environment_is_conda_forge_python_311(env):
    assert env["channels"] == ["conda-forge"], "only conda-forge: no defaults/nvidia/pytorch channels"
    conda, _ = _conda_and_pip(env)
    assert "python=3.11" in conda
    assert "pip" in conda
    names = {_name(d) for d in conda}
    assert {"jupyterlab", "ipywidgets", "plotly"} <= names, "JupyterLab and the widget/plotly extensions"


def test_environment_torch_is_cpu_only(env):
    conda, pip = _conda_and_pip(env)
    assert not {"pytorch", "torch", "pytorch-cuda", "cudatoolkit"} & {_name(d) for d in conda}, \
        "torch must come from PyTorch's CPU wheel index, not conda (which may pick a CUDA build)"
    index_lines = [p for p in pip if p.startswith(("--extra-index-url", "--index-url"))]
    assert index_lines and all(line.split()[-1] == "https://download.pytorch.org/whl/cpu" for line in index_lines)
    torch = [p for p in pip if _name(p) == "torch"]
    assert len(torch) == 1 and torch[0].endswith("+cpu"), f"pin a +cpu torch wheel, got {torch}"
    for dep in conda + pip:
        if not dep.startswith("--"):
            assert not CUDA_ONLY.search(dep), f"CUDA-only package in environment.yml: {dep}"


def test_environment_is_lean_and_covers_the_package(env):
    conda, pip = _conda_and_pip(env)
    names = {_name(d) for d in conda + pip if not d.startswith("--")}
    assert not names & TEST_ONLY, f"test-only packages make the Binder image heavier: {names & TEST_ONLY}"
    assert len(names) <= 15, f"keep the Binder image lean (~2 GB RAM): {sorted(names)}"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    needed = {_name(d) for d in project["dependencies"]}
    assert needed <= names, f"postBuild installs lmlab with --no-deps: add {sorted(needed - names)} to environment.yml"


def test_binder_installs_the_package():
    """repo2docker builds environment.yml before copying the repository, so postBuild installs lmlab."""
    post = ROOT / "postBuild"
    assert post.exists() and post.stat().st_mode & 0o111, "an executable top-level postBuild"
    lines = [line.strip() for line in post.read_text().splitlines() if line.strip() and not line.startswith("#")]
    install = [line for line in lines if re.search(r"pip install\b.*(\s-e \.|\s\.)$", line)]
    assert install, "postBuild must `pip install -e .` (or `.`)"
    assert all("--no-deps" in line for line in install), "--no-deps: never let pip replace the CPU torch"
    for d in ("binder", ".binder"):
        assert not (ROOT / d).exists(), f"{d}/ would make repo2docker ignore the top-level environment.yml"


# ----------------------------------------------------------------------------- Colab


def test_colab_template_shape():
    src = COLAB_SETUP_SOURCE
    assert 'if "google.colab" in sys.modules:' in src
    assert f"git+https://github.com/{GITHUB_REPO}" in src
    assert "enable_custom_widget_manager()" in src
    assert re.search(r"pio\.renderers\.default\s*=\s*\"colab\"", src)
    pip_line = next(line for line in src.splitlines() if "pip" in line and "install" in line)
    assert "torch" not in pip_line and not re.search(r"--upgrade|\s-U\b|--force-reinstall", pip_line), \
        "the Colab cell must not (re)install torch"


def test_colab_keeps_colabs_torch():
    """``pip install lmlab`` on Colab keeps Colab's torch: the requirement is a lower bound only."""
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["dependencies"]
    torch = [d for d in deps if _name(d) == "torch"]
    assert len(torch) == 1 and re.fullmatch(r"torch\s*>=\s*[\d.]+", torch[0]), torch


def test_colab_cell_does_nothing_outside_colab(monkeypatch):
    import plotly.io as pio

    before = pio.renderers.default
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail(f"ran {a} outside Colab"))
    exec(compile(COLAB_SETUP_SOURCE, "<colab cell>", "exec"), {})
    assert pio.renderers.default == before


def test_colab_cell_on_colab(monkeypatch):
    """With a fake ``google.colab``: installs lmlab from the repository, enables widgets, sets plotly."""
    import plotly.io as pio

    calls, enabled = [], []
    output = types.SimpleNamespace(enable_custom_widget_manager=lambda: enabled.append(True))
    colab = types.ModuleType("google.colab")
    colab.output = output
    google = types.ModuleType("google")
    google.colab = colab
    monkeypatch.setitem(sys.modules, "google", google)
    monkeypatch.setitem(sys.modules, "google.colab", colab)
    monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: calls.append((cmd, kw)))
    before = pio.renderers.default
    try:
        exec(compile(COLAB_SETUP_SOURCE, "<colab cell>", "exec"), {})
        assert pio.renderers.default == "colab"
    finally:
        pio.renderers.default = before
    assert len(calls) == 1
    cmd, kw = calls[0]
    assert cmd[:4] == [sys.executable, "-m", "pip", "install"] and kw.get("check") is True
    assert f"lmlab @ git+https://github.com/{GITHUB_REPO}" in cmd
    assert not any("torch" in c for c in cmd)
    assert enabled == [True]


def _cells(path):
    if path.suffix == ".py":
        return jupytext.read(path, fmt="py:percent").cells
    return nbformat.read(path, as_version=4).cells


@pytest.mark.parametrize("path", [p for src in LESSONS for p in (src, src.with_suffix(".ipynb"))],
                         ids=lambda p: p.name)
def test_every_lesson_starts_with_the_colab_cell(path):
    assert path.exists(), f"{path.name} missing: run `python -m lmlab.course.notebooks build`"
    first_code = next(c for c in _cells(path) if c.cell_type == "code")
    assert first_code.source == COLAB_SETUP_SOURCE, (
        f"{path.name}: the first code cell must be exactly lmlab.course.notebooks.COLAB_SETUP_SOURCE (the lesson template)")


# ----------------------------------------------------------------------------- badges and the one repository name


def test_urls_have_the_expected_shape():
    assert re.fullmatch(r"[\w.-]+/[\w.-]+", GITHUB_REPO)
    nb = "lessons/00_tour.ipynb"
    assert colab_url(nb) == f"https://colab.research.google.com/github/{GITHUB_REPO}/blob/{course.BRANCH}/{nb}"
    assert binder_url(nb) == f"https://mybinder.org/v2/gh/{GITHUB_REPO}/{course.BRANCH}?urlpath=lab/tree/{nb}"
    assert colab_badge(nb) == f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({colab_url(nb)})"


@pytest.mark.parametrize("src", LESSONS, ids=lambda p: p.stem)
def test_every_lesson_has_a_colab_badge_at_the_top(src):
    cells = _cells(src)
    first_code = next(i for i, c in enumerate(cells) if c.cell_type == "code")
    top = "\n".join(c.source for c in cells[:first_code] if c.cell_type == "markdown")
    assert colab_badge(f"lessons/{src.stem}.ipynb") in top, (
        f"{src.name}: put lmlab.course.notebooks.colab_badge('lessons/{src.stem}.ipynb') in the markdown above the first code cell")


@pytest.fixture(scope="module")
def readme() -> str:
    return (ROOT / "README.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("src", LESSONS, ids=lambda p: p.stem)
def test_readme_lesson_table_has_a_colab_badge_per_lesson(readme, src):
    nb = f"lessons/{src.stem}.ipynb"
    rows = [line for line in readme.splitlines() if line.startswith("|") and f"({nb})" in line]
    assert rows, f"README.md: no lesson-table row links ({nb})"
    assert any(colab_badge(nb) in row for row in rows), f"README.md: the row for {nb} needs lmlab.course.notebooks.colab_badge({nb!r})"


def test_readme_has_the_binder_badge(readme):
    badge = f"[![Binder](https://mybinder.org/badge_logo.svg)]({binder_url()}"
    assert badge in readme, f"README.md needs a Binder badge starting with: {badge}"


def test_repository_is_named_consistently():
    """Every GitHub/Colab/Binder link in README and lessons points at GITHUB_REPO, and the only
    Python source that spells it out is lmlab/course/notebooks.py."""
    link = re.compile(r"(?:github\.com/|colab\.research\.google\.com/github/|mybinder\.org/v2/gh/)([\w.-]+/[\w.-]+?)(?:\.git)?(?=[/?)\s\"'#]|$)")
    files = [ROOT / "README.md", *LESSONS, *(p.with_suffix(".ipynb") for p in LESSONS)]
    for path in files:
        for repo in link.findall(path.read_text(encoding="utf-8")):
            assert repo == GITHUB_REPO, f"{path.name} links {repo!r}, not lmlab.course.notebooks.GITHUB_REPO={GITHUB_REPO!r}"
    spelled = [p.relative_to(ROOT) for p in (ROOT / "lmlab").rglob("*.py") if GITHUB_REPO in p.read_text(encoding="utf-8")]
    assert spelled == [course.Path("lmlab/course/notebooks.py")], f"the repository is named outside lmlab/course/notebooks.py: {spelled}"
