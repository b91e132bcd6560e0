"""Course plumbing: what the lessons use that is not part of an LLM (every lesson).

- :mod:`.doctor`: versions, device and whether widgets render; applies the thread policy.
- :mod:`.threads`: how many CPU threads torch uses for the lessons.
- :mod:`.widgets`: ipywidgets controls driving plotly figures; predict-then-run questions.
- :mod:`.stats`: the one verdict helper every experiment uses.
- :mod:`.notebooks`: jupytext pairing, Colab/Binder links, ``python -m lmlab.course.notebooks build``.
- :mod:`.experiments`: each lesson's experiments and figures, one module per lesson (``chNN_*``).

A new lesson's experiment goes in :mod:`.experiments` as ``chNN_topic.py``.
"""
