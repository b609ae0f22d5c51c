"""TextMoE on composite synthetic data (X-ray-like + CT-like) against the same network trained on each modality alone.

Three runs with the same network, hyper-parameters, label ratio (applied per dataset, so every run sees exactly the
same labeled images of its modalities), seed and number of epochs:

* composite: ``TextSegDataModule(dataset=["synthetic", "synthetic_ct"])`` -- one model for both modalities;
* X-ray only: ``dataset="synthetic"``;
* CT only: ``dataset="synthetic_ct"``.

Each run is tested with its best checkpoint (validation Dice); the composite run reports per-dataset test metrics
(``test_dice_synthetic``, ``test_dice_synthetic_ct``), which are set against the single-modality runs.

Usage (CPU, tiny ConvNeXt, packaged MiniLM text encoder):

    python benchmarks/textmoe_synthetic.py --ratio 0.25 --epochs 14 --pretrain_epochs 4 \\
        --out benchmarks/results_textmoe_synthetic.md
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from fit_and_test import fit_and_test
from report_utils import add_threads_argument, command_line, environment, environment_line, set_threads

from textseg import TextMoEModule, TextSegDataModule

NAMES = {"synthetic": "X-ray-like", "synthetic_ct": "CT-like"}


def datamodule(args: argparse.Namespace, datasets: list[str]) -> TextSegDataModule:
    """Both modalities use the same sizes; labeled/unlabeled batch sizes as the composite config (1:3)."""
    roots = {"synthetic": str(Path(args.root) / "xray"), "synthetic_ct": str(Path(args.root) / "ct")}
    return TextSegDataModule(
        dataset=datasets,  # type: ignore[arg-type]
        root=[roots[d] for d in datasets],
        labeled_ratio=args.ratio,
        image_size=args.image_size,
        batch_size=args.batch_size,
        unlabeled_batch_size=3 * args.batch_size,
        eval_batch_size=32,
        seed=args.seed,
        synthetic_train=args.n_train,
        synthetic_val=args.n_val,
        synthetic_test=args.n_test,
        synthetic_image_size=args.synthetic_size,
    )


def train(name: str, datasets: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """Fit TextMoE on ``datasets``, test the best checkpoint, return the test metrics and the wall time."""

    def build() -> TextMoEModule:
        return TextMoEModule(
            vision_encoder="tiny", text_encoder="minilm", lr=args.lr, min_lr=1e-5, pretrain_epochs=args.pretrain_epochs
        )

    return fit_and_test(name, build, datamodule(args, datasets), args.epochs, args.log_dir, args.seed)[1]


def main() -> None:
    """Run the three trainings and write the table."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--ratio", type=float, default=0.25)
    parser.add_argument("--epochs", type=int, default=14)
    parser.add_argument("--pretrain_epochs", type=int, default=4, help="labeled-only first stage (TextMoE's code)")
    parser.add_argument("--n_train", type=int, default=200)
    parser.add_argument("--n_val", type=int, default=50)
    parser.add_argument("--n_test", type=int, default=100)
    parser.add_argument("--synthetic_size", type=int, default=128)
    parser.add_argument("--image_size", type=int, default=64)
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--root", default="data/synthetic_composite")
    parser.add_argument("--log_dir", default="runs/bench_textmoe")
    parser.add_argument("--out", default="benchmarks/results_textmoe_synthetic.md")
    add_threads_argument(parser)
    args = parser.parse_args()
    set_threads(args.threads)

    composite = train("composite", ["synthetic", "synthetic_ct"], args)
    alone = {d: train(f"{d}_only", [d], args) for d in ("synthetic", "synthetic_ct")}
    shown = ("ratio", "epochs", "pretrain_epochs", "n_train", "image_size", "seed")
    command = command_line("textmoe_synthetic.py", parser, args, always=shown, skip=("root", "log_dir", "out"))
    env = environment()
    lines = [
        f"# TextMoE: composite vs single-modality training, synthetic data, {args.ratio:.0%} labels per dataset",
        "",
        f"Command: `{command}` (CPU, tiny ConvNeXt, packaged MiniLM text "
        "encoder; the same network, hyper-parameters, labeled images, seed and epochs in every run).",
        "",
        environment_line(env),
        "",
        "| test set | metric | composite (X-ray + CT) | same modality alone | difference |",
        "|---|---|---|---|---|",
    ]
    for d in ("synthetic", "synthetic_ct"):
        for metric in ("dice", "iou", "dice_per_image"):
            c, a = composite[f"test_{metric}_{d}"], alone[d][f"test_{metric}"]
            lines.append(f"| {NAMES[d]} | {metric} | {c:.4f} | {a:.4f} | {c - a:+.4f} |")
    seconds = [composite["train_seconds"], *(alone[d]["train_seconds"] for d in alone)]
    lines += ["", f"Overall composite test Dice: {composite['test_dice']:.4f}. Train time (s): "
              f"composite {seconds[0]:.0f}, X-ray only {seconds[1]:.0f}, CT only {seconds[2]:.0f}."]  # fmt: skip
    text = "\n".join(lines) + "\n"
    Path(args.out).write_text(text)
    record = {"args": vars(args), "environment": env, "composite": composite, "alone": alone}
    Path(args.out).with_suffix(".json").write_text(json.dumps(record, indent=1))
    print(text)


if __name__ == "__main__":
    main()
