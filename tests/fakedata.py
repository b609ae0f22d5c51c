"""Tiny fake dataset trees in every on-disk layout the readers accept (test helper, shared by test files).

Import it from a test file in ``tests/`` as ``from fakedata import make_qata_tree`` (pytest puts ``tests/`` on
``sys.path``).

Random trees (small, real pixel content, consistent text/position/mask):

* :func:`make_qata_tree` -- QaTa-COV19 in the ``"sgseg"``, ``"guidedecoder"`` or ``"kaggle"`` layout;
* :func:`make_mosmed_tree` -- MosMedData+ in the ``"kaggle"``, ``"images_gts"`` or ``"split_folders"``
  layout, with LViT semicolon, Semi-MedRef comma or GuideDecoder-style text files.

Both return a :class:`FakeTree` describing every sample (ids, file paths, text, position) so tests can compare
what a reader returns with what was written.

Trees around real text files (placeholder pixels: every image and mask is a hard link to one tiny black PNG,
i.e. an empty mask; all 9,258 QaTa rows take well under a second -- never rewrite these files in place):

* :func:`make_qata_tree_from_annotation` -- SGSeg layout for a real ``annotation.json``;
* :func:`make_qata_tree_from_csv` -- GuideDecoder/Kaggle layout for real ``train.csv``/``test.csv``;
* :func:`make_mosmed_tree_from_csv` -- a MosMed layout for real LViT/Semi-MedRef text files.

Helpers: :func:`write_png`, :func:`placeholder_png`, :func:`lvit_text`.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from textseg.data.io import read_text_table
from textseg.data.synthetic import caption_for, region_boxes

__all__ = [
    "MOSMED_LAYOUTS",
    "MOSMED_TEXT_STYLES",
    "QATA_LAYOUTS",
    "FakeSample",
    "FakeTree",
    "lvit_text",
    "make_mosmed_tree",
    "make_mosmed_tree_from_csv",
    "make_qata_tree",
    "make_qata_tree_from_annotation",
    "make_qata_tree_from_csv",
    "placeholder_png",
    "write_png",
]

SPLITS = ("train", "val", "test")
QATA_LAYOUTS = ("sgseg", "guidedecoder", "kaggle")
MOSMED_LAYOUTS = ("kaggle", "images_gts", "split_folders")
MOSMED_TEXT_STYLES = ("lvit", "semimedref", "prompt")
NO_INFECTION = "No pulmonary infection, zero infected areas."

# QaTa folders per layout: split -> (split folder, image folder, mask folder).
_QATA_DIRS = {
    "sgseg": {"train": ("train", "images", "masks"), "val": ("valid", "images", "masks"),
              "test": ("test", "images", "masks")},
    "guidedecoder": {"train": ("Train", "Images", "GTs"), "val": ("Train", "Images", "GTs"),
                     "test": ("Test", "Images", "GTs")},
    "kaggle": {"train": ("Train Set", "Images", "Ground-truths"),
               "val": ("Train Set", "Images", "Ground-truths"),
               "test": ("Test Set", "Images", "Ground-truths")},
}  # fmt: skip
# MosMed folders per layout: split -> (image folder, mask folder), relative to the root.
_MOSMED_DIRS = {
    "kaggle": dict.fromkeys(SPLITS, ("frames", "masks")),
    "images_gts": dict.fromkeys(SPLITS, ("Images", "GTs")),
    "split_folders": {s: (f"{s.title()}/Images", f"{s.title()}/GTs") for s in SPLITS},
}
# LViT MosMed text-file names per split.
MOSMED_TEXT_NAMES = {
    "train": "Train_text_MosMedData+ 1(in).csv",
    "val": "Val_text_MosMedData+ 1(in).csv",
    "test": "Test_text_MosMedData+(in).csv",
}


@dataclass(frozen=True)
class FakeSample:
    """One written sample.

    Attributes:
        split: ``"train"``, ``"val"`` or ``"test"``.
        id: Image file name without extension, as on disk.
        image: Image file.
        mask: Mask file.
        text: Referring text as written to the text file.
        position: Positional label the mask was drawn from.
        key: What the reader should use as split key (QaTa: lower-cased mask name; MosMed: image name).
    """

    split: str
    id: str
    image: Path
    mask: Path
    text: str
    position: tuple[int, ...]
    key: str


@dataclass
class FakeTree:
    """A written fake dataset.

    Attributes:
        root: Dataset root.
        layout: Layout name, as the reader reports it.
        samples: Samples per split, in canonical (text-file) order.
        text_files: Text/annotation files written (by role, e.g. ``"train"``, ``"annotation"``).
    """

    root: Path
    layout: str
    samples: dict[str, list[FakeSample]] = field(default_factory=dict)
    text_files: dict[str, Path] = field(default_factory=dict)

    def ids(self, split: str) -> list[str]:
        """Ids of one split in canonical order."""
        return [s.id for s in self.samples[split]]


def write_png(path: Path, array: np.ndarray) -> Path:
    """Write a ``uint8`` array as PNG (``[H, W]`` greyscale or ``[H, W, 3|4]`` colour), creating folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(array)).save(path, format="PNG")
    return path


