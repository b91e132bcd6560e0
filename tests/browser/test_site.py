"""The course site (tools/build_site.py), built from two short lessons and read in Chromium.

The site is built once for this module (two lessons executed, ~30 s on an idle 2-core machine, Sphinx ~10 s;
``python tools/build_site.py`` builds the whole course). It is served from 127.0.0.1; the browser starts at
the index, follows every link to a page of the site, and on each page checks that every plot is drawn by
plotly.js, that formulas are typeset, and that not one request left 127.0.0.1.
"""

from __future__ import annotations

import functools
import http.server
import importlib.util
import os
import shutil
import threading
import urllib.parse
from pathlib import Path

import pytest

from lmlab.course.notebooks import binder_url, colab_url

ROOT = Path(__file__).resolve().parents[2]
LESSONS = ["lessons/08_inference.ipynb", "lessons/12_parallelism.ipynb"]  # the two quickest with plots and widgets
ORDER = ["index.html"] + [p.replace(".ipynb", ".html") for lesson in LESSONS
                          for p in (lesson, lesson.replace("lessons/", "exercises/"))]


def _builder():
    spec = importlib.util.spec_from_file_location("build_site", ROOT / "tools" / "build_site.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def site(tmp_path_factory, chromium):
    for module in ("sphinx", "myst_nb", "jupyter_server_mathjax"):
        if importlib.util.find_spec(module) is None:
            from conftest import _missing

            _missing(f"{module} is not installed (pip install -e '.[test]')")
    out = tmp_path_factory.mktemp("site") / "site"
    index, times = _builder().build_site([ROOT / p for p in LESSONS], out, timeout=600, log=lambda line: None)
    print(f"site built: {times}")
    dest = os.environ.get("LMLAB_ARTIFACTS", "").strip()
    if dest and dest.lower() not in ("0", "false", "no"):  # CI keeps the built site beside the screenshots
        shutil.copytree(out, (ROOT / "artifacts" if dest.lower() in ("1", "true", "yes") else Path(dest)) / "site",
                        dirs_exist_ok=True)
    return out


@pytest.fixture(scope="module")
def served(site):
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(Quiet, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def test_site_files(site):
    from plotly.offline import get_plotlyjs_version

    pages = sorted(p.relative_to(site).as_posix() for p in site.rglob("*.html")
                   if p.parent.name in ("lessons", "exercises") or p.name == "index.html")
    assert pages == sorted(ORDER)
    js = list(site.rglob("plotly*.js"))
    assert [p.relative_to(site).as_posix() for p in js] == ["_static/plotly.min.js"], "plotly.js once for the site"
    assert f"v{get_plotlyjs_version()}" in js[0].read_text(encoding="utf-8")[:500]
    for page in ORDER[1:]:
        text = (site / page).read_text(encoding="utf-8")
        assert "plotly.min.js" in text and "cdn.plot.ly" not in text
        assert "application/vnd.jupyter.widget-view+json" not in text and "require.js" not in text
    exercise = (site / ORDER[2]).read_text(encoding="utf-8")
    assert "### BEGIN SOLUTION" not in exercise and "NotImplementedError" in exercise, "the learner's version, no answers"


def test_every_page_renders_offline(served, browser):
    """From the index, follow every link inside the site; every plot drawn, every request local."""
    requests: list[str] = []
    page = browser.new_page()
    page.on("request", lambda r: requests.append(r.url))
    seen: dict[str, dict] = {}
    todo = ["index.html"]
    while todo:
        rel = todo.pop(0)
        if rel in seen:
            continue
        page.goto(served + rel, wait_until="load", timeout=60_000)
        n = page.evaluate("document.querySelectorAll('.plotly-graph-div').length")
        page.wait_for_function(
            f"Array.from(document.querySelectorAll('.plotly-graph-div')).filter(gd => gd._fullLayout && "
            f"gd.querySelector('.main-svg')).length === {n}", timeout=30_000)
        info = page.evaluate("""() => ({
            title: document.querySelector('h1') && document.querySelector('h1').textContent,
            plots: Array.from(document.querySelectorAll('.plotly-graph-div')).map(gd => (gd.data || []).length),
            next: (document.querySelector('link[rel=next]') || {}).href || null,
            prev: (document.querySelector('link[rel=prev]') || {}).href || null,
            links: Array.from(document.querySelectorAll('a[href]')).map(a => a.href),
            badges: Array.from(document.querySelectorAll('a > img')).map(img => [img.closest('a').href,
                     img.getAttribute('src'), img.complete && img.naturalWidth > 0]),
            details: document.querySelectorAll('details').length,
            open_details: document.querySelectorAll('details[open]').length,
            math: document.querySelectorAll('.math').length,
            typeset: document.querySelectorAll('.math .MathJax_CHTML, .math .MathJax, .math mjx-container').length,
        })""")
        if info["math"]:
            page.wait_for_function("document.querySelectorAll('.math .MathJax_CHTML, .math .MathJax').length > 0",
                                   timeout=30_000)
        seen[rel] = info
        for link in info["links"]:
            url = urllib.parse.urldefrag(link)[0]
            if url.startswith(served) and url.endswith(".html"):
                todo.append(url[len(served):])
    page.close()

    assert set(ORDER) <= set(seen), f"pages not reachable from the index: {set(ORDER) - set(seen)}"
    left = [u for u in requests if not u.startswith((served, "data:", "blob:", "about:"))]
    assert not left, f"requests that left 127.0.0.1: {left[:10]}"
    # previous/next in course order: index, lesson, its exercises, next lesson, ...
    for before, after in zip(ORDER, ORDER[1:]):
        assert seen[before]["next"] == served + after, (before, seen[before]["next"])
        assert seen[after]["prev"] == served + before, (after, seen[after]["prev"])
    for lesson in LESSONS:
        info = seen[lesson.replace(".ipynb", ".html")]
        assert info["plots"] and all(info["plots"]), f"{lesson}: every figure drawn with its traces: {info['plots']}"
        assert info["math"] == 0 or info["typeset"] > 0
        exercise = lesson.replace("lessons/", "exercises/")
        assert served + exercise.replace(".ipynb", ".html") in info["links"], f"{lesson} links its exercise page"
        for nb, info in ((lesson, info), (exercise, seen[exercise.replace(".ipynb", ".html")])):
            badges = {href: (src, loaded) for href, src, loaded in info["badges"]}
            for href in (colab_url(nb), binder_url(nb)):
                assert href in badges, f"{nb}: no badge linking {href}"
                src, loaded = badges[href]
                assert loaded and not src.startswith(("http:", "https:", "//")), f"{nb}: badge image {src} not bundled or not shown"
        ex = seen[exercise.replace(".ipynb", ".html")]
        assert ex["details"] >= 3 and ex["open_details"] == 0, f"{exercise}: hints collapsed: {ex['details']}, {ex['open_details']} open"
    index = seen["index.html"]
    for lesson in LESSONS:
        assert served + lesson.replace(".ipynb", ".html") in index["links"], f"the index's table links {lesson}"
