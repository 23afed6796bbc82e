"""Memory for compiled programs: one arena per program, and a caching allocator for results.

- `MemoryPlan`: where each temporary buffer of a program lives inside one
  arena (64-byte aligned byte offsets). The compiler's planner (liveness,
  reuse) produces it; `sequential_plan` is the trivial plan (no reuse).
- `Arena`: one aligned numpy byte buffer holding a plan's buffers. Their
  addresses never move, so the runtime resolves them once.
- `BufferPool`: result buffers, per program output. Programs return fresh arrays
  (never views into the arena), and fresh large allocations cost page faults
  on every call; the pool hands back a buffer once nothing outside the pool
  references it any more (its reference count says so), so a training loop
  reuses the same pages.
"""
from __future__ import annotations

import math
import sys
import threading
from dataclasses import dataclass

import numpy as np

ALIGN = 64


def align_up(n: int, align: int = ALIGN) -> int:
    return (n + align - 1) // align * align


def aligned_bytes(nbytes: int, align: int = ALIGN) -> np.ndarray:
    """An uninitialized uint8 array of `nbytes` whose data address is a multiple of `align`."""
    raw = np.empty(nbytes + align, dtype=np.uint8)
    shift = (-raw.ctypes.data) % align
    return raw[shift:shift + nbytes]


@dataclass(frozen=True)
class MemoryPlan:
    """Byte offset of every planned buffer (by name) in an arena of `size` bytes."""
    offsets: dict
    nbytes: dict
    size: int

    def __post_init__(self):
        for name, off in self.offsets.items():
            if off % ALIGN:
                raise ValueError(f"memory plan: buffer {name!r} at offset {off} is not {ALIGN}-byte aligned")
            if off < 0 or off + self.nbytes[name] > self.size:
                raise ValueError(f"memory plan: buffer {name!r} [{off}, {off + self.nbytes[name]}) lies outside "
                                 f"the arena of {self.size} bytes")

    def check_disjoint(self, names, user: str) -> None:
        """Raise unless the planned buffers `names` (used together by `user`) do not overlap."""
        spans = sorted((self.offsets[n], self.offsets[n] + self.nbytes[n], n) for n in names if n in self.offsets)
        for (_, end, a), (start, _, b) in zip(spans, spans[1:]):
            if start < end:
                raise ValueError(f"memory plan: {a!r} and {b!r} overlap but are both used by {user}")

    @property
    def total_requested(self) -> int:
        """Sum of all buffer sizes: compare with `size` to see what reuse saved."""
        return sum(self.nbytes.values())


def sequential_plan(buffers) -> MemoryPlan:
    """Every buffer (objects with .name and .nbytes) in its own aligned slot: no reuse."""
    offsets, sizes, end = {}, {}, 0
    for b in buffers:
        offsets[b.name], sizes[b.name] = end, b.nbytes
        end = align_up(end + max(b.nbytes, 1))
    return MemoryPlan(offsets, sizes, end)


def storage_root(a: np.ndarray) -> np.ndarray:
    """The array that owns `a`'s memory (views of views lead back to it): two arrays with different
    roots never share memory."""
    while isinstance(a.base, np.ndarray):
        a = a.base
    return a


class Arena:
    """One aligned byte buffer holding the buffers of a plan."""

    def __init__(self, plan: MemoryPlan):
        self.plan = plan
        self.memory = aligned_bytes(max(plan.size, ALIGN))
        self.base = self.memory.ctypes.data

    def address(self, name: str) -> int:
        return self.base + self.plan.offsets[name]

    def view(self, name: str, dtype, shape) -> np.ndarray:
        dtype = np.dtype(dtype)
        n = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if n > self.plan.nbytes[name]:
            raise ValueError(f"arena view {name!r}: {n} bytes requested, {self.plan.nbytes[name]} planned")
        off = self.plan.offsets[name]
        return self.memory[off:off + n].view(dtype).reshape(shape)


