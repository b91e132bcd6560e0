"""Grade each exercise in its own subprocess, killed when its time is up.

The parent (:func:`grade_in_subprocess`) sends the learner's kept statements to
``python -m lmlab.grading.runner`` on stdin. The child points its stdout and stderr at /dev/null
(so a learner's huge print costs nothing), imports torch, says ``READY`` on a private copy of the
original stdout, then runs the learner's definitions and the exercise's checks and writes one line
``RESULT {json}``. The time limit starts at ``READY`` (imports do not count). If no result arrives
in time the parent kills the child's whole process group; if the child dies (``os._exit``, a
crash) the exercise gets 0 points with the reason. The grader itself always carries on.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .registry import Exercise
from .report import ExerciseResult

__all__ = ["grade_in_subprocess", "grade_all", "STARTUP_LIMIT", "GRACE"]

STARTUP_LIMIT = 180.0  # seconds for the child to import torch (slow, busy CI machines)
GRACE = 2.0  # seconds after the time limit before the parent kills (the child's own timer goes first)
_MAX_REPLY = 1_000_000  # bytes read from the child at most


def _error(exercise: Exercise, status: str, reason: str, seconds: float = 0.0) -> ExerciseResult:
    return ExerciseResult(id=exercise.id, status=status, points=0, max_points=exercise.points,
                          checks_total=len(exercise.checks), reason=reason, hint=exercise.hint, seconds=round(seconds, 3))


def _child_env() -> dict:
    env = dict(os.environ)
    package_root = str(Path(__file__).resolve().parent.parent.parent)  # so the child finds this lmlab
    env["PYTHONPATH"] = package_root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("OMP_NUM_THREADS", "1")
    env["PYTHONIOENCODING"] = "utf-8"
    return env


def _describe_exit(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


def grade_in_subprocess(exercise: Exercise, snippets: list[dict], timeout: float | None = None, cwd: str | Path | None = None) -> ExerciseResult:
    """Grade one exercise in a fresh Python process; never raises for anything the learner did.

    Args:
        exercise: the registered exercise.
        snippets: the learner's kept statements (``LearnerCode.to_json()``).
        timeout: seconds for the learner's code (None: the exercise's own limit).
        cwd: working directory of the child (the notebook's folder, for relative paths).
    """
    if not isinstance(exercise, Exercise):
        raise ValueError(f"exercise must be an Exercise, got {type(exercise).__name__}")
    if not isinstance(snippets, list):
        raise ValueError(f"snippets must be a list of {{filename, source}} dicts, got {type(snippets).__name__}")
    if timeout is not None and not timeout > 0:
        raise ValueError(f"timeout must be > 0 seconds (or None), got {timeout!r}")
    limit = exercise.timeout if timeout is None else float(timeout)
    job = json.dumps({"exercise": exercise.id, "snippets": snippets, "timeout": limit}).encode()
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "lmlab.grading.runner"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, cwd=str(cwd) if cwd else None, env=_child_env(), start_new_session=True)
    try:
        try:
            proc.stdin.write(job)
            proc.stdin.close()
        except BrokenPipeError:
            pass
        reply, ready_at, timed_out = _read_reply(proc, limit)
    finally:
        if proc.poll() is None:
            with contextlib.suppress(OSError):
                os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
    elapsed = time.perf_counter() - (ready_at or started)
    if timed_out:
        return _error(exercise, "timeout", f"killed after {limit:g} s (an endless loop? a very slow step?)", elapsed)
    if reply is None:
        if ready_at is None:
            return _error(exercise, "error", f"the grading process could not start ({_describe_exit(proc.returncode)})", elapsed)
        return _error(exercise, "error", f"your code ended the grading process ({_describe_exit(proc.returncode)}): "
                      "did it call os._exit, or crash Python?", elapsed)
    try:
        return ExerciseResult.from_dict(json.loads(reply))
    except (ValueError, TypeError) as exc:
        return _error(exercise, "error", f"the grading process sent an unreadable result ({exc})", elapsed)


def _read_reply(proc: subprocess.Popen, limit: float) -> tuple[str | None, float | None, bool]:
    """``(result json or None, time READY was seen or None, timed out?)`` from the child's stdout."""
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    fd = proc.stdout.fileno()
    buf, ready_at = b"", None
    deadline = time.perf_counter() + STARTUP_LIMIT
    try:
        while True:
            left = deadline - time.perf_counter()
            if left <= 0:
                return None, ready_at, ready_at is not None
            if not sel.select(timeout=left):
                continue
            chunk = os.read(fd, 65536)
            if not chunk:  # the child closed its end: it exited
                return None, ready_at, False
            buf += chunk
            if len(buf) > _MAX_REPLY:
                return None, ready_at, False
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                if line == b"READY" and ready_at is None:
                    ready_at = time.perf_counter()
                    deadline = ready_at + limit + GRACE
                elif line.startswith(b"RESULT "):
                    return line[len(b"RESULT "):].decode("utf-8", errors="replace"), ready_at, False
    finally:
        sel.close()


def grade_all(exercises: list[Exercise], snippets: list[dict], timeout: float | None = None, cwd: str | Path | None = None,
              jobs: int | None = None) -> list[ExerciseResult]:
    """Grade ``exercises`` (each in its own subprocess, ``jobs`` at a time), in the given order."""
    if jobs is not None and (not isinstance(jobs, int) or jobs < 1):
        raise ValueError(f"jobs must be a positive int (or None), got {jobs!r}")
    jobs = jobs or max(1, min(4, os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(lambda ex: grade_in_subprocess(ex, snippets, timeout=timeout, cwd=cwd), exercises))


# ---------------------------------------------------------------------------------------------
# The child
# ---------------------------------------------------------------------------------------------


def _child() -> None:
    job = json.loads(sys.stdin.buffer.read().decode("utf-8"))
    reply = os.fdopen(os.dup(1), "w", encoding="utf-8")  # private channel to the parent
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)  # the learner's prints, even from C code, go nowhere
    os.dup2(devnull, 2)

    import types

    import torch

    torch.set_num_threads(1)
    from .engine import run_exercise, time_limit
    from .registry import get_exercise

    exercise = get_exercise(job["exercise"])
    limit = float(job["timeout"])
    reply.write("READY\n")
    reply.flush()

    started = time.perf_counter()
    module = types.ModuleType("learner")
    sys.modules["learner"] = module
    problem = None
    try:
        with time_limit(limit):
            for snippet in job["snippets"]:
                exec(compile(snippet["source"], snippet["filename"], "exec"), module.__dict__)
    except BaseException as exc:  # noqa: BLE001 - any failure of the learner's top level
        from .engine import error_location

        problem = exc, error_location(exc)
    if problem is not None:
        exc, where = problem
        kind = "timeout" if type(exc).__name__ == "_Timeout" else "failed"
        reason = f"running your notebook's definitions raised {type(exc).__name__}{': ' + str(exc)[:200] if str(exc) else ''}{where}"
        if kind == "timeout":
            reason = f"running your notebook's definitions took more than {limit:g} s{where}"
        result = _error(exercise, kind, reason)
    else:
        left = max(0.05, limit - (time.perf_counter() - started))
        obj = getattr(module, exercise.name, None)
        result = run_exercise(exercise, obj, timeout=left, missing=not hasattr(module, exercise.name))
    result.seconds = round(time.perf_counter() - started, 3)
    reply.write("RESULT " + json.dumps(result.to_dict()) + "\n")
    reply.flush()
    os._exit(0)  # skip the learner's atexit handlers and finalizers


if __name__ == "__main__":
    _child()
