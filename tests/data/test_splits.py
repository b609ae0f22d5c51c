"""Semi-MedRef's label-ratio algorithm (data.md §6) reproduced on the real QaTa and MosMed manifests."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from textseg.data.io import read_text_table
from textseg.data.splits import check_ratio, labeled_count, select_labeled, shuffled_names
from textseg.errors import DataError

RATIOS = (0.01, 0.02, 0.05, 0.15)
QATA_COUNTS = {0.01: 57, 0.02: 114, 0.05: 286, 0.15: 857}
MOSMED_COUNTS = {0.01: 21, 0.02: 43, 0.05: 109, 0.15: 327}
COMPLEMENT = {0.01: "0.99", 0.02: "0.98", 0.05: "0.95", 0.15: "0.85"}


@pytest.fixture(scope="module")
def qata_keys(qata_files: Path) -> list[str]:
    data = json.loads((qata_files / "annotation.json").read_text(encoding="utf-8"))
    return [e["image_path"] for e in data["train"]]


@pytest.fixture(scope="module")
def mosmed_train(mosmed_files: Path) -> list[str]:
    return [r.image for r in read_text_table(mosmed_files / "Train_text_MosMedData+ 1(in).csv")]


def _images(path: Path) -> list[str]:
    return [r.image for r in read_text_table(path)]


# --------------------------------------------------------------------------------------------------- QaTa


def test_qata_shuffle_test_vector(qata_keys: list[str]) -> None:
    assert len(qata_keys) == 5716
    assert shuffled_names(qata_keys, 42)[:5] == [
        "mask_sub-s10298_ses-e25433_run-1_bp-chest_vp-ap_cr.png",
        "mask_sub-s11025_ses-e25664_acq-1_run-1_bp-chest_vp-ll_dx.png",
        "mask_sub-s10882_ses-e22590_run-1_bp-chest_vp-ap_cr.png",
        "mask_covid_995.png",
        "mask_sub-s10374_ses-e20091_run-1_bp-chest_vp-ap_dx.png",
    ]


@pytest.mark.parametrize("ratio", RATIOS)
def test_qata_matches_membership(ratio: float, qata_keys: list[str], membership: dict[float, list[str]]) -> None:
    labeled = select_labeled(qata_keys, ratio, 42, "round")
    assert len(labeled) == QATA_COUNTS[ratio]
    # Same members, and emitted in the original (annotation.json) order.
    assert labeled == membership[ratio]
    assert labeled == [k for k in qata_keys if k in set(labeled)]


def test_qata_r002_prefix(qata_keys: list[str]) -> None:
    assert select_labeled(qata_keys, 0.02)[:5] == [
        "mask_covid_1200.png",
        "mask_covid_1210.png",
        "mask_covid_1308.png",
        "mask_covid_1329.png",
        "mask_covid_1427.png",
    ]


def test_qata_case_does_not_matter(qata_keys: list[str]) -> None:
    # data.md §7: QaTa membership is shuffled in file order, so renaming does not change the chosen positions.
    upper = [k.replace("sub-s", "sub-S").replace("_ses-e", "_ses-E") for k in qata_keys]
    chosen_lower = select_labeled(qata_keys, 0.05)
    chosen_upper = select_labeled(upper, 0.05)
    assert [k.lower() for k in chosen_upper] == chosen_lower


# --------------------------------------------------------------------------------------------------- MosMed


def test_mosmed_shuffle_test_vector(mosmed_train: list[str]) -> None:
    assert len(mosmed_train) == 2183
    assert shuffled_names(sorted(mosmed_train), 42)[:5] == [
        "Morozov_study_0284_19.png",
        "Morozov_study_0289_30.png",
        "Jun_coronacases_case5_136.png",
        "Jun_coronacases_case10_132.png",
        "Morozov_study_0269_29.png",
    ]


@pytest.mark.parametrize("ratio", RATIOS)
def test_mosmed_matches_published(ratio: float, mosmed_train: list[str], mosmed_files: Path) -> None:
    chosen = set(select_labeled(sorted(mosmed_train), ratio, 42, "floor"))
    assert len(chosen) == MOSMED_COUNTS[ratio] == max(1, math.floor(2183 * ratio))
    labeled_file = _images(mosmed_files / "semimedref_format" / f"labeled_{ratio}.plabel.csv")
    unlabeled_file = _images(mosmed_files / "semimedref_format" / f"unlabeled_{COMPLEMENT[ratio]}.plabel.csv")
    # Row for row, in the original CSV order.
    assert labeled_file == [n for n in mosmed_train if n in chosen]
    assert unlabeled_file == [n for n in mosmed_train if n not in chosen]


def test_mosmed_r005_prefix_and_case_sensitivity(mosmed_train: list[str]) -> None:
    chosen = set(select_labeled(sorted(mosmed_train), 0.05, rounding="floor"))
    in_file_order = [n for n in mosmed_train if n in chosen]
    assert in_file_order[:3] == ["bjorke_40.png", "bjorke_72.png", "Jun_coronacases_case10_118.png"]
    # A case-insensitive sort gives another subset (data.md §6-7).
    other = set(select_labeled(sorted(mosmed_train, key=str.lower), 0.05, rounding="floor"))
    assert other != chosen


def test_nested(qata_keys: list[str], mosmed_train: list[str]) -> None:
    for names, rounding in ((qata_keys, "round"), (sorted(mosmed_train), "floor")):
        previous: set[str] = set()
        for ratio in (*RATIOS, 0.25, 0.5):
            current = set(select_labeled(names, ratio, rounding=rounding))  # type: ignore[arg-type]
            assert previous < current
            previous = current


# --------------------------------------------------------------------------------------------------- unit


def test_counts_and_rounding() -> None:
    names = [f"n{i}" for i in range(10)]
    assert labeled_count(10, 0.15, "round") == 2  # round(1.5) = 2 (half to even)
    assert labeled_count(10, 0.25, "round") == 2  # round(2.5) = 2 (half to even)
    assert labeled_count(10, 0.15, "floor") == 1
    assert labeled_count(10, 0.01, "round") == 1  # max(1, ...)
    assert labeled_count(5716, 0.15) == 857
    assert len(select_labeled(names, 0.35, rounding="floor")) == 3
    assert len(select_labeled(names, 0.35, rounding="round")) == 4  # round(3.5) = 4
    assert select_labeled(names, 1.0) == names
    assert select_labeled(names, 1) == names


def test_input_not_modified_and_seed_matters() -> None:
    names = [f"n{i:03d}" for i in range(200)]
    copy = list(names)
    a = select_labeled(names, 0.1, seed=42)
    assert names == copy
    assert select_labeled(names, 0.1, seed=42) == a
    assert select_labeled(names, 0.1, seed=7) != a
    assert a == sorted(a)  # original order


@pytest.mark.parametrize("ratio", [0, 0.0, -0.1, 1.5, 1.0000001, float("nan"), float("inf")])
def test_bad_ratio(ratio: float) -> None:
    with pytest.raises(DataError, match=r"label ratio .* outside \(0, 1\]") as info:
        select_labeled(["a", "b"], ratio)
    assert repr(ratio) in str(info.value)


@pytest.mark.parametrize("ratio", ["0.5", None, True])
def test_ratio_not_a_number(ratio: object) -> None:
    with pytest.raises(DataError, match="not a number") as info:
        check_ratio(ratio)  # type: ignore[arg-type]
    assert repr(ratio) in str(info.value)


def test_bad_names() -> None:
    with pytest.raises(DataError, match="empty"):
        select_labeled([], 0.5)
    with pytest.raises(DataError, match=r"duplicate names.*'b'"):
        select_labeled(["a", "b", "b"], 0.5)
    with pytest.raises(DataError, match="rounding"):
        labeled_count(10, 0.5, "ceil")  # type: ignore[arg-type]
