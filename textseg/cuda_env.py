"""Keep MONAI's import-time cuBLAS setting out of textseg runs.

Importing MONAI sets ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` when the variable is unset (``monai/utils/misc.py``, for
deterministic cuBLAS). With it set, every cuBLAS call costs the host several times more: measured on an H100 (torch
2.11, CUDA 13), a small ``mm`` took 78 us instead of 14 us per call, and a full-size Semi-MedRef step, which issues
about 960 matrix products, was host-bound (``benchmarks/results_step_time_cuda.md``). textseg does not need the
setting: Lightning sets it itself for ``Trainer(deterministic=True)``.

:data:`USER_VALUE` records the variable when ``textseg`` is imported (before any textseg module imports MONAI), and
:func:`drop_monai_default` -- called once the method modules, and with them MONAI, are imported -- removes the
variable again when MONAI, not the user, set it. A value the user set (also ``:4096:8`` set before importing
textseg, or MONAI imported before textseg) is kept.
"""

from __future__ import annotations

import os

#: The environment variable MONAI sets.
VARIABLE = "CUBLAS_WORKSPACE_CONFIG"
#: The value MONAI sets when the variable is unset.
MONAI_DEFAULT = ":4096:8"
#: The variable's value when textseg was imported (``None``: unset).
USER_VALUE = os.environ.get(VARIABLE)


def drop_monai_default() -> bool:
    """Remove ``CUBLAS_WORKSPACE_CONFIG`` if MONAI set it after textseg was imported; return whether it did.

    It takes effect if no cuBLAS call ran yet in the process (PyTorch reads the variable when it creates its first
    cuBLAS workspace).
    """
    if USER_VALUE is None and os.environ.get(VARIABLE) == MONAI_DEFAULT:
        del os.environ[VARIABLE]
        return True
    return False
