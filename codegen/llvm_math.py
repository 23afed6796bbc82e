"""Transcendental functions for generated LLVM IR.

Calls to libm (`expf`, `tanhf`) inside a loop stop the loop vectorizer, and
LLVM's `llvm.exp.*` intrinsics vectorize only with a vector math library.
So float32 functions are written here as plain IR (range reduction plus a
polynomial, Cephes-style coefficients), defined once per module as internal
`alwaysinline` functions: inlined into a loop, they vectorize like any other
arithmetic. Accuracy: within a few ulp of float32 over the whole range,
including inf, NaN, zeros and denormals (tests/codegen measure it).
sin/cos reduce the argument exactly for every float32 (a Payne-Hanek style
table of 2/pi with exact float64 products) and evaluate the polynomial in
float64.

float64 uses libm (`exp`, `log`, `tanh`, ...): full precision, not vectorized.
"""
from __future__ import annotations

from decimal import Decimal, getcontext

from llvmlite import ir

F32, F64, I1, I32, I64 = ir.FloatType(), ir.DoubleType(), ir.IntType(1), ir.IntType(32), ir.IntType(64)

UNARY = ("exp", "log", "log1p", "expm1", "tanh", "sigmoid", "sin", "cos")
LIBM_F64 = {"exp": "exp", "log": "log", "log1p": "log1p", "expm1": "expm1", "tanh": "tanh", "sin": "sin",
            "cos": "cos"}


def type_suffix(ty: ir.Type) -> str:
    if isinstance(ty, ir.FloatType):
        return "f32"
    if isinstance(ty, ir.DoubleType):
        return "f64"
    if isinstance(ty, ir.HalfType):
        return "f16"
    if isinstance(ty, ir.IntType):
        return f"i{ty.width}"
    raise TypeError(f"no intrinsic suffix for {ty}")


def intrinsic(module: ir.Module, name: str, ret: ir.Type, args: list) -> ir.Function:
    """Declare (once) and return an LLVM intrinsic or external function.

    libm functions are declared `readnone nounwind`: generated code never reads errno, and without
    these attributes LLVM must assume every call may write it, so a call whose arguments do not change
    in a loop (pow of a scalar bias correction in Adam's update) would run once per element instead of
    being hoisted out of the loop."""
    fn = module.globals.get(name)
    if fn is None:
        fn = ir.Function(module, ir.FunctionType(ret, args), name=name)
        if not name.startswith("llvm."):
            fn.attributes.add("readnone")
            fn.attributes.add("nounwind")
    return fn


def call_intrinsic(builder: ir.IRBuilder, base: str, *args: ir.Value) -> ir.Value:
    """builder.call(llvm.<base>.<type of args[0]>(args...)) returning args[0]'s type."""
    ty = args[0].type
    fn = intrinsic(builder.module, f"llvm.{base}.{type_suffix(ty)}", ty, [a.type for a in args])
    return builder.call(fn, list(args))


def unary(builder: ir.IRBuilder, name: str, x: ir.Value) -> ir.Value:
    """name(x) for a float or double value: an inlined polynomial (float) or libm (double)."""
    module = builder.module
    if isinstance(x.type, ir.DoubleType):
        if name == "sigmoid":
            fn = _define(module, "tt.sigmoid.f64", F64, _sigmoid)
        else:
            fn = intrinsic(module, LIBM_F64[name], F64, [F64])
        return builder.call(fn, [x])
    if not isinstance(x.type, ir.FloatType):
        raise TypeError(f"{name}: expected float or double, got {x.type}")
    return builder.call(_define(module, f"tt.{name}.f32", F32, _FLOAT32[name]), [x])


def power(builder: ir.IRBuilder, x: ir.Value, y: ir.Value) -> ir.Value:
    """libm pow/powf: exact special cases (pow(x, 0) = 1, NaN rules) and full accuracy."""
    ty = x.type
    fn = intrinsic(builder.module, "pow" if isinstance(ty, ir.DoubleType) else "powf", ty, [ty, ty])
    return builder.call(fn, [x, y])


def _define(module: ir.Module, name: str, ty: ir.Type, body) -> ir.Function:
    fn = module.globals.get(name)
    if fn is not None:
        return fn
    fn = ir.Function(module, ir.FunctionType(ty, [ty]), name=name)
    fn.linkage = "internal"
    fn.attributes.add("alwaysinline")
    fn.attributes.add("nounwind")
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    b.ret(body(_Float(b, ty), fn.args[0]))
    return fn


