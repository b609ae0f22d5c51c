"""State-dict conversion between the public reference code and textseg's networks (``docs/parity.md``).

The reference repositories save their networks under a Lightning wrapper (``model.``, and TextMoE's EMA copy under
``ema_model.``). :func:`from_reference` renames such a state dict into the layout of textseg's core
(:class:`~textseg.models.guidedecoder.GuideDecoderCore`, :class:`~textseg.models.mmiunet.MMIUNetCore`,
:class:`~textseg.models.textmoe.TextMoECore`) and :func:`to_reference` goes back. The renames are the
templates of :data:`RULES` (``{a}``/``{b}`` stand for an index, ``{r}`` for the rest of a key), one list per
backbone, used in both directions:

* ``guidedecoder`` -- ``Junelin2333/LanGuideMedSeg-MICCAI2023: utils/model.py`` ``LanGuideMedSeg``;
* ``mmiunet`` -- ``nguyenpbui/MMI-UNet: utils/model.py`` ``MMIUNet_V2`` (facebookresearch ConvNeXt keys, renamed as in
  ``docs/methods.md`` §1.1);
* ``textmoe`` -- ``jgfiuuuu/TextMoE: utils/model.py`` ``TextmoeSeg``. Its head has three replicated output channels;
  textseg keeps one (``docs/methods.md`` §4 Decision), so channel 0 is taken and :func:`to_reference` repeats it.

Reference keys that have no textseg counterpart are listed in :data:`DROPPED` (sinusoidal PE buffers, which textseg
recomputes, and modules the reference never uses); the frozen text encoder (``text_encoder.model.*``) is returned
separately as ``BertModel`` keys. Any other key, a missing key or a shape mismatch raises one
:class:`~textseg.errors.DataError` that names the first few and the count.

:func:`seeded_state_dict` fills a state dict with deterministic weights that depend only on ``(seed, key, shape)``;
the parity fixtures (``benchmarks/parity/make_fixtures.py``) and their tests use it to give the reference network and
textseg's the same weights without storing them.
"""

from __future__ import annotations

import pickle
import re
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, get_args

import torch
from torch import Tensor

from textseg.errors import DataError
from textseg.models.layers import sinusoidal_table

__all__ = [
    "BACKBONES",
    "DROPPED",
    "RULES",
    "ReferenceConversion",
    "check_state_dict",
    "convert_reference",
    "from_reference",
    "load_reference_checkpoint",
    "reference_state_dict",
    "seeded_state_dict",
    "to_reference",
    "vision_architecture",
]

Backbone = Literal["guidedecoder", "mmiunet", "textmoe"]
BACKBONES: tuple[str, ...] = get_args(Backbone)
#: Keys named in an error message at most.
MAX_NAMED = 5
#: Prefix of the frozen text encoder inside the reference networks.
TEXT_PREFIX = "text_encoder.model."
#: Output channels of TextMoE's reference head (three replicated mask channels, ``docs/methods.md`` §4).
TEXTMOE_REF_CHANNELS = 3
#: Rows of the reference's visual PE buffers (``PositionalEncoding(max_len=5000)``).
REF_PE_LEN = 5000

_HF_CONVNEXT = [("encoder.model.{r}", "vision.{r}")]
_FB_CONVNEXT = [
    ("downsample_layers.0.0.{r}", "vision.embeddings.patch_embeddings.{r}"),
    ("downsample_layers.0.1.{r}", "vision.embeddings.layernorm.{r}"),
    ("downsample_layers.{a}.{b}.{r}", "vision.encoder.stages.{a}.downsampling_layer.{b}.{r}"),
    ("stages.{a}.{b}.norm.{r}", "vision.encoder.stages.{a}.layers.{b}.layernorm.{r}"),
    ("stages.{a}.{b}.gamma", "vision.encoder.stages.{a}.layers.{b}.layer_scale_parameter"),
    ("stages.{a}.{b}.{r}", "vision.encoder.stages.{a}.layers.{b}.{r}"),
    ("norm.{r}", "vision.layernorm.{r}"),
]
_MOE_INNER = [
    ("text_project.{r}", "text_expert.{r}"),
    ("gate.{r}", "gate.{r}"),
    ("experts.{a}.conv.{r}", "convs.{a}.{r}"),
    ("experts.{a}.cross_attn.{r}", "attns.{a}.{r}"),
    ("experts.{a}.norm.{r}", "query_norms.{a}.{r}"),
    ("scale", "scale"),
]

