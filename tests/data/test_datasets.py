"""Dataset readers: every layout, real text files, the real example images and every bad-input case."""

from __future__ import annotations

import ast
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from fakedata import (
    FakeTree,
    make_mosmed_tree,
    make_mosmed_tree_from_csv,
    make_qata_tree,
    make_qata_tree_from_annotation,
    make_qata_tree_from_csv,
    write_png,
)
from PIL import Image

from textseg.data import (
    SPLITS,
    MosMedDataPlus,
    QaTaCOV19,
    SegDataset,
    Split,
    load_dataset,
    read_image,
    read_mask,
    read_size,
    read_text_table,
)
from textseg.errors import DataError

RATIOS = (0.01, 0.02, 0.05, 0.15)
COMPLEMENT = {0.01: "0.99", 0.02: "0.98", 0.05: "0.95", 0.15: "0.85"}


@pytest.fixture(scope="module")
def lvit_mosmed(mosmed_files: Path) -> dict[Split, Path]:
    """LViT's MosMedData+ text file of each split."""
    return {
        "train": mosmed_files / "Train_text_MosMedData+ 1(in).csv",
        "val": mosmed_files / "Val_text_MosMedData+ 1(in).csv",
        "test": mosmed_files / "Test_text_MosMedData+(in).csv",
    }


def assert_matches(ds: SegDataset, tree: FakeTree) -> None:
    """The reader returns exactly what fakedata wrote, in order."""
    for split in SPLITS:
        got = ds.records(split)
        want = tree.samples[split]
        assert [r.id for r in got] == [s.id for s in want]
        assert [r.image for r in got] == [s.image for s in want]
        assert [r.mask for r in got] == [s.mask for s in want]
        assert [r.text for r in got] == [s.text for s in want]
        assert [r.position for r in got] == [s.position for s in want]
        assert [r.key for r in got] == [s.key for s in want]
        assert all(r.modality == ds.modality for r in got)


# =============================================================================================== io


def test_read_image_modes(tmp_path: Path) -> None:
    grey = np.arange(64, dtype=np.uint8).reshape(8, 8) * 3
    assert np.array_equal(read_image(write_png(tmp_path / "l.png", grey)), grey)
    rgb = np.stack([grey, grey, grey], axis=-1)
    out = read_image(write_png(tmp_path / "rgb.png", rgb))
    assert out.dtype == np.uint8 and out.shape == (8, 8)
    assert np.abs(out.astype(int) - grey).max() <= 1
    rgba = np.concatenate([rgb, np.full((8, 8, 1), 128, np.uint8)], axis=-1)
    assert np.abs(read_image(write_png(tmp_path / "rgba.png", rgba)).astype(int) - grey).max() <= 1
    wide = (grey.astype(np.uint16) * 257).astype(np.uint16)
    Image.fromarray(wide).save(tmp_path / "16.png")
    assert np.array_equal(read_image(tmp_path / "16.png"), grey)


def test_read_image_orientation(tmp_path: Path) -> None:
    # A bright block in the image-left half stays in the left columns (no transpose; data.md §9).
    img = np.zeros((16, 32), dtype=np.uint8)
    img[2:6, 1:5] = 255
    out = read_image(write_png(tmp_path / "o.png", img))
    assert out.shape == (16, 32)
    assert out[3, 2] == 255 and out[2, 20] == 0
    assert read_size(tmp_path / "o.png") == (16, 32)


def test_read_mask_encodings(tmp_path: Path) -> None:
    m = np.zeros((8, 8), dtype=np.uint8)
    m[2:5, 3:6] = 1
    for name, arr in (
        ("01.png", m),
        ("0255.png", m * 255),
        ("rgb.png", np.stack([m * 255] * 3, axis=-1)),
        ("rgba.png", np.concatenate([np.stack([m * 255] * 3, -1), np.full((8, 8, 1), 255, np.uint8)], -1)),
    ):
        out = read_mask(write_png(tmp_path / name, arr))
        assert out.dtype == np.uint8
        assert np.array_equal(out, m), name
    Image.fromarray(m.astype(bool)).save(tmp_path / "bits.png")  # mode "1"
    assert np.array_equal(read_mask(tmp_path / "bits.png"), m)
    assert read_mask(write_png(tmp_path / "empty.png", np.zeros((4, 4), np.uint8))).sum() == 0


