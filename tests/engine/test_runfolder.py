"""The run folder's owner (issue 27, part 1): the lock, earlier runs, reserved versions, atomic writes.

Unit tests of :mod:`textseg.engine.runfolder`; ``tests/cli/test_run_dir.py`` drives the same behaviour through
``textseg fit/test``.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import torch

from textseg.engine import runfiles
from textseg.engine.runfiles import METRICS_FILE, write_test_metrics
from textseg.engine.runfolder import (
    LOCK_FILE,
    AtomicCheckpointIO,
    RunFileError,
    RunFolder,
    atomic_write,
    earlier_run,
    reserve_version,
    write_error,
)
from textseg.errors import DataError


def _fill(folder: Path, *names: str) -> None:
    for name in names:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")


# ------------------------------------------------------------------------------------------------------ the lock


def test_lock_refuses_a_second_holder_and_names_the_first(tmp_path: Path) -> None:
    """A second claim of a locked folder fails at once, naming the holder's pid; after release it succeeds."""
    first = RunFolder.claim(tmp_path / "run", fit=True)
    assert f"pid {os.getpid()} on " in (tmp_path / "run" / LOCK_FILE).read_text()
    with pytest.raises(DataError, match=rf"run dir {tmp_path / 'run'} is in use by another textseg command \(pid "):
        RunFolder.claim(tmp_path / "run", fit=False)
    first.release()
    assert not (tmp_path / "run" / LOCK_FILE).exists()
    RunFolder.claim(tmp_path / "run", fit=True).release()


def test_lock_of_a_killed_process_is_not_stale(tmp_path: Path) -> None:
    """A holder that died without cleaning up (SIGKILL) leaves ``.lock`` behind but no lock: the next claim works."""
    folder = tmp_path / "run"
    pid = os.fork()
    if pid == 0:  # the child takes the folder and dies without releasing it
        try:
            RunFolder.claim(folder, fit=True)
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    assert f"pid {pid} on " in (folder / LOCK_FILE).read_text()
    RunFolder.claim(folder, fit=True).release()


def test_lock_held_by_another_open_file_refuses(tmp_path: Path) -> None:
    """The lock is ``flock`` on ``.lock``: any holder of it (here a plain descriptor) keeps others out."""
    folder = tmp_path / "run"
    folder.mkdir()
    fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(DataError, match="is in use by another textseg command"):
            RunFolder.claim(folder, fit=True)
    finally:
        os.close(fd)
    RunFolder.claim(folder, fit=True).release()


def test_release_removes_an_empty_folder_it_created(tmp_path: Path) -> None:
    RunFolder.claim(tmp_path / "new", fit=True).release()
    assert not (tmp_path / "new").exists()
    (tmp_path / "kept").mkdir()
    RunFolder.claim(tmp_path / "kept", fit=True).release()
    assert (tmp_path / "kept").is_dir()


# ------------------------------------------------------------------------------------------------ earlier runs


