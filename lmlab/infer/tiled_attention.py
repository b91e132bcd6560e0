"""FlashAttention's algorithm, written from scratch in PyTorch (lesson 04, ``lessons/04_attention``).

Standard attention writes the ``(T, T)`` score matrix to GPU main memory (HBM), reads it back for
the softmax, writes the probabilities, reads them again: ``Θ(N d + N²)`` memory traffic and
``Θ(N²)`` extra memory. FlashAttention (Dao et al. 2022) never forms that matrix. It walks over
tiles: a block of queries ``Q_i`` stays in fast on-chip memory (SRAM, size ``M``) while blocks of
keys/values ``K_j, V_j`` stream past, and the softmax is computed *online*: a running row
maximum ``m`` and running sum ``l`` are rescaled whenever a larger score shows up::

    m_new = max(m, rowmax(S_ij))
    l     = exp(m - m_new) * l   + rowsum(exp(S_ij - m_new))
    acc   = exp(m - m_new) * acc + exp(S_ij - m_new) @ V_j

At the end ``O_i = acc / l`` equals ``softmax(Q_i K^T / sqrt(d)) V`` exactly (up to rounding), and
only ``logsumexp = m + log l`` (one number per query) is saved for the backward pass, which
*recomputes* each tile's probabilities from it instead of storing them. Extra memory is ``O(N)``;
HBM traffic is ``Θ(N² d² / M)`` (each K/V tile is re-read once per query tile of ``~M / 4d`` rows).

Here "HBM" is ordinary tensors and "SRAM" the tiles; :class:`IOStats` counts the elements read and
written so the lesson can plot the traffic against :func:`standard_attention_io`. It runs on the
CPU with Python loops: a teaching implementation, not a fast kernel.

Shapes: B = batch, nh = heads, T = tokens, hs = head_dim, bq / bk = tile sizes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from lmlab.argcheck import check_int, check_qkv

__all__ = ["online_softmax_merge", "tile_softmax", "flash_attention", "IOStats", "sram_block_sizes", "standard_attention_io"]


@dataclass
class IOStats:
    """Elements read from / written to "HBM" (the full q, k, v, out tensors) by one forward pass.

    ``reads`` and ``writes`` count tensor elements over all batch rows and heads;
    ``tiles`` the (query tile, key tile) pairs computed (skipped causal tiles not counted).
    """

    reads: int = 0
    writes: int = 0
    tiles: int = 0

    @property
    def total(self) -> int:
        return self.reads + self.writes


def standard_attention_io(N: int, d: int, batch_heads: int = 1) -> IOStats:
    """HBM traffic of standard attention (FlashAttention paper, Algorithm 0), in elements:
    read Q, K, write S = QK^T; read S, write P = softmax(S); read P, V, write O = PV.
    ``reads = 3Nd + 2N²``, ``writes = Nd + 2N²``: ``Θ(Nd + N²)``."""
    for name, value in (("N", N), ("d", d), ("batch_heads", batch_heads)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    reads = 2 * N * d + N * N + N * N + N * d
    writes = N * N + N * N + N * d
    return IOStats(reads=batch_heads * reads, writes=batch_heads * writes, tiles=1)


def sram_block_sizes(M: int, d: int) -> tuple[int, int]:
    """Tile sizes ``(block_q, block_k)`` for an SRAM of ``M`` elements and head size ``d``.

    A query tile of ``M // (4d)`` rows, so that ``Q_i``, ``O_i`` and the streamed ``K_j``, ``V_j``
    fit together; key tiles of ``min(M // (4d), d)`` rows keep the score tile ``block_q x block_k``
    within ``M / 4``. This is the FlashAttention paper's pair *swapped*: its Algorithm 1 (Dao et al.
    2022) takes key/value tiles of ``B_c = ⌈M/4d⌉`` rows and query tiles of ``B_r = min(⌈M/4d⌉, d)``,
    with keys in the outer loop. Here the loops are in FlashAttention-2's order (queries outside, keys
    inside), where the larger tile belongs to the queries: K and V are read ``N / block_q`` times,
    ``Θ(N² d² / M)``."""
    for name, value in (("M", M), ("d", d)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    if M < 4 * d:
        raise ValueError(f"M (SRAM size in elements) must be >= 4 * d = {4 * d} to hold one row of Q, O, K, V, got {M}")
    rows = M // (4 * d)
    return rows, min(rows, d)


def online_softmax_merge(m1, l1, acc1, m2, l2, acc2):
    """Merge two partial softmax results over disjoint key sets (lesson 04's exercise; the step every
    tile of :func:`flash_attention` and every block of :func:`lmlab.infer.paged.paged_attention` takes).

    Each part is ``(m, l, acc)``: the row max ``(..., R)``, ``l = sum exp(s - m)`` ``(..., R)`` and
    ``acc = sum exp(s - m) v`` ``(..., R, hs)``. Both parts are rescaled to the common max before
    adding; a part with ``m = -inf`` (nothing seen yet, or a fully masked tile) contributes nothing, and two
    empty parts merge into an empty one (``m = -inf``, ``l = 0``, ``acc = 0``, no NaN). Returns the merged triple.
    """
    m = torch.maximum(m1, m2)
    ref = m.masked_fill(m == -math.inf, 0.0)  # both parts empty: exp(-inf - 0) = 0, where exp(-inf + inf) is NaN
    a1, a2 = torch.exp(m1 - ref), torch.exp(m2 - ref)  # rescale each part to the common max
    return m, a1 * l1 + a2 * l2, a1[..., None] * acc1 + a2[..., None] * acc2


def tile_softmax(s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One tile's part for :func:`online_softmax_merge`: its row max ``m (..., R)`` and
    ``p = exp(s - m) (..., R, C)``. A row masked out entirely (``-inf``) gives ``p = 0`` (not NaN)."""
    m = s.amax(dim=-1)  # (..., R)
    p = torch.exp(s - m.clamp_min(torch.finfo(s.dtype).min)[..., None])  # (..., R, C)
    return m, p


