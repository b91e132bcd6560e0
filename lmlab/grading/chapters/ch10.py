"""Chapter 10 graders (``exercises/10_scaling.ipynb``): FLOPs per token, a power-law fit, compute-optimal
sizing, and a LLaMA-style parameter count.

Every check compares with an independent measurement or construction: ``FlopCounterMode`` on a real
training step of a tiny GPT, synthetic data generated from known constants, a numerical search for the
minimum of ``L(N, C / 6N)``, the parameters of lmlab's own model built on the ``meta`` device, and the
published LLaMA-7B count. lmlab's own implementation is only the ``reference`` the tests feed through
the same checks.
"""

from __future__ import annotations

import functools
import math

import torch

from lmlab.grading.assertions import expect_int, expect_true
from lmlab.grading.registry import CheckFailed, Check, Exercise, register
from lmlab.grading.seeds import check_generator, global_seed, using_salt
from lmlab.model import GPT, ModelConfig
from lmlab.model.llama import llama_config
from lmlab.scaling.counting import ChinchillaConstants, compute_optimal, count_params
from lmlab.scaling.fit import fit_power_law

# The notebook's order (10_scaling.py): the score table and the exercise notebook follow it.
EXERCISES = (
    "10.flops_per_token",
    "10.fit_power_law",
    "10.compute_optimal",
    "10.llama_params",
)


def _number(got, what: str) -> float:
    if isinstance(got, torch.Tensor) and got.numel() == 1:
        got = got.item()
    expect_true(isinstance(got, (int, float)) and not isinstance(got, bool) and math.isfinite(got),
                f"{what} should return a finite number, got {type(got).__name__} {got!r}")
    return float(got)


def _rel(got: float, expected: float, tol: float, what: str) -> None:
    if not abs(got - expected) <= tol * abs(expected):
        raise CheckFailed(f"{what}: expected {expected:.6g}, got {got:.6g} ({(got - expected) / expected:+.2%}; allowed ±{tol:.1%})")


# ---------------------------------------------------------------------------------------------
# 10.flops_per_token
# ---------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _measured_cached(items: tuple) -> tuple[float, int, int, int, int]:
    return _measured(dict(items))


