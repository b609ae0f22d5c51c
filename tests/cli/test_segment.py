"""``textseg segment`` (issue 26, item 3): masks and overlays of images from a typed text or a text CSV.

The model is a tiny untrained Supervised module saved with ``Segmenter.save_pretrained`` (the checkpoint path is
covered by ``tests/inference/test_segmenter.py``); the images are the real QaTa-COV19 examples.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from textseg.cli.main import main
from textseg.data.io import read_size
from textseg.inference import Segmenter
from textseg.methods import SupervisedModule

TEXT = "Bilateral pulmonary infection, two infected areas, middle left lung and lower right lung."


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    module = SupervisedModule(vision_encoder="tiny", text_encoder="tiny", project_dim=16)
    folder = tmp_path_factory.mktemp("segment") / "model"
    return Segmenter.from_module(module, image_size=64, device="cpu").save_pretrained(folder)


@pytest.fixture(scope="module")
def examples(qata_files: Path) -> list[Path]:
    images = sorted((qata_files / "examples").glob("*/images/*.png"))
    assert len(images) >= 2
    return images


def test_segment_one_example_with_a_typed_text(model_dir: Path, examples: list[Path], tmp_path: Path) -> None:
    image = examples[0]
    out = tmp_path / "out"
    main(["segment", str(image), "--text", TEXT, "--model", str(model_dir), "--out", str(out), "--device", "cpu"])
    mask = np.asarray(Image.open(out / f"{image.stem}_mask.png"))
    assert mask.shape == read_size(image) and set(np.unique(mask)) <= {0, 255}
    with Image.open(out / f"{image.stem}_overlay.png") as overlay:
        assert overlay.mode == "RGB" and overlay.width == mask.shape[1] and overlay.height > mask.shape[0]
    expected = Segmenter.from_pretrained(model_dir, device="cpu").predict(image, TEXT)
    np.testing.assert_array_equal(mask == 255, expected)


def test_segment_with_a_text_csv(model_dir: Path, examples: list[Path], tmp_path: Path) -> None:
    images = examples[:2]
    table = tmp_path / "texts.csv"
    table.write_text(f'Image,text\n{images[0].name},"{TEXT}"\n{images[1].name},"Left lung."\n')
    out = tmp_path / "out"
    args = ["segment", *map(str, images), "--texts", str(table), "--model", str(model_dir), "--out", str(out)]
    main([*args, "--threshold", "0.3", "--batch-size", "1", "--device", "cpu"])
    for image in images:
        assert Image.open(out / f"{image.stem}_mask.png").size[::-1] == read_size(image)
        assert (out / f"{image.stem}_overlay.png").is_file()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"--model": "runs/missing/best.ckpt"}, "textseg: error: model not found: runs/missing/best.ckpt"),
        ({"image": "missing.png"}, "textseg: error: image file not found: missing.png"),
        ({"--threshold": "1.5"}, "textseg: error: --threshold must be in [0, 1]"),
        ({"--texts": "TABLE"}, "has no row for 1 image(s)"),
    ],
)
def test_bad_input_is_one_error_line(
    change: dict[str, str],
    message: str,
    model_dir: Path,
    examples: list[Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    table = tmp_path / "texts.csv"
    table.write_text(f'Image,text\nother.png,"{TEXT}"\n')
    image = change.get("image", str(examples[0]))
    texts = ["--texts", str(table)] if "--texts" in change else ["--text", TEXT]
    options = {"--model": str(model_dir), "--out": str(tmp_path / "out"), "--threshold": "0.5"}
    options |= {k: v for k, v in change.items() if k in options}
    args = ["segment", image, *texts, *[x for kv in options.items() for x in kv], "--device", "cpu"]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err and "Traceback" not in err


def test_text_or_texts_is_required(model_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["segment", "x.png", "--model", str(model_dir), "--out", "o"])
    assert exit_info.value.code == 2 and "--text" in capsys.readouterr().err
