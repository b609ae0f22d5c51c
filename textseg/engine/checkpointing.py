"""What textseg adds to Lightning checkpoints: the method stamp, the global RNG states, and a pre-emption save.

A Lightning checkpoint already holds the weights (student, EMA teacher and buffers such as TextMoE's stage start),
the optimizer and scheduler, the loop progress (epoch, step, position in the epoch) and, through
:class:`~textseg.data.sampling.ResumableLoader`, the data order. The schedules (burn-in, ramp of ``lambda_u``, EMA
momentum) are functions of the restored epoch/step, and the methods' own random streams are functions of
``(aug_seed, global_step, rank)``. This module adds

* ``checkpoint["textseg"]``: the method's class name and backbone, checked when a checkpoint is loaded so that a
  checkpoint of another method or network fails with a clear :class:`~textseg.errors.DataError` instead of a wall of
  missing-key errors;
* :class:`ResumeState`, a callback every textseg module attaches: it saves the global torch / CUDA / NumPy / Python
  RNG states (dropout) in every checkpoint and restores them when ``fit`` resumes, tells textseg's CSV logger to
  continue ``metrics.csv``, and on SIGTERM (SLURM pre-emption, ``scancel``) saves ``last.ckpt`` after the current
  batch and stops.

Everything stored is a tensor, an int, a float, a string or a tuple/list/dict of them, so checkpoints load with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException

from textseg.errors import DataError

__all__ = [
    "KEY",
    "RNG_KEY",
    "ResumeState",
    "check_fits",
    "read_checkpoint",
    "refuse_other_method",
    "saved_method",
    "stamp",
]

#: Key of textseg's entry in a checkpoint.
KEY = "textseg"
#: Key of the global RNG states in a checkpoint.
RNG_KEY = "textseg_rng"
#: Keys named in a mismatch message at most.
MAX_NAMED = 3
#: Exit code after a SIGTERM save (128 + SIGTERM, the shell convention), so that `fit && test` does not go on.
EXIT_PREEMPTED = 143


def _rng_state() -> dict[str, Any]:
    """The global RNG states as tensors and plain Python values (``weights_only``-loadable)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()  # type: ignore[misc]  # noqa: NPY002
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": (str(name), torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos), int(has_gauss), cached),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def stamp(checkpoint: dict[str, Any], module: LightningModule) -> None:
    """Record the method and its backbone in ``checkpoint["textseg"]``."""
    checkpoint[KEY] = {"method": type(module).__name__, "backbone": str(module.hparams.get("backbone", ""))}


def saved_method(checkpoint: dict[str, Any]) -> str:
    """Class name of the module that saved ``checkpoint`` (textseg's stamp, else LightningCLI's ``_class_path``)."""
    method = (checkpoint.get(KEY) or {}).get("method")
    return str(method or (checkpoint.get("hyper_parameters") or {}).get("_class_path", "")).rsplit(".", 1)[-1]