def test_read_mask_not_binary(tmp_path: Path) -> None:
    grey = np.array([[0, 128], [255, 3]], dtype=np.uint8)
    with pytest.raises(DataError, match=r"grey\.png is not binary: found values \[0, 3, 128, 255\]"):
        read_mask(write_png(tmp_path / "grey.png", grey))
    # RGB channels that disagree average to a non-binary value.
    rgb = np.zeros((2, 2, 3), dtype=np.uint8)
    rgb[0, 0] = (255, 0, 0)
    with pytest.raises(DataError, match=r"rgbbad\.png is not binary: found values \[0, 85\]"):
        read_mask(write_png(tmp_path / "rgbbad.png", rgb))


def test_unreadable_files(tmp_path: Path) -> None:
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    for reader in (read_image, read_mask, read_size):
        with pytest.raises(DataError, match=r"corrupt\.png is unreadable or corrupt"):
            reader(tmp_path / "corrupt.png")  # type: ignore[operator]
        with pytest.raises(DataError, match=r"not found: .*missing\.png"):
            reader(tmp_path / "missing.png")  # type: ignore[operator]
    # A truncated PNG has a valid header but fails on decoding.
    good = write_png(tmp_path / "good.png", np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8))
    (tmp_path / "trunc.png").write_bytes(good.read_bytes()[:200])
    assert read_size(tmp_path / "trunc.png") == (64, 64)
    with pytest.raises(DataError, match=r"trunc\.png is unreadable or corrupt"):
        read_image(tmp_path / "trunc.png")


def test_text_table_formats(tmp_path: Path) -> None:
    semi = tmp_path / "semi.csv"
    semi.write_text("Image;text\na.png;Unilateral pulmonary infection, one infected area, upper left lung.\n")
    comma = tmp_path / "comma.csv"
    comma.write_bytes(
        b'\xef\xbb\xbfImage,text,pseudo_label\r\na.png,"Unilateral pulmonary infection, one infected area, '
        b'upper left lung.","[1, 0, 0, 0, 0, 0]"\r\n\r\n'
    )
    rows_semi, rows_comma = read_text_table(semi), read_text_table(comma)
    assert [(r.image, r.text) for r in rows_semi] == [(r.image, r.text) for r in rows_comma]
    assert rows_semi[0].text == "Unilateral pulmonary infection, one infected area, upper left lung."
    assert rows_comma[0].extra == {"pseudo_label": "[1, 0, 0, 0, 0, 0]"}
    assert rows_comma[0].line == 2


def test_text_table_real_files(lvit_mosmed: dict[Split, Path], mosmed_plabel_files: Path, qata_files: Path) -> None:
    for split, path in lvit_mosmed.items():
        lvit_rows = read_text_table(path)
        semi_rows = read_text_table(mosmed_plabel_files / path.name)
        assert len(lvit_rows) == {"train": 2183, "val": 273, "test": 273}[split]
        assert [(r.image, r.text) for r in lvit_rows] == [(r.image, r.text) for r in semi_rows]
    qata_rows = read_text_table(qata_files / "train.csv", ("image",), ("description",))
    assert len(qata_rows) == 7145 and qata_rows[0].image == "mask_covid_1.png"


def test_text_table_bad(tmp_path: Path) -> None:
    p = tmp_path / "pipe.csv"
    p.write_text("Image|text\na.png|x\n")
    with pytest.raises(DataError, match=r"pipe\.csv: unrecognised header 'Image\|text'"):
        read_text_table(p)
    p = tmp_path / "fields.csv"
    p.write_text("Image;text\na.png;one;two\n")
    with pytest.raises(DataError, match=r"fields\.csv, line 2: 3 fields for 2 columns"):
        read_text_table(p)
    p = tmp_path / "empty_text.csv"
    p.write_text('Image,text\na.png,""\n')
    with pytest.raises(DataError, match=r"empty_text\.csv, line 2: empty text for image a\.png"):
        read_text_table(p)
    p = tmp_path / "dup.csv"
    p.write_text("Image;text\na.png;x\nb.png;y\na.png;z\n")
    with pytest.raises(DataError, match=r"dup\.csv: duplicate row for image a\.png \(lines 2 and 4\)"):
        read_text_table(p)
    p = tmp_path / "latin.csv"
    p.write_bytes(b"Image;text\na.png;caf\xe9\n")
    with pytest.raises(DataError, match=r"latin\.csv is not UTF-8"):
        read_text_table(p)


