"""Lesson 05's experiments and figures (``lessons/05_objectives``), importable so tests run the same code.

One tiny decoder-only GPT architecture is trained with each objective of :mod:`lmlab.data.objectives`
(``causal``, ``prefix``, ``span`` = T5's R-denoiser, ``ul2`` = the mixture) for the same steps,
batch and sequence length (equal compute), over several seeds (same seed = same initialisation and
same raw windows for every objective). Each model is then asked, in its own format:

- **LM**: continue held-out text from a fixed prefix; the loss on the suffix tokens
  (:func:`lm_suffix_loss`);
- **span filling**: held-out text with T5 masks (r=0.15, mu=3); the loss and accuracy on the
  masked tokens (:func:`span_fill_scores`). Span-trained models read the sentinel inputs (both
  sides of each span); causal/prefix models see the same text left of each span only (they never
  saw a sentinel);
- **mode switching** (UL2 model): the same inputs with a different mode token (:func:`mode_switch_scores`).

:func:`objectives_experiment` runs it all; :func:`objective_verdicts` turns the numbers into
sentences with :func:`lmlab.course.stats.paired_comparison`. Figures: :func:`results_figure`,
:func:`span_explorer_figure` and :func:`mixture_figure` (the widgets').
"""

from __future__ import annotations

import html
import time

import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from lmlab.data.text import char_data
from lmlab.data.masks import prefix_lm_mask
from lmlab.model import GPT, ModelConfig
from lmlab.data.objectives import (OBJECTIVES, UL2_DENOISERS, Example, ExtraIdTokenizer, causal_lm_example, collate,
                          decoder_only_example, masked_lm_loss, prefix_lm_example, raw_length_for,
                          sample_objective_batch, span_corruption_example, ul2_example)
from lmlab.data.span_corruption import mask_spans, noise_counts, random_spans_noise_mask, span_corruption
from lmlab.course.stats import holm, paired_comparison
from lmlab.train.loop import seed_everything
from lmlab.argcheck import check_choice, check_int
from lmlab.course.widgets import style_figure

__all__ = [
    "SETUP", "course_tokenizer", "tiny_model", "train_objective", "eval_windows", "lm_suffix_loss",
    "span_fill_scores", "mode_switch_scores", "fill_spans", "objectives_experiment", "objective_verdicts",
    "results_figure", "span_explorer_figure", "mixture_figure",
]

SETUP = dict(seq_len=48, d_model=64, n_layers=2, n_heads=4, batch_size=16, steps=120, lr=3e-3)


def course_tokenizer() -> tuple[ExtraIdTokenizer, torch.Tensor, torch.Tensor]:
    """The course's character tokenizer with the extra ids, and the train / validation ids."""
    tok, train_ids, val_ids = char_data()
    return ExtraIdTokenizer(tok), train_ids, val_ids


def tiny_model(vocab_size: int, seq_len: int = 64, d_model: int = 64, n_layers: int = 2, n_heads: int = 4, seed: int = 0) -> GPT:
    """The one architecture every objective trains (seeded: same seed, same initial weights)."""
    torch.manual_seed(seed)
    return GPT(ModelConfig(vocab_size=vocab_size, context_length=seq_len, d_model=d_model, n_layers=n_layers, n_heads=n_heads))


def _forward(model: GPT, batch: Example) -> torch.Tensor:
    return model(batch.inputs, batch.attn_mask)  # (B, T, V): the per-example mask replaces the causal one


