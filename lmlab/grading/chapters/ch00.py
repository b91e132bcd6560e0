"""Chapter 00 graders (``exercises/00_tour.ipynb``): masks, a tokenizer, the loss, batches.

Every check compares with a torch built-in (``scaled_dot_product_attention``, ``F.cross_entropy``),
an independent construction (an ``arange`` comparison), or a property (round trips, shapes,
reproducibility with a seeded generator). lmlab's own implementation is only the ``reference``
that the tests feed through the same checks.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from lmlab.grading.assertions import expect_close, expect_equal, expect_tensor, expect_true
from lmlab.grading.chapters import ch00_model  # noqa: F401 (registers 00.attention_head, 00.gpt_forward)
from lmlab.grading.registry import Check, Exercise, register
from lmlab.grading.seeds import check_generator

# The notebook's order (00_tour.py): the score table and the exercise notebook follow it.
EXERCISES = (
    "00.causal_mask",
    "00.prefix_lm_mask",
    "00.CharTokenizer",
    "00.cross_entropy",
    "00.sample_batch",
    "00.attention_head",
    "00.gpt_forward",
)


# ---------------------------------------------------------------------------------------------
# Independent constructions
# ---------------------------------------------------------------------------------------------


def _causal(T: int) -> torch.Tensor:
    i = torch.arange(T)
    return i[None, :] <= i[:, None]  # key j <= query i


def _prefix(T: int, p: int) -> torch.Tensor:
    i = torch.arange(T)
    return i[None, :] <= torch.clamp(i, min=p - 1)[:, None]  # key j <= max(i, p - 1)


def _qkv(T: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = check_generator(seed)
    return tuple(torch.randn(1, 2, T, 8, generator=g) for _ in range(3))  # (B, heads, T, head_dim)


# ---------------------------------------------------------------------------------------------
# 00.causal_mask
# ---------------------------------------------------------------------------------------------


def _causal_small(f):
    expect_close(f(1), torch.ones(1, 1, dtype=torch.bool), "causal_mask(1)")
    expect_close(f(4), _causal(4), "causal_mask(4)")


def _causal_sdpa(f):
    T = 9
    mask = expect_tensor(f(T), f"causal_mask({T})", shape=(T, T), dtype=torch.bool)
    q, k, v = _qkv(T, seed=1)
    expect_close(F.scaled_dot_product_attention(q, k, v, attn_mask=mask),
                 F.scaled_dot_product_attention(q, k, v, is_causal=True),
                 f"attention output with your causal_mask({T}) (vs torch's is_causal=True)", atol=1e-5)


def _causal_count(f):
    T = 64
    mask = expect_tensor(f(T), f"causal_mask({T})", shape=(T, T), dtype=torch.bool)
    expect_true(bool(mask.diagonal().all()), f"causal_mask({T}): every token must see itself (the diagonal must be True)")
    expect_equal(int(mask.sum()), T * (T + 1) // 2, f"number of True entries in causal_mask({T}) (T(T+1)/2)")
    expect_close(mask, _causal(T), f"causal_mask({T})")


register(Exercise(
    id="00.causal_mask",
    points=2,
    signature="causal_mask(T: int) -> torch.Tensor of shape (T, T) and dtype bool",
    hint="mask[i, j] is True when key j is not after query i: the lower triangle, diagonal included.",
    minutes=5,
    hints=(
        "In a causal decoder a token may look at itself and at every earlier token, never at a later one. Row i of the "
        "mask is query i, column j is key j.",
        "The result is (T, T) of dtype bool, True exactly where the key is not after the query. Either compare a "
        "column of positions (T, 1) with a row (1, T) by broadcasting, or keep the lower triangle of an all-True (T, "
        "T) matrix.",
        "i = torch.arange(T)\nreturn ...  # i as a row compared with i as a column: (T, T) bool",
    ),
    checks=(
        Check("causal_mask(1) and causal_mask(4) against the lower triangle", _causal_small),
        Check("your mask in scaled_dot_product_attention equals is_causal=True", _causal_sdpa),
        Check("causal_mask(64): diagonal, T(T+1)/2 allowed pairs, exact match", _causal_count),
    ),
    reference="lmlab.data.masks:causal_mask",
))

# ---------------------------------------------------------------------------------------------
# 00.prefix_lm_mask
# ---------------------------------------------------------------------------------------------


def _prefix_small(f):
    expect_close(f(6, 3), _prefix(6, 3), "prefix_lm_mask(6, 3)")


def _prefix_edges(f):
    expect_close(f(5, 0), _causal(5), "prefix_lm_mask(5, 0) (no prefix: the causal mask)")
    expect_close(f(5, 1), _causal(5), "prefix_lm_mask(5, 1) (a one-token prefix: still causal)")
    expect_close(f(5, 5), torch.ones(5, 5, dtype=torch.bool), "prefix_lm_mask(5, 5) (all prefix: full attention)")


def _prefix_invariance(f):
    T, p = 12, 5
    mask = expect_tensor(f(T, p), f"prefix_lm_mask({T}, {p})", shape=(T, T), dtype=torch.bool)
    q, k, v = _qkv(T, seed=2)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    k2, v2 = k.clone(), v.clone()
    k2[..., p:, :] += 3.0  # change every token after the prefix
    v2[..., p:, :] -= 2.0
    out2 = F.scaled_dot_product_attention(q, k2, v2, attn_mask=mask)
    expect_close(out2[..., :p, :], out[..., :p, :], f"attention output at prefix positions with prefix_lm_mask({T}, {p}) "
                 "after changing the tokens after the prefix (the prefix must not see them)", atol=1e-5)
    expect_close(mask, _prefix(T, p), f"prefix_lm_mask({T}, {p})")


register(Exercise(
    id="00.prefix_lm_mask",
    points=2,
    signature="prefix_lm_mask(T: int, prefix_len: int) -> torch.Tensor of shape (T, T) and dtype bool",
    hint="start from the causal mask, then let the prefix block [:prefix_len, :prefix_len] see itself in both directions.",
    minutes=5,
    hints=(
        "A prefix decoder reads its prefix (the prompt) in both directions and generates the rest causally: prefix "
        "tokens see each other both ways, later tokens see the whole prefix and their own past.",
        "Start from the (T, T) causal mask. The top-left prefix_len x prefix_len block becomes all True; nothing else "
        "changes (rows after the prefix already see every earlier key). prefix_len = 0 gives the causal mask back.",
        "mask = ...  # the causal mask, (T, T) bool\n...  # open up the prefix block\nreturn mask",
    ),
    checks=(
        Check("prefix_lm_mask(6, 3) against an independent construction", _prefix_small),
        Check("edge cases: prefix_len 0, 1 and T", _prefix_edges),
        Check("prefix positions do not see the tokens after the prefix (via scaled_dot_product_attention)", _prefix_invariance),
    ),
    reference="lmlab.data.masks:prefix_lm_mask",
))

# ---------------------------------------------------------------------------------------------
# 00.CharTokenizer
# ---------------------------------------------------------------------------------------------


def _tok_vocab(cls):
    tok = cls("hello")
    expect_equal(list(tok.chars), ["e", "h", "l", "o"], "CharTokenizer('hello').chars (the sorted distinct characters)")
    expect_equal(tok.vocab_size, 4, "CharTokenizer('hello').vocab_size")
    expect_equal(dict(tok.stoi), {"e": 0, "h": 1, "l": 2, "o": 3}, "CharTokenizer('hello').stoi")


def _tok_encode(cls):
    ids = cls("hello").encode("hello")
    expect_true(isinstance(ids, list) and all(type(i) is int for i in ids),
                f"CharTokenizer('hello').encode('hello') should return a list of ints, got {type(ids).__name__}"
                + (f" of {type(ids[0]).__name__}" if isinstance(ids, (list, tuple)) and ids else ""))
    expect_equal(ids, [1, 0, 2, 2, 3], "CharTokenizer('hello').encode('hello')")
    expect_equal(cls("hello").encode("hole"), [1, 3, 2, 0], "CharTokenizer('hello').encode('hole')")


def _tok_roundtrip(cls):
    text = "Naïve café — 東京!\nTabs\tand  spaces, digits 0123."
    tok = cls(text)
    expect_equal(tok.vocab_size, len(set(text)), "vocab_size for a text with unicode characters")
    ids = tok.encode(text)
    expect_true(isinstance(ids, list) and len(ids) == len(text), f"encode should give one id per character ({len(text)}), got {len(ids) if hasattr(ids, '__len__') else ids!r}")
    expect_true(all(0 <= i < tok.vocab_size for i in ids), "every id must be in [0, vocab_size)")
    expect_equal(len(set(ids)), len(set(text)), "number of distinct ids (each character needs its own id)")
    expect_equal(tok.decode(ids), text, "decode(encode(text))")
    expect_equal(tok.decode([]), "", "decode([])")


register(Exercise(
    id="00.CharTokenizer",
    points=3,
    signature="CharTokenizer(text: str) with .chars, .stoi, .vocab_size, .encode(str) -> list[int], .decode(list[int]) -> str",
    hint="the vocabulary is every distinct character of the text, in sorted order; encode and decode are two look-ups, one in "
         "each direction.",
    minutes=10,
    hints=(
        "A character tokenizer gives each distinct character of the training text one id. Sorting the characters makes "
        "the ids reproducible: the same text always gives the same vocabulary.",
        "__init__: chars is the sorted list of distinct characters; stoi maps a character to its index in chars. "
        "vocab_size is how many there are. encode(str) gives one id per character; decode(list of ids) gives the "
        "string back, so decode(encode(s)) == s.",
        "self.chars = ...  # sorted, distinct\nself.stoi = ...  # character -> its index\n\n# vocab_size:\nreturn ...\n"
        "\n# encode(s):\nreturn [... for ch in s]\n\n# decode(ids):\nreturn \"\".join(...)",
    ),
    checks=(
        Check("the vocabulary of CharTokenizer('hello')", _tok_vocab),
        Check("encode gives a list of ids that follow the sorted characters", _tok_encode),
        Check("decode(encode(text)) == text on unicode text", _tok_roundtrip),
    ),
    reference="lmlab.data.text:CharTokenizer",
    kind="class",
))

# ---------------------------------------------------------------------------------------------
# 00.cross_entropy
# ---------------------------------------------------------------------------------------------


def _logits(B, T, V, seed, scale=1.0):
    g = check_generator(seed)
    return torch.randn(B, T, V, generator=g) * scale, torch.randint(V, (B, T), generator=g)


def _builtin_ce(logits, targets):
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1))


def _ce_small(f):
    logits, targets = _logits(2, 3, 5, seed=3)
    want = _builtin_ce(logits, targets)  # before the learner's call
    got = f(logits, targets)
    expect_tensor(got, "cross_entropy(logits (2, 3, 5), targets (2, 3))", shape=())
    expect_close(got, want, "cross_entropy(logits (2, 3, 5), targets (2, 3)) vs F.cross_entropy", atol=1e-5)


def _ce_uniform(f):
    V = 7
    got = f(torch.zeros(3, 4, V), torch.randint(V, (3, 4), generator=check_generator(4)))
    expect_close(got, torch.tensor(math.log(V)), f"cross_entropy of uniform logits over V={V} (should be log V)", atol=1e-5)


def _ce_stable(f):
    logits, targets = _logits(2, 4, 6, seed=5, scale=1000.0)
    want = _builtin_ce(logits, targets)
    expect_close(f(logits, targets), want,
                 "cross_entropy with logits around ±1000 (needs the log-sum-exp trick)", atol=1e-3, rtol=1e-5)


def _ce_grad(f):
    logits, targets = _logits(2, 5, 11, seed=6)
    mine = logits.clone().requires_grad_(True)
    loss = f(mine, targets)
    expect_true(isinstance(loss, torch.Tensor) and loss.requires_grad,
                "cross_entropy must return a tensor that autograd can backpropagate through (no .item(), no .detach())")
    loss.backward()
    ref = logits.clone().requires_grad_(True)
    _builtin_ce(ref, targets).backward()
    expect_close(mine.grad, ref.grad, "the gradient of your loss w.r.t. the logits (vs F.cross_entropy's)", atol=1e-6)


register(Exercise(
    id="00.cross_entropy",
    points=2,
    signature="cross_entropy(logits: (B, T, V) tensor, targets: (B, T) int tensor) -> 0-dim tensor (mean over B*T)",
    hint="turn the logits into log-probabilities in a numerically stable way, pick the target's entry at every position, and "
         "average the negatives.",
    minutes=10,
    hints=(
        "Cross-entropy is the average of -log p(target) over all positions. Computing log-softmax as the logits minus "
        "their log-sum-exp avoids overflow in exp for large logits.",
        "logits (B, T, V) -> log-probabilities (B, T, V): subtract the log-sum-exp over the last dim, kept as (B, T, "
        "1) so it broadcasts. Pick the target's entry at each (b, t) with gather along the last dim (targets reshaped "
        "to (B, T, 1)), giving (B, T). Return minus the mean: a 0-dim tensor.",
        "log_probs = ...  # (B, T, V)\npicked = log_probs.gather(-1, ...).squeeze(-1)  # (B, T)\nreturn ...",
    ),
    checks=(
        Check("a small batch against F.cross_entropy", _ce_small),
        Check("uniform logits give log V", _ce_uniform),
        Check("huge logits stay finite (numerical stability)", _ce_stable),
        Check("its gradient equals F.cross_entropy's", _ce_grad),
    ),
    reference="lmlab.train.loop:lm_loss",
))

# ---------------------------------------------------------------------------------------------
# 00.sample_batch
# ---------------------------------------------------------------------------------------------


def _windows(f, ids, B, T, seed):
    x, y = f(ids, B, T, check_generator(seed))
    expect_tensor(x, f"x from sample_batch(ids, {B}, {T}, generator)", shape=(B, T), dtype=ids.dtype)
    expect_tensor(y, f"y from sample_batch(ids, {B}, {T}, generator)", shape=(B, T), dtype=ids.dtype)
    return x, y


def _batch_shifted(f):
    ids = torch.arange(100) * 3 + 1  # distinct values: a value tells its position
    B, T = 6, 8
    x, y = _windows(f, ids, B, T, seed=7)
    for b in range(B):
        start = int((x[b, 0] - 1) // 3)
        expect_true(0 <= start and int(x[b, 0]) % 3 == 1 and start + T < len(ids),
                    f"x[{b}, 0] = {int(x[b, 0])} does not start a full window of ids (starts must be in [0, len(ids) - context_length))")
        window = ids[start:start + T + 1]
        expect_close(x[b], window[:T], f"row {b} of x (a contiguous window ids[s:s+{T}])")
        expect_close(y[b], window[1:], f"row {b} of y (the window shifted by one: y[:, t] == ids[s + t + 1])")


def _batch_edges(f):
    T = 5
    ids = torch.arange(T + 1) * 10
    x, y = _windows(f, ids, 3, T, seed=8)
    expect_close(x, ids[:T].expand(3, T), "x when len(ids) == context_length + 1 (only one window exists)")
    expect_close(y, ids[1:].expand(3, T), "y when len(ids) == context_length + 1 (only one window exists)")
    ids = torch.arange(T + 3)  # three possible starts: 0, 1, 2
    x, _ = _windows(f, ids, 300, T, seed=9)
    expect_equal(sorted(set(x[:, 0].tolist())), [0, 1, 2], "the starts drawn from a stream with exactly 3 possible windows")


def _batch_random(f):
    ids = torch.arange(10_000)
    x1, _ = _windows(f, ids, 64, 4, seed=10)
    x2, _ = _windows(f, ids, 64, 4, seed=10)
    x3, _ = _windows(f, ids, 64, 4, seed=11)
    expect_close(x2, x1, "two batches drawn with generators seeded the same (use the generator you are given)")
    expect_true(not torch.equal(x1, x3), "batches drawn with different seeds should differ (use the generator you are given)")
    expect_true(len(set(x1[:, 0].tolist())) >= 32, "the 64 rows of a batch should start at random positions (too few distinct starts)")


register(Exercise(
    id="00.sample_batch",
    points=2,
    signature="sample_batch(ids: 1-D tensor, batch_size: int, context_length: int, generator: torch.Generator) -> (x, y), each (batch_size, context_length)",
    hint="draw batch_size random starts with the generator (leave room for the window and one more token); y is the same "
         "window one token later.",
    minutes=10,
    hints=(
        "A language model learns to predict the next token, so a training example is a window of text x and the same "
        "window shifted one token later, y. Random windows give varied batches; the generator makes them reproducible.",
        "starts: batch_size integers in [0, len(ids) - context_length), drawn with torch.randint and "
        "generator=generator (B,). Adding arange(context_length) (T,) to starts[:, None] gives a (B, T) index tensor; "
        "x is ids at those indices, y is ids one position later.",
        "starts = torch.randint(..., (batch_size,), generator=...)  # (B,)\n"
        "idx = ...  # (B, T): every start plus 0..T-1\nx, y = ..., ...\nreturn x, y",
    ),
    checks=(
        Check("x rows are windows of ids and y is x shifted by one", _batch_shifted),
        Check("the first and the last possible window can both be drawn", _batch_edges),
        Check("random starts, reproducible with a seeded generator", _batch_random),
    ),
    reference="lmlab.data.text:sample_batch",
))
