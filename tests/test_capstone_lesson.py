"""Lesson 13's experiments and lmlab.model.llama, run through the same functions the lesson calls (smaller sizes)."""

import math

import pytest
import torch
import torch.nn as nn
from ipywidgets import Checkbox, FloatSlider, IntSlider, Text

from lmlab.course.experiments.ch13_capstone import (RECIPE, bits_per_byte, bpe_figure, generation_figure, lesson_tokenizer,
                                        merges_rows, pretrain_experiment, token_logprobs, truncated)
from lmlab.model.llama import (LLAMA_CHOICES, LLAMA_FLAVORS, LLAMA_PARTS, build_llama, check_llama_config, llama_block,
                               llama_config, parts_table)
from lmlab.model import GPT, ModelConfig
from lmlab.model.registry import NORMS, unregister
from lmlab.course.widgets import FigureExplorer


@pytest.fixture(scope="module")
def tok():
    return lesson_tokenizer(320)


@pytest.fixture(scope="module")
def pretrained():
    return pretrain_experiment(steps=30, seeds=(0, 1), vocab_size=320, d_model=32, n_layers=1, context_length=32,
                               batch_size=8, eval_chars=2000)


def test_merges_rows_and_truncation(tok):
    rows = merges_rows(tok, 5)
    assert [r[0] for r in rows] == list(range(5))
    a, b, new = rows[0][1:]
    assert new == a + b
    small = truncated(tok, 10)
    assert len(small.merges) == 10 and small.vocab_size <= tok.vocab_size
    text = "the for loop"
    assert len(small.encode(text)) >= len(tok.encode(text)) and small.decode(small.encode(text)) == text
    assert truncated(tok, 0).encode("ab") == [97, 98]
    with pytest.raises(ValueError, match="n_merges"):
        truncated(tok, len(tok.merges) + 1)


def test_build_llama_swaps_a_part_in_one_place():
    class MyNorm(nn.Module):  # built as the registry builds a norm: MyNorm(d_model, eps=...)
        def __init__(self, d_model, eps=1e-5):
            super().__init__()
            self.eps = eps
            self.weight = nn.Parameter(torch.ones(d_model))

        def forward(self, x):
            return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight

    cfg = llama_config(vocab_size=50, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, context_length=16, norm_eps=0.1)
    ref, mine = build_llama(cfg), build_llama(cfg, parts={"norm": MyNorm})
    assert sum(isinstance(m, MyNorm) for m in mine.modules()) == 2 * 2 + 1
    mine.load_state_dict(ref.state_dict())
    x = torch.randint(0, 50, (2, 16))
    torch.testing.assert_close(mine(x), ref(x))
    table = {row[0]: row for row in parts_table(mine)}
    assert table["norm"][2] == mine.config.norm and "MyNorm" in table["norm"][2]  # the config's part name
    assert table["ffn"][2] == LLAMA_PARTS["ffn"][2] and {row[2] for row in parts_table(ref)} == {v[2] for v in LLAMA_PARTS.values()}
    assert mine.config.norm in NORMS and mine.config.norm != "rmsnorm"  # plugged in through the registry
    assert mine.blocks[0].norm1.eps == 0.1  # built with the config's norm_eps
    again = build_llama(cfg, parts={"norm": MyNorm})  # a re-run registers the same name again
    assert again.config.norm == mine.config.norm
    unregister("norm", mine.config.norm)  # leave the registry as the other tests expect it
    with pytest.raises(ValueError, match="parts: kinds must be among"):
        build_llama(cfg, parts={"rope": MyNorm})
    with pytest.raises(ValueError, match=r"parts\['attention'\] must be a function \(chapter 04's scaled_dot_product_attention"):
        build_llama(cfg, parts={"attention": MyNorm})  # a module cannot take RoPE positions and a cache: the function goes inside
    with pytest.raises(ValueError, match="cfg must be a ModelConfig"):
        build_llama({"d_model": 3})
    with pytest.raises(ValueError, match="ModelConfig.norm must be 'rmsnorm'"):
        build_llama(ModelConfig(d_model=32, n_heads=4))


