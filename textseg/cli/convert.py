"""``textseg convert``: a reference-code checkpoint to a textseg checkpoint, and back (``docs/parity.md``).

Examples:
    textseg convert mmiunet_qata.ckpt --backbone mmiunet --out mmiunet_textseg.ckpt --text-encoder ./CXR-BERT
    textseg convert run/checkpoints/best.ckpt --backbone guidedecoder --out guidedecoder_reference.ckpt --to reference

``--to textseg`` (default) reads a checkpoint of the public code (a PL 1.x Lightning checkpoint, whose ``model.``
prefix is stripped, or a plain state dict; TextMoE's EMA teacher with ``--ema``), renames it with
:func:`textseg.models.convert.convert_reference` and writes a Lightning checkpoint like the ones ``textseg fit``
writes: ``state_dict`` of a :class:`~textseg.methods.supervised.SupervisedModule`, its complete ``hyper_parameters``,
textseg's stamp and ``datamodule_hyper_parameters.image_size``. ``textseg test --ckpt_path`` and
``Segmenter.from_pretrained`` load it. The hyper-parameters rebuild the reference network: the ConvNeXt read from the
weights (``convnext-tiny`` for the reference's ConvNeXt-T), the text encoder ``--text-encoder`` (default CXR-BERT, the
reference's; its width must match the checkpoint's), ``use_padding_mask=False`` and ``loss=dice_only`` (what the
reference computes, ``docs/methods.md`` §1.2, §1.4). The frozen text encoder's weights come from the checkpoint when it
holds them (``text_encoder.model.*``), else from ``--text-encoder``. ``--to reference`` writes the student network of a
textseg checkpoint in the reference layout under ``model.``.

Keys that cannot be mapped and shape mismatches end with one ``textseg: error: ...`` line and exit code 2.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

#: The reference code's text encoder (all four works).
CXR_BERT = "microsoft/BiomedVLP-CXR-BERT-specialized"
#: ConvNeXt specs textseg can build, by (depths, widths).
VISION_SPECS: dict[tuple[tuple[int, ...], tuple[int, ...]], str] = {
    ((3, 3, 9, 3), (96, 192, 384, 768)): "convnext-tiny",
    ((1, 1, 1, 1), (16, 32, 64, 128)): "tiny",
}
#: Per backbone: (key of a Linear whose input is d_t, key of a Linear whose output is the ITCL dim D or None).
DIM_KEYS: dict[str, tuple[str, str | None]] = {
    "mmiunet": ("itms.0.linear1.weight", "text_head.0.weight"),
    "guidedecoder": ("decoder16.guide_layer.text_project.2.weight", "text_proj.net.0.weight"),
    "textmoe": ("blocks.0.moe1.text_expert.0.weight", None),
}
DESCRIPTION = "Convert a reference-code checkpoint (GuideDecoder, MMI-UNet, TextMoE) to textseg's layout and back."


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="textseg convert", description=DESCRIPTION)
    parser.add_argument(
        "checkpoint", metavar="REF_CKPT", help="reference checkpoint (or textseg's with --to reference)"
    )
    parser.add_argument("--backbone", required=True, choices=("guidedecoder", "mmiunet", "textmoe"))
    parser.add_argument("--out", required=True, help="the checkpoint file to write")
    parser.add_argument("--to", choices=("textseg", "reference"), default="textseg", help="direction (textseg)")
    parser.add_argument("--text-encoder", default=CXR_BERT, help=f"text encoder spec of the result ({CXR_BERT})")
    parser.add_argument("--vision-encoder", default=None, help="ConvNeXt spec (default: read from the weights)")
    parser.add_argument("--image-size", type=int, default=224, help="input side recorded for inference (224)")
    parser.add_argument("--modality", type=int, choices=(0, 1), default=0, help="modality for inference (0 X-ray)")
    parser.add_argument("--ema", action="store_true", help="take TextMoE's EMA teacher (ema_model.) instead")
    return parser


def _vision_spec(net: dict[str, Any], given: str | None) -> str:
    from textseg.errors import DataError
    from textseg.models.convert import vision_architecture

    if given:
        return given
    arch = vision_architecture(net)
    if arch not in VISION_SPECS:
        raise DataError(f"no built-in ConvNeXt has depths {arch[0]} and widths {arch[1]}; pass --vision-encoder")
    return VISION_SPECS[arch]


def to_textseg(args: argparse.Namespace) -> dict[str, Any]:
    """Build the textseg checkpoint dict of a reference checkpoint (see the module docstring)."""
    import lightning
    import torch

    from textseg.engine.checkpointing import stamp
    from textseg.errors import DataError
    from textseg.methods.supervised import SupervisedModule
    from textseg.models.convert import (
        TEXTSEG_ONLY,
        check_state_dict,
        convert_reference,
        load_reference_checkpoint,
        reference_state_dict,
    )

    source = str(args.checkpoint)
    state = reference_state_dict(load_reference_checkpoint(source), use_ema=args.ema, source=source)
    conv = convert_reference(state, args.backbone)
    text_key, project_key = DIM_KEYS[args.backbone]
    if text_key not in conv.net:
        raise DataError(f"{source}: no {text_key} after conversion; is it a {args.backbone} checkpoint?")
    text_dim = int(conv.net[text_key].shape[1])
    hparams: dict[str, Any] = {
        "backbone": args.backbone,
        "vision_encoder": _vision_spec(conv.net, args.vision_encoder),
        "text_encoder": args.text_encoder,
        "use_padding_mask": False,
        "loss": "dice_only",
    }
    if project_key and project_key in conv.net:
        hparams["project_dim"] = int(conv.net[project_key].shape[0])
    torch.manual_seed(0)  # textseg-only modules (MMI-UNet's ITCL image head) keep a reproducible initialisation
    module = SupervisedModule(**hparams)
    if module.text_encoder.hidden_size != text_dim:
        raise DataError(
            f"{source} was trained with text width {text_dim}, but --text-encoder {args.text_encoder!r} has "
            f"width {module.text_encoder.hidden_size}"
        )
    check_state_dict(conv.net, module.net.state_dict(), source, TEXTSEG_ONLY[args.backbone])
    module.net.load_state_dict(conv.net, strict=False)
    if conv.text:
        bert = module.text_encoder.bert.state_dict()
        text = {k: v for k, v in conv.text.items() if k in bert or not k.startswith("pooler.")}
        check_state_dict(text, bert, f"{source} (text encoder)")
        module.text_encoder.bert.load_state_dict(text)
    checkpoint: dict[str, Any] = {
        "state_dict": module.state_dict(),
        # LightningCLI's class key, as in a ``textseg fit`` checkpoint (``textseg test --ckpt_path`` rebuilds from it)
        "hyper_parameters": {**dict(module.hparams), "_class_path": f"{SupervisedModule.__module__}.SupervisedModule"},
        "datamodule_hyper_parameters": {"image_size": args.image_size, "predict_modality": args.modality},
        "pytorch-lightning_version": lightning.__version__,
        "epoch": 0,
        "global_step": 0,
        "textseg_converted": {
            "source": source,
            "backbone": args.backbone,
            "text_encoder_weights": "checkpoint" if conv.text else args.text_encoder,
            "dropped": len(conv.dropped),
            "initialised": [k for k in module.net.state_dict() if k not in conv.net],
        },
    }
    stamp(checkpoint, module)
    return checkpoint


def to_reference_checkpoint(args: argparse.Namespace) -> dict[str, Any]:
    """The reference-layout Lightning checkpoint of a textseg checkpoint's student network."""
    from textseg.engine.checkpointing import KEY, read_checkpoint
    from textseg.errors import DataError
    from textseg.models.convert import to_reference

    checkpoint = read_checkpoint(args.checkpoint)
    saved = (checkpoint.get(KEY) or {}).get("backbone")
    if saved and saved != args.backbone:
        raise DataError(f"{args.checkpoint} holds a {saved} network, not {args.backbone}")
    state = checkpoint["state_dict"]
    net = {k[len("net.") :]: v for k, v in state.items() if k.startswith("net.")}
    if not net:
        raise DataError(f"{args.checkpoint} holds no network weights (net.*)")
    prefix = "text_encoder.bert."
    text = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    ref = to_reference(net, args.backbone, text_state=text or None)
    return {"state_dict": {f"model.{k}": v for k, v in ref.items()}, "textseg_converted": {"source": args.checkpoint}}


def convert(args: argparse.Namespace) -> None:
    """Run the conversion and write ``--out``."""
    import torch

    from textseg.errors import DataError

    if args.image_size <= 0 or args.image_size % 32:
        raise DataError(f"--image-size must be a positive multiple of 32, got {args.image_size}")
    checkpoint = to_textseg(args) if args.to == "textseg" else to_reference_checkpoint(args)
    out = Path(args.out).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, out)
    print(f"textseg convert: wrote {out} ({args.backbone}, {args.to} layout)")


def main(argv: Sequence[str]) -> int:
    """Convert a checkpoint between the reference code's layout and textseg's.

    Args:
        argv: The arguments after ``convert``.

    Returns:
        0 on success, 2 for bad input (one ``textseg: error: ...`` line, :func:`textseg.cli.runner.guarded`).
    """
    from textseg.cli.runner import guarded_code

    return guarded_code(convert, _parser().parse_args(list(argv)))
