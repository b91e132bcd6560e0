"""The grader's side of the sandbox: the learner's object lives in a child process, the checks run here.

:class:`Sandbox` starts ``python -m lmlab.grading.child``, sends it the learner's kept definitions and
hands back a :class:`Remote` proxy of the graded object. The checks call the proxy as if it were the
learner's function or class; the contract (what crosses, what is synced after each call) is in
:mod:`lmlab.grading.engine`'s docstring. Only plain data comes back (:mod:`lmlab.grading.wire`); the
child is killed when its time is up, when it starts more than ``max_procs`` processes, or at the end.
"""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import select
import signal
import struct
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Any

import torch

from lmlab.grading import child
from lmlab.grading.guard import GradingTimeout
from lmlab.grading.proxy import Remote, RemoteError, remote_exception
from lmlab.grading.registry import CheckFailed
from lmlab.grading.wire import MAX_FRAME, ProtocolError, changes, check_depth, loads_plain, send_frame, snapshot, tree_tensor

__all__ = ["Sandbox", "SandboxError", "Remote", "child_env", "session_processes", "share", "MEMORY_LIMIT", "MAX_PROCS"]

MEMORY_LIMIT = 2 * 1024 ** 3  # bytes of address space the learner's code may add after imports
MAX_PROCS = 8  # processes in the child's session (the child included)
FILE_LIMIT = 64 * 1024 ** 2  # bytes any file the child writes may reach
DEFINE_GRACE = 2.0  # seconds after the definitions' limit before the parent kills (the child's own timer goes first)


def share(obj):
    """Let the learner's code change ``obj`` (a tensor, or a module with its parameters and buffers) in
    place for the check to see: an optimizer's ``step()`` on the check's parameters, a cache the learner's
    function fills. Without it the learner's code works on a copy: its in-place writes to the check's
    tensors and modules never come back (so a check's inputs stay what the check drew). Returns ``obj``."""
    if isinstance(obj, torch.nn.Module):
        for t in list(obj.parameters()) + list(obj.buffers()):
            t._lmlab_shared = True
    elif not isinstance(obj, torch.Tensor):
        raise ValueError(f"share() takes a tensor or an nn.Module, got {type(obj).__name__}")
    obj._lmlab_shared = True
    return obj


def _shared(obj) -> bool:
    return getattr(obj, "_lmlab_shared", False) is True


class SandboxError(Exception):
    """The learner's process died, stalled or sent garbage; the message says which, for the learner."""


def session_processes(sid: int) -> list[int]:
    """Pids of the live processes whose session id is ``sid`` (Linux /proc; [] elsewhere)."""
    pids = []
    with contextlib.suppress(OSError):
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                with open(f"/proc/{name}/stat", "rb") as f:
                    fields = f.read().rsplit(b")", 1)[1].split()
            except OSError:
                continue
            if len(fields) > 3 and fields[0] != b"Z" and int(fields[3]) == sid:
                pids.append(int(name))
    return pids


# what the learner's process may see of the grader's environment: locale, paths, thread counts; never
# tokens or credentials an instructor's shell may hold (everything else is dropped)
ENV_ALLOW = ("PATH", "HOME", "LANG", "LANGUAGE", "LC_ALL", "LC_CTYPE", "TMPDIR", "TZ", "LD_LIBRARY_PATH", "PYTHONHASHSEED",
             "OMP_NUM_THREADS", "MKL_NUM_THREADS", "CUDA_VISIBLE_DEVICES", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


def child_env() -> dict:
    """The environment of the learner's process: the allow-listed variables (:data:`ENV_ALLOW`) only,
    this lmlab alone on the path, one thread, UTF-8 output."""
    env = {k: v for k, v in os.environ.items() if k in ENV_ALLOW}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent.parent)  # so the child finds this lmlab
    env.setdefault("OMP_NUM_THREADS", "1")
    env["PYTHONIOENCODING"] = "utf-8"
    return env


