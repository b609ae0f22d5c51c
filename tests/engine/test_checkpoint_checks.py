"""Checkpoints are checked before use (issue 27, part 2): against the configured network, and for non-finite weights.

* ``textseg test --ckpt_path GUIDEDECODER.ckpt --model.init_args.backbone mmiunet`` used to exit 0 and quietly test
  the checkpoint's GuideDecoder (LightningCLI builds the model from the checkpoint's arguments); now it stops with one
  line naming the setting, both values and what to do. Settings that only a ``--config`` sets (the same config
  without the run's overrides) are replaced by the checkpoint's with a warning, so ``test --config C --ckpt_path
  best.ckpt`` keeps working.
* Resuming (``--ckpt_path last``) with a configured network that differs from the checkpoint's is refused too (the
  module's ``on_load_checkpoint``: there LightningCLI keeps the configured model).
* A checkpoint with NaN/inf weights used to test with exit 0 (Dice 0.0, loss NaN); now ``test``, the ``Segmenter``
  and :func:`~textseg.engine.checkpointing.read_checkpoint` refuse it, naming the tensors and how many.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from tinyrun import tiny_args

from textseg.cli.main import main
from textseg.engine import checkpointing
from textseg.errors import DataError

REPO = Path(__file__).resolve().parents[2]
EXIT_BAD_INPUT = 2


def _args(root: Path) -> list[str]:
    """The demo supervised config, tiny: a GuideDecoder (the config says MMI-UNet) on a small synthetic tree."""
    return [
        "--config", str(REPO / "configs" / "demo_supervised.yaml"),
        "--data.root", str(root),
        *tiny_args(max_epochs=1, train_batches=2),
        "--trainer.limit_val_batches", "1",
        "--trainer.limit_test_batches", "1",
        "--model.init_args.backbone", "guidedecoder",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A one-epoch GuideDecoder run; its arguments, folder and ``best.ckpt``."""
    work = tmp_path_factory.mktemp("ckpt_checks")
    args, run_dir = _args(work / "synthetic"), work / "run"
    main(["fit", *args, "--run_dir", str(run_dir), "--test_after_fit", "false"])
    ckpt = run_dir / "checkpoints" / "best.ckpt"
    assert torch.load(ckpt, weights_only=True)["hyper_parameters"]["backbone"] == "guidedecoder"
    return {"work": work, "args": args, "run": run_dir, "ckpt": ckpt}


