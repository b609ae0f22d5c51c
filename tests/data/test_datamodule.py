"""Tests of :class:`textseg.data.datamodule.TextSegDataModule` (batches, views, splits, ``split.json``, seeding)."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fakedata import make_mosmed_tree
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import CSVLogger
from torch import Tensor

from textseg.data.datamodule import TextSegDataModule
from textseg.data.io import read_image, read_mask
from textseg.data.splits import select_labeled
from textseg.data.synthetic import META_FILE
from textseg.data.transforms import LABELED_KEYS, UNLABELED_KEYS
from textseg.errors import DataError

SIZE = 64
#: The fake trees of ``conftest.py`` have 16 train images.
N_TRAIN = 16
#: Generator options of a small synthetic tree.
SYNTHETIC_SMALL = {"n_train": 8, "n_val": 2, "n_test": 2, "image_size": SIZE}


def make_dm(root: Path, dataset: str = "qata", **kwargs: Any) -> TextSegDataModule:
    args: dict[str, Any] = {"labeled_ratio": 0.25, "image_size": SIZE, "batch_size": 2, "eval_batch_size": 4}
    args.update(kwargs)
    return TextSegDataModule(dataset=dataset, root=str(root), **args)  # type: ignore[arg-type]


def first_train_batch(dm: TextSegDataModule) -> dict[str, dict[str, Any]]:
    dm.setup("fit")
    batch, _, _ = next(iter(dm.train_dataloader()))
    return batch


def train_epoch(dm: TextSegDataModule) -> list[dict[str, dict[str, Any]]]:
    dm.setup("fit")
    return [batch for batch, _, _ in dm.train_dataloader()]


def zscore(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    return (x - x.mean()) / x.std()


def corr(a: Tensor, b: Tensor) -> float:
    a, b = a.flatten().double(), b.flatten().double()
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / (a.norm() * b.norm()))


def gaussian_blur(x: Tensor, sigma: float, kernel: int = 7) -> Tensor:
    """Independent separable Gaussian blur with reflect padding of a ``[1, H, W]`` image."""
    half = kernel // 2
    k = torch.exp(-0.5 * (torch.arange(-half, half + 1, dtype=torch.float64) / sigma) ** 2)
    k = k / k.sum()
    y = F.pad(x[None].double(), (half, half, half, half), mode="reflect")
    y = F.conv2d(y, k.view(1, 1, 1, -1))
    return F.conv2d(y, k.view(1, 1, -1, 1))[0]


# ------------------------------------------------------------------------------------------------ batches
def test_train_batch_keys_shapes_dtypes(qata_root: Path) -> None:
    dm = make_dm(qata_root, zoom_prob=0.0)
    batch = first_train_batch(dm)
    assert set(batch) == {"labeled", "unlabeled"}
    lab, unl = batch["labeled"], batch["unlabeled"]
    assert set(lab) == set(LABELED_KEYS)
    assert set(unl) == set(UNLABELED_KEYS)
    for part, keys in ((lab, ("image", "mask")), (unl, ("image", "image_strong"))):
        for key in keys:
            assert part[key].shape == (2, 1, SIZE, SIZE)
            assert part[key].dtype == torch.float32
        assert part["position"].shape == (2, 6)
        assert part["position"].dtype == torch.long
        assert part["modality"].tolist() == [0, 0]
        assert isinstance(part["text"], list) and all(isinstance(t, str) and t for t in part["text"])
        assert isinstance(part["id"], list) and all(isinstance(i, str) for i in part["id"])
    for img in (lab["image"], unl["image"], unl["image_strong"]):
        assert img.mean(dim=(1, 2, 3)).abs().max() < 1e-4
        assert (img.std(dim=(1, 2, 3)) - 1).abs().max() < 1e-2
    assert set(lab["mask"].unique().tolist()) <= {0.0, 1.0}
    assert lab["mask"].sum() > 0


def test_labeled_batch_matches_files_without_zoom(qata_root: Path) -> None:
    """Without zoom the labeled sample is exactly the z-scored file, its mask and the record's text/position."""
    dm = make_dm(qata_root, zoom_prob=0.0)
    lab = first_train_batch(dm)["labeled"]
    records = {r.id: r for r in dm.splits["labeled"]}
    for i, rid in enumerate(lab["id"]):
        rec = records[rid]
        np.testing.assert_allclose(lab["image"][i, 0].numpy(), zscore(read_image(rec.image)), atol=1e-4)
        np.testing.assert_array_equal(lab["mask"][i, 0].numpy(), read_mask(rec.mask).astype(np.float32))
        assert lab["text"][i] == rec.text
        assert tuple(lab["position"][i].tolist()) == rec.position


