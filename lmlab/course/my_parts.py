"""Your parts: the learner's graded exercises, read from their notebooks, for the capstone (lesson 13)
and for ``lmlab progress``.

:func:`read_notebooks` is the one reader. For each chapter it finds the learner's exercise notebook
(``NN_*.ipynb``, else the jupytext ``NN_*.py``) in a folder — ``exercises/``, ``solutions/`` or any copy —
takes out the learner's definitions with **the extraction ``lmlab grade`` uses**
(:func:`lmlab.grading.extract.extract`: imports, functions, classes and constants; nothing else of the
notebook runs) and grades the exercises asked for with **the same sandboxed grading**
(:func:`lmlab.grading.runner.grade_in_subprocess`: each exercise in its own child process with its time limit, so a
part that hangs or crashes costs only that part). It returns a :class:`Course`: per chapter and per
exercise the status, points and reason.

:func:`my_parts` reads the chapters the capstone needs (:data:`CAPSTONE_PARTS`) and returns
:class:`Parts`: the learner's object for every part whose exercises all passed, and for each other part
the reason lmlab's reference is used instead ("04.repeat_kv: not implemented yet"). **The passing
parts are then loaded into your own process**: the kept definitions of that notebook (and only those) are
executed in a fresh module namespace, exactly the code the grader ran. It is your code from your
notebook, now running in your kernel.

A notebook that is missing, not a notebook, or has a syntax error gives a one-line reason naming the file
(and cell) for each of its parts, and the reference is used; nothing raises.
"""

from __future__ import annotations

import os
import sys
import types
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from lmlab.grading.extract import ExtractError, LearnerCode, extract
from lmlab.grading.registry import chapter_exercises, chapters, get_exercise
from lmlab.grading.report import STATUSES
from lmlab.grading.runner import grade_in_subprocess

__all__ = ["CAPSTONE_PARTS", "ExerciseStatus", "ChapterStatus", "Course", "Part", "Parts", "find_notebook",
           "read_notebooks", "my_parts", "default_folder", "capstone_status", "progress_report", "progress_command"]

# capstone part -> (the exercises whose objects make it, what it does in the capstone). A part is the
# learner's when every one of its exercises passed.
CAPSTONE_PARTS = {
    "norm": (("01.RMSNorm",), "every RMSNorm of the model"),
    "ffn": (("02.SwiGLU",), "every feed-forward layer"),
    "position": (("03.RotaryEmbedding",), "RoPE of every attention layer"),
    "attention": (("04.repeat_kv", "04.scaled_dot_product_attention"), "grouped-query attention (prefill)"),
    "decode_step": (("08.decode_step",), "attention of each new token over the KV cache"),
    "generation": (("08.generate_with_cache",), "the generation loop (prefill, then one token at a time)"),
    "sampling": (("07.softmax_with_temperature", "07.top_k_filter", "07.top_p_filter"), "the samplers"),
    "optimizer": (("09.AdamW",), "pretraining's optimizer"),
    "train_loop": (("09.train_loop",), "pretraining's loop"),
    "tokenizer": (("13.bpe_merge_step", "13.bpe_encode"), "the BPE tokenizer (train, encode)"),
}


@dataclass
class ExerciseStatus:
    """One exercise: ``status`` is a key of :data:`lmlab.grading.report.STATUSES` or ``"not started"``
    (the notebook could not be read or graded: ``reason`` says why)."""

    id: str
    status: str
    points: int
    max_points: int
    reason: str = ""

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    def why(self) -> str:
        """``"04.repeat_kv: not implemented yet"`` / ``"02.SwiGLU: failed: <reason>"``."""
        words = STATUSES.get(self.status, (None, self.status))[1]
        return f"{self.id}: {words}" + (f": {self.reason}" if self.reason and self.status != "not implemented" else "")


@dataclass
class ChapterStatus:
    """One chapter: its notebook (or None), the exercises graded, and ``error`` if it could not be read."""

    chapter: str
    notebook: str | None
    exercises: list[ExerciseStatus] = field(default_factory=list)
    error: str = ""
    code: LearnerCode | None = field(default=None, repr=False)

    @property
    def points(self) -> int:
        return sum(e.points for e in self.exercises)

    @property
    def max_points(self) -> int:
        return sum(e.max_points for e in self.exercises)

    @property
    def started(self) -> bool:
        """Whether any exercise of the chapter passed or at least runs (failed / timed out, not a stub)."""
        return any(e.status in ("passed", "failed", "timeout") for e in self.exercises)


