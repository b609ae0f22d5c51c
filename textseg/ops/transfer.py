"""Host-made tensors onto the device without making the host wait.

The per-step random draws of the mixing and exchange functions come from the step's CPU ``torch.Generator``
(resume-safe, ``docs/methods.md`` §6.4), and T-PatchMix's region boxes are parsed from the texts on the host. A plain
``tensor.to("cuda")`` of such a tensor copies from pageable memory and blocks the host until the GPU has drained its
queue (a host-device sync in the training step). :func:`to_device` copies through pinned memory with
``non_blocking=True`` instead: the host queues the copy and goes on, and the copy is ordered on the current stream
before the kernels that read it. Tensors already on the target device, and every CPU run, pass through unchanged.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["to_device"]


def to_device(tensor: Tensor, device: torch.device | str | None, dtype: torch.dtype | None = None) -> Tensor:
    """Move ``tensor`` to ``device`` (and ``dtype``); host to CUDA goes through pinned memory, non-blocking.

    Args:
        tensor: Any tensor, typically made on the host from the step's generator.
        device: The target device; ``None`` keeps the tensor's device.
        dtype: The target dtype; ``None`` keeps it.

    Returns:
        The tensor on ``device`` with ``dtype`` (``tensor`` itself when nothing changes).
    """
    target = tensor.device if device is None else torch.device(device)
    if tensor.device.type == "cpu" and target.type == "cuda":
        # pin_memory() copies into the caching host allocator, which keeps the block until the copy has run
        tensor = tensor.pin_memory().to(target, non_blocking=True)
    return tensor.to(device=target, dtype=dtype)
