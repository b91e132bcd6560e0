"""Chapter 01 graders (``exercises/01_normalization.ipynb``): LayerNorm, RMSNorm, a pre-LN block, DeepNorm.

Every check compares with a torch built-in (``F.layer_norm``, ``F.rms_norm``), an independent
construction (float64 formulas written out here, a block assembled from ``nn`` modules) or a property
(mean 0 / RMS 1 per token, invariance to scale or shift, eps that keeps a constant row finite, identity
when the sub-layers output zero). lmlab's own implementation is only the ``reference`` that the tests
feed through the same checks.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from lmlab.grading.assertions import expect_close, expect_tensor, expect_true
from lmlab.grading.plugin import expect_trains_like_lmlab
from lmlab.grading.registry import CheckFailed, Check, Exercise, register
from lmlab.grading.sandbox import share
from lmlab.grading.seeds import check_generator, global_seed

# The notebook's order (01_normalization.py): the score table and the exercise notebook follow it.
EXERCISES = (
    "01.layer_norm",
    "01.rms_norm",
    "01.pre_ln_block",
    "01.deepnorm_constants",
    "01.RMSNorm",
)


def _rand(*shape, seed: int, scale: float = 1.0, shift: float = 0.0) -> torch.Tensor:
    return shift + scale * torch.randn(*shape, generator=check_generator(seed))


# ---------------------------------------------------------------------------------------------
# 01.layer_norm
# ---------------------------------------------------------------------------------------------


def _ln_builtin(f):
    x = _rand(3, 5, 8, seed=10, scale=2.0, shift=1.5)  # (B, T, d), off-centre
    w, b = _rand(8, seed=11), _rand(8, seed=12)
    got = expect_tensor(f(x, w, b, 1e-5), "layer_norm(x (3, 5, 8), weight, bias, 1e-5)", shape=(3, 5, 8), dtype=torch.float32)
    expect_close(got, F.layer_norm(x, (8,), w, b, 1e-5), "layer_norm(x, weight, bias) vs F.layer_norm", atol=1e-5)


def _ln_properties(f):
    d = 16
    x = _rand(6, d, seed=13, scale=4.0, shift=-3.0)
    y = expect_tensor(f(x, torch.ones(d), torch.zeros(d), 1e-5), "layer_norm(x (6, 16), ones, zeros)", shape=(6, d))
    expect_close(y.mean(-1), torch.zeros(6), "the mean of each row of the output (must be 0: statistics over the last dim)", atol=1e-5)
    expect_close(y.pow(2).mean(-1), torch.ones(6), "the mean of y**2 in each row (must be 1: the *biased* variance, divide by d)", atol=1e-3)
    # an independent float64 formula with a large eps: where eps goes shows
    x2 = _rand(4, d, seed=14, scale=0.1)
    eps = 0.5
    xd = x2.double()
    want = (xd - xd.mean(-1, keepdim=True)) / torch.sqrt(xd.var(-1, unbiased=False, keepdim=True) + eps)
    expect_close(f(x2, torch.ones(d), torch.zeros(d), eps), want.float(),
                 "layer_norm with eps=0.5 on small inputs ((x - mean) / sqrt(var + eps): eps goes inside the root)", atol=1e-5)


def _ln_constant_row(f):
    d = 8
    x = torch.full((2, d), 7.0)
    w, b = _rand(d, seed=15), _rand(d, seed=16)
    y = expect_tensor(f(x, w, b, 1e-5), "layer_norm of constant rows", shape=(2, d))
    expect_true(bool(torch.isfinite(y).all()), "layer_norm of a constant row gave inf/NaN: the variance is 0, eps must keep the root > 0")
    expect_close(y, b.expand(2, d).contiguous(), "layer_norm of a constant row (x - mean = 0, so the output is the bias)", atol=1e-5)
    expect_close(f(x, w, b, 1e-5), F.layer_norm(x, (d,), w, b, 1e-5), "layer_norm of constant rows vs F.layer_norm", atol=1e-5)


def _ln_grad(f):
    x = _rand(2, 3, 6, seed=17, scale=3.0).requires_grad_(True)
    w, b = _rand(6, seed=18).requires_grad_(True), _rand(6, seed=19).requires_grad_(True)
    gy = _rand(2, 3, 6, seed=20)
    out = f(x, w, b, 1e-5)
    expect_true(isinstance(out, torch.Tensor) and out.requires_grad, "layer_norm must stay differentiable (no .detach(), no .item())")
    mine = torch.autograd.grad(out, (x, w, b), gy)
    ref = torch.autograd.grad(F.layer_norm(x, (6,), w, b, 1e-5), (x, w, b), gy)
    for name, m, r in zip(("x", "weight", "bias"), mine, ref):
        expect_close(m, r, f"the gradient of layer_norm w.r.t. {name} (vs F.layer_norm's)", atol=1e-4)


register(Exercise(
    id="01.layer_norm",
    points=3,
    signature="layer_norm(x: (..., d) tensor, weight: (d,), bias: (d,), eps: float) -> tensor of x's shape",
    hint="statistics per token, over its features only (keep the dims so they broadcast); which variance does torch's LayerNorm use, and where does eps go?",
    minutes=10,
    hints=(
        "LayerNorm normalizes each token on its own: subtract the mean of its d features, divide by their standard "
        "deviation, then apply a learned gain and bias. Nothing is shared across the batch or the sequence.",
        "Mean and variance over the last dim with keepdim=True: (..., 1). Use the biased variance (divide by d, as "
        "torch's LayerNorm does), put eps inside the square root, then multiply by weight (d,) and add bias (d,): both "
        "broadcast.",
        "mean = ...  # (..., 1), over the features\nvar = ...  # biased, (..., 1)\n"
        "return ... * weight + bias  # (..., d)",
    ),
    checks=(
        Check("a (3, 5, 8) batch against F.layer_norm", _ln_builtin),
        Check("each output row has mean 0 and mean square 1; eps sits inside the root", _ln_properties),
        Check("a constant row stays finite and gives the bias", _ln_constant_row),
        Check("its gradients equal F.layer_norm's", _ln_grad),
    ),
    reference="lmlab.model.norms:layer_norm",
))

# ---------------------------------------------------------------------------------------------
# 01.rms_norm
# ---------------------------------------------------------------------------------------------


def _rms_builtin(f):
    x = _rand(3, 5, 8, seed=30, scale=2.0, shift=1.5)
    w = _rand(8, seed=31)
    got = expect_tensor(f(x, w, 1e-6), "rms_norm(x (3, 5, 8), weight, 1e-6)", shape=(3, 5, 8), dtype=torch.float32)
    expect_close(got, F.rms_norm(x, (8,), w, eps=1e-6), "rms_norm(x, weight) vs F.rms_norm", atol=1e-5)


def _rms_properties(f):
    d = 16
    x = _rand(6, d, seed=32, scale=3.0, shift=2.0)
    ones = torch.ones(d)
    y = expect_tensor(f(x, ones, 1e-6), "rms_norm(x (6, 16), ones)", shape=(6, d))
    expect_close(y.pow(2).mean(-1), torch.ones(6), "the mean of y**2 in each row (must be 1)", atol=1e-4)
    expect_close(f(x * 10.0, ones, 1e-6), y, "rms_norm(10 * x) (RMSNorm ignores the scale of its input)", atol=1e-5)
    expect_true(float(y.mean()) > 0.3, "rms_norm subtracted the mean: RMSNorm re-scales only, it must keep an off-centre input off-centre")
    x2 = _rand(4, d, seed=33, scale=0.1)
    eps = 0.5
    xd = x2.double()
    want = xd / torch.sqrt(xd.pow(2).mean(-1, keepdim=True) + eps)
    expect_close(f(x2, ones, eps), want.float(), "rms_norm with eps=0.5 on small inputs (x / sqrt(mean(x**2) + eps))", atol=1e-5)


def _rms_zero_and_grad(f):
    d = 6
    y = expect_tensor(f(torch.zeros(2, d), torch.ones(d), 1e-6), "rms_norm of an all-zero row", shape=(2, d))
    expect_true(bool(torch.isfinite(y).all()), "rms_norm of an all-zero row gave inf/NaN: eps must keep the root > 0")
    x = _rand(2, 3, d, seed=34, scale=3.0).requires_grad_(True)
    w = _rand(d, seed=35).requires_grad_(True)
    gy = _rand(2, 3, d, seed=36)
    out = f(x, w, 1e-6)
    expect_true(isinstance(out, torch.Tensor) and out.requires_grad, "rms_norm must stay differentiable (no .detach(), no .item())")
    mine = torch.autograd.grad(out, (x, w), gy)
    ref = torch.autograd.grad(F.rms_norm(x, (d,), w, eps=1e-6), (x, w), gy)
    for name, m, r in zip(("x", "weight"), mine, ref):
        expect_close(m, r, f"the gradient of rms_norm w.r.t. {name} (vs F.rms_norm's)", atol=1e-4)


register(Exercise(
    id="01.rms_norm",
    points=2,
    signature="rms_norm(x: (..., d) tensor, weight: (d,), eps: float) -> tensor of x's shape",
    hint="like LayerNorm without re-centring: scale each token by the root of its mean square.",
    minutes=5,
    hints=(
        "RMSNorm (Zhang & Sennrich) drops LayerNorm's re-centring and its bias: it only rescales each token so that "
        "the root of its mean square is 1, then applies a learned gain. Fewer operations, and in practice the same "
        "quality.",
        "Mean of x squared over the last dim, keepdim: (..., 1). Add eps, take one over the square root (torch.rsqrt), "
        "multiply x by it and by weight (d,). No mean is subtracted and there is no bias.",
        "ms = ...  # (..., 1): mean square per token\nreturn x * ... * weight",
    ),
    checks=(
        Check("a (3, 5, 8) batch against F.rms_norm", _rms_builtin),
        Check("mean square 1 per row, scale-invariant, not re-centred; eps inside the root", _rms_properties),
        Check("an all-zero row stays finite; gradients equal F.rms_norm's", _rms_zero_and_grad),
    ),
    reference="lmlab.model.norms:rms_norm",
))

# ---------------------------------------------------------------------------------------------
# 01.pre_ln_block
# ---------------------------------------------------------------------------------------------


class _Counted(nn.Module):
    """Wraps a module and counts its calls (a pre-LN block calls each part exactly once)."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module, self.calls = module, 0

    def forward(self, x):
        self.calls += 1
        return self.module(x)


