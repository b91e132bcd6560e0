"""The widget toolkit every lesson uses: ipywidgets controls driving a plotly figure.

The figure is a plain ``plotly.graph_objects.Figure`` re-rendered into an ``ipywidgets.Output``
whenever a control changes. That works in JupyterLab, classic Notebook, VS Code, Binder and Colab
(plotly's ``FigureWidget`` does not render on Colab). Usage::

    explorer = FigureExplorer(
        make_figure=lambda T, arch: mask_figure(arch, T),
        controls={"T": IntSlider(8, 2, 32), "arch": Dropdown(options=ARCHITECTURES)},
        caption="Rows are queries, columns are keys.",
    )
    explorer  # display it

``make_figure`` receives the controls' values as keyword arguments and returns ``(figure, note)`` or
just the figure; ``note`` is a short line shown under the plot (e.g. a number the figure implies).
Tests drive it without a browser: ``explorer.controls["T"].value = 16`` then read ``explorer.figure``.

Headless execution (nbclient: ``jupyter nbconvert --execute``, papermill, Jupyter Book): the figure is put
into the ``Output`` by setting its ``outputs`` trait from the kernel, not with ``with output: display(fig)``.
The ``with`` form asks the *frontend* to capture the cell's display messages (it sets the widget's
``msg_id``); nbclient's stand-in frontend then sends every captured output back to the kernel as a comm
message during the cell, ipywidgets 8 echoes each state update, and with a plotly bundle of more than a
few KB the cell never reached idle (lessons 01 and 02 stalled until the cell timeout). Setting
``outputs`` is one kernel-to-frontend state update that JupyterLab, VS Code and nbclient all render; only
Colab, whose widget manager implements ``Output`` by capture, keeps the ``with`` form.
"""

from __future__ import annotations

from typing import Callable

import ipywidgets as W
import plotly.graph_objects as go
from IPython.display import display

__all__ = ["FigureExplorer", "Prediction", "style_figure", "mask_heatmap", "FIGURE_WIDTH", "FIGURE_HEIGHT", "FIGURE_MAX_WIDTH"]

FIGURE_WIDTH = 640
FIGURE_HEIGHT = 480
FIGURE_MAX_WIDTH = 820
CONTROL_LAYOUT = W.Layout(width="420px")
CONTROL_STYLE = {"description_width": "140px"}


def style_figure(fig: go.Figure, title: str | None = None, width: int = FIGURE_WIDTH, height: int = FIGURE_HEIGHT) -> go.Figure:
    """The course's one figure style: fixed size, white template, tight margins.

    ``width`` is capped at ``FIGURE_MAX_WIDTH``, what JupyterLab's notebook column holds beside the
    file browser on a 1280-pixel screen; subplot titles get room under the figure's title.
    """
    subplot_titles = any(a.yref == "paper" and a.y is not None and a.y >= 0.99 for a in fig.layout.annotations)
    fig.update_layout(
        template="plotly_white",
        width=min(width, FIGURE_MAX_WIDTH),
        height=height,
        margin=dict(l=60, r=20, t=(90 if subplot_titles else 50) if title else 20, b=50),
        title=title,
        modebar=dict(orientation="v"),  # keep plotly's toolbar off the title
    )
    return fig


def mask_heatmap(mask, title: str, labels: list[str] | None = None, size: int = 520) -> go.Figure:
    """An attention mask ``(T, T)`` (True = may attend) as a heatmap: rows are queries, columns keys
    (lessons 00, 04, 06). Cells are outlined while ``T <= 48``; ``labels`` name the tokens."""
    T = len(mask)
    gap = 1 if T <= 48 else 0
    fig = go.Figure(go.Heatmap(
        z=[[int(bool(v)) for v in row] for row in mask.tolist()], x=labels, y=labels, zmin=0, zmax=1, showscale=False,
        colorscale=[[0, "#f3f3f3"], [1, "#3b6fb6"]], xgap=gap, ygap=gap,
        hovertemplate="query %{y} → key %{x}: %{z}<extra></extra>",
    ))
    fig.update_yaxes(autorange="reversed", title="query i", scaleanchor="x")
    fig.update_xaxes(title="key j", side="top")
    style_figure(fig, title, width=size, height=size)
    return fig.update_layout(margin=dict(t=110), title=dict(y=0.98, yanchor="top"))  # room for the top axis title


