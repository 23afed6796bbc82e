"""Optimizer base behaviour: groups, zero_grad, float views of 0-d hyperparameter tensors, state dicts."""
import copy
import io

import numpy as np
import pytest

import tracetorch as tt
import tracetorch.optim as optim
from tracetorch.optim import SGD, Adam


def leaf(*shape, seed=0):
    rng = np.random.default_rng(seed)
    return tt.tensor(rng.standard_normal(shape), requires_grad=True)


def set_grads(params, seed):
    rng = np.random.default_rng(seed)
    for p in params:
        p.grad = tt.tensor(rng.standard_normal(tuple(p.shape)))


def test_import_paths():
    from tracetorch.optim.lr_scheduler import StepLR
    assert tt.optim is optim and optim.lr_scheduler.StepLR is StepLR
    assert issubclass(optim.AdamW, optim.Adam) and issubclass(optim.SGD, optim.Optimizer)


def test_param_groups_with_different_lrs():
    a, b = leaf(3, seed=1), leaf(2, seed=2)
    opt = SGD([{"params": [a]}, {"params": b, "lr": 0.5}], lr=0.1, momentum=0.9)
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.5]
    assert [g["momentum"] for g in opt.param_groups] == [0.9, 0.9]
    a0, b0 = a.detach().numpy().copy(), b.detach().numpy().copy()
    set_grads([a, b], seed=3)
    ga, gb = a.grad.numpy(), b.grad.numpy()
    opt.step()
    np.testing.assert_allclose(a.detach().numpy(), a0 - 0.1 * ga, rtol=1e-14)
    np.testing.assert_allclose(b.detach().numpy(), b0 - 0.5 * gb, rtol=1e-14)


def test_add_param_group_fills_defaults_and_rejects_shared_params():
    a, b = leaf(2), leaf(2)
    opt = Adam([a], lr=0.01)
    opt.add_param_group({"params": [b], "eps": 1e-3})
    group = opt.param_groups[1]
    assert (group["lr"], group["eps"], group["betas"]) == (0.01, 1e-3, (0.9, 0.999))
    with pytest.raises(ValueError, match="more than one parameter group"):
        opt.add_param_group({"params": [a]})


def test_bad_params():
    with pytest.raises(TypeError, match="iterable of Tensors"):
        SGD(leaf(2), lr=0.1)
    with pytest.raises(ValueError, match="empty parameter list"):
        SGD([], lr=0.1)
    x = leaf(2)
    with pytest.raises(ValueError, match="non-leaf"):
        SGD([x * 2], lr=0.1)
    with pytest.raises(TypeError, match="ordered collections"):
        SGD([{"params": {x}}], lr=0.1)
    with pytest.raises(TypeError, match="only optimize Tensors"):
        SGD([x, 3.0], lr=0.1)


def test_zero_grad_set_to_none_and_zero():
    a, b = leaf(3), leaf(2)
    opt = SGD([a, b], lr=0.1)
    set_grads([a, b], seed=0)
    grad = a.grad
    opt.zero_grad(set_to_none=False)
    assert a.grad is grad and not a.grad.numpy().any() and not b.grad.numpy().any()
    opt.zero_grad()
    assert a.grad is None and b.grad is None


def test_params_without_grad_are_skipped():
    a, b = leaf(3, seed=1), leaf(2, seed=2)
    opt = Adam([a, b], lr=0.1)
    b0 = b.detach().numpy().copy()
    a.grad = tt.ones(3, dtype=tt.float64)
    opt.step()
    np.testing.assert_array_equal(b.detach().numpy(), b0)
    assert b not in opt.state and opt.state[a]["step"].item() == 1.0


def test_lr_is_a_float_view_of_a_0d_tensor():
    a = leaf(4)
    opt = SGD([a], lr=0.1, momentum=0.5)
    group = opt.param_groups[0]
    lr_tensor = group.tensors["lr"]
    assert isinstance(group["lr"], float) and lr_tensor.shape == () and lr_tensor.dtype is tt.float64
    group["lr"] = 0.25
    assert group.tensors["lr"] is lr_tensor and lr_tensor.item() == 0.25 and group["lr"] == 0.25
    assert dict(group)["lr"] == 0.25 and group.get("lr") == 0.25 and group.copy()["lr"] == 0.25
    a0 = a.detach().numpy().copy()
    a.grad = tt.full((4,), 2.0, dtype=tt.float64)
    opt.step()
    np.testing.assert_allclose(a.detach().numpy(), a0 - 0.25 * 2.0, rtol=1e-14)
    group["lr"] = tt.tensor(0.125)                       # a tensor value is copied into the same tensor
    assert group.tensors["lr"] is lr_tensor and group["lr"] == 0.125