class _MixTokens(nn.Module):
    """A stand-in for attention: causal mean over earlier tokens, then a linear map."""

    def __init__(self, d: int):
        super().__init__()
        self.lin = nn.Linear(d, d)

    def forward(self, x):  # (B, T, d)
        T = x.shape[1]
        w = torch.tril(torch.ones(T, T)) / torch.arange(1, T + 1)[:, None]  # (T, T) rows sum to 1
        return self.lin(w @ x)


def _parts(d: int, seed: int):
    with global_seed(seed):  # nn.Linear draws its initial weights from torch's global generator
        attn = _MixTokens(d)
        ffn = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))
    norm1, norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
    g = check_generator(seed + 1)
    with torch.no_grad():  # distinct gains and shifts, so using the wrong norm shows
        for norm, s in ((norm1, 1.0), (norm2, -1.0)):
            norm.weight.copy_(1.0 + 0.5 * torch.randn(d, generator=g))
            norm.bias.copy_(s * 0.3 + 0.1 * torch.randn(d, generator=g))
    return attn, ffn, norm1, norm2


def _pre_ln_reference(x, attn, ffn, norm1, norm2):
    h = x + attn(norm1(x))  # (B, T, d)
    return h + ffn(norm2(h))


def _block_matches(f):
    d = 8
    attn, ffn, norm1, norm2 = _parts(d, seed=40)
    x = _rand(2, 5, d, seed=41, scale=2.0, shift=0.5)
    with torch.no_grad():
        got = expect_tensor(f(x, attn, ffn, norm1, norm2), "pre_ln_block(x (2, 5, 8), attn, ffn, norm1, norm2)", shape=(2, 5, d))
        expect_close(got, _pre_ln_reference(x, attn, ffn, norm1, norm2),
                     "pre_ln_block output (h = x + attn(norm1(x)); out = h + ffn(norm2(h)))", atol=1e-5, check_dtype=False)


