"""Semi-MedRef (Li et al., arXiv 2605.15720): teacher-student SSL for medical referring image segmentation.

The recipe (paper §2, ``docs/methods.md`` §6): a labeled-only burn-in, then an EMA teacher (eval mode, weak view and
untouched text) produces pseudo-masks for the unlabeled pairs; the student learns on the strong view with PosAug'd
text and T-PatchMix, plus position-guided image-text contrastive learning (ITCL) on both branches:

    L = L_sup + lambda_itcl_sup * L_itcl^l + lambda_u(t) * (L_unsup + lambda_itcl_unsup * L_itcl^u)   (Eq. 5)

(the unlabeled ITCL term sits inside the ramped lambda_u as in the public code). Every component is a switch so
that each row of the paper's Tables 2 and 3 is a config.
"""

from __future__ import annotations

import random
from typing import Any, Literal

import torch
from torch import Tensor

from textseg.errors import check_range
from textseg.methods.evaluation import Texts
from textseg.methods.teacher import TeacherStudentModule
from textseg.models.types import SegOutput, TextChoice
from textseg.ops import boxes, mixing, text_aug
from textseg.ops.ema import linear_ramp, semimedref_momentum
from textseg.ops.losses import clip_loss, itcl_loss
from textseg.ops.transfer import to_device

#: A student input: images ``[B, C, H, W]``, their texts (or text features) and modality codes (or ``None``).
View = tuple[Tensor, Texts, Tensor | None]


def _view(part: dict[str, Any]) -> View:
    """A batch part's own images, texts and modality codes as a student input."""
    return part["image"], list(part["text"]), part.get("modality")


