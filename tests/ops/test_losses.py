from __future__ import annotations

import math

import pytest
import torch

from textseg.errors import DataError
from textseg.ops.losses import build_seg_loss, clip_loss, differential_loss, itcl_loss, position_affinity

# ---------- segmentation

LOGITS = [[2.0, -1.0, 0.0, 1.0], [-2.0, 0.5, 1.0, -1.0]]
TARGET = [[1.0, 0.0, 0.0, 1.0], [0.0, 0.0, 1.0, 0.0]]


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _manual_dice_bce() -> tuple[float, float]:
    """MONAI-default soft Dice (per sample, smooth 1e-5, mean) and mean BCE, by hand."""
    dice, bce = 0.0, 0.0
    for zs, ys in zip(LOGITS, TARGET, strict=True):
        p = [_sigmoid(z) for z in zs]
        inter = sum(a * b for a, b in zip(p, ys, strict=True))
        dice += 1.0 - (2.0 * inter + 1e-5) / (sum(p) + sum(ys) + 1e-5)
        bce += sum(-(t * math.log(q) + (1 - t) * math.log(1 - q)) for q, t in zip(p, ys, strict=True))
    return dice / 2, bce / 8


def _case() -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tensor(LOGITS).view(2, 1, 2, 2), torch.tensor(TARGET).view(2, 1, 2, 2)


def test_seg_loss_golden() -> None:
    logits, target = _case()
    dice, bce = _manual_dice_bce()
    assert dice + bce == pytest.approx(0.762180162, abs=1e-8)  # the hand numbers themselves
    dice_ce = build_seg_loss("dice_ce")(logits, target)
    dice_only = build_seg_loss("dice_only")(logits, target)
    assert dice_ce.item() == pytest.approx(dice + bce, abs=1e-6)
    assert dice_only.item() == pytest.approx(dice, abs=1e-6)
    assert dice_ce.item() - dice_only.item() == pytest.approx(bce, abs=1e-6)
    assert build_seg_loss()(logits, target).item() == pytest.approx(dice_ce.item())


def test_seg_loss_fp32_under_autocast_and_grad() -> None:
    logits, target = _case()
    ref = build_seg_loss()(logits, target).item()
    x = logits.to(torch.bfloat16).requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = build_seg_loss()(x, target.to(torch.bfloat16))
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(ref, abs=2e-2)
    loss.backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    perfect = build_seg_loss()(torch.where(target > 0, 20.0, -20.0), target)
    assert perfect.item() < 1e-6


def test_seg_loss_errors() -> None:
    logits, target = _case()
    with pytest.raises(DataError, match="shape"):
        build_seg_loss()(logits, target[:, :, :1])
    with pytest.raises(DataError, match="kind"):
        build_seg_loss("bce")  # type: ignore[arg-type]
    with pytest.raises(DataError):
        build_seg_loss()(logits.repeat(1, 2, 1, 1), target.repeat(1, 2, 1, 1))


# ---------- ITCL


def test_position_affinity_golden() -> None:
    q = torch.tensor(
        [
            [1, 1, 0, 0, 0, 0],
            [1, 0, 0, 0, 0, 0],
            [0, 0, 0, 0, 0, 0],
            [0, 0, 0, 0, 0, 0],
            [0, 1, 1, 1, 0, 0],
        ]
    )
    a = position_affinity(q)
    expected = torch.tensor(
        [
            [1.0, 0.5, 0.0, 0.0, 0.25],
            [0.5, 1.0, 0.0, 0.0, 0.0],
            [0.0, 0.0, 1.0, 0.0, 0.0],  # two all-zero labels: union set to 1 -> 0 off the diagonal
            [0.0, 0.0, 0.0, 1.0, 0.0],
            [0.25, 0.0, 0.0, 0.0, 1.0],
        ]
    )
    assert torch.equal(a, expected)
    with pytest.raises(RuntimeError, match=r"positional labels must lie in \[0, 1\]"):  # a device assert
        position_affinity(torch.tensor([[2, 0], [0, 1]]))