class _Float:
    """Terse float arithmetic on one builder, so the algorithms below read like C."""

    def __init__(self, b: ir.IRBuilder, ty: ir.Type):
        self.b, self.ty = b, ty
        self.int = I32 if isinstance(ty, ir.FloatType) else I64

    def c(self, v: float) -> ir.Constant:
        return ir.Constant(self.ty, v)

    def i(self, v: int) -> ir.Constant:
        return ir.Constant(self.int, v)

    def _v(self, v):
        return self.c(v) if isinstance(v, (int, float)) else v

    def add(self, a, b):
        return self.b.fadd(self._v(a), self._v(b))

    def sub(self, a, b):
        return self.b.fsub(self._v(a), self._v(b))

    def mul(self, a, b):
        return self.b.fmul(self._v(a), self._v(b))

    def div(self, a, b):
        return self.b.fdiv(self._v(a), self._v(b))

    def fma(self, a, b, c):
        """a*b + c, fused where the target has FMA."""
        return call_intrinsic(self.b, "fmuladd", self._v(a), self._v(b), self._v(c))

    def poly(self, x, coeffs):
        """Horner: coeffs[0]*x^(n-1) + ... + coeffs[-1]."""
        acc = self.c(coeffs[0])
        for k in coeffs[1:]:
            acc = self.fma(acc, x, k)
        return acc

    def cmp(self, op, a, b):
        return self.b.fcmp_ordered(op, self._v(a), self._v(b))

    def isnan(self, a):
        return self.b.fcmp_unordered("uno", a, a)

    def select(self, cond, a, b):
        return self.b.select(cond, self._v(a), self._v(b))

    def rint(self, a):
        return call_intrinsic(self.b, "rint", a)

    def floor(self, a):
        return call_intrinsic(self.b, "floor", a)

    def abs(self, a):
        return call_intrinsic(self.b, "fabs", a)

    def copysign(self, a, b):
        return call_intrinsic(self.b, "copysign", self._v(a), b)

    def bits(self, a):
        return self.b.bitcast(a, self.int)

    def from_bits(self, a):
        return self.b.bitcast(a, self.ty)


INF, NAN = float("inf"), float("nan")


# ---------------------------------------------------------------- float32 algorithms
def _exp(f: _Float, x, nonnegative: bool = False):
    """e^x. With `nonnegative` (x >= 0 or NaN, as inside tanh) the clamp below and the two-step
    scaling for denormal results are left out."""
    # Clamp (NaN passes through the selects): below -104 the result rounds to 0, above 89 it overflows.
    # Lanes below -104 compute exp(0) and are zeroed at the end: scaling them down to 0 would go through
    # denormal products, which cost a microcode assist per element (masked softmax rows are half -inf).
    underflow = None if nonnegative else f.cmp("<", x, -104.0)
    xc = x if nonnegative else f.select(underflow, 0.0, x)
    xc = f.select(f.cmp(">", xc, 89.0), 89.0, xc)
    # n = rint(x / ln 2) with the 1.5 * 2^23 trick: the integer lands in the low mantissa bits, so no
    # float-to-int conversion (which would be poison for NaN) is needed.
    t = f.fma(xc, 1.44269504088896341, 12582912.0)
    n = f.sub(t, 12582912.0)
    ni = f.b.sub(f.bits(t), f.i(0x4B400000))
    r = f.sub(f.sub(xc, f.mul(n, 0.693359375)), f.mul(n, -2.12194440e-4))
    p = f.poly(r, [1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1,
                   5.0000001201e-1])
    y = f.add(f.fma(p, f.mul(r, r), r), 1.0)
    if nonnegative:      # n in [0, 129]: 2^128 and above is the bit pattern of inf, the right overflow
        return f.mul(y, f.from_bits(f.b.shl(f.b.add(ni, f.i(127)), f.i(23))))
    # y * 2^n in two steps, so that n in [-150, 129] never leaves the exponent range of each factor
    n1 = f.b.ashr(ni, ir.Constant(I32, 1))
    n2 = f.b.sub(ni, n1)
    s1 = f.from_bits(f.b.shl(f.b.add(n1, f.i(127)), f.i(23)))
    s2 = f.from_bits(f.b.shl(f.b.add(n2, f.i(127)), f.i(23)))
    return f.select(underflow, 0.0, f.mul(f.mul(y, s1), s2))


