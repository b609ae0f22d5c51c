"""MosMedData+ (Kaggle ``maedemaftouni/covid19-ct-scan-lesion-segmentation-dataset``) with LViT texts.

Layouts (``docs/data.md`` §1.2, §2), folder and file names matched case-insensitively:

* ``"kaggle"`` -- ``frames/`` + ``masks/`` (image and mask share the file name; Semi-MedRef's layout);
* ``"images_gts"`` -- ``Images/`` + ``GTs/``;
* ``"split_folders"`` -- ``{Train,Val,Test}/{frames|Images}/`` + ``{masks|GTs}/`` (MMI-UNet style).

Text files (found at the root or in ``prompt/``, ``prompts/``, ``text/``, ``data_splits/``,
``data_splits/MosMed/``): the LViT semicolon CSVs ``Train_text_MosMedData+ 1(in).csv``,
``Val_text_MosMedData+ 1(in).csv``, ``Test_text_MosMedData+(in).csv`` (``Image;text``), Semi-MedRef's comma
versions (``Image,text[,pseudo_label]``, quoted, CRLF, BOM; ``.plabel.csv`` accepted) or GuideDecoder-style
``{train,val,test}.csv``. The delimiter is detected per file from the header. The three files are the
canonical splits (2,183 / 273 / 273, ``docs/data.md`` §5).

Positional labels are parsed from the text by :func:`textseg.ops.text.position_label` with the ``bare_side``
convention (``docs/data.md`` §4.3; default ``"all"`` = Semi-MedRef's ratio runs). The label-ratio split sorts the
unique image names code-point-wise (case-sensitive) and uses floor rounding (§6).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

from textseg.data.base import (
    SPLITS,
    PendingRow,
    Record,
    RecordBuilder,
    SegDataset,
    Split,
    TextPositions,
    require_root,
)
from textseg.data.io import TextRow, find_child, find_subdir, read_text_table
from textseg.errors import DataError

__all__ = ["LAYOUTS", "MosMedDataPlus", "find_text_files"]

#: Detected layouts and what identifies them (used in the "unknown layout" message).
LAYOUTS: Mapping[str, str] = {
    "kaggle": "frames/ + masks/",
    "images_gts": "Images/ + GTs/",
    "split_folders": "{Train,Val,Test}/{frames|Images}/ + {masks|GTs}/",
}
#: Folders searched for the text files, relative to the root, in order of preference.
TEXT_DIRS: tuple[str, ...] = ("", "prompt", "prompts", "text", "data_splits", "data_splits/MosMed")
#: Accepted text-file names per split (case-insensitive).
_TEXT_PATTERNS: Mapping[Split, re.Pattern[str]] = {
    "train": re.compile(r"^train(?:_text_mosmeddata\+.*\(in\))?(?P<plabel>\.plabel)?\.csv$", re.IGNORECASE),
    "val": re.compile(r"^val(?:_text_mosmeddata\+.*\(in\))?(?P<plabel>\.plabel)?\.csv$", re.IGNORECASE),
    "test": re.compile(r"^test(?:_text_mosmeddata\+.*\(in\))?(?P<plabel>\.plabel)?\.csv$", re.IGNORECASE),
}
#: Split folder names of the ``split_folders`` layout.
_SPLIT_DIRS: Mapping[Split, tuple[str, ...]] = {
    "train": ("train",),
    "val": ("val", "valid"),
    "test": ("test",),
}
_IMAGE_DIRS = ("frames", "images")
_MASK_DIRS = ("masks", "gts")


def _rows(path: Path) -> list[TextRow]:
    """Rows of a MosMed text file (``Image`` + ``text``/``Description`` columns)."""
    return read_text_table(path, ("image",), ("text", "description"))


def find_text_files(root: Path) -> dict[Split, Path]:
    """Locate the train/val/test text files of a MosMedData+ root.

    Plain CSVs are preferred over ``.plabel.csv`` files. If several candidates remain for one split (e.g. the
    LViT semicolon file at the root and Semi-MedRef's comma file in ``data_splits/``), they must hold the same
    ``(Image, text)`` rows; otherwise the choice would be arbitrary and a :class:`DataError` is raised.

    Args:
        root: Dataset root.

    Returns:
        The chosen file per split.

    Raises:
        DataError: If a split has no text file, or conflicting candidates.
    """
    candidates: dict[Split, list[tuple[bool, int, Path]]] = {s: [] for s in SPLITS}
    for order, rel in enumerate(TEXT_DIRS):
        folder = find_subdir(root, rel)
        if folder is None:
            continue
        for entry in sorted(folder.iterdir()):
            if not entry.is_file():
                continue
            for split, pattern in _TEXT_PATTERNS.items():
                match = pattern.match(entry.name)
                if match:
                    candidates[split].append((match.group("plabel") is not None, order, entry))
    chosen: dict[Split, Path] = {}
    for split in SPLITS:
        found = sorted(candidates[split], key=lambda c: (c[0], c[1]))
        if not found:
            where = ", ".join(f"{d}/" if d else "the root" for d in TEXT_DIRS)
            raise DataError(f"MosMedData+ at {root}: no {split} text file (looked in {where})")
        best_tier = [c for c in found if c[0] == found[0][0]]
        first = best_tier[0][2]
        reference = [(r.image, r.text) for r in _rows(first)]
        for _, _, other in best_tier[1:]:
            if [(r.image, r.text) for r in _rows(other)] != reference:
                raise DataError(
                    f"MosMedData+ at {root}: conflicting {split} text files {first} and {other} "
                    "(different rows); keep only one"
                )
        chosen[split] = first
    return chosen


class MosMedDataPlus(SegDataset):
    """MosMedData+ CT slices with LViT referring texts.

    Args:
        root: Dataset root (any layout of the module docstring).
        bare_side: Positional-label convention for a side named without a level (``"all"`` three levels, the
            default used by Semi-MedRef's ratio runs, or ``"none"``; ``docs/data.md`` §4.3).

    Raises:
        DataError: Missing root, unknown layout, missing/conflicting/unreadable text files, or any structural
            problem (missing/extra files, duplicates, empty texts), naming the files.
    """

    name = "mosmed"
    modality = 1
    rounding = "floor"

    def __init__(self, root: str | Path, bare_side: Literal["all", "none"] = "all") -> None:
        path = require_root(root, "MosMedData+")
        if bare_side not in ("all", "none"):
            raise DataError(f"bare_side {bare_side!r} is not 'all' or 'none'")
        layout, dirs = self._detect(path)
        super().__init__(path, layout)
        self.bare_side = bare_side
        self.text_files = find_text_files(path)
        positions = TextPositions(bare_side)
        builder = RecordBuilder(self.modality)
        splits: dict[str, list[Record]] = {}
        for split in SPLITS:
            image_dir, mask_dir = dirs[split]
            text_file = self.text_files[split]
            records = []
            for row in _rows(text_file):
                where = f"{text_file}:{row.line}"
                pending = PendingRow(row.image, row.image, row.text, positions(row.text, where), row.image, where)
                records.append(builder.add(pending, image_dir, mask_dir))
            splits[split] = [r for r in records if r is not None]
        used = list(dict.fromkeys(dirs.values()))
        builder.finish(
            f"MosMedData+ ({layout} layout) at {path}",
            [d[0] for d in used],
            [d[1] for d in used],
            self.text_files.values(),
        )
        self._set_splits(splits)

    @staticmethod
    def _detect(root: Path) -> tuple[str, dict[Split, tuple[Path, Path]]]:
        """Detect the layout and return (layout, {split: (image_dir, mask_dir)})."""

        def pair(base: Path | None, images: Sequence[str], masks: Sequence[str]) -> tuple[Path, Path] | None:
            if base is None:
                return None
            image_dir, mask_dir = find_child(base, images), find_child(base, masks)
            return (image_dir, mask_dir) if image_dir is not None and mask_dir is not None else None

        found: dict[str, dict[Split, tuple[Path, Path]]] = {}
        kaggle = pair(root, ["frames"], ["masks"])
        if kaggle is not None:
            found["kaggle"] = dict.fromkeys(SPLITS, kaggle)
        flat = pair(root, ["images"], ["gts"])
        if flat is not None:
            found["images_gts"] = dict.fromkeys(SPLITS, flat)
        per_split = {s: pair(find_child(root, names), _IMAGE_DIRS, _MASK_DIRS) for s, names in _SPLIT_DIRS.items()}
        if any(v is not None for v in per_split.values()):
            found["split_folders"] = {
                s: v if v is not None else (root / s.title() / "frames", root / s.title() / "masks")
                for s, v in per_split.items()
            }
        if not found:
            entries = sorted(p.name + ("/" if p.is_dir() else "") for p in root.iterdir())
            looked = "; ".join(f"{k}: {v}" for k, v in LAYOUTS.items())
            raise DataError(
                f"unknown MosMedData+ layout at {root}. Looked for {looked}. Found: {entries[:30] or 'nothing'}"
            )
        if len(found) > 1:
            raise DataError(f"ambiguous MosMedData+ layout at {root}: matches {sorted(found)}; keep only one")
        layout = next(iter(found))
        return layout, found[layout]

    def split_names(self) -> list[str]:
        """Unique train ``Image`` names sorted code-point-wise (case-sensitive), as Semi-MedRef does."""
        return sorted({r.key for r in self.records("train")})
