"""Random tracetorch programs as data, for testing `tt.compile` against eager execution.

A `Program` is the source of one function over a few input tensors and one
captured tensor (`state`, a global of the function), plus the seed its input
values come from. The hypothesis strategy `programs()` builds it one step at
a time, tracking the shape, dtype, requires_grad and aliasing of every value,
so every program it draws is valid (it runs eagerly without error, save for
rare autograd conflicts with in-place writes, which the test rejects).

A program runs by executing its own source, so the code a failure prints is
exactly the code that ran, and hypothesis shrinks a failing program by
dropping and simplifying steps: the report is a minimal program.

What the steps cover: elementwise unary and binary ops with broadcasting and
Python scalars, comparisons, casts and `where`; reductions over dims with and
without keepdim; views (reshape, permute, transpose, slices with steps,
expand, unsqueeze/squeeze, `None`/`...`); basic and advanced indexing, boolean
masks, index assignment; matmul; in-place updates of intermediates, of inputs
and of the captured `state`; numbers read with `.item()` flowing back into
tensor math; a branch on a tensor's value (`.item()`, `bool()`); and a final
`backward()` (or `tt.autograd.grad`) of a scalar. Shapes have up to 3 dims of
sizes 1-5 or 17 (past a vector width: loop tails); some programs have a
zero-size dim. Input values are multiples of 0.25 (sums and products are
exact whatever the summation order), with NaN and infinities in some programs
(about 1 in 12 of those drawn in CI).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import numpy as np
from hypothesis import strategies as st

FLOAT, INT, BOOL, NUMBER = "float64", "int64", "bool", "number"     # NUMBER: a Python float from .item()


# ---------------------------------------------------------------- the program
@dataclass(frozen=True)
class Input:
    name: str
    shape: tuple
    dtype: str
    requires_grad: bool = False


@dataclass(frozen=True)
class Program:
    inputs: tuple           # Input, passed as arguments
    state: Input            # captured by the function as the global `state`
    body: tuple             # source lines of the function body (indented 4 spaces)
    outputs: tuple          # names returned
    backward_inside: bool   # the body ends with a backward() / autograd.grad
    seed: int
    specials: bool          # inputs contain NaN and +-inf

    def source(self) -> str:
        args = ", ".join(i.name for i in self.inputs)
        ret = ", ".join(self.outputs) + ("," if len(self.outputs) == 1 else "")
        return "\n".join([f"def program({args}):", *self.body, f"    return ({ret})", ""])

    def function(self):
        """A fresh `program` function and its captured `state` tensor (one per namespace)."""
        import tracetorch as tt
        state = tt.zeros(self.state.shape, dtype=tt.float64)
        ns = {"tt": tt, "F": tt.nn.functional, "state": state}
        exec(compile(self.source(), "<fuzz program>", "exec"), ns)
        return ns["program"], state

    def values(self, which: int) -> dict:
        """Input and state values (numpy), set `which` (0: the tracing call, 1: the compared call)."""
        rng = np.random.default_rng([self.seed, which])
        out = {}
        for spec in (*self.inputs, self.state):
            if spec.dtype == FLOAT:
                a = np.asarray(rng.integers(-8, 9, spec.shape) * 0.25)
                if self.specials and a.size:
                    hit = rng.random(spec.shape) < 0.2
                    a[hit] = rng.choice([np.nan, np.inf, -np.inf], size=int(hit.sum()))
            elif spec.dtype == INT:
                a = rng.integers(-3, 4, spec.shape)
            else:
                a = rng.random(spec.shape) < 0.5
            out[spec.name] = np.asarray(a)
        return out

    def script(self, backend: str) -> str:
        """Runnable code reproducing the comparison (what a failure prints): the call that traces on
        value set 0, then set 1 compiled and eager, each printing results, state and input grads."""
        def values(which):
            vals = self.values(which)
            return "    {" + ", ".join(f"{name!r}: {_literal(vals[name], dtype)}" for name, dtype in
                                       [("state", FLOAT)] + [(i.name, i.dtype) for i in self.inputs]) + "},"
        args = ", ".join(i.name for i in self.inputs)
        grads = ", ".join(f"{i.name}.grad" for i in self.inputs if i.requires_grad)
        lines = ["import math", "", "import numpy as np", "", "import tracetorch as tt", "",
                 "F = tt.nn.functional", "tt.set_default_dtype(tt.float64)",
                 f"state = tt.zeros({self.state.shape}, dtype=tt.float64)", "VALUES = [", values(0), values(1), "]",
                 "", "", self.source(), "",
                 "def run(fn, which):",
                 "    with tt.no_grad():",
                 "        state.copy_(VALUES[which]['state'])"]
        for i in self.inputs:
            lines.append(f"    {i.name} = VALUES[which][{i.name!r}].clone()"
                         + (".requires_grad_()" if i.requires_grad else ""))
        lines.append(f"    out = fn({args})")
        if any(i.requires_grad for i in self.inputs) and not self.backward_inside:
            lines += ["    need_grad = [o for o in out if isinstance(o, tt.Tensor) and o.requires_grad]",
                      "    if need_grad:                     # the test's backward through the outputs",
                      "        sum((o * tt.tensor((np.arange(o.numel()) % 7 - 3).reshape(tuple(o.shape)) * 0.5))"
                      ".sum() for o in need_grad).backward()"]
        lines += [f"    print(out, state{', ' + grads if grads else ''})", "", "",
                  f"compiled = tt.compile(program, backend={backend!r})",
                  "run(compiled, 0)   # traces (runs eagerly)",
                  "run(compiled, 1)   # the compiled program",
                  "run(program, 1)    # eager", ""]
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"Program(seed={self.seed}, specials={self.specials}, inputs={list(self.inputs)}):\n{self.source()}"


def _literal(a: np.ndarray, dtype: str) -> str:
    text = repr(a.tolist())
    text = re.sub(r"\bnan\b", "math.nan", re.sub(r"\binf\b", "math.inf", text))
    if a.size == 0:
        return f"tt.zeros({a.shape}, dtype=tt.{dtype})"
    return f"tt.tensor({text}, dtype=tt.{dtype})"


# ---------------------------------------------------------------- shapes
def broadcast(a: tuple, b: tuple):
    """The broadcast shape of two shapes, or None."""
    out = []
    for x, y in zip(((1,) * (len(b) - len(a)) + a), ((1,) * (len(a) - len(b)) + b)):
        if x != y and 1 not in (x, y):
            return None
        out.append(y if x == 1 else x)
    return tuple(out)


def reduced(shape: tuple, dims: tuple, keepdim: bool) -> tuple:
    dims = {d % len(shape) for d in dims}
    return tuple(1 if i in dims else n for i, n in enumerate(shape) if keepdim or i not in dims)


@dataclass(frozen=True)
class Var:
    name: str
    shape: tuple | None     # None for a Python number
    dtype: str
    grad: bool = False      # requires grad
    writable: bool = True   # may be written in place (not a broadcast view, not a leaf needing grad)
    root: str = ""          # the tensor whose storage this one may view

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass
class Builder:
    """The program under construction: the values defined so far and the body lines."""
    draw: object
    vars: list
    lines: list = field(default_factory=list)
    count: int = 0

    def pick(self, pred=lambda v: True):
        """One of the tensors defined so far that satisfies `pred`, or None."""
        cands = [v for v in self.vars if v.shape is not None and pred(v)]
        return self.draw(st.sampled_from(cands)) if cands else None

    def choose(self, options):
        return self.draw(st.sampled_from(list(options)))

    def flag(self) -> bool:
        return self.draw(st.booleans())

    def define(self, expr: str, shape, dtype, grad=False, writable=True, root=None, indent="    ") -> Var:
        name = f"v{self.count}"
        self.count += 1
        self.lines.append(f"{indent}{name} = {expr}")
        v = Var(name, shape, dtype, grad, writable, root or name)
        self.vars.append(v)
        return v

    def operand(self, shape: tuple, *, exact=False, dtypes=(FLOAT, INT)):
        """A second operand for a tensor of `shape`: a tensor that broadcasts with it (or, `exact`,
        to it), a number from `.item()`, or a literal. Returns (text, Var or None for a literal)."""
        def fits(v):
            if v.dtype not in dtypes:
                return False
            return broadcast(shape, v.shape) == shape if exact else broadcast(shape, v.shape) is not None
        kind = self.choose(["tensor", "literal", "number"])
        if kind == "number" and FLOAT in dtypes:
            nums = [v for v in self.vars if v.dtype == NUMBER]
            if nums:
                v = self.choose(nums)
                return v.name, v
        if kind == "tensor":
            v = self.pick(fits)
            if v is not None:
                return v.name, v
        return self.choose(["2.0", "0.5", "-1.5", "3", "-1"] if FLOAT in dtypes else ["2", "-1", "3"]), None


def _promote(*dtypes) -> str:
    """Result dtype of arithmetic (default dtype float64; literals count by their kind)."""
    if FLOAT in dtypes or NUMBER in dtypes:
        return FLOAT
    return INT


def _lit_dtype(text: str) -> str:
    return FLOAT if "." in text else INT


# ---------------------------------------------------------------- steps
FLOAT_UNARY = ["{x}.exp()", "{x}.log()", "{x}.sqrt()", "{x}.abs()", "-{x}", "{x}.sin()", "{x}.cos()",
               "{x}.tanh()", "{x}.sigmoid()", "{x}.relu()", "{x}.reciprocal()", "{x}.rsqrt()", "{x}.expm1()",
               "{x}.log1p()", "{x}.floor()", "{x}.ceil()", "{x}.round()", "{x}.sign()", "{x} ** 2", "{x} ** 0.5",
               "{x} ** -1", "{x}.clamp(min=-1.0, max=1.5)", "{x}.square()", "F.gelu({x})", "{x}.clone()",
               "{x}.isnan().to(tt.float64)", "2.0 ** {x}", "(1.0 - {x}) * 0.5"]
INT_UNARY = ["-{x}", "{x}.abs()", "{x}.sign()", "{x} * 2", "{x}.clamp(-1, 2)", "{x} ** 2", "{x}.clone()"]
BOOL_UNARY = ["~{x}", "{x}.logical_not()", "{x} ^ True"]


def step_unary(b: Builder) -> None:
    x = b.pick(lambda v: v.dtype in (FLOAT, INT, BOOL))
    table = {FLOAT: FLOAT_UNARY, INT: INT_UNARY, BOOL: BOOL_UNARY}[x.dtype]
    template = b.choose(table)
    if x.ndim and x.dtype == FLOAT and b.flag() and b.flag():
        d = b.choose(range(-x.ndim, x.ndim))
        template = b.choose([f"tt.softmax({{x}}, dim={d})", f"tt.log_softmax({{x}}, dim={d})",
                             f"{{x}}.cumsum({d})"])
    b.define(template.format(x=x.name), x.shape, x.dtype, x.grad and "isnan" not in template)


ARITH = ["+", "-", "*", "/", "//", "%", "**", "max", "min"]
COMPARE = ["<", "<=", ">", ">=", "==", "!="]


def step_binary(b: Builder) -> None:
    x = b.pick(lambda v: v.dtype in (FLOAT, INT))
    op = b.choose(ARITH + COMPARE)
    y_text, y = b.operand(x.shape)
    y_dtype = y.dtype if y is not None else _lit_dtype(y_text)
    shape = broadcast(x.shape, y.shape) if y is not None and y.shape is not None else x.shape
    grad = x.grad or (y is not None and y.grad)
    if op in COMPARE:
        left, right = (x.name, y_text) if b.flag() or y is None or y.shape is not None else (y_text, x.name)
        b.define(f"{left} {op} {right}", shape, BOOL)
        return
    dtype = FLOAT if op == "/" else _promote(x.dtype, y_dtype)
    if op in ("//", "%") and dtype == INT:
        if y is not None and y.shape is not None:
            y_text = f"({y_text}.abs() + 1)"         # integer division by zero raises (tested elsewhere)
    if op == "**":
        if dtype == INT or y_dtype == INT:
            y_text = b.choose(["2", "3"])            # integers to negative powers raise
            b.define(f"{x.name} ** {y_text}", x.shape, x.dtype, x.grad)
            return
        b.define(f"{x.name} ** {y_text}", shape, FLOAT, grad)
        return
    if op in ("max", "min"):
        if y is None:
            y_text = f"tt.full_like({x.name}, {y_text}, dtype=tt.{_promote(x.dtype, y_dtype)})"
        elif y.shape is None:
            y_text = f"tt.tensor({y_text})"
        fn = "tt.maximum" if op == "max" else "tt.minimum"
        b.define(f"{fn}({x.name}, {y_text})", shape, dtype, grad)
        return
    if y is None and b.flag():                        # a literal on the left: reflected operators
        b.define(f"{y_text} {op} {x.name}" if op not in ("//", "%") or dtype == FLOAT
                 else f"{x.name} {op} {y_text}", shape, dtype, grad)
        return
    b.define(f"{x.name} {op} {y_text}", shape, dtype, grad)


def step_logical(b: Builder) -> None:
    x = b.pick(lambda v: v.dtype == BOOL)
    if x is None:
        return step_binary(b)
    y = b.pick(lambda v: v.dtype == BOOL and broadcast(x.shape, v.shape) is not None)
    op = b.choose(["&", "|", "^"])
    b.define(f"{x.name} {op} {y.name}", broadcast(x.shape, y.shape), BOOL)


def step_where(b: Builder) -> None:
    c = b.pick(lambda v: v.dtype == BOOL)
    if c is None:
        x = b.pick(lambda v: v.dtype == FLOAT)
        if x is None:
            return step_binary(b)
        c = Var(f"({x.name} > 0)", x.shape, BOOL)
    a = b.pick(lambda v: v.dtype in (FLOAT, INT) and broadcast(v.shape, c.shape) is not None)
    if a is None:
        return step_binary(b)
    shape = broadcast(c.shape, a.shape)
    other, o = b.operand(shape)
    if o is not None and o.shape is not None:
        shape = broadcast(shape, o.shape)
    dtype = _promote(a.dtype, o.dtype if o is not None else _lit_dtype(other))
    grad = a.grad or (o is not None and o.grad)
    if o is None and b.flag():
        b.define(f"{a.name}.masked_fill({c.name}, {other})", shape, a.dtype, a.grad)
        return
    first, second = (a.name, other) if b.flag() else (other, a.name)
    b.define(f"tt.where({c.name}, {first}, {second})", shape, dtype, grad)


def step_cast(b: Builder) -> None:
    x = b.pick()
    to = b.choose([FLOAT, INT, BOOL])
    if x.dtype == FLOAT and to == INT:                # out-of-range float -> int is undefined
        expr = f"tt.where({x.name}.isfinite(), {x.name}, 0.0).clamp(-8, 8).long()"
    else:
        expr = {FLOAT: f"{x.name}.to(tt.float64)", INT: f"{x.name}.long()", BOOL: f"{x.name}.bool()"}[to]
    b.define(expr, x.shape, to, x.grad and to == FLOAT and x.dtype == FLOAT)


NEED_NONEMPTY = ("amax", "amin", "max", "min", "argmax", "argmin", "logsumexp")     # no identity element


def step_reduce(b: Builder) -> None:
    x = b.pick()
    if x.dtype == BOOL:
        fn = b.choose(["all", "any", "sum"])
    elif x.dtype == INT:
        fn = b.choose(["sum", "amax", "amin", "argmax", "argmin", "prod"])
    else:
        fn = b.choose(["sum", "mean", "amax", "amin", "prod", "var", "std", "logsumexp", "max", "min", "argmax",
                       "argmin", "norm"])
    full = x.ndim == 0 or b.flag()
    if fn == "logsumexp" and x.ndim == 0:
        fn = "sum"
    if full:
        dims = tuple(range(x.ndim))
        keep = False
        if fn in NEED_NONEMPTY and x.numel == 0:
            fn = "sum"
        call = "(dim=0)" if fn == "logsumexp" else "()"
        if fn == "logsumexp":
            x = b.define(f"{x.name}.reshape(-1)", (x.numel,), x.dtype, x.grad)
            dims = (0,)
    else:
        n = b.choose([1, 2]) if x.ndim >= 2 and fn in ("sum", "mean", "amax", "amin", "var", "std", "logsumexp",
                                                         "norm") else 1
        dims = tuple(b.draw(st.lists(st.integers(-x.ndim, x.ndim - 1), min_size=n, max_size=n,
                                     unique_by=lambda d: d % x.ndim)))
        keep = b.flag()
        if fn in NEED_NONEMPTY and any(x.shape[d] == 0 for d in dims):
            fn = "sum"
        dim_text = str(dims[0]) if len(dims) == 1 else str(dims)
        call = f"(dim={dim_text}, keepdim={keep})"
    shape = reduced(x.shape, dims, keep)
    dtype = {"all": BOOL, "any": BOOL, "argmax": INT, "argmin": INT}.get(fn, INT if x.dtype in (INT, BOOL)
                                                                            else FLOAT)
    grad = x.grad and dtype == FLOAT
    suffix = ".values" if fn in ("max", "min") and not full else ""
    b.define(f"{x.name}.{fn}{call}{suffix}", shape, dtype, grad)


def _divisors(n: int) -> list:
    return [d for d in range(1, n + 1) if n % d == 0]


def step_view(b: Builder) -> None:
    x = b.pick()
    kind = b.choose(["reshape", "permute", "transpose", "slice", "unsqueeze", "expand", "squeeze", "flatten",
                     "mT", "contiguous", "slice", "expand"])
    keep = dict(dtype=x.dtype, grad=x.grad, writable=x.writable, root=x.root)
    if kind == "reshape":
        n = x.numel
        if n == 0:
            b.define(f"{x.name}.reshape(-1)", (0,), **keep)
            return
        k = b.choose([1, 2, 3])
        dims, rest = [], n
        for _ in range(k - 1):
            d = b.choose(_divisors(rest))
            dims.append(d)
            rest //= d
        dims.append(rest)
        shown = list(dims)
        if b.flag():
            shown[b.choose(range(k))] = -1
        b.define(f"{x.name}.reshape({', '.join(map(str, shown))})", tuple(dims), **keep)
    elif kind == "permute" and x.ndim >= 2:
        perm = b.draw(st.permutations(range(x.ndim)))
        b.define(f"{x.name}.permute({', '.join(map(str, perm))})", tuple(x.shape[p] for p in perm), **keep)
    elif kind in ("transpose", "mT") and x.ndim >= 2:
        if kind == "mT":
            d0, d1 = -2, -1
            expr = f"{x.name}.mT"
        else:
            d0, d1 = b.choose(range(-x.ndim, x.ndim)), b.choose(range(-x.ndim, x.ndim))
            expr = f"{x.name}.transpose({d0}, {d1})"
        shape = list(x.shape)
        shape[d0], shape[d1] = shape[d1], shape[d0]
        b.define(expr, tuple(shape), **keep)
    elif kind == "slice" and x.ndim >= 1:
        text, shape = _basic_index(b, x.shape)
        b.define(f"{x.name}[{text}]", shape, **keep)
    elif kind == "unsqueeze":
        d = b.choose(range(-x.ndim - 1, x.ndim + 1))
        shape = list(x.shape)
        shape.insert(d % (x.ndim + 1), 1)
        b.define(f"{x.name}.unsqueeze({d})", tuple(shape), **keep)
    elif kind == "squeeze" and x.ndim >= 1:
        d = b.choose(range(-x.ndim, x.ndim))
        shape = list(x.shape)
        if shape[d] == 1:
            del shape[d]
        b.define(f"{x.name}.squeeze({d})", tuple(shape), **keep)
    elif kind == "expand":
        lead = b.choose([(), (2,), (3,)])
        new = [b.choose([1, 2, 3]) if n == 1 else n for n in x.shape]
        shown = [n if n != m or not b.flag() else -1 for n, m in zip(new, x.shape)]
        b.define(f"{x.name}.expand({', '.join(map(str, (*lead, *shown)))})", (*lead, *new),
                 x.dtype, x.grad, False, x.root)
    elif kind == "flatten":
        b.define(f"{x.name}.flatten()", (x.numel,), **keep)
    else:
        b.define(f"{x.name}.contiguous()", x.shape, **keep)


def _basic_index(b: Builder, shape: tuple):
    """A basic index (ints, slices with steps, None, ...) for `shape`: (text, result shape)."""
    items, out, dim = [], [], 0
    n_items = b.choose(range(1, len(shape) + 1))
    if n_items < len(shape) and b.flag():
        items.append("...")
        skipped = len(shape) - n_items
        out.extend(shape[:skipped])
        dim = skipped
    while dim < len(shape):
        n = shape[dim]
        kind = b.choose(["slice", "int", "full", "none"])
        if kind == "int" and n > 0:
            i = b.choose(range(-n, n))
            items.append(str(i))
        elif kind == "slice":
            start = b.choose([None, 0, 1, -1, -2])
            stop = b.choose([None, n, 1, -1, 3])
            step = b.choose([None, 1, 2, 3])
            text = f"{'' if start is None else start}:{'' if stop is None else stop}"
            if step is not None:
                text += f":{step}"
            items.append(text)
            out.append(len(range(n)[slice(start, stop, step)]))
        elif kind == "none":
            items.append("None")
            out.append(1)
            continue
        else:
            items.append(":")
            out.append(n)
        dim += 1
    if items == ["..."]:
        items.append(":")
    return ", ".join(items), tuple(out)


def _index_tensor(b: Builder, n: int, unique: bool = False):
    """A literal int64 index tensor into a dimension of size n (negative indices included):
    (text, length). `unique` for writes (duplicate indices in a write have no defined winner)."""
    if unique:
        picks = b.draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=n, unique=True))
        picks = [p - n if b.flag() else p for p in picks]
    else:
        picks = b.draw(st.lists(st.integers(-n, n - 1), min_size=1, max_size=4))
    return f"tt.tensor({picks})", len(picks)


def step_gather(b: Builder) -> None:
    x = b.pick(lambda v: v.ndim >= 1 and v.shape[0] > 0)
    if x is None:
        return step_view(b)
    kind = b.choose(["literal", "data", "two", "mask", "column"])
    n = x.shape[0]
    if kind == "data":                                # indices computed from data
        i = b.pick(lambda v: v.dtype == INT)
        if i is not None:
            b.define(f"{x.name}[{i.name} % {n}]", i.shape + x.shape[1:], x.dtype, x.grad)
            return
        kind = "literal"
    if kind == "two" and x.ndim >= 2 and x.shape[1] > 0:
        rows = b.draw(st.lists(st.integers(-n, n - 1), min_size=1, max_size=3))
        cols = b.draw(st.lists(st.integers(0, x.shape[1] - 1), min_size=len(rows), max_size=len(rows)))
        b.define(f"{x.name}[tt.tensor({rows}), tt.tensor({cols})]", (len(rows),) + x.shape[2:], x.dtype, x.grad)
        return
    if kind == "column" and x.ndim >= 2 and x.shape[1] > 0:
        idx, count = _index_tensor(b, x.shape[1])
        b.define(f"{x.name}[:, {idx}]", (x.shape[0], count) + x.shape[2:], x.dtype, x.grad)
        return
    if kind == "mask":                                # data-dependent shape: reduced right away
        m = b.pick(lambda v: v.dtype == BOOL and v.shape in (x.shape, ()))
        cond = m.name if m is not None else f"({x.name} > 0)" if x.dtype != BOOL else x.name
        reduce = ".sum()" if x.dtype != BOOL else ".any()"
        b.define(f"{x.name}[{cond}]{reduce}", (), {BOOL: BOOL, INT: INT}.get(x.dtype, FLOAT), x.grad)
        return
    idx, count = _index_tensor(b, n)
    b.define(f"{x.name}[{idx}]", (count,) + x.shape[1:], x.dtype, x.grad)


def _rhs(b: Builder, target: Var, shape: tuple) -> str:
    """A value to write into `target` (a region of shape `shape`) that its dtype can hold."""
    text, v = b.operand(shape, exact=True, dtypes=(FLOAT, INT, BOOL) if target.dtype == FLOAT else (INT, BOOL))
    if v is not None and v.grad and not target.grad:
        text = f"{text}.detach()"                     # keep requires_grad off inputs and state
    return text


def step_inplace(b: Builder) -> None:
    t = b.pick(lambda v: v.writable and v.dtype in (FLOAT, INT))
    if t is None:
        return step_unary(b)
    kind = b.choose(["method", "augmented", "unary", "setitem", "index_put", "fill"])
    if kind in ("setitem", "index_put") and t.ndim >= 1 and t.shape[0] > 0:
        if kind == "setitem":
            text, shape = _basic_index(b, t.shape)
        else:
            text, count = _index_tensor(b, t.shape[0], unique=True)
            shape = (count,) + t.shape[1:]
        b.lines.append(f"    {t.name}[{text}] {b.choose(['=', '+='])} {_rhs(b, t, shape)}")
    elif kind == "unary" and t.dtype == FLOAT:
        fn = b.choose(["exp_()", "neg_()", "abs_()", "relu_()", "clamp_(min=-1.0)", "sqrt_()", "floor_()",
                       "zero_()", "mul_(0.5)"])
        b.lines.append(f"    {t.name}.{fn}")
    elif kind == "fill":
        b.lines.append(f"    {t.name}.fill_({'0.75' if t.dtype == FLOAT else '2'})")
    elif kind == "augmented" and t.name != "state":       # `state += ...` would make `state` a local
        op = b.choose(["+=", "-=", "*="] + (["/="] if t.dtype == FLOAT else []))
        b.lines.append(f"    {t.name} {op} {_rhs(b, t, t.shape)}")
    else:
        value = _rhs(b, t, t.shape)
        fn = b.choose(["add_", "sub_", "mul_", "copy_"] + (["div_"] if t.dtype == FLOAT else []))
        if fn == "copy_" and not value[:1].isalpha():
            fn = "fill_"                              # a literal
        elif fn == "copy_" and any(v.name == value and v.dtype == NUMBER for v in b.vars):
            fn = "fill_"                              # a Python number
        b.lines.append(f"    {t.name}.{fn}({value})")


def step_matmul(b: Builder) -> None:
    a = b.pick(lambda v: v.dtype == FLOAT and v.ndim >= 1)
    if a is None:
        return step_unary(b)
    k = a.shape[-1]

    def fits(v):
        if v.dtype != FLOAT or v.ndim == 0:
            return False
        if v.ndim == 1:
            return v.shape[0] == k
        return v.shape[-2] == k and (a.ndim <= 2 or v.ndim <= 2 or broadcast(a.shape[:-2], v.shape[:-2]))
    c = b.pick(fits)
    if c is None:
        if a.ndim == 1:
            c, text = a, a.name
        else:
            c = Var(f"{a.name}.mT", a.shape[:-2] + (a.shape[-1], a.shape[-2]), FLOAT, a.grad)
            text = c.name
    else:
        text = c.name
    shape = _matmul_shape(a.shape, c.shape)
    b.define(f"{a.name} @ {text}", shape, FLOAT, a.grad or c.grad)


def _matmul_shape(a: tuple, c: tuple) -> tuple:
    if len(a) == 1 and len(c) == 1:
        return ()
    if len(c) == 1:
        return a[:-1]
    if len(a) == 1:
        return c[:-2] + c[-1:]
    return broadcast(a[:-2], c[:-2]) + (a[-2], c[-1])


def step_cat(b: Builder) -> None:
    x = b.pick(lambda v: v.ndim >= 1)
    if x is None:
        return step_unary(b)
    d = b.choose(range(x.ndim))
    others = [v for v in b.vars if v.shape is not None and v.dtype == x.dtype and v.ndim == x.ndim
              and all(m == n for i, (m, n) in enumerate(zip(v.shape, x.shape)) if i != d)]
    y = b.choose(others)
    if b.flag() or y.shape != x.shape:
        shape = tuple(n + (y.shape[i] if i == d else 0) for i, n in enumerate(x.shape))
        b.define(f"tt.cat([{x.name}, {y.name}], dim={d})", shape, x.dtype, x.grad or y.grad)
    else:
        shape = x.shape[:d] + (2,) + x.shape[d:]
        b.define(f"tt.stack([{x.name}, {y.name}], dim={d})", shape, x.dtype, x.grad or y.grad)


def step_item(b: Builder) -> None:
    """A number read out of a tensor, used later as a Python scalar in tensor math."""
    x = b.pick(lambda v: v.dtype == FLOAT)
    if x is None:
        return step_unary(b)
    b.define(f"{x.name}.sum().item()" if x.numel != 1 else f"{x.name}.reshape(()).item()", None, NUMBER)


def step_branch(b: Builder) -> None:
    """An if/else on a tensor's value; both sides define the same name."""
    c = b.pick(lambda v: v.dtype in (FLOAT, INT, BOOL))
    cond = {
        FLOAT: b.choose([f"{c.name}.sum().item() > 0", f"bool(({c.name} > 0.5).any())", f"{c.name}.sum() > 1"]),
        INT: b.choose([f"{c.name}.sum().item() % 2 == 0", f"bool(({c.name} < 0).all())"]),
        BOOL: b.choose([f"bool({c.name}.any())", f"{c.name}.sum().item() > 1"]),
    }[c.dtype]
    x = b.pick(lambda v: v.dtype == FLOAT)
    if x is None:
        return step_unary(b)
    smooth = [u for u in FLOAT_UNARY if "isnan" not in u]      # both sides must agree on requires_grad
    then, other = b.choose(smooth), b.choose(smooth)
    b.lines.append(f"    if {cond}:")
    mutate = b.flag() and b.flag()
    if mutate:
        b.lines.append("        state.mul_(0.5)")
    v = b.define(then.format(x=x.name), x.shape, FLOAT, x.grad, indent="        ")
    b.lines.append("    else:")
    b.lines.append(f"        {v.name} = {other.format(x=x.name)}")


