"""Synthetic dataset: determinism, text-dependent lesions vs distractors, SGSeg layout read back."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from textseg.data import SPLITS, QaTaCOV19, load_dataset, read_image, read_mask
from textseg.data.synthetic import (
    SyntheticConfig,
    caption_for,
    generate_sample,
    make_synthetic,
    qata_sized_config,
    region_boxes,
)
from textseg.data.synthetic_images import _opacity as opacity_profile
from textseg.errors import DataError
from textseg.ops.text import position_label

SIZE = 64


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _region_map(size: int) -> np.ndarray:
    """Region index (0-5) of every pixel, -1 outside the lung band."""
    out = np.full((size, size), -1, dtype=int)
    for region, (r0, r1, c0, c1) in enumerate(region_boxes(size)):
        out[r0:r1, c0:c1] = region
    return out


def test_deterministic_bytes(tmp_path: Path) -> None:
    a = make_synthetic(tmp_path / "a", n_train=6, n_val=2, n_test=2, image_size=SIZE, seed=3)
    b = make_synthetic(tmp_path / "b", n_train=6, n_val=2, n_test=2, image_size=SIZE, seed=3)
    c = make_synthetic(tmp_path / "c", n_train=6, n_val=2, n_test=2, image_size=SIZE, seed=4)
    files_a, files_b, files_c = _files(a), _files(b), _files(c)
    assert len(files_a) == 2 * 10 + 2  # images + masks + annotation.json + synthetic.json
    assert files_a == files_b
    images = [k for k in files_a if "/images/" in k]
    assert all(files_a[k] != files_c[k] for k in images)
    # The files are exactly generate_sample's output.
    sample = generate_sample(3, "val", 1, SIZE)
    assert np.array_equal(read_image(a / "valid" / "images" / "synth_00007.png"), sample.image)
    assert np.array_equal(read_mask(a / "valid" / "masks" / "mask_synth_00007.png"), sample.mask)


@pytest.fixture(scope="module")
def samples() -> list:
    return [generate_sample(0, "train", i, 128) for i in range(150)]


def test_lesions_in_named_regions(samples: list) -> None:
    regions = _region_map(128)
    for s in samples:
        assert s.mask.dtype == np.uint8 and set(np.unique(s.mask).tolist()) == {0, 1}
        found = set(np.unique(regions[s.mask == 1]).tolist())
        named = {i for i in range(6) if s.position[i]}
        # Every lesion pixel lies in a named region, and every named region holds a lesion.
        assert found == named, (s.position, found)
        for region in named:
            assert (regions[s.mask == 1] == region).sum() >= 10
        assert 1 <= len(named) <= 3


def test_distractors_outside_mask_and_unnamed(samples: list) -> None:
    regions = _region_map(128)
    lesion_lift, distractor_lift = [], []
    for s in samples:
        assert 1 <= len(s.distractor_regions) <= 2
        assert not set(s.distractor_regions) & {i for i in range(6) if s.position[i]}
        assert s.distractor_mask.sum() > 0
        assert (s.distractor_mask & s.mask).sum() == 0
        assert set(np.unique(regions[s.distractor_mask == 1]).tolist()) == set(s.distractor_regions)
        # Distractors look like lesions: similar brightness above the lung background.
        lung = (regions >= 0) & (s.mask == 0) & (s.distractor_mask == 0)
        background = np.median(s.image[lung])
        lesion_lift.append(s.image[s.mask == 1].mean() - background)
        distractor_lift.append(s.image[s.distractor_mask == 1].mean() - background)
    lesion, distractor = float(np.mean(lesion_lift)), float(np.mean(distractor_lift))
    assert lesion > 20 and distractor > 20
    assert abs(lesion - distractor) < 0.15 * lesion
    # Sizes are comparable too.
    assert (
        0.7
        < np.mean([s.distractor_mask.sum() / len(s.distractor_regions) for s in samples])
        / np.mean([s.mask.sum() / sum(s.position) for s in samples])
        < 1.3
    )


def test_captions(samples: list) -> None:
    assert (
        caption_for([0, 0, 1, 0, 1, 0])
        == "Bilateral pulmonary infection, two infected areas, lower left lung and middle right lung."
    )
    assert (
        caption_for([1, 1, 0, 0, 0, 0]) == "Unilateral pulmonary infection, one infected area, upper middle left lung."
    )
    assert caption_for([0, 0, 0, 1, 1, 1]) == "Unilateral pulmonary infection, one infected area, all right lung."
    with pytest.raises(DataError):
        caption_for([0] * 6)
    for s in samples:
        assert s.caption == caption_for(s.position)
        assert tuple(position_label(s.caption)) == s.position


def test_read_back_and_annotation(tmp_path: Path) -> None:
    root = tmp_path / "syn"
    ds = load_dataset("synthetic", root, n_train=12, n_val=4, n_test=4, image_size=SIZE, seed=1)
    assert isinstance(ds, QaTaCOV19)
    assert (ds.name, ds.layout, ds.modality) == ("synthetic", "sgseg", 0)
    assert [len(ds.records(s)) for s in SPLITS] == [12, 4, 4]
    ds.check()
    ann = json.loads((root / "annotation.json").read_text())
    assert sorted(ann) == ["test", "train", "valid"]
    for entry, rec in zip(ann["train"], ds.records("train"), strict=True):
        assert sorted(entry) == [
            "caption",
            "image_path",
            "infected_area",
            "pseudo_label",
            "pulmonary_infection",
        ]
        assert entry["image_path"] == rec.key == f"mask_{rec.id}.png"
        assert entry["infected_area"] == sum(entry["pseudo_label"])
        assert entry["pulmonary_infection"] == int(any(entry["pseudo_label"][:3])) + int(any(entry["pseudo_label"][3:]))
        assert tuple(entry["pseudo_label"]) == rec.position
        mask = read_mask(rec.mask)
        assert mask.shape == (SIZE, SIZE) and mask.sum() > 0
        assert read_image(rec.image).shape == (SIZE, SIZE)
    labeled, unlabeled = ds.labeled_split(0.25)
    assert len(labeled) == 3 and len(unlabeled) == 9
    # Reloading reuses the tree; contradicting arguments are an error.
    again = load_dataset("synthetic", root)
    assert [r.id for r in again.records("test")] == [r.id for r in ds.records("test")]
    assert load_dataset("synthetic", root, seed=1, image_size=SIZE).name == "synthetic"
    with pytest.raises(DataError, match=r"n_train=50 \(on disk: 12\)"):
        load_dataset("synthetic", root, n_train=50)


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="image_size=100 must be a positive multiple of 32"):
        make_synthetic(tmp_path / "x", image_size=100)
    with pytest.raises(DataError, match="n_train=0"):
        make_synthetic(tmp_path / "x", n_train=0)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "file.txt").write_text("x")
    with pytest.raises(DataError, match="already exists and is not empty"):
        make_synthetic(tmp_path / "full", n_train=2)
    with pytest.raises(DataError, match="unknown split 'valid'"):
        generate_sample(0, "valid", 0, SIZE)
    assert not list(tmp_path.glob(".x.tmp-*"))  # no temporary folders left behind


def test_geometry_config() -> None:
    boxes = region_boxes(128, SyntheticConfig())
    assert len(boxes) == 6
    assert boxes[0][2:] == (0, 64) and boxes[3][2:] == (64, 128)
    assert boxes[0][1] == boxes[1][0] and boxes[1][1] == boxes[2][0]


def test_qata_sized_lesions() -> None:
    """QaTa-sized lesions: 3x the default area, still inside the named regions, faded out at the box border."""
    big, small = qata_sized_config(), SyntheticConfig()
    regions = _region_map(128)
    samples = [generate_sample(0, "train", i, 128, big) for i in range(60)]
    share = np.mean([s.mask.mean() for s in samples])
    default_share = np.mean([generate_sample(0, "train", i, 128, small).mask.mean() for i in range(60)])
    assert 0.05 < share < 0.09 and 0.015 < default_share < 0.03  # real QaTa masks: mean 9 % (7 in shared/data)
    for s in samples:
        assert set(np.unique(regions[s.mask == 1]).tolist()) == {i for i in range(6) if s.position[i]}
        assert (s.distractor_mask & s.mask).sum() == 0 and s.distractor_mask.sum() > 0
    # The fade: on the region box border the profile is ~0 (a hard cut there would show as a straight edge).
    lung = np.ones((128, 128), dtype=np.float32)
    hard, cut_edges = SyntheticConfig(opacity_sigma=big.opacity_sigma), []
    for k, box in enumerate(region_boxes(128)):
        r0, r1, c0, c1 = box
        tapered = opacity_profile(np.random.default_rng(k), box, lung, 128, big)[r0:r1, c0:c1]
        cut = opacity_profile(np.random.default_rng(k), box, lung, 128, hard)[r0:r1, c0:c1]
        border = np.concatenate([tapered[[0, -1]].ravel(), tapered[:, [0, -1]].ravel()])
        assert border.max() < 0.02 and tapered.max() > 0.8
        cut_edges.append(max(cut[[0, -1]].max(), cut[:, [0, -1]].max()))
    assert max(cut_edges) > 0.2  # the same opacities cut hard: a bright box edge


def test_no_distractor_prob(tmp_path: Path) -> None:
    """``no_distractor_prob`` drops the look-alike distractors of that share of images; the lesions stay named."""
    share = SyntheticConfig(no_distractor_prob=0.5)
    samples = [generate_sample(0, "train", i, SIZE, share) for i in range(200)]
    free = [s for s in samples if not s.distractor_regions]
    assert 70 <= len(free) <= 130  # binomial(200, 0.5): 100 +- 4.2 sd
    assert all(s.distractor_mask.sum() == 0 and s.mask.sum() > 0 for s in free)
    assert all(s.distractor_mask.sum() > 0 for s in samples if s.distractor_regions)
    assert all(generate_sample(0, "train", i, SIZE).distractor_regions for i in range(50))  # default: always one
    none = SyntheticConfig(no_distractor_prob=1.0)
    assert not any(generate_sample(0, "train", i, SIZE, none).distractor_regions for i in range(50))
    with pytest.raises(DataError, match=r"no_distractor_prob=1.5 must be a probability"):
        make_synthetic(
            tmp_path / "bad",
            n_train=2,
            n_val=1,
            n_test=1,
            image_size=SIZE,
            config=SyntheticConfig(no_distractor_prob=1.5),
        )


def test_distractor_level(tmp_path: Path) -> None:
    """``distractor_level`` dims only the distractors (same draws: same masks, regions and texts as the default)."""
    dim = SyntheticConfig(distractor_level=(45.0, 70.0))  # the lesions' range minus 10 grey levels
    for i in range(20):
        base, new = generate_sample(0, "train", i, SIZE), generate_sample(0, "train", i, SIZE, dim)
        assert np.array_equal(base.mask, new.mask) and np.array_equal(base.distractor_mask, new.distractor_mask)
        assert base.caption == new.caption and base.distractor_regions == new.distractor_regions
        diff = new.image.astype(int) - base.image.astype(int)
        assert diff.max() <= 1 and (diff[base.mask == 1] == 0).all()  # lesions untouched (up to rounding)
        # in the mask the profile is >= 0.5 and the gain >= 0.8: at least 4 grey levels darker, at most 10 * 1.15
        assert -12 <= diff[base.distractor_mask == 1].mean() <= -3
    with pytest.raises(DataError, match=r"distractor_level=\(70.0, 45.0\) must be a \(low, high\) range"):
        make_synthetic(tmp_path / "bad", n_train=2, n_val=1, n_test=1, image_size=SIZE,
                       config=SyntheticConfig(distractor_level=(70.0, 45.0)))  # fmt: skip


def test_old_generator_version_refused(tmp_path: Path) -> None:
    root = make_synthetic(tmp_path / "old", n_train=2, n_val=1, n_test=1, image_size=SIZE)
    meta = json.loads((root / "synthetic.json").read_text())
    (root / "synthetic.json").write_text(json.dumps({**meta, "version": 0}))
    with pytest.raises(DataError, match=r"generator version 0, this is version 1: delete the folder"):
        load_dataset("synthetic", root)
