"""Static bounds verification of kernels: every load and store provably stays inside its buffer.

Index expressions are evaluated over intervals: loop variables range over
[0, extent - 1], constants are points, and `CheckedIndex` (a data-dependent
index checked at run time) lies in [0, size - 1]. A load or store whose index
interval is not inside [0, buffer.size - 1], or whose index depends on data
without a `CheckedIndex` (a loaded value, an accumulator), is rejected before
any code is generated: generated code never reads or writes out of bounds.
"""
from __future__ import annotations

from typing import Optional

from .kernel import (Accumulator, CheckedIndex, Const, Expr, Kernel, Let, Load, Loop, Op, Stmt, Store, Var,
                     stmt_exprs, walk_exprs, walk_stmts)

Interval = Optional[tuple[int, int]]   # None: unknown (data-dependent)


class BoundsError(IndexError):
    """A kernel whose static indexing may leave a buffer."""


def verify_bounds(kernel: Kernel) -> None:
    _Verifier(kernel).stmt(kernel.outer, {})


class _Verifier:
    def __init__(self, kernel: Kernel):
        self.kernel = kernel
        self.accumulators = {s.name for s in walk_stmts(kernel.outer) if isinstance(s, Accumulator)}

    def stmt(self, stmt: Stmt, env: dict) -> None:
        if isinstance(stmt, Loop):
            if stmt.extent <= 0:
                return                          # never runs
            inner = dict(env)
            inner[stmt.var] = (0, stmt.extent - 1)
            for s in stmt.body:
                self.stmt(s, inner)
            return
        for e in stmt_exprs(stmt):
            self.accesses(e, env)
        if isinstance(stmt, Store):
            self.check(stmt.buffer, stmt.index, env, "store to")
        if isinstance(stmt, Let):
            env[stmt.name] = self.interval(stmt.value, env) if not stmt.value.dtype.is_floating_point else None

    def accesses(self, expr: Expr, env: dict) -> None:
        for node in walk_exprs(expr):
            if isinstance(node, Load):
                self.check(node.buffer, node.index, env, "load from")

    def check(self, buffer, index: Expr, env: dict, what: str) -> None:
        span = self.interval(index, env)
        if span is None:
            raise BoundsError(f"kernel {self.kernel.name!r}: {what} {buffer!r} at {index} has a data-dependent "
                              f"index: wrap it in CheckedIndex")
        lo, hi = span
        if lo < 0 or hi >= buffer.size:
            raise BoundsError(f"kernel {self.kernel.name!r}: {what} {buffer!r} at {index} reaches elements "
                              f"[{lo}, {hi}] of {buffer.size}")

    def interval(self, e: Expr, env: dict) -> Interval:
        if isinstance(e, Const):
            return (int(e.value), int(e.value)) if not e.dtype.is_floating_point else None
        if isinstance(e, Var):
            if e.name in self.accumulators:
                return None
            return env.get(e.name)
        if isinstance(e, CheckedIndex):
            return (0, e.size - 1)
        if isinstance(e, Op):
            return self.op(e, env)
        return None

    def op(self, e: Op, env: dict) -> Interval:
        if e.dtype.is_floating_point:
            return None
        if e.op == "cast":
            return self.interval(e.args[0], env) if not e.args[0].dtype.is_floating_point else None
        spans = [self.interval(a, env) for a in e.args]
        if e.op == "where":
            a, b = spans[1], spans[2]
            return None if a is None or b is None else (min(a[0], b[0]), max(a[1], b[1]))
        if any(s is None for s in spans):
            return None
        if e.op == "add":
            (a, b), (c, d) = spans
            return a + c, b + d
        if e.op == "sub":
            (a, b), (c, d) = spans
            return a - d, b - c
        if e.op == "mul":
            (a, b), (c, d) = spans
            products = (a * c, a * d, b * c, b * d)
            return min(products), max(products)
        if e.op in ("max", "min"):
            (a, b), (c, d) = spans
            f = max if e.op == "max" else min
            return f(a, c), f(b, d)
        if e.op in ("floordiv", "mod") and spans[1][0] == spans[1][1] and spans[1][0] > 0:
            (a, b), (k, _) = spans
            return (a // k, b // k) if e.op == "floordiv" else ((a % k, b % k) if a // k == b // k else (0, k - 1))
        return None

