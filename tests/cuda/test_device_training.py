"""A small training step on cuda tensors (emulated device), eagerly and through tt.compile, against the
same step on the CPU: losses and parameters after three steps agree within float32 rounding, the
compiled program takes device arrays and gives device tensors, and write-backs stay on the device."""
from __future__ import annotations

import copy

import numpy as np
import pytest

import tracetorch as tt
import tracetorch.nn as nn
import tracetorch.nn.functional as F
from tracetorch.device_array import DeviceArray
from tracetorch.jit.cuda_backend import CUDAExecutable


def _step(model, opt, x, y):
    loss = F.cross_entropy(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss


def _setups():
    tt.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    x, y = tt.randn(5, 6), tt.tensor([0, 2, 1, 1, 0])
    on_device = copy.deepcopy(model).cuda()
    return ((model, tt.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), x, y),
            (on_device, tt.optim.SGD(on_device.parameters(), lr=0.1, momentum=0.9), x.cuda(), y.cuda()))


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_training_step_on_device_matches_cpu(compiled, fake_cuda):
    cpu, dev = _setups()
    step_cpu = tt.compile(_step) if compiled else _step
    step_dev = tt.compile(_step) if compiled else _step
    for _ in range(3):
        want = step_cpu(*cpu)
        got = step_dev(*dev)
        assert got.is_cuda
        np.testing.assert_allclose(got.item(), want.item(), rtol=1e-5)
    for p, q in zip(cpu[0].parameters(), dev[0].parameters()):
        assert type(q._data) is DeviceArray and type(q.grad._data) is DeviceArray
        np.testing.assert_allclose(q.detach().cpu().numpy(), p.detach().numpy(), rtol=1e-5, atol=1e-6)
    if compiled:
        (program,) = step_dev.programs
        assert isinstance(program.executable, CUDAExecutable)       # "auto" chose cuda for cuda inputs
        assert step_dev.stats()["cache_hits"] >= 1


def test_compiled_function_makes_device_tensors_and_guards_the_device(fake_cuda):
    @tt.compile
    def f(x):
        return (x * 2 + tt.ones(x.shape[0], device="cuda")).relu()

    x = tt.tensor([[-1.0, 2.0], [3.0, -4.0]], device="cuda")
    for _ in range(2):
        out = f(x)
        assert out.is_cuda
        np.testing.assert_array_equal(out.cpu().numpy(), [[0.0, 5.0], [7.0, 0.0]])
    assert f.stats()["compiles"] == 1
    g = tt.compile(lambda x: x.sum() * 3)
    assert g(tt.ones(4)).item() == 12.0 and g(tt.ones(4, device="cuda")).item() == 12.0
    assert g.stats()["compiles"] == 2          # a CPU trace does not run cuda tensors (the guard says device)
    with pytest.raises(RuntimeError, match="cuda tensors; use backend='cuda'"):
        tt.compile(lambda x: x + 1, backend="llvm")(tt.ones(2, device="cuda"))


@pytest.mark.parametrize("make_opt", [lambda ps: tt.optim.SGD(ps, lr=0.1, momentum=0.9),
                                      lambda ps: tt.optim.Adam(ps, lr=0.01)], ids=["sgd", "adam"])
def test_optimizer_state_from_a_cpu_checkpoint_moves_to_the_parameters_device(make_opt, fake_cuda):
    """PyTorch's load_state_dict moves each state tensor to its parameter's device (the step count stays
    on the CPU): a checkpoint mapped to the CPU resumes a cuda model as if never interrupted."""
    _, (model, _, x, y) = _setups()
    opt = make_opt(model.parameters())
    _step(model, opt, x, y)
    saved = opt.state_dict()
    saved = {"state": {i: {k: v.cpu() for k, v in s.items()} for i, s in saved["state"].items()},
             "param_groups": saved["param_groups"]}
    resumed_model = copy.deepcopy(model)
    resumed = make_opt(resumed_model.parameters())
    resumed.load_state_dict(saved)
    for p in resumed_model.parameters():
        for name, value in resumed.state[p].items():
            assert value.device == (tt.device("cpu") if name == "step" else p.device), name
    for _ in range(2):
        want = _step(model, opt, x, y)
        got = _step(resumed_model, resumed, x, y)
        np.testing.assert_allclose(got.item(), want.item(), rtol=1e-6)
    for p, q in zip(model.parameters(), resumed_model.parameters()):
        np.testing.assert_allclose(q.detach().cpu().numpy(), p.detach().cpu().numpy(), rtol=1e-6, atol=1e-7)
