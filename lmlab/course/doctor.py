"""``lmlab doctor``: what this machine has, and whether the course's plots and widgets will render.

Run ``lmlab doctor`` in a terminal or ``python -m lmlab.course.doctor``; lessons call :func:`doctor` in
their first cells so that a bug report always starts with these lines.
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
import platform
import sys

from lmlab.course.threads import POLICY, apply_thread_policy

__all__ = ["doctor", "environment", "best_device"]


def best_device() -> str:
    """``"cuda"`` when a GPU is there, else ``"mps"`` on Apple silicon, else ``"cpu"``."""
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def _version(dist: str) -> str | None:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def _frontend() -> str:
    if "google.colab" in sys.modules:
        return "Colab"
    import os

    if "VSCODE_PID" in os.environ or "VSCODE_CWD" in os.environ:
        return "VS Code"
    if os.environ.get("BINDER_SERVICE_HOST") or os.environ.get("BINDER_REQUEST"):
        return "Binder"
    try:
        from IPython import get_ipython

        shell = get_ipython()
    except ImportError:
        shell = None
    if shell is None:
        return "terminal"
    return "Jupyter" if type(shell).__name__ == "ZMQInteractiveShell" else type(shell).__name__


def environment() -> dict:
    """Versions, device and rendering facts as a dict (what :func:`doctor` prints)."""
    import torch

    info: dict = {
        "python": platform.python_version(),
        "platform": f"{platform.system()} {platform.machine()}",
        "lmlab": _version("lmlab") or "not installed (imported from source)",
        "torch": torch.__version__,
        "device": best_device(),
        "cpu threads": torch.get_num_threads(),
    }
    info["thread policy"] = f"{POLICY['threads']} ({POLICY['why']}; LMLAB_NUM_THREADS=N to change)"
    if info["device"] == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
    for dist in ("numpy", "einops", "plotly", "ipywidgets", "jupyterlab", "jupyterlab_widgets", "tqdm"):
        info[dist] = _version(dist) or "missing"
    info["frontend"] = _frontend()
    try:
        import plotly.io as pio

        info["plotly renderer"] = pio.renderers.default or (
            "none chosen (not in a notebook: figures are not shown here; in JupyterLab, VS Code or Colab "
            "plotly picks its own renderer)")
    except Exception as err:  # noqa: BLE001 - report, never crash
        info["plotly renderer"] = f"unavailable ({err})"
    problems = []
    for mod in ("plotly", "ipywidgets", "einops", "tqdm"):
        try:
            importlib.import_module(mod)
        except ImportError:
            problems.append(f"{mod} is missing: pip install {mod}")
    if info["frontend"] == "Jupyter" and info["jupyterlab_widgets"] == "missing":
        problems.append("widgets need the front-end extension: pip install jupyterlab_widgets")
    info["problems"] = problems
    return info


def doctor(print_report: bool = True) -> dict:
    """Apply lmlab's thread policy (:mod:`lmlab.course.threads`), then print a short report (versions,
    device, will widgets render) and return it as a dict. Every lesson's first cell calls it."""
    apply_thread_policy()
    info = environment()
    if print_report:
        width = max(len(k) for k in info)
        for key, value in info.items():
            if key == "problems":
                continue
            print(f"{key:<{width}}  {value}")
        if info["problems"]:
            for p in info["problems"]:
                print(f"⚠ {p}")
        else:
            print(f"{'widgets/plots':<{width}}  ready")
    return info


if __name__ == "__main__":
    doctor()
