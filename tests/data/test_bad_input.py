"""Inputs that are bad in effect are refused (issue 27): precision, empty texts, masks, empty splits, ranges.

Also checks that ``textseg data check`` applies the validator ``fit`` applies (one function,
:func:`textseg.data.base.validate_dataset`) and that its summary counts the problems it lists (``docs/data.md`` §12).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from fakedata import MOSMED_TEXT_NAMES, make_mosmed_tree, make_qata_tree, write_png
from PIL import Image

import textseg.cli.data as cli_data
import textseg.data.datamodule as datamodule_module
from textseg.cli.data import check_dataset
from textseg.data.base import SPLITS, Record, validate_dataset
from textseg.data.datamodule import TextSegDataModule
from textseg.data.io import empty_text_reason, read_image, read_image_float, read_text_table
from textseg.data.mosmed import MosMedDataPlus
from textseg.data.qata import QaTaCOV19
from textseg.data.transforms import LoadRecordd, build_transform
from textseg.errors import DataError, check_range
from textseg.models.encoders import TextEncoder
from textseg.ops.text import TokenLimit

#: A referring text of about 720 tokens (the tiny tokenizer: 16 tokens per sentence without [CLS]/[SEP]).
HUGE_TEXT = " ".join(["Bilateral pulmonary infection, two infected areas, upper left lung and lower right lung."] * 45)


def _mosmed(tmp_path: Path, **kwargs: int) -> Path:
    sizes = {"n_train": 4, "n_val": 2, "n_test": 2, **kwargs}
    root = tmp_path / "mosmed"
    make_mosmed_tree(root, "kaggle", size=32, seed=4, **sizes)
    return root


def _set_mosmed_text(root: Path, split: str, row: int, text: str) -> tuple[Path, str]:
    """Rewrite the text of data row ``row`` (0-based) of a MosMed LViT CSV; return (file, image name)."""
    path = root / MOSMED_TEXT_NAMES[split]
    lines = path.read_text(encoding="utf-8").splitlines()
    name = lines[row + 1].split(";")[0]
    lines[row + 1] = f"{name};{text}"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path, name


# ------------------------------------------------------------------------------------------------- precision


def test_16_bit_png_keeps_12_bit_precision(tmp_path: Path) -> None:
    """A 16-bit PNG holding 12-bit data (DICOM export) keeps its levels: > 17 distinct values reach the network."""
    values = np.arange(4096, dtype=np.uint16).reshape(64, 64)
    path = tmp_path / "ct16.png"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode.startswith("I;16")
    image = read_image_float(path)
    assert image.dtype == np.float32
    np.testing.assert_array_equal(image, (values / 65535.0).astype(np.float32))  # scaled once, by the dtype max
    assert len(np.unique(read_image(path))) == 17  # the display reader: 8 bits, as before
    record = Record("ct16", path, path, "Lower left lung.", (0, 0, 1, 0, 0, 0), 1, "ct16")
    sample = build_transform("predict", 64)({"record": record})
    assert len(np.unique(sample["image"].numpy())) == 4096


def test_8_bit_images_give_the_same_tensors(tmp_path: Path) -> None:
    """Golden: 8-bit grey and RGB files load exactly as ``uint8 / 255`` in float32 (the tensors of before)."""
    rng = np.random.default_rng(0)
    grey = write_png(tmp_path / "g.png", rng.integers(0, 256, (16, 24), dtype=np.uint8))
    rgb = tmp_path / "c.png"
    Image.fromarray(rng.integers(0, 256, (16, 24, 3), dtype=np.uint8)).save(rgb)
    for path in (grey, rgb):
        old = read_image(path).astype(np.float32)
        old *= 1.0 / 255.0
        new = read_image_float(path)
        assert new.dtype == np.float32 and np.array_equal(new, old)
        record = Record("x", path, None, "Lower left lung.", (0, 0, 1, 0, 0, 0), 0, "x")
        loaded = LoadRecordd(with_mask=False)({"record": record})["image"]
        assert np.array_equal(loaded.numpy()[0], old)


# ----------------------------------------------------------------------------------------------------- texts


@pytest.mark.parametrize(
    "text",
    ["nan", "NaN", "None", "\u200b\u200b\u200b", " \u200b \ufeff ", "...", "?!", " - ; - "],
    ids=["nan", "NaN-case", "None", "zero-width", "zero-width-and-spaces", "dots", "punctuation", "dashes"],
)
def test_empty_in_effect_texts_are_refused(tmp_path: Path, text: str) -> None:
    """A cell reading nan/None, only zero-width characters or only punctuation is an empty text: file and row named."""
    assert empty_text_reason(text) is not None
    table = tmp_path / "t.csv"
    table.write_text(f'Image,text\na.png,"Lower left lung."\nb.png,"{text}"\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"line 3: empty text .*for image b\.png") as err:
        read_text_table(table)
    assert str(table) in str(err.value)


def test_empty_in_effect_text_in_a_dataset(tmp_path: Path) -> None:
    root = _mosmed(tmp_path)
    path, name = _set_mosmed_text(root, "val", 1, "nan")
    with pytest.raises(DataError, match="empty text") as err:
        MosMedDataPlus(root)
    assert f"{path}, line 3" in str(err.value) and name in str(err.value)
    qata = make_qata_tree(tmp_path / "qata", "sgseg", n_train=2, n_val=1, n_test=1, size=32).root
    annotation = qata / "annotation.json"
    data = json.loads(annotation.read_text())
    data["test"][0]["caption"] = "\u200b\u200b"
    annotation.write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"annotation\.json\[test\]\[0\]: empty text"):
        QaTaCOV19(qata)


def test_real_texts_are_not_empty() -> None:
    for text in ("No pulmonary infection, zero infected areas.", "Lower left lung.", "nano lesion", "None visible."):
        assert empty_text_reason(text) is None


# ----------------------------------------------------------------------------------------------------- masks


def _invert_first_mask(root: Path) -> Path:
    mask = sorted((root / "masks").glob("*.png"))[0]
    write_png(mask, np.where(np.asarray(Image.open(mask)) > 0, 0, 255).astype(np.uint8))
    return mask


def test_inverted_mask_flagged_by_check_and_warned_by_fit(tmp_path: Path) -> None:
    root = _mosmed(tmp_path)
    mask = _invert_first_mask(root)
    found = validate_dataset(MosMedDataPlus(root), SPLITS, max_foreground_share=0.6)
    assert not found.problems and [p for p, _ in found.large_masks] == [mask]
    assert found.large_masks[0][1] > 0.6
    report = check_dataset(root)
    assert report.usable
    flagged = [w for w in report.warnings if str(mask) in w]
    assert len(flagged) == 1 and "foreground" in flagged[0] and "%" in flagged[0]
    dm = TextSegDataModule("mosmed", str(root), image_size=32, batch_size=2)
    with pytest.warns(UserWarning, match=r"1 mask\(s\) have a foreground share above max_foreground_share=0.6") as rec:
        dm.setup("fit")
    assert mask.name in str(rec[0].message)
    quiet = TextSegDataModule("mosmed", str(root), image_size=32, batch_size=2, max_foreground_share=1.0)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*foreground share.*")
        quiet.setup("fit")


# ------------------------------------------------------------------------------------------------ empty splits


def test_empty_splits_needed_by_the_run_are_errors(tmp_path: Path) -> None:
    root = _mosmed(tmp_path, n_test=0)
    dm = TextSegDataModule("mosmed", str(root), image_size=32, batch_size=2)
    dm.setup("fit")  # fit alone does not need the test split
    with pytest.raises(DataError, match=rf"the test split of the mosmed dataset at {root} is empty"):
        TextSegDataModule("mosmed", str(root), image_size=32).setup("test")
    after = TextSegDataModule("mosmed", str(root), image_size=32, batch_size=2)
    after.test_after_fit = True  # set by `textseg fit --test_after_fit true`
    with pytest.raises(DataError, match=r"the test split .* is empty"):
        after.setup("fit")
    report = check_dataset(root)
    assert not report.usable and any("test split" in p and "is empty" in p for p in report.problems)
    no_val = _mosmed(tmp_path / "v", n_val=0)
    with pytest.raises(DataError, match=r"the val split .* is empty"):
        TextSegDataModule("mosmed", str(no_val), image_size=32).setup("fit")


def test_a_split_is_validated_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``--test_after_fit``: setup("fit") checks the test split, so the trainer's setup("test") does not again."""
    seen: list[tuple[str, ...]] = []

    def recorded(data: Any, splits: Any, **kwargs: Any) -> Any:
        seen.append(tuple(splits))
        return validate_dataset(data, splits, **kwargs)

    monkeypatch.setattr(datamodule_module, "validate_dataset", recorded)
    dm = TextSegDataModule("mosmed", str(_mosmed(tmp_path)), image_size=32, batch_size=2)
    dm.test_after_fit = True
    dm.setup("fit")
    dm.setup("test")
    assert seen == [("train", "val", "test")]


