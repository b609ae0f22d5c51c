"""MMI-UNet core: ConvNeXt encoder with image-text interaction modules (ITM) and a plain U-Net decoder.

Implements ``MMIUNet_V2`` of Bui et al., "MMI-UNet: Multi-modal interaction U-Net for text-guided medical
image segmentation", MICCAI 2024 (public code ``nguyenpbui/MMI-UNet``), as specified in ``docs/methods.md`` §3, on
top of a Hugging Face :class:`transformers.ConvNextModel` (``docs/methods.md`` §1.1), plus the ITCL projection
heads of Semi-MedRef (``docs/methods.md`` §6.5).

Data flow (``docs/methods.md`` §3, paper Fig. (a)-(b)). Let ``T0`` be the text token states ``[B, L, d_t]``. For
stage ``k = 1..4``:

* ``x_k`` = ConvNeXt stage ``k`` (with its own downsampling for ``k > 1``) applied to the stem output
  (``k = 1``) or to ``v_{k-1} + x_{k-1}`` (``k > 1``);
* ``(v_k, t_k) = ITM_k(x_k, s_k)`` with ``s_1 = T0`` and ``s_k = T0 + t_{k-1}``;
* ``v_k`` is the skip feature of the decoder.

The decoder has three plain blocks (ConvT 2x2 s2, concatenation of the ITM skip, conv3x3 -> BN -> ReLU), then
a MONAI ``SubpixelUpsample`` (x4, ``C_1 -> C_1 / 4``) and a 1x1 convolution to one channel of logits.

Deviations from the public code, all switchable:

* ``use_padding_mask`` (default ``True``): key-padding masks from :attr:`TextFeatures.mask` are applied
  wherever text tokens are attention keys (vision-branch cross-attention and text-branch self-attention).
  ``False`` reproduces the code, which attends to padded tokens (``docs/methods.md`` §1.2, §8 item 2).
* ``use_eca`` (default ``False``, as the trained code): Efficient Channel Attention on the ITM skip of every
  decoder block, as drawn in the paper's Fig. (c) (``docs/methods.md`` §3 "ECA", §8 item 13).

Spatial sizes are derived from tensor shapes (the public code hard-codes 7/14/28/56), so any input whose sides
are multiples of 32 and at least 64 works. Sub-module names follow the public code (``zoom_in``, ``fusion_v``,
``multihead_attn``, ``conv_bn_relu``, ...) so that its checkpoints map onto this module by renaming prefixes
only.
"""

from __future__ import annotations

import torch
from monai.networks.blocks import SubpixelUpsample, UnetOutBlock
from torch import Tensor, nn
from transformers import ConvNextModel

from textseg.errors import DataError
from textseg.models.attention import FusedMultiheadAttention, text_key_bias
from textseg.models.types import SegOutput, TextFeatures

__all__ = [
    "EfficientChannelAttention",
    "ImageTextModule",
    "Interactor",
    "MMIUNetCore",
    "UpBlock",
]

#: Number of ConvNeXt stages the architecture is defined for.
NUM_STAGES = 4
#: Spatial factor of every ConvNeXt downsampling layer, of the ITM zoom-in/out and of each decoder block.
STAGE_STRIDE = 2
#: Standard deviation of the normal initialisation of the ITM linear layers (``docs/methods.md`` §3 "Init").
ITM_LINEAR_INIT_STD = 0.02


