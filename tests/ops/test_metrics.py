"""Tests of :mod:`textseg.ops.metrics`: pooled vs per-image Dice/IoU golden values (``data.md`` §10)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import Tensor

from textseg.ops.metrics import LVIT_EPS, PerImageScore, binarize_logits, segmentation_metrics

KEYS = ("dice", "iou", "dice_per_image", "iou_per_image")


def as_logits(pred: Tensor, on: float = 0.0, off: float = -1e-4) -> Tensor:
    """Logits whose binarisation is ``pred``; foreground exactly at logit 0 tests the inclusive threshold."""
    return torch.where(pred.bool(), torch.full_like(pred, on, dtype=torch.float32), torch.full_like(pred, off))


def run(preds: Tensor, target: Tensor, prefix: str = "test_", batches: int = 1) -> dict[str, float]:
    """Feed ``[B, 1, H, W]`` 0/1 predictions (as logits) and targets in ``batches`` chunks, return the metrics."""
    metrics = segmentation_metrics(prefix)
    for p, t in zip(preds.chunk(batches), target.chunk(batches), strict=True):
        metrics.update(binarize_logits(as_logits(p)), t.long())
    return {k[len(prefix) :]: float(v) for k, v in metrics.compute().items()}


def reference(preds: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """Independent numpy implementation of both conventions (``data.md`` §10.1-10.2)."""
    p, t = preds.reshape(len(preds), -1).astype(bool), target.reshape(len(target), -1).astype(bool)
    tp, fp, fn = (p & t).sum(), (p & ~t).sum(), (~p & t).sum()
    pooled_den = 2 * tp + fp + fn
    dice_img, iou_img = [], []
    for pi, ti in zip(p, t, strict=True):
        inter = (pi & ti).sum()
        dice_img.append(2 * inter / (ti.sum() + pi.sum() + 1e-5))
        union = (pi | ti).sum()
        iou_img.append(inter / union if union else 0.0)
    return {
        "dice": 2 * tp / pooled_den if pooled_den else 0.0,
        "iou": tp / (tp + fp + fn) if tp + fp + fn else 0.0,
        "dice_per_image": float(np.mean(dice_img)),
        "iou_per_image": float(np.mean(iou_img)),
    }


def two_images() -> tuple[Tensor, Tensor]:
    """Image A: gt 4 px, prediction 4 px, 2 shared. Image B: empty gt, empty prediction."""
    target = torch.zeros(2, 1, 4, 4)
    preds = torch.zeros(2, 1, 4, 4)
    target[0, 0, 0:2, 0:2] = 1
    preds[0, 0, 0, 0:2] = 1
    preds[0, 0, 2, 2:4] = 1
    return preds, target


def test_golden_pooled_and_per_image() -> None:
    preds, target = two_images()
    got = run(preds, target)
    tp, fp, fn = 2, 2, 2
    assert got["dice"] == pytest.approx(2 * tp / (2 * tp + fp + fn))  # 0.5
    assert got["iou"] == pytest.approx(tp / (tp + fp + fn))  # 1/3
    dice_a = 2 * 2 / (4 + 4 + LVIT_EPS)
    assert got["dice_per_image"] == pytest.approx((dice_a + 0.0) / 2, rel=1e-6)  # empty/empty scores 0
    assert got["iou_per_image"] == pytest.approx((1 / 3 + 0.0) / 2, rel=1e-6)
    assert LVIT_EPS == 1e-5


def test_pooled_weights_large_lesions_per_image_does_not() -> None:
    """A perfect 16 px lesion and a missed 1 px lesion: pooled 32/33, per-image (1 + 0) / 2."""
    target = torch.zeros(2, 1, 8, 8)
    target[0, 0, 2:6, 2:6] = 1
    target[1, 0, 4, 4] = 1
    preds = target.clone()
    preds[1] = 0
    got = run(preds, target)
    assert got["dice"] == pytest.approx(32 / 33)
    assert got["iou"] == pytest.approx(16 / 17)
    assert got["dice_per_image"] == pytest.approx((32 / (32 + LVIT_EPS)) / 2, rel=1e-6)
    assert got["iou_per_image"] == pytest.approx(0.5)


def test_batches_accumulate_over_the_split() -> None:
    """Pooled counts and the per-image mean are over the split, not averaged per batch."""
    gen = torch.Generator().manual_seed(0)
    target = (torch.rand(6, 1, 8, 8, generator=gen) < 0.3).float()
    preds = (torch.rand(6, 1, 8, 8, generator=gen) < 0.3).float()
    target[5] = 0
    preds[4] = 0
    whole, chunked = run(preds, target), run(preds, target, batches=3)
    ref = reference(preds.numpy(), target.numpy())
    for key in KEYS:
        assert whole[key] == pytest.approx(ref[key], rel=1e-6), key
        assert chunked[key] == pytest.approx(ref[key], rel=1e-6), key
    # Not the mean of per-batch values.
    per_batch = [run(p, t)["dice"] for p, t in zip(preds.chunk(3), target.chunk(3), strict=True)]
    assert whole["dice"] != pytest.approx(float(np.mean(per_batch)), rel=1e-6)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_predictions_match_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    target = (rng.random((5, 1, 16, 16)) < rng.random((5, 1, 1, 1))).astype(np.float32)
    preds = (rng.random((5, 1, 16, 16)) < 0.4).astype(np.float32)
    got = run(torch.from_numpy(preds), torch.from_numpy(target), batches=2)
    ref = reference(preds, target)
    for key in KEYS:
        assert got[key] == pytest.approx(ref[key], rel=1e-6, abs=1e-9), key


def test_binarize_logits_threshold_is_inclusive_at_zero() -> None:
    logits = torch.tensor([-math.inf, -5.0, -1e-6, 0.0, 1e-6, 5.0, math.inf])
    out = binarize_logits(logits)
    assert out.dtype == torch.long
    assert out.tolist() == [0, 0, 0, 1, 1, 1, 1]
    # Same as sigmoid(logit) >= 0.5 away from the float32 rounding band around 0.
    x = torch.randn(1000, generator=torch.Generator().manual_seed(0)) * 4
    x = x[x.abs() > 1e-3]
    assert torch.equal(binarize_logits(x), (torch.sigmoid(x) >= 0.5).long())


def test_zero_logits_count_as_foreground() -> None:
    """sigmoid(0) = 0.5 is foreground (torchmetrics alone would use a strict > 0.5)."""
    target = torch.ones(1, 1, 4, 4)
    metrics = segmentation_metrics("val_")
    metrics.update(binarize_logits(torch.zeros(1, 1, 4, 4)), target.long())
    assert {k: float(v) for k, v in metrics.compute().items()} == pytest.approx(
        {"val_dice": 1.0, "val_iou": 1.0, "val_dice_per_image": 16 * 2 / (32 + LVIT_EPS), "val_iou_per_image": 1.0}
    )


def test_empty_split_gives_zero_not_nan() -> None:
    empty = torch.zeros(3, 1, 4, 4)
    got = run(empty, empty)
    assert got == {"dice": 0.0, "iou": 0.0, "dice_per_image": 0.0, "iou_per_image": 0.0}
    # A per-image score that saw no image is 0 as well.
    assert float(PerImageScore("dice").compute()) == 0.0


def test_collection_names_and_reset() -> None:
    for prefix in ("val_", "test_"):
        metrics = segmentation_metrics(prefix)
        assert set(metrics.keys()) == {f"{prefix}{k}" for k in KEYS}
    metrics = segmentation_metrics("val_")
    preds, target = two_images()
    metrics.update(binarize_logits(as_logits(preds)), target.long())
    first = {k: float(v) for k, v in metrics.compute().items()}
    metrics.reset()
    metrics.update(binarize_logits(as_logits(target)), target.long())  # perfect on image A
    second = {k: float(v) for k, v in metrics.compute().items()}
    assert first["val_dice"] == pytest.approx(0.5)
    assert second["val_dice"] == pytest.approx(1.0)  # nothing left over from before the reset


def test_per_image_score_rejects_unknown_kind() -> None:
    with pytest.raises(ValueError, match="'hd95'"):
        PerImageScore("hd95")
