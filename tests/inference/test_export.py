"""``textseg export`` (issue 26, item 5): ONNX and TorchScript files that take the image and the tokenized text.

For each backbone a tiny random model (tiny ConvNeXt and tiny BERT, 64 px) is exported once per format; the files are
run (onnxruntime, ``torch.jit.load``) against the eager model of :class:`~textseg.inference.Segmenter` at batch 1 and
3, with short (padded) and truncated (unpadded) texts. The command is run end to end on the checkpoint of a tiny
``textseg fit`` and on a ``save_pretrained`` folder.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from tinyrun import tiny_args

from textseg.cli.export import main as export_main
from textseg.cli.main import main
from textseg.errors import DataError
from textseg.inference import Segmenter
from textseg.inference.export import (
    METADATA_KEY,
    TOLERANCE,
    ExportableSegmenter,
    export_model,
    max_abs_diff,
    run_exported,
)
from textseg.methods import SupervisedModule, TextMoEModule

REPO = Path(__file__).resolve().parents[2]
BACKBONES = ("guidedecoder", "mmiunet", "textmoe")
TEXT = "Bilateral pulmonary infection, two infected areas, lower left lung and lower right lung."
OTHER = "Unilateral pulmonary infection, one infected area, upper right lung."
#: Longer than the 24 tokens: truncated, so its attention mask has no padding.
LONG = (
    "Bilateral pulmonary infection, three infected areas, upper left lung, middle left lung, lower left lung "
    "and lower right lung."
)
SUFFIX = {"onnx": ".onnx", "torchscript": ".pt"}
needs_ort = pytest.mark.skipif(
    importlib.util.find_spec("onnxruntime") is None,
    reason='onnxruntime is not installed (pip install "textseg[onnx]"; CI installs it through the test extra)',
)


def _segmenter(backbone: str, modality: int = 0) -> Segmenter:
    cls = TextMoEModule if backbone == "textmoe" else SupervisedModule
    module = cls(backbone=backbone, vision_encoder="tiny", text_encoder="tiny", project_dim=16)
    return Segmenter.from_module(module, image_size=64, modality=modality, device="cpu")


@pytest.fixture(scope="module")
def segmenters() -> dict[str, Segmenter]:
    return {b: _segmenter(b, modality=1 if b == "textmoe" else 0) for b in BACKBONES}


Exported = Callable[[str, str], Path]


@pytest.fixture(scope="module")
def exported(segmenters: dict[str, Segmenter], tmp_path_factory: pytest.TempPathFactory) -> Exported:
    """``exported(backbone, fmt)``: the file of that export, written on first use."""
    folder = tmp_path_factory.mktemp("export")
    files: dict[tuple[str, str], Path] = {}

    def get(backbone: str, fmt: str) -> Path:
        if (backbone, fmt) not in files:
            files[backbone, fmt] = export_model(segmenters[backbone], folder / f"{backbone}{SUFFIX[fmt]}", fmt)  # type: ignore[arg-type]
        return files[backbone, fmt]

    return get


def _inputs(segmenter: Segmenter, texts: list[str], seed: int = 1) -> tuple[torch.Tensor, ...]:
    image = torch.randn(len(texts), 1, 64, 64, generator=torch.Generator().manual_seed(seed))
    enc = segmenter.module.text_encoder.tokenize(texts, on_device=False)
    return image, enc["input_ids"], enc["attention_mask"]


@pytest.mark.parametrize("fmt", [pytest.param("onnx", marks=needs_ort), "torchscript"])
@pytest.mark.parametrize("backbone", BACKBONES)
def test_exported_equals_eager_at_batch_1_and_3(
    backbone: str, fmt: str, segmenters: dict[str, Segmenter], exported: Exported
) -> None:
    segmenter, path = segmenters[backbone], exported(backbone, fmt)
    enc = segmenter.module.text_encoder.tokenize([LONG, OTHER], on_device=False)
    assert bool(enc["attention_mask"][0].all()) and not bool(enc["attention_mask"][1].all())  # both kinds of rows
    for texts in ([TEXT], [LONG, OTHER, TEXT]):
        assert max_abs_diff(path, segmenter, texts, seed=len(texts)) < TOLERANCE
    assert zipfile.is_zipfile(path) == (fmt == "torchscript")


@pytest.mark.parametrize("fmt", [pytest.param("onnx", marks=needs_ort), "torchscript"])
@pytest.mark.parametrize("backbone", BACKBONES)
def test_the_text_changes_the_exported_output(
    backbone: str, fmt: str, segmenters: dict[str, Segmenter], exported: Exported
) -> None:
    segmenter = segmenters[backbone]
    image, ids, mask = _inputs(segmenter, [TEXT, OTHER])
    same_image = image[:1].expand(2, -1, -1, -1).contiguous()
    out = run_exported(exported(backbone, fmt), same_image, ids, mask)
    assert out.shape == (2, 1, 64, 64) and out.dtype == np.float32
    assert np.abs(out[0] - out[1]).max() > 1e-4  # random tiny networks: 3e-4 (GuideDecoder) to 8e-2 (TextMoE)
    with torch.no_grad():
        eager = ExportableSegmenter.from_segmenter(segmenter)(same_image, ids, mask).numpy()
    np.testing.assert_allclose(out, eager, atol=TOLERANCE)


def test_torchscript_loads_with_torch_jit_and_keeps_the_metadata(
    segmenters: dict[str, Segmenter], exported: Exported
) -> None:
    path = exported("textmoe", "torchscript")
    files = {METADATA_KEY: ""}
    scripted = torch.jit.load(str(path), _extra_files=files)
    meta = json.loads(files[METADATA_KEY])
    assert meta["export_format"] == "torchscript" and meta["modality"] == 1 and meta["backbone"] == "textmoe"
    image, ids, mask = _inputs(segmenters["textmoe"], [TEXT, OTHER, LONG])
    with torch.no_grad():
        assert scripted(image, ids, mask).shape == (3, 1, 64, 64)


@needs_ort
def test_sidecar_metadata_and_tokenizer_need_no_textseg(segmenters: dict[str, Segmenter], exported: Exported) -> None:
    import onnx
    from transformers import AutoTokenizer

    path = exported("guidedecoder", "onnx")
    meta = json.loads(path.with_name(path.name + ".json").read_text())
    assert meta["image_size"] == 64 and meta["channels"] == 1 and meta["onnx_opset"] == 17
    assert meta["inputs"]["image"]["shape"] == ["batch", 1, 64, 64]
    assert meta["inputs"]["input_ids"] == {"dtype": "int64", "shape": ["batch", 24]}
    assert meta["tokenizer"]["max_length"] == 24 and meta["tokenizer"]["files"] == "guidedecoder.onnx.tokenizer"
    embedded = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert json.loads(embedded[METADATA_KEY]) == meta
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent / meta["tokenizer"]["files"]))
    theirs = tokenizer([TEXT, LONG], padding="max_length", truncation=True, max_length=24, return_tensors="np")
    ours = segmenters["guidedecoder"].module.text_encoder.tokenize([TEXT, LONG], on_device=False)
    np.testing.assert_array_equal(theirs["input_ids"], ours["input_ids"].numpy())
    np.testing.assert_array_equal(theirs["attention_mask"], ours["attention_mask"].numpy())


def test_textmoe_modality_is_built_into_the_graph(
    segmenters: dict[str, Segmenter], exported: Exported, tmp_path: Path
) -> None:
    segmenter = segmenters["textmoe"]  # modality 1
    xray = export_model(segmenter, tmp_path / "xray.pt", "torchscript", modality=0)
    assert max_abs_diff(xray, segmenter, [TEXT, OTHER], modality=0) < TOLERANCE
    image, ids, mask = _inputs(segmenter, [TEXT, OTHER])
    ct = run_exported(exported("textmoe", "torchscript"), image, ids, mask)
    assert np.abs(run_exported(xray, image, ids, mask) - ct).max() > 1e-4


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The best checkpoint of a tiny Semi-MedRef (MMI-UNet) fit."""
    work = tmp_path_factory.mktemp("export_fit")
    main([
        "fit",
        "--config", str(REPO / "configs" / "demo_semimedref.yaml"),
        "--data.root", str(work / "synthetic"),
        *tiny_args(),
        "--run_dir", str(work / "run"),
        "--seed", "3",
    ])  # fmt: skip
    return work / "run" / "checkpoints" / "best.ckpt"


