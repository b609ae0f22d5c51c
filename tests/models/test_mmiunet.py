"""Tests of the MMI-UNet core (methods.md §3, §6.5)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import ConvNextConfig, ConvNextModel

from textseg.errors import DataError
from textseg.models.mmiunet import EfficientChannelAttention, ImageTextModule, Interactor, MMIUNetCore
from textseg.models.types import TextFeatures

TINY_WIDTHS = [16, 32, 64, 128]
TEXT_DIM = 24
TEXT_LEN = 8
PROJECT_DIM = 32


def tiny_vision() -> ConvNextModel:
    return ConvNextModel(ConvNextConfig(depths=[1, 1, 1, 1], hidden_sizes=TINY_WIDTHS))


def tiny_core(seed: int = 0, **kwargs: object) -> MMIUNetCore:
    torch.manual_seed(seed)
    return MMIUNetCore(tiny_vision(), TEXT_DIM, ffn_dim=16, project_dim=PROJECT_DIM, **kwargs)  # type: ignore[arg-type]


def fake_text(batch: int = 2, n_real: tuple[int, ...] = (5, 3), seed: int = 1) -> TextFeatures:
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randn(batch, TEXT_LEN, TEXT_DIM, generator=gen)
    mask = torch.zeros(batch, TEXT_LEN, dtype=torch.bool)
    for row, n in enumerate(n_real):
        mask[row, :n] = True
    pooled = torch.randn(batch, TEXT_DIM, generator=gen)
    return TextFeatures(tokens=tokens, mask=mask, pooled=pooled)


def fake_image(batch: int = 2, channels: int = 1, size: tuple[int, int] = (64, 64), seed: int = 2) -> Tensor:
    return torch.randn(batch, channels, *size, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------------------------------
# Parameter counts of the full-size network (methods.md §3 "Parameters").


@pytest.fixture(scope="module")
def full_counts() -> dict[str, int]:
    torch.manual_seed(0)
    core = MMIUNetCore(ConvNextModel(ConvNextConfig()), text_dim=768)
    return core.parameter_breakdown()


@pytest.mark.parametrize(
    ("key", "expected_m"),
    [
        ("backbone", 27.82),
        ("itm", 21.80),
        ("itm_1", 0.42),
        ("itm_2", 1.29),
        ("itm_3", 4.34),
        ("itm_4", 15.76),
        ("decoder", 5.37),
        ("core", 55.0),
        ("text_head", 1.18),
    ],
)
def test_full_size_parameter_counts(full_counts: dict[str, int], key: str, expected_m: float) -> None:
    assert full_counts[key] / 1e6 == pytest.approx(expected_m, rel=0.01)


def test_full_size_exact_counts(full_counts: dict[str, int]) -> None:
    # Golden numbers of this implementation; core excludes the ITCL heads.
    assert full_counts["backbone"] == 27_820_128
    assert full_counts["itm"] == 21_804_256
    assert full_counts["decoder"] == 5_366_809
    assert full_counts["core"] == 54_991_193
    assert full_counts["image_head"] == 768 * 768 + 768 + 2 * 768
    assert full_counts["text_head"] == 2 * (768 * 768 + 768) + 2 * 768
    assert full_counts["total"] == full_counts["core"] + full_counts["image_head"] + full_counts["text_head"]


# ----------------------------------------------------------------------------------------------------
# Shapes and behaviour with a tiny ConvNeXt.


@pytest.mark.parametrize(("size", "channels"), [((64, 64), 1), ((224, 224), 3), ((64, 96), 1)])
def test_output_shapes(size: tuple[int, int], channels: int) -> None:
    core = tiny_core().eval()
    with torch.no_grad():
        out = core(fake_image(channels=channels, size=size), fake_text())
    assert out["logits"].shape == (2, 1, *size)
    assert out["image_embed"].shape == (2, PROJECT_DIM)
    assert out["text_embed"].shape == (2, PROJECT_DIM)
    assert all(torch.isfinite(v).all() for v in out.values())


def test_one_channel_is_repeated() -> None:
    core = tiny_core().eval()
    gray = fake_image(channels=1)
    with torch.no_grad():
        a = core(gray, fake_text())["logits"]
        b = core(gray.repeat(1, 3, 1, 1), fake_text())["logits"]
    torch.testing.assert_close(a, b)


def test_text_changes_output() -> None:
    core = tiny_core().eval()
    image = fake_image()
    with torch.no_grad():
        a = core(image, fake_text(seed=1))
        b = core(image, fake_text(seed=5))
    assert (a["logits"] - b["logits"]).abs().max() > 1e-4
    assert (a["text_embed"] - b["text_embed"]).abs().max() > 1e-4


def _perturb_padding(text: TextFeatures) -> TextFeatures:
    tokens = text.tokens.clone()
    noise = 10.0 * torch.randn(tokens.shape, generator=torch.Generator().manual_seed(9))
    tokens[~text.mask] = noise[~text.mask]
    return TextFeatures(tokens=tokens, mask=text.mask, pooled=text.pooled)


def test_padding_mask_hides_padded_tokens() -> None:
    image, text = fake_image(), fake_text()
    core = tiny_core(use_padding_mask=True).eval()
    with torch.no_grad():
        a = core(image, text)
        b = core(image, _perturb_padding(text))
    torch.testing.assert_close(a["logits"], b["logits"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(a["image_embed"], b["image_embed"], rtol=1e-5, atol=1e-5)


def test_without_mask_padded_tokens_matter_and_mask_is_ignored() -> None:
    image, text = fake_image(), fake_text()
    core = tiny_core(use_padding_mask=False).eval()
    with torch.no_grad():
        a = core(image, text)["logits"]
        b = core(image, _perturb_padding(text))["logits"]
        all_real = TextFeatures(text.tokens, torch.ones_like(text.mask), text.pooled)
        c = core(image, all_real)["logits"]
    assert (a - b).abs().max() > 1e-4
    torch.testing.assert_close(a, c)


def test_gradients_reach_all_trainable_parts() -> None:
    core = tiny_core().train()
    out = core(fake_image(), fake_text())
    loss = out["logits"].mean() + out["image_embed"].pow(2).mean() + out["text_embed"].pow(2).mean()
    loss.backward()
    names_with_grad = {n for n, p in core.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    for name in [
        "vision.embeddings.patch_embeddings.weight",
        "vision.encoder.stages.0.layers.0.dwconv.weight",
        "vision.encoder.stages.3.downsampling_layer.1.weight",
        "itms.0.zoom_in.weight",
        "itms.3.fusion_v.multihead_attn.in_proj_weight",
        "itms.2.fusion_t.linear1.weight",
        "itms.2.linear2.weight",  # text output of stage 3 reaches stage 4 through s_4
        "decoders.0.up.weight",
        "decoders.2.conv_bn_relu.0.weight",
        "upsample.conv_block.weight",
        "out.conv.conv.weight",
        "image_head.0.weight",
        "text_head.3.weight",
    ]:
        assert name in names_with_grad, name
    # Only the stage-4 text branch and the ConvNeXt's final LN are unused (as in MMIUNet_V2).
    unused = {n for n, _ in core.named_parameters()} - names_with_grad
    stage4_text = {n for n, _ in core.named_parameters() if n.startswith(("itms.3.fusion_t.", "itms.3.linear2."))}
    assert len(stage4_text) == 20  # 2 attentions x 4, FFN 4, 3 LN x 2, out Linear 2
    assert unused == {"vision.layernorm.weight", "vision.layernorm.bias"} | stage4_text


def test_eca_adds_parameters_and_runs() -> None:
    plain, eca = tiny_core(), tiny_core(use_eca=True, eca_kernel_size=5)
    n_plain = sum(p.numel() for p in plain.parameters())
    n_eca = sum(p.numel() for p in eca.parameters())
    assert n_eca - n_plain == 3 * 5
    with torch.no_grad():
        out = eca.eval()(fake_image(), fake_text())
    assert out["logits"].shape == (2, 1, 64, 64)


def test_eca_values() -> None:
    module = EfficientChannelAttention(kernel_size=3)
    nn.init.zeros_(module.conv.weight)
    x = torch.randn(2, 6, 4, 4)
    torch.testing.assert_close(module(x), 0.5 * x)
    with torch.no_grad():
        module.conv.weight.copy_(torch.tensor([[[0.0, 1.0, 0.0]]]))
    torch.testing.assert_close(module(x), x * torch.sigmoid(x.mean(dim=(2, 3)))[:, :, None, None])


def test_deterministic_under_seed() -> None:
    a, b = tiny_core(seed=3).eval(), tiny_core(seed=3).eval()
    for (na, pa), (nb, pb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert na == nb
        assert torch.equal(pa, pb), na
    with torch.no_grad():
        torch.testing.assert_close(a(fake_image(), fake_text()), b(fake_image(), fake_text()), rtol=0, atol=0)
    itm_a, itm_c = a.itms[0], tiny_core(seed=4).itms[0]
    assert isinstance(itm_a, ImageTextModule) and isinstance(itm_c, ImageTextModule)
    assert not torch.equal(itm_a.zoom_in.weight, itm_c.zoom_in.weight)


# ----------------------------------------------------------------------------------------------------
# Structure: ITM against an independent sequence-first computation, and the encoder wiring.


def _mha_seq_first(attn: nn.MultiheadAttention, q: Tensor, kv: Tensor, kpm: Tensor | None) -> Tensor:
    out, _ = F.multi_head_attention_forward(
        q,
        kv,
        kv,
        attn.embed_dim,
        attn.num_heads,
        attn.in_proj_weight,
        attn.in_proj_bias,
        None,
        None,
        False,
        0.0,
        attn.out_proj.weight,
        attn.out_proj.bias,
        training=False,
        key_padding_mask=kpm,
        need_weights=False,
    )
    return out


def _interactor_reference(
    layer: Interactor, tgt: Tensor, mem: Tensor, tkpm: Tensor | None, mkpm: Tensor | None
) -> Tensor:
    tgt = F.layer_norm(
        tgt + _mha_seq_first(layer.self_attn, tgt, tgt, tkpm),
        (tgt.shape[-1],),
        layer.norm1.weight,
        layer.norm1.bias,
    )
    tgt = F.layer_norm(
        tgt + _mha_seq_first(layer.multihead_attn, tgt, mem, mkpm),
        (tgt.shape[-1],),
        layer.norm2.weight,
        layer.norm2.bias,
    )
    ffn = F.linear(
        F.relu(F.linear(tgt, layer.linear1.weight, layer.linear1.bias)),
        layer.linear2.weight,
        layer.linear2.bias,
    )
    return F.layer_norm(tgt + ffn, (tgt.shape[-1],), layer.norm3.weight, layer.norm3.bias)


@pytest.mark.parametrize("side", [7, 8])
def test_itm_matches_sequence_first_reference(side: int) -> None:
    torch.manual_seed(0)
    itm = ImageTextModule(channels=16, text_dim=TEXT_DIM, num_heads=8, ffn_dim=16, dropout=0.1).eval()
    vis = torch.randn(2, 16, side, side)
    txt = torch.randn(2, TEXT_LEN, TEXT_DIM)
    kpm = ~fake_text().mask
    with torch.no_grad():
        v_out, t_out = itm(vis, txt, kpm)
        # Reference: sequence-first (L, B, C) tensors, both branches on the same normalised inputs.
        v = itm.zoom_in(vis)
        h, w = v.shape[-2:]
        v_seq = F.layer_norm(v.flatten(2).permute(2, 0, 1), (16,), itm.ln_v.weight, itm.ln_v.bias)
        t_seq = F.layer_norm(itm.linear1(txt).transpose(0, 1), (16,), itm.ln_t.weight, itm.ln_t.bias)
        v_new = _interactor_reference(itm.fusion_v, v_seq, t_seq, None, kpm)
        t_new = _interactor_reference(itm.fusion_t, t_seq, v_seq, kpm, None)
        pad = side % 2
        v_map = v_new.permute(1, 2, 0).reshape(2, 16, h, w)
        expected_v = vis + F.conv_transpose2d(v_map, itm.zoom_out.weight, stride=2, output_padding=pad)
        expected_t = txt + itm.linear2(t_new.transpose(0, 1))
    assert v_out.shape == vis.shape
    torch.testing.assert_close(v_out, expected_v, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(t_out, expected_t, rtol=1e-4, atol=1e-5)


def test_itm_init() -> None:
    torch.manual_seed(0)
    itm = ImageTextModule(channels=64, text_dim=256, num_heads=8, ffn_dim=128, dropout=0.1)
    for linear in [itm.linear1, itm.linear2, itm.fusion_v.linear1, itm.fusion_t.self_attn.out_proj]:
        assert linear.weight.std().item() == pytest.approx(0.02, rel=0.1)
        assert torch.count_nonzero(linear.bias) == 0
    # kaiming normal, fan_out: std = sqrt(2 / (out_channels * k * k)) = sqrt(2 / 256).
    assert itm.zoom_in.weight.std().item() == pytest.approx((2 / 256) ** 0.5, rel=0.1)


def test_encoder_wiring_with_silent_itms() -> None:
    """With Δv = 0 every skip is x_k and stage k+1 receives 2·x_k (methods.md §3); text then has no effect."""
    core = tiny_core().eval()
    for itm in core.itms:
        assert isinstance(itm, ImageTextModule)
        nn.init.zeros_(itm.zoom_out.weight)
    image = fake_image()
    with torch.no_grad():
        out = core(image, fake_text(seed=1))
        other = core(image, fake_text(seed=7))
        hidden, skips = core.vision.embeddings(image.repeat(1, 3, 1, 1)), []
        for stage in core.vision.encoder.stages:
            x = stage(hidden)
            skips.append(x)
            hidden = 2 * x
        feats = skips[3]
        for block, skip in zip(core.decoders, [skips[2], skips[1], skips[0]], strict=True):
            feats = block(feats, skip)
        expected = core.out(core.upsample(feats))
    torch.testing.assert_close(out["logits"], expected)
    torch.testing.assert_close(out["logits"], other["logits"])
    torch.testing.assert_close(out["image_embed"], core.image_head(skips[3].mean(dim=(2, 3))))


# ----------------------------------------------------------------------------------------------------
# Bad input.


@pytest.mark.parametrize("size", [(32, 32), (48, 64), (64, 80)])
def test_bad_image_size(size: tuple[int, int]) -> None:
    with pytest.raises(DataError, match="multiples of 32"):
        tiny_core()(fake_image(size=size), fake_text())


def test_bad_inputs() -> None:
    core = tiny_core()
    with pytest.raises(DataError, match="channels"):
        core(fake_image(channels=2), fake_text())
    text = fake_text()
    with pytest.raises(DataError, match=r"text\.tokens"):
        core(fake_image(), TextFeatures(text.tokens[..., :-1], text.mask, text.pooled))
    with pytest.raises(DataError, match=r"text\.pooled"):
        core(fake_image(), TextFeatures(text.tokens, text.mask, text.pooled[:1]))
    with pytest.raises(RuntimeError, match="a batch row without a real token"):  # a device assert, no sync
        core(fake_image(), fake_text(n_real=(3, 0)))
    with pytest.raises(DataError, match="divisible"):
        MMIUNetCore(ConvNextModel(ConvNextConfig(depths=[1, 1, 1, 1], hidden_sizes=[12, 24, 48, 96])), TEXT_DIM)
