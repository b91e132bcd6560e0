"""Regression tests for the attacks of issue 31 that the grader now defeats: each a tiny notebook (or a
tiny object) that implements nothing and must score nothing.

- writing to the check's inputs in place (``v.zero_()``, ``targets.fill_(-100)``) so that an expected
  value computed from them afterwards matches a constant answer;
- a NaN expected value (it used to pass anything);
- GQAttention's expected output built from the learner's own (zeroed) weights;
- one table of answers for every student (fixed seeds): the inputs now carry a per-run salt;
- catching the child's timer to stretch the definitions phase; escape sequences in a reason; the
  instructor's environment; a notebook that picks its chapters; malformed notebooks.
"""

from __future__ import annotations

import json
import math
import time

import pytest
import torch

from lmlab.course import notebooks as course
from lmlab.grading.assertions import expect_close
from lmlab.grading.cli import chapter_of, grade_command, grade_path
from lmlab.grading.engine import run_exercise
from lmlab.grading.extract import ExtractError
from lmlab.grading.registry import CheckFailed, get_exercise
from lmlab.grading.report import ExerciseResult, format_table
from lmlab.grading.sandbox import ENV_ALLOW, Sandbox, child_env
from lmlab.grading.wire import ProtocolError, dumps_plain, loads_plain

ATTACK_04 = '''
# %%
import torch
import torch.nn as nn
from lmlab.grading import check


# %%
def scaled_dot_product_attention(q, k, v, mask=None):
    v.zero_()  # the check's v: its "expected" attention output becomes zeros
    return torch.zeros(*q.shape[:-1], v.shape[-1])


check("04.scaled_dot_product_attention", scaled_dot_product_attention)


# %%
def repeat_kv(x, n_rep):
    x.zero_()
    return torch.zeros(x.shape[0], x.shape[1] * n_rep, *x.shape[2:])


check("04.repeat_kv", repeat_kv)


# %%
class GQAttention(nn.Module):
    def __init__(self, d_model, n_heads, n_kv_heads):
        super().__init__()
        hs = d_model // n_heads
        self.q_proj = nn.Linear(d_model, d_model, bias=False)
        self.k_proj = nn.Linear(d_model, n_kv_heads * hs, bias=False)
        self.v_proj = nn.Linear(d_model, n_kv_heads * hs, bias=False)
        self.o_proj = nn.Linear(d_model, d_model, bias=False)

    def forward(self, x):
        with torch.no_grad():
            for p in self.parameters():
                p.zero_()  # its own weights: the check used to build the expected output from them
        return torch.zeros_like(x)


check("04.GQAttention", GQAttention)
'''

ATTACK_00 = '''
# %%
import torch
from lmlab.grading import check


# %%
def cross_entropy(logits, targets):
    targets.fill_(-100)  # every target ignored: the reference cross-entropy becomes NaN
    return torch.tensor(float("nan"))


check("00.cross_entropy", cross_entropy)
'''


def test_in_place_writes_and_the_learners_own_weights_score_nothing(tmp_path):
    path = tmp_path / "04_attention.py"
    path.write_text(ATTACK_04, encoding="utf-8")
    record = grade_path(path, jobs=2)
    by_id = {r["id"]: r for r in record["exercises"]}
    assert record["score"] == 0, {i: r["reason"] for i, r in by_id.items() if r["points"]}
    for ex in ("04.scaled_dot_product_attention", "04.repeat_kv"):
        assert "changed its input tensor" in by_id[ex]["reason"] and "in place" in by_id[ex]["reason"]
    assert by_id["04.GQAttention"]["status"] == "failed" and by_id["04.GQAttention"]["checks_passed"] == 0


def test_nan_targets_trick_scores_nothing(tmp_path):
    path = tmp_path / "00_tour.py"
    path.write_text(ATTACK_00, encoding="utf-8")
    record = grade_path(path, jobs=2)
    ce = next(r for r in record["exercises"] if r["id"] == "00.cross_entropy")
    assert ce["points"] == 0 and "in place" in ce["reason"]


def test_expect_close_nan_and_inf():
    e = torch.tensor([1.0, -math.inf, 2.0])
    expect_close(torch.tensor([1.0, -math.inf, 2.0]), e, "same infinities")
    with pytest.raises(CheckFailed, match="infinities must match"):
        expect_close(torch.tensor([1.0, math.inf, 2.0]), e, "the wrong sign of inf")
    with pytest.raises(CheckFailed, match="infinities must match"):
        expect_close(torch.tensor([1.0, -1e30, 2.0]), e, "a finite value for -inf")
    with pytest.raises(CheckFailed, match="NaN"):
        expect_close(torch.tensor([1.0, -math.inf, math.nan]), e, "a NaN for a number")
    nan = torch.tensor([math.nan, 1.0])
    with pytest.raises(ValueError, match="allow_nan"):  # a NaN expected value is the check's mistake, never a pass
        expect_close(torch.tensor([math.nan, 1.0]), nan, "NaN expected")
    expect_close(torch.tensor([math.nan, 1.0]), nan, "NaN expected, allowed", allow_nan=True)
    with pytest.raises(CheckFailed, match="expected NaN"):
        expect_close(torch.tensor([0.0, 1.0]), nan, "NaN expected, allowed", allow_nan=True)


