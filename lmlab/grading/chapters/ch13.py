"""Chapter 13 graders (``exercises/13_capstone.ipynb``): a BPE merge step, BPE encoding, the GGUF
-> lmlab weight mapping with llama.cpp's q/k permutation, and a LLaMA block.

The checks build their expectations independently: pair counts with ``collections.Counter`` and
merges applied one after the other in learning order; GGUF tensors written from an lmlab model by
llama.cpp's own ``permute`` (std-0.5 weights, so a missing permute cannot hide under 1e-2); and the
block against lmlab's ``GPT`` block with a large RMSNorm eps and grouped K/V heads.
"""

from __future__ import annotations

from collections import Counter

import torch

from lmlab.data.bpe import train_bpe
from lmlab.grading.assertions import expect_close, expect_equal, expect_true, seeded_randn
from lmlab.grading.registry import Check, Exercise, register
from lmlab.grading.seeds import check_generator, global_seed
from lmlab.model import GPT
from lmlab.model.llama import llama_config

# The notebook's order (13_capstone.py): the score table and the exercise notebook follow it.
EXERCISES = (
    "13.bpe_merge_step",
    "13.bpe_encode",
    "13.gguf_to_lmlab",
    "13.llama_block",
)


# ---------------------------------------------------------------------------------------------
# 13.bpe_merge_step
# ---------------------------------------------------------------------------------------------


def _expected_step(chunks, new_id):
    counts = Counter(p for c in chunks for p in zip(c, c[1:]))
    top = max(counts.values())
    pair = min(p for p, n in counts.items() if n == top)  # most frequent, then the smallest pair
    out = []
    for c in chunks:
        merged, i = [], 0
        while i < len(c):
            if tuple(c[i:i + 2]) == pair:
                merged.append(new_id)
                i += 2
            else:
                merged.append(c[i])
                i += 1
        out.append(merged)
    return pair, out


def _step_call(f, chunks, new_id, what):
    got = f([list(c) for c in chunks], new_id)
    expect_true(isinstance(got, tuple) and len(got) == 2, f"{what} should return a tuple (pair, new_chunks), got {type(got).__name__}")
    pair, new = got
    pair = tuple(int(v) for v in pair) if isinstance(pair, (tuple, list)) else pair
    new = [[int(v) for v in c] for c in new] if isinstance(new, list) else new
    return pair, new


def _step_random(f):
    g = check_generator(13)
    for trial in range(4):
        chunks = [torch.randint(0, 5, (int(torch.randint(1, 9, (1,), generator=g)),), generator=g).tolist() for _ in range(12)]
        what = f"bpe_merge_step({chunks[:3]}..., 256) (random chunks, trial {trial})"
        expect_equal(_step_call(f, chunks, 256, what), _expected_step(chunks, 256), what)


def _step_ties_and_overlaps(f):
    cases = [([[3, 4, 1, 2], [3, 4, 1, 2]], "(1, 2) and (3, 4) both occur twice: the smaller pair wins"),
             ([[2, 1, 1, 3], [2, 1, 1, 3]], "(1, 1), (1, 3), (2, 1) tie: compare the first id, then the second"),
             ([[5, 5, 5, 5, 5]], "(5, 5) overlaps itself: merge left to right, non-overlapping"),
             ([[1], [1], [1], [2, 3]], "pairs never cross chunk boundaries")]
    for chunks, why in cases:
        what = f"bpe_merge_step({chunks}, 300)"
        expect_equal(_step_call(f, chunks, 300, what), _expected_step(chunks, 300), what + f" — {why}")


register(Exercise(
    id="13.bpe_merge_step",
    points=2,
    signature="bpe_merge_step(chunks: list[list[int]], new_id: int) -> (pair: tuple[int, int], new_chunks: list[list[int]])",
    hint="count adjacent pairs inside each chunk; pick the most frequent (ties: the smallest pair); then rewrite every chunk "
         "left to right.",
    minutes=15,
    hints=(
        "Training byte-level BPE repeats one step: count every adjacent pair of ids and merge the most frequent pair "
        "into a new id. Pairs never cross chunk boundaries (the pre-tokenizer's words).",
        "Count the pairs zip(ids, ids[1:]) of every chunk in one dict. The best pair has the largest count; on a tie, "
        "the smallest pair (a, b). Then rewrite each chunk left to right: where the best pair starts at i, emit new_id "
        "and jump two, otherwise copy ids[i] and move one (so 'a a a' with pair (a, a) becomes 'X a').",
        "counts = ...  # pair -> how often it occurs, over every chunk\n"
        "best = ...    # most frequent, then smallest\n"
        "# rewrite each chunk with an index i that moves one or two places:\n"
        "#   best starts at i -> new_id; otherwise ids[i]\n"
        "return best, ...",
    ),
    checks=(
        Check("random chunks: the most frequent pair, merged in every chunk", _step_random),
        Check("ties go to the smallest pair; overlapping pairs; no pairs across chunks", _step_ties_and_overlaps),
    ),
    reference="lmlab.data.bpe:bpe_merge_step",
))

