"""`textseg report` on fabricated test_metrics.json files with known values (mean ± std over seeds)."""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from PIL import Image

from textseg.cli.main import main
from textseg.cli.report import aggregate, load_run, write_report
from textseg.errors import DataError

METRIC_NAMES = ("dice", "iou", "dice_per_image", "iou_per_image", "hd95")


def write_run(
    folder: Path,
    method: str,
    hparams: dict[str, Any],
    values: tuple[float, ...],
    data: dict[str, Any] | None = None,
    split: dict[str, Any] | None = None,
    config: dict[str, Any] | None = None,
    postfix: str = "",
    extra: dict[str, float] | None = None,
) -> Path:
    """Write a ``test_metrics.json``; four ``values`` make a run tested before HD95 existed (no ``test_hd95``)."""
    folder.mkdir(parents=True)
    metrics = {f"test_{m}{postfix}": v for m, v in zip(METRIC_NAMES, values, strict=False)}
    metrics.update(extra or {})
    metrics["test_loss"] = 0.5
    record: dict[str, Any] = {"method": method, "hparams": {"_class_path": "x", **hparams}, "metrics": metrics}
    if data is not None:
        record["data"] = data
    (folder / "test_metrics.json").write_text(json.dumps(record))
    if split is not None:
        (folder / "split.json").write_text(json.dumps(split))
    if config is not None:
        (folder / "config.yaml").write_text(yaml.safe_dump(config))
    return folder / "test_metrics.json"


def semimedref(seed: int, mix: str = "tpatchmix") -> dict[str, Any]:
    return {"backbone": "mmiunet", "lr": 3e-4, "mix": mix, "aug_seed": seed, "text_aug": "posaug"}


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    root = tmp_path / "runs"
    qata = {"dataset": "qata", "root": "/data/q"}
    # one cell, three seeds, the three ways of finding dataset / ratio / seed
    write_run(
        root / "a42",
        "SemiMedRefModule",
        semimedref(42),
        (0.70, 0.50, 0.80, 0.60, 10.0),
        data={**qata, "labeled_ratio": 0.01, "seed": 42},
    )
    write_run(
        root / "a43",
        "SemiMedRefModule",
        semimedref(43),
        (0.72, 0.53, 0.80, 0.61, 12.0),
        split={"dataset": "qata", "labeled_ratio": 0.01, "seed": 43, "labeled": []},
    )
    write_run(
        root / "nested" / "a44",
        "SemiMedRefModule",
        semimedref(44),
        (0.74, 0.56, 0.83, 0.65, 17.0),
        config={"seed_everything": 44, "data": {**qata, "labeled_ratio": 0.01, "seed": 44}},
    )
    # the same cell without T-PatchMix (an ablation row) and a single-seed cell at 2 %
    write_run(
        root / "b42",
        "SemiMedRefModule",
        semimedref(42, "none"),
        (0.60, 0.40, 0.70, 0.50, 20.0),
        data={**qata, "labeled_ratio": 0.01, "seed": 42},
    )
    # b43 has no test_hd95, like a run tested before HD95 existed: its cell shows n/a, not b42's 20.0
    write_run(
        root / "b43",
        "SemiMedRefModule",
        semimedref(43, "none"),
        (0.64, 0.44, 0.74, 0.54),
        data={**qata, "labeled_ratio": 0.01, "seed": 43},
    )
    write_run(
        root / "c42",
        "SemiMedRefModule",
        semimedref(42),
        (0.75, 0.60, 0.85, 0.70, 8.5),
        data={**qata, "labeled_ratio": 0.02, "seed": 42},
    )
    # a repeated seed: the newer file wins
    sup = {"backbone": "guidedecoder", "lr": 3e-4}
    mosmed = {"dataset": "mosmed", "labeled_ratio": 0.05, "seed": 42}
    old = write_run(root / "s_old", "SupervisedModule", sup, (0.10, 0.10, 0.10, 0.10), data=mosmed)
    os.utime(old, (1_000_000, 1_000_000))
    write_run(root / "s_new", "SupervisedModule", sup, (0.50, 0.40, 0.55, 0.45, 30.0), data=mosmed)
    # composite training data: one cell per dataset from the per-dataset metrics
    composite = {"dataset": ["qata", "mosmed"], "labeled_ratio": 0.25, "seed": 42}
    write_run(
        root / "t42",
        "TextMoEModule",
        {"backbone": "textmoe", "expert": "tmoe"},
        (0.81, 0.71, 0.82, 0.72, 6.0),
        data=composite,
        postfix="_qata",
        extra={f"test_{m}_mosmed": v for m, v in zip(METRIC_NAMES, (0.71, 0.61, 0.62, 0.52, 9.25), strict=True)}
        | {f"test_{m}": 0.0 for m in METRIC_NAMES},
    )
    return root


