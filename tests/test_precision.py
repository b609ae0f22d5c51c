"""Mixed precision and memory format: both semi-supervised methods train under ``bf16-mixed`` with channels-last
weights and inputs, with finite losses (the FFT, losses and pseudo-labels run in fp32)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import CSVLogger

from textseg.datamodule import TextSegDataModule
from textseg.methods import SemiMedRefModule, TextMoEModule

TINY: dict[str, Any] = {"vision_encoder": "tiny", "text_encoder": "tiny", "channels_last": True}


@pytest.mark.parametrize("method", ["semimedref", "textmoe"])
def test_bf16_mixed_channels_last_fit(method: str, qata_root: Path, mosmed_root: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    if method == "semimedref":
        module: Any = SemiMedRefModule(
            backbone="mmiunet", project_dim=16, burn_in_epochs=0, lambda_u_ramp_epochs=0, mix_prob=1.0, **TINY
        )
        dm = TextSegDataModule(dataset="qata", root=str(qata_root), labeled_ratio=0.25, image_size=64, batch_size=2)
    else:
        module = TextMoEModule(**TINY)
        dm = TextSegDataModule(
            dataset=["qata", "mosmed"],
            root=[str(qata_root), str(mosmed_root)],
            labeled_ratio=0.25,
            image_size=64,
            batch_size=2,
            unlabeled_batch_size=4,
        )
    trainer = Trainer(
        accelerator="cpu",
        precision="bf16-mixed",
        max_epochs=1,
        limit_train_batches=2,
        limit_val_batches=1,
        logger=CSVLogger(tmp_path),
        log_every_n_steps=1,
        enable_model_summary=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
    )
    trainer.fit(module, datamodule=dm)
    losses = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("train_loss")}
    assert "train_loss_unsup" in losses and all(math.isfinite(v) for v in losses.values()), losses
    conv = next(m for m in module.net.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size != (1, 1))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert all(p.dtype == torch.float32 for p in module.net.parameters())  # master weights stay fp32
