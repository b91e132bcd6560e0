"""Plausible wrong answers, per exercise id: the graders must fail every one of them.

Each chapter adds a section ``WRONG_NN = {"NN.name": {"what the mistake is": implementation}}`` and
merges it into ``WRONG_ANSWERS``. ``tests/test_grading_checks.py`` requires at least two entries for
every registered exercise, so a new exercise without them fails the suite.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# ---------------------------------------------------------------------------------------------
# Chapter 00
# ---------------------------------------------------------------------------------------------


def _ones(T, *_):
    return torch.ones(T, T, dtype=torch.bool)


class _SortedTok:
    """A correct tokenizer that the wrong ones below break one method at a time."""

    def __init__(self, text):
        self.chars = sorted(set(text))
        self.stoi = {c: i for i, c in enumerate(self.chars)}

    @property
    def vocab_size(self):
        return len(self.chars)

    def encode(self, s):
        return [self.stoi[c] for c in s]

    def decode(self, ids):
        return "".join(self.chars[i] for i in ids)


class _InsertionOrderTok(_SortedTok):
    def __init__(self, text):
        self.chars = list(dict.fromkeys(text))  # first-seen order, not sorted
        self.stoi = {c: i for i, c in enumerate(self.chars)}


class _OneBasedTok(_SortedTok):
    def __init__(self, text):
        super().__init__(text)
        self.stoi = {c: i + 1 for i, c in enumerate(self.chars)}  # ids start at 1


class _TensorEncodeTok(_SortedTok):
    def encode(self, s):
        return torch.tensor([self.stoi[c] for c in s])


class _ReversedDecodeTok(_SortedTok):
    def decode(self, ids):
        return "".join(self.chars[i] for i in ids)[::-1]


class _VocabCountsTextTok(_SortedTok):
    def __init__(self, text):
        super().__init__(text)
        self._n = len(text)

    @property
    def vocab_size(self):
        return self._n  # counts characters, not distinct ones


def _ce_log_softmax(logits, targets, dim):
    log_probs = torch.log_softmax(logits, dim=dim)
    return -log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1).mean()


def _ce_naive(logits, targets):
    probs = logits.exp() / logits.exp().sum(-1, keepdim=True)  # overflows for large logits
    return -probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1).log().mean()


def _batch(ids, B, T, g, shift=1, start_high=None, use_gen=True, const_start=False):
    high = len(ids) - T if start_high is None else start_high
    if const_start:
        starts = torch.zeros(B, dtype=torch.long)
    else:
        starts = torch.randint(high, (B,), generator=g if use_gen else None)
    off = torch.arange(T)
    return ids[starts[:, None] + off], ids[(starts[:, None] + off + shift).clamp(0, len(ids) - 1)]


WRONG_00 = {
    "00.causal_mask": {
        "upper triangle (transposed)": lambda T: torch.ones(T, T, dtype=torch.bool).triu(),
        "shifted by one (token cannot see itself)": lambda T: torch.ones(T, T, dtype=torch.bool).tril(-1),
        "shifted by one (sees the next token)": lambda T: torch.ones(T, T, dtype=torch.bool).tril(1),
        "float mask instead of bool": lambda T: torch.ones(T, T).tril(),
        "all True (no mask)": _ones,
        "all False (zeros)": lambda T: torch.zeros(T, T, dtype=torch.bool),
        "additive -inf mask": lambda T: torch.full((T, T), float("-inf")).triu(1),
        "returns nothing": lambda T: None,
    },
    "00.prefix_lm_mask": {
        "just the causal mask": lambda T, p: torch.ones(T, T, dtype=torch.bool).tril(),
        "prefix rows see everything": lambda T, p: torch.ones(T, T, dtype=torch.bool).tril().index_fill_(0, torch.arange(p), True),
        "off by one prefix (prefix_len + 1)": lambda T, p: _prefix_ok(T, min(p + 1, T)),
        "transposed": lambda T, p: _prefix_ok(T, p).T.contiguous(),
        "all True": _ones,
        "wrong signature (no prefix_len)": lambda T: torch.ones(T, T, dtype=torch.bool).tril(),
    },
    "00.CharTokenizer": {
        "vocabulary in first-seen order": _InsertionOrderTok,
        "ids start at 1": _OneBasedTok,
        "encode returns a tensor": _TensorEncodeTok,
        "decode reverses the text": _ReversedDecodeTok,
        "vocab_size counts every character": _VocabCountsTextTok,
        "a function, not a class": lambda text: None,
    },
    "00.cross_entropy": {
        "log-softmax over the wrong axis": lambda z, y: _ce_log_softmax(z, y, dim=1),
        "forgot the minus sign": lambda z, y: -_ce_log_softmax(z, y, dim=-1),
        "sum instead of mean": lambda z, y: _ce_log_softmax(z, y, dim=-1) * y.numel(),
        "naive softmax (overflows)": _ce_naive,
        "returns a Python float": lambda z, y: F.cross_entropy(z.reshape(-1, z.size(-1)), y.reshape(-1)).item(),
        "detached from autograd": lambda z, y: F.cross_entropy(z.reshape(-1, z.size(-1)), y.reshape(-1)).detach(),
        "returns zeros": lambda z, y: torch.zeros(()),
        "per-token losses, not the mean": lambda z, y: F.cross_entropy(z.transpose(1, 2), y, reduction="none"),
    },
    "00.sample_batch": {
        "y equals x (not shifted)": lambda ids, B, T, g: _batch(ids, B, T, g, shift=0),
        "y shifted the wrong way": lambda ids, B, T, g: _batch(ids, B, T, g, shift=-1),
        "last window never drawn": lambda ids, B, T, g: _batch(ids, B, T, g, start_high=len(ids) - T - 1),
        "ignores the generator": lambda ids, B, T, g: _batch(ids, B, T, g, use_gen=False),
        "always starts at 0": lambda ids, B, T, g: _batch(ids, B, T, g, const_start=True),
        "starts can run past the end": lambda ids, B, T, g: _batch(ids, B, T, g, start_high=len(ids) - T + 1),
        "returns the input unchanged": lambda ids, B, T, g: (ids, ids),
    },
}


def _prefix_ok(T, p):
    m = torch.ones(T, T, dtype=torch.bool).tril()
    m[:p, :p] = True
    return m


WRONG_ANSWERS: dict[str, dict[str, object]] = {**WRONG_00}

# A chapter may instead keep its wrong answers in its own file, tests/wrong_answers_chNN.py, holding
# a dict named WRONG of the same shape; every such file is merged here.
import importlib as _importlib
import pathlib as _pathlib

for _path in sorted(_pathlib.Path(__file__).parent.glob("wrong_answers_ch*.py")):
    WRONG_ANSWERS.update(_importlib.import_module(_path.stem).WRONG)
