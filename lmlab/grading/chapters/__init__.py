"""One grader module per chapter: ``chNN.py`` registers the chapter's
:class:`~lmlab.grading.registry.Exercise` entries and their checks, and states their order.

- A long chapter splits into parts ``chNN_*.py`` (e.g. ``ch04_gqa.py``); the chapter module imports its
  parts at the top, and a part never imports its chapter (helpers both need live in the part).
- ``EXERCISES`` in ``chNN.py`` is the tuple of the chapter's ids in the order of the lesson's notebook
  (``solutions/NN_*.py``); the registry checks it lists every registered exercise of the chapter once, and
  :func:`~lmlab.grading.registry.chapter_exercises`, the score table and the exercise notebook follow it.
  Import order decides nothing.

A new exercise goes in its chapter's module (or a part) and into ``EXERCISES``; a new chapter adds ``chNN.py``.
"""
