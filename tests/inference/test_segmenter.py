"""``textseg.Segmenter`` (issue 26, item 2): load a trained model, predict from paths / PIL / arrays, save and reload.

A tiny Semi-MedRef model is trained once (``configs/demo_semimedref.yaml``, tiny encoders, 1 epoch, test after fit, so
its run folder has ``test_metrics.json``). Its predictions are compared with those of ``textseg predict``'s path: the
module's ``predict_step`` on the DataModule's predict batch, resized as :class:`~textseg.engine.predictions.MaskWriter`
resizes (:func:`~textseg.engine.predictions.resize_probs`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from tinyrun import tiny_args

import textseg
from textseg.cli.main import main
from textseg.data.datamodule import TextSegDataModule
from textseg.data.io import read_size
from textseg.engine.predictions import resize_probs
from textseg.errors import DataError
from textseg.inference import Segmenter, loading
from textseg.methods import SemiMedRefModule, SupervisedModule

REPO = Path(__file__).resolve().parents[2]
TEXT = "Bilateral pulmonary infection, two infected areas, lower left lung and lower right lung."
OTHER = "Unilateral pulmonary infection, one infected area, upper right lung."


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A tiny fit + test: the run folder, its best checkpoint and its synthetic data root."""
    work = tmp_path_factory.mktemp("segmenter")
    run = work / "run"
    main([
        "fit",
        "--config", str(REPO / "configs" / "demo_semimedref.yaml"),
        "--data.root", str(work / "synthetic"),
        *tiny_args(),
        "--test_after_fit", "true",
        "--run_dir", str(run),
        "--seed", "7",
    ])  # fmt: skip
    ckpt = run / "checkpoints" / "best.ckpt"
    assert ckpt.is_file()
    images = sorted((work / "synthetic" / "test" / "images").glob("*.png"))
    return {"run": run, "ckpt": ckpt, "images": images}


@pytest.fixture(scope="module")
def segmenter(trained: dict[str, Any]) -> Segmenter:
    return Segmenter.from_pretrained(trained["ckpt"], device="cpu")


def test_checkpoint_gives_the_run_settings(segmenter: Segmenter, trained: dict[str, Any]) -> None:
    assert segmenter.image_size == 64  # from the checkpoint's datamodule_hyper_parameters
    assert segmenter.config["method"] == "SemiMedRefModule"
    assert segmenter.config["evaluated"] == "student"
    assert segmenter.module.teacher is None  # the EMA teacher is not kept for inference
    assert "test_dice" in segmenter.config["metrics"]
    assert segmenter.device == torch.device("cpu")
    assert isinstance(textseg.Segmenter, type) and textseg.Segmenter is Segmenter


def test_path_pil_and_array_inputs(segmenter: Segmenter, trained: dict[str, Any]) -> None:
    path = trained["images"][0]
    from_path = segmenter.predict_proba(path, TEXT)
    assert from_path.shape == read_size(path) and from_path.dtype == np.float32
    assert 0.0 <= from_path.min() and from_path.max() <= 1.0
    with Image.open(path) as im:
        np.testing.assert_array_equal(segmenter.predict_proba(im, TEXT), from_path)
        grey = np.asarray(im.convert("L"))
    np.testing.assert_array_equal(segmenter.predict_proba(str(path), TEXT), from_path)
    np.testing.assert_array_equal(segmenter.predict_proba(grey, TEXT), from_path)
    rgb = np.random.default_rng(0).integers(0, 256, size=(80, 100, 3), dtype=np.uint8)
    mask = segmenter.predict(rgb, TEXT)
    assert mask.shape == (80, 100) and mask.dtype == np.bool_
    assert segmenter.predict(Image.fromarray(rgb), TEXT, threshold=0.0).all()  # every probability is >= 0