def train_objective(objective: str, tok: ExtraIdTokenizer, train_ids: torch.Tensor, *, seed: int = 0, steps: int = 150,
                    batch_size: int = 16, seq_len: int = 64, lr: float = 3e-3, d_model: int = 64, n_layers: int = 2,
                    n_heads: int = 4, snapshot_at: int | None = None) -> tuple[GPT, dict]:
    """Train :func:`tiny_model` with one objective (AdamW, clip 1.0). Returns the model and a dict:
    ``losses``, ``trained_tokens`` (positions that got a loss), ``input_tokens``, ``seconds`` and,
    with ``snapshot_at``, ``snapshot`` (a copy of the model after that many steps)."""
    check_choice(objective, "objective", OBJECTIVES, "train_objective")
    steps = check_int(steps, "steps", "train_objective")
    model = tiny_model(tok.vocab_size, seq_len, d_model, n_layers, n_heads, seed)
    gen = seed_everything(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1)
    out = dict(objective=objective, seed=seed, losses=[], trained_tokens=0, input_tokens=0, snapshot=None)
    t0 = time.perf_counter()
    model.train()
    for step in range(1, steps + 1):
        batch, _ = sample_objective_batch(objective, train_ids, batch_size, seq_len, tok, gen)
        loss = masked_lm_loss(_forward(model, batch), batch.targets, batch.loss_mask)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        out["losses"].append(loss.item())
        out["trained_tokens"] += int(batch.loss_mask.sum())
        out["input_tokens"] += batch.inputs.numel()
        if step == snapshot_at:
            out["snapshot"] = model.with_config().eval()
            out["snapshot_trained_tokens"] = out["trained_tokens"]
    out["seconds"] = time.perf_counter() - t0
    return model.eval(), out


def eval_windows(val_ids: torch.Tensor, n: int, length: int, seed: int = 1234) -> list[list[int]]:
    """``n`` fixed random windows of ``length`` held-out tokens (the same for every model)."""
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(len(val_ids) - length, (n,), generator=g).tolist()
    return [val_ids[s:s + length].tolist() for s in starts]


def _suffix_example(objective: str, window: list[int], P: int, tok: ExtraIdTokenizer) -> tuple[Example, int]:
    """The example that asks a model trained with ``objective`` to continue ``window[:P]``, and how
    many of its last trained positions predict the suffix ``window[P:]``."""
    if objective == "causal":
        return causal_lm_example(window), len(window) - P
    if objective == "prefix":
        return prefix_lm_example(window, P), len(window) - P
    if objective == "ul2":  # the S-denoiser: [S] + prefix, then the suffix
        return decoder_only_example([tok.mode_id("[S]")] + window[:P], window[P:]), len(window) - P
    # span corruption (R): the suffix is one span at the end; its sentinel is predicted first
    mask = [False] * P + [True] * (len(window) - P)
    return span_corruption_example(window, mask, tok.vocab_size, tok.mode_id("[R]")), len(window) - P


def _scored(batch: Example, keep: list[torch.Tensor]) -> Example:
    return batch._replace(loss_mask=torch.stack(keep))


@torch.no_grad()
def lm_suffix_loss(model: GPT, objective: str, tok: ExtraIdTokenizer, windows: list[list[int]], prefix_len: int) -> float:
    """Mean loss (nats) on the suffix tokens ``window[prefix_len:]``, the model asked in its own format."""
    rows, keep = [], []
    for w in windows:
        ex, n_suffix = _suffix_example(objective, w, prefix_len, tok)
        m = torch.zeros_like(ex.loss_mask)
        m[torch.nonzero(ex.loss_mask).flatten()[-n_suffix:]] = True  # only the suffix tokens, not a sentinel
        rows.append(ex)
        keep.append(m)
    T = model.config.context_length
    batch = collate(rows, T, tok.pad_id)
    mask = torch.stack([torch.cat([k, torch.zeros(T - len(k), dtype=torch.bool)]) for k in keep])
    return float(masked_lm_loss(_forward(model, batch), batch.targets, mask))


def _span_rows(objective: str, tok: ExtraIdTokenizer, windows, masks, mode: str) -> tuple[list[Example], list[torch.Tensor]]:
    rows, keep = [], []
    for w, m in zip(windows, masks):
        noise = torch.as_tensor(m, dtype=torch.bool)
        if objective in ("causal", "prefix"):  # left context only: predict each masked token from the text before it
            ex = causal_lm_example(w)
            k = noise[1:].clone()  # position t predicts token t + 1
        else:
            ex = span_corruption_example(w, noise, tok.vocab_size, tok.mode_id(mode), tok.n_sentinels)
            k = ex.loss_mask & (ex.targets < tok.text_vocab_size)  # the span tokens, not the sentinels
        rows.append(ex)
        keep.append(k)
    return rows, keep


