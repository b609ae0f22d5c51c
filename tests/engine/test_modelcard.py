"""The model card: facts read from a run folder, rendered into ``model_card.md`` (``textseg.engine.modelcard``)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from textseg.engine.modelcard import CARD_NAME, encoder_source, render_model_card, run_facts, write_model_card


def _run_folder(tmp_path: Path, metrics: dict[str, float] | None) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    (run / "split.json").write_text('{"seed": 42}')
    sha = hashlib.sha256((run / "split.json").read_bytes()).hexdigest()
    card = {
        "model": {
            "class": "textseg.methods.semimedref.SemiMedRefModule",
            "hparams": {"backbone": "mmiunet", "vision_encoder": "tiny", "text_encoder": "minilm", "max_length": 24},
        },
        "data": {"hparams": {"dataset": "qata", "root": "/data/QaTa", "label_ratio": 0.25, "image_size": 224}},
        "split": {"file": "split.json", "sha256": sha},
        "versions": {"textseg": "0.1.0", "torch": "2.13.0", "lightning": "2.5"},
        "trainer": {"max_epochs": 3, "precision": "bf16-mixed", "num_devices": 2},
        "hardware": {"cpu": "x86_64", "cpu_count": 16, "devices": ["NVIDIA H100", "NVIDIA H100"]},
        "budget": {"optimizer_steps": 120},
        "train_seconds": 3725.4,
    }
    (run / "run_card.json").write_text(json.dumps(card))
    if metrics is not None:
        (run / "test_metrics.json").write_text(json.dumps({"metrics": metrics}))
    return run


def test_card_from_run_folder(tmp_path: Path) -> None:
    metrics = {"test_dice": 0.81234, "test_dice_per_image": 0.7711, "test_hd95": 12.5}
    run = _run_folder(tmp_path, metrics)
    path = write_model_card(run)
    assert path == run / CARD_NAME
    text = path.read_text()
    sha = hashlib.sha256((run / "split.json").read_bytes()).hexdigest()
    assert text.startswith("---\nlibrary_name: textseg\n")
    assert "# textseg SemiMedRefModule (mmiunet)" in text
    assert f"SHA-256 `{sha}`" in text and "0.25 of the training split has masks" in text
    assert "| `test_dice` | 0.8123 | pooled Dice" in text
    assert "| `test_dice_per_image` | 0.7711 | LViT per-image Dice" in text
    assert "| `test_hd95` | 12.5000 | 95th-percentile Hausdorff" in text
    assert "1 h 2 min 5 s" in text and "NVIDIA H100, NVIDIA H100 (2 devices)" in text and "bf16-mixed" in text
    assert "all-MiniLM-L6-v2" in text and "random weights" in text  # where the encoders come from
    assert "Semi-MedRef" in text and "MMI-UNet" in text and "not for clinical use" in text
    assert not (run / (CARD_NAME + ".tmp")).exists()


def test_no_card_without_test_metrics_or_run_card(tmp_path: Path) -> None:
    assert write_model_card(_run_folder(tmp_path, None)) is None
    assert run_facts(tmp_path / "nowhere") == {} and write_model_card(tmp_path / "nowhere") is None


def test_encoder_sources(tmp_path: Path) -> None:
    assert "Hugging Face Hub model `microsoft/BiomedVLP-CXR-BERT-specialized`" in encoder_source(
        "microsoft/BiomedVLP-CXR-BERT-specialized", "text"
    )
    assert encoder_source(str(tmp_path), "vision") == f"the local folder `{tmp_path}`"
    assert "not pretrained" in encoder_source("tiny", "vision")


def test_render_minimal_facts() -> None:
    text = render_model_card({"method": "TextMoEModule", "hparams": {"backbone": "textmoe"}})
    assert "# textseg TextMoEModule (textmoe)" in text and "No test metrics were recorded" in text
    assert text.count("Zeng et al.") == 1
