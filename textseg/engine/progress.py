"""One line per training epoch on stdout, for logs that are not a terminal (a SLURM job's output file).

Lightning's progress bar redraws one line of a terminal; redirected to a file it is off or an unreadable stream of
carriage returns, and nothing else reports progress until the run ends. :class:`EpochSummary` prints, at the end of
every training epoch (after that epoch's validation), one flushed line such as::

    epoch 3/6  step 144  train_loss 0.4821  val_dice 0.5213  val_hd95 12.34  time 12.4s

``textseg fit`` adds it by itself when stdout is not a terminal, or always with ``TEXTSEG_EPOCH_LINES=1``
(:func:`wants_epoch_lines`; ``TEXTSEG_EPOCH_LINES=0`` turns it off).

Lightning reads every progress-bar metric (the loss shown beside the bar) back to the host after every step, which
makes the host wait for the GPU once per step; textseg's methods therefore log no progress-bar metric.
:class:`LogStepRichProgressBar` and :class:`LogStepTQDMProgressBar` move the bar every step and show ``train_loss``,
read at logging steps (``log_every_n_steps``) and at the end of each epoch; ``textseg`` puts them in place of
Lightning's default bar (a bar given in the config is kept, and shows no loss).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar

__all__ = [
    "DEFAULT_KEYS",
    "EPOCH_LINES_ENV",
    "EpochSummary",
    "LogStepRichProgressBar",
    "LogStepTQDMProgressBar",
    "format_epoch_line",
    "read_scalars",
    "step_light_bar",
    "wants_epoch_lines",
]

#: Environment variable: ``1`` always prints the epoch lines in ``textseg fit``, ``0`` never; unset: when stdout is
#: not a terminal.
EPOCH_LINES_ENV = "TEXTSEG_EPOCH_LINES"
#: Metrics of ``trainer.callback_metrics`` shown, in this order, when present.
DEFAULT_KEYS: tuple[str, ...] = ("train_loss", "val_loss", "val_dice", "val_iou", "val_hd95")


def wants_epoch_lines(stream: TextIO | None = None, environ: Mapping[str, str] | None = None) -> bool:
    """Whether ``textseg fit`` should print one line per epoch.

    Args:
        stream: The output stream (default ``sys.stdout``).
        environ: The environment (default ``os.environ``).

    Returns:
        ``True`` when :data:`EPOCH_LINES_ENV` is ``1`` (or ``true``/``yes``/``on``), ``False`` when it is ``0`` (or
        ``false``/``no``/``off``); otherwise whether the stream is not a terminal.
    """
    value = (os.environ if environ is None else environ).get(EPOCH_LINES_ENV, "").strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    stream = sys.stdout if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    try:
        return not (callable(isatty) and isatty())
    except ValueError:  # a closed stream
        return False


def _format_value(value: float) -> str:
    return f"{value:.4g}"


def format_epoch_line(
    epoch: int, max_epochs: int | None, step: int, metrics: Mapping[str, float], seconds: float
) -> str:
    """The line of one epoch.

    Args:
        epoch: The epoch, counted from 1.
        max_epochs: The epoch budget (``None`` or negative: unknown, e.g. a run bounded by ``max_steps``).
        step: The optimizer steps taken so far (``trainer.global_step``).
        metrics: Name -> value, printed in this order (4 significant digits).
        seconds: Wall time of the epoch (training and its validation).

    Returns:
        E.g. ``"epoch 3/6  step 144  train_loss 0.4821  val_dice 0.5213  time 12.4s"``.
    """
    head = f"epoch {epoch}/{max_epochs}" if max_epochs is not None and max_epochs >= 0 else f"epoch {epoch}"
    fields = [head, f"step {step}", *(f"{name} {_format_value(value)}" for name, value in metrics.items())]
    return "  ".join([*fields, f"time {seconds:.1f}s"])


class EpochSummary(Callback):
    """Print one line per training epoch to stdout (flushed), on global rank 0 only.

    The line is printed at the end of each training epoch, after that epoch's validation, with the metrics of
    :data:`DEFAULT_KEYS` (or ``keys``) present in ``trainer.callback_metrics``; validation metrics only when
    validation ran in this epoch (not in the sanity check, not left over from an earlier epoch). The values are read
    once per epoch (one device-to-host copy), never per step.

    Args:
        keys: Metric names to show, in order, when logged.
    """

    def __init__(self, keys: Sequence[str] = DEFAULT_KEYS) -> None:
        super().__init__()
        self.keys = tuple(keys)
        self._start: float | None = None
        self._validated = False

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Start the epoch's clock."""
        self._start = time.monotonic()
        self._validated = False

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Note that this epoch has validation metrics (the sanity check does not count)."""
        if not trainer.sanity_checking:
            self._validated = True

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Print the epoch's line."""
        if not trainer.is_global_zero:
            return
        seconds = time.monotonic() - self._start if self._start is not None else 0.0
        metrics = self._read_metrics(trainer.callback_metrics)
        line = format_epoch_line(trainer.current_epoch + 1, trainer.max_epochs, trainer.global_step, metrics, seconds)
        print(line, file=sys.stdout, flush=True)

    def _read_metrics(self, logged: Mapping[str, Any]) -> dict[str, float]:
        # val_* values of an epoch without validation are stale (an earlier epoch's): left out
        names = [k for k in self.keys if self._validated or not k.startswith("val_")]
        return read_scalars(logged, names)  # the one host sync of the epoch


