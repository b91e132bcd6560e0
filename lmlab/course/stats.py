"""The one statistics helper every experiment verdict uses: a paired comparison over seeds.

Two variants trained with the same seeds (same initialisation where shapes allow, same batches, same
validation windows) differ per seed by ``a_i - b_i``. :func:`paired_comparison` reports the mean of
those differences, its standard error, the paired t statistic and whether |t| exceeds the two-sided
95 % critical value of Student's t with n - 1 degrees of freedom. With one seed nothing can be called
significant (the noise was not measured). Lessons print ``result.sentence``, built from the numbers.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Sequence

__all__ = ["T_CRITICAL_95", "t_critical_95", "PairedComparison", "paired_comparison"]

# two-sided 95 % critical values of Student's t, by degrees of freedom
T_CRITICAL_95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262,
                 10: 2.228, 11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110,
                 18: 2.101, 19: 2.093, 20: 2.086, 25: 2.060, 30: 2.042}


def t_critical_95(df: int) -> float:
    """Two-sided 95 % critical value of Student's t (``inf`` for df < 1; 1.96 for large df)."""
    if df < 1:
        return math.inf
    if df in T_CRITICAL_95:
        return T_CRITICAL_95[df]
    below = [k for k in T_CRITICAL_95 if k < df]
    return T_CRITICAL_95[max(below)] if df <= 30 else 1.96


@dataclass(frozen=True)
class PairedComparison:
    """``a`` vs ``b`` over ``n`` paired seeds (lower is better when ``lower_is_better``)."""

    a_name: str
    b_name: str
    n: int
    mean_diff: float  # mean of a_i - b_i
    se: float
    t: float
    critical: float
    significant: bool
    better: str | None  # the name of the better variant when significant, else None
    unit: str
    sentence: str

    def to_dict(self) -> dict:
        return dict(a=self.a_name, b=self.b_name, n=self.n, mean_diff=self.mean_diff, se=self.se, t=self.t,
                    critical=self.critical, significant=self.significant, better=self.better)


def paired_comparison(a: Sequence[float], b: Sequence[float], a_name: str = "a", b_name: str = "b", *,
                      unit: str = "nats", lower_is_better: bool = True) -> PairedComparison:
    """Paired t-test of ``a`` against ``b`` (one value per seed, same seeds in the same order)."""
    a, b = list(a), list(b)
    if not a or len(a) != len(b):
        raise ValueError(f"paired_comparison: a and b must be non-empty and of equal length (one value per seed), "
                         f"got {len(a)} and {len(b)}")
    if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in a + b):
        raise ValueError("paired_comparison: every value must be a finite number (a diverged run? report it separately)")
    n = len(a)
    diffs = [x - y for x, y in zip(a, b)]
    mean = statistics.fmean(diffs)
    se = statistics.stdev(diffs) / math.sqrt(n) if n > 1 else math.inf
    if se == 0:
        t = math.copysign(math.inf, mean) if mean else 0.0
    else:
        t = mean / se
    crit = t_critical_95(n - 1)
    significant = n > 1 and abs(t) > crit
    a_better = (mean < 0) == lower_is_better
    better = (a_name if a_better else b_name) if significant else None
    head = (f"{a_name} vs {b_name}: {mean:+.3f} {unit} (± {se:.3f} s.e., t = {t:+.1f} over {n} paired seed"
            f"{'s' if n != 1 else ''})")
    if n == 1:
        sentence = head + " — one seed only: the seed noise was not measured, so no verdict."
    elif significant:
        sentence = head + f" — larger than the seed noise: {better} is better here."
    else:
        sentence = head + f" — within the seed noise (|t| ≤ {crit:.2f}): no measurable difference at this scale."
    return PairedComparison(a_name, b_name, n, mean, se, t, crit, significant, better, unit, sentence)
