"""Tests for lmlab.model.norms: LayerNorm, RMSNorm and DeepNorm against torch and their defining properties.

Tolerances (stated once, used below):
- fp32 against torch: every element within 1e-6 * scale (rtol 1e-6 besides). scale is the size
  of what is being summed: max(1, largest |value| of torch's tensor, max|dy| * max|w| * max 1/std
  (the terms of dx before they cancel)), times, for LayerNorm, the inputs' condition number max
  over rows of rms(x) / std(x) (1 for centred rows; rounding in x - mean(x) grows with it, for
  torch's kernel as for ours). Ours must also be that close to the fp64 result. In practice the
  two differ by a few ulps (torch sums in another order) and RMSNorm matches exactly.
- bf16: forward and every gradient within 1e-2 of the largest magnitude of the fp64 truth
  (about 2.5 bf16 ulps), and never further from the truth than torch's own bf16 kernel (+ 1 ulp).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from lmlab.model import ModelConfig
from lmlab.model.norms import DeepNorm, LayerNorm, RMSNorm, deepnorm_constants, layer_norm, rms_norm
from lmlab.model.registry import NORMS

NORM_CLASSES = {"layernorm": LayerNorm, "rmsnorm": RMSNorm}

FP32 = dict(rtol=1e-6, atol=1e-6)
BF16_REL_TO_MAX = 1e-2


def assert_close_fp32(got, want, truth, terms: float = 1.0, cond: float = 1.0, msg: str = "") -> None:
    """``got`` (ours, fp32) against ``want`` (torch, fp32) and ``truth`` (fp64), see the tolerances above."""
    scale = max(1.0, terms, want.abs().max().item() if want.numel() else 0.0) * cond
    fmt = (lambda m: f"{msg}: {m}") if msg else None
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6 * scale, msg=fmt)
    torch.testing.assert_close(got.double(), truth, rtol=1e-6, atol=1e-6 * scale, msg=fmt)


def scales(name: str, x, w, go) -> tuple[float, float]:
    """(size of dx's terms, condition number), as defined in the module docstring."""
    x = x.double()
    if name == "layer_norm":
        var = x.var(-1, correction=0)
        cond = max(1.0, (x.pow(2).mean(-1) / (var + 1e-5)).sqrt().max().item())
    else:
        var, cond = x.pow(2).mean(-1), 1.0
    wmax = w.abs().max().item() if w is not None else 1.0
    return go.abs().max().item() * wmax * (var + 1e-6).rsqrt().max().item(), cond


def check_against_torch(name, x, w, b, go):
    ours, ref = PAIRS[name]
    exact = forward_and_grads(ref, *(t.double() if t is not None else None for t in (x, w, b, go)))
    terms, cond = scales(name, x, w, go)
    for got, want, truth in zip(forward_and_grads(ours, x, w, b, go), forward_and_grads(ref, x, w, b, go), exact):
        assert_close_fp32(got, want, truth, terms, cond, name)


SHAPES = [(5,), (3, 3), (2, 7, 16), (4, 3, 33), (64, 128)]


def inputs(shape, seed=0, dtype=torch.float64, scale=1.0, shift=0.0):
    g = torch.Generator().manual_seed(seed)
    d = shape[-1]
    x = torch.randn(shape, generator=g, dtype=torch.float64) * scale + shift
    w = 1 + 0.3 * torch.randn(d, generator=g, dtype=torch.float64)
    b = 0.3 * torch.randn(d, generator=g, dtype=torch.float64)
    go = torch.randn(shape, generator=g, dtype=torch.float64)
    return [t.to(dtype) for t in (x, w, b, go)]


def forward_and_grads(fn, x, w, b, go):
    """``fn(x, w, b)`` and the gradients of ``<fn(x, w, b), go>`` w.r.t. every input that is not None."""
    leaves = [t.detach().clone().requires_grad_() if t is not None else None for t in (x, w, b)]
    y = fn(*leaves)
    used = [t for t in leaves if t is not None]
    grads = torch.autograd.grad(y, used, go, allow_unused=True)
    grads = [gr if gr is not None else torch.zeros_like(t) for gr, t in zip(grads, used)]
    return [y.detach(), *grads]


def ours_ln(x, w, b):
    return layer_norm(x, w, b, 1e-5)


def torch_ln(x, w, b):
    return F.layer_norm(x, (x.shape[-1],), w, b, 1e-5)


def ours_rms(x, w, b):
    return rms_norm(x, w, 1e-6)


def torch_rms(x, w, b):
    return F.rms_norm(x, (x.shape[-1],), w, 1e-6)


PAIRS = {"layer_norm": (ours_ln, torch_ln), "rms_norm": (ours_rms, torch_rms)}


# --------------------------------------------------------------------------------------------
# Equal to torch: fp32 forward and gradients
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", PAIRS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("affine", ["weight+bias", "weight", "none"])
def test_equals_torch_fp32(name, shape, affine):
    x, w, b, go = inputs(shape, dtype=torch.float32)
    w = None if affine == "none" else w
    b = b if affine == "weight+bias" else None
    check_against_torch(name, x, w, b, go)


def test_layer_norm_of_a_single_feature_is_the_bias_with_zero_gradient():
    # d = 1: x - mean(x) is exactly 0, so the output is the bias and dx is exactly 0. (Torch's fused
    # kernel returns rounding noise times rsqrt(eps) ~ 316 for dx here. d = 2 is nearly as
    # degenerate, outputs +-1, dx ~ 0, and torch is the less accurate there too: so d >= 3 above.)
    x, w, b, go = inputs((4, 1), dtype=torch.float32)
    y, dx, dw, db = forward_and_grads(ours_ln, x, w, b, go)
    torch.testing.assert_close(y, b.expand(4, 1), rtol=0, atol=0)
    assert torch.all(dx == 0) and torch.all(dw == 0)
    torch.testing.assert_close(db, go.sum(0), rtol=1e-6, atol=1e-6)


@settings(max_examples=25, deadline=None)
@given(
    rows=st.integers(1, 6), d=st.integers(3, 48), seed=st.integers(0, 10_000),
    log_scale=st.floats(-2, 2), shift=st.floats(-2, 2),
)
def test_equals_torch_fp32_random(rows, d, seed, log_scale, shift):
    scale = 10.0 ** log_scale
    x, w, b, go = inputs((rows, d), seed, torch.float32, scale=scale, shift=shift * scale)
    for name in PAIRS:
        check_against_torch(name, x, w, b, go)


@pytest.mark.parametrize("name", PAIRS)
def test_fp64_stays_fp64_and_matches(name):
    ours, ref = PAIRS[name]
    x, w, b, go = inputs((3, 5, 24), dtype=torch.float64)
    got, want = forward_and_grads(ours, x, w, b, go), forward_and_grads(ref, x, w, b, go)
    assert got[0].dtype == torch.float64
    for a, c in zip(got, want):
        torch.testing.assert_close(a, c, rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------------------------
# bf16: close to the fp64 truth, at least as close as torch's own kernel
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", PAIRS)
@pytest.mark.parametrize("shape", [(4, 7, 64), (512, 128)], ids=str)
def test_bf16_forward_and_grads(name, shape):
    ours, ref = PAIRS[name]
    x, w, b, go = (t.to(torch.bfloat16) for t in inputs(shape))  # the same bf16 inputs for everyone
    truth = forward_and_grads(ref, *(t.double() for t in (x, w, b, go)))
    got = forward_and_grads(ours, x, w, b, go)
    theirs = forward_and_grads(ref, x, w, b, go)
    assert got[0].dtype == torch.bfloat16
    for label, g, t, r in zip(("y", "dx", "dweight", "dbias"), got, theirs, truth):
        assert g.dtype == torch.bfloat16
        biggest = r.abs().max().item()
        if biggest == 0:  # rms_norm has no bias: both zero
            assert g.abs().max() == 0
            continue
        ours_err = (g.double() - r).abs().max().item()
        torch_err = (t.double() - r).abs().max().item()
        assert ours_err <= BF16_REL_TO_MAX * biggest, f"{name} {label}: error {ours_err:.3g} vs max {biggest:.3g}"
        assert ours_err <= torch_err + 2 ** -7 * biggest, f"{name} {label}: ours {ours_err:.3g} > torch {torch_err:.3g}"


def test_bf16_input_with_fp32_weight_returns_bf16():
    x = torch.randn(3, 8).bfloat16()
    w = torch.randn(8)
    assert layer_norm(x, w, w).dtype == torch.bfloat16
    assert rms_norm(x, w).dtype == torch.bfloat16
    torch.testing.assert_close(rms_norm(x, w), F.rms_norm(x.float(), (8,), w, 1e-6).bfloat16(), rtol=0, atol=0)


# --------------------------------------------------------------------------------------------
# Defining properties (what the lesson shows)
# --------------------------------------------------------------------------------------------


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), d=st.integers(2, 40), a=st.floats(0.01, 100), c=st.floats(-10, 10))
def test_layer_norm_is_shift_and_scale_invariant_rms_norm_only_scale(seed, d, a, c):
    x = inputs((4, d), seed)[0]  # fp64
    y = layer_norm(x, eps=1e-30)  # a tiny eps: eps is the one thing that is not scale-invariant
    torch.testing.assert_close(y.mean(-1), torch.zeros(4, dtype=x.dtype), rtol=0, atol=1e-9)
    torch.testing.assert_close(y.var(-1, correction=0), torch.ones(4, dtype=x.dtype), rtol=0, atol=1e-9)
    torch.testing.assert_close(layer_norm(a * x + c, eps=1e-30), y, rtol=1e-6, atol=1e-6 * (1 + abs(c) / a))

    r = rms_norm(x, eps=1e-30)
    torch.testing.assert_close(r.pow(2).mean(-1).sqrt(), torch.ones(4, dtype=x.dtype), rtol=1e-9, atol=0)
    torch.testing.assert_close(rms_norm(a * x, eps=1e-30), r, rtol=1e-9, atol=1e-9)


