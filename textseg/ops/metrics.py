"""Segmentation metrics, named and aggregated as ``docs/data.md`` §10.3-10.4 decide.

Two overlap conventions are reported side by side because they differ by 6-8 Dice points on the same predictions:

* **pooled** (``dice``, ``iou``; GuideDecoder / MMI-UNet / TextMoE / Semi-MedRef tables): TP, FP and FN summed over
  all pixels of all images of the split, then Dice = 2TP / (2TP + FP + FN) and IoU = TP / (TP + FP + FN) of the
  foreground. These are torchmetrics' :class:`~torchmetrics.classification.BinaryF1Score` and
  :class:`~torchmetrics.classification.BinaryJaccardIndex` with global averaging.
* **per-image** (``dice_per_image``, ``iou_per_image``; LViT): the same quantities per image, averaged over images,
  with LViT's formulas: Dice = 2 sum(gt*pred) / (sum gt + sum pred + 1e-5) and IoU = jaccard with ``zero_division=0``,
  so an image with an empty ground truth and an empty prediction scores 0 on both.

A pixel is foreground when ``sigmoid(logit) >= 0.5``, i.e. ``logit >= 0``. Predictions are binarised here, before
torchmetrics sees them, because torchmetrics thresholds float inputs with a strict ``>``.

Beside them, a boundary metric (``hd95``, ``docs/data.md`` §10.4): the 95th-percentile symmetric Hausdorff distance of
MONAI (euclidean, between the edge pixels of the prediction and of the ground truth), in pixels of the evaluated
resolution (the network's input size), per image, averaged over the images. Lower is better. Both masks empty scores 0;
exactly one empty scores the image diagonal ``sqrt(H^2 + W^2)``, more than any distance inside the image, so a missed
or a hallucinated lesion is penalised and the value is never inf or NaN.

Defined values for degenerate splits: pooled metrics return 0 when the split has neither foreground nor predicted
foreground (``zero_division=0``), never NaN; the per-image means return 0 when no image was seen.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import cast

import torch
from torch import Tensor, nn
from torchmetrics import Metric, MetricCollection
from torchmetrics.aggregation import SumMetric
from torchmetrics.classification import BinaryF1Score, BinaryJaccardIndex

#: LViT's smoothing constant in the per-image Dice denominator.
LVIT_EPS = 1e-5
#: Percentile of the Hausdorff distance reported as ``hd95`` (``docs/data.md`` §10.4).
HD_PERCENTILE = 95.0


def binarize_logits(logits: Tensor) -> Tensor:
    """Return the {0, 1} prediction ``sigmoid(logits) >= 0.5`` as a long tensor."""
    return (logits >= 0).long()


def per_image_scores(preds: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """LViT per-image Dice and IoU of binary predictions (``docs/data.md`` §10.2).

    Args:
        preds: Binary predictions ``[B, ...]``.
        target: Binary targets ``[B, ...]``.

    Returns:
        ``(dice, iou)``, float64 ``[B]``: Dice = 2 sum(t*p) / (sum t + sum p + 1e-5); IoU = |t & p| / |t | p|, 0 when
        the union is empty.
    """
    p = preds.reshape(preds.shape[0], -1).double()
    t = target.reshape(target.shape[0], -1).double()
    inter = (p * t).sum(1)
    dice = 2 * inter / (t.sum(1) + p.sum(1) + LVIT_EPS)
    union = ((p + t) > 0).double().sum(1)
    iou = torch.where(union > 0, inter / union.clamp_min(1), torch.zeros_like(union))
    return dice, iou


class PerImageScore(Metric):
    """Mean over images of a per-image Dice or IoU (LViT convention, ``docs/data.md`` §10.2).

    Args:
        kind: ``"dice"`` or ``"iou"``.
    """

    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    def __init__(self, kind: str = "dice") -> None:
        super().__init__()
        if kind not in ("dice", "iou"):
            raise ValueError(f"PerImageScore kind must be 'dice' or 'iou', got {kind!r}")
        self.kind = kind
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor) -> None:
        """Accumulate a batch of binary predictions and targets of shape ``[B, ...]``."""
        dice, iou = per_image_scores(preds, target)
        score = dice if self.kind == "dice" else iou
        self.total: Tensor = self.total + score.sum()
        self.count: Tensor = self.count + score.numel()

    def compute(self) -> Tensor:
        """Return the mean score (0 when no image was seen)."""
        total, count = torch.as_tensor(self.total), torch.as_tensor(self.count)
        return (total / count.clamp_min(1)).float()


def image_diagonal(spatial_shape: Sequence[int]) -> float:
    """Length in pixels of the image diagonal, ``sqrt(H^2 + W^2)``: HD95's value for one empty mask (§10.4)."""
    return math.sqrt(sum(int(s) ** 2 for s in spatial_shape))


