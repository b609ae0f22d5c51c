"""Turn what a user passes to :class:`~textseg.inference.Segmenter` into network inputs, as ``textseg predict`` does.

An image is a file path, a PIL image or a NumPy array (``H x W`` grey, ``H x W x 3`` RGB or ``H x W x 4`` RGBA;
``uint8``, ``uint16`` or floats in 0..255). Files are read as training reads them,
:func:`textseg.data.io.read_image_float` (scaled once by the largest value of the bit depth, so 16-bit images keep
their precision; ``docs/data.md`` §12), in-memory images converted the same way
(:func:`textseg.data.io.grey_image_float`), and the grey picture in [0, 1] then goes through the ``predict`` pipeline
of :func:`textseg.data.transforms.build_transform` after its loading step: resized (bicubic) to the network size
unless it has it, clipped, z-scored.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.transforms import Compose
from PIL import Image

from textseg.data.io import grey_image_float, read_image_float
from textseg.data.transforms import LoadRecordd, build_transform
from textseg.errors import DataError

__all__ = ["ImageLike", "as_grey", "network_input"]

#: What :class:`~textseg.inference.Segmenter` accepts as one image.
ImageLike = str | os.PathLike[str] | Image.Image | np.ndarray
#: Channel counts of an ``H x W x C`` array: RGB and RGBA.
_CHANNELS = (3, 4)


def as_grey(image: ImageLike) -> np.ndarray:
    """The image as ``float32 [H, W]`` grey in [0, 1], display orientation, as the data pipeline reads files.

    Raises:
        DataError: For a missing or unreadable file, or an array of another shape or type.
    """
    if isinstance(image, (str, os.PathLike)):
        return read_image_float(Path(image))
    if isinstance(image, Image.Image):
        return grey_image_float(image)
    if isinstance(image, np.ndarray):
        array = image
        if array.ndim == 3 and array.shape[-1] == 1:
            array = array[..., 0]
        if array.ndim == 3 and array.shape[-1] in _CHANNELS:
            if array.dtype != np.uint8:
                raise DataError(f"an RGB(A) image array must be uint8, got {array.dtype}")
        elif array.ndim != 2:
            raise DataError(f"an image array must be H x W (grey) or H x W x 3 (RGB), got shape {array.shape}")
        elif array.dtype == np.bool_:
            array = array.astype(np.uint8) * np.uint8(255)
        elif array.dtype not in (np.uint8, np.uint16):
            array = array.astype(np.float32)  # PIL mode "F": values in 0..255 (16-bit range scaled)
        return grey_image_float(Image.fromarray(np.ascontiguousarray(array)), f"array {array.shape}")
    raise DataError(f"an image must be a path, a PIL image or a NumPy array, got {type(image).__name__}")


@lru_cache(maxsize=8)
def _after_loading(image_size: int) -> Compose:
    """The ``predict`` pipeline of :func:`~textseg.data.transforms.build_transform` without its file-loading step."""
    steps = build_transform("predict", image_size).transforms
    if not steps or not isinstance(steps[0], LoadRecordd):
        raise RuntimeError("the predict transform no longer starts with LoadRecordd: update textseg.inference.inputs")
    return Compose(steps[1:])


def network_input(grey: np.ndarray, image_size: int) -> torch.Tensor:
    """One network input ``float32 [1, S, S]`` from a grey ``[H, W]`` picture in [0, 1] (the eval transform's values).

    Args:
        grey: The picture (:func:`as_grey`).
        image_size: The network's side ``S``.

    Returns:
        The resized, clipped and z-scored image.
    """
    image = np.asarray(grey, dtype=np.float32)[None]  # already scaled as LoadRecordd scales
    sample: dict[Any, Any] = {"image": torch.from_numpy(image)}
    out = _after_loading(int(image_size))(sample)
    return torch.as_tensor(out["image"], dtype=torch.float32)


def batch_inputs(images: Sequence[ImageLike], image_size: int) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """Stack the network inputs of ``images``: ``[B, 1, S, S]`` and each image's original ``(height, width)``."""
    greys = [as_grey(im) for im in images]
    sizes = [(int(g.shape[0]), int(g.shape[1])) for g in greys]
    return torch.stack([network_input(g, image_size) for g in greys]), sizes