def _block_identity(f):
    d = 8
    _, _, norm1, norm2 = _parts(d, seed=42)
    zero = lambda t: torch.zeros_like(t)  # noqa: E731 — sub-layers that output nothing
    x = _rand(2, 4, d, seed=43, scale=3.0).requires_grad_(True)
    out = expect_tensor(f(x, zero, zero, norm1, norm2), "pre_ln_block with sub-layers that output zeros", shape=(2, 4, d))
    expect_close(out, x.detach(), "pre_ln_block with zero sub-layers (the residual stream must pass through un-normalized)",
                 atol=1e-6, check_dtype=False)
    expect_true(out.requires_grad, "pre_ln_block must keep the residual path differentiable")
    (grad,) = torch.autograd.grad(out.sum(), x)
    expect_close(grad, torch.ones_like(x), "d(sum of output)/dx with zero sub-layers (the skip path is the identity)", atol=1e-6)


def _block_calls_and_order(f):
    d = 8
    attn, ffn, norm1, norm2 = (share(_Counted(m)) for m in _parts(d, seed=44))  # their call counts come back
    x = _rand(1, 6, d, seed=45)
    with torch.no_grad():
        got = f(x, attn, ffn, norm1, norm2)
    calls = {"attn": attn.calls, "ffn": ffn.calls, "norm1": norm1.calls, "norm2": norm2.calls}
    if calls != {"attn": 1, "ffn": 1, "norm1": 1, "norm2": 1}:
        raise CheckFailed(f"each part must be called exactly once per block, got calls {calls}")
    with torch.no_grad():
        want = _pre_ln_reference(x, attn, ffn, norm1, norm2)
        expect_close(expect_tensor(got, "pre_ln_block(x (1, 6, 8), ...)", shape=(1, 6, d)), want,
                     "pre_ln_block output (the FFN reads h = x + attn(norm1(x)), not x)", atol=1e-5, check_dtype=False)


