"""Workflow tooling: W&B run naming and offline default, MaskWriter (fabricated outputs and `textseg predict` on the
real QaTa examples), sweep files, and `textseg grid` (in-process) feeding `textseg report`."""

from __future__ import annotations

import csv
import importlib.metadata
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from fakedata import write_png
from PIL import Image
from tinyrun import tiny_args

from textseg.cli.grid import build_runs, expand_grid, load_sweep, parse_overrides, rerun_args
from textseg.cli.main import main
from textseg.data.datamodule import TextSegDataModule
from textseg.engine.overlays import render_overlay
from textseg.engine.predictions import MaskWriter
from textseg.engine.wandb import TextSegWandbLogger, run_facts, wandb_offline_default
from textseg.errors import DataError
from textseg.methods import SupervisedModule
from textseg.ops.metrics import per_image_scores

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs"
TINY = tiny_args()


# ------------------------------------------------------------------------------------------------------- W&B


def test_wandb_offline_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for var in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    netrc = tmp_path / "netrc"
    monkeypatch.setenv("NETRC", str(netrc))
    assert wandb_offline_default() is True  # no key anywhere
    netrc.write_text("machine api.wandb.ai\n  login user\n  password abc123\n")
    netrc.chmod(0o600)
    assert wandb_offline_default() is False  # `wandb login` credentials
    netrc.write_text("machine example.org\n  login user\n  password abc123\n")
    assert wandb_offline_default() is True
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    assert wandb_offline_default() is False
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert wandb_offline_default() is True
    assert wandb_offline_default(False) is False and wandb_offline_default(True) is True
    with pytest.raises(ValueError, match="log_model=True needs an online W&B run"):
        TextSegWandbLogger(log_model=True)


