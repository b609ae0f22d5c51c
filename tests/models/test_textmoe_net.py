"""Tests of textseg.models.textmoe (TextMoE network, Zeng et al. MICCAI 2025 Eqs. 1-4; methods.md §4)."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from textseg.errors import DataError
from textseg.models import build_core
from textseg.models.encoders import build_vision_encoder
from textseg.models.textmoe import MoEDecoderBlock, MoELayer, TextMoECore
from textseg.models.types import TextFeatures

D_T = 32  # text hidden size of the random test features
L = 24  # token length (max_length)
TINY_WIDTHS = (16, 32, 64, 128)


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def make_text(batch: int = 2, lengths: tuple[int, ...] = (9, 15), seed: int = 0) -> TextFeatures:
    """Random text features; row i has ``lengths[i]`` real tokens followed by padding."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randn(batch, L, D_T, generator=g)
    mask = torch.arange(L).unsqueeze(0) < torch.tensor(lengths[:batch]).unsqueeze(1)
    pooled = torch.randn(batch, D_T, generator=g)
    return TextFeatures(tokens=tokens, mask=mask, pooled=pooled)


def make_core(expert: str = "tmoe", seed: int = 0, **kwargs: object) -> TextMoECore:
    torch.manual_seed(seed)
    model = TextMoECore(build_vision_encoder("tiny"), D_T, expert=expert, **kwargs)  # type: ignore[arg-type]
    return model.eval()


@pytest.fixture(scope="module")
def tmoe() -> TextMoECore:
    return make_core("tmoe")


@pytest.fixture(scope="module")
def plain() -> TextMoECore:
    return make_core("plain")


# ------------------------------------------------------------------------------------------ parameter counts


def moe_layer_params(c_in: int, c_out: int, d_t: int, experts: int = 2, modalities: int = 2) -> int:
    """Closed form of one TMoE layer (methods.md §4 "One MoE layer")."""
    text = d_t * c_out + c_out + 2 * c_out  # Linear + LN
    gate = (c_in + modalities) * experts + experts
    conv = 9 * c_in * c_out + c_out
    ln = 2 * c_out
    mha = 4 * c_out * c_out + 4 * c_out
    return text + gate + experts * (conv + ln + mha) + 1  # + the shared scale s


def test_full_size_parameter_counts() -> None:
    """methods.md §4: decoder + head 16.49 M (blocks 12.11 / 3.18 / 0.87 M), trainable 44.31 M.

    The reference head ends in a 1x1 conv 24->3 (75 parameters); textseg's one-channel head has 25, which is
    50 parameters fewer and invisible at the precision of the reference numbers.
    """
    model = TextMoECore(build_vision_encoder("convnext-tiny"), text_dim=768)
    blocks = [n_params(b) for b in model.blocks]
    for got, ref in zip(blocks, [12.11e6, 3.18e6, 0.87e6], strict=True):
        assert abs(got - ref) / ref < 0.01
    assert blocks == [12_108_686, 3_178_958, 870_638]
    head = n_params(model.head)
    assert head == (9 * 96 * 24 * 16 + 24 * 16) + (24 + 1)  # subpixel 3x3 conv 96->24*4^2, 1x1 conv 24->1
    decoder = sum(blocks) + head
    assert decoder == 16_490_467
    assert abs(decoder - 16.49e6) / 16.49e6 < 0.01
    assert n_params(model.vision) == 27_820_128
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == n_params(model) == 44_310_595
    assert abs(trainable - 44.31e6) / 44.31e6 < 0.01
    # per-layer closed form and the block composition (ConvT 2x2 with bias + 2 BN)
    widths = [(768, 384), (384, 192), (192, 96)]
    for block, (deep, skip) in zip(model.blocks, widths, strict=True):
        assert isinstance(block, MoEDecoderBlock)
        assert n_params(block.moe1) == moe_layer_params(2 * skip, skip, 768)
        assert n_params(block.moe2) == moe_layer_params(skip, skip, 768)
        assert n_params(block) == (4 * deep * skip + skip) + n_params(block.moe1) + n_params(block.moe2) + 4 * skip
    # the sinusoidal tables are buffers kept out of checkpoints
    assert not any(k.endswith("pos.pe") for k in model.state_dict())


# ---------------------------------------------------------------------------------------------- forward pass


