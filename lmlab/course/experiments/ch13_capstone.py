"""Lesson 13's experiments and figures (``lessons/13_capstone``), importable so tests run the same code.

- :func:`lesson_tokenizer`: byte-level BPE trained on the corpus (cached), :func:`merges_rows`.
- :func:`bits_per_byte`: the one loss that compares models with different tokenizers.
- :func:`pretrain_experiment`: your BPE LLaMA vs lesson 00's character-level GPT, same size, same
  steps, both trained with chapter 09's recipe (:data:`RECIPE`), over seeds, in bits per byte on
  the same held-out text (paired test).
- :func:`bpe_figure` and :func:`generation_figure`: the two widgets.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from functools import lru_cache

import plotly.graph_objects as go
import torch
import torch.nn.functional as F

from lmlab.argcheck import check_int
from lmlab.course.experiments.ch09_recipe import BASE as CHAPTER_09
from lmlab.course.stats import paired_comparison
from lmlab.course.widgets import style_figure
from lmlab.data.bpe import BPETokenizer, train_bpe
from lmlab.data.text import char_data, load_corpus
from lmlab.infer.decoding import generate
from lmlab.infer.decoding.logits import filtered_probs
from lmlab.model import GPT, ModelConfig
from lmlab.interop.gguf import load_state_dict_checked
from lmlab.interop.hf import lmlab_to_hf_state_dict, to_hf_config
from lmlab.model.llama import build_llama, llama_config, plugged_state_dict
from lmlab.train.config import TrainConfig
from lmlab.train.loop import seed_everything, train

__all__ = ["RECIPE", "lesson_tokenizer", "merges_rows", "truncated", "bits_per_byte", "PretrainResult",
           "pretrain_experiment", "token_logprobs", "bpe_figure", "generation_figure"]

# Chapter 09's baseline recipe (lmlab.course.experiments.ch09_recipe.BASE) as TrainConfig fields: lmlab's AdamW
# (0.9, 0.95), weight decay 0.1 on matrices only (lmlab.train.optim.param_groups), global-norm clipping at 1.0, 10 steps
# of linear warm-up, then cosine decay to 10 % of the peak at the last step. The peak lr is each experiment's own.
RECIPE = {k: getattr(CHAPTER_09, k) for k in ("optimizer", "betas", "weight_decay", "grad_clip", "schedule", "warmup", "min_lr_ratio")}


@lru_cache(maxsize=4)
def lesson_tokenizer(vocab_size: int = 512) -> BPETokenizer:
    """BPE trained on the corpus' training split (GPT-2 pre-tokenizer, ``<|endoftext|>`` special)."""
    return train_bpe(load_corpus().train, vocab_size, special_tokens=("<|endoftext|>",))


def merges_rows(tok: BPETokenizer, first: int = 12) -> list[tuple[int, str, str, str]]:
    """``(rank, left, right, merged)`` of the first learned merges, bytes shown as text."""
    show = lambda i: tok.vocab[i].decode("utf-8", errors="replace").replace("\n", "\\n").replace(" ", "␣")  # noqa: E731
    return [(r, show(a), show(b), show(new)) for r, ((a, b), new) in enumerate(list(tok.merges.items())[:first])]


def truncated(tok: BPETokenizer, n_merges: int) -> BPETokenizer:
    """The same tokenizer with only its first ``n_merges`` merges (a smaller vocabulary)."""
    check_int(n_merges, "n_merges", "truncated", minimum=0, maximum=len(tok.merges))
    merges = dict(list(tok.merges.items())[:n_merges])
    keep = set(range(256)) | set(merges.values())
    return BPETokenizer({i: b for i, b in tok.vocab.items() if i in keep and i not in tok.special.values()},
                        merges, tok.pattern, tok.special)


@torch.no_grad()
def bits_per_byte(model, ids: list[int] | torch.Tensor, n_bytes: int, window: int | None = None) -> float:
    """Bits per byte of the text whose tokens are ``ids`` (``n_bytes`` UTF-8 bytes): the summed
    next-token loss over consecutive windows, in bits, divided by the bytes. Independent of the
    tokenizer, so a character model and a BPE model can be compared (the first token of each
    window is only context)."""
    ids = torch.as_tensor(ids, dtype=torch.long)
    window = window or model.config.context_length
    model.eval()
    total, start = 0.0, 0
    while start + 1 < len(ids):
        chunk = ids[start:start + window + 1][None]  # (1, <= window + 1)
        logits = model(chunk[:, :-1])
        logits = logits if isinstance(logits, torch.Tensor) else logits.logits
        total += F.cross_entropy(logits[0].float(), chunk[0, 1:], reduction="sum").item()
        start += window
    return total / math.log(2) / n_bytes


