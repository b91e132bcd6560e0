"""lmlab.argcheck (the shared input checks) and lmlab.course.stats (the paired comparison every verdict uses)."""

import math

import pytest
import torch

from lmlab.course.stats import paired_comparison, t_critical_95
from lmlab.argcheck import (check_choice, check_divides, check_int, check_number, check_positive,
                              check_probability, check_tensor)


def test_check_int_accepts_and_names_the_parameter():
    assert check_int(3, "n_heads") == 3
    assert check_int(None, "d_ff", allow_none=True) is None
    for bad in (0, -1, 2.0, True, "3", None):
        with pytest.raises(ValueError, match="n_heads must be an int >= 1"):
            check_int(bad, "n_heads")
    with pytest.raises(ValueError, match=r"ModelConfig.layer must be an int in \[0, 3\]"):
        check_int(4, "layer", "ModelConfig", minimum=0, maximum=3)


def test_check_number_ranges():
    assert check_number(0.5, "p", low=0, high=1) == 0.5
    with pytest.raises(ValueError, match=r"noise_density must be a finite number in \(0, 1\)"):
        check_probability(1.0, "noise_density", open_low=True, open_high=True)
    with pytest.raises(ValueError, match="lr must be a finite number > 0"):
        check_positive(0.0, "lr")
    for bad in (float("nan"), float("inf"), True, "1"):
        with pytest.raises(ValueError):
            check_number(bad, "x")


def test_check_choice_and_divides():
    assert check_choice("rope", "position", ("rope", "alibi")) == "rope"
    with pytest.raises(ValueError, match=r"position must be one of \('rope', 'alibi'\)"):
        check_choice("rotary", "position", ("rope", "alibi"))
    check_divides(2, 8, "n_kv_heads", "n_heads")
    with pytest.raises(ValueError, match=r"n_kv_heads \(3\) must divide n_heads \(8\): one of \[1, 2, 4, 8\]"):
        check_divides(3, 8, "n_kv_heads", "n_heads")


def test_check_tensor():
    x = torch.zeros(2, 3)
    assert check_tensor(x, "x", shape=(None, 3), dtype=torch.float32) is x
    with pytest.raises(ValueError, match=r"x must have shape \(\*, 4\)"):
        check_tensor(x, "x", shape=(None, 4))
    with pytest.raises(ValueError, match="must have 3 dimensions"):
        check_tensor(x, "x", dim=3)
    with pytest.raises(ValueError, match="floating-point"):
        check_tensor(torch.zeros(2, dtype=torch.long), "x", floating=True)
    with pytest.raises(ValueError, match="torch.Tensor"):
        check_tensor([1, 2], "x")


def test_paired_comparison_matches_a_hand_computed_t_test():
    a = [1.0, 1.2, 0.9, 1.1]
    b = [0.8, 1.0, 0.8, 0.9]
    r = paired_comparison(a, b, "A", "B")
    d = [0.2, 0.2, 0.1, 0.2]
    mean = sum(d) / 4
    se = math.sqrt(sum((x - mean) ** 2 for x in d) / 3) / 2
    assert r.mean_diff == pytest.approx(mean) and r.se == pytest.approx(se) and r.t == pytest.approx(mean / se)
    assert r.critical == pytest.approx(3.182) and r.significant and r.better == "B"
    assert "B is better" in r.sentence


def test_paired_comparison_noise_and_one_seed():
    r = paired_comparison([1.0, 1.1, 0.9], [1.05, 1.0, 0.95], "A", "B")
    assert not r.significant and r.better is None and "within the seed noise" in r.sentence
    one = paired_comparison([1.0], [2.0], "A", "B")
    assert not one.significant and "one seed only" in one.sentence
    higher = paired_comparison([0.9, 0.95, 0.92], [0.5, 0.52, 0.49], "A", "B", unit="acc", lower_is_better=False)
    assert higher.significant and higher.better == "A"
    with pytest.raises(ValueError, match="equal length"):
        paired_comparison([1.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="finite"):
        paired_comparison([float("nan")], [1.0])
    assert t_critical_95(0) == math.inf and t_critical_95(100) == 1.96
