"""Adam / AdamW against PyTorch's update rule written in numpy float64."""
import numpy as np
import pytest

import tracetorch as tt
from tracetorch.optim import Adam, AdamW


def adam_reference(p, grads, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False,
                   maximize=False, decoupled=False):
    """`betas` may be one pair or a list of pairs, one per step."""
    per_step = betas if isinstance(betas, list) else [betas] * len(grads)
    p = p.copy()
    m, v, v_max = np.zeros_like(p), np.zeros_like(p), np.zeros_like(p)
    for t, (g, (b1, b2)) in enumerate(zip(grads, per_step), 1):
        g = -g if maximize else g
        if decoupled:
            p = p * (1 - lr * weight_decay)
        else:
            g = g + weight_decay * p
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        v_max = np.maximum(v_max, v)
        step_size = lr / (1 - b1 ** t)
        denom = np.sqrt(v_max if amsgrad else v) / np.sqrt(1 - b2 ** t) + eps
        p = p - step_size * m / denom
    return p


def grads_and_start(seed=0, shape=(4, 3), steps=6):
    rng = np.random.default_rng(seed)
    p0 = rng.standard_normal(shape)
    # varying scales so that the amsgrad maximum actually switches branches
    grads = [rng.standard_normal(shape) * (3.0 if t % 3 == 0 else 0.3) for t in range(steps)]
    return p0, grads


def run(cls, p0, grads, **kwargs):
    p = tt.tensor(p0, requires_grad=True)
    opt = cls([p], **kwargs)
    for g in grads:
        p.grad = tt.tensor(g)
        opt.step()
    return p, opt


ADAM_CONFIGS = [
    dict(lr=0.01),
    dict(lr=0.01, betas=(0.8, 0.95), eps=1e-6),
    dict(lr=0.02, weight_decay=0.1),
    dict(lr=0.02, amsgrad=True),
    dict(lr=0.01, amsgrad=True, maximize=True, weight_decay=0.05),
]


