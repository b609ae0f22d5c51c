"""Low-level readers: PNG images and masks, text tables and case-insensitive directory listings.

Every reader raises :class:`textseg.errors.DataError` naming the file and the problem, so that bad input is
reported before any training starts.

Orientation: arrays are returned in **display orientation** (``array[row, col]`` = image row, column), as PIL
stores them. Left/right in the referring texts means the image's left/right half (``docs/data.md`` §9); note that
MONAI's ``PILReader`` transposes by default, which these readers do not do.
"""

from __future__ import annotations

import csv
import io
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from textseg.errors import DataError

__all__ = [
    "IMAGE_EXTENSIONS",
    "DirIndex",
    "TextRow",
    "empty_text_reason",
    "find_child",
    "find_subdir",
    "grey_image_float",
    "is_unterminated",
    "read_image",
    "read_image_float",
    "read_mask",
    "read_size",
    "read_text_table",
]

#: File extensions treated as images when listing image/mask folders (lower case).
IMAGE_EXTENSIONS: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})

#: Largest value of a 16-bit image (the scale of 16-bit files in :func:`read_image_float`).
_UINT16_MAX = 65535
#: Number of distinct values listed in a "mask is not binary" message.
_MAX_VALUES_SHOWN = 10
#: Accepted foreground values of a binary mask (with background 0), in order of preference.
_MASK_FOREGROUND_VALUES = (255, 1, _UINT16_MAX)


