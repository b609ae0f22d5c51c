"""A batched call over several parts is the separate calls: per-part BatchNorm statistics (``models/parts.py``)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from textseg.methods import SemiMedRefModule, TextMoEModule
from textseg.models.parts import (
    PartBatchNorm2d,
    batchnorm_parts,
    convert_part_batchnorm,
    part_norms,
    run_parts,
)
from textseg.models.types import SegOutput, TextFeatures

TEXTS = [
    "Bilateral pulmonary infection, two infected areas, lower left lung and middle right lung.",
    "Unilateral pulmonary infection, one infected area, upper right lung.",
    "Left lung, lower zone.",
    "Bilateral pulmonary infection, two infected areas, upper left lung and upper right lung.",
    "Unilateral pulmonary infection, one infected area, middle left lung.",
]
SIZES = (2, 1, 2)  # unequal parts, as labeled and unlabeled batches may be


def _bn_state(net: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in net.state_dict().items() if "running" in k or "num_batches" in k}


def test_part_batchnorm_is_separate_calls() -> None:
    torch.manual_seed(0)
    x = torch.randn(5, 3, 4, 4) * 3 + 1
    parts = PartBatchNorm2d(3)
    with torch.no_grad():
        parts.weight.uniform_(0.5, 1.5)
        parts.bias.uniform_(-1, 1)
    single = PartBatchNorm2d(3)
    single.load_state_dict(parts.state_dict())
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    with batchnorm_parts([parts], SIZES):
        batched = parts(xa)
    separate = torch.cat([single(p) for p in xb.split(SIZES)])
    torch.testing.assert_close(batched, separate)
    # not pooled: each part is normalised to zero mean by its own statistics
    first_part = (batched - parts.bias[:, None, None])[:2].mean((0, 2, 3))
    torch.testing.assert_close(first_part, torch.zeros(3), atol=1e-5, rtol=0)
    weights = torch.randn_like(batched)
    (batched * weights).sum().backward()
    (separate * weights).sum().backward()
    torch.testing.assert_close(xa.grad, xb.grad)
    torch.testing.assert_close(parts.weight.grad, single.weight.grad)
    torch.testing.assert_close(parts.bias.grad, single.bias.grad)
    for key, value in parts.state_dict().items():
        torch.testing.assert_close(value, single.state_dict()[key])  # running statistics updated in part order
    assert int(parts.num_batches_tracked) == 3
    assert parts.part_sizes is None  # the context resets the layers


def test_plain_batchnorm_without_parts_and_in_eval() -> None:
    torch.manual_seed(1)
    x = torch.randn(4, 2, 3, 3)
    plain, parts = nn.BatchNorm2d(2), PartBatchNorm2d(2)
    torch.testing.assert_close(parts(x), plain(x))
    parts.eval(), plain.eval()
    with batchnorm_parts([parts], (2, 2)):
        torch.testing.assert_close(parts(x), plain(x))  # running statistics: nothing to keep apart


def test_convert_keeps_tensors_and_keys() -> None:
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Sequential(nn.BatchNorm2d(2, momentum=0.3)))
    net[1].weight.requires_grad_(False)
    before = dict(net.state_dict(keep_vars=True))
    convert_part_batchnorm(net)
    assert type(net[1]) is PartBatchNorm2d and type(net[2][0]) is PartBatchNorm2d
    assert net[2][0].momentum == 0.3
    after = dict(net.state_dict(keep_vars=True))
    assert list(after) == list(before)
    assert all(after[k] is before[k] for k in before)  # the same tensor objects
    assert not net[1].weight.requires_grad
    assert part_norms(net) == [net[1], net[2][0]]
    assert part_norms(nn.SyncBatchNorm.convert_sync_batchnorm(nn.Sequential(nn.BatchNorm2d(2)))) is None


def _module(backbone: str) -> SemiMedRefModule | TextMoEModule:
    torch.manual_seed(0)
    tiny = {"vision_encoder": "tiny", "text_encoder": "tiny", "project_dim": 16}
    if backbone == "textmoe":
        return TextMoEModule(**tiny)
    return SemiMedRefModule(backbone=backbone, **tiny)


def _no_dropout(net: nn.Module) -> None:
    for m in net.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
        if hasattr(m, "dropout") and isinstance(m.dropout, float):
            m.dropout = 0.0


@pytest.mark.parametrize("backbone", ["guidedecoder", "mmiunet", "textmoe"])
def test_network_batched_call_is_separate_calls(backbone: str) -> None:
    module = _module(backbone)
    net = module.net
    norms = part_norms(net)
    assert norms is not None  # build_core converts every BatchNorm
    assert any(isinstance(m, PartBatchNorm2d) for m in net.modules())
    _no_dropout(net)
    net.train()
    images = torch.randn(5, 1, 64, 64)
    codes = torch.tensor([0, 1, 0, 1, 1])
    starts = [0, 2, 3]
    parts = [(images[s : s + n], TEXTS[s : s + n], codes[s : s + n]) for s, n in zip(starts, SIZES, strict=True)]

    def call(image: torch.Tensor, texts: list[str], modality: torch.Tensor | None) -> SegOutput:
        return module(image, texts, net, modality)

    features = module.text_encoder(TEXTS)

    def loss(outs: list) -> torch.Tensor:
        total = sum(o["logits"].square().mean() * (i + 1) for i, o in enumerate(outs))
        return total + sum(o["image_embed"].sum() + o["text_embed"].sum() for o in outs if "image_embed" in o)

    state = {k: v.clone() for k, v in net.state_dict().items()}
    separate = [call(*p) for p in parts]
    loss(separate).backward()
    grads = {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}
    stats = _bn_state(net)
    net.load_state_dict(state)
    net.zero_grad()
    images, codes = [p[0] for p in parts], [p[2] for p in parts]
    batched = run_parts(lambda image, modality: module(image, features, net, modality), norms, images, codes)
    loss(batched).backward()
    for one, other in zip(batched, separate, strict=True):
        assert one.keys() == other.keys()
        for key in ("logits", "image_embed", "text_embed", "gates"):
            if key in one:
                torch.testing.assert_close(one[key], other[key], rtol=1e-4, atol=1e-5)
    assert grads, "the loss reaches the parameters"
    for name, param in net.named_parameters():
        if name in grads:
            torch.testing.assert_close(param.grad, grads[name], rtol=1e-3, atol=1e-5, msg=name)
    for key, value in _bn_state(net).items():
        torch.testing.assert_close(value, stats[key], msg=key)


def test_parts_trace_as_one_graph() -> None:
    module = _module("mmiunet")
    net = module.net.train()
    text = module.text_encoder(TEXTS)
    with batchnorm_parts(part_norms(net) or [], SIZES):
        explained = torch._dynamo.explain(net)(torch.randn(5, 1, 64, 64), text)
    assert explained.graph_break_count == 0


def test_text_features_split_cat_where() -> None:
    torch.manual_seed(0)
    a = TextFeatures(torch.randn(3, 4, 2), torch.rand(3, 4) > 0.5, torch.randn(3, 2))
    b = TextFeatures(torch.randn(3, 4, 2), torch.rand(3, 4) > 0.5, torch.randn(3, 2))
    parts = a.split([1, 2])
    assert [len(p) for p in parts] == [1, 2]
    joined = TextFeatures.cat([*parts, b])
    assert len(joined) == 6 and TextFeatures.cat([a]) is a
    torch.testing.assert_close(joined.tokens[3:], b.tokens)
    picked = a.where(torch.tensor([True, False, True]), b)
    for key in ("tokens", "mask", "pooled"):
        got, mine, other = getattr(picked, key), getattr(a, key), getattr(b, key)
        assert torch.equal(got[0], mine[0]) and torch.equal(got[1], other[1]) and torch.equal(got[2], mine[2])