def test_eval_loaders_are_plain_and_unaugmented(qata_root: Path) -> None:
    dm = make_dm(qata_root, zoom_prob=1.0, zoom_min=1.5, zoom_max=1.5)
    dm.setup("fit")
    dm.setup("test")
    for loader, split in ((dm.val_dataloader(), "val"), (dm.test_dataloader(), "test")):
        batch = next(iter(loader))
        assert set(batch) == set(LABELED_KEYS)
        assert batch["image"].shape == (4, 1, SIZE, SIZE)
        records = {r.id: r for r in dm.splits[split]}
        assert [r.id for r in dm.splits[split]] == batch["id"]  # not shuffled
        for i, rid in enumerate(batch["id"]):
            np.testing.assert_allclose(batch["image"][i, 0].numpy(), zscore(read_image(records[rid].image)), atol=1e-4)
            np.testing.assert_array_equal(batch["mask"][i, 0].numpy(), read_mask(records[rid].mask))


def test_use_unlabeled_false_gives_one_pass_over_labeled(qata_root: Path) -> None:
    dm = make_dm(qata_root, labeled_ratio=0.5, batch_size=4, use_unlabeled=False)
    batches = train_epoch(dm)
    assert all(set(b) == {"labeled"} for b in batches)
    assert len(batches) == 2  # 8 labeled / batch 4
    ids = [i for b in batches for i in b["labeled"]["id"]]
    assert sorted(ids) == sorted(r.id for r in dm.splits["labeled"])  # every labeled image exactly once


def test_semi_epoch_is_one_pass_over_unlabeled(qata_root: Path) -> None:
    """An epoch is one pass over the 12 unlabeled images; labeled ids are drawn (with replacement) from the 4."""
    dm = make_dm(qata_root, batch_size=2)
    batches = train_epoch(dm)
    assert len(batches) == 6
    unl_ids = [i for b in batches for i in b["unlabeled"]["id"]]
    lab_ids = [i for b in batches for i in b["labeled"]["id"]]
    assert sorted(unl_ids) == sorted(r.id for r in dm.splits["unlabeled"])
    assert len(lab_ids) == 12
    assert set(lab_ids) <= {r.id for r in dm.splits["labeled"]}


# ------------------------------------------------------------------------------------------ weak / strong
def test_strong_view_equals_weak_without_photometric_ops(qata_root: Path) -> None:
    dm = make_dm(qata_root, zoom_prob=1.0, zoom_min=1.5, zoom_max=1.5, strong_jitter_prob=0.0, strong_blur_prob=0.0)
    unl = first_train_batch(dm)["unlabeled"]
    torch.testing.assert_close(unl["image_strong"], unl["image"], rtol=0, atol=1e-5)  # float rounding only
    # The zoom did happen: the weak view is not the unzoomed file.
    records = {r.id: r for r in dm.splits["unlabeled"]}
    raw = torch.from_numpy(zscore(read_image(records[unl["id"][0]].image)))
    assert corr(unl["image"][0, 0], raw) < 0.9


def test_strong_view_is_a_blur_of_the_zoomed_weak_view(qata_root: Path) -> None:
    """With zoom always on and blur only, strong = zscore(blur_sigma(weak)) for one sigma in [0.1, 2]."""
    dm = make_dm(
        qata_root,
        seed=2,  # draws sigmas 1.06, 1.12, 0.96, 0.29 for the first batch
        batch_size=4,
        zoom_prob=1.0,
        zoom_min=1.1,
        zoom_max=1.6,
        strong_jitter_prob=0.0,
        strong_blur_prob=1.0,
    )
    unl = first_train_batch(dm)["unlabeled"]
    weak, strong = unl["image"], unl["image_strong"]
    sigmas = np.linspace(0.1, 2.0, 96)
    # The blur really changed the images (a sigma near 0.1 would be almost the identity).
    assert sum(corr(strong[i], weak[i]) < 0.95 for i in range(4)) >= 2
    for i in range(weak.shape[0]):
        same = max(corr(strong[i], gaussian_blur(weak[i], s)) for s in sigmas)
        other = max(corr(strong[i], gaussian_blur(weak[(i + 1) % 4], s)) for s in sigmas)
        assert same > 0.999, (i, same)
        assert other < 0.5, (i, other)
        assert corr(strong[i], weak[i]) > 0.5 > abs(corr(strong[i], weak[(i + 1) % 4]))


