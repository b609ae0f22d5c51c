"""Segmentation metrics, named and aggregated as ``docs/data.md`` §10.3 decides.

Two conventions are reported side by side because they differ by 6-8 Dice points on the same predictions:

* **pooled** (``dice``, ``iou``; GuideDecoder / MMI-UNet / TextMoE / Semi-MedRef tables): TP, FP and FN summed over
  all pixels of all images of the split, then Dice = 2TP / (2TP + FP + FN) and IoU = TP / (TP + FP + FN) of the
  foreground. These are torchmetrics' :class:`~torchmetrics.classification.BinaryF1Score` and
  :class:`~torchmetrics.classification.BinaryJaccardIndex` with global averaging.
* **per-image** (``dice_per_image``, ``iou_per_image``; LViT): the same quantities per image, averaged over images,
  with LViT's formulas: Dice = 2 sum(gt*pred) / (sum gt + sum pred + 1e-5) and IoU = jaccard with ``zero_division=0``,
  so an image with an empty ground truth and an empty prediction scores 0 on both.

A pixel is foreground when ``sigmoid(logit) >= 0.5``, i.e. ``logit >= 0``. Predictions are binarised here, before
torchmetrics sees them, because torchmetrics thresholds float inputs with a strict ``>``.

Defined values for degenerate splits: pooled metrics return 0 when the split has neither foreground nor predicted
foreground (``zero_division=0``), never NaN.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch
from torch import Tensor, nn
from torchmetrics import Metric, MetricCollection
from torchmetrics.classification import BinaryF1Score, BinaryJaccardIndex

#: LViT's smoothing constant in the per-image Dice denominator.
LVIT_EPS = 1e-5


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


def segmentation_metrics(prefix: str, postfix: str | None = None) -> MetricCollection:
    """Build the metric collection for one split, e.g. ``prefix="val_"`` gives ``val_dice``, ``val_iou``, ...

    Update it with ``(binarize_logits(logits), mask.long())``. ``postfix="_qata"`` gives ``val_dice_qata``, ...
    """
    return MetricCollection(
        {
            "dice": BinaryF1Score(multidim_average="global", zero_division=0),
            "iou": BinaryJaccardIndex(zero_division=0),
            "dice_per_image": PerImageScore("dice"),
            "iou_per_image": PerImageScore("iou"),
        },
        prefix=prefix,
        postfix=postfix,
    )


class GroupedSegMetrics(nn.Module):
    """Metrics over a whole split plus one set per dataset of a composite split (TextMoE, Zeng et al. 2025).

    ``compute()`` returns ``{prefix}dice``, ... over all images and ``{prefix}dice_{group}``, ... per group (e.g.
    ``val_dice_qata``, ``val_dice_mosmed``). Every group is computed on every rank in the same order, so the values
    are synchronised under DDP; a group without images reports 0 (the pooled metrics' ``zero_division``).

    Args:
        prefix: Name prefix, e.g. ``"val_"``.
        groups: Group names (dataset names); empty for a single-dataset split.
    """

    def __init__(self, prefix: str, groups: Sequence[str] = ()) -> None:
        super().__init__()
        self.overall = segmentation_metrics(prefix)
        self.groups = nn.ModuleDict({g: segmentation_metrics(prefix, postfix=f"_{g}") for g in groups})

    def update(self, preds: Tensor, target: Tensor, group: Sequence[str] | None = None) -> None:
        """Accumulate binary ``preds`` and ``target`` ``[B, 1, H, W]``; ``group`` names each sample's dataset."""
        self.overall.update(preds, target)
        if not self.groups:
            return
        if group is None or len(group) != preds.shape[0]:
            raise ValueError("per-dataset metrics need the batch's 'dataset' names, one per sample")
        for name, metrics in self.groups.items():
            index = [i for i, g in enumerate(group) if g == name]
            if index:
                cast(MetricCollection, metrics).update(preds[index], target[index])

    def compute(self) -> dict[str, Tensor]:
        """Return the overall and per-group values in one flat dict."""
        values = dict(self.overall.compute())
        for metrics in self.groups.values():
            values.update(cast(MetricCollection, metrics).compute())
        return values

    def reset(self) -> None:
        """Reset every collection."""
        self.overall.reset()
        for metrics in self.groups.values():
            cast(MetricCollection, metrics).reset()
