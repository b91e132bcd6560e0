"""PagedAttention: the KV cache in fixed-size blocks, like virtual memory (lesson 08, ``lessons/08_inference``).

A contiguous KV cache must reserve room for the longest possible output of every request up
front, so most of the reserved memory holds nothing (vLLM measured only 20-38% of it used by real
tokens). PagedAttention (Kwon et al. 2023, vLLM) splits each sequence's cache into *blocks* of
``block_size`` tokens that can live anywhere in a shared pool:

* :class:`BlockManager` - bookkeeping only: a free list, a *block table* per sequence (logical
  block i -> physical block), reference counts, and copy-on-write. ``fork`` (parallel sampling,
  beam search) shares every block of the parent; the first append to a shared, partly filled
  last block copies it first. Only a sequence's last block is partly empty, so the waste is
  under one block per sequence.
* :class:`PagedKVCache` - the physical pool ``(L, n_blocks, nkv, block_size, hs)`` plus a
  manager; it speaks :class:`lmlab.infer.kv_cache.KVCache`'s protocol, so ``GPT.forward_with_cache`` can
  run on it, and ``reorder`` (beam search) is fork + free, sharing blocks instead of copying.
* :func:`paged_attention` - attention that reads K/V block by block through the block table
  (an online softmax over blocks, no contiguous copy); equal to attention on the contiguous cache.
* :func:`sample_request_lengths` and :func:`simulate_waste` - the memory-waste experiment.

Shapes: L = layers, nkv = K/V heads, nh = query heads, bs = block size, hs = head_dim.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from lmlab.infer.tiled_attention import online_softmax_merge, tile_softmax
from lmlab.infer.kv_cache import LayerKVCache
from lmlab.argcheck import check_int

__all__ = ["BlockManager", "OutOfBlocksError", "PagedKVCache", "paged_attention", "sample_request_lengths", "simulate_waste",
           "blocks_needed", "locate_token"]


def blocks_needed(n_tokens: int, block_size: int) -> int:
    """Blocks of ``block_size`` tokens that hold ``n_tokens`` tokens: ``ceil(n / bs)`` (0 for 0).
    Lesson 08's exercise; the block manager, the cache and the waste simulation all count with it."""
    return -(-n_tokens // block_size)


def locate_token(block_table, position: int, block_size: int) -> tuple[int, int]:
    """``(physical block, offset)`` of token ``position`` of a sequence with this block table
    (lesson 08's exercise; how the cache writes and reads every token)."""
    return block_table[position // block_size], position % block_size


class OutOfBlocksError(RuntimeError):
    """The pool has too few free blocks (a server would preempt or queue the request)."""


class BlockManager:
    """Allocates fixed-size blocks to sequences. Pure bookkeeping: no tensors.

    ``on_copy(src, dst)`` is called when copy-on-write needs physical block ``src`` copied to ``dst``.
    """

    def __init__(self, n_blocks: int, block_size: int, on_copy: Callable[[int, int], None] | None = None):
        check_int(n_blocks, "n_blocks")
        check_int(block_size, "block_size")
        self.n_blocks, self.block_size, self.on_copy = n_blocks, block_size, on_copy
        self.free_blocks: list[int] = list(range(n_blocks - 1, -1, -1))  # a stack: pop() gives block 0 first
        self.ref_counts = [0] * n_blocks
        self.tables: dict[int, list[int]] = {}  # sequence id -> physical block ids
        self.lengths: dict[int, int] = {}  # sequence id -> tokens stored
        self._next_id = 0

    # ---- sequences ----
    def _check_seq(self, seq_id) -> None:
        if seq_id not in self.tables:
            raise ValueError(f"seq_id {seq_id!r} is not an allocated sequence (never allocated, or freed); live: {sorted(self.tables)}")

    def allocate(self, seq_id: int | None = None) -> int:
        """Start an empty sequence (no blocks yet); returns its id."""
        if seq_id is None:
            while self._next_id in self.tables:
                self._next_id += 1
            seq_id = self._next_id
        if seq_id in self.tables:
            raise ValueError(f"seq_id {seq_id!r} is already allocated")
        self.tables[seq_id], self.lengths[seq_id] = [], 0
        return seq_id

    def fork(self, parent: int, child: int | None = None) -> int:
        """A new sequence sharing every block of ``parent`` (reference counts + 1, nothing copied)."""
        self._check_seq(parent)
        child = self.allocate(child)
        self.tables[child] = list(self.tables[parent])
        self.lengths[child] = self.lengths[parent]
        for b in self.tables[child]:
            self.ref_counts[b] += 1
        return child

    def free(self, seq_id: int) -> None:
        """Drop a sequence; blocks nobody else references go back to the free list."""
        self._check_seq(seq_id)
        for b in reversed(self.tables.pop(seq_id)):
            self.ref_counts[b] -= 1
            if self.ref_counts[b] == 0:
                self.free_blocks.append(b)
        del self.lengths[seq_id]

    def _take(self) -> int:
        b = self.free_blocks.pop()
        self.ref_counts[b] = 1
        return b

    def blocks_needed(self, seq_id: int, n_tokens: int = 1) -> int:
        """Free blocks an :meth:`append` of ``n_tokens`` would take (copy-on-write included)."""
        self._check_seq(seq_id)
        n, table = self.lengths[seq_id], self.tables[seq_id]
        new = blocks_needed(n + n_tokens, self.block_size) - len(table)
        cow = n % self.block_size != 0 and n_tokens > 0 and self.ref_counts[table[-1]] > 1
        return new + int(cow)

    def append(self, seq_id: int, n_tokens: int = 1) -> list[tuple[int, int]]:
        """Make room for ``n_tokens`` more tokens; returns their ``(physical block, offset)`` slots.

        All or nothing: raises :class:`OutOfBlocksError` (changing nothing) if the pool is short."""
        check_int(n_tokens, "n_tokens", minimum=0)
        need = self.blocks_needed(seq_id, n_tokens)
        if need > len(self.free_blocks):
            raise OutOfBlocksError(f"appending {n_tokens} tokens to sequence {seq_id} needs {need} free blocks, {len(self.free_blocks)} left")
        n, table, bs = self.lengths[seq_id], self.tables[seq_id], self.block_size
        if n % bs and n_tokens and self.ref_counts[table[-1]] > 1:  # copy-on-write the shared last block
            old, new = table[-1], self._take()
            self.ref_counts[old] -= 1
            table[-1] = new
            if self.on_copy is not None:
                self.on_copy(old, new)
        slots = []
        for pos in range(n, n + n_tokens):
            if pos // bs == len(table):  # the next block
                table.append(self._take())
            slots.append(locate_token(table, pos, bs))
        self.lengths[seq_id] = n + n_tokens
        return slots

    # ---- views ----
    def block_table(self, seq_id: int) -> list[int]:
        self._check_seq(seq_id)
        return list(self.tables[seq_id])

    @property
    def num_free(self) -> int:
        return len(self.free_blocks)

    def check_block_live(self, block: int) -> None:
        if not isinstance(block, int) or not 0 <= block < self.n_blocks:
            raise ValueError(f"block must be an int in [0, {self.n_blocks}), got {block!r}")
        if self.ref_counts[block] == 0:
            raise ValueError(f"block {block} is free (its sequence was freed): reading it would return stale data")

    def check_invariants(self) -> None:
        """Reference counts equal the table references; the free list holds exactly the rest."""
        counts = [0] * self.n_blocks
        for seq_id, table in self.tables.items():
            assert len(table) == blocks_needed(self.lengths[seq_id], self.block_size), (seq_id, table, self.lengths[seq_id])
            for b in table:
                counts[b] += 1
        assert counts == self.ref_counts, (counts, self.ref_counts)
        assert len(set(self.free_blocks)) == len(self.free_blocks)
        assert sorted(self.free_blocks) == [b for b in range(self.n_blocks) if counts[b] == 0]


def paged_attention(q: torch.Tensor, k_blocks: torch.Tensor, v_blocks: torch.Tensor, block_table, length: int) -> torch.Tensor:
    """Causal attention of one sequence's last ``T_q`` tokens, reading K/V through its block table.

    ``q (nh, T_q, hs)``; ``k_blocks, v_blocks (n_blocks, nkv, bs, hs)`` (one layer's pool);
    ``block_table``: the sequence's physical blocks; ``length``: tokens cached, the queries being
    positions ``length - T_q .. length - 1``. Blocks are visited one at a time with the online
    softmax of :mod:`lmlab.infer.tiled_attention` (running max and sum), never gathered into a contiguous copy.
    Returns ``(nh, T_q, hs)``.
    """
    nh, T_q, hs = q.shape
    _, nkv, bs, _ = k_blocks.shape
    table = [int(b) for b in block_table]
    if not 1 <= T_q <= length or len(table) != blocks_needed(length, bs):
        raise ValueError(f"need 1 <= T_q ({T_q}) <= length ({length}) and ceil(length / block_size) = {blocks_needed(length, bs)} blocks, got {len(table)}")
    if nh % nkv:
        raise ValueError(f"q's heads ({nh}) must be a multiple of the cache's K/V heads ({nkv})")
    qpos = torch.arange(length - T_q, length, device=q.device)[:, None]  # (T_q, 1)
    m = q.new_full((nh, T_q), float("-inf"))  # (nh, T_q): running max
    l = q.new_zeros(nh, T_q)  # (nh, T_q): running sum
    acc = torch.zeros_like(q)  # (nh, T_q, hs)
    for i, b in enumerate(table):
        n_valid = min(bs, length - i * bs)  # the last block is partly filled
        k = k_blocks[b, :, :n_valid].repeat_interleave(nh // nkv, dim=0)  # (nh, n_valid, hs)
        v = v_blocks[b, :, :n_valid].repeat_interleave(nh // nkv, dim=0)  # (nh, n_valid, hs)
        s = q @ k.transpose(-2, -1) / math.sqrt(hs)  # (nh, T_q, n_valid)
        kpos = torch.arange(i * bs, i * bs + n_valid, device=q.device)[None, :]  # (1, n_valid)
        s = s.masked_fill(kpos > qpos, float("-inf"))  # causal
        m_b, p = tile_softmax(s)  # (nh, T_q), (nh, T_q, n_valid)
        m, l, acc = online_softmax_merge(m, l, acc, m_b, p.sum(-1), p @ v)  # (nh, T_q), (nh, T_q), (nh, T_q, hs)
    return acc / l[..., None]  # (nh, T_q, hs)


class PagedKVCache:
    """A block pool for ``n_layers`` layers, ``k_pool, v_pool: (L, n_blocks, nkv, bs, hs)``.

    Per sequence: :meth:`new_sequence`, :meth:`append` (K/V of every layer), :meth:`fork`,
    :meth:`free`, :meth:`gather` (the contiguous K/V) and :meth:`attention` (paged).
    As a drop-in for :class:`lmlab.infer.kv_cache.KVCache` in ``GPT.forward_with_cache``, ``rows`` are
    the sequences of the batch (created by :meth:`for_model`); ``reorder`` forks and frees.
    """

    def __init__(self, n_layers: int, n_kv_heads: int, head_dim: int, n_blocks: int, block_size: int,
                 dtype: torch.dtype = torch.float32, device=None):
        for name, value in (("n_layers", n_layers), ("n_kv_heads", n_kv_heads), ("head_dim", head_dim)):
            check_int(value, name)
        self.manager = BlockManager(n_blocks, block_size, on_copy=self._copy_block)
        self.k_pool = torch.zeros(n_layers, n_blocks, n_kv_heads, block_size, head_dim, dtype=dtype, device=device)
        self.v_pool = torch.zeros_like(self.k_pool)  # (L, n_blocks, nkv, bs, hs)
        self.rows: list[int] = []  # the batch, for the KVCache protocol
        self.lengths = [0] * n_layers  # tokens per layer, as in KVCache (LayerKVCache reads it)

    @classmethod
    def for_model(cls, model, batch: int = 1, n_blocks: int | None = None, block_size: int = 16, dtype=torch.float32, device=None) -> "PagedKVCache":
        """A pool for an lmlab GPT with ``batch`` empty sequences as its rows (default pool: room
        for every row's full context plus one block each for copy-on-write)."""
        cfg = model.config
        n_blocks = n_blocks or batch * (blocks_needed(cfg.context_length, block_size) + 1)
        cache = cls(cfg.n_layers, cfg.n_kv_heads, cfg.head_dim, n_blocks, block_size, dtype=dtype, device=device)
        cache.rows = [cache.new_sequence() for _ in range(batch)]
        return cache

    def _copy_block(self, src: int, dst: int) -> None:
        self.k_pool[:, dst] = self.k_pool[:, src]  # every layer's (nkv, bs, hs)
        self.v_pool[:, dst] = self.v_pool[:, src]

    # ---- per sequence ----
    def new_sequence(self, seq_id: int | None = None) -> int:
        return self.manager.allocate(seq_id)

    def fork(self, parent: int, child: int | None = None) -> int:
        return self.manager.fork(parent, child)

    def free(self, seq_id: int) -> None:
        self.manager.free(seq_id)

    def append(self, seq_id: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store ``k, v (L, nkv, T_new, hs)`` (every layer) at the end of sequence ``seq_id``."""
        L, _, nkv, _, hs = self.k_pool.shape
        for name, t in (("k", k), ("v", v)):
            if not isinstance(t, torch.Tensor) or t.dim() != 4 or (t.size(0), t.size(1), t.size(3)) != (L, nkv, hs):
                raise ValueError(f"{name} must have shape (L, nkv, T_new, hs) = ({L}, {nkv}, T_new, {hs}), got {getattr(t, 'shape', None)}")
        for t_new, (b, off) in enumerate(self.manager.append(seq_id, k.size(2))):
            self.k_pool[:, b, :, off] = k[:, :, t_new]  # (L, nkv, hs)
            self.v_pool[:, b, :, off] = v[:, :, t_new]

    def _checked_table(self, seq_id: int) -> list[int]:
        table = self.manager.block_table(seq_id)
        for b in table:
            self.manager.check_block_live(b)
        return table

    def gather(self, seq_id: int, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The sequence's K and V in one layer, copied out contiguously: ``(nkv, length, hs)`` each."""
        table, n = self._checked_table(seq_id), self.manager.lengths[seq_id]
        _, _, nkv, bs, hs = self.k_pool.shape
        idx = torch.tensor(table, dtype=torch.long, device=self.k_pool.device)
        k = self.k_pool[layer, idx].transpose(0, 1).reshape(nkv, len(table) * bs, hs)[:, :n]  # (nkv, n, hs)
        v = self.v_pool[layer, idx].transpose(0, 1).reshape(nkv, len(table) * bs, hs)[:, :n]
        return k, v

    def read_block(self, block: int, layer: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """One physical block's ``(nkv, bs, hs)`` K and V; a freed block raises ``ValueError``."""
        self.manager.check_block_live(block)
        return self.k_pool[layer, block], self.v_pool[layer, block]

    def attention(self, q: torch.Tensor, seq_id: int, layer: int) -> torch.Tensor:
        """:func:`paged_attention` of ``q (nh, T_q, hs)`` over sequence ``seq_id`` in ``layer``."""
        table = self._checked_table(seq_id)
        return paged_attention(q, self.k_pool[layer], self.v_pool[layer], table, self.manager.lengths[seq_id])

    # ---- the KVCache protocol (GPT.forward_with_cache, lmlab.infer.decoding) ----
    @property
    def batch(self) -> int:
        return len(self.rows)

    @property
    def length(self) -> int:
        return self.lengths[0]

    def layer(self, index: int) -> LayerKVCache:
        if not isinstance(index, int) or not 0 <= index < len(self.lengths):
            raise ValueError(f"layer index must be in [0, {len(self.lengths)}), got {index!r}")
        return LayerKVCache(self, index)  # the view the model's attention layers use

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append ``(B, nkv, T_new, hs)`` for the batch rows; return ``(B, nkv, length, hs)`` read
        back through the block tables. Layer 0 allocates the slots; later layers reuse them."""
        start, T_new = self.lengths[layer], k.size(2)
        if layer == 0:
            for seq in self.rows:  # all-or-nothing per row; rows share the pool
                self.manager.append(seq, T_new)
        for row, seq in enumerate(self.rows):
            table, bs = self.manager.tables[seq], self.manager.block_size
            for t in range(T_new):
                pos = start + t
                block, offset = locate_token(table, pos, bs)
                self.k_pool[layer, block, :, offset] = k[row, :, t]  # (nkv, hs)
                self.v_pool[layer, block, :, offset] = v[row, :, t]
        self.lengths[layer] = start + T_new
        ks, vs = zip(*(self.gather(seq, layer) for seq in self.rows))
        return torch.stack(ks), torch.stack(vs)  # (B, nkv, length, hs) each

    def reorder(self, beam_idx: torch.Tensor) -> "PagedKVCache":
        """Row ``i`` becomes old row ``beam_idx[i]``: fork the survivors (shared blocks, copy-on-
        write later), then free the old rows. No K/V is copied here."""
        old = self.rows
        idx = [int(i) for i in torch.as_tensor(beam_idx).tolist()]
        if any(not 0 <= i < len(old) for i in idx):
            raise ValueError(f"beam_idx must hold row indices in [0, {len(old)}), got {idx}")
        self.rows = [self.fork(old[i]) for i in idx]
        for seq in old:
            self.free(seq)
        return self


# --------------------------------------------------------------------------------------------
# The waste experiment
# --------------------------------------------------------------------------------------------


def sample_request_lengths(n: int, seed: int = 0, mean_prompt: float = 161.0, mean_output: float = 338.0,
                           max_len: int = 2048) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` (prompt, output) token lengths from log-normal distributions with ShareGPT's means
    (vLLM paper: 161 input and 338 output tokens on average), clipped so each request fits ``max_len``."""
    check_int(n, "n")
    check_int(max_len, "max_len", minimum=2)
    g = torch.Generator().manual_seed(seed)
    sigma = 1.0  # a long tail, like real chat requests

    def lognormal(mean):
        mu = math.log(mean) - sigma**2 / 2  # E[exp(N(mu, sigma))] = mean
        return torch.exp(mu + sigma * torch.randn(n, generator=g)).round().long()

    prompt = lognormal(mean_prompt).clamp(1, max_len // 2)
    output = lognormal(mean_output).clamp(1, max_len // 2)
    return prompt, output


def simulate_waste(prompt_lens, output_lens, max_len: int = 2048, block_size: int = 16, seed: int = 0) -> dict:
    """KV-cache slots of a batch of running requests, caught at a random point of their generation.

    * ``contiguous``: each request reserved ``max_len`` slots when it arrived (it cannot know its
      output length): the unused part is reserved-but-empty plus internal fragmentation.
    * ``paged``: each request holds ``ceil(current length / block_size)`` blocks.

    Returns slot counts and ``*_waste`` fractions (1 - real tokens / slots held).
    """
    check_int(block_size, "block_size")
    prompt, output = torch.as_tensor(prompt_lens).long(), torch.as_tensor(output_lens).long()
    if prompt.shape != output.shape or prompt.dim() != 1 or (prompt + output > max_len).any() or (prompt < 1).any():
        raise ValueError(f"prompt_lens and output_lens must be 1-D, equally long, >= 1 and sum to <= max_len={max_len} per request")
    g = torch.Generator().manual_seed(seed)
    generated = (torch.rand(len(prompt), generator=g) * (output + 1)).floor().long()  # 0..output tokens so far
    current = prompt + generated  # real tokens in the cache now
    real = int(current.sum())
    contiguous = len(prompt) * max_len
    paged = int((torch.div(current + block_size - 1, block_size, rounding_mode="floor") * block_size).sum())
    return {
        "requests": len(prompt),
        "real_tokens": real,
        "contiguous_slots": contiguous,
        "paged_slots": paged,
        "contiguous_waste": 1 - real / contiguous,
        "paged_waste": 1 - real / paged,
        "paged_waste_tokens": paged - real,
    }
