"""Registries all the way down: a new norm, norm placement, FFN kind and RoPE scaling is one entry each
(lessons 01-03, 06), and the model imports nothing from the layers above it."""

import ast
import math
import pathlib

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from lmlab.model import GPT, ModelConfig
from lmlab.model.ffn import FFN_ACTIVATIONS, FFNActivation, FeedForward
from lmlab.model.norms import NormPlacement
from lmlab.model.positions.encodings import rope_frequencies
from lmlab.model.positions.rope_scaling import ROPE_SCALINGS, check_rope_scaling, register_rope_scaling
from lmlab.model.registry import FFNS, NORM_PLACEMENTS, NORMS, register_norm_placement
from lmlab.scaling.counting import count_params, param_counts

SMALL = dict(vocab_size=40, context_length=16, d_model=32, n_heads=4, n_layers=2)


class ScaleNorm(nn.Module):
    """ScaleNorm (Nguyen & Salazar, 2019): ``g * x / ||x||`` with one learned scalar ``g``."""

    def __init__(self, d_model: int, eps: float = 1e-5):
        super().__init__()
        self.g, self.eps = nn.Parameter(torch.tensor(math.sqrt(d_model))), eps

    def forward(self, x):
        return self.g * x / x.norm(dim=-1, keepdim=True).clamp_min(self.eps)


class ResiDual(NormPlacement):
    """A made-up placement: pre-LN on the attention, post-LN on the FFN."""

    final_norm = False

    def forward(self, block, x, attn_mask=None, kv_cache=None, positions=None):
        x = x + block.attn(block.norm1(x), attn_mask, kv_cache, positions)
        return block.norm2(x + block.ffn(x))


def _one_step(cfg: ModelConfig) -> GPT:
    """Build, check lmlab's one counter against the built model, train one AdamW step."""
    torch.manual_seed(0)
    model = GPT(cfg)
    n = sum(p.numel() for p in model.parameters())
    assert n == count_params(cfg)
    before = [p.detach().clone() for p in model.parameters()]
    idx = torch.randint(0, cfg.vocab_size, (4, cfg.context_length + 1), generator=torch.Generator().manual_seed(1))
    loss = F.cross_entropy(model(idx[:, :-1]).flatten(0, 1), idx[:, 1:].flatten())
    assert torch.isfinite(loss)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss.backward()
    opt.step()
    assert all(not torch.equal(a, p) for a, p in zip(before, model.parameters()) if p.requires_grad)
    return model


@pytest.fixture
def entry():
    """Register entries for one test and remove them after."""
    added = []

    def add(table, name, *args, **kwargs):
        part = (kwargs.pop("via")(name, *args, **kwargs) if "via" in kwargs else table.register(name, *args, **kwargs))
        added.append((table, name))
        return part

    yield add
    for table, name in reversed(added):
        table.unregister(name)


def test_a_new_norm_is_one_entry(entry):
    entry(NORMS, "scalenorm", lambda cfg: ScaleNorm(cfg.d_model))
    cfg = ModelConfig(norm="scalenorm", **SMALL)
    model = _one_step(cfg)
    assert isinstance(model.final_norm, ScaleNorm) and isinstance(model.blocks[0].norm1, ScaleNorm)
    assert sum(p.numel() for p in ScaleNorm(8).parameters()) == 1
    assert param_counts(cfg)["norms"] == 2 * 2 + 1  # two per block and the final one


def test_a_new_norm_placement_is_one_entry(entry):
    entry(NORM_PLACEMENTS, "residual", ResiDual, via=register_norm_placement)
    cfg = ModelConfig(norm_position="residual", **SMALL)
    model = _one_step(cfg)
    assert isinstance(model.final_norm, nn.Identity)
    norms = sum(p.numel() for n, p in model.named_parameters() if "norm" in n)
    assert norms == param_counts(cfg)["norms"] == 2 * 2 * (2 * 32)  # 2 layers x 2 LayerNorms (weight + bias)
    x = torch.randn(1, 3, 32)
    b = model.blocks[0]
    h = x + b.attn(b.norm1(x))
    torch.testing.assert_close(b(x), b.norm2(h + b.ffn(h)))


def test_a_new_ffn_kind_is_one_entry(entry, monkeypatch):
    monkeypatch.setitem(FFN_ACTIVATIONS, "reglu", FFNActivation(torch.relu, gated=True))
    entry(FFNS, "reglu", lambda cfg: FeedForward(cfg.d_model, cfg.d_ff, "reglu", bias=cfg.bias), gated=True)
    cfg = ModelConfig(activation="reglu", **SMALL)
    assert cfg.d_ff == 88  # the gated default: 2/3 of 4 * 32, up to a multiple of 8
    model = _one_step(cfg)
    ffn = model.blocks[0].ffn
    assert ffn.up.out_features == 2 * 88 and param_counts(cfg)["ffn"] == 2 * sum(p.numel() for p in ffn.parameters())
    x = torch.randn(2, 5, 32)
    a, g = ffn.up(x).chunk(2, dim=-1)
    torch.testing.assert_close(ffn(x), ffn.down(a * torch.relu(g)))


