"""Bad input, end to end through the CLI (issue 7, "Reliability").

A catalogue of broken inputs drives ``textseg fit/test/predict``; every one must end with a non-zero exit code and a
message on stderr that names the problem (file or value, and a key phrase), without a traceback, and without
writing anything: each case runs with ``--run_dir`` (and ``predict`` with a
:class:`~textseg.engine.predictions.MaskWriter`) pointing at fresh folders that must hold no file afterwards (empty
folders made by the logger are tolerated). Broken trees are copies of the tiny good trees of ``conftest.py`` with one
thing broken. Most cases run in-process (``textseg.cli.main.main``); two run through ``python -m textseg`` to cover the
console path. Two more tests check that a failing run leaves a good earlier run directory and a good prediction folder
byte-identical.

A case whose fix is missing can be marked as a strict expected failure with a reason starting with ``GAP`` (none is
now).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from fakedata import MOSMED_TEXT_NAMES, write_png
from PIL import Image

from textseg.cli.main import main

#: Exit code of bad input: jsonargparse usage errors and :class:`~textseg.errors.DataError` alike.
EXIT_BAD_INPUT = 2
#: Prefix of the one-line message of a :class:`~textseg.errors.DataError` caught by the CLI.
DATA_ERROR_PREFIX = "textseg: error: "
#: A referring text far beyond the text encoders' ``max_length`` of 24 tokens: 65 words.
LONG_TEXT = " ".join(["Bilateral pulmonary infection, two infected areas, upper left lung and lower right lung."] * 5)


# --------------------------------------------------------------------------------------------------- arguments


def tiny_args(command: str, dataset: str, root: Path | str, work: Path, model: str = "SupervisedModule") -> list[str]:
    """Arguments of a tiny CPU run writing into ``work/run`` (and, for ``predict``, masks into ``work/out``)."""
    args = [
        command,
        f"--model=textseg.{model}",
        "--model.init_args.vision_encoder=tiny",
        "--model.init_args.text_encoder=tiny",
        "--model.init_args.project_dim=16",
        f"--data.dataset={dataset}",
        f"--data.root={root}",
        "--data.image_size=64",
        "--data.batch_size=2",
        "--data.unlabeled_batch_size=2",
        "--data.eval_batch_size=2",
        "--data.num_workers=0",
        f"--data.use_unlabeled={'true' if model == 'SemiMedRefModule' else 'false'}",
        "--trainer.accelerator=cpu",
        "--trainer.max_epochs=1",
        "--trainer.limit_train_batches=1",
        "--trainer.limit_val_batches=1",
        "--trainer.limit_test_batches=1",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        f"--run_dir={work / 'run'}",
    ]
    if command == "predict":
        args += [
            "--trainer.callbacks+=textseg.engine.predictions.MaskWriter",
            f"--trainer.callbacks.output_dir={work / 'out'}",
        ]
    return args


def run_main(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int | str | None, str]:
    """Run ``textseg ARGS`` in-process; return the exit code and stderr (the run must end with SystemExit)."""
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    return exit_info.value.code, capsys.readouterr().err


def files_under(folder: Path) -> dict[str, str]:
    """``relative path -> sha256`` of every file below ``folder`` (empty if it does not exist)."""
    if not folder.exists():
        return {}
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


# ----------------------------------------------------------------------------------------------------- breakers


@dataclass
class Ctx:
    """What a breaker works on.

    Attributes:
        root: The case's own copy of the good dataset tree (break it in place).
        work: The case's scratch folder (config files, run and output folders).
        ckpt: A checkpoint of a finished tiny supervised run.
    """

    root: Path
    work: Path
    ckpt: Path


@dataclass
class Broken:
    """What a broken input changes in the command line and what the message must contain.

    Attributes:
        expect: Fragments that must all appear in stderr (the file or value, and a key phrase).
        args: Extra command-line arguments (appended; later values win).
        model: Method class (``textseg.<model>``).
        tolerated: Files the failed run may leave in its (fresh) run directory.
    """

    expect: list[str]
    args: list[str] = field(default_factory=list)
    model: str = "SupervisedModule"
    tolerated: tuple[str, ...] = ()


def _first(folder: Path, index: int = 0) -> Path:
    return sorted(folder.glob("*.png"))[index]


def _mosmed_csv(root: Path, split: str) -> Path:
    return root / MOSMED_TEXT_NAMES[split]


def _set_caption(root: Path, split_key: str, index: int, caption: str) -> str:
    """Rewrite one caption of a QaTa ``annotation.json``; return the entry's mask name."""
    path = root / "annotation.json"
    data = json.loads(path.read_text())
    data[split_key][index]["caption"] = caption
    path.write_text(json.dumps(data))
    return str(data[split_key][index]["image_path"])


