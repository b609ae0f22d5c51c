"""The ``textseg`` command: Lightning's CLI (``fit``, ``validate``, ``test``, ``predict``) plus the workflow tools.

Examples:
    textseg fit --config configs/semimedref_mmiunet.yaml
    textseg fit --config configs/demo_semimedref.yaml --config configs/logger/wandb.yaml --seed 43
    textseg test --config configs/semimedref_mmiunet.yaml --ckpt_path runs/.../best.ckpt
    textseg predict --config configs/demo_semimedref.yaml --ckpt_path runs/.../best.ckpt --run_dir runs/pred
    textseg data check /data/QaTa-COV19
    textseg report runs/ --out report/
    textseg grid configs/sweeps/semimedref_qata.yaml --dry-run
    textseg probe --config configs/demo_semimedref.yaml --ckpt_path runs/.../checkpoints/best.ckpt
    textseg segment chest.png --text "Pneumonia in the lower left lung." --model best.ckpt --out masks/

Errors in the user's input (:class:`~textseg.errors.DataError`: a missing or broken file, a bad value, a checkpoint that
does not fit the configured model) and a non-finite loss end the command with one line ``textseg: error: ...`` on
stderr and exit code 2 (1 for a non-finite loss), without a traceback; ``TEXTSEG_TRACEBACK=1`` shows it. Configuration
errors (unknown key, wrong type) are reported by jsonargparse the same way.

``data``, ``report`` and ``grid`` are plain argparse commands (:mod:`textseg.cli.data`, :mod:`textseg.cli.report`,
:mod:`textseg.cli.grid`) dispatched before LightningCLI, without importing Lightning; ``probe``
(:mod:`textseg.cli.probe`: does a checkpoint's model read the text?) is dispatched there too and imports Lightning only
when it runs. The Lightning subcommands run :class:`~textseg.cli.lightning.TextSegCLI`: every one also accepts
``--seed`` (one seed for ``seed_everything``, ``data.seed`` and the method's ``aug_seed``) and ``--run_dir`` (write the
run into exactly this folder), and ``fit`` always writes ``run_card.json``
(:class:`~textseg.engine.runcard.RunCardCallback`) and, when stdout is not a terminal (a SLURM log) or
``TEXTSEG_EPOCH_LINES=1``, one line per epoch (:class:`~textseg.engine.progress.EpochSummary`).

``textseg``, ``textseg -h`` and ``textseg --help`` print a short overview of the subcommands (:func:`usage`) without
importing Lightning; ``textseg SUBCOMMAND --help`` gives that subcommand's options (kept after the first time:
:mod:`textseg.cli.helpcache`).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Sequence
from typing import Any

from textseg.cli.runner import run_guarded

#: Names served lazily from :mod:`textseg.cli.lightning` (importing Lightning only when needed).
_LAZY = ("TextSegCLI", "SemiMedRefModule", "SupervisedModule", "TextSegModule")

__all__ = ["EXTRA_COMMANDS", "LIGHTNING_COMMANDS", "main", "usage", *_LAZY]


def __getattr__(name: str) -> Any:
    """Import the Lightning CLI classes on first access."""
    if name in _LAZY:
        return getattr(importlib.import_module("textseg.cli.lightning"), name)
    raise AttributeError(f"module 'textseg.cli.main' has no attribute {name!r}")


def _run_data(argv: Sequence[str]) -> int:
    """Check a dataset root (data check) or write the synthetic dataset (data synth)."""
    from textseg.cli.data import main as data_main

    return data_main(argv)


def _run_report(argv: Sequence[str]) -> int:
    """Gather runs' test_metrics.json files into result tables (Markdown, CSV, plot)."""
    from textseg.cli.report import main as report_main

    return report_main(argv)


def _run_grid(argv: Sequence[str]) -> int:
    """Run the grid of a W&B sweep file locally, one fit per combination."""
    from textseg.cli.grid import main as grid_main

    return grid_main(argv)


def _run_probe(argv: Sequence[str]) -> int:
    """Check whether a checkpoint's model reads the text."""
    from textseg.cli.probe import main as probe_main

    return probe_main(argv)


def _run_export(argv: Sequence[str]) -> int:
    """Export a trained model to ONNX or TorchScript (image + tokenized text in, logits out)."""
    from textseg.cli.export import main as export_main

    return export_main(argv)