def test_a_new_rope_scaling_is_one_entry(entry):
    def halve(head_dim, base, scaling, seq_len):  # every frequency halved, attention sharpened
        return rope_frequencies(head_dim, base) / 2, float(scaling.get("temperature", 1.0))

    def positive(value, key):
        if not value > 0:
            raise ValueError(f"rope_scaling {key} must be > 0, got {value!r}")

    entry(ROPE_SCALINGS, "halve", halve, required={}, optional={"temperature": positive}, via=register_rope_scaling)
    cfg = ModelConfig(position="rope", rope_scaling={"type": "halve", "temperature": 1.5}, **SMALL)
    model = _one_step(cfg)
    assert param_counts(cfg)["positions"] == 0
    plain = GPT(ModelConfig(position="rope", **SMALL))
    plain.load_state_dict(model.state_dict())
    idx = torch.randint(0, 40, (1, 16))
    assert not torch.allclose(model(idx), plain(idx))
    with pytest.raises(ValueError, match=r"rope_scaling temperature must be > 0"):
        check_rope_scaling({"type": "halve", "temperature": 0})
    with pytest.raises(ValueError, match=r"needs keys \[\] \(optional \['temperature'\]\); missing \[\], unknown \['factor'\]"):
        check_rope_scaling({"type": "halve", "factor": 2})


@pytest.mark.parametrize("option,value,table", [
    ("norm", "batchnorm", NORMS), ("norm_position", "middle", NORM_PLACEMENTS),
    ("activation", "swish", FFNS), ("position", "spiral", None), ("attention", "linear", None),
])
def test_an_unknown_name_names_the_option_and_the_allowed_values(option, value, table):
    with pytest.raises(ValueError, match=rf"ModelConfig\.{option} must be one of \(.*\), got '{value}'") as err:
        ModelConfig(**{option: value})
    if table is not None:
        assert str(table.names()) in str(err.value)


def test_unknown_rope_scaling_and_ffn_kind_list_the_allowed_values():
    with pytest.raises(ValueError, match=r"rope_scaling must be None or a dict with 'type' in \('linear', 'ntk', 'dynamic_ntk', 'yarn', 'truncate'\)"):
        ModelConfig(position="rope", rope_scaling={"type": "longrope", "factor": 2})
    with pytest.raises(ValueError, match=r"FeedForward: kind must be one of \('gelu', 'relu', 'swiglu', 'geglu'\), got 'reglu'"):
        FeedForward(8, 16, "reglu")  # no silent fallback to a gated kind


def test_every_builtin_counts_what_it_builds():
    for placement in NORM_PLACEMENTS:
        for norm in NORMS:
            for act in FFNS:
                cfg = ModelConfig(norm=norm, norm_position=placement, activation=act, **SMALL)
                assert count_params(cfg) == sum(p.numel() for p in GPT(cfg).parameters()), (placement, norm, act)


# --------------------------------------------------------------------------------------------
# Layering: the model imports nothing from the layers above it
# --------------------------------------------------------------------------------------------

ABOVE_THE_MODEL = ("lmlab.infer", "lmlab.train", "lmlab.course", "lmlab.grading", "lmlab.parallel", "lmlab.interop")


def _imports(path: pathlib.Path):
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            yield node.lineno, node.module
            yield from ((node.lineno, f"{node.module}.{alias.name}") for alias in node.names)


def test_the_model_imports_no_inference_training_or_course_code():
    root = pathlib.Path(__file__).resolve().parents[1] / "lmlab" / "model"
    files = sorted(root.rglob("*.py"))
    assert len(files) > 10
    bad = [f"{f.relative_to(root.parent.parent)}:{line} imports {name}" for f in files for line, name in _imports(f)
           if any(name == top or name.startswith(top + ".") for top in ABOVE_THE_MODEL)]
    assert not bad, "\n".join(bad)


def test_the_model_has_no_function_level_lmlab_imports():
    root = pathlib.Path(__file__).resolve().parents[1] / "lmlab" / "model"
    bad = []
    for f in sorted(root.rglob("*.py")):
        tree = ast.parse(f.read_text())
        for fn in ast.walk(tree):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for node in ast.walk(fn):
                    if isinstance(node, (ast.Import, ast.ImportFrom)):
                        names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                        if any(n.startswith("lmlab") for n in names):
                            bad.append(f"{f.name}:{node.lineno}")
    assert not bad, bad
