"""One owner for a run folder, through ``textseg fit/test`` (issue 27, part 1).

A tiny supervised demo run (``configs/demo_supervised.yaml``, tiny encoders, 1 epoch of 2 batches) is fitted once into
a run folder; each test works on a copy of it. A second ``fit`` into a used folder is refused (unless it resumes or
``--run_dir_exists`` says otherwise), a locked folder is refused, ``--ckpt_path last`` without ``last.ckpt`` is an
error, ``test`` into the folder adds files without replacing the fit's, and an unwritable folder, a run dir that is a
file, a full disk at the checkpoint save and ``batch_size 0`` each end in one line, without a traceback.
"""

from __future__ import annotations

import csv
import fcntl
import hashlib
import os
import resource
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from tinyrun import tiny_args

from textseg.cli.main import main
from textseg.engine.runfiles import METRICS_FILE
from textseg.engine.runfolder import LOCK_FILE

REPO = Path(__file__).resolve().parents[2]
ERROR = "textseg: error: "


def fit_args(work: Path, *extra: str) -> list[str]:
    """``textseg fit`` of the tiny supervised demo (data in ``work/synthetic``)."""
    config = str(REPO / "configs" / "demo_supervised.yaml")
    return ["fit", "--config", config, "--data.root", str(work / "synthetic"), *tiny_args(), *extra]


def run_test_args(work: Path, run_dir: Path, ckpt: Path) -> list[str]:
    """``textseg test`` of ``ckpt`` into ``run_dir``."""
    return ["test", *fit_args(work)[1:], "--ckpt_path", str(ckpt), "--run_dir", str(run_dir)]


def files_under(folder: Path) -> dict[str, str]:
    """``relative path -> sha256`` of every file below ``folder``."""
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def csv_rows(path: Path) -> list[dict[str, str]]:
    """The rows of a ``metrics.csv``, empty cells dropped."""
    with path.open() as f:
        return [{k: v for k, v in row.items() if v} for row in csv.DictReader(f)]


def one_error(capsys: pytest.CaptureFixture[str], code: int | str | None) -> str:
    """Exit code 2 and exactly one ``textseg: error:`` line without a traceback; return that line."""
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and err.count(ERROR) == 1, err
    return next(line for line in err.splitlines() if line.startswith(ERROR))


