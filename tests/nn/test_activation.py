import math

import numpy as np
import pytest

import tracetorch as tt
import tracetorch.nn.functional as F
from tracetorch import nn

from gradcheck import gradcheck

_erf = np.vectorize(math.erf)
_erfc = np.vectorize(math.erfc)


def _np_sigmoid(x):
    return 1 / (1 + np.exp(-x))


def _np_softmax(x, dim):
    e = np.exp(x - x.max(dim, keepdims=True))
    return e / e.sum(dim, keepdims=True)


REFERENCES = {
    "relu": (nn.ReLU(), lambda x: np.maximum(x, 0)),
    "leaky_relu": (nn.LeakyReLU(0.2), lambda x: np.where(x > 0, x, 0.2 * x)),
    "gelu": (nn.GELU(), lambda x: 0.5 * x * (1 + _erf(x / math.sqrt(2)))),
    "gelu_tanh": (nn.GELU("tanh"),
                  lambda x: 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))),
    "silu": (nn.SiLU(), lambda x: x * _np_sigmoid(x)),
    "tanh": (nn.Tanh(), np.tanh),
    "sigmoid": (nn.Sigmoid(), _np_sigmoid),
    "softmax": (nn.Softmax(dim=1), lambda x: _np_softmax(x, 1)),
    "log_softmax": (nn.LogSoftmax(dim=0), lambda x: np.log(_np_softmax(x, 0))),
}


@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_activation_forward_matches_numpy(name):
    module, ref = REFERENCES[name]
    x = np.random.default_rng(0).standard_normal((4, 7)) * 3
    np.testing.assert_allclose(module(tt.tensor(x)).numpy(), ref(x), rtol=1e-12, atol=1e-14)
    out32 = module(tt.tensor(x, dtype=tt.float32))
    assert out32.dtype is tt.float32
    np.testing.assert_allclose(out32.numpy(), ref(x), rtol=2e-6, atol=2e-6)


@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_activation_gradients(name):
    module, _ = REFERENCES[name]
    x = np.random.default_rng(1).standard_normal((3, 4)) * 2
    x[np.abs(x) < 1e-3] = 0.5       # keep finite differences away from relu's kink
    gradcheck(module, [x])


def test_gelu_exact_over_a_wide_range():
    x = np.linspace(-40, 40, 4001)
    want = 0.5 * x * _erfc(-x / math.sqrt(2))       # erfc: no cancellation in the negative tail
    np.testing.assert_allclose(F.gelu(tt.tensor(x)).numpy(), want, rtol=1e-12, atol=1e-300)
    tail = np.array([-5.0, -8.0, -12.0])
    want_tail = 0.5 * tail * _erfc(-tail / math.sqrt(2))
    np.testing.assert_allclose(F.gelu(tt.tensor(tail)).numpy(), want_tail, rtol=1e-12)
    np.testing.assert_allclose(F.gelu(tt.tensor(tail, dtype=tt.float32)).numpy(), want_tail, rtol=1e-5)
    with pytest.raises(RuntimeError, match="approximate"):
        F.gelu(tt.zeros(1), approximate="fast")


def test_gelu_gradient_matches_the_analytic_derivative():
    x = np.linspace(-6, 6, 101)
    t = tt.tensor(x, requires_grad=True)
    F.gelu(t).sum().backward()
    cdf = 0.5 * (1 + _erf(x / math.sqrt(2)))
    pdf = np.exp(-x * x / 2) / math.sqrt(2 * math.pi)
    np.testing.assert_allclose(t.grad.numpy(), cdf + x * pdf, rtol=1e-11, atol=1e-14)


def test_relu_inplace_and_reprs():
    x = tt.tensor([-1.0, 2.0])
    out = nn.ReLU(inplace=True)(x)
    assert out is x and x.tolist() == [0.0, 2.0]
    assert repr(nn.ReLU(inplace=True)) == "ReLU(inplace=True)"
    assert repr(nn.GELU()) == "GELU(approximate='none')"
    assert repr(nn.Softmax(dim=-1)) == "Softmax(dim=-1)"
    assert repr(nn.Tanh()) == "Tanh()"


