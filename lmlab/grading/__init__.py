"""Graded exercises: ``check`` in a notebook, ``lmlab grade`` in a terminal.

In an exercise notebook::

    from lmlab.grading import check, check_all

    check("00.causal_mask", causal_mask)   # ✅ passed / ❌ failed (which case, expected vs got) / ⏳ not yet
    check_all("00")                        # the chapter's score table

Neither ever raises, so an unfinished notebook still runs top to bottom. The graders ship inside
the package (``lmlab/grading/chapters/chNN.py``), so they work on Colab and Binder with only the notebook.
"""

from __future__ import annotations

import inspect
from typing import Any

from lmlab.grading.engine import run_exercise
from lmlab.grading.registry import Exercise, UnknownExercise, all_exercises, chapter_exercises, get_exercise
from lmlab.grading.report import ExerciseResult, format_result, format_table

__all__ = ["check", "check_all", "grade_object", "Exercise", "ExerciseResult", "all_exercises", "chapter_exercises", "get_exercise"]


def grade_object(exercise_id: str, obj: Any, timeout: float | None = None) -> ExerciseResult:
    """Grade ``obj`` for ``exercise_id`` and return the result (raises :class:`UnknownExercise`)."""
    if not isinstance(exercise_id, str):
        raise ValueError(f"exercise_id must be a str like '00.causal_mask', got {type(exercise_id).__name__}")
    return run_exercise(get_exercise(exercise_id), obj, timeout=timeout)


def check(exercise_id: str, obj: Any = None, *, timeout: float | None = None) -> None:
    """Print a friendly report on ``obj`` (your function or class) for ``exercise_id``. Never raises.

    Args:
        exercise_id: e.g. ``"00.causal_mask"``.
        obj: your implementation; if omitted, the name after the dot is looked up in the calling
            notebook's globals.
        timeout: seconds your code may run (default: the exercise's own limit).
    """
    try:
        if not isinstance(exercise_id, str):
            print(f"⚠️ check needs an exercise id as a string, like check(\"00.causal_mask\", causal_mask); got {exercise_id!r}")
            return
        try:
            exercise = get_exercise(exercise_id)
        except UnknownExercise as exc:
            print(f"⚠️ {exc}")
            return
        missing = False
        if obj is None:
            frame = inspect.currentframe()
            caller = frame.f_back.f_globals if frame and frame.f_back else {}
            missing = exercise.name not in caller
            obj = caller.get(exercise.name)
        if timeout is not None and not (isinstance(timeout, (int, float)) and timeout > 0):
            print(f"⚠️ timeout must be a positive number of seconds, got {timeout!r}")
            return
        print(format_result(run_exercise(exercise, obj, timeout=timeout, missing=missing)))
    except BaseException as exc:  # the promise: a check cell never raises
        print(f"💥 the grader itself failed on {exercise_id!r} ({type(exc).__name__}: {exc}); please report this")


def check_all(chapter: str, namespace: dict | None = None, timeout: float | None = None) -> None:
    """Print the score table of a chapter, grading the definitions in ``namespace``. Never raises.

    Args:
        chapter: ``"00"``.
        namespace: where your definitions live (default: the calling notebook's globals).
        timeout: seconds per exercise (default: each exercise's own limit).
    """
    try:
        if namespace is None:
            frame = inspect.currentframe()
            namespace = frame.f_back.f_globals if frame and frame.f_back else {}
        try:
            exercises = chapter_exercises(chapter)
        except ValueError as exc:
            print(f"⚠️ {exc}")
            return
        if not exercises:
            print(f"⚠️ chapter {chapter} has no graded exercises")
            return
        results = [run_exercise(ex, namespace.get(ex.name), timeout=timeout, missing=ex.name not in namespace) for ex in exercises]
        print(format_table(results, title=f"Chapter {chapter}: your score"))
    except BaseException as exc:
        print(f"💥 the grader itself failed ({type(exc).__name__}: {exc}); please report this")
