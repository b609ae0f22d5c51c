"""``textseg probe``: does a checkpoint's model read the text?

``textseg probe --config CONFIG --ckpt_path CKPT [--data.* / --model.* overrides] [--seed N] [--out DIR]`` evaluates
the checkpoint on the test split five times, changing only the texts (the images, masks and weights stay the same):

=======================  ==============================================================================================
``own``                  the texts as given (the pooled Dice equals ``textseg test``'s ``test_dice``);
``shuffled``             the split's texts shuffled across images so that no image keeps its own text: a seeded
                         derangement of the test split's indices (:func:`derangement`). It permutes *positions*, so
                         where two images have the same text string an image can still receive a string equal to its
                         own (``probe.json`` counts them in ``n_shuffled_same_text``);
``left_right_swapped``   the words left and right exchanged (:func:`~textseg.ops.text_aug.swap_left_right`);
``upper_lower_swapped``  the words upper and lower exchanged (:func:`~textseg.ops.text_aug.swap_upper_lower`);
``no_text``              the empty string :data:`NO_TEXT` (the BERT tokenizer turns it into ``[CLS] [SEP]`` and
                         padding), for every image.
=======================  ==============================================================================================

The model and the datamodule are built exactly as ``textseg test`` builds them (:class:`ProbeCLI` is
:class:`~textseg.cli.lightning.TextSegCLI` restricted to its ``test`` subcommand): the same config files and overrides,
the checkpoint's hyper-parameters, the refusal of a checkpoint of another method or network
(:func:`~textseg.engine.checkpointing.check_fits`), ``--weights_only`` (default ``True``) and ``--seed``. No Trainer
loop runs (nothing is logged and the run's ``config.yaml`` and ``test_metrics.json`` are left as they are): the test
loader is iterated once in one process, on the trainer's root device under its precision's test context, and every
batch is run with each variant's texts through
:meth:`~textseg.methods.base.TextSegModule.forward_batch` on :attr:`~textseg.methods.base.TextSegModule.eval_net`.
The metrics are :func:`~textseg.ops.metrics.segmentation_metrics` (pooled and per-image Dice and IoU).

The shuffle's seed is ``--seed`` when given, else the data seed (``data.seed``); the same seed gives the same
permutation. The output, ``probe.json``, goes to ``--out``, else to the run folder of a checkpoint at
``RUN/checkpoints/x.ckpt`` (``RUN/probe.json``), else beside the checkpoint; a table is printed.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from contextlib import nullcontext
from functools import partial
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningDataModule, Trainer
from lightning.pytorch.cli import LightningArgumentParser
from torch import Tensor

from textseg.cli.lightning import TextSegCLI
from textseg.data.base import raise_problems, record_texts
from textseg.data.datamodule import TextSegDataModule
from textseg.engine import checkpointing
from textseg.errors import DataError
from textseg.methods import TextSegModule
from textseg.ops.metrics import binarize_logits, segmentation_metrics
from textseg.ops.text import TokenLimit
from textseg.ops.text_aug import swap_left_right, swap_upper_lower

__all__ = [
    "NO_TEXT",
    "PROBE_FILE",
    "VARIANTS",
    "ProbeCLI",
    "derangement",
    "format_table",
    "load_weights",
    "main",
    "output_dir",
    "probe_model",
    "variant_texts",
]

#: The file the probe writes.
PROBE_FILE = "probe.json"
#: The variants, in the order of the table and of ``probe.json``.
VARIANTS: tuple[str, ...] = ("own", "shuffled", "left_right_swapped", "upper_lower_swapped", "no_text")
#: The prompt of ``no_text``: the empty string (tokenised to ``[CLS] [SEP]`` and padding).
NO_TEXT = ""
#: Metrics whose drop against ``own`` is reported.
DROP_METRICS: tuple[str, ...] = ("dice", "dice_per_image")
#: Description of ``textseg probe --help``.
DESCRIPTION = (
    "textseg probe: evaluate a checkpoint on the test split with its own texts, texts shuffled across images (a seeded "
    "derangement), left/right swapped, upper/lower swapped and no text (the empty string), and write probe.json "
    "(pooled and per-image Dice/IoU, drop against own). Takes the arguments of 'textseg test' (--config, --ckpt_path, "
    "--data.*/--model.* overrides, --seed: the shuffle's seed, default data.seed) plus --out DIR."
)


# ---------------------------------------------------------------------------------------------- pure parts


def derangement(n: int, seed: int) -> list[int]:
    """A uniformly drawn permutation of ``range(n)`` without fixed points, a function of ``(n, seed)`` only.

    Permutations are drawn with :func:`torch.randperm` from a :class:`torch.Generator` seeded with ``seed`` until one
    has no fixed point (about e ≈ 2.7 draws on average), so every derangement is equally likely.

    Args:
        n: Number of items (at least 2: one item has no derangement).
        seed: Seed of the generator.

    Returns:
        ``perm`` with ``perm[i] != i`` for every ``i``; image ``i`` receives the text of image ``perm[i]``.

    Raises:
        DataError: If ``n < 2``.
    """
    if n < 2:
        raise DataError(f"shuffling texts across images needs at least 2 test images, got {n}")
    generator = torch.Generator().manual_seed(int(seed))
    index = torch.arange(n)
    while True:
        perm = torch.randperm(n, generator=generator)
        if not bool((perm == index).any()):
            return [int(i) for i in perm]


def variant_texts(texts: Sequence[str], perm: Sequence[int]) -> dict[str, list[str]]:
    """The texts of every probe variant, by position in the test split.

    Args:
        texts: The test split's texts, in split order.
        perm: The shuffle (:func:`derangement`): position ``i`` gets ``texts[perm[i]]``.

    Returns:
        ``{variant: texts}`` for every name of :data:`VARIANTS`, each list as long as ``texts``.
    """
    own = list(texts)
    return {
        "own": own,
        "shuffled": [own[j] for j in perm],
        "left_right_swapped": [swap_left_right(t) for t in own],
        "upper_lower_swapped": [swap_upper_lower(t) for t in own],
        "no_text": [NO_TEXT] * len(own),
    }


def output_dir(ckpt_path: str | Path, out: str | Path | None = None) -> Path:
    """Where ``probe.json`` goes: ``out``, else ``RUN`` for ``RUN/checkpoints/x.ckpt``, else the checkpoint's folder."""
    if out is not None:
        return Path(out)
    folder = Path(ckpt_path).parent
    return folder.parent if folder.name == "checkpoints" else folder