def unknown_key(ctx: Ctx) -> Broken:
    config = ctx.work / "typo.yaml"
    config.write_text("data:\n  labled_ratio: 0.5\n")
    return Broken(["labled_ratio"], ["--config", str(config)])


def wrong_type(ctx: Ctx) -> Broken:
    config = ctx.work / "wrong_type.yaml"
    config.write_text("data:\n  batch_size: two\n")
    return Broken(["batch_size", "two"], ["--config", str(config)])


def missing_root(ctx: Ctx) -> Broken:
    gone = ctx.work / "no_such_dataset"
    return Broken([str(gone), "does not exist"], [f"--data.root={gone}"])


def corrupt_png(ctx: Ctx) -> Broken:
    image = _first(ctx.root / "test" / "images", 1)
    image.write_bytes(b"this is not a PNG file\n" * 40)
    return Broken([str(image), "unreadable or corrupt"])


def truncated_png(ctx: Ctx) -> Broken:
    name = _mosmed_csv(ctx.root, "train").read_text().splitlines()[4].split(";")[0]
    mask = ctx.root / "masks" / name  # a train slice: `fit` reads the train and val files
    data = mask.read_bytes()
    mask.write_bytes(data[: len(data) // 2])
    return Broken([str(mask), "unreadable or corrupt", "truncated"])


def truncated_csv(ctx: Ctx) -> Broken:
    path = _mosmed_csv(ctx.root, "train")
    lines = path.read_text().splitlines(keepends=True)
    cut = sum(len(line) for line in lines[:5]) + len(lines[5]) * 2 // 3  # inside the text of the 5th data row
    path.write_text("".join(lines)[:cut])
    return Broken([path.name, "has no text row", "truncated"])


def truncated_csv_in_name(ctx: Ctx) -> Broken:
    path = _mosmed_csv(ctx.root, "test")
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:3]) + lines[3][:7])  # ends inside the image name of the 3rd data row
    return Broken([path.name, "line 4", "1 fields for 2 columns", "truncated"])


def comma_for_semicolon(ctx: Ctx) -> Broken:
    path = _mosmed_csv(ctx.root, "train")
    path.write_text(path.read_text().replace(";", ","))  # LViT's unquoted texts contain commas
    return Broken([path.name, "line 2", "fields for 2 columns", "quoted"])


def comma_rows_semicolon_header(ctx: Ctx) -> Broken:
    path = _mosmed_csv(ctx.root, "train")
    header, rest = path.read_text().split("\n", 1)
    path.write_text(header + "\n" + rest.replace(";", ",", 1))  # one row written with a comma
    return Broken([path.name, "line 2", "1 fields for 2 columns", "separated by ','"])


def semicolon_rows_comma_header(ctx: Ctx) -> Broken:
    path = _mosmed_csv(ctx.root, "val")
    header, rest = path.read_text().split("\n", 1)
    path.write_text(header.replace(";", ",") + "\n" + rest)
    return Broken([path.name, "line 2", "';'"])


def duplicate_id(ctx: Ctx) -> Broken:
    train, val = _mosmed_csv(ctx.root, "train"), _mosmed_csv(ctx.root, "val")
    row = train.read_text().splitlines()[1]
    val.write_text(val.read_text() + row + "\n")  # a train slice also listed in val: a leak
    return Broken(["duplicate", row.split(";")[0], val.name])


def duplicate_annotation_entry(ctx: Ctx) -> Broken:
    path = ctx.root / "annotation.json"
    data = json.loads(path.read_text())
    data["test"].append(dict(data["test"][0]))
    path.write_text(json.dumps(data))
    return Broken(["duplicate", str(data["test"][0]["image_path"])])


def size_mismatch(ctx: Ctx) -> Broken:
    mask = _first(ctx.root / "test" / "masks", 2)
    write_png(mask, np.zeros((32, 32), np.uint8))
    return Broken(["size mismatch", str(mask), "64x64", "32x32"])


def non_binary_mask(ctx: Ctx) -> Broken:
    mask = _first(ctx.root / "valid" / "masks", 0)
    values = np.zeros((64, 64), np.uint8)
    values[:8], values[8:16], values[16:24] = 1, 128, 255
    write_png(mask, values)
    return Broken([str(mask), "not binary", "[0, 1, 128, 255]"])


