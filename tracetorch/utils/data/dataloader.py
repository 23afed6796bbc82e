"""DataLoader: batches from a dataset, in the main process or in worker processes.

PyTorch semantics: a sampler orders the indices (``shuffle=True`` draws a new
``randperm`` per epoch from ``generator`` or the default generator), a batch
sampler groups them, a fetcher turns a group into a batch. With
``num_workers > 0`` each worker process builds whole batches from the index
lists it is sent, and the main process hands them out in order.

Every iterator, single- or multi-process, draws one base seed from the
loader's generator (as PyTorch does), so the shuffle order does not depend on
``num_workers``; worker ``i`` seeds its default generator, ``random`` and
numpy's global RNG with ``base_seed + i``.
"""
from __future__ import annotations

import itertools
import multiprocessing
import os
import pickle
import queue
import time
from typing import Any, Callable, Iterator

from ...random import randint
from ._collate import default_collate, default_convert
from ._fetch import make_fetcher
from ._worker import Exhausted, WorkerConfig, WorkerError, worker_loop
from .dataset import IterableDataset
from .sampler import BatchSampler, RandomSampler, Sampler, SequentialSampler

__all__ = ["DataLoader"]

_POLL_S = 0.5  # how often a waiting main process checks that its workers are alive
_JOIN_S = 5.0  # how long shutdown waits for a worker before terminating it


class _InfiniteConstantSampler(Sampler):
    """The 'indices' of an iterable dataset: None forever (the stream decides when to stop)."""

    def __iter__(self) -> Iterator[None]:
        return itertools.repeat(None)


class DataLoader:
    """Iterate over ``dataset`` in batches; see the module docstring."""

    def __init__(self, dataset, batch_size: int | None = 1, shuffle: bool | None = None, sampler=None,
                 batch_sampler=None, num_workers: int = 0, collate_fn: Callable | None = None,
                 pin_memory: bool = False, drop_last: bool = False, timeout: float = 0,
                 worker_init_fn: Callable[[int], None] | None = None, multiprocessing_context=None,
                 generator=None, *, prefetch_factor: int | None = None, persistent_workers: bool = False,
                 pin_memory_device: str = "", in_order: bool = True):
        if num_workers < 0:
            raise ValueError("num_workers option should be non-negative; use num_workers=0 to disable "
                             "multiprocessing.")
        if timeout < 0:
            raise ValueError("timeout option should be non-negative")
        if num_workers == 0 and prefetch_factor is not None:
            raise ValueError("prefetch_factor option could only be specified in multiprocessing. Let "
                             "num_workers > 0 to enable multiprocessing, otherwise set prefetch_factor to None.")
        if num_workers > 0 and prefetch_factor is None:
            prefetch_factor = 2
        if prefetch_factor is not None and prefetch_factor <= 0:
            raise ValueError(f"prefetch_factor option should be positive, got {prefetch_factor}")
        if persistent_workers and num_workers == 0:
            raise ValueError("persistent_workers option needs num_workers > 0")

        iterable = isinstance(dataset, IterableDataset)
        if iterable:
            for name, value in (("shuffle", shuffle), ("sampler", sampler), ("batch_sampler", batch_sampler)):
                if value not in (None, False):
                    raise ValueError(f"DataLoader with IterableDataset: expected unspecified {name} option, "
                                     f"but got {name}={value}")
        shuffle = bool(shuffle)
        if sampler is not None and shuffle:
            raise ValueError("sampler option is mutually exclusive with shuffle")
        if batch_sampler is not None:
            if batch_size != 1 or shuffle or sampler is not None or drop_last:
                raise ValueError("batch_sampler option is mutually exclusive with batch_size, shuffle, sampler, "
                                 "and drop_last")
            batch_size, drop_last = None, False
        elif batch_size is None and drop_last:
            raise ValueError("batch_size=None option disables auto-batching and is mutually exclusive with "
                             "drop_last")
        if sampler is None:
            if iterable:
                sampler = _InfiniteConstantSampler()
            elif shuffle:
                sampler = RandomSampler(dataset, generator=generator)
            else:
                sampler = SequentialSampler(dataset)
        if batch_size is not None and batch_sampler is None:
            batch_sampler = BatchSampler(sampler, batch_size, drop_last)

        self.dataset = dataset
        self.batch_size = batch_size
        self.drop_last = drop_last
        self.sampler = sampler
        self.batch_sampler = batch_sampler
        self.num_workers = num_workers
        self.prefetch_factor = prefetch_factor
        self.pin_memory = pin_memory  # accepted for compatibility; host memory is used as is
        self.pin_memory_device = pin_memory_device
        self.timeout = timeout
        self.worker_init_fn = worker_init_fn
        self.multiprocessing_context = multiprocessing_context
        self.generator = generator
        self.persistent_workers = persistent_workers
        self.in_order = in_order  # batches always come back in order
        self.collate_fn = collate_fn if collate_fn is not None else (
            default_collate if self._auto_collation else default_convert)
        self._iterator = None

    @property
    def _auto_collation(self) -> bool:
        return self.batch_sampler is not None

    @property
    def _index_sampler(self):
        return self.batch_sampler if self._auto_collation else self.sampler

    def __len__(self) -> int:
        return _length(self)

    def __iter__(self):
        if self.num_workers == 0:
            return _SingleProcessIter(self)
        if not self.persistent_workers:
            return _MultiProcessIter(self)
        if self._iterator is None or self._iterator._shutdown:  # first epoch, or its workers failed
            self._iterator = _MultiProcessIter(self)
        else:
            self._iterator.reset()
        return self._iterator


