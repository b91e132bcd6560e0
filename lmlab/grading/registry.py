"""The exercise registry: every graded exercise of the course, by id.

An exercise is identified as ``"NN.name"`` (chapter, then the name the learner defines), e.g.
``"00.causal_mask"``. Each chapter's graders live in a module ``lmlab/grading/chapters/chNN.py`` that
calls :func:`register` at import time (a long chapter imports its ``chNN_*.py`` parts at the top, and
they register theirs) and states the chapter's order in a tuple ``EXERCISES`` of ids: the order of the
lesson's notebook, which :func:`chapter_exercises`, the score table and the exercise notebook follow.
:func:`all_exercises` imports every such module and checks that ``EXERCISES`` lists exactly the
chapter's registered exercises, so a new chapter only has to add its file.

A check is a small function that receives the learner's object (a function or a class) and either
returns (passed) or raises :class:`CheckFailed` with a message that says what was expected. Checks
compare against torch built-ins, independent constructions, or properties — never only against
lmlab's own implementation — and seed any randomness they use.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from dataclasses import dataclass, field
from typing import Any, Callable

from lmlab.grading.harness import resolve_target

__all__ = [
    "CheckFailed", "Check", "Exercise", "register", "get_exercise", "all_exercises",
    "chapter_exercises", "chapters", "UnknownExercise",
]

ID_PATTERN = re.compile(r"^(\d\d)\.([A-Za-z_][A-Za-z0-9_]*)$")
REFERENCE_PATTERN = re.compile(r"^lmlab(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$")
DEFAULT_TIMEOUT = 5.0  # seconds of the learner's code per exercise (imports not counted)


class CheckFailed(Exception):
    """Raised by a check: ``message`` says what was expected and what came back."""


class UnknownExercise(ValueError):
    """An exercise id that is not registered; the message lists the chapter's valid ids."""


@dataclass(frozen=True)
class Check:
    """One case of an exercise: ``description`` names it in reports, ``fn(obj)`` runs it."""

    description: str
    fn: Callable[[Any], None]


@dataclass(frozen=True)
class Exercise:
    """A graded exercise.

    Attributes:
        id: ``"NN.name"``; ``name`` is what the learner defines in the notebook.
        points: what passing every check is worth.
        signature: how the learner's object is called, shown when a call fails, e.g.
            ``"causal_mask(T: int) -> torch.Tensor (T, T) of bool"``.
        hint: one sentence that nudges without giving the answer (also the stub's message).
        checks: the cases, run in order; the first failure stops the exercise.
        reference: lmlab's own implementation (for the tests that prove the checks accept a
            correct answer), named by a dotted string ``"lmlab.module:name"``; a zero-argument
            callable returning it is still accepted. ``exercise.reference()`` returns the object
            either way, ``exercise.reference_name`` is the string (or None).
        kind: ``"function"`` or ``"class"``.
        timeout: seconds the learner's code may run for this exercise.
        hints: optional tiered hints, shown collapsed one at a time in the exercise notebook:
            the concept, then shapes and steps, then a code outline (never the solution).
            ``hint`` stays the one-line nudge (also the stub's message).
        minutes: how long the exercise should take a learner (the notebook's "time" column).
    """

    id: str
    points: int
    signature: str
    hint: str
    checks: tuple[Check, ...]
    reference: str | Callable[[], Any] | None = None
    kind: str = "function"
    timeout: float = DEFAULT_TIMEOUT
    hints: tuple[str, ...] = ()
    minutes: int | None = None
    name: str = field(init=False)
    chapter: str = field(init=False)
    reference_name: str | None = field(init=False, default=None)

    def __post_init__(self):
        if isinstance(self.reference, str):
            target = self.reference
            if not REFERENCE_PATTERN.match(target):
                raise ValueError(f"reference must look like 'lmlab.module:name', got {target!r}")
            object.__setattr__(self, "reference_name", target)
            object.__setattr__(self, "reference", lambda: resolve_target(target))
        elif self.reference is not None and not callable(self.reference):
            raise ValueError(f"reference must be 'lmlab.module:name' or a zero-argument callable, got {self.reference!r}")
        m = ID_PATTERN.match(self.id) if isinstance(self.id, str) else None
        if not m:
            raise ValueError(f"id must look like '00.causal_mask' (chapter.name), got {self.id!r}")
        object.__setattr__(self, "chapter", m.group(1))
        object.__setattr__(self, "name", m.group(2))
        if not isinstance(self.points, int) or self.points < 1:
            raise ValueError(f"points must be a positive int, got {self.points!r}")
        if not self.checks:
            raise ValueError(f"checks must not be empty (exercise {self.id})")
        if self.kind not in ("function", "class"):
            raise ValueError(f"kind must be 'function' or 'class', got {self.kind!r}")
        if not self.timeout > 0:
            raise ValueError(f"timeout must be > 0 seconds, got {self.timeout!r}")
        if not self.hint:
            raise ValueError(f"hint must not be empty (exercise {self.id})")
        if not isinstance(self.hints, tuple) or not all(isinstance(h, str) and h for h in self.hints):
            raise ValueError(f"hints must be a tuple of non-empty strings (concept, steps, outline), got {self.hints!r}")
        if self.minutes is not None and (isinstance(self.minutes, bool) or not isinstance(self.minutes, int) or self.minutes < 1):
            raise ValueError(f"minutes must be None or an int >= 1, got {self.minutes!r}")


