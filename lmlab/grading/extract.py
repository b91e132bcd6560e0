"""The learner's definitions, taken out of an exercise notebook (``.ipynb``) or its jupytext ``.py``.

Only what a grader needs is kept, statement by statement (with :mod:`ast`, nothing is run here):
imports, functions, classes, and constants (ALL_CAPS names, or a name bound to a literal). Demo
cells, ``check(...)`` calls, prints and anything else at top level are dropped, so grading runs none
of the notebook's side effects. Line numbers are preserved: a traceback in the learner's code points
at ``cell N, line L`` (notebook) or the file's own line (``.py``).
"""

from __future__ import annotations

import ast
import threading
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["ExtractError", "Cell", "Snippet", "LearnerCode", "read_cells", "extract", "extract_cells"]

_CELL_MARK = re.compile(r"^# %%(.*)$")
_MAGIC = re.compile(r"^\s*[%!?]")


class ExtractError(ValueError):
    """The file cannot be graded; the message is one line that says why."""


@dataclass(frozen=True)
class Cell:
    """A code cell: ``label`` (``"cell 3"``), its source, and the file line before its first line."""

    label: str
    source: str
    line_offset: int = 0


@dataclass(frozen=True)
class Snippet:
    """One kept statement: compile ``source`` with ``filename`` and line numbers stay true."""

    filename: str
    source: str


@dataclass
class LearnerCode:
    """What :func:`extract` found: the kept statements and the exercise ids the checks name."""

    path: str
    snippets: list[Snippet] = field(default_factory=list)
    check_ids: list[str] = field(default_factory=list)
    chapters: list[str] = field(default_factory=list)
    names: list[str] = field(default_factory=list)

    def to_json(self) -> list[dict]:
        return [{"filename": s.filename, "source": s.source} for s in self.snippets]


def _read_ipynb(path: Path, text: str) -> list[Cell]:
    try:
        nb = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ExtractError(f"{path} is not a valid notebook: not valid JSON (line {exc.lineno}, column {exc.colno})") from None
    if not isinstance(nb, dict) or not isinstance(nb.get("cells"), list):
        raise ExtractError(f"{path} is not a Jupyter notebook (no list of cells)")
    cells = []
    for i, cell in enumerate(nb["cells"], start=1):
        if not isinstance(cell, dict) or cell.get("cell_type") != "code":
            continue
        src = cell.get("source", "")
        if isinstance(src, list) and all(isinstance(s, str) for s in src):
            src = "".join(src)
        if not isinstance(src, str):
            raise ExtractError(f"{path} is not a valid notebook: cell {i}'s source is neither text nor a list of lines")
        cells.append(Cell(f"cell {i}", src))
    return cells


def _read_percent(path: Path, text: str) -> list[Cell]:
    """Code cells of a jupytext percent file (``# %%`` markers; markdown and raw cells skipped)."""
    cells, current, start, kind, n = [], [], 0, "code", 0
    lines = text.splitlines()

    def flush():
        if kind == "code" and any(line.strip() for line in current):
            cells.append(Cell(f"cell {n}", "\n".join(current), line_offset=start))

    for lineno, line in enumerate(lines, start=1):
        m = _CELL_MARK.match(line)
        if m:
            flush()
            n += 1
            rest = m.group(1).strip()
            kind = "markdown" if rest.startswith("[markdown]") or rest.startswith("[md]") or rest.startswith("[raw]") else "code"
            current, start = [], lineno
        else:
            current.append(line)
    flush()
    return cells


def read_cells(path: str | Path) -> list[Cell]:
    """The code cells of a notebook (``.ipynb``) or jupytext percent script (``.py``)."""
    if not isinstance(path, (str, Path)):
        raise ValueError(f"path must be a str or Path, got {type(path).__name__}")
    p = Path(path)
    if not p.exists():
        raise ExtractError(f"no such file: {p}")
    if p.is_dir():
        raise ExtractError(f"{p} is a directory; pass an exercise notebook (.ipynb or .py)")
    if p.suffix not in (".ipynb", ".py"):
        raise ExtractError(f"{p} is not an exercise notebook: expected a .ipynb or .py file")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ExtractError(f"{p} is not UTF-8 text") from None
    except OSError as exc:
        raise ExtractError(f"{p} could not be read: {exc.strerror or type(exc).__name__}") from None
    return _read_ipynb(p, text) if p.suffix == ".ipynb" else _read_percent(p, text)


