"""The graders are not vacuous, for every exercise of the course (in-process, fast).

For each registered exercise: the solution from ``solutions/`` passes, lmlab's reference passes, the
generated stub from ``exercises/`` reports "not implemented", and every plausible wrong answer in
``tests/grading_wrong_answers.py`` (at least two per exercise) fails.
"""

from __future__ import annotations

import time
import types

import pytest
import torch

from grading_wrong_answers import WRONG_ANSWERS
from lmlab.course.notebooks import ROOT
from lmlab.grading import all_exercises, check, check_all, grade_object
from lmlab.grading.engine import run_exercise
from lmlab.grading.extract import extract
from lmlab.grading.registry import Check, Exercise, UnknownExercise, get_exercise
from lmlab.grading.strict import resolve_reference

EXERCISES = all_exercises()
IDS = [ex.id for ex in EXERCISES]


def _load(folder: str, chapter: str) -> types.ModuleType:
    """The kept definitions of ``folder/NN_*.py``, executed in a fresh module."""
    (src,) = sorted((ROOT / folder).glob(f"{chapter}_*.py"))
    module = types.ModuleType(f"{folder}_{chapter}")
    for snippet in extract(src).snippets:
        exec(compile(snippet.source, snippet.filename, "exec"), module.__dict__)
    return module


_modules: dict = {}


def _defined(folder: str, exercise: Exercise):
    key = (folder, exercise.chapter)
    if key not in _modules:
        _modules[key] = _load(folder, exercise.chapter)
    return getattr(_modules[key], exercise.name)


def test_there_are_enough_exercises():
    assert len([i for i in IDS if i.startswith("00.")]) >= 4


@pytest.mark.parametrize("exercise", EXERCISES, ids=IDS)
def test_solution_passes(exercise):
    result = run_exercise(exercise, _defined("solutions", exercise))
    assert result.status == "passed", result
    assert result.points == exercise.points and result.checks_passed == len(exercise.checks)


@pytest.mark.parametrize("exercise", EXERCISES, ids=IDS)
def test_reference_passes(exercise):
    assert exercise.reference is not None, f"{exercise.id} needs a reference implementation in lmlab"
    result = run_exercise(exercise, resolve_reference(exercise.reference))
    assert result.status == "passed", result


def test_references_are_named_by_a_dotted_string():
    unnamed = [ex.id for ex in EXERCISES if ex.reference_name is None]
    assert not unnamed, f"give these a reference='lmlab.module:name' (not a callable): {unnamed}"


@pytest.mark.parametrize("exercise", EXERCISES, ids=IDS)
def test_stub_reports_not_implemented(exercise):
    result = run_exercise(exercise, _defined("exercises", exercise))
    assert result.status == "not implemented", result
    assert result.points == 0 and "NotImplementedError" in result.reason


@pytest.mark.parametrize("exercise", EXERCISES, ids=IDS)
def test_every_exercise_has_at_least_two_wrong_answers(exercise):
    assert len(WRONG_ANSWERS.get(exercise.id, {})) >= 2, f"add plausible wrong answers for {exercise.id} to tests/grading_wrong_answers.py"


WRONG_CASES = [(ex_id, what, impl) for ex_id, cases in WRONG_ANSWERS.items() for what, impl in cases.items()]


@pytest.mark.parametrize("exercise_id,what,impl", WRONG_CASES, ids=[f"{i}:{w}" for i, w, _ in WRONG_CASES])
def test_wrong_answer_fails(exercise_id, what, impl):
    result = grade_object(exercise_id, impl)
    assert result.status == "failed", f"{what}: {result}"
    assert result.points == 0 and result.reason


def test_failure_report_names_case_expected_and_got(capsys):
    check("00.causal_mask", WRONG_ANSWERS["00.causal_mask"]["upper triangle (transposed)"])
    out = capsys.readouterr().out
    assert out.startswith("❌ 00.causal_mask failed")
    assert "case 1 of 3" in out and "expected False, got True" in out and "hint:" in out
    assert "Traceback" not in out


