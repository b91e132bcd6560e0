"""Attention masks for the three architectures of lesson 00 (``lessons/00_tour``).

**One convention, everywhere in lmlab:** a mask is a boolean tensor ``(T_query, T_key)`` and
``mask[i, j] == True`` means *query token i may attend to key token j*. This is the convention of
``torch.nn.functional.scaled_dot_product_attention`` for boolean masks, so a mask from here can be
passed to it directly.

- causal decoder (GPT, LLaMA): token i sees tokens 0..i.
- prefix decoder (U-PaLM, GLM): tokens of the prefix see the whole prefix; later tokens see the
  prefix and the earlier generated tokens.
- encoder-decoder (T5, BART): the encoder sees the whole source; the decoder sees its own earlier
  tokens (causal) plus every source token (cross-attention).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from lmlab.argcheck import check_int

__all__ = [
    "ARCHITECTURES",
    "causal_mask",
    "prefix_lm_mask",
    "EncoderDecoderMasks",
    "encoder_decoder_masks",
    "architecture_mask",
]

ARCHITECTURES = ("causal decoder", "prefix decoder", "encoder-decoder")


def causal_mask(T: int, device: str | torch.device | None = None) -> torch.Tensor:
    """``(T, T)`` lower-triangular mask: token i may attend to tokens j <= i."""
    check_int(T, "T")
    return torch.ones(T, T, dtype=torch.bool, device=device).tril()


def prefix_lm_mask(T: int, prefix_len: int, device: str | torch.device | None = None) -> torch.Tensor:
    """``(T, T)`` mask: bidirectional inside the first ``prefix_len`` tokens, causal after them.

    ``prefix_len=0`` (or 1) is the causal mask; ``prefix_len=T`` is full bidirectional attention.
    """
    check_int(T, "T")
    check_int(prefix_len, "prefix_len", minimum=0)
    if prefix_len > T:
        raise ValueError(f"prefix_len must be in [0, T={T}], got {prefix_len}")
    mask = causal_mask(T, device=device)
    mask[:prefix_len, :prefix_len] = True  # the prefix block sees itself in both directions
    return mask


class EncoderDecoderMasks(NamedTuple):
    encoder_self: torch.Tensor  # (S, S): all True
    decoder_self: torch.Tensor  # (T, T): causal
    cross: torch.Tensor  # (T, S): decoder queries, encoder keys: all True


def encoder_decoder_masks(src_len: int, tgt_len: int, device: str | torch.device | None = None) -> EncoderDecoderMasks:
    """The three masks of an encoder-decoder transformer (no padding)."""
    check_int(src_len, "src_len")
    check_int(tgt_len, "tgt_len")
    return EncoderDecoderMasks(
        encoder_self=torch.ones(src_len, src_len, dtype=torch.bool, device=device),
        decoder_self=causal_mask(tgt_len, device=device),
        cross=torch.ones(tgt_len, src_len, dtype=torch.bool, device=device),
    )


def architecture_mask(architecture: str, T: int, prefix_len: int = 0) -> torch.Tensor:
    """One ``(T, T)`` picture of what every token sees, for the lesson's widget.

    For the encoder-decoder the first ``prefix_len`` tokens are the source (encoder) and the rest the
    target (decoder); the picture stitches ``encoder_self``, ``cross`` and ``decoder_self`` together.
    The encoder never looks at the decoder, so that block is False.
    """
    if architecture not in ARCHITECTURES:
        raise ValueError(f"architecture must be one of {ARCHITECTURES}, got {architecture!r}")
    check_int(T, "T")
    if architecture == "causal decoder":
        return causal_mask(T)
    if architecture == "prefix decoder":
        return prefix_lm_mask(T, prefix_len)
    if not 1 <= prefix_len < T:
        raise ValueError(f"for the encoder-decoder, prefix_len (the source length) must be in [1, T-1={T - 1}], got {prefix_len}")
    m = encoder_decoder_masks(prefix_len, T - prefix_len)
    full = torch.zeros(T, T, dtype=torch.bool)
    full[:prefix_len, :prefix_len] = m.encoder_self
    full[prefix_len:, :prefix_len] = m.cross
    full[prefix_len:, prefix_len:] = m.decoder_self
    return full
