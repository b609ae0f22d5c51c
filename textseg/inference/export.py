"""Export a trained model to ONNX or TorchScript: image and tokenized text in, logits out, text encoder included.

The exported graph is :class:`ExportableSegmenter`: ``forward(image, input_ids, attention_mask) -> logits``, the
frozen text encoder (:meth:`~textseg.models.encoders.TextEncoder.encode_ids`) followed by the evaluation network, as
:class:`~textseg.inference.Segmenter` runs them in eval mode. Next to the file, ``<file>.json`` records what a user
needs to prepare the inputs without textseg (image size, channels, normalisation, tokenizer settings), and
``<file>.tokenizer/`` holds the tokenizer (``AutoTokenizer.from_pretrained`` reads it); the same JSON is stored in the
file too (ONNX ``metadata_props``, TorchScript extra file ``textseg_export.json``). User guide: ``docs/guide.md``,
section "Exporting a model (ONNX, TorchScript)".

Why the legacy (TorchScript-based) ONNX exporter, ``torch.onnx.export(..., dynamo=False)``: with torch 2.13 it exports
all three backbones on CPU as they are, with onnxruntime within 1e-6 of eager. The ``torch.export``-based exporter
(``dynamo=True``, the default since torch 2.9) stops at the input checks of MMI-UNet and TextMoE (``if
bool(mask.any())`` is a data-dependent branch for ``torch.export``), needs the extra package ``onnxscript``, and took
~18 s instead of ~1.5 s on the tiny GuideDecoder. Opset 17 has ``LayerNormalization`` as one operator and runs on
the onnxruntime of the ``onnx`` extra (>= 1.19). While tracing, ``nn.MultiheadAttention``'s fused inference kernel is
switched off (it has no ONNX form); the traced graph computes the same attention.
"""

from __future__ import annotations

import copy
import json
import os
import warnings
import zipfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from textseg.errors import DataError
from textseg.models.encoders import TextEncoder

if TYPE_CHECKING:
    from textseg.inference.segmenter import Segmenter

__all__ = [
    "FORMATS",
    "ONNX_OPSET",
    "TOLERANCE",
    "ExportableSegmenter",
    "export_metadata",
    "export_model",
    "export_onnx",
    "export_torchscript",
    "max_abs_diff",
    "run_exported",
]

#: Export formats.
FORMATS = ("onnx", "torchscript")
Format = Literal["onnx", "torchscript"]
#: ONNX opset of :func:`export_onnx`.
ONNX_OPSET = 17
#: Largest accepted ``max |exported - eager|`` of the logits (``textseg export --check``).
TOLERANCE = 1e-4
#: Names of the graph's inputs and output.
INPUT_NAMES = ("image", "input_ids", "attention_mask")
OUTPUT_NAME = "logits"
#: Name of the metadata entry (ONNX) or extra file (TorchScript) holding :func:`export_metadata`.
METADATA_KEY = "textseg_export.json"
#: Texts of the example input: different lengths, so the trace sees padded and unpadded-length rows.
EXAMPLE_TEXTS = (
    "Bilateral pulmonary infection, two infected areas, lower left lung and lower right lung.",
    "Unilateral pulmonary infection, one infected area, upper right lung.",
)
_PIP_HINT = 'pip install "textseg[onnx]"'