def _with_drops(scores: Mapping[str, Mapping[str, float]]) -> dict[str, dict[str, Any]]:
    """Add each variant's drop against ``own`` (absolute and in % of ``own``; ``None`` when ``own`` is 0)."""
    own = scores["own"]
    result: dict[str, dict[str, Any]] = {}
    for name, values in scores.items():
        drop: dict[str, float | None] = {}
        for metric in DROP_METRICS:
            diff = own[metric] - values[metric]
            drop[metric] = diff
            drop[f"{metric}_pct"] = 100.0 * diff / own[metric] if own[metric] > 0 else None
        result[name] = {**values, "drop": drop}
    return result


def _fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:{spec}}{suffix}"


def format_table(result: Mapping[str, Any]) -> str:
    """The printed table of a probe result: per variant pooled and per-image Dice and their drop against ``own``."""
    head = ("variant", "Dice", "drop", "drop %", "Dice/img", "drop", "drop %")
    rows: list[tuple[str, ...]] = [head]
    for name in VARIANTS:
        values = result[name]
        drop = values["drop"]
        cells = [name]
        for metric in DROP_METRICS:
            own = name == "own"
            cells += [
                f"{values[metric]:.4f}",
                "-" if own else _fmt(drop[metric], "+.4f"),
                "-" if own else _fmt(drop[f"{metric}_pct"], "+.1f", "%"),
            ]
        rows.append(tuple(cells))
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = [
        "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
        for row in rows
    ]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- evaluation


def load_weights(model: TextSegModule, path: str | Path, weights_only: bool | None = True) -> dict[str, Any]:
    """Load a Lightning checkpoint's weights into ``model``, refusing one of another method or network.

    Args:
        model: The configured module.
        path: The checkpoint file.
        weights_only: ``torch.load``'s ``weights_only`` (``True``: tensors and plain containers only; ``None``: torch's
            default).

    Returns:
        The loaded checkpoint dict.

    Raises:
        DataError: If the file is not a Lightning checkpoint, or was saved by another method or does not fit the
            network (:func:`~textseg.engine.checkpointing.check_fits`).
    """
    ckpt = checkpointing.read_checkpoint(path, weights_only, finite=False)  # check_fits refuses NaN/inf weights
    checkpointing.check_fits(ckpt, model, str(path))
    model.load_state_dict(ckpt["state_dict"])
    return ckpt


def _to_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if isinstance(v, Tensor) else v for k, v in batch.items()}