def test_rms_norm_is_not_shift_invariant_and_equals_layer_norm_on_centred_input():
    x = inputs((6, 32))[0]
    assert not torch.allclose(rms_norm(x + 3.0), rms_norm(x), atol=1e-3)
    xc = x - x.mean(-1, keepdim=True)
    torch.testing.assert_close(rms_norm(xc, eps=1e-5), layer_norm(xc, eps=1e-5), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("fn", [layer_norm, rms_norm])
def test_each_token_is_normalized_alone(fn):
    # Unlike BatchNorm: a token's output does not depend on the batch size or on other tokens.
    x = inputs((5, 9, 16))[0]
    full = fn(x)
    torch.testing.assert_close(fn(x[2:3, 4:5]), full[2:3, 4:5], rtol=0, atol=0)
    padded = torch.cat([x, torch.zeros(5, 3, 16, dtype=x.dtype)], dim=1)
    torch.testing.assert_close(fn(padded)[:, :9], full, rtol=0, atol=0)


def test_eps_is_used():
    x = torch.full((1, 4), 1e-3)
    assert rms_norm(x, eps=1e-30)[0, 0].item() == pytest.approx(1.0, rel=1e-5)
    assert rms_norm(x, eps=1.0)[0, 0].item() == pytest.approx(1e-3 / math.sqrt(1 + 1e-6), rel=1e-5)


# --------------------------------------------------------------------------------------------
# Modules
# --------------------------------------------------------------------------------------------


def test_modules_match_torch_modules_and_state_dict_keys():
    torch.manual_seed(0)
    ln, ref_ln = LayerNorm(16), torch.nn.LayerNorm(16)
    rms, ref_rms = RMSNorm(16, eps=1e-6), torch.nn.RMSNorm(16, eps=1e-6)
    for ours, ref in ((ln, ref_ln), (rms, ref_rms)):
        assert ours.state_dict().keys() == ref.state_dict().keys()
        with torch.no_grad():
            for p in ours.parameters():
                p.copy_(torch.randn_like(p))
        ref.load_state_dict(ours.state_dict())
        x = torch.randn(2, 5, 16)
        torch.testing.assert_close(ours(x), ref(x), **FP32)
    assert LayerNorm(8, bias=False).bias is None and sum(p.numel() for p in LayerNorm(8, bias=False).parameters()) == 8
    assert sum(p.numel() for p in RMSNorm(8).parameters()) == 8
    assert LayerNorm(8).eps == 1e-5 and RMSNorm(8).eps == 1e-6


def test_norms_registry_builds_the_norm():
    def build(kind, **kw):
        return NORMS[kind].build(ModelConfig(d_model=8, n_heads=2, norm=kind, **kw))
    assert isinstance(build("layernorm"), LayerNorm) and build("layernorm").bias is not None
    assert build("layernorm", bias=False).bias is None
    assert isinstance(build("rmsnorm", bias=True), RMSNorm)
    assert build("rmsnorm", norm_eps=1e-3).eps == 1e-3 and build("rmsnorm").eps == 1e-6 and build("layernorm").eps == 1e-5
    assert set(NORMS) == set(NORM_CLASSES)


# --------------------------------------------------------------------------------------------
# DeepNorm
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 6, 12, 100, 1000])
def test_deepnorm_constants_decoder_only(n):
    alpha, beta = deepnorm_constants(n)
    assert alpha == pytest.approx((2 * n) ** 0.25, rel=1e-12)
    assert beta == pytest.approx((8 * n) ** -0.25, rel=1e-12)
    assert alpha ** 4 == pytest.approx(2 * n) and beta ** -4 == pytest.approx(8 * n)
    assert deepnorm_constants(n, "encoder-only") == deepnorm_constants(n)


