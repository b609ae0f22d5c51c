"""The one LightningDataModule of textseg: labeled + unlabeled paired image-text batches.

One dataset (QaTa-COV19, MosMedData+, or a synthetic stand-in) or several at once (TextMoE's composite X-ray + CT
data, Zeng et al. 2025): every sample carries its ``modality`` and ``dataset`` name, the label ratio is applied to each
dataset separately, the smaller training sets are over-sampled, and validation/test metrics are reported per dataset.

Datasets are named by their key in :data:`textseg.data.registry.DATASETS`, the one list of them: adding a dataset is
one module and one registry line, with no change here. Options that belong to one dataset only are not DataModule
arguments: ``dataset_options`` maps a dataset of the run to its factory's own keyword arguments (e.g.
``{"mosmed": {"bare_side": "none"}, "synthetic": {"n_train": 800}}``), checked against the factory's signature
when the DataModule is built.

Training batches are dicts ``{"labeled": {...}, "unlabeled": {...}}`` built by Lightning's
:class:`~lightning.pytorch.utilities.combined_loader.CombinedLoader` in ``max_size_cycle`` mode; the sample keys are
documented once in :mod:`textseg.data.transforms`. Validation and test batches are plain labeled dicts.

The training order and every sample's augmentation are pure functions of ``seed``, the epoch and the sample's
position in the epoch's draw (:mod:`textseg.data.sampling`): they do not depend on ``num_workers``, and a run resumed
from a mid-epoch checkpoint continues with exactly the batches an uninterrupted run would have seen. Under DDP every
rank draws the epoch's order and keeps every ``world_size``-th position of it (``rank``, ``rank + world_size``, ...), so
the ranks' batches are disjoint and together are exactly the batches (and augmentations) of a one-process run whose
batch sizes are ``world_size`` times larger; ``batch_size`` and ``unlabeled_batch_size`` are per process. (Lightning's
default :class:`~torch.utils.data.DistributedSampler` would replace the labeled sampler with replacement by a plain
partition, and yield no batch at all when a rank's share is smaller than ``batch_size``.) Validation and test loaders
are left to Lightning's ``DistributedSampler``, which pads a split whose size is not a multiple of the world size.

The labeled subset for ``labeled_ratio`` and ``seed`` is exactly Semi-MedRef's published one
(``docs/data.md`` §6); the run writes the split it used to ``split.json`` in its log directory.

Mask-less image-text pairs (``unlabeled_images`` + ``unlabeled_texts``, the folder + CSV format of
:func:`textseg.data.folder.folder_records`) join the unlabeled pool of a semi-supervised run; see the class docstring.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal, cast

import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.combined_loader import CombinedLoader
from torch.utils.data import DataLoader

from textseg.data.base import Record, SegDataset, Split, raise_problems, record_texts, validate_dataset
from textseg.data.folder import UnlabeledPool, folder_records, read_unlabeled_pools, unlabeled_pools
from textseg.data.registry import check_dataset_options, load_dataset
from textseg.data.sampling import EpochSampler, ResumableLoader, SeededDataset, derive_seed
from textseg.data.transforms import build_transform
from textseg.errors import DataError, check_range
from textseg.ops.text import TokenLimit


class TextSegDataModule(LightningDataModule):
    """Paired image-text data for QaTa-COV19, MosMedData+, the synthetic referring datasets or any registered one.

    Args:
        dataset: A name of :data:`textseg.data.registry.DATASETS` (``"qata"``, ``"mosmed"``, ``"synthetic"``
            (X-ray-like), ``"synthetic_ct"`` (CT-like), ...), or a list of them for composite training (TextMoE:
            ``[qata, mosmed]``).
        root: Dataset root (one per dataset); the layout is detected (``textseg.data``). Synthetic datasets are
            generated there when the folder does not exist.
        dataset_options: Per-dataset keyword arguments of the dataset's factory
            (:func:`textseg.data.registry.load_dataset`), keyed by dataset name; every key must be a dataset of this
            run and every inner key an argument of that dataset's factory. For example
            ``{"mosmed": {"bare_side": "none"}, "synthetic": {"n_train": 800, "image_size": 224}}``, on the command
            line ``--data.dataset_options '{mosmed: {bare_side: none}}'``. The options: ``mosmed``: ``bare_side``
            (``"all"`` or ``"none"``, the positional-label convention for a bare "X lung", ``docs/data.md`` §4.3);
            ``qata``: ``positions`` (source of the positional labels); ``synthetic`` / ``synthetic_ct``:
            ``n_train``, ``n_val``, ``n_test``, ``image_size``, ``seed`` of the generated tree (defaults 400, 100,
            100, 128 px, 0; a tree that exists is checked against the values given), ``positions`` (and
            ``modality`` for ``synthetic``). ``None`` (default): every dataset with its factory's defaults.
        labeled_ratio: Share of each dataset's train split with masks, in (0, 1]; 1.0 uses all of it.
        oversample: Repetitions of each dataset's train records (labeled and unlabeled) in an epoch, one integer per
            dataset; ``None`` balances them: ``round(largest / size)`` (MosMed x3 beside QaTa, as TextMoE's code).
        image_size: Side of the square network input (a multiple of 32).
        batch_size: Labeled images per step (Semi-MedRef: 32).
        unlabeled_batch_size: Unlabeled images per step; ``None`` = ``batch_size``.
        eval_batch_size: Batch size of validation and test loaders.
        num_workers: DataLoader workers per loader.
        seed: Seed of the labeled split (42 reproduces Semi-MedRef) and of the sampling/augmentation streams.
        use_unlabeled: Emit the unlabeled loader (semi-supervised methods).
        epoch: The step budget of one training epoch. ``"unlabeled_pass"``: one pass over the unlabeled split
            (``len // world_size // unlabeled_batch_size`` steps), the labeled subset sampled with replacement to the
            same number of steps (Semi-MedRef, ``docs/methods.md`` §6.6); without ``use_unlabeled`` the labeled
            stream is then exactly that of a semi-supervised run with the same seed, and no unlabeled image is read,
            so a supervised baseline gets the same optimizer steps and labeled batches as its semi-supervised
            partner. ``"labeled_pass"``: one pass over the labeled subset (the unlabeled split, if used, sampled
            with replacement to the same number of steps). ``"auto"``: ``"unlabeled_pass"`` with ``use_unlabeled``,
            else ``"labeled_pass"``. The resolved number is :meth:`steps_per_epoch` (recorded in the run card).
        zoom_prob: Probability of the weak view's ``RandZoomd``.
        zoom_min: Smallest zoom factor of the weak view.
        zoom_max: Largest zoom factor of the weak view.
        strong_brightness: Brightness jitter of the strong view.
        strong_contrast: Contrast jitter of the strong view.
        strong_jitter_prob: Probability of the strong view's jitter.
        strong_blur_prob: Probability of the strong view's Gaussian blur.
        strong_blur_sigma: Range of the blur's sigma in pixels at ``image_size`` (paper: 0.1-2.0 at 224; a run at
            a smaller size keeps the same blur relative to the image with the range scaled by ``image_size / 224``).
        legacy_clamp: Apply the strong jitter after the z-score (clamping to [0, 1]) as the public code does.
        check: Input validation before training (``docs/data.md`` §12): ``"full"`` reads every image and mask,
            ``"fast"`` checks files and sizes only, ``"off"`` skips the file checks (empty splits, empty texts and the
            token limit are always checked).
        max_foreground_share: A mask whose foreground share is above this (an inverted mask has ~90 %) is
            implausible: ``setup`` warns once with their count and the first few files (``check="full"``), and
            ``textseg data check`` lists them all. In (0, 1]; 1 switches the warning off.
        predict_images: Folder of images for ``textseg predict`` (default: the test split of the dataset).
        predict_texts: CSV naming a text for every image of ``predict_images`` (``Image`` and ``text`` columns).
        predict_modality: Modality code of the ``predict_images`` (0 = X-ray, 1 = CT).
        unlabeled_images: Folder of extra images without masks for the unlabeled pool of semi-supervised training
            (``use_unlabeled``), or a list of folders (e.g. one per dataset of a composite run). Every image needs a
            row in its ``unlabeled_texts`` CSV; its positional label is parsed from the text, and it gets the weak and
            strong views, PosAug, T-PatchMix and ITCL like any unlabeled sample. The pairs are read and validated
            (following ``check``) in ``setup("fit")``, before training.
        unlabeled_texts: One CSV per ``unlabeled_images`` folder, the format of ``predict_texts``: an ``Image``
            column and a ``Description``/``text`` column, comma or semicolon separated, names case-insensitive.
        unlabeled_modality: Modality code (0 = X-ray, 1 = CT) of the ``unlabeled_images``, one for all folders
            or one per folder; ``None`` (default): the modality of the dataset each folder belongs to. In a
            composite run a folder without ``unlabeled_dataset`` belongs to the run's one dataset of its modality.
        unlabeled_dataset: The dataset of the run each folder belongs to (one for all, or one per folder), for the
            ``dataset`` key of its samples, per-dataset bookkeeping and ``split.json``; ``None`` (default): the
            run's only dataset, or in a composite run the one dataset of the folder's ``unlabeled_modality`` (an
            error when the run has several or none of that modality). The folder's modality must be its dataset's.

    The extra pairs are added once per epoch, after the datasets' own unlabeled records: ``oversample`` and the
    composite balancing repeat only a dataset's own train records, and ``labeled_ratio`` applies only to its own
    train split. At ``labeled_ratio`` 1.0 the unlabeled pool of a dataset with extra pairs is its extra pairs only
    (without them it stays the whole train split). The epoch follows the enlarged pool: with ``use_unlabeled`` an
    epoch has ``len(unlabeled pool) // world_size // unlabeled_batch_size`` steps. ``split.json`` keeps the
    datasets' own ids under ``unlabeled`` and lists the extra images by file name under ``unlabeled_extra`` (a list;
    for composite data a dict from every dataset of the run to its list), with the folders, CSVs, datasets,
    modalities and sizes under ``unlabeled_extra_pools``.

    Raises:
        DataError: For an invalid argument: a number outside its range (``batch_size`` 0, ``image_size`` 0, ...), a
            dataset name that is not registered, a ``dataset_options`` key that is not a dataset of the run, or an
            option its dataset does not take;
            ``unlabeled_images`` without ``unlabeled_texts`` (or the reverse), lists of different lengths, a modality
            other than 0/1, or extra unlabeled pairs with ``use_unlabeled`` false. ``setup`` refuses empty needed
            splits (the test split in ``setup("fit")`` too when ``test_after_fit`` is set) and bad files or texts.
    """

    def __init__(
        self,
        dataset: str | list[str] = "synthetic",
        root: str | list[str] = "data/synthetic",
        dataset_options: dict[str, dict[str, Any]] | None = None,
        labeled_ratio: float = 1.0,
        oversample: list[int] | None = None,
        image_size: int = 224,
        batch_size: int = 32,
        unlabeled_batch_size: int | None = None,
        eval_batch_size: int = 8,
        num_workers: int = 0,
        seed: int = 42,
        use_unlabeled: bool = True,
        epoch: Literal["auto", "labeled_pass", "unlabeled_pass"] = "auto",
        zoom_prob: float = 0.1,
        zoom_min: float = 0.95,
        zoom_max: float = 1.2,
        strong_brightness: float = 0.2,
        strong_contrast: float = 0.2,
        strong_jitter_prob: float = 0.8,
        strong_blur_prob: float = 0.5,
        strong_blur_sigma: tuple[float, float] = (0.1, 2.0),
        legacy_clamp: bool = False,
        check: Literal["full", "fast", "off"] = "full",
        max_foreground_share: float = 0.6,
        predict_images: str | None = None,
        predict_texts: str | None = None,
        predict_modality: int = 0,
        unlabeled_images: str | list[str] | None = None,
        unlabeled_texts: str | list[str] | None = None,
        unlabeled_modality: int | list[int] | None = None,
        unlabeled_dataset: str | list[str] | None = None,
    ) -> None:
        super().__init__()
        for name, value, low, high in (
            ("batch_size", batch_size, 1, None),
            ("eval_batch_size", eval_batch_size, 1, None),
            ("image_size", image_size, 32, None),
            ("num_workers", num_workers, 0, None),
            ("seed", seed, 0, None),
            ("zoom_prob", zoom_prob, 0, 1),
            ("zoom_max", zoom_max, zoom_min, None),
            ("strong_brightness", strong_brightness, 0, 1),
            ("strong_contrast", strong_contrast, 0, 1),
            ("strong_jitter_prob", strong_jitter_prob, 0, 1),
            ("strong_blur_prob", strong_blur_prob, 0, 1),
            ("predict_modality", predict_modality, 0, 1),
        ):
            check_range(name, value, low, high)
        check_range("labeled_ratio", labeled_ratio, 0, 1, open_low=True)
        check_range("max_foreground_share", max_foreground_share, 0, 1, open_low=True)
        check_range("zoom_min", zoom_min, 0, open_low=True)
        check_range("unlabeled_batch_size", unlabeled_batch_size, 1, optional=True)
        if len(strong_blur_sigma) != 2 or not 0 < strong_blur_sigma[0] <= strong_blur_sigma[1]:
            raise DataError(f"strong_blur_sigma must be a range 0 < low <= high, got {list(strong_blur_sigma)}")
        if image_size % 32 != 0:
            raise DataError(f"image_size must be a multiple of 32, got {image_size}")
        if epoch not in ("auto", "labeled_pass", "unlabeled_pass"):
            raise DataError(f"epoch must be 'auto', 'labeled_pass' or 'unlabeled_pass', got {epoch!r}")
        names: list[str] = [dataset] if isinstance(dataset, str) else [str(d) for d in dataset]
        roots = [root] if isinstance(root, str) else list(root)
        if not names or len(roots) != len(names) or len(set(names)) != len(names):
            raise DataError(f"need one root per dataset and no repeated dataset, got dataset={dataset} root={root}")
        options = check_dataset_options(names, dataset_options)
        if (predict_images is None) != (predict_texts is None):
            raise DataError("predict_images and predict_texts go together: give both or neither")
        if oversample is not None and (len(oversample) != len(names) or min(oversample) < 1):
            raise DataError(f"oversample needs one integer >= 1 per dataset {names}, got {oversample}")
        pools = unlabeled_pools(unlabeled_images, unlabeled_texts, unlabeled_modality, unlabeled_dataset, names)
        if pools and not use_unlabeled:
            raise DataError("unlabeled_images are given but use_unlabeled is false: the extra pairs would be unused")
        self.save_hyperparameters()
        self.unlabeled_pools: list[UnlabeledPool] = pools
        self.dataset_names: list[str] = names
        self.roots: dict[str, str] = dict(zip(names, roots, strict=True))
        self.dataset_options: dict[str, dict[str, Any]] = options
        self.datas: dict[str, SegDataset] = {}
        self.splits: dict[str, list[Record]] = {}
        self.sources: dict[str, list[str]] = {}
        self._extra_sizes: list[tuple[str, int]] = []  # (dataset, pairs) per unlabeled pool, set by setup("fit")
        self.test_after_fit = False  # setup("fit") also validates the test split (``--test_after_fit``)
        self._validated: set[tuple[str, str, bool]] = set()  # (dataset, split, texts checked): passed validation

    @property
    def hp(self) -> Any:
        """The saved constructor arguments (``self.hparams``) with attribute access."""
        return self.hparams

    @property
    def data(self) -> SegDataset | None:
        """The dataset when there is exactly one (``None`` before ``setup`` or for composite data)."""
        return next(iter(self.datas.values())) if len(self.datas) == 1 else None

    def _load(self, name: str) -> SegDataset:
        return load_dataset(name, self.roots[name], **self.dataset_options[name])

    def prepare_data(self) -> None:
        """Generate the synthetic datasets once (rank 0) when they do not exist yet."""
        for name in self.dataset_names:
            if name.startswith("synthetic"):
                self._load(name)

    def _oversample(self) -> dict[str, int]:
        if self.hp.oversample is not None:
            return dict(zip(self.dataset_names, self.hp.oversample, strict=True))
        sizes = {name: len(data.records("train")) for name, data in self.datas.items()}
        largest = max(sizes.values())
        return {name: max(1, round(largest / max(1, n))) for name, n in sizes.items()}

    def setup(self, stage: str | None = None) -> None:
        """Read the datasets, select each one's labeled subset and validate every file that will be used."""
        if stage == "predict" and self.hp.predict_images is not None:
            hp = self.hp
            self.splits["predict"] = folder_records(
                hp.predict_images, hp.predict_texts, hp.predict_modality, check=hp.check
            )
            self.sources["predict"] = [str(hp.predict_texts) for _ in self.splits["predict"]]
            self._check_texts(["predict"])
            return
        for name in self.dataset_names:
            if name not in self.datas:
                self.datas[name] = self._load(name)
        self._validate(stage)
        parts: dict[str, list[tuple[str, Record]]] = {}
        factors = self._oversample()
        extra: list[tuple[str, list[Record]]] = []
        if stage in (None, "fit") and self.unlabeled_pools:
            extra = read_unlabeled_pools(self.unlabeled_pools, self.datas, self.hp.check)
        for name, data in self.datas.items():
            if stage in (None, "fit"):
                labeled, unlabeled = data.labeled_split(self.hp.labeled_ratio, self.hp.seed)
                if self.hp.labeled_ratio == 1 and any(n == name for n, _ in extra):
                    unlabeled = []  # all masks plus extra pairs: the unlabeled pool is the extra pairs
                parts.setdefault("labeled", []).extend((name, r) for r in labeled * factors[name])
                parts.setdefault("unlabeled", []).extend((name, r) for r in unlabeled * factors[name])
            if stage in (None, "fit", "validate"):
                parts.setdefault("val", []).extend((name, r) for r in data.records("val"))
            if stage in (None, "test", "predict"):
                parts.setdefault("test", []).extend((name, r) for r in data.records("test"))
        self._extra_sizes = [(n, len(records)) for n, records in extra]
        if extra:  # once per epoch, after the datasets' own records (never over-sampled)
            parts["unlabeled_extra"] = [(n, r) for n, records in extra for r in records]
            parts["unlabeled"].extend(parts["unlabeled_extra"])
        for key, pairs in parts.items():
            self.sources[key] = [n for n, _ in pairs]
            self.splits[key] = [r for _, r in pairs]
        self._check_texts(["unlabeled_extra"] if extra else [])
        if stage in (None, "fit"):
            self._write_split(factors)

    def _token_limit(self) -> TokenLimit | None:
        """The token-length rule of the attached model's text encoder (``None`` without a model)."""
        return TokenLimit.of(getattr(getattr(self.trainer, "lightning_module", None), "text_encoder", None))

    def _validate(self, stage: str | None) -> None:
        """Validate the splits ``stage`` needs with ``textseg data check``'s validator (``docs/data.md`` §12)."""
        hp = self.hp
        by_stage: dict[str, tuple[Split, ...]] = {"fit": ("train", "val"), "validate": ("val",)}
        needed = by_stage.get(stage or "", ("test",))
        if stage is None or (stage == "fit" and self.test_after_fit):
            needed = ("train", "val", "test")
        full = None if hp.check == "off" else hp.check == "full"
        tokens = self._token_limit()
        large: list[str] = []
        for name, data in self.datas.items():
            todo = [s for s in needed if (name, s, tokens is not None) not in self._validated]  # passed: not again
            if not todo:
                continue
            found = validate_dataset(data, todo, full=full, max_foreground_share=hp.max_foreground_share, tokens=tokens)
            raise_problems(found.problems, f"the {name} dataset at {data.root} ({', '.join(todo)} splits)")
            self._validated.update((name, s, tokens is not None) for s in todo)
            large += found.mask_lines()
        if large:
            rank_zero_warn(
                f"{len(large)} mask(s) have a foreground share above max_foreground_share={hp.max_foreground_share:g} "
                f"(inverted masks?): {'; '.join(large[:3])}{'; ...' if len(large) > 3 else ''}. "
                "`textseg data check` lists them all."
            )

    def _check_texts(self, keys: list[str]) -> None:
        """Refuse texts of mask-less pairs that the model's text encoder would truncate, before anything is written."""
        tokens = self._token_limit()
        if tokens is None:
            return
        found = [(n or "predict", k, r) for k in keys for n, r in zip(self.sources[k], self.splits[k], strict=True)]
        raise_problems(tokens.problems(record_texts(found)), "the texts of " + " and ".join(keys))

    def _ids(self, key: str) -> list[str]:
        """Record ids of a split, unique ones in order; ``dataset:id`` for composite data.

        For ``"unlabeled"`` only the datasets' own records: the extra pairs (appended last) are not counted.
        """
        pairs = list(zip(self.sources[key], self.splits[key], strict=True))
        if key == "unlabeled":
            pairs = pairs[: len(pairs) - len(self.splits.get("unlabeled_extra", []))]
        ids = [f"{n}:{r.id}" if len(self.datas) > 1 else r.id for n, r in pairs]
        return list(dict.fromkeys(ids))

    def _extra_split(self) -> dict[str, Any]:
        """The ``split.json`` entries of the extra unlabeled pairs (none without them)."""
        if "unlabeled_extra" not in self.splits:
            return {}
        pairs = list(zip(self.sources["unlabeled_extra"], self.splits["unlabeled_extra"], strict=True))
        names: dict[str, list[str]] = {n: [r.key for m, r in pairs if m == n] for n in self.dataset_names}
        pools = [
            dict(images=pool.images, texts=pool.texts, dataset=name, modality=self.datas[name].modality, size=size)
            for pool, (name, size) in zip(self.unlabeled_pools, self._extra_sizes, strict=True)
        ]
        return {
            "unlabeled_extra": names[self.dataset_names[0]] if len(self.datas) == 1 else names,
            "unlabeled_extra_pools": pools,
        }

    def _write_split(self, factors: dict[str, int]) -> None:
        trainer = self.trainer
        if trainer is None or trainer.logger is None:
            return
        log_dir = trainer.log_dir  # a broadcast under DDP: every rank must ask, or rank 0 waits forever
        if not trainer.is_global_zero or log_dir is None:
            return
        out = Path(log_dir)
        out.mkdir(parents=True, exist_ok=True)
        single = len(self.datas) == 1
        split = {
            "dataset": self.dataset_names[0] if single else self.dataset_names,
            "layout": next(iter(self.datas.values())).layout if single else [d.layout for d in self.datas.values()],
            "root": str(self.roots[self.dataset_names[0]]) if single else [str(r) for r in self.roots.values()],
            "labeled_ratio": self.hp.labeled_ratio,
            "seed": self.hp.seed,
            "oversample": [factors[n] for n in self.dataset_names],
            "labeled": self._ids("labeled"),
            "unlabeled": self._ids("unlabeled") if self.hp.use_unlabeled else [],
            "val": self._ids("val"),
            **self._extra_split(),
        }
        (out / "split.json").write_text(json.dumps(split, indent=1))
        layouts = ", ".join(f"{n}: {d.layout}" for n, d in self.datas.items())
        n_extra = len(self.splits.get("unlabeled_extra", []))
        more = f" + {n_extra} extra unlabeled pairs" if n_extra else ""
        rank_zero_info(
            f"textseg: {len(split['labeled'])} labeled / {len(self._ids('unlabeled'))} unlabeled{more} ({layouts}); "
            f"split written to {out / 'split.json'}"
        )

    def _world(self) -> tuple[int, int]:
        """``(world_size, global_rank)`` of the attached trainer; ``(1, 0)`` without one."""
        trainer = self.trainer
        return (1, 0) if trainer is None else (trainer.world_size, trainer.global_rank)

    def _batches_done(self) -> int:
        """Batches the trainer has finished in the current training epoch (saved for mid-epoch resume)."""
        trainer = self.trainer
        if trainer is None:
            return 0
        return int(getattr(trainer.fit_loop.epoch_loop.batch_progress.current, "processed", 0))

    def _sampler(self, size: int, stream: int, num_samples: int | None = None) -> EpochSampler:
        """This process's share of the epoch's seeded draw (see :mod:`textseg.data.sampling`)."""
        world, rank = self._world()
        return EpochSampler(size, self.hp.seed, stream, num_samples=num_samples, num_replicas=world, rank=rank)

    def _dataset(self, key: str, kind: str) -> SeededDataset:
        hp = self.hp
        strong = {
            "brightness": hp.strong_brightness,
            "contrast": hp.strong_contrast,
            "jitter_prob": hp.strong_jitter_prob,
            "blur_prob": hp.strong_blur_prob,
            "blur_sigma": tuple(hp.strong_blur_sigma),
        }
        transform = build_transform(
            kind, hp.image_size, hp.zoom_prob, (hp.zoom_min, hp.zoom_max), strong, hp.legacy_clamp
        )
        pairs = zip(self.sources[key], self.splits[key], strict=True)
        return SeededDataset([{"record": r, "dataset": n} for n, r in pairs], transform)

    def _loader(self, ds: SeededDataset, batch_size: int, stream: int, sampler: EpochSampler | None = None) -> Any:
        """A DataLoader with its own generator (never the global RNG); a resumable one over ``sampler``."""
        kwargs: dict[str, Any] = {
            "batch_size": batch_size,
            "num_workers": self.hp.num_workers,
            "persistent_workers": self.hp.num_workers > 0,
            "generator": torch.Generator().manual_seed(derive_seed(self.hp.seed, stream)),
        }
        if sampler is None:
            return DataLoader(ds, **kwargs)
        return ResumableLoader(
            ds, sampler=sampler, drop_last=len(sampler) >= batch_size, progress=self._batches_done, **kwargs
        )

    def train_dataloader(self) -> CombinedLoader:
        """Return ``CombinedLoader({"labeled": ..., "unlabeled": ...}, "max_size_cycle")``.

        Batch sizes are per process. Under DDP each sampler is this rank's share of the one-process draw
        (:class:`~textseg.data.sampling.EpochSampler`), so ``world_size`` processes with batch ``B`` see the batches,
        and the augmentations, of one process with batch ``world_size * B``. Both loaders are resumable mid-epoch.

        Raises:
            DataError: If a training set has fewer samples than there are processes.
        """
        hp = self.hp
        world, _ = self._world()
        labeled, unlabeled = self.splits["labeled"], self.splits["unlabeled"]
        used = {"labeled": labeled, "unlabeled": unlabeled} if hp.use_unlabeled else {"labeled": labeled}
        if self._epoch_kind() == "unlabeled_pass":
            used["unlabeled"] = unlabeled
        for key, records in used.items():
            if len(records) < world:
                raise DataError(f"the {key} training set has {len(records)} samples, fewer than the {world} processes")
        steps = self.steps_per_epoch()
        lab_ds = self._dataset("labeled", "labeled")
        by_labeled = self._epoch_kind() == "labeled_pass"
        lab_draw = None if by_labeled else world * steps * hp.batch_size  # a permutation, or with replacement
        loaders = {"labeled": self._loader(lab_ds, hp.batch_size, 1, self._sampler(len(lab_ds), 1, lab_draw))}
        if hp.use_unlabeled:
            ubs = hp.unlabeled_batch_size or hp.batch_size
            unl_ds = self._dataset("unlabeled", "unlabeled")
            unl_draw = world * steps * ubs if by_labeled else None
            loaders["unlabeled"] = self._loader(unl_ds, ubs, 2, self._sampler(len(unl_ds), 2, unl_draw))
        return CombinedLoader(loaders, "max_size_cycle")

    def _epoch_kind(self) -> Literal["labeled_pass", "unlabeled_pass"]:
        if self.hp.epoch != "auto":
            return cast(Literal["labeled_pass", "unlabeled_pass"], self.hp.epoch)
        return "unlabeled_pass" if self.hp.use_unlabeled else "labeled_pass"

    def steps_per_epoch(self) -> int:
        """Optimizer steps of one training epoch per process, as ``epoch`` sets the budget (after ``setup("fit")``).

        Raises:
            DataError: If the split the epoch is measured on is empty.
        """
        hp = self.hp
        world, _ = self._world()
        if self._epoch_kind() == "unlabeled_pass":
            size, batch, key = len(self.splits["unlabeled"]), hp.unlabeled_batch_size or hp.batch_size, "unlabeled"
        else:
            size, batch, key = len(self.splits["labeled"]), hp.batch_size, "labeled"
        if size == 0:
            raise DataError(f"epoch={hp.epoch!r} measures the epoch on the {key} split, which is empty")
        return max(1, size // world // batch)  # a labeled set smaller than a batch is one partial batch

    def val_dataloader(self) -> DataLoader:
        """Labeled validation loader (no augmentation)."""
        return self._loader(self._dataset("val", "eval"), self.hp.eval_batch_size, 3)

    def test_dataloader(self) -> DataLoader:
        """Labeled test loader (no augmentation)."""
        return self._loader(self._dataset("test", "eval"), self.hp.eval_batch_size, 4)

    def predict_dataloader(self) -> DataLoader:
        """``predict_images`` with their texts, or the test split, for ``textseg predict``."""
        key = "predict" if "predict" in self.splits else "test"
        return self._loader(self._dataset(key, "predict"), self.hp.eval_batch_size, 4)
