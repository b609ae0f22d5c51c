"""``textseg --help``: a short overview of every subcommand, printed without importing Lightning or torch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from textseg.cli.main import EXTRA_COMMANDS, LIGHTNING_COMMANDS, main, usage

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "lightning", "lightning.pytorch", "monai", "transformers")
#: A fresh interpreter: import the CLI, ask for the overview, report which heavy modules got imported.
PROBE = f"""
import importlib, json, sys
m = importlib.import_module("textseg.cli.main")  # the attribute textseg.cli.main is the function main
m.main(["--help"])
m.main(["-h"])
print(json.dumps({{"heavy": [n for n in {HEAVY!r} if n in sys.modules], "commands": list(m.EXTRA_COMMANDS)}}))
"""


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=120, check=False)


def test_module_help_lists_every_subcommand() -> None:
    done = _run("-m", "textseg", "--help")
    assert done.returncode == 0, done.stderr
    listed = {line.split()[0] for line in done.stdout.splitlines() if line.startswith("  ")}
    assert listed == {"fit", "validate", "test", "predict", "data", "report", "grid", "probe", *EXTRA_COMMANDS}
    assert "textseg SUBCOMMAND --help" in done.stdout


def test_help_imports_neither_lightning_nor_torch() -> None:
    done = _run("-c", PROBE)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["heavy"] == []
    for name in report["commands"]:
        assert f"\n  {name} " in done.stdout


def test_every_subcommand_has_a_description() -> None:
    for line in usage().splitlines():
        if line.startswith("  "):
            assert len(line.split()) > 1, line
    assert set(LIGHTNING_COMMANDS) == {"fit", "validate", "test", "predict"}


def test_bare_command_prints_usage_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == usage()


def test_subcommand_help_is_lightnings(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--trainer.max_epochs" in out and "--run_dir" in out


def test_subcommand_help_is_kept_after_the_first_time(tmp_path: Path) -> None:
    """``textseg fit --help`` builds the help once (LightningCLI), then prints it without importing Lightning."""
    env = {**__import__("os").environ, "XDG_CACHE_HOME": str(tmp_path), "TEXTSEG_HELP_CACHE": "1"}
    command = [sys.executable, "-X", "importtime", "-m", "textseg", "fit", "--help"]
    runs = [subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=env, timeout=300, check=False)]
    runs.append(subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=env, timeout=300, check=False))
    first, second = runs
    assert first.returncode == second.returncode == 0, first.stderr[-2000:]
    assert "--model.help [CLASS_PATH_OR_NAME]" in first.stdout and "--run_dir_exists" in first.stdout
    assert second.stdout == first.stdout
    assert " lightning.pytorch" in first.stderr and " lightning" not in second.stderr  # -X importtime lists imports
    assert len(list((tmp_path / "textseg" / "help").glob("fit-*.txt"))) == 1


def test_workflow_tools_start_without_lightning() -> None:
    """``textseg report`` and ``textseg grid`` read run folders without importing torch or Lightning."""
    probe = f"import sys, textseg.cli.report, textseg.cli.grid; print([n for n in {HEAVY!r} if n in sys.modules])"
    done = _run("-c", probe)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