def _is_constant(node: ast.AST) -> bool:
    """``NAME = value`` where NAME is ALL_CAPS or the value is a literal."""
    if isinstance(node, ast.Assign):
        targets, value = node.targets, node.value
    elif isinstance(node, ast.AnnAssign) and node.value is not None:
        targets, value = [node.target], node.value
    else:
        return False
    if not all(isinstance(t, ast.Name) for t in targets):
        return False
    if all(t.id.isupper() for t in targets):
        return True
    try:
        ast.literal_eval(value)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return False
    return True


_KEEP = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


def _check_calls(tree: ast.AST) -> tuple[list[str], list[str]]:
    """Exercise ids in ``check("NN.name", ...)`` calls and chapters in ``check_all("NN")`` calls."""
    ids, chapters = [], []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or not node.args:
            continue
        name = node.func.id if isinstance(node.func, ast.Name) else node.func.attr if isinstance(node.func, ast.Attribute) else ""
        arg = node.args[0]
        if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
            if name == "check":
                ids.append(arg.value)
            elif name == "check_all":
                chapters.append(arg.value)
    return ids, chapters


_PARSE_LOCK = threading.Lock()


def parse_python(source: str, filename: str = "<unknown>") -> ast.Module:
    """``ast.parse`` one at a time: CPython 3.11's parser is not safe to run from several threads at once
    (``SystemError: AST constructor recursion depth mismatch``), and the grader grades notebooks in threads."""
    with _PARSE_LOCK:
        return ast.parse(source, filename)


def extract_cells(cells: list[Cell], path: str = "<notebook>") -> LearnerCode:
    """Keep the definitions of ``cells``; raise :class:`ExtractError` naming the cell of a syntax error."""
    if not isinstance(cells, list):
        raise ValueError(f"cells must be a list of Cell, got {type(cells).__name__}")
    code = LearnerCode(path=str(path))
    for cell in cells:
        # IPython magics and shell escapes are not Python: blank them, keeping line numbers.
        lines = ["" if _MAGIC.match(line) else line for line in cell.source.splitlines()]
        source = "\n".join(lines)
        try:
            tree = parse_python(source)
        except SyntaxError as exc:
            line = exc.lineno or 1
            where = f"{cell.label}, line {line}" if cell.line_offset == 0 else f"{cell.label}, line {cell.line_offset + line} of the file"
            raise ExtractError(f"{path}: syntax error in {where}: {exc.msg}") from None
        ids, chapters = _check_calls(tree)
        code.check_ids += ids
        code.chapters += chapters
        filename = cell.label if cell.line_offset == 0 else Path(path).name
        for node in tree.body:
            if not (isinstance(node, _KEEP) or _is_constant(node)):
                continue
            starts = [(node.lineno, node.col_offset)] + [(d.lineno, d.col_offset - 1) for d in getattr(node, "decorator_list", [])]
            first, col = min(starts)
            chunk = lines[first - 1:node.end_lineno]
            chunk[-1] = chunk[-1][:node.end_col_offset]  # statements may share a line (a; b)
            chunk[0] = chunk[0][col:]
            body = "\n".join(chunk)
            code.snippets.append(Snippet(filename, "\n" * (cell.line_offset + first - 1) + body + "\n"))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                code.names.append(node.name)
            elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                code.names += [t.id for t in (node.targets if isinstance(node, ast.Assign) else [node.target])]
    for exercise_id in code.check_ids:
        if re.match(r"^\d\d\.", exercise_id) and exercise_id[:2] not in code.chapters:
            code.chapters.append(exercise_id[:2])
    code.chapters = sorted(set(c for c in code.chapters if re.fullmatch(r"\d\d", c)))
    return code


def extract(path: str | Path) -> LearnerCode:
    """The learner's definitions in ``path``; :class:`ExtractError` if it is not an exercise notebook."""
    cells = read_cells(path)
    code = extract_cells(cells, path=str(path))
    if not code.chapters:
        raise ExtractError(f"{path} is not an exercise notebook: it has no check(\"NN.name\", ...) cells")
    return code