def test_hyperparameter_tensors_keep_identity_across_steps_and_loads():
    a = leaf(3)
    opt = Adam([a], lr=0.1, weight_decay=0.01)
    tensors = dict(opt.param_groups[0].tensors)
    set_grads([a], seed=0)
    opt.step()
    sd = copy.deepcopy(opt.state_dict())
    sd["param_groups"][0]["lr"] = 0.05
    sd["param_groups"][0]["betas"] = (0.8, 0.9)
    opt.load_state_dict(sd)
    group = opt.param_groups[0]
    assert all(group.tensors[k] is v for k, v in tensors.items() if k != "betas")
    assert all(x is y for x, y in zip(group.tensors["betas"], tensors["betas"]))
    assert group["lr"] == 0.05 and tensors["lr"].item() == 0.05 and group["betas"] == (0.8, 0.9)


def test_non_numeric_hyperparameter_is_rejected():
    opt = SGD([leaf(2)], lr=0.1)
    with pytest.raises(TypeError, match="'lr' must be a number"):
        opt.param_groups[0]["lr"] = "fast"


def test_state_dict_format_is_pytorchs():
    a, b, c = leaf(2, 3), leaf(3), leaf(1)
    opt = SGD([{"params": [a, b]}, {"params": [c], "lr": 0.5}], lr=0.1, momentum=0.9)
    set_grads([b, c], seed=0)
    opt.step()
    sd = opt.state_dict()
    assert list(sd) == ["state", "param_groups"]
    assert sd["param_groups"][0] == {"lr": 0.1, "momentum": 0.9, "dampening": 0.0, "weight_decay": 0.0,
                                     "nesterov": False, "maximize": False, "params": [0, 1]}
    assert sd["param_groups"][1]["params"] == [2] and sd["param_groups"][1]["lr"] == 0.5
    assert set(sd["state"]) == {1, 2}
    assert sd["state"][1]["momentum_buffer"] is opt.state[b]["momentum_buffer"]


def _train(opt, params, seeds):
    for s in seeds:
        set_grads(params, s)
        opt.step()


@pytest.mark.parametrize("make", [
    lambda ps: SGD(ps, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01),
    lambda ps: Adam([{"params": ps[:1]}, {"params": ps[1:], "lr": 0.05}], lr=0.01, amsgrad=True),
    lambda ps: optim.AdamW(ps, lr=0.02),
])
def test_state_dict_round_trip_continues_identically(make):
    params = [leaf(3, 2, seed=1), leaf(4, seed=2)]
    opt = make(params)
    _train(opt, params, seeds=[10, 11, 12])
    buf = io.BytesIO()
    tt.save({"params": [p.detach() for p in params], "optim": opt.state_dict()}, buf)
    _train(opt, params, seeds=[13, 14, 15])                 # the uninterrupted run

    buf.seek(0)
    ckpt = tt.load(buf)
    resumed = [p.clone().requires_grad_() for p in ckpt["params"]]
    opt2 = make(resumed)
    opt2.load_state_dict(ckpt["optim"])
    _train(opt2, resumed, seeds=[13, 14, 15])
    for p, q in zip(params, resumed):
        np.testing.assert_array_equal(p.detach().numpy(), q.detach().numpy())
    assert opt2.state_dict()["param_groups"] == opt.state_dict()["param_groups"]


def test_load_state_dict_copies_into_existing_state_tensors():
    a = leaf(3)
    opt = Adam([a], lr=0.1)
    set_grads([a], seed=0)
    opt.step()
    exp_avg = opt.state[a]["exp_avg"]
    saved = copy.deepcopy(opt.state_dict())
    opt.step()
    opt.load_state_dict(saved)
    assert opt.state[a]["exp_avg"] is exp_avg
    np.testing.assert_array_equal(exp_avg.numpy(), saved["state"][0]["exp_avg"].numpy())
    assert opt.state[a]["step"].item() == 1.0
    saved["state"][0]["exp_avg"].fill_(7.0)               # later edits of the dict do not leak in
    assert exp_avg.numpy()[0] != 7.0


def test_load_state_dict_casts_state_to_param_dtype():
    a = leaf(3)
    opt = Adam([a], lr=0.1)
    set_grads([a], seed=0)
    opt.step()
    sd = copy.deepcopy(opt.state_dict())
    a32 = tt.zeros(3, requires_grad=True)
    opt32 = Adam([a32], lr=0.1)
    opt32.load_state_dict(sd)
    assert opt32.state[a32]["exp_avg"].dtype is tt.float32 and opt32.state[a32]["step"].dtype is tt.float32


