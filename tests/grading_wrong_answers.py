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

# ---------------------------------------------------------------------------------------------
# Chapter 07 (decoding): appended section, merged into WRONG_ANSWERS below.
# ---------------------------------------------------------------------------------------------


def _w07_one_hot(z):
    return F.one_hot(z.argmax(-1), z.size(-1)).to(z.dtype)


def _w07_temp(z, t, how):
    if t == 0:
        return _w07_one_hot(z)
    if how == "after softmax":
        return torch.softmax(z, dim=-1) / t  # temperature applied to probabilities, not logits
    if how == "after softmax, renormalised":
        p = torch.softmax(z, dim=-1) / t
        return p / p.sum(-1, keepdim=True)  # = plain softmax: t has no effect
    if how == "multiplied":
        return torch.softmax(z * t, dim=-1)
    if how == "naive exp":
        e = torch.exp(z / t)  # no max subtraction: overflows for tiny t
        return e / e.sum(-1, keepdim=True)
    raise ValueError(how)


def _w07_topk(z, k, how):
    V = z.size(-1)
    if how == "threshold keeps ties":
        kth = torch.sort(z, dim=-1, descending=True).values[:, min(k, V) - 1:min(k, V)]
        return z.masked_fill(z < kth, float("-inf"))  # every token tied with the k-th survives: k+1 or more
    if how == "k+1":
        order = torch.sort(z, dim=-1, descending=True, stable=True).indices[:, :k + 1]
    elif how == "ascending":
        order = torch.sort(z, dim=-1, descending=False, stable=True).indices[:, :k]  # keeps the k least likely
    elif how == "ties to higher id":
        order = (V - 1) - torch.sort(z.flip(-1), dim=-1, descending=True, stable=True).indices[:, :k]
    elif how == "zero not -inf":
        order = torch.sort(z, dim=-1, descending=True, stable=True).indices[:, :k]
        keep = torch.zeros_like(z, dtype=torch.bool).scatter(-1, order, True)
        return z.masked_fill(~keep, 0.0)
    else:
        raise ValueError(how)
    keep = torch.zeros_like(z, dtype=torch.bool).scatter(-1, order, True)
    return z.masked_fill(~keep, float("-inf"))


def _w07_topk_inplace(z, k):
    order = torch.sort(z, dim=-1, descending=True, stable=True).indices[:, :k]
    keep = torch.zeros_like(z, dtype=torch.bool).scatter(-1, order, True)
    z[~keep] = float("-inf")  # modifies the caller's logits
    return z


def _w07_topp(z, p, how):
    probs = torch.softmax(z, dim=-1)
    descending = how != "ascending"
    order = torch.sort(probs, dim=-1, descending=descending, stable=True).indices
    sp = probs.gather(-1, order)
    if how == "drops the crossing token":
        keep_sorted = sp.cumsum(-1) <= p
        keep_sorted[:, 0] = True
    elif how == "cumsum on logits":
        sl = z.gather(-1, order)
        keep_sorted = (sl.cumsum(-1) - sl) < p
    elif how == "ascending":
        keep_sorted = (sp.cumsum(-1) - sp) < p
    elif how == "keeps one extra":
        keep_sorted = (sp.cumsum(-1) - sp) <= p + sp  # also keeps the token after the crossing one
    elif how == "no scatter back":
        keep_sorted = (sp.cumsum(-1) - sp) < p
        return z.masked_fill(~keep_sorted, float("-inf"))  # mask in sorted order applied to token order
    else:
        raise ValueError(how)
    keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
    return z.masked_fill(~keep, float("-inf"))


def _w07_beam(sums, lp_next, length, finished, n, eos, alpha, max_len, how):
    K, V = lp_next.shape
    cand = (sums[:, None] + lp_next).flatten()
    order = torch.sort(cand, descending=True, stable=True).indices[:2 * n].tolist()
    scores, kept = list(finished), []
    for rank, i in enumerate(order):
        if i % V == eos and how != "EOS keeps running":
            if rank < n or how == "EOS finishes anywhere in the top 2K":
                L = length if how == "length excludes EOS" else length + 1
                scores.append(cand[i].item() / (1 if how == "no penalty on finished" else max(L, 1) ** alpha))
        else:
            kept.append(i)
        if len(kept) == n:
            break
    scores = sorted(scores, reverse=how == "finished kept worst first")[:n]
    if how == "finished kept worst first":
        scores = scores[::-1]
    idx = torch.tensor(kept, dtype=torch.long)
    reach = max_len if alpha > 0 and how != "heuristic stopping (current length)" else length + 1
    if how == "done as soon as finished is full":
        done = not kept or len(scores) == n
    else:
        done = not kept or (len(scores) == n and scores[-1] >= cand[order[0]].item() / reach ** alpha)
    return idx // V, idx % V, cand[idx], scores, done