def test_batched_lists(segmenter: Segmenter, trained: dict[str, Any]) -> None:
    images = trained["images"][:3]
    texts = [TEXT, OTHER, TEXT]
    probs = segmenter.predict_proba(images, texts)
    masks = segmenter.predict(images, texts, threshold=0.5)
    assert isinstance(probs, list) and len(probs) == 3 and len(masks) == 3
    for image, text, prob, mask in zip(images, texts, probs, masks, strict=True):
        np.testing.assert_allclose(prob, segmenter.predict_proba(image, text), atol=1e-6)
        np.testing.assert_array_equal(mask, prob >= 0.5)


def test_the_text_changes_the_output(segmenter: Segmenter, trained: dict[str, Any]) -> None:
    image = trained["images"][0]
    assert np.abs(segmenter.predict_proba(image, TEXT) - segmenter.predict_proba(image, OTHER)).max() > 1e-4


def test_parity_with_textseg_predict(segmenter: Segmenter, trained: dict[str, Any], tmp_path: Path) -> None:
    """The probabilities of ``textseg predict``'s path (predict_step + MaskWriter's resize) on image files.

    The predict folder holds a test image at the network size and two of other sizes (80 x 100 grey, 96 x 72 RGB),
    so the bicubic resize of the input and the bilinear resize of the output are both compared.
    """
    folder = tmp_path / "predict"
    folder.mkdir()
    with Image.open(trained["images"][0]) as im:
        im.save(folder / "same.png")
        im.resize((100, 80), Image.Resampling.BICUBIC).save(folder / "wide.png")
        im.convert("RGB").resize((72, 96), Image.Resampling.BILINEAR).save(folder / "tall.png")
        # 12-bit data in a 16-bit PNG (a DICOM export): 4,096 levels, read at full precision on both paths
        deep = (
            np.asarray(im.convert("L"), dtype=np.uint16) * 16 + np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) % 16
        )
        Image.fromarray(deep).save(folder / "deep.png")
    rows = f'same.png,"{TEXT}"\nwide.png,"{OTHER}"\ntall.png,"{TEXT}"\ndeep.png,"{OTHER}"\n'
    (folder / "texts.csv").write_text("Image,text\n" + rows)
    checkpoint = torch.load(trained["ckpt"], map_location="cpu", weights_only=True)
    data = {k: v for k, v in checkpoint["datamodule_hyper_parameters"].items() if not k.startswith("_")}
    data |= {"predict_images": str(folder), "predict_texts": str(folder / "texts.csv")}
    datamodule = TextSegDataModule(**data)
    datamodule.setup("predict")
    batch = next(iter(datamodule.predict_dataloader()))
    module = SemiMedRefModule(**loading.constructor_arguments(checkpoint["hyper_parameters"]))
    module.load_state_dict(checkpoint["state_dict"])
    module.eval()
    with torch.no_grad():
        out = module.predict_step(batch, 0)
    assert sorted(Path(p).name for p in out["path"]) == ["deep.png", "same.png", "tall.png", "wide.png"]
    for i, (path, text) in enumerate(zip(out["path"], out["text"], strict=True)):
        expected = resize_probs(out["probs"][i : i + 1], read_size(Path(path)))[0, 0].numpy()
        np.testing.assert_allclose(segmenter.predict_proba(path, text), expected, atol=1e-5)


