"""Inference: running a trained model (lessons 04, 06, 07, 08).

- :mod:`.kv_cache`: the KV cache (prefill + decode) and its size calculator (lesson 08).
- :mod:`.paged`: PagedAttention's block manager (lesson 08).
- :mod:`.tiled_attention`: FlashAttention's tiled algorithm with the online softmax (lesson 04).
- :mod:`.decoding`: greedy, sampling filters, beam search, the generation loop (lesson 07).
- :mod:`.long_context`: inference-time long-context tricks: Λ-shaped windows with attention sinks,
  parallel context windows (lesson 06).

A new sampler goes in :mod:`.decoding.logits`; a new cache in :mod:`.kv_cache` or beside it.
"""
