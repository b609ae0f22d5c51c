"""``textseg segment``: segment images with a trained model and a referring text, without a config or a DataModule.

Examples:
    textseg segment chest.png --text "Bilateral pulmonary infection, lower left lung." --model best.ckpt --out masks/
    textseg segment images/*.png --texts texts.csv --model saved_model/ --out masks/ --device cpu

For every image it writes ``<stem>_mask.png`` (0/255 at the image's size) and ``<stem>_overlay.png`` (the image with
the lesion tinted and the text as caption) into ``--out``. ``--texts`` takes the CSV of ``textseg predict``
(``Image`` and ``text``/``Description`` columns, comma or semicolon separated); its rows are matched to the images by
file name. The model is a ``textseg fit`` checkpoint, a ``Segmenter.save_pretrained`` folder or a Hub id
(:class:`textseg.inference.Segmenter`). Bad input ends with one ``textseg: error: ...`` line and exit code 2.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

DESCRIPTION = (
    "Segment images with a trained model and a referring text: <stem>_mask.png (0/255 at the image size) and "
    "<stem>_overlay.png per image in --out."
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="textseg segment", description=DESCRIPTION)
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files to segment")
    texts = parser.add_mutually_exclusive_group(required=True)
    texts.add_argument("--text", help="one referring text for every image")
    texts.add_argument("--texts", metavar="CSV", help="CSV with an Image and a text column (textseg predict's format)")
    parser.add_argument("--model", required=True, help="checkpoint (.ckpt), save_pretrained folder or Hub id")
    parser.add_argument("--out", required=True, help="folder of the masks and overlays")
    parser.add_argument("--threshold", type=float, default=0.5, help="probability threshold of the mask (0.5)")
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: CUDA when available)")
    parser.add_argument("--modality", type=int, choices=(0, 1), default=None, help="0 = X-ray, 1 = CT")
    parser.add_argument("--batch-size", type=int, default=8, help="images per forward pass (8)")
    return parser


def texts_for(images: Sequence[Path], text: str | None, table: str | None) -> list[str]:
    """The text of every image: ``text`` for all, or each image's row of the CSV ``table`` (matched by file name).

    Raises:
        DataError: If an image has no row in the table.
    """
    from textseg.errors import DataError

    if table is None:
        return [str(text)] * len(images)
    from textseg.data.folder import IMAGE_COLUMNS, MASK_PREFIX, TEXT_COLUMNS
    from textseg.data.io import read_text_table

    rows = {}
    for row in read_text_table(Path(table).expanduser(), IMAGE_COLUMNS, TEXT_COLUMNS):
        name = Path(row.image).name.lower()
        rows[name] = row.text
        if name.startswith(MASK_PREFIX):
            rows.setdefault(name[len(MASK_PREFIX) :], row.text)
    missing = [p.name for p in images if p.name.lower() not in rows]
    if missing:
        raise DataError(f"text file {table} has no row for {len(missing)} image(s): {', '.join(missing[:5])}")
    return [rows[p.name.lower()] for p in images]


def segment(args: argparse.Namespace) -> list[Path]:
    """Run the command: load the model, predict in batches, write the masks and overlays.

    Returns:
        The mask files written.

    Raises:
        DataError: For a missing model or image, a text table without an image, a bad threshold or device.
    """
    from textseg.data.io import read_image
    from textseg.engine.overlays import render_overlay
    from textseg.engine.predictions import save_mask
    from textseg.errors import DataError
    from textseg.inference import Segmenter
    from textseg.inference.inputs import ImageLike

    if not 0.0 <= args.threshold <= 1.0:
        raise DataError(f"--threshold must be in [0, 1], got {args.threshold}")
    if args.batch_size < 1:
        raise DataError(f"--batch-size must be at least 1, got {args.batch_size}")
    images = [Path(p).expanduser() for p in args.images]
    missing = [str(p) for p in images if not p.is_file()]
    if missing:
        raise DataError(f"image file not found: {', '.join(missing[:5])}")
    stems: dict[str, Path] = {}
    for path in images:
        if path.stem in stems and stems[path.stem] != path:
            raise DataError(f"{stems[path.stem]} and {path} have the same name: their masks would overwrite each other")
        stems[path.stem] = path
    texts = texts_for(images, args.text, args.texts)
    model = Segmenter.from_pretrained(args.model, device=args.device, modality=args.modality)
    out = Path(args.out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for start in range(0, len(images), args.batch_size):
        chunk: list[ImageLike] = [*images[start : start + args.batch_size]]
        chunk_texts = texts[start : start + args.batch_size]
        masks = model.predict(chunk, chunk_texts, args.threshold)
        for path, text, mask in zip(images[start : start + args.batch_size], chunk_texts, masks, strict=True):
            mask_path = out / f"{path.stem}_mask.png"
            save_mask(mask, mask_path)
            render_overlay(read_image(path), mask, text).save(out / f"{path.stem}_overlay.png")
            written.append(mask_path)
    print(f"textseg: wrote {len(written)} masks and overlays to {out}")
    return written


def main(argv: Sequence[str]) -> int:
    """Segment images from a referring text with a trained model (masks and overlays).

    Args:
        argv: The arguments after ``segment``.

    Returns:
        0 on success, 2 for bad input (one ``textseg: error: ...`` line, :func:`textseg.cli.runner.guarded`);
        argparse's usage errors exit with 2 too.
    """
    from textseg.cli.runner import guarded_code

    return guarded_code(segment, _parser().parse_args(list(argv)))
