"""Execution of compiled programs: memory arenas, JIT engines, kernel launch, caches."""
from .disk_cache import DiskCache, default_directory
from .memory import Arena, BufferPool, MemoryPlan, sequential_plan

__all__ = ["DiskCache", "default_directory", "Arena", "BufferPool", "MemoryPlan", "sequential_plan"]
