"""Shared data types of the networks.

Every text-guided network in :mod:`textseg.models` is split into a frozen text encoder
(:class:`textseg.models.encoders.TextEncoder`) producing :class:`TextFeatures`, and a trainable *core* (vision
encoder + decoder) that consumes the image and those features and returns a :class:`SegOutput`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypedDict

from torch import Tensor


@dataclass
class TextFeatures:
    """Output of the frozen text encoder for one batch of referring texts.

    Attributes:
        tokens: Last-layer token states ``[B, L, d_t]`` (``hidden_states[-1]``), L = ``max_length`` (24).
        mask: Key-padding information ``[B, L]`` (bool, ``True`` = real token). When padding masks are
            switched off (faithful reproduction, ``methods.md`` §1.2) it is all ``True``.
        pooled: ``[B, d_t]`` mean of ``hidden_states[1]``, ``[2]`` and ``[-1]`` over the tokens allowed by
            ``mask``; the input of the ITCL text projection head (``methods.md`` §6.5).
    """

    tokens: Tensor
    mask: Tensor
    pooled: Tensor


class SegOutput(TypedDict):
    """What every network core returns.

    Keys:
        logits: Segmentation logits ``[B, 1, H, W]`` at the input resolution (no sigmoid).
        image_embed: ITCL image embedding ``[B, D]`` (projected, not normalised).
        text_embed: ITCL text embedding ``[B, D]`` (projected, not normalised).
    """

    logits: Tensor
    image_embed: Tensor
    text_embed: Tensor
