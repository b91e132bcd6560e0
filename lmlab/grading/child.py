"""The learner's side of the sandbox: ``python -m lmlab.grading.child READ_FD WRITE_FD``.

Runs the learner's kept definitions, then serves the parent's requests (call, get/set an attribute,
run a harness, backpropagate) on the objects it holds, answering with plain trees
(:mod:`lmlab.grading.wire`). It never decides anything: the checks and the verdict live in the parent
(:mod:`lmlab.grading.sandbox`). Its stdout and stderr go to /dev/null; it runs under memory, file-size
and process limits and an audit hook that refuses new processes, signals, sockets, ``ctypes`` and
reading the course's solutions.
"""

from __future__ import annotations

import os
import pickle
import sys
import time
import types

from lmlab.grading.guard import GradingTimeout, error_location, time_limit
from lmlab.grading.harness import resolve_target
from lmlab.grading.wire import (MAX_FRAME, ProtocolError, changes, check_depth, describe_type, dumps_plain, recv_exact, send_frame,
                                snapshot, tensor_tree, to_scalar)

_TENSORS: dict[int, list] = {}  # tid -> [tensor, stamp]; parent tids > 0, ours < 0
_TENSOR_IDS: dict[int, int] = {}  # id(tensor) -> tid
_MODULES: dict[int, list] = {}  # mid -> [module, snapshot of plain attributes]
_HANDLES: dict[int, object] = {}
_GRAPHS: dict[int, tuple] = {}
_IO = {"r": -1, "w": -1}
_COUNT = {"tid": 0, "hid": 0, "gid": 0}
_BLOCKED = ("os.fork", "os.forkpty", "os.posix_spawn", "os.spawn", "os.exec", "os.system", "subprocess.Popen",
            "pty.spawn", "os.kill", "os.killpg", "signal.pthread_kill", "ctypes.dlopen", "socket.connect", "socket.bind")


# ---------------------------------------------------------------------------------------------
# Rebuilding what the parent pickled (called by pickle.loads in this process)
# ---------------------------------------------------------------------------------------------


def _register(t, tid: int):
    _TENSORS[tid] = [t, snapshot(t)]
    _TENSOR_IDS[id(t)] = tid
    return t


def _tensor(tid, data, requires_grad, is_param, grad):
    import torch

    t = torch.nn.Parameter(data, requires_grad=requires_grad) if is_param else data.requires_grad_(requires_grad)
    if grad is not None:
        t.grad = grad
    return _register(t, tid)


def _known_tensor(tid):
    return _TENSORS[tid][0]


def _module_new(mid, cls):
    m = cls.__new__(cls)
    _MODULES[mid] = [m, {}]
    return m


def _known_module(mid):
    return _MODULES[mid][0]


def _handle(hid):
    return _HANDLES[hid]


class _Callback:
    """A function of the check's that could not travel: calling it asks the parent to run it."""

    def __init__(self, cid):
        self.cid = cid

    def __call__(self, *args, **kwargs):
        _reply(("cb", self.cid, _encode(args, 0, None), _encode(kwargs, 0, None)))
        _, ok, value = _request()
        if not ok:
            raise RuntimeError(f"a function the grader passed to your code failed: {value}")
        return value


def _callback(cid):
    return _Callback(cid)


# ---------------------------------------------------------------------------------------------
# Plain trees for the parent
# ---------------------------------------------------------------------------------------------


def _new_id(kind: str) -> int:
    _COUNT[kind] += 1
    return _COUNT[kind]


def _encode(v, depth, outs):
    """``v`` as a plain tree; tensors requiring grad of a call's result go to ``outs`` (for backward)."""
    import torch

    check_depth(depth)
    s = to_scalar(v)
    if s is not None or v is None:
        return ("v", s)
    if isinstance(v, torch.dtype):
        return ("dtype", str(v).removeprefix("torch."))
    if isinstance(v, torch.device):
        return ("device", str(v))
    if isinstance(v, torch.Size):
        return ("size", tuple(int(i) for i in v))
    if isinstance(v, torch.Tensor):
        if id(v) in _TENSOR_IDS:
            return ("ref", _TENSOR_IDS[id(v)])
        if isinstance(v, torch.nn.Parameter) or (outs is None and v.is_leaf):  # shared from now on
            tid = -_new_id("tid")
            _register(v, tid)
            grad = tensor_tree(v.grad) if v.grad is not None else None
            return ("new", tid, tensor_tree(v), bool(v.requires_grad), isinstance(v, torch.nn.Parameter), grad)
        if outs is not None and v.requires_grad and torch.is_grad_enabled():
            outs.append(v)
            return ("G", len(outs) - 1, tensor_tree(v))
        return ("T", tensor_tree(v))
    if isinstance(v, (types.GeneratorType, range, type({}.keys()), type({}.values()))):
        v = list(v)
    for cls, tag in ((list, "l"), (tuple, "t"), (set, "s"), (frozenset, "f")):
        if isinstance(v, cls):
            return (tag, [_encode(x, depth + 1, outs) for x in v])
    if isinstance(v, dict):
        return ("d", [(_encode(k, depth + 1, outs), _encode(x, depth + 1, outs)) for k, x in v.items()])
    hid = _new_id("hid")
    _HANDLES[hid] = v
    return ("H", hid, describe_type(v))


