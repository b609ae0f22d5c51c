"""Records for a plain folder of images plus a CSV of referring texts (``textseg predict`` on new data).

The folder holds the images (any of :data:`~textseg.data.io.IMAGE_EXTENSIONS`); the CSV names one image per row
and its referring text. Column names and delimiters follow the public text files (``docs/data.md`` §3): an image column
``Image``/``image`` and a text column ``Description``/``text``/``Text``, comma or semicolon separated
(:func:`~textseg.data.io.read_text_table` detects the delimiter from the header). File names are matched
case-insensitively (``docs/data.md`` §7); a row naming a QaTa *mask* (``mask_X.png``, as in GuideDecoder's
``prompt/*.csv``) is matched to the image ``X.png`` when no file of that name exists.

There are no masks: every :class:`~textseg.data.base.Record` has ``mask=None``. The positional label comes from
:func:`textseg.ops.text.position_label`. Every image is decoded once before the records are returned (``check="full"``),
so that a corrupt file stops ``textseg predict`` before the first prediction is written.

The same folder + CSV format adds mask-less image-text pairs to the unlabeled pool of semi-supervised training
(``TextSegDataModule(unlabeled_images=..., unlabeled_texts=...)``): :func:`unlabeled_pools` checks the arguments
when the DataModule is built and :func:`read_unlabeled_pools` reads them, attributed to the run's datasets, in
``setup("fit")``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from textseg.data.base import Record, SegDataset, as_position, raise_problems
from textseg.data.io import DirIndex, read_image, read_size, read_text_table
from textseg.errors import DataError

__all__ = [
    "IMAGE_COLUMNS",
    "TEXT_COLUMNS",
    "UnlabeledPool",
    "folder_records",
    "read_unlabeled_pools",
    "unlabeled_pools",
]

#: Accepted (lower-case) names of the image column.
IMAGE_COLUMNS: tuple[str, ...] = ("image",)
#: Accepted (lower-case) names of the text column, in order of preference.
TEXT_COLUMNS: tuple[str, ...] = ("description", "text")
#: Prefix of QaTa mask names; a row ``mask_X.png`` may name the image ``X.png``.
MASK_PREFIX = "mask_"


def folder_records(
    images: str | Path,
    texts: str | Path,
    modality: int = 0,
    *,
    bare_side: Literal["all", "none"] = "all",
    check: Literal["full", "fast", "off"] = "full",
) -> list[Record]:
    """Pair a folder of images with a CSV of referring texts.

    Args:
        images: Folder of images.
        texts: CSV file with an image column (``Image``/``image``) and a text column (``Description``/``text``/
            ``Text``), comma or semicolon separated.
        modality: Modality code stored in the records (0 = X-ray, 1 = CT).
        bare_side: Positional-label convention for a side named without a level (``docs/data.md`` §4.3).
        check: Validation of the image files named by the CSV: ``"full"`` decodes every image, ``"fast"`` reads the
            PNG headers only, ``"off"`` checks nothing beyond their existence.

    Returns:
        One record per CSV row, in file order, with ``mask=None``, ``id`` = image file name without extension and
        ``key`` = the image file name.

    Raises:
        DataError: If the folder or the CSV is missing or unreadable, a row names an image that is not in the folder
            (naming the CSV file, line and image), an image of the folder has no text row, or two rows resolve to
            the same image id, or (``check``) an image is unreadable or corrupt. All problems are listed in one
            message.
    """
    from textseg.ops.text import position_label  # lazy: keeps the dataset readers independent of text code

    folder = Path(images).expanduser()
    table = Path(texts).expanduser()
    if not folder.is_dir():
        raise DataError(f"image folder not found: {folder}")
    if modality not in (0, 1):
        raise DataError(f"modality must be 0 (X-ray) or 1 (CT), got {modality!r}")
    if check not in ("full", "fast", "off"):
        raise DataError(f"check {check!r} is not 'full', 'fast' or 'off'")
    index = DirIndex.scan(folder)
    rows = read_text_table(table, IMAGE_COLUMNS, TEXT_COLUMNS)
    problems: list[str] = []
    records: list[Record] = []
    used: set[str] = set()
    ids: dict[str, str] = {}
    for row in rows:
        where = f"text file {table}, line {row.line}"
        image = index.get(row.image)
        if image is None and row.image.lower().startswith(MASK_PREFIX):
            image = index.get(row.image[len(MASK_PREFIX) :])
        if image is None:
            problems.append(f"{where}: image {row.image} not found in {folder}")
            continue
        if image.stem in ids:
            problems.append(f"{where}: image {image.name} has the same id as the row at {ids[image.stem]}")
            continue
        ids[image.stem] = where
        used.add(image.name.lower())
        try:
            if check == "full":
                read_image(image)
            elif check == "fast":
                read_size(image, "image")
        except DataError as exc:
            problems.append(f"{where}: {exc}")
            continue
        try:
            position = as_position(position_label(row.text, bare_side=bare_side), where)
        except DataError as exc:
            problems.append(str(exc))
            continue
        records.append(
            Record(
                id=image.stem,
                image=image,
                mask=None,
                text=row.text,
                position=position,
                modality=modality,
                key=image.name,
            )
        )
    for name, path in index.files.items():
        if name not in used:
            problems.append(f"image {path} has no text row in {table}")
    if not rows and not index.files:
        problems.append(f"no images in {folder} and no rows in {table}")
    raise_problems(problems, f"image folder {folder} with texts {table}")
    return records


@dataclass(frozen=True)
class UnlabeledPool:
    """One folder of extra mask-less image-text pairs for the unlabeled pool of semi-supervised training.

    Attributes:
        images: Folder of images.
        texts: CSV naming a text for every image of ``images`` (the format of :func:`folder_records`).
        modality: Modality code (0 = X-ray, 1 = CT), or ``None`` for the modality of the dataset it belongs to.
        dataset: The dataset of the run the pairs are counted with, or ``None`` to decide it in
            :func:`read_unlabeled_pools` (the only dataset of the run, or the one with the pool's modality).
    """

    images: str
    texts: str
    modality: int | None = None
    dataset: str | None = None


def _as_list(name: str, value: Any, n: int) -> list[Any]:
    """``value`` as ``n`` per-pool values: ``None`` or a scalar for all, a one-item list for all, or ``n`` items."""
    if value is None or isinstance(value, str | int):
        return [value] * n
    values = list(value)
    if len(values) == 1:
        return values * n
    if len(values) != n:
        raise DataError(
            f"{name} needs one value, or one per unlabeled_images folder ({n}), got {len(values)}: {values}"
        )
    return values


def unlabeled_pools(
    images: str | Sequence[str] | None,
    texts: str | Sequence[str] | None,
    modality: int | Sequence[int] | None,
    dataset: str | Sequence[str] | None,
    run_datasets: Sequence[str],
) -> list[UnlabeledPool]:
    """Check the DataModule's ``unlabeled_*`` arguments (no file is read) and pair them up, one pool per folder.

    Args:
        images: A folder or a list of folders of images.
        texts: One CSV per folder, in the same order.
        modality: ``None``, one code for every folder, or one per folder (each 0 or 1).
        dataset: ``None``, one dataset name of the run for every folder, or one per folder.
        run_datasets: The names of the run's datasets.

    Returns:
        One :class:`UnlabeledPool` per folder (an empty list when ``images`` and ``texts`` are not given).

    Raises:
        DataError: For images without texts (or texts without images), lists of different lengths, a modality
            that is not 0 or 1, a dataset that is not one of ``run_datasets``, ``modality``/``dataset`` without
            ``images``, or a composite run in which a folder has neither a modality nor a dataset.
    """
    folders = [images] if isinstance(images, str) else list(images or [])
    tables = [texts] if isinstance(texts, str) else list(texts or [])
    if not folders and not tables:
        if modality is not None or dataset is not None:
            raise DataError("unlabeled_modality and unlabeled_dataset need unlabeled_images and unlabeled_texts")
        return []
    if not folders or not tables:
        raise DataError("unlabeled_images and unlabeled_texts go together: give both or neither")
    if len(folders) != len(tables):
        raise DataError(
            f"unlabeled_images and unlabeled_texts need one CSV per folder, got {len(folders)} folders "
            f"and {len(tables)} CSV files"
        )
    n = len(folders)
    modalities = _as_list("unlabeled_modality", modality, n)
    names = _as_list("unlabeled_dataset", dataset, n)
    bad = [m for m in modalities if m is not None and (isinstance(m, bool) or m not in (0, 1))]
    if bad:
        raise DataError(f"unlabeled_modality must be 0 (X-ray) or 1 (CT), got {bad[0]!r}")
    stray = [d for d in names if d is not None and d not in run_datasets]
    if stray:
        raise DataError(
            f"unlabeled_dataset {stray[0]!r} is not a dataset of this run; the run's datasets are "
            f"{', '.join(repr(d) for d in run_datasets)}"
        )
    pools = [UnlabeledPool(str(f), str(t), m, d) for f, t, m, d in zip(folders, tables, modalities, names, strict=True)]
    vague = [p.images for p in pools if len(run_datasets) > 1 and p.modality is None and p.dataset is None]
    if vague:
        raise DataError(
            f"composite run {list(run_datasets)}: say which dataset the unlabeled folder {vague[0]} belongs to, "
            "with unlabeled_modality (the run's dataset of that modality) or unlabeled_dataset"
        )
    return pools


def _attribute(pool: UnlabeledPool, datas: Mapping[str, SegDataset]) -> str:
    """The dataset of the run that ``pool`` belongs to (see :func:`read_unlabeled_pools`)."""
    where = f"unlabeled folder {pool.images}"
    if pool.dataset is not None:
        name = pool.dataset
    elif len(datas) == 1:
        name = next(iter(datas))
    else:
        same = [n for n, d in datas.items() if d.modality == pool.modality]
        if len(same) != 1:
            found = "no dataset" if not same else f"datasets {', '.join(repr(n) for n in same)}"
            raise DataError(
                f"{where} has modality {pool.modality}, and the run has {found} of that modality: name its "
                f"dataset with unlabeled_dataset (one of {', '.join(repr(n) for n in datas)})"
            )
        name = same[0]
    if pool.modality is not None and pool.modality != datas[name].modality:
        raise DataError(
            f"{where} has modality {pool.modality} but belongs to dataset {name!r} of modality {datas[name].modality}"
        )
    return name


def read_unlabeled_pools(
    pools: Sequence[UnlabeledPool],
    datas: Mapping[str, SegDataset],
    check: Literal["full", "fast", "off"] = "full",
) -> list[tuple[str, list[Record]]]:
    """Read the extra unlabeled pairs and attribute each folder to a dataset of the run.

    A folder belongs to its ``dataset`` if given; otherwise to the run's only dataset, or, in a composite run, to
    the one dataset whose modality is the folder's ``modality``. Its records take that dataset's modality and
    positional-label convention (``bare_side`` of MosMedData+).

    Args:
        pools: The pools from :func:`unlabeled_pools`.
        datas: The run's datasets by name, already read.
        check: Validation of the image files, as in :func:`folder_records`.

    Returns:
        ``(dataset name, records)`` per pool, in the order of ``pools``.

    Raises:
        DataError: Listing, for every folder, the problems :func:`folder_records` finds (a missing image, an
            unreadable file, an empty text, naming the CSV file and line), a folder whose dataset is ambiguous
            (several or no datasets of its modality) or whose modality differs from its dataset's, and an image
            file used twice (by two folders, or by a folder and a dataset of the run).
    """
    errors: list[str] = []
    out: list[tuple[str, list[Record]]] = []
    for pool in pools:
        try:
            name = _attribute(pool, datas)
            data = datas[name]
            bare_side: Literal["all", "none"] = "none" if getattr(data, "bare_side", "all") == "none" else "all"
            records = folder_records(pool.images, pool.texts, data.modality, bare_side=bare_side, check=check)
        except DataError as exc:
            errors.append(str(exc))
            continue
        out.append((name, records))
    if errors:
        raise DataError("unlabeled image-text pairs (unlabeled_images/unlabeled_texts):\n" + "\n".join(errors))
    owner: dict[Path, str] = {}
    for name, data in datas.items():
        for split in ("train", "val", "test"):
            for rec in data.records(split):
                owner.setdefault(rec.image.resolve(), f"the {split} image {rec.id} of dataset {name!r}")
    problems: list[str] = []
    for pool, (_, records) in zip(pools, out, strict=True):
        for rec in records:
            path = rec.image.resolve()
            if path in owner:
                problems.append(f"unlabeled image {rec.image} (texts {pool.texts}) is also {owner[path]}")
            owner.setdefault(path, f"an unlabeled image of {pool.texts}")
    raise_problems(problems, "the unlabeled image-text pairs")
    return out