def _w07_penalty(z, ids, r, how):
    if how == "always divide":
        seen = z.gather(-1, ids) / r  # makes negative logits LESS negative: repeats become likelier
        return z.scatter(-1, ids, seen)
    if how == "subtract":
        return z.scatter(-1, ids, z.gather(-1, ids) - r)
    if how == "per occurrence":
        out = z.clone()
        for b in range(ids.size(0)):
            for i in ids[b].tolist():
                out[b, i] = out[b, i] / r if out[b, i] > 0 else out[b, i] * r
        return out
    if how == "first row's history for all":
        seen = z.gather(-1, ids[:1].expand_as(ids))
        return z.scatter(-1, ids[:1].expand_as(ids), torch.where(seen > 0, seen / r, seen * r))
    if how == "in place":
        seen = z.gather(-1, ids)
        z.scatter_(-1, ids, torch.where(seen > 0, seen / r, seen * r))
        return z
    if how == "penalises unseen tokens":
        seen = torch.zeros_like(z, dtype=torch.bool).scatter(-1, ids, True)
        return torch.where(~seen, torch.where(z > 0, z / r, z * r), z)
    raise ValueError(how)


WRONG_07 = {
    "07.softmax_with_temperature": {
        "temperature applied after softmax": lambda z, t: _w07_temp(z, t, "after softmax"),
        "temperature after softmax, renormalised (no effect)": lambda z, t: _w07_temp(z, t, "after softmax, renormalised"),
        "multiplies by t": lambda z, t: _w07_temp(z, t, "multiplied"),
        "naive exp overflows": lambda z, t: _w07_temp(z, t, "naive exp"),
        "t = 0 divides by zero": lambda z, t: torch.softmax(z / t, dim=-1) if t else torch.softmax(z / 1e-30, dim=-1),
        "softmax over the batch axis": lambda z, t: _w07_one_hot(z) if t == 0 else torch.softmax(z / t, dim=0),
        "returns log-probabilities": lambda z, t: _w07_one_hot(z) if t == 0 else torch.log_softmax(z / t, dim=-1),
    },
    "07.top_k_filter": {
        "threshold keeps every tie (k+1 on ties)": lambda z, k: _w07_topk(z, k, "threshold keeps ties"),
        "keeps k+1": lambda z, k: _w07_topk(z, k, "k+1"),
        "sorted the wrong way": lambda z, k: _w07_topk(z, k, "ascending"),
        "ties go to the higher id": lambda z, k: _w07_topk(z, k, "ties to higher id"),
        "fills with 0, not -inf": lambda z, k: _w07_topk(z, k, "zero not -inf"),
        "changes the input in place": _w07_topk_inplace,
    },
    "07.top_p_filter": {
        "drops the crossing token": lambda z, p: _w07_topp(z, p, "drops the crossing token"),
        "cumulative sum of logits, not probabilities": lambda z, p: _w07_topp(z, p, "cumsum on logits"),
        "sorted the wrong way": lambda z, p: _w07_topp(z, p, "ascending"),
        "keeps one token too many": lambda z, p: _w07_topp(z, p, "keeps one extra"),
        "mask not scattered back to token order": lambda z, p: _w07_topp(z, p, "no scatter back"),
    },
    "07.beam_step": {
        "EOS keeps running": lambda s, lp, L, fin, n, e, a, m: _w07_beam(s, lp, L, fin, n, e, a, m, "EOS keeps running"),
        "EOS finishes anywhere in the top 2K": lambda s, lp, L, fin, n, e, a, m: _w07_beam(s, lp, L, fin, n, e, a, m, "EOS finishes anywhere in the top 2K"),
        "length excludes EOS": lambda s, lp, L, fin, n, e, a, m: _w07_beam(s, lp, L, fin, n, e, a, m, "length excludes EOS"),
        "no penalty on finished": lambda s, lp, L, fin, n, e, a, m: _w07_beam(s, lp, L, fin, n, e, a, m, "no penalty on finished"),
        "finished kept worst first": lambda s, lp, L, fin, n, e, a, m: _w07_beam(s, lp, L, fin, n, e, a, m, "finished kept worst first"),
        "heuristic stopping (current length)": lambda s, lp, L, fin, n, e, a, m: _w07_beam(s, lp, L, fin, n, e, a, m, "heuristic stopping (current length)"),
        "done as soon as finished is full": lambda s, lp, L, fin, n, e, a, m: _w07_beam(s, lp, L, fin, n, e, a, m, "done as soon as finished is full"),
    },
    "07.repetition_penalty": {
        "always divides (negative logits go up)": lambda z, ids, r: _w07_penalty(z, ids, r, "always divide"),
        "subtracts the penalty": lambda z, ids, r: _w07_penalty(z, ids, r, "subtract"),
        "penalises once per occurrence": lambda z, ids, r: _w07_penalty(z, ids, r, "per occurrence"),
        "uses the first row's history for every row": lambda z, ids, r: _w07_penalty(z, ids, r, "first row's history for all"),
        "changes the logits in place": lambda z, ids, r: _w07_penalty(z, ids, r, "in place"),
        "penalises the unseen tokens": lambda z, ids, r: _w07_penalty(z, ids, r, "penalises unseen tokens"),
    },
}
WRONG_ANSWERS.update(WRONG_07)
