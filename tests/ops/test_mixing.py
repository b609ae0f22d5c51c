from __future__ import annotations

import math

import pytest
import torch

from textseg.errors import DataError
from textseg.ops.boxes import (
    boxes_to_mask,
    cutmix_boxes,
    position_boxes,
    region_box,
    sample_box_blocks,
    sample_prob_blocks,
    sample_random_blocks,
)
from textseg.ops.mixing import (
    MixResult,
    confident_fraction,
    lesion_gate,
    pseudo_label,
    random_permutation,
    t_patchmix,
)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _bbox(mask2d: torch.Tensor) -> tuple[int, int, int, int]:
    rows = torch.nonzero(mask2d.any(dim=1)).flatten()
    cols = torch.nonzero(mask2d.any(dim=0)).flatten()
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


# ---------- region boxes


def test_region_box_golden() -> None:
    assert region_box("left", ["upper"], 224, 224) == (0, 74, 0, 112)
    assert region_box("right", ["lower"], 224, 224) == (149, 224, 112, 224)
    assert region_box("left", ["middle"], 224, 224) == (74, 149, 0, 112)
    assert region_box("right", ["middle", "lower"], 224, 224) == (74, 224, 112, 224)
    assert region_box("left", ["lower", "upper"], 224, 224) == (0, 224, 0, 112)  # union span
    assert region_box("left", ["upper", "middle", "lower"], 224, 224) == (0, 224, 0, 112)
    assert region_box("right", [], 224, 224) == (0, 224, 112, 224)
    assert region_box("left", ["Middle"], 10, 7) == (3, 6, 0, 3)
    assert region_box("right", (), 10, 7) == (0, 10, 3, 7)
    with pytest.raises(DataError, match="side"):
        region_box("center", ["upper"], 224, 224)  # type: ignore[arg-type]
    with pytest.raises(DataError, match="level"):
        region_box("left", ["top"], 224, 224)


# ---------- samplers


def test_box_blocks_confined_sized_and_allowed() -> None:
    h = w = 48
    boxes = torch.tensor(
        [
            region_box("left", ["upper"], h, w),  # 16 x 24 -> 16 x 16 block
            region_box("right", ["lower"], h, w),
            region_box("left", ["middle"], h, w),  # disallowed
            [40, 48, 30, 35],  # 8 x 5 box smaller than the block -> clipped to the box
            [0, 0, 0, 0],  # junk box, disallowed -> ignored
        ]
    )
    allowed = torch.tensor([True, True, False, True, False])
    for seed in range(20):
        m = sample_box_blocks(boxes, allowed, block=16, prob=1.0, height=h, width=w, generator=_gen(seed))
        assert m.shape == (5, 1, h, w) and m.dtype == torch.float32
        assert set(m.unique().tolist()) <= {0.0, 1.0}
        for i in range(5):
            if not allowed[i]:
                assert m[i].sum() == 0
                continue
            r0, r1, c0, c1 = boxes[i].tolist()
            outside = m[i, 0].clone()
            outside[r0:r1, c0:c1] = 0
            assert outside.sum() == 0
            expected = (min(16, r1 - r0), min(16, c1 - c0))
            br0, br1, bc0, bc1 = _bbox(m[i, 0] > 0)
            assert (br1 - br0, bc1 - bc0) == expected
            assert m[i].sum() == expected[0] * expected[1]  # one solid rectangle
    none = sample_box_blocks(boxes, allowed, block=16, prob=0.0, height=h, width=w, generator=_gen(0))
    assert none.sum() == 0


def test_box_blocks_uniform_positions_and_rate() -> None:
    h, w = 30, 40
    boxes = torch.tensor([[0, 16, 10, 30]]).repeat(400, 1)  # 1 row slot, 5 column slots for a 16-block
    m = sample_box_blocks(boxes, torch.ones(400, dtype=torch.bool), 16, 1.0, h, w, _gen(3))
    lefts = torch.tensor([_bbox(m[i, 0] > 0)[2] for i in range(400)])
    counts = torch.bincount(lefts - 10, minlength=5)
    assert counts.numel() == 5 and bool((counts > 50).all())  # every fitting position, roughly uniform
    m2 = sample_box_blocks(boxes, torch.ones(400, dtype=torch.bool), 16, 0.25, h, w, _gen(4))
    rate = (m2.flatten(1).sum(1) > 0).float().mean().item()
    assert abs(rate - 0.25) < 0.07