def test_softmax_without_dim_uses_the_legacy_rule():
    x = tt.randn(2, 3)
    with pytest.warns(UserWarning, match="Implicit dimension"):
        out = F.softmax(x)
    np.testing.assert_allclose(out.numpy(), _np_softmax(x.numpy(), 1), rtol=1e-6)
    with pytest.warns(UserWarning):
        out3 = nn.Softmax()(tt.randn(2, 3, 4))
    np.testing.assert_allclose(out3.numpy().sum(0), np.ones((3, 4)), rtol=1e-6)


def test_logsigmoid_is_stable():
    x = np.array([-800.0, -20.0, 0.0, 20.0, 800.0])
    want = -np.logaddexp(0, -x)
    np.testing.assert_allclose(F.logsigmoid(tt.tensor(x)).numpy(), want, rtol=1e-12)
    t = tt.tensor(x, requires_grad=True)
    F.logsigmoid(t).sum().backward()
    want = np.exp(-np.logaddexp(0, x))         # 1 - sigmoid(x) = sigmoid(-x), without cancellation
    np.testing.assert_allclose(t.grad.numpy(), want, rtol=1e-12, atol=1e-300)


@pytest.mark.parametrize("dtype", [tt.float32, tt.float64])
def test_eager_erfc_without_a_graph_is_the_recorded_series_to_the_bit(dtype):
    # with nothing to record (GELU's forward, a backward without create_graph) erfc runs on arrays,
    # block by block with reused buffers: the same operations as the recorded composite, so the same bits
    from tracetorch.nn.functional import _ERFC_BLOCK, _erfc as tt_erfc
    rng = np.random.default_rng(3)
    x = (rng.standard_normal(2 * _ERFC_BLOCK + 77) * 4).astype(dtype.np)
    x[:7] = [0.0, -0.0, np.inf, -np.inf, np.nan, 30.0, -30.0]
    strided = x.reshape(-1, 1)[::2]                              # several blocks, and a non-contiguous view
    for arr in (x, strided, x[:50]):
        fast = tt_erfc(tt.tensor(arr))
        recorded = tt_erfc(tt.tensor(arr, requires_grad=True))   # the composite, with a graph
        assert recorded.grad_fn is not None and fast.grad_fn is None and fast.shape == recorded.shape
        np.testing.assert_array_equal(fast.numpy().view(np.uint8), recorded.detach().numpy().view(np.uint8))
    finite = x[7:5000].astype(np.float64)
    rtol = 1e-13 if dtype is tt.float64 else 1e-5            # float32: exp(series - z^2) in the tails
    keep = _erfc(finite) > 1e-30                                 # float32 tails go subnormal
    np.testing.assert_allclose(tt_erfc(tt.tensor(x[7:5000])).numpy()[keep], _erfc(finite)[keep], rtol=rtol)


@pytest.mark.parametrize("relu", [tt.relu, F.relu, nn.ReLU(), lambda x: F.relu(x * 1, inplace=True),
                                  tt.compile(lambda x: x.relu(), backend="llvm")],
                         ids=["tt.relu", "F.relu", "nn.ReLU", "inplace", "compiled"])
def test_relu_propagates_nan_with_pytorchs_gradient(relu):
    """relu(nan) is nan, as in PyTorch; the gradient is threshold_backward's: 0 where x <= 0, else 1."""
    for _ in range(2):                                      # a compiled function: traced, then cached
        x = tt.tensor([np.nan, -1.0, -0.0, 0.0, 2.0, np.inf], dtype=tt.float64, requires_grad=True)
        y = relu(x)
        np.testing.assert_array_equal(y.detach().numpy(), [np.nan, 0, 0, 0, 2, np.inf])
        y.sum().backward()
        np.testing.assert_array_equal(x.grad.numpy(), [1, 0, 0, 0, 1, 1])


def test_sign_of_nan_is_zero_eager_and_compiled():
    x = tt.tensor([np.nan, -2.0, -0.0, 3.0])
    f = tt.compile(lambda t: t.sign(), backend="llvm")
    for out in (x.sign(), f(x), f(x * 2)):
        np.testing.assert_array_equal(out.numpy(), [0, -1, 0, 1])
