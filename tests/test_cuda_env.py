"""MONAI's import-time ``CUBLAS_WORKSPACE_CONFIG`` is dropped again (it slows every cuBLAS call), a user's is kept."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from textseg import cuda_env

PRINT_AFTER_IMPORT = "import os, {first}textseg.methods; print(repr(os.environ.get('CUBLAS_WORKSPACE_CONFIG')))"


@pytest.mark.parametrize(
    ("user", "now", "dropped", "left"),
    [
        (None, ":4096:8", True, None),  # MONAI set it after textseg was imported: dropped
        (":4096:8", ":4096:8", False, ":4096:8"),  # the user set the same value before: kept
        (None, ":16:8", False, ":16:8"),  # set later to another value (e.g. Trainer(deterministic=True)): kept
        (None, None, False, None),
    ],
)
def test_drop_monai_default(
    user: str | None, now: str | None, dropped: bool, left: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cuda_env, "USER_VALUE", user)
    monkeypatch.delenv(cuda_env.VARIABLE, raising=False)
    if now is not None:
        monkeypatch.setenv(cuda_env.VARIABLE, now)
    assert cuda_env.drop_monai_default() is dropped
    assert os.environ.get(cuda_env.VARIABLE) == left


@pytest.mark.parametrize(("first", "expected"), [("", "None"), ("monai, ", "':4096:8'")], ids=["unset", "monai-first"])
def test_import_leaves_the_variable_as_the_user_had_it(first: str, expected: str) -> None:
    """In a fresh interpreter: unset stays unset although MONAI is imported; MONAI's default set before textseg was
    imported (indistinguishable from a user's value) stays."""
    env = {k: v for k, v in os.environ.items() if k != cuda_env.VARIABLE}
    code = PRINT_AFTER_IMPORT.format(first=first)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == expected
