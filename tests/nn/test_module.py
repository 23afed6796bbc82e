import copy
from collections import OrderedDict

import numpy as np
import pytest

import tracetorch as tt
from tracetorch import nn


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 4)
        self.bn = nn.BatchNorm1d(4)
        self.scale = nn.Parameter(tt.ones(4))
        self.register_buffer("steps", tt.zeros((), dtype=tt.int64))
        self.register_buffer("cache", tt.zeros(2), persistent=False)
        self.plain = tt.zeros(1)          # a plain tensor attribute is not registered

    def forward(self, x):
        return self.bn(self.fc(x)) * self.scale


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.block = Block()
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.block(x).relu())


def test_attribute_assignment_registers_parameters_buffers_and_children():
    net = Net()
    assert [n for n, _ in net.named_parameters()] == [
        "block.scale", "block.fc.weight", "block.fc.bias", "block.bn.weight", "block.bn.bias",
        "head.weight", "head.bias"]
    assert [n for n, _ in net.named_buffers()] == [
        "block.steps", "block.cache", "block.bn.running_mean", "block.bn.running_var",
        "block.bn.num_batches_tracked"]
    assert [n for n, _ in net.named_children()] == ["block", "head"]
    assert [n for n, _ in net.named_modules()] == ["", "block", "block.fc", "block.bn", "head"]
    assert list(net.children()) == [net.block, net.head]
    assert len(list(net.modules())) == 5
    assert len(list(net.parameters())) == 7
    assert [n for n, _ in net.block.named_parameters(recurse=False)] == ["scale"]
    assert "plain" not in dict(net.block.named_buffers())
    assert net.block.fc.weight is net.block._modules["fc"]._parameters["weight"]


def test_shared_parameters_are_listed_once():
    shared = nn.Linear(2, 2)
    seq = nn.Sequential(shared, nn.ReLU(), shared)
    assert len(list(seq.parameters())) == 2
    assert len(list(seq.modules())) == 3
    assert [n for n, _ in seq.named_parameters(remove_duplicate=False)] == [
        "0.weight", "0.bias", "2.weight", "2.bias"]


def test_reassignment_moves_between_registries_and_delattr():
    m = nn.Module()
    m.x = nn.Linear(1, 1)
    m.x = nn.Parameter(tt.zeros(1))        # a Parameter replaces a child of the same name
    assert "x" in m._parameters and "x" not in m._modules
    with pytest.raises(TypeError, match="as parameter 'x'"):
        m.x = nn.Linear(1, 1)              # as in PyTorch: clear a parameter with None first
    m.x = None
    assert m._parameters["x"] is None and m.x is None
    m.register_buffer("b", tt.ones(2))
    m.b = tt.zeros(2)                      # assigning a tensor to a buffer name replaces the buffer
    np.testing.assert_array_equal(m._buffers["b"].numpy(), [0.0, 0.0])
    del m.b
    assert "b" not in m._buffers
    with pytest.raises(AttributeError, match="has no attribute 'b'"):
        m.b


def test_registration_errors():
    m = nn.Linear(2, 2)
    with pytest.raises(TypeError, match="as parameter 'weight'"):
        m.weight = tt.zeros(2, 2)
    with pytest.raises(KeyError, match="contain"):
        m.register_buffer("a.b", tt.zeros(1))
    with pytest.raises(KeyError, match="already exists"):
        m.register_buffer("weight", tt.zeros(1))
    with pytest.raises(TypeError, match="Parameter or None required"):
        m.register_parameter("w2", tt.zeros(1))
    with pytest.raises(ValueError, match="non-leaf"):
        m.register_parameter("w3", _non_leaf_parameter())
    with pytest.raises(TypeError, match="is not a Module subclass"):
        m.add_module("child", 3)

    class Broken(nn.Module):
        def __init__(self):
            self.w = nn.Parameter(tt.zeros(1))

    with pytest.raises(AttributeError, match="before Module.__init__"):
        Broken()
    with pytest.raises(NotImplementedError, match='missing the required "forward"'):
        nn.Module()(1)


def _non_leaf_parameter():
    p = nn.Parameter(tt.zeros(1))
    q = nn.Parameter(tt.zeros(1))
    q._grad_fn = (p * 2).grad_fn
    return q


