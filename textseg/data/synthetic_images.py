"""The synthetic sample generator: chest-X-ray-like and CT-like images with lesions where the text says.

:func:`generate_sample` draws one image, its mask and its referring text from a :class:`SyntheticConfig`
(:func:`qata_sized_config`, :func:`ct_config`); :mod:`textseg.data.synthetic` writes whole trees of them in the
real on-disk layouts and reads them back. Regions follow ``docs/data.md`` §4.1/§9 (:func:`region_boxes`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from PIL import Image

from textseg.data.base import NUM_REGIONS, Position
from textseg.errors import DataError

__all__ = [
    "SPLIT_FOLDERS",
    "SyntheticConfig",
    "SyntheticSample",
    "caption_for",
    "ct_config",
    "generate_sample",
    "qata_sized_config",
    "region_boxes",
]

#: Split folder names of the SGSeg layout and their index in the per-sample seed.
SPLIT_FOLDERS: tuple[tuple[str, str], ...] = (("train", "train"), ("val", "valid"), ("test", "test"))
_SIDE_WORDS = ("left", "right")
_LEVEL_WORDS = ("upper", "middle", "lower")
_COUNT_WORDS = ("one infected area", "two infected areas", "three infected areas")


@dataclass(frozen=True)
class SyntheticConfig:
    """Appearance and geometry of the synthetic images (lengths are fractions of the image size).

    Attributes:
        lung_top: Top of the lung-field band (also the top of the region grid).
        lung_bottom: Bottom of the lung-field band.
        lung_center_x: Horizontal centre of the image-left lung (the right lung is mirrored).
        lung_half_width: Horizontal semi-axis of a lung field.
        lung_jitter: Uniform jitter of lung centre and width.
        lung_shape_power: Super-ellipse exponent of the lung outline (2 = ellipse; larger = boxier).
        edge_softness: Width of the soft body/lung edges.
        body_center_y: Vertical centre of the body ellipse.
        body_half_width: Horizontal semi-axis of the body ellipse.
        body_half_height: Vertical semi-axis of the body ellipse.
        background_level: Grey level outside the body.
        body_level: Grey level of soft tissue.
        lung_darkening: How much darker the lung fields are than the body.
        mediastinum_level: Extra brightness of the central mediastinum band.
        mediastinum_half_width: Half width of that band.
        rib_count: Number of rib bands over the lung height.
        rib_level: Brightness of the rib bands.
        rib_curvature: Downward bend of the ribs towards the lateral side (rib periods per squared unit of
            lateral distance).
        smooth_noise_level: Amplitude of the low-frequency texture.
        smooth_noise_cells: Resolution (cells per side) of that texture before upsampling.
        fine_noise_level: Standard deviation of per-pixel noise.
        gain_range: Range of the global contrast factor.
        offset_range: Range of the global brightness offset.
        lesion_probs: Probabilities of 1, 2 and 3 lesion regions.
        distractor_probs: Probabilities of 1 and 2 distractors.
        no_distractor_prob: Probability that a sample has no distractor at all (drawn after ``distractor_probs``,
            and only when > 0, so the default output is unchanged). Real QaTa texts name every infected area, so a
            QaTa image has no look-alike opacity outside the text; 0 (the default) keeps every sample ambiguous
            without its text.
        opacity_sigma: Range of the Gaussian width of an opacity component.
        opacity_level: Range of the opacity brightness (grey levels at the peak).
        distractor_level: Range of the distractors' brightness; ``None`` (the default) draws them from
            ``opacity_level``, so they look exactly like the lesions and only the text tells them apart. A range
            that overlaps ``opacity_level`` but sits lower makes them partly distinguishable in the image, as the
            non-infectious opacities of a real radiograph are (the same random draws either way).
        opacity_aspect_y: Range of the vertical width factor of a component (irregular shapes).
        opacity_aspect_x: Range of the horizontal width factor (opacities may spread along the lung width).
        opacity_components: Range (inclusive) of Gaussian components per opacity (irregular outline).
        opacity_spread: Offset of the extra components, in units of the component width.
        mask_threshold: Part of the peak brightness above which an opacity pixel is lesion (mask = 1).
        opacity_edge_taper: Width of a smooth fade of an opacity to zero at its region box border (0 = a hard cut,
            invisible for the default widths, whose profile is near zero there; wide opacities such as those of
            :func:`qata_sized_config` need a fade, or the box edge shows as a bright straight line).
        modality: ``"xray"`` (QaTa-like, SGSeg layout) or ``"ct"`` (MosMed-like, Kaggle layout, modality 1).
        spine_level: Brightness of the vertebral body disc (CT; 0 = none).
        spine_center_y: Vertical centre of that disc.
        spine_radius: Radius of that disc.
        vessel_count: Bright vessel dots per lung (CT; 0 = none).
        vessel_level: Brightness of a vessel dot.
        vessel_sigma: Gaussian width of a vessel dot.
    """

    lung_top: float = 0.18
    lung_bottom: float = 0.86
    lung_center_x: float = 0.29
    lung_half_width: float = 0.16
    lung_jitter: float = 0.015
    lung_shape_power: float = 2.6
    edge_softness: float = 0.015
    body_center_y: float = 0.62
    body_half_width: float = 0.47
    body_half_height: float = 0.62
    background_level: float = 18.0
    body_level: float = 170.0
    lung_darkening: float = 100.0
    mediastinum_level: float = 25.0
    mediastinum_half_width: float = 0.06
    rib_count: float = 8.0
    rib_level: float = 22.0
    rib_curvature: float = 30.0
    smooth_noise_level: float = 10.0
    smooth_noise_cells: int = 8
    fine_noise_level: float = 4.0
    gain_range: tuple[float, float] = (0.8, 1.15)
    offset_range: tuple[float, float] = (-20.0, 20.0)
    lesion_probs: tuple[float, float, float] = (0.4, 0.4, 0.2)
    distractor_probs: tuple[float, float] = (0.5, 0.5)
    no_distractor_prob: float = 0.0
    opacity_sigma: tuple[float, float] = (0.03, 0.05)
    opacity_level: tuple[float, float] = (55.0, 80.0)
    distractor_level: tuple[float, float] | None = None
    opacity_aspect_y: tuple[float, float] = (0.7, 1.1)
    opacity_aspect_x: tuple[float, float] = (0.8, 1.8)
    opacity_components: tuple[int, int] = (1, 3)
    opacity_spread: float = 0.7
    mask_threshold: float = 0.5
    opacity_edge_taper: float = 0.0
    modality: str = "xray"
    spine_level: float = 0.0
    spine_center_y: float = 0.8
    spine_radius: float = 0.05
    vessel_count: int = 0
    vessel_level: float = 40.0
    vessel_sigma: float = 0.006


def qata_sized_config() -> SyntheticConfig:
    """The X-ray-like appearance with QaTa-sized lesions: about 6 % of the image instead of 2 %.

    The seven real QaTa example masks (``docs/data.md`` §11) cover 1.3-21 % of the image (mean 9 %); the default
    opacities are small, so T-PatchMix's lesion gate (Eq. 7 of Semi-MedRef) rarely accepts a block on them. Wider
    opacities fade out at their region box border (``opacity_edge_taper``), so the box does not show as a line.
    """
    return SyntheticConfig(opacity_sigma=(0.06, 0.10), opacity_edge_taper=0.05)


def ct_config() -> SyntheticConfig:
    """The CT-like appearance (axial slice): black air, very dark lungs, spine, vessels, no ribs, grey lesions."""
    return SyntheticConfig(
        modality="ct",
        lung_top=0.26,
        lung_bottom=0.78,
        lung_center_x=0.31,
        lung_half_width=0.15,
        lung_shape_power=2.2,
        body_center_y=0.52,
        body_half_width=0.45,
        body_half_height=0.37,
        background_level=4.0,
        body_level=125.0,
        lung_darkening=112.0,
        mediastinum_level=35.0,
        mediastinum_half_width=0.07,
        rib_level=0.0,
        smooth_noise_level=5.0,
        fine_noise_level=6.0,
        gain_range=(0.9, 1.1),
        offset_range=(-8.0, 8.0),
        opacity_level=(50.0, 75.0),
        spine_level=100.0,
        vessel_count=10,
    )


@dataclass
class SyntheticSample:
    """One generated sample.

    Attributes:
        image: ``uint8 [H, W]`` greyscale image.
        mask: ``uint8 [H, W]`` lesion mask in ``{0, 1}``.
        distractor_mask: ``uint8 [H, W]`` in ``{0, 1}``: the distractor opacities (not part of ``mask``).
        position: Regions with a lesion, ``[L-up, L-mid, L-low, R-up, R-mid, R-low]``.
        distractor_regions: Regions with a distractor (disjoint from ``position``).
        caption: LViT-style referring text naming exactly the regions in ``position``.
    """

    image: np.ndarray
    mask: np.ndarray
    distractor_mask: np.ndarray
    position: Position
    distractor_regions: tuple[int, ...]
    caption: str = field(default="")


def region_boxes(image_size: int, config: SyntheticConfig | None = None) -> list[tuple[int, int, int, int]]:
    """Pixel boxes of the six regions: image left/right half x thirds of the lung-field band.

    Args:
        image_size: Side of the (square) image.
        config: Geometry (default :class:`SyntheticConfig`).

    Returns:
        Six ``(row0, row1, col0, col1)`` half-open boxes in region order (``L-up`` ... ``R-low``).
    """
    cfg = config or SyntheticConfig()
    edges = np.linspace(cfg.lung_top, cfg.lung_bottom, 4) * image_size
    rows = [round(float(v)) for v in edges]
    half = image_size // 2
    boxes = []
    for c0, c1 in ((0, half), (half, image_size)):
        for level in range(3):
            boxes.append((rows[level], rows[level + 1], c0, c1))
    return boxes


def caption_for(position: Sequence[int], count: Literal["sides", "lesions"] = "sides") -> str:
    """LViT-style referring text for a positional label.

    Args:
        position: Six 0/1 values ``[L-up, L-mid, L-low, R-up, R-mid, R-low]`` with at least one 1.
        count: What the count word counts: affected sides (most QaTa texts) or lesions (MosMed texts).

    Returns:
        E.g. ``"Bilateral pulmonary infection, two infected areas, lower left lung and middle right lung."``;
        a side with all three levels is written ``"all left lung"``.

    Raises:
        DataError: For an empty or malformed label.
    """
    if len(position) != NUM_REGIONS or not any(position) or any(v not in (0, 1) for v in position):
        raise DataError(f"cannot caption positional label {list(position)!r}")
    parts = []
    for side in range(2):
        levels = [_LEVEL_WORDS[i] for i in range(3) if position[3 * side + i]]
        if not levels:
            continue
        words = "all" if len(levels) == 3 else " ".join(levels)
        parts.append(f"{words} {_SIDE_WORDS[side]} lung")
    lateral = "Bilateral" if len(parts) == 2 else "Unilateral"
    n = len(parts) if count == "sides" else int(sum(position))
    return f"{lateral} pulmonary infection, {_COUNT_WORDS[min(n, len(_COUNT_WORDS)) - 1]}, {' and '.join(parts)}."


def _sigmoid(x: np.ndarray) -> np.ndarray:
    """Logistic function written with tanh (no overflow for large arguments)."""
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Low-frequency noise: a ``cells x cells`` Gaussian grid upsampled bilinearly to ``size``."""
    grid = rng.standard_normal((cells, cells)).astype(np.float32)
    up = Image.fromarray(grid, mode="F").resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(up, dtype=np.float32)


