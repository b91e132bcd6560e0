"""Static HTML previews of the lessons: executed, with every plot rendered, no kernel needed.

    python tools/build_previews.py                   # every lesson -> artifacts/previews/NN_name.html
    python tools/build_previews.py lessons/00_tour.ipynb --out /tmp/previews --plotlyjs cdn
    python tools/build_previews.py --course          # also execute every solution and exercise notebook;
                                                     # exit 1 if one fails or exceeds its budget (90 s / 60 s)

Each lesson is executed with nbclient (plotly emitting its JSON mime type), then made static:

- every plotly figure becomes plotly's own HTML (``plotly.io.to_html``, fixed div ids) and plotly.js
  is put once in the page's ``<head>`` (inline by default: the file works offline; ``--plotlyjs cdn``
  gives small files that load plotly.js from its CDN);
- every widget (e.g. a ``lmlab.course.widgets.FigureExplorer``) is replaced by what it showed when the
  lesson ran: a line naming its controls' starting values, the figure from its ``Output`` and its
  notes. Sliders cannot move without a kernel, so the preview says where to get one.

The widget state is dropped (it would carry megabytes and needs the widget html-manager and
require.js from a CDN), and require.js is left out so that plotly.js defines ``window.Plotly``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import html
import os
import sys
import time
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
PLOTLY_MIME = "application/vnd.plotly.v1+json"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
CONTAINERS = {"VBoxModel", "HBoxModel", "BoxModel", "GridBoxModel", "AccordionModel", "TabModel", "StackModel"}
SKIP = {"FloatProgressModel", "IntProgressModel", "ButtonModel", "LayoutModel", "DescriptionStyleModel"}
BUDGETS = {"lessons": 90, "solutions": 60, "exercises": 60}  # seconds per notebook (GUIDE.md), on 2 cores
NOTICE = ("Static preview: the controls are shown at their starting values. To move them, open the lesson "
          "in JupyterLab, Binder or Colab.")


@contextlib.contextmanager
def _env(**values):
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def execute(path: Path, timeout: int = 900) -> nbformat.NotebookNode:
    """Run the notebook in its own folder; plotly emits only its JSON mime bundle."""
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    with _env(PLOTLY_RENDERER="plotly_mimetype", OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1")):
        NotebookClient(nb, timeout=timeout, kernel_name="python3",
                       resources={"metadata": {"path": str(path.parent)}}).execute()
    return nb


def _ref(value) -> str | None:
    return value[len("IPY_MODEL_"):] if isinstance(value, str) and value.startswith("IPY_MODEL_") else None


def _control_value(name: str, st: dict):
    if "_options_labels" in st:  # Dropdown, RadioButtons, ToggleButtons, SelectionSlider...
        labels, index = st["_options_labels"], st.get("index")
        if isinstance(index, list):
            return ", ".join(labels[i] for i in index)
        return labels[index] if isinstance(index, int) and 0 <= index < len(labels) else None
    return st.get("value")


def widget_outputs(model_id: str, state: dict) -> list[dict]:
    """What a widget showed, as plain notebook outputs: controls line, Output contents, HTML notes."""
    controls: list[str] = []
    outputs: list[dict] = []

    def walk(mid: str | None) -> None:
        model = state.get(mid or "")
        if model is None:
            return
        name, st = model.get("model_name", ""), model.get("state", {})
        if name in CONTAINERS:
            for child in st.get("children", []):
                walk(_ref(child))
        elif name == "OutputModel":
            outputs.extend(copy.deepcopy(st.get("outputs", [])))
        elif name in ("HTMLModel", "HTMLMathModel", "LabelModel"):
            if st.get("value"):
                text = st["value"] if name != "LabelModel" else html.escape(st["value"])
                outputs.append(nbformat.v4.new_output("display_data", data={"text/html": text, "text/plain": ""}))
        elif name not in SKIP and ("value" in st or "_options_labels" in st):
            value = _control_value(name, st)
            label = st.get("description") or name.replace("Model", "")
            controls.append(f"{html.escape(str(label))}: <b>{html.escape(str(value))}</b>")

    walk(model_id)
    if controls:
        line = (f"<div class='lmlab-static-widget' style='color:#555;font-size:0.9em'>{NOTICE}<br>"
                + " &middot; ".join(controls) + "</div>")
        outputs.insert(0, nbformat.v4.new_output("display_data", data={"text/html": line, "text/plain": ""}))
    return outputs


def staticize(nb: nbformat.NotebookNode, name: str = "fig") -> tuple[nbformat.NotebookNode, int]:
    """Inline widgets' outputs, turn plotly JSON into plotly HTML; return (notebook, number of figures)."""
    import plotly.io as pio

    nb = copy.deepcopy(nb)
    state = nb.metadata.get("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
    n = 0
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        flat = []
        for out in cell.get("outputs", []):
            view = out.get("data", {}).get(WIDGET_VIEW)
            flat.extend(widget_outputs(view["model_id"], state) if view else [out])
        cell.outputs = []
        for out in flat:
            data = out.get("data", {})
            if PLOTLY_MIME in data:
                n += 1
                fig = data[PLOTLY_MIME]
                div = pio.to_html(fig, include_plotlyjs=False, full_html=False, div_id=f"{name}-figure-{n}",
                                  config=fig.get("config") or {})
                out = nbformat.v4.new_output("display_data", data={"text/html": div, "text/plain": "<plotly figure>"})
            cell.outputs.append(nbformat.from_dict(out))
    nb.metadata.pop("widgets", None)
    return nb, n


def to_html(nb: nbformat.NotebookNode, plotlyjs: str = "inline") -> str:
    from nbconvert import HTMLExporter
    from plotly.offline import get_plotlyjs

    exporter = HTMLExporter(template_name="lab")
    exporter.require_js_url = "data:text/javascript,"  # no require.js: plotly.js must define window.Plotly
    body, _ = exporter.from_notebook_node(nb)
    if plotlyjs == "inline":
        script = f'<script type="text/javascript">{get_plotlyjs()}</script>'
    else:
        script = f'<script src="https://cdn.plot.ly/plotly-{_plotlyjs_version()}.min.js" charset="utf-8"></script>'
    return body.replace("</head>", f"{script}\n</head>", 1)


def _plotlyjs_version() -> str:
    from plotly.offline import get_plotlyjs_version

    return get_plotlyjs_version()


def build_preview(notebook: Path, out_dir: Path, plotlyjs: str = "inline", timeout: int = 900) -> tuple[Path, int]:
    """Execute ``notebook`` and write ``out_dir/<stem>.html``; return (path, number of figures)."""
    nb, n = staticize(execute(notebook, timeout=timeout), name=notebook.stem)
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"{notebook.stem}.html"
    out.write_text(to_html(nb, plotlyjs), encoding="utf-8")
    return out, n


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: every lessons/NN_*.ipynb")
    parser.add_argument("--out", type=Path, default=ROOT / "artifacts" / "previews")
    parser.add_argument("--plotlyjs", choices=["inline", "cdn"], default="inline")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per cell")
    parser.add_argument("--course", action="store_true", help="also execute every solution and exercise notebook (headless, timed)")
    args = parser.parse_args(argv)
    notebooks = args.notebooks or sorted((ROOT / "lessons").glob("[0-9][0-9]_*.ipynb"))
    if not notebooks:
        print("no lessons found", file=sys.stderr)
        return 1
    failed = []
    for nb in notebooks:
        t0 = time.monotonic()
        try:
            out, n = build_preview(nb, args.out, args.plotlyjs, args.timeout)
        except Exception as exc:  # noqa: BLE001 - report every notebook, then fail
            failed.append(f"{nb}: {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}")
            print(f"FAILED {failed[-1]}", file=sys.stderr)
            continue
        seconds = time.monotonic() - t0
        print(f"{out} ({n} figures, {out.stat().st_size / 1e6:.1f} MB, {seconds:.0f} s)")
        if seconds > BUDGETS["lessons"]:
            failed.append(f"{nb}: {seconds:.0f} s, over the {BUDGETS['lessons']} s budget")
    if args.course:
        for folder in ("solutions", "exercises"):
            for nb in sorted((ROOT / folder).glob("[0-9][0-9]_*.ipynb")):
                t0 = time.monotonic()
                try:
                    execute(nb, timeout=args.timeout)
                except Exception as exc:  # noqa: BLE001
                    failed.append(f"{nb}: {type(exc).__name__}")
                    print(f"FAILED {failed[-1]}", file=sys.stderr)
                    continue
                seconds = time.monotonic() - t0
                print(f"executed {nb.relative_to(ROOT)} in {seconds:.0f} s")
                if seconds > BUDGETS[folder]:
                    failed.append(f"{nb}: {seconds:.0f} s, over the {BUDGETS[folder]} s budget")
    for line in failed:
        print(f"problem: {line}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
