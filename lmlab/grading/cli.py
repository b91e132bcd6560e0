"""``lmlab grade PATH [--json [FILE|-]] [--timeout SECONDS] [--strict] [--salt N]``: grade any copy of an exercise notebook.

Exit status 0 when the notebook was graded, whatever the score; 2 with a one-line message when it
could not be (missing file, not an exercise notebook, invalid JSON, a syntax error).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from lmlab.grading.extract import ExtractError, extract
from lmlab.grading.registry import UnknownExercise, chapter_exercises, get_exercise
from lmlab.grading.report import ExerciseResult, format_table, summary
from lmlab.grading.runner import grade_all
from lmlab.grading.seeds import SALT_BITS, new_salt
from lmlab.grading.strict import reference_uses

__all__ = ["grade_command", "grade_path"]


def grade_path(path: str | Path, timeout: float | None = None, jobs: int | None = None, strict: bool = False,
               salt: int | None = None) -> dict:
    """Grade the notebook at ``path``; return the gradebook record (raises :class:`ExtractError`).

    Code that imports lmlab's own implementation of a graded exercise is named in ``warnings``;
    with ``strict`` that exercise scores 0.

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
    code = extract(path)
    exercises, warnings = [], []
    for chapter in code.chapters:
        found = chapter_exercises(chapter)
        if not found:
            warnings.append(f"chapter {chapter} has no graded exercises in this version of lmlab")
        exercises += found
    for exercise_id in dict.fromkeys(code.check_ids):
        try:
            get_exercise(exercise_id)
        except UnknownExercise as exc:
            warnings.append(str(exc))
    if not exercises:
        raise ExtractError(f"{path}: none of its chapters ({', '.join(code.chapters)}) has graded exercises")
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
                  salt: int | None = None) -> int:
    """The ``lmlab grade`` command: print the score table (and JSON); return the exit status."""
    if timeout is not None and not timeout > 0:
        print(f"lmlab grade: --timeout must be a positive number of seconds, got {timeout}", file=sys.stderr)
        return 2
    try:
        record = grade_path(path, timeout=timeout, strict=strict, salt=salt)
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
        try:
            Path(json_path).write_text(text + "\n", encoding="utf-8")
        except OSError as exc:
            print(f"lmlab grade: could not write {json_path}: {exc.strerror or exc}", file=sys.stderr)
            return 2
        print(f"wrote {json_path}", file=out)
    return 0
