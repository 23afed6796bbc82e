import numpy as np
import pytest

import tracetorch as tt
import tracetorch.nn.functional as F
from tracetorch import nn

from gradcheck import gradcheck


def test_linear_forward_matches_numpy():
    m = nn.Linear(4, 3, dtype=tt.float64)
    x = np.random.default_rng(0).standard_normal((2, 5, 4))
    w, b = m.weight.detach().numpy(), m.bias.detach().numpy()
    np.testing.assert_allclose(m(tt.tensor(x)).detach().numpy(), x @ w.T + b, rtol=1e-12)
    assert m.weight.shape == (3, 4) and m.weight.dtype is tt.float64
    assert m(tt.tensor(x[0, 0])).shape == (3,)


def test_linear_without_bias_and_repr():
    m = nn.Linear(4, 3, bias=False)
    x = tt.randn(2, 4)
    np.testing.assert_allclose(m(x).detach().numpy(), x.numpy() @ m.weight.detach().numpy().T, rtol=1e-6)
    assert repr(m) == "Linear(in_features=4, out_features=3, bias=False)"


def test_linear_gradients():
    rng = np.random.default_rng(1)
    gradcheck(F.linear, [rng.standard_normal((3, 4)), rng.standard_normal((2, 4)), rng.standard_normal(2)])
    gradcheck(F.linear, [rng.standard_normal((2, 3, 4)), rng.standard_normal((2, 4))])       # folded batch dims


def test_linear_shape_error():
    with pytest.raises(RuntimeError, match="cannot be multiplied"):
        nn.Linear(4, 3)(tt.zeros(2, 5))


def test_identity_flatten_unflatten():
    x = tt.randn(2, 3, 4, 5)
    assert nn.Identity(7, key="ignored")(x) is x
    assert nn.Flatten()(x).shape == (2, 60)
    assert nn.Flatten(0, 2)(x).shape == (24, 5)
    np.testing.assert_array_equal(nn.Flatten()(x).numpy(), x.numpy().reshape(2, 60))
    assert nn.Unflatten(1, (3, 20))(nn.Flatten()(x)).shape == (2, 3, 20)
    assert repr(nn.Flatten()) == "Flatten(start_dim=1, end_dim=-1)"
