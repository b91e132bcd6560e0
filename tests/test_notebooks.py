"""Notebook hygiene: every .ipynb is the output-free twin of its jupytext .py source."""

import json

import jupytext
import pytest

from lmlab.course import notebooks as course

SOURCES = course.notebook_sources()


def test_there_are_lessons():
    names = [p.name for p in course.lesson_sources()]
    assert "00_tour.py" in names


@pytest.mark.parametrize("src", SOURCES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_ipynb_pair_in_sync(src):
    nb_path = src.with_suffix(".ipynb")
    assert nb_path.exists(), f"{nb_path} is missing: run `python -m lmlab.course.notebooks build`"
    expected = course.ipynb_text(src.read_text(encoding="utf-8"))
    assert nb_path.read_text(encoding="utf-8") == expected, f"{nb_path.name} is out of sync with {src.name}: run `python -m lmlab.course.notebooks build`"


@pytest.mark.parametrize(
    "nb_path",
    sorted(p for d in ("lessons", "solutions", "exercises") for p in (course.ROOT / d).glob("*.ipynb")),
    ids=lambda p: f"{p.parent.name}/{p.name}",
)
def test_committed_notebook_has_no_outputs(nb_path):
    nb = json.loads(nb_path.read_text(encoding="utf-8"))
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] == "code":
            assert cell.get("outputs") == [], f"{nb_path.name} cell {i} carries outputs"
            assert cell.get("execution_count") is None, f"{nb_path.name} cell {i} has an execution count"
    assert "widgets" not in nb.get("metadata", {}), f"{nb_path.name} carries widget state"


def test_course_check_reports_nothing_stale():
    assert course.check() == []


def test_check_detects_drift(tmp_path):
    """The drift check is not vacuous: an edited source makes its .ipynb stale."""
    (tmp_path / "lessons").mkdir()
    src = tmp_path / "lessons" / "99_demo.py"
    src.write_text("# %% [markdown]\n# # Demo\n\n# %%\nprint(1)\n", encoding="utf-8")
    assert course.check(tmp_path) == [src.with_suffix(".ipynb")]
    course.build(tmp_path)
    assert course.check(tmp_path) == []
    src.write_text(src.read_text() + "\n# %%\nprint(2)\n", encoding="utf-8")
    assert course.check(tmp_path) == [src.with_suffix(".ipynb")]


def test_ipynb_text_round_trips_the_cells():
    text = (course.ROOT / "lessons" / "00_tour.py").read_text(encoding="utf-8")
    nb = json.loads(course.ipynb_text(text))
    py_nb = jupytext.reads(text, fmt="py:percent")
    assert ["".join(c["source"]) for c in nb["cells"]] == [c.source for c in py_nb.cells]