@torch.no_grad()
def span_fill_scores(model: GPT, objective: str, tok: ExtraIdTokenizer, windows, masks, mode: str = "[R]") -> dict:
    """Loss and accuracy (argmax = the true token, teacher-forced) on the masked tokens."""
    rows, keep = _span_rows(objective, tok, windows, masks, mode)
    T = model.config.context_length
    batch = collate(rows, T, tok.pad_id)
    m = torch.stack([torch.cat([k, torch.zeros(T - len(k), dtype=torch.bool)]) for k in keep])
    logits = _forward(model, batch)
    acc = (logits.argmax(-1)[m] == batch.targets[m]).float().mean()
    return {"loss": float(masked_lm_loss(logits, batch.targets, m)), "accuracy": float(acc), "tokens": int(m.sum())}


@torch.no_grad()
def mode_switch_scores(model: GPT, tok: ExtraIdTokenizer, windows, masks) -> dict:
    """The UL2 model on the same span-corruption inputs under each mode token: the loss per mode,
    the mean total-variation distance between its ``[R]`` and ``[X]`` / ``[S]`` predictions on the
    target positions, and how often the top prediction changes."""
    out, probs = {}, {}
    for mode in tok.modes:
        rows, keep = _span_rows("ul2", tok, windows, masks, mode)
        batch = collate(rows, model.config.context_length, tok.pad_id)
        T = model.config.context_length
        m = torch.stack([torch.cat([k, torch.zeros(T - len(k), dtype=torch.bool)]) for k in keep])
        logits = _forward(model, batch)
        out[f"loss {mode}"] = float(masked_lm_loss(logits, batch.targets, m))
        probs[mode] = logits[m].softmax(-1)  # (N, V): same positions for every mode
    for other in ("[X]", "[S]"):
        out[f"tv [R] vs {other}"] = float(0.5 * (probs["[R]"] - probs[other]).abs().sum(-1).mean())
        out[f"top-1 changed [R] vs {other}"] = float((probs["[R]"].argmax(-1) != probs[other].argmax(-1)).float().mean())
    return out


@torch.no_grad()
def fill_spans(model: GPT, tok: ExtraIdTokenizer, window: list[int], mask, mode: str = "[R]") -> dict:
    """Greedy generation of the targets for one corrupted window: what the model writes after the
    inputs, as long as the true targets. Returns the decoded inputs, true and generated targets."""
    sc = span_corruption(window, mask, tok.vocab_size)
    prefix = [tok.mode_id(mode)] + sc.inputs
    seq = list(prefix)
    for _ in range(len(sc.targets)):
        x = torch.tensor(seq)[None]  # (1, t)
        logits = model(x, prefix_lm_mask(len(seq), len(prefix)))[0, -1]  # (V,)
        seq.append(int(logits.argmax()))
    return {"inputs": tok.decode(prefix), "targets": tok.decode(sc.targets), "generated": tok.decode(seq[len(prefix):])}


