"""``textseg data check`` and ``textseg data synth``: validate a dataset root, write the synthetic dataset.

``textseg data check ROOT [--dataset qata|mosmed|synthetic|synthetic_ct|auto] [--fast] [--text_encoder SPEC]
[--max_length N] [--max_foreground_share S]`` reads the root with the dataset readers of :mod:`textseg.data` (layout
detection, text files, every image/mask/text row paired; ``docs/data.md`` §2-3) and runs
:func:`~textseg.data.base.validate_dataset`, the validator ``fit`` runs (``docs/data.md`` §12): no split empty, no
empty-in-effect text, readable files, binary masks, image and mask of the same size (``--fast`` reads only the PNG
headers), every text within the token limit of ``--text_encoder`` / ``--max_length`` (default: the model's defaults,
``tiny`` and 24), and masks whose foreground share is above ``--max_foreground_share`` listed as warnings. It compares
the split sizes with the canonical ones (QaTa-COV19 5,716 / 1,429 / 2,113, MosMedData+ 2,183 / 273 / 273;
``docs/data.md`` §5; a difference is a warning) and prints a summary: every problem on its own line (the first
:data:`MAX_PROBLEMS_LISTED`, then how many are not shown), counted in the ``FAILED: N problems`` line. Exit code 0 when
the data is usable, 1 with the list of problems otherwise.

``textseg data synth ROOT [--n_train N] [--n_val N] [--n_test N] [--image_size S] [--seed S] [--modality xray|ct]``
writes the synthetic referring dataset (:func:`~textseg.data.synthetic.make_synthetic`).
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from textseg.cli.preflight import find_layout
from textseg.data.base import SPLITS, DataProblems, SegDataset, validate_dataset
from textseg.data.io import read_size
from textseg.data.registry import load_dataset
from textseg.errors import DataError, check_range
from textseg.ops.text import TokenLimit

__all__ = ["EXPECTED_COUNTS", "PAPER_RATIOS", "CheckReport", "check_dataset", "main", "synth_dataset", "token_limit"]

#: Canonical split sizes (``docs/data.md`` §5).
EXPECTED_COUNTS: dict[str, dict[str, int]] = {
    "qata": {"train": 5716, "val": 1429, "test": 2113},
    "mosmed": {"train": 2183, "val": 273, "test": 273},
}
#: Label ratios of the Semi-MedRef tables, whose labeled counts the summary lists (``docs/data.md`` §6).
PAPER_RATIOS: tuple[float, ...] = (0.01, 0.02, 0.05, 0.15)
#: Seed of the published labeled subsets.
PAPER_SEED = 42
#: Display names of the datasets.
DATASET_TITLES: dict[str, str] = {
    "qata": "QaTa-COV19",
    "mosmed": "MosMedData+",
    "synthetic": "synthetic X-ray-like referring data",
    "synthetic_ct": "synthetic CT-like referring data",
}
#: File recording the generator arguments of a synthetic tree (``textseg.data.synthetic.META_FILE``).
SYNTHETIC_META = "synthetic.json"
#: Image sizes listed in the summary (the most frequent ones).
MAX_SIZES_SHOWN = 3
#: Problem lines printed at most; the rest are counted.
MAX_PROBLEMS_LISTED = 200
#: Datasets ``--dataset`` accepts.
DATASET_CHOICES = ("auto", "qata", "mosmed", "synthetic", "synthetic_ct")
#: Prefixes of the readers' "no layout found" messages, which make ``auto`` try the next reader.
_UNKNOWN_LAYOUT = {"qata": "unknown QaTa-COV19 layout", "mosmed": "unknown MosMedData+ layout"}


@dataclass
class CheckReport:
    """Result of :func:`check_dataset`.

    Attributes:
        root: The dataset root.
        dataset: Detected or given dataset name (``None`` when no reader accepted the root).
        layout: Detected layout.
        full: Whether the files were decoded (not ``--fast``).
        counts: Images per split.
        expected: Canonical images per split (empty when there is no reference).
        info: Summary lines (sizes, texts, labeled subsets).
        warnings: Non-fatal findings (split sizes differing from the canonical ones).
        problems: Fatal findings, one line each (every problem a reader or the validator found).
    """

    root: Path
    dataset: str | None = None
    layout: str | None = None
    full: bool = True
    counts: dict[str, int] = field(default_factory=dict)
    expected: dict[str, int] = field(default_factory=dict)
    info: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def usable(self) -> bool:
        """Whether the data can be trained on (no problems; warnings allowed)."""
        return not self.problems

    def format(self) -> str:
        """The readable summary printed by ``textseg data check``."""
        lines = [f"textseg data check: {self.root}"]
        if self.dataset is not None:
            title = DATASET_TITLES.get(self.dataset, self.dataset)
            lines.append(f"  dataset   {self.dataset} ({title}), layout {self.layout}")
        if self.counts:
            lines.append(f"  {'split':<8}{'images':>8}{'expected':>10}")
            for split in SPLITS:
                expected = self.expected.get(split)
                shown = f"{expected:,}" if expected is not None else "-"
                mark = "" if expected is None or expected == self.counts.get(split) else "  <- differs"
                lines.append(f"  {split:<8}{self.counts.get(split, 0):>8,}{shown:>10}{mark}")
        lines += [f"  {line}" for line in self.info]
        lines += [f"warning: {w}" for w in self.warnings]
        if self.problems:
            count = len(self.problems)
            lines.append("problems:")
            for problem in self.problems[:MAX_PROBLEMS_LISTED]:
                lines += [f"  - {problem.splitlines()[0]}"] + [f"    {part}" for part in problem.splitlines()[1:]]
            if count > MAX_PROBLEMS_LISTED:
                lines.append(f"  ... and {count - MAX_PROBLEMS_LISTED:,} more problems not shown")
            lines.append(f"FAILED: {count:,} problem{'s' if count > 1 else ''} found; the dataset is not usable")
        else:
            mode = "full check" if self.full else "fast check (headers only)"
            lines.append(f"OK: the dataset is usable ({mode}, {len(self.warnings)} warnings)")
        return "\n".join(lines)


def _synthetic_name(root: Path) -> str | None:
    """``synthetic`` or ``synthetic_ct`` when ``root`` holds a generated tree, else ``None``."""
    path = root / SYNTHETIC_META
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return "synthetic"
    modality = meta.get("config", {}).get("modality", "xray") if isinstance(meta, dict) else "xray"
    return "synthetic_ct" if modality == "ct" else "synthetic"


def _expected(name: str, root: Path) -> dict[str, int]:
    """Canonical split sizes, or for a synthetic tree the sizes it was generated with."""
    if name in EXPECTED_COUNTS:
        return dict(EXPECTED_COUNTS[name])
    try:
        meta = json.loads((root / SYNTHETIC_META).read_text(encoding="utf-8"))
        return {"train": int(meta["n_train"]), "val": int(meta["n_val"]), "test": int(meta["n_test"])}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def _open(root: Path, dataset: str, report: CheckReport) -> SegDataset | None:
    """Build the dataset (detecting it for ``auto``); record why it failed in ``report``."""
    if dataset == "auto":
        synthetic = _synthetic_name(root)
        candidates = [synthetic] if synthetic else ["qata", "mosmed"]
    else:
        candidates = [dataset]
    layout_errors: list[str] = []
    for name in candidates:
        report.dataset = name
        try:
            return load_dataset(name, root)  # type: ignore[arg-type]
        except DataError as exc:
            message = str(exc)
            if dataset == "auto" and message.startswith(_UNKNOWN_LAYOUT.get(name, "\0")):
                layout_errors.append(message)
                continue
            report.problems += exc.problems if isinstance(exc, DataProblems) else [message]
            return None
    report.dataset = None
    below = [(name, find_layout(name, root)[1]) for name in candidates] if root.is_dir() else []
    hints = [
        f"- but {sub} (one folder down) holds a {name} layout: textseg data check {sub}" for name, sub in below if sub
    ][:1]  # fmt: skip  (the first reader that recognises it, as `auto` would pick)
    report.problems.append("no known dataset layout:\n" + "\n".join([*(f"- {m}" for m in layout_errors), *hints]))
    return None


def _summarise(data: SegDataset, report: CheckReport) -> None:
    """Image sizes (from the headers), texts and the labeled subsets of the paper's ratios."""
    records = [r for split in SPLITS for r in data.records(split)]
    sizes: Counter[str] = Counter()
    for rec in records:
        try:
            height, width = read_size(rec.image, "image")
        except DataError:
            continue  # reported by check()
        sizes[f"{width}x{height}"] += 1
    if sizes:
        shown = ", ".join(f"{s}: {n:,}" for s, n in sizes.most_common(MAX_SIZES_SHOWN))
        more = f" (+{len(sizes) - MAX_SIZES_SHOWN} other sizes)" if len(sizes) > MAX_SIZES_SHOWN else ""
        report.info.append(f"sizes     {shown}{more} (WxH)")
    texts = {r.text for r in records}
    no_region = sum(1 for r in records if not any(r.position))
    report.info.append(f"texts     {len(records):,} rows, {len(texts):,} distinct, {no_region:,} naming no lung region")
    if data.records("train"):
        try:
            counts = [(r, len(data.labeled_split(r, PAPER_SEED)[0])) for r in PAPER_RATIOS]
        except DataError as exc:
            report.problems.append(str(exc))
            return
        listed = ", ".join(f"{r * 100:g}%: {n:,}" for r, n in counts)
        report.info.append(f"labeled   {listed} (seed {PAPER_SEED})")


