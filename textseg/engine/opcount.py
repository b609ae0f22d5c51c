"""Count the aten ops of one optimizer step of a real ``Trainer.fit``: all ops, kernel-launching ops, host syncs.

A GPU step is bound by the host when it issues thousands of small kernels or waits for the device. Both are visible
on a CPU, in the dispatcher: :class:`StepOpCounter` is a callback that records every aten op dispatched during one
chosen training step -- ``training_step``, backward, the optimizer step, the EMA update, every callback of the
step and Lightning's hand-over of the step's metrics to the loggers and the progress bar (from the callbacks'
``on_train_batch_start`` to the end of ``update_train_step_metrics``), but not the data loading -- and sorts them
into:

* **launching** ops: everything except views, ``empty*``, ``detach``, ``alias``, ``lift_fresh`` and
  ``_local_scalar_dense`` (on a GPU each launching op is at least one kernel);
* **sync-type** ops (:data:`SYNC_OPS`): ops whose result the host must wait for (``.item()``, ``bool(tensor)``,
  ``nonzero``...). The host-side ``step`` scalars of torch's optimizers are not counted (they live on the CPU);
* **host reads** (:data:`HOST_READS`): ``Tensor.tolist``/``numpy``/``cpu`` calls, which read values without
  dispatching an op, so the dispatcher cannot see them. On a CPU run a read of a host tensor (tokenizer output, a
  draw of the step's CPU generator) looks like a read of a device tensor (a sync on a GPU), so each is listed with
  the line that made it, and the test pins those lines.

``benchmarks/step_ops.py`` reports the counts for every method and backbone; ``tests/engine/test_opcount.py`` pins
the sync-type count of each method's step.
"""

from __future__ import annotations

import functools
import tempfile
import traceback
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import torch
from lightning.pytorch import Callback, LightningDataModule, LightningModule, Trainer
from lightning.pytorch.loggers import CSVLogger
from torch.utils._python_dispatch import TorchDispatchMode

from textseg.engine.progress import LogStepTQDMProgressBar

__all__ = ["HOST_READS", "NON_LAUNCHING", "SYNC_OPS", "OpCountingMode", "OpCounts", "StepOpCounter", "count_step"]

#: Ops whose result the host waits for.
SYNC_OPS: frozenset[str] = frozenset(
    {"_local_scalar_dense", "nonzero", "is_nonzero", "equal", "masked_select", "_unique", "_unique2", "unique_dim",
     "unique_consecutive", "repeat_interleave", "item"}
)  # fmt: skip
#: Tensor methods that read values to the host without dispatching an op.
HOST_READS: tuple[str, ...] = ("tolist", "numpy", "cpu")
#: Ops that launch no kernel (besides views).
NON_LAUNCHING: frozenset[str] = frozenset(
    {"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "detach", "alias", "lift_fresh",
     "lift_fresh_copy", "_local_scalar_dense", "set_", "resize_"}
)  # fmt: skip


@dataclass
class OpCounts:
    """Op counts of one step.

    Attributes:
        ops: Every aten op, by name.
        launching: Kernel-launching ops, by name.
        syncs: Sync-type ops, by name and where they were called (``file:line``).
        optimizer_scalars: ``.item()`` calls on the optimizer's host-side ``step`` scalars (not syncs).
        host_reads: :data:`HOST_READS` calls, by method and where they were called (``file:line``).
    """

    ops: Counter[str] = field(default_factory=Counter)
    launching: Counter[str] = field(default_factory=Counter)
    syncs: Counter[str] = field(default_factory=Counter)
    optimizer_scalars: int = 0
    host_reads: Counter[str] = field(default_factory=Counter)

    def totals(self) -> dict[str, int]:
        """``{"aten_ops", "launching_ops", "sync_ops"}``."""
        return {
            "aten_ops": sum(self.ops.values()),
            "launching_ops": sum(self.launching.values()),
            "sync_ops": sum(self.syncs.values()),
        }


def _caller(depth: int = 3) -> tuple[str, bool]:
    """Where a sync-type op was called from (the innermost textseg or user frame) and whether torch.optim did."""
    frames = [f for f in traceback.extract_stack()[:-depth] if not f.filename.endswith("opcount.py")]
    # Lightning runs training_step and backward inside optimizer.step(closure): only a sync whose innermost
    # textseg-or-optimizer frame is torch.optim's own is an optimizer scalar
    owners = [f for f in frames if "/torch/optim/" in f.filename or "/textseg/" in f.filename]
    in_optim = bool(owners) and "/torch/optim/" in owners[-1].filename
    ours = [f for f in frames if "/textseg/" in f.filename]
    # no textseg frame (e.g. Lightning converting logged metrics): the innermost frame outside torch
    outside = [f for f in frames if "/torch/" not in f.filename] or frames
    where = ours[-1] if ours else outside[-1]
    return f"{where.filename.rsplit('/', 2)[-2]}/{where.filename.rsplit('/', 1)[-1]}:{where.lineno}", in_optim