@pytest.mark.parametrize("expert", ["tmoe", "plain"])
@pytest.mark.parametrize("size", [(64, 64), (64, 96)])
def test_output_and_expert_shapes(expert: str, size: tuple[int, int]) -> None:
    core = make_core(expert)
    h, w = size
    with torch.no_grad():
        out = core(torch.randn(2, 1, h, w), make_text(), torch.tensor([0, 1]))
    assert set(out) == {"logits", "experts", "gates"}
    assert tuple(out["logits"].shape) == (2, 1, h, w)
    assert torch.isfinite(out["logits"]).all()
    c1, c2, c3, _ = TINY_WIDTHS
    expected = [(c3, 16), (c3, 16), (c2, 8), (c2, 8), (c1, 4), (c1, 4)]
    assert len(out["experts"]) == 6
    for e, (c, stride) in zip(out["experts"], expected, strict=True):
        assert tuple(e.shape) == (2, 2, c, h // stride, w // stride)
    assert tuple(out["gates"].shape) == (2, 6, 2)


def test_num_experts_and_build_core() -> None:
    torch.manual_seed(0)
    core = build_core("textmoe", "tiny", D_T, moe_expert="plain", num_experts=3, use_padding_mask=False)
    assert isinstance(core, TextMoECore)
    assert core.expert == "plain" and not core.use_padding_mask
    assert TextMoECore.takes_modality is True  # the method base class passes modality only to such cores
    assert all(layer.num_experts == 3 and layer.expert == "plain" for layer in core.moe_layers())
    with torch.no_grad():
        out = core.eval()(torch.randn(2, 3, 64, 64), make_text())
    assert tuple(out["gates"].shape) == (2, 6, 3)
    assert tuple(out["experts"][-1].shape) == (2, 3, 16, 16, 16)
    default = build_core("textmoe", "tiny", D_T)
    assert isinstance(default, TextMoECore) and default.expert == "tmoe" and default.num_experts == 2


def test_gates_sum_to_one_and_follow_modality(tmoe: TextMoECore) -> None:
    image = torch.randn(1, 1, 64, 64).repeat(2, 1, 1, 1)
    text = make_text(lengths=(12, 12), seed=3)
    text = TextFeatures(tokens=text.tokens[:1].repeat(2, 1, 1), mask=text.mask, pooled=text.pooled[:1].repeat(2, 1))
    with torch.no_grad():
        out = tmoe(image, text, torch.tensor([0, 1]))
        none = tmoe(image, text)
        zeros = tmoe(image, text, torch.tensor([0, 0]))
    gates = out["gates"]
    assert torch.allclose(gates.sum(-1), torch.ones(2, 6), atol=1e-6)
    assert (gates >= 0).all()
    # identical image and text, only the modality indicator differs
    assert (gates[0] - gates[1]).abs().max().item() > 1e-4
    assert (out["logits"][0] - out["logits"][1]).abs().max().item() > 1e-5
    # None means modality 0 for every sample
    assert torch.equal(none["logits"], zeros["logits"]) and torch.equal(none["gates"], zeros["gates"])
    assert torch.allclose(out["logits"][0], zeros["logits"][0], atol=1e-6)


def test_gate_formula_and_weighted_sum() -> None:
    """Eqs. 3-4: g = softmax(W [GAP(x) || onehot] + b); output = sum_e g_e expert_e."""
    torch.manual_seed(0)
    layer = MoELayer(8, 16, D_T, num_experts=3).eval()
    x = torch.randn(2, 8, 4, 6)
    modality = torch.tensor([1, 0])
    with torch.no_grad():
        out, experts, gates = layer(x, make_text(), modality)
        onehot = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
        logits = torch.cat([x.mean(dim=(2, 3)), onehot], dim=1) @ layer.gate.weight.T + layer.gate.bias
        assert torch.allclose(gates, torch.softmax(logits, dim=1), atol=1e-6)
        assert torch.allclose(out, (gates[:, :, None, None, None] * experts).sum(1), atol=1e-5)
    assert tuple(experts.shape) == (2, 3, 16, 4, 6)


def test_tmoe_expert_formula() -> None:
    """Eqs. 1-2: expert_e = (v_e + PE) + s * MHA(LN_e(v_e + PE), t, t), t = text expert + PE over tokens."""
    torch.manual_seed(0)
    layer = MoELayer(8, 16, D_T, leaky_slope=0.1).eval()
    x = torch.randn(2, 8, 4, 4)
    text = make_text()
    padding = ~text.mask
    with torch.no_grad():
        _, experts, _ = layer(x, text, torch.tensor([0, 0]), padding)
        assert isinstance(layer.text_expert, nn.Sequential)
        lin, _, ln, act = list(layer.text_expert)
        assert isinstance(act, nn.LeakyReLU) and act.negative_slope == pytest.approx(0.1)
        t = act(ln(torch.nn.functional.gelu(lin(text.tokens)))) + layer.text_pos.table(L, x)
        for e in range(2):
            v = layer.convs[e](x).flatten(2).transpose(1, 2) + layer.vis_pos.table(16, x)
            q = layer.query_norms[e](v)
            attn = layer.attns[e](q, t, t, key_padding_mask=padding, need_weights=False)[0]
            ref = (v + 1.421 * attn).transpose(1, 2).reshape(2, 16, 4, 4)
            assert torch.allclose(experts[:, e], ref, atol=1e-5)


def test_plain_expert_formula() -> None:
    """Plain-MoE operator (documented choice): expert_e = conv3x3_e(x) * Linear(pooled), broadcast over space."""
    torch.manual_seed(0)
    layer = MoELayer(8, 16, D_T, expert="plain").eval()
    assert not hasattr(layer, "attns") and not hasattr(layer, "scale")
    x = torch.randn(2, 8, 4, 4)
    text = make_text()
    with torch.no_grad():
        _, experts, _ = layer(x, text, torch.tensor([0, 1]))
        u = layer.text_expert(text.pooled)
        for e in range(2):
            assert torch.allclose(experts[:, e], layer.convs[e](x) * u[:, :, None, None], atol=1e-6)


def _with(text: TextFeatures, tokens: Tensor | None = None, pooled: Tensor | None = None) -> TextFeatures:
    return TextFeatures(
        tokens=text.tokens if tokens is None else tokens,
        mask=text.mask,
        pooled=text.pooled if pooled is None else pooled,
    )


def test_text_changes_logits(tmoe: TextMoECore, plain: TextMoECore) -> None:
    image = torch.randn(2, 1, 64, 64)
    modality = torch.tensor([0, 1])
    text = make_text()
    other_tokens = _with(text, tokens=torch.randn_like(text.tokens))
    other_pooled = _with(text, pooled=torch.randn_like(text.pooled))
    with torch.no_grad():
        base = tmoe(image, text, modality)["logits"]
        assert (tmoe(image, other_tokens, modality)["logits"] - base).abs().max().item() > 1e-4
        assert torch.equal(tmoe(image, other_pooled, modality)["logits"], base)  # TMoE reads the tokens only
        base = plain(image, text, modality)["logits"]
        assert (plain(image, other_pooled, modality)["logits"] - base).abs().max().item() > 1e-4
        assert torch.equal(plain(image, other_tokens, modality)["logits"], base)  # Plain-MoE reads pooled only


def test_layer_scale_shared_and_initialised() -> None:
    core = make_core("tmoe")
    layers = core.moe_layers()
    assert len(layers) == 6
    scales = [name for name, _ in core.named_parameters() if name.endswith("scale")]
    assert len(scales) == 6  # one per layer, none per expert
    for layer in layers:
        assert layer.scale.shape == () and layer.scale.item() == pytest.approx(1.421)
        for sub in (*layer.attns, *layer.convs, *layer.query_norms):
            assert not any(n.endswith("scale") for n, _ in sub.named_parameters())
    # the single scalar scales the text term of every expert: expert(s) = expert(0) + s * attn
    torch.manual_seed(1)
    layer = MoELayer(8, 16, D_T).eval()
    x, text, modality = torch.randn(2, 8, 4, 4), make_text(), torch.tensor([0, 1])
    runs = []
    with torch.no_grad():
        for s in (0.0, 1.0, 2.5):
            layer.scale.fill_(s)
            runs.append(layer(x, text, modality)[1])
        layer.scale.fill_(0.0)
        zero_other = layer(x, make_text(seed=7), modality)[1]
    assert torch.allclose(runs[2] - runs[0], 2.5 * (runs[1] - runs[0]), atol=1e-5)
    assert (runs[1] - runs[0]).abs().amax(dim=(0, 2, 3, 4)).min().item() > 1e-4  # both experts use s
    assert torch.allclose(zero_other, runs[0], atol=1e-6)  # s = 0: the experts ignore the text


def test_grayscale_equals_repeated_rgb(tmoe: TextMoECore) -> None:
    image = torch.randn(2, 1, 64, 64)
    text, modality = make_text(), torch.tensor([1, 0])
    with torch.no_grad():
        a = tmoe(image, text, modality)
        b = tmoe(image.repeat(1, 3, 1, 1), text, modality)
    assert torch.equal(a["logits"], b["logits"]) and torch.equal(a["gates"], b["gates"])


def test_padding_mask_hides_padded_states() -> None:
    core = make_core("tmoe")
    image, modality = torch.randn(2, 1, 64, 64), torch.tensor([0, 1])
    text = make_text(lengths=(5, 11))
    noise = torch.randn_like(text.tokens) * 10
    perturbed = _with(text, tokens=torch.where(text.mask.unsqueeze(-1), text.tokens, noise))
    with torch.no_grad():
        a, b = core(image, text, modality), core(image, perturbed, modality)
        assert torch.allclose(a["logits"], b["logits"], atol=1e-6)
        for ea, eb in zip(a["experts"], b["experts"], strict=True):
            assert torch.allclose(ea, eb, atol=1e-5)
        core.use_padding_mask = False  # faithful mode: padded tokens are attended to
        c, d = core(image, text, modality), core(image, perturbed, modality)
    assert (c["logits"] - d["logits"]).abs().max().item() > 1e-5
    assert (a["logits"] - c["logits"]).abs().max().item() > 1e-6
    core.use_padding_mask = True
    empty = TextFeatures(tokens=text.tokens, mask=torch.tensor([[True] * L, [False] * L]), pooled=text.pooled)
    with pytest.raises(RuntimeError, match="text mask has a batch row without a real token"):  # a device assert
        core(image, empty, modality)


@pytest.mark.parametrize("expert", ["tmoe", "plain"])
def test_gradients_reach_every_parameter(expert: str) -> None:
    core = make_core(expert).train()
    out = core(torch.randn(2, 1, 64, 64), make_text(), torch.tensor([0, 1]))
    loss = out["logits"].mean() + sum(e.square().mean() for e in out["experts"]) + out["gates"].square().sum()
    loss.backward()
    no_grad = {name for name, p in core.named_parameters() if p.grad is None}
    assert no_grad == {"vision.layernorm.weight", "vision.layernorm.bias"}  # the unused pooler LN only
    patch = core.vision.embeddings.patch_embeddings.weight.grad
    assert patch is not None and patch.abs().sum().item() > 0
    for layer in core.moe_layers():
        assert layer.gate.weight.grad is not None and layer.gate.weight.grad.abs().sum().item() > 0
        if expert == "tmoe":
            assert layer.scale.grad is not None and layer.scale.grad.abs().item() > 0


def test_bad_inputs(tmoe: TextMoECore) -> None:
    image, text = torch.randn(2, 1, 64, 64), make_text()
    with pytest.raises(RuntimeError, match=r"a modality is out of range \[0, 2\)"):  # a device assert, no sync
        tmoe(image, text, torch.tensor([0, 2]))
    with pytest.raises(RuntimeError, match=r"a modality is out of range"):
        tmoe(image, text, torch.tensor([-1, 1]))
    with pytest.raises(DataError, match="integer tensor of shape \\[2\\]"):
        tmoe(image, text, torch.tensor([0.0, 1.0]))
    with pytest.raises(DataError, match="integer tensor of shape \\[2\\]"):
        tmoe(image, text, torch.tensor([0, 1, 1]))
    with pytest.raises(DataError, match="multiple of 32"):
        tmoe(torch.randn(2, 1, 48, 64), text)
    with pytest.raises(DataError, match="channels"):
        tmoe(torch.randn(2, 2, 64, 64), text)
    with pytest.raises(DataError, match="text tokens"):
        tmoe(torch.randn(3, 1, 64, 64), text)
    with pytest.raises(DataError, match="pooled text"):
        tmoe(image, _with(text, pooled=torch.randn(2, D_T + 1)))
    with pytest.raises(DataError, match="divisible by 3 heads"):
        MoELayer(8, 16, D_T, heads=3)
    with pytest.raises(DataError, match="unknown expert kind 'dense'"):
        MoELayer(8, 16, D_T, expert="dense")  # type: ignore[arg-type]
