"""The one verdict helper every experiment uses: a paired comparison over seeds with three outcomes.

Two variants trained with the same seeds (same initialisation where shapes allow, same batches, same
validation windows) differ per seed by ``d_i = a_i - b_i``. :func:`paired_comparison` runs two tests on
those differences, at α = 0.05:

- a **difference test** (paired t-test, two-sided): is the mean difference non-zero?
- an **equivalence test** (TOST, two one-sided t-tests) against ``margin``, the smallest effect of
  interest stated by the lesson: is the mean difference inside ``(-margin, +margin)``?

and turns them into one of three outcomes for a stated claim about ``a`` (``claim="better"``: a beats b;
``"worse"``: b beats a; ``"equal"``: no difference that matters):

================================  ======================  ===========================
difference test / equivalence     claim "better"          claim "equal"
================================  ======================  ===========================
significant, a better, not equiv  supports                contradicts
significant, a better, equiv      contradicts (too small) supports
significant, b better             contradicts             contradicts unless equiv
not significant, equivalent       contradicts             supports
not significant, not equivalent   undetermined            undetermined
================================  ======================  ===========================

So a non-significant difference never supports a claim: only an equivalence test can say "equal".
Without a margin the equivalence test cannot run, and a non-significant difference is *undetermined*.
Each sentence prints the effect with its 95 % confidence interval, the margin, the seeds, the p-values
and the minimum detectable effect of this design (80 % power, two-sided α = 0.05, from the measured
spread). When a lesson tests several claims at once, :func:`holm` corrects the p-values of both tests
for the number of claims (Holm's step-down method) and re-decides. With one seed nothing is decided.

The t distribution is computed here (regularised incomplete beta, continued fraction), so the course
needs no SciPy; ``tests/test_validation_stats.py`` checks it against printed tables and closed forms.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from dataclasses import dataclass
from typing import Sequence

__all__ = ["ALPHA", "POWER", "CLAIMS", "OUTCOMES", "T_CRITICAL_95", "t_cdf", "t_ppf", "t_critical_95",
           "holm_adjust", "PairedComparison", "paired_comparison", "holm"]

ALPHA = 0.05  # every test in the course: two-sided α for the difference, α per side for TOST
POWER = 0.80  # the power at which the minimum detectable effect is quoted
CLAIMS = ("better", "worse", "equal")
OUTCOMES = ("supports", "contradicts", "undetermined")

# two-sided 95 % critical values of Student's t, by degrees of freedom (printed tables; the tests check
# :func:`t_ppf` against them)
T_CRITICAL_95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262,
                 10: 2.228, 11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110,
                 18: 2.101, 19: 2.093, 20: 2.086, 25: 2.060, 30: 2.042}


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz; Numerical Recipes §6.4)."""
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def _check_df(df: float, where: str) -> float:
    if isinstance(df, bool) or not isinstance(df, (int, float)) or not df > 0 or not math.isfinite(df):
        raise ValueError(f"{where}: df must be a finite number > 0, got {df!r}")
    return float(df)


def t_cdf(t: float, df: float) -> float:
    """P(T ≤ t) for Student's t with ``df`` degrees of freedom."""
    df = _check_df(df, "t_cdf")
    if math.isnan(t):
        raise ValueError("t_cdf: t must be a number, got nan")
    if math.isinf(t):
        return 1.0 if t > 0 else 0.0
    tail = 0.5 * _betainc(df / 2.0, 0.5, df / (df + t * t))  # P(T > |t|)
    return 1.0 - tail if t > 0 else tail


def t_ppf(q: float, df: float) -> float:
    """The ``q`` quantile of Student's t (inverse of :func:`t_cdf`, by bisection to 1e-12)."""
    df = _check_df(df, "t_ppf")
    if not 0.0 < q < 1.0:
        raise ValueError(f"t_ppf: q must be in (0, 1), got {q!r}")
    if q == 0.5:
        return 0.0
    if q < 0.5:
        return -t_ppf(1.0 - q, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < q:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, df) < q:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


def t_critical_95(df: int) -> float:
    """Two-sided 95 % critical value of Student's t (``inf`` for df < 1)."""
    if isinstance(df, bool) or not isinstance(df, int):
        raise ValueError(f"t_critical_95: df must be an int, got {df!r}")
    return math.inf if df < 1 else t_ppf(1.0 - ALPHA / 2, df)


