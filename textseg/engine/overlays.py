"""W&B images of a run: validation overlays, the per-image test table, and the overlay picture of a prediction.

:class:`WandbOverlayCallback` logs the same few validation images (image, ground truth, prediction, text as caption)
every few epochs and, at test time, a per-image ``wandb.Table`` (id, dataset, text, Dice, IoU; LViT's per-image
definitions, :func:`textseg.ops.metrics.per_image_scores`). :func:`render_overlay` draws a prediction over its image
with the referring text as caption (also used by :class:`textseg.engine.predictions.MaskWriter`).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_warn
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor, nn

from textseg.engine.wandb import TextSegWandbLogger, wandb_loggers
from textseg.ops.metrics import binarize_logits, per_image_scores

__all__ = ["WandbOverlayCallback", "render_overlay"]


def _forward_logits(pl_module: LightningModule, batch: Mapping[str, Any]) -> Tensor:
    """Logits of the evaluation network on a batch (``pl_module(image, text, eval_net[, modality])``)."""
    net = getattr(pl_module, "eval_net", None)
    params = inspect.signature(pl_module.forward).parameters
    kwargs: dict[str, Any] = {}
    if "modality" in params and "modality" in batch:
        kwargs["modality"] = batch["modality"]
    out = pl_module(batch["image"], batch["text"], net, **kwargs)
    return out["logits"] if isinstance(out, Mapping) else out


def _display_grey(image: Tensor) -> np.ndarray:
    """A network input ``[C, H, W]`` (z-scored) as a min-max scaled ``uint8 [H, W]`` picture."""
    x = image.detach().float().cpu()
    x = x.mean(0) if x.ndim == 3 else x
    lo, hi = float(x.min()), float(x.max())
    scaled = (x - lo) / (hi - lo) if hi > lo else torch.zeros_like(x)
    return (scaled * 255).round().clamp(0, 255).to(torch.uint8).numpy()


class _OutputCapture:
    """Forward hook keeping the last logits of a module (avoids a second forward pass at test time)."""

    def __init__(self) -> None:
        self.logits: Tensor | None = None
        self._handle: Any = None

    def attach(self, module: nn.Module) -> None:
        """Start capturing ``module``'s outputs."""
        self.detach()
        self._handle = module.register_forward_hook(self._hook)

    def _hook(self, module: nn.Module, args: Any, output: Any) -> None:
        logits = output.get("logits") if isinstance(output, Mapping) else output
        self.logits = logits.detach() if isinstance(logits, Tensor) else None

    def detach(self) -> None:
        """Stop capturing."""
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        self.logits = None


# ----------------------------------------------------------------------------------------- W&B overlays/table


@dataclass
class _Sample:
    """A cached validation sample for the overlays."""

    id: str
    text: str
    image: Tensor
    mask: Tensor
    extra: dict[str, Any]