def _describe_exit(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


class _Bridge(torch.autograd.Function):
    """Gradients through the learner's computation: backward asks the child to backpropagate."""

    @staticmethod
    def forward(ctx, sandbox, gid, tids, outs, *inputs):  # noqa: D102
        ctx.sandbox, ctx.gid, ctx.tids, ctx.n = sandbox, gid, tids, len(inputs)
        return tuple(outs)

    @staticmethod
    def backward(ctx, *grads):  # noqa: D102
        got = ctx.sandbox.request(("backward", ctx.gid, [g.detach() if g is not None else None for g in grads], ctx.tids))
        got = list(got) + [None] * (ctx.n - len(got))
        return (None, None, None, None, *got[:ctx.n])


class _Pickler(pickle.Pickler):
    """Tensors, modules, proxies and lambdas as references both processes agree on."""

    def __init__(self, file, sandbox: "Sandbox"):
        super().__init__(file, protocol=4)
        self.sb = sandbox
        self.raw: set[int] = set()  # ids of transport copies: pickled as plain tensors

    def _raw(self, t):
        if t is not None:
            self.raw.add(id(t))
        return t

    def reducer_override(self, obj):
        sb = self.sb
        if isinstance(obj, torch.Tensor) and id(obj) in self.raw:
            return NotImplemented
        if isinstance(obj, torch.Tensor) and type(obj) in (torch.Tensor, torch.nn.Parameter):
            tid = sb.tensor_ids.get(id(obj))
            if tid is not None:
                return child._known_tensor, (tid,)
            tid = sb.register_tensor(obj)
            grad = self._raw(obj.grad.detach().clone() if obj.is_leaf and obj.grad is not None else None)
            return child._tensor, (tid, self._raw(obj.detach().clone()), bool(obj.requires_grad), isinstance(obj, torch.nn.Parameter), grad)
        if isinstance(obj, torch.nn.Module):
            mid = sb.module_ids.get(id(obj))
            if mid is not None:
                return child._known_module, (mid,)
            mid = sb.register_module(obj)
            return child._module_new, (mid, type(obj)), dict(vars(obj))
        if type(obj) is Remote:
            return child._handle, (object.__getattribute__(obj, "_hid"),)
        if isinstance(obj, types.FunctionType) and ("<lambda>" in obj.__qualname__ or "<locals>" in obj.__qualname__):
            sb.callbacks.append(obj)
            return child._callback, (len(sb.callbacks) - 1,)
        if isinstance(obj, types.GeneratorType):
            return list, (list(obj),)
        return NotImplemented


def _plain_attrs(m) -> dict:
    return {k: v for k, v in vars(m).items() if not k.startswith("_") and (v is None or isinstance(v, (bool, int, float, str)))}


class Sandbox:
    """One child process holding the learner's definitions (see the module docstring)."""

    def __init__(self, cwd: str | Path | None = None, memory: int = MEMORY_LIMIT, max_procs: int = MAX_PROCS):
        self.tensors: dict[int, list] = {}  # tid -> [tensor, stamp]
        self.tensor_ids: dict[int, int] = {}
        self.modules: dict[int, list] = {}  # mid -> [module, plain attrs]
        self.module_ids: dict[int, int] = {}
        self.callbacks: list = []
        self.budget = 0  # bytes of tensors the reply being decoded may still produce
        self.stale: set[int] = set()  # the check's tensors the learner's copy changed: re-sent before the next call
        self.memory, self.max_procs = memory, max_procs
        self.deadline = time.monotonic() + 180.0
        self.next_check = 0.0
        req_r, self._req_w = os.pipe()
        self._rep_r, rep_w = os.pipe()
        self.proc = subprocess.Popen([sys.executable, "-m", "lmlab.grading.child", str(req_r), str(rep_w)], pass_fds=(req_r, rep_w),
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     cwd=str(cwd) if cwd else None, env=child_env(), start_new_session=True)
        os.close(req_r)
        os.close(rep_w)

    # -- registries -------------------------------------------------------------------------------
    def register_tensor(self, t: torch.Tensor, tid: int | None = None) -> int:
        tid = tid if tid is not None else len(self.tensors) + 1
        while tid in self.tensors:
            tid += 1
        self.tensors[tid] = [t, snapshot(t)]
        self.tensor_ids[id(t)] = tid
        return tid

    def register_module(self, m: torch.nn.Module) -> int:
        mid = len(self.modules) + 1
        self.modules[mid] = [m, _plain_attrs(m)]
        self.module_ids[id(m)] = mid
        return mid

    # -- the conversation ---------------------------------------------------------------------------
    def start(self, job: dict, limit: float) -> tuple:
        """Send the job; return the child's first reply (``ready`` or ``failed``)."""
        job = {**job, "memory": self.memory, "nproc": self.max_procs * 4, "fsize": FILE_LIMIT}
        try:
            self._send(pickle.dumps(job, protocol=4))
        except OSError:
            raise SandboxError(f"the grading process could not start ({self._exit()})") from None
        self.deadline, self.ready_limit = time.monotonic() + 180.0, limit
        first = self._recv(starting=True)  # imports: slow on a busy machine, not the learner's time
        if first != ("defining",):
            return first
        # the learner's definitions run now: the exercise's own limit, enforced here (the child's timer can be caught)
        self.deadline = time.monotonic() + limit + DEFINE_GRACE
        try:
            return self._recv()
        except GradingTimeout:
            return ("failed", "timeout", {"timeout": True, "where": ""})

    def _send(self, payload: bytes) -> None:
        try:
            send_frame(self._req_w, payload)
        except OSError:
            raise SandboxError(f"your code ended the grading process ({self._exit()}): did it call os._exit, or crash Python?") from None

    def _push(self) -> tuple[list, list]:
        tensors = []
        for tid, entry in self.tensors.items():
            t, old = entry
            data_changed, grad_changed = changes(t, old)
            data_changed = data_changed or tid in self.stale
            if not (data_changed or grad_changed):
                continue
            self.stale.discard(tid)
            data = t.detach().clone() if data_changed else None
            grad = ("keep",) if not grad_changed else ("none",) if t.grad is None else ("set", t.grad.detach().clone())
            tensors.append((tid, data, grad))
            entry[1] = snapshot(t)
        mods = []
        for mid, entry in self.modules.items():
            attrs = _plain_attrs(entry[0])
            diff = {k: v for k, v in attrs.items() if k not in entry[1] or entry[1][k] != v}
            if diff:
                mods.append((mid, diff))
            entry[1] = attrs
        return tensors, mods

    def request(self, msg: tuple) -> Any:
        """Send ``msg`` (with the tensors and modules changed here since the last sync); the decoded answer."""
        buf = io.BytesIO()
        pickler = _Pickler(buf, self)
        push = self._push()
        for tid, data, grad in push[0]:
            pickler._raw(data)
            if grad[0] == "set":
                pickler._raw(grad[1])
        if msg[0] == "backward":
            for g in msg[2]:
                pickler._raw(g)
        try:
            pickler.dump(msg + (push,))
        except (pickle.PicklingError, TypeError, AttributeError) as exc:  # a check passed something that cannot travel
            raise SandboxError(f"the grader could not send its arguments to your code ({type(exc).__name__}: {str(exc)[:120]}); "
                               "please report this") from None
        self._send(buf.getvalue())
        while True:
            reply = self._recv()
            if not isinstance(reply, tuple) or not reply or reply[0] not in ("ok", "err", "cb"):
                raise SandboxError("your code's process sent a reply the grader cannot read (garbage on its channel)")
            if reply[0] == "cb":
                self._callback(reply)
                continue
            try:
                self._apply(reply[2], reply[3])
                if reply[0] == "err":
                    raise remote_exception(reply[1] if isinstance(reply[1], dict) else {})
                outs = None
                if reply[4] is not None:
                    outs = self._bridge(reply[1], reply[4])
                return self.decode(reply[1], 0, outs)
            except (ProtocolError, IndexError, KeyError, TypeError, ValueError) as exc:
                if isinstance(exc, RemoteError):
                    raise
                raise SandboxError(f"your code's process sent a malformed reply ({type(exc).__name__}: {str(exc)[:80]})") from None

    def _callback(self, reply) -> None:
        try:
            fn = self.callbacks[reply[1]]
            value = (True, fn(*self.decode(reply[2], 0, None), **self.decode(reply[3], 0, None)))
        except SandboxError:
            raise
        except Exception as exc:  # noqa: BLE001 - reported to the child as a failure of the callback
            value = (False, f"{type(exc).__name__}: {exc}")
        buf = io.BytesIO()
        _Pickler(buf, self).dump(("cbret",) + value)
        self._send(buf.getvalue())

    def _bridge(self, tree, gid) -> list:
        datas = []
        self._collect_g(tree, datas, 0)
        tids = [tid for tid, (t, _) in self.tensors.items() if t.requires_grad]
        inputs = [self.tensors[tid][0] for tid in tids]
        if not inputs:
            inputs = [torch.zeros((), requires_grad=True)]  # an anchor, so the outputs require grad
        outs = _Bridge.apply(self, int(gid), tids, datas, *inputs)
        return list(outs)

    def _collect_g(self, tree, datas, depth):
        check_depth(depth)
        if isinstance(tree, tuple) and tree and tree[0] == "G":
            datas.append(self._tensor(tree[2]))
        elif isinstance(tree, tuple) and tree and tree[0] in ("l", "t", "s", "f"):
            for x in tree[1]:
                self._collect_g(x, datas, depth + 1)
        elif isinstance(tree, tuple) and tree and tree[0] == "d":
            for k, x in tree[1]:
                self._collect_g(x, datas, depth + 1)

    def _apply(self, tensors, mods) -> None:
        changed = []
        for tid, data, grad in tensors:
            tid = int(tid)
            if tid < 0 and tid not in self.tensors:
                continue
            t = self.tensors[tid][0]
            if data is not None and tid > 0 and not _shared(t):  # the check's own input: the learner changed a copy
                self.stale.add(tid)
                changed.append(t)
                data = None
            with torch.no_grad():
                if data is not None:
                    new = self._tensor(data)
                    if new.shape == t.shape and new.dtype == t.dtype:
                        t.copy_(new)
                    else:
                        t.data = new
                if grad[0] == "none":
                    t.grad = None
                elif grad[0] == "set":
                    t.grad = self._tensor(grad[1])
            self.tensors[tid][1] = snapshot(t)
        for mid, attrs in mods:
            m = self.modules[int(mid)][0]
            if not _shared(m):  # the check's module: the learner's code changed its copy only; re-sent next call
                self.modules[int(mid)][1] = {}
                continue
            for k, v in attrs:
                if isinstance(k, str) and isinstance(v, tuple) and v[0] == "v" and (v[1] is None or isinstance(v[1], (bool, int, float, str))):
                    setattr(m, k, v[1])
            self.modules[int(mid)][1] = _plain_attrs(m)
        if changed:  # the grader's inputs are its own: writing to them is a failure, never a way to move the expected value
            shapes = ", ".join(str(tuple(t.shape)) for t in changed[:3])
            raise CheckFailed(f"your code changed its input tensor{'s' if len(changed) > 1 else ''} of shape {shapes} in place; "
                              "leave the inputs as they are and return new tensors")

    def _tensor(self, tree) -> torch.Tensor:
        """A tensor of the current reply, counted against its byte budget: the tensors one reply decodes to
        may not exceed the reply's own size (a buffer referenced N times in a pickle is not N buffers)."""
        raw = tree[2] if isinstance(tree, tuple) and len(tree) == 3 and isinstance(tree[2], bytes) else b""
        self.budget -= len(raw)
        if self.budget < 0:
            raise ProtocolError("its tensors add up to more bytes than it sent")
        return tree_tensor(tree)

    def decode(self, tree, depth, outs):
        """The value of a plain tree (validated; tensors rebuilt, handles become :class:`Remote`)."""
        check_depth(depth)
        if not isinstance(tree, tuple) or not tree or not isinstance(tree[0], str):
            raise ProtocolError("malformed value")
        tag = tree[0]
        if tag == "v":
            if not (tree[1] is None or isinstance(tree[1], (bool, int, float, str, bytes, complex))):
                raise ProtocolError("malformed scalar")
            return tree[1]
        if tag == "dtype":
            dt = getattr(torch, tree[1], None)
            if not isinstance(dt, torch.dtype):
                raise ProtocolError("unknown dtype")
            return dt
        if tag == "device":
            return torch.device(str(tree[1]))
        if tag == "size":
            return torch.Size([int(i) for i in tree[1]])
        if tag == "T":
            return self._tensor(tree[1])
        if tag == "G":
            return outs[tree[1]] if outs is not None else self._tensor(tree[2])
        if tag == "ref":
            return self.tensors[int(tree[1])][0]
        if tag == "new":
            _, tid, data, requires_grad, is_param, grad = tree
            t = self._tensor(data)
            t = torch.nn.Parameter(t, requires_grad=bool(requires_grad)) if is_param else t.requires_grad_(bool(requires_grad))
            if grad is not None:
                t.grad = self._tensor(grad)
            self.register_tensor(t, tid=int(tid))
            return t
        items = lambda: [self.decode(x, depth + 1, outs) for x in tree[1]]  # noqa: E731
        if tag in ("l", "t", "s", "f"):
            return {"l": list, "t": tuple, "s": set, "f": frozenset}[tag](items())
        if tag == "d":
            return {self.decode(k, depth + 1, outs): self.decode(x, depth + 1, outs) for k, x in tree[1]}
        if tag == "H":
            if not isinstance(tree[2], dict):
                raise ProtocolError("malformed handle")
            return Remote(self, int(tree[1]), tree[2])
        raise ProtocolError(f"unknown tag {tag!r}")

    def _recv(self, starting: bool = False):
        header = self._read(8, starting)
        (n,) = struct.unpack("<Q", header)
        if n > MAX_FRAME:
            raise SandboxError(f"your code's process sent {n:,} bytes at once (garbage on its channel?)")
        self.budget = n
        try:
            return loads_plain(self._read(n, starting))
        except ProtocolError as exc:
            raise SandboxError(f"your code's process sent a reply the grader cannot read ({exc})") from None

    def _read(self, n: int, starting: bool) -> bytes:
        chunks, left = [], n
        while left:
            now = time.monotonic()
            if now >= self.deadline:
                self.kill()
                if starting:
                    raise SandboxError("the grading process did not start in time")
                raise GradingTimeout()
            if now >= self.next_check:  # the process count, a few times a second
                self.next_check = now + 0.2
                if len(session_processes(self.proc.pid)) > self.max_procs:
                    self.kill()
                    raise SandboxError(f"your code started more than {self.max_procs - 1} processes; it was stopped")
            ready, _, _ = select.select([self._rep_r], [], [], min(0.2, max(0.0, self.deadline - now)))
            if not ready:
                continue
            chunk = os.read(self._rep_r, min(left, 1 << 20))
            if not chunk:
                raise SandboxError(f"your code ended the grading process ({self._exit()}): did it call os._exit, or crash Python?")
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)

    def _exit(self) -> str:
        try:
            self.proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            return "it stopped answering"
        return _describe_exit(self.proc.returncode)

    def kill(self) -> None:
        """Kill the child and everything in its session."""
        for pid in [self.proc.pid] + session_processes(self.proc.pid):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(OSError):
            os.killpg(self.proc.pid, signal.SIGKILL)

    def close(self) -> None:
        if self.proc.poll() is None or session_processes(self.proc.pid):
            self.kill()
        self.proc.wait()
        for fd in (self._req_w, self._rep_r):
            with contextlib.suppress(OSError):
                os.close(fd)