def test_itcl_golden_hand_case() -> None:
    # v normalises to [1, 0], [0, 1]; u to [1, 0], [0.6, 0.8]; tau = 0.5 -> S = [[2, 1.2], [0, 1.6]].
    v = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    u = torch.tensor([[3.0, 0.0], [0.6, 0.8]])
    q = torch.tensor([[1, 1, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0]])  # Jaccard 1/2 -> A = [[1, .5], [.5, 1]]
    lse1 = math.log(math.exp(2.0) + math.exp(1.2))  # row 1 of S
    lse2 = math.log(1.0 + math.exp(1.6))  # row 2 of S
    lse3 = math.log(math.exp(2.0) + 1.0)  # row 1 of S^T = [2, 0]
    lse4 = math.log(math.exp(1.2) + math.exp(1.6))  # row 2 of S^T = [1.2, 1.6]
    i2t = [-(1.0 * (2.0 - lse1) + 0.5 * (1.2 - lse1)) / 1.5, -(0.5 * (0.0 - lse2) + 1.0 * (1.6 - lse2)) / 1.5]
    t2i = [-(1.0 * (2.0 - lse3) + 0.5 * (0.0 - lse3)) / 1.5, -(0.5 * (1.2 - lse4) + 1.0 * (1.6 - lse4)) / 1.5]
    hand = (sum(i2t) + sum(t2i)) / 4
    assert hand == pytest.approx(0.69873619, abs=1e-7)
    assert itcl_loss(v, u, q, temperature=0.5).item() == pytest.approx(hand, abs=1e-6)
    # CLIP on the same batch keeps only the diagonal positives.
    clip_hand = (-(2.0 - lse1) - (1.6 - lse2) - (2.0 - lse3) - (1.6 - lse4)) / 4
    assert clip_loss(v, u, temperature=0.5).item() == pytest.approx(clip_hand, abs=1e-6)


def test_itcl_equals_clip_with_identity_affinity() -> None:
    g = torch.Generator().manual_seed(0)
    v, u = torch.randn(6, 16, generator=g), torch.randn(6, 16, generator=g)
    q = torch.eye(6, dtype=torch.long)  # distinct one-hot regions -> A = I
    assert torch.equal(position_affinity(q), torch.eye(6))
    assert itcl_loss(v, u, q).item() == pytest.approx(clip_loss(v, u).item(), rel=1e-6)
    assert itcl_loss(v, u, q, 0.2).item() == pytest.approx(clip_loss(v, u, 0.2).item(), rel=1e-6)


def test_itcl_aligned_lower_than_shuffled() -> None:
    g = torch.Generator().manual_seed(1)
    v = torch.randn(8, 32, generator=g)
    u = v + 0.1 * torch.randn(8, 32, generator=g)
    q = torch.eye(6, dtype=torch.long)[torch.tensor([0, 1, 2, 3, 4, 5, 0, 3])]
    aligned = itcl_loss(v, u, q).item()
    shuffled = itcl_loss(v, u[torch.tensor([3, 0, 1, 2, 7, 4, 5, 6])], q).item()
    assert aligned < shuffled
    assert aligned < clip_loss(v, u[torch.tensor([3, 0, 1, 2, 7, 4, 5, 6])]).item()


def test_itcl_fp32_autocast_grad_and_errors() -> None:
    g = torch.Generator().manual_seed(2)
    v = torch.randn(4, 8, generator=g).requires_grad_(True)
    u = torch.randn(4, 8, generator=g)
    q = torch.tensor([[1, 0, 0, 1, 0, 0], [1, 1, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0], [0, 0, 1, 0, 0, 1]])
    ref = itcl_loss(v, u, q).item()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = itcl_loss(v.to(torch.bfloat16), u.to(torch.bfloat16), q)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(ref, rel=2e-2)
    loss.backward()
    assert v.grad is not None and v.grad.abs().sum() > 0
    assert itcl_loss(v[:1], u[:1], q[:1]).item() == pytest.approx(0.0, abs=1e-7)
    with pytest.raises(DataError):
        itcl_loss(v, u[:3], q)
    with pytest.raises(DataError):
        itcl_loss(v, u, q[:3])
    with pytest.raises(DataError, match="temperature"):
        clip_loss(v, u, temperature=0.0)


# ---------- TextMoE differential loss (Eq. 8)


def _orthogonal_pair(b: int, c: int, h: int, w: int, seed: int) -> torch.Tensor:
    """``[B, 2, C, H, W]`` with expert 1 Gram-Schmidt-orthogonalised against expert 0 per sample."""
    g = torch.Generator().manual_seed(seed)
    e0 = torch.randn(b, c * h * w, generator=g, dtype=torch.float64)
    e1 = torch.randn(b, c * h * w, generator=g, dtype=torch.float64)
    e1 = e1 - (e1 * e0).sum(1, keepdim=True) / (e0 * e0).sum(1, keepdim=True) * e0
    return torch.stack([e0, e1], dim=1).view(b, 2, c, h, w)


