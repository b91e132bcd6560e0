"""Taking the learner's definitions out of a notebook or its .py, and refusing what is not one."""

from __future__ import annotations

import json

import pytest

from lmlab.course import notebooks as course
from lmlab.grading.extract import ExtractError, extract

NB = {"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}


def _nb(tmp_path, *sources, name="nb.ipynb"):
    cells = [{"cell_type": "code", "source": s, "metadata": {}, "outputs": [], "execution_count": None} for s in sources]
    path = tmp_path / name
    path.write_text(json.dumps({**NB, "cells": [{"cell_type": "markdown", "source": "# t", "metadata": {}}] + cells}))
    return path


def test_keeps_definitions_and_drops_demos(tmp_path):
    path = _nb(
        tmp_path,
        "%matplotlib inline\nimport torch\nfrom lmlab.grading import check\nVOCAB = sorted(set('abc'))\nn = 3\ntext = open('x').read()",
        "def causal_mask(T):\n    return torch.ones(T, T, dtype=torch.bool).tril()\nprint(causal_mask(3))\ncausal_mask(10**9)",
        "@staticmethod\ndef helper():\n    pass\nclass A:\n    pass\nfor i in range(10**12):\n    pass",
        "check('00.causal_mask', causal_mask)\nimport sys; sys.exit(1)",
    )
    code = extract(path)
    kept = "".join(s.source for s in code.snippets)
    assert code.names == ["VOCAB", "n", "causal_mask", "helper", "A"]
    assert "print(" not in kept and "open(" not in kept and "range(10**12)" not in kept and "sys.exit" not in kept
    assert "@staticmethod" in kept and "import torch" in kept and "import sys" in kept
    assert code.check_ids == ["00.causal_mask"] and code.chapters == ["00"]
    # line numbers are preserved: the function starts on line 1 of cell 3 (cell 1 is markdown)
    (fn,) = [s for s in code.snippets if "def causal_mask" in s.source]
    assert fn.filename == "cell 3" and fn.source.startswith("def causal_mask")


def test_py_form_and_committed_notebooks_agree():
    a = extract(course.ROOT / "solutions" / "00_tour.py")
    b = extract(course.ROOT / "solutions" / "00_tour.ipynb")
    assert a.names == b.names and a.check_ids == b.check_ids and a.chapters == ["00"]
    assert "causal_mask" in a.names and "CharTokenizer" in a.names


@pytest.mark.parametrize(
    "setup,message",
    [
        (lambda p: p / "missing.ipynb", "no such file"),
        (lambda p: (p / "bad.ipynb").write_text("{not json") and p / "bad.ipynb", r"not valid JSON \(line 1"),
        (lambda p: (p / "list.ipynb").write_text("[1, 2]") and p / "list.ipynb", "not a Jupyter notebook"),
        (lambda p: (p / "notes.txt").write_text("hi") and p / "notes.txt", "expected a .ipynb or .py"),
        (lambda p: _nb(p, "import torch\nx = 1"), "not an exercise notebook"),
        (lambda p: _nb(p, "check('00.causal_mask', f)", "def f(:\n    pass"), "syntax error in cell 3, line 1"),
        (lambda p: p, "is a directory"),
    ],
    ids=["missing", "invalid-json", "not-a-notebook", "wrong-suffix", "no-checks", "syntax-error", "directory"],
)
def test_refusals_are_one_line(tmp_path, setup, message):
    with pytest.raises(ExtractError, match=message) as info:
        extract(setup(tmp_path))
    assert "\n" not in str(info.value)


def test_syntax_error_in_py_names_the_file_line(tmp_path):
    path = tmp_path / "ex.py"
    path.write_text("# %% [markdown]\n# hi\n\n# %%\ncheck('00.causal_mask', f)\n\n# %%\nx = (\n")
    with pytest.raises(ExtractError, match=r"cell 3, line 8 of the file"):
        extract(path)


def test_extract_validates_path_type():
    with pytest.raises(ValueError, match="path"):
        extract(3)
