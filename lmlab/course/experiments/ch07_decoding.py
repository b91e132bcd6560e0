"""Lesson 07's experiments and figures (``lessons/07_decoding``), importable so tests run the same code.

The model is lesson 00's tiny character-level GPT (:func:`lmlab.course.experiments.ch00_tour.train_tiny_gpt`).
A character model has no end-of-sequence token, so the lesson uses the newline character as EOS
(:data:`EOS_CHAR`): "the model finished its line" is a natural stopping point, and it is one token.

- :func:`repetition_experiment`: fraction of repeated 4-grams for greedy vs sampling strategies
  (and the two repetition controls), against real text; :func:`repetition_figure`.
- :func:`temperature_sweep`, :func:`kept_by_filters`: what temperature, top-k and top-p do to a
  confident and to a flat next-token distribution; :func:`temperature_figure`.
- :func:`beam_experiment`: beam size x length penalty -> search score, output length, blank output;
  :func:`beam_figure`.
- :func:`beam_tree` (every step's candidates, kept and pruned, grown one
  :func:`lmlab.infer.decoding.beam_step` at a time) and :func:`beam_tree_figure`.
- :func:`next_token_figure`: the next-token explorer widget's figure.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import plotly.graph_objects as go
import torch
import torch.nn.functional as F
from plotly.subplots import make_subplots

from lmlab.infer.decoding import (
    beam_search,
    beam_step,
    filter_logits,
    generate,
    next_token_logits,
    repetition_rate,
    sequence_logprob,
)
from lmlab.course.widgets import style_figure

__all__ = [
    "EOS_CHAR", "PROMPTS", "STRATEGIES", "show_char", "encode_prompt",
    "repetition_experiment", "real_text_repetition", "repetition_figure",
    "entropy", "temperature_sweep", "kept_by_filters", "temperature_figure",
    "beam_experiment", "beam_figure",
    "BeamTree", "beam_tree", "beam_tree_figure",
    "next_token_figure",
]

EOS_CHAR = "\n"  # the lesson's end-of-sequence: the end of a line (one character, one token)
PROMPTS = ("The ", "def ", "For ", "When")  # same length: one batch, no padding

# name -> generate() options. Greedy decoding and its two repetition controls, then sampling.
STRATEGIES: dict[str, dict] = {
    "greedy": dict(strategy="greedy"),
    "greedy + repetition penalty 1.3": dict(strategy="greedy", repetition_penalty=1.3),
    "greedy + no repeated 4-gram": dict(strategy="greedy", no_repeat_ngram_size=4),
    "sample, t = 1": dict(strategy="sample", temperature=1.0),
    "sample, t = 0.7": dict(strategy="sample", temperature=0.7),
    "top-k = 10": dict(strategy="sample", top_k=10),
    "top-p = 0.9": dict(strategy="sample", top_p=0.9),
}


def show_char(ch: str) -> str:
    """A character as a readable label: space -> '␣', newline -> '⏎', tab -> '⇥'."""
    return {" ": "␣", "\n": "⏎", "\t": "⇥"}.get(ch, ch)


def encode_prompt(tok, prompt: str) -> list[int]:
    """The prompt's ids, dropping characters the tokenizer does not know."""
    return [tok.stoi[c] for c in prompt if c in tok.stoi]


# ---------------------------------------------------------------------------------------------
# Experiment 1: greedy repeats itself
# ---------------------------------------------------------------------------------------------


def _prompt_batch(tok, prompts, copies: int) -> torch.Tensor:
    ids = [tok.encode(p) for p in prompts]
    if len({len(i) for i in ids}) != 1:
        raise ValueError(f"prompts must all have the same length (one batch without padding), got {[len(i) for i in ids]}")
    return torch.tensor(ids).repeat_interleave(copies, dim=0)  # (len(prompts) * copies, T)


