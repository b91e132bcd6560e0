"""The exercise generator: one source of truth (solutions/), refusals, and the committed output."""

from __future__ import annotations

import ast
import re

import pytest

from lmlab.course import notebooks as course
from lmlab.grading.exercise_notebooks import SolutionError, exercise_text, expected_exercise_files
from lmlab.grading.registry import chapter_exercises

ROOT = course.ROOT
SOL = (ROOT / "solutions" / "00_tour.py").read_text(encoding="utf-8")


def test_committed_exercises_are_regenerated_exactly():
    files = expected_exercise_files(ROOT)
    assert files, "no solutions/NN_*.py found"
    for path, text in files.items():
        assert path.exists(), f"{path} missing: run python -m lmlab.course.notebooks build"
        assert path.read_text(encoding="utf-8") == text, f"{path.name} differs from its solution: run python -m lmlab.course.notebooks build"
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
    assert re.search(r"^        raise NotImplementedError\(\"the vocabulary is every distinct", text, re.M)  # method body
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
    from lmlab.grading.exercise_notebooks import BEGIN, END, hint_cell

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
        rows = [line for line in text.splitlines() if re.match(r"# \| \d+ \|", line)]
        assert len(rows) == len(chapter_exercises(path.name[:2])), f"{path.name}: one table row per exercise"
        assert all(re.search(r"\| \d+ min \|$", row) for row in rows), f"{path.name}: a row without its time: {rows}"


def test_exercise_hints_and_minutes_are_validated():
    from lmlab.grading.registry import Check, Exercise

    ok = dict(id="99.f", points=1, signature="f()", hint="h", checks=(Check("c", lambda f: None),))
    assert Exercise(**ok).hints == () and Exercise(**ok).minutes is None  # the single-string hint= still works alone
    Exercise(**ok, hints=("idea", "steps", "outline"), minutes=10)
    for bad in (dict(hints="one string"), dict(hints=("",)), dict(minutes=0), dict(minutes=True)):
        with pytest.raises(ValueError):
            Exercise(**ok, **bad)


# --- every exercise: three tiers, minutes, and no tier (nor the stub's hint, nor the docstring) repeats the solution ---


def _solution_blocks(src: str, name: str) -> list[str]:
    """The lines inside every solution block of the top-level function or class ``name`` in a solutions file."""
    from lmlab.grading.exercise_notebooks import BEGIN, END

    lines, out, owner, inside = src.splitlines(), [], None, False
    for line in lines:
        m = re.match(r"^(?:async\s+def|def|class)\s+([A-Za-z_][A-Za-z0-9_]*)", line)
        if m:
            owner = m.group(1)
        if line.strip() == BEGIN:
            inside = True
        elif line.strip() == END:
            inside = False
        elif inside and owner == name:
            out.append(line)
    return out


def _squash(text: str) -> str:
    return re.sub(r"\s+", "", text).lower()


def _solution_fragments(block_lines: list[str], min_chars: int = 23) -> set[str]:
    """Non-trivial solution lines (comment dropped, whitespace removed, lower case), and the right-hand side of each
    assignment; shorter than ``min_chars`` (``return out``, ``i += 1``) does not count."""
    frags = set()
    for line in block_lines:
        code = re.split(r"\s+#\s", line, maxsplit=1)[0].strip()
        for part in [code] + re.split(r"(?<![=!<>+\-*/%&|^])=(?!=)", code, maxsplit=1)[1:]:
            squashed = _squash(part)
            if len(squashed) >= min_chars:
                frags.add(squashed)
    return frags


def _docstring(src: str, name: str) -> str:
    """The docstrings of ``name`` (a function, or a class and its methods) in a solutions file."""
    for node in ast.parse(src).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name == name:
            nodes = [node] + [n for n in node.body if isinstance(n, ast.FunctionDef)]
            return "\n".join(ast.get_docstring(n) or "" for n in nodes)
    return ""


def _leaks(texts, fragments: set[str]) -> list[str]:
    return sorted(f for text in texts for f in fragments if f in _squash(text))


def _exercise_sources():
    from lmlab.grading import all_exercises

    for ex in all_exercises():
        (src_path,) = (ROOT / "solutions").glob(f"{ex.chapter}_*.py")
        src = src_path.read_text(encoding="utf-8")
        yield ex, src, _solution_blocks(src, ex.name)


