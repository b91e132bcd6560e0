"""Course plumbing: where the repository lives, the lesson template's Colab cell, and pairing.

Lessons and solutions are authored as jupytext percent ``.py`` files; their ``.ipynb`` twins are
generated (without outputs) so that Colab and Binder can open them. Exercises are generated from
solutions by :mod:`lmlab.grading.exercise_notebooks`. One command refreshes everything::

    python -m lmlab.course.notebooks build      # write every .ipynb (and exercises/) from the .py sources
    python -m lmlab.course.notebooks check      # exit 1 if anything committed is out of date
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lmlab.grading.exercise_notebooks import expected_exercise_files

__all__ = [
    "GITHUB_REPO", "ROOT", "COLAB_SETUP_SOURCE", "colab_url", "binder_url", "colab_badge",
    "lesson_sources", "notebook_sources", "ipynb_text", "build", "check",
]

# The one place that names the public repository. Badges, the Colab cell and the README use it.
GITHUB_REPO = "lmlab-course/lmlab"
BRANCH = "main"
ROOT = Path(__file__).resolve().parents[2]  # the checkout (when lmlab is installed with -e)

COLAB_SETUP_SOURCE = f'''# Colab setup: install lmlab (Colab already has torch, so it is not reinstalled) and turn on
# widgets. Anywhere else this cell does nothing.
import sys

if "google.colab" in sys.modules:
    import subprocess

    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "lmlab @ git+https://github.com/{GITHUB_REPO}"], check=True)
    from google.colab import output

    output.enable_custom_widget_manager()
    import plotly.io as pio

    pio.renderers.default = "colab"'''


def colab_url(notebook: str) -> str:
    """``notebook`` is a path inside the repository, e.g. ``lessons/00_tour.ipynb``."""
    return f"https://colab.research.google.com/github/{GITHUB_REPO}/blob/{BRANCH}/{notebook}"


def binder_url(notebook: str | None = None) -> str:
    url = f"https://mybinder.org/v2/gh/{GITHUB_REPO}/{BRANCH}"
    return url + (f"?urlpath=lab/tree/{notebook}" if notebook else "")


def colab_badge(notebook: str) -> str:
    return f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({colab_url(notebook)})"


def lesson_sources(root: Path = ROOT) -> list[Path]:
    return sorted((root / "lessons").glob("[0-9][0-9]_*.py"))


def notebook_sources(root: Path = ROOT) -> list[Path]:
    """Every hand-written jupytext source: lessons and solutions (exercises are generated)."""
    return lesson_sources(root) + sorted((root / "solutions").glob("[0-9][0-9]_*.py"))


def ipynb_text(py_text: str) -> str:
    """The committed ``.ipynb`` for a jupytext percent source: no outputs, stable metadata."""
    import jupytext

    nb = jupytext.reads(py_text, fmt="py:percent")
    for i, cell in enumerate(nb.cells):  # stable cell ids: the same source gives the same file
        cell.id = f"cell-{i:03d}"
    nb.metadata.pop("jupytext", None)
    nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    nb.metadata["language_info"] = {"name": "python"}
    return jupytext.writes(nb, fmt="ipynb")


def _expected_files(root: Path) -> dict[Path, str]:
    """Every generated file and the text it should have."""
    files: dict[Path, str] = {}
    for src in notebook_sources(root):
        files[src.with_suffix(".ipynb")] = ipynb_text(src.read_text(encoding="utf-8"))
    for path, text in expected_exercise_files(root).items():
        files[path] = text
        if path.suffix == ".py":
            files[path.with_suffix(".ipynb")] = ipynb_text(text)
    return files


def build(root: Path = ROOT) -> list[Path]:
    """Write every generated file; return those that changed."""
    changed = []
    for path, text in _expected_files(root).items():
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            changed.append(path)
    return changed


def check(root: Path = ROOT) -> list[Path]:
    """Generated files that are missing or differ from what ``build`` would write."""
    return [p for p, text in _expected_files(root).items() if not p.exists() or p.read_text(encoding="utf-8") != text]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lmlab.course.notebooks")
    parser.add_argument("action", choices=["build", "check"])
    parser.add_argument("--root", type=Path, default=ROOT)
    args = parser.parse_args(argv)
    if args.action == "build":
        for p in build(args.root):
            print(f"wrote {p.relative_to(args.root)}")
        return 0
    stale = check(args.root)
    for p in stale:
        print(f"out of date: {p.relative_to(args.root)} (run: python -m lmlab.course.notebooks build)")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
