"""Beam search with length penalty (lesson 07, ``lessons/07_decoding``).

Greedy keeps one sequence; beam search keeps the ``K = num_beams`` best partial sequences
("beams") and, each step, extends all of them by every token, keeping the K best of the K*V
candidates. All beams run as one batch of ``B*K`` rows through the model.

Scoring (the Hugging Face ``BeamSearchScorer`` convention)::

    score(hyp) = sum of log p(token | prefix) over the generated tokens / length ** length_penalty

where ``length`` counts the *generated* tokens only (prompt excluded), EOS included. While beams
are running they are ranked by the plain sum of log-probs; the length penalty is applied to
*finished* hypotheses. ``length_penalty = 0`` is the raw log-probability (which prefers short
outputs: every extra token adds a negative term), ``1`` is the per-token average, ``> 1`` favours
longer outputs even more, ``< 0`` favours shorter ones.

Finished hypotheses (a beam that chose EOS, or every live beam when ``max_new_tokens`` is reached)
go into a heap that keeps the ``num_beams`` best scores. An EOS candidate only counts if it is among
the top ``num_beams`` candidates of the step (the top ``2*num_beams`` are considered, so that K
non-EOS candidates are always left to continue). A prompt is *done* when, per ``early_stopping``:

* ``True``: the heap holds ``num_beams`` hypotheses.
* ``False`` (the default, a heuristic): the heap is full and its worst score beats the best running
  beam's sum of log-probs divided by its *current* length ** length_penalty. Cheap, but with
  ``length_penalty > 0`` a longer continuation could still have scored better.
* ``"never"``: like ``False`` but with the best length the beam could still reach
  (``max_new_tokens`` if ``length_penalty > 0``): the canonical, exact stopping rule.

``num_beams=1`` is greedy decoding (with ``early_stopping`` True or False). Ties between equal
scores go to the lower (beam, token) index.

The penalty is ``length ** alpha`` (Hugging Face's form). GNMT (Wu et al., 2016) divides by
``((5 + length) / 6) ** alpha`` instead; both only matter between hypotheses of different lengths,
i.e. between *finished* hypotheses (all running beams have the same length at a step, so dividing
their sums by the same number never changes their ranking).

:func:`beam_step` is one step of the search above for one prompt row, with plain values (the graded
exercise of lesson 07 and its reference): expand, finish the EOS candidates among the top K, keep K
running beams, update the finished scores and decide whether the row is done (the exact rule).
"""

from __future__ import annotations

import heapq
import itertools
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from lmlab.infer.decoding.steps import Model, Stepper, check_common, inference, prepare_ids, process_history
from lmlab.infer.decoding.logits import check_logits
from lmlab.argcheck import check_int, check_number, check_tensor

__all__ = ["beam_search", "beam_step", "BeamSearchResult", "Hypothesis", "EARLY_STOPPING"]

EARLY_STOPPING = (True, False, "never")


@dataclass
class Hypothesis:
    """One finished sequence: ``ids`` holds prompt + generated tokens (EOS included if it ended so)."""

    ids: torch.Tensor  # (T_prompt + length,)
    score: float  # sum_logprobs / length ** length_penalty
    sum_logprobs: float  # log p(generated tokens | prompt)
    length: int  # generated tokens, EOS included


@dataclass
class BeamSearchResult:
    """Per prompt row: the best sequence, its score, and every finished hypothesis (best first)."""

    sequences: list[torch.Tensor]  # B x (T_b,): the best hypothesis' ids, prompt included
    scores: torch.Tensor  # (B,)
    hypotheses: list[list[Hypothesis]] = field(repr=False)  # B x (<= num_beams), sorted best first

    def padded(self, pad_id: int = 0, squeeze: bool = False) -> torch.Tensor:
        """The best sequences as one ``(B, T_max)`` tensor, right-padded with ``pad_id``."""
        T = max(s.numel() for s in self.sequences)
        out = torch.full((len(self.sequences), T), pad_id, dtype=torch.long, device=self.sequences[0].device)
        for b, s in enumerate(self.sequences):
            out[b, :s.numel()] = s
        return out[0] if squeeze and len(self.sequences) == 1 else out


