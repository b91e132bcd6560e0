"""Lesson 00's experiments, run through the same functions the lesson calls."""

import pytest
import torch

from lmlab.course.experiments.ch00_tour import leakage_test, mask_figure, train_tiny_gpt, visibility
from lmlab.data.masks import ARCHITECTURES


@pytest.fixture(scope="module")
def short_run():
    return train_tiny_gpt(steps=250, seed=0, progress=False)


def test_tiny_gpt_beats_the_unigram_baseline(short_run):
    # The lesson's claim, on a shorter run: clearly below the context-free baseline.
    assert short_run.val_loss < short_run.unigram_loss - 0.5
    assert short_run.history.val_loss[-1] < short_run.history.val_loss[0]


def test_experiment_is_reproducible(short_run):
    again = train_tiny_gpt(steps=250, seed=0, progress=False)
    assert again.history.train_loss == short_run.history.train_loss


def test_causal_mask_hides_the_future_prefix_does_not(short_run):
    ids = torch.tensor(short_run.tokenizer.encode("while True: pass  # forever"))
    assert leakage_test(short_run.model, ids, 8)["earlier_positions_changed"] == 0
    assert leakage_test(short_run.model, ids, 8, prefix_len=12)["earlier_positions_changed"] == 8


def test_visibility_counts_match_the_masks():
    T, P = 10, 4
    causal, prefix, encdec = (visibility(a, T, P) for a in ARCHITECTURES)
    assert causal["visible_pairs"] == T * (T + 1) // 2
    # The prefix block becomes bidirectional: P*(P-1)/2 extra pairs above the diagonal.
    assert prefix["visible_pairs"] == causal["visible_pairs"] + P * (P - 1) // 2
    assert encdec["visible_pairs"] == prefix["visible_pairs"]
    assert causal["positions_with_loss"] == T and prefix["positions_with_loss"] == T - P + 1
    assert encdec["positions_with_loss"] == T - P


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_mask_figure_draws_the_mask(arch):
    fig, note = mask_figure(arch, 8, 3)
    z = torch.tensor(fig.data[0].z)
    assert z.shape == (8, 8)
    assert str(int(z.sum())) in note


def test_lesson_widget_redraws_when_controls_move():
    from ipywidgets import Dropdown, IntSlider

    from lmlab.course.widgets import FigureExplorer

    explorer = FigureExplorer(
        make_figure=mask_figure,
        controls={
            "architecture": Dropdown(options=ARCHITECTURES, value="prefix decoder"),
            "T": IntSlider(value=12, min=2, max=32),
            "prefix_len": IntSlider(value=4, min=0, max=32),
        },
    )
    before = explorer.figure.data[0].z
    explorer.controls["prefix_len"].value = 8
    assert explorer.figure.data[0].z != before
    explorer.controls["architecture"].value = "causal decoder"
    z = torch.tensor(explorer.figure.data[0].z)
    assert torch.equal(z.bool(), torch.ones(12, 12).tril().bool())
