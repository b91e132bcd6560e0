"""Scaling: counting, fitting and planning (lessons 10 and 12).

- :mod:`.counting`: the one parameter and FLOP counter (per part, counted on the model built on the meta device).
- :mod:`.fit`: scaling-law fits (``a C^b + c``, Chinchilla's ``L(N, D)``) with bootstrap intervals.
- :mod:`.calculators`: closed-form memory, communication and pipeline-bubble calculators (ZeRO, TP, PP).

A new calculator or fitting method goes here; it counts parameters through :mod:`.counting`.
"""