_REGISTRY: dict[str, Exercise] = {}
_ORDER: dict[str, tuple[str, ...]] = {}  # chapter -> its module's EXERCISES
_loaded = False


def register(exercise: Exercise) -> Exercise:
    """Add ``exercise`` to the registry (ids are unique)."""
    if not isinstance(exercise, Exercise):
        raise ValueError(f"exercise must be an Exercise, got {type(exercise).__name__}")
    if exercise.id in _REGISTRY and _REGISTRY[exercise.id] is not exercise:
        raise ValueError(f"exercise id {exercise.id!r} is registered twice")
    _REGISTRY[exercise.id] = exercise
    return exercise


def _chapter_order(module, chapter: str) -> tuple[str, ...]:
    """``module.EXERCISES``, checked: exactly the ids registered for ``chapter``, each once."""
    order = getattr(module, "EXERCISES", None)
    if not isinstance(order, tuple) or not all(isinstance(i, str) for i in order):
        raise ValueError(f"{module.__name__}.EXERCISES must be a tuple of exercise ids in the notebook's order, got {order!r}")
    registered = [i for i, ex in _REGISTRY.items() if ex.chapter == chapter]
    if len(set(order)) != len(order) or set(order) != set(registered):
        missing = sorted(set(registered) - set(order))
        unknown = sorted(set(order) - set(registered))
        twice = sorted({i for i in order if order.count(i) > 1})
        raise ValueError(f"{module.__name__}.EXERCISES must list each of chapter {chapter}'s registered exercises once: "
                         f"missing {missing}, not registered {unknown}, listed twice {twice}")
    return order


def _load_chapters() -> None:
    """Import every ``lmlab.grading.chapters.chNN`` module (each registers its exercises and states their order)."""
    global _loaded
    if _loaded:
        return
    package = f"{__package__}.chapters"
    modules = {}
    for info in sorted(pkgutil.iter_modules(importlib.import_module(package).__path__), key=lambda i: i.name):
        if re.fullmatch(r"ch\d\d", info.name):
            modules[info.name[2:]] = importlib.import_module(f"{package}.{info.name}")
    for chapter, module in modules.items():  # after every import: a chapter's parts have registered, too
        _ORDER[chapter] = _chapter_order(module, chapter)
    _loaded = True


def all_exercises() -> list[Exercise]:
    """Every registered exercise, sorted by id."""
    _load_chapters()
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]


def chapters() -> list[str]:
    """The chapters that have exercises, e.g. ``["00", "01"]``."""
    return sorted({ex.chapter for ex in all_exercises()})


def chapter_exercises(chapter: str) -> list[Exercise]:
    """The exercises of one chapter (``"00"``), in the notebook's order (its module's ``EXERCISES``)."""
    if not isinstance(chapter, str) or not re.fullmatch(r"\d\d", chapter):
        raise ValueError(f"chapter must be a two-digit string like '00', got {chapter!r}")
    _load_chapters()
    return [_REGISTRY[i] for i in _ORDER.get(chapter, ())]


def get_exercise(exercise_id: str) -> Exercise:
    """The exercise with this id; :class:`UnknownExercise` lists the valid ids if there is none."""
    _load_chapters()
    if isinstance(exercise_id, str) and exercise_id in _REGISTRY:
        return _REGISTRY[exercise_id]
    chapter = exercise_id.split(".")[0] if isinstance(exercise_id, str) else ""
    same = [ex.id for ex in all_exercises() if ex.chapter == chapter]
    if same:
        raise UnknownExercise(f"there is no exercise {exercise_id!r}; chapter {chapter} has: {', '.join(same)}")
    every = ", ".join(ex.id for ex in all_exercises())
    raise UnknownExercise(f"there is no exercise {exercise_id!r}; exercise ids look like '00.causal_mask'. Known: {every}")