# ---------------------------------------------------------------------------------------------
# 13.bpe_encode
# ---------------------------------------------------------------------------------------------


def _apply_in_order(ids, merges):
    for (a, b), new in merges.items():  # learning order: every merge once, earliest first
        out, i = [], 0
        while i < len(ids):
            if i + 1 < len(ids) and ids[i] == a and ids[i + 1] == b:
                out.append(new)
                i += 2
            else:
                out.append(ids[i])
                i += 1
        ids = out
    return ids


def _encode_call(f, ids, merges, what):
    got = f(list(ids), dict(merges))
    expect_true(isinstance(got, list), f"{what} should return a list of ints, got {type(got).__name__}")
    return [int(v) for v in got]


def _encode_order(f):
    a, b, c, d = 97, 98, 99, 100
    merges = {(b, c): 256, (a, b): 257, (256, d): 258}
    what = "bpe_encode(list(b'abcd'), {(b,c): 256, (a,b): 257, (256,d): 258})"
    expect_equal(_encode_call(f, [a, b, c, d], merges, what), [a, 258], what + " — (b, c) was learned first, so it wins over (a, b)")
    merges = {(a, a): 256, (256, a): 257}
    what = "bpe_encode(list(b'aaaaa'), {(a,a): 256, (256,a): 257})"
    expect_equal(_encode_call(f, [a] * 5, merges, what), _apply_in_order([a] * 5, merges), what)


def _encode_trained(f):
    text = ("The tokenizer of GPT-2 merges the most frequent pair of bytes; then it repeats. " * 8
            + "Ünïcödé and 数字 12345 too.")
    merges = train_bpe(text, 256 + 60).merges
    for word in (" the", " tokenizer", " frequent", "Ünïcödé", " merges the pair", " 12345", "x"):
        ids = list(word.encode("utf-8"))
        what = f"bpe_encode(list({word!r}.encode()), merges of a tokenizer trained on a short text)"
        expect_equal(_encode_call(f, ids, merges, what), _apply_in_order(ids, merges), what)


register(Exercise(
    id="13.bpe_encode",
    points=2,
    signature="bpe_encode(ids: list[int], merges: dict[(int, int), int]) -> list[int]",
    hint="Look for the adjacent pair whose merge was learned earliest (its position in merges), merge it everywhere, repeat until none applies.",
    minutes=15,
    hints=(
        "Encoding with learned merges applies them in the order they were learned, not by how often pairs occur in "
        "this text: at each step merge the adjacent pair whose merge is earliest, until no pair has a merge (as "
        "Hugging Face's tokenizers and tiktoken do).",
        "Give every merge its rank (its position in merges). Loop: list the adjacent pairs that have a rank; if there "
        "are none, stop; the best is the one with the smallest rank; rewrite the sequence left to right, replacing "
        "each occurrence of best with merges[best]. Do not change the caller's list.",
        "rank = ...  # pair -> its position in merges\n"
        "while ...:  # while there are at least two ids\n"
        "    pairs = ...  # adjacent pairs that have a merge (none: stop)\n"
        "    best = ...   # the one learned earliest\n"
        "    ids = ...    # a new list, rewritten left to right (the caller's list stays as it was)\n"
        "return ids",
    ),
    checks=(
        Check("merges apply in learning order, not in text order", _encode_order),
        Check("equals the merges of a trained tokenizer applied one by one", _encode_trained),
    ),
    reference="lmlab.data.bpe:apply_merges",
))

# ---------------------------------------------------------------------------------------------
# 13.gguf_to_lmlab
# ---------------------------------------------------------------------------------------------


def _llama_cpp_permute(w, n_head):  # llama.cpp convert_hf_to_gguf.py, LlamaModel.permute
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _tiny(tied, seed):
    cfg = llama_config(vocab_size=40, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=24, context_length=16,
                       tie_embeddings=tied, norm_eps=1e-5)
    with global_seed(seed):  # every weight is overwritten below; the lock keeps other checks' draws apart
        model = GPT(cfg).eval()
    with torch.no_grad():
        for i, p in enumerate(model.parameters()):
            p.copy_(seeded_randn(*p.shape, seed=seed * 100 + i, scale=0.5) + (1.0 if p.dim() == 1 else 0.0))
    return cfg, model


