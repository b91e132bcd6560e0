"""Plausible wrong answers to 04.flash_attention_forward."""

import math

import torch


def _flash(q, k, v, mask=None, block_q=4, block_k=4, mistake=""):
    B, nh, Tq, hs = q.shape
    out, lse = q.new_empty(B, nh, Tq, v.size(-1)), q.new_empty(B, nh, Tq)
    if mistake == "full softmax, not tiled":
        s = q @ k.transpose(-2, -1) / math.sqrt(hs)
        if mask is not None:
            s = s.masked_fill(~mask, -math.inf)
        return torch.softmax(s, -1) @ v, torch.logsumexp(s, -1)
    for i0 in range(0, Tq, block_q):
        q_i = q[:, :, i0:i0 + block_q]
        bq = q_i.size(2)
        m, l, acc = q.new_full((B, nh, bq), -math.inf), q.new_zeros(B, nh, bq), q.new_zeros(B, nh, bq, v.size(-1))
        for j0 in range(0, k.size(2), block_k):
            s = q_i @ k[:, :, j0:j0 + block_k].transpose(-2, -1) / math.sqrt(hs)
            if mask is not None and mistake != "mask ignored":
                s = s.masked_fill(~mask[i0:i0 + bq, j0:j0 + block_k], -math.inf)
            m_t = s.amax(-1)
            if mistake == "no guard for a fully hidden row (NaN)":
                p = torch.exp(s - m_t[..., None])
            else:
                p = torch.exp(s - m_t.clamp_min(torch.finfo(s.dtype).min)[..., None])
            m_new = torch.maximum(m, m_t)
            ref = m_new.clamp_min(torch.finfo(s.dtype).min)
            a_old = torch.ones_like(m) if mistake == "running result not rescaled" else torch.exp(m - ref)
            a_new = torch.exp(m_t - ref)
            l = a_old * l + a_new * p.sum(-1)
            acc = a_old[..., None] * acc + a_new[..., None] * (p @ v[:, :, j0:j0 + block_k])
            m = m_new
        out[:, :, i0:i0 + bq] = acc / l[..., None]
        lse[:, :, i0:i0 + bq] = m if mistake == "lse is the row max only" else m + torch.log(l)
    return out, lse


WRONG = {
    "04.flash_attention_forward": {m: (lambda q, k, v, mask=None, block_q=4, block_k=4, m=m: _flash(q, k, v, mask, block_q, block_k, m))
                                   for m in ("full softmax, not tiled", "mask ignored", "no guard for a fully hidden row (NaN)",
                                             "running result not rescaled", "lse is the row max only")},
}
