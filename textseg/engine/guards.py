"""Catch bad numbers before they reach the weights: non-finite loss terms and gradients.

:class:`NonFiniteGuard` runs before every optimizer step. It reads the loss terms the method logged for this step
(``train_loss_*``, the flat names every method logs) and the gradients of the trainable parameters. When one is NaN or
infinite it either stops the run with a message naming the loss terms and the first parameters affected
(``mode="stop"``, the default), or drops the step -- every gradient is cleared so the optimizer leaves the weights
untouched -- and counts it in ``train_skipped_steps`` (``mode="skip"``).

Under fp16 loss scaling (``precision="16-mixed"``, a ``GradScaler``) overflow is routine: the scaler skips the steps
whose scaled loss or gradients overflowed and lowers its scale. There the guard leaves infinities to the scaler and
stops (or skips) on a NaN loss only; the loss it sees is the scaled one.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

#: Parameters named in the error message at most.
MAX_NAMED = 5


class NonFiniteLossError(FloatingPointError):
    """A loss term or gradient is NaN or infinite."""


class NonFiniteGuard(Callback):
    """Stop on, or skip, optimizer steps with a non-finite loss term or gradient.

    Args:
        mode: ``"stop"`` raises :class:`NonFiniteLossError`; ``"skip"`` clears the gradients of the step (the weights
            stay as they were) and counts it.
    """

    def __init__(self, mode: Literal["stop", "skip"] = "stop") -> None:
        if mode not in ("stop", "skip"):
            raise ValueError(f"NonFiniteGuard mode must be 'stop' or 'skip', got {mode!r}")
        self.mode = mode
        self.skipped = 0
        self._loss_bad = False

    @staticmethod
    def bad_terms(trainer: Trainer) -> list[str]:
        """Logged ``train_loss*`` values of the current step that are not finite."""
        bad = []
        for name, value in trainer.callback_metrics.items():
            if name.startswith("train_loss") and not math.isfinite(float(value)):
                bad.append(f"{name}={float(value)}")
        return bad

    @staticmethod
    def bad_gradients(module: LightningModule) -> list[str]:
        """Names of trainable parameters whose gradient has a NaN or infinite entry."""
        return [
            name
            for name, p in module.named_parameters()
            if p.grad is not None and not bool(torch.isfinite(p.grad).all())
        ]

    @staticmethod
    def loss_scaled(trainer: Trainer) -> bool:
        """Whether the run scales its fp16 loss with a ``GradScaler`` (``precision="16-mixed"`` on a GPU)."""
        return getattr(trainer.precision_plugin, "scaler", None) is not None

    def on_before_backward(self, trainer: Trainer, pl_module: LightningModule, loss: Any) -> None:
        """Remember whether this step's total loss is bad: NaN or infinite; only NaN when it is scaled.

        The logged terms may be stale from earlier steps, so the loss handed to backward is checked. An infinite
        scaled loss is an overflow, which the ``GradScaler`` handles.
        """
        loss = loss.detach()
        bad = torch.isnan(loss) if self.loss_scaled(trainer) else ~torch.isfinite(loss)
        self._loss_bad = self._loss_bad or bool(bad.any())

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer: Any) -> None:
        """Check the step's loss and gradients; stop or drop the step, naming the non-finite logged loss terms."""
        loss_bad, self._loss_bad = self._loss_bad, False
        grads = [] if self.loss_scaled(trainer) else self.bad_gradients(pl_module)
        terms = self.bad_terms(trainer) if loss_bad or grads else []
        if loss_bad and not terms:
            terms = ["total loss=nan/inf"]
        # Under DDP the ranks decide together: a rank that stops or skips alone would leave the others waiting in the
        # next collective or let the replicas drift apart (loss terms are rank-local, gradients are all-reduced).
        if not trainer.strategy.reduce_boolean_decision(bool(terms or grads), all=False):
            return
        if self.mode == "stop":
            named = ", ".join(grads[:MAX_NAMED]) + (
                f" and {len(grads) - MAX_NAMED} more" if len(grads) > MAX_NAMED else ""
            )
            raise NonFiniteLossError(
                f"non-finite values at epoch {trainer.current_epoch}, step {trainer.global_step}: "
                f"loss terms [{', '.join(terms) or 'all finite on this process'}]; gradients of [{named or 'none'}]. "
                "Lower the learning rate, use fp32 or bf16 instead of fp16, check the input data, or set "
                "`nonfinite: skip` to drop such steps."
            )
        for group in optimizer.param_groups:
            for p in group["params"]:
                p.grad = None
        self.skipped += 1
        pl_module.log("train_skipped_steps", float(self.skipped), on_step=True, on_epoch=False)

    def state_dict(self) -> dict[str, Any]:
        """Persist the skip count in checkpoints."""
        return {"skipped": self.skipped}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the skip count."""
        self.skipped = int(state_dict.get("skipped", 0))