class WandbOverlayCallback(Callback):
    """Log validation overlays and a per-image test table to the trainer's W&B logger(s).

    Validation: every ``every_n_epochs`` epochs, the same ``num_images`` validation images (``ids``, or the first ones
    of the validation set) are logged under ``val/overlays`` as ``wandb.Image`` with the ground truth and the
    prediction as W&B masks and ``"<id>: <text> (Dice d)"`` as caption. Test: a ``wandb.Table`` ``test/per_image``
    with columns id, dataset, text, dice, iou (LViT per-image definitions,
    :func:`~textseg.ops.metrics.per_image_scores`), one row per test image; its mean Dice equals
    ``test_dice_per_image``.

    Without a W&B logger the callback does nothing. At ``setup`` it calls :meth:`TextSegWandbLogger.describe`.

    Args:
        num_images: Validation images to show (when ``ids`` is not given).
        ids: Record ids of the validation images to show.
        every_n_epochs: Log overlays every this many validation epochs.
        log_test_table: Log the per-image test table.
    """

    def __init__(
        self,
        num_images: int = 4,
        ids: Sequence[str] | None = None,
        every_n_epochs: int = 1,
        log_test_table: bool = True,
    ) -> None:
        if num_images < 1:
            raise ValueError(f"num_images must be >= 1, got {num_images}")
        if every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be >= 1, got {every_n_epochs}")
        self.num_images = num_images
        self.ids = list(ids) if ids is not None else None
        self.every_n_epochs = every_n_epochs
        self.log_test_table = log_test_table
        self._samples: dict[str, _Sample] = {}
        self._scanned = False
        self._rows: list[list[Any]] = []
        self._capture = _OutputCapture()

    @property
    def _wanted(self) -> int:
        return len(self.ids) if self.ids is not None else self.num_images

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Describe the run to every :class:`TextSegWandbLogger` (tags, name, config)."""
        for logger in wandb_loggers(trainer):
            if isinstance(logger, TextSegWandbLogger):
                logger.describe(pl_module, getattr(trainer, "datamodule", None), trainer.log_dir)

    # ------------------------------------------------------------------------------------------- validation
    def on_validation_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Cache the chosen validation samples (first epoch only)."""
        if self._scanned or not wandb_loggers(trainer) or len(self._samples) >= self._wanted:
            return
        for i, sample_id in enumerate(batch["id"]):
            if len(self._samples) >= self._wanted:
                break
            if sample_id in self._samples or (self.ids is not None and sample_id not in self.ids):
                continue
            extra = {"modality": batch["modality"][i : i + 1]} if "modality" in batch else {}
            self._samples[sample_id] = _Sample(
                id=str(sample_id),
                text=str(batch["text"][i]),
                image=batch["image"][i].detach().cpu(),
                mask=batch["mask"][i].detach().cpu(),
                extra=extra,
            )

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Log the overlays of the cached samples."""
        if trainer.sanity_checking or not wandb_loggers(trainer):
            return
        if not self._scanned:
            self._scanned = True
            if self.ids is not None:
                missing = [i for i in self.ids if i not in self._samples]
                if missing:
                    rank_zero_warn(f"WandbOverlayCallback: validation ids not found: {missing}")
        if not self._samples or trainer.current_epoch % self.every_n_epochs != 0 or not trainer.is_global_zero:
            return
        self._log_overlays(trainer, pl_module)

    def _log_overlays(self, trainer: Trainer, pl_module: LightningModule) -> None:
        samples = [self._samples[i] for i in (self.ids or list(self._samples)) if i in self._samples]
        batch: dict[str, Any] = {
            "image": torch.stack([s.image for s in samples]).to(pl_module.device),
            "text": [s.text for s in samples],
        }
        if all("modality" in s.extra for s in samples):
            batch["modality"] = torch.cat([torch.as_tensor(s.extra["modality"]) for s in samples]).to(pl_module.device)
        with torch.no_grad():
            logits = _forward_logits(pl_module, batch).float().cpu()
        preds = binarize_logits(logits)
        targets = torch.stack([s.mask for s in samples]).long()
        dice, _ = per_image_scores(preds, targets)
        labels = {0: "background", 1: "lesion"}
        images = [_display_grey(s.image) for s in samples]
        captions = [f"{s.id}: {s.text} (Dice {float(d):.3f})" for s, d in zip(samples, dice, strict=True)]
        masks = [
            {
                "ground_truth": {"mask_data": t[0].numpy().astype(np.uint8), "class_labels": labels},
                "prediction": {"mask_data": p[0].numpy().astype(np.uint8), "class_labels": labels},
            }
            for t, p in zip(targets, preds, strict=True)
        ]
        for logger in wandb_loggers(trainer):
            logger.log_image("val/overlays", images, step=trainer.global_step, caption=captions, masks=masks)

    # ------------------------------------------------------------------------------------------------- test
    def on_test_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Start capturing the evaluation network's logits."""
        self._rows = []
        net = getattr(pl_module, "eval_net", None)
        if self.log_test_table and wandb_loggers(trainer) and isinstance(net, nn.Module):
            self._capture.attach(net)

    def on_test_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        """Forget the previous batch's logits."""
        self._capture.logits = None

    def on_test_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Score every image of the batch."""
        if not self.log_test_table or not wandb_loggers(trainer):
            return
        logits = self._capture.logits
        if logits is None or logits.shape[0] != len(batch["id"]):
            with torch.no_grad():
                logits = _forward_logits(pl_module, batch)
        dice, iou = per_image_scores(binarize_logits(logits), batch["mask"].long())
        datasets = batch.get("dataset") or [""] * len(batch["id"])
        for i, sample_id in enumerate(batch["id"]):
            row = [str(sample_id), str(datasets[i]), str(batch["text"][i]), float(dice[i]), float(iou[i])]
            self._rows.append(row)

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Log the per-image table (rows gathered from every rank)."""
        self._capture.detach()
        if not self.log_test_table or not wandb_loggers(trainer):
            return
        rows = self._rows
        if trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered: list[Any] = [None] * trainer.world_size
            torch.distributed.all_gather_object(gathered, rows)
            rows = [r for part in gathered for r in (part or [])]
        if not trainer.is_global_zero:
            return
        unique = list({(r[1], r[0]): r for r in rows}.values())
        for logger in wandb_loggers(trainer):
            logger.log_table("test/per_image", columns=["id", "dataset", "text", "dice", "iou"], data=unique)


