"""lmlab.model.registry: one table per kind of part that config and builders read (and the counter counts); learner parts plug in;
the kNN-memory layer is built (not patched) and keeps DeepNorm's init and attention dropout."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from lmlab.model import registry as parts
from lmlab.grading.plug_and_train import train_with_part
from lmlab.model.memory import KNNMemoryAttention
from lmlab.model import GPT, ModelConfig
from lmlab.model.norms import deepnorm_constants
from lmlab.scaling.counting import count_params

SMALL = dict(vocab_size=20, context_length=12, d_model=16, n_layers=2, n_heads=4)


class MyRMSNorm(nn.Module):
    def __init__(self, d_model, eps=1e-6):
        super().__init__()
        self.eps, self.weight = eps, nn.Parameter(torch.ones(d_model))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def test_tables_read_like_the_tuples_they_replaced():
    assert parts.NORMS == ("layernorm", "rmsnorm") and "rmsnorm" in parts.NORMS
    assert set(parts.FFNS) == {"gelu", "relu", "swiglu", "geglu"}
    assert set(parts.POSITIONS) == {"learned", "none", "sinusoidal", "t5", "rope", "alibi"}
    assert tuple(parts.ATTENTIONS) == ("full", "sliding_window")


def test_unknown_name_lists_the_registered_ones():
    with pytest.raises(ValueError, match=r"ModelConfig.norm must be one of \('layernorm', 'rmsnorm'\), got 'batchnorm'"):
        ModelConfig(norm="batchnorm")
    with pytest.raises(ValueError, match=r"unknown attention 'flash'; registered attentions: \('full', 'sliding_window'\)"):
        parts.ATTENTIONS["flash"]


def test_a_new_variant_is_one_entry_everywhere():
    parts.NORMS.register("scaled_rms", lambda cfg: MyRMSNorm(cfg.d_model))
    try:
        cfg = ModelConfig(**SMALL, norm="scaled_rms", norm_position="sandwich")
        model = GPT(cfg)
        assert isinstance(model.blocks[1].attn_out_norm, MyRMSNorm)
        assert count_params(cfg) == model.num_parameters()  # counted on the meta device
        with pytest.raises(ValueError, match="norm part 'scaled_rms' is already registered"):
            parts.NORMS.register("scaled_rms", lambda cfg: MyRMSNorm(cfg.d_model))
    finally:
        parts.unregister("norm", "scaled_rms")
    with pytest.raises(ValueError, match="one of"):
        ModelConfig(norm="scaled_rms")
    with pytest.raises(ValueError, match="built-in"):
        parts.unregister("norm", "rmsnorm")


def test_register_by_kind_replaces_only_when_asked_and_never_a_builtin():
    class Half(nn.Module):  # a norm that is visibly not the first one
        def __init__(self, d_model, eps=1e-5):
            super().__init__()
            self.inner = MyRMSNorm(d_model)

        def forward(self, x):
            return 0.5 * self.inner(x)

    parts.register("norm", "regnorm", lambda d_model, eps: MyRMSNorm(d_model))
    try:
        with pytest.raises(ValueError, match="already registered"):
            parts.register("norm", "regnorm", Half)
        parts.register("norm", "regnorm", Half, replace=True)  # a re-run cell
        assert isinstance(GPT(ModelConfig(**SMALL, norm="regnorm")).blocks[0].norm1, Half)
    finally:
        parts.unregister("norm", "regnorm")
    with pytest.raises(ValueError, match="already registered"):
        parts.register("norm", "rmsnorm", Half, replace=True)  # built-ins stay
    with pytest.raises(ValueError, match="kind"):
        parts.register("norms", "x", Half)


def test_register_norm_probes_the_part():
    class Shrinks(nn.Module):
        def __init__(self, d_model):
            super().__init__()

        def forward(self, x):
            return x[..., :-1]

    with pytest.raises(ValueError, match=r"norm part 'bad': norm\(x\) must return a tensor of shape \(2, 3, 8\)"):
        parts.register_norm("bad", Shrinks)
    with pytest.raises(ValueError, match=r"norm part 'bad2' must be built as factory\(d_model: int"):
        parts.register_norm("bad2", lambda a, b, c: None)
    assert "bad" not in parts.NORMS and "bad2" not in parts.NORMS


def test_a_learners_rmsnorm_gives_lmlabs_logits_and_uses_norm_eps():
    parts.register_norm("my_rmsnorm", MyRMSNorm)
    try:
        x = torch.randint(20, (2, 12), generator=torch.Generator().manual_seed(0))
        for eps in (None, 1e-2):
            torch.manual_seed(0)
            ref = GPT(ModelConfig(**SMALL, norm="rmsnorm", norm_eps=eps))
            torch.manual_seed(0)
            mine = GPT(ModelConfig(**SMALL, norm="my_rmsnorm", norm_eps=eps))
            assert mine.blocks[0].norm1.eps == (1e-6 if eps is None else eps)
            torch.testing.assert_close(mine(x), ref(x), atol=1e-5, rtol=0)
    finally:
        parts.unregister("norm", "my_rmsnorm")


def test_norm_eps_reaches_every_norm_and_none_keeps_the_defaults():
    for norm, default in (("layernorm", 1e-5), ("rmsnorm", 1e-6)):
        for position in ("pre", "sandwich", "deepnorm"):
            m = GPT(ModelConfig(**SMALL, norm=norm, norm_position=position))
            eps = {mod.eps for mod in m.modules() if hasattr(mod, "eps")}
            assert eps == {default}
            m = GPT(ModelConfig(**SMALL, norm=norm, norm_position=position, norm_eps=1e-3))
            assert {mod.eps for mod in m.modules() if hasattr(mod, "eps")} == {1e-3}
    with pytest.raises(ValueError, match="ModelConfig.norm_eps must be a finite number > 0"):
        ModelConfig(norm_eps=0.0)


def test_head_dim_is_the_one_name():
    cfg = ModelConfig(**SMALL)
    attn = GPT(cfg).blocks[0].attn
    assert cfg.head_dim == attn.head_dim == 4
    assert not hasattr(cfg, "head_size") and not hasattr(attn, "head_size")


# ---- build, never patch: the kNN-memory layer -------------------------------------------------


def test_knn_layer_keeps_deepnorm_init():
    """Bug: the kNN layer was swapped in after Block set DeepNorm's beta, so its v and output weights
    had GPT-2's std (0.02) instead of 0.02 * beta."""
    cfg = ModelConfig(d_model=128, n_layers=4, n_heads=4, norm_position="deepnorm", knn_memory={"layer": 1, "top_k": 4, "size": 64})
    torch.manual_seed(0)
    m = GPT(cfg)
    beta = deepnorm_constants(4).beta
    knn, plain = m.blocks[1].attn, m.blocks[0].attn
    assert isinstance(knn, KNNMemoryAttention)
    for attn in (knn, plain):
        assert abs(float(attn.proj.weight.std()) - 0.02 * beta) < 0.0015  # 0.0099, not 0.02
        assert abs(float(attn.qkv.weight[256:].std()) - 0.02 * beta) < 0.0015  # v rows
        assert abs(float(attn.qkv.weight[:256].std()) - 0.02) < 0.0015  # q, k rows keep 0.02