def test_strong_blur_sigma_sets_the_blur(qata_root: Path) -> None:
    """``strong_blur_sigma`` is the blur's range: a one-point range gives exactly that Gaussian, no other."""
    dm = make_dm(qata_root, zoom_prob=0.0, strong_jitter_prob=0.0, strong_blur_prob=1.0, strong_blur_sigma=(1.5, 1.5))
    unl = first_train_batch(dm)["unlabeled"]
    for weak, strong in zip(unl["image"], unl["image_strong"], strict=True):
        assert corr(strong, gaussian_blur(weak, 1.5)) > 0.99999
        assert corr(strong, gaussian_blur(weak, 0.5)) < 0.999  # a different sigma is told apart
    for bad in ((0.0, 1.0), (2.0, 1.0), (1.0,)):
        with pytest.raises(DataError, match=r"strong_blur_sigma must be a range 0 < low <= high"):
            make_dm(qata_root, strong_blur_sigma=bad)


def test_legacy_clamp_strong_view_is_clipped(qata_root: Path) -> None:
    """``legacy_clamp`` jitters after the z-score, so the strong view lies in [0, 1] (the public-code clamp)."""
    dm = make_dm(qata_root, zoom_prob=0.0, legacy_clamp=True, strong_jitter_prob=1.0, strong_blur_prob=0.0)
    unl = first_train_batch(dm)["unlabeled"]
    assert unl["image_strong"].min() >= 0 and unl["image_strong"].max() <= 1
    assert unl["image"].min() < -1  # the weak view is z-scored as usual


# --------------------------------------------------------------------------------------------- splits
@pytest.mark.parametrize(("dataset", "ratio", "n_labeled"), [("qata", 0.25, 4), ("qata", 0.3, 5), ("mosmed", 0.3, 4)])
def test_labeled_subset_follows_select_labeled(
    qata_root: Path, mosmed_root: Path, dataset: str, ratio: float, n_labeled: int
) -> None:
    """QaTa rounds 16 * 0.3 = 4.8 to 5, MosMed floors it to 4 (``data.md`` §6)."""
    root = qata_root if dataset == "qata" else mosmed_root
    dm = make_dm(root, dataset, labeled_ratio=ratio)
    dm.setup("fit")
    assert dm.data is not None
    labeled, unlabeled = dm.splits["labeled"], dm.splits["unlabeled"]
    assert (len(labeled), len(unlabeled)) == (n_labeled, N_TRAIN - n_labeled)
    keys = select_labeled(dm.data.split_names(), ratio, 42, dm.data.rounding)
    assert {r.key for r in labeled} == set(keys)
    train = dm.data.records("train")
    assert [r.id for r in labeled] == [r.id for r in train if r.key in set(keys)]  # original order


def test_ratio_one_uses_the_full_train_split_twice(qata_root: Path) -> None:
    dm = make_dm(qata_root, labeled_ratio=1.0)
    dm.setup("fit")
    assert dm.data is not None
    train_ids = [r.id for r in dm.data.records("train")]
    assert [r.id for r in dm.splits["labeled"]] == train_ids
    assert [r.id for r in dm.splits["unlabeled"]] == train_ids


@pytest.mark.parametrize(("kwargs", "named"), [({"labeled_ratio": 0}, "0"), ({"labeled_ratio": 1.5}, "1.5")])
def test_bad_ratio_raises_at_construction(qata_root: Path, kwargs: dict[str, Any], named: str) -> None:
    with pytest.raises(DataError, match=r"labeled_ratio.*" + named.replace(".", r"\.")):
        make_dm(qata_root, **kwargs)


