"""Lightning DDP on CPU: two gloo processes launched by ``torchrun``, compared with one-process runs.

One ``torchrun --standalone --nproc_per_node 2`` launch (this file is its worker script, see :func:`main`) runs, for
Semi-MedRef on MMI-UNet (QaTa) and TextMoE (composite QaTa + MosMed), two-epoch ``fit`` runs with
``DDPStrategy(process_group_backend="gloo", find_unused_parameters=True)``, a CSV logger and the run card, and
``validate`` / ``test`` of fixed weights. The test process runs the same with one process and ``WORLD`` times the
per-process batch sizes (the same global batch). Checked, with values:

(a) the EMA teacher (parameters and BatchNorm buffers) and the student are bit-identical on both ranks after ``fit``,
    also when the non-finite guard skips a step that only one rank flagged;
(b) validation / test metrics are synchronised: both ranks report the pooled and per-image Dice/IoU (overall and per
    dataset) and the loss of the one-process run (measured: bit-equal), their rank-local TP/FP/FN sum to its counts,
    and rank 0 writes the same ``test_metrics.json``. Split sizes are multiples of ``WORLD * eval_batch_size`` (4 QaTa
    images; 8 composite ones), so Lightning's ``DistributedSampler`` pads (repeats) nothing;
(c) the labeled (with replacement) and unlabeled training samplers give the ranks disjoint shares of one draw: the
    unlabeled ids of the ranks are disjoint and cover the split every epoch, and at every step the two ranks' batches
    together are exactly the one-process batch (as multisets), even with a rank's share of the labeled images (2)
    smaller than its batch (3), where Lightning's default sampler would give no batch at all;
(d) the weights after ``fit`` match the one-process run: relative distance ``|w2 - w1| / |w1 - w0|`` (``w0`` the
    common initialisation) of student and teacher. With BatchNorm normalising by its running statistics the only
    differences are floating-point reduction orders and pseudo-label thresholds: below ``EXACT`` (measured 1e-4 to
    4e-3). With BatchNorm training it cannot be exact, because each process normalises its half-batch with its own
    batch statistics (SyncBatchNorm needs a GPU): below ``CLOSE`` (measured 0.41-0.58 over the parameters, which
    AdamW moves by about ``lr`` whatever the gradient's size, and 0.04-0.06 over the whole state; a one-process run on
    other batches is at 1.0-1.4 and 0.09-0.13). So that BatchNorm is the only difference, these runs switch off what
    draws random numbers or couples the samples of a batch: augmentation, T-PatchMix, PosAug, ITCL, frequency
    exchange and MMI-UNet's attention dropout.

Also: a rank's samples, augmentations included, are the one-process samples at the rank's positions of the draw.
The file takes about 40 s on two idle
cores (up to 95 s on a busy machine); without the DDP fixes of the package the launch fails after the 60 s collective
timeout instead of hanging.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections import Counter
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import torch.distributed as dist
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.strategies import DDPStrategy
from torch import Tensor, nn

from textseg.data.datamodule import TextSegDataModule
from textseg.engine.guards import NonFiniteGuard
from textseg.engine.runcard import RunCardCallback
from textseg.methods import SemiMedRefModule, TextMoEModule, TextSegModule
from textseg.ops.ema import EMATeacher

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="needs torch.distributed with gloo"
)

#: Processes of the distributed runs.
WORLD = 2
#: Epochs of every ``fit`` (two optimizer steps each).
EPOCHS = 2
#: Steps per epoch (the unlabeled split over the global unlabeled batch).
STEPS = 2
#: Wall-clock limit of the torchrun launch, in seconds.
LAUNCH_TIMEOUT = 400
#: Limit of one collective operation: a rank left waiting fails the launch instead of blocking CI.
COLLECTIVE_TIMEOUT = timedelta(seconds=60)
#: Bounds of the relative distance of the 2-process from the 1-process weights, BatchNorm frozen (see (d)).
EXACT = {"parameters": 0.02, "state": 0.02}
#: The same with BatchNorm training (see (d)).
CLOSE = {"parameters": 0.8, "state": 0.1}
#: Absolute tolerance of synchronised metrics against the 1-process values (measured: bit-equal).
METRIC_TOL = 1e-6
#: Unlabeled images per epoch: QaTa's 12, QaTa + MosMed's 24 (25 % labels of 16 train images each).
UNLABELED = {"semimedref": 12, "textmoe": 24}

#: Data shared by both methods: 25 % labels, 64 px, no random augmentation (see (d)).
DATA: dict[str, Any] = {
    "labeled_ratio": 0.25,
    "image_size": 64,
    "check": "fast",
    "seed": 42,
    "zoom_prob": 0.0,
    "strong_jitter_prob": 0.0,
    "strong_blur_prob": 0.0,
}
#: Per-process batch sizes of the 2-process runs; the 1-process runs use ``WORLD`` times these.
BATCHES: dict[str, dict[str, int]] = {
    "semimedref": {"batch_size": 3, "unlabeled_batch_size": 3, "eval_batch_size": 2},
    "textmoe": {"batch_size": 3, "unlabeled_batch_size": 6, "eval_batch_size": 2},
}
#: Method classes and arguments: unsupervised terms from the first step, nothing batch-coupled or random.
METHODS: dict[str, tuple[type[TextSegModule], dict[str, Any]]] = {
    "semimedref": (
        SemiMedRefModule,
        {
            "backbone": "mmiunet",
            "project_dim": 16,
            "burn_in_epochs": 0,
            "lambda_u_ramp_epochs": 0,
            "contrastive": "none",
            "mix": "none",
            "text_aug": "none",
        },
    ),
    "textmoe": (TextMoEModule, {"exchange_mode": "none"}),
}
NAMES = tuple(METHODS)


# --------------------------------------------------------------------------------------------- shared by both sides
class Recorder(Callback):
    """Record what this process sees: training batch ids, evaluation ids and rank-local pooled counts.

    Args:
        freeze_batchnorm: Put every BatchNorm layer in eval mode before each training step (running statistics).
        nan_on_rank: Make the non-finite guard of this global rank alone see a non-finite loss at the first step.
    """

    def __init__(self, freeze_batchnorm: bool = False, nan_on_rank: int | None = None) -> None:
        self.freeze_batchnorm = freeze_batchnorm
        self.nan_on_rank = nan_on_rank
        self.steps: list[dict[str, Any]] = []
        self.eval_ids: list[str] = []
        self.counts: dict[str, int] = {}

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        if self.freeze_batchnorm:
            for layer in pl_module.modules():
                if isinstance(layer, nn.modules.batchnorm._BatchNorm):
                    layer.eval()
        self.steps.append(
            {"epoch": trainer.current_epoch, "labeled": keys(batch["labeled"]), "unlabeled": keys(batch["unlabeled"])}
        )

    def on_after_backward(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.nan_on_rank is not None and trainer.global_rank == self.nan_on_rank and trainer.global_step == 0:
            # A rank-local detection: this rank's guard sees a non-finite loss, the other rank's does not.
            guard = next(cb for cb in trainer.callbacks if isinstance(cb, NonFiniteGuard))  # type: ignore[attr-defined]
            guard._loss_bad = True

    def on_validation_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        self.eval_ids.extend(keys(batch))

    def on_test_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        self.eval_ids.extend(keys(batch))

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Callbacks run before the module's hook, which computes (synchronises) and resets the metrics.
        self.counts = local_counts(pl_module, "val_metrics")

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.counts = local_counts(pl_module, "test_metrics")


def keys(batch: dict[str, Any]) -> list[str]:
    """``dataset:id`` of every sample of a batch."""
    return [f"{d}:{i}" for d, i in zip(batch["dataset"], batch["id"], strict=True)]


def local_counts(module: LightningModule, attribute: str) -> dict[str, int]:
    """This process's pooled TP / FP / FN of the overall Dice, before synchronisation."""
    dice = getattr(module, attribute).overall["dice"]
    return {name: int(getattr(dice, name).sum()) for name in ("tp", "fp", "fn")}


