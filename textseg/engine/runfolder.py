"""The run folder of a run: one owner at a time, no silent replacement of an earlier run, atomic writes.

The "Run folders" section of ``docs/guide.md`` describes the behaviour for users. :class:`RunFolder` is taken by
``textseg`` (rank 0) before anything is written:

* **lock**: ``<run dir>/.lock``, held with ``flock`` for the whole command; a second command into the same folder
  fails at once, naming the holder (pid, host, start time). The kernel drops the lock when its holder dies, so a
  killed or pre-empted run never leaves a stale lock behind; the file is removed when the command ends;
* **earlier run**: ``fit`` into a folder that holds a run's records (:data:`FIT_RECORDS`, checkpoints) is refused unless
  it resumes from one of that folder's checkpoints, or the user chose ``new_version`` (the next free
  ``<run dir>_vN``) or ``overwrite`` (the earlier records and checkpoints are set aside in ``.overwritten/``, deleted
  once the new run starts training (:class:`CommitOverwrite`) and put back if it fails before);
* **versioned folders** (no ``--run_dir``): :func:`reserve_version` creates the logger's next ``version_N`` folder
  with one atomic ``mkdir``, so two runs started at once never share one.

Run files are written atomically (:func:`atomic_write`, :class:`AtomicCheckpointIO`: a temporary file beside the
target, then ``os.replace``), and an ``OSError`` while writing them becomes one :class:`RunFileError`
(``cannot write <path>: <cause>``, see :func:`write_error`).
"""

from __future__ import annotations

import errno
import fcntl
import io
import os
import shutil
import socket
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from textseg.engine.runfiles import (
    FIT_RECORDS,
    RunFileError,
    _within,
    atomic_write,
    earlier_run,
    is_special_ckpt,
    write_error,
)
from textseg.errors import DataError

__all__ = [
    "FIT_RECORDS",
    "LOCK_FILE",
    "AtomicCheckpointIO",
    "AtomicSaveConfig",
    "CommitOverwrite",
    "RunFileError",
    "RunFolder",
    "atomic_write",
    "earlier_run",
    "reserve_version",
    "write_error",
]

