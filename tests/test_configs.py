"""Every shipped config: generated from configs/_generate.py, parsed by the CLI, and run (fit + test) on tiny data."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import yaml

from textseg.cli import main

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
ALL = sorted(p.relative_to(CONFIGS).as_posix() for p in CONFIGS.rglob("*.yaml"))


def _generator():
    spec = importlib.util.spec_from_file_location("generate", CONFIGS / "_generate.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_configs_match_generator() -> None:
    gen = _generator()
    expected = gen.all_configs()
    assert sorted(expected) == ALL
    for rel, cfg in expected.items():
        assert (CONFIGS / rel).read_text() == gen.render(cfg), f"{rel} is stale: run python configs/_generate.py"


def test_paper_hyperparameters() -> None:
    cfg = yaml.safe_load((CONFIGS / "semimedref_mmiunet.yaml").read_text())
    args = cfg["model"]["init_args"]
    assert cfg["data"]["labeled_ratio"] == 0.02 and cfg["data"]["dataset"] == "qata"
    assert cfg["data"]["batch_size"] == 32 and cfg["data"]["use_unlabeled"] is True
    assert args["backbone"] == "mmiunet" and args["lr"] == 3e-4
    assert (args["itcl_temperature"], args["lambda_itcl_sup"], args["lambda_itcl_unsup"]) == (0.07, 0.02, 0.1)
    assert (args["posaug_rho"], args["mix_block"], args["confidence"], args["burn_in_epochs"]) == (
        0.5,
        16,
        0.55,
        5,
    )
    full = yaml.safe_load((CONFIGS / "semimedref/mmiunet_qata_100.yaml").read_text())
    assert full["model"]["init_args"]["lambda_u"] == 0 and full["data"]["use_unlabeled"] is False


@pytest.mark.parametrize("rel", ALL)
def test_config_fit_and_test(rel: str, qata_root: Path, mosmed_root: Path, tmp_path: Path) -> None:
    cfg = yaml.safe_load((CONFIGS / rel).read_text())
    dataset = cfg["data"]["dataset"]
    root = {"qata": qata_root, "mosmed": mosmed_root, "synthetic": tmp_path / "synthetic"}[dataset]
    semi = cfg["model"]["class_path"].endswith("SemiMedRefModule")
    args = [
        "fit",
        "--config", str(CONFIGS / rel),
        "--data.root", str(root),
        "--data.image_size", "64",
        "--data.batch_size", "2",
        "--data.eval_batch_size", "4",
        "--data.num_workers", "0",
        "--data.synthetic_train", "12",
        "--data.synthetic_val", "4",
        "--data.synthetic_test", "4",
        "--data.synthetic_image_size", "64",
        "--model.init_args.vision_encoder", "tiny",
        "--model.init_args.text_encoder", "tiny",
        "--model.init_args.vision_checkpoint", "null",
        "--model.init_args.project_dim", "16",
        "--trainer.accelerator", "cpu",
        "--trainer.min_epochs", "null",
        "--trainer.max_epochs", "1",
        "--trainer.limit_train_batches", "2",
        "--trainer.limit_val_batches", "1",
        "--trainer.limit_test_batches", "1",
        "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"),
        "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false",
        "--test_after_fit", "true",
    ]  # fmt: skip
    if semi:
        args += ["--model.init_args.burn_in_epochs", "0", "--model.init_args.lambda_u_ramp_epochs", "0"]
        args += ["--model.init_args.mix_prob", "1.0"]
    main(args)
    metrics_files = list((tmp_path / "runs").rglob("test_metrics.json"))
    assert len(metrics_files) == 1
    result = json.loads(metrics_files[0].read_text())
    assert set(result["metrics"]) >= {"test_dice", "test_iou", "test_dice_per_image", "test_iou_per_image"}
    assert all(0.0 <= v <= 1.0 for k, v in result["metrics"].items() if k != "test_loss")
    assert (metrics_files[0].parent / "split.json").exists()
