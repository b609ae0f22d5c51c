"""MONAI dictionary transforms that turn a :class:`~textseg.datasets.base.Record` into a training sample.

Sample keys (documented once, used everywhere):

=================  ==========================================================================================
``image``          float32 ``[1, S, S]``, per-image z-scored (``NormalizeIntensityd(channel_wise=True)``); for
                   unlabeled samples this is the **weak** view (teacher input).
``image_strong``   unlabeled samples only: the **strong** view, the same geometry as ``image`` (it is derived
                   from the weak tensor after zoom/resize) plus photometric jitter and blur applied *before* the
                   z-score (``methods.md`` §6.2 Decision; ``legacy_clamp=True`` applies them after, as the public
                   code does).
``mask``           float32 ``[1, S, S]`` in {0, 1}; labeled and evaluation samples only.
``text``           the referring text (str).
``position``       int64 ``[6]`` positional label [L-up, L-mid, L-low, R-up, R-mid, R-low] (image side).
``modality``       int, 0 = X-ray, 1 = CT.
``id``             the record id (str).
``path``           the image file (str), so predictions can be written back at the original size.
``dataset``        the dataset name (str, e.g. ``"qata"``), for per-dataset metrics of composite data.
=================  ==========================================================================================

Images are kept in display orientation (array row = image row), so "left" in a text is the displayed left half.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.transforms import (
    Compose,
    CopyItemsd,
    EnsureTyped,
    MapTransform,
    NormalizeIntensityd,
    RandomizableTransform,
    RandZoomd,
    Resized,
    ScaleIntensityRanged,
)

from textseg.datasets.base import Record
from textseg.datasets.io import read_image, read_mask

#: Keys of a labeled/evaluation sample.
LABELED_KEYS = ("image", "mask", "text", "position", "modality", "id", "path", "dataset")
#: Keys of an unlabeled sample.
UNLABELED_KEYS = ("image", "image_strong", "text", "position", "modality", "id", "path", "dataset")
#: Keys of a prediction sample (no mask).
PREDICT_KEYS = ("image", "text", "position", "modality", "id", "path", "dataset")


class LoadRecordd(MapTransform):
    """Read the image (and mask) of a record into ``[1, H, W]`` float tensors, plus the text metadata.

    Args:
        with_mask: Whether to load the mask (labeled and evaluation samples).
    """

    def __init__(self, with_mask: bool = True) -> None:
        super().__init__(keys=["record"])
        self.with_mask = with_mask

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Load ``data["record"]`` and return the sample dict (without the record)."""
        rec: Record = data["record"]
        image = read_image(rec.image).astype(np.float32)[None]
        out: dict[Hashable, Any] = {
            "image": torch.from_numpy(image),
            "text": rec.text,
            "position": torch.tensor(rec.position, dtype=torch.long),
            "modality": rec.modality,
            "id": rec.id,
            "path": str(rec.image),
            "dataset": str(data.get("dataset", "")),
        }
        if self.with_mask:
            if rec.mask is None:
                from textseg.errors import DataError

                raise DataError(f"{rec.image}: no mask, but this sample is used as a labeled one")
            mask = read_mask(rec.mask).astype(np.float32)[None]
            if mask.shape != image.shape:
                from textseg.errors import DataError

                raise DataError(f"{rec.mask}: mask size {mask.shape[1:]} differs from image size {image.shape[1:]}")
            out["mask"] = torch.from_numpy(mask)
        return out


