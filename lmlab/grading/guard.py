"""Guarding the learner's code on both sides of the sandbox: a time limit, and where an error came from.

Used by :mod:`lmlab.grading.engine` (which runs the checks, in a notebook's kernel or in the grader's
process) and by :mod:`lmlab.grading.child` (the learner's process, which runs the learner's definitions
under :func:`time_limit` and reports where they failed). It imports nothing else of lmlab's, so the
child can import it at start without pulling in the grader (registry, sandbox, report).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sysconfig
import threading
import traceback

import torch

__all__ = ["GradingTimeout", "time_limit", "error_location"]


class GradingTimeout(BaseException):
    """Raised by the timer inside the learner's code (a BaseException: ``except Exception`` cannot swallow it)."""


def _library_dirs() -> tuple[str, ...]:
    dirs = {os.path.dirname(os.path.dirname(os.path.abspath(__file__))), os.path.dirname(torch.__file__)}
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        with contextlib.suppress(KeyError):
            dirs.add(sysconfig.get_paths()[key])
    return tuple(d + os.sep for d in dirs if d)


def error_location(exc: BaseException) -> str:
    """``" (in f, cell 3 line 7)"`` for the deepest frame of the learner's own code, or ``""``."""
    if isinstance(getattr(exc, "lmlab_where", None), str):  # raised in the sandbox's child: it said where
        return exc.lmlab_where
    libs = _library_dirs()
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if not os.path.abspath(f.filename).startswith(libs)]
    if not frames:
        return ""
    f = frames[-1]
    loc = f"line {f.lineno}" if os.path.isabs(f.filename) else f"{f.filename}, line {f.lineno}"
    return f" (in {f.name}, {loc})"


@contextlib.contextmanager
def time_limit(seconds: float | None):
    """Raise :class:`GradingTimeout` in this thread after ``seconds`` (only where SIGALRM is usable)."""
    usable = seconds is not None and hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()
    if not usable:
        yield
        return

    def on_alarm(signum, frame):
        raise GradingTimeout()

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