class Interactor(nn.Module):
    """Post-norm DETR-style decoder layer, the "Interactor" of the MMI-UNet ITM (``docs/methods.md`` §3).

    ``tgt = LN1(tgt + Drop(SelfAttn(tgt)))``; ``tgt = LN2(tgt + Drop(CrossAttn(tgt, memory)))``;
    ``tgt = LN3(tgt + Drop(Linear2(Drop(ReLU(Linear1(tgt))))))``. No positional embeddings. Tensors are
    batch-first ``[B, N, C]`` (the public code is sequence-first; the computation is identical).

    Args:
        d_model: Token width C.
        num_heads: Attention heads of both attentions; must divide ``d_model``.
        ffn_dim: Hidden width of the feed-forward network (128 in the paper).
        dropout: Dropout of the attention weights, of the FFN hidden layer and of the three residual branches.
    """

    def __init__(self, d_model: int, num_heads: int, ffn_dim: int, dropout: float) -> None:
        super().__init__()
        self.self_attn = FusedMultiheadAttention(d_model, num_heads, dropout=dropout)
        self.multihead_attn = FusedMultiheadAttention(d_model, num_heads, dropout=dropout)
        self.linear1 = nn.Linear(d_model, ffn_dim)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(ffn_dim, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)
        self.activation = nn.ReLU()

    def forward(
        self,
        tgt: Tensor,
        memory: Tensor,
        tgt_key_padding_mask: Tensor | None = None,
        memory_key_padding_mask: Tensor | None = None,
    ) -> Tensor:
        """Update the target tokens from themselves and from the memory tokens.

        Args:
            tgt: Target tokens ``[B, N_t, C]``.
            memory: Memory tokens ``[B, N_m, C]`` (keys and values of the cross-attention).
            tgt_key_padding_mask: ``[B, N_t]`` bool, ``True`` = ignore this key in the self-attention, or its
                float form from :func:`~textseg.models.attention.key_padding_bias` (added to the scores).
            memory_key_padding_mask: The same for the memory tokens, the keys of the cross-attention.

        Returns:
            Updated target tokens ``[B, N_t, C]``.
        """
        attn = self.self_attn(tgt, tgt, tgt, key_padding_mask=tgt_key_padding_mask, need_weights=False)[0]
        tgt = self.norm1(tgt + self.dropout1(attn))
        attn = self.multihead_attn(tgt, memory, memory, key_padding_mask=memory_key_padding_mask, need_weights=False)[0]
        tgt = self.norm2(tgt + self.dropout2(attn))
        ffn = self.linear2(self.dropout(self.activation(self.linear1(tgt))))
        return self.norm3(tgt + self.dropout3(ffn))


