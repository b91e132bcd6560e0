"""CI test of the cluster entry point ``torchrun ... -m lmlab.parallel.train`` (lesson 12).

Each layout runs under ``torchrun --standalone`` on gloo (2 processes; 8 for the 2 x 2 x 2 layout) and must
give the loss one process gives (``python -m lmlab.parallel.train``) to 1e-5 after 5 AdamW steps (observed
~4e-7). Spawning costs ~15-30 s per torchrun on 2 shared cores; the whole file stays under 3 min there.
Failures (a rank that raises or hangs) run through :func:`lmlab.parallel.launch` with the same worker.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lmlab.model import GPT
from lmlab.parallel import RankGrid, WorkerError, launch
from lmlab.parallel.parallelize import parallelize
from lmlab.parallel.train import check_layout, main, model_config, train_worker

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
LAYOUTS = {  # name -> (processes, options)
    "dp": (2, ["--dp", "2"]),
    "zero1": (2, ["--dp", "2", "--zero", "1"]),
    "zero2": (2, ["--dp", "2", "--zero", "2"]),
    "zero3": (2, ["--dp", "2", "--zero", "3"]),
    "tp": (2, ["--tp", "2"]),
    "pp": (2, ["--pp", "2"]),
    "3d": (8, ["--dp", "2", "--tp", "2", "--pp", "2"]),
}


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def _run(cmd: list[str], out: Path, timeout: float = 120) -> dict:
    proc = subprocess.run(cmd + ["--steps", "5", "--out", str(out)], cwd=ROOT, env=_env(), capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> list[float]:
    out = _run([sys.executable, "-m", "lmlab.parallel.train"], tmp_path_factory.mktemp("ref") / "ref.json")
    assert out["world_size"] == 1
    losses = out["losses"]
    assert len(losses) == 5 and losses[-1] < losses[0] - 0.3  # it learns
    return losses


@pytest.mark.slow
@pytest.mark.parametrize("name", list(LAYOUTS))
def test_torchrun_layout_matches_one_process(name, reference, tmp_path):
    n, opts = LAYOUTS[name]
    t0 = time.monotonic()
    out = _run([TORCHRUN, "--standalone", f"--nproc_per_node={n}", "-m", "lmlab.parallel.train", *opts],
               tmp_path / "out.json")
    assert out["world_size"] == n
    assert len(out["losses"]) == 5
    assert max(abs(a - b) for a, b in zip(out["losses"], reference)) < 1e-5, (out["losses"], reference)
    assert time.monotonic() - t0 < 90


@pytest.mark.parametrize("changes, world, name", [
    (dict(dp=2), 4, "world size"),
    (dict(tp=3), 3, "n_heads"),  # 4 heads over 3 ranks: parallelize names the option
    (dict(pp=3, n_layers=2), 3, "pp"),
    (dict(dp=2, batch=6, pp=1), 2, None),
    (dict(dp=2, batch=6, micro=2), 2, "batch"),
    (dict(zero=4, dp=2), 2, "zero"),
    (dict(device="tpu"), 1, "device"),
    (dict(nope=1), 1, "nope"),
])
def test_bad_layouts_name_the_parameter(changes, world, name):
    if name is None:
        assert check_layout(changes, world)["micro"] == 1
        return
    if name == "n_heads":  # passes the layout check, refused when the model is sharded (before any process)
        a = check_layout(changes, world)
        with pytest.raises(ValueError, match=name):
            parallelize(GPT(model_config(a)), RankGrid(tp=3), rank=0, tp_group=None)
        return
    with pytest.raises(ValueError, match=name):
        check_layout(changes, world)


def test_main_refuses_a_layout_that_does_not_divide_the_world():
    with pytest.raises(ValueError, match="world size"):
        main(["--dp", "2", "--steps", "1"])  # a world of one process


@pytest.mark.slow
def test_a_failing_rank_is_named():
    t0 = time.monotonic()
    with pytest.raises(WorkerError, match="rank 1 failed(.|\n)*deliberate failure") as info:
        launch(train_worker, 2, dict(dp=2, steps=3, fail_rank=1), timeout=20)
    assert info.value.rank == 1
    assert time.monotonic() - t0 < 60


@pytest.mark.slow
def test_a_hung_rank_times_out():
    t0 = time.monotonic()
    with pytest.raises(WorkerError, match=r"rank 0 failed(.|\n)*[Tt]ime"):  # its dp group's all-reduce timed out
        launch(train_worker, 2, dict(dp=2, steps=3, hang_rank=1, timeout=3.0), timeout=3)
    assert time.monotonic() - t0 < 60


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU (run on the GPU machine: NCCL, world of one)")
def test_cuda_nccl_matches_cpu(reference, tmp_path):
    out = _run([sys.executable, "-m", "lmlab.parallel.train", "--device", "cuda"], tmp_path / "cuda.json")
    assert out["layout"]["device"] == "cuda"
    assert max(abs(a - b) for a, b in zip(out["losses"], reference)) < 1e-4, (out["losses"], reference)
