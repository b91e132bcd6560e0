"""lmlab.interop.hf: to_hf / from_hf against transformers' LlamaForCausalLM (tiny random configs, no download).

Weights have std 0.5 (at init scale, 0.02, a layout or eps bug hides under 1e-2 and argmax ties
flip), and the 1e-5 comparisons run in float64 so that 1e-5 is a real tolerance (measured: 1e-13).
One wrinkle, measured: Hugging Face's ``LlamaRMSNorm`` casts its input to float32 even when the
model is float64, which alone moves std-0.5 logits by ~2.5e-5. The float64 tests therefore lift
that cast (same formula, no float32 round trip: the ``hf_norm_keeps_dtype`` fixture); the float32
test runs transformers unmodified, at 1e-4.
"""

import os

import pytest
import torch

from lmlab.model import GPT, ModelConfig
from lmlab.model.llama import LLAMA_FLAVORS, llama_config

try:
    import transformers
except ImportError:  # pragma: no cover - depends on the environment
    transformers = None
needs_hf = pytest.mark.skipif(transformers is None and not os.environ.get("CI"),
                              reason="optional parity extra: transformers not installed")

CONFIGS = {
    "gqa-tied": dict(n_heads=4, n_kv_heads=2, tie_embeddings=True, norm_eps=1e-5, rope_base=10000.0),
    "mqa-untied-eps": dict(n_heads=4, n_kv_heads=1, tie_embeddings=False, norm_eps=0.3, rope_base=500.0),
    "mha-untied-base": dict(n_heads=2, n_kv_heads=2, tie_embeddings=False, norm_eps=None, rope_base=100000.0),
}


def llama(seed=0, std=0.5, **over):
    cfg = llama_config(**{**dict(vocab_size=61, context_length=48, d_model=32, n_layers=2, d_ff=40), **over})
    torch.manual_seed(seed)
    model = GPT(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(1 + std * torch.randn_like(p) if p.dim() == 1 else std * torch.randn_like(p))
    return model.eval()


@pytest.fixture
def hf_norm_keeps_dtype(monkeypatch):
    from transformers.models.llama import modeling_llama

    def forward(self, h):  # LlamaRMSNorm.forward without its float32 round trip
        return self.weight * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.variance_epsilon))

    monkeypatch.setattr(modeling_llama.LlamaRMSNorm, "forward", forward)


def logits(model, ids):
    with torch.no_grad():
        out = model(ids)
    return out if isinstance(out, torch.Tensor) else out.logits


@needs_hf
@pytest.mark.parametrize("name", list(CONFIGS))
def test_to_hf_logits_equal(name, hf_norm_keeps_dtype):
    from lmlab.interop.hf import to_hf

    model = llama(**CONFIGS[name]).double()
    hf = to_hf(model)
    assert isinstance(hf, transformers.LlamaForCausalLM)
    assert hf.config.tie_word_embeddings == model.config.tie_embeddings
    ids = torch.randint(0, 61, (2, 40), generator=torch.Generator().manual_seed(1))
    ours, ref = logits(model, ids), logits(hf, ids)
    assert ref.abs().max() > 1.0  # large weights: a layout bug would show
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)


