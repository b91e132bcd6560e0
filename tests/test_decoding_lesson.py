"""Lesson 07's experiments, run through the same functions the lesson calls (smaller sizes)."""

import math

import pytest
import torch
import torch.nn.functional as F

from lmlab.infer.decoding import beam_search, filter_logits, generate, next_token_logits
from lmlab.course.experiments.ch07_decoding import (
    EOS_CHAR,
    PROMPTS,
    beam_experiment,
    beam_figure,
    beam_tree,
    beam_tree_figure,
    kept_by_filters,
    next_token_figure,
    real_text_repetition,
    repetition_experiment,
    repetition_figure,
    temperature_figure,
    temperature_sweep,
)
from lmlab.course.experiments.ch00_tour import train_tiny_gpt


@pytest.fixture(scope="module")
def run():
    torch.manual_seed(0)
    return train_tiny_gpt(steps=400, seed=0, progress=False)


@pytest.fixture(scope="module")
def val_text():
    from lmlab.data.text import load_corpus

    return load_corpus().val


# ---------------------------------------------------------------------------------------------
# Claim: greedy repeats itself, sampling does not
# ---------------------------------------------------------------------------------------------


def test_greedy_repeats_more_than_sampling(run, val_text):
    strategies = {"greedy": dict(strategy="greedy"), "sample, t = 1": dict(strategy="sample"),
                  "top-p = 0.9": dict(strategy="sample", top_p=0.9)}
    rep = repetition_experiment(run.model, run.tokenizer, val_text, prompts=PROMPTS[:2], strategies=strategies,
                                samples=2, max_new_tokens=120, seed=0)
    assert len(rep.rates["greedy"]) == 2 and len(rep.rates["sample, t = 1"]) == 4
    assert rep.mean["greedy"] > 2 * max(rep.mean["sample, t = 1"], rep.mean["top-p = 0.9"])
    assert rep.logprob["greedy"] > rep.logprob["sample, t = 1"]  # the model likes its greedy text best
    assert 0 < rep.real_text < 1
    fig = repetition_figure(rep)
    assert list(fig.data[0].x) == list(strategies) and fig.data[0].y[0] == pytest.approx(rep.mean["greedy"])


def test_repetition_experiment_is_reproducible(run, val_text):
    kw = dict(prompts=PROMPTS[:2], strategies={"s": dict(strategy="sample", top_k=10)}, samples=2, max_new_tokens=40, seed=3)
    a = repetition_experiment(run.model, run.tokenizer, val_text, **kw)
    b = repetition_experiment(run.model, run.tokenizer, val_text, **kw)
    assert a.rates == b.rates and a.examples == b.examples


def test_real_text_repetition_measures_windows(run):
    tok = run.tokenizer
    assert real_text_repetition(tok, "abcd" * 100, length=40, windows=5) == pytest.approx(33 / 37)  # 37 4-grams, 4 distinct
    with pytest.raises(ValueError, match="same length"):
        repetition_experiment(run.model, tok, "x" * 500, prompts=("a", "bb"), strategies={"g": dict(strategy="greedy")})


# ---------------------------------------------------------------------------------------------
# Claim: temperature 0 is greedy, infinity is uniform; top-p adapts, top-k does not
# ---------------------------------------------------------------------------------------------


def test_temperature_limits(run):
    tok = run.tokenizer
    logits = {"confident": next_token_logits(run.model, torch.tensor(tok.encode("the functio"))),
              "flat": next_token_logits(run.model, torch.tensor(tok.encode("The ")))}
    temps = [0.001, 0.1, 1, 10, 1000]
    sweep = temperature_sweep(logits, temps)
    for s in sweep.values():
        assert all(a <= b + 1e-9 for a, b in zip(s["entropy"], s["entropy"][1:]))  # entropy rises with t
        assert s["entropy"][0] < 0.01 and s["top_prob"][0] > 0.99  # t -> 0: greedy
        assert s["entropy"][-1] == pytest.approx(math.log(tok.vocab_size), rel=1e-3)  # t -> inf: uniform
    fig = temperature_figure(sweep, temps, tok.vocab_size)
    assert len(fig.data) == 4 and list(fig.data[0].y) == sweep["confident"]["entropy"]


def test_top_p_adapts_top_k_does_not():
    confident = torch.tensor([8.0, 1.0, 0.5, 0.0, -1.0, -1.0, -2.0, -3.0])
    flat = torch.zeros(8)
    c, f = kept_by_filters(confident, top_ks=(3,), top_ps=(0.9,)), kept_by_filters(flat, top_ks=(3,), top_ps=(0.9,))
    assert c[0]["kept"] == f[0]["kept"] == 3  # top-k: a fixed count...
    assert c[0]["mass"] > 0.99 and f[0]["mass"] == pytest.approx(3 / 8)  # ...holding very different mass
    assert c[1]["kept"] == 1 and f[1]["kept"] == 8  # top-p: a fixed mass, so the count adapts


