"""Exponential-moving-average (EMA) teacher and the momentum / weight schedules of both methods.

Both semi-supervised methods in textseg use a mean teacher (Tarvainen & Valpola, 2017): a copy of the student
whose weights follow

    theta_T <- m * theta_T + (1 - m) * theta_S

after every optimizer step (Semi-MedRef, Li et al., Sec. 2.2; TextMoE, Zeng et al.). textseg follows the
project decision of ``docs/methods.md`` Sec. 5.2 / 6.1 for **both** methods:

* the teacher lives inside the LightningModule as a submodule (so it is saved in checkpoints automatically),
  always in eval mode (BatchNorm uses its running statistics, dropout is off: deterministic targets);
* parameters **and floating-point buffers** (BatchNorm running mean / variance) are averaged, integer buffers
  (``num_batches_tracked``) are copied;
* the update runs once per **optimizer step**, so it is correct under gradient accumulation and DDP (every
  rank holds the same, already all-reduced student weights after ``optimizer.step``);
* each method keeps its own momentum schedule: :func:`semimedref_momentum` (0.99 -> 0.999 per epoch) and
  :func:`textmoe_momentum` (min(1 - 1/(step + 1), 0.99) per optimizer step).

``torch.optim.swa_utils.AveragedModel`` is not used: its ``multi_avg_fn`` sees one fixed decay per model and
it averages buffers only when ``use_buffers=True``, in which case integer buffers are averaged too; here the
momentum changes every step and integer buffers must be copied, so the update is written out.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from textseg.errors import DataError

__all__ = ["EMATeacher", "linear_ramp", "semimedref_momentum", "textmoe_momentum"]

_T = TypeVar("_T", bound="EMATeacher")


def _unwrap(module: nn.Module) -> nn.Module:
    """Strip DDP / DataParallel and ``torch.compile`` wrappers so parameter names match the teacher copy."""
    while True:
        if isinstance(module, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            module = module.module
            continue
        inner = getattr(module, "_orig_mod", None)
        if isinstance(inner, nn.Module):
            module = inner
            continue
        return module


def _is_averaged(t: Tensor) -> bool:
    """Whether an entry is averaged (floating point or complex) rather than copied (integer / bool)."""
    return t.is_floating_point() or t.is_complex()


class EMATeacher(nn.Module):
    """Momentum (mean) teacher: a frozen, eval-mode deep copy of the student updated by EMA.

    The teacher copy is stored as the submodule ``module``; its state-dict keys are therefore
    ``<attribute name in the owner>.module.<student key>`` and it is saved and restored with the owning
    LightningModule's checkpoint. Its parameters have ``requires_grad=False`` and are never returned by
    ``student.parameters()``, so an optimizer built from the student (e.g.
    ``torch.optim.AdamW(student.parameters())``) never sees them.

    The owning LightningModule calls :meth:`update` exactly once per **optimizer step**, after
    ``optimizer.step``; the simplest place is an ``optimizer_step`` override (Lightning calls it once per
    step, after the gradient-accumulation window)::

        self.student = Net(...)
        self.teacher = EMATeacher(self.student)
        ...
        def optimizer_step(self, *args, **kwargs):
            super().optimizer_step(*args, **kwargs)
            self.teacher.update(self.student, semimedref_momentum(self.current_epoch))

    (``on_before_zero_grad``, the public Semi-MedRef code's hook, also runs once per optimizer step, inside
    the next step's closure, i.e. still after the previous ``optimizer.step``.) Updating per optimizer step
    rather than inside ``training_step`` makes the EMA count optimizer steps, not micro-batches, so
    gradient accumulation does not change the effective decay, and under DDP every rank averages the same
    synchronised student weights.

    Args:
        student: The network to copy. The copy is made with :func:`copy.deepcopy` at construction; later
            changes to the student reach the teacher only through :meth:`update`.
    """

    def __init__(self, student: nn.Module) -> None:
        super().__init__()
        self.module: nn.Module = copy.deepcopy(_unwrap(student))
        for p in self.module.parameters():
            p.requires_grad_(False)
        super().train(False)

    def train(self: _T, mode: bool = True) -> _T:
        """Keep the teacher in eval mode whatever ``mode`` is requested.

        Lightning (and ``nn.Module.train`` on the owner) calls ``train(True)`` recursively at the start of
        every training epoch; the override makes eval mode sticky so BatchNorm keeps using running statistics
        and dropout stays off in the teacher.

        Args:
            mode: Ignored (the teacher is always put in eval mode).

        Returns:
            The teacher itself.
        """
        del mode
        return super().train(False)

    def requires_grad_(self: _T, requires_grad: bool = True) -> _T:
        """Keep the teacher frozen: every parameter stays ``requires_grad=False``.

        Args:
            requires_grad: Ignored (the teacher is never trained by gradients).

        Returns:
            The teacher itself.
        """
        del requires_grad
        return super().requires_grad_(False)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Run the teacher copy without building an autograd graph.

        Args:
            *args: Positional arguments of the student's ``forward``.
            **kwargs: Keyword arguments of the student's ``forward``.

        Returns:
            Whatever the student's ``forward`` returns, computed by the teacher weights under
            ``torch.no_grad``.
        """
        with torch.no_grad():
            return self.module(*args, **kwargs)

    @staticmethod
    def _entries(module: nn.Module) -> Iterator[tuple[str, Tensor]]:
        """All parameters and buffers of ``module`` by qualified name (parameters first)."""
        yield from module.named_parameters()
        yield from module.named_buffers()

    @torch.no_grad()
    def update(self, student: nn.Module, momentum: float) -> None:
        """One EMA step: ``theta_T <- m * theta_T + (1 - m) * theta_S`` (Semi-MedRef Sec. 2.2).

        Applied to every parameter and every floating-point buffer (BatchNorm running mean / variance);
        integer and bool buffers (``num_batches_tracked``) are copied from the student. ``momentum = 1``
        keeps the teacher's averaged entries, ``momentum = 0`` copies the student exactly.

        Args:
            student: The student network (a DDP / DataParallel / ``torch.compile`` wrapper is unwrapped). It
                must have the same parameter and buffer names and shapes as the copy made at construction.
            momentum: The decay ``m`` in ``[0, 1]``.

        Raises:
            DataError: If ``momentum`` is not a finite number in ``[0, 1]`` or the student's parameters /
                buffers do not match the teacher's (names or shapes).
        """
        m = float(momentum)
        if not math.isfinite(m) or not 0.0 <= m <= 1.0:
            raise DataError(f"EMATeacher.update: momentum must be in [0, 1], got {momentum!r}")
        source = dict(self._entries(_unwrap(student)))
        target = dict(self._entries(self.module))
        if source.keys() != target.keys():
            missing = sorted(target.keys() - source.keys())[:5]
            extra = sorted(source.keys() - target.keys())[:5]
            raise DataError(
                "EMATeacher.update: the student's parameters/buffers do not match the teacher copy "
                f"(missing in student: {missing}, unexpected in student: {extra})"
            )
        # Group averaged entries by (device, dtype) so the update runs as a few fused foreach kernels.
        groups: dict[tuple[torch.device, torch.dtype], tuple[list[Tensor], list[Tensor]]] = {}
        for name, t in target.items():
            s = source[name]
            if s.shape != t.shape:
                raise DataError(
                    f"EMATeacher.update: shape mismatch for {name!r}: teacher {tuple(t.shape)}, "
                    f"student {tuple(s.shape)}"
                )
            if not _is_averaged(t):
                t.copy_(s)
                continue
            t_list, s_list = groups.setdefault((t.device, t.dtype), ([], []))
            t_list.append(t)
            s_list.append(s.detach().to(device=t.device, dtype=t.dtype))
        for t_list, s_list in groups.values():
            if m == 0.0:
                # Exact copy (also when the teacher holds non-finite values, where 0 * inf would be NaN).
                torch._foreach_copy_(t_list, s_list)
            elif m != 1.0:
                torch._foreach_mul_(t_list, m)
                torch._foreach_add_(t_list, s_list, alpha=1.0 - m)


def semimedref_momentum(
    epoch: int,
    burn_in_epochs: int = 5,
    ramp_epochs: int = 20,
    start: float = 0.99,
    end: float = 0.999,
) -> float:
    """Semi-MedRef EMA momentum per epoch (``docs/methods.md`` Sec. 6.1; the paper states the final 0.999).

    ``m(e) = start`` for ``e <= burn_in_epochs``, then linear to ``end`` over ``ramp_epochs`` epochs:
    ``m(e) = start + (end - start) * min((e - burn_in_epochs) / ramp_epochs, 1)``. With the defaults:
    0.99 at epochs 0..5, 0.9945 at 15, 0.999 from epoch 25 on.

    Args:
        epoch: Current (0-based) training epoch.
        burn_in_epochs: Labeled-only burn-in length; the momentum stays at ``start`` through it.
        ramp_epochs: Number of epochs of the linear ramp; ``<= 0`` jumps to ``end`` right after burn-in.
        start: Momentum during burn-in.
        end: Final momentum.

    Returns:
        The momentum for this epoch.

    Raises:
        DataError: If ``start`` or ``end`` is outside ``[0, 1]``.
    """
    for name, value in (("start", start), ("end", end)):
        if not 0.0 <= value <= 1.0:
            raise DataError(f"semimedref_momentum: {name} must be in [0, 1], got {value!r}")
    if epoch <= burn_in_epochs:
        return float(start)
    if ramp_epochs <= 0:
        return float(end)
    t = min((epoch - burn_in_epochs) / ramp_epochs, 1.0)
    return float(start + (end - start) * t)


def textmoe_momentum(step: int, max_momentum: float = 0.99) -> float:
    """TextMoE EMA momentum per optimizer step, ``min(1 - 1 / (step + 1), max_momentum)``.

    See ``docs/methods.md`` Sec. 5.2.

    Step 0 gives 0 (the teacher becomes a copy of the student), step 1 gives 0.5, and from step 99 on the
    value is capped at ``max_momentum`` (0.99 in the paper).

    Args:
        step: Number of optimizer steps taken so far (0-based).
        max_momentum: Upper bound of the momentum.

    Returns:
        The momentum for this step.

    Raises:
        DataError: If ``step`` is negative or ``max_momentum`` is outside ``[0, 1]``.
    """
    if step < 0:
        raise DataError(f"textmoe_momentum: step must be >= 0, got {step!r}")
    if not 0.0 <= max_momentum <= 1.0:
        raise DataError(f"textmoe_momentum: max_momentum must be in [0, 1], got {max_momentum!r}")
    return float(min(1.0 - 1.0 / (step + 1), max_momentum))


def linear_ramp(epoch: float, start_epoch: float, ramp_epochs: float, max_value: float) -> float:
    """Linear ramp-up of a loss weight, e.g. Semi-MedRef's lambda_u (paper Eq. 5, ``docs/methods.md`` Sec. 6.1).

    ``w(e) = max_value * clip((e - start_epoch) / ramp_epochs, 0, 1)``; 0 before ``start_epoch``.
    Semi-MedRef's lambda_u uses ``start_epoch=5, ramp_epochs=15, max_value=0.3``: 0 at epoch 5, 0.15 at 12.5,
    0.3 from 20.

    Args:
        epoch: Current epoch (may be fractional, e.g. ``epoch + batch_idx / steps_per_epoch``).
        start_epoch: Epoch at which the ramp starts (weight 0 there).
        ramp_epochs: Ramp length in epochs; ``<= 0`` is a step to ``max_value`` at ``start_epoch``.
        max_value: Final weight.

    Returns:
        The weight at ``epoch``.
    """
    if epoch < start_epoch:
        return 0.0
    if ramp_epochs <= 0:
        return float(max_value)
    t = min(max((epoch - start_epoch) / ramp_epochs, 0.0), 1.0)
    return float(max_value * t)


@torch.no_grad()
def average_buffers(module: nn.Module, reduce_mean: Callable[[Tensor], Tensor]) -> None:
    """Average a module's floating-point buffers (BatchNorm running statistics) over processes, in place.

    Under DDP each process's BatchNorm layers update their running statistics from its own batch; averaging them after
    every optimizer step, before the EMA update, keeps the student and the teacher (which averages buffers too)
    identical on every rank (as timm's ``distribute_bn``). One all-reduce for all buffers.

    Args:
        module: The student network.
        reduce_mean: The strategy's mean all-reduce, e.g. ``partial(trainer.strategy.reduce, reduce_op="mean")``.
    """
    buffers = [b for b in module.buffers() if b.is_floating_point()]
    if not buffers:
        return
    flat = reduce_mean(torch.cat([b.detach().reshape(-1).float() for b in buffers]))
    for buffer, value in zip(buffers, flat.split([b.numel() for b in buffers]), strict=True):
        buffer.copy_(value.view_as(buffer))
