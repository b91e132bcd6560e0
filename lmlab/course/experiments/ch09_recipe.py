"""Lesson 09's experiments (``lessons/09_training_recipe``), importable so tests run the same code.

Every run trains the same tiny character-level GPT on the embedded corpus with :func:`lmlab.train.loop.train`
(the course's one loop) and changes ONE setting against a shared baseline recipe: warm-up + cosine
to 10 %, AdamW (0.9, 0.95), clipping 1.0, weight decay 0.1, at a deliberately high peak learning
rate so that the settings matter at this size. Variants are compared over paired seeds (same
initialisation, same batches) with :func:`lmlab.course.stats.paired_comparison`. Figures live in
:mod:`lmlab.course.experiments.ch09_figures`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import torch

from lmlab.data.text import char_data, unigram_entropy
from lmlab.model import GPT, ModelConfig
from lmlab.train.optim import Adafactor, AdamW, param_groups, state_bytes, state_bytes_for
from lmlab.train.schedule import steps_for_samples
from lmlab.train.spikes import Jolt, SpikePolicy
from lmlab.course.stats import PairedComparison, holm, paired_comparison
from lmlab.train.config import TrainConfig
from lmlab.train.loop import History, seed_everything, train

__all__ = ["TINY", "BASE", "VARIANTS", "tiny_gpt", "run", "final_loss", "status", "SettingResult",
           "compare_settings", "lr_sweep", "SpikeResult", "spike_experiment", "optimizer_memory", "ramp_settings"]

TINY = dict(d_model=32, n_layers=2, n_heads=4, context_length=32)  # ~30k parameters
BASE = TrainConfig(steps=80, batch_size=16, lr=1e-2, schedule="cosine", warmup=10, min_lr_ratio=0.1, betas=(0.9, 0.95),
                   grad_clip=1.0, weight_decay=0.1, optimizer="adamw")  # the baseline recipe; run() sets the rest


def ramp_settings(steps: int = BASE.steps, batch_size: int = BASE.batch_size, start: int = 4) -> dict:
    """A batch ramp from ``start`` to ``batch_size`` over the first half of the baseline's sequences,
    with as many steps as it takes to see the same number of sequences (tokens) as the baseline."""
    samples = steps * batch_size
    ramp = samples // 2
    return dict(batch_ramp=(start, ramp), steps=steps_for_samples(samples, start, batch_size, ramp))


# name -> changes to BASE's fields: one setting at a time
VARIANTS = {
    "no warm-up": dict(warmup=0),
    "β2 = 0.999": dict(betas=(0.9, 0.999)),
    "no clipping": dict(grad_clip=None),
    "weight decay 0": dict(weight_decay=0.0),
    "Adafactor": dict(optimizer="adafactor", lr=0.1),  # its lr is a relative step (x RMS of the weight)
    "batch ramp": "ramp",  # resolved by ramp_settings() for the run's steps and batch size
}

# the claim tested for each variant against the baseline recipe: removing a piece of the recipe makes the
# loss worse; Adafactor and the batch ramp are claimed to save memory / early compute at equal quality
CLAIMS = {"no warm-up": "worse", "β2 = 0.999": "worse", "no clipping": "worse", "weight decay 0": "worse",
          "Adafactor": "equal", "batch ramp": "equal"}
MARGIN = 0.02  # nats: the smallest loss difference the lesson cares about


def tiny_gpt(seed: int = 0, **overrides) -> GPT:
    """The lesson's tiny model, initialised from ``seed``."""
    tok = char_data().tok
    seed_everything(seed)
    return GPT(ModelConfig(vocab_size=tok.vocab_size, **(TINY | overrides)))


def run(seed: int = 0, model_kw: dict | None = None, eval_batches: int = 8, **changes) -> History:
    """Train the tiny model with :data:`BASE` and ``changes`` to its fields (evaluated once, at the end);
    never raises on inf/NaN."""
    _, train_ids, val_ids = char_data()
    config = replace(BASE, eval_every=changes.get("steps", BASE.steps), eval_batches=eval_batches, seed=seed,
                     progress=False, on_nonfinite="stop", **changes)
    return train(tiny_gpt(seed, **(model_kw or {})), train_ids, val_ids, config=config)


def final_loss(h: History) -> float:
    """The final validation loss (``nan`` if training stopped on a non-finite loss)."""
    return h.val_loss[-1] if h.stopped_at is None and h.val_loss else math.nan


def status(h: History, unigram: float) -> str:
    """``diverged`` (inf/NaN, or worse than the unigram baseline, which ignores context) or ``trained``."""
    loss = final_loss(h)
    return "diverged" if not math.isfinite(loss) or loss > unigram else "trained"


def _unigram() -> float:
    tok, train_ids, val_ids = char_data()
    return unigram_entropy(train_ids, val_ids, tok.vocab_size)


@dataclass
class SettingResult:
    """Final validation losses per variant (one per seed, same seeds for all) and the paired verdicts."""

    seeds: tuple[int, ...]
    losses: dict[str, list[float]]
    histories: dict[str, list[History]]
    comparisons: dict[str, PairedComparison | None]
    diverged: dict[str, int]
    unigram: float
    settings: dict = field(default_factory=dict)

    def sentence(self, name: str) -> str:
        c = self.comparisons[name]
        n = len(self.seeds)
        if c is None:
            return (f"{name}: diverged in {self.diverged[name]} of {n} seeds (baseline: {self.diverged['baseline']} of {n}) "
                    f"— no paired loss comparison over diverged runs.")
        return c.sentence