def token_limit(text_encoder: str, max_length: int) -> TokenLimit:
    """The token-length rule of a text encoder spec (its tokenizer and ``max_length``), as ``fit`` applies it.

    Raises:
        DataError: For an unknown spec or a ``max_length`` below 1.
    """
    from textseg.models.encoders.text import build_tokenizer

    check_range("max_length", max_length, 1)
    return TokenLimit(build_tokenizer(text_encoder), max_length, text_encoder)


def check_dataset(
    root: str | Path,
    dataset: str = "auto",
    fast: bool = False,
    *,
    text_encoder: str | None = "tiny",
    max_length: int = 24,
    max_foreground_share: float = 0.6,
) -> CheckReport:
    """Validate a dataset root with ``fit``'s validator (:func:`~textseg.data.base.validate_dataset`) and summarise it.

    Args:
        root: Dataset root.
        dataset: ``"qata"``, ``"mosmed"``, ``"synthetic"``, ``"synthetic_ct"`` or ``"auto"`` (a generated tree is
            recognised by its ``synthetic.json``; otherwise the QaTa-COV19 and MosMedData+ readers are tried).
        fast: Check existence and the PNG headers only (no decoding of images and masks).
        text_encoder: Text encoder spec whose tokenizer counts the tokens (the model's ``text_encoder``); ``None``
            skips the token limit.
        max_length: The model's ``max_length``.
        max_foreground_share: The DataModule's ``max_foreground_share``: masks above it are listed as warnings.

    Returns:
        The report; ``report.usable`` is ``False`` when a reader or the validator found a problem.
    """
    path = Path(root).expanduser()
    report = CheckReport(root=path, full=not fast)
    try:
        check_range("max_foreground_share", max_foreground_share, 0, 1, open_low=True)
        tokens = token_limit(text_encoder, max_length) if text_encoder is not None else None
    except DataError as exc:
        report.problems.append(str(exc))
        return report
    if dataset not in DATASET_CHOICES:
        report.problems.append(f"unknown dataset {dataset!r}; expected one of {', '.join(DATASET_CHOICES)}")
        return report
    if not path.is_dir():
        report.problems.append(f"dataset root {path} does not exist or is not a directory")
        return report
    if not any(path.iterdir()):
        report.problems.append(f"dataset root {path} is empty")
        return report
    data = _open(path, dataset, report)
    if data is None:
        return report
    report.dataset = data.name
    report.layout = data.layout
    report.counts = {split: len(data.records(split)) for split in SPLITS}
    report.expected = _expected(data.name, path)
    for split in SPLITS:
        expected = report.expected.get(split)
        if expected is not None and expected != report.counts[split]:
            report.warnings.append(
                f"{split} has {report.counts[split]:,} images, the canonical split has {expected:,}; results and "
                "label-ratio subsets are not comparable with the papers'"
            )
    found = validate_dataset(data, SPLITS, full=not fast, max_foreground_share=max_foreground_share, tokens=tokens)
    report.problems += found.problems
    report.warnings += [
        f"{line} is above max_foreground_share {max_foreground_share:.0%} (an inverted mask?)"
        for line in found.mask_lines()
    ]
    _summarise(data, report)
    total = sum(report.counts.values())
    what = "decoded: readable, binary masks, image/mask sizes" if not fast else "headers: existence and sizes"
    report.info.insert(0, f"checked   {total:,} image/mask pairs ({what})")
    return report