@dataclass
class PretrainResult:
    bpe_bpb: list[float]
    char_bpb: list[float]
    seconds: float
    comparison: object
    models: dict = field(default_factory=dict)  # seed 0's models: {"bpe": GPT, "char": GPT}
    histories: dict = field(default_factory=dict)


def pretrain_experiment(steps: int = 150, seeds=(0, 1, 2), vocab_size: int = 512, d_model: int = 64, n_layers: int = 2,
                        n_heads: int = 4, n_kv_heads: int = 2, context_length: int = 64, batch_size: int = 32,
                        lr: float = 3e-3, eval_chars: int = 12_000, parts: dict | None = None,
                        progress: bool = False) -> PretrainResult:
    """Your LLaMA on BPE tokens vs lesson 00's character GPT (learned positions, GELU, LayerNorm),
    same width, depth, steps, batch, peak ``lr`` and recipe, over ``seeds``; bits per byte on the
    first ``eval_chars`` characters of the validation split. Both train with chapter 09's recipe
    (:data:`RECIPE`: warm-up to ``lr``, cosine decay to 10 % at ``steps``) through
    :func:`lmlab.train.loop.train`. ``parts``: the learner's parts (:func:`lmlab.model.llama.build_llama`).
    Confounds: the tokenizer *and* the architecture change, and a BPE window of ``context_length``
    tokens holds ~2x more text than a character window."""
    check_int(steps, "steps", "pretrain_experiment")
    recipe = dict(RECIPE, warmup=min(RECIPE["warmup"], steps), steps=steps, batch_size=batch_size, lr=lr,
                  eval_every=None, progress=progress)  # TrainConfig fields, with each run's seed
    start = time.perf_counter()
    tok = lesson_tokenizer(vocab_size)
    corpus = load_corpus()
    bpe_train = torch.tensor(tok.encode(corpus.train))
    ctok, ctrain, _ = char_data()
    text = corpus.val[:eval_chars]
    n_bytes = len(text.encode("utf-8"))
    bpe_eval, char_eval = tok.encode(text), ctok.encode(text)
    res = PretrainResult([], [], 0.0, None)
    for seed in seeds:
        cfg = llama_config("tiny", vocab_size=tok.vocab_size, d_model=d_model, n_layers=n_layers, n_heads=n_heads,
                           n_kv_heads=n_kv_heads, context_length=context_length)
        bpe_model = build_llama(cfg, parts, seed=seed)
        h_bpe = train(bpe_model, bpe_train, config=TrainConfig(seed=seed, **recipe))
        seed_everything(seed)
        char_model = GPT(ModelConfig(vocab_size=ctok.vocab_size, context_length=context_length, d_model=d_model,
                                     n_layers=n_layers, n_heads=n_heads))
        h_char = train(char_model, ctrain, config=TrainConfig(seed=seed, **recipe))
        res.bpe_bpb.append(bits_per_byte(bpe_model, bpe_eval, n_bytes))
        res.char_bpb.append(bits_per_byte(char_model, char_eval, n_bytes))
        if not res.models:
            res.models, res.histories = {"bpe": bpe_model, "char": char_model}, {"bpe": h_bpe, "char": h_char}
    res.comparison = paired_comparison(res.bpe_bpb, res.char_bpb, "BPE LLaMA", "char GPT", unit="bits/byte",
                                       margin=0.05, seeds=tuple(seeds))  # claim: BPE LLaMA needs fewer bits/byte
    res.seconds = time.perf_counter() - start
    return res


@torch.no_grad()
def token_logprobs(model, tok, text: str) -> list[tuple[str, float]]:
    """``(token text, log2 p(token | earlier tokens))`` for every token of ``text`` after the first."""
    ids = torch.tensor([tok.encode(text)])
    out = model(ids)
    logits = out if isinstance(out, torch.Tensor) else out.logits
    logp = F.log_softmax(logits[0, :-1].float(), -1).gather(-1, ids[0, 1:, None])[:, 0] / math.log(2)
    return [(tok.decode([i]), float(lp)) for i, lp in zip(ids[0, 1:].tolist(), logp)]


# --------------------------------------------------------------------------------------------
# Widgets
# --------------------------------------------------------------------------------------------


