"""The fused attention of the networks equals ``nn.MultiheadAttention`` (``textseg/models/attention.py``).

Same weights (the same seed gives the same initialisation), same inputs: the same output and gradients, with and
without key-padding masks, in eval and in training mode (attention dropout on the same random stream); the state
dict keeps MHA's keys; the networks build their key-padding bias once per forward.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import ConvNextConfig, ConvNextModel

from textseg.errors import DataError
from textseg.models.attention import FusedMultiheadAttention, key_padding_bias
from textseg.models.guidedecoder import GuideDecoderCore
from textseg.models.mmiunet import MMIUNetCore
from textseg.models.textmoe import TextMoECore
from textseg.models.types import TextFeatures

WIDTH, HEADS, DROPOUT = 32, 4, 0.3
#: Float-rounding tolerances (the projections run on other layouts than MHA's, so the last bits may differ).
RTOL, ATOL = 1e-5, 1e-6


def pair(heads: int = HEADS, dropout: float = DROPOUT) -> tuple[nn.MultiheadAttention, FusedMultiheadAttention]:
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(WIDTH, heads, dropout=dropout, batch_first=True)
    torch.manual_seed(0)
    fused = FusedMultiheadAttention(WIDTH, heads, dropout=dropout)
    return mha, fused


def inputs(kind: str) -> tuple[Tensor, Tensor, Tensor]:
    """``(query, key, value)`` sharing objects as the networks do."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 10, WIDTH, generator=gen, requires_grad=True)
    m = torch.randn(2, 7, WIDTH, generator=gen, requires_grad=True)
    v = torch.randn(2, 7, WIDTH, generator=gen, requires_grad=True)
    w = torch.randn(2, 10, WIDTH, generator=gen, requires_grad=True)
    return {
        "self": (x, x, x),  # MMI-UNet Interactor self-attention
        "cross": (x, m, m),  # MMI-UNet cross-attention, TextMoE experts
        "shared_qk": (x, x, w),  # GuideDecoder self-attention: q = k = x + PE, v = x
        "distinct": (x, m, v),  # GuideDecoder cross-attention: k = t + PE, v = t
    }[kind]


def padding(kind: str) -> Tensor:
    """A key-padding mask (``True`` = ignore) with one or more real keys per row."""
    length = 10 if kind in ("self", "shared_qk") else 7
    mask = torch.zeros(2, length, dtype=torch.bool)
    mask[0, 4:] = True
    mask[1, -1] = True
    return mask


def run(layer: nn.MultiheadAttention, qkv: tuple[Tensor, Tensor, Tensor], mask: Tensor | None) -> Tensor:
    torch.manual_seed(5)  # the attention-dropout stream
    return layer(*qkv, key_padding_mask=mask, need_weights=False)[0]


def grads(out: Tensor, tensors: list[Tensor]) -> list[Tensor | None]:
    return list(torch.autograd.grad(out.square().sum(), tensors, allow_unused=True))


def test_same_parameters_names_and_initialisation_as_mha() -> None:
    mha, fused = pair()
    assert isinstance(fused, nn.MultiheadAttention)
    assert (
        list(fused.state_dict())
        == list(mha.state_dict())
        == [
            "in_proj_weight",
            "in_proj_bias",
            "out_proj.weight",
            "out_proj.bias",
        ]
    )
    assert [n for n, _ in fused.named_parameters()] == [n for n, _ in mha.named_parameters()]
    for key, value in mha.state_dict().items():
        assert torch.equal(fused.state_dict()[key], value), key


def test_state_dicts_load_both_ways() -> None:
    mha, _ = pair()
    torch.manual_seed(9)
    other = FusedMultiheadAttention(WIDTH, HEADS, dropout=DROPOUT)
    other.load_state_dict(mha.state_dict())  # strict
    mha.load_state_dict(FusedMultiheadAttention(WIDTH, HEADS).state_dict())
    theirs = pair()[0].state_dict()
    assert all(torch.equal(value, theirs[key]) for key, value in other.state_dict().items())


@pytest.mark.parametrize("kind", ["self", "cross", "shared_qk", "distinct"])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("train", [False, True])
def test_output_and_gradients_equal_mha(kind: str, masked: bool, train: bool) -> None:
    mha, fused = pair()
    mha.train(train)
    fused.train(train)
    qkv = inputs(kind)
    mask = padding(kind) if masked else None
    expected, got = run(mha, qkv, mask), run(fused, qkv, mask)
    torch.testing.assert_close(got, expected, rtol=RTOL, atol=ATOL)
    leaves = list(dict.fromkeys(qkv))
    ours, theirs = grads(got, [*leaves, *fused.parameters()]), grads(expected, [*leaves, *mha.parameters()])
    for a, b in zip(ours, theirs, strict=True):
        assert a is not None and b is not None
        torch.testing.assert_close(a, b, rtol=RTOL, atol=ATOL)