def _length(loader) -> int:
    """Batches per epoch (samples, without auto-batching). Takes the loader or an
    iterator holding the same fields: an iterator must not keep its loader alive."""
    if isinstance(loader.dataset, IterableDataset):
        n = len(loader.dataset)
        if loader.batch_size is not None:
            n = n // loader.batch_size if loader.drop_last else -(-n // loader.batch_size)
        return n
    return len(loader._index_sampler)


def _draw_base_seed(generator) -> int:
    return int(randint(0, 2**62, (), generator=generator).item())


class _IterBase:
    def __init__(self, loader: DataLoader):
        self.dataset, self.batch_size, self.drop_last = loader.dataset, loader.batch_size, loader.drop_last
        self._index_sampler = loader._index_sampler

    def __iter__(self):
        return self

    def __len__(self) -> int:
        return _length(self)


class _SingleProcessIter(_IterBase):
    def __init__(self, loader: DataLoader):
        super().__init__(loader)
        self._sampler_iter = iter(loader._index_sampler)
        _draw_base_seed(loader.generator)  # keeps the generator's stream the same as with workers
        self._fetcher = make_fetcher(loader.dataset, loader._auto_collation, loader.collate_fn,
                                     loader.drop_last)

    def __next__(self):
        return self._fetcher.fetch(next(self._sampler_iter))


def _mp_context(spec):
    if spec is None:
        spec = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    return multiprocessing.get_context(spec) if isinstance(spec, str) else spec