register(Exercise(
    id="01.pre_ln_block",
    points=2,
    signature="pre_ln_block(x: (B, T, d) tensor, attn, ffn, norm1, norm2) -> (B, T, d); each part is a callable (B, T, d) -> (B, T, d)",
    hint="normalize only what enters each sub-layer; the residual stream itself is never normalized.",
    minutes=5,
    hints=(
        "Pre-LN puts the norm at the entrance of each sub-layer, inside the residual branch: x + f(norm(x)). The "
        "identity path carries the un-normalized signal straight through, which is why gradients stay well-behaved in "
        "deep stacks.",
        "Two residual steps, in order: first the attention branch (through norm1), then the FFN branch (through norm2) "
        "applied to the result of the first step. Every tensor stays (B, T, d).",
        "h = x + ...  # the attention branch\nreturn h + ...  # the FFN branch",
    ),
    checks=(
        Check("one block equals x + attn(norm1(x)), then + ffn(norm2(.))", _block_matches),
        Check("with sub-layers that output zeros the block is the identity (gradient 1)", _block_identity),
        Check("each part is called once, the FFN sees the updated stream", _block_calls_and_order),
    ),
    reference="lmlab.course.experiments.ch01_placement:pre_ln_block",
))

# ---------------------------------------------------------------------------------------------
# 01.deepnorm_constants
# ---------------------------------------------------------------------------------------------


def _dn_pair(f, M):
    got = f(M)
    try:
        alpha, beta = got
        alpha, beta = float(alpha), float(beta)
    except (TypeError, ValueError):
        raise CheckFailed(f"deepnorm_constants({M}) should return (alpha, beta), two numbers; got {got!r}") from None
    return alpha, beta


def _dn_twelve(f):
    alpha, beta = _dn_pair(f, 12)
    expect_true(abs(alpha - 24 ** 0.25) < 1e-9 and abs(beta - 96 ** -0.25) < 1e-9,
                f"deepnorm_constants(12): expected alpha = 24**0.25 = {24 ** 0.25:.4f}, beta = 96**-0.25 = {96 ** -0.25:.4f}; "
                f"got alpha = {alpha:.4f}, beta = {beta:.4f}")


def _dn_laws(f):
    for M in (1, 2, 6, 24, 100, 1000):
        alpha, beta = _dn_pair(f, M)
        expect_true(alpha > 1 > beta > 0, f"deepnorm_constants({M}): alpha must be > 1 (up-weight the skip) and beta in (0, 1) (shrink the init); got {alpha:.4g}, {beta:.4g}")
        expect_true(math.isclose(alpha ** 4, 2 * M, rel_tol=1e-9), f"deepnorm_constants({M}): alpha**4 must equal 2M = {2 * M}, got {alpha ** 4:.6g}")
        expect_true(math.isclose(beta ** -4, 8 * M, rel_tol=1e-9), f"deepnorm_constants({M}): beta**-4 must equal 8M = {8 * M}, got {beta ** -4:.6g}")


def _dn_monotone(f):
    pairs = [_dn_pair(f, M) for M in (3, 30, 300)]
    expect_true(pairs[0][0] < pairs[1][0] < pairs[2][0] and pairs[0][1] > pairs[1][1] > pairs[2][1],
                f"deeper stacks need a larger alpha and a smaller beta; got {[(round(a, 3), round(b, 3)) for a, b in pairs]} for 3, 30, 300 layers")


