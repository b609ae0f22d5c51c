"""One network call for several batch parts, with each part's BatchNorm statistics kept apart.

Semi-MedRef runs its student on up to three batch parts per step (labeled, mixed strong view, weak view; paper §2,
``docs/methods.md`` §6.6). Run one after another, each part is normalised by its own BatchNorm batch statistics and
updates the running statistics once, in that order. Run as one concatenated batch, a plain BatchNorm would pool the
statistics of all parts, which changes the training maths. :class:`PartBatchNorm2d` keeps them apart: while
:func:`batchnorm_parts` names the part sizes, a training-mode forward normalises each part with its own batch
statistics and updates the running statistics part by part, in order -- the same outputs, gradients and running
statistics as separate calls. Every other layer of the networks treats samples independently (convolutions,
LayerNorm, attention with per-sample key-padding masks, dropout), so the concatenated call is the separate calls up to
the dropout masks drawn (tested in ``tests/models/test_parts.py``).

:func:`convert_part_batchnorm` turns a network's ``nn.BatchNorm2d`` layers into :class:`PartBatchNorm2d` (same
parameters, buffers and state-dict keys; :func:`~textseg.models.build_core` does it for every core).
:func:`run_parts` is the concatenated call; :func:`part_norms` finds the layers, or says that it does not apply.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from textseg.models.types import SegOutput

__all__ = ["PartBatchNorm2d", "batchnorm_parts", "convert_part_batchnorm", "part_norms", "run_parts"]


class PartBatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` that normalises consecutive batch parts separately while ``part_sizes`` is set.

    Attributes:
        part_sizes: Sizes of the consecutive parts along the batch dimension, or ``None`` (plain BatchNorm). Set
            through :func:`batchnorm_parts`; only training-mode calls use it (evaluation uses the running statistics,
            which treat samples independently anyway).
    """

    part_sizes: tuple[int, ...] | None = None

    def forward(self, x: Tensor) -> Tensor:
        """Normalise ``x`` ``[N, C, H, W]``, each part with its own batch statistics when parts are set."""
        sizes = self.part_sizes
        if sizes is None or len(sizes) < 2 or not self.training:
            return super().forward(x)
        # one BatchNorm call per part: its own statistics, and the running statistics updated in part order
        return torch.cat([super(PartBatchNorm2d, self).forward(p) for p in x.split(sizes)])


def convert_part_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every ``nn.BatchNorm2d`` in ``module`` by a :class:`PartBatchNorm2d` sharing its tensors.

    Like ``nn.SyncBatchNorm.convert_sync_batchnorm``: the new layer takes the old one's parameters and buffers
    (the same tensor objects), so state-dict keys, values and ``requires_grad`` are unchanged.

    Returns:
        ``module`` itself, or the new layer when ``module`` is an ``nn.BatchNorm2d``.
    """
    if type(module) is nn.BatchNorm2d:
        args = (module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats)
        new = PartBatchNorm2d(*args)
        for name, param in module.named_parameters(recurse=False):
            setattr(new, name, param)
        for name, buf in module.named_buffers(recurse=False):
            setattr(new, name, buf)
        new.train(module.training)
        return new
    for name, child in module.named_children():
        new_child = convert_part_batchnorm(child)
        if new_child is not child:
            setattr(module, name, new_child)
    return module


def part_norms(net: nn.Module) -> list[PartBatchNorm2d] | None:
    """``net``'s :class:`PartBatchNorm2d` layers, or ``None`` when a BatchNorm layer cannot keep parts apart.

    ``None`` e.g. after a ``SyncBatchNorm`` conversion. One pass over the modules: callers keep the list.
    """
    layers = []
    for m in net.modules():
        if isinstance(m, PartBatchNorm2d):
            layers.append(m)
        elif isinstance(m, _BatchNorm):
            return None
    return layers


@contextmanager
def batchnorm_parts(layers: Sequence[PartBatchNorm2d], sizes: Sequence[int]) -> Iterator[None]:
    """Within the block, the ``layers`` (:func:`part_norms`) normalise parts of ``sizes`` separately."""
    for m in layers:
        m.part_sizes = tuple(sizes)
    try:
        yield
    finally:
        for m in layers:
            m.part_sizes = None


def split_output(out: SegOutput, sizes: Sequence[int]) -> list[SegOutput]:
    """Split every batch-first tensor of a network output (and each tensor of a list of them) into parts."""
    parts: list[dict[str, Any]] = [{} for _ in sizes]
    for key, value in out.items():
        if isinstance(value, Tensor):
            chunks: list[Any] = list(value.split(list(sizes)))
        else:  # a list of per-layer tensors (TextMoE's experts)
            layers: list[Tensor] = list(value)  # type: ignore[call-overload]
            chunks = [list(c) for c in zip(*(v.split(list(sizes)) for v in layers), strict=True)]
        for part, chunk in zip(parts, chunks, strict=True):
            part[key] = chunk
    return [SegOutput(**p) for p in parts]  # type: ignore[typeddict-item]


def run_parts(
    call: Callable[[Tensor, Tensor | None], SegOutput],
    layers: Sequence[PartBatchNorm2d],
    images: Sequence[Tensor],
    modality: Sequence[Tensor | None],
) -> list[SegOutput]:
    """Run ``call(image, modality)`` once on the concatenated parts and split its output.

    Args:
        call: Runs ``net`` on images ``[N, C, H, W]`` (all parts, in order) and their modality codes (or ``None``);
            it holds the parts' text features, concatenated in the same order.
        layers: The :class:`PartBatchNorm2d` layers of the network ``call`` runs (:func:`part_norms`); they keep
            the parts' statistics apart.
        images: Each part's images, in the order separate calls would run them; same channels, size and dtype.
        modality: Each part's modality codes; passed on when every part has them, else ``None``.

    Returns:
        One output per part, as separate calls would return them (up to dropout masks).
    """
    sizes = [image.shape[0] for image in images]
    codes = torch.cat([c for c in modality if c is not None]) if all(c is not None for c in modality) else None
    with batchnorm_parts(layers, sizes):
        out = call(torch.cat(list(images)), codes)
    return split_output(out, sizes)
