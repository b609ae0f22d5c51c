"""Segmentation and image-text contrastive losses.

* :func:`build_seg_loss` -- the Dice + BCE segmentation loss of Semi-MedRef Eqs. 2 and 4 (and TextMoE), as
  MONAI ``DiceCELoss(sigmoid=True)`` on **logits** (a real Dice + binary cross-entropy on MONAI >= 1.3), or
  Dice only, which is what the public codes effectively trained with (``docs/methods.md`` Sec. 1.4, Decision
  "loss").
* :func:`itcl_loss` -- Semi-MedRef's position-guided image-text contrastive loss (ITCL, "PACL" in the code,
  paper Eq. 9, ``docs/methods.md`` Sec. 6.5) with Jaccard soft positives from the 6-dim positional labels
  (:func:`position_affinity`).
* :func:`clip_loss` -- the standard symmetric InfoNCE (CLIP) loss, the Table 3 "CLIP-style" ablation.

All losses are computed in float32 (float64 inputs stay float64) with autocast disabled, so they are safe
under mixed precision.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss, DiceLoss
from torch import Tensor, nn

from textseg.errors import DataError
from textseg.ops.asserts import assert_on_device

__all__ = ["SegLoss", "build_seg_loss", "clip_loss", "differential_loss", "itcl_loss", "position_affinity"]

SegLossKind = Literal["dice_ce", "dice_only"]


def _loss_dtype(t: Tensor) -> torch.dtype:
    """float32, or float64 when the input already is float64."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


class SegLoss(nn.Module):
    """Binary segmentation loss on logits: MONAI Dice (+ BCE), computed in float32 outside autocast.

    ``dice_ce``: ``L = L_Dice + L_BCE`` with MONAI defaults (paper Eq. 2):

        L_Dice = mean_b [1 - (2 sum(sigma(z) * y) + 1e-5) / (sum(sigma(z)) + sum(y) + 1e-5)]   (per sample)
        L_BCE  = mean over all pixels of BCE-with-logits(z, y)

    ``dice_only``: ``L = L_Dice``.

    Args:
        kind: "dice_ce" (default, a real Dice + BCE) or "dice_only" (the papers' effective training loss).

    Raises:
        DataError: For an unknown ``kind``.
    """

    def __init__(self, kind: SegLossKind = "dice_ce") -> None:
        super().__init__()
        if kind == "dice_ce":
            self.loss: nn.Module = DiceCELoss(sigmoid=True)
        elif kind == "dice_only":
            self.loss = DiceLoss(sigmoid=True)
        else:
            raise DataError(f"build_seg_loss: kind must be 'dice_ce' or 'dice_only', got {kind!r}")
        self.kind = kind

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """Loss of logits against a (hard or soft) foreground target.

        Args:
            logits: ``[B, 1, H, W]`` (or ``[B, 1, ...]``) segmentation logits -- never probabilities.
            target: Same shape, values in ``[0, 1]`` (hard masks or soft pseudo-labels), any dtype.

        Returns:
            0-dim loss tensor (float32, or float64 for float64 logits).

        Raises:
            DataError: If the shapes differ or there is not exactly one channel.
        """
        if logits.dim() < 3 or logits.shape[1] != 1:
            raise DataError(f"seg loss: logits must have shape [B, 1, H, W], got {tuple(logits.shape)}")
        if target.shape != logits.shape:
            raise DataError(
                f"seg loss: target shape {tuple(target.shape)} differs from logits shape {tuple(logits.shape)}"
            )
        dtype = _loss_dtype(logits)
        with torch.autocast(device_type=logits.device.type, enabled=False):
            out: Tensor = self.loss(logits.to(dtype), target.to(dtype))
        return out


def build_seg_loss(kind: SegLossKind = "dice_ce") -> nn.Module:
    """Build the segmentation loss of paper Eqs. 2 / 4 (``docs/methods.md`` Sec. 1.4 Decision).

    Args:
        kind: "dice_ce" -- MONAI ``DiceCELoss(sigmoid=True)``, Dice + BCE on logits (default); "dice_only" --
            MONAI ``DiceLoss(sigmoid=True)``, which reproduces the published (effectively Dice-only) training.

    Returns:
        A :class:`SegLoss` module taking ``(logits [B, 1, H, W], float target [B, 1, H, W])``.
    """
    return SegLoss(kind)