def real_text_repetition(tok, text: str, length: int = 200, windows: int = 50, n: int = 4) -> float:
    """The mean repetition rate of ``windows`` evenly spaced ``length``-character windows of real text."""
    stride = max(1, (len(text) - length) // windows)
    rates = [repetition_rate(tok.encode(text[i:i + length]), n) for i in range(0, len(text) - length, stride)][:windows]
    return sum(rates) / len(rates)


@dataclass
class RepetitionResult:
    rates: dict[str, list[float]]  # strategy -> repetition rate of every generated text
    logprob: dict[str, float]  # strategy -> mean log-probability per generated token (the model's own)
    examples: dict[str, str]  # strategy -> the first generated text (prompt included)
    real_text: float  # repetition rate of real validation text of the same length
    max_new_tokens: int
    n: int

    @property
    def mean(self) -> dict[str, float]:
        return {k: sum(v) / len(v) for k, v in self.rates.items()}


def repetition_experiment(model, tok, val_text: str, prompts=PROMPTS, strategies: dict | None = None,
                          samples: int = 3, max_new_tokens: int = 200, n: int = 4, seed: int = 0) -> RepetitionResult:
    """Generate ``samples`` continuations of every prompt with every strategy (greedy ones once: they
    are deterministic) and measure the fraction of repeated ``n``-grams in the generated part."""
    strategies = STRATEGIES if strategies is None else strategies
    rates, logprob, examples = {}, {}, {}
    for name, options in strategies.items():
        copies = 1 if options.get("strategy") == "greedy" else samples
        batch = _prompt_batch(tok, prompts, copies)  # (B, T0)
        T0 = batch.size(1)
        out = generate(model, batch, max_new_tokens, generator=torch.Generator().manual_seed(seed), **options)  # (B, T0 + n)
        rates[name] = [repetition_rate(row[T0:], n) for row in out]
        logprob[name] = float(sequence_logprob(model, out, T0, reduction="mean").mean())
        examples[name] = tok.decode(out[0].tolist())
    real = real_text_repetition(tok, val_text, max_new_tokens, n=n)
    return RepetitionResult(rates, logprob, examples, real, max_new_tokens, n)


def repetition_figure(result: RepetitionResult) -> go.Figure:
    names = list(result.rates)
    mean = result.mean
    colors = ["#d62728" if n.startswith("greedy") else "#3b6fb6" for n in names]
    fig = go.Figure(go.Bar(x=names, y=[mean[n] for n in names], marker_color=colors,
                           text=[f"{mean[n]:.2f}" for n in names], textposition="outside",
                           customdata=[result.logprob[n] for n in names],
                           hovertemplate="%{x}: repetition %{y:.3f}, log p per token %{customdata:.2f}<extra></extra>"))
    for n in names:  # every individual text as a dot
        fig.add_scatter(x=[n] * len(result.rates[n]), y=result.rates[n], mode="markers", showlegend=False,
                        marker=dict(color="black", size=5, opacity=0.5), hoverinfo="skip")
    fig.add_hline(y=result.real_text, line_dash="dash", line_color="gray",
                  annotation_text=f"real text {result.real_text:.2f}", annotation_position="top right")
    fig.update_yaxes(title=f"repeated {result.n}-grams (fraction)", range=[0, 1.05])
    fig.update_xaxes(tickangle=-25)
    fig.update_layout(showlegend=False)
    return style_figure(fig, f"Repetition in {result.max_new_tokens} generated characters", width=720, height=440)


# ---------------------------------------------------------------------------------------------
# Experiment 2: temperature, top-k and top-p on a confident and a flat distribution
# ---------------------------------------------------------------------------------------------


def entropy(probs: torch.Tensor) -> float:
    """Shannon entropy in nats of one distribution (zeros contribute nothing)."""
    p = probs[probs > 0].double()
    return max(0.0, float(-(p * p.log()).sum()))


def temperature_sweep(logits: dict[str, torch.Tensor], temperatures) -> dict[str, dict[str, list[float]]]:
    """For each named next-token distribution and temperature: entropy and the top token's probability."""
    out = {}
    for name, z in logits.items():
        probs = [F.softmax(filter_logits(z, temperature=t).float(), dim=-1) for t in temperatures]
        out[name] = {"entropy": [entropy(p) for p in probs], "top_prob": [float(p.max()) for p in probs]}
    return out


def kept_by_filters(logits: torch.Tensor, top_ks=(1, 5, 20), top_ps=(0.5, 0.9, 0.99)) -> list[dict]:
    """How many tokens each filter keeps, and how much of the original probability they hold."""
    probs = F.softmax(logits.float(), dim=-1)
    rows = []
    for kind, values in (("top-k", top_ks), ("top-p", top_ps)):
        for v in values:
            kept = torch.isfinite(filter_logits(logits, top_k=v) if kind == "top-k" else filter_logits(logits, top_p=v))
            rows.append({"filter": f"{kind} = {v}", "kept": int(kept.sum()), "mass": float(probs[kept].sum())})
    return rows


def temperature_figure(sweep: dict, temperatures, vocab_size: int) -> go.Figure:
    fig = make_subplots(rows=1, cols=2, subplot_titles=("entropy of the distribution", "probability of the top token"))
    colors = ["#3b6fb6", "#ff7f0e", "#2ca02c", "#9467bd"]
    for (name, s), color in zip(sweep.items(), colors):
        fig.add_scatter(x=list(temperatures), y=s["entropy"], name=name, line=dict(color=color), row=1, col=1)
        fig.add_scatter(x=list(temperatures), y=s["top_prob"], name=name, line=dict(color=color), showlegend=False, row=1, col=2)
    fig.add_hline(y=math.log(vocab_size), line_dash="dash", line_color="gray", row=1, col=1,
                  annotation_text=f"uniform: log {vocab_size}", annotation_position="bottom right")
    fig.add_hline(y=1 / vocab_size, line_dash="dash", line_color="gray", row=1, col=2)
    fig.update_xaxes(type="log", title="temperature t")
    fig.update_yaxes(title="nats", row=1, col=1)
    fig.update_yaxes(title="probability", row=1, col=2)
    return style_figure(fig, "Temperature: t → 0 is greedy, t → ∞ is uniform", width=820, height=400)


# ---------------------------------------------------------------------------------------------
# Experiment 3: beam size and length penalty
# ---------------------------------------------------------------------------------------------


def _blank_fraction(text: str) -> float:
    return sum(c.isspace() for c in text) / len(text) if text else 1.0


def beam_experiment(model, tok, prompts=PROMPTS, beam_sizes=(1, 2, 4, 8, 16, 32), length_penalties=(0.0, 1.0),
                    max_new_tokens: int = 60, eos_char: str = EOS_CHAR, early_stopping: bool | str = "never") -> list[dict]:
    """Beam search for every (length penalty, beam size): per row, the means over prompts of the best
    hypothesis' score (what the search maximises), its log-probability, its length, and two measures
    of degenerate text: how much of it is blank (whitespace, EOS excluded) and its fraction of
    repeated 4-grams (:func:`lmlab.infer.decoding.repetition_rate`). One batched ``beam_search`` call per
    setting, with the exact stopping rule (``early_stopping="never"``) by default: the heuristic
    (``False``) can stop before a longer hypothesis that the length penalty would rank higher."""
    eos = tok.stoi[eos_char]
    batch = _prompt_batch(tok, prompts, 1)  # (P, T0)
    T0 = batch.size(1)
    rows = []
    for lp in length_penalties:
        for K in beam_sizes:
            result = beam_search(model, batch, K, max_new_tokens, length_penalty=lp, eos_id=eos,
                                 early_stopping=early_stopping)
            best = [h[0] for h in result.hypotheses]
            texts = [tok.decode(h.ids[T0:].tolist()) for h in best]
            bodies = [t[:-1] if t.endswith(eos_char) else t for t in texts]
            P = len(best)
            rows.append({
                "length_penalty": lp, "beams": K,
                "score": sum(h.score for h in best) / P,
                "logprob": sum(h.sum_logprobs for h in best) / P,
                "logprob_per_token": sum(h.sum_logprobs / h.length for h in best) / P,
                "length": sum(h.length for h in best) / P,
                "blank": sum(_blank_fraction(b) for b in bodies) / P,
                "repeat": sum(repetition_rate(tok.encode(b), 4) for b in bodies) / P,
                "ended": sum(t.endswith(eos_char) for t in texts) / P,
                "texts": [p + t for p, t in zip(prompts, texts)],
            })
    return rows


def beam_figure(rows: list[dict]) -> go.Figure:
    fig = make_subplots(rows=1, cols=3, subplot_titles=("search score (higher = better for the search)",
                                                        "length of the best output",
                                                        "degenerate text: blank (solid), repeated 4-grams (dotted)"))
    colors = ["#d62728", "#3b6fb6", "#2ca02c", "#9467bd"]
    for lp, color in zip(sorted({r["length_penalty"] for r in rows}), colors):
        rs = [r for r in rows if r["length_penalty"] == lp]
        x = [r["beams"] for r in rs]
        name = f"length penalty {lp:g}"
        for col, key in ((1, "score"), (2, "length"), (3, "blank"), (3, "repeat")):
            fig.add_scatter(x=x, y=[r[key] for r in rs], name=name, legendgroup=name, showlegend=col == 1,
                            mode="lines+markers", line=dict(color=color, dash="dot" if key == "repeat" else None),
                            hovertemplate=f"{key}: %{{y:.2f}}<extra>{name}</extra>", row=1, col=col)
    fig.update_xaxes(type="log", title="beam size", tickvals=sorted({r["beams"] for r in rows}))
    fig.update_yaxes(title="characters", row=1, col=2)
    fig.update_yaxes(range=[0, 1], row=1, col=3)
    return style_figure(fig, "Beam search by beam size: the search score against the text it gives", width=820, height=400)


# ---------------------------------------------------------------------------------------------
# One beam-search step, and the beam tree it grows
# ---------------------------------------------------------------------------------------------


@dataclass
class BeamNode:
    step: int  # 1 = the first generated token
    parent: int  # index of the parent among the previous step's kept beams (-1: the prompt)
    token: int
    text: str  # the whole hypothesis, prompt included
    logprob: float  # sum of log-probs of the generated tokens
    rank: int  # rank among the parent's children (0 = the parent's most likely next token)
    kept: bool  # survives into the next step's beam
    beam: int = -1  # its index among the kept beams of its step (-1 if pruned)


@dataclass
class BeamTree:
    prompt: str
    num_beams: int
    steps: list[list[BeamNode]] = field(default_factory=list)  # steps[t]: the shown candidates of step t+1

    def kept(self, step: int) -> list[BeamNode]:
        return sorted((n for n in self.steps[step] if n.kept), key=lambda n: n.beam)

    @property
    def best(self) -> BeamNode:
        return self.kept(len(self.steps) - 1)[0]


def beam_tree(model, tok, prompt: str, num_beams: int = 3, steps: int = 6, children: int = 3) -> BeamTree:
    """Run beam search (no EOS, no length penalty) one :func:`lmlab.infer.decoding.beam_step` at a time and record every
    step: for each running beam its ``children`` most likely continuations (kept or pruned) plus every
    kept one. With the same arguments, the best final beam equals :func:`lmlab.infer.decoding.beam_search`'s."""
    ids = encode_prompt(tok, prompt)
    if not ids:
        raise ValueError("the prompt must contain at least one character the model knows")
    beams = torch.tensor([ids])  # (K, T): one beam, the prompt
    sums = torch.zeros(1)  # (K,)
    tree = BeamTree(prompt, num_beams)
    for step in range(1, steps + 1):
        logprobs = F.log_softmax(next_token_logits(model, beams).float(), dim=-1)  # (K, V)
        beam_idx, token_idx, new_sums, _, _ = beam_step(sums, logprobs, step - 1, [], num_beams, None, 0.0, steps)
        kept = {(int(b), int(t)): j for j, (b, t) in enumerate(zip(beam_idx, token_idx))}
        ranks = torch.sort(logprobs, dim=-1, descending=True, stable=True).indices  # (K, V)
        nodes = []
        for k in range(beams.size(0)):
            shown = [int(v) for v in ranks[k, :children]] + [t for (b, t) in kept if b == k and t not in ranks[k, :children].tolist()]
            for v in shown:
                rank = int((ranks[k] == v).nonzero())
                j = kept.get((k, v), -1)
                nodes.append(BeamNode(step, k, v, tok.decode(beams[k].tolist() + [v]), float(sums[k] + logprobs[k, v]), rank, j >= 0, j))
        tree.steps.append(nodes)
        beams = torch.cat([beams[beam_idx], token_idx[:, None]], dim=1)  # (K', T + 1)
        sums = new_sums
    return tree


def beam_tree_figure(tree: BeamTree) -> tuple[go.Figure, str]:
    """The tree: one column per step; kept hypotheses coloured by log-probability, pruned ones grey.
    Each node is labelled with its character and the hypothesis' log-probability so far."""
    pos: dict[tuple[int, int], float] = {(0, 0): 0.0}  # (step, kept beam index) -> y
    xs_kept, ys_kept, c_kept, t_kept, h_kept = [], [], [], [], []
    xs_pr, ys_pr, t_pr, h_pr = [], [], [], []
    edge_kept_x, edge_kept_y, edge_pr_x, edge_pr_y = [], [], [], []
    for s, nodes in enumerate(tree.steps, start=1):
        order = sorted(nodes, key=lambda n: (pos[(s - 1, n.parent)], n.rank))
        for i, n in enumerate(order):
            y = -float(i)
            if n.kept:
                pos[(s, n.beam)] = y
            px, py = s - 1, pos[(s - 1, n.parent)]
            label = f"{show_char(tok_char(n.text))} {n.logprob:.1f}"
            hover = f"{n.text!r}<br>log p = {n.logprob:.3f}" + ("" if n.kept else " (pruned)")
            if n.kept:
                edge_kept_x += [px, s, None]
                edge_kept_y += [py, y, None]
                xs_kept.append(s), ys_kept.append(y), c_kept.append(n.logprob), t_kept.append(label), h_kept.append(hover)
            else:
                edge_pr_x += [px, s, None]
                edge_pr_y += [py, y, None]
                xs_pr.append(s), ys_pr.append(y), t_pr.append(label), h_pr.append(hover)
    fig = go.Figure()
    fig.add_scatter(x=edge_pr_x, y=edge_pr_y, mode="lines", line=dict(color="#d0d0d0", width=1), hoverinfo="skip", name="pruned")
    fig.add_scatter(x=edge_kept_x, y=edge_kept_y, mode="lines", line=dict(color="#3b6fb6", width=2), hoverinfo="skip", name="kept")
    fig.add_scatter(x=xs_pr, y=ys_pr, mode="markers+text", text=t_pr, textposition="middle right", hovertext=h_pr,
                    hoverinfo="text", marker=dict(color="#cccccc", size=9), textfont=dict(color="#aaaaaa", size=10),
                    name="pruned candidate")
    fig.add_scatter(x=xs_kept, y=ys_kept, mode="markers+text", text=t_kept, textposition="middle right", hovertext=h_kept,
                    hoverinfo="text", name="kept beam",
                    marker=dict(color=c_kept, colorscale="Viridis", size=12, showscale=True,
                                colorbar=dict(title="log p", thickness=12)))
    fig.add_scatter(x=[0], y=[0], mode="markers+text", text=[repr(tree.prompt)], textposition="middle left",
                    marker=dict(color="black", size=12), hoverinfo="skip", name="prompt", showlegend=False)
    fig.update_xaxes(title="step", dtick=1, range=[-1.2, len(tree.steps) + 0.8])
    fig.update_yaxes(visible=False)
    fig.update_layout(legend=dict(orientation="h", y=-0.15))
    best = tree.best
    note = (f"best of {tree.num_beams} beam(s) after {len(tree.steps)} steps: {best.text!r}, log p = {best.logprob:.2f}; "
            f"{sum(not n.kept for s in tree.steps for n in s)} shown candidates pruned")
    return style_figure(fig, "Beam search tree (grey = pruned)", width=820, height=520), note


def tok_char(text: str) -> str:
    return text[-1] if text else ""


# ---------------------------------------------------------------------------------------------
# The next-token explorer
# ---------------------------------------------------------------------------------------------


def next_token_figure(model, tok, prompt: str, temperature: float, top_k: int, top_p: float, show: int = 20,
                      continuation: int = 60, seed: int = 0) -> tuple[go.Figure, str]:
    """Bars for the ``show`` most likely next characters: the model's distribution (grey) and the
    renormalised distribution sampling draws from after temperature -> top-k -> top-p (blue = kept,
    none = removed). ``top_k = 0`` and ``top_p = 1`` switch those filters off. The note shows a
    sampled continuation with the same settings (seeded)."""
    ids = encode_prompt(tok, prompt)
    if not ids:
        return style_figure(go.Figure(), "Type a prompt"), "type at least one character the model knows"
    top_k = None if not top_k else int(top_k)
    top_p = None if top_p >= 1 else float(top_p)
    logits = next_token_logits(model, torch.tensor(ids)).float()  # (V,)
    original = F.softmax(logits, dim=-1)
    filtered = F.softmax(filter_logits(logits, temperature, top_k, top_p).float(), dim=-1)  # (V,)
    kept = filtered > 0
    order = torch.sort(original, descending=True, stable=True).indices[:show]
    labels = [f"{show_char(tok.decode([int(i)]))}" for i in order]
    labels = [f"{lab} " if labels.count(lab) > 1 else lab for lab in labels]
    fig = go.Figure()
    fig.add_bar(x=labels, y=[float(original[i]) for i in order], name="model (t = 1)", marker_color="#c8c8c8")
    fig.add_bar(x=labels, y=[float(filtered[i]) for i in order], name="sampled from (renormalised)",
                marker_color=["#3b6fb6" if kept[i] else "rgba(0,0,0,0)" for i in order],
                marker_line=dict(color=["#3b6fb6" if kept[i] else "#d62728" for i in order], width=1))
    fig.update_layout(barmode="group", legend=dict(orientation="h", y=1.12))
    fig.update_xaxes(title=f"the {show} most likely next characters (⏎ newline, ␣ space)", type="category")
    fig.update_yaxes(title="probability", range=[0, 1.02])
    gen = generate(model, torch.tensor(ids), continuation, "sample", temperature=temperature, top_k=top_k, top_p=top_p,
                   generator=torch.Generator().manual_seed(seed))
    text = tok.decode(gen[len(ids):].tolist())
    note = (f"keeps {int(kept.sum())} of {len(kept)} characters ({float(original[kept].sum()):.0%} of the model's probability); "
            f"sampled: {prompt!r} + {text!r}")
    return style_figure(fig, f"Next character after {prompt[-30:]!r}", width=760, height=420), note
