"""Plausible wrong answers to chapter 05's exercises; each must fail its grader (tests/test_grading_checks.py)."""

import torch


def _segment(n, k, g, how=""):
    if how == "equal":  # every span the same length (the remainder on the last)
        base = [n // k] * k
        base[-1] += n - sum(base)
        return base
    cuts = sorted((torch.randperm(n - 1, generator=g)[:k - 1] + 1).tolist())
    bounds = [0] + cuts + [n]
    lengths = [b - a for a, b in zip(bounds, bounds[1:])]
    if how == "off by one":  # spans one token longer than drawn
        lengths = [x + 1 for x in lengths]
    return lengths


def _mask(L, d, mu, seed, random_roll=False, how=""):
    g = torch.Generator().manual_seed(seed)
    if how == "int":
        n = min(max(int(L * d), 1), L - 1)  # truncates instead of rounding
    elif how == "ceil":
        n = min(max(-(-L * d // 1), 1), L - 1)
        n = int(n)
    else:
        n = min(max(round(L * d), 1), L - 1)
    k = max(1, round(n / mu))
    if how == "spans from length":
        k = max(1, round(L / mu))  # counts spans over the whole text
        k = min(k, n)
    noise = _segment(n, k, g, "equal" if how == "equal" else ("off by one" if how == "off by one" else ""))
    text = _segment(L - n, k, g)
    mask = torch.zeros(L, dtype=torch.bool)
    pos = 0
    pairs = zip(noise, text) if how == "noise first" else zip(text, noise)
    for a, b in pairs:
        if how == "noise first":
            mask[pos:pos + a] = True
        else:
            mask[pos + a:pos + a + b] = True
        pos += a + b
    mask = mask[:L]
    if random_roll and how != "no roll":
        if how == "roll by one":
            return torch.roll(mask, 1)
        mask = torch.roll(mask, int(torch.randint(L, (1,), generator=g)))
    return mask


def _fusion(tokens, mask, V, how=""):
    inputs, targets, k = [], [], 0
    n_spans = sum(1 for i, m in enumerate(mask) if m and (i == 0 or not mask[i - 1]))
    for i, (t, noisy) in enumerate(zip(tokens, mask)):
        if noisy and (i == 0 or not mask[i - 1]) or (how == "per token" and noisy):
            s = (V - n_spans + k) if how == "upward" else (V - 1 - k)
            inputs.append(s)
            if how != "no sentinels in targets":
                targets.append(s)
            k += 1
        if noisy:
            targets.append(t)
        else:
            inputs.append(t)
    if not mask[-1] and how != "no closing sentinel":
        targets.append((V - n_spans + k) if how == "upward" else V - 1 - k)
    return inputs, targets


def _t5_literal(tokens, mask, V):
    """T5's own code: targets = fuse(tokens, ~mask). Right when the text starts clean; a sentinel
    late when it starts with noise."""
    def fuse(ts, m):
        out, k = [], 0
        for i, (t, v) in enumerate(zip(ts, m)):
            if v and (i == 0 or not m[i - 1]):
                out.append(V - 1 - k)
                k += 1
            elif not v:
                out.append(t)
        return out
    return fuse(tokens, mask), fuse(tokens, [not v for v in mask])


def _prefix(tokens, P, how=""):
    ids = torch.tensor(tokens)
    T = len(tokens) - 1
    attn = torch.ones(T, T, dtype=torch.bool).tril()
    block = P + 1 if how == "prefix block one too big" else P
    if how != "causal attention":
        attn[:block, :block] = True
    if how == "loss on the prefix":
        loss = torch.ones(T, dtype=torch.bool)
    elif how == "loss from prefix_len":
        loss = torch.arange(T) >= P
    else:
        loss = torch.arange(T) >= P - 1
    return {"inputs": ids[:-1], "targets": ids[1:], "attn_mask": attn, "loss_mask": loss}


def _ul2(tokens, mask, mode, mode_ids, V, how=""):
    if mode == "[S]" and how != "sentinels for S":
        P = mask.index(True)
        prefix, targets = tokens[:P], tokens[P:]
    else:
        prefix, targets = _fusion(tokens, mask, V)
    if how == "mode at the end of the prefix":
        prefix = prefix + [mode_ids[mode]]
    elif how != "no mode token":
        prefix = [mode_ids[mode]] + prefix
    if how == "targets in the prefix":
        return _prefix(prefix + targets, len(prefix) + len(targets) - 1)
    return _prefix(prefix + targets, len(prefix), "loss on the prefix" if how == "loss on the prefix" else "")


WRONG = {
    "05.random_spans_noise_mask": {
        "off-by-one span lengths (each span one token too long)": lambda L, d, mu, s, random_roll=False: _mask(L, d, mu, s, random_roll, "off by one"),
        "noise fraction not matching (int() truncates instead of round)": lambda L, d, mu, s, random_roll=False: _mask(L, d, mu, s, random_roll, "int"),
        "noise fraction rounded up (ceil)": lambda L, d, mu, s, random_roll=False: _mask(L, d, mu, s, random_roll, "ceil"),
        "the last span always noise (random_roll ignored)": lambda L, d, mu, s, random_roll=False: _mask(L, d, mu, s, random_roll, "no roll"),
        "rolls by one instead of a random offset": lambda L, d, mu, s, random_roll=False: _mask(L, d, mu, s, random_roll, "roll by one"),
        "all noise spans equally long": lambda L, d, mu, s, random_roll=False: _mask(L, d, mu, s, random_roll, "equal"),
        "starts with noise": lambda L, d, mu, s, random_roll=False: _mask(L, d, mu, s, random_roll, "noise first"),
        "number of spans from the text length": lambda L, d, mu, s, random_roll=False: _mask(L, d, mu, s, random_roll, "spans from length"),
    },
    "05.sentinel_fusion": {
        "sentinels counted upward": lambda t, m, V: _fusion(t, m, V, "upward"),
        "one sentinel per noise token (no fusion)": lambda t, m, V: _fusion(t, m, V, "per token"),
        "targets without their sentinels": lambda t, m, V: _fusion(t, m, V, "no sentinels in targets"),
        "no closing sentinel": lambda t, m, V: _fusion(t, m, V, "no closing sentinel"),
        "T5's targets = fuse(~mask), a sentinel late when the text starts with noise": _t5_literal,
    },
    "05.prefix_lm_example": {
        "loss on the prefix": lambda t, P: _prefix(t, P, "loss on the prefix"),
        "loss starts one position late (t >= prefix_len)": lambda t, P: _prefix(t, P, "loss from prefix_len"),
        "causal attention (no bidirectional prefix)": lambda t, P: _prefix(t, P, "causal attention"),
        "prefix block one too big (a trained position sees its target)": lambda t, P: _prefix(t, P, "prefix block one too big"),
    },
    "05.ul2_example": {
        "no mode token": lambda t, m, mode, ids, V: _ul2(t, m, mode, ids, V, "no mode token"),
        "mode token at the end of the prefix": lambda t, m, mode, ids, V: _ul2(t, m, mode, ids, V, "mode at the end of the prefix"),
        "loss on the prefix": lambda t, m, mode, ids, V: _ul2(t, m, mode, ids, V, "loss on the prefix"),
        "S-denoiser with sentinels": lambda t, m, mode, ids, V: _ul2(t, m, mode, ids, V, "sentinels for S"),
        "targets inside the bidirectional prefix": lambda t, m, mode, ids, V: _ul2(t, m, mode, ids, V, "targets in the prefix"),
    },
}
