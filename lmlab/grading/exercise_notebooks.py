"""Exercise notebooks generated from their solutions: one source of truth.

``solutions/NN_topic.py`` (jupytext percent) holds each exercise's answer between the lines
``### BEGIN SOLUTION`` and ``### END SOLUTION``. :func:`exercise_text` replaces every such block by
``raise NotImplementedError("<the exercise's hint>")`` at the block's indentation, and points the
notebook's own links at ``exercises/``. An exercise with tiered ``hints`` gets a markdown cell before its
check cell: one collapsed ``<details>`` block per tier (the idea, then shapes and steps, then a code
outline), so a learner opens the next tier on purpose. The intro table (``| # | exercise | points |``)
gets a "time" column from each exercise's ``minutes`` (estimated from its points where unset), unless
the solution's table already has one. It refuses unbalanced markers, a block outside a function,
a block in a function that is not a registered exercise, and an exercise without a check cell.
``python -m lmlab.course.notebooks build`` writes the results (and their ``.ipynb``) through
:func:`expected_exercise_files`.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

from lmlab.grading.registry import UnknownExercise, chapter_exercises, get_exercise

__all__ = ["SolutionError", "BEGIN", "END", "exercise_text", "expected_exercise_files"]

BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
_MARKER = re.compile(r"^(?P<indent>[ \t]*)(?P<mark>### (?:BEGIN|END) SOLUTION)[ \t]*$")
_OWNER = re.compile(r"^(?:async\s+def|def|class)\s+([A-Za-z_][A-Za-z0-9_]*)")
_CHECK = re.compile(r"""\bcheck\(\s*["'](\d\d\.[A-Za-z_][A-Za-z0-9_]*)["']""")


class SolutionError(ValueError):
    """A solutions file that cannot become an exercise notebook; the message names the line."""


def _regions(lines: list[str], name: str) -> list[tuple[int, int, str]]:
    """``(begin index, end index, indent)`` of every solution block, checking that they balance."""
    regions, open_at, indent = [], None, ""
    for i, line in enumerate(lines):
        m = _MARKER.match(line.rstrip("\n"))
        if not m:
            if BEGIN in line or END in line:
                raise SolutionError(f"{name} line {i + 1}: a solution marker must be alone on its line: {line.strip()!r}")
            continue
        if m.group("mark") == BEGIN:
            if open_at is not None:
                raise SolutionError(f"{name} line {i + 1}: {BEGIN} inside another one (opened at line {open_at + 1}); close it first")
            if not m.group("indent"):
                raise SolutionError(f"{name} line {i + 1}: {BEGIN} must be inside a function or method body (it is at top level)")
            open_at, indent = i, m.group("indent")
        else:
            if open_at is None:
                raise SolutionError(f"{name} line {i + 1}: {END} without a {BEGIN} before it")
            if m.group("indent") != indent:
                raise SolutionError(f"{name} line {i + 1}: {END} is not indented like its {BEGIN} (line {open_at + 1})")
            regions.append((open_at, i, indent))
            open_at = None
    if open_at is not None:
        raise SolutionError(f"{name} line {open_at + 1}: {BEGIN} is never closed with {END}")
    return regions


def _owner(lines: list[str], index: int, name: str) -> str:
    """The top-level function or class that contains line ``index``."""
    for line in reversed(lines[:index]):
        m = _OWNER.match(line)
        if m:
            return m.group(1)
    raise SolutionError(f"{name} line {index + 1}: this solution block is not inside a top-level function or class")


def exercise_text(solution_text: str, chapter: str, name: str = "solutions") -> str:
    """The exercise notebook (jupytext percent text) generated from a solutions notebook's text.

    Args:
        solution_text: the text of ``solutions/NN_topic.py``.
        chapter: ``"NN"``; every block must belong to a registered exercise ``"NN.<function>"``.
        name: how error messages name the file.
    """
    if not isinstance(solution_text, str):
        raise ValueError(f"solution_text must be a str, got {type(solution_text).__name__}")
    if not isinstance(chapter, str) or not re.fullmatch(r"\d\d", chapter):
        raise ValueError(f"chapter must be a two-digit string like '00', got {chapter!r}")
    lines = solution_text.splitlines(keepends=True)
    regions = _regions(lines, name)
    checked = set(_CHECK.findall(solution_text))
    solved: set[str] = set()
    out, last = [], 0
    for begin, end, indent in regions:
        owner = _owner(lines, begin, name)
        exercise_id = f"{chapter}.{owner}"
        try:
            exercise = get_exercise(exercise_id)
        except UnknownExercise as exc:
            raise SolutionError(f"{name} line {begin + 1}: solution inside `{owner}`, but {exc}") from None
        if exercise_id not in checked:
            raise SolutionError(f"{name}: exercise {exercise_id} has no check cell; add a cell `check(\"{exercise_id}\", {owner})`")
        solved.add(exercise_id)
        out += lines[last:begin]
        out.append(f"{indent}raise NotImplementedError({json.dumps(exercise.hint, ensure_ascii=False)})\n")
        last = end + 1
    out += lines[last:]
    out = _with_hint_cells(out, chapter)
    out = _with_time_column(out, chapter)
    for exercise in chapter_exercises(chapter):
        if exercise.id not in solved:
            raise SolutionError(f"{name}: exercise {exercise.id} is registered but has no {BEGIN} block here")
    text = "".join(out).replace(f"solutions/{chapter}_", f"exercises/{chapter}_")
    try:
        ast.parse(text)
    except SyntaxError as exc:
        raise SolutionError(f"{name}: the generated exercise is not valid Python (line {exc.lineno}: {exc.msg})") from None
    return text


_TIER_NAMES = ("the idea", "shapes and steps", "code outline")


def hint_cell(exercise) -> list[str]:
    """The markdown cell (jupytext percent lines) that shows ``exercise.hints`` collapsed, one tier each."""
    out = ["# %% [markdown]\n"]
    for i, tier in enumerate(exercise.hints):
        title = _TIER_NAMES[i] if i < len(_TIER_NAMES) else "more"
        out += ["#\n" if i else "", f"# <details><summary>Hint {i + 1} · {title}</summary>\n", "#\n"]
        body = tier.splitlines()
        if i == len(exercise.hints) - 1 and len(body) > 1:  # a code outline: keep its lines
            out += ["# ```python\n"] + [f"# {line}\n".replace("# \n", "#\n") for line in body] + ["# ```\n"]
        else:
            out += [f"# {line}\n" for line in body]
        out += ["#\n", "# </details>\n"]
    return [line for line in out if line] + ["\n"]


def _with_hint_cells(lines: list[str], chapter: str) -> list[str]:
    """Insert each tiered exercise's hint cell just before the cell that holds its ``check(...)``."""
    out: list[str] = []
    cell_start = 0  # index in out of the current cell's "# %%" line
    for line in lines:
        if line.startswith("# %%"):
            cell_start = len(out)
        m = _CHECK.search(line)
        if m and m.group(1).startswith(chapter + "."):
            try:
                exercise = get_exercise(m.group(1))
            except UnknownExercise:
                exercise = None
            if exercise is not None and exercise.hints and not any("<summary>Hint 1" in x for x in out[max(0, cell_start - 12):cell_start]):
                out[cell_start:cell_start] = hint_cell(exercise)
        out.append(line)
    return out


def _minutes(exercise) -> int:
    return exercise.minutes if exercise.minutes is not None else 5 * exercise.points


def _with_time_column(lines: list[str], chapter: str) -> list[str]:
    """Add a "time" column to the intro table ``| # | exercise | points |`` (rows matched by the backticked name)."""
    exercises = chapter_exercises(chapter)
    out, in_table = [], False
    for line in lines:
        stripped = line.rstrip("\n")
        if re.fullmatch(r"# \| # \| exercise \| points \|", stripped):
            in_table = True
            out.append(stripped + " time |\n")
            continue
        if in_table and re.fullmatch(r"# \|(---\|)+", stripped):
            out.append(stripped + "---|\n")
            continue
        if in_table and stripped.startswith("# |"):
            names = re.findall(r"`(?:class\s+)?([A-Za-z_][A-Za-z0-9_]*)", stripped)
            match = next((ex for ex in exercises if ex.name in names), None)
            out.append(stripped + (f" {_minutes(match)} min |\n" if match else " |\n"))
            continue
        in_table = False
        out.append(line)
    return out


def expected_exercise_files(root: Path) -> dict[Path, str]:
    """For every ``root/solutions/NN_*.py``: ``root/exercises/NN_*.py`` and its generated text."""
    if not isinstance(root, Path):
        raise ValueError(f"root must be a pathlib.Path, got {type(root).__name__}")
    files = {}
    for src in sorted((root / "solutions").glob("[0-9][0-9]_*.py")):
        text = exercise_text(src.read_text(encoding="utf-8"), src.name[:2], name=f"solutions/{src.name}")
        files[root / "exercises" / src.name] = text
    return files
