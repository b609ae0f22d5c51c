"""The files of a saved model besides its weights: ``config.json`` (how to rebuild it) and the ``README.md`` model card.

``config.json`` is plain JSON: the method's class, its constructor arguments, the network input size, the default
modality code, which network was evaluated, the test metrics of the run when they are known, and the textseg version
that wrote it. Nothing in it is executed: the method must be one of :data:`textseg.inference.loading.METHODS`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from textseg.engine.modelcard import read_json, render_model_card, run_facts
from textseg.engine.runfiles import METRICS_FILE
from textseg.errors import DataError

__all__ = ["FORMAT", "FORMAT_VERSION", "find_run", "model_card", "plain", "read_config"]

#: ``config.json``'s ``format`` and ``format_version``.
FORMAT = "textseg-segmenter"
FORMAT_VERSION = 1
#: Keys every ``config.json`` has.
REQUIRED = ("format", "method", "hparams", "image_size")


def plain(value: Any) -> Any:
    """``value`` as JSON data (tuples become lists, paths strings); anything else is refused.

    Raises:
        DataError: For a value JSON cannot represent (the config must rebuild the model without pickles).
    """
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    raise DataError(f"cannot write {type(value).__name__} value {value!r} to config.json")


def read_config(path: Path) -> dict[str, Any]:
    """Read and check a ``config.json`` written by ``save_pretrained``.

    Raises:
        DataError: If the file is not JSON or misses a required key.
    """
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"{path} is not a readable JSON file: {exc}") from exc
    missing = [k for k in REQUIRED if not isinstance(config, dict) or k not in config]
    if missing or config.get("format") != FORMAT:
        raise DataError(f"{path} is not a textseg model config (format {FORMAT!r}; missing {missing})")
    if int(config.get("format_version", 0)) > FORMAT_VERSION:
        raise DataError(f"{path} has format_version {config['format_version']}: update textseg to read it")
    return dict(config)


#: Facts of the training run kept in ``config.json``'s ``run`` entry (the rest is in its other entries).
RUN_KEYS = ("data", "split_sha256", "versions", "trainer", "hardware", "train_seconds", "budget")


def find_run(checkpoint: Path) -> tuple[dict[str, Any], dict[str, float]]:
    """The facts and test metrics of the run that wrote ``checkpoint`` (its run folder: beside it or one level up).

    Returns:
        The :data:`RUN_KEYS` entries of :func:`textseg.engine.modelcard.run_facts` (empty without a run card) and
        the test metrics ``{name: value}`` (empty when the run has none).
    """
    for folder in (checkpoint.parent, checkpoint.parent.parent):
        facts = run_facts(folder)
        metrics = facts.get("metrics") if facts else read_json(folder / METRICS_FILE).get("metrics")
        if not facts and not isinstance(metrics, dict):
            continue
        hardware = {k: v for k, v in (facts.get("hardware") or {}).items() if k != "host"}  # not shared
        run = {k: plain(hardware if k == "hardware" else facts[k]) for k in RUN_KEYS if k in facts}
        try:
            return run, {str(k): float(v) for k, v in (metrics or {}).items()}
        except (TypeError, ValueError):
            return run, {}
    return {}, {}


def model_card(config: Mapping[str, Any]) -> str:
    """The ``README.md`` model card of a saved model: the run's ``model_card.md`` (:mod:`textseg.engine.modelcard`).

    Args:
        config: The model's ``config.json`` content; its ``run`` entry (the facts of the training run, when the model
            came from a run folder) fills the training and data sections.

    Returns:
        The card's text.
    """
    facts = {**(config.get("run") or {})}
    for key in ("method", "hparams", "image_size", "evaluated", "dataset", "metrics"):
        if config.get(key) is not None:
            facts[key] = config[key]
    return render_model_card(facts)
