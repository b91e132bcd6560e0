"""Proxies of the learner's objects for the checks, and the learner's exceptions re-raised in the grader.

:class:`Remote` stands for a function, class or instance that lives in the sandbox's child
(:mod:`lmlab.grading.sandbox`): calling it, reading or setting an attribute, ``len``/``iter``/indexing
are requests to the child. ``isinstance`` sees the learner's kind: a class proxy is a ``type`` whose
bases are the importable torch classes it derives from (``issubclass(proxy, torch.optim.Optimizer)``),
an instance proxy is an instance of a stand-in of its class. Exceptions raised by the learner's code
come back as subclasses of the same builtin exception, marked :class:`RemoteError`.
"""

from __future__ import annotations

import builtins
import contextlib
import sys
import types

import torch

__all__ = ["Remote", "RemoteError", "remote_exception"]


_REMOTE_ERRORS: dict[tuple, type] = {}


class RemoteError(Exception):
    """Marks an exception raised by the learner's code in the child (``lmlab_where`` says where)."""


def remote_exception(info: dict) -> BaseException:
    base = next((getattr(builtins, b) for b in info.get("bases", []) if isinstance(getattr(builtins, b, None), type)
                 and issubclass(getattr(builtins, b), BaseException)), Exception)
    if base is BaseException or issubclass(base, (KeyboardInterrupt, GeneratorExit)):
        base = Exception
    name = str(info.get("type", "Exception"))[:60]
    key = (name, base)
    if key not in _REMOTE_ERRORS:
        bases = (base,) if issubclass(base, RemoteError) else (RemoteError, base) if issubclass(base, Exception) else (base,)
        try:
            _REMOTE_ERRORS[key] = type(name if name.isidentifier() else "LearnerError", bases, {"__module__": "learner"})
        except TypeError:
            _REMOTE_ERRORS[key] = type("LearnerError", (RemoteError,), {"__module__": "learner"})
    exc = _REMOTE_ERRORS[key](str(info.get("message", "")))
    exc.lmlab_where = str(info.get("where", ""))
    if isinstance(exc, SystemExit):
        exc.code = info.get("code")
    return exc


_SHADOWS: dict[tuple, type] = {}


def _shadow(info: dict) -> type:
    """A stand-in class with the learner's class name and its importable bases (for isinstance)."""
    bases = []
    for entry in info.get("mro", []):
        mod, _, qual = str(entry).partition(":")
        if mod.split(".")[0] not in ("torch", "builtins", "collections", "abc", "typing") or mod not in sys.modules:
            continue
        obj = sys.modules[mod]
        for part in qual.split("."):
            obj = getattr(obj, part, None)
        if isinstance(obj, type) and obj is not object and not any(issubclass(b, obj) for b in bases):
            bases.append(obj)
            break
    key = (str(info.get("name")), tuple(bases))
    if key not in _SHADOWS:
        with contextlib.suppress(TypeError):
            _SHADOWS[key] = type(key[0] if key[0].isidentifier() else "Learner", tuple(bases) or (object,), {"__module__": "learner"})
    return _SHADOWS.get(key, object)


class Remote:
    """The learner's object (function, class or instance) as seen from the checks."""

    __slots__ = ("_sb", "_hid", "_info")

    def __init__(self, sandbox, hid: int, info: dict):  # sandbox: lmlab.grading.sandbox.Sandbox
        object.__setattr__(self, "_sb", sandbox)
        object.__setattr__(self, "_hid", hid)
        object.__setattr__(self, "_info", info)

    def _rpc(self, *msg):
        return object.__getattribute__(self, "_sb").request(msg)

    @property
    def __class__(self):  # isinstance(proxy, nn.Module) / isinstance(proxy, type) see the learner's kind
        info = object.__getattribute__(self, "_info")
        return type if info.get("kind") == "class" else types.FunctionType if info.get("kind") == "function" else _shadow(info)

    def __getattr__(self, name):
        info = object.__getattribute__(self, "_info")
        if name == "__bases__" and info.get("kind") == "class":
            return (_shadow(info),)
        if name in ("__name__", "__qualname__"):
            return info.get("name", "object")
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        return self._rpc("getattr", object.__getattribute__(self, "_hid"), name)

    def __setattr__(self, name, value):
        self._rpc("setattr", object.__getattribute__(self, "_hid"), name, value)

    def __call__(self, *args, **kwargs):
        return self._rpc("call", object.__getattribute__(self, "_hid"), None, args, kwargs, torch.is_grad_enabled())

    def __lmlab_call_with__(self, target, *args, **kwargs):
        return self._rpc("call_with", object.__getattribute__(self, "_hid"), target, args, kwargs, torch.is_grad_enabled())

    def _dunder(self, name, *args):
        return self._rpc("dunder", object.__getattribute__(self, "_hid"), name, args)

    def __len__(self):
        return self._dunder("__len__")

    def __iter__(self):
        return iter(self._dunder("__iter__"))

    def __getitem__(self, key):
        return self._dunder("__getitem__", key)

    def __setitem__(self, key, value):
        self._dunder("__setitem__", key, value)

    def __contains__(self, item):
        return self._dunder("__contains__", item)

    def __bool__(self):
        return self._dunder("__bool__")

    def __repr__(self):
        info = object.__getattribute__(self, "_info")
        return f"<your {info.get('kind', 'object')} {info.get('name', '')}>"
