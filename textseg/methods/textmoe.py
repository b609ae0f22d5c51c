"""TextMoE (Zeng et al., MICCAI 2025): one model for composite X-ray + CT data.

"Exploring Text-enhanced Mixture-of-Experts for Semi-supervised Medical Image Segmentation with Composite Data".
The recipe (paper §2, ``docs/methods.md`` §5): a text-assisted Mixture-of-Experts decoder whose gate sees the modality
indicator (Eqs. 1-4), a mean teacher whose hard pseudo-labels supervise the unlabeled pairs, content
regularisation by frequency-space exchange between unlabeled images of different modalities (Eqs. 6-7: teacher on
the original image, student on the exchanged one), and a differential loss that keeps the two visual experts apart
(Eq. 8). The objective (Eq. 9, with the weights of the public code):

    L = L_sup + lambda_u * L_unsup + lambda_diff * L_diff

Every component is a switch, so each row of the paper's Table 2 (L_sup only; Plain-MoE; TMoE; + L_cr; + L_diff) is a
config. Use it with a composite ``TextSegDataModule(dataset=[qata, mosmed])``: validation and test metrics are then
reported per dataset (``val_dice_qata``, ``val_dice_mosmed``) as well as overall.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor

from textseg.errors import check_range
from textseg.methods.teacher import TeacherStudentModule
from textseg.ops.ema import textmoe_momentum
from textseg.ops.frequency import frequency_exchange
from textseg.ops.losses import differential_loss
from textseg.ops.mixing import confident_fraction

#: Names of the modality codes in the logs (``train_gate_ct_e0``).
MODALITY_NAMES = ("xray", "ct")


class TextMoEModule(TeacherStudentModule):
    """TextMoE: TMoE (or Plain-MoE) decoder, mean teacher, frequency exchange and the differential loss.

    Args:
        expert: ``"tmoe"`` (text-assisted experts with cross-attention, Eqs. 1-2) or ``"plain"`` (Plain-MoE:
            element-wise fusion with the pooled text, Table 2).
        num_experts: Gated visual experts per MoE layer (2).
        use_teacher: Mean-teacher pseudo-labels on the unlabeled pairs; ``False`` trains on labeled data only
            (Table 2 "L_sup only").
        pretrain_epochs: Labeled-only epochs before the semi-supervised stage (the public code's two-stage
            schedule; 0 = one stage). The teacher's momentum schedule restarts at the stage switch, so its first
            semi-supervised step copies the student, as the code's fresh Trainer does.
        lambda_u: Weight of the pseudo-label loss (1: the code's single loss over the mixed batch).
        pseudo_threshold: Hard threshold of the teacher probabilities (0.5, no confidence mask).
        ema_max: Cap of the momentum schedule ``min(1 - 1/(step + 1), ema_max)`` (0.99).
        exchange_mode: Content regularisation L_cr (Eqs. 6-7): ``"amplitude"`` (low-frequency amplitude swap with a
            partner of the other modality, the project's decision), ``"complex"`` (amplitude and phase of the band),
            ``"legacy"`` (the public code's unshifted radius-``exchange_radius`` swap) or ``"none"``.
        exchange_beta: Half-width of the exchanged band as a share of the image side (FDA's beta).
        exchange_radius: Radius of the legacy mode's disc (10).
        lambda_diff: Weight of the differential loss (0.1; 0 switches it off).
        diff_mode: ``"squared_cosine"`` (the project's decision for Eq. 8) or ``"raw_cosine_width"`` (the code's).
        aug_seed: Seed of the per-step exchange partner draws (with the global step and the rank: resume-safe).
        **kwargs: Base arguments (:class:`~textseg.methods.base.TextSegModule`); ``backbone`` is ignored.
    """

    def __init__(
        self,
        expert: Literal["tmoe", "plain"] = "tmoe",
        num_experts: int = 2,
        use_teacher: bool = True,
        pretrain_epochs: int = 0,
        lambda_u: float = 1.0,
        pseudo_threshold: float = 0.5,
        ema_max: float = 0.99,
        exchange_mode: Literal["amplitude", "complex", "legacy", "none"] = "amplitude",
        exchange_beta: float = 0.05,
        exchange_radius: int = 10,
        lambda_diff: float = 0.1,
        diff_mode: Literal["squared_cosine", "raw_cosine_width"] = "squared_cosine",
        aug_seed: int = 0,
        **kwargs: Any,
    ) -> None:
        for name, value, low, high in (
            ("num_experts", num_experts, 1, None),
            ("pretrain_epochs", pretrain_epochs, 0, None),
            ("lambda_u", lambda_u, 0, None),
            ("pseudo_threshold", pseudo_threshold, 0, 1),
            ("ema_max", ema_max, 0, 1),
            ("exchange_beta", exchange_beta, 0, 0.5),
            ("exchange_radius", exchange_radius, 0, None),
            ("lambda_diff", lambda_diff, 0, None),
            ("aug_seed", aug_seed, 0, None),
        ):
            check_range(name, value, low, high)
        kwargs.setdefault("backbone", "textmoe")
        if kwargs["backbone"] != "textmoe":
            raise ValueError(f"TextMoEModule needs backbone 'textmoe', got {kwargs['backbone']!r}")
        super().__init__(**kwargs)

    def core_kwargs(self) -> dict[str, Any]:
        """The TextMoE decoder's expert type and count (``build_core``)."""
        return {"moe_expert": self.hp.expert, "num_experts": self.hp.num_experts}

    def configure_models(self) -> None:
        """Frozen text encoder, the TextMoE student and its EMA teacher (base), and the stage's first step."""
        super().configure_models()
        self.stage_start_step: Tensor
        self.register_buffer("stage_start_step", torch.zeros((), dtype=torch.long))
        self._stage_start = 0  # the buffer's value on the host: the momentum is computed without reading it back

    @property
    def in_pretrain(self) -> bool:
        """Whether the current epoch belongs to the labeled-only first stage."""
        return self.current_epoch < self.hp.pretrain_epochs

    def momentum_now(self) -> float:
        """``min(1 - 1/(step + 1), ema_max)`` with ``step`` counted from the start of the current stage."""
        return textmoe_momentum(self.global_step - self._stage_start, self.hp.ema_max)

    def on_train_epoch_start(self) -> None:
        """Restart the momentum schedule when the semi-supervised stage begins (two-stage option)."""
        if self.hp.pretrain_epochs > 0 and self.current_epoch == self.hp.pretrain_epochs:
            self.stage_start_step.fill_(self.global_step)
            self._stage_start = self.global_step

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore the host copy of ``stage_start_step`` from the checkpoint (read there, on the CPU)."""
        super().on_load_checkpoint(checkpoint)
        value = (checkpoint.get("state_dict") or {}).get("stage_start_step")
        self._stage_start = int(value) if value is not None else 0

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        """Eq. 9: supervised DiceCE, the teacher's pseudo-labels on exchanged unlabeled images, and L_diff."""
        hp = self.hp
        lab, unl = batch["labeled"], batch.get("unlabeled")
        semi = self.teacher is not None and unl is not None and not self.in_pretrain and hp.lambda_u > 0
        n_lab = len(lab["text"])
        image, modality, texts = lab["image"], lab["modality"], list(lab["text"])
        stats: dict[str, Tensor] = {}
        if semi:
            assert self.teacher is not None and unl is not None
            with torch.no_grad():  # teacher on the original (un-exchanged) view, Eq. 6
                probs = torch.sigmoid(self.forward_batch(unl, self.teacher)["logits"].float())
            pseudo = (probs >= hp.pseudo_threshold).float()
            stats["confident_ratio"] = confident_fraction(probs, max(hp.pseudo_threshold, 1 - hp.pseudo_threshold))
            stats["pseudo_fg_ratio"] = pseudo.mean()
            image = torch.cat([image, unl["image"]])
            modality = torch.cat([modality, unl["modality"]])
            texts += list(unl["text"])
        if semi and hp.exchange_mode != "none":
            image, stats["exchange_ratio"] = self._exchange(image, modality, n_lab)
        out = self.forward_batch({"image": image, "text": texts, "modality": modality})
        logits = out["logits"]
        terms = {"sup": self.seg_loss(logits[:n_lab], lab["mask"])}
        loss = terms["sup"]
        if semi:
            terms["unsup"] = self.seg_loss(logits[n_lab:], pseudo.to(logits.dtype))
            loss = loss + hp.lambda_u * terms["unsup"]
        if hp.lambda_diff > 0:
            terms["diff"] = differential_loss(out["experts"], hp.diff_mode)
            loss = loss + hp.lambda_diff * terms["diff"]
        self._log_step(terms, stats, out, modality, loss, n_lab)
        return loss

    def _exchange(self, image: Tensor, modality: Tensor, n_lab: int) -> tuple[Tensor, Tensor]:
        """Frequency-space exchange of the unlabeled part of the batch (Eq. 7); returns the share exchanged."""
        hp = self.hp
        exchangeable = torch.arange(image.shape[0], device=image.device) >= n_lab
        result = frequency_exchange(
            image,
            modality.long(),
            exchangeable,
            self.step_generators()[0],
            beta=hp.exchange_beta,
            mode=hp.exchange_mode,
            legacy_radius=hp.exchange_radius,
        )
        done = result.exchanged[exchangeable] if hp.exchange_mode != "legacy" else result.exchanged
        return result.image, done.float().mean()

    def _data_modalities(self) -> list[int]:
        """The modality codes of the run's datasets (known on the host), so a one-modality run logs one gate set."""
        datas = getattr(getattr(self._trainer, "datamodule", None), "datas", None) if self._trainer else None
        if not datas:
            return list(range(len(MODALITY_NAMES)))
        return sorted({int(data.modality) for data in datas.values()})

    def _log_step(
        self, terms: dict[str, Tensor], stats: dict[str, Tensor], out: Any, modality: Tensor, loss: Tensor, n: int
    ) -> None:
        """Log every loss term, the momentum, the mean gate weights per modality and the expert similarity."""
        logs: dict[str, Any] = {f"train_loss_{k}": v for k, v in terms.items()}
        logs.update({f"train_{k}": v for k, v in stats.items()})
        logs["train_ema_momentum"] = self.momentum_now()
        with torch.no_grad():
            gates = out["gates"].float().mean(1)  # [B, E] averaged over the MoE layers
            for code in self._data_modalities():
                # masked means (NaN for a modality this batch lacks): decided on the device, no host read
                rows = (modality == code).to(gates.dtype)
                name = MODALITY_NAMES[code]
                means = (gates * rows[:, None]).sum(0) / rows.sum()
                for e in range(gates.shape[1]):
                    logs[f"train_gate_{name}_e{e}"] = means[e]
            if "diff" not in terms:
                logs["train_expert_similarity"] = differential_loss(out["experts"], self.hp.diff_mode)
            else:
                logs["train_expert_similarity"] = terms["diff"].detach()
        self.log_dict(logs, batch_size=n)
        self.log("train_loss", loss, batch_size=n)