def _scores(q_i: torch.Tensor, k_j: torch.Tensor, i0: int, j0: int, causal: bool) -> torch.Tensor:
    """One score tile ``Q_i K_j^T / sqrt(hs)``, ``-inf`` where a causal key lies after the query."""
    s = q_i @ k_j.transpose(-2, -1) / math.sqrt(q_i.size(-1))  # (B, nh, bq, bk)
    bq, bk = s.shape[-2:]
    if causal and j0 + bk - 1 > i0:  # the tile crosses the diagonal
        qpos = torch.arange(i0, i0 + bq, device=s.device)[:, None]  # (bq, 1)
        kpos = torch.arange(j0, j0 + bk, device=s.device)[None, :]  # (1, bk)
        s = s.masked_fill(kpos > qpos, float("-inf"))  # (B, nh, bq, bk)
    return s


def _flash_forward(q, k, v, causal, block_q, block_k, stats):
    B, nh, T_q, hs = q.shape
    T_k = k.size(2)
    out = q.new_empty(B, nh, T_q, v.size(-1))  # (B, nh, T, hs_v): lives in HBM
    lse = q.new_empty(B, nh, T_q)  # (B, nh, T): log-sum-exp per query, saved for backward
    for i0 in range(0, T_q, block_q):
        i1 = min(i0 + block_q, T_q)
        q_i = q[:, :, i0:i1]  # (B, nh, bq, hs): load a query tile into "SRAM"
        m = q.new_full((B, nh, i1 - i0), float("-inf"))  # (B, nh, bq): running max
        l = q.new_zeros(B, nh, i1 - i0)  # (B, nh, bq): running sum of exp(s - m)
        acc = q.new_zeros(B, nh, i1 - i0, v.size(-1))  # (B, nh, bq, hs_v): unnormalised output
        k_end = min(T_k, i1) if causal else T_k  # causal: keys after the tile's last query are never seen
        for j0 in range(0, k_end, block_k):
            j1 = min(j0 + block_k, T_k)
            k_j, v_j = k[:, :, j0:j1], v[:, :, j0:j1]  # (B, nh, bk, hs): stream a key/value tile
            s = _scores(q_i, k_j, i0, j0, causal)  # (B, nh, bq, bk)
            m_t, p = tile_softmax(s)  # (B, nh, bq), (B, nh, bq, bk)
            m, l, acc = online_softmax_merge(m, l, acc, m_t, p.sum(dim=-1), p @ v_j)  # finite m: tile 0 holds key 0
            if stats is not None:
                stats.reads += k_j.numel() + v_j.numel()
                stats.tiles += 1
        out[:, :, i0:i1] = acc / l[..., None]  # (B, nh, bq, hs_v): write O_i once
        lse[:, :, i0:i1] = m + torch.log(l)  # (B, nh, bq)
        if stats is not None:
            stats.reads += q_i.numel()
            stats.writes += (i1 - i0) * B * nh * (v.size(-1) + 1)  # O_i and its log-sum-exp
    return out, lse