@needs_hf
@pytest.mark.parametrize("name", list(CONFIGS))
def test_from_hf_logits_equal(name, hf_norm_keeps_dtype):
    from lmlab.interop.hf import from_hf, to_hf_config

    hf_cfg = to_hf_config(llama(**CONFIGS[name]).config)
    torch.manual_seed(3)
    hf = transformers.LlamaForCausalLM(hf_cfg).double().eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.copy_(1 + 0.5 * torch.randn_like(p) if p.dim() == 1 else 0.5 * torch.randn_like(p))
    model = from_hf(hf)
    assert model.config.n_kv_heads == CONFIGS[name]["n_kv_heads"]
    assert model.config.rope_base == CONFIGS[name]["rope_base"]
    ids = torch.randint(0, 61, (2, 40), generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(logits(model, ids), logits(hf, ids), atol=1e-5, rtol=0)


@needs_hf
def test_eps_and_gqa_order_matter(hf_norm_keeps_dtype):
    """The checks above are not vacuous: a wrong eps or a wrong K/V head order changes the logits."""
    from lmlab.interop.hf import to_hf

    model = llama(**CONFIGS["mqa-untied-eps"]).double()
    hf = to_hf(model)
    hf.config.rms_norm_eps = 1e-6
    for layer in hf.model.layers:
        layer.input_layernorm.variance_epsilon = 1e-6
    ids = torch.randint(0, 61, (1, 20), generator=torch.Generator().manual_seed(1))
    assert (logits(model, ids) - logits(hf, ids)).abs().max() > 1e-3
    gqa = llama(**CONFIGS["gqa-tied"]).double()
    hf = to_hf(gqa)
    with torch.no_grad():  # swap the two K heads: query heads 0-1 would use K head 1
        k = hf.model.layers[0].self_attn.k_proj.weight
        k.copy_(torch.cat([k[8:], k[:8]]))
    assert (logits(gqa, ids) - logits(hf, ids)).abs().max() > 1e-3


@needs_hf
@pytest.mark.parametrize("name", list(CONFIGS))
def test_float32_logits_match_unmodified_transformers(name):
    from lmlab.interop.hf import to_hf

    model = llama(**CONFIGS[name])
    ids = torch.randint(0, 61, (2, 40), generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(logits(model, ids), logits(to_hf(model), ids), atol=1e-4, rtol=0)


@needs_hf
def test_save_pretrained_round_trip(tmp_path):
    from lmlab.interop.hf import from_hf, to_hf

    model = llama(**CONFIGS["gqa-tied"])
    to_hf(model).save_pretrained(tmp_path)
    loaded = transformers.LlamaForCausalLM.from_pretrained(tmp_path, local_files_only=True)
    back = from_hf(loaded, context_length=model.config.context_length)
    assert back.config == model.config
    ids = torch.randint(0, 61, (1, 30), generator=torch.Generator().manual_seed(5))
    assert torch.equal(logits(back, ids), logits(model, ids))
    for (n1, p1), (n2, p2) in zip(model.state_dict().items(), back.state_dict().items()):
        assert n1 == n2 and torch.equal(p1, p2), n1


@needs_hf
@pytest.mark.parametrize("name", ["gqa-tied", "mqa-untied-eps"])
def test_greedy_generation_equals_hf_generate(name):
    from lmlab.infer.decoding import generate
    from lmlab.interop.hf import to_hf

    model = llama(**CONFIGS[name])
    hf = to_hf(model)
    prompt = torch.randint(0, 61, (1, 6), generator=torch.Generator().manual_seed(7))
    ours = generate(model, prompt, 24)
    with torch.no_grad():
        ref = hf.generate(prompt, max_new_tokens=24, do_sample=False, pad_token_id=0, eos_token_id=None)
    assert ours.tolist() == ref.tolist()
    assert len(set(ours[0, 6:].tolist())) > 1  # not a degenerate repeat of one token


@needs_hf
@pytest.mark.parametrize("flavor", list(LLAMA_FLAVORS))
def test_hf_config_round_trip_is_the_preset(flavor):
    from lmlab.interop.hf import from_hf_config, to_hf_config

    cfg = llama_config(flavor)
    assert from_hf_config(to_hf_config(cfg)) == cfg


@needs_hf
def test_non_llama_configs_are_refused():
    from lmlab.interop.hf import from_hf, to_hf

    with pytest.raises(ValueError, match="ModelConfig.norm must be 'rmsnorm'"):
        to_hf(GPT(ModelConfig(d_model=16, n_heads=2, n_layers=1)))
    with pytest.raises(ValueError, match="to_hf expects an lmlab GPT"):
        to_hf(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="from_hf expects"):
        from_hf(torch.nn.Linear(2, 2))
    cfg = transformers.LlamaConfig(hidden_size=16, intermediate_size=24, num_hidden_layers=1, num_attention_heads=2,
                                   vocab_size=20, hidden_act="gelu")
    with pytest.raises(ValueError, match="hidden_act='gelu'"):
        from_hf(transformers.LlamaForCausalLM(cfg))