def test_report_numbers(runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "report"
    main(["report", str(runs), "--out", str(out)])
    printed = capsys.readouterr().out
    rows = {
        (r["method"], r["variant"], r["dataset"], r["labeled_ratio"]): r
        for r in csv.DictReader(open(out / "results.csv"))
    }
    assert len(rows) == 6
    full = rows[("SemiMedRef", "mix=tpatchmix", "qata", "0.01")]
    assert full["n_seeds"] == "3" and full["seeds"] == "42;43;44"
    expected = {
        "dice": (0.72, 0.02),
        "iou": (0.53, 0.03),
        "dice_per_image": (0.81, math.sqrt(0.0003)),
        "iou_per_image": (0.62, math.sqrt(0.0007)),
        "hd95": (13.0, math.sqrt(13.0)),  # pixels, not a fraction: (10 + 12 + 17) / 3, deviations -3, -1, 4
    }
    for metric, (mean, std) in expected.items():
        assert float(full[f"{metric}_mean"]) == pytest.approx(mean, abs=1e-6)
        assert float(full[f"{metric}_std"]) == pytest.approx(std, abs=1e-6)
    ablation = rows[("SemiMedRef", "mix=none", "qata", "0.01")]
    assert ablation["n_seeds"] == "2" and float(ablation["dice_mean"]) == pytest.approx(0.62)
    assert float(ablation["dice_std"]) == pytest.approx(math.sqrt(0.0008), abs=1e-6)
    assert ablation["hd95_mean"] == "" and ablation["hd95_std"] == ""  # b43 predates HD95: no mean over fewer seeds
    single = rows[("SemiMedRef", "mix=tpatchmix", "qata", "0.02")]
    assert single["n_seeds"] == "1" and single["dice_std"] == ""
    assert float(single["hd95_mean"]) == pytest.approx(8.5) and single["hd95_std"] == ""
    sup = rows[("Supervised", "", "mosmed", "0.05")]
    assert sup["n_seeds"] == "1" and float(sup["dice_mean"]) == pytest.approx(0.50)
    assert float(rows[("TextMoE", "", "qata", "0.25")]["dice_mean"]) == pytest.approx(0.81)
    assert float(rows[("TextMoE", "", "mosmed", "0.25")]["iou_per_image_mean"]) == pytest.approx(0.52)
    assert rows[("TextMoE", "", "mosmed", "0.25")]["trained_on"] == "qata+mosmed"
    assert float(rows[("TextMoE", "", "mosmed", "0.25")]["hd95_mean"]) == pytest.approx(9.25)  # test_hd95_mosmed

    md = (out / "report.md").read_text()
    assert "| SemiMedRef (mmiunet) [mix=tpatchmix] | 72.00" in printed
    header = "| method | QaTa-COV19 1% | QaTa-COV19 2% | QaTa-COV19 25% | MosMedData+ 5% | MosMedData+ 25% |"
    assert md.count(header) == 3  # pooled, per-image, HD95
    assert "### HD95 (pixels at the evaluated resolution, lower is better), mean ± std over seeds" in md
    assert "| SemiMedRef (mmiunet) [mix=tpatchmix] | 13.00 ± 3.61 (n=3) | 8.50 (n=1) |  |  |  |" in md
    assert "| SemiMedRef (mmiunet) [mix=none] | n/a (n=2) |  |  |  |  |" in md
    assert "| TextMoE (textmoe) trained on qata+mosmed |  |  | 6.00 (n=1) |  | 9.25 (n=1) |" in md
    assert "| Supervised (guidedecoder) |  |  |  | 30.00 (n=1) |  |" in md
    assert "| SemiMedRef (mmiunet) [mix=tpatchmix] | 72.00 ± 2.00 / 53.00 ± 3.00 (n=3) | 75.00 / 60.00 (n=1) |" in md
    assert "81.00 ± 1.73 / 62.00 ± 2.65 (n=3)" in md
    assert "| TextMoE (textmoe) trained on qata+mosmed |  |  | 81.00 / 71.00 (n=1) |  | 71.00 / 61.00 (n=1) |" in md
    assert "seed 42 twice in Supervised (guidedecoder), mosmed 0.05" in md
    runs_csv = list(csv.DictReader(open(out / "runs.csv")))
    assert len(runs_csv) == 9  # 9 files, one superseded, the composite run on two datasets
    hd95 = {Path(r["run"]).name: r["hd95"] for r in runs_csv if r["dataset"] == "qata"}
    assert hd95["a44"] == "17.000000" and hd95["b43"] == "" and hd95["t42"] == "6.000000"
    with Image.open(out / "dice_vs_ratio.png") as im:
        assert im.format == "PNG" and im.width > 400 and im.height > 200


def test_report_rows_ignore_seed_only_differences(runs: Path) -> None:
    results = [r for f in sorted(runs.rglob("test_metrics.json")) for r in load_run(f)]
    cells, warnings = aggregate(results)
    rows = sorted({c.row for c in cells})
    assert rows == [
        "SemiMedRef (mmiunet) [mix=none]",
        "SemiMedRef (mmiunet) [mix=tpatchmix]",
        "Supervised (guidedecoder)",
        "TextMoE (textmoe) trained on qata+mosmed",
    ]
    assert len(warnings) == 1


def test_report_bad_inputs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as err:
        main(["report", str(tmp_path / "empty"), "--out", str(tmp_path / "o")])
    assert err.value.code == 1 and "no test_metrics.json" in capsys.readouterr().out
    bad = tmp_path / "bad" / "test_metrics.json"
    bad.parent.mkdir()
    bad.write_text("{not json")
    with pytest.raises(SystemExit):
        main(["report", str(bad.parent), "--out", str(tmp_path / "o")])
    assert f"{bad} is not readable JSON" in capsys.readouterr().out
    no_ratio = write_run(tmp_path / "nr", "SupervisedModule", {"backbone": "mmiunet"}, (0.1, 0.1, 0.1, 0.1))
    with pytest.raises(DataError, match="no labeled_ratio"):
        write_report([no_ratio.parent], tmp_path / "o")
    partial = tmp_path / "partial" / "test_metrics.json"
    partial.parent.mkdir()
    partial.write_text(json.dumps({"method": "X", "metrics": {"test_dice": 0.1}, "data": {"labeled_ratio": 0.1}}))
    with pytest.raises(DataError, match="metric 'test_iou' missing"):
        load_run(partial)


def test_report_of_runs_before_hd95(tmp_path: Path) -> None:
    """Runs tested before HD95 existed still report: no HD95 table, empty hd95 columns."""
    data = {"dataset": "qata", "labeled_ratio": 0.01, "seed": 42}
    write_run(tmp_path / "runs" / "old", "SupervisedModule", {"backbone": "mmiunet"}, (0.7, 0.5, 0.8, 0.6), data=data)
    text, _ = write_report([tmp_path / "runs"], tmp_path / "out")
    assert "Pooled Dice / IoU" in text and "Per-image Dice / IoU" in text
    assert "HD95" not in text
    (row,) = csv.DictReader(open(tmp_path / "out" / "results.csv"))
    assert float(row["dice_mean"]) == pytest.approx(0.7) and row["hd95_mean"] == ""


def test_report_never_merges_runs_with_other_settings(tmp_path: Path) -> None:
    """A 2-batch smoke run beside the real run (same seed, other trainer limits) gets its own row; both are kept."""
    root = tmp_path / "runs"
    data = {"dataset": "qata", "root": "/data/q", "labeled_ratio": 0.25, "seed": 42, "image_size": 224}
    real = {"trainer": {"max_epochs": 100, "limit_train_batches": None, "enable_progress_bar": True}}
    smoke = {"trainer": {"max_epochs": 1, "limit_train_batches": 2, "enable_progress_bar": False}}
    write_run(root / "real", "SemiMedRefModule", semimedref(42), (0.80, 0.7, 0.8, 0.7, 5.0), data=data, config=real)
    write_run(root / "smoke", "SemiMedRefModule", semimedref(42), (0.10, 0.1, 0.1, 0.1, 50.0), data=data, config=smoke)
    # another data setting (image size) splits rows too; loading settings (num_workers) do not
    write_run(
        root / "big",
        "SemiMedRefModule",
        semimedref(43),
        (0.85, 0.75, 0.85, 0.75, 4.0),
        data={**data, "seed": 43, "image_size": 448, "num_workers": 8},
        config=real,
    )
    cells, warnings = aggregate([r for f in sorted(root.rglob("test_metrics.json")) for r in load_run(f)])
    assert warnings == []  # nothing replaced: the same seed in two rows is two experiments
    by_variant = {c.variant: [r.metrics["dice"] for r in c.runs] for c in cells}
    assert by_variant == {
        "data.image_size=448, trainer.limit_train_batches=None, trainer.max_epochs=100": [0.85],
        "data.image_size=224, trainer.limit_train_batches=None, trainer.max_epochs=100": [0.80],
        "data.image_size=224, trainer.limit_train_batches=2, trainer.max_epochs=1": [0.10],
    }


def test_report_leaves_datasets_evaluated_nowhere_empty(tmp_path: Path) -> None:
    """A composite run whose test split held no MosMed image has no MosMed cell (not a 0.00)."""
    write_run(
        tmp_path / "runs" / "t",
        "TextMoEModule",
        {"backbone": "textmoe"},
        (0.81, 0.71, 0.82, 0.72, 6.0),
        data={"dataset": ["qata", "mosmed"], "labeled_ratio": 0.25, "seed": 42},
        postfix="_qata",
        extra={f"test_{m}": 0.81 for m in METRIC_NAMES},
    )
    text, _ = write_report([tmp_path / "runs"], tmp_path / "report")
    assert "QaTa-COV19 25%" in text and "MosMedData+" not in text and "0.00" not in text
