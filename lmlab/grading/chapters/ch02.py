"""Chapter 02 graders (``exercises/02_activations.ipynb``): Swish, GeLU (tanh), a SwiGLU FFN, the 2/3 rule.

Every check compares with a torch built-in (``F.silu``, ``F.gelu(approximate="tanh")``,
``torch.relu``), an ``nn.Linear``-based construction, a published number (LLaMA's FFN sizes) or a
property (limits, counts of real modules). lmlab's own implementation is only the ``reference``
that the tests feed through the same checks.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F

from lmlab.model.ffn import FeedForward
from lmlab.grading.assertions import expect_close, expect_equal, expect_tensor, expect_true, seeded_randn
from lmlab.grading.plugin import expect_trains_like_lmlab
from lmlab.grading.registry import Check, Exercise, register
from lmlab.grading.seeds import check_generator, global_seed
from lmlab.model.ffn import gelu, swiglu

# The notebook's order (02_activations.py): the score table and the exercise notebook follow it.
EXERCISES = (
    "02.swish",
    "02.gelu_tanh",
    "02.swiglu_ffn",
    "02.glu_hidden_size",
    "02.ffn_num_parameters",
    "02.SwiGLU",
)


_randn = partial(seeded_randn, scale=3.0)  # inputs in the activations' interesting range, |x| up to ~9


# ---------------------------------------------------------------------------------------------
# 02.swish
# ---------------------------------------------------------------------------------------------


def _swish_silu(f):
    x = _randn(3, 7, seed=20)
    expect_close(f(x, 1.0), F.silu(x), "swish(x, 1.0) vs F.silu(x)")
    expect_close(f(x), F.silu(x), "swish(x) with the default beta (1.0) vs F.silu(x)")


def _swish_beta(f):
    x = _randn(50, seed=21)
    for beta in (0.5, 2.0, 1.702):
        expect_close(f(x, beta), x * torch.sigmoid(torch.tensor(beta) * x), f"swish(x, {beta}) (x · sigmoid(beta · x))")
    expect_close(f(x, 2.0), F.silu(2.0 * x) / 2.0, "swish(x, 2.0) (equals silu(2x) / 2)")


def _swish_limits(f):
    x = torch.linspace(-6, 6, 121)
    expect_close(f(x, 0.0), x / 2, "swish(x, 0.0) (beta = 0 is the line x / 2)")
    gap = float((f(x, 100.0) - torch.relu(x)).abs().max())
    expect_true(gap < 0.003, f"swish(x, 100.0) should be within 0.2785/100 of ReLU (beta -> inf is ReLU); the largest gap is {gap:.4g}")
    y = f(x, 1.0)
    expect_true(float(y.min()) < -0.27 and float(y[-1]) > 5.9,
                f"swish(x, 1.0) on [-6, 6] should dip to about -0.278 and reach about 6 at x = 6; got min {float(y.min()):.4g}, f(6) = {float(y[-1]):.4g}")


def _swish_grad(f):
    x = _randn(4, 5, seed=22).requires_grad_(True)
    y = f(x, 1.0)
    expect_true(isinstance(y, torch.Tensor) and y.requires_grad, "swish must return a tensor autograd can backpropagate through")
    y.sum().backward()
    ref = x.detach().clone().requires_grad_(True)
    F.silu(ref).sum().backward()
    expect_close(x.grad, ref.grad, "the gradient of swish(x, 1.0) (vs F.silu's)", atol=1e-5)


register(Exercise(
    id="02.swish",
    points=1,
    signature="swish(x: torch.Tensor, beta: float = 1.0) -> torch.Tensor of x's shape",
    hint="Swish multiplies x by a sigmoid of beta times x.",
    minutes=5,
    hints=(
        "Swish (Ramachandran et al.) is x times a sigmoid gate: beta = 0 gives x / 2, beta = 1 is SiLU, and beta -> "
        "infinity approaches ReLU.",
        "Elementwise, same shape as x: the gate is sigmoid(beta * x); multiply it by x. torch.sigmoid is stable for "
        "large |x|.",
        "gate = ...  # elementwise, from beta and x\nreturn x * gate",
    ),
    checks=(
        Check("beta = 1 is SiLU (F.silu), also as the default", _swish_silu),
        Check("other values of beta: x · sigmoid(beta · x)", _swish_beta),
        Check("the limits: beta = 0 gives x/2, beta = 100 is within 0.003 of ReLU; the dip below zero", _swish_limits),
        Check("its gradient equals F.silu's", _swish_grad),
    ),
    reference="lmlab.model.ffn:swish",
))

# ---------------------------------------------------------------------------------------------
# 02.gelu_tanh
# ---------------------------------------------------------------------------------------------


def _gelu_ref(x):
    return F.gelu(x, approximate="tanh")


def _gelu_small(f):
    x = torch.linspace(-4, 4, 81)
    expect_close(f(x), _gelu_ref(x), "gelu_tanh(x) on [-4, 4] vs F.gelu(x, approximate='tanh')", atol=1e-6)


def _gelu_not_exact(f):
    x = torch.linspace(-3, 3, 601, dtype=torch.float64)
    got = expect_tensor(f(x), "gelu_tanh(x) for a float64 x", shape=tuple(x.shape), dtype=torch.float64)
    expect_close(got, _gelu_ref(x), "gelu_tanh(x) in float64 vs F.gelu(x, approximate='tanh') "
                 "(the tanh form differs from the exact erf GeLU by up to 5e-4)", atol=1e-9, rtol=1e-9)


def _gelu_large(f):
    x = torch.tensor([-1e4, -50.0, -10.0, 10.0, 50.0, 1e4])
    expect_close(f(x), _gelu_ref(x), "gelu_tanh at large |x| (finite: 0 far left, x far right)", atol=1e-4)
    x = _randn(2, 3, 5, seed=23)
    expect_close(f(x), _gelu_ref(x), "gelu_tanh on a (2, 3, 5) tensor", atol=1e-5)


register(Exercise(
    id="02.gelu_tanh",
    points=1,
    signature="gelu_tanh(x: torch.Tensor) -> torch.Tensor of x's shape and dtype",
    hint="GPT-2's tanh approximation of x·Phi(x): a tanh of a cubic polynomial in x (the constant 0.044715 is in the paper).",
    minutes=5,
    hints=(
        "GELU is x * Phi(x), with Phi the standard normal CDF. GPT-2 uses a cheaper tanh approximation from the GELU "
        "paper (Hendrycks & Gimpel).",
        "The outer form is 0.5 * x * (1 + tanh(u)); u is sqrt(2 / pi) times a cubic polynomial in x whose constant is "
        "in the paper. Elementwise; keep x's dtype. Compare with F.gelu(x, approximate=\"tanh\").",
        "u = math.sqrt(2.0 / math.pi) * (...)  # the cubic in x\nreturn 0.5 * x * (1.0 + ...)",
    ),
    checks=(
        Check("on [-4, 4] against F.gelu(approximate='tanh')", _gelu_small),
        Check("to 1e-9 in float64: the exact formula, not the erf GeLU", _gelu_not_exact),
        Check("large inputs stay finite, and any shape works", _gelu_large),
    ),
    reference="lmlab.grading.chapters.ch02:reference_gelu_tanh",
))


def reference_gelu_tanh(x):
    """lmlab's GeLU with the tanh approximation (``gelu(x, approximate="tanh")``), as ``gelu_tanh(x)``."""
    return gelu(x, approximate="tanh")