STEPS = [step_unary, step_binary, step_reduce, step_view, step_where, step_cast, step_gather, step_inplace,
         step_matmul, step_logical, step_cat, step_item, step_branch, step_inplace, step_view, step_gather]


def _finish_with_backward(b: Builder, inputs) -> bool:
    x = b.pick(lambda v: v.dtype == FLOAT and v.grad)
    if x is None:
        return False
    loss = b.choose(["{x}.sum()", "({x} * {x}).sum()", "{x}.mean()", "({x} * 0.5).sum()"])
    b.define(loss.format(x=x.name), (), FLOAT, True)
    wrt = [i.name for i in inputs if i.requires_grad]
    if b.flag():
        b.lines.append(f"    {b.vars[-1].name}.backward()")
    else:
        name = f"g{b.count}"
        b.count += 1
        b.lines.append(f"    {name} = tt.autograd.grad({b.vars[-1].name}, [{', '.join(wrt)}], allow_unused=True, "
                       "materialize_grads=True)")
        b.vars.append(Var(name, None, "grads"))
    return True


# ---------------------------------------------------------------- the strategy
@st.composite
def input_shapes(draw):
    """A base shape; each input takes a suffix of it with some dims set to 1 (so most pairs broadcast)."""
    ndim = draw(st.sampled_from([2, 1, 3, 0]))
    base = [draw(st.sampled_from([3, 2, 4, 1, 5, 17])) for _ in range(ndim)]     # 5, 17: vector tails
    if ndim and draw(st.integers(0, 9)) == 9:         # a zero-size dimension in a few programs
        base[draw(st.integers(0, ndim - 1))] = 0
    return tuple(base)