def _opacity(
    rng: np.random.Generator,
    box: tuple[int, int, int, int],
    lung: np.ndarray,
    size: int,
    cfg: SyntheticConfig,
) -> np.ndarray:
    """Brightness profile (peak 1) of one opacity: zero outside ``box``, centred in the lung where possible.

    Along each axis the centre keeps a distance of ``(opacity_spread + sqrt(-2 ln mask_threshold) * max
    aspect) * sigma`` from the box border where the box is large enough, so the part above ``mask_threshold``
    (the mask) lies inside the box; the profile is zero outside the box in any case.
    """
    sigma = rng.uniform(*cfg.opacity_sigma) * size
    reach = float(np.sqrt(-2.0 * np.log(cfg.mask_threshold)))
    margin_y = (cfg.opacity_spread + reach * cfg.opacity_aspect_y[1]) * sigma + 1.0
    margin_x = (cfg.opacity_spread + reach * cfg.opacity_aspect_x[1]) * sigma + 1.0
    r0, r1, c0, c1 = box
    # Restrict the horizontal range to the lung's extent inside the box.
    cols = np.nonzero(lung[(r0 + r1) // 2, c0:c1] > 0.5)[0]
    lo_c, hi_c = (c0 + cols[0], c0 + cols[-1]) if cols.size else (c0, c1 - 1)
    lo_y, hi_y = r0 + margin_y, r1 - 1 - margin_y
    lo_x, hi_x = max(lo_c, c0 + margin_x), min(hi_c, c1 - 1 - margin_x)
    cy = rng.uniform(lo_y, hi_y) if hi_y > lo_y else (r0 + r1 - 1) / 2
    cx = rng.uniform(lo_x, hi_x) if hi_x > lo_x else (lo_c + hi_c) / 2
    n_comp = int(rng.integers(cfg.opacity_components[0], cfg.opacity_components[1] + 1))
    yy = np.arange(r0, r1, dtype=np.float32)[:, None]
    xx = np.arange(c0, c1, dtype=np.float32)[None, :]
    local = np.zeros((r1 - r0, c1 - c0), dtype=np.float32)
    for k in range(n_comp):
        if k == 0:
            dy = dx = 0.0
        else:
            angle = rng.uniform(0, 2 * np.pi)
            dy, dx = cfg.opacity_spread * sigma * np.sin(angle), cfg.opacity_spread * sigma * np.cos(angle)
        sy, sx = sigma * rng.uniform(*cfg.opacity_aspect_y), sigma * rng.uniform(*cfg.opacity_aspect_x)
        comp = np.exp(-(((yy - cy - dy) / sy) ** 2 + ((xx - cx - dx) / sx) ** 2) / 2)
        np.maximum(local, comp, out=local)
    if cfg.opacity_edge_taper > 0:  # smoothstep from 0 at the box border to 1 at the taper width inside
        width = cfg.opacity_edge_taper * size
        for a, lo, hi in ((yy, r0, r1), (xx, c0, c1)):
            t = np.clip((np.minimum(a - lo, hi - 1 - a) + 0.5) / width, 0.0, 1.0)
            local *= t * t * (3 - 2 * t)
    profile = np.zeros(lung.shape, dtype=np.float32)
    profile[r0:r1, c0:c1] = local
    return profile


def generate_sample(
    seed: int, split: str, index: int, image_size: int, config: SyntheticConfig | None = None
) -> SyntheticSample:
    """Generate one sample deterministically from ``(seed, split, index)``.

    Args:
        seed: Dataset seed.
        split: ``"train"``, ``"val"`` or ``"test"``.
        index: Index of the sample in its split.
        image_size: Side of the square image (a multiple of 32).
        config: Appearance and geometry (default :class:`SyntheticConfig`).

    Returns:
        The sample.

    Raises:
        DataError: For an unknown split.
    """
    cfg = config or SyntheticConfig()
    split_ids = {name: i for i, (name, _) in enumerate(SPLIT_FOLDERS)}
    if split not in split_ids:
        raise DataError(f"unknown split {split!r}; expected train, val or test")
    rng = np.random.default_rng(np.random.SeedSequence([seed, split_ids[split], index]))
    size = image_size
    coords = (np.arange(size, dtype=np.float32) + 0.5) / size
    yn, xn = coords[:, None], coords[None, :]  # broadcast to [size, size]
    full = (size, size)
    soft = cfg.edge_softness

    # Body: a wide ellipse, soft-edged.
    body_r = ((xn - 0.5) / cfg.body_half_width) ** 2 + ((yn - cfg.body_center_y) / cfg.body_half_height) ** 2
    body = _sigmoid((1.0 - np.sqrt(body_r)) / (soft * 2))
    # Lung fields: two super-ellipses spanning the lung band vertically.
    cy = (cfg.lung_top + cfg.lung_bottom) / 2
    ay = (cfg.lung_bottom - cfg.lung_top) / 2
    lung = np.zeros(full, dtype=np.float32)
    rib_phase = rng.uniform(0, 1)
    ribs = np.zeros(full, dtype=np.float32)
    for side in (0, 1):
        cx = cfg.lung_center_x + rng.uniform(-cfg.lung_jitter, cfg.lung_jitter)
        cx = cx if side == 0 else 1.0 - cx
        ax = cfg.lung_half_width + rng.uniform(-cfg.lung_jitter, cfg.lung_jitter)
        dist = np.abs((xn - cx) / ax) ** cfg.lung_shape_power + np.abs((yn - cy) / ay) ** cfg.lung_shape_power
        on_side = (xn < 0.5) if side == 0 else (xn >= 0.5)  # each lung stays in its image half
        field_ = _sigmoid((1.0 - dist ** (1 / cfg.lung_shape_power)) / soft) * on_side
        lung = np.maximum(lung, field_)
        lateral = (xn - cx) * (1 if side == 1 else -1)  # > 0 towards the image border
        phase = (yn - cfg.lung_top) / (2 * ay) * cfg.rib_count + cfg.rib_curvature * lateral**2 + rib_phase
        ribs += field_ * (0.5 + 0.5 * np.cos(2 * np.pi * phase)) ** 6
    mediastinum = np.exp(-(((xn - 0.5) / cfg.mediastinum_half_width) ** 2))

    image = cfg.background_level + (cfg.body_level - cfg.background_level) * body
    image = image - cfg.lung_darkening * lung + cfg.mediastinum_level * mediastinum * body + cfg.rib_level * ribs
    image += cfg.smooth_noise_level * _smooth_noise(rng, size, cfg.smooth_noise_cells) * body
    if cfg.spine_level > 0:
        spine_r = np.sqrt((xn - 0.5) ** 2 + (yn - cfg.spine_center_y) ** 2) / cfg.spine_radius
        image += cfg.spine_level * _sigmoid((1.0 - spine_r) / (soft * 4))
    if cfg.vessel_count > 0:
        inside = np.argwhere(lung > 0.9)
        picks = inside[rng.integers(0, len(inside), size=2 * cfg.vessel_count)] if len(inside) else inside
        for vy, vx in picks:
            dots = ((yn - (vy + 0.5) / size) ** 2 + (xn - (vx + 0.5) / size) ** 2) / (2 * cfg.vessel_sigma**2)
            image += cfg.vessel_level * np.exp(-dots)

    # Lesions in the named regions, distractors in other regions.
    boxes = region_boxes(size, cfg)
    n_lesions = int(rng.choice(np.arange(1, 4), p=np.asarray(cfg.lesion_probs)))
    regions = rng.permutation(NUM_REGIONS)
    lesion_regions = sorted(int(r) for r in regions[:n_lesions])
    n_distractors = int(rng.choice(np.arange(1, 3), p=np.asarray(cfg.distractor_probs)))
    if cfg.no_distractor_prob > 0 and rng.uniform() < cfg.no_distractor_prob:  # no extra draw at the default 0
        n_distractors = 0
    distractor_regions = sorted(int(r) for r in regions[n_lesions : n_lesions + n_distractors])
    lesion_field = np.zeros(full, dtype=np.float32)
    distractor_field = np.zeros(full, dtype=np.float32)
    distractor_level = cfg.distractor_level or cfg.opacity_level
    for region in lesion_regions + distractor_regions:
        profile = _opacity(rng, boxes[region], lung, size, cfg)
        is_lesion = region in lesion_regions
        image += rng.uniform(*(cfg.opacity_level if is_lesion else distractor_level)) * profile
        target = lesion_field if is_lesion else distractor_field
        np.maximum(target, profile, out=target)

    image += cfg.fine_noise_level * rng.standard_normal(image.shape, dtype=np.float32)
    gain, offset = rng.uniform(*cfg.gain_range), rng.uniform(*cfg.offset_range)
    image = np.clip(np.round(image * gain + offset), 0, 255).astype(np.uint8)
    mask = (lesion_field >= cfg.mask_threshold).astype(np.uint8)
    distractor_mask = (distractor_field >= cfg.mask_threshold).astype(np.uint8) * (1 - mask)
    position = tuple(int(r in lesion_regions) for r in range(NUM_REGIONS))
    return SyntheticSample(
        image=image,
        mask=mask,
        distractor_mask=distractor_mask.astype(np.uint8),
        position=position,  # type: ignore[arg-type]
        distractor_regions=tuple(distractor_regions),
        caption=caption_for(position, "lesions" if cfg.modality == "ct" else "sides"),
    )
