"""Composite data (TextMoE): several datasets in one DataModule, per-dataset ratios, over-sampling, per-dataset
metrics, and the CT-like synthetic modality."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from textseg.data.datamodule import TextSegDataModule
from textseg.data.mosmed import MosMedDataPlus
from textseg.data.synthetic import ct_config, generate_sample, load_synthetic, region_boxes
from textseg.errors import DataError
from textseg.ops.metrics import GroupedSegMetrics
from textseg.ops.text import position_label


def composite(qata_root: Path, mosmed_root: Path, **kwargs: Any) -> TextSegDataModule:
    args: dict[str, Any] = {
        "dataset": ["qata", "mosmed"],
        "root": [str(qata_root), str(mosmed_root)],
        "labeled_ratio": 0.25,
        "image_size": 64,
        "batch_size": 4,
        "unlabeled_batch_size": 8,
        "eval_batch_size": 4,
        "zoom_prob": 0.0,
    }
    args.update(kwargs)
    return TextSegDataModule(**args)


def test_ratio_is_applied_per_dataset(qata_root: Path, mosmed_root: Path) -> None:
    dm = composite(qata_root, mosmed_root)
    dm.setup("fit")
    single = {}
    for name, root in (("qata", qata_root), ("mosmed", mosmed_root)):
        one = TextSegDataModule(dataset=name, root=str(root), labeled_ratio=0.25, image_size=64)  # type: ignore[arg-type]
        one.setup("fit")
        single[name] = [r.id for r in one.splits["labeled"]]
    got = Counter(zip(dm.sources["labeled"], [r.id for r in dm.splits["labeled"]], strict=True))
    expected = Counter([("qata", i) for i in single["qata"]] + [("mosmed", i) for i in single["mosmed"]])
    assert got == expected  # 16 + 16 train images: equal sizes, so no over-sampling
    assert len(dm.splits["val"]) == 8 and Counter(dm.sources["val"]) == {"qata": 4, "mosmed": 4}


def test_explicit_oversampling_repeats_train_records_only(qata_root: Path, mosmed_root: Path) -> None:
    dm = composite(qata_root, mosmed_root, oversample=[1, 3])
    dm.setup("fit")
    lab = Counter(dm.sources["labeled"])
    unl = Counter(dm.sources["unlabeled"])
    assert lab["mosmed"] == 3 * lab["qata"] and unl["mosmed"] == 3 * unl["qata"]
    assert Counter(dm.sources["val"]) == {"qata": 4, "mosmed": 4}


def test_auto_oversampling_balances_sizes(qata_root: Path, tmp_path: Path) -> None:
    small = load_synthetic(tmp_path / "ct", n_train=4, n_val=2, n_test=2, image_size=64, modality="ct")
    assert len(small.records("train")) == 4
    dm = TextSegDataModule(
        dataset=["qata", "synthetic_ct"],
        root=[str(qata_root), str(tmp_path / "ct")],
        labeled_ratio=0.5,
        image_size=64,
        dataset_options={"synthetic_ct": {"n_train": 4, "n_val": 2, "n_test": 2, "image_size": 64}},
    )
    dm.setup("fit")
    n = Counter(dm.sources["labeled"]) + Counter(dm.sources["unlabeled"])
    assert n == {"qata": 16, "synthetic_ct": 16}  # 4 CT slices x round(16 / 4)


def test_batches_carry_modality_and_dataset(qata_root: Path, mosmed_root: Path, tmp_path: Path) -> None:
    dm = composite(qata_root, mosmed_root)
    dm.setup("fit")
    seen: dict[str, set[int]] = {}
    for batch, _, _ in dm.train_dataloader():
        for part in ("labeled", "unlabeled"):
            for name, mod in zip(batch[part]["dataset"], batch[part]["modality"].tolist(), strict=True):
                seen.setdefault(name, set()).add(mod)
    assert seen == {"qata": {0}, "mosmed": {1}}
    val = next(iter(dm.val_dataloader()))
    assert set(val) >= {"image", "mask", "text", "modality", "dataset", "path"}


def test_split_json_names_every_dataset(qata_root: Path, mosmed_root: Path, tmp_path: Path) -> None:
    from lightning.pytorch import Trainer
    from lightning.pytorch.loggers import CSVLogger

    dm = composite(qata_root, mosmed_root)
    trainer = Trainer(logger=CSVLogger(tmp_path), accelerator="cpu", max_epochs=1)
    dm.trainer = trainer
    dm.setup("fit")
    split = json.loads((Path(trainer.log_dir or "") / "split.json").read_text())
    assert split["dataset"] == ["qata", "mosmed"] and split["oversample"] == [1, 1]
    assert all(i.split(":")[0] in ("qata", "mosmed") for i in split["labeled"] + split["val"])
    assert len(split["val"]) == 8


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"root": ["a"]}, "one root per dataset"),
        ({"dataset": ["qata", "qata"], "root": ["a", "b"]}, "no repeated dataset"),
        ({"oversample": [1]}, "oversample"),
        ({"oversample": [1, 0]}, "oversample"),
        ({"predict_images": "x"}, "predict_texts"),
        ({"dataset_options": {"mosmed": {"bare_side": "none"}, "synthetic_ct": {}}}, "'synthetic_ct', not a dataset"),
        ({"dataset_options": {"qata": {"bare_side": "none"}}}, "dataset 'qata' has no option 'bare_side'"),
    ],
)
def test_bad_composite_arguments(qata_root: Path, mosmed_root: Path, kwargs: dict[str, Any], named: str) -> None:
    with pytest.raises(DataError, match=named):
        composite(qata_root, mosmed_root, **kwargs)


def test_dataset_options_reach_their_own_dataset(qata_root: Path, mosmed_root: Path) -> None:
    dm = composite(qata_root, mosmed_root, dataset_options={"mosmed": {"bare_side": "none"}})
    dm.setup("fit")
    mosmed = dm.datas["mosmed"]
    assert isinstance(mosmed, MosMedDataPlus) and mosmed.bare_side == "none"
    assert dm.hparams["dataset_options"] == {"mosmed": {"bare_side": "none"}}  # saved with the hparams
    default = composite(qata_root, mosmed_root)
    default.setup("fit")
    assert getattr(default.datas["mosmed"], "bare_side", None) == "all"


def test_grouped_metrics_split_by_dataset() -> None:
    metrics = GroupedSegMetrics("val_", ["qata", "mosmed"])
    target = torch.zeros(4, 1, 2, 2, dtype=torch.long)
    target[:, :, 0, 0] = 1
    preds = target.clone()
    preds[2:] = 0  # the two mosmed images are missed entirely
    metrics.update(preds, target, ["qata", "qata", "mosmed", "mosmed"])
    values = {k: float(v) for k, v in metrics.compute().items()}
    assert values["val_dice_qata"] == 1.0 and values["val_dice_mosmed"] == 0.0
    assert values["val_dice"] == pytest.approx(2 * 2 / (2 * 2 + 2))  # pooled over all: TP 2, FN 2
    with pytest.raises(ValueError, match="dataset"):
        metrics.update(preds, target, None)
    metrics.reset()
    metrics.update(preds[:2], target[:2], ["qata", "qata"])  # a split without MosMed images: evaluated nowhere
    values = {k: float(v) for k, v in metrics.compute().items()}
    assert "val_dice_mosmed" not in values and values["val_dice_qata"] == 1.0 == values["val_dice"]
    assert GroupedSegMetrics("val_").groups is not None


def test_ct_samples_are_ct_like_and_text_dependent() -> None:
    cfg = ct_config()
    sample = generate_sample(0, "train", 3, 128, cfg)
    xray = generate_sample(0, "train", 3, 128)
    boxes = region_boxes(128, cfg)
    named = [i for i, v in enumerate(sample.position) if v]
    rows, cols = np.nonzero(sample.mask)
    for r, c in zip(rows, cols, strict=True):  # every lesion pixel lies in a region the text names
        assert any(b[0] <= r < b[1] and b[2] <= c < b[3] for b in (boxes[i] for i in named))
    assert sample.distractor_mask.sum() > 0 and not (sample.distractor_mask & sample.mask).any()
    assert tuple(position_label(sample.caption)) == sample.position
    assert sample.image[:8].mean() < 20 and xray.image.mean() > sample.image.mean()  # black air, darker overall


def test_ct_tree_is_read_as_mosmed(tmp_path: Path) -> None:
    data = load_synthetic(tmp_path / "ct", n_train=6, n_val=2, n_test=2, image_size=64, modality="ct")
    assert data.name == "synthetic_ct" and data.layout == "kaggle" and data.modality == 1
    rec = data.records("train")[0]
    assert np.asarray(Image.open(rec.image)).shape == (64, 64)
    assert rec.position == tuple(position_label(rec.text))
    with pytest.raises(DataError, match="modality"):
        load_synthetic(tmp_path / "ct", modality="xray")
