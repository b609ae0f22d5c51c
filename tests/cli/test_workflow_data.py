"""`textseg data check|synth` on good and broken trees, and `folder_records` (images + CSV for predict)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from fakedata import (
    make_mosmed_tree_from_csv,
    make_qata_tree,
    make_qata_tree_from_annotation,
    write_png,
)

from textseg.cli.data import MAX_PROBLEMS_LISTED, check_dataset
from textseg.cli.main import main
from textseg.data import read_mask
from textseg.data.folder import folder_records
from textseg.data.synthetic import make_synthetic
from textseg.errors import DataError
from textseg.ops.text import position_label


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """Run `textseg ...` in-process; return (exit code, stdout)."""
    try:
        main(args)
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    return code, capsys.readouterr().out


# ------------------------------------------------------------------------------------------------- data check


def test_check_good_qata_tree(qata_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run_cli(["data", "check", str(qata_root)], capsys)
    assert code == 0, out
    assert "dataset   qata (QaTa-COV19), layout sgseg" in out
    assert "train         16     5,716  <- differs" in out
    assert "warning: train has 16 images, the canonical split has 5,716" in out
    assert "checked   24 image/mask pairs (decoded" in out
    assert "sizes     64x64: 24 (WxH)" in out
    assert out.rstrip().endswith("OK: the dataset is usable (full check, 3 warnings)")


def test_check_good_mosmed_tree_auto(mosmed_root: Path) -> None:
    report = check_dataset(mosmed_root)
    assert report.usable and report.dataset == "mosmed" and report.layout == "kaggle"
    assert report.counts == {"train": 16, "val": 4, "test": 4}
    assert report.expected == {"train": 2183, "val": 273, "test": 273}
    assert len(report.warnings) == 3 and not report.problems


def test_check_real_annotation_counts(tmp_path: Path, qata_files: Path) -> None:
    """SGSeg tree for the real annotation.json: canonical counts, no warning, Semi-MedRef's labeled counts."""
    root = make_qata_tree_from_annotation(tmp_path / "qata", qata_files / "annotation.json")
    report = check_dataset(root, "qata", fast=True)
    assert report.usable and report.warnings == []
    assert report.counts == {"train": 5716, "val": 1429, "test": 2113}
    assert "labeled   1%: 57, 2%: 114, 5%: 286, 15%: 857 (seed 42)" in report.format()


def test_check_real_mosmed_counts(tmp_path: Path, mosmed_files: Path) -> None:
    mosmed = mosmed_files
    files = {
        "train": mosmed / "Train_text_MosMedData+ 1(in).csv",
        "val": mosmed / "Val_text_MosMedData+ 1(in).csv",
        "test": mosmed / "Test_text_MosMedData+(in).csv",
    }
    root = make_mosmed_tree_from_csv(tmp_path / "mosmed", files)
    report = check_dataset(root, fast=True)
    assert report.usable and report.dataset == "mosmed" and report.warnings == []
    assert report.counts == {"train": 2183, "val": 273, "test": 273}
    text = report.format()
    assert "labeled   1%: 21, 2%: 43, 5%: 109, 15%: 327 (seed 42)" in text
    assert "naming no lung region" in text  # 47 "No pulmonary infection" rows
    assert "2,729 rows" in text and "47 naming no lung region" in text


def test_check_counts_every_problem_it_lists(tmp_path: Path, qata_files: Path) -> None:
    """The real annotation without test masks: 2,113 problems counted as such (it said "FAILED: 1 problem")."""
    root = make_qata_tree_from_annotation(tmp_path / "qata", qata_files / "annotation.json")
    for mask in (root / "test" / "masks").iterdir():
        mask.unlink()
    report = check_dataset(root, "qata", fast=True)
    out = report.format()
    assert len(report.problems) == 2113 and all("has no mask" in p for p in report.problems)
    listed = [line for line in out.splitlines() if line.startswith("  - ")]
    assert len(listed) == MAX_PROBLEMS_LISTED
    assert f"  ... and {2113 - MAX_PROBLEMS_LISTED:,} more problems not shown" in out
    assert out.rstrip().endswith("FAILED: 2,113 problems found; the dataset is not usable")


@pytest.fixture
def broken_root(tmp_path: Path) -> Path:
    tree = make_qata_tree(tmp_path / "qata", "sgseg", n_train=4, n_val=1, n_test=2, size=32, seed=3)
    return tree.root