def missing_mask(ctx: Ctx) -> Broken:
    mask = _first(ctx.root / "train" / "masks", 5)
    mask.unlink()
    return Broken(["has no mask", mask.name])


def long_text(ctx: Ctx) -> Broken:
    path = _mosmed_csv(ctx.root, "train")
    lines = path.read_text().splitlines()
    name = lines[3].split(";")[0]
    lines[3] = f"{name};{LONG_TEXT}"
    path.write_text("\n".join(lines) + "\n")
    return Broken(["tokens", "max_length"])


def empty_text(ctx: Ctx) -> Broken:
    path = _mosmed_csv(ctx.root, "val")
    lines = path.read_text().splitlines()
    name = lines[2].split(";")[0]
    lines[2] = f"{name};   "
    path.write_text("\n".join(lines) + "\n")
    return Broken(["empty text", name, path.name])


def empty_caption(ctx: Ctx) -> Broken:
    mask_name = _set_caption(ctx.root, "test", 1, "  ")
    return Broken(["empty text", mask_name[len("mask_") :]])


def nan_text(ctx: Ctx) -> Broken:
    path = _mosmed_csv(ctx.root, "train")
    lines = path.read_text().splitlines()
    name = lines[2].split(";")[0]
    lines[2] = f"{name};nan"  # a missing value written out by pandas
    path.write_text("\n".join(lines) + "\n")
    return Broken(["empty text", "'nan'", name, f"{path.name}, line 3"])


def punctuation_text(ctx: Ctx) -> Broken:
    path = _mosmed_csv(ctx.root, "val")
    lines = path.read_text().splitlines()
    name = lines[1].split(";")[0]
    lines[1] = f"{name};..."
    path.write_text("\n".join(lines) + "\n")
    return Broken(["empty text", "punctuation", name, f"{path.name}, line 2"])


def zero_width_caption(ctx: Ctx) -> Broken:
    mask_name = _set_caption(ctx.root, "test", 0, "\u200b\u200b\u200b")
    return Broken(["empty text", "invisible", mask_name[len("mask_") :]])


def _empty_mosmed_test(root: Path) -> None:
    """Remove every test row of a MosMed tree (Kaggle layout) and its files: an empty test split."""
    path = _mosmed_csv(root, "test")
    header, *rows = path.read_text().splitlines()
    for row in rows:
        name = row.split(";")[0]
        (root / "frames" / name).unlink()
        (root / "masks" / name).unlink()
    path.write_text(header + "\n")


def empty_test_split(ctx: Ctx) -> Broken:
    _empty_mosmed_test(ctx.root)
    return Broken(["the test split of the mosmed dataset", str(ctx.root), "is empty"])


def empty_test_split_after_fit(ctx: Ctx) -> Broken:
    _empty_mosmed_test(ctx.root)
    return Broken(["the test split of the mosmed dataset", "is empty"], ["--test_after_fit=true"])


def batch_size_zero(ctx: Ctx) -> Broken:
    return Broken(["batch_size must be >= 1, got 0"], ["--data.batch_size=0"])


def image_size_zero(ctx: Ctx) -> Broken:
    return Broken(["image_size must be >= 32, got 0"], ["--data.image_size=0"])


def lr_negative(ctx: Ctx) -> Broken:
    return Broken(["lr must be > 0, got -0.1"], ["--model.init_args.lr=-0.1"])


def ratio_zero(ctx: Ctx) -> Broken:
    return Broken(["labeled_ratio", "(0, 1]", "got 0"], ["--data.labeled_ratio=0"])


def ratio_above_one(ctx: Ctx) -> Broken:
    return Broken(["labeled_ratio", "(0, 1]", "got 1.5"], ["--data.labeled_ratio=1.5"])


def other_method_ckpt(ctx: Ctx) -> Broken:
    # Refused while the CLI parses --ckpt_path, before anything runs (LightningCLI would otherwise swap the model).
    args = [f"--ckpt_path={ctx.ckpt}"]
    return Broken([str(ctx.ckpt), "was saved by SupervisedModule"], args, model="SemiMedRefModule")


def missing_ckpt(ctx: Ctx) -> Broken:
    gone = ctx.work / "no_such.ckpt"
    return Broken([str(gone), "not found"], [f"--ckpt_path={gone}"])