def _run_convert(argv: Sequence[str]) -> int:
    """Convert a reference-code checkpoint (GuideDecoder, MMI-UNet, TextMoE) to textseg's layout and back."""
    from textseg.cli.convert import main as convert_main

    return convert_main(argv)


#: Commands handled before LightningCLI: name -> handler(argv) returning the exit code.
EXTRA_COMMANDS: dict[str, Callable[[Sequence[str]], int]] = {
    "data": _run_data,
    "report": _run_report,
    "grid": _run_grid,
    "probe": _run_probe,
    "segment": importlib.import_module("textseg.cli.segment").main,  # argparse only until it runs
    "export": _run_export,
    "convert": _run_convert,
}


#: LightningCLI's subcommands and their one-line descriptions (for the usage of ``textseg --help``).
LIGHTNING_COMMANDS: dict[str, str] = {
    "fit": "Train a model (--test_after_fit true also tests the best checkpoint).",
    "validate": "Evaluate a model or checkpoint on the validation split.",
    "test": "Evaluate a model or checkpoint on the test split.",
    "predict": "Write predicted masks, probability maps and overlays.",
}
#: Arguments that ask for the command overview (``textseg --help``) instead of a subcommand.
_HELP_FLAGS = ("-h", "--help")


def _summary(handler: Callable[..., Any]) -> str:
    """The first line of a handler's docstring, without reST quotes ("" without one)."""
    doc = (getattr(handler, "__doc__", None) or "").strip()
    return doc.splitlines()[0].strip().replace("``", "") if doc else ""


def usage() -> str:
    """The overview printed by ``textseg``, ``textseg -h`` and ``textseg --help`` (without importing Lightning).

    Returns:
        The usage line, every subcommand (Lightning's and :data:`EXTRA_COMMANDS`) with one line each, and a pointer to
        ``textseg SUBCOMMAND --help``.
    """
    commands = {**LIGHTNING_COMMANDS, **{name: _summary(run) for name, run in EXTRA_COMMANDS.items()}}
    width = max(map(len, commands))
    lines = [
        "usage: textseg SUBCOMMAND [options]",
        "",
        "textseg: semi-supervised, text-guided medical image segmentation.",
        "",
        "subcommands:",
        *(f"  {name:<{width}}  {text}".rstrip() for name, text in commands.items()),
        "",
        "textseg SUBCOMMAND --help for its options.",
    ]
    return "\n".join(lines)


def main(args: Any = None) -> None:
    """Entry point of the ``textseg`` console script and ``python -m textseg``.

    Args:
        args: Command-line arguments (default ``sys.argv[1:]``); a list starting with ``data``, ``report``, ``grid``
            or ``probe`` runs that workflow command; no arguments, ``-h`` or ``--help`` print :func:`usage` (without
            importing Lightning); anything else goes to LightningCLI (which also accepts a dict).

    Raises:
        SystemExit: 2 without arguments (after the usage); the exit code of a workflow command that failed; 2 for
            bad input (:class:`~textseg.errors.DataError`), 1 for a non-finite loss; LightningCLI exits on its own
            errors.
    """
    argv = list(sys.argv[1:]) if args is None else args
    if isinstance(argv, (list, tuple)) and (not argv or argv[0] in _HELP_FLAGS):
        # Answered here, before LightningCLI imports Lightning, MONAI and transformers (seconds).
        if not argv:
            print(usage(), file=sys.stderr)
            raise SystemExit(2)
        print(usage())
        return
    if isinstance(argv, (list, tuple)) and argv and argv[0] in EXTRA_COMMANDS:
        code = EXTRA_COMMANDS[argv[0]]([str(a) for a in argv[1:]])
        if code:
            raise SystemExit(code)
        return
    command = ["textseg", *map(str, argv)] if isinstance(argv, (list, tuple)) else None
    if isinstance(argv, (list, tuple)):
        from textseg.cli.helpcache import cached_help

        if cached_help([str(a) for a in argv], list(LIGHTNING_COMMANDS), lambda: run_guarded(args, command)):
            raise SystemExit(0)  # as argparse after a help; without importing Lightning after the first time
    from textseg.engine.quiet import install_filters

    install_filters()  # drop the known-harmless third-party messages (each filter says why)
    run_guarded(args, command)


if __name__ == "__main__":
    main()