def test_bad_image_size_raises(qata_root: Path) -> None:
    with pytest.raises(DataError, match=r"image_size.*50"):
        make_dm(qata_root, image_size=50)


def test_split_json_written_on_fit_setup(qata_root: Path, tmp_path: Path) -> None:
    trainer = Trainer(
        accelerator="cpu",
        logger=CSVLogger(tmp_path),
        default_root_dir=tmp_path,
        enable_checkpointing=False,
        enable_progress_bar=False,
    )
    dm = make_dm(qata_root, labeled_ratio=0.25)
    dm.trainer = trainer
    dm.setup("fit")
    assert trainer.log_dir is not None
    path = Path(trainer.log_dir) / "split.json"
    split = json.loads(path.read_text())
    assert dm.data is not None
    train_ids = {r.id for r in dm.data.records("train")}
    labeled, unlabeled = set(split["labeled"]), set(split["unlabeled"])
    assert len(split["labeled"]) == len(labeled) == 4 and len(unlabeled) == 12
    assert not labeled & unlabeled
    assert labeled | unlabeled == train_ids
    assert split["labeled"] == [r.id for r in dm.splits["labeled"]]
    assert split["val"] == [r.id for r in dm.data.records("val")]
    assert (split["dataset"], split["labeled_ratio"], split["seed"], split["layout"]) == ("qata", 0.25, 42, "sgseg")
    # A test-only setup does not write a split.
    path.unlink()
    dm.setup("test")
    assert not path.exists()


# ------------------------------------------------------------------------------------ modality, seeding
def test_mosmed_modality_is_ct(mosmed_root: Path) -> None:
    batch = first_train_batch(make_dm(mosmed_root, "mosmed"))
    assert batch["labeled"]["modality"].tolist() == [1, 1]
    assert batch["unlabeled"]["modality"].tolist() == [1, 1]


def _flat(batch: dict[str, dict[str, Any]]) -> tuple[list[str], Tensor]:
    ids = batch["labeled"]["id"] + batch["unlabeled"]["id"]
    images = torch.cat([batch["labeled"]["image"], batch["unlabeled"]["image"], batch["unlabeled"]["image_strong"]])
    return ids, images


def test_sampling_and_augmentation_are_seeded(qata_root: Path) -> None:
    """Same seed -> the same first batch whatever the global RNG state; another seed -> a different one."""
    kwargs: dict[str, Any] = {"zoom_prob": 0.5, "strong_jitter_prob": 0.8, "strong_blur_prob": 0.5}
    torch.manual_seed(0)
    ids_a, img_a = _flat(first_train_batch(make_dm(qata_root, seed=42, **kwargs)))
    torch.manual_seed(123)
    np.random.seed(123)  # noqa: NPY002 -- disturb the legacy global stream on purpose
    ids_b, img_b = _flat(first_train_batch(make_dm(qata_root, seed=42, **kwargs)))
    assert ids_a == ids_b
    torch.testing.assert_close(img_a, img_b, rtol=0, atol=0)
    ids_c, img_c = _flat(first_train_batch(make_dm(qata_root, seed=7, **kwargs)))
    assert ids_c != ids_a
    assert not torch.equal(img_c, img_a)


def test_augmentation_stream_depends_on_seed_only(qata_root: Path) -> None:
    """With labeled ratio 1 the split is seed-independent; the augmentation of one image still follows the seed."""
    kwargs: dict[str, Any] = {
        "labeled_ratio": 1.0,
        "zoom_prob": 1.0,
        "zoom_min": 1.0,
        "zoom_max": 1.6,
        "use_unlabeled": False,
    }
    views: dict[int, dict[str, Tensor]] = {}
    for seed in (3, 3, 4):
        batches = train_epoch(make_dm(qata_root, seed=seed, **kwargs))
        seen = {i: b["labeled"]["image"][k] for b in batches for k, i in enumerate(b["labeled"]["id"])}
        if seed in views:
            assert all(torch.equal(seen[i], views[seed][i]) for i in seen)
        views.setdefault(seed, seen)
    # Two epochs of one loader draw different zooms of the same image; re-reading an epoch repeats it exactly.
    dm = make_dm(qata_root, seed=3, **kwargs)
    dm.setup("fit")
    loader = dm.train_dataloader()
    epochs = []
    for epoch in (0, 1, 0):
        for dl in loader.flattened:
            dl.sampler.set_epoch(epoch)
        epochs.append({i: b["labeled"]["image"][k] for b, _, _ in loader for k, i in enumerate(b["labeled"]["id"])})
    assert all(torch.equal(epochs[0][i], epochs[2][i]) for i in epochs[0])
    assert all(torch.equal(epochs[0][i], views[3][i]) for i in epochs[0])
    assert sum(not torch.allclose(epochs[0][i], epochs[1][i], atol=1e-4) for i in epochs[0]) >= N_TRAIN // 2
    changed = sum(not torch.allclose(views[3][i], views[4][i], atol=1e-4) for i in views[3])
    assert changed >= len(views[3]) // 2


