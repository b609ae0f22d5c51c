"""A normal run's log, redirected to a file as a SLURM job's is: epoch lines, no known-harmless third-party noise."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tinyrun import tiny_args

REPO = Path(__file__).resolve().parents[2]
#: Messages a textseg run must not print (``textseg.engine.quiet`` and the W&B logger drop them).
NOISE = ("LeafSpec", "module(s) in eval mode", "Modules in eval mode", "Total FLOPs", "litlogger", "anonymous")


def test_a_redirected_run_is_quiet_and_prints_epoch_lines(tmp_path: Path) -> None:
    log = tmp_path / "job.log"
    command = [
        sys.executable, "-m", "textseg", "fit",
        "--config", str(REPO / "configs" / "demo_semimedref.yaml"),
        "--config", str(REPO / "configs" / "logger" / "wandb.yaml"),
        "--data.root", str(tmp_path / "synthetic"),
        *tiny_args(max_epochs=2),
        "--trainer.enable_model_summary", "true",
        "--run_dir", str(tmp_path / "run"),
    ]  # fmt: skip
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "default"}
    env.pop("TEXTSEG_EPOCH_LINES", None)
    with log.open("w") as handle:
        done = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=tmp_path, check=False)
    text = log.read_text()
    assert done.returncode == 0, text[-3000:]
    assert [line[:9] for line in text.splitlines() if line.startswith("epoch ")] == ["epoch 1/2", "epoch 2/2"]
    assert "Trainable params" in text and "MMIUNetCore" in text  # the summary is there, without its noise
    assert [n for n in NOISE if n in text] == [], text
