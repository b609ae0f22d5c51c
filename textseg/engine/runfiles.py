"""Files a run writes into its run folder, in one place so that the writers and the readers agree.

* :data:`METRICS_FILE` -- ``test_metrics.json``, written by every ``test`` (:func:`write_test_metrics`) and read by
  ``textseg report`` (:mod:`textseg.cli.report`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

#: The test metrics of a run, beside its logs.
METRICS_FILE = "test_metrics.json"


def write_test_metrics(
    log_dir: str | Path, method: str, hparams: Mapping[str, Any], data: Mapping[str, Any], metrics: Mapping[str, float]
) -> Path:
    """Write a run's :data:`METRICS_FILE` ``{"method", "hparams", "data", "metrics"}``.

    ``textseg report`` reads it back (:func:`textseg.cli.report.load_run`).

    Args:
        log_dir: The run directory.
        method: The method's class name.
        hparams: The method's hyperparameters.
        data: The DataModule's hyperparameters.
        metrics: The test metrics.

    Returns:
        The path written.
    """
    path = Path(log_dir) / METRICS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"method": method, "hparams": dict(hparams), "data": dict(data), "metrics": dict(metrics)}
    path.write_text(json.dumps(record, indent=1, default=str))
    return path