def position_affinity(positions: Tensor) -> Tensor:
    """Jaccard soft-positive matrix of ITCL (paper Sec. 2.4, ``docs/methods.md`` Sec. 6.5).

    ``A_ij = |q_i n q_j| / |q_i u q_j|`` over the positional labels (order ``[L-up, L-mid, L-low, R-up, R-mid,
    R-low]``), computed as ``sum min(q_i, q_j) / sum max(q_i, q_j)`` (identical for ``{0, 1}`` labels). The
    union of two all-zero labels is set to 1 (so ``A_ij = 0`` off the diagonal) and the diagonal is set to 1.

    Args:
        positions: ``[B, K]`` labels in ``[0, 1]`` (``K = 6`` region flags), any numeric dtype.

    Returns:
        ``[B, B]`` symmetric affinity in float32 (float64 for float64 input).

    Raises:
        DataError: If ``positions`` is not 2-D or has values outside ``[0, 1]``.
    """
    if positions.dim() != 2:
        raise DataError(f"position_affinity: positions must have shape [B, K], got {tuple(positions.shape)}")
    q = positions.to(_loss_dtype(positions))
    if q.numel():
        assert_on_device(((q >= 0) & (q <= 1)).all(), "position_affinity: positional labels must lie in [0, 1]")
    inter = torch.minimum(q[:, None, :], q[None, :, :]).sum(-1)
    union = torch.maximum(q[:, None, :], q[None, :, :]).sum(-1)
    union = torch.where(union > 0, union, torch.ones_like(union))
    affinity = inter / union
    affinity.fill_diagonal_(1.0)
    return affinity


def _check_embeds(image_embed: Tensor, text_embed: Tensor, temperature: float) -> None:
    if image_embed.dim() != 2 or text_embed.shape != image_embed.shape:
        raise DataError(
            f"contrastive loss: image_embed {tuple(image_embed.shape)} and text_embed "
            f"{tuple(text_embed.shape)} must both be [B, D]"
        )
    if image_embed.shape[0] < 1:
        raise DataError("contrastive loss: empty batch")
    if not temperature > 0:
        raise DataError(f"contrastive loss: temperature must be > 0, got {temperature!r}")


def _similarity(image_embed: Tensor, text_embed: Tensor, temperature: float) -> Tensor:
    """``S = v u^T / tau`` with L2-normalised ``v`` (images) and ``u`` (texts), in float32 / float64."""
    dtype = torch.promote_types(_loss_dtype(image_embed), _loss_dtype(text_embed))
    v = F.normalize(image_embed.to(dtype), dim=1)
    u = F.normalize(text_embed.to(dtype), dim=1)
    return v @ u.t() / temperature


def itcl_loss(image_embed: Tensor, text_embed: Tensor, positions: Tensor, temperature: float = 0.07) -> Tensor:
    """Position-guided image-text contrastive loss, ITCL (Semi-MedRef paper Eq. 9).

    With L2-normalised embeddings ``v_i``, ``u_j`` and ``S_ij = v_i^T u_j / tau``:

        L = -1/(2B) sum_i [ sum_j A_ij log softmax_j(S_i.) / sum_j A_ij
                          + sum_j A_ij log softmax_j(S^T_i.) / sum_j A_ij ]

    where ``A`` is the Jaccard affinity of the positional labels (:func:`position_affinity`, diagonal 1): the
    image -> text term uses the rows of ``S``, the text -> image term the rows of ``S^T`` (``A`` is
    symmetric). With all off-diagonal ``A_ij = 0`` it reduces to :func:`clip_loss`.

    Args:
        image_embed: ``[B, D]`` image embeddings ``v`` (unnormalised).
        text_embed: ``[B, D]`` text embeddings ``u`` (unnormalised).
        positions: ``[B, K]`` positional labels ``q`` (``K = 6``).
        temperature: ``tau`` (0.07).

    Returns:
        0-dim loss (float32, float64 for float64 embeddings), computed outside autocast.

    Raises:
        DataError: On mismatched shapes, a non-positive temperature or invalid labels.
    """
    _check_embeds(image_embed, text_embed, temperature)
    if positions.dim() != 2 or positions.shape[0] != image_embed.shape[0]:
        raise DataError(
            f"itcl_loss: positions must be [B, K] with B = {image_embed.shape[0]}, got {tuple(positions.shape)}"
        )
    with torch.autocast(device_type=image_embed.device.type, enabled=False):
        logits = _similarity(image_embed, text_embed, temperature)
        affinity = position_affinity(positions.to(logits.device)).to(logits.dtype)
        i2t = -(affinity * F.log_softmax(logits, dim=1)).sum(1) / affinity.sum(1)
        aff_t = affinity.t()
        t2i = -(aff_t * F.log_softmax(logits.t(), dim=1)).sum(1) / aff_t.sum(1)
        return 0.5 * (i2t.mean() + t2i.mean())


