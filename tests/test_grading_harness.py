"""lmlab.grading.harness.call_with: a check names an lmlab harness function; the sandbox routes it."""

from __future__ import annotations

import pytest

from lmlab.grading.harness import call_with, resolve_target


def test_in_process_it_calls_the_named_lmlab_function_with_the_object_first():
    out = call_with([3, 1, 2], "lmlab.argcheck:check_choice", "x", [[3, 1, 2], [1]])
    assert out == [3, 1, 2]
    assert resolve_target("lmlab.grading.plug_and_train:train_with_part").__name__ == "train_with_part"


def test_an_object_whose_type_has_the_hook_routes_the_call():
    calls = []

    class Remote:  # what the sandbox hands a check: a proxy for the learner's object in the child process
        def __lmlab_call_with__(self, target, *args, **kwargs):
            calls.append((target, args, kwargs))
            return "ran in the child"

    assert call_with(Remote(), "lmlab.grading.plug_and_train:train_with_part", "norm", {"norm": "rmsnorm"}, steps=2) == "ran in the child"
    assert calls == [("lmlab.grading.plug_and_train:train_with_part", ("norm", {"norm": "rmsnorm"}), {"steps": 2})]

    # only the type's hook counts, not an instance attribute
    plain = type("Plain", (), {})()
    plain.__lmlab_call_with__ = lambda *a: "instance attribute"
    with pytest.raises(ValueError):  # not routed: it resolves the target, which is not an lmlab function here
        call_with(plain, "os:system", "true")


@pytest.mark.parametrize("target", ["os:system", "lmlab.model.registry", "lmlab.model.registry:", "builtins:eval", "lmlabx.mod:f",
                                    "lmlab.grading.plug_and_train:train_with_part; import os", None, 3])
def test_only_lmlab_functions_can_be_named(target):
    with pytest.raises(ValueError, match="target must look like 'lmlab.module:function'"):
        call_with(object(), target)
