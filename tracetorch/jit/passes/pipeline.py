"""The pass pipeline, in order, each pass one function Graph -> Graph:

    functionalize     in-place writes -> SSA + write-backs (storage semantics end here)
    expand_backward   `backward` nodes -> gradient computations (VJP rules)
    [joint]           for autograd across the boundary: append the backward of the outputs
    lower_markers     drop `detach` / `custom_fn` (no differentiation after this)
    fold              constant folding
    simplify          algebraic identities (rules as data)
    cse               common subexpressions
    [partition]       joint -> forward + backward programs
    dce               only what outputs and write-backs need

Functionalization comes first so that autodiff works on SSA values (in-place
updates of activations differentiate like any op). With TRACETORCH_VERIFY=1
(the test suite sets it) the IR verifier runs after every pass.
"""
from __future__ import annotations

import os

from ..ir import Graph
from .autodiff import expand_backward, joint, lower_markers
from .cse import cse
from .dce import dce
from .fold import fold
from .functionalize import functionalize
from .partition import Split, partition
from .simplify import simplify
from .verify import verify

SIMPLIFY = (fold, simplify, cse)


def verifying() -> bool:
    return os.environ.get("TRACETORCH_VERIFY") == "1"


def run_passes(g: Graph, passes, *, pure: bool = True) -> Graph:
    check = verifying()
    for p in passes:
        g = p(g)
        if check:
            verify(g, pure=pure, after=p.__name__)
    return g


def lower(raw: Graph) -> Graph:
    """The traced graph -> a pure, simplified graph for a backend."""
    g = run_passes(raw, (functionalize, expand_backward), pure=False)
    return run_passes(g, (lower_markers,) + SIMPLIFY + (dce,))


def lower_with_backward(raw: Graph, diff_outputs: list, diff_inputs: list) -> tuple[Graph, Split]:
    """Like `lower`, plus a backward program for gradients of outputs `diff_outputs` (positions in
    raw.outputs) w.r.t. inputs `diff_inputs` (positions in raw.inputs).

    Returns (the graph before splitting, the split)."""
    g = run_passes(raw, (functionalize, expand_backward), pure=False)
    n_out = len(g.outputs)
    roots = [g.outputs[i] for i in diff_outputs]
    wrt = [g.inputs[i] for i in diff_inputs]
    j, seeds, grads = joint(g, roots, wrt)
    missing = [k for k, gv in enumerate(grads) if gv is None]
    j = j.replace(outputs=tuple(j.outputs) + tuple(gv for gv in grads if gv is not None))
    if verifying():
        verify(j, after="joint")
    j = run_passes(j, (lower_markers,) + SIMPLIFY)
    split = partition(j, n_out, len(seeds))
    split = Split(run_passes(split.forward, (dce,)), run_passes(split.backward, (dce,)), split.input_residuals,
                  split.n_outputs)
    return j, split, missing
