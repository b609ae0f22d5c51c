"""GuideDecoder network of LanGuideMedSeg (Zhong et al., "Ariadne's Thread", MICCAI 2023; ``docs/methods.md`` §2).

A ConvNeXt encoder gives four stage features (strides 4/8/16/32). Three guide stages act on the *deeper*
feature before each U-Net up-block: a :class:`GuideDecoderLayer` (self-attention over the visual tokens, then
cross-attention to a per-layer projection of the frozen text states, scaled by a learnable alpha) followed by
a MONAI ``UnetrUpBlock`` that upsamples x2 and fuses the next-shallower skip. A MONAI ``SubpixelUpsample`` x4
and a 1x1 conv give logits at the input resolution. The ITCL heads of Semi-MedRef (Li et al., Eq. 9;
``docs/methods.md`` §6.5) project the HF ConvNeXt ``pooler_output`` and the pooled text features.

Spatial sizes are read from the tensors (the reference code hard-codes 7/14/28/56), so any input side that is
a multiple of 32 works, including non-square images.
"""

from __future__ import annotations

import torch
from monai.networks.blocks import UnetrUpBlock
from torch import Tensor, nn
from transformers import ConvNextModel

from textseg.errors import DataError
from textseg.models.attention import FusedMultiheadAttention
from textseg.models.encoders import CONVNEXT_STRIDE, convnext_stages, vision_widths
from textseg.models.layers import (
    ImageProjectionHead,
    SinusoidalPositionalEncoding,
    SubpixelSegHead,
    TextProjectionHead,
    repeat_to_channels,
)
from textseg.models.types import SegOutput, TextFeatures

__all__ = ["GuideDecoder", "GuideDecoderCore", "GuideDecoderLayer"]


class GuideDecoderLayer(nn.Module):
    """One guide layer (Zhong et al., 2023, Fig. 1 "GuideDecoder"; ``docs/methods.md`` §2 steps 1-4).

    1. Text projection: a 1x1 ``Conv1d`` over the token axis (``input_text_len`` -> ``output_text_len``),
       GELU, ``Linear`` d_t -> C, LeakyReLU, giving ``[B, L_out, C]``. With padding masks on, the padded token
       states arrive zeroed (:class:`GuideDecoderCore` zeroes them once per forward; the projection mixes the token
       axis, so every projected token is a valid mixture and no key mask is needed afterwards).
    2. Pre-LN self-attention: ``x_hat = LN1(x)``, ``q = k = x_hat + PE``, ``v = x_hat``;
       ``x <- x + LN(attn)``.
    3. Cross-attention: ``x_hat = LN2(x)``, ``q = x_hat + PE_vis``, ``k = t + PE_txt``, ``v = t``;
       ``x <- x + alpha * LN(attn)`` with a learnable scalar alpha (the parameter ``scale``, named as in
       the public code).
    4. No FFN and no dropout.

    Args:
        in_channels: Visual channels C (must be divisible by both head counts).
        output_text_len: Projected text length L_out (24 / 12 / 9 for the 16x / 8x / 4x stages).
        input_text_len: Token length of the text states (``max_length``, 24).
        text_dim: Text hidden size d_t.
        alpha_init: Initial value of alpha (0.01 as in the MMI-UNet / Semi-MedRef copies; 1.421 in
            LanGuideMedSeg HEAD).
        self_attn_heads: Heads of the self-attention (1).
        cross_attn_heads: Heads of the cross-attention (4).
        vis_pe_max_len: Precomputed positions of the visual PE (5000, extended on demand).
        leaky_slope: Negative slope of the LeakyReLU of the text projection (PyTorch default 0.01).
    """

    def __init__(
        self,
        in_channels: int,
        output_text_len: int,
        input_text_len: int = 24,
        text_dim: int = 768,
        alpha_init: float = 0.01,
        self_attn_heads: int = 1,
        cross_attn_heads: int = 4,
        vis_pe_max_len: int = 5000,
        leaky_slope: float = 0.01,
    ) -> None:
        super().__init__()
        for heads in (self_attn_heads, cross_attn_heads):
            if in_channels % heads:
                raise DataError(f"GuideDecoderLayer: {in_channels} channels are not divisible by {heads} heads")
        self.in_channels = in_channels
        self.input_text_len = input_text_len
        self.text_dim = text_dim
        self.text_project = nn.Sequential(
            nn.Conv1d(input_text_len, output_text_len, kernel_size=1, stride=1),
            nn.GELU(),
            nn.Linear(text_dim, in_channels),
            nn.LeakyReLU(leaky_slope),
        )
        self.norm1 = nn.LayerNorm(in_channels)
        self.norm2 = nn.LayerNorm(in_channels)
        self.self_attn = FusedMultiheadAttention(in_channels, self_attn_heads)
        self.cross_attn = FusedMultiheadAttention(in_channels, cross_attn_heads)
        self.self_attn_norm = nn.LayerNorm(in_channels)
        self.cross_attn_norm = nn.LayerNorm(in_channels)
        self.vis_pos = SinusoidalPositionalEncoding(in_channels, max_len=vis_pe_max_len)
        self.txt_pos = SinusoidalPositionalEncoding(in_channels, max_len=output_text_len)
        self.scale = nn.Parameter(torch.tensor(float(alpha_init)))

    def project_text(self, tokens: Tensor) -> Tensor:
        """Project ``[B, L_in, d_t]`` text states to ``[B, L_out, C]``."""
        return self.text_project(tokens)

    def forward(self, x: Tensor, tokens: Tensor) -> Tensor:
        """Guide the visual tokens with the text.

        Args:
            x: Visual tokens ``[B, N, C]`` (row-major flattened H x W).
            tokens: Text states ``[B, L_in, d_t]`` (padded states already zeroed when masks are on).

        Returns:
            ``[B, N, C]``.
        """
        txt = self.project_text(tokens)
        vis = self.norm1(x)
        q = self.vis_pos(vis)
        vis = self.self_attn(q, q, value=vis, need_weights=False)[0]  # q and k: one projection
        x = x + self.self_attn_norm(vis)
        vis = self.norm2(x)
        vis = self.cross_attn(self.vis_pos(vis), self.txt_pos(txt), value=txt, need_weights=False)[0]
        return torch.addcmul(x, self.scale, self.cross_attn_norm(vis))  # x + alpha * LN(attn), one op


