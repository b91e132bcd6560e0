"""Static previews (tools/build_previews.py): lesson 00's HTML shows its plots without a kernel.

The preview is built once for this module (it executes the lesson, ~30 s). The HTML checks run
anywhere; the render check opens the file in Chromium with every network request aborted and reads
the figures' data from plotly's objects in the page.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LESSON = ROOT / "lessons" / "00_tour.ipynb"


def _builder():
    spec = importlib.util.spec_from_file_location("build_previews", ROOT / "tools" / "build_previews.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def preview(tmp_path_factory):
    html_path, n = _builder().build_preview(LESSON, tmp_path_factory.mktemp("previews"), plotlyjs="inline", timeout=600)
    dest = os.environ.get("LMLAB_ARTIFACTS", "").strip()
    if dest and dest.lower() not in ("0", "false", "no"):
        out = (ROOT / "artifacts" if dest.lower() in ("1", "true", "yes") else Path(dest)) / "previews"
        out.mkdir(parents=True, exist_ok=True)
        shutil.copy(html_path, out / html_path.name)
    return html_path, n


def test_preview_html_contains_the_rendered_plots(preview):
    html_path, n = preview
    text = html_path.read_text(encoding="utf-8")
    from plotly.offline import get_plotlyjs_version

    assert n >= 1, "lesson 00 shows at least the mask widget's figure"
    for i in range(1, n + 1):
        assert f'id="00_tour-figure-{i}"' in text
    assert text.count("Plotly.newPlot(") == n
    assert f"plotly.js v{get_plotlyjs_version()}" in text, "plotly.js is inlined: the file renders offline"
    assert '"type":"heatmap"' in text, "the mask widget's heatmap is in the page"
    # the widget is replaced by what it showed, with its controls' starting values
    assert "lmlab-static-widget" in text and "architecture: <b>prefix decoder</b>" in text
    assert "application/vnd.jupyter.widget-view+json" not in text and "widget-state+json" not in text
    assert "require.js" not in text and "require.min.js" not in text
    assert len(text) < 15_000_000


def test_preview_renders_offline_in_chromium(preview, chromium):
    from labdriver import Browser

    html_path, n = preview
    with Browser(chromium) as b:
        b.context.route(lambda url: not url.startswith(("file:", "data:")), lambda route: route.abort())
        page = b.new_page()
        page.goto(html_path.as_uri(), wait_until="load", timeout=60_000)
        page.wait_for_function(f"document.querySelectorAll('.js-plotly-plot .main-svg').length >= {n}", timeout=30_000)
        traces = page.evaluate("""() => Array.from(document.querySelectorAll('.js-plotly-plot')).map(gd =>
            gd._fullLayout ? (gd.data || []).map(t => t.type) : null)""")
        page.close()
    assert len(traces) == n and all(traces), traces
    assert any("heatmap" in t for t in traces), traces
