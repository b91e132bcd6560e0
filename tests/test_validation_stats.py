"""lmlab.argcheck (the shared input checks) and lmlab.course.stats (the paired comparison every verdict uses)."""

import math

import pytest
import torch

from lmlab.course.stats import (T_CRITICAL_95, holm, holm_adjust, paired_comparison, t_cdf, t_critical_95,
                                t_ppf)
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


def test_t_distribution_matches_closed_forms_and_printed_tables():
    # df = 1 is the Cauchy distribution; df = 2 has a closed form too
    for t in (-7.0, -1.0, 0.0, 0.3, 2.0, 31.8):
        assert t_cdf(t, 1) == pytest.approx(0.5 + math.atan(t) / math.pi, abs=1e-12)
        assert t_cdf(t, 2) == pytest.approx(0.5 + t / (2 * math.sqrt(2 + t * t)), abs=1e-12)
    for df, crit in T_CRITICAL_95.items():  # two-sided 95 % (printed tables, 3 decimals)
        assert t_critical_95(df) == pytest.approx(crit, abs=6e-4)
    # one-sided 95 % and 80 % quantiles from printed tables
    for df, q95, q80 in ((2, 2.920, 1.061), (4, 2.132, 0.941), (9, 1.833, 0.883), (29, 1.699, 0.854)):
        assert t_ppf(0.95, df) == pytest.approx(q95, abs=6e-4)
        assert t_ppf(0.80, df) == pytest.approx(q80, abs=6e-4)
    assert t_ppf(0.025, 5) == pytest.approx(-2.571, abs=6e-4) and t_ppf(0.5, 3) == 0.0
    assert t_critical_95(10_000) == pytest.approx(1.960, abs=1e-3) and t_critical_95(0) == math.inf
    with pytest.raises(ValueError, match="q must be in"):
        t_ppf(1.0, 3)
    with pytest.raises(ValueError, match="df must be"):
        t_cdf(1.0, 0)


def test_t_distribution_against_scipy_if_installed():
    stats = pytest.importorskip("scipy.stats")
    for df in (1, 2, 3, 5, 10, 40):
        for t in (-3.0, -0.5, 0.7, 2.5, 9.0):
            assert t_cdf(t, df) == pytest.approx(stats.t.cdf(t, df), abs=1e-10)
        assert t_ppf(0.975, df) == pytest.approx(stats.t.ppf(0.975, df), abs=1e-9)


def test_paired_comparison_matches_a_hand_computed_t_test():
    a = [1.0, 1.2, 0.9, 1.1]
    b = [0.8, 1.0, 0.8, 0.9]
    r = paired_comparison(a, b, "A", "B")
    d = [0.2, 0.2, 0.1, 0.2]
    mean = sum(d) / 4
    se = math.sqrt(sum((x - mean) ** 2 for x in d) / 3) / 2
    assert r.mean_diff == pytest.approx(mean) and r.se == pytest.approx(se) and r.t == pytest.approx(mean / se)
    assert r.critical == pytest.approx(3.182, abs=6e-4)
    assert (r.ci_low, r.ci_high) == pytest.approx((mean - r.critical * se, mean + r.critical * se))
    assert r.p_difference == pytest.approx(2 * (1 - t_cdf(mean / se, 3)))
    assert r.mde == pytest.approx((r.critical + t_ppf(0.8, 3)) * se)
    # the claim "A better" (lower loss) is contradicted: B is lower beyond the noise
    assert r.significant and r.better == "B" and r.outcome == "contradicts"
    assert paired_comparison(a, b, "A", "B", claim="worse").outcome == "supports"


def test_three_outcomes_on_known_cases():
    # clear effect: 5 seeds, A lower by ~0.3 with tiny noise
    a, b = [0.50, 0.52, 0.49, 0.50, 0.51], [0.80, 0.81, 0.79, 0.80, 0.80]
    assert paired_comparison(a, b, "A", "B", margin=0.05).outcome == "supports"
    assert paired_comparison(b, a, "B", "A", margin=0.05).outcome == "contradicts"
    assert paired_comparison(a, b, "A", "B", margin=0.05, claim="equal").outcome == "contradicts"
    # clear equivalence: differences of a few thousandths, margin 0.05
    e1, e2 = [0.500, 0.502, 0.499, 0.500, 0.501], [0.500, 0.501, 0.500, 0.499, 0.500]
    eq = paired_comparison(e1, e2, "A", "B", margin=0.05, claim="equal")
    assert eq.equivalent and not eq.significant and eq.outcome == "supports"
    # ... which contradicts a claim that A is better (no effect as large as the margin)
    assert paired_comparison(e1, e2, "A", "B", margin=0.05, claim="better").outcome == "contradicts"
    # noisy: 3 seeds, differences of ±0.1: neither test passes -> undetermined, for every claim
    n1, n2 = [1.0, 1.1, 0.9], [1.05, 1.0, 0.95]
    for claim in ("better", "worse", "equal"):
        r = paired_comparison(n1, n2, "A", "B", margin=0.02, claim=claim)
        assert r.outcome == "undetermined" and not r.significant and not r.equivalent
        assert "UNDETERMINED" in r.sentence
    # the same tiny difference without a margin cannot support equality
    assert paired_comparison(e1, e2, "A", "B", claim="equal").outcome == "undetermined"
    # a real effect smaller than the margin: significant AND equivalent
    s1, s2 = [0.510, 0.511, 0.509, 0.510, 0.510], [0.500, 0.500, 0.500, 0.500, 0.501]
    small = paired_comparison(s1, s2, "A", "B", margin=0.05, claim="worse")
    assert small.significant and small.equivalent and small.outcome == "contradicts"
    assert paired_comparison(s1, s2, "A", "B", margin=0.05, claim="equal").outcome == "supports"
    # higher is better: accuracies
    hi = paired_comparison([0.9, 0.95, 0.92], [0.5, 0.52, 0.49], "A", "B", unit="acc", lower_is_better=False)
    assert hi.significant and hi.better == "A" and hi.outcome == "supports"


