"""Runtime fixtures: an engine with a private on-disk cache."""
from __future__ import annotations

import pytest

from runtime.disk_cache import DiskCache
from runtime.llvm_engine import LLVMEngine


@pytest.fixture(scope="session")
def engine(tmp_path_factory):
    return LLVMEngine(cache=DiskCache(tmp_path_factory.mktemp("llvm-cache")))
