"""lmlab's thread policy (lmlab.course.threads) and what ``lmlab doctor`` says about it and about plotly."""

from __future__ import annotations

import subprocess
import sys

import pytest

from lmlab.course.doctor import environment
from lmlab.course.threads import choose_threads


def test_policy_one_thread_on_two_cores_half_on_more():
    assert choose_threads(cores=2, environ={})[0] == 1
    assert choose_threads(cores=1, environ={})[0] == 1
    assert choose_threads(cores=8, environ={})[0] == 4
    assert choose_threads(cores=6, environ={})[0] == 3
    assert choose_threads(cores=64, environ={})[0] == 4


def test_environment_overrides():
    assert choose_threads(cores=2, environ={"LMLAB_NUM_THREADS": "2"}) == (2, "LMLAB_NUM_THREADS")
    assert choose_threads(cores=8, environ={"OMP_NUM_THREADS": "3"})[0] is None  # torch already follows OMP
    with pytest.raises(ValueError, match="LMLAB_NUM_THREADS"):
        choose_threads(environ={"LMLAB_NUM_THREADS": "many"})
    with pytest.raises(ValueError, match="cores"):
        choose_threads(cores=0, environ={})


def test_importing_lmlab_changes_nothing_doctor_applies_the_policy():
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": sys.path[0] if sys.path[0] else "."}
    import os

    env["PYTHONPATH"] = os.environ.get("PYTHONPATH", ".")
    code = ("import torch; before = torch.get_num_threads(); torch.set_num_threads(3); import lmlab, lmlab.grading; "
            "after_import = torch.get_num_threads(); from lmlab.course.doctor import doctor; doctor(print_report=False); "
            "from lmlab.course.threads import choose_threads; print(after_import, torch.get_num_threads(), choose_threads()[0])")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120, check=True).stdout.split()
    assert out[0] == "3"  # importing lmlab left torch's setting alone
    assert out[1] == out[2]  # no OMP_NUM_THREADS here: after doctor(), lmlab's choice is what torch uses


def test_doctor_explains_the_choice_and_an_empty_renderer():
    info = environment()
    assert "LMLAB_NUM_THREADS" in info["thread policy"]
    assert info["plotly renderer"]  # never an empty line
    import plotly.io as pio

    if not pio.renderers.default:
        assert "not in a notebook" in info["plotly renderer"]
