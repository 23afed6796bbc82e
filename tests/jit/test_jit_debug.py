"""Debugging surfaces: check=True, explain, .graph, logs and dumps, threads, fullgraph."""
from __future__ import annotations

import logging
import threading

import numpy as np
import pytest

import tracetorch as tt
from tracetorch.jit import backends, logs
from tracetorch.jit.interp import InterpExecutable
from tracetorch.jit.ir import Node


def _np(t):
    return t.detach().numpy()


def _step_fn():
    state = tt.zeros(3)

    def step(x):
        state.add_(x.exp() * 2.0)
        return (state * x).sum()
    return step, state


def test_check_passes_on_a_correct_program_and_commits_eager_state():
    step, state = _step_fn()
    f = tt.compile(step, check=True)
    x = tt.tensor([0.0, 1.0, 2.0])
    for k in range(1, 4):
        f(x)
        np.testing.assert_allclose(_np(state), k * 2 * np.exp([0.0, 1.0, 2.0]), rtol=1e-6)
    assert f.stats()["checked_calls"] == 2


def test_check_names_the_first_divergent_node():
    step, state = _step_fn()
    f = tt.compile(step, check=True)
    x = tt.tensor([0.0, 1.0, 2.0])
    f(x)
    program = f.programs[0]
    # inject a bug, as a faulty pass would: `mul(exp(x), 2.0)` becomes `mul(exp(x), 2.5)`
    nodes = tuple(n.replace(inputs=(n.inputs[0], 2.5)) if n.op.name == "mul" and n.inputs[1] == 2.0 else n
                  for n in program.graph.nodes)
    program.graph = program.graph.replace(nodes=nodes)
    program.executable = InterpExecutable(program.graph)
    before = _np(state).copy()
    with pytest.raises(tt.compiler.CheckError) as err:
        f(x)
    msg = str(err.value)
    assert "first divergent node" in msg and "mul(" in msg and "2.5" in msg
    assert "test_jit_debug.py" in msg and "in step" in msg                  # the user's source line
    np.testing.assert_allclose(_np(state), before + 2 * np.exp([0.0, 1.0, 2.0]), rtol=1e-6)  # eager committed


class _OffByOneBackend:
    """A broken backend: the reference interpreter, plus one on every float result."""
    name = "off_by_one"

    def compile(self, graph):
        run = InterpExecutable(graph)
        return lambda inputs: [r + 1 if r.dtype.kind == "f" else r for r in run(inputs)]


def test_check_blames_the_backend_when_every_node_matches():
    backends.register_backend("off_by_one", _OffByOneBackend())
    try:
        f = tt.compile(lambda x: x * 3, backend="off_by_one", check=True)
        f(tt.ones(2))
        with pytest.raises(tt.compiler.CheckError, match="backend"):
            f(tt.ones(2))
    finally:
        backends.BACKENDS.pop("off_by_one")


def test_explain_graph_and_dot():
    step, _ = _step_fn()
    f = tt.compile(step)
    x = tt.zeros(3)
    text = f.explain(x)                                 # traces on demand
    assert "not traced yet" in text and "-- guards" in text and "-- IR after passes --" in text
    assert "write-back" in text and "state" in text
    text = tt.compiler.explain(f, x)
    assert "not traced" not in text and "no cached trace" not in text
    text = f.explain(tt.zeros(5))                       # no run: the closest trace and its failing guard
    assert "no cached trace fits" in text and "found shape (5,)" in text
    assert f.stats()["calls"] == 1
    graph = f.graph
    assert "def step(" in graph.text() and "exp(x)" in graph.text() and "test_jit_debug.py:" in graph.text()
    dot = graph.to_dot()
    assert dot.startswith('digraph "step"') and "exp" in dot and "write-back" in dot
    assert "-- backend --" in tt.compiler.explain(lambda y: y + 1, x)


def test_logs_name_guard_failures_and_recompiles(caplog):
    logs.configure("guards,recompiles,ir")
    try:
        f = tt.compile(lambda x: x + 1)
        with caplog.at_level(logging.INFO, logger="tracetorch.jit"):
            f(tt.ones(2))
            f(tt.ones(3))
    finally:
        logs.configure("")
    text = caplog.text
    assert "recompiles:" in text and "guards:" in text and "shape (2,)" in text and "ir:" in text


def test_dump_writes_the_ir(tmp_path):
    logs.configure(dump=str(tmp_path))
    try:
        f = tt.compile(lambda x: x.sin())
        f(tt.ones(2))
    finally:
        logs.configure(dump="")
    names = sorted(p.name for p in tmp_path.iterdir())
    assert any(n.endswith(".ir.txt") for n in names) and any(n.endswith(".dot") for n in names)
    text = next(p for p in tmp_path.iterdir() if p.name.endswith(".ir.txt")).read_text()
    assert "sin(" in text


def test_one_compiled_function_called_from_several_threads():
    w = tt.arange(4.0)

    @tt.compile
    def f(x):
        return (x * w).sum(0)

    errors = []

    def worker(k):
        for i in range(40):
            n = 1 + (i + k) % 3
            out = f(tt.full((n, 4), float(k)))
            if not np.allclose(_np(out), n * k * np.arange(4.0)):
                errors.append((k, i))

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    s = f.stats()
    assert s["traces"] == 3 and s["calls"] == 160 and s["cache_hits"] == 157, s


def test_fullgraph_turns_value_dependent_python_into_errors():
    @tt.compile(fullgraph=True)
    def f(x):
        return x[x > 0].sum()

    with pytest.raises(tt.jit.GraphBreak, match="boolean mask"):
        f(tt.tensor([1.0, -1.0]))

    @tt.compile
    def g(x):                                   # without fullgraph: guarded on the mask's values
        return x[x > 0].sum()

    assert float(g(tt.tensor([1.0, -1.0]))) == 1.0
    assert float(g(tt.tensor([1.0, -2.0]))) == 1.0        # same mask: cached
    assert float(g(tt.tensor([1.0, 2.0]))) == 3.0         # another mask: a new trace
    assert g.stats()["traces"] == 2


def test_compile_errors_carry_the_ir():
    class Broken:
        name = "broken"

        def compile(self, graph):
            raise RuntimeError("no kernel for you")

    backends.register_backend("broken", Broken())
    try:
        f = tt.compile(lambda x: x * 2, backend="broken")
        with pytest.raises(tt.compiler.CompileError, match="no kernel for you") as err:
            f(tt.ones(2))
        assert "mul(x, 2)" in str(err.value)
        g = tt.compile(lambda x: x * 2, backend="broken", fallback=True)
        with pytest.warns(tt.compiler.CompileWarning, match="running it eagerly"):
            assert _np(g(tt.ones(2))).tolist() == [2, 2]
        assert _np(g(tt.ones(2))).tolist() == [2, 2]
    finally:
        backends.BACKENDS.pop("broken")


def test_ir_nodes_are_frozen():
    f = tt.compile(lambda x: x + 1)
    f(tt.ones(1))
    node = f.graph.nodes[0]
    assert isinstance(node, Node)
    with pytest.raises(AttributeError):
        node.op = None
