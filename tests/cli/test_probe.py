"""``textseg probe`` (issue 24, part 3): does the model read the text?

A tiny Semi-MedRef model is trained once on fake data (``configs/demo_semimedref.yaml``, tiny encoders, 2 epochs, test
after fit); the probe is run on its best checkpoint and compared with the run's ``test_metrics.json``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from textseg.cli.main import main
from textseg.cli.probe import NO_TEXT, PROBE_FILE, VARIANTS, derangement, output_dir, variant_texts
from textseg.engine.runfiles import METRICS_FILE
from textseg.models.encoders import TextEncoder
from textseg.ops.text_aug import swap_left_right, swap_upper_lower

REPO = Path(__file__).resolve().parents[2]
N_TEST = 8


def _data_args(root: Path) -> list[str]:
    """The config and the tiny overrides shared by ``fit`` and ``probe``."""
    return [
        "--config", str(REPO / "configs" / "demo_semimedref.yaml"),
        "--data.root", str(root),
        "--data.dataset_options", f"{{synthetic: {{n_train: 12, n_val: 4, n_test: {N_TEST}, image_size: 64}}}}",
        "--data.image_size", "64",
        "--data.batch_size", "2",
        "--data.unlabeled_batch_size", "2",
        "--data.eval_batch_size", "3",  # 8 images in batches of 3, 3, 2: the split is not a multiple of the batch
        "--data.num_workers", "0",
        "--model.init_args.vision_encoder", "tiny",
        "--model.init_args.text_encoder", "tiny",
        "--model.init_args.project_dim", "16",
        "--trainer.accelerator", "cpu",
        "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false",
    ]  # fmt: skip


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A tiny run (fit + test of the best checkpoint): its folder, checkpoint and the shared arguments."""
    work = tmp_path_factory.mktemp("probe")
    args = _data_args(work / "synthetic")
    run = work / "run"
    fit = ["fit", *args, "--trainer.max_epochs", "2", "--trainer.limit_train_batches", "2", "--run_dir", str(run)]
    main([*fit, "--test_after_fit", "true", "--seed", "7"])
    ckpt = run / "checkpoints" / "best.ckpt"
    assert ckpt.is_file() and (run / METRICS_FILE).is_file()
    return {"work": work, "run": run, "ckpt": ckpt, "args": args}


@pytest.fixture(scope="session")
def probed(trained: dict[str, Any]) -> dict[str, Any]:
    """``textseg probe`` on the run's best checkpoint (default output folder); the run files before it."""
    run = trained["run"]
    before = {name: (run / name).read_bytes() for name in ("config.yaml", METRICS_FILE)}
    main(["probe", *trained["args"], "--ckpt_path", str(trained["ckpt"])])
    return {"result": json.loads((run / PROBE_FILE).read_text()), "before": before}


# ------------------------------------------------------------------------------------------------- pure parts


@pytest.mark.parametrize("n", [2, 3, 5, 8, 50])
def test_derangement_has_no_fixed_point_and_is_seeded(n: int) -> None:
    perm = derangement(n, seed=42)
    assert sorted(perm) == list(range(n))
    assert all(p != i for i, p in enumerate(perm))
    assert derangement(n, seed=42) == perm  # same seed, same permutation
    drawn = {tuple(derangement(n, seed=s)) for s in range(20)}
    if n in (2, 3):  # every derangement is reachable: n = 2 has one, n = 3 two
        assert len(drawn) == n - 1
    if n >= 8:  # another seed, another permutation (for small n, two seeds can draw the same one: 44 for n = 5)
        assert derangement(n, seed=43) != perm
        assert len(drawn) == 20


def test_derangement_needs_two_items() -> None:
    from textseg.errors import DataError

    for n in (0, 1):
        with pytest.raises(DataError, match="at least 2 test images"):
            derangement(n, seed=0)


def test_variant_texts() -> None:
    texts = ["upper left lung.", "lower right lung.", "upper left lung."]  # two equal strings: still a derangement
    perm = derangement(len(texts), seed=0)
    variants = variant_texts(texts, perm)
    assert list(variants) == list(VARIANTS)
    assert variants["own"] == texts
    assert variants["shuffled"] == [texts[j] for j in perm]
    assert variants["left_right_swapped"] == ["upper right lung.", "lower left lung.", "upper right lung."]
    assert (
        variants["upper_lower_swapped"]
        == [swap_upper_lower(t) for t in texts]
        == [
            "lower left lung.",
            "upper right lung.",
            "lower left lung.",
        ]
    )
    assert variants["left_right_swapped"] == [swap_left_right(t) for t in texts]
    assert variants["no_text"] == [NO_TEXT] * 3 and NO_TEXT == ""


