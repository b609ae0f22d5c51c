"""W&B run naming: the ablation switches it names are real method arguments (a rename breaks this test, not a run)."""

from __future__ import annotations

import inspect

import textseg.methods
from textseg.engine.wandb import ABLATION_KEYS


def method_arguments() -> set[str]:
    """Every constructor argument of every method class, bases included (``**kwargs`` passes them on)."""
    names: set[str] = set()
    for cls_name in textseg.methods.__all__:
        for klass in getattr(textseg.methods, cls_name).__mro__:
            init = klass.__dict__.get("__init__")
            if init is None or klass.__module__.split(".")[0] != "textseg":
                continue
            for p in inspect.signature(init).parameters.values():
                if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and p.name != "self":
                    names.add(p.name)
    return names


def test_every_ablation_key_is_a_method_argument() -> None:
    arguments = method_arguments()
    assert {"use_teacher", "mix", "expert", "loss"} <= arguments and "not_an_argument" not in arguments
    assert len(set(ABLATION_KEYS)) == len(ABLATION_KEYS)
    unknown = [key for key in ABLATION_KEYS if key not in arguments]
    assert not unknown, f"ABLATION_KEYS names no method argument: {unknown}"