def test_build_llama_plugs_a_learners_rope_and_ffn():
    class MyRope:  # built as register_rope builds one: MyRope(head_dim, base), called as rope(x, positions)
        def __init__(self, head_dim, base):
            self.inv = 1.0 / base ** (torch.arange(0, head_dim, 2).float() / head_dim)  # (hs/2,)

        def __call__(self, x, positions):
            ang = positions.float()[:, None] * self.inv  # (T, hs/2)
            cos, sin = torch.cat([ang.cos(), ang.cos()], -1), torch.cat([ang.sin(), ang.sin()], -1)  # (T, hs)
            a, b = x.chunk(2, -1)
            return x * cos + torch.cat([-b, a], -1) * sin  # (B, nh, T, hs), half-split pairs

    class MySwiGLU(nn.Module):
        def __init__(self, d_model, hidden):
            super().__init__()
            self.w1, self.w3 = nn.Linear(d_model, hidden, bias=False), nn.Linear(d_model, hidden, bias=False)
            self.w2 = nn.Linear(hidden, d_model, bias=False)

        def forward(self, x):
            return self.w2(torch.nn.functional.silu(self.w1(x)) * self.w3(x))

    cfg = llama_config(vocab_size=30, d_model=16, n_layers=1, n_heads=2, n_kv_heads=1, context_length=8)
    ref, mine = build_llama(cfg, seed=1), build_llama(cfg, parts={"position": MyRope}, seed=1)
    mine.load_state_dict(ref.state_dict())
    x = torch.randint(0, 30, (2, 8))
    torch.testing.assert_close(mine(x), ref(x))  # the learner's RoPE rotates as lmlab's
    table = {row[0]: row[2] for row in parts_table(mine)}
    assert table["position"] == mine.config.position and "MyRope" in table["position"]
    ffn = build_llama(cfg, parts={"ffn": MySwiGLU}, seed=1)
    assert isinstance(ffn.blocks[0].ffn, MySwiGLU) and "MySwiGLU" in {row[0]: row[2] for row in parts_table(ffn)}["ffn"]
    unregister("position", mine.config.position)
    unregister("activation", ffn.config.activation)


def test_llama_config_is_one_preset_with_named_flavors():
    tiny = llama_config()
    assert tiny == llama_config("tiny") and (tiny.d_model, tiny.n_layers, tiny.n_heads, tiny.n_kv_heads) == (64, 2, 4, 2)
    for flavor in LLAMA_FLAVORS:
        cfg = llama_config(flavor)
        check_llama_config(cfg)
        assert all(getattr(cfg, k) == v for k, v in LLAMA_CHOICES.items())
    smol = llama_config("smollm2_135m")
    assert (smol.n_layers, smol.d_model, smol.n_heads, smol.n_kv_heads, smol.d_ff, smol.rope_base, smol.norm_eps,
            smol.vocab_size, smol.tie_embeddings) == (30, 576, 9, 3, 1536, 100000.0, 1e-5, 49152, True)
    assert llama_config("llama2_70b").n_kv_heads == 8
    assert llama_config("tiny", d_model=32).d_ff == 88  # the gated default follows the override
    with pytest.raises(ValueError, match=r"flavor: unknown LLaMA flavor 'llama3_8b'; flavors: \('tiny', 'smollm2_135m'"):
        llama_config("llama3_8b")
    with pytest.raises(ValueError, match="cannot be overridden"):
        llama_config("tiny", norm="layernorm")
    with pytest.raises(ValueError, match="unknown option"):
        llama_config("tiny", width=3)
    with pytest.raises(TypeError):
        llama_config("tiny", 64)  # the overrides are keyword-only


def test_llama_block_equals_the_models_block():
    cfg = llama_config(vocab_size=20, d_model=32, n_layers=1, n_heads=4, n_kv_heads=1, d_ff=24, context_length=10,
                       norm_eps=0.2, rope_base=300.0)
    model = build_llama(cfg, seed=3)
    b = model.blocks[0]
    C, kv = 32, 8
    q, k, v = b.attn.qkv.weight.detach().split([C, kv, kv])
    up, gate = b.ffn.up.weight.detach().split([24, 24])
    w = dict(norm1=b.norm1.weight.detach() + 0.3, norm2=b.norm2.weight.detach(), wq=q * 20, wk=k * 20, wv=v, wo=b.attn.proj.weight.detach(),
             w_up=up, w_gate=gate, w_down=b.ffn.down.weight.detach())
    with torch.no_grad():
        b.norm1.weight.add_(0.3)
        b.attn.qkv.weight[:C + kv].mul_(20)
    x = torch.randn(2, 10, C)
    pos = torch.arange(10)
    with torch.no_grad():
        torch.testing.assert_close(llama_block(x, w, 4, 1, 0.2, 300.0), b(x, positions=model.position.for_attention(pos, pos)),
                                   atol=1e-5, rtol=1e-5)