#: (reference template, textseg template) per backbone, most specific first; used in both directions.
RULES: dict[str, list[tuple[str, str]]] = {
    "guidedecoder": [
        *_HF_CONVNEXT,
        ("encoder.project_head.{r}", "image_proj.proj.{r}"),
        ("text_encoder.project_head.{r}", "text_proj.net.{r}"),
        *[(f"decoder{s}.{{r}}", f"decoder{s}.{{r}}") for s in (16, 8, 4)],
        ("decoder1.{r}", "head.upsample.{r}"),
        ("out.{r}", "head.out.{r}"),
    ],
    "mmiunet": [
        *_FB_CONVNEXT,
        *[(f"fusion{k}.{{r}}", f"itms.{k - 1}.{{r}}") for k in (1, 2, 3, 4)],
        *[(f"decode{k}.{{r}}", f"decoders.{4 - k}.{{r}}") for k in (4, 3, 2)],
        ("decoder1.{r}", "upsample.{r}"),
        ("out.{r}", "out.{r}"),
        ("text_encoder.project_head.{r}", "text_head.{r}"),
    ],
    "textmoe": [
        *_HF_CONVNEXT,
        *[
            (f"block{k}.{ref}.{{r}}", f"blocks.{k - 1}.{ts}.{{r}}")
            for k in (1, 2, 3)
            for ref, ts in (("up", "up"), ("bn1", "norm1"), ("bn2", "norm2"))
        ],
        *[
            (f"block{k}.moe_conv{m}.{ref}", f"blocks.{k - 1}.moe{m}.{ts}")
            for k in (1, 2, 3)
            for m in (1, 2)
            for ref, ts in _MOE_INNER
        ],
        ("decoder1.{r}", "head.upsample.{r}"),
        ("out.{r}", "head.out.{r}"),
    ],
}
#: Reference keys with no textseg counterpart, deliberately not carried over (reason in ``docs/parity.md``).
DROPPED: dict[str, list[str]] = {
    "guidedecoder": ["{r}.vis_pos.pe", "{r}.txt_pos.pe"],  # sinusoidal tables, recomputed by textseg
    "mmiunet": ["head.{r}"],  # Linear 768 -> 1, never called by MMIUNet_V2.forward
    "textmoe": ["{r}.vis_pos.pe", "{r}.txt_pos.pe"],
}
#: textseg keys with no reference counterpart: left to textseg's initialisation (MMI-UNet's ITCL image head is
#: Semi-MedRef's addition, ``docs/methods.md`` §6.5).
TEXTSEG_ONLY: dict[str, list[str]] = {"guidedecoder": [], "mmiunet": ["image_head.{r}"], "textmoe": []}

_PLACEHOLDER = re.compile(r"\{([abr])\}")


def _compile(template: str) -> re.Pattern[str]:
    parts = _PLACEHOLDER.split(template)
    out = []
    for i, part in enumerate(parts):
        if i % 2 == 0:
            out.append(re.escape(part))
        else:
            out.append(rf"(?P<{part}>\d+)" if part in "ab" else rf"(?P<{part}>.+)")
    return re.compile("^" + "".join(out) + "$")


def _rename(key: str, rules: list[tuple[str, str]], reverse: bool) -> str | None:
    for ref, ts in rules:
        source, target = (ts, ref) if reverse else (ref, ts)
        match = _compile(source).match(key)
        if match:
            return target.format(**match.groupdict())
    return None


def _matches(key: str, templates: list[str]) -> bool:
    return any(_compile(t).match(key) for t in templates)


def _check_backbone(backbone: str) -> None:
    if backbone not in BACKBONES:
        raise DataError(f"unknown backbone {backbone!r}; expected one of {', '.join(BACKBONES)}")


def _named(items: list[str]) -> str:
    more = f" and {len(items) - MAX_NAMED} more" if len(items) > MAX_NAMED else ""
    return f"{len(items)}: {', '.join(items[:MAX_NAMED])}{more}"


@dataclass
class ReferenceConversion:
    """A reference state dict in textseg's layout.

    Attributes:
        net: The textseg core's state dict (``module.net`` of a textseg method).
        text: The frozen text encoder as ``BertModel`` keys (empty when the checkpoint holds none).
        dropped: Reference keys deliberately not carried over (:data:`DROPPED`, the text encoder's MLM head).
    """

    net: dict[str, Tensor]
    text: dict[str, Tensor] = field(default_factory=dict)
    dropped: list[str] = field(default_factory=list)


