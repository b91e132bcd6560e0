"""Lesson 11's experiments (``lessons/11_mixed_precision``), importable so tests run the same code.

- :func:`overflow_examples`: exp of logits and a large activation's variance in FP32 / FP16 / BF16.
- :func:`running_sum`: add 0.01 a thousand times in each format (real torch dtypes where torch has
  them, :func:`lmlab.train.precision.quantize` for TF32 and FP8).
- :func:`fp16_simulation`: FP16 *storage* simulated on FP32 tensors: every module output and every
  gradient flowing back into it is rounded to FP16 with lmlab's own ``quantize`` (the arithmetic
  inside an op stays FP32, like FP16 tensor cores accumulating in FP32). Real FP16 arithmetic on a
  CPU is many times slower than FP32 (lesson 11 measures it on the learner's machine), too slow for a
  lesson's training runs.
- :func:`gradient_underflow`: the share of a tiny model's gradient entries that FP16 flushes to zero,
  with real FP16 (``model.half()``) and with the simulation, at several loss scales.
- :func:`train_recipe`: one tiny GPT trained as ``fp32``, ``bf16_autocast``, ``fp16_no_scaling``,
  ``fp16_scaled_master`` or ``fp16_no_master``; :func:`update_rounding` (Adam-sized updates that
  round away), :func:`memory_per_parameter` (bytes measured from the tensors, and activations).
Figures and the widgets' figures are in :mod:`lmlab.course.experiments.ch11_figures`.
"""

from __future__ import annotations

import copy
import time
from contextlib import contextmanager

import torch

from lmlab.argcheck import check_choice, check_int, check_positive
from lmlab.data.text import char_data, sample_batch
from lmlab.model import GPT, ModelConfig
from lmlab.model.gpt import Block
from lmlab.train.loop import evaluate, lm_loss
from lmlab.train.loss_scaling import DynamicLossScaler, MasterWeights
from lmlab.train.precision import quantize

__all__ = ["RECIPES", "DTYPES", "tiny_config", "overflow_examples", "running_sum", "fp16_simulation",
           "gradient_underflow", "train_recipe", "update_rounding", "memory_per_parameter"]

RECIPES = ("fp32", "bf16_autocast", "fp16_no_scaling", "fp16_scaled_master", "fp16_no_master")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def tiny_config(d_model: int = 64, n_layers: int = 2, context_length: int = 32) -> ModelConfig:
    """The lesson's tiny GPT on the embedded corpus's characters."""
    return ModelConfig(vocab_size=char_data().tok.vocab_size, context_length=context_length, d_model=d_model,
                       n_layers=n_layers, n_heads=4)


# ---------------------------------------------------------------------------------------------
# Range and precision
# ---------------------------------------------------------------------------------------------


def overflow_examples() -> dict:
    """Real torch arithmetic in each dtype: ``exp`` of logits ``[8, 10, 12]`` (and the naive softmax
    built from it), and the mean square of a 64-wide activation of value 300 (LayerNorm's variance)."""
    out = {}
    for name, dt in DTYPES.items():
        logits = torch.tensor([8.0, 10.0, 12.0], dtype=dt)
        e = logits.exp()
        act = torch.full((64,), 300.0, dtype=dt)
        ms = (act * act).mean()
        out[name] = dict(exp=e.float().tolist(), softmax=(e / e.sum()).float().tolist(), mean_square=float(ms),
                         exp_finite=bool(torch.isfinite(e).all()), mean_square_finite=bool(torch.isfinite(ms)))
    return out


def running_sum(value: float = 0.01, n: int = 1000, fmt: str = "fp16") -> list[float]:
    """``0 + value + value + ...`` (``n`` times), rounding after every addition in ``fmt``; the
    running total after each step. fp32/fp16/bf16 use torch's own dtypes, other formats quantize."""
    n = check_int(n, "n", "running_sum")
    fmt = check_choice(fmt, "fmt", ("fp32", "fp16", "bf16", "tf32", "fp8_e4m3", "fp8_e5m2"), "running_sum")
    if fmt in DTYPES:
        acc, v = torch.zeros((), dtype=DTYPES[fmt]), torch.tensor(value, dtype=DTYPES[fmt])
        step = lambda a: a + v  # noqa: E731
    else:
        v = quantize(torch.tensor(value, dtype=torch.float64), fmt)
        acc = torch.zeros((), dtype=torch.float64)
        step = lambda a: quantize(a + v, fmt)  # noqa: E731  (the exact sum, rounded once: IEEE addition)
    totals = []
    for _ in range(n):
        acc = step(acc)
        totals.append(float(acc))
    return totals


