from collections import OrderedDict

import numpy as np
import pytest

import tracetorch as tt
from tracetorch import nn


def test_sequential_chains_forward():
    tt.manual_seed(0)
    seq = nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 2))
    x = np.random.default_rng(0).standard_normal((4, 3))
    w1, b1 = seq[0].weight.detach().numpy().astype(np.float64), seq[0].bias.detach().numpy()
    w2, b2 = seq[2].weight.detach().numpy().astype(np.float64), seq[2].bias.detach().numpy()
    want = np.maximum(x @ w1.T + b1, 0) @ w2.T + b2
    got = seq(tt.tensor(x, dtype=tt.float32)).detach().numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_sequential_indexing_and_editing():
    a, b, c = nn.Linear(1, 1), nn.ReLU(), nn.Tanh()
    seq = nn.Sequential(a, b, c)
    assert len(seq) == 3 and list(seq) == [a, b, c]
    assert seq[0] is a and seq[-1] is c
    head = seq[:2]
    assert isinstance(head, nn.Sequential) and list(head) == [a, b]
    with pytest.raises(IndexError):
        seq[3]
    seq[1] = nn.Sigmoid()
    assert isinstance(seq[1], nn.Sigmoid)
    del seq[0]
    assert list(seq._modules) == ["0", "1"] and seq[1] is c
    seq.append(a)
    seq.insert(0, b)
    seq.insert(-1, nn.Identity())
    assert [type(m).__name__ for m in seq] == ["ReLU", "Sigmoid", "Tanh", "Identity", "Linear"]
    assert seq.pop(0) is b and len(seq) == 4
    seq.extend([nn.ReLU()])
    assert list(seq._modules) == ["0", "1", "2", "3", "4"]
    both = nn.Sequential(a) + nn.Sequential(c)
    assert list(both) == [a, c]


def test_sequential_from_ordered_dict_names_children():
    seq = nn.Sequential(OrderedDict([("fc", nn.Linear(2, 3)), ("act", nn.ReLU())]))
    assert list(seq.state_dict()) == ["fc.weight", "fc.bias"]
    assert seq.fc is seq[0]
    assert repr(seq).splitlines()[1] == "  (fc): Linear(in_features=2, out_features=3, bias=True)"


def test_module_list_registers_and_indexes():
    layers = nn.ModuleList([nn.Linear(2, 2) for _ in range(3)])
    assert len(layers) == 3 and len(list(layers.parameters())) == 6
    assert list(layers.state_dict())[:2] == ["0.weight", "0.bias"]
    extra = nn.ReLU()
    layers.append(extra)
    layers += [nn.Tanh()]
    layers.extend([nn.Sigmoid()])
    assert layers[-3] is extra and len(layers) == 6
    part = layers[1:3]
    assert isinstance(part, nn.ModuleList) and part[0] is layers[1]
    layers[0] = nn.Identity()
    assert isinstance(layers[0], nn.Identity)
    del layers[0]
    assert list(layers._modules) == [str(i) for i in range(5)]
    layers.insert(1, nn.GELU())
    assert isinstance(layers[1], nn.GELU) and len(layers) == 6
    with pytest.raises(IndexError, match="out of range"):
        layers[10]
    with pytest.raises(NotImplementedError):
        layers(tt.zeros(1))


def test_module_list_repr_groups_repeats():
    layers = nn.ModuleList([nn.Linear(2, 2) for _ in range(3)] + [nn.ReLU()])
    assert repr(layers) == ("ModuleList(\n"
                            "  (0-2): 3 x Linear(in_features=2, out_features=2, bias=True)\n"
                            "  (3): ReLU()\n"
                            ")")
    assert repr(nn.ModuleList()) == "ModuleList()"


def test_module_dict():
    d = nn.ModuleDict({"enc": nn.Linear(2, 3), "act": nn.ReLU()})
    assert list(d) == ["enc", "act"] and list(d.keys()) == ["enc", "act"]
    assert "enc" in d and len(d) == 2
    assert d["enc"] is d.enc
    d["dec"] = nn.Linear(3, 2)
    assert list(d.state_dict()) == ["enc.weight", "enc.bias", "dec.weight", "dec.bias"]
    d.update([("out", nn.Tanh())])
    assert [k for k, _ in d.items()] == ["enc", "act", "dec", "out"]
    assert isinstance(d.pop("act"), nn.ReLU) and "act" not in d
    del d["out"]
    assert len(list(d.values())) == 2
    d.clear()
    assert len(d) == 0
    with pytest.raises(ValueError, match="length"):
        d.update([("a", nn.ReLU(), 1)])