def objectives_experiment(seeds=(0, 1, 2), steps: int = 120, batch_size: int = 16, seq_len: int = 48, lr: float = 3e-3,
                          d_model: int = 64, n_layers: int = 2, n_heads: int = 4, n_eval: int = 48,
                          objectives=OBJECTIVES) -> dict:
    """Train every objective with every seed (equal steps x batch x length) and score each model.

    Returns ``{"setup", "runs": {objective: [per-seed dict]}, "examples", "seconds"}``; each run has
    ``lm_loss``, ``span`` (loss / accuracy on R-masked text), ``trained_tokens``, ``input_tokens``
    and, for ``causal``, ``lm_loss_half`` (after half the steps: about the prefix LM's trained
    tokens), for ``ul2``, ``modes`` (:func:`mode_switch_scores`) and ``xspan`` (X-masked text).
    """
    seeds = [check_int(s, "seed", "objectives_experiment", minimum=0) for s in seeds]
    tok, train_ids, val_ids = course_tokenizer()
    # held-out windows that fit every format: R- and X-masked (mode token, two ids per span) ...
    span_len = min(raw_length_for(UL2_DENOISERS["R r=0.15 μ=3"], seq_len), raw_length_for(UL2_DENOISERS["X r=0.5 μ=8"], seq_len))
    windows = eval_windows(val_ids, n_eval, span_len)
    g = torch.Generator().manual_seed(99)
    r_masks = [random_spans_noise_mask(len(w), 0.15, 3.0, generator=g) for w in windows]
    x_masks = [random_spans_noise_mask(len(w), 0.5, 8.0, generator=g) for w in windows]
    lm_windows = eval_windows(val_ids, n_eval, seq_len - 2, seed=4321)  # ... and [R] + prefix + <X0> + <X0> suffix
    P = len(lm_windows[0]) // 2
    runs = {o: [] for o in objectives}
    examples = {}
    t0 = time.perf_counter()
    for seed in seeds:
        for obj in objectives:
            model, log = train_objective(obj, tok, train_ids, seed=seed, steps=steps, batch_size=batch_size,
                                         seq_len=seq_len, lr=lr, d_model=d_model, n_layers=n_layers, n_heads=n_heads,
                                         snapshot_at=steps // 2 if obj == "causal" else None)
            run = dict(seed=seed, train_loss=sum(log["losses"][-10:]) / 10, trained_tokens=log["trained_tokens"],
                       input_tokens=log["input_tokens"], seconds=log["seconds"],
                       lm_loss=lm_suffix_loss(model, obj, tok, lm_windows, P),
                       span=span_fill_scores(model, obj, tok, windows, r_masks))
            if log["snapshot"] is not None:
                run["lm_loss_half"] = lm_suffix_loss(log["snapshot"], obj, tok, lm_windows, P)
                run["trained_tokens_half"] = log["snapshot_trained_tokens"]
            if obj in ("span", "ul2"):  # the span model never saw [X] or [S]: the control
                run["modes"] = mode_switch_scores(model, tok, windows, r_masks)
            if obj == "ul2":
                run["xspan"] = span_fill_scores(model, obj, tok, windows, x_masks, mode="[X]")
                run["xspan_wrong_mode"] = span_fill_scores(model, obj, tok, windows, x_masks, mode="[R]")
            if obj in ("span", "ul2") and seed == seeds[0]:
                examples[obj] = [fill_spans(model, tok, windows[i], r_masks[i]) for i in range(3)]
            runs[obj].append(run)
    setup = dict(seeds=seeds, steps=steps, batch_size=batch_size, seq_len=seq_len, lr=lr, d_model=d_model,
                 n_layers=n_layers, n_heads=n_heads, n_eval=n_eval, lm_prefix=P, span_window=span_len,
                 lm_window=len(lm_windows[0]), vocab_size=tok.vocab_size)
    return dict(setup=setup, runs=runs, examples=examples, seconds=time.perf_counter() - t0)


def _values(res, obj, key, sub=None):
    return [r[key] if sub is None else r[key][sub] for r in res["runs"][obj]]


def objective_verdicts(res: dict) -> dict:
    """The verdict behind each claim (:func:`lmlab.course.stats.paired_comparison` over the seeds, each with
    its stated claim and margin: 0.02 nats for losses, 1 point for accuracy, 0.01 for total variation),
    Holm-corrected together (:func:`lmlab.course.stats.holm`). Each has ``.sentence``, ``.outcome`` and ``.better``."""
    runs = res["runs"]
    v = {}
    nats = dict(margin=0.02)
    if "causal" in runs and "prefix" in runs:
        v["prefix_vs_causal_lm"] = paired_comparison(_values(res, "prefix", "lm_loss"), _values(res, "causal", "lm_loss"),
                                                     "prefix LM", "causal LM", claim="worse", **nats)
        v["prefix_vs_causal_equal_trained"] = paired_comparison(
            _values(res, "prefix", "lm_loss"), _values(res, "causal", "lm_loss_half"), "prefix LM (all steps)",
            "causal LM (half the steps)", claim="equal", **nats)
    if "causal" in runs and "span" in runs:
        v["span_vs_causal_fill"] = paired_comparison(
            [100 * a for a in _values(res, "span", "span", "accuracy")],
            [100 * a for a in _values(res, "causal", "span", "accuracy")],
            "span corruption", "causal LM", unit="% accuracy", lower_is_better=False, margin=1.0)
    if "ul2" in runs:
        if "span" in runs:
            v["ul2_vs_span_fill"] = paired_comparison(_values(res, "ul2", "span", "loss"), _values(res, "span", "span", "loss"),
                                                      "UL2 mixture", "span corruption only", claim="equal", **nats)
            v["ul2_vs_span_lm"] = paired_comparison(_values(res, "ul2", "lm_loss"), _values(res, "span", "lm_loss"),
                                                    "UL2 mixture", "span corruption only", claim="equal", **nats)
        if "causal" in runs:
            v["ul2_vs_causal_lm"] = paired_comparison(_values(res, "ul2", "lm_loss"), _values(res, "causal", "lm_loss"),
                                                      "UL2 mixture", "causal LM only", claim="equal", **nats)
            v["ul2_vs_causal_fill"] = paired_comparison(_values(res, "ul2", "span", "loss"), _values(res, "causal", "span", "loss"),
                                                        "UL2 mixture", "causal LM only", claim="equal", **nats)
        if "span" in runs:
            v["mode_switch_vs_control"] = paired_comparison(
                _values(res, "ul2", "modes", "tv [R] vs [X]"), _values(res, "span", "modes", "tv [R] vs [X]"),
                "UL2 model", "span-only model (never saw [X])", unit="total variation", lower_is_better=False, margin=0.01)
        v["mode_matched_vs_s"] = paired_comparison(_values(res, "ul2", "modes", "loss [R]"), _values(res, "ul2", "modes", "loss [S]"),
                                                   "[R] (matching mode)", "[S] (wrong mode)", **nats)
        v["xmode_matched_vs_r"] = paired_comparison(_values(res, "ul2", "xspan", "loss"), _values(res, "ul2", "xspan_wrong_mode", "loss"),
                                                    "[X] on X-masked text", "[R] on the same text", **nats)
    return dict(zip(v, holm(list(v.values()))))


def results_figure(res: dict) -> go.Figure:
    """LM suffix loss and span-filling loss of each objective, one dot per seed."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("LM: loss on held-out suffixes (nats)",
                                                        "span filling: loss on masked tokens (nats)"))
    colors = {"causal": "#3b6fb6", "prefix": "#6aa84f", "span": "#e69138", "ul2": "#a64d79"}
    for obj, rs in res["runs"].items():
        for col, vals in ((1, [r["lm_loss"] for r in rs]), (2, [r["span"]["loss"] for r in rs])):
            fig.add_trace(go.Box(y=vals, name=obj, marker_color=colors.get(obj), boxpoints="all", showlegend=False), 1, col)
    return style_figure(fig, "Each objective asked both questions (same compute, one box per objective)", width=820, height=380)


def _char_grid(tok, ids, noise, width=32):
    """Rows of ``width`` characters: z = 1 where noise, text = the character."""
    chars = [tok.piece(i).replace("\n", "↵").replace(" ", "·") for i in ids]
    z, text = [], []
    for r in range(0, len(chars), width):
        z.append([int(v) for v in noise[r:r + width]] + [None] * (width - len(chars[r:r + width])))
        text.append(chars[r:r + width] + [""] * (width - len(chars[r:r + width])))
    return z, text


def span_explorer_figure(noise_density: float = 0.15, mean_span: float = 3.0, seed: int = 0, random_roll: bool = False,
                         length: int = 96, start: int = 1000):
    """A held-out text with T5's noise spans highlighted, and the inputs / targets with sentinels."""
    tok, _, val_ids = course_tokenizer()
    window = val_ids[start:start + length].tolist()
    mask = random_spans_noise_mask(length, noise_density, mean_span, generator=torch.Generator().manual_seed(seed),
                                   random_roll=random_roll)
    n_noise, n_spans = noise_counts(length, noise_density, mean_span)
    sc = span_corruption(window, mask, tok.vocab_size)
    z, text = _char_grid(tok, window, mask.tolist())
    fig = go.Figure(go.Heatmap(z=z, text=text, texttemplate="%{text}", colorscale=[[0, "#f3f3f3"], [1, "#f6b26b"]],
                               zmin=0, zmax=1, showscale=False, xgap=1, ygap=1, hoverinfo="skip"))
    fig.update_yaxes(autorange="reversed", showticklabels=False)
    fig.update_xaxes(showticklabels=False)
    style_figure(fig, f"{length} characters, noise (orange): {int(mask.sum())} tokens in {len(mask_spans(mask))} spans", width=820, height=260)
    note = (f"T5's counts: round({length} × {noise_density:g}) → {n_noise} noise tokens, max(1, round({n_noise} / {mean_span:g})) "
            f"→ {n_spans} spans{'; rolled, a span may wrap and count twice' if random_roll else ''}. "
            f"inputs: {len(sc.inputs)} ids, targets: {len(sc.targets)} ids (raw {length}).<br>"
            f"<code>inputs:  {html.escape(tok.decode(sc.inputs))}</code><br><code>targets: {html.escape(tok.decode(sc.targets))}</code>")
    return fig, note


def mixture_figure(denoiser: str = "R r=0.15 μ=3", seed: int = 0, seq_len: int = 48):
    """One UL2 example as the model sees it: its tokens, the attention mask and the loss mask."""
    tok, _, val_ids = course_tokenizer()
    g = torch.Generator().manual_seed(seed)
    if denoiser == "causal LM":
        start = int(torch.randint(len(val_ids) - seq_len - 1, (1,), generator=g))
        ex = causal_lm_example(val_ids[start:start + seq_len + 1].tolist())
    else:
        check_choice(denoiser, "denoiser", list(UL2_DENOISERS) + ["causal LM"], "mixture_figure")
        d = UL2_DENOISERS[denoiser]
        L = raw_length_for(d, seq_len)
        start = int(torch.randint(len(val_ids) - L, (1,), generator=g))
        ex = ul2_example(val_ids[start:start + L].tolist(), d, tok, g)
    labels = [f"{i}:{tok.piece(t).replace(chr(10), '↵')}" for i, t in enumerate(ex.inputs.tolist())]
    T = len(labels)
    fig = make_subplots(rows=2, cols=1, row_heights=[0.08, 0.92], vertical_spacing=0.04,
                        subplot_titles=("loss mask (trained positions)", "attention mask (rows: queries, columns: keys)"))
    fig.add_trace(go.Heatmap(z=[ex.loss_mask.int().tolist()], x=labels, zmin=0, zmax=1, showscale=False, xgap=1,
                             colorscale=[[0, "#f3f3f3"], [1, "#cc4125"]], hovertemplate="%{x}: %{z}<extra></extra>"), 1, 1)
    fig.add_trace(go.Heatmap(z=ex.attn_mask.int().tolist(), x=labels, y=labels, zmin=0, zmax=1, showscale=False,
                             xgap=1 if T <= 64 else 0, ygap=1 if T <= 64 else 0, colorscale=[[0, "#f3f3f3"], [1, "#3b6fb6"]],
                             hovertemplate="query %{y} → key %{x}: %{z}<extra></extra>"), 2, 1)
    fig.update_xaxes(showticklabels=False)
    fig.update_yaxes(showticklabels=False)
    fig.update_yaxes(autorange="reversed", row=2, col=1)
    style_figure(fig, f"{denoiser}: {int(ex.loss_mask.sum())} of {T} positions trained", width=620, height=720)
    prefix = int(ex.attn_mask[0].sum())
    note = (f"sequence: <code>{html.escape(tok.decode(torch.cat([ex.inputs, ex.targets[-1:]])))}</code><br>"
            f"bidirectional prefix: {prefix} tokens; causal after it; loss on {int(ex.loss_mask.sum())} positions.")
    return fig, note