def synth_dataset(
    root: str | Path,
    n_train: int = 400,
    n_val: int = 100,
    n_test: int = 100,
    image_size: int = 128,
    seed: int = 0,
    modality: str = "xray",
    lesions: str = "default",
) -> SegDataset:
    """Write the synthetic referring dataset and read it back.

    Args:
        root: Folder to create (must not exist or be empty).
        n_train: Training images.
        n_val: Validation images.
        n_test: Test images.
        image_size: Image side (a multiple of 32).
        seed: Generator seed (same arguments, byte-identical files).
        modality: ``"xray"`` (QaTa-like, SGSeg layout) or ``"ct"`` (MosMed-like).
        lesions: ``"default"`` (lesions of about 2 % of the image) or ``"qata"`` (X-ray only: QaTa-sized lesions of
            about 6 %, :func:`~textseg.data.synthetic.qata_sized_config`).

    Returns:
        The dataset read from the new tree.

    Raises:
        DataError: If ``root`` exists and is not empty, or for bad arguments.
    """
    from textseg.data.synthetic import load_synthetic, make_synthetic, qata_sized_config

    path = Path(root).expanduser()
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise DataError(f"{path} already exists and is not empty; choose a new folder for the synthetic dataset")
    if modality not in ("xray", "ct"):
        raise DataError(f"modality must be 'xray' or 'ct', got {modality!r}")
    if lesions not in ("default", "qata") or (lesions == "qata" and modality != "xray"):
        raise DataError(f"lesions must be 'default', or 'qata' with the X-ray modality; got {lesions!r} ({modality})")
    if lesions == "qata":
        make_synthetic(path, n_train, n_val, n_test, image_size, seed, qata_sized_config())
    return load_synthetic(
        path,
        n_train=n_train,
        n_val=n_val,
        n_test=n_test,
        image_size=image_size,
        seed=seed,
        modality=modality,  # type: ignore[arg-type]
    )


