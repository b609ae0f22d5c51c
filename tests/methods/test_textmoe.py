"""Tests of :class:`textseg.methods.TextMoEModule`: composite fit/test with per-dataset metrics, the logs of Eq. 9,
the teacher schedule, the two-stage option, the exchange of unlabeled images only, and the Table 2 switches."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import CSVLogger

from textseg.data.datamodule import TextSegDataModule
from textseg.methods import SupervisedModule, TextMoEModule

SMALL: dict[str, Any] = {"vision_encoder": "tiny", "text_encoder": "tiny"}
CAPTION = "Bilateral pulmonary infection, two infected areas, lower left lung and middle right lung."
OTHER = "Unilateral pulmonary infection, one infected area, upper right lung."


def composite(qata_root: Path, mosmed_root: Path, **kwargs: Any) -> TextSegDataModule:
    args: dict[str, Any] = {
        "dataset": ["qata", "mosmed"],
        "root": [str(qata_root), str(mosmed_root)],
        "labeled_ratio": 0.25,
        "image_size": 64,
        "batch_size": 2,
        "unlabeled_batch_size": 6,
        "eval_batch_size": 4,
        "check": "fast",
    }
    args.update(kwargs)
    return TextSegDataModule(**args)


def fit(module: Any, dm: TextSegDataModule, tmp_path: Path, epochs: int = 1, batches: int = 2) -> Trainer:
    trainer = Trainer(
        accelerator="cpu",
        max_epochs=epochs,
        limit_train_batches=batches,
        limit_val_batches=2,
        logger=CSVLogger(tmp_path),
        log_every_n_steps=1,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    trainer.fit(module, datamodule=dm)
    return trainer


def logged(trainer: Trainer) -> pd.DataFrame:
    return pd.read_csv(Path(trainer.log_dir or "") / "metrics.csv")


def test_fit_and_test_report_per_dataset_metrics(qata_root: Path, mosmed_root: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    module = TextMoEModule(**SMALL)
    dm = composite(qata_root, mosmed_root)
    trainer = fit(module, dm, tmp_path)
    trainer.test(module, datamodule=dm, verbose=False)
    record = json.loads((Path(trainer.log_dir or "") / "test_metrics.json").read_text())
    metrics = record["metrics"]
    for suffix in ("", "_qata", "_mosmed"):
        for name in ("dice", "iou", "dice_per_image", "iou_per_image"):
            assert 0.0 <= metrics[f"test_{name}{suffix}"] <= 1.0
    assert record["method"] == "TextMoEModule" and record["data"]["dataset"] == ["qata", "mosmed"]
    columns = set(logged(trainer).columns)
    assert {"val_dice", "val_dice_qata", "val_dice_mosmed"} <= columns
    expected = {
        "train_loss_sup",
        "train_loss_unsup",
        "train_loss_diff",
        "train_ema_momentum",
        "train_confident_ratio",
        "train_pseudo_fg_ratio",
        "train_exchange_ratio",
        "train_expert_similarity",
        "train_gate_xray_e0",
        "train_gate_xray_e1",
        "train_gate_ct_e0",
        "train_gate_ct_e1",
    }
    assert expected <= columns
    frame = logged(trainer)
    gates = frame[["train_gate_xray_e0", "train_gate_xray_e1"]].dropna()
    assert ((gates.sum(axis=1) - 1).abs() < 1e-5).all()


def test_one_modality_run_logs_one_gate_set(qata_root: Path, tmp_path: Path) -> None:
    """X-ray data only: the X-ray gate means are logged (finite), no all-NaN CT columns."""
    torch.manual_seed(0)
    dm = TextSegDataModule(
        dataset="qata", root=str(qata_root), labeled_ratio=0.25, image_size=64, batch_size=2, unlabeled_batch_size=2
    )
    frame = logged(fit(TextMoEModule(**SMALL), dm, tmp_path))
    assert not any(c.startswith("train_gate_ct") for c in frame.columns)
    gates = frame[["train_gate_xray_e0", "train_gate_xray_e1"]].dropna()
    assert len(gates) == 2 and ((gates.sum(axis=1) - 1).abs() < 1e-5).all()


def test_first_step_copies_student_into_teacher(qata_root: Path, mosmed_root: Path, tmp_path: Path) -> None:
    module = TextMoEModule(**SMALL)
    assert module.teacher is not None
    fit(module, composite(qata_root, mosmed_root), tmp_path, batches=1)
    student = dict(module.net.named_parameters())
    for name, value in module.teacher.module.named_parameters():  # momentum 0 at step 0 (methods.md §5.2)
        torch.testing.assert_close(value, student[name])
    assert module.momentum_now() == pytest.approx(0.5)  # step 1: min(1 - 1/2, 0.99)


def test_two_stage_schedule(qata_root: Path, mosmed_root: Path, tmp_path: Path) -> None:
    module = TextMoEModule(pretrain_epochs=1, **SMALL)
    trainer = fit(module, composite(qata_root, mosmed_root), tmp_path, epochs=2, batches=2)
    frame = logged(trainer)
    first, second = frame[frame.epoch == 0], frame[frame.epoch == 1]
    assert first["train_loss_unsup"].isna().all() and second["train_loss_unsup"].notna().any()
    assert int(module.stage_start_step) == 2  # the schedule restarted at the stage switch
    assert "stage_start_step" in module.state_dict()


def test_only_unlabeled_images_are_exchanged() -> None:
    module = TextMoEModule(exchange_beta=0.2, **SMALL)
    torch.manual_seed(0)
    image = torch.randn(6, 1, 32, 32)
    modality = torch.tensor([0, 1, 0, 1, 0, 1])
    out, ratio = module._exchange(image, modality, n_lab=2)
    torch.testing.assert_close(out[:2], image[:2])
    assert not torch.allclose(out[2:], image[2:])
    assert float(ratio) == 1.0  # every unlabeled sample has an unlabeled partner of the other modality
    same, ratio = module._exchange(image, torch.zeros(6, dtype=torch.long), n_lab=2)
    torch.testing.assert_close(same, image)
    assert float(ratio) == 0.0


@pytest.mark.parametrize(
    ("kwargs", "logs_absent"),
    [
        ({"use_teacher": False, "exchange_mode": "none", "lambda_diff": 0.0}, {"train_loss_unsup", "train_loss_diff"}),
        ({"expert": "plain", "exchange_mode": "none", "lambda_diff": 0.0}, {"train_exchange_ratio", "train_loss_diff"}),
        ({"exchange_mode": "legacy"}, set()),
        ({"exchange_mode": "complex", "diff_mode": "raw_cosine_width"}, set()),
    ],
)
def test_table2_switches(
    qata_root: Path, mosmed_root: Path, tmp_path: Path, kwargs: dict[str, Any], logs_absent: set[str]
) -> None:
    module = TextMoEModule(**kwargs, **SMALL)
    assert (module.teacher is None) == (not kwargs.get("use_teacher", True))
    trainer = fit(module, composite(qata_root, mosmed_root), tmp_path, batches=1)
    columns = set(logged(trainer).columns)
    assert "train_loss_sup" in columns and not logs_absent & columns


def test_text_and_modality_change_the_output() -> None:
    torch.manual_seed(0)
    module = TextMoEModule(**SMALL).eval()
    image = torch.randn(2, 1, 64, 64)
    xray = torch.zeros(2, dtype=torch.long)
    with torch.no_grad():
        base = module(image, [CAPTION, CAPTION], modality=xray)["logits"]
        other_text = module(image, [OTHER, OTHER], modality=xray)["logits"]
        other_modality = module(image, [CAPTION, CAPTION], modality=torch.ones(2, dtype=torch.long))["logits"]
    assert (base - other_text).abs().max() > 1e-4
    assert (base - other_modality).abs().max() > 1e-6


def test_wrong_backbone_is_rejected() -> None:
    with pytest.raises(ValueError, match="textmoe"):
        TextMoEModule(backbone="mmiunet", **SMALL)


def test_supervised_module_trains_the_textmoe_network(qata_root: Path, mosmed_root: Path, tmp_path: Path) -> None:
    module = SupervisedModule(backbone="textmoe", **SMALL)
    trainer = fit(module, composite(qata_root, mosmed_root, use_unlabeled=False), tmp_path, batches=1)
    assert "val_dice_mosmed" in set(logged(trainer).columns)