def _log(f: _Float, x):
    small = f.cmp("<", x, 1.17549435e-38)                # denormals: scale into the normal range
    xs = f.select(small, f.mul(x, 8388608.0), x)
    bits = f.bits(xs)
    e = f.b.sub(f.b.and_(f.b.lshr(bits, f.i(23)), f.i(0xFF)), f.i(126))
    e = f.b.sub(e, f.b.select(small, f.i(23), f.i(0)))
    m = f.from_bits(f.b.or_(f.b.and_(bits, f.i(0x807FFFFF)), f.i(0x3F000000)))  # [0.5, 1)
    low = f.cmp("<", m, 0.707106781186547524)
    e = f.b.sub(e, f.b.zext(low, I32))
    m = f.sub(f.select(low, f.add(m, m), m), 1.0)
    fe = f.b.sitofp(e, f.ty)
    z = f.mul(m, m)
    y = f.mul(f.mul(f.poly(m, [7.0376836292e-2, -1.1514610310e-1, 1.1676998740e-1, -1.2420140846e-1,
                                1.4249322787e-1, -1.6668057665e-1, 2.0000714765e-1, -2.4999993993e-1,
                                3.3333331174e-1]), m), z)
    y = f.fma(fe, -2.12194440e-4, y)
    y = f.fma(z, -0.5, y)
    r = f.fma(fe, 0.693359375, f.add(m, y))
    r = f.select(f.cmp("==", x, INF), INF, r)
    r = f.select(f.cmp("==", x, 0.0), -INF, r)
    invalid = f.b.or_(f.cmp("<", x, 0.0), f.isnan(x))
    return f.select(invalid, NAN, r)


def _call(f: _Float, name: str, x):
    return f.b.call(_define(f.b.module, f"tt.{name}.f32", f.ty, _FLOAT32[name]), [x])


def _log1p(f: _Float, x):
    u = f.add(x, 1.0)
    d = f.sub(u, 1.0)
    r = f.mul(_call(f, "log", u), f.div(x, d))        # log(u) * x / (u - 1): corrects u's rounding
    r = f.select(f.cmp("==", d, 0.0), x, r)
    return f.select(f.cmp("==", x, INF), INF, r)


def _expm1(f: _Float, x):
    u = _call(f, "exp", x)
    um1 = f.sub(u, 1.0)
    r = f.mul(um1, f.div(x, _call(f, "log", u)))      # Kahan: (u - 1) * x / log(u)
    r = f.select(f.cmp("==", u, 1.0), x, r)
    r = f.select(f.cmp("==", um1, -1.0), -1.0, r)
    return f.select(f.cmp("==", u, INF), INF, r)


def _tanh(f: _Float, x):
    a = f.abs(x)
    z = f.mul(x, x)
    small = f.fma(f.mul(f.poly(z, [-5.70498872745e-3, 2.06390887954e-2, -5.37397155531e-2, 1.33314422036e-1,
                                   -3.33332819422e-1]), z), x, x)
    e = _exp(f, f.mul(a, 2.0), nonnegative=True)
    large = f.copysign(f.sub(1.0, f.div(2.0, f.add(e, 1.0))), x)
    return f.select(f.cmp("<", a, 0.625), small, large)


def _sigmoid(f: _Float, x):
    """1 / (1 + exp(-x)) for x >= 0, exp(x) / (1 + exp(x)) below: no overflow, no lost tail."""
    b = f.b
    neg_abs = b.fneg(f.abs(x))
    if isinstance(f.ty, ir.DoubleType):
        t = b.call(intrinsic(b.module, "exp", F64, [F64]), [neg_abs])
    else:
        t = _call(f, "exp", neg_abs)
    r = f.div(1.0, f.add(t, 1.0))
    return f.select(f.cmp("<", x, 0.0), f.mul(t, r), r)


PI = Decimal("3.14159265358979323846264338327950288419716939937510"
              "58209749445923078164062862089986280348253421170679")
CHUNKS = 8   # 24-bit chunks of 2/pi: enough for every float32 exponent (k0 <= 4, 4 chunks from k0)


def _two_over_pi_chunks() -> list[float]:
    """Bits 24k+1 .. 24k+24 after the binary point of 2/pi, as exact doubles (k = 0 .. CHUNKS-1)."""
    getcontext().prec = 100
    bits = int(Decimal(2) / PI * (Decimal(2) ** (24 * CHUNKS)))
    return [float((bits >> (24 * (CHUNKS - 1 - k))) & 0xFFFFFF) for k in range(CHUNKS)]