class FigureExplorer(W.VBox):
    """Controls on top, the figure in an ``Output`` below, then a one-line note and a caption."""

    def __init__(self, make_figure: Callable[..., go.Figure | tuple[go.Figure, str]], controls: dict[str, W.ValueWidget], caption: str = ""):
        if not callable(make_figure):
            raise ValueError("make_figure must be a function of the controls' values returning a plotly Figure")
        if not controls:
            raise ValueError("controls must name at least one widget, e.g. {'T': IntSlider(...)}")
        for name, control in controls.items():
            if not isinstance(control, W.ValueWidget):
                raise ValueError(f"control {name!r} must be an ipywidgets value widget (slider, dropdown, text...), got {type(control).__name__}")
            control.layout = CONTROL_LAYOUT
            control.style = CONTROL_STYLE
            if not control.description:
                control.description = name
            if hasattr(control, "continuous_update"):
                control.continuous_update = False  # redraw on release: smooth on a 2-core laptop
        self.make_figure = make_figure
        self.controls = dict(controls)
        self.output = W.Output(layout=W.Layout(min_height=f"{FIGURE_HEIGHT}px", overflow="auto"))  # wide figure: scroll
        self.note = W.HTML()
        self.figure: go.Figure | None = None
        self.renders = 0
        parts: list[W.Widget] = [W.VBox(list(self.controls.values())), self.output, self.note]
        if caption:
            parts.append(W.HTML(f"<span style='color:#555;font-size:0.9em'>{caption}</span>"))
        super().__init__(parts, layout=W.Layout(border="1px solid #ddd", padding="8px", width="fit-content", max_width="100%"))
        for control in self.controls.values():
            control.observe(self._on_change, names="value")
        self.update()

    @property
    def values(self) -> dict:
        return {name: control.value for name, control in self.controls.items()}

    def _on_change(self, _change) -> None:
        self.update()

    def update(self) -> None:
        """Rebuild the figure from the current control values and show it."""
        result = self.make_figure(**self.values)
        fig, note = result if isinstance(result, tuple) else (result, "")
        if not isinstance(fig, go.Figure):
            raise ValueError(f"make_figure must return a plotly go.Figure (optionally with a note), got {type(fig).__name__}")
        self.figure = fig
        self.note.value = f"<b>{note}</b>" if note else ""
        self.renders += 1
        if _CAPTURE_FRONTEND():
            with self.output:
                self.output.clear_output(wait=True)
                display(fig)
        else:
            data, metadata = _format(fig)
            self.output.outputs = ({"output_type": "display_data", "data": data, "metadata": metadata},)


def _CAPTURE_FRONTEND() -> bool:  # noqa: N802 - a switch, patched in tests
    """True on Colab, whose ``Output`` widget only shows what it captured with ``with output:``."""
    import sys

    return "google.colab" in sys.modules


def _format(obj) -> tuple[dict, dict]:
    """The mime bundle IPython would display for ``obj`` (plotly's renderer decides its types)."""
    from IPython import get_ipython

    text = {"text/plain": f"<{type(obj).__name__}>"}
    if get_ipython() is None:
        return text, {}  # plain Python (tests): no renderer, no browser
    # not IPython's display_formatter.format: a plotly figure has _ipython_display_, so format() would
    # display it at the top level and return nothing
    bundle = obj._repr_mimebundle_() if hasattr(obj, "_repr_mimebundle_") else None
    return ({**text, **bundle} if bundle else text), {}


class Prediction(W.VBox):
    """"Predict, then run": a question and a dropdown shown *before* an experiment, checked after it.

    ::

        guess = Prediction("Which schedule idles less?", ["GPipe", "1F1B", "the same"])
        guess                                  # display it; the learner chooses
        ...                                    # run the experiment
        print(guess.reveal(measured_answer))   # "You said '1F1B'; measured: '1F1B' ✅"

    ``reveal`` takes the measured answer (one of ``options``) and returns one line; it never raises, so a
    notebook executed headless (nobody chose) prints "not answered" and goes on.
    """

    UNANSWERED = "(choose)"

    def __init__(self, question: str, options, description: str = "prediction"):
        options = [str(option) for option in options]
        if not isinstance(question, str) or not question.strip():
            raise ValueError("question must be a non-empty string, e.g. 'Which schedule idles less?'")
        if len(options) < 2 or len(set(options)) != len(options):
            raise ValueError(f"options must be at least two distinct answers, got {options!r}")
        if self.UNANSWERED in options:
            raise ValueError(f"options must not contain {self.UNANSWERED!r}: it is the unanswered state")
        self.question = question
        self.options = options
        self.dropdown = W.Dropdown(options=[self.UNANSWERED, *options], description=description,
                                   style=CONTROL_STYLE, layout=CONTROL_LAYOUT)
        super().__init__([W.HTML(f"<b>Predict, then run.</b> {question}"), self.dropdown])

    @property
    def value(self) -> str:
        return self.dropdown.value

    def reveal(self, measured) -> str:
        """One line comparing the learner's choice with ``measured`` (which must be one of the options)."""
        measured = str(measured)
        if measured not in self.options:
            raise ValueError(f"measured must be one of the options {self.options!r}, got {measured!r}")
        if self.value == self.UNANSWERED:
            return f"{self.question} Measured: {measured!r} (you did not choose an answer before the run)."
        mark = "✅ right" if self.value == measured else "❌ not this time"
        return f"{self.question} You said {self.value!r}; measured: {measured!r} — {mark}."
