"""Element positions inside a fused kernel, and how views move them.

A fused kernel iterates over a space of shape `S` (its loop indices
i0, i1, ...). Evaluating a value of shape `V` inside it means choosing, for
every kernel iteration, which element of the value is meant: a `Position`,
one `Coord` per dim of `V`. Elementwise broadcasting and the view ops
(permute, expand, slice, reshape) map the position of a view to the
position in the tensor it views, so views cost nothing: they only change
the index arithmetic of the loads at the end of the chain.

A `Coord` is kept *affine* in the loop indices (sum of c_k * i_k + c) for
as long as it can be; then a load's element index is affine too and
becomes a `codegen.IndexMap` (the templates coalesce and vectorize those).
Reshapes need integer division; `Coord.divmod` stays affine when no carry
can cross the divisor (the usual case: splitting or merging dims of a
contiguous layout) and otherwise falls back to a general expression with
floordiv/mod over `Var("@i<k>")` loop placeholders (and, for gathers,
`Arg` placeholders of loaded indices), which lowering binds.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from codegen.kernel import CheckedIndex, Const, Expr, Op, Var
from tracetorch.dtypes import int64


def loop_var(k: int) -> Var:
    """The placeholder of loop index k in general coordinate expressions."""
    return Var(f"@i{k}", int64)


@dataclass(frozen=True)
class Coord:
    """One coordinate: affine (`coeffs` over the loop indices, plus `const`) or general (`expr`).
    `lo`/`hi` bound its value over the iteration space."""
    coeffs: tuple | None
    const: int
    expr: Expr | None
    lo: int
    hi: int
    origin: tuple | None = None     # general: ("digit", x, stride, size) when it is (x // stride) % size
                                    # (size None: x // stride), or ("sum", coords, weights, const) when
                                    # made by `Space.linear`, so that `linear` can put digits back together

    @property
    def affine(self) -> bool:
        return self.coeffs is not None

    def is_unit(self, k: int) -> bool:
        """Whether this coordinate is exactly loop index k."""
        return self.affine and self.const == 0 and all(c == (1 if j == k else 0) for j, c in enumerate(self.coeffs))

    def as_expr(self) -> Expr:
        if self.expr is not None:
            return self.expr
        out: Expr | None = None
        for k, c in enumerate(self.coeffs):
            if c == 0:
                continue
            term = loop_var(k) if c == 1 else Op("mul", (loop_var(k), Const(c, int64)), int64)
            out = term if out is None else Op("add", (out, term), int64)
        if out is None or self.const:
            c = Const(self.const, int64)
            out = c if out is None else Op("add", (out, c), int64)
        return out


class Space:
    """The iteration space of one kernel: makes coordinates with their value ranges."""

    def __init__(self, shape: Sequence[int]):
        self.shape = tuple(shape)
        self.rank = len(self.shape)
        self._affine: dict = {}       # (coeffs, const) -> Coord: fusion asks for the same ones over and over

    def affine(self, coeffs, const: int) -> Coord:
        key = (tuple(coeffs), const)
        hit = self._affine.get(key)
        if hit is not None:
            return hit
        coeffs = tuple(c if self.shape[k] > 1 else 0 for k, c in enumerate(key[0]))
        lo = hi = const
        for c, n in zip(coeffs, self.shape):
            reach = c * (max(n, 1) - 1)
            lo, hi = lo + min(reach, 0), hi + max(reach, 0)
        out = self._affine[key] = Coord(coeffs, const, None, lo, hi)
        return out

    def constant(self, c: int) -> Coord:
        return self.affine((0,) * self.rank, c)

    def unit(self, k: int) -> Coord:
        return self.affine(tuple(1 if j == k else 0 for j in range(self.rank)), 0)

    def identity(self) -> tuple:
        return tuple(self.unit(k) for k in range(self.rank))

    def general(self, expr: Expr, lo: int, hi: int, origin: tuple | None = None) -> Coord:
        return Coord(None, 0, expr, lo, hi, origin)

    def checked(self, index: Expr, size: int, what: str) -> Coord:
        """A data-dependent coordinate, bounds-checked at run time (IndexError, nothing committed)."""
        return self.general(CheckedIndex(index, size, what), 0, max(size - 1, 0))

    # ------------------------------------------------------------ arithmetic
    def linear(self, coords: Sequence[Coord], weights: Sequence[int], const: int = 0) -> Coord:
        """sum(w * c) + const."""
        if not all(c.affine for c in coords):
            coords, weights, const = self._recombine(*_expand_sums(coords, weights, const))
        if len(coords) == 1 and weights[0] == 1 and const == 0:
            return coords[0]
        if all(c.affine for c in coords):
            total = [0] * self.rank
            k0 = const
            for c, w in zip(coords, weights):
                k0 += w * c.const
                for k, a in enumerate(c.coeffs):
                    total[k] += w * a
            return self.affine(total, k0)
        expr: Expr | None = None
        lo = hi = const
        for c, w in zip(coords, weights):
            if c.affine and (w == 0 or c.lo == c.hi == 0):
                continue        # a general coordinate stays even when it can only be 0: its bounds check
            term = c.as_expr() if w == 1 else Op("mul", (c.as_expr(), Const(w, int64)), int64)
            expr = term if expr is None else Op("add", (expr, term), int64)
            a, b = w * c.lo, w * c.hi
            lo, hi = lo + min(a, b), hi + max(a, b)
        if expr is None:
            return self.constant(const)
        if const:
            expr = Op("add", (expr, Const(const, int64)), int64)
        return self.general(expr, lo, hi, ("sum", tuple(coords), tuple(weights), const))

    def divmod(self, c: Coord, m: int) -> tuple[Coord, Coord]:
        """(c // m, c % m) for c >= 0; affine when no carry crosses m. Otherwise, when c = g * h + l
        with g dividing m and 0 <= l < g, the division is of h by m / g (flattening [512, 256] into
        [8, 64, 256] divides the row index by 64, not the flat index by 16384). General results say
        which digit of which coordinate they are (`origin`), so that `linear` can merge them again."""
        if m == 1:
            return c, self.constant(0)
        if 0 <= c.lo and c.hi < m:
            return self.constant(0), c
        if c.affine:
            for g in sorted({math.gcd(a, m) for a in c.coeffs if a} - {1} | {m}, reverse=True):
                high = [a // g if a % g == 0 else 0 for a in c.coeffs]
                low = [0 if a % g == 0 else a for a in c.coeffs]
                q0, r0 = divmod(c.const, g)
                rem = self.affine(low, r0)
                if not (0 <= rem.lo and rem.hi < g):
                    continue
                if g == m:
                    return self.affine(high, q0), rem
                q, r = self.divmod(self.affine(high, q0), m // g)
                return q, self.linear([r, rem], [g, 1])
        x, stride, size = c, 1, None                # c is digit (x // stride) % size of x
        if c.origin is not None and c.origin[0] == "digit":
            _, x, stride, size = c.origin
        if size is not None and size % m:
            x, stride, size = c, 1, None            # not a digit of x any more: of c itself
        e = c.as_expr()
        q = self.general(Op("floordiv", (e, Const(m, int64)), int64), c.lo // m, c.hi // m,
                         ("digit", x, stride * m, None if size is None else size // m))
        return q, self.general(Op("mod", (e, Const(m, int64)), int64), 0, m - 1, ("digit", x, stride, m))

    def digit(self, x: Coord, stride: int, size: int | None) -> Coord:
        """(x // stride) % size (x // stride when size is None)."""
        q = self.divmod(x, stride)[0]
        return q if size is None else self.divmod(q, size)[1]

    def _recombine(self, coords: list, weights: list, const: int) -> tuple[list, list, int]:
        """Merge digits of one coordinate in the terms: w * ((x // s) % n) + n * w * ((x // (s * n)) % k)
        is w * ((x // s) % (n * k)), and the digits of all of x add up to x."""
        for i, a in enumerate(coords):
            if a.origin is None or a.origin[0] != "digit" or a.origin[3] is None:
                continue
            _, x, s, n = a.origin
            for j, b in enumerate(coords):
                if (b.origin is not None and b.origin[0] == "digit" and b.origin[1] == x and b.origin[2] == s * n
                        and weights[j] == weights[i] * n):
                    size = None if b.origin[3] is None else n * b.origin[3]
                    rest = [k for k in range(len(coords)) if k not in (i, j)]
                    return self._recombine(*_expand_sums([coords[k] for k in rest] + [self.digit(x, s, size)],
                                                         [weights[k] for k in rest] + [weights[i]], const))
        return coords, weights, const


def _expand_sums(coords, weights, const: int) -> tuple[list, list, int]:
    """The terms of `linear`, with each general sum it made before replaced by its own terms."""
    out_c, out_w = [], []
    for c, w in zip(coords, weights):
        if c.origin is not None and c.origin[0] == "sum":
            inner_c, inner_w, inner_const = _expand_sums(c.origin[1], c.origin[2], c.origin[3])
            out_c += inner_c
            out_w += [w * v for v in inner_w]
            const += w * inner_const
        else:
            out_c.append(c)
            out_w.append(w)
    return out_c, out_w, const


# ---------------------------------------------------------------- views move positions
def broadcast(space: Space, pos: tuple, shape: Sequence[int]) -> tuple:
    """The position in an operand of `shape` that numpy broadcasting reads at `pos`."""
    lead = len(pos) - len(shape)
    return tuple(pos[lead + d] if size != 1 else space.constant(0) for d, size in enumerate(shape))


def contiguous_strides(shape: Sequence[int]) -> tuple:
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= size
    return tuple(reversed(strides))


def flat_index(space: Space, pos: tuple, shape: Sequence[int]) -> Coord:
    """The C-order element index of `pos` in a contiguous array of `shape`."""
    return space.linear(pos, contiguous_strides(shape))


def reshape_source(space: Space, pos: tuple, out_shape, in_shape) -> tuple:
    """Position in the reshaped tensor (in_shape) of the element at `pos` of the result (out_shape)."""
    if tuple(out_shape) == tuple(in_shape):
        return pos
    if numel(in_shape) == 0:                # no element is ever read
        return tuple(space.constant(0) for _ in in_shape)
    squeezed_out = [(c, n) for c, n in zip(pos, out_shape) if n != 1]
    if [n for _, n in squeezed_out] == [n for n in in_shape if n != 1]:     # only unit dims added/removed
        it = iter(c for c, _ in squeezed_out)
        return tuple(next(it) if n != 1 else space.constant(0) for n in in_shape)
    flat = flat_index(space, pos, out_shape)
    out = []
    for d, (stride, size) in enumerate(zip(contiguous_strides(in_shape), in_shape)):
        if size == 1:
            out.append(space.constant(0))
            continue
        q, _ = space.divmod(flat, stride)
        if d > 0:
            _, q = space.divmod(q, size)
        out.append(q)
    return tuple(out)


def permute_source(pos: tuple, dims: Sequence[int]) -> tuple:
    src = [None] * len(dims)
    for j, d in enumerate(dims):
        src[d] = pos[j]
    return tuple(src)


def expand_source(space: Space, pos: tuple, in_shape, out_shape) -> tuple:
    lead = len(out_shape) - len(in_shape)
    return tuple(pos[lead + d] if size == out_shape[lead + d] else space.constant(0)
                 for d, size in enumerate(in_shape))


def slice_source(space: Space, pos: tuple, starts, steps) -> tuple:
    return tuple(space.linear([c], [step], start) for c, start, step in zip(pos, starts, steps))


def numel(shape) -> int:
    return math.prod(shape)