def reference_state_dict(checkpoint: Mapping[str, Any], use_ema: bool = False, source: str = "checkpoint") -> dict:
    """The reference network's plain state dict from a Lightning checkpoint or a plain state dict.

    Args:
        checkpoint: A Lightning checkpoint (``{"state_dict": {"model.<key>": tensor, ...}}``) or a plain state dict,
            with or without the ``model.`` prefix.
        use_ema: Take TextMoE's EMA teacher (``ema_model.``) instead of the student (``model.``).
        source: Name of the file, for messages.

    Returns:
        ``{key: tensor}`` without the wrapper prefix.

    Raises:
        DataError: If it holds no tensors or keys outside the network.
    """
    state = checkpoint.get("state_dict", checkpoint)
    if not isinstance(state, Mapping) or not state:
        raise DataError(f"{source}: no state dict found (expected a Lightning checkpoint or a state dict)")
    others = [k for k, v in state.items() if not isinstance(v, Tensor)]
    if others:
        raise DataError(f"{source}: entries that are not tensors ({_named(others)}); not a state dict")
    wanted, skipped = ("ema_model.", "model.") if use_ema else ("model.", "ema_model.")
    if not any(k.startswith(wanted) for k in state):
        if use_ema:
            raise DataError(f"{source}: no 'ema_model.' keys; the checkpoint holds no EMA teacher")
        return dict(state)
    outside = [k for k in state if not k.startswith((wanted, skipped))]
    if outside:
        raise DataError(f"{source}: keys outside the wrapped network ({_named(outside)})")
    return {k[len(wanted) :]: v for k, v in state.items() if k.startswith(wanted)}


def convert_reference(state_dict: Mapping[str, Tensor], backbone: str) -> ReferenceConversion:
    """Rename a reference network's state dict to textseg's layout (no shape checks; see :func:`from_reference`).

    Raises:
        DataError: Listing every key that no rule maps and that is not a known unused key.
    """
    _check_backbone(backbone)
    state = reference_state_dict(state_dict)
    out = ReferenceConversion(net={})
    unmapped: list[str] = []
    for key, tensor in state.items():
        if key.startswith(TEXT_PREFIX):
            name = key[len(TEXT_PREFIX) :]
            if name.startswith(("cls.", "cls_projection_head.")):
                out.dropped.append(key)  # CXR-BERT's MLM head and projection: not part of BertModel
            else:
                out.text[name.removeprefix("bert.")] = tensor
            continue
        if _matches(key, DROPPED[backbone]):
            out.dropped.append(key)
            continue
        new = _rename(key, RULES[backbone], reverse=False)
        if new is None:
            unmapped.append(key)
            continue
        if backbone == "textmoe" and new.startswith("head.out.") and tensor.shape[:1] == (TEXTMOE_REF_CHANNELS,):
            tensor = tensor[:1].clone()  # three replicated channels -> one (docs/methods.md §4 Decision)
        out.net[new] = tensor
    if unmapped:
        raise DataError(f"{backbone} reference checkpoint: keys with no textseg counterpart ({_named(unmapped)})")
    return out


def check_state_dict(state: Mapping[str, Tensor], target: Mapping[str, Tensor], what: str, allow_missing=()) -> None:
    """Raise one :class:`DataError` if ``state`` does not fit ``target`` (missing, unexpected keys, shapes).

    Args:
        state: The converted state dict.
        target: The receiving module's state dict (only keys and shapes are read).
        what: Description of ``state`` for the message.
        allow_missing: Templates of ``target`` keys that may be absent (textseg-only modules).
    """
    missing = [k for k in target if k not in state and not _matches(k, list(allow_missing))]
    unexpected = [k for k in state if k not in target]
    shapes = [
        f"{k} {tuple(v.shape)} vs {tuple(target[k].shape)}"
        for k, v in state.items()
        if k in target and tuple(v.shape) != tuple(target[k].shape)
    ]
    problems = [
        f"{name} ({_named(items)})"
        for name, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes))
        if items
    ]
    if problems:
        raise DataError(f"{what} does not fit the textseg network: {'; '.join(problems)}")


