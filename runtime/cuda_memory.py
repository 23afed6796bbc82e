"""The caching allocator behind `device="cuda"` tensors (PyTorch's design, simplified).

`cudaMalloc`/`cudaFree` synchronize the device and cost tens of microseconds, so a freed block is not
returned to the driver: it goes to a free list of its size class and the next request of that class
takes it. Size classes: multiples of 512 bytes up to 1 MiB, multiples of 2 MiB above. A `Block` goes
back to the cache when the last reference to it dies (the tensors and views holding it); on an
out-of-memory error the cache is emptied and the allocation retried once.

Statistics (`tt.cuda.memory_allocated()` ...) count class-rounded bytes, as PyTorch's do.
pycuda is imported only through `runtime.cuda_engine._driver()`, when the first block is made.
"""
from __future__ import annotations

import threading

SMALL_LIMIT = 1 << 20
SMALL_ROUND = 512
LARGE_ROUND = 2 << 20


def size_class(nbytes: int) -> int:
    """The bytes actually reserved for a request of `nbytes` (at least one small unit)."""
    unit = SMALL_ROUND if nbytes <= SMALL_LIMIT else LARGE_ROUND
    return max(unit, -(-nbytes // unit) * unit)


class Block:
    """One device allocation lent to tensors; it returns to its allocator's cache when garbage collected."""
    __slots__ = ("ptr", "size", "allocation", "allocator")

    def __init__(self, allocation, size: int, allocator: "CachingAllocator"):
        self.allocation, self.size, self.allocator = allocation, size, allocator
        self.ptr = int(allocation)

    def __del__(self):
        try:
            self.allocator.release(self.allocation, self.size)
        except Exception:       # interpreter shutdown: the driver may be gone already
            pass


class CachingAllocator:
    def __init__(self, driver):
        self.driver = driver
        self._free: dict[int, list] = {}
        self._lock = threading.Lock()
        self.allocated = 0          # bytes in live blocks
        self.reserved = 0           # bytes held from the driver (live + cached)
        self.peak = 0
        self.driver_allocations = 0

    def allocate(self, nbytes: int) -> Block:
        size = size_class(nbytes)
        with self._lock:
            cached = self._free.get(size)
            allocation = cached.pop() if cached else None
            if allocation is None:
                allocation = self._from_driver(size)
            self.allocated += size
            self.peak = max(self.peak, self.allocated)
        return Block(allocation, size, self)

    def _from_driver(self, size: int):
        try:
            allocation = self.driver.mem_alloc(size)
        except Exception as e:                       # pycuda.driver.MemoryError: free the cache, retry once
            if "memory" not in type(e).__name__.lower() and "memory" not in str(e).lower():
                raise
            self._empty_locked()
            try:
                allocation = self.driver.mem_alloc(size)
            except Exception as e2:
                raise MemoryError(f"CUDA out of memory: tried to allocate {size} bytes "
                                  f"({self.allocated} bytes allocated by tracetorch): {e2}") from None
        self.reserved += size
        self.driver_allocations += 1
        return allocation

    def release(self, allocation, size: int) -> None:
        with self._lock:
            self.allocated -= size
            self._free.setdefault(size, []).append(allocation)

    def empty_cache(self) -> None:
        with self._lock:
            self._empty_locked()

    def _empty_locked(self) -> None:
        for size, allocations in self._free.items():
            for allocation in allocations:
                free = getattr(allocation, "free", None)
                if free is not None:
                    free()
                self.reserved -= size
        self._free.clear()

    def cached_blocks(self) -> int:
        return sum(len(v) for v in self._free.values())

    def reset_peak(self) -> None:
        self.peak = self.allocated


__all__ = ["Block", "CachingAllocator", "size_class"]
