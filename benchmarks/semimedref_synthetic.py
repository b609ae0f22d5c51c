"""Semi-MedRef vs the supervised baseline on the synthetic referring dataset, and the text probes.

Trains both methods on the same labeled subset from the same seeded initial weights (same seed, same network, same
epochs), tests the best checkpoint of each, then re-tests each with edited test texts (:data:`TEXT_PROBES`): the
texts of each batch shuffled (rolled by one, so no image keeps its own text), left/right swapped and upper/lower
swapped. A model that reads the text must lose Dice when shuffled, because the synthetic distractor opacities look
exactly like the lesions and only the text says which is which.

Usage (CPU, about 25 minutes on 2 cores at the defaults: 800 synthetic pairs, 5 % = 40 labeled, 20 epochs; the two
methods can run in parallel with ``--only supervised`` / ``--only semimedref``, one torch thread each
(``--threads 1``); ``--seed`` fixes the labeled subset, the initial weights and the augmentation and mixing streams):

    python benchmarks/semimedref_synthetic.py --seed 42 --only semimedref --threads 1
    python benchmarks/semimedref_synthetic.py --seed 42 --only supervised --threads 1
    python benchmarks/semimedref_synthetic.py --probe runs/bench/supervised/version_0/checkpoints/best.ckpt

Benchmark-scale settings (documented in ``benchmarks/README.md``): a 20-epoch run has 1,900 optimizer steps, so the
teacher's final momentum is 0.99 (0.999 averages over ~1,000 steps, half the run, and the teacher would lag the
student), and ``lambda_u`` is 1.0; everything else is the paper's recipe.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from fit_and_test import fit_and_test
from report_utils import add_threads_argument, command_line, environment, environment_line, set_threads

from textseg import SemiMedRefModule, SupervisedModule, TextSegDataModule

from textseg.engine import checkpointing

from textseg.ops import text
from textseg.data.synthetic import META_FILE, SyntheticConfig, generate_sample, make_synthetic, qata_sized_config
from textseg.ops.metrics import binarize_logits, segmentation_metrics


def datamodule(args: argparse.Namespace) -> TextSegDataModule:
    """Both methods see the same labeled stream and the same number of optimizer steps per epoch.

    The supervised baseline gets the unlabeled loader too (and ignores it), so that its epoch is as many steps as
    Semi-MedRef's: a fair "same labels, same training budget" comparison. At ``--ratio 1`` there is no unlabeled
    set, and an epoch is one pass over the labeled set (supervised only).
    """
    return TextSegDataModule(
        dataset="synthetic",
        root=args.root,
        labeled_ratio=args.ratio,
        image_size=args.image_size,
        batch_size=args.batch_size,
        eval_batch_size=32,
        seed=args.seed,
        use_unlabeled=args.ratio < 1,
        synthetic_train=None if args.probe else args.n_train,  # a probed tree may be of any size
        legacy_clamp=args.legacy_clamp,
        strong_blur_sigma=tuple(args.blur_sigma),
    )


#: Flags the result's command always names (the setting at a glance), and flags it never names (paths; the tree is
#: fixed by ``--n_train``, ``--lesions``, ``--no_distractor_prob`` and ``--distractor_level``).
ALWAYS_PRINTED = ("seed", "lr", "ratio", "epochs", "n_train", "lambda_u", "burn_in", "text_aug")
NOT_PRINTED = ("root", "log_dir", "out", "probe")

#: The two compared methods: ``--only`` key -> (table name, module class).
METHODS: dict[str, tuple[str, type[SupervisedModule] | type[SemiMedRefModule]]] = {
    "supervised": ("supervised", SupervisedModule),
    "semimedref": ("Semi-MedRef", SemiMedRefModule),
}


def model_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return {"backbone": args.backbone, "vision_encoder": "tiny", "text_encoder": args.text_encoder, "project_dim": 64,
            "lr": args.lr, "min_lr": 1e-5}  # fmt: skip


def train(
    key: str, kwargs: dict[str, Any], dm: TextSegDataModule, args: argparse.Namespace
) -> tuple[Any, dict[str, float]]:
    """Build (seeded: both methods start from the same weights), fit and test; return the best module and metrics."""
    cls = METHODS[key][1]
    best_path, metrics = fit_and_test(
        key, lambda: cls(**kwargs), dm, args.epochs, args.log_dir, args.seed, args.accelerator
    )
    return cls.load_from_checkpoint(best_path, weights_only=True), metrics


#: Test-time text edits of the text probe: "shuffled" is the done-when probe (every image gets the text of the next
#: image of its batch); the two swaps name the mirrored regions, so they show which words the model grounds.
TEXT_PROBES: dict[str, Callable[[list[str]], list[str]]] = {
    "shuffled": lambda texts: texts[1:] + texts[:1],
    "lr_swapped": lambda texts: [text_aug.swap_left_right(t) for t in texts],
    "ul_swapped": lambda texts: [text_aug.swap_upper_lower(t) for t in texts],
}


def tree_config(root: str | Path) -> tuple[dict[str, Any], SyntheticConfig]:
    """The generator arguments stored in a synthetic tree (``synthetic.json``) and its :class:`SyntheticConfig`.

    A key the tree lacks (it predates that option) takes the option's default, which is what the tree was made with.
    """
    meta = json.loads((Path(root) / META_FILE).read_text(encoding="utf-8"))
    fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in meta["config"].items()}
    return meta, SyntheticConfig(**fields)


def distractor_masks(root: str | Path) -> Callable[[Sequence[str], int], torch.Tensor]:
    """A function ``(ids, size) -> [B, 1, size, size]`` bool: the distractor opacities of synthetic test images.

    They are not on disk: each is regenerated from the generator arguments stored in the tree (``synthetic.json``,
    read once here); an image's file number counts over train + val + test. Area-resized and thresholded at 0.5 (the
    masks are resized nearest; the two rules differ only at opacity borders).
    """
    meta, cfg = tree_config(root)
    offset = meta["n_train"] + meta["n_val"]

    def masks(ids: Sequence[str], size: int) -> torch.Tensor:
        numbers = [int(re.findall(r"\d+", i)[-1]) - offset for i in ids]
        samples = [generate_sample(meta["seed"], "test", n, meta["image_size"], cfg) for n in numbers]
        full = np.stack([sample.distractor_mask for sample in samples])
        return F.interpolate(torch.from_numpy(full).float()[:, None], size=size, mode="area") > 0.5

    return masks


@torch.no_grad()
def text_probe_dice(
    module: Any, dm: TextSegDataModule, probes: dict[str, Callable[[list[str]], list[str]]] | None = None
) -> dict[str, float]:
    """Pooled test Dice with the own texts (``own_dice``) and with each edit of ``probes`` (default
    :data:`TEXT_PROBES`) as ``<probe>_dice``, plus the error breakdown of the own-text prediction.

    One pass over the test set: every batch is evaluated with its own texts and with every edit of them. The error
    breakdown is given as shares of the lesion pixels: ``missed_share`` (false negatives), ``fp_distractor_share``
    (false positives on a distractor opacity: the text was not read) and ``fp_other_share`` (other false positives).
    """
    module.eval()
    probes = probes or TEXT_PROBES
    metrics = {name: segmentation_metrics(f"{name}_") for name in ("own", *probes)}
    counts = dict.fromkeys(("lesion", "missed", "fp_distractor", "fp_other"), 0.0)
    distractors = distractor_masks(dm.hparams.root)
    for metric in metrics.values():
        metric.to(module.device)
    for batch in dm.test_dataloader():
        image, mask = batch["image"].to(module.device), batch["mask"].to(module.device).bool()
        for name, edit in probes.items():
            logits = module(image, edit(list(batch["text"])), module.eval_net)["logits"]
            metrics[name].update(binarize_logits(logits), mask.long())
        pred = binarize_logits(module(image, list(batch["text"]), module.eval_net)["logits"])
        metrics["own"].update(pred, mask.long())
        pred = pred.bool()
        distractor = distractors(batch["id"], mask.shape[-1]).to(module.device)
        counts["lesion"] += mask.sum().item()
        counts["missed"] += (mask & ~pred).sum().item()
        counts["fp_distractor"] += (pred & ~mask & distractor).sum().item()
        counts["fp_other"] += (pred & ~mask & ~distractor).sum().item()
    errors = {f"{k}_share": v / max(counts["lesion"], 1.0) for k, v in counts.items() if k != "lesion"}
    return {**{k: float(v) for m in metrics.values() for k, v in m.compute().items()}, **errors}


def probe_checkpoint(args: argparse.Namespace) -> None:
    """Print the test Dice of a saved model with its own texts and with every :data:`TEXT_PROBES` edit."""
    # mmap: only the method stamp is read here; load_from_checkpoint reads the weights
    saved = checkpointing.saved_method(torch.load(args.probe, map_location="cpu", weights_only=True, mmap=True))
    cls = next(c for _, c in METHODS.values() if c.__name__ == saved)
    module = cls.load_from_checkpoint(args.probe, map_location="cpu", weights_only=True)
    dm = datamodule(args)
    dm.setup("test")
    dice = text_probe_dice(module, dm)
    print(
        json.dumps(
            {
                "checkpoint": args.probe,
                "root": args.root,
                **{k: round(v, 4) for k, v in dice.items() if k.endswith(("_dice", "_share"))},
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratio", type=float, default=0.05)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--n_train", type=int, default=800, help="synthetic train pairs (5 %% of 800: 40 labeled)")
    parser.add_argument("--image_size", type=int, default=64)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--backbone", default="mmiunet")
    parser.add_argument("--lambda_u", type=float, default=1.0, help="final weight of the unlabeled branch")
    parser.add_argument("--burn_in", type=int, default=None, help="burn-in epochs (default: epochs // 5)")
    parser.add_argument("--ema_end", type=float, default=0.99, help="final EMA momentum of the teacher")
    parser.add_argument("--itcl_u", type=float, default=0.1, help="weight of the unlabeled ITCL term (lambda_itcl^u)")
    parser.add_argument("--mix_block", type=int, default=8, help="T-PatchMix block side in pixels (paper: 16 at 224)")
    parser.add_argument("--mix_prob", type=float, default=0.5, help="per-sample probability of a T-PatchMix block")
    parser.add_argument("--text_aug", default="posaug", choices=["posaug", "textstrong", "none"], help="student text")
    parser.add_argument("--mix", default="tpatchmix", choices=["tpatchmix", "cutmix", "none"],
                        help="mixing of the unlabeled pairs (none: Table 2 rows before T-PatchMix)")  # fmt: skip
    parser.add_argument("--contrastive", default="itcl", choices=["itcl", "clip", "none"],
                        help="image-text contrastive terms (none: Table 2 rows before ITCL)")  # fmt: skip
    parser.add_argument("--posaug_edit_prob", type=float, default=None,
                        help="probability that PosAug edits a phrase (default: the module's, 0.5)")  # fmt: skip
    parser.add_argument("--legacy_clamp", action="store_true",
                        help="strong view as the public code: jitter after the z-score, clamped to [0, 1]")  # fmt: skip
    parser.add_argument("--blur_sigma", type=float, nargs=2, default=[0.1, 2.0], metavar=("LOW", "HIGH"),
                        help="sigma range of the strong view's blur in pixels at --image_size (paper: 0.1 2.0 at "
                        "224 px; the same blur relative to a 64 px image is 0.03 0.57)")  # fmt: skip
    parser.add_argument("--eval_teacher", action="store_true", help="select and test the EMA teacher (both methods)")
    parser.add_argument("--only", choices=["supervised", "semimedref"], default=None, help="train one method only")
    parser.add_argument("--seed", type=int, default=42, help="labeled subset, initial weights, augmentation streams")
    parser.add_argument("--root", default=None, help="synthetic data folder (default: data/synthetic_n<n_train>)")
    parser.add_argument("--lesions", choices=["default", "qata"], default="default",
                        help="qata: generate the tree with QaTa-sized lesions (qata_sized_config, ~6 %% of the image; "
                        "default: 2 %%); default root data/synthetic_n<n_train>_qata")  # fmt: skip
    parser.add_argument(
        "--no_distractor_prob",
        type=float,
        default=0.0,
        help="share of images generated without a look-alike distractor (default 0: every image has one; "
        "root data/synthetic_n<N>[_qata]_nd<percent>)",
    )
    parser.add_argument(
        "--distractor_level",
        type=float,
        nargs=2,
        default=None,
        metavar=("LOW", "HIGH"),
        help="brightness range of the distractors (default: the lesions' 55 80, look-alikes); a lower, overlapping "
        "range makes them partly distinguishable in the image (root data/synthetic_n<N>[...]_dl<LOW>-<HIGH>)",
    )
    parser.add_argument("--accelerator", default="cpu", help="Lightning accelerator of fit and test (cpu, gpu)")
    add_threads_argument(parser)
    parser.add_argument("--text_encoder", default="minilm", help="text encoder spec (default: the packaged MiniLM)")
    parser.add_argument("--log_dir", default="runs/bench")
    parser.add_argument("--out", default="benchmarks/results_semimedref_synthetic.md")
    parser.add_argument("--probe", default=None, help="only run the text probe on this checkpoint (any method)")
    args = parser.parse_args()
    set_threads(args.threads)
    config = qata_sized_config() if args.lesions == "qata" else SyntheticConfig()
    distractor_level = tuple(args.distractor_level) if args.distractor_level else None
    config = dataclasses.replace(config, no_distractor_prob=args.no_distractor_prob, distractor_level=distractor_level)
    suffix = (
        ("_qata" if args.lesions == "qata" else "")
        + (f"_nd{round(100 * args.no_distractor_prob)}" if args.no_distractor_prob else "")
        + ("_dl{:g}-{:g}".format(*distractor_level) if distractor_level else "")
    )
    args.root = args.root or f"data/synthetic_n{args.n_train}{suffix}"
    if config != SyntheticConfig() and not Path(args.root).exists():  # the datamodule's defaults, another config
        make_synthetic(args.root, args.n_train, config=config)
    if args.probe:  # any tree: the distractors are regenerated from its synthetic.json
        probe_checkpoint(args)
        return
    if (Path(args.root) / META_FILE).exists():  # a tree made with another config would give mislabeled numbers
        on_disk = dataclasses.asdict(tree_config(args.root)[1])
        for name, value in dataclasses.asdict(config).items():
            if on_disk[name] != value:
                parser.error(f"{args.root} has {name} {on_disk[name]}, not the {value} of these arguments")
    if args.ratio >= 1 and args.only != "supervised":
        parser.error("--ratio 1 leaves no unlabeled pairs for Semi-MedRef: add --only supervised")

    burn_in = max(1, args.epochs // 5) if args.burn_in is None else args.burn_in
    semi_kwargs = {"burn_in_epochs": burn_in, "lambda_u_ramp_epochs": burn_in, "ema_ramp_epochs": 2 * burn_in,
                   "lambda_u": args.lambda_u, "ema_end": args.ema_end, "lambda_itcl_unsup": args.itcl_u,
                   "eval_teacher": args.eval_teacher, "text_aug": args.text_aug, "mix": args.mix,
                   "mix_prob": args.mix_prob, "mix_block": args.mix_block, "contrastive": args.contrastive}  # fmt: skip
    if args.posaug_edit_prob is not None:
        semi_kwargs["posaug_edit_prob"] = args.posaug_edit_prob
    kwargs = {"supervised": model_kwargs(args), "semimedref": {**model_kwargs(args), **semi_kwargs}}
    dm = datamodule(args)
    dm.setup("test")
    results: dict[str, list[dict[str, float]]] = {}
    for key in METHODS:
        if args.only in (None, key):
            best, metrics = train(key, kwargs[key], dm, args)
            results[key] = [metrics, text_probe_dice(best, dm)]
    rows = [(METHODS[key][0], m, s) for key, (m, s) in results.items()]
    args.burn_in = burn_in  # the resolved value, in the command
    command = command_line("semimedref_synthetic.py", parser, args, always=ALWAYS_PRINTED, skip=NOT_PRINTED)
    env = environment()
    lines = [
        f"# Semi-MedRef vs supervised, synthetic referring data, {args.ratio:.0%} labels",
        "",
        f"Command: `{command}` (tiny ConvNeXt).",
        "",
        environment_line(env),
        "",
        "| method | test Dice (pooled) | test IoU | Dice per image | Dice, shuffled texts | left/right swapped "
        "| upper/lower swapped | missed lesion px | FP on distractors | FP elsewhere | train time (s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, m, s in rows:
        lines.append(
            f"| {name} | {m['test_dice']:.4f} | {m['test_iou']:.4f} | {m['test_dice_per_image']:.4f} | "
            f"{s['shuffled_dice']:.4f} | {s['lr_swapped_dice']:.4f} | {s['ul_swapped_dice']:.4f} | "
            f"{s['missed_share']:.3f} | {s['fp_distractor_share']:.3f} | {s['fp_other_share']:.3f} | "
            f"{m['train_seconds']:.0f} |"
        )
    text = "\n".join(lines) + "\n"
    Path(args.out).write_text(text)
    record = {"args": vars(args), "environment": env, **results}
    Path(args.out).with_suffix(".json").write_text(json.dumps(record, indent=1))
    print(text)


if __name__ == "__main__":
    main()