# ---------------------------------------------------------------------------------------------
# FP16 storage, simulated
# ---------------------------------------------------------------------------------------------


class _FP16Storage(torch.autograd.Function):
    """Identity that stores its output, and the gradient flowing back through it, in FP16."""

    @staticmethod
    def forward(ctx, x):
        return quantize(x, "fp16")

    @staticmethod
    def backward(ctx, grad):
        return quantize(grad, "fp16")


@contextmanager
def fp16_simulation(model: torch.nn.Module):
    """Inside the ``with``: every module of ``model`` hands on its output rounded to FP16, and the
    gradient coming back into every module output is rounded to FP16 (underflow and overflow included).
    Round the parameters and their ``.grad`` yourself (:func:`train_recipe` does)."""

    def hook(_module, _inputs, output):
        if isinstance(output, torch.Tensor) and output.is_floating_point():
            return _FP16Storage.apply(output)
        return None

    kept = [m for m in model.modules() if isinstance(m, Block) or (not list(m.children()) and not isinstance(
        m, (torch.nn.Dropout, torch.nn.Identity)))]  # every leaf op's output and every block's residual stream
    handles = [m.register_forward_hook(hook) for m in kept]
    try:
        yield model
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def _round_(tensors):
    tensors = [t for t in tensors if t is not None]
    flat = quantize(torch.cat([t.reshape(-1) for t in tensors]), "fp16")  # one call for all of them
    for t, r in zip(tensors, flat.split([t.numel() for t in tensors])):
        t.copy_(r.view_as(t))


def _grads(model):
    return [p.grad for p in model.parameters()]


def gradient_underflow(model: GPT, scales=(1.0, 2.0 ** 8, 2.0 ** 16), batch_size: int = 32, seed: int = 0) -> dict:
    """One batch's gradients in FP32, then in real FP16 (a ``.half()`` copy) and simulated FP16 with
    the loss multiplied by each scale and the gradients divided back. For each: the share of entries
    that are non-zero in FP32 but zero in FP16 (underflow), and whether any became inf/NaN.
    Also returns the FP32 magnitudes of parameter and activation gradients (for the histogram)."""
    _, train_ids, _ = char_data()
    g = torch.Generator().manual_seed(seed)
    x, y = sample_batch(train_ids, batch_size, model.config.context_length, generator=g)
    ref_model = copy.deepcopy(model).float()
    act_grads = []

    def keep(_m, _i, out):
        if isinstance(out, torch.Tensor) and out.requires_grad:
            out.register_hook(lambda gr: act_grads.append(gr.detach().abs().flatten()))

    handles = [m.register_forward_hook(keep) for m in ref_model.modules() if not list(m.children())]
    lm_loss(ref_model(x), y).backward()
    for h in handles:
        h.remove()
    ref = torch.cat([p.grad.flatten() for p in ref_model.parameters()])
    nonzero = ref != 0
    result = dict(scales=[float(s) for s in scales], real=[], simulated=[], real_inf=[], simulated_inf=[],
                  param_grad_abs=ref.abs()[nonzero], activation_grad_abs=torch.cat(act_grads))
    for s in scales:
        s = check_positive(s, "scales")
        for kind in ("real", "simulated"):
            m = copy.deepcopy(model).float()
            if kind == "real":
                m = m.half()
                loss = lm_loss(m(x).float(), y)
            else:
                _round_(list(m.parameters()))
                with fp16_simulation(m):
                    loss = lm_loss(m(x).float(), y)
            (loss * s).backward()
            grads = torch.cat([p.grad.float().flatten() for p in m.parameters()])
            if kind == "simulated":
                grads = quantize(grads, "fp16")  # parameter gradients are stored in FP16 too
            result[kind].append(float(((grads == 0) & nonzero).sum() / nonzero.sum()))
            result[kind + "_inf"].append(not bool(torch.isfinite(grads).all()))
    return result


# ---------------------------------------------------------------------------------------------
# Training a tiny model five ways
# ---------------------------------------------------------------------------------------------


