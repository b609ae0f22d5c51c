"""Reading the results of runs for ``textseg report``: one :class:`RunResult` per run and dataset.

Every run directory written by ``textseg fit --test_after_fit true`` (or ``textseg test``) holds a
``test_metrics.json`` (``{"method", "hparams", "data", "metrics"}``, written by
:meth:`~textseg.methods.evaluation.Evaluation.on_test_epoch_end`); the dataset, label ratio and seed come from its
``data`` entry, else from the run's ``split.json``, else from its ``config.yaml``; the trainer settings (epochs,
batch limits, precision...) from its ``config.yaml``. A composite run (TextMoE: QaTa + MosMed) gives one result per
dataset its test split held (``test_dice_qata``, ...); a dataset evaluated nowhere gives none.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from textseg.engine.runfiles import METRICS_FILE
from textseg.errors import DataError

__all__ = [
    "DATA_IGNORED",
    "METRICS",
    "OPTIONAL_METRICS",
    "SEED_KEYS",
    "TRAINER_IGNORED",
    "RunResult",
    "find_metric_files",
    "load_run",
]

#: Metrics of a cell, as named in ``test_metrics.json`` without the ``test_`` prefix.
METRICS: tuple[str, ...] = ("dice", "iou", "dice_per_image", "iou_per_image", "hd95")
#: Metrics that older ``test_metrics.json`` files lack (read as NaN, shown empty); the others are required.
OPTIONAL_METRICS: frozenset[str] = frozenset({"hd95"})
#: Settings that are seeds (never a row distinction: runs differing only in these are the seeds of one cell).
SEED_KEYS: frozenset[str] = frozenset({"seed", "aug_seed", "data.seed", "trainer.seed_everything"})
#: Data settings that are table columns (dataset, label ratio) or do not change the results (loading, prediction).
DATA_IGNORED: frozenset[str] = frozenset(
    {"dataset", "labeled_ratio", "seed", "num_workers", "pin_memory", "persistent_workers", "prefetch_factor",
     "eval_batch_size", "predict_images", "predict_texts", "predict_modality"}
)  # fmt: skip
#: Trainer settings that do not change the results (where files go, what is printed).
TRAINER_IGNORED: frozenset[str] = frozenset(
    {"logger", "default_root_dir", "enable_progress_bar", "enable_model_summary", "log_every_n_steps", "callbacks",
     "profiler", "barebones", "plugins", "fast_dev_run", "detect_anomaly", "inference_mode", "use_distributed_sampler",
     "reload_dataloaders_every_n_epochs", "enable_checkpointing", "num_sanity_val_steps"}
)  # fmt: skip


@dataclass(frozen=True)
class RunResult:
    """One test result of one run on one dataset.

    Attributes:
        path: The ``test_metrics.json`` file.
        method: Method (class name without ``Module``).
        backbone: Backbone (``"?"`` when unknown).
        dataset: Dataset the metrics are on.
        trained_on: Training data (``"qata+mosmed"`` for composite runs, else the dataset).
        labeled_ratio: Label ratio.
        seed: Data seed (``None`` when unknown).
        hparams: Model hyper-parameters (LightningCLI's private keys removed).
        settings: Every setting of the run that can change its results: the model's hyper-parameters (bare names),
            the data's (``data.*``, less :data:`DATA_IGNORED`) and the trainer's from the run's ``config.yaml``
            (``trainer.*``, less :data:`TRAINER_IGNORED`): epochs, batch limits, precision...
        metrics: ``dice``, ``iou``, ``dice_per_image``, ``iou_per_image`` in [0, 1]; ``hd95`` in pixels (NaN when
            the run predates it).
        mtime: Modification time of the file (the newest run wins when a seed repeats).
    """

    path: Path
    method: str
    backbone: str
    dataset: str
    trained_on: str
    labeled_ratio: float
    seed: int | None
    hparams: dict[str, Any]
    metrics: dict[str, float]
    mtime: float
    settings: dict[str, Any] = field(default_factory=dict)


def find_metric_files(dirs: Iterable[str | Path]) -> list[Path]:
    """All ``test_metrics.json`` files under the given folders (or the files themselves), sorted.

    Raises:
        DataError: If a folder does not exist.
    """
    found: set[Path] = set()
    for entry in dirs:
        path = Path(entry).expanduser()
        if path.is_file():
            found.add(path)
        elif path.is_dir():
            found.update(path.rglob(METRICS_FILE))
        else:
            raise DataError(f"runs folder {path} does not exist")
    return sorted(found)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path} is not readable JSON: {exc}") from exc


def _read_config(path: Path) -> Mapping[str, Any]:
    """The run's ``config.yaml`` beside ``path`` (``{}`` without one)."""
    config_path = path.parent / "config.yaml"
    if not config_path.is_file():
        return {}
    try:
        config = yaml.safe_load(config_path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise DataError(f"{config_path} is not readable YAML: {exc}") from exc
    return config if isinstance(config, Mapping) else {}


def _data_facts(path: Path, record: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
    """Dataset, label ratio and seed of a run: the record's ``data``, else ``split.json``, else ``config.yaml``."""
    keys = ("dataset", "labeled_ratio", "seed")
    facts: dict[str, Any] = {}
    data = record.get("data")
    if isinstance(data, Mapping):
        facts.update({k: data[k] for k in keys if data.get(k) is not None})
    split_path = path.parent / "split.json"
    if len(facts) < len(keys) and split_path.is_file():
        split = _read_json(split_path)
        if isinstance(split, Mapping):
            for k in keys:
                if k not in facts and split.get(k) is not None:
                    facts[k] = split[k]
    data_cfg = config.get("data")
    if isinstance(data_cfg, Mapping):
        for k in keys:
            if k not in facts and data_cfg.get(k) is not None:
                facts[k] = data_cfg[k]
    return facts


def _run_settings(record: Mapping[str, Any], hparams: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
    """The settings of a run that can change its results (see :attr:`RunResult.settings`).

    The data settings come from the record's ``data`` entry, else from the ``data`` section of the run's
    ``config.yaml``; the trainer settings from that file's ``trainer`` section. A setting a run does not record is
    absent (unknown), not ``None``.
    """
    settings: dict[str, Any] = dict(hparams)
    data = record.get("data") if isinstance(record.get("data"), Mapping) else config.get("data")
    if isinstance(data, Mapping):
        kept = {k: v for k, v in data.items() if k not in DATA_IGNORED and not str(k).startswith("_")}
        settings.update({f"data.{k}": v for k, v in kept.items()})
    trainer = config.get("trainer")
    if isinstance(trainer, Mapping):
        settings.update({f"trainer.{k}": v for k, v in trainer.items() if k not in TRAINER_IGNORED})
    return settings


def _method_name(name: str) -> str:
    return name[: -len("Module")] if name.endswith("Module") and len(name) > len("Module") else name


def load_run(path: str | Path) -> list[RunResult]:
    """Read one ``test_metrics.json`` (one result per dataset; several for composite training data).

    Args:
        path: The file.

    Returns:
        The results.

    Raises:
        DataError: Naming the file if it is unreadable, lacks a required metric (all but :data:`OPTIONAL_METRICS`),
            or its label ratio cannot be found.
    """
    path = Path(path)
    record = _read_json(path)
    if not isinstance(record, Mapping) or not isinstance(record.get("metrics"), Mapping):
        raise DataError(f"{path}: expected an object with 'method', 'hparams' and 'metrics'")
    hparams = {k: v for k, v in dict(record.get("hparams") or {}).items() if not str(k).startswith("_")}
    metrics: Mapping[str, Any] = record["metrics"]
    config = _read_config(path)  # read once: the data facts and the settings both use it
    facts = _data_facts(path, record, config)
    if "labeled_ratio" not in facts:
        raise DataError(f"{path}: no labeled_ratio in its 'data', split.json or config.yaml")
    dataset = facts.get("dataset", "?")
    names = [str(d) for d in dataset] if isinstance(dataset, (list, tuple)) else [str(dataset)]
    trained_on = "+".join(names)
    # a composite run gives one result per dataset its test split had; a dataset evaluated nowhere has no keys
    evaluated = [n for n in names if f"test_dice_{n}" in metrics] if len(names) > 1 else []
    targets = [(n, f"_{n}") for n in evaluated] if evaluated else [(trained_on, "")]
    settings = _run_settings(record, hparams, config)
    seed = facts.get("seed")
    results = []
    for name, postfix in targets:
        values: dict[str, float] = {}
        for metric in METRICS:
            key = f"test_{metric}{postfix}"
            if key in metrics:
                values[metric] = float(metrics[key])
            elif metric in OPTIONAL_METRICS:
                values[metric] = math.nan
            else:
                raise DataError(f"{path}: metric {key!r} missing (found {sorted(metrics)})")
        results.append(
            RunResult(
                path=path,
                method=_method_name(str(record.get("method", "?"))),
                backbone=str(hparams.get("backbone", "?")),
                dataset=name,
                trained_on=trained_on,
                labeled_ratio=float(facts["labeled_ratio"]),
                seed=int(seed) if seed is not None else None,
                hparams=hparams,
                metrics=values,
                mtime=path.stat().st_mtime,
                settings=settings,
            )
        )
    return results