def _flash_backward(q, k, v, out, lse, d_out, causal, block_q, block_k):
    """Gradients by recomputation: each tile's probabilities come back as exp(S_ij - lse_i)."""
    T_q, T_k = q.size(2), k.size(2)
    scale = 1.0 / math.sqrt(q.size(-1))
    D = (d_out * out).sum(dim=-1)  # (B, nh, T): rowsum(dO * O) = sum_j P_ij dP_ij
    dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
    for j0 in range(0, T_k, block_k):
        j1 = min(j0 + block_k, T_k)
        k_j, v_j = k[:, :, j0:j1], v[:, :, j0:j1]  # (B, nh, bk, hs)
        dk_j, dv_j = torch.zeros_like(k_j), torch.zeros_like(v_j)  # (B, nh, bk, hs): in "SRAM"
        i_start = (j0 // block_q) * block_q if causal else 0  # earlier queries never see these keys
        for i0 in range(i_start, T_q, block_q):
            i1 = min(i0 + block_q, T_q)
            q_i, do_i = q[:, :, i0:i1], d_out[:, :, i0:i1]  # (B, nh, bq, hs)
            s = _scores(q_i, k_j, i0, j0, causal)  # (B, nh, bq, bk)
            p = torch.exp(s - lse[:, :, i0:i1, None])  # (B, nh, bq, bk): the softmax, recomputed
            dv_j += p.transpose(-2, -1) @ do_i  # (B, nh, bk, hs_v)
            dp = do_i @ v_j.transpose(-2, -1)  # (B, nh, bq, bk)
            ds = p * (dp - D[:, :, i0:i1, None])  # (B, nh, bq, bk): softmax backward
            dq[:, :, i0:i1] += ds @ k_j * scale  # (B, nh, bq, hs)
            dk_j += ds.transpose(-2, -1) @ q_i * scale  # (B, nh, bk, hs)
        dk[:, :, j0:j1], dv[:, :, j0:j1] = dk_j, dv_j
    return dq, dk, dv


class _FlashAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, causal, block_q, block_k, stats):
        out, lse = _flash_forward(q, k, v, causal, block_q, block_k, stats)
        ctx.save_for_backward(q, k, v, out, lse)  # O(N) extra: lse, not the (T, T) probabilities
        ctx.causal, ctx.block_q, ctx.block_k = causal, block_q, block_k
        return out

    @staticmethod
    def backward(ctx, d_out):
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = _flash_backward(q, k, v, out, lse, d_out.contiguous(), ctx.causal, ctx.block_q, ctx.block_k)
        return dq, dk, dv, None, None, None, None


def flash_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool = False,
    block_q: int = 64,
    block_k: int = 64,
    stats: IOStats | None = None,
) -> torch.Tensor:
    """Tiled attention with the online softmax: same result as :func:`lmlab.model.attention.attention`
    (with a causal mask if ``causal``), never forming a ``(T_q, T_k)`` tensor.

    ``q (B, nh, T_q, hs)``, ``k (B, nh, T_k, hs)``, ``v (B, nh, T_k, hs_v)`` -> ``(B, nh, T_q, hs_v)``.
    Differentiable (backward recomputes the tiles from the saved log-sum-exp). ``causal`` needs
    ``T_q == T_k``. Pass an :class:`IOStats` as ``stats`` to count the forward's HBM reads/writes.
    The sequence lengths need not be multiples of the block sizes (the last tile is smaller).
    """

    check_qkv(q, k, v)
    check_int(block_q, "block_q")
    check_int(block_k, "block_k")
    if causal and q.size(2) != k.size(2):
        raise ValueError(f"causal=True needs as many queries as keys, got T_q={q.size(2)}, T_k={k.size(2)}")
    if stats is not None and not isinstance(stats, IOStats):
        raise ValueError(f"stats must be an IOStats or None, got {type(stats).__name__}")
    return _FlashAttention.apply(q, k, v, bool(causal), block_q, block_k, stats)