class _MultiProcessIter(_IterBase):
    """Sends index lists to workers round-robin, keeps ``prefetch_factor`` tasks
    per worker in flight, and yields the results in task order.

    Task ids restart every epoch; each message carries the epoch, so results of
    an abandoned epoch (persistent workers) are recognised and dropped.
    """

    def __init__(self, loader: DataLoader):
        self._shutdown = True  # until the workers exist: makes __del__ safe
        super().__init__(loader)
        self._num_workers = loader.num_workers
        self._prefetch = loader.prefetch_factor
        self._timeout = loader.timeout
        self._persistent = loader.persistent_workers
        self._sampler_iter = iter(self._index_sampler)
        base_seed = _draw_base_seed(loader.generator)
        ctx = _mp_context(loader.multiprocessing_context)
        self._done_event = ctx.Event()
        self._result_queue = ctx.Queue()
        self._index_queues, self._workers = [], []
        self._shutdown = False
        for wid in range(self._num_workers):
            config = WorkerConfig(loader.dataset, loader._auto_collation, loader.collate_fn, loader.drop_last,
                                  base_seed, loader.worker_init_fn, wid, self._num_workers, os.getpid())
            index_queue = ctx.Queue()
            index_queue.cancel_join_thread()
            worker = ctx.Process(target=worker_loop, args=(config, index_queue, self._result_queue,
                                                            self._done_event), daemon=True)
            worker.start()
            self._index_queues.append(index_queue)
            self._workers.append(worker)
        self._epoch = 0
        self._start_epoch()

    def reset(self) -> None:
        """Start a new epoch on the same (persistent) workers."""
        self._sampler_iter = iter(self._index_sampler)
        self._epoch += 1
        self._start_epoch()

    def _start_epoch(self) -> None:
        self._send_id = self._recv_id = 0
        self._task_worker: dict[int, int] = {}  # task id -> worker, for tasks not yet handed out
        self._results: dict[int, Any] = {}  # task id -> payload that arrived early
        self._active = [True] * self._num_workers  # False once a worker's iterable stream ended
        self._sampler_done = False
        self._worker_cycle = itertools.cycle(range(self._num_workers))
        for _ in range(self._prefetch * self._num_workers):
            self._put_task()

    def _put_task(self) -> None:
        if self._sampler_done or not any(self._active):
            return
        try:
            index = next(self._sampler_iter)
        except StopIteration:
            self._sampler_done = True
            return
        wid = next(w for w in self._worker_cycle if self._active[w])
        self._index_queues[wid].put((self._epoch, self._send_id, index))
        self._task_worker[self._send_id] = wid
        self._send_id += 1

    def __next__(self):
        if self._shutdown:
            raise StopIteration
        while True:
            if self._recv_id == self._send_id:  # nothing in flight and nothing left to send
                if not self._persistent:
                    self._shutdown_workers()
                raise StopIteration
            if self._recv_id in self._results:
                payload = self._results.pop(self._recv_id)
                del self._task_worker[self._recv_id]
                self._recv_id += 1
                self._put_task()
                if isinstance(payload, Exhausted):
                    continue
                if isinstance(payload, WorkerError):
                    payload.reraise()
                return payload
            epoch, task_id, data = self._get_result()
            if epoch != self._epoch or task_id not in self._task_worker:
                continue
            payload = pickle.loads(data)
            if isinstance(payload, Exhausted):
                self._active[self._task_worker[task_id]] = False
            self._results[task_id] = payload

    def _get_result(self):
        """The next message from any worker; fails if a worker died or ``timeout`` passed."""
        start = time.monotonic()
        poll = min(_POLL_S, self._timeout) if self._timeout else _POLL_S
        while True:
            try:
                return self._result_queue.get(timeout=poll)
            except queue.Empty:
                dead = [w for w in self._workers if not w.is_alive()]
                if dead:
                    self._shutdown_workers()
                    codes = ", ".join(f"pid {w.pid} exit code {w.exitcode}" for w in dead)
                    raise RuntimeError(f"DataLoader worker ({codes}) exited unexpectedly") from None
                if self._timeout and time.monotonic() - start > self._timeout:
                    raise RuntimeError(f"DataLoader timed out after {self._timeout} seconds") from None

    def _shutdown_workers(self) -> None:
        if self._shutdown:
            return
        self._shutdown = True
        self._done_event.set()
        for q in self._index_queues:
            try:
                q.put(None)
            except (ValueError, OSError):  # already closed; the workers still see done_event
                pass
        for w in self._workers:
            w.join(timeout=_JOIN_S)
            if w.is_alive():
                w.terminate()
                w.join()
        for q in self._index_queues + [self._result_queue]:
            q.cancel_join_thread()
            q.close()

    def __del__(self):
        self._shutdown_workers()
