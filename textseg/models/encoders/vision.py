"""Vision encoders: ConvNeXt built from a hub id, a folder or a config (``docs/methods.md`` §1.1).

Hugging Face ``ConvNextModel`` (Liu et al., "A ConvNet for the 2020s", CVPR 2022) built from a hub id, a local
directory, a full-size random ConvNeXt-T config or a tiny test config, plus a key converter for the original
facebookresearch checkpoints (``convnext_tiny_22k_224.pth``, used by MMI-UNet).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import torch
from torch import Tensor
from transformers import ConvNextConfig, ConvNextModel

from textseg.errors import DataError

log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------------------------------------
# Vision encoder
# ----------------------------------------------------------------------------------------------------------

#: Stage depths / widths of the tiny random test ConvNeXt (widths divisible by 8 for the 8-head MMI-UNet ITM).
TINY_CONVNEXT_DEPTHS: tuple[int, int, int, int] = (1, 1, 1, 1)
TINY_CONVNEXT_WIDTHS: tuple[int, int, int, int] = (16, 32, 64, 128)
#: Full-size ConvNeXt-T (``docs/methods.md`` §1.1).
CONVNEXT_T_DEPTHS: tuple[int, int, int, int] = (3, 3, 9, 3)
CONVNEXT_T_WIDTHS: tuple[int, int, int, int] = (96, 192, 384, 768)
#: Total stride of the ConvNeXt stages; input sides must be multiples of it.
CONVNEXT_STRIDE = 32


def looks_like_path(spec: str) -> bool:
    """Whether ``spec`` is meant as a filesystem path rather than a hub id (``org/name``)."""
    return spec.startswith(("/", "./", "../", "~", "\\")) or spec.count("/") > 1 or "\\" in spec


#: Vision encoder specs built in code (nothing to download).
BUILTIN_VISION_SPECS: tuple[str, ...] = ("tiny", "convnext-tiny")


def build_vision_encoder(spec: str = "tiny") -> ConvNextModel:
    """Build the ConvNeXt vision encoder (``docs/methods.md`` §1.1 Decision).

    Args:
        spec: ``"tiny"`` -- random ConvNeXt with depths ``(1, 1, 1, 1)`` and widths ``(16, 32, 64, 128)`` (for
            tests); ``"convnext-tiny"`` -- random full-size ConvNeXt-T (depths 3/3/9/3, widths 96-768; 27.82 M
            parameters), for parameter counts and benchmarks; anything else -- a hub id (e.g.
            ``facebook/convnext-tiny-224``) or a local directory, loaded with
            ``ConvNextModel.from_pretrained`` (a local directory never touches the network).

    Returns:
        The ``ConvNextModel`` (trainable). Input sides must be multiples of 32; the four stage outputs are
        ``hidden_states[1:]`` at strides 4/8/16/32.

    Raises:
        DataError: If the spec names neither a built-in config nor a loadable checkpoint.
    """
    if spec == "tiny":
        return ConvNextModel(ConvNextConfig(depths=list(TINY_CONVNEXT_DEPTHS), hidden_sizes=list(TINY_CONVNEXT_WIDTHS)))
    if spec == "convnext-tiny":
        return ConvNextModel(ConvNextConfig(depths=list(CONVNEXT_T_DEPTHS), hidden_sizes=list(CONVNEXT_T_WIDTHS)))
    local = Path(spec).expanduser()
    if looks_like_path(spec) and not local.is_dir():
        raise DataError(f"vision encoder spec {spec!r}: directory does not exist")
    try:
        if local.is_dir():
            model = ConvNextModel.from_pretrained(str(local), local_files_only=True)
        else:
            model = ConvNextModel.from_pretrained(spec)
    except Exception as exc:  # transformers raises OSError/ValueError/EnvironmentError variants
        raise DataError(
            f"vision encoder spec {spec!r}: not 'tiny'/'convnext-tiny' and could not be loaded as a ConvNeXt "
            f"hub id or local directory ({type(exc).__name__}: {exc})"
        ) from exc
    if not isinstance(model, ConvNextModel):
        raise DataError(f"vision encoder spec {spec!r} did not load a ConvNextModel (got {type(model).__name__})")
    return model


def convnext_stages(model: ConvNextModel, pixel_values: Tensor) -> list[Tensor]:
    """The four stage outputs of a ConvNeXt (strides 4/8/16/32): ``hidden_states[1:]`` of its forward.

    The stem and the stages are called directly: the same values as ``model(pixel_values,
    output_hidden_states=True).hidden_states[1:]``, without transformers' output-capturing wrapper, whose lock
    ``torch.compile`` cannot trace (a graph break in every forward), and without the unused final norm and pooler.
    """
    x = model.embeddings(pixel_values)
    outs = []
    for stage in model.encoder.stages:
        x = stage(x)
        outs.append(x)
    return outs


def vision_widths(model: ConvNextModel) -> tuple[int, int, int, int]:
    """Return the four stage widths (channels at strides 4/8/16/32) of a ConvNeXt encoder.

    Args:
        model: The encoder.

    Returns:
        ``(C1, C2, C3, C4)``, e.g. ``(96, 192, 384, 768)`` for ConvNeXt-T.

    Raises:
        DataError: If the model does not have exactly four stages.
    """
    sizes = tuple(int(s) for s in (model.config.hidden_sizes or ()))
    if len(sizes) != 4:
        raise DataError(f"ConvNeXt encoder must have 4 stages, config has hidden_sizes={list(sizes)}")
    return sizes[0], sizes[1], sizes[2], sizes[3]


#: FB -> HF key renames (``docs/methods.md`` §1.1 table; same as transformers' ``convert_convnext_to_pytorch.py``).
_FB_KEY_RULES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"^downsample_layers\.0\.0\.(.+)$"), r"embeddings.patch_embeddings.\1"),
    (re.compile(r"^downsample_layers\.0\.1\.(.+)$"), r"embeddings.layernorm.\1"),
    (re.compile(r"^downsample_layers\.(\d+)\.([01])\.(.+)$"), r"encoder.stages.\1.downsampling_layer.\2.\3"),
    (re.compile(r"^stages\.(\d+)\.(\d+)\.norm\.(.+)$"), r"encoder.stages.\1.layers.\2.layernorm.\3"),
    (re.compile(r"^stages\.(\d+)\.(\d+)\.gamma$"), r"encoder.stages.\1.layers.\2.layer_scale_parameter"),
    (
        re.compile(r"^stages\.(\d+)\.(\d+)\.(dwconv|pwconv1|pwconv2)\.(.+)$"),
        r"encoder.stages.\1.layers.\2.\3.\4",
    ),
    (re.compile(r"^norm\.(.+)$"), r"layernorm.\1"),
)


def convert_fb_convnext_key(key: str) -> str | None:
    """Convert one facebookresearch ConvNeXt state-dict key to the HF ``ConvNextModel`` name.

    Args:
        key: FB key (the part under ``"model"``), e.g. ``"stages.2.5.gamma"``.

    Returns:
        The HF key (e.g. ``"encoder.stages.2.layers.5.layer_scale_parameter"``), or ``None`` for keys without
        an HF counterpart (the classification ``head.*`` and anything unknown).
    """
    for pattern, repl in _FB_KEY_RULES:
        if pattern.match(key):
            return pattern.sub(repl, key)
    return None


def load_fb_convnext_checkpoint(model: ConvNextModel, path: str | Path) -> dict[str, list[str]]:
    """Load an original facebookresearch ConvNeXt checkpoint (``convnext_tiny_22k_224.pth``) into ``model``.

    The tensors are read with ``torch.load(weights_only=True)`` from the ``"model"`` entry (a bare state dict
    is accepted too), renamed with :func:`convert_fb_convnext_key` and copied wherever the converted name
    exists in ``model`` with the same shape -- as MMI-UNet does, so the 21,841-class head is skipped
    (``docs/methods.md`` §1.1).

    Args:
        model: The HF ConvNeXt to fill in place.
        path: The ``.pth`` file.

    Returns:
        ``{"loaded": [HF keys copied], "skipped": [FB keys not copied (no counterpart or shape mismatch)],
        "missing": [HF keys left at their current values]}``.

    Raises:
        DataError: If the file is missing, is not a state dict, or no tensor matches the model.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"ConvNeXt checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise DataError(f"ConvNeXt checkpoint {path} could not be read: {type(exc).__name__}: {exc}") from exc
    state = ckpt.get("model", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise DataError(f"ConvNeXt checkpoint {path} holds no tensor state dict (expected key 'model')")
    target = model.state_dict()
    loaded: list[str] = []
    skipped: list[str] = []
    with torch.no_grad():
        for fb_key, tensor in state.items():
            hf_key = convert_fb_convnext_key(fb_key)
            if hf_key is None or hf_key not in target or target[hf_key].shape != tensor.shape:
                skipped.append(fb_key)
                continue
            target[hf_key].copy_(tensor)
            loaded.append(hf_key)
    if not loaded:
        raise DataError(f"ConvNeXt checkpoint {path}: no tensor matched the model; is it a ConvNeXt checkpoint?")
    missing = [k for k in target if k not in set(loaded)]
    if missing:
        log.warning("ConvNeXt checkpoint %s: %d model tensors not in the file: %s", path, len(missing), missing)
    return {"loaded": loaded, "skipped": skipped, "missing": missing}
