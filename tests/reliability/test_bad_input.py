"""Bad input across the API: each is a clear Python exception naming the op and the shapes involved,
the same compiled (every backend) as eager, and parameters and optimizer state stay untouched.
NaN/inf and zero-size inputs are not errors: compiled gives eager's result.

A bad input either changes a shape, dtype or structure (a guard fails: the call retraces, which runs
eagerly and raises) or only values (out-of-range indices and class labels, a zero divisor): then
the compiled program itself must raise, before it commits anything."""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest

import tracetorch as tt
import tracetorch.jit.backends

nn, F = tt.nn, tt.nn.functional
BACKENDS = sorted(tracetorch.jit.backends.BACKENDS)


def t(*shape, dtype=None, fill=1.0):
    return tt.full(shape, fill, dtype=dtype or tt.float32)


def ints(values):
    return tt.tensor(values, dtype=tt.int64)


EMBEDDING = nn.Embedding(5, 2)
LINEAR = nn.Linear(3, 2)


# eager raises PyTorch's RuntimeError; a compiled kernel may raise ZeroDivisionError
DIVISION_BY_ZERO = (RuntimeError, ZeroDivisionError)


def _out_of_range(dim: int, size: int) -> str:
    """Eager: "index 3 is out of bounds for dimension 0 with size 3"; a compiled kernel may say
    "index into dim 0 of a tensor of shape [3] out of range for a dimension of size 3"."""
    return rf"index.*out of (bounds|range) for (dimension {dim} with|a dimension of) size {size}"


def _setitem(x, i):
    x = x.clone()
    x[i] = 7.0
    return x


