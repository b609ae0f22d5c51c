"""``textseg grid``: run the grid of a W&B sweep file locally, one ``textseg fit`` per combination, without W&B.

The sweep files in ``configs/sweeps/`` are ordinary W&B sweep configurations (``method: grid``, ``parameters`` with
``values``, a ``command`` with ``${program}`` and ``${args}``), so ``wandb sweep FILE`` + ``wandb agent`` runs them on
W&B. ``textseg grid FILE`` expands the same grid (the Cartesian product of the parameters' values, first parameter
slowest) and runs each command sequentially, every combination in its own run directory
``<out>/<param=value_...>/`` (passed as ``--run_dir``), so that ``textseg report <out>`` tabulates the results.
A combination whose run directory already holds ``test_metrics.json`` is skipped (``--force`` reruns it).

Any other option of ``textseg grid`` given as ``--section.key value`` or ``--section.key=value`` (e.g.
``--data.root /data/QaTa-COV19 --trainer.devices 4``) is appended to every run's command, after the sweep's own
arguments, so a sweep over real data needs no edit of a tracked YAML; an override of a swept parameter is an error.

Macros: ``${program}`` (``textseg`` runs as ``python -m textseg``), ``${args}`` (``--key=value`` per parameter),
``${args_no_hyphens}`` (``key=value``), ``${interpreter}`` (this Python) and ``${env}`` (nothing).
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from textseg.engine.runfiles import METRICS_FILE, earlier_run
from textseg.errors import DataError

__all__ = [
    "GridRun",
    "build_runs",
    "expand_grid",
    "format_value",
    "load_sweep",
    "main",
    "parse_overrides",
    "rerun_args",
    "run_grid",
]

#: W&B's default sweep command.
DEFAULT_COMMAND: tuple[str, ...] = ("${env}", "${interpreter}", "${program}", "${args}")
#: File whose presence marks a finished combination.
DONE_FILE = METRICS_FILE
#: Summary of the grid written into the output folder.
SUMMARY_FILE = "grid.json"
#: Characters kept in run-directory names (others become ``-``).
_UNSAFE = re.compile(r"[^A-Za-z0-9._=+-]+")


@dataclass(frozen=True)
class GridRun:
    """One combination of the grid.

    Attributes:
        index: Position in the grid (0-based).
        params: Parameter values, in sweep order.
        tag: Directory name built from the values.
        run_dir: Run directory.
        command: The command line.
    """

    index: int
    params: dict[str, Any]
    tag: str
    run_dir: Path
    command: list[str]

    @property
    def done(self) -> bool:
        """Whether the run directory holds a finished test (``test_metrics.json``)."""
        return (self.run_dir / DONE_FILE).is_file()


def load_sweep(path: str | Path) -> dict[str, Any]:
    """Read a W&B sweep YAML file.

    Raises:
        DataError: If the file is missing, not YAML, or has no ``parameters``.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"sweep file not found: {path}")
    try:
        sweep = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise DataError(f"sweep file {path} is not valid YAML: {exc}") from exc
    if not isinstance(sweep, dict) or not isinstance(sweep.get("parameters"), dict) or not sweep["parameters"]:
        raise DataError(f"sweep file {path} has no 'parameters' mapping")
    return sweep


def expand_grid(sweep: Mapping[str, Any], source: str = "sweep") -> list[dict[str, Any]]:
    """The combinations of a grid sweep (Cartesian product of the values, first parameter slowest).

    Args:
        sweep: The sweep configuration.
        source: Name of the sweep for error messages.

    Returns:
        One ``{parameter: value}`` per combination.

    Raises:
        DataError: If the method is not ``grid`` or a parameter has no ``values``/``value``.
    """
    method = sweep.get("method", "grid")
    if method != "grid":
        raise DataError(f"{source}: textseg grid expands only 'method: grid' sweeps, not {method!r}")
    names: list[str] = []
    choices: list[list[Any]] = []
    for name, spec in sweep["parameters"].items():
        if isinstance(spec, Mapping) and "values" in spec:
            values = list(spec["values"])
        elif isinstance(spec, Mapping) and "value" in spec:
            values = [spec["value"]]
        else:
            raise DataError(f"{source}: parameter {name!r} needs 'values' (or 'value') for a grid, got {spec!r}")
        if not values:
            raise DataError(f"{source}: parameter {name!r} has no values")
        names.append(str(name))
        choices.append(values)
    return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*choices)]


