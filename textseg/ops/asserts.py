"""Input checks inside the training step that never wait for the device.

``if bool(bad.any()): raise ...`` reads a value back to the host: the CPU waits for every queued kernel, a CUDA graph
cannot be captured and ``torch.compile`` breaks its graph there. :func:`assert_on_device` checks the same condition
with ``torch._assert_async``: on a GPU the kernel traps if it fails (the error surfaces at the next synchronisation,
naming the message), on the CPU it raises at once. Data problems are caught before training by the data checks
(``docs/data.md``); these asserts guard the networks' API against misuse, at no cost in the hot path.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["assert_on_device"]


def assert_on_device(condition: Tensor, message: str) -> None:
    """Fail with ``message`` unless the boolean scalar ``condition`` is true, without a host sync.

    Skipped while tracing for TorchScript or ONNX (the exporters have no ``_assert_async``).

    Args:
        condition: A boolean tensor with one element, on any device.
        message: The error message.
    """
    if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
        return
    torch._assert_async(condition, message)