@needs_ort
def test_cli_exports_a_checkpoint_to_onnx_and_checks_it(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "sub" / "model.onnx"
    main(["export", "--model", str(checkpoint), "--format", "onnx", "--out", str(out), "--check"])  # exits on failure
    printed = capsys.readouterr().out
    diff = float(printed.split("max |exported - eager| of the logits: ")[1].split()[0])
    assert diff < TOLERANCE
    assert out.is_file() and (tmp_path / "sub" / "model.onnx.json").is_file()
    assert (tmp_path / "sub" / "model.onnx.tokenizer" / "tokenizer.json").is_file()
    segmenter = Segmenter.from_pretrained(checkpoint, device="cpu")
    assert max_abs_diff(out, segmenter, [OTHER, TEXT, LONG]) < TOLERANCE


def test_cli_exports_a_saved_folder_to_torchscript(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = _segmenter("textmoe", modality=1).save_pretrained(tmp_path / "saved")
    out = tmp_path / "model.pt"
    args = ["--model", str(folder), "--format", "torchscript", "--out", str(out), "--check"]
    assert export_main([*args, "--modality", "0"]) == 0
    assert "max |exported - eager|" in capsys.readouterr().out
    meta = json.loads((tmp_path / "model.pt.json").read_text())
    assert meta["method"] == "TextMoEModule" and meta["modality"] == 0 and meta["export_format"] == "torchscript"
    reloaded = Segmenter.from_pretrained(folder, device="cpu", modality=0)
    assert max_abs_diff(out, reloaded, [OTHER, TEXT]) < TOLERANCE


def test_cli_bad_input_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = _segmenter("guidedecoder").save_pretrained(tmp_path / "saved")
    assert export_main(["--model", str(tmp_path / "none.ckpt"), "--format", "onnx", "--out", "m.onnx"]) == 2
    assert export_main(["--model", str(folder), "--format", "torchscript", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "model not found" in err[0] and "is a folder" in err[1]
    with pytest.raises(SystemExit) as exit_info:
        main(["export", "--model", str(folder), "--format", "tflite", "--out", "m.x"])
    assert exit_info.value.code == 2


def test_missing_onnx_packages_say_what_to_install(
    segmenters: dict[str, Segmenter], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = export_model(segmenters["guidedecoder"], tmp_path / "m.pt", "torchscript")
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx raises ImportError
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(DataError, match=r'pip install "textseg\[onnx\]"'):
        export_model(segmenters["guidedecoder"], tmp_path / "m.onnx", "onnx")
    path.write_bytes(b"\x08\x07not a zip: read as ONNX")
    with pytest.raises(DataError, match=r'onnxruntime: pip install "textseg\[onnx\]"'):
        run_exported(path, *_inputs(segmenters["guidedecoder"], [TEXT]))
    with pytest.raises(DataError, match="unknown export format"):
        export_model(segmenters["guidedecoder"], tmp_path / "m.x", "tflite")  # type: ignore[arg-type]


def test_an_exportable_model_matches_the_segmenter_predictions(segmenters: dict[str, Any]) -> None:
    """The wrapper's sigmoid is the Segmenter's probability map on an image already at the network size."""
    segmenter = segmenters["mmiunet"]
    grey = np.random.default_rng(0).integers(0, 256, size=(64, 64), dtype=np.uint8)
    from textseg.inference.inputs import as_grey, network_input

    image = network_input(as_grey(grey), 64)[None]
    enc = segmenter.module.text_encoder.tokenize([TEXT], on_device=False)
    with torch.no_grad():
        logits = ExportableSegmenter.from_segmenter(segmenter)(image, enc["input_ids"], enc["attention_mask"])
    np.testing.assert_allclose(torch.sigmoid(logits)[0, 0].numpy(), segmenter.predict_proba(grey, TEXT), atol=1e-5)
