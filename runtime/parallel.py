"""Fork-join over a kernel's outer loop: Python threads calling native code.

A kernel's generated range entry `(table, err, start, stop)` runs outer-loop
iterations [start, stop); ctypes releases the GIL during the call, so worker
threads run slices truly in parallel. The calling thread runs the first
slice itself and then waits for the workers: a fork-join per parallel
kernel, a few tens of microseconds, paid only by kernels big enough to gain.

Thread count: `$TRACETORCH_NUM_THREADS`, else the CPUs this process may use.
The engine prefers `runtime.native_team.NativeTeam` (the same fork-join with
the workers waiting in native code, ~2 us instead of ~25 us); this team is
the fallback where that one cannot be made.
"""
from __future__ import annotations

import os
import queue
import threading
from typing import Callable


def default_threads() -> int:
    env = os.environ.get("TRACETORCH_NUM_THREADS")
    if env:
        return max(1, int(env))
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def split(extent: int, parts: int, align: int = 1) -> list[tuple[int, int]]:
    """[start, stop) slices covering range(extent), boundaries on multiples of `align`, none empty."""
    step = -(-extent // parts)
    step = -(-step // align) * align
    return [(lo, min(lo + step, extent)) for lo in range(0, extent, step)] if extent > 0 else []


class ThreadTeam:
    """`threads - 1` daemon workers plus the caller. Not reentrant: one fork-join at a time."""

    def __init__(self, threads: int | None = None):
        self.threads = threads or default_threads()
        self._todo: list[queue.SimpleQueue] = []
        self._lock = threading.Lock()
        for n in range(self.threads - 1):
            q: queue.SimpleQueue = queue.SimpleQueue()
            threading.Thread(target=self._work, args=(q,), name=f"tracetorch-worker-{n}", daemon=True).start()
            self._todo.append(q)

    @staticmethod
    def entry(fn):
        """What `run` takes for a kernel's range function: the function itself (NativeTeam: its address)."""
        return fn

    @staticmethod
    def _work(todo: queue.SimpleQueue) -> None:
        while True:
            fn, args, done, errors = todo.get()
            try:
                fn(*args)
            except BaseException as e:  # reported to the caller, which re-raises
                errors.append(e)
            finally:
                done.set()

    @staticmethod
    def rest() -> None:
        """Nothing to do: idle workers block on their queues (NativeTeam's spin)."""

    def run(self, fn: Callable, head: tuple, extent: int, align: int = 1) -> None:
        """fn(*head, start, stop) over slices of range(extent), in parallel; returns when all are done."""
        slices = split(extent, self.threads, align)
        if len(slices) <= 1:
            if slices:
                fn(*head, *slices[0])
            return
        with self._lock:
            errors: list = []
            events = [threading.Event() for _ in slices[1:]]
            for q, (lo, hi), done in zip(self._todo, slices[1:], events):
                q.put((fn, head + (lo, hi), done, errors))
            try:
                fn(*head, *slices[0])
            finally:
                _join(events)
            if errors:
                raise errors[0]


def _join(events: list) -> None:
    """Wait until every worker is done, even through Ctrl-C (held until then, and raised): returning
    early would let the next kernel start while this one still runs. Each worker sets its own event,
    so an interrupted wait loses nothing."""
    interrupted = None
    for done in events:
        while not done.is_set():
            try:
                done.wait()
            except KeyboardInterrupt as stop:
                interrupted = stop
    if interrupted is not None:
        raise interrupted