def build(name: str, **kwargs: Any) -> TextSegModule:
    """The seeded module of a method, with MMI-UNet's attention dropout zeroed (see (d))."""
    cls, defaults = METHODS[name]
    torch.manual_seed(0)
    module = cls(vision_encoder="tiny", text_encoder="tiny", **{**defaults, **kwargs})
    for layer in module.modules():
        if isinstance(layer, nn.Dropout):
            layer.p = 0.0
        elif isinstance(layer, nn.MultiheadAttention):
            layer.dropout = 0.0
    return module


def datamodule(name: str, roots: dict[str, Path], world: int) -> TextSegDataModule:
    """QaTa (Semi-MedRef) or QaTa + MosMed (TextMoE), per-process batches ``WORLD / world`` times ``BATCHES``."""
    batches = {key: value * (WORLD // world) for key, value in BATCHES[name].items()}
    names = ["qata"] if name == "semimedref" else ["qata", "mosmed"]
    return TextSegDataModule(dataset=names, root=[str(roots[n]) for n in names], **DATA, **batches)  # type: ignore[arg-type]


def trainer(world: int, root: Path, run: str, recorder: Recorder, limit_val_batches: float = 0) -> Trainer:
    """A CPU trainer with ``world`` processes (gloo DDP for more than one) logging to ``root/run/world<world>``.

    With the CSV logger and the run card, ``fit`` writes ``split.json`` and ``run_card.json`` and ``test`` writes
    ``test_metrics.json`` (rank 0); each asks for ``trainer.log_dir``, a broadcast under DDP. By default ``fit`` does
    not validate.
    """
    strategy: Any = "auto"
    if world > 1:
        strategy = DDPStrategy(process_group_backend="gloo", find_unused_parameters=True, timeout=COLLECTIVE_TIMEOUT)
    return Trainer(
        accelerator="cpu",
        devices=world,
        strategy=strategy,
        max_epochs=EPOCHS,
        limit_val_batches=limit_val_batches,
        num_sanity_val_steps=0,
        logger=CSVLogger(root, name=run, version=f"world{world}"),
        default_root_dir=root,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[recorder, RunCardCallback()],
    )


def state(module: nn.Module) -> dict[str, Tensor]:
    """A detached copy of a state dict."""
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def fit(name: str, roots: dict[str, Path], world: int, root: Path, variant: str = "plain") -> dict[str, Any]:
    """Fit a method; return the rank, run directory, batches seen, initial / student / teacher weights, skip count.

    ``variant``: ``"plain"``, ``"frozen_bn"`` (BatchNorm on running statistics) or ``"nan_rank1"`` (rank 1 alone
    logs a NaN loss term at the first step; the guard skips steps).
    """
    module = build(name, nonfinite="skip") if variant == "nan_rank1" else build(name)
    teacher = module.teacher
    assert isinstance(teacher, EMATeacher)
    init = state(teacher.module)
    recorder = Recorder(freeze_batchnorm=variant == "frozen_bn", nan_on_rank=1 if variant == "nan_rank1" else None)
    run = trainer(world, root, f"{name}_fit_{variant}", recorder)
    run.fit(module, datamodule=datamodule(name, roots, world))
    guard = next(cb for cb in run.callbacks if isinstance(cb, NonFiniteGuard))  # type: ignore[attr-defined]
    return {
        "rank": run.global_rank,
        "log_dir": run.log_dir,
        "steps": recorder.steps,
        "init": init,
        "student": state(module.net),
        "teacher": state(teacher.module),
        "module": state(module),
        "skipped": guard.skipped,
    }


def evaluate(name: str, roots: dict[str, Path], world: int, root: Path, weights: Path) -> dict[str, Any]:
    """``validate`` and ``test`` the fixed weights in ``weights``; return metrics, ids, local counts and run dir."""
    module = build(name)
    module.load_state_dict(torch.load(weights, weights_only=True))
    result: dict[str, Any] = {}
    for stage in ("validate", "test"):
        recorder = Recorder()
        run = trainer(world, root, f"{name}_{stage}", recorder, limit_val_batches=1.0)
        metrics = getattr(run, stage)(module, datamodule=datamodule(name, roots, world), verbose=False)[0]
        result[stage] = {
            "metrics": dict(metrics),
            "ids": recorder.eval_ids,
            "counts": recorder.counts,
            "log_dir": run.log_dir,
        }
    return result


def compact(record: dict[str, Any], *fields: str) -> dict[str, Any]:
    """The named fields of a fit record."""
    return {field: record[field] for field in fields}


# ------------------------------------------------------------------------------------------------ the worker script
def main(argv: list[str] | None = None) -> None:
    """torchrun worker: for every method, fit (three variants) and validate/test fixed weights; save the records."""
    parser = argparse.ArgumentParser(description="Worker of tests/test_ddp.py (run it with torchrun).")
    parser.add_argument("--qata", type=Path, required=True)
    parser.add_argument("--mosmed", type=Path, required=True)
    parser.add_argument("--weights", type=Path, required=True, help="folder of the fixed weights <method>.pt")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    roots = {"qata": args.qata, "mosmed": args.mosmed}
    records: dict[str, Any] = {}
    for name in NAMES:
        record = fit(name, roots, WORLD, args.out)
        del record["module"]
        record["eval"] = evaluate(name, roots, WORLD, args.out, args.weights / f"{name}.pt")
        record["frozen_bn"] = compact(fit(name, roots, WORLD, args.out, "frozen_bn"), "student", "teacher")
        records[name] = record
    nan = fit("semimedref", roots, WORLD, args.out, "nan_rank1")
    records["nan_rank1"] = compact(nan, "student", "teacher", "init", "skipped")
    torch.save(records, args.out / f"rank{int(os.environ['RANK'])}.pt")


# ---------------------------------------------------------------------------------------------------------- tests
@pytest.fixture(scope="module")
def runs(qata_root: Path, mosmed_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One-process fits and evaluations, and the records of both ranks of one torchrun launch."""
    roots = {"qata": qata_root, "mosmed": mosmed_root}
    work = tmp_path_factory.mktemp("ddp")
    reference: dict[str, Any] = {}
    for name in NAMES:
        reference[name] = fit(name, roots, 1, work)
        torch.save(reference[name].pop("module"), work / f"{name}.pt")
        reference[name]["frozen_bn"] = compact(fit(name, roots, 1, work, "frozen_bn"), "student", "teacher")
    command = [
        *(sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={WORLD}"),
        *(str(Path(__file__).resolve()), "--qata", str(qata_root), "--mosmed", str(mosmed_root)),
        *("--weights", str(work), "--out", str(work)),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT, env=env, check=False)
    assert done.returncode == 0, f"torchrun failed:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    ranks = [torch.load(work / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    for name in NAMES:
        reference[name]["eval"] = evaluate(name, roots, 1, work, work / f"{name}.pt")
    return {"reference": reference, "ranks": ranks}


def relative_distance(a: dict[str, Tensor], b: dict[str, Tensor], origin: dict[str, Tensor]) -> float:
    """``|a - b| / |b - origin|`` over the floating-point entries of ``b`` (the gap relative to the distance moved)."""
    names = [k for k, v in b.items() if v.is_floating_point()]
    gap = torch.cat([(a[k] - b[k]).flatten() for k in names]).norm()
    moved = torch.cat([(b[k] - origin[k]).flatten() for k in names]).norm()
    assert moved > 0
    return float(gap / moved)


def assert_identical(first: dict[str, Tensor], second: dict[str, Tensor], what: str) -> None:
    """Bit-identical state dicts."""
    assert first.keys() == second.keys()
    different = [k for k in first if not torch.equal(first[k], second[k])]
    assert not different, f"{what} differs across ranks: {different[:5]}"


@pytest.mark.parametrize("name", NAMES)
def test_teacher_and_student_identical_on_every_rank(runs: dict[str, Any], name: str) -> None:
    first, second = (r[name] for r in runs["ranks"])
    assert {first["rank"], second["rank"]} == {0, 1}
    for part in ("teacher", "student"):
        assert_identical(first[part], second[part], f"{name} {part}")
    # Not vacuous: the teacher moved, BatchNorm running statistics included.
    moved = [k for k, v in first["teacher"].items() if v.is_floating_point() and not torch.equal(v, first["init"][k])]
    assert any("running_mean" in k for k in moved) and any(k.endswith("weight") for k in moved)


def test_a_step_flagged_on_one_rank_is_skipped_on_every_rank(runs: dict[str, Any]) -> None:
    first, second = (r["nan_rank1"] for r in runs["ranks"])
    assert first["skipped"] == second["skipped"] == 1
    for part in ("teacher", "student"):
        assert_identical(first[part], second[part], f"nan_rank1 {part}")
    # Not vacuous: the other three steps trained.
    assert any(not torch.equal(v, first["init"][k]) for k, v in first["student"].items() if v.is_floating_point())


@pytest.mark.parametrize("name", NAMES)
def test_training_samplers_shard_one_draw(runs: dict[str, Any], name: str) -> None:
    reference = runs["reference"][name]["steps"]
    per_rank = [r[name]["steps"] for r in runs["ranks"]]
    assert len(reference) == EPOCHS * STEPS and all(len(steps) == len(reference) for steps in per_rank)
    unlabeled_epoch: dict[int, list[str]] = {}
    for k, expected in enumerate(reference):
        seen = [steps[k] for steps in per_rank]
        assert all(s["epoch"] == expected["epoch"] for s in seen)
        for stream, size in (("labeled", "batch_size"), ("unlabeled", "unlabeled_batch_size")):
            assert all(len(s[stream]) == BATCHES[name][size] for s in seen)
            together = Counter(i for s in seen for i in s[stream])
            assert together == Counter(expected[stream]), f"step {k}: the ranks' {stream} batches are not 1 process's"
        assert not set(seen[0]["unlabeled"]) & set(seen[1]["unlabeled"])
        unlabeled_epoch.setdefault(expected["epoch"], []).extend(i for s in seen for i in s["unlabeled"])
    for ids in unlabeled_epoch.values():  # an epoch is one pass over the unlabeled set, each image once
        assert len(ids) == len(set(ids)) == UNLABELED[name]
    assert unlabeled_epoch[0] != unlabeled_epoch[1]  # a new order every epoch
    labeled = [i for steps in per_rank for s in steps for i in s["labeled"]]
    assert len(labeled) > len(set(labeled))  # drawn with replacement (4 or 8 labeled images, 24 draws)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("stage", ["validate", "test"])
def test_eval_metrics_synchronised(runs: dict[str, Any], name: str, stage: str) -> None:
    expected = runs["reference"][name]["eval"][stage]
    seen = [r[name]["eval"][stage] for r in runs["ranks"]]
    # Every image evaluated exactly once across the ranks: no padding by the DistributedSampler.
    assert not set(seen[0]["ids"]) & set(seen[1]["ids"])
    assert Counter(seen[0]["ids"] + seen[1]["ids"]) == Counter(expected["ids"])
    for key in ("tp", "fp", "fn"):
        assert sum(s["counts"][key] for s in seen) == expected["counts"][key]
    prefix = "val_" if stage == "validate" else "test_"
    names = [f"{prefix}{m}" for m in ("dice", "iou", "dice_per_image", "iou_per_image")]
    if name == "textmoe":
        names += [f"{n}_{d}" for n in names for d in ("qata", "mosmed")]
    for s in seen:
        for metric in [*names, f"{prefix}loss"]:
            assert s["metrics"][metric] == pytest.approx(expected["metrics"][metric], abs=METRIC_TOL), metric
    # Not vacuous: the ranks' own pooled Dice values differ, so an unsynchronised value would fail above.
    local = [2 * c["tp"] / max(1, 2 * c["tp"] + c["fp"] + c["fn"]) for c in (s["counts"] for s in seen)]
    assert local[0] != local[1]
    assert 0.0 < expected["metrics"][f"{prefix}dice"] < 1.0


@pytest.mark.parametrize("name", NAMES)
def test_rank_zero_writes_the_run_files(runs: dict[str, Any], name: str) -> None:
    first, second = (r[name] for r in runs["ranks"])
    reference = runs["reference"][name]
    assert first["log_dir"] == second["log_dir"]
    fit_dir, reference_dir = Path(first["log_dir"]), Path(reference["log_dir"])
    split = json.loads((fit_dir / "split.json").read_text())
    assert split == json.loads((reference_dir / "split.json").read_text())
    card = json.loads((fit_dir / "run_card.json").read_text())
    assert card["trainer"]["world_size"] == WORLD and card["split"]["file"] == "split.json"
    record = json.loads((Path(first["eval"]["test"]["log_dir"]) / "test_metrics.json").read_text())
    expected = reference["eval"]["test"]["metrics"]
    assert record["metrics"].keys() == {k for k in expected if k != "test_loss"}
    for key, value in record["metrics"].items():
        assert value == pytest.approx(expected[key], abs=METRIC_TOL), key


@pytest.mark.parametrize("name", NAMES)
def test_two_processes_match_one_process_with_the_same_global_batch(runs: dict[str, Any], name: str) -> None:
    one, two = runs["reference"][name], runs["ranks"][0][name]
    for key, value in one["init"].items():  # the same seeded start
        assert torch.equal(value, two["init"][key])
    params = set(dict(build(name).net.named_parameters()))
    for variant, bounds in (("frozen_bn", EXACT), ("trained_bn", CLOSE)):
        a, b = (two, one) if variant == "trained_bn" else (two[variant], one[variant])
        for part in ("student", "teacher"):
            for scope in ("parameters", "state"):
                names = [k for k in b[part] if scope == "state" or k in params]
                distance = relative_distance(*({k: d[k] for k in names} for d in (a[part], b[part], one["init"])))
                assert distance < bounds[scope], f"{name} {variant} {part} {scope}: {distance:.3g}"


def test_rank_samples_are_the_one_process_samples_at_its_positions(qata_root: Path) -> None:
    """Augmentations follow the position in the epoch's draw: rank r's j-th sample (weak and strong view) is exactly
    the one-process sample at position ``r + j * WORLD``; different positions get different augmentations."""

    def samples(world: int, rank: int) -> list[dict[str, Any]]:
        dm = TextSegDataModule(
            dataset="qata", root=str(qata_root), labeled_ratio=0.25, image_size=64, check="fast", strong_jitter_prob=1.0
        )
        dm.trainer = SimpleNamespace(world_size=world, global_rank=rank, is_global_zero=rank == 0, logger=None)  # type: ignore[assignment]
        dm.setup("fit")
        loader = dm.train_dataloader().iterables["unlabeled"]
        return [loader.dataset[key] for key in loader.sampler]

    one = samples(1, 0)
    for rank in range(WORLD):
        share = samples(WORLD, rank)
        assert len(share) == len(one) // WORLD
        for j, sample in enumerate(share):
            ref = one[rank + j * WORLD]
            assert sample["id"] == ref["id"]
            assert torch.equal(sample["image"], ref["image"]) and torch.equal(
                sample["image_strong"], ref["image_strong"]
            )
    assert not torch.allclose(one[0]["image_strong"], one[1]["image_strong"], atol=1e-3)


if __name__ == "__main__":
    main()
