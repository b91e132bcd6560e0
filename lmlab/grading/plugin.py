"""The "swap your part in and train" check type (the last exercise of chapters 01-04).

Your part inside lmlab's model must give the same logits as lmlab's own part from the same weights,
and the same losses after a few Adam steps at a fixed seed. The training runs where your code lives
(:func:`lmlab.grading.harness.call_with` on :func:`lmlab.grading.plug_and_train.train_with_part`); the reference run,
with lmlab's part, runs here. Tolerances: logits ``atol`` 1e-5, losses ``atol`` 1e-4 (float32, a
different but equivalent order of operations drifts by ~1e-6 over these steps).
"""

from __future__ import annotations

import math

from lmlab.grading.assertions import expect_close
from lmlab.grading.harness import call_with
from lmlab.grading.plug_and_train import train_with_part
from lmlab.grading.registry import CheckFailed
from lmlab.grading.seeds import salted

__all__ = ["LOGITS_ATOL", "LOSS_ATOL", "expect_trains_like_lmlab"]

LOGITS_ATOL = 1e-5
LOSS_ATOL = 1e-4


def expect_trains_like_lmlab(part, kind: str, cfg: dict, what: str, steps: int = 8, seed: int = 0) -> None:
    """Raise :class:`CheckFailed` unless ``part`` (as ``kind`` in the model ``cfg``) matches lmlab's part.

    The reference run is recomputed every time (no cache shared between checks or notebooks), at the
    run's salted seed; the harness builds its models under :func:`lmlab.grading.seeds.exact_global_seed`.
    """
    seed = salted(seed)
    want = train_with_part(None, kind, cfg, steps=steps, seed=seed)
    try:
        got = call_with(part, "lmlab.grading.plug_and_train:train_with_part", kind, cfg, steps=steps, seed=seed)
    except ValueError as err:  # the part does not fit the model: say why, in the part's words
        raise CheckFailed(f"{what}: {err}") from None
    if not isinstance(got, dict) or set(got) != {"logits", "losses"}:
        raise CheckFailed(f"{what}: the harness returned {type(got).__name__}, expected logits and losses")
    expect_close(got["logits"], want["logits"], f"{what}: the model's logits at initialisation (vs lmlab's part, same weights)",
                 atol=LOGITS_ATOL)
    for step, (a, b) in enumerate(zip(got["losses"], want["losses"])):
        if not (math.isfinite(a) and abs(a - b) <= LOSS_ATOL):
            raise CheckFailed(f"{what}: the loss after {step + 1} Adam steps is {a:.6f}, lmlab's part gives {b:.6f} "
                              f"(tolerance {LOSS_ATOL}); the forward pass matches, so look at what trains: "
                              f"are all your weights nn.Parameters, and is nothing detached?")
    if len(got["losses"]) != len(want["losses"]):
        raise CheckFailed(f"{what}: expected {len(want['losses'])} losses, got {len(got['losses'])}")