def test_box_blocks_bad_box_raises() -> None:
    with pytest.raises(RuntimeError, match="a box is empty or outside the 32x32 image"):  # a device assert
        sample_box_blocks(torch.tensor([[0, 40, 0, 10]]), torch.tensor([True]), 16, 1.0, 32, 32, _gen(0))
    with pytest.raises(DataError, match="block"):
        sample_box_blocks(torch.tensor([[0, 4, 0, 4]]), torch.tensor([True]), 0, 1.0, 32, 32, _gen(0))
    with pytest.raises(DataError, match="prob"):
        sample_box_blocks(torch.tensor([[0, 4, 0, 4]]), torch.tensor([True]), 2, 1.5, 32, 32, _gen(0))


def test_random_blocks() -> None:
    m = sample_random_blocks(64, block=8, prob=1.0, height=20, width=24, generator=_gen(0))
    assert m.shape == (64, 1, 20, 24)
    assert bool((m.flatten(1).sum(1) == 64).all())
    assert not torch.equal(m[0], m[1]) or not torch.equal(m[1], m[2])
    big = sample_random_blocks(2, block=50, prob=1.0, height=20, width=24, generator=_gen(0))
    assert bool((big == 1).all())  # block larger than the image is clipped to the image


def test_prob_blocks_centred_on_candidate() -> None:
    p = torch.zeros(4, 1, 32, 32)
    p[0, 0, 10, 12] = 0.9  # single candidate in the interior
    p[1, 0, 1, 30] = 0.8  # near the corner: block shifted inside
    p[3, 0, 5:20, 3:9] = 0.7  # region of candidates
    m = sample_prob_blocks(p, threshold=0.55, block=8, prob=1.0, generator=_gen(0))
    assert _bbox(m[0, 0] > 0) == (6, 14, 8, 16)
    assert _bbox(m[1, 0] > 0) == (0, 8, 24, 32)
    assert m[2].sum() == 0  # no pixel above the threshold -> no block
    assert m[3].sum() == 64
    for seed in range(10):
        m = sample_prob_blocks(p, 0.55, 8, 1.0, _gen(seed))
        r0, _, c0, _ = _bbox(m[3, 0] > 0)
        assert p[3, 0, r0 + 4, c0 + 4] >= 0.55  # the centre pixel is a candidate
    assert sample_prob_blocks(p, 0.55, 8, 0.0, _gen(0)).sum() == 0


def test_cutmix_boxes() -> None:
    m = cutmix_boxes(200, 64, 48, _gen(0), area=(0.1, 0.3))
    frac = m.flatten(1).mean(1)
    assert m.shape == (200, 1, 64, 48)
    assert bool((frac > 0.07).all()) and bool((frac < 0.35).all())
    for i in range(5):
        r0, r1, c0, c1 = _bbox(m[i, 0] > 0)
        assert m[i].sum() == (r1 - r0) * (c1 - c0)  # a rectangle
    assert torch.equal(m, cutmix_boxes(200, 64, 48, _gen(0), area=(0.1, 0.3)))
    assert not torch.equal(m, cutmix_boxes(200, 64, 48, _gen(1), area=(0.1, 0.3)))
    assert cutmix_boxes(10, 16, 16, _gen(0), prob=0.0).sum() == 0
    with pytest.raises(DataError, match="area"):
        cutmix_boxes(2, 16, 16, _gen(0), area=(0.5, 0.2))


def test_boxes_to_mask() -> None:
    m = boxes_to_mask(torch.tensor([[1, 3, 0, 2], [0, 4, 2, 4]]), 4, 4, torch.tensor([True, False]))
    expected = torch.zeros(2, 1, 4, 4)
    expected[0, 0, 1:3, 0:2] = 1
    assert torch.equal(m, expected)


# ---------- gate and mix


def test_lesion_gate_golden() -> None:
    masks = torch.zeros(2, 1, 4, 4)
    masks[0, 0, :2, :2] = 1
    probs = torch.zeros(2, 1, 4, 4)
    probs[0, 0, :2, :2] = torch.tensor([[0.9, 0.7], [0.3, 0.5]])
    probs[0, 0, 3, 3] = 1.0  # outside the block: ignored
    gated, r = lesion_gate(masks, probs, delta=0.55)
    assert r[0].item() == pytest.approx(2.4 / (4 + 1e-6), rel=1e-7)
    assert r[1].item() == 0.0  # empty mask
    assert torch.equal(gated, masks)
    gated, r = lesion_gate(masks, probs, delta=0.6)  # r = 0.59999985 < 0.6 because of eps
    assert r[0].item() < 0.6
    assert gated.sum() == 0


