"""Shared fixtures: tiny fake dataset trees in the real on-disk layouts, and the real annotation files.

The real annotation files (QaTa-COV19 csv/json, MosMedDataPlus csvs, 7 example image/mask pairs) live outside
the repository, in ``shared/data`` beside it. Tests reach them only through the ``shared_data`` fixture, which
skips the test when the folder is absent. Set ``TEXTSEG_SHARED_DATA`` to another folder to override the location
(``TEXTSEG_SHARED_DATA=/nonexistent`` checks that every test using the real files skips cleanly without them).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from fakedata import make_mosmed_tree, make_qata_tree

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TEXTSEG_HELP_CACHE", "0")  # `textseg fit --help` builds its help; never writes ~/.cache
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# The only place the tests build the path to shared/data: use the `shared_data` fixture, never this constant.
_SHARED_DATA = Path(os.environ.get("TEXTSEG_SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The folder of real annotation files, ``shared/data`` beside the repository (or ``$TEXTSEG_SHARED_DATA``).

    Holds ``QaTa-COV19/`` (train.csv, test.csv, annotation.json, derived/, examples/) and ``MosMedDataPlus/``
    (the LViT csvs and semimedref_format/). Tests that need the real files take this fixture, directly or through
    small fixtures of their own; they are skipped, not failed, when the folder does not exist.
    """
    if not _SHARED_DATA.is_dir():
        pytest.skip(f"{_SHARED_DATA}: the real annotation files (shared/data beside the repository) are not available")
    return _SHARED_DATA


@pytest.fixture(scope="session")
def qata_files(shared_data: Path) -> Path:
    """The real QaTa-COV19 annotation files (LViT CSVs, ``annotation.json``, the 7 example image/mask pairs)."""
    return shared_data / "QaTa-COV19"


@pytest.fixture(scope="session")
def mosmed_files(shared_data: Path) -> Path:
    """The real MosMedData+ text files (LViT semicolon CSVs)."""
    return shared_data / "MosMedDataPlus"


@pytest.fixture(scope="session")
def mosmed_plabel_files(mosmed_files: Path) -> Path:
    """Semi-MedRef's copies of the MosMed text files, with positional labels (``*.plabel.csv``)."""
    return mosmed_files / "semimedref_format"


@pytest.fixture(scope="session")
def qata_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A QaTa-COV19 tree in the SGSeg layout: 16 train, 4 val, 4 test images of 64 px."""
    root = tmp_path_factory.mktemp("qata")
    make_qata_tree(root, "sgseg", n_train=16, n_val=4, n_test=4, size=64, seed=1)
    return root


@pytest.fixture(scope="session")
def mosmed_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A MosMedData+ tree in the Kaggle layout with LViT semicolon CSVs: 16 / 4 / 4 slices of 64 px."""
    root = tmp_path_factory.mktemp("mosmed")
    make_mosmed_tree(root, "kaggle", n_train=16, n_val=4, n_test=4, size=64, seed=2)
    return root


@pytest.fixture(autouse=True, scope="session")
def _one_thread() -> Iterator[None]:
    """Tiny networks: one intra-op thread avoids oversubscription on the 2-core CI machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def membership(qata_files: Path) -> dict[float, list[str]]:
    """Semi-MedRef's published labeled QaTa subsets: label ratio -> the labeled image paths, in file order."""
    with (qata_files / "derived" / "semimedref_qata_train_split_membership.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    return {r: [row["image_path"] for row in rows if row[f"labeled_{r}"] == "1"] for r in (0.01, 0.02, 0.05, 0.15)}
