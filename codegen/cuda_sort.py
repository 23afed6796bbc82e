"""A stable device sort of (key, value) pairs, and `randperm` built on it (CUDA backend device steps).

- `MergePassSpec`: one pass of a bottom-up merge sort. Runs of `width` sorted pairs are merged two by two:
  every element finds its place in the merged run by a binary search of the partner run (elements of the
  left run go before equal keys of the right run, so the sort is stable), then writes itself there. One
  flat launch per pass, ceil(log2 n) passes: O(n log^2 n) work, no atomics, the same result every run.
  Keys are int64 words compared as unsigned 64-bit integers.
- `SortPlan`: the ping-pong buffers and passes of one sort (the values of the last pass may land in a
  caller's buffer, e.g. a program output).
- `RandpermKeysSpec`: the n random words of `ops/random.py`'s stream (`random_bits`) as keys and 0..n-1
  as values. Sorted, the values are `argsort(random_bits, kind="stable")`: the CPU's permutation, exactly
  (the words are distinct, so there are no ties to break differently).
"""
from __future__ import annotations

from dataclasses import dataclass

from tracetorch.dtypes import int64

from .cuda_c import FLAT_THREADS, Launch
from .kernel import Buffer
from .rendered import Check


def _flat_kernel(symbol: str, params: list[str], n: int, body: list[str], comment: str) -> str:
    """A grid-stride kernel over `n` elements (index `i`) around `body` lines."""
    return "\n".join([f"// {comment}",
                      f'extern "C" __global__ void __launch_bounds__({FLAT_THREADS}) {symbol}'
                      f'({", ".join(params + ["int* __restrict__ tt_err"])}) {{',
                      f"    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < {n}LL; "
                      "i += (long long)gridDim.x * blockDim.x) {",
                      *("        " + line for line in body), "    }", "}", ""])


@dataclass(frozen=True)
class MergePassSpec:
    """(dst_keys, dst_vals) = (src_keys, src_vals) with each pair of sorted runs of `width` merged."""
    name: str
    src_keys: Buffer
    src_vals: Buffer
    dst_keys: Buffer
    dst_vals: Buffer
    n: int
    width: int

    def __post_init__(self):
        for buf in (self.src_keys, self.src_vals, self.dst_keys, self.dst_vals):
            if buf.dtype is not int64 or buf.size < self.n:
                raise TypeError(f"merge pass {self.name!r}: {buf!r} must be int64 with {self.n} elements")

    @property
    def inputs(self) -> tuple[Buffer, ...]:
        return (self.src_keys, self.src_vals)

    @property
    def outputs(self) -> tuple[Buffer, ...]:
        return (self.dst_keys, self.dst_vals)

    @property
    def cuda_dtypes(self) -> tuple:
        return (int64,)

    def render_cuda(self, symbol: str, checks: list[Check]) -> tuple[str, Launch]:
        n, w = self.n, self.width
        params = ["const long long* __restrict__ sk", "const long long* __restrict__ sv",
                  "long long* __restrict__ dk", "long long* __restrict__ dv"]
        body = [f"const long long run = i / {w}LL, first = run * {w}LL;",
                "const unsigned long long key = (unsigned long long)sk[i];",
                "const bool left = (run & 1LL) == 0;",
                f"const long long other = left ? first + {w}LL : first - {w}LL;",
                f"const long long start = other < {n}LL ? other : {n}LL;",
                f"long long lo = start, hi = other + {w}LL < {n}LL ? other + {w}LL : {n}LL;",
                "while (lo < hi) {                      // left: partner keys < key; right: partner keys <= key",
                "    const long long mid = lo + (hi - lo) / 2;",
                "    const unsigned long long k = (unsigned long long)sk[mid];",
                "    if (left ? k < key : k <= key) lo = mid + 1; else hi = mid;",
                "}",
                f"const long long pos = (left ? first : other) + (i - first) + (lo - start);",
                "dk[pos] = sk[i];",
                "dv[pos] = sv[i];"]
        text = _flat_kernel(symbol, params, n, body, f"merge pass {self.name!r}: runs of {w} of {n} pairs")
        buffers = self.inputs + self.outputs
        return text, Launch(symbol, buffers, FLAT_THREADS, n, FLAT_THREADS, "flat")


def _passes(n: int) -> int:
    """Merge passes that sort n elements (runs of 1, 2, 4, ... until one run holds them all)."""
    return (n - 1).bit_length() if n > 1 else 0


