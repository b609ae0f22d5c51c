"""Helpers shared by the speed benchmarks' reports (``step_time.py``, ``data_throughput.py``).

Imported as a sibling module (the scripts run from the repository root, so ``benchmarks/`` is on ``sys.path``).
"""

from __future__ import annotations

import os
import platform
import statistics
from collections.abc import Sequence
from pathlib import Path

import torch


def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` (``platform.processor()`` or ``"CPU"`` where unreadable)."""
    model = platform.processor() or "CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return model


def cpu_string(threads_note: str) -> str:
    """CPU model, core count, the torch threads (``threads_note``) and the CPU capability torch dispatches to."""
    capability = torch.backends.cpu.get_cpu_capability()
    return f"{cpu_model()}, {os.cpu_count()} cores, {threads_note} (CPU capability {capability})"


def median(values: Sequence[float]) -> float:
    """Median (NaN for no values)."""
    return statistics.median(values) if values else float("nan")


def fmt_bytes(n: int | None, unit: str = "GiB") -> str:
    """``n`` bytes in ``unit`` (``"GiB"``: two decimals, ``"MiB"``: none), or an em dash for ``None``."""
    if n is None:
        return "—"
    return f"{n / 2**30:.2f} GiB" if unit == "GiB" else f"{n / 2**20:.0f} MiB"