def _load(path: Path, what: str) -> Image.Image:
    """Open and fully decode an image file (``what``: ``"image"`` or ``"mask"``, for messages); the file is closed.

    Raises:
        DataError: If the file is missing, unreadable, truncated or not an image.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{what} file not found: {path}")
    try:
        with Image.open(path) as im:
            im.load()
            return im.copy()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{what} file {path} is unreadable or corrupt: {exc}") from exc


def _grey(im: Image.Image, path: Path) -> tuple[np.ndarray, int]:
    """The grey values of a decoded image of any common mode, and the largest value of its bit depth.

    Returns:
        ``(values [H, W], top)``: ``uint8`` values with ``top`` 255 (8-bit files, and RGB/RGBA/palette images through
        PIL's ITU-R 601-2 luma transform, alpha dropped), or 16-bit / integer / float values with ``top`` 65535 (255
        for an ``I``/``F`` image whose values all fit in 8 bits).

    Raises:
        DataError: If the mode or the values are not supported.
    """
    mode = im.mode
    if mode == "L":
        return np.asarray(im, dtype=np.uint8), 255
    if mode.startswith("I;16"):
        return np.asarray(im), _UINT16_MAX
    if mode in ("I", "F"):
        raw = np.asarray(im).astype(np.float64)
        lo, hi = float(raw.min()), float(raw.max())
        if lo < 0 or not np.isfinite(raw).all():
            raise DataError(f"image file {path} has unsupported values (mode {mode}, range {lo}..{hi})")
        if hi > _UINT16_MAX:
            raise DataError(f"image file {path} has values above 16 bits (mode {mode}, max {hi})")
        return raw, 255 if hi <= 255 else _UINT16_MAX
    try:
        return np.asarray(im.convert("L"), dtype=np.uint8), 255
    except (ValueError, OSError) as exc:
        raise DataError(f"image file {path} has unsupported mode {mode}: {exc}") from exc


def _to_uint8_grey(im: Image.Image, path: Path) -> np.ndarray:
    """An 8-bit greyscale copy of a decoded image (16-bit values scaled by ``255 / 65535``, rounded)."""
    values, top = _grey(im, path)
    if values.dtype == np.uint8:
        return values.copy()
    return np.round(values.astype(np.float64) * (255.0 / top)).astype(np.uint8)


def read_image(path: Path) -> np.ndarray:
    """Read an image as ``uint8 [H, W]`` grey in display orientation, for display (overlays, previews).

    RGB/RGBA/palette images go through PIL's luma transform, 16-bit ones are scaled to 8 bits; training and evaluation
    read :func:`read_image_float`, which keeps a 16-bit file's precision. A missing, unreadable or corrupt file is a
    :class:`DataError` naming it.
    """
    path = Path(path)
    return _to_uint8_grey(_load(path, "image"), path)


def read_image_float(path: Path) -> np.ndarray:
    """Read an image as greyscale in [0, 1], scaled once by the largest value of its bit depth (``docs/data.md`` §12).

    An 8-bit image gives ``uint8 / 255`` in float32 (exactly the tensors of :func:`read_image` / 255); a 16-bit one
    gives ``uint16 / 65535`` without passing through 8 bits, so a 16-bit PNG holding 12-bit data (DICOM exports:
    values 0..4095, all in [0, 0.0625]) keeps its 4,096 levels. The per-image z-score of the pipeline removes the scale.

    Args:
        path: PNG (or other PIL-readable) file.

    Returns:
        ``float32`` array ``[H, W]`` in display orientation.

    Raises:
        DataError: If the file is missing, unreadable or corrupt; the message names the file.
    """
    return grey_image_float(_load(Path(path), "image"), path)


def grey_image_float(im: Image.Image, source: str | Path = "<image>") -> np.ndarray:
    """An in-memory PIL image as ``float32 [H, W]`` grey in [0, 1], scaled exactly as :func:`read_image_float`."""
    values, top = _grey(im, Path(source))
    if values.dtype == np.uint8:
        out = values.astype(np.float32)
        out *= 1.0 / 255.0
        return out
    return (values.astype(np.float64) / top).astype(np.float32)


def read_mask(path: Path) -> np.ndarray:
    """Read a binary segmentation mask.

    Multi-channel masks have their RGB channels averaged first (as Semi-MedRef does); the values must then be
    ``{0, 255}`` or ``{0, 1}`` (``{0, 65535}`` for 16-bit files). An all-zero mask is valid (MosMed has
    slices without infection).

    Args:
        path: Mask file.

    Returns:
        ``uint8`` array ``[H, W]`` with values in ``{0, 1}``.

    Raises:
        DataError: If the file is unreadable, or the mask is not binary; the message names the file and the
            values found.
    """
    path = Path(path)
    im = _load(path, "mask")
    values: np.ndarray
    if im.mode in ("L", "1", "P"):  # 8-bit (QaTa, MosMed): the distinct values from a 256-bin histogram, not a sort
        values = np.asarray(im.convert("L") if im.mode != "L" else im, dtype=np.uint8)
        found = np.flatnonzero(np.bincount(values.ravel(), minlength=256)).astype(np.float64)
    else:
        if im.mode in ("RGB", "RGBA", "RGBX"):
            values = np.asarray(im)[..., :3].astype(np.float64).mean(axis=-1)
        elif im.mode == "LA":
            values = np.asarray(im)[..., 0].astype(np.float64)
        elif im.mode in ("I", "F") or im.mode.startswith("I;16"):
            values = np.asarray(im).astype(np.float64)
        else:
            values = np.asarray(im.convert("L")).astype(np.float64)
        found = np.unique(values)
    nonzero = found[found != 0]
    if nonzero.size == 0:
        return np.zeros(values.shape, dtype=np.uint8)
    if nonzero.size == 1 and float(nonzero[0]) in _MASK_FOREGROUND_VALUES:
        return (values != 0).astype(np.uint8)
    shown = ", ".join(f"{v:g}" for v in found[:_MAX_VALUES_SHOWN])
    more = f", ... ({found.size} distinct values)" if found.size > _MAX_VALUES_SHOWN else ""
    raise DataError(f"mask file {path} is not binary: found values [{shown}{more}]; expected {{0, 255}} or {{0, 1}}")


def read_size(path: Path, what: str = "image") -> tuple[int, int]:
    """``(height, width)`` of an image from its header, without decoding the pixels (``what`` names it in messages).

    Raises:
        DataError: If the file is missing or its header is unreadable.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{what} file not found: {path}")
    try:
        with Image.open(path) as im:
            width, height = im.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{what} file {path} is unreadable or corrupt: {exc}") from exc
    return int(height), int(width)


# ----------------------------------------------------------------------------------------------- file system


def find_child(parent: Path, names: Iterable[str], *, kind: str = "dir") -> Path | None:
    """Find an entry of ``parent`` whose name equals one of ``names``, ignoring case.

    Args:
        parent: Directory to look in (may not exist).
        names: Accepted names, in order of preference.
        kind: ``"dir"`` or ``"file"``: the kind of entry wanted.

    Returns:
        The first match (by the order of ``names``), or ``None``.

    Raises:
        DataError: If two entries of ``parent`` match the same name case-insensitively (ambiguous).
    """
    if not parent.is_dir():
        return None
    wanted = [n.lower() for n in names]
    matches: dict[str, list[Path]] = {}
    for entry in parent.iterdir():
        ok = entry.is_dir() if kind == "dir" else entry.is_file()
        if ok and entry.name.lower() in wanted:
            matches.setdefault(entry.name.lower(), []).append(entry)
    for name in wanted:
        found = matches.get(name, [])
        if len(found) > 1:
            listed = ", ".join(sorted(p.name for p in found))
            raise DataError(f"ambiguous entries in {parent}: {listed} differ only in case")
        if found:
            return found[0]
    return None