def read_scalars(logged: Mapping[str, Any], names: Sequence[str]) -> dict[str, float]:
    """The values of ``names`` present in ``logged`` (tensors or numbers) as floats, read back in one transfer."""
    present = [k for k in names if k in logged]
    if not present:
        return {}
    values = [torch.as_tensor(logged[k]).detach().reshape(-1)[0].float() for k in present]
    device = values[0].device
    floats = torch.stack([v.to(device) for v in values]).tolist()
    return dict(zip(present, floats, strict=True))


class _MetricsAtLogSteps:
    """Progress-bar mixin: the training loss shown beside the bar is read at logging steps only.

    The methods log ``train_loss`` without ``prog_bar=True``, because Lightning turns every progress-bar metric into a
    Python number after every step (a host sync each time); this bar reads ``train_loss`` from the trainer's callback
    metrics itself, when the loggers read theirs (every ``log_every_n_steps`` steps) and at the end of each epoch.
    """

    _shown: dict[str, Any] | None = None
    _read_at = -1

    def get_metrics(self, trainer: Trainer, pl_module: LightningModule) -> dict[str, Any]:
        """Lightning's bar metrics plus ``train_loss``, read at logging steps; the last read in between."""
        every = max(1, int(getattr(trainer, "log_every_n_steps", 50)))
        step = trainer.global_step
        if self._shown is None or (trainer.training and step % every == 0 and step != self._read_at):
            shown = dict(super().get_metrics(trainer, pl_module))  # type: ignore[misc]
            shown.update(read_scalars(trainer.callback_metrics, ("train_loss",)))
            self._shown, self._read_at = shown, step
        return self._shown

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Read the metrics afresh for the epoch's last display (unless this step read them already)."""
        if self._read_at != trainer.global_step:
            self._shown = None
        super().on_train_epoch_end(trainer, pl_module)  # type: ignore[misc]


class LogStepRichProgressBar(_MetricsAtLogSteps, RichProgressBar):
    """Lightning's rich progress bar, reading the logged metrics at logging steps only (no per-step host sync)."""


class LogStepTQDMProgressBar(_MetricsAtLogSteps, TQDMProgressBar):
    """Lightning's tqdm progress bar, reading the logged metrics at logging steps only (no per-step host sync)."""


def step_light_bar(bar: Callback) -> Callback:
    """The log-step variant of one of Lightning's default bars (a default-built bar), or ``bar`` itself otherwise."""
    if type(bar) is RichProgressBar:
        return LogStepRichProgressBar()
    if type(bar) is TQDMProgressBar:
        return LogStepTQDMProgressBar()
    return bar
