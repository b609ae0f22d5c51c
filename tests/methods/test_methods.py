"""Tests of the training methods (:mod:`textseg.methods`): fit/test through Lightning, the EMA teacher,
burn-in and lambda_u, Eq. 5, the text path, every ablation switch and the per-step random streams."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import CSVLogger
from torch import Tensor

from textseg.data.datamodule import TextSegDataModule
from textseg.methods import SemiMedRefModule, SupervisedModule, TextSegModule
from textseg.ops.ema import EMATeacher

SMALL: dict[str, Any] = {"vision_encoder": "tiny", "text_encoder": "tiny", "project_dim": 16}
#: Unsupervised branch on from the first step at full weight (lambda_u = 0.3).
NO_BURN_IN: dict[str, Any] = {"burn_in_epochs": 0, "lambda_u_ramp_epochs": 0}
METRIC_KEYS = {"test_dice", "test_iou", "test_dice_per_image", "test_iou_per_image", "test_hd95"}
#: Largest HD95 at make_dm's 64x64 input: the image diagonal (docs/data.md §10.4); the other metrics lie in [0, 1].
HD95_MAX = math.hypot(64, 64)
UNSUP_LOGS = {
    "train_loss_unsup",
    "train_loss_itcl_unsup",
    "train_confident_ratio",
    "train_mix_accept_ratio",
    "train_ema_momentum",
}
CONFIGS = Path(__file__).resolve().parents[2] / "configs"
#: SemiMedRefModule switches that select code paths (the ablation axes of Tables 2 and 3).
SWITCHES = (
    "use_teacher",
    "image_strong",
    "text_aug",
    "mix",
    "mix_mode",
    "contrastive",
    "spc",
    "pseudo_label",
    "gate_before_paste",
    "span_mix",
    "lambda_itcl_sup",
    "lambda_itcl_unsup",
)
CAPTION = "Bilateral pulmonary infection, two infected areas, lower left lung and middle right lung."
OTHER_CAPTION = "Unilateral pulmonary infection, one infected area, upper right lung."


def make_dm(root: Path, **kwargs: Any) -> TextSegDataModule:
    args: dict[str, Any] = {
        "dataset": "qata",
        "root": str(root),
        "labeled_ratio": 0.25,
        "image_size": 64,
        "batch_size": 2,
        "eval_batch_size": 4,
        "seed": 42,
    }
    args.update(kwargs)
    return TextSegDataModule(**args)


def make_trainer(tmp_path: Path, **kwargs: Any) -> Trainer:
    args: dict[str, Any] = {
        "accelerator": "cpu",
        "devices": 1,
        "max_epochs": 1,
        "limit_train_batches": 2,
        "limit_val_batches": 1,
        "num_sanity_val_steps": 0,
        "log_every_n_steps": 1,
        "logger": CSVLogger(tmp_path),
        "default_root_dir": tmp_path,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
    }
    args.update(kwargs)
    return Trainer(**args)


def semi(**kwargs: Any) -> SemiMedRefModule:
    torch.manual_seed(0)
    return SemiMedRefModule(**{**SMALL, **kwargs})


def train_rows(trainer: Trainer) -> pd.DataFrame:
    """Per-step training rows of the CSVLogger's ``metrics.csv``."""
    assert trainer.log_dir is not None
    frame = pd.read_csv(Path(trainer.log_dir) / "metrics.csv")
    return frame[frame["train_loss"].notna()].reset_index(drop=True)


def capture_logs(module: LightningModule, monkeypatch: pytest.MonkeyPatch) -> dict[str, float]:
    """Record what ``training_step`` logs when it is called without a Trainer."""
    logged: dict[str, float] = {}

    def log(name: str, value: Any, *args: Any, **kwargs: Any) -> None:
        logged[name] = float(value)

    monkeypatch.setattr(module, "log", log)
    return logged


