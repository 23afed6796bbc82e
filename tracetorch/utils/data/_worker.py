"""What runs inside a DataLoader worker process, and what it sends back.

A worker takes tasks ``(epoch, task_id, index)`` from its own queue, builds
the whole batch with the same fetcher the main process would use, and puts
``(epoch, task_id, pickled payload)`` on the shared result queue. ``None``
on its queue tells it to exit. The payload is pickled here, in the worker,
so a batch that cannot be pickled becomes an error the main process sees
instead of a message silently lost in a queue's feeder thread. Tensors
pickle as their numpy data plus the dtype name (``Tensor.__reduce_ex__``)
and are rebuilt as tensors when the main process unpickles them.
"""
from __future__ import annotations

import os
import pickle
import queue
import random
import sys
import traceback
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from ._fetch import IterableFetcher, make_fetcher

__all__ = ["WorkerInfo", "get_worker_info"]

POLL_S = 0.1  # how often an idle worker checks whether it should exit


@dataclass(frozen=True)
class WorkerInfo:
    """Inside a worker: which one it is, how many there are, its seed and its dataset copy."""
    id: int
    num_workers: int
    seed: int
    dataset: Any


_worker_info: WorkerInfo | None = None  # set once per worker process, None in the main process


def get_worker_info() -> WorkerInfo | None:
    """This worker's WorkerInfo, or None in the main process."""
    return _worker_info


class WorkerError:
    """An exception raised in a worker, carried to the main process as text."""

    def __init__(self, exc_type: type, where: str, text: str):
        self.exc_type, self.where, self.text = exc_type, where, text

    @classmethod
    def from_current(cls, where: str) -> "WorkerError":
        exc_type, exc, tb = sys.exc_info()
        return cls(exc_type, where, "".join(traceback.format_exception(exc_type, exc, tb)))

    def reraise(self):
        msg = f"Caught {self.exc_type.__name__} {self.where}.\nOriginal {self.text}"
        if self.exc_type is KeyError:  # KeyError prints repr(message): keep the traceback's newlines
            msg = _PlainRepr(msg)
        try:
            exc = self.exc_type(msg)
        except Exception:  # the type needs other constructor arguments
            raise RuntimeError(msg) from None
        raise exc


class _PlainRepr(str):
    def __repr__(self) -> str:
        return str(self)


class Exhausted:
    """An iterable dataset's stream ended in this worker."""


@dataclass(frozen=True)
class WorkerConfig:
    dataset: Any
    auto_collation: bool
    collate_fn: Callable
    drop_last: bool
    base_seed: int
    init_fn: Callable[[int], None] | None
    worker_id: int
    num_workers: int
    parent_pid: int


def _seed_everything(seed: int) -> None:
    import tracetorch
    tracetorch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)


def _dumps(payload, where: str) -> bytes:
    try:
        return pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:
        error = WorkerError.from_current(where)
        if isinstance(payload, WorkerError):  # its exception type itself would not pickle
            error.text = payload.text
        error.exc_type = RuntimeError
        return pickle.dumps(error, protocol=pickle.HIGHEST_PROTOCOL)


def worker_loop(config: WorkerConfig, index_queue, result_queue, done_event) -> None:
    """Seed, run ``init_fn``, then serve tasks until told to stop.

    It stops on the ``None`` sentinel, or once ``done_event`` is set and no
    task arrives for a while, or when the main process is gone. The event
    matters when the main process shuts down from a garbage collection: the
    index queue's feeder thread may already be finalized then, so the sentinel
    never arrives. Tasks still queued after ``done_event`` are skipped.
    """
    global _worker_info
    # Results still in the pipe at shutdown are not wanted: do not block exit on them.
    result_queue.cancel_join_thread()
    wid = config.worker_id
    where = f"in DataLoader worker process {wid}"
    seed = config.base_seed + wid
    try:
        _seed_everything(seed)
        _worker_info = WorkerInfo(wid, config.num_workers, seed, config.dataset)
        init_error, fetcher, fetcher_epoch = None, None, None
        try:
            if config.init_fn is not None:
                config.init_fn(wid)
        except Exception:
            init_error = WorkerError.from_current(where)
        while True:
            try:
                task = index_queue.get(timeout=POLL_S)
            except queue.Empty:
                if done_event.is_set() or os.getppid() != config.parent_pid:
                    break
                continue
            if task is None:
                break
            if done_event.is_set():
                continue
            epoch, task_id, index = task
            payload = init_error
            if payload is None:
                try:
                    if fetcher is None or epoch != fetcher_epoch:  # an iterable restarts each epoch
                        fetcher = make_fetcher(config.dataset, config.auto_collation, config.collate_fn,
                                               config.drop_last)
                        fetcher_epoch = epoch
                    payload = fetcher.fetch(index)
                except StopIteration:
                    iterable = isinstance(fetcher, IterableFetcher)
                    payload = Exhausted() if iterable else WorkerError.from_current(where)
                except Exception:
                    payload = WorkerError.from_current(where)
            result_queue.put((epoch, task_id, _dumps(payload, where)))
    except KeyboardInterrupt:  # Ctrl-C reaches the whole process group; the main process handles it
        pass