# ===================================================================================== QaTa layouts


@pytest.mark.parametrize(
    ("layout", "kwargs"),
    [
        ("sgseg", {}),
        ("sgseg", {"annotation_dir": "prompts", "upper_case": True}),
        ("guidedecoder", {}),
        ("guidedecoder", {"annotation": True}),
        ("kaggle", {"csv_dir": ""}),
        ("kaggle", {"annotation": True, "annotation_dir": "prompt"}),
    ],
)
def test_qata_layouts(tmp_path: Path, layout: str, kwargs: dict[str, object]) -> None:
    tree = make_qata_tree(tmp_path / "q", layout, n_train=4, n_val=1, n_test=3, **kwargs)  # type: ignore[arg-type]
    ds = load_dataset("qata", tmp_path / "q")
    assert isinstance(ds, QaTaCOV19)
    assert (ds.name, ds.layout, ds.modality) == ("qata", layout, 0)
    assert_matches(ds, tree)
    ds.check()
    ds.check(full=False)
    if kwargs.get("upper_case") or layout != "sgseg":
        # Upper-case BIMCV names on disk are kept in the ids, keys are lower-cased (data.md §7).
        assert any("sub-S" in r.id for r in ds.records("test"))
        assert all(r.key == r.key.lower() for r in ds.records("test"))


def test_qata_sgseg_nested_images_folder(tmp_path: Path) -> None:
    # SGSeg's own repository: data/QaTa/images/{train,valid,test}/{images,masks}
    # + data/QaTa/prompts/annotation.json
    tree = make_qata_tree(tmp_path / "tmp", "sgseg", annotation_dir="prompts")
    root = tmp_path / "QaTa"
    (root / "images").mkdir(parents=True)
    for folder in ("train", "valid", "test"):
        shutil.move(tmp_path / "tmp" / folder, root / "images" / folder)
    shutil.move(tmp_path / "tmp" / "prompts", root / "prompts")
    ds = QaTaCOV19(root)
    assert ds.layout == "sgseg"
    assert [r.id for r in ds.records("train")] == tree.ids("train")


def test_qata_positions_from_text(tmp_path: Path) -> None:
    tree = make_qata_tree(tmp_path / "q", "guidedecoder", n_train=8, n_val=2, n_test=2, annotation=True)
    by_text = QaTaCOV19(tmp_path / "q", positions="text")
    by_annotation = QaTaCOV19(tmp_path / "q", positions="annotation")
    assert by_annotation.annotation_path is not None
    for split in SPLITS:
        want = [s.position for s in tree.samples[split]]
        assert [r.position for r in by_text.records(split)] == want
        assert [r.position for r in by_annotation.records(split)] == want
    (tmp_path / "q" / "prompt" / "annotation.json").unlink()
    with pytest.raises(DataError, match=r"positions='annotation' but no annotation\.json"):
        QaTaCOV19(tmp_path / "q", positions="annotation")
    with pytest.raises(DataError, match="positions 'labels'"):
        QaTaCOV19(tmp_path / "q", positions="labels")  # type: ignore[arg-type]


def test_qata_80_20_rule(tmp_path: Path) -> None:
    tree = make_qata_tree(tmp_path / "q", "guidedecoder", n_train=8, n_val=3, n_test=1)
    ds = QaTaCOV19(tmp_path / "q")
    assert len(ds.records("train")) == 8 == (4 * 11) // 5
    assert [r.id for r in ds.records("val")] == tree.ids("val")


