"""Networks: frozen text encoders, ConvNeXt vision encoders and the GuideDecoder / MMI-UNet / TextMoE cores."""

from __future__ import annotations

from typing import Literal

from torch import nn

from textseg.models.types import SegOutput, TextFeatures

__all__ = ["SegOutput", "TextFeatures", "build_core"]


def build_core(
    backbone: Literal["guidedecoder", "mmiunet", "textmoe"],
    vision_encoder: str,
    text_dim: int,
    *,
    vision_checkpoint: str | None = None,
    use_padding_mask: bool = True,
    guide_alpha: float = 0.01,
    use_eca: bool = False,
    project_dim: int = 768,
    moe_expert: Literal["tmoe", "plain"] = "tmoe",
    num_experts: int = 2,
) -> nn.Module:
    """Build the trainable part of a network (vision encoder + text-guided decoder + ITCL heads, if any).

    Args:
        backbone: ``"guidedecoder"`` (Zhong et al., MICCAI 2023), ``"mmiunet"`` (Bui et al., MICCAI 2024) or
            ``"textmoe"`` (Zeng et al., MICCAI 2025; no ITCL heads, its forward takes a ``modality`` tensor).
        vision_encoder: ConvNeXt spec: ``"tiny"``, ``"convnext-tiny"``, a hub id or a local directory.
        text_dim: Hidden size d_t of the text encoder.
        vision_checkpoint: Optional original facebookresearch ConvNeXt checkpoint (e.g. ``convnext_tiny_22k_224.pth``)
            loaded into the vision encoder (MMI-UNet's ImageNet-22k weights).
        use_padding_mask: Pass key-padding masks to attention over text tokens (documented deviation).
        guide_alpha: Initial value of GuideDecoder's learnable cross-attention scale alpha.
        use_eca: Efficient Channel Attention on MMI-UNet's skips (paper figure; off in the trained code).
        project_dim: Dimension D of the ITCL projection heads (GuideDecoder / MMI-UNet only).
        moe_expert: TextMoE expert kind: ``"tmoe"`` (text-to-visual cross-attention experts, the paper's TMoE)
            or ``"plain"`` (Plain-MoE ablation of the paper's Table 2: element-wise product with the projected
            pooled text). Ignored by the other backbones.
        num_experts: Gated visual experts per TextMoE MoE layer (2). Ignored by the other backbones.
    """
    from textseg.models.encoders import build_vision_encoder, load_fb_convnext_checkpoint
    from textseg.models.parts import convert_part_batchnorm

    vision = build_vision_encoder(vision_encoder)
    if vision_checkpoint:
        load_fb_convnext_checkpoint(vision, vision_checkpoint)
    if backbone == "guidedecoder":
        from textseg.models.guidedecoder import GuideDecoderCore

        core: nn.Module = GuideDecoderCore(
            vision,
            text_dim,
            alpha_init=guide_alpha,
            project_dim=project_dim,
            use_padding_mask=use_padding_mask,
        )
    elif backbone == "mmiunet":
        from textseg.models.mmiunet import MMIUNetCore

        core = MMIUNetCore(
            vision, text_dim, use_eca=use_eca, project_dim=project_dim, use_padding_mask=use_padding_mask
        )
    elif backbone == "textmoe":
        from textseg.models.textmoe import TextMoECore

        core = TextMoECore(
            vision, text_dim, expert=moe_expert, num_experts=num_experts, use_padding_mask=use_padding_mask
        )
    else:
        raise ValueError(f"unknown backbone {backbone!r}; expected 'guidedecoder', 'mmiunet' or 'textmoe'")
    return convert_part_batchnorm(core)  # per-part BatchNorm statistics for batched forwards (models/parts.py)
