"""No answer before the exercise (issue 30, deliver 3).

A learner must not find a solution's code in what they read before or while solving: the lessons' cells,
the exercise notebooks' text (markdown, docstrings, the stub's message, the hint tiers), or a grader's hints.
Every ``### BEGIN SOLUTION`` ... ``### END SOLUTION`` block of ``solutions/NN_*.py`` is normalised (comments,
whitespace and backticks dropped) and searched for in that text: two consecutive solution lines found as two
consecutive lines, or a one-line solution (without its ``return``) found inside any line, is a leak. Lines that say nothing on their
own (``super().__init__()``, ``B, T, C = x.shape``, short lines) never count as half of a pair.
"""

from __future__ import annotations

import io
import re
import tokenize

import pytest

from lmlab.course import notebooks as course
from lmlab.grading.exercise_notebooks import BEGIN, END, expected_exercise_files
from lmlab.grading.registry import chapter_exercises

ROOT = course.ROOT
_TRIVIAL = re.compile(r"^(super\(\)\.__init__\(\)|[A-Za-z_, ]+=[A-Za-z_.]+\.shape|pass|return|else:|try:|\)|\]|\}|return[A-Za-z_]+)$")


def _strip_comment(line: str) -> str:
    """``line`` without a trailing ``# comment`` (a ``#`` inside a string stays)."""
    try:
        toks = list(tokenize.generate_tokens(io.StringIO(line).readline))
    except (tokenize.TokenError, IndentationError, SyntaxError):
        return line.split("  #")[0]
    for tok in toks:
        if tok.type == tokenize.COMMENT:
            return line[: tok.start[1]]
    return line


def normalise(line: str) -> str:
    """One line as compared: no comment, no markdown/comment prefix, no backticks, no whitespace."""
    s = line.strip()
    s = re.sub(r"^#+\s?", "", s)  # a markdown or commented line shows its text
    s = _strip_comment(s)
    s = s.replace("`", "").replace("'", '"')
    s = re.sub(r"^(>>>|\.\.\.)\s?", "", s)
    s = re.sub(r"(?<![\w.])(\d+)\.0(?![\d])", r"\1", s)  # 2.0 and 2 read the same
    return re.sub(r"\s+", "", s)


def _meaningful(n: str) -> bool:
    return len(n) >= 12 and not _TRIVIAL.match(n)


def solution_blocks() -> list[tuple[str, list[str]]]:
    """``(where, normalised non-empty lines)`` for every solution block."""
    blocks = []
    for src in sorted((ROOT / "solutions").glob("[0-9][0-9]_*.py")):
        lines = src.read_text(encoding="utf-8").splitlines()
        start = None
        for i, line in enumerate(lines):
            if line.strip() == BEGIN:
                start = i
            elif line.strip() == END and start is not None:
                body = [normalise(x) for x in lines[start + 1:i]]
                blocks.append((f"solutions/{src.name}:{start + 2}", [b for b in body if b]))
                start = None
    return blocks


def learner_texts() -> dict[str, list[str]]:
    """Everything a learner reads: lessons, generated exercise notebooks (docstrings, stubs, hint cells), hints."""
    texts = {f"lessons/{p.name}": p.read_text(encoding="utf-8").splitlines() for p in course.lesson_sources(ROOT)}
    for path, text in expected_exercise_files(ROOT).items():
        texts[f"exercises/{path.name}"] = text.splitlines()
    for src in sorted((ROOT / "solutions").glob("[0-9][0-9]_*.py")):
        for ex in chapter_exercises(src.name[:2]):
            texts[f"grader hints of {ex.id}"] = [ex.hint] + [line for tier in ex.hints for line in tier.splitlines()]
    return texts


# Where a lesson's result *is* a formula an exercise asks for, and another issue owns that exercise.
ALLOWED = {
    ("lessons/12_parallelism.py", "solutions/12_parallelism.py:130"):
        "the pipeline bubble (p-1)/(m+p-1) is lesson 12's measured result; chapter 12's exercises are rewritten by "
        "the scalable-training issue",
}


def _chapter(where: str) -> str:
    m = re.search(r"(?:/| of )(\d\d)[_.]", where)
    assert m, where
    return m.group(1)


def leaks(raw: dict[str, list[str]] | None = None) -> list[str]:
    raw = learner_texts() if raw is None else raw
    texts = {where: [normalise(x) for x in lines] for where, lines in raw.items()}
    texts = {where: [n for n in lines if n] for where, lines in texts.items()}
    found = []
    for where_sol, body in solution_blocks():
        pairs = {(a, b) for a, b in zip(body, body[1:]) if _meaningful(a) and _meaningful(b)}
        one = re.sub(r"^return(?=[\w(\[])", "", body[0]) if len(body) == 1 else None  # the value is the answer
        one = one if one is not None and len(one) >= 8 else None
        chapter = where_sol.split("/")[1][:2]
        for where, lines in texts.items():
            if _chapter(where) > chapter or (where, where_sol) in ALLOWED:
                continue  # a later chapter may reuse an earlier exercise's answer: it comes after the exercise
            for a, b in zip(lines, lines[1:]):
                if (a, b) in pairs:
                    found.append(f"{where} shows two lines of the solution at {where_sol}: {a!r} / {b!r}")
            if one is not None:
                for line in lines:
                    if one in line:
                        found.append(f"{where} shows the one-line solution at {where_sol}: {one!r}")
                        break
    return found


def test_normalise_drops_comments_whitespace_and_markup():
    assert normalise("    return x.repeat_interleave(n_rep, dim=1)  # (B, nh, T, hs)") == "returnx.repeat_interleave(n_rep,dim=1)"
    assert normalise("# `scores = q @ k.T`") == "scores=q@k.T"
    assert normalise('    s = "a # b"') == 's="a#b"'
    assert normalise("0.5 * x * (1.0 + t)") == normalise("0.5*x*(1 + t)")


def test_the_detector_finds_planted_leaks_and_ignores_the_idea():
    src = (ROOT / "solutions" / "04_attention.py").read_text(encoding="utf-8").splitlines()
    two = [line for line in src if "k.view(B, T, n_kv_heads, hs)" in line or "v.view(B, T, n_kv_heads, hs)" in line]
    assert len(two) == 2
    planted = {
        "lessons/00_planted.py": ["# %% [markdown]", f"# `{two[0].strip()}`", f"#    {two[1].strip().split('  #')[0]}"],
        "exercises/00_planted.py": ['    raise NotImplementedError("use x.repeat_interleave(n_rep, dim=1)")'],
        "lessons/00_idea.py": ["# query head h reads K/V head h // n_rep: copies of one head stay next to each other"],
    }
    found = leaks(planted)
    assert any(f.startswith("lessons/00_planted.py shows two lines") for f in found), found
    assert any(f.startswith("exercises/00_planted.py shows the one-line solution") for f in found), found
    assert not any(f.startswith("lessons/00_idea.py") for f in found), found


def test_no_solution_code_in_lessons_docstrings_stubs_or_hints():
    found = leaks()
    if found:
        pytest.fail("the answer is on screen before the exercise:\n" + "\n".join(found))