def probe_model(
    model: TextSegModule,
    batches: Iterable[Mapping[str, Any]],
    texts: Mapping[str, Sequence[str]],
    keys: Sequence[tuple[str, str]],
    device: torch.device | str = "cpu",
    context: Any = None,
) -> dict[str, dict[str, float]]:
    """Evaluate ``model`` on ``batches`` once per variant of ``texts``; return each variant's metrics.

    Args:
        model: The module (put in eval mode here, moved to ``device``).
        batches: The test batches in split order (``image``, ``mask``, ``text``, ``id``, ``dataset``, ...).
        texts: ``{variant: texts}``, each indexed by position in the split (:func:`variant_texts`).
        keys: ``(dataset, id)`` of every position of the split, to check that the batches come in split order.
        device: Where to run.
        context: A factory of the context to run each forward in (e.g. the trainer precision's
            ``test_step_context``); ``None`` for none.

    Returns:
        ``{variant: {metric: value}}`` with every metric of :func:`~textseg.ops.metrics.segmentation_metrics`
        (``dice``, ``iou``, ``dice_per_image``, ``iou_per_image``, ...) as floats.

    Raises:
        RuntimeError: If the batches do not come in split order or do not cover the split.
    """
    device = torch.device(device)
    model.eval().to(device)
    metrics = {name: segmentation_metrics("").to(device) for name in texts}
    start = 0
    with torch.no_grad():
        for raw in batches:
            batch = _to_device(raw, device)
            size = len(batch["text"])
            seen = [(str(d), str(i)) for d, i in zip(batch["dataset"], batch["id"], strict=True)]
            expected = list(keys[start : start + size])
            if seen != expected or list(batch["text"]) != list(texts["own"][start : start + size]):
                raise RuntimeError(f"test batches are not in split order at position {start}: {seen} != {expected}")
            target = batch["mask"].long()
            for name, variant in texts.items():
                with context() if context is not None else nullcontext():
                    out = model.forward_batch(batch, model.eval_net, texts=list(variant[start : start + size]))
                metrics[name].update(binarize_logits(out["logits"]), target)
            start += size
    if start != len(keys):
        raise RuntimeError(f"the test loader gave {start} samples, the split has {len(keys)}")
    return {name: {k: float(v) for k, v in m.compute().items()} for name, m in metrics.items()}


def run_probe(
    model: TextSegModule,
    datamodule: LightningDataModule,
    trainer: Trainer | None,
    ckpt_path: str | Path,
    seed: int,
    weights_only: bool | None = True,
    out: str | Path | None = None,
    configs: Sequence[str] = (),
    command: Sequence[str] = (),
) -> tuple[dict[str, Any], Path]:
    """Load the checkpoint, probe the test split with every variant, write ``probe.json`` and print the table.

    Args:
        model: The configured module (built as ``textseg test`` builds it).
        datamodule: The configured :class:`~textseg.data.datamodule.TextSegDataModule`.
        trainer: The configured trainer (its root device and precision are used); ``None``: CPU, full precision.
        ckpt_path: The checkpoint file.
        seed: Seed of the shuffle.
        weights_only: ``torch.load``'s ``weights_only``.
        out: Output folder (default :func:`output_dir` of the checkpoint).
        configs: The config files, for the header.
        command: The command line, for the header.

    Returns:
        The result written and the path of ``probe.json``.

    Raises:
        DataError: For a checkpoint that does not fit, a test split of fewer than 2 images or too long texts.
    """
    if not isinstance(datamodule, TextSegDataModule):
        raise DataError(f"textseg probe needs a TextSegDataModule, got {type(datamodule).__name__}")
    ckpt = load_weights(model, ckpt_path, weights_only)
    datamodule.setup("test")
    records = datamodule.splits.get("test", [])
    sources = datamodule.sources.get("test", [])
    own = [r.text for r in records]
    tokens = TokenLimit.of(getattr(model, "text_encoder", None))
    if tokens is not None:  # as the datamodule does under a trainer (here there is none): texts it would truncate
        found = [(n or "predict", "test", r) for n, r in zip(sources, records, strict=True)]
        raise_problems(tokens.problems(record_texts(found)), "the test texts")
    perm = derangement(len(records), seed)
    texts = variant_texts(own, perm)
    keys = [(str(s), str(r.id)) for s, r in zip(sources, records, strict=True)]
    device = trainer.strategy.root_device if trainer is not None else torch.device("cpu")
    context = trainer.precision_plugin.test_step_context if trainer is not None else None
    scores = probe_model(model, datamodule.test_dataloader(), texts, keys, device, context)
    header: dict[str, Any] = {
        "checkpoint": str(ckpt_path),
        "config": list(configs),
        "seed": int(seed),
        "n_images": len(records),
        "method": checkpointing.saved_method(ckpt) or type(model).__name__,
        "backbone": str(model.hparams.get("backbone", "")),
        "eval_net": "teacher" if model.eval_net is not model.net else "student",
        "no_text_prompt": NO_TEXT,
        "permutation": perm,
        "n_shuffled_same_text": sum(a == b for a, b in zip(own, texts["shuffled"], strict=True)),
        "examples": {name: values[0] for name, values in texts.items()},
        "command": list(command),
    }
    result = {**header, **_with_drops(scores)}
    folder = output_dir(ckpt_path, out)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / PROBE_FILE
    path.write_text(json.dumps(result, indent=1))
    print(
        f"textseg probe: {header['method']} ({header['eval_net']}) on {len(records)} test images, "
        f"checkpoint {ckpt_path}, shuffle seed {seed}"
    )
    print(format_table(result))
    print(f"textseg probe: wrote {path}")
    return result, path