def _chunk_table(module: ir.Module) -> ir.GlobalVariable:
    name = "tt.two_over_pi"
    table = module.globals.get(name)
    if table is None:
        ty = ir.ArrayType(F64, CHUNKS)
        table = ir.GlobalVariable(module, ty, name=name)
        table.initializer = ir.Constant(ty, _two_over_pi_chunks())
        table.global_constant = True
        table.linkage = "internal"
    return table


def _sincos(f: _Float, x, want_sin: bool):
    """sin/cos of float32 with an exact argument reduction for every finite x (Payne-Hanek style).

    |x| = M * 2^e with a 24-bit integer M. x * 2/pi mod 4 is a sum of M * (24-bit chunk of 2/pi)
    scaled by powers of two: each product is exact in float64. Chunks whose product is a multiple
    of 4 are skipped (k0 depends on e); the next two products are reduced mod 4 exactly, and four
    chunks from k0 leave an error below 2^-47 quarter turns.
    """
    b = f.b
    d = _Float(b, F64)
    i32 = lambda v: ir.Constant(I32, v)
    bits = b.and_(f.bits(x), i32(0x7FFFFFFF))
    biased = b.lshr(bits, i32(23))
    denormal = b.icmp_unsigned("==", biased, i32(0))
    mant = b.and_(bits, i32(0x7FFFFF))
    m = b.select(denormal, mant, b.or_(mant, i32(0x800000)))
    e = b.sub(b.select(denormal, i32(1), biased), i32(150))                  # |x| = m * 2^e
    k0 = b.select(b.icmp_signed("<", e, i32(2)), i32(0), b.sdiv(b.sub(e, i32(2)), i32(24)))
    md = b.sitofp(m, F64)
    table = _chunk_table(b.module)
    terms = []
    for i in range(4):
        k = b.add(k0, i32(i))
        chunk = b.load(b.gep(table, [ir.Constant(I32, 0), k], inbounds=True, source_etype=table.value_type),
                       typ=F64)
        shift = b.sub(e, b.mul(b.add(k, i32(1)), i32(24)))                   # in [-245, 1]: a normal double
        scale = b.bitcast(b.shl(b.zext(b.add(shift, i32(1023)), I64), ir.Constant(I64, 52)), F64)
        terms.append(d.mul(d.mul(md, chunk), scale))
    mod4 = lambda t: d.sub(t, d.mul(d.floor(d.mul(t, 0.25)), 4.0))         # exact
    head = mod4(d.add(mod4(terms[0]), mod4(terms[1])))   # the sum has <= 49 significant bits: exact
    j = d.rint(d.add(head, terms[2]))
    frac = d.add(d.add(d.sub(head, j), terms[2]), terms[3])                 # about [-0.5, 0.5]
    r = d.mul(frac, 1.5707963267948966)
    q = b.and_(b.call(intrinsic(b.module, "llvm.fptosi.sat.i32.f64", I32, [F64]), [j]), i32(3))
    r2 = d.mul(r, r)
    s = d.fma(d.mul(r, r2), d.poly(r2, [1 / 362880, -1 / 5040, 1 / 120, -1 / 6]), r)
    c = d.fma(r2, d.poly(r2, [-1 / 3628800, 1 / 40320, -1 / 720, 1 / 24, -1 / 2]), 1.0)
    odd = b.icmp_unsigned("!=", b.and_(q, i32(1)), i32(0))
    if want_sin:
        v, flip = b.select(odd, c, s), b.and_(q, i32(2))
    else:
        v, flip = b.select(odd, s, c), b.and_(b.add(q, i32(1)), i32(2))
    v = b.select(b.icmp_unsigned("!=", flip, i32(0)), b.fneg(v), v)
    out = b.fptrunc(v, F32)
    if want_sin:
        negative = b.icmp_signed("<", f.bits(x), i32(0))                     # sin(-x) = -sin(x), also for -0
        out = b.select(negative, b.fneg(out), out)
    return f.select(b.icmp_unsigned(">=", biased, i32(255)), NAN, out)


_FLOAT32 = {
    "exp": _exp, "log": _log, "log1p": _log1p, "expm1": _expm1, "tanh": _tanh, "sigmoid": _sigmoid,
    "sin": lambda f, x: _sincos(f, x, True), "cos": lambda f, x: _sincos(f, x, False),
}