def compare_settings(variants=tuple(VARIANTS), seeds=(0, 1, 2), steps: int = BASE.steps, lr: float = BASE.lr,
                     model_kw: dict | None = None, batch_size: int = BASE.batch_size,
                     margin: float = MARGIN) -> SettingResult:
    """The baseline and each variant in ``variants`` (names of :data:`VARIANTS`) over ``seeds``; each
    variant's claim (:data:`CLAIMS`) is decided by :func:`lmlab.course.stats.paired_comparison` against
    ``margin`` nats, all variants Holm-corrected together."""
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ValueError(f"compare_settings: variants must be among {tuple(VARIANTS)}, got {unknown}")
    seeds = tuple(seeds)
    common = dict(steps=steps, lr=lr, batch_size=batch_size)
    names = ["baseline", *variants]
    histories = {}
    for name in names:
        changes = {} if name == "baseline" else VARIANTS[name]
        if changes == "ramp":
            changes = ramp_settings(steps, batch_size)
        histories[name] = [run(s, model_kw, **(common | changes)) for s in seeds]
    unigram = _unigram()
    losses = {n: [final_loss(h) for h in hs] for n, hs in histories.items()}
    diverged = {n: sum(status(h, unigram) == "diverged" for h in hs) for n, hs in histories.items()}
    comparisons = {}
    for name in variants:
        ok = all(math.isfinite(v) for v in losses[name] + losses["baseline"])
        comparisons[name] = paired_comparison(losses[name], losses["baseline"], name, "baseline", claim=CLAIMS[name],
                                              margin=margin, seeds=seeds) if ok else None
    live = [n for n, c in comparisons.items() if c is not None]
    comparisons.update(zip(live, holm([comparisons[n] for n in live])))
    return SettingResult(seeds, losses, histories, comparisons, diverged, unigram, dict(common, model=TINY | (model_kw or {})))


def lr_sweep(lrs=(3e-3, 1e-2, 3e-2, 6e-2), warmups=(0, 10), seed: int = 0, steps: int = BASE.steps,
             model_kw: dict | None = None) -> dict:
    """Final validation loss vs peak LR, with and without warm-up (one seed: a map, not a verdict)."""
    out = {w: [final_loss(run(seed, model_kw, steps=steps, lr=lr, warmup=w)) for lr in lrs] for w in warmups}
    return dict(lrs=list(lrs), losses=out, unigram=_unigram(), steps=steps)


@dataclass
class SpikeResult:
    clean: History
    hurt: History
    healed: History
    jolt: Jolt
    policy: SpikePolicy
    margin: float  # allowed |healed - clean| on the final loss, nats

    @property
    def jolt_step(self) -> int:
        return self.jolt.position + 1  # one batch per step: data position p is step p + 1

    def tail(self, h: History, n: int = 10) -> float:
        return sum(h.train_loss[-n:]) / n

    @property
    def recovered(self) -> bool:
        return abs(final_loss(self.healed) - final_loss(self.clean)) <= self.margin

    @property
    def detected_at(self) -> int | None:
        return self.healed.spikes[0] if self.healed.spikes else None


def spike_experiment(jolt_step: int = 71, factor: float = 30.0, length: int = 1, window: int = 50, threshold: float = 6.0,
                     min_history: int = 30, skip_batches: int = 10, snapshot_every: int = 10, steps: int = 120,
                     seed: int = 0, margin: float = 0.05, model_kw: dict | None = None, lr: float = BASE.lr) -> SpikeResult:
    """A clean run, the same run with an LR jolt on the batch of ``jolt_step``, and the jolted run with
    PaLM-style rollback-and-skip. Constant LR (no schedule) so the three differ only by the jolt."""
    jolt = Jolt(jolt_step - 1, factor=factor, length=length)
    policy = SpikePolicy("rollback", window=window, threshold=threshold, min_history=min_history,
                         skip_batches=skip_batches, snapshot_every=snapshot_every)
    kw = dict(steps=steps, lr=lr, schedule="constant", warmup=0)
    clean = run(seed, model_kw, **kw)
    hurt = run(seed, model_kw, jolt=jolt, **kw)
    healed = run(seed, model_kw, jolt=jolt, spike=policy, **kw)
    return SpikeResult(clean, hurt, healed, jolt, policy, margin)


def optimizer_memory(shape=(4096, 11008)) -> dict:
    """State bytes of AdamW and Adafactor: for a LLaMA-7B FFN matrix (formula) and for the tiny model
    (measured on real optimizer state after one step)."""
    out = dict(shape=tuple(shape), adamw=state_bytes_for(shape, "adamw"), adafactor=state_bytes_for(shape, "adafactor"))
    for name, cls in (("adamw", AdamW), ("adafactor", Adafactor)):
        model = tiny_gpt(0)
        opt = cls(param_groups(model, 0.1), lr=1e-3)
        x = torch.randint(model.config.vocab_size, (2, 8))
        model(x).square().mean().backward()
        opt.step()
        out[f"tiny_{name}"] = state_bytes(opt)
    out["tiny_params_bytes"] = sum(p.numel() * p.element_size() for p in tiny_gpt(0).parameters())
    return out
