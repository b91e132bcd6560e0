"""Results of grading and their friendly text: one exercise in a notebook, a table in a terminal.

Plain text with emoji, so it reads the same in JupyterLab, Colab, a terminal and a CI log.
"""

from __future__ import annotations

import re
import shutil
import textwrap
import unicodedata
from dataclasses import asdict, dataclass

__all__ = ["STATUSES", "ExerciseResult", "format_result", "format_table", "summary", "printable"]

_ESCAPES = re.compile(r"\x1b(\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(\x07|\x1b\\)?|[@-Z\\-_])|\x9b[0-?]*[ -/]*[@-~]")


def printable(text: str, newlines: bool = True) -> str:
    """``text`` with terminal escape sequences and every other non-printable character removed (tabs
    become spaces; newlines are kept when ``newlines``): what the learner's code says is shown as text,
    never as commands to the terminal (erase a line, hide text, move the cursor)."""
    text = _ESCAPES.sub("", str(text)).replace("\t", " ")
    keep = "\n" if newlines else ""
    return "".join(c for c in text if c in keep or not unicodedata.category(c).startswith(("C", "Zl", "Zp")))

# status -> (icon, words)
STATUSES = {
    "passed": ("✅", "passed"),
    "failed": ("❌", "failed"),
    "not implemented": ("⏳", "not implemented yet"),
    "timeout": ("⏱️", "timed out"),
    "error": ("💥", "could not be graded"),
}


@dataclass
class ExerciseResult:
    """The outcome of one exercise.

    ``reason`` is one line (for tables); ``details`` may span lines (expected vs got, a drawn mask);
    ``check`` names the case that failed.
    """

    id: str
    status: str
    points: int
    max_points: int
    checks_passed: int = 0
    checks_total: int = 0
    reason: str = ""
    details: str = ""
    check: str = ""
    hint: str = ""
    output: str = ""
    seconds: float = 0.0

    def __post_init__(self):
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {list(STATUSES)}, got {self.status!r}")

    def __setattr__(self, name, value):  # the learner's words reach reports only as printable text
        if name in ("reason", "check") and isinstance(value, str):
            value = printable(value, newlines=False)
        elif name in ("details", "output", "hint") and isinstance(value, str):
            value = printable(value)
        super().__setattr__(name, value)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ExerciseResult":
        if not isinstance(data, dict):
            raise ValueError(f"data must be a dict, got {type(data).__name__}")
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def format_result(result: ExerciseResult) -> str:
    """The report printed under a check cell."""
    if not isinstance(result, ExerciseResult):
        raise ValueError(f"result must be an ExerciseResult, got {type(result).__name__}")
    icon, words = STATUSES[result.status]
    if result.status == "passed":
        return f"{icon} {result.id} passed ({result.checks_total} checks) · {result.points}/{result.max_points} points"
    lines = [f"{icon} {result.id} {words} · {result.points}/{result.max_points} points"]
    if result.check and result.status != "not implemented":
        lines.append(f"   case {result.checks_passed + 1} of {result.checks_total}: {result.check}")
    if result.reason:
        lines.append(f"   {result.reason}")
    extra = result.details.splitlines()
    if extra and extra[0] == result.reason:
        extra = extra[1:]
    lines.extend("   " + line for line in extra)
    if result.output:
        lines.append("   your code printed: " + result.output.splitlines()[0][:120] + (" …" if len(result.output) > 120 or "\n" in result.output.strip() else ""))
    if result.hint and result.status in ("failed", "not implemented", "timeout"):
        lines.append(f"   💡 hint: {result.hint}")
    return "\n".join(lines)


def summary(results: list[ExerciseResult]) -> tuple[int, int]:
    """``(points, max_points)`` over ``results``."""
    return sum(r.points for r in results), sum(r.max_points for r in results)


def format_table(results: list[ExerciseResult], title: str = "") -> str:
    """A score table: exercise, points, status, one-line reason (cut at 90 characters); then the total, and
    under it every cut reason in full, wrapped to the terminal's width."""
    if not isinstance(results, list):
        raise ValueError(f"results must be a list of ExerciseResult, got {type(results).__name__}")
    rows = [("exercise", "points", "status", "reason")]
    for r in results:
        icon, words = STATUSES[r.status]
        reason = r.reason if r.status != "passed" else f"{r.checks_total} checks"
        reason = reason.splitlines()[0] if reason else ""
        rows.append((r.id, f"{r.points}/{r.max_points}", f"{icon} {words}", reason[:90] + ("…" if len(reason) > 90 else "")))
    got, total = summary(results)
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = [title] if title else []
    for i, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(widths[j]) for j, cell in enumerate(row[:3])) + "  " + row[3])
        if i == 0:
            lines.append("-" * (sum(widths) + 6 + max(len("reason"), 20)))
    lines.append(f"total: {got}/{total} points" + (f" ({100 * got / total:.0f}%)" if total else ""))
    cut = [r for r in results if r.status != "passed" and r.reason and (len(r.reason) > 90 or "\n" in r.reason.strip())]
    if cut:  # the table cuts a long reason; "expected ... got ..." is the part a learner needs
        width = max(60, min(shutil.get_terminal_size((100, 24)).columns, 120)) - 4
        lines += ["", "why (in full):"]
        for r in cut:
            head = f"{r.id}" + (f" · case {r.checks_passed + 1} of {r.checks_total}: {r.check}" if r.check else "")
            lines += textwrap.wrap(head, width, initial_indent="  ", subsequent_indent="    ")
            for para in r.reason.strip().splitlines():
                lines += textwrap.wrap(para, width, initial_indent="    ", subsequent_indent="    ") or [""]
    return "\n".join(lines)