def test_dropout_only_in_training_and_read_at_call_time() -> None:
    _, fused = pair()
    qkv = inputs("cross")
    eval_out = run(fused.eval(), qkv, None)
    fused.train()
    assert not torch.allclose(run(fused, qkv, None), eval_out)
    fused.dropout = 0.0  # as tests/methods/test_ddp.py switches attention dropout off
    torch.testing.assert_close(run(fused, qkv, None), eval_out, rtol=0, atol=0)


def test_prebuilt_float_mask_equals_the_boolean_mask() -> None:
    _, fused = pair()
    fused.eval()
    qkv, mask = inputs("cross"), padding("cross")
    bias = key_padding_bias(mask, torch.float32)
    assert bias is not None and bias.shape == mask.shape
    assert torch.equal(bias, torch.zeros(2, 7).masked_fill(mask, float("-inf")))
    assert key_padding_bias(bias, torch.float32) is bias and key_padding_bias(None, torch.float32) is None
    torch.testing.assert_close(run(fused, qkv, bias), run(fused, qkv, mask), rtol=0, atol=0)
    with pytest.raises(DataError, match="key-padding mask"):
        key_padding_bias(mask[:, None, None, :], torch.float32)
    with pytest.raises(DataError, match="key-padding mask"):
        key_padding_bias(mask.long(), torch.float32)


def test_other_calls_are_mhas_own() -> None:
    mha, fused = pair()
    mha.eval()
    fused.eval()
    x = inputs("self")[0]
    out, weights = fused(x, x, x)  # need_weights=True by default, as in MHA
    expected, expected_weights = mha(x, x, x)
    assert weights is not None and expected_weights is not None
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    torch.testing.assert_close(weights, expected_weights, rtol=0, atol=0)
    causal = nn.Transformer.generate_square_subsequent_mask(10)
    torch.testing.assert_close(
        fused(x, x, x, attn_mask=causal, need_weights=False)[0], mha(x, x, x, attn_mask=causal, need_weights=False)[0]
    )


def test_heads_must_divide_the_width() -> None:
    with pytest.raises(DataError, match="not divisible by 3 heads"):
        FusedMultiheadAttention(32, 3)


# ----------------------------------------------------------------------------------------------------
# The networks: every attention is fused, and the key-padding bias is built once per forward.


class _Ops(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter[str] = Counter()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        self.ops[func._overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def _tiny_vision() -> ConvNextModel:
    return ConvNextModel(ConvNextConfig(depths=[1, 1, 1, 1], hidden_sizes=[16, 32, 64, 128]))


def _text(dim: int = 24, length: int = 8) -> TextFeatures:
    gen = torch.Generator().manual_seed(1)
    mask = torch.zeros(2, length, dtype=torch.bool)
    mask[0, :5] = True
    mask[1, :3] = True
    return TextFeatures(torch.randn(2, length, dim, generator=gen), mask, torch.randn(2, dim, generator=gen))


@pytest.mark.parametrize("backbone", ["mmiunet", "guidedecoder", "textmoe"])
def test_networks_use_the_fused_attention_and_one_mask(backbone: str) -> None:
    torch.manual_seed(0)
    net: nn.Module
    extra: dict[str, Tensor] = {}
    if backbone == "mmiunet":
        net = MMIUNetCore(_tiny_vision(), 24, ffn_dim=16, project_dim=16)
    elif backbone == "guidedecoder":
        net = GuideDecoderCore(_tiny_vision(), 24, project_dim=16, input_text_length=8)
    else:
        net, extra = TextMoECore(_tiny_vision(), 24), {"modality": torch.tensor([0, 1])}
    attentions = [m for m in net.modules() if isinstance(m, nn.MultiheadAttention)]
    assert attentions and all(type(m) is FusedMultiheadAttention for m in attentions)
    with torch.no_grad(), _Ops() as mode:
        net.eval()(torch.randn(2, 1, 64, 64), _text(), **extra)
    # MHA turned the boolean mask into a float one in every masked call (zeros_like + masked_fill_)
    assert mode.ops["masked_fill_"] == (0 if backbone == "guidedecoder" else 1)
    assert mode.ops["zeros_like"] == 0
