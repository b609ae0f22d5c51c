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
(:class:`~textseg.engine.runcard.RunCardCallback`).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Sequence
from typing import Any

from textseg.cli.runner import run_guarded

#: Names served lazily from :mod:`textseg.cli.lightning` (importing Lightning only when needed).
_LAZY = ("TextSegCLI", "SemiMedRefModule", "SupervisedModule", "TextSegModule")

__all__ = ["EXTRA_COMMANDS", "main", *_LAZY]


def __getattr__(name: str) -> Any:
    """Import the Lightning CLI classes on first access."""
    if name in _LAZY:
        return getattr(importlib.import_module("textseg.cli.lightning"), name)
    raise AttributeError(f"module 'textseg.cli.main' has no attribute {name!r}")


def _run_data(argv: Sequence[str]) -> int:
    from textseg.cli.data import main as data_main

    return data_main(argv)


def _run_report(argv: Sequence[str]) -> int:
    from textseg.cli.report import main as report_main

    return report_main(argv)


def _run_grid(argv: Sequence[str]) -> int:
    from textseg.cli.grid import main as grid_main

    return grid_main(argv)


def _run_probe(argv: Sequence[str]) -> int:
    from textseg.cli.probe import main as probe_main

    return probe_main(argv)


#: Commands handled before LightningCLI: name -> handler(argv) returning the exit code.
EXTRA_COMMANDS: dict[str, Callable[[Sequence[str]], int]] = {
    "data": _run_data,
    "report": _run_report,
    "grid": _run_grid,
    "probe": _run_probe,
}


def main(args: Any = None) -> None:
    """Entry point of the ``textseg`` console script and ``python -m textseg``.

    Args:
        args: Command-line arguments (default ``sys.argv[1:]``); a list starting with ``data``, ``report``, ``grid``
            or ``probe`` runs that workflow command, anything else goes to LightningCLI (which also accepts a dict).

    Raises:
        SystemExit: With the exit code of a workflow command that failed, 2 for bad input
            (:class:`~textseg.errors.DataError`), 1 for a non-finite loss; LightningCLI exits on its own errors.
    """
    argv = list(sys.argv[1:]) if args is None else args
    if isinstance(argv, (list, tuple)) and argv and argv[0] in EXTRA_COMMANDS:
        code = EXTRA_COMMANDS[argv[0]]([str(a) for a in argv[1:]])
        if code:
            raise SystemExit(code)
        return
    command = ["textseg", *map(str, argv)] if isinstance(argv, (list, tuple)) else None
    run_guarded(args, command)


if __name__ == "__main__":
    main()