def _changes() -> tuple[list, list]:
    """Tensors and modules that changed since the last sync, as plain trees (and re-stamped)."""
    tensors = []
    for tid, entry in _TENSORS.items():
        t, old = entry
        data_changed, grad_changed = changes(t, old)
        if not (data_changed or grad_changed):
            continue
        data = tensor_tree(t) if data_changed else None
        grad = ("keep",) if not grad_changed else ("none",) if t.grad is None else ("set", tensor_tree(t.grad))
        tensors.append((tid, data, grad))
        entry[1] = snapshot(t)
    mods = []
    for mid, entry in _MODULES.items():
        attrs = _plain_attrs(entry[0])
        diff = {k: ("v", v) for k, v in attrs.items() if entry[1].get(k, object()) != v or k not in entry[1]}
        if diff:
            mods.append((mid, list(diff.items())))
        entry[1] = attrs
    return tensors, mods


def _plain_attrs(m) -> dict:
    return {k: v for k, v in vars(m).items() if not k.startswith("_") and (v is None or isinstance(v, (bool, int, float, str)))}


def _apply_push(push) -> None:
    import torch

    tensors, mods = push
    for tid, data, grad in tensors:
        t = _TENSORS[tid][0]
        with torch.no_grad():
            if data is not None:
                if data.shape == t.shape:
                    t.copy_(data)
                else:
                    t.data = data
            if grad[0] == "none":
                t.grad = None
            elif grad[0] == "set":
                t.grad = grad[1]
        _TENSORS[tid][1] = snapshot(t)
    for mid, attrs in mods:
        m = _MODULES[mid][0]
        for k, v in attrs.items():
            setattr(m, k, v)
    for entry in _MODULES.values():
        entry[1] = _plain_attrs(entry[0])


# ---------------------------------------------------------------------------------------------
# Serving
# ---------------------------------------------------------------------------------------------


def _reply(msg) -> None:
    payload = dumps_plain(msg)
    if len(payload) > MAX_FRAME:
        payload = dumps_plain(("err", {"type": "ValueError", "bases": ["ValueError"], "where": "",
                                       "message": "your code returned more data than the grader accepts"}, [], []))
    send_frame(_IO["w"], payload)


def _request():
    import struct

    (n,) = struct.unpack("<Q", recv_exact(_IO["r"], 8))
    return pickle.loads(recv_exact(_IO["r"], n))


def _error_info(exc: BaseException) -> dict:
    bases = [c.__name__ for c in type(exc).__mro__ if c.__module__ == "builtins"]
    text = str(exc)
    return {"type": type(exc).__name__, "bases": bases, "message": text[:500], "where": error_location(exc),
            "code": exc.code if isinstance(exc, SystemExit) and (exc.code is None or isinstance(exc.code, (int, str))) else None}


def _run(msg):
    import torch

    op = msg[0]
    if op == "backward":
        _, gid, grads, tids = msg[:4]
        outs, ins = _GRAPHS[gid], [_TENSORS[tid][0] for tid in tids]
        saved = [t.grad for t in ins]
        for t in ins:
            t.grad = None
        pairs = [(o, g) for o, g in zip(outs, grads) if g is not None]
        if pairs:
            torch.autograd.backward([o for o, _ in pairs], [g for _, g in pairs], retain_graph=True)
        got = [t.grad for t in ins]
        for t, g in zip(ins, saved):
            t.grad = g
            _TENSORS[_TENSOR_IDS[id(t)]][1] = snapshot(t)
        return ("l", [("T", tensor_tree(g)) if g is not None else ("v", None) for g in got]), None
    obj = _HANDLES[msg[1]]
    if op == "getattr":
        return _encode(getattr(obj, msg[2]), 0, None), None
    if op == "setattr":
        setattr(obj, msg[2], msg[3])
        return ("v", None), None
    if op == "dunder":
        name, args = msg[2], msg[3]
        if name == "__iter__":
            return _encode(list(iter(obj)), 0, None), None
        fn = {"__len__": len, "__repr__": repr, "__str__": str, "__bool__": bool}.get(name)
        value = fn(obj) if fn else getattr(obj, name)(*args)
        return _encode(value, 0, None), None
    if op in ("call", "call_with"):
        _, _, name, args, kwargs, grad_enabled = msg[:6]
        if op == "call_with":
            fn, args = resolve_target(name), (obj, *args)
        else:
            fn = obj if name is None else getattr(obj, name)
        with torch.set_grad_enabled(grad_enabled):
            value = fn(*args, **kwargs)
            outs: list = []
            tree = _encode(value, 0, outs if grad_enabled else None)
        graph = None
        if outs:
            gid = _new_id("gid")
            _GRAPHS[gid] = outs
            graph = gid
        return tree, graph
    raise ProtocolError(f"unknown request {op!r}")


