"""The package's layout, read from the source with ``ast`` (and one fresh interpreter for import side effects).

(a) no import cycles (an import inside a function counts as an edge, too); (b) no function-level import
of an lmlab module (import at the top; a function-level import is only for a heavy optional third-party
dependency); (c) ``lmlab.model`` imports nothing from the layers above it; (d) importing lmlab and every
submodule leaves torch's threads, RNG, default dtype and the warnings filters as they were; (e) every
subpackage's ``__init__`` says what goes there; and every chapter's graders follow the notebook's order.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from lmlab.grading.registry import chapter_exercises, chapters

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "lmlab"

MODEL_MAY_NOT_IMPORT = ("lmlab.infer", "lmlab.train", "lmlab.course", "lmlab.grading", "lmlab.parallel", "lmlab.interop")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _target(module: str, node: ast.ImportFrom | ast.Import, alias: ast.alias) -> str:
    """The lmlab module an import names (``from pkg import sub`` names ``pkg.sub``), or ``""``."""
    if isinstance(node, ast.Import):
        name = alias.name
    else:
        if node.level:  # relative: resolve against this module's package
            base = module.split(".") if MODULES[module].name == "__init__.py" else module.split(".")[:-1]
            base = base[:len(base) - node.level + 1]
            name = ".".join(base + ([node.module] if node.module else []))
        else:
            name = node.module or ""
        if f"{name}.{alias.name}" in MODULES:
            name = f"{name}.{alias.name}"
    if name.split(".")[0] != "lmlab":
        return ""
    while name not in MODULES and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def _imports() -> dict[str, list[tuple[str, bool, int]]]:
    """``module -> [(imported lmlab module, inside a function?, line)]`` for every module of lmlab."""
    out: dict[str, list[tuple[str, bool, int]]] = {}
    for module, path in MODULES.items():
        found: list[tuple[str, bool, int]] = []

        def visit(node, in_function):
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.Import, ast.ImportFrom)):
                    for alias in child.names:
                        target = _target(module, child, alias)
                        if target:
                            found.append((target, in_function, child.lineno))
                visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)))

        visit(ast.parse(path.read_text(encoding="utf-8")), False)
        out[module] = found
    return out


IMPORTS = _imports()


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(edges.get(w, ())))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    found.append(sorted(comp))
    return found


def test_the_walk_sees_the_package():
    assert len(MODULES) > 100 and "lmlab.grading.child" in MODULES and "lmlab.model.gpt" in MODULES
    assert ("lmlab.model.registry", False) in {(t, f) for t, f, _ in IMPORTS["lmlab.grading.plug_and_train"]}
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles():
    """Module-level and function-level imports both count: a lazy import that dodges a cycle is still one."""
    edges = {m: {t for t, _, _ in found if t != m} for m, found in IMPORTS.items()}  # child.py's __main__ imports itself
    assert _cycles(edges) == []


def test_no_function_level_lmlab_imports():
    """Import lmlab modules at the top (a function-level import is only for a heavy optional third-party package)."""
    found = [f"{MODULES[module].relative_to(ROOT).as_posix()}:{line}: imports {target} inside a function"
             for module, imports in IMPORTS.items() for target, in_function, line in imports if in_function]
    assert found == []


def test_model_imports_nothing_above_it():
    bad = [f"{m} imports {t}" for m, found in IMPORTS.items() if m.startswith("lmlab.model")
           for t, _, _ in found if t.startswith(MODEL_MAY_NOT_IMPORT)]
    assert bad == []


_SIDE_EFFECTS = r"""
import importlib, json, sys, warnings
import torch

def state():
    return {"threads": torch.get_num_threads(), "rng": torch.get_rng_state().tolist(), "dtype": str(torch.get_default_dtype()),
            "warnings": [repr(f) for f in warnings.filters]}

before = state()
changed = {}
for name in ["lmlab"] + sys.argv[1:]:
    importlib.import_module(name)
    now = state()
    if now != before and not changed:
        changed = {"module": name, **{k: (before[k], now[k]) for k in now if now[k] != before[k] and k != "rng"},
                   "rng": now["rng"] != before["rng"]}
print(json.dumps(changed))
"""


def test_importing_lmlab_changes_nothing():
    """torch's threads, its global RNG, its default dtype and the warnings filters are as before every import."""
    names = [m for m in MODULES if m != "lmlab" and not m.endswith(".__main__")]
    out = subprocess.run([sys.executable, "-c", _SIDE_EFFECTS, *names], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {}, "the first import that changed the process's state"


def test_every_subpackage_says_what_goes_there():
    for path in sorted(PACKAGE.rglob("__init__.py")):
        doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
        assert len(doc.split()) >= 8, f"{path.relative_to(ROOT)}: the docstring should say what goes in this package"


def _notebook_order(chapter: str) -> list[str]:
    ids: list[str] = []
    for path in sorted((ROOT / "solutions").glob(f"{chapter}_*.py")):
        for m in re.finditer(r"""\bcheck\(\s*["'](\d\d\.\w+)["']""", path.read_text(encoding="utf-8")):
            if m.group(1) not in ids:
                ids.append(m.group(1))
    return ids


def test_every_chapter_grades_in_the_notebooks_order():
    """``chapter_exercises`` (the score table, the exercise notebook) follows the ``check`` calls in the solution."""
    assert len(chapters()) == 14
    for chapter in chapters():
        assert [ex.id for ex in chapter_exercises(chapter)] == _notebook_order(chapter), f"chapter {chapter}"