# ------------------------------------------------------------------------------------------ synthetic
def test_synthetic_dataset_generated_when_missing(tmp_path: Path) -> None:
    root = tmp_path / "synthetic"
    assert not root.exists()
    dm = TextSegDataModule(
        dataset="synthetic",
        root=str(root),
        labeled_ratio=0.5,
        image_size=SIZE,
        batch_size=2,
        eval_batch_size=2,
        dataset_options={"synthetic": SYNTHETIC_SMALL},
    )
    dm.prepare_data()
    assert root.is_dir()
    dm.setup("fit")
    dm.setup("test")
    assert dm.data is not None
    assert [len(dm.data.records(s)) for s in ("train", "val", "test")] == [8, 2, 2]
    assert (len(dm.splits["labeled"]), len(dm.splits["unlabeled"])) == (4, 4)
    batch = next(iter(dm.test_dataloader()))
    assert batch["image"].shape == (2, 1, SIZE, SIZE)
    assert batch["modality"].tolist() == [0, 0]
    # A second datamodule reads the existing tree instead of regenerating it.
    mtimes = {p: p.stat().st_mtime_ns for p in root.rglob("*.png")}
    again = TextSegDataModule(
        dataset="synthetic", root=str(root), image_size=SIZE, dataset_options={"synthetic": SYNTHETIC_SMALL}
    )
    again.prepare_data()
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*.png")} == mtimes
    # Without options any existing tree is read; sizes that contradict the tree on disk are refused.
    TextSegDataModule(dataset="synthetic", root=str(root), image_size=SIZE).prepare_data()
    other = TextSegDataModule(dataset="synthetic", root=str(root), dataset_options={"synthetic": {"n_train": 9}})
    with pytest.raises(DataError, match=r"n_train=9 \(on disk: 8\)"):
        other.prepare_data()
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*.png")} == mtimes


# ------------------------------------------------------------------------------------- dataset options
def test_synthetic_options_set_the_generated_sizes(tmp_path: Path) -> None:
    """``dataset_options`` reach the generator: other sizes, other counts and image side."""
    sizes = {"n_train": 6, "n_val": 3, "n_test": 1, "image_size": 32}
    dm = TextSegDataModule(dataset="synthetic", root=str(tmp_path / "s"), dataset_options={"synthetic": sizes})
    dm.prepare_data()
    dm.setup("fit")
    assert dm.data is not None
    assert [len(dm.data.records(s)) for s in ("train", "val", "test")] == [6, 3, 1]
    assert read_image(dm.data.records("train")[0].image).shape[-2:] == (32, 32)
    meta = json.loads((tmp_path / "s" / META_FILE).read_text())
    assert {k: meta[k] for k in sizes} == sizes


def test_mosmed_bare_side_option_reaches_the_dataset(tmp_path: Path) -> None:
    """``{"mosmed": {"bare_side": ...}}`` sets MosMed's positional-label convention for a bare "X lung"."""
    root = tmp_path / "mosmed"
    make_mosmed_tree(root, "kaggle", n_train=4, n_val=2, n_test=2, size=SIZE, seed=1)
    train_csv = next(root.glob("Train_text_*.csv"))
    rows = train_csv.read_text().splitlines()
    bare = "Unilateral pulmonary infection, one infected area, left lung."
    train_csv.write_text("\n".join([rows[0], f"{rows[1].split(';')[0]};{bare}", *rows[2:]]) + "\n")
    image = rows[1].split(";")[0]
    positions = {}
    for side in (None, "all", "none"):
        options = None if side is None else {"mosmed": {"bare_side": side}}
        dm = make_dm(root, "mosmed", dataset_options=options, check="off")
        dm.setup("fit")
        assert dm.data is not None
        positions[side] = next(r.position for r in dm.data.records("train") if Path(r.image).name == image)
    assert positions[None] == positions["all"] == (1, 1, 1, 0, 0, 0)
    assert positions["none"] == (0, 0, 0, 0, 0, 0)