def hd95_per_image(preds: Tensor, target: Tensor, percentile: float = HD_PERCENTILE) -> Tensor:
    """95th-percentile Hausdorff distance of each image, in pixels (``docs/data.md`` §10.4).

    MONAI's :func:`~monai.metrics.compute_hausdorff_distance` (symmetric, euclidean, unit spacing) on the images whose
    prediction and ground truth both have foreground, all of them in one call, on the CPU (MONAI's edge extraction
    and KD-tree distances run there; a CUDA input is copied once). The images MONAI would score inf or NaN are set
    here: both masks empty gives 0, exactly one empty gives the image diagonal (:func:`image_diagonal`).

    Args:
        preds: Binary predictions ``[B, 1, H, W]`` (or ``[B, 1, D, H, W]``).
        target: Binary targets of the same shape.
        percentile: Percentile of the surface distances (95 for HD95; 100 gives the plain Hausdorff distance).

    Returns:
        float64 ``[B]`` on the CPU, each value in ``[0, diagonal]``.

    Raises:
        ValueError: If the shapes differ or are not ``[B, 1, *spatial]``.
    """
    if preds.shape != target.shape or preds.ndim < 4 or preds.shape[1] != 1:
        raise ValueError(
            f"HD95 needs binary preds and target of one shape [B, 1, H, W], got {tuple(preds.shape)} and "
            f"{tuple(target.shape)}"
        )
    from monai.metrics import compute_hausdorff_distance  # lazy: importing monai.metrics takes seconds

    pred = preds.detach().to("cpu") > 0
    true = target.detach().to("cpu") > 0
    has_pred, has_true = pred.flatten(1).any(1), true.flatten(1).any(1)
    diagonal = image_diagonal(pred.shape[2:])
    out = torch.where(has_pred == has_true, 0.0, diagonal).double()  # both empty: 0; exactly one empty: diagonal
    both = has_pred & has_true
    if bool(both.any()):
        with warnings.catch_warnings():  # MONAI 1.5-1.6 warns about an argument of its own internal call
            warnings.filterwarnings("ignore", message=".*always_return_as_numpy", category=FutureWarning)
            hd = compute_hausdorff_distance(
                pred[both], true[both], include_background=True, distance_metric="euclidean", percentile=percentile
            )[:, 0].double()
        out[both] = torch.where(torch.isfinite(hd), hd, torch.full_like(hd, diagonal))
    return out


class HausdorffDistance95(Metric):
    """Mean over images of the per-image HD95 in pixels (``docs/data.md`` §10.4); lower is better.

    Per image, :func:`hd95_per_image`: MONAI's 95th-percentile symmetric Hausdorff distance between the edge pixels of
    the prediction and of the ground truth (euclidean, in pixels of the evaluated resolution), with two conventions
    where MONAI gives inf or NaN: **both masks empty → 0**; **exactly one empty → the image diagonal**
    ``sqrt(H^2 + W^2)`` (more than any distance inside the image), so that a missed lesion or a hallucinated one is
    penalised and the mean is never inf or NaN. The states are a sum and a count (``dist_reduce_fx="sum"``), so the
    mean is over all images of all processes under DDP; 0 when no image was seen. The distances are computed on the
    CPU, in validation and test only.
    """

    full_state_update = False
    higher_is_better = False
    is_differentiable = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor) -> None:
        """Accumulate a batch of binary predictions and targets of shape ``[B, 1, H, W]``."""
        hd = hd95_per_image(preds, target)
        self.total: Tensor = self.total + hd.sum().to(self.total.device)
        self.count: Tensor = self.count + hd.numel()

    def compute(self) -> Tensor:
        """Return the mean HD95 in pixels (0 when no image was seen)."""
        total, count = torch.as_tensor(self.total), torch.as_tensor(self.count)
        return (total / count.clamp_min(1)).float()