class BeamHypotheses:
    """The finished hypotheses of one prompt row: a min-heap keeping the ``num_beams`` best."""

    def __init__(self, num_beams: int, length_penalty: float, early_stopping: bool | str, max_new_tokens: int):
        self.num_beams, self.length_penalty = num_beams, length_penalty
        self.early_stopping, self.max_new_tokens = early_stopping, max_new_tokens
        self.heap: list[tuple[float, int, Hypothesis]] = []  # (score, arrival, hyp); heap[0] = worst
        self.arrivals = itertools.count()  # equal scores: the earlier arrival is evicted first

    def __len__(self) -> int:
        return len(self.heap)

    @property
    def worst_score(self) -> float:
        return self.heap[0][0] if self.heap else math.inf

    def score(self, sum_logprobs: float, length: int) -> float:
        return sum_logprobs if length == 0 else sum_logprobs / length ** self.length_penalty

    def add(self, ids: torch.Tensor, sum_logprobs: float, length: int) -> None:
        score = self.score(sum_logprobs, length)
        if len(self) < self.num_beams or score > self.worst_score:
            heapq.heappush(self.heap, (score, next(self.arrivals), Hypothesis(ids.clone(), score, sum_logprobs, length)))
            if len(self) > self.num_beams:
                heapq.heappop(self.heap)  # drop the worst

    def is_done(self, best_running_sum_logprobs: float, cur_len: int) -> bool:
        """Can no running beam (best sum of log-probs so far, ``cur_len`` generated tokens) still
        enter the heap? See the module docstring for the three ``early_stopping`` rules."""
        if len(self) < self.num_beams:
            return False
        if self.early_stopping is True:
            return True
        length = cur_len
        if self.early_stopping == "never" and self.length_penalty > 0:
            length = self.max_new_tokens  # the longest a running beam can get: its best case
        return self.worst_score >= self.score(best_running_sum_logprobs, length)

    def sorted(self) -> list[Hypothesis]:
        return [h for _, _, h in sorted(self.heap, key=lambda e: (-e[0], e[1]))]


def beam_step(sum_logprobs: torch.Tensor, next_logprobs: torch.Tensor, length: int, finished: list[float],
              num_beams: int, eos_id: int | None, length_penalty: float, max_length: int):
    """One step of :func:`beam_search` for one prompt row (``early_stopping="never"``), plain values in and out.

    ``sum_logprobs`` ``(K,)``: the running beams' sums of log-probabilities, each over ``length``
    generated tokens; ``next_logprobs`` ``(K, V)``; ``finished``: the scores of the finished
    hypotheses so far (at most ``num_beams``). Candidates ``(k, v)`` with sum ``sum_logprobs[k] +
    next_logprobs[k, v]`` are walked best sum first among the top ``2 * num_beams`` (ties: lower
    ``k * V + v``): an EOS candidate ranked among the first ``num_beams`` finishes with score
    ``sum / (length + 1) ** length_penalty`` (EOS counts in the length); an EOS ranked lower is
    dropped; other candidates become running beams until ``num_beams`` are kept.

    Returns ``(beam_idx, token_idx, new_sums, finished, done)``: the kept running beams (long, long,
    float tensors, best first), the ``num_beams`` best finished scores (old and new, best first), and
    whether no running beam can still enter them: no beam is left, or ``finished`` is full and its
    worst score ``>=`` the best candidate's sum divided by the best length it could still reach
    (``max_length ** length_penalty`` for a positive penalty, ``(length + 1) ** length_penalty``
    otherwise).
    """
    where = "beam_step"
    check_tensor(sum_logprobs, "sum_logprobs", where, dim=1, floating=True)
    check_tensor(next_logprobs, "next_logprobs", where, shape=(sum_logprobs.numel(), None), floating=True)
    length = check_int(length, "length", where, minimum=0)
    num_beams = check_int(num_beams, "num_beams", where)
    eos_id = check_int(eos_id, "eos_id", where, minimum=0, allow_none=True)
    length_penalty = check_number(length_penalty, "length_penalty", where)
    max_length = check_int(max_length, "max_length", where, minimum=length + 1)
    K, V = next_logprobs.shape
    cand = (sum_logprobs[:, None] + next_logprobs).flatten()  # (K*V,): plain sums, all of length + 1
    order = torch.sort(cand, descending=True, stable=True).indices[:2 * num_beams]  # (<= 2K,)
    scores = sorted((float(s) for s in finished), reverse=True)
    kept: list[int] = []
    for rank, i in enumerate(order.tolist()):
        if cand[i].item() == -math.inf:
            break
        if i % V == eos_id:
            if rank < num_beams:
                scores.append(cand[i].item() / (length + 1) ** length_penalty)
        else:
            kept.append(i)
        if len(kept) == num_beams:
            break
    scores = sorted(scores, reverse=True)[:num_beams]
    idx = torch.tensor(kept, dtype=torch.long)
    best = cand[order[0]].item() if order.numel() else -math.inf
    reach = max_length if length_penalty > 0 else length + 1
    done = not kept or (len(scores) == num_beams and scores[-1] >= best / reach ** length_penalty)
    return idx // V, idx % V, cand[idx], scores, done


def _check_beam_args(num_beams, length_penalty, early_stopping) -> None:
    check_int(num_beams, "num_beams", note="1 = greedy")
    check_number(length_penalty, "length_penalty", note="0 = none, 1 = per-token average")
    # not check_choice: 1 == True, and early_stopping must be the bool itself or "never"
    if not any(early_stopping is v or (isinstance(v, str) and early_stopping == v) for v in EARLY_STOPPING):
        raise ValueError(f"early_stopping must be one of {EARLY_STOPPING}, got {early_stopping!r}")