def holm_adjust(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (Holm 1979), in the input order.

    Sort ascending; the i-th smallest (0-based) is multiplied by ``m - i``; running maximum; capped at 1.
    A claim is significant at α after correction when its adjusted p-value is below α."""
    p = [float(x) for x in pvalues]
    if any(not 0.0 <= x <= 1.0 for x in p):
        raise ValueError(f"holm_adjust: pvalues must lie in [0, 1], got {p}")
    m = len(p)
    order = sorted(range(m), key=lambda i: p[i])
    out, running = [0.0] * m, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out


@dataclass(frozen=True)
class PairedComparison:
    """``a`` vs ``b`` over ``n`` paired seeds (lower is better when ``lower_is_better``) and the verdict on
    ``claim``. ``outcome`` is one of :data:`OUTCOMES`; ``sentence`` says it all in words."""

    a_name: str
    b_name: str
    n: int
    mean_diff: float  # mean of a_i - b_i
    se: float
    t: float
    critical: float  # two-sided 95 % critical t at n - 1 degrees of freedom
    ci_low: float  # 95 % confidence interval of mean_diff
    ci_high: float
    p_difference: float  # two-sided paired t-test (Holm-adjusted when ``n_claims`` > 1)
    p_equivalence: float  # TOST against ±margin (1.0 without a margin; Holm-adjusted when ``n_claims`` > 1)
    margin: float | None
    mde: float  # minimum detectable |effect| at 80 % power (inf with one seed)
    significant: bool  # the difference test, at α (after Holm when corrected)
    equivalent: bool  # the equivalence test, at α (after Holm when corrected)
    better: str | None  # the name of the better variant when ``significant``, else None
    claim: str
    outcome: str
    reason: str
    seeds: tuple
    unit: str
    lower_is_better: bool
    n_claims: int
    sentence: str

    def to_dict(self) -> dict:
        return dict(a=self.a_name, b=self.b_name, n=self.n, seeds=list(self.seeds), mean_diff=self.mean_diff,
                    se=self.se, t=self.t, critical=self.critical, ci95=[self.ci_low, self.ci_high],
                    p_difference=self.p_difference, p_equivalence=self.p_equivalence, margin=self.margin,
                    mde=self.mde, significant=self.significant, equivalent=self.equivalent, better=self.better,
                    claim=self.claim, outcome=self.outcome, reason=self.reason, unit=self.unit,
                    n_claims=self.n_claims)


def _decide(claim: str, n: int, significant: bool, equivalent: bool, a_better: bool, margin: float | None,
            a_name: str, b_name: str, n_claims: int = 1) -> tuple[str, str]:
    noise = "the difference is not significant" + (f" after Holm over {n_claims} claims" if n_claims > 1 else "")
    if n < 2:
        return "undetermined", "one seed only: the seed noise was not measured"
    winner, loser = (a_name, b_name) if a_better else (b_name, a_name)
    if claim == "equal":
        if equivalent:
            return "supports", (f"the difference is inside ±{margin:g}" + (" (real, but too small to matter)"
                                                                          if significant else ""))
        if significant:
            return "contradicts", f"{winner} is better, and equivalence within ±{margin:g} is not shown" \
                if margin is not None else f"{winner} is better"
        return "undetermined", (f"{noise} and equivalence within ±{margin:g} is not shown" if margin is not None else
                                f"{noise} and no margin was stated, so equality cannot be shown")
    want_a = claim == "better"
    if significant and a_better == want_a and not equivalent:
        return "supports", f"{winner} is better beyond the seed noise"
    if significant and a_better == want_a:
        return "contradicts", f"{winner} is better, but by less than the margin ±{margin:g}: too small to matter"
    if significant:
        return "contradicts", f"{winner} is better beyond the seed noise (the claim said {loser})"
    if equivalent:
        return "contradicts", f"no difference as large as the margin ±{margin:g} (equivalence shown)"
    return "undetermined", (f"{noise} and equivalence within ±{margin:g} is not shown" if margin is not None else
                            f"{noise} (no margin stated, no equivalence test)")


def _sentence(c: PairedComparison) -> str:
    u = c.unit
    seeds = ", ".join(str(s) for s in c.seeds)
    if c.n == 1:
        return (f"{c.a_name} vs {c.b_name}: {c.mean_diff:+.3f} {u} over 1 seed ({seeds}) — one seed only: the "
                f"seed noise was not measured, so no verdict (claim '{c.claim}': UNDETERMINED).")
    claim_words = {"better": f"{c.a_name} is better", "worse": f"{c.b_name} is better",
                   "equal": f"{c.a_name} and {c.b_name} are equal"}[c.claim]
    margin = f"margin ±{c.margin:.3g}" if c.margin is not None else "no margin stated"
    holm = f", Holm-corrected over {c.n_claims} claims" if c.n_claims > 1 else ""
    ci = "95 % CI (per claim, before Holm)" if c.n_claims > 1 else "95 % CI"
    return (f"{c.a_name} vs {c.b_name}: {c.mean_diff:+.3f} {u}, {ci} [{c.ci_low:+.3f}, {c.ci_high:+.3f}] "
            f"(± {c.se:.3f} s.e., t = {c.t:+.1f}, {c.n} paired seeds: {seeds}); {margin}; "
            f"detectable at this design ≥ {c.mde:.3f}; p(difference) = {c.p_difference:.3g}, "
            f"p(equivalence) = {c.p_equivalence:.3g}{holm} — claim '{claim_words}': {c.outcome.upper()} "
            f"({c.reason}).")


def _build(a_name, b_name, n, mean, se, crit, p_diff, p_eq, margin, mde, a_better, claim, seeds, unit,
           lower_is_better, n_claims, t) -> PairedComparison:
    significant = n > 1 and p_diff < ALPHA
    equivalent = n > 1 and margin is not None and p_eq < ALPHA
    outcome, reason = _decide(claim, n, significant, equivalent, a_better, margin, a_name, b_name, n_claims)
    better = (a_name if a_better else b_name) if significant else None
    half = crit * se if math.isfinite(crit) and math.isfinite(se) else math.inf
    c = PairedComparison(a_name, b_name, n, mean, se, t, crit, mean - half, mean + half, p_diff, p_eq, margin,
                         mde, significant, equivalent, better, claim, outcome, reason, tuple(seeds), unit,
                         lower_is_better, n_claims, "")
    return dataclasses.replace(c, sentence=_sentence(c))


def paired_comparison(a: Sequence[float], b: Sequence[float], a_name: str = "a", b_name: str = "b", *,
                      claim: str = "better", margin: float | None = None, seeds: Sequence | None = None,
                      unit: str = "nats", lower_is_better: bool = True) -> PairedComparison:
    """Paired difference test + TOST of ``a`` against ``b`` (one value per seed, same seeds in the same
    order), and the verdict on ``claim`` (``"better"``: a beats b; ``"worse"``: b beats a; ``"equal"``).

    ``margin`` (> 0, in ``unit``) is the smallest effect of interest: differences inside ±margin do not
    matter. Without it, equality can never be supported. ``seeds`` labels the values (default 0..n-1)."""
    a, b = list(a), list(b)
    if not a or len(a) != len(b):
        raise ValueError(f"paired_comparison: a and b must be non-empty and of equal length (one value per seed), "
                         f"got {len(a)} and {len(b)}")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in a + b):
        raise ValueError("paired_comparison: every value must be a finite number (a diverged run? report it separately)")
    if claim not in CLAIMS:
        raise ValueError(f"paired_comparison: claim must be one of {CLAIMS}, got {claim!r}")
    if margin is not None and (isinstance(margin, bool) or not isinstance(margin, (int, float))
                               or not math.isfinite(margin) or not margin > 0):
        raise ValueError(f"paired_comparison: margin must be a finite number > 0 or None, got {margin!r}")
    n = len(a)
    seeds = tuple(range(n)) if seeds is None else tuple(seeds)
    if len(seeds) != n:
        raise ValueError(f"paired_comparison: seeds must name one seed per value ({n}), got {len(seeds)}")
    diffs = [x - y for x, y in zip(a, b)]
    mean = statistics.fmean(diffs)
    df = n - 1
    se = statistics.stdev(diffs) / math.sqrt(n) if n > 1 else math.inf
    crit = t_critical_95(df)
    if n < 2:
        t, p_diff, p_eq, mde = 0.0, 1.0, 1.0, math.inf
    elif se == 0:  # every seed gave the same difference: no noise at all
        t = math.copysign(math.inf, mean) if mean else 0.0
        p_diff = 0.0 if mean else 1.0
        p_eq = (0.0 if abs(mean) < margin else 1.0) if margin is not None else 1.0
        mde = 0.0
    else:
        t = mean / se
        p_diff = 2.0 * (1.0 - t_cdf(abs(t), df))
        p_eq = max(1.0 - t_cdf((mean + margin) / se, df), t_cdf((mean - margin) / se, df)) if margin is not None else 1.0
        mde = (crit + t_ppf(POWER, df)) * se
    a_better = (mean < 0) == lower_is_better
    return _build(a_name, b_name, n, mean, se, crit, p_diff, p_eq, float(margin) if margin is not None else None,
                  mde, a_better, claim, seeds, unit, lower_is_better, 1, t)


def holm(comparisons: Sequence[PairedComparison]) -> list[PairedComparison]:
    """The same comparisons, tested together: both tests' p-values Holm-adjusted over the claims that
    have them (one-seed comparisons are left undetermined), outcomes and sentences re-decided."""
    comparisons = list(comparisons)
    if not all(isinstance(c, PairedComparison) for c in comparisons):
        raise ValueError("holm: comparisons must be PairedComparison objects from paired_comparison")
    live = [i for i, c in enumerate(comparisons) if c.n > 1]
    m = len(live)
    if m <= 1:
        return comparisons
    p_diff = holm_adjust([comparisons[i].p_difference for i in live])
    with_margin = [i for i in live if comparisons[i].margin is not None]
    p_eq = dict(zip(with_margin, holm_adjust([comparisons[i].p_equivalence for i in with_margin])))
    out = list(comparisons)
    for k, i in enumerate(live):
        c = comparisons[i]
        a_better = (c.mean_diff < 0) == c.lower_is_better
        out[i] = _build(c.a_name, c.b_name, c.n, c.mean_diff, c.se, c.critical, p_diff[k], p_eq.get(i, 1.0),
                        c.margin, c.mde, a_better, c.claim, c.seeds, c.unit, c.lower_is_better, m, c.t)
    return out