# (name, function, good arguments, bad arguments, exception, regex the message must match)
BAD_CALLS = [
    ("broadcast", lambda a, b: a + b, (t(2, 3), t(3)), (t(2, 3), t(4)), RuntimeError,
     r"add\(Tensor\(shape=\(2, 3\).*shape=\(4,\).*size of tensor a \(3\) must match .* b \(4\)"),
    ("matmul shapes", lambda a, b: a @ b, (t(2, 3), t(3, 4)), (t(2, 3), t(4, 2)), RuntimeError,
     r"shapes cannot be multiplied \(2x3 and 4x2\)"),
    ("matmul dtypes", lambda a, b: a @ b, (t(2, 3), t(3, 2)), (t(2, 3), t(3, 2, dtype=tt.int64)), RuntimeError,
     r"same dtype.*float32 != int64"),
    ("linear in_features", lambda x: LINEAR(x), (t(4, 3),), (t(4, 5),), RuntimeError,
     r"shapes cannot be multiplied \(4x5 and 3x2\)"),
    ("reshape", lambda a: a.reshape(4, -1), (t(4, 2),), (t(3, 3),), RuntimeError,
     r"shape '\[4, -1\]' is invalid for input of size 9"),
    ("cat", lambda a, b: tt.cat([a, b]), (t(2, 3), t(1, 3)), (t(2, 3), t(2, 4)), RuntimeError,
     r"cat\(.*Sizes of tensors must match except in dimension 0. Got shapes \[\[2, 3\], \[2, 4\]\]"),
    ("expand", lambda a: a.expand(3, 3), (t(1, 3),), (t(2, 3),), RuntimeError,
     r"expand\(Tensor\(shape=\(2, 3\).*shape=\(3, 3\)"),
    ("dim out of range", lambda a: a.sum(dim=2), (t(2, 3, 4),), (t(2, 3),), IndexError,
     r"sum: Dimension out of range \(expected to be in range of \[-2, 1\], but got 2\)"),
    ("permute rank", lambda a: a.permute(1, 0), (t(2, 3),), (t(2, 3, 4),), RuntimeError,
     r"permute\(\): number of dims don't match: the tensor has 3 dims, got 2"),
    ("mean of integers", lambda a: a.mean(), (t(3),), (t(3, dtype=tt.int64),), RuntimeError,
     r"mean\(\): could not infer output dtype.*int64"),
    ("float index", lambda a, i: a[i], (t(3), ints([0, 2])), (t(3), tt.tensor([0.0, 2.0])), IndexError,
     r"tensors used as indices must be long, int, byte or bool tensors, got float32"),
    ("index out of range", lambda a, i: a[i], (t(3), ints([0, 2])), (t(3), ints([0, 3])), IndexError,
     _out_of_range(0, 3)),
    ("negative index out of range", lambda a, i: a[:, i], (t(2, 3), ints([-3])), (t(2, 3), ints([-4])), IndexError,
     _out_of_range(1, 3)),
    ("index assignment out of range", _setitem, (t(3), ints([1])), (t(3), ints([5])), IndexError,
     _out_of_range(0, 3)),
    ("embedding index", lambda i: EMBEDDING(i), (ints([0, 4]),), (ints([0, 5]),), IndexError,
     _out_of_range(0, 5)),
    ("negative embedding index", lambda i: EMBEDDING(i), (ints([0, 4]),), (ints([0, -1]),), IndexError,
     _out_of_range(0, 5)),
    ("class label too large", lambda x, y: F.cross_entropy(x, y), (t(4, 3), ints([0, 1, 2, 1])),
     (t(4, 3), ints([0, 1, 3, 1])), IndexError, r"cross_entropy: Target 3 is out of bounds"),
    ("negative class label", lambda x, y: F.cross_entropy(x, y), (t(4, 3), ints([0, 1, 2, 1])),
     (t(4, 3), ints([0, -1, 2, 1])), IndexError, r"cross_entropy: Target -1 is out of bounds"),
    ("nll_loss label", lambda x, y: F.nll_loss(x, y), (t(2, 3), ints([0, 2])), (t(2, 3), ints([0, 7])), IndexError,
     r"nll_loss: Target 7 is out of bounds \(expected classes in \[0, 3\)\)"),
    ("one_hot label", lambda y: F.one_hot(y, 3), (ints([0, 2]),), (ints([0, 3]),), IndexError,
     r"one_hot: Target 3 is out of bounds"),
    ("label batch size", lambda x, y: F.cross_entropy(x, y), (t(4, 3), ints([0, 1, 2, 1])),
     (t(4, 3), ints([0, 1])), ValueError, r"Expected input batch_size \(4\) to match target batch_size \(2\)"),
    ("label dtype", lambda x, y: F.cross_entropy(x, y), (t(4, 3), ints([0, 1, 2, 1])),
     (t(4, 3), tt.tensor([0.0, 1.0, 2.0, 1.0])), RuntimeError, r"cross_entropy: .*target.*shape \[4, 3\], got \[4\]"),
    ("loss shapes", lambda a, b: F.binary_cross_entropy_with_logits(a, b), (t(2, 3), t(2, 3)), (t(2, 3), t(3)),
     ValueError, r"Target size \(tracetorch.Size\(\[3\]\)\) must be the same as input size"),
    ("integer division by zero", lambda a, b: a // b, (ints([4, 6]), ints([2, 3])), (ints([4, 6]), ints([2, 0])),
     DIVISION_BY_ZERO, r"(?s)(?=.*floor_divide).*integer division by zero"),
    ("integer remainder by zero", lambda a, b: a % b, (ints([4, 6]), ints([2, 3])), (ints([4, 6]), ints([0, 3])),
     DIVISION_BY_ZERO, r"(?s)(?=.*remainder).*integer division by zero"),
    ("max of an empty dim", lambda a: a.amax(0), (t(2, 3),), (t(0, 3),), IndexError,
     r"amax\(Tensor\(shape=\(0, 3\).*empty dimension 0"),
    ("argmax of empty", lambda a: a.argmax(), (t(2),), (t(0),), IndexError,
     r"argmax\(Tensor\(shape=\(0,\).*empty tensor"),
    *([("cuda without a GPU", lambda a: a.to("cuda"), None, (t(2),), RuntimeError,
        r"CUDA device requested but tracetorch found no usable CUDA device")] if not tt.cuda.is_available() else []),
    ("unknown device", lambda a: a.to(tt.device("tpu")), None, (t(2),), RuntimeError,
     r"Expected one of cpu, cuda device type at start of device string: tpu"),
    ("huge allocation", lambda a: a.expand(a.shape[1], -1).contiguous(), (t(1, 2),), (t(1, 10**7),), MemoryError,
     r"clone\(Tensor\(shape=\(10000000, 10000000\)"),
    ("allocation beyond the address space", lambda a: tt.zeros(2**62) + a, None, (t(1),), MemoryError,
     r"full\(shape=\(4611686018427387904,\)"),
]


