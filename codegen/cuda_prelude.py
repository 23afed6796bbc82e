"""The C++ prelude of every generated CUDA module: scalar helpers with numpy semantics and team reductions.

Why helpers instead of plain C operators:
- signed integer overflow is undefined in C++ (nvcc may exploit it) but wraps in numpy and in the LLVM
  renderer: integer add/sub/mul/neg/abs go through unsigned arithmetic (`tt_wrap_*`);
- numpy's floor division and remainder (Python signs, x // 0, INT_MIN // -1) need a few branches;
- float max/min propagate NaN (like numpy and `llvm.maximum`), which `fmaxf` does not;
- random draws (`tt_random_*`) hash in unsigned 64-bit arithmetic, bit for bit like ops/random.py;
- team reductions (a warp, or a whole block) combine per-thread partials with warp shuffles
  (`__shfl_down_sync`) and one shared-memory step across warps; every thread gets the same result.

The online softmax statistics (`tt_softmax_*`) and Welford/Chan moments (`tt_moments_*`) are the
block-parallel forms of the templates' `SoftmaxStats` and `Moments` stages: each thread folds its
elements into a running state, and the team merges the states with the same formulas the CPU
templates use between blocks.

The text must not contain the C preprocessor's include directive: pycuda preprocesses (runs nvcc -E on)
every source that contains it to key its cache, so headers are added only where a program needs them.
"""
from __future__ import annotations