def from_reference(
    state_dict: Mapping[str, Any], backbone: str, target: Mapping[str, Tensor] | None = None
) -> dict[str, Tensor]:
    """Convert a reference checkpoint (Lightning or plain state dict) to the textseg core's state dict.

    Args:
        state_dict: The reference checkpoint or state dict (``model.`` prefix optional).
        backbone: ``"guidedecoder"``, ``"mmiunet"`` or ``"textmoe"``.
        target: The textseg core's state dict to check keys and shapes against (``None``: no check).

    Returns:
        The core's state dict; the text encoder's weights and the dropped keys are in :func:`convert_reference`.

    Raises:
        DataError: On an unmapped key, a missing key or a shape mismatch.
    """
    converted = convert_reference(state_dict, backbone)
    if target is not None:
        check_state_dict(converted.net, target, f"{backbone} reference checkpoint", TEXTSEG_ONLY[backbone])
    return converted.net


def _reference_buffers(ref: dict[str, Tensor], backbone: str) -> None:
    """Add the reference's persistent sinusoidal PE buffers, so that the result loads strictly."""
    if backbone == "mmiunet":
        width = ref["norm.weight"].shape[0]
        ref.setdefault("head.weight", torch.zeros(1, width))  # unused Linear of MMIUNet_V2
        ref.setdefault("head.bias", torch.zeros(1))
        return
    if backbone == "guidedecoder":
        for s in (16, 8, 4):
            layer = f"decoder{s}.guide_layer."
            channels = ref[layer + "norm1.weight"].shape[0]
            text_len = ref[layer + "text_project.0.weight"].shape[0]
            ref[layer + "vis_pos.pe"] = sinusoidal_table(REF_PE_LEN, channels).unsqueeze(0)
            ref[layer + "txt_pos.pe"] = sinusoidal_table(text_len, channels).unsqueeze(0)
        return
    for key in [k for k in ref if k.endswith(".gate.weight")]:
        moe = key[: -len("gate.weight")]
        channels = ref[moe + "text_project.2.weight"].shape[0]
        ref[moe + "txt_pos.pe"] = sinusoidal_table(24, channels).unsqueeze(0)
        experts = {k.split(".")[len(moe.split(".")) :][0] for k in ref if k.startswith(moe + "experts.")}
        for e in experts:
            ref[f"{moe}experts.{e}.vis_pos.pe"] = sinusoidal_table(REF_PE_LEN, channels).unsqueeze(0)


def to_reference(
    state_dict: Mapping[str, Tensor],
    backbone: str,
    text_state: Mapping[str, Tensor] | None = None,
) -> dict[str, Tensor]:
    """Convert a textseg core's state dict to the reference network's plain state dict.

    Args:
        state_dict: The core's state dict (``module.net``; a ``net.`` prefix is stripped).
        backbone: ``"guidedecoder"``, ``"mmiunet"`` or ``"textmoe"``.
        text_state: The frozen ``BertModel``'s state dict, written as CXR-BERT keys (``text_encoder.model.bert.``).

    Returns:
        The reference state dict, without the Lightning ``model.`` prefix.

    Raises:
        DataError: On a key no rule maps back.
    """
    _check_backbone(backbone)
    state = {k.removeprefix("net."): v for k, v in state_dict.items()}
    ref: dict[str, Tensor] = {}
    unmapped: list[str] = []
    for key, tensor in state.items():
        if _matches(key, TEXTSEG_ONLY[backbone]):
            continue
        new = _rename(key, RULES[backbone], reverse=True)
        if new is None:
            unmapped.append(key)
            continue
        if backbone == "textmoe" and key.startswith("head.out."):
            tensor = tensor.repeat(TEXTMOE_REF_CHANNELS, *([1] * (tensor.ndim - 1)))
        ref[new] = tensor
    if unmapped:
        raise DataError(f"textseg {backbone} state dict: keys with no reference counterpart ({_named(unmapped)})")
    _reference_buffers(ref, backbone)  # the reference's PE tables and MMI-UNet's unused head: a strict load
    for key, tensor in (text_state or {}).items():
        ref[f"{TEXT_PREFIX}bert.{key}"] = tensor
    return ref


