"""``lmlab grade PATH [--json [FILE|-]] [--timeout SECONDS] [--strict] [--salt N]``: grade any copy of an exercise notebook.

Exit status 0 when the notebook was graded, whatever the score; 2 with a one-line message when it
could not be (missing file, not an exercise notebook, invalid JSON, a syntax error).
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

from lmlab.grading.extract import ExtractError, extract
from lmlab.grading.registry import UnknownExercise, chapter_exercises, get_exercise
from lmlab.grading.report import ExerciseResult, format_table, summary
from lmlab.grading.runner import grade_all
from lmlab.grading.seeds import SALT_BITS, new_salt
from lmlab.grading.strict import reference_uses

__all__ = ["grade_command", "grade_path", "chapter_of"]


def chapter_of(path: str | Path, called: list[str], chapter: str | None = None) -> tuple[str, list[str]]:
    """The chapter to grade ``path`` on, and warnings: ``chapter`` if given, else the file name's ``NN_``
    prefix, else the one chapter the notebook's check calls name (several: :class:`ExtractError`).
    Calls to other chapters' exercises are ignored, with a warning: the notebook does not choose."""
    if chapter is not None and not (isinstance(chapter, str) and re.fullmatch(r"\d\d", chapter)):
        raise ExtractError(f"--chapter must be two digits like 04, got {chapter!r}")
    if chapter is None:
        m = re.match(r"(\d\d)_", Path(path).name)
        if m:
            chapter = m.group(1)
        elif len(called) == 1:
            chapter = called[0]
        else:
            raise ExtractError(f"{path}: its check cells name chapters {', '.join(called)}; say which to grade with --chapter NN")
    others = [c for c in called if c != chapter]
    warnings = [f"ignored the calls to chapter {', '.join(others)}'s exercises: this notebook is graded on chapter {chapter}"] if others else []
    return chapter, warnings


def grade_path(path: str | Path, timeout: float | None = None, jobs: int | None = None, strict: bool = False,
               salt: int | None = None, chapter: str | None = None) -> dict:
    """Grade the notebook at ``path``; return the gradebook record (raises :class:`ExtractError`).

    Code that imports lmlab's own implementation of a graded exercise is named in ``warnings``;
    with ``strict`` that exercise scores 0.

    The chapter is ``chapter``, else the file name's ``NN_`` prefix, else the one chapter its check cells
    name (:func:`chapter_of`); calls to other chapters' exercises are ignored with a warning.

    ``salt`` (None: a fresh random one) is mixed into every check's seeds, so each run draws new
    inputs; the same salt gives the same record (``--salt`` replays a run).

    The record: ``{"notebook", "chapters", "salt", "score", "max_score", "exercises": [result, ...], "warnings"}``.
    """
    if timeout is not None and not (isinstance(timeout, (int, float)) and timeout > 0):
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
    if salt is None:
        salt = new_salt()
    if isinstance(salt, bool) or not isinstance(salt, int) or not 0 <= salt < 2 ** SALT_BITS:
        raise ValueError(f"salt must be an int in [0, 2**{SALT_BITS}) (or None for a random one), got {salt!r}")
    try:
        code = extract(path)
    except ExtractError:
        raise
    except (RecursionError, MemoryError, ValueError, TypeError) as exc:  # a notebook of an unexpected shape: still one line
        raise ExtractError(f"{path} is not a valid exercise notebook ({type(exc).__name__})") from None
    chapter, warnings = chapter_of(path, code.chapters, chapter)
    code.chapters = [chapter]
    exercises = chapter_exercises(chapter)
    for exercise_id in dict.fromkeys(i for i in code.check_ids if i[:2] == chapter):
        try:
            get_exercise(exercise_id)
        except UnknownExercise as exc:
            warnings.append(str(exc))
    if not exercises:
        raise ExtractError(f"{path}: chapter {chapter} has no graded exercises in this version of lmlab")
    snippets = code.to_json()
    flagged = {}
    for exercise in exercises:
        uses = reference_uses(exercise, snippets)
        if uses:
            flagged[exercise.id] = uses
            warnings.append(f"{exercise.id} uses lmlab's own implementation: {uses[0]}" + (" (graded 0: --strict)" if strict else ""))
    results = grade_all(exercises, snippets, timeout=timeout, cwd=Path(path).resolve().parent, jobs=jobs, strict=strict,
                        salt=salt)
    if strict:
        for r in results:
            if r.id in flagged:
                r.status, r.points = "failed", 0
                r.reason = f"--strict: your code imports lmlab's own implementation ({flagged[r.id][0]})"
    got, total = summary(results)
    return {
        "notebook": str(path),
        "chapters": code.chapters,
        "salt": salt,
        "score": got,
        "max_score": total,
        "exercises": [r.to_dict() for r in results],
        "warnings": warnings,
    }


def grade_command(path: str, json_path: str | None = None, timeout: float | None = None, strict: bool = False,
                  salt: int | None = None, chapter: str | None = None) -> int:
    """The ``lmlab grade`` command: print the score table (and JSON); return the exit status."""
    if timeout is not None and not timeout > 0:
        print(f"lmlab grade: --timeout must be a positive number of seconds, got {timeout}", file=sys.stderr)
        return 2
    try:
        record = grade_path(path, timeout=timeout, strict=strict, salt=salt, chapter=chapter)
    except (ExtractError, ValueError) as exc:
        print(f"lmlab grade: {exc}", file=sys.stderr)
        return 2
    results = [ExerciseResult.from_dict(r) for r in record["exercises"]]
    limit = f"{timeout:g} s" if timeout else "each exercise's own"
    table = format_table(results, title=f"Grading {path} (chapter {', '.join(record['chapters'])}; time limit: {limit}"
                         f"{'; strict' if strict else ''}; salt {record['salt']})\n")
    to_stdout = json_path == "-"
    out = sys.stderr if to_stdout else sys.stdout  # keep stdout pure JSON when it carries the JSON
    for warning in record["warnings"]:
        print(f"warning: {warning}", file=out)
    print(table, file=out)
    text = json.dumps(record, indent=2, ensure_ascii=False)
    if to_stdout:
        print(text)
    elif json_path:
        try:  # atomically, at the very end: a reader sees the old file or the whole new one
            target = Path(json_path)
            tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
            tmp.write_text(text + "\n", encoding="utf-8")
            os.replace(tmp, target)
        except OSError as exc:
            print(f"lmlab grade: could not write {json_path}: {exc.strerror or exc}", file=sys.stderr)
            return 2
        print(f"wrote {json_path}", file=out)
    return 0