def test_real_examples_as_sgseg_tree(tmp_path: Path, qata_files: Path) -> None:
    root = tmp_path / "examples"
    for folder in ("train", "valid", "test"):
        shutil.copytree(qata_files / "examples" / folder, root / folder)
    shutil.copyfile(qata_files / "examples" / "examples_annotation.json", root / "annotation.json")
    ds = load_dataset("qata", root)
    assert ds.layout == "sgseg"
    assert [len(ds.records(s)) for s in SPLITS] == [2, 2, 3]
    ds.check()
    # The captions are regenerated from the labels, so parsing them gives the labels back.
    by_text = QaTaCOV19(root, positions="text")
    for split in SPLITS:
        assert [r.position for r in by_text.records(split)] == [r.position for r in ds.records(split)]
    train = {r.id: r for r in ds.records("train")}
    assert train["covid_1007"].text == "unilateral pulmonary infection, one infected area, lower left lung."
    assert train["covid_1007"].position == (0, 0, 1, 0, 0, 0)
    assert train["covid_1007"].key == "mask_covid_1007.png"
    for split in SPLITS:
        for rec in ds.records(split):
            image, mask = read_image(rec.image), read_mask(rec.mask)
            assert image.shape == mask.shape == (224, 224)
            assert set(np.unique(mask).tolist()) == {0, 1}
            # Left/right = image side (data.md §9): single-side labels put the whole mask in that half.
            if sum(rec.position[3:]) == 0:
                assert mask[:, 112:].sum() == 0
            if sum(rec.position[:3]) == 0:
                assert mask[:, :112].sum() == 0


# ================================================================================== real text files


@pytest.fixture(scope="module")
def real_qata_trees(tmp_path_factory: pytest.TempPathFactory, qata_files: Path) -> tuple[QaTaCOV19, QaTaCOV19]:
    base = tmp_path_factory.mktemp("real_qata")
    make_qata_tree_from_annotation(base / "sgseg", qata_files / "annotation.json")
    make_qata_tree_from_csv(base / "gd", qata_files / "train.csv", qata_files / "test.csv", "guidedecoder")
    return QaTaCOV19(base / "sgseg"), QaTaCOV19(base / "gd")


def test_real_qata_class_split(real_qata_trees: tuple[QaTaCOV19, QaTaCOV19], membership: dict) -> None:
    sgseg, gd = real_qata_trees
    assert [len(sgseg.records(s)) for s in SPLITS] == [5716, 1429, 2113]
    assert [len(gd.records(s)) for s in SPLITS] == [5716, 1429, 2113]
    # GuideDecoder's 80/20 slicing of train.csv equals SGSeg's split, names matching case-insensitively.
    for split in SPLITS:
        assert [r.key for r in gd.records(split)] == [r.key for r in sgseg.records(split)]
    assert any("sub-S" in r.id for r in gd.records("test"))
    for ds in (sgseg, gd):
        for ratio in RATIOS:
            labeled, unlabeled = ds.labeled_split(ratio)
            assert [r.key for r in labeled] == membership[ratio]
            assert len(labeled) + len(unlabeled) == 5716
            assert not {r.key for r in labeled} & {r.key for r in unlabeled}
        all_train, also_all = ds.labeled_split(1.0)
        assert all_train == also_all == ds.records("train")
    # Text-parsed positions (raw LViT text) agree with SGSeg's cleaned labels on nearly all rows (§4.2).
    agree = sum(a.position == b.position for s in SPLITS for a, b in zip(gd.records(s), sgseg.records(s), strict=True))
    assert agree / 9258 > 0.99


def test_real_qata_header_check(real_qata_trees: tuple[QaTaCOV19, QaTaCOV19]) -> None:
    sgseg, _ = real_qata_trees
    sgseg.check(splits=("val",), full=True)
    sgseg.check(full=False)


@pytest.fixture(scope="module")
def real_mosmed(tmp_path_factory: pytest.TempPathFactory, lvit_mosmed: dict[Split, Path]) -> MosMedDataPlus:
    root = make_mosmed_tree_from_csv(tmp_path_factory.mktemp("real_mosmed") / "m", lvit_mosmed)
    return MosMedDataPlus(root)


def _plabel(path: Path) -> list[tuple[str, tuple[int, ...]]]:
    return [(r.image, tuple(ast.literal_eval(r.extra["pseudo_label"]))) for r in read_text_table(path)]


def test_real_mosmed_class_split(real_mosmed: MosMedDataPlus, mosmed_plabel_files: Path) -> None:
    ds = real_mosmed
    assert (ds.layout, ds.modality, ds.name) == ("kaggle", 1, "mosmed")
    assert [len(ds.records(s)) for s in SPLITS] == [2183, 273, 273]
    for ratio in RATIOS:
        labeled, unlabeled = ds.labeled_split(ratio)
        published_l = _plabel(mosmed_plabel_files / f"labeled_{ratio}.plabel.csv")
        published_u = _plabel(mosmed_plabel_files / f"unlabeled_{COMPLEMENT[ratio]}.plabel.csv")
        # Same rows in the same order, and the same "bare side = all" positional labels (data.md §4.3).
        assert [(r.key, r.position) for r in labeled] == published_l
        assert [(r.key, r.position) for r in unlabeled] == published_u
    assert ds.labeled_split(1.0)[0] == ds.labeled_split(1.0)[1] == ds.records("train")


