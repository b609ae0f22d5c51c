"""Shared building blocks of the text-guided segmentation networks.

* :func:`sinusoidal_table` / :class:`SinusoidalPositionalEncoding` -- the 1-D sinusoidal positional encoding
  of Vaswani et al. (2017, Sec. 3.5) used by GuideDecoder (Zhong et al., MICCAI 2023) on the row-major
  flattened visual tokens and on the projected text tokens (``docs/methods.md`` §2), and by the TextMoE experts
  (§4).
* :class:`ImageProjectionHead` / :class:`TextProjectionHead` -- the ITCL ("PACL") projection heads of
  Semi-MedRef (Li et al., Eq. 9; ``docs/methods.md`` §6.5 and §1.2).
* :class:`SubpixelSegHead` -- MONAI ``SubpixelUpsample`` (x4) followed by a 1x1 ``UnetOutBlock``, the output
  head of GuideDecoder, MMI-UNet and TextMoE (``docs/methods.md`` §2-§4); it returns logits.
* :func:`repeat_to_channels` -- repeats a 1-channel image to the channel count the vision encoder expects
  (``docs/methods.md`` §1.3).
"""

from __future__ import annotations

import math

import torch
from monai.networks.blocks import SubpixelUpsample, UnetOutBlock
from torch import Tensor, nn

from textseg.errors import DataError

__all__ = [
    "ImageProjectionHead",
    "SinusoidalPositionalEncoding",
    "SubpixelSegHead",
    "TextProjectionHead",
    "repeat_to_channels",
    "sinusoidal_table",
]

#: Base of the geometric progression of wavelengths (Vaswani et al., 2017, Sec. 3.5).
PE_BASE = 10000.0


def sinusoidal_table(length: int, d_model: int, base: float = PE_BASE) -> Tensor:
    """Return the sinusoidal positional-encoding table ``[length, d_model]`` (float32).

    ``PE[p, 2i] = sin(p / base^(2i/d))`` and ``PE[p, 2i+1] = cos(p / base^(2i/d))`` (Vaswani et al., 2017,
    Sec. 3.5), exactly the table of the ``PositionalEncoding`` module in the GuideDecoder / MMI-UNet /
    TextMoE code. An odd ``d_model`` is supported (the last column is a sine).

    Args:
        length: Number of positions (>= 1).
        d_model: Feature dimension (>= 1).
        base: Wavelength base.

    Returns:
        The table, float32 on the CPU.

    Raises:
        DataError: If ``length`` or ``d_model`` is not positive.
    """
    if length < 1 or d_model < 1:
        raise DataError(f"sinusoidal_table: length ({length}) and d_model ({d_model}) must be >= 1")
    position = torch.arange(length, dtype=torch.float32).unsqueeze(1)
    div_term = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(base) / d_model))
    table = torch.zeros(length, d_model, dtype=torch.float32)
    table[:, 0::2] = torch.sin(position * div_term)
    table[:, 1::2] = torch.cos(position * div_term[: d_model // 2])
    return table


class SinusoidalPositionalEncoding(nn.Module):
    """Adds a fixed 1-D sinusoidal positional encoding to a token sequence ``[B, N, C]``.

    The table for ``max_len`` positions is precomputed as a non-persistent buffer (it is a deterministic
    function of the shape, so it is kept out of checkpoints); longer sequences get a freshly computed table
    whose first ``max_len`` rows are identical, so the encoding is defined for any input size. No dropout (the
    reference code uses dropout 0).

    Args:
        d_model: Feature dimension C.
        max_len: Number of precomputed positions (5000 in the reference code; the projected text length for
            the text PE).
        base: Wavelength base (Vaswani et al., 2017).
    """

    pe: Tensor

    def __init__(self, d_model: int, max_len: int = 5000, base: float = PE_BASE) -> None:
        super().__init__()
        self.d_model = d_model
        self.max_len = max_len
        self.base = base
        self.register_buffer("pe", sinusoidal_table(max_len, d_model, base), persistent=False)

    def table(self, length: int, like: Tensor) -> Tensor:
        """Return the ``[length, d_model]`` table in the dtype and on the device of ``like``."""
        if length <= self.max_len:
            return self.pe[:length].to(dtype=like.dtype, device=like.device)
        return sinusoidal_table(length, self.d_model, self.base).to(dtype=like.dtype, device=like.device)

    def forward(self, x: Tensor) -> Tensor:
        """Return ``x + PE`` for ``x`` of shape ``[B, N, d_model]``."""
        if x.ndim != 3 or x.shape[-1] != self.d_model:
            raise DataError(f"SinusoidalPositionalEncoding expects [B, N, {self.d_model}], got {tuple(x.shape)}")
        return x + self.table(x.shape[1], x).unsqueeze(0)

    def extra_repr(self) -> str:
        """Describe the encoding in ``repr``."""
        return f"d_model={self.d_model}, max_len={self.max_len}"


class TextProjectionHead(nn.Module):
    """ITCL text projection head: Linear d_t->D, LayerNorm, GELU, Linear D->D.

    ``BERTModel.project_head`` of the GuideDecoder / MMI-UNet / Semi-MedRef code (``docs/methods.md`` §1.2, §6.5),
    applied to :attr:`textseg.models.types.TextFeatures.pooled`.

    Args:
        in_dim: Text feature size d_t (768 for CXR-BERT, 384 for MiniLM).
        project_dim: Embedding size D (768 in the reference code).
        eps: LayerNorm epsilon (PyTorch default, as in the code).
    """

    def __init__(self, in_dim: int, project_dim: int = 768, eps: float = 1e-5) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_dim, project_dim),
            nn.LayerNorm(project_dim, eps=eps),
            nn.GELU(),
            nn.Linear(project_dim, project_dim),
        )

    def forward(self, pooled: Tensor) -> Tensor:
        """Project ``[B, d_t]`` pooled text features to ``[B, D]`` (not normalised)."""
        return self.net(pooled)