class BufferPool:
    """Caching allocator for result buffers (see the module docstring).

    A buffer is free when only the pool references it. Arrays handed out are
    made over the pooled owner array, and numpy points every view (and view
    of a view) at that owner, so its reference count covers them all. The
    array last handed out from a buffer is kept: when it comes back unused
    with the same shape and dtype, it is handed out again as is (no new
    array object: the common case of a program called in a loop).

    A program's outputs (`outputs`) each have their own few buffers, found in
    O(1) however many outputs share a size: a training step returns every
    gradient while the previous call's are still bound to `.grad`, so each
    output alternates between two buffers. Other requests (`array`) share
    buffers by byte size.

    Each thread keeps its own buffers (a thread cache, as in malloc): only the
    thread that allocated a buffer hands it out again, so no two threads can
    claim one buffer and a claim takes no lock. (An array handed out may be
    used and dropped by any thread.)
    """

    MAX_PER_SIZE = 8            # buffers kept per byte size (`array`)
    MAX_PER_OUTPUT = 3          # buffers kept per program output (`outputs`)

    def __init__(self):
        self._local = _ThreadBuffers()
        self.reused = self.allocated = 0      # not locked: a count may be missed when threads race

    def array(self, shape: tuple, dtype: np.dtype, nbytes: int | None = None) -> tuple[np.ndarray, int]:
        """(an uninitialized array of `shape` and `dtype`, its data address), reusing a free buffer."""
        dtype = np.dtype(dtype)
        if nbytes is None:
            nbytes = math.prod(shape) * dtype.itemsize
        owners = self._local.owners
        entries = owners.get(nbytes)
        if entries is None:
            entries = owners[nbytes] = []
        return self._take(entries, shape, dtype, nbytes, self.MAX_PER_SIZE)

    def outputs(self, specs) -> "OutputBuffers":
        """The buffers of a program's outputs, one (shape, dtype, nbytes) of `specs` each."""
        return OutputBuffers(specs, self)

    def _take(self, entries: list, shape: tuple, dtype: np.dtype, nbytes: int, cap: int) -> tuple[np.ndarray, int]:
        for entry in entries:
            # references to a free owner: its entry, the getrefcount argument, and the last array's base
            if entry[3] is None:
                if sys.getrefcount(entry[0]) != 2:
                    continue
            elif sys.getrefcount(entry[0]) != 3 or sys.getrefcount(entry[3]) != 2:
                continue
            self.reused += 1
            last = entry[3]
            if last is None or last.shape != shape or (last.dtype is not dtype and last.dtype != dtype):
                last = entry[3] = np.ndarray(shape, dtype, buffer=entry[0], offset=entry[1])
            return last, entry[2]
        owner = np.empty(nbytes + ALIGN, dtype=np.uint8)
        base = owner.ctypes.data
        shift = (-base) % ALIGN
        arr = np.ndarray(shape, dtype, buffer=owner, offset=shift)
        if len(entries) >= cap:
            entries.pop(0)                          # forget the oldest buffer (still in use)
        entries.append([owner, shift, base + shift, arr])
        self.allocated += 1
        return arr, base + shift

    def clear(self) -> None:
        """Forget every thread's buffers."""
        self._local = _ThreadBuffers()


class OutputBuffers:
    """A program's result buffers (`BufferPool.outputs`), kept while the program lives."""

    def __init__(self, specs, pool: BufferPool):
        self.specs = tuple(specs)
        self._pool = pool
        self._local = threading.local()     # .rings: per output, a list like _ThreadBuffers.owners' values

    def arrays(self, table, slot: int) -> list[np.ndarray]:
        """An array for each output, its address written to `table[slot]`, `table[slot + 1]`, ... (the
        program's buffer table)."""
        try:
            rings = self._local.rings
        except AttributeError:              # this thread's first call
            rings = self._local.rings = [[] for _ in self.specs]
        if len(rings) == 1:                 # one result (W4-style programs)
            (shape, dtype, nbytes), = self.specs
            arr, table[slot] = self._pool._take(rings[0], shape, dtype, nbytes, BufferPool.MAX_PER_OUTPUT)
            return [arr]
        out = []
        take, cap = self._pool._take, BufferPool.MAX_PER_OUTPUT
        for (shape, dtype, nbytes), entries in zip(self.specs, rings):
            arr, table[slot] = take(entries, shape, dtype, nbytes, cap)
            out.append(arr)
            slot += 1
        return out


class _ThreadBuffers(threading.local):
    def __init__(self):
        self.owners: dict[int, list] = {}   # nbytes -> [[owner uint8 array, offset, address, last array], ...]
