"""The op registry: every primitive op is defined exactly once, here.

An `OpDef` carries what every layer needs: shape/dtype inference (tracer,
IR verifier), the eager kernel on numpy arrays, the VJP written with
tracetorch ops (eager autograd and the IR autodiff pass), the fusion kind and
a lowering description for code generation.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, NamedTuple

from ..dtypes import DType

# Fusion/lowering kinds.
ELEMENTWISE = "elementwise"   # out[i] = f(in0[i], in1[i], ...) after broadcasting
REDUCE = "reduce"             # combine over `dims`
SCAN = "scan"                 # cumulative combine along one dim
MOVEMENT = "movement"         # pure index map: reshape, permute, expand, slice
INDEX = "index"               # data-dependent index map: gather / scatter
EXTERN = "extern"             # opaque kernel: matmul, random, sort
CREATION = "creation"         # no tensor inputs: full, arange, constant
RANDOM = "random"             # counter-based random numbers from a generator-state input


class Aval(NamedTuple):
    """Abstract value: what inference knows about a tensor."""
    shape: tuple
    dtype: DType


@dataclass(frozen=True, eq=False)
class OpDef:
    name: str
    kind: str
    eager: Callable                 # (*numpy arrays or Python scalars, **attrs) -> ndarray
    infer: Callable                 # (*Avals or Python scalars, **attrs) -> Aval
    vjp: Callable | None = None     # (node, grad) -> tuple of grads (Tensor or None), one per input
    saves: tuple = ()               # what the VJP reads: input indices and/or "out"
    lowering: object = None         # elementwise: scalar expression over x0, x1, ...; reduce: (combine, identity)
    view: bool = False              # eager result may share storage with input 0
    doc: str = ""
    extra: dict = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"<op {self.name}>"

    @property
    def differentiable(self) -> bool:
        return self.vjp is not None


REGISTRY: dict[str, OpDef] = {}


def register(name: str, kind: str, *, eager, infer, vjp=None, saves=(), lowering=None, view=False,
             doc: str = "", **extra) -> OpDef:
    if name in REGISTRY:
        raise ValueError(f"op {name!r} registered twice")
    op = OpDef(name, kind, eager, infer, vjp, tuple(saves), lowering, view, doc, extra)
    REGISTRY[name] = op
    return op


def get(name: str) -> OpDef:
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"no primitive op named {name!r}") from None