class ExportableSegmenter(nn.Module):
    """The traceable model: tokenized texts through the frozen text encoder, then the segmentation network.

    The image input must be what :class:`~textseg.inference.Segmenter` feeds the network: ``float32 [B, 1, S, S]``
    at the model's image size ``S``, an 8-bit grey picture scaled to [0, 1], resized to ``S x S`` (bicubic, no
    anti-aliasing) and clipped to [0, 1], then z-scored per image (``(x - mean) / std``, population std).
    ``input_ids`` and ``attention_mask`` are ``int64 [B, L]`` from the model's tokenizer with
    ``padding="max_length"``, ``truncation=True`` and ``max_length=L`` (24 by default).

    Args:
        text_encoder: The model's frozen text encoder.
        net: The evaluation network (``Segmenter.module.net``).
        modality: Modality code given to networks that read it (TextMoE's gate): 0 = X-ray, 1 = CT. It is a
            constant of the exported graph.
    """

    def __init__(self, text_encoder: TextEncoder, net: nn.Module, modality: int = 0) -> None:
        super().__init__()
        self.text_encoder = text_encoder
        self.net = net
        self.modality = int(modality)
        self.takes_modality = bool(getattr(net, "takes_modality", False))
        self.eval()

    @classmethod
    def from_segmenter(cls, segmenter: Segmenter, modality: int | None = None) -> ExportableSegmenter:
        """The exportable model of ``segmenter`` (sharing its modules), with its modality unless one is given."""
        module = segmenter.module
        return cls(module.text_encoder, module.eval_net, segmenter.modality_code(modality))

    def forward(self, image: Tensor, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Segmentation logits ``[B, 1, S, S]`` (``sigmoid`` gives the lesion probability; see the class docstring)."""
        text = self.text_encoder.encode_ids(input_ids, attention_mask)
        extra = {"modality": torch.full_like(input_ids[:, 0], self.modality)} if self.takes_modality else {}
        logits: Tensor = self.net(image, text, **extra)["logits"]
        return logits


def export_metadata(
    segmenter: Segmenter, fmt: Format, path: str | os.PathLike[str], modality: int | None = None
) -> dict[str, Any]:
    """What a user needs to run the exported file without textseg (written as ``<file>.json`` and into the file).

    Args:
        segmenter: The model.
        fmt: ``"onnx"`` or ``"torchscript"``.
        path: The exported file (its tokenizer folder is ``<file>.tokenizer``).
        modality: The modality code built into the graph (default the segmenter's).

    Returns:
        A JSON-able dict: inputs and output, image size and channels, normalisation, tokenizer settings, modality.
    """
    from textseg import __version__

    encoder = segmenter.module.text_encoder
    size, length = int(segmenter.image_size), int(encoder.max_length)
    hparams = segmenter.config.get("hparams", {})
    return {
        "format": "textseg-export",
        "format_version": 1,
        "textseg_version": __version__,
        "export_format": fmt,
        "onnx_opset": ONNX_OPSET if fmt == "onnx" else None,
        "method": segmenter.config.get("method"),
        "backbone": hparams.get("backbone"),
        "inputs": {
            "image": {"dtype": "float32", "shape": ["batch", 1, size, size]},
            "input_ids": {"dtype": "int64", "shape": ["batch", length]},
            "attention_mask": {"dtype": "int64", "shape": ["batch", length]},
        },
        "output": {
            "logits": {"dtype": "float32", "shape": ["batch", 1, size, size]},
            "probability": "sigmoid(logits); the mask of textseg predict is logits >= 0 (probability >= 0.5)",
        },
        "image_size": size,
        "channels": 1,
        "normalization": {
            "grey": "8-bit grey picture (PIL mode L) in display orientation",
            "scale": "x / 255 -> [0, 1]",
            "resize": f"bicubic to {size} x {size} (torch, align_corners=False, no anti-aliasing), clip to [0, 1]",
            "zscore": "per image: (x - mean) / std, population std (std 0 counts as 1)",
        },
        "tokenizer": {
            "files": _tokenizer_dir(Path(path)).name,
            "spec": str(hparams.get("text_encoder", encoder.spec)),
            "max_length": length,
            "padding": "max_length",
            "truncation": True,
            "do_lower_case": bool(getattr(encoder.tokenizer, "do_lower_case", True)),
        },
        "modality": segmenter.modality_code(modality),
    }


@contextmanager
def _tracing() -> Iterator[None]:
    """Trace the decomposed attention, without gradients, silencing the tracer's expected warnings.

    ``nn.MultiheadAttention``'s inference fast path (``aten::_native_multi_head_attention``, taken for frozen weights
    without autograd) has no ONNX symbolic, so it is switched off while tracing. The tracer's warnings are expected:
    the networks' shape checks become constants of the fixed-size graph.
    """
    from transformers.utils import logging as hf_logging

    fastpath, verbosity = torch.backends.mha.get_fastpath_enabled(), hf_logging.get_verbosity()
    try:
        torch.backends.mha.set_fastpath_enabled(False)
        hf_logging.set_verbosity_error()  # the tracer reads every attribute: "loss_type=None ... ForCausalLMLoss"
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", ".*legacy TorchScript-based ONNX export", DeprecationWarning)
            warnings.filterwarnings("ignore", ".*(Constant folding|aten::index)", UserWarning)
            warnings.filterwarnings("ignore", ".*is_gradient_checkpointing", FutureWarning)  # the tracer reads it
            yield
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
        hf_logging.set_verbosity(verbosity)


def _example(segmenter: Segmenter) -> tuple[Tensor, Tensor, Tensor]:
    """Two random z-scored images at the model's size and two tokenized :data:`EXAMPLE_TEXTS` (on the CPU)."""
    size = int(segmenter.image_size)
    image = torch.randn(2, 1, size, size, generator=torch.Generator().manual_seed(0))
    texts = [EXAMPLE_TEXTS[i % len(EXAMPLE_TEXTS)] for i in range(2)]
    enc = segmenter.module.text_encoder.tokenize(texts, on_device=False)
    return image, enc["input_ids"], enc["attention_mask"]


def _on_cpu(model: ExportableSegmenter) -> ExportableSegmenter:
    """The model itself when on the CPU, else a CPU copy (exports are traced on the CPU)."""
    if next(model.parameters()).device.type == "cpu":
        return model
    return copy.deepcopy(model).cpu()


def _tokenizer_dir(out: Path) -> Path:
    return out.with_name(out.name + ".tokenizer")


def _write_companions(segmenter: Segmenter, out: Path, meta: dict[str, Any]) -> None:
    """Write ``<file>.json`` (``meta``) and the tokenizer folder ``<file>.tokenizer`` next to the exported file."""
    segmenter.module.text_encoder.tokenizer.save_pretrained(str(_tokenizer_dir(out)))
    out.with_name(out.name + ".json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")


def _target(path: str | os.PathLike[str]) -> Path:
    out = Path(path).expanduser()
    if out.is_dir():
        raise DataError(f"--out {out} is a folder: give the file to write (e.g. {out / 'model.onnx'})")
    out.parent.mkdir(parents=True, exist_ok=True)
    return out


def export_onnx(
    segmenter: Segmenter, path: str | os.PathLike[str], modality: int | None = None, opset: int = ONNX_OPSET
) -> Path:
    """Write the model as ONNX (dynamic batch axis; legacy exporter, see the module docstring) and its companions.

    Besides ``path``: ``<path>.json`` (:func:`export_metadata`, also in the file's ``metadata_props``) and the
    tokenizer folder ``<path>.tokenizer``.

    Args:
        segmenter: The model.
        path: The ``.onnx`` file.
        modality: Modality code built into the graph (default the segmenter's).
        opset: ONNX opset.

    Returns:
        The file.

    Raises:
        DataError: If the ``onnx`` package is missing or ``path`` is a folder.
    """
    try:
        import onnx
    except ImportError as exc:
        raise DataError(f"ONNX export needs the onnx package: {_PIP_HINT}") from exc
    out = _target(path)
    model = _on_cpu(ExportableSegmenter.from_segmenter(segmenter, modality))
    axes = {name: {0: "batch"} for name in (*INPUT_NAMES, OUTPUT_NAME)}
    with _tracing():
        torch.onnx.export(
            model,
            _example(segmenter),
            str(out),
            input_names=list(INPUT_NAMES),
            output_names=[OUTPUT_NAME],
            dynamic_axes=axes,
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )
    meta = export_metadata(segmenter, "onnx", out, modality)
    proto = onnx.load(str(out))  # torch's exporter writes paths only: the metadata goes in afterwards
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(meta)
    onnx.checker.check_model(proto)
    onnx.save(proto, str(out))
    _write_companions(segmenter, out, meta)
    return out


def export_torchscript(segmenter: Segmenter, path: str | os.PathLike[str], modality: int | None = None) -> Path:
    """Write the model as TorchScript (``torch.jit.trace``; any batch size; ``torch.jit.load`` reads it).

    Besides ``path``: ``<path>.json`` (:func:`export_metadata`, also the archive's extra file
    ``textseg_export.json``) and the tokenizer folder ``<path>.tokenizer``.

    Args:
        segmenter: The model.
        path: The file (``.pt``).
        modality: Modality code built into the graph (default the segmenter's).

    Returns:
        The file.

    Raises:
        DataError: If ``path`` is a folder.
    """
    out = _target(path)
    model = _on_cpu(ExportableSegmenter.from_segmenter(segmenter, modality))
    with _tracing():
        traced = torch.jit.trace(model, _example(segmenter), check_trace=False)
    meta = export_metadata(segmenter, "torchscript", out, modality)
    torch.jit.save(traced, str(out), _extra_files={METADATA_KEY: json.dumps(meta)})
    _write_companions(segmenter, out, meta)
    return out


def export_model(segmenter: Segmenter, path: str | os.PathLike[str], fmt: Format, modality: int | None = None) -> Path:
    """Export ``segmenter`` as ``fmt`` to ``path`` (:func:`export_onnx` or :func:`export_torchscript`).

    Args:
        segmenter: The model.
        path: The file to write.
        fmt: ``"onnx"`` or ``"torchscript"``.
        modality: Modality code built into the graph (default the segmenter's; only TextMoE reads it).

    Returns:
        The exported file.

    Raises:
        DataError: For an unknown format, a missing ``onnx`` package or ``path`` a folder.
    """
    exporters: dict[str, Callable[..., Path]] = {"onnx": export_onnx, "torchscript": export_torchscript}
    if fmt not in exporters:
        raise DataError(f"unknown export format {fmt!r}: expected one of {', '.join(FORMATS)}")
    return exporters[fmt](segmenter, path, modality)


def run_exported(path: str | os.PathLike[str], image: Tensor, input_ids: Tensor, attention_mask: Tensor) -> np.ndarray:
    """Run an exported file (TorchScript or ONNX, told apart by its content) on the CPU; the logits as NumPy.

    Raises:
        DataError: If the file is missing, or is ONNX and onnxruntime is not installed.
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise DataError(f"exported model not found: {file}")
    if zipfile.is_zipfile(file):  # TorchScript archives are zip files, ONNX files protobuf
        scripted = torch.jit.load(str(file), map_location="cpu")
        with torch.no_grad():
            return np.asarray(scripted(image.cpu(), input_ids.cpu(), attention_mask.cpu()).numpy())
    try:
        import onnxruntime
    except ImportError as exc:
        raise DataError(f"running an ONNX model needs onnxruntime: {_PIP_HINT}") from exc
    session = onnxruntime.InferenceSession(str(file), providers=["CPUExecutionProvider"])
    feeds = {"image": image.cpu().numpy(), "input_ids": input_ids.cpu().numpy()}
    feeds["attention_mask"] = attention_mask.cpu().numpy()
    return np.asarray(session.run([OUTPUT_NAME], feeds)[0])


def max_abs_diff(
    path: str | os.PathLike[str],
    segmenter: Segmenter,
    texts: Sequence[str] = EXAMPLE_TEXTS,
    modality: int | None = None,
    seed: int = 0,
) -> float:
    """``max |exported - eager|`` of the logits on a random image per text (the parity check of ``--check``).

    The eager side is the segmenter's own forward (``forward_batch`` on the texts, its text cache included).

    Args:
        path: The exported file.
        segmenter: The model it was exported from.
        texts: One referring text per image of the batch.
        modality: The modality code the file was exported with (default the segmenter's).
        seed: Seed of the random images.

    Returns:
        The largest absolute difference of the logits.
    """
    texts = list(texts)
    size = int(segmenter.image_size)
    image = torch.randn(len(texts), 1, size, size, generator=torch.Generator().manual_seed(seed))
    eager = segmenter.logits(image, texts, modality).float().cpu().numpy()
    enc = segmenter.module.text_encoder.tokenize(texts, on_device=False)
    exported = run_exported(path, image, enc["input_ids"], enc["attention_mask"])
    if exported.shape != eager.shape:
        raise DataError(f"exported model {path} returned shape {exported.shape}, the eager model {eager.shape}")
    return float(np.abs(exported - eager).max())
