"""QaTa-COV19 (Degerli et al., ICIP 2022) with LViT referring texts (Li et al., IEEE TMI 2023).

Three on-disk layouts are detected automatically (``docs/data.md`` §2); directory and file names are matched
case-insensitively, because SGSeg lower-cases the BIMCV names while the Kaggle/LViT files keep
``sub-S08047_ses-E16280`` (§7):

* ``"sgseg"`` -- SGSeg / Semi-MedRef: ``{train,valid,test}/{images,masks}/`` (at the root or under
  ``images/``) and ``annotation.json`` (at the root or in ``prompts/``). Splits are the JSON keys
  ``train``/``valid``/``test``; text = ``caption``; position = ``pseudo_label``.
* ``"guidedecoder"`` -- GuideDecoder: ``Train|Test/{Images,GTs}/`` and ``prompt/{train,test}.csv``
  (``Image,Description``, ``Image`` = mask name, image file = ``Image`` minus ``mask_``).
* ``"kaggle"`` -- the Kaggle archive: ``Train Set|Test Set/{Images,Ground-truths}/`` with LViT's
  ``train.csv``/``test.csv`` at the root or in ``prompt/``.

For the CSV layouts train = the first ``floor(0.8 N)`` rows of ``train.csv`` and val = the rest
(GuideDecoder's rule, identical to SGSeg's split, ``docs/data.md`` §5); test = ``test.csv``. Positions come from an
``annotation.json`` found at the root or in ``prompt/``/``prompts/`` (SGSeg's cleaned labels), otherwise from
:func:`textseg.ops.text.position_label` applied to the raw text.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from textseg.data.base import (
    SPLITS,
    PendingRow,
    Position,
    Record,
    RecordBuilder,
    SegDataset,
    Split,
    TextPositions,
    as_position,
    require_root,
)
from textseg.data.io import find_child, find_subdir, read_text_table
from textseg.errors import DataError

__all__ = ["LAYOUTS", "MASK_PREFIX", "QaTaCOV19", "read_annotation"]

PositionSource = Literal["auto", "annotation", "text"]

#: Prefix of a QaTa mask file name (``mask_covid_1.png`` <-> ``covid_1.png``).
MASK_PREFIX = "mask_"
#: Fraction of ``train.csv`` rows used for training in the CSV layouts (GuideDecoder: first 80 %).
TRAIN_FRACTION_NUM, TRAIN_FRACTION_DEN = 4, 5

#: Detected layouts and what identifies them (used in the "unknown layout" message).
LAYOUTS: Mapping[str, str] = {
    "sgseg": "{train,valid,test}/{images,masks}/ (at the root or under images/) + annotation.json (root or prompts/)",
    "guidedecoder": "{Train,Test}/{Images,GTs}/ + prompt/{train,test}.csv",
    "kaggle": "{Train Set,Test Set}/{Images,Ground-truths}/ + train.csv/test.csv (root or prompt/)",
}

#: Split folder names per layout (matched case-insensitively).
_SGSEG_SPLIT_DIRS: Mapping[Split, tuple[str, ...]] = {
    "train": ("train",),
    "val": ("valid", "val"),
    "test": ("test",),
}
#: JSON keys of the annotation file per split.
_ANNOTATION_KEYS: Mapping[Split, str] = {"train": "train", "val": "valid", "test": "test"}
#: Where an annotation file may live, relative to the root.
_ANNOTATION_DIRS: tuple[str, ...] = ("", "prompts", "prompt")
#: Where the CSV files may live, relative to the root.
_CSV_DIRS: tuple[str, ...] = ("prompt", "prompts", "")


def _find_file(root: Path, dirs: Sequence[str], names: Sequence[str]) -> Path | None:
    """First file called one of ``names`` in the first of ``dirs`` (relative to root) that has one."""
    for rel in dirs:
        folder = find_subdir(root, rel)
        if folder is not None:
            found = find_child(folder, names, kind="file")
            if found is not None:
                return found
    return None


def read_annotation(path: Path) -> dict[Split, list[dict[str, Any]]]:
    """Read and validate an SGSeg ``annotation.json`` (``docs/data.md`` §4.1).

    Args:
        path: The JSON file: ``{"train": [...], "valid": [...], "test": [...]}``, entries with at least
            ``image_path`` (mask name), ``caption`` and ``pseudo_label``.

    Returns:
        Entries per canonical split name (``valid`` -> ``val``).

    Raises:
        DataError: Naming the file (and entry) for invalid JSON, missing keys or malformed entries.
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"annotation file {path} is not readable JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise DataError(f"annotation file {path}: top level must be an object with keys train/valid/test")
    missing = [k for k in _ANNOTATION_KEYS.values() if k not in data]
    if missing:
        raise DataError(f"annotation file {path}: missing key(s) {missing}; found {sorted(data)}")
    out: dict[Split, list[dict[str, Any]]] = {}
    for split, key in _ANNOTATION_KEYS.items():
        entries = data[key]
        if not isinstance(entries, list):
            raise DataError(f"annotation file {path}: {key!r} is not a list")
        for i, entry in enumerate(entries):
            where = f"{path}[{key}][{i}]"
            if not isinstance(entry, dict) or not isinstance(entry.get("image_path"), str):
                raise DataError(f"{where}: entry without a string 'image_path'")
            if not isinstance(entry.get("caption"), str):
                raise DataError(f"{where} ({entry['image_path']}): missing 'caption'")
            if "pseudo_label" not in entry:
                raise DataError(f"{where} ({entry['image_path']}): missing 'pseudo_label'")
        out[split] = entries
    return out