def test_wrong_type_and_shape_say_what_was_expected(capsys):
    check("00.causal_mask", lambda T: torch.ones(T, T).tril())
    assert "dtype torch.bool" in capsys.readouterr().out
    check("00.causal_mask", lambda T: torch.ones(T, T + 1, dtype=torch.bool))
    assert "shape (1, 1)" in capsys.readouterr().out
    check("00.causal_mask", lambda T: [[True]])
    assert "should return a tensor" in capsys.readouterr().out
    check("00.causal_mask", lambda: None)  # wrong signature
    out = capsys.readouterr().out
    assert "TypeError" in out and "expected: causal_mask(T: int)" in out
    check("00.CharTokenizer", lambda text: None)
    assert "expected a class" in capsys.readouterr().out


def test_passed_and_not_implemented_reports(capsys):
    check("00.causal_mask", resolve_reference(get_exercise("00.causal_mask").reference))
    assert capsys.readouterr().out.startswith("✅ 00.causal_mask passed (3 checks)")

    def causal_mask(T):
        raise NotImplementedError("hint")

    check("00.causal_mask", causal_mask)
    assert capsys.readouterr().out.startswith("⏳ 00.causal_mask not implemented yet")


def test_unknown_id_lists_the_chapter(capsys):
    check("00.causal_maks", lambda T: None)
    out = capsys.readouterr().out
    assert "00.causal_mask" in out and "00.prefix_lm_mask" in out and "no exercise" in out
    check(42, None)
    assert "string" in capsys.readouterr().out
    with pytest.raises(UnknownExercise, match="00.causal_mask"):
        get_exercise("00.nope")


def test_check_looks_up_the_name_in_the_caller(capsys):
    check("00.sample_batch")  # not defined in this module: reported, not raised
    assert "no definition of `sample_batch`" in capsys.readouterr().out


def test_endless_loop_is_stopped(capsys):
    def causal_mask(T):
        while True:
            pass

    start = time.perf_counter()
    check("00.causal_mask", causal_mask, timeout=0.5)
    assert time.perf_counter() - start < 5
    assert "timed out" in capsys.readouterr().out


def test_huge_print_sys_exit_and_errors_are_contained(capsys):
    def loud(T):
        print("x" * 5_000_000)
        return torch.ones(T, T, dtype=torch.bool).tril()

    result = grade_object("00.causal_mask", loud)
    assert result.status == "passed" and len(result.output) < 3000

    def leaves(T):
        raise SystemExit(3)

    assert "sys.exit" in grade_object("00.causal_mask", leaves).reason

    def crashes(T):
        return 1 / 0

    result = grade_object("00.causal_mask", crashes)
    assert result.status == "failed" and "ZeroDivisionError" in result.reason and "in crashes" in result.reason


def test_check_all_prints_a_table(capsys):
    ns = {ex.name: resolve_reference(ex.reference) for ex in EXERCISES if ex.chapter == "00"}
    ns.pop("sample_batch")
    check_all("00", namespace=ns)
    out = capsys.readouterr().out
    total = sum(ex.points for ex in EXERCISES if ex.chapter == "00")
    assert f"total: {total - 2}/{total}" in out and "not implemented" in out
    check_all("0")
    assert "two-digit" in capsys.readouterr().out


def test_checks_are_deterministic():
    """Seeded: the same wrong answer fails the same way twice."""
    impl = WRONG_ANSWERS["00.sample_batch"]["ignores the generator"]
    a, b = grade_object("00.sample_batch", impl), grade_object("00.sample_batch", impl)
    assert (a.status, a.reason, a.check) == (b.status, b.reason, b.check)


def test_exercise_validates_its_fields():
    ok = dict(id="99.f", points=1, signature="f()", hint="h", checks=(Check("c", lambda f: None),))
    Exercise(**ok)
    for bad in (dict(id="f"), dict(points=0), dict(checks=()), dict(kind="module"), dict(timeout=0), dict(hint="")):
        with pytest.raises(ValueError):
            Exercise(**{**ok, **bad})
    with pytest.raises(ValueError, match="timeout"):
        run_exercise(get_exercise("00.causal_mask"), None, timeout=-1)
