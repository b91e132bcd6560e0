"""Chapter 09 graders (``exercises/09_training_recipe.ipynb``): AdamW, the schedule, clipping, the spike
detector, and a whole training loop.

Checks compare with ``torch.optim.AdamW``, ``torch.nn.utils.clip_grad_norm_``, the published
warm-up + cosine vector (COURSE.md) and torch's own schedulers up to the last step, an independent
rolling z-score written here, and — for the training loop — the loss trajectory of
:func:`lmlab.train.loop.train` at the same seed, obtained through :func:`harness_train_loop` (run where the
learner's code lives, see :mod:`lmlab.grading.harness`).
"""

from __future__ import annotations

import math

import torch

from lmlab.data.text import char_data
from lmlab.grading.assertions import expect_close, expect_equal, expect_tensor, expect_true, seeded_randn
from lmlab.grading.chapters import ch09_spikes  # noqa: F401 (registers 09.SpikeDetector)
from lmlab.grading.harness import call_with
from lmlab.grading.registry import Check, CheckFailed, Exercise, register
from lmlab.grading.sandbox import share
from lmlab.grading.seeds import global_seed, salted
from lmlab.model import GPT, ModelConfig
from lmlab.train.config import TrainConfig
from lmlab.train.loop import seed_everything, train
from lmlab.train.schedule import torch_warmup_cosine

# The notebook's order (09_training_recipe.py): the score table and the exercise notebook follow it.
EXERCISES = (
    "09.AdamW",
    "09.warmup_cosine",
    "09.clip_grad_norm",
    "09.SpikeDetector",
    "09.train_loop",
)


# ---------------------------------------------------------------------------------------------
# 09.AdamW
# ---------------------------------------------------------------------------------------------


def _adam_run(cls, groups_spec, steps, seed, skip_last=False, **kw):
    """Run ``cls`` on fresh parameters with seeded gradients; return the final parameters. With ``skip_last`` the
    last parameter has no gradient on every third step (it must not count those steps)."""
    params = [share(torch.nn.Parameter(seeded_randn(*shape, seed=seed + i))) for i, (shape, _) in enumerate(groups_spec)]  # step() updates them
    groups = [dict(params=[p], **extra) for p, (_, extra) in zip(params, groups_spec)]
    opt = cls(groups, **kw)
    for t in range(steps):
        for i, p in enumerate(params):
            p.grad = None if (skip_last and i == len(params) - 1 and t % 3 == 2) else seeded_randn(*p.shape, seed=1000 * seed + 10 * t + i)
        opt.step()
    return [p.detach() for p in params]


def _adam_single(cls):
    expect_true(isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer),
                "AdamW must be a class that subclasses torch.optim.Optimizer")
    spec = [((5, 4), {})]
    for wd in (0.0, 0.1):
        kw = dict(lr=1e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=wd)
        got = _adam_run(cls, spec, 30, seed=1, **kw)
        want = _adam_run(torch.optim.AdamW, spec, 30, seed=1, **kw)
        expect_close(got[0], want[0], f"a (5, 4) weight after 30 AdamW steps (weight_decay={wd}) vs torch.optim.AdamW",
                     atol=1e-6, rtol=1e-5)


