"""Mixed precision and memory format: both semi-supervised methods train under ``bf16-mixed`` with channels-last
weights and inputs, with finite losses (the FFT, losses and pseudo-labels run in fp32); under fp16 loss scaling
(``16-mixed``) overflowing steps are left to the ``GradScaler`` and NaN losses are still caught."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.plugins.precision import MixedPrecision
from torch import Tensor

from textseg.data.datamodule import TextSegDataModule
from textseg.engine.guards import NonFiniteLossError
from textseg.methods import SemiMedRefModule, TextMoEModule

TINY: dict[str, Any] = {"vision_encoder": "tiny", "text_encoder": "tiny", "channels_last": True}


def tiny_run(method: str, qata_root: Path, mosmed_root: Path) -> tuple[Any, TextSegDataModule]:
    """A tiny channels-last Semi-MedRef (QaTa, unlabeled branch and T-PatchMix on from the first step) or TextMoE
    (composite QaTa + MosMed) module and its data (also used by ``test_gpu.py``)."""
    if method == "semimedref":
        module: Any = SemiMedRefModule(
            backbone="mmiunet", project_dim=16, burn_in_epochs=0, lambda_u_ramp_epochs=0, mix_prob=1.0, **TINY
        )
        dm = TextSegDataModule(dataset="qata", root=str(qata_root), labeled_ratio=0.25, image_size=64, batch_size=2)
        return module, dm
    dm = TextSegDataModule(
        dataset=["qata", "mosmed"],
        root=[str(qata_root), str(mosmed_root)],
        labeled_ratio=0.25,
        image_size=64,
        batch_size=2,
        unlabeled_batch_size=4,
    )
    return TextMoEModule(**TINY), dm


def short_cpu_trainer(**kwargs: Any) -> Trainer:
    """One CPU epoch of 2 training batches, no progress bar, summary or checkpoints; ``kwargs`` add or override."""
    defaults: dict[str, Any] = {"accelerator": "cpu", "max_epochs": 1, "limit_train_batches": 2, "logger": False,
                                "enable_model_summary": False, "enable_progress_bar": False,
                                "enable_checkpointing": False}  # fmt: skip
    return Trainer(**{**defaults, **kwargs})


@pytest.mark.parametrize("method", ["semimedref", "textmoe"])
def test_bf16_mixed_channels_last_fit(method: str, qata_root: Path, mosmed_root: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    module, dm = tiny_run(method, qata_root, mosmed_root)
    trainer = short_cpu_trainer(
        precision="bf16-mixed", limit_val_batches=1, logger=CSVLogger(tmp_path), log_every_n_steps=1
    )
    trainer.fit(module, datamodule=dm)
    losses = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("train_loss")}
    assert "train_loss_unsup" in losses and all(math.isfinite(v) for v in losses.values()), losses
    conv = next(m for m in module.net.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size != (1, 1))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert all(p.dtype == torch.float32 for p in module.net.parameters())  # master weights stay fp32


class _Poisoned(SemiMedRefModule):
    """Semi-MedRef whose labeled images are NaN: every loss is NaN."""

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        batch["labeled"]["image"] = batch["labeled"]["image"] * float("nan")
        return super().training_step(batch, batch_idx)


@pytest.mark.parametrize("poisoned", [False, True])
def test_fp16_loss_scaling_leaves_overflow_to_the_scaler(poisoned: bool, qata_root: Path) -> None:
    """``16-mixed`` (fp16 autocast + ``GradScaler``; on the CPU here, as on a GPU): a scale of 2**127 overflows
    every step. The scaler skips those steps and halves its scale each time, the weights stay put, and the guard
    (``nonfinite="stop"``) lets it; a NaN loss still stops the run."""
    torch.manual_seed(0)
    cls = _Poisoned if poisoned else SemiMedRefModule
    module = cls(backbone="mmiunet", project_dim=16, burn_in_epochs=0, lambda_u_ramp_epochs=0, nonfinite="stop",
                 vision_encoder="tiny", text_encoder="tiny")  # fmt: skip
    before = {k: v.clone() for k, v in module.net.state_dict().items() if v.is_floating_point()}
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**127)
    trainer = short_cpu_trainer(plugins=[MixedPrecision("16-mixed", "cpu", scaler)], limit_val_batches=0)
    dm = TextSegDataModule(dataset="qata", root=str(qata_root), labeled_ratio=0.25, image_size=64, batch_size=2)
    if poisoned:
        with pytest.raises(NonFiniteLossError, match="train_loss_sup=nan"):
            trainer.fit(module, datamodule=dm)
        return
    trainer.fit(module, datamodule=dm)
    assert scaler.get_scale() == 2.0**125  # two overflowing steps, each skipped with backoff 0.5
    after = module.net.state_dict()
    for name, value in before.items():
        if "running" not in name and "num_batches" not in name:
            torch.testing.assert_close(after[name], value, msg=f"{name} moved in a step the scaler skipped")


@pytest.mark.slow  # TorchDynamo tracing: ~40-75 s on 2 cores; `make test-all`
def test_compile_option(qata_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``compile=True`` compiles student and teacher in place (TorchDynamo; the ``eager`` backend here, so no C++
    toolchain is needed): training runs, state-dict keys are unchanged, and the compiled networks compute what the
    plain ones compute."""
    plain_compile = torch.nn.Module.compile
    monkeypatch.setattr(  # keep fullgraph, replace the mode by the eager backend
        torch.nn.Module, "compile", lambda self, **kw: plain_compile(self, fullgraph=kw["fullgraph"], backend="eager")
    )
    torch.manual_seed(0)
    kwargs: dict[str, Any] = {
        "backbone": "mmiunet",
        "vision_encoder": "tiny",
        "text_encoder": "tiny",
        "project_dim": 16,
    }
    module = SemiMedRefModule(compile=True, burn_in_epochs=0, lambda_u_ramp_epochs=0, **kwargs)
    dm = TextSegDataModule(dataset="qata", root=str(qata_root), labeled_ratio=0.25, image_size=64, batch_size=2)
    trainer = short_cpu_trainer(limit_val_batches=1)
    trainer.fit(module, datamodule=dm)
    assert module.net._compiled_call_impl is not None and module.teacher._compiled_call_impl is not None
    plain = SemiMedRefModule(**kwargs)
    assert plain.state_dict().keys() == module.state_dict().keys()
    plain.load_state_dict(module.state_dict())
    module.eval(), plain.eval()
    image = torch.randn(2, 1, 64, 64)
    texts = ["Unilateral pulmonary infection, one infected area, lower left lung."] * 2
    with torch.no_grad():
        assert torch.allclose(module(image, texts)["logits"], plain(image, texts)["logits"], atol=1e-5)
