"""Run a Lightning command with textseg's error handling: one ``textseg: error: ...`` line instead of a traceback.

Shared by ``textseg`` (:mod:`textseg.cli.main`) and ``textseg grid``'s in-process runs (:mod:`textseg.cli.grid`);
importing it is cheap (Lightning is imported when a command runs).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

#: Environment variable that makes input errors raise with their traceback (debugging).
TRACEBACK_ENV = "TEXTSEG_TRACEBACK"
#: Exit code of an input error (as argparse/jsonargparse usage errors).
EXIT_INPUT_ERROR = 2
#: Exit code of a run stopped by a non-finite loss or gradient.
EXIT_NONFINITE = 1


def run_guarded(args: Any, command: list[str] | None) -> None:
    """Run LightningCLI; turn input errors and non-finite losses into one message and an exit code.

    Run-folder problems are input errors too: a folder in use or holding an earlier run, and
    :class:`~textseg.engine.runfolder.RunFileError` (``cannot write <path>: <cause>``), which
    :class:`~textseg.cli.lightning.TextSegCLI` raises for an ``OSError`` while writing run files (a full disk, a
    read-only folder, a run dir that is a file).

    Args:
        args: Arguments for LightningCLI (a list of strings or a dict).
        command: The command line to record in the run card (``None`` for a dict).

    Raises:
        SystemExit: 2 for bad input (:class:`~textseg.errors.DataError`), 1 for a non-finite loss.
    """
    from textseg.cli.lightning import run_lightning_cli

    guarded(run_lightning_cli, args, command)


def guarded_code(run: Callable[..., Any], *args: Any) -> int:
    """Call ``run(*args)`` under :func:`guarded` and return the exit code (0 on success) instead of raising it.

    The ``main`` of the workflow commands (``segment``, ``export``, ``convert``) return this.
    """
    try:
        guarded(run, *args)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    return 0


def guarded(run: Callable[..., Any], *args: Any) -> None:
    """Call ``run(*args)``; a :class:`~textseg.errors.DataError` or non-finite loss becomes one line and an exit code.

    Args:
        run: The command to run.
        *args: Its arguments.

    Raises:
        SystemExit: 2 for bad input (:class:`~textseg.errors.DataError`), 1 for a non-finite loss; other errors
            propagate (as do all with ``TEXTSEG_TRACEBACK=1``).
    """
    from textseg.engine.guards import NonFiniteLossError
    from textseg.errors import DataError

    try:
        run(*args)
    except Exception as exc:
        # A DataError raised while a DataLoader builds a sample reaches us wrapped (MONAI's "applying transform").
        cause: BaseException | None = exc
        while cause is not None and not isinstance(cause, (DataError, NonFiniteLossError)):
            cause = cause.__cause__ or cause.__context__
        if cause is None or os.environ.get(TRACEBACK_ENV, "") not in ("", "0"):
            raise
        code = EXIT_NONFINITE if isinstance(cause, NonFiniteLossError) else EXIT_INPUT_ERROR
        print(f"textseg: error: {cause}", file=sys.stderr)
        raise SystemExit(code) from None
