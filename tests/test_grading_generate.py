"""The exercise generator: one source of truth (solutions/), refusals, and the committed output."""

from __future__ import annotations

import ast
import re

import pytest

from lmlab import course
from lmlab.grading.generate import SolutionError, exercise_text, expected_exercise_files
from lmlab.grading.registry import chapter_exercises

ROOT = course.ROOT
SOL = (ROOT / "solutions" / "00_tour.py").read_text(encoding="utf-8")


def test_committed_exercises_are_regenerated_exactly():
    files = expected_exercise_files(ROOT)
    assert files, "no solutions/NN_*.py found"
    for path, text in files.items():
        assert path.exists(), f"{path} missing: run python -m lmlab.course build"
        assert path.read_text(encoding="utf-8") == text, f"{path.name} differs from its solution: run python -m lmlab.course build"
        ipynb = path.with_suffix(".ipynb")
        assert ipynb.read_text(encoding="utf-8") == course.ipynb_text(text), f"{ipynb.name} is stale"
    assert course.check() == []


def test_every_solution_notebook_starts_with_the_colab_cell():
    for src in sorted((ROOT / "solutions").glob("[0-9][0-9]_*.py")):
        import jupytext

        code = [c for c in jupytext.read(src).cells if c.cell_type == "code"]
        assert code[0].source == course.COLAB_SETUP_SOURCE, src.name
        assert "from lmlab.grading import check" in code[1].source, src.name


def test_stub_replaces_each_block_at_its_indentation():
    text = exercise_text(SOL, "00")
    assert "BEGIN SOLUTION" not in text and "END SOLUTION" not in text
    assert "logsumexp(logits, dim=-1, keepdim=True)  # (B, T, V)" not in text  # the answer is gone
    assert re.search(r"^    raise NotImplementedError\(\"mask\[i, j\]", text, re.M)  # function body
    assert re.search(r"^        raise NotImplementedError\(\"chars = sorted", text, re.M)  # method body
    assert "blob/main/exercises/00_tour.ipynb" in text and "blob/main/solutions/" not in text
    ast.parse(text)
    for ex in chapter_exercises("00"):
        assert f'check("{ex.id}", {ex.name})' in text


def _mutate(old: str, new: str, count: int = 1) -> str:
    assert old in SOL
    return SOL.replace(old, new, count)


@pytest.mark.parametrize(
    "text,message",
    [
        (_mutate("    ### END SOLUTION\n", ""), "inside another"),
        (SOL[: SOL.rindex("    ### END SOLUTION")], "never closed"),
        (_mutate("    ### BEGIN SOLUTION\n", ""), "without a"),
        (_mutate("    ### END SOLUTION\n", "  ### END SOLUTION\n"), "not indented like"),
        (SOL + "\n# %%\n### BEGIN SOLUTION\nx = 1\n### END SOLUTION\n", "top level"),
        (_mutate('check("00.cross_entropy", cross_entropy)', "print(cross_entropy)"), "00.cross_entropy has no check cell"),
        (_mutate("def sample_batch(", "def sample_batches("), "no exercise '00.sample_batches'"),
        (SOL.replace("    ### BEGIN SOLUTION\n    i = torch.arange(T)", "    i = torch.arange(T)").replace(
            "<= i[:, None]  # (T, T): key j <= query i\n    ### END SOLUTION\n", "<= i[:, None]  # (T, T): key j <= query i\n"),
         "00.causal_mask is registered but has no"),
        (_mutate("    ### BEGIN SOLUTION\n", "    ### BEGIN SOLUTION  extra\n"), "alone on its line"),
    ],
    ids=["nested", "unclosed", "end-without-begin", "indent", "top-level", "no-check-cell", "unknown-exercise",
         "exercise-without-block", "marker-with-text"],
)
def test_generator_refuses(text, message):
    with pytest.raises(SolutionError, match=re.escape(message)):
        exercise_text(text, "00", name="solutions/00_tour.py")


def test_generator_validates_its_arguments():
    with pytest.raises(ValueError, match="chapter"):
        exercise_text(SOL, "0")
    with pytest.raises(ValueError, match="solution_text"):
        exercise_text(None, "00")
    with pytest.raises(ValueError, match="root"):
        expected_exercise_files(str(ROOT))


def test_tiered_hints_are_collapsed_cells_without_the_solution():
    """Every exercise with ``hints`` gets one <details> block per tier before its check cell, and no
    tier repeats a line of the solution."""
    from lmlab.grading import all_exercises
    from lmlab.grading.generate import BEGIN, END, hint_cell

    tiered = [ex for ex in all_exercises() if ex.hints]
    assert len(tiered) >= 6
    files = expected_exercise_files(ROOT)
    for ex in tiered:
        (path,) = [p for p in files if p.name.startswith(ex.chapter + "_")]
        text = files[path]
        cell = "".join(hint_cell(ex))
        assert cell.count("<details>") == len(ex.hints) and cell in text
        assert text.index(cell) < text.index(f'check("{ex.id}"')
        src = (ROOT / "solutions" / path.name).read_text(encoding="utf-8")
        start = src.index(f"def {ex.name}(") if f"def {ex.name}(" in src else src.index(f"class {ex.name}")
        block = src[src.index(BEGIN, start) + len(BEGIN):src.index(END, start)]
        solution_lines = {line.strip() for line in block.splitlines() if len(line.strip()) > 30}
        for tier in ex.hints:
            for line in tier.splitlines():
                assert line.strip() not in solution_lines, f"{ex.id}: a hint tier contains a solution line: {line.strip()!r}"


def test_exercise_tables_have_a_time_column():
    for path, text in expected_exercise_files(ROOT).items():
        header = next((line for line in text.splitlines() if line.startswith("# | # | exercise | points")), None)
        assert header is not None and "time" in header, path.name


def test_exercise_hints_and_minutes_are_validated():
    from lmlab.grading.registry import Check, Exercise

    ok = dict(id="99.f", points=1, signature="f()", hint="h", checks=(Check("c", lambda f: None),))
    assert Exercise(**ok).hints == () and Exercise(**ok).minutes is None  # the single-string hint= still works alone
    Exercise(**ok, hints=("idea", "steps", "outline"), minutes=10)
    for bad in (dict(hints="one string"), dict(hints=("",)), dict(minutes=0), dict(minutes=True)):
        with pytest.raises(ValueError):
            Exercise(**ok, **bad)