def placeholder_png(size: int = 8) -> bytes:
    """Bytes of a black ``size x size`` greyscale PNG (a valid image and a valid empty mask)."""
    buf = io.BytesIO()
    Image.fromarray(np.zeros((size, size), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def lvit_text(position: Sequence[int]) -> str:
    """LViT-style text for a label (the no-infection sentence for an all-zero label)."""
    return caption_for(position) if any(position) else NO_INFECTION


def _random_position(rng: np.random.Generator, allow_empty: bool = False) -> tuple[int, ...]:
    """A random 6-dim label with 1-3 positive regions (or all zeros when allowed and drawn)."""
    if allow_empty and rng.random() < 0.25:
        return (0,) * 6
    chosen = set(rng.choice(6, size=int(rng.integers(1, 4)), replace=False).tolist())
    return tuple(int(i in chosen) for i in range(6))


def _draw(rng: np.random.Generator, size: int, position: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Random image and a {0,255} mask with a block in every positive region."""
    image = rng.integers(0, 256, size=(size, size), dtype=np.uint8)
    mask = np.zeros((size, size), dtype=np.uint8)
    for region, (r0, r1, c0, c1) in enumerate(region_boxes(size)):
        if position[region]:
            h, w = r1 - r0, c1 - c0
            mask[r0 + h // 4 : r1 - h // 4, c0 + w // 4 : c1 - w // 4] = 255
    return image, mask


def _write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[str]], style: str) -> Path:
    """Write a text table: ``"semicolon"`` (LViT MosMed, unquoted, LF), ``"comma"`` (quoted text, LF) or
    ``"semimedref"`` (comma, quoted, CRLF, UTF-8 BOM)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if style == "semicolon":
        lines = [";".join(header), *(";".join(r) for r in rows)]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return path
    buf = io.StringIO()
    terminator = "\r\n" if style == "semimedref" else "\n"
    writer = csv.writer(buf, lineterminator=terminator, quoting=csv.QUOTE_MINIMAL)
    writer.writerow(header)
    writer.writerows(rows)
    encoding = "utf-8-sig" if style == "semimedref" else "utf-8"
    path.write_bytes(buf.getvalue().encode(encoding))
    return path


def _annotation_entry(mask_name: str, text: str, position: Sequence[int]) -> dict[str, object]:
    """An SGSeg ``annotation.json`` entry (lower-cased name and caption)."""
    return {
        "image_path": mask_name.lower(),
        "caption": text.lower(),
        "pulmonary_infection": int(any(position[:3])) + int(any(position[3:])),
        "infected_area": int(sum(position)),
        "pseudo_label": list(position),
    }


def _qata_names(split: str, index: int, upper_case: bool) -> str:
    """QaTa image name: ``covid_K.png`` (every other train sample) or a BIMCV ``sub-S..._ses-E...`` name."""
    if split == "train" and index % 2 == 0:
        return f"covid_{1000 + index}.png"
    offset = {"train": 0, "val": 3000, "test": 6000}[split]
    name = f"sub-S{10000 + offset + index:05d}_ses-E{20000 + offset + index:05d}_run-1_bp-chest_vp-ap_dx.png"
    return name if upper_case else name.lower()


def make_qata_tree(
    root: Path,
    layout: str = "sgseg",
    n_train: int = 4,
    n_val: int = 1,
    n_test: int = 2,
    size: int = 32,
    *,
    upper_case: bool | None = None,
    annotation: bool | None = None,
    annotation_dir: str | None = None,
    csv_dir: str = "prompt",
    seed: int = 0,
) -> FakeTree:
    """Write a small random QaTa-COV19 tree.

    Args:
        root: Dataset root (created).
        layout: ``"sgseg"``, ``"guidedecoder"`` or ``"kaggle"``.
        n_train: Train samples. For the CSV layouts the reader takes the first ``floor(0.8 N)`` rows of
            ``train.csv`` as train, so ``n_train`` must equal ``floor(0.8 (n_train + n_val))``.
        n_val: Validation samples.
        n_test: Test samples.
        size: Image side in pixels.
        upper_case: Write BIMCV file names with upper-case ``S``/``E`` on disk (default: ``False`` for sgseg,
            ``True`` otherwise, as in the real data). The annotation always uses lower case.
        annotation: Write an ``annotation.json`` (always for sgseg; default ``False`` for the CSV layouts).
        annotation_dir: Folder of the annotation file relative to the root (``""``, ``"prompts"``,
            ``"prompt"``; default: the root for sgseg, ``csv_dir`` otherwise).
        csv_dir: Folder of ``train.csv``/``test.csv`` for the CSV layouts (``"prompt"`` or ``""``).
        seed: Seed of the pixel content and labels.

    Returns:
        The tree description.
    """
    if layout not in QATA_LAYOUTS:
        raise ValueError(f"unknown QaTa layout {layout!r}")
    if layout != "sgseg" and (4 * (n_train + n_val)) // 5 != n_train:
        raise ValueError(f"n_train={n_train}, n_val={n_val}: the 80/20 rule would give {(4 * (n_train + n_val)) // 5}")
    upper = (layout != "sgseg") if upper_case is None else upper_case
    write_annotation = True if layout == "sgseg" else bool(annotation)
    rng = np.random.default_rng(seed)
    root = Path(root)
    tree = FakeTree(root=root, layout=layout)
    entries: dict[str, list[dict[str, object]]] = {"train": [], "valid": [], "test": []}
    csv_rows: dict[str, list[list[str]]] = {"train": [], "test": []}
    for split, count in zip(SPLITS, (n_train, n_val, n_test), strict=True):
        folder, image_folder, mask_folder = _QATA_DIRS[layout][split]
        tree.samples[split] = []
        for i in range(count):
            name = _qata_names(split, i, upper)
            mask_name = f"mask_{name}"
            position = _random_position(rng)
            text = lvit_text(position)
            image, mask = _draw(rng, size, position)
            image_path = write_png(root / folder / image_folder / name, image)
            mask_path = write_png(root / folder / mask_folder / mask_name, mask)
            written_text = text.lower() if layout == "sgseg" else text
            tree.samples[split].append(
                FakeSample(split, Path(name).stem, image_path, mask_path, written_text, position, mask_name.lower())
            )
            entries["valid" if split == "val" else split].append(_annotation_entry(mask_name, text, position))
            csv_rows["test" if split == "test" else "train"].append([mask_name, text])
    if write_annotation:
        folder = annotation_dir if annotation_dir is not None else ("" if layout == "sgseg" else csv_dir)
        path = root / folder / "annotation.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(entries, indent=2), encoding="utf-8")
        tree.text_files["annotation"] = path
    if layout != "sgseg":
        for which in ("train", "test"):
            path = root / csv_dir / f"{which}.csv"
            tree.text_files[which] = _write_csv(path, ["Image", "Description"], csv_rows[which], "comma")
    return tree


def _mosmed_name(split: str, index: int) -> str:
    """MosMed slice names mixing the four sources (so code-point and case-insensitive sorts differ)."""
    offset = {"train": 0, "val": 500, "test": 800}[split] + index
    kind = index % 4
    if kind == 0:
        return f"bjorke_{offset}.png"
    if kind == 1:
        return f"Jun_coronacases_case{offset % 10}_{offset}.png"
    if kind == 2:
        return f"Jun_radiopaedia_40_86_625_0_case{offset % 7}_{offset}.png"
    return f"Morozov_study_{offset:04d}_{offset % 40}.png"


def make_mosmed_tree(
    root: Path,
    layout: str = "kaggle",
    n_train: int = 4,
    n_val: int = 2,
    n_test: int = 2,
    size: int = 32,
    *,
    text_style: str = "lvit",
    text_dir: str = "",
    seed: int = 0,
) -> FakeTree:
    """Write a small random MosMedData+ tree.

    Some samples get the no-infection text with an empty mask, as in the real data.

    Args:
        root: Dataset root (created).
        layout: ``"kaggle"`` (``frames/`` + ``masks/``), ``"images_gts"`` or ``"split_folders"``.
        n_train: Train samples.
        n_val: Validation samples.
        n_test: Test samples.
        size: Image side in pixels.
        text_style: ``"lvit"`` (``Train_text_MosMedData+ 1(in).csv``..., ``Image;text``),
            ``"semimedref"`` (same names, ``Image,text``, quoted, CRLF, BOM) or ``"prompt"``
            (``train.csv``/``val.csv``/``test.csv``, ``Image,Description``).
        text_dir: Folder of the text files relative to the root (``""``, ``"prompt"``, ``"text"``,
            ``"data_splits"``...).
        seed: Seed of the pixel content and labels.

    Returns:
        The tree description.
    """
    if layout not in MOSMED_LAYOUTS:
        raise ValueError(f"unknown MosMed layout {layout!r}")
    if text_style not in MOSMED_TEXT_STYLES:
        raise ValueError(f"unknown text style {text_style!r}")
    rng = np.random.default_rng(seed)
    root = Path(root)
    tree = FakeTree(root=root, layout=layout)
    for split, count in zip(SPLITS, (n_train, n_val, n_test), strict=True):
        image_folder, mask_folder = _MOSMED_DIRS[layout][split]
        tree.samples[split] = []
        rows = []
        for i in range(count):
            name = _mosmed_name(split, i)
            position = _random_position(rng, allow_empty=True)
            text = lvit_text(position)
            image, mask = _draw(rng, size, position)
            image_path = write_png(root / image_folder / name, image)
            mask_path = write_png(root / mask_folder / name, mask)
            tree.samples[split].append(FakeSample(split, Path(name).stem, image_path, mask_path, text, position, name))
            rows.append([name, text])
        if text_style == "prompt":
            path = _write_csv(root / text_dir / f"{split}.csv", ["Image", "Description"], rows, "comma")
        else:
            style = "semicolon" if text_style == "lvit" else "semimedref"
            path = _write_csv(root / text_dir / MOSMED_TEXT_NAMES[split], ["Image", "text"], rows, style)
        tree.text_files[split] = path
    return tree


def _fill(directory: Path, names: Sequence[str], master: Path) -> None:
    """Create every name in ``directory`` as a hard link to ``master`` (a copy where links are unsupported).

    Hard links are ~10x faster than writing thousands of small files. They share one inode, so never rewrite
    such a file in place (unlink it first).
    """
    directory.mkdir(parents=True, exist_ok=True)
    for name in names:
        try:
            os.link(master, directory / name)
        except OSError:
            shutil.copyfile(master, directory / name)


def _master(root: Path, size: int) -> Path:
    """The placeholder PNG all files of a real-text tree link to (hidden file at the root)."""
    root.mkdir(parents=True, exist_ok=True)
    path = root / f".placeholder_{size}.png"
    if not path.exists():
        path.write_bytes(placeholder_png(size))
    return path


def make_qata_tree_from_annotation(root: Path, annotation: Path, size: int = 8) -> Path:
    """SGSeg tree with placeholder PNGs for every entry of a real ``annotation.json`` (copied to the root).

    Args:
        root: Dataset root (created).
        annotation: The annotation file.
        size: Placeholder side.

    Returns:
        ``root``.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(annotation, root / "annotation.json")
    data = json.loads(Path(annotation).read_text(encoding="utf-8"))
    png = _master(root, size)
    for key in ("train", "valid", "test"):
        masks = [e["image_path"] for e in data[key]]
        _fill(root / key / "masks", masks, png)
        _fill(root / key / "images", [m[len("mask_") :] for m in masks], png)
    return root


def make_qata_tree_from_csv(
    root: Path,
    train_csv: Path,
    test_csv: Path,
    layout: str = "guidedecoder",
    annotation: Path | None = None,
    size: int = 8,
) -> Path:
    """GuideDecoder or Kaggle tree with placeholder PNGs for every row of real ``train.csv``/``test.csv``.

    Args:
        root: Dataset root (created).
        train_csv: LViT/GuideDecoder ``train.csv`` (``Image`` = mask name, original case).
        test_csv: ``test.csv``.
        layout: ``"guidedecoder"`` (CSVs in ``prompt/``) or ``"kaggle"`` (CSVs at the root).
        annotation: Optional ``annotation.json`` copied next to the CSVs.
        size: Placeholder side.

    Returns:
        ``root``.
    """
    if layout not in ("guidedecoder", "kaggle"):
        raise ValueError(f"layout {layout!r} is not a CSV layout")
    root = Path(root)
    csv_dir = root / "prompt" if layout == "guidedecoder" else root
    csv_dir.mkdir(parents=True, exist_ok=True)
    png = _master(root, size)
    for split, source in (("train", train_csv), ("test", test_csv)):
        shutil.copyfile(source, csv_dir / f"{split}.csv")
        folder, image_folder, mask_folder = _QATA_DIRS[layout][split]
        masks = [r.image for r in read_text_table(Path(source), ("image",), ("description",))]
        _fill(root / folder / mask_folder, masks, png)
        _fill(root / folder / image_folder, [m[len("mask_") :] for m in masks], png)
    if annotation is not None:
        shutil.copyfile(annotation, csv_dir / "annotation.json")
    return root


def make_mosmed_tree_from_csv(
    root: Path, text_files: Mapping[Any, Path], layout: str = "kaggle", text_dir: str = "", size: int = 8
) -> Path:
    """MosMed tree with placeholder PNGs for every row of real text files (copied under their own names).

    Args:
        root: Dataset root (created).
        text_files: ``{"train": path, "val": path, "test": path}``.
        layout: ``"kaggle"``, ``"images_gts"`` or ``"split_folders"``.
        text_dir: Folder for the copied text files, relative to the root.
        size: Placeholder side.

    Returns:
        ``root``.
    """
    root = Path(root)
    (root / text_dir).mkdir(parents=True, exist_ok=True)
    png = _master(root, size)
    for split in SPLITS:
        source = Path(text_files[split])
        shutil.copyfile(source, root / text_dir / source.name)
        names = [r.image for r in read_text_table(source, ("image",), ("text", "description"))]
        image_folder, mask_folder = _MOSMED_DIRS[layout][split]
        _fill(root / image_folder, names, png)
        _fill(root / mask_folder, names, png)
    return root


def make_text_folder(
    folder: Path,
    n: int = 6,
    size: int = 64,
    seed: int = 0,
    *,
    prefix: str = "extra",
    style: str = "comma",
) -> tuple[Path, Path, list[str]]:
    """A folder of ``n`` random mask-less images and a CSV naming each with a text (``Image``, ``Description``).

    The format of ``--data.predict_images/--data.predict_texts`` and ``--data.unlabeled_images/--data.unlabeled_texts``
    (:func:`textseg.data.folder.folder_records`).

    Args:
        folder: The image folder to create; the CSV is written beside it as ``<folder name>.csv``.
        n: Number of images.
        size: Side of the square images in pixels.
        seed: Seed of the pixels and positions.
        prefix: File names are ``<prefix>_<i>.png``.
        style: CSV style of ``_write_csv``: ``"comma"``, ``"semicolon"`` or ``"semimedref"``.

    Returns:
        ``(folder, csv_path, image file names)``.
    """
    rng = np.random.default_rng(seed)
    names, rows = [], []
    for i in range(n):
        position = _random_position(rng)
        image, _ = _draw(rng, size, position)
        name = f"{prefix}_{i}.png"
        write_png(folder / name, image)
        names.append(name)
        rows.append([name, lvit_text(position)])
    table = _write_csv(folder.parent / f"{folder.name}.csv", ["Image", "Description"], rows, style)
    return folder, table, names
