"""Prediction files of ``textseg predict``: masks (and optionally probabilities and overlays) at the original size.

:class:`MaskWriter` is a :class:`~lightning.pytorch.callbacks.BasePredictionWriter` writing ``masks/<id>.png`` (and
optionally ``probs/<id>.png`` and ``overlays/<id>.png``) at the original image size, plus a ``predictions.csv`` index.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_info
from PIL import Image

from textseg.data.io import read_image, read_size
from textseg.engine.overlays import render_overlay
from textseg.errors import DataError

__all__ = ["MaskWriter", "resize_probs", "save_mask"]


def resize_probs(probs: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize network-size probabilities to an image's original size (bilinear), clamped to [0, 1].

    The one resize of predictions: :class:`MaskWriter` and :class:`textseg.inference.Segmenter` both use it.

    Args:
        probs: ``[B, 1, h, w]`` probabilities.
        size: ``(height, width)`` of the original image.

    Returns:
        ``[B, 1, height, width]`` float probabilities.
    """
    resized = F.interpolate(probs.float(), size=size, mode="bilinear", align_corners=False)
    return resized.clamp(0.0, 1.0)


def save_mask(mask: np.ndarray, path: Path) -> None:
    """Write a boolean mask ``[H, W]`` as an 8-bit PNG with values 0 and 255 (the predicted masks' format)."""
    Image.fromarray(mask.astype(np.uint8) * np.uint8(255), mode="L").save(path)


