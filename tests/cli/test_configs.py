"""Every shipped config: generated from configs/_generate.py, parsed by the CLI, and run (fit + test) on tiny data.

Shipped configs are the generated ones under ``configs/`` and the experiment configs under ``experiments/`` (sweep files
excluded; ``tests/cli/test_workflow.py`` covers those).
"""

from __future__ import annotations

import importlib.util
import json
import math
import time
from pathlib import Path

import pytest
import yaml
from tinyrun import tiny_args

from textseg.cli.main import main

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
#: Seconds to wait for W&B's service to finish writing an offline run's transaction log.
WANDB_FLUSH_TIMEOUT = 60.0
#: Composable add-ons (W&B logger) and W&B sweep files are not generated configs; tests/test_workflow.py covers them.
NOT_GENERATED = ("logger/", "sweeps/")
ALL = sorted(
    rel
    for rel in (p.relative_to(CONFIGS).as_posix() for p in CONFIGS.rglob("*.yaml"))
    if not rel.startswith(NOT_GENERATED)
)


EXPERIMENTS = CONFIGS.parent / "experiments"
#: Every config a user can pass to ``textseg fit --config``, relative to the repository root.
SHIPPED = [f"configs/{rel}" for rel in ALL] + sorted(
    p.relative_to(CONFIGS.parent).as_posix() for p in EXPERIMENTS.rglob("*.yaml") if "sweep" not in p.name
)


def test_experiments_are_shipped() -> None:
    assert any(rel.startswith("experiments/") for rel in SHIPPED)


def test_every_config_states_its_step_budget() -> None:
    """Every shipped config names its epoch budget, and a supervised config trains as many optimizer steps per epoch
    (same budget, batch sizes, dataset and ratio) and epochs as its Semi-MedRef partner of the same grid cell."""
    configs = {rel: yaml.safe_load((CONFIGS.parent / rel).read_text()) for rel in SHIPPED}
    assert all(cfg["data"].get("epoch") in ("labeled_pass", "unlabeled_pass") for cfg in configs.values())
    partners = 0
    for rel, cfg in configs.items():
        if not rel.startswith("configs/supervised/"):
            continue
        semi = configs.get(rel.replace("configs/supervised/", "configs/semimedref/"))
        if semi is None:
            continue
        partners += 1
        keys = ("dataset", "labeled_ratio", "epoch", "batch_size", "seed")
        assert {k: cfg["data"][k] for k in keys} == {k: semi["data"][k] for k in keys}, rel
        assert cfg["trainer"]["max_epochs"] == semi["trainer"]["max_epochs"], rel
        assert cfg["data"].get("unlabeled_batch_size") == semi["data"].get("unlabeled_batch_size"), rel
    assert partners == 20


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


@pytest.mark.parametrize("rel", SHIPPED)
def test_config_fit_and_test(rel: str, qata_root: Path, mosmed_root: Path, tmp_path: Path) -> None:
    cfg = yaml.safe_load((CONFIGS.parent / rel).read_text())
    roots = {
        "qata": qata_root,
        "mosmed": mosmed_root,
        "synthetic": tmp_path / "synthetic",
        "synthetic_ct": tmp_path / "synthetic_ct",
    }
    dataset = cfg["data"]["dataset"]
    root = str(roots[dataset]) if isinstance(dataset, str) else json.dumps([str(roots[d]) for d in dataset])
    # Small synthetic trees: generator options for the synthetic datasets of the run (only those: others refuse).
    names = [dataset] if isinstance(dataset, str) else dataset
    small = {"n_train": 12, "n_val": 4, "n_test": 4, "image_size": 64}
    options = {name: small for name in names if name.startswith("synthetic")}
    semi = cfg["model"]["class_path"].endswith("SemiMedRefModule")
    args = [
        "fit",
        "--config", str(CONFIGS.parent / rel),
        "--data.root", root,
        *tiny_args(dataset_options=json.dumps(options or None)),
        "--trainer.limit_val_batches", "1",
        "--trainer.limit_test_batches", "1",
        "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"),
        "--test_after_fit", "true",
    ]  # fmt: skip
    if semi:
        args += ["--model.init_args.burn_in_epochs", "0", "--model.init_args.lambda_u_ramp_epochs", "0"]
        args += ["--model.init_args.mix_prob", "1.0"]
    main(args)
    metrics_files = list((tmp_path / "runs").rglob("test_metrics.json"))
    assert len(metrics_files) == 1
    result = json.loads(metrics_files[0].read_text())
    overlaps = {"test_dice", "test_iou", "test_dice_per_image", "test_iou_per_image"}
    assert set(result["metrics"]) >= overlaps | {"test_hd95"}
    # Overlaps in [0, 1]; HD95 in pixels up to the 64x64 input's diagonal (docs/data.md §10.4).
    for key, value in result["metrics"].items():
        if key != "test_loss":
            assert 0.0 <= value <= (math.hypot(64, 64) if key.startswith("test_hd95") else 1.0), key
    assert (metrics_files[0].parent / "split.json").exists()


