"""Helpers shared by the benchmark scripts: torch threads, the reproducing command line, report formatting.

Imported as a sibling module (the scripts run from the repository root, so ``benchmarks/`` is on ``sys.path``).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch


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


def command_line(
    script: str,
    parser: argparse.ArgumentParser,
    args: argparse.Namespace,
    always: Sequence[str] = (),
    skip: Sequence[str] = (),
) -> str:
    """The command that reproduces ``args``: every flag not at its default, and those in ``always`` (parser order).

    ``skip`` leaves out flags that do not change the numbers (output paths).
    """
    parts = [f"python benchmarks/{script}"]
    for dest, value in vars(args).items():
        if dest in skip or (dest not in always and value == parser.get_default(dest)):
            continue
        if isinstance(value, bool):
            parts += [f"--{dest}"] if value else []
        elif isinstance(value, list | tuple):
            parts += [f"--{dest}", *map(str, value)]
        else:
            parts += [f"--{dest}", str(value)]
    return " ".join(parts)


#: Packages whose versions can change the quality numbers. A seeded run is bit-reproducible only within one
#: environment: the seed-42 Semi-MedRef command gave 0.555 in session 4 and 0.596 in session 10 with the same code
#: (textseg at 61680c8 re-run in session 10 gave 0.596 too), other package versions and another CPU.
RESULT_PACKAGES = ("torch", "lightning", "monai", "transformers", "tokenizers", "torchmetrics", "numpy", "pillow")


def package_versions(names: Sequence[str] = RESULT_PACKAGES) -> dict[str, str]:
    """Installed versions of ``names`` (``"absent"`` for a missing one) and the CPU, to record beside every result."""
    found = {"cpu": f"{cpu_model()} ({torch.backends.cpu.get_cpu_capability()})"}
    for name in names:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "absent"
    return found


def versions_line(versions: dict[str, str]) -> str:
    """``versions`` as one Markdown line (``torch 2.13.0+cpu, lightning 2.6.6, ...``)."""
    return "Environment: " + ", ".join(f"{k} {v}" for k, v in versions.items()) + "."


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
