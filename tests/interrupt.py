"""A test-only callback that interrupts a training run with a signal, once (imported by the ``textseg`` subprocesses
of ``tests/test_resume.py`` through ``PYTHONPATH``)."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer


class SignalAtStep(Callback):
    """Send ``signal`` to this process before the batch that would make optimizer step ``step + 1``, once.

    Args:
        step: Number of optimizer steps done when the signal is sent.
        marker: File created before the signal; while it exists the callback does nothing (the resumed run).
        signal_name: ``"SIGKILL"`` (a crash: nothing runs after it) or ``"SIGTERM"`` (pre-emption).
    """

    def __init__(self, step: int, marker: str, signal_name: str = "SIGKILL") -> None:
        self.step, self.marker, self.signum = step, Path(marker), getattr(signal, signal_name)

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, *args: Any, **kwargs: Any) -> None:
        """Signal once, when ``step`` optimizer steps are done."""
        if trainer.global_step == self.step and not self.marker.exists():
            self.marker.write_text(str(self.step))
            os.kill(os.getpid(), self.signum)
