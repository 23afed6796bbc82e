import math

import numpy as np
import pytest

import tracetorch as tt
from tracetorch import nn
from tracetorch.nn import init


def _values(t):
    return t.detach().numpy().astype(np.float64)


def _check_uniform(t, bound):
    v = _values(t)
    assert v.min() >= -bound and v.max() <= bound
    assert v.max() > 0.98 * bound and v.min() < -0.98 * bound
    assert abs(v.mean()) < 0.02 * bound
    assert abs(v.std() - bound / math.sqrt(3)) < 0.02 * bound


def _check_normal(t, std, mean=0.0):
    v = _values(t)
    assert abs(v.mean() - mean) < 0.02 * std
    assert abs(v.std() - std) < 0.02 * std


def test_calculate_gain():
    assert init.calculate_gain("linear") == 1 and init.calculate_gain("conv2d") == 1
    assert init.calculate_gain("sigmoid") == 1
    assert init.calculate_gain("tanh") == pytest.approx(5 / 3)
    assert init.calculate_gain("relu") == pytest.approx(math.sqrt(2))
    assert init.calculate_gain("leaky_relu") == pytest.approx(math.sqrt(2 / (1 + 0.01 ** 2)))
    assert init.calculate_gain("leaky_relu", 0.2) == pytest.approx(math.sqrt(2 / 1.04))
    assert init.calculate_gain("selu") == 0.75
    with pytest.raises(ValueError, match="Unsupported nonlinearity"):
        init.calculate_gain("swish")
    with pytest.raises(ValueError, match="negative_slope"):
        init.calculate_gain("leaky_relu", "x")


def test_fan_in_and_fan_out():
    assert init._calculate_fan_in_and_fan_out(tt.empty(7, 3)) == (3, 7)
    assert init._calculate_fan_in_and_fan_out(tt.empty(8, 4, 3, 5)) == (60, 120)
    with pytest.raises(ValueError, match="fewer than 2 dimensions"):
        init._calculate_fan_in_and_fan_out(tt.empty(5))


def test_uniform_normal_constant():
    t = tt.empty(400, 500)
    assert init.uniform_(t, -2.0, 3.0) is t
    v = _values(t)
    assert v.min() >= -2 and v.max() < 3
    assert abs(v.mean() - 0.5) < 0.02 and abs(v.std() - 5 / math.sqrt(12)) < 0.02
    _check_normal(init.normal_(t, 1.5, 0.5), 0.5, 1.5)
    assert (init.constant_(t, 0.25).numpy() == 0.25).all()
    assert not init.zeros_(t).numpy().any()
    assert (init.ones_(t).numpy() == 1).all()
    np.testing.assert_array_equal(init.eye_(tt.empty(2, 3)).numpy(), np.eye(2, 3))


def test_xavier():
    t = tt.empty(300, 500)
    _check_uniform(init.xavier_uniform_(t), math.sqrt(6 / 800))
    _check_uniform(init.xavier_uniform_(t, gain=2.0), 2 * math.sqrt(6 / 800))
    _check_normal(init.xavier_normal_(t, gain=0.5), 0.5 * math.sqrt(2 / 800))


def test_kaiming():
    t = tt.empty(200, 20, 3, 3)                                 # fan_in 180, fan_out 1800
    _check_uniform(init.kaiming_uniform_(t), math.sqrt(6 / 180))
    _check_uniform(init.kaiming_uniform_(t, a=math.sqrt(5)), 1 / math.sqrt(180))
    _check_uniform(init.kaiming_uniform_(t, mode="fan_out", nonlinearity="relu"), math.sqrt(6 / 1800))
    _check_normal(init.kaiming_normal_(t, nonlinearity="relu"), math.sqrt(2 / 180))
    _check_normal(init.kaiming_normal_(t, mode="fan_out", nonlinearity="tanh"), 5 / 3 / math.sqrt(1800))
    with pytest.raises(ValueError, match="Mode fan_avg not supported"):
        init.kaiming_uniform_(t, mode="fan_avg")
    with pytest.warns(UserWarning, match="zero-element"):
        init.kaiming_uniform_(tt.empty(0, 3))


def test_trunc_normal():
    t = init.trunc_normal_(tt.empty(100, 100), mean=0.5, std=1.0, a=-0.5, b=1.0)
    v = _values(t)
    assert v.min() >= -0.5 and v.max() <= 1.0
    assert v.min() < -0.49 and v.max() > 0.99
    # the mean of N(0.5, 1) truncated to [-0.5, 1]: mu + (phi(alpha) - phi(beta)) / (Phi(beta) - Phi(alpha))
    phi = lambda z: math.exp(-z * z / 2) / math.sqrt(2 * math.pi)     # noqa: E731
    cdf = lambda z: 0.5 * (1 + math.erf(z / math.sqrt(2)))            # noqa: E731
    want = 0.5 + (phi(-1.0) - phi(0.5)) / (cdf(0.5) - cdf(-1.0))
    assert abs(v.mean() - want) < 0.01


def test_init_is_reproducible_and_records_no_graph():
    w = nn.Parameter(tt.empty(3, 4))
    tt.manual_seed(5)
    init.normal_(w)
    assert w.is_leaf and w.grad_fn is None and w.requires_grad
    first = w.detach().numpy().copy()
    tt.manual_seed(5)
    init.normal_(w)
    np.testing.assert_array_equal(w.detach().numpy(), first)
    gen = tt.Generator().manual_seed(5)
    init.uniform_(w, generator=gen)
    tt.manual_seed(5)
    np.testing.assert_array_equal(w.detach().numpy(), tt.rand(3, 4).numpy())


def test_layer_defaults_match_pytorch_distributions():
    linear = nn.Linear(400, 300)
    _check_uniform(linear.weight, 1 / math.sqrt(400))
    b = _values(linear.bias)
    assert np.abs(b).max() <= 1 / math.sqrt(400) and b.std() > 0.5 / math.sqrt(3) / math.sqrt(400)
    conv = nn.Conv2d(8, 64, 5, groups=2)                          # fan_in = 4 * 5 * 5 = 100
    _check_uniform(conv.weight, 1 / 10)
    assert np.abs(_values(conv.bias)).max() <= 0.1
    emb = nn.Embedding(300, 200, padding_idx=0)
    _check_normal(emb.weight.detach()[1:], 1.0)
    assert not _values(emb.weight)[0].any()
    for norm in (nn.LayerNorm(6), nn.BatchNorm2d(6)):
        assert (_values(norm.weight) == 1).all() and not _values(norm.bias).any()
    tt.manual_seed(11)
    a = nn.Linear(5, 5)
    tt.manual_seed(11)
    np.testing.assert_array_equal(_values(nn.Linear(5, 5).weight), _values(a.weight))