def fails(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as info:
        main(args)
    return one_error(capsys, info.value.code)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run folder of one finished tiny fit (``work/run``)."""
    work = tmp_path_factory.mktemp("rundir")
    main(fit_args(work, "--run_dir", str(work / "run")))
    return work / "run"


@pytest.fixture
def used(fitted: Path, tmp_path: Path) -> Path:
    """A copy of the finished run's folder (``tmp_path/run``), with the data folder beside it."""
    shutil.copytree(fitted, tmp_path / "run")
    (tmp_path / "synthetic").symlink_to(fitted.parent / "synthetic")
    return tmp_path / "run"


# ------------------------------------------------------------------------------------------ a used run folder


def test_shipped_demo_saves_last(fitted: Path) -> None:
    assert sorted(p.name for p in (fitted / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    assert not (fitted / LOCK_FILE).exists()


def test_second_fit_into_a_used_run_dir_is_refused(used: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = files_under(used)
    line = fails(fit_args(used.parent, "--run_dir", str(used)), capsys)
    assert line.startswith(f"{ERROR}run dir {used} already holds a run (config.yaml, hparams.yaml, metrics.csv")
    assert "--run_dir_exists" in line
    assert files_under(used) == before


def test_new_version_leaves_the_earlier_run(used: Path, caplog: pytest.LogCaptureFixture) -> None:
    before = files_under(used)
    with caplog.at_level("INFO"):
        main(fit_args(used.parent, "--run_dir", str(used), "--run_dir_exists", "new_version"))
    fresh = used.with_name("run_v2")
    assert f"this run writes into {fresh}" in caplog.text
    assert files_under(used) == before
    assert {"config.yaml", "metrics.csv", "checkpoints/best.ckpt", "checkpoints/last.ckpt"} <= set(files_under(fresh))
    assert yaml.safe_load((fresh / "config.yaml").read_text())["run_dir"] == str(fresh)


def test_overwrite_replaces_the_earlier_run(used: Path, caplog: pytest.LogCaptureFixture) -> None:
    before = files_under(used)
    with pytest.raises(SystemExit) as failed:  # a run that cannot start never costs the earlier run
        main(fit_args(used.parent, "--run_dir", str(used), "--run_dir_exists", "overwrite", "--data.batch_size", "0"))
    assert failed.value.code == 2 and files_under(used) == before
    with caplog.at_level("INFO"):
        main(fit_args(used.parent, "--run_dir", str(used), "--run_dir_exists", "overwrite"))
    assert f"the earlier run in {used} (config.yaml" in caplog.text
    after = files_under(used)
    assert set(after) == set(before) and after["checkpoints/best.ckpt"] != before["checkpoints/best.ckpt"]
    assert [int(r["epoch"]) for r in csv_rows(used / "metrics.csv") if "val_dice" in r] == [0]  # one run's, not two


def test_resume_appends_to_metrics(used: Path, caplog: pytest.LogCaptureFixture) -> None:
    """``--ckpt_path last`` continues the folder's run: its earlier rows stay, the next epoch's are appended."""
    before = [r for r in csv_rows(used / "metrics.csv") if "val_dice" in r]
    with caplog.at_level("INFO"):
        main(fit_args(used.parent, "--run_dir", str(used), "--ckpt_path", "last", "--trainer.max_epochs", "2"))
    assert f"Restored all states from the checkpoint at {used / 'checkpoints' / 'last.ckpt'}" in caplog.text
    after = [r for r in csv_rows(used / "metrics.csv") if "val_dice" in r]
    assert [int(r["epoch"]) for r in after] == [0, 1] and after[:1] == before


def test_ckpt_path_last_without_one_is_an_error(used: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fresh = used.with_name("fresh")
    line = fails(fit_args(used.parent, "--run_dir", str(fresh), "--ckpt_path", "last"), capsys)
    assert line.startswith(f"{ERROR}--ckpt_path last: no last checkpoint (last.ckpt) in {fresh / 'checkpoints'}")
    assert not fresh.exists()
    (used / "checkpoints" / "last.ckpt").unlink()
    before = files_under(used)
    line = fails(fit_args(used.parent, "--run_dir", str(used), "--ckpt_path", "last"), capsys)
    assert f"in {used / 'checkpoints'}" in line and files_under(used) == before


def test_a_locked_run_dir_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Another command holding ``.lock`` (two runs started at once): refused, naming the holder."""
    run = tmp_path / "run"
    run.mkdir()
    fd = os.open(run / LOCK_FILE, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, b"pid 12345 on otherhost, started 2025-01-01T00:00:00+00:00")
        line = fails(fit_args(tmp_path, "--run_dir", str(run)), capsys)
    finally:
        os.close(fd)
    assert line == (
        f"{ERROR}run dir {run} is in use by another textseg command (pid 12345 on otherhost, started "
        f"2025-01-01T00:00:00+00:00; lock file {run / LOCK_FILE}); wait for it to finish or choose another --run_dir"
    )
    assert sorted(p.name for p in run.iterdir()) == [LOCK_FILE]


def test_versioned_runs_get_their_own_folder(tmp_path: Path) -> None:
    """Without ``--run_dir`` each run reserves the logger's next ``version_N`` and records it in its config."""
    logs = ["--trainer.logger.init_args.save_dir", str(tmp_path / "runs")]
    for _ in range(2):
        main(fit_args(tmp_path, *logs))
    for version in (0, 1):
        folder = tmp_path / "runs" / "demo_supervised" / f"version_{version}"
        config = yaml.safe_load((folder / "config.yaml").read_text())
        assert config["trainer"]["logger"]["init_args"]["version"] == version


# --------------------------------------------------------------------------------- validate/test/predict into it


def test_test_into_the_run_dir_keeps_the_fit_records(used: Path, caplog: pytest.LogCaptureFixture) -> None:
    before = files_under(used)
    fit_rows = (used / "metrics.csv").read_text().splitlines()
    main(run_test_args(used.parent, used, used / "checkpoints" / "best.ckpt"))
    after = files_under(used)
    for name in ("config.yaml", "hparams.yaml", "split.json", "run_card.json", "checkpoints/best.ckpt"):
        assert after[name] == before[name], name
    rows = (used / "metrics.csv").read_text().splitlines()
    assert len(rows) > len(fit_rows) and "test_dice" in rows[0]
    assert (used / "test_config.yaml").is_file() and (used / METRICS_FILE).is_file()
    with caplog.at_level("INFO"):
        main(run_test_args(used.parent, used, used / "checkpoints" / "last.ckpt"))
    assert f"{used / METRICS_FILE} replaced by this test's metrics" in caplog.text


# ------------------------------------------------------------------------------------- unwritable run folders


def test_run_dir_that_is_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "run").write_text("not a folder")
    line = fails(fit_args(tmp_path, "--run_dir", str(tmp_path / "run")), capsys)
    assert line == f"{ERROR}cannot write {tmp_path / 'run'}: Not a directory"


@pytest.fixture
def read_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A run folder nothing can be written into (``chmod``; simulated for root, whom permissions do not stop)."""
    folder = tmp_path / "run"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    import builtins
    import io

    def blocked(path: object) -> bool:
        return Path(os.path.abspath(os.fsdecode(path))).parent.is_relative_to(folder)  # type: ignore[arg-type]

    def refuse(path: object) -> None:
        raise PermissionError(13, "Permission denied", os.fsdecode(path))  # type: ignore[arg-type]

    real_os_open, real_open, real_mkdir = os.open, builtins.open, os.mkdir
    writes = os.O_WRONLY | os.O_RDWR | os.O_CREAT

    def os_open(path: object, flags: int, *args: object, **kwargs: object) -> int:
        if flags & writes and blocked(path):
            refuse(path)
        return real_os_open(path, flags, *args, **kwargs)  # type: ignore[arg-type]

    def py_open(file: object, mode: str = "r", *args: object, **kwargs: object) -> object:
        if isinstance(file, (str, Path)) and set(mode) & set("wax+") and blocked(file):
            refuse(file)
        return real_open(file, mode, *args, **kwargs)  # type: ignore[call-overload]

    def mkdir(path: object, *args: object, **kwargs: object) -> None:
        if blocked(path):
            refuse(path)
        real_mkdir(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", os_open)
    monkeypatch.setattr(builtins, "open", py_open)
    monkeypatch.setattr(io, "open", py_open)
    monkeypatch.setattr(os, "mkdir", mkdir)
    yield folder


def test_read_only_run_dir(read_only: Path, capsys: pytest.CaptureFixture[str]) -> None:
    line = fails(fit_args(read_only.parent, "--run_dir", str(read_only)), capsys)
    assert line == f"{ERROR}cannot write {read_only}: Permission denied"


@pytest.fixture
def small_files() -> Iterator[int]:
    """Files of this process may hold at most 512 KiB (``RLIMIT_FSIZE``): a larger write fails as on a full disk."""
    limit = 512 * 1024
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    before = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead of killing us
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield limit
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, before)


def test_full_disk_at_checkpoint_save(
    fitted: Path, tmp_path: Path, small_files: int, capsys: pytest.CaptureFixture[str]
) -> None:
    """The first checkpoint cannot be written: one line naming it, no truncated ``.ckpt`` (nor temporary file)."""
    assert (fitted / "checkpoints" / "best.ckpt").stat().st_size > small_files
    (tmp_path / "synthetic").symlink_to(fitted.parent / "synthetic")
    run = tmp_path / "run"
    line = fails(fit_args(tmp_path, "--run_dir", str(run)), capsys)
    assert line == f"{ERROR}cannot write {run / 'checkpoints' / 'best.ckpt'}: File too large"
    assert list((run / "checkpoints").iterdir()) == []
    assert (run / "config.yaml").is_file() and not (run / LOCK_FILE).exists()


def test_batch_size_zero(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    line = fails(fit_args(tmp_path, "--run_dir", str(run), "--data.batch_size", "0"), capsys)
    assert "batch_size" in line and "0" in line
    assert not run.exists()