def test_real_mosmed_bare_none_and_comma_files(
    tmp_path: Path, lvit_mosmed: dict[Split, Path], mosmed_plabel_files: Path
) -> None:
    semi_files = {s: mosmed_plabel_files / p.name for s, p in lvit_mosmed.items()}
    root = make_mosmed_tree_from_csv(tmp_path / "m", semi_files, layout="split_folders", text_dir="data_splits")
    ds = MosMedDataPlus(root, bare_side="none")
    assert ds.layout == "split_folders"
    # Semi-MedRef's Train/Val/Test .plabel.csv files use the "bare side = nothing" convention.
    for split, path in lvit_mosmed.items():
        published = _plabel(mosmed_plabel_files / path.name.replace(".csv", ".plabel.csv"))
        assert [(r.key, r.position) for r in ds.records(split)] == published


# =================================================================================== MosMed layouts


@pytest.mark.parametrize(
    ("layout", "style", "text_dir"),
    [
        ("kaggle", "lvit", ""),
        ("kaggle", "semimedref", "data_splits"),
        ("images_gts", "prompt", "prompt"),
        ("split_folders", "lvit", "text"),
        ("split_folders", "prompt", "prompt"),
    ],
)
def test_mosmed_layouts(tmp_path: Path, layout: str, style: str, text_dir: str) -> None:
    tree = make_mosmed_tree(tmp_path / "m", layout, n_train=8, n_val=3, n_test=3, text_style=style, text_dir=text_dir)
    ds = load_dataset("mosmed", tmp_path / "m")
    assert (ds.name, ds.layout, ds.modality) == ("mosmed", layout, 1)
    assert_matches(ds, tree)
    ds.check()
    # Code-point sort (upper-case 'J', 'M' before 'b') feeds the split algorithm.
    names = ds.split_names()
    assert names == sorted(names) and names[0].startswith("J") and names[-1].startswith("bjorke")


def test_mosmed_duplicate_text_files(tmp_path: Path) -> None:
    tree = make_mosmed_tree(tmp_path / "m", text_style="lvit")
    # An identical comma copy elsewhere is fine; a different one is a conflict.
    target = tmp_path / "m" / "data_splits" / tree.text_files["train"].name
    target.parent.mkdir()
    rows = read_text_table(tree.text_files["train"])
    target.write_text("Image,text\n" + "".join(f'{r.image},"{r.text}"\n' for r in rows))
    assert len(MosMedDataPlus(tmp_path / "m").records("train")) == 4
    target.write_text("Image,text\n" + "".join(f'{r.image},"{r.text} x"\n' for r in rows))
    with pytest.raises(DataError, match=r"conflicting train text files .*Train_text_MosMedData\+ 1\(in\)\.csv"):
        MosMedDataPlus(tmp_path / "m")


# ======================================================================================== bad input


def test_missing_root_and_unknown_name(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"QaTa-COV19 root .*nowhere does not exist"):
        QaTaCOV19(tmp_path / "nowhere")
    with pytest.raises(DataError, match=r"MosMedData\+ root .*nowhere does not exist"):
        MosMedDataPlus(tmp_path / "nowhere")
    with pytest.raises(DataError, match="unknown dataset 'kvasir'"):
        load_dataset("kvasir", tmp_path)  # type: ignore[arg-type]


def test_unknown_layout(tmp_path: Path) -> None:
    (tmp_path / "pics").mkdir()
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="unknown QaTa-COV19 layout") as info:
        QaTaCOV19(tmp_path)
    msg = str(info.value)
    for word in ("sgseg", "guidedecoder", "kaggle", "Ground-truths", "pics/", "notes.txt"):
        assert word in msg
    with pytest.raises(DataError, match="unknown MosMedData\\+ layout") as info:
        MosMedDataPlus(tmp_path)
    assert "frames/ + masks/" in str(info.value) and "pics/" in str(info.value)