class GuideDecoder(nn.Module):
    """One decoder stage: :class:`GuideDecoderLayer` on the deeper feature, then MONAI ``UnetrUpBlock``.

    ``UnetrUpBlock(2D, C_in -> C_out, kernel 3, upsample kernel 2, norm BATCH, res_block=False)``: ConvT 2x2
    s2, concatenation of the skip, 2 x [conv3x3 -> BN -> LeakyReLU] (``docs/methods.md`` §2).

    Args:
        in_channels: Channels of the deeper feature.
        out_channels: Channels of the skip and of the output.
        output_text_len: Projected text length of the guide layer.
        input_text_len: Token length of the text states.
        text_dim: Text hidden size d_t.
        alpha_init: Initial alpha of the guide layer.
        self_attn_heads: Self-attention heads.
        cross_attn_heads: Cross-attention heads.
        vis_pe_max_len: Precomputed positions of the visual PE.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        output_text_len: int,
        input_text_len: int = 24,
        text_dim: int = 768,
        alpha_init: float = 0.01,
        self_attn_heads: int = 1,
        cross_attn_heads: int = 4,
        vis_pe_max_len: int = 5000,
    ) -> None:
        super().__init__()
        self.guide_layer = GuideDecoderLayer(
            in_channels,
            output_text_len,
            input_text_len=input_text_len,
            text_dim=text_dim,
            alpha_init=alpha_init,
            self_attn_heads=self_attn_heads,
            cross_attn_heads=cross_attn_heads,
            vis_pe_max_len=vis_pe_max_len,
        )
        self.decoder = UnetrUpBlock(2, in_channels, out_channels, 3, 2, norm_name="BATCH", res_block=False)

    def forward(self, vis: Tensor, skip: Tensor, tokens: Tensor) -> Tensor:
        """Guide ``vis`` ``[B, C_in, h, w]`` with the text, upsample and fuse ``skip`` ``[B, C_out, 2h, 2w]``.

        Returns:
            ``[B, C_out, 2h, 2w]``.
        """
        b, c, h, w = vis.shape
        if skip.shape[-2:] != (2 * h, 2 * w):
            raise DataError(f"GuideDecoder: skip {tuple(skip.shape)} is not twice the size of {tuple(vis.shape)}")
        seq = vis.flatten(2).transpose(1, 2)  # [B, h*w, C], row-major
        seq = self.guide_layer(seq, tokens)
        vis = seq.transpose(1, 2).reshape(b, c, h, w)
        out: Tensor = self.decoder(vis, skip)
        return out


class GuideDecoderCore(nn.Module):
    """GuideDecoder network core: trainable ConvNeXt + three guide stages + head + ITCL heads.

    Consumes an image and the frozen text encoder's :class:`TextFeatures` and returns a :class:`SegOutput`:

    * ``logits`` ``[B, 1, H, W]``;
    * ``image_embed = Linear(pooler_output)`` (HF ConvNeXt final LN of the spatial mean; ``docs/methods.md`` §6.5);
    * ``text_embed = TextProjectionHead(text.pooled)`` (Linear d_t->D, LN, GELU, Linear D->D).

    Parameter count with ConvNeXt-T, d_t = 768, D = 768: encoder 27.82 M + decoder and head 14.36 M = 42.18 M,
    plus 1.77 M for the two ITCL heads (image 0.59 M, text 1.18 M) = 43.95 M trainable (``docs/methods.md`` §2).

    Args:
        vision: ConvNeXt encoder (four stages; see :func:`textseg.models.encoders.build_vision_encoder`).
        text_dim: Text hidden size d_t (``TextEncoder.hidden_size``).
        alpha_init: Initial alpha of the three guide layers (``docs/methods.md`` §2 Decision: 0.01).
        project_dim: ITCL embedding size D (768).
        text_lengths: Projected text lengths of the 16x / 8x / 4x guide stages.
        use_padding_mask: Zero padded token states before the text projections (textseg default) or attend to
            padding like the reference code.
        input_text_length: Token length of the text states (the text encoder's ``max_length``, 24).
        head_channels: Channels after the x4 pixel shuffle of the head (24).
        self_attn_heads: Self-attention heads of the guide layers (1).
        cross_attn_heads: Cross-attention heads of the guide layers (4).
        vis_pe_max_len: Precomputed positions of the visual PEs (5000, extended on demand).
    """

    def __init__(
        self,
        vision: ConvNextModel,
        text_dim: int,
        alpha_init: float = 0.01,
        project_dim: int = 768,
        text_lengths: tuple[int, int, int] = (24, 12, 9),
        use_padding_mask: bool = True,
        input_text_length: int = 24,
        head_channels: int = 24,
        self_attn_heads: int = 1,
        cross_attn_heads: int = 4,
        vis_pe_max_len: int = 5000,
    ) -> None:
        super().__init__()
        if len(text_lengths) != 3 or min(text_lengths) < 1:
            raise DataError(f"GuideDecoderCore text_lengths must be 3 positive ints, got {text_lengths}")
        self.vision = vision
        self.text_dim = text_dim
        self.input_text_length = input_text_length
        self.use_padding_mask = use_padding_mask
        w1, w2, w3, w4 = vision_widths(vision)

        def stage(in_channels: int, out_channels: int, text_len: int) -> GuideDecoder:
            return GuideDecoder(
                in_channels,
                out_channels,
                text_len,
                input_text_len=input_text_length,
                text_dim=text_dim,
                alpha_init=alpha_init,
                self_attn_heads=self_attn_heads,
                cross_attn_heads=cross_attn_heads,
                vis_pe_max_len=vis_pe_max_len,
            )

        self.decoder16 = stage(w4, w3, text_lengths[0])
        self.decoder8 = stage(w3, w2, text_lengths[1])
        self.decoder4 = stage(w2, w1, text_lengths[2])
        self.head = SubpixelSegHead(w1, head_channels, scale_factor=4, out_channels=1)
        self.image_proj = ImageProjectionHead(w4, project_dim, layer_norm=False)
        self.text_proj = TextProjectionHead(text_dim, project_dim)

    def _check_text(self, text: TextFeatures, batch: int) -> None:
        tokens, mask, pooled = text.tokens, text.mask, text.pooled
        expected = (batch, self.input_text_length, self.text_dim)
        if tuple(tokens.shape) != expected:
            raise DataError(f"GuideDecoderCore: text tokens have shape {tuple(tokens.shape)}, expected {expected}")
        if tuple(mask.shape) != expected[:2]:
            raise DataError(f"GuideDecoderCore: text mask has shape {tuple(mask.shape)}, expected {expected[:2]}")
        if tuple(pooled.shape) != (batch, self.text_dim):
            raise DataError(
                f"GuideDecoderCore: pooled text has shape {tuple(pooled.shape)}, expected {(batch, self.text_dim)}"
            )

    def forward(self, image: Tensor, text: TextFeatures) -> SegOutput:
        """Segment ``image`` guided by ``text``.

        Args:
            image: ``[B, 1 | 3, H, W]`` with H and W multiples of 32 (1-channel images are repeated to 3).
            text: Frozen text features of the B referring texts.

        Returns:
            ``SegOutput`` with ``logits [B, 1, H, W]``, ``image_embed [B, D]``, ``text_embed [B, D]``.

        Raises:
            DataError: On a bad image or text shape.
        """
        image = repeat_to_channels(image, int(self.vision.config.num_channels))
        h, w = image.shape[-2:]
        if h % CONVNEXT_STRIDE or w % CONVNEXT_STRIDE:
            raise DataError(f"GuideDecoderCore: image side {h}x{w} is not a multiple of {CONVNEXT_STRIDE}")
        self._check_text(text, image.shape[0])
        f1, f2, f3, f4 = convnext_stages(self.vision, image)
        tokens = text.tokens
        if self.use_padding_mask:  # zero the padded states once here, not in each guide layer (the same product)
            tokens = tokens * text.mask.unsqueeze(-1).to(tokens.dtype)
        x = self.decoder16(f4, f3, tokens)
        x = self.decoder8(x, f2, tokens)
        x = self.decoder4(x, f1, tokens)
        logits = self.head(x)
        return SegOutput(
            logits=logits,
            image_embed=self.image_proj(self.vision.layernorm(f4.mean(dim=(-2, -1)))),  # ConvNextModel's pooler_output
            text_embed=self.text_proj(text.pooled),
        )