def _measured(cfg_kwargs: dict) -> tuple[float, int, int, int, int]:
    """FLOPs per token of one counted training step of that model, and its (matmul N, L, T, d)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    with global_seed(0):
        model = GPT(ModelConfig(**cfg_kwargs))
    n = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))  # every matmul weight
    B, T = 2, model.config.context_length
    x = torch.randint(model.config.vocab_size, (B, T + 1), generator=check_generator(1))
    counter = FlopCounterMode(display=False)
    with sdpa_kernel(SDPBackend.MATH), counter:
        loss = torch.nn.functional.cross_entropy(model(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten())
        loss.backward()
    return counter.get_total_flops() / (B * T), n, model.config.n_layers, T, model.config.d_model


def _flops_measured(f):
    for kw in (dict(vocab_size=50, context_length=64, d_model=32, n_layers=2, n_heads=2),
               dict(vocab_size=80, context_length=16, d_model=64, n_layers=3, n_heads=4, n_kv_heads=2, bias=False,
                    norm="rmsnorm", activation="swiglu", position="rope", tie_embeddings=False),
               dict(vocab_size=30, context_length=128, d_model=16, n_layers=1, n_heads=1)):
        per_token, n, L, T, d = _measured_cached(tuple(sorted(kw.items())))
        what = f"flops_per_token({n}, {L}, {T}, {d})"
        _rel(_number(f(n, L, T, d), what), per_token, 0.01, what + " vs FlopCounterMode on a real training step "
             "(forward + backward) of that model")


def _flops_terms(f):
    N, L, T, d = 6_738_415_616 - 32000 * 4096, 32, 2048, 4096  # LLaMA-7B without the input lookup
    what = f"flops_per_token({N}, {L}, {T}, {d})"
    _rel(_number(f(N, L, T, d), what), 6 * N + 12 * L * T * d, 1e-9, what + " (LLaMA-7B at 2,048 tokens)")
    base = _number(f(1000, 2, 100, 32), "flops_per_token(1000, 2, 100, 32)")
    longer = _number(f(1000, 2, 200, 32), "flops_per_token(1000, 2, 200, 32)")
    expect_true(abs((longer - base) - 12 * 2 * 100 * 32) < 1e-6 * longer,
                f"doubling the context from 100 to 200 should add 12·L·ΔT·d = {12 * 2 * 100 * 32:,} FLOPs per token, "
                f"added {longer - base:,.0f}: each token attends to T keys (QK^T and AV), 3x for forward + backward")
    more = _number(f(2000, 2, 100, 32), "flops_per_token(2000, 2, 100, 32)")
    expect_true(abs((more - base) - 6 * 1000) < 1e-6 * more,
                f"1,000 more parameters should add 6,000 FLOPs per token (2 forward + 4 backward each), added {more - base:,.0f}")


register(Exercise(
    id="10.flops_per_token",
    points=1,
    signature="flops_per_token(n_params, n_layers, context_length, d_model) -> float",
    hint="Each weight costs a multiply-add forward and two backward; attention adds QK^T and AV over the context per layer.",
    minutes=5,
    hints=(
        "Kaplan et al.: a forward pass costs about 2 FLOPs per parameter per token (a multiply-add) and the backward "
        "about twice that, so training costs about 6N per token. Attention over the context adds a term the parameter "
        "count does not see.",
        "Two terms. The weights: FLOPs per weight per token, forward plus backward. Attention: per layer, the scores "
        "(QK^T) and the weighted sum of values each multiply-add over context_length x d_model per token; count "
        "forward and backward the same way as for the weights.",
        "weights = ...  # per-parameter FLOPs, forward + backward\nattention = ...  # per layer, over the context\n"
        "return float(weights + attention)",
    ),
    checks=(
        Check("matches FlopCounterMode on real training steps of three tiny GPTs (within 1 %)", _flops_measured),
        Check("LLaMA-7B; the attention term grows with the context, the 6N term with the parameters", _flops_terms),
    ),
    reference="lmlab.scaling.counting:kaplan_flops_per_token",
    timeout=20.0,  # the check itself counts three real training steps
))

# ---------------------------------------------------------------------------------------------
# 10.fit_power_law
# ---------------------------------------------------------------------------------------------


def _synthetic(a, b, c, lo, hi, n, noise, seed):
    C = torch.logspace(lo, hi, n, dtype=torch.float64)
    L = a * C ** b + c
    if noise:
        with using_salt(0):  # fixed noise: the 1 % extrapolation tolerance was set for this draw; salted ones can exceed it
            L = L * torch.exp(noise * torch.randn(n, generator=check_generator(seed), dtype=torch.float64))
    return C.tolist(), L.tolist()


def _abc(f, C, L, what):
    got = f(list(C), list(L))
    expect_true(isinstance(got, (tuple, list)) and len(got) == 3, f"{what} should return a tuple (a, b, c), got {got!r}")
    return tuple(_number(v, f"{what}: each of a, b, c") for v in got)


def _fit_exact(f):
    for (a, b, c, lo, hi) in ((40.0, -0.12, 1.7, 15, 19), (3.0, -0.35, 0.5, 2, 6), (900.0, -0.25, 2.2, 9, 12)):
        C, L = _synthetic(a, b, c, lo, hi, 12, 0.0, 0)
        what = f"fit_power_law on 12 exact points of {a}·C^{b} + {c} (C from 1e{lo} to 1e{hi})"
        ga, gb, gc = _abc(f, C, L, what)
        expect_true(abs(gb - b) <= 0.01 * abs(b), f"{what}: exponent b expected {b}, got {gb:.4g}"
                    + (" (b is negative: loss falls with compute)" if gb > 0 else ""))
        _rel(gc, c, 0.01, f"{what}: irreducible loss c")
        _rel(ga, a, 0.05, f"{what}: coefficient a")


def _fit_noisy(f):
    a, b, c = 40.0, -0.12, 1.7
    C, L = _synthetic(a, b, c, 15, 20, 16, 0.003, 7)
    what = f"fit_power_law on 16 points of {a}·C^{b} + {c} with 0.3 % noise"
    ga, gb, gc = _abc(f, C, L, what)
    expect_true(abs(gb - b) <= 0.03, f"{what}: exponent b expected {b} ± 0.03, got {gb:.4g}")
    _rel(gc, c, 0.04, f"{what}: irreducible loss c")
    for x in (1e21, 1e22):
        _rel(ga * x ** gb + gc, a * x ** b + c, 0.01, f"{what}: the fitted law's prediction at C = {x:.0e} (an extrapolation)")


register(Exercise(
    id="10.fit_power_law",
    points=3,
    signature="fit_power_law(compute: list[float], loss: list[float]) -> (a, b, c) with L(C) = a * C**b + c, b < 0",
    hint="Work in log C (centred) with positive parameters as logs; try several starting points for b and c and keep the best fit.",
    minutes=25,
    hints=(
        "Scaling-law prediction (as in GPT-4's report) fits L(C) = a * C ** b + c to small runs and extrapolates. The "
        "fit is non-linear and badly conditioned (C spans orders of magnitude), so parametrize it well and try several "
        "starts.",
        "Work with x = log C centred at its mean, and fit log L. Keep a and c positive by optimizing their logs: "
        "predicted log L = logaddexp(log a' + b (x - mean), log c). Minimize the mean squared error with "
        "torch.optim.LBFGS (line_search_fn=\"strong_wolfe\") from a grid of starts (a few b between -0.05 and -1, c a "
        "few fractions of min(loss)); keep the best finite fit. Undo the centring at the end: a = a' * exp(-b * mean).",
        "x = ...  # log C, float64\ny = ...  # log L\nmu = x.mean()\nbest = None\nfor b0 in (...):\n"
        "    for c0 in (...):\n        p = ...  # [log a', b, log c], float64, requires_grad\n"
        "        opt = ...  # LBFGS over [p]\n        def closure():\n"
        "            ...  # predicted log L, squared error, backward, return it\n        opt.step(closure)\n"
        "        ...  # keep p if its error is the best so far\nreturn ..., ..., ...  # a (centring undone), b, c",
    ),
    checks=(
        Check("recovers a, b, c from exact points of three laws at very different scales of C", _fit_exact),
        Check("recovers them from noisy points, and extrapolates within 1 %", _fit_noisy),
    ),
    reference="lmlab.grading.chapters.ch10:reference_fit_power_law",
    timeout=30.0,
))


def reference_fit_power_law(compute, loss):
    fit = fit_power_law(compute, loss)
    return fit.a, fit.b, fit.c


# ---------------------------------------------------------------------------------------------
# 10.compute_optimal
# ---------------------------------------------------------------------------------------------


def _numeric_opt(C, E, A, B, al, be):
    """argmin over N of L(N, C / 6N) by golden-section search in log N (no closed form used)."""
    loss = lambda x: A / math.exp(al * x) + B / (C / (6 * math.exp(x))) ** be  # noqa: E731
    lo, hi = 0.0, math.log(C / 6)
    g = (math.sqrt(5) - 1) / 2
    for _ in range(200):
        m1, m2 = hi - g * (hi - lo), lo + g * (hi - lo)
        lo, hi = (lo, m2) if loss(m1) < loss(m2) else (m1, hi)
    N = math.exp((lo + hi) / 2)
    return N, C / (6 * N)


def _nd(f, C, k, what):
    got = f(C, *k)
    expect_true(isinstance(got, (tuple, list)) and len(got) == 2, f"{what} should return a tuple (N_opt, D_opt), got {got!r}")
    return _number(got[0], f"{what}: N_opt"), _number(got[1], f"{what}: D_opt")


PUBLISHED = (1.69, 406.4, 410.7, 0.34, 0.28)
EPOCH = (1.8172, 482.01, 2085.43, 0.3478, 0.3658)


def _opt_published(f):
    C = 6 * 70e9 * 1.4e12
    for name, k, tpp in (("Chinchilla's published constants", PUBLISHED, 92.83), ("Epoch AI's constants", EPOCH, 18.38)):
        what = f"compute_optimal({C:.3g}, *{name})"
        N, D = _nd(f, C, k, what)
        _rel(6 * N * D, C, 1e-6, f"{what}: 6·N·D should spend exactly the budget C")
        _rel(D / N, tpp, 0.01, f"{what}: tokens per parameter D/N")


def _opt_numeric(f):
    for C, k in ((1e21, PUBLISHED), (1e18, (2.0, 50.0, 900.0, 0.5, 0.3)), (3e24, (1.5, 1000.0, 100.0, 0.25, 0.45))):
        what = f"compute_optimal({C:.0e}, E={k[0]}, A={k[1]}, B={k[2]}, alpha={k[3]}, beta={k[4]})"
        N, D = _nd(f, C, k, what)
        n_ref, d_ref = _numeric_opt(C, *k)
        _rel(N, n_ref, 1e-3, f"{what}: N_opt vs a numerical search for the minimum of L(N, C/6N)")
        _rel(D, d_ref, 1e-3, f"{what}: D_opt vs the same search")


register(Exercise(
    id="10.compute_optimal",
    points=2,
    signature="compute_optimal(compute, E, A, B, alpha, beta) -> (N_opt, D_opt) minimising E + A/N^alpha + B/D^beta with 6·N·D = compute",
    hint="Substitute D = C / (6N), differentiate with respect to N, set it to zero and solve for N; D follows from the budget.",
    minutes=15,
    hints=(
        "With the compute fixed (C = 6ND), a bigger model sees fewer tokens. The loss E + A / N ** alpha + B / D ** "
        "beta has one best trade-off: the compute-optimal N and D of Chinchilla.",
        "At the optimum the two terms' marginal gains balance: alpha A / N ** alpha = beta B / D ** beta. Put D = C / "
        "(6N) in and you have one equation in N; it solves to a power law N = G * (C / 6) ** a, with a and G built "
        "from alpha, beta, A and B. Then D follows from the budget.",
        "G = ...  # a constant from alpha, A, beta, B\nN = G * (compute / 6) ** ...\nreturn N, ...  # D from the budget",
    ),
    checks=(
        Check("Chinchilla's compute: ~93 tokens/parameter with the published constants, ~18 with Epoch AI's", _opt_published),
        Check("equals a numerical minimisation of L(N, C/6N) for three budgets and constant sets", _opt_numeric),
    ),
    reference="lmlab.grading.chapters.ch10:reference_compute_optimal",
))


def reference_compute_optimal(compute, E, A, B, alpha, beta):
    r = compute_optimal(compute, ChinchillaConstants("learner", E, A, B, alpha, beta))
    return r["N"], r["D"]


# ---------------------------------------------------------------------------------------------
# 10.llama_params
# ---------------------------------------------------------------------------------------------


def reference_llama_params(vocab_size, d_model, n_layers, d_ff, n_heads, n_kv_heads, tie_embeddings=False):
    """lmlab's count: :func:`lmlab.scaling.counting.count_params` of the LLaMA preset with these numbers
    (the model built on the meta device; lmlab keeps no closed form)."""
    return count_params(llama_config(vocab_size=vocab_size, d_model=d_model, n_layers=n_layers, d_ff=d_ff,
                                     n_heads=n_heads, n_kv_heads=n_kv_heads, tie_embeddings=tie_embeddings))


def _model_count(V, d, L, d_ff, nh, nkv, tie):
    """The parameters of lmlab's own LLaMA of those numbers, built on the meta device."""
    cfg = llama_config(vocab_size=V, context_length=64, d_model=d, n_layers=L, n_heads=nh, n_kv_heads=nkv, d_ff=d_ff,
                       tie_embeddings=tie)
    with torch.device("meta"):
        return sum(p.numel() for p in GPT(cfg).parameters())  # parameters() counts a shared tensor once


