"""Shared fixtures for codegen tests: one LLVM engine per session with a private disk cache,
and a helper that compiles and runs a batch of kernels as one program (one LLVM module:
compiling many small kernels together is much faster than one module each)."""
from __future__ import annotations

import numpy as np
import pytest

from codegen.kernel import Program
from runtime.disk_cache import DiskCache
from runtime.llvm_engine import LLVMEngine


@pytest.fixture(scope="session")
def engine(tmp_path_factory):
    return LLVMEngine(cache=DiskCache(tmp_path_factory.mktemp("llvm-cache")))


def run_program(engine, kernels, inputs: dict, outputs, name="test", kernel_by_kernel=False) -> dict:
    """Compile `kernels` as one program; feed {Buffer: array}; return {output name: array}."""
    in_bufs = tuple(inputs)
    program = Program(name, tuple(kernels), in_bufs, tuple(outputs))
    compiled = engine.compile(program)
    arrays = [np.ascontiguousarray(inputs[b], dtype=b.dtype.np).reshape(b.shape) for b in in_bufs]
    call = compiled.run_kernel_by_kernel if kernel_by_kernel else compiled
    results = call(*arrays)
    return {b.name: r for b, r in zip(outputs, results)}


@pytest.fixture(scope="session")
def run(engine):
    """run(kernels, {Buffer: array}, [output Buffers], ...) -> {output name: array}."""
    def call(kernels, inputs, outputs, **kw):
        return run_program(engine, kernels, inputs, outputs, **kw)
    return call
