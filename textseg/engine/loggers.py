"""Lightning's CSV logger, made safe for ``--run_dir`` reruns and resumed runs.

Lightning's :class:`~lightning.pytorch.loggers.CSVLogger` deletes an existing ``metrics.csv`` as soon as the trainer
sets up, before any data is read. A run that then fails on bad input has already destroyed the good run's metrics,
and a run resumed from a checkpoint into its own folder loses the metrics of the epochs before the interruption.
:class:`CSVLogger` keeps the file until there is something to write, and then

* **resumed run** (the module calls :meth:`CSVLogger.resume_at` with the checkpoint's step): keeps the rows up to
  that step, drops the ones logged after it (they are logged again) and appends -- the file ends as the
  uninterrupted run's;
* **validate/test/predict** into a run's folder (the CLI calls :meth:`CSVLogger.keep_earlier`): keeps every row and
  appends, and leaves the fit's ``hparams.yaml`` as it is;
* **new run** into a used folder (``--run_dir_exists overwrite`` deletes the earlier file first): replaces the file,
  as Lightning does.

``textseg fit`` refuses a folder that holds an earlier run unless it resumes it (``docs/guide.md``, "Run folders").
"""

from __future__ import annotations

import csv
import os
from typing import Any

from lightning.pytorch.loggers import CSVLogger as _LightningCSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment

__all__ = ["CSVLogger"]


class _KeepingWriter(ExperimentWriter):
    """An experiment writer that decides what to do with an earlier ``metrics.csv`` at its first save."""

    def __init__(self, log_dir: str) -> None:
        self.resume_step: int | None = None
        self.append = False
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:
        """Only note whether an earlier ``metrics.csv`` exists (Lightning deletes it here)."""
        self._earlier = self._fs.isfile(self.metrics_file_path)

    def log_hparams(self, params: dict[str, Any]) -> None:
        """Record the hyper-parameters; write ``hparams.yaml`` unless appending to a run that has one."""
        if self.append and self._fs.isfile(os.path.join(self.log_dir, self.NAME_HPARAMS_FILE)):
            self.hparams.update(params)
            return
        super().log_hparams(params)

    def _settle_earlier(self) -> None:
        self._earlier = False
        if self.append:
            with self._fs.open(self.metrics_file_path, "r", newline="") as file:
                self.metrics_keys = sorted(csv.DictReader(file).fieldnames or [])
            return
        if self.resume_step is None:
            self._fs.rm_file(self.metrics_file_path)
            return
        with self._fs.open(self.metrics_file_path, "r", newline="") as file:
            reader = csv.DictReader(file)
            keys = list(reader.fieldnames or [])
            rows = [row for row in reader if not row.get("step") or int(float(row["step"])) <= self.resume_step]
        with self._fs.open(self.metrics_file_path, "w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=keys)
            writer.writeheader()
            writer.writerows(rows)
        self.metrics_keys = sorted(keys)

    def save(self) -> None:
        """Settle the earlier file (continue or replace it), then append the new rows."""
        if self.metrics and self._earlier:
            self._settle_earlier()
        super().save()


class CSVLogger(_LightningCSVLogger):
    """Lightning's CSV logger that keeps an earlier ``metrics.csv`` until it writes, and continues it on resume.

    Same arguments as :class:`lightning.pytorch.loggers.CSVLogger`.
    """

    @property
    @rank_zero_experiment
    def experiment(self) -> Any:
        """The experiment writer (created on first access; a dummy on other ranks than zero)."""
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _KeepingWriter(log_dir=self.log_dir)
        return self._experiment

    def keep_earlier(self) -> None:
        """Append to an earlier ``metrics.csv`` and keep its ``hparams.yaml`` (validate/test/predict into a run)."""
        writer = self.experiment
        if isinstance(writer, _KeepingWriter):
            writer.append = True

    def resume_at(self, step: int) -> None:
        """Continue the earlier ``metrics.csv`` up to ``step`` (called when training resumes from a checkpoint)."""
        writer = self.experiment
        if isinstance(writer, _KeepingWriter):
            writer.resume_step = int(step)
