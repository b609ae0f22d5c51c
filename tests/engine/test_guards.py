"""The non-finite guard decides on the device; optimizers without ``found_inf`` get the host fallback."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from lightning.pytorch import LightningModule, Trainer
from torch.utils.data import DataLoader, TensorDataset

from textseg.engine.guards import NonFiniteGuard, NonFiniteLossError, skips_on_device


class Tiny(LightningModule):
    """A linear model whose loss is NaN on the batches listed in ``poisoned``."""

    def __init__(self, optimizer: str, poisoned: tuple[int, ...]) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)
        self.optimizer, self.poisoned = optimizer, poisoned
        self.weights: list[torch.Tensor] = []

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss = self.layer(batch[0]).square().mean()
        return loss * float("nan") if batch_idx in self.poisoned else loss

    def on_train_batch_end(self, *args: Any) -> None:
        self.weights.append(self.layer.weight.detach().clone())

    def configure_optimizers(self) -> Any:
        if self.optimizer == "sgd":
            return torch.optim.SGD(self.parameters(), lr=0.1)
        return torch.optim.AdamW(self.parameters(), lr=0.1, fused=True)


def _fit(optimizer: str, mode: str, poisoned: tuple[int, ...]) -> tuple[Tiny, NonFiniteGuard]:
    torch.manual_seed(0)
    module, guard = Tiny(optimizer, poisoned), NonFiniteGuard(mode)  # type: ignore[arg-type]
    data = DataLoader(TensorDataset(torch.randn(8, 4)), batch_size=2)
    trainer = Trainer(
        accelerator="cpu",
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[guard],
        log_every_n_steps=1,
    )
    trainer.fit(module, data)
    return module, guard


@pytest.mark.parametrize("optimizer", ["sgd", "fused_adamw"])
def test_bad_steps_are_skipped_with_or_without_found_inf(optimizer: str) -> None:
    module, guard = _fit(optimizer, "skip", poisoned=(1, 2))
    assert skips_on_device(torch.optim.AdamW([torch.nn.Parameter(torch.ones(1))], fused=True))
    assert not skips_on_device(torch.optim.SGD([torch.nn.Parameter(torch.ones(1))], lr=0.1))
    w = module.weights
    assert guard.skipped == 2 and torch.equal(w[1], w[0]) and torch.equal(w[2], w[0])  # the weights stood still
    assert not torch.equal(w[3], w[2]) and torch.isfinite(w[3]).all()  # and trained again after


def test_stop_mode_names_the_first_bad_step() -> None:
    with pytest.raises(NonFiniteLossError, match=r"non-finite values at step 1 .*total loss non-finite"):
        _fit("fused_adamw", "stop", poisoned=(1,))