def test_every_exercise_has_three_hint_tiers_and_minutes():
    exercises = list(_exercise_sources())
    assert len(exercises) >= 70
    for ex, _, block in exercises:
        assert len(ex.hints) == 3, f"{ex.id}: hints must be (idea, shapes and steps, code outline), got {len(ex.hints)} tiers"
        assert ex.minutes is not None and 1 <= ex.minutes <= 60, f"{ex.id}: minutes={ex.minutes!r}"
        assert "..." in ex.hints[2], f"{ex.id}: the code outline must leave its key lines as ..."
        assert block, f"{ex.id}: no solution block found for {ex.name}"


def test_no_hint_tier_stub_or_docstring_contains_a_solution_line():
    """No hint tier, no stub message (``hint``), no docstring of the exercise repeats a non-trivial solution line."""
    for ex, src, block in _exercise_sources():
        frags = _solution_fragments(block)
        assert not _leaks(ex.hints, frags), f"{ex.id}: a hint tier contains solution code: {_leaks(ex.hints, frags)}"
        assert not _leaks([ex.hint], frags), f"{ex.id}: the stub's hint contains solution code: {_leaks([ex.hint], frags)}"
        doc = _docstring(src, ex.name)
        assert not _leaks([doc], frags), f"{ex.id}: the docstring contains solution code: {_leaks([doc], frags)}"


def test_the_leak_check_catches_a_pasted_solution_line():
    """The check above would fail: pasting any exercise's longest solution line into a tier (re-indented, with a
    different comment or spacing) is found, and so is the right-hand side of an assignment."""
    caught = 0
    for ex, _, block in _exercise_sources():
        frags = _solution_fragments(block)
        if not frags:
            continue
        line = max((ln for ln in block if _squash(re.split(r"\s+#\s", ln)[0]) in frags), key=len)
        pasted = "x = ...\n" + "  ".join(line.strip().split(" ")) + "  # pasted"
        assert _leaks(ex.hints[:2] + (pasted,), frags), f"{ex.id}: a pasted solution line was not caught: {line!r}"
        caught += 1
    assert caught >= 60
    frags = _solution_fragments(["    starts = torch.randint(len(ids) - context_length, (batch_size,), generator=g)  # (B,)"])
    assert _leaks(["draw them with torch.randint(len(ids) - context_length, (batch_size,), generator=g)"], frags)
    assert not _leaks(["draw them with torch.randint(..., generator=g)"], frags)
    assert not _solution_fragments(["        return out", "    i += 1", "    if x <= 0:"])


def test_exercise_tables_match_the_registry_and_one_liners_are_warm_ups():
    """Each exercise table row shows the registered points and minutes; a row marked "warm-up:" is worth 1 point;
    an exercise whose whole solution is one statement (a formula) is such a warm-up; every chapter has at least one
    exercise worth 3 points or more (a component: a module, a loop, an algorithm)."""
    files = expected_exercise_files(ROOT)
    for path, text in files.items():
        chapter = path.name[:2]
        by_name = {ex.name: ex for ex in chapter_exercises(chapter)}
        rows = [line for line in text.splitlines() if re.match(r"# \| \d+ \|", line)]
        for row in rows:
            cells = [c.strip() for c in row.strip("# |").split("|")]
            ex = next(by_name[n] for n in re.findall(r"`(?:class\s+)?([A-Za-z_]\w*)", cells[1]) if n in by_name)
            assert cells[2] == str(ex.points), f"{path.name}: {ex.id} shows {cells[2]} points, registered {ex.points}"
            assert cells[3] == f"{ex.minutes} min", f"{path.name}: {ex.id} shows {cells[3]}, registered {ex.minutes} min"
            if cells[1].startswith("warm-up:"):
                assert ex.points == 1, f"{ex.id} is a warm-up worth {ex.points} points"
            src = (ROOT / "solutions" / path.name).read_text(encoding="utf-8")
            statements = [ln for ln in _solution_blocks(src, ex.name) if ln.strip() and not ln.strip().startswith("#")]
            if len(statements) == 1:
                assert cells[1].startswith("warm-up:") and ex.points == 1, f"{ex.id}: a one-line solution is a 1-point warm-up"
        assert max(ex.points for ex in by_name.values()) >= 3, f"chapter {chapter} has no component exercise"