# ---------------------------------------------------------------------------------------------
# 02.swiglu_ffn
# ---------------------------------------------------------------------------------------------


class _LinearSwiGLU(nn.Module):
    """The reference, from nn.Linear's: down(silu(gate(x)) * value(x))."""

    def __init__(self, w_gate, w_value, w_down):
        super().__init__()
        hidden, d = w_gate.shape
        with global_seed(0):  # nn.Linear's init draws from the global generator (overwritten below)
            self.gate = nn.Linear(d, hidden, bias=False)
            self.value = nn.Linear(d, hidden, bias=False)
            self.down = nn.Linear(hidden, d, bias=False)
        with torch.no_grad():
            self.gate.weight.copy_(w_gate)
            self.value.weight.copy_(w_value)
            self.down.weight.copy_(w_down)

    def forward(self, x):
        return self.down(F.silu(self.gate(x)) * self.value(x))


def _ffn_weights(d: int, h: int, seed: int):
    g = check_generator(seed)
    return (torch.randn(h, d, generator=g) / d**0.5, torch.randn(h, d, generator=g) / d**0.5, torch.randn(d, h, generator=g) / h**0.5)


def _ffn_small(f):
    d, h = 6, 10
    w_gate, w_value, w_down = _ffn_weights(d, h, seed=24)
    x = _randn(2, 3, d, seed=25, scale=1.0)
    with torch.no_grad():
        want = _LinearSwiGLU(w_gate, w_value, w_down)(x)
    got = expect_tensor(f(x, w_gate, w_value, w_down), f"swiglu_ffn(x (2, 3, {d}), w_gate ({h}, {d}), w_value ({h}, {d}), w_down ({d}, {h}))",
                        shape=(2, 3, d))
    expect_close(got, want, "swiglu_ffn output vs nn.Linear's: down(silu(gate(x)) * value(x))", atol=1e-5)