def test_load_state_dict_rejects_mismatched_groups():
    a, b = leaf(2), leaf(2)
    sd = SGD([a, b], lr=0.1).state_dict()
    with pytest.raises(ValueError, match="different number of parameter groups"):
        SGD([{"params": [a]}, {"params": [b]}], lr=0.1).load_state_dict(sd)
    with pytest.raises(ValueError, match="doesn't match the size"):
        SGD([a], lr=0.1).load_state_dict(sd)


def test_closure_runs_with_grad_enabled_and_returns_loss():
    p = tt.tensor([1.0, 2.0], requires_grad=True)
    opt = SGD([p], lr=0.1)

    def closure():
        opt.zero_grad()
        loss = (p * p).sum()
        loss.backward()
        return loss

    with tt.no_grad():
        loss = opt.step(closure)
    assert loss.item() == 5.0
    np.testing.assert_allclose(p.detach().numpy(), [1.0 - 0.1 * 2.0, 2.0 - 0.1 * 4.0], rtol=1e-6)


def test_step_leaves_grad_mode_and_graph_alone():
    p = leaf(3)
    opt = Adam([p], lr=0.1)
    (p * p).sum().backward()
    opt.step()
    assert tt.is_grad_enabled() and p.is_leaf and p.requires_grad and p.grad_fn is None


def test_repr_lists_groups():
    text = repr(SGD([leaf(2)], lr=0.1, momentum=0.9))
    assert text.startswith("SGD (\nParameter Group 0\n") and "    lr: 0.1\n" in text and "momentum: 0.9" in text


def test_module_parameters_and_checkpoint():
    nn = pytest.importorskip("tracetorch.nn")
    if not hasattr(nn, "Linear"):
        pytest.skip("tracetorch.nn.Linear is not written yet")
    tt.manual_seed(0)
    model = nn.Linear(3, 2)
    opt = SGD(model.parameters(), lr=0.1, momentum=0.9)
    x, y = tt.randn(8, 3), tt.randn(8, 2)
    losses = []
    for _ in range(20):
        opt.zero_grad()
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]
    buf = io.BytesIO()
    tt.save({"model": model.state_dict(), "optim": opt.state_dict()}, buf)
    buf.seek(0)
    ckpt = tt.load(buf)
    model2 = nn.Linear(3, 2)
    model2.load_state_dict(ckpt["model"])
    opt2 = SGD(model2.parameters(), lr=0.1, momentum=0.9)
    opt2.load_state_dict(ckpt["optim"])
    for o, m in ((opt, model), (opt2, model2)):
        o.zero_grad()
        ((m(x) - y) ** 2).mean().backward()
        o.step()
    for p, q in zip(model.parameters(), model2.parameters()):
        np.testing.assert_array_equal(p.detach().numpy(), q.detach().numpy())


def test_custom_optimizer_written_pytorch_style_works_with_schedulers():
    from tracetorch.optim.lr_scheduler import StepLR

    class PlainSGD(optim.Optimizer):
        def __init__(self, params, lr=0.1):
            super().__init__(params, dict(lr=lr))

        @tt.no_grad()
        def step(self, closure=None):
            for group in self.param_groups:
                for p in group["params"]:
                    if p.grad is not None:
                        p.add_(p.grad, alpha=-group["lr"])

    p = tt.zeros(2, dtype=tt.float64, requires_grad=True)
    opt = PlainSGD([p], lr=1.0)
    sched = StepLR(opt, step_size=1, gamma=0.5)
    for _ in range(3):
        p.grad = tt.ones(2, dtype=tt.float64)
        opt.step()
        sched.step()
    np.testing.assert_array_equal(p.detach().numpy(), [-1.75, -1.75])
    assert opt.param_groups[0]["lr"] == 0.125


def test_deepcopy_of_an_optimizer_is_independent():
    a = leaf(3)
    opt = SGD([a], lr=0.1, momentum=0.9)
    set_grads([a], seed=0)
    opt.step()
    twin = copy.deepcopy(opt)
    twin.param_groups[0]["lr"] = 0.5
    assert opt.param_groups[0]["lr"] == 0.1
    (b,) = twin.param_groups[0]["params"]
    assert b is not a and twin.state[b]["momentum_buffer"] is not opt.state[a]["momentum_buffer"]
    np.testing.assert_array_equal(twin.state[b]["momentum_buffer"].numpy(), opt.state[a]["momentum_buffer"].numpy())