def _as_gguf(model):
    cfg, sd = model.config, model.state_dict()
    C, kv, F = cfg.d_model, cfg.n_kv_heads * cfg.head_dim, cfg.d_ff
    out = {"token_embd.weight": sd["tok_emb.weight"], "output_norm.weight": sd["final_norm.weight"]}
    if not cfg.tie_embeddings:
        out["output.weight"] = sd["lm_head.weight"]
    for i in range(cfg.n_layers):
        q, k, v = sd[f"blocks.{i}.attn.qkv.weight"].split([C, kv, kv])
        up, gate = sd[f"blocks.{i}.ffn.up.weight"].split([F, F])
        out |= {f"blk.{i}.attn_q.weight": _llama_cpp_permute(q, cfg.n_heads),
                f"blk.{i}.attn_k.weight": _llama_cpp_permute(k, cfg.n_kv_heads), f"blk.{i}.attn_v.weight": v,
                f"blk.{i}.attn_output.weight": sd[f"blocks.{i}.attn.proj.weight"],
                f"blk.{i}.attn_norm.weight": sd[f"blocks.{i}.norm1.weight"],
                f"blk.{i}.ffn_norm.weight": sd[f"blocks.{i}.norm2.weight"],
                f"blk.{i}.ffn_up.weight": up, f"blk.{i}.ffn_gate.weight": gate,
                f"blk.{i}.ffn_down.weight": sd[f"blocks.{i}.ffn.down.weight"]}
    return {k: v.clone() for k, v in out.items()}


def _mapping_check(f, tied):
    cfg, ref = _tiny(tied, seed=3 if tied else 4)
    what = f"gguf_to_lmlab(tensors, cfg) ({'tied' if tied else 'untied'} embeddings, 4 query / 2 K/V heads, std-0.5 weights)"
    got = f(_as_gguf(ref), cfg)
    expect_true(isinstance(got, dict), f"{what} should return a dict name -> tensor, got {type(got).__name__}")
    with global_seed(0):
        model = GPT(cfg).eval()
    own = model.state_dict()
    missing = sorted(set(own) - set(got) - ({"lm_head.weight"} if tied else set()))
    expect_true(not missing, f"{what} is missing {missing[:3]} (lmlab's names: see GPT().state_dict().keys())")
    for name, t in own.items():
        if name in got:
            expect_true(isinstance(got[name], torch.Tensor) and tuple(got[name].shape) == tuple(t.shape),
                        f"{what}: {name} should have shape {tuple(t.shape)}, got {tuple(getattr(got[name], 'shape', ()))}")
    with torch.no_grad():
        for name, t in own.items():
            t.copy_(got.get(name, got["tok_emb.weight"]))
        ids = torch.arange(16).remainder(40)[None]
        expect_close(model(ids), ref(ids), what + ": the loaded model's logits (undo llama.cpp's q/k permute per head: "
                     "n_heads for W_q, n_kv_heads for W_k; up is the value half, gate the second)", atol=1e-4, rtol=0)


register(Exercise(
    id="13.gguf_to_lmlab",
    points=3,
    signature="gguf_to_lmlab(tensors: dict[str, Tensor], cfg: ModelConfig) -> dict[str, Tensor] (an lmlab GPT state dict)",
    hint="Rename each blk.i.* tensor; W_q and W_k come back from llama.cpp's interleaved rows per head (reshape, swap two axes); cat q, k, v and up, gate.",
    minutes=20,
    hints=(
        "GGUF (llama.cpp) names tensors differently (blk.i.attn_q.weight, ...) and stores W_q and W_k with each head's "
        "rows interleaved for its RoPE layout. Loading the real SmolLM2 into lmlab means renaming, undoing that "
        "permutation, and fusing q, k, v (and up, gate) the way lmlab's layers expect.",
        "Top level: token_embd -> tok_emb, output_norm -> final_norm; lm_head is output.weight if present, otherwise "
        "the tied token embedding. Per layer i: attn_norm -> norm1, ffn_norm -> norm2, attn_output -> attn.proj, "
        "ffn_down -> ffn.down; attn.qkv joins the q, k, v rows; ffn.up joins the up rows, then the gate rows. "
        "Un-permute q (with n_heads) and k (with n_kv_heads): reshape to (n, hs/2, 2, C), swap the two middle axes, "
        "reshape back to (rows, C).",
        "def unpermute(w, n):  # n heads\n    rows, C = w.shape\n"
        "    return ...  # (n, ?, 2, C), swap axes 1 and 2, back to (rows, C)\n\n"
        "sd = {...}  # embeddings and the final norm\n"
        "sd[\"lm_head.weight\"] = ...  # output.weight, or the tied embedding\nfor i in ...:  # every layer\n"
        "    ...  # rename, un-permute q and k, concatenate\nreturn sd",
    ),
    checks=(
        Check("an untied GQA LLaMA's logits survive the round trip through GGUF names", lambda f: _mapping_check(f, False)),
        Check("tied embeddings: no output.weight in the file", lambda f: _mapping_check(f, True)),
    ),
    reference="lmlab.interop.gguf:gguf_to_lmlab",
))