def test_no_text_is_cls_sep() -> None:
    encoder = TextEncoder("tiny")
    tok = encoder.tokenizer
    enc = encoder.tokenize([NO_TEXT], on_device=False)
    ids = enc["input_ids"][0].tolist()
    assert ids[:2] == [tok.cls_token_id, tok.sep_token_id]
    assert set(ids[2:]) == {tok.pad_token_id}
    assert enc["attention_mask"][0].tolist()[:3] == [1, 1, 0]


def test_output_dir(tmp_path: Path) -> None:
    assert output_dir(tmp_path / "run" / "checkpoints" / "best.ckpt") == tmp_path / "run"
    assert output_dir(tmp_path / "weights" / "model.ckpt") == tmp_path / "weights"
    assert output_dir(tmp_path / "run" / "checkpoints" / "best.ckpt", tmp_path / "out") == tmp_path / "out"


# ---------------------------------------------------------------------------------------------- the command


def test_probe_writes_json_next_to_the_run(trained: dict[str, Any], probed: dict[str, Any]) -> None:
    result, run = probed["result"], trained["run"]
    assert set(VARIANTS) <= set(result)
    for name in VARIANTS:
        values = result[name]
        for metric in ("dice", "dice_per_image", "iou", "iou_per_image"):
            assert 0.0 <= values[metric] <= 1.0, (name, metric)
        assert set(values["drop"]) == {"dice", "dice_pct", "dice_per_image", "dice_per_image_pct"}
        assert values["drop"]["dice"] == pytest.approx(result["own"]["dice"] - values["dice"])
    assert result["own"]["drop"]["dice"] == 0.0
    assert result["checkpoint"] == str(trained["ckpt"]) and result["n_images"] == N_TEST
    assert result["config"] == [str(REPO / "configs" / "demo_semimedref.yaml")]
    assert result["seed"] == 42  # no --seed: the data seed of the config
    assert result["permutation"] == derangement(N_TEST, 42)
    assert result["method"] == "SemiMedRefModule" and result["no_text_prompt"] == ""
    # `own` is what `textseg test` measured on the same checkpoint (test after fit of best.ckpt).
    tested = json.loads((run / METRICS_FILE).read_text())["metrics"]
    assert result["own"]["dice"] == pytest.approx(tested["test_dice"], abs=1e-6)
    assert result["own"]["dice_per_image"] == pytest.approx(tested["test_dice_per_image"], abs=1e-6)
    assert result["own"]["iou"] == pytest.approx(tested["test_iou"], abs=1e-6)
    # The probe runs no Trainer loop: the run's config and test metrics are untouched.
    assert {name: (run / name).read_bytes() for name in probed["before"]} == probed["before"]


def test_probe_seeded_shuffle_and_out(
    trained: dict[str, Any], probed: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "probe_out"
    main(["probe", *trained["args"], "--ckpt_path", str(trained["ckpt"]), "--out", str(out)])
    again = json.loads((out / PROBE_FILE).read_text())
    first = probed["result"]
    assert again["permutation"] == first["permutation"]
    assert again["shuffled"] == first["shuffled"]  # same seed: the same shuffle, the same scores
    assert {k: again[k] for k in VARIANTS} == {k: first[k] for k in VARIANTS}
    printed = capsys.readouterr().out
    assert all(name in printed for name in VARIANTS) and "drop %" in printed and str(out / PROBE_FILE) in printed


def test_probe_seed_changes_the_shuffle(trained: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "seed3"
    main(["probe", *trained["args"], "--ckpt_path", str(trained["ckpt"]), "--out", str(out), "--seed", "3"])
    result = json.loads((out / PROBE_FILE).read_text())
    assert result["seed"] == 3 and result["permutation"] == derangement(N_TEST, 3) != derangement(N_TEST, 42)


def test_probe_missing_checkpoint(trained: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    gone = trained["work"] / "no_such.ckpt"
    with pytest.raises(SystemExit) as exc:
        main(["probe", *trained["args"], "--ckpt_path", str(gone)])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"textseg: error: checkpoint file not found: {gone}"
    assert not any("Traceback" in line for line in err)
    with pytest.raises(SystemExit) as exc:
        main(["probe", *trained["args"]])
    assert exc.value.code == 2
    assert (
        capsys.readouterr().err.strip().splitlines()[-1].startswith("textseg: error: textseg probe needs --ckpt_path")
    )


def test_probe_refuses_checkpoint_of_other_method(
    trained: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [
        "probe",
        "--model=textseg.SupervisedModule",
        "--model.init_args.vision_encoder=tiny",
        "--model.init_args.text_encoder=tiny",
        f"--data.root={trained['work'] / 'synthetic'}",
        "--data.image_size=64",
        "--trainer.accelerator=cpu",
        f"--ckpt_path={trained['ckpt']}",
        f"--out={tmp_path}",
    ]
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("textseg: error: ") and "was saved by SemiMedRefModule" in line
    assert not (tmp_path / PROBE_FILE).exists()
