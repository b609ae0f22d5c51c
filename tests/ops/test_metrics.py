"""Tests of :mod:`textseg.ops.metrics`: pooled vs per-image Dice/IoU and HD95 golden values (``data.md`` §10)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.ndimage import binary_erosion
from torch import Tensor

from textseg.ops.metrics import (
    LVIT_EPS,
    GroupedSegMetrics,
    HausdorffDistance95,
    PerImageScore,
    binarize_logits,
    hd95_per_image,
    image_diagonal,
    segmentation_metrics,
)

KEYS = ("dice", "iou", "dice_per_image", "iou_per_image", "hd95")


def as_logits(pred: Tensor, on: float = 0.0, off: float = -1e-4) -> Tensor:
    """Logits whose binarisation is ``pred``; foreground exactly at logit 0 tests the inclusive threshold."""
    return torch.where(pred.bool(), torch.full_like(pred, on, dtype=torch.float32), torch.full_like(pred, off))


def run(preds: Tensor, target: Tensor, prefix: str = "test_", batches: int = 1) -> dict[str, float]:
    """Feed ``[B, 1, H, W]`` 0/1 predictions (as logits) and targets in ``batches`` chunks, return the metrics."""
    metrics = segmentation_metrics(prefix)
    for p, t in zip(preds.chunk(batches), target.chunk(batches), strict=True):
        metrics.update(binarize_logits(as_logits(p)), t.long())
    return {k[len(prefix) :]: float(v) for k, v in metrics.compute().items()}


def reference_hd95(pred: np.ndarray, true: np.ndarray) -> float:
    """Brute-force HD95 of one ``[H, W]`` pair (``data.md`` §10.4), independent of MONAI.

    Edges are the pixels that a 4-connected erosion removes (outside the image counts as background); each direction's
    distances are all edge-to-nearest-edge euclidean distances; the 95th percentile interpolates linearly; the result
    is the larger of the two directions. Both empty: 0; exactly one empty: the diagonal.
    """
    pred, true = pred.astype(bool), true.astype(bool)
    if not pred.any() and not true.any():
        return 0.0
    if not pred.any() or not true.any():
        return math.hypot(*pred.shape)
    edges = [np.argwhere(m & ~binary_erosion(m)).astype(float) for m in (pred, true)]
    pairwise = np.linalg.norm(edges[0][:, None, :] - edges[1][None, :, :], axis=-1)
    return float(max(np.percentile(pairwise.min(1), 95), np.percentile(pairwise.min(0), 95)))


def reference(preds: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """Independent numpy implementation of both conventions and of HD95 (``data.md`` §10.1-10.2, §10.4)."""
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
        "hd95": float(np.mean([reference_hd95(pi[0], ti[0]) for pi, ti in zip(preds, target, strict=True)])),
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
        {
            "val_dice": 1.0,
            "val_iou": 1.0,
            "val_dice_per_image": 16 * 2 / (32 + LVIT_EPS),
            "val_iou_per_image": 1.0,
            "val_hd95": 0.0,
        }
    )


def test_empty_split_gives_zero_not_nan() -> None:
    empty = torch.zeros(3, 1, 4, 4)
    got = run(empty, empty)
    assert got == {"dice": 0.0, "iou": 0.0, "dice_per_image": 0.0, "iou_per_image": 0.0, "hd95": 0.0}
    # A per-image score that saw no image is 0 as well.
    assert float(PerImageScore("dice").compute()) == 0.0
    assert float(HausdorffDistance95().compute()) == 0.0


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


# ------------------------------------------------------------------------------------------------ HD95 (§10.4)


def square(top: int, left: int, side: int = 10, size: tuple[int, int] = (32, 32)) -> Tensor:
    """A ``[1, 1, H, W]`` mask holding one filled ``side`` x ``side`` square."""
    mask = torch.zeros(1, 1, *size)
    mask[0, 0, top : top + side, left : left + side] = 1
    return mask


def test_hd95_golden_shifted_square() -> None:
    """A 10x10 square against the same square shifted 3 px to the right: HD95 = 3 exactly.

    MONAI measures between edge pixels (the square's 36 border pixels). From the shifted square's edge to the
    original's: the 7 + 7 top/bottom pixels over the original's columns are at 0; the 3 + 3 beyond them at 1, 2, 3;
    its left column (inside the original, rows 1-8) at min(row, 9 - row, 3) = 1, 2, 3, 3, 3, 3, 2, 1; its right
    column (3 px outside) at 3 each. Sorted: 14 zeros, 4 ones, 4 twos, 14 threes; the 95th percentile sits at
    position 0.95 * 35 = 33.25, between the 34th and 35th values, both 3. The other direction is the mirror image,
    so HD95 = max(3, 3) = 3 (and the plain Hausdorff distance is 3 as well).
    """
    gt, shifted = square(5, 5), square(5, 8)
    assert hd95_per_image(shifted, gt).tolist() == [3.0]
    assert hd95_per_image(gt, shifted).tolist() == [3.0]  # symmetric
    assert hd95_per_image(shifted, gt, percentile=100).tolist() == [3.0]


def test_hd95_ignores_a_stray_pixel_that_the_maximum_sees() -> None:
    """A perfect square plus one stray pixel at (30, 30): HD = |(30, 30) - (14, 14)| = 16 sqrt 2, HD95 = 0.

    Prediction to ground truth: 36 edge pixels at 0 and the stray pixel; 0.95 * 36 = 34.2 falls among the zeros.
    """
    gt = square(5, 5)
    pred = gt.clone()
    pred[0, 0, 30, 30] = 1
    assert hd95_per_image(pred, gt).tolist() == [0.0]
    assert float(hd95_per_image(pred, gt, percentile=100)) == pytest.approx(16 * math.sqrt(2), rel=1e-6)


def test_hd95_identical_and_empty_masks() -> None:
    """Identical: 0. Both empty: 0. Exactly one empty (a missed or a hallucinated lesion): the diagonal."""
    gt, empty = square(5, 5, size=(32, 48)), torch.zeros(1, 1, 32, 48)
    diagonal = math.sqrt(32**2 + 48**2)  # 57.69 px
    assert image_diagonal((32, 48)) == pytest.approx(diagonal)
    assert hd95_per_image(gt, gt).tolist() == [0.0]
    assert hd95_per_image(empty, empty).tolist() == [0.0]
    assert hd95_per_image(empty, gt).tolist() == pytest.approx([diagonal])  # missed lesion
    assert hd95_per_image(gt, empty).tolist() == pytest.approx([diagonal])  # hallucinated lesion
    # Nothing inside the image is further apart than the diagonal: opposite corner pixels.
    corner_a, corner_b = torch.zeros(1, 1, 32, 48), torch.zeros(1, 1, 32, 48)
    corner_a[..., 0, 0], corner_b[..., -1, -1] = 1, 1
    assert float(hd95_per_image(corner_a, corner_b)) < diagonal


def test_hd95_batch_is_averaged_over_images() -> None:
    """A batch of (shifted square: 3) and (missed lesion: the 32x32 diagonal) averages to (3 + 32 sqrt 2) / 2."""
    preds = torch.cat([square(5, 8), torch.zeros(1, 1, 32, 32)])
    target = torch.cat([square(5, 5), square(5, 5)])
    assert hd95_per_image(preds, target).tolist() == pytest.approx([3.0, 32 * math.sqrt(2)])
    got = run(preds, target)
    assert got["hd95"] == pytest.approx((3.0 + 32 * math.sqrt(2)) / 2, rel=1e-6)
    # The mean is over images, whatever the batches: one image per batch gives the same number.
    assert run(preds, target, batches=2)["hd95"] == pytest.approx(got["hd95"], rel=1e-6)


def test_hd95_sum_and_count_states_merge_like_ddp() -> None:
    """Sum/count states summed across processes (``dist_reduce_fx="sum"``) give the mean over all images."""
    preds = torch.cat([square(5, 8), torch.zeros(1, 1, 32, 32), square(0, 0)])
    target = torch.cat([square(5, 5), square(5, 5), square(0, 0)])
    rank0, rank1, whole = HausdorffDistance95(), HausdorffDistance95(), HausdorffDistance95()
    rank0.update(preds[:1], target[:1])
    rank1.update(preds[1:], target[1:])
    whole.update(preds, target)
    assert all(rank0._reductions[k] is rank1._reductions[k] for k in ("total", "count"))
    rank0.merge_state(rank1)
    assert float(rank0.compute()) == pytest.approx(float(whole.compute())) == pytest.approx((3 + 32 * math.sqrt(2)) / 3)
    assert HausdorffDistance95.higher_is_better is False


def test_hd95_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match=r"\[B, 1, H, W\]"):
        hd95_per_image(torch.zeros(2, 8, 8), torch.zeros(2, 8, 8))
    with pytest.raises(ValueError, match="one shape"):
        hd95_per_image(torch.zeros(2, 1, 8, 8), torch.zeros(2, 1, 8, 9))


def test_first_batch_with_equal_states_does_not_merge_metrics() -> None:
    """An all-empty first batch leaves dice_per_image, iou_per_image and hd95 with equal states (0 / 2).

    torchmetrics' compute groups would then merge them and report one value under three names; they are off.
    """
    empty = torch.zeros(2, 1, 8, 8)
    target = torch.zeros(2, 1, 8, 8)
    target[:, :, 2:6, 2:6] = 1
    preds = torch.zeros(2, 1, 8, 8)
    preds[:, :, 2:6, 2:4] = 1
    got = run(torch.cat([empty, preds]), torch.cat([empty, target]), batches=2)
    ref = reference(torch.cat([empty, preds]).numpy(), torch.cat([empty, target]).numpy())
    for key in KEYS:
        assert got[key] == pytest.approx(ref[key], rel=1e-6), key
    assert got["iou_per_image"] == pytest.approx(0.25)  # (0 + 0 + 0.5 + 0.5) / 4, not the Dice 1/3
    # Each half square: the full square's far column is 2 px from the half's edge, (0 + 0 + 2 + 2) / 4 = 1.
    assert got["hd95"] == pytest.approx(1.0)


def test_grouped_metrics_compute_hd95_per_dataset() -> None:
    """Composite splits: ``val_hd95_qata`` and ``val_hd95_mosmed`` from their own images, ``val_hd95`` from all."""
    preds = torch.cat([square(5, 8), square(5, 5), torch.zeros(1, 1, 32, 32)])
    target = torch.cat([square(5, 5), square(5, 5), square(5, 5)])
    metrics = GroupedSegMetrics("val_", ["qata", "mosmed"])
    metrics.update(preds[:2], target[:2].long(), ["qata", "mosmed"])
    metrics.update(preds[2:], target[2:].long(), ["mosmed"])
    got = {k: float(v) for k, v in metrics.compute().items()}
    diagonal = 32 * math.sqrt(2)
    assert got["val_hd95_qata"] == pytest.approx(3.0)
    assert got["val_hd95_mosmed"] == pytest.approx((0.0 + diagonal) / 2)
    assert got["val_hd95"] == pytest.approx((3.0 + 0.0 + diagonal) / 3)
    assert {f"val_{k}{g}" for k in KEYS for g in ("", "_qata", "_mosmed")} == set(got)
