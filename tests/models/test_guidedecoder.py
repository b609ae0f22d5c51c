"""Tests of textseg.models.guidedecoder (GuideDecoder, methods.md §2) and the shared layers it uses."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from textseg.errors import DataError
from textseg.models.encoders import TextEncoder, build_vision_encoder
from textseg.models.guidedecoder import GuideDecoderCore, GuideDecoderLayer
from textseg.models.layers import (
    ImageProjectionHead,
    SinusoidalPositionalEncoding,
    SubpixelSegHead,
    TextProjectionHead,
    repeat_to_channels,
    sinusoidal_table,
)
from textseg.models.types import TextFeatures

TEXTS = [
    "Bilateral pulmonary infection, two infected areas, all left lung and middle lower right lung.",
    "Unilateral pulmonary infection, one infected area, upper left lung.",
]


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module")
def text_encoder() -> TextEncoder:
    return TextEncoder("tiny")


@pytest.fixture()
def core(text_encoder: TextEncoder) -> GuideDecoderCore:
    torch.manual_seed(0)
    model = GuideDecoderCore(build_vision_encoder("tiny"), text_encoder.hidden_size)
    return model.eval()


# ------------------------------------------------------------------------------------------ parameter counts


def test_full_size_parameter_counts() -> None:
    """methods.md §2: decoder + head 14.36 M (10.48 / 2.77 / 0.77 / 0.33), trainable 42.18 M / 43.95 M.

    Decision: both ITCL heads (image Linear 768->768 on the pooler output, 0.59 M; text head
    Linear-LN-GELU-Linear, 1.18 M) belong to the core and are trainable, so the core has 43.95 M
    parameters; without them 42.18 M.
    """
    model = GuideDecoderCore(build_vision_encoder("convnext-tiny"), text_dim=768)
    stages = [n_params(model.decoder16), n_params(model.decoder8), n_params(model.decoder4)]
    head = n_params(model.head)
    for got, ref in zip([*stages, head], [10.48e6, 2.77e6, 0.77e6, 0.33e6], strict=True):
        assert abs(got - ref) / ref < 0.01
    decoder = sum(stages) + head
    assert decoder == 14_357_953
    assert abs(decoder - 14.36e6) / 14.36e6 < 0.01
    itcl = n_params(model.image_proj) + n_params(model.text_proj)
    assert n_params(model.image_proj) == 768 * 768 + 768
    assert n_params(model.text_proj) == 2 * (768 * 768 + 768) + 2 * 768
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == n_params(model)
    assert abs((trainable - itcl) - 42.18e6) / 42.18e6 < 0.01
    assert abs(trainable - 43.95e6) / 43.95e6 < 0.01
    assert trainable - itcl == 42_178_081 and trainable == 43_951_393
    assert n_params(model.vision) == 27_820_128
    # the fixed sinusoidal tables are buffers, not parameters, and are kept out of checkpoints
    assert not any("pos.pe" in k for k in model.state_dict())


# ---------------------------------------------------------------------------------------------- forward pass


@pytest.mark.parametrize("size", [(64, 64), (224, 224), (64, 96)])
def test_output_shapes(core: GuideDecoderCore, text_encoder: TextEncoder, size: tuple[int, int]) -> None:
    image = torch.randn(2, 1, *size)
    out = core(image, text_encoder(TEXTS))
    assert tuple(out["logits"].shape) == (2, 1, *size)
    assert tuple(out["image_embed"].shape) == (2, 768)
    assert tuple(out["text_embed"].shape) == (2, 768)
    assert torch.isfinite(out["logits"]).all()


def test_one_channel_equals_repeated_three_channels(core: GuideDecoderCore, text_encoder: TextEncoder) -> None:
    text = text_encoder(TEXTS)
    image = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        a = core(image, text)["logits"]
        b = core(image.repeat(1, 3, 1, 1), text)["logits"]
    assert torch.equal(a, b)


def test_itcl_embeddings_match_heads(core: GuideDecoderCore, text_encoder: TextEncoder) -> None:
    text = text_encoder(TEXTS)
    image = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = core(image, text)
        pooler = core.vision(pixel_values=image).pooler_output
        assert torch.allclose(out["image_embed"], core.image_proj.proj(pooler), atol=1e-6)
        assert torch.allclose(out["text_embed"], core.text_proj(text.pooled), atol=1e-6)


def test_text_changes_output(core: GuideDecoderCore, text_encoder: TextEncoder) -> None:
    image = torch.randn(1, 1, 64, 64).repeat(2, 1, 1, 1)
    with torch.no_grad():
        logits = core(image, text_encoder(TEXTS))["logits"]
    diff = (logits[0] - logits[1]).abs().max().item()
    assert diff > 1e-4


def test_alpha_init_and_zero_alpha_ignores_text(text_encoder: TextEncoder) -> None:
    model = GuideDecoderCore(build_vision_encoder("tiny"), text_encoder.hidden_size).eval()
    alphas = [m.guide_layer.scale.item() for m in (model.decoder16, model.decoder8, model.decoder4)]
    assert alphas == pytest.approx([0.01] * 3)
    zero = GuideDecoderCore(build_vision_encoder("tiny"), text_encoder.hidden_size, alpha_init=0.0).eval()
    image = torch.randn(1, 1, 64, 64).repeat(2, 1, 1, 1)
    with torch.no_grad():
        logits = zero(image, text_encoder(TEXTS))["logits"]
    assert torch.allclose(logits[0], logits[1], atol=1e-6)


def _perturb_padding(text: TextFeatures) -> TextFeatures:
    noise = torch.randn_like(text.tokens) * 10
    tokens = torch.where(text.mask.unsqueeze(-1), text.tokens, noise)
    return TextFeatures(tokens=tokens, mask=text.mask, pooled=text.pooled)


def test_padding_mask_hides_padded_states(text_encoder: TextEncoder) -> None:
    text = text_encoder(TEXTS)
    assert not bool(text.mask.all())
    perturbed = _perturb_padding(text)
    image = torch.randn(2, 1, 64, 64)
    torch.manual_seed(1)
    masked = GuideDecoderCore(build_vision_encoder("tiny"), text_encoder.hidden_size).eval()
    with torch.no_grad():
        a = masked(image, text)["logits"]
        b = masked(image, perturbed)["logits"]
    assert torch.equal(a, b)
    masked.use_padding_mask = False  # faithful mode: padding is attended to
    with torch.no_grad():
        c = masked(image, text)["logits"]
        d = masked(image, perturbed)["logits"]
    assert (c - d).abs().max().item() > 1e-5


def test_gradients_reach_decoder_and_vision_not_text(core: GuideDecoderCore, text_encoder: TextEncoder) -> None:
    core.train()
    out = core(torch.randn(2, 1, 64, 64), text_encoder(TEXTS))
    loss = out["logits"].mean() + out["image_embed"].square().mean() + out["text_embed"].square().mean()
    loss.backward()
    for name, p in core.named_parameters():
        assert p.grad is not None, name
    assert core.vision.embeddings.patch_embeddings.weight.grad.abs().sum() > 0  # type: ignore[union-attr]
    assert core.decoder16.guide_layer.scale.grad.abs() > 0  # type: ignore[union-attr]
    conv1d = core.decoder4.guide_layer.text_project[0]
    assert isinstance(conv1d, nn.Conv1d) and conv1d.weight.grad is not None
    assert conv1d.weight.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in text_encoder.parameters())


def test_bad_inputs(core: GuideDecoderCore, text_encoder: TextEncoder) -> None:
    text = text_encoder(TEXTS)
    with pytest.raises(DataError, match="multiple of 32"):
        core(torch.randn(2, 1, 48, 64), text)
    with pytest.raises(DataError, match="channels"):
        core(torch.randn(2, 2, 64, 64), text)
    with pytest.raises(DataError, match="text tokens"):
        core(torch.randn(3, 1, 64, 64), text)
    with pytest.raises(DataError, match="divisible"):
        GuideDecoderLayer(in_channels=18, output_text_len=9, text_dim=32)


# --------------------------------------------------------------------------------------------- shared layers


def test_sinusoidal_table_golden_and_extension() -> None:
    table = sinusoidal_table(6, 8)
    assert torch.equal(table[0], torch.tensor([0.0, 1.0] * 4))
    assert table[1, 0].item() == pytest.approx(math.sin(1.0))
    assert table[1, 1].item() == pytest.approx(math.cos(1.0))
    assert table[3, 2].item() == pytest.approx(math.sin(3.0 / 10000 ** (2 / 8)))
    assert table[5, 7].item() == pytest.approx(math.cos(5.0 / 10000 ** (6 / 8)))
    pe = SinusoidalPositionalEncoding(8, max_len=4)
    x = torch.zeros(2, 6, 8)
    assert torch.allclose(pe(x)[0], table)  # beyond max_len: same values
    odd = sinusoidal_table(3, 5)
    assert odd[2, 4].item() == pytest.approx(math.sin(2.0 / 10000 ** (4 / 5)))


def test_heads_and_repeat() -> None:
    head = SubpixelSegHead(16, 24, scale_factor=4)
    assert tuple(head(torch.randn(2, 16, 8, 12)).shape) == (2, 1, 32, 48)
    img = ImageProjectionHead(16, 8, layer_norm=True)
    maps = torch.randn(2, 16, 4, 4)
    assert torch.allclose(img(maps), img(maps.mean(dim=(2, 3))))
    assert torch.allclose(img(maps).mean(-1), torch.zeros(2), atol=1e-5)  # LayerNorm output
    txt = TextProjectionHead(32, 8)
    assert tuple(txt(torch.randn(3, 32)).shape) == (3, 8)
    one = torch.randn(2, 1, 4, 4)
    three = repeat_to_channels(one)
    assert three.shape == (2, 3, 4, 4) and torch.equal(three[:, 2], one[:, 0])
    with pytest.raises(DataError):
        repeat_to_channels(torch.randn(4, 4))