@pytest.mark.parametrize("case", BAD_CALLS, ids=[c[0] for c in BAD_CALLS])
def test_eager_errors_name_the_op_and_shapes(case):
    _, fn, _, bad, exc, pattern = case
    with pytest.raises(exc, match=pattern):
        fn(*bad)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", BAD_CALLS, ids=[c[0] for c in BAD_CALLS])
def test_compiled_errors_match_eager_and_keep_the_cache(case, backend):
    """Traced and run compiled on good input, then given the bad input: the same error as eager;
    then good input again runs the cached program with the right result."""
    _, fn, good, bad, exc, pattern = case
    f = tt.compile(fn, backend=backend)
    if good is not None:
        f(*good)
        f(*good)
    with pytest.raises(exc, match=pattern):
        f(*bad)
    if good is not None:
        hits = f.stats()["cache_hits"]
        _assert_same(f(*good), fn(*good))
        assert f.stats()["cache_hits"] == hits + 1


def test_compiled_call_with_bad_index_values_raises_from_the_program():
    """Same shapes, bad values: no retrace; the program raises (and the call still names the op)."""
    for backend in BACKENDS:
        f = tt.compile(lambda a, i: a[i] * 2, backend=backend)
        f(t(3), ints([0, 2]))
        f(t(3), ints([1, 2]))
        with pytest.raises(IndexError, match=_out_of_range(0, 3)):
            f(t(3), ints([3, 0]))
        s = f.stats()
        assert s["traces"] == 1 and s["failed_traces"] == 0, (backend, s)


# ---------------------------------------------------------------- parameters and optimizer state untouched
def _training_step(backend, optimizer):
    tt.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    opt = optimizer(model.parameters())

    @tt.compile(backend=backend)
    def step(x, y):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss

    return model, opt, step


def _snapshot(model, opt) -> dict:
    out = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    for i, state in enumerate(opt.state.values()):
        for k, v in state.items():
            out[f"opt.{i}.{k}"] = v.detach().numpy().copy() if isinstance(v, tt.Tensor) else v
    out["lr"] = [g["lr"] for g in opt.param_groups]
    return out