def find_subdir(parent: Path, rel: str) -> Path | None:
    """Resolve a relative folder path case-insensitively, one component at a time.

    Args:
        parent: Starting directory.
        rel: ``"/"``-separated relative path; ``""`` means ``parent`` itself.

    Returns:
        The folder, or ``None`` if a component is missing.
    """
    current: Path | None = parent if parent.is_dir() else None
    for part in [p for p in rel.split("/") if p]:
        if current is None:
            return None
        current = find_child(current, [part])
    return current


@dataclass
class DirIndex:
    """Case-insensitive index of the image files of one directory.

    Hidden files (``.DS_Store``...) and files whose extension is not in :data:`IMAGE_EXTENSIONS` are not
    indexed. Two files whose names differ only in case are an error, because the case-insensitive matching
    of ``docs/data.md`` §7 could not tell them apart.

    Attributes:
        directory: The indexed directory.
        files: Lower-cased file name -> actual path.
    """

    directory: Path
    files: dict[str, Path] = field(default_factory=dict)

    @classmethod
    def scan(cls, directory: Path) -> DirIndex:
        """List ``directory``.

        Args:
            directory: An existing directory.

        Returns:
            The index.

        Raises:
            DataError: If the directory does not exist or two image files differ only in case.
        """
        if not directory.is_dir():
            raise DataError(f"folder not found: {directory}")
        index = cls(directory)
        for entry in sorted(directory.iterdir()):
            if entry.name.startswith(".") or entry.suffix.lower() not in IMAGE_EXTENSIONS:
                continue
            if not entry.is_file():
                continue
            key = entry.name.lower()
            if key in index.files:
                raise DataError(
                    f"ambiguous files in {directory}: {index.files[key].name} and {entry.name} differ only in case"
                )
            index.files[key] = entry
        return index

    def get(self, name: str) -> Path | None:
        """Return the file called ``name`` (case-insensitive), or ``None``."""
        return self.files.get(name.lower())


# ----------------------------------------------------------------------------------------------- text tables


@dataclass(frozen=True)
class TextRow:
    """One data row of a text table.

    Attributes:
        image: Value of the image column (trimmed).
        text: Value of the text column (trimmed).
        line: 1-based physical line number in the file.
        extra: Other columns by lower-cased header name (e.g. ``pseudo_label``).
    """

    image: str
    text: str
    line: int
    extra: Mapping[str, str] = field(default_factory=dict)


#: Cells that stand for a missing value (pandas, spreadsheets), compared in lower case.
MISSING_TEXTS: frozenset[str] = frozenset({"nan", "none", "null", "n/a", "<na>"})


def empty_text_reason(text: str) -> str | None:
    r"""Why a referring text is empty in effect (``docs/data.md`` §12), or ``None`` for a real text.

    Whitespace, zero-width and other format characters (``\u200b``, BOM, ...), punctuation and symbols are not text;
    a cell reading ``nan``/``none``/``null``/``n/a`` is a missing value written out by a spreadsheet or pandas.
    """
    kept = "".join(c for c in text if not (c.isspace() or unicodedata.category(c)[0] in "CPSZ"))
    if not kept:
        return (
            "empty text"
            if not text.strip()
            else f"empty text (only whitespace, invisible or punctuation characters: {text!r})"
        )
    if kept.lower() in MISSING_TEXTS or text.strip().lower() in MISSING_TEXTS:
        return f"empty text (the cell reads {text.strip()!r}, a missing-value marker)"
    return None


#: Delimiters tried when sniffing a text table's header, in order.
_DELIMITERS = (",", ";", "\t")


def _header_columns(line: str, delimiter: str) -> list[str]:
    """Split a header line and normalise the column names (trimmed, unquoted, lower case)."""
    cells = next(csv.reader([line], delimiter=delimiter), [])
    return [c.strip().strip('"').strip().lower() for c in cells]


def _field_count_hint(cells: Sequence[str], n_columns: int, delimiter: str, *, last: bool, cut: bool) -> str:
    """A hint appended to a "wrong number of fields" message: truncation, unquoted delimiter or another delimiter.

    Args:
        cells: The row's fields.
        n_columns: Number of header columns.
        delimiter: The header's delimiter.
        last: The row is the last line of the file.
        cut: The file does not end with a line break.

    Returns:
        ``""`` or ``"; <hint>"``.
    """
    if last and cut and len(cells) < n_columns:
        return "; the file ends in the middle of this row without a line break: it looks truncated"
    others = [d for d in _DELIMITERS if d != delimiter and any(d in c for c in cells)]
    if len(cells) < n_columns and others:
        return f"; the row seems to be separated by {others[0]!r} while the header uses {delimiter!r}"
    if len(cells) > n_columns:
        return (
            f"; a text that contains the delimiter {delimiter!r} must be quoted (or the file written with "
            f"another delimiter, as LViT's ';' MosMed files)"
        )
    return ""