def _setup(b: int = 4, c: int = 2, h: int = 8, w: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    g = _gen(123)
    return torch.randn(b, c, h, w, generator=g), torch.rand(b, 1, h, w, generator=g)


def test_gate_accepts_high_partner_prob() -> None:
    images, _ = _setup()
    probs = torch.full((4, 1, 8, 8), 0.9)
    probs[0] = 0.2  # sample 0 itself is background everywhere
    perm = torch.tensor([1, 0, 3, 2])
    masks = torch.zeros(4, 1, 8, 8)
    masks[0, 0, 2:6, 1:5] = 1
    out = t_patchmix(images, probs, perm, masks)
    assert isinstance(out, MixResult)
    assert out.accepted.tolist() == [True, False, False, False]
    assert out.ratio[0].item() == pytest.approx(0.9, rel=1e-5)
    assert torch.equal(out.image[0, :, 2:6, 1:5], images[1, :, 2:6, 1:5])
    outside = masks[0, 0] == 0
    assert torch.equal(out.image[0][:, outside], images[0][:, outside])
    assert torch.equal(out.target[0, 0], masks[0, 0])  # 1 inside (p_j = 0.9), 0 outside (p_i = 0.2)
    assert torch.equal(out.image[1:], images[1:])
    assert torch.equal(out.mask, masks)


def test_gate_rejects_low_partner_prob_before_and_after_paste() -> None:
    images, own = _setup()
    probs = own.clone()
    probs[1] = 0.1  # the partner of sample 0 has no lesion
    perm = torch.tensor([1, 0, 3, 2])
    masks = torch.zeros(4, 1, 8, 8)
    masks[0, 0, 0:4, 4:8] = 1
    expected_target = (probs >= 0.5).float()

    gated = t_patchmix(images, probs, perm, masks, gate_before_paste=True)
    assert not bool(gated.accepted[0])
    assert gated.ratio[0].item() == pytest.approx(0.1, rel=1e-5)
    assert torch.equal(gated.image, images)  # rejected block not pasted
    assert torch.equal(gated.target, expected_target)
    assert gated.mask.sum() == 0

    legacy = t_patchmix(images, probs, perm, masks, gate_before_paste=False)
    assert not bool(legacy.accepted[0])
    assert torch.equal(legacy.image[0, :, 0:4, 4:8], images[1, :, 0:4, 4:8])  # pasted anyway
    assert torch.equal(legacy.target, expected_target)  # target still p_i
    assert torch.equal(legacy.mask, masks)


def test_same_mask_mixes_images_and_pseudo_labels() -> None:
    g = _gen(7)
    b, h, w = 6, 16, 16
    images = torch.randn(b, 3, h, w, generator=g)
    probs = torch.rand(b, 1, h, w, generator=g) * 0.6
    probs[:, :, 5:11, 5:11] += 0.5  # lesion-like blob so that some blocks pass the gate
    probs = probs.clamp(max=1.0)
    perm = random_permutation(b, g)
    masks = sample_random_blocks(b, 6, 1.0, h, w, g)
    out = t_patchmix(images, probs, perm, masks, delta=0.55)
    assert 0 < int(out.accepted.sum()) < b
    pj = probs[perm]
    for i in range(b):
        inside = out.mask[i, 0] > 0
        if out.accepted[i]:
            assert inside.sum() == 36
            assert torch.equal(out.target[i, 0][inside], (pj[i, 0][inside] >= 0.5).float())
            assert torch.equal(out.image[i][:, inside], images[perm[i]][:, inside])
        else:
            assert inside.sum() == 0
        assert torch.equal(out.target[i, 0][~inside], (probs[i, 0][~inside] >= 0.5).float())
        assert torch.equal(out.image[i][:, ~inside], images[i][:, ~inside])
        r = (pj[i] * masks[i]).sum() / (masks[i].sum() + 1e-6)
        assert out.ratio[i].item() == pytest.approx(r.item(), rel=1e-6)
        assert bool(out.accepted[i]) == (r.item() >= 0.55)


def _pipeline(seed: int) -> MixResult:
    data = _gen(0)
    b, h, w = 8, 24, 24
    images = torch.randn(b, 1, h, w, generator=data)
    probs = torch.rand(b, 1, h, w, generator=data) * 0.5 + 0.3
    g = _gen(seed)
    perm = random_permutation(b, g)
    boxes = torch.tensor([region_box("left" if i % 2 else "right", ["upper"], h, w) for i in range(b)])
    allowed = torch.tensor([i % 4 != 3 for i in range(b)])
    masks = sample_box_blocks(boxes, allowed, 6, 1.0, h, w, g)
    return t_patchmix(images, probs, perm, masks, delta=0.0)


def test_determinism_under_seed() -> None:
    a, a2, other = _pipeline(11), _pipeline(11), _pipeline(12)
    for x, y in zip(a, a2, strict=True):
        assert torch.equal(x, y)
    assert not torch.equal(a.image, other.image)
    assert not torch.equal(a.mask, other.mask)


def test_disallowed_samples_never_mixed() -> None:
    images, _ = _setup(b=4, h=12, w=12)
    probs = torch.full((4, 1, 12, 12), 0.95)
    boxes = torch.tensor([region_box("left", [], 12, 12)] * 4)
    allowed = torch.tensor([True, False, True, False])
    for seed in range(5):
        g = _gen(seed)
        perm = random_permutation(4, g)
        masks = sample_box_blocks(boxes, allowed, 4, 1.0, 12, 12, g)
        out = t_patchmix(images, probs, perm, masks)
        assert out.accepted.tolist() == [True, False, True, False]
        assert torch.equal(out.image[1], images[1]) and torch.equal(out.image[3], images[3])
        assert not torch.equal(out.image[0], images[0])


def test_dtype_preserved_and_shape_errors() -> None:
    images = torch.randn(2, 3, 8, 8).to(torch.bfloat16)
    probs = torch.rand(2, 1, 8, 8).to(torch.float16)
    masks = torch.zeros(2, 1, 8, 8)
    masks[:, :, :4, :4] = 1
    out = t_patchmix(images, probs, torch.tensor([1, 0]), masks, delta=0.0)
    assert out.image.dtype == torch.bfloat16 and out.target.dtype == torch.float16
    assert out.ratio.dtype == torch.float32
    with pytest.raises(DataError, match="perm"):
        t_patchmix(images, probs, torch.tensor([1.0, 0.0]), masks)
    with pytest.raises(DataError):
        t_patchmix(images, probs[:, :, :4], torch.tensor([1, 0]), masks)


# ---------- helpers


def test_pseudo_label_and_confident_fraction() -> None:
    p = torch.tensor([0.0, 0.3, 0.55, 0.6, 1.0])
    assert pseudo_label(p, 0.55).tolist() == [0.0, 0.0, 1.0, 1.0, 1.0]
    soft = pseudo_label(p, 0.55, mode="soft", temperature=0.05)
    expected = [1 / (1 + math.exp(-(x - 0.55) / 0.05)) for x in p.tolist()]
    assert soft.tolist() == pytest.approx(expected, rel=1e-5)
    assert soft[2].item() == pytest.approx(0.5)
    assert pseudo_label(p.double(), 0.5).dtype == torch.float64
    with pytest.raises(DataError, match="mode"):
        pseudo_label(p, 0.5, mode="fuzzy")  # type: ignore[arg-type]
    # max(p, 1-p) = [1, 0.7, 0.55, 0.6, 1] -> >= 0.6 for 4 of 5
    assert confident_fraction(p, 0.6).item() == pytest.approx(0.8)
    assert confident_fraction(p, 0.55).item() == pytest.approx(1.0)


def test_random_permutation() -> None:
    for seed in range(50):
        perm = random_permutation(6, _gen(seed))
        assert sorted(perm.tolist()) == list(range(6))
        assert bool((perm != torch.arange(6)).all())
    assert torch.equal(random_permutation(32, _gen(1)), random_permutation(32, _gen(1)))
    assert not torch.equal(random_permutation(32, _gen(1)), random_permutation(32, _gen(2)))
    assert random_permutation(1, _gen(0)).tolist() == [0]
    assert random_permutation(0, _gen(0)).numel() == 0
    plain = [random_permutation(4, _gen(s), derangement=False) for s in range(200)]
    assert any(bool((p == torch.arange(4)).any()) for p in plain)


def test_position_boxes_laterality_rule_and_region() -> None:
    texts = [
        "Unilateral pulmonary infection, one infected area, lower left lung.",
        "Unilateral pulmonary infection, one infected area, upper right lung.",
        "Unilateral pulmonary infection, one infected area, middle left lung.",
        "No lesion.",
    ]
    # partners: 0<-2 (same side), 1<-0 (conflict), 2<-3 (partner has no phrase), 3<-1 (no phrase of its own)
    boxes, allowed = position_boxes(texts, torch.tensor([2, 0, 3, 1]), 60, 40)
    assert allowed.tolist() == [True, False, True, False]
    assert boxes[0].tolist() == [40, 60, 0, 20]  # lower third, image-left half
    assert boxes[2].tolist() == [20, 40, 0, 20]  # middle third
    assert boxes[1].tolist() == boxes[3].tolist() == [0, 60, 0, 40]  # placeholder: whole image