def _adam_first_steps(cls):
    """Bias correction shows in the first steps: step 1 moves every weight by about lr."""
    for steps in (1, 2, 5):
        kw = dict(lr=0.1, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
        got = _adam_run(cls, [((6,), {})], steps, seed=3, **kw)
        want = _adam_run(torch.optim.AdamW, [((6,), {})], steps, seed=3, **kw)
        expect_close(got[0], want[0], f"a (6,) weight after {steps} step(s) with betas (0.9, 0.999) vs torch "
                     "(bias correction matters most here)", atol=1e-6, rtol=1e-5)


def _adam_groups(cls):
    spec = [((3, 3), dict(weight_decay=0.2, lr=5e-3)), ((4,), dict(weight_decay=0.0)), ((2, 5), dict(weight_decay=0.05))]
    kw = dict(lr=2e-2, betas=(0.8, 0.9), eps=1e-6, weight_decay=0.1)
    got = _adam_run(cls, spec, 20, seed=7, skip_last=True, **kw)
    want = _adam_run(torch.optim.AdamW, spec, 20, seed=7, skip_last=True, **kw)
    for i, (g, w) in enumerate(zip(got[:-1], want[:-1])):
        expect_close(g, w, f"parameter group {i} (its own lr / weight_decay, a gradient every step) after 20 steps vs torch",
                     atol=1e-6, rtol=1e-5)
    expect_close(got[-1], want[-1], "parameter group 2, which has NO gradient on every third step (14 updates in 20 "
                 "optimizer steps), vs torch: it must stay untouched on those steps, and its bias correction must count "
                 "only its own updates (a step counter per parameter, in self.state[p], not one for the optimizer)",
                 atol=1e-6, rtol=1e-5)


register(Exercise(
    id="09.AdamW",
    points=4,
    signature="class AdamW(torch.optim.Optimizer): __init__(params, lr=1e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1); step()",
    hint="per parameter: decoupled weight decay, then Adam's two moving averages with bias correction; the step count lives "
         "in self.state[p]; skip parameters without a gradient.",
    minutes=25,
    hints=(
        "AdamW (Loshchilov & Hutter) is Adam with the weight decay taken out of the gradient: the parameter shrinks by "
        "lr * wd directly, so the decay is not rescaled by Adam's per-coordinate step. m and v are moving averages of "
        "the gradient and its square; dividing by 1 - beta ** t corrects their start at zero.",
        "In step(): for each group read lr, betas, eps and weight_decay; for each p with a gradient, take "
        "self.state[p] (empty the first time: create step 0 and zero tensors m, v shaped like p) and count the step. "
        "Then, in place: p <- p * (1 - lr * wd); m <- b1 m + (1 - b1) g; v <- b2 v + (1 - b2) g^2; m_hat = m / (1 - b1 "
        "** t), v_hat = v / (1 - b2 ** t); p <- p - lr * m_hat / (sqrt(v_hat) + eps).",
        "for group in ...:  # every parameter group\n    lr, (b1, b2), eps, wd = ...\n"
        "    for p in ...:  # its parameters\n        if p.grad is None:\n            continue\n"
        "        state = self.state[p]\n        if not state:\n            ...  # step 0, zero m and v\n"
        "        ...  # count the step\n        ...  # decay, moments, bias correction, update (in place)",
    ),
    checks=(
        Check("one weight, 30 steps, with and without weight decay, vs torch.optim.AdamW", _adam_single),
        Check("the first steps (where bias correction matters) vs torch", _adam_first_steps),
        Check("three parameter groups with their own lr and weight decay; the last one without a gradient every third step", _adam_groups),
    ),
    reference="lmlab.train.optim:AdamW",
    kind="class",
    timeout=20.0,  # two optimizers run side by side; generous for a loaded 2-core laptop
))

# ---------------------------------------------------------------------------------------------
# 09.warmup_cosine
# ---------------------------------------------------------------------------------------------

_VECTOR = [0, .142857, .285714, .428571, .571429, .714286, .857143, 1, .988718, .955436, .901824, .830570, .745248,
           .650134, .55, .449866, .354752, .269430, .198176, .144564, .111282, .1, .1, .1, .1]


def _number(got, what) -> float:
    if isinstance(got, torch.Tensor) and got.numel() == 1:
        got = got.item()
    expect_true(isinstance(got, (int, float)) and not isinstance(got, bool), f"{what} should return a number, got {got!r}")
    return float(got)


def _sched_vector(f):
    for t, want in enumerate(_VECTOR):
        what = f"warmup_cosine({t}, max_lr=1, min_lr=0.1, warmup=7, total=21)"
        got = _number(f(t, 1.0, 0.1, 7, 21), what)
        if abs(got - want) > 1e-6:
            after = " (after the end the rate stays at min_lr)" if t > 21 else " (warm-up: step / warmup)" if t < 7 else ""
            raise CheckFailed(f"{what}: expected {want:g}, got {got:.6g}{after}")


def _sched_torch(f):
    ref = torch_warmup_cosine(41, 3e-3, 3e-4, 10, 40)
    for t in range(41):
        what = f"warmup_cosine({t}, 3e-3, 3e-4, warmup=10, total=40)"
        got = _number(f(t, 3e-3, 3e-4, 10, 40), what)
        if abs(got - ref[t]) > 1e-9 + 1e-5 * ref[t]:
            raise CheckFailed(f"{what}: expected {ref[t]:.6g} (torch's SequentialLR(LinearLR, CosineAnnealingLR)), got {got:.6g}")


def _sched_edges(f):
    for t in (40, 41, 60, 1000):
        what = f"warmup_cosine({t}, 1.0, 0.2, warmup=5, total=40)"
        got = _number(f(t, 1.0, 0.2, 5, 40), what)
        expect_true(abs(got - 0.2) < 1e-9, f"{what}: expected 0.2 (flat at min_lr from the end on; torch's and "
                    f"transformers' rise again here), got {got:.6g}")
    what = "warmup_cosine(0, 1.0, 0.1, warmup=0, total=10)"
    expect_true(abs(_number(f(0, 1.0, 0.1, 0, 10), what) - 1.0) < 1e-9, f"{what}: without warm-up the first step runs at max_lr")


register(Exercise(
    id="09.warmup_cosine",
    points=2,
    signature="warmup_cosine(step: int, max_lr: float, min_lr: float, warmup: int, total: int) -> float",
    hint="three cases: step < warmup (linear from 0), warmup <= step < total (cosine from max_lr to min_lr over "
         "total - warmup steps), and step >= total.",
    minutes=10,
    hints=(
        "The usual LLM schedule: the learning rate rises linearly from 0 during the warm-up, then follows half a "
        "cosine from max_lr down to min_lr (10% of max in LLaMA and BLOOM) at the last step, and stays there.",
        "step < warmup: linear, max_lr * step / warmup. step >= total: min_lr. In between: progress goes from 0 (end "
        "of warm-up) to 1 (total); the cosine factor (1 + cos(pi * progress)) / 2 goes from 1 to 0; scale it into "
        "[min_lr, max_lr].",
        "if step < warmup:\n    return ...\nif step >= total:\n    return min_lr\nprogress = ...\nreturn min_lr + ...",
    ),
    checks=(
        Check("the published vector (max 1, min 0.1, warm-up 7, total 21, t = 0..24)", _sched_vector),
        Check("equals torch's SequentialLR(LinearLR, CosineAnnealingLR) up to the end", _sched_torch),
        Check("flat after the end; no warm-up starts at the peak", _sched_edges),
    ),
    reference="lmlab.train.schedule:warmup_cosine",
))

# ---------------------------------------------------------------------------------------------
# 09.clip_grad_norm
# ---------------------------------------------------------------------------------------------


def _grads(seed, scale, missing=False):
    shapes = ((4, 6), (6,), (3, 2, 2), (5,))
    ps = [torch.nn.Parameter(seeded_randn(*s, seed=seed + i)) for i, s in enumerate(shapes)]
    for i, p in enumerate(ps):
        if not (missing and i == 1):
            p.grad = seeded_randn(*p.shape, seed=100 + seed + i, scale=scale * (1 + 3 * i))
    return ps


def _clip_case(f, seed, scale, max_norm, missing=False):
    mine, ref = _grads(seed, scale, missing), _grads(seed, scale, missing)
    what = f"clip_grad_norm(4 parameters{' (one without a grad)' if missing else ''}, max_norm={max_norm})"
    got = f(mine, max_norm)
    want = torch.nn.utils.clip_grad_norm_(ref, max_norm)
    got = expect_tensor(got, what + " return value (the norm before clipping, a 0-dim tensor)") if isinstance(got, torch.Tensor) \
        else torch.tensor(_number(got, what))
    expect_close(got.reshape(()).to(torch.float32), want, what + ": the returned total norm (before clipping)", atol=1e-5, rtol=1e-5)
    for i, (a, b) in enumerate(zip(mine, ref)):
        if b.grad is None:
            expect_true(a.grad is None, f"{what}: a parameter without a grad must stay without one")
            continue
        expect_close(a.grad, b.grad, f"{what}: gradient {i} after clipping, vs torch.nn.utils.clip_grad_norm_", atol=1e-6, rtol=1e-5)


def _clip_large(f):
    _clip_case(f, 0, 2.0, 1.0)
    _clip_case(f, 5, 1.0, 0.5)


def _clip_small(f):
    _clip_case(f, 1, 0.01, 1.0)  # already below max_norm: unchanged


def _clip_missing(f):
    _clip_case(f, 2, 3.0, 1.0, missing=True)


register(Exercise(
    id="09.clip_grad_norm",
    points=2,
    signature="clip_grad_norm(parameters: list of tensors, max_norm: float) -> total norm (before clipping); scales .grad in place",
    hint="one norm over all the gradients together and one scale factor for all of them (never above 1); skip parameters "
         "without a gradient.",
    minutes=10,
    hints=(
        "Clipping by global norm (max_norm = 1.0 in most LLM recipes) rescales the whole gradient when its norm is too "
        "large, keeping its direction. It limits the damage a single bad batch can do.",
        "total = the square root of the sum, over every gradient, of the sum of its squared entries (accumulate in "
        "float64 for accuracy). One coefficient min(1, max_norm / (total + 1e-6)) multiplies every .grad in place. "
        "Return total, the norm before clipping, as a tensor.",
        "grads = [...]  # the .grad of each parameter that has one\ntotal = ...  # one norm for all of them\n"
        "coef = ...\nfor g in grads:\n    ...  # in place\nreturn total",
    ),
    checks=(
        Check("large gradients are scaled down together, as torch.nn.utils.clip_grad_norm_ does", _clip_large),
        Check("gradients already below max_norm are left alone", _clip_small),
        Check("a parameter without a gradient is skipped", _clip_missing),
    ),
    reference="lmlab.train.optim:clip_grad_norm",
))


# ---------------------------------------------------------------------------------------------
# 09.train_loop (graded through a harness: it trains a model where the learner's code runs)
# ---------------------------------------------------------------------------------------------

_LOOP = dict(steps=30, batch_size=8, lr=1e-2, warmup=5, eval_every=10, seed=3)
_TINY = dict(context_length=16, d_model=16, n_layers=1, n_heads=2)


def _tiny_model(seed):
    seed_everything(seed)
    return GPT(ModelConfig(vocab_size=char_data().tok.vocab_size, **_TINY))


def harness_train_loop(loop, steps, batch_size, lr, warmup, eval_every, seed) -> dict:
    """Train the tiny model with the learner's ``loop`` and return its losses as plain lists."""
    _, train_ids, val_ids = char_data()
    out = loop(_tiny_model(seed), train_ids, val_ids, steps=steps, batch_size=batch_size, lr=lr, warmup=warmup,
               eval_every=eval_every, seed=seed)
    if not isinstance(out, dict):
        return dict(error=f"train_loop should return a dict with 'train_loss' and 'val_loss', got {type(out).__name__}")
    return {k: [float(v) for v in out.get(k, [])] for k in ("train_loss", "val_loss")}


def _reference_losses(cfg) -> dict:
    _, train_ids, val_ids = char_data()
    with global_seed(0):  # seed_everything and the model's init use the global generators: ours alone meanwhile
        return reference_train_loop(_tiny_model(cfg["seed"]), train_ids, val_ids, **cfg)


def _loop_case(f, cfg):
    cfg = {**cfg, "seed": salted(cfg["seed"])}
    got = call_with(f, "lmlab.grading.chapters.ch09:harness_train_loop", **cfg)
    if "error" in got:
        raise CheckFailed(got["error"])
    want = _reference_losses(cfg)
    what = (f"train_loop(tiny model, steps={cfg['steps']}, batch_size={cfg['batch_size']}, lr={cfg['lr']}, "
            f"warmup={cfg['warmup']}, eval_every={cfg['eval_every']}, seed={cfg['seed']})")
    for key in ("train_loss", "val_loss"):
        expect_equal(len(got[key]), len(want[key]), f"{what}: number of {key} values")
        for i, (a, b) in enumerate(zip(got[key], want[key])):
            if not math.isfinite(a) or abs(a - b) > 1e-4 + 1e-4 * abs(b):
                step = i + 1 if key == "train_loss" else f"eval {i + 1}"
                raise CheckFailed(f"{what}: {key} at step {step}: expected {b:.5f} (lmlab.train.loop.train), got {a:.5f}"
                                  + (" — the very first loss differs: same seed, model and batches?" if i == 0 else "")
                                  + (" — step 1's loss matches (same seed, model and batch), so the first update differs: "
                                     "update t runs at warmup_cosine(t, …) for t = 1 … steps (warmup_cosine(0, …) is 0 "
                                     "during warm-up); then AdamW's settings, zero_grad, clipping at 1.0"
                                     if key == "train_loss" and i == 1 else ""))


def _loop_main(f):
    _loop_case(f, _LOOP)


def _loop_other(f):
    _loop_case(f, dict(steps=24, batch_size=4, lr=3e-2, warmup=0, eval_every=8, seed=11))


register(Exercise(
    id="09.train_loop",
    points=4,
    signature="train_loop(model, train_ids, val_ids, *, steps, batch_size, lr, warmup, eval_every, seed) -> "
              "{'train_loss': [...], 'val_loss': [...]}",
    hint="this chapter's recipe in one loop: seeded batches, AdamW with decay groups, the warm-up + cosine lr set every step, "
         "clipping at 1.0, and an evaluation every eval_every steps.",
    minutes=25,
    hints=(
        "A pretraining loop: set this step's learning rate, sample a batch, forward, loss, backward, clip, optimizer "
        "step. Evaluating on held-out data every few steps shows whether the model generalizes; fixing the seed makes "
        "two runs comparable.",
        "seed_everything with the seed returns the generator for the batches. Optimizer: torch.optim.AdamW over "
        "param_groups(model, 0.1) (decay on matrices only), lr=lr, betas (0.9, 0.95). For t = 1..steps: each group's "
        "'lr' is warmup_cosine at step t with max lr, min 10% of it, warmup, and steps as the total; a batch from sample_batch(train_ids, batch_size, context_length, generator=gen); loss = lm_loss of "
        "the model's logits; zero_grad, backward, clip_grad_norm_ to 1.0, step; record loss.item(). When t is a "
        "multiple of eval_every or the last step, record evaluate(model, val_ids, batch_size, 4).",
        "gen = ...  # seed everything, keep the generator\nopt = ...  # AdamW over param_groups(model, 0.1)\n"
        "for t in ...:  # steps counted from 1\n    ...  # this step's lr in every group\n    x, y = ...\n"
        "    ...  # forward, loss, zero_grad, backward, clip, step\n"
        "    ...  # record the train loss; evaluate when it is time\nreturn {\"train_loss\": ..., \"val_loss\": ...}",
    ),
    checks=(
        Check("30 steps with warm-up: the loss trajectory equals lmlab.train.loop.train's at the same seed", _loop_main),
        Check("another seed, batch size and LR, no warm-up", _loop_other),
    ),
    reference="lmlab.grading.chapters.ch09:reference_train_loop",
    timeout=60.0,
))


def reference_train_loop(model, train_ids, val_ids, *, steps, batch_size, lr, warmup, eval_every, seed) -> dict:
    """lmlab's answer to 09.train_loop: :func:`lmlab.train.loop.train` with the exercise's recipe."""
    config = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, schedule="cosine", warmup=warmup, min_lr_ratio=0.1,
                         eval_every=eval_every, eval_batches=4, seed=seed, progress=False)
    h = train(model, train_ids, val_ids, config=config)
    return dict(train_loss=h.train_loss, val_loss=h.val_loss)