# ---------------------------------------------------------------------------------------------
# 13.llama_block
# ---------------------------------------------------------------------------------------------


def _block_case(f, n_heads, n_kv_heads, eps, base, seed):
    cfg = llama_config(vocab_size=16, d_model=32, n_layers=1, n_heads=n_heads, n_kv_heads=n_kv_heads, d_ff=40,
                       context_length=12, norm_eps=eps, rope_base=base)
    with global_seed(seed):
        block = GPT(cfg).eval()
    with torch.no_grad():
        for i, p in enumerate(block.parameters()):
            p.copy_(seeded_randn(*p.shape, seed=seed * 50 + i, scale=0.5) + (1.0 if p.dim() == 1 else 0.0))
    C, kv, F = 32, n_kv_heads * (32 // n_heads), 40
    b = block.blocks[0]
    q, k, v = b.attn.qkv.weight.detach().split([C, kv, kv])
    up, gate = b.ffn.up.weight.detach().split([F, F])
    w = {"norm1": b.norm1.weight.detach(), "norm2": b.norm2.weight.detach(), "wq": q, "wk": k, "wv": v,
         "wo": b.attn.proj.weight.detach(), "w_up": up, "w_gate": gate, "w_down": b.ffn.down.weight.detach()}
    x = seeded_randn(2, 12, C, seed=seed, scale=2.0)
    pos = torch.arange(12)
    with torch.no_grad():
        expected = b(x, positions=block.position.for_attention(pos, pos))
    what = f"llama_block(x (2, 12, 32), w, n_heads={n_heads}, n_kv_heads={n_kv_heads}, eps={eps}, rope_base={base})"
    got = f(x.clone(), {k_: t.clone() for k_, t in w.items()}, n_heads, n_kv_heads, eps, base)
    expect_close(got, expected, what + " vs lmlab's LLaMA block", atol=1e-4, rtol=1e-4)


register(Exercise(
    id="13.llama_block",
    points=3,
    signature="llama_block(x: (B, T, C), w: dict of weights, n_heads, n_kv_heads, eps, rope_base) -> (B, T, C)",
    hint="Pre-norm residuals: x + attn(norm1(x)), then + ffn(norm2(.)); RoPE on q and k (half-split pairs); query head h uses K/V head h // (n_heads // n_kv_heads).",
    minutes=25,
    hints=(
        "A LLaMA block is a pre-norm block with RMSNorm, grouped-query attention with RoPE on queries and keys, and a "
        "SwiGLU FFN: the parts you built in chapters 01 to 04, now from a dict of raw weights.",
        "h = RMSNorm(x) with w['norm1'] and eps. q from wq: (B, nh, T, hs); k and v from wk, wv: (B, nkv, T, hs). RoPE "
        "(half-split, positions 0..T-1, base rope_base) on q and k only. Repeat k and v so query head h reads K/V head "
        "h // (nh // nkv). Causal softmax(q k^T / sqrt(hs)) v -> (B, T, C) -> through wo, added to x. Then add "
        "w_down(silu(w_gate h2) * w_up h2), with h2 = RMSNorm(x) using w['norm2']. Weights are (out, in): use t @ W.T.",
        "hs = ...    # the head size\nrms = ...   # a helper: RMSNorm of t with gain g and eps\n"
        "rope = ...  # a helper: (B, heads, T, hs), half-split, positions 0..T-1\n\nh = ...  # norm1\nq = ...\nk, v = ...\n"
        "...  # share K/V heads, causal attention\nx = x + ...\nh = ...  # norm2\nreturn x + ...  # SwiGLU",
    ),
    checks=(
        Check("multi-head (4/4), eps 1e-5, base 10000", lambda f: _block_case(f, 4, 4, 1e-5, 10000.0, 1)),
        Check("grouped-query (4 query / 2 K/V heads), a large eps (0.5), base 500", lambda f: _block_case(f, 4, 2, 0.5, 500.0, 2)),
    ),
    reference="lmlab.model.llama:llama_block",
))