def is_unterminated(path: Path) -> bool:
    """Whether a non-empty text file does not end with a line break (a sign of a truncated file).

    Args:
        path: The file.

    Returns:
        ``True`` if the file exists, is not empty and its last byte is not a line feed or carriage return.
    """
    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        return False
    with path.open("rb") as handle:
        handle.seek(-1, io.SEEK_END)
        return handle.read(1) not in (b"\n", b"\r")


def read_text_table(
    path: Path,
    image_columns: Sequence[str] = ("image",),
    text_columns: Sequence[str] = ("text", "description", "caption"),
) -> list[TextRow]:
    """Read a referring-text CSV, detecting the delimiter from the header.

    Handles the LViT MosMed files (``Image;text``, semicolon, unquoted, LF), Semi-MedRef's files
    (``Image,text[,pseudo_label]``, comma, quoted, CRLF, optional UTF-8 BOM) and GuideDecoder's
    ``Image,Description`` files (``docs/data.md`` §3). The delimiter is the one for which the header contains an
    image column and a text column; a file whose header is not recognised under any delimiter is an error,
    so a semicolon file can never be silently split on commas (or vice versa).

    Args:
        path: The CSV file.
        image_columns: Accepted (lower-case) names of the image column.
        text_columns: Accepted (lower-case) names of the text column, in order of preference.

    Returns:
        The data rows in file order (blank lines skipped).

    Raises:
        DataError: Naming the file (and line) if it is missing, not UTF-8, has an unrecognised header, a row
            with the wrong number of fields, an empty image name or text, or a duplicate image name.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"text file not found: {path}")
    try:
        content = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"text file {path} is not UTF-8: {exc}") from exc
    lines = content.splitlines()
    header_idx = next((i for i, ln in enumerate(lines) if ln.strip()), None)
    if header_idx is None:
        raise DataError(f"text file {path} is empty")
    header_line = lines[header_idx]
    delimiter: str | None = None
    columns: list[str] = []
    for cand in _DELIMITERS:
        cols = _header_columns(header_line, cand)
        if any(c in cols for c in image_columns) and any(c in cols for c in text_columns):
            delimiter, columns = cand, cols
            break
    if delimiter is None:
        raise DataError(
            f"text file {path}: unrecognised header {header_line.strip()!r}; expected an image column "
            f"({'/'.join(image_columns)}) and a text column ({'/'.join(text_columns)}) "
            "separated by ',' or ';'"
        )
    image_col = next(columns.index(c) for c in image_columns if c in columns)
    text_col = next(columns.index(c) for c in text_columns if c in columns)
    n_lines = len(io.StringIO(content, newline="").readlines())  # physical lines as the csv reader counts them
    unterminated = not content.endswith(("\n", "\r"))
    reader = csv.reader(io.StringIO(content, newline=""), delimiter=delimiter)
    rows: list[TextRow] = []
    seen: dict[str, int] = {}
    header_done = False
    for cells in reader:
        line = reader.line_num
        if not any(c.strip() for c in cells):
            continue
        if not header_done:
            header_done = True
            continue
        if len(cells) != len(columns):
            hint = _field_count_hint(cells, len(columns), delimiter, last=reader.line_num >= n_lines, cut=unterminated)
            raise DataError(
                f"text file {path}, line {line}: {len(cells)} fields for {len(columns)} columns "
                f"(delimiter {delimiter!r}); row {delimiter.join(cells)!r}{hint}"
            )
        image = cells[image_col].strip()
        text = cells[text_col].strip()
        if not image:
            raise DataError(f"text file {path}, line {line}: empty image name")
        found = [d for d in _DELIMITERS if d in image]
        if found:
            raise DataError(
                f"text file {path}, line {line}: image name {image!r} contains the delimiter {found[0]!r}; the rows "
                f"are not separated by the header's delimiter {delimiter!r}"
            )
        empty = empty_text_reason(text)
        if empty:
            raise DataError(f"text file {path}, line {line}: {empty} for image {image}")
        if image in seen:
            raise DataError(f"text file {path}: duplicate row for image {image} (lines {seen[image]} and {line})")
        seen[image] = line
        extra = {columns[i]: cells[i].strip() for i in range(len(columns)) if i not in (image_col, text_col)}
        rows.append(TextRow(image=image, text=text, line=line, extra=extra))
    return rows
