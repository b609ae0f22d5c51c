"""One line per epoch on stdout (:class:`textseg.engine.progress.EpochSummary`): its format, and a tiny ``fit``."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
import torch
from tinyrun import tiny_args

from textseg.cli.main import main
from textseg.engine.progress import EPOCH_LINES_ENV, EpochSummary, format_epoch_line, wants_epoch_lines

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


def test_fit_prints_one_line_per_epoch(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(EPOCH_LINES_ENV, raising=False)  # capsys's stdout is not a terminal: the lines are on
    args = [
        "fit",
        "--config", str(CONFIGS / "demo_semimedref.yaml"),
        "--data.root", str(tmp_path / "synthetic"),
        *tiny_args(max_epochs=2),
        "--trainer.limit_val_batches", "1",
        "--trainer.num_sanity_val_steps", "1",
        "--run_dir", str(tmp_path / "run"),
    ]  # fmt: skip
    main(args)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch ")]
    assert len(lines) == 2, lines
    for epoch, line in enumerate(lines, start=1):
        match = LINE.match(line)
        assert match, line
        assert (int(match[1]), int(match[2]), int(match[3])) == (epoch, 2, 2 * epoch)
        assert re.search(r"\btrain_loss [\d.]+  (.*  )?val_dice [\d.]+", line), line
