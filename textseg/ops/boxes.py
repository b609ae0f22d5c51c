"""Region boxes and block samplers of T-PatchMix (Semi-MedRef, Li et al., Sec. 2.3) and the CutMix baseline.

* :func:`region_box` / :func:`position_boxes` -- the coarse lung region named by a positional phrase (image sides in
  display orientation, ``docs/data.md`` Sec. 9; vertical thirds);
* :func:`sample_box_blocks` -- the paper's position-constrained blocks (``pos``);
* :func:`sample_prob_blocks` -- probability-driven blocks (``prob``);
* :func:`sample_random_blocks` -- blocks anywhere (``random``);
* :func:`cutmix_boxes` -- naive CutMix (one random rectangle, Table 3 ablation);
* :func:`boxes_to_mask` -- rasterise boxes to ``[B, 1, H, W]`` masks.

Pure functions: randomness only from the explicit ``torch.Generator`` (see :mod:`textseg.ops.mixing`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

from textseg.errors import DataError
from textseg.ops import text_aug
from textseg.ops.asserts import assert_on_device
from textseg.ops.transfer import to_device

#: Horizontal halves, image sides in display orientation (``docs/data.md`` Sec. 9).
SIDES: tuple[str, str] = ("left", "right")
#: Vertical thirds, top to bottom.
LEVELS: tuple[str, str, str] = ("upper", "middle", "lower")


# ----------------------------------------------------------------------------------------------------
# validation helpers


def _check_prob(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and 0.0 <= float(value) <= 1.0):
        raise DataError(f"{name} must be a probability in [0, 1], got {value!r}")


def _check_block(block: int) -> None:
    if isinstance(block, bool) or not isinstance(block, int) or block < 1:
        raise DataError(f"block must be a positive int (pixels), got {block!r}")


def _check_size(height: int, width: int) -> None:
    if height < 1 or width < 1:
        raise DataError(f"image size must be positive, got height={height!r}, width={width!r}")


def _check_map(name: str, t: Tensor, batch: int | None = None, channels: int | None = 1) -> None:
    """Require a ``[B, C, H, W]`` tensor (``C == channels`` when given, ``B == batch`` when given)."""
    if t.dim() != 4:
        raise DataError(f"{name} must have shape [B, C, H, W], got {tuple(t.shape)}")
    if channels is not None and t.shape[1] != channels:
        raise DataError(f"{name} must have {channels} channel(s), got shape {tuple(t.shape)}")
    if batch is not None and t.shape[0] != batch:
        raise DataError(f"{name} has batch size {t.shape[0]}, expected {batch}")


def _uniform(n: int, generator: torch.Generator, device: torch.device | None) -> Tensor:
    """``n`` float64 draws from U[0, 1) on the generator's device, moved to ``device``."""
    u = torch.rand(n, generator=generator, device=generator.device, dtype=torch.float64)
    return to_device(u, device)


def _float_dtype(t: Tensor) -> torch.dtype:
    """At least float32 (float64 stays float64) -- the dtype used for reductions."""
    return torch.promote_types(t.dtype, torch.float32) if t.is_floating_point() else torch.float32


# ----------------------------------------------------------------------------------------------------
# boxes and block samplers


