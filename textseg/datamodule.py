"""The one LightningDataModule of textseg: labeled + unlabeled paired image-text batches.

Training batches are dicts ``{"labeled": {...}, "unlabeled": {...}}`` built by Lightning's
:class:`~lightning.pytorch.utilities.combined_loader.CombinedLoader` in ``max_size_cycle`` mode; the sample keys are
documented once in :mod:`textseg.transforms`. Validation and test batches are plain labeled dicts.

The labeled subset for ``labeled_ratio`` and ``seed`` is exactly Semi-MedRef's published one
(``reference/data.md`` §6); the run writes the split it used to ``split.json`` in its log directory.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.combined_loader import CombinedLoader
from monai.data import Dataset
from monai.data.utils import worker_init_fn
from torch.utils.data import DataLoader, RandomSampler

from textseg.datasets import load_dataset
from textseg.datasets.base import Record, SegDataset, Split
from textseg.errors import DataError
from textseg.transforms import build_transform


class TextSegDataModule(LightningDataModule):
    """Paired image-text data for QaTa-COV19, MosMedData+ or the synthetic referring dataset.

    Args:
        dataset: ``"qata"``, ``"mosmed"`` or ``"synthetic"``.
        root: Dataset root; the layout is detected (``textseg.datasets``). For ``"synthetic"`` the dataset is
            generated there when the folder does not exist.
        labeled_ratio: Share of the train split with masks, in (0, 1]; 1.0 uses all of it.
        image_size: Side of the square network input (a multiple of 32).
        batch_size: Labeled images per step (Semi-MedRef: 32).
        unlabeled_batch_size: Unlabeled images per step; ``None`` = ``batch_size``.
        eval_batch_size: Batch size of validation and test loaders.
        num_workers: DataLoader workers per loader.
        seed: Seed of the labeled split (42 reproduces Semi-MedRef) and of the sampling/augmentation streams.
        use_unlabeled: Emit the unlabeled loader (semi-supervised methods). Without it an epoch is one pass over
            the labeled subset; with it an epoch is one pass over the unlabeled set and the labeled set is sampled with
            replacement to the same number of steps (Semi-MedRef, ``methods.md`` §6.6).
        zoom_prob: Probability of the weak view's ``RandZoomd``.
        zoom_min: Smallest zoom factor of the weak view.
        zoom_max: Largest zoom factor of the weak view.
        strong_brightness: Brightness jitter of the strong view.
        strong_contrast: Contrast jitter of the strong view.
        strong_jitter_prob: Probability of the strong view's jitter.
        strong_blur_prob: Probability of the strong view's Gaussian blur.
        legacy_clamp: Apply the strong jitter after the z-score (clamping to [0, 1]) as the public code does.
        bare_side: MosMed positional-label convention for a bare "X lung" (``data.md`` §4.3).
        check: Input validation before training: ``"full"`` reads every mask, ``"fast"`` checks files and
            sizes only, ``"off"`` skips it.
        synthetic_train: Synthetic train images (generation only).
        synthetic_val: Synthetic validation images.
        synthetic_test: Synthetic test images.
        synthetic_image_size: Side of the generated synthetic images.
    """

    def __init__(
        self,
        dataset: Literal["qata", "mosmed", "synthetic"] = "synthetic",
        root: str = "data/synthetic",
        labeled_ratio: float = 1.0,
        image_size: int = 224,
        batch_size: int = 32,
        unlabeled_batch_size: int | None = None,
        eval_batch_size: int = 8,
        num_workers: int = 0,
        seed: int = 42,
        use_unlabeled: bool = True,
        zoom_prob: float = 0.1,
        zoom_min: float = 0.95,
        zoom_max: float = 1.2,
        strong_brightness: float = 0.2,
        strong_contrast: float = 0.2,
        strong_jitter_prob: float = 0.8,
        strong_blur_prob: float = 0.5,
        legacy_clamp: bool = False,
        bare_side: Literal["all", "none"] = "all",
        check: Literal["full", "fast", "off"] = "full",
        synthetic_train: int = 400,
        synthetic_val: int = 100,
        synthetic_test: int = 100,
        synthetic_image_size: int = 128,
    ) -> None:
        super().__init__()
        if not 0 < labeled_ratio <= 1:
            raise DataError(f"labeled_ratio must be in (0, 1], got {labeled_ratio}")
        if image_size % 32 != 0:
            raise DataError(f"image_size must be a multiple of 32, got {image_size}")
        self.save_hyperparameters()
        self.data: SegDataset | None = None
        self.splits: dict[str, list[Record]] = {}

    @property
    def hp(self) -> Any:
        """The saved constructor arguments (``self.hparams``) with attribute access."""
        return self.hparams

    def _load(self) -> SegDataset:
        hp = self.hp
        kwargs: dict[str, Any] = {}
        if hp.dataset == "mosmed":
            kwargs["bare_side"] = hp.bare_side
        if hp.dataset == "synthetic":
            kwargs.update(
                n_train=hp.synthetic_train,
                n_val=hp.synthetic_val,
                n_test=hp.synthetic_test,
                image_size=hp.synthetic_image_size,
            )
        return load_dataset(hp.dataset, hp.root, **kwargs)

    def prepare_data(self) -> None:
        """Generate the synthetic dataset once (rank 0) when it does not exist yet."""
        if self.hp.dataset == "synthetic":
            self._load()

    def setup(self, stage: str | None = None) -> None:
        """Read the dataset, select the labeled subset and validate every file that will be used."""
        if self.data is None:
            self.data = self._load()
        data = self.data
        if stage in (None, "fit"):
            labeled, unlabeled = data.labeled_split(self.hp.labeled_ratio, self.hp.seed)
            self.splits.update(labeled=labeled, unlabeled=unlabeled)
        if stage in (None, "fit", "validate"):
            self.splits["val"] = data.records("val")
        if stage in (None, "test", "predict"):
            self.splits["test"] = data.records("test")
        if self.hp.check != "off":
            needed: dict[str, tuple[Split, ...]] = {
                "fit": ("train", "val"),
                "validate": ("val",),
                "test": ("test",),
                "predict": ("test",),
            }
            data.check(needed.get(stage or "", ("train", "val", "test")), full=self.hp.check == "full")
        if stage in (None, "fit"):
            self._write_split()

    def _write_split(self) -> None:
        trainer = self.trainer
        if trainer is None or not trainer.is_global_zero or trainer.log_dir is None:
            return
        out = Path(trainer.log_dir)
        out.mkdir(parents=True, exist_ok=True)
        assert self.data is not None
        split = {
            "dataset": self.hp.dataset,
            "layout": self.data.layout,
            "root": str(self.hp.root),
            "labeled_ratio": self.hp.labeled_ratio,
            "seed": self.hp.seed,
            "labeled": [r.id for r in self.splits["labeled"]],
            "unlabeled": [r.id for r in self.splits["unlabeled"]] if self.hp.use_unlabeled else [],
            "val": [r.id for r in self.splits["val"]],
        }
        (out / "split.json").write_text(json.dumps(split, indent=1))
        rank_zero_info(
            f"textseg: {len(split['labeled'])} labeled / {len(self.splits['unlabeled'])} unlabeled "
            f"({self.data.layout} layout); split written to {out / 'split.json'}"
        )

    def _generator(self, offset: int) -> torch.Generator:
        return torch.Generator().manual_seed(self.hp.seed * 1000 + offset)

    def _dataset(self, records: list[Record], kind: str, offset: int) -> Dataset:
        hp = self.hp
        strong = {
            "brightness": hp.strong_brightness,
            "contrast": hp.strong_contrast,
            "jitter_prob": hp.strong_jitter_prob,
            "blur_prob": hp.strong_blur_prob,
        }
        transform = build_transform(
            kind, hp.image_size, hp.zoom_prob, (hp.zoom_min, hp.zoom_max), strong, hp.legacy_clamp
        )
        transform.set_random_state(seed=hp.seed + offset)
        return Dataset(data=[{"record": r} for r in records], transform=transform)

    def _loader(self, ds: Dataset, batch_size: int, **kwargs: Any) -> DataLoader:
        return DataLoader(
            ds,
            batch_size=batch_size,
            num_workers=self.hp.num_workers,
            worker_init_fn=worker_init_fn,
            persistent_workers=self.hp.num_workers > 0,
            **kwargs,
        )

    def train_dataloader(self) -> CombinedLoader:
        """Return ``CombinedLoader({"labeled": ..., "unlabeled": ...}, "max_size_cycle")``."""
        hp = self.hp
        labeled, unlabeled = self.splits["labeled"], self.splits["unlabeled"]
        lab_ds = self._dataset(labeled, "labeled", 1)
        if not hp.use_unlabeled:
            loader = self._loader(
                lab_ds,
                hp.batch_size,
                shuffle=True,
                drop_last=len(labeled) >= hp.batch_size,
                generator=self._generator(1),
            )
            return CombinedLoader({"labeled": loader}, "max_size_cycle")
        ubs = hp.unlabeled_batch_size or hp.batch_size
        steps = max(1, len(unlabeled) // ubs)
        sampler = RandomSampler(
            lab_ds, replacement=True, num_samples=steps * hp.batch_size, generator=self._generator(1)
        )
        loaders = {
            "labeled": self._loader(lab_ds, hp.batch_size, sampler=sampler, drop_last=True),
            "unlabeled": self._loader(
                self._dataset(unlabeled, "unlabeled", 2),
                ubs,
                shuffle=True,
                drop_last=len(unlabeled) >= ubs,
                generator=self._generator(2),
            ),
        }
        return CombinedLoader(loaders, "max_size_cycle")

    def val_dataloader(self) -> DataLoader:
        """Labeled validation loader (no augmentation)."""
        return self._loader(self._dataset(self.splits["val"], "eval", 3), self.hp.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        """Labeled test loader (no augmentation)."""
        return self._loader(self._dataset(self.splits["test"], "eval", 4), self.hp.eval_batch_size)

    def predict_dataloader(self) -> DataLoader:
        """The test split, for ``textseg predict``."""
        return self.test_dataloader()