class ImageProjectionHead(nn.Module):
    """ITCL image projection head: (global average pool) -> Linear C->D -> (LayerNorm).

    * GuideDecoder: ``Linear`` on the HF ConvNeXt ``pooler_output`` (``layer_norm=False``; ``docs/methods.md``
      §6.5).
    * MMI-UNet: GAP of the stage-4 ITM visual output, ``Linear``, ``LayerNorm`` (``layer_norm=True``).

    Args:
        in_dim: Visual feature size C.
        project_dim: Embedding size D.
        layer_norm: Append a LayerNorm (MMI-UNet) or not (GuideDecoder).
        eps: LayerNorm epsilon.
    """

    def __init__(self, in_dim: int, project_dim: int = 768, layer_norm: bool = False, eps: float = 1e-5) -> None:
        super().__init__()
        self.proj = nn.Linear(in_dim, project_dim)
        self.norm: nn.Module = nn.LayerNorm(project_dim, eps=eps) if layer_norm else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        """Project ``[B, C]`` vectors, or ``[B, C, H, W]`` maps after a global average pool, to ``[B, D]``."""
        if x.ndim == 4:
            x = x.mean(dim=(2, 3))
        if x.ndim != 2:
            raise DataError(f"ImageProjectionHead expects [B, C] or [B, C, H, W], got {tuple(x.shape)}")
        return self.norm(self.proj(x))


class SubpixelSegHead(nn.Module):
    """Output head: MONAI ``SubpixelUpsample`` followed by a 1x1 ``UnetOutBlock``; returns logits.

    ``SubpixelUpsample(2D, C->mid, scale)`` is a 3x3 conv C->mid*scale^2 (ICNR init), PixelShuffle(scale), a
    zero pad of ``scale - 1`` on top/left and a ``scale`` x ``scale`` stride-1 average pool (``docs/methods.md``
    §2); the reference code then applies a 1x1 conv mid->1 and a sigmoid, which textseg leaves to the loss.

    Args:
        in_channels: Channels of the stride-4 decoder feature (96 for ConvNeXt-T).
        mid_channels: Channels after the pixel shuffle (24 in all reference networks).
        scale_factor: Upsampling factor (4: stride-4 feature to input resolution).
        out_channels: Output (logit) channels.
        spatial_dims: 2 for images.
    """

    def __init__(
        self,
        in_channels: int,
        mid_channels: int = 24,
        scale_factor: int = 4,
        out_channels: int = 1,
        spatial_dims: int = 2,
    ) -> None:
        super().__init__()
        self.upsample = SubpixelUpsample(spatial_dims, in_channels, mid_channels, scale_factor)
        self.out = UnetOutBlock(spatial_dims, in_channels=mid_channels, out_channels=out_channels)

    def forward(self, x: Tensor) -> Tensor:
        """Map ``[B, C, h, w]`` to logits ``[B, out_channels, scale*h, scale*w]``."""
        return self.out(self.upsample(x))


def repeat_to_channels(image: Tensor, channels: int = 3) -> Tensor:
    """Repeat a 1-channel image batch ``[B, 1, H, W]`` to ``channels`` channels (``docs/methods.md`` §1.3).

    Args:
        image: ``[B, 1, H, W]`` or ``[B, channels, H, W]``.
        channels: Channel count the vision encoder expects.

    Returns:
        ``[B, channels, H, W]``; an image that already has ``channels`` channels is returned unchanged.

    Raises:
        DataError: If ``image`` is not 4-D or has neither 1 nor ``channels`` channels.
    """
    if image.ndim != 4:
        raise DataError(f"expected an image batch [B, C, H, W], got shape {tuple(image.shape)}")
    if image.shape[1] == channels:
        return image
    if image.shape[1] == 1:
        return image.repeat(1, channels, 1, 1)
    raise DataError(f"image has {image.shape[1]} channels; expected 1 or {channels}")
