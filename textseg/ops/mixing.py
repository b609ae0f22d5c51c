"""T-PatchMix (Semi-MedRef, Li et al., Sec. 2.3, Eqs. 6-8) and the mixing baselines of the Table 3 ablation.

T-PatchMix builds the student's strong unlabeled view by pasting one block of a partner sample ``j = perm(i)``
into sample ``i`` (Eq. 6), keeps the block only if the partner's teacher probability inside it is high enough
(the lesion gate, Eq. 7), and mixes the two teacher probability maps with the **same** gated mask to form the
pseudo-label (Eq. 8):

    I_mix = (1 - M_i) * I_i + M_i * I_j                                   (6)
    r_i = sum(P_j * M_i) / (sum(M_i) + eps),   M_hat_i = M_i * 1[r_i >= delta]   (7)
    Y_mix = 1[(1 - M_hat_i) * P_i + M_hat_i * P_j >= 0.5]                 (8)

Block masks ``M_i`` come from one of the samplers of :mod:`textseg.ops.boxes`: ``sample_box_blocks`` (the paper's
position-constrained mode ``pos``: one ``block x block`` square inside the coarse region named by sample ``i``'s
positional phrase), ``sample_prob_blocks`` (``prob``: a block centred on a random pixel where the partner's teacher
probability is >= a threshold), ``sample_random_blocks`` (``random``: a block anywhere) and ``cutmix_boxes`` (naive
CutMix, one random rectangle, for the Table 3 ablation).

Project decisions (``docs/methods.md`` Sec. 6.4): the gate is evaluated **before** pasting, so a rejected block is
not pasted (``gate_before_paste=False`` reproduces the public code, which pastes first and gates only the
target); boxes use image sides in display orientation ("left" = columns ``[0, W/2)``).

All functions are pure: randomness comes only from the explicit ``torch.Generator`` argument (random numbers
are drawn on the generator's device and moved to the data's device, so a CPU generator drives GPU data
reproducibly), everything is batched and vectorised (no per-sample Python loop), and floating-point inputs
keep their dtype.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
from torch import Tensor

from textseg.errors import DataError
from textseg.ops.boxes import _check_map, _float_dtype
from textseg.ops.transfer import to_device

__all__ = [
    "MixResult",
    "confident_fraction",
    "lesion_gate",
    "pseudo_label",
    "random_permutation",
    "t_patchmix",
]


class MixResult(NamedTuple):
    """Output of :func:`t_patchmix`.

    Attributes:
        image: Mixed student images ``[B, C, H, W]`` (Eq. 6), dtype of the input images.
        target: Mixed hard pseudo-label ``[B, 1, H, W]`` in ``{0, 1}`` (Eq. 8), dtype of the probabilities.
        mask: The mask actually pasted into the images ``[B, 1, H, W]``: the gated ``M_hat`` when the gate
            runs before pasting (default), the ungated ``M`` otherwise.
        accepted: ``[B]`` bool, ``True`` where a non-empty block passed the lesion gate (``M_hat_i != 0``);
            this is what drives the text span mixing ("pos_i and pos_j", Sec. 2.3).
        ratio: ``[B]`` lesion ratio ``r_i`` of Eq. 7 (float32, or float64 for float64 probabilities).
    """

    image: Tensor
    target: Tensor
    mask: Tensor
    accepted: Tensor
    ratio: Tensor


# ----------------------------------------------------------------------------------------------------
# gate, mixing, pseudo-labels


def lesion_gate(masks: Tensor, probs_partner: Tensor, delta: float = 0.55, eps: float = 1e-6) -> tuple[Tensor, Tensor]:
    """Lesion gate of T-PatchMix (paper Eq. 7).

    ``r_i = sum(P_j * M_i) / (sum(M_i) + eps)`` is the mean partner probability inside the block, and
    ``M_hat_i = M_i * 1[r_i >= delta]`` keeps the block only if it covers enough lesion. An empty mask gives
    ``r_i = 0``.

    Args:
        masks: ``[B, 1, H, W]`` block masks ``M_i`` (``{0, 1}``).
        probs_partner: ``[B, 1, H, W]`` partner teacher probabilities ``P_j`` (already permuted).
        delta: Gate threshold (0.55 in the published configs).
        eps: Denominator stabiliser.

    Returns:
        ``(M_hat, r)``: gated masks ``[B, 1, H, W]`` (dtype of ``masks``) and ratios ``[B]`` (float32, or
        float64 for float64 inputs).

    Raises:
        DataError: If the shapes do not match.
    """
    _check_map("masks", masks)
    _check_map("probs_partner", probs_partner, batch=masks.shape[0])
    if probs_partner.shape != masks.shape:
        raise DataError(
            f"lesion_gate: masks {tuple(masks.shape)} and probs_partner {tuple(probs_partner.shape)} differ"
        )
    dtype = torch.promote_types(_float_dtype(masks), _float_dtype(probs_partner))
    m = masks.to(dtype)
    ratio = (probs_partner.to(dtype) * m).sum(dim=(1, 2, 3)) / (m.sum(dim=(1, 2, 3)) + eps)
    keep = ratio >= delta
    gated = masks * keep.to(masks.dtype).view(-1, 1, 1, 1)
    return gated, ratio


def t_patchmix(
    images: Tensor,
    probs: Tensor,
    perm: Tensor,
    masks: Tensor,
    delta: float = 0.55,
    target_threshold: float = 0.5,
    gate_before_paste: bool = True,
) -> MixResult:
    """Image-text alignment-preserving patch mixing, T-PatchMix (paper Eqs. 6-8, ``docs/methods.md`` Sec. 6.4).

    Partner ``j = perm[i]``. The candidate masks ``M`` (from one of the samplers) are gated by Eq. 7 with the
    partner's teacher probabilities; the **same** gated mask ``M_hat`` then mixes the images (Eq. 6) and the
    teacher probabilities, which are thresholded into the pseudo-label (Eq. 8):

        image_i  = (1 - M_hat_i) * I_i + M_hat_i * I_j
        target_i = 1[(1 - M_hat_i) * P_i + M_hat_i * P_j >= target_threshold]

    With ``gate_before_paste=False`` (the public code's order) the image is mixed with the ungated ``M`` -- a
    rejected block stays in the image while the target there stays ``P_i`` -- and ``MixResult.mask`` is ``M``.
    The text side (span mixing where ``accepted``) is done by the caller.

    Args:
        images: ``[B, C, H, W]`` strong-view student images ``I_i``.
        probs: ``[B, 1, H, W]`` teacher probabilities on the weak views, ``P_i`` (the partner's are
            ``probs[perm]``).
        perm: ``[B]`` integer partner index per sample (see :func:`random_permutation`).
        masks: ``[B, 1, H, W]`` candidate block masks ``M_i`` in ``{0, 1}``.
        delta: Lesion-gate threshold of Eq. 7 (0.55).
        target_threshold: Pseudo-label threshold of Eq. 8 (0.5 in the paper and code).
        gate_before_paste: Project decision (default ``True``): rejected blocks are not pasted. ``False``
            reproduces the public code.

    Returns:
        A :class:`MixResult` (image, target, mask, accepted, ratio).

    Raises:
        DataError: On mismatched shapes or a non-integer ``perm``.
    """
    _check_map("images", images, channels=None)
    n, _, height, width = images.shape
    _check_map("probs", probs, batch=n)
    _check_map("masks", masks, batch=n)
    if probs.shape[2:] != (height, width) or masks.shape[2:] != (height, width):
        raise DataError(
            f"t_patchmix: spatial sizes differ: images {tuple(images.shape)}, probs {tuple(probs.shape)}, "
            f"masks {tuple(masks.shape)}"
        )
    if perm.shape != (n,) or perm.is_floating_point() or perm.is_complex() or perm.dtype == torch.bool:
        raise DataError(
            f"t_patchmix: perm must be an integer tensor of shape [{n}], got {perm.dtype} {tuple(perm.shape)}"
        )
    idx = to_device(perm, images.device, torch.long)
    images_j = images.index_select(0, idx)
    probs_j = probs.index_select(0, idx.to(probs.device))
    gated, ratio = lesion_gate(masks, probs_j, delta=delta)
    accepted = gated.flatten(1).ne(0).any(dim=1)
    pasted = gated if gate_before_paste else masks
    m_img = pasted.to(device=images.device, dtype=images.dtype)
    image = images * (1 - m_img) + images_j * m_img
    m_tgt = gated.to(device=probs.device, dtype=probs.dtype)
    mixed = (1 - m_tgt) * probs + m_tgt * probs_j
    target = (mixed >= target_threshold).to(probs.dtype if probs.is_floating_point() else torch.float32)
    return MixResult(image=image, target=target, mask=pasted, accepted=accepted, ratio=ratio)


def pseudo_label(
    probs: Tensor, delta: float, mode: Literal["hard", "soft"] = "hard", temperature: float = 0.05
) -> Tensor:
    """Teacher pseudo-label from probabilities (paper Eq. 3, ``docs/methods.md`` Sec. 6.1).

    ``hard``: ``1[p >= delta]`` (the paper); ``soft``: ``sigmoid((p - delta) / temperature)`` (the public
    code's optional soft mode).

    Args:
        probs: Teacher probabilities, any shape.
        delta: Confidence threshold (0.55 in the published configs).
        mode: "hard" or "soft".
        temperature: Soft-mode temperature (> 0).

    Returns:
        Tensor of the same shape and floating dtype as ``probs`` (float32 for non-float input).

    Raises:
        DataError: For an unknown mode or a non-positive temperature.
    """
    dtype = probs.dtype if probs.is_floating_point() else torch.float32
    if mode == "hard":
        return (probs >= delta).to(dtype)
    if mode == "soft":
        if not temperature > 0:
            raise DataError(f"pseudo_label: temperature must be > 0, got {temperature!r}")
        return torch.sigmoid((probs.to(dtype) - delta) / temperature)
    raise DataError(f"pseudo_label: mode must be 'hard' or 'soft', got {mode!r}")


def confident_fraction(probs: Tensor, delta: float) -> Tensor:
    """Share of pixels on which the teacher is confident, ``mean(max(p, 1 - p) >= delta)`` (for logging).

    Args:
        probs: Teacher probabilities, any shape.
        delta: Confidence threshold.

    Returns:
        0-dim float32 tensor in ``[0, 1]`` (0 for an empty input).
    """
    if probs.numel() == 0:
        return torch.zeros((), dtype=torch.float32, device=probs.device)
    conf = torch.maximum(probs, 1 - probs) >= delta
    return conf.to(torch.float32).mean()


def _has_fixed_point(perm: Tensor) -> bool:
    """Whether ``perm[i] == i`` for some ``i``: read as Python ints for a host tensor, no dispatched op."""
    if perm.device.type == "cpu":
        return any(i == j for i, j in enumerate(perm.tolist()))
    return bool((perm == torch.arange(len(perm), device=perm.device)).any())  # device draws: a read-back each


def random_permutation(
    batch: int,
    generator: torch.Generator,
    device: torch.device | str | None = None,
    derangement: bool = True,
) -> Tensor:
    """Random partner assignment ``j = perm[i]`` for T-PatchMix (step 1 of ``docs/methods.md`` Sec. 6.4).

    The public code uses a plain ``randperm``, whose expected number of fixed points (samples paired with
    themselves, for which mixing is a no-op) is 1 per batch. With ``derangement=True`` (default, and only when
    ``batch > 1``) permutations are redrawn until none has a fixed point, which samples **uniformly among
    derangements** (rejection sampling; acceptance probability about 1/e, so about 2.7 draws on average).

    Args:
        batch: Batch size ``B`` (>= 0).
        generator: Source of randomness (the permutation is drawn on its device).
        device: Device of the result (default: the generator's device).
        derangement: Forbid ``perm[i] == i`` when ``batch > 1``.

    Returns:
        ``[B]`` long tensor, a permutation of ``0..B-1``.

    Raises:
        DataError: If ``batch`` is negative.
    """
    if batch < 0:
        raise DataError(f"random_permutation: batch must be >= 0, got {batch!r}")
    gdev = generator.device
    perm = torch.randperm(batch, generator=generator, device=gdev)
    if derangement and batch > 1:
        # rejection sampling: uniform over derangements; a host generator's draws are checked on the host
        while _has_fixed_point(perm):
            perm = torch.randperm(batch, generator=generator, device=gdev)
    return to_device(perm, device)
