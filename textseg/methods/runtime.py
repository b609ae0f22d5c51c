"""Run plumbing shared by every method, kept out of the task logic of :class:`~textseg.methods.base.TextSegModule`.

:class:`RunHooks` owns what a run needs whatever the method: the non-finite guard and exact resumption callbacks, the
checkpoint stamps (:mod:`textseg.engine.checkpointing`), the averaging of the student's BatchNorm statistics over DDP
processes after each optimiser step, and the networks' memory format and compilation.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Literal

import torch
from lightning.pytorch import Callback, LightningModule
from torch import nn

from textseg.engine import checkpointing
from textseg.engine.guards import NonFiniteGuard
from textseg.ops.ema import average_buffers

#: ``torch.compile`` modes of the ``compile`` argument.
CompileMode = Literal["default", "reduce-overhead", "max-autotune"]


class RunHooks(LightningModule):
    """Lightning hooks of a textseg run, and the run options that are not part of any method.

    The student network is ``self.net``; a method with a teacher keeps it as ``self.teacher``. The constructor saves
    the arguments of the whole constructor chain (method, base and these) as ``self.hparams``.

    Args:
        channels_last: Keep the networks and image batches in ``torch.channels_last`` (faster convs on GPUs).
        compile: ``torch.compile`` the student and teacher networks in place (state-dict keys unchanged), as one
            graph each (``fullgraph=True``: a graph break is an error, not a silent slowdown). ``True`` or
            ``"default"``: the default mode; ``"reduce-overhead"``: CUDA graphs (the step's kernels replayed with one
            launch; the most for a host-bound step, with more memory); ``"max-autotune"``: Triton autotuning (minutes
            of warm-up). The first steps pay the compilation (``docs/guide.md``, "Speed").
        nonfinite: A NaN/inf loss term or gradient ``"stop"``s the run naming it, or ``"skip"``s the step
            (:class:`~textseg.engine.guards.NonFiniteGuard`).
    """

    net: nn.Module

    def __init__(
        self,
        channels_last: bool = False,
        compile: bool | CompileMode = False,
        nonfinite: Literal["stop", "skip"] = "stop",
    ) -> None:
        super().__init__()
        self.save_hyperparameters()  # collects the arguments of every __init__ of the chain that called this one

    def setup(self, stage: str) -> None:
        """Put the student (and teacher) in ``channels_last`` and compile them in place, as the arguments ask."""
        nets = [n for n in (getattr(self, "net", None), getattr(self, "teacher", None)) if n is not None]
        for net in nets:
            if self.hparams["channels_last"]:
                net.to(memory_format=torch.channels_last)
            mode = self.hparams["compile"]
            if mode:
                net.compile(fullgraph=True, mode="default" if mode is True else str(mode))

    def configure_callbacks(self) -> list[Callback]:
        """The non-finite guard (``nonfinite``: stop or skip) and exact resumption, unless already attached."""
        have = {type(cb) for cb in getattr(self._trainer, "callbacks", [])}
        wanted = [NonFiniteGuard(self.hparams["nonfinite"]), checkpointing.ResumeState()]
        return [cb for cb in wanted if type(cb) not in have]

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Stamp the method and backbone (:mod:`textseg.engine.checkpointing`)."""
        checkpointing.stamp(checkpoint, self)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse a checkpoint of another method or network with a clear message."""
        checkpointing.check_fits(checkpoint, self, getattr(self._trainer, "ckpt_path", None))

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        """Step the optimiser, then average the student's BatchNorm statistics over DDP processes (before any EMA)."""
        super().optimizer_step(*args, **kwargs)
        trainer = self._trainer
        if trainer is not None and trainer.world_size > 1:
            average_buffers(self.net, partial(trainer.strategy.reduce, reduce_op="mean"))
