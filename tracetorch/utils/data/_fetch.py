"""Fetchers: from what a sampler yields to one finished batch.

The same fetcher runs in the main process (``num_workers=0``) and inside
each worker process, so both paths make identical batches.
"""
from __future__ import annotations

from ._collate import default_collate
from .dataset import IterableDataset, batch_gatherer


class MapFetcher:
    """For map-style datasets: ``index`` is a list of indices (auto-batching) or one index."""

    def __init__(self, dataset, auto_collation: bool, collate_fn, drop_last: bool):
        self.dataset = dataset
        self.auto_collation = auto_collation
        self.collate_fn = collate_fn
        # Tensor-slice datasets with the default collate skip per-sample work.
        self.gather = batch_gatherer(dataset) if auto_collation and collate_fn is default_collate else None
        getitems = getattr(dataset, "__getitems__", None)
        self.getitems = getitems if callable(getitems) else None

    def fetch(self, index):
        if not self.auto_collation:
            return self.collate_fn(self.dataset[index])
        if self.gather is not None:
            return self.gather(index)
        if self.getitems is not None:
            samples = self.getitems(index)
        else:
            samples = [self.dataset[i] for i in index]
        return self.collate_fn(samples)


class IterableFetcher:
    """For iterable datasets: takes the next ``len(index)`` samples of the stream.

    Raises StopIteration when the stream is done (or, with ``drop_last``,
    when only a partial batch is left).
    """

    def __init__(self, dataset, auto_collation: bool, collate_fn, drop_last: bool):
        self.stream = iter(dataset)
        self.auto_collation = auto_collation
        self.collate_fn = collate_fn
        self.drop_last = drop_last
        self.ended = False

    def fetch(self, index):
        if self.ended:
            raise StopIteration
        if not self.auto_collation:
            return self.collate_fn(next(self.stream))
        samples = []
        for _ in index:
            try:
                samples.append(next(self.stream))
            except StopIteration:
                self.ended = True
                break
        if not samples or (self.drop_last and len(samples) < len(index)):
            raise StopIteration
        return self.collate_fn(samples)


def make_fetcher(dataset, auto_collation: bool, collate_fn, drop_last: bool):
    kind = IterableFetcher if isinstance(dataset, IterableDataset) else MapFetcher
    return kind(dataset, auto_collation, collate_fn, drop_last)