class RandJitterBlurd(RandomizableTransform, MapTransform):
    """Strong photometric view: brightness/contrast jitter then Gaussian blur (``methods.md`` §6.2).

    Reproduces torchvision's ``ColorJitter(brightness, contrast)`` (applied with probability ``jitter_prob``, the two
    operations in random order, results clipped to [0, 1]) followed by ``GaussianBlur(kernel, sigma)`` (probability
    ``blur_prob``, one sigma for both axes, reflect padding), without importing torchvision.

    Args:
        keys: Keys to transform (float images in [0, 1], ``[C, H, W]``).
        brightness: Brightness factor drawn from ``[1 - brightness, 1 + brightness]``.
        contrast: Contrast factor drawn from ``[1 - contrast, 1 + contrast]`` (blend with the mean grey level).
        jitter_prob: Probability of applying the jitter.
        blur_prob: Probability of applying the blur.
        blur_kernel: Odd Gaussian kernel size.
        blur_sigma: Range of the Gaussian sigma.
        clip: Clip to [0, 1] after each jitter operation (torchvision behaviour on float tensors).
    """

    def __init__(
        self,
        keys: KeysCollection,
        brightness: float = 0.2,
        contrast: float = 0.2,
        jitter_prob: float = 0.8,
        blur_prob: float = 0.5,
        blur_kernel: int = 7,
        blur_sigma: tuple[float, float] = (0.1, 2.0),
        clip: bool = True,
    ) -> None:
        MapTransform.__init__(self, keys)
        RandomizableTransform.__init__(self, prob=1.0)
        if blur_kernel % 2 != 1:
            raise ValueError(f"blur_kernel must be odd, got {blur_kernel}")
        self.brightness, self.contrast = brightness, contrast
        self.jitter_prob, self.blur_prob = jitter_prob, blur_prob
        self.blur_kernel, self.blur_sigma, self.clip = blur_kernel, blur_sigma, clip

    def _jitter(self, x: torch.Tensor) -> torch.Tensor:
        b = self.R.uniform(1 - self.brightness, 1 + self.brightness)
        c = self.R.uniform(1 - self.contrast, 1 + self.contrast)
        ops = ["b", "c"] if self.R.rand() < 0.5 else ["c", "b"]
        for op in ops:
            x = x * b if op == "b" else c * x + (1 - c) * x.mean()
            if self.clip:
                x = x.clamp(0, 1)
        return x

    def _blur(self, x: torch.Tensor) -> torch.Tensor:
        sigma = self.R.uniform(*self.blur_sigma)
        half = self.blur_kernel // 2
        k = torch.exp(-0.5 * (torch.arange(-half, half + 1, dtype=x.dtype) / sigma) ** 2)
        k = k / k.sum()
        c = x.shape[0]
        y = F.pad(x[None], (half, half, half, half), mode="reflect")
        y = F.conv2d(y, k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
        y = F.conv2d(y, k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)
        return y[0]

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Apply the strong photometric view to every key."""
        d = dict(data)
        for key in self.key_iterator(d):
            x = torch.as_tensor(d[key])
            if self.R.rand() < self.jitter_prob:
                x = self._jitter(x)
            if self.R.rand() < self.blur_prob:
                x = self._blur(x)
            d[key] = x
        return d


def build_transform(
    kind: str,
    image_size: int,
    zoom_prob: float = 0.1,
    zoom_range: Sequence[float] = (0.95, 1.2),
    strong_kwargs: Mapping[str, Any] | None = None,
    legacy_clamp: bool = False,
) -> Compose:
    """Build the pipeline for ``kind`` in ``{"labeled", "unlabeled", "eval", "predict"}``.

    All pipelines: load (display orientation) -> scale 0..255 to [0, 1] -> resize to ``image_size`` (bicubic for
    images, nearest for masks). ``labeled`` and ``unlabeled`` add the weak view ``RandZoomd`` (``methods.md`` §1.3);
    ``unlabeled`` copies the weak image to ``image_strong`` and applies :class:`RandJitterBlurd` to it. Every image key
    is z-scored last (or, with ``legacy_clamp``, before the jitter, reproducing the public code's clamp).
    ``predict`` is ``eval`` without a mask.
    """
    if kind not in ("labeled", "unlabeled", "eval", "predict"):
        raise ValueError(f"unknown transform kind {kind!r}")
    with_mask = kind not in ("unlabeled", "predict")
    spatial = ["image", "mask"] if with_mask else ["image"]
    modes = ["bicubic", "nearest"] if with_mask else ["bicubic"]
    steps: list[Any] = [
        LoadRecordd(with_mask=with_mask),
        ScaleIntensityRanged(keys="image", a_min=0.0, a_max=255.0, b_min=0.0, b_max=1.0, clip=True),
        Resized(keys=spatial, spatial_size=(image_size, image_size), mode=modes, anti_aliasing=False),
        ScaleIntensityRanged(keys="image", a_min=0.0, a_max=1.0, b_min=0.0, b_max=1.0, clip=True),
    ]
    if kind in ("labeled", "unlabeled"):
        steps.append(
            RandZoomd(
                keys=spatial,
                prob=zoom_prob,
                min_zoom=zoom_range[0],
                max_zoom=zoom_range[1],
                mode=["bilinear", "nearest"][: len(spatial)],
                keep_size=True,
            )
        )
    image_keys = ["image"]
    if kind == "unlabeled":
        steps.append(CopyItemsd(keys="image", names="image_strong"))
        image_keys.append("image_strong")
        strong = RandJitterBlurd(keys="image_strong", **dict(strong_kwargs or {}))
        if legacy_clamp:
            steps += [NormalizeIntensityd(keys=image_keys, channel_wise=True), strong]
        else:
            steps += [strong, NormalizeIntensityd(keys=image_keys, channel_wise=True)]
    else:
        steps.append(NormalizeIntensityd(keys=image_keys, channel_wise=True))
    tensor_keys = image_keys + (["mask"] if with_mask else [])
    steps.append(EnsureTyped(keys=tensor_keys, dtype=torch.float32, track_meta=False))
    return Compose(steps)