def unlabeled_terms(
    module: SemiMedRefModule, batch: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> dict[str, float]:
    """The unlabeled loss terms and statistics that one ``training_step`` logs."""
    logged = capture_logs(module, monkeypatch)
    module.training_step(batch, 0)
    keys = ("train_loss_unsup", "train_loss_itcl_unsup", "train_confident_ratio", "train_mix_accept_ratio")
    return {k: logged[k] for k in keys if k in logged}


def float_state(net: torch.nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in net.state_dict().items() if v.is_floating_point()}


def max_diff(a: dict[str, Tensor], b: dict[str, Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.fixture(scope="module")
def batch4(qata_root: Path) -> dict[str, dict[str, Any]]:
    """One training batch of 4 labeled + 4 unlabeled samples (zoom off, strong view on)."""
    dm = make_dm(qata_root, batch_size=4, zoom_prob=0.0)
    dm.setup("fit")
    batch, _, _ = next(iter(dm.train_dataloader()))
    return batch


# ------------------------------------------------------------------------------------------ fit / test
@pytest.mark.parametrize("method", ["supervised", "semimedref"])
def test_fit_and_test_write_test_metrics_json(qata_root: Path, tmp_path: Path, method: str) -> None:
    torch.manual_seed(0)
    module: TextSegModule
    if method == "supervised":
        module = SupervisedModule(backbone="guidedecoder", **SMALL)
        dm = make_dm(qata_root, labeled_ratio=0.5, use_unlabeled=False)
    else:
        module = SemiMedRefModule(backbone="mmiunet", **SMALL, **NO_BURN_IN)
        dm = make_dm(qata_root)
    trainer = make_trainer(tmp_path)
    trainer.fit(module, datamodule=dm)
    assert {"val_dice", "val_iou", "val_dice_per_image", "val_iou_per_image", "val_hd95", "val_loss"} <= set(
        trainer.callback_metrics
    )
    results = trainer.test(module, datamodule=dm, verbose=False)
    assert trainer.log_dir is not None
    log_dir = Path(trainer.log_dir)
    record = json.loads((log_dir / "test_metrics.json").read_text())
    assert record["method"] == type(module).__name__
    assert record["hparams"]["backbone"] == module.hparams["backbone"]
    metrics = record["metrics"]
    assert set(metrics) == METRIC_KEYS
    for key in METRIC_KEYS:
        assert 0.0 <= metrics[key] <= (HD95_MAX if key == "test_hd95" else 1.0)
        assert metrics[key] == pytest.approx(results[0][key], rel=1e-6)
    assert (log_dir / "split.json").is_file()
    rows = train_rows(trainer)
    assert len(rows) == 2 and rows["train_loss"].map(math.isfinite).all()
    if method == "semimedref":
        assert UNSUP_LOGS <= set(rows.columns)


# ------------------------------------------------------------------------------------------ EMA teacher
class _TeacherWatch(Callback):
    """Records the train/eval state of student and teacher at every training batch."""

    def __init__(self) -> None:
        self.teacher_training: list[bool] = []
        self.student_training: list[bool] = []

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        assert isinstance(pl_module, SemiMedRefModule) and pl_module.teacher is not None
        self.teacher_training.append(any(m.training for m in pl_module.teacher.modules()))
        self.student_training.append(pl_module.net.training)


def test_teacher_updated_once_per_optimizer_step(
    qata_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[float] = []
    original = EMATeacher.update

    def counting_update(self: EMATeacher, student: torch.nn.Module, momentum: float) -> None:
        assert student is module.net  # the student, after its optimizer step
        before = float_state(self.module)
        original(self, student, momentum)
        after, current = float_state(self.module), float_state(student)
        for key in before:  # theta_T <- m theta_T + (1 - m) theta_S
            torch.testing.assert_close(after[key], momentum * before[key] + (1 - momentum) * current[key])
        calls.append(momentum)

    monkeypatch.setattr(EMATeacher, "update", counting_update)
    module = semi(backbone="guidedecoder", **NO_BURN_IN)
    assert module.teacher is not None
    initial = float_state(module.teacher.module)
    watch = _TeacherWatch()
    trainer = make_trainer(
        tmp_path, limit_train_batches=4, accumulate_grad_batches=2, limit_val_batches=0, callbacks=[watch]
    )
    trainer.fit(module, datamodule=make_dm(qata_root))

    assert calls == [pytest.approx(0.99), pytest.approx(0.99)]  # 4 batches / accumulation 2; ema_start
    assert trainer.global_step == 2
    assert watch.teacher_training == [False] * 4
    assert watch.student_training == [True] * 4
    # The teacher is not optimised and never receives gradients.
    optimizer = trainer.optimizers[0]
    optimised = {id(p) for group in optimizer.param_groups for p in group["params"]}
    teacher_params = list(module.teacher.parameters())
    assert teacher_params and not optimised & {id(p) for p in teacher_params}
    assert optimised == {id(p) for p in module.net.parameters() if p.requires_grad}
    assert all(p.grad is None and not p.requires_grad for p in teacher_params)
    # It moved away from its initial copy, and it is not the student.
    final = float_state(module.teacher.module)
    assert max_diff(final, initial) > 0
    assert max_diff(final, float_state(module.net)) > 0


def test_teacher_frozen_with_momentum_one(qata_root: Path, tmp_path: Path) -> None:
    module = semi(backbone="guidedecoder", ema_start=1.0, ema_end=1.0, **NO_BURN_IN)
    assert module.teacher is not None
    initial_teacher = float_state(module.teacher.module)
    initial_student = float_state(module.net)
    trainer = make_trainer(tmp_path, limit_val_batches=0)
    trainer.fit(module, datamodule=make_dm(qata_root))
    assert max_diff(float_state(module.teacher.module), initial_teacher) == 0.0
    assert max_diff(float_state(module.net), initial_student) > 0  # the student did train
    assert "train_ema_momentum" in trainer.callback_metrics
    assert float(trainer.callback_metrics["train_ema_momentum"]) == 1.0


# ------------------------------------------------------------------------------------ burn-in, Eq. 5
def test_burn_in_epoch_has_no_unsupervised_terms(
    qata_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    original = SemiMedRefModule._unlabeled_view

    def spy(self: SemiMedRefModule, unl: dict[str, Any]) -> Any:
        calls.append(self.current_epoch)
        return original(self, unl)

    monkeypatch.setattr(SemiMedRefModule, "_unlabeled_view", spy)
    module = semi(backbone="guidedecoder", burn_in_epochs=1, lambda_u_ramp_epochs=0, lambda_u=0.3)
    trainer = make_trainer(tmp_path, max_epochs=2, limit_val_batches=0)
    trainer.fit(module, datamodule=make_dm(qata_root))
    rows = train_rows(trainer)
    burn, after = rows[rows["epoch"] == 0], rows[rows["epoch"] == 1]
    assert len(burn) == 2 and len(after) == 2
    assert (burn["train_lambda_u"] == 0).all()
    assert burn["train_loss_unsup"].isna().all()
    assert burn["train_mix_accept_ratio"].isna().all()
    assert np.allclose(after["train_lambda_u"], 0.3)
    assert after["train_loss_unsup"].notna().all()
    assert calls == [1, 1]  # the teacher branch never ran during burn-in
    # Through burn-in the loss is the supervised part only: DiceCE + 0.02 ITCL.
    sup = burn["train_loss_sup"] + 0.02 * burn["train_loss_itcl_sup"]
    assert burn["train_loss"].to_numpy() == pytest.approx(sup.to_numpy(), rel=1e-5)


def test_unsupervised_terms_logged_without_burn_in(qata_root: Path, tmp_path: Path) -> None:
    module = semi(backbone="guidedecoder", **NO_BURN_IN, lambda_u=0.3, mix_prob=1.0)
    trainer = make_trainer(tmp_path, limit_val_batches=0)
    trainer.fit(module, datamodule=make_dm(qata_root))
    assert UNSUP_LOGS <= set(trainer.callback_metrics)
    rows = train_rows(trainer)
    assert len(rows) == 2
    for key in UNSUP_LOGS | {"train_loss_sup", "train_loss_itcl_sup", "train_lambda_u"}:
        assert rows[key].notna().all(), key
    assert np.allclose(rows["train_lambda_u"], 0.3)
    assert np.allclose(rows["train_ema_momentum"], 0.99)
    for key in ("train_confident_ratio", "train_mix_accept_ratio"):
        assert rows[key].between(0, 1).all()
    # Eq. 5: L = L_sup + 0.02 L_itcl^l + lambda_u (L_unsup + 0.1 L_itcl^u).
    total = (
        rows["train_loss_sup"]
        + 0.02 * rows["train_loss_itcl_sup"]
        + 0.3 * (rows["train_loss_unsup"] + 0.1 * rows["train_loss_itcl_unsup"])
    )
    assert rows["train_loss"].to_numpy() == pytest.approx(total.to_numpy(), rel=1e-5)


def test_fit_with_logger_accepts_different_data_and_model_seeds(qata_root: Path, tmp_path: Path) -> None:
    module = semi(backbone="guidedecoder", aug_seed=1)
    trainer = make_trainer(tmp_path, limit_train_batches=1, limit_val_batches=0)
    trainer.fit(module, datamodule=make_dm(qata_root, seed=0))
    assert trainer.global_step == 1


# ------------------------------------------------------------------------------------------ text path
@pytest.mark.parametrize("backbone", ["guidedecoder", "mmiunet"])
def test_text_changes_the_output(backbone: str) -> None:
    module = semi(backbone=backbone)
    module.eval()
    image = torch.randn(1, 1, 64, 64, generator=torch.Generator().manual_seed(3)).expand(2, -1, -1, -1)
    with torch.no_grad():
        out = module(image, [CAPTION, OTHER_CAPTION])
        again = module(image, [CAPTION, CAPTION])
    logits = out["logits"]
    assert logits.shape == (2, 1, 64, 64)
    torch.testing.assert_close(again["logits"][0], again["logits"][1])  # same text -> same output
    torch.testing.assert_close(again["logits"][0], logits[0])
    assert float((logits[0] - logits[1]).abs().max()) > 1e-5
    assert float((out["text_embed"][0] - out["text_embed"][1]).abs().max()) > 1e-3


# ---------------------------------------------------------------------------------- ablation switches
ABLATIONS: list[dict[str, Any]] = [
    {},
    {"mix_mode": "prob"},
    {"mix_mode": "random"},
    {"mix": "cutmix"},
    {"mix": "none"},
    {"text_aug": "textstrong"},
    {"text_aug": "none"},
    {"contrastive": "clip"},
    {"contrastive": "none"},
    {"spc": True},
    {"pseudo_label": "soft"},
    {"pseudo_label": "soft", "mix": "none"},
    {"gate_before_paste": False},
    {"span_mix": False},
    {"image_strong": False},
    {"use_teacher": False},
]


def _config_switches() -> list[Any]:
    """Distinct switch combinations of the shipped Semi-MedRef configs (one param per combination)."""
    seen: dict[tuple[tuple[str, Any], ...], str] = {}
    for path in sorted(CONFIGS.rglob("*.yaml")):
        model = (yaml.safe_load(path.read_text()) or {}).get("model", {})
        if not str(model.get("class_path", "")).endswith("SemiMedRefModule"):
            continue
        args = model.get("init_args", {})
        combo = tuple((k, args[k]) for k in SWITCHES if k in args)
        seen.setdefault(combo, path.stem)
    return [pytest.param(dict(combo), id=name) for combo, name in seen.items()]


def run_one_step(
    switches: dict[str, Any], batch: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> tuple[SemiMedRefModule, Tensor, dict[str, float]]:
    module = semi(backbone="guidedecoder", **NO_BURN_IN, mix_prob=1.0, **switches)
    module.train()
    logged = capture_logs(module, monkeypatch)
    loss = module.training_step(batch, 0)
    loss.backward()
    return module, loss, logged


def check_step(module: SemiMedRefModule, loss: Tensor, logged: dict[str, float]) -> None:
    hp = module.hp
    assert loss.dim() == 0 and loss.requires_grad and math.isfinite(float(loss))
    grads = {n: p.grad for n, p in module.net.named_parameters() if p.requires_grad}
    assert all(bool(torch.isfinite(g).all()) for g in grads.values() if g is not None)
    assert sum(float(g.abs().sum()) for g in grads.values() if g is not None) > 0
    # Only the ITCL path (projection heads, GuideDecoder's pooled-feature LayerNorm) may be without a
    # gradient, and only when no contrastive term is on.
    no_grad = {n for n, g in grads.items() if g is None}
    itcl_only = ("image_proj.", "text_proj.", "vision.layernorm.")
    assert all(n.startswith(itcl_only) for n in no_grad) and (not no_grad or hp.contrastive == "none"), no_grad
    assert module.text_encoder.parameters() and all(p.grad is None for p in module.text_encoder.parameters())
    assert logged["train_loss"] == pytest.approx(float(loss), rel=1e-6)
    itcl_sup = hp.contrastive != "none" and hp.lambda_itcl_sup > 0
    itcl_unsup = hp.contrastive != "none" and hp.lambda_itcl_unsup > 0
    assert ("train_loss_itcl_sup" in logged) == itcl_sup
    assert ("train_loss_unsup" in logged) == hp.use_teacher
    assert ("train_loss_itcl_unsup" in logged) == (hp.use_teacher and itcl_unsup)
    assert ("train_mix_accept_ratio" in logged) == (hp.use_teacher and hp.mix != "none")
    if hp.use_teacher:
        assert module.teacher is not None and all(p.grad is None for p in module.teacher.parameters())
        assert 0.0 <= logged["train_confident_ratio"] <= 1.0
    else:
        assert module.teacher is None
    expected = logged["train_loss_sup"]
    expected += hp.lambda_itcl_sup * logged.get("train_loss_itcl_sup", 0.0)
    unsup = logged.get("train_loss_unsup", 0.0) + hp.lambda_itcl_unsup * logged.get("train_loss_itcl_unsup", 0.0)
    expected += logged["train_lambda_u"] * unsup
    assert float(loss) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("switches", ABLATIONS, ids=lambda s: "-".join(f"{k}={v}" for k, v in s.items()) or "default")
def test_ablation_switch_runs_one_step(
    switches: dict[str, Any], batch4: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    check_step(*run_one_step(switches, batch4, monkeypatch))


@pytest.mark.parametrize("switches", _config_switches())
def test_config_switch_combination_runs_one_step(
    switches: dict[str, Any], batch4: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    check_step(*run_one_step(switches, batch4, monkeypatch))


def test_mixing_accepts_every_block_when_gate_is_open(
    batch4: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Random blocks with mix_prob 1 and delta 0: every block passes the lesion gate (accept ratio 1)."""
    _, loss, logged = run_one_step({"mix_mode": "random", "confidence": 0.0}, batch4, monkeypatch)
    assert logged["train_mix_accept_ratio"] == 1.0
    assert logged["train_confident_ratio"] == 1.0  # max(p, 1 - p) >= 0 everywhere
    assert math.isfinite(float(loss))


# -------------------------------------------------------------------------- per-step random streams
def test_unlabeled_terms_are_fixed_per_global_step(
    batch4: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Same global step -> identical losses whatever the global RNG; another step -> other draws."""
    module = semi(backbone="guidedecoder", **NO_BURN_IN, mix_prob=1.0, mix_mode="random", confidence=0.0)
    module.train()

    def terms() -> dict[str, float]:
        return unlabeled_terms(module, batch4, monkeypatch)

    torch.manual_seed(1)
    first = terms()
    torch.manual_seed(2)
    second = terms()
    assert first == second
    unlabeled = ("train_loss_unsup", "train_loss_itcl_unsup", "train_confident_ratio", "train_mix_accept_ratio")
    assert set(first) == set(unlabeled)
    monkeypatch.setattr(SemiMedRefModule, "global_step", property(lambda self: 5))
    later = terms()
    assert later["train_loss_unsup"] != first["train_loss_unsup"]  # other block positions / permutation
    assert later == terms()


def test_hard_and_soft_pseudo_labels_differ_without_mixing(
    batch4: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    module = semi(backbone="guidedecoder", **NO_BURN_IN, mix="none")
    module.train()
    hard = unlabeled_terms(module, batch4, monkeypatch)["train_loss_unsup"]
    module.hparams["pseudo_label"] = "soft"
    soft = unlabeled_terms(module, batch4, monkeypatch)["train_loss_unsup"]
    assert hard != pytest.approx(soft, rel=1e-6)


def test_soft_pseudo_label_reaches_mixed_target(
    batch4: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    module = semi(backbone="guidedecoder", **NO_BURN_IN, mix="tpatchmix", mix_prob=1.0)
    module.train()
    hard = unlabeled_terms(module, batch4, monkeypatch)["train_loss_unsup"]
    module.hparams["pseudo_label"] = "soft"
    soft = unlabeled_terms(module, batch4, monkeypatch)["train_loss_unsup"]
    assert hard != pytest.approx(soft, rel=1e-6)


# ------------------------------------------------------------------------------ T-PatchMix position
def _pos_masks(texts: list[str]) -> Tensor:
    module = semi(backbone="guidedecoder", mix_prob=1.0, mix_block=16, mix_mode="pos")
    probs = torch.full((2, 1, 64, 64), 0.9)
    return module._block_masks(probs, torch.tensor([1, 0]), texts, torch.Generator().manual_seed(0))


def test_pos_blocks_stay_in_the_named_region() -> None:
    masks = _pos_masks(["Unilateral pulmonary infection, one infected area, lower left lung.", CAPTION])
    rows, cols = torch.nonzero(masks[0, 0], as_tuple=True)
    assert masks[0].sum() == 16 * 16
    assert int(rows.min()) >= 2 * 64 // 3 and int(cols.max()) < 32  # lower third, displayed left half
    # CAPTION's first phrase is "lower left lung", like its partner's: allowed, in the same region.
    rows, cols = torch.nonzero(masks[1, 0], as_tuple=True)
    assert masks[1].sum() == 16 * 16
    assert int(rows.min()) >= 2 * 64 // 3 and int(cols.max()) < 32
    # Opposite sides never mix.
    opposite = _pos_masks([OTHER_CAPTION, CAPTION])
    assert opposite.sum() == 0


def test_pos_mix_allowed_when_partner_has_no_phrase() -> None:
    masks = _pos_masks(
        [
            "Unilateral pulmonary infection, one infected area, lower left lung.",
            "Unilateral pulmonary infection, one infected area, [UNK_POS].",
        ]
    )
    assert masks[0].sum() == 16 * 16  # i names "lower left", j names nothing: allowed
    assert masks[1].sum() == 0  # i has no phrase: never


@pytest.mark.parametrize("mode", ["stop", "skip"])
def test_non_finite_loss_is_caught(qata_root: Path, tmp_path: Path, mode: str) -> None:
    from textseg.engine.guards import NonFiniteLossError

    class Poisoned(SupervisedModule):
        def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
            batch["labeled"]["image"] = batch["labeled"]["image"] * float("nan")
            return super().training_step(batch, batch_idx)

    module = Poisoned(nonfinite=mode, **SMALL)
    before = {k: v.clone() for k, v in module.net.state_dict().items()}
    trainer = Trainer(
        accelerator="cpu",
        max_epochs=1,
        limit_train_batches=2,
        limit_val_batches=0,
        logger=CSVLogger(tmp_path),
        log_every_n_steps=1,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
    )
    dm = make_dm(qata_root, use_unlabeled=False)
    if mode == "stop":
        with pytest.raises(NonFiniteLossError, match=r"train_loss_sup=nan.*gradients of \[net\."):
            trainer.fit(module, datamodule=dm)
        return
    trainer.fit(module, datamodule=dm)
    after = module.net.state_dict()
    for name, value in before.items():
        if value.is_floating_point() and "running" not in name:
            torch.testing.assert_close(after[name], value, msg=f"{name} changed although every step was skipped")
    assert float(trainer.callback_metrics["train_skipped_steps"]) == 2.0