@dataclass
class Course:
    """What :func:`read_notebooks` found: ``chapters[NN]`` -> :class:`ChapterStatus`."""

    folder: str
    chapters: dict[str, ChapterStatus] = field(default_factory=dict)

    def exercise(self, exercise_id: str) -> ExerciseStatus:
        for e in self.chapters[exercise_id[:2]].exercises:
            if e.id == exercise_id:
                return e
        raise ValueError(f"exercise_id: {exercise_id!r} was not read; read chapters {sorted(self.chapters)}")

    @property
    def points(self) -> int:
        return sum(c.points for c in self.chapters.values())

    @property
    def max_points(self) -> int:
        return sum(c.max_points for c in self.chapters.values())

    def next_exercise(self) -> ExerciseStatus | None:
        """The first exercise (chapter order, then the notebook's order) that has not passed."""
        for chapter in sorted(self.chapters):
            for e in self.chapters[chapter].exercises:
                if not e.passed:
                    return e
        return None


def default_folder() -> Path:
    """``exercises/`` beside the working directory (a lesson runs in ``lessons/``), else the repository's."""
    for candidate in (Path("exercises"), Path("..") / "exercises", Path(__file__).resolve().parents[2] / "exercises"):
        if candidate.is_dir():
            return candidate
    return Path("exercises")


def find_notebook(folder: str | Path, chapter: str) -> Path | None:
    """The chapter's notebook in ``folder``: ``NN_*.ipynb`` (what a learner edits), else ``NN_*.py`` (jupytext)."""
    if not isinstance(folder, (str, Path)):
        raise ValueError(f"folder must be a str or Path, got {type(folder).__name__}")
    if not isinstance(chapter, str) or len(chapter) != 2 or not chapter.isdigit():
        raise ValueError(f"chapter must be a two-digit string like '01', got {chapter!r}")
    for suffix in (".ipynb", ".py"):
        found = sorted(Path(folder).glob(f"{chapter}_*{suffix}"))
        if found:
            return found[0]
    return None


def _not_started(exercise, reason: str) -> ExerciseStatus:
    return ExerciseStatus(exercise.id, "not started", 0, exercise.points, reason)