def test_fit_into_a_used_folder_is_refused_naming_it(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    _fill(folder, "config.yaml", "metrics.csv", "checkpoints/best.ckpt")
    assert earlier_run(folder) == ["config.yaml", "metrics.csv", "checkpoints/ (best.ckpt)"]
    with pytest.raises(DataError, match=rf"run dir {folder} already holds a run \(config.yaml, metrics.csv, ") as info:
        RunFolder.claim(folder, fit=True)
    assert "--run_dir_exists new_version" in str(info.value) and "\n" not in str(info.value)
    assert not (folder / LOCK_FILE).exists()  # released on refusal
    RunFolder.claim(folder, fit=False).release()  # validate/test/predict add files to it
    RunFolder.claim(folder, fit=True, resume_from="last").release()
    RunFolder.claim(folder, fit=True, resume_from=str(folder / "checkpoints" / "best.ckpt")).release()
    with pytest.raises(DataError, match="is not one of its checkpoints"):
        RunFolder.claim(folder, fit=True, resume_from=str(tmp_path / "other.ckpt"))


def test_new_version_and_overwrite(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    _fill(folder, "config.yaml", "split.json", "checkpoints/best.ckpt", "predictions/masks/a.png")
    (tmp_path / "run_v2").mkdir()  # taken, even empty
    fresh = RunFolder.claim(folder, fit=True, exists="new_version")
    assert fresh.path == tmp_path / "run_v3" and (fresh.path / LOCK_FILE).is_file()
    fresh.release()
    kept = RunFolder.claim(folder, fit=True, exists="overwrite")
    assert kept.path == folder and earlier_run(folder) == []
    assert (folder / "predictions" / "masks" / "a.png").is_file()  # not a record of the fit
    with pytest.raises(DataError, match="in use by another textseg command"):  # never deletes a running run's files
        RunFolder.claim(folder, fit=True, exists="overwrite")
    beside = RunFolder.claim(folder, fit=True, exists="new_version")
    assert beside.path == tmp_path / "run_v3"  # free again: the first run_v3 was released empty, and removed
    beside.release()
    (folder / "split.json").write_text("the new run's")
    kept.release()  # the new run never trained: the earlier run is put back, over what the new run wrote
    assert sorted(earlier_run(folder)) == ["checkpoints/ (best.ckpt)", "config.yaml", "split.json"]
    assert (folder / "split.json").read_text() == "x" and not (folder / ".overwritten").exists()
    replaced = RunFolder.claim(folder, fit=True, exists="overwrite")
    replaced.commit()  # the new run started training: the earlier run goes for good
    replaced.release()
    assert earlier_run(folder) == [] and not (folder / ".overwritten").exists()


def test_run_dir_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("")
    with pytest.raises(RunFileError, match=rf"^cannot write {tmp_path / 'afile'}: Not a directory$"):
        RunFolder.claim(tmp_path / "afile", fit=True)
    with pytest.raises(RunFileError, match=r"^cannot write .*afile/sub: Not a directory$"):
        RunFolder.claim(tmp_path / "afile" / "sub", fit=True)


# -------------------------------------------------------------------------------------------------- versions


def test_reserved_versions_never_collide(tmp_path: Path) -> None:
    """Runs started at once (threads racing here) get distinct ``version_N`` folders, numbered as Lightning does."""
    root = tmp_path / "runs" / "demo"
    (root / "version_4").mkdir(parents=True)
    (root / "version_x").mkdir()
    start = threading.Barrier(8)

    def reserve() -> int:
        start.wait()
        return reserve_version(root)

    with ThreadPoolExecutor(8) as pool:
        got = sorted(pool.map(lambda _: reserve(), range(8)))
    assert got == list(range(5, 13))
    assert reserve_version(root) == 13 and (root / "version_13").is_dir()


# ------------------------------------------------------------------------------------------------ atomic writes


def _full_disk(monkeypatch: pytest.MonkeyPatch, after: int) -> None:
    """Make files opened by :mod:`textseg.engine.runfiles` (``atomic_write``) accept ``after`` bytes, then ENOSPC."""
    real_open = open

    class Full:
        def __init__(self, file: Any) -> None:
            self.file = file

        def write(self, data: Any) -> int:
            self.file.write(bytes(data)[:after])
            self.file.flush()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def __getattr__(self, name: str) -> Any:
            return getattr(self.file, name)

        def __enter__(self) -> Full:
            return self

        def __exit__(self, *exc: object) -> None:
            self.file.close()

    monkeypatch.setattr(runfiles, "open", lambda *a, **k: Full(real_open(*a, **k)), raising=False)


def test_checkpoint_on_a_full_disk_leaves_the_earlier_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ENOSPC mid-save: one ``RunFileError`` naming the file, no partial file, the earlier checkpoint intact."""
    io = AtomicCheckpointIO()
    path = tmp_path / "checkpoints" / "best.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}}, path)
    before = path.read_bytes()
    _full_disk(monkeypatch, after=100)
    with pytest.raises(RunFileError, match=rf"^cannot write {path}: No space left on device$"):
        io.save_checkpoint({"state_dict": {"w": torch.zeros(1000)}}, path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["best.ckpt"]
    monkeypatch.undo()
    loaded = io.load_checkpoint(path, weights_only=True)
    assert torch.equal(loaded["state_dict"]["w"], torch.ones(3))


def test_test_metrics_replaced_atomically_and_said(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    first = write_test_metrics(tmp_path, "M", {}, {}, {"test_dice": 0.5})
    assert "replaced" not in caplog.text
    with caplog.at_level("INFO"):
        write_test_metrics(tmp_path, "M", {}, {}, {"test_dice": 0.75})
    assert f"{first} replaced by this test's metrics" in caplog.text
    assert json.loads((tmp_path / METRICS_FILE).read_text())["metrics"] == {"test_dice": 0.75}
    assert sorted(p.name for p in tmp_path.iterdir()) == [METRICS_FILE]


def test_atomic_write_errors_name_the_file(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("")
    with pytest.raises(RunFileError, match=r"^cannot write .*afile/x.json: Not a directory$"):
        atomic_write(tmp_path / "afile" / "x.json", "{}")


def test_write_error_picks_run_file_errors_only(tmp_path: Path) -> None:
    """Inside the run folder, or a full disk anywhere: a run-file error; a missing input file is not one."""
    inside = PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "run" / "metrics.csv"))
    assert str(write_error(inside, [tmp_path / "run"])) == f"cannot write {tmp_path}/run/metrics.csv: Permission denied"
    full = OSError(errno.ENOSPC, "No space left on device", "/elsewhere/x")
    assert str(write_error(full, [])) == "cannot write /elsewhere/x: No space left on device"
    assert write_error(FileNotFoundError(errno.ENOENT, "No such file", "/data/x.png"), [tmp_path / "run"]) is None
    assert write_error(ValueError("x"), [tmp_path]) is None


def test_special_checkpoint_values() -> None:
    """The values Lightning resolves itself, told apart from files whose names start the same way."""
    for value in ("best", "last", "hpc", "registry", "registry:me/model:v2", "REGISTRY:x"):
        assert runfiles.is_special_ckpt(value), value
    for value in ("last-v1.ckpt", "best.ckpt", "runs/x/checkpoints/last.ckpt", "hpc_ckpt_1.ckpt", "registry.ckpt"):
        assert not runfiles.is_special_ckpt(value), value
