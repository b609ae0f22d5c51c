"""A synthetic, text-dependent stand-in for QaTa-COV19, written in the SGSeg layout.

Every sample is a chest-X-ray-like greyscale image (dark background, bright body, two dark lung fields with
curved rib bands, mediastinum, smooth and fine noise, random brightness/contrast) with

* 1-3 **lesions**: soft bright opacities, one in each lung region named by the referring text, and
* 1-2 **distractors**: opacities drawn the same way but in regions the text does *not* name, and absent from
  the mask.

Lesions and distractors are indistinguishable in the image, so only the text tells which opacity to segment --
the property that makes text guidance matter (Li et al., IEEE TMI 2023; Ye et al., MICCAI 2024).

Regions follow ``docs/data.md`` §4.1/§9: six regions = image left/right half x upper/middle/lower third of the
lung-field band (:func:`region_boxes`), order ``[L-up, L-mid, L-low, R-up, R-mid, R-low]``, left = image left.
Texts are LViT-style ("Bilateral pulmonary infection, two infected areas, lower left lung and middle right
lung."), where the count word is the number of affected sides as in most QaTa texts (§8).

The tree is the SGSeg layout (``{train,valid,test}/{images,masks}/`` + ``annotation.json`` with the real
schema), so :class:`~textseg.data.qata.QaTaCOV19` reads it. Output is byte-identical for a given seed.

A **CT-like** modality (``modality="ct"``, :func:`ct_config`) stands in for MosMedData+ in composite (TextMoE)
experiments: an axial slice (black air, elliptic body, two very dark lung fields, bright spine and mediastinum,
vessel dots, no ribs) with grey ground-glass lesions and distractors, MosMed-style texts (the count word is the number
of lesions) and the MosMed Kaggle layout (``frames/`` + ``masks/`` + the three LViT semicolon CSVs), read by
:class:`~textseg.data.mosmed.MosMedDataPlus` as modality 1.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from textseg.data.base import require_root
from textseg.data.mosmed import MosMedDataPlus
from textseg.data.qata import PositionSource, QaTaCOV19
from textseg.data.synthetic_images import (
    SPLIT_FOLDERS,
    SyntheticConfig,
    SyntheticSample,
    caption_for,
    ct_config,
    generate_sample,
    qata_sized_config,
    region_boxes,
)
from textseg.errors import DataError

__all__ = [
    "META_FILE",
    "SyntheticConfig",
    "SyntheticMosMed",
    "SyntheticQaTa",
    "SyntheticSample",
    "caption_for",
    "ct_config",
    "generate_sample",
    "load_synthetic",
    "make_synthetic",
    "qata_sized_config",
    "region_boxes",
]

#: File at the root of a generated tree recording the generator arguments.
META_FILE = "synthetic.json"
#: Version of the generator (stored in :data:`META_FILE`; bump when the output changes).
GENERATOR_VERSION = 1
#: Image sizes must be multiples of this (the networks downsample by 32).
SIZE_MULTIPLE = 32
#: LViT MosMed text file names per split (semicolon CSVs, ``docs/data.md`` §2).
_CT_TEXT_FILES = {
    "train": "Train_text_MosMedData+ 1(in).csv",
    "val": "Val_text_MosMedData+ 1(in).csv",
    "test": "Test_text_MosMedData+(in).csv",
}


def _check_args(n_train: int, n_val: int, n_test: int, image_size: int) -> None:
    """Validate the generator arguments."""
    for name, value, minimum in (("n_train", n_train, 1), ("n_val", n_val, 0), ("n_test", n_test, 0)):
        if not isinstance(value, int) or value < minimum:
            raise DataError(f"{name}={value!r} must be an integer >= {minimum}")
    if not isinstance(image_size, int) or image_size < SIZE_MULTIPLE or image_size % SIZE_MULTIPLE:
        raise DataError(f"image_size={image_size!r} must be a positive multiple of {SIZE_MULTIPLE}")


def _write_png(path: Path, array: np.ndarray) -> None:
    """Write a ``uint8`` greyscale PNG (no metadata, so bytes depend only on the pixels)."""
    Image.fromarray(array, mode="L").save(path, format="PNG", optimize=False, compress_level=6)


def make_synthetic(
    root: str | Path,
    n_train: int = 400,
    n_val: int = 100,
    n_test: int = 100,
    image_size: int = 128,
    seed: int = 0,
    config: SyntheticConfig | None = None,
) -> Path:
    """Write a synthetic QaTa-like dataset in the SGSeg layout.

    The tree is built in a temporary sibling folder and renamed into place, so an interrupted run leaves no
    half-written dataset and concurrent callers (e.g. DDP ranks) end up with one complete tree.

    Args:
        root: Folder to create (must not exist, or be empty).
        n_train: Training samples.
        n_val: Validation samples (``valid/``).
        n_test: Test samples.
        image_size: Image side, a multiple of 32.
        seed: Seed; the same arguments give byte-identical files.
        config: Appearance and geometry (default :class:`SyntheticConfig`).

    Returns:
        ``root``.

    Raises:
        DataError: For bad arguments or if ``root`` exists and is not empty.
    """
    _check_args(n_train, n_val, n_test, image_size)
    cfg = config or SyntheticConfig()
    if not 0.0 <= cfg.no_distractor_prob <= 1.0:
        raise DataError(f"no_distractor_prob={cfg.no_distractor_prob!r} must be a probability in [0, 1]")
    level = cfg.distractor_level
    if level is not None and not (len(level) == 2 and 0 <= level[0] <= level[1]):
        raise DataError(f"distractor_level={level!r} must be a (low, high) range of grey levels with 0 <= low <= high")
    root = Path(root).expanduser()
    meta = _meta(n_train, n_val, n_test, image_size, seed, cfg)
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise DataError(f"synthetic dataset root {root} already exists and is not empty")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f".{root.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        counts = {"train": n_train, "val": n_val, "test": n_test}
        if cfg.modality == "ct":
            _write_ct_tree(tmp, counts, image_size, seed, cfg)
        else:
            _write_xray_tree(tmp, counts, image_size, seed, cfg)
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        try:
            os.replace(tmp, root)
        except OSError:
            # Another process created the tree first; accept it if it was made with the same arguments.
            if _read_meta(root) != meta:
                raise DataError(
                    f"synthetic dataset root {root} was created concurrently with other arguments"
                ) from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return root


def _write_xray_tree(tmp: Path, counts: dict[str, int], image_size: int, seed: int, cfg: SyntheticConfig) -> None:
    """Write the SGSeg layout: ``{train,valid,test}/{images,masks}/`` + ``annotation.json``."""
    annotation: dict[str, list[dict[str, Any]]] = {}
    start = 0
    for split, folder in SPLIT_FOLDERS:
        images, masks = tmp / folder / "images", tmp / folder / "masks"
        images.mkdir(parents=True)
        masks.mkdir(parents=True)
        entries = []
        for i in range(counts[split]):
            sample = generate_sample(seed, split, i, image_size, cfg)
            name = f"synth_{start + i:05d}.png"
            _write_png(images / name, sample.image)
            _write_png(masks / f"mask_{name}", sample.mask * np.uint8(255))
            entries.append(
                {
                    "image_path": f"mask_{name}",
                    "caption": sample.caption,
                    "pulmonary_infection": int(any(sample.position[:3])) + int(any(sample.position[3:])),
                    "infected_area": int(sum(sample.position)),
                    "pseudo_label": list(sample.position),
                }
            )
        annotation[folder] = entries
        start += counts[split]
    (tmp / "annotation.json").write_text(json.dumps(annotation, indent=2) + "\n", encoding="utf-8")


def _write_ct_tree(tmp: Path, counts: dict[str, int], image_size: int, seed: int, cfg: SyntheticConfig) -> None:
    """Write the MosMed Kaggle layout: ``frames/`` + ``masks/`` (same names) + three LViT semicolon CSVs."""
    frames, masks = tmp / "frames", tmp / "masks"
    frames.mkdir(parents=True)
    masks.mkdir(parents=True)
    start = 0
    for split, _ in SPLIT_FOLDERS:
        rows = ["Image;text"]
        for i in range(counts[split]):
            sample = generate_sample(seed, split, i, image_size, cfg)
            name = f"synthct_{start + i:05d}.png"
            _write_png(frames / name, sample.image)
            _write_png(masks / name, sample.mask * np.uint8(255))
            rows.append(f"{name};{sample.caption}")
        (tmp / _CT_TEXT_FILES[split]).write_text("\n".join(rows) + "\n", encoding="utf-8")
        start += counts[split]


def _meta(n_train: int, n_val: int, n_test: int, image_size: int, seed: int, cfg: SyntheticConfig) -> dict[str, Any]:
    """The generator arguments stored in :data:`META_FILE` (JSON-compatible)."""
    return json.loads(
        json.dumps(
            {
                "generator": "textseg.data.synthetic",
                "version": GENERATOR_VERSION,
                "n_train": n_train,
                "n_val": n_val,
                "n_test": n_test,
                "image_size": image_size,
                "seed": seed,
                "config": asdict(cfg),
            }
        )
    )


def _read_meta(root: Path) -> dict[str, Any] | None:
    """Generator arguments of an existing tree, or None if it has no readable :data:`META_FILE`."""
    try:
        data = json.loads((root / META_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


class SyntheticQaTa(QaTaCOV19):
    """A generated tree read by the QaTa-COV19 reader; ``name`` is ``"synthetic"``."""

    name = "synthetic"


class SyntheticMosMed(MosMedDataPlus):
    """A generated CT-like tree read by the MosMedData+ reader (modality 1); ``name`` is ``"synthetic_ct"``."""

    name = "synthetic_ct"


def load_synthetic(
    root: str | Path,
    n_train: int | None = None,
    n_val: int | None = None,
    n_test: int | None = None,
    image_size: int | None = None,
    seed: int | None = None,
    positions: PositionSource = "auto",
    modality: Literal["xray", "ct"] = "xray",
) -> SyntheticQaTa | SyntheticMosMed:
    """Read a synthetic dataset, generating it first if ``root`` does not exist (or is empty).

    Args:
        root: Dataset root.
        n_train: Training samples (default 400 when generating).
        n_val: Validation samples (default 100).
        n_test: Test samples (default 100).
        image_size: Image side (default 128).
        seed: Generator seed (default 0).
        positions: Passed to :class:`~textseg.data.qata.QaTaCOV19` (X-ray trees).
        modality: ``"xray"`` (:class:`SyntheticQaTa`) or ``"ct"`` (:func:`ct_config`, :class:`SyntheticMosMed`).

    Returns:
        The dataset.

    Raises:
        DataError: If an existing tree was generated with arguments that contradict the ones given, or by another
            version of the generator.
    """
    path = Path(root).expanduser()
    given = {"n_train": n_train, "n_val": n_val, "n_test": n_test, "image_size": image_size, "seed": seed}
    if not path.exists() or (path.is_dir() and not any(path.iterdir())):
        defaults = {"n_train": 400, "n_val": 100, "n_test": 100, "image_size": 128, "seed": 0}
        args = {k: (v if v is not None else defaults[k]) for k, v in given.items()}
        try:
            config = ct_config() if modality == "ct" else None
            make_synthetic(
                path, args["n_train"], args["n_val"], args["n_test"], args["image_size"], args["seed"], config
            )
        except DataError:
            if _read_meta(path) is None:  # not a tree another process has just generated
                raise
    require_root(path, "synthetic")
    meta = _read_meta(path)
    if meta is not None:
        wrong = {k: (v, meta.get(k)) for k, v in given.items() if v is not None and meta.get(k) != v}
        if wrong:
            listed = ", ".join(f"{k}={v[0]!r} (on disk: {v[1]!r})" for k, v in wrong.items())
            raise DataError(f"synthetic dataset at {path} was generated with other arguments: {listed}")
        if meta.get("version") != GENERATOR_VERSION:
            raise DataError(
                f"synthetic dataset at {path} was written by generator version {meta.get('version')!r}, this is "
                f"version {GENERATOR_VERSION}: delete the folder to regenerate it (or point root elsewhere)"
            )
        on_disk = meta.get("config", {}).get("modality", "xray")
        if on_disk != modality:
            raise DataError(f"synthetic dataset at {path} is of modality {on_disk!r}, not {modality!r}")
    if modality == "ct":
        return SyntheticMosMed(path)
    return SyntheticQaTa(path, positions=positions)
