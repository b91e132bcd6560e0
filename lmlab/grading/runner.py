"""Grade each exercise with the learner's code in its own child process and the checks here.

:func:`grade_in_subprocess` starts a :class:`~lmlab.grading.sandbox.Sandbox` (``python -m
lmlab.grading.child``): the child runs the learner's kept definitions and holds the graded object; this
process runs the exercise's checks on a proxy of it and decides the verdict (see the contract in
:mod:`lmlab.grading.engine`). Only plain data comes back from the child, so nothing it prints, patches
or writes can change a verdict. A child that dies, stalls past the time limit, starts processes or
sends garbage costs that exercise's points with the reason; the grader always carries on. The time
limit starts after imports.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from lmlab.grading.engine import run_exercise
from lmlab.grading.registry import Exercise
from lmlab.grading.report import ExerciseResult
from lmlab.grading.sandbox import Sandbox, SandboxError

__all__ = ["grade_in_subprocess", "grade_all", "STARTUP_LIMIT", "GRACE"]

STARTUP_LIMIT = 180.0  # seconds for the child to import torch (slow, busy CI machines)
GRACE = 2.0  # seconds after the time limit before the parent kills (the child's own timer goes first)


def _error(exercise: Exercise, status: str, reason: str, seconds: float = 0.0) -> ExerciseResult:
    return ExerciseResult(id=exercise.id, status=status, points=0, max_points=exercise.points,
                          checks_total=len(exercise.checks), reason=reason, hint=exercise.hint, seconds=round(seconds, 3))


def grade_in_subprocess(exercise: Exercise, snippets: list[dict], timeout: float | None = None, cwd: str | Path | None = None,
                        strict: bool = False, salt: int = 0) -> ExerciseResult:
    """Grade one exercise: the learner's definitions in a child process, the checks here; never raises.

    Args:
        exercise: the registered exercise.
        snippets: the learner's kept statements (``LearnerCode.to_json()``).
        timeout: seconds for the learner's code (None: the exercise's own limit).
        cwd: working directory of the child (the notebook's folder, for relative paths).
        strict: give 0 points when the graded object is lmlab's own (imported, not written).
        salt: the run's salt, mixed into every seed the checks draw with (:mod:`lmlab.grading.seeds`).
    """
    if not isinstance(exercise, Exercise):
        raise ValueError(f"exercise must be an Exercise, got {type(exercise).__name__}")
    if not isinstance(snippets, list):
        raise ValueError(f"snippets must be a list of {{filename, source}} dicts, got {type(snippets).__name__}")
    if timeout is not None and not timeout > 0:
        raise ValueError(f"timeout must be > 0 seconds (or None), got {timeout!r}")
    limit = exercise.timeout if timeout is None else float(timeout)
    job = {"exercise": exercise.id, "name": exercise.name, "snippets": snippets, "timeout": limit, "deny": _deny_dirs()}
    started = time.perf_counter()
    sandbox = None
    try:
        sandbox = Sandbox(cwd=cwd)
        first = sandbox.start(job, limit)
        if not isinstance(first, tuple) or not first or first[0] not in ("ready", "failed"):
            return _error(exercise, "error", "the grading process sent an unreadable first reply", time.perf_counter() - started)
        if first[0] == "failed":
            info = first[2] if isinstance(first[2], dict) else {}
            if info.get("timeout"):
                reason = f"running your notebook's definitions took more than {limit:g} s{info.get('where', '')}"
                return _error(exercise, "timeout", reason, time.perf_counter() - started)
            msg = str(info.get("message", ""))[:200]
            reason = f"running your notebook's definitions raised {info.get('type', 'an error')}{': ' + msg if msg else ''}{info.get('where', '')}"
            return _error(exercise, "failed", reason, time.perf_counter() - started)
        _, found, tree, module_name, _ = first
        obj = sandbox.decode(tree, 0, None) if found else None
        sandbox.deadline = time.monotonic() + limit + GRACE
        result = run_exercise(exercise, obj, timeout=limit + GRACE, missing=not found, capture=False, salt=salt)
        if strict and found and str(module_name).split(".")[0] == "lmlab":
            result.status, result.points = "failed", 0
            result.reason = f"--strict: `{exercise.name}` is lmlab's own {module_name}.{exercise.name}, imported rather than written"
        return result
    except SandboxError as exc:
        return _error(exercise, "error", str(exc), time.perf_counter() - started)
    finally:
        if sandbox is not None:
            sandbox.close()


def _deny_dirs() -> list[str]:
    """Folders the learner's process may not read: the course's worked solutions."""
    root = Path(__file__).resolve().parent.parent.parent
    return [str(root / "solutions")] if (root / "solutions").is_dir() else []


def grade_all(exercises: list[Exercise], snippets: list[dict], timeout: float | None = None, cwd: str | Path | None = None,
              jobs: int | None = None, strict: bool = False, salt: int = 0) -> list[ExerciseResult]:
    """Grade ``exercises`` (each in its own subprocess, ``jobs`` at a time, all with ``salt``), in the given order."""
    if jobs is not None and (not isinstance(jobs, int) or jobs < 1):
        raise ValueError(f"jobs must be a positive int (or None), got {jobs!r}")
    jobs = jobs or max(1, min(4, os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(lambda ex: grade_in_subprocess(ex, snippets, timeout=timeout, cwd=cwd, strict=strict, salt=salt),
                             exercises))
