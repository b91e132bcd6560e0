"""Every lesson asks a "predict, then run" question (``lmlab.course.widgets.Prediction``) before an experiment and
reveals the measured answer in a later cell (COURSE.md, issue 20 item 5). Reads the lessons' sources."""

import re
from pathlib import Path

import pytest

LESSONS = Path(__file__).resolve().parents[1] / "lessons"
ASKING = [f"{n:02d}" for n in range(14)]  # every lesson, 00-13
CREATED = re.compile(r"^(\w+) = Prediction\(", re.MULTILINE)


def lesson_source(number: str) -> str:
    (path,) = LESSONS.glob(f"{number}_*.py")
    return path.read_text()


def cells(source: str) -> list[str]:
    return re.split(r"^# %%.*$", source, flags=re.MULTILINE)


@pytest.mark.parametrize("number", ASKING)
def test_lesson_asks_for_a_prediction(number):
    assert CREATED.search(lesson_source(number)), f"lesson {number} has no `name = Prediction(...)` before an experiment"


@pytest.mark.parametrize("path", sorted(LESSONS.glob("[0-9][0-9]_*.py")), ids=lambda p: p.stem)
def test_every_prediction_is_revealed_in_a_later_cell(path):
    parts = cells(path.read_text())
    for i, cell in enumerate(parts):
        for name in CREATED.findall(cell):
            assert f"{name}.reveal(" not in cell, f"{path.name}: {name} is revealed in the cell that asks it"
            later = "".join(parts[i + 1:])
            assert re.search(rf"\b{name}\.reveal\(", later), f"{path.name}: {name} = Prediction(...) is never revealed"
    # the hand-written dropdowns this replaced: one control, one reveal line, everywhere
    assert '"(choose)"' not in path.read_text(), f"{path.name}: use lmlab.course.widgets.Prediction, not a hand-made '(choose)' dropdown"