# ---------------------------------------------------------------------------------------------- command


class ProbeCLI(TextSegCLI):
    """:class:`~textseg.cli.lightning.TextSegCLI` with only the ``test`` subcommand, which runs the probe instead.

    Parsing, the checkpoint's hyper-parameters, its checks, ``--seed`` and ``--weights_only`` are ``textseg test``'s;
    ``--ckpt_path`` must name a file, and ``--out`` is added.
    """

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        """Only ``test``: the probe takes its arguments."""
        return {"test": {"model", "dataloaders", "datamodule"}}

    def setup_parser(
        self, add_subcommands: bool, main_kwargs: dict[str, Any], subparser_kwargs: dict[str, Any]
    ) -> None:
        """Build ``textseg test``'s parser; its usage and error lines name ``textseg probe``."""
        super().setup_parser(add_subcommands, main_kwargs, subparser_kwargs)
        self._parser("test").prog = "textseg probe"

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """Parse ``args`` (always given: ``["test", *argv]``), without LightningCLI's warning about ``sys.argv``."""
        self.config = parser.parse_args(args)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """``textseg test``'s arguments plus ``--out``."""
        super().add_arguments_to_parser(parser)
        parser.add_argument(
            "--out",
            type=str | None,
            default=None,
            help="Folder of probe.json (default: RUN for RUN/checkpoints/x.ckpt, else the checkpoint's folder).",
        )

    def _parse_ckpt_path(self) -> None:
        """Require ``--ckpt_path`` to name an existing file, then check it as ``textseg test`` does."""
        path = self.config["test"].get("ckpt_path")
        if not path:
            raise DataError("textseg probe needs --ckpt_path CKPT (a checkpoint file)")
        if not Path(path).is_file():
            raise DataError(f"checkpoint file not found: {path}")
        super()._parse_ckpt_path()

    def _run_subcommand(self, subcommand: str) -> None:
        """Run the probe (no Trainer loop, no logger, no W&B run)."""
        config = self.config[subcommand]
        seed = config.get("seed")
        if seed is None:
            seed = int(self.datamodule.hparams.get("seed", 0)) if self.datamodule is not None else 0
        configs = [str(getattr(p, "relative", p)) for p in (config.get("config") or [])]
        if not isinstance(self.model, TextSegModule):
            raise DataError(f"textseg probe needs a textseg method, got {type(self.model).__name__}")
        run_probe(
            self.model,
            self.datamodule,
            self.trainer,
            config["ckpt_path"],
            seed=int(seed),
            weights_only=config.get("weights_only"),
            out=config.get("out"),
            configs=configs,
            command=self._command or [],
        )


def main(argv: Sequence[str]) -> int:
    """``textseg probe``: the arguments of ``textseg test`` (``--config``, ``--ckpt_path``, overrides) and ``--out``.

    Args:
        argv: The arguments after ``probe``.

    Returns:
        0 on success, 2 for bad input (:class:`~textseg.errors.DataError`: one ``textseg: error: ...`` line, as
        :func:`textseg.cli.runner.run_guarded`). Configuration errors exit through jsonargparse (code 2).
    """
    from textseg.cli.runner import guarded_code

    argv = [str(a) for a in argv]
    return guarded_code(
        partial(
            ProbeCLI,
            TextSegModule,
            TextSegDataModule,
            subclass_mode_model=True,
            save_config_callback=None,
            parser_kwargs={"test": {"description": DESCRIPTION}},
            args=["test", *argv],
            command=["textseg", "probe", *argv],
        )
    )
