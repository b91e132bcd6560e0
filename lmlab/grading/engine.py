"""Run one exercise's checks against a learner's object and never raise — and the contract for check authors.

:func:`run_exercise` is used by :func:`lmlab.grading.check` in a notebook (in the kernel, the learner's
own object: feedback, not a grade) and by ``lmlab grade``, where the object is a proxy
(:class:`lmlab.grading.sandbox.Remote`) and the learner's code runs in a child process. Whatever the
learner's code does — raise, print a megabyte, call ``sys.exit``, loop forever, die — the result is an
:class:`~lmlab.grading.report.ExerciseResult`.

Contract for check authors (``lmlab/grading/chapters/chNN.py``)
---------------------------------------------------------------
Under ``lmlab grade`` a check runs in the grader's process and receives a *proxy* of the learner's
function or class. Write checks so they behave the same with the real object and with the proxy:

* Call it, instantiate it, call methods, read and set attributes: ``f(x)``, ``cls(d)``, ``m(x)``,
  ``opt.step()``, ``tok.vocab_size``, ``len(obj)``, ``obj[i]``. Instances the learner's code creates stay in
  the child (proxies); ``isinstance(proxy, nn.Module)`` / ``torch.optim.Optimizer`` and ``isinstance(cls_proxy,
  type)`` hold for subclasses of torch's classes.
* Arguments cross by pickling: tensors, ``nn.Parameter``, ``nn.Module`` (classes importable from torch or
  lmlab), ``torch.Generator``, plain Python. A lambda or local function is called back in the grader
  (not differentiable, plain values only); a generator is sent as a list.
* The check's tensors and modules reach the learner's code as *copies*: an in-place write to one of them
  fails the check ("changed its input … in place") and never comes back, so the check's inputs (and any
  expected value computed from them) stay the grader's. A check that needs in-place work to be seen
  marks that argument with :func:`lmlab.grading.sandbox.share` (an optimizer's parameters, a cache the
  function fills, a counter in a stand-in sub-layer): then its data, ``.grad`` and a module's public
  plain attributes are synced both ways around every call. ``.grad`` is synced for every tensor. Tensors
  the learner's objects own (``model.weight``) come back as tensors the check may read, modify in place
  and send back (that is how a check loads its own weights into the learner's layer). Not synced: other
  attributes, generators' state, tensors reachable only through a non-module container the child keeps.
* Randomness: draw inputs with :func:`lmlab.grading.assertions.seeded_randn` or
  :func:`lmlab.grading.seeds.check_generator` (salted per run); build modules that need torch's global
  generator inside :func:`lmlab.grading.seeds.global_seed`. Never seed the global generator directly.
* Results come back as plain values: tensors, numbers, strings, lists/tuples/dicts/sets, dtypes; anything
  else is a proxy. A returned tensor that requires grad is connected to the check's autograd graph:
  ``loss.backward()`` / ``torch.autograd.grad(out, inputs)`` ask the child to backpropagate, and gradients
  reach the check's tensors and the learner's own parameters (read them via the proxy afterwards).
  ``torch.no_grad()`` around a call is honoured in the child.
* Identity is not preserved across the boundary (except tensors: a returned argument tensor is the
  check's own object). Do not rely on globals, on patching, or on the learner's object calling check
  code other than the callables passed to it.
* Anything that needs more than calls (train with the learner's part) goes through
  :func:`lmlab.grading.harness.call_with`: the harness runs in the child with the real object and
  returns plain values.
* Exceptions the learner's code raises arrive as subclasses of the same builtin exception
  (``NotImplementedError``, ``ValueError`` …), so ``except ValueError`` in a check works.
* Exercise references may be zero-argument callables or ``"lmlab.module:name"`` strings; resolve them
  with :func:`lmlab.grading.strict.resolve_reference`.
"""

from __future__ import annotations

import contextlib
import io
import time
from typing import Any

from lmlab.grading.guard import GradingTimeout, error_location, time_limit
from lmlab.grading.registry import CheckFailed, Exercise
from lmlab.grading.report import ExerciseResult
from lmlab.grading.sandbox import Remote, SandboxError
from lmlab.grading.seeds import global_seed, using_salt

__all__ = ["run_exercise", "BoundedText"]

_OUTPUT_KEEP = 2000  # characters of the learner's printing kept for the report