def test_qata_missing_files(tmp_path: Path) -> None:
    tree = make_qata_tree(tmp_path / "a", "sgseg")
    tree.samples["train"][1].mask.unlink()
    tree.samples["test"][0].image.unlink()
    extra = write_png(tmp_path / "a" / "valid" / "images" / "stray.png", np.zeros((32, 32), np.uint8))
    with pytest.raises(DataError) as info:
        QaTaCOV19(tmp_path / "a")
    msg = str(info.value)
    assert "3 problems" in msg
    assert f"image {tree.samples['train'][1].image} has no mask" in msg
    assert f"names image {tree.samples['test'][0].image.name}, not found" in msg
    assert f"image {extra} has no text row" in msg


def test_qata_mask_without_row_and_missing_split(tmp_path: Path) -> None:
    make_qata_tree(tmp_path / "a", "guidedecoder", annotation=False)
    stray = write_png(tmp_path / "a" / "Train" / "GTs" / "mask_other.png", np.zeros((32, 32), np.uint8))
    with pytest.raises(DataError, match=f"mask {stray} has no text row"):
        QaTaCOV19(tmp_path / "a")
    stray.unlink()
    shutil.rmtree(tmp_path / "a" / "Test")
    with pytest.raises(DataError, match=r"folder not found: .*Test/Images"):
        QaTaCOV19(tmp_path / "a")


def test_qata_csv_layout_errors(tmp_path: Path) -> None:
    tree = make_qata_tree(tmp_path / "a", "guidedecoder", annotation=True)
    # An annotation that lacks a CSV row's image.
    ann_path = tree.text_files["annotation"]
    ann = json.loads(ann_path.read_text())
    dropped = ann["test"].pop(0)["image_path"]
    ann_path.write_text(json.dumps(ann))
    with pytest.raises(DataError, match=f"(?i){dropped} has no entry in .*annotation.json"):
        QaTaCOV19(tmp_path / "a")
    ann_path.unlink()
    # Duplicate row (case-insensitive duplicate of a mask name) in train.csv.
    csv_path = tree.text_files["train"]
    lines = csv_path.read_text().splitlines()
    first = tree.samples["train"][1]
    lines.append(f'{first.mask.name.upper()},"{first.text}"')
    csv_path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match="duplicate"):
        QaTaCOV19(tmp_path / "a")
    tree.text_files["test"].unlink()
    with pytest.raises(DataError, match=r"no test\.csv"):
        QaTaCOV19(tmp_path / "a")


def test_qata_annotation_errors(tmp_path: Path) -> None:
    tree = make_qata_tree(tmp_path / "a", "sgseg")
    path = tree.text_files["annotation"]
    good = json.loads(path.read_text())
    cases = [
        (lambda a: a["train"][0].update(caption="  "), "empty text for image"),
        (lambda a: a["train"][1].update(pseudo_label=[0, 2, 0, 0, 0, 0]), r"positional label \[0, 2"),
        (lambda a: a["valid"].append(dict(a["train"][0])), "duplicate"),
        (lambda a: a.pop("valid"), r"missing key\(s\) \['valid'\]"),
        (lambda a: a["test"][0].pop("caption"), "missing 'caption'"),
        (lambda a: a["test"][0].update(image_path="covid_x.png"), "does not start with 'mask_'"),
    ]
    for mutate, pattern in cases:
        broken = json.loads(json.dumps(good))
        mutate(broken)
        path.write_text(json.dumps(broken))
        with pytest.raises(DataError, match=pattern) as info:
            QaTaCOV19(tmp_path / "a")
        assert "annotation.json" in str(info.value) or "image" in str(info.value)
    path.write_text("{not json")
    with pytest.raises(DataError, match=r"annotation\.json is not readable JSON"):
        QaTaCOV19(tmp_path / "a")
    path.unlink()
    with pytest.raises(DataError, match=r"no annotation\.json"):
        QaTaCOV19(tmp_path / "a")


