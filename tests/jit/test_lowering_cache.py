"""Lowered programs cached on disk (jit/lowering_cache): a backend that finds a graph's lowering runs
no fusion or lowering and gives the same results; the key tells apart graphs that differ in any
operand, attribute or constant, and refuses what it cannot describe; damaged entries are redone."""
from __future__ import annotations

import os

import numpy as np
import pytest

import tracetorch as tt
import tracetorch.nn as nn
import tracetorch.jit.llvm_backend as llvm_backend
from runtime.disk_cache import DiskCache
from runtime.llvm_engine import LLVMEngine
from tracetorch.jit import lowering_cache
from tracetorch.jit.ir import Graph
from training_steps import training_step


def _graph(fn, *args):
    compiled = tt.compile(fn, backend="interp")
    compiled(*args)
    return compiled.graph


def _step_graph():
    """The optimized graph of a training step (matmuls, a row reduction, optimizer updates)."""
    tt.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 16), nn.LayerNorm(16), nn.ReLU(), nn.Linear(16, 5))
    step = training_step(model, tt.optim.Adam(model.parameters(), lr=1e-2))
    step(tt.randn(8, 12), tt.randint(0, 5, (8,)))               # Adam's state exists from here on
    return _graph(step, tt.randn(8, 12), tt.randint(0, 5, (8,)))


@pytest.fixture
def fusions(monkeypatch) -> list:
    """The graphs llvm_backend fuses during the test."""
    seen, fuse = [], llvm_backend.fuse
    monkeypatch.setattr(llvm_backend, "fuse", lambda graph: seen.append(graph.name) or fuse(graph))
    return seen


def _backend(directory) -> llvm_backend.LLVMBackend:
    return llvm_backend.LLVMBackend(LLVMEngine(cache=DiskCache(directory)))


def _inputs(graph, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for v in graph.inputs:
        if v.dtype.is_floating_point:
            out.append(rng.standard_normal(v.shape).astype(v.dtype.np))
        else:
            out.append(np.zeros(v.shape, v.dtype.np))         # labels 0, step counts 0
    return out


def test_a_second_backend_runs_no_fusion_and_gets_the_same_results(tmp_path, fusions):
    graph = _step_graph()
    cold = _backend(tmp_path).compile(graph, donate=False)
    assert fusions == [graph.name] and len(list(tmp_path.glob("*.lowered"))) == 1
    warm = _backend(tmp_path).compile(graph, donate=False)
    assert fusions == [graph.name]                               # found: not fused again
    assert isinstance(warm.lowered, lowering_cache.CachedLowering)
    for a, b in zip(cold(_inputs(graph)), warm(_inputs(graph))):
        np.testing.assert_array_equal(a, b)
    assert (warm.kernels, warm.bytes_moved, warm.planned_peak_bytes, warm.intermediate_bytes) == \
        (cold.kernels, cold.bytes_moved, cold.planned_peak_bytes, cold.intermediate_bytes)
    same = lambda text: [line for line in text.splitlines() if not line.startswith("compile:")]
    assert same(warm.explain()) == same(cold.explain())          # fusion groups: lowered again when asked
    assert fusions == [graph.name, graph.name]


def test_donation_is_part_of_the_key(tmp_path, fusions):
    graph = _step_graph()
    _backend(tmp_path).compile(graph, donate=False)
    donating = _backend(tmp_path).compile(graph, donate=True)
    assert len(fusions) == 2 and donating.donated                # another lowering: write-backs stored in place


def test_graphs_that_differ_anywhere_have_different_keys():
    x = tt.randn(4, 6)
    key = lambda g: lowering_cache.graph_key(g, ("llvm", False, True, 8, True), "host")
    base = _graph(lambda t: (t * 2.0).sum(1), x)
    assert key(base) == key(_graph(lambda t: (t * 2.0).sum(1), x)) is not None     # traced again: the same
    others = [_graph(lambda t: (t * 2.5).sum(1), x),                                 # an operand
              _graph(lambda t: (t * 2.0).sum(0), x),                                 # an attribute
              _graph(lambda t: (t * 2.0).sum(1), tt.randn(4, 7)),                    # a shape
              _graph(lambda t: (t * 2.0).sum(1), x.double())]                        # a dtype
    assert len({key(g) for g in [base] + others}) == 1 + len(others)
    assert lowering_cache.graph_key(base, ("llvm", True, True, 8, True), "host") != key(base)
    assert lowering_cache.graph_key(base, ("llvm", False, True, 8, True), "other host") != key(base)
    node = base.nodes[0]
    arrays = [Graph(base.inputs, (node.replace(attrs={**node.attrs, "table": np.arange(6.0) + d}),) + base.nodes[1:],
                    base.outputs, base.writebacks, base.name) for d in (0.0, 0.0, 1e-9)]
    assert key(arrays[0]) == key(arrays[1]) != key(arrays[2])                        # arrays by content
    odd = Graph(base.inputs, (node.replace(attrs={**node.attrs, "hook": object()}),) + base.nodes[1:],
                base.outputs, base.writebacks, base.name)
    assert key(odd) is None                                      # not described exactly: never cached


def test_a_damaged_entry_is_lowered_again(tmp_path, fusions):
    graph = _step_graph()
    want = _backend(tmp_path).compile(graph, donate=False)(_inputs(graph, 1))
    (entry,) = tmp_path.glob("*.lowered")
    blob = bytearray(entry.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    entry.write_bytes(bytes(blob))
    again = _backend(tmp_path).compile(graph, donate=False)
    assert len(fusions) == 2 and not isinstance(again.lowered, lowering_cache.CachedLowering)
    for a, b in zip(again(_inputs(graph, 1)), want):
        np.testing.assert_array_equal(a, b)
    assert _backend(tmp_path).compile(graph, donate=False) and len(fusions) == 2    # stored again


def test_the_source_version_changes_with_any_edit_to_the_library(tmp_path):
    root = tmp_path / "lib"
    for package in ("tracetorch", "codegen", "runtime"):
        (root / package / "sub").mkdir(parents=True)
        (root / package / "__init__.py").write_text("x = 1\n")
        (root / package / "sub" / "passes.py").write_text("def f():\n    return 2\n")
    (root / "tracetorch" / "notes.txt").write_text("not source")

    def version():
        lowering_cache.source_version.cache_clear()        # (computed once a process otherwise)
        return lowering_cache.source_version(str(root))
    try:
        first = version()
        assert version() == first and first != lowering_cache.source_version()     # stable; per tree
        (root / "tracetorch" / "notes.txt").write_text("edited, but no Python")
        assert version() == first
        target = root / "codegen" / "sub" / "passes.py"
        stat = target.stat()
        target.write_text("def f():\n    return 3\n")       # the same size, saved later
        os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
        edited = version()
        assert edited != first
        (root / "runtime" / "new.py").write_text("")        # a new module
        assert version() not in (first, edited)
    finally:
        lowering_cache.source_version.cache_clear()
