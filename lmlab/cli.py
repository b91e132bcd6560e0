"""The ``lmlab`` command: ``lmlab doctor``, ``lmlab grade`` and ``lmlab progress``."""

from __future__ import annotations

import argparse
import sys

from lmlab.course.doctor import doctor
from lmlab.course.my_parts import progress_command
from lmlab.grading.cli import grade_command


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lmlab", description="lmlab: the LLM pretraining course's helper command.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("doctor", help="print versions, device and whether widgets will render")
    grade = sub.add_parser("grade", help="grade an exercise notebook (.ipynb or .py)")
    grade.add_argument("path", help="the exercise notebook to grade")
    grade.add_argument("--json", dest="json_path", nargs="?", const="-", default=None, help="also write the results as JSON (to a file, or - for stdout)")
    grade.add_argument("--timeout", type=float, default=None, help="seconds allowed per exercise (default: the exercise's own limit)")
    grade.add_argument("--strict", action="store_true", help="give 0 points to exercises whose code imports lmlab's own implementation")
    grade.add_argument("--salt", type=int, default=None,
                       help="the seed salt of the checks' inputs (default: a fresh random one, printed; give it to replay a run)")
    grade.add_argument("--chapter", default=None,
                       help="the chapter to grade on, e.g. 04 (default: the file name's NN_ prefix, else the one chapter its checks name)")
    progress = sub.add_parser("progress", help="points per chapter, your capstone parts and the next exercise")
    progress.add_argument("folder", nargs="?", default=None, help="your exercise notebooks (default: exercises/)")
    progress.add_argument("--chapter", dest="chapters", action="append", default=None, help="only this chapter (NN; repeatable)")
    progress.add_argument("--timeout", type=float, default=None, help="seconds allowed per exercise (default: the exercise's own limit)")
    args = parser.parse_args(argv)
    if args.command == "progress":
        return progress_command(args.folder, chapters_=args.chapters, timeout=args.timeout)
    if args.command == "doctor":
        doctor()
        return 0
    return grade_command(args.path, json_path=args.json_path, timeout=args.timeout, strict=args.strict, salt=args.salt, chapter=args.chapter)


if __name__ == "__main__":
    sys.exit(main())
