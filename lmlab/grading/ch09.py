"""Chapter 09 graders (``exercises/09_training_recipe.ipynb``): AdamW, the schedule, clipping, the spike
detector, and a whole training loop.

Checks compare with ``torch.optim.AdamW``, ``torch.nn.utils.clip_grad_norm_``, the published
warm-up + cosine vector (COURSE.md) and torch's own schedulers up to the last step, an independent
rolling z-score written here, and — for the training loop — the loss trajectory of
:func:`lmlab.train.train` at the same seed, obtained through :func:`harness_train_loop` (run where the
learner's code lives, see :mod:`lmlab.grading.harness`).
"""

from __future__ import annotations

import math
import statistics

import torch

from .assertions import expect_close, expect_equal, expect_tensor, expect_true, seeded_randn
from .harness import call_with
from .registry import Check, CheckFailed, Exercise, register

# ---------------------------------------------------------------------------------------------
# 09.AdamW
# ---------------------------------------------------------------------------------------------


def _adam_run(cls, groups_spec, steps, seed, **kw):
    """Run ``cls`` on fresh parameters with seeded gradients; return the final parameters."""
    params = [torch.nn.Parameter(seeded_randn(*shape, seed=seed + i)) for i, (shape, _) in enumerate(groups_spec)]
    groups = [dict(params=[p], **extra) for p, (_, extra) in zip(params, groups_spec)]
    opt = cls(groups, **kw)
    for t in range(steps):
        for i, p in enumerate(params):
            p.grad = None if (i == len(params) - 1 and t % 3 == 2) else seeded_randn(*p.shape, seed=1000 * seed + 10 * t + i)
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
    got = _adam_run(cls, spec, 20, seed=7, **kw)
    want = _adam_run(torch.optim.AdamW, spec, 20, seed=7, **kw)
    for i, (g, w) in enumerate(zip(got, want)):
        expect_close(g, w, f"parameter group {i} (its own lr / weight_decay; the last one sometimes has no grad) vs torch",
                     atol=1e-6, rtol=1e-5)


register(Exercise(
    id="09.AdamW",
    points=4,
    signature="class AdamW(torch.optim.Optimizer): __init__(params, lr=1e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1); step()",
    hint="per parameter: p *= 1 - lr*wd first (decoupled: not in the gradient); m, v moving averages; divide each by "
         "(1 - beta**t) with t counted per parameter in self.state; skip parameters whose grad is None.",
    checks=(
        Check("one weight, 30 steps, with and without weight decay, vs torch.optim.AdamW", _adam_single),
        Check("the first steps (where bias correction matters) vs torch", _adam_first_steps),
        Check("three parameter groups with their own lr and weight decay; missing grads skipped", _adam_groups),
    ),
    reference="lmlab.optim:AdamW",
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
    from ..schedule import torch_warmup_cosine

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
    checks=(
        Check("the published vector (max 1, min 0.1, warm-up 7, total 21, t = 0..24)", _sched_vector),
        Check("equals torch's SequentialLR(LinearLR, CosineAnnealingLR) up to the end", _sched_torch),
        Check("flat after the end; no warm-up starts at the peak", _sched_edges),
    ),
    reference="lmlab.schedule:warmup_cosine",
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
    hint="the norm of ALL gradients together (sqrt of the sum of every squared entry); one coefficient "
         "min(1, max_norm / (norm + 1e-6)) for every gradient; skip parameters whose grad is None.",
    checks=(
        Check("large gradients are scaled down together, as torch.nn.utils.clip_grad_norm_ does", _clip_large),
        Check("gradients already below max_norm are left alone", _clip_small),
        Check("a parameter without a gradient is skipped", _clip_missing),
    ),
    reference="lmlab.optim:clip_grad_norm",
))

# ---------------------------------------------------------------------------------------------
# 09.SpikeDetector
# ---------------------------------------------------------------------------------------------


def _expected_flags(values, window, threshold, min_history):
    """An independent rolling z-score: spikes are never added to the window."""
    good_l, good_g, flags = [], [], []
    for loss, g in values:
        if len(good_l) < min_history:
            z = (0.0, 0.0)
        else:
            wl, wg = good_l[-window:], good_g[-window:]
            z = tuple((x - statistics.fmean(w)) / statistics.stdev(w) for x, w in ((loss, wl), (g, wg)))
        spike = max(z) > threshold
        flags.append(spike)
        if not spike:
            good_l.append(loss)
            good_g.append(g)
    return flags


def _series(seed, n, spikes_at, grad_spikes_at=(), drift=0.0, bumps=None):
    g = torch.Generator().manual_seed(seed)
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
        raise CheckFailed(f"{what}: at step {i} (loss {values[i][0]:.3f}, grad norm {values[i][1]:.3f}) expected "
                          f"{'a spike' if want[i] else 'no spike'}, got {'a spike' if got[i] else 'no spike'}")


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


