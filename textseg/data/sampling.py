"""Seeded, resumable training samplers: the data order and the augmentations are pure functions of the seed.

Every epoch's order is drawn from a generator seeded with ``(seed, stream, epoch)`` only, and every sample is
augmented with a random state seeded with ``(seed, stream, epoch, position in the draw)`` only. So

* the order and the augmentation of every sample do not depend on ``num_workers``, on which worker loads it, on the
  number of DDP processes (a rank keeps positions ``rank, rank + world_size, ...`` of the one draw), nor on whether
  the run was interrupted;
* resuming mid-epoch needs two integers, the epoch and the number of batches already trained on, which
  :class:`ResumableLoader` saves in Lightning checkpoints (Lightning's stateful-loader protocol: the ``state_dict`` /
  ``load_state_dict`` of the training loaders are stored under ``loops.fit_loop.state_dict.combined_loader``).

Samples travel from the sampler to the dataset as ``(index, seed)`` pairs; :class:`SeededDataset` re-seeds its MONAI
transform with ``seed`` before it builds the sample.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from monai.data import get_track_meta, set_track_meta
from monai.transforms import Compose, Randomizable
from torch.utils.data import DataLoader, Dataset, DistributedSampler

__all__ = ["EpochSampler", "ResumableLoader", "SeededDataset", "derive_seed", "random_states"]

#: Odd 32-bit constant (golden ratio) spacing the seeds of the random transforms of one sample.
_SEED_STRIDE = 0x9E3779B9


def derive_seed(*parts: int) -> int:
    """A 32-bit seed that depends on every integer of ``parts`` (NumPy's ``SeedSequence`` hashing).

    Args:
        *parts: Non-negative integers (seed, stream, epoch, position, ...).

    Returns:
        An integer in ``[0, 2**32)``.
    """
    return int(np.random.SeedSequence([int(p) % 2**63 for p in parts]).generate_state(1)[0])


def random_states(transform: Any) -> list[np.random.RandomState]:
    """Every NumPy ``RandomState`` that draws in ``transform`` (a MONAI transform, nested ones included), in order."""
    found: list[np.random.RandomState] = []
    seen: set[int] = set()

    def visit(obj: Any) -> None:
        if id(obj) in seen:
            return
        seen.add(id(obj))
        state = getattr(obj, "R", None)
        if isinstance(obj, Randomizable) and isinstance(state, np.random.RandomState) and id(state) not in seen:
            seen.add(id(state))
            found.append(state)
        children = obj.transforms if isinstance(obj, Compose) else vars(obj).values()
        for child in children:
            if isinstance(child, (Randomizable, Compose)):
                visit(child)

    visit(transform)
    return found


class EpochSampler(DistributedSampler):  # type: ignore[type-arg]
    """This process's share of a seeded per-epoch draw, each index paired with its augmentation seed.

    A :class:`~torch.utils.data.DistributedSampler` subclass so that Lightning leaves it in place under DDP.

    Args:
        size: Number of samples in the dataset.
        seed: Base seed (the DataModule's ``seed``).
        stream: Stream number, distinct per loader (labeled, unlabeled).
        num_samples: Samples drawn **with replacement** per epoch over all processes; ``None`` draws a permutation.
        num_replicas: Number of processes.
        rank: This process's rank.
    """

    def __init__(
        self, size: int, seed: int, stream: int, num_samples: int | None = None, num_replicas: int = 1, rank: int = 0
    ) -> None:
        if size < 1 or num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"bad sampler setup: size={size}, num_replicas={num_replicas}, rank={rank}")
        self.size, self.seed, self.stream = size, seed, stream
        self.replacement = num_samples is not None
        drawn = size if num_samples is None else num_samples
        self.total_size = drawn // num_replicas * num_replicas
        self.num_replicas, self.rank = num_replicas, rank
        self.num_samples = self.total_size // num_replicas
        self.epoch = 0
        self.shuffle, self.drop_last = True, True
        self._resume: tuple[int, int] | None = None

    def order(self, epoch: int) -> torch.Tensor:
        """The whole draw of ``epoch`` (all processes), ``[total_size]`` dataset indices."""
        gen = torch.Generator().manual_seed(derive_seed(self.seed, self.stream, epoch))
        if self.replacement:
            return torch.randint(self.size, (self.total_size,), generator=gen)
        return torch.randperm(self.size, generator=gen)[: self.total_size]

    def resume(self, epoch: int, skip: int) -> None:
        """Start the next iteration of ``epoch`` after this process's first ``skip`` samples (once)."""
        self.epoch = epoch
        self._resume = (epoch, skip)

    def __iter__(self) -> Iterator[tuple[int, int]]:  # type: ignore[override]
        """Yield ``(index, augmentation seed)`` for this process's positions of the epoch's draw."""
        epoch, order = self.epoch, self.order(self.epoch).tolist()
        skip = self._resume[1] if self._resume is not None and self._resume[0] == epoch else 0
        self._resume = None
        for pos in range(self.rank + skip * self.num_replicas, self.total_size, self.num_replicas):
            yield order[pos], derive_seed(self.seed, self.stream, epoch, pos)

    def __len__(self) -> int:
        """Samples per epoch of this process."""
        return self.num_samples

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's draw (Lightning calls this before every training epoch)."""
        self.epoch = epoch


class SeededDataset(Dataset):  # type: ignore[type-arg]
    """A list of inputs and a MONAI transform, re-seeded per sample when indexed with ``(index, seed)``.

    The transform runs with MONAI's meta-data tracking off (plain tensors: the samples carry no affine or
    history, and every transform skips its ``MetaTensor`` bookkeeping, about 40 % of a sample's CPU time).

    Args:
        data: The transform inputs (dicts).
        transform: The MONAI :class:`~monai.transforms.Compose` that builds a sample.
    """

    def __init__(self, data: Sequence[Any], transform: Compose) -> None:
        self.data, self.transform = list(data), transform
        self._states = random_states(transform)

    def __len__(self) -> int:
        """Number of samples."""
        return len(self.data)

    def __getitem__(self, key: int | tuple[int, int]) -> Any:
        """The sample at ``key`` (an index, or ``(index, seed)`` to fix its augmentation)."""
        if isinstance(key, tuple):  # re-seed in place (MONAI's set_random_state builds new RandomStates: ~1 ms)
            key, seed = key
            for k, state in enumerate(self._states):
                state.seed((seed + k * _SEED_STRIDE) % 2**32)
        tracking = get_track_meta()
        set_track_meta(False)
        try:
            return self.transform(self.data[key])
        finally:
            set_track_meta(tracking)


class ResumableLoader(DataLoader):  # type: ignore[type-arg]
    """A training DataLoader over an :class:`EpochSampler` whose position in the epoch goes into checkpoints.

    Args:
        *args: :class:`~torch.utils.data.DataLoader` arguments (``sampler`` must be an :class:`EpochSampler`).
        progress: Returns the number of batches the trainer has finished in the current epoch.
        **kwargs: :class:`~torch.utils.data.DataLoader` keyword arguments.
    """

    def __init__(self, *args: Any, progress: Callable[[], int], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not isinstance(self.sampler, EpochSampler):
            raise TypeError("ResumableLoader needs an EpochSampler")
        self.progress = progress

    def state_dict(self) -> dict[str, int]:
        """``{"epoch", "batches"}``: the sampler's epoch and the batches already trained on in it."""
        assert isinstance(self.sampler, EpochSampler)
        return {"epoch": self.sampler.epoch, "batches": int(self.progress())}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue after the saved batch (or with the next epoch when the saved one was complete)."""
        assert isinstance(self.sampler, EpochSampler) and self.batch_size is not None
        epoch, batches = int(state["epoch"]), int(state["batches"])
        if batches >= len(self):
            self.sampler.set_epoch(epoch + 1)
        else:
            self.sampler.resume(epoch, batches * self.batch_size)