def clip_loss(image_embed: Tensor, text_embed: Tensor, temperature: float = 0.07) -> Tensor:
    """Symmetric InfoNCE / CLIP loss (Radford et al., 2021), the Table 3 "CLIP-style" ablation.

    ``L = 1/2 [CE(S, I) + CE(S^T, I)]`` with ``S_ij = v_i^T u_j / tau`` on L2-normalised embeddings and the
    matching pair as the only positive.

    Args:
        image_embed: ``[B, D]`` image embeddings (unnormalised).
        text_embed: ``[B, D]`` text embeddings (unnormalised).
        temperature: ``tau`` (0.07).

    Returns:
        0-dim loss (float32, float64 for float64 embeddings), computed outside autocast.

    Raises:
        DataError: On mismatched shapes or a non-positive temperature.
    """
    _check_embeds(image_embed, text_embed, temperature)
    with torch.autocast(device_type=image_embed.device.type, enabled=False):
        logits = _similarity(image_embed, text_embed, temperature)
        labels = torch.arange(logits.shape[0], device=logits.device)
        return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels))


DiffLossMode = Literal["squared_cosine", "raw_cosine_width"]


def differential_loss(experts: Sequence[Tensor], mode: DiffLossMode = "squared_cosine", eps: float = 1e-8) -> Tensor:
    """Differential loss between the visual experts of TextMoE's MoE layers (Zeng et al., Eq. 8).

    Each element of ``experts`` is the ``[B, E, C, H, W]`` stack of the ``E`` gated visual experts' outputs of
    one MoE layer (``docs/methods.md`` Sec. 4). Two modes (``docs/methods.md`` Sec. 5.3):

    * ``"squared_cosine"`` (default, the project's Decision, Eq. 8's intent ``|cos| -> 0``): per sample and per
      expert pair ``(e, f)``, ``e < f``, the cosine similarity of the flattened ``C * H * W`` features, squared;
      averaged over samples and pairs within a layer, then over layers. 0 for orthogonal experts, 1 for
      identical or opposite ones.
    * ``"raw_cosine_width"``: the public code, ``F.cosine_similarity(e0, e1, dim=-1)`` of experts 0 and 1 only,
      along the image **width** ``W``, averaged over ``B, C, H`` and then over layers. 1 for identical, -1 for
      opposite experts (minimising it pushes towards -1).

    Cosines use ``F.cosine_similarity`` with the given ``eps`` (an all-zero feature gives cosine 0).

    Args:
        experts: One ``[B, E, C, H, W]`` tensor per MoE layer (``E >= 2``, ``B >= 1``); layers may differ in
            shape.
        mode: "squared_cosine" (default) or "raw_cosine_width".
        eps: Norm floor of the cosine similarity.

    Returns:
        0-dim loss (float32, float64 for float64 inputs), computed outside autocast.

    Raises:
        DataError: On an empty list, a tensor that is not 5-D or not floating-point, ``E < 2``, ``B = 0``, an
            unknown mode or a non-positive ``eps``.
    """
    if mode not in ("squared_cosine", "raw_cosine_width"):
        raise DataError(f"differential_loss: mode must be 'squared_cosine' or 'raw_cosine_width', got {mode!r}")
    if not eps > 0:
        raise DataError(f"differential_loss: eps must be > 0, got {eps!r}")
    layers = list(experts)
    if not layers:
        raise DataError("differential_loss: experts is empty, expected one [B, E, C, H, W] tensor per MoE layer")
    for idx, feat in enumerate(layers):
        if not isinstance(feat, Tensor) or feat.dim() != 5:
            shape = tuple(feat.shape) if isinstance(feat, Tensor) else type(feat).__name__
            raise DataError(f"differential_loss: layer {idx} must be a [B, E, C, H, W] tensor, got {shape}")
        if not feat.is_floating_point():
            raise DataError(f"differential_loss: layer {idx} must be floating-point, got dtype {feat.dtype}")
        if feat.shape[1] < 2:
            raise DataError(f"differential_loss: layer {idx} has E = {feat.shape[1]} experts, need at least 2")
        if feat.shape[0] < 1:
            raise DataError(f"differential_loss: layer {idx} has an empty batch")
    per_layer = []
    with torch.autocast(device_type=layers[0].device.type, enabled=False):
        for feat in layers:
            f = feat.to(_loss_dtype(feat))
            if mode == "raw_cosine_width":
                per_layer.append(F.cosine_similarity(f[:, 0], f[:, 1], dim=-1, eps=eps).mean())
                continue
            flat = f.flatten(start_dim=2)  # [B, E, C*H*W]
            n_exp = flat.shape[1]
            sims = [
                F.cosine_similarity(flat[:, e], flat[:, g], dim=-1, eps=eps) ** 2
                for e in range(n_exp)
                for g in range(e + 1, n_exp)
            ]
            per_layer.append(torch.stack(sims).mean())
        out_dtype = torch.float64 if any(v.dtype == torch.float64 for v in per_layer) else torch.float32
        return torch.stack([v.to(device=per_layer[0].device, dtype=out_dtype) for v in per_layer]).mean()