def _llama_7b(f):
    what = "llama_params(32000, 4096, 32, 11008, 32, 32, False) (LLaMA-7B)"
    _expect_count(f(32000, 4096, 32, 11008, 32, 32, False), 6_738_415_616, what)


def _expect_count(got, expected: int, what: str) -> None:
    got = expect_int(got, what)
    if got != expected:
        raise CheckFailed(f"{what}: expected {expected:,}, got {got:,} (off by {got - expected:+,})")


def _llama_models(f):
    for args in ((100, 64, 2, 176, 4, 4, False), (100, 64, 2, 176, 4, 1, False), (257, 96, 3, 256, 8, 2, False),
                 (100, 64, 2, 176, 4, 2, True), (50, 32, 1, 88, 2, 2, True)):
        what = f"llama_params{args}" + (" (tied embeddings: one shared matrix)" if args[-1] else "")
        _expect_count(f(*args), _model_count(*args), what + " vs the parameters of that model built in lmlab")


register(Exercise(
    id="10.llama_params",
    points=2,
    signature="llama_params(vocab_size, d_model, n_layers, d_ff, n_heads, n_kv_heads, tie_embeddings) -> int",
    hint="Per layer: q and o are d×d, k and v shrink with fewer K/V heads, SwiGLU has three d×d_ff matrices, two RMSNorm weight vectors; then the embeddings and the final norm.",
    minutes=10,
    hints=(
        "Counting a LLaMA-style model's parameters: attention projections, a SwiGLU FFN and two RMSNorm gains per "
        "layer, plus the embeddings, the final norm and (unless tied) the output matrix. There are no biases.",
        "head_dim = d_model // n_heads; the K/V width is n_kv_heads * head_dim. Per layer: q and o are d x d, k and v "
        "are d x (K/V width), SwiGLU has three d x d_ff matrices, and two norm vectors of d. Total: layers x per "
        "layer, plus the final norm (d), plus the embeddings (vocab x d, twice if not tied).",
        "kv = ...  # the K/V width\nattention = ...\nffn = ...\nper_layer = ...\nembeddings = ...\nreturn ...",
    ),
    checks=(
        Check("LLaMA-7B has 6,738,415,616 parameters", _llama_7b),
        Check("equals lmlab's own LLaMA-style models (GQA, MQA, tied and untied embeddings)", _llama_models),
    ),
    reference="lmlab.grading.chapters.ch10:reference_llama_params",
))
