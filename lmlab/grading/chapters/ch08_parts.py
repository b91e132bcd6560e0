"""Chapter 08 graders, part 2 (``exercises/08_inference.ipynb``): the KV-cache-aware generation loop
(prefill once, then filter -> sample -> append, feeding only the new token). Imported by
:mod:`lmlab.grading.chapters.ch08`. The learner's loop gets a model whose full ``forward`` refuses to run,
so it must decode with ``forward_with_cache``; its tokens are compared with a loop written here that
re-runs the whole sequence every step (no cache) and draws from the same seeded generator.
"""

from __future__ import annotations

import torch

from lmlab.grading.assertions import expect_close, expect_tensor
from lmlab.grading.registry import Check, Exercise, register
from lmlab.grading.seeds import check_generator, global_seed, salted
from lmlab.infer.decoding import generate
from lmlab.model import GPT, ModelConfig


class CacheOnlyGPT(GPT):
    """A GPT whose full forward raises: decode with ``forward_with_cache`` (prefill, then one token a step)."""

    def forward(self, *args, **kwargs):
        raise RuntimeError("this model only decodes with its KV cache: call model.forward_with_cache(ids, cache) "
                           "(cache = lmlab.infer.kv_cache.KVCache.for_model(model, batch=B) for the prompt), then feed only the new token each step")


def _model(seed, **kw):
    cfg = ModelConfig(vocab_size=17, context_length=32, d_model=16, n_layers=2, n_heads=4, **kw)
    with global_seed(seed):
        model = CacheOnlyGPT(cfg).eval()
    g = check_generator(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3, generator=g)  # peaked enough that greedy and sampling differ visibly
    return model


@torch.no_grad()
def _no_cache_loop(model, prompt, n, temperature, top_k, seed):
    g = torch.Generator().manual_seed(seed)  # the seed the learner's loop was given (already salted)
    ids = prompt.clone()
    for _ in range(n):
        z = GPT.forward(model, ids)[:, -1, :]  # (B, V): the whole sequence again, no cache
        if temperature == 0:
            nxt = z.argmax(-1, keepdim=True)
        else:
            z = z / temperature
            if top_k is not None:
                z = z.masked_fill(z < torch.topk(z, top_k, dim=-1).values[:, -1:], float("-inf"))
            nxt = torch.multinomial(torch.softmax(z, dim=-1), 1, generator=g)  # (B, 1)
        ids = torch.cat([ids, nxt], dim=1)
    return ids


def _gen_case(f, model, prompt, n, temperature, top_k, seed):
    seed = salted(seed)
    what = f"generate_with_cache(model, prompt {tuple(prompt.shape)}, max_new_tokens={n}, temperature={temperature}, top_k={top_k}, seed={seed})"
    got = expect_tensor(f(model, prompt.clone(), n, temperature, top_k, seed), what, shape=(prompt.size(0), prompt.size(1) + n))
    expect_close(got, _no_cache_loop(model, prompt, n, temperature, top_k, seed), what + " vs the same loop re-running the whole "
                 "sequence each step (same seed: one torch.multinomial draw per step)", atol=0, rtol=0)


def _gen_greedy(f):
    model = _model(800)
    _gen_case(f, model, torch.tensor([[1, 2, 3], [4, 5, 6]]), 10, 0.0, None, 0)


def _gen_sample(f):
    model = _model(810)
    prompt = torch.tensor([[3, 1, 4, 1, 5], [9, 2, 6, 5, 3]])
    _gen_case(f, model, prompt, 12, 0.8, 5, 1)
    _gen_case(f, model, prompt, 12, 1.5, None, 2)
    _gen_case(f, _model(820, position="rope", n_kv_heads=2), prompt[:1], 8, 1.0, 3, 3)


register(Exercise(
    id="08.generate_with_cache",
    points=4,
    minutes=25,
    signature="generate_with_cache(model, prompt: (B, T) ids, max_new_tokens: int, temperature: float, top_k: int | None, "
              "seed: int) -> (B, T + max_new_tokens) ids",
    hint="run the prompt through the model once; after that the model only needs the token you just chose.",
    hints=(
        "Generation with a KV cache has two phases: a prefill that runs the whole prompt once and fills the cache, and a "
        "decode loop in which each step feeds only the newest token, so each step costs one token instead of the whole sequence.",
        "The prefill, model.forward_with_cache on the whole prompt with a new cache (KVCache.for_model(model, batch=B), "
        "from lmlab.infer.kv_cache), gives (B, T, V) logits and the cache. Each step: take the last position's logits "
        "(B, V); temperature 0 means argmax; otherwise divide by temperature, keep the top_k largest (others -inf), softmax, "
        "and draw with torch.multinomial(probs, 1, generator=g), g a torch.Generator seeded with seed. Append the "
        "(B, 1) token to the ids and feed just it: model.forward_with_cache(next_token, cache).",
        "g = ...  # a generator seeded with seed\nlogits, cache = ...  # prefill\nids = prompt\nfor step in range(...):\n"
        "    z = logits[:, -1, :]\n    ...  # filter, then sample (or argmax)\n    ids = ...  # append\n"
        "    if ...:  # not after the last token\n        logits, cache = ...  # decode: only the new token\nreturn ids",
    ),
    checks=(
        Check("greedy (temperature 0) equals the loop without a cache", _gen_greedy),
        Check("sampling with temperature and top-k, same seed, equals the loop without a cache (also RoPE + GQA)", _gen_sample),
    ),
    reference="lmlab.grading.chapters.ch08_parts:reference_generate_with_cache",
))


def reference_generate_with_cache(model, prompt, max_new_tokens, temperature, top_k, seed):
    """lmlab's :func:`lmlab.infer.decoding.generation` (KV cache on) with the exercise's arguments: greedy at temperature 0."""
    if temperature == 0:
        return generate(model, prompt, max_new_tokens, "greedy", generator=torch.Generator().manual_seed(seed))
    return generate(model, prompt, max_new_tokens, "sample", temperature=temperature, top_k=top_k,
                    generator=torch.Generator().manual_seed(seed))