# ------------------------------------------------------------------------------------------------------ ranges


@pytest.mark.parametrize(
    ("argument", "value", "allowed"),
    [
        ("batch_size", 0, ">= 1"),
        ("image_size", 0, ">= 32"),
        ("eval_batch_size", 0, ">= 1"),
        ("unlabeled_batch_size", 0, ">= 1"),
        ("num_workers", -1, ">= 0"),
        ("zoom_prob", 1.5, "in [0, 1]"),
        ("zoom_min", 0.0, "> 0"),
        ("strong_jitter_prob", -0.1, "in [0, 1]"),
        ("strong_brightness", float("nan"), "in [0, 1]"),
        ("max_foreground_share", 0.0, "in (0, 1]"),
        ("predict_modality", 2, "in [0, 1]"),
    ],
)
def test_datamodule_arguments_are_range_checked(argument: str, value: float, allowed: str) -> None:
    kwargs: dict[str, Any] = {argument: value}
    with pytest.raises(DataError) as err:
        TextSegDataModule(**kwargs)
    assert str(err.value) == f"{argument} must be {allowed}, got {value!r}"


def test_check_range_messages() -> None:
    check_range("lr", 1e-3, 0, open_low=True)
    check_range("lr_t_max", None, 1, optional=True)
    with pytest.raises(DataError, match=r"^labeled_ratio must be in \(0, 1\], got 0$"):
        check_range("labeled_ratio", 0, 0, 1, open_low=True)
    with pytest.raises(DataError, match=r"^x must be < 2, got True$"):
        check_range("x", True, high=2, open_high=True)
    with pytest.raises(DataError, match=r"^y must be a finite number, got inf$"):
        check_range("y", float("inf"))


