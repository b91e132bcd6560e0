"""lmlab.infer.kv_cache and GPT.forward_with_cache: prefill + decode equal full recomputation (lesson 08)."""

import pytest
import torch

from lmlab.infer.decoding import generate
from lmlab.infer.kv_cache import KVCache, kv_cache_bytes
from lmlab.model import GPT, ModelConfig

LOGITS = dict(atol=1e-5, rtol=1e-5)  # the bar for cached vs recomputed logits (fp32)


def tiny(seed=0, **kw):
    torch.manual_seed(seed)
    cfg = dict(vocab_size=48, context_length=40, d_model=32, n_layers=2, n_heads=4)
    cfg.update(kw)
    return GPT(ModelConfig(**cfg)).eval()


CONFIGS = [
    dict(),  # MHA, learned positions, pre-LN
    dict(n_kv_heads=2),  # GQA
    dict(n_kv_heads=1, norm="rmsnorm", activation="swiglu"),  # MQA
    dict(attention="sliding_window", window=5, n_kv_heads=2),
    dict(norm_position="post", position="none"),
]


def greedy_by_recomputation(model, prompt, n):
    """The slow reference: run the whole sequence every step."""
    ids, logits = prompt, []
    for _ in range(n):
        last = model(ids)[:, -1]  # (B, V)
        logits.append(last)
        ids = torch.cat([ids, last.argmax(-1, keepdim=True)], dim=1)
    return ids, torch.stack(logits, 1)  # (B, T + n), (B, n, V)


def greedy_with_cache(model, prompt, n):
    ids, logits = prompt, []
    out, cache = model.forward_with_cache(prompt, KVCache.for_model(model, batch=prompt.size(0)))  # prefill: the whole prompt at once
    for step in range(n):
        last = out[:, -1]  # (B, V)
        logits.append(last)
        nxt = last.argmax(-1, keepdim=True)  # (B, 1)
        ids = torch.cat([ids, nxt], dim=1)
        if step < n - 1:
            out, cache = model.forward_with_cache(nxt, cache)  # decode: one token
    return ids, torch.stack(logits, 1), cache


@pytest.mark.parametrize("kw", CONFIGS, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()) or "mha")
def test_greedy_with_cache_equals_recomputation(kw):
    model = tiny(**kw)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for T0, B in ((1, 1), (5, 2), (13, 3)):  # several prompts and batch sizes
            prompt = torch.randint(0, 48, (B, T0), generator=g)
            n = 40 - T0  # fill the context exactly
            ids_ref, logits_ref = greedy_by_recomputation(model, prompt, n)
            ids, logits, cache = greedy_with_cache(model, prompt, n)
            assert torch.equal(ids, ids_ref)
            torch.testing.assert_close(logits, logits_ref, **LOGITS)
            assert cache.length == 39 and cache.lengths == [39, 39]


