"""The two semi-supervised methods on a CUDA device, in fp32, ``bf16-mixed`` and ``16-mixed`` (skipped without one).

Each run fits two short epochs with channels-last networks and tests the best weights. Checked: every logged loss
term is finite; student and EMA teacher live on the GPU in fp32 (the master weights), and the teacher has moved away
from its initial copy of the student but is not the student; the test Dice is a number in [0, 1]; and the saved
checkpoint, loaded on the CPU, computes what the GPU module computes (fp32 evaluation). Under ``16-mixed`` the
``GradScaler`` handles overflowing steps; the non-finite guard (``"stop"``) must not end the run over them.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from test_precision import tiny_run

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

TEXTS = [
    "Unilateral pulmonary infection, one infected area, lower left lung.",
    "Bilateral pulmonary infection, two infected areas, upper left lung and lower right lung.",
]


class _Placement(Callback):
    """Records where student and teacher parameters live at the end of training (Lightning moves the module back
    to the CPU when ``fit`` returns)."""

    seen: set[tuple[str, torch.dtype]]

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        nets = (pl_module.net, pl_module.teacher)
        self.seen = {(p.device.type, p.dtype) for net in nets for p in net.parameters()}  # type: ignore[union-attr]


@pytest.mark.parametrize("precision", ["32", "bf16-mixed", "16-mixed"])
@pytest.mark.parametrize("method", ["semimedref", "textmoe"])
def test_fit_and_test_on_gpu(method: str, precision: str, qata_root: Path, mosmed_root: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    module, dm = tiny_run(method, qata_root, mosmed_root)
    start = {k: v.clone() for k, v in module.net.state_dict().items() if v.is_floating_point()}
    ckpt = ModelCheckpoint(dirpath=tmp_path, monitor="val_dice", mode="max", filename="best")
    placement = _Placement()
    trainer = Trainer(
        accelerator="gpu",
        devices=1,
        precision=precision,  # type: ignore[arg-type]
        max_epochs=2,
        limit_train_batches=3,
        limit_val_batches=1,
        logger=CSVLogger(tmp_path),
        log_every_n_steps=1,
        callbacks=[ckpt, placement],
        enable_model_summary=False,
        enable_progress_bar=False,
    )
    trainer.fit(module, datamodule=dm)
    losses = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("train_loss")}
    assert "train_loss_unsup" in losses and all(math.isfinite(v) for v in losses.values()), losses
    assert placement.seen == {("cuda", torch.float32)}  # fp32 master weights on the GPU, teacher included
    student, teacher = module.net.state_dict(), module.teacher.module.state_dict()
    name = next(k for k in start if "running" not in k and not torch.equal(student[k], start[k]))
    assert not torch.equal(teacher[name], start[name]), f"teacher {name} never moved"
    assert not torch.equal(teacher[name], student[name]), f"teacher {name} equals the student"

    result = trainer.test(module, datamodule=dm, ckpt_path="best", verbose=False, weights_only=True)[0]
    assert 0.0 <= result["test_dice"] <= 1.0

    gpu = type(module).load_from_checkpoint(ckpt.best_model_path, weights_only=True).cuda().eval()
    cpu = type(module).load_from_checkpoint(ckpt.best_model_path, map_location="cpu", weights_only=True).eval()
    image = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        on_gpu = gpu(image.cuda(), TEXTS, gpu.eval_net)["logits"].cpu()
        on_cpu = cpu(image, TEXTS, cpu.eval_net)["logits"]
    torch.testing.assert_close(on_gpu, on_cpu, atol=2e-3, rtol=1e-3)