def region_box(
    side: Literal["left", "right"], levels: Sequence[str], height: int, width: int
) -> tuple[int, int, int, int]:
    """Coarse lung region of a positional phrase as a pixel box (``docs/methods.md`` Sec. 6.4, step 2).

    Image-side display convention: "left" -> columns ``[0, W // 2)``, "right" -> ``[W // 2, W)``;
    "upper", "middle", "lower" -> rows ``[0, H // 3)``, ``[H // 3, 2H // 3)``, ``[2H // 3, H)``. Several
    levels give the union **span** (from the first named third to the last, so "upper lower" covers the
    middle third too, as in the public code); no levels gives all rows.

    Args:
        side: "left" or "right" (case-insensitive).
        levels: Any of "upper", "middle", "lower" (case-insensitive, any order, may be empty).
        height: Image height ``H`` (>= 3, so that every third is non-empty).
        width: Image width ``W`` (>= 2).

    Returns:
        ``(row0, row1, col0, col1)``, half-open: rows ``[row0, row1)``, columns ``[col0, col1)``.

    Raises:
        DataError: For an unknown side or level, or an image too small to split.
    """
    s = str(side).strip().lower()
    if s not in SIDES:
        raise DataError(f"region_box: side must be one of {SIDES}, got {side!r}")
    if height < 3 or width < 2:
        raise DataError(f"region_box: image must be at least 3x2 pixels, got height={height}, width={width}")
    thirds = {
        "upper": (0, height // 3),
        "middle": (height // 3, 2 * height // 3),
        "lower": (2 * height // 3, height),
    }
    spans = []
    for level in levels:
        key = str(level).strip().lower()
        if key not in thirds:
            raise DataError(f"region_box: level must be one of {LEVELS}, got {level!r}")
        spans.append(thirds[key])
    row0, row1 = (min(a for a, _ in spans), max(b for _, b in spans)) if spans else (0, height)
    col0, col1 = (0, width // 2) if s == "left" else (width // 2, width)
    return row0, row1, col0, col1


def boxes_to_mask(boxes: Tensor, height: int, width: int, active: Tensor | None = None) -> Tensor:
    """Rasterise one half-open box per sample into a ``{0, 1}`` mask.

    Args:
        boxes: ``[B, 4]`` integer ``(row0, row1, col0, col1)`` per sample (half-open, may be empty).
        height: Mask height ``H``.
        width: Mask width ``W``.
        active: Optional ``[B]`` bool; samples with ``False`` get an empty mask.

    Returns:
        ``[B, 1, H, W]`` float32 mask on ``boxes.device``.

    Raises:
        DataError: If ``boxes`` is not ``[B, 4]`` or ``active`` is not ``[B]``.
    """
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        raise DataError(f"boxes must have shape [B, 4], got {tuple(boxes.shape)}")
    _check_size(height, width)
    b = boxes.to(torch.long)
    rows = torch.arange(height, device=boxes.device)
    cols = torch.arange(width, device=boxes.device)
    in_r = (rows[None, :] >= b[:, 0:1]) & (rows[None, :] < b[:, 1:2])
    in_c = (cols[None, :] >= b[:, 2:3]) & (cols[None, :] < b[:, 3:4])
    mask = in_r[:, :, None] & in_c[:, None, :]
    if active is not None:
        if active.shape != (boxes.shape[0],):
            raise DataError(f"active must have shape [{boxes.shape[0]}], got {tuple(active.shape)}")
        mask = mask & to_device(active, boxes.device, torch.bool)[:, None, None]
    return mask[:, None].to(torch.float32)


def _place(lo: Tensor, hi: Tensor, size: int, u: Tensor) -> tuple[Tensor, Tensor]:
    """Uniform start of a ``min(size, hi - lo)`` long segment in ``[lo, hi)``; returns (start, length)."""
    extent = hi - lo
    length = extent.clamp(max=size)
    slots = (extent - length + 1).clamp(min=1)
    offset = torch.floor(u * slots.to(u.dtype)).to(torch.long)
    offset = torch.minimum(offset, slots - 1)
    return lo + offset, length


def position_boxes(
    texts: Sequence[str], perm: Tensor | Sequence[int], height: int, width: int
) -> tuple[Tensor, Tensor]:
    """Region boxes of position-constrained T-PatchMix and where mixing is allowed (``docs/methods.md`` §6.4 step 2).

    Sample i's box is the region of the first positional phrase of its (student) text (:func:`region_box`). Mixing
    is disabled where that text has no phrase, or where the partner ``j = perm[i]`` names the other side
    (laterality conflict); those rows get the whole image as a placeholder box.

    Args:
        texts: The ``B`` student texts.
        perm: ``[B]`` partner permutation, as host ints or a host tensor (a device tensor is read back: a sync).
        height: Image height ``H``.
        width: Image width ``W``.

    Returns:
        ``([B, 4]`` int64 boxes ``(row0, row1, col0, col1)``, ``[B]`` bool ``allowed``).
    """
    boxes, allowed = [], []
    for i, j in enumerate(perm.tolist() if isinstance(perm, Tensor) else perm):
        pi, pj = text_aug.first_phrase(texts[i]), text_aug.first_phrase(texts[j])
        ok = pi is not None and (pj is None or pi.side == pj.side)
        boxes.append(region_box(pi.side, pi.levels, height, width) if ok and pi else (0, height, 0, width))
        allowed.append(ok)
    return torch.tensor(boxes, dtype=torch.int64), torch.tensor(allowed, dtype=torch.bool)


def sample_box_blocks(
    boxes: Tensor,
    allowed: Tensor,
    block: int,
    prob: float,
    height: int,
    width: int,
    generator: torch.Generator,
    device: torch.device | str | None = None,
) -> Tensor:
    """Position-constrained T-PatchMix masks (Sec. 2.3 "(i)", ``docs/methods.md`` Sec. 6.4 step 3).

    For every sample, with probability ``prob`` and only where ``allowed``, one ``block x block`` square is
    placed uniformly at random inside the sample's box (every fitting integer position equally likely). If the
    box is smaller than a block along an axis, the block is clipped to the box along that axis.

    Random numbers: three ``U[0, 1)`` vectors of length ``B`` (mix decision, row offset, column offset) are
    drawn from ``generator`` for every call, whatever ``allowed`` holds, so the stream consumed is fixed.

    Args:
        boxes: ``[B, 4]`` integer ``(row0, row1, col0, col1)`` from :func:`region_box` (half-open). Rows of
            disallowed samples are ignored.
        allowed: ``[B]`` bool; ``False`` where mixing is disabled (no phrase, or conflicting laterality).
        block: Block side in pixels (16 in the paper).
        prob: Per-sample probability of placing a block (``mix_prob``, 0.08 in the published configs).
        height: Image height ``H``.
        width: Image width ``W``.
        generator: Source of randomness.
        device: Device of the returned mask (default: ``boxes.device``). The boxes are checked where they are
            (pass them on the CPU, as :func:`position_boxes` returns them, so that the check does not wait for
            the accelerator) and moved there once.

    Returns:
        ``[B, 1, H, W]`` float32 mask in ``{0, 1}``.

    Raises:
        DataError: On bad shapes, ``block``/``prob`` values, or an allowed box that is empty or leaves the
            image.
    """
    _check_block(block)
    _check_prob("prob", prob)
    _check_size(height, width)
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        raise DataError(f"sample_box_blocks: boxes must have shape [B, 4], got {tuple(boxes.shape)}")
    n = boxes.shape[0]
    if allowed.shape != (n,):
        raise DataError(f"sample_box_blocks: allowed must have shape [{n}], got {tuple(allowed.shape)}")
    b = boxes.to(torch.long)
    ok = allowed.to(device=boxes.device, dtype=torch.bool)
    r0, r1, c0, c1 = b.unbind(1)
    bad = ok & ((r0 < 0) | (r1 > height) | (r0 >= r1) | (c0 < 0) | (c1 > width) | (c0 >= c1))
    assert_on_device(~bad.any(), f"sample_box_blocks: a box is empty or outside the {height}x{width} image")
    dev = boxes.device if device is None else torch.device(device)
    u = _uniform(3 * n, generator, dev).view(3, n)
    r0, r1, c0, c1 = to_device(b, dev).unbind(1)  # one copy of the boxes, one of the flags
    active = to_device(ok, dev) & (u[0] < prob)
    top, bh = _place(r0, r1, block, u[1])
    left, bw = _place(c0, c1, block, u[2])
    return boxes_to_mask(torch.stack([top, top + bh, left, left + bw], dim=1), height, width, active)


def sample_random_blocks(
    batch: int,
    block: int,
    prob: float,
    height: int,
    width: int,
    generator: torch.Generator,
    device: torch.device | str | None = None,
) -> Tensor:
    """T-PatchMix ``random`` mode: one ``block x block`` square anywhere, with probability ``prob``.

    Equivalent to :func:`sample_box_blocks` with the whole image as every sample's box (same random stream).

    Args:
        batch: Batch size ``B``.
        block: Block side in pixels (clipped to the image if larger).
        prob: Per-sample probability of placing a block.
        height: Image height ``H``.
        width: Image width ``W``.
        generator: Source of randomness.
        device: Device of the returned mask (default: CPU).

    Returns:
        ``[B, 1, H, W]`` float32 mask in ``{0, 1}``.
    """
    boxes = torch.tensor([[0, height, 0, width]], dtype=torch.long).expand(batch, 4)
    allowed = torch.ones(batch, dtype=torch.bool)
    return sample_box_blocks(boxes, allowed, block, prob, height, width, generator, device)


def sample_prob_blocks(
    probs_partner: Tensor, threshold: float, block: int, prob: float, generator: torch.Generator
) -> Tensor:
    """Probability-driven T-PatchMix masks (Sec. 2.3 "(ii)", ``docs/methods.md`` Sec. 6.4 mode ``prob``).

    For every sample, with probability ``prob``, a pixel is drawn uniformly among those where the partner's
    teacher probability ``P_j >= threshold``, and a ``block x block`` square is centred on it (top-left
    ``(y - block // 2, x - block // 2)``, shifted to stay inside the image; clipped if the block exceeds the
    image). Samples with no such pixel get no block.

    Random numbers: two ``U[0, 1)`` vectors of length ``B`` (mix decision, which candidate pixel).

    Args:
        probs_partner: ``[B, 1, H, W]`` teacher probabilities of each sample's partner, ``P_j``.
        threshold: Candidate threshold on ``P_j`` (the gate's delta, 0.55, in the public code).
        block: Block side in pixels.
        prob: Per-sample probability of placing a block.
        generator: Source of randomness.

    Returns:
        ``[B, 1, H, W]`` float32 mask in ``{0, 1}`` on ``probs_partner.device``.

    Raises:
        DataError: On a bad shape or ``block``/``prob`` value.
    """
    _check_map("probs_partner", probs_partner)
    _check_block(block)
    _check_prob("prob", prob)
    n, _, height, width = probs_partner.shape
    device = probs_partner.device
    u = _uniform(2 * n, generator, device).view(2, n)
    cand = (probs_partner[:, 0] >= threshold).reshape(n, -1)
    csum = cand.to(torch.long).cumsum(dim=1)
    count = csum[:, -1]
    k = torch.minimum(torch.floor(u[1] * count.to(u.dtype)).to(torch.long), (count - 1).clamp(min=0))
    flat = (csum > k[:, None]).to(torch.int8).argmax(dim=1)  # index of the (k+1)-th candidate
    cy, cx = flat // width, flat % width
    bh, bw = min(block, height), min(block, width)
    top = (cy - bh // 2).clamp(min=0, max=height - bh)
    left = (cx - bw // 2).clamp(min=0, max=width - bw)
    active = (u[0] < prob) & (count > 0)
    boxes = torch.stack([top, top + bh, left, left + bw], dim=1)
    return boxes_to_mask(boxes, height, width, active)


def cutmix_boxes(
    batch: int,
    height: int,
    width: int,
    generator: torch.Generator,
    area: tuple[float, float] = (0.02, 0.4),
    aspect: tuple[float, float] = (0.3, 1.0 / 0.3),
    prob: float = 1.0,
    device: torch.device | str | None = None,
) -> Tensor:
    """Naive CutMix masks (Yun et al., ICCV 2019) for the Table 3 "CutMix" ablation.

    One random rectangle per sample, placed without regard to the text or the lesion. The area ratio is drawn
    from ``U(area[0], area[1])`` (CutMix's ``Beta(1, 1)`` mixing ratio restricted to an interval; the default
    ``(0.02, 0.4)`` and the aspect range ``(0.3, 1/0.3)`` are the CutMix box of semi-supervised segmentation
    practice, e.g. UniMatch, CVPR 2023). The aspect ratio ``h / w`` is log-uniform in ``aspect``. Sides are
    rounded to whole pixels and clipped to the image (so a very elongated draw can cover less than its drawn
    area), and the rectangle is placed uniformly so that it lies fully inside the image. Feed the result to
    :func:`t_patchmix` with ``delta=0`` for ungated (naive) mixing.

    Random numbers: five ``U[0, 1)`` vectors of length ``B`` (apply decision, area, aspect, top, left), drawn
    for every call.

    Args:
        batch: Batch size ``B``.
        height: Image height ``H``.
        width: Image width ``W``.
        generator: Source of randomness.
        area: ``(min, max)`` area ratio of the rectangle, ``0 < min <= max <= 1``.
        aspect: ``(min, max)`` aspect ratio ``h / w``, ``0 < min <= max``.
        prob: Per-sample probability of applying CutMix.
        device: Device of the returned mask (default: CPU).

    Returns:
        ``[B, 1, H, W]`` float32 mask in ``{0, 1}`` (the rectangle; the name follows the CutMix literature).

    Raises:
        DataError: On invalid ``area``, ``aspect``, ``prob`` or image size.
    """
    _check_size(height, width)
    _check_prob("prob", prob)
    if not (0.0 < area[0] <= area[1] <= 1.0):
        raise DataError(f"cutmix_boxes: area must satisfy 0 < min <= max <= 1, got {area!r}")
    if not (0.0 < aspect[0] <= aspect[1]):
        raise DataError(f"cutmix_boxes: aspect must satisfy 0 < min <= max, got {aspect!r}")
    dev = torch.device("cpu") if device is None else torch.device(device)
    u = _uniform(5 * batch, generator, dev).view(5, batch)
    active = u[0] < prob
    frac = area[0] + (area[1] - area[0]) * u[1]
    log_lo, log_hi = math.log(aspect[0]), math.log(aspect[1])
    ratio = torch.exp(log_lo + (log_hi - log_lo) * u[2])
    pixels = frac * (height * width)
    bh = torch.round(torch.sqrt(pixels * ratio)).to(torch.long).clamp(min=1, max=height)
    bw = torch.round(torch.sqrt(pixels / ratio)).to(torch.long).clamp(min=1, max=width)
    top = torch.minimum(torch.floor(u[3] * (height - bh + 1).to(u.dtype)).to(torch.long), height - bh)
    left = torch.minimum(torch.floor(u[4] * (width - bw + 1).to(u.dtype)).to(torch.long), width - bw)
    return boxes_to_mask(torch.stack([top, top + bh, left, left + bw], dim=1), height, width, active)