def format_value(value: Any) -> str:
    """A parameter value as a command-line value (YAML style: ``true``, ``null``, JSON for lists and dicts)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value)
    return str(value)


def _tag(params: Mapping[str, Any]) -> str:
    """Directory name ``key=value_key=value`` (last dotted component of each key when unambiguous)."""
    shorts = [k.rsplit(".", 1)[-1] for k in params]
    parts = []
    for (key, value), short in zip(params.items(), shorts, strict=True):
        label = short if shorts.count(short) == 1 else key
        text = Path(value).stem if isinstance(value, str) and value.endswith((".yaml", ".yml")) else format_value(value)
        parts.append(f"{label}={text}")
    return _UNSAFE.sub("-", "_".join(parts)).strip("-") or "run"


def _is_wandb_config(value: str) -> bool:
    path = Path(value)
    return path.name == "wandb.yaml" and path.parent.name == "logger"


def _expand_command(
    template: Sequence[str], program: str, params: Mapping[str, Any], keep_wandb: bool, source: str
) -> list[str]:
    """Substitute the W&B macros of a sweep command."""
    args = [f"--{k}={format_value(v)}" for k, v in params.items()]
    out: list[str] = []
    for token in template:
        if token == "${env}":
            continue
        if token == "${interpreter}":
            out.append(sys.executable)
        elif token == "${program}":
            if program == "textseg":
                out += ["-m", "textseg"] if out and out[-1] == sys.executable else [sys.executable, "-m", "textseg"]
            else:
                out.append(program)
        elif token == "${args}":
            out += args
        elif token == "${args_no_hyphens}":
            out += [a[2:] for a in args]
        elif token.startswith("${"):
            raise DataError(f"{source}: command macro {token} is not supported by textseg grid")
        else:
            out.append(str(token))
    if keep_wandb:
        return out
    kept: list[str] = []
    skip = False
    for i, token in enumerate(out):
        if skip:
            skip = False
            continue
        if token == "--config" and i + 1 < len(out) and _is_wandb_config(out[i + 1]):
            skip = True
            continue
        if token.startswith("--config=") and _is_wandb_config(token.split("=", 1)[1]):
            continue
        kept.append(token)
    return kept


def parse_overrides(tokens: Sequence[str], swept: Sequence[str]) -> list[str]:
    """Check the extra ``--section.key value`` options of ``textseg grid`` and return them as ``--key=value`` tokens.

    Args:
        tokens: The options ``textseg grid`` does not know itself.
        swept: The sweep's parameter names.

    Raises:
        DataError: For a token that is not an option, an option without a value, ``--run_dir`` (each combination has
            its own) or an option the sweep varies.
    """
    out: list[str] = []
    i = 0
    while i < len(tokens):
        token = str(tokens[i])
        if not token.startswith("--") or token == "--":
            raise DataError(f"unexpected argument {token!r}: overrides are --section.key value (e.g. --data.root DIR)")
        if "=" in token:
            key, value = token[2:].split("=", 1)
            i += 1
        elif i + 1 < len(tokens) and not str(tokens[i + 1]).startswith("--"):
            key, value = token[2:], str(tokens[i + 1])
            i += 2
        else:
            raise DataError(f"override {token} has no value (write {token} VALUE or {token}=VALUE)")
        if key == "run_dir":
            raise DataError("--run_dir cannot be overridden: every combination writes its own (use --out for the root)")
        if key in swept:
            raise DataError(f"--{key} is a parameter of the sweep; edit its values in the sweep file instead")
        out.append(f"--{key}={value}")
    return out


def build_runs(
    sweep: Mapping[str, Any],
    out_dir: str | Path,
    keep_wandb: bool = True,
    source: str = "sweep",
    overrides: Sequence[str] = (),
) -> list[GridRun]:
    """Expand a sweep into runs, each with its own run directory and command.

    Args:
        sweep: The sweep configuration.
        out_dir: Folder of the run directories.
        keep_wandb: Keep ``--config .../logger/wandb.yaml`` in the commands (W&B runs offline without an API key);
            ``False`` drops it.
        source: Name of the sweep for error messages.
        overrides: ``--key=value`` options appended to every command (:func:`parse_overrides`).

    Returns:
        The runs, in grid order.
    """
    program = str(sweep.get("program", "textseg"))
    template = [str(t) for t in sweep.get("command", DEFAULT_COMMAND)]
    runs = []
    for index, params in enumerate(expand_grid(sweep, source)):
        tag = _tag(params)
        run_dir = Path(out_dir) / tag
        command = _expand_command(template, program, params, keep_wandb, source) + list(overrides)
        if program == "textseg":
            command.append(f"--run_dir={run_dir}")
        runs.append(GridRun(index, dict(params), tag, run_dir, command))
    tags = [r.tag for r in runs]
    if len(set(tags)) != len(tags):
        raise DataError(f"{source}: two combinations map to the same run directory; rename the parameter values")
    return runs


def _config_files(command: Sequence[str]) -> list[str]:
    files = [command[i + 1] for i, t in enumerate(command[:-1]) if t == "--config"]
    return files + [t.split("=", 1)[1] for t in command if t.startswith("--config=")]


def _textseg_args(command: Sequence[str]) -> list[str] | None:
    """The arguments after ``python -m textseg`` (``None`` for another program)."""
    for i in range(len(command) - 1):
        if command[i] == "-m" and command[i + 1] == "textseg":
            return list(command[i + 2 :])
    return None


def run_grid(
    runs: Sequence[GridRun],
    dry_run: bool = False,
    max_runs: int | None = None,
    force: bool = False,
    in_process: bool = False,
    summary: str | Path | None = None,
) -> int:
    """Run (or list) the grid sequentially.

    Args:
        runs: The runs.
        dry_run: Only print the commands.
        max_runs: Run at most this many combinations (skipped finished ones do not count).
        force: Rerun combinations whose run directory holds ``test_metrics.json``.
        in_process: Call :func:`textseg.cli.runner.run_guarded` in this process instead of a subprocess per run
            (faster start; a failing run is recorded and the grid goes on; a hard crash ends it).
        summary: JSON file recording every run's parameters, directory and status.

    Returns:
        0 when every started run succeeded, else 1.
    """
    if not dry_run:
        missing = sorted({f for r in runs for f in _config_files(r.command) if not Path(f).is_file()})
        if missing:
            raise DataError(f"config files named by the sweep command not found: {', '.join(missing)}")
    status: dict[int, dict[str, Any]] = {}
    started = 0
    failed = 0
    for run in runs:
        entry: dict[str, Any] = {"params": run.params, "run_dir": str(run.run_dir), "command": run.command}
        status[run.index] = entry
        if run.done and not force:
            entry["status"] = "done"
            print(f"[{run.index + 1}/{len(runs)}] skip {run.tag} (finished: {run.run_dir / DONE_FILE})")
            continue
        if max_runs is not None and started >= max_runs:
            entry["status"] = "not started (--max-runs)"
            continue
        started += 1
        print(f"[{run.index + 1}/{len(runs)}] {'would run' if dry_run else 'run'} {run.tag}")
        print(f"    {shlex.join(run.command)}", flush=True)
        if dry_run:
            entry["status"] = "dry run"
            continue
        begin = time.monotonic()
        command = [*run.command, *rerun_args(run.run_dir)] if _textseg_args(run.command) is not None else run.command
        entry["command"] = command
        code = _execute(command, in_process)
        entry.update(status="ok" if code == 0 else "failed", returncode=code, seconds=round(time.monotonic() - begin))
        if code != 0:
            failed += 1
            print(f"    failed with exit code {code}", flush=True)
    if summary is not None and not dry_run:
        path = Path(summary)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps([status[r.index] for r in runs], indent=1) + "\n", encoding="utf-8")
    counts = {s: sum(1 for e in status.values() if e.get("status") == s) for s in ("ok", "failed", "done")}
    print(
        f"textseg grid: {len(runs)} combinations, {started} {'listed' if dry_run else 'started'} "
        f"({counts['ok']} ok, {counts['failed']} failed), {counts['done']} already finished"
    )
    return 1 if failed else 0


def rerun_args(run_dir: Path) -> list[str]:
    """What a combination's command needs to run again into a folder that holds an earlier run of it.

    ``textseg fit`` refuses a run folder that holds a run (``docs/guide.md``, "Run folders"). An interrupted
    combination with a ``last.ckpt`` resumes from it (``--ckpt_path=last``); a finished one rerun with ``--force``, or
    an interrupted one without a checkpoint, replaces its folder (``--run_dir_exists=overwrite``).
    """
    if not earlier_run(run_dir):
        return []
    if not (run_dir / DONE_FILE).exists() and (run_dir / "checkpoints" / "last.ckpt").is_file():
        return ["--ckpt_path=last"]
    return ["--run_dir_exists=overwrite"]


def _execute(command: Sequence[str], in_process: bool) -> int:
    """Run one command; return its exit code."""
    args = _textseg_args(command)
    if in_process and args is not None:
        from textseg.cli.lightning import run_lightning_cli
        from textseg.cli.runner import guarded_code

        try:
            code = guarded_code(run_lightning_cli, args, ["textseg", *map(str, args)])
        except Exception as exc:  # one failed combination must not stop the grid
            print(f"    {type(exc).__name__}: {exc}", flush=True)
            code = 1
        wandb = sys.modules.get("wandb")
        if wandb is not None and getattr(wandb, "run", None) is not None:
            wandb.finish(exit_code=code)  # a run left open by a failure would be reused by the next combination
        return code
    return subprocess.run(list(command), check=False).returncode


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``textseg grid SWEEP.yaml [options] [--section.key VALUE ...]`` (options: see ``--help``).

    Args:
        argv: Arguments after ``grid``.

    Returns:
        The exit code (0 = every started run succeeded).
    """
    parser = argparse.ArgumentParser(
        prog="textseg grid", description="Run the grid of a W&B sweep file locally, one textseg fit per combination."
    )
    parser.add_argument("sweep", help="W&B sweep YAML (method: grid), e.g. configs/sweeps/semimedref_qata.yaml")
    parser.add_argument("--dry-run", action="store_true", help="print the commands without running them")
    parser.add_argument("--max-runs", type=int, default=None, help="run at most N combinations")
    parser.add_argument("--out", default=None, help="folder of the run directories (default: runs/grid/<sweep name>)")
    parser.add_argument("--force", action="store_true", help="rerun combinations that already have test_metrics.json")
    parser.add_argument("--in-process", action="store_true", help="run in this process instead of subprocesses")
    parser.add_argument("--no-wandb", action="store_true", help="drop --config .../logger/wandb.yaml from commands")
    parser.epilog = "Other --section.key VALUE options (e.g. --data.root DIR) are passed to every run."
    args, extra = parser.parse_known_args(None if argv is None else list(argv))
    if args.max_runs is not None and args.max_runs < 1:
        parser.error("--max-runs must be >= 1")
    try:
        sweep = load_sweep(args.sweep)
        name = str(sweep.get("name") or Path(args.sweep).stem)
        out = Path(args.out) if args.out else Path("runs") / "grid" / name
        overrides = parse_overrides(extra, list(sweep.get("parameters") or {}))
        runs = build_runs(sweep, out, keep_wandb=not args.no_wandb, source=args.sweep, overrides=overrides)
        return run_grid(runs, args.dry_run, args.max_runs, args.force, args.in_process, out / SUMMARY_FILE)
    except DataError as exc:
        print(f"textseg grid: {exc}")
        return 1
