"""Files a run writes into its run folder, in one place so that the writers and the readers agree.

* :data:`METRICS_FILE` -- ``test_metrics.json``, written by every ``test`` (:func:`write_test_metrics`) and read by
  ``textseg report`` (:mod:`textseg.cli.report`).

Files are written atomically (:func:`textseg.engine.runfolder.atomic_write`); a write that fails raises one
:class:`~textseg.engine.runfolder.RunFileError` naming the file and the cause.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lightning.pytorch.utilities import rank_zero_info

from textseg.engine.runfolder import atomic_write

#: The test metrics of a run, beside its logs.
METRICS_FILE = "test_metrics.json"


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
        rank_zero_info(f"textseg: {path} replaced by this test's metrics (it held an earlier test's)")
    return path