def vision_architecture(net_state: Mapping[str, Tensor]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The ConvNeXt ``(depths, widths)`` of a textseg core's state dict (read from ``vision.encoder.stages``)."""
    pattern = re.compile(r"^vision\.encoder\.stages\.(\d+)\.layers\.(\d+)\.dwconv\.weight$")
    blocks: dict[int, int] = {}
    widths: dict[int, int] = {}
    for key, tensor in net_state.items():
        match = pattern.match(key)
        if match:
            stage, block = int(match[1]), int(match[2])
            blocks[stage] = max(blocks.get(stage, 0), block + 1)
            widths[stage] = int(tensor.shape[0])
    if not blocks:
        raise DataError("the state dict holds no ConvNeXt stages (vision.encoder.stages.*)")
    order = sorted(blocks)
    return tuple(blocks[s] for s in order), tuple(widths[s] for s in order)


class _Stub:
    """Stands in for any class of a reference checkpoint's metadata (argparse namespaces, configs)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args

    def __setstate__(self, state: Any) -> None:
        self.state = state


class _MetadataUnpickler(pickle.Unpickler):
    """Unpickles tensors and plain containers; every other class becomes :class:`_Stub` (nothing is executed)."""

    _ALLOWED: ClassVar[set[tuple[str, str]]] = {
        ("collections", "OrderedDict"),
        ("torch._utils", "_rebuild_tensor_v2"),
        ("torch._utils", "_rebuild_parameter"),
        ("torch._utils", "_rebuild_parameter_with_state"),
        ("torch", "Size"),
        ("torch", "device"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED or (module == "torch" and name.endswith("Storage")):
            return super().find_class(module, name)
        if module == "builtins" and name in ("set", "frozenset", "slice", "complex"):
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        return _Stub


class _MetadataPickle:
    """A ``pickle_module`` for :func:`torch.load` whose unpickler is :class:`_MetadataUnpickler`."""

    Unpickler = _MetadataUnpickler
    load = staticmethod(pickle.load)


def load_reference_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a reference checkpoint (PL 1.x ``.ckpt`` or ``.pth`` state dict) without its code.

    ``torch.load(weights_only=True)`` first; a PL 1.x checkpoint whose hyper-parameters are objects of the reference
    code (an argparse namespace, a config class) is then read again with an unpickler that rebuilds tensors and
    replaces every other class by an inert stub, so nothing of the file is executed.

    Raises:
        DataError: If the file is missing or unreadable.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"reference checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=False, pickle_module=_MetadataPickle)
        except Exception as exc:
            raise DataError(f"{path} could not be read as a checkpoint: {type(exc).__name__}: {exc}") from exc
    if not isinstance(ckpt, dict):
        raise DataError(f"{path} holds a {type(ckpt).__name__}, not a checkpoint or state dict")
    return ckpt


def seeded_state_dict(template: Mapping[str, Tensor], seed: int) -> dict[str, Tensor]:
    """Deterministic weights of moderate scale for ``template``'s keys, each a function of ``(seed, key, shape)``.

    Matrices and kernels get ``N(0, 1 / fan_in)``; 1-D ``weight`` tensors (normalisation scales) ``1 + N(0, 0.1²)``;
    biases and running means ``N(0, 0.05²)``; running variances ``U(0.5, 1.5)``; ConvNeXt layer scales
    ``U(0.05, 0.15)``; scalars (GuideDecoder's alpha, TextMoE's s) ``0.5 + N(0, 0.1²)``; integer buffers are copied.
    So every tensor, BatchNorm statistics included, takes part in the output and no two keys share values.

    Args:
        template: Keys, shapes and dtypes (e.g. a textseg core's ``state_dict()``).
        seed: The fixture seed.

    Returns:
        A new state dict on the CPU.
    """
    out: dict[str, Tensor] = {}
    for key, ref in template.items():
        if not ref.is_floating_point():
            out[key] = ref.detach().clone().cpu()
            continue
        gen = torch.Generator().manual_seed((seed * 1_000_003 + zlib.crc32(key.encode())) % (2**63))
        shape = tuple(ref.shape)
        leaf = key.rsplit(".", 1)[-1]
        if len(shape) == 0:
            value = 0.5 + 0.1 * torch.randn((), generator=gen)
        elif leaf == "running_var":
            value = 0.5 + torch.rand(shape, generator=gen)
        elif leaf in ("layer_scale_parameter", "gamma"):
            value = 0.05 + 0.1 * torch.rand(shape, generator=gen)
        elif len(shape) == 1 and leaf == "weight":
            value = 1.0 + 0.1 * torch.randn(shape, generator=gen)
        elif len(shape) == 1:
            value = 0.05 * torch.randn(shape, generator=gen)
        else:
            fan_in = max(1, int(torch.tensor(shape[1:]).prod()))
            value = torch.randn(shape, generator=gen) / fan_in**0.5
        out[key] = value.to(ref.dtype)
    return out