def _ffn_roles(f):
    d, h = 4, 8
    w_gate, w_value, w_down = _ffn_weights(d, h, seed=26)
    x = _randn(5, d, seed=27, scale=1.0)
    got = f(x, w_gate, torch.zeros_like(w_value), w_down)
    expect_close(got, torch.zeros(5, d), "swiglu_ffn with w_value = 0 (the value is multiplied in: the output must be 0)", atol=1e-6)
    got = f(x, torch.zeros_like(w_gate), w_value, w_down)
    expect_close(got, torch.zeros(5, d), "swiglu_ffn with w_gate = 0 (silu(0) = 0 closes the gate: the output must be 0)", atol=1e-6)
    with torch.no_grad():
        want = _LinearSwiGLU(w_gate, w_value, w_down)(x)
    expect_close(f(x, w_gate, w_value, w_down), want, "swiglu_ffn on a 2-D x (5, 4) (works for any leading shape)", atol=1e-5)


def _ffn_grad(f):
    d, h = 5, 7
    weights = [w.requires_grad_(True) for w in _ffn_weights(d, h, seed=28)]
    x = _randn(3, d, seed=29, scale=1.0)
    out = f(x, *weights)
    expect_true(isinstance(out, torch.Tensor) and out.requires_grad, "swiglu_ffn must keep autograd (no .detach(), no torch.no_grad())")
    out.square().sum().backward()
    ref = _LinearSwiGLU(*(w.detach() for w in weights))
    ref(x).square().sum().backward()
    for name, w, r in zip(("w_gate", "w_value", "w_down"), weights, (ref.gate, ref.value, ref.down)):
        expect_close(w.grad, r.weight.grad, f"the gradient with respect to {name} (vs nn.Linear's)", atol=1e-5)


