"""One grader module per chapter (``chNN.py``, with ``chNN_*.py`` parts for long chapters): its
:class:`~lmlab.grading.registry.Exercise` entries and their checks.

A new exercise goes in its chapter's module here; a new chapter adds ``chNN.py``.
"""
