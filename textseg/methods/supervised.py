"""Labeled-only baseline: the papers' "supervised" / "Baseline" rows."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from textseg.methods.base import TextSegModule


class SupervisedModule(TextSegModule):
    """Train the student on labeled pairs only with the segmentation loss (Semi-MedRef Eq. 2).

    Every constructor argument is the base's (:class:`~textseg.methods.base.TextSegModule`). Use it with
    ``TextSegDataModule(use_unlabeled=False)`` so that an epoch is one pass over the labeled subset.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        """One step of L_sup = DiceCE(f(I, T), Y) on the labeled batch."""
        lab = batch["labeled"]
        out = self.forward_batch(lab)
        loss = self.seg_loss(out["logits"], lab["mask"])
        self.log("train_loss_sup", loss, batch_size=len(lab["text"]))
        self.log("train_loss", loss, batch_size=len(lab["text"]))
        return loss
