"""Chapter 08 graders, part 3: the KV cache class (``exercises/08_inference.ipynb``, exercise 6). Imported by
:mod:`lmlab.grading.chapters.ch08`.

The protocol is checked on its own (values appended where they belong, in the preallocated storage ``k`` and
``v`` whose shape never changes, ``length`` in tokens, the capacity refused with ``ValueError``); then lmlab's GPT (RoPE, grouped-query
attention) decodes on the learner's cache: prefill + one token a step must give the plain forward pass's logits.
"""

from __future__ import annotations

import torch

from lmlab.grading.assertions import expect_close, expect_equal, expect_tensor, expect_true, seeded_randn
from lmlab.grading.registry import Check, CheckFailed, Exercise, register
from lmlab.model import GPT, ModelConfig


def _protocol(cls):
    cache = cls(2, 3, 2, 4, 10)  # 2 layers, batch 3, 2 K/V heads, head size 4, room for 10 tokens
    expect_equal(cache.batch, 3, "PreallocatedKVCache(2, 3, 2, 4, 10).batch")
    expect_equal(cache.length, 0, "the length of a new cache")
    for name in ("k", "v"):
        expect_tensor(getattr(cache, name, None), f"PreallocatedKVCache(2, 3, 2, 4, 10).{name} (the preallocated storage)",
                      shape=(2, 3, 2, 10, 4))
    seen_k, seen_v = [[], []], [[], []]
    for step, T_new in enumerate((4, 1, 2)):
        for layer in (0, 1):
            k_new = seeded_randn(3, 2, T_new, 4, seed=900 + 10 * step + layer)
            v_new = seeded_randn(3, 2, T_new, 4, seed=950 + 10 * step + layer)
            seen_k[layer].append(k_new)
            seen_v[layer].append(v_new)
            what = f"layer({layer}).update(k_new, v_new) with {T_new} new token(s), after {sum(x.size(2) for x in seen_k[layer][:-1])}"
            out = cache.layer(layer).update(k_new.clone(), v_new.clone())
            expect_true(isinstance(out, tuple) and len(out) == 2, f"{what} must return (keys so far, values so far)")
            k_all, v_all = out
            n = sum(x.size(2) for x in seen_k[layer])
            expect_tensor(k_all, f"{what}: keys so far", shape=(3, 2, n, 4))
            expect_close(k_all, torch.cat(seen_k[layer], 2), f"{what}: keys so far (every earlier token, in order)", atol=0, rtol=0)
            expect_close(v_all, torch.cat(seen_v[layer], 2), f"{what}: values so far", atol=0, rtol=0)
            stored_k, stored_v = cache.k, cache.v
            expect_tensor(stored_k, f"cache.k after {what}", shape=(2, 3, 2, 10, 4))
            expect_close(stored_k[layer, :, :, :n], torch.cat(seen_k[layer], 2), f"cache.k[{layer}, :, :, :{n}] after {what}: "
                         "the preallocated storage must hold the tokens (write them in place; torch.cat makes a new tensor "
                         "and copies the whole cache at every step)", atol=0, rtol=0)
            expect_close(stored_v[layer, :, :, :n], torch.cat(seen_v[layer], 2), f"cache.v[{layer}, :, :, :{n}] after {what}",
                         atol=0, rtol=0)
        expect_equal(cache.length, sum(x.size(2) for x in seen_k[0]),
                     f"cache.length after step {step + 1} (both layers appended {T_new}): it counts tokens, not update calls")
    try:
        cache.layer(0).update(seeded_randn(3, 2, 4, 4, seed=990), seeded_randn(3, 2, 4, 4, seed=991))
    except ValueError:
        return
    raise CheckFailed("appending 4 tokens to a layer holding 7 in a cache of max_len 10 must raise ValueError")


def _in_model(cls):
    torch.manual_seed(930)
    cfg = ModelConfig(vocab_size=19, context_length=24, d_model=16, n_layers=2, n_heads=4, n_kv_heads=2, position="rope")
    model = GPT(cfg).eval()
    ids = torch.randint(19, (2, 12), generator=torch.Generator().manual_seed(931))
    with torch.no_grad():
        full = model(ids)  # (B, T, V): the plain forward pass
        cache = cls(cfg.n_layers, 2, cfg.n_kv_heads, cfg.head_dim, 24)
        logits, cache = model.forward_with_cache(ids[:, :7], cache)  # prefill
        steps = [logits]
        for t in range(7, 12):
            logits, cache = model.forward_with_cache(ids[:, t:t + 1], cache)  # decode: one token
            steps.append(logits)
    expect_close(steps[0], full[:, :7], "GPT (RoPE, 4 query / 2 K/V heads) on your cache: the prefill's logits (7 tokens) vs "
                 "the plain forward pass", atol=1e-5, rtol=1e-4)
    expect_close(torch.cat(steps[1:], 1), full[:, 7:], "the same model, 5 decode steps on your cache vs the plain forward "
                 "pass (a wrong cache.length puts the new tokens at wrong RoPE positions)", atol=1e-5, rtol=1e-4)


register(Exercise(
    id="08.PreallocatedKVCache",
    points=5,
    minutes=30,
    kind="class",
    signature="PreallocatedKVCache(n_layers, batch, n_kv_heads, head_dim, max_len) with .batch, .length, "
              ".layer(i).update(k_new, v_new) -> (keys so far, values so far)",
    hint="allocate the keys and values of every layer once; each update writes the new tokens after that layer's "
         "cached ones and returns views up to there; length counts tokens.",
    hints=(
        "A KV cache trades memory for time: the keys and values of past tokens never change, so keep them and run "
        "only the new token through the model. Real servers preallocate the cache (or its blocks) so that a decode "
        "step writes a few numbers instead of copying everything.",
        "Storage: self.k and self.v shaped (n_layers, batch, n_kv_heads, max_len, head_dim), zeros, made in __init__. "
        "A list with one fill level per layer. update on layer i: the new tokens go to the slots from that layer's "
        "fill level on (slice assignment on the token axis), the fill level moves on, and the return value is the "
        "slice of all slots filled so far (a view). length: layer 0's fill level (the layers agree between passes). "
        "Check the capacity before writing.",
        "# __init__: the two preallocated tensors and the fill levels\n"
        "# length: the number of tokens cached\n"
        "# layer(i): an object whose update(k_new, v_new) does:\n"
        "#     capacity check (ValueError)\n"
        "#     ...  # write k_new, v_new into layer i's next slots (the line to think about)\n"
        "#     ...  # advance the fill level; return the filled slices",
    ),
    checks=(
        Check("the protocol alone: values appended in order into the preallocated k and v, length in tokens, capacity", _protocol),
        Check("lmlab's GPT (RoPE, GQA) decodes on your cache: prefill + 5 steps equal the plain forward pass", _in_model),
    ),
    reference="lmlab.infer.kv_cache:KVCache",
))
