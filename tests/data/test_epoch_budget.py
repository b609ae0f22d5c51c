"""The step budget of an epoch (``TextSegDataModule(epoch=...)``): explicit, and equal for a supervised baseline and
its semi-supervised partner."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from textseg import TextSegDataModule
from textseg.errors import DataError


def make_dm(root: Path, **kwargs: Any) -> TextSegDataModule:
    args: dict[str, Any] = {"labeled_ratio": 0.25, "image_size": 64, "batch_size": 2, "check": "fast"}
    args.update(kwargs)
    dm = TextSegDataModule(dataset="qata", root=str(root), **args)
    dm.setup("fit")
    return dm


def epoch_batches(dm: TextSegDataModule) -> list[dict[str, Any]]:
    return [batch for batch, _, _ in dm.train_dataloader()]


def test_supervised_partner_gets_the_semi_supervised_steps_and_labeled_batches(qata_root: Path) -> None:
    """16 train images at 25 %: 4 labeled + 12 unlabeled; batch 2 -> 6 steps by the unlabeled pass."""
    semi = make_dm(qata_root, use_unlabeled=True)
    sup = make_dm(qata_root, use_unlabeled=False, epoch="unlabeled_pass")
    assert semi.steps_per_epoch() == sup.steps_per_epoch() == 6
    semi_batches, sup_batches = epoch_batches(semi), epoch_batches(sup)
    assert len(semi_batches) == len(sup_batches) == 6
    assert all(set(b) == {"labeled"} for b in sup_batches)  # no unlabeled image is read
    assert [b["labeled"]["id"] for b in sup_batches] == [b["labeled"]["id"] for b in semi_batches]


def test_auto_keeps_the_old_epochs(qata_root: Path) -> None:
    assert make_dm(qata_root, use_unlabeled=True).steps_per_epoch() == 6  # one unlabeled pass
    sup = make_dm(qata_root, use_unlabeled=False)
    assert sup.steps_per_epoch() == 2 == len(epoch_batches(sup))  # one labeled pass, 4 images / batch 2
    ids = [i for b in epoch_batches(sup) for i in b["labeled"]["id"]]
    assert len(ids) == len(set(ids)) == 4  # a permutation: every labeled image once


def test_labeled_pass_with_unlabeled_data(qata_root: Path) -> None:
    dm = make_dm(qata_root, use_unlabeled=True, epoch="labeled_pass", unlabeled_batch_size=3)
    batches = epoch_batches(dm)
    assert dm.steps_per_epoch() == len(batches) == 2
    assert all(len(b["unlabeled"]["id"]) == 3 for b in batches)
    labeled = [i for b in batches for i in b["labeled"]["id"]]
    assert len(set(labeled)) == 4


def test_full_labels_unlabeled_pass_is_the_whole_train_split(qata_root: Path) -> None:
    """At ratio 1.0 the unlabeled split is the whole train split (Semi-MedRef), so both budgets are 16 / 2 = 8 steps."""
    full = {"labeled_ratio": 1.0, "use_unlabeled": False}
    assert make_dm(qata_root, epoch="unlabeled_pass", **full).steps_per_epoch() == 8
    assert make_dm(qata_root, epoch="labeled_pass", **full).steps_per_epoch() == 8


def test_bad_epoch_value_is_refused() -> None:
    with pytest.raises(DataError, match="epoch must be"):
        TextSegDataModule(epoch="steps")  # type: ignore[arg-type]
