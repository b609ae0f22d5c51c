"""Shared fixtures: tiny fake dataset trees in the real on-disk layouts."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from fakedata import make_mosmed_tree, make_qata_tree

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


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