def test_sampling_at_temperature_zero_is_greedy(run):
    prompt = torch.tensor(run.tokenizer.encode("def "))
    greedy = generate(run.model, prompt, 50, "greedy")
    t0 = generate(run.model, prompt, 50, "sample", temperature=0.0, generator=torch.Generator().manual_seed(5))
    assert torch.equal(greedy, t0)


# ---------------------------------------------------------------------------------------------
# Claim: beam search raises log P but shortens the output without a length penalty
# ---------------------------------------------------------------------------------------------


def test_beam_size_and_length_penalty(run):
    rows = beam_experiment(run.model, run.tokenizer, prompts=PROMPTS[:2], beam_sizes=(1, 4, 8), length_penalties=(0.0, 1.0),
                           max_new_tokens=40)
    assert [(r["length_penalty"], r["beams"]) for r in rows] == [(0.0, 1), (0.0, 4), (0.0, 8), (1.0, 1), (1.0, 4), (1.0, 8)]
    no_pen = [r for r in rows if r["length_penalty"] == 0.0]
    per_tok = [r for r in rows if r["length_penalty"] == 1.0]
    assert no_pen[-1]["score"] >= no_pen[0]["score"]  # a wider beam finds a more probable output...
    assert no_pen[-1]["length"] < no_pen[0]["length"]  # ...by stopping sooner
    assert per_tok[-1]["length"] > no_pen[-1]["length"]  # the length penalty gives longer outputs
    for r in rows:
        assert r["score"] == pytest.approx(r["logprob"] if r["length_penalty"] == 0 else r["logprob_per_token"], rel=1e-5)
        assert 1 <= r["length"] <= 40 and 0 <= r["blank"] <= 1 and len(r["texts"]) == 2
        assert all(t.startswith(p) for t, p in zip(r["texts"], PROMPTS))
    for r in rows:
        assert 0 <= r["repeat"] <= 1
    # Beam size 1 without length penalty is greedy decoding (the exact stopping rule included).
    eos = run.tokenizer.stoi[EOS_CHAR]
    greedy = generate(run.model, torch.tensor(run.tokenizer.encode(PROMPTS[0])), 40, "greedy", eos_id=eos)
    assert run.tokenizer.decode(greedy.tolist()) == no_pen[0]["texts"][0]
    fig = beam_figure(rows)
    assert len(fig.data) == 8 and list(fig.data[0].x) == [1, 4, 8]


def test_beam_experiment_uses_the_exact_stopping_rule(run, monkeypatch):
    """The heuristic (early_stopping=False, beam_search's default) can stop before a longer hypothesis
    that the length penalty ranks higher; the experiment must ask for the exact rule."""
    import lmlab.course.experiments.ch07_decoding as D

    seen = []

    def spy(*args, **kwargs):
        seen.append(kwargs.get("early_stopping", False))
        return beam_search(*args, **kwargs)

    monkeypatch.setattr(D, "beam_search", spy)
    D.beam_experiment(run.model, run.tokenizer, prompts=PROMPTS[:1], beam_sizes=(2,), length_penalties=(1.0,), max_new_tokens=5)
    assert seen == ["never"]


# ---------------------------------------------------------------------------------------------
# beam_step and the beam tree
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_beams,steps", [(1, 5), (3, 6), (5, 4)])
def test_beam_tree_equals_beam_search(run, num_beams, steps):
    tok = run.tokenizer
    tree = beam_tree(run.model, tok, "The ", num_beams=num_beams, steps=steps)
    ref = beam_search(run.model, torch.tensor(tok.encode("The ")), num_beams, steps, length_penalty=0.0)
    assert tree.best.text == tok.decode(ref.sequences[0].tolist())
    assert tree.best.logprob == pytest.approx(ref.hypotheses[0][0].sum_logprobs, abs=1e-4)
    assert len(tree.steps) == steps
    for s in range(steps):
        kept = tree.kept(s)
        assert len(kept) == num_beams and [n.beam for n in kept] == list(range(num_beams))
        assert all(a.logprob >= b.logprob - 1e-6 for a, b in zip(kept, kept[1:]))  # best first
        pruned = [n for n in tree.steps[s] if not n.kept]
        assert all(p.logprob <= kept[-1].logprob + 1e-6 for p in pruned)  # nothing better was pruned
    fig, note = beam_tree_figure(tree)
    assert repr(tree.best.text) in note
    kept_trace = next(d for d in fig.data if d.name == "kept beam")
    pruned_trace = next(d for d in fig.data if d.name == "pruned candidate")
    assert len(kept_trace.x) == num_beams * steps
    assert len(pruned_trace.x) == sum(not n.kept for s in tree.steps for n in s)
    assert pruned_trace.marker.color == "#cccccc"  # pruned branches greyed