def not_a_ckpt(ctx: Ctx) -> Broken:
    junk = ctx.work / "junk.ckpt"
    junk.write_bytes(b"not a checkpoint\n" * 8)
    return Broken([str(junk), "checkpoint"], [f"--ckpt_path={junk}"])


def predict_folder_corrupt(ctx: Ctx) -> Broken:
    folder, texts = _predict_folder(ctx.root, ctx.work)
    bad = _first(folder, 3)
    bad.write_bytes(bad.read_bytes()[:60])
    return Broken([str(bad), "unreadable or corrupt"], _predict_args(folder, texts))


def _predict_folder(root: Path, work: Path) -> tuple[Path, Path]:
    """A folder with the QaTa test images and a CSV naming their masks (GuideDecoder style), in ``work``."""
    folder = work / "to_predict"
    shutil.copytree(root / "test" / "images", folder)
    rows = [(e["image_path"], e["caption"]) for e in json.loads((root / "annotation.json").read_text())["test"]]
    texts = work / "to_predict.csv"
    texts.write_text("Image,Description\n" + "".join(f'{m},"{c}"\n' for m, c in rows))
    return folder, texts


def _predict_args(folder: Path, texts: Path) -> list[str]:
    return [f"--data.predict_images={folder}", f"--data.predict_texts={texts}"]


@dataclass(frozen=True)
class Case:
    """One broken input.

    Attributes:
        id: Readable test id.
        command: ``fit``, ``test`` or ``predict``.
        dataset: ``qata`` (SGSeg layout) or ``mosmed`` (Kaggle layout, LViT semicolon CSVs).
        breaker: Breaks the case's copy of the tree.
        caught: Where the problem is caught (documentation of the catalogue).
        gap: Why the case fails today, when the fix belongs to code outside the dataset readers (the case is then an
            expected failure, strict: it must start passing once that code is fixed, and then the mark goes).
    """

    id: str
    command: str
    dataset: str
    breaker: Callable[[Ctx], Broken]
    caught: str
    gap: str = ""


CASES = [
    Case("unknown-config-key", "fit", "qata", unknown_key, "jsonargparse"),
    Case("wrong-type", "fit", "qata", wrong_type, "jsonargparse"),
    Case("missing-root", "fit", "qata", missing_root, "base.require_root"),
    Case("corrupt-png", "test", "qata", corrupt_png, "SegDataset.check (io._load)"),
    Case("truncated-png", "fit", "mosmed", truncated_png, "SegDataset.check (io._load)"),
    Case("truncated-csv", "fit", "mosmed", truncated_csv, "RecordBuilder.finish"),
    Case("truncated-csv-in-name", "test", "mosmed", truncated_csv_in_name, "io.read_text_table"),
    Case("comma-for-semicolon", "fit", "mosmed", comma_for_semicolon, "io.read_text_table"),
    Case("comma-rows-semicolon-header", "fit", "mosmed", comma_rows_semicolon_header, "io.read_text_table"),
    Case("semicolon-rows-comma-header", "test", "mosmed", semicolon_rows_comma_header, "io.read_text_table"),
    Case("duplicate-id", "fit", "mosmed", duplicate_id, "RecordBuilder.add"),
    Case("duplicate-annotation-entry", "test", "qata", duplicate_annotation_entry, "RecordBuilder.add"),
    Case("size-mismatch", "predict", "qata", size_mismatch, "SegDataset.check"),
    Case("non-binary-mask", "fit", "qata", non_binary_mask, "SegDataset.check (io.read_mask)"),
    Case("missing-mask", "fit", "qata", missing_mask, "RecordBuilder.add"),
    Case("text-too-long", "fit", "mosmed", long_text, "TextSegDataModule.setup (lead)"),
    Case("empty-text", "fit", "mosmed", empty_text, "io.read_text_table"),
    Case("empty-caption", "test", "qata", empty_caption, "RecordBuilder.add"),
    Case("nan-text", "fit", "mosmed", nan_text, "io.read_text_table (io.empty_text_reason)"),
    Case("punctuation-text", "test", "mosmed", punctuation_text, "io.read_text_table (io.empty_text_reason)"),
    Case("zero-width-caption", "fit", "qata", zero_width_caption, "RecordBuilder.add (io.empty_text_reason)"),
    Case("empty-test-split", "test", "mosmed", empty_test_split, "TextSegDataModule.setup (validate_dataset)"),
    Case(
        "empty-test-split-test-after-fit",
        "fit",
        "mosmed",
        empty_test_split_after_fit,
        "TextSegDataModule.setup('fit') with test_after_fit (validate_dataset)",
    ),
    Case("batch-size-zero", "fit", "qata", batch_size_zero, "TextSegDataModule.__init__ (check_range)"),
    Case("image-size-zero", "fit", "qata", image_size_zero, "TextSegDataModule.__init__ (check_range)"),
    Case("lr-negative", "fit", "qata", lr_negative, "TextSegModule.__init__ (check_range)"),
    Case("ratio-zero", "fit", "qata", ratio_zero, "TextSegDataModule.__init__"),
    Case("ratio-above-one", "fit", "qata", ratio_above_one, "TextSegDataModule.__init__"),
    Case("ckpt-of-other-method", "test", "qata", other_method_ckpt, "TextSegCLI._parse_ckpt_path"),
    Case("predict-folder-corrupt-png", "predict", "qata", predict_folder_corrupt, "folder.folder_records"),
    Case("missing-ckpt", "test", "qata", missing_ckpt, "TextSegCLI._parse_ckpt_path"),
    Case("not-a-ckpt", "test", "qata", not_a_ckpt, "TextSegCLI._parse_ckpt_path"),
]
#: The catalogue as pytest parameters: readable ids, cases with a gap in code outside the datasets marked.
CASE_PARAMS = [
    pytest.param(c, id=c.id, marks=[pytest.mark.xfail(strict=True, reason=c.gap)] if c.gap else []) for c in CASES
]
#: Cases also run through ``python -m textseg`` (one jsonargparse error, one DataError).
SUBPROCESS_CASES = ("unknown-config-key", "corrupt-png")