def segmentation_metrics(prefix: str, postfix: str | None = None) -> MetricCollection:
    """Build the metric collection for one split, e.g. ``prefix="val_"`` gives ``val_dice``, ``val_iou``, ...

    The metrics are ``dice``, ``iou`` (pooled), ``dice_per_image``, ``iou_per_image`` (LViT) and ``hd95`` (pixels),
    ``docs/data.md`` §10.3-10.4. Update it with ``(binarize_logits(logits), mask.long())``. ``postfix="_qata"`` gives
    ``val_dice_qata``, ...

    Compute groups are off: torchmetrics would otherwise merge metrics whose states are equal after the first batch
    (the per-image means and HD95 all hold a ``total`` and a ``count``; an all-empty or all-perfect first batch makes
    them equal) and then report one metric's value under the others' names.
    """
    return MetricCollection(
        {
            "dice": BinaryF1Score(multidim_average="global", zero_division=0),
            "iou": BinaryJaccardIndex(zero_division=0),
            "dice_per_image": PerImageScore("dice"),
            "iou_per_image": PerImageScore("iou"),
            "hd95": HausdorffDistance95(),
        },
        prefix=prefix,
        postfix=postfix,
        compute_groups=False,
    )


class GroupedSegMetrics(nn.Module):
    """Metrics over a whole split plus one set per dataset of a composite split (TextMoE, Zeng et al. 2025).

    ``compute()`` returns ``{prefix}dice``, ... over all images and ``{prefix}dice_{group}``, ... per group (e.g.
    ``val_dice_qata``, ``val_dice_mosmed``). Every group is computed on every rank in the same order, so the values
    are synchronised under DDP. A group without images in the whole split (summed over ranks) is evaluated nowhere:
    its keys are left out of ``compute()``, so that no 0 stands for "not measured" in logs, ``test_metrics.json`` and
    ``textseg report``.

    Args:
        prefix: Name prefix, e.g. ``"val_"``.
        groups: Group names (dataset names); empty for a single-dataset split.
    """

    def __init__(self, prefix: str, groups: Sequence[str] = ()) -> None:
        super().__init__()
        self.overall = segmentation_metrics(prefix)
        self.groups = nn.ModuleDict({g: segmentation_metrics(prefix, postfix=f"_{g}") for g in groups})
        self.counts = nn.ModuleDict({g: SumMetric() for g in groups})  # images per group, summed over ranks

    def update(self, preds: Tensor, target: Tensor, group: Sequence[str] | None = None) -> None:
        """Accumulate binary ``preds`` and ``target`` ``[B, 1, H, W]``; ``group`` names each sample's dataset."""
        self.overall.update(preds, target)
        if not self.groups:
            return
        if group is None or len(group) != preds.shape[0]:
            raise ValueError("per-dataset metrics need the batch's 'dataset' names, one per sample")
        for name, metrics in self.groups.items():
            index = [i for i, g in enumerate(group) if g == name]
            cast(SumMetric, self.counts[name]).update(float(len(index)))  # 0 too: every group counts every batch
            if index:
                cast(MetricCollection, metrics).update(preds[index], target[index])

    def compute(self) -> dict[str, Tensor]:
        """Return the overall and per-group values in one flat dict."""
        values = dict(self.overall.compute())
        for name, metrics in self.groups.items():
            # every rank computes the same synced count, so every rank leaves out the same groups
            if float(cast(SumMetric, self.counts[name]).compute()) > 0:
                values.update(cast(MetricCollection, metrics).compute())
        return values

    def reset(self) -> None:
        """Reset every collection."""
        self.overall.reset()
        for metrics in self.groups.values():
            cast(MetricCollection, metrics).reset()
        for count in self.counts.values():
            cast(SumMetric, count).reset()
