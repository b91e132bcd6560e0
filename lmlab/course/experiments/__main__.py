"""Deep runs of the lessons' trained comparisons, at a scale the 90-second lessons cannot afford.

    python -m lmlab.course.experiments experiment 01 --seeds 10 --steps 600 --out deep_01.json

runs lesson NN's decisive comparison with the same functions and the same verdict helper
(:func:`lmlab.course.stats.paired_comparison`) the lesson uses, and writes a JSON result: the numbers,
the verdicts, the command that reproduces it, the lmlab version, the hardware and the wall time.
Chapters: 01 (RMSNorm vs LayerNorm, lesson 01 §4), 02 (SwiGLU/GeGLU/ReLU vs GeLU, lesson 02),
09 (the training-recipe ablations, lesson 09 §3). The runs are on the CPU (the training functions
build their models on the default device).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import torch

import lmlab
from lmlab.course.experiments.ch02_activations import compare_activations, comparison_verdicts
from lmlab.course.experiments.ch09_recipe import compare_settings
from lmlab.course.experiments.sweeps import train_sweep

__all__ = ["CHAPTERS", "run_chapter", "main"]

CHAPTERS = ("01", "02", "09")
MARGIN = 0.02  # nats, as in the lessons


def _ch01(seeds, steps, width):
    sweep = train_sweep({"layernorm": dict(norm="layernorm"), "rmsnorm": dict(norm="rmsnorm")}, lrs=(3e-3, 1e-2),
                        seeds=seeds, steps=steps, batch_size=16, base=dict(d_model=width))
    text, best, _ = sweep.verdict("rmsnorm", "layernorm", claim="equal", margin=MARGIN)
    numbers = {f"{v} @ lr {lr:g}": sweep.loss[(v, lr)] for v in sweep.variants for lr in sweep.lrs}
    return numbers, {"rmsnorm equals layernorm (each at its best LR)": best.to_dict() if best else None}, text


def _ch02(seeds, steps, width):
    comp = compare_activations(seeds=seeds, steps=steps, d_model=width)
    vs = comparison_verdicts(comp, against="gelu", margin=MARGIN,
                             claims={"relu": "worse", "swiglu": "better", "geglu": "better"})
    return (dict(comp.final_loss), {f"{v['activation']} vs gelu": v["comparison"].to_dict() for v in vs},
            "\n".join(v["sentence"] for v in vs))


def _ch09(seeds, steps, width):
    res = compare_settings(seeds=seeds, steps=steps, model_kw=dict(d_model=width))
    verdicts = {n: (c.to_dict() if c is not None else None) for n, c in res.comparisons.items()}
    return dict(res.losses), verdicts, "\n".join(res.sentence(n) for n in res.comparisons)


_RUNNERS = {"01": _ch01, "02": _ch02, "09": _ch09}
_DEFAULT_WIDTH = {"01": 32, "02": 32, "09": 32}


def run_chapter(chapter: str, seeds: int = 5, steps: int = 150, width: int | None = None,
                command: str | None = None) -> dict:
    """Run chapter ``chapter``'s comparison over seeds ``0..seeds-1`` and return the JSON-ready result."""
    if chapter not in _RUNNERS:
        raise ValueError(f"run_chapter: chapter must be one of {CHAPTERS}, got {chapter!r}")
    for name, value in (("seeds", seeds), ("steps", steps)):
        if isinstance(value, bool) or not isinstance(value, int) or value < (2 if name == "seeds" else 1):
            raise ValueError(f"run_chapter: {name} must be an int >= {2 if name == 'seeds' else 1}, got {value!r}")
    width = _DEFAULT_WIDTH[chapter] if width is None else width
    start = time.perf_counter()
    numbers, verdicts, text = _RUNNERS[chapter](tuple(range(seeds)), steps, width)
    return {
        "chapter": chapter, "scale": {"seeds": seeds, "steps": steps, "width": width, "device": "cpu"},
        "numbers": numbers, "verdicts": verdicts, "text": text,
        "command": command or (f"python -m lmlab.course.experiments experiment {chapter} --seeds {seeds} "
                               f"--steps {steps} --width {width}"),
        "lmlab_version": lmlab.__version__, "torch_version": torch.__version__,
        "hardware": {"machine": platform.machine(), "processor": platform.processor() or platform.machine(),
                     "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads()},
        "wall_seconds": round(time.perf_counter() - start, 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lmlab.course.experiments", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    exp = sub.add_parser("experiment", help="run one chapter's comparison at a chosen scale")
    exp.add_argument("chapter", choices=CHAPTERS)
    exp.add_argument("--seeds", type=int, default=5)
    exp.add_argument("--steps", type=int, default=150)
    exp.add_argument("--width", type=int, default=None)
    exp.add_argument("--out", default=None, help="JSON file to write (default: print it)")
    args = parser.parse_args(argv)
    command = "python -m lmlab.course.experiments " + " ".join(argv if argv is not None else sys.argv[1:])
    result = run_chapter(args.chapter, args.seeds, args.steps, args.width, command=command)
    print(result["text"])
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
        print(f"wrote {args.out}")
    else:
        print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
