"""Test-only callbacks that interrupt a training run with a signal, once (imported by the ``textseg`` subprocesses of
``tests/engine/test_resume.py`` through ``PYTHONPATH``)."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any, Literal

from lightning.pytorch import Callback, LightningModule, Trainer

#: Where in the loop the signal is sent (see :class:`SignalAtStep`).
When = Literal["train_batch_start", "validation_batch_start", "save_checkpoint"]


class SignalAtStep(Callback):
    """Send ``signal`` to this process at a given point of the loop, once.

    ``when`` says where, with ``step`` optimizer steps done:

    * ``"train_batch_start"``: before the training batch that would make optimizer step ``step + 1``;
    * ``"validation_batch_start"``: before validation batch ``batch`` of the validation run after ``step`` steps;
    * ``"save_checkpoint"``: while the first checkpoint of step ``step`` is being written (after the trainer has
      gathered it, before the file is written).

    Args:
        step: Number of optimizer steps done when the signal is sent.
        marker: File created before the signal; while it exists the callback does nothing (the resumed run).
        signal_name: ``"SIGKILL"`` (a crash: nothing runs after it) or ``"SIGTERM"`` (pre-emption).
        when: The point of the loop.
        batch: The validation batch index (``when="validation_batch_start"``).
    """

    def __init__(
        self,
        step: int,
        marker: str,
        signal_name: str = "SIGKILL",
        when: When = "train_batch_start",
        batch: int = 0,
    ) -> None:
        self.step, self.marker, self.signum = step, Path(marker), getattr(signal, signal_name)
        self.when, self.batch = when, batch

    def _signal(self, trainer: Trainer, when: When) -> None:
        if when == self.when and trainer.global_step == self.step and not self.marker.exists():
            self.marker.write_text(f"{self.when} {self.step}")
            os.kill(os.getpid(), self.signum)

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, *args: Any, **kwargs: Any) -> None:
        """Signal once, when ``step`` optimizer steps are done (``when="train_batch_start"``)."""
        self._signal(trainer, "train_batch_start")

    def on_validation_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        """Signal once, before validation batch ``batch`` (``when="validation_batch_start"``)."""
        if not trainer.sanity_checking and batch_idx == self.batch:
            self._signal(trainer, "validation_batch_start")

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        """Signal once, while a checkpoint is being written (``when="save_checkpoint"``)."""
        self._signal(trainer, "save_checkpoint")