PRELUDE = r"""
// ---- tracetorch CUDA prelude --------------------------------------------------------------
#pragma nv_diag_suppress 177   // unused helpers and variables
#pragma nv_diag_suppress 186   // unsigned comparisons with zero in the integer templates
#define TT_DEVICE __device__ __forceinline__

TT_DEVICE void tt_fail(int* err, int id) { atomicCAS(err, 0, id); }   // the first failed check wins

// Wrapping integer arithmetic (numpy semantics; signed overflow is undefined behaviour in C++).
template <class T> struct tt_unsigned { typedef unsigned int type; };
template <> struct tt_unsigned<long long> { typedef unsigned long long type; };
template <class T> TT_DEVICE T tt_wrap_add(T a, T b) {
    typedef typename tt_unsigned<T>::type U; return (T)((U)a + (U)b); }
template <class T> TT_DEVICE T tt_wrap_sub(T a, T b) {
    typedef typename tt_unsigned<T>::type U; return (T)((U)a - (U)b); }
template <class T> TT_DEVICE T tt_wrap_mul(T a, T b) {
    typedef typename tt_unsigned<T>::type U; return (T)((U)a * (U)b); }
template <class T> TT_DEVICE T tt_wrap_neg(T a) {
    typedef typename tt_unsigned<T>::type U; return (T)((U)0 - (U)a); }
template <class T> TT_DEVICE T tt_wrap_abs(T a) { return a < 0 ? tt_wrap_neg<T>(a) : a; }

// Python-style integer floor division and remainder: x // 0 and x % 0 give 0 (the caller flags them),
// INT_MIN // -1 wraps.
template <class T> TT_DEVICE T tt_floordiv_int(T a, T d) {
    if (d == 0) return 0;
    if ((T)-1 < (T)0 && d == (T)-1) return tt_wrap_neg<T>(a);
    const T q = (T)(a / d), r = (T)(a % d);
    return (r != 0 && ((r < 0) != (d < 0))) ? (T)(q - 1) : q;
}
template <class T> TT_DEVICE T tt_mod_int(T a, T d) {
    if (d == 0 || ((T)-1 < (T)0 && d == (T)-1)) return 0;
    const T r = (T)(a % d);
    return (r != 0 && ((r < 0) != (d < 0))) ? (T)(r + d) : r;
}
// base ** exp by squaring, wrapping; a negative exponent gives 0 (the caller flags it).
template <class T> TT_DEVICE T tt_pow_int(T base, T exp) {
    if ((T)-1 < (T)0 && exp < (T)0) return 0;
    T result = 1;
    while (exp > 0) {
        if (exp & 1) result = tt_wrap_mul<T>(result, base);
        base = tt_wrap_mul<T>(base, base);
        exp = (T)(exp >> 1);
    }
    return result;
}

// Floats: NaN-propagating max/min (+0 above -0), numpy's sign, a sigmoid that neither overflows nor
// loses its tail, and numpy's floor_divide/remainder (npy_divmod).
template <class T> TT_DEVICE T tt_fmax(T a, T b) {
    return a != a ? a : b != b ? b : a > b ? a : b > a ? b : (signbit(a) ? b : a); }
template <class T> TT_DEVICE T tt_fmin(T a, T b) {
    return a != a ? a : b != b ? b : a < b ? a : b < a ? b : (signbit(a) ? a : b); }
template <class T> TT_DEVICE T tt_sign(T x) {
    return x > T(0) ? T(1) : x < T(0) ? T(-1) : x == T(0) ? T(0) : x; }
TT_DEVICE float tt_exp(float x) { return expf(x); }
TT_DEVICE double tt_exp(double x) { return exp(x); }
TT_DEVICE float tt_sigmoid(float x) {
    const float t = expf(-fabsf(x)), r = __fdiv_rn(1.0f, __fadd_rn(t, 1.0f));
    return x < 0.0f ? __fmul_rn(t, r) : r;
}
TT_DEVICE double tt_sigmoid(double x) {
    const double t = exp(-fabs(x)), r = __ddiv_rn(1.0, __dadd_rn(t, 1.0));
    return x < 0.0 ? __dmul_rn(t, r) : r;
}
template <class T> TT_DEVICE void tt_divmod_float(T a, T d, T* floordiv, T* mod) {
    T m = fmod(a, d);
    T div = (a - m) / d;
    if (m != T(0) && ((d < T(0)) != (m < T(0)))) { m = m + d; div = div - T(1); }
    if (m == T(0)) m = copysign(T(0), d);
    T q = floor(div);
    if (div - q > T(0.5)) q = q + T(1);
    if (div == T(0)) q = copysign(T(0), a / d);
    if (d == T(0)) { q = a / d; m = fmod(a, d); }
    *floordiv = q; *mod = m;
}
template <class T> TT_DEVICE T tt_floordiv_float(T a, T d) { T q, m; tt_divmod_float(a, d, &q, &m); return q; }
template <class T> TT_DEVICE T tt_mod_float(T a, T d) { T q, m; tt_divmod_float(a, d, &q, &m); return m; }

// The counter-based generator of ops/random.py (the `random` op, codegen.scalar.random): splitmix64's
// finalizer, the 64-bit word of draw `counter` of stream `seed` (unsigned: wrapping multiplies, logical
// shifts), and floats in [0, 1) made of its top BITS bits times 2^-BITS (exact, as eager draws them).
TT_DEVICE unsigned long long tt_rng_mix64(unsigned long long z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}
TT_DEVICE unsigned long long tt_rng_word(long long counter, long long seed) {
    const unsigned long long golden = 0x9E3779B97F4A7C15ULL;
    const unsigned long long key = tt_rng_mix64((unsigned long long)seed * golden + golden);
    return tt_rng_mix64((unsigned long long)counter * golden + key);
}
template <int BITS> TT_DEVICE float tt_random_float(long long counter, long long seed) {     // BITS <= 24
    return __fmul_rn((float)(int)(tt_rng_word(counter, seed) >> (64 - BITS)), 1.0f / (float)(1 << BITS));
}
TT_DEVICE double tt_random_double(long long counter, long long seed) {
    return __dmul_rn((double)(long long)(tt_rng_word(counter, seed) >> 11), 1.1102230246251565e-16);
}

// Combine functions of reductions (float add/mul unfused: no contraction into FMAs).
TT_DEVICE float tt_add(float a, float b) { return __fadd_rn(a, b); }
TT_DEVICE double tt_add(double a, double b) { return __dadd_rn(a, b); }
template <class T> TT_DEVICE T tt_add(T a, T b) { return tt_wrap_add<T>(a, b); }
TT_DEVICE float tt_mul(float a, float b) { return __fmul_rn(a, b); }
TT_DEVICE double tt_mul(double a, double b) { return __dmul_rn(a, b); }
template <class T> TT_DEVICE T tt_mul(T a, T b) { return tt_wrap_mul<T>(a, b); }
TT_DEVICE float tt_max(float a, float b) { return tt_fmax(a, b); }
TT_DEVICE double tt_max(double a, double b) { return tt_fmax(a, b); }
template <class T> TT_DEVICE T tt_max(T a, T b) { return a > b ? a : b; }
TT_DEVICE float tt_min(float a, float b) { return tt_fmin(a, b); }
TT_DEVICE double tt_min(double a, double b) { return tt_fmin(a, b); }
template <class T> TT_DEVICE T tt_min(T a, T b) { return a < b ? a : b; }
#define TT_COMBINE(name, expr) \
    struct name { template <class T> __device__ __forceinline__ T operator()(T a, T b) const { return expr; } };
TT_COMBINE(tt_op_add, tt_add(a, b))
TT_COMBINE(tt_op_mul, tt_mul(a, b))
TT_COMBINE(tt_op_max, tt_max(a, b))
TT_COMBINE(tt_op_min, tt_min(a, b))
TT_COMBINE(tt_op_and, (T)(a & b))
TT_COMBINE(tt_op_or, (T)(a | b))

// Online softmax statistics: m = max(v), s = sum(exp(v - m)); an all -inf set gives m = -inf, s = 0.
template <class T> struct tt_softmax_state { T m, s; };
template <class T> TT_DEVICE tt_softmax_state<T> tt_softmax_start() {
    tt_softmax_state<T> st; st.m = -INFINITY; st.s = T(0); return st; }
template <class T> TT_DEVICE void tt_softmax_push(tt_softmax_state<T>& st, T v) {
    const T m = tt_fmax(st.m, v);
    const T shift = m == -INFINITY ? T(0) : m;
    st.s = (st.m == m ? st.s : st.s * tt_exp(st.m - m)) + tt_exp(v - shift);
    st.m = m;
}
struct tt_softmax_merge {
    template <class T> __device__ __forceinline__ tt_softmax_state<T> operator()(tt_softmax_state<T> a,
                                                                                tt_softmax_state<T> b) const {
        tt_softmax_state<T> r;
        r.m = tt_fmax(a.m, b.m);
        r.s = (a.m == r.m ? a.s : a.s * tt_exp(a.m - r.m)) + (b.m == r.m ? b.s : b.s * tt_exp(b.m - r.m));
        return r;
    }
};

// Welford's running mean and sum of squared deviations per thread, merged with Chan's formula.
template <class T> struct tt_moments_state { T n, mean, m2; };
template <class T> TT_DEVICE tt_moments_state<T> tt_moments_start() {
    tt_moments_state<T> st; st.n = T(0); st.mean = T(0); st.m2 = T(0); return st; }
template <class T> TT_DEVICE void tt_moments_push(tt_moments_state<T>& st, T v) {
    st.n = st.n + T(1);
    const T d = v - st.mean;
    st.mean = st.mean + d / st.n;
    st.m2 = st.m2 + d * (v - st.mean);
}
struct tt_moments_merge {
    template <class T> __device__ __forceinline__ tt_moments_state<T> operator()(tt_moments_state<T> a,
                                                                                tt_moments_state<T> b) const {
        if (b.n == T(0)) return a;
        if (a.n == T(0)) return b;
        tt_moments_state<T> r;
        r.n = a.n + b.n;
        const T d = b.mean - a.mean;
        r.mean = a.mean + d * (b.n / r.n);
        r.m2 = a.m2 + b.m2 + d * d * (a.n * b.n / r.n);
        return r;
    }
};

// Warp shuffles for every value type a reduction carries (narrow integers and bool go through int).
template <class T> TT_DEVICE T tt_shfl_down(T v, int o) { return (T)__shfl_down_sync(0xffffffffu, (int)v, o); }
TT_DEVICE int tt_shfl_down(int v, int o) { return __shfl_down_sync(0xffffffffu, v, o); }
TT_DEVICE long long tt_shfl_down(long long v, int o) { return __shfl_down_sync(0xffffffffu, v, o); }
TT_DEVICE float tt_shfl_down(float v, int o) { return __shfl_down_sync(0xffffffffu, v, o); }
TT_DEVICE double tt_shfl_down(double v, int o) { return __shfl_down_sync(0xffffffffu, v, o); }
template <class T> TT_DEVICE T tt_shfl(T v, int src) { return (T)__shfl_sync(0xffffffffu, (int)v, src); }
TT_DEVICE int tt_shfl(int v, int src) { return __shfl_sync(0xffffffffu, v, src); }
TT_DEVICE long long tt_shfl(long long v, int src) { return __shfl_sync(0xffffffffu, v, src); }
TT_DEVICE float tt_shfl(float v, int src) { return __shfl_sync(0xffffffffu, v, src); }
TT_DEVICE double tt_shfl(double v, int src) { return __shfl_sync(0xffffffffu, v, src); }
template <class T> TT_DEVICE tt_softmax_state<T> tt_shfl_down(tt_softmax_state<T> v, int o) {
    v.m = tt_shfl_down(v.m, o); v.s = tt_shfl_down(v.s, o); return v; }
template <class T> TT_DEVICE tt_softmax_state<T> tt_shfl(tt_softmax_state<T> v, int src) {
    v.m = tt_shfl(v.m, src); v.s = tt_shfl(v.s, src); return v; }
template <class T> TT_DEVICE tt_moments_state<T> tt_shfl_down(tt_moments_state<T> v, int o) {
    v.n = tt_shfl_down(v.n, o); v.mean = tt_shfl_down(v.mean, o); v.m2 = tt_shfl_down(v.m2, o); return v; }
template <class T> TT_DEVICE tt_moments_state<T> tt_shfl(tt_moments_state<T> v, int src) {
    v.n = tt_shfl(v.n, src); v.mean = tt_shfl(v.mean, src); v.m2 = tt_shfl(v.m2, src); return v; }

// Reduce v over a team of TEAM threads (32: one warp; more: the whole block, which must have TEAM threads).
// Every thread of the team gets the same value. A block team needs `scratch`: 32 values of T in shared
// memory; its __syncthreads() calls also order the team's memory accesses. Call it in uniform control flow.
template <int TEAM, class T, class F> TT_DEVICE T tt_team_reduce(T v, F f, void* scratch) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = f(v, tt_shfl_down(v, o));
    v = tt_shfl(v, 0);
    if (TEAM > 32) {
        T* partial = (T*)scratch;
        __syncthreads();                       // the previous reduction has read its partials
        if ((threadIdx.x & 31) == 0) partial[threadIdx.x >> 5] = v;
        __syncthreads();
        v = partial[0];
        for (int w = 1; w < TEAM / 32; ++w) v = f(v, partial[w]);
    }
    return v;
}
// ---- end of prelude -----------------------------------------------------------------------
"""
