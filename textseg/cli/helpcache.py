"""``textseg fit --help`` (and ``validate``/``test``/``predict``) in a fraction of a second after the first time.

The help of a Lightning subcommand is built by LightningCLI, and importing Lightning alone takes about 5 s on a small
machine (torch, torchmetrics, transformers and scipy come with it), more than the help is worth. The first
``textseg SUBCOMMAND --help`` builds it as usual and keeps the text in ``$XDG_CACHE_HOME/textseg/help`` (default
``~/.cache/textseg/help``); later calls print the kept text without importing Lightning. The cache key covers
everything the text depends on: the subcommand, the versions of textseg, Lightning and jsonargparse, the size and
modification time of every textseg source file (an edited or updated textseg rebuilds it) and the terminal width.
``TEXTSEG_HELP_CACHE=0`` turns the cache off. Only the bare ``SUBCOMMAND --help`` is cached: with a ``--config`` the
help shows that config's defaults and is built every time.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import io
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = ["cache_file", "cached_help"]

#: ``SUBCOMMAND --help`` forms that are cached.
_HELP = ("-h", "--help")


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "-"


def cache_file(subcommand: str) -> Path | None:
    """Where the help of ``subcommand`` is kept for this textseg, Lightning and terminal (``None``: cache off)."""
    if os.environ.get("TEXTSEG_HELP_CACHE", "1") == "0":
        return None
    package = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for part in (subcommand, _version("textseg"), _version("lightning"), _version("jsonargparse")):
        digest.update(part.encode() + b"\0")
    digest.update(str(shutil.get_terminal_size().columns).encode())
    for path in sorted(package.rglob("*.py")):
        stat = path.stat()
        digest.update(f"{path.relative_to(package)}:{stat.st_size}:{stat.st_mtime_ns}\0".encode())
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "textseg" / "help"
    return root / f"{subcommand}-{digest.hexdigest()[:20]}.txt"


def cached_help(argv: Sequence[str], subcommands: Sequence[str], build: Callable[[], None]) -> bool:
    """Print the cached help when ``argv`` is ``SUBCOMMAND --help``; build and keep it when it is not cached yet.

    Args:
        argv: The command-line arguments.
        subcommands: The Lightning subcommands.
        build: Runs the command for ``argv`` (prints the help and raises ``SystemExit(0)``).

    Returns:
        Whether ``argv`` was answered here (``False``: not a bare ``SUBCOMMAND --help``, or the cache is off).
    """
    if len(argv) != 2 or argv[0] not in subcommands or argv[1] not in _HELP:
        return False
    path = cache_file(str(argv[0]))
    if path is None:
        return False
    if path.is_file():
        print(path.read_text(encoding="utf-8"), end="")
        return True
    buffer = io.StringIO()
    with contextlib.suppress(SystemExit), contextlib.redirect_stdout(buffer):
        build()
    text = buffer.getvalue()
    print(text, end="")
    if text.strip():
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
            tmp.write_text(text, encoding="utf-8")
            tmp.replace(path)
        except OSError:
            pass  # a read-only home: the help was printed, it is just not kept
    return True