def test_deepnorm_constants_known_values_and_growth():
    alpha, beta = deepnorm_constants(12)
    assert (round(alpha, 3), round(beta, 3)) == (2.213, 0.319)
    assert deepnorm_constants(1).alpha == pytest.approx(2 ** 0.25)
    assert deepnorm_constants(100).alpha > deepnorm_constants(10).alpha
    assert deepnorm_constants(100).beta < deepnorm_constants(10).beta


@pytest.mark.parametrize("kind", list(NORM_CLASSES))
def test_deepnorm_module(kind):
    torch.manual_seed(0)
    x, fx = torch.randn(2, 3, 8), torch.randn(2, 3, 8)
    dn = DeepNorm(NORM_CLASSES[kind](8), alpha=2.5)
    torch.testing.assert_close(dn(x, fx), dn.norm(2.5 * x + fx), rtol=0, atol=0)
    post = DeepNorm(NORM_CLASSES[kind](8), alpha=1.0)
    torch.testing.assert_close(post(x, fx), NORM_CLASSES[kind](8)(x + fx), **FP32)  # alpha = 1 is post-LN
    assert not torch.allclose(dn(x, fx), post(x, fx))


# --------------------------------------------------------------------------------------------
# Bad input: ValueError naming the parameter and what is allowed
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fn", [layer_norm, rms_norm])
def test_function_validation(fn):
    x = torch.randn(2, 8)
    with pytest.raises(ValueError, match=r"weight must be None or a tensor of shape \(d,\) = \(8,\).*got \(7,\)"):
        fn(x, torch.ones(7))
    with pytest.raises(ValueError, match=r"weight must be .* got \(1, 8\)"):
        fn(x, torch.ones(1, 8))
    for eps in (0, 0.0, -1e-5, float("nan"), float("inf"), True, "1e-5"):
        with pytest.raises(ValueError, match=r"eps must be a finite number > 0"):
            fn(x, eps=eps)
    with pytest.raises(ValueError, match=r"x must be a floating-point tensor of shape \(\.\.\., d\)"):
        fn(torch.ones(2, 8, dtype=torch.long))
    with pytest.raises(ValueError, match=r"x must be a floating-point tensor"):
        fn(torch.tensor(1.0))
    with pytest.raises(ValueError, match=r"x must be a floating-point tensor"):
        fn([1.0, 2.0])