register(Exercise(
    id="02.swiglu_ffn",
    points=3,
    signature="swiglu_ffn(x: (..., d), w_gate: (h, d), w_value: (h, d), w_down: (d, h)) -> (..., d)",
    hint="weights are in nn.Linear's (out, in) layout, so x @ w.T (or F.linear); silu goes on the gate only, then multiply by the value and project down.",
    minutes=10,
    hints=(
        "SwiGLU (Shazeer 2020) replaces the FFN's activation by a gate: SiLU of one projection, elementwise times a "
        "second (linear) projection, then the down projection. The gate decides, per hidden unit, how much of the "
        "value passes.",
        "Weights are in nn.Linear's (out, in) layout: F.linear(x, w) = x @ w.T. x (..., d) with w_gate and w_value (h, "
        "d) gives (..., h) each. SiLU on the gate only, multiply elementwise by the value, then F.linear with w_down "
        "(d, h): (..., d).",
        "gate = ...  # (..., h), through SiLU\nvalue = ...  # (..., h), linear\nreturn ...  # (..., d)",
    ),
    checks=(
        Check("a (2, 3, d) batch against nn.Linear's down(silu(gate(x)) * value(x))", _ffn_small),
        Check("gate and value play their roles (zero value or zero gate gives 0)", _ffn_roles),
        Check("gradients for all three matrices equal nn.Linear's", _ffn_grad),
    ),
    reference="lmlab.grading.chapters.ch02:reference_swiglu_ffn",
))


def reference_swiglu_ffn(x, w_gate, w_value, w_down):
    """lmlab's fused FeedForward with the three matrices loaded into it (up = [value; gate])."""
    up = torch.cat([w_value, w_gate])  # (2h, d): first half value, second half gate
    return F.linear(swiglu(F.linear(x, up)), w_down)


# ---------------------------------------------------------------------------------------------
# 02.glu_hidden_size
# ---------------------------------------------------------------------------------------------


def _glu_llama(f):
    expect_equal(f(4 * 4096, 256), 11008, "glu_hidden_size(4 * 4096, 256) (LLaMA-7B's FFN size)")
    expect_equal(f(4 * 5120, 256), 13824, "glu_hidden_size(4 * 5120, 256) (LLaMA-13B's FFN size)")


def _glu_small(f):
    # 2/3 of 128 is 85.33 -> 88 (multiple of 8); 2/3 of 96 is exactly 64; 2/3 of 100 is 66.67 -> 72
    expect_equal(f(128, 8), 88, "glu_hidden_size(128, 8) (2/3 · 128 = 85.3, rounded up to a multiple of 8)")
    expect_equal(f(96, 8), 64, "glu_hidden_size(96, 8) (2/3 · 96 = 64 is already a multiple of 8)")
    expect_equal(f(100, 1), 66, "glu_hidden_size(100, 1) (int(2/3 · 100) = 66, a multiple of 1)")
    expect_equal(f(100, 8), 72, "glu_hidden_size(100, 8) (66 rounded up to a multiple of 8)")
    expect_equal(f(4, 8), 8, "glu_hidden_size(4, 8) (never below one multiple)")


def _glu_properties(f):
    for h in range(8, 2049, 40):
        for m in (1, 8, 64):
            got = f(h, m)
            expect_true(isinstance(got, int) and not isinstance(got, bool), f"glu_hidden_size({h}, {m}) should return an int, got {type(got).__name__}")
            expect_true(got % m == 0, f"glu_hidden_size({h}, {m}) = {got} is not a multiple of {m}")
            expect_true(got >= 2 * h / 3 - 1, f"glu_hidden_size({h}, {m}) = {got} is below 2/3 · {h} = {2 * h / 3:.1f} (round up, not down)")
            expect_true(got < 2 * h / 3 + m, f"glu_hidden_size({h}, {m}) = {got} is more than one multiple above 2/3 · {h} = {2 * h / 3:.1f}")


