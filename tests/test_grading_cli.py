"""``lmlab grade`` end to end: each exercise in its own subprocess (a few runs: each costs seconds)."""

from __future__ import annotations

import json
import shutil
import time

import pytest

from lmlab import cli
from lmlab.course import notebooks as course
from lmlab.grading.cli import grade_command
from lmlab.grading.registry import chapter_exercises
from lmlab.grading.runner import GRACE

TOTAL = sum(ex.points for ex in chapter_exercises("00"))
SOL = (course.ROOT / "solutions" / "00_tour.py").read_text(encoding="utf-8")


def test_generated_exercise_notebook_scores_zero_wherever_it_lives(tmp_path, capsys):
    copy = tmp_path / "my copy.ipynb"
    shutil.copy(course.ROOT / "exercises" / "00_tour.ipynb", copy)
    out_json = tmp_path / "grades.json"
    assert grade_command(str(copy), json_path=str(out_json)) == 0
    record = json.loads(out_json.read_text())
    assert (record["score"], record["max_score"]) == (0, TOTAL)
    assert {r["status"] for r in record["exercises"]} == {"not implemented"}
    table = capsys.readouterr().out
    assert "00.causal_mask" in table and f"total: 0/{TOTAL}" in table


def test_solution_notebook_gets_full_marks_json_to_stdout(capsys):
    assert cli.main(["grade", str(course.ROOT / "solutions" / "00_tour.ipynb"), "--json"]) == 0
    captured = capsys.readouterr()
    record = json.loads(captured.out)  # stdout is pure JSON; the table went to stderr
    assert record["score"] == record["max_score"] == TOTAL
    assert all(r["status"] == "passed" for r in record["exercises"])
    assert f"total: {TOTAL}/{TOTAL}" in captured.err


def _swap(text: str, old: str, new: str) -> str:
    assert old in text, old
    return text.replace(old, new)


def test_misbehaving_code_costs_only_its_own_points(tmp_path, capsys):
    text = SOL
    # an endless loop that even swallows the child's own timer: only the parent's kill stops it
    text = _swap(text, "    i = torch.arange(T)\n", "    while True:\n        try:\n            while True:\n                pass\n"
                 "        except BaseException:\n            pass\n")
    text = _swap(text, "    mask = torch.ones(T, T, dtype=torch.bool).tril()  # causal part\n",
                 "    import os\n    os._exit(3)\n")  # the process dies
    text = _swap(text, "        self.chars = sorted(set(text))\n", "        print('x' * 20_000_000)\n        self.chars = sorted(set(text))\n")
    text = _swap(text, "    log_probs = logits", "    import sys\n    sys.exit(1)\n    log_probs = logits")
    path = tmp_path / "broken.py"
    path.write_text(text + "\nimport sys\nsys.exit(2)\nprint('demo' * 10**7)\n", encoding="utf-8")
    limit = 2.0
    start = time.perf_counter()
    assert grade_command(str(path), json_path=str(tmp_path / "g.json"), timeout=limit) == 0
    elapsed = time.perf_counter() - start
    by_id = {r["id"]: r for r in json.loads((tmp_path / "g.json").read_text())["exercises"]}
    assert by_id["00.causal_mask"]["status"] == "timeout"
    assert by_id["00.causal_mask"]["seconds"] < limit + GRACE + 2
    assert by_id["00.prefix_lm_mask"]["status"] == "error" and "exit status 3" in by_id["00.prefix_lm_mask"]["reason"]
    assert by_id["00.CharTokenizer"]["status"] == "passed"  # a huge print costs nothing
    assert by_id["00.cross_entropy"]["status"] == "failed" and "sys.exit" in by_id["00.cross_entropy"]["reason"]
    assert by_id["00.sample_batch"]["status"] == "passed"
    assert elapsed < 120, f"grading took {elapsed:.0f} s"
    broken = {"00.causal_mask", "00.prefix_lm_mask", "00.cross_entropy"}  # the untouched exercises keep their points
    earned = sum(ex.points for ex in chapter_exercises("00") if ex.id not in broken)
    assert f"total: {earned}/{TOTAL}" in capsys.readouterr().out


@pytest.mark.parametrize(
    "content,name,message",
    [
        (None, "missing.ipynb", "no such file"),
        ("{oops", "bad.ipynb", "not valid JSON"),
        ("# %%\nx = 1\n", "plain.py", "not an exercise notebook"),
        ("# %%\ncheck('00.causal_mask', f)\n\n# %%\ndef f(T)\n    pass\n", "typo.py", "syntax error in cell 2, line 5"),
        ("# %%\ncheck('77.nothing', f)\n", "future.py", "chapter 77 has no graded exercises"),
    ],
    ids=["missing", "invalid-json", "not-exercise", "syntax-error", "unknown-chapter"],
)
def test_bad_input_is_one_line_and_nonzero(tmp_path, capsys, content, name, message):
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    assert grade_command(str(path)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lmlab grade: ") and message in err and "\n" not in err


def test_bad_timeout_is_refused(capsys):
    assert grade_command(str(course.ROOT / "exercises" / "00_tour.ipynb"), timeout=0) == 2
    assert "--timeout" in capsys.readouterr().err