@pytest.mark.parametrize("config", ADAM_CONFIGS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_adam_matches_reference_float64(config):
    p0, grads = grads_and_start()
    p, _ = run(Adam, p0, grads, **config)
    np.testing.assert_allclose(p.detach().numpy(), adam_reference(p0, grads, **config), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("config", [dict(lr=0.02), dict(lr=0.02, weight_decay=0.3, amsgrad=True),
                                    dict(lr=0.01, betas=(0.5, 0.9), maximize=True)])
def test_adamw_matches_reference_float64(config):
    p0, grads = grads_and_start(seed=1)
    p, opt = run(AdamW, p0, grads, **config)
    ref = adam_reference(p0, grads, decoupled=True, **{"weight_decay": 0.01, **config})
    np.testing.assert_allclose(p.detach().numpy(), ref, rtol=1e-12, atol=1e-14)
    assert opt.param_groups[0]["decoupled_weight_decay"] is True


def test_adamw_default_weight_decay_and_adam_default():
    p = tt.zeros(2, requires_grad=True)
    assert AdamW([p]).param_groups[0]["weight_decay"] == 0.01
    group = Adam([p]).param_groups[0]
    assert (group["lr"], group["betas"], group["eps"], group["weight_decay"]) == (1e-3, (0.9, 0.999), 1e-8, 0.0)


def test_state_layout_matches_pytorch():
    p0, grads = grads_and_start(steps=3)
    p, opt = run(Adam, p0, grads, lr=0.01, amsgrad=True)
    state = opt.state[p]
    assert set(state) == {"step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"}
    assert state["step"].shape == () and state["step"].dtype is tt.float32 and state["step"].item() == 3.0
    m = np.zeros_like(p0)
    for g in grads:
        m = 0.9 * m + 0.1 * g
    np.testing.assert_allclose(state["exp_avg"].numpy(), m, rtol=1e-12)


def test_float32_params_stay_float32():
    p0, grads = grads_and_start(seed=2)
    p, opt = run(Adam, p0.astype(np.float32), [g.astype(np.float32) for g in grads], lr=0.01, weight_decay=0.1)
    assert p.dtype is tt.float32
    assert all(v.dtype is tt.float32 for v in opt.state[p].values())
    np.testing.assert_allclose(p.detach().numpy(), adam_reference(p0.astype(np.float32).astype(np.float64),
                               [g.astype(np.float32).astype(np.float64) for g in grads], lr=0.01,
                               weight_decay=0.1), rtol=1e-5, atol=1e-6)


def test_betas_assignment_fills_both_tensors():
    p0, grads = grads_and_start(steps=4)
    p, opt = run(Adam, p0, grads[:2], lr=0.01)
    group = opt.param_groups[0]
    b1, b2 = group.tensors["betas"]
    group["betas"] = (0.5, 0.75)
    assert group.tensors["betas"][0] is b1 and group.tensors["betas"][1] is b2
    assert (b1.item(), b2.item()) == (0.5, 0.75) and group["betas"] == (0.5, 0.75)
    for g in grads[2:]:
        p.grad = tt.tensor(g)
        opt.step()
    ref = adam_reference(p0, grads, lr=0.01, betas=[(0.9, 0.999)] * 2 + [(0.5, 0.75)] * 2)
    np.testing.assert_allclose(p.detach().numpy(), ref, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("kwargs, message", [
    (dict(lr=-0.1), "Invalid learning rate"),
    (dict(eps=-1.0), "Invalid epsilon"),
    (dict(betas=(1.0, 0.9)), "index 0"),
    (dict(betas=(0.9, -0.1)), "index 1"),
    (dict(weight_decay=-0.1), "Invalid weight_decay"),
])
def test_invalid_hyperparameters(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Adam([tt.zeros(2, requires_grad=True)], **kwargs)


def test_converges_on_a_quadratic():
    target = tt.tensor([3.0, -1.0])
    p = tt.zeros(2, requires_grad=True)
    opt = Adam([p], lr=0.1)
    for _ in range(300):
        opt.zero_grad()
        ((p - target) ** 2).sum().backward()
        opt.step()
    np.testing.assert_allclose(p.detach().numpy(), target.numpy(), atol=1e-2)


@pytest.mark.parametrize("dtypes", [(tt.float64, tt.float64), (tt.float64, tt.float32)])
def test_parameters_at_different_steps_get_their_own_bias_corrections(dtypes):
    # eagerly, parameters at one step (and dtype) share one bias correction; one whose gradient was
    # missing on some steps is a step behind and must get its own (each against the float64 reference)
    p0, grads = grads_and_start(seed=2, steps=7)
    q0, qgrads = grads_and_start(seed=3, steps=7)
    p = tt.tensor(p0, requires_grad=True, dtype=dtypes[0])
    q = tt.tensor(q0, requires_grad=True, dtype=dtypes[1])
    r = tt.tensor(p0 * 2, requires_grad=True, dtype=dtypes[0])
    opt = Adam([p, q, r], lr=0.01)
    q_taken = []
    for t, (g, h) in enumerate(zip(grads, qgrads)):
        p.grad = tt.tensor(g, dtype=dtypes[0])
        r.grad = tt.tensor(g, dtype=dtypes[0])
        q.grad = tt.tensor(h, dtype=dtypes[1]) if t % 3 else None     # q skips steps 0, 3, 6
        if t % 3:
            q_taken.append(h)
        opt.step()
    rtol = 1e-12 if dtypes[1] is tt.float64 else 2e-5
    np.testing.assert_allclose(p.detach().numpy(), adam_reference(p0, grads, lr=0.01), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(r.detach().numpy(), adam_reference(p0 * 2, grads, lr=0.01), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(q.detach().numpy(), adam_reference(q0, q_taken, lr=0.01), rtol=rtol, atol=1e-6)
    assert [float(opt.state[x]["step"]) for x in (p, q, r)] == [7.0, 4.0, 7.0]


ARRAY_PATH_CONFIGS = [dict(), dict(weight_decay=0.1), dict(amsgrad=True), dict(maximize=True, weight_decay=0.05),
                      dict(decoupled_weight_decay=True, weight_decay=0.1, amsgrad=True)]


@pytest.mark.parametrize("dtype", [tt.float32, tt.float64])
@pytest.mark.parametrize("config", ARRAY_PATH_CONFIGS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_the_eager_array_update_is_the_tensor_update_to_the_bit(dtype, config, monkeypatch):
    # eagerly the update runs as numpy ufuncs on the arrays; with that path off it runs as tensor ops:
    # the same parameters, state and version counters
    import tracetorch.optim.adam as adam
    rng = np.random.default_rng(4)
    p0 = rng.standard_normal((5, 7)).astype(dtype.np)
    grads = [rng.standard_normal((5, 7)).astype(dtype.np) for _ in range(5)]

    def run_steps():
        p = tt.tensor(p0, requires_grad=True)
        opt = Adam([p], lr=0.01, **config)
        for g in grads:
            p.grad = tt.tensor(g)
            opt.step()
        state = opt.state[p]
        arrays = [p.detach().numpy(), state["exp_avg"].numpy(), state["exp_avg_sq"].numpy()]
        return arrays, [p._version[0], state["exp_avg"]._version[0], state["exp_avg_sq"]._version[0]]

    taken = []
    real = adam._on_arrays
    monkeypatch.setattr(adam, "_on_arrays", lambda *a: taken.append(real(*a)) or taken[-1])
    fast, fast_versions = run_steps()
    assert taken and all(taken)                                  # the array path ran
    monkeypatch.setattr(adam, "_on_arrays", lambda *a: False)
    slow, slow_versions = run_steps()
    for a, b in zip(fast, slow):
        np.testing.assert_array_equal(a.view(np.uint8), b.view(np.uint8))
    assert fast_versions == slow_versions
    ref = adam_reference(p0.astype(np.float64), [g.astype(np.float64) for g in grads], lr=0.01,
                         **{k: v for k, v in config.items() if k != "decoupled_weight_decay"},
                         decoupled=config.get("decoupled_weight_decay", False))
    np.testing.assert_allclose(fast[0], ref, rtol=1e-12 if dtype is tt.float64 else 1e-4, atol=1e-6)


def test_bfloat16_parameters_keep_the_tensor_update():
    import tracetorch.optim.adam as adam
    p = tt.tensor(np.ones((3, 3)), dtype=tt.bfloat16, requires_grad=True)
    assert not adam._on_arrays(p, tt.ones(3, 3, dtype=tt.bfloat16))     # rounds after every op