# ------------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def good_run(qata_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run directory of a finished 1-step supervised fit on the good QaTa tree (with its checkpoint)."""
    run_dir = tmp_path_factory.mktemp("good") / "run"
    main(tiny_args("fit", "qata", qata_root, run_dir.parent))
    assert len(list(run_dir.glob("checkpoints/*.ckpt"))) == 1
    return run_dir


@pytest.fixture(autouse=True)
def _no_traceback_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TEXTSEG_TRACEBACK", raising=False)


def prepare(case: Case, roots: dict[str, Path], tmp_path: Path, good_run: Path) -> tuple[list[str], Broken, Path]:
    """Copy the case's good tree into ``tmp_path``, break it and return (argv, what broke, scratch folder)."""
    root = tmp_path / case.dataset
    shutil.copytree(roots[case.dataset], root)
    work = tmp_path / "work"
    work.mkdir()
    (ckpt,) = good_run.glob("checkpoints/*.ckpt")
    broken = case.breaker(Ctx(root, work, ckpt))
    return [*tiny_args(case.command, case.dataset, root, work, broken.model), *broken.args], broken, work


def check_message(code: int | str | None, err: str, broken: Broken, caught: str) -> None:
    """Exit code 2, every expected fragment in stderr, no traceback."""
    assert code == EXIT_BAD_INPUT, f"exit code {code!r}; stderr:\n{err}"
    assert "Traceback" not in err, err
    if caught != "jsonargparse":
        assert err.count(DATA_ERROR_PREFIX) == 1, err
    else:
        assert "error:" in err, err
    missing = [fragment for fragment in broken.expect if fragment not in err]
    assert not missing, f"{missing} not in stderr:\n{err}"


# --------------------------------------------------------------------------------------------------------- tests


