"""Shared data types of the networks.

Every text-guided network in :mod:`textseg.models` is split into a frozen text encoder
(:class:`textseg.models.encoders.TextEncoder`) producing :class:`TextFeatures`, and a trainable *core* (vision
encoder + decoder) that consumes the image and those features and returns a :class:`SegOutput`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

if sys.version_info >= (3, 11):
    from typing import NotRequired, TypedDict
else:  # Python 3.10: the typing_extensions backport (a dependency of torch)
    from typing_extensions import NotRequired, TypedDict


@dataclass
class TextFeatures:
    """Output of the frozen text encoder for one batch of referring texts.

    Attributes:
        tokens: Last-layer token states ``[B, L, d_t]`` (``hidden_states[-1]``), L = ``max_length`` (24).
        mask: Key-padding information ``[B, L]`` (bool, ``True`` = real token). When padding masks are
            switched off (faithful reproduction, ``docs/methods.md`` §1.2) it is all ``True``.
        pooled: ``[B, d_t]`` mean of ``hidden_states[1]``, ``[2]`` and ``[-1]`` over the tokens allowed by
            ``mask``; the input of the ITCL text projection head (``docs/methods.md`` §6.5).
    """

    tokens: Tensor
    mask: Tensor
    pooled: Tensor

    def __len__(self) -> int:
        """The batch size B."""
        return self.tokens.shape[0]

    def split(self, sizes: Sequence[int]) -> list[TextFeatures]:
        """Consecutive parts of ``sizes`` rows (views, no copy)."""
        rows = [t.split(list(sizes)) for t in (self.tokens, self.mask, self.pooled)]
        return [TextFeatures(*part) for part in zip(*rows, strict=True)]

    @staticmethod
    def cat(parts: Sequence[TextFeatures]) -> TextFeatures:
        """The parts' rows, concatenated in order (the parts themselves when there is one)."""
        if len(parts) == 1:
            return parts[0]
        return TextFeatures(*(torch.cat([getattr(p, k) for p in parts]) for k in ("tokens", "mask", "pooled")))

    def where(self, condition: Tensor, other: TextFeatures) -> TextFeatures:
        """Row ``i`` of ``self`` where ``condition[i]`` (a ``[B]`` bool tensor), else of ``other``; on the device."""
        c = condition.view(-1, 1)
        return TextFeatures(
            torch.where(c[..., None], self.tokens, other.tokens),
            torch.where(c, self.mask, other.mask),
            torch.where(c, self.pooled, other.pooled),
        )


@dataclass
class TextChoice:
    """Each sample's text picked from two candidates by a device-side flag, so the host never reads the flag.

    Semi-MedRef's mixed view takes the span-mixed text where a T-PatchMix block was accepted (a decision made on the
    device from the teacher's probabilities) and its own text elsewhere: both candidates are encoded and each sample's
    features are picked on the device (:meth:`TextFeatures.where`).

    Attributes:
        if_true: ``B`` texts used where ``condition`` holds.
        if_false: ``B`` texts used elsewhere.
        condition: ``[B]`` bool tensor, on any device.
    """

    if_true: list[str]
    if_false: list[str]
    condition: Tensor


class SegOutput(TypedDict):
    """What every network core returns.

    Only ``logits`` is present for every network; the other keys depend on the core.

    Keys:
        logits: Segmentation logits ``[B, 1, H, W]`` at the input resolution (no sigmoid).
        image_embed: ITCL image embedding ``[B, D]`` (projected, not normalised). GuideDecoder and MMI-UNet
            cores only (TextMoE has no ITCL heads).
        text_embed: ITCL text embedding ``[B, D]`` (projected, not normalised). GuideDecoder and MMI-UNet
            cores only.
        experts: TextMoE only (Zeng et al., MICCAI 2025; ``docs/methods.md`` §4): one tensor per MoE layer, in
            decoder order, each ``[B, E, C, H, W]`` -- the stacked outputs of the E gated visual experts of
            that layer (C and H x W of the layer's output), the input of the differential loss (Eq. 8).
        gates: TextMoE only: ``[B, L, E]`` softmax gate weights of the L MoE layers (Eq. 3), in the same order
            as ``experts``; each row sums to 1.
    """

    logits: Tensor
    image_embed: NotRequired[Tensor]
    text_embed: NotRequired[Tensor]
    experts: NotRequired[list[Tensor]]
    gates: NotRequired[Tensor]