def _refused(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run ``textseg ARGS``; assert it exits with the bad-input code; return its error line."""
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == EXIT_BAD_INPUT
    return capsys.readouterr().err.strip().splitlines()[-1]


def _nan_copy(ckpt: Path, out: Path, names: list[str] | None = None) -> Path:
    """``ckpt`` with every floating-point weight (or those in ``names``) set to NaN, saved as ``out``."""
    state = torch.load(ckpt, weights_only=True)
    for key, value in state["state_dict"].items():
        if value.is_floating_point() and (names is None or key in names):
            value.fill_(float("nan"))
    torch.save(state, out)
    return out


# ------------------------------------------------------------------------------------------------- the network


def test_refuse_other_network_names_each_setting() -> None:
    ckpt = {"hyper_parameters": {"backbone": "guidedecoder", "project_dim": 16, "lr": 1e-3, "text_encoder": "tiny"}}
    configured = {"backbone": "mmiunet", "project_dim": 64, "lr": 2e-3, "text_encoder": "tiny"}
    with pytest.raises(DataError) as info:
        checkpointing.refuse_other_network(ckpt, configured, "checkpoint x.ckpt")
    message = str(info.value)
    assert message.startswith("checkpoint x.ckpt was trained with backbone='guidedecoder', project_dim=16")
    assert "the configuration says backbone='mmiunet', project_dim=64" in message
    assert "lr" not in message and "text_encoder" not in message  # not network-defining / equal
    # only the typed settings are refused; the others are returned
    with pytest.raises(DataError, match="backbone='guidedecoder'"):
        checkpointing.refuse_other_network(ckpt, configured, "checkpoint x.ckpt", keys={"backbone"})
    assert checkpointing.refuse_other_network(ckpt, configured, "c", keys={"lr"}) == {
        "backbone": ("guidedecoder", "mmiunet"),
        "project_dim": (16, 64),
    }


def test_test_with_another_backbone_is_refused(trained: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    """A GuideDecoder checkpoint, ``--model.init_args.backbone mmiunet``: exit 2 naming both, nothing run."""
    out = trained["work"] / "test_mmiunet"
    line = _refused(
        ["test", *trained["args"], "--model.init_args.backbone", "mmiunet", "--ckpt_path", str(trained["ckpt"]),
         "--run_dir", str(out)],
        capsys,
    )  # fmt: skip
    assert line.startswith(f"textseg: error: checkpoint {trained['ckpt']} was trained with backbone='guidedecoder'")
    assert "the configuration says backbone='mmiunet'" in line and "config.yaml" in line
    assert not (out / "test_metrics.json").exists()


def test_test_with_the_same_config_still_works(trained: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    """``test --config C --ckpt_path best.ckpt`` without the typed backbone: the checkpoint's network, a warning."""
    out = trained["work"] / "test_same"
    args = [a for a in trained["args"] if a not in ("--model.init_args.backbone", "guidedecoder")]
    with pytest.warns(UserWarning, match=r"trained with backbone='guidedecoder' \(configured: 'mmiunet'\)"):
        main(["test", *args, "--ckpt_path", str(trained["ckpt"]), "--run_dir", str(out)])
    assert (out / "test_metrics.json").is_file()


def test_resume_with_another_network_is_refused(
    trained: dict[str, Any], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """``fit --ckpt_path last`` keeps the configured model: one whose settings differ is refused on load."""
    line = _refused(
        ["fit", *trained["args"], "--model.init_args.use_padding_mask", "false", "--trainer.max_epochs", "2",
         "--run_dir", str(trained["run"]), "--ckpt_path", "last"],
        capsys,
    )  # fmt: skip
    assert "was trained with use_padding_mask=True" in line and "use_padding_mask=False" in line


# ----------------------------------------------------------------------------------------------- finite weights


def test_read_checkpoint_refuses_nonfinite_weights(tmp_path: Path) -> None:
    state = {f"net.layer{i}.weight": torch.ones(3) for i in range(5)} | {"net.count": torch.zeros((), dtype=torch.long)}
    state["net.layer1.weight"][0] = float("nan")
    state["net.layer3.weight"][2] = float("inf")
    path = tmp_path / "bad.ckpt"
    torch.save({"state_dict": state}, path)
    assert checkpointing.nonfinite_weights(state) == ["net.layer1.weight", "net.layer3.weight"]
    with pytest.raises(DataError) as info:
        checkpointing.read_checkpoint(path)
    assert str(info.value).startswith(f"checkpoint {path} has NaN/inf weights in 2 of 6 tensors")
    assert "net.layer1.weight, net.layer3.weight" in str(info.value)
    state["net.layer1.weight"][0] = state["net.layer3.weight"][2] = 0.0
    torch.save({"state_dict": state}, path)
    assert checkpointing.read_checkpoint(path)["state_dict"].keys() == state.keys()


def test_test_refuses_a_nan_checkpoint(trained: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    """All-NaN weights: exit 2 naming the first tensors and the count (was: exit 0, Dice 0.0, loss NaN)."""
    bad = _nan_copy(trained["ckpt"], trained["work"] / "nan.ckpt")
    state = torch.load(bad, weights_only=True)["state_dict"]
    floats = [k for k, v in state.items() if v.is_floating_point()]
    line = _refused(
        ["test", *trained["args"], "--ckpt_path", str(bad), "--run_dir", str(trained["work"] / "t")], capsys
    )
    assert line.startswith(f"textseg: error: checkpoint {bad} has NaN/inf weights in {len(floats)} of {len(state)} ")
    assert f"({', '.join(floats[:3])}, ...)" in line


def test_segmenter_refuses_a_nan_checkpoint(trained: dict[str, Any]) -> None:
    from textseg.inference.segmenter import Segmenter

    state = torch.load(trained["ckpt"], weights_only=True)["state_dict"]
    name = next(k for k, v in state.items() if k.startswith("net.") and v.is_floating_point())
    bad = _nan_copy(trained["ckpt"], trained["work"] / "one_nan.ckpt", [name])
    with pytest.raises(DataError, match=rf"NaN/inf weights in 1 of \d+ tensors \({name}\)"):
        Segmenter.from_pretrained(bad, device="cpu")