class MaskWriter(BasePredictionWriter):
    """Write the predictions of ``textseg predict`` as PNG files at the original image size.

    Each batch's ``predict_step`` output must be ``{"id": list[str], "text": list[str], "path": list[str],
    "probs": Tensor [B, 1, h, w] in [0, 1]}`` (``path`` = the original image file; missing ``text``/``path`` are taken
    from the batch, then from the datamodule's records). The probabilities are resized to the original image size
    (read from the file header) with bilinear interpolation, then written as

    * ``masks/<id>.png``: ``uint8`` 0/255, foreground where the probability is ``>= threshold``;
    * ``probs/<id>.png`` (``write_probs``): ``uint8`` ``round(255 p)``;
    * ``overlays/<id>.png`` (``write_overlays``): the image with the predicted lesion tinted and the text as caption;
    * ``predictions.csv``: id, text, image, mask file and predicted lesion fraction of every image (one file per rank
      under DDP: ``predictions.rank<r>.csv``).

    Args:
        output_dir: Output folder (created).
        write_probs: Also write the probability maps.
        write_overlays: Also write the overlays.
        threshold: Probability threshold of the mask (0.5 = logit 0, the metrics' threshold).
        overlay_color: RGB tint of the lesion in the overlays.
        overlay_alpha: Opacity of the tint.
    """

    def __init__(
        self,
        output_dir: str | Path,
        write_probs: bool = False,
        write_overlays: bool = True,
        threshold: float = 0.5,
        overlay_color: tuple[int, int, int] = (255, 48, 48),
        overlay_alpha: float = 0.45,
    ) -> None:
        super().__init__(write_interval="batch")
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {threshold}")
        if not 0.0 <= overlay_alpha <= 1.0:
            raise ValueError(f"overlay_alpha must be in [0, 1], got {overlay_alpha}")
        self.output_dir = Path(output_dir)
        self.write_probs = write_probs
        self.write_overlays = write_overlays
        self.threshold = threshold
        self.overlay_color = tuple(int(c) for c in overlay_color)
        self.overlay_alpha = overlay_alpha
        self._rows: list[list[Any]] = []
        self._lookup: dict[str, tuple[str, str]] | None = None

    def _record_lookup(self, trainer: Trainer | None) -> dict[str, tuple[str, str]]:
        """``id -> (text, image path)`` from the datamodule's records (fallback for outputs without them)."""
        if self._lookup is None:
            self._lookup = {}
            splits = getattr(getattr(trainer, "datamodule", None), "splits", None) or {}
            for records in splits.values():
                for rec in records:
                    self._lookup.setdefault(str(rec.id), (str(rec.text), str(rec.image)))
        return self._lookup

    def _field(self, name: str, prediction: Mapping[str, Any], batch: Any, ids: list[str], trainer: Any) -> list[str]:
        values = prediction.get(name)
        if values is None and isinstance(batch, Mapping):
            values = batch.get(name)
        if values is None:
            lookup = self._record_lookup(trainer)
            missing = [i for i in ids if i not in lookup]
            if missing:
                raise DataError(
                    f"MaskWriter: the prediction has no {name!r} and ids {missing[:5]} are not in the datamodule's "
                    "records; predict_step must return 'id', 'text', 'path' and 'probs'"
                )
            values = [lookup[i][0 if name == "text" else 1] for i in ids]
        values = [str(v) for v in values]
        if len(values) != len(ids):
            raise ValueError(f"MaskWriter: {len(values)} {name!r} entries for {len(ids)} ids")
        return values

    def write_predictions(self, prediction: Mapping[str, Any], batch: Any = None, trainer: Any = None) -> list[Path]:
        """Write the files of one batch of predictions.

        Args:
            prediction: ``predict_step`` output (see the class docstring).
            batch: The batch (fallback for ``text``/``path``).
            trainer: The trainer (fallback: its datamodule's records).

        Returns:
            The mask files written.

        Raises:
            ValueError: If ``probs`` is not ``[B, 1, h, w]`` in [0, 1] or the fields disagree in length.
            DataError: If an image file is missing or unreadable, or an id is not a plain file name.
        """
        if "id" not in prediction or "probs" not in prediction:
            raise ValueError(f"MaskWriter: prediction needs 'id' and 'probs', got keys {sorted(prediction)}")
        ids = [str(i) for i in prediction["id"]]
        probs = torch.as_tensor(prediction["probs"]).detach().float().cpu()
        if probs.ndim != 4 or probs.shape[1] != 1 or probs.shape[0] != len(ids):
            raise ValueError(f"MaskWriter: probs must be [B={len(ids)}, 1, h, w], got {tuple(probs.shape)}")
        if probs.numel() and (float(probs.min()) < 0.0 or float(probs.max()) > 1.0):
            raise ValueError(
                f"MaskWriter: probs must be probabilities in [0, 1], got {float(probs.min())}..{float(probs.max())}"
            )
        texts = self._field("text", prediction, batch, ids, trainer)
        paths = self._field("path", prediction, batch, ids, trainer)
        folders = {"masks": self.output_dir / "masks"}
        if self.write_probs:
            folders["probs"] = self.output_dir / "probs"
        if self.write_overlays:
            folders["overlays"] = self.output_dir / "overlays"
        for folder in folders.values():
            folder.mkdir(parents=True, exist_ok=True)
        written = []
        for i, sample_id in enumerate(ids):
            if not sample_id or Path(sample_id).name != sample_id or sample_id in (".", ".."):
                raise DataError(f"MaskWriter: id {sample_id!r} is not a plain file name")
            height, width = read_size(Path(paths[i]), "image")
            prob_np = resize_probs(probs[i : i + 1], (height, width))[0, 0].numpy()
            mask = prob_np >= self.threshold
            mask_path = folders["masks"] / f"{sample_id}.png"
            save_mask(mask, mask_path)
            written.append(mask_path)
            if self.write_probs:
                grey = np.round(prob_np * 255.0).astype(np.uint8)
                Image.fromarray(grey, mode="L").save(folders["probs"] / f"{sample_id}.png")
            if self.write_overlays:
                picture = read_image(Path(paths[i]))
                overlay = render_overlay(picture, mask, texts[i], self.overlay_color, self.overlay_alpha)
                overlay.save(folders["overlays"] / f"{sample_id}.png")
            self._rows.append([sample_id, texts[i], paths[i], str(mask_path), f"{float(mask.mean()):.6f}"])
        return written

    def write_on_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        prediction: Any,
        batch_indices: Sequence[int] | None,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        """Write one batch (Lightning hook)."""
        self.write_predictions(prediction, batch, trainer)

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Reset the index of written files."""
        self._rows = []
        self._lookup = None

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Write ``predictions.csv`` (per rank under DDP)."""
        self.write_index(trainer.global_rank if trainer.world_size > 1 else None)
        rank_zero_info(f"textseg: wrote {len(self._rows)} masks to {self.output_dir / 'masks'}")

    def write_index(self, rank: int | None = None) -> Path:
        """Write the index of the files written so far.

        Args:
            rank: Rank suffix of the file name (``None`` for a single process).

        Returns:
            The CSV file.
        """
        self.output_dir.mkdir(parents=True, exist_ok=True)
        path = self.output_dir / ("predictions.csv" if rank is None else f"predictions.rank{rank}.csv")
        with path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["id", "text", "image", "mask", "lesion_fraction"])
            writer.writerows(self._rows)
        return path
