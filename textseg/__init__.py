"""textseg: semi-supervised, text-guided medical image segmentation.

The public entry points are imported lazily so that ``import textseg`` stays cheap:

* :class:`textseg.TextSegDataModule` -- the shared LightningDataModule;
* :class:`textseg.SupervisedModule` -- the labeled-only baseline;
* :class:`textseg.SemiMedRefModule` -- Semi-MedRef (Li et al., 2026);
* :class:`textseg.TextMoEModule` -- TextMoE (Zeng et al., MICCAI 2025);
* :class:`textseg.Segmenter` -- a trained model: load, predict, save, share (:mod:`textseg.inference`).
"""

from __future__ import annotations

import importlib
from typing import Any

from textseg import cuda_env  # noqa: F401  (records CUBLAS_WORKSPACE_CONFIG before any module imports MONAI)

__version__ = "0.1.0"

_LAZY = {
    "TextSegDataModule": "textseg.data.datamodule",
    "TextSegModule": "textseg.methods.base",
    "SupervisedModule": "textseg.methods.supervised",
    "SemiMedRefModule": "textseg.methods.semimedref",
    "TextMoEModule": "textseg.methods.textmoe",
    "Segmenter": "textseg.inference.segmenter",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    """Import the public classes on first access."""
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'textseg' has no attribute {name!r}")
