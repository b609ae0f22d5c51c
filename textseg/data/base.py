"""Dataset records and the common dataset interface (the registry of datasets is :mod:`textseg.data.registry`).

A dataset is a list of :class:`Record` per canonical split (``docs/data.md`` §5): QaTa-COV19 uses SGSeg's
``annotation.json`` split (5,716 / 1,429 / 2,113), MosMedData+ the LViT text files (2,183 / 273 / 273). All
structural problems (missing files, rows without images, images without rows, duplicates, empty texts) are
found when the dataset is constructed; :func:`validate_dataset` (``fit``'s and ``textseg data check``'s one validator,
``docs/data.md`` §12) additionally finds empty splits, decodes the files and applies the text encoder's token limit.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, cast

from textseg.data.io import DirIndex, empty_text_reason, is_unterminated, read_image_float, read_mask, read_size
from textseg.data.splits import Rounding, check_ratio, select_labeled
from textseg.errors import DataError

if TYPE_CHECKING:
    from textseg.ops.text import TokenLimit

__all__ = [
    "NUM_REGIONS",
    "REGION_NAMES",
    "SPLITS",
    "DataProblems",
    "Findings",
    "Position",
    "Record",
    "SegDataset",
    "Split",
    "record_texts",
    "validate_dataset",
]

Split = Literal["train", "val", "test"]
#: The canonical split names, in order.
SPLITS: tuple[Split, ...] = ("train", "val", "test")
Position = tuple[int, int, int, int, int, int]
#: Number of lung regions of a positional label.
NUM_REGIONS = 6
#: Region order of a positional label (SGSeg, ``docs/data.md`` §4.1); left/right = image side (§9).
REGION_NAMES: tuple[str, ...] = ("L-up", "L-mid", "L-low", "R-up", "R-mid", "R-low")
#: Problems listed in full in one :class:`DataError` message; the rest are counted.
MAX_PROBLEMS_SHOWN = 20


@dataclass(frozen=True)
class Record:
    """One image/mask/text sample.

    Attributes:
        id: Unique id in the dataset: the image file name without extension, as on disk.
        image: Image file.
        mask: Mask file (``None`` for images to predict, which have no mask).
        text: Referring text.
        position: Positional label ``[L-up, L-mid, L-low, R-up, R-mid, R-low]`` (image side, ``docs/data.md`` §4).
        modality: 0 = X-ray (QaTa-COV19), 1 = CT (MosMedData+).
        key: Name used by the label-ratio algorithm (QaTa: lower-cased mask name; MosMed: ``Image`` name).
    """

    id: str
    image: Path
    mask: Path | None
    text: str
    position: Position
    modality: int
    key: str


class DataProblems(DataError):
    """A :class:`DataError` of several problems: the message shows the first :data:`MAX_PROBLEMS_SHOWN`.

    Attributes:
        problems: Every problem, one line each (``textseg data check`` lists and counts these).
    """

    def __init__(self, message: str, problems: Sequence[str]) -> None:
        super().__init__(message)
        self.problems = list(problems)


def raise_problems(problems: Sequence[str], context: str) -> None:
    """Raise one :class:`DataProblems` listing ``problems`` (no-op if there are none).

    Args:
        problems: Human-readable problems, each naming its file or value.
        context: What was being read (e.g. the dataset root), for the first line of the message.

    Raises:
        DataError: If ``problems`` is not empty.
    """
    if not problems:
        return
    shown = "\n".join(f"  - {p}" for p in problems[:MAX_PROBLEMS_SHOWN])
    more = f"\n  ... and {len(problems) - MAX_PROBLEMS_SHOWN} more" if len(problems) > MAX_PROBLEMS_SHOWN else ""
    plural = "s" if len(problems) > 1 else ""
    raise DataProblems(f"{len(problems)} problem{plural} in {context}:\n{shown}{more}", problems)


def require_root(root: str | Path, dataset: str) -> Path:
    """Check that a dataset root exists and is a directory.

    Args:
        root: The root path.
        dataset: Dataset name for the message.

    Returns:
        ``root`` as a :class:`Path`.

    Raises:
        DataError: If the root is missing or not a directory.
    """
    path = Path(root).expanduser()
    if not path.exists():
        raise DataError(f"{dataset} root {path} does not exist")
    if not path.is_dir():
        raise DataError(f"{dataset} root {path} is not a directory")
    return path


def as_position(value: Any, where: str) -> Position:
    """Validate a 6-dim 0/1 positional label.

    Args:
        value: A sequence of six 0/1 integers (bools accepted).
        where: Where the value came from (file and entry), for the message.

    Returns:
        The label as a tuple of ints.

    Raises:
        DataError: If the value is not six 0/1 values.
    """
    items = list(value) if isinstance(value, (list, tuple)) else []
    if len(items) != NUM_REGIONS or not all(isinstance(v, (int, float)) and v in (0, 1) for v in items):
        raise DataError(f"{where}: positional label {value!r} is not six 0/1 values")
    return cast(Position, tuple(int(v) for v in items))


class TextPositions:
    """Positional labels parsed from referring texts by :func:`textseg.ops.text.position_label` (cached per text).

    Args:
        bare_side: How a side named without a level ("left lung") is read: ``"all"`` three levels or
            ``"none"`` (``docs/data.md`` §4.3).
    """

    def __init__(self, bare_side: Literal["all", "none"] = "all") -> None:
        if bare_side not in ("all", "none"):
            raise DataError(f"bare_side {bare_side!r} is not 'all' or 'none'")
        from textseg.ops.text import position_label  # lazy: keeps the dataset readers independent of text code

        self._parse = position_label
        self._bare_side = bare_side
        self._cache: dict[str, Position] = {}

    def __call__(self, text: str, where: str) -> Position:
        """Return the label of ``text``; ``where`` names the source row for error messages."""
        if text not in self._cache:
            self._cache[text] = as_position(self._parse(text, bare_side=self._bare_side), where)
        return self._cache[text]


@dataclass
class PendingRow:
    """A text row waiting to be paired with its image and mask files.

    Attributes:
        image_name: Expected image file name (matched case-insensitively).
        mask_name: Expected mask file name (matched case-insensitively).
        text: Referring text.
        position: Positional label.
        key: Split-algorithm key.
        source: ``file:line`` or ``file[split][i]`` of the row, for messages.
    """

    image_name: str
    mask_name: str
    text: str
    position: Position
    key: str
    source: str


class RecordBuilder:
    """Pair text rows with image/mask files and collect every problem before raising.

    Files are matched case-insensitively (``docs/data.md`` §7). After all rows are added, :meth:`finish` reports
    images and masks that no row used, duplicate ids and duplicate keys.

    Args:
        modality: Modality code stored in the records.
    """

    def __init__(self, modality: int) -> None:
        self.modality = modality
        self.problems: list[str] = []
        self._indexes: dict[Path, DirIndex] = {}
        self._failed: set[Path] = set()
        self._used: dict[Path, set[str]] = {}
        self._ids: dict[str, str] = {}
        self._keys: dict[str, str] = {}

    def index(self, directory: Path) -> DirIndex | None:
        """Case-insensitive index of ``directory`` (cached); records a problem and returns None if missing."""
        if directory in self._failed:
            return None
        if directory not in self._indexes:
            try:
                self._indexes[directory] = DirIndex.scan(directory)
            except DataError as exc:
                self.problems.append(str(exc))
                self._failed.add(directory)
                return None
            self._used[directory] = set()
        return self._indexes[directory]

    def add(self, row: PendingRow, image_dir: Path, mask_dir: Path) -> Record | None:
        """Pair one row; records a problem and returns None if its image or mask is missing."""
        images, masks = self.index(image_dir), self.index(mask_dir)
        if images is None or masks is None:
            return None
        if row.key in self._keys:
            self.problems.append(f"duplicate row for {row.key}: {self._keys[row.key]} and {row.source}")
            return None
        self._keys[row.key] = row.source
        image = images.get(row.image_name)
        mask = masks.get(row.mask_name)
        if mask is not None:
            self._used[mask_dir].add(mask.name.lower())
        if image is not None:
            self._used[image_dir].add(image.name.lower())
        empty = empty_text_reason(row.text)
        if empty:  # after marking the files used: they do have a (bad) row
            self.problems.append(f"{row.source}: {empty} for image {row.image_name}")
            return None
        if image is None:
            self.problems.append(f"{row.source}: text row names image {row.image_name}, not found in {image_dir}")
            return None
        if mask is None:
            self.problems.append(f"image {image} has no mask: expected {mask_dir / row.mask_name}")
            return None
        record = Record(
            id=image.stem,
            image=image,
            mask=mask,
            text=row.text.strip(),
            position=row.position,
            modality=self.modality,
            key=row.key,
        )
        if record.id in self._ids:
            self.problems.append(f"duplicate id {record.id}: {self._ids[record.id]} and {row.source}")
            return None
        self._ids[record.id] = row.source
        return record

    def finish(
        self, context: str, image_dirs: Iterable[Path], mask_dirs: Iterable[Path], text_files: Iterable[Path] = ()
    ) -> None:
        """Report unused images/masks in the given folders and raise if any problem was found.

        Args:
            context: Dataset description for the error message.
            image_dirs: Folders whose every image must have a text row.
            mask_dirs: Folders whose every mask must belong to a text row.
            text_files: The text files the rows came from. When there are problems, a file that does not end with a
                line break is named first as probably truncated (the likely cause of images without a text row).

        Raises:
            DataError: Listing every problem found.
        """
        for what, dirs in (("image", image_dirs), ("mask", mask_dirs)):
            for directory in dict.fromkeys(dirs):
                index = self._indexes.get(directory)
                if index is None:
                    continue
                used = self._used[directory]
                for name, path in index.files.items():
                    if name not in used:
                        self.problems.append(f"{what} {path} has no text row")
        if self.problems:
            cut = [
                f"text file {path} does not end with a line break: it looks truncated (rows missing at its end)"
                for path in dict.fromkeys(text_files)
                if is_unterminated(path)
            ]
            self.problems[:0] = cut
        raise_problems(self.problems, context)


class SegDataset(abc.ABC):
    """A text-guided segmentation dataset with canonical train/val/test splits.

    Subclasses read one dataset layout in their constructor and call :meth:`_set_splits`.

    Attributes:
        name: ``"qata"``, ``"mosmed"`` or ``"synthetic"``.
        modality: 0 = X-ray, 1 = CT.
        layout: The detected on-disk layout.
        root: Dataset root.
        rounding: Rounding of the label-ratio count (QaTa ``"round"``, MosMed ``"floor"``; ``docs/data.md`` §6).
    """

    name: ClassVar[str] = ""
    modality: ClassVar[int] = 0
    rounding: ClassVar[Rounding] = "round"

    def __init__(self, root: Path, layout: str) -> None:
        self.root = root
        self.layout = layout
        self._splits: dict[str, list[Record]] = {s: [] for s in SPLITS}

    def _set_splits(self, splits: Mapping[str, Sequence[Record]]) -> None:
        """Store the records of every split (ids and keys must be unique across splits)."""
        problems: list[str] = []
        ids: dict[str, str] = {}
        for split in SPLITS:
            for rec in splits.get(split, ()):
                if rec.id in ids:
                    problems.append(f"duplicate id {rec.id} in splits {ids[rec.id]} and {split}")
                ids.setdefault(rec.id, split)
        raise_problems(problems, f"{self.name} dataset at {self.root}")
        self._splits = {s: list(splits.get(s, ())) for s in SPLITS}

    def __repr__(self) -> str:
        sizes = ", ".join(f"{s}={len(self._splits[s])}" for s in SPLITS)
        cls = type(self).__name__
        return f"{cls}(name={self.name!r}, layout={self.layout!r}, root={str(self.root)!r}, {sizes})"

    def records(self, split: Split) -> list[Record]:
        """Records of one split, in canonical order.

        Args:
            split: ``"train"``, ``"val"`` or ``"test"``.

        Returns:
            A new list of the split's records.

        Raises:
            DataError: For an unknown split name.
        """
        if split not in self._splits:
            raise DataError(f"unknown split {split!r}; expected one of {list(SPLITS)}")
        return list(self._splits[split])

    @abc.abstractmethod
    def split_names(self) -> list[str]:
        """Names the label-ratio algorithm shuffles, in the order Semi-MedRef feeds them (``docs/data.md`` §6)."""

    def labeled_split(self, ratio: float, seed: int = 42) -> tuple[list[Record], list[Record]]:
        """(labeled, unlabeled) subsets of the train split, exactly Semi-MedRef's published subsets.

        Args:
            ratio: Label ratio in ``(0, 1]``. 1.0 returns ``(all train, all train)`` (Semi-MedRef trains the
                unlabeled branch on the full set at ratio 1).
            seed: Seed of the shuffle (Semi-MedRef: 42).

        Returns:
            Labeled and unlabeled records, both in the original train order.

        Raises:
            DataError: If ``ratio`` is outside ``(0, 1]``.
        """
        value = check_ratio(ratio)
        train = self.records("train")
        if value == 1.0:
            return train, list(train)
        chosen = set(select_labeled(self.split_names(), value, seed, self.rounding))
        labeled = [r for r in train if r.key in chosen]
        unlabeled = [r for r in train if r.key not in chosen]
        return labeled, unlabeled

    def check(self, splits: Iterable[Split] = SPLITS, full: bool = True) -> None:
        """Validate the files before training: :func:`validate_dataset` without a token limit, raising its problems.

        Args:
            splits: Splits to check (each must hold records).
            full: Decode every image and mask: readable PNG, image/mask same size, mask binary. With
                ``False`` only existence and the sizes in the PNG headers are checked (fast).

        Raises:
            DataError: Listing every problem (file name and problem).
        """
        raise_problems(validate_dataset(self, tuple(splits), full=full).problems, f"{self.name} dataset at {self.root}")


@dataclass
class Findings:
    """What :func:`validate_dataset` found.

    Attributes:
        problems: Bad input, one line each (fatal).
        large_masks: ``(mask, foreground share)`` of the masks above ``max_foreground_share`` (a warning: an
            inverted mask has ~90 % foreground).
    """

    problems: list[str] = field(default_factory=list)
    large_masks: list[tuple[Path, float]] = field(default_factory=list)

    def mask_lines(self) -> list[str]:
        """``"mask <file>: foreground 91.2 %"`` per large mask."""
        return [f"mask {path}: foreground {share:.1%}" for path, share in self.large_masks]


def _check_record(rec: Record, split: str, full: bool, max_foreground: float, out: Findings) -> None:
    """The file checks of one record (``full``: decode; else headers only), into ``out``."""
    empty = empty_text_reason(rec.text)
    if empty:
        out.problems.append(f"{empty} for image {rec.image}")
    try:
        as_position(rec.position, f"record {rec.id}")
    except DataError as exc:
        out.problems.append(str(exc))
    if rec.mask is None:
        out.problems.append(f"no mask for image {rec.image} in the {split} split")
        return
    try:
        if full:
            image_hw = read_image_float(rec.image).shape  # decoded as training decodes it
            mask = read_mask(rec.mask)
            mask_hw = mask.shape
            share = float(mask.mean()) if mask.size else 0.0
            if share > max_foreground:
                out.large_masks.append((rec.mask, share))
        else:
            image_hw = read_size(rec.image, "image")
            mask_hw = read_size(rec.mask, "mask")
    except DataError as exc:
        out.problems.append(str(exc))
        return
    if tuple(image_hw) != tuple(mask_hw):
        out.problems.append(
            f"size mismatch: image {rec.image} is {image_hw[1]}x{image_hw[0]} but mask "
            f"{rec.mask} is {mask_hw[1]}x{mask_hw[0]} (WxH)"
        )


def validate_dataset(
    data: SegDataset,
    splits: Sequence[Split],
    *,
    full: bool | None = True,
    max_foreground_share: float = 1.0,
    tokens: TokenLimit | None = None,
) -> Findings:
    """The one validator of ``fit`` (``TextSegDataModule.setup``) and ``textseg data check`` (``docs/data.md`` §12).

    Args:
        data: The dataset (its structural problems were found when it was read).
        splits: The splits the run needs; an empty one is a problem.
        full: ``True`` decodes every image and mask (readable, binary mask, same size, foreground share); ``False``
            reads the PNG headers only; ``None`` checks no file (``check="off"``).
        max_foreground_share: A mask whose foreground share is above this is listed in ``large_masks`` (``full``).
        tokens: The text encoder's token limit; ``None`` skips it.

    Returns:
        The problems (empty splits, empty-in-effect texts, bad files, texts over the token limit) and large masks.
    """
    out = Findings()
    for split in splits:
        records = data.records(split)
        if not records:
            out.problems.append(f"the {split} split of the {data.name} dataset at {data.root} is empty")
        if full is not None:
            for rec in records:
                _check_record(rec, split, full, max_foreground_share, out)
    if tokens is not None:
        out.problems += tokens.problems(record_texts((data.name, s, r) for s in splits for r in data.records(s)))
    return out


def record_texts(records: Iterable[tuple[str, str, Record]]) -> dict[str, str]:
    """Each distinct text of ``(dataset, split, record)`` triples with where it first occurs, for messages."""
    texts: dict[str, str] = {}
    for name, split, rec in records:
        texts.setdefault(rec.text, f"{name} {split} record {rec.id!r} (image {rec.image})")
    return texts
