"""The preflight: every missing piece of a run reported at once, before anything is built."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from fakedata import make_qata_tree

from textseg.cli.preflight import check_run, preflight
from textseg.errors import DataError

HUB_ID = "someone/not-a-cached-model"


def _config(root: Path | str, **init: object) -> dict[str, object]:
    model = {"class_path": "textseg.SemiMedRefModule", "init_args": {"text_encoder": "tiny", "vision_encoder": "tiny"}}
    model["init_args"].update(init)  # type: ignore[attr-defined]
    return {"data": {"dataset": "qata", "root": str(root)}, "model": model}


def test_everything_missing_is_reported_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config = _config(
        tmp_path / "nowhere",
        text_encoder=HUB_ID,
        vision_encoder="./encoders/convnext",
        vision_checkpoint=str(tmp_path / "convnext_tiny_22k_224.pth"),
    )
    problems = preflight(config, "fit")
    assert len(problems) == 4
    assert problems[0].startswith(f"data root {tmp_path / 'nowhere'} for qata does not exist (--data.root)")
    assert f"text encoder {HUB_ID!r} is not in the Hugging Face cache" in problems[1]
    assert "huggingface-cli download" in problems[1]
    assert "vision encoder folder ./encoders/convnext does not exist" in problems[2]
    assert "vision checkpoint" in problems[3] and "set it to null" in problems[3]
    with pytest.raises(DataError, match="4 things this run needs are missing:\n  - data root"):
        check_run(config, "fit")


def test_dataset_one_folder_down_is_named(tmp_path: Path) -> None:
    make_qata_tree(tmp_path / "download" / "QaTa-COV19-v2", "sgseg", n_train=2, n_val=1, n_test=1, size=32, seed=0)
    (tmp_path / "download" / "notes").mkdir()
    problems = preflight(_config(tmp_path / "download"), "test")
    assert problems == [
        f"data root {tmp_path / 'download'} does not hold qata itself, but {tmp_path / 'download' / 'QaTa-COV19-v2'} "
        f"does: pass --data.root {tmp_path / 'download' / 'QaTa-COV19-v2'}"
    ]
    assert preflight(_config(tmp_path / "download" / "QaTa-COV19-v2"), "test") == []
    shutil.rmtree(tmp_path / "download" / "QaTa-COV19-v2")
    (problem,) = preflight(_config(tmp_path / "download"), "test")
    assert problem.startswith("unknown QaTa-COV19 layout at") and "textseg data check" in problem


def test_nothing_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    synthetic = {"data": {"dataset": "synthetic", "root": str(tmp_path / "to_be_generated")}}
    assert preflight(synthetic, "fit") == []  # generated when missing
    online = _config(tmp_path / "nowhere", text_encoder=HUB_ID)
    assert len(preflight(online, "fit")) == 1  # online, a Hub id may be downloaded: only the root is missing
    predict = {"data": {"dataset": "qata", "root": "nowhere", "predict_images": str(tmp_path / "p")}}
    expected = f"predict image folder {tmp_path / 'p'} does not exist (--data.predict_images)"
    assert preflight(predict, "predict") == [expected]
    missing = {**predict, "ckpt_path": str(tmp_path / "best.ckpt")}
    ckpt = f"checkpoint {tmp_path / 'best.ckpt'} not found (--ckpt_path): give a .ckpt file, or last / best"
    assert preflight(missing, "predict") == [expected, ckpt]
    assert preflight({**predict, "ckpt_path": "last"}, "predict") == [expected]  # resolved by Lightning later


def test_fit_reports_everything_before_building(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The real-data config on a machine without the data, the weights or the network: one error, three problems."""
    from textseg.cli.main import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)  # the config's relative vision checkpoint path does not exist here
    repo = Path(__file__).resolve().parents[2]
    args = ["fit", "--config", str(repo / "configs" / "semimedref_mmiunet.yaml"), "--data.root", str(tmp_path / "no")]
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--trainer.default_root_dir", str(tmp_path / "runs")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "textseg: error: 3 things this run needs are missing:" in err
    assert f"data root {tmp_path / 'no'} for qata does not exist" in err
    assert "'microsoft/BiomedVLP-CXR-BERT-specialized' is not in the Hugging Face cache" in err
    assert "vision checkpoint pretrained/convnext_tiny_22k_224.pth does not exist" in err
    assert not (tmp_path / "runs").exists()  # nothing was built or written
