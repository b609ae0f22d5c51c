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
from collections.abc import Collection, Mapping
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
    "NETWORK_KEYS",
    "RESUME_KEY",
    "RNG_KEY",
    "ResumeState",
    "check_fits",
    "mark_validation_pending",
    "network_differences",
    "nonfinite_weights",
    "read_checkpoint",
    "refuse_nonfinite",
    "refuse_other_method",
    "refuse_other_network",
    "saved_method",
    "stamp",
]

#: Key of textseg's entry in a checkpoint.
KEY = "textseg"
#: Key of the global RNG states in a checkpoint.
RNG_KEY = "textseg_rng"
#: Key of the resume marks in a checkpoint (``{"validation_pending": bool}``).
RESUME_KEY = "textseg_resume"
#: Keys named in a mismatch message at most.
MAX_NAMED = 3
#: Constructor arguments that define the network: its parameters (backbone, encoders, widths, experts) or what it
#: computes from the same parameters (tokenizer length, text padding masks). A checkpoint is refused by a model
#: configured otherwise (:func:`refuse_other_network`); the other arguments (losses, schedules, learning rate...) may
#: differ.
NETWORK_KEYS = (
    "backbone",
    "vision_encoder",
    "text_encoder",
    "max_length",
    "use_padding_mask",
    "use_eca",
    "project_dim",
    "expert",
    "num_experts",
)
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