register(Exercise(
    id="02.glu_hidden_size",
    points=1,
    signature="glu_hidden_size(plain_hidden: int, multiple_of: int = 8) -> int",
    hint="three matrices instead of two: shrink the hidden size by the ratio that keeps the parameter count, then round up to the multiple.",
    minutes=5,
    hints=(
        "At equal hidden size a GLU FFN has three matrices instead of two, so 50% more parameters. LLaMA shrinks the "
        "hidden size to keep the count equal to the plain FFN's, then rounds up to a hardware-friendly multiple.",
        "Find the ratio that makes 3 * d * h' equal 2 * d * h, apply it and truncate to an int. Then round up to the "
        "next multiple of multiple_of (math.ceil of the quotient, times multiple_of); never return less than "
        "multiple_of.",
        "hidden = ...  # two matrices' worth spread over three, as an int\n"
        "return max(multiple_of, ...)  # rounded up to the multiple",
    ),
    checks=(
        Check("LLaMA-7B and LLaMA-13B's FFN sizes", _glu_llama),
        Check("small cases: rounding up, exact multiples, the minimum", _glu_small),
        Check("for many sizes: an int, a multiple, at least 2/3 of the plain size, at most one multiple above", _glu_properties),
    ),
    reference="lmlab.model.ffn:glu_hidden_size",
))

# ---------------------------------------------------------------------------------------------
# 02.ffn_num_parameters
# ---------------------------------------------------------------------------------------------


def _count_linear(d, h, kind, bias):
    """Parameters of the FFN built from nn.Linear's: gated kinds have gate, value and down.

    Built on the meta device: shapes only, no memory and no initialisation (LLaMA-7B's sizes are cheap).
    """
    mats = [nn.Linear(d, h, bias=bias, device="meta"), nn.Linear(h, d, bias=bias, device="meta")]
    if kind in ("swiglu", "geglu"):
        mats.append(nn.Linear(d, h, bias=bias, device="meta"))
    return sum(p.numel() for m in mats for p in m.parameters())


def _params_plain(f):
    for d, h, bias in ((32, 128, True), (32, 128, False), (7, 13, True)):
        for kind in ("relu", "gelu"):
            expect_equal(f(d, h, kind, bias), _count_linear(d, h, kind, bias), f"ffn_num_parameters({d}, {h}, {kind!r}, bias={bias}) (count of nn.Linear({d}, {h}) + nn.Linear({h}, {d}))")


def _params_gated(f):
    for d, h, bias in ((32, 88, True), (32, 88, False), (7, 13, True), (4096, 11008, False)):
        for kind in ("swiglu", "geglu"):
            expect_equal(f(d, h, kind, bias), _count_linear(d, h, kind, bias), f"ffn_num_parameters({d}, {h}, {kind!r}, bias={bias}) (gate, value and down: three nn.Linear's)")


def _params_ratio(f):
    d, h = 64, 256
    plain, gated = f(d, h, "gelu", False), f(d, h, "swiglu", False)
    expect_true(isinstance(plain, int) and isinstance(gated, int), f"ffn_num_parameters should return ints, got {type(plain).__name__} and {type(gated).__name__}")
    expect_equal(gated * 2, plain * 3, f"3 × ffn_num_parameters({d}, {h}, 'gelu', False) vs 2 × the 'swiglu' count (+50 % at equal hidden size)")


register(Exercise(
    id="02.ffn_num_parameters",
    points=1,
    signature="ffn_num_parameters(d_model: int, hidden: int, kind: str, bias: bool = True) -> int   (kind in relu, gelu, swiglu, geglu)",
    hint="a plain FFN has an up (d x h) and a down (h x d) matrix; a gated one adds a second up matrix; each matrix's bias has its output size.",
    minutes=5,
    hints=(
        "A plain FFN is up-projection, activation, down-projection. A gated one (SwiGLU, GeGLU) has two "
        "up-projections, a gate and a value, multiplied together. Counting parameters is counting matrix entries plus "
        "biases.",
        "Each up matrix has d_model * hidden entries, the down matrix hidden * d_model. Gated kinds have two up "
        "matrices. With bias=True each matrix also has a bias the size of its output: hidden for an up matrix, d_model "
        "for the down one.",
        "n_up = ...  # 1 or 2, from kind\nweights = ...\nbiases = ... if bias else 0\nreturn weights + biases",
    ),
    checks=(
        Check("plain FFNs (relu, gelu), with and without biases, against nn.Linear's", _params_plain),
        Check("gated FFNs (swiglu, geglu) against three nn.Linear's", _params_gated),
        Check("at equal hidden size a gated FFN has exactly +50 % (no biases)", _params_ratio),
    ),
    reference="lmlab.grading.chapters.ch02:reference_ffn_num_parameters",
))


