"""Every link a learner can click resolves: in every lesson, solution and exercise notebook and the README.

JupyterLab serves the repository as its root (``tools/lab.sh``), so a relative link resolves against the
notebook's folder and must name a file inside the repository; ``#anchor`` must name a heading of the target
(JupyterLab's heading ids: the heading text with spaces turned into ``-``; the README's: GitHub's slugs).
Colab, Binder and GitHub links must name ``lmlab.course.notebooks.GITHUB_REPO`` on ``BRANCH`` and a path that
exists here; a notebook's own badge must open that notebook. Other web links cannot be checked offline:
they must be ``https`` with a host.
"""

from __future__ import annotations

import re
import urllib.parse
from pathlib import Path

import nbformat
import pytest

from lmlab.course.notebooks import BRANCH, GITHUB_REPO, ROOT

MD_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HTML_LINK = re.compile(r"<(?:a|img|source)\b[^>]*?\s(?:href|src)\s*=\s*[\"']([^\"']+)[\"']", re.I)
HTML_ID = re.compile(r"<[a-z]+\b[^>]*?\s(?:id|name)\s*=\s*[\"']([^\"']+)[\"']", re.I)
HEADING = re.compile(r"^ {0,3}#{1,6}\s+(.+?)\s*#*\s*$", re.M)
FENCE = re.compile(r"^(```|~~~).*?^\1", re.M | re.S)
CODE_SPAN = re.compile(r"`[^`\n]*`")

COLAB = re.compile(rf"https://colab\.research\.google\.com/github/{re.escape(GITHUB_REPO)}/blob/{re.escape(BRANCH)}/(?P<path>[^?#]+)$")
BINDER = re.compile(rf"https://mybinder\.org/v2/gh/{re.escape(GITHUB_REPO)}/{re.escape(BRANCH)}(?:\?urlpath=lab/tree/(?P<path>[^&#]+))?$")
GITHUB = re.compile(rf"https://github\.com/{re.escape(GITHUB_REPO)}(?:/(?:blob|tree)/{re.escape(BRANCH)}/(?P<path>[^?#]+))?/?(?:#.*)?$")
REPO_HOSTS = ("colab.research.google.com/github/", "mybinder.org/v2/gh/", "github.com/")


def documents(root: Path = ROOT) -> list[Path]:
    """What a learner reads: the README and every lesson, solution and exercise notebook."""
    docs = [root / "README.md"]
    for folder in ("lessons", "solutions", "exercises"):
        docs += sorted((root / folder).glob("[0-9][0-9]_*.ipynb"))
    return docs


def markdown_of(path: Path) -> list[str]:
    if path.suffix == ".ipynb":
        return [c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "markdown"]
    return [path.read_text(encoding="utf-8")]


def _visible(md: str) -> str:
    """Markdown without fenced code and code spans (a link written inside backticks is not a link)."""
    return CODE_SPAN.sub("", FENCE.sub("", md))


def links(md: str) -> list[str]:
    text = _visible(md)
    return [m.group(1) for m in MD_LINK.finditer(text)] + [m.group(1) for m in HTML_LINK.finditer(text)]


def _heading_text(raw: str) -> str:
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", raw)  # a link's text
    text = re.sub(r"<[^>]+>", "", text)
    return re.sub(r"[*_`]", "", text).strip()


