"""Catch bad numbers before they reach the weights: non-finite losses and gradients, decided on the device.

:class:`NonFiniteGuard` runs before every optimizer step. It checks the step's total loss and all gradients of the
trainable parameters with one fused reduction (``torch._foreach_norm`` with the max norm, which cannot overflow) and
keeps the answer on the device: it never reads a tensor back to the host inside a training step. A bad step is
skipped on the device the way a ``GradScaler`` skips one: the flag goes to the optimizer's ``found_inf``, which fused
optimizers (textseg's AdamW is fused, ``docs/methods.md`` §7) honour without a host sync -- the weights and the
optimizer state stay as they were. Under DDP the ranks' flags are all-reduced (max), so every rank skips the same
steps.

``mode="skip"`` counts skipped steps in ``train_skipped_steps`` (a logged tensor, read by the loggers).
``mode="stop"`` (the default) reads the count back every ``log_every_n_steps`` steps and at the end of each epoch,
and stops the run, naming the first bad step, whether its loss was non-finite and its non-finite gradients, plus the
logged loss terms that are not finite. The weights never see the bad step either way.

An optimizer that is not fused (a user's own) has no ``found_inf``: there the guard reads the flag every step and
clears the gradients of a bad step (one host sync per step). Under fp16 loss scaling (``precision="16-mixed"``, a
``GradScaler``) overflow is routine and the scaler owns ``found_inf``: it skips the steps whose scaled gradients
overflowed and lowers its scale; the guard then only watches for a NaN loss.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import Tensor

#: Parameters named in the error message at most.
MAX_NAMED = 5


class NonFiniteLossError(FloatingPointError):
    """A loss term or gradient is NaN or infinite."""


def _inner(optimizer: Any) -> Any:
    """The torch optimizer behind a ``LightningOptimizer``."""
    return getattr(optimizer, "_optimizer", optimizer)


def skips_on_device(optimizer: Any) -> bool:
    """Whether ``optimizer`` honours ``found_inf`` without a host sync (a fused torch optimizer)."""
    return bool(getattr(_inner(optimizer), "defaults", {}).get("fused"))


class NonFiniteGuard(Callback):
    """Stop on, or skip, optimizer steps with a non-finite loss or gradient, deciding on the device.

    Args:
        mode: ``"stop"`` raises :class:`NonFiniteLossError` at the next check (every ``log_every_n_steps`` steps and
            at each epoch's end); ``"skip"`` only skips and counts. Either way a bad step leaves the weights alone.
    """

    def __init__(self, mode: Literal["stop", "skip"] = "stop") -> None:
        if mode not in ("stop", "skip"):
            raise ValueError(f"NonFiniteGuard mode must be 'stop' or 'skip', got {mode!r}")
        self.mode = mode
        self._loss_bad: Tensor | None = None
        self._params: list[tuple[str, Tensor]] | None = None  # trainable (name, parameter), found at the first step
        self._count: Tensor | None = None  # skipped steps (device)
        self._first: Tensor | None = None  # global step of the first bad step, -1 for none (device)
        self._first_loss: Tensor | None = None  # whether that step's loss was non-finite (device)
        self._first_grads: Tensor | None = None  # which parameters had a non-finite gradient then (device)
        self._names: list[str] = []
        self._restored = 0

    # ------------------------------------------------------------------------------------------------ state
    @property
    def skipped(self) -> int:
        """Skipped steps so far (reads the device counter: not for the hot path)."""
        return self._restored + (int(self._count.item()) if self._count is not None else 0)

    def state_dict(self) -> dict[str, Any]:
        """Persist the skip count in checkpoints."""
        return {"skipped": self.skipped}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the skip count."""
        self._restored = int(state_dict.get("skipped", 0))
        self._count = None

    @staticmethod
    def loss_scaled(trainer: Trainer) -> bool:
        """Whether the run scales its fp16 loss with a ``GradScaler`` (``precision="16-mixed"``)."""
        return getattr(trainer.precision_plugin, "scaler", None) is not None

    # ------------------------------------------------------------------------------------------------ hooks
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """List the trainable parameters afresh at the first step of this fit."""
        self._params = None

    def on_before_backward(self, trainer: Trainer, pl_module: LightningModule, loss: Any) -> None:
        """Remember, on the device, whether this step's total loss is NaN or infinite (only NaN when scaled)."""
        loss = loss.detach()
        bad = (torch.isnan(loss) if self.loss_scaled(trainer) else ~torch.isfinite(loss)).any()
        self._loss_bad = bad if self._loss_bad is None else bad | self._loss_bad

    def _step_flags(self, trainer: Trainer, pl_module: LightningModule) -> tuple[Tensor, Tensor, Tensor]:
        """``(step_bad, loss_bad, grad_bad)`` of this step; ``step_bad`` agreed by every rank."""
        if self._params is None:  # the trainable parameters, listed once (not a module walk per step)
            self._params = [(n, p) for n, p in pl_module.named_parameters() if p.requires_grad]
        named = [(n, p) for n, p in self._params if p.grad is not None]
        self._names = [n for n, _ in named]
        device = named[0][1].grad.device if named else pl_module.device  # type: ignore[union-attr]
        # made on the device: a host value copied there would wait for the GPU
        loss_bad = self._loss_bad if self._loss_bad is not None else torch.zeros((), dtype=torch.bool, device=device)
        self._loss_bad = None
        if named and not self.loss_scaled(trainer):  # under a GradScaler, infinities are the scaler's business
            norms = torch._foreach_norm([p.grad for _, p in named], math.inf)  # type: ignore[misc]
            grad_bad = ~torch.isfinite(torch.stack(list(norms)))
        else:
            grad_bad = torch.zeros(len(named), dtype=torch.bool, device=device)
        step_bad = (loss_bad | grad_bad.any()).float()
        if trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            # the ranks decide together (loss terms are rank-local); a collective, not a host sync
            torch.distributed.all_reduce(step_bad, op=torch.distributed.ReduceOp.MAX)
        return step_bad, loss_bad, grad_bad

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer: Any) -> None:
        """Flag the step on the device; the optimizer skips it (``found_inf``) when it is bad."""
        step_bad, loss_bad, grad_bad = self._step_flags(trainer, pl_module)
        if self._count is None or self._count.device != step_bad.device:
            self._count = torch.zeros((), device=step_bad.device)
            self._first = torch.full((), -1, dtype=torch.long, device=step_bad.device)
            self._first_loss = torch.zeros((), dtype=torch.bool, device=step_bad.device)
            self._first_grads = torch.zeros(len(grad_bad), dtype=torch.bool, device=step_bad.device)
        assert self._first is not None and self._first_loss is not None and self._first_grads is not None
        new = (step_bad > 0) & (self._first < 0)
        self._first = torch.where(new, trainer.global_step, self._first)  # a Python scalar: no host-to-device copy
        self._first_loss = torch.where(new, loss_bad, self._first_loss)
        if self._first_grads.shape == grad_bad.shape:
            self._first_grads = torch.where(new, grad_bad, self._first_grads)
        self._count = self._count + step_bad
        if self.mode == "skip":
            pl_module.log("train_skipped_steps", self._count + self._restored, on_step=True, on_epoch=False)
        inner = _inner(optimizer)
        if self.loss_scaled(trainer):
            return  # the GradScaler sets found_inf itself
        if skips_on_device(inner):
            inner.found_inf = step_bad
        elif bool(step_bad):  # an optimizer without found_inf: one host read per step
            for group in inner.param_groups:
                for p in group["params"]:
                    p.grad = None

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:
        """In stop mode, read the flag back when the loggers read theirs (every ``log_every_n_steps`` steps)."""
        if self.mode == "stop" and trainer.global_step % max(1, int(getattr(trainer, "log_every_n_steps", 50))) == 0:
            self._check(trainer)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """In stop mode, never let a bad step pass an epoch's end unreported."""
        if self.mode == "stop":
            self._check(trainer)

    def _check(self, trainer: Trainer) -> None:
        if self._count is None or not bool(self._count > 0):
            return
        assert self._first is not None and self._first_loss is not None and self._first_grads is not None
        grads = [n for n, bad in zip(self._names, self._first_grads.tolist(), strict=False) if bad]
        named = ", ".join(grads[:MAX_NAMED]) + (f" and {len(grads) - MAX_NAMED} more" if len(grads) > MAX_NAMED else "")
        terms = [
            f"{name}={float(value)}"
            for name, value in trainer.callback_metrics.items()
            if name.startswith("train_loss") and not math.isfinite(float(value))
        ]
        raise NonFiniteLossError(
            f"non-finite values at step {int(self._first)} (epoch {trainer.current_epoch}; skipped, the weights did "
            f"not take it): total loss {'non-finite' if bool(self._first_loss) else 'finite'}; logged loss terms "
            f"[{', '.join(terms) or 'all finite now'}]; gradients of [{named or 'none'}]. Lower the learning rate, "
            "use fp32 or bf16 instead of fp16, check the input data, or set `nonfinite: skip` to drop such steps."
        )
