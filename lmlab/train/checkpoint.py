"""Checkpoints that resume exactly (lesson 09, ``lessons/09_training_recipe``).

A checkpoint holds everything the next step depends on: the model's and the optimizer's state,
the step (the schedule is a function of it), the position in the data stream and the data
generator's state, and every random-number generator (Python, NumPy, torch's global one that
dropout uses). Resuming from it gives bit-identical losses to a run that was never interrupted
(``tests/test_checkpoint.py`` kills a training process with a signal and compares).

Writes are atomic: the file is written to a temporary name in the same folder, flushed to disk, then
renamed over the old one (``os.replace`` is atomic on POSIX and Windows), so a crash mid-write
leaves the previous checkpoint intact. A truncated or foreign file gives a clear ``ValueError``;
so does a checkpoint of another model shape, naming the first parameter that differs.
"""

from __future__ import annotations

import os
import pickle
import random
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

__all__ = ["save_checkpoint", "load_checkpoint", "rng_state", "set_rng_state", "CheckpointError", "FORMAT"]

FORMAT = "lmlab-checkpoint-1"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used (truncated, not a checkpoint, another model's)."""


def rng_state(generator: torch.Generator | None = None) -> dict:
    """Every random-number generator's state (and ``generator``'s, when given)."""
    state = dict(python=random.getstate(), numpy=np.random.get_state(), torch=torch.get_rng_state())
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if generator is not None:
        state["generator"] = generator.get_state()
    return state


def set_rng_state(state: dict, generator: torch.Generator | None = None) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if generator is not None and "generator" in state:
        generator.set_state(state["generator"])


def save_checkpoint(path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None, *,
                    step: int = 0, data_position: int = 0, generator: torch.Generator | None = None,
                    extra: dict | None = None) -> Path:
    """Write a checkpoint atomically to ``path`` (temp file + rename); return the path.

    ``extra`` holds anything else the caller needs back (the history so far, a detector's window,
    the schedule's settings); it must be picklable.
    """
    path = Path(path)
    if not isinstance(model, nn.Module):
        raise ValueError(f"save_checkpoint: model must be an nn.Module, got {type(model).__name__}")
    if not isinstance(step, int) or step < 0 or not isinstance(data_position, int) or data_position < 0:
        raise ValueError(f"save_checkpoint: step and data_position must be ints >= 0, got {step!r}, {data_position!r}")
    payload = dict(
        format=FORMAT, step=step, data_position=data_position,
        model=model.state_dict(), optimizer=None if optimizer is None else optimizer.state_dict(),
        rng=rng_state(generator), extra=extra or {},
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic: readers see the old file or the new one, never half of one
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def _check_shapes(model: nn.Module, saved: dict, path: Path) -> None:
    own = model.state_dict()
    for name, tensor in own.items():
        if name not in saved:
            raise CheckpointError(f"checkpoint {path} has no parameter {name!r}: it is from another model")
        if tuple(saved[name].shape) != tuple(tensor.shape):
            raise CheckpointError(f"checkpoint {path} does not fit this model: parameter {name!r} has shape "
                                  f"{tuple(saved[name].shape)} in the checkpoint but {tuple(tensor.shape)} in the model")
    unexpected = sorted(set(saved) - set(own))
    if unexpected:
        raise CheckpointError(f"checkpoint {path} has parameter {unexpected[0]!r} that this model lacks: it is from another model")


def load_checkpoint(path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None, *,
                    generator: torch.Generator | None = None, restore_rng: bool = True) -> dict:
    """Load ``path`` into ``model`` (and ``optimizer``, ``generator``); return ``step``, ``data_position``, ``extra``.

    Raises :class:`CheckpointError` (a ``ValueError``) for a missing, truncated or foreign file and
    for a parameter whose shape differs — before anything is changed.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, OSError) as err:
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt ({type(err).__name__}: "
                              f"{str(err).splitlines()[0][:120] if str(err) else ''}); use an earlier checkpoint") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an lmlab checkpoint (format {FORMAT!r})")
    _check_shapes(model, payload["model"], path)
    model.load_state_dict(payload["model"])
    if optimizer is not None:
        if payload["optimizer"] is None:
            raise CheckpointError(f"checkpoint {path} holds no optimizer state")
        try:
            optimizer.load_state_dict(payload["optimizer"])
        except ValueError as err:
            raise CheckpointError(f"checkpoint {path}: the optimizer state does not fit this optimizer ({err})") from None
    if restore_rng:
        set_rng_state(payload["rng"], generator)
    return dict(step=payload["step"], data_position=payload["data_position"], extra=payload["extra"])