def reference_ffn_num_parameters(d_model: int, hidden: int, kind: str, bias: bool = True) -> int:
    """lmlab's count: :class:`lmlab.model.ffn.FeedForward` built on the meta device (lmlab keeps no closed form)."""
    with torch.device("meta"):
        return sum(p.numel() for p in FeedForward(d_model, hidden, kind, bias=bias).parameters())

# ---------------------------------------------------------------------------------------------
# 02.SwiGLU: your FFN inside the model (lmlab.model.registry.register_ffn), trained
# ---------------------------------------------------------------------------------------------

_FFN_MODEL = dict(context_length=32, d_model=32, n_layers=2, n_heads=4, activation="swiglu", bias=False)


def _swiglu_module(cls):
    m = cls(8, 24)
    expect_true(isinstance(m, nn.Module), f"SwiGLU(8, 24) should be an nn.Module, got {type(m).__name__}")
    layers = {n: mod for n, mod in m.named_modules() if isinstance(mod, nn.Linear)}
    want = {"gate_proj": (24, 8), "up_proj": (24, 8), "down_proj": (8, 24)}
    got = {n: tuple(layers[n].weight.shape) for n in want if n in layers}
    expect_true(got == want, f"SwiGLU(8, 24) needs nn.Linear layers {want} (weight shapes), got {got}")
    n_params = sum(p.numel() for p in m.parameters())
    expect_true(n_params == 3 * 8 * 24, f"SwiGLU(8, 24) should have 3 * 8 * 24 = {3 * 8 * 24} parameters (no biases), got {n_params}")
    x = seeded_randn(2, 5, 8, seed=70)
    g, u, d = (layers[n].weight for n in ("gate_proj", "up_proj", "down_proj"))
    with torch.no_grad():
        expect_close(m(x), F.linear(F.silu(F.linear(x, g)) * F.linear(x, u), d),
                     "SwiGLU(8, 24)(x) vs down_proj(silu(gate_proj(x)) * up_proj(x))", atol=1e-5)


def _swiglu_in_model(cls):
    expect_trains_like_lmlab(cls, "activation", _FFN_MODEL, "your SwiGLU as every FFN of a 2-layer model (hidden 88)")


register(Exercise(
    id="02.SwiGLU",
    points=2,
    kind="class",
    signature="class SwiGLU(nn.Module): SwiGLU(d_model: int, hidden: int) with nn.Linear gate_proj, up_proj (d->h), down_proj (h->d), no bias; forward (B, T, d) -> (B, T, d)",
    hint="three bias-free linear layers with the names in the signature; forward reuses your swiglu_ffn (exercise 3).",
    minutes=5,
    hints=(
        "The module holds the three weight matrices as nn.Linear layers, so they train and load by name (gate_proj, "
        "up_proj, down_proj, as in Hugging Face's LLaMA); the arithmetic is your swiglu_ffn.",
        "gate_proj and up_proj map d_model -> hidden, down_proj maps hidden -> d_model, all bias-free. An nn.Linear's "
        ".weight is (out, in), exactly the layout swiglu_ffn expects. forward: (B, T, d) -> (B, T, d).",
        "# __init__:\nself.gate_proj = nn.Linear(..., bias=False)\nself.up_proj = ...\nself.down_proj = ...\n\n"
        "# forward(self, x):\nreturn swiglu_ffn(x, ...)",
    ),
    checks=(
        Check("three bias-free projections, and down(silu(gate(x)) * up(x))", _swiglu_module),
        Check("inside lmlab's model: lmlab's logits, and the same losses after 8 Adam steps", _swiglu_in_model),
    ),
    reference="lmlab.model.ffn:SwiGLU",
    timeout=30.0,
))
