"""Shared fixtures for the test suite."""
from __future__ import annotations

import importlib.util
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest


@pytest.fixture
def rng(request) -> np.random.Generator:
    """A numpy Generator seeded from the test's id: deterministic, and independent of test order."""
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


@pytest.fixture(scope="session")
def fake_pycuda():
    """tests/runtime/fake_pycuda.py (pycuda on host memory, kernels run by the CPU emulator), loaded once
    by path: tests outside tests/runtime cannot import it by name."""
    if "fake_pycuda" not in sys.modules:
        path = Path(__file__).parent / "runtime" / "fake_pycuda.py"
        spec = importlib.util.spec_from_file_location("fake_pycuda", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules["fake_pycuda"] = module
    return sys.modules["fake_pycuda"]