def test_sentence_prints_effect_interval_margin_seeds_and_mde():
    r = paired_comparison([1.0, 1.1, 0.9, 1.0, 1.05], [1.02, 1.0, 0.97, 0.99, 1.0], "A", "B", margin=0.02,
                          seeds=[3, 4, 5, 6, 7])
    for part in (f"{r.mean_diff:+.3f} nats", f"95 % CI [{r.ci_low:+.3f}, {r.ci_high:+.3f}]", "margin ±0.02",
                 "5 paired seeds: 3, 4, 5, 6, 7", f"detectable at this design ≥ {r.mde:.3f}", "UNDETERMINED"):
        assert part in r.sentence, part
    assert r.to_dict()["outcome"] == "undetermined" and r.to_dict()["seeds"] == [3, 4, 5, 6, 7]
    one = paired_comparison([1.0], [2.0], "A", "B", margin=0.1)
    assert one.outcome == "undetermined" and "one seed only" in one.sentence and one.mde == math.inf


def test_no_verdict_supports_from_a_non_significant_difference():
    import random
    rng = random.Random(0)
    for _ in range(300):
        n = rng.randint(2, 8)
        a = [rng.gauss(0, 1) for _ in range(n)]
        b = [rng.gauss(0, 1) for _ in range(n)]
        for claim in ("better", "worse"):
            r = paired_comparison(a, b, claim=claim, margin=rng.choice([None, 0.1, 1.0]))
            if r.outcome == "supports":
                assert r.significant and not r.equivalent
        r = paired_comparison(a, b, claim="equal", margin=rng.choice([None, 0.1, 1.0]))
        assert (r.outcome == "supports") == r.equivalent


def test_holm_on_known_pvalues():
    # textbook example: p = 0.01, 0.04, 0.03, 0.005 -> sorted 0.005*4, 0.01*3, 0.03*2, 0.04*1 (running max)
    assert holm_adjust([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm_adjust([0.5]) == [0.5] and holm_adjust([]) == []
    assert holm_adjust([0.3, 0.6]) == pytest.approx([0.6, 0.6]) and holm_adjust([0.9, 0.8]) == [1.0, 1.0]
    with pytest.raises(ValueError, match="pvalues must lie"):
        holm_adjust([1.5])


def test_holm_redecides_a_borderline_claim():
    # each comparison alone is significant at 0.05 with p just under it; tested as 4 claims it is not
    a = [0.0, 0.1, 0.02, 0.05, 0.0]
    base = paired_comparison([x + 0.05 for x in a], a, "A", "B", margin=0.001)
    d = [0.05 + 0.03 * s for s in (1, -1, 1, -1, 0.5)]
    one = paired_comparison(d, [0.0] * 5, "A", "B", claim="worse")
    assert one.p_difference < 0.05 and one.outcome == "supports"
    together = holm([one, base, one, one])
    assert together[0].p_difference == pytest.approx(min(1.0, 3 * one.p_difference))  # base's p is 0 -> rank 1
    assert together[0].outcome == "undetermined" and "Holm-corrected over 4 claims" in together[0].sentence
    assert together[1].outcome == base.outcome  # a clear effect survives the correction
    assert holm([one]) == [one]
    with pytest.raises(ValueError, match="PairedComparison"):
        holm([1.0])


def test_paired_comparison_rejects_bad_input():
    with pytest.raises(ValueError, match="equal length"):
        paired_comparison([1.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="finite"):
        paired_comparison([float("nan")], [1.0])
    with pytest.raises(ValueError, match="claim must be one of"):
        paired_comparison([1.0, 2.0], [1.0, 2.0], claim="same")
    with pytest.raises(ValueError, match="margin must be"):
        paired_comparison([1.0, 2.0], [1.0, 2.0], margin=0)
    with pytest.raises(ValueError, match="seeds must name"):
        paired_comparison([1.0, 2.0], [1.0, 2.0], seeds=[1])
