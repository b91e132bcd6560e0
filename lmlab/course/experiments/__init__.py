"""Each lesson's experiments and figures, one module per lesson, so tests can run the same code."""