@dataclass(frozen=True)
class SortPlan:
    """The buffers of sorting n (key, value) pairs: fill `keys[0]`, `vals[0]`, run `steps()`, read the
    sorted pairs from `sorted_keys`, `sorted_vals`."""
    name: str
    n: int
    keys: tuple[Buffer, Buffer]
    vals: tuple[Buffer, Buffer]

    @staticmethod
    def make(name: str, n: int, result_vals: Buffer | None = None) -> "SortPlan":
        """Temporaries named after `name`; `result_vals` (int64, n elements) receives the sorted values."""
        keys = tuple(Buffer(f"{name}_keys{j}", int64, (n,)) for j in range(2))
        vals = [Buffer(f"{name}_vals{j}", int64, (n,)) for j in range(2)]
        if result_vals is not None:
            vals[_passes(n) % 2] = result_vals
        return SortPlan(name, n, keys, tuple(vals))

    @property
    def passes(self) -> int:
        return _passes(self.n)

    @property
    def sorted_keys(self) -> Buffer:
        return self.keys[self.passes % 2]

    @property
    def sorted_vals(self) -> Buffer:
        return self.vals[self.passes % 2]

    def steps(self) -> list[MergePassSpec]:
        out = []
        for j in range(self.passes):
            s, d = j % 2, (j + 1) % 2
            out.append(MergePassSpec(f"{self.name}_merge{j}", self.keys[s], self.vals[s], self.keys[d],
                                     self.vals[d], self.n, 1 << j))
        return out


@dataclass(frozen=True)
class RandpermKeysSpec:
    """keys[i] = word i of the stream (seed[seed_at], offset[offset_at]) (`ops/random.py` random_bits),
    vals[i] = i."""
    name: str
    seed: Buffer
    offset: Buffer
    keys: Buffer
    vals: Buffer
    n: int
    seed_at: int = 0
    offset_at: int = 0

    def __post_init__(self):
        for buf, at in ((self.seed, self.seed_at), (self.offset, self.offset_at)):
            if buf.dtype is not int64 or not 0 <= at < buf.size:
                raise TypeError(f"randperm {self.name!r}: generator state {buf!r} must be int64 holding element {at}")
        for buf in (self.keys, self.vals):
            if buf.dtype is not int64 or buf.size < self.n:
                raise TypeError(f"randperm {self.name!r}: {buf!r} must be int64 with {self.n} elements")

    @property
    def inputs(self) -> tuple[Buffer, ...]:
        return tuple(dict.fromkeys((self.seed, self.offset)))

    @property
    def outputs(self) -> tuple[Buffer, ...]:
        return (self.keys, self.vals)

    @property
    def cuda_dtypes(self) -> tuple:
        return (int64,)

    def render_cuda(self, symbol: str, checks: list[Check]) -> tuple[str, Launch]:
        seed = "st_seed" if self.seed is not self.offset else "st_state"
        params = [f"const long long* __restrict__ {seed}"]
        if self.seed is not self.offset:
            params.append("const long long* __restrict__ st_offset")
        offset = "st_offset" if self.seed is not self.offset else "st_state"
        params += ["long long* __restrict__ keys", "long long* __restrict__ vals"]
        body = [f"const unsigned long long base = (unsigned long long){offset}[{self.offset_at}];",
                f"keys[i] = (long long)tt_rng_word((long long)(base + (unsigned long long)i), "
                f"{seed}[{self.seed_at}]);",          # the prelude's generator (ops/random.py)
                "vals[i] = i;"]
        text = _flat_kernel(symbol, params, self.n, body, f"randperm {self.name!r}: {self.n} random keys")
        return text, Launch(symbol, self.inputs + self.outputs, FLAT_THREADS, self.n, FLAT_THREADS, "flat")


def randperm_steps(name: str, seed: Buffer, offset: Buffer, out: Buffer, seed_at: int = 0,
                   offset_at: int = 0) -> list:
    """The device steps of `out = randperm(n)` (n = out.size) drawn from (seed, offset)."""
    n = out.size
    if n == 0:
        return []
    plan = SortPlan.make(name, n, result_vals=out)
    keys = RandpermKeysSpec(f"{name}_keys", seed, offset, plan.keys[0], plan.vals[0], n, seed_at, offset_at)
    return [keys] + plan.steps()


__all__ = ["MergePassSpec", "SortPlan", "RandpermKeysSpec", "randperm_steps"]