def test_prefill_in_chunks_equals_one_pass():
    model = tiny(n_kv_heads=2)
    idx = torch.randint(0, 48, (2, 20), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = model(idx)
        a, cache = model.forward_with_cache(idx[:, :7], KVCache.for_model(model, batch=2))
        b, cache = model.forward_with_cache(idx[:, 7:15], cache)  # 8 new tokens after 7 cached
        c, cache = model.forward_with_cache(idx[:, 15:], cache)
    torch.testing.assert_close(torch.cat([a, b, c], 1), full, **LOGITS)


@pytest.mark.parametrize("kw", [dict(), dict(n_kv_heads=2), dict(n_kv_heads=1)], ids=["mha", "gqa", "mqa"])
def test_lmlab_generate_uses_the_cache_and_agrees(kw, monkeypatch):
    model = tiny(seed=3, **kw)
    prompt = torch.randint(0, 48, (2, 6), generator=torch.Generator().manual_seed(4))
    calls = []
    original = model.forward_with_cache
    monkeypatch.setattr(model, "forward_with_cache", lambda ids, cache: calls.append(ids.size(1)) or original(ids, cache))
    with_cache = generate(model, prompt, 20, "greedy", use_cache=True)
    assert calls[:3] == [6, 1, 1]  # prefill, then one token per step
    assert torch.equal(with_cache, generate(model, prompt, 20, "greedy", use_cache=False))
    calls.clear()
    beam_cached = generate(model, prompt, 12, "beam", num_beams=3, use_cache=True)
    assert calls and calls[0] == 6 and set(calls[1:]) == {1}  # beams reorder the cache, never rebuild it
    assert torch.equal(beam_cached, generate(model, prompt, 12, "beam", num_beams=3, use_cache=False))


def test_generate_past_the_context_falls_back_without_error():
    model = tiny()
    prompt = torch.randint(0, 48, (1, 30), generator=torch.Generator().manual_seed(5))
    a = generate(model, prompt, 20, "greedy", use_cache=True)  # 50 > context 40: window slides
    assert torch.equal(a, generate(model, prompt, 20, "greedy", use_cache=False))


def test_reorder_selects_rows():
    cache = KVCache(n_layers=2, batch=3, n_kv_heads=1, head_dim=2, max_len=4)
    k = torch.arange(3.0).view(3, 1, 1, 1).expand(3, 1, 2, 2)  # row b holds value b
    for layer in range(2):
        cache.update(layer, k, k + 10)
    out = cache.reorder(torch.tensor([2, 2, 0]))
    assert out is cache
    k_all, v_all = cache.update(0, torch.zeros(3, 1, 1, 2), torch.zeros(3, 1, 1, 2))
    assert k_all[:, 0, 0, 0].tolist() == [2.0, 2.0, 0.0] and v_all[:, 0, 0, 0].tolist() == [12.0, 12.0, 10.0]


def test_cache_memory_accounting():
    model = tiny(n_kv_heads=2)
    _, cache = model.forward_with_cache(torch.zeros(1, 10, dtype=torch.long), KVCache.for_model(model))
    # 2 (K and V) x 2 layers x 2 KV heads x head size 8 x 10 tokens x 4 bytes (fp32)
    assert cache.used_bytes == 2 * 2 * 2 * 8 * 10 * 4
    assert cache.nbytes == 2 * 2 * 2 * 8 * 40 * 4  # the whole context is reserved up front
    mha = tiny()
    _, cache_mha = mha.forward_with_cache(torch.zeros(1, 10, dtype=torch.long), KVCache.for_model(mha))
    assert cache_mha.used_bytes == 2 * cache.used_bytes  # GQA with 2 of 4 heads halves the cache


def test_kv_cache_bytes_reference_numbers():
    assert kv_cache_bytes(40, 40, 128, 8192, 2) == 6_710_886_400  # LLaMA-2-13B, 8K tokens, fp16
    assert kv_cache_bytes(80, 8, 128, 1, 2) == 327_680  # LLaMA-2-70B with GQA-8, per token
    assert kv_cache_bytes(80, 64, 128, 1, 2) == 8 * 327_680  # ... and 8x without GQA
    assert kv_cache_bytes(2, 2, 4, 10, 0.5, batch=3) == 2 * 2 * 2 * 4 * 10 * 3 // 2  # int4
    assert kv_cache_bytes(1, 1, 1, 0, 2) == 0


@pytest.mark.parametrize("make,match", [
    (lambda: kv_cache_bytes(0, 8, 128, 1, 2), r"n_layers must be an int >= 1"),
    (lambda: kv_cache_bytes(1, 8, 128, -1, 2), r"n_tokens must be an int >= 0"),
    (lambda: kv_cache_bytes(1, 8, 128, 1, 0), r"bytes_per_value must be a number > 0"),
    (lambda: KVCache(1, 1, 1, 1, 0), r"max_len must be an int >= 1"),
    (lambda: KVCache(1, 1, 1, 2, 3).update(0, torch.zeros(1, 1, 4, 2), torch.zeros(1, 1, 4, 2)), r"exceed the cache's capacity max_len=3"),
    (lambda: KVCache(1, 1, 1, 2, 3).update(0, torch.zeros(1, 2, 1, 2), torch.zeros(1, 2, 1, 2)), r"k must have shape \(B, nkv, T_new, hs\)"),
    (lambda: KVCache(1, 1, 1, 2, 3).update(0, torch.zeros(1, 1, 1, 2), torch.zeros(1, 1, 2, 2)), r"k and v must have the same shape"),
    (lambda: KVCache(1, 2, 1, 2, 3).reorder(torch.tensor([0, 2])), r"beam_idx must be a 1-D long tensor of row indices in \[0, 2\)"),
    (lambda: KVCache(2, 1, 1, 2, 3).layer(2), r"layer index must be in \[0, 2\)"),
])
def test_bad_input(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_forward_with_cache_bad_input():
    model = tiny()
    with pytest.raises(ValueError, match=r"cache must be a KVCache for batch 2 \(make one with lmlab\.infer\.kv_cache\.KVCache\.for_model"):
        model.forward_with_cache(torch.zeros(2, 3, dtype=torch.long), None)  # the caller makes the cache
    _, cache = model.forward_with_cache(torch.zeros(2, 38, dtype=torch.long), KVCache.for_model(model, batch=2))
    with pytest.raises(ValueError, match=r"exceed context_length=40"):
        model.forward_with_cache(torch.zeros(2, 3, dtype=torch.long), cache)
    with pytest.raises(ValueError, match=r"cache must be a KVCache for batch 1"):
        model.forward_with_cache(torch.zeros(1, 1, dtype=torch.long), cache)
    with pytest.raises(ValueError, match=r"idx must be an integer tensor of shape \(B, T_new\)"):
        model.forward_with_cache(torch.zeros(3, dtype=torch.long), None)


def test_forward_with_cache_rejects_out_of_vocabulary_ids():
    with pytest.raises(ValueError, match=r"token ids in \[0, vocab_size=48\)"):
        tiny().forward_with_cache(torch.tensor([[48]]), None)


def test_decode_step_reference_equals_the_cache_and_sdpa():
    """lmlab.infer.kv_cache.decode_step (lesson 08's graded reference) gives what KVCache + SDPA compute."""
    from lmlab.infer.kv_cache import KVCache, decode_step

    g = torch.Generator().manual_seed(0)
    B, nh, T, hs = 2, 3, 5, 4
    k, v, q = (torch.randn(B, nh, T + 1, hs, generator=g) for _ in range(3))
    out, k_all, v_all = decode_step(k[:, :, :T], v[:, :, :T], q[:, :, T:], k[:, :, T:], v[:, :, T:])
    cache = KVCache(1, B, nh, hs, T + 1)
    cache.update(0, k[:, :, :T], v[:, :, :T])
    k_c, v_c = cache.update(0, k[:, :, T:], v[:, :, T:])
    torch.testing.assert_close(k_all, k_c)
    torch.testing.assert_close(v_all, v_c)
    torch.testing.assert_close(out, torch.nn.functional.scaled_dot_product_attention(q[:, :, T:], k_c, v_c))