class ImageTextModule(nn.Module):
    """Image-text interaction module (ITM, "Bridger" in the public code) of one stage (``docs/methods.md`` §3).

    Visual stream: 2x2 stride-2 conv (no bias) ``C -> C``, flatten, LN. Text stream: Linear ``d_t -> C``, LN.
    Two :class:`Interactor` layers run in parallel on the same normalised inputs: the vision branch (target
    visual, memory text) and the text branch (target text, memory visual). Visual out: 2x2 stride-2 transposed
    conv (no bias) back to the input size (output padding = input side mod 2, derived from the shape), added
    to the visual input. Text out: Linear ``C -> d_t``, added to the text input.

    Init (public code): every ``nn.Linear`` (attention output projections included) ~ N(0, 0.02) with zero
    bias; the conv and transposed conv kaiming-normal (fan_out, ReLU).

    Args:
        channels: Visual width C of the stage (also the interaction width ``d_model``).
        text_dim: Text hidden size d_t.
        num_heads: Attention heads; must divide ``channels``.
        ffn_dim: Interactor FFN hidden width.
        dropout: Interactor dropout.
    """

    def __init__(self, channels: int, text_dim: int, num_heads: int, ffn_dim: int, dropout: float) -> None:
        super().__init__()
        self.zoom_in = nn.Conv2d(channels, channels, kernel_size=STAGE_STRIDE, stride=STAGE_STRIDE, bias=False)
        self.zoom_out = nn.ConvTranspose2d(
            channels, channels, kernel_size=STAGE_STRIDE, stride=STAGE_STRIDE, bias=False
        )
        self.linear1 = nn.Linear(text_dim, channels)
        self.linear2 = nn.Linear(channels, text_dim)
        self.ln_v = nn.LayerNorm(channels)
        self.ln_t = nn.LayerNorm(channels)
        self.fusion_v = Interactor(channels, num_heads, ffn_dim, dropout)
        self.fusion_t = Interactor(channels, num_heads, ffn_dim, dropout)
        self._init_parameters()

    def _init_parameters(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, mean=0.0, std=ITM_LINEAR_INIT_STD)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, vis: Tensor, txt: Tensor, text_padding_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Exchange information between the visual map and the text tokens.

        Args:
            vis: Visual features ``[B, C, H, W]`` with ``H, W >= 2``.
            txt: Text states ``[B, L, d_t]``.
            text_padding_mask: ``[B, L]`` bool, ``True`` = padded token (ignored as attention key), or its float
                form from :func:`~textseg.models.attention.key_padding_bias` (what :class:`MMIUNetCore` passes,
                built once per forward), or ``None`` to attend to every token.

        Returns:
            ``(vis + Δv, txt + Δt)`` with the input shapes.
        """
        v = self.zoom_in(vis)
        batch, channels, height, width = v.shape
        v = self.ln_v(v.flatten(2).transpose(1, 2))  # [B, H'W', C]
        t = self.ln_t(self.linear1(txt))  # [B, L, C]
        v_new = self.fusion_v(v, t, memory_key_padding_mask=text_padding_mask)
        t_new = self.fusion_t(t, v, tgt_key_padding_mask=text_padding_mask)
        v_map = v_new.transpose(1, 2).reshape(batch, channels, height, width)
        delta_v = self.zoom_out(v_map, output_size=[vis.shape[-2], vis.shape[-1]])
        return vis + delta_v, txt + self.linear2(t_new)


class EfficientChannelAttention(nn.Module):
    """Efficient Channel Attention (Wang et al., "ECA-Net", CVPR 2020), as defined in the MMI-UNet code.

    ``x * sigmoid(Conv1d_k(GAP(x)))`` where the 1-D convolution (no bias) runs over the channel axis.
    MMI-UNet's paper Fig. (c) applies it to the ITM skip of each decoder block; the trained code does not
    (``docs/methods.md`` §3).

    Args:
        kernel_size: Odd size of the 1-D convolution across channels (3 in the public code).
    """

    def __init__(self, kernel_size: int = 3) -> None:
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise DataError(f"ECA kernel_size must be a positive odd integer, got {kernel_size}")
        self.conv = nn.Conv1d(1, 1, kernel_size=kernel_size, padding=(kernel_size - 1) // 2, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        """Re-weight the channels of ``x``.

        Args:
            x: Feature map ``[B, C, H, W]``.

        Returns:
            ``[B, C, H, W]``, each channel scaled by its attention weight in (0, 1).
        """
        descriptor = x.mean(dim=(-2, -1)).unsqueeze(1)  # [B, 1, C]
        weights = torch.sigmoid(self.conv(descriptor)).squeeze(1)  # [B, C]
        return x * weights[:, :, None, None]


class UpBlock(nn.Module):
    """Plain MMI-UNet decoder block (``Decoder`` in the public code, ``docs/methods.md`` §3).

    ``ConvT 2x2 s2 (bias) in -> out``; concatenate the (optionally ECA-weighted) skip; ``conv3x3 (bias)
    2*out -> out -> BN -> ReLU``.

    Args:
        in_channels: Channels of the coarser input.
        out_channels: Channels of the skip and of the output.
        use_eca: Apply :class:`EfficientChannelAttention` to the skip before concatenation.
        eca_kernel_size: Kernel size of the ECA 1-D convolution.
    """

    def __init__(self, in_channels: int, out_channels: int, use_eca: bool = False, eca_kernel_size: int = 3) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, out_channels, kernel_size=STAGE_STRIDE, stride=STAGE_STRIDE)
        self.eca: nn.Module = EfficientChannelAttention(eca_kernel_size) if use_eca else nn.Identity()
        self.conv_bn_relu = nn.Sequential(
            nn.Conv2d(2 * out_channels, out_channels, kernel_size=3, padding=1),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        """Upsample ``x`` by 2 and fuse it with ``skip``.

        Args:
            x: ``[B, in_channels, H, W]``.
            skip: ``[B, out_channels, 2H, 2W]``.

        Returns:
            ``[B, out_channels, 2H, 2W]``.
        """
        up = self.up(x)
        return self.conv_bn_relu(torch.cat((up, self.eca(skip)), dim=1))


class MMIUNetCore(nn.Module):
    """Trainable core of MMI-UNet (``MMIUNet_V2``, ``docs/methods.md`` §3) with ITCL heads (``docs/methods.md`` §6.5).

    Consumes an image and precomputed frozen-text features and returns segmentation logits plus the ITCL image
    and text embeddings. The ConvNeXt is driven stage by stage (``vision.embeddings``, then
    ``vision.encoder.stages[k]``); HF stages ``k >= 1`` start with their own LN + 2x2 conv downsampling, which
    reproduces the FB "downsample, then blocks" order when fed ``v_{k-1} + x_{k-1}``. As in the public code,
    the ConvNeXt's final ``layernorm`` and the stage-4 ITM text branch (``itms[3].fusion_t``,
    ``itms[3].linear2``) exist but do not influence any output, so they receive no gradient (DDP needs
    ``find_unused_parameters=True``).

    Heads:
        * ``image_head``: ``LN(Linear(GAP(v_4)))``, ``C_4 -> project_dim`` (Semi-MedRef's MMI-UNet image
          embedding).
        * ``text_head``: ``Linear(d_t, D) -> LN -> GELU -> Linear(D, D)`` on :attr:`TextFeatures.pooled`
          (``BERTModel.project_head`` of the public code).

    Args:
        vision: ConvNeXt with 4 stages; its widths must be divisible by ``num_heads`` and by 4.
        text_dim: Text hidden size d_t (768 for CXR-BERT, 384 for MiniLM).
        num_heads: Attention heads in every ITM (8 in the paper).
        ffn_dim: Interactor FFN hidden width (128 in the paper).
        dropout: Interactor dropout (0.1 in the paper).
        use_eca: Add Efficient Channel Attention on the ITM skip in each decoder block (paper Fig. (c); the
            trained code has none).
        project_dim: ITCL embedding width D (768 in Semi-MedRef).
        use_padding_mask: Use :attr:`TextFeatures.mask` as key-padding mask wherever text tokens are keys
            (documented deviation). ``False`` reproduces the public code and ignores the mask.
        eca_kernel_size: Kernel size of the ECA 1-D convolution (3 in the public code); used only with
            ``use_eca``.
    """

    def __init__(
        self,
        vision: ConvNextModel,
        text_dim: int,
        num_heads: int = 8,
        ffn_dim: int = 128,
        dropout: float = 0.1,
        use_eca: bool = False,
        project_dim: int = 768,
        use_padding_mask: bool = True,
        eca_kernel_size: int = 3,
    ) -> None:
        super().__init__()
        config = vision.config
        widths = tuple(int(c) for c in config.hidden_sizes or ())
        if len(widths) != NUM_STAGES or len(vision.encoder.stages) != NUM_STAGES:
            raise DataError(
                f"MMI-UNet needs a ConvNeXt with {NUM_STAGES} stages, got hidden_sizes={list(widths)} and "
                f"{len(vision.encoder.stages)} stages"
            )
        for width in widths:
            if width % num_heads != 0 or width % 4 != 0:
                raise DataError(
                    f"ConvNeXt width {width} (hidden_sizes={list(widths)}) must be divisible by num_heads="
                    f"{num_heads} and by 4 (SubpixelUpsample output C_1/4)"
                )
        if text_dim <= 0 or project_dim <= 0 or ffn_dim <= 0:
            raise DataError(
                f"text_dim, project_dim and ffn_dim must be positive, got {text_dim}, {project_dim}, {ffn_dim}"
            )
        if not 0.0 <= dropout < 1.0:
            raise DataError(f"dropout must be in [0, 1), got {dropout}")

        self.vision = vision
        self.widths: tuple[int, int, int, int] = (widths[0], widths[1], widths[2], widths[3])
        self.text_dim = text_dim
        self.use_padding_mask = use_padding_mask
        self.in_channels = int(config.num_channels)
        patch_size = config.patch_size
        if not isinstance(patch_size, int):
            raise DataError(f"ConvNeXt config.patch_size must be an int, got {patch_size!r}")
        self.patch_size = patch_size
        #: Total stride of the encoder: stem patch size times the three stage downsamplings.
        self.size_multiple = self.patch_size * STAGE_STRIDE ** (NUM_STAGES - 1)

        self.itms = nn.ModuleList(ImageTextModule(c, text_dim, num_heads, ffn_dim, dropout) for c in widths)
        # Decoder blocks from coarse to fine: C4 -> C3 (skip v3), C3 -> C2 (v2), C2 -> C1 (v1).
        self.decoders = nn.ModuleList(
            UpBlock(widths[k + 1], widths[k], use_eca=use_eca, eca_kernel_size=eca_kernel_size)
            for k in reversed(range(NUM_STAGES - 1))
        )
        self.upsample = SubpixelUpsample(
            spatial_dims=2, in_channels=widths[0], out_channels=widths[0] // 4, scale_factor=self.patch_size
        )
        self.out = UnetOutBlock(spatial_dims=2, in_channels=widths[0] // 4, out_channels=1)

        self.image_head = nn.Sequential(nn.Linear(widths[-1], project_dim), nn.LayerNorm(project_dim))
        self.text_head = nn.Sequential(
            nn.Linear(text_dim, project_dim),
            nn.LayerNorm(project_dim),
            nn.GELU(),
            nn.Linear(project_dim, project_dim),
        )

    def parameter_breakdown(self) -> dict[str, int]:
        """Count parameters per part, for comparison with ``docs/methods.md`` §3.

        Returns:
            Counts for ``backbone`` (the whole ConvNeXt, unused final LN included), ``itm_1`` .. ``itm_4``,
            ``itm`` (their sum), ``decoder`` (three blocks, subpixel upsampling and 1x1 output conv),
            ``image_head``, ``text_head``, ``core`` (backbone + ITMs + decoder, i.e. ``MMIUNet_V2`` without
            its unused modules) and ``total`` (everything in this module).
        """

        def count(module: nn.Module) -> int:
            return sum(p.numel() for p in module.parameters())

        counts = {f"itm_{k + 1}": count(itm) for k, itm in enumerate(self.itms)}
        counts["itm"] = sum(counts[f"itm_{k + 1}"] for k in range(NUM_STAGES))
        counts["backbone"] = count(self.vision)
        counts["decoder"] = count(self.decoders) + count(self.upsample) + count(self.out)
        counts["image_head"] = count(self.image_head)
        counts["text_head"] = count(self.text_head)
        counts["core"] = counts["backbone"] + counts["itm"] + counts["decoder"]
        counts["total"] = count(self)
        return counts

    def _check_inputs(self, image: Tensor, text: TextFeatures) -> tuple[Tensor, Tensor | None]:
        """Validate inputs; return the image with the backbone's channel count and the key-padding bias.

        The bias (``[B, L]`` float, ``-inf`` at padded tokens, 0 elsewhere: MHA's float key-padding mask;
        :func:`~textseg.models.attention.key_padding_bias`) is built here once for the whole forward, not in each of
        the twelve attention layers that use it.
        """
        if image.ndim != 4:
            raise DataError(f"image must be [B, C, H, W], got shape {tuple(image.shape)}")
        batch, channels, height, width = image.shape
        if channels == 1 and self.in_channels != 1:
            image = image.repeat(1, self.in_channels, 1, 1)
        elif channels != self.in_channels:
            raise DataError(
                f"image has {channels} channels, expected 1 or {self.in_channels} (shape {tuple(image.shape)})"
            )
        minimum = STAGE_STRIDE * self.size_multiple
        if height % self.size_multiple or width % self.size_multiple or min(height, width) < minimum:
            raise DataError(
                f"image sides must be multiples of {self.size_multiple} and at least {minimum} (the stage-4 "
                f"ITM downsamples by 2), got {height}x{width}"
            )
        tokens, mask, pooled = text.tokens, text.mask, text.pooled
        if tokens.ndim != 3 or tokens.shape[0] != batch or tokens.shape[2] != self.text_dim:
            raise DataError(f"text.tokens must be [B={batch}, L, d_t={self.text_dim}], got shape {tuple(tokens.shape)}")
        if pooled.shape != (batch, self.text_dim):
            raise DataError(f"text.pooled must be [{batch}, {self.text_dim}], got shape {tuple(pooled.shape)}")
        if not self.use_padding_mask:
            return image, None
        if mask.shape != tokens.shape[:2]:
            raise DataError(f"text.mask must be [B, L] = {tuple(tokens.shape[:2])}, got shape {tuple(mask.shape)}")
        return image, text_key_bias(mask, tokens.dtype, "MMIUNetCore")

    def forward(self, image: Tensor, text: TextFeatures) -> SegOutput:
        """Segment the image under the guidance of the text.

        Args:
            image: ``[B, 1 | 3, H, W]`` (one channel is repeated to the backbone's channel count), ``H, W``
                multiples of 32 and at least 64.
            text: Frozen text features with ``tokens [B, L, d_t]``, ``mask [B, L]`` (``True`` = real token)
                and ``pooled [B, d_t]``.

        Returns:
            :class:`SegOutput` with ``logits [B, 1, H, W]``, ``image_embed [B, D]`` and ``text_embed [B, D]``.
        """
        image, text_bias = self._check_inputs(image, text)
        text0 = text.tokens
        skips: list[Tensor] = []
        hidden = self.vision.embeddings(image)
        state = text0
        for k, (stage, itm) in enumerate(zip(self.vision.encoder.stages, self.itms, strict=True)):
            x = stage(hidden)
            v, t = itm(x, state, text_bias)
            skips.append(v)
            if k + 1 < NUM_STAGES:
                hidden = v + x  # input of stage k+1: v_k + x_k
                state = text0 + t  # s_{k+1} = T0 + t_k

        features = skips[-1]
        for decoder, skip in zip(self.decoders, reversed(skips[:-1]), strict=True):
            features = decoder(features, skip)
        logits = self.out(self.upsample(features))

        image_embed = self.image_head(skips[-1].mean(dim=(-2, -1)))
        text_embed = self.text_head(text.pooled)
        return SegOutput(logits=logits, image_embed=image_embed, text_embed=text_embed)
