"""One line per epoch on stdout (:class:`textseg.engine.progress.EpochSummary`): its format, and a tiny ``fit``."""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar
from tinyrun import tiny_args

from textseg.cli.lightning import TextSegCLI
from textseg.cli.main import main
from textseg.engine import progress
from textseg.engine.progress import (
    EPOCH_LINES_ENV,
    EpochSummary,
    LogStepRichProgressBar,
    LogStepTQDMProgressBar,
    format_epoch_line,
    step_light_bar,
    wants_epoch_lines,
)

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
LINE = re.compile(r"^epoch (\d+)/(\d+)  step (\d+)  (.*)  time \d+\.\ds$")


def test_line_format() -> None:
    line = format_epoch_line(3, 6, 144, {"train_loss": 0.48213, "val_dice": 0.5213, "val_hd95": 12.345}, 12.41)
    assert line == "epoch 3/6  step 144  train_loss 0.4821  val_dice 0.5213  val_hd95 12.35  time 12.4s"
    assert format_epoch_line(1, -1, 5, {}, 0.04) == "epoch 1  step 5  time 0.0s"
    assert format_epoch_line(2, None, 9, {"train_loss": 1e-5}, 1.0) == "epoch 2  step 9  train_loss 1e-05  time 1.0s"


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_when_lines_are_wanted() -> None:
    assert wants_epoch_lines(io.StringIO(), {}) is True  # a file, a pipe: no terminal
    assert wants_epoch_lines(_Tty(), {}) is False
    assert wants_epoch_lines(_Tty(), {EPOCH_LINES_ENV: "1"}) is True
    assert wants_epoch_lines(io.StringIO(), {EPOCH_LINES_ENV: "0"}) is False


def test_stale_validation_metrics_are_left_out() -> None:
    summary = EpochSummary()
    logged = {"train_loss": torch.tensor(0.5), "val_dice": torch.tensor(0.25), "other": torch.tensor(1.0)}
    assert summary._read_metrics(logged) == {"train_loss": 0.5}
    summary._validated = True
    assert summary._read_metrics(logged) == {"train_loss": 0.5, "val_dice": 0.25}


def _demo_fit(tmp_path: Path, max_epochs: int, *extra: str) -> list[str]:
    """``textseg fit`` of the demo config as a tiny CPU run in ``tmp_path``, with ``extra`` options."""
    return [
        "fit",
        "--config", str(CONFIGS / "demo_semimedref.yaml"),
        "--data.root", str(tmp_path / "synthetic"),
        *tiny_args(max_epochs=max_epochs),
        *extra,
        "--run_dir", str(tmp_path / "run"),
    ]  # fmt: skip


def test_fit_prints_one_line_per_epoch(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(EPOCH_LINES_ENV, raising=False)  # capsys's stdout is not a terminal: the lines are on
    main(_demo_fit(tmp_path, 2, "--trainer.limit_val_batches", "1", "--trainer.num_sanity_val_steps", "1"))
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch ")]
    assert len(lines) == 2, lines
    for epoch, line in enumerate(lines, start=1):
        match = LINE.match(line)
        assert match, line
        assert (int(match[1]), int(match[2]), int(match[3])) == (epoch, 2, 2 * epoch)
        assert re.search(r"\btrain_loss [\d.]+  (.*  )?val_dice [\d.]+", line), line


# ------------------------------------------------------------------------------ the log-step progress bars
def test_default_bars_become_log_step_bars() -> None:
    assert type(step_light_bar(RichProgressBar())) is LogStepRichProgressBar
    assert type(step_light_bar(TQDMProgressBar())) is LogStepTQDMProgressBar
    mine = TQDMProgressBar(refresh_rate=5)

    class MyBar(TQDMProgressBar):
        pass

    other = MyBar()
    assert step_light_bar(other) is other  # only Lightning's own classes are replaced
    assert type(step_light_bar(mine)) is LogStepTQDMProgressBar  # the CLI passes only the default bar


def test_bar_reads_the_loss_at_logging_steps_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """6 steps, logging every 3: the loss is read at steps 0 and 3 and at the epoch's end, nowhere else."""
    reads: list[int] = []
    bar = LogStepTQDMProgressBar()
    original = progress.read_scalars

    def counted(logged: Any, names: Any) -> dict[str, float]:
        reads.append(trainer.global_step)
        return original(logged, names)

    monkeypatch.setattr(progress, "read_scalars", counted)
    trainer = Trainer(
        accelerator="cpu",
        max_epochs=1,
        limit_train_batches=6,
        limit_val_batches=0,
        log_every_n_steps=3,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        callbacks=[bar],
    )
    trainer.fit(_Tiny())
    assert reads == [1, 3, 6], reads  # after step 0 (first display), after the step that logs at 3, the epoch end
    assert "train_loss" in bar.get_metrics(trainer, trainer.lightning_module)


@pytest.mark.parametrize("configured", [False, True])
def test_fit_uses_the_log_step_bar(configured: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Lightning's default bar is replaced; a bar the config names is kept."""
    seen: list[Any] = []
    original = TextSegCLI.instantiate_trainer

    def record(self: TextSegCLI, **kwargs: Any) -> Trainer:
        trainer = original(self, **kwargs)
        seen.append(trainer.progress_bar_callback)
        return trainer

    monkeypatch.setattr(TextSegCLI, "instantiate_trainer", record)
    args = _demo_fit(tmp_path, 1, "--trainer.enable_progress_bar", "true", "--trainer.limit_val_batches", "0")
    if configured:
        args += ["--trainer.callbacks+", "lightning.pytorch.callbacks.TQDMProgressBar"]
    main(args)
    assert len(seen) == 1
    if configured:
        assert type(seen[0]) is TQDMProgressBar
    else:
        assert isinstance(seen[0], LogStepRichProgressBar | LogStepTQDMProgressBar)


class _Tiny(LightningModule):
    """Six random batches through one linear layer, logging ``train_loss``."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        loss = self.layer(batch).square().mean()
        self.log("train_loss", loss)
        return loss

    def train_dataloader(self) -> Any:
        return torch.utils.data.DataLoader(torch.randn(12, 2), batch_size=2)

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.1)