def anchors(path: Path) -> set[str]:
    """The ids a browser can jump to: headings (JupyterLab's or GitHub's rule) and explicit HTML ids."""
    ids: set[str] = set()
    for md in markdown_of(path):
        md_no_code = FENCE.sub("", md)
        ids |= {m.group(1) for m in HTML_ID.finditer(md_no_code)}
        for m in HEADING.finditer(md_no_code):
            text = _heading_text(m.group(1))
            if path.suffix == ".ipynb":
                ids.add(text.replace(" ", "-"))  # JupyterLab: the heading's text, spaces -> '-'
            else:
                ids.add(re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-"))  # GitHub's slug
    return ids


def _check_repo_path(rel: str, root: Path, where: str) -> list[str]:
    rel = urllib.parse.unquote(rel)
    target = (root / rel).resolve()
    if root.resolve() not in target.parents or not target.exists():
        return [f"{where}: {rel} does not exist in the repository"]
    return []


def check_document(path: Path, root: Path = ROOT) -> list[str]:
    """Every broken link of one document, as 'file: link: why' lines (empty when all resolve)."""
    problems: list[str] = []
    rel_self = path.relative_to(root).as_posix()
    own = set()
    for md in markdown_of(path):
        for url in links(md):
            where = f"{rel_self}: {url}"
            parsed = urllib.parse.urlsplit(url)
            if parsed.scheme in ("http", "https") or url.startswith("//"):
                if any(h in url for h in REPO_HOSTS):
                    m = COLAB.match(url) or BINDER.match(url) or GITHUB.match(url)
                    if m is None:
                        problems.append(f"{where}: not a link to {GITHUB_REPO} on {BRANCH} in the form "
                                        "lmlab.course.notebooks builds (colab_url / binder_url)")
                        continue
                    if m.group("path"):
                        problems += _check_repo_path(m.group("path"), root, where)
                        if COLAB.match(url):
                            own.add(m.group("path"))
                elif parsed.scheme != "https" or not parsed.netloc:
                    problems.append(f"{where}: web links must be https:// with a host")
                continue
            if parsed.scheme:  # mailto:, javascript:, file: ...
                problems.append(f"{where}: scheme {parsed.scheme!r} does not open in JupyterLab")
                continue
            if parsed.path.startswith("/"):
                problems.append(f"{where}: absolute path; JupyterLab resolves links against the notebook's folder")
                continue
            target = path if not parsed.path else (path.parent / urllib.parse.unquote(parsed.path)).resolve()
            if not parsed.path:
                pass
            elif root.resolve() not in target.parents:
                problems.append(f"{where}: points outside the repository (JupyterLab's root)")
                continue
            elif not target.exists():
                problems.append(f"{where}: no file {target.relative_to(root.resolve()).as_posix()}")
                continue
            if parsed.fragment:
                if target.suffix not in (".ipynb", ".md"):
                    problems.append(f"{where}: an anchor into a {target.suffix or 'folder'} cannot be followed")
                elif urllib.parse.unquote(parsed.fragment) not in anchors(target):
                    problems.append(f"{where}: no heading or id {parsed.fragment!r} in {target.name}")
    if path.suffix == ".ipynb" and rel_self not in own:
        problems.append(f"{rel_self}: its Open-in-Colab badge must open the notebook itself "
                        f"(colab_badge({rel_self!r})), found {sorted(own)}")
    return problems


DOCS = documents()


def test_there_are_documents_to_walk():
    folders = {p.parent.name for p in DOCS}
    assert {"lessons", "solutions", "exercises"} <= folders and (ROOT / "README.md") in DOCS
    assert sum(len(links(md)) for p in DOCS for md in markdown_of(p)) > 3 * len(DOCS) // 2


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_link_resolves(path):
    problems = check_document(path)
    assert not problems, "broken links:\n" + "\n".join(problems)


def test_lessons_and_exercises_link_each_other():
    """The lesson's exercise link and the exercise notebook's lesson link (what a learner follows first)."""
    for lesson in sorted((ROOT / "lessons").glob("[0-9][0-9]_*.ipynb")):
        targets = {link.split("#")[0] for md in markdown_of(lesson) for link in links(md)}
        assert f"../exercises/{lesson.name}" in targets, f"{lesson.name} does not link its exercise notebook"
        exercise = ROOT / "exercises" / lesson.name
        targets = {link.split("#")[0] for md in markdown_of(exercise) for link in links(md)}
        assert f"../lessons/{lesson.name}" in targets, f"exercises/{lesson.name} does not link its lesson"


def test_the_checker_finds_broken_links(tmp_path):
    """A notebook with one link of each broken kind: each is reported; the good ones are not."""
    (tmp_path / "lessons").mkdir()
    (tmp_path / "exercises").mkdir()
    (tmp_path / "exercises" / "00_x.ipynb").write_text(nbformat.writes(nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("## The `mask` idea\n<a id=\"here\"></a>")])))
    colab = f"https://colab.research.google.com/github/{GITHUB_REPO}/blob/{BRANCH}"
    good = [f"[badge]({colab}/lessons/00_x.ipynb)", "[ex](../exercises/00_x.ipynb)",
            "[h](../exercises/00_x.ipynb#The-mask-idea)", "[i](../exercises/00_x.ipynb#here)", "[own](#Top)",
            f"[b](https://mybinder.org/v2/gh/{GITHUB_REPO}/{BRANCH}?urlpath=lab/tree/exercises/00_x.ipynb)",
            "[paper](https://arxiv.org/abs/2104.09864)", "`[not a link](nowhere.ipynb)`"]
    bad = {"[a](../exercises/01_y.ipynb)": "no file", "[b](../exercises/00_x.ipynb#The-Mask-idea)": "no heading",
           "[c](../../outside.ipynb)": "outside the repository", "[d](/lessons/00_x.ipynb)": "absolute path",
           f"[e]({colab}/exercises/09_z.ipynb)": "does not exist",
           "[f](https://colab.research.google.com/github/someone/fork/blob/main/lessons/00_x.ipynb)": "not a link to",
           "[g](http://example.com)": "https://", '<a href="#Nowhere">h</a>': "no heading"}
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# Top\n" + "\n".join(good)),
                                         nbformat.v4.new_markdown_cell("\n".join(bad))])
    path = tmp_path / "lessons" / "00_x.ipynb"
    path.write_text(nbformat.writes(nb))
    problems = check_document(path, root=tmp_path)
    assert len(problems) == len(bad), "\n".join(problems)
    for link, why in bad.items():
        url = re.search(r"\(([^)]+)\)|href=\"([^\"]+)\"", link)
        url = url.group(1) or url.group(2)
        assert any(f": {url}: " in p and why in p for p in problems), (link, problems)
    # a notebook whose badge opens another notebook
    nb.cells[0].source = nb.cells[0].source.replace("lessons/00_x.ipynb)", "exercises/00_x.ipynb)", 1)
    nb.cells = nb.cells[:1]
    path.write_text(nbformat.writes(nb))
    assert [p for p in check_document(path, root=tmp_path) if "must open the notebook itself" in p]
