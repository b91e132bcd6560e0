"""Tests for lmlab.model.ffn: GELU, Swish/SiLU, the GLU family and the feed-forward block.

Tolerances: fp32 against torch, rtol = atol = 1e-6 (forward and gradient), except the gradient
of tanh-GELU: atol 2e-6 (see the test); bf16 against the fp64 result of torch's op on the same
inputs: rtol 1.6e-2 (two bf16 ulps), atol 1e-5; fp64 properties 1e-12 unless a bound is derived
in the test.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from lmlab.model.ffn import (
    FFN_ACTIVATIONS, FeedForward, geglu, gelu, glu, glu_hidden_size, silu, swiglu, swish,
)


def ffn_params(d_model, hidden, kind, bias):
    """Parameters of the FeedForward built on the meta device (lmlab keeps no closed form)."""
    with torch.device("meta"):
        return sum(p.numel() for p in FeedForward(d_model, hidden, kind, bias=bias).parameters())


FP32 = dict(rtol=1e-6, atol=1e-6)


def grid(n=2001, lo=-12.0, hi=12.0, dtype=torch.float32):
    return torch.linspace(lo, hi, n, dtype=dtype)


def value_and_grad(fn, x):
    x = x.detach().clone().requires_grad_()
    y = fn(x)
    (g,) = torch.autograd.grad(y, x, torch.ones_like(y))
    return y.detach(), g


def assert_same_as(ours, ref, x, grad_tol=FP32):
    (y, g), (y_ref, g_ref) = value_and_grad(ours, x), value_and_grad(ref, x)
    torch.testing.assert_close(y, y_ref, **FP32)
    torch.testing.assert_close(g, g_ref, **grad_tol)


# --------------------------------------------------------------------------------------------
# Equal to torch
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_equals_torch(approximate):
    x = torch.cat([grid(), torch.randn(3, 50, generator=torch.Generator().manual_seed(0)).flatten() * 4])
    # tanh form near x = -5.1: 1 + tanh(u) stops being representable in fp32, and the two
    # implementations round to different sides there (both ~1e-6 from the fp64 gradient ~6e-7).
    grad_tol = FP32 if approximate == "none" else dict(rtol=1e-6, atol=2e-6)
    assert_same_as(lambda t: gelu(t, approximate), lambda t: F.gelu(t, approximate=approximate), x, grad_tol)


def test_gelu_modes_differ_but_only_slightly():
    x = grid(dtype=torch.float64)
    gap = (gelu(x, "tanh") - gelu(x)).abs().max().item()
    assert 1e-5 < gap < 1e-3  # the tanh form is an approximation, a good one


@pytest.mark.parametrize("name", ["gelu", "gelu-tanh", "silu", "glu", "swiglu"])
def test_bf16_is_within_two_ulps_of_the_exact_result(name):
    # Against fp64, not torch's bf16 kernels: F.glu's bf16 backward is off by up to 100% on some
    # elements (the gate's gradient underflows), while ours computes in fp32 and rounds once.
    ours, ref = {
        "gelu": (gelu, F.gelu),
        "gelu-tanh": (lambda t: gelu(t, "tanh"), lambda t: F.gelu(t, approximate="tanh")),
        "silu": (silu, F.silu),
        "glu": (glu, F.glu),
        "swiglu": (swiglu, lambda t: t[..., : t.shape[-1] // 2] * F.silu(t[..., t.shape[-1] // 2:])),
    }[name]
    x = grid(4000, -8, 8).bfloat16().view(2, 2000)
    (y, g), (y_ref, g_ref) = value_and_grad(ours, x), value_and_grad(ref, x.double())
    assert y.dtype == g.dtype == torch.bfloat16
    torch.testing.assert_close(y.double(), y_ref, rtol=1.6e-2, atol=1e-5)
    torch.testing.assert_close(g.double(), g_ref, rtol=1.6e-2, atol=1e-5)


def test_silu_equals_torch():
    assert_same_as(silu, F.silu, grid())


@pytest.mark.parametrize("shape,dim", [((4, 10), -1), ((4, 10), 0), ((2, 6, 3), 1), ((8,), 0)])
def test_glu_equals_torch(shape, dim):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    assert_same_as(lambda t: glu(t, dim), lambda t: F.glu(t, dim), x)


def test_swiglu_and_geglu_are_value_times_activated_gate():
    x = torch.randn(3, 5, 16, generator=torch.Generator().manual_seed(2))
    a, b = x[..., :8], x[..., 8:]
    torch.testing.assert_close(swiglu(x), a * F.silu(b), **FP32)
    torch.testing.assert_close(geglu(x), a * F.gelu(b), **FP32)
    torch.testing.assert_close(geglu(x, approximate="tanh"), a * F.gelu(b, approximate="tanh"), **FP32)
    torch.testing.assert_close(swiglu(x.transpose(0, 2), dim=0), swiglu(x).transpose(0, 2), **FP32)
    assert swiglu(x).shape == (3, 5, 8)
    # the order matters: the second half is the gate
    assert not torch.allclose(swiglu(x), b * F.silu(a))


# --------------------------------------------------------------------------------------------
# Swish's limits (the seed's claim: beta = 0 / 1 / infinity)
# --------------------------------------------------------------------------------------------


finite_x = st.lists(st.floats(-50, 50, allow_nan=False), min_size=1, max_size=20)


@settings(max_examples=50, deadline=None)
@given(xs=finite_x)
def test_swish_beta_one_is_silu_and_beta_zero_is_half_x(xs):
    x = torch.tensor(xs, dtype=torch.float64)
    torch.testing.assert_close(swish(x, 1.0), F.silu(x), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(swish(x, 1), silu(x), rtol=0, atol=0)
    torch.testing.assert_close(swish(x, 0.0), x / 2, rtol=0, atol=0)


@settings(max_examples=50, deadline=None)
@given(xs=finite_x, beta=st.floats(1.0, 1e4))
def test_swish_approaches_relu_as_beta_grows(xs, beta):
    # |x sigmoid(beta x) - relu(x)| = |x| sigmoid(-beta |x|) <= max_t t sigmoid(-t) / beta ~ 0.2785 / beta
    x = torch.tensor(xs, dtype=torch.float64)
    gap = (swish(x, beta) - torch.relu(x)).abs().max().item()
    assert gap <= 0.2785 / beta + 1e-12


def test_swish_relu_gap_shrinks_like_one_over_beta():
    x = grid(20001, -3, 3, torch.float64)
    gaps = [(swish(x, b) - torch.relu(x)).abs().max().item() for b in (1, 10, 100, 1000)]
    assert all(g1 > 9 * g2 for g1, g2 in zip(gaps, gaps[1:]))
    assert gaps[0] == pytest.approx(0.2785, abs=1e-3)  # the bound is attained at x = -1.2785 / beta


def test_swish_beta_can_be_a_learned_tensor():
    beta = torch.tensor(1.5, requires_grad=True)
    x = torch.randn(10, generator=torch.Generator().manual_seed(0))
    swish(x, beta).sum().backward()
    expected = (x * x * torch.sigmoid(1.5 * x) * (1 - torch.sigmoid(1.5 * x))).sum()  # d/dbeta
    torch.testing.assert_close(beta.grad, expected, **FP32)


# --------------------------------------------------------------------------------------------
# The 2/3 rule and parameter counts (the seed's claim: GLU FFNs have 50% more parameters)
# --------------------------------------------------------------------------------------------


def test_glu_hidden_size_known_values():
    assert glu_hidden_size(4 * 4096, 256) == 11008  # LLaMA-7B
    assert glu_hidden_size(4 * 5120, 256) == 13824  # LLaMA-13B
    assert glu_hidden_size(512, 8) == 344
    assert glu_hidden_size(3, 8) == 8  # never below one multiple


@settings(max_examples=100, deadline=None)
@given(d=st.integers(1, 2048), mult=st.integers(1, 8), multiple_of=st.sampled_from([1, 8, 64, 256]))
def test_glu_hidden_size_matches_plain_parameters(d, mult, multiple_of):
    plain = mult * d
    h = glu_hidden_size(plain, multiple_of)
    assert h % multiple_of == 0 and h >= 2 * plain / 3 - 1
    plain_params = ffn_params(d, plain, "gelu", bias=False)
    glu_params = ffn_params(d, h, "swiglu", bias=False)
    # rounding up to a multiple costs at most one multiple's worth of the three matrices
    assert abs(glu_params - plain_params) <= 3 * d * (multiple_of + 1)


@pytest.mark.parametrize("kind", list(FFN_ACTIVATIONS))
@pytest.mark.parametrize("bias", [True, False])
def test_ffn_parameter_count(kind, bias):
    d, h = 12, 20
    ffn = FeedForward(d, h, kind, bias=bias)
    n = sum(p.numel() for p in ffn.parameters())
    up = 2 * h if FFN_ACTIVATIONS[kind].gated else h  # a hand count: the first projection's outputs, then down
    assert n == ffn_params(d, h, kind, bias) == d * up + h * d + ((up + d) if bias else 0)


def test_gated_ffn_has_fifty_percent_more_parameters_at_equal_hidden_size():
    assert ffn_params(64, 256, "swiglu", bias=False) == 1.5 * ffn_params(64, 256, "gelu", bias=False)


# --------------------------------------------------------------------------------------------
# FeedForward against references built from nn.Linear
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind,act", [("relu", nn.ReLU()), ("gelu", nn.GELU())])
def test_plain_ffn_equals_linear_act_linear(kind, act):
    torch.manual_seed(0)
    ffn = FeedForward(16, 40, kind)
    ref = nn.Sequential(nn.Linear(16, 40), act, nn.Linear(40, 16))
    ref[0].load_state_dict(ffn.up.state_dict())
    ref[2].load_state_dict(ffn.down.state_dict())
    x = torch.randn(2, 5, 16)
    assert_same_as(ffn, ref, x)


@pytest.mark.parametrize("kind,act", [("swiglu", F.silu), ("geglu", F.gelu)])
def test_gated_ffn_equals_llama_style_three_linears(kind, act):
    torch.manual_seed(0)
    d, h = 16, 24
    ffn = FeedForward(d, h, kind, bias=False)
    w1, w3, w2 = nn.Linear(d, h, bias=False), nn.Linear(d, h, bias=False), nn.Linear(h, d, bias=False)  # gate, up, down
    with torch.no_grad():
        w3.weight.copy_(ffn.up.weight[:h])
        w1.weight.copy_(ffn.up.weight[h:])
        w2.weight.copy_(ffn.down.weight)
    x = torch.randn(2, 5, d)
    assert ffn.up.out_features == 2 * h and ffn.down.in_features == h
    assert_same_as(ffn, lambda t: w2(act(w1(t)) * w3(t)), x)


@pytest.mark.parametrize("kind", [k for k, a in FFN_ACTIVATIONS.items() if a.gated])
@pytest.mark.parametrize("bias", [False, True])
def test_gated_ffn_two_matmul_path_equals_one_fused_matmul_with_its_gradients(kind, bias):
    """forward (fp32) multiplies by the two halves of ``up`` separately; ``activation(up(x))`` is the
    one-matmul form (half precision, tensor parallelism): same outputs and gradients up to rounding."""
    torch.manual_seed(0)
    ffn = FeedForward(16, 24, kind, bias=bias)
    x = torch.randn(3, 7, 16, requires_grad=True)
    g = torch.randn(3, 7, 16)
    results = []
    for f in (ffn, lambda t: ffn.down(ffn.activation(ffn.up(t)))):
        ffn.zero_grad(set_to_none=True)
        x.grad = None
        y = f(x)
        (y * g).sum().backward()
        results.append([y.detach(), x.grad, ffn.up.weight.grad] + ([ffn.up.bias.grad] if bias else []))
    for two, one in zip(*results):
        torch.testing.assert_close(two, one, rtol=1e-5, atol=1e-6)
    assert results[0][2].abs().sum() > 0 and results[0][2][24:].abs().sum() > 0  # both halves get gradient


def test_ffn_dropout_only_in_training():
    ffn = FeedForward(8, 16, "swiglu", dropout=0.5).eval()
    x = torch.randn(4, 8)
    torch.testing.assert_close(ffn(x), ffn(x), rtol=0, atol=0)
    ffn.train()
    assert (ffn(x) == 0).any()


# --------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------


def test_validation():
    x = torch.randn(4, 6)
    with pytest.raises(ValueError, match=r"gelu: approximate must be one of \('none', 'tanh'\), got 'erf'"):
        gelu(x, "erf")
    for beta in (float("nan"), float("inf"), "1", None, True):
        with pytest.raises(ValueError, match=r"swish: beta must be a finite number or a floating-point tensor"):
            swish(x, beta)
    with pytest.raises(ValueError, match=r"glu: x.shape\[dim\] must be even"):
        glu(torch.randn(4, 5))
    with pytest.raises(ValueError, match=r"swiglu: dim must be an int in \[-2, 1\], got 2"):
        swiglu(x, dim=2)
    with pytest.raises(ValueError, match=r"geglu: x must be a floating-point tensor"):
        geglu(torch.ones(4, 6, dtype=torch.long))
    with pytest.raises(ValueError, match=r"silu: x must be a floating-point tensor"):
        silu([1.0])
    with pytest.raises(ValueError, match=r"FeedForward: kind must be one of \('gelu', 'relu', 'swiglu', 'geglu'\), got 'tanh'"):
        FeedForward(8, 16, "tanh")
    with pytest.raises(ValueError, match=r"FeedForward: hidden must be an int >= 1, got 0"):
        FeedForward(8, 0, "gelu")
    with pytest.raises(ValueError, match=r"FeedForward: dropout must be in \[0, 1\)"):
        FeedForward(8, 16, "gelu", dropout=1.0)
    with pytest.raises(ValueError, match=r"glu_hidden_size: multiple_of must be an int >= 1, got 0"):
        glu_hidden_size(512, 0)
    with pytest.raises(ValueError, match=r"glu_hidden_size: plain_hidden must be an int >= 1"):
        glu_hidden_size(512.0)


def test_math_constants_used_by_gelu():
    # the tanh form's constants, written out: sqrt(2/pi) and 0.044715
    x = torch.tensor([1.0], dtype=torch.float64)
    expected = 0.5 * (1 + math.tanh(math.sqrt(2 / math.pi) * (1 + 0.044715)))
    assert gelu(x, "tanh").item() == pytest.approx(expected, rel=1e-15)
    assert gelu(x).item() == pytest.approx(0.5 * (1 + math.erf(1 / math.sqrt(2))), rel=1e-15)
