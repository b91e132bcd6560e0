"""`lmlab grade`'s table cuts a reason at 90 characters; the full reason follows under it, wrapped (issue 30)."""

from __future__ import annotations

from lmlab.grading.report import ExerciseResult, format_table


def test_a_long_reason_is_printed_in_full_under_the_table():
    reason = ("gqa_rope_attention(x (2, 6, 32), 4 query heads, 2 K/V heads) vs SDPA(enable_gqa=True): max abs difference "
              "4.7 at [0, 5, 3]; expected 0.123456 got -1.234567 (the tail a learner needs)")
    results = [ExerciseResult("04.gqa_rope_attention", "failed", 0, 5, 1, 3, reason=reason, check="RoPE on q and k"),
               ExerciseResult("04.repeat_kv", "passed", 1, 1, 2, 2)]
    text = format_table(results)
    table, _, why = text.partition("why (in full):")
    assert "the tail a learner needs" not in table  # the table row is cut ...
    assert "…" in table
    flat = " ".join(why.split())
    assert "the tail a learner needs" in flat and "expected 0.123456 got -1.234567" in flat  # ... the reason is not
    assert "case 2 of 3: RoPE on q and k" in flat
    assert all(len(line) <= 120 for line in why.splitlines())


def test_short_reasons_add_nothing():
    text = format_table([ExerciseResult("04.repeat_kv", "failed", 0, 1, 0, 2, reason="shape (2, 4) expected (2, 8)")])
    assert "why (in full)" not in text
