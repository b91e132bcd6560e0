"""``lmlab grade --strict``: find learner code that uses lmlab's own implementation of a graded exercise.

lmlab ships the reference implementation of every exercise (``lmlab.data.masks.causal_mask`` …), so a
learner can ``from lmlab.data.masks import causal_mask`` and pass. :func:`reference_uses` reads the kept
definitions (with :mod:`ast`, nothing is run) and names each import of the exercise's reference, or of
a module whose attribute of that name the code then uses. The sandbox adds a run-time check (the
graded object's ``__module__`` is lmlab's). Without ``--strict`` these are warnings; with it the
exercise scores 0. Determined copying (pasting lmlab's source) is not detected.
"""

from __future__ import annotations

import ast
import importlib
from typing import Any

from lmlab.grading.extract import parse_python
from lmlab.grading.registry import Exercise

__all__ = ["resolve_reference", "reference_names", "reference_uses", "object_origin"]


def resolve_reference(reference: Any) -> Any:
    """The implementation an exercise's ``reference`` names: ``"lmlab.mod:fn"`` or a zero-argument callable."""
    if isinstance(reference, str):
        module, sep, name = reference.partition(":")
        if not sep or not module or not name:
            raise ValueError(f"reference must look like 'lmlab.module:name', got {reference!r}")
        obj = importlib.import_module(module)
        for part in name.split("."):
            obj = getattr(obj, part)
        return obj
    if callable(reference):
        return reference()
    raise ValueError(f"reference must be 'lmlab.module:name' or a zero-argument callable, got {type(reference).__name__}")


def reference_names(exercise: Exercise) -> tuple[str | None, set[str]]:
    """``(module of the reference or None, names it may be imported under)``."""
    if not isinstance(exercise, Exercise):
        raise ValueError(f"exercise must be an Exercise, got {type(exercise).__name__}")
    names, module = {exercise.name}, None
    if exercise.reference_name is not None:  # "lmlab.mod:name"; a reference adapter in lmlab.grading names no core module
        mod, _, qual = exercise.reference_name.partition(":")
        if not mod.startswith("lmlab.grading"):
            module = mod
            names.add(qual.split(".")[-1])
    elif exercise.reference is not None:
        try:
            ref = resolve_reference(exercise.reference)
        except Exception:  # noqa: BLE001 - a broken reference is the tests' business, not the learner's
            ref = None
        mod = getattr(ref, "__module__", None) or ""
        if mod.startswith("lmlab.") and not mod.startswith("lmlab.grading"):
            module = mod
            names.add(getattr(ref, "__name__", exercise.name))
    return module, names


def reference_uses(exercise: Exercise, snippets: list[dict]) -> list[str]:
    """One line per place the learner's code imports lmlab's implementation of ``exercise``."""
    if not isinstance(snippets, list):
        raise ValueError(f"snippets must be a list of {{filename, source}} dicts, got {type(snippets).__name__}")
    ref_module, names = reference_names(exercise)
    found, aliases = [], {}  # alias -> lmlab module imported under it
    trees = []
    for snip in snippets:
        try:
            trees.append((snip["filename"], parse_python(snip["source"])))
        except (SyntaxError, KeyError, TypeError, ValueError):
            continue
    for filename, tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "lmlab" and node.level == 0:
                if node.module.startswith("lmlab.grading"):
                    continue
                for alias in node.names:
                    if alias.name in names:
                        found.append(f"{filename}, line {node.lineno}: from {node.module} import {alias.name}")
                    else:
                        aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] == "lmlab" and not alias.name.startswith("lmlab.grading"):
                        aliases[alias.asname or alias.name.split(".")[0]] = alias.name if alias.asname else "lmlab"
    for filename, tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in names:
                base = node.value
                while isinstance(base, ast.Attribute):
                    base = base.value
                if isinstance(base, ast.Name) and base.id in aliases:
                    found.append(f"{filename}, line {node.lineno}: uses {ast.unparse(node)} (lmlab's own)")
    return found


def object_origin(obj: Any) -> dict:
    """``{"type", "module"}`` of ``obj`` (a harness too: ``call_with(obj, "lmlab.grading.strict:object_origin")``)."""
    return {"type": type(obj).__name__, "module": str(getattr(obj, "__module__", None))}