def test_save_and_reload(segmenter: Segmenter, trained: dict[str, Any], tmp_path: Path) -> None:
    folder = segmenter.save_pretrained(tmp_path / "model")
    assert {p.name for p in folder.iterdir()} == {"config.json", "model.safetensors", "README.md"}
    config = json.loads((folder / "config.json").read_text())
    assert config["method"] == "SemiMedRefModule" and config["image_size"] == 64
    assert config["hparams"]["text_encoder"] == "tiny" and config["textseg_version"] == textseg.__version__
    card = (folder / "README.md").read_text()
    assert "not for clinical use" in card and "2605.15720" in card and "MICCAI 2024" in card and "test_dice" in card
    run_card = json.loads((trained["ckpt"].parent.parent / "run_card.json").read_text())
    assert run_card["split"]["sha256"] in card and "training time" in card  # the training run's facts came along
    assert "host" in run_card["hardware"] and "host" not in config["run"]["hardware"]  # the host name stays local
    assert card == (trained["ckpt"].parent.parent / "model_card.md").read_text()  # the run's own card
    reloaded = Segmenter.from_pretrained(folder, device="cpu")
    images, texts = trained["images"][:2], [TEXT, OTHER]
    for a, b in zip(segmenter.predict_proba(images, texts), reloaded.predict_proba(images, texts), strict=True):
        np.testing.assert_array_equal(a, b)
    assert reloaded.config["metrics"] == segmenter.config["metrics"]
    from safetensors.torch import load_file, save_file

    weights = load_file(str(folder / "model.safetensors"))
    name = next(k for k, v in weights.items() if v.is_floating_point())
    weights[name] = torch.full_like(weights[name], float("nan"))
    save_file(weights, str(folder / "model.safetensors"))
    with pytest.raises(DataError, match=rf"model folder {folder} has NaN/inf weights in 1 of \d+ tensors \({name}\)"):
        Segmenter.from_pretrained(folder, device="cpu")
    weights[name] = torch.zeros(*weights[name].shape, 2)  # a tensor of another shape: one line, no traceback
    save_file(weights, str(folder / "model.safetensors"))
    with pytest.raises(DataError, match=rf"model.safetensors .* does not fit .*shape mismatches \(1: {name} "):
        Segmenter.from_pretrained(folder, device="cpu")


def test_eval_teacher_keeps_the_teacher() -> None:
    module = SemiMedRefModule(vision_encoder="tiny", text_encoder="tiny", project_dim=16, eval_teacher=True)
    teacher_net = module.teacher.module
    reduced, evaluated = loading.to_inference(module)
    assert evaluated == "teacher" and reduced.net is teacher_net and reduced.teacher is None


def test_from_module_and_push_to_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    module = SupervisedModule(vision_encoder="tiny", text_encoder="tiny", project_dim=16)
    seg = Segmenter.from_module(module, image_size=64, device="cpu")
    assert seg.module is not module and seg.config["method"] == "SupervisedModule"
    calls: dict[str, Any] = {}

    class FakeApi:
        def __init__(self, token: str | None = None) -> None:
            calls["token"] = token

        def create_repo(self, repo_id: str, **kwargs: Any) -> None:
            calls["created"] = repo_id

        def upload_folder(self, **kwargs: Any) -> str:
            calls["files"] = sorted(p.name for p in Path(kwargs["folder_path"]).iterdir())
            calls.update(kwargs)
            return "commit"

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    assert seg.push_to_hub("someone/tiny-textseg", token="t", folder=tmp_path / "up") == "commit"
    assert calls["repo_id"] == calls["created"] == "someone/tiny-textseg" and calls["repo_type"] == "model"
    assert calls["folder_path"] == str(tmp_path / "up") and calls["token"] == "t"
    assert calls["files"] == ["README.md", "config.json", "model.safetensors"]


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("missing/best.ckpt", "model not found"),
        ("./no/such/folder", "model not found"),
        ("nobody-xyz/not-a-textseg-model", "not found in the local Hub cache"),
    ],
)
def test_missing_models_are_one_clear_error(source: str, message: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError, match=message):
        Segmenter.from_pretrained(source)


def test_bad_files_and_inputs(segmenter: Segmenter, tmp_path: Path) -> None:
    (tmp_path / "broken.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match="could not be read"):
        Segmenter.from_pretrained(tmp_path / "broken.ckpt")
    (tmp_path / "folder").mkdir()
    with pytest.raises(DataError, match="not a folder written by save_pretrained"):
        Segmenter.from_pretrained(tmp_path / "folder")
    with pytest.raises(DataError, match="one text per image"):
        segmenter.predict([np.zeros((8, 8), np.uint8)] * 2, [TEXT])
    with pytest.raises(DataError, match="threshold"):
        segmenter.predict(np.zeros((8, 8), np.uint8), TEXT, threshold=2.0)
    with pytest.raises(DataError, match="image file not found"):
        segmenter.predict(tmp_path / "none.png", TEXT)
    with pytest.raises(DataError, match="H x W"):
        segmenter.predict(np.zeros((2, 8, 8, 3), np.uint8), TEXT)
