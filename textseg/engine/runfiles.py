"""Files a run writes into its run folder, in one place so that the writers and the readers agree.

* :data:`METRICS_FILE` -- ``test_metrics.json``, written by every ``test`` (:func:`write_test_metrics`) and read by
  ``textseg report`` (:mod:`textseg.cli.report`);
* :data:`FIT_RECORDS` -- the files that show a folder holds a run (:func:`earlier_run`; :mod:`textseg.engine.runfolder`
  and ``textseg grid`` decide with them what a used folder needs).

Files are written atomically (:func:`atomic_write`); a write that fails raises one :class:`RunFileError` naming the
file and the cause. This module imports neither torch nor Lightning, so ``textseg report`` and ``textseg grid``
start fast.
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from textseg.errors import DataError

__all__ = [
    "FIT_RECORDS",
    "METRICS_FILE",
    "TMP_SUFFIX",
    "RunFileError",
    "atomic_write",
    "earlier_run",
    "is_special_ckpt",
    "write_error",
    "write_test_metrics",
]

#: The test metrics of a run, beside its logs.
METRICS_FILE = "test_metrics.json"
#: Files that show a folder holds a run (``fit``'s records, and a test's metrics).
FIT_RECORDS = (
    "config.yaml",
    "hparams.yaml",
    "metrics.csv",
    "run_card.json",
    "split.json",
    "test_metrics.json",
    "model_card.md",
)
#: Errors that only writing raises: a run hitting them anywhere could not write its files.
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG})
#: Suffix of the temporary file of an atomic write (never ``.ckpt``: Lightning's ``last`` lookup ignores it).
TMP_SUFFIX = ".tmp"


class RunFileError(DataError):
    """A run file or folder cannot be written: ``cannot write <path>: <cause>``.

    Args:
        path: The file or folder.
        cause: Why (the OS's ``strerror``).
    """

    def __init__(self, path: str | Path, cause: str) -> None:
        self.path = str(path)
        super().__init__(f"cannot write {path}: {cause}")

    @classmethod
    def from_oserror(cls, exc: OSError, path: str | Path | None = None) -> RunFileError:
        """The error for ``exc`` raised while writing ``path`` (default: the file named by ``exc``)."""
        target = path if path is not None else (exc.filename if exc.filename is not None else "a run file")
        cause = exc.strerror or (os.strerror(exc.errno) if exc.errno else str(exc) or type(exc).__name__)
        return cls(target, cause)


def _within(path: str | Path, folder: Path) -> bool:
    try:
        return Path(os.path.abspath(path)).is_relative_to(os.path.abspath(folder))
    except (TypeError, ValueError):
        return False


def write_error(exc: BaseException, folders: Sequence[str | Path]) -> RunFileError | None:
    """The :class:`RunFileError` for an ``OSError`` raised while writing run files; ``None`` for other errors.

    An ``OSError`` is a run-file write error when it names a file inside one of ``folders`` (the run's folders), or
    when its errno only ever comes from writing (a full disk or quota, a read-only file system, a file too large).

    Args:
        exc: The exception (anything; only ``OSError`` can match).
        folders: The run's folders.
    """
    if isinstance(exc, RunFileError) or not isinstance(exc, OSError):
        return None
    named = exc.filename is not None and any(_within(exc.filename, Path(f)) for f in folders)
    if named or exc.errno in WRITE_ERRNOS:
        return RunFileError.from_oserror(exc)
    return None


def atomic_write(path: str | Path, data: bytes | memoryview | str) -> Path:
    """Write ``data`` to ``path`` through a temporary file beside it and ``os.replace``: all of it or nothing.

    Args:
        path: The file.
        data: Its content (``str`` is written as UTF-8).

    Returns:
        The path written.

    Raises:
        RunFileError: Naming ``path`` and the cause when it cannot be written (the temporary file is removed).
    """
    path = Path(path)
    tmp = path.with_name(path.name + TMP_SUFFIX)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    if path.parent.exists() and not path.parent.is_dir():
        raise RunFileError(path, os.strerror(errno.ENOTDIR))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as file:
            file.write(payload)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass  # the folder itself is not writable (or not a folder): no temporary file was made
        raise RunFileError.from_oserror(exc, path) from exc
    return path


def earlier_run(folder: Path) -> list[str]:
    """What in ``folder`` shows an earlier run: its records (:data:`FIT_RECORDS`) and checkpoints; empty if none."""
    found = [name for name in FIT_RECORDS if (folder / name).exists()]
    ckpts = sorted((folder / "checkpoints").glob("*.ckpt")) if (folder / "checkpoints").is_dir() else []
    if ckpts:
        found.append(f"checkpoints/ ({', '.join(p.name for p in ckpts)})")
    return found


def write_test_metrics(
    log_dir: str | Path, method: str, hparams: Mapping[str, Any], data: Mapping[str, Any], metrics: Mapping[str, float]
) -> Path:
    """Write a run's :data:`METRICS_FILE` ``{"method", "hparams", "data", "metrics"}`` (atomically).

    ``textseg report`` reads it back (:func:`textseg.cli.report.load_run`). A later ``test`` into the same run folder
    replaces the file (the report shows the latest test) and says so (``docs/guide.md``, "Run folders").

    Args:
        log_dir: The run directory.
        method: The method's class name.
        hparams: The method's hyperparameters.
        data: The DataModule's hyperparameters.
        metrics: The test metrics.

    Returns:
        The path written.

    Raises:
        RunFileError: When the file cannot be written.
    """
    path = Path(log_dir) / METRICS_FILE
    earlier = path.is_file()
    record = {"method": method, "hparams": dict(hparams), "data": dict(data), "metrics": dict(metrics)}
    atomic_write(path, json.dumps(record, indent=1, default=str))
    if earlier:
        from lightning.pytorch.utilities import rank_zero_info  # Lightning runs the test that calls this

        rank_zero_info(f"textseg: {path} replaced by this test's metrics (it held an earlier test's)")
    return path


def is_special_ckpt(value: object) -> bool:
    """Whether a ``--ckpt_path`` value is one Lightning resolves: ``best``, ``last``, ``hpc``, ``registry[:...]``.

    Anything else is a file path (``last-v1.ckpt`` included).
    """
    text = str(value)
    return text in ("best", "last", "hpc") or text.lower() == "registry" or text.lower().startswith("registry:")
