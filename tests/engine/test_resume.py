"""Resume equals uninterrupted: a run stopped at any point and resumed from its last checkpoint ends bit-identical.

Each run is a real ``python -m textseg fit`` subprocess (tiny networks, synthetic data, ``--trainer.deterministic``),
checkpointing every 3 optimizer steps (``last.ckpt``) into ``--run_dir``. Interrupted runs get
``tests/interrupt.py``'s ``SignalAtStep`` callback:

* **SIGKILL** after 7 optimizer steps (epoch 1 of 4-step epochs, after the unlabeled branch has started): nothing runs
  after it; the run is resumed with ``--ckpt_path last`` from the step-6 checkpoint, mid-epoch;
* **SIGTERM** (SLURM pre-emption) after 5 steps: :class:`~textseg.engine.checkpointing.ResumeState` saves
  ``last.ckpt`` after the batch in flight (step 6) and the process exits with code 143; it is resumed the same way;
* **SIGTERM at the epoch boundary**: before the last training batch of epoch 0; ``last.ckpt`` is saved after it
  (step 4), before the epoch's validation, and marked "validation pending": the resumed run validates epoch 0 first;
* **SIGTERM during validation** (epoch 1's): saved at step 8 with the validation pending, re-run on resume;
* **SIGTERM during a checkpoint save** (``best.ckpt`` at the end of epoch 0, after its validation): the save
  finishes, Lightning stops after the epoch, and ``last.ckpt`` is saved there (exit 143, not 0).

Compared with the uninterrupted run: every tensor of the final checkpoint (student, EMA teacher, buffers; and the
optimizer state) is bit-identical, and so are the validation metrics of every epoch (``metrics.csv`` is continued by
the resumed run) and the test metrics. This needs the checkpoint to hold the
teacher, the schedules' step/epoch, the optimizer and scheduler, the global RNG states (MMI-UNet's attention dropout)
and the position in the epoch (the training loaders' state), and the data order and augmentations to be functions of
the seed and the position only.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
STEPS_PER_EPOCH = 4
EPOCHS = 3


def fit_args(data: Path, run_dir: Path, *extra: str) -> list[str]:
    """A tiny Semi-MedRef (MMI-UNet) demo run: 6 labeled + 18 unlabeled images, 4 steps per epoch, 3 epochs."""
    return [
        "fit",
        "--config", str(ROOT / "configs" / "demo_semimedref.yaml"),
        "--data.root", str(data),
        "--data.dataset_options", "{synthetic: {n_train: 24, n_val: 8, n_test: 8, image_size: 64}}",
        "--data.image_size", "64",
        "--data.batch_size", "4",
        "--data.eval_batch_size", "8",
        "--model.init_args.text_encoder", "tiny",
        "--model.init_args.burn_in_epochs", "1",
        "--model.init_args.lambda_u_ramp_epochs", "1",
        "--model.init_args.ema_ramp_epochs", "2",
        "--trainer.max_epochs", str(EPOCHS),
        "--trainer.deterministic", "true",
        "--trainer.enable_progress_bar", "false",
        "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
        "--trainer.callbacks.every_n_train_steps", "3",
        "--trainer.callbacks.save_last", "true",
        "--run_dir", str(run_dir),
        *extra,
    ]  # fmt: skip


def run(args: list[str], expect: int = 0) -> subprocess.CompletedProcess[str]:
    """Run ``python -m textseg`` with ``tests/`` importable; assert its exit code."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), str(ROOT)])}
    proc = subprocess.run(
        [sys.executable, "-m", "textseg", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == expect, f"exit {proc.returncode}, expected {expect}:\n{proc.stderr[-3000:]}"
    return proc


def stop(data: Path, run_dir: Path, signal_name: str, step: int, code: int, *where: str) -> dict[str, Any]:
    """Run with ``SignalAtStep`` (``where``: its other arguments) until it exits ``code``; return ``last.ckpt``."""
    marker = run_dir.parent / f"{run_dir.name}.signalled"
    signal_args = [
        "--trainer.callbacks+=interrupt.SignalAtStep",
        "--trainer.callbacks.step", str(step),
        "--trainer.callbacks.marker", str(marker),
        "--trainer.callbacks.signal_name", signal_name,
        *where,
    ]  # fmt: skip
    run(fit_args(data, run_dir, *signal_args), expect=code)
    assert marker.exists()
    last: dict[str, Any] = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert 0 < last["global_step"] < EPOCHS * STEPS_PER_EPOCH
    return last


def resume(data: Path, run_dir: Path) -> None:
    """Resume ``run_dir`` from ``last`` to the end, then test its best checkpoint."""
    run(fit_args(data, run_dir, "--ckpt_path", "last", "--test_after_fit", "true"))


def interrupted(data: Path, run_dir: Path, signal_name: str, step: int, code: int) -> int:
    """Interrupt mid-epoch (:func:`stop`), then resume to the end; return the resumed step."""
    last = stop(data, run_dir, signal_name, step, code)
    assert last["global_step"] % STEPS_PER_EPOCH != 0, "the interruption must be mid-epoch"
    resume(data, run_dir)
    return int(last["global_step"])


def val_rows(run_dir: Path) -> dict[int, float]:
    """``epoch -> val_dice`` from the run's ``metrics.csv``."""
    with (run_dir / "metrics.csv").open() as f:
        return {int(r["epoch"]): float(r["val_dice"]) for r in csv.DictReader(f) if r.get("val_dice")}


def csv_rows(run_dir: Path) -> list[dict[str, str]]:
    """Every row of ``metrics.csv`` (train and validation), empty cells dropped, in step order."""
    with (run_dir / "metrics.csv").open() as f:
        rows = [{k: v for k, v in r.items() if v} for r in csv.DictReader(f)]
    return sorted(rows, key=lambda r: (int(r["step"]), sorted(r)))


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder of this module's runs (the synthetic data in ``synthetic/``)."""
    return tmp_path_factory.mktemp("resume")


@pytest.fixture(scope="module")
def uninterrupted(base: Path) -> Path:
    """The uninterrupted run (tested after fit)."""
    run(fit_args(base / "synthetic", base / "uninterrupted", "--test_after_fit", "true"))
    return base / "uninterrupted"


@pytest.fixture(scope="module")
def runs(base: Path, uninterrupted: Path) -> dict[str, Any]:
    """The uninterrupted run and the SIGKILL- and SIGTERM-interrupted ones, all resumed to the end."""
    data = base / "synthetic"
    dirs: dict[str, Any] = {name: base / name for name in ("sigkill", "sigterm")}
    dirs["uninterrupted"] = uninterrupted
    dirs["resumed_at"] = {
        "sigkill": interrupted(data, dirs["sigkill"], "SIGKILL", step=7, code=-9),
        "sigterm": interrupted(data, dirs["sigterm"], "SIGTERM", step=5, code=143),
    }
    return dirs


def final_state(run_dir: Path) -> dict[str, Any]:
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == EPOCHS * STEPS_PER_EPOCH
    return ckpt


@pytest.mark.parametrize("name", ["sigkill", "sigterm"])
def test_resumed_weights_are_bit_identical(runs: dict[str, Any], name: str) -> None:
    ref, got = final_state(runs["uninterrupted"]), final_state(runs[name])
    assert ref["state_dict"].keys() == got["state_dict"].keys()
    assert any(k.startswith("teacher.") for k in ref["state_dict"])
    different = [k for k, v in ref["state_dict"].items() if not torch.equal(v, got["state_dict"][k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"
    ref_opt, got_opt = ref["optimizer_states"][0]["state"], got["optimizer_states"][0]["state"]
    assert all(torch.equal(ref_opt[i]["exp_avg"], got_opt[i]["exp_avg"]) for i in ref_opt)
    assert ref["lr_schedulers"] == got["lr_schedulers"]


@pytest.mark.parametrize("name", ["sigkill", "sigterm"])
def test_resumed_metrics_are_identical(runs: dict[str, Any], name: str) -> None:
    ref = json.loads((runs["uninterrupted"] / "test_metrics.json").read_text())["metrics"]
    got = json.loads((runs[name] / "test_metrics.json").read_text())["metrics"]
    assert ref == got and "test_dice" in ref
    # metrics.csv is continued, not restarted, by the resumed run (textseg.engine.loggers.CSVLogger): every epoch is
    # there
    ref_val, got_val = val_rows(runs["uninterrupted"]), val_rows(runs[name])
    assert sorted(ref_val) == list(range(EPOCHS)) and ref_val == got_val
    assert csv_rows(runs["uninterrupted"]) == csv_rows(runs[name])


def test_resumed_from_the_expected_step(runs: dict[str, Any]) -> None:
    """SIGKILL after step 7 loses step 7 (last checkpoint: step 6); SIGTERM before step 6's batch saves after it."""
    assert runs["resumed_at"] == {"sigkill": 6, "sigterm": 6}


#: SIGTERM at the points Lightning alone resumed wrongly: name -> (step, SignalAtStep arguments, saved step, pending).
STOPS: dict[str, tuple[int, list[str], int, bool]] = {
    # before the last batch of epoch 0: saved after it, before the epoch's validation
    "epoch_end": (STEPS_PER_EPOCH - 1, [], STEPS_PER_EPOCH, True),
    # during epoch 1's validation (its only batch)
    "validation": (2 * STEPS_PER_EPOCH, ["--trainer.callbacks.when", "validation_batch_start"], 8, True),
    # while the best checkpoint of epoch 0 is written (after its validation)
    "saving": (STEPS_PER_EPOCH, ["--trainer.callbacks.when", "save_checkpoint"], STEPS_PER_EPOCH, False),
}


@pytest.fixture(scope="module", params=list(STOPS))
def stopped(request: pytest.FixtureRequest, base: Path) -> tuple[str, Path, dict[str, Any]]:
    """A run stopped by SIGTERM at one of :data:`STOPS` (exit 143), resumed to the end; its ``last.ckpt`` then."""
    name = request.param
    step, where, _, _ = STOPS[name]
    run_dir = base / f"stop_{name}"
    last = stop(base / "synthetic", run_dir, "SIGTERM", step, 143, *where)
    resume(base / "synthetic", run_dir)
    return name, run_dir, last


def test_stop_saves_where_expected(stopped: tuple[str, Path, dict[str, Any]]) -> None:
    """The pre-emption checkpoint is of the batch in flight and says whether the epoch's validation is pending."""
    name, _, last = stopped
    _, _, saved_step, pending = STOPS[name]
    assert last["global_step"] == saved_step
    assert last["textseg_resume"] == {"validation_pending": pending}


def test_stop_anywhere_resumes_exactly(uninterrupted: Path, stopped: tuple[str, Path, dict[str, Any]]) -> None:
    """Same validation rows (every epoch, same values), same train rows, same final weights, same test metrics."""
    _, run_dir, _ = stopped
    ref_val, got_val = val_rows(uninterrupted), val_rows(run_dir)
    assert sorted(ref_val) == list(range(EPOCHS)) and got_val == ref_val
    assert csv_rows(run_dir) == csv_rows(uninterrupted)
    ref, got = final_state(uninterrupted), final_state(run_dir)
    different = [k for k, v in ref["state_dict"].items() if not torch.equal(v, got["state_dict"][k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"
    ref_test = json.loads((uninterrupted / "test_metrics.json").read_text())["metrics"]
    assert json.loads((run_dir / "test_metrics.json").read_text())["metrics"] == ref_test