@pytest.mark.parametrize("case", CASE_PARAMS)
def test_bad_input_exits_cleanly(
    case: Case,
    qata_root: Path,
    mosmed_root: Path,
    good_run: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    args, broken, work = prepare(case, {"qata": qata_root, "mosmed": mosmed_root}, tmp_path, good_run)
    code, err = run_main(args, capsys)
    check_message(code, err, broken, case.caught)
    written = set(files_under(work / "run")) - set(broken.tolerated)
    assert not written, f"the failed run wrote {sorted(written)} into its run directory"
    assert files_under(work / "out") == {}, "a failed predict wrote predictions"


def test_console_prints_no_traceback(qata_root: Path, mosmed_root: Path, good_run: Path, tmp_path: Path) -> None:
    """``python -m textseg`` (the console path) on two cases at once: exit code 2, the message, no traceback."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.pop("TEXTSEG_TRACEBACK", None)
    runs = []
    for case in [c for c in CASES if c.id in SUBPROCESS_CASES]:
        folder = tmp_path / case.id
        folder.mkdir()
        args, broken, work = prepare(case, {"qata": qata_root, "mosmed": mosmed_root}, folder, good_run)
        command = [sys.executable, "-m", "textseg", *args]
        proc = subprocess.Popen(command, cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        runs.append((case, proc, broken, work))  # both start before either is awaited: the imports overlap
    assert len(runs) == len(SUBPROCESS_CASES)
    for case, proc, broken, work in runs:
        _, err = proc.communicate(timeout=300)
        check_message(proc.returncode, err, broken, case.caught)
        assert files_under(work / "run") == {}


def test_failed_fit_keeps_earlier_run(good_run: Path, qata_root: Path, tmp_path: Path) -> None:
    """``fit --run_dir D`` over a good run, failing on bad data, leaves every file of D byte-identical."""
    run_dir = tmp_path / "run"
    shutil.copytree(good_run, run_dir)
    before = files_under(run_dir)
    assert {"config.yaml", "hparams.yaml", "metrics.csv", "split.json", "run_card.json"} <= set(before)
    root = tmp_path / "qata"
    shutil.copytree(qata_root, root)
    image = _first(root / "train" / "images", 2)
    image.write_bytes(b"not a PNG")
    args = [*tiny_args("fit", "qata", root, tmp_path), "--run_dir", str(run_dir)]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == EXIT_BAD_INPUT
    assert files_under(run_dir) == before


def test_failed_predict_keeps_earlier_predictions(good_run: Path, qata_root: Path, tmp_path: Path) -> None:
    """``predict`` into a folder of good predictions, failing on a corrupt image, leaves the folder unchanged."""
    (ckpt,) = good_run.glob("checkpoints/*.ckpt")
    folder, texts = _predict_folder(qata_root, tmp_path)
    good = [*tiny_args("predict", "qata", tmp_path / "unused", tmp_path), *_predict_args(folder, texts)]
    main([*good, f"--ckpt_path={ckpt}"])
    before = files_under(tmp_path / "out")
    assert len([name for name in before if name.startswith("masks/")]) == len(list(folder.glob("*.png"))) == 4
    shutil.rmtree(tmp_path / "run", ignore_errors=True)
    last = _first(folder, 3)  # in the second batch: without validation the first batch would be rewritten
    last.write_bytes(last.read_bytes()[:60])
    with pytest.raises(SystemExit) as exit_info:
        main([*good, f"--ckpt_path={ckpt}"])
    assert exit_info.value.code == EXIT_BAD_INPUT
    assert files_under(tmp_path / "out") == before
    with Image.open(tmp_path / "out" / "masks" / f"{_first(folder, 0).stem}.png") as mask:
        assert mask.size == (64, 64)


def test_data_error_while_loading_exits_cleanly(
    qata_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With ``--data.check off`` the data loader meets the corrupt images: exit 2, the file named, no traceback."""
    root = tmp_path / "qata"
    shutil.copytree(qata_root, root)
    for image in sorted((root / "train" / "images").glob("*.png")):
        image.write_bytes(b"not a PNG")  # every one: the first batch meets one whatever the order
    code, err = run_main([*tiny_args("fit", "qata", root, tmp_path), "--data.check=off"], capsys)
    check_message(code, err, Broken([str(root / "train" / "images"), "unreadable or corrupt"]), "loader")


def test_folder_records_check_levels(qata_root: Path, tmp_path: Path) -> None:
    """``folder_records(check=...)``: "full" decodes (finds a cut PNG), "fast" reads headers, "off" neither."""
    from textseg.data.folder import folder_records
    from textseg.errors import DataError

    folder, texts = _predict_folder(qata_root, tmp_path)
    assert len(folder_records(folder, texts)) == 4
    cut = _first(folder, 1)
    cut.write_bytes(cut.read_bytes()[:80])  # header intact, pixels missing
    with pytest.raises(DataError, match=r"to_predict\.csv, line 3: image file .*unreadable or corrupt"):
        folder_records(folder, texts)
    assert [r.image for r in folder_records(folder, texts, check="fast")] == sorted(folder.glob("*.png"))
    cut.write_bytes(b"not a PNG")
    with pytest.raises(DataError, match="cannot identify image file"):
        folder_records(folder, texts, check="fast")
    assert len(folder_records(folder, texts, check="off")) == 4
    with pytest.raises(DataError, match="check 'some' is not"):
        folder_records(folder, texts, check="some")  # type: ignore[arg-type]