# ------------------------------------------------------------------------------------- data check == fit's checks


def test_data_check_refuses_the_texts_fit_refuses(tmp_path: Path) -> None:
    """A ~720-token text: `data check` and `fit` (the model's tokenizer) refuse it with the same line."""
    root = _mosmed(tmp_path)
    _, name = _set_mosmed_text(root, "train", 2, HUGE_TEXT)
    encoder = TextEncoder("tiny", 24)
    assert TokenLimit.of(encoder) is not None
    report = check_dataset(root)  # default --text_encoder tiny --max_length 24
    assert not report.usable and len(report.problems) == 1
    assert "tokens, longer than the text encoder's max_length 24" in report.problems[0] and name in report.problems[0]
    dm = TextSegDataModule("mosmed", str(root), image_size=32, batch_size=2)
    dm.trainer = SimpleNamespace(lightning_module=SimpleNamespace(text_encoder=encoder), logger=None)  # type: ignore[assignment]
    with pytest.raises(DataError) as err:
        dm.setup("fit")
    assert report.problems[0] in str(err.value)  # the same rule, the same line
    assert int(report.problems[0].split("text of ")[1].split()[0]) > 700
    assert check_dataset(root, text_encoder=None).usable  # no tokenizer: no token limit


def test_summary_counts_what_it_lists(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """25 stray images: "FAILED: 25 problems" with 25 problem lines (not "1 problem"), and a counted truncation."""
    root = make_qata_tree(tmp_path / "qata", "sgseg", n_train=2, n_val=1, n_test=1, size=32).root
    for i in range(25):
        write_png(root / "train" / "images" / f"stray_{i:02d}.png", np.zeros((32, 32), np.uint8))
    report = check_dataset(root)
    out = report.format()
    listed = [line for line in out.splitlines() if line.startswith("  - ")]
    assert len(report.problems) == 25 and len(listed) == 25
    assert all("has no text row" in line for line in listed)
    assert out.rstrip().endswith("FAILED: 25 problems found; the dataset is not usable")
    monkeypatch.setattr(cli_data, "MAX_PROBLEMS_LISTED", 10)
    out = report.format()
    assert len([line for line in out.splitlines() if line.startswith("  - ")]) == 10
    assert "  ... and 15 more problems not shown" in out and "FAILED: 25 problems found" in out
