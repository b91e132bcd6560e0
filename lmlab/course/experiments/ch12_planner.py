"""Lesson 12's guided planner tasks (``lessons/12_parallelism``): questions about 3D layouts whose
answers are computed here from the same memory model the planner widget draws
(:func:`lmlab.course.experiments.ch12_parallelism.plan`), and a checker for the learner's answers."""

from __future__ import annotations

from lmlab.course.experiments.ch12_parallelism import plan

__all__ = ["TASKS", "task_answers", "check_answers"]

TASKS = {
    "fits_on_one_node": "Does LLaMA-2-70B fit on ONE node of 8 x A100 80GB with ZeRO-1 in ANY layout (dp x tp x pp = 8)? "
                        "Answer True or False.",
    "smallest_tp_32_gpus_pp4": "On 32 x A100 80GB with ZeRO-1, pipeline degree pp = 4 and 8 micro-batches, what is the "
                               "smallest tensor-parallel degree tp (1, 2, 4 or 8; dp = 32 / (tp pp)) that fits LLaMA-2-70B?",
    "smallest_pp_64_gpus_tp8": "On 64 x A100 80GB with ZeRO-1 and tp = 8 (one node per tensor-parallel group), what is the "
                               "smallest pipeline degree pp (1, 2, 4 or 8) that fits LLaMA-2-70B?",
}


def _fits(n_gpus, tp, pp, zero_stage=1):
    if n_gpus % (tp * pp):
        return False
    return plan("LLaMA-2-70B", n_gpus, n_gpus // (tp * pp), tp, pp, zero_stage, 8)["fits"]


def task_answers() -> dict:
    """The answers, computed by searching the layouts with the planner's own memory model."""
    return {
        "fits_on_one_node": any(_fits(8, tp, pp) for tp in (1, 2, 4, 8) for pp in (1, 2, 4, 8)),
        "smallest_tp_32_gpus_pp4": next((tp for tp in (1, 2, 4, 8) if _fits(32, tp, 4)), None),
        "smallest_pp_64_gpus_tp8": next((pp for pp in (1, 2, 4, 8) if _fits(64, 8, pp)), None),
    }


def check_answers(answers: dict) -> list[str]:
    """One line per task: ✅ / ❌ (with the computed answer) / ⏳ (still None)."""
    if not isinstance(answers, dict):
        raise ValueError(f"answers must be a dict keyed like TASKS ({list(TASKS)}), got {type(answers).__name__}")
    truth, lines = task_answers(), []
    for key in TASKS:
        got = answers.get(key)
        if got is None:
            lines.append(f"⏳ {key}: not answered yet")
        elif got == truth[key] and type(got) is type(truth[key]):
            lines.append(f"✅ {key}: {got!r}")
        else:
            lines.append(f"❌ {key}: you said {got!r}; the planner's memory model says {truth[key]!r}")
    return lines