def read_checkpoint(
    path: str | Path, weights_only: bool | None = True, mmap: bool = False, finite: bool = True
) -> dict[str, Any]:
    """Read a Lightning checkpoint file, or raise one clear :class:`~textseg.errors.DataError`.

    Args:
        path: The checkpoint file.
        weights_only: ``torch.load``'s ``weights_only`` (``True``: tensors and plain values only).
        mmap: Map the file instead of reading it (cheap when only the metadata is needed).
        finite: Refuse NaN/inf weights here (``False`` for a caller that runs :func:`check_fits` next, which
            checks them in its order: one scan of the weights, not two).

    Returns:
        The checkpoint dict (with a ``state_dict`` of finite weights unless ``finite`` is off), on the CPU.

    Raises:
        DataError: If the file is missing, cannot be unpickled, is not a Lightning checkpoint, or (``finite``)
            holds a NaN/inf weight (:func:`refuse_nonfinite`).
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
    if finite:
        refuse_nonfinite(ckpt, f"checkpoint {path}")
    return ckpt


def nonfinite_weights(state_dict: Mapping[str, Any]) -> list[str]:
    """Names of the floating-point tensors of ``state_dict`` that hold a NaN or an infinity, in order.

    One pass over the tensors, read back once (where the tensors are: the CPU for a loaded checkpoint).
    """
    names = [
        k for k, v in state_dict.items() if isinstance(v, torch.Tensor) and (v.is_floating_point() or v.is_complex())
    ]
    if not names:
        return []
    finite = torch.stack([torch.isfinite(state_dict[k]).all().cpu() for k in names]).tolist()
    return [name for name, ok in zip(names, finite, strict=True) if not ok]


def refuse_nonfinite(checkpoint: dict[str, Any], where: str) -> None:
    """Raise a :class:`~textseg.errors.DataError` naming the weights of ``checkpoint`` that are NaN or infinite.

    A checkpoint of a run that diverged would otherwise test with Dice 0.0 and loss NaN, or resume into NaNs.
    """
    state = checkpoint.get("state_dict") or {}
    bad = nonfinite_weights(state)
    if bad:
        named = ", ".join(bad[:MAX_NAMED]) + (", ..." if len(bad) > MAX_NAMED else "")
        raise DataError(
            f"{where} has NaN/inf weights in {len(bad)} of {len(state)} tensors ({named}): the run that wrote it "
            "diverged; use an earlier checkpoint of the run, or retrain (--model.init_args.nonfinite stop stops a run "
            "at the first non-finite loss)"
        )


def network_differences(checkpoint: dict[str, Any], configured: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """``{key: (checkpoint's value, configured value)}`` for the :data:`NETWORK_KEYS` set in both and different."""
    saved = checkpoint.get("hyper_parameters") or {}
    return {
        key: (saved[key], configured[key])
        for key in NETWORK_KEYS
        if key in saved and key in configured and saved[key] != configured[key]
    }


def refuse_other_network(
    checkpoint: dict[str, Any], configured: Mapping[str, Any], where: str, keys: Collection[str] | None = None
) -> dict[str, tuple[Any, Any]]:
    """Raise when ``checkpoint``'s network was built with other settings than ``configured`` (the model's arguments).

    Args:
        checkpoint: The loaded checkpoint (its ``hyper_parameters`` are the constructor arguments of its model).
        configured: The configured model's constructor arguments.
        where: The checkpoint, for the message (``"checkpoint runs/x/best.ckpt"``).
        keys: Only these settings are refused when they differ (e.g. the ones typed on the command line); ``None``:
            every one of :data:`NETWORK_KEYS`.

    Returns:
        The differences not refused (outside ``keys``): ``{key: (checkpoint's value, configured value)}``.

    Raises:
        DataError: Naming every refused setting with both values, and what to do.
    """
    differences = network_differences(checkpoint, configured)
    refused = {k: v for k, v in differences.items() if keys is None or k in keys}
    if refused:
        trained = ", ".join(f"{k}={saved!r}" for k, (saved, _) in refused.items())
        says = ", ".join(f"{k}={wanted!r}" for k, (_, wanted) in refused.items())
        raise DataError(
            f"{where} was trained with {trained}, but the configuration says {says}: it is another network; use the "
            "configuration of the run that wrote it (its config.yaml), or a checkpoint trained with these settings"
        )
    return {k: v for k, v in differences.items() if k not in refused}


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
    """Raise a clear error when ``checkpoint`` does not fit ``module``: another method or network, or NaN weights.

    Checked in this order: the class that saved it (:func:`refuse_other_method`), finite weights
    (:func:`refuse_nonfinite`), the settings that define the network against ``module``'s hyper-parameters
    (:func:`refuse_other_network`), then every state-dict key and shape against ``module``'s.

    Args:
        checkpoint: The loaded checkpoint dict.
        module: The module about to receive it.
        path: The checkpoint file, for the message.

    Raises:
        DataError: Naming the file, the method that saved it and the first mismatching settings or parameters.
    """
    where = f"checkpoint {path}" if path else "the checkpoint"
    ours = f"{type(module).__name__}(backbone={module.hparams.get('backbone')!r})"
    refuse_other_method(checkpoint, type(module).__name__, where)
    refuse_nonfinite(checkpoint, where)
    refuse_other_network(checkpoint, module.hparams, where)
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
      their files after the rows of the batches the checkpoint holds (steps ``< global_step``: Lightning logs a
      batch's metrics, and the validation after it, at the batch's index).
    * A checkpoint written while a validation is due but not finished (after the training batch that ends an epoch,
      before its validation; or during the validation) is marked ``checkpoint["textseg_resume"]["validation_pending"]``
      and its loop state is set so that the resumed ``fit`` first runs that validation from its first batch, then
      goes on (:func:`mark_validation_pending`). Lightning alone would skip it: the epoch's ``val_dice`` row, its
      best-checkpoint decision and early stopping would be lost.
    * SIGTERM (SLURM pre-emption, ``scancel``): Lightning only notices it at the end of the epoch when it runs in one
      process, and then exits 0 without a checkpoint; a pre-empted SLURM job gets seconds, not an epoch. This callback
      checks after every training and validation batch (agreeing over DDP processes, so all of them save together),
      writes the full training state to the checkpoint directory's ``last.ckpt`` (what ``--ckpt_path last`` resumes
      from), and raises Lightning's ``SIGTERMException`` with exit code 143. A SIGTERM noticed by Lightning itself
      (e.g. one that arrives while a checkpoint is being written, after this callback's check) still saves
      ``last.ckpt`` (one process) and exits 143 (``docs/guide.md``, "Resuming, pre-emption and determinism").

    Args:
        filename: Checkpoint file name of the SIGTERM save, without ``.ckpt``.
    """

    def __init__(self, filename: str = "last") -> None:
        self.filename = filename
        self.saved: Path | None = None
        self._validating = False

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        """Add the global RNG states; mark a validation that is due and not finished as pending."""
        checkpoint[RNG_KEY] = _rng_state()
        pending = self._validation_pending(trainer)
        checkpoint[RESUME_KEY] = {"validation_pending": pending}
        if pending and "fit_loop" in (checkpoint.get("loops") or {}):
            mark_validation_pending(checkpoint["loops"]["fit_loop"])

    def on_load_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        """When ``fit`` resumes: restore the RNG states and let the loggers continue after the checkpoint's batches."""
        if trainer.state.fn != "fit":
            return
        if checkpoint.get(RNG_KEY):  # checkpoints of older textseg versions have none
            _restore_rng_state(checkpoint[RNG_KEY])
        for logger in trainer.loggers:
            resume_at = getattr(logger, "resume_at", None)
            if resume_at is not None:  # the rows of batches 0..global_step-1 (a row's step is its batch index)
                resume_at(checkpoint["global_step"] - 1)

    def _validation_pending(self, trainer: Trainer) -> bool:
        """Whether ``fit`` is inside a validation, or after a training batch that a validation must follow."""
        if trainer.state.fn != "fit" or trainer.sanity_checking:
            return False
        if self._validating:
            return True
        epoch_loop = trainer.fit_loop.epoch_loop
        total: Any = epoch_loop.batch_progress.total  # a _ProcessedTracker (ready, started, processed, completed)
        in_batch_end = total.processed == total.completed + 1  # between a batch's step and its completion
        fetcher = trainer.fit_loop._data_fetcher
        return in_batch_end and fetcher is not None and epoch_loop._should_check_val_fx(fetcher)

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Note that a validation of ``fit`` is running (not the sanity check)."""
        self._validating = trainer.state.fn == "fit" and not trainer.sanity_checking

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """The validation has finished (its metrics are logged): checkpoints from now on are past it."""
        self._validating = False

    def _path(self, trainer: Trainer) -> Path:
        callback = trainer.checkpoint_callback
        folder = getattr(callback, "dirpath", None)
        if folder is None:
            folder = Path(trainer.log_dir or trainer.default_root_dir) / "checkpoints"
        return Path(folder) / f"{self.filename}.ckpt"

    def _save(self, trainer: Trainer) -> Path:
        path = self._path(trainer)
        trainer.save_checkpoint(path)
        self.saved = path
        rank_zero_info(f"textseg: SIGTERM received; training state saved to {path}; resume with --ckpt_path {path}")
        return path

    def _stop_if_signalled(self, trainer: Trainer) -> None:
        signalled = bool(getattr(trainer, "received_sigterm", False))
        if trainer.world_size > 1:
            signalled = trainer.strategy.reduce_boolean_decision(signalled, all=False)
        if signalled:
            self._save(trainer)
            raise SIGTERMException(EXIT_PREEMPTED)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any, **kwargs: Any) -> None:
        """Save and stop when any process received SIGTERM."""
        self._stop_if_signalled(trainer)

    def on_validation_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any, **kwargs: Any) -> None:
        """Save (the validation is re-run on resume) and stop when any process received SIGTERM during ``fit``."""
        if self._validating:
            self._stop_if_signalled(trainer)

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        """A SIGTERM that Lightning acted on: exit 143, and save ``last.ckpt`` first if this callback has not.

        Lightning raises its ``SIGTERMException`` (exit code 0) after a batch, a validation or an epoch when the
        signal came after this callback's own check (e.g. while a checkpoint was being written). The loop state is
        consistent at those points, so the save resumes exactly. Under DDP the processes may not all be there, so only
        a single process saves here.
        """
        if not isinstance(exception, SIGTERMException):
            return
        if not exception.code:
            exception.code = EXIT_PREEMPTED
        if self.saved is None and trainer.state.fn == "fit" and trainer.world_size == 1 and not trainer.sanity_checking:
            self._save(trainer)


def mark_validation_pending(fit_loop: dict[str, Any]) -> None:
    """Set a saved fit-loop state so that resuming it runs the due validation from its first batch, then goes on.

    The state is Lightning's ``checkpoint["loops"]["fit_loop"]``, saved either in ``on_train_batch_end`` of the batch
    that a validation follows (the batch not yet counted as completed) or during that validation. Lightning resumes
    the first as "the epoch is over" and the second as "the validation has run", and skips the validation. Here the
    training batch is counted as completed and the validation loop is put in Lightning's "restarted mid-evaluation"
    state before its first batch (ready and started once, nothing processed): the resumed epoch loop trains no batch,
    runs the whole validation (same weights, same RNG, same metrics row) and then ends the epoch or continues it.

    Args:
        fit_loop: The saved state, changed in place.
    """
    train = fit_loop["epoch_loop.batch_progress"]
    for part in ("total", "current"):
        train[part]["completed"] = train[part]["processed"]
    val = fit_loop["epoch_loop.val_loop.batch_progress"]
    done = int(val["total"]["completed"])
    val["total"] = {"ready": done + 1, "started": done + 1, "processed": done, "completed": done}
    val["current"] = {"ready": 1, "started": 1, "processed": 0, "completed": 0}
    val["is_last_batch"] = False