def test_run_names_from_hparams(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_DIR", raising=False)
    model = SupervisedModule(backbone="guidedecoder", vision_encoder="tiny", text_encoder="tiny", loss="dice_only")
    data = TextSegDataModule(dataset="qata", root="unused", labeled_ratio=0.02, seed=43)
    facts = run_facts(model, data)
    assert facts.group == "Supervised-guidedecoder-qata-2%-loss=dice_only"
    assert facts.name == "Supervised-guidedecoder-qata-2%-loss=dice_only-seed43"
    assert facts.tags[:5] == ["Supervised", "guidedecoder", "qata", "ratio=2%", "seed=43"]
    assert "loss=dice_only" in facts.tags and "eval_teacher=False" in facts.tags
    default = run_facts(SupervisedModule(vision_encoder="tiny", text_encoder="tiny"), data)
    assert default.group == "Supervised-guidedecoder-qata-2%" and default.changed == {}
    monkeypatch.setenv("WANDB_PROJECT", "from-env")
    assert TextSegWandbLogger()._wandb_init["project"] == "from-env"
    monkeypatch.delenv("WANDB_PROJECT")
    assert TextSegWandbLogger()._wandb_init["project"] == "textseg"
    logger = TextSegWandbLogger(project="p", tags=["mine"])
    assert logger.offline and logger._wandb_init["mode"] == "offline"
    logger.describe(model, data, str(tmp_path / "run"))
    init = logger._wandb_init
    assert init["group"] == facts.group and init["name"] == facts.name and init["tags"][0] == "mine"
    assert init["dir"] == str(tmp_path / "run") and init["config"]["ablation"] == {"loss": "dice_only"}
    named = TextSegWandbLogger(group="g", name="n", save_dir=str(tmp_path / "w"))
    named.describe(model, data, str(tmp_path / "run"))
    assert (named._wandb_init["group"], named._wandb_init["name"], named.save_dir) == ("g", "n", str(tmp_path / "w"))


def test_per_image_scores_match_lvit() -> None:
    preds = torch.tensor([[[1, 1], [0, 0]], [[0, 0], [0, 0]], [[1, 0], [0, 0]]])
    target = torch.tensor([[[1, 0], [1, 0]], [[0, 0], [0, 0]], [[1, 0], [0, 0]]])
    dice, iou = per_image_scores(preds, target)
    assert dice.tolist() == pytest.approx([2 / (4 + 1e-5), 0.0, 2 / (2 + 1e-5)])
    assert iou.tolist() == pytest.approx([1 / 3, 0.0, 1.0])


# ----------------------------------------------------------------------------------------------- mask writer


def test_mask_writer_fabricated_outputs(tmp_path: Path) -> None:
    a = write_png(tmp_path / "in" / "a.png", np.full((50, 80), 100, np.uint8))  # H=50, W=80
    b = write_png(tmp_path / "in" / "b.png", np.full((33, 47), 30, np.uint8))
    probs = torch.zeros(2, 1, 16, 16)
    probs[0] = 0.7
    probs[1, :, :, :8] = 1.0  # left half
    writer = MaskWriter(tmp_path / "out", write_probs=True, write_overlays=True, threshold=0.5)
    out = {"id": ["a", "b"], "text": ["left lung", "a much longer caption " * 6], "path": [str(a), str(b)]}
    written = writer.write_predictions({**out, "probs": probs})
    assert [p.name for p in written] == ["a.png", "b.png"]
    mask_a = np.asarray(Image.open(tmp_path / "out" / "masks" / "a.png"))
    assert mask_a.shape == (50, 80) and mask_a.dtype == np.uint8 and (mask_a == 255).all()
    prob_a = np.asarray(Image.open(tmp_path / "out" / "probs" / "a.png"))
    assert prob_a.shape == (50, 80) and (prob_a == round(0.7 * 255)).all()
    mask_b = np.asarray(Image.open(tmp_path / "out" / "masks" / "b.png"))
    assert mask_b.shape == (33, 47) and set(np.unique(mask_b)) == {0, 255}
    assert (mask_b[:, :22] == 255).all() and (mask_b[:, 25:] == 0).all()  # bilinear edge near the middle
    with Image.open(tmp_path / "out" / "overlays" / "b.png") as overlay:
        assert overlay.mode == "RGB" and overlay.width == 47 and overlay.height > 33 + 3 * 8  # wrapped caption
        pixels = np.asarray(overlay)
    assert pixels[0, 0, 0] > pixels[0, 0, 2] and pixels[0, -1, 0] == pixels[0, -1, 2] == 30  # tinted left only
    index = writer.write_index()
    rows = list(csv.DictReader(open(index)))
    assert [r["id"] for r in rows] == ["a", "b"] and float(rows[0]["lesion_fraction"]) == 1.0
    with pytest.raises(ValueError, match=r"probabilities in \[0, 1\]"):
        writer.write_predictions({**out, "probs": probs * 2})
    with pytest.raises(ValueError, match=r"probs must be \[B=2, 1, h, w\]"):
        writer.write_predictions({**out, "probs": probs[:, 0]})
    with pytest.raises(DataError, match="not a plain file name"):
        writer.write_predictions({**out, "id": ["../x", "b"], "probs": probs})
    with pytest.raises(DataError, match="image file not found"):
        writer.write_predictions({**out, "path": [str(tmp_path / "gone.png"), str(b)], "probs": probs})
    overlay = render_overlay(np.zeros((4, 6), np.uint8), np.ones((4, 6), bool), "", color=(200, 0, 0), alpha=0.5)
    assert np.asarray(overlay)[0, 0].tolist() == [100, 0, 0]


def _example_folder(tmp_path: Path, examples: Path) -> tuple[Path, Path, dict[str, tuple[int, int]]]:
    """The 7 real QaTa example images in one folder, with a CSV naming their masks (GuideDecoder style)."""
    folder = tmp_path / "images"
    folder.mkdir()
    sizes = {}
    for image in sorted(examples.glob("*/images/*.png")):
        shutil.copyfile(image, folder / image.name)
        with Image.open(image) as im:
            sizes[image.stem] = (im.height, im.width)
    annotation = json.loads((examples / "examples_annotation.json").read_text())
    rows = [(e["image_path"], e["caption"]) for split in annotation.values() for e in split]
    texts = tmp_path / "texts.csv"
    with texts.open("w", newline="") as handle:
        csv.writer(handle).writerows([("Image", "Description"), *rows])
    return folder, texts, sizes


def _predict_args(tmp_path: Path, folder: Path, texts: Path) -> list[str]:
    """``textseg predict`` of an untrained tiny supervised model on an image folder with its texts."""
    return [
        "predict",
        "--model=textseg.SupervisedModule",
        "--model.init_args.vision_encoder=tiny",
        "--model.init_args.text_encoder=tiny",
        "--data.dataset=qata",
        f"--data.root={tmp_path / 'unused'}",
        f"--data.predict_images={folder}",
        f"--data.predict_texts={texts}",
        "--data.image_size=64",
        "--data.eval_batch_size=4",
        "--trainer.accelerator=cpu",
        "--trainer.enable_progress_bar=false",
    ]


def test_predict_real_examples_tiny_model(tmp_path: Path, qata_files: Path) -> None:
    folder, texts, sizes = _example_folder(tmp_path, qata_files / "examples")
    assert len(sizes) == 7
    out = tmp_path / "pred"
    main([
        *_predict_args(tmp_path, folder, texts),
        "--trainer.logger=false",
        f"--trainer.default_root_dir={tmp_path}",
        "--trainer.callbacks+=textseg.engine.predictions.MaskWriter",
        f"--trainer.callbacks.output_dir={out}",
        "--trainer.callbacks.write_probs=true",
    ])  # fmt: skip
    masks = sorted((out / "masks").glob("*.png"))
    assert sorted(p.stem for p in masks) == sorted(sizes)
    for path in masks:
        mask = np.asarray(Image.open(path))
        assert mask.shape == sizes[path.stem] and set(np.unique(mask)) <= {0, 255}
        prob = np.asarray(Image.open(out / "probs" / path.name))
        assert prob.shape == mask.shape
        assert ((prob >= 128) == (mask == 255)).mean() > 0.999  # mask = probability >= 0.5
        with Image.open(out / "overlays" / path.name) as overlay:
            assert overlay.width == mask.shape[1] and overlay.height > mask.shape[0]
    rows = list(csv.DictReader(open(out / "predictions.csv")))
    assert len(rows) == 7 and all(r["text"] for r in rows)


def test_predict_writes_by_default(tmp_path: Path, qata_files: Path, caplog: pytest.LogCaptureFixture) -> None:
    """No writer in the config: masks, probability maps and overlays land in <run_dir>/predictions, at image size."""
    folder, texts, sizes = _example_folder(tmp_path, qata_files / "examples")
    run_dir = tmp_path / "run"
    main([*_predict_args(tmp_path, folder, texts), f"--run_dir={run_dir}"])
    out = run_dir / "predictions"
    masks = sorted((out / "masks").glob("*.png"))
    assert sorted(p.stem for p in masks) == sorted(sizes)
    for path in masks:
        assert np.asarray(Image.open(path)).shape == sizes[path.stem]
        assert (out / "probs" / path.name).is_file() and (out / "overlays" / path.name).is_file()
    assert len(list(csv.DictReader(open(out / "predictions.csv")))) == 7
    assert f"predictions written to {out}" in caplog.text


# ------------------------------------------------------------------------------------------------------ sweeps

SWEEPS = {
    "semimedref_qata.yaml": 12,
    "semimedref_mosmed.yaml": 12,
    "semimedref_components.yaml": 96,
    "textmoe_composite.yaml": 48,
}


@pytest.mark.parametrize(
    "path", sorted((REPO / "experiments").rglob("*sweep*.yaml")), ids=lambda p: p.relative_to(REPO).as_posix()
)
def test_experiment_sweeps_parse(path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Every experiment sweep expands, names configs that exist, and its first run parses in the CLI."""
    sweep = load_sweep(path)
    runs = build_runs(sweep, tmp_path, keep_wandb=False, source=path.name)
    assert len(runs) == len(expand_grid(sweep)) > 1 and len({r.run_dir for r in runs}) == len(runs)
    command = runs[0].command
    configs = [command[i + 1] for i, t in enumerate(command) if t == "--config"]
    assert configs and all((REPO / c).is_file() for c in configs)
    args = [str(REPO / a) if a in configs else a for a in command[3:]]
    with pytest.raises(SystemExit) as err:
        main([*args, "--print_config"])
    assert err.value.code == 0
    assert yaml.safe_load(capsys.readouterr().out)["seed"] == runs[0].params["seed"]


def test_sweep_files_expand_and_parse(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert sorted(p.name for p in (CONFIGS / "sweeps").glob("*.yaml")) == sorted(SWEEPS)
    for name, count in SWEEPS.items():
        sweep = load_sweep(CONFIGS / "sweeps" / name)
        assert sweep["method"] == "grid" and sweep["program"] == "textseg" and "${args}" in sweep["command"]
        runs = build_runs(sweep, tmp_path / name, source=name)
        assert len(runs) == count == len(expand_grid(sweep)) and len({r.run_dir for r in runs}) == count
        first = runs[0]
        assert first.command[1:4] == ["-m", "textseg", "fit"]
        assert f"--run_dir={first.run_dir}" in first.command and "--config" in first.command
        configs = [first.command[i + 1] for i, t in enumerate(first.command) if t == "--config"]
        assert all((REPO / c).is_file() for c in configs) and configs[-1] == "configs/logger/wandb.yaml"
        dry = build_runs(sweep, tmp_path / name, keep_wandb=False, source=name)[0].command
        assert "configs/logger/wandb.yaml" not in dry and len(dry) == len(first.command) - 2
        args = [a if not a.startswith("configs/") else str(REPO / a) for a in first.command[3:]]
        with pytest.raises(SystemExit) as err:  # every parameter is a valid argument of the CLI
            main([*args, "--print_config"])
        assert err.value.code == 0
        printed = yaml.safe_load(capsys.readouterr().out)
        assert printed["seed"] == first.params["seed"]
        assert printed["data"]["labeled_ratio"] == first.params["data.labeled_ratio"]
    textmoe = build_runs(load_sweep(CONFIGS / "sweeps" / "textmoe_composite.yaml"), tmp_path)
    ratios = {r.params["data.labeled_ratio"] for r in textmoe}
    assert ratios == {0.25, 0.5}


def test_grid_in_process_then_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sweep = {
        "name": "tiny",
        "program": "textseg",
        "method": "grid",
        "parameters": {"seed": {"values": [1, 2]}, "model.init_args.loss": {"value": "dice_ce"}},
        "command": [
            "${program}", "fit",
            "--config", str(CONFIGS / "demo_supervised.yaml"),
            "--config", str(CONFIGS / "logger" / "wandb.yaml"),
            *TINY,
            "--trainer.limit_val_batches=1",
            "--test_after_fit=true",
            "${args}",
        ],
    }  # fmt: skip
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(sweep, sort_keys=False))
    out = tmp_path / "grid"
    root = tmp_path / "synthetic"
    main(["grid", str(path), "--in-process", "--no-wandb", "--out", str(out), "--data.root", str(root)])
    printed = capsys.readouterr().out
    assert "2 combinations, 2 started (2 ok, 0 failed)" in printed
    for seed in (1, 2):
        run_dir = out / f"seed={seed}_loss=dice_ce"
        config = yaml.safe_load((run_dir / "config.yaml").read_text())
        assert config["data"]["root"] == str(root)  # the override reached every run
        assert config["seed_everything"] == seed and config["data"]["seed"] == seed and config["seed"] == seed
        assert json.loads((run_dir / "split.json").read_text())["seed"] == seed
        assert (run_dir / "checkpoints" / "best.ckpt").is_file() and (run_dir / "test_metrics.json").is_file()
        card = json.loads((run_dir / "run_card.json").read_text())
        assert card["run_dir"] == str(run_dir) and card["split"]["file"] == "split.json"
        assert card["model"]["class"] == "textseg.methods.supervised.SupervisedModule"
        assert card["data"]["hparams"]["seed"] == seed and card["model"]["hparams"]["loss"] == "dice_ce"
        assert set(card["versions"]) == {"python", "torch", "lightning", "monai", "transformers", "torchmetrics",
                                         "textseg"}  # fmt: skip
        assert card["versions"]["torch"] == importlib.metadata.version("torch")
        assert "pooled" in card["metrics"]["dice"] and "1e-05" in card["metrics"]["dice_per_image"]
        assert card["command"]["argv"][:2] == ["textseg", "fit"] and f"--seed={seed}" in card["command"]["argv"]
        assert card["git"] is None or len(card["git"]["commit"]) == 40
        # 8 train images at 25 %: 2 labeled + 6 unlabeled; the supervised demo's epoch is the unlabeled pass (6 / 2 =
        # 3 steps), capped at 2 by --trainer.limit_train_batches
        budget = {"epoch": "unlabeled_pass", "steps_per_epoch": 2, "max_epochs": 1, "accumulate_grad_batches": 1}
        assert card["budget"] == {**budget, "optimizer_steps": 2}
        assert card["train_seconds"] > 0 and card["hardware"]["cpu_count"] >= 1
        model_card = (run_dir / "model_card.md").read_text()  # written by the test after fit
        dice = json.loads((run_dir / "test_metrics.json").read_text())["metrics"]["test_dice"]
        assert f"| `test_dice` | {dice:.4f} | pooled Dice" in model_card and card["split"]["sha256"] in model_card
    assert not list(out.rglob("wandb"))  # --no-wandb dropped the logger config
    statuses = json.loads((out / "grid.json").read_text())
    assert [s["status"] for s in statuses] == ["ok", "ok"]
    main(["grid", str(path), "--in-process", "--no-wandb", "--out", str(out)])
    assert "0 started (0 ok, 0 failed), 2 already finished" in capsys.readouterr().out
    main(["report", str(out), "--out", str(tmp_path / "report")])
    results = list(csv.DictReader(open(tmp_path / "report" / "results.csv")))
    assert len(results) == 1 and results[0]["n_seeds"] == "2" and results[0]["seeds"] == "1;2"
    assert results[0]["method"] == "Supervised" and results[0]["labeled_ratio"] == "0.25"


def test_grid_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "random.yaml"
    bad.write_text(yaml.safe_dump({"method": "random", "parameters": {"lr": {"min": 0.1, "max": 1.0}}}))
    with pytest.raises(SystemExit):
        main(["grid", str(bad)])
    assert "expands only 'method: grid' sweeps, not 'random'" in capsys.readouterr().out
    with pytest.raises(DataError, match="parameter 'lr' needs 'values'"):
        expand_grid({"parameters": {"lr": {"min": 0.1, "max": 1.0}}})
    missing = tmp_path / "missing.yaml"
    missing.write_text(
        yaml.safe_dump(
            {"parameters": {"seed": {"values": [1]}}, "command": ["${program}", "fit", "--config", "nope.yaml"]}
        )
    )
    with pytest.raises(SystemExit):
        main(["grid", str(missing), "--out", str(tmp_path / "o")])
    assert "config files named by the sweep command not found: nope.yaml" in capsys.readouterr().out
    assert parse_overrides(["--data.root", "/d", "--trainer.devices=4"], ["seed"]) == [
        "--data.root=/d",
        "--trainer.devices=4",
    ]
    for tokens, message in (
        (["--seed", "3"], "--seed is a parameter of the sweep"),
        (["--run_dir", "x"], "--run_dir cannot be overridden"),
        (["--data.root"], "override --data.root has no value"),
        (["stray"], "unexpected argument 'stray'"),
    ):
        with pytest.raises(DataError, match=message):
            parse_overrides(tokens, ["seed"])


def test_cli_loggers_and_run_card(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """wandb.yaml on a config without a logger gets a CSV logger first; --run_dir is exact; a run card is added."""
    from lightning.pytorch.loggers import CSVLogger

    from textseg.cli.lightning import TextSegCLI
    from textseg.engine.overlays import WandbOverlayCallback
    from textseg.engine.runcard import RunCardCallback

    monkeypatch.setenv("WANDB_MODE", "offline")
    base = [
        "--model=textseg.SupervisedModule",
        "--model.init_args.vision_encoder=tiny",
        "--model.init_args.text_encoder=tiny",
        "--config", str(CONFIGS / "logger" / "wandb.yaml"),
        f"--trainer.default_root_dir={tmp_path}",
    ]  # fmt: skip
    cli = TextSegCLI(SupervisedModule, TextSegDataModule, subclass_mode_model=True, args=base, run=False)
    csv_logger, wandb_logger = cli.trainer.loggers
    assert isinstance(csv_logger, CSVLogger) and isinstance(wandb_logger, TextSegWandbLogger)
    assert Path(cli.trainer.log_dir) == tmp_path / "lightning_logs" / "version_0"
    kinds = [type(cb) for cb in cli.trainer.callbacks]
    assert kinds.count(RunCardCallback) == 1 and WandbOverlayCallback in kinds
    cli = TextSegCLI(
        SupervisedModule,
        TextSegDataModule,
        subclass_mode_model=True,
        args=[*base, f"--run_dir={tmp_path / 'exact'}", "--seed=5"],
        run=False,
    )
    assert Path(cli.trainer.log_dir) == tmp_path / "exact" and cli.datamodule.hparams.seed == 5


def test_grid_reruns_into_used_folders(tmp_path: Path) -> None:
    """A rerun combination resumes from its last.ckpt, or replaces a finished run (textseg fit refuses used folders)."""
    fresh = tmp_path / "fresh"
    assert rerun_args(fresh) == []
    interrupted = tmp_path / "interrupted"
    (interrupted / "checkpoints").mkdir(parents=True)
    (interrupted / "config.yaml").write_text("{}")
    assert rerun_args(interrupted) == ["--run_dir_exists=overwrite"]  # no checkpoint to resume from
    (interrupted / "checkpoints" / "last.ckpt").write_bytes(b"")
    assert rerun_args(interrupted) == ["--ckpt_path=last"]
    (interrupted / "test_metrics.json").write_text("{}")  # finished: only --force reruns it
    assert rerun_args(interrupted) == ["--run_dir_exists=overwrite"]
