"""TextMoE network: ConvNeXt encoder + text-assisted Mixture-of-Experts U-Net decoder.

Zeng et al., "Exploring Text-enhanced Mixture-of-Experts for Semi-supervised Medical Image Segmentation with
Composite Data", MICCAI 2025, Sec. 2.2 (Eqs. 1-4); ``docs/methods.md`` §4.

A ConvNeXt encoder gives four stage features (strides 4/8/16/32). Three U-Net up-blocks (32 -> 16 -> 8 -> 4)
each upsample the deeper feature with a 2x2 stride-2 transposed conv, concatenate the skip, and apply two
:class:`MoELayer` (each followed by BatchNorm and ReLU) in place of the usual two 3x3 convs, six MoE layers in
all. A MONAI ``SubpixelUpsample`` x4 and a 1x1 conv give **one** channel of logits at the input resolution
(``docs/methods.md`` §4 Decision; the public code's 3 replicated sigmoid channels are an artefact).

One MoE layer (``expert="tmoe"``, the paper's TMoE and the public code):

* text expert exp_t (ungated, own weights per layer): ``Linear d_t->C -> GELU -> LN -> LeakyReLU(0.1)`` on the
  frozen token states, plus a sinusoidal PE over the tokens -> ``t [B, L, C]``;
* E visual experts exp_v_e (Eq. 1): ``v_e = conv3x3(x)``, flattened to H*W tokens plus a 1-D sinusoidal PE,
  then text-to-visual cross-attention (Eq. 2) ``a_e = MHA(LN_e(v_e + PE), t, t)`` and
  ``expert_e = (v_e + PE) + s * a_e`` with one learnable scalar s per layer, shared by its experts;
* gate (Eq. 3): ``g = softmax(W [GAP(x) || onehot(modality)] + b)``, dense per-sample weights, no top-k;
* output (Eq. 4): ``sum_e g_e * expert_e``.

``expert="plain"`` is the Plain-MoE of the paper's ablation (Table 2, row 2), which "fuses visual and textual
features element-wise" (citing LIMoE). Neither the paper nor the code states the operator; textseg uses
(``docs/methods.md`` §9 "Plain-MoE operator"): ``expert_e = conv3x3_e(x) * u[:, :, None, None]`` with
``u = Linear(d_t -> C)(TextFeatures.pooled)`` one per layer, i.e. an element-wise (Hadamard) product of each
expert's visual map with the projected pooled text, broadcast over space, and no cross-attention. The gate is
the same as in TMoE.

Spatial sizes are read from the tensors, so any input side that is a multiple of 32 works, including
non-square images; widths are read from the encoder, so the ``"tiny"`` test encoder works too.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import ConvNextModel

from textseg.errors import DataError
from textseg.models.attention import FusedMultiheadAttention, text_key_bias
from textseg.models.encoders import CONVNEXT_STRIDE, convnext_stages, vision_widths
from textseg.models.layers import SinusoidalPositionalEncoding, SubpixelSegHead, repeat_to_channels
from textseg.models.types import SegOutput, TextFeatures
from textseg.ops.asserts import assert_on_device

__all__ = ["MoEDecoderBlock", "MoELayer", "TextMoECore", "modality_indicator"]

#: Expert kinds: the paper's text-assisted experts, or the Plain-MoE ablation (element-wise fusion).
ExpertKind = Literal["tmoe", "plain"]
EXPERT_KINDS: tuple[str, ...] = ("tmoe", "plain")


def modality_indicator(modality: Tensor, num_modalities: int) -> Tensor:
    """One-hot indicator ``[B, num_modalities]`` (float32) of ``[B]`` integer modality codes (gate input, Eq. 3).

    By comparison with ``arange``: ``F.one_hot`` reads min/max back to the host to check the values (2 syncs).
    """
    codes = torch.arange(num_modalities, device=modality.device)
    return (modality.long()[:, None] == codes).float()


class MoELayer(nn.Module):
    """One text-assisted MoE layer, ``[B, C_in, H, W] -> [B, C_out, H, W]`` (Zeng et al., Eqs. 1-4).

    See the module docstring for the computation of both expert kinds.

    Args:
        in_channels: Input channels C_in.
        out_channels: Output channels C_out (divisible by ``heads`` for ``"tmoe"``).
        text_dim: Text hidden size d_t.
        expert: ``"tmoe"`` (text-to-visual cross-attention experts) or ``"plain"`` (Plain-MoE: element-wise
            product with the projected pooled text).
        num_experts: Number E of gated visual experts (2).
        num_modalities: Size of the one-hot modality indicator fed to the gate (2: X-ray, CT).
        heads: Attention heads of the cross-attention (2).
        scale_init: Initial value of the layer scale s shared by the experts (1.421, as in the public code).
        leaky_slope: Negative slope of the LeakyReLU closing the text expert (0.1).
        text_pe_max_len: Precomputed positions of the text PE (the token length, 24; extended on demand).
        vis_pe_max_len: Precomputed positions of the visual PE (5000; extended on demand).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        text_dim: int,
        *,
        expert: ExpertKind = "tmoe",
        num_experts: int = 2,
        num_modalities: int = 2,
        heads: int = 2,
        scale_init: float = 1.421,
        leaky_slope: float = 0.1,
        text_pe_max_len: int = 24,
        vis_pe_max_len: int = 5000,
    ) -> None:
        super().__init__()
        if expert not in EXPERT_KINDS:
            raise DataError(f"MoELayer: unknown expert kind {expert!r}; expected one of {EXPERT_KINDS}")
        if num_experts < 1 or num_modalities < 1:
            raise DataError(f"MoELayer: num_experts ({num_experts}) and num_modalities ({num_modalities}) must be >= 1")
        if expert == "tmoe" and (heads < 1 or out_channels % heads):
            raise DataError(f"MoELayer: {out_channels} channels are not divisible by {heads} heads")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.text_dim = text_dim
        self.expert = expert
        self.num_experts = num_experts
        self.num_modalities = num_modalities
        self.gate = nn.Linear(in_channels + num_modalities, num_experts)
        self.convs = nn.ModuleList(
            nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=True) for _ in range(num_experts)
        )
        self.text_expert: nn.Module
        if expert == "tmoe":
            self.text_expert = nn.Sequential(
                nn.Linear(text_dim, out_channels),
                nn.GELU(),
                nn.LayerNorm(out_channels),
                nn.LeakyReLU(leaky_slope),
            )
            self.text_pos = SinusoidalPositionalEncoding(out_channels, max_len=text_pe_max_len)
            self.vis_pos = SinusoidalPositionalEncoding(out_channels, max_len=vis_pe_max_len)
            self.query_norms = nn.ModuleList(nn.LayerNorm(out_channels) for _ in range(num_experts))
            self.attns = nn.ModuleList(FusedMultiheadAttention(out_channels, heads) for _ in range(num_experts))
            self.scale = nn.Parameter(torch.tensor(float(scale_init)))
        else:
            self.text_expert = nn.Linear(text_dim, out_channels)

    def gate_weights(self, x: Tensor, modality: Tensor) -> Tensor:
        """Gate of Eq. 3: ``softmax(W [GAP(x) || onehot(modality)] + b)``.

        Args:
            x: Layer input ``[B, C_in, H, W]``.
            modality: ``[B]`` integer modality indices in ``[0, num_modalities)``, or their one-hot indicator
                ``[B, num_modalities]`` from :func:`modality_indicator` (built once per forward by
                :class:`TextMoECore`).

        Returns:
            ``[B, E]`` weights, each row summing to 1.
        """
        indicator = modality if modality.is_floating_point() else modality_indicator(modality, self.num_modalities)
        features = torch.cat([x.mean(dim=(2, 3)), indicator.to(x.dtype)], dim=1)
        return torch.softmax(self.gate(features), dim=1)

    def _tmoe_experts(self, x: Tensor, tokens: Tensor, padding_mask: Tensor | None) -> Tensor:
        """The E experts ``[B, E, C_out, H, W]`` of Eqs. 1-2."""
        b, _, h, w = x.shape
        txt = self.text_pos(self.text_expert(tokens))  # [B, L, C]; the PE is part of keys and values
        outs = []
        for conv, norm, attn in zip(self.convs, self.query_norms, self.attns, strict=True):
            v = self.vis_pos(conv(x).flatten(2).transpose(1, 2))  # [B, H*W, C], row-major, v + PE
            a = attn(norm(v), txt, txt, key_padding_mask=padding_mask, need_weights=False)[0]  # k and v: one projection
            outs.append(torch.addcmul(v, self.scale, a))  # v + s * a, one op
        # [B, E, H*W, C] -> [B, E, C, H, W]: one copy for all experts
        return torch.stack(outs, dim=1).transpose(2, 3).reshape(b, self.num_experts, self.out_channels, h, w)

    def _plain_experts(self, x: Tensor, pooled: Tensor) -> Tensor:
        """The E experts ``[B, E, C_out, H, W]`` of the Plain-MoE ablation."""
        u = self.text_expert(pooled)[:, :, None, None]  # [B, C, 1, 1], broadcast over space
        return torch.stack([conv(x) * u for conv in self.convs], dim=1)

    def forward(
        self,
        x: Tensor,
        text: TextFeatures,
        modality: Tensor,
        padding_mask: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Apply the layer.

        Args:
            x: ``[B, C_in, H, W]``.
            text: Frozen text features (``tokens`` for ``"tmoe"``, ``pooled`` for ``"plain"``).
            modality: ``[B]`` integer modality indices in ``[0, num_modalities)``, or their one-hot indicator
                (:func:`modality_indicator`).
            padding_mask: ``[B, L]`` bool key-padding mask for the cross-attention, ``True`` = padded token
                (ignored), or its float form from :func:`~textseg.models.attention.key_padding_bias` (built once
                per forward by :class:`TextMoECore`), or ``None`` to attend to every token.

        Returns:
            ``(output [B, C_out, H, W], experts [B, E, C_out, H, W], gates [B, E])``.
        """
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise DataError(f"MoELayer expects [B, {self.in_channels}, H, W], got {tuple(x.shape)}")
        gates = self.gate_weights(x, modality)
        if self.expert == "tmoe":
            experts = self._tmoe_experts(x, text.tokens, padding_mask)
        else:
            experts = self._plain_experts(x, text.pooled)
        out = torch.einsum("be,bechw->bchw", gates, experts)
        return out, experts, gates


class MoEDecoderBlock(nn.Module):
    """U-Net up-block with two MoE layers (``docs/methods.md`` §4 table).

    ``ConvTranspose2d(C_deep -> C_skip, 2, stride 2, bias)``, concatenation ``[up || skip]``, then
    ``MoE-1 (2 C_skip -> C_skip) -> BN -> ReLU -> MoE-2 (C_skip -> C_skip) -> BN -> ReLU``.

    Args:
        in_channels: Channels of the deeper feature C_deep.
        out_channels: Channels of the skip and of the output C_skip.
        text_dim: Text hidden size d_t.
        **moe_options: Keyword options of both :class:`MoELayer` s (``expert``, ``num_experts``, ``heads``, ...).
    """

    def __init__(self, in_channels: int, out_channels: int, text_dim: int, **moe_options: Any) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, out_channels, kernel_size=2, stride=2, bias=True)
        self.moe1 = MoELayer(2 * out_channels, out_channels, text_dim, **moe_options)
        self.norm1 = nn.BatchNorm2d(out_channels)
        self.moe2 = MoELayer(out_channels, out_channels, text_dim, **moe_options)
        self.norm2 = nn.BatchNorm2d(out_channels)

    def forward(
        self, deep: Tensor, skip: Tensor, text: TextFeatures, modality: Tensor, padding_mask: Tensor | None
    ) -> tuple[Tensor, list[Tensor], list[Tensor]]:
        """Upsample ``deep`` ``[B, C_deep, h, w]``, fuse ``skip`` ``[B, C_skip, 2h, 2w]``, apply the MoE layers.

        Returns:
            ``(output [B, C_skip, 2h, 2w], [experts of MoE-1, MoE-2], [gates of MoE-1, MoE-2])``.
        """
        h, w = deep.shape[-2:]
        if skip.shape[-2:] != (2 * h, 2 * w):
            raise DataError(f"MoEDecoderBlock: skip {tuple(skip.shape)} is not twice the size of {tuple(deep.shape)}")
        x = torch.cat([self.up(deep), skip], dim=1)
        x, e1, g1 = self.moe1(x, text, modality, padding_mask)
        x = F.relu(self.norm1(x))
        x, e2, g2 = self.moe2(x, text, modality, padding_mask)
        x = F.relu(self.norm2(x))
        return x, [e1, e2], [g1, g2]


class TextMoECore(nn.Module):
    """TextMoE network core: trainable ConvNeXt + three MoE up-blocks + subpixel head (``docs/methods.md`` §4).

    Returns a :class:`SegOutput` with ``logits [B, 1, H, W]``, ``experts`` (six ``[B, E, C, h, w]`` tensors,
    in decoder order: block 1 MoE-1, MoE-2, block 2 ..., at strides 16/16/8/8/4/4) and ``gates [B, 6, E]``.
    It has no ITCL heads, so ``image_embed`` / ``text_embed`` are absent.

    Parameter count with ConvNeXt-T and d_t = 768 (tests): decoder blocks 12.11 / 3.18 / 0.87 M, head 0.33 M,
    decoder + head 16.49 M, trainable 44.31 M (encoder 27.82 M). As in the public code, the encoder's final
    LayerNorm (HF ``pooler_output``; 2 x C4 parameters, counted in the 27.82 M) is not used by the decoder and
    gets no gradient (set ``find_unused_parameters`` under DDP, or freeze it).

    Args:
        vision: ConvNeXt encoder (four stages; see :func:`textseg.models.encoders.build_vision_encoder`).
        text_dim: Text hidden size d_t (``TextEncoder.hidden_size``).
        expert: ``"tmoe"`` (paper and public code) or ``"plain"`` (Plain-MoE ablation, Table 2).
        num_experts: Gated visual experts per MoE layer (2).
        num_modalities: Size of the one-hot modality indicator (2: 0 = X-ray/QaTa, 1 = CT/MosMed).
        heads: Cross-attention heads of the TMoE experts (2).
        scale_init: Initial layer scale s of the TMoE experts (1.421).
        leaky_slope: Negative slope of the text expert's LeakyReLU (0.1).
        use_padding_mask: Pass :attr:`TextFeatures.mask` as key-padding mask to the cross-attention
            (textseg default, ``docs/methods.md`` §1.2) or attend to padded tokens like the public code.
        head_channels: Channels after the x4 pixel shuffle of the head (24).
        text_pe_max_len: Precomputed positions of the text PE (24; extended on demand).
        vis_pe_max_len: Precomputed positions of the visual PE (5000; extended on demand).
    """

    #: The base module passes the batch's modality codes to ``forward`` (the gate's indicator, Eq. 3).
    takes_modality = True

    def __init__(
        self,
        vision: ConvNextModel,
        text_dim: int,
        *,
        expert: ExpertKind = "tmoe",
        num_experts: int = 2,
        num_modalities: int = 2,
        heads: int = 2,
        scale_init: float = 1.421,
        leaky_slope: float = 0.1,
        use_padding_mask: bool = True,
        head_channels: int = 24,
        text_pe_max_len: int = 24,
        vis_pe_max_len: int = 5000,
    ) -> None:
        super().__init__()
        self.vision = vision
        self.text_dim = text_dim
        self.expert = expert
        self.num_experts = num_experts
        self.num_modalities = num_modalities
        self.use_padding_mask = use_padding_mask
        w1, w2, w3, w4 = vision_widths(vision)

        moe: dict[str, Any] = {
            "expert": expert,
            "num_experts": num_experts,
            "num_modalities": num_modalities,
            "heads": heads,
            "scale_init": scale_init,
            "leaky_slope": leaky_slope,
            "text_pe_max_len": text_pe_max_len,
            "vis_pe_max_len": vis_pe_max_len,
        }

        def block(c_deep: int, c_skip: int) -> MoEDecoderBlock:
            return MoEDecoderBlock(c_deep, c_skip, text_dim, **moe)

        self.blocks = nn.ModuleList([block(w4, w3), block(w3, w2), block(w2, w1)])
        self.head = SubpixelSegHead(w1, head_channels, scale_factor=4, out_channels=1)

    def moe_layers(self) -> list[MoELayer]:
        """Return the six MoE layers in decoder order."""
        return [m for m in self.modules() if isinstance(m, MoELayer)]

    def _check_inputs(self, image: Tensor, text: TextFeatures, modality: Tensor | None) -> tuple[Tensor, Tensor]:
        """Validate the inputs; return the 3-channel image and the ``[B]`` long modality indices."""
        image = repeat_to_channels(image, int(self.vision.config.num_channels))
        batch = image.shape[0]
        h, w = image.shape[-2:]
        if h % CONVNEXT_STRIDE or w % CONVNEXT_STRIDE:
            raise DataError(f"TextMoECore: image side {h}x{w} is not a multiple of {CONVNEXT_STRIDE}")
        tokens, mask, pooled = text.tokens, text.mask, text.pooled
        if tokens.ndim != 3 or tokens.shape[0] != batch or tokens.shape[2] != self.text_dim:
            raise DataError(
                f"TextMoECore: text tokens have shape {tuple(tokens.shape)}, expected [{batch}, L, {self.text_dim}]"
            )
        if tuple(mask.shape) != tuple(tokens.shape[:2]):
            raise DataError(f"TextMoECore: text mask has shape {tuple(mask.shape)}, expected {tuple(tokens.shape[:2])}")
        if tuple(pooled.shape) != (batch, self.text_dim):
            raise DataError(
                f"TextMoECore: pooled text has shape {tuple(pooled.shape)}, expected {(batch, self.text_dim)}"
            )
        if modality is None:
            return image, torch.zeros(batch, dtype=torch.long, device=image.device)
        if modality.shape != (batch,) or modality.dtype.is_floating_point or modality.dtype.is_complex:
            raise DataError(
                f"TextMoECore: modality must be an integer tensor of shape [{batch}], got dtype {modality.dtype} "
                f"and shape {tuple(modality.shape)}"
            )
        ok = ((modality >= 0) & (modality < self.num_modalities)).all()
        assert_on_device(ok, f"TextMoECore: a modality is out of range [0, {self.num_modalities}) (0 = X-ray, 1 = CT)")
        return image, modality.long()

    def _padding_mask(self, text: TextFeatures) -> Tensor | None:
        """Key-padding bias of the cross-attentions (``-inf`` at padded tokens), or ``None`` when masks are off.

        Built once per forward (:func:`~textseg.models.attention.text_key_bias`) for all twelve attentions.
        """
        if not self.use_padding_mask or self.expert != "tmoe":
            return None
        return text_key_bias(text.mask, text.tokens.dtype, "TextMoECore")

    def forward(self, image: Tensor, text: TextFeatures, modality: Tensor | None = None) -> SegOutput:
        """Segment ``image`` guided by ``text`` and the modality indicator.

        Args:
            image: ``[B, 1 | 3, H, W]`` with H and W multiples of 32 (1-channel images are repeated to 3).
            text: Frozen text features of the B referring texts.
            modality: ``[B]`` integer modality indices (0 = X-ray/QaTa, 1 = CT/MosMed); ``None`` means all 0.

        Returns:
            ``SegOutput`` with ``logits [B, 1, H, W]``, ``experts`` (6 x ``[B, E, C, h, w]``) and
            ``gates [B, 6, E]``.

        Raises:
            DataError: On a bad image, text or modality.
        """
        image, modality = self._check_inputs(image, text, modality)
        padding_mask = self._padding_mask(text)
        indicator = modality_indicator(modality, self.num_modalities)  # once for the six gates
        f1, f2, f3, f4 = convnext_stages(self.vision, image)
        experts: list[Tensor] = []
        gates: list[Tensor] = []
        x = f4
        for block, skip in zip(self.blocks, (f3, f2, f1), strict=True):
            x, e, g = block(x, skip, text, indicator, padding_mask)
            experts.extend(e)
            gates.extend(g)
        return SegOutput(logits=self.head(x), experts=experts, gates=torch.stack(gates, dim=1))
