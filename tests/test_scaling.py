"""lmlab.scaling.counting and lmlab.scaling.fit: counts, FLOPs, closed forms and the fitters."""

import itertools
import math

import pytest
import torch

from lmlab.model import GPT, ModelConfig
from lmlab.model.llama import llama_config
from lmlab.model.registry import ATTENTIONS, FFNS, NORM_PLACEMENTS, NORMS, POSITIONS
from lmlab.scaling import counting as scaling
from lmlab.scaling.fit import (
    HUBER_DELTA, bootstrap_chinchilla, bootstrap_power_law, fit_chinchilla, fit_lse, fit_power_law, huber,
)

CONFIGS = [
    ModelConfig(vocab_size=103, context_length=64, d_model=32, n_layers=2, n_heads=2),
    ModelConfig(d_model=64, n_heads=4, n_kv_heads=2, activation="swiglu", position="rope", bias=False, norm="rmsnorm",
                tie_embeddings=False),
    ModelConfig(d_model=64, position="t5", norm_position="sandwich"),
    ModelConfig(d_model=64, position="learned", n_positions=512, context_length=128),
    ModelConfig(d_model=32, n_layers=3, norm_position="deepnorm", norm="rmsnorm", activation="geglu"),
    ModelConfig(d_model=32, n_layers=2, knn_memory={"layer": 1, "top_k": 4, "size": 64}),
    ModelConfig(d_model=48, n_heads=6, n_kv_heads=1, position="alibi", attention="sliding_window", window=16, n_sink=2),
    ModelConfig(d_model=32, position="none", norm_position="post", bias=False, d_ff=100),
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=range(len(CONFIGS)))
def test_param_counts_equal_the_model(cfg):
    parts = scaling.param_counts(cfg)
    model = GPT(cfg)
    assert parts["total"] == model.num_parameters() == sum(p.numel() for p in model.parameters())
    assert parts["other"] == 0, parts  # every parameter has a role
    assert parts["embedding"] == cfg.vocab_size * cfg.d_model
    assert parts["output"] == (0 if cfg.tie_embeddings else cfg.vocab_size * cfg.d_model)
    assert scaling.count_params(cfg, exclude_embeddings=True) == model.num_parameters(exclude_embeddings=True) - (
        parts["positions"] if model.pos_emb is None else 0)
    assert scaling.matmul_params(cfg) == sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))


def test_llama_7b_and_part_sizes():
    cfg = llama_config("llama_7b")
    parts = scaling.param_counts(cfg)
    assert parts["total"] == scaling.count_params(cfg) == 6_738_415_616
    assert parts["attention"] == 32 * 4 * 4096 ** 2
    assert parts["ffn"] == 32 * 3 * 4096 * 11008
    assert parts["norms"] == (2 * 32 + 1) * 4096
    tied = scaling.count_params(llama_config("llama_7b", tie_embeddings=True))
    assert tied == 6_738_415_616 - 32000 * 4096  # one shared matrix, counted once
    assert scaling.count_params(llama_config("llama_7b", n_kv_heads=8)) == 6_738_415_616 - 32 * 2 * 4096 * (4096 - 1024)


@pytest.mark.parametrize("flavor,total", [("llama_7b", 6_738_415_616), ("llama2_7b", 6_738_415_616),
                                          ("llama2_13b", 13_015_864_320), ("llama2_70b", 68_976_648_192),
                                          ("smollm2_135m", 134_515_008)])
def test_llama_flavors_have_the_published_counts(flavor, total):
    assert scaling.count_params(llama_config(flavor)) == total


