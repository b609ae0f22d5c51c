"""The dataset registry: a dataset name -> the factory that reads (or generates) it.

Adding a dataset is one module under ``textseg/data/`` (a :class:`~textseg.data.base.SegDataset` subclass) and one
line in :data:`DATASETS` (``docs/architecture.md``, "Add a dataset"). The DataModule's ``dataset`` argument takes the
names, and its ``dataset_options`` mapping passes each dataset's own keyword arguments to its factory.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Any

from textseg.data.base import SegDataset
from textseg.data.mosmed import MosMedDataPlus
from textseg.data.qata import QaTaCOV19
from textseg.data.synthetic import load_synthetic
from textseg.errors import DataError

__all__ = ["DATASETS", "check_dataset_options", "check_options", "load_dataset"]

#: Dataset name -> ``factory(root, **options)`` returning a :class:`~textseg.data.base.SegDataset`.
DATASETS: dict[str, Callable[..., SegDataset]] = {
    "qata": QaTaCOV19,  # QaTa-COV19 chest X-rays (docs/data.md §1.1)
    "mosmed": MosMedDataPlus,  # MosMedData+ CT slices (docs/data.md §1.2)
    "synthetic": load_synthetic,  # generated X-ray-like referring data (generated when root does not exist)
    "synthetic_ct": partial(load_synthetic, modality="ct"),  # its CT-like modality, read as MosMedData+
}


def _check_name(name: str) -> None:
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; expected one of {', '.join(repr(n) for n in DATASETS)}")


def check_options(name: str, options: Mapping[str, Any]) -> None:
    """Refuse options the dataset's factory does not take, naming the ones it does.

    Args:
        name: A key of :data:`DATASETS`.
        options: Keyword arguments for the factory (without ``root``).

    Raises:
        DataError: For an unknown dataset or an option its factory does not accept.
    """
    _check_name(name)
    factory = DATASETS[name]
    bound = factory.keywords if isinstance(factory, partial) else {}
    params = inspect.signature(factory).parameters
    accepted = [p for p in params if p != "root" and p not in bound]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise DataError(
            f"dataset {name!r} has no option {', '.join(repr(u) for u in unknown)}; "
            f"its options are {', '.join(accepted) or 'none'}"
        )


def check_dataset_options(
    names: list[str], dataset_options: Mapping[str, Mapping[str, Any]] | None
) -> dict[str, dict[str, Any]]:
    """Each dataset's factory options: registered names, options only for the run's datasets, known options.

    Args:
        names: The run's datasets.
        dataset_options: Dataset name -> its factory's keyword arguments (``TextSegDataModule(dataset_options=...)``).

    Returns:
        The options of every dataset of ``names`` (``{}`` for those not given).

    Raises:
        DataError: For an unregistered name, a key that is not a dataset of the run, or an unknown option.
    """
    for name in names:
        check_options(name, {})  # a name that is not in the registry: the error lists the registered ones
    given = dict(dataset_options or {})
    stray = [key for key in given if key not in names]
    if stray:
        raise DataError(
            f"dataset_options names {', '.join(repr(k) for k in stray)}, not a dataset of this run; "
            f"the run's datasets are {', '.join(repr(n) for n in names)}"
        )
    options: dict[str, dict[str, Any]] = {}
    for name in names:
        opts = given.get(name) or {}
        if not isinstance(opts, Mapping):
            raise DataError(f"dataset_options[{name!r}] must map option names to values, got {opts!r}")
        check_options(name, opts)
        options[name] = dict(opts)
    return options


def load_dataset(name: str, root: str | Path, **options: Any) -> SegDataset:
    """Build a dataset by name.

    Args:
        name: A key of :data:`DATASETS`: ``"qata"`` (:class:`~textseg.data.qata.QaTaCOV19`), ``"mosmed"``
            (:class:`~textseg.data.mosmed.MosMedDataPlus`), ``"synthetic"``
            (:func:`~textseg.data.synthetic.load_synthetic`: generated first if ``root`` does not exist) or
            ``"synthetic_ct"`` (its CT-like modality, read as MosMedData+).
        root: Dataset root.
        **options: The dataset's own keyword arguments (checked by :func:`check_options`).

    Returns:
        The dataset.

    Raises:
        DataError: For an unknown name or option, or any problem with the data.
    """
    check_options(name, options)
    return DATASETS[name](root, **options)
