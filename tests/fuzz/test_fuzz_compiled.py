"""Compiled == eager on random programs, for every available backend (see program_gen.py for what
the programs contain and differential.py for what is compared and the tolerance).

The CI run is deterministic (`derandomize=True`: the same programs every run) and bounded; the
`fuzz`-marked run (`make fuzz`; skipped unless TRACETORCH_FUZZ_EXAMPLES is set) draws fresh
programs, TRACETORCH_FUZZ_EXAMPLES of them per backend.
A failure shrinks to a minimal program and prints it as runnable tracetorch code.

The regression programs at the end are minimal programs for bugs the fuzzer found."""
from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, reject, settings

import tracetorch.jit.backends
from differential import EagerFailed, compare
from program_gen import BOOL, FLOAT, Input, Program, programs

BACKENDS = sorted(tracetorch.jit.backends.BACKENDS)
CI_EXAMPLES = 400                       # per backend (the same programs for each): ~5 s interp, ~10 s llvm
LONG_EXAMPLES = int(os.environ.get("TRACETORCH_FUZZ_EXAMPLES", "0"))


def fuzz(backend: str, examples: int, derandomize: bool) -> None:
    @settings(max_examples=examples, deadline=None, derandomize=derandomize, database=None, print_blob=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large])
    @given(program=programs())
    def compiled_equals_eager(program):
        check(program, backend)

    compiled_equals_eager()


def check(program: Program, backend: str) -> None:
    try:
        problems = compare(program, backend)
    except EagerFailed:
        reject()
    if problems:
        raise AssertionError(f"tt.compile(backend={backend!r}) differs from eager:\n" + "\n".join(problems)
                             + "\n\nthe program, as code:\n" + program.script(backend))


@pytest.mark.parametrize("backend", BACKENDS)
def test_random_programs_compiled_equal_eager(backend):
    fuzz(backend, CI_EXAMPLES, derandomize=True)


@pytest.mark.fuzz
@pytest.mark.skipif("TRACETORCH_FUZZ_EXAMPLES" not in os.environ, reason="the long run: make fuzz")
@pytest.mark.parametrize("backend", BACKENDS)
def test_random_programs_compiled_equal_eager_long(backend):
    fuzz(backend, LONG_EXAMPLES, derandomize=False)


# ---------------------------------------------------------------- bugs the fuzzer found
def _program(body: str, *inputs: Input, outputs=("v0",), state=(3,), backward=False, seed=7, specials=False):
    lines = tuple("    " + ln for ln in body.strip().splitlines())
    return Program(tuple(inputs), Input("state", state, FLOAT), lines, tuple(outputs), backward, seed, specials)


REGRESSIONS = {
    # functionalize emitted the view replayed for an output after the graph's nodes were collected:
    # CompileError (an undefined value) for an in-place update of a reshaped intermediate
    "output view of an intermediate written in place": _program(
        "v0 = x0 @ x0\nv0 += 0.5", Input("x0", (3,), FLOAT)),
    # a gradient written by backward() inside the program went to the argument of the tracing call
    # (a weak reference), not to this call's argument; the guard on it retraced every call
    "backward() sets the grad of this call's argument": _program(
        "v0 = (x0 * x0).sum()\nv0.backward()", Input("x0", (3,), FLOAT, True), backward=True),
    # index tensors made from lists and boolean masks were captured inputs kept alive by autograd:
    # their guards failed on every later call (never a cache hit)
    "list index into a tensor that requires grad": _program(
        "v0 = x0[[0, 2]] * 2", Input("x0", (3,), FLOAT, True)),
    "mask index into a tensor that requires grad": _program(
        "v0 = x0[x0 > 0].sum()", Input("x0", (3,), FLOAT, True)),
    # a 0-d boolean mask decides whether the result has 1 or 0 rows: it was not guarded (wrong shape)
    "0-d boolean mask": _program(
        "v0 = x0[x1].sum() + x0[x1].shape[0]", Input("x0", (3,), FLOAT), Input("x1", (), BOOL), seed=3),
    # LLVM backend: an extern step (matmul, cat) reading a view that is a prefix of a bigger buffer
    # (x[0], x[-3, None, :]) reshaped the whole buffer: ValueError at run time
    "matmul of a prefix view": _program(
        "v0 = x0[-3, None, :]\nv1 = x0 @ v0.mT", Input("x0", (3, 3), FLOAT), outputs=("v1",)),
    "cat of a prefix view of the captured state": _program(
        "v0 = tt.cat([x0[tt.tensor([1]), tt.tensor([1])], state[0]])", Input("x0", (2, 3), FLOAT, True),
        state=(2, 3)),
    # after `v1.fill_(c)` dropped v1 from the graph, its view v2 became a leaf that requires grad:
    # backward() filled v2.grad, and the guard on that temporary's .grad retraced every call
    "view of an intermediate overwritten in place": _program(
        "v0 = x0 * 2\nv1 = v0.reshape(1)\nv0.fill_(0.75)\nv2 = (v1 * x0).sum()\nv2.backward()",
        Input("x0", (), FLOAT, True), outputs=("v2",), backward=True),
    # a number guarded by value that is NaN never equalled itself: retraced on every call
    "NaN number used as a constant": _program(
        "v0 = x0 * float(x0.sum())", Input("x0", (3,), FLOAT), specials=True, seed=7),
    # LLVM donated write-backs: the argument's update was stored into its array while the argument's
    # old value was also a result (here through .item()): the result read the new value
    "old value of an argument updated in place": _program(
        "v0 = x0.reshape(()).item()\nx0.exp_()", Input("x0", (), FLOAT)),
    "argument returned, then updated in place": _program(
        "v0 = x0 * 1\nv1 = x0\nx0.exp_()", Input("x0", (3,), FLOAT), outputs=("v0", "v1")),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", sorted(REGRESSIONS))
def test_regression_programs(name, backend):
    check(REGRESSIONS[name], backend)