def read_checkpoint(path: str | Path, weights_only: bool | None = True, mmap: bool = False) -> dict[str, Any]:
    """Read a Lightning checkpoint file, or raise one clear :class:`~textseg.errors.DataError`.

    Args:
        path: The checkpoint file.
        weights_only: ``torch.load``'s ``weights_only`` (``True``: tensors and plain values only).
        mmap: Map the file instead of reading it (cheap when only the metadata is needed).

    Returns:
        The checkpoint dict (with a ``state_dict``), on the CPU.

    Raises:
        DataError: If the file is missing, cannot be unpickled, or is not a Lightning checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"checkpoint file not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=weights_only, mmap=mmap)
    except Exception as exc:  # any unpickling/format failure means "not a checkpoint"
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        detail = f"torch.load, weights_only={weights_only}: {reason}"
        raise DataError(f"{path} could not be read as a checkpoint ({detail})") from exc
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise DataError(f"{path} is not a Lightning checkpoint (no state_dict)")
    return ckpt


def refuse_other_method(checkpoint: dict[str, Any], wanted: str, where: str) -> None:
    """Raise a :class:`~textseg.errors.DataError` when ``checkpoint`` was saved by another class than ``wanted``."""
    saved = saved_method(checkpoint)
    if saved and wanted and saved != wanted:
        backbone = (checkpoint.get(KEY) or {}).get("backbone")
        by = f"{saved}(backbone={backbone!r})" if backbone else saved
        raise DataError(
            f"{where} was saved by {by}, but the configured model is {wanted}; use the config of the run that wrote it"
        )


def _restore_rng_state(state: dict[str, Any]) -> None:
    """Set the global RNG states from :func:`_rng_state`'s dict."""
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))  # noqa: NPY002
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def check_fits(checkpoint: dict[str, Any], module: LightningModule, path: str | None = None) -> None:
    """Raise a clear error when ``checkpoint`` was saved by another method or does not fit ``module``'s network.

    Args:
        checkpoint: The loaded checkpoint dict.
        module: The module about to receive it.
        path: The checkpoint file, for the message.

    Raises:
        DataError: Naming the file, the method that saved it and the first mismatching parameters.
    """
    where = f"checkpoint {path}" if path else "the checkpoint"
    ours = f"{type(module).__name__}(backbone={module.hparams.get('backbone')!r})"
    refuse_other_method(checkpoint, type(module).__name__, where)
    method = saved_method(checkpoint)
    theirs: dict[str, Any] = checkpoint.get("state_dict", {})
    own = module.state_dict()
    missing = [k for k in own if k not in theirs]
    unexpected = [k for k in theirs if k not in own]
    shapes = [
        f"{k} {tuple(theirs[k].shape)} vs {tuple(v.shape)}"
        for k, v in own.items()
        if k in theirs and hasattr(theirs[k], "shape") and tuple(theirs[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or shapes:
        parts = [
            f"{len(items)} {what} (e.g. {', '.join(items[:MAX_NAMED])})"
            for what, items in (
                ("missing keys", missing),
                ("unexpected keys", unexpected),
                ("shape mismatches", shapes),
            )
            if items
        ]
        saved = f" (saved by {method})" if method else ""
        raise DataError(f"{where}{saved} does not fit the configured {ours}: {'; '.join(parts)}")


class ResumeState(Callback):
    """Make a resumed ``fit`` continue exactly: RNG states in checkpoints, ``metrics.csv`` continued, SIGTERM save.

    * Every checkpoint gets the global RNG states (``checkpoint["textseg_rng"]``); when ``fit`` resumes from one they
      are restored, and loggers with a ``resume_at(step)`` method (:class:`textseg.engine.loggers.CSVLogger`) continue
      their files from the checkpoint's step.
    * SIGTERM: Lightning only notices it at the end of the epoch when it runs in one process; a pre-empted SLURM job
      gets seconds, not an epoch. This callback checks after every batch (agreeing over DDP processes, so all of them
      save together), writes the full training state to the checkpoint directory's ``last.ckpt`` (what
      ``--ckpt_path last`` resumes from), and raises Lightning's ``SIGTERMException`` (exit code 143).

    Args:
        filename: Checkpoint file name of the SIGTERM save, without ``.ckpt``.
    """

    def __init__(self, filename: str = "last") -> None:
        self.filename = filename
        self.saved: Path | None = None

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        """Add the global RNG states."""
        checkpoint[RNG_KEY] = _rng_state()

    def on_load_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        """When ``fit`` resumes: restore the RNG states and let the loggers continue from the checkpoint's step."""
        if trainer.state.fn != "fit":
            return
        if checkpoint.get(RNG_KEY):  # checkpoints of older textseg versions have none
            _restore_rng_state(checkpoint[RNG_KEY])
        for logger in trainer.loggers:
            resume_at = getattr(logger, "resume_at", None)
            if resume_at is not None:
                resume_at(checkpoint["global_step"])

    def _path(self, trainer: Trainer) -> Path:
        callback = trainer.checkpoint_callback
        folder = getattr(callback, "dirpath", None)
        if folder is None:
            folder = Path(trainer.log_dir or trainer.default_root_dir) / "checkpoints"
        return Path(folder) / f"{self.filename}.ckpt"

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any, **kwargs: Any) -> None:
        """Save and stop when any process received SIGTERM."""
        signalled = bool(getattr(trainer, "received_sigterm", False))
        if trainer.world_size > 1:
            signalled = trainer.strategy.reduce_boolean_decision(signalled, all=False)
        if not signalled:
            return
        path = self._path(trainer)
        trainer.save_checkpoint(path)
        self.saved = path
        rank_zero_info(f"textseg: SIGTERM received; training state saved to {path}; resume with --ckpt_path {path}")
        raise SIGTERMException(EXIT_PREEMPTED)