def test_register_parameter_none_and_dir():
    m = nn.Linear(2, 3, bias=False)
    assert m.bias is None and "bias" in m._parameters
    assert [n for n, _ in m.named_parameters()] == ["weight"]
    assert {"weight", "bias", "forward", "in_features"} <= set(dir(m))
    assert "0" not in dir(nn.Sequential(nn.ReLU()))


def test_train_eval_toggle_recursively():
    net = Net()
    assert all(m.training for m in net.modules())
    assert net.eval() is net
    assert not any(m.training for m in net.modules())
    net.train()
    assert all(m.training for m in net.modules())
    net.block.train(False)
    assert net.training and not net.block.bn.training
    with pytest.raises(ValueError, match="boolean"):
        net.train("yes")


def test_zero_grad_and_requires_grad():
    net = Net()
    net(tt.randn(5, 3)).sum().backward()
    assert all(p.grad is not None for p in net.parameters())
    net.zero_grad(set_to_none=False)
    assert all(p.grad is not None and not p.grad.numpy().any() for p in net.parameters())
    net.zero_grad()
    assert all(p.grad is None for p in net.parameters())
    net.requires_grad_(False)
    assert not any(p.requires_grad for p in net.parameters())
    assert net(tt.randn(5, 3)).grad_fn is None


def test_state_dict_names_and_detached_values():
    net = Net()
    sd = net.state_dict()
    assert isinstance(sd, OrderedDict)
    assert list(sd) == ["block.scale", "block.steps", "block.fc.weight", "block.fc.bias", "block.bn.weight",
                        "block.bn.bias", "block.bn.running_mean", "block.bn.running_var",
                        "block.bn.num_batches_tracked", "head.weight", "head.bias"]
    assert not sd["head.weight"].requires_grad and sd["head.weight"].grad_fn is None
    assert np.shares_memory(sd["head.weight"].numpy(), net.head.weight.detach().numpy())
    assert sd["block.bn.num_batches_tracked"].dtype is tt.int64
    assert net.state_dict(keep_vars=True)["head.weight"] is net.head.weight
    assert list(nn.Sequential(nn.Linear(1, 1), nn.BatchNorm1d(1)).state_dict())[2:4] == [
        "1.weight", "1.bias"]


def test_load_state_dict_round_trip_copies_in_place():
    src, dst = Net(), Net()
    src.train()
    src(tt.randn(6, 3))                           # moves the running stats away from their init
    weight = dst.head.weight
    result = dst.load_state_dict(src.state_dict())
    assert result.missing_keys == [] and result.unexpected_keys == []
    assert repr(result) == "<All keys matched successfully>"
    assert dst.head.weight is weight and weight.requires_grad
    for (k, a), (_, b) in zip(src.state_dict().items(), dst.state_dict().items()):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=k)
        assert not np.shares_memory(a.numpy(), b.numpy())
    assert int(dst.block.bn.num_batches_tracked) == 1
    x = tt.randn(4, 3)
    src.eval(), dst.eval()
    np.testing.assert_array_equal(src(x).detach().numpy(), dst(x).detach().numpy())


def test_load_state_dict_strict_errors():
    net = Net()
    sd = net.state_dict()
    del sd["head.bias"]
    sd["head.extra"] = tt.zeros(1)
    sd["nothere.weight"] = tt.zeros(1)
    with pytest.raises(RuntimeError) as err:
        net.load_state_dict(sd)
    msg = str(err.value)
    assert msg.startswith("Error(s) in loading state_dict for Net:")
    assert 'Missing key(s) in state_dict: "head.bias".' in msg
    assert 'Unexpected key(s) in state_dict: "nothere.weight", "head.extra".' in msg   # PyTorch's order
    result = net.load_state_dict(sd, strict=False)
    assert result.missing_keys == ["head.bias"]
    assert result.unexpected_keys == ["nothere.weight", "head.extra"]
    odd = dict(net.state_dict(), head=tt.ones(1), **{"head.weight.extra": tt.ones(1)})
    result = net.load_state_dict(odd, strict=False)      # a plain key naming a child, a key below a state
    assert result.unexpected_keys == ["head", "head.weight.extra"], result
    bad = net.state_dict()
    bad["head.weight"] = tt.zeros(3, 4)
    with pytest.raises(RuntimeError, match=r"size mismatch for head.weight: copying a param with shape"):
        net.load_state_dict(bad, strict=False)
    with pytest.raises(TypeError, match="dict-like"):
        net.load_state_dict([1, 2])


