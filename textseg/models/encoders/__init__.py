"""Vision and text encoders shared by every network (``docs/methods.md`` §1.1, §1.2, §9).

* :mod:`textseg.models.encoders.vision` -- ConvNeXt vision encoders and the facebookresearch key converter;
* :mod:`textseg.models.encoders.text` -- the frozen BERT-family text encoder with its feature cache.
"""

from textseg.models.encoders.text import TINY_TEXT_VOCAB, TextEncoder, build_text_backbone
from textseg.models.encoders.vision import (
    CONVNEXT_STRIDE,
    build_vision_encoder,
    convert_fb_convnext_key,
    convnext_stages,
    load_fb_convnext_checkpoint,
    vision_widths,
)

__all__ = [
    "CONVNEXT_STRIDE",
    "TINY_TEXT_VOCAB",
    "TextEncoder",
    "build_text_backbone",
    "build_vision_encoder",
    "convert_fb_convnext_key",
    "convnext_stages",
    "load_fb_convnext_checkpoint",
    "vision_widths",
]