def test_layer_norm_bias_shape_validation():
    with pytest.raises(ValueError, match=r"layer_norm: bias must be None or a tensor of shape \(d,\) = \(8,\)"):
        layer_norm(torch.randn(2, 8), torch.ones(8), torch.zeros(9))


def test_module_and_builder_validation():
    with pytest.raises(ValueError, match=r"LayerNorm: d_model must be an int >= 1, got 0"):
        LayerNorm(0)
    with pytest.raises(ValueError, match=r"RMSNorm: eps must be a finite number > 0, got -1"):
        RMSNorm(8, eps=-1)
    with pytest.raises(ValueError, match=r"LayerNorm: x must be a floating-point tensor of shape \(\.\.\., d_model=8\), got torch.float32 \(2, 4\)"):
        LayerNorm(8)(torch.randn(2, 4))
    with pytest.raises(ValueError, match=r"RMSNorm: x must be a floating-point tensor .* got torch.int64"):
        RMSNorm(4)(torch.ones(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"ModelConfig\.norm must be one of \('layernorm', 'rmsnorm'\), got 'batchnorm'"):
        ModelConfig(norm="batchnorm")
    with pytest.raises(ValueError, match=r"num_layers must be an int >= 1, got 0"):
        deepnorm_constants(0)
    with pytest.raises(ValueError, match=r"architecture must be one of \('decoder-only', 'encoder-only'\)"):
        deepnorm_constants(6, "encoder-decoder")
    with pytest.raises(ValueError, match=r"DeepNorm: alpha must be a finite number > 0"):
        DeepNorm(LayerNorm(8), alpha=0.0)
    with pytest.raises(ValueError, match=r"DeepNorm: norm must be a norm module"):
        DeepNorm("layernorm", alpha=2.0)
    with pytest.raises(ValueError, match=r"DeepNorm: fx .* must have the shape of x \(2, 8\), got \(2, 4\)"):
        DeepNorm(LayerNorm(8), alpha=2.0)(torch.randn(2, 8), torch.randn(2, 4))


@pytest.mark.parametrize("kind", ["layernorm", "rmsnorm"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_module_fast_path_equals_from_scratch_function(kind, dtype):
    """The modules run torch's kernels (fast path); the from-scratch functions give the same numbers."""
    g = torch.Generator().manual_seed(3)
    x = (torch.randn(2, 5, 16, generator=g) * 3 + 1).to(dtype)
    m = NORM_CLASSES[kind](16)
    with torch.no_grad():
        m.weight.copy_(torch.randn(16, generator=g))
        if getattr(m, "bias", None) is not None:
            m.bias.copy_(torch.randn(16, generator=g))
    scratch = layer_norm(x, m.weight, m.bias, m.eps) if kind == "layernorm" else rms_norm(x, m.weight, m.eps)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1.6e-2, atol=1e-2)
    torch.testing.assert_close(m(x), scratch, **tol)
    m_same = m.to(dtype)  # weights in x's dtype: torch's kernel runs (the fast path)
    scratch_same = layer_norm(x, m_same.weight, m_same.bias, m_same.eps) if kind == "layernorm" else rms_norm(x, m_same.weight, m_same.eps)
    torch.testing.assert_close(m_same(x), scratch_same, **tol)
