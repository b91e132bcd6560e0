"""How many CPU threads torch uses for the course, chosen once when ``lmlab`` is imported.

torch's default is one thread per core. On a 2-core laptop that is the wrong choice for these lessons:
the browser and JupyterLab want CPU too, and two torch threads on two busy cores oversubscribe them —
a 20 s training cell took minutes with another busy process beside it. The policy:

* ``LMLAB_NUM_THREADS=N`` in the environment: N threads;
* else ``OMP_NUM_THREADS`` set (CI, a cluster job): torch already follows it, lmlab leaves it alone;
* else 1 thread on a machine with 1–2 usable cores, half the cores (at most 4) on larger ones
  (the course's models are tiny: more threads stop paying off).

``lmlab doctor`` prints the choice and why; ``benchmarks/lesson_times.py`` measures lessons with it, with
one thread and with torch's default under contention.
"""

from __future__ import annotations

import os

__all__ = ["choose_threads", "apply_thread_policy", "POLICY"]

POLICY: dict = {"threads": None, "why": "not applied yet"}


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def choose_threads(cores: int | None = None, environ: dict | None = None) -> tuple[int | None, str]:
    """``(threads, why)``; ``threads`` is None when lmlab should leave torch's setting alone."""
    env = os.environ if environ is None else environ
    if cores is not None and (not isinstance(cores, int) or cores < 1):
        raise ValueError(f"cores must be a positive int (or None), got {cores!r}")
    value = env.get("LMLAB_NUM_THREADS", "").strip()
    if value:
        if not value.isdigit() or int(value) < 1:
            raise ValueError(f"LMLAB_NUM_THREADS must be a positive integer, got {value!r}")
        return int(value), "LMLAB_NUM_THREADS"
    if env.get("OMP_NUM_THREADS", "").strip():
        return None, "OMP_NUM_THREADS is set: torch follows it"
    cores = cores or _usable_cores()
    if cores <= 2:
        return 1, f"{cores} cores: 1 thread leaves a core for the browser and JupyterLab"
    n = min(4, cores // 2)
    return n, f"{cores} cores: half of them, at most 4 (tiny models)"


def apply_thread_policy() -> int:
    """Set torch's thread count by :func:`choose_threads`; return the count torch now uses."""
    import torch

    threads, why = choose_threads()
    if threads is not None and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    POLICY.update(threads=torch.get_num_threads(), why=why)
    return POLICY["threads"]