def test_differential_loss_golden_extremes() -> None:
    ortho = _orthogonal_pair(3, 2, 4, 5, seed=0)
    assert differential_loss([ortho]).item() == pytest.approx(0.0, abs=1e-12)
    g = torch.Generator().manual_seed(1)
    e = torch.randn(3, 1, 2, 4, 5, generator=g)
    same = torch.cat([e, e], dim=1)
    opposite = torch.cat([e, -e], dim=1)
    scaled = torch.cat([e, 3.0 * e], dim=1)
    assert differential_loss([same]).item() == pytest.approx(1.0, abs=1e-6)
    assert differential_loss([opposite]).item() == pytest.approx(1.0, abs=1e-6)
    assert differential_loss([scaled]).item() == pytest.approx(1.0, abs=1e-6)
    assert differential_loss([same], mode="raw_cosine_width").item() == pytest.approx(1.0, abs=1e-6)
    assert differential_loss([opposite], mode="raw_cosine_width").item() == pytest.approx(-1.0, abs=1e-6)
    # Mean over layers: identical, orthogonal and opposite layers average to 2/3.
    layers = [same, ortho.float(), opposite]
    assert differential_loss(layers).item() == pytest.approx(2.0 / 3.0, abs=1e-6)
    # An all-zero expert has cosine 0 (eps floor), not NaN.
    zero = torch.cat([e, torch.zeros_like(e)], dim=1)
    assert differential_loss([zero]).item() == 0.0
    assert differential_loss([zero], mode="raw_cosine_width").item() == 0.0


def test_differential_loss_hand_case() -> None:
    # Layer 1: B = 2, E = 2, C = H = 1, W = 3.
    layer1 = torch.tensor([[[1.0, 2.0, 2.0], [2.0, 0.0, 1.0]], [[1.0, 0.0, 0.0], [1.0, 1.0, 0.0]]]).view(2, 2, 1, 1, 3)
    cos_a = 4.0 / (3.0 * math.sqrt(5.0))  # 4 / (3 * sqrt 5)
    cos_b = 1.0 / math.sqrt(2.0)
    # Layer 2: B = 1, E = 3, W = 2: pairs (0, 1) -> 0, (0, 2) -> 1/2, (1, 2) -> 1/2 after squaring.
    layer2 = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]).view(1, 3, 1, 1, 2)
    squared = ((cos_a**2 + cos_b**2) / 2 + (0.0 + 0.5 + 0.5) / 3) / 2
    assert squared == pytest.approx(0.38055556, abs=1e-8)  # (16/45 + 1/2) / 4 + 1/6
    assert differential_loss([layer1, layer2]).item() == pytest.approx(squared, abs=1e-7)
    # The public code's variant: raw cosine, experts 0 and 1 only, along W.
    raw = ((cos_a + cos_b) / 2 + 0.0) / 2
    assert differential_loss([layer1, layer2], mode="raw_cosine_width").item() == pytest.approx(raw, abs=1e-7)
    # Along W differs from the flattened cosine: rows [1, 0] . [1, 0] -> 1 and [0, 1] . [1, 0] -> 0.
    rows = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [1.0, 0.0]]]).view(1, 2, 1, 2, 2)
    assert differential_loss([rows], mode="raw_cosine_width").item() == pytest.approx(0.5, abs=1e-7)
    assert differential_loss([rows]).item() == pytest.approx(0.25, abs=1e-7)  # (1 / 2)^2


def test_differential_loss_random_case_matches_formula() -> None:
    g = torch.Generator().manual_seed(5)
    layers = [torch.randn(2, 2, 3, 4, 4, generator=g), torch.randn(2, 2, 2, 2, 8, generator=g)]
    expected = []
    for feat in layers:
        vals = []
        for b in range(feat.shape[0]):
            a, c = feat[b, 0].flatten().tolist(), feat[b, 1].flatten().tolist()
            dot = sum(x * y for x, y in zip(a, c, strict=True))
            vals.append((dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in c)))) ** 2)
        expected.append(sum(vals) / len(vals))
    assert differential_loss(layers).item() == pytest.approx(sum(expected) / 2, rel=1e-5)


def test_differential_loss_fp32_autocast_grad_and_errors() -> None:
    g = torch.Generator().manual_seed(3)
    feat = torch.randn(2, 2, 3, 4, 4, generator=g).requires_grad_(True)
    ref = differential_loss([feat]).item()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = differential_loss([feat.to(torch.bfloat16)])
    assert loss.dtype == torch.float32 and loss.dim() == 0
    assert loss.item() == pytest.approx(ref, abs=2e-2)
    loss.backward()
    assert feat.grad is not None and feat.grad.abs().sum() > 0
    assert differential_loss([feat.double()]).dtype == torch.float64
    with pytest.raises(DataError, match="empty"):
        differential_loss([])
    with pytest.raises(DataError, match="at least 2"):
        differential_loss([feat[:, :1]])
    with pytest.raises(DataError, match="B, E, C, H, W"):
        differential_loss([feat[:, 0]])
    with pytest.raises(DataError, match="floating"):
        differential_loss([feat.long()])
    with pytest.raises(DataError, match="mode"):
        differential_loss([feat], mode="cosine")  # type: ignore[arg-type]