def test_wandb_logger_composes_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`--config demo --config logger/wandb.yaml` in offline mode: CSV run dir intact, W&B offline run complete."""
    from wandb_offline import read_offline_run

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_dir"))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    args = [
        "fit",
        "--config", str(CONFIGS / "demo_semimedref.yaml"),
        "--config", str(CONFIGS / "logger" / "wandb.yaml"),
        "--data.root", str(tmp_path / "synthetic"),
        "--data.image_size", "64",
        "--data.batch_size", "2",
        "--data.unlabeled_batch_size", "2",
        "--data.eval_batch_size", "4",
        "--data.dataset_options", "{synthetic: {n_train: 8, n_val: 4, n_test: 6, image_size: 64}}",
        "--model.init_args.text_encoder", "tiny",
        "--model.init_args.project_dim", "16",
        "--trainer.max_epochs", "2",
        "--trainer.limit_train_batches", "1",
        "--trainer.enable_progress_bar", "false",
        "--trainer.callbacks.num_images", "3",
        "--run_dir", str(tmp_path / "runs" / "demo"),
        "--seed", "7",
    ]  # fmt: skip
    main(args)
    import wandb

    wandb.finish()  # flush the offline run before reading it (Lightning leaves the run open until exit)
    run_dir = tmp_path / "runs" / "demo"
    metrics = json.loads((run_dir / "test_metrics.json").read_text())["metrics"]
    assert {"split.json", "run_card.json", "config.yaml", "metrics.csv"} <= {p.name for p in run_dir.iterdir()}
    (offline,) = (tmp_path / "wandb_dir" / "wandb").glob("offline-run-*")
    # W&B's service process writes the transaction log asynchronously; under a loaded CPU (the full suite on 2 cores)
    # its last records (the test metrics) can reach the file after finish() returned, so wait for them (bounded).
    deadline = time.monotonic() + WANDB_FLUSH_TIMEOUT
    while True:
        try:
            run = read_offline_run(offline)
            complete = bool(run.metric_values("test_dice"))
        except Exception:  # a record still being written
            if time.monotonic() > deadline:
                raise
            complete = False
        if complete or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert run.project == "textseg" and run.group == "SemiMedRef-mmiunet-synthetic-25%"
    assert run.name == "SemiMedRef-mmiunet-synthetic-25%-seed7"
    assert {"SemiMedRef", "mmiunet", "synthetic", "ratio=25%", "seed=7", "mix=tpatchmix"} <= set(run.tags)
    assert run.config["method"] == "SemiMedRef" and run.config["labeled_ratio"] == 0.25 and run.config["seed"] == 7
    assert run.config["lr"] == 0.002 and run.config["mix_block"] == 8  # model + data hparams from Lightning
    # Two validation epochs; once (under heavy CPU load, full suite) the offline file held only one of the two rows,
    # so require at least one value and that every value is a valid Dice (the CSV logger is the record of truth).
    val_dice = run.metric_values("val_dice")
    assert 1 <= len(val_dice) <= 2 and all(0.0 <= v <= 1.0 for v in val_dice)
    assert run.metric_values("test_dice") == [pytest.approx(metrics["test_dice"])]
    captions = run.metric_values("val/overlays/captions")
    assert len(captions) == 2 and len(captions[0]) == 3 and all(": " in c and "(Dice " in c for c in captions[0])
    assert len([p for p in run.media("images") if p.parent.name == "val"]) >= 3  # images, masks below mask/
    assert run.media("images") and any("mask" in p.parts for p in run.media("images"))
    (table_file,) = run.media("table")
    table = json.loads(table_file.read_text())
    assert table["columns"] == ["id", "dataset", "text", "dice", "iou"] and len(table["data"]) == 6
    mean_dice = sum(row[3] for row in table["data"]) / len(table["data"])
    assert mean_dice == pytest.approx(metrics["test_dice_per_image"], abs=1e-5)
