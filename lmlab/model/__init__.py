"""The model: one causal decoder, many parts (lessons 00-04, 06, 13).

Where things go:

- :mod:`.config` / :mod:`.gpt`: :class:`ModelConfig` (every choice by name, validated) and :class:`GPT`
  (token embedding -> blocks -> final norm -> output layer). The model imports no inference code: a
  KV cache is *passed in* (the caller makes it).
- :mod:`.registry`: one table per kind of part (``NORMS``, ``NORM_PLACEMENTS``, ``FFNS``, ``POSITIONS``,
  ``ATTENTIONS``, ``LAYER_ATTENTIONS``; RoPE scaling's ``ROPE_SCALINGS`` is in :mod:`.positions.rope_scaling`,
  the FFN kinds' activations in :data:`.ffn.FFN_ACTIVATIONS`), all :class:`.parts.PartRegistry`.
  **A new variant is one registered entry plus its module**; a learner's part plugs in through ``register_*``.
- :mod:`.norms` (lesson 01), :mod:`.ffn` (lesson 02: activations and the feed-forward block),
  :mod:`.attention` (lesson 04), :mod:`.positions` (lessons 03 and 06: position encodings, the scheme the
  model builds, RoPE scaling), :mod:`.memory` (lesson 06: kNN memory attention).
- :mod:`.llama`: the LLaMA preset (named flavors) and ``build_llama`` for the learner's parts (lesson 13).
- :mod:`.minimal_gpt`: lesson 00's ladder from a bigram table to the GPT.

A new norm, FFN, position scheme, RoPE scaling or attention: write its module here and register it in
:mod:`.registry`.
"""

from lmlab.model.config import ModelConfig
from lmlab.model.gpt import GPT

__all__ = ["GPT", "ModelConfig"]