@pytest.mark.parametrize(
    ("dataset", "options", "named"),
    [
        # An option the dataset's factory does not take: the error names both and lists the valid options.
        ("mosmed", {"mosmed": {"bare_sides": "none"}}, r"dataset 'mosmed' has no option 'bare_sides'; its options "
         r"are bare_side"),
        ("synthetic", {"synthetic": {"n_train": 8, "size": 64}}, r"dataset 'synthetic' has no option 'size'; its "
         r"options are n_train, n_val, n_test, image_size, seed, positions, modality"),
        ("synthetic_ct", {"synthetic_ct": {"modality": "xray"}}, r"dataset 'synthetic_ct' has no option 'modality'"),
        ("qata", {"qata": {"root": "elsewhere"}}, r"dataset 'qata' has no option 'root'; its options are positions"),
        # Options for a dataset that is not one of the run's.
        ("qata", {"mosmed": {"bare_side": "none"}}, r"dataset_options names 'mosmed', not a dataset of this run; "
         r"the run's datasets are 'qata'"),
        (["qata", "mosmed"], {"synthetic": {}}, r"names 'synthetic', not a dataset of this run.*'qata', 'mosmed'"),
        # A dataset name that is not in the registry: the error lists the registered names.
        ("qata_v2", None, r"unknown dataset 'qata_v2'; expected one of 'qata', 'mosmed', 'synthetic', 'synthetic_ct'"),
    ],
)  # fmt: skip
def test_bad_dataset_or_options_refused_at_construction(
    tmp_path: Path, dataset: str | list[str], options: dict[str, Any] | None, named: str
) -> None:
    roots = [str(tmp_path / d) for d in dataset] if isinstance(dataset, list) else str(tmp_path / dataset)
    with pytest.raises(DataError, match=named):
        TextSegDataModule(dataset=dataset, root=roots, dataset_options=options)
    assert not any(tmp_path.iterdir())  # refused before anything was read or generated