def test_check_missing_mask(broken_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    mask = sorted((broken_root / "train" / "masks").iterdir())[0]
    mask.unlink()
    code, out = run_cli(["data", "check", str(broken_root), "--dataset", "qata"], capsys)
    assert code == 1
    assert f"has no mask: expected {mask}" in out
    assert "FAILED: 1 problem found" in out


def test_check_extra_image_and_non_binary_mask(broken_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    extra = write_png(broken_root / "test" / "images" / "stray.png", np.zeros((32, 32), np.uint8))
    code, out = run_cli(["data", "check", str(broken_root)], capsys)
    assert code == 1 and f"image {extra} has no text row" in out
    extra.unlink()
    mask = sorted((broken_root / "valid" / "masks").iterdir())[0]
    grey = np.zeros((32, 32), np.uint8)
    grey[:4, :4] = 128
    write_png(mask, grey)
    code, out = run_cli(["data", "check", str(broken_root)], capsys)
    assert code == 1
    assert f"mask file {mask} is not binary: found values [0, 128]" in out
    code, out = run_cli(["data", "check", str(broken_root), "--fast"], capsys)  # headers only: not detected
    assert code == 0 and "fast check (headers only)" in out


def test_check_size_mismatch(broken_root: Path) -> None:
    image = sorted((broken_root / "test" / "images").iterdir())[0]
    write_png(image, np.zeros((40, 32), np.uint8))
    report = check_dataset(broken_root, fast=True)
    assert not report.usable
    assert f"size mismatch: image {image} is 32x40" in report.problems[0]


def test_check_unusable_roots(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run_cli(["data", "check", str(tmp_path / "missing")], capsys)
    assert code == 1 and "does not exist" in out
    (tmp_path / "empty").mkdir()
    assert not check_dataset(tmp_path / "empty").usable
    other = tmp_path / "other"
    write_png(other / "a.png", np.zeros((8, 8), np.uint8))
    report = check_dataset(other)
    assert report.dataset is None and not report.usable
    assert "unknown QaTa-COV19 layout" in report.problems[0] and "unknown MosMedData+ layout" in report.problems[0]
    report = check_dataset(other, "mosmed")  # explicit reader: its own message only
    assert report.problems[0].startswith("unknown MosMedData+ layout")
    make_qata_tree(tmp_path / "download" / "QaTa-COV19-v2", "sgseg", n_train=2, n_val=1, n_test=1, size=32, seed=0)
    report = check_dataset(tmp_path / "download")  # the dataset one folder down is named, once
    hint = f"but {tmp_path / 'download' / 'QaTa-COV19-v2'} (one folder down) holds a qata layout: textseg data check"
    assert report.problems[0].count("one folder down") == 1 and hint in report.problems[0]


def test_synth_then_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "synth"
    args = ["data", "synth", str(root), "--n_train", "6", "--n_val", "2", "--n_test", "2", "--image_size", "32"]
    code, out = run_cli(args, capsys)
    assert code == 0 and "6 / 2 / 2 train/val/test images" in out
    code, out = run_cli(["data", "check", str(root)], capsys)
    assert code == 0, out
    assert "dataset   synthetic" in out and "warning:" not in out
    assert "train          6         6" in out
    code, out = run_cli(args, capsys)
    assert code == 1 and "already exists and is not empty" in out
    # QaTa-sized lesions: the same tree layout and texts, about 3x the lesion area.
    big = tmp_path / "synth_qata"
    code, out = run_cli([*args[:2], str(big), *args[3:-1], "64", "--lesions", "qata"], capsys)
    assert code == 0 and json.loads((big / "synthetic.json").read_text())["config"]["opacity_edge_taper"] > 0
    small = make_synthetic(tmp_path / "small", n_train=6, n_val=2, n_test=2, image_size=64)
    area = [np.mean([read_mask(p).mean() for p in sorted((t / "train" / "masks").glob("*.png"))]) for t in (big, small)]
    assert area[0] > 2 * area[1]
    assert json.loads((big / "annotation.json").read_text()) == json.loads((small / "annotation.json").read_text())
    code, out = run_cli([*args[:2], str(tmp_path / "ct"), "--modality", "ct", "--lesions", "qata"], capsys)
    assert code == 1 and "lesions must be 'default', or 'qata' with the X-ray modality" in out


# --------------------------------------------------------------------------------------------- folder records


def _folder(tmp_path: Path, names: list[str]) -> Path:
    folder = tmp_path / "images"
    for i, name in enumerate(names):
        write_png(folder / name, np.full((16, 24), i * 40, np.uint8))
    return folder


def test_folder_records_semicolon_and_mask_names(tmp_path: Path) -> None:
    folder = _folder(tmp_path, ["a.png", "B.png", "covid_7.png"])
    texts = tmp_path / "texts.csv"
    rows = [
        "Image;text",
        "a.png;Unilateral pulmonary infection, one infected area, lower left lung.",
        "b.png;Bilateral pulmonary infection, two infected areas, all left lung and upper right lung.",
        "mask_covid_7.png;No pulmonary infection, zero infected areas.",
    ]
    texts.write_text("\n".join(rows) + "\n")
    records = folder_records(folder, texts, modality=1)
    assert [r.id for r in records] == ["a", "B", "covid_7"]
    assert [r.image.name for r in records] == ["a.png", "B.png", "covid_7.png"]
    assert all(r.mask is None and r.modality == 1 for r in records)
    assert records[0].position == (0, 0, 1, 0, 0, 0)
    assert records[1].position == (1, 1, 1, 1, 0, 0)
    assert records[2].position == (0, 0, 0, 0, 0, 0)
    assert records[1].position == tuple(position_label(records[1].text))


def test_folder_records_comma_description(tmp_path: Path) -> None:
    folder = _folder(tmp_path, ["x.png", "y.png"])
    texts = tmp_path / "t.csv"
    texts.write_text(
        'Image,Description\nx.png,"Unilateral pulmonary infection, one infected area, upper right lung."\n'
        'y.png,"Bilateral pulmonary infection, two infected areas, lower left lung and lower right lung."\n'
    )
    records = folder_records(folder, texts)
    assert [(r.id, r.position) for r in records] == [("x", (0, 0, 0, 1, 0, 0)), ("y", (0, 0, 1, 0, 0, 1))]


def test_folder_records_errors(tmp_path: Path) -> None:
    folder = _folder(tmp_path, ["a.png", "orphan.png"])
    texts = tmp_path / "t.csv"
    texts.write_text("image,Text\na.png,Lower left lung.\nmissing.png,Upper right lung.\n")
    with pytest.raises(DataError) as err:
        folder_records(folder, texts)
    message = str(err.value)
    assert f"text file {texts}, line 3: image missing.png not found in {folder}" in message
    assert f"image {folder / 'orphan.png'} has no text row in {texts}" in message
    assert message.startswith("2 problems")
    with pytest.raises(DataError, match="image folder not found"):
        folder_records(tmp_path / "nope", texts)
    with pytest.raises(DataError, match="text file not found"):
        folder_records(folder, tmp_path / "nope.csv")
    shutil.rmtree(folder)
