"""Fuzz tests: the IR verifier runs after every pass, float64 is the default dtype, every test
starts from a fixed seed and an empty compiler cache; the session ends with a summary of what
was fuzzed per backend."""
from __future__ import annotations

import os

import pytest

os.environ["TRACETORCH_VERIFY"] = "1"


@pytest.fixture(autouse=True)
def _fuzz_setup():
    import tracetorch as tt
    previous = tt.get_default_dtype()
    tt.set_default_dtype(tt.float64)
    tt.manual_seed(0)
    yield
    tt.set_default_dtype(previous)
    tt.compiler.reset()


def pytest_terminal_summary(terminalreporter):
    from differential import STATS
    for backend, counts in sorted(STATS.items()):
        text = ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
        terminalreporter.write_line(f"fuzz [{backend}]: {text}")