def test_beam_tree_greedy_matches_generate(run):
    tok = run.tokenizer
    tree = beam_tree(run.model, tok, "def ", num_beams=1, steps=8)
    assert tree.best.text == tok.decode(generate(run.model, torch.tensor(tok.encode("def ")), 8, "greedy").tolist())
    with pytest.raises(ValueError, match="at least one character"):
        beam_tree(run.model, tok, "", 2, 3)


# ---------------------------------------------------------------------------------------------
# Widgets, driven without a browser
# ---------------------------------------------------------------------------------------------


def test_next_token_figure_shows_kept_and_renormalised(run):
    tok = run.tokenizer
    fig, note = next_token_figure(run.model, tok, "The ", temperature=1.0, top_k=5, top_p=1.0)
    original, filtered = fig.data[0], fig.data[1]
    assert len(original.x) == 20 and sum(1 for y in filtered.y if y > 0) == 5
    assert sum(filtered.y) == pytest.approx(1.0, abs=1e-5)  # the 5 kept are renormalised
    assert all(f >= o for o, f in zip(original.y, filtered.y) if f > 0)
    assert note.startswith("keeps 5 of") and "sampled:" in note
    logits = next_token_logits(run.model, torch.tensor(tok.encode("The ")))
    expected = F.softmax(filter_logits(logits, 1.0, 5, None), dim=-1).sort(descending=True).values[:5]
    torch.testing.assert_close(torch.tensor(sorted(filtered.y, reverse=True)[:5]), expected, rtol=1e-5, atol=1e-6)
    fig0, note0 = next_token_figure(run.model, tok, "The ", temperature=0.0, top_k=0, top_p=1.0)
    assert sum(1 for y in fig0.data[1].y if y > 0) == 1 and note0.startswith("keeps 1 of")
    _, empty = next_token_figure(run.model, tok, "", 1.0, 0, 1.0)
    assert "type at least one character" in empty


def test_widgets_redraw_when_controls_move(run):
    from ipywidgets import FloatSlider, IntSlider, Text

    from lmlab.course.widgets import FigureExplorer

    model, tok = run.model, run.tokenizer
    explorer = FigureExplorer(
        make_figure=lambda prompt, temperature, top_k, top_p: next_token_figure(model, tok, prompt, temperature, top_k, top_p),
        controls={"prompt": Text(value="The "), "temperature": FloatSlider(value=1.0, min=0.0, max=3.0, step=0.05),
                  "top_k": IntSlider(value=0, min=0, max=tok.vocab_size), "top_p": FloatSlider(value=1.0, min=0.05, max=1.0, step=0.05)},
    )
    kept = lambda: sum(1 for y in explorer.figure.data[1].y if y > 0)  # noqa: E731
    assert kept() == 20 and explorer.renders == 1
    explorer.controls["top_k"].value = 3
    assert kept() == 3 and explorer.renders == 2
    before = list(explorer.figure.data[1].y)
    explorer.controls["temperature"].value = 0.3
    assert list(explorer.figure.data[1].y) != before and kept() == 3
    explorer.controls["top_k"].value = 0
    explorer.controls["top_p"].value = 0.5
    assert 1 <= kept() < 20 and "keeps" in explorer.note.value
    title = explorer.figure.layout.title.text
    explorer.controls["prompt"].value = "for i in "
    assert explorer.figure.layout.title.text != title

    trees = FigureExplorer(
        make_figure=lambda prompt, num_beams, steps: beam_tree_figure(beam_tree(model, tok, prompt or "The ", num_beams, steps)),
        controls={"prompt": Text(value="The "), "num_beams": IntSlider(value=2, min=1, max=6), "steps": IntSlider(value=3, min=1, max=10)},
    )
    n_kept = lambda: len(next(d for d in trees.figure.data if d.name == "kept beam").x)  # noqa: E731
    assert n_kept() == 2 * 3
    trees.controls["num_beams"].value = 4
    assert n_kept() == 4 * 3
    trees.controls["steps"].value = 5
    assert n_kept() == 4 * 5 and trees.renders == 3
