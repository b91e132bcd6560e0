"""lmlab.course.experiments.__main__: the deep-run CLI writes the lesson's verdicts with their provenance."""

import json

import pytest

from lmlab.course.experiments.__main__ import main, run_chapter
from lmlab.course.experiments.ch02_activations import compare_activations, comparison_verdicts


def test_run_chapter_uses_the_lessons_code_and_helper():
    r = run_chapter("02", seeds=2, steps=3, width=16)
    again = compare_activations(seeds=(0, 1), steps=3, d_model=16)
    assert r["numbers"] == again.final_loss  # the same code path, seeded
    (sw,) = [v for v in comparison_verdicts(again, against="gelu", claims={"relu": "worse"}) if v["activation"] == "swiglu"]
    assert r["verdicts"]["swiglu vs gelu"] == sw["comparison"].to_dict()
    assert r["scale"] == {"seeds": 2, "steps": 3, "width": 16, "device": "cpu"}
    assert r["lmlab_version"] and r["hardware"]["cpu_count"] and r["wall_seconds"] > 0
    assert r["command"].startswith("python -m lmlab.course.experiments experiment 02")


def test_cli_writes_json(tmp_path):
    out = tmp_path / "deep.json"
    assert main(["experiment", "09", "--seeds", "2", "--steps", "12", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["command"] == f"python -m lmlab.course.experiments experiment 09 --seeds 2 --steps 12 --out {out}"
    assert set(data["verdicts"]) == {"no warm-up", "β2 = 0.999", "no clipping", "weight decay 0", "Adafactor", "batch ramp"}
    assert all(v is None or v["outcome"] in ("supports", "contradicts", "undetermined") for v in data["verdicts"].values())


def test_run_chapter_rejects_bad_input():
    with pytest.raises(ValueError, match="chapter must be one of"):
        run_chapter("07")
    with pytest.raises(ValueError, match="seeds must be an int >= 2"):
        run_chapter("01", seeds=1)
