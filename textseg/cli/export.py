"""``textseg export``: write a trained model as ONNX or TorchScript (image + tokenized text in, logits out).

Examples:
    textseg export --model runs/x/checkpoints/best.ckpt --format onnx --out model.onnx --check
    textseg export --model saved_model/ --format torchscript --out model.pt

Besides the file it writes ``<file>.json`` (image size, normalisation, tokenizer settings) and the tokenizer folder
``<file>.tokenizer`` (:mod:`textseg.inference.export`; ``docs/guide.md``, section "Exporting a model (ONNX,
TorchScript)"). ``--check`` runs the exported file and the eager model on random images and prints the largest
difference of their logits; above 1e-4 the command fails. Bad input ends with one ``textseg: error: ...`` line and
exit code 2.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

DESCRIPTION = (
    "Export a trained model to ONNX or TorchScript: inputs image [B, 1, S, S] (z-scored), input_ids and "
    "attention_mask [B, L]; output logits [B, 1, S, S]. Writes FILE, FILE.json and the tokenizer folder FILE.tokenizer."
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="textseg export", description=DESCRIPTION)
    parser.add_argument("--model", required=True, help="checkpoint (.ckpt), save_pretrained folder or Hub id")
    parser.add_argument("--format", required=True, choices=("onnx", "torchscript"), help="the file format")
    parser.add_argument("--out", required=True, metavar="FILE", help="the file to write (model.onnx, model.pt)")
    parser.add_argument(
        "--check", action="store_true", help="compare the exported file with the eager model; fail above 1e-4"
    )
    parser.add_argument(
        "--modality", type=int, choices=(0, 1), default=None, help="0 = X-ray, 1 = CT, built into the graph (TextMoE)"
    )
    parser.add_argument("--image-size", type=int, default=None, help="network side, for a checkpoint without one")
    return parser


def export(args: argparse.Namespace) -> Path:
    """Run the command: load the model on the CPU, export it, optionally check parity.

    Returns:
        The exported file.

    Raises:
        DataError: For a missing model, a missing ``onnx`` package, an output path that is a folder, or a failed check.
    """
    from textseg.errors import DataError
    from textseg.inference import Segmenter
    from textseg.inference.export import TOLERANCE, export_model, max_abs_diff

    model = Segmenter.from_pretrained(args.model, device="cpu", image_size=args.image_size, modality=args.modality)
    out = export_model(model, args.out, args.format)
    print(f"textseg: wrote {out} ({args.format}, image {model.image_size} px), {out.name}.json, {out.name}.tokenizer/")
    if args.check:
        diff = max_abs_diff(out, model)
        print(f"textseg: max |exported - eager| of the logits: {diff:.3g}")
        if not diff <= TOLERANCE:
            raise DataError(f"{out}: the exported model differs from the eager one by {diff:.3g} (> {TOLERANCE:g})")
    return out


def main(argv: Sequence[str]) -> int:
    """Export a trained model to ONNX or TorchScript.

    Args:
        argv: The arguments after ``export``.

    Returns:
        0 on success, 2 for bad input (one ``textseg: error: ...`` line, :func:`textseg.cli.runner.guarded`);
        argparse's usage errors exit with 2 too.
    """
    from textseg.cli.runner import guarded_code

    return guarded_code(export, _parser().parse_args(list(argv)))
