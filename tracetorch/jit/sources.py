"""Where each program input comes from at call time, and where write-backs go.

A compiled program never holds tensor data: each input is re-read on every
call from its source, by reference (a parameter updated in place, a learning
rate filled by a scheduler, a new batch: all seen without recompiling).

    ArgSource(i)        the i-th tensor leaf of the call's (args, kwargs)
    CapturedSource(ref) a tensor the function reached without being passed
                        (parameter, buffer, optimizer state, generator state),
                        held by weak reference: if it died, its guard fails
    GradSource(owner)   the `.grad` of a parameter (read through the parameter,
                        because backward replaces the grad tensor object); `owner`
                        is the ArgSource or CapturedSource the parameter is found by
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass


@dataclass(frozen=True, eq=False)
class ArgSource:
    index: int
    name: str

    def tensor(self, leaves):
        return leaves[self.index]

    def expression(self, bind) -> str:
        """`tensor(leaves)` as Python source (for guards.compile_guards; `bind(obj, hint)` names an object)."""
        return f"leaves[{self.index}]"

    def describe(self) -> str:
        return self.name


@dataclass(frozen=True, eq=False)
class CapturedSource:
    ref: weakref.ref
    name: str

    def tensor(self, leaves):
        return self.ref()

    def expression(self, bind) -> str:
        return f"{bind(self.ref, 'ref')}()"

    def describe(self) -> str:
        return self.name


@dataclass(frozen=True, eq=False)
class GradSource:
    owner: object
    name: str

    def tensor(self, leaves):
        p = self.owner.tensor(leaves)
        return None if p is None else p._grad

    def expression(self, bind) -> str:
        return f"getattr({self.owner.expression(bind)}, '_grad', None)"      # None when the owner is None

    def describe(self) -> str:
        return self.name
