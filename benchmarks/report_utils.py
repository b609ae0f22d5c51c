"""Helpers shared by the benchmark scripts: torch threads, the reproducing command line, report formatting.

Imported as a sibling module (the scripts run from the repository root, so ``benchmarks/`` is on ``sys.path``).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from textseg.engine.runcard import CARD_LIBRARIES, git_info, library_versions


def add_threads_argument(parser: argparse.ArgumentParser, where: str = "") -> None:
    """Add ``--threads N`` (``torch.set_num_threads``; default: torch's own, one per core)."""
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help=f"torch.set_num_threads{where} (default: torch's, one per core); give 1 to each of several runs sharing "
        "the cores: oversubscribed OpenMP threads spin and slow every run down many times over",
    )


def set_threads(threads: int | None) -> None:
    """Apply ``--threads`` (``None`` leaves torch's default)."""
    if threads is not None:
        torch.set_num_threads(threads)


#: The run card's libraries plus the ones a seeded benchmark number also depends on.
RESULT_LIBRARIES = (*CARD_LIBRARIES, "tokenizers", "numpy", "pillow")


def environment() -> dict[str, Any]:
    """What a seeded result depends on beyond its command: the run card's library versions, the CPU and the commit.

    A seeded run is bit-reproducible only within one environment (session 10: the same code gave 0.555 and 0.596
    Dice for one seed in two environments).
    """
    cpu = f"{cpu_model()} ({torch.backends.cpu.get_cpu_capability()})"
    return {**library_versions(RESULT_LIBRARIES), "cpu": cpu, "git": git_info(Path(__file__))}


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