def bpe_figure(tok: BPETokenizer, text: str, n_merges: int) -> tuple[go.Figure, str]:
    """The BPE explorer: ``text`` cut into tokens by the first ``n_merges`` merges."""
    small = truncated(tok, n_merges)
    ids = small.encode(text)
    rank = {new: r for r, new in enumerate(small.merges.values())}
    labels = [small.vocab[i].decode("utf-8", errors="replace").replace(" ", "␣").replace("\n", "\\n") for i in ids]
    colors = [rank.get(i, -1) for i in ids]
    fig = go.Figure(go.Bar(x=list(range(len(ids))), y=[len(small.vocab[i]) for i in ids], text=labels,
                           marker=dict(color=colors, colorscale="Viridis", cmin=-1, cmax=max(1, n_merges),
                                       colorbar=dict(title="merge rank")),
                           customdata=[[i, rank.get(i, "byte")] for i in ids],
                           hovertemplate="token %{x}: id %{customdata[0]}, rank %{customdata[1]}<br>%{y} bytes<extra></extra>"))
    fig.update_layout(xaxis_title="token position", yaxis_title="bytes in the token")
    n_bytes = len(text.encode("utf-8"))
    note = f"{len(ids)} tokens for {n_bytes} bytes ({n_bytes / max(1, len(ids)):.2f} bytes/token) with {n_merges} merges"
    return style_figure(fig, "Your BPE: each bar is a token (colour: when its merge was learned; bytes: grey)", height=360), note


def generation_figure(model, tok, prompt: str, temperature: float, top_k: int, top_p: float, use_cache: bool,
                      max_new_tokens: int = 12, chat=None, eos_id: int | None = None) -> tuple[go.Figure, str]:
    """The generation explorer: sample ``max_new_tokens`` tokens (seeded), plot each one's probability."""
    text = chat(prompt) if chat is not None else prompt
    ids = torch.tensor(tok.encode(text))
    kwargs = dict(strategy="greedy") if temperature == 0 else dict(
        strategy="sample", temperature=temperature, top_k=top_k or None, top_p=top_p if top_p < 1 else None,
        generator=torch.Generator().manual_seed(0))
    t0 = time.perf_counter()
    out = generate(model, ids, max_new_tokens, use_cache=use_cache, eos_id=eos_id, **kwargs)
    seconds = time.perf_counter() - t0
    new = out[len(ids):].tolist()
    with torch.no_grad():
        logits = model(out[None, :-1])
        logits = logits if isinstance(logits, torch.Tensor) else logits.logits
        probs = F.softmax(logits[0, len(ids) - 1:].float(), -1).gather(-1, torch.tensor(new)[:, None])[:, 0]
    labels = [tok.decode([i]).replace(" ", "␣").replace("\n", "\\n") for i in new]
    fig = go.Figure(go.Bar(x=list(range(len(new))), y=probs.tolist(), text=labels, name="p(chosen token), unfiltered"))
    # what the sampler drew the first token from: the filtered, renormalised distribution (its tail beyond the
    # 10 most likely tokens, summed), so every control shows its effect even when the sampled text is the same
    first = logits[0, len(ids) - 1].float()
    if temperature == 0:
        dist = F.one_hot(first.argmax(), first.numel()).float()
    else:
        dist = filtered_probs(first, temperature, top_k or None, top_p if top_p < 1 else None)
    top = F.softmax(first, -1).argsort(descending=True)[:10]
    kept = dist[top].tolist() + [float(1 - dist[top].sum())]
    fig.add_scatter(x=[f"#{i + 1}" for i in range(10)] + ["rest"], y=kept, xaxis="x2", yaxis="y", mode="lines+markers",
                    name="first step: what the sampler draws from (10 most likely tokens, then the rest)")
    fig.add_scatter(x=[max(len(new) - 1, 0)], y=[1.02], mode="text", showlegend=False, textposition="middle left",
                    text=[f"{len(new) / seconds:.1f} tokens/s {'with' if use_cache else 'without'} the KV cache"])
    fig.update_layout(xaxis_title="generated token", yaxis_title="probability", yaxis_range=[0, 1.08],
                      xaxis2=dict(overlaying="x", side="top", showgrid=False, title="first step's candidates (by rank)"))
    note = (f"{tok.decode(new, skip_special=True)!r} — {len(new) / seconds:.1f} tokens/s "
            f"({'with' if use_cache else 'without'} the KV cache)")
    return style_figure(fig, "Generation: the probability of each chosen token", height=360), note


# ------------------------------------------------------------------ your parts on the real model (section 4)


def your_model_like(reference: GPT, parts: dict, seed: int = 0) -> GPT:
    """``build_llama(reference.config, parts=parts)`` holding ``reference``'s weights (the same tensors, no
    copy: a learner SwiGLU gets views of lmlab's fused ``up``), in eval mode: the real weights in your model."""
    if not isinstance(reference, GPT):
        raise ValueError(f"reference must be a GPT (e.g. load_gguf(...).model), got {type(reference).__name__}")
    with torch.device("meta"):  # no random init of weights that are replaced next (135 M for SmolLM2)
        model = build_llama(reference.config, parts=parts, seed=seed)
    load_state_dict_checked(model, plugged_state_dict(model, reference.state_dict()), source="reference model", assign=True)
    if any(t.is_meta for t in model.buffers()):  # a part made its own buffers (e.g. RoPE tables): build it for real
        model = build_llama(reference.config, parts=parts, seed=seed)
        load_state_dict_checked(model, plugged_state_dict(model, reference.state_dict()), source="reference model", assign=True)
    if reference.config.tie_embeddings:
        model.lm_head.weight = model.tok_emb.weight
    return model.eval()