register(Exercise(
    id="01.deepnorm_constants",
    points=1,
    signature="deepnorm_constants(num_layers: int) -> (alpha, beta) for a decoder-only stack",
    hint="DeepNet's table, decoder-only column: both constants are quarter powers of a multiple of the number of layers (alpha grows with depth, beta shrinks).",
    minutes=5,
    hints=(
        "DeepNorm up-weights the residual (x * alpha + f(x)) and shrinks some initial weights by beta, so a deep "
        "post-LN stack takes gentle updates. The DeepNet paper gives both constants as functions of the depth N.",
        "Both are quarter powers of a multiple of N: alpha = (a * N) ** (1/4) grows with depth, beta = (b * N) ** "
        "(-1/4) shrinks. Read a and b from the paper's table, decoder-only column (the smaller multiple goes with "
        "alpha). Return a tuple of floats.",
        "alpha = (... * num_layers) ** 0.25\nbeta = (... * num_layers) ** -0.25\nreturn alpha, beta",
    ),
    checks=(
        Check("12 layers: alpha ~ 2.21, beta ~ 0.32", _dn_twelve),
        Check("alpha**4 = 2M and beta**-4 = 8M for several depths", _dn_laws),
        Check("alpha grows and beta shrinks with depth", _dn_monotone),
    ),
    reference="lmlab.model.norms:deepnorm_constants",
))

# ---------------------------------------------------------------------------------------------
# 01.RMSNorm: your norm inside the model (lmlab.model.registry.register_norm), trained
# ---------------------------------------------------------------------------------------------

_NORM_MODEL = dict(context_length=32, d_model=32, n_layers=2, n_heads=4, norm="rmsnorm", bias=False, norm_eps=1e-3)


def _rmsnorm_module(cls):
    m = cls(8, eps=1e-3)
    expect_true(isinstance(m, nn.Module), f"RMSNorm(8, eps=1e-3) should be an nn.Module, got {type(m).__name__}")
    params = dict(m.named_parameters())
    expect_true(list(params) == ["weight"] and tuple(params["weight"].shape) == (8,),
                f"RMSNorm(8) should have exactly one parameter, weight (8,) (no bias), got {[(n, tuple(p.shape)) for n, p in params.items()]}")
    expect_close(params["weight"].detach(), torch.ones(8), "RMSNorm(8).weight at initialisation (ones)")
    x = _rand(3, 5, 8, seed=60, scale=0.05, shift=0.02)  # small inputs: eps matters
    with torch.no_grad():
        expect_close(m(x), F.rms_norm(x, (8,), m.weight, eps=1e-3), "RMSNorm(8, eps=1e-3)(x) vs F.rms_norm(x, (8,), weight, eps=1e-3)")
        expect_close(cls(8)(x), F.rms_norm(x, (8,), torch.ones(8), eps=1e-6),
                     "RMSNorm(8)(x) with the default eps (1e-6, LLaMA's) vs F.rms_norm", atol=1e-4)


def _rmsnorm_in_model(cls):
    expect_trains_like_lmlab(cls, "norm", _NORM_MODEL, "your RMSNorm as every norm of a 2-layer model (norm_eps=1e-3)")


register(Exercise(
    id="01.RMSNorm",
    points=2,
    kind="class",
    signature="class RMSNorm(nn.Module): RMSNorm(d_model: int, eps: float = 1e-6); forward(x (..., d_model)) -> same shape",
    hint="the module only holds a trainable gain and eps; the arithmetic is the function you wrote in exercise 2.",
    minutes=5,
    hints=(
        "An nn.Module wraps state around the function you already wrote: a learnable gain (one per feature) and eps. "
        "As a module, the model can train the gain and save it in its state dict.",
        "__init__: store eps; register weight as an nn.Parameter of shape (d_model,), starting at ones so the layer "
        "begins as a pure normalization. forward(x): (..., d_model) -> the same shape, by calling rms_norm.",
        "# __init__(self, d_model, eps=1e-6):\nself.eps = ...\nself.weight = ...  # trainable, (d_model,), ones\n\n"
        "# forward(self, x):\nreturn ...  # your rms_norm",
    ),
    checks=(
        Check("a module with one weight (ones) that equals F.rms_norm, with eps passed in and by default", _rmsnorm_module),
        Check("inside lmlab's model: lmlab's logits, and the same losses after 8 Adam steps", _rmsnorm_in_model),
    ),
    reference="lmlab.model.norms:RMSNorm",
    timeout=30.0,
))
