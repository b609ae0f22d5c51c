"""MONAI dictionary transforms that turn a :class:`~textseg.data.base.Record` into a training sample.

Sample keys (documented once, used everywhere):

=================  ==========================================================================================
``image``          float32 ``[1, S, S]``, per-image z-scored (:class:`ZScored`, as MONAI ``NormalizeIntensityd``); for
                   unlabeled samples this is the **weak** view (teacher input).
``image_strong``   unlabeled samples only: the **strong** view, the same geometry as ``image`` (it is derived
                   from the weak tensor after zoom/resize) plus photometric jitter and blur applied *before* the
                   z-score (``docs/methods.md`` §6.2 Decision; ``legacy_clamp=True`` applies them after, as the public
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
    RandomizableTransform,
    RandZoomd,
    Resized,
    ScaleIntensityRanged,
)

from textseg.data.base import Record
from textseg.data.io import read_image_float, read_mask

#: Keys of a labeled/evaluation sample.
LABELED_KEYS = ("image", "mask", "text", "position", "modality", "id", "path", "dataset")
#: Keys of an unlabeled sample.
UNLABELED_KEYS = ("image", "image_strong", "text", "position", "modality", "id", "path", "dataset")
#: Keys of a prediction sample (no mask).
PREDICT_KEYS = ("image", "text", "position", "modality", "id", "path", "dataset")


class LoadRecordd(MapTransform):
    """Read a record's image and mask into ``[1, H, W]`` float tensors, plus its text.

    The image is scaled to [0, 1] once by its bit depth's largest value (8-bit: / 255, 16-bit: / 65535;
    :func:`~textseg.data.io.read_image_float`), so a 16-bit file keeps its precision.

    Args:
        with_mask: Whether to load the mask (labeled and evaluation samples).
    """

    def __init__(self, with_mask: bool = True) -> None:
        super().__init__(keys=["record"])
        self.with_mask = with_mask

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Load ``data["record"]`` and return the sample dict (without the record)."""
        rec: Record = data["record"]
        image = read_image_float(rec.image)[None]
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


class ResizeIfNeededd(MapTransform):
    """Resize to ``size`` (MONAI ``Resized``) and clip images back to [0, 1], unless the sample has that size.

    Bicubic for images, nearest for masks; QaTa's 224 px images at 224 px skip both steps.

    Args:
        keys: Spatial keys (the image first).
        size: Output side.
        modes: Interpolation mode per key.
    """

    def __init__(self, keys: Sequence[str], size: int, modes: Sequence[str]) -> None:
        super().__init__(keys)
        self.size = size
        self.resize = Resized(keys=keys, spatial_size=(size, size), mode=list(modes), anti_aliasing=False)
        self.clip = ScaleIntensityRanged(keys="image", a_min=0.0, a_max=1.0, b_min=0.0, b_max=1.0, clip=True)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Resize and clip unless already ``size`` x ``size``."""
        if tuple(data["image"].shape[-2:]) == (self.size, self.size):
            return dict(data)
        return self.clip(self.resize(data))


class ZScored(MapTransform):
    """Per-image, per-channel z-score ``(x - mean) / std`` (population std; a constant image keeps std 1).

    The same values as MONAI's ``NormalizeIntensityd(channel_wise=True)`` in a third of its time on 224 px images.

    Args:
        keys: Image keys ``[C, H, W]``.
    """

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Z-score every key."""
        d = dict(data)
        for key in self.key_iterator(d):
            x = torch.as_tensor(d[key], dtype=torch.float32)
            flat = x.reshape(x.shape[0], -1)
            mean, std = flat.mean(1), flat.std(1, unbiased=False)  # faster than std_mean over two dims on CPU
            d[key] = (x - mean[:, None, None]) / std.masked_fill(std == 0, 1.0)[:, None, None]
        return d


class RandJitterBlurd(RandomizableTransform, MapTransform):
    """Strong photometric view: brightness/contrast jitter then Gaussian blur (``docs/methods.md`` §6.2).

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
        """Separable Gaussian blur with reflect padding, as weighted sums of shifted views.

        On a single-channel 224 px image this is about twice as fast on a CPU as two grouped ``conv2d`` calls, with
        the same result (to float rounding).
        """
        sigma = self.R.uniform(*self.blur_sigma)
        half = self.blur_kernel // 2
        kernel = torch.exp(-0.5 * (torch.arange(-half, half + 1, dtype=x.dtype) / sigma) ** 2)
        k: list[float] = (kernel / kernel.sum()).tolist()
        h, w = x.shape[-2:]
        y = F.pad(x[None], (half, half, half, half), mode="reflect")[0]
        rows = y[..., :, 0:w] * k[0]
        for i in range(1, self.blur_kernel):
            rows = rows + y[..., :, i : i + w] * k[i]
        out = rows[..., 0:h, :] * k[0]
        for i in range(1, self.blur_kernel):
            out = out + rows[..., i : i + h, :] * k[i]
        return out

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

    All pipelines: load (display orientation) and scale to [0, 1] (by 255 or 65535, the file's bit depth) -> resize
    to ``image_size`` (bicubic for images, nearest for masks; then clipped to [0, 1]) unless the image has that size
    already. ``labeled`` and
    ``unlabeled`` add the weak view ``RandZoomd`` (``docs/methods.md`` §1.3); ``unlabeled`` copies the weak image to
    ``image_strong`` and applies :class:`RandJitterBlurd` to it. Every image key is z-scored last (or, with
    ``legacy_clamp``, before the jitter, reproducing the public code's clamp). ``predict`` is ``eval`` without a mask.
    """
    if kind not in ("labeled", "unlabeled", "eval", "predict"):
        raise ValueError(f"unknown transform kind {kind!r}")
    with_mask = kind not in ("unlabeled", "predict")
    spatial = ["image", "mask"] if with_mask else ["image"]
    modes = ["bicubic", "nearest"] if with_mask else ["bicubic"]
    steps: list[Any] = [LoadRecordd(with_mask=with_mask), ResizeIfNeededd(spatial, image_size, modes)]
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
            steps += [ZScored(keys=image_keys), strong]
        else:
            steps += [strong, ZScored(keys=image_keys)]
    else:
        steps.append(ZScored(keys=image_keys))
    tensor_keys = image_keys + (["mask"] if with_mask else [])
    steps.append(EnsureTyped(keys=tensor_keys, dtype=torch.float32, track_meta=False))
    return Compose(steps)