def _serve() -> None:
    while True:
        try:
            msg = _request()
        except EOFError:
            os._exit(0)
        except Exception as exc:  # noqa: BLE001 - e.g. a check's class this process cannot import
            _reply(("err", {"type": "GraderError", "bases": ["Exception"], "where": "",
                            "message": f"the grader's arguments could not be received here ({type(exc).__name__}: {exc})"}, [], []))
            continue
        try:
            _apply_push(msg[-1])
            tree, graph = _run(msg)
            tensors, mods = _changes()
            _reply(("ok", tree, tensors, mods, graph))
        except BaseException as exc:  # noqa: BLE001 - whatever the learner's code raised: report it
            try:
                tensors, mods = _changes()
            except BaseException:  # noqa: BLE001
                tensors, mods = [], []
            _reply(("err", _error_info(exc), tensors, mods))


def _user_tasks() -> int:
    """Threads of all processes of this user now (what RLIMIT_NPROC counts)."""
    uid, total = str(os.getuid()), 0
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/status") as f:
                fields = dict(line.split(":", 1) for line in f if ":" in line)
        except OSError:
            continue
        if fields.get("Uid", "").split()[:1] == [uid]:
            total += int(fields.get("Threads", "1").strip() or 1)
    return total


def _limit(job: dict) -> None:
    import resource

    vm = 0
    try:
        with open("/proc/self/status") as f:
            vm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
    except (OSError, StopIteration, ValueError):
        pass
    # RLIMIT_NPROC counts every thread of this user (and does not bind root): allow what runs now, plus a few
    for res, value in ((resource.RLIMIT_AS, vm + job["memory"]), (resource.RLIMIT_NPROC, _user_tasks() + job["nproc"]),
                       (resource.RLIMIT_FSIZE, job["fsize"]), (resource.RLIMIT_CORE, 0)):
        try:
            resource.setrlimit(res, (value, value))
        except (ValueError, OSError):
            pass
    deny = tuple(os.path.realpath(d) + os.sep for d in job["deny"])

    def hook(event, args):
        if event.startswith(_BLOCKED):
            raise PermissionError(f"the grader does not let your code use {event}")
        if event == "open" and deny and isinstance(args[0], (str, bytes)):
            path = os.path.realpath(os.fsdecode(args[0]))
            if path.startswith(deny):
                raise PermissionError(f"the grader does not let your code read {path}")

    sys.addaudithook(hook)


def main(argv: list[str]) -> None:
    _IO["r"], _IO["w"] = int(argv[0]), int(argv[1])
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)  # the learner's prints, even from C code, go nowhere
    job = _request()
    import signal

    import torch

    torch.set_num_threads(1)
    import importlib

    # the chapter's grader module, before the audit hook: the check's own classes (stand-in sub-layers) unpickle here
    importlib.import_module(f"lmlab.grading.chapters.ch{job['exercise'][:2]}")
    _limit(job)
    module = types.ModuleType("learner")
    sys.modules["learner"] = module
    started = time.perf_counter()
    _reply(("defining",))  # the parent's clock for the definitions starts now
    try:
        with time_limit(job["timeout"]):
            for snippet in job["snippets"]:
                exec(compile(snippet["source"], snippet["filename"], "exec"), module.__dict__)
    except BaseException as exc:  # noqa: BLE001
        timeout = isinstance(exc, GradingTimeout)
        _reply(("failed", "timeout" if timeout else "failed", {**_error_info(exc), "timeout": timeout}))
        os._exit(0)
    signal.signal(signal.SIGALRM, signal.SIG_DFL)
    name = job["name"]
    found = name in module.__dict__
    tree = _encode(module.__dict__.get(name), 0, None) if found else ("v", None)
    module_name = getattr(module.__dict__.get(name), "__module__", None)
    _reply(("ready", found, tree, str(module_name), round(time.perf_counter() - started, 3)))
    _serve()


if __name__ == "__main__":  # run the imported module, so pickle's references find the same registries
    from lmlab.grading import child

    child.main(sys.argv[1:])
