"""SGD against PyTorch's update rule written in numpy float64."""
import numpy as np
import pytest

import tracetorch as tt
from tracetorch.optim import SGD


def sgd_reference(p, grads, lr, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False, maximize=False):
    p, buf = p.copy(), None
    for g in grads:
        g = -g if maximize else g
        g = g + weight_decay * p
        if momentum:
            buf = g.copy() if buf is None else momentum * buf + (1 - dampening) * g
            g = g + momentum * buf if nesterov else buf
        p = p - lr * g
    return p


def run_sgd(p0, grads, **kwargs):
    p = tt.tensor(p0, requires_grad=True)
    opt = SGD([p], **kwargs)
    for g in grads:
        p.grad = tt.tensor(g)
        opt.step()
    return p, opt


CONFIGS = [
    dict(lr=0.1),
    dict(lr=0.1, weight_decay=0.05),
    dict(lr=0.05, momentum=0.9),
    dict(lr=0.05, momentum=0.9, dampening=0.3),
    dict(lr=0.05, momentum=0.8, nesterov=True),
    dict(lr=0.02, momentum=0.7, dampening=0.1, weight_decay=0.2, maximize=True),
    dict(lr=0.03, momentum=0.9, nesterov=True, weight_decay=0.1, maximize=True),
]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_matches_reference_float64(config):
    rng = np.random.default_rng(0)
    p0 = rng.standard_normal((3, 4))
    grads = [rng.standard_normal((3, 4)) for _ in range(5)]
    p, _ = run_sgd(p0, grads, **config)
    assert p.dtype is tt.float64
    np.testing.assert_allclose(p.detach().numpy(), sgd_reference(p0, grads, **config), rtol=1e-12, atol=1e-14)


def test_first_momentum_buffer_is_the_gradient():
    g = np.array([1.0, -2.0, 3.0])
    p, opt = run_sgd(np.zeros(3), [g], lr=0.1, momentum=0.9, dampening=0.5)
    buf = opt.state[p]["momentum_buffer"]
    np.testing.assert_array_equal(buf.numpy(), g)          # no dampening on the first step
    np.testing.assert_allclose(p.detach().numpy(), -0.1 * g, rtol=1e-15)
    assert buf is not p.grad


def test_no_state_without_momentum():
    p, opt = run_sgd(np.ones(2), [np.ones(2)], lr=0.1)
    assert len(opt.state) == 0


def test_float32_params_stay_float32():
    rng = np.random.default_rng(1)
    p0 = rng.standard_normal(6).astype(np.float32)
    grads = [rng.standard_normal(6).astype(np.float32) for _ in range(3)]
    p, opt = run_sgd(p0, grads, lr=0.1, momentum=0.9, weight_decay=0.01)
    assert p.dtype is tt.float32 and opt.state[p]["momentum_buffer"].dtype is tt.float32
    ref = sgd_reference(p0.astype(np.float64), [g.astype(np.float64) for g in grads], 0.1, 0.9, 0.0, 0.01)
    np.testing.assert_allclose(p.detach().numpy(), ref, rtol=1e-5)


def test_descends_a_real_loss():
    target = tt.tensor([1.0, -2.0, 0.5])
    p = tt.zeros(3, requires_grad=True)
    opt = SGD([p], lr=0.1, momentum=0.5)
    for _ in range(60):
        opt.zero_grad()
        loss = ((p - target) ** 2).sum()
        loss.backward()
        opt.step()
    np.testing.assert_allclose(p.detach().numpy(), target.numpy(), atol=1e-4)


@pytest.mark.parametrize("kwargs, message", [
    (dict(lr=-1.0), "Invalid learning rate"),
    (dict(lr=0.1, momentum=-0.5), "Invalid momentum"),
    (dict(lr=0.1, weight_decay=-1.0), "Invalid weight_decay"),
    (dict(lr=0.1, nesterov=True), "Nesterov momentum requires"),
    (dict(lr=0.1, momentum=0.9, dampening=0.1, nesterov=True), "Nesterov momentum requires"),
])
def test_invalid_hyperparameters(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SGD([tt.zeros(2, requires_grad=True)], **kwargs)


def test_default_lr_is_pytorchs():
    assert SGD([tt.zeros(1, requires_grad=True)]).param_groups[0]["lr"] == 1e-3