def test_check_catches_pixel_problems(tmp_path: Path) -> None:
    tree = make_qata_tree(tmp_path / "a", "sgseg", n_train=4, n_val=2, n_test=2)
    ds = QaTaCOV19(tmp_path / "a")
    ds.check()
    size_bad = tree.samples["train"][0]
    write_png(size_bad.mask, np.zeros((16, 32), np.uint8))
    grey = tree.samples["val"][1]
    write_png(grey.mask, np.full((32, 32), 7, np.uint8))
    corrupt = tree.samples["test"][0]
    corrupt.image.write_bytes(b"garbage")
    with pytest.raises(DataError) as info:
        ds.check()
    msg = str(info.value)
    assert f"size mismatch: image {size_bad.image} is 32x32 but mask {size_bad.mask} is 32x16" in msg
    assert f"mask file {grey.mask} is not binary: found values [7]" in msg
    assert f"image file {corrupt.image} is unreadable or corrupt" in msg
    # Header-only check sees the size mismatch and the corrupt file, not the mask values.
    with pytest.raises(DataError) as info:
        ds.check(full=False)
    assert "size mismatch" in str(info.value) and "not binary" not in str(info.value)
    ds.check(splits=("val",), full=False)
    with pytest.raises(DataError, match="unknown split 'valid'"):
        ds.records("valid")  # type: ignore[arg-type]


def test_ratio_errors_from_dataset(tmp_path: Path) -> None:
    make_qata_tree(tmp_path / "a", "sgseg", n_train=10)
    ds = QaTaCOV19(tmp_path / "a")
    for bad in (0, -0.1, 1.5):
        with pytest.raises(DataError, match=f"label ratio {bad!r} is outside"):
            ds.labeled_split(bad)
    labeled, unlabeled = ds.labeled_split(0.3)
    assert len(labeled) == 3 and len(unlabeled) == 7


def test_mosmed_bad_input(tmp_path: Path) -> None:
    tree = make_mosmed_tree(tmp_path / "m", "kaggle", n_train=6, n_val=2, n_test=2)
    # Image without a text row, and a text row without an image.
    stray = write_png(tmp_path / "m" / "frames" / "extra_1.png", np.zeros((32, 32), np.uint8))
    gone = tree.samples["val"][0]
    gone.image.unlink()
    with pytest.raises(DataError) as info:
        MosMedDataPlus(tmp_path / "m")
    msg = str(info.value)
    assert f"image {stray} has no text row" in msg
    assert f"names image {gone.image.name}, not found" in msg
    assert "2 problems" in msg  # the orphaned mask of the missing image is not reported twice
    stray.unlink()
    write_png(gone.image, np.zeros((32, 32), np.uint8))
    MosMedDataPlus(tmp_path / "m")
    # The same image in two splits.
    val_file = tree.text_files["val"]
    first_train = tree.samples["train"][0]
    val_file.write_text(val_file.read_text() + f"{first_train.key};{first_train.text}\n")
    with pytest.raises(DataError, match=f"duplicate row for {first_train.key}"):
        MosMedDataPlus(tmp_path / "m")
    # A comma-separated header in a file read for its semicolon twin is recognised; a garbled one is not.
    val_file.write_text("Image text\nx.png some text\n")
    with pytest.raises(DataError, match=r"Val_text_MosMedData\+ 1\(in\)\.csv: unrecognised header"):
        MosMedDataPlus(tmp_path / "m")
    val_file.unlink()
    with pytest.raises(DataError, match="no val text file"):
        MosMedDataPlus(tmp_path / "m")
    with pytest.raises(DataError, match="bare_side 'some'"):
        MosMedDataPlus(tmp_path / "m", bare_side="some")  # type: ignore[arg-type]


def test_mosmed_semicolon_content_in_comma_file(tmp_path: Path) -> None:
    # A file whose header says comma but whose rows are semicolon-separated fails loudly, with the line.
    tree = make_mosmed_tree(tmp_path / "m", "kaggle", text_style="semimedref")
    path = tree.text_files["test"]
    rows = read_text_table(path)
    path.write_text("Image,text\n" + "".join(f"{r.image};{r.text}\n" for r in rows))
    with pytest.raises(DataError, match=r"Test_text_MosMedData\+\(in\)\.csv, line 2: image name .* delimiter"):
        MosMedDataPlus(tmp_path / "m")


def test_case_collisions(tmp_path: Path) -> None:
    tree = make_qata_tree(tmp_path / "a", "sgseg")
    sample = tree.samples["train"][0]
    twin = sample.image.with_name(sample.image.name.upper())
    shutil.copyfile(sample.image, twin)
    with pytest.raises(DataError, match="differ only in case"):
        QaTaCOV19(tmp_path / "a")
