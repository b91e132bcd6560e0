"""Plausible wrong answers to chapter 09's exercises; each must fail its grader (tests/test_grading_checks.py)."""

import math
import statistics
from collections import deque

import torch


class _Adam(torch.optim.Optimizer):
    mistake = None

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            lr, (b1, b2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                s = self.state[p]
                if not s:
                    s["t"], s["m"], s["v"] = 0, torch.zeros_like(p), torch.zeros_like(p)
                s["t"] += 1
                g = p.grad
                if self.mistake == "l2":
                    g = g + wd * p  # L2 regularisation: decay goes through Adam's normalisation
                else:
                    p.mul_(1 - lr * wd)
                s["m"].mul_(b1).add_(g, alpha=1 - b1)
                s["v"].mul_(b2).addcmul_(g, g, value=1 - b2)
                if self.mistake == "no bias correction":
                    m_hat, v_hat = s["m"], s["v"]
                else:
                    m_hat, v_hat = s["m"] / (1 - b1 ** s["t"]), s["v"] / (1 - b2 ** s["t"])
                if self.mistake == "eps inside sqrt":
                    p.sub_(lr * m_hat / (v_hat + eps).sqrt())
                else:
                    p.sub_(lr * m_hat / (v_hat.sqrt() + eps))


class _L2(_Adam):
    mistake = "l2"


class _NoBias(_Adam):
    mistake = "no bias correction"


class _EpsInside(_Adam):
    mistake = "eps inside sqrt"


class _GlobalStep(_Adam):
    """Counts steps per optimizer, not per parameter: wrong when a parameter misses a step."""

    @torch.no_grad()
    def step(self, closure=None):
        self.t = getattr(self, "t", 0) + 1
        for group in self.param_groups:
            lr, (b1, b2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                s = self.state[p]
                if not s:
                    s["m"], s["v"] = torch.zeros_like(p), torch.zeros_like(p)
                p.mul_(1 - lr * wd)
                s["m"].mul_(b1).add_(p.grad, alpha=1 - b1)
                s["v"].mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
                p.sub_(lr * (s["m"] / (1 - b1 ** self.t)) / ((s["v"] / (1 - b2 ** self.t)).sqrt() + eps))


def _sched(step, max_lr, min_lr, warmup, total, mistake):
    if mistake == "off by one" and step < warmup:
        return max_lr * (step + 1) / warmup  # warm-up one step ahead: t = 0 is not 0
    if step < warmup:
        return max_lr * step / warmup
    if step >= total and mistake != "not clamped":
        return min_lr
    progress = (step - warmup) / max(1, total - warmup)
    if mistake == "to zero":
        return max_lr * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return min_lr + (max_lr - min_lr) * 0.5 * (1 + math.cos(math.pi * progress))


def _clip(parameters, max_norm, mistake):
    grads = [p.grad for p in parameters if p.grad is not None]
    if mistake == "per parameter":
        norms = [g.norm() for g in grads]
        for g, n in zip(grads, norms):
            g.mul_(min(1.0, max_norm / (n.item() + 1e-6)))
        return torch.sqrt(sum(n ** 2 for n in norms))
    total = torch.sqrt(sum((g ** 2).sum() for g in grads))
    coef = max_norm / (total.item() + 1e-6)
    if mistake != "always rescales":
        coef = min(1.0, coef)
    for g in grads:
        g.mul_(coef)
    if mistake == "returns the clipped norm":
        return torch.sqrt(sum((g ** 2).sum() for g in grads))
    return total


class _Det:
    mistake = None

    def __init__(self, window=128, threshold=6.0, min_history=32):
        if min_history < 2:
            raise ValueError("min_history must be >= 2")
        self.window, self.threshold, self.min_history = window, threshold, min_history
        self.l = deque(maxlen=None if self.mistake == "no window" else window)
        self.g = deque(maxlen=None if self.mistake == "no window" else window)

    def check(self, loss, grad_norm):
        spike = False
        if len(self.l) >= self.min_history:
            for x, past in ((loss, self.l), (grad_norm, self.g)):
                if self.mistake == "loss only" and past is self.g:
                    continue
                mean = statistics.fmean(past)
                sd = (statistics.pstdev if self.mistake == "pstdev" else statistics.stdev)(past)
                if self.mistake == "divides by a zero stdev":
                    z = (x - mean) / sd
                else:
                    z = (x - mean) / sd if sd > 0 else (math.inf if x > mean else 0.0)
                spike = spike or (abs(z) if self.mistake == "two-sided" else z) > self.threshold
        if not spike or self.mistake == "spikes enter the window":
            self.l.append(loss)
            self.g.append(grad_norm)
        return bool(spike)


def _det(mistake):
    return type("SpikeDetector", (_Det,), {"mistake": mistake})


def _loop(model, train_ids, val_ids, *, steps, batch_size, lr, warmup, eval_every, seed, mistake=None):
    from lmlab.data.text import sample_batch
    from lmlab.train.optim import param_groups
    from lmlab.train.schedule import warmup_cosine
    from lmlab.train.loop import evaluate, lm_loss, seed_everything

    gen = seed_everything(seed)
    opt = torch.optim.AdamW(param_groups(model, 0.1), lr=lr, betas=(0.9, 0.95))
    tr, va = [], []
    model.train()
    for t in range(1, steps + 1):
        s = t - 1 if mistake == "schedule off by one" else t
        for g in opt.param_groups:
            g["lr"] = lr if mistake == "constant lr" else warmup_cosine(s, lr, 0.1 * lr, warmup, steps)
        x, y = sample_batch(train_ids, batch_size, model.config.context_length, generator=gen)
        loss = lm_loss(model(x), y)
        if mistake != "no zero_grad":
            opt.zero_grad()
        loss.backward()
        if mistake != "no clipping":
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        tr.append(loss.item())
        if t % eval_every == 0 or t == steps:
            va.append(evaluate(model, val_ids, batch_size, 4))
    return {"train_loss": tr, "val_loss": va}


def _loop_with(mistake):
    return lambda *a, **k: _loop(*a, mistake=mistake, **k)


WRONG = {
    "09.AdamW": {
        "weight decay added to the gradient (L2, not decoupled)": _L2,
        "bias correction missing": _NoBias,
        "eps inside the square root": _EpsInside,
        "one step counter for the whole optimizer": _GlobalStep,
    },
    "09.warmup_cosine": {
        "warm-up off by one": lambda *a: _sched(*a, "off by one"),
        "schedule not clamped after the end": lambda *a: _sched(*a, "not clamped"),
        "decays to zero, not to min_lr": lambda *a: _sched(*a, "to zero"),
    },
    "09.clip_grad_norm": {
        "clips each parameter separately (per-parameter, not global)": lambda ps, m: _clip(ps, m, "per parameter"),
        "returns the norm after clipping": lambda ps, m: _clip(ps, m, "returns the clipped norm"),
        "always rescales to max_norm (scales small gradients up)": lambda ps, m: _clip(ps, m, "always rescales"),
    },
    "09.SpikeDetector": {
        "spikes enter the window": _det("spikes enter the window"),
        "no rolling window (all history)": _det("no window"),
        "two-sided (drops count as spikes)": _det("two-sided"),
        "ignores the gradient norm": _det("loss only"),
        "population standard deviation (pstdev)": _det("pstdev"),
        "divides by a zero stdev (constant history crashes)": _det("divides by a zero stdev"),
    },
    "09.train_loop": {
        "schedule off by one (starts at step 0)": _loop_with("schedule off by one"),
        "constant lr (no schedule)": _loop_with("constant lr"),
        "no zero_grad (gradients accumulate)": _loop_with("no zero_grad"),
        "no gradient clipping": _loop_with("no clipping"),
    },
}
