"""Run an lmlab harness function on the learner's object, where the learner's code lives.

Most checks simply call the learner's object (``f(x)``) and judge what comes back. Some exercises
need more than a call: "put your RMSNorm class in the model, train 20 steps, give me the losses", or
"run your training loop on this tiny model". Autograd and module state cannot cross a process
boundary, so such a check names a harness function in lmlab, as ``"module.path:function"``, and calls

    losses = call_with(obj, "lmlab.some_module:train_with_part", cfg_dict, steps=20)

The harness receives the learner's object as its first argument and must return plain values
(numbers, lists, dicts, tensors). The check then compares those values with a reference it computes
itself. In-process grading imports and calls the harness directly; the sandboxed grader (learner code
in a child process) routes the call into the child through the object's ``__lmlab_call_with__``.
"""

from __future__ import annotations

import importlib
import re
from typing import Any

__all__ = ["call_with", "resolve_target"]

_TARGET = re.compile(r"^lmlab(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$")


def resolve_target(target: str):
    """The function named by ``"lmlab.module:function"`` (only lmlab's own functions can be named)."""
    if not isinstance(target, str) or not _TARGET.match(target):
        raise ValueError(f"target must look like 'lmlab.module:function', got {target!r}")
    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)


def call_with(obj: Any, target: str, *args, **kwargs) -> Any:
    """``target(obj, *args, **kwargs)``, run wherever ``obj`` (the learner's code) lives."""
    route = getattr(type(obj), "__lmlab_call_with__", None)
    if route is not None:
        return route(obj, target, *args, **kwargs)
    return resolve_target(target)(obj, *args, **kwargs)