def build_parser() -> argparse.ArgumentParser:
    """The ``textseg data`` argument parser."""
    parser = argparse.ArgumentParser(prog="textseg data", description="Check a dataset root or write synthetic data.")
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="validate a dataset root and print a summary (exit 1 when unusable)")
    check.add_argument("root", help="dataset root")
    check.add_argument("--dataset", choices=DATASET_CHOICES, default="auto", help="dataset reader (default: detect)")
    check.add_argument("--fast", action="store_true", help="read only the PNG headers (no decoding)")
    check.add_argument(
        "--text_encoder", default="tiny", help="text encoder whose tokenizer counts the tokens (the model's; tiny)"
    )
    check.add_argument("--max_length", type=int, default=24, help="the model's max_length in tokens (default 24)")
    check.add_argument(
        "--max_foreground_share",
        type=float,
        default=0.6,
        help="warn about masks whose foreground share is above this (default 0.6)",
    )
    synth = sub.add_parser("synth", help="write the synthetic referring dataset")
    synth.add_argument("root", help="folder to create")
    synth.add_argument("--n_train", type=int, default=400, help="training images (default 400)")
    synth.add_argument("--n_val", type=int, default=100, help="validation images (default 100)")
    synth.add_argument("--n_test", type=int, default=100, help="test images (default 100)")
    synth.add_argument("--image_size", type=int, default=128, help="image side, a multiple of 32 (default 128)")
    synth.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
    synth.add_argument("--modality", choices=("xray", "ct"), default="xray", help="X-ray-like or CT-like images")
    synth.add_argument(
        "--lesions", choices=("default", "qata"), default="default", help="qata: QaTa-sized lesions (X-ray only)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``textseg data``.

    Args:
        argv: Arguments after ``data``.

    Returns:
        The exit code: 0 on success, 1 when the data is unusable or cannot be written.
    """
    args: Any = build_parser().parse_args(None if argv is None else list(argv))
    if args.command == "check":
        report = check_dataset(
            args.root,
            args.dataset,
            args.fast,
            text_encoder=args.text_encoder,
            max_length=args.max_length,
            max_foreground_share=args.max_foreground_share,
        )
        print(report.format())
        return 0 if report.usable else 1
    try:
        data = synth_dataset(
            args.root, args.n_train, args.n_val, args.n_test, args.image_size, args.seed, args.modality, args.lesions
        )
    except DataError as exc:
        print(f"textseg data synth: {exc}")
        return 1
    sizes = " / ".join(f"{len(data.records(s)):,}" for s in SPLITS)
    print(f"textseg data synth: wrote {data.name} ({data.layout} layout) to {data.root}: {sizes} train/val/test images")
    return 0
