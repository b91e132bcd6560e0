"""Each lesson's wall time in a fresh kernel, by thread setting and under contention, and its peak memory.

    python benchmarks/lesson_times.py                              # every lesson, every mode
    python benchmarks/lesson_times.py lessons/08_inference.ipynb --quick
    python benchmarks/lesson_times.py --json times.json

Modes (each a fresh kernel executing the whole notebook with nbclient, as a learner's Run All):

* ``lmlab``        — a learner's default kernel: no thread variables set, so lmlab's policy applies
                     (:mod:`lmlab.course.threads`: 1 thread on 2 cores);
* ``torch``        — torch's own default (one thread per core; ``LMLAB_NUM_THREADS`` = all cores);
* ``one``          — ``OMP_NUM_THREADS=1`` (what the test runner uses);
* ``lmlab+busy`` / ``torch+busy`` — the same with a CPU-burning process beside the kernel (bounded: it
                     stops with the run, and after ``--busy-limit`` seconds at the latest).

``--quick`` runs ``lmlab`` and ``lmlab+busy`` only. Peak memory is the kernel's maximum resident set
(``getrusage`` of the executing process's children), to compare with Binder's ~2 GB (budget 1.5 GB).
Timings compare modes measured in the same run on the same machine; a loaded machine inflates them all.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUDGET_S = 90.0
BUDGET_MB = 1536.0
MODES = {
    "lmlab": ({}, False),
    "torch": ({"LMLAB_NUM_THREADS": str(os.cpu_count() or 1)}, False),
    "one": ({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}, False),
    "lmlab+busy": ({}, True),
    "torch+busy": ({"LMLAB_NUM_THREADS": str(os.cpu_count() or 1)}, True),
}
QUICK = ("lmlab", "lmlab+busy")
_BURN = "import time\nend = time.monotonic() + {limit}\nwhile time.monotonic() < end:\n    pass\n"


def _kernel_env(extra: dict) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "LMLAB_NUM_THREADS")}
    env.update(extra)
    return env


def run_once(notebook: Path, extra_env: dict, busy: bool, timeout: float, busy_limit: float) -> dict:
    """Execute ``notebook`` in a fresh kernel; ``{"seconds", "peak_mb", "ok", "error"}``."""
    if not isinstance(notebook, Path) or not notebook.exists():
        raise ValueError(f"notebook must be an existing .ipynb path, got {notebook!r}")
    if not timeout > 0 or not busy_limit > 0:
        raise ValueError(f"timeout and busy_limit must be > 0 seconds, got {timeout!r}, {busy_limit!r}")
    burner = subprocess.Popen([sys.executable, "-c", _BURN.format(limit=float(busy_limit))]) if busy else None
    try:
        proc = subprocess.run([sys.executable, __file__, "--_execute", str(notebook)], env=_kernel_env(extra_env),
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"seconds": None, "peak_mb": None, "ok": False, "error": f"over {timeout:g} s"}
    finally:
        if burner is not None:
            burner.kill()
            burner.wait()
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1][:200]
        return {"seconds": None, "peak_mb": None, "ok": False, "error": tail}
    return json.loads(lines[-1])


def _execute(notebook: str) -> None:
    """(In a subprocess.) Run the notebook; print its time and the kernel's peak RSS as JSON."""
    import resource

    import nbformat
    from nbclient import NotebookClient

    path = Path(notebook).resolve()
    nb = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    error = ""
    try:
        NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    except Exception as exc:  # noqa: BLE001 - reported, the table goes on
        error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1][:160] if str(exc).strip() else ''}"
    seconds = time.perf_counter() - start
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # Linux: kB, the largest child (the kernel)
    print(json.dumps({"seconds": round(seconds, 1), "peak_mb": round(peak_kb / 1024, 1), "ok": not error, "error": error}))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("lessons", nargs="*", type=Path, help="default: every lessons/NN_*.ipynb")
    parser.add_argument("--quick", action="store_true", help=f"only the modes {', '.join(QUICK)}")
    parser.add_argument("--modes", default=None, help=f"comma-separated, from {', '.join(MODES)}")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per run before it counts as failed")
    parser.add_argument("--busy-limit", type=float, default=900.0, help="seconds the CPU burner may run at most")
    parser.add_argument("--json", dest="json_path", default=None, help="also write the results as JSON")
    parser.add_argument("--_execute", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._execute:
        _execute(args._execute)
        return 0
    modes = args.modes.split(",") if args.modes else list(QUICK if args.quick else MODES)
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        parser.error(f"unknown modes {unknown}; choose from {', '.join(MODES)}")
    lessons = args.lessons or sorted((ROOT / "lessons").glob("[0-9][0-9]_*.ipynb"))
    missing = [str(p) for p in lessons if not p.exists() or p.suffix != ".ipynb"]
    if missing:
        parser.error(f"not notebooks: {', '.join(missing)} (run python -m lmlab.course.notebooks build for the .ipynb pairs)")
    print(f"{os.cpu_count()} cores; load average {os.getloadavg()[0]:.2f} at start; budget {BUDGET_S:g} s, {BUDGET_MB:g} MB")
    print(f"{'lesson':<28}" + "".join(f"{m:>13}" for m in modes) + f"{'peak MB':>10}  verdict")
    results, over = {}, False
    for lesson in lessons:
        row = {m: run_once(lesson, *MODES[m], timeout=args.timeout, busy_limit=args.busy_limit) for m in modes}
        results[lesson.name] = row
        peak = max((r["peak_mb"] or 0) for r in row.values())
        worst = max(((r["seconds"] if r["ok"] else float("inf")) for m, r in row.items() if m.startswith("lmlab")), default=0)
        verdict = "ok" if worst <= BUDGET_S and peak <= BUDGET_MB else "OVER BUDGET"
        over |= verdict != "ok"
        cells = "".join(f"{(str(r['seconds']) + ' s') if r['ok'] else 'failed':>13}" for r in row.values())
        print(f"{lesson.name:<28}{cells}{peak:>10.0f}  {verdict}", flush=True)
        for m, r in row.items():
            if not r["ok"]:
                print(f"    {m}: {r['error']}")
    if args.json_path:
        Path(args.json_path).write_text(json.dumps({"cores": os.cpu_count(), "modes": modes, "lessons": results}, indent=2) + "\n")
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main())