def _assert_snapshot_equal(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


BAD_BATCHES = [
    ("feature size", lambda x, y: (tt.ones(5, 6), y), RuntimeError, r"5x6 and 4x8"),
    ("label out of range", lambda x, y: (x, ints([0, 1, 3, 1, 0])), IndexError, r"Target 3 is out of bounds"),
    ("negative label", lambda x, y: (x, ints([0, 1, -2, 1, 0])), IndexError, r"Target -2 is out of bounds"),
    ("label count", lambda x, y: (x, ints([0, 1])), ValueError, r"batch_size \(5\) to match target batch_size \(2\)"),
    ("label dtype", lambda x, y: (x, y.float()), RuntimeError, r"cross_entropy"),
    ("input dtype", lambda x, y: (x.long(), y), RuntimeError, r"same dtype"),
    ("huge batch", lambda x, y: (tt.ones(1, 4).expand(10**12, 4), y), MemoryError, r"Unable to allocate|too big"),
    ("argument missing", lambda x, y: (x,), TypeError, r"missing 1 required positional argument: 'y'"),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("optimizer", [lambda p: tt.optim.SGD(p, lr=0.1, momentum=0.9),
                                       lambda p: tt.optim.Adam(p, lr=0.01)], ids=["sgd", "adam"])
def test_bad_batches_leave_parameters_and_optimizer_state_untouched(backend, optimizer):
    model, opt, step = _training_step(backend, optimizer)
    x, y = tt.randn(5, 4), ints([0, 1, 2, 1, 0])
    for _ in range(3):                          # optimizer state created, traced, compiled
        step(x, y)
    assert step.stats()["cache_hits"] >= 1
    before = _snapshot(model, opt)
    for name, make, exc, pattern in BAD_BATCHES:
        with pytest.raises(exc, match=pattern):
            step(*make(x, y))
        _assert_snapshot_equal(before, _snapshot(model, opt))
    # training goes on exactly as eager from the same state (the first call may retrace: a failed
    # call's zero_grad() ran, as it does eagerly, and the program was traced with grads present)
    twin_model, twin_opt, _ = _training_step(backend, optimizer)
    twin_model.load_state_dict(model.state_dict())
    twin_opt.load_state_dict(opt.state_dict())
    for _ in range(2):
        hits = step.stats()["cache_hits"]
        loss = step(x, y)
        twin_opt.zero_grad()
        twin_loss = F.cross_entropy(twin_model(x), y)
        twin_loss.backward()
        twin_opt.step()
        np.testing.assert_allclose(loss.item(), twin_loss.item(), rtol=1e-5)
        for p, q in zip(model.parameters(), twin_model.parameters()):
            np.testing.assert_allclose(p.detach().numpy(), q.detach().numpy(), rtol=1e-5, atol=1e-6)
    assert step.stats()["cache_hits"] == hits + 1


# ---------------------------------------------------------------- calling with another signature
@pytest.mark.parametrize("backend", BACKENDS)
def test_calls_with_another_signature_raise_like_python_and_do_not_poison_the_cache(backend):
    def fn(x, y):
        return x * 2 + y

    f = tt.compile(fn, backend=backend)
    a, b = t(3), t(3, fill=0.5)
    f(a, b)
    f(a, b)
    bad_calls = [((a,), {}, TypeError, r"missing 1 required positional argument: 'y'"),
                 ((a, b, a), {}, TypeError, r"takes 2 positional arguments but 3 were given"),
                 ((a, b), {"z": 1}, TypeError, r"unexpected keyword argument 'z'"),
                 (("text", b), {}, TypeError, r"unsupported operand type"),
                 ((None, b), {}, TypeError, r"unsupported operand type")]
    for _ in range(3):                          # more bad calls than cache_size_limit allows traces
        for args, kwargs, exc, pattern in bad_calls:
            with pytest.raises(exc, match=pattern):
                f(*args, **kwargs)
    np.testing.assert_array_equal(f(y=b, x=a).numpy(), [2.5] * 3)      # keywords: another trace, same result
    np.testing.assert_array_equal(f(a, t(1)).numpy(), [3.0] * 3)        # another shape: another trace
    s = f.stats()
    assert s["failed_traces"] == 3 * len(bad_calls) and not s["eager_since_limit"], s
    hits = s["cache_hits"]
    f(a, b)
    assert f.stats()["cache_hits"] == hits + 1


# ---------------------------------------------------------------- a captured tensor's shape changed
@pytest.mark.parametrize("backend", BACKENDS)
def test_captured_tensor_reshaped_between_calls(backend):
    w = tt.ones(3)

    @tt.compile(backend=backend)
    def f(x):
        return x * w

    np.testing.assert_array_equal(f(t(3, fill=2.0)).numpy(), [2, 2, 2])
    np.testing.assert_array_equal(f(t(3, fill=2.0)).numpy(), [2, 2, 2])
    w.data = tt.full((4,), 3.0)                 # same object, new storage and shape
    with pytest.raises(RuntimeError, match=r"mul\(Tensor\(shape=\(3,\).*shape=\(4,\)"):
        f(t(3))
    np.testing.assert_array_equal(f(t(4)).numpy(), [3] * 4)
    w.data = tt.full((1,), 5.0)                 # broadcasts: a new trace, not the stale program
    np.testing.assert_array_equal(f(t(3)).numpy(), [5] * 3)
    assert "shape/dtype/requires_grad of w" in f.stats()["guard_failures"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_module_parameter_reshaped_between_calls(backend):
    model = nn.Linear(3, 2)
    f = tt.compile(model, backend=backend)
    x = tt.randn(4, 3)
    f(x)
    f(x)
    with tt.no_grad():
        model.weight.data = tt.randn(5, 3)
        model.bias.data = tt.zeros(5)
    out = f(x)
    assert out.shape == (4, 5)
    np.testing.assert_allclose(out.detach().numpy(), (x @ model.weight.T).detach().numpy(), rtol=1e-5, atol=1e-6)
    model.weight.data = tt.randn(5, 7)
    with pytest.raises(RuntimeError, match=r"4x3 and 7x5"):
        f(x)


# ---------------------------------------------------------------- load_state_dict
def test_module_load_state_dict_with_wrong_keys_or_shapes_changes_nothing():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    good = {k: v.clone() for k, v in model.state_dict().items()}
    zeros = {k: tt.zeros_like(v) for k, v in good.items()}
    cases = [({k: v for k, v in zeros.items() if k != "2.bias"}, r'Missing key\(s\) in state_dict: "2.bias"'),
             ({**zeros, "2.extra": tt.ones(1)}, r'Unexpected key\(s\) in state_dict: "2.extra"'),
             ({**zeros, "2.bias": tt.ones(3)}, r"size mismatch for 2.bias: copying a param with shape "
                                                r"tracetorch.Size\(\[3\]\) from checkpoint, the shape in current "
                                                r"model is tracetorch.Size\(\[2\]\)"),
             ({**zeros, "0.weight": [[0.0] * 3] * 4}, r'"0.weight", expected Tensor')]
    for bad, pattern in cases:
        with pytest.raises(RuntimeError, match=pattern):
            model.load_state_dict(bad)
        for k, v in model.state_dict().items():     # all or nothing: the zeros were not copied either
            np.testing.assert_array_equal(v.numpy(), good[k].numpy(), err_msg=k)
    result = model.load_state_dict({k: v for k, v in zeros.items() if k != "2.bias"}, strict=False)
    assert result.missing_keys == ["2.bias"] and float(model[0].weight.abs().sum()) == 0


def test_optimizer_load_state_dict_with_wrong_groups_or_shapes_changes_nothing():
    model = nn.Linear(3, 2)
    opt = tt.optim.Adam(model.parameters(), lr=0.1)
    model(tt.ones(2, 3)).sum().backward()
    opt.step()
    saved = opt.state_dict()
    before = _snapshot(model, opt)
    short = copy.deepcopy(saved)
    short["param_groups"][0]["params"] = short["param_groups"][0]["params"][:1]
    wrong_shape = copy.deepcopy(saved)
    wrong_shape["state"][0]["exp_avg"] = tt.ones(7)
    wrong_shape["param_groups"][0]["lr"] = 5.0
    no_groups = copy.deepcopy(saved)
    no_groups["param_groups"] = []
    for bad, pattern in [(short, "doesn't match the size of optimizer's group"),
                         (wrong_shape, r"state 'exp_avg' of shape \[7\] for parameter 0 of shape \[2, 3\]"),
                         (no_groups, "different number of parameter groups")]:
        with pytest.raises(ValueError, match=pattern):
            opt.load_state_dict(bad)
        _assert_snapshot_equal(before, _snapshot(model, opt))


# ---------------------------------------------------------------- NaN / inf and zero-size inputs
SPECIAL = np.array([[np.nan, 1.0, -np.inf, 0.5], [np.inf, -2.0, 0.0, np.nan], [0.25, -0.0, 3.0, -1.0]])

SPECIAL_FUNCTIONS = {
    "relu": lambda x: x.relu(), "exp/log": lambda x: x.exp() + x.abs().log(),
    "sigmoid/tanh": lambda x: x.sigmoid() * x.tanh(),
    "softmax": lambda x: tt.softmax(x, dim=1), "log_softmax": lambda x: tt.log_softmax(x, dim=0),
    "amax": lambda x: x.amax(1), "max values and indices": lambda x: tuple(x.max(dim=0)),
    "argmax": lambda x: x.argmax(1), "argmin": lambda x: x.argmin(0), "min": lambda x: x.min(),
    "sum/mean": lambda x: (x.sum(0), x.mean(1)), "var": lambda x: x.var(1), "logsumexp": lambda x: x.logsumexp(1),
    "clamp": lambda x: x.clamp(-1.0, 1.0), "maximum/minimum": lambda x: tt.maximum(x, 0.5) - tt.minimum(x, 0.0),
    "comparisons": lambda x: ((x > 0), (x == x), (x != 1.0), x.isnan(), x.isfinite()),
    "where": lambda x: tt.where(x > 0, x, -x), "sign/floor/round": lambda x: x.sign() + x.floor() + x.round(),
    "matmul": lambda x: x @ x.T, "cumsum": lambda x: x.cumsum(1), "norm": lambda x: x.norm(dim=1),
    "cross_entropy": lambda x: F.cross_entropy(x, ints([0, 3, 1])), "mse": lambda x: F.mse_loss(x, x.flip(0)),
    "division": lambda x: (x / x, 1.0 / x, x // 2.0, x % 1.5), "pow": lambda x: (x ** 2, x ** 0.5, 2.0 ** x),
    "nan_to_num style": lambda x: tt.where(x.isfinite(), x, tt.zeros_like(x)).sum(),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", sorted(SPECIAL_FUNCTIONS))
def test_nan_and_inf_inputs_give_eager_results(name, backend):
    fn = SPECIAL_FUNCTIONS[name]
    f = tt.compile(fn, backend=backend)
    x = tt.tensor(SPECIAL, dtype=tt.float64)
    with np.errstate(all="ignore"):
        f(tt.tensor(SPECIAL[::-1].copy(), dtype=tt.float64))                # traced on other values
        _assert_same(f(x), fn(x))
    assert f.stats()["cache_hits"] == 1


ZERO_SIZE_FUNCTIONS = {
    "sum/mean/prod": (lambda x: (x.sum(), x.sum(0), x.mean(1), x.prod(1)), (0, 3)),
    "amax over a non-empty dim": (lambda x: x.amax(1), (0, 3)),
    "elementwise": (lambda x: (x.exp() * 2 + 1).relu(), (2, 0)),
    "matmul with empty inner dim": (lambda x: x @ tt.ones(0, 3, dtype=tt.float64), (2, 0)),
    "matmul with empty rows": (lambda x: x @ tt.ones(3, 2, dtype=tt.float64), (0, 3)),
    "cat with empty": (lambda x: tt.cat([x, tt.ones(1, 3, dtype=tt.float64)]), (0, 3)),
    "reshape/permute/expand": (lambda x: (x.reshape(3, 0), x.permute(1, 0), x[None].expand(2, 0, 3)), (0, 3)),
    "softmax": (lambda x: tt.softmax(x, dim=1), (0, 3)),
    "index with an empty index": (lambda x: x[ints([])], (4,)),
    "all-false mask": (lambda x: x[x > 100].sum(), (4,)),
    "slice to empty": (lambda x: x[2:2] + 1, (4,)),
    "cross_entropy of an empty batch": (lambda x: F.cross_entropy(x, ints([])), (0, 3)),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", sorted(ZERO_SIZE_FUNCTIONS))
def test_zero_size_inputs_give_eager_results(name, backend):
    fn, shape = ZERO_SIZE_FUNCTIONS[name]
    f = tt.compile(fn, backend=backend)
    x = tt.zeros(shape, dtype=tt.float64)
    with np.errstate(all="ignore"):
        f(x)
        _assert_same(f(x), fn(x))
    assert f.stats()["cache_hits"] == 1


def _assert_same(got, want):
    """Compiled vs eager: the same structure, shapes and dtypes; floats to 1e-9 relative (float32:
    1e-5) with NaN where eager has NaN and the same infinities; everything else exactly."""
    if isinstance(want, (tuple, list)):
        assert isinstance(got, (tuple, list)) and len(got) == len(want)
        for g, w in zip(got, want):
            _assert_same(g, w)
        return
    if not isinstance(want, tt.Tensor):
        assert got == want or (math.isnan(got) and math.isnan(want))
        return
    assert got.shape == want.shape and got.dtype is want.dtype, (got, want)
    g, w = got.detach().numpy(), want.detach().numpy()
    if w.dtype.kind == "f":
        rtol, atol = (1e-9, 1e-12) if w.dtype == np.float64 else (1e-5, 1e-6)
        np.testing.assert_allclose(g, w, rtol=rtol, atol=atol, equal_nan=True)
        np.testing.assert_array_equal(np.isinf(g), np.isinf(w))
    else:
        np.testing.assert_array_equal(g, w)