def train_recipe(recipe: str, seed: int = 0, steps: int = 100, batch_size: int = 16, lr: float = 3e-3,
                 cfg: ModelConfig | None = None, init_scale: float = 65536.0, growth_interval: int = 2000,
                 eval_batches: int = 8, init_state: dict | None = None, data_seed: int | None = None,
                 device: str = "cpu") -> dict:
    """Train a tiny GPT with AdamW (no clipping, no decay) under one precision recipe.

    ``fp32``; ``bf16_autocast`` (``torch.autocast(device, torch.bfloat16)``, FP32 weights);
    ``fp16_no_scaling`` / ``fp16_scaled_master`` (FP16 weights, activations and gradients simulated,
    FP32 master weights and moments in :class:`MasterWeights`; without / with a
    :class:`DynamicLossScaler`); ``fp16_no_master`` (the same with loss scaling, but AdamW updates
    the FP16 weights directly: each new weight is rounded to FP16, its moments stay FP32).
    The same seed gives the same initial weights and batches for every recipe. ``init_state`` (a
    ``state_dict``) starts from trained weights instead; ``data_seed`` (default ``seed``) seeds the batches.
    ``device``: ``"cpu"`` or ``"cuda"`` (autocast then runs on that device; FP16 stays simulated).
    Returns losses per step, the final validation loss (an FP32 forward of the final weights),
    the share of zero gradient entries per step, skipped steps, scales, and the share of
    parameter entries whose update rounded away (``fp16_no_master``).
    """
    recipe = check_choice(recipe, "recipe", RECIPES, "train_recipe")
    steps = check_int(steps, "steps", "train_recipe")
    check_positive(lr, "lr", "train_recipe")
    device = check_choice(device, "device", ("cpu", "cuda"), "train_recipe")
    cfg = cfg or tiny_config()
    _, train_ids, val_ids = char_data()
    torch.manual_seed(seed)
    model = GPT(cfg)
    if init_state is not None:
        model.load_state_dict(init_state)
    model = model.to(device)
    params = list(model.parameters())
    gen = torch.Generator().manual_seed(seed if data_seed is None else data_seed)
    fp16 = recipe.startswith("fp16")
    scaler = DynamicLossScaler(init_scale=init_scale, growth_interval=growth_interval) if recipe in (
        "fp16_scaled_master", "fp16_no_master") else None
    make_adam = lambda ps: torch.optim.AdamW(ps, lr=lr, betas=(0.9, 0.95), weight_decay=0.0)  # noqa: E731
    if fp16:
        _round_(params)  # FP16 weights from the start
    master = MasterWeights(params, make_adam, scaler, round_fn=lambda t: quantize(t, "fp16")) if recipe in (
        "fp16_no_scaling", "fp16_scaled_master") else None
    opt = make_adam(params) if master is None else None
    out = dict(recipe=recipe, seed=seed, losses=[], zero_grad=[], skipped=[], scales=[], lost_updates=[])
    initial = torch.cat([p.detach().reshape(-1) for p in params])
    start = time.perf_counter()
    model.train()
    for step in range(steps):
        x, y = sample_batch(train_ids, batch_size, cfg.context_length, generator=gen, device=device)
        if recipe == "bf16_autocast":
            with torch.autocast(device, dtype=torch.bfloat16):
                loss = lm_loss(model(x).float(), y)
        elif fp16:
            with fp16_simulation(model):
                loss = lm_loss(model(x).float(), y)
        else:
            loss = lm_loss(model(x), y)
        scale = scaler.scale if scaler is not None else 1.0
        (loss * scale).backward()
        if fp16:
            _round_(_grads(model))  # parameter gradients stored in FP16
        out["zero_grad"].append(float(sum(int((p.grad == 0).sum()) for p in params) / sum(p.numel() for p in params)))
        out["losses"].append(loss.item())
        if master is not None:
            taken = master.step()
            master.zero_grad()
        elif recipe == "fp16_no_master":
            before = [p.detach().clone() for p in params]
            taken = scaler.step(opt, params)  # unscale (inf/NaN -> skip), AdamW on the FP16 weights in FP32 ...
            if taken:
                moved = [p.detach() != b for p, b in zip(params, before)]  # the FP32 update changed it
                _round_(params)  # ... then stored in FP16 again
                lost = sum(int((m & (p.detach() == b)).sum()) for m, p, b in zip(moved, params, before))
                out["lost_updates"].append(lost / max(1, sum(int(m.sum()) for m in moved)))
            opt.zero_grad(set_to_none=True)
        else:
            opt.step()
            opt.zero_grad(set_to_none=True)
            taken = True
        if not taken:
            out["skipped"].append(step)
        if scaler is not None:
            out["scales"].append(scaler.scale)
    out["seconds"] = time.perf_counter() - start
    out["weights_changed"] = float((torch.cat([p.detach().reshape(-1) for p in params]) != initial).float().mean())
    out["val_loss"] = evaluate(model, val_ids, batch_size=16, n_batches=eval_batches)
    out["state"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
    out["model"] = model
    if master is not None:
        out["master"] = master
    return out


def update_rounding(model: GPT, lrs=(1e-2, 1e-3, 1e-4, 3e-5, 1e-5, 1e-6), formats=("fp32", "bf16", "fp16"), seed: int = 0) -> dict:
    """The share of a model's weight entries that one Adam-sized update leaves unchanged once the
    new weight is rounded to each format: ``w' = round(w - lr * u)`` with Adam's first update
    direction ``u = sign(grad)`` (|u| = 1, Adam's largest typical step), on the model's own weights."""
    _, train_ids, _ = char_data()
    m = copy.deepcopy(model).float()
    x, y = sample_batch(train_ids, 16, m.config.context_length, generator=torch.Generator().manual_seed(seed))
    lm_loss(m(x), y).backward()
    out = dict(lrs=[float(lr) for lr in lrs], formats=list(formats))
    for fmt in formats:
        lost = []
        for lr in lrs:
            kept = total = 0
            for p in m.parameters():
                w = quantize(p.detach(), fmt)
                u = torch.sign(p.grad)
                new = quantize(w - lr * u, fmt)
                active = u != 0
                kept += int(((new == w) & active).sum())
                total += int(active.sum())
            lost.append(kept / max(total, 1))
        out[fmt] = lost
    return out


def _saved_activation_bytes(fn) -> int:
    seen, total = set(), 0

    def pack(t):
        nonlocal total
        key = (t.data_ptr(), t.dtype, tuple(t.shape))
        if key not in seen and not isinstance(t, torch.nn.Parameter):
            seen.add(key)
            total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total


def memory_per_parameter(cfg: ModelConfig | None = None, batch_size: int = 16) -> dict:
    """Bytes per parameter of each recipe, measured from the tensors after one real AdamW step, and
    the bytes of activations autograd saved for backward in one forward pass.

    Recipes: FP32 + AdamW; BF16 autocast + AdamW (FP32 weights); FP16 weights + FP32 master + FP32
    AdamW (the ZeRO paper's 2 + 2 + 12); pure FP16 (weights, gradients and AdamW moments in FP16).
    """
    cfg = cfg or tiny_config()
    _, train_ids, _ = char_data()
    x, y = sample_batch(train_ids, batch_size, cfg.context_length, generator=torch.Generator().manual_seed(0))
    rows = {}
    for name in ("fp32 + AdamW", "bf16 autocast + AdamW", "fp16 + fp32 master + AdamW", "pure fp16 + AdamW"):
        torch.manual_seed(0)
        model = GPT(cfg)
        if name.startswith(("fp16", "pure")):
            model = model.half()
        params = list(model.parameters())
        n = sum(p.numel() for p in params)

        def forward_backward():
            if name.startswith("bf16"):
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    loss = lm_loss(model(x).float(), y)
            else:
                loss = lm_loss(model(x).float(), y)
            loss.backward()

        act = _saved_activation_bytes(forward_backward)
        if name.startswith("fp16"):
            mw = MasterWeights(params, lambda ps: torch.optim.AdamW(ps, lr=1e-3))
            mw.step()
            row = mw.bytes_per_parameter()
        else:
            opt = torch.optim.AdamW(params, lr=1e-3)
            opt.step()
            state = sum(t.numel() * t.element_size() for p in params for t in opt.state[p].values()
                        if isinstance(t, torch.Tensor) and t.dim() > 0 and t.numel() == p.numel())
            row = dict(weights=sum(p.numel() * p.element_size() for p in params) / n,
                       grads=sum(p.grad.numel() * p.grad.element_size() for p in params) / n, master=0.0,
                       optimizer_state=state / n)
            row["total"] = sum(row.values())
        row["activation_bytes"] = act
        rows[name] = row
    return dict(rows=rows, n_params=n, tokens=batch_size * cfg.context_length)