# ---------------------------------------------------------------------------------------------------- overlay


def _caption_lines(text: str, width: int, font: Any, draw: ImageDraw.ImageDraw, margin: int) -> list[str]:
    """Greedy word wrap of ``text`` to ``width - 2 margin`` pixels."""
    lines: list[str] = []
    for paragraph in text.splitlines() or [""]:
        current = ""
        for word in paragraph.split():
            trial = f"{current} {word}".strip()
            if current and draw.textlength(trial, font=font) > width - 2 * margin:
                lines.append(current)
                current = word
            else:
                current = trial
        lines.append(current)
    return lines


def render_overlay(
    image: np.ndarray,
    mask: np.ndarray,
    text: str,
    color: Sequence[int] = (255, 48, 48),
    alpha: float = 0.45,
    margin: int = 4,
) -> Image.Image:
    """Tint the predicted lesion on the image and draw the referring text as a caption below it.

    Args:
        image: Greyscale ``uint8 [H, W]`` (display orientation).
        mask: Boolean or {0, 1} ``[H, W]`` prediction.
        text: Caption (PIL's default font, wrapped to the image width).
        color: RGB tint of the lesion.
        alpha: Opacity of the tint.
        margin: Caption margin in pixels.

    Returns:
        An RGB image ``[W, H + caption height]``.
    """
    if image.shape != mask.shape:
        raise ValueError(f"image {image.shape} and mask {mask.shape} differ in size")
    rgb = np.repeat(image[..., None].astype(np.float32), 3, axis=-1)
    tint = np.asarray(color, dtype=np.float32)[None, None, :]
    sel = mask.astype(bool)
    rgb[sel] = (1 - alpha) * rgb[sel] + alpha * tint[0]
    picture = Image.fromarray(rgb.round().clip(0, 255).astype(np.uint8), mode="RGB")
    font = ImageFont.load_default()
    probe = ImageDraw.Draw(picture)
    lines = _caption_lines(text, picture.width, font, probe, margin)
    _, top, _, bottom = probe.textbbox((0, 0), "Ag", font=font)
    line_height = int(bottom - top) + 2
    out = Image.new("RGB", (picture.width, picture.height + len(lines) * line_height + 2 * margin), (0, 0, 0))
    out.paste(picture, (0, 0))
    draw = ImageDraw.Draw(out)
    for i, line in enumerate(lines):
        draw.text((margin, picture.height + margin + i * line_height - top), line, fill=(255, 255, 255), font=font)
    return out
