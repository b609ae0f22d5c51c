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

from textseg.engine.runfiles import METRICS_FILE
from textseg.errors import DataError

__all__ = ["FORMAT", "FORMAT_VERSION", "find_metrics", "model_card", "plain", "read_config"]

#: ``config.json``'s ``format`` and ``format_version``.
FORMAT = "textseg-segmenter"
FORMAT_VERSION = 1
#: Keys every ``config.json`` has.
REQUIRED = ("format", "method", "hparams", "image_size")

CITATIONS = """\
* Li et al., "Semi-MedRef: Semi-Supervised Medical Referring Image Segmentation with Cross-Modal Alignment",
  arXiv 2605.15720 (Semi-MedRef).
* Zeng et al., "Exploring Text-enhanced Mixture-of-Experts for Semi-supervised Medical Image Segmentation with
  Composite Data", MICCAI 2025 (TextMoE)."""


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


def find_metrics(checkpoint: Path) -> dict[str, float]:
    """The test metrics of the run that wrote ``checkpoint`` (``test_metrics.json`` beside it or in the run folder).

    Returns:
        ``{name: value}``, empty when the run has none.
    """
    for folder in (checkpoint.parent, checkpoint.parent.parent):
        file = folder / METRICS_FILE
        if file.is_file():
            try:
                metrics = json.loads(file.read_text(encoding="utf-8")).get("metrics", {})
                return {str(k): float(v) for k, v in metrics.items()}
            except (OSError, ValueError, TypeError, AttributeError):
                return {}
    return {}


def _metrics_table(metrics: Mapping[str, float]) -> str:
    if not metrics:
        return "No test metrics were recorded with this model (the run had no `textseg test`)."
    rows = "\n".join(f"| `{k}` | {v:.4f} |" for k, v in sorted(metrics.items()))
    return "Test metrics of the training run (`test_metrics.json`):\n\n| metric | value |\n|---|---|\n" + rows


def model_card(config: Mapping[str, Any]) -> str:
    """The ``README.md`` model card of a saved model (Hugging Face front matter, then Markdown).

    Args:
        config: The model's ``config.json`` content.

    Returns:
        The card's text.
    """
    hp = config["hparams"]
    method = config["method"]
    dataset = config.get("dataset") or "unknown"
    return f"""---
library_name: textseg
tags:
- medical-imaging
- image-segmentation
- referring-segmentation
- textseg
---

# textseg {method} ({hp.get("backbone", "?")})

A text-guided medical image segmentation model trained with textseg (`{method}`): given a
chest X-ray or CT slice and a referring text ("Bilateral pulmonary infection, two infected areas, middle left lung
and lower right lung."), it predicts the binary mask of the lesion the text describes.

| | |
|---|---|
| method | `{method}` (evaluated network: {config.get("evaluated", "student")}) |
| backbone | `{hp.get("backbone", "?")}` |
| vision encoder | `{hp.get("vision_encoder", "?")}` |
| text encoder | `{hp.get("text_encoder", "?")}` (frozen, max {hp.get("max_length", "?")} tokens) |
| input size | {config["image_size"]} x {config["image_size"]} (grey, per-image z-score) |
| training data | `{dataset}` |
| textseg version | {config.get("textseg_version", "?")} |

## Use

```python
from textseg import Segmenter

seg = Segmenter.from_pretrained("path/or/hub-id")
mask = seg.predict("image.png", "Bilateral pulmonary infection, lower left lung.")
```

or `textseg segment image.png --text "..." --model path/or/hub-id --out masks/`.

## Evaluation

{_metrics_table(config.get("metrics") or {})}

## Intended use and limitations

Research only. This model is **not a medical device and not for clinical use**: it has not been validated for
diagnosis or treatment decisions. It was trained on the data named above and may fail on other scanners, populations,
modalities or on texts unlike its training texts; the text changes the output, so a wrong text gives a wrong mask.

## Citation

{CITATIONS}
"""