def _image_name(mask_name: str, source: str) -> str:
    """Image file name of a QaTa mask name (``mask_X.png`` -> ``X.png``)."""
    if not mask_name.lower().startswith(MASK_PREFIX) or len(mask_name) <= len(MASK_PREFIX):
        raise DataError(f"{source}: mask name {mask_name!r} does not start with {MASK_PREFIX!r}")
    return mask_name[len(MASK_PREFIX) :]


class QaTaCOV19(SegDataset):
    """QaTa-COV19 with referring texts, in any of the three layouts of the module docstring.

    Args:
        root: Dataset root.
        positions: Source of the positional labels: ``"annotation"`` (an ``annotation.json`` is required),
            ``"text"`` (:func:`textseg.ops.text.position_label` on the text) or ``"auto"`` (the annotation if one
            is found, else the text).

    Raises:
        DataError: Missing root, unknown layout, or any structural problem (missing/extra files, duplicates,
            empty texts, missing annotation entries), naming the files.
    """

    name = "qata"
    modality = 0
    rounding = "round"

    def __init__(self, root: str | Path, positions: PositionSource = "auto") -> None:
        path = require_root(root, "QaTa-COV19")
        if positions not in ("auto", "annotation", "text"):
            raise DataError(f"positions {positions!r} is not 'auto', 'annotation' or 'text'")
        layout, dirs = self._detect(path)
        super().__init__(path, layout)
        self.positions: PositionSource = positions
        self._text_positions: TextPositions | None = None
        annotation_path = _find_file(path, _ANNOTATION_DIRS, ["annotation.json"])
        self.annotation_path = annotation_path
        if positions == "annotation" and annotation_path is None:
            raise DataError(
                f"positions='annotation' but no annotation.json in {path} (looked in the root, prompts/, prompt/)"
            )
        #: The CSV files of the GuideDecoder/Kaggle layouts (``"train"``, ``"test"``); empty for SGSeg's JSON.
        self.text_files: dict[str, Path] = {}
        builder = RecordBuilder(self.modality)
        if layout == "sgseg":
            if annotation_path is None:
                raise DataError(f"SGSeg layout at {path} but no annotation.json (looked in root, prompts/, prompt/)")
            pending = self._rows_from_annotation(annotation_path, positions != "text")
        else:
            pending = self._rows_from_csv(path, annotation_path if positions != "text" else None)
        splits: dict[str, list[Record]] = {}
        for split in SPLITS:
            image_dir, mask_dir = dirs[split]
            records = [builder.add(row, image_dir, mask_dir) for row in pending[split]]
            splits[split] = [r for r in records if r is not None]
        used_dirs = list(dict.fromkeys(dirs.values()))
        builder.finish(
            f"QaTa-COV19 ({layout} layout) at {path}",
            [d[0] for d in used_dirs],
            [d[1] for d in used_dirs],
            self.text_files.values(),
        )
        self._set_splits(splits)

    # ------------------------------------------------------------------------------------------- layout

    @staticmethod
    def _detect(root: Path) -> tuple[str, dict[Split, tuple[Path, Path]]]:
        """Detect the layout and return (layout, {split: (image_dir, mask_dir)})."""
        found: dict[str, dict[Split, tuple[Path, Path]]] = {}

        def pair(split_dir: Path | None, images: str, masks: Sequence[str]) -> tuple[Path, Path] | None:
            if split_dir is None:
                return None
            image_dir = find_child(split_dir, [images])
            mask_dir = find_child(split_dir, masks)
            return (image_dir, mask_dir) if image_dir is not None and mask_dir is not None else None

        # SGSeg: split folders at the root, or under images/ (SGSeg's own data/QaTa/images/{split}/...).
        for base in (root, find_child(root, ["images"])):
            if base is None:
                continue
            sg = {s: pair(find_child(base, names), "images", ["masks"]) for s, names in _SGSEG_SPLIT_DIRS.items()}
            if sg["train"] is not None:
                found["sgseg"] = _complete(sg, base, _SGSEG_SPLIT_DIRS)
                break
        gd_train = pair(find_child(root, ["train"]), "images", ["gts"])
        gd_test = pair(find_child(root, ["test"]), "images", ["gts"])
        if gd_train is not None:
            found["guidedecoder"] = _csv_layout_dirs(root, gd_train, gd_test, ("Test/Images", "Test/GTs"))
        kg_train = pair(find_child(root, ["train set"]), "images", ["ground-truths", "ground_truths"])
        kg_test = pair(find_child(root, ["test set"]), "images", ["ground-truths", "ground_truths"])
        if kg_train is not None:
            found["kaggle"] = _csv_layout_dirs(root, kg_train, kg_test, ("Test Set/Images", "Test Set/Ground-truths"))
        if not found:
            entries = sorted(p.name + ("/" if p.is_dir() else "") for p in root.iterdir())
            looked = "; ".join(f"{k}: {v}" for k, v in LAYOUTS.items())
            raise DataError(
                f"unknown QaTa-COV19 layout at {root}. Looked for {looked}. Found: {entries[:30] or 'nothing'}"
            )
        if len(found) > 1:
            raise DataError(f"ambiguous QaTa-COV19 layout at {root}: matches {sorted(found)}; keep only one")
        layout = next(iter(found))
        return layout, found[layout]

    # ------------------------------------------------------------------------------------------- rows

    def _position_from_text(self, text: str, where: str) -> Position:
        """Positional label parsed from a text (parser created on first use)."""
        if self._text_positions is None:
            self._text_positions = TextPositions("all")
        return self._text_positions(text, where)

    def _rows_from_annotation(self, path: Path, use_labels: bool) -> dict[Split, list[PendingRow]]:
        """Pending rows of the SGSeg layout, from ``annotation.json``."""
        annotation = read_annotation(path)
        rows: dict[Split, list[PendingRow]] = {}
        for split, entries in annotation.items():
            rows[split] = []
            for i, entry in enumerate(entries):
                where = f"{path}[{_ANNOTATION_KEYS[split]}][{i}]"
                mask_name = entry["image_path"].strip()
                text = entry["caption"].strip()
                if use_labels:
                    position = as_position(entry["pseudo_label"], f"{where} ({mask_name})")
                else:
                    position = self._position_from_text(text, f"{where} ({mask_name})")
                rows[split].append(
                    PendingRow(_image_name(mask_name, where), mask_name, text, position, mask_name.lower(), where)
                )
        return rows

    def _rows_from_csv(self, root: Path, annotation_path: Path | None) -> dict[Split, list[PendingRow]]:
        """Pending rows of the GuideDecoder/Kaggle layouts, from ``train.csv``/``test.csv``."""
        csvs: dict[str, Path] = {}
        for which in ("train", "test"):
            found = _find_file(root, _CSV_DIRS, [f"{which}.csv"])
            if found is None:
                raise DataError(f"{self.layout} layout at {root}: no {which}.csv in prompt/, prompts/ or the root")
            csvs[which] = found
        self.text_files = dict(csvs)
        labels: dict[str, Position] = {}
        if annotation_path is not None:
            for split, entries in read_annotation(annotation_path).items():
                for i, entry in enumerate(entries):
                    where = f"{annotation_path}[{_ANNOTATION_KEYS[split]}][{i}]"
                    name = entry["image_path"].strip().lower()
                    if name in labels:
                        raise DataError(f"{where}: duplicate entry for {name}")
                    labels[name] = as_position(entry["pseudo_label"], f"{where} ({name})")

        def position_of(mask_name: str, text: str, where: str) -> Position:
            if annotation_path is None:
                return self._position_from_text(text, where)
            label = labels.get(mask_name.lower())
            if label is None:
                raise DataError(f"{where}: {mask_name} has no entry in {annotation_path}")
            return label

        def make_rows(path: Path, position: Callable[[str, str, str], Position]) -> list[PendingRow]:
            out = []
            for r in read_text_table(path, ("image",), ("description", "text", "caption")):
                where = f"{path}:{r.line}"
                out.append(
                    PendingRow(
                        _image_name(r.image, where),
                        r.image,
                        r.text,
                        position(r.image, r.text, where),
                        r.image.lower(),
                        where,
                    )
                )
            return out

        train_rows = make_rows(csvs["train"], position_of)
        cut = (TRAIN_FRACTION_NUM * len(train_rows)) // TRAIN_FRACTION_DEN
        return {
            "train": train_rows[:cut],
            "val": train_rows[cut:],
            "test": make_rows(csvs["test"], position_of),
        }

    # ------------------------------------------------------------------------------------------- splits

    def split_names(self) -> list[str]:
        """Lower-cased mask names of the train split in canonical order (``annotation.json`` order)."""
        return [r.key for r in self.records("train")]


def _complete(
    dirs: Mapping[Split, tuple[Path, Path] | None], base: Path, names: Mapping[Split, tuple[str, ...]]
) -> dict[Split, tuple[Path, Path]]:
    """Fill missing SGSeg split folders with their expected (non-existent) paths, for later messages."""
    out: dict[Split, tuple[Path, Path]] = {}
    for split in SPLITS:
        pair = dirs.get(split)
        out[split] = pair if pair is not None else (base / names[split][0] / "images", base / names[split][0] / "masks")
    return out


def _csv_layout_dirs(
    root: Path, train: tuple[Path, Path], test: tuple[Path, Path] | None, test_default: tuple[str, str]
) -> dict[Split, tuple[Path, Path]]:
    """Folders of a CSV layout: train and val share the train folders."""
    test_dirs = test if test is not None else (root / test_default[0], root / test_default[1])
    return {"train": train, "val": train, "test": test_dirs}