#: The lock file inside a run folder.
LOCK_FILE = ".lock"
#: Where ``--run_dir_exists overwrite`` keeps the earlier run until the new one starts training.
ASIDE_DIR = ".overwritten"
#: Choices of ``--run_dir_exists``: what ``fit`` does with a folder that holds an earlier run.
RunDirExists = Literal["error", "new_version", "overwrite"]


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's :class:`~lightning.fabric.plugins.io.torch_io.TorchCheckpointIO`, writing each file atomically.

    A checkpoint is serialised in memory, written to ``<path>.tmp`` and renamed over ``<path>``: an interrupted or
    failed save (a full disk) never leaves a truncated ``.ckpt``, and an earlier checkpoint of that name survives it.
    Remote paths (``s3://``...) are saved by Lightning's own writer. ``textseg`` installs it in every run.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        """Save ``checkpoint`` to ``path`` atomically.

        Raises:
            RunFileError: When the file cannot be written (no partial file is left).
        """
        if storage_options is not None or "://" in str(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        atomic_write(path, buffer.getbuffer())


class AtomicSaveConfig(SaveConfigCallback):
    """LightningCLI's :class:`~lightning.pytorch.cli.SaveConfigCallback`, writing the config file atomically.

    Same arguments; the config is always written (``overwrite`` is ignored: :class:`RunFolder` decides whether a
    folder may be written), as one YAML file (``multifile`` is ignored).
    """

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Write ``<log dir>/<config_filename>`` on rank 0 (once per command)."""
        if self.already_saved:
            return
        log_dir = trainer.log_dir  # a broadcast under DDP: every rank asks
        if trainer.is_global_zero:
            if self.save_to_log_dir and log_dir is not None:
                text = self.parser.dump(self.config, skip_none=False)
                if "://" in log_dir:  # a remote folder: fsspec's own write
                    fs = get_filesystem(log_dir)
                    fs.makedirs(log_dir, exist_ok=True)
                    with fs.open(f"{log_dir.rstrip('/')}/{self.config_filename}", "w") as file:
                        file.write(text)
                else:
                    atomic_write(Path(log_dir) / self.config_filename, text)
            self.save_config(trainer, pl_module, stage)
            self.already_saved = True
        self.already_saved = trainer.strategy.broadcast(self.already_saved)


def reserve_version(root: str | Path) -> int:
    """Create the next free ``root/version_N`` folder (Lightning's numbering) with one atomic ``mkdir``; return N.

    Two runs started at once both list the existing versions, but only one ``mkdir`` of a name succeeds; the other
    takes the next number.

    Raises:
        RunFileError: When ``root`` cannot be created or written.
    """
    root = Path(root)
    try:
        root.mkdir(parents=True, exist_ok=True)
        names = [p.name[len("version_") :] for p in root.iterdir() if p.name.startswith("version_")]
        version = max((int(n) for n in names if n.isdigit()), default=-1) + 1
        while True:
            try:
                (root / f"version_{version}").mkdir()
                return version
            except FileExistsError:
                version += 1
    except OSError as exc:
        raise RunFileError.from_oserror(exc, root) from exc


def _next_free(folder: Path) -> Path:
    """Create and return the first free ``<folder>_v2``, ``<folder>_v3``..."""
    number = 2
    while True:
        candidate = folder.with_name(f"{folder.name}_v{number}")
        try:
            candidate.mkdir(parents=True)
            return candidate
        except FileExistsError:
            number += 1
        except OSError as exc:
            raise RunFileError.from_oserror(exc, candidate) from exc


class RunFolder:
    """Exclusive use of one run folder for one command (see the module docstring).

    Args:
        path: The folder (created if missing).
        created: The caller created it (it is removed at :meth:`release` if still empty).
    """

    def __init__(self, path: str | Path, created: bool = False) -> None:
        self.path = Path(path)
        self.created = created
        self._fd: int | None = None
        self._aside: Path | None = None

    # ------------------------------------------------------------------------------------------------- taking
    @classmethod
    def claim(
        cls,
        path: str | Path,
        fit: bool,
        resume_from: str | None = None,
        exists: RunDirExists = "error",
        created: bool = False,
    ) -> RunFolder:
        """Take ``path`` for a command: create it, lock it and, for ``fit``, refuse or settle an earlier run.

        Args:
            path: The run folder.
            fit: The command trains (only ``fit`` cares about an earlier run; the others add files to it).
            resume_from: ``fit``'s ``--ckpt_path``: a special value (``last``...) or a file inside ``path`` resumes
                the folder's run; anything else is a new run.
            exists: What ``fit`` does with an earlier run in ``path``: refuse (``error``), write into the next free
                ``<path>_vN`` (``new_version``), or delete its records and checkpoints first (``overwrite``).
            created: The caller just created ``path`` (:func:`reserve_version`): remove it at release if empty.

        Returns:
            The locked folder (another one for ``new_version``; see :attr:`path`).

        Raises:
            RunFileError: ``path`` is a file or cannot be created or written.
            DataError: Another command holds ``path``, or it holds an earlier run (``exists="error"``).
        """
        folder = cls._open(Path(path))
        folder.created |= created
        try:
            folder.lock()
            earlier = earlier_run(folder.path) if fit and not _resumes(resume_from, folder.path) else []
        except RunFileError:
            folder.release()
            raise
        except DataError:  # in use by another command: new_version goes beside it, anything else stops
            if exists != "new_version" or not fit:
                folder.release()
                raise
            earlier = ["a running command's lock"]
        if not earlier:
            return folder
        if exists == "error":
            folder.release()
            resumed = f"--ckpt_path {resume_from} is not one of its checkpoints; " if resume_from else ""
            raise DataError(
                f"run dir {folder.path} already holds a run ({', '.join(earlier)}); {resumed}resume it with "
                "--ckpt_path last (or one of its checkpoints), choose another --run_dir, or pass --run_dir_exists "
                "new_version (write into the next free <run_dir>_vN) or --run_dir_exists overwrite (replace it once "
                "this run trains)"
            )
        if exists == "new_version":
            folder.release()
            fresh = cls(_next_free(folder.path), created=True)
            fresh.lock()
            rank_zero_info(f"textseg: run dir {folder.path} already holds a run; this run writes into {fresh.path}")
            return fresh
        folder.clear_earlier(earlier)
        return folder

    @classmethod
    def _open(cls, path: Path) -> RunFolder:
        if path.exists() and not path.is_dir():
            raise RunFileError(path, os.strerror(errno.ENOTDIR))
        created = not path.exists()
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RunFileError.from_oserror(exc, path) from exc
        return cls(path, created=created)

    def lock(self) -> None:
        """Take ``.lock`` (``flock``, non-blocking), recording who holds it.

        Raises:
            DataError: Another command holds it.
            RunFileError: The folder cannot be written.
        """
        lock_path = self.path / LOCK_FILE
        while True:
            try:
                fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise RunFileError.from_oserror(exc, self.path) from exc
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 512).decode("utf-8", "replace").strip() or "unknown"
                os.close(fd)
                raise DataError(
                    f"run dir {self.path} is in use by another textseg command ({holder}; lock file {lock_path}); "
                    "wait for it to finish or choose another --run_dir"
                ) from None
            except OSError as exc:  # a file system without locks (some network mounts): go on, unlocked
                rank_zero_warn(f"textseg: cannot lock {lock_path} ({exc.strerror}); two runs could share {self.path}")
            try:  # the previous holder may have removed the file between our open and our flock
                same = os.fstat(fd).st_ino == os.stat(lock_path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        started = datetime.now(timezone.utc).isoformat(timespec="seconds")
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}, started {started}\n".encode())
        except OSError as exc:
            os.close(fd)
            raise RunFileError.from_oserror(exc, lock_path) from exc
        self._fd = fd

    def clear_earlier(self, earlier: Sequence[str] = ()) -> None:
        """Set the earlier run aside (``--run_dir_exists overwrite``), saying what: into ``.overwritten/``.

        It is deleted for good once the new run starts training (:meth:`commit`, called by
        :class:`CommitOverwrite`) and put back if the command fails before that (bad data, a missing file...), so an
        ``overwrite`` that cannot start never costs the earlier run.
        """
        aside = self.path / ASIDE_DIR
        try:
            if aside.exists():  # left by an overwrite that crashed: it was being replaced anyway
                shutil.rmtree(aside)
            aside.mkdir()
            for name in (*FIT_RECORDS, "checkpoints"):
                if (self.path / name).exists():
                    os.replace(self.path / name, aside / name)
        except OSError as exc:
            raise RunFileError.from_oserror(exc) from exc
        self._aside = aside
        rank_zero_info(
            f"textseg: --run_dir_exists overwrite: the earlier run in {self.path} ({', '.join(earlier)}) is replaced "
            "once this run starts training"
        )

    def commit(self) -> None:
        """Delete the earlier run set aside by :meth:`clear_earlier` (the new run has started training)."""
        aside, self._aside = self._aside, None
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)

    def _restore(self) -> None:
        """Put the earlier run back (the command failed before training), replacing what this command wrote."""
        aside, self._aside = self._aside, None
        if aside is None:
            return
        for item in sorted(aside.iterdir()):
            target = self.path / item.name
            if target.is_dir():
                shutil.rmtree(target)
            else:
                target.unlink(missing_ok=True)
            os.replace(item, target)
        aside.rmdir()
        rank_zero_info(f"textseg: the run did not start; the earlier run in {self.path} is back as it was")

    # ----------------------------------------------------------------------------------------------- release
    def release(self) -> None:
        """End the command's use of the folder.

        Puts back an earlier run set aside for a run that never trained, removes and unlocks ``.lock``, and removes
        the folder too if this command created it and left it empty.
        """
        self._restore()
        if self._fd is not None:
            (self.path / LOCK_FILE).unlink(missing_ok=True)
            os.close(self._fd)
            self._fd = None
        if self.created:
            try:
                self.path.rmdir()  # only when empty: a failed run leaves no folder behind
            except OSError:
                pass


class CommitOverwrite(Callback):
    """Delete the earlier run that ``--run_dir_exists overwrite`` set aside, once training starts (rank 0)."""

    def __init__(self, folder: RunFolder) -> None:
        self.folder = folder

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """The data passed its checks and the run is training: the earlier run goes for good."""
        self.folder.commit()


def _resumes(ckpt_path: str | None, folder: Path) -> bool:
    """``fit --ckpt_path`` continues ``folder``'s run: a value Lightning resolves in it, or a file inside it."""
    if not ckpt_path:
        return False
    if is_special_ckpt(ckpt_path):
        return True
    return _within(ckpt_path, folder)