class BoundedText(io.TextIOBase):
    """A write-only text stream that keeps the first ``limit`` characters and counts the rest."""

    def __init__(self, limit: int = _OUTPUT_KEEP):
        if limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        self.limit, self.kept, self.total = limit, [], 0

    def writable(self) -> bool:
        return True

    def write(self, s: str) -> int:
        s = str(s)
        room = self.limit - min(self.total, self.limit)
        if room > 0:
            self.kept.append(s[:room])
        self.total += len(s)
        return len(s)

    def getvalue(self) -> str:
        text = "".join(self.kept)
        return text + (f"\n… ({self.total:,} characters in all)" if self.total > self.limit else "")


def _expected_kind(exercise: Exercise, obj: Any) -> str | None:
    if exercise.kind == "class" and not isinstance(obj, type):
        return f"expected a class {exercise.signature}, got {type(obj).__name__}"
    if exercise.kind == "function" and (not callable(obj) or isinstance(obj, type)):
        return f"expected a function {exercise.signature}, got {type(obj).__name__}"
    return None


def run_exercise(exercise: Exercise, obj: Any, timeout: float | None = None, missing: bool = False,
                 capture: bool = True, salt: int = 0) -> ExerciseResult:
    """Run ``exercise``'s checks on ``obj``; stop at the first failure; never raise.

    Args:
        exercise: the registered exercise.
        obj: the learner's function or class.
        timeout: seconds allowed for all checks together (None: the exercise's own limit;
            0 or less is refused with ValueError).
        missing: ``obj`` was not found at all (reported as not implemented).
        capture: keep what ``obj`` prints for the report (redirects this process's stdout/stderr,
            so never from several threads at once; the sandbox's proxies print nothing here).
        salt: mixed into every seed the checks draw their inputs with (:mod:`lmlab.grading.seeds`);
            0 in a notebook, random per run under ``lmlab grade``.
    """
    if not isinstance(exercise, Exercise):
        raise ValueError(f"exercise must be an Exercise, got {type(exercise).__name__}")
    if timeout is not None and not timeout > 0:
        raise ValueError(f"timeout must be > 0 seconds (or None), got {timeout!r}")
    if isinstance(salt, bool) or not isinstance(salt, int) or salt < 0:
        raise ValueError(f"salt must be an int >= 0, got {salt!r}")
    limit = exercise.timeout if timeout is None else float(timeout)
    res = ExerciseResult(id=exercise.id, status="failed", points=0, max_points=exercise.points,
                         checks_total=len(exercise.checks), hint=exercise.hint)
    if missing:
        res.status, res.reason = "not implemented", f"no definition of `{exercise.name}` found: define {exercise.signature}"
        return res
    wrong_kind = _expected_kind(exercise, obj)
    if wrong_kind:
        res.reason = wrong_kind
        return res
    out = BoundedText()
    start = time.perf_counter()
    check = None
    try:
        redirect = (contextlib.redirect_stdout(out), contextlib.redirect_stderr(out)) if capture else (contextlib.nullcontext(),) * 2
        with time_limit(limit), redirect[0], redirect[1]:
            for check in exercise.checks:
                # the salt on this thread; when the learner's code runs here (a notebook), torch's global
                # generator is this check's alone, freshly seeded (a sandbox's proxy runs it in the child)
                with using_salt(salt), (contextlib.nullcontext() if isinstance(obj, Remote) else global_seed(0)):
                    check.fn(obj)
                res.checks_passed += 1
        res.status, res.points, check = "passed", exercise.points, None
    except SandboxError as exc:
        res.status, res.reason = "error", str(exc)
    except NotImplementedError as exc:
        res.status = "not implemented"
        res.reason = f"{exercise.name} still raises NotImplementedError{error_location(exc)}"
        res.details = res.reason + "\nreplace the `raise NotImplementedError(...)` line with your code"
    except CheckFailed as exc:
        msg = str(exc) or "check failed"
        res.reason, res.details = msg.splitlines()[0], msg
    except GradingTimeout:
        res.status, res.reason = "timeout", f"stopped after {limit:g} s (an endless loop? a very slow step?)"
    except KeyboardInterrupt:
        res.status, res.reason = "timeout", "interrupted while running"
    except SystemExit as exc:
        res.reason = f"your code called sys.exit({exc.code!r}){error_location(exc)}; return a value instead"
    except RecursionError as exc:
        res.reason = f"your code recursed too deeply{error_location(exc)}: RecursionError"
    except Exception as exc:  # the learner's own error: report it, never re-raise
        text = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        res.reason = f"your code raised {type(exc).__name__}{': ' + text if text else ''}{error_location(exc)}"
        res.details = res.reason + f"\nexpected: {exercise.signature}"
    res.seconds = round(time.perf_counter() - start, 3)
    if check is not None and res.status != "passed":
        res.check = check.description
    if out.total:
        res.output = out.getvalue()
    return res

