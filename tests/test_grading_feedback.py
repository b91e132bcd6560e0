"""Feedback that names the stage (issue 30): a common wrong answer fails with a message about *its* mistake,
not a generic difference, and every case a check describes is the case it runs."""

from __future__ import annotations

import pytest

from grading_wrong_answers import WRONG_ANSWERS
from lmlab.grading import grade_object

# (exercise, wrong answer in tests/grading_wrong_answers.py) -> words its failure must contain
EXPECTED = {
    ("04.online_softmax_merge", "no guard for two empty parts (NaN)"): ("both parts are empty", "NaN"),
    ("04.gqa_rope_attention", "KV heads repeated with repeat, not repeat_interleave"): ("ONE token", "h // r", "repeat_interleave"),
    ("04.gqa_rope_attention", "rotates only q"): ("q is rotated but k is not",),
    ("04.gqa_rope_attention", "no RoPE"): ("neither q nor k is rotated",),
    ("04.gqa_rope_attention", "also rotates v"): ("v is rotated too",),
    ("04.flash_attention_forward", "full softmax, not tiled"): ("as large as the whole", "one (block_q, block_k) tile"),
    ("04.flash_attention_forward", "no guard for a fully hidden row (NaN)"): ("NaN", "hides"),
    ("04.flash_attention_forward", "lse is the row max only"): ("lse vs torch.logsumexp",),
    ("09.AdamW", "one step counter for the whole optimizer"): ("NO gradient on every third step", "self.state[p]"),
    ("09.train_loop", "schedule off by one (starts at step 0)"): ("train_loss at step 2", "warmup_cosine(t, …) for t = 1"),
    ("09.SpikeDetector", "population standard deviation (pstdev)"): ("statistics.pstdev", "statistics.stdev"),
    ("09.SpikeDetector", "divides by a zero stdev (constant history crashes)"): ("constant history",),
    ("09.SpikeDetector", "no rolling window (all history)"): ("ALL good steps", "window"),
}


@pytest.mark.parametrize("key", list(EXPECTED), ids=[f"{a}:{b}" for a, b in EXPECTED])
def test_wrong_answer_gets_its_own_message(key):
    exercise_id, what = key
    result = grade_object(exercise_id, WRONG_ANSWERS[exercise_id][what])
    assert result.status == "failed", result
    text = f"{result.check}\n{result.reason}\n{result.details}"
    for words in EXPECTED[key]:
        assert words in text, f"{what}: expected {words!r} in the feedback, got:\n{text}"


def test_the_two_gqa_mistakes_get_different_messages():
    a = grade_object("04.gqa_rope_attention", WRONG_ANSWERS["04.gqa_rope_attention"]["KV heads repeated with repeat, not repeat_interleave"])
    b = grade_object("04.gqa_rope_attention", WRONG_ANSWERS["04.gqa_rope_attention"]["rotates only q"])
    assert a.reason != b.reason and a.check != b.check