register(Exercise(
    id="09.SpikeDetector",
    points=3,
    kind="class",
    signature="SpikeDetector(window: int, threshold: float, min_history: int) with .check(loss, grad_norm) -> bool",
    hint="z = (x - mean) / stdev over the last `window` GOOD steps (statistics.stdev), for the loss and the gradient "
         "norm; a spike when either z > threshold (upward only); add only non-spikes to the window; nothing is a "
         "spike before min_history good steps.",
    checks=(
        Check("loss spikes and a gradient-norm spike are flagged at the right steps", _spike_basic),
        Check("the window rolls, and spikes do not enter it", _spike_window),
        Check("downward jumps are not spikes", _spike_down),
    ),
    reference="lmlab.spikes:SpikeDetector",
))

# ---------------------------------------------------------------------------------------------
# 09.train_loop (graded through a harness: it trains a model where the learner's code runs)
# ---------------------------------------------------------------------------------------------

_LOOP = dict(steps=30, batch_size=8, lr=1e-2, warmup=5, eval_every=10, seed=3)
_TINY = dict(context_length=16, d_model=16, n_layers=1, n_heads=2)


def _tiny_model(seed):
    from ..data import char_data
    from ..model import GPT, ModelConfig
    from ..train import seed_everything

    seed_everything(seed)
    return GPT(ModelConfig(vocab_size=char_data().tok.vocab_size, **_TINY))


def harness_train_loop(loop, steps, batch_size, lr, warmup, eval_every, seed) -> dict:
    """Train the tiny model with the learner's ``loop`` and return its losses as plain lists."""
    from ..data import char_data

    _, train_ids, val_ids = char_data()
    out = loop(_tiny_model(seed), train_ids, val_ids, steps=steps, batch_size=batch_size, lr=lr, warmup=warmup,
               eval_every=eval_every, seed=seed)
    if not isinstance(out, dict):
        return dict(error=f"train_loop should return a dict with 'train_loss' and 'val_loss', got {type(out).__name__}")
    return {k: [float(v) for v in out.get(k, [])] for k in ("train_loss", "val_loss")}


def _reference_losses(cfg) -> dict:
    from ..data import char_data
    from ..train import train

    _, train_ids, val_ids = char_data()
    h = train(_tiny_model(cfg["seed"]), train_ids, val_ids, steps=cfg["steps"], batch_size=cfg["batch_size"], lr=cfg["lr"],
              schedule="cosine", warmup=cfg["warmup"], min_lr_ratio=0.1, eval_every=cfg["eval_every"], eval_batches=4,
              seed=cfg["seed"], progress=False)
    return dict(train_loss=h.train_loss, val_loss=h.val_loss)


def _loop_case(f, cfg):
    got = call_with(f, "lmlab.grading.ch09:harness_train_loop", **cfg)
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
                raise CheckFailed(f"{what}: {key} at step {step}: expected {b:.5f} (lmlab.train.train), got {a:.5f}"
                                  + (" — the very first loss differs: same seed, model and batches?" if i == 0 else ""))


def _loop_main(f):
    _loop_case(f, _LOOP)


def _loop_other(f):
    _loop_case(f, dict(steps=24, batch_size=4, lr=3e-2, warmup=0, eval_every=8, seed=11))


register(Exercise(
    id="09.train_loop",
    points=4,
    signature="train_loop(model, train_ids, val_ids, *, steps, batch_size, lr, warmup, eval_every, seed) -> "
              "{'train_loss': [...], 'val_loss': [...]}",
    hint="gen = seed_everything(seed); AdamW(param_groups(model, 0.1), betas=(0.9, 0.95)); for t in 1..steps: set "
         "every group's lr to warmup_cosine(t, lr, 0.1 * lr, warmup, steps), sample a batch, forward, loss, zero_grad, "
         "backward, clip to 1.0, step; evaluate every eval_every steps and at the last.",
    checks=(
        Check("30 steps with warm-up: the loss trajectory equals lmlab.train.train's at the same seed", _loop_main),
        Check("another seed, batch size and LR, no warm-up", _loop_other),
    ),
    reference="lmlab.grading.ch09:reference_train_loop",
    timeout=60.0,
))


def reference_train_loop(model, train_ids, val_ids, *, steps, batch_size, lr, warmup, eval_every, seed) -> dict:
    """lmlab's answer to 09.train_loop: :func:`lmlab.train.train` with the exercise's recipe."""
    from ..train import train

    h = train(model, train_ids, val_ids, steps=steps, batch_size=batch_size, lr=lr, schedule="cosine", warmup=warmup,
              min_lr_ratio=0.1, eval_every=eval_every, eval_batches=4, seed=seed, progress=False)
    return dict(train_loss=h.train_loss, val_loss=h.val_loss)
