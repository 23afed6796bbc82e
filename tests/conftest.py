"""Shared fixtures for the test suite."""
from __future__ import annotations

import zlib

import numpy as np
import pytest


@pytest.fixture
def rng(request) -> np.random.Generator:
    """A numpy Generator seeded from the test's id: deterministic, and independent of test order."""
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))
