"""The JIT's registry-driven tests (every primitive and public composite, compiled == eager; gradients
inside and across the compiled region) run again with the LLVM backend: `backend="auto"` resolves to
"llvm" here."""
from __future__ import annotations

import pytest

from tracetorch.jit import backends
from test_jit_ops_registry import (test_forward_compiled_equals_eager, test_gradient_across_compiled_boundary,  # noqa: F401
                                   test_gradient_inside_compiled_region)


@pytest.fixture(autouse=True)
def _auto_is_llvm(monkeypatch):
    from tracetorch.jit.llvm_backend import BACKEND
    monkeypatch.setitem(backends.BACKENDS, "llvm", BACKEND)
    monkeypatch.setattr(backends, "AUTO_ORDER", ["llvm"])