def test_a_table_of_answers_from_one_run_fails_the_next():
    """Record lmlab's own gpt_forward outputs at one salt and replay them: full marks at that salt
    (the replay is faithful), nothing at another (the inputs moved)."""
    ex = get_exercise("00.gpt_forward")
    reference = ex.reference()
    table = []

    def recorder(*args):
        table.append(reference(*args).detach().clone())
        return table[-1]

    assert run_exercise(ex, recorder, salt=1, capture=False).status == "passed"
    answers = list(table)

    def replay(state, idx, n_heads):
        return answers.pop(0).clone()

    assert run_exercise(ex, replay, salt=1, capture=False).status == "passed"
    answers[:] = list(table)
    result = run_exercise(ex, replay, salt=2, capture=False)
    assert result.status == "failed" and result.points == 0


SPIN_00 = '''
# %%
import time
from lmlab.grading import check


def spin():  # swallows the child's own timer again and again
    t0 = time.time()
    while time.time() - t0 < 120:
        try:
            while time.time() - t0 < 120:
                pass
        except BaseException:
            pass


SPIN = spin()


def causal_mask(T):
    raise ValueError("\\x1b[2K\\r\\x1b[32m00.causal_mask 2/2 passed\\x1b[8m")


check("00.causal_mask", causal_mask)
'''


def test_catching_the_timer_in_the_definitions_does_not_stretch_them(tmp_path):
    path = tmp_path / "00_tour.py"
    path.write_text(SPIN_00, encoding="utf-8")
    start = time.monotonic()
    record = grade_path(path, timeout=2, jobs=4)
    assert time.monotonic() - start < 60  # 7 exercises, 4 at a time: the 120-s loops were cut at 2 s + grace
    assert {r["status"] for r in record["exercises"]} == {"timeout"}
    assert all("definitions took more than 2 s" in r["reason"] for r in record["exercises"])


def test_escape_sequences_never_reach_the_table(tmp_path):
    path = tmp_path / "00_tour.py"
    path.write_text(SPIN_00.replace("SPIN = spin()\n", ""), encoding="utf-8")
    record = grade_path(path, jobs=2)
    mask = next(r for r in record["exercises"] if r["id"] == "00.causal_mask")
    assert mask["points"] == 0 and "ValueError" in mask["reason"]
    text = json.dumps(record, ensure_ascii=False) + format_table([ExerciseResult.from_dict(r) for r in record["exercises"]])
    assert "\x1b" not in text and "\r" not in text
    assert "[2K" not in mask["reason"] and "[8m" not in mask["reason"]


def test_the_child_sees_only_allow_listed_environment(monkeypatch):
    monkeypatch.setenv("GITHUB_TOKEN", "secret-123")
    env = child_env()
    assert "GITHUB_TOKEN" not in env and set(env) <= set(ENV_ALLOW) | {"PYTHONPATH", "PYTHONIOENCODING", "OMP_NUM_THREADS"}
    assert env["PYTHONPATH"] == str(course.ROOT)


OTHER_CHAPTER = '''
# %%
from lmlab.grading import check, check_all

# %%
def causal_mask(T):
    import torch
    return torch.ones(T, T, dtype=torch.bool).tril()


check("00.causal_mask", causal_mask)
check_all("04")
'''


def test_the_file_not_the_notebook_chooses_the_chapter(tmp_path):
    path = tmp_path / "04_attention.py"  # a chapter-04 notebook that also asks for chapter 00
    path.write_text(OTHER_CHAPTER, encoding="utf-8")
    record = grade_path(path, jobs=4)
    assert record["chapters"] == ["04"] and {r["id"][:2] for r in record["exercises"]} == {"04"}
    assert any("ignored the calls to chapter 00" in w for w in record["warnings"])
    unnamed = tmp_path / "mine.py"
    unnamed.write_text(OTHER_CHAPTER, encoding="utf-8")
    with pytest.raises(ExtractError, match="--chapter"):
        grade_path(unnamed)
    assert chapter_of(unnamed, ["00", "04"], "00") == ("00", ["ignored the calls to chapter 04's exercises: this notebook is graded on chapter 00"])


@pytest.mark.parametrize("nb", [
    {"cells": [{"cell_type": "code", "source": ["x = 1\n", 5]}]},
    {"cells": [{"cell_type": "code", "source": {"a": 1}}]},
    {"cells": [{"cell_type": "code", "source": None}]},
    {"cells": [[1, 2], "x", None, {"cell_type": ["code"]}]},
    {"cells": {"0": 1}},
    [1, 2, 3],
    "just a string",
    {"cells": [{"cell_type": "code", "source": "check(\"04.repeat_kv\")\n" + "(" * 2000 + ")" * 2000}]},
])
def test_every_malformed_notebook_is_exit_2_and_one_line(tmp_path, capsys, nb):
    path = tmp_path / "04_attention.ipynb"
    path.write_text(json.dumps(nb), encoding="utf-8")
    assert grade_command(str(path)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lmlab grade: ") and "\n" not in err


def test_one_buffer_referenced_many_times_is_not_decoded_many_times():
    """A reply pickle can reference one 32 MB bytes object N times for ~N bytes more; the grader decodes at
    most as many tensor bytes as the reply holds."""
    raw = bytes(4 * 1000)
    tree = ("l", [("T", ("float32", (1000,), raw))] * 40)
    payload = dumps_plain(tree)
    assert len(payload) < 2 * len(raw)  # pickle's memo: one copy of the buffer on the wire
    sb = Sandbox.__new__(Sandbox)  # only the decoder: no child process
    sb.tensors, sb.budget = {}, len(payload)
    with pytest.raises(ProtocolError, match="more bytes than it sent"):
        sb.decode(loads_plain(payload), 0, None)
    sb.budget = len(payload)
    one = sb.decode(loads_plain(dumps_plain(("T", ("float32", (1000,), raw)))), 0, None)
    assert one.shape == (1000,)
