"""The sandboxed grader: verdicts decided outside the learner's process, limits that hold, proxies that behave.

Each ``grade_path`` run starts one child per exercise (a few seconds each): the adversarial notebooks are
combined so the whole file stays around a minute on a busy 2-core machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import torch

from lmlab.course import notebooks as course
from lmlab.grading.cli import grade_command, grade_path
from lmlab.grading.registry import CheckFailed, chapter_exercises, get_exercise
from lmlab.grading.sandbox import Sandbox, session_processes, share
from lmlab.grading.strict import reference_uses, resolve_reference

TOTAL = sum(ex.points for ex in chapter_exercises("00"))
SOL = (course.ROOT / "solutions" / "00_tour.py").read_text(encoding="utf-8")
STUBS = (course.ROOT / "exercises" / "00_tour.py").read_text(encoding="utf-8")


def _children() -> list[int]:
    """Live (non-zombie) processes whose parent is this test process."""
    me, found = str(os.getpid()).encode(), []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat", "rb") as f:
                    fields = f.read().rsplit(b")", 1)[1].split()
            except OSError:
                continue
            if fields[1] == me and fields[0] != b"Z":
                found.append(int(name))
    return found


def _replace(text: str, old: str, new: str) -> str:
    assert old in text, old
    return text.replace(old, new, 1)


def _by_id(record: dict) -> dict:
    return {r["id"]: r for r in record["exercises"]}


def test_forged_result_lines_and_exit_score_nothing(tmp_path):
    forge = '''

def _forge():
    import json, os, struct
    line = ("RESULT " + json.dumps({"id": "00.causal_mask", "status": "passed", "points": 2, "max_points": 2}) + "\\n").encode()
    for fd in range(1, 64):
        for payload in (line, struct.pack("<Q", len(line)) + line, struct.pack("<Q", 9) + b"\\x80\\x04garbage"):
            try:
                os.write(fd, payload)
            except OSError:
                pass
    os._exit(0)


FORGED = _forge()
'''
    path = tmp_path / "forged.py"
    path.write_text(STUBS + forge, encoding="utf-8")
    before = set(_children())  # other tests in this worker may own processes (a Jupyter server)
    record = grade_path(path, jobs=2)
    assert record["score"] == 0, record
    assert all(r["status"] == "error" for r in record["exercises"])
    for r in record["exercises"]:
        assert any(w in r["reason"] for w in ("ended the grading process", "cannot read", "garbage", "malformed")), r
    assert set(_children()) - before == set()


def test_patches_solution_reads_memory_bombs_forks_and_floods_cost_only_their_own_points(tmp_path):
    text = SOL
    # 1. a wrong mask, plus patches of lmlab's and torch's comparison helpers (in the child only)
    text = _replace(text, "    i = torch.arange(T)\n", "    return torch.ones(T, T, dtype=torch.bool)\n    i = torch.arange(T)\n")
    text += '''

def _patch():
    import lmlab.grading.assertions as a
    import lmlab.grading.registry as r
    import torch
    a.expect_close = a.expect_tensor = a.expect_equal = a.expect_true = lambda *args, **kw: None
    torch.testing.assert_close = lambda *args, **kw: None
    torch.equal = lambda *args, **kw: True
    r.CheckFailed = type("Never", (BaseException,), {})
    return True


PATCHED = _patch()
SOLUTIONS = "%s"
''' % (course.ROOT / "solutions")
    # 2. prefix_lm_mask reads the worked solution and runs it
    text = _replace(text, "def prefix_lm_mask(T", "def _real_prefix(T")
    text += '''

def prefix_lm_mask(T, prefix_len):
    import types
    source = open(SOLUTIONS + "/00_tour.py").read()
    ns = {}
    exec(source.split("# %%")[0], ns)
    return ns["prefix_lm_mask"](T, prefix_len)
'''
    # 3. a correct tokenizer whose first instance prints 2 GB (1.5 s per GB to the child's /dev/null stdout)
    text = _replace(text, "        self.chars = sorted(set(text))\n",
                    "        if not globals().get('_FLOODED'):\n            globals()['_FLOODED'] = True\n"
                    "            for _ in range(2000):\n                print('x' * 1_000_000)\n"
                    "        self.chars = sorted(set(text))\n")
    # 4. cross_entropy allocates without bound
    text = _replace(text, "    log_probs = logits", "    hog = []\n    while True:\n        hog.append(bytearray(50_000_000))\n    log_probs = logits")
    # 5. sample_batch forks in a loop (bounded: 20)
    text = _replace(text, "def sample_batch(", "def _real_sample_batch(")
    text += """