def test_knn_layer_applies_attention_dropout():
    """Bug: KNNMemoryAttention.forward was a copy of MultiHeadAttention.forward without attention dropout."""
    torch.manual_seed(0)
    attn = KNNMemoryAttention(16, 4, dropout=0.5, top_k=2, memory_size=8).train()
    x = torch.randn(1, 6, 16)
    torch.manual_seed(1)
    y = attn(x)
    q, k, v = attn.project_qkv(x)
    torch.manual_seed(1)
    want = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=0.5)
    want = attn.drop(attn.proj(want.transpose(1, 2).reshape(1, 6, 16)))
    torch.manual_seed(1)
    no_drop = attn.eval()(x)
    assert not torch.allclose(y, no_drop)  # dropout did something
    torch.testing.assert_close(y, want)


# ---- the graders' harness ------------------------------------------------------------------------


def test_train_with_part_matches_lmlab_for_a_correct_part_and_not_for_a_wrong_one():
    cfg = dict(context_length=16, d_model=16, n_layers=1, n_heads=2, norm="rmsnorm", bias=False, norm_eps=1e-3)
    ref = train_with_part(None, "norm", cfg, steps=3, seed=0)
    mine = train_with_part(MyRMSNorm, "norm", cfg, steps=3, seed=0)
    torch.testing.assert_close(mine["logits"], ref["logits"], atol=1e-5, rtol=0)
    assert len(ref["losses"]) == 3 and max(abs(a - b) for a, b in zip(ref["losses"], mine["losses"])) < 1e-4

    class NoEps(MyRMSNorm):
        def forward(self, x):
            return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True)) * self.weight

    wrong = train_with_part(NoEps, "norm", cfg, steps=3, seed=0)
    assert not torch.allclose(wrong["logits"], ref["logits"], atol=1e-4)
    assert not any(n.startswith("_plugged") for n in parts.NORMS)  # the temporary name is gone


def test_no_module_imports_another_modules_private_names():
    import pathlib
    import re

    import lmlab

    pattern = re.compile(r"^\s*from \.[\w.]* import .*\b_[A-Za-z]", re.M)
    root = pathlib.Path(lmlab.__file__).parent
    offenders = [str(p.relative_to(root)) for p in root.rglob("*.py") if pattern.search(p.read_text(encoding="utf-8"))]
    assert offenders == []
