"""The wire between the grader (parent) and the learner's process (child) of :mod:`lmlab.grading.sandbox`.

Two directions, two rules:

* parent → child: ordinary pickle (the parent is trusted), with the sandbox's pickler turning tensors,
  ``nn.Module``\\ s, remote handles and lambdas into references both sides agree on;
* child → parent: a *plain tree* (:func:`encode`) of tuples, lists, strings, numbers and bytes, read back
  with :func:`loads_plain`, an unpickler that refuses every global. Nothing the child sends can run code
  in the parent or be anything but data; a malformed tree raises :class:`ProtocolError`.

Frames are an 8-byte length and a payload, at most :data:`MAX_FRAME` bytes.
"""

from __future__ import annotations

import io
import numbers
import os
import pickle
import struct
import types
from typing import Any

import torch

__all__ = ["ProtocolError", "MAX_FRAME", "send_frame", "recv_exact", "loads_plain", "dumps_plain",
           "tensor_tree", "tree_tensor", "describe_type", "snapshot", "changes"]

MAX_FRAME = 256 * 1024 * 1024  # bytes per message, either direction
_MAX_DEPTH = 64


class ProtocolError(Exception):
    """The other side sent something that is not a valid message."""


def send_frame(fd: int, payload: bytes) -> None:
    data = struct.pack("<Q", len(payload)) + payload
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def recv_exact(fd: int, n: int) -> bytes:
    """Read exactly ``n`` bytes (blocking); EOFError if the other side closed first."""
    chunks, left = [], n
    while left:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            raise EOFError("closed")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


class _NoGlobals(pickle.Unpickler):
    def find_class(self, module, name):  # noqa: D102 - the whole point: no class, no function, ever
        raise ProtocolError(f"the message names {module}.{name}; only plain data may come back")


def loads_plain(payload: bytes) -> Any:
    """Unpickle ``payload`` allowing only builtin containers and scalars (no globals at all)."""
    try:
        return _NoGlobals(io.BytesIO(payload)).load()
    except ProtocolError:
        raise
    except Exception as exc:  # noqa: BLE001 - anything malformed
        raise ProtocolError(f"unreadable message ({type(exc).__name__})") from None


def dumps_plain(tree: Any) -> bytes:
    return pickle.dumps(tree, protocol=4)


# ---------------------------------------------------------------------------------------------
# Tensors as plain data
# ---------------------------------------------------------------------------------------------


def tensor_tree(t: torch.Tensor) -> tuple:
    """``(dtype name, shape, raw bytes)`` of a CPU copy of ``t``."""
    t = t.detach().to("cpu").contiguous()
    if t.is_quantized or t.is_sparse or t.is_complex():
        raise TypeError(f"cannot send a {t.dtype} / sparse / quantized tensor")
    raw = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
    return (str(t.dtype).removeprefix("torch."), tuple(int(s) for s in t.shape), raw)


def _dtype(name: Any) -> torch.dtype:
    dt = getattr(torch, name, None) if isinstance(name, str) else None
    if not isinstance(dt, torch.dtype):
        raise ProtocolError(f"unknown dtype {name!r}")
    return dt


def tree_tensor(tree: Any) -> torch.Tensor:
    """The tensor of a :func:`tensor_tree` (validated)."""
    if not (isinstance(tree, tuple) and len(tree) == 3 and isinstance(tree[1], tuple) and isinstance(tree[2], bytes)):
        raise ProtocolError("malformed tensor")
    dt, shape, raw = _dtype(tree[0]), tree[1], tree[2]
    if not all(isinstance(s, int) and s >= 0 for s in shape):
        raise ProtocolError("malformed tensor shape")
    numel = 1
    for s in shape:
        numel *= s
    size = torch.empty((), dtype=dt).element_size()
    if numel * size != len(raw):
        raise ProtocolError("tensor bytes do not match its shape")
    if numel == 0:
        return torch.empty(shape, dtype=dt)
    return torch.frombuffer(bytearray(raw), dtype=torch.uint8).view(dt).reshape(shape).clone()


def snapshot(t: torch.Tensor) -> tuple:
    """What :func:`changes` compares: a copy of the data and of ``.grad`` (versions miss ``p.data.add_``)."""
    g = t.grad if t.is_leaf else None
    return (t.detach().clone(), id(g) if g is not None else None, g.detach().clone() if g is not None else None)


def _differ(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape != b.shape or a.dtype != b.dtype or not torch.equal(a, b)


def changes(t: torch.Tensor, snap: tuple) -> tuple[bool, bool]:
    """``(data changed, grad changed)`` of ``t`` since ``snap``."""
    g = t.grad if t.is_leaf else None
    data = _differ(t.detach(), snap[0])
    if g is None or snap[2] is None:
        return data, (g is None) != (snap[2] is None)
    return data, id(g) != snap[1] or _differ(g.detach(), snap[2])


def describe_type(obj: Any) -> dict:
    """What the parent needs to stand in for ``obj``: kind, name and the importable classes in its MRO."""
    cls = obj if isinstance(obj, type) else type(obj)
    mro = []
    for c in getattr(cls, "__mro__", ())[1 if isinstance(obj, type) else 0:]:
        mod = getattr(c, "__module__", "") or ""
        if mod == "builtins" or mod.split(".")[0] in ("torch", "lmlab", "collections", "typing", "abc"):
            mro.append(f"{mod}:{c.__qualname__}")
    kind = "class" if isinstance(obj, type) else "function" if isinstance(obj, (types.FunctionType, types.BuiltinFunctionType,
                                                                                  types.MethodType)) else "object"
    return {"kind": kind, "name": str(getattr(cls if kind != "function" else obj, "__name__", "object"))[:80],
            "mro": mro, "callable": callable(obj)}


def is_plain_scalar(v: Any) -> bool:
    return v is None or isinstance(v, (bool, int, float, str, bytes, complex))


def to_scalar(v: Any) -> Any:
    """Numbers that are not builtin (numpy) as builtin numbers; None if ``v`` is not a number."""
    if isinstance(v, bool) or is_plain_scalar(v):
        return v
    if isinstance(v, numbers.Integral):
        return int(v)
    if isinstance(v, numbers.Real):
        return float(v)
    return None


def check_depth(depth: int) -> None:
    if depth > _MAX_DEPTH:
        raise ProtocolError("message nested too deeply")