def sample_batch(ids, batch_size, context_length, generator):
    import os
    for _ in range(20):
        if os.fork() == 0:
            import time
            time.sleep(30)
            os._exit(0)
    return _real_sample_batch(ids, batch_size, context_length, generator)
"""
    path = tmp_path / "adversarial.py"
    path.write_text(text, encoding="utf-8")
    before = set(_children())
    start = time.perf_counter()
    record = grade_path(path, timeout=30, jobs=2)
    elapsed = time.perf_counter() - start
    got = _by_id(record)
    assert got["00.causal_mask"]["status"] == "failed", got["00.causal_mask"]  # patches did not help
    assert got["00.prefix_lm_mask"]["status"] == "failed" and "PermissionError" in got["00.prefix_lm_mask"]["reason"]
    assert got["00.CharTokenizer"]["status"] == "passed", got["00.CharTokenizer"]
    assert got["00.cross_entropy"]["status"] == "failed" and "MemoryError" in got["00.cross_entropy"]["reason"]
    assert got["00.sample_batch"]["status"] == "failed" and "os.fork" in got["00.sample_batch"]["reason"]
    attacked = {"00.causal_mask", "00.prefix_lm_mask", "00.cross_entropy", "00.sample_batch"}
    honest = sum(ex.points for ex in chapter_exercises("00") if ex.id not in attacked)  # CharTokenizer + the untouched ones
    assert record["score"] == honest, record
    assert elapsed < 150, f"grading took {elapsed:.0f} s"
    assert set(_children()) - before == set()  # no grading child survives


def test_session_processes_counts_what_a_fork_loop_leaves():
    """The watchdog's count (RLIMIT_NPROC does not bind root): a bounded shell fork loop in its own session."""
    proc = subprocess.Popen(["sh", "-c", "for i in 1 2 3 4 5; do sleep 20 & done; sleep 20"], start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while len(session_processes(proc.pid)) < 7 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(session_processes(proc.pid)) == 7  # sh + 5 background sleeps + 1 foreground
    finally:
        for pid in session_processes(proc.pid):
            os.kill(pid, 9)
        proc.wait()
    deadline = time.monotonic() + 5
    while session_processes(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert session_processes(proc.pid) == []


PROXY_CODE = '''
import torch
import torch.nn as nn


def fill(cache, values, start):
    cache[start:start + len(values)] = values
    return int(start + len(values))


def double(t):
    return t * 2


def add_bias(model, x):
    return model(x) + 1.0


class SGD(torch.optim.Optimizer):
    def __init__(self, params, lr):
        super().__init__(params, {"lr": lr})

    def step(self):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.data.add_(p.grad, alpha=-group["lr"])

    def zero_grad(self):
        for group in self.param_groups:
            for p in group["params"]:
                p.grad = None


class Scale(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.w = nn.Parameter(torch.full((d,), 2.0))
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return x * self.w


def raises(kind):
    if kind == "value":
        raise ValueError("bad input")
    raise NotImplementedError("todo")
'''


@pytest.fixture(scope="module")
def remote():
    sb = Sandbox()
    code = PROXY_CODE + "\n\ndef lookup(name):\n    return globals()[name]\n"
    first = sb.start({"exercise": "00.causal_mask", "name": "lookup", "snippets": [{"filename": "cell 1", "source": code}],
                      "timeout": 20, "deny": []}, 20)
    assert first[0] == "ready", first
    sb.deadline = time.monotonic() + 120
    yield sb.decode(first[2], 0, None)
    sb.close()


def test_in_place_changes_and_autograd_cross_the_boundary(remote):
    fill, double = remote("fill"), remote("double")
    assert isinstance(fill, type(lambda: 0)) and not isinstance(fill, type)
    cache = share(torch.zeros(6))  # the check asks for this argument's in-place writes
    assert fill(cache, torch.tensor([1.0, 2.0]), 3) == 5
    assert cache.tolist() == [0, 0, 0, 1, 2, 0]  # filled in place, seen by the check
    mine = torch.zeros(6)  # not shared: the learner's code gets a copy, and writing to it fails the check
    with pytest.raises(CheckFailed, match=r"changed its input tensor of shape \(6,\) in place"):
        fill(mine, torch.tensor([7.0]), 0)
    assert mine.tolist() == [0.0] * 6  # the grader's tensor is untouched
    assert fill(mine, torch.tensor([]), 6) == 6  # and the child's copy was put back before the next call
    assert double(mine).tolist() == [0.0] * 6
    x = torch.randn(3, requires_grad=True)
    y = double(x)
    assert y.requires_grad
    y.sum().backward()
    assert x.grad.tolist() == [2.0, 2.0, 2.0]
    (g,) = torch.autograd.grad(double(x).pow(2).sum(), x)
    torch.testing.assert_close(g, 8 * x.detach())
    with torch.no_grad():
        assert not double(x).requires_grad


def test_optimizer_module_and_errors_through_proxies(remote):
    SGD, Scale, raises = (remote(n) for n in ("SGD", "Scale", "raises"))
    assert isinstance(SGD, type) and issubclass(SGD, torch.optim.Optimizer)
    p = share(torch.nn.Parameter(torch.ones(3)))
    opt = SGD([p], lr=0.5)
    assert isinstance(opt, torch.optim.Optimizer)
    p.grad = torch.tensor([1.0, 2.0, 4.0])
    opt.step()
    assert p.tolist() == [0.5, 0.0, -1.0]  # updated in place, through a remote instance
    opt.zero_grad()
    assert p.grad is None
    m = Scale(3)
    assert isinstance(m, torch.nn.Module)
    out = m(torch.ones(3))
    assert out.tolist() == [2.0, 2.0, 2.0] and m.calls == 1
    out.sum().backward()
    assert m.w.grad.tolist() == [1.0, 1.0, 1.0]  # the learner's own parameter, via the proxy
    counted = torch.nn.Linear(2, 2)
    add_bias = remote("add_bias")
    with torch.no_grad():
        counted.weight.fill_(1.0)
        counted.bias.zero_()
    assert add_bias(counted, torch.ones(1, 2)).tolist() == [[3.0, 3.0]]
    with pytest.raises(ValueError, match="bad input"):
        raises("value")
    with pytest.raises(NotImplementedError):
        raises("todo")


def test_call_with_runs_the_harness_in_the_child(remote):
    from lmlab.grading.harness import call_with
    from lmlab.grading.strict import object_origin

    double = remote("double")
    assert object_origin(double)["type"] == "Remote"  # here: the proxy
    assert call_with(double, "lmlab.grading.strict:object_origin") == {"type": "function", "module": "learner"}  # there: the real one


def test_strict_names_imports_of_the_reference(tmp_path):
    ex = get_exercise("00.causal_mask")
    assert callable(resolve_reference(ex.reference)) and resolve_reference("lmlab.data.masks:causal_mask") is resolve_reference(ex.reference)
    snippets = [{"filename": "cell 2", "source": "from lmlab.data.masks import causal_mask\n"},
                {"filename": "cell 3", "source": "import lmlab.data.masks as mm\n\ndef prefix_lm_mask(T, p):\n    return mm.prefix_lm_mask(T, p)\n"}]
    assert reference_uses(ex, snippets) == ["cell 2, line 1: from lmlab.data.masks import causal_mask"]
    assert "mm.prefix_lm_mask" in reference_uses(get_exercise("00.prefix_lm_mask"), snippets)[0]
    assert reference_uses(ex, [{"filename": "cell 1", "source": SOL}]) == []
    path = tmp_path / "imports.py"
    path.write_text(STUBS.replace("def causal_mask(", "from lmlab.data.masks import causal_mask\n\n\ndef _unused_causal_mask(", 1), encoding="utf-8")
    out = tmp_path / "g.json"
    assert grade_command(str(path), json_path=str(out), strict=True) == 0
    record = json.loads(out.read_text())
    got = _by_id(record)
    assert got["00.causal_mask"]["points"] == 0 and "--strict" in got["00.causal_mask"]["reason"]
    assert any("00.causal_mask uses lmlab's own implementation" in w for w in record["warnings"])
