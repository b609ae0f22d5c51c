"""The training loop shared by the quality benchmarks: fit (CPU by default), keep the best checkpoint, test it.

Imported by ``semimedref_synthetic.py`` and ``textmoe_synthetic.py`` (run as scripts from the repository root, so
``benchmarks/`` is on ``sys.path``).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from lightning.pytorch import LightningDataModule, LightningModule, Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

#: Training-step interval of the CSV logger's rows.
LOG_EVERY_N_STEPS = 10


def fit_and_test(
    name: str,
    build: Callable[[], LightningModule],
    dm: LightningDataModule,
    epochs: int,
    log_dir: str,
    seed: int,
    accelerator: str = "cpu",
) -> tuple[str, dict[str, float]]:
    """Seed everything, build the module, fit it for ``epochs`` (best checkpoint on ``val_dice``), test the best.

    The module is built *after* seeding, so ``seed`` fixes the network initialisation too (torch's generator starts
    from a random seed in every process; building first made every run start from other weights). ``accelerator``
    is Lightning's (``"cpu"``, ``"gpu"``); fp32 either way.

    Returns:
        The best checkpoint's path and the test metrics plus ``train_seconds`` (wall time of ``fit``).
    """
    seed_everything(seed)
    module = build()
    ckpt = ModelCheckpoint(monitor="val_dice", mode="max", filename="best")
    trainer = Trainer(
        accelerator=accelerator,
        devices=1,
        max_epochs=epochs,
        logger=CSVLogger(log_dir, name=name),
        callbacks=[ckpt],
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=LOG_EVERY_N_STEPS,
    )
    start = time.perf_counter()
    trainer.fit(module, datamodule=dm)
    elapsed = time.perf_counter() - start
    result = trainer.test(module, datamodule=dm, ckpt_path="best", verbose=False, weights_only=True)[0]
    return ckpt.best_model_path, {**{k: float(v) for k, v in result.items()}, "train_seconds": elapsed}
