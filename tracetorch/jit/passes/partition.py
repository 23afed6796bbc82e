"""Split a joint forward+backward graph into a forward and a backward program.

The joint graph's outputs are the forward outputs followed by the gradients;
its inputs are the forward inputs followed by the seeds (incoming output
gradients). The forward program computes what the outputs and write-backs
need; the backward program everything else the gradients need. Values the
backward reads from the forward are *residuals* (saved activations): forward
inputs are saved by reference (the program checks at backward time that
they were not modified in place, as eager autograd does), computed ones are
extra outputs of the forward program.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..ir import Graph, Value


@dataclass(frozen=True)
class Split:
    forward: Graph              # outputs: the forward outputs, then the computed residuals
    backward: Graph             # inputs: input residuals, computed residuals, seeds; outputs: gradients
    input_residuals: tuple      # positions in forward.inputs of the inputs the backward reads
    n_outputs: int              # forward outputs before the residuals


def partition(joint: Graph, n_outputs: int, n_seeds: int) -> Split:
    n_inputs = len(joint.inputs) - n_seeds
    inputs, seeds = joint.inputs[:n_inputs], joint.inputs[n_inputs:]
    outputs, grads = joint.outputs[:n_outputs], joint.outputs[n_outputs:]
    producer = joint.producers()
    fwd = _ancestors(list(outputs) + [v for _, v in joint.writebacks], producer)
    bwd = _ancestors(list(grads), producer) - fwd
    fwd_nodes = [n for n in joint.nodes if id(n) in fwd]
    bwd_nodes = [n for n in joint.nodes if id(n) in bwd]
    made_in_bwd = {v for n in bwd_nodes for v in n.outputs} | set(seeds)
    needed: dict = {}
    for n in bwd_nodes:
        for x in n.inputs:
            if isinstance(x, Value) and x not in made_in_bwd:
                needed.setdefault(x, None)
    for v in grads:
        if v not in made_in_bwd:
            needed.setdefault(v, None)
    input_pos = {v: i for i, v in enumerate(inputs)}
    input_res = [v for v in needed if v in input_pos]
    computed = [v for v in needed if v not in input_pos]
    forward = joint.replace(inputs=tuple(inputs), nodes=tuple(fwd_nodes), outputs=tuple(outputs) + tuple(computed),
                            name=joint.name)
    backward = Graph(tuple(input_res) + tuple(computed) + tuple(seeds), tuple(bwd_nodes), tuple(grads),
                     name=joint.name + "_backward")
    return Split(forward, backward, tuple(input_pos[v] for v in input_res), n_outputs)


def _ancestors(roots, producer) -> set:
    seen: set = set()
    stack = [producer[v] for v in roots if isinstance(v, Value) and v in producer]
    while stack:
        n = stack.pop()
        if id(n) in seen:
            continue
        seen.add(id(n))
        stack.extend(producer[x] for x in n.inputs if isinstance(x, Value) and x in producer)
    return seen
