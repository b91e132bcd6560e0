"""tools/build_site.py's pieces that need no kernel, Sphinx or browser (tests/browser/test_site.py builds a site)."""

from __future__ import annotations

import importlib.util
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import nbformat
import pytest

from lmlab.course.notebooks import binder_url, colab_url

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("build_site", ROOT / "tools" / "build_site.py")
site = importlib.util.module_from_spec(spec)
spec.loader.exec_module(site)


def _table(md: str) -> list[list[str]]:
    rows = [line for line in md.splitlines() if line.startswith("|")]
    return [[c.strip() for c in row.strip().strip("|").split("|")] for row in rows]


def test_index_has_the_lesson_table_of_the_built_lessons():
    md = site.index_md(["lessons/08_inference.ipynb", "lessons/12_parallelism.ipynb"])
    table = _table(md)
    assert len(table) == 4, "header, separator and one row per built lesson"
    assert len({len(row) for row in table}) == 1, f"every row has the header's columns: {[len(r) for r in table]}"
    assert table[0][-1] == "exercises" and set(table[1][-1]) == {"-"}
    assert [row[0] for row in table[2:]] == ["08", "12"]
    assert "(lessons/08_inference.ipynb)" in table[2][1] and table[2][-1] == "[exercises](exercises/08_inference.ipynb)"
    assert "00_tour" not in md.split("```{toctree}")[0].split("|", 1)[1], "lessons not built are not linked"
    toc = md.split("```{toctree}")[1]
    assert re.findall(r"^(?:lessons|exercises)/\S+$", toc, re.M) == [
        "lessons/08_inference", "exercises/08_inference", "lessons/12_parallelism", "exercises/12_parallelism"]
    assert site.COLAB_SVG not in md and site.BINDER_SVG not in md, "badge images are the bundled ones"
    assert binder_url("lessons/00_tour.ipynb") in md


def test_page_gets_a_binder_badge_and_local_badge_images():
    nb = nbformat.read(ROOT / "exercises" / "04_attention.ipynb", as_version=4)
    page = site.page_notebook(nb, "exercises/04_attention.ipynb")
    top = next(c.source for c in page.cells if c.cell_type == "markdown")
    assert f"({colab_url('exercises/04_attention.ipynb')})" in top
    assert f"({binder_url('exercises/04_attention.ipynb')})" in top
    assert "(../_static/colab-badge.svg)" in top and "(../_static/binder-badge.svg)" in top
    assert not any(u in c.source for c in page.cells for u in (site.COLAB_SVG, site.BINDER_SVG))
    assert "<details>" in "".join(c.source for c in page.cells if c.cell_type == "markdown"), "hints kept as <details>"


@pytest.mark.parametrize("name", sorted(site.BADGES))
def test_badges_are_svg(name):
    root = ET.fromstring(site.badge_svg(*site.BADGES[name]))
    assert root.tag.endswith("svg") and int(root.get("width")) > 60
    assert " ".join(t.text for t in root.iter() if t.tag.endswith("text")) == " ".join(site.BADGES[name][:2])


def test_only_lessons_are_built(tmp_path):
    with pytest.raises(ValueError, match="notebooks"):
        site.build_site([ROOT / "exercises" / "00_tour.ipynb"], tmp_path / "site")