def test_load_state_dict_casts_and_assign():
    m = nn.Linear(2, 2)
    sd = {"weight": tt.ones(2, 2, dtype=tt.float64), "bias": tt.zeros(2, dtype=tt.float64)}
    m.load_state_dict(sd)
    assert m.weight.dtype is tt.float32 and m.weight.numpy(force=True).sum() == 4
    m.load_state_dict(sd, assign=True)
    assert isinstance(m.weight, nn.Parameter) and m.weight.dtype is tt.float64 and m.weight.requires_grad


def test_to_dtype_converts_parameters_in_place():
    net = Net()
    params = list(net.parameters())
    net(tt.randn(4, 3)).sum().backward()
    assert net.to(tt.float64) is net
    assert [id(p) for p in net.parameters()] == [id(p) for p in params]
    assert all(p.dtype is tt.float64 and p.requires_grad for p in params)
    assert all(p.grad.dtype is tt.float64 for p in params)
    assert net.block.bn.running_mean.dtype is tt.float64
    assert net.block.bn.num_batches_tracked.dtype is tt.int64    # integer buffers keep their dtype
    out = net(tt.randn(4, 3, dtype=tt.float64))
    assert out.dtype is tt.float64
    net.float()
    assert all(p.dtype is tt.float32 for p in params)
    net.to("cpu")
    net.double().to(tt.zeros(1))
    assert all(p.dtype is tt.float32 for p in params)
    with pytest.raises(TypeError, match="floating point"):
        net.to(tt.int64)


def test_apply_visits_children_first():
    seen = []
    net = Net()
    assert net.apply(lambda m: seen.append(type(m).__name__)) is net
    assert seen == ["Linear", "BatchNorm1d", "Block", "Linear", "Net"]


def test_forward_hooks():
    m = nn.Linear(2, 2)
    pre = m.register_forward_pre_hook(lambda mod, args: (args[0] * 0,))
    post = m.register_forward_hook(lambda mod, args, out: out + 1)
    out = m(tt.ones(1, 2))
    np.testing.assert_allclose(out.detach().numpy(), m.bias.detach().numpy()[None] + 1, rtol=1e-6)
    pre.remove(), post.remove()
    np.testing.assert_allclose(m(tt.zeros(1, 2)).detach().numpy(), m.bias.detach().numpy()[None], rtol=1e-6)


def test_repr_nests_like_pytorch():
    net = nn.Sequential(nn.Linear(3, 4, bias=False), nn.Sequential(nn.ReLU(), nn.Dropout(0.1)))
    assert repr(net) == (
        "Sequential(\n"
        "  (0): Linear(in_features=3, out_features=4, bias=False)\n"
        "  (1): Sequential(\n"
        "    (0): ReLU()\n"
        "    (1): Dropout(p=0.1, inplace=False)\n"
        "  )\n"
        ")")
    assert repr(Net()).startswith("Net(\n  (block): Block(\n    (fc): Linear(")


def test_deepcopy_gives_an_independent_module():
    net = Net()
    twin = copy.deepcopy(net)
    assert twin.head.weight is not net.head.weight
    assert isinstance(twin.head.weight, nn.Parameter)
    with tt.no_grad():
        twin.head.weight.fill_(0)
    assert net.head.weight.detach().numpy().any()


def test_get_submodule():
    net = Net()
    assert net.get_submodule("block.bn") is net.block.bn
    with pytest.raises(AttributeError):
        net.get_submodule("block.nope")


def test_nn_is_reachable_the_pytorch_ways():
    import importlib
    import tracetorch
    import tracetorch.nn.functional as functional
    assert tracetorch.nn is importlib.import_module("tracetorch.nn") is nn
    assert tracetorch.nn.functional is functional and tracetorch.nn.init.kaiming_uniform_
    assert tracetorch.nn.functional.relu(tt.tensor([-1.0, 1.0])).tolist() == [0.0, 1.0]


def test_module_pickles_with_its_state():
    import pickle
    net = Net()
    twin = pickle.loads(pickle.dumps(net))
    assert isinstance(twin.head.weight, nn.Parameter)
    for (k, a), (_, b) in zip(net.state_dict().items(), twin.state_dict().items()):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=k)