def beam_search(
    model: Model,
    prompt_ids: torch.Tensor,
    num_beams: int,
    max_new_tokens: int,
    length_penalty: float = 1.0,
    eos_id: int | None = None,
    early_stopping: bool | str = False,
    *,
    repetition_penalty: float = 1.0,
    no_repeat_ngram_size: int = 0,
    use_cache: bool = True,
) -> BeamSearchResult:
    """Beam search over ``prompt_ids`` (``(T,)`` or ``(B, T)``), each row with its own K beams.

    Beams are ranked by the sum of log-probabilities of the (repetition-processed) next-token
    distribution; finished hypotheses by ``sum / length ** length_penalty`` (module docstring).
    Without ``eos_id`` every hypothesis has ``max_new_tokens`` tokens. Returns a
    :class:`BeamSearchResult`; ``result.sequences[b]`` is row b's best hypothesis.
    """
    _check_beam_args(num_beams, length_penalty, early_stopping)
    check_common(max_new_tokens, eos_id, repetition_penalty, no_repeat_ngram_size)
    idx, _ = prepare_ids(model, prompt_ids)  # (B, T0)
    B, T0 = idx.shape
    K = num_beams
    hyps = [BeamHypotheses(K, float(length_penalty), early_stopping, max_new_tokens) for _ in range(B)]
    done = [False] * B

    ids = idx.repeat_interleave(K, dim=0)  # (B*K, T0): K copies of each prompt
    beam_scores = torch.full((B, K), -math.inf, device=idx.device)  # (B, K)
    beam_scores[:, 0] = 0.0  # the copies are identical: start from one of them only
    stepper = Stepper(model, use_cache)
    with inference(model):
        for step in range(max_new_tokens):
            cur_len = step + 1  # generated tokens once this step's token is appended
            logits = stepper(ids).float()  # (B*K, V)
            check_logits(logits, "the model's logits")
            logits = process_history(logits, ids, repetition_penalty, no_repeat_ngram_size)  # (B*K, V)
            V = logits.size(-1)
            if eos_id is not None and eos_id >= V:
                raise ValueError(f"eos_id must be a token id in [0, V={V}), got {eos_id}")
            dead = torch.isneginf(logits).all(dim=-1, keepdim=True)  # (B*K, 1): everything blocked
            logprobs = torch.where(dead, -math.inf, F.log_softmax(logits.masked_fill(dead, 0.0), dim=-1))  # (B*K, V)
            cand = (logprobs + beam_scores.view(-1, 1)).view(B, K * V)  # (B, K*V): running sums
            n_cand = min(2 * K, K * V)
            top = torch.sort(cand, dim=-1, descending=True, stable=True)  # stable: ties -> lower index
            top_scores, top_flat = top.values[:, :n_cand], top.indices[:, :n_cand]  # (B, 2K)
            top_beam, top_token = top_flat // V, top_flat % V  # (B, 2K) each

            next_scores = torch.full((B, K), -math.inf, device=ids.device)  # (B, K)
            next_tokens = torch.full((B, K), eos_id if eos_id is not None else 0, dtype=torch.long, device=ids.device)
            next_rows = torch.arange(B * K, device=ids.device).view(B, K)  # (B, K): source row per slot
            for b in range(B):
                if done[b]:
                    next_scores[b] = 0.0  # padding: a done row's beams are never read again
                    continue
                slot = 0
                for rank in range(n_cand):
                    score = top_scores[b, rank].item()
                    if score == -math.inf:
                        break  # sorted: the rest are impossible too
                    row, token = b * K + top_beam[b, rank].item(), top_token[b, rank].item()
                    if token == eos_id:
                        if rank < K:  # an EOS only counts among the top-K candidates
                            finished = torch.cat([ids[row], ids.new_tensor([token])])
                            hyps[b].add(finished, score, cur_len)
                    else:
                        next_scores[b, slot], next_tokens[b, slot], next_rows[b, slot] = score, token, row
                        slot += 1
                    if slot == K:
                        break
                # slots left unfilled (fewer than K live candidates) stay dead: score -inf
                best = top_scores[b, 0].item()
                done[b] = slot == 0 or hyps[b].is_done(best, cur_len)

            rows = next_rows.view(-1)  # (B*K,)
            ids = torch.cat([ids[rows], next_tokens.view(-1, 1)], dim=1)  # (B*K, T + 1)
            stepper.reorder(rows)
            beam_scores = next_scores
            if all(done):
                break

    # Rows still running at max_new_tokens: their live beams are finished hypotheses too.
    for b in range(B):
        if done[b]:
            continue
        for j in range(K):
            score = beam_scores[b, j].item()
            if score > -math.inf:
                hyps[b].add(ids[b * K + j], score, ids.size(1) - T0)

    ranked = [h.sorted() for h in hyps]
    for b, r in enumerate(ranked):
        if not r:  # only possible when blocking forbade every continuation
            raise ValueError(f"beam search found no valid hypothesis for prompt row {b}: every continuation was blocked")
    return BeamSearchResult(
        sequences=[r[0].ids for r in ranked],
        scores=torch.tensor([r[0].score for r in ranked]),
        hypotheses=ranked,
    )
