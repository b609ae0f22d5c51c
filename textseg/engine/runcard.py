"""The run card: ``run_card.json``, what a run was, written into its run directory at fit start.

:class:`RunCardCallback` records the resolved hyper-parameters, the split file, the metric definitions
(:data:`METRIC_DEFINITIONS`), library versions (:func:`library_versions`), the git commit (:func:`git_info`), the
trainer setup, the hardware and the command line; at fit end it adds the training time, and after a test it writes
the model card (:mod:`textseg.engine.modelcard`). Every Lightning subcommand of ``textseg`` adds it.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer

from textseg.engine.modelcard import write_model_card
from textseg.engine.runfiles import atomic_write
from textseg.errors import DataError
from textseg.ops.metrics import HD_PERCENTILE, LVIT_EPS

__all__ = ["CARD_LIBRARIES", "METRIC_DEFINITIONS", "RunCardCallback", "git_info", "hardware", "library_versions"]

#: Libraries whose versions go into the run card.
CARD_LIBRARIES: tuple[str, ...] = ("torch", "lightning", "monai", "transformers", "torchmetrics")
#: Seconds allowed to each ``git`` call of the run card.
GIT_TIMEOUT_S = 5.0

#: Metric definitions written into every run card (``textseg.ops.metrics``, ``docs/data.md`` §10).
METRIC_DEFINITIONS: dict[str, str] = {
    "threshold": "a pixel is foreground when sigmoid(logit) >= 0.5, i.e. logit >= 0",
    "dice": "pooled Dice: 2TP / (2TP + FP + FN) with TP, FP, FN summed over all pixels of all images of the split "
    "(GuideDecoder, MMI-UNet, TextMoE and Semi-MedRef tables); 0 when the split has no foreground at all",
    "iou": "pooled IoU: TP / (TP + FP + FN) over the split, as for dice",
    "dice_per_image": f"LViT per-image Dice averaged over images: 2 sum(gt*pred) / (sum gt + sum pred + {LVIT_EPS:g}); "
    "an image with empty ground truth and empty prediction scores 0",
    "iou_per_image": "LViT per-image IoU averaged over images: |gt & pred| / |gt | pred|, 0 when the union is empty",
    "hd95": f"{HD_PERCENTILE:g}th-percentile symmetric Hausdorff distance (MONAI, euclidean) between the edge pixels "
    "of prediction and ground truth, in pixels of the evaluated resolution (the network input size), per image, "
    "averaged over images; lower is better; both masks empty: 0; exactly one empty: the image diagonal "
    "sqrt(H^2 + W^2) (docs/data.md §10.4)",
}


def library_versions(libraries: Sequence[str] = CARD_LIBRARIES) -> dict[str, str | None]:
    """Versions of Python, ``libraries`` and textseg (``None`` for a library that is not installed)."""
    import textseg

    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in libraries:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    versions["textseg"] = textseg.__version__
    return versions


def git_info(path: str | Path | None = None) -> dict[str, Any] | None:
    """Commit of the git checkout holding ``path`` (default: the textseg sources), if there is one.

    Args:
        path: A file or folder inside the checkout.

    Returns:
        ``{"commit": sha, "dirty": bool}``, or ``None`` when git is missing, times out or ``path`` is not in a
        checkout. Never raises.
    """
    start = Path(path) if path is not None else Path(__file__).resolve().parent
    cwd = start if start.is_dir() else start.parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=GIT_TIMEOUT_S, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=GIT_TIMEOUT_S,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": bool(status.strip())} if commit else None


def hardware(trainer: Trainer) -> dict[str, Any]:
    """The machine a run trains on: CPU, core count and, on CUDA, the names of the GPUs it uses."""
    import torch

    devices: list[str] = []
    if type(trainer.accelerator).__name__ == "CUDAAccelerator" and torch.cuda.is_available():
        ids = trainer.device_ids or list(range(torch.cuda.device_count()))
        devices = [torch.cuda.get_device_name(i) for i in ids]
    return {
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "devices": devices,
        "host": platform.node(),
    }


def _jsonable(value: Any) -> Any:
    """A JSON round trip (paths, enums and other objects become strings)."""
    return json.loads(json.dumps(value, default=str))


def step_budget(trainer: Trainer, datamodule: Any) -> dict[str, Any]:
    """The run's optimizer-step budget: the epoch's definition and length, epochs, and the steps they make.

    ``steps_per_epoch`` comes from the DataModule (``TextSegDataModule.steps_per_epoch``, after ``setup("fit")``),
    capped by ``limit_train_batches`` when that is an integer; ``optimizer_steps`` is ``max_epochs * steps_per_epoch
    / accumulate_grad_batches``, or ``max_steps`` when that is set and smaller.
    """
    hp = getattr(datamodule, "hparams", {}) or {}
    counter = getattr(datamodule, "steps_per_epoch", None)
    steps: int | None = None
    if callable(counter):
        try:
            steps = int(counter())
        except (DataError, KeyError):  # an empty split, or a DataModule not set up for fit: no budget to report
            steps = None
    limit = trainer.limit_train_batches
    if steps is not None and isinstance(limit, int):
        steps = min(steps, limit)
    accumulate = max(1, int(trainer.accumulate_grad_batches))
    total = None if steps is None or trainer.max_epochs is None else trainer.max_epochs * steps // accumulate
    if trainer.max_steps not in (None, -1):
        total = trainer.max_steps if total is None else min(total, trainer.max_steps)
    return {
        "epoch": hp.get("epoch"),
        "steps_per_epoch": steps,
        "max_epochs": trainer.max_epochs,
        "accumulate_grad_batches": accumulate,
        "optimizer_steps": total,
    }


class RunCardCallback(Callback):
    """Write ``run_card.json`` into the run directory at fit start (rank 0).

    The card records the resolved hyper-parameters of the model and the datamodule (with their classes), the split
    file of the run (``split.json``, with its SHA-256), the metric definitions (:data:`METRIC_DEFINITIONS`), library
    versions (:func:`library_versions`), the git commit of the textseg sources (:func:`git_info`, ``null`` without
    git), the trainer setup, the optimizer-step budget (:func:`step_budget`) and the command line. ``textseg fit``
    always adds this callback.

    Args:
        filename: File name inside ``trainer.log_dir`` (``default_root_dir`` without a logger).
        command: The command line to record; ``None`` = ``sys.argv``.
    """

    def __init__(self, filename: str = "run_card.json", command: Sequence[str] | None = None) -> None:
        self.filename = filename
        self.command = list(command) if command is not None else None
        self._card: dict[str, Any] | None = None  # the card written at fit start (rank 0), and where
        self._path: Path | None = None
        self._fit_start = 0.0

    def build_card(self, trainer: Trainer, pl_module: LightningModule, log_dir: str | None = None) -> dict[str, Any]:
        """Assemble the card (see the class docstring) for the run directory ``log_dir`` (``trainer.log_dir``)."""
        run_dir = Path((log_dir if log_dir is not None else trainer.log_dir) or trainer.default_root_dir)
        datamodule = getattr(trainer, "datamodule", None)
        split_path = run_dir / "split.json"
        split: dict[str, Any] | None = None
        if split_path.is_file():
            split = {"file": split_path.name, "sha256": hashlib.sha256(split_path.read_bytes()).hexdigest()}
        command = self.command if self.command is not None else list(sys.argv)
        return {
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "run_dir": str(run_dir),
            "model": {
                "class": f"{type(pl_module).__module__}.{type(pl_module).__qualname__}",
                "hparams": _jsonable(dict(pl_module.hparams)),
            },
            "data": None
            if datamodule is None
            else {
                "class": f"{type(datamodule).__module__}.{type(datamodule).__qualname__}",
                "hparams": _jsonable(dict(datamodule.hparams)),
            },
            "split": split,
            "metrics": dict(METRIC_DEFINITIONS),
            "versions": library_versions(),
            "git": git_info(),
            "trainer": {
                "max_epochs": trainer.max_epochs,
                "precision": str(trainer.precision),
                "accelerator": type(trainer.accelerator).__name__,
                "num_devices": trainer.num_devices,
                "world_size": trainer.world_size,
                "strategy": type(trainer.strategy).__name__,
            },
            "hardware": hardware(trainer),
            "budget": step_budget(trainer, datamodule),
            "command": {"argv": command, "line": shlex.join(command)},
        }

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Write the card (rank 0; ``trainer.log_dir`` is a broadcast under DDP, so every rank asks for it)."""
        log_dir = trainer.log_dir
        self._fit_start = time.monotonic()
        if not trainer.is_global_zero:
            return
        card = self.build_card(trainer, pl_module, log_dir)
        path = Path(card["run_dir"]) / self.filename
        if trainer.ckpt_path and path.is_file():  # a resumed fit: keep the time trained before the stop
            try:
                card["train_seconds"] = json.loads(path.read_text(encoding="utf-8")).get("train_seconds")
            except (OSError, ValueError):
                pass
        self._write(path, card)
        self._card, self._path = card, path

    @staticmethod
    def _write(path: Path, card: dict[str, Any]) -> None:
        """Write ``card`` as JSON, atomically (a reader never sees half a card)."""
        atomic_write(path, json.dumps(card, indent=1) + "\n")

    def _run_dir(self, trainer: Trainer) -> Path:
        return Path(trainer.log_dir or trainer.default_root_dir)

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Add the training time (``train_seconds``, this process's fit, resumed parts added up) to the card."""
        if self._card is None or self._path is None:  # not rank 0, or no fit start
            return
        card = self._card
        card["train_seconds"] = round(float(card.get("train_seconds") or 0.0) + time.monotonic() - self._fit_start, 1)
        self._write(self._path, card)

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Write ``model_card.md`` beside the run card once the run has test metrics (rank 0)."""
        run_dir = self._run_dir(trainer)
        if trainer.is_global_zero:
            write_model_card(run_dir)