def llama_params_by_hand(vocab_size, d_model, n_layers, d_ff, n_heads, n_kv_heads, tie_embeddings):
    """Lesson 10's exercise, the closed form written out as a hand check of the counter."""
    kv = n_kv_heads * (d_model // n_heads)
    per_layer = 2 * d_model * d_model + 2 * d_model * kv + 3 * d_model * d_ff + 2 * d_model
    return n_layers * per_layer + d_model + vocab_size * d_model * (1 if tie_embeddings else 2)


@pytest.mark.parametrize("args", [(32000, 4096, 32, 11008, 32, 32, False), (100, 64, 2, 176, 4, 1, False),
                                  (257, 96, 3, 256, 8, 2, True)])
def test_the_lessons_closed_form_equals_the_counter(args):
    V, d, L, d_ff, nh, nkv, tie = args
    cfg = llama_config(vocab_size=V, d_model=d, n_layers=L, d_ff=d_ff, n_heads=nh, n_kv_heads=nkv, tie_embeddings=tie)
    assert scaling.count_params(cfg) == llama_params_by_hand(*args)


# -- the counter equals the built model for every registered option and combination ----------------

OTHER_OPTIONS = list(itertools.product((4, 2, 1), (True, False), (True, False), (None, {"layer": 1, "top_k": 2, "size": 8})))
COMBINATIONS = list(itertools.product(NORMS.names(), NORM_PLACEMENTS.names(), FFNS.names(), POSITIONS.names(), ATTENTIONS.names()))


def _combination(i: int) -> ModelConfig:
    """Every norm x placement x FFN x position x attention once; (K/V heads MHA/GQA/MQA, tied, bias,
    kNN memory) cycle through all their 24 combinations alongside."""
    norm, placement, ffn, position, attention = COMBINATIONS[i]
    n_kv_heads, tied, bias, knn = OTHER_OPTIONS[i % len(OTHER_OPTIONS)]
    window = dict(window=3, n_sink=i % 2) if ATTENTIONS[attention].info.get("needs_window") else {}
    return ModelConfig(vocab_size=11, context_length=8, d_model=8, n_layers=2, n_heads=4, n_kv_heads=n_kv_heads,
                       norm=norm, norm_position=placement, activation=ffn, position=position, attention=attention,
                       tie_embeddings=tied, bias=bias, knn_memory=knn, **window)


def _by_part(model: GPT) -> dict[str, int]:
    """The real model's parameters by part, from its module tree (shared tensors once)."""
    blocks = model.blocks
    count = lambda modules: sum(p.numel() for m in modules for p in m.parameters())  # noqa: E731
    norms = [m for b in blocks for name, m in b.named_children() if name not in ("attn", "ffn")] + [model.final_norm]
    return {"attention": count(b.attn for b in blocks), "ffn": count(b.ffn for b in blocks), "norms": count(norms),
            "embedding": model.tok_emb.weight.numel(),
            "positions": count(m for m in (model.pos_emb, model.position) if m is not None),
            "output": 0 if model.lm_head.weight is model.tok_emb.weight else model.lm_head.weight.numel()}


def test_every_combination_is_covered():
    assert len(COMBINATIONS) == 2 * 4 * 4 * 6 * 2 and len(OTHER_OPTIONS) == 24


@pytest.mark.parametrize("i", range(0, len(COMBINATIONS), 48), ids=lambda i: f"from{i}")
def test_the_counter_equals_the_built_model_for_every_combination(i):
    for j in range(i, min(i + 48, len(COMBINATIONS))):
        cfg = _combination(j)
        model = GPT(cfg)
        parts = scaling.param_counts(cfg)
        assert parts["total"] == sum(p.numel() for p in model.parameters()) == model.num_parameters(), cfg
        assert parts["other"] == 0 and {k: parts[k] for k in _by_part(model)} == _by_part(model), cfg


@pytest.mark.parametrize("d", [16, 64])
def test_flops_match_the_counter(d):
    cfg = ModelConfig(vocab_size=60, context_length=96, d_model=d, n_layers=2, n_heads=2)
    measured = scaling.measure_training_flops(GPT(cfg), batch_size=2)
    assert measured["per_token"] == pytest.approx(scaling.flops_per_token(cfg), rel=0.01)
    assert measured["by_op"].get("bmm", 0) > 0  # attention was counted
    six_n = scaling.flops_per_token(cfg, attention=False)
    assert measured["per_token"] / six_n == pytest.approx(1 + 12 * 2 * 96 * d / six_n, rel=0.01)


def test_six_nd_undercounts_narrow_models():
    under = [1 - scaling.flops_per_token(c, attention=False) / scaling.flops_per_token(c)
             for c in (ModelConfig(vocab_size=60, context_length=256, d_model=d, n_heads=2) for d in (16, 64, 256))]
    assert under[0] > 0.3 and under[-1] < 0.15 and under == sorted(under, reverse=True)


def test_kaplan_formula_and_validation():
    assert scaling.kaplan_flops_per_token(1e6, 2, 100, 32) == 6e6 + 12 * 2 * 100 * 32
    with pytest.raises(ValueError, match="n_params"):
        scaling.kaplan_flops_per_token(0, 2, 100, 32)
    with pytest.raises(ValueError, match="context_length"):
        scaling.kaplan_flops_per_token(1e6, 2, 0, 32)
    with pytest.raises(ValueError, match="cfg"):
        scaling.param_counts({"d_model": 32})
    with pytest.raises(ValueError, match="n_tokens"):
        scaling.training_flops(CONFIGS[0], -1)
    with pytest.raises(ValueError, match="cfg"):
        scaling.flops_per_token({"d_model": 32})


def test_training_flops_of_gpt3_is_six_n_d():
    # GPT-3 175B on 300B tokens: 6 N D = 3.15e23 (Brown et al., 2020), N counted on the meta device
    gpt3 = ModelConfig(vocab_size=50257, context_length=2048, d_model=12288, n_layers=96, n_heads=96)
    assert scaling.training_flops(gpt3, 300e9, attention=False) == pytest.approx(3.15e23, rel=0.01)
    assert scaling.training_flops(gpt3, 300e9) == pytest.approx(scaling.flops_per_token(gpt3) * 300e9)


def test_chinchilla_reference_numbers():
    assert scaling.chinchilla_loss(70e9, 1.4e12) == pytest.approx(1.937, abs=1e-3)
    pub = scaling.compute_optimal(scaling.CHINCHILLA_COMPUTE, scaling.CHINCHILLA_PUBLISHED)
    epoch = scaling.compute_optimal(scaling.CHINCHILLA_COMPUTE, "Epoch AI (replication)")
    assert 90 < pub["tokens_per_param"] < 96
    assert 18 <= epoch["tokens_per_param"] <= 20
    for r in (pub, epoch):
        assert 6 * r["N"] * r["D"] == pytest.approx(scaling.CHINCHILLA_COMPUTE, rel=1e-12)
    with pytest.raises(ValueError, match="constants"):
        scaling.compute_optimal(1e20, "Kaplan")
    with pytest.raises(ValueError, match="compute"):
        scaling.compute_optimal(-1.0)


@pytest.mark.parametrize("C", [1e18, 1e22, 1e25])
def test_closed_form_is_the_minimum(C):
    k = scaling.EPOCH_REPLICATION
    opt = scaling.compute_optimal(C, k)
    for factor in (0.9, 1.1, 0.5, 2.0):  # any other split of the same budget is worse
        n = opt["N"] * factor
        assert scaling.chinchilla_loss(n, C / (6 * n), k) > opt["loss"]
    curve = scaling.isoflop_curve(C, k)
    assert min(curve["loss"]) >= opt["loss"] - 1e-12


def test_huber_is_quadratic_then_linear():
    r = torch.tensor([0.0, 5e-4, -1e-3, 0.1], dtype=torch.float64)
    h = huber(r, 1e-3)
    assert h[1] == pytest.approx(0.5 * 5e-4 ** 2) and h[3] == pytest.approx(1e-3 * (0.1 - 5e-4))


@pytest.mark.parametrize("a,b,c,lo,hi", [(40.0, -0.12, 1.7, 15, 19), (3.0, -0.35, 0.5, 2, 6), (900.0, -0.25, 2.2, 9, 12)])
def test_power_law_fit_recovers_exact_constants(a, b, c, lo, hi):
    C = torch.logspace(lo, hi, 10, dtype=torch.float64)
    fit = fit_power_law(C.tolist(), (a * C ** b + c).tolist())
    assert fit.ok and fit.converged and fit.agree >= 2
    assert fit.b == pytest.approx(b, rel=1e-4) and fit.c == pytest.approx(c, rel=1e-4) and fit.a == pytest.approx(a, rel=1e-3)


def test_power_law_fit_on_noisy_data_within_stated_tolerance():
    g = torch.Generator().manual_seed(3)
    C = torch.logspace(15, 20, 16, dtype=torch.float64)
    L = (40 * C ** -0.12 + 1.7) * torch.exp(0.003 * torch.randn(16, generator=g, dtype=torch.float64))
    fit = fit_power_law(C.tolist(), L.tolist())
    assert fit.ok
    assert abs(fit.b + 0.12) < 0.03 and abs(fit.c - 1.7) < 0.07  # the stated tolerances at 0.3 % noise
    boot = bootstrap_power_law(C.tolist(), L.tolist(), at=1e21, n_boot=100)
    truth = 40 * 1e21 ** -0.12 + 1.7
    assert boot["low"] < boot["prediction"] < boot["high"]
    assert boot["low"] - 0.02 < truth < boot["high"] + 0.02
    assert boot["b"][0] < fit.b < boot["b"][1]
    assert bootstrap_power_law(C.tolist(), L.tolist(), at=1e21, n_boot=100) ["low"] == boot["low"]  # seeded


def test_chinchilla_fit_recovers_constants():
    N, D, L = [], [], []
    g = torch.Generator().manual_seed(0)
    for n in torch.logspace(7, 9.5, 6).tolist():
        for d in torch.logspace(8, 11, 6).tolist():
            N.append(n)
            D.append(d)
            L.append(scaling.chinchilla_loss(n, d) * math.exp(0.002 * float(torch.randn(1, generator=g))))
    exact = fit_chinchilla(N, D, [scaling.chinchilla_loss(n, d) for n, d in zip(N, D)])
    assert exact.ok and exact.alpha == pytest.approx(0.34, rel=1e-4) and exact.beta == pytest.approx(0.28, rel=1e-4)
    assert exact.E == pytest.approx(1.69, rel=1e-4) and exact.A == pytest.approx(406.4, rel=1e-3)
    noisy = fit_chinchilla(N, D, L)
    assert noisy.ok and abs(noisy.alpha - 0.34) < 0.05 and abs(noisy.beta - 0.28) < 0.05 and abs(noisy.E - 1.69) < 0.1
    boot = bootstrap_chinchilla(N, D, L, at=(1e10, 1e12), n_boot=30)
    assert boot["ok"] and boot["low"] <= boot["prediction"] <= boot["high"]
    assert boot["low"] - 0.02 < scaling.chinchilla_loss(1e10, 1e12) < boot["high"] + 0.02


def test_bad_fits_are_reported_not_drawn():
    rising = fit_power_law([1e10, 2e10, 4e10, 8e10, 1.6e11], [2.0, 2.1, 2.3, 2.2, 2.6])
    assert not rising.ok and "not negative" in rising.message
    with pytest.raises(ValueError, match="not usable"):
        rising.predict(1e12)
    C = torch.logspace(15, 19, 10, dtype=torch.float64)
    stopped = fit_power_law(C.tolist(), (40 * C ** -0.12 + 1.7).tolist(), max_iter=1)
    assert not stopped.converged and not stopped.ok and "did not converge" in stopped.message


def test_fit_input_validation():
    with pytest.raises(ValueError, match="at least 4 points"):
        fit_power_law([1e10, 1e11, 1e12], [3.0, 2.5, 2.2])
    with pytest.raises(ValueError, match="at least 6 points"):
        fit_chinchilla([1e6] * 5, [1e8] * 5, [3.0] * 5)
    with pytest.raises(ValueError, match="loss"):
        fit_power_law([1e10, 1e11, 1e12, 1e13], [3.0, 2.5, 0.0, 2.0])
    with pytest.raises(ValueError, match="compute"):
        fit_power_law([1e10, -1e11, 1e12, 1e13], [3.0, 2.5, 2.2, 2.0])
    with pytest.raises(ValueError, match="same length"):
        fit_power_law([1e10, 1e11, 1e12, 1e13], [3.0, 2.5, 2.2])
    with pytest.raises(ValueError, match="level"):
        bootstrap_power_law([1e10, 1e11, 1e12, 1e13, 1e14], [3.0, 2.5, 2.2, 2.1, 2.05], level=1.0)


def test_fit_lse_solves_many_problems_at_once():
    """One batched call fits independent problems: each gets its own answer."""
    x = torch.linspace(-2, 2, 8, dtype=torch.float64)
    truths = torch.tensor([[0.5, -0.3, 0.1], [1.0, -0.8, -0.5]], dtype=torch.float64)
    one, zero = torch.ones_like(x), torch.zeros_like(x)
    X = torch.stack([torch.stack([one, x, zero], -1), torch.stack([zero, zero, one], -1)], -2).expand(2, -1, -1, -1)
    y = torch.logsumexp(torch.einsum("knjp,kp->knj", X, truths), -1)
    res = fit_lse(X, y, torch.tensor([[0.0, -0.1, 0.0]] * 2, dtype=torch.float64), HUBER_DELTA)
    assert bool(res["converged"].all())
    torch.testing.assert_close(res["theta"], truths, atol=1e-6, rtol=0)


# -- the counter == GPT(cfg).num_parameters() for random configs (property test) ---------------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@st.composite
def model_configs(draw):
    n_heads = draw(st.sampled_from([1, 2, 4]))
    d_model = n_heads * draw(st.sampled_from([2, 4, 6]))
    n_layers = draw(st.integers(1, 3))
    position = draw(st.sampled_from(["learned", "none", "sinusoidal", "t5", "rope", "alibi"]))
    attention = draw(st.sampled_from(["full", "sliding_window"]))
    context_length = draw(st.integers(2, 12))
    kw = dict(
        vocab_size=draw(st.integers(2, 30)), context_length=context_length, d_model=d_model, n_layers=n_layers,
        n_heads=n_heads, n_kv_heads=draw(st.sampled_from([h for h in (1, 2, 4) if n_heads % h == 0])),
        bias=draw(st.booleans()), norm=draw(st.sampled_from(["layernorm", "rmsnorm"])),
        norm_position=draw(st.sampled_from(["pre", "post", "sandwich", "deepnorm"])),
        activation=draw(st.sampled_from(["gelu", "relu", "swiglu", "geglu"])),
        d_ff=draw(st.one_of(st.none(), st.integers(1, 40))), position=position, attention=attention,
        tie_embeddings=draw(st.booleans()),
    )
    if position == "learned":
        kw["n_positions"] = draw(st.one_of(st.none(), st.integers(context_length, 40)))
    if attention == "sliding_window":
        kw["window"] = draw(st.integers(1, 8))
        kw["n_sink"] = draw(st.integers(0, 2))
    if draw(st.booleans()):
        kw["knn_memory"] = {"layer": draw(st.integers(0, n_layers - 1)), "top_k": 2, "size": 8}
    return ModelConfig(**kw)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(model_configs())
def test_the_counter_equals_the_real_model_for_generated_configs(cfg):
    model = GPT(cfg)
    assert scaling.count_params(cfg) == sum(p.numel() for p in model.parameters()) == model.num_parameters()


def test_counter_regressions():
    # t5 was 826,112 (bias table forgotten), n_positions=64 was 842,496 (context_length used), knn missed its gate
    assert scaling.count_params(ModelConfig(position="t5")) == 826_240
    assert scaling.count_params(ModelConfig(n_positions=64)) == 834_304
    cfg = ModelConfig(knn_memory={"layer": 1, "top_k": 4, "size": 16})
    assert scaling.count_params(cfg) == GPT(cfg).num_parameters()
