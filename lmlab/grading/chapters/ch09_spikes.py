"""Chapter 09 graders, part 2: the loss-spike detector (``exercises/09_training_recipe.ipynb``). Imported by
:mod:`lmlab.grading.chapters.ch09`.

The expected flags come from an independent rolling z-score written here (``statistics.fmean`` and
``statistics.stdev`` over the last good steps).
"""

from __future__ import annotations

import math
import statistics

import torch

from lmlab.grading.assertions import expect_true
from lmlab.grading.registry import Check, CheckFailed, Exercise, register
from lmlab.grading.seeds import check_generator

# ---------------------------------------------------------------------------------------------
# 09.SpikeDetector
# ---------------------------------------------------------------------------------------------


def _z(x, w, std):
    s = std(w)
    if s == 0:  # a constant history: anything above it is infinitely far above
        return math.inf if x > statistics.fmean(w) else 0.0
    return (x - statistics.fmean(w)) / s


def _expected_flags(values, window, threshold, min_history, std=statistics.stdev, rolling=True):
    """An independent rolling z-score: spikes are never added to the window. ``std`` and ``rolling`` give the
    flags of two common mistakes (the population standard deviation, no window), to name them in the feedback."""
    good_l, good_g, flags = [], [], []
    for loss, g in values:
        if len(good_l) < min_history:
            z = (0.0, 0.0)
        else:
            wl, wg = (good_l[-window:], good_g[-window:]) if rolling else (good_l, good_g)
            z = tuple(_z(x, w, std) for x, w in ((loss, wl), (g, wg)))
        spike = max(z) > threshold
        flags.append(spike)
        if not spike:
            good_l.append(loss)
            good_g.append(g)
    return flags


def _series(seed, n, spikes_at, grad_spikes_at=(), drift=0.0, bumps=None):
    g = check_generator(seed)
    noise = torch.randn(n, 2, generator=g).tolist()
    out = []
    for i, (a, b) in enumerate(noise):
        loss = 3.0 - drift * i + 0.05 * a + (1.5 if i in spikes_at else 0.0) + (bumps or {}).get(i, 0.0)
        gn = 1.0 + 0.05 * b + (3.0 if i in grad_spikes_at else 0.0)
        out.append((loss, gn))
    return out


def _spike_run(cls, values, window, threshold, min_history, what):
    det = cls(window=window, threshold=threshold, min_history=min_history)
    got = []
    for i, (loss, g) in enumerate(values):
        flag = det.check(loss, g)
        expect_true(isinstance(flag, bool), f"{what}: check() must return True or False, got {flag!r} at step {i}")
        got.append(flag)
    want = _expected_flags(values, window, threshold, min_history)
    if got != want:
        i = next(i for i, (a, b) in enumerate(zip(got, want)) if a != b)
        why = ""
        if got == _expected_flags(values, window, threshold, min_history, std=statistics.pstdev):
            why = (" Your flags are exactly those of the population standard deviation (statistics.pstdev, divides by n); "
                   "use the sample one, statistics.stdev (divides by n - 1).")
        elif got == _expected_flags(values, window, threshold, min_history, rolling=False):
            why = " Your flags are exactly those of a z-score over ALL good steps: keep only the last `window` of them."
        raise CheckFailed(f"{what}: at step {i} (loss {values[i][0]:.3f}, grad norm {values[i][1]:.3f}) expected "
                          f"{'a spike' if want[i] else 'no spike'}, got {'a spike' if got[i] else 'no spike'}.{why}")


def _spike_basic(cls):
    _spike_run(cls, _series(0, 60, {30, 45}), 20, 5.0, 10, "loss spikes at steps 30 and 45 (window 20, 5σ)")
    _spike_run(cls, _series(1, 50, set(), {25}), 20, 5.0, 10, "a gradient-norm spike at step 25 with a normal loss")


def _spike_window(cls):
    _spike_run(cls, _series(2, 90, {40, 41, 42}, drift=0.01, bumps={80: 0.45, 86: 0.45}), 15, 4.0, 8,
               "a falling loss (only the last `window` good steps count: a bump at 80 is a spike against the "
               "recent past, not against the whole run) with spikes in a row at 40–42")


def _spike_down(cls):
    values = _series(3, 40, set())
    values[30] = (1.0, 0.2)  # a sudden drop is not a spike
    _spike_run(cls, values, 20, 4.0, 10, "a sudden drop in loss and gradient norm (only upward jumps are spikes)")


def _spike_edges(cls):
    flat = [(3.0, 1.0)] * 6 + [(3.0, 1.0), (3.01, 1.0), (2.9, 1.0), (3.0, 1.2)]
    _spike_run(cls, flat, 5, 4.0, 3, "a constant history (standard deviation 0): an equal value is no spike, anything "
               "above it is one (z = +inf), anything below is not")
    two = [(1.0, 1.0), (3.0, 1.0), (3.3, 1.0), (1.2, 1.0), (9.0, 1.0)]
    _spike_run(cls, two, 2, 1.0, 2, "the smallest history (min_history = window = 2, threshold 1): loss 3.3 after 1.0 "
               "and 3.0 has z = 0.92 with the sample standard deviation")
    for bad in (1, 0):
        try:
            cls(window=5, threshold=3.0, min_history=bad)
        except ValueError:
            continue
        raise CheckFailed(f"SpikeDetector(window=5, threshold=3.0, min_history={bad}) must raise ValueError: a sample "
                          "standard deviation needs at least 2 values")


register(Exercise(
    id="09.SpikeDetector",
    points=3,
    kind="class",
    signature="SpikeDetector(window: int, threshold: float, min_history: int) with .check(loss, grad_norm) -> bool",
    hint="compare the new loss and gradient norm with the recent good steps (a z-score, upward only); a spike never enters "
         "the history.",
    minutes=15,
    hints=(
        "Loss spikes (PaLM, OLMo) are detected by comparing the newest value with the recent past: a z-score above a "
        "threshold means 'far above what is normal here'. Spiky steps stay out of the history, so one spike does not "
        "hide the next.",
        "self.losses and self.grad_norms hold the last `window` good values (a deque with maxlen does that). Once "
        "min_history of them are stored: for the loss and for the gradient norm, z = (x - mean) / stdev of its own "
        "history (statistics.fmean, statistics.stdev); a spike if either z > threshold (upward only). A constant "
        "history has stdev 0: then a value above the mean is a spike and any other is not (no division). If it is not "
        "a spike, remember both values. Return the verdict. The constructor refuses min_history < 2 (ValueError).",
        "spike = False\nif len(self.losses) >= ...:\n"
        "    for x, past in ...:  # the loss with its history, then the grad norm with its\n        z = ...\n"
        "        spike = ...\nif not spike:\n    ...  # remember both values\nreturn spike",
    ),
    checks=(
        Check("loss spikes and a gradient-norm spike are flagged at the right steps", _spike_basic),
        Check("the window rolls, and spikes do not enter it", _spike_window),
        Check("downward jumps are not spikes", _spike_down),
        Check("edge cases: a constant history, the smallest history, min_history < 2 refused", _spike_edges),
    ),
    reference="lmlab.train.spikes:SpikeDetector",
))