def greedy_tokens(model, prompt: torch.Tensor, max_new_tokens: int, generate_fn=None) -> tuple[list[int], float]:
    """Greedy new tokens of ``model`` after ``prompt (T,)`` and the decode speed in tokens/s (prefill included).
    ``generate_fn``: chapter 08's ``generate_with_cache(model, prompt (B, T), n, temperature, top_k, seed)``
    (the learner's), else lmlab's ``generate``; a Hugging Face model uses its own ``generate``."""
    check_int(max_new_tokens, "max_new_tokens", "greedy_tokens")
    start = time.perf_counter()
    with torch.no_grad():
        if hasattr(model, "generate") and not isinstance(model, GPT):  # transformers (stops at its EOS)
            out = model.generate(prompt[None], max_new_tokens=max_new_tokens, do_sample=False)[0]
        elif generate_fn is not None:
            out = generate_fn(model, prompt[None], max_new_tokens, 0.0, None, 0)[0]
        else:
            out = generate(model, prompt, max_new_tokens)
    seconds = time.perf_counter() - start
    new = out[len(prompt):].tolist()
    return new, len(new) / seconds


def same_tokens(a: list[int], b: list[int], eos_id: int | None = None) -> int:
    """How many leading tokens ``a`` and ``b`` share, each cut after its first ``eos_id`` (a generation ends there)."""
    cut = lambda t: t[:t.index(eos_id) + 1] if eos_id in t else t
    a, b = cut(a), cut(b)
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def hf_twin(model: GPT):
    """transformers' ``LlamaForCausalLM`` holding ``model``'s own weight tensors (views, no copy: the lesson's
    memory stays under 1.5 GB with SmolLM2 loaded twice); :func:`lmlab.interop.hf.to_hf` makes a copy instead."""
    if not isinstance(model, GPT):
        raise ValueError(f"model must be an lmlab GPT, got {type(model).__name__}")
    import transformers  # optional dependency, only for the real-model cells

    cfg = model.config
    with torch.device("meta"):
        hf = transformers.LlamaForCausalLM(to_hf_config(cfg))
    sd = {k: v.detach() for k, v in model.state_dict().items()}
    ours = lmlab_to_hf_state_dict(sd, cfg, copy=False)
    if "lm_head.weight" not in hf.state_dict():  # pragma: no cover - depends on the transformers version
        ours.pop("lm_head.weight")
    hf.load_state_dict(ours, assign=True)
    if cfg.tie_embeddings:
        hf.lm_head.weight = hf.model.embed_tokens.weight
    hf.model.rotary_emb = type(hf.model.rotary_emb)(config=hf.config)  # its inv_freq buffer, built for real
    return hf.to(model.tok_emb.weight.dtype).eval()



def layer_divergence(model: GPT, reference: GPT, ids: torch.Tensor) -> list[tuple[str, float]]:
    """Where ``model`` departs from ``reference`` on ``ids (B, T)``: ``(module, max |difference|)`` of every
    block's attention, feed-forward and output, then the logits, in the order they run. The first large
    number names the part to debug (lesson 13: a part that passes grading but changes SmolLM2's answer)."""
    if not isinstance(model, GPT) or not isinstance(reference, GPT):
        raise ValueError("model and reference must be lmlab GPTs (from build_llama / your_model_like)")
    if len(model.blocks) != len(reference.blocks):
        raise ValueError(f"model has {len(model.blocks)} blocks, reference {len(reference.blocks)}: not the same architecture")

    def outputs(m):
        seen, hooks = {}, []
        for i, block in enumerate(m.blocks):
            for name, module in ((f"blocks.{i}.attn", block.attn), (f"blocks.{i}.ffn", block.ffn), (f"blocks.{i}", block)):
                hooks.append(module.register_forward_hook(lambda _m, _a, out, name=name: seen.__setitem__(name, out.detach())))
        try:
            with torch.no_grad():
                seen["logits"] = m(ids)
        finally:
            for h in hooks:
                h.remove()
        return seen

    ours, theirs = outputs(model), outputs(reference)
    return [(name, (ours[name] - theirs[name]).abs().max().item()) for name in ours]
