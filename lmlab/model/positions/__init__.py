"""Positions (lessons 03 and 06).

- :mod:`.encodings`: the schemes themselves: sinusoidal, learned absolute, T5 relative bias (buckets),
  RoPE (both layouts), ALiBi.
- :mod:`.scheme`: the one module :class:`lmlab.model.gpt.GPT` builds from ``ModelConfig.position``.
- :mod:`.rope_scaling`: RoPE's context extensions (position interpolation, NTK, dynamic NTK, YaRN,
  truncation), one table entry each.

A new position scheme: its function or module in :mod:`.encodings`, one entry in
:data:`lmlab.model.registry.POSITIONS`.
"""
