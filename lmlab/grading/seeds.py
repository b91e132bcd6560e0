"""Randomness for checks: one generator per draw, a per-run salt, and no shared global state.

Every check input is drawn from its own :class:`torch.Generator` (:func:`check_generator`), seeded from
the check's fixed seed mixed with the *salt* of the current grading run (:func:`salted`). ``lmlab grade``
picks a random salt per run and records it in the report (``--salt`` replays it), so no table of
answers works across runs; in a notebook's ``check`` the salt is 0 (the same inputs every time).

The salt is per thread (:func:`using_salt`), so several notebooks graded at once in one process do not
see each other's. Code that cannot take a generator (``nn.Linear``'s initialisation, ``GPT(cfg)``) runs
inside :func:`global_seed`, which holds one process-wide lock while it seeds torch's global generator
and restores it afterwards: no other check's draws can move it meanwhile. The engine runs each check
inside ``global_seed(0)`` for exactly that reason.
"""

from __future__ import annotations

import contextlib
import random
import threading

import torch

__all__ = ["salted", "check_generator", "py_random", "global_seed", "exact_global_seed", "using_salt", "current_salt", "new_salt", "SALT_BITS"]

SALT_BITS = 32
_MASK32 = (1 << 32) - 1
_GOLDEN = 0x9E3779B97F4A7C15  # Fibonacci hashing: nearby salts give unrelated seeds
_LOCAL = threading.local()
_GLOBAL_RNG = threading.RLock()


def _check_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be an int >= 0, got {value!r}")
    return value


def current_salt() -> int:
    """The salt of the grading run on this thread (0 outside ``lmlab grade``)."""
    return getattr(_LOCAL, "salt", 0)


def new_salt() -> int:
    """A fresh random salt for one grading run (from the OS, not from torch's generator)."""
    return random.SystemRandom().getrandbits(SALT_BITS)


@contextlib.contextmanager
def using_salt(salt: int):
    """Checks on this thread draw with ``salt`` inside the block."""
    _check_int(salt, "salt")
    old = current_salt()
    _LOCAL.salt = salt
    try:
        yield
    finally:
        _LOCAL.salt = old


def salted(seed: int) -> int:
    """``seed`` mixed with this thread's salt (``seed`` itself when the salt is 0)."""
    _check_int(seed, "seed")
    salt = current_salt()
    return seed if salt == 0 else (seed ^ (salt * _GOLDEN)) & _MASK32  # 32 bits: NumPy's seeds stop there


def check_generator(seed: int) -> torch.Generator:
    """A new CPU generator for one check input, seeded with :func:`salted` ``(seed)``."""
    return torch.Generator().manual_seed(salted(seed))


def py_random(seed: int) -> random.Random:
    """A Python :class:`random.Random` for one check, seeded with :func:`salted` ``(seed)``."""
    return random.Random(salted(seed))


@contextlib.contextmanager
def global_seed(seed: int):
    """Torch's global generator, seeded with :func:`salted` ``(seed)`` and held by this thread alone
    inside the block (restored afterwards). For code that cannot take a generator (module init)."""
    with exact_global_seed(salted(seed)):
        yield


@contextlib.contextmanager
def exact_global_seed(value: int):
    """:func:`global_seed` with ``value`` itself (no salt): for harnesses that get an already salted seed."""
    _check_int(value, "value")
    with _GLOBAL_RNG, torch.random.fork_rng(devices=[]):
        torch.manual_seed(value)
        yield