class SemiMedRefModule(TeacherStudentModule):
    """Semi-MedRef on the MMI-UNet or GuideDecoder backbone.

    Args:
        use_teacher: Teacher-student EMA with pseudo-labels ("+ T-S EMA"); ``False`` trains labeled data only.
        burn_in_epochs: Labeled-only epochs before the unsupervised terms start (5).
        lambda_u: Final weight of the unsupervised branch (0.3).
        lambda_u_ramp_epochs: Epochs of the linear ramp of lambda_u after burn-in (15).
        ema_start: EMA momentum through burn-in (0.99).
        ema_end: EMA momentum at the end of its ramp (0.999).
        ema_ramp_epochs: Epochs of the momentum ramp after burn-in (20).
        confidence: delta, the pseudo-label threshold without mixing and the T-PatchMix lesion gate (0.55).
        pseudo_label: ``"hard"`` 1[p >= delta] or ``"soft"`` sigmoid((p - delta) / soft_temperature).
        soft_temperature: Temperature of soft pseudo-labels.
        image_strong: Student sees the strong image view (ImgStrong, Table 3); ``False`` uses the weak view.
        text_aug: Student text augmentation: ``"posaug"`` (paper §2.3), ``"textstrong"`` (synonyms + deletion,
            Table 3) or ``"none"``.
        posaug_rho: PosAug dropout probability rho (fuzzing with 1 - rho).
        posaug_edit_prob: Probability that PosAug edits a phrase at all (public code: 0.5).
        textstrong_prob: Synonym-replacement and deletion probability of TextStrong.
        mix: ``"tpatchmix"`` (Eqs. 6-8), ``"cutmix"`` (naive, Table 3) or ``"none"``.
        mix_mode: T-PatchMix block placement: ``"pos"`` (position-constrained), ``"prob"`` (probability-driven)
            or ``"random"``.
        mix_block: Side of the mixed block in pixels (16).
        mix_prob: Per-sample probability of drawing a block (0.08).
        mix_target_threshold: Threshold of the mixed pseudo-label (Eq. 8: 0.5).
        gate_before_paste: Apply the lesion gate (Eq. 7) before pasting (project decision) or after (public code).
        span_mix: Synchronise the text of accepted mixes ("pos_i and pos_j").
        spc: RESMatch-style SPC: horizontally flip the student view with probability ``spc_prob`` and swap the
            words left/right (Table 3).
        spc_prob: Flip probability of SPC.
        contrastive: ``"itcl"`` (Eq. 9, Jaccard soft positives), ``"clip"`` (Table 3) or ``"none"``.
        itcl_temperature: tau (0.07).
        lambda_itcl_sup: Weight of the labeled ITCL term (0.02).
        lambda_itcl_unsup: Weight of the unlabeled ITCL term on the weak pair (0.1).
        batched_student: Run the student's labeled, mixed and weak-view forwards as one batched call, each part
            keeping its own BatchNorm statistics (``docs/methods.md`` §6.6); ``False`` runs them one after another
            (the same maths up to dropout masks, more kernel launches).
        aug_seed: Seed of the per-step mixing and text-augmentation streams (a function of this seed, the global
            step and the rank, so a resumed run draws the same). Named apart from the DataModule's ``seed``.
        **kwargs: Base arguments (:class:`~textseg.methods.base.TextSegModule`); the teacher, its update and the
            per-step streams are :class:`~textseg.methods.teacher.TeacherStudentModule`'s.
    """

    def __init__(
        self,
        use_teacher: bool = True,
        burn_in_epochs: int = 5,
        lambda_u: float = 0.3,
        lambda_u_ramp_epochs: int = 15,
        ema_start: float = 0.99,
        ema_end: float = 0.999,
        ema_ramp_epochs: int = 20,
        confidence: float = 0.55,
        pseudo_label: Literal["hard", "soft"] = "hard",
        soft_temperature: float = 0.05,
        image_strong: bool = True,
        text_aug: Literal["posaug", "textstrong", "none"] = "posaug",
        posaug_rho: float = 0.5,
        posaug_edit_prob: float = 0.5,
        textstrong_prob: float = 0.1,
        mix: Literal["tpatchmix", "cutmix", "none"] = "tpatchmix",
        mix_mode: Literal["pos", "prob", "random"] = "pos",
        mix_block: int = 16,
        mix_prob: float = 0.08,
        mix_target_threshold: float = 0.5,
        gate_before_paste: bool = True,
        span_mix: bool = True,
        spc: bool = False,
        spc_prob: float = 0.5,
        contrastive: Literal["itcl", "clip", "none"] = "itcl",
        itcl_temperature: float = 0.07,
        lambda_itcl_sup: float = 0.02,
        lambda_itcl_unsup: float = 0.1,
        batched_student: bool = True,
        aug_seed: int = 42,
        **kwargs: Any,
    ) -> None:
        for name, value, low, high in (
            ("burn_in_epochs", burn_in_epochs, 0, None),
            ("lambda_u", lambda_u, 0, None),
            ("lambda_u_ramp_epochs", lambda_u_ramp_epochs, 0, None),
            ("ema_start", ema_start, 0, 1),
            ("ema_end", ema_end, 0, 1),
            ("ema_ramp_epochs", ema_ramp_epochs, 0, None),
            ("confidence", confidence, 0, 1),
            ("posaug_rho", posaug_rho, 0, 1),
            ("posaug_edit_prob", posaug_edit_prob, 0, 1),
            ("textstrong_prob", textstrong_prob, 0, 1),
            ("mix_block", mix_block, 1, None),
            ("mix_prob", mix_prob, 0, 1),
            ("mix_target_threshold", mix_target_threshold, 0, 1),
            ("spc_prob", spc_prob, 0, 1),
            ("lambda_itcl_sup", lambda_itcl_sup, 0, None),
            ("lambda_itcl_unsup", lambda_itcl_unsup, 0, None),
            ("aug_seed", aug_seed, 0, None),
        ):
            check_range(name, value, low, high)
        check_range("soft_temperature", soft_temperature, 0, open_low=True)
        check_range("itcl_temperature", itcl_temperature, 0, open_low=True)
        super().__init__(**kwargs)

    # ----------------------------------------------------------------------------------------------- schedules
    @property
    def in_burn_in(self) -> bool:
        """Whether the current epoch is a labeled-only burn-in epoch."""
        return self.current_epoch < self.hp.burn_in_epochs

    def lambda_u_now(self) -> float:
        """lambda_u(t): 0 until burn-in ends, then linear to ``lambda_u`` over ``lambda_u_ramp_epochs``."""
        hp = self.hp
        return linear_ramp(self.current_epoch, hp.burn_in_epochs, hp.lambda_u_ramp_epochs, hp.lambda_u)

    def momentum_now(self) -> float:
        """EMA momentum of the current epoch (0.99 through burn-in, then linear to 0.999)."""
        hp = self.hp
        return semimedref_momentum(self.current_epoch, hp.burn_in_epochs, hp.ema_ramp_epochs, hp.ema_start, hp.ema_end)

    # ------------------------------------------------------------------------------------------------ training
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        """Eq. 5: supervised DiceCE + labeled ITCL, and after burn-in the ramped unlabeled branch.

        The student sees up to three parts -- the labeled pairs, the mixed strong view with augmented text, the weak
        unlabeled pair for ITCL -- in one batched call (``batched_student``, :meth:`forward_parts`).
        """
        hp = self.hp
        lab = batch["labeled"]
        lam = self.lambda_u_now()
        semi = self.teacher is not None and "unlabeled" in batch and not self.in_burn_in and lam > 0
        views = [_view(lab)]
        if semi:
            unl = batch["unlabeled"]
            mixed_view, target, stats = self._unlabeled_view(unl)
            views.append(mixed_view)
            if hp.contrastive != "none" and hp.lambda_itcl_unsup > 0:
                views.append(_view(unl))
        outs = self.forward_parts(views, batched=hp.batched_student)
        terms = {"sup": self.seg_loss(outs[0]["logits"], lab["mask"])}
        loss = terms["sup"]
        if hp.contrastive != "none" and hp.lambda_itcl_sup > 0:
            terms["itcl_sup"] = self._contrastive(outs[0], lab["position"])
            loss = loss + hp.lambda_itcl_sup * terms["itcl_sup"]
        n = len(lab["text"])
        if semi:
            student = outs[1]["logits"]
            unsup = {"unsup": self.seg_loss(student, target.to(student.dtype))}
            if len(outs) > 2:
                unsup["itcl_unsup"] = self._contrastive(outs[2], unl["position"])
            terms.update(unsup)
            loss = loss + lam * sum(self._unsup_weight(k) * v for k, v in unsup.items())
            self.log_dict({f"train_{k}": v for k, v in stats.items()}, batch_size=n)
        self.log_dict({f"train_loss_{k}": v for k, v in terms.items()}, batch_size=n)
        self.log_dict({"train_lambda_u": lam, "train_ema_momentum": self.momentum_now()}, batch_size=n)
        self.log("train_loss", loss, batch_size=n)
        return loss

    def _unsup_weight(self, key: str) -> float:
        return self.hp.lambda_itcl_unsup if key == "itcl_unsup" else 1.0

    def _contrastive(self, out: SegOutput, positions: Tensor) -> Tensor:
        hp = self.hp
        if hp.contrastive == "clip":
            return clip_loss(out["image_embed"], out["text_embed"], hp.itcl_temperature)
        return itcl_loss(out["image_embed"], out["text_embed"], positions, hp.itcl_temperature)

    def _unlabeled_view(self, unl: dict[str, Any]) -> tuple[View, Tensor, dict[str, Tensor]]:
        """Teacher pseudo-labels on the weak view; the student's strong, mixed, re-phrased view (Eqs. 3-4, 6-8).

        The text of an accepted mix is the span-mixed text, decided on the device (a
        :class:`~textseg.models.types.TextChoice`: both candidates are encoded and each sample's features are picked
        by its accept flag), so the host never waits for the flags.

        Returns:
            The student's view ``(image, texts or a text choice, modality)``, its pseudo-label target and the logged
            statistics.
        """
        hp = self.hp
        assert self.teacher is not None
        gen, rng = self.step_generators()
        with torch.no_grad():
            probs = torch.sigmoid(self.forward_batch(unl, self.teacher)["logits"].float())
        image = unl["image_strong"] if hp.image_strong else unl["image"]
        texts = [self._augment_text(t, rng) for t in unl["text"]]
        target = mixing.pseudo_label(probs, hp.confidence, hp.pseudo_label, hp.soft_temperature)
        stats = {"confident_ratio": mixing.confident_fraction(probs, hp.confidence)}
        chosen: list[str] | TextChoice = texts
        if hp.mix != "none":
            image, target, chosen, stats["mix_accept_ratio"] = self._mix(image, probs, target, texts, gen)
        if hp.spc:
            image, target, flip = self._spc(image, target, gen)
            chosen = _swap_sides(chosen, flip)
        return (image, chosen, unl.get("modality")), target, stats

    def _augment_text(self, caption: str, rng: random.Random) -> str:
        hp = self.hp
        if hp.text_aug == "posaug":
            return text_aug.pos_aug(caption, rng, rho=hp.posaug_rho, edit_prob=hp.posaug_edit_prob)
        if hp.text_aug == "textstrong":
            return text_aug.text_strong(caption, rng, hp.textstrong_prob, hp.textstrong_prob)
        return caption

    def _block_masks(self, probs: Tensor, perm: Tensor, texts: list[str], gen: torch.Generator) -> Tensor:
        """Draw the block masks M_i of T-PatchMix (position-constrained, probability-driven or random).

        ``perm`` is the partner permutation on the host (the position boxes read it there).
        """
        hp = self.hp
        b, _, h, w = probs.shape
        if hp.mix == "cutmix":
            return boxes.cutmix_boxes(b, h, w, gen, device=probs.device)
        if hp.mix_mode == "prob":
            partner_probs = probs.index_select(0, to_device(perm, probs.device))
            return boxes.sample_prob_blocks(partner_probs, hp.confidence, hp.mix_block, hp.mix_prob, gen)
        if hp.mix_mode == "random":
            return boxes.sample_random_blocks(b, hp.mix_block, hp.mix_prob, h, w, gen, device=probs.device)
        regions, allowed = boxes.position_boxes(texts, perm, h, w)  # [B, 4] on the CPU, checked there
        return boxes.sample_box_blocks(regions, allowed, hp.mix_block, hp.mix_prob, h, w, gen, device=probs.device)

    def _mix(
        self, image: Tensor, probs: Tensor, target: Tensor, texts: list[str], gen: torch.Generator
    ) -> tuple[Tensor, Tensor, list[str] | TextChoice, Tensor]:
        """T-PatchMix (or naive CutMix) of the student view, its pseudo-label and its text.

        Returns:
            The mixed images and target, the texts (with span mixing a :class:`~textseg.models.types.TextChoice` of
            the span-mixed text where the mix was accepted, decided on the device) and the accept rate among drawn
            blocks.
        """
        hp = self.hp
        partners = mixing.random_permutation(image.shape[0], gen)  # drawn on the host: read there, never waited for
        perm = to_device(partners, image.device)
        masks = self._block_masks(probs, partners, texts, gen)
        if hp.mix == "cutmix":
            mixed = mixing.t_patchmix(image, probs, perm, masks, 0.0, hp.confidence, gate_before_paste=True)
            return mixed.image, mixed.target, texts, mixed.accepted.float().mean()
        mixed = mixing.t_patchmix(
            image, probs, perm, masks, hp.confidence, hp.mix_target_threshold, hp.gate_before_paste
        )
        target = mixed.target
        if hp.pseudo_label == "soft":  # soft pseudo-label of the mixed teacher map (Eq. 8 with a soft indicator)
            gated = mixed.mask * mixed.accepted.view(-1, 1, 1, 1).to(mixed.mask.dtype)
            mixed_probs = probs * (1 - gated) + probs[perm] * gated
            target = mixing.pseudo_label(mixed_probs, hp.mix_target_threshold, "soft", hp.soft_temperature)
        drawn = masks.flatten(1).amax(1) > 0
        rate = mixed.accepted.float().sum() / drawn.float().sum().clamp_min(1)
        if not hp.span_mix or hp.mix_mode == "prob":
            return mixed.image, target, texts, rate
        mode: Literal["and", "replace"] = "and" if hp.mix_mode == "pos" else "replace"
        spans = [text_aug.span_mix(t, texts[j], mode) for t, j in zip(texts, partners.tolist(), strict=True)]
        return mixed.image, target, TextChoice(spans, texts, mixed.accepted), rate

    def _spc(self, image: Tensor, target: Tensor, gen: torch.Generator) -> tuple[Tensor, Tensor, list[bool]]:
        """SPC (RESMatch): flip the student view horizontally (the caller swaps left/right in its text).

        Returns:
            The flipped images and target, and which samples were flipped (drawn on the host).
        """
        flip = torch.rand(image.shape[0], generator=gen) < self.hp.spc_prob
        chosen = to_device(flip, image.device).view(-1, 1, 1, 1)
        image = torch.where(chosen, image.flip(-1), image)
        return image, torch.where(chosen, target.flip(-1), target), flip.tolist()


def _swap_sides(texts: list[str] | TextChoice, flip: list[bool]) -> list[str] | TextChoice:
    """SPC's text side of a horizontal flip: left and right swapped in the flipped samples' texts (both candidates)."""

    def swap(strings: list[str]) -> list[str]:
        return [text_aug.swap_left_right(t) if f else t for t, f in zip(strings, flip, strict=True)]

    if isinstance(texts, TextChoice):
        return TextChoice(swap(texts.if_true), swap(texts.if_false), texts.condition)
    return swap(texts)
