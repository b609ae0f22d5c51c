"""The teacher-student base of the semi-supervised methods: one EMA teacher, one update, one per-step random stream.

Semi-MedRef (``docs/methods.md`` §6.1) and TextMoE (§5.2) both keep a momentum teacher of the student
(:class:`~textseg.ops.ema.EMATeacher`), update it exactly once per optimiser step after ``optimizer.step`` (so
gradient accumulation does not change the effective decay), and draw their per-step augmentations from random
streams that depend only on ``(aug_seed, global_step, rank)``, so that a resumed run draws what an uninterrupted one
would have (``engine/checkpointing``). That shared part lives here; each method supplies its momentum schedule
(:meth:`TeacherStudentModule.momentum_now`) and its ``training_step``.
"""

from __future__ import annotations

import abc
import random
from typing import Any

import torch

from textseg.methods.base import TextSegModule
from textseg.ops.ema import EMATeacher

#: Multipliers of the per-step seed ``(aug_seed * STEP_SEED_PRIME + global_step) * MAX_RANKS + rank``.
STEP_SEED_PRIME = 1_000_003
MAX_RANKS = 64


class TeacherStudentModule(TextSegModule):
    """A method with an EMA teacher of its student ``self.net``, kept as ``self.teacher`` (``None`` when off).

    The subclass's constructor takes ``use_teacher`` (build the teacher) and ``aug_seed`` (the seed of the per-step
    streams) among its own arguments; they are read from ``self.hparams``.
    """

    teacher: EMATeacher | None

    def configure_models(self) -> None:
        """Student and frozen text encoder (base), plus the EMA teacher, which is never in the optimiser."""
        super().configure_models()
        self.teacher = EMATeacher(self.net) if self.hp.use_teacher else None

    @abc.abstractmethod
    def momentum_now(self) -> float:
        """The EMA momentum of the teacher update after the current optimiser step."""

    def step_seed(self) -> int:
        """The seed of this optimiser step's random streams: a function of ``(aug_seed, global_step, rank)``."""
        return (self.hp.aug_seed * STEP_SEED_PRIME + self.global_step) * MAX_RANKS + self.global_rank

    def step_generators(self) -> tuple[torch.Generator, random.Random]:
        """This step's tensor generator (CPU) and Python RNG, both seeded with :meth:`step_seed` (resume-safe)."""
        seed = self.step_seed()
        return torch.Generator().manual_seed(seed), random.Random(seed)

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        """Step the optimiser, then update the teacher: exactly once per optimiser step (accumulation-safe)."""
        super().optimizer_step(*args, **kwargs)
        if self.teacher is not None:
            self.teacher.update(self.net, self.momentum_now())
