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
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from textseg.data.base import Record, as_position, raise_problems
from textseg.data.io import DirIndex, read_image, read_size, read_text_table
from textseg.errors import DataError

__all__ = ["IMAGE_COLUMNS", "TEXT_COLUMNS", "folder_records"]

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