class OpCountingMode(TorchDispatchMode):
    """A dispatch mode adding every aten op it sees, and every :data:`HOST_READS` call, to an :class:`OpCounts`."""

    def __init__(self, counts: OpCounts) -> None:
        super().__init__()
        self.counts = counts
        self._originals: dict[str, Any] = {}

    def __enter__(self) -> OpCountingMode:
        """Start counting; the host-read methods of ``torch.Tensor`` record their callers until exit."""
        for name in HOST_READS:
            original = self._originals[name] = getattr(torch.Tensor, name)
            setattr(torch.Tensor, name, self._recording(name, original))
        return super().__enter__()

    def __exit__(self, *exc: Any) -> None:
        """Stop counting and restore ``torch.Tensor``."""
        super().__exit__(*exc)
        for name, original in self._originals.items():
            setattr(torch.Tensor, name, original)
        self._originals.clear()

    def _recording(self, name: str, original: Any) -> Any:
        counts = self.counts

        @functools.wraps(original)
        def read(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            counts.host_reads[f"{name} @ {_caller(depth=2)[0]}"] += 1
            return original(tensor, *args, **kwargs)

        return read

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        """Count ``func`` by kind, then run it."""
        name = func._overloadpacket.__name__
        self.counts.ops[name] += 1
        if name in SYNC_OPS:
            where, in_optim = _caller()
            if in_optim and name == "_local_scalar_dense":
                self.counts.optimizer_scalars += 1
            else:
                self.counts.syncs[f"{name} @ {where}"] += 1
        if not (func.is_view or name in NON_LAUNCHING or name.startswith("empty")):
            self.counts.launching[name] += 1
        return func(*args, **(kwargs or {}))


class StepOpCounter(Callback):
    """Count the ops of training step ``step`` (0-based batch index of the first epoch) of a real fit.

    Args:
        step: The batch whose step is counted (a later one than 0 avoids one-time initialisation).
    """

    def __init__(self, step: int = 1) -> None:
        self.step = step
        self.counts = OpCounts()
        self._mode: OpCountingMode | None = None

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """End counting after Lightning has handed the step's metrics to the loggers and the progress bar.

        That is the end of ``_LoggerConnector.update_train_step_metrics``, which Lightning calls after the
        ``on_train_batch_end`` hooks; should a Lightning release not have it, counting ends after the module's
        ``on_train_batch_end`` (the EMA update included).
        """
        connector = getattr(trainer, "_logger_connector", None)
        if callable(getattr(connector, "update_train_step_metrics", None)):
            self._end_after(connector, "update_train_step_metrics")
        else:
            self._end_after(pl_module, "on_train_batch_end")

    def _end_after(self, owner: Any, name: str) -> None:
        original = getattr(owner, name)

        @functools.wraps(original)
        def end(*args: Any, **kwargs: Any) -> Any:
            result = original(*args, **kwargs)
            if self._mode is not None:
                self._mode.__exit__(None, None, None)
                self._mode = None
            return result

        setattr(owner, name, end)

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        """Start counting at the chosen batch of the first epoch."""
        if trainer.current_epoch == 0 and batch_idx == self.step:
            self._mode = OpCountingMode(self.counts)
            self._mode.__enter__()


def count_step(
    module: LightningModule, datamodule: LightningDataModule, step: int = 1, log_every_n_steps: int = 50
) -> OpCounts:
    """Fit ``module`` on the CPU for ``step + 1`` batches as ``textseg fit`` runs them; count step ``step``.

    The fit has what a normal run has around the step: a CSV logger (in a temporary folder), the progress bar
    ``textseg fit`` uses (:class:`~textseg.engine.progress.LogStepTQDMProgressBar`) and the non-finite guard; no
    validation or checkpoints. Step ``step`` is a logging step when ``step % log_every_n_steps == 0`` (global steps
    count from 0 before the step and the loggers read at the optimizer step's end): then the loggers, the bar and the
    guard read their values back.

    Returns:
        The counts of that optimizer step (:class:`StepOpCounter`).
    """
    counter = StepOpCounter(step=step)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(
            accelerator="cpu",
            max_epochs=1,
            limit_train_batches=step + 1,
            limit_val_batches=0,
            logger=CSVLogger(tmp),
            log_every_n_steps=log_every_n_steps,
            enable_model_summary=False,
            enable_checkpointing=False,
            callbacks=[counter, LogStepTQDMProgressBar()],
        )
        trainer.fit(module, datamodule=datamodule)
    return counter.counts
