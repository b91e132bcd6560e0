"""The table behind every registry of the model (lessons 00-04, 06, 13): name -> :class:`Part`.

:mod:`lmlab.model.registry` keeps one :class:`PartRegistry` per kind of part (norms, norm placements, FFNs,
positions, attentions) and :mod:`lmlab.model.positions.rope_scaling` one for RoPE's context extensions. This
module has no entries: it is the shared machinery (lookup with a message that lists the registered names),
imported by both. Parameters are counted on the built model (:func:`lmlab.scaling.counting.param_counts`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator

__all__ = ["Part", "PartRegistry"]


@dataclass(frozen=True)
class Part:
    """One entry of a table: ``build`` makes the module; ``info`` holds what the config needs to know
    without building (``gated`` FFNs, the ``learned`` position table). Its parameters are counted on
    the built module (:func:`lmlab.scaling.counting.param_counts`), never by a formula here."""

    kind: str
    name: str
    build: Callable
    info: dict = field(default_factory=dict)


class PartRegistry:
    """Name -> :class:`Part` for one kind of part. Iterates over the names (it reads like the
    tuples it replaced: ``"rmsnorm" in NORMS``, ``tuple(NORMS)``)."""

    def __init__(self, kind: str, what: str):
        self.kind, self.what = kind, what
        self._parts: dict[str, Part] = {}

    def register(self, name: str, build: Callable, **info) -> Part:
        """Add a part. A name already taken is a ``ValueError`` (use :func:`unregister` first)."""
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"a {self.kind} part's name must be an identifier-like string, got {name!r}")
        if name in self._parts:
            raise ValueError(f"{self.kind} part {name!r} is already registered; registered {self.kind}s: {self.names()}")
        if not callable(build):
            raise ValueError(f"{self.kind} part {name!r}: build must be callable, got {type(build).__name__}")
        part = Part(self.kind, name, build, dict(info))
        self._parts[name] = part
        return part

    def unregister(self, name: str) -> None:
        self[name]  # noqa: B018 - raises with the registered names
        del self._parts[name]

    def names(self) -> tuple[str, ...]:
        return tuple(self._parts)

    def __getitem__(self, name: str) -> Part:
        if name not in self._parts:
            raise ValueError(f"unknown {self.kind} {name!r}; registered {self.kind}s: {self.names()}")
        return self._parts[name]

    def __contains__(self, name) -> bool:
        return isinstance(name, str) and name in self._parts

    def __iter__(self) -> Iterator[str]:
        return iter(tuple(self._parts))

    def __len__(self) -> int:
        return len(self._parts)

    def __eq__(self, other) -> bool:  # NORMS == ("layernorm", "rmsnorm") while only the built-ins are in
        return self.names() == tuple(other) if isinstance(other, (tuple, list)) else other is self

    __hash__ = object.__hash__

    def __repr__(self) -> str:
        return f"{self.what}{self.names()}"