def read_notebooks(folder: str | Path | None = None, exercises: list[str] | None = None, chapters_: list[str] | None = None,
                   timeout: float | None = None, jobs: int | None = None) -> Course:
    """Grade the learner's notebooks in ``folder`` (default :func:`default_folder`) exactly as ``lmlab grade``.

    ``exercises``: the ids to grade (default: every exercise of ``chapters_``, default every chapter).
    ``timeout``: seconds per exercise (default: each exercise's own limit). Never raises for a bad notebook:
    its exercises are ``"not started"`` with a one-line reason naming the file (and cell).
    """
    folder = default_folder() if folder is None else folder
    if not isinstance(folder, (str, Path)):
        raise ValueError(f"folder must be a str or Path (a folder of exercise notebooks), got {type(folder).__name__}")
    if not Path(folder).is_dir():
        raise ValueError(f"folder must be a folder of exercise notebooks, {folder} is not a folder")
    if timeout is not None and not (isinstance(timeout, (int, float)) and timeout > 0):
        raise ValueError(f"timeout must be a positive number of seconds (or None), got {timeout!r}")
    if jobs is not None and (not isinstance(jobs, int) or jobs < 1):
        raise ValueError(f"jobs must be a positive int (or None), got {jobs!r}")
    if exercises is not None:
        wanted = [get_exercise(i) for i in exercises]  # UnknownExercise (a ValueError) names the valid ids
    else:
        known = chapters()
        if chapters_ is not None and not set(chapters_) <= set(known):
            raise ValueError(f"chapters_ must be among {known}, got {chapters_!r}")
        wanted = [e for c in (chapters_ or known) for e in chapter_exercises(c)]
    course = Course(str(folder))
    jobs_list = []
    for chapter in sorted({e.chapter for e in wanted}):
        mine = [e for e in chapter_exercises(chapter) if e in wanted]
        path = find_notebook(folder, chapter)
        status = ChapterStatus(chapter, None if path is None else str(path))
        course.chapters[chapter] = status
        if path is None:
            status.error = f"no notebook {chapter}_*.ipynb or {chapter}_*.py in {folder}"
        else:
            try:
                status.code = extract(path)
            except ExtractError as exc:
                status.error = str(exc)
        if status.error:
            status.exercises = [_not_started(e, status.error) for e in mine]
            continue
        jobs_list.append((status, mine, path))
    # one pool for every notebook: lmlab grade's sandboxed grading, one child process per exercise
    flat = [(status, e, status.code.to_json(), Path(path).resolve().parent) for status, mine, path in jobs_list for e in mine]
    jobs = jobs or max(1, min(4, os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        results = list(pool.map(lambda job: grade_in_subprocess(job[1], job[2], timeout=timeout, cwd=job[3]), flat))
    for (status, _, _, _), r in zip(flat, results):
        status.exercises.append(ExerciseStatus(r.id, r.status, r.points, r.max_points, r.reason))
    return course


def _load(code: LearnerCode, chapter: str) -> types.ModuleType:
    """Run the kept definitions of one notebook (and nothing else) in a fresh module: the learner's objects."""
    module = types.ModuleType(f"lmlab_learner_ch{chapter}", f"your definitions from {code.path}")
    for snippet in code.snippets:
        exec(compile(snippet.source, snippet.filename, "exec"), module.__dict__)  # the learner's own code, as graded
    return module


@dataclass
class Part:
    """One capstone part: ``yours`` (the learner's objects, by exercise name) or the ``reason`` it is lmlab's."""

    kind: str
    exercises: tuple[str, ...]
    role: str
    objects: dict = field(default_factory=dict)
    reason: str = ""

    @property
    def yours(self) -> bool:
        return bool(self.objects)

    @property
    def whose(self) -> str:
        """``"yours (chapter 01, exercise RMSNorm)"`` or ``"lmlab's (yours: 01.RMSNorm: not implemented yet)"``."""
        if self.yours:
            names = ", ".join(e[3:] for e in self.exercises)
            return f"yours (chapter {self.exercises[0][:2]}, exercise{'s' if len(self.exercises) > 1 else ''} {names})"
        return f"lmlab's (yours: {self.reason})"


@dataclass
class Parts:
    """What :func:`my_parts` returns: ``parts[kind]`` -> :class:`Part`, and the :class:`Course` it read."""

    parts: dict[str, Part]
    course: Course

    def __getitem__(self, kind: str) -> Part:
        return self.parts[kind]

    def get(self, kind: str, name: str, default=None):
        """The learner's object ``name`` of part ``kind`` if that part is theirs, else ``default`` (lmlab's)."""
        if kind not in self.parts:
            raise ValueError(f"kind must be one of {tuple(self.parts)}, got {kind!r}")
        return self.parts[kind].objects.get(name, default)

    def model_parts(self) -> dict:
        """The learner's parts for :func:`lmlab.model.llama.build_llama` (``parts=``), only those that passed."""
        found = {}
        for kind, name in (("norm", "RMSNorm"), ("ffn", "SwiGLU"), ("position", "RotaryEmbedding"),
                           ("decode_step", "decode_step")):
            if self.parts[kind].yours:
                found[kind] = self.parts[kind].objects[name]
        if self.parts["attention"].yours:
            found["attention"] = self.parts["attention"].objects["scaled_dot_product_attention"]
            found["repeat_kv"] = self.parts["attention"].objects["repeat_kv"]
        return found

    def table(self) -> list[tuple[str, str, str]]:
        """``(kind, whose, role)`` rows: whose says "yours (chapter NN, exercise X)" or "lmlab's (yours: reason)"."""
        return [(p.kind, p.whose, p.role) for p in self.parts.values()]

    def __str__(self) -> str:
        width = max(len(k) for k in self.parts)
        return "\n".join(f"{kind:<{width}}  {whose}" for kind, whose, _ in self.table())


def my_parts(folder: str | Path | None = None, kinds: list[str] | None = None, timeout: float | None = None,
             jobs: int | None = None) -> Parts:
    """Your capstone parts: grade the exercises each needs in ``folder`` (default :func:`default_folder`),
    then load the passing ones into this process (your notebook's kept definitions are executed here).

    ``kinds``: which parts of :data:`CAPSTONE_PARTS` (default all). A part whose exercises did not all pass
    carries the reason, and the caller uses lmlab's reference for it.
    """
    kinds = list(CAPSTONE_PARTS) if kinds is None else kinds
    if not isinstance(kinds, list) or not set(kinds) <= set(CAPSTONE_PARTS):
        raise ValueError(f"kinds must be a list of {tuple(CAPSTONE_PARTS)}, got {kinds!r}")
    ids = [i for k in kinds for i in CAPSTONE_PARTS[k][0]]
    course = read_notebooks(folder, exercises=ids, timeout=timeout, jobs=jobs)
    modules: dict[str, types.ModuleType | str] = {}
    parts = {}
    for kind in kinds:
        exercise_ids, role = CAPSTONE_PARTS[kind]
        statuses = [course.exercise(i) for i in exercise_ids]
        failing = [s for s in statuses if not s.passed]
        part = Part(kind, exercise_ids, role)
        if failing:
            part.reason = failing[0].why()
        else:
            chapter = exercise_ids[0][:2]
            if chapter not in modules:
                try:
                    modules[chapter] = _load(course.chapters[chapter].code, chapter)
                except Exception as exc:  # graded in a child process, but may fail here (another working directory)
                    modules[chapter] = f"loading {course.chapters[chapter].notebook} raised {type(exc).__name__}: {exc}"
            module = modules[chapter]
            if isinstance(module, str):
                part.reason = module
            else:
                part.objects = {i[3:]: getattr(module, i[3:]) for i in exercise_ids}
        parts[kind] = part
    return Parts(parts, course)


def capstone_status(course: Course) -> dict[str, bool | None]:
    """capstone part -> True (all its exercises passed), False (not yet), None (its chapters were not read)."""
    if not isinstance(course, Course):
        raise ValueError(f"course must be a Course (from read_notebooks), got {type(course).__name__}")
    out = {}
    for kind, (ids, _) in CAPSTONE_PARTS.items():
        try:
            out[kind] = all(course.exercise(i).passed for i in ids)
        except (KeyError, ValueError):
            out[kind] = None
    return out


def progress_report(course: Course) -> str:
    """The ``lmlab progress`` text: points per chapter (or "not started"), the capstone parts already
    yours, and the next exercise to do."""
    if not isinstance(course, Course):
        raise ValueError(f"course must be a Course (from read_notebooks), got {type(course).__name__}")
    lines = [f"Your progress in {course.folder}", "", f"{'chapter':<8} {'points':>9}  status"]
    for chapter, status in sorted(course.chapters.items()):
        if status.error and not status.started:
            state = "not started" + (f" ({status.error})" if status.notebook else "")
        elif status.points == status.max_points:
            state = "done"
        elif status.started:
            passed = sum(e.passed for e in status.exercises)
            state = f"in progress: {passed}/{len(status.exercises)} exercises passed"
        else:
            state = "not started"
        lines.append(f"{chapter:<8} {f'{status.points}/{status.max_points}':>9}  {state}")
    lines.append(f"{'total':<8} {f'{course.points}/{course.max_points}':>9}")
    parts = capstone_status(course)
    yours = [f"{k} ({CAPSTONE_PARTS[k][0][0][:2]})" for k, ok in parts.items() if ok]
    todo = [f"{k} ({CAPSTONE_PARTS[k][0][0][:2]})" for k, ok in parts.items() if ok is False]
    lines += ["", f"Capstone parts already yours: {', '.join(yours) or 'none yet'}"]
    if todo:
        lines.append(f"Capstone parts still lmlab's: {', '.join(todo)}")
    nxt = course.next_exercise()
    if nxt is None:
        lines.append("Next: nothing left here, every exercise passed. Well done!")
    else:
        where = course.chapters[nxt.id[:2]].notebook or f"{nxt.id[:2]}_*.ipynb"
        lines.append(f"Next: {nxt.id} in {where}" + (f" ({nxt.why()})" if nxt.status not in ("not implemented", "not started") else ""))
    return "\n".join(lines)


def progress_command(folder: str | None = None, chapters_: list[str] | None = None, timeout: float | None = None) -> int:
    """The ``lmlab progress [FOLDER] [--chapter NN ...]`` command: print :func:`progress_report`; exit status."""
    try:
        course = read_notebooks(folder, chapters_=chapters_, timeout=timeout)
    except ValueError as exc:
        print(f"lmlab progress: {exc}", file=sys.stderr)
        return 2
    print(progress_report(course))
    return 0