def test_a_registered_dataset_needs_no_datamodule_change(
    tmp_path: Path, qata_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The registry is the one list of datasets: a new entry is accepted by name, with its own options."""
    from textseg.data import registry
    from textseg.data.qata import QaTaCOV19

    monkeypatch.setitem(registry.DATASETS, "qata_text_positions", partial(QaTaCOV19, positions="text"))
    monkeypatch.setitem(registry.DATASETS, "my_qata", QaTaCOV19)
    dm = make_dm(qata_root, "my_qata", dataset_options={"my_qata": {"positions": "annotation"}})
    dm.setup("fit")
    assert dm.data is not None and len(dm.data.records("train")) == N_TRAIN
    with pytest.raises(DataError, match="dataset 'qata_text_positions' has no option 'positions'"):
        make_dm(qata_root, "qata_text_positions", dataset_options={"qata_text_positions": {"positions": "auto"}})


def test_batches_do_not_depend_on_num_workers(qata_root: Path) -> None:
    """Order and augmentations (weak zoom, strong jitter/blur) are functions of the seed and the position in the
    epoch's draw only: 0 and 2 workers give bit-identical batches, epoch after epoch (``reference/data.md`` §6)."""
    kwargs: dict[str, Any] = {"zoom_prob": 1.0, "strong_jitter_prob": 1.0, "strong_blur_prob": 1.0, "seed": 5}
    epochs: dict[int, list[dict[str, Any]]] = {}
    for workers in (0, 2):
        dm = make_dm(qata_root, num_workers=workers, **kwargs)
        dm.setup("fit")
        loader = dm.train_dataloader()
        batches = []
        for epoch in (0, 1):
            for dl in loader.flattened:
                dl.sampler.set_epoch(epoch)
            batches += [batch for batch, _, _ in loader]
        epochs[workers] = batches
    assert len(epochs[0]) == len(epochs[2]) > 2
    for one, two in zip(epochs[0], epochs[2], strict=True):
        for part in ("labeled", "unlabeled"):
            assert one[part]["id"] == two[part]["id"]
            keys = ("image", "mask") if part == "labeled" else ("image", "image_strong")
            assert all(torch.equal(one[part][k], two[part][k]) for k in keys)
    first, second = epochs[0][: len(epochs[0]) // 2], epochs[0][len(epochs[0]) // 2 :]
    assert [b["unlabeled"]["id"] for b in first] != [b["unlabeled"]["id"] for b in second]


def test_resumable_loader_continues_mid_epoch(qata_root: Path) -> None:
    """The training loaders' state (epoch, batches done) restarts the epoch after the last finished batch, and a
    finished epoch's state starts the next epoch (Lightning's stateful-loader protocol)."""
    dm = make_dm(qata_root, zoom_prob=1.0, strong_jitter_prob=1.0)
    dm.setup("fit")
    full = [b for b, _, _ in dm.train_dataloader()]
    done = 2
    dm.trainer = SimpleNamespace(  # type: ignore[assignment]
        world_size=1,
        global_rank=0,
        fit_loop=SimpleNamespace(
            epoch_loop=SimpleNamespace(batch_progress=SimpleNamespace(current=SimpleNamespace(processed=done)))
        ),
    )
    loader = dm.train_dataloader()
    states = [dl.state_dict() for dl in loader.flattened]
    assert states == [{"epoch": 0, "batches": done}] * 2
    fresh = dm.train_dataloader()
    for dl, state in zip(fresh.flattened, states, strict=True):
        dl.load_state_dict(state)
    rest = [b for b, _, _ in fresh]
    assert len(rest) == len(full) - done
    for a, b in zip(full[done:], rest, strict=True):
        assert a["unlabeled"]["id"] == b["unlabeled"]["id"]
        assert torch.equal(a["unlabeled"]["image_strong"], b["unlabeled"]["image_strong"])
        assert torch.equal(a["labeled"]["image"], b["labeled"]["image"])
    # A finished epoch's state starts the next epoch, from its first batch.
    nxt = dm.train_dataloader()
    for dl in nxt.flattened:
        dl.load_state_dict({"epoch": 0, "batches": len(dl)})
        assert dl.sampler.epoch == 1
    assert len([b for b, _, _ in nxt]) == len(full)


def test_fast_transforms_match_monai() -> None:
    """``ZScored`` equals MONAI's ``NormalizeIntensityd(channel_wise=True)`` (constant images included), and
    ``ResizeIfNeededd`` equals ``Resized`` + clip, skipping both when the size already matches."""
    from monai.transforms import NormalizeIntensityd, Resized, ScaleIntensityRanged

    from textseg.data.transforms import ResizeIfNeededd, ZScored

    gen = torch.Generator().manual_seed(0)
    x = torch.rand(2, 40, 40, generator=gen) * 3 + 1
    x[1] = 0.5  # a constant channel
    ref = NormalizeIntensityd(keys="image", channel_wise=True)({"image": x.clone()})["image"]
    assert torch.allclose(ZScored(keys="image")({"image": x.clone()})["image"], torch.as_tensor(ref), atol=1e-5)
    img = torch.rand(1, 48, 48, generator=gen)
    mask = (torch.rand(1, 48, 48, generator=gen) > 0.7).float()
    fast = ResizeIfNeededd(["image", "mask"], 32, ["bicubic", "nearest"])({"image": img, "mask": mask})
    slow = Resized(keys=["image", "mask"], spatial_size=(32, 32), mode=["bicubic", "nearest"], anti_aliasing=False)(
        {"image": img, "mask": mask}
    )
    slow = ScaleIntensityRanged(keys="image", a_min=0.0, a_max=1.0, b_min=0.0, b_max=1.0, clip=True)(slow)
    assert all(torch.equal(torch.as_tensor(fast[k]), torch.as_tensor(slow[k])) for k in ("image", "mask"))
    same = ResizeIfNeededd(["image", "mask"], 48, ["bicubic", "nearest"])({"image": img, "mask": mask})
    assert same["image"] is img and same["mask"] is mask