def _derive(draw, base: tuple) -> tuple:
    k = draw(st.integers(0, len(base)))
    suffix = base[len(base) - k:]
    return tuple(1 if draw(st.integers(0, 3)) == 0 else n for n in suffix)


@st.composite
def programs(draw, max_steps: int = 10):
    base = draw(input_shapes())
    n_inputs = draw(st.integers(1, 3))
    inputs = []
    for k in range(n_inputs):
        shape = base if k == 0 else _derive(draw, base)
        dtype = FLOAT if k == 0 else draw(st.sampled_from([FLOAT, FLOAT, INT, BOOL]))
        grad = dtype == FLOAT and draw(st.booleans())
        inputs.append(Input(f"x{k}", shape, dtype, grad))
    state = Input("state", base, FLOAT)
    b = Builder(draw, [Var(i.name, i.shape, i.dtype, i.requires_grad, not i.requires_grad, i.name)
                       for i in inputs] + [Var("state", base, FLOAT, False, True, "state")])
    for k in range(max_steps):         # "one more step?" before each: the shrinker can delete any step
        if k and not draw(st.integers(0, 5)):
            break
        step = draw(st.sampled_from(STEPS))
        step(b)
    backward = any(i.requires_grad for i in inputs) and draw(st.booleans()) and _finish_with_backward(b, inputs)
    defined = [v.name for v in b.vars if v.name.startswith(("v", "g"))]
    if not defined:
        defined = [b.define(f"{inputs[0].name} + 0", base, FLOAT, inputs[0].requires_grad).name]
    outputs = [defined[-1]]
    extra = draw(st.lists(st.sampled_from(defined), max_size=2, unique=True))
    outputs += [o for o in extra if o not in outputs]
    seed = draw(st.integers(0, 2**32 - 1))
    specials = draw(st.integers(0, 4)) == 4
    return Program(tuple(inputs), state, tuple(b.lines), tuple(outputs), backward, seed, specials)
