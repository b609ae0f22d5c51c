"""Dataset readers for text-guided segmentation: QaTa-COV19, MosMedData+ and a synthetic stand-in.

* :func:`load_dataset` -- build a dataset by name (``"qata"``, ``"mosmed"``, ``"synthetic"``);
* :class:`Record` / :class:`SegDataset` -- the records and the common interface (canonical splits,
  :meth:`SegDataset.labeled_split` reproducing Semi-MedRef's label-ratio subsets, :meth:`SegDataset.check`);
* :func:`read_image` / :func:`read_mask` -- PNG readers in display orientation;
* :func:`select_labeled` -- Semi-MedRef's label-ratio algorithm (``docs/data.md`` §6);
* :func:`make_synthetic` -- writes the synthetic dataset.

See ``docs/data.md`` for the layouts, text files, splits and conventions.
"""

from __future__ import annotations

from textseg.data.base import REGION_NAMES, SPLITS, Position, Record, SegDataset, Split
from textseg.data.io import read_image, read_mask, read_size, read_text_table
from textseg.data.mosmed import MosMedDataPlus
from textseg.data.qata import QaTaCOV19
from textseg.data.registry import DATASETS, load_dataset
from textseg.data.splits import select_labeled
from textseg.data.synthetic import SyntheticQaTa, load_synthetic, make_synthetic

__all__ = [
    "DATASETS",
    "REGION_NAMES",
    "SPLITS",
    "MosMedDataPlus",
    "Position",
    "QaTaCOV19",
    "Record",
    "SegDataset",
    "Split",
    "SyntheticQaTa",
    "load_dataset",
    "load_synthetic",
    "make_synthetic",
    "read_image",
    "read_mask",
    "read_size",
    "read_text_table",
    "select_labeled",
]
