"""Datasets: the map-style and iterable protocols, and ways to combine them.

A map-style dataset has ``__getitem__`` and ``__len__``; an iterable one has
``__iter__``. ``batch_gatherer`` is how the DataLoader skips per-sample
Python work: for datasets that are slices of tensors it returns a function
that builds a whole collated batch with one gather per tensor.
"""
from __future__ import annotations

import bisect
import itertools
import math
import warnings
from typing import Callable, Sequence

import numpy as np

from ...creation import from_numpy
from ...random import randperm
from ...tensor import Tensor

__all__ = ["Dataset", "IterableDataset", "TensorDataset", "Subset", "ConcatDataset", "random_split",
           "batch_gatherer"]


class Dataset:
    """A map from indices to samples. Subclasses define ``__getitem__`` (and usually ``__len__``)."""

    def __getitem__(self, index):
        raise NotImplementedError("Subclasses of Dataset should implement __getitem__.")

    def __add__(self, other: "Dataset") -> "ConcatDataset":
        return ConcatDataset([self, other])


class IterableDataset(Dataset):
    """A stream of samples. With worker processes every worker iterates its own copy:
    use ``get_worker_info()`` inside ``__iter__`` to give each worker a different shard."""

    def __iter__(self):
        raise NotImplementedError("Subclasses of IterableDataset should implement __iter__.")

    def __getitem__(self, index):
        raise TypeError(f"{type(self).__name__} is an IterableDataset: it has no __getitem__")


class TensorDataset(Dataset):
    """Sample i is ``tuple(t[i] for t in tensors)``; all tensors share their first dimension."""

    def __init__(self, *tensors: Tensor):
        if not tensors:
            raise ValueError("TensorDataset needs at least one tensor")
        sizes = [t.shape[0] if t.dim() else None for t in tensors]
        if None in sizes or len(set(sizes)) != 1:  # PyTorch asserts this: code may catch AssertionError
            raise AssertionError(f"TensorDataset: size mismatch between tensors: first dimensions {sizes} "
                                 f"(shapes {[tuple(t.shape) for t in tensors]})")
        self.tensors = tensors

    def __getitem__(self, index):
        return tuple(t[index] for t in self.tensors)

    def __len__(self) -> int:
        return self.tensors[0].shape[0]


class Subset(Dataset):
    """The samples of ``dataset`` at ``indices``, in that order."""

    def __init__(self, dataset, indices: Sequence[int]):
        self.dataset = dataset
        self.indices = indices

    def __getitem__(self, idx):
        if isinstance(idx, list):
            return self.dataset[[self.indices[i] for i in idx]]
        return self.dataset[self.indices[idx]]

    def __getitems__(self, indices: list[int]) -> list:
        inner = [self.indices[i] for i in indices]
        if callable(getattr(self.dataset, "__getitems__", None)):
            return self.dataset.__getitems__(inner)
        return [self.dataset[i] for i in inner]

    def __len__(self) -> int:
        return len(self.indices)


class ConcatDataset(Dataset):
    """Several map-style datasets one after another."""

    def __init__(self, datasets):
        self.datasets = list(datasets)
        if not self.datasets:
            raise ValueError("ConcatDataset: datasets should not be an empty iterable")
        for d in self.datasets:
            if isinstance(d, IterableDataset):
                raise TypeError("ConcatDataset does not support IterableDataset")
        self.cumulative_sizes = list(itertools.accumulate(len(d) for d in self.datasets))

    def __len__(self) -> int:
        return self.cumulative_sizes[-1]

    def __getitem__(self, idx):
        if idx < 0:
            if -idx > len(self):
                raise ValueError("absolute value of index should not exceed dataset length")
            idx += len(self)
        which = bisect.bisect_right(self.cumulative_sizes, idx)
        start = self.cumulative_sizes[which - 1] if which else 0
        return self.datasets[which][idx - start]


def _split_lengths(n: int, lengths: Sequence[float]) -> list[int]:
    """PyTorch's rule: fractions summing to 1 take floor(n * f) each, then the
    remainder is handed out one by one, round-robin from the first split."""
    if math.isclose(sum(lengths), 1) and sum(lengths) <= 1:
        counts = []
        for i, frac in enumerate(lengths):
            if frac < 0 or frac > 1:
                raise ValueError(f"Fraction at index {i} is not between 0 and 1")
            counts.append(int(math.floor(n * frac)))
        for i in range(n - sum(counts)):
            counts[i % len(counts)] += 1
        for i, c in enumerate(counts):
            if c == 0:
                warnings.warn(f"Length of split at index {i} is 0. This might result in an empty dataset.",
                              stacklevel=3)
        return counts
    counts = [int(c) for c in lengths]
    if any(c != l for c, l in zip(counts, lengths)) or any(c < 0 for c in counts):
        raise ValueError(f"random_split: lengths must be non-negative integers or fractions summing to 1, "
                         f"got {list(lengths)}")
    if sum(counts) != n:
        raise ValueError(f"Sum of input lengths ({sum(counts)}) does not equal the length of the input "
                         f"dataset ({n})!")
    return counts


def random_split(dataset, lengths: Sequence[float], generator=None) -> list[Subset]:
    """Split into non-overlapping random subsets of the given lengths (or fractions)."""
    counts = _split_lengths(len(dataset), lengths)
    order = randperm(sum(counts), generator=generator).tolist()
    ends = itertools.accumulate(counts)
    return [Subset(dataset, order[end - c:end]) for end, c in zip(ends, counts)]


def batch_gatherer(dataset) -> Callable[[list[int]], list] | None:
    """A function building ``default_collate([dataset[i] for i in indices])`` in
    one vectorized step, or None when ``dataset`` is not made of tensor slices.

    Covers TensorDataset and Subsets of it (exact classes only: a subclass that
    overrides ``__getitem__`` may return something else per sample).
    """
    if type(dataset) is TensorDataset:
        tensors = dataset.tensors

        def gather(indices):
            idx = from_numpy(np.asarray(indices, dtype=np.int64))
            return [t[idx] for t in tensors]
        return gather
    if type(dataset) is Subset:
        inner = batch_gatherer(dataset.dataset)
        if inner is None:
            return None
        mapping = np.asarray(dataset.indices, dtype=np.int64)
        return lambda indices: inner(mapping[np.asarray(indices, dtype=np.int64)])
    return None