def test_bits_per_byte_of_a_uniform_model_is_log2_vocab_per_byte():
    class Uniform(nn.Module):
        config = llama_config(vocab_size=256, d_model=8, n_layers=1, n_heads=2, n_kv_heads=1, context_length=7)

        def forward(self, ids):
            return torch.zeros(*ids.shape, 256)

    ids = list(b"hello world, bits per byte")
    # one token per byte, the first only context: (n - 1) * 8 bits over n bytes
    assert math.isclose(bits_per_byte(Uniform(), ids, len(ids)), (len(ids) - 1) * 8 / len(ids), rel_tol=1e-6)


def test_pretrain_experiment_compares_in_bits_per_byte(pretrained):
    r = pretrained
    assert len(r.bpe_bpb) == len(r.char_bpb) == 2
    assert all(0 < v < 9 for v in r.bpe_bpb + r.char_bpb)
    assert r.comparison.n == 2 and "bits/byte" in r.comparison.sentence
    assert isinstance(r.models["bpe"], GPT) and r.models["bpe"].config.norm == "rmsnorm"
    assert r.models["char"].config.position == "learned"


def test_pretrain_experiment_trains_both_models_with_chapter_09s_recipe(pretrained):
    """Warm-up to the peak lr (3e-3) over RECIPE's 10 steps, cosine decay to 10 % at the last step, the same for
    both models; AdamW with decay groups and clipping come from lmlab.train.loop.train's options in RECIPE."""
    assert RECIPE["schedule"] == "cosine" and RECIPE["grad_clip"] == 1.0 and RECIPE["weight_decay"] == 0.1
    assert RECIPE["optimizer"] == "adamw" and RECIPE["warmup"] == 10
    bpe, char = pretrained.histories["bpe"], pretrained.histories["char"]
    assert bpe.lr == char.lr and len(bpe.lr) == 30
    assert bpe.lr[0] == pytest.approx(3e-3 / 10) and bpe.lr[9] == pytest.approx(3e-3) == max(bpe.lr)
    assert all(a <= b for a, b in zip(bpe.lr[:10], bpe.lr[1:10])) and all(a >= b for a, b in zip(bpe.lr[9:], bpe.lr[10:]))
    assert bpe.lr[-1] == pytest.approx(0.1 * 3e-3)


def test_token_logprobs_are_log2_probabilities(pretrained, tok):
    rows = token_logprobs(pretrained.models["bpe"], tok, "The for statement is used")
    assert len(rows) == len(tok.encode("The for statement is used")) - 1
    assert all(lp <= 0 for _, lp in rows)


def test_bpe_explorer_changes_with_controls(tok):
    ex = FigureExplorer(lambda text, n: bpe_figure(tok, text, n),
                        {"text": Text(value="for x in y"), "n": IntSlider(value=20, min=0, max=len(tok.merges))})
    before = list(ex.figure.data[0].y)
    ex.controls["n"].value = 0
    assert list(ex.figure.data[0].y) != before and set(ex.figure.data[0].y) == {1}
    ex.controls["text"].value = "while True"
    assert len(ex.figure.data[0].x) == len("while True")


def test_generation_explorer_changes_with_controls(pretrained, tok):
    model = pretrained.models["bpe"]
    ex = FigureExplorer(lambda prompt, temperature, kv: generation_figure(model, tok, prompt, temperature, 20, 0.9, kv,
                                                                          max_new_tokens=6),
                        {"prompt": Text(value="The for"), "temperature": FloatSlider(value=0.0, min=0.0, max=1.5),
                         "kv": Checkbox(value=True)})
    greedy = list(ex.figure.data[0].text)
    ex.controls["kv"].value = False
    assert list(ex.figure.data[0].text) == greedy  # the cache changes speed, not tokens
    assert "without the KV cache" in ex.note.value
    ex.controls["temperature"].value = 1.5
    assert list(ex.figure.data[0].text) != greedy


def test_model_config_norm_eps():
    from lmlab.model import ModelConfig
    from lmlab.model.norms import DEFAULT_EPS

    cfg = llama_config(vocab_size=20, d_model=16, n_layers=2, n_heads=2, n_kv_heads=1, norm_eps=0.25)
    model = GPT(cfg)
    eps = [m.eps for m in model.modules() if hasattr(m, "eps")]
    assert len(eps) == 2 * 2 + 1 and set(eps) == {0.25}
    default = GPT(ModelConfig(vocab_size=20, d_model=16, n_layers=1, n_heads=2, norm="rmsnorm"))
    assert {m.eps for m in default.modules() if hasattr(m, "eps")} == {DEFAULT_EPS["rmsnorm"]}
    for bad in (0, -1e-5, float("nan"), True, "1e-5"):
        with pytest.raises(ValueError, match="norm_eps"):
            ModelConfig(norm_eps=bad)
